#!/usr/bin/perl

# SECURITY.md, one mitigation at a time: each section below is the test of
# the section of the same number there.
#
#   1. identity from authentication (auth_basic + $remote_user,
#      auth_request + auth_request_set), never from the body
#   2. flooding: entries expire with the TTL, limit_req in front of the
#      heartbeat writes nothing for what it rejects, a map whitelist of rooms
#   3. key namespaces: presence_key_prefix isolates, a room cannot leave it
#   4. Redis AUTH (presence_redis_password)
#   5. no user id in error.log above info
#   6. listings bounded by presence_online_limit, bodies by
#      presence_max_body_size
#   7. ids that look like Redis commands are data (argv, never a string)
#   8. what presence_status shows

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw(encode_base64);
use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr, AUTH_PORT => free_port(), FLOOD_TTL => conf_time(1) }, no_start => 1);
presence_redis %%REDIS%%;
presence_ttl 300s;

# 2. one heartbeat a minute per address, 2 more in a burst
limit_req_zone $binary_remote_addr zone=hb:1m rate=1r/m;
limit_req_zone $binary_remote_addr zone=hb503:1m rate=1r/m;

# 2. rooms from a whitelist: anything else is the lobby
map $arg_room $presence_room_checked {
    default lobby;
    lobby   lobby;
    dev     dev;
}

# 1. the stand-in for an auth service: a token to a user
map $http_authorization $token_user {
    default              "";
    "Bearer tok-alice"   alice;
    "Bearer tok-bob"     bob;
    "Bearer tok-nobody"  "-";       # a valid token without a user
}
map $token_user $token_header {
    "-"     "";
    default $token_user;
}

server {
    listen 127.0.0.1:%%AUTH_PORT%%;
    location = /check {
        if ($token_user = "") {
            return 401;
        }
        add_header X-User $token_header;
        return 204;
    }
}

server {
    listen 127.0.0.1:%%PORT%%;

    # 1. auth_basic
    location = /basic/hb {
        auth_basic "presence";
        auth_basic_user_file %%DIR%%/htpasswd;
        presence_room basic;
        presence_heartbeat $remote_user;
    }
    location = /basic/leave {
        auth_basic "presence";
        auth_basic_user_file %%DIR%%/htpasswd;
        presence_room basic;
        presence_leave $remote_user;
    }

    # 1. auth_request
    location = /_auth {
        internal;
        proxy_pass http://127.0.0.1:%%AUTH_PORT%%/check;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
    }
    location = /sso/hb {
        auth_request /_auth;
        auth_request_set $presence_user $upstream_http_x_user;
        presence_room sso;
        presence_heartbeat $presence_user;
    }

    # 2.
    location = /rl/hb {
        limit_req zone=hb burst=2 nodelay;
        limit_req_status 429;
        presence_room rl;
        presence_heartbeat;
    }
    location = /rl503/hb {
        limit_req zone=hb503 burst=2 nodelay;
        presence_room rl503;
        presence_heartbeat;
    }
    location = /wl/hb     { presence_room $presence_room_checked; presence_heartbeat; }
    location = /wl/online { presence_room $presence_room_checked; presence_online; }
    location = /flood/hb {
        presence_ttl %%FLOOD_TTL%%;
        presence_key_prefix "flood:";
        presence_room $arg_room;
        presence_heartbeat;
    }

    # 3.
    location = /app1/hb     { presence_key_prefix "app1:"; presence_room $arg_room; presence_heartbeat; }
    location = /app1/online { presence_key_prefix "app1:"; presence_room $arg_room; presence_online; }
    location = /app2/hb     { presence_key_prefix "app2:"; presence_room $arg_room; presence_heartbeat; }
    location = /app2/leave  { presence_key_prefix "app2:"; presence_room $arg_room; presence_leave; }
    location = /app2/online { presence_key_prefix "app2:"; presence_room $arg_room; presence_online; }

    # 6.
    location = /big/hb     { presence_room big; presence_heartbeat; }
    location = /big/online { presence_room big; presence_online_limit 10; presence_online; }
    location = /small/hb   { presence_room small; presence_max_body_size 64; presence_heartbeat; }

    # 7.
    location = /hb { presence_heartbeat; }
    location = /r/hb { presence_room $arg_room; presence_heartbeat; }

    # 8.
    location = /status { presence_status; }
    location = /status-local { presence_status; allow 10.255.255.1; deny all; }
}
EOF

# the password file, outside the document root
spew($ng->dir . '/htpasswd',
     'alice:' . crypt('alice-pw', '$6$pr3s3nc3$') . "\n"
     . "bob:{PLAIN}bob-pw\n");
