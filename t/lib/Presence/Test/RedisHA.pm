package Presence::Test::RedisHA;

# Redis Sentinel sets and Redis Clusters for the tests, from real
# redis-server and redis-sentinel processes on free ports, each in its own
# directory under the test's, owned by Presence::Test (stopped when the
# test ends, even when it dies; killed with it).  The same setups as
# tools/redis-ha, plus what the failover tests need.  Core Perl only.
#
#   my $s = start_redis_sentinel(%opt);   # a master, 1 replica, 3 sentinels
#   $s->directive     'presence_redis_sentinel mymaster 127.0.0.1:P ...;'
#   $s->master        the master: named by the sentinels, confirmed by ROLE
#   $s->kill_master   kill -9 of it; returns its node
#   $s->wait_new_master($old [, $seconds])   a sentinel names another node
#                     that says ROLE master (undef at the deadline)
#   $s->failover      SENTINEL FAILOVER
#
#   my $c = start_redis_cluster(%opt);    # 3 masters + 3 replicas
#   $c->directive     'presence_redis_cluster 127.0.0.1:P ...;'
#   $c->node_for_key($key), $c->slot_for_key($key), $c->node_for_slot($n)
#   $c->kill_master($node), $c->wait_promotion($old [, $seconds])
#   $c->migrate_slot($slot, $from, $to, batch => N, on_batch => sub {...})
#   $c->failover($replica)   CLUSTER FAILOVER, waits for the new roles
#   $c->keys_per_node        { port => DBSIZE } of the masters
#   $c->wait_ready           cluster_state:ok and CLUSTER NODES agreeing
#
# Nodes and sentinels are Presence::Test::Redis objects (cmd, pipeline,
# cli, stop, start, port, addr, dir) with kill9 and their own config file,
# which Redis and Sentinel rewrite, so a restarted node comes back as they
# left it.

use strict;
use warnings;

use Carp qw(croak);
use Exporter qw(import);
use File::Spec;
use Time::HiRes qw(time sleep);

use Presence::Test ();
use Presence::Test::Redis;

our @EXPORT_OK = qw(start_redis_sentinel start_redis_cluster have_redis_sentinel);
our @EXPORT = @EXPORT_OK;

our $REDIS_SENTINEL = $ENV{TEST_REDIS_SENTINEL} || 'redis-sentinel';

# true when redis-sentinel can be run (tools/deps test installs it)
sub have_redis_sentinel {
    return -x $REDIS_SENTINEL if $REDIS_SENTINEL =~ m{/};
    return grep { -x "$_/$REDIS_SENTINEL" } File::Spec->path;
}

# free ports, distinct from each other
sub _free_ports {
    my ($n) = @_;
    my %seen;
    my @p;
    while (@p < $n) {
        my $port = Presence::Test::free_port();
        push @p, $port unless $seen{$port}++;
    }
    return @p;
}

sub _is_err { ref $_[0] eq 'Presence::Test::RespError' }

# $node->cmd that croaks on an error reply too
sub _ok {
    my ($node, @cmd) = @_;
    my $r = $node->cmd(@cmd);
    croak "127.0.0.1:$node->{port} @cmd[0 .. ($#cmd > 2 ? 2 : $#cmd)]: $r"
        if _is_err($r);
    return $r;
}

# a flat [k, v, k, v] reply as a hash
sub _hash { my %h = @{ $_[0] || [] }; \%h }

sub start_redis_sentinel { Presence::Test::RedisHA::Sentinel->new(@_) }
sub start_redis_cluster  { Presence::Test::RedisHA::Cluster->new(@_) }

###########################################################################

package Presence::Test::RedisHA::Node;

# One redis-server (or redis-sentinel with sentinel => 1) started from its
# own config file.  new(port =>, conf => "extra lines", password =>,
# sentinel => 1, name => 'node'|'sentinel', bus_port =>)

use strict;
use warnings;

use Carp qw(croak);

our @ISA = ('Presence::Test::Redis');

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        dir      => Presence::Test::new_dir($o{name} // 'node'),
        port     => $o{port} // Presence::Test::free_port(),
        password => $o{password},
        sentinel => $o{sentinel},
        bus_port => $o{bus_port},
        extra    => $o{conf} // '',
    }, $class;
    Presence::Test::_own($self);
    $self->_write_conf;
    $self->start;
    return $self;
}

sub conf     { "$_[0]{dir}/redis.conf" }
sub bus_port { $_[0]{bus_port} }

