package Bench::Report;

# The report of bench/run: the rows it measured, the ratios and the
# pass/miss verdicts of the targets, the tables, the console lines and
# RESULTS.md.  Formatting only: nothing here starts a server or measures;
# bench/run hands over wrk's figures (a hash per row) and the settings.

use strict;
use utf8;
use warnings;

use Exporter qw(import);
use File::Path qw(make_path);
use POSIX qw(strftime);
use Presence::Test qw(slurp spew);

our @EXPORT_OK = qw(fmt_rps fmt_ms fmt_err);

# Bench::Report->new(%settings): srv_cpu, cli_cpu, freeze, scale (list),
# and what the "How it measures" text quotes (see write)
sub new {
    my ($class, %s) = @_;
    return bless { %s, rows => [], mem => [], fan => [], fig => {} }, $class;
}

# $r->row(scenario => ..., contender => ..., m => wrk's figures | na => text,
#         ceiling => fig name, fig => name): a row of the table; its figures
# are kept under the fig name for the targets.  Returns m.
sub row {
    my ($self, %r) = @_;
    $r{ceiling} = $self->{fig}{ $r{ceiling} } if $r{ceiling};
    push @{ $self->{rows} }, \%r;
    $self->{fig}{ $r{fig} } = $r{m} // 1 if $r{fig};
    return $r{m};
}

# $r->memory(what, users, delta[, fig]): a row of the Redis memory table;
# the module's also count for the targets, as "<fig> <users>" ("mem":
# the default session, "mem s1": one named session per user)
sub memory {
    my ($self, $what, $users, $delta, $fig) = @_;
    push @{ $self->{mem} }, { what => $what, users => $users, delta => $delta };
    $self->{fig}{"$fig $users"} = { users => $users, delta => $delta } if $fig;
}

# $r->fanout(contender => ..., fig => name, m => bench/fanout's figures |
#            na => text): a row of the fan-out table, its figures kept as
# "fan <name>" for the targets ("fan stream": the module, "fan nchan")
sub fanout {
    my ($self, %r) = @_;
    push @{ $self->{fan} }, \%r;
    $self->{fig}{"fan $r{fig}"} = $r{m} if $r{m};
}

# v1's Redis memory per online user (1,000,000 users, one room), which
# a user with one session may cost at most 1.3 times
my $V1_BYTES = 109;

sub fmt_rps {
    my $n = sprintf '%.0f', shift;
    1 while $n =~ s/^(\d+)(\d{3})/$1,$2/;
    return $n;
}

sub fmt_ms {
    my $us = shift;
    return '—' unless defined $us;
    my $ms = $us / 1000;
    return sprintf($ms < 10 ? '%.2f ms' : $ms < 100 ? '%.1f ms' : '%.0f ms',
                   $ms);
}

sub fmt_cpu {
    my $m = shift;
    return sprintf('%s, %.0f%%/%.0f%%',
                   defined $m->{srv_cpu} ? sprintf('%.0f%%', $m->{srv_cpu}) : '—',
                   $m->{core_srv}, $m->{core_cli});
}

sub fmt_err {
    my $m = shift;
    my @e;
    push @e, "$m->{status} non-2xx" if $m->{status};
    push @e, "$m->{sock} socket" if $m->{sock};
    return @e ? join(', ', @e) : '0';
}

# the console line of a measured row
sub line {
    my ($scenario, $contender, $m) = @_;
    return sprintf "  %-34s %-20s %9s req/s  p50 %-9s p99 %-9s cpu %s  %s\n",
        $scenario, $contender, fmt_rps($m->{rps}), fmt_ms($m->{p50_us}),
        fmt_ms($m->{p99_us}), fmt_cpu($m), fmt_err($m);
}

sub fmt_kb { defined $_[0] ? sprintf('%.1f KB', $_[0]) : '—' }

