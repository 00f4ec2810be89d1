#!/usr/bin/perl

# Redis on a unix socket with a password, a database other than 0 and two
# workers: a connection per worker, AUTH and SELECT on every new
# connection, the keys land in that database;
# a restart on the same socket is survived; a password the server no
# longer accepts gives quick 503s and an error in the log, and the worker
# recovers when the password is right again.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use Presence::Test;

need_module();

my $r = start_redis(unix => 1, password => 'pw1');
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr, TIMEOUT => conf_time(1) }, workers => 2);
presence_redis %%REDIS%%;
presence_redis_password pw1;
presence_redis_db 4;
presence_redis_timeout %%TIMEOUT%%;

server {
    listen 127.0.0.1:%%PORT%%;
    location = /hb     { presence_heartbeat; }
    location = /online { presence_online; }
}
EOF

like($r->addr, qr/^unix:/, 'redis on a unix socket');
ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected, authenticated');

my $res = $ng->post('/hb', { user_id => 'alice' });
is($res->{status}, 200, 'heartbeat over the unix socket');
is_deeply([$r->key_list(4)], ['presence:{global}', 'presence:{global}:v'],
          'key and last event id in db 4');
is_deeply([$r->key_list(0)], [], 'nothing in db 0');

sub module_clients { grep { /\bdb=4\b/ } split /\n/, $r->cmd('CLIENT', 'LIST') }
ok(wait_for(sub { module_clients() == 2 }, 3),
   'two workers: two connections, both on db 4')
    or diag $r->cmd('CLIENT', 'LIST');
my %seen;
for (1 .. 40) {
    my $x = $ng->post('/hb', { user_id => "w$_" });
    $seen{ $x->{status} }++;
}
is_deeply(\%seen, { 200 => 40 }, '40 heartbeats: all 200');
is(scalar(module_clients()), 2, '  still two connections');

is($ng->get('/online')->{json}{count}, 41, 'listing');

# restart on the same socket
my $t = time;
$r->restart;
ok(wait_for(sub { $ng->post('/hb', { user_id => 'bob' })->{status} == 200 }, 3),
   'redis restarted on the same socket: heartbeats again');
ok(time - $t < 1 + scaled(1.5), '  within 2 s of the restart') or diag time - $t;
is_deeply([$r->key_list(4)], ['presence:{global}', 'presence:{global}:v'],
          '  into db 4 again');

# the password changes under the worker: reconnect fails AUTH
my $lines = () = $ng->log_text =~ /\n/g;
$r->set_password('other');
$r->cmd('CLIENT', 'KILL', 'TYPE', 'normal');

my $all = 1;
$t = time;
while (time - $t < 1) {
    my $x = $ng->post('/hb', { user_id => 'carol' });
    $all = 0 unless $x->{status} == 503 && $x->{elapsed} < scaled(0.3)
                    && ($x->{json}{error} // '') eq 'redis_unavailable';
}
ok($all, 'wrong password: every request a quick 503');
my @new = split /\n/, $ng->log_text;
splice @new, 0, $lines;
ok(grep({ /\[(?:error|crit|warn)\].*redis/i } @new), 'the failure is logged')
    or diag join "\n", @new;
ok(!grep({ /pw1/ } split /\n/, $ng->log_text), '  without the password');
is($r->cmd({ db => 4 }, 'ZSCORE', 'presence:{global}', 'carol'), undef,
   '  nothing written');

$t = time;
$r->set_password('pw1');
ok(wait_for(sub { module_clients() == 2 }, 3),
   'right password again: both workers reconnect by themselves');
ok(time - $t < 1 + scaled(1), '  within 2 s') or diag time - $t;
%seen = ();
$seen{ $ng->post('/hb', { user_id => "dave$_" })->{status} }++ for 1 .. 20;
is_deeply(\%seen, { 200 => 20 }, '  and answer');

done_testing;