$ng->start;

ok(wait_for(sub { $ng->get('/wl/online')->{status} == 200 }, 5),
   'module connected to redis');

sub basic { ('Authorization' => 'Basic ' . encode_base64("$_[0]:$_[1]", '')) }
sub bearer { ('Authorization' => "Bearer $_[0]") }
sub members {
    my ($key) = @_;
    return [sort @{ $r->cmd('ZRANGE', $key, 0, -1) }];
}

###########################################################################
# 1. identity spoofing

# auth_basic + presence_heartbeat $remote_user
{
    my $before = $r->snapshot;
    my $res = $ng->post('/basic/hb', { user_id => 'mallory' });
    is($res->{status}, 401, 'basic: no credentials: 401 from nginx');
    like($res->{headers}{'www-authenticate'} // '', qr/^Basic /,
         '  with WWW-Authenticate');
    $res = $ng->post('/basic/hb', { user_id => 'mallory' },
                     headers => [basic('alice', 'wrong')]);
    is($res->{status}, 401, 'basic: wrong password: 401');
    $res = $ng->post('/basic/hb', { user_id => 'mallory' },
                     headers => [basic('mallory', 'x')]);
    is($res->{status}, 401, 'basic: unknown user: 401');
    is_deeply($r->snapshot, $before, '  nothing written for any of them');

    $res = $ng->post('/basic/hb', { user_id => 'mallory' },
                     headers => [basic('alice', 'alice-pw')]);
    json_ok($res, 'basic: alice (crypt() password) heartbeats');
    is($res->{json}{user_id}, 'alice', '  as alice, the body\'s user_id ignored');
    $res = $ng->post('/basic/hb', undef, headers => [basic('bob', 'bob-pw')]);
    is($res->{json}{user_id}, 'bob', 'basic: bob ({PLAIN} password), no body');
    is_deeply(members('presence:{basic}'), ['alice', 'bob'],
              '  redis has alice and bob, no mallory');

    $res = $ng->post('/basic/leave', { user_id => 'alice' },
                     headers => [basic('bob', 'bob-pw')]);
    is($res->{json}{user_id}, 'bob', 'basic: bob\'s leave naming alice leaves bob');
    is_deeply(members('presence:{basic}'), ['alice'], '  alice still online');
}

# auth_request + auth_request_set + presence_heartbeat $presence_user
{
    my $before = $r->snapshot;
    my $res = $ng->post('/sso/hb', { user_id => 'mallory' });
    is($res->{status}, 401, 'auth_request: no token: 401 from the auth service');
    $res = $ng->post('/sso/hb', { user_id => 'mallory' },
                     headers => [bearer('forged'), 'X-User' => 'mallory']);
    is($res->{status}, 401, 'auth_request: a forged token and an X-User header: 401');
    is_deeply($r->snapshot, $before, '  nothing written');

    $res = $ng->post('/sso/hb', { user_id => 'mallory' },
                     headers => [bearer('tok-alice')]);
    json_ok($res, 'auth_request: alice\'s token heartbeats');
    is($res->{json}{user_id}, 'alice', '  as the user the auth service named');
    $res = $ng->post('/sso/hb', undef,
                     headers => [bearer('tok-bob'), 'X-User' => 'mallory']);
    is($res->{json}{user_id}, 'bob',
       '  a client\'s own X-User header is not the auth service\'s');
    is_deeply(members('presence:{sso}'), ['alice', 'bob'], '  redis: alice, bob');

    $before = $r->snapshot;
    $res = $ng->post('/sso/hb', { user_id => 'mallory' },
                     headers => [bearer('tok-nobody')]);
    api_error_ok($res, 401, 'no_identity',
                 'auth_request: accepted but no user named: 401 no_identity');
    is_deeply($r->snapshot, $before, '  nothing written');
}

###########################################################################
# 2. flooding with made-up users or rooms

# entries expire with the TTL, the keys with them
{
    my %st;
    for my $i (1 .. 200) {
        $st{ $ng->post('/flood/hb?room=r' . ($i % 20),
                       { user_id => "made-up-$i" })->{status} }++;
    }
    is_deeply(\%st, { 200 => 200 }, 'flood: 200 made-up users in 20 made-up rooms');
    # a room's key, and its last event id (each made-up user joined)
    my @keys = grep { /^flood:/ && !/:v$/ } $r->key_list;
    my @ids = grep { /^flood:.*:v$/ } $r->key_list;
    is(scalar @keys, 20, '  20 keys');
    is(scalar @ids, 20, '  and 20 last event ids');
    # presence_ttl, and 2 x presence_redis_timeout (1s) + 1s for the sweeps
    ok(!grep({ my $t = $r->cmd('PTTL', $_);
               $t < 0 || $t > scaled(1) * 1000 + 3000 } @keys),
       '  each with a TTL of at most presence_ttl (1s) + 3s');
    ok(!grep({ my $t = $r->cmd('PTTL', $_); $t < 0 || $t > 61000 } @ids),
       '  the ids with one of at most a minute');
    ok(wait_for(sub { !grep { /^flood:/ && !/:v$/ } $r->key_list },
                4 + scaled(1)),
       '  all rooms gone once the TTL has passed');
}

