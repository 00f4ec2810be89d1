#!/usr/bin/perl

# The memo of listings: a worker keeps the last full listing it built per
# location, limit and room, with the room's count and last event id.  A
# listing of a room whose head (count, id) has not changed asks Redis for
# the head alone and answers the memo: the same body and ETag, and no
# ZREVRANGE.  Every change of who is in the room (join, leave, timeout)
# advances the id, so the memo never answers an old membership.  The
# memos' bodies take at most 16 MiB a worker, the least recently used out
# first.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Presence::Test;
use Presence::Test::RedisHA qw(start_redis_cluster);

need_module();

my $KEY = 'presence:{global}';

my $r = start_redis();
my %vars = (REDIS => $r->addr, SHORT => conf_time(1), AGE => conf_time(0.3),
            TIMEOUT => conf_time(0.5));
my $ng = start_nginx(<<'EOF', vars => \%vars);
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    presence_online_limit 5000;
    location = /hb      { presence_heartbeat; presence_ttl 600s; }
    location = /hbshort { presence_heartbeat; presence_ttl %%SHORT%%; }
    location = /leave   { presence_leave; }
    location = /online  { presence_online; }
    location = /cached  { presence_online; presence_online_cache %%AGE%%; }
    location = /room    { presence_online; presence_room $arg_r; }
}
EOF

# how many ZREVRANGE (full listings) and EVALSHA/EVAL Redis has run

sub stat_calls {
    my ($re) = @_;
    my $n = 0;
    $n += $_ for $r->cmd('INFO', 'commandstats') =~ /$re:calls=(\d+)/g;
    return $n;
}

sub zrev  { stat_calls(qr/cmdstat_zrevrange/) }
sub evals { stat_calls(qr/cmdstat_eval(?:sha)?/) }

# 1,000 users straight into Redis, for ten minutes

sub fill {
    my ($prefix) = @_;
    my $end = $r->time_ms + 600_000;
    $r->cmd('ZADD', $KEY, map { ($end, sprintf '%s%04d', $prefix, $_) }
                          1 .. 1000);
    $r->cmd('PEXPIRE', $KEY, 600_000);
}

sub users { join ',', @{ $_[0]{json}{users} || [] } }

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

fill('u');

my $first = $ng->get('/online');
is($first->{status}, 200, 'first listing');
is($first->{json}{count}, 1000, '  of 1,000 users');
is(scalar @{ $first->{json}{users} }, 1000, '  all listed');
my $etag = $first->{headers}{etag};
ok($etag, '  with an etag');

# the same membership: the head alone, the memo answers

my ($z, $e) = (zrev(), evals());
my $second = $ng->get('/online');
is($second->{status}, 200, 'second listing');
is($second->{body}, $first->{body}, '  the same body');
is($second->{headers}{etag}, $etag, '  the same etag');
is(zrev() - $z, 0, '  no ZREVRANGE');
is(evals() - $e, 1, '  only the head script');

my $head = $ng->head('/online');
is($head->{status}, 200, 'HEAD from the memo');
is($head->{headers}{etag}, $etag, '  with its etag');

# If-None-Match against the memo's etag: nginx's 304

$z = zrev();
is($ng->get('/online', headers => ['If-None-Match' => $etag])->{status},
   304, 'If-None-Match on a memo answer: 304');
is(zrev() - $z, 0, '  no ZREVRANGE');

# a heartbeat of a listed user changes nobody's presence

is($ng->post('/hb', { user_id => 'u0500' })->{status}, 200,
   'u0500 heartbeats');
$z = zrev();
my $res = $ng->get('/online');
is($res->{body}, $first->{body}, '  the listing is the same');
is($res->{headers}{etag}, $etag, '  and its etag');
is(zrev() - $z, 0, '  no ZREVRANGE');

# a join

is($ng->post('/hb', { user_id => 'zed' })->{status}, 200, 'zed joins');
$z = zrev();
$res = $ng->get('/online');
is($res->{json}{count}, 1001, '  count 1001');
ok(users($res) =~ /(?:^|,)zed(?:,|$)/, '  zed listed');
isnt($res->{headers}{etag}, $etag, '  a new etag');
is(zrev() - $z, 1, '  a full listing');
my $joined = $res;

$z = zrev();
$res = $ng->get('/online');
is($res->{body}, $joined->{body}, 'again: the same listing');
is(zrev() - $z, 0, '  from the memo');

# a leave

