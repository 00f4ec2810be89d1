#!/usr/bin/perl

# presence_redis_sentinel: a worker finds the master through Sentinel and
# follows it, with no reload.  Real redis-server and redis-sentinel
# processes (Presence::Test::RedisHA): heartbeats and listings under load
# while the master is killed (kill -9), then while Sentinel moves it on
# purpose (SENTINEL FAILOVER), then with a sentinel dead.  Each time: only
# 200, 503 or 504 answers; heartbeats land on the new master within 2 s
# (scaled) of its promotion; one notice per failover, counted in
# presence_status.  And nginx -t refuses what the directives forbid.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;
use Presence::Test::RedisHA;

need_module();

plan skip_all => 'redis-sentinel is not installed (tools/deps test installs it)'
    unless have_redis_sentinel();

###########################################################################
# nginx -t

{
    my $p1 = free_port();
    my $p2 = free_port();
    my ($rc, $out) = test_config(
        "presence_redis_sentinel mymaster 127.0.0.1:$p1 localhost:$p2;\n"
        . "presence_redis_sentinel_password secret;\n"
        . "server { listen 127.0.0.1:%%PORT%%;"
        . " location = /hb { presence_heartbeat; } }");
    is($rc, 0, 'nginx -t: sentinels by address and by name') or diag $out;

    conf_error_ok("presence_redis_sentinel m 127.0.0.1:$p1;\n"
                  . "presence_redis_sentinel m 127.0.0.1:$p2;",
                  qr/"presence_redis_sentinel" directive is duplicate/,
                  'a second presence_redis_sentinel');
    conf_error_ok("presence_redis 127.0.0.1:6379;\n"
                  . "presence_redis_sentinel m 127.0.0.1:$p1;",
                  qr/"presence_redis_sentinel" directive conflicts with "presence_redis"/,
                  'presence_redis, then presence_redis_sentinel');
    conf_error_ok("presence_redis_sentinel m 127.0.0.1:$p1;\n"
                  . "presence_redis 127.0.0.1:6379;",
                  qr/"presence_redis" directive conflicts with "presence_redis_sentinel"/,
                  'presence_redis_sentinel, then presence_redis');
    conf_error_ok("presence_redis_sentinel m;",
                  qr/invalid number of arguments in "presence_redis_sentinel"/,
                  'no sentinel');
    conf_error_ok("presence_redis_sentinel m 127.0.0.1:99999;",
                  qr/invalid port in "127.0.0.1:99999" of the "presence_redis_sentinel"/,
                  'a bad port');
    conf_error_ok("presence_redis_sentinel m no-such-host.invalid:26379;",
                  qr/host not found in "no-such-host.invalid:26379" of the "presence_redis_sentinel"/,
                  'a host that does not resolve');
    conf_error_ok("presence_redis_sentinel m unix:/tmp/s.sock;",
                  qr/invalid address "unix:\/tmp\/s.sock" of the "presence_redis_sentinel" directive: expected "host:port"/,
                  'a unix socket');
    conf_error_ok("presence_redis_sentinel m 127.0.0.1:$p1 127.0.0.1:$p2 127.0.0.1:$p1;",
                  qr/duplicate sentinel "127.0.0.1:$p1" in the "presence_redis_sentinel"/,
                  'the same sentinel twice');
    conf_error_ok("presence_redis_sentinel m 127.0.0.1:$p1 localhost:$p1;",
                  qr/duplicate sentinel "localhost:$p1"/,
                  'the same sentinel twice, once by name');
    conf_error_ok("presence_redis_sentinel_password x;",
                  qr/"presence_redis_sentinel_password" needs "presence_redis_sentinel"/,
                  'a sentinel password without sentinels');
}

###########################################################################
# a Sentinel set, sentinels with a password of their own

my $s = start_redis_sentinel(sentinel_password => 'sen tinel');
my $first = $s->master;

my $ng = start_nginx(<<'EOF', vars => { SENTINEL => $s->directive });
%%SENTINEL%%
presence_redis_timeout 1s;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%
    location = /stream { presence_stream; }
    location = /status { presence_status; }
}
EOF

# a failover logs an error line or two (lost connection, read-only...)
$ng->allow_in_log(qr/\[error\].*presence: /);

my $KEY = 'presence:{global}';

ok(wait_for(sub { $ng->post('/hb', { user_id => 'first' })->{status} == 200 },
            5),
   'a heartbeat through the sentinels');