# the console line of a fan-out row
sub fanout_line {
    my ($contender, $m) = @_;
    return sprintf "  %-26s %s streams: median %s (%s–%s), worker CPU %.1f µs"
        . "/stream (%.0f%% kernel); worker memory %s/idle stream, %s after"
        . " the events\n", $contender, fmt_rps($m->{n}), fmt_ms(1000 * $m->{median_ms}),
        fmt_ms(1000 * $m->{min_ms}), fmt_ms(1000 * $m->{max_ms}),
        $m->{cpu_us_per_stream}, $m->{kernel_pct}, fmt_kb($m->{idle_kb_per_stream}),
        fmt_kb($m->{after_kb_per_stream});
}

sub fanout_table {
    my ($self) = @_;
    return '' unless @{ $self->{fan} };
    my @body;
    for my $r (@{ $self->{fan} }) {
        my $m = $r->{m};
        if (!$m) {
            push @body, [ $r->{contender}, $r->{na}, ('') x 8 ];
            next;
        }
        push @body, [ $r->{contender}, fmt_rps($m->{n}),
            join(', ', map { sprintf '%.0f', $_ } @{ $m->{round_ms} }),
            fmt_ms(1000 * $m->{median_ms}),
            sprintf('%.1f (%.0f%% kernel)', $m->{cpu_us_per_stream}, $m->{kernel_pct}),
            sprintf('%.1f', $m->{client_us_per_stream}),
            fmt_kb($m->{idle_kb_per_stream}), fmt_kb($m->{after_kb_per_stream}),
            sprintf('%.0f → %.0f → %.0f', map { $_ / 1024 }
                    @$m{qw(rss_before_kb rss_idle_kb rss_after_kb)}),
            sprintf('%.1f s', $m->{ready_ms} / 1000) ];
    }
    return table([ 'contender', 'streams', 'rounds (ms, until the last stream had the event)',
                   'median', 'worker CPU µs/stream', 'client CPU µs/stream',
                   'worker memory/idle stream',
                   'after the events', 'worker RSS MB: before → idle → after',
                   'streams opened in' ], @body);
}

