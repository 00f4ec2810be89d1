#!/usr/bin/perl

# Directives: every one accepted with valid values in each context it is
# allowed in, each bad value refused by `nginx -t` with a message that
# names the directive, and the .so loads into the stock nginx.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Presence::Test;

need_module();

# a config that uses every directive, in every context it may appear in
my $all = <<'EOF';
presence_redis 127.0.0.1:6379;
presence_redis_password "s3cret";
presence_redis_db 3;
presence_redis_timeout 250ms;
presence_ttl 30s;
presence_key_prefix "app:";
presence_room lobby;
presence_online_limit 50;
presence_max_id_length 64;
presence_max_body_size 2k;
presence_online_cache 0;

server {
    listen 127.0.0.1:%%PORT%%;
    presence_ttl 1500ms;
    presence_key_prefix "site:";
    presence_room $host;
    presence_online_limit 1;
    presence_max_id_length 1024;
    presence_max_body_size 100;
    presence_online_cache 2s;

    location = /hb {
        presence_ttl 1s;
        presence_key_prefix "";
        presence_room $arg_room;
        presence_online_limit 100000;
        presence_max_id_length 1;
        presence_max_body_size 1m;
        presence_heartbeat;
    }
    location = /hbv { presence_heartbeat $http_x_user; }
    location = /hbr { presence_heartbeat "$remote_user"; }
    location = /leave { presence_leave; }
    location = /leavev { presence_leave $http_x_user; }
    location = /online { presence_online; presence_online_cache 500ms; }
    location = /status { presence_status; }
    location = /static { }
}
EOF

my ($rc, $out) = test_config($all);
is($rc, 0, 'every directive accepted') or diag $out;
like($out, qr/test is successful/, 'nginx -t says so');

# the .so alone, with nothing configured, loads into the stock nginx
($rc, $out) = test_config("server { listen 127.0.0.1:%%PORT%%; }");
is($rc, 0, 'module loads without any presence directive') or diag $out;

# other address forms
for my $addr ('localhost:6379', '[::1]:6379', 'unix:/tmp/redis.sock',
              '127.0.0.1:1', '127.0.0.1:65535')
{
    ($rc, $out) = test_config("presence_redis $addr;\n"
        . "server { listen 127.0.0.1:%%PORT%%; "
        . "location / { presence_online; } }");
    is($rc, 0, "presence_redis $addr accepted") or diag $out;
}

# presence_room constants at the edges: 128 bytes (the default maximum),
# UTF-8, punctuation
for my $room ('a' x 128, "caf\xc3\xa9", '"{x}"', 'room-1_b.c') {
    ($rc, $out) = test_config("server { listen 127.0.0.1:%%PORT%%; "
        . "location / { presence_room $room; presence_online; } }");
    is($rc, 0, 'presence_room ' . substr($room, 0, 20) . ' accepted')
        or diag $out;
}

# Each refusal: [http-context text, directive the message must name,
# optional pattern the message must match, test name]
my $srv = sub { "server { listen 127.0.0.1:%%PORT%%; $_[0] }" };
my $loc = sub { $srv->("location / { $_[0] }") };

