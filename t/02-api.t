#!/usr/bin/perl

# heartbeat, leave, online and the user lookup against a real Redis: every
# field of every answer, the Redis state behind them (the sorted set, its
# scores by Redis's clock, the PEXPIRE), identity from the body and from
# a variable, rooms from a variable, bytewise sorting, limits, ETag/304,
# HEAD, and presence_key_prefix / presence_redis_db.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Encode qw(encode_utf8);
use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $DB = 3;
my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr, DB => $DB });
presence_redis %%REDIS%%;
presence_redis_db %%DB%%;
presence_redis_timeout 2s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%

    location = /hbv    { presence_heartbeat $http_x_user; }
    location = /leavev { presence_leave $http_x_user; }

    location = /room/hb     { presence_room $arg_room; presence_heartbeat; }
    location = /room/leave  { presence_room $arg_room; presence_leave; }
    location = /room/online { presence_room $arg_room; presence_online; }

    location /app/ {
        presence_key_prefix "app1:";
        presence_room lobby;
        presence_ttl 30s;
        presence_online_limit 3;
        location = /app/hb     { presence_heartbeat; }
        location = /app/online { presence_online; }
    }

    location = /frac/hb {
        presence_ttl 1500ms;
        presence_room frac;
        presence_heartbeat;
    }
}
EOF

my $KEY = 'presence:{global}';

sub rcmd { $r->cmd({ db => $DB }, @_) }

# the Redis clock advances past the last heartbeat, so that the next one
# gets a later score (the "most recent" order is then well defined)
sub next_ms {
    my $t = $r->time_ms;
    wait_for(sub { $r->time_ms > $t }, 2) or die "redis clock stuck";
}

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

###########################################################################
# heartbeat

my $t0 = $r->time_ms;
my $res = $ng->post('/hb', { user_id => 'alice' });
my $t1 = $r->time_ms;

json_ok($res, 'heartbeat 200');
is_deeply($res->{json},
          { user_id => 'alice', room => 'global', ttl => 10, online => 1,
            sessions => 1 },
          'heartbeat answer');
like($res->{body}, qr/"ttl"\s*:\s*10\s*[,}]/, 'ttl is the number 10');
like($res->{body}, qr/"online"\s*:\s*1\s*[,}]/, 'online is a number');

# the room, and its last event id (alice joined: an event for the streams)
is_deeply([sort $r->key_list($DB)], [$KEY, "$KEY:v"],
          "the room and its last event id, in db $DB");
is_deeply([$r->key_list(0)], [], 'nothing in db 0');
is(rcmd('TYPE', $KEY), 'zset', 'a sorted set');
my $score = rcmd('ZSCORE', $KEY, 'alice');
ok($score >= $t0 + 10000 && $score <= $t1 + 10000,
   'score is Redis TIME + ttl in ms')
    or diag "score $score, TIME was $t0 .. $t1";
# the key outlives the ttl by 2 x presence_redis_timeout (2s) + 1s: the
# time the streams' sweeps need to announce the last user's timeout
my $pttl = rcmd('PTTL', $KEY);
ok($pttl > 14000 && $pttl <= 15000, 'PEXPIRE ttl + 5 s on the key')
    or diag "pttl $pttl";

next_ms();
$res = $ng->post('/hb', { user_id => 'bob' });
is($res->{json}{online}, 2, 'second user: online 2');

next_ms();
$res = $ng->post('/hb', { user_id => 'alice' });
is($res->{json}{online}, 2, 'repeat heartbeat: still 2');
ok(rcmd('ZSCORE', $KEY, 'alice') > $score, 'repeat heartbeat moves score');
is(rcmd('ZCARD', $KEY), 2, 'ZCARD 2');

# Content-Type variants the contract allows
$res = $ng->post('/hb', '{"user_id":"carl"}',
                 headers => ['Content-Type' => 'application/json; charset=utf-8']);
is($res->{status}, 200, 'application/json with charset');
$res = $ng->post('/hb', '{"user_id":"carl"}',
                 headers => ['Content-Type' => 'text/plain;charset=UTF-8']);
