package Presence::Test;

# Test harness for ngx_http_presence_module, in the shape of nginx-tests:
# every t/*.t file starts its own redis-server (or a fake one built on
# IO::Socket) and its own nginx from a config template and talks to them
# over raw sockets; every nginx's error.log is checked for alerts,
# crashes and sanitizer reports when it stops, or when the test is done.
# Core Perl only.  By concern:
#
#   Presence::Test             this file: processes, directories, time,
#                              nginx configs, the error.log check
#   Presence::Test::Nginx      a stock nginx loading the module
#   Presence::Test::HTTP       requests and the checks of the answers
#   Presence::Test::Redis      a real redis-server
#   Presence::Test::FakeRedis  a fake one on IO::Socket
#   Presence::Test::RESP       Redis's protocol, for both
#
#   TEST_NGINX_MODULE   the .so to load (default: build/ngx_http_presence_module.so)
#   TEST_NGINX_BINARY   the nginx to run (default: /usr/sbin/nginx)
#   TEST_NGINX_LEAVE=1  keep the temporary directories (printed with diag)
#   TEST_NGINX_VALGRIND=1  run nginx under valgrind (see Nginx::command)
#   TEST_NGINX_TIME_SCALE=N  multiply the suite's timing by N (see scaled)
#   TEST_REDIS_SERVER, TEST_REDIS_CLI  other redis-server / redis-cli binaries

use strict;
use warnings;

use Carp qw(croak);
use Exporter qw(import);
use File::Spec;
use File::Temp qw(tempdir);
use FindBin;
use IO::Socket::INET;
use POSIX qw(WNOHANG _exit);
use Test::More ();
use Test2::API qw(test2_add_callback_testing_done);
use Time::HiRes qw(time sleep);

use Presence::Test::RESP qw(
    resp_int resp_status resp_err resp_nil resp_bulk resp_array
    resp_parse resp_command fake_std fake_reply
);
use Presence::Test::HTTP qw(parse_response api_error_ok json_ok);
use Presence::Test::Nginx;
use Presence::Test::Redis;
use Presence::Test::FakeRedis;
use Presence::Test::SSE;

our @EXPORT = qw(
    need_module start_redis start_nginx fake_redis test_config conf_error_ok
    wait_for check_log free_port slurp spew scaled conf_time
    fake_std fake_reply resp_int resp_bulk resp_array resp_err resp_status resp_nil
    api_error_ok json_ok
    sse_open sse_wait_all sse_replay
);

our $NGINX  = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
our $MODULE = File::Spec->rel2abs($ENV{TEST_NGINX_MODULE}
    || "$FindBin::Bin/../build/ngx_http_presence_module.so");
our $REDIS_SERVER = $ENV{TEST_REDIS_SERVER} || 'redis-server';
our $REDIS_CLI    = $ENV{TEST_REDIS_CLI}    || 'redis-cli';

$SIG{PIPE} = 'IGNORE';

# an interrupted test still stops what it started (END below)
$SIG{$_} = sub { exit 130 } for qw(INT TERM HUP);

