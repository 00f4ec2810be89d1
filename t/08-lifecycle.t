#!/usr/bin/perl

# Requests that wait on Redis while the world moves: clients that close
# before the reply, a reload, a graceful quit and a fast shutdown with
# commands in flight.  nginx keeps serving, replies reach the request they
# belong to or nobody, workers exit cleanly (no alert, no "open socket
# left", no crash).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

# A fake Redis whose replies to EVALSHA are numbered 1, 2, 3... across
# all connections.  While reply.hold names a gate, replies to commands
# arriving are held back until the file of that gate exists (in order:
# later replies on the connection wait behind them, as in Redis).
my $fake = fake_redis(handler => sub {
    my ($argv, $st) = @_;
    my $std = fake_std($argv, $st);
    return $std if defined $std;
    my $reply = resp_array(resp_int(++$st->{evals}), resp_int(1));
    my $gate = fake_reply($st, 'hold');
    return $reply unless defined $gate;
    return sub { -e "$st->{dir}/$gate" ? $reply : undef };
});

my $TEMPLATE = <<'EOF';
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /static { }
}
EOF

sub nginx {
    my $ng = start_nginx($TEMPLATE, vars => { REDIS => $fake->addr,
                                              TIMEOUT => conf_time(2) },
                         files => { static => 'static' });
    ok(wait_for(sub { $ng->post('/hb', { user_id => 'x' })->{status} == 200 },
                5), 'nginx ready, connected to the fake');
    return $ng;
}

my $evals = 0;     # EVALSHA replies handed out so far
sub evals_seen { scalar grep { uc $_->[0] eq 'EVALSHA' } $fake->commands }

# sends $n heartbeats whose replies wait for $gate; returns the pendings
sub held {
    my ($ng, $n, $gate) = @_;
    $fake->set_reply('hold', $gate);
    my $before = evals_seen();
    my @p = map {
        $ng->send_request('POST', '/hb', body => qq({"user_id":"held$_"}),
                          headers => ['Content-Type' => 'application/json'])
    } 1 .. $n;
    ok(wait_for(sub { evals_seen() >= $before + $n }, 3),
       "$n commands reached redis");
    $fake->set_reply('hold', undef);
    return @p;
}

sub access_count {
    my ($ng, $re) = @_;
    return scalar grep { /$re/ } split /\n/, slurp($ng->dir . '/access.log');
}

###########################################################################
# clients that close while their request waits

my $ng = nginx();
$evals = evals_seen();

my @p = held($ng, 20, 'gate1');
$_->abort for @p;
my $s = $ng->get('/static');
ok($s->{status} == 200 && $s->{elapsed} < scaled(0.05),
   '20 clients gone, their requests waiting: static served at once');
# a live request whose command queues behind the 20 held ones
my $queued = $ng->send_request('POST', '/hb', body => '{"user_id":"queued"}',
                               headers => ['Content-Type' => 'application/json']);
ok(wait_for(sub { evals_seen() >= $evals + 21 }, 3), 'its command sent');
$fake->touch('gate1');
my $res = $queued->finish(5);
is($res->{status}, 200, 'late replies for gone clients are dropped');
is($res->{json}{online}, $evals + 21, '  the live request gets its own');
is($ng->get('/static')->{status}, 200, 'nginx serving');
$res = $ng->post('/hb', { user_id => 'next' });
is($res->{status}, 200, 'next heartbeat answered');
is($res->{json}{online}, evals_seen(), '  with its own reply')
    or diag "online $res->{json}{online}, " . evals_seen() . ' commands';

