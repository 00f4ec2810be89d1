package Presence::Test::Redis;

# A real redis-server for a test (start_redis in Presence::Test): its own
# port (or unix socket) and directory, no persistence.

use strict;
use warnings;

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
    my @cmd = ($Presence::Test::REDIS_SERVER, '--port', $self->{port}, '--bind', '127.0.0.1',
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
    my @cmd = ($Presence::Test::REDIS_CLI,
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
            } elsif ($type eq 'hash') {
                my %h = @{ $self->cmd({ db => $db }, 'HGETALL', $k) };
                $v = \%h;
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
    eval { $self->stop } if $$ == $Presence::Test::PARENT;
}

1;
