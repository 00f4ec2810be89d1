#!/usr/bin/perl

# presence_redis_cluster: a worker spreads the rooms over the masters of a
# Redis Cluster and follows it as it changes, with no reload.  Real
# redis-server processes (Presence::Test::RedisHA: 3 masters + 3
# replicas, one cluster for the whole file): rooms land on the master of
# their slot; SCRIPT FLUSH (NOSCRIPT); a live stream; slots moved by hand
# (TRYAGAIN, ASK, MOVED), then one under load; a master killed (kill -9)
# under load, with the stream's subscription on it, then a
# planned CLUSTER FAILOVER, each time only 200, 503 or 504 answers and
# heartbeats on the new master within 2 s (scaled) of its promotion; a
# slot range with all its nodes down (503 in time, not a hang), then
# back.  And nginx -t refuses what the directive forbids.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;
use Presence::Test::RedisHA;

need_module();

my $VALGRIND = $ENV{TEST_NGINX_VALGRIND};

###########################################################################
# nginx -t

{
    my ($p1, $p2, $p3) = (free_port(), free_port(), free_port());
    my ($rc, $out) = test_config(
        "presence_redis_cluster 127.0.0.1:$p1 127.0.0.1:$p2 localhost:$p3;\n"
        . "presence_redis_password secret;\n"
        . "server { listen 127.0.0.1:%%PORT%%;"
        . " location = /hb { presence_heartbeat; } }");
    is($rc, 0, 'nginx -t: seeds by address and by name') or diag $out;

    ($rc, $out) = test_config(
        "presence_redis_cluster 127.0.0.1;\n"
        . "server { listen 127.0.0.1:%%PORT%%;"
        . " location = /hb { presence_heartbeat; } }");
    is($rc, 0, 'nginx -t: a seed without a port (6379)') or diag $out;

    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1;\n"
                  . "presence_redis_cluster 127.0.0.1:$p2;",
                  qr/"presence_redis_cluster" directive is duplicate/,
                  'a second presence_redis_cluster');
    conf_error_ok("presence_redis 127.0.0.1:6379;\n"
                  . "presence_redis_cluster 127.0.0.1:$p1;",
                  qr/"presence_redis_cluster" directive conflicts with "presence_redis"/,
                  'presence_redis, then presence_redis_cluster');
    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1;\n"
                  . "presence_redis 127.0.0.1:6379;",
                  qr/"presence_redis" directive conflicts with "presence_redis_cluster"/,
                  'presence_redis_cluster, then presence_redis');
    conf_error_ok("presence_redis_sentinel m 127.0.0.1:$p2;\n"
                  . "presence_redis_cluster 127.0.0.1:$p1;",
                  qr/"presence_redis_cluster" directive conflicts with "presence_redis_sentinel"/,
                  'presence_redis_sentinel, then presence_redis_cluster');
    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1;\n"
                  . "presence_redis_sentinel m 127.0.0.1:$p2;",
                  qr/"presence_redis_sentinel" directive conflicts with "presence_redis_cluster"/,
                  'presence_redis_cluster, then presence_redis_sentinel');
    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1;\npresence_redis_db 2;",
                  qr/"presence_redis_db" cannot be used with "presence_redis_cluster": a cluster has database 0 only/,
                  'presence_redis_db with a cluster');
    conf_error_ok("presence_redis_db 0;\npresence_redis_cluster 127.0.0.1:$p1;",
                  qr/"presence_redis_db" cannot be used with "presence_redis_cluster"/,
                  'presence_redis_db 0, before the cluster');
    conf_error_ok("presence_redis_cluster;",
                  qr/invalid number of arguments in "presence_redis_cluster"/,
                  'no seed');
    conf_error_ok("presence_redis_cluster 127.0.0.1:99999;",
                  qr/invalid port in "127.0.0.1:99999" of the "presence_redis_cluster"/,
                  'a bad port');
    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1 no-such-host.invalid:7000;",
                  qr/host not found in "no-such-host.invalid:7000" of the "presence_redis_cluster"/,
                  'a host that does not resolve');
    conf_error_ok("presence_redis_cluster unix:/tmp/c.sock;",
                  qr/invalid address "unix:\/tmp\/c.sock" of the "presence_redis_cluster" directive: expected "host:port"/,
                  'a unix socket');
    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1 127.0.0.1:$p2 127.0.0.1:$p1;",
                  qr/duplicate node "127.0.0.1:$p1" in the "presence_redis_cluster"/,
                  'the same seed twice');
    conf_error_ok("presence_redis_cluster 127.0.0.1:$p1 localhost:$p1;",
                  qr/duplicate node "localhost:$p1" in the "presence_redis_cluster"/,
                  'the same seed twice, once by name');
}

