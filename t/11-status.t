#!/usr/bin/perl

# presence_status: counters summed over all workers in shared memory, each
# worker's Redis connection listed, JSON or Prometheus text; the counters
# move exactly with the requests and survive a reload.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr, TIMEOUT => conf_time(0.5) }, workers => 2);
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /leave  { presence_leave; }
    location = /online { presence_online; }
    location = /status { presence_status; }
}
EOF

my @COUNTERS = qw(heartbeats leaves listings client_errors redis_unavailable
                  redis_timeouts redis_reconnects redis_rtt_us_sum
                  redis_rtt_count);

sub status { $ng->get('/status')->{json} }

# both workers connected before counting
ok(wait_for(sub {
    my $s = status();
    $s && @{ $s->{workers} } == 2
       && !grep { !$_->{redis_connected} } @{ $s->{workers} };
}, 5), 'two workers listed, both connected');

my $s0 = status();
is($s0->{$_}, 0, "$_ starts at 0") for @COUNTERS;
is($s0->{redis_in_flight}, 0, 'nothing in flight');
my %pids = map { $_->{pid} => 1 } @{ $s0->{workers} };
is_deeply([sort keys %pids], [sort $ng->worker_pids],
          'the listed pids are the workers');

# many connections so that both workers take some
$ng->post('/hb', { user_id => "u$_" }) for 1 .. 10;
$ng->post('/leave', { user_id => "u$_" }) for 1 .. 3;
$ng->get('/online') for 1 .. 4;
$ng->get('/online?user_id=u5');
$ng->post('/hb', '{"user_id":') for 1 .. 2;     # 400
$ng->get('/hb');                                # 405
$ng->post('/hb', 'x', headers => ['Content-Type' => 'text/html']);  # 415

my $s1 = status();
is($s1->{heartbeats}, 10, 'heartbeats');
is($s1->{leaves}, 3, 'leaves');
is($s1->{listings}, 5, 'listings and lookups');
is($s1->{client_errors}, 4, 'client errors');
is($s1->{redis_rtt_count}, 18, 'every reply timed');
ok($s1->{redis_rtt_us_sum} > 0, 'round trips summed');

# 503 and 504 are counted apart

$r->stop;
ok(wait_for(sub { $ng->post('/hb', { user_id => 'x' })->{status} == 503 },
            3), 'redis down: 503');
my $s2 = status();
ok($s2->{redis_unavailable} >= 1, 'redis_unavailable counted');
ok((grep { !$_->{redis_connected} } @{ $s2->{workers} }) >= 1,
   'a worker shows its connection down');

$r->start;
ok(wait_for(sub {
    my $s = status();
    !grep { !$_->{redis_connected} } @{ $s->{workers} };
}, 5), 'both reconnected');
my $s3 = status();
is($s3->{redis_reconnects}, 2, 'one reconnect per worker');
is($s3->{heartbeats}, 10, 'the 503s were no heartbeats');

# Prometheus text, by query or Accept

my $p = $ng->get('/status?format=prometheus');
is($p->{status}, 200, 'prometheus');
like($p->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4},
     'prometheus content type');
like($p->{body}, qr/^# TYPE nginx_presence_heartbeats_total counter$/m,
     'TYPE line');
like($p->{body}, qr/^# HELP nginx_presence_heartbeats_total \S/m,
     'HELP line');
like($p->{body}, qr/^nginx_presence_heartbeats_total 10$/m, 'counter value');
like($p->{body}, qr/^nginx_presence_leaves_total 3$/m, 'leaves value');
like($p->{body}, qr/^# TYPE nginx_presence_redis_in_flight gauge$/m,
     'in flight is a gauge');
my @up = $p->{body} =~ /^nginx_presence_redis_connected\{pid="(\d+)"\} 1$/mg;
is(scalar @up, 2, 'a connected gauge per worker');
unlike($p->{body}, qr/[{]"/, 'no JSON in the text');

my $a = $ng->get('/status', headers => [
    Accept => 'application/openmetrics-text;version=1.0.0;q=0.75,'
              . 'text/plain;version=0.0.4;q=0.5,*/*;q=0.1']);
like($a->{body}, qr/^nginx_presence_listings_total \d+$/m,
     'what Prometheus sends for Accept gets text');
is($ng->get('/status', headers => [Accept => '*/*'])->{json}{leaves}, 3,
   'curl gets JSON');

is($ng->post('/status', { user_id => 'x' })->{headers}{allow}, 'GET, HEAD',
   'status is GET only');

# a reload keeps the counters; the new workers replace the old in the list

my $before = status();
my %old = map { $_->{pid} => 1 } @{ $before->{workers} };
$ng->reload;
ok(wait_for(sub {
    my $s = status();
    @{ $s->{workers} } == 2 && !grep { $old{ $_->{pid} } } @{ $s->{workers} };
}, 5), 'after a reload only the new workers are listed');
my $after = status();
is($after->{heartbeats}, $before->{heartbeats}, 'heartbeats survive reload');
is($after->{leaves}, $before->{leaves}, 'leaves survive reload');
$ng->post('/hb', { user_id => 'z' });
is(status()->{heartbeats}, $before->{heartbeats} + 1, 'and go on counting');

check_log($ng);

done_testing;