is(defined $first->cmd('ZSCORE', $KEY, 'first'), 1,
   'it is on the master the sentinels name');
my $fport = $first->port;
like($ng->log_text,
     qr/presence: redis master of "mymaster" is 127\.0\.0\.1:$fport/,
     'the master found is logged');

sub failovers { $ng->get('/status')->{json}{redis_failovers} }

is(failovers(), 0, 'presence_status: no failover yet');

# Load: a child sends heartbeats and listings, one after the other, and
# writes "<time> <status> <user|->" for each until it is told to stop.
sub start_load {
    my ($tag) = @_;
    my $file = Presence::Test::new_dir('load') . '/answers';
    my $stop = "$file.stop";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open my $out, '>', $file or POSIX::_exit(1);
        $out->autoflush(1);
        my $i = 0;
        until (-e $stop) {
            $i++;
            my $r = $i % 2
                ? $ng->post('/hb', { user_id => "$tag$i" }, timeout => 5)
                : $ng->get('/online', timeout => 5);
            printf $out "%.3f %s %s\n", time, $r->{status} // 0,
                $i % 2 ? "$tag$i" : '-';
        }
        close $out;
        POSIX::_exit(0);
    }
    return { pid => $pid, file => $file, stop => $stop };
}

sub stop_load {
    my ($l) = @_;
    Presence::Test::spew($l->{stop}, '');
    waitpid $l->{pid}, 0;
    return map { [split ' '] } split /\n/, Presence::Test::slurp($l->{file});
}

# The answers of a failover: only 200/503/504; the first heartbeat that
# the new master holds, within 2 s (scaled) of the promotion seen.
my %since;

