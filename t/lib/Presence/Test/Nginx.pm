package Presence::Test::Nginx;

# A stock nginx loading the module, one config per test (start_nginx in
# Presence::Test); its HTTP methods come from Presence::Test::HTTP.

use strict;
use warnings;

use parent -norequire, 'Presence::Test::HTTP';

use Carp qw(croak);
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

sub dir        { $_[0]{dir} }
sub pid        { $_[0]{pid} }
sub error_log  { "$_[0]{dir}/error.log" }
sub stderr_log { "$_[0]{dir}/stderr.log" }
sub log_text   { Presence::Test::slurp($_[0]->error_log) }

# The one place where the nginx command line is built.  Under
# TEST_NGINX_VALGRIND=1 nginx runs as a single process (master_process
# off), which is what valgrind needs; signals then go to that process.
sub command {
    my ($self, @extra) = @_;
    my @cmd = (Presence::Test::sanitizer_env(),
               $Presence::Test::NGINX, '-p', "$self->{dir}/", '-c', $self->{conf},
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
    $self->{started} = 1;
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

# a line the error.log check lets pass: one the test caused on purpose
sub allow_in_log {
    my ($self, $re) = @_;
    push @{ $self->{log_allow} }, $re;
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
    eval { $self->_hard_stop } if $$ == $Presence::Test::PARENT;
}

1;
