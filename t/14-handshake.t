#!/usr/bin/perl

# No request's command ever runs on a connection whose handshake failed.
# Redis is frozen (SIGSTOP) while heartbeats arrive, so that they come
# while a handshake is under way; then it goes on and refuses the
# handshake: first AUTH (a password Redis does not have), then SELECT (a
# database that does not exist).  Every client gets 503 or 504, and
# nothing at all is written to Redis.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr });
presence_redis %%REDIS%%;
presence_redis_password pw;
presence_redis_db 20;
presence_redis_timeout 1s;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
}
EOF

sub refusals { () = $ng->log_text =~ /refused the handshake/g }

for my $case (['AUTH', sub { }],
              ['SELECT', sub { $r->set_password('pw') }])
{
    my ($what, $setup) = @$case;
    $setup->();

    ok(wait_for(sub { refusals() > 0 }, 10), "$what refused: logged");
    my $seen = refusals();

    # heartbeats while the handshake of a connection waits on Redis
    $r->kill_stop;
    my (@pending, %status);
    my $t = time;
    for my $i (1 .. 30) {
        push @pending, $ng->send_request(
            'POST', '/hb', body => qq({"user_id":"u$i"}),
            headers => ['Content-Type' => 'application/json']);
        sleep 0.05;
    }
    $status{ $_->finish(30)->{status} // 'none' }++ for @pending;
    $r->cont;

    my @bad = grep { $_ ne 503 && $_ ne 504 } keys %status;
    ok(!@bad, "$what refused: every heartbeat 503 or 504")
        or diag explain \%status;

    # Redis reads what was written while it was frozen, handshakes first
    ok(wait_for(sub { refusals() > $seen + 1 }, 10),
       '  redis refused the handshakes written meanwhile');
    is_deeply($r->snapshot, {}, '  and nothing was written to any database')
        or diag explain $r->snapshot;
}

done_testing;