is($res->{status}, 200, 'text/plain (sendBeacon)');
$res = $ng->post('/hb', '{"user_id":"carl"}', no_ct => 1);
is($res->{status}, 200, 'no Content-Type');
$res = $ng->post('/hb', "{\"user_id\":\"carl\"}\r\n");
is($res->{status}, 200, 'trailing whitespace after the object');
$res = $ng->post('/hb', '{"extra":[1,{"a":null}],"user_id":"carl","n":1.5}');
is($res->{status}, 200, 'other members are ignored');
is($res->{json}{user_id}, 'carl', '  user_id found among them');

###########################################################################
# leave

$res = $ng->post('/leave', { user_id => 'carl' });
json_ok($res, 'leave 200');
is_deeply($res->{json}, { user_id => 'carl', room => 'global', online => 2,
                          sessions => 0 },
          'leave answer');
like($res->{body}, qr/"online"\s*:\s*2\s*[,}]/, 'online is a number');
is(rcmd('ZSCORE', $KEY, 'carl'), undef, 'carl gone from the set');

$res = $ng->post('/leave', { user_id => 'nobody' });
is($res->{status}, 200, 'leave of someone not online: 200');
is($res->{json}{online}, 2, '  count unchanged');

###########################################################################
# online

$res = $ng->get('/online');
json_ok($res, 'online 200');
is_deeply($res->{json},
          { room => 'global', ttl => 10, count => 2, users => ['alice', 'bob'] },
          'online answer');
like($res->{body}, qr/"count"\s*:\s*2\s*[,}]/, 'count is a number');
like($res->{headers}{etag} // '', qr/^"[^"]+"$/, 'strong quoted ETag');

###########################################################################
# identity from a variable

my $before = $r->snapshot;
$res = $ng->request('POST', '/hbv', headers => ['X-User' => 'dave']);
json_ok($res, 'variable identity, no body');
is_deeply($res->{json},
          { user_id => 'dave', room => 'global', ttl => 10, online => 3,
            sessions => 1 },
          '  answer');

$res = $ng->post('/hbv', { user_id => 'mallory' }, headers => ['X-User' => 'erin']);
is($res->{json}{user_id}, 'erin', "the body's user_id is ignored");
is(rcmd('ZSCORE', $KEY, 'mallory'), undef, '  mallory never written');
ok(defined rcmd('ZSCORE', $KEY, 'erin'), '  erin written');

$before = $r->snapshot;
$res = $ng->request('POST', '/hbv');
api_error_ok($res, 401, 'no_identity', 'empty variable: 401');
$res = $ng->post('/hbv', { user_id => 'mallory' });
api_error_ok($res, 401, 'no_identity', 'empty variable, body ignored: 401');
$res = $ng->request('POST', '/leavev');
api_error_ok($res, 401, 'no_identity', 'leave with empty variable: 401');
is_deeply($r->snapshot, $before, '  redis unchanged');

$res = $ng->request('POST', '/leavev', headers => ['X-User' => 'erin']);
is_deeply($res->{json}, { user_id => 'erin', room => 'global', online => 3,
                          sessions => 0 },
          'leave with variable identity');
is(rcmd('ZSCORE', $KEY, 'erin'), undef, '  erin gone');

###########################################################################
# rooms from a variable

$res = $ng->post('/room/hb?room=lobby', { user_id => 'fay' });
is_deeply($res->{json},
          { user_id => 'fay', room => 'lobby', ttl => 10, online => 1,
            sessions => 1 },
          'heartbeat in room lobby');
ok(defined rcmd('ZSCORE', 'presence:{lobby}', 'fay'), '  key presence:{lobby}');
is(rcmd('ZSCORE', $KEY, 'fay'), undef, '  not in global');

$res = $ng->get('/room/online?room=lobby');
is_deeply($res->{json},
          { room => 'lobby', ttl => 10, count => 1, users => ['fay'] },
          'listing of room lobby');

$res = $ng->post('/room/hb?room=caf%C3%A9', { user_id => 'fay' });
is($res->{status}, 200, 'room from a raw query argument');
is($res->{json}{room}, 'caf%C3%A9', '  $arg_room is used as is');

$res = $ng->post('/room/leave?room=lobby', { user_id => 'fay' });
is_deeply($res->{json}, { user_id => 'fay', room => 'lobby', online => 0,
                          sessions => 0 },
          'leave in room lobby');
is(rcmd('EXISTS', 'presence:{lobby}'), 0, '  empty room: key gone');

###########################################################################
# user lookup

$t0 = $r->time_ms;
$res = $ng->get('/online?user_id=alice');
$t1 = $r->time_ms;
json_ok($res, 'lookup 200');
is($res->{json}{user_id}, 'alice', '  user_id');
ok($res->{json}{online}, '  online true');
like($res->{body}, qr/"online"\s*:\s*true/, '  a JSON true');
my $ms = $res->{json}{expires_in_ms} // -1;
ok($ms > 0 && $ms <= 10000, '  0 < expires_in_ms <= ttl') or diag $ms;
# the score less Redis's clock at the lookup, which was between the two
my $score_a = rcmd('ZSCORE', $KEY, 'alice');
ok($ms >= $score_a - $t1 && $ms <= $score_a - $t0,
   '  expires_in_ms matches the score')
    or diag "$ms, score $score_a, TIME $t0 .. $t1";

$res = $ng->get('/online?user_id=nobody');
is_deeply($res->{json}, { user_id => 'nobody', online => JSON::PP::false(),
                          expires_in_ms => 0, sessions => 0 }, 'lookup of someone offline');
like($res->{body}, qr/"online"\s*:\s*false/, '  a JSON false');
like($res->{body}, qr/"expires_in_ms"\s*:\s*0\s*[,}]/, '  expires_in_ms 0');

