#!/usr/bin/perl

# Expiry with presence_ttl 1s: a user is online for the TTL after its last
# heartbeat and not after, whatever else keeps the room's key alive; the
# key itself goes when the last heartbeat is a TTL old.  A heartbeat
# through a location with a shorter TTL never shortens the key's life.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr });
presence_redis %%REDIS%%;
presence_ttl 1s;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /online { presence_online; }
    location = /hb60   { presence_ttl 60s; presence_heartbeat; }
}
EOF

my $KEY = 'presence:{global}';

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

my $t0 = time;
my $res = $ng->post('/hb', { user_id => 'alice' });
$ng->post('/hb', { user_id => 'amy' });
is($res->{status}, 200, 'heartbeat');
like($res->{body}, qr/"ttl"\s*:\s*1\s*[,}]/, 'ttl is the number 1');

my $pttl = $r->cmd('PTTL', $KEY);
# the ttl, and 2 x presence_redis_timeout (1s) + 1s for the streams' sweeps
ok($pttl > 3000 && $pttl <= 4000, 'PEXPIRE 1000 + 3000') or diag $pttl;

$res = $ng->get('/online?user_id=alice');
my $ms = $res->{json}{expires_in_ms} // -1;
ok($ms > 0 && $ms <= 1000, 'expires_in_ms within the ttl') or diag $ms;

is_deeply($ng->get('/online')->{json}{users}, [qw(alice amy)],
          'both listed at first');

# bob keeps the room (and its key) alive; alice and amy stop
my $gone = wait_for(sub {
    $ng->post('/hb', { user_id => 'bob' })->{status} == 200 or return 0;
    # amy's heartbeat came a request later: her ttl ends a little later
    for my $u (qw(alice amy)) {
        my $l = $ng->get("/online?user_id=$u");
        return 0 unless $l->{status} == 200 && !$l->{json}{online};
    }
    return 1;
}, 4, 0.1);
my $after = time - $t0;
ok($gone, 'alice and amy offline after the ttl');
ok($after >= 0.99, 'not before the ttl') or diag "after ${after}s";
ok($after < 1 + scaled(0.6), 'soon after the ttl') or diag "after ${after}s";
like($ng->get('/online?user_id=alice')->{body}, qr/"expires_in_ms"\s*:\s*0\b/,
     'expires_in_ms 0 once expired');

$res = $ng->get('/online');
is_deeply($res->{json}{users}, ['bob'], 'listing: only bob');
is($res->{json}{count}, 1, 'count 1');
is($r->cmd('ZSCORE', $KEY, 'alice'), undef, 'alice pruned from the set');
is($r->cmd('ZSCORE', $KEY, 'amy'), undef, 'amy pruned from the set');
is($r->cmd('ZCARD', $KEY), 1, 'ZCARD 1');

my $t1 = time;      # before the last heartbeat: the key lives 4 s from then
$res = $ng->post('/hb', { user_id => 'bob' });
is($res->{json}{online}, 1, 'heartbeat counts only who is online');

# bob stops too: the key goes 4 s after his last heartbeat; only the
# room's last event id lives on (a minute), so that ids never go back
ok(wait_for(sub { !$r->cmd('EXISTS', $KEY) }, 4 + scaled(2)), 'key expired');
my $keygone = time - $t1;
ok($keygone >= 3.9, 'key not gone before ttl + 3 s') or diag "${keygone}s";
is_deeply([$r->key_list], ["$KEY:v"], 'redis empty but the last event id');
my $vttl = $r->cmd('PTTL', "$KEY:v");
ok($vttl > 0 && $vttl <= 60000, '  which expires within a minute')
    or diag $vttl;

$res = $ng->get('/online');
is_deeply($res->{json}, { room => 'global', ttl => 1, count => 0,
                          users => [] }, 'empty listing');
like($res->{body}, qr/"users"\s*:\s*\[\s*\]/, 'users is an empty array');

# carol is online for 60 s; dave's heartbeats (1 s) must not end the room
is($ng->post('/hb60', { user_id => 'carol' })->{status}, 200,
   'carol: a heartbeat with presence_ttl 60s');
$pttl = $r->cmd('PTTL', $KEY);
ok($pttl > 50000, '  the key lives 60 s') or diag $pttl;
is($ng->post('/hb', { user_id => 'dave' })->{status}, 200,
   'dave: a heartbeat with presence_ttl 1s');
$pttl = $r->cmd('PTTL', $KEY);
ok($pttl > 50000, '  the key still lives about 60 s') or diag $pttl;
ok(wait_for(sub {
    !$ng->get('/online?user_id=dave')->{json}{online} }, 5),
   'dave goes offline after his ttl');
is_deeply($ng->get('/online')->{json}{users}, ['carol'],
          '  carol is still listed');
ok($r->cmd('PTTL', $KEY) > 50000, '  and the key lives on');

done_testing;
