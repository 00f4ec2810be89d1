#!/usr/bin/perl

# Heartbeats that go to Redis together: those a worker reads in one pass
# of its event loop for the same room and location are one call of the
# heartbeat script.  Many heartbeats written at once on their own
# connections must take fewer script calls than heartbeats (Redis's
# commandstats say how many), and each request must still get its own
# answer: its user, its room, its own session count (a user twice in one
# batch sees its second session), the room's count; a stream sees every
# join once, counted 1, 2, 3... in order; different rooms and locations
# never share a call; a client that leaves before the answer costs the
# others nothing; a refused call fails every heartbeat of it with 503;
# a Redis without ZMSCORE (before 6.2) gets the same answers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use IO::Select;
use JSON::PP;
use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr });
presence_redis %%REDIS%%;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%
    location = /stream { presence_stream; }
    location = /short/hb { presence_ttl 100s; presence_heartbeat; }
    location = /room/a/hb   { presence_room a;   presence_heartbeat; }
    location = /room/b/hb   { presence_room b;   presence_heartbeat; }
    location = /room/err/hb { presence_room err; presence_heartbeat; }
    location = /ping { return 204; }
}
EOF

my $JSON = JSON::PP->new->utf8;

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

sub evalsha_calls {
    my $info = $r->cmd('INFO', 'commandstats');
    return $info =~ /^cmdstat_evalsha:calls=(\d+)/m ? $1 : 0;
}