is($ng->post('/leave', { user_id => 'zed' })->{status}, 200, 'zed leaves');
$z = zrev();
$res = $ng->get('/online');
is($res->{json}{count}, 1000, '  count 1000');
ok(users($res) !~ /(?:^|,)zed(?:,|$)/, '  zed gone');
is($res->{body}, $first->{body}, '  the first listing again');
is(zrev() - $z, 1, '  by a full listing');

# one leaves and another joins: the same count, another id

is($ng->post('/leave', { user_id => 'u0001' })->{status}, 200,
   'u0001 leaves');
is($ng->post('/hb', { user_id => 'yan' })->{status}, 200, 'yan joins');
$z = zrev();
$res = $ng->get('/online');
is($res->{json}{count}, 1000, '  still 1000');
ok(users($res) =~ /(?:^|,)yan(?:,|$)/ && users($res) !~ /^u0001,/,
   '  yan listed, u0001 gone');
is(zrev() - $z, 1, '  by a full listing');
is($ng->post('/leave', { user_id => 'yan' })->{status}, 200, 'yan leaves');
is($ng->post('/hb', { user_id => 'u0001' })->{status}, 200,
   'u0001 is back');

# a user who times out: the listing's own prune is the event

is($ng->post('/hbshort', { user_id => 'tim' })->{status}, 200,
   'tim joins with a short ttl');
$res = $ng->get('/online');
ok(users($res) =~ /(?:^|,)tim(?:,|$)/, '  tim listed');
$z = zrev();
ok(wait_for(sub { users($ng->get('/online')) !~ /(?:^|,)tim(?:,|$)/ }, 5,
            0.1),
   'tim times out and is gone from the listing');
ok(zrev() > $z, '  by a full listing');
is($ng->get('/online')->{headers}{etag}, $etag, '  the first etag again');

# a limit below the count: the body depends on who heartbeated last, so
# every listing is a full one

$z = zrev();
$res = $ng->get('/online?limit=10');
is(scalar @{ $res->{json}{users} }, 10, 'limit=10: ten users');
$ng->get('/online?limit=10');
$ng->get('/online?limit=10');
is(zrev() - $z, 3, '  three listings, three ZREVRANGE');

# the whole data set replaced by another of the same count: the id
# tells them apart

$r->cmd('FLUSHALL');
fill('v');
$z = zrev();
$res = $ng->get('/online');
is($res->{json}{count}, 1000, 'after FLUSHALL, 1,000 other users');
like(users($res), qr/^v0001,/, '  the new ones');
isnt($res->{headers}{etag}, $etag, '  a new etag');
is(zrev() - $z, 1, '  by a full listing');
my $flushed = $res;

$z = zrev();
is($ng->get('/online')->{body}, $flushed->{body},
   'the new data set from the memo');
is(zrev() - $z, 0, '  no ZREVRANGE');

# a quiet room whose last id has expired: the listing stores the id it
# takes, so that the next listing still finds the same head

my $pttl = $r->cmd('PTTL', "$KEY:v");
ok($pttl > 0 && $pttl <= 60000, "the room's id lives a minute")
    or diag "PTTL $pttl";

$r->cmd('DEL', "$KEY:v");
$z = zrev();
$res = $ng->get('/online');
is($res->{body}, $flushed->{body}, 'id deleted: the same listing');
is(zrev() - $z, 1, '  a full listing, the id being new');
ok($r->cmd('EXISTS', "$KEY:v"), '  the id is stored again');
$pttl = $r->cmd('PTTL', "$KEY:v");
ok($pttl > 0 && $pttl <= 60000, '  to live a minute') or diag "PTTL $pttl";

$z = zrev();
is($ng->get('/online')->{body}, $flushed->{body}, 'and then');
is(zrev() - $z, 0, '  from the memo');

# many listings at once, some from the memo, some not, around a join

my @p = map { $ng->send_request('GET', $_ % 2 ? '/online' : '/cached') }
        1 .. 10;
is($ng->post('/hb', { user_id => 'xavier' })->{status}, 200,
   'xavier joins while listings are on their way');
