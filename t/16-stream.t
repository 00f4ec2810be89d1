#!/usr/bin/perl

# presence_stream: a live stream of a room as Server-Sent Events.  The
# headers, `retry: 2000` first, a snapshot equal to GET <online>, then
# join and leave events (reasons leave and timeout) in order with
# increasing ids, and nothing for a repeat heartbeat or a second session;
# a leave after its grace; pings on an idle stream; HEAD and 405;
# presence_stream_max_clients; the status counters; a reconnect with
# Last-Event-ID; events reaching streams on every worker and on a second
# nginx on the same Redis; and 20 writers at random against 5 streams,
# each of which, replayed, ends up holding what GET <online> answers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX qw(_exit);
use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;

need_module();

my $VALGRIND = $ENV{TEST_NGINX_VALGRIND};
my $WORKERS = $VALGRIND ? 1 : 2;    # valgrind runs one process

my $TTL   = conf_time(1);           # the short room's presence_ttl
my $GRACE = conf_time(1);           # the grace room's presence_leave_grace
my $PING  = conf_time(0.5);         # the quiet room's presence_stream_ping

my $CONF = <<'EOF';
presence_redis %%REDIS%%;
presence_redis_timeout %%RTO%%;
presence_ttl 300s;
presence_stream_max_clients %%MAX%%;

server {
    listen 127.0.0.1:%%PORT%% reuseport;

%%API%%
    location = /stream { presence_stream; }
    location = /status { presence_status; }

    # users time out fast here
    location = /short/hb     { presence_room short; presence_ttl %%TTL%%; presence_heartbeat; }
    location = /short/online { presence_room short; presence_ttl %%TTL%%; presence_online; }
    location = /short/stream { presence_room short; presence_ttl %%TTL%%; presence_stream; }

    # a leave naming a session ends it after a grace
    location = /grace/hb     { presence_room grace; presence_heartbeat; }
    location = /grace/leave  { presence_room grace; presence_leave_grace %%GRACE%%; presence_leave; }
    location = /grace/stream { presence_room grace; presence_stream; }

    # pings often
    location = /quiet/hb     { presence_room quiet; presence_heartbeat; }
    location = /quiet/stream { presence_room quiet; presence_stream_ping %%PING%%; presence_stream; }

    # a listing limited to 2
    location = /lim/hb     { presence_room lim; presence_heartbeat; }
    location = /lim/online { presence_room lim; presence_online_limit 2; presence_online; }
    location = /lim/stream { presence_room lim; presence_online_limit 2; presence_stream; }

    # the writers' room
    location = /busy/hb     { presence_room busy; presence_heartbeat; }
    location = /busy/leave  { presence_room busy; presence_leave; }
    location = /busy/online { presence_room busy; presence_online; }
    location = /busy/stream { presence_room busy; presence_stream; }
}
EOF

my $r = start_redis();

sub nginx {
    my (%o) = @_;
    my $ng = start_nginx($CONF, workers => $o{workers} // 1, vars => {
        REDIS => $r->addr, MAX => $o{max} // 4096, TTL => $TTL,
        GRACE => $GRACE, PING => $PING, RTO => conf_time(2) });
    ok(wait_for(sub {
        my $s = $ng->get('/status')->{json};
        $s && @{ $s->{workers} } == ($VALGRIND ? 1 : $o{workers} // 1)
           && !grep { !$_->{redis_connected} } @{ $s->{workers} };
    }, 10), 'nginx up, every worker connected to redis');
    return $ng;
}

my $ng = nginx(workers => $WORKERS);

sub status { $ng->get('/status')->{json} }