# Opens a connection per request and has nginx answer one request on each
# (so that all are accepted and idle, as a client's keep-alive connections
# are), then writes every request in one go, so that nginx finds them all
# readable in one pass; returns the responses (status, JSON) in the order
# of @reqs.  A request with close => 1 is written and its connection
# closed at once.
sub burst {
    my (@reqs) = @_;
    my @socks;
    for my $q (@reqs) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $ng->port, Proto => 'tcp')
            or die "connect: $!";
        push @socks, $s;
        $s->syswrite("GET /ping HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    my $ready = time + scaled(10);
    for my $s (@socks) {
        my $buf = '';
        my $sel = IO::Select->new($s);
        while ($buf !~ /\r\n\r\n/ && time < $ready) {
            last unless $sel->can_read($ready - time);
            last unless sysread($s, $buf, 4096, length $buf);
        }
        die "burst: no answer to the ping\n" unless $buf =~ m{^HTTP/1\.1 204};
    }
    for my $i (0 .. $#reqs) {
        my $q = $reqs[$i];
        my $body = $JSON->encode($q->{body});
        my $path = $q->{path} // '/hb';
        $socks[$i]->syswrite("POST $path HTTP/1.1\r\nHost: t\r\n"
            . "Connection: close\r\nContent-Type: application/json\r\n"
            . "Content-Length: " . length($body) . "\r\n\r\n$body");
    }
    for my $i (0 .. $#reqs) {
        if ($reqs[$i]{close}) {
            close $socks[$i];
            $socks[$i] = undef;
        }
    }
    my @res;
    my $deadline = time + scaled(10);
    for my $i (0 .. $#reqs) {
        my $s = $socks[$i] or do { push @res, undef; next };
        my $buf = '';
        my $sel = IO::Select->new($s);
        while (time < $deadline) {
            last unless $sel->can_read($deadline - time);
            my $n = sysread($s, $buf, 65536, length $buf);
            last unless $n;
        }
        my ($status) = $buf =~ m{^HTTP/1\.\d (\d+)};
        my ($body) = $buf =~ /\r\n\r\n(.*)\z/s;
        my $json = eval { $JSON->decode($body // '') };
        push @res, { status => $status // 0, json => $json };
    }
    return @res;
}

###########################################################################
# one room: fewer calls than heartbeats, each its own answer

my $s = sse_open($ng, '/stream');
ok($s->wait_event('snapshot', 5), 'stream: snapshot');

my $N = 40;
my @reqs = map { { body => { user_id => "u$_" } } } 0 .. $N - 1;
# u0 again with a named session, in the same burst: its second session
push @reqs, { body => { user_id => 'u0', session_id => 'tab2' } };
# u1 twice with no session, u2 twice with the same named one
push @reqs, { body => { user_id => 'u1' } },
            { body => { user_id => 'u2', session_id => 'x' } },
            { body => { user_id => 'u2', session_id => 'x' } };

my $before = evalsha_calls();
my @res = burst(@reqs);
my $calls = evalsha_calls() - $before;

is(scalar(grep { $_->{status} == 200 } @res), scalar @reqs,
   'burst: every heartbeat answered 200');
ok($calls < @reqs, "burst: $calls script calls for " . @reqs
   . ' heartbeats (batched)');

my @wrong = grep {
    my $j = $res[$_]{json} || {};
    ($j->{user_id} // '') ne $reqs[$_]{body}{user_id}
        || ($j->{room} // '') ne 'global'
} 0 .. $#res;
is("@wrong", '', 'burst: each answer names its own user and the room');

is($res[$N]{json}{sessions}, 2,
   'burst: u0 heartbeating again with a session_id has 2 sessions');
is($res[$N + 1]{json}{sessions}, 1, 'burst: u1 twice, 1 session');
is(join(',', map { $_->{json}{sessions} } @res[$N + 2, $N + 3]), '2,2',
   'burst: u2 twice with the same named session: 2 sessions both times');
is($res[0]{json}{sessions}, 1, 'burst: its first heartbeat had 1');
my @bad = grep { !defined $_->{json}{online} || $_->{json}{online} < 1
                 || $_->{json}{online} > $N } @res;
is(scalar(@bad), 0, 'burst: every count between 1 and the users online');
is((sort { $b <=> $a } map { $_->{json}{online} } @res)[0], $N,
   'burst: the last answers count every user');

ok($s->wait(sub { $s->events_of('join') >= $N }, 5),
   "stream: $N joins");
my @joins = $s->events_of('join');
is(scalar(@joins), $N, 'stream: one join per user (not for the second '
   . 'session)');
is(join(',', map { $_->{json}{count} } @joins), join(',', 1 .. $N),
   'stream: the joins count 1, 2, 3... in order');
my %seen = map { $_->{json}{user_id} => 1 } @joins;
is(scalar(keys %seen), $N, 'stream: every user joined once');
is($r->cmd('ZCARD', 'presence:{global}'), $N, 'redis: the room has them all');
is_deeply([sort @{ $r->cmd('HKEYS', 'presence:{global}:s') }], ['u0', 'u2'],
   'redis: only u0 and u2 have named sessions');

###########################################################################
# rooms and locations never share a call

@reqs = ((map { { path => '/room/a/hb', body => { user_id => "a$_" } } }
            1 .. 10),
         (map { { path => '/room/b/hb', body => { user_id => "b$_" } } }
            1 .. 10),
         (map { { path => '/short/hb', body => { user_id => "s$_" } } }
            1 .. 10));
@res = burst(@reqs);
is(scalar(grep { $_->{status} == 200 } @res), 30,
   'three rooms and locations: all answered 200');
is($r->cmd('ZCARD', 'presence:{a}'), 10, 'room a: its 10 users');
is($r->cmd('ZCARD', 'presence:{b}'), 10, 'room b: its 10 users');
is(scalar(grep { ($_->{json}{room} // '') eq 'a' } @res[0 .. 9]), 10,
   'room a: its answers say room a');
is(scalar(grep { $_->{json}{online} <= 10 } @res[0 .. 19]), 20,
   'rooms a and b: counts of their own room only');
my $pttl = $r->cmd('PTTL', 'presence:{global}');
my @short = map { $r->cmd('ZSCORE', 'presence:{global}', "s$_") } 1 .. 10;
my @long = map { $r->cmd('ZSCORE', 'presence:{global}', "u$_") } 1 .. 10;
my $t = $r->cmd('TIME');
my $now = $t->[0] * 1000 + int($t->[1] / 1000);
ok(!grep({ $_ - $now > 100_000 } @short),
   'presence_ttl 100s location: its users end within 100 s');
ok(!grep({ $_ - $now < 200_000 } @long),
   'the other location: its users still end after 200 s');

###########################################################################
# a client that goes before its answer

@reqs = map { { body => { user_id => "c$_" }, close => $_ % 2 } } 1 .. 20;
@res = burst(@reqs);
is(scalar(grep { defined && $_->{status} == 200 } @res), 10,
   'clients that left: the others answered 200');
is(scalar(grep { defined $r->cmd('ZSCORE', 'presence:{global}', "c$_") }
          map { 2 * $_ } 1 .. 10), 10,
   'clients that left: the others are online');
is($ng->get('/online')->{status}, 200, 'the worker goes on');

###########################################################################
# a call refused: every heartbeat of it fails, nothing is half written

$r->cmd('SET', 'presence:{err}', 'not a sorted set');
@reqs = map { { path => '/room/err/hb', body => { user_id => "e$_" } } }
        1 .. 10;
@res = burst(@reqs);
is(scalar(grep { $_->{status} == 503 } @res), 10,
   'a refused batch: each heartbeat answers 503');
is(scalar(grep { ($_->{json}{error} // '') eq 'redis_unavailable' } @res),
   10, 'a refused batch: each with the error JSON');
is($r->cmd('TYPE', 'presence:{err}'), 'string',
   'a refused batch: the key untouched');

###########################################################################
# a Redis before 6.2, without ZMSCORE: the script asks ZSCORE per user

{
    my $old = start_redis(args => ['--rename-command', 'ZMSCORE', '']);
    ok(ref $old->cmd('ZMSCORE', 'k', 'm') eq 'Presence::Test::RespError',
       'no ZMSCORE: the command is unknown to this Redis');
    $ng = start_nginx(<<'EOF', vars => { REDIS => $old->addr });
presence_redis %%REDIS%%;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%
    location = /ping { return 204; }
}
EOF
    ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
       'no ZMSCORE: connected');
    @reqs = ((map { { body => { user_id => "z$_" } } } 1 .. 20),
             { body => { user_id => 'z1', session_id => 's' } });
    @res = burst(@reqs);
    is(scalar(grep { $_->{status} == 200 } @res), 21,
       'no ZMSCORE: every heartbeat answered 200');
    is($res[-1]{json}{sessions}, 2, 'no ZMSCORE: z1 again has 2 sessions');
    is($old->cmd('ZCARD', 'presence:{global}'), 20,
       'no ZMSCORE: the room has all 20');
}

done_testing();