sub _write_conf {
    my ($self) = @_;
    my $conf = <<"EOF";
port $self->{port}
bind 127.0.0.1
daemonize no
dir $self->{dir}
logfile $self->{dir}/redis.log
EOF
    $conf .= <<'EOF' unless $self->{sentinel};
save ""
appendonly no
repl-diskless-sync-delay 0
EOF
    $conf .= "cluster-port $self->{bus_port}\n" if $self->{bus_port};
    $conf .= "$self->{extra}\n";
    Presence::Test::spew($self->conf, $conf);
}

# Starts it from its config file as it is now (rewritten by Redis or
# Sentinel since, for a restart) and waits for PING.
sub start {
    my ($self) = @_;
    croak "already running" if $self->{pid};
    my @cmd = $self->{sentinel}
        ? ($Presence::Test::RedisHA::REDIS_SENTINEL, $self->conf)
        : ($Presence::Test::REDIS_SERVER, $self->conf);
    my $log = "$self->{dir}/redis.out";
    $self->{pid} = Presence::Test::spawn(\@cmd, $log, $log);
    my $up = Presence::Test::wait_for(sub {
        if (defined Presence::Test::wait_exit($self->{pid}, 0)) {
            delete $self->{pid};
            croak "$cmd[0] on $self->{port} exited:\n"
                . Presence::Test::slurp($log)
                . Presence::Test::slurp("$self->{dir}/redis.log");
        }
        my $pong = eval { $self->cmd('PING') };
        return defined $pong && $pong eq 'PONG';
    }, 10);
    croak "$cmd[0] on $self->{port} did not start:\n"
        . Presence::Test::slurp($log) unless $up;
    return $self;
}

sub running { defined $_[0]{pid} }

# kill -9, and reap it
sub kill9 {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'KILL', $pid;
    Presence::Test::wait_exit($pid, 5);
}

# ROLE's first word ('master', 'slave', 'sentinel'), undef if unreachable
sub role {
    my ($self) = @_;
    return undef unless $self->{pid};
    my $r = eval { $self->cmd('ROLE') };
    return ref $r eq 'ARRAY' ? $r->[0] : undef;
}

# this node's cluster id (CLUSTER MYID), kept: ids do not change
sub id {
    my ($self) = @_;
    $self->{id} //= Presence::Test::RedisHA::_ok($self, 'CLUSTER', 'MYID');
}

###########################################################################

package Presence::Test::RedisHA::Sentinel;

# start_redis_sentinel(name => 'mymaster', replicas => 1, sentinels => 3,
#     quorum => 2, password => 'node password',
#     sentinel_password => 'the sentinels\' requirepass')

use strict;
use warnings;

