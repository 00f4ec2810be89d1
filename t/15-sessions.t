#!/usr/bin/perl

# Sessions: one person, several tabs.  A user is online while any of their
# sessions is; a leave naming a session ends that one only, a leave
# without one ends them all; presence_max_sessions replaces the oldest;
# presence_leave_grace lets a session named in a leave come back before
# it ends.  The listing and the count speak of users.  Every rule of
# session_id, with Redis checked after each: keys, fields, scores,
# expiries.  Clients without a session_id see no difference and leave no
# trace of sessions in Redis.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Encode ();
use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr });
presence_redis %%REDIS%%;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%
    location = /hbv    { presence_heartbeat $http_x_user; }
    location = /leavev { presence_leave $http_x_user; }

    location = /short/hb { presence_ttl 1s; presence_heartbeat; }

    location = /two/hb { presence_max_sessions 2; presence_heartbeat; }

    location = /grace/hb    { presence_heartbeat; }
    location = /grace/leave { presence_leave_grace 1s; presence_leave; }
}
EOF

my $KEY = 'presence:{global}';
my $SKEY = "$KEY:s";

sub hb {
    my ($user, $sid, $path) = @_;
    my %b = (user_id => $user);
    $b{session_id} = $sid if defined $sid;
    return $ng->post($path // '/hb', \%b);
}

sub leave {
    my ($user, $sid, $path) = @_;
    my %b = (user_id => $user);
    $b{session_id} = $sid if defined $sid;
    return $ng->post($path // '/leave', \%b);
}

sub listed {
    my ($user) = @_;
    my $res = $ng->get('/online');
    return scalar grep { $_ eq $user } @{ $res->{json}{users} || [] };
}

# the user's sessions as Redis holds them: { id => end (ms, < 0: ending) }
sub sessions_of {
    my ($user) = @_;
    my $v = $r->cmd('HGET', $SKEY, $user) // return undef;
    my %s = $v =~ /([^\n]*)\n([^\n]*)\n/g;
    return \%s;
}

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

###########################################################################
# without session_id: as before sessions, and nothing more in Redis

my $res = hb('plain');
is_deeply($res->{json}, { user_id => 'plain', room => 'global', ttl => 300,
                          online => 1, sessions => 1 },
          'heartbeat without session_id: one session');
is_deeply([$r->key_list], [$KEY, "$KEY:v"],
          '  only the room key (and its last event id: a join)');
$res = $ng->get('/online?user_id=plain');
is($res->{json}{sessions}, 1, '  lookup: one session');
$res = leave('plain');
is_deeply($res->{json}, { user_id => 'plain', room => 'global', online => 0,
                          sessions => 0 }, '  leave: gone');
is_deeply([$r->key_list], ["$KEY:v"],
          '  nothing left in Redis but the last event id');

###########################################################################
# two sessions of one user

$res = hb('ada', 'tab-1');
is($res->{json}{sessions}, 1, 'ada, first tab: one session');
is($res->{json}{online}, 1, '  one user');
$res = hb('ada', 'tab-2');
is($res->{json}{sessions}, 2, 'second tab: two sessions');
is($res->{json}{online}, 1, '  still one user');
my $s = sessions_of('ada');
is_deeply([sort keys %$s], ['tab-1', 'tab-2'], '  both in the room\'s sessions');
my $score = $r->cmd('ZSCORE', $KEY, 'ada');
my $latest = (sort { $b <=> $a } values %$s)[0];
is($score, $latest, '  the user\'s score is the end of the last session');
ok($r->cmd('PTTL', $SKEY) > 290_000, '  the sessions key expires too');
is($ng->get('/online?user_id=ada')->{json}{sessions}, 2, '  lookup: 2');
is_deeply($ng->get('/online')->{json},
          { room => 'global', ttl => 300, count => 1, users => ['ada'] },
          '  listed once');

$res = leave('ada', 'tab-1');
is_deeply($res->{json}, { user_id => 'ada', room => 'global', online => 1,
                          sessions => 1 },
          'leave of the first tab: still online, one session');
ok(listed('ada'), '  still listed');
is_deeply([keys %{ sessions_of('ada') }], ['tab-2'], '  tab-2 remains');

$res = leave('ada', 'tab-2');
is_deeply($res->{json}, { user_id => 'ada', room => 'global', online => 0,
                          sessions => 0 }, 'leave of the second: gone');
ok(!listed('ada'), '  not listed');
is_deeply([$r->key_list], ["$KEY:v"], '  room and sessions gone from Redis');

# a leave without session_id ends them all at once
hb('bea', $_) for qw(a b c);
is($ng->get('/online?user_id=bea')->{json}{sessions}, 3, 'bea: 3 sessions');
$res = leave('bea');
is_deeply($res->{json}, { user_id => 'bea', room => 'global', online => 0,
                          sessions => 0 }, 'leave without session_id: gone');
is($r->cmd('HGET', $SKEY, 'bea'), undef, '  with all of her sessions');

# a leave naming a session that does not exist changes nothing
hb('cid', 'x');
$res = leave('cid', 'nope');
is_deeply([$res->{json}{online}, $res->{json}{sessions}], [1, 1],
          'leave of an unknown session: nothing ends');
leave('cid');

# the default session and a named one are two sessions
hb('dee');
$res = hb('dee', 'tab');
is($res->{json}{sessions}, 2, 'a default and a named session: two');
$res = leave('dee', 'tab');
is($res->{json}{sessions}, 1, '  the named one ends: the default lives');
is($r->cmd('HGET', $SKEY, 'dee'), undef, '  back to the room alone');
ok(listed('dee'), '  listed');
leave('dee');

###########################################################################
# one session expires (ttl 1s) while the other heartbeats: listed throughout

hb('eve', 'short', '/short/hb');
hb('eve', 'long');
my ($always, $samples) = (1, 0);
my $t0 = time;
while (time - $t0 < 2.5) {
    hb('eve', 'long');
    $samples++;
    $always = 0 unless listed('eve');
    sleep 0.1;
}
ok($always, "eve listed in all $samples samples while one session expired");
ok(wait_for(sub { $ng->get('/online?user_id=eve')->{json}{sessions} == 1 },
            5), '  one session left');
is_deeply([keys %{ sessions_of('eve') }], ['long'],
          '  the expired one pruned from Redis');
leave('eve');

# a user whose only session expires is pruned with her sessions
hb('fay', 'gone', '/short/hb');
ok(wait_for(sub { !listed('fay') }, 5), 'fay\'s only session expires');
hb('other');
is($r->cmd('HGET', $SKEY, 'fay'), undef, '  her sessions are pruned too');
leave('other');

###########################################################################
# presence_max_sessions 2: a third session replaces the oldest

hb('gus', 's1', '/two/hb');
sleep 0.01;
hb('gus', 's2', '/two/hb');
$res = hb('gus', 's3', '/two/hb');
is($res->{json}{sessions}, 2, 'a third session: still two');
is($res->{json}{online}, 1, '  and one user');
is_deeply([sort keys %{ sessions_of('gus') }], ['s2', 's3'],
          '  the oldest, s1, was replaced');
leave('gus');

###########################################################################
# presence_leave_grace 1s

hb('hal', 'tab', '/grace/hb');
$res = leave('hal', 'tab', '/grace/leave');
is_deeply([$res->{json}{online}, $res->{json}{sessions}], [1, 0],
          'leave with a grace: still listed, no session but the ending one');
ok(sessions_of('hal')->{tab} < 0, '  the session is marked as ending');
my $end = -sessions_of('hal')->{tab};
ok($end - $r->time_ms <= 1000, '  within the grace');

# the page reloads: the same session heartbeats again within the grace
$res = hb('hal', 'tab', '/grace/hb');
is($res->{json}{sessions}, 1, 'heartbeat within the grace: the session lives');
ok(sessions_of('hal')->{tab} > 0, '  no longer ending');
($always, $samples) = (1, 0);
$t0 = time;
while (time - $t0 < 1.5) {
    $samples++;
    $always = 0 unless listed('hal');
    sleep 0.05;
}
ok($always, "  never unlisted ($samples samples over 1.5 s)");

# without the heartbeat, the session ends after the grace
$t0 = time;
leave('hal', 'tab', '/grace/leave');
ok(listed('hal'), 'leave, no heartbeat: listed during the grace');
ok(wait_for(sub { !listed('hal') }, 5), '  unlisted after it');
ok(time - $t0 >= 0.9, '  not before the grace') or diag time - $t0;
is($r->cmd('HGET', $SKEY, 'hal'), undef, '  and gone from the sessions');

# a leave without session_id is at once, grace or not
hb('ivy', 'tab', '/grace/hb');
$r->cmd('SET', 'marker', 1);
$res = $ng->post('/grace/leave', { user_id => 'ivy' });
is($res->{json}{online}, 0, 'grace location, no session_id: gone at once');
ok(!listed('ivy'), '  unlisted');
$r->cmd('DEL', 'marker');

###########################################################################
# identity from nginx: the body gives the session only

$res = $ng->post('/hbv', { user_id => 'mallory', session_id => 'v1' },
                 headers => ['X-User' => 'jon']);
is_deeply([$res->{json}{user_id}, $res->{json}{sessions}], ['jon', 1],
          'variable identity with a session_id');
$ng->post('/hbv', { session_id => 'v2' }, headers => ['X-User' => 'jon']);
is_deeply([sort keys %{ sessions_of('jon') }], ['v1', 'v2'],
          '  sessions from the body');
is($r->cmd('ZSCORE', $KEY, 'mallory'), undef, '  the body\'s user_id ignored');
$res = $ng->post('/hbv', '{{{', headers => ['X-User' => 'jon']);
is($res->{json}{sessions}, 3, '  a body that is no JSON: the default session');
$res = $ng->post('/leavev', { session_id => 'v1' },
                 headers => ['X-User' => 'jon']);
is($res->{json}{sessions}, 2, '  leave of one session by variable identity');
$res = $ng->post('/hbv', { session_id => '' }, headers => ['X-User' => 'jon']);
is($res->{status}, 400, '  an empty session_id: 400');
$ng->post('/leavev', '', headers => ['X-User' => 'jon']);

###########################################################################
# the rules of session_id: 400 invalid_session_id, Redis unchanged

sub rejects {
    my ($name, $body, $code) = @_;
    my $before = $r->snapshot;
    my $res = $ng->post('/hb', $body);
    api_error_ok($res, 400, $code // 'invalid_session_id', $name);
    is_deeply($r->snapshot, $before, '  redis unchanged');
}

hb('keep', 'k1');
my %bad = (
    'empty'                  => '""',
    '65 bytes'               => '"' . ('s' x 65) . '"',
    'a number'               => '5',
    'null'                   => 'null',
    'an object'              => '{"a":1}',
    'an array'               => '["a"]',
    'a newline'              => '"a\nb"',
    'CR LF'                  => '"a\r\nSET x 1\r\n"',
    'RESP'                   => '"*1\r\n$4\r\nPING\r\n"',
    'a NUL'                  => '"a\u0000b"',
    'DEL'                    => '"a\u007fb"',
    'a C1 control'           => '"a\u0085b"',
);
for my $name (sort keys %bad) {
    rejects("session_id $name", qq({"user_id":"keep","session_id":$bad{$name}}));
}
rejects('session_id of invalid UTF-8', qq({"user_id":"keep","session_id":"\xff"}),
        'invalid_json');
rejects('session_id of a lone surrogate',
        '{"user_id":"keep","session_id":"\ud800"}', 'invalid_json');
rejects('two session_id keys',
        '{"user_id":"keep","session_id":"a","session_id":"b"}', 'invalid_json');
rejects('a bad user_id comes first',
        '{"user_id":"","session_id":"ok"}', 'invalid_user_id');
$res = $ng->post('/leave', qq({"user_id":"keep","session_id":"a\nb"}));
api_error_ok($res, 400, 'invalid_json', 'leave: a raw newline');
$res = $ng->post('/leave', '{"user_id":"keep","session_id":"a\nb"}');
api_error_ok($res, 400, 'invalid_session_id', 'leave: an escaped newline');
$res = $ng->post('/leave', '{"user_id":"keep","session_id":7}');
api_error_ok($res, 400, 'invalid_session_id', 'leave: a number');
is_deeply([keys %{ sessions_of('keep') }], ['k1'], '  k1 untouched');

# odd but valid session ids are stored as sent, in the user's field only
for my $sid ('s' x 64, '{x}', '}{', 'a b', "caf\x{e9}", '*', '$4', ':s',
             'presence:{global}')
{
    my $before = $r->snapshot;
    $res = $ng->post('/hb', { user_id => 'odd', session_id => $sid });
    is($res->{status}, 200, "session_id '$sid': 200");
    my $after = $r->snapshot;
    delete @$_{"0/$KEY", "0/$SKEY", "0/$KEY:v"} for $before, $after;
    is_deeply($after, $before, '  no other key');
    ok(exists sessions_of('odd')->{ Encode::encode_utf8($sid) },
       '  stored as sent');
    leave('odd');
}

leave('keep');
is_deeply([$r->key_list], ["$KEY:v"],
          'all gone: nothing left in Redis but the last event id');

done_testing;