# In a child about to exec: die with the test (SIGTERM when the test
# process goes away, even by SIGKILL), so nothing outlives a killed test.
my %PRCTL = ('x86_64-linux' => 157, 'aarch64-linux' => 167);
sub die_with_parent {
    require Config;
    my ($arch) = $Config::Config{archname} =~ /^(\w+-linux)/;
    my $nr = $PRCTL{ $arch // '' } or return;
    syscall($nr, 1, 15);            # prctl(PR_SET_PDEATHSIG, SIGTERM)
}

my $BASE;
my $SEQ = 0;
my @OWNED;          # every process object started here, stopped in END
our $PARENT = $$;

sub base_dir {
    return $BASE if defined $BASE;
    my $name = $0;
    $name =~ s{.*/}{};
    $name =~ s/\W/_/g;
    $BASE = tempdir("presence-$name-XXXXXX", TMPDIR => 1,
                    CLEANUP => !$ENV{TEST_NGINX_LEAVE});
    Test::More::diag("test directory: $BASE") if $ENV{TEST_NGINX_LEAVE};
    return $BASE;
}

sub new_dir {
    my ($what) = @_;
    my $dir = base_dir() . '/' . $what . ++$SEQ;
    mkdir $dir or croak "mkdir $dir: $!";
    return $dir;
}

# Skip the file when nothing was built, but refuse to skip silently when
# the caller named a module that is not there.
# registered by need_module(): with Test::More loaded, a callback makes a
# script that runs no test (bench/run) end with a failure
sub _check_logs_when_done {
    test2_add_callback_testing_done(sub {
        return unless $$ == $PARENT;
        check_log(grep { $_->isa('Presence::Test::Nginx') && $_->{started} }
                  @OWNED);
    });
}

my $CHECKING;

sub need_module {
    _check_logs_when_done() unless $CHECKING++;
    return if -f $MODULE;
    if ($ENV{TEST_NGINX_MODULE}) {
        Test::More::BAIL_OUT("TEST_NGINX_MODULE=$MODULE does not exist");
    }
    Test::More::plan(skip_all => "module not built ($MODULE); run make");
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1)
        or croak "free_port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# Time scale.  Under valgrind nginx runs many times slower, under ASan a
# few times, and a loaded machine adds its own delays: every duration the
# tests depend on goes through scaled(), so that the timeouts written into
# a config (conf_time), the latency bounds checked against them and the
# deadlines of the waits below all grow together and keep their ratios.
# TEST_NGINX_TIME_SCALE=N overrides the factor (1 by default, 10 under
# TEST_NGINX_VALGRIND, 3 under TEST_NGINX_ASAN).
our $TIME_SCALE = $ENV{TEST_NGINX_TIME_SCALE}
    || ($ENV{TEST_NGINX_VALGRIND} ? 10 : $ENV{TEST_NGINX_ASAN} ? 3 : 1);
croak "TEST_NGINX_TIME_SCALE=$TIME_SCALE: a number >= 1, please"
    unless $TIME_SCALE =~ /^\d+(?:\.\d+)?$/ && $TIME_SCALE >= 1;

# scaled($seconds): $seconds times the time scale
sub scaled { $_[0] * $TIME_SCALE }

# conf_time($seconds): scaled($seconds) as an nginx time, for a config
# ("presence_redis_timeout 300ms" is conf_time(0.3): 300ms, 3000ms...)
sub conf_time { sprintf '%dms', $_[0] * 1000 * $TIME_SCALE + 0.5 }

# wait_for(sub { ...condition... }, $seconds [, $interval]): polls until
# the condition returns true and returns that value, or undef at the
# deadline: $seconds scaled (a deadline is only how long to hope).
sub wait_for {
    my ($cond, $timeout, $interval) = @_;
    $timeout  //= 5;
    $interval //= 0.02;
    my $deadline = time + scaled($timeout);
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return undef if time > $deadline;
        sleep $interval;
    }
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return '';
    local $/;
    my $d = <$fh>;
    return $d // '';
}

sub spew {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or croak "open $path: $!";
    print {$fh} $data;
    close $fh or croak "close $path: $!";
}

# Runs a command, returns (exit code, stdout+stderr).
sub run_capture {
    my (@cmd) = @_;
    my $out = base_dir() . '/capture' . ++$SEQ;
    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $out or _exit(127);
        open STDERR, '>&', \*STDOUT or _exit(127);
        exec { $cmd[0] } @cmd or _exit(127);
    }
    waitpid $pid, 0;
    my $rc = $? >> 8;
    my $text = slurp($out);
    unlink $out;
    return ($rc, $text);
}

sub spawn {
    my ($cmd, $stdout, $stderr) = @_;
    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $stdout or _exit(127);
        open STDERR, '>>', $stderr or _exit(127);
        POSIX::setpgid(0, 0);
        die_with_parent();
        exec { $cmd->[0] } @$cmd or _exit(127);
    }
    return $pid;
}

