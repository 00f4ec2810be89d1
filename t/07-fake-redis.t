#!/usr/bin/perl

# Against fake Redis servers (t/lib: RESP on IO::Socket in a child): the
# exact commands the module sends (AUTH, SELECT, SCRIPT LOAD x5, then
# EVALSHA with keys and arguments; EVAL after NOSCRIPT), the replies it
# must refuse (wrong types, errors), servers that never answer, close at
# once or answer -ERR to everything, a reply of more than 100 KiB, a reply
# in pieces, and late replies after a timeout.  One config template,
# started once per fake.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::SHA qw(sha1_hex);
use Encode qw(encode_utf8);
use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $TIMEOUT = 0.3;      # presence_redis_timeout, unscaled

my $TEMPLATE = <<'EOF';
presence_redis %%REDIS%%;
presence_redis_password pw;
presence_redis_db 2;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
%%API%%
    location = /static { }
}
EOF

# nginx_for($fake [, timeout => $s]): a longer timeout where none is tested,
# so that a slow first handshake (valgrind on a busy machine) is not
# timed out and redone
sub nginx_for {
    my ($fake, %o) = @_;
    return start_nginx($TEMPLATE, vars => { REDIS => $fake->addr,
                                            TIMEOUT => conf_time($o{timeout}
                                                                 // $TIMEOUT) },
                       files => { static => 'static' });
}

# handshake as Redis does it, then whatever the test set per command name
my $scripted = sub {
    my ($argv, $st) = @_;
    # a listing the worker's memo may answer asks the head alone (no
    # ZREVRANGE): Redis then answers EXEC with the script's reply only
    $st->{zrev} = 0 if uc($argv->[0] // '') eq 'MULTI';
    $st->{zrev} = 1 if uc($argv->[0] // '') eq 'ZREVRANGE';
    my $std = fake_std($argv, $st);
    return $std if defined $std;
    my $name = uc $argv->[0];
    my $reply = fake_reply($st, $name);
    if ($name eq 'EXEC' && !$st->{zrev} && defined $reply && !ref $reply
        && $reply =~ /^\*2\r\n/)
    {
        my @head = Presence::Test::resp_parse(\$reply, 4);
        $reply = "*1\r\n" . substr($reply, 4, $head[1] - 4) if @head;
    }
    # reply.EXEC_NEXT: what the EXEC after this one gets
    if ($name eq 'EXEC' && defined fake_reply($st, 'EXEC_NEXT')) {
        rename "$st->{dir}/reply.EXEC_NEXT", "$st->{dir}/reply.EXEC";
    }
    return $reply;
};

sub loaded {
    my ($fake) = @_;
    return grep { uc $_->[0] eq 'SCRIPT' } $fake->commands;
}

sub evals {
    my ($fake) = @_;
    return grep { $_->[0] =~ /^EVAL/i } $fake->commands;
}

my $KEY = 'presence:{global}';

# what a heartbeat gives the keys to live: the ttl (10 s), and
# 2 x presence_redis_timeout + 1 s for the sweeps of the live streams
sub life { 10000 + 2 * int($_[0] * 1000 * $Presence::Test::TIME_SCALE + 0.5)
           + 1000 }

# the head of a listing's EXEC reply: the count, and the last event id
sub head { resp_array(resp_int($_[0]), resp_int(1796117616532)) }

###########################################################################
# the protocol

{
    my $fake = fake_redis(handler => $scripted);
    $fake->set_reply('EVALSHA', resp_array(resp_int(5), resp_int(1)));
    my $ng = nginx_for($fake, timeout => 2);

    my $res;
    ok(wait_for(sub {
        $res = $ng->post('/hb', { user_id => 'alice' });
        $res->{status} == 200;
    }, 5), 'heartbeat through the fake');
    is_deeply($res->{json},
              { user_id => 'alice', room => 'global', ttl => 10, online => 5,
                sessions => 1 },
              '  online and sessions are the integers redis answered');

    my @cmds = $fake->commands;
    is_deeply([map { [@$_[0 .. 1]] } @cmds[0 .. 1]], [['AUTH', 'pw'], ['SELECT', '2']],
              'AUTH then SELECT first');
    my @load = @cmds[2 .. 6];
    is_deeply([map { uc "$_->[0] $_->[1]" } @load], [('SCRIPT LOAD') x 5],
              'then SCRIPT LOAD five times');
    my %sha = map { sha1_hex($_->[2]) => $_->[2] } @load;
    is(scalar keys %sha, 5, '  five different scripts');
    my @rest = @cmds[7 .. $#cmds];
    is(scalar @rest, 1, 'then one command for the heartbeat');
    my $e = $rest[0];
    is(uc $e->[0], 'EVALSHA', '  EVALSHA');
    ok($sha{ $e->[1] }, '  with the SHA1 of a loaded script');
    is_deeply([@$e[2 .. $#$e]], ['3', $KEY, "$KEY:s", "$KEY:v", '10000',
                                 '16', life(2), 'alice', ''],
              '  3 keys (room, sessions, last event id), the ttl in ms, at '
              . 'most 16, the keys\' life, then the user and no session');
    my $hb_sha = $e->[1];

    # leave
    $fake->set_reply('EVALSHA', resp_array(resp_int(4), resp_int(0)));
    $res = $ng->post('/leave', { user_id => 'alice' });
    is_deeply($res->{json}, { user_id => 'alice', room => 'global', online => 4,
                              sessions => 0 },
              'leave: online and sessions are the integers redis answered');
    $e = (evals($fake))[-1];
    is_deeply([@$e[2 .. $#$e]], ['3', $KEY, "$KEY:s", "$KEY:v", 'alice', '',
                                 '0'],
              '  EVALSHA 3 keys, user, no session, no grace');
    ok($sha{ $e->[1] } && $e->[1] ne $hb_sha, '  with another script');
    my $leave_sha = $e->[1];

    # online: MULTI, EVALSHA (prune, count), ZREVRANGE (members most
    # recent first), EXEC; the reply of EXEC is [[count, id], members]
    $fake->set_reply('EXEC', resp_array(head(7),
        resp_array(map { resp_bulk($_) } qw(zed amy Bob))));
    my $n = () = $fake->commands;
    $res = $ng->get('/online');
    json_ok($res, 'online through the fake');
    is_deeply($res->{json}, { room => 'global', ttl => 10, count => 7,
                              users => [qw(Bob amy zed)] },
              '  count from redis, members sorted');
    my @tx = ($fake->commands)[$n .. $n + 3];
    is_deeply([map { uc $_->[0] } @tx], [qw(MULTI EVALSHA ZREVRANGE EXEC)],
              '  one transaction: MULTI, EVALSHA, ZREVRANGE, EXEC');
    is_deeply([@{ $tx[1] }[2 .. $#{ $tx[1] }]], ['3', $KEY, "$KEY:s", "$KEY:v"],
              '  EVALSHA 3 keys');
    is_deeply([@{ $tx[2] }[1 .. 3]], [$KEY, '0', '999'],
              '  ZREVRANGE key 0 999 (limit 1000)');
    my $online_sha = $tx[1][1];
    ok($sha{$online_sha} && $online_sha ne $hb_sha
       && $online_sha ne $leave_sha, '  with a third script');

    $res = $ng->get('/online?limit=2');
    my $z = (grep { uc $_->[0] eq 'ZREVRANGE' } $fake->commands)[-1];
    is($z->[-1], '1', '?limit=2: ZREVRANGE key 0 1');

    # limit 0: no ZREVRANGE, EXEC answers [[count, id]]
    $fake->set_reply('EXEC', resp_array(head(7)));
    $n = () = $fake->commands;
    $res = $ng->get('/online?limit=0');
    is_deeply($res->{json}, { room => 'global', ttl => 10, count => 7,
                              users => [] }, '?limit=0: the count alone')
        or diag $res->{raw};
    is_deeply([map { uc $_->[0] } ($fake->commands)[$n .. $n + 2]],
              [qw(MULTI EVALSHA EXEC)], '  and no ZREVRANGE');

    # lookup
    $fake->set_reply('EVALSHA', resp_array(resp_int(7312), resp_int(2)));
    $res = $ng->get('/online?user_id=alice');
    is_deeply($res->{json}, { user_id => 'alice', online => JSON::PP::true(),
                              expires_in_ms => 7312, sessions => 2 },
              'lookup: expires_in_ms and sessions are what redis answered');
    $e = (evals($fake))[-1];
    is_deeply([@$e[2 .. $#$e]], ['3', $KEY, "$KEY:s", "$KEY:v", 'alice'],
              '  EVALSHA 2 keys, user');
    ok($sha{ $e->[1] } && !grep({ $_ eq $e->[1] } $hb_sha, $leave_sha,
                                $online_sha), '  with the fourth script');

    $fake->set_reply('EVALSHA', resp_array(resp_int(0), resp_int(0)));
    $res = $ng->get('/online?user_id=alice');
    is_deeply($res->{json}, { user_id => 'alice', online => JSON::PP::false(),
                              expires_in_ms => 0, sessions => 0 },
              'lookup: 0 is offline');

    is($fake->connections, 1, 'all of it on one connection');

    #######################################################################
    # NOSCRIPT -> EVAL with the script text

    $fake->set_reply('EVALSHA', resp_err('NOSCRIPT No matching script.'));
    $fake->set_reply('EVAL', resp_array(resp_int(9), resp_int(1)));
    $n = () = $fake->commands;
    $res = $ng->post('/hb', { user_id => 'bob' });
    is($res->{status}, 200, 'NOSCRIPT: heartbeat still succeeds');
    is($res->{json}{online}, 9, '  with the reply to EVAL');
    is_deeply([map { uc "$_->[0] " . ($_->[1] // '') }
                   grep { defined } ($fake->commands)[$n + 1 .. $n + 5]],
              [('SCRIPT LOAD') x 5], '  the scripts are loaded again first');
    my @last = (evals($fake))[-2, -1];
    is(uc $last[0][0], 'EVALSHA', '  EVALSHA first');
    is(uc $last[1][0], 'EVAL', '  then EVAL');
    is(sha1_hex($last[1][1]), $hb_sha, '  of the heartbeat script');
    is_deeply([@{ $last[1] }[2 .. 10]], ['3', $KEY, "$KEY:s", "$KEY:v", '10000',
                                         '16', life(2), 'bob', ''],
              '  with the same keys and arguments');

    $fake->set_reply('EVAL', resp_err('ERR still broken'));
    $res = $ng->post('/hb', { user_id => 'bob' });
    api_error_ok($res, 503, 'redis_unavailable', 'NOSCRIPT, then EVAL fails: 503');

    # a listing: Redis refuses the queued EVALSHA (EXECABORT), or answers
    # NOSCRIPT in its place; the scripts are loaded again, then the
    # transaction goes again with EVAL (a limit of its own each time: no
    # memo of the listing, which would ask the head alone first)
    my $own = 5;
    for my $refusal (resp_err('EXECABORT Transaction discarded because of '
                              . 'previous errors.'),
                     resp_array(resp_err('NOSCRIPT No matching script.'),
                                resp_array()))
    {
        $fake->set_reply('EXEC', $refusal);
        $n = () = $fake->commands;
        my $ok = resp_array(head(1), resp_array(resp_bulk('eve')));
        $fake->set_reply('EXEC_NEXT', $ok);
        $res = $ng->get('/online?limit=' . $own++);
        is_deeply($res->{json}{users}, ['eve'],
                  'listing after a refused EVALSHA: answered')
            or diag $res->{raw};
        my @c = map { uc $_->[0] }
                grep { defined } ($fake->commands)[$n .. $n + 12];
        is_deeply(\@c, [qw(MULTI EVALSHA ZREVRANGE EXEC),
                        ('SCRIPT') x 5, qw(MULTI EVAL ZREVRANGE EXEC)],
                  '  by the same transaction with EVAL, after SCRIPT LOAD');
    }

    #######################################################################
    # replies of the wrong shape: 503, and the next good one works

    my @wrong = (
        ['/hb',     'a bulk string',   resp_bulk('5')],
        ['/hb',     'nil',             resp_nil()],
        ['/hb',     'a status',        resp_status('OK')],
        ['/hb',     'an integer',      resp_int(1)],
        ['/hb',     'an array of one', resp_array(resp_int(1))],
        ['/hb',     '[int, bulk]',     resp_array(resp_int(1), resp_bulk('1'))],
        ['/hb',     '[int, int, int]', resp_array(resp_int(1), resp_int(1),
                                                  resp_int(1))],
        ['/hb',     'an error',        resp_err('ERR boom')],
        ['/leave',  'a bulk string',   resp_bulk('x')],
        ['/leave',  'an error',        resp_err('WRONGTYPE Operation')],
        ['/online', 'an integer',      resp_int(3)],
        ['/online', 'an empty array',  resp_array()],
        ['/online', '[int] for limit 1000', resp_array(resp_int(3))],
        ['/online', '[int, int]',      resp_array(resp_int(3), resp_int(3))],
        ['/online', '[bulk, array]',   resp_array(resp_bulk('3'),
                                                  resp_array(resp_bulk('a')))],
        ['/online', '[int, [int]]',    resp_array(resp_int(1),
                                                  resp_array(resp_int(1)))],
        ['/online', '[int, members] (no event id)',
                                       resp_array(resp_int(1),
                                                  resp_array(resp_bulk('a')))],
        ['/online', '[[int], members]', resp_array(resp_array(resp_int(1)),
                                                   resp_array(resp_bulk('a')))],
        ['/online', '[[int, member], members]',
                    resp_array(resp_array(resp_int(1), resp_bulk('1')),
                               resp_array(resp_bulk('a')))],
        ['/online', 'nil array',       "*-1\r\n"],
        ['/online', 'an error',        resp_err('ERR boom')],
        ['/online?user_id=a', 'a bulk string', resp_bulk('1000')],
        ['/online?user_id=a', 'an integer', resp_int(1000)],
        ['/online?user_id=a', 'an array of one', resp_array(resp_int(1))],
        ['/online?user_id=a', 'an error', resp_err('ERR boom')],
    );
    for my $w (@wrong) {
        my ($path, $what, $bytes) = @$w;
        $fake->set_reply($path eq '/online' ? 'EXEC' : 'EVALSHA', $bytes);
        $res = $path =~ /online/ ? $ng->get($path)
                                 : $ng->post($path, { user_id => 'a' });
        api_error_ok($res, 503, 'redis_unavailable', "$path, redis answers $what: 503");
    }
    $fake->set_reply('EVALSHA', resp_array(resp_int(2), resp_int(1)));
    ok(wait_for(sub { $ng->post('/hb', { user_id => 'a' })->{status} == 200 }, 3),
       'a good reply afterwards: 200');

    #######################################################################
    # more than 100 KiB in one reply (hiredis reads 16 KiB at a time)

    my @members = map { sprintf('%04d', $_) . ('m' x 124) } 0 .. 999;
    my $big = resp_array(head(1000),
                         resp_array(map { resp_bulk($_) } reverse @members));
    ok(length $big > 100 * 1024, 'a reply of ' . length($big) . ' bytes');
    $fake->set_reply('EXEC', $big);
    for my $try (1 .. 3) {
        $res = $ng->get('/online');
        is($res->{status}, 200, "big listing $try: 200");
        is($res->{json}{count}, 1000, '  count 1000');
        # (a read that stalls after 16 KiB would end in 504 at the timeout)
        is_deeply($res->{json}{users}, \@members, '  all 1000 members, sorted');
    }

    # names that share 8 bytes or more, that are prefixes of each other,
    # with bytes above 0x7f: the order is memcmp()'s, whatever the sort
    srand(7);
    my @alphabet = ('a', 'b', 'Z', '0', '~', "\xc3\xa9", "\xe2\x82\xac");
    my %names = map { $_ => 1 } ('a', 'ab', 'abcdefgh', 'abcdefghi',
                                 'abcdefgha', 'abcdefgh~', "abcdefgh\xc3\xa9");
    while (keys %names < 700) {
        my $stem = rand() < 0.5 ? 'abcdefg' : '';
        $names{ $stem . join '', map { $alphabet[rand @alphabet] }
                                 1 .. 1 + int rand 12 } = 1;
    }
    my @shuffled = sort { rand() <=> 0.5 } keys %names;
    $fake->set_reply('EXEC', resp_array(head(scalar @shuffled),
        resp_array(map { resp_bulk($_) } @shuffled)));
    $res = $ng->get('/online');
    is_deeply([map { encode_utf8($_) } @{ $res->{json}{users} }],
              [sort keys %names],
              '700 names, many alike in their first 8 bytes: sorted bytewise');

    $ng->stop;
    $fake->stop;
}

###########################################################################
# a reply in pieces

{
    my $fake = fake_redis(handler => sub {
        my ($argv, $st) = @_;
        return fake_std($argv, $st) // ["*2\r\n:4", "2\r", "\n:1\r\n"];
    });
    my $ng = nginx_for($fake);
    my $res;
    ok(wait_for(sub {
        $res = $ng->post('/hb', { user_id => 'p' });
        $res->{status} == 200;
    }, 5), 'a reply that arrives in three pieces');
    is($res->{json}{online}, 42, '  is put together');
    $ng->stop;
    $fake->stop;
}

###########################################################################
# a timed-out command's late reply is not given to the next request

{
    my $fake = fake_redis(handler => sub {
        my ($argv, $st) = @_;
        my $std = fake_std($argv, $st);
        return $std if defined $std;
        my $k = ++$st->{evals};
        my $reply = resp_array(resp_int($k), resp_int(1));
        return $reply if $k != 2;
        # the second one waits until the test lets it go
        return sub { -e "$st->{dir}/release" ? $reply : undef };
    });
    my $ng = nginx_for($fake);
    ok(wait_for(sub { $ng->post('/hb', { user_id => 'a' })->{status} == 200 }, 5),
       'first heartbeat answered (reply 1)');

    my $res = $ng->post('/hb', { user_id => 'b' });
    api_error_ok($res, 504, 'redis_timeout', 'second is held back: 504');
    ok($res->{elapsed} >= scaled($TIMEOUT) - 0.01
       && $res->{elapsed} < scaled($TIMEOUT + 0.4),
       '  at about the timeout') or diag "$res->{elapsed}s";

    my $p = $ng->send_request('POST', '/hb', body => '{"user_id":"c"}',
                              headers => ['Content-Type' => 'application/json']);
    ok(wait_for(sub { (evals($fake)) >= 3 }, 2), 'third command sent');
    $fake->touch('release');
    $res = $p->finish(5);
    is($res->{status}, 200, 'third heartbeat answered');
    is($res->{json}{online}, 3, '  with its own reply, not the late one');
    $res = $ng->post('/hb', { user_id => 'd' });
    is($res->{json}{online}, 4, 'fourth: its own reply');
    $ng->stop;
    $fake->stop;
}

###########################################################################
# After SCRIPT FLUSH, NOSCRIPT must not reorder commands: a refused
# command goes again (as EVAL, once the scripts are loaded again) only
# when no command written after it has run meanwhile; otherwise it fails.
# A heartbeat and a leave of one user; both EVALSHA replies are held
# until both commands are in.

# the reply to EVALSHA of a heartbeat (9 arguments) and of a leave (8)
sub flush_fake {
    my ($hb, $leave) = @_;
    return fake_redis(handler => sub {
        my ($argv, $st) = @_;
        my $std = fake_std($argv, $st);
        return $std if defined $std;
        my $ok = resp_array(resp_int(7), resp_int(1));
        return $ok if uc $argv->[0] eq 'EVAL';
        my $hb_of = @$argv == 11 && ($argv->[9] // '') eq 'alice';
        return $ok unless $hb_of || ($argv->[6] // '') eq 'alice';
        my $r = $hb_of ? $hb : $leave;
        return sub { -e "$st->{dir}/release" ? $r : undef };
    });
}

sub heartbeat_then_leave {
    my ($fake, $ng) = @_;
    my @ct = (headers => ['Content-Type' => 'application/json']);
    my $hb = $ng->send_request('POST', '/hb', body => '{"user_id":"alice"}',
                               @ct);
    ok(wait_for(sub { (evals($fake)) >= 1 }, 10), 'heartbeat of alice sent');
    my $leave = $ng->send_request('POST', '/leave',
                                  body => '{"user_id":"alice"}', @ct);
    ok(wait_for(sub { (evals($fake)) >= 2 }, 10), '  then her leave');
    $fake->touch('release');
    return ($hb->finish(10), $leave->finish(10));
}

for my $case (['the leave ran', 0], ['both refused', 1]) {
    my ($what, $both) = @$case;
    my $noscript = resp_err('NOSCRIPT No matching script.');
    my $fake = flush_fake($noscript, $both ? $noscript
                                           : resp_array(resp_int(0), resp_int(0)));
    my $ng = nginx_for($fake, timeout => 10);
    ok(wait_for(sub { $ng->post('/hb', { user_id => 'x' })->{status} == 200 },
                10), "$what: connected");
    my $n = () = $fake->commands;

    my ($hb, $leave) = heartbeat_then_leave($fake, $ng);
    wait_for(sub { (() = $fake->commands) >= $n + ($both ? 9 : 7) }, 10);
    my @after = map { [uc $_->[0], scalar @$_] }
                grep { defined } ($fake->commands)[$n .. $n + 8];

    if ($both) {
        is($hb->{status}, 200, "$what: the heartbeat goes again, 200");
        is($leave->{status}, 200, '  the leave too');
        is_deeply([map { $_->[0] } @after],
                  [qw(EVALSHA EVALSHA), ('SCRIPT') x 5, qw(EVAL EVAL)],
                  '  as EVAL, once the scripts are loaded again');
        is_deeply([map { $_->[1] } @after[7, 8]], [11, 9],
                  '  heartbeat first, then the leave');
    } else {
        api_error_ok($hb, 503, 'redis_unavailable',
                     "$what after the refused heartbeat: it fails");
        is($leave->{status}, 200, '  the leave answers 200');
        is_deeply([map { $_->[0] } @after[0 .. 6]],
                  [qw(EVALSHA EVALSHA), ('SCRIPT') x 5],
                  '  the scripts are loaded again');
        ok(!grep({ $_->[0] eq 'EVAL' } @after),
           '  and the heartbeat does not run after the leave');
    }
    is($ng->post('/hb', { user_id => 'bob' })->{status}, 200,
       '  the next heartbeat: 200');
    $ng->stop;
    $ng->stop;
    $fake->stop;
}

###########################################################################
# a server that accepts and never answers, not even the handshake

{
    my $fake = fake_redis(mode => 'silent');
    my $ng = nginx_for($fake);
    ok(wait_for(sub { $fake->connections >= 1 }, 3), 'silent: connected');
    for (1 .. 3) {
        my $res = $ng->post('/hb', { user_id => 'a' });
        ok($res->{status} == 504 || $res->{status} == 503,
           "silent redis, request $_: 504 or 503") or diag $res->{raw};
        ok($res->{elapsed} < scaled($TIMEOUT + 0.4), '  in bounded time')
            or diag "$res->{elapsed}s";
    }
    is($ng->get('/static')->{status}, 200, 'static still served');
    $ng->stop;
    $fake->stop;
}

# handshake answered, commands never
{
    my $fake = fake_redis(mode => 'stall');
    my $ng = nginx_for($fake);
    ok(wait_for(sub { loaded($fake) >= 4 }, 3), 'stall: handshake done');
    my $res;
    ok(wait_for(sub {
        $res = $ng->post('/hb', { user_id => 'a' });
        $res->{status} != 503;
    }, 3), 'stall: the module is ready');
    api_error_ok($res, 504, 'redis_timeout', 'commands never answered: 504');
    ok($res->{elapsed} >= scaled($TIMEOUT) - 0.01
       && $res->{elapsed} < scaled($TIMEOUT + 0.4), '  after the timeout')
        or diag "$res->{elapsed}s";
    $ng->stop;
    $fake->stop;
}

###########################################################################
# a server that closes every connection at once

{
    my $fake = fake_redis(mode => 'close');
    my $ng = nginx_for($fake);
    ok(wait_for(sub { $fake->connections >= 1 }, 3), 'close: connected');
    my $t0 = time;
    my ($n, $bad) = (0, 0);
    while (time - $t0 < 1.5) {
        my $res = $ng->post('/hb', { user_id => 'a' });
        $n++;
        $bad++ unless $res->{status} == 503 && $res->{elapsed} < scaled(0.3)
                      && ($res->{json}{error} // '') eq 'redis_unavailable';
    }
    is($bad, 0, "closed at once: $n requests, each a quick 503");
    my $c = $fake->connections;
    ok($c >= 2, "  the worker kept retrying ($c connections in 1.5 s)");
    ok($c <= 20, '  with a backoff, not in a tight loop');
    is($ng->get('/static')->{status}, 200, 'static still served');
    $ng->stop;
    $fake->stop;
}

###########################################################################
# -ERR to everything, the handshake included

{
    my $fake = fake_redis(mode => 'error');
    my $ng = nginx_for($fake);
    ok(wait_for(sub { $fake->connections >= 1 }, 3), 'error: connected');
    my $t0 = time;
    my $bad = 0;
    while (time - $t0 < 1.5) {
        my $res = $ng->post('/hb', { user_id => 'a' });
        $bad++ unless $res->{status} == 503 && $res->{elapsed} < scaled(0.3);
    }
    is($bad, 0, 'handshake refused: every request a quick 503');
    my $c = $fake->connections;
    ok($c >= 2, "  the connection is dropped and retried ($c in 1.5 s)");
    ok($c <= 20, '  with a backoff');
    like($ng->log_text, qr/\[error\].*redis/i, '  the failure is logged');
    $ng->stop;
    $fake->stop;
}

done_testing;