$ng->post('/hb', { user_id => 'a b/é' });
$res = $ng->get('/online?user_id=a%20b%2F%C3%A9');
is($res->{json}{user_id}, 'a b/é', 'lookup argument is percent-decoded');
ok($res->{json}{online}, '  and found');
$ng->post('/leave', { user_id => 'a b/é' });

###########################################################################
# bytewise sorting and limits

rcmd('FLUSHDB');
my @order = ('zoe', '10', 'Émile', '9', '_x', 'Alice', 'alice', 'Zed', 'é');
for my $u (@order) {
    next_ms();
    is($ng->post('/hb', { user_id => $u })->{status}, 200, "heartbeat $u");
}
my @bytes_sorted = sort map { encode_utf8($_) } @order;

$res = $ng->get('/online');
is_deeply([map { encode_utf8($_) } @{ $res->{json}{users} }], \@bytes_sorted,
          'users sorted bytewise')
    or diag explain $res->{json}{users};
is($res->{json}{count}, scalar @order, 'count');

for my $k (0, 1, 3, scalar @order, 1000) {
    $res = $ng->get("/online?limit=$k");
    my $n = $k > @order ? @order : $k;
    my @recent = $n ? @order[-$n .. -1] : ();
    is_deeply([map { encode_utf8($_) } @{ $res->{json}{users} }],
              [sort map { encode_utf8($_) } @recent],
              "limit=$k: the $n most recent, sorted")
        or diag explain $res->{json};
    is($res->{json}{count}, scalar @order, "limit=$k: count is the full count");
}

# prefix, ttl and limit of the /app/ location
my @app = qw(u1 u2 u3 u4 u5);
for my $u (@app) {
    next_ms();
    $res = $ng->post('/app/hb', { user_id => $u });
}
is_deeply($res->{json}, { user_id => 'u5', room => 'lobby', ttl => 30,
                          online => 5, sessions => 1 }, 'prefixed location heartbeat');
is(rcmd('ZCARD', 'app1:{lobby}'), 5, 'presence_key_prefix: app1:{lobby}');
is(rcmd('EXISTS', 'presence:{lobby}'), 0, '  nothing under the default prefix');
$pttl = rcmd('PTTL', 'app1:{lobby}');
ok($pttl > 34000 && $pttl <= 35000, '  PEXPIRE 30s + 5s') or diag $pttl;
$res = $ng->get('/app/online');
is_deeply($res->{json}, { room => 'lobby', ttl => 30, count => 5,
                          users => [qw(u3 u4 u5)] },
          'presence_online_limit 3 is the default limit');
$res = $ng->get('/app/online?limit=100');
is_deeply($res->{json}{users}, [qw(u3 u4 u5)],
          'a larger limit is capped to presence_online_limit');
$res = $ng->get('/app/online?limit=2');
is_deeply($res->{json}{users}, [qw(u4 u5)], 'a smaller limit');
is_deeply([$r->key_list(0)], [], 'still nothing in db 0');

