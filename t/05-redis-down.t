#!/usr/bin/perl

# Redis goes away and comes back: while it is down every API request gets
# 503 redis_unavailable with Retry-After at once; when it is back on the
# same port the worker reconnects by itself (backoff capped at about 1 s)
# without a reload; a SCRIPT FLUSH is survived through the EVAL fallback.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr, TIMEOUT => conf_time(1) },
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
%%API%%
    location = /static { }
}
EOF
    files => { static => 'static' });

my $KEY = 'presence:{global}';

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');
is($ng->post('/hb', { user_id => 'alice' })->{status}, 200, 'heartbeat');

sub unavailable {
    my ($res, $name) = @_;
    api_error_ok($res, 503, 'redis_unavailable', $name);
    is($res->{headers}{'retry-after'}, '1', '  Retry-After: 1');
    ok($res->{elapsed} < scaled(0.3), '  at once') or diag "$res->{elapsed}s";
}

# the calls of each kind, as one list
my @calls = (
    ['heartbeat', sub { $ng->post('/hb', { user_id => 'bob' }) }],
    ['leave',     sub { $ng->post('/leave', { user_id => 'alice' }) }],
    ['online',    sub { $ng->get('/online') }],
    ['lookup',    sub { $ng->get('/online?user_id=alice') }],
);

###########################################################################
# down

my $lines = () = $ng->log_text =~ /\n/g;
$r->stop;

unavailable($_->[1]->(), "redis down: $_->[0]") for @calls;

my $res = $ng->head('/online');
is($res->{status}, 503, 'HEAD while down: 503');
is($res->{body}, '', '  no body');

$res = $ng->get('/static');
is($res->{status}, 200, 'static file served while redis is down');

my ($n503, $slow) = (0, 0);
for (1 .. 30) {
    my $x = $ng->post('/hb', { user_id => 'bob' });
    $n503++ if $x->{status} == 503;
    $slow++ if $x->{elapsed} >= scaled(0.3);
}
is($n503, 30, '30 more requests, all 503');
is($slow, 0, '  none waits');

my @new = split /\n/, $ng->log_text;
splice @new, 0, $lines;
my @redis_lines = grep { /redis/i } @new;
ok(@redis_lines >= 1, 'the loss of redis is logged');
ok(@redis_lines < 20, '  but not once per request')
    or diag scalar(@redis_lines) . " lines:\n" . join "\n", @redis_lines[0 .. 9];

###########################################################################
# back on the same port, no reload

my $t = time;
$r->start;
my $ok = wait_for(sub { $ng->post('/hb', { user_id => 'bob' })->{status} == 200 },
                  3, 0.02);
my $took = time - $t;
ok($ok, 'redis back: heartbeat succeeds without a reload');
ok($took < 1 + scaled(1), '  within 2 s') or diag "${took}s";
is_deeply($ng->get('/online')->{json}{users}, ['bob'],
          '  listing from the new redis');
ok(defined $r->cmd('ZSCORE', $KEY, 'bob'), '  written to the new redis');

###########################################################################
# a long outage: the backoff is capped

$r->stop;
my $t_down = time;
my $all503 = 1;
while (time - $t_down < 3) {
    my $x = $ng->get('/online');
    $all503 = 0 unless $x->{status} == 503 && $x->{elapsed} < scaled(0.3);
}
ok($all503, 'three seconds down: every request a quick 503');

$t = time;
$r->start;
$ok = wait_for(sub { $ng->post('/hb', { user_id => 'carol' })->{status} == 200 },
               4, 0.02);
$took = time - $t;
ok($ok, 'back after a long outage');
ok($took < 1 + scaled(1), '  within 2 s (backoff capped at about 1 s)')
    or diag "${took}s";

###########################################################################
# SCRIPT FLUSH: NOSCRIPT, EVAL once, then EVALSHA again

sub stats {
    my %s;
    for (split /\r\n/, $r->cmd('INFO', 'commandstats')) {
        $s{$1} = $2 if /^cmdstat_(\w+):calls=(\d+)/;
    }
    return \%s;
}

is($r->cmd('SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH');
$r->cmd('CONFIG', 'RESETSTAT');

$res = $ng->post('/hb', { user_id => 'dave' });
is($res->{status}, 200, 'heartbeat after SCRIPT FLUSH');
is($res->{json}{online}, 2, '  right count');
ok(stats()->{eval}, '  through EVAL') or diag explain stats();

$r->cmd('SCRIPT', 'FLUSH');
$res = $ng->post('/leave', { user_id => 'dave' });
is($res->{status}, 200, 'leave after SCRIPT FLUSH');
is($res->{json}{online}, 1, '  right count');

$r->cmd('SCRIPT', 'FLUSH');
$res = $ng->get('/online');
is($res->{status}, 200, 'online after SCRIPT FLUSH');
is_deeply($res->{json}{users}, ['carol'], '  right users');

$r->cmd('SCRIPT', 'FLUSH');
$res = $ng->get('/online?user_id=carol');
is($res->{status}, 200, 'lookup after SCRIPT FLUSH');
ok($res->{json}{online}, '  right answer');

# each script falls back once (EVAL caches it again), then EVALSHA works
my $round = sub {
    $ng->post('/hb', { user_id => 'dave' });
    $ng->post('/leave', { user_id => 'dave' });
    $ng->get('/online');
    $ng->get('/online?user_id=carol');
};
$round->();
$r->cmd('CONFIG', 'RESETSTAT');
$round->();
my $s = stats();
# five: the listing asks the room's head for its memo first, then, dave
# having come and gone, the full listing
is($s->{evalsha}, 5, 'afterwards: EVALSHA again') or diag explain $s;
ok(!$s->{eval}, '  no EVAL') or diag explain $s;

###########################################################################
# nginx started while redis is down; reload and quit while it is down

$r->stop;
$ng->stop;
$ng->start;
$res = $ng->post('/hb', { user_id => 'erin' });
unavailable($res, 'nginx started with redis down: 503');
$t = time;
$r->start;
ok(wait_for(sub { $ng->post('/hb', { user_id => 'erin' })->{status} == 200 },
            3), 'redis comes up later: the worker connects');
ok(time - $t < 1 + scaled(1), '  within 2 s') or diag time - $t;

$r->stop;
ok(wait_for(sub { $ng->get('/online')->{status} == 503 }, 2), 'redis down again');
my @old = $ng->reload;
ok(wait_for(sub { !kill 0, @old }, 3),
   'reload while redis is down: the old worker exits at once');
unavailable($ng->get('/online'), 'new worker: 503');
$t = time;
is($ng->quit(5), 0, 'quit while redis is down: exit code 0');
ok(time - $t < scaled(1.5), '  without waiting for reconnects')
    or diag time - $t;

done_testing;
