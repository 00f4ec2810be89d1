#!/usr/bin/perl
# The page in a real browser: starts its own redis-server and nginx (the
# freshly built module, presence_ttl 4s, presence_leave_grace 2s; the page
# at / with the live stream api/stream, at /poll/ without one, at /live/
# with the stream, a room of its own and no leave grace), then runs
# t/browser/presence.test.mjs (node's test runner driving Debian's chromium
# through playwright-core) and relays its results as TAP. Stops everything at
# the end, even on failure, and checks nginx logged no [alert]/[crit]/[emerg].
#
#   prove t/browser.t
#
# Environment:
#   TEST_NGINX_MODULE     the .so (default build/ngx_http_presence_module.so)
#   TEST_NGINX_BINARY     nginx (default /usr/sbin/nginx)
#   TEST_BROWSER_SHOTS    keep the screenshots in this folder
#   TEST_BROWSER_KEEP=1   keep the temp dir (logs, config, screenshots)
#   TEST_BROWSER_TTL      presence_ttl in seconds (default 4; the README's
#                         screenshot is taken with the module's default, 10)
#
# Installs what it needs when missing: chromium, node and npm through
# tools/deps, node_modules through `npm ci` (when absent or not at the
# versions package.json pins).

use strict;
use warnings;

use Test::More;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(remove_tree);
use File::Spec;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use JSON::PP qw(decode_json);
use POSIX qw(WNOHANG setpgid);
use Time::HiRes qw(time sleep);

my $ROOT = abs_path(dirname(abs_path(__FILE__)) . '/..');
my $MODULE = $ENV{TEST_NGINX_MODULE} || "$ROOT/build/ngx_http_presence_module.so";
my $NGINX = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $CHROMIUM = '/usr/bin/chromium';
my $TTL = $ENV{TEST_BROWSER_TTL} || 4;   # presence_ttl, seconds
my $GRACE = 2;                           # presence_leave_grace, seconds
my $NODE_LIMIT = 300;   # seconds the whole browser run may take

plan skip_all => 'the browser test does not run nginx under valgrind'
    if $ENV{TEST_NGINX_VALGRIND};

unless (-f $MODULE) {
    fail("module built at $MODULE");
    diag('build it first: make');
    done_testing();
    exit;
}

# ---- tools: chromium, node, npm, node_modules ----

sub have { my ($cmd) = @_; return !system("command -v $cmd >/dev/null 2>&1") }

if (!-x $CHROMIUM || !have('node') || !have('npm')) {
    system("$ROOT/tools/deps", 'browser') == 0
        or BAIL_OUT('tools/deps browser failed: cannot install chromium/node/npm');
}

sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return undef;
    local $/;
    return scalar <$fh>;
}

# node_modules matches package.json when every pinned package is there at
# exactly the pinned version
sub node_modules_current {
    my $pkg = decode_json(slurp("$ROOT/package.json"));
    my %want = (%{ $pkg->{dependencies} || {} }, %{ $pkg->{devDependencies} || {} });
    for my $name (sort keys %want) {
        my $json = slurp("$ROOT/node_modules/$name/package.json") // return 0;
        my $have = eval { decode_json($json)->{version} } // return 0;
        return 0 if $have ne $want{$name};
    }
    return 1;
}

unless (node_modules_current()) {
    note('node_modules missing or stale: npm ci');
    system('sh', '-c', 'cd "$1" && npm ci --include=dev --no-audit --no-fund >&2', 'sh', $ROOT) == 0
        or BAIL_OUT('npm ci failed');
}
ok(node_modules_current(), 'node_modules at the versions package.json pins');

# ---- a temp dir, two free ports ----

my $TMP = tempdir('presence-browser-XXXXXX', TMPDIR => 1, CLEANUP => 0);
my $SHOTS = $ENV{TEST_BROWSER_SHOTS} || "$TMP/shots";

my ($NGINX_PORT, $REDIS_PORT) = do {
    my @s = map {
        IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0,
            Proto => 'tcp', ReuseAddr => 1) or die "no free port: $!"
    } 1 .. 2;
    map { $_->sockport } @s;
};

my ($nginx_pid, $node_pid);
my $stopped = 0;

sub wait_port {
    my ($port, $seconds) = @_;
    my $deadline = time + $seconds;
    while (time < $deadline) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
            Proto => 'tcp', Timeout => 1);
        return 1 if $s;
        sleep 0.05;
    }
    return 0;
}

sub wait_exit {
    my ($pid, $seconds) = @_;
    my $deadline = time + $seconds;
    while (time < $deadline) {
        return 1 if waitpid($pid, WNOHANG) != 0;
        sleep 0.05;
    }
    return 0;
}