# a fractional TTL
my $t = time;
$res = $ng->post('/frac/hb', { user_id => 'g' });
like($res->{body}, qr/"ttl"\s*:\s*1\.5\s*[,}]/, 'ttl 1500ms is 1.5');
$pttl = rcmd('PTTL', 'presence:{frac}');
# less what has passed since the request was sent (a slow run), and 2 ms
# for the rounding of Redis's and our clock
my $took = int((time - $t) * 1000) + 2;
ok($pttl >= 6500 - $took && $pttl <= 6500, '  PEXPIRE 1500 + 5000')
    or diag "$pttl after $took ms";

###########################################################################
# ETag, If-None-Match, HEAD

rcmd('FLUSHDB');
$ng->post('/hb', { user_id => $_ }) for qw(ann ben);
my $a1 = $ng->get('/online');
my $e1 = $a1->{headers}{etag};
like($e1 // '', qr/^"[^"]+"$/, 'ETag');

next_ms();
$ng->post('/hb', { user_id => 'ann' });
my $a2 = $ng->get('/online');
is($a2->{headers}{etag}, $e1, 'repeat heartbeat of a listed user: same ETag');
is($a2->{body}, $a1->{body}, '  same body');

$ng->post('/hb', { user_id => 'cat' });
my $e2 = $ng->get('/online')->{headers}{etag};
isnt($e2, $e1, 'someone joins: new ETag');

$ng->post('/leave', { user_id => 'cat' });
my $e3 = $ng->get('/online')->{headers}{etag};
isnt($e3, $e2, 'someone leaves: new ETag');

$ng->post('/leave', { user_id => 'ben' });
$ng->post('/hb', { user_id => 'bea' });
my $e4 = $ng->get('/online')->{headers}{etag};
isnt($e4, $e3, 'same count, other members: new ETag');

for my $inm ($e4, '*', qq{"nope", $e4}, "W/$e4") {
    $res = $ng->get('/online', headers => ['If-None-Match' => $inm]);
    is($res->{status}, 304, "If-None-Match: $inm -> 304");
    is($res->{body}, '', '  no body');
    is($res->{headers}{etag}, $e4, '  with the ETag');
    like($res->{headers}{'cache-control'} // '', qr/no-store/, '  no-store');
}
for my $inm ($e3, '"nope"') {
    $res = $ng->get('/online', headers => ['If-None-Match' => $inm]);
    is($res->{status}, 200, "If-None-Match: $inm -> 200");
    is_deeply($res->{json}{users}, [qw(ann bea)], '  with the listing');
}

my $get = $ng->get('/online');
$res = $ng->head('/online');
is($res->{status}, 200, 'HEAD 200');
is($res->{body}, '', '  no body');
for my $h ('etag', 'content-type', 'content-length', 'cache-control') {
    is($res->{headers}{$h}, $get->{headers}{$h}, "  $h as for GET");
}
$res = $ng->head('/online', headers => ['If-None-Match' => $e4]);
is($res->{status}, 304, 'HEAD with a matching If-None-Match: 304');
$res = $ng->head('/online?user_id=ann');
ok($res->{status} == 200 && $res->{body} eq '', 'HEAD of a lookup');

###########################################################################
# 200 clients at once: the commands pipeline on one connection, and each
# answer is the one for its own request (the counts after each heartbeat
# are then all different: exactly base+1 .. base+200)

rcmd('FLUSHDB');
my @p = map {
    $ng->send_request('POST', '/hb', body => qq({"user_id":"burst$_"}),
                      headers => ['Content-Type' => 'application/json'])
} 1 .. 200;
my (%seen, $bad);
for my $i (1 .. 200) {
    my $x = $p[$i - 1]->finish(10);
    $bad++ unless $x && $x->{status} == 200
                  && $x->{json}{user_id} eq "burst$i";
    $seen{ $x->{json}{online} // 'none' }++ if $x;
}
ok(!$bad, '200 concurrent heartbeats: each answered for its own user');
is_deeply([sort { $a <=> $b } keys %seen], [1 .. 200],
          '  counts 1..200, each once');
is(rcmd('ZCARD', $KEY), 200, '  all 200 in redis');

done_testing;