push @p, map { $ng->send_request('GET', '/online') } 1 .. 10;
my @st = map { $_->finish(scaled(5))->{status} // 0 } @p;
is(scalar(grep { $_ == 200 } @st), 20, '  twenty listings answered')
    or diag "@st";
$res = $ng->get('/online');
is($res->{json}{count}, 1001, '  then xavier is counted');
ok(users($res) =~ /(?:^|,)xavier(?:,|$)/, '  and listed');
is($ng->post('/leave', { user_id => 'xavier' })->{status}, 200,
   'xavier leaves');
is($ng->get('/online')->{body}, $flushed->{body}, '  the listing is back');

# Redis stalls while the head is asked: a client that goes away, and a
# timeout, leave the memo as it was

$r->kill_stop;
my $gone = $ng->send_request('GET', '/online');
my $late = $ng->send_request('GET', '/online');
select(undef, undef, undef, 0.1);
$gone->abort;
is($late->finish(scaled(5))->{status}, 504, 'redis stalled: 504');
$r->cont;
$z = zrev();
$res = $ng->get('/online');
is($res->{body}, $flushed->{body}, 'redis back: the same listing');
is(zrev() - $z, 0, '  from the memo');

# presence_online_cache: an old copy whose room has not changed is
# refreshed by the head alone

$res = $ng->get('/cached');
is($res->{json}{count}, 1000, 'the cached location');
my $cetag = $res->{headers}{etag};
my ($z0, $e0) = (zrev(), evals());
ok(wait_for(sub { $ng->get('/cached'); evals() > $e0 }, 5, 0.05),
   'the copy ages and is refreshed');
$res = $ng->get('/cached');
is($res->{headers}{etag}, $cetag, '  the same etag');
is(zrev() - $z0, 0, '  no ZREVRANGE for the refreshes');

is($ng->post('/hb', { user_id => 'zed' })->{status}, 200, 'zed joins');
ok(wait_for(sub { $ng->get('/cached')->{json}{count} == 1001 }, 5, 0.05),
   '  the copy shows him once it is refreshed');
ok(zrev() > $z0, '  by a full listing');

# the memos' bodies take at most 16 MiB: rooms of 1,000 users of 1 KiB
# each, about 1 MiB a listing; after 20 more, the first is built anew,
# while the last is still a memo

{
    my $end = $r->time_ms + 600_000;
    for my $i (1 .. 21) {
        $r->cmd('ZADD', "presence:{big$i}",
                map { ($end, sprintf('%04d', $_) . ('x' x 1020)) } 1 .. 1000);
    }
    my $big = $ng->get('/room?r=big1');
    is($big->{json}{count}, 1000, 'a room of 1,000 users of 1 KiB: listed')
        or diag $big->{status} . ' ' . $big->{body};
    ok(length $big->{body} > 1_000_000, '  in ' . length($big->{body})
       . ' bytes');
    $z = zrev();
    is($ng->get('/room?r=big1')->{json}{count}, 1000, '  again');
    is(zrev() - $z, 0, '  from the memo');
    $ng->get("/room?r=big$_") for 2 .. 21;
    $z = zrev();
    is($ng->get('/room?r=big21')->{json}{count}, 1000,
       '20 more such rooms listed: the last again');
    is(zrev() - $z, 0, '  from the memo');
    is($ng->get('/room?r=big1')->{json}{count}, 1000, '  the first again');
    is(zrev() - $z, 1, '  built anew: its memo made room for the others');
    $r->cmd('DEL', map { "presence:{big$_}" } 1 .. 21);
}

# a Redis Cluster: the head is an ordinary listing command, to the room's
# master

my $c = start_redis_cluster();
my %cvars = (CLUSTER => $c->directive, TIMEOUT => conf_time(1));
my $cng = start_nginx(<<'EOF', vars => \%cvars);
%%CLUSTER%%
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    presence_online_limit 5000;
    location = /hb      { presence_heartbeat; presence_ttl 600s; }
    location = /online  { presence_online; }
}
EOF

ok(wait_for(sub { $cng->post('/hb', { user_id => 'c0' })->{status} == 200 },
            10),
   'cluster: a heartbeat');
my ($owner) = grep { !ref $_->cmd('ZSCORE', $KEY, 'c0') } $c->nodes;
ok($owner, "  the room's master found");

sub czrev {
    my $n = 0;
    for my $node ($c->nodes) {
        $n += $_ for $node->cmd('INFO', 'commandstats') =~
            /cmdstat_zrevrange:calls=(\d+)/g;
    }
    return $n;
}

my $end = $owner->time_ms + 600_000;
$owner->cmd('ZADD', $KEY, map { ($end, sprintf 'c%04d', $_) } 1 .. 999);
my $cfirst = $cng->get('/online');
is($cfirst->{json}{count}, 1000, 'cluster: 1,000 users listed');
$z = czrev();
$res = $cng->get('/online');
is($res->{body}, $cfirst->{body}, '  again: the same listing');
is($res->{headers}{etag}, $cfirst->{headers}{etag}, '  and etag');
is(czrev() - $z, 0, '  from the memo');
is($cng->post('/hb', { user_id => 'cz' })->{status}, 200, '  cz joins');
$res = $cng->get('/online');
is($res->{json}{count}, 1001, '  a listing with him');
is(czrev() - $z, 1, '  by a full listing');

done_testing;