# the moment another node than $old answers ROLE master: the promotion
sub promoted {
    my ($old) = @_;
    return wait_for(sub {
        (grep { $_ != $old && $_->running && ($_->role // '') eq 'master' }
            $s->nodes) ? time : undef
    }, 10, 0.01) // time;
}

sub check_failover {
    my ($what, $load, $old, $t_promoted, $t_start) = @_;
    my $new = $s->master;

    # the load runs on until heartbeats reach the new master
    my $landed = wait_for(sub {
        $ng->post('/hb', { user_id => "probe-$what" })->{status} == 200
            && defined $new->cmd('ZSCORE', $KEY, "probe-$what")
            ? time : undef
    }, 10, 0.05);
    sleep 0.3;
    my @a = stop_load($load);

    ok(@a > 20, "$what: the load ran (" . scalar(@a) . ' answers)');
    my @bad = grep { $_->[1] !~ /^(?:200|503|504)$/ } @a;
    ok(!@bad, "$what: only 200, 503 or 504")
        or diag join "\n", map { "@$_" } @bad[0 .. ($#bad < 9 ? $#bad : 9)];

    ok($landed, "$what: heartbeats reach the new master");
    my $late = $landed ? $landed - $t_promoted : 99;
    ok($late <= scaled(2),
       sprintf "$what: within 2 s of the promotion (%.2f s)", $late);

    # every heartbeat answered 200 after that moment is on the new master
    my @after = grep { $_->[2] ne '-' && $_->[1] == 200
                       && $landed && $_->[0] > $landed + 0.1 } @a;
    my @lost = grep { !defined $new->cmd('ZSCORE', $KEY, $_->[2]) } @after;
    ok(@after && !@lost, "$what: the heartbeats since are all on it ("
       . scalar(@after) . ')') or diag scalar(@lost) . ' missing';

    $since{$what} = $landed ? $landed - $t_start : 99;

    my $port = $new->port;
    like($ng->log_text,
         qr/presence: redis master of "mymaster" is now 127\.0\.0\.1:$port/,
         "$what: the failover is logged");
    return $late;
}

# a live stream: what it has said so far matches $re (within $secs, scaled)
sub stream_says {
    my ($st, $re, $secs) = @_;
    my $sel = IO::Select->new($st->sock);
    $st->{text} //= '';
    return wait_for(sub {
        while ($sel->can_read(0)) {
            my $n = sysread $st->sock, $st->{text}, 65536, length $st->{text};
            last unless $n;
        }
        $st->{text} =~ $re;
    }, $secs);
}

###########################################################################
# kill -9 of the master, with a live stream open

my %late;

{
    my $st = $ng->send_raw("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(stream_says($st, qr/event: snapshot\n/, 5), 'kill: a stream is open');

    my $load = start_load('k');
    ok(wait_for(sub { -s $load->{file} }, 5), 'kill: the load runs');
    sleep 0.3;

    my $t0 = time;
    my $old = $s->kill_master;
    my $t = promoted($old);
    my $new = $s->wait_new_master($old, 10);
    ok($new, 'kill: Sentinel promoted the replica');

    $late{kill} = check_failover('kill', $load, $old, $t, $t0);
    ok(failovers() >= 1, 'kill: presence_status counts the failover');

    # the stream's subscription follows the master too
    ok(stream_says($st, qr/event: unavailable\n.*event: snapshot\n/s, 5),
       'kill: the stream said unavailable, then sent a new snapshot');
    $ng->post('/hb', { user_id => 'streamed' });
    ok(stream_says($st, qr/event: join\nid: \d+\ndata: \{"user_id":"streamed"/,
                   5),
       'kill: a join on the new master reaches the stream');
    $st->abort;

    # the old master comes back empty: a master by ROLE for about 8 s,
    # until Sentinel turns it into a replica (which then copies the new
    # master's keys), and no heartbeat must go there
    $old->start;
    my $load2 = start_load('r');
    sleep 1.5;
    my @a = stop_load($load2);
    my $still = ($old->role // '') eq 'master';
    my @hb = grep { $_->[2] ne '-' && $_->[1] == 200 } @a;
    my @there = grep { defined $old->cmd('ZSCORE', $KEY, $_->[2]) } @hb;
    my @missing = grep { !defined $new->cmd('ZSCORE', $KEY, $_->[2]) } @hb;
    ok(@hb && !@missing, 'kill: with the old master back, heartbeats'
       . ' are on the new one (' . scalar(@hb) . ')');
    SKIP: {
        skip 'the old master was a replica again before it was checked', 1
            unless $still;
        ok(!@there, 'kill: none is on the old master restarted empty');
    }
    ok($s->wait_ready(20), 'kill: the set is whole again');
}

###########################################################################
# SENTINEL FAILOVER: the old master goes on answering as a master for
# seconds; the module follows the sentinels, not the errors

{
    my $st = $ng->send_raw("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    ok(stream_says($st, qr/event: snapshot\n/, 5), 'failover: a stream is open');

    my $load = start_load('f');
    ok(wait_for(sub { -s $load->{file} }, 5), 'failover: the load runs');
    my $f0 = failovers();
    my $old = $s->master;
    my $t0 = time;
    $s->failover;
    my $t = promoted($old);
    my $new = $s->wait_new_master($old, 10);
    ok($new, 'failover: Sentinel promoted the replica');

    $late{failover} = check_failover('failover', $load, $old, $t, $t0);
    ok(failovers() > $f0, 'failover: presence_status counts it');

    # the old master still runs: only a subscription moved with the data
    # connection hears the joins of the new master
    ok(stream_says($st, qr/event: unavailable\n.*event: snapshot\n/s, 5),
       'failover: the stream said unavailable, then sent a new snapshot');
    $ng->post('/hb', { user_id => 'streamed-f' });
    ok(stream_says($st,
                   qr/event: join\nid: \d+\ndata: \{"user_id":"streamed-f"/, 5),
       'failover: a join on the new master reaches the stream');
    $st->abort;
    ok($s->wait_ready(20), 'failover: the set is whole again');
}

###########################################################################
# a sentinel dies: the others are asked (the worker's subscription to
# +switch-master was on the first, which is the one killed)

{
    my ($dead) = $s->sentinels;
    $dead->kill9;
    sleep 0.5;

    my $load = start_load('d');
    ok(wait_for(sub { -s $load->{file} }, 5), 'dead sentinel: the load runs');
    my $old = $s->master;
    my $t0 = time;
    $s->failover;
    my $t = promoted($old);
    my $new = $s->wait_new_master($old, 10);
    ok($new, 'dead sentinel: Sentinel promoted the replica');

    $late{'dead sentinel'} = check_failover('dead sentinel', $load, $old, $t,
                                            $t0);
}

$ng->stop;

###########################################################################
# A fake sentinel in front of two real Redis servers: what Sentinel rarely
# does on cue.  It names a replica (ROLE fails the handshake: no command
# runs there); a master that becomes a replica under the module (READONLY:
# the sentinels are asked at once); a name instead of an address
# (ignored).

{
    my $r1 = start_redis();
    my $r2 = start_redis();
    $r2->cmd('REPLICAOF', '127.0.0.1', $r1->port);

    my $fake = fake_redis(sub {
        my ($argv, $state) = @_;
        my $cmd = uc($argv->[0] // '');
        return resp_status('PONG') if $cmd eq 'PING';
        if ($cmd eq 'SUBSCRIBE') {
            return resp_array(resp_bulk('subscribe'), resp_bulk($argv->[1]),
                              resp_int(1));
        }
        return resp_err('ERR unknown command') unless $cmd eq 'SENTINEL';
        my ($host, $port) = split ' ', fake_reply($state, 'master') // '';
        return resp_nil() unless defined $port;
        return resp_array(resp_bulk($host), resp_bulk($port))
            if lc $argv->[1] eq 'get-master-addr-by-name';
        return resp_array(map { resp_bulk($_) } name => 'm', ip => $host,
                          port => $port, 'config-epoch' => 1);
    });
    my $asked = sub {
        scalar grep { lc($_->[1] // '') eq 'get-master-addr-by-name' }
            $fake->commands;
    };

    $fake->set_reply('master', '127.0.0.1 ' . $r2->port);

    my $ng2 = start_nginx(<<'EOF', vars => { FAKE => $fake->addr });
presence_redis_sentinel m %%FAKE%%;
presence_redis_timeout 1s;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%
}
EOF
    $ng2->allow_in_log(qr/\[error\].*presence: /);

    my $r2port = $r2->port;
    ok(wait_for(sub { $ng2->log_text =~ /presence: redis at "127\.0\.0\.1:$r2port" is not the master of "m" \(ROLE slave\)/ }, 5),
       'fake: a replica named fails the ROLE check, logged');
    is($ng2->post('/hb', { user_id => 'u' })->{status}, 503,
       'fake: a heartbeat meanwhile: 503');
    is($ng2->get('/online')->{status}, 503,
       'fake: a listing meanwhile: 503');

    $fake->set_reply('master', '127.0.0.1 ' . $r1->port);
    ok(wait_for(sub { $ng2->post('/hb', { user_id => 'u' })->{status} == 200 },
                5),
       'fake: the master named, heartbeats succeed');
    ok(defined $r1->cmd('ZSCORE', $KEY, 'u'), 'fake: on the master');

    # the master becomes a replica behind the module's back
    $r2->cmd('REPLICAOF', 'NO', 'ONE');
    $r1->cmd('REPLICAOF', '127.0.0.1', $r2->port);
    ok(wait_for(sub { (($r1->cmd('ROLE') // [])->[0] // '') eq 'slave' }, 5),
       'fake: the old master is a replica');
    my $n0 = $asked->();
    is($ng2->post('/hb', { user_id => 'v' })->{status}, 503,
       'fake: a write refused with READONLY: 503');
    ok(wait_for(sub { $asked->() > $n0 }, 0.5),
       'fake: READONLY asks the sentinels at once');
    like($ng2->log_text,
         qr/presence: redis at "[^"]+" is read-only, asking the sentinels/,
         'fake: READONLY logged');

    $fake->set_reply('master', '127.0.0.1 ' . $r2->port);
    ok(wait_for(sub { $ng2->post('/hb', { user_id => 'v' })->{status} == 200 },
                5),
       'fake: the new master named, heartbeats succeed');
    ok(defined $r2->cmd('ZSCORE', $KEY, 'v'), 'fake: on the new master');

    # a sentinel that announces a host name: a worker does not resolve it
    $fake->set_reply('master', 'localhost ' . $r1->port);
    ok(wait_for(sub { $ng2->log_text =~ /names the master of "m" "localhost", not a numeric address: ignored/ }, 5),
       'fake: a host name answered is logged and ignored');
    is($ng2->post('/hb', { user_id => 'w' })->{status}, 200,
       'fake: the module stays on the master it has');
    ok(defined $r2->cmd('ZSCORE', $KEY, 'w'), 'fake: still the same master');
    $ng2->stop;
}

diag sprintf "heartbeats on the new master, after the promotion"
    . " (after the kill or SENTINEL FAILOVER): %s",
    join ', ', map { sprintf '%s %.2f s (%.2f s)', $_, $late{$_}, $since{$_} }
        sort keys %late;

done_testing();
