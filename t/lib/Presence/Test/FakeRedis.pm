package Presence::Test::FakeRedis;

# A fake Redis on 127.0.0.1:<port> in a forked child (fake_redis in
# Presence::Test).  It parses RESP
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

use strict;
use warnings;

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
    eval { $self->stop } if $$ == $Presence::Test::PARENT;
}

1;