sub hb {
    my ($user, $sid, $path, $to) = @_;
    my %b = (user_id => $user);
    $b{session_id} = $sid if defined $sid;
    my $res = ($to // $ng)->post($path // '/hb', \%b);
    die "heartbeat $user: $res->{status} $res->{body}" if $res->{status} != 200;
    return $res;
}

sub leave {
    my ($user, $sid, $path, $to) = @_;
    my %b = (user_id => $user);
    $b{session_id} = $sid if defined $sid;
    my $res = ($to // $ng)->post($path // '/leave', \%b);
    die "leave $user: $res->{status} $res->{body}" if $res->{status} != 200;
    return $res;
}

# a stream whose headers and snapshot have come
sub stream {
    my ($path, %o) = @_;
    my $s = sse_open($o{to} // $ng, $path, %o);
    my $snap = $s->wait_event('snapshot', 5);
    die "no snapshot on $path: " . ($s->status // 'no status') . ' '
        . substr($s->body, 0, 300) unless $snap;
    return $s;
}

# the event's user and count (and reason), for is_deeply
sub ev {
    my ($e) = @_;
    return undef unless $e;
    my $j = $e->{json} || {};
    return [$e->{type}, $j->{user_id}, $j->{count},
            $e->{type} eq 'leave' ? $j->{reason} : ()];
}

sub ids_increase {
    my (@ev) = @_;
    for my $i (1 .. $#ev) {
        return 0 unless Presence::Test::SSE::_id_gt($ev[$i]{id}, $ev[$i - 1]{id});
    }
    return 1;
}

###########################################################################
# the headers, retry first, the snapshot

hb('alice');
hb('bob');

my $s = sse_open($ng, '/stream');
ok($s->wait_headers(5), 'stream: headers');
is($s->status, 200, '  status 200');
is($s->header('content-type'), 'text/event-stream; charset=utf-8',
   '  Content-Type: text/event-stream; charset=utf-8');
like($s->header('cache-control') // '', qr/\bno-store\b/,
     '  Cache-Control: no-store');
is($s->header('x-accel-buffering'), 'no', '  X-Accel-Buffering: no');
like($s->header('transfer-encoding') // '', qr/\bchunked\b/i, '  chunked');
is($s->header('content-length'), undef, '  no Content-Length');

my $snap = $s->next_event(5);
like($s->body, qr/\Aretry: 2000\r?\n\r?\n/, '  retry: 2000 comes first');
is(($s->retries)[0], 2000, '  retry read as 2000');
is($snap && $snap->{type}, 'snapshot', '  then the snapshot');
like($snap->{id} // '', qr/^[1-9][0-9]*$/, '  with a decimal id');
my $online = $ng->get('/online')->{json};
is_deeply($snap->{json}, $online, '  equal to GET /online')
    or diag $snap->{data};
is_deeply($snap->{json}, { room => 'global', ttl => 300, count => 2,
                           users => ['alice', 'bob'] },
          '  room, ttl, count and users');
is($s->error, undef, '  the chunked encoding parses');

# the snapshot obeys the location's presence_online_limit
hb($_, undef, '/lim/hb') for qw(l1 l2 l3);
my $ls = stream('/lim/stream');
is_deeply(($ls->events)[0]{json}, $ng->get('/lim/online')->{json},
          'limited listing: the snapshot equals GET /lim/online');
is_deeply([($ls->events)[0]{json}{count},
           scalar @{ ($ls->events)[0]{json}{users} }], [3, 2],
          '  two users listed, count 3');
$ls->close;

# HTTP/1.0: the same stream, delimited by the close
my $s10 = sse_open($ng, '/stream', http => '1.0');
my $snap10 = $s10->wait_event('snapshot', 5);
is_deeply($snap10 && $snap10->{json}, $online, 'HTTP/1.0: the snapshot');
is($s10->header('transfer-encoding'), undef, '  not chunked');
$s10->close;

# HEAD: the headers, no body
my $h = sse_open($ng, '/stream', method => 'HEAD', close => 1);
ok($h->wait_headers(5), 'HEAD: an answer');
is($h->status, 200, '  status 200');
is($h->header('content-type'), 'text/event-stream; charset=utf-8',
   '  Content-Type: text/event-stream');
is($h->header('x-accel-buffering'), 'no', '  X-Accel-Buffering: no');
ok($h->wait(sub { $_[0]->eof }, 5), '  the connection closes');
is($h->{raw}, '', '  without a body');

# other methods: 405
for my $m (qw(POST PUT DELETE)) {
    my $res = $ng->request($m, '/stream', body => '{"user_id":"x"}',
                           headers => ['Content-Type' => 'application/json'],
                           timeout => 3);
    api_error_ok($res, 405, 'method_not_allowed', "$m: 405");
    is($res->{headers}{allow}, 'GET, HEAD', '  Allow: GET, HEAD');
}

###########################################################################
# join and leave, nothing else

my $s2 = stream('/stream');

hb('carol');
hb('carol');                # a repeat heartbeat
hb('alice', 'tab-2');       # a second session of a user online
hb('alice', 'tab-2');
leave('alice', 'tab-2');    # ends that session only: alice stays
hb('dave');                 # the next event
leave('bob');
leave('alice');             # her last session: a leave

for my $st ($s, $s2) {
    my @ev = grep { $_->{type} ne 'snapshot' } map {
        $st->next_event(5) // ()
    } 1 .. 4;
    is_deeply([map { ev($_) } @ev],
              [['join', 'carol', 3], ['join', 'dave', 4],
               ['leave', 'bob', 3, 'leave'], ['leave', 'alice', 2, 'leave']],
              'stream ' . ($st == $s ? 1 : 2) . ': join, join, leave, leave;'
              . ' nothing for a repeat heartbeat or a second session')
        or diag explain [map { $_->{raw} } @ev];
    ok(ids_increase(($st->events)[0], @ev), '  ids increase from the snapshot');
}
my $rep = sse_replay($s->events);
is_deeply($rep->{errors}, [], 'replayed: no error');
my $now = $ng->get('/online')->{json};
is_deeply([$rep->{users}, $rep->{count}], [$now->{users}, $now->{count}],
          '  holds what GET /online answers');

# nothing more
$s->settle(0.3);
is(scalar $s->take, 0, 'nothing after them');

###########################################################################
# a reconnect with Last-Event-ID gets a fresh snapshot

my $last = $s->last_event_id;
my $re = sse_open($ng, '/stream', headers => ['Last-Event-ID' => $last]);
my $fresh = $re->next_event(5);
is($fresh && $fresh->{type}, 'snapshot',
   'Last-Event-ID: the first event is a snapshot');
is_deeply($fresh && $fresh->{json}, $ng->get('/online')->{json},
          '  equal to GET /online');
# the snapshot holds every event up to its id: nothing happened since the
# last one the client saw, so it is that very id, never an older one
ok($fresh && !Presence::Test::SSE::_id_gt($last, $fresh->{id}),
   '  with an id no older than the one given')
    or diag "snapshot id $fresh->{id}, Last-Event-ID $last";
like($re->body, qr/\Aretry: 2000\r?\n\r?\n/, '  retry first again');
hb('erin');
is_deeply(ev($re->next_event(5)), ['join', 'erin', 3],
          '  and the events after it');
$re->close;
$s10->close;

###########################################################################
# a timeout leave, with nothing else touching the room

{
    my $st = stream('/short/stream');
    my $snap = ($st->events)[0];
    is_deeply($snap->{json}, $ng->get('/short/online')->{json},
              'short room: the snapshot equals GET /short/online');
    my $t0 = time;
    hb('tim', undef, '/short/hb');
    my $t1 = time;
    is_deeply(ev($st->next_event(3)), ['join', 'tim', 1], 'join of tim');
    my $e = $st->next_event(1 + 1 + 2);
    is_deeply(ev($e), ['leave', 'tim', 0, 'timeout'],
              'then a leave with reason timeout');
    if ($e) {
        my $ttl = scaled(1);
        ok($e->{t} - $t0 >= $ttl - 0.05, '  not before the TTL')
            or diag $e->{t} - $t0;
        ok($e->{t} - $t1 <= $ttl + scaled(1),
           '  within TTL + 1 s of the heartbeat')
            or diag $e->{t} - $t1;
    }
    ok(ids_increase($st->events), '  ids increase');
    $st->close;
}

###########################################################################
# a session's leave with a grace: the leave comes after the grace, and
# not at all if the session heartbeats again within it

{
    my $st = stream('/grace/stream');
    hb('gus', 's1', '/grace/hb');
    hb('hal', 's1', '/grace/hb');
    is_deeply([map { ev($st->next_event(3)) } 1 .. 2],
              [['join', 'gus', 1], ['join', 'hal', 2]], 'grace room: two joins');
    my $t0 = time;
    leave('gus', 's1', '/grace/leave');
    leave('hal', 's1', '/grace/leave');
    hb('hal', 's1', '/grace/hb');        # hal's page came back
    my $t1 = time;
    my $e = $st->next_event(1 + 1 + 2);
    is_deeply(ev($e), ['leave', 'gus', 1, 'leave'],
              'gus: a leave with reason leave');
    if ($e) {
        ok($e->{t} - $t0 >= scaled(1) - 0.05, '  only after the grace')
            or diag $e->{t} - $t0;
        ok($e->{t} - $t1 <= scaled(1) + scaled(1), '  within grace + 1 s')
            or diag $e->{t} - $t1;
    }
    # hal came back within his grace: nothing for him once it has passed
    $st->settle(1.2);
    hb('ike', undef, '/grace/hb');
    is_deeply(ev($st->next_event(3)), ['join', 'ike', 2],
              'hal, back within the grace: no leave and no join');
    my $rep = sse_replay($st->events);
    is_deeply([$rep->{errors}, $rep->{users}], [[], ['hal', 'ike']],
              '  replayed: hal and ike');
    $st->close;
}

###########################################################################
# : ping on an idle stream, every presence_stream_ping, and not while
# events flow

{
    my $st = stream('/quiet/stream');
    my $t0 = ($st->events)[0]{t};       # the snapshot's arrival
    ok($st->wait(sub { (grep { $_ eq 'ping' } $_[0]->comments) >= 3 }, 5),
       'quiet stream: three pings')
        or diag explain [$st->comments];
    my @t = ($t0, ($st->comment_times)[0 .. 2]);
    my @gaps = map { $t[$_] - $t[$_ - 1] } 1 .. 3;
    ok(!grep({ $_ < scaled(0.5) * 0.8 } @gaps), '  not more often than the ping')
        or diag "@gaps";
    ok(!grep({ $_ > scaled(0.5) + scaled(0.5) } @gaps),
       '  every presence_stream_ping') or diag "@gaps";
    is($st->{dataless}, 0, '  no event without data');

    # events every 0.1 s: no ping between them
    my $pings = () = $st->comments;
    my $end = time + scaled(1.5);
    my $n = 0;
    while (time < $end) {
        hb('q' . ++$n, undef, '/quiet/hb');
        $st->settle(0.1);
    }
    ok($st->wait(sub { $_[0]->events_of('join') == $n }, 1),
       "  every join came ($n)");
    my $during = () = $st->comments;
    is($during, $pings, "no ping while events flow");
    ok($st->wait(sub { $_[0]->comments > $during }, 2), '  pings again after');
    $st->close;
}

###########################################################################
# presence_stream_max_clients 2 (per worker): a third stream gets 503

{
    my $one = nginx(workers => 1, max => 2);
    my @st = map { stream('/stream', to => $one) } 1 .. 2;
    my $res = $one->get('/stream', timeout => 3);
    api_error_ok($res, 503, 'too_many_streams', 'a third stream: 503 too_many_streams');
    is($one->get('/status')->{json}{streams}, 2, '  two streams counted');
    $st[0]->close;
    ok(wait_for(sub { ($one->get('/status')->{json}{streams} // -1) == 1 }, 5),
       'one closed: the gauge goes down');
    my $again = sse_open($one, '/stream');
    ok($again->wait_event('snapshot', 5), '  and a new stream is let in');
    $_->close for @st, $again;
    check_log($one);
}

###########################################################################
# the status: streams and stream_events

$_->close for $s, $s2;
ok(wait_for(sub { (status()->{streams} // -1) == 0 }, 5), 'status: no stream open')
    or diag explain status();

my @open = map { stream('/stream') } 1 .. 3;
ok(wait_for(sub { (status()->{streams} // -1) == 3 }, 5), 'three streams: streams 3');
my $st0 = status();
is(eval { my $n = 0; $n += $_->{streams} for @{ $st0->{workers} }; $n }, 3,
   '  the workers\' streams add up to it');
hb('fay');
leave('fay');
ok(sse_wait_all(\@open, sub { !grep { $_->events_of('leave') < 1 } @open }, 5),
   '  each got the join and the leave');
ok(wait_for(sub { (status()->{stream_events} // -1)
                  - ($st0->{stream_events} // 0) == 6 }, 3),
   '  stream_events: 2 events x 3 streams') or diag explain status();
$_->close for @open;
ok(wait_for(sub { (status()->{streams} // -1) == 0 }, 5), 'closed: streams 0');

###########################################################################
# every worker's streams, and a second nginx's, see an event caused
# through the first

my $other = nginx(workers => 1);
my @many;
SKIP: {
    skip 'one process under valgrind: no second worker to spread to', 1
        if $WORKERS < 2;
    # reuseport spreads connections by their source port: open streams
    # until both workers hold some
    my $both;
    for (1 .. 24) {
        push @many, stream('/stream');
        my $w = status()->{workers};
        $both = grep({ ($_->{streams} // 0) > 0 } @$w) == 2;
        last if $both && @many >= 4;
    }
    ok($both, scalar(@many) . ' streams, both workers hold some')
        or diag explain status();
}
push @many, stream('/stream') if !@many;
my @far = map { stream('/stream', to => $other) } 1 .. 2;
hb('gil');
ok(sse_wait_all([@many, @far], sub {
    !grep { !grep { ($_->{json}{user_id} // '') eq 'gil' } $_->events_of('join') }
        @many, @far
}, 5), 'a join through the first nginx reaches every stream of both');
hb('hen', undef, undef, $other);
ok(sse_wait_all([@many, @far], sub {
    !grep { !grep { ($_->{json}{user_id} // '') eq 'hen' } $_->events_of('join') }
        @many, @far
}, 5), 'and one through the second');
for my $st (@many, @far) {
    my $rep = sse_replay($st->events);
    if (@{ $rep->{errors} }) {
        fail('replay of a stream');
        diag explain $rep->{errors};
        last;
    }
}
$_->close for @many, @far;

###########################################################################
# 20 writers at random against 5 streams: each stream, replayed, holds
# what GET /busy/online answers at the end

{
    my @st = ((map { stream('/busy/stream') } 1 .. 4),
              stream('/busy/stream', to => $other));
    my $ops = $VALGRIND ? 15 : 40;
    my @kids;
    for my $w (1 .. 20) {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            srand($$ ^ time);
            my @to = ($ng, $other);
            for (1 .. $ops) {
                my $to = $to[rand 2];
                my $user = 'busy-user-' . int(rand 12);
                my $sid = rand() < 0.5 ? undef : 'tab' . int(rand 3);
                my $path = rand() < 0.6 ? '/busy/hb' : '/busy/leave';
                my %b = (user_id => $user);
                $b{session_id} = $sid if defined $sid;
                my $res = $to->post($path, \%b, timeout => 10);
                _exit(1) unless $res && $res->{status} == 200;
                sleep rand 0.01;
            }
            _exit(0);
        }
        push @kids, $pid;
    }
    # the streams are read while the writers write
    my $done = 0;
    my $fails = 0;
    sse_wait_all(\@st, sub {
        for (@kids) {
            next unless $_;
            my $w = waitpid $_, POSIX::WNOHANG();
            next unless $w > 0;
            $fails++ if $?;
            $done++;
            $_ = 0;
        }
        return $done == @kids;
    }, 120);
    is($done, 20, '20 writers done');
    is($fails, 0, '  every request answered 200');
    # a last join: once every stream has it, they have everything before it
    hb('zz-last', undef, '/busy/hb');
    ok(sse_wait_all(\@st, sub {
        !grep { !grep { ($_->{json}{user_id} // '') eq 'zz-last' }
                $_->events_of('join') } @st
    }, 10), 'every stream got the last join');
    my $final = $ng->get('/busy/online')->{json};
    my $events = 0;
    for my $i (0 .. $#st) {
        my $rep = sse_replay($st[$i]->events);
        $events += $st[$i]->events;
        is_deeply([$rep->{errors}, $rep->{users}, $rep->{count}],
                  [[], $final->{users}, $final->{count}],
                  "stream $i replayed: GET /busy/online ($final->{count} users)")
            or diag explain $rep->{errors};
    }
    ok($events > 5 * 10, "  through $events events");
    $_->close for @st;
}

done_testing;