###########################################################################
# a cluster, 3 masters + 3 replicas, for everything below

my $c = start_redis_cluster();
my @nodes = $c->nodes;

my %vars = (CLUSTER => $c->directive, RTO => conf_time(1));
my $ng = start_nginx(<<'EOF', vars => \%vars);
%%CLUSTER%%
presence_redis_timeout %%RTO%%;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

    location = /hb     { presence_room $arg_room; presence_heartbeat; }
    location = /online { presence_room $arg_room; presence_online; }
    location = /stream { presence_room $arg_room; presence_stream; }
    location = /status { presence_status; }
}
EOF

# failovers and a cluster down log error lines (lost connections,
# CLUSTER SLOTS refused...)
$ng->allow_in_log(qr/\[error\].*presence: /);

sub key { "presence:{$_[0]}" }
sub hb  { $ng->post("/hb?room=$_[0]", { user_id => $_[1] }, @_[2 .. $#_]) }
sub listing {
    my $r = $ng->get("/online?room=$_[0]");
    return $r->{status} == 200 ? [sort @{ $r->{json}{users} }] : undef;
}
sub status { $ng->get('/status')->{json} }

# the master that holds a room now (by CLUSTER SLOTS)
sub master_of { $c->node_for_key(key($_[0])) }

ok(wait_for(sub { hb('r0', 'first')->{status} == 200 }, 5),
   'a heartbeat through the cluster');
ok(status()->{workers}[0]{redis_connected}, 'presence_status: connected');

###########################################################################
# the rooms spread over the three masters

my @rooms = map { "r$_" } 0 .. 29;
my %room_of;        # master port => [rooms]

{
    my @bad;
    for my $room (@rooms) {
        for my $u ("$room-a", "$room-b") {
            my $r = hb($room, $u);
            push @bad, "$room $u: $r->{status}" if $r->{status} != 200;
        }
    }
    ok(!@bad, 'heartbeats into 30 rooms') or diag "@bad";

    my %held;       # room => [ports of the masters that hold its key]
    my @masters = $c->masters;
    for my $m (@masters) {
        my $keys = $m->cmd('KEYS', 'presence:*');
        for my $k (@$keys) {
            push @{ $held{$1} }, $m->port if $k =~ /^presence:\{(r\d+)\}$/;
        }
    }
    my @wrong;
    for my $room (@rooms) {
        my $slot = $c->slot_for_key(key($room));
        my $owner = $c->node_for_slot($slot);
        my $where = join ',', @{ $held{$room} || [] };
        push @wrong, "$room (slot $slot): on $where, owner $owner->{port}"
            unless $where eq $owner->port;
        push @{ $room_of{ $owner->port } }, $room;
    }
    ok(!@wrong, "each room's key is on the master of its slot, and only there")
        or diag join "\n", @wrong;
    is(scalar(grep { @{ $room_of{ $_->port } || [] } } @masters), 3,
       'each of the three masters holds rooms ('
       . join(', ', map { scalar @{ $room_of{ $_->port } || [] } } @masters)
       . ')');

    my @off = grep {
        my $l = listing($_);
        my @want = sort "$_-a", "$_-b", $_ eq 'r0' ? ('first') : ();
        !$l || "@$l" ne "@want"
    } @rooms;
    ok(!@off, 'each listing has its room\'s users') or diag "@off";
}

# a room on master $m (by the map now), other than those in @not
sub room_on {
    my ($m, @not) = @_;
    my %not = map { $_ => 1 } @not;
    my ($room) = grep { !$not{$_} && master_of($_) == $m } @rooms;
    return $room;
}

###########################################################################
# NOSCRIPT: SCRIPT FLUSH on a master, the next heartbeat there still works

{
    my ($m) = $c->masters;
    my $room = room_on($m);
    is($m->cmd('SCRIPT', 'FLUSH'), 'OK', 'noscript: SCRIPT FLUSH on a master');
    my $r = hb($room, 'after-flush');
    is($r->{status}, 200, 'noscript: the next heartbeat to it: 200')
        or diag $r->{body};
    ok(defined $m->cmd('ZSCORE', key($room), 'after-flush'),
       'noscript: and it is there');
    is(hb($room, 'after-flush-2')->{status}, 200,
       'noscript: the one after too');
    my @l = @{ listing($room) || [] };
    ok((grep { $_ eq 'after-flush' } @l) && (grep { $_ eq 'after-flush-2' } @l),
       'noscript: both listed');
}

###########################################################################
# load: a child sends heartbeats (into the rooms given, in turn) and
# listings, one after the other, and writes "<time> <status> <room>
# <user|->" for each until it is told to stop

sub start_load {
    my ($tag, @in) = @_;
    my $file = Presence::Test::new_dir('load') . '/answers';
    my $stop = "$file.stop";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open my $out, '>', $file or POSIX::_exit(1);
        $out->autoflush(1);
        my $i = 0;
        until (-e $stop) {
            $i++;
            my $room = $in[ int($i / 2) % @in ];
            my $r = $i % 2
                ? hb($room, "$tag$i", timeout => 5)
                : $ng->get("/online?room=$room", timeout => 5);
            printf $out "%.3f %s %s %s\n", time, $r->{status} // 0, $room,
                $i % 2 ? "$tag$i" : '-';
        }
        close $out;
        POSIX::_exit(0);
    }
    wait_for(sub { -s $file }, 5);
    return { pid => $pid, file => $file, stop => $stop };
}

sub stop_load {
    my ($l) = @_;
    Presence::Test::spew($l->{stop}, '');
    waitpid $l->{pid}, 0;
    return map { [split ' '] } split /\n/, Presence::Test::slurp($l->{file});
}

# the answers are many and all 200, 503 or 504
sub answers_ok {
    my ($what, @a) = @_;
    ok(@a > ($VALGRIND ? 5 : 20), "$what: the load ran (" . scalar(@a)
       . ' answers: ' . join(', ', map {
           my $s = $_; "$s " . scalar grep { $_->[1] == $s } @a
       } 200, 503, 504) . ')');
    my @bad = grep { $_->[1] !~ /^(?:200|503|504)$/ } @a;
    ok(!@bad, "$what: only 200, 503 or 504")
        or diag join "\n", map { "@$_" } @bad[0 .. ($#bad < 9 ? $#bad : 9)];
}

###########################################################################
# a live stream over the cluster, on a room of the first seed (the node
# its subscription goes to: the one the worker asks for the slots)

my $seed = $nodes[0];
is($seed->role, 'master', 'the first seed is a master');
my $sroom = room_on($seed);
my $st = sse_open($ng, "/stream?room=$sroom");
ok($st->wait_event('snapshot', 5), 'stream: a snapshot');
is(hb($sroom, 'streamed-1')->{status}, 200, 'stream: a new user heartbeats');
ok($st->wait_event(sub { $_[0]{type} eq 'join'
                         && $_[0]{json}{user_id} eq 'streamed-1' }, 5),
   'stream: its join reaches the stream');

###########################################################################
# slots moved by hand, one step at a time.  A room's keys split between
# two masters: TRYAGAIN, the command sent again, 503 after three quarters
# of the timeout, or 200 once the slot is given to the target (MOVED).
# A room's keys all on the target before that: ASK, for a heartbeat and
# for a listing's MULTI.  (The room there has a session, so that its :s
# key exists: the target answers TRYAGAIN to a script whose keys are not
# all there, until the slot is its own.)

{
    my ($from, $to) = grep { $_ != $seed } $c->masters;
    my ($room, $room2) = grep { master_of($_) == $from } @rooms;
    my $r0 = status()->{redis_redirects};

    my $migrate = sub {
        $from->cmd('MIGRATE', '127.0.0.1', $to->port, '', 0, 5000,
                   'KEYS', @_);
    };
    my $setslot = sub {
        my ($slot, $how) = @_;
        if ($how eq 'NODE') {
            for my $m ($to, $from, grep { $_ != $to && $_ != $from } $c->masters) {
                Presence::Test::RedisHA::_ok($m, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $to->id);
            }
        } else {
            Presence::Test::RedisHA::_ok($to, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $from->id);
            Presence::Test::RedisHA::_ok($from, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $to->id);
        }
    };
    # what $to holds of a slot it imports (ASKING, or it says MOVED)
    my $on_to = sub { ($to->pipeline(['ASKING'], [@_]))[1] };

    my %before = map { $_ => listing($_) } $room, $room2;

    # split
    my $key = key($room);
    my $slot = $c->slot_for_key($key);
    $setslot->($slot, 'MIGRATING');
    is($migrate->($key), 'OK', 'by hand: a room\'s sorted set moved, its :v not');

    my $r = hb($room, 'split-0');
    is($r->{status}, 503, 'by hand: a heartbeat while its keys are split: 503');
    # sent again until the next backoff (up to 200 ms) would pass three
    # quarters of the timeout: 503 between about 0.55 and 0.75 of it
    ok($r->{elapsed} >= scaled(1) * 0.5 && $r->{elapsed} < scaled(1),
       sprintf 'by hand: after tries for most of the timeout (%.2f s)',
       $r->{elapsed});

    # the keys come together and the slot is given while a heartbeat
    # waits to be sent again
    my $p = $ng->send_request('POST', "/hb?room=$room",
        headers => ['Content-Type' => 'application/json'],
        body => '{"user_id":"split-1"}');
    sleep scaled(0.2);
    is($migrate->("$key:v"), 'OK', 'by hand: its :v key moved too');
    $setslot->($slot, 'NODE');
    $r = $p->finish;
    is($r->{status}, 200, 'by hand: the heartbeat that waited: 200 (MOVED)')
        or diag $r->{body};
    ok(defined $to->cmd('ZSCORE', $key, 'split-1'), 'by hand: on the target');
    my $r1 = status()->{redis_redirects};
    ok($r1 > $r0, 'by hand: MOVED counted (' . ($r1 - $r0) . ')');
    is_deeply(listing($room), [sort @{ $before{$room} }, 'split-1'],
              'by hand: the listing, from the target');

    # ASK
    $key = key($room2);
    $slot = $c->slot_for_key($key);
    is($ng->post("/hb?room=$room2", { user_id => 'sess', session_id => 's1' })
       ->{status}, 200, 'by hand: another room, a user with a session');
    $setslot->($slot, 'MIGRATING');
    is($migrate->($key, "$key:s", "$key:v"), 'OK',
       'by hand: all its keys moved, the slot not given');
    is(hb($room2, 'ask-1')->{status}, 200, 'by hand: a heartbeat: 200 (ASK)');
    ok(defined $on_to->('ZSCORE', $key, 'ask-1'), 'by hand: on the target');
    my $ask = $from->cmd('EXISTS', $key);
    like(ref $ask ? $ask->message : $ask, qr/^ASK $slot /,
         'by hand: the source answers ASK for it');
    is_deeply(listing($room2), [sort @{ $before{$room2} }, 'sess', 'ask-1'],
              'by hand: a listing (a MULTI) follows the ASK');
    my $r2 = status()->{redis_redirects};
    ok($r2 - $r1 >= 2, 'by hand: both ASKs counted (' . ($r2 - $r1) . ')');
    $setslot->($slot, 'NODE');
    is(hb($room2, 'moved-2')->{status}, 200, 'by hand: the slot given: 200');
    ok(defined $to->cmd('ZSCORE', $key, 'moved-2'), 'by hand: on the target');
    is(master_of($room2), $to, 'by hand: the map says the target');
    ok($c->wait_ready(10), 'by hand: the cluster agrees')
        or diag $c->why_not_ready;
}

###########################################################################
# a slot migrated under load: ASK and MOVED followed, nothing lost

my %late;       # heartbeats on the new master, after the promotion
my %since;      # ... after the kill or CLUSTER FAILOVER

{
    my ($from, $to) = grep { $_ != $seed } $c->masters;
    my $room = room_on($from);
    my $key = key($room);
    my $slot = $c->slot_for_key($key);

    # users to keep, and other keys of the slot to make the move last
    my @users = map { "mig$_" } 1 .. 20;
    is(scalar(grep { hb($room, $_)->{status} == 200 } @users), 20,
       'migration: 20 users in the room');
    $from->pipeline(map { ['SET', "presence:{$room}:pad$_", 'x'] } 1 .. 300);
    my $r0 = status()->{redis_redirects};

    my $load = start_load('m', $room);
    sleep 0.2;
    my $t0 = time;
    my $moved = $c->migrate_slot($slot, $from, $to, batch => 10,
                                 pause => 0.01);
    my $took = time - $t0;
    ok($moved > 300, "migration: slot $slot moved ($moved keys, "
       . sprintf('%.2f s)', $took));
    my $landed = wait_for(sub {
        hb($room, 'mig-probe')->{status} == 200
            && defined $to->cmd('ZSCORE', $key, 'mig-probe')
    }, 5);
    sleep 0.3;
    my @a = stop_load($load);

    answers_ok('migration', @a);
    ok($landed, 'migration: heartbeats land on the new master');
    my $redirects = status()->{redis_redirects} - $r0;
    ok($redirects > 0, "migration: presence_status counts redirects ($redirects)");
    is($c->node_for_key($key), $to, 'migration: the slot is the target\'s');
    is($to->cmd('EXISTS', $key), 1, 'migration: the room\'s key is on the target');
    my $mv = $from->cmd('EXISTS', $key);
    like(ref $mv ? $mv->message : $mv, qr/^MOVED $slot 127\.0\.0\.1:${\ $to->port}$/,
         'migration: the source answers MOVED for it');
    is($from->cmd('CLUSTER', 'COUNTKEYSINSLOT', $slot), 0,
       'migration: nothing left on the source');

    my %want = map { $_ => 1 } "$room-a", "$room-b", @users, 'mig-probe',
        map { $_->[3] } grep { $_->[3] ne '-' && $_->[1] == 200 } @a;
    my %have = map { $_ => 1 } @{ listing($room) || [] };
    my @missing = grep { !$have{$_} } sort keys %want;
    ok(!@missing, 'migration: the room\'s listing has every user ('
       . scalar(keys %want) . ')') or diag "missing: @missing";
    ok($c->wait_ready(10), 'migration: the cluster agrees')
        or diag $c->why_not_ready;
}

###########################################################################
# A failover under load: the answers; the first heartbeat of a room of
# the old master that its successor holds, within 2 s (scaled) of the
# promotion; the heartbeats since on it; the other masters' rooms too.

# the moment $rep says ROLE master
sub promoted {
    my ($rep) = @_;
    return wait_for(sub { ($rep->role // '') eq 'master' ? time : undef },
                    15, 0.01);
}

sub check_failover {
    my ($what, $load, $new, $room, $t_promoted, $t_start) = @_;
    my $key = key($room);

    my $landed = wait_for(sub {
        hb($room, "probe-$what")->{status} == 200
            && defined $new->cmd('ZSCORE', $key, "probe-$what")
            ? time : undef
    }, 10, 0.05);
    sleep 0.3;
    my @others = grep { $_ != $new } $c->masters;
    my @ok = grep {
        my $m = $_;
        my $r = room_on($m);
        wait_for(sub { hb($r, "probe-$what-other")->{status} == 200 }, 5);
    } @others;
    is(scalar @ok, scalar @others,
       "$what: the rooms of the other masters work again");
    my @a = stop_load($load);

    answers_ok($what, @a);
    ok($t_promoted, "$what: the replica says ROLE master");
    ok($landed, "$what: heartbeats reach the new master");
    my $late = $landed && $t_promoted ? $landed - $t_promoted : 99;
    ok($late <= scaled(2),
       sprintf "$what: within 2 s of the promotion (%.2f s)", $late);

    # every heartbeat of its rooms answered 200 since is on it
    my %on = map { $_ => master_of($_) == $new } @rooms;
    my @after = grep { $_->[3] ne '-' && $_->[1] == 200 && $landed
                       && $_->[0] > $landed + 0.1 && $on{ $_->[2] } } @a;
    my @lost = grep { !defined $new->cmd('ZSCORE', key($_->[2]), $_->[3]) }
               @after;
    ok(@after && !@lost, "$what: the heartbeats since are all on it ("
       . scalar(@after) . ')') or diag scalar(@lost) . ' missing';

    $late{$what} = $late;
    $since{$what} = $landed ? $landed - $t_start : 99;
}

###########################################################################
# kill -9 of the first seed's master, with the stream open on one of its
# rooms: the slots and the subscription both move

{
    my $victim = $seed;
    my ($rep) = $c->replicas_of($victim);
    ok($rep, 'kill: the victim has a replica');
    my @vrooms = grep { master_of($_) == $victim } @rooms;
    my $f0 = status()->{redis_failovers};

    my $load = start_load('k', @rooms);
    sleep 0.3;
    my $t0 = time;
    $c->kill_master($victim);
    my $t = promoted($rep);

    check_failover('kill', $load, $rep, $vrooms[0], $t, $t0);
    ok(status()->{redis_failovers} > $f0,
       'kill: presence_status counts the failover ('
       . (status()->{redis_failovers} - $f0) . ')');
    my $rport = $rep->port;
    like($ng->log_text,
         qr/presence: redis cluster slots \d+-\d+ are served by "127\.0\.0\.1:$rport" now/,
         'kill: the new master of the slots is logged');

    # the stream: its subscription was on the node killed
    ok($st->wait_event('unavailable', 5), 'kill: the stream said unavailable');
    ok($st->wait_event('snapshot', 10), 'kill: then sent a new snapshot');
    is(hb($sroom, 'streamed-2')->{status}, 200,
       'kill: a new user in the stream\'s room');
    ok($st->wait_event(sub { $_[0]{type} eq 'join'
                             && $_[0]{json}{user_id} eq 'streamed-2' }, 5),
       'kill: its join (on the new master) reaches the stream');
    $st->close;

    # the victim comes back as a replica of its successor
    $victim->start;
    ok($c->wait_ready(30), 'kill: the old master is back, as a replica')
        or diag $c->why_not_ready;
    is($victim->role, 'slave', 'kill: ROLE slave');
}

###########################################################################
# CLUSTER FAILOVER (planned) under load

{
    my ($old) = grep { $_->port != $seed->port } $c->masters;
    my ($rep) = $c->replicas_of($old);
    my @vrooms = grep { master_of($_) == $old } @rooms;
    my $f0 = status()->{redis_failovers};

    my $load = start_load('f', @vrooms);
    sleep 0.3;
    my $t0 = time;
    Presence::Test::RedisHA::_ok($rep, 'CLUSTER', 'FAILOVER');
    my $t = promoted($rep);
    check_failover('failover', $load, $rep, $vrooms[0], $t, $t0);
    ok(status()->{redis_failovers} > $f0,
       'failover: presence_status counts it');
    ok($c->wait_ready(20), 'failover: the cluster agrees')
        or diag $c->why_not_ready;
    is($old->role, 'slave', 'failover: the old master is a replica');
}

###########################################################################
# a slot range with every node down: 503 in time, no hang; back once the
# nodes are

my %down;

{
    my ($m) = grep { $_->port != $seed->port } $c->masters;
    my @reps = $c->replicas_of($m);
    my $room = room_on($m);
    my ($other) = grep { master_of($_) != $m } @rooms;
    ok(@reps, 'down: the master has a replica');

    $_->kill9 for @reps, $m;
    my $t0 = time;

    # at once (the master's connection refused), then once the cluster
    # says CLUSTERDOWN: 503 each time, within the timeout
    my @slow;
    my $n503 = 0;
    my $n = 0;
    my $fail_seen;
    my ($live) = $c->live;
    while (time - $t0 < scaled(6)) {
        my $r = hb($room, "down$n", timeout => scaled(5));
        $n++;
        $n503++ if $r->{status} == 503;
        push @slow, sprintf('%.2f s', $r->{elapsed}) if $r->{elapsed} > scaled(1.5);
        $fail_seen //= time - $t0
            if (eval { $live->cmd('CLUSTER', 'INFO') } // '') =~ /^cluster_state:fail/m;
        last if $fail_seen && time - $t0 > $fail_seen + scaled(1.5);
        sleep 0.1;
    }
    is($n503, $n, "down: every heartbeat to the room answered 503 ($n)");
    ok(!@slow, 'down: each within the timeout (1 s, scaled)')
        or diag "@slow";
    ok($fail_seen, sprintf 'down: the cluster said cluster_state:fail (after %.1f s)',
       $fail_seen // 0);
    is(hb($other, 'down-other')->{status}, 503,
       'down: a room of another master too (the cluster refuses every slot)');

    # the nodes come back with their nodes.conf: the same slots and roles
    my $t1 = time;
    $m->start;
    $_->start for @reps;
    ok($c->wait_ready(40), 'down: the nodes are back, the cluster ok')
        or diag $c->why_not_ready;
    my $t2 = time;
    my $back = wait_for(sub { hb($room, 'back')->{status} == 200 ? time : undef },
                        5, 0.05);
    ok($back, 'down: heartbeats to the room answer 200 again');
    ok(defined $m->cmd('ZSCORE', key($room), 'back'),
       'down: on the master restarted');
    is(hb($other, 'back-other')->{status}, 200, 'down: the other rooms too');
    %down = (ready => $t2 - $t1, back => $back ? $back - $t2 : 99);
}

$ng->stop;

diag sprintf "heartbeats on the new master, after the promotion (after the"
    . " kill or CLUSTER FAILOVER): %s; a range down and back: cluster ok"
    . " %.2f s after the restart, heartbeats %.2f s later",
    join(', ', map { sprintf '%s %.2f s (%.2f s)', $_, $late{$_}, $since{$_} }
        sort keys %late), $down{ready} // 99, $down{back} // 99;

done_testing();