# waitpid with a deadline ($timeout scaled): the exit status, or undef
# if still running
sub wait_exit {
    my ($pid, $timeout) = @_;
    my $deadline = time + scaled($timeout);
    while (1) {
        my $r = waitpid $pid, WNOHANG;
        return $? if $r == $pid;
        return -1 if $r < 0;
        return undef if time > $deadline;
        sleep 0.01;
    }
}

sub child_pids {
    my ($ppid) = @_;
    my @kids;
    opendir my $d, '/proc' or return;
    for my $p (grep { /^\d+$/ } readdir $d) {
        my $stat = slurp("/proc/$p/stat");
        next unless $stat =~ /\)\s+(\S)\s+(\d+)/;
        push @kids, $p if $2 == $ppid && $1 ne 'Z';
    }
    return sort { $a <=> $b } @kids;
}

END {
    local $?;
    if ($$ == $PARENT) {
        for my $obj (reverse @OWNED) {
            eval { $obj->_hard_stop };
        }
    }
}

###########################################################################
# error.log

# check_log(@nginx): stops every nginx given (gracefully, so that the
# exit path runs) and asserts that none of their logs has an alert, a
# crit, an emerg, a sanitizer report or a worker killed by a signal.
# $ng->allow_in_log(qr/.../) lets a test name a line it caused on purpose
# (a worker it killed).  Each nginx is checked once; every nginx a test started and did not
# check itself is checked when the test is done (done_testing, or the
# last test of a plan), so no test file needs to ask.
sub check_log {
    my (@objs) = @_;
    my $tb = Test::More->builder;
    for my $ng (@objs) {
        next if $ng->{log_checked}++;
        $ng->stop;
        my @bad;
        for my $f ($ng->error_log, $ng->stderr_log) {
            next unless -e $f;
            for my $line (split /\n/, slurp($f)) {
                next if grep { $line =~ $_ } @{ $ng->{log_allow} || [] };
                push @bad, $line
                    if $line =~ /\[(?:alert|crit|emerg)\]|Sanitizer|runtime\ error
                                 |exited\ on\ signal|open\ socket/x;
            }
        }
        $tb->ok(!@bad, "no alert, crit or crash in $ng->{dir}/error.log")
            or $tb->diag(join "\n", @bad[0 .. ($#bad > 20 ? 20 : $#bad)]);
        next unless $ENV{TEST_NGINX_VALGRIND};
        my $vg = join '', map { slurp($_) } glob "$ng->{dir}/valgrind.*.log";
        $tb->ok($vg !~ /\S/, "no valgrind error in $ng->{dir}")
            or $tb->diag(substr $vg, 0, 4000);
    }
}


###########################################################################
# config

my $TEMPLATE = <<'EOF';
load_module %%MODULE%%;
%%USER%%
worker_processes %%WORKERS%%;
pid %%DIR%%/nginx.pid;
error_log %%DIR%%/error.log info;
%%MAIN%%
events {
    worker_connections 1024;
}

http {
    access_log %%DIR%%/access.log;
    client_body_temp_path %%DIR%%/client_body_temp;
    proxy_temp_path %%DIR%%/proxy_temp;
    fastcgi_temp_path %%DIR%%/fastcgi_temp;
    uwsgi_temp_path %%DIR%%/uwsgi_temp;
    scgi_temp_path %%DIR%%/scgi_temp;
    root %%DIR%%/html;
    default_type text/plain;

%%HTTP%%
}
EOF

# The text of a config: the template above around the caller's http{}
# block.  %%PORT%%, %%DIR%% and every key of vars are substituted.
# %%API%% in a test's config: the three locations most tests talk to
my $API = <<'EOF';
    location = /hb     { presence_heartbeat; }
    location = /leave  { presence_leave; }
    location = /online { presence_online; }
EOF

sub nginx_conf {
    my (%p) = @_;
    my %v = (
        MODULE  => $p{module} // $MODULE,
        USER    => $> == 0 ? 'user root;' : '',
        WORKERS => $p{workers} // 1,
        MAIN    => $p{main} // '',
        HTTP    => $p{http},
    );
    my $text = $TEMPLATE;
    $text =~ s/%%(MODULE|USER|WORKERS|MAIN|HTTP)%%/$v{$1}/g;
    my %vars = (API => $API, %{ $p{vars} || {} },
                DIR => $p{dir}, PORT => $p{port} // 0);
    $text =~ s/%%(\w+)%%/exists $vars{$1} ? $vars{$1}
                        : croak "config: no value for %%$1%%"/ge;
    return $text;
}

# test_config($http_text, %opt) -> (exit code, output) of `nginx -t`
# (%opt as for start_nginx: main, vars, workers)
# TEST_NGINX_ASAN="libasan.so libubsan.so" (make test-asan): nginx, and
# nginx alone, runs with the sanitizer runtimes preloaded, as a module
# built with -fsanitize needs in a stock nginx.  Reports go to stderr,
# which check_log reads.  Leaks are valgrind's job here: LeakSanitizer
# would also count what nginx itself leaves to process exit.
sub sanitizer_env {
    return () unless $ENV{TEST_NGINX_ASAN};
    return ('env', "LD_PRELOAD=$ENV{TEST_NGINX_ASAN}",
            'ASAN_OPTIONS=detect_leaks=0:print_summary=1',
            'UBSAN_OPTIONS=print_stacktrace=1:print_summary=1');
}

sub test_config {
    my ($http, %o) = @_;
    my $dir = new_dir('conf');
    my $conf = "$dir/nginx.conf";
    spew($conf, nginx_conf(%o, http => $http, dir => $dir,
                           port => $o{port} // free_port()));
    return run_capture(sanitizer_env(), $NGINX, '-t', '-p', "$dir/",
                       '-c', $conf, '-e', "$dir/error.log");
}

# conf_error_ok($http, $re, $name): nginx -t of the http-level lines $http
# (a server with a heartbeat location added) fails, saying $re
sub conf_error_ok {
    my ($http, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($rc, $out) = test_config("$http\nserver { listen 127.0.0.1:%%PORT%%;"
                                 . " location = /hb { presence_heartbeat; } }");
    Test::More::ok($rc != 0 && $out =~ $re, "nginx -t: $name")
        or Test::More::diag($out);
}

sub start_redis { Presence::Test::Redis->new(@_) }
sub start_nginx { Presence::Test::Nginx->new(@_) }
sub fake_redis  { Presence::Test::FakeRedis->new(@_) }

sub _own { push @OWNED, $_[0]; $_[0] }

# For bench/run, which keeps its servers' files under BENCH_DIR, writes
# its own nginx.conf and also talks to a server that is not nginx.
#
# keep_dirs_in($dir): new_dir (so start_redis and start_nginx) makes its
# directories under $dir from now on, and nothing removes them.
# start_nginx_conf($text, %opt): start_nginx, but with $text as the whole
# nginx.conf in place of the template (%%DIR%% and %%PORT%% substituted).
# http_to($port): the request methods of start_nginx's object (get, post,
# request) for any HTTP server on 127.0.0.1:$port.
sub keep_dirs_in {
    require File::Path;
    File::Path::make_path($_[0]);
    $BASE = $_[0];
}

sub start_nginx_conf {
    my ($text, %o) = @_;
    my $ng = start_nginx('', %o, no_start => 1);
    $ng->{own_port} = 0;    # a port taken meanwhile: no template to redo
    $text =~ s/%%(DIR|PORT)%%/$1 eq 'DIR' ? $ng->dir : $ng->port/ge;
    spew($ng->{conf}, $text);
    $ng->start unless $o{no_start};
    return $ng;
}

sub http_to { Presence::Test::HTTP->new($_[0]) }

# Server-Sent Events (Presence::Test::SSE): sse_open($ng or $port, $path,
# %opt) opens a stream; sse_wait_all([@streams], $cond, $timeout) reads
# them all until $cond->() holds; sse_replay(@events) is what a client
# holds after them.
sub sse_open {
    my ($to, $path, %o) = @_;
    my $port = ref $to ? $to->port : $to;
    return Presence::Test::SSE->open($port, $path, %o);
}
sub sse_wait_all { Presence::Test::SSE::wait_all(@_) }
sub sse_replay   { Presence::Test::SSE::replay(@_) }
