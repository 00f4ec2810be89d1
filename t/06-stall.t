#!/usr/bin/perl

# A stalled Redis (SIGSTOP: its sockets stay open, nothing is answered):
# API requests get 504 redis_timeout at about presence_redis_timeout, and
# meanwhile the same single worker keeps serving other requests at once.
# After SIGCONT the module recovers, and late replies to timed-out
# commands are not handed to later requests.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

# presence_redis_timeout, and the most a static request may take meanwhile
# (a tenth of it: a worker blocked on Redis would take the whole timeout)
my $TIMEOUT = scaled(0.5);
my $FAST = scaled(0.05);

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr, TIMEOUT => conf_time(0.5) },
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /online { presence_online; }
    location = /static { }
}
EOF
    files => { static => 'static' });

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');
is($ng->post('/hb', { user_id => 'alice' })->{status}, 200, 'heartbeat');

my $hb = $ng->build_request('POST', '/hb',
    headers => ['Content-Type' => 'application/json'],
    body => '{"user_id":"stalled"}');

###########################################################################
# one request waits on a stalled Redis

$r->kill_stop;

my $pending = $ng->send_raw($hb);
my @static;
for (1 .. 5) {
    my $s = $ng->get('/static');
    push @static, $s->{elapsed};
    is($s->{status}, 200, "static request $_ while the heartbeat waits");
}
ok(!$pending->ready, 'the heartbeat was still waiting meanwhile');
my $max = (sort { $b <=> $a } @static)[0];
ok($max < $FAST, 'static requests answered in under ' . $FAST * 1000 . ' ms')
    or diag "slowest ${max}s";

my $res = $pending->finish(5);
api_error_ok($res, 504, 'redis_timeout', 'stalled redis: 504');
ok($res->{elapsed} >= $TIMEOUT - 0.01 && $res->{elapsed} < $TIMEOUT + scaled(0.4),
   '  after about presence_redis_timeout') or diag "$res->{elapsed}s";

###########################################################################
# several at once, while static requests keep flowing

my @p = map { $ng->send_raw($hb) } 1 .. 5;
my $p_online = $ng->send_request('GET', '/online');
@static = ();
my $t0 = time;
while (time - $t0 < $TIMEOUT + scaled(0.2)) {
    push @static, $ng->get('/static')->{elapsed};
}
$max = (sort { $b <=> $a } @static)[0];
ok($max < $FAST, scalar(@static) . ' static requests meanwhile, all under '
   . $FAST * 1000 . ' ms')
    or diag "slowest ${max}s";

for my $x (@p, $p_online) {
    my $res = $x->finish(5);
    ok($res && ($res->{status} == 504 || $res->{status} == 503),
       'concurrent request: 504 (or 503 once the connection is dropped)')
        or diag $res ? $res->{raw} : 'no answer';
    ok($res && $res->{elapsed} < $TIMEOUT + scaled(0.4), '  in bounded time')
        or diag $res ? "$res->{elapsed}s" : '';
    api_error_ok($res, $res->{status},
                 $res->{status} == 504 ? 'redis_timeout' : 'redis_unavailable',
                 '  as a JSON error');
}

# still stalled: later requests never hang either
for (1 .. 3) {
    my $res = $ng->post('/hb', { user_id => 'later' });
    ok(($res->{status} == 504 || $res->{status} == 503)
       && $res->{elapsed} < $TIMEOUT + scaled(0.4),
       "request $_ still stalled: bounded")
        or diag "$res->{status} after $res->{elapsed}s";
}

###########################################################################
# SIGCONT: recovery, and late replies go nowhere

$r->cont;
ok(wait_for(sub { $ng->post('/hb', { user_id => 'bob' })->{status} == 200 }, 3),
   'redis continues: heartbeats succeed again');

for my $u (qw(carol dave erin)) {
    my $res = $ng->post('/hb', { user_id => $u });
    is($res->{json}{user_id}, $u, "answer for $u is about $u");
    is($res->{json}{online}, $r->cmd('ZCARD', 'presence:{global}'),
       '  with the count from redis');
}
$res = $ng->get('/online?user_id=erin');
ok($res->{json}{online} && $res->{json}{user_id} eq 'erin',
   'lookup answers its own question');
$res = $ng->get('/online');
is($res->{json}{count}, $r->cmd('ZCARD', 'presence:{global}'),
   'listing count matches redis');

done_testing;