sub stop_all {
    return if $stopped++;
    if ($node_pid) {
        kill 'TERM', -$node_pid;
        wait_exit($node_pid, 5) or kill 'KILL', -$node_pid;
    }
    if ($nginx_pid) {
        kill 'TERM', $nginx_pid;
        wait_exit($nginx_pid, 10) or do { kill 'KILL', $nginx_pid; waitpid($nginx_pid, 0) };
    }
    system("$TMP/redis-ctl", 'stop') if -x "$TMP/redis-ctl";
}

END {
    local $?;
    stop_all() if $TMP;
}
$SIG{INT} = $SIG{TERM} = sub { stop_all(); exit 1 };

# ---- redis-server, behind a small script the browser test calls too ----

sub shq { my ($s) = @_; $s =~ s/'/'\\''/g; return "'$s'" }

{
    my $redis = join ' ', map { shq($_) } 'redis-server',
        '--port', $REDIS_PORT, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        '--dir', $TMP, '--daemonize', 'yes', '--pidfile', "$TMP/redis.pid",
        '--logfile', "$TMP/redis.log";
    my $pidfile = shq("$TMP/redis.pid");
    open my $fh, '>', "$TMP/redis-ctl" or die "$TMP/redis-ctl: $!";
    print $fh <<"SH";
#!/bin/sh
# redis-ctl start|stop: this test's redis-server on port $REDIS_PORT.
# Both wait, 10 s at most, for Redis to answer or to be gone.
case \$1 in
start)
    $redis || exit 1
    i=0
    until redis-cli -h 127.0.0.1 -p $REDIS_PORT ping >/dev/null 2>&1; do
        i=\$((i + 1)); [ \$i -ge 200 ] && { echo "redis-ctl: redis did not start" >&2; exit 1; }
        sleep 0.05
    done ;;
stop)
    [ -f $pidfile ] || exit 0
    pid=\$(cat $pidfile)
    kill "\$pid" 2>/dev/null || exit 0
    i=0
    while kill -0 "\$pid" 2>/dev/null; do
        i=\$((i + 1)); [ \$i -ge 200 ] && { kill -9 "\$pid"; break; }
        sleep 0.05
    done
    rm -f $pidfile ;;
*)
    echo "usage: \$0 start|stop" >&2; exit 2 ;;
esac
SH
    close $fh;
    chmod 0755, "$TMP/redis-ctl";
}

system("$TMP/redis-ctl", 'start') == 0 or BAIL_OUT("redis-server did not start; see $TMP/redis.log");

# ---- nginx ----

# nginx loads a copy: a rebuild that rewrites the .so in place while the
# test runs must not change the code under a running worker
{
    open my $in, '<:raw', $MODULE or die "$MODULE: $!";
    open my $out, '>:raw', "$TMP/module.so" or die "$TMP/module.so: $!";
    local $/;
    print $out scalar <$in>;
    close $out or die "$TMP/module.so: $!";
}

my $user = $> == 0 ? 'user root;' : '';
my $conf = <<"CONF";
load_module $TMP/module.so;
$user
worker_processes 1;
daemon off;
master_process on;
error_log $TMP/error.log info;
pid $TMP/nginx.pid;

events {
    worker_connections 256;
}

http {
    types {
        text/html               html;
        text/css                css;
        application/javascript  js;
        image/png               png;
    }
    default_type application/octet-stream;
    charset utf-8;
    charset_types text/css application/javascript;

    log_format timed '\$msec \$request_time \$connection \$status "\$request"';
    access_log $TMP/access.log timed;
    client_body_temp_path $TMP/client_body;
    proxy_temp_path $TMP/proxy;
    fastcgi_temp_path $TMP/fastcgi;
    uwsgi_temp_path $TMP/uwsgi;
    scgi_temp_path $TMP/scgi;

    presence_redis 127.0.0.1:$REDIS_PORT;
    presence_redis_timeout 500ms;
    presence_ttl ${TTL}s;

    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name localhost;

        root $ROOT/html;
        index index.html;

        location = /vendor/jquery.min.js {
            alias /usr/share/javascript/jquery/jquery.min.js;
        }

        location = /api/heartbeat { presence_heartbeat; }
        # as nginx.conf.example: a reload is no leave and join
        location = /api/leave     { presence_leave_grace ${GRACE}s; presence_leave; }
        location = /api/online    { presence_online; }
        location = /api/stream    { presence_stream; }

        # /poll/: the page and the same room where there is no stream
        # location (api/stream is a file that is not there: 404), so the
        # page polls
        location /poll/ { alias $ROOT/html/; }
        location = /poll/vendor/jquery.min.js {
            alias /usr/share/javascript/jquery/jquery.min.js;
        }
        location = /poll/api/heartbeat { presence_heartbeat; }
        location = /poll/api/leave     { presence_leave_grace ${GRACE}s; presence_leave; }
        location = /poll/api/online    { presence_online; }

        # /live/: the page with a room of its own and no leave grace, so
        # that a closed tab's leave is a leave event at once
        location /live/ { alias $ROOT/html/; }
        location = /live/vendor/jquery.min.js {
            alias /usr/share/javascript/jquery/jquery.min.js;
        }
        location = /live/api/heartbeat { presence_room live; presence_heartbeat; }
        location = /live/api/leave     { presence_room live; presence_leave; }
        location = /live/api/online    { presence_room live; presence_online; }
        location = /live/api/stream    { presence_room live; presence_stream; }
    }
}
CONF

