#!/usr/bin/perl

# The Redis Sentinel sets and Clusters the failover tests run on
# (Presence::Test::RedisHA), tested with real processes and no nginx: the
# helpers must report what Redis really does, or the failover tests
# built on them prove nothing.  Sentinel: the set comes up, a write
# reaches the replica, kill -9 of the master is followed to the promoted
# replica, SENTINEL FAILOVER too, and a killed master restarted empty is
# not taken for the master.  Cluster: 3 masters + 3 replicas over all
# 16384 slots, keys spread by hash tag, a slot migrated under writes, a
# killed master's replica promoted, CLUSTER FAILOVER.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;
use Presence::Test::RedisHA;

plan skip_all => 'redis-sentinel is not installed (tools/deps test installs it)'
    unless have_redis_sentinel();

sub is_err { ref $_[0] eq 'Presence::Test::RespError' }
sub err { is_err($_[0]) ? $_[0]->message : '' }

###########################################################################
# Sentinel

{
    my $s = start_redis_sentinel();
    my ($first, $rep) = $s->nodes;
    my @saddr = $s->sentinel_addrs;

    is(scalar $s->nodes, 2, 'sentinel: a master and a replica');
    is($s->directive, "presence_redis_sentinel mymaster @saddr;",
       'sentinel: the directive names the three sentinels');
    is($s->master, $first, 'sentinel: the sentinels name the first node, ROLE master');
    is($rep->role, 'slave', 'sentinel: the other is a replica');
    for my $sen ($s->sentinels) {
        is(($s->master_addr_from($sen))[1], $first->port,
           "sentinel: sentinel $sen->{port} names the master");
    }

    is($first->cmd('SET', 'presence:ha', 'one'), 'OK', 'sentinel: SET on the master');
    ok(wait_for(sub { ($rep->cmd('GET', 'presence:ha') // '') eq 'one' }, 5),
       'sentinel: the write reaches the replica');
    like(err($rep->cmd('SET', 'presence:ha', 'x')), qr/^READONLY/,
         'sentinel: the replica refuses writes');

    # kill -9 of the master: the replica is promoted (about 2.2 s here)
    my $t0 = time;
    my $old = $s->kill_master;
    is($old, $first, 'sentinel: kill_master killed the master');
    ok(!$old->running && !defined $old->role, 'sentinel: the old master is gone');
    is($s->master, undef, 'sentinel: no master meanwhile');
    my $new = $s->wait_new_master($old, 5);
    my $took = time - $t0;
    is($new, $rep, sprintf 'sentinel: the replica is the new master after kill -9 (%.2fs)', $took)
        or diag join '', map { Presence::Test::slurp("$_->{dir}/redis.log") } $s->sentinels;
    ok($took < scaled(5), 'sentinel: within 5 s');
    is($rep->role, 'master', 'sentinel: it says ROLE master');
    is($rep->cmd('SET', 'presence:ha', 'two'), 'OK', 'sentinel: it takes writes');
    is($rep->cmd('GET', 'presence:ha'), 'two', 'sentinel: ... and reads');

    # the killed master, restarted without persistence, is an empty
    # master for a while: the sentinels do not name it
    $old->start;
    is($old->role, 'master', 'sentinel: the restarted old master says master');
    is($old->cmd('DBSIZE'), 0, 'sentinel: ... and is empty');
    is($s->master, $rep, 'sentinel: master() gives the one the sentinels name');
    $s->stop;
    ok(!(grep { $_->running } $s->nodes, $s->sentinels), 'sentinel: stop stops them all');
}

{
    # a planned failover (a new set: the old master of the one above
    # is made a replica only about 10 s after it is back)
    my $s = start_redis_sentinel();
    my ($first, $rep) = $s->nodes;
    is($s->failover, 'OK', 'sentinel: SENTINEL FAILOVER');
    my $t0 = time;
    is($s->wait_new_master($first, 5), $rep,
       sprintf 'sentinel: the replica is master after SENTINEL FAILOVER (%.2fs)', time - $t0);
    $s->stop;
}

###########################################################################
# Cluster

{
    my $c = start_redis_cluster();
    my @nodes = $c->nodes;
    is(scalar @nodes, 6, 'cluster: 6 nodes');
    my @m = $c->masters;
    my @r = $c->replicas;
    is(scalar @m, 3, 'cluster: 3 masters');
    is(scalar @r, 3, 'cluster: 3 replicas');
    is($c->directive, 'presence_redis_cluster ' . join(' ', map { $_->addr } @nodes) . ';',
       'cluster: the directive names every node');
    my %rep_of = map { ($c->replicas_of($_))[0]->port => $_->port } @m;
    is(scalar keys %rep_of, 3, 'cluster: every master has its own replica');

    # CLUSTER SLOTS: three ranges' masters, all 16384 slots
    my ($covered, %owners) = (0);
    for my $range (@{ $nodes[0]->cmd('CLUSTER', 'SLOTS') }) {
        $covered += $range->[1] - $range->[0] + 1;
        $owners{ $range->[2][1] }++;
    }
    is($covered, 16384, 'cluster: all 16384 slots covered');
    is_deeply([sort keys %owners], [sort map { $_->port } @m],
              'cluster: by the three masters');

    # keys with different hash tags on all three masters
    my %key_of;     # master port => a key it holds
    my $i = 0;
    while (keys %key_of < 3 && $i < 100) {
        my $key = "presence:{room$i}:online";
        my $n = $c->node_for_key($key);
        is($n->cmd('SET', $key, "v$i"), 'OK', "cluster: SET $key on $n->{port}")
            unless $key_of{ $n->port };
        $key_of{ $n->port } //= $key;
        $i++;
    }
    is(scalar keys %key_of, 3, "cluster: hash tags spread the keys over the three masters ($i tags)");
    my $kpn = $c->keys_per_node;
    is_deeply([map { $kpn->{ $_->port } } @m], [1, 1, 1], 'cluster: keys_per_node: one each');

    # a node that does not serve the slot answers MOVED to the one that does
    my ($a, $b) = @m;
    my $key = $key_of{ $a->port };
    my $slot = $c->slot_for_key($key);
    my $mv = $b->cmd('GET', $key);
    like(err($mv), qr/^MOVED $slot 127\.0\.0\.1:${\ $a->port}$/,
       'cluster: another master answers MOVED to node_for_key') or diag err($mv);

    # migrate $key's slot from $a to $b, with writes to the slot between
    # the batches (they meet ASK for new keys) and 250 keys to move
    my $tag = ($key =~ /\{(.*?)\}/)[0];
    $a->pipeline(map { ['SET', "presence:{$tag}:k$_", $_] } 1 .. 250);
    my ($asks, $written) = (0, 0);
    my $moved = $c->migrate_slot($slot, $a, $b, batch => 100, on_batch => sub {
        my $k = "presence:{$tag}:new" . $written++;
        my $r = $a->cmd('SET', $k, 'x');
        if (err($r) =~ /^ASK $slot 127\.0\.0\.1:(\d+)$/) {
            $asks++;
            (undef, $r) = $c->node_by_port($1)->pipeline(['ASKING'], ['SET', $k, 'x']);
        }
        die "write during the migration: $r" unless !ref $r && $r eq 'OK';
    });
    is($moved, 251, 'cluster: migrate_slot moved the slot\'s 251 keys');
    ok($asks >= 1, "cluster: new keys met ASK during the migration ($asks)");
    is($c->node_for_key($key), $b, 'cluster: the key\'s slot is on the other master');
    is($b->cmd('GET', $key), $key =~ /room(\d+)/ && "v$1", 'cluster: the key moved with it');
    is($b->cmd('CLUSTER', 'COUNTKEYSINSLOT', $slot), 251 + $written,
       'cluster: every key of the slot is there, the ones written meanwhile too');
    is($a->cmd('CLUSTER', 'COUNTKEYSINSLOT', $slot), 0, 'cluster: none left behind');
    $mv = $a->cmd('GET', $key);
    like(err($mv), qr/^MOVED $slot 127\.0\.0\.1:${\ $b->port}$/,
       'cluster: the old master answers MOVED') or diag err($mv);
    ok($c->wait_ready(10), 'cluster: every node agrees after the migration')
        or diag $c->why_not_ready;

    # kill -9 of a master: its replica is promoted (3-4.4 s here)
    my $victim = $m[2];
    my $vkey = $key_of{ $victim->port };
    # WAIT counts what this connection wrote: write again, then WAIT
    is(($victim->pipeline(['SET', $vkey, $vkey =~ /room(\d+)/ && "v$1"],
                          ['WAIT', 1, 5000]))[1], 1,
       'cluster: the victim\'s write reached its replica');
    my $t0 = time;
    $c->kill_master($victim);
    my $prom = $c->wait_promotion($victim, 10);
    ok($prom, sprintf 'cluster: a replica promoted after kill -9 (%.2fs)', time - $t0)
        or diag $c->why_not_ready;
    SKIP: {
        skip 'no promotion', 4 unless $prom;
        is($prom->port, (grep { $rep_of{$_} == $victim->port } keys %rep_of)[0],
           'cluster: the victim\'s own replica');
        is($c->node_for_key($vkey), $prom, 'cluster: it serves the victim\'s slots');
        is($prom->cmd('GET', $vkey), $vkey =~ /room(\d+)/ && "v$1",
           'cluster: with the victim\'s data')
            or diag $prom->cmd('INFO', 'replication'),
            $prom->cmd('INFO', 'keyspace'), Presence::Test::slurp("$prom->{dir}/redis.log");
        is(scalar $c->masters, 3, 'cluster: three masters again');
    }

    # CLUSTER FAILOVER on a replica of a live master ($b, which has the
    # migrated slot): quick, nothing lost
    is(($b->pipeline(['SET', 'presence:{' . $tag . '}:last', 'x'], ['WAIT', 1, 5000]))[1], 1,
       'cluster: $b\'s writes reached its replica');
    $written++;
    my ($rep) = $c->replicas_of($b);
    $t0 = time;
    is($c->failover($rep, undef, 5), $rep,
       sprintf 'cluster: CLUSTER FAILOVER made the replica master (%.2fs)', time - $t0);
    is($b->role, 'slave', 'cluster: the old master is its replica');
    is($c->node_for_key($key), $rep, 'cluster: the new master serves the slots');
    is($rep->cmd('CLUSTER', 'COUNTKEYSINSLOT', $slot), 251 + $written,
       'cluster: with all their keys');
    is(scalar $c->masters, 3, 'cluster: three masters');
}

done_testing;