sub table {
    my ($head, @body) = @_;
    my @w = map { length } @$head;
    for my $r (@body) {
        for my $i (0 .. $#$r) {
            my $l = length $r->[$i];
            $w[$i] = $l if $l > ($w[$i] // 0);
        }
    }
    my $line = sub {
        my $r = shift;
        return '| ' . join(' | ', map {
            my $s = $r->[$_] // '';
            $s . ' ' x ($w[$_] - length $s)
        } 0 .. $#w) . " |\n";
    };
    return $line->($head)
         . '|' . join('|', map { '-' x ($_ + 2) } @w) . "|\n"
         . join('', map { $line->($_) } @body);
}

sub results_table {
    my ($self) = @_;
    return "(no wrk rows in this run)\n" unless @{ $self->{rows} };
    my @body;
    for my $r (@{ $self->{rows} }) {
        my $m = $r->{m};
        if (!$m) {
            push @body, [ $r->{scenario}, $r->{contender}, $r->{na},
                          ('') x 8 ];
            next;
        }
        my $ratio = '';
        if ($r->{ceiling} && $r->{ceiling}{rps}) {
            $ratio = sprintf '%.2f×', $m->{rps} / $r->{ceiling}{rps};
        }
        push @body, [ $r->{scenario}, $r->{contender}, fmt_rps($m->{rps}),
                      fmt_ms($m->{p50_us}), fmt_ms($m->{p99_us}),
                      fmt_ms($m->{max_us}), fmt_err($m), $ratio,
                      defined $m->{srv_cpu} ? sprintf('%.0f%%', $m->{srv_cpu}) : '—',
                      defined $m->{cpu_us} ? sprintf('%.1f', $m->{cpu_us}) : '—',
                      sprintf('%.0f%% / %.0f%%', $m->{core_srv}, $m->{core_cli}) ];
    }
    return table([ 'scenario', 'contender', 'req/s', 'p50', 'p99', 'max',
                   'errors', 'vs ceiling', 'server CPU', 'CPU µs/req',
                   "core $self->{srv_cpu} / $self->{cli_cpu} busy" ], @body);
}

# the ratio of two rows' req/s against a bar, and the same by CPU per
# request; when the two disagree (a row disturbed by other load) both
# verdicts are given
sub verdict {
    my ($x, $y, $bar) = @_;
    my $r = $x->{rps} / $y->{rps};
    my $v = $r >= $bar ? 'pass' : 'miss';
    my $text = sprintf '%.2f×', $r;
    if ($x->{cpu_us} && $y->{cpu_us}) {
        my $c = $y->{cpu_us} / $x->{cpu_us};
        my $cv = $c >= $bar ? 'pass' : 'miss';
        $text .= sprintf ' (by CPU per request: %.2f×)', $c;
        $v .= "; by CPU per request: $cv" if $cv ne $v;
    }
    return ($text, $v);
}

# the targets by ratio: [what, figure, against which, bar]
my @RATIOS = (
    [ 'heartbeat: module vs nginx return 204', 'hb module', 'hb ceiling', 0.6 ],
    [ 'heartbeat with session_id: module vs nginx return 204', 'hb session',
      'hb ceiling', 0.5 ],
    [ 'heartbeat: module vs lua-resty-redis', 'hb module', 'hb lua', 3 ],
    [ 'heartbeat: module vs fastapi + redis-py', 'hb module', 'hb fastapi', 10 ],
    [ 'online, 1,000 users, uncached: module vs lua-resty-redis',
      'on module', 'on lua', 5 ],
    [ 'online, 1,000 users, uncached, no memo (?limit=999): module vs lua-resty-redis',
      'on nomemo', 'on lua', 5 ],
    [ 'online, 1,000 users, presence_online_cache 1s: module vs static file',
      'on cached', 'on static', 1 ],
    [ 'heartbeat into 1,000 rooms: Redis Cluster (3 masters) vs one redis-server',
      'cl cluster', 'cl single', 0.9 ],
);

sub check_rows {
    my ($self) = @_;
    my $fig = $self->{fig};
    my @c;
    for (@RATIOS) {
        my ($what, $of, $to, $bar) = @$_;
        my ($x, $y) = ($fig->{$of}, $fig->{$to});
        my $na = $of eq 'on cached' && $fig->{'no cache'}
            ? 'n/a (presence_online_cache not built)' : 'n/a (not measured)';
        my ($text, $v) = $x && $y && $y->{rps} ? verdict($x, $y, $bar)
                                                : ($na, 'n/a');
        push @c, [ $what, $text, sprintf('≥ %.1f×', $bar), $v ];
    }
    # the cluster row's ceiling: Redis itself, given the same heartbeats
    # without nginx (bench/run's redis-benchmark replay)
    my ($ca, $sa) = @$fig{'cl cluster alone', 'cl single alone'};
    my ($cm, $sm) = @$fig{'cl cluster', 'cl single'};
    if ($ca && $sa && $sa->{rps}) {
        my $ceil = $ca->{rps} / $sa->{rps};
        my $text = sprintf '%.2f× (Redis per heartbeat: %.1f vs %.1f µs)',
            $ceil, $ca->{redis_us}, $sa->{redis_us};
        push @c, [ 'the same heartbeats, Redis alone (redis-benchmark replaying'
                   . ' the module\'s script): Redis Cluster (3 masters) vs one'
                   . ' redis-server', $text, 'the ceiling of the row above',
                   'reference' ];
        if ($cm && $sm && $sm->{rps} && defined $cm->{worker_us}) {
            push @c, [ 'the cluster row against its ceiling; per heartbeat,'
                       . ' the worker\'s and the Redis processes\' CPU',
                       sprintf('%.2f× (worker %.1f vs %.1f µs, Redis %.1f vs'
                               . ' %.1f µs)', $cm->{rps} / $sm->{rps} / $ceil,
                               $cm->{worker_us}, $sm->{worker_us},
                               $cm->{redis_us}, $sm->{redis_us}),
                       '—', 'reference' ];
        }
    }
    my $frz = "static file p99 while Redis is frozen $self->{freeze} s";
    if (my $f = $fig->{'freeze static'}) {
        my $run = $fig->{'nofreeze static'};
        push @c, [ $frz, fmt_ms($f->{p99_us}) . ' (max ' . fmt_ms($f->{max_us})
                   . ($run ? '; Redis running: ' . fmt_ms($run->{p99_us}) : '')
                   . ')', '< 10 ms', $f->{p99_us} < 10_000 ? 'pass' : 'miss' ];
    } else {
        push @c, [ $frz, 'n/a (not measured)', '< 10 ms', 'n/a' ];
    }
    my @scale = @{ $self->{scale} };
    my ($lo, $hi) = ($scale[0], $scale[-1]);
    if (@scale > 1 && $fig->{"scale $lo"} && $fig->{"scale $hi"}) {
        my ($text, $v) = verdict($fig->{"scale $hi"}, $fig->{"scale $lo"}, 0.8);
        push @c, [ sprintf('heartbeat cost flat: req/s with %s users vs %s',
                           fmt_rps($hi), fmt_rps($lo)), $text, '≥ 0.80×', $v ];
    } else {
        push @c, [ 'heartbeat cost flat from 1,000 to 1,000,000 users',
                   'n/a (not measured)', '≥ 0.80×', 'n/a' ];
    }
    if (my $m = $fig->{"mem $hi"}) {
        my $b = $m->{delta} / $m->{users};
        push @c, [ sprintf('Redis memory per online user (%s users)',
                           fmt_rps($hi)),
                   sprintf('%.0f bytes', $b), '≤ 100 bytes (aim)',
                   $b <= 100 ? 'pass' : 'miss' ];
    }
    my ($fs, $fn) = @$fig{'fan stream', 'fan nchan'};
    my $fw = sprintf 'stream fan-out, %s streams, one join: module vs nchan',
        $fs || $fn ? fmt_rps(($fs || $fn)->{n}) : '10,000';
    if ($fs && $fn) {
        my $r = $fs->{median_ms} / $fn->{median_ms};
        my $v = $r <= 1.25 ? 'pass' : 'miss';
        my $c = $fs->{cpu_us_per_stream} / $fn->{cpu_us_per_stream};
        my $cv = $c <= 1.25 ? 'pass' : 'miss';
        $v .= "; by CPU per stream: $cv" if $cv ne $v;
        push @c, [ $fw, sprintf('%s vs %s (%.2f×; by worker CPU per stream:'
                                . ' %.1f vs %.1f µs, %.2f×)',
                                fmt_ms(1000 * $fs->{median_ms}),
                                fmt_ms(1000 * $fn->{median_ms}), $r,
                                $fs->{cpu_us_per_stream}, $fn->{cpu_us_per_stream}, $c),
                   '≤ 1.25 × nchan', $v ];
        push @c, [ 'worker memory per idle stream: module vs nchan',
                   sprintf('%s vs %s (after the events: %s vs %s)',
                           fmt_kb($fs->{idle_kb_per_stream}), fmt_kb($fn->{idle_kb_per_stream}),
                           fmt_kb($fs->{after_kb_per_stream}), fmt_kb($fn->{after_kb_per_stream})),
                   '≤ nchan',
                   $fs->{idle_kb_per_stream} <= $fn->{idle_kb_per_stream} ? 'pass' : 'miss' ];
    } else {
        my ($na) = map { $_->{na} } grep { $_->{na} } @{ $self->{fan} };
        $na //= 'n/a (not measured)';
        push @c, [ $fw, $na, '≤ 1.25 × nchan', 'n/a' ],
                 [ 'worker memory per idle stream: module vs nchan', $na, '≤ nchan', 'n/a' ];
    }
    for (['mem', 'default session'], ['mem s1', 'one named session']) {
        my ($f, $what) = @$_;
        my $m = $fig->{"$f $hi"} or next;
        my $b = $m->{delta} / $m->{users};
        push @c, [ sprintf('Redis memory per online user with one session: %s'
                           . ' (%s users)', $what, fmt_rps($hi)),
                   sprintf('%.0f bytes (%.2f× %d B)', $b, $b / $V1_BYTES, $V1_BYTES),
                   sprintf('≤ 1.3 × %d B (%.0f bytes)', $V1_BYTES, 1.3 * $V1_BYTES),
                   $b <= 1.3 * $V1_BYTES ? 'pass' : 'miss' ];
    }
    return table([ 'target', 'measured', 'bar', 'result' ], @c);
}

# rows whose server processes had well under a core: bound by wrk, or
# sharing the server core with other load, so their req/s understates them
sub disturbed_note {
    my ($self) = @_;
    my @d;
    for my $r (@{ $self->{rows} }) {
        my $m = $r->{m} or next;
        next unless defined $m->{srv_cpu} && $m->{srv_cpu} < 85;
        push @d, sprintf('%s / %s (%.0f%% server CPU, cores %.0f%%/%.0f%% busy)',
                         $r->{scenario}, $r->{contender}, $m->{srv_cpu},
                         $m->{core_srv}, $m->{core_cli});
    }
    return '' unless @d;
    return "Rows whose server processes had less than 85% of core $self->{srv_cpu}\n"
         . "in this run (wrk-bound, or the core was shared with other load):\n"
         . "their req/s understates them; their CPU per request is the\n"
         . "steadier figure.\n\n" . join('', map { "- $_\n" } @d);
}

sub memory_table {
    my ($self) = @_;
    return '' unless @{ $self->{mem} };
    return table([ 'Redis data model', 'users', 'used_memory delta',
                   'bytes per user' ],
        map { [ $_->{what}, fmt_rps($_->{users}), fmt_rps($_->{delta}),
                sprintf('%.0f', $_->{delta} / $_->{users}) ] } @{ $self->{mem} });
}

sub capture { (Presence::Test::run_capture(@_))[1] }

sub pkg_version {
    my ($rc, $v) = Presence::Test::run_capture('dpkg-query', '-W', '-f',
                                               '${Version}', $_[0]);
    return $rc ? '?' : $v;
}

# Prints the tables and writes RESULTS.md to $path.  %i: started (time),
# elapsed, loadavg, ncpu, top, module, nginx, bench (the bench/ directory),
# and the settings the text quotes: duration, warmup, rounds, ttl, users, rooms,
# cl_rounds, hb_ids, hb_conns, on_conns, fan_streams, fan_rounds, fan_nofile, fan_conns
sub write {
    my ($self, $path, %i) = @_;
    my $results = $self->results_table;
    my $checks  = $self->check_rows;
    my $memory  = $self->memory_table;
    my $fanout  = $self->fanout_table;
    my $took = sprintf '%dm%02ds', $i{elapsed} / 60, $i{elapsed} % 60;

    print "\n", $results if @{ $self->{rows} };
    print "\n", $fanout if $fanout;
    print "\n", $checks;
    print "\n", $memory if $memory;
    print "\nbench: done in $took\n";

    my $top = $i{top};
    my ($cpu) = slurp('/proc/cpuinfo') =~ /^model name\s*:\s*(.*)$/m;
    my $kernel = capture('uname', '-sr') =~ s/\s+$//r;
    my ($nginx_v) = capture($i{nginx}, '-v') =~ m{nginx/(\S+)};
    my ($redis_v) = capture('redis-server', '--version') =~ /v=(\S+)/;
    my $commit = capture('git', '-C', $top, 'rev-parse', '--short', 'HEAD')
        =~ s/\s+$//r;
    my $dirty = capture('git', '-C', $top, 'status', '--porcelain', '--',
                        'config', 'ngx_*.c', 'ngx_*.h');
    $commit .= ' + uncommitted changes' if $dirty =~ /\S/;
    my @envs = grep { defined $ENV{$_} } qw(QUICK DURATION WARMUP ROUNDS ONLY
        SCALE SERVER_CPU CLIENT_CPU PYTHON);
    my $command = join ' ', (map { "$_=$ENV{$_}" } @envs),
                            $ENV{BENCH_COMMAND} // 'bench/run';
    my $date = strftime('%Y-%m-%d %H:%M UTC', gmtime $i{started});
    my ($u, $ids) = (fmt_rps($i{users}), fmt_rps($i{hb_ids}));
    my ($srv, $cli, $frz) = @$self{qw(srv_cpu cli_cpu freeze)};
    my $rounds = $i{rounds} > 1 ? ", best of $i{rounds} rounds" : '';
    my $module = $i{module} =~ s{^\Q$top\E/}{}r;
    my %v = map { $_ => pkg_version($_) } qw(wrk libnginx-mod-http-lua
        lua-nginx-redis python3-fastapi python3-uvicorn python3-redis
        libnginx-mod-nchan);

    my $md = <<MD;
# Benchmark results

The latest run of `make bench` (bench/run), as measured. Every figure comes
from one run on one machine; each req/s is also given as a ratio of its
ceiling measured in the same run (heartbeat rows: nginx `return 204` at the
heartbeat path; online rows: the same JSON served as a static file), and
those ratios are what to compare across machines.

These numbers are noisy: the machine is shared (other test suites may be
running; see the load average below), and client and server have one core
each. Take the ratios within one run, not the absolute req/s, as the result.

- date: $date; the whole run took $took
- command: `$command`
- machine: $i{ncpu} cores, $cpu, $kernel; load average at the start: $i{loadavg}
- software: nginx $nginx_v (Debian), redis-server $redis_v, wrk $v{wrk},
  lua-nginx-module $v{'libnginx-mod-http-lua'}, lua-resty-redis $v{'lua-nginx-redis'},
  python3-fastapi $v{'python3-fastapi'}, python3-uvicorn $v{'python3-uvicorn'} (uvloop, httptools),
  python3-redis $v{'python3-redis'} (hiredis), nchan $v{'libnginx-mod-nchan'}
- module: $module, built from commit $commit

How it measures:

- Each server (1 nginx worker, or 1 uvicorn worker) and a redis-server of its
  own (TCP on 127.0.0.1, no persistence) run on core $srv; `wrk -t1 --latency`
  runs on core $cli. Every nginx contender has `access_log off` and
  `keepalive_requests 1000000`. Each row: $i{warmup}s of warm-up, then $i{duration}s
  measured$rounds. TTL $i{ttl}s (presence_ttl, EX), so nobody expires mid-run.
- heartbeat: POST `{"user_id":"u<n>"}` (application/json), $i{hb_conns} connections,
  $ids distinct ids in turn; the ceiling answers the same requests with
  `return 204`. One heartbeat per contender is checked for status and JSON
  shape before and after. With session_id (the module only): the same with
  `{"user_id":"u<n>","session_id":"tab-u<n>"}`, one named session per user,
  from an empty room.
- online: GET with $u users online (heartbeated through each contender just
  before, every answer checked), $i{on_conns} connections; the ceiling serves the
  module's answer, byte for byte, as a static file. Each contender's listing is
  checked to be exactly those $u users, sorted, before and after its run.
  The room does not change during a run, so the module's uncached listing is
  answered from its worker's memo after asking Redis the room's head (count
  and last event id); the row `?limit=999 (no memo)` is the listing the memo
  never holds (999 of the users, sorted, and the count), built from Redis's
  members on every request: what a listing costs after the room changed.
- Redis frozen: SIGSTOP of the module's redis-server for ${frz}s in the middle
  of a run of a static file ($i{on_conns} connections) on the module's nginx, with
  the heartbeat load ($i{hb_conns} connections) alongside; the heartbeats time out
  (504 after presence_redis_timeout 1s) or get 503, the static file must not wait.
- scale: a fresh module and Redis per room size, the room filled inside Redis
  (ZADD u1..uN, scores far ahead), then heartbeats with $ids ids drawn from
  the room. Memory: growth of Redis's `used_memory` over the empty instance,
  divided by the users; then the same users in the original's model (a key
  per user with EX) in the same instance, emptied; then, emptied again, the
  same users with named sessions: one each (`tab-u<n>`), then two more each
  (`tab-u<n>-2`, `-3`), written by the module's own heartbeat script (taken
  from the module's .so, checked against the one it loaded into Redis)
  called in a loop inside Redis, and checked through the module's lookup.
- cluster: heartbeats as above, but into ${\ fmt_rps($i{rooms}) } rooms (`?room=r<n>`,
  `presence_room \$arg_room`; the k-th id to room `r<(k-1) mod $i{rooms} + 1>`, so
  ${\ fmt_rps($i{hb_ids} / $i{rooms}) } users a room, the rooms spread over the slots), the same
  1-worker nginx against one redis-server, and against a Redis Cluster of 3
  masters without replicas (`presence_redis_cluster`), both running, measured
  in turn in $i{cl_rounds} rounds (best req/s of each). Every Redis process runs on
  core $srv with the worker and counts in the CPU per request, which is also
  split into the worker's and the Redis processes' parts; the listings of
  a few rooms are checked after the rounds, that every master holds rooms, and
  that the worker counted no Redis timeouts, reconnects or redirects. Then the
  cluster row's ceiling: the same Redis given the same heartbeats without
  nginx, `redis-benchmark` (on core $cli) replaying the module's heartbeat
  script (`EVALSHA` of the script the module loaded, the same arguments, the
  same ${\ fmt_rps($i{hb_ids}) } ids, one room per Redis process: redis-benchmark's `{tag}`),
  3 connections with 16 commands in flight on each, as the worker
  pipelines its load on its connections; $i{cl_rounds} rounds in turn, best
  of each, and Redis's own counts (every `EVALSHA` made, no error reply)
  checked.
- fan-out: a fresh nginx per contender (its one worker pinned to core $srv by
  `worker_cpu_affinity`, `worker_rlimit_nofile $i{fan_nofile}`, `worker_connections
  $i{fan_conns}`) and bench/fanout.c (C, epoll, one thread, on core $cli) holding
  ${\ fmt_rps($i{fan_streams}) } Server-Sent Events streams on it. Once every stream has
  its first event (the module: `event: snapshot`; nchan's EventSource: `: hi`), $i{fan_rounds}
  rounds: a POST on a connection of its own (the module: a heartbeat of a user
  not yet online, to the heartbeat location of the stream's room: one `event:
  join` on every stream; nchan: a message to its publisher location) and the
  time from sending it until the last stream had the whole event. Worker CPU:
  the worker's run time over the round (the trigger, the fan-out and a 300 ms
  pause; /proc/PID/schedstat) per stream; kernel: stime's share of it; client
  CPU: bench/fanout's own, from the trigger to the last event. Worker
  memory: growth of the worker's VmRSS from before the streams to the streams
  idle, and to after the rounds, per stream. The module's Redis (the heartbeat,
  the pub/sub message) is not in its worker's CPU.

## Results

$results
- errors: wrk's non-2xx/3xx responses and socket errors (connect, read,
  write, timeout). The 304 row counts 304 as success.
- server CPU: the CPU time of the contender's own processes (nginx worker, or
  uvicorn, plus its redis-server) over the run, in % of one core; CPU µs/req:
  the same CPU time divided by the requests served. On a quiet machine a
  server-bound row shows ~100% here; less means the server's core was shared
  (see "core busy": the whole core's use, whoever ran there) or wrk was the
  limit (client core at 100%). CPU per request is the figure least disturbed
  by other tenants of the machine; the checks below give ratios by it too.

${\ $self->disturbed_note}
MD
    $md .= "## Stream fan-out\n\n$fanout\n" if $fanout;
    $md .= <<MD;
## Targets

$checks
MD
    $md .= "\n## Redis memory per online user\n\n$memory" if $memory;
    utf8::encode($md);
    # the hand-written reading of the profiles, for the figures that miss
    # (UTF-8 already: appended as it is)
    $md .= "\n" . slurp("$i{bench}/ANALYSIS.md") if -f "$i{bench}/ANALYSIS.md";

    make_path($1) if $path =~ m{^(.*)/[^/]+$};
    spew($path, $md);
    print "bench: wrote $path\n";
}

1;
