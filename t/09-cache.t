#!/usr/bin/perl

# presence_online_cache: a worker answers a listing from its own copy while
# the copy is younger than the setting, so that many pollers cost Redis one
# query per room per window; the ETag follows the copy.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr });
presence_redis %%REDIS%%;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb      { presence_heartbeat; }
    location = /online  { presence_online; }
    location = /cached  { presence_online; presence_online_cache 1s; }
    location = /long    { presence_online; presence_online_cache 60s; }
    location = /short   {
        presence_online;
        presence_online_cache 1s;
        presence_ttl 3s;
    }
}
EOF

sub evalsha_calls {
    my $n = 0;
    $n += $_ for $r->cmd('INFO', 'commandstats') =~
        /cmdstat_eval(?:sha)?:calls=(\d+)/g;
    return $n;
}

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

is($ng->post('/hb', { user_id => 'alice' })->{status}, 200, 'alice online');

my $first = $ng->get('/cached');
is_deeply($first->{json}{users}, ['alice'], 'first listing from redis');
my $etag = $first->{headers}{etag};
ok($etag, 'cached listing has an etag');

# bob comes; the copy is younger than 1s, so the cached location still
# answers without him, with the same etag, and without asking Redis

is($ng->post('/hb', { user_id => 'bob' })->{status}, 200, 'bob online');

my $calls = evalsha_calls();
my $stale = 0;
for (1 .. 20) {
    my $res = $ng->get('/cached');
    $stale++ if $res->{status} == 200
                && join(',', @{ $res->{json}{users} }) eq 'alice'
                && $res->{headers}{etag} eq $etag;
}
my $used = evalsha_calls() - $calls;

SKIP: {
    # the copy can age past 1s on a very slow machine: then one refresh
    skip 'the copy aged out during the loop', 2 if $used > 1;
    is($stale, 20, 'twenty listings from the copy, same etag');
    is($used, 0, 'no redis query for them');
}

is($ng->get('/cached', headers => ['If-None-Match' => $etag])->{status},
   $used ? 200 : 304, 'If-None-Match against the copy');

is_deeply($ng->get('/online')->{json}{users}, [qw(alice bob)],
          'the uncached location sees bob at once');

# within the window plus one refresh the copy shows bob, with a new etag

my $fresh = wait_for(sub {
    my $res = $ng->get('/cached');
    return join(',', @{ $res->{json}{users} || [] }) eq 'alice,bob' && $res;
}, 3, 0.1);
ok($fresh, 'the copy is refreshed after its age');
isnt($fresh && $fresh->{headers}{etag}, $etag, 'and its etag changed');
is($ng->get('/cached', headers => ['If-None-Match' => $etag])->{status},
   200, 'the old etag no longer matches');

# a copy is per location (the body shows the location's ttl) and per limit

my $short = $ng->get('/short');
is($short->{json}{ttl}, 3, 'another location, its own copy and ttl');
is($ng->get('/cached')->{json}{ttl}, 10, 'the first keeps its ttl');

my $one = $ng->get('/cached?limit=1');
is(scalar @{ $one->{json}{users} }, 1, 'limit=1 has its own copy');
is($one->{json}{count}, 2, 'with the full count');
is(scalar @{ $ng->get('/cached')->{json}{users} }, 2,
   'the unlimited copy is untouched');

# lookups are never cached

is($ng->post('/hb', { user_id => 'carol' })->{status}, 200, 'carol online');
ok($ng->get('/cached?user_id=carol')->{json}{online},
   'a user lookup goes to redis');

# Redis frozen: with many clients, the copy is served while one of them
# refreshes it, but never once it is older than presence_online_cache
# (1s) and presence_redis_timeout (1s) together

ok(wait_for(sub { $ng->get('/cached')->{json}{count} == 3 }, 3),
   'a fresh copy with carol');
my $filled = time;
is($ng->get('/cached')->{status}, 200, 'answered from the copy');
$r->kill_stop;
my @sent;
while (time - $filled < 4) {
    push @sent, [time, $ng->send_request('GET', '/cached')];
    select(undef, undef, undef, 0.05);
}
my (@late, %status);
for (@sent) {
    my ($t, $p) = @$_;
    my $res = $p->finish(5);
    $status{ $res->{status} // 'none' }++;
    push @late, sprintf('%.2fs', $t - $filled)
        if ($res->{status} // 0) == 200 && $t - $filled > 2.3;
}
$r->cont;
ok(!@late, 'redis frozen: no copy served past 2 s') or diag "@late";
ok($status{504}, '  the refreshes time out') or diag explain \%status;
ok(wait_for(sub { $ng->get('/cached')->{status} == 200 }, 5),
   'redis back: the copy is refreshed');

# Redis gone: a fresh copy still answers, an old one needs Redis

is($ng->get('/long')->{status}, 200, 'a copy for a minute');
$r->stop;
my $res = $ng->get('/long');
is($res->{status}, 200, 'the copy answers while redis is down');
is_deeply($res->{json}{users}, [qw(alice bob carol)], 'with its users');
ok(wait_for(sub { $ng->get('/cached')->{status} == 503 }, 3),
   'once the copy is old, 503 like the uncached location');

done_testing;