# limit_req in front of the heartbeat
{
    my @st;
    for my $i (1 .. 8) {
        push @st, $ng->post('/rl/hb', { user_id => "rl$i" })->{status};
    }
    is("@st", '200 200 200 429 429 429 429 429',
       'limit_req burst=2 nodelay, limit_req_status 429: 3 pass, 5 refused');
    is_deeply(members('presence:{rl}'), ['rl1', 'rl2', 'rl3'],
              '  only the 3 accepted are in redis');

    @st = ();
    for my $i (1 .. 5) {
        push @st, $ng->post('/rl503/hb', { user_id => "rl$i" })->{status};
    }
    is("@st", '200 200 200 503 503', 'limit_req without limit_req_status: 503');
    is_deeply(members('presence:{rl503}'), ['rl1', 'rl2', 'rl3'],
              '  nothing written for the refused');
}

# rooms from a map whitelist
{
    my %seen;
    for my $room ('lobby', 'dev', 'evil', 'DEV', 'dev2', '*', '}x{', '') {
        my $res = $ng->post("/wl/hb?room=$room", { user_id => "w-$room" });
        $seen{$room} = $res->{json} ? $res->{json}{room} : $res->{status};
    }
    is_deeply(\%seen, { lobby => 'lobby', dev => 'dev', evil => 'lobby',
                        DEV => 'dev', dev2 => 'lobby', '*' => 'lobby',
                        '}x{' => 'lobby',
                        '' => 'lobby' },
              'map whitelist: known rooms (any case) give the listed name, '
              . 'anything else the lobby');
    is_deeply([grep { /^presence:\{(?!basic|sso|rl)/ && !/:v$/ }
               $r->key_list],
              ['presence:{dev}', 'presence:{lobby}'],
              '  no key for a room outside the list');
    is($ng->get('/wl/online?room=evil')->{json}{room}, 'lobby',
       '  listings map the same way');
}

###########################################################################
# 3. key namespaces

{
    $ng->post('/app1/hb?room=global', { user_id => 'one' });
    $ng->post('/app2/hb?room=global', { user_id => 'two' });
    is_deeply(members('app1:{global}'), ['one'], 'prefix app1: has its user');
    is_deeply(members('app2:{global}'), ['two'], 'prefix app2: has its user');
    is_deeply($ng->get('/app2/online?room=global')->{json}{users}, ['two'],
              '  app2 lists only its own');
    $ng->post('/app2/leave?room=global', { user_id => 'one' });
    is_deeply(members('app1:{global}'), ['one'],
              '  a leave through app2 does not reach app1');

    # rooms that try to leave the prefix: refused, or a key of their own
    # that starts with the prefix and ends with the room's closing brace
    my $app2 = $r->cmd('ZRANGE', 'app2:{global}', 0, -1, 'WITHSCORES');
    my %before = map { $_ => 1 } $r->key_list;
    my @rooms = ('}', '{', '}{', '*', ':', 'a:b', '*:*', '}app2:{global',
                 'global}', '{global}', 'app2:{global}', '../app2', '}*{');
    my (@taken, @refused);
    for my $room (@rooms) {
        my $res = $ng->post("/app1/hb?room=$room", { user_id => 'esc' });
        if ($res->{status} == 200) {
            push @taken, $room;
        } else {
            push @refused, $room if $res->{status} == 400
                                    && ($res->{json}{error} // '') eq 'invalid_room';
        }
    }
    note "taken: @taken; refused: @refused";
    is(@taken + @refused, scalar @rooms,
       'rooms with } { * : are taken or refused with 400 invalid_room')
        or diag "taken: @taken; refused: @refused";
    my @new = grep { !$before{$_} } $r->key_list;
    is_deeply([sort @new], [sort map { ("app1:{$_}", "app1:{$_}:v") } @taken],
              '  each taken room has exactly the keys app1:{<room>} and its '
              . 'last event id, nothing else');
    is_deeply($r->cmd('ZRANGE', 'app2:{global}', 0, -1, 'WITHSCORES'), $app2,
              '  app2:{global} untouched');
    ok(!grep({ !/^app1:\{/ } @new), '  every new key starts with app1:{');

    my ($rc, $out) = test_config(<<'EOF');
server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb { presence_key_prefix "app}:"; presence_heartbeat; }
}
EOF
    ok($rc != 0 && $out =~ /presence_key_prefix/,
       'a prefix with a brace is refused by nginx -t') or diag $out;
}

###########################################################################
# 4. Redis AUTH

{
    my $ra = start_redis(password => 'Redis-Pw-7');
    my $conf = <<'EOF';
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;
%%PASSWORD%%
server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /online { presence_online; }
}
EOF
    my %v = (REDIS => $ra->addr, TIMEOUT => conf_time(0.5));
    my $none = start_nginx($conf, vars => { %v, PASSWORD => '' });
    my $wrong = start_nginx($conf, vars => { %v,
        PASSWORD => 'presence_redis_password "Not-The-Pw-3";' });
    my $right = start_nginx($conf, vars => { %v,
        PASSWORD => 'presence_redis_password "Redis-Pw-7";' });

    ok(wait_for(sub { $right->get('/online')->{status} == 200 }, 5),
       'redis with requirepass, the right password: 200');
    json_ok($right->post('/hb', { user_id => 'auth-ok' }), '  heartbeat');
    is_deeply([$ra->key_list], ['presence:{global}', 'presence:{global}:v'],
              '  written');

    for ([$none, 'no password'], [$wrong, 'a wrong password']) {
        my ($n, $what) = @$_;
        my $res = $n->post('/hb', { user_id => 'auth-no' });
        api_error_ok($res, 503, 'redis_unavailable', "$what: 503 redis_unavailable");
        ok($res->{elapsed} < scaled(0.5), '  at once') or diag $res->{elapsed};
        ok(wait_for(sub { $n->log_text =~ /\[error\].*redis/ }, 3),
           '  an error in the log') or diag $n->log_text;
        unlike($n->log_text, qr/Redis-Pw-7|Not-The-Pw-3/, '  without a password in it');
    }
    is($ra->cmd('ZSCORE', 'presence:{global}', 'auth-no'), undef,
       'nothing written without the password');
    $_->stop for $none, $wrong, $right;
}

###########################################################################
# 5. what is logged: no user id on a line above info

{
    my $rl = start_redis();
    my $nl = start_nginx(<<'EOF', vars => { REDIS => $rl->addr, TIMEOUT => conf_time(0.3) });
presence_redis %%REDIS%%;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    client_max_body_size 16k;
    location = /hb     { presence_heartbeat; presence_max_body_size 1k; }
    location = /leave  { presence_leave; }
    location = /online { presence_online; }
    location = /hbv    { presence_heartbeat $http_x_user; }
}
EOF
    ok(wait_for(sub { $nl->get('/online')->{status} == 200 }, 5), 'log: nginx up');
    my $ID = 'Zq7Secret';
    my $json = sub { qq({"user_id":"$_[0]"}) };

    my $requests = sub {
        my @st;
        push @st, $nl->post('/hb', $json->($ID))->{status};
        push @st, $nl->post('/hbv', undef, headers => ['X-User' => $ID])->{status};
        push @st, $nl->post('/leave', $json->($ID))->{status};
        # bad ones
        push @st, $nl->post('/hb', qq({"user_id":"$ID"))->{status};
        push @st, $nl->post('/hb', qq({"user_id":"$ID\\u0001"}))->{status};
        push @st, $nl->post('/hb', $json->($ID x 20))->{status};
        push @st, $nl->post('/hb', $json->($ID) . (' ' x 2000))->{status};
        push @st, $nl->post('/hb', $json->($ID) . (' ' x 20000))->{status};
        push @st, $nl->post('/hb', $json->($ID),
                            headers => ['Content-Type' => 'text/html'])->{status};
        push @st, $nl->get("/hb?user_id=$ID")->{status};
        return join ' ', @st;
    };

    is($requests->(), '200 200 200 400 400 400 413 413 415 405',
       'log: good and bad requests with a distinctive id');

    $rl->cmd('SET', 'presence:{global}', 'not a sorted set');
    like($requests->(), qr/^503 503 503 /,
         'log: the same while redis answers errors (a key of the wrong type)');
    is($nl->get("/online?user_id=$ID")->{status}, 503, '  a lookup too');
    $rl->cmd('DEL', 'presence:{global}');

    $rl->kill_stop;
    like($requests->(), qr/^504 /, 'log: the same while redis is frozen');
    $rl->cont;
    $rl->stop;
    like($requests->(), qr/^503 503 503 /, 'log: the same while redis is down');
    is($nl->get("/online?user_id=$ID")->{status}, 503, '  a lookup too');
    $rl->start;
    ok(wait_for(sub { $nl->post('/hb', $json->($ID))->{status} == 200 }, 5),
       'log: redis back');

    my @lines = split /\n/, $nl->log_text;
    my @above = grep { /\[(?:warn|notice|error|crit|alert|emerg)\]/ } @lines;
    ok(scalar(grep { /\[error\]/ } @above), 'log: errors were logged')
        or diag $nl->log_text;
    my @leaks = grep { /\Q$ID\E/ } @above;
    my @body_leaks = grep { !/request: "GET \/online\?user_id=\Q$ID\E / } @leaks;
    ok(!@body_leaks, 'log: the id never on a line above info')
        or diag join "\n", @body_leaks;
    ok(!@leaks, 'log: not even the request line of a lookup')
        or diag join "\n", @leaks;
    my @answers = grep { /answers an error/ } @above;
    ok(@answers >= 1 && @answers <= 2,
       'log: an error reply of redis logged once per connection, '
       . 'not once per request') or diag join "\n", @answers;
    $nl->stop;
}

###########################################################################
# 6. sizes

{
    my $long = 'x' x 100;
    for my $i (1 .. 50) {
        $ng->post('/big/hb', { user_id => sprintf('%s%03d', $long, $i) });
    }
    my $res = $ng->get('/big/online');
    json_ok($res, 'presence_online_limit 10, 50 users online');
    is($res->{json}{count}, 50, '  count is the full 50');
    is(scalar @{ $res->{json}{users} }, 10, '  10 users listed');
    my $bound = 10 * (103 + 1) + 100;
    ok(length($res->{body}) <= $bound,
       "  body of " . length($res->{body}) . " bytes, at most $bound");
    $res = $ng->get('/big/online?limit=1000');
    is(scalar @{ $res->{json}{users} }, 10, '  ?limit=1000 is capped to 10');
    ok(length($res->{body}) <= $bound, '  same bound');

    my $b64 = '{"user_id":"s","pad":"' . ('p' x 40) . '"}';
    is(length $b64, 64, 'a body of 64 bytes');
    is($ng->post('/small/hb', $b64)->{status}, 200,
       '  presence_max_body_size 64: accepted');
    my $before = $r->snapshot;
    my $b65 = '{"user_id":"t","pad":"' . ('p' x 41) . '"}';
    api_error_ok($ng->post('/small/hb', $b65), 413, 'body_too_large',
                 '65 bytes: 413 body_too_large');
    is_deeply($r->snapshot, $before, '  nothing written');
}

###########################################################################
# 7. ids that look like Redis commands are data

{
    my $before = $r->snapshot;
    my @ids = ('*3 $3 SET $4 pwnd $1 x', 'FLUSHALL', 'EVAL "redis.call(\'FLUSHALL\')" 0',
               'KEYS *', 'presence:{sso}');
    my $all = 1;
    for my $id (@ids) {
        my $res = $ng->post('/hb', JSON::PP->new->encode({ user_id => $id }));
        $all &&= $res->{status} == 200 && $res->{json}{user_id} eq $id;
    }
    ok($all, 'ids that look like Redis commands: 200, echoed as sent');
    is_deeply(members('presence:{global}'), [sort @ids],
              '  stored verbatim as members of presence:{global}');
    my %after = %{ $r->snapshot };
    my %b = %$before;
    # the room, and its last event id (the joins of the streams)
    delete @$_{'0/presence:{global}', '0/presence:{global}:v'} for \%after, \%b;
    is_deeply(\%after, \%b, '  no other key touched, nothing flushed');

    my $res = $ng->post('/r/hb?room=FLUSHALL', { user_id => 'r' });
    is($res->{json}{room}, 'FLUSHALL', 'a room named FLUSHALL');
    ok(defined $r->cmd('ZSCORE', 'presence:{FLUSHALL}', 'r'),
       '  is a key, presence:{FLUSHALL}');
}

###########################################################################
# 8. presence_status

{
    my $res = $ng->get('/status');
    json_ok($res, 'status');
    unlike($res->{body}, qr/alice|bob|mallory|rl1|made-up/,
           '  holds counters and pids, no user id');
    unlike($ng->get('/status?format=prometheus')->{body}, qr/alice|bob|rl1/,
           '  in Prometheus text neither');
    is($ng->get('/status-local')->{status}, 403, '  behind allow/deny: 403');
}

done_testing;