my @bad = (
    # addresses
    ['presence_redis 127.0.0.1:70000;', 'presence_redis', 'port out of range'],
    ['presence_redis 127.0.0.1:0;', 'presence_redis', 'port 0'],
    ['presence_redis 127.0.0.1:abc;', 'presence_redis', 'port not a number'],
    ['presence_redis "";', 'presence_redis', 'empty address'],
    ['presence_redis unix:;', 'presence_redis', 'empty unix path'],
    ['presence_redis no-such-host.invalid:6379;', 'presence_redis',
     'name that does not resolve'],
    ['presence_redis 127.0.0.1:6379 127.0.0.1:6380;', 'presence_redis',
     'two addresses'],
    ['presence_redis 127.0.0.1:6379; presence_redis 127.0.0.1:6380;',
     'presence_redis', 'presence_redis twice'],
    [$srv->('presence_redis 127.0.0.1:6379;'), 'presence_redis',
     'presence_redis in server'],

    # db, password, timeout
    ['presence_redis_db -1;', 'presence_redis_db', 'negative db'],
    ['presence_redis_db abc;', 'presence_redis_db', 'db not a number'],
    ['presence_redis_password;', 'presence_redis_password', 'no password'],
    [$loc->('presence_redis_db 1;'), 'presence_redis_db', 'db in location'],
    ['presence_redis_timeout 0;', 'presence_redis_timeout', 'timeout 0'],
    ['presence_redis_timeout 0s;', 'presence_redis_timeout', 'timeout 0s'],
    ['presence_redis_timeout abc;', 'presence_redis_timeout', 'bad timeout'],
    [$loc->('presence_redis_timeout 1s;'), 'presence_redis_timeout',
     'timeout in location'],

    # ttl
    ['presence_ttl 0;', 'presence_ttl', 'ttl 0'],
    [$loc->('presence_ttl 0s;'), 'presence_ttl', 'ttl 0s in location'],
    ['presence_ttl -5s;', 'presence_ttl', 'negative ttl'],
    ['presence_ttl abc;', 'presence_ttl', 'bad ttl'],

    # prefix
    ['presence_key_prefix "a{b";', 'presence_key_prefix', 'prefix with {'],
    [$loc->('presence_key_prefix "a}";'), 'presence_key_prefix',
     'prefix with } in location'],
    [$srv->('presence_key_prefix "{";'), 'presence_key_prefix',
     'prefix { in server'],

    # room constants that are not valid rooms
    [$loc->('presence_room "";'), 'presence_room', 'empty room'],
    [$loc->('presence_room a; presence_room b;'), 'presence_room',
     'is duplicate', 'room twice'],
    [$loc->('presence_room ' . ('r' x 129) . ';'), 'presence_room',
     'room of 129 bytes'],
    [$loc->('presence_room "a\tb";'), 'presence_room', 'room with a tab'],
    [$loc->("presence_room \"caf\xc3\";"), 'presence_room',
     'room that is not UTF-8'],

    # content handlers
    [$loc->('presence_heartbeat; presence_heartbeat;'), 'presence_heartbeat',
     'is duplicate', 'heartbeat twice'],
    [$loc->('presence_online; presence_online;'), 'presence_online',
     'is duplicate', 'online twice'],
    [$loc->('presence_leave; presence_leave $http_x_user;'), 'presence_leave',
     'is duplicate', 'leave twice'],
    [$loc->('presence_heartbeat; presence_online;'), 'presence_online',
     'conflicts with another presence handler', 'heartbeat then online'],
    [$loc->('presence_online; presence_leave;'), 'presence_leave',
     'conflicts with another presence handler', 'online then leave'],
    [$loc->('presence_leave; presence_heartbeat $http_x_user;'),
     'presence_heartbeat', 'conflicts with another presence handler', 'leave then heartbeat'],
    [$loc->('presence_heartbeat; presence_status;'), 'presence_status',
     'heartbeat then status'],
    [$loc->('presence_online now;'), 'presence_online', 'online with a value'],
    [$loc->('presence_heartbeat $a $b;'), 'presence_heartbeat',
     'heartbeat with two values'],
    ['presence_heartbeat;', 'presence_heartbeat', 'heartbeat in http'],
    [$srv->('presence_online;'), 'presence_online', 'online in server'],

    # limits
    ['presence_online_limit 0;', 'presence_online_limit', 'online limit 0'],
    ['presence_online_limit -1;', 'presence_online_limit', 'online limit -1'],
    ['presence_online_limit many;', 'presence_online_limit',
     'online limit not a number'],
    ['presence_max_id_length 0;', 'presence_max_id_length', 'id length 0'],
    [$loc->('presence_max_id_length 1025;'), 'presence_max_id_length',
     'id length 1025'],
    ['presence_max_id_length x;', 'presence_max_id_length',
     'id length not a number'],
    ['presence_max_body_size big;', 'presence_max_body_size', 'bad size'],
    ['presence_max_body_size 1k 2k;', 'presence_max_body_size',
     'two sizes'],

    ['presence_online_cache abc;', 'presence_online_cache', 'bad cache time'],
    [$loc->('presence_online_cache -1s;'), 'presence_online_cache',
     'negative cache time'],

    # not a directive of ours
    ['presence_nonsense on;', 'presence_nonsense', 'unknown directive'],
);

for my $case (@bad) {
    my ($http, $directive, $what, $name) = @$case;
    if (!defined $name) {
        $name = $what;
        $what = undef;
    }
    ($rc, $out) = test_config($http);
    my $ok = isnt($rc, 0, "refused: $name");
    $ok &&= like($out, qr/\Q$directive\E/, "  message names $directive");
    $ok &&= like($out, qr/$what/, "  message says '$what'") if defined $what;
    diag $out unless $ok;
}

# a real start with the full config: the module runs in a worker
my $ng = start_nginx($all, files => { static => 'static ok' });
is($ng->get('/static')->{body}, 'static ok', 'nginx with the module serves');

done_testing;