use Carp qw(croak);
use Time::HiRes qw(time sleep);

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        name              => $o{name} // 'mymaster',
        password          => $o{password},
        sentinel_password => $o{sentinel_password},
    }, $class;
    my $nrep = $o{replicas} // 1;
    my $nsen = $o{sentinels} // 3;
    my $quorum = $o{quorum} // 2;
    croak "redis-sentinel is not installed" unless Presence::Test::RedisHA::have_redis_sentinel();

    my $pw = $self->{password};
    my $auth = defined $pw ? "requirepass \"$pw\"\nmasterauth \"$pw\"\n" : '';
    my ($mport, @rports) = Presence::Test::RedisHA::_free_ports(1 + $nrep);
    my $master = Presence::Test::RedisHA::Node->new(
        name => 'master', port => $mport, password => $pw, conf => $auth);
    my @nodes = ($master);
    push @nodes, Presence::Test::RedisHA::Node->new(
        name => 'replica', port => $_, password => $pw,
        conf => $auth . "replicaof 127.0.0.1 $mport") for @rports;
    $self->{nodes} = \@nodes;
    $self->{master_port} = $mport;

    # sentinels INFO the master once when they connect: let the replicas
    # be there then, or they are known 10 s later only
    Presence::Test::wait_for(sub {
        !grep { ($_->cmd('INFO', 'replication') // '') !~ /^master_link_status:up/m }
            @nodes[1 .. $#nodes]
    }, 20) or croak "sentinel set: the replicas did not sync with the master";

    my $n = $self->{name};
    my $sconf = "sentinel monitor $n 127.0.0.1 $mport $quorum\n"
        . "sentinel down-after-milliseconds $n 1000\n"
        . "sentinel failover-timeout $n 5000\n"
        . "sentinel parallel-syncs $n 1\n";
    $sconf .= "sentinel auth-pass $n \"$pw\"\n" if defined $pw;
    if (defined(my $sp = $self->{sentinel_password})) {
        $sconf .= "requirepass \"$sp\"\nsentinel sentinel-pass \"$sp\"\n";
    }
    $self->{sentinels} = [ map {
        Presence::Test::RedisHA::Node->new(
            name => 'sentinel', port => $_, sentinel => 1,
            password => $self->{sentinel_password}, conf => $sconf)
    } Presence::Test::RedisHA::_free_ports($nsen) ];

    $self->wait_ready
        or croak "sentinel set: the sentinels did not learn the whole set:\n"
            . join "\n", map { Presence::Test::slurp("$_->{dir}/redis.log") }
                @{ $self->{sentinels} };
    return $self;
}

sub name      { $_[0]{name} }
sub nodes     { @{ $_[0]{nodes} } }
sub sentinels { @{ $_[0]{sentinels} } }
sub sentinel_addrs { map { $_->addr } @{ $_[0]{sentinels} } }

# the config lines for nginx
sub directive {
    my ($self) = @_;
    my $d = "presence_redis_sentinel $self->{name} "
        . join(' ', $self->sentinel_addrs) . ';';
    $d .= "\npresence_redis_sentinel_password \"$self->{sentinel_password}\";"
        if defined $self->{sentinel_password};
    $d .= "\npresence_redis_password \"$self->{password}\";"
        if defined $self->{password};
    return $d;
}

sub node_by_port {
    my ($self, $port) = @_;
    my ($n) = grep { $_->port == $port } @{ $self->{nodes} };
    return $n;
}

# what one sentinel says: (host, port, config epoch) of the master, ()
# if it cannot tell
sub master_addr_from {
    my ($self, $sentinel) = @_;
    my @auth = defined $self->{sentinel_password}
        ? (['AUTH', $self->{sentinel_password}]) : ();
    my @r = eval {
        $sentinel->pipeline(@auth,
            ['SENTINEL', 'get-master-addr-by-name', $self->{name}],
            ['SENTINEL', 'MASTER', $self->{name}])
    };
    my ($addr, $info) = @r[-2, -1];
    return () unless ref $addr eq 'ARRAY' && ref $info eq 'ARRAY';
    return (@$addr, Presence::Test::RedisHA::_hash($info)->{'config-epoch'});
}

# The master: the node named by the sentinel with the newest config epoch
# (before +switch-master only the leader names the new master, and the
# old one may be back as an empty master), if it says ROLE master; else
# the next newest, the most named; undef if no node named is master.
sub master {
    my ($self) = @_;
    my (%votes, %epoch);
    for my $s (@{ $self->{sentinels} }) {
        next unless $s->running;
        my (undef, $port, $epoch) = $self->master_addr_from($s);
        next unless defined $port;
        $votes{$port}++;
        $epoch{$port} = $epoch if ($epoch{$port} // -1) < $epoch;
    }
    for my $port (sort { $epoch{$b} <=> $epoch{$a} || $votes{$b} <=> $votes{$a} }
                  keys %votes) {
        my $node = $self->node_by_port($port) or next;
        return $node if ($node->role // '') eq 'master';
    }
    return undef;
}

# the nodes that say ROLE slave
sub replicas { grep { ($_->role // '') eq 'slave' } @{ $_[0]{nodes} } }

# every running sentinel knows the master (every one names the same), its
# replicas (link up) and the other running sentinels
sub ready {
    my ($self) = @_;
    my $m = $self->master or return 0;
    my @live = grep { $_->running } @{ $self->{sentinels} };
    my @reps = grep { $_->running && $_ != $m } @{ $self->{nodes} };
    for my $s (@live) {
        my (undef, $port) = $self->master_addr_from($s);
        return 0 unless defined $port && $port == $m->port;
        my $known = eval { $s->cmd('SENTINEL', 'replicas', $self->{name}) };
        return 0 unless ref $known eq 'ARRAY';
        for my $r (@reps) {
            return 0 unless grep {
                my $h = Presence::Test::RedisHA::_hash($_);
                $h->{port} == $r->port && $h->{flags} eq 'slave'
                    && $h->{'master-link-status'} eq 'ok'
            } @$known;
        }
        my $others = eval { $s->cmd('SENTINEL', 'sentinels', $self->{name}) };
        return 0 unless ref $others eq 'ARRAY';
        my $n = grep { Presence::Test::RedisHA::_hash($_)->{flags} eq 'sentinel' } @$others;
        return 0 unless $n >= @live - 1;
    }
    return 1;
}

sub wait_ready {
    my ($self, $secs) = @_;
    return Presence::Test::wait_for(sub { $self->ready }, $secs // 20, 0.05);
}

# kill -9 of the current master; returns its node
sub kill_master {
    my ($self) = @_;
    my $m = $self->master or croak "sentinel set: no master to kill";
    $m->kill9;
    return $m;
}

# wait_new_master($old [, $seconds = 5, scaled]): the new master (a
# sentinel names it, ROLE confirms it), or undef at the deadline
sub wait_new_master {
    my ($self, $old, $secs) = @_;
    return Presence::Test::wait_for(sub {
        my $m = $self->master;
        return $m && (!$old || $m != $old) ? $m : undef;
    }, $secs // 5, 0.05);
}

# stops every node and sentinel (the test's end does it anyway)
sub stop { $_->stop for @{ $_[0]{sentinels} }, @{ $_[0]{nodes} } }

# SENTINEL FAILOVER through the first running sentinel; its reply
sub failover {
    my ($self) = @_;
    my ($s) = grep { $_->running } @{ $self->{sentinels} };
    return Presence::Test::RedisHA::_ok($s, 'SENTINEL', 'FAILOVER', $self->{name});
}

###########################################################################

package Presence::Test::RedisHA::Cluster;

# start_redis_cluster(masters => 3, replicas => 1, password => 'pw')

use strict;
use warnings;

use Carp qw(croak);
use Time::HiRes qw(time sleep);

sub new {
    my ($class, %o) = @_;
    my $nm = $o{masters} // 3;
    my $nr = $o{replicas} // 1;
    my $pw = $o{password};
    my $self = bless { password => $pw }, $class;
    my $n = $nm * (1 + $nr);
    my @ports = Presence::Test::RedisHA::_free_ports(2 * $n);
    my $conf = "cluster-enabled yes\ncluster-config-file nodes.conf\n"
        . "cluster-node-timeout 2000\n";
    $conf .= "requirepass \"$pw\"\nmasterauth \"$pw\"\n" if defined $pw;
    # the bus ports are free ports too: port + 10000 may be neither free
    # nor a port
    $self->{nodes} = [ map {
        Presence::Test::RedisHA::Node->new(
            name => 'cnode', port => $ports[$_], bus_port => $ports[$n + $_],
            password => $pw, conf => $conf)
    } 0 .. $n - 1 ];

    my @cmd = ($Presence::Test::REDIS_CLI, '--cluster', 'create',
               (map { $_->addr } @{ $self->{nodes} }),
               '--cluster-replicas', $nr, '--cluster-yes');
    push @cmd, '-a', $pw, '--no-auth-warning' if defined $pw;
    my ($rc, $out) = Presence::Test::run_capture(
        'timeout', Presence::Test::scaled(30), @cmd);
    croak "redis-cli --cluster create: exit $rc\n$out" if $rc;
    $self->wait_ready(30)
        or croak "cluster: not ready: " . $self->why_not_ready;
    my @m = $self->masters;
    croak "cluster: " . @m . " masters, not $nm" unless @m == $nm;
    $_->id for @{ $self->{nodes} };     # known even once a node is killed
    return $self;
}

sub nodes { @{ $_[0]{nodes} } }
sub addrs { map { $_->addr } @{ $_[0]{nodes} } }
sub directive {
    my ($self) = @_;
    my $d = 'presence_redis_cluster ' . join(' ', $self->addrs) . ';';
    $d .= "\npresence_redis_password \"$self->{password}\";"
        if defined $self->{password};
    return $d;
}

sub live { grep { $_->running } @{ $_[0]{nodes} } }

sub node_by_port {
    my ($self, $port) = @_;
    my ($n) = grep { $_->port == $port } @{ $self->{nodes} };
    return $n;
}

sub node_by_id {
    my ($self, $id) = @_;
    my ($n) = grep { $_->id eq $id } @{ $self->{nodes} };
    return $n;
}

# CLUSTER NODES as $node sees it: [{ id, port, role, fail ('ok', 'pfail',
# 'fail'), master ('-' or an id), slots ('0-5460 ...'), flags }], by id;
# undef when it does not answer
sub view {
    my ($self, $node) = @_;
    my $text = eval { $node->cmd('CLUSTER', 'NODES') };
    return undef if !defined $text || ref $text;
    my @v;
    for my $line (split /\n/, $text) {
        my ($id, $addr, $flags, $master, undef, undef, undef, undef, @slots)
            = split ' ', $line;
        my ($port) = $addr =~ /:(\d+)/;
        my %f = map { $_ => 1 } split /,/, $flags;
        push @v, {
            id => $id, port => $port, flags => $flags, master => $master,
            role => $f{master} ? 'master' : $f{slave} ? 'slave' : '?',
            fail => $f{fail} ? 'fail' : $f{'fail?'} ? 'pfail' : 'ok',
            handshake => $f{handshake} || $f{noaddr} ? 1 : 0,
            slots => join(' ', grep { !/^\[/ } @slots),
            importing => join(' ', grep { /^\[/ } @slots),
        };
    }
    return [ sort { $a->{id} cmp $b->{id} } @v ];
}

sub _view_key {
    join "\n", map { "$_->{id} $_->{role} $_->{fail} $_->{master} $_->{slots}" } @{ $_[0] };
}

# '' when ready, else why not: every running node says cluster_state:ok,
# and they all see the same nodes, roles, masters, failures and slots,
# with no handshake going on; the masters not failed hold all 16384 slots;
# every running replica's link to its master is up, at both ends
sub why_not_ready {
    my ($self) = @_;
    my $first;
    for my $node ($self->live) {
        my $info = eval { $node->cmd('CLUSTER', 'INFO') } // '';
        return "$node->{port}: not cluster_state:ok" unless !ref $info && $info =~ /^cluster_state:ok/m;
        my $v = $self->view($node) or return "$node->{port}: no CLUSTER NODES";
        return "$node->{port}: a node in handshake" if grep { $_->{handshake} || $_->{role} eq '?' } @$v;
        # a replica says its link is up once the RDB is loaded, but its
        # master streams the writes made since only after the replica's
        # first ACK (up to 1 s later): both ends must say so
        my ($me) = grep { $_->{flags} =~ /myself/ } @$v;
        my $repl = eval { $node->cmd('INFO', 'replication') } // '';
        $repl = '' if ref $repl;
        return "$node->{port}: replica not in sync"
            if $me && $me->{role} eq 'slave'
                && $repl !~ /^master_link_status:up/m;
        return "$node->{port}: a replica not online"
            if grep { !/state=online/ } $repl =~ /^slave\d+:(.*)$/mg;
        my $k = _view_key($v);
        if (!defined $first) {
            $first = $k;
            my $covered = 0;
            for my $m (grep { $_->{role} eq 'master' && $_->{fail} eq 'ok' } @$v) {
                for my $r (split ' ', $m->{slots}) {
                    my ($a, $b) = split /-/, $r;
                    $covered += ($b // $a) - $a + 1;
                }
            }
            return "$node->{port}: $covered slots covered" unless $covered == 16384;
        } elsif ($k ne $first) {
            return "$node->{port} sees another cluster than $self->{nodes}[0]{port}";
        }
    }
    return defined $first ? '' : 'no node running';
}

sub ready { $_[0]->why_not_ready eq '' }

sub wait_ready {
    my ($self, $secs) = @_;
    return Presence::Test::wait_for(sub { $self->ready }, $secs // 20, 0.05);
}

# the running masters / replicas (ROLE), in port order
sub masters  { grep { ($_->role // '') eq 'master' } sort { $a->port <=> $b->port } $_[0]->live }
sub replicas { grep { ($_->role // '') eq 'slave' }  sort { $a->port <=> $b->port } $_[0]->live }

# the replicas of $master, as the first running node sees them
sub replicas_of {
    my ($self, $master) = @_;
    my ($n) = $self->live;
    my $v = $self->view($n) or return;
    return map { $self->node_by_id($_->{id}) }
        grep { $_->{master} eq $master->id } @$v;
}

sub slot_for_key {
    my ($self, $key) = @_;
    my ($n) = $self->live;
    return Presence::Test::RedisHA::_ok($n, 'CLUSTER', 'KEYSLOT', $key);
}

# the master serving $slot per CLUSTER SLOTS of a running node
sub node_for_slot {
    my ($self, $slot, $asked) = @_;
    ($asked) = $self->live unless $asked;
    my $slots = Presence::Test::RedisHA::_ok($asked, 'CLUSTER', 'SLOTS');
    for my $range (@$slots) {
        my ($from, $to, $m) = @$range;
        return $self->node_by_port($m->[1]) if $slot >= $from && $slot <= $to;
    }
    return undef;
}

sub node_for_key { $_[0]->node_for_slot($_[0]->slot_for_key($_[1])) }

# $c->cmd_for_key($key, @cmd): @cmd on the master of $key's slot
sub cmd_for_key {
    my ($self, $key, @cmd) = @_;
    return $self->node_for_key($key)->cmd(@cmd);
}

# kill -9 of $master (default: the first master); returns it, with the
# slots it served in $node->{served} for wait_promotion
sub kill_master {
    my ($self, $m) = @_;
    ($m) = $self->masters unless $m;
    croak "cluster: no master to kill" unless $m;
    my $v = $self->view($m) or croak "cluster: $m->{port} does not answer";
    my ($me) = grep { $_->{id} eq $m->id } @$v;
    $m->{served} = $me->{slots};
    $m->kill9;
    return $m;
}

# wait_promotion($old [, $seconds = 10, scaled]): another node says ROLE
# master and serves the first slot $old served, and the cluster is ready
# (cluster_state:ok, CLUSTER NODES agree); the new master, or undef at
# the deadline
sub wait_promotion {
    my ($self, $old, $secs) = @_;
    my ($slot) = ($old->{served} // '') =~ /^(\d+)/
        or croak "wait_promotion: kill it with kill_master";
    return Presence::Test::wait_for(sub {
        return undef unless $self->ready;
        my $new = eval { $self->node_for_slot($slot) } or return undef;
        return $new != $old && ($new->role // '') eq 'master' ? $new : undef;
    }, $secs // 10, 0.05);
}

# CLUSTER FAILOVER on $replica (a planned one; $how: FORCE or TAKEOVER);
# waits until it is master and the cluster agrees; returns it or undef
sub failover {
    my ($self, $replica, $how, $secs) = @_;
    Presence::Test::RedisHA::_ok($replica, 'CLUSTER', 'FAILOVER', $how ? $how : ());
    return Presence::Test::wait_for(sub {
        ($replica->role // '') eq 'master' && $self->ready ? $replica : undef
    }, $secs // 10, 0.05);
}

# Moves $slot from master $from to master $to as redis-cli --cluster
# reshard does: SETSLOT IMPORTING on $to, MIGRATING on $from, MIGRATE of
# the slot's keys in batches (batch => 100) until $from has none left,
# then SETSLOT NODE on $to, $from and the other masters.  Works under
# load: on_batch => sub { ... } runs after each batch (a test can write
# there), pause => seconds between batches.  Returns the number of keys
# moved.
sub migrate_slot {
    my ($self, $slot, $from, $to, %o) = @_;
    my $batch = $o{batch} // 100;
    my ($fid, $tid) = ($from->id, $to->id);
    Presence::Test::RedisHA::_ok($to, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $fid);
    Presence::Test::RedisHA::_ok($from, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $tid);
    my $moved = 0;
    my $deadline = time + Presence::Test::scaled($o{timeout} // 30);
    while (1) {
        my $keys = Presence::Test::RedisHA::_ok($from, 'CLUSTER', 'GETKEYSINSLOT', $slot, $batch);
        last unless @$keys;
        croak "migrate_slot $slot: still keys after the deadline" if time > $deadline;
        my @auth = defined $self->{password} ? ('AUTH', $self->{password}) : ();
        my $r = $from->cmd('MIGRATE', '127.0.0.1', $to->port, '', 0,
                           int(Presence::Test::scaled(5) * 1000), @auth,
                           'KEYS', @$keys);
        croak "migrate_slot $slot: MIGRATE: $r"
            if Presence::Test::RedisHA::_is_err($r);
        $moved += @$keys if $r eq 'OK';
        $o{on_batch}->($moved) if $o{on_batch};
        sleep $o{pause} if $o{pause};
    }
    # the target first, so that it never sends a MOVED back to the source
    for my $m ($to, $from, grep { $_ != $to && $_ != $from } $self->masters) {
        Presence::Test::RedisHA::_ok($m, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $tid);
    }
    return $moved;
}

sub stop { $_->stop for @{ $_[0]{nodes} } }

# { port => DBSIZE } of the running masters
sub keys_per_node {
    my ($self) = @_;
    return { map { $_->port => $_->cmd('DBSIZE') } $self->masters };
}

1;
