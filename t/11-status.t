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
%%API%%
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

# the format by the Accept header's preferred type, q-values honoured:
# text only when text/plain weighs more than application/json (directly,
# as application/*, or as */*); JSON on a tie, and by default

sub format_of {
    my (@accept) = @_;
    my $res = $ng->get('/status', headers => [map { (Accept => $_) } @accept]);
    my $ct = $res->{headers}{'content-type'} // '';
    return $res->{status} != 200 ? "status $res->{status}"
         : $ct =~ m{^text/plain; version=0\.0\.4} && $res->{body} =~ /^# TYPE /m
           ? 'text'
         : $ct =~ m{^application/json} && $res->{json} ? 'json'
         : "content-type '$ct'";
}

for my $c (
    ['application/json, text/plain, */*', 'json', 'axios'],
    ['text/plain', 'text'],
    ['application/json;q=0.5, text/plain', 'text'],
    ['text/plain;q=0.1, application/json', 'json'],
    ['text/plain;q=0', 'json', 'q=0 is not acceptable'],
    ['application/openmetrics-text;version=1.0.0;q=0.5,'
     . 'text/plain;version=0.0.4;q=0.4,*/*;q=0.1', 'text', 'Prometheus'],
    ['application/openmetrics-text;version=1.0.0;q=0.75,'
     . 'text/plain;version=0.0.4;q=0.5,*/*;q=0.1', 'text', 'older Prometheus'],
    ['text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
     'json', 'a browser'],
    ['*/*', 'json', 'curl'],
    ['text/*', 'text'],
    ['text/*, application/*', 'json'],
    ['TEXT/Plain; Q=0.9, application/json; q=0.5', 'text'],
    ['text/plain; q=1.0, application/json; q=0.999', 'text'],
    ['text/plain;q=0, text/*;q=1, */*;q=0.5', 'json',
     'the most specific range wins'],
    ['text/plain;q=2', 'json', 'a weight above 1 is no range'],
    ['text/plain;q=0.5x, application/json;q=0.1', 'json',
     'a broken weight is no range'],
    ['text/plain;x="a,application/json", image/png', 'text',
     'a comma inside quotes'],
    ['image/png', 'json', 'neither acceptable'],
    ['', 'json', 'empty'],
    ['application/json;q=0.1|text/plain', 'text', 'two header lines'],
) {
    my ($accept, $want, $name) = @$c;
    is(format_of(split /\|/, $accept), $want,
       ($name ? "$name: " : '') . "Accept: $accept -> $want");
}
is(format_of(), 'json', 'no Accept: JSON');

for my $c (['', '*/*'], ['', 'text/plain'], ['?format=prometheus', '*/*']) {
    my ($q, $accept) = @$c;
    my $res = $ng->get("/status$q", headers => [Accept => $accept]);
    is($res->{headers}{vary}, 'Accept', "Vary: Accept (/status$q, $accept)");
}

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

$ng->stop;

###########################################################################
# A worker that crashed is not listed, nor is its in_flight summed, even
# while its pid still names a process: here the zombie it is until the
# master reaps it (the master is stopped), which kill(pid, 0) took for a
# live worker, as it would take any process that got the pid later.

my $cr = start_nginx(<<'EOF', vars => { REDIS => $r->addr }, workers => 2);
presence_redis %%REDIS%%;
presence_redis_timeout 30s;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /status { presence_status; }
}
EOF

sub cstatus { $cr->get('/status')->{json} }

ok(wait_for(sub {
    my $s = cstatus();
    $s && @{ $s->{workers} } == 2 && !grep { !$_->{redis_connected} }
                                           @{ $s->{workers} };
}, 5), 'crash: two workers connected');

# heartbeats that stay in flight on a frozen Redis, until one of the
# workers has some
$r->kill_stop;
my (@pending, $busy);
ok(wait_for(sub {
    push @pending, $cr->send_request('POST', '/hb', body => '{"user_id":"c"}',
        headers => ['Content-Type' => 'application/json']);
    my $s = cstatus() or return 0;
    ($busy) = grep { $_->{redis_in_flight} > 0 } @{ $s->{workers} };
    $busy;
}, 5, 0.05), 'crash: a worker has commands in flight')
    or diag explain cstatus();

my $dead = $busy->{pid};
my ($live) = grep { $_ != $dead } $cr->worker_pids;

kill 'STOP', $cr->pid;
kill 'KILL', $dead;
ok(wait_for(sub { slurp("/proc/$dead/stat") =~ /\)\s+Z/ }, 5),
   'crash: the killed worker is a zombie, its pid taken');

my $z = cstatus();
is_deeply([map { $_->{pid} } @{ $z->{workers} }], [$live],
          'crash: only the live worker is listed') or diag explain $z;
my ($lw) = grep { $_->{pid} == $live } @{ $z->{workers} };
is($z->{redis_in_flight}, $lw && $lw->{redis_in_flight},
   'crash: in flight is the live worker\'s only');

kill 'CONT', $cr->pid;
ok(wait_for(sub {
    my @w = $cr->worker_pids;
    @w == 2 && !grep { $_ == $dead } @w;
}, 5), 'crash: the master starts a new worker');

$r->cont;
ok(wait_for(sub {
    my $s = cstatus();
    $s && $s->{redis_in_flight} == 0
       && @{ $s->{workers} } == 2
       && join(',', sort map { $_->{pid} } @{ $s->{workers} })
          eq join(',', sort $cr->worker_pids);
}, 5), 'crash: the live workers listed, nothing left in flight')
    or diag explain cstatus(), [$cr->worker_pids];
$_->finish(5) for @pending;

# the crash itself is the one alert expected; the library checks the rest
$cr->allow_in_log(qr/worker process $dead exited on signal 9/);

done_testing;