{
    open my $fh, '>', "$TMP/nginx.conf" or die "$TMP/nginx.conf: $!";
    print $fh $conf;
    close $fh;
}

$nginx_pid = fork // die "fork: $!";
if ($nginx_pid == 0) {
    open STDOUT, '>>', "$TMP/nginx.out";
    open STDERR, '>>', "$TMP/nginx.out";
    exec $NGINX, '-p', "$TMP/", '-c', "$TMP/nginx.conf" or POSIX::_exit(127);
}
unless (wait_port($NGINX_PORT, 10)) {
    diag(slurp("$TMP/nginx.out") // '', slurp("$TMP/error.log") // '');
    BAIL_OUT("nginx did not start; see $TMP");
}
pass("nginx and redis-server up (nginx :$NGINX_PORT, redis :$REDIS_PORT)");

# ---- the browser test, its results relayed one by one ----

my $tb = Test::More->builder;
my @node = ('node', '--test-reporter=tap', "$ROOT/t/browser/presence.test.mjs");
my %env = (
    PRESENCE_BASE_URL    => "http://127.0.0.1:$NGINX_PORT/",
    PRESENCE_TTL         => $TTL,
    PRESENCE_GRACE       => $GRACE,
    PRESENCE_REDIS_STOP  => shq("$TMP/redis-ctl") . ' stop',
    PRESENCE_REDIS_START => shq("$TMP/redis-ctl") . ' start',
    PRESENCE_SHOTS       => $SHOTS,
    CHROMIUM             => $CHROMIUM,
);

my $started = time;
$node_pid = open(my $tap, '-|') // die "fork: $!";
if ($node_pid == 0) {
    setpgid(0, 0);          # its own group, so a hung chromium goes with it
    @ENV{ keys %env } = values %env;
    chdir $ROOT;
    open STDERR, '>&', \*STDOUT;
    exec @node or POSIX::_exit(127);
}

# node's TAP: "ok N - name" at the top level, each followed by an indented
# YAML block ("  ---" ... "  ..."), shown only for failures
my ($results, $failed, $in_block, $keep_block, @block) = (0, 0, 0, 0);
my $flush = sub { diag(join '', @block) if @block; @block = () };
eval {
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm $NODE_LIMIT;
    while (my $line = <$tap>) {
        if ($line =~ /^(not )?ok \d+ - (.*?)(?: # (SKIP|TODO)\b\s*(.*))?$/) {
            my ($not, $name, $directive, $why) = ($1, $2, $3, $4);
            $flush->();
            $name =~ s/\\#/#/g;
            $results++;
            if ($directive && $directive eq 'SKIP') {
                $tb->skip($why || $name);
            } else {
                ok(!$not, "browser: $name");
                $failed++ if $not;
            }
            $keep_block = $not ? 1 : 0;
        } elsif ($line =~ /^  ---$/) {
            $in_block = 1;
        } elsif ($in_block) {
            $in_block = 0 if $line =~ /^  \.\.\.$/;
            push @block, $line if $keep_block && $in_block;
        } elsif ($line =~ /^# (Subtest|tests|suites|pass|fail|cancelled|skipped|todo|duration_ms)\b/
                 || $line =~ /^(TAP version|1\.\.)/) {
            # the runner's own bookkeeping: Test::More keeps count
        } elsif ($line =~ /^#/) {
            note($line =~ s/^#\s?//r);
        } else {
            note($line);
        }
    }
    alarm 0;
    1;
} or do {
    fail("browser test finished within $NODE_LIMIT s");
    kill 'TERM', -$node_pid;
};
$flush->();
close $tap;
my $status = $?;
$node_pid = undef;
ok($results > 0, 'the browser test reported results');
# a crash outside any test shows only here
ok($status == 0 || $failed, sprintf('node test runner finished (%.1f s)', time - $started))
    or diag("the browser test's exit status was $status");

# ---- stop, then read nginx's log ----

stop_all();
my $log = slurp("$TMP/error.log") // '';
my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $log;
ok(!@bad, 'no [alert], [crit] or [emerg] in the nginx error.log')
    or diag(join "\n", @bad);

my $passed = $tb->is_passing;
if ($ENV{TEST_BROWSER_KEEP} || !$passed) {
    diag("kept $TMP (nginx.conf, error.log, access.log, redis.log, shots/)");
} else {
    note("screenshots in $SHOTS") if $ENV{TEST_BROWSER_SHOTS};
    remove_tree($TMP);
}

done_testing();
