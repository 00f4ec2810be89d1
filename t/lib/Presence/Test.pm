package Presence::Test;

# Test harness for ngx_http_presence_module, in the shape of nginx-tests:
# every t/*.t file starts its own redis-server (or a fake one built on
# IO::Socket) and its own nginx from a config template, talks to them over
# raw sockets, and ends by checking error.log.  Core Perl only.
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
use Digest::SHA qw(sha1_hex);
use Exporter qw(import);
use File::Spec;
use File::Temp qw(tempdir);
use FindBin;
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use JSON::PP;
use POSIX qw(WNOHANG _exit);
use Socket qw(SOCK_STREAM);
use Test::More ();
use Time::HiRes qw(time sleep);

our @EXPORT = qw(
    need_module start_redis start_nginx fake_redis test_config
    wait_for check_log free_port slurp spew scaled conf_time
    fake_std fake_reply resp_int resp_bulk resp_array resp_err resp_status resp_nil
    api_error_ok json_ok
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

my $JSON = JSON::PP->new->utf8->allow_nonref;
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
sub need_module {
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
# RESP

sub resp_int    { ":$_[0]\r\n" }
sub resp_status { "+$_[0]\r\n" }
sub resp_err    { "-$_[0]\r\n" }
sub resp_nil    { "\$-1\r\n" }
sub resp_bulk   { defined $_[0] ? '$' . length($_[0]) . "\r\n$_[0]\r\n" : resp_nil() }
sub resp_array  { '*' . scalar(@_) . "\r\n" . join('', @_) }

# resp_parse(\$buf, $pos) -> ($value, $next_pos), or () while incomplete.
# Errors come back as Presence::Test::RespError objects.
sub resp_parse {
    my ($buf, $pos) = @_;
    $pos //= 0;
    my $eol = index($$buf, "\r\n", $pos);
    return if $eol < 0;
    my $type = substr($$buf, $pos, 1);
    my $line = substr($$buf, $pos + 1, $eol - $pos - 1);
    my $next = $eol + 2;

    return ($line, $next) if $type eq '+';
    return (Presence::Test::RespError->new($line), $next) if $type eq '-';
    return (0 + $line, $next) if $type eq ':';

    if ($type eq '$') {
        return (undef, $next) if $line < 0;
        return if length($$buf) < $next + $line + 2;
        return (substr($$buf, $next, $line), $next + $line + 2);
    }

    if ($type eq '*') {
        return (undef, $next) if $line < 0;
        my @a;
        for (1 .. $line) {
            my @r = resp_parse($buf, $next);
            return unless @r;
            push @a, $r[0];
            $next = $r[1];
        }
        return (\@a, $next);
    }

    die "resp_parse: unexpected type byte " . sprintf('0x%02x', ord $type)
        . "\n";
}

# inside a fake's handler: the reply the test set with $fake->set_reply
sub fake_reply {
    my ($state, $name) = @_;
    my $f = "$state->{dir}/reply.$name";
    return undef unless -e $f;
    return slurp($f);
}

sub resp_command {
    my @args = @_;
    return '*' . scalar(@args) . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
}

# Answers the connection handshake the module sends (AUTH, SELECT,
# SCRIPT LOAD, PING, CLIENT ...) like a real Redis; undef for anything
# else.  For handlers of fake_redis: fake_std($argv, $state) // ...
sub fake_std {
    my ($argv, $state) = @_;
    my $cmd = uc($argv->[0] // '');
    # a listing is MULTI, EVALSHA, ZREVRANGE, EXEC: queued like Redis does,
    # and the reply to EXEC is what the test set for it
    if ($state) {
        if ($cmd eq 'MULTI') {
            $state->{multi} = 1;
            return resp_status('OK');
        }
        if ($state->{multi}) {
            return resp_status('QUEUED') if $cmd ne 'EXEC';
            $state->{multi} = 0;
        }
    }
    return resp_status('OK') if $cmd eq 'AUTH' || $cmd eq 'SELECT'
                                || $cmd eq 'CLIENT' || $cmd eq 'HELLO';
    return resp_status('PONG') if $cmd eq 'PING';
    if ($cmd eq 'SCRIPT' && uc($argv->[1] // '') eq 'LOAD') {
        my $sha = sha1_hex($argv->[2] // '');
        $state->{scripts}{$sha} = $argv->[2] if $state;
        return resp_bulk($sha);
    }
    return undef;
}

###########################################################################
# HTTP responses

sub parse_response {
    my ($buf, $pos, $head) = @_;
    my $end = index($$buf, "\r\n\r\n", $pos);
    return if $end < 0;
    my @lines = split /\r\n/, substr($$buf, $pos, $end - $pos);
    my $status_line = shift @lines;
    my ($status, $reason) = $status_line =~ m{^HTTP/\d\.\d (\d{3})(?: (.*))?$}
        or return;

    my (%h, @list);
    for (@lines) {
        my ($k, $v) = /^([^:]+):[ \t]*(.*?)[ \t]*$/ or next;
        push @list, [$k, $v];
        push @{ $h{lc $k} }, $v;
    }
    my %headers = map { $_ => join(', ', @{ $h{$_} }) } keys %h;

    my $body = '';
    my $next = $end + 4;
    if ($head || $status =~ /^(?:1..|204|304)$/) {
        # no body
    } elsif (($headers{'transfer-encoding'} // '') =~ /chunked/i) {
        while (1) {
            my $eol = index($$buf, "\r\n", $next);
            return if $eol < 0;
            my $size = hex substr($$buf, $next, $eol - $next);
            $next = $eol + 2;
            if ($size == 0) {
                my $tend = index($$buf, "\r\n", $next);
                return if $tend < 0;
                $next = $tend + 2;
                last;
            }
            return if length($$buf) < $next + $size + 2;
            $body .= substr($$buf, $next, $size);
            $next += $size + 2;
        }
    } elsif (defined $headers{'content-length'}) {
        my $len = $headers{'content-length'};
        return if length($$buf) < $next + $len;
        $body = substr($$buf, $next, $len);
        $next += $len;
    } else {
        $body = substr($$buf, $next);
        $next = length $$buf;
    }

    my $r = {
        status => 0 + $status, reason => $reason, headers => \%headers,
        header_list => \@list, body => $body,
        raw => substr($$buf, $pos, $next - $pos),
    };
    if (($headers{'content-type'} // '') =~ m{json}i && length $body) {
        $r->{json} = eval { $JSON->decode($body) };
    }
    return ($r, $next);
}

# is the response the module's JSON error with this status and code?
sub api_error_ok {
    my ($r, $status, $code, $name) = @_;
    $name //= "$status $code";
    my $tb = Test::More->builder;
    my @why;
    if (!$r) {
        push @why, 'no response';
    } else {
        push @why, "status $r->{status}" if $r->{status} != $status;
        my $j = $r->{json};
        if (ref $j ne 'HASH') {
            push @why, "body is not a JSON object: "
                       . substr($r->{body} // '', 0, 200);
        } else {
            push @why, "error is " . ($j->{error} // 'undef')
                if ($j->{error} // '') ne $code;
            push @why, 'message missing'
                unless defined $j->{message} && !ref $j->{message}
                       && length $j->{message};
        }
        my $ct = $r->{headers}{'content-type'} // '';
        push @why, "content-type '$ct'"
            unless $ct =~ m{^application/json;\s*charset=utf-8$}i;
        push @why, 'no Cache-Control: no-store'
            unless ($r->{headers}{'cache-control'} // '') =~ /\bno-store\b/;
    }
    my $ok = $tb->ok(!@why, $name);
    $tb->diag(join("\n", @why) . "\n" . ($r ? $r->{raw} : '')) unless $ok;
    return $ok;
}

# a 200 JSON answer of the API?
sub json_ok {
    my ($r, $name) = @_;
    my $tb = Test::More->builder;
    my @why;
    if (!$r) {
        push @why, 'no response';
    } else {
        push @why, "status $r->{status}" if $r->{status} != 200;
        push @why, 'body is not JSON' unless defined $r->{json};
        my $ct = $r->{headers}{'content-type'} // '';
        push @why, "content-type '$ct'"
            unless $ct =~ m{^application/json;\s*charset=utf-8$}i;
        push @why, 'no Cache-Control: no-store'
            unless ($r->{headers}{'cache-control'} // '') =~ /\bno-store\b/;
    }
    my $ok = $tb->ok(!@why, $name);
    $tb->diag(join("\n", @why) . "\n" . ($r ? $r->{raw} : '')) unless $ok;
    return $ok;
}

###########################################################################
# error.log

# check_log(@objects): stops every nginx given (gracefully, so that the
# exit path runs) and asserts that none of their logs has an alert, a
# crit, an emerg, a sanitizer report or a worker killed by a signal.
sub check_log {
    my (@objs) = @_;
    my $tb = Test::More->builder;
    for my $ng (@objs) {
        $ng->stop;
        my @bad;
        for my $f ($ng->error_log, $ng->stderr_log) {
            next unless -e $f;
            for my $line (split /\n/, slurp($f)) {
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
    my %vars = (%{ $p{vars} || {} }, DIR => $p{dir}, PORT => $p{port} // 0);
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

sub start_redis { Presence::Test::Redis->new(@_) }
sub start_nginx { Presence::Test::Nginx->new(@_) }
sub fake_redis  { Presence::Test::FakeRedis->new(@_) }

sub _own { push @OWNED, $_[0]; $_[0] }

###########################################################################

package Presence::Test::RespError;

use overload '""' => sub { "ERR(" . $_[0]{message} . ")" }, fallback => 1;

sub new { bless { message => $_[1] }, $_[0] }
sub message { $_[0]{message} }

###########################################################################

package Presence::Test::Redis;

# A real redis-server: its own port (or unix socket) and directory, no
# persistence.

use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time sleep);

# start_redis(unix => 1, password => 'pw', port => N, args => [...])
sub new {
    my ($class, %o) = @_;
    my $self = bless {
        dir      => $o{dir} // Presence::Test::new_dir('redis'),
        unix     => $o{unix},
        password => $o{password},
        args     => $o{args} || [],
    }, $class;
    $self->{port} = $o{port} // ($o{unix} ? 0 : Presence::Test::free_port());
    $self->{socket} = "$self->{dir}/redis.sock" if $o{unix};
    Presence::Test::_own($self);
    $self->start;
    return $self;
}

sub port   { $_[0]{port} }
sub socket { $_[0]{socket} }
sub dir    { $_[0]{dir} }
sub pid    { $_[0]{pid} }

# the value for presence_redis
sub addr {
    my ($self) = @_;
    return $self->{unix} ? "unix:$self->{socket}" : "127.0.0.1:$self->{port}";
}

sub start {
    my ($self) = @_;
    croak "redis already running" if $self->{pid};
    my @cmd = ($REDIS_SERVER, '--port', $self->{port}, '--bind', '127.0.0.1',
               '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
               '--daemonize', 'no', '--logfile', "$self->{dir}/redis.log");
    push @cmd, '--unixsocket', $self->{socket}, '--unixsocketperm', '700'
        if $self->{unix};
    push @cmd, '--requirepass', $self->{password} if defined $self->{password};
    push @cmd, @{ $self->{args} };
    unlink $self->{socket} if $self->{unix};
    my $log = "$self->{dir}/redis.out";
    $self->{pid} = Presence::Test::spawn(\@cmd, $log, $log);

    my $up = Presence::Test::wait_for(sub {
        if (defined Presence::Test::wait_exit($self->{pid}, 0)) {
            delete $self->{pid};
            croak "redis-server exited:\n"
                . Presence::Test::slurp($log)
                . Presence::Test::slurp("$self->{dir}/redis.log");
        }
        my $pong = eval { $self->cmd('PING') };
        return defined $pong && $pong eq 'PONG';
    }, 10);
    croak "redis-server did not start:\n" . Presence::Test::slurp($log)
        unless $up;
    return $self;
}

sub _connect {
    my ($self) = @_;
    my $s = $self->{unix}
        ? IO::Socket::UNIX->new(Peer => $self->{socket}, Type => SOCK_STREAM)
        : IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $self->{port}, Proto => 'tcp',
                                Timeout => 2);
    croak "connect to redis: $!" unless $s;
    return $s;
}

# $r->cmd([{db => N, auth => 0},] @args): one command over a fresh
# connection (AUTH with the password unless auth => 0, SELECT db if given);
# returns the parsed reply (RespError object for an error reply).
sub cmd {
    my $self = shift;
    my $o = ref $_[0] eq 'HASH' ? shift : {};
    my @pre;
    push @pre, ['AUTH', $self->{password}]
        if defined $self->{password} && ($o->{auth} // 1);
    push @pre, ['SELECT', $o->{db}] if $o->{db};
    my @replies = $self->pipeline(@pre, [@_]);
    for my $i (0 .. $#pre) {
        croak "redis @{$pre[$i]}: $replies[$i]"
            if ref $replies[$i] eq 'Presence::Test::RespError';
    }
    return $replies[-1];
}

# $r->pipeline([@cmd1], [@cmd2], ...) -> replies
sub pipeline {
    my ($self, @cmds) = @_;
    my $s = $self->_connect;
    my $out = join '', map { Presence::Test::resp_command(@$_) } @cmds;
    while (length $out) {
        my $n = syswrite $s, $out;
        croak "write to redis: $!" unless defined $n;
        substr($out, 0, $n, '');
    }
    my ($buf, $pos, @replies) = ('', 0);
    my $deadline = time + Presence::Test::scaled(5);
    my $sel = IO::Select->new($s);
    while (@replies < @cmds) {
        my @r = Presence::Test::resp_parse(\$buf, $pos);
        if (@r) {
            push @replies, $r[0];
            $pos = $r[1];
            next;
        }
        my $left = $deadline - time;
        croak "redis reply timed out" if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $buf, 65536, length $buf;
        croak "redis closed the connection" unless $n;
    }
    close $s;
    return @replies;
}

# redis-cli with this server's address; returns its output
sub cli {
    my ($self, @args) = @_;
    my @cmd = ($REDIS_CLI,
               $self->{unix} ? ('-s', $self->{socket}) : ('-p', $self->{port}));
    push @cmd, '-a', $self->{password}, '--no-auth-warning'
        if defined $self->{password};
    my ($rc, $out) = Presence::Test::run_capture(@cmd, @args);
    chomp $out;
    return $out;
}

# Redis's clock, in milliseconds
sub time_ms {
    my ($self) = @_;
    my $t = $self->cmd('TIME');
    return $t->[0] * 1000 + int($t->[1] / 1000);
}

sub key_list {
    my ($self, $db) = @_;
    return sort @{ $self->cmd({ db => $db // 0 }, 'KEYS', '*') };
}

# Everything in every database, scores included: compare two snapshots
# to prove that a request changed nothing.
sub snapshot {
    my ($self) = @_;
    my %snap;
    my $info = $self->cmd('INFO', 'keyspace');
    for my $db ($info =~ /^db(\d+):/mg) {
        for my $k ($self->key_list($db)) {
            my $type = $self->cmd({ db => $db }, 'TYPE', $k);
            my $v;
            if ($type eq 'zset') {
                $v = $self->cmd({ db => $db }, 'ZRANGE', $k, 0, -1,
                                'WITHSCORES');
            } elsif ($type eq 'string') {
                $v = $self->cmd({ db => $db }, 'GET', $k);
            } else {
                $v = $type;
            }
            $snap{"$db/$k"} = [$type, $v];
        }
    }
    return \%snap;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'CONT', $pid;
    kill 'TERM', $pid;
    return if defined Presence::Test::wait_exit($pid, 5);
    kill 'KILL', $pid;
    Presence::Test::wait_exit($pid, 5);
}

# CONFIG SET requirepass, and use the new password from now on
sub set_password {
    my ($self, $pw) = @_;
    $self->cmd('CONFIG', 'SET', 'requirepass', $pw);
    $self->{password} = length $pw ? $pw : undef;
}

# SIGSTOP: the process holds its sockets open and answers nothing
sub kill_stop { kill 'STOP', $_[0]{pid} }
sub cont      { kill 'CONT', $_[0]{pid} }

sub restart {
    my ($self) = @_;
    $self->stop;
    $self->start;
}

sub _hard_stop { $_[0]->stop }

sub DESTROY {
    my ($self) = @_;
    local ($?, $@);
    eval { $self->stop } if $$ == $PARENT;
}


###########################################################################

package Presence::Test::FakeRedis;

# A fake Redis on 127.0.0.1:<port> in a forked child.  It parses RESP
# commands and answers each with what the handler returns:
#
#   fake_redis(sub { my ($argv, $state) = @_; ... }, %opt)
#   fake_redis(handler => sub { ... }, %opt)
#       bytes   - sent as the reply
#       undef   - no reply, ever
#       \'close' - the connection is closed
#       CODE    - a deferred reply: called every 20 ms until it returns
#                 bytes (or \'close'); later replies on the connection wait
#                 behind it, as in Redis
#       ARRAY   - the reply in pieces, 30 ms apart
#   fake_redis(mode => 'silent')   never answers anything
#   fake_redis(mode => 'close')    closes each connection on accept
#   fake_redis(mode => 'error')    -ERR to every command
#   fake_redis(mode => 'stall')    handshake answered, nothing else
#
# $state is per fake: {conn => connection number, n => command number,
# scripts => {sha => text}, dir => the fake's directory}.  Every command
# received is logged; read them with $fake->commands.  The test process
# steers a running fake through files in dir: $fake->set_reply(NAME,
# bytes) writes dir/reply.NAME, which a handler reads with
# fake_reply($state, NAME).

use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use POSIX qw(_exit);
use Time::HiRes qw(time sleep);

sub new {
    my $class = shift;
    unshift @_, 'handler' if ref $_[0] eq 'CODE';   # fake_redis(sub {...})
    my %o = @_;
    my $dir = Presence::Test::new_dir('fake');
    my $mode = $o{mode} // 'handler';
    my $handler = $o{handler};
    if ($mode eq 'silent') {
        $handler = sub { undef };
    } elsif ($mode eq 'error') {
        $handler = sub { Presence::Test::resp_err('ERR fake error') };
    } elsif ($mode eq 'stall') {
        $handler = sub { Presence::Test::fake_std(@_) };
    } elsif ($mode ne 'close') {
        croak "fake_redis: handler or mode needed" unless $handler;
    }

    my $listen = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $o{port} // 0,
        Proto => 'tcp', Listen => 128, ReuseAddr => 1)
        or croak "fake_redis listen: $!";

    my $self = bless {
        dir => $dir, port => $listen->sockport, log => "$dir/commands.log",
    }, $class;
    open my $touch, '>', $self->{log} or croak "$self->{log}: $!";
    close $touch;

    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        $SIG{TERM} = sub { _exit(0) };
        $SIG{$_} = 'DEFAULT' for qw(INT HUP);
        $SIG{PIPE} = 'IGNORE';
        Presence::Test::die_with_parent();
        eval { _serve($listen, $self->{log}, $mode, $handler, $dir) };
        if ($@) {
            if (open my $fh, '>>', "$dir/error") { print {$fh} $@ }
        }
        _exit(0);
    }
    close $listen;
    $self->{pid} = $pid;
    Presence::Test::_own($self);
    return $self;
}

sub _serve {
    my ($listen, $logfile, $mode, $handler, $dir) = @_;
    open my $log, '>>', $logfile or die "$logfile: $!";
    $log->autoflush(1);
    my $sel = IO::Select->new($listen);
    my %conn;
    my $state = { conn => 0, n => 0, scripts => {}, dir => $dir };

    my $drop = sub {
        my ($c) = @_;
        $sel->remove($c->{sock});
        delete $conn{ fileno $c->{sock} };
        close $c->{sock};
    };

    while (1) {
        for my $fh ($sel->can_read(0.02)) {
            if ($fh == $listen) {
                my $s = $listen->accept or next;
                print {$log} "+\n";
                if ($mode eq 'close') {
                    close $s;
                    next;
                }
                $sel->add($s);
                $conn{ fileno $s } = { sock => $s, in => '', q => [],
                                       id => ++$state->{conn} };
                next;
            }
            my $c = $conn{ fileno $fh } or next;
            my $n = sysread $fh, $c->{in}, 65536, length $c->{in};
            if (!$n) {
                $drop->($c);
                next;
            }
            while (1) {
                my @r = eval { Presence::Test::resp_parse(\$c->{in}, 0) };
                if ($@) {
                    print {$log} "!protocol error\n";
                    $drop->($c);
                    last;
                }
                last unless @r;
                substr($c->{in}, 0, $r[1], '');
                my @argv = ref $r[0] eq 'ARRAY' ? @{ $r[0] } : ($r[0]);
                print {$log} join(' ', map { unpack 'H*', $_ // '' } @argv),
                             "\n";
                $state->{n}++;
                local $state->{conn} = $c->{id};
                push @{ $c->{q} }, scalar $handler->(\@argv, $state);
            }
        }

        for my $c (values %conn) {
            while (@{ $c->{q} }) {
                my $x = $c->{q}[0];
                $x = $x->() if ref $x eq 'CODE';
                last if ref $c->{q}[0] eq 'CODE' && !defined $x;
                shift @{ $c->{q} };
                next unless defined $x;
                if (ref $x eq 'SCALAR') {
                    $drop->($c);
                    last;
                }
                my @pieces = ref $x eq 'ARRAY' ? @$x : ($x);
                for my $i (0 .. $#pieces) {
                    sleep 0.03 if $i;
                    my $out = $pieces[$i];
                    while (length $out) {
                        my $n = syswrite $c->{sock}, $out;
                        last unless defined $n;
                        substr($out, 0, $n, '');
                    }
                }
            }
        }
    }
}

sub port { $_[0]{port} }
sub addr { "127.0.0.1:$_[0]{port}" }
sub dir  { $_[0]{dir} }

# every command received so far, as array refs of arguments
sub commands {
    my ($self) = @_;
    return map { [map { pack 'H*', $_ } split / /, $_, -1] }
           grep { !/^[+!]/ } split /\n/, Presence::Test::slurp($self->{log});
}

# what fake_reply($state, $name) returns from now on (undef: nothing)
sub set_reply {
    my ($self, $name, $bytes) = @_;
    my $f = "$self->{dir}/reply.$name";
    if (!defined $bytes) {
        unlink $f;
        return;
    }
    Presence::Test::spew("$f.tmp", $bytes);
    rename "$f.tmp", $f or croak "rename $f: $!";
}

# a file flag the handler can test: $fake->touch('release'), -e "$dir/release"
sub touch {
    my ($self, $name) = @_;
    Presence::Test::spew("$self->{dir}/$name", '');
}

# how many connections were accepted so far
sub connections {
    my ($self) = @_;
    return scalar(() = Presence::Test::slurp($self->{log}) =~ /^\+$/mg);
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    return if defined Presence::Test::wait_exit($pid, 5);
    kill 'KILL', $pid;
    Presence::Test::wait_exit($pid, 5);
}

sub _hard_stop { $_[0]->stop }

sub DESTROY {
    my ($self) = @_;
    local ($?, $@);
    eval { $self->stop } if $$ == $PARENT;
}

###########################################################################

package Presence::Test::Nginx;

use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);

# start_nginx($http_block, vars => {NAME => value}, workers => N,
#             main => 'main-context text', files => {path => content},
#             no_start => 1)
sub new {
    my ($class, $http, %o) = @_;
    my $dir = Presence::Test::new_dir('nginx');
    my $self = bless {
        dir => $dir, port => $o{port} // Presence::Test::free_port(),
        workers => $o{workers} // 1, own_port => !defined $o{port},
    }, $class;
    # valgrind runs one nginx process, with no workers to count or reload
    if ($ENV{TEST_NGINX_VALGRIND} && $self->{workers} > 1) {
        my $tb = Test::More->builder;
        croak "several workers are not for valgrind" if $tb->current_test;
        $tb->skip_all('needs several worker processes: not under valgrind');
    }
    mkdir "$dir/html";
    for my $f (keys %{ $o{files} || {} }) {
        Presence::Test::spew("$dir/html/$f", $o{files}{$f});
    }
    $self->{conf} = "$dir/nginx.conf";
    $self->{conf_args} = { %o, http => $http, dir => $dir,
                           workers => $self->{workers} };
    $self->_write_conf;
    Presence::Test::_own($self);
    $self->start unless $o{no_start};
    return $self;
}

sub port       { $_[0]{port} }
sub dir        { $_[0]{dir} }
sub pid        { $_[0]{pid} }
sub error_log  { "$_[0]{dir}/error.log" }
sub stderr_log { "$_[0]{dir}/stderr.log" }
sub url        { "http://127.0.0.1:$_[0]{port}$_[1]" }
sub log_text   { Presence::Test::slurp($_[0]->error_log) }

# The one place where the nginx command line is built.  Under
# TEST_NGINX_VALGRIND=1 nginx runs as a single process (master_process
# off), which is what valgrind needs; signals then go to that process.
sub command {
    my ($self, @extra) = @_;
    my @cmd = (Presence::Test::sanitizer_env(),
               $NGINX, '-p', "$self->{dir}/", '-c', $self->{conf},
               '-e', $self->error_log);
    if ($ENV{TEST_NGINX_VALGRIND}) {
        unshift @cmd, 'valgrind', '--quiet', '--error-exitcode=99',
            '--leak-check=full', '--show-leak-kinds=definite',
            '--errors-for-leak-kinds=definite', '--num-callers=30',
            "--suppressions=$FindBin::Bin/valgrind.supp",
            '--trace-children=no', "--log-file=$self->{dir}/valgrind.%p.log";
        push @cmd, '-g', 'daemon off; master_process off;';
    } else {
        push @cmd, '-g', 'daemon off; master_process on;';
    }
    return (@cmd, @extra);
}

sub _write_conf {
    my ($self) = @_;
    Presence::Test::spew($self->{conf}, Presence::Test::nginx_conf(
        %{ $self->{conf_args} }, port => $self->{port}));
}

# Is the port listened on by this nginx, not by some other process?
# (free_port's port is free only until someone takes it: other tests on
# the machine take ports too, and valgrind takes seconds to start nginx.)
sub _listening {
    my ($self) = @_;
    my %inode;
    for my $line (split /\n/, Presence::Test::slurp('/proc/net/tcp')) {
        my @f = split ' ', $line;
        next unless @f > 9 && $f[3] eq '0A' && $f[1] =~ /:([0-9A-F]{4})$/;
        $inode{ $f[9] } = 1 if hex($1) == $self->{port};
    }
    return 0 unless %inode;
    opendir my $d, "/proc/$self->{pid}/fd" or return 0;
    for (readdir $d) {
        my $l = readlink "/proc/$self->{pid}/fd/$_" // next;
        return 1 if $l =~ /^socket:\[(\d+)\]$/ && $inode{$1};
    }
    return 0;
}

sub start {
    my ($self) = @_;
    croak "nginx already running" if $self->{pid};
    my @size = map { -s $_ // 0 } $self->error_log, $self->stderr_log;
    $self->{pid} = Presence::Test::spawn([$self->command],
                                         $self->stderr_log, $self->stderr_log);
    my $up = Presence::Test::wait_for(sub {
        my $st = Presence::Test::wait_exit($self->{pid}, 0);
        if (defined $st) {
            my $pid = delete $self->{pid};
            my $why = Presence::Test::slurp($self->stderr_log)
                      . Presence::Test::slurp($self->error_log);
            # someone else took the port: once more on another, and the
            # logs lose the lines of this attempt (an [emerg], and what
            # valgrind says of an nginx that exits at once)
            if ($self->{own_port} && ++$self->{port_tries} < 5
                && $why =~ /bind\(\) to \S+:$self->{port} failed \(\d+: Address already in use\)/)
            {
                truncate $self->error_log, $size[0];
                truncate $self->stderr_log, $size[1];
                unlink "$self->{dir}/valgrind.$pid.log";
                $self->{port} = Presence::Test::free_port();
                $self->_write_conf;
                return 'again';
            }
            croak "nginx exited with status $st:\n$why";
        }
        my @w = $self->worker_pids;
        return 0 if !$ENV{TEST_NGINX_VALGRIND} && @w < $self->{workers};
        return 0 unless $self->_listening;
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $self->{port},
                                      Proto => 'tcp');
        return $s ? 1 : 0;
    }, 10);
    return $self->start if ($up // '') eq 'again';
    croak "nginx did not start:\n" . Presence::Test::slurp($self->error_log)
        unless $up;
    return $self;
}

sub worker_pids {
    my ($self) = @_;
    return () unless $self->{pid};
    # under valgrind the single process is the worker
    return ($self->{pid}) if $ENV{TEST_NGINX_VALGRIND};
    return Presence::Test::child_pids($self->{pid});
}

# nginx -s reload: returns once the new workers run.  Under valgrind,
# where master_process is off and a reload would not start a new worker
# (init_process runs once), the process quits gracefully and starts again:
# the old "worker" still finishes what it has in flight.
sub reload {
    my ($self) = @_;
    if ($ENV{TEST_NGINX_VALGRIND}) {
        my $old = $self->{pid};
        defined $self->quit(10) or croak "reload: nginx did not quit";
        $self->start;
        return ($old);
    }
    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $self->{pid} or croak "HUP: $!";
    my $ok = Presence::Test::wait_for(sub {
        (grep { !$old{$_} } $self->worker_pids) >= $self->{workers};
    }, 10);
    croak "reload: no new workers\n" . $self->log_text unless $ok;
    # and the old ones have stopped accepting
    $ok = Presence::Test::wait_for(sub {
        my $log = $self->log_text;
        !grep { kill(0, $_) && $log !~ /\b$_#\d+: gracefully shutting down/ }
             keys %old;
    }, 10);
    croak "reload: old workers still accept\n" . $self->log_text unless $ok;
    return keys %old;
}

# nginx -s quit: the exit status of the master, undef if it is still
# running after $timeout seconds (scaled)
sub quit {
    my ($self, $timeout) = @_;
    my $pid = $self->{pid} or return 0;
    kill 'QUIT', $pid;
    my $st = Presence::Test::wait_exit($pid, $timeout // 10);
    delete $self->{pid} if defined $st;
    return $st;
}

sub alive {
    my ($self) = @_;
    return 0 unless $self->{pid};
    return !defined Presence::Test::wait_exit($self->{pid}, 0);
}

# graceful, then fast, then kill
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    return if defined $self->quit(10);
    kill 'TERM', $pid;
    if (!defined Presence::Test::wait_exit($pid, 5)) {
        kill 'KILL', -$pid;
        kill 'KILL', $pid;
        Presence::Test::wait_exit($pid, 5);
    }
    delete $self->{pid};
}

sub _hard_stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    if (!defined Presence::Test::wait_exit($pid, 5)) {
        kill 'KILL', -$pid;
        kill 'KILL', $pid;
        Presence::Test::wait_exit($pid, 5);
    }
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $@);
    eval { $self->_hard_stop } if $$ == $PARENT;
}


# --- HTTP ---------------------------------------------------------------

# $ng->request($method, $path, headers => [name => value, ...],
#              body => $bytes, timeout => $s) -> response hash:
# {status, reason, headers => {lc name => value}, header_list, body,
#  raw, json (decoded when JSON), elapsed (seconds)}.
# Content-Length is added for a body unless a Content-Length or a
# Transfer-Encoding header is given.  The connection is closed after.
sub request {
    my ($self, $method, $path, %o) = @_;
    return $self->send_request($method, $path, %o)->finish($o{timeout});
}

sub build_request {
    my ($self, $method, $path, %o) = @_;
    my @h = @{ $o{headers} || [] };
    my %has;
    for (my $i = 0; $i < @h; $i += 2) { $has{ lc $h[$i] } = 1 }
    push @h, 'Content-Length' => length $o{body}
        if defined $o{body} && !$has{'content-length'}
           && !$has{'transfer-encoding'};
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
    $req .= "Connection: close\r\n" unless $has{connection};
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    $req .= "\r\n";
    $req .= $o{body} if defined $o{body};
    return $req;
}

sub send_request {
    my ($self, $method, $path, %o) = @_;
    return $self->send_raw($self->build_request($method, $path, %o),
                           head => $method eq 'HEAD', %o);
}

sub get  { my ($self, $path, %o) = @_; $self->request('GET', $path, %o) }
sub head { my ($self, $path, %o) = @_; $self->request('HEAD', $path, %o) }

# POST a body (a hash ref is encoded as JSON) with
# Content-Type: application/json unless the headers name one or no_ct => 1
sub post {
    my ($self, $path, $body, %o) = @_;
    $body = $JSON->encode($body) if ref $body;
    my @h = @{ $o{headers} || [] };
    my $has_ct = 0;
    for (my $i = 0; $i < @h; $i += 2) {
        $has_ct = 1 if lc($h[$i]) eq q{content-type};
    }
    unshift @h, 'Content-Type' => 'application/json'
        unless $has_ct || $o{no_ct};
    return $self->request('POST', $path, %o, body => $body, headers => \@h);
}

# $ng->raw($bytes | [$piece, ...], delay => $s, head => 1): sends the
# bytes (pieces with a pause between them), reads until the server
# closes; returns the first response in scalar context, all of them in
# list context (pipelining).
sub raw {
    my ($self, $data, %o) = @_;
    my $p = $self->send_raw($data, %o);
    return wantarray ? $p->finish_all($o{timeout}) : $p->finish($o{timeout});
}

sub send_raw {
    my ($self, $data, %o) = @_;
    my $t0 = time;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->{port}, Proto => 'tcp',
                                  Timeout => 5)
        or croak "connect to nginx: $!";
    my @pieces = ref $data ? @$data : ($data);
    for my $i (0 .. $#pieces) {
        sleep $o{delay} if $i && $o{delay};
        my $buf = $pieces[$i];
        while (length $buf) {
            my $n = syswrite $s, $buf;
            last unless defined $n;     # the server may answer early
            substr($buf, 0, $n, '');
        }
    }
    return bless { sock => $s, t0 => $t0, head => $o{head} },
                 'Presence::Test::Pending';
}

package Presence::Test::Pending;

use Carp qw(croak);
use IO::Select;
use Time::HiRes qw(time);

sub sock { $_[0]{sock} }

# reads until the server closes (or the timeout, scaled); undef when
# nothing parseable came back
sub _read_all {
    my ($self, $timeout) = @_;
    return $self->{buf} if $self->{done};
    my $s = $self->{sock};
    my $sel = IO::Select->new($s);
    my $deadline = time + Presence::Test::scaled($timeout // 10);
    $self->{buf} //= '';
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $self->{buf}, 65536, length $self->{buf};
        last unless $n;
    }
    $self->{elapsed} = time - $self->{t0};
    $self->{done} = 1;
    CORE::close $s;
    return $self->{buf};
}

# true once the server has sent something (or closed)
sub ready {
    my ($self) = @_;
    return 1 if $self->{done};
    return IO::Select->new($self->{sock})->can_read(0) ? 1 : 0;
}

sub finish {
    my ($self, $timeout) = @_;
    my @all = $self->finish_all($timeout);
    return $all[0];
}

sub finish_all {
    my ($self, $timeout) = @_;
    my $buf = $self->_read_all($timeout);
    my ($pos, @r) = (0);
    while ($pos < length $buf) {
        my ($r, $next) = Presence::Test::parse_response(\$buf, $pos,
                                                        $self->{head});
        last unless $r;
        $r->{elapsed} = $self->{elapsed};
        push @r, $r;
        $pos = $next;
    }
    return @r;
}

# the client goes away without reading the answer
sub abort {
    my ($self) = @_;
    CORE::close $self->{sock} unless $self->{done};
    $self->{done} = 1;
    $self->{buf} //= '';
}

1;