# clients gone: their requests end (499 at once, or 504 at the timeout)
# and the late replies come after that
@p = held($ng, 3, 'gate2');
$_->abort for @p;
ok(wait_for(sub { access_count($ng, qr/"POST \/hb[^"]*" (?:504|499) /) >= 3 },
            4), 'the 3 abandoned requests end (504 or 499)');
$fake->touch('gate2');
$res = $ng->post('/hb', { user_id => 'next2' });
is($res->{status}, 200, 'late replies after the timeout: next answered');
is($res->{json}{online}, evals_seen(), '  with its own reply');

# With master_process off (valgrind) nginx has no graceful shutdown: QUIT
# ends the single process at once, and a "reload" is a quit and a start.
# What valgrind checks there is that commands in flight at exit leak
# nothing.

my ($t0, $st);

if ($ENV{TEST_NGINX_VALGRIND}) {
    @p = held($ng, 3, 'gate3');
    ok(defined $ng->quit(10), 'quit with commands in flight: nginx exits');
    $fake->touch('gate3');
    $_->finish(1) for @p;
    $ng->stop;

} else {
    ###########################################################################
    # reload with commands in flight

    @p = held($ng, 3, 'gate3');
    my $first = evals_seen() - 2;        # the reply number of the first held
    my @old = $ng->reload;
    ok(scalar(@old), 'reloaded: new worker up');
    $res = $ng->post('/hb', { user_id => 'new' });
    is($res->{status}, 200, 'new worker answers');
    is($res->{json}{online}, evals_seen(), '  with its own reply');
    ok(kill(0, @old) == scalar(@old), 'old worker still waits for its requests');

    $fake->touch('gate3');
    for my $i (0 .. 2) {
        my $r = $p[$i]->finish(5);
        is($r->{status}, 200, "in-flight request $i finished by the old worker");
        is($r->{json}{online}, $first + $i, '  with its own reply');
    }
    ok(wait_for(sub { !kill 0, @old }, 5), 'old worker exits');
    like($ng->log_text, qr/exited with code 0/, '  with code 0');

    # reload while requests wait and then time out
    @p = held($ng, 2, 'gate4');
    @old = $ng->reload;
    for my $x (@p) {
        my $r = $x->finish(5);
        ok($r && $r->{status} == 504, 'held over a reload: 504 at the timeout');
    }
    ok(wait_for(sub { !kill 0, @old }, 5), 'old worker exits after the timeout');
    $fake->touch('gate4');
    $res = $ng->post('/hb', { user_id => 'after' });
    is($res->{json}{online}, evals_seen(), 'late replies to the old worker lost, '
                                           . 'new worker answered its own');

    ###########################################################################
    # graceful quit with commands in flight

    @p = held($ng, 2, 'gate5');
    $first = evals_seen() - 1;
    kill 'QUIT', $ng->pid;
    ok(wait_for(sub { $ng->log_text =~ /gracefully shutting down/ }, 3),
       'quit: worker shutting down');
    ok($ng->alive, '  and waiting for its requests');
    $fake->touch('gate5');
    for my $i (0 .. 1) {
        my $r = $p[$i]->finish(5);
        is($r->{status}, 200, "request $i in flight at quit: answered");
        is($r->{json}{online}, $first + $i, '  with its own reply');
    }
    $st = $ng->quit(5);
    is($st, 0, 'nginx exits with 0 after a graceful quit');
    $ng->stop;

    # graceful quit while requests wait until the timeout
    $ng = nginx();
    @p = held($ng, 2, 'gate6');
    $t0 = time;
    kill 'QUIT', $ng->pid;
    for my $x (@p) {
        my $r = $x->finish(5);
        ok($r && $r->{status} == 504, 'quit, redis silent: 504 at the timeout');
    }
    $st = $ng->quit(5);
    is($st, 0, 'then nginx exits with 0');
    ok(time - $t0 < scaled(3.5), '  soon after the timeout');
    $ng->stop;
    $fake->touch('gate6');
}

# fast shutdown with commands in flight
$ng = nginx();
@p = held($ng, 5, 'gate7');
kill 'TERM', $ng->pid;
$t0 = time;
ok(defined $ng->quit(5), 'TERM with commands in flight: nginx exits');
ok(time - $t0 < scaled(1.5), '  at once') or diag time - $t0;
$fake->touch('gate7');
$_->finish(1) for @p;
$ng->stop;

$fake->stop;

done_testing;
