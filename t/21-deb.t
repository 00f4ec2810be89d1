#!/usr/bin/perl

# The Debian package on the real system, so only with DEB_TEST=1 and as
# root (make deb-test builds the package first and sets both):
#
# apt-get install ./libnginx-mod-http-presence_*.deb; its Depends name the
# installed nginx's nginx-abi-* and the hiredis, jansson and jQuery packages;
# the files are where Debian's libnginx-mod-* packages put theirs and the
# postinst enabled the module.  The stock /usr/sbin/nginx, not as a system
# service (own prefix, pid, logs and port), runs the packaged
# nginx.conf.example with "include /etc/nginx/modules-enabled/*.conf;" in
# place of load_module, so the module loads through Debian's snippet (the
# default prefix, where "modules/" is /usr/lib/nginx/modules), next to
# every other module enabled here; its own redis-server on a free port.
# A heartbeat, a listing, the page, jQuery through libjs-jquery, a leave.
# Then both stop, apt-get remove (the link is parked as .removed, the
# way dh_nginx's prerm does it), apt-get purge, and every file is gone:
# the listing of the directories the package touches is what it was.
#
#   DEB_TEST=1      run at all
#   DEB_DIR         where the .deb is (default build/deb)

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(sha1_hex);
use File::Find qw(find);
use File::Temp qw(tempdir);
use FindBin;
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(WNOHANG _exit);
use Test::More;
use Time::HiRes qw(sleep time);

plan(skip_all => 'installs a package into this system: set DEB_TEST=1 (make deb-test)')
    unless $ENV{DEB_TEST};
plan(skip_all => 'must run as root (apt-get install)') unless $> == 0;

my $TOP     = abs_path("$FindBin::Bin/..");
my $DEB_DIR = $ENV{DEB_DIR} || "$TOP/build/deb";
# the page as the package was built from it (make deb's copy of the tree)
my $HTML    = -d "$DEB_DIR/src/html" ? "$DEB_DIR/src/html" : "$TOP/html";
my $PKG     = 'libnginx-mod-http-presence';
my $NGINX   = '/usr/sbin/nginx';
my $JQUERY  = '/usr/share/javascript/jquery/jquery.min.js';
my $EXAMPLE = "/usr/share/doc/$PKG/examples/nginx.conf.example";
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-presence.conf';
my $AVAIL   = '/usr/share/nginx/modules-available/mod-http-presence.conf';
my $SO      = '/usr/lib/nginx/modules/ngx_http_presence_module.so';
my @WATCH   = ('/etc/nginx', '/usr/lib/nginx/modules', '/usr/share/nginx',
               '/usr/share/nginx-presence', "/usr/share/doc/$PKG");

my ($deb) = grep { !/-dbgsym_/ } glob("$DEB_DIR/${PKG}_*.deb");
BAIL_OUT("no $DEB_DIR/${PKG}_*.deb; run make deb") unless $deb;
diag("package: $deb");

my $tmp = tempdir('presence-deb-XXXXXX', TMPDIR => 1,
                  CLEANUP => !$ENV{TEST_NGINX_LEAVE});
$SIG{PIPE} = 'IGNORE';

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return undef;
    local $/;
    return scalar <$fh>;
}

sub spew {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or die "open $path: $!";
    print {$fh} $data;
    close $fh or die "close $path: $!";
}

# (exit code, stdout+stderr)
sub run {
    my (@cmd) = @_;
    my $out = "$tmp/out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $ENV{DEBIAN_FRONTEND} = 'noninteractive';
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out or _exit(127);
        open STDERR, '>&', \*STDOUT or _exit(127);
        exec { $cmd[0] } @cmd or _exit(127);
    }
    waitpid $pid, 0;
    return ($? >> 8, slurp($out) // '');
}

sub spawn {
    my ($log, @cmd) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $log or _exit(127);
        open STDERR, '>&', \*STDOUT or _exit(127);
        exec { $cmd[0] } @cmd or _exit(127);
    }
    return $pid;
}

sub stop_pid {
    my ($pid, $sig) = @_;
    return 1 unless $pid && kill 0, $pid;
    kill $sig, $pid;
    for (1 .. 100) {
        return 1 if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
    return 0;
}

sub wait_for {
    my ($cond, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $v = $cond->();
        return $v if $v;
        sleep 0.05;
    }
    return undef;
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 1) or die "free_port: $!";
    return $s->sockport;
}

sub status {
    my ($rc, $out) = run('dpkg-query', '-W', '-f', '${db:Status-Abbrev}', $PKG);
    return $rc == 0 ? $out =~ s/\s+$//r : 'unknown';
}

sub listing {
    my %l;
    for my $top (grep { -e } @WATCH) {
        find({ no_chdir => 1, wanted => sub {
            my $p = $File::Find::name;
            my @st = lstat $p or return;
            my $mode = sprintf '%04o', $st[2] & 07777;
            $l{$p} = -l _ ? 'link -> ' . readlink($p)
                   : -d _ ? "dir $mode"
                   : "file $mode $st[7] $st[9] " . sha1_hex(slurp($p) // '');
        } }, $top);
    }
    return \%l;
}

sub apt {
    return run('apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=300', @_);
}

###########################################################################
# before: nothing of ours on the system

my $was = status();
if ($was =~ /^[ih]i/ || -e $ENABLED || -e "$ENABLED.removed") {
    BAIL_OUT("$PKG is installed already (status '$was'); "
             . "apt-get purge $PKG first: this test must leave the system as it found it");
}
BAIL_OUT('/usr/share/nginx-presence/.installed exists: make uninstall first')
    if -e '/usr/share/nginx-presence/.installed';
my $before = listing();

my ($redis_pid, $nginx_pid, $installed);
END {
    # whatever happened: stop what this test started, purge what it installed
    stop_pid($nginx_pid, 'TERM') if $nginx_pid;
    stop_pid($redis_pid, 'TERM') if $redis_pid;
    apt('purge', $PKG) if $installed && status() ne 'un' && status() ne 'unknown';
}

###########################################################################
# install

my $t0 = time;
my ($rc, $out) = apt('install', $deb);
is($rc, 0, "apt-get install ./" . ($deb =~ s{.*/}{}r)) or diag($out);
$installed = 1;
like(status(), qr/^ii/, 'the package is installed');
diag(sprintf 'apt-get install took %.1fs', time - $t0);

my (undef, $depends) = run('dpkg-query', '-W', '-f', '${Depends}', $PKG);
my (undef, $provides) = run('dpkg-query', '-W', '-f', '${Provides}', 'nginx');
my ($abi) = $provides =~ /(nginx-abi-[\w.+~-]+)/;
ok($abi, "the installed nginx provides $abi");
like($depends, qr/(^|, )\Q$abi\E(,|$)/, "Depends on $abi (the nginx ABI, from dh_nginx)")
    if $abi;
like($depends, qr/\blibhiredis0\.14\b/, 'Depends on libhiredis0.14 (shlibs)');
like($depends, qr/\blibjansson4\b/, 'Depends on libjansson4 (shlibs)');
like($depends, qr/\blibjs-jquery\b/, 'Depends on libjs-jquery');
diag("Depends: $depends");

(undef, my $files) = run('dpkg', '-L', $PKG);
my @files = grep { m{^/} && !-d $_ } split /\n/, $files;

ok(-f $SO, "the module: $SO");
is(slurp($AVAIL), "load_module modules/ngx_http_presence_module.so;\n",
   "the load snippet: $AVAIL");
is(readlink($ENABLED), $AVAIL, "enabled by the postinst: $ENABLED");
for my $f (qw(index.html app.js style.css)) {
    is(slurp("/usr/share/nginx-presence/html/$f"), slurp("$HTML/$f"),
       "the page: /usr/share/nginx-presence/html/$f");
}
is(readlink('/usr/share/nginx-presence/vendor/jquery.min.js'),
   '../../javascript/jquery/jquery.min.js', 'jQuery: a link into libjs-jquery');
is(slurp('/usr/share/nginx-presence/vendor/jquery.min.js'), slurp($JQUERY),
   '... that resolves');
ok(-f $EXAMPLE, "the example config: $EXAMPLE");
ok(-f "/usr/share/doc/$PKG/copyright", 'copyright');

# make install must not take over the package's files (make uninstall would
# then delete them); -o: never rebuild the module here
my $module = "$TOP/build/ngx_http_presence_module.so";
SKIP: {
    skip "module not built ($module)", 2 unless -f $module;
    ($rc, $out) = run('make', '--no-print-directory', '-s', '-C', $TOP,
                      '-o', $module, 'install');
    isnt($rc, 0, 'make install refuses while the package is installed');
    like($out, qr/package is installed/, '... and says why');
}

###########################################################################
# the stock nginx loading it through modules-enabled, and a redis-server

my $rport = free_port();
mkdir "$tmp/redis" or die;
$redis_pid = spawn("$tmp/redis/log", 'redis-server', '--port', $rport,
                   '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
                   '--dir', "$tmp/redis");
my $redis_up = wait_for(sub {
    my $s = IO::Socket::INET->new("127.0.0.1:$rport") or return;
    print $s "PING\r\n";
    my $l = <$s>;
    return defined $l && $l =~ /PONG/;
}, 10);
ok($redis_up, "redis-server on port $rport") or diag(slurp("$tmp/redis/log"));

my $port = free_port();
my $n = "$tmp/nginx";
chmod 0755, $tmp;    # the workers (www-data) reach their temp directory
mkdir $n or die;
mkdir "$n/temp" or die;
chown scalar(getpwnam('www-data')), -1, "$n/temp";

# the packaged example, its "make run" lines pointed at this test
my $conf = slurp($EXAMPLE);
my @subst = (
    [ qr/^load_module .*$/m,  sub { 'include /etc/nginx/modules-enabled/*.conf;' } ],
    [ qr/^pid .*$/m,          sub { "pid $n/nginx.pid;\nuser www-data;" } ],
    [ qr/^error_log .*$/m,    sub { "error_log $n/error.log notice;" } ],
    [ qr/^(\s*)access_log .*$/m,             sub { "$1access_log $n/access.log;" } ],
    [ qr/^(\s*)presence_redis \S+;.*$/m,     sub { "$1presence_redis 127.0.0.1:$rport;" } ],
    [ qr/^(\s*)listen 127\.0\.0\.1:8080;.*$/m, sub { "$1listen 127.0.0.1:$port;" } ],
    [ qr/^http \{$/m, sub { join "\n    ", 'http {',
        map { "${_}_temp_path $n/temp/$_;" } qw(client_body proxy fastcgi uwsgi scgi) } ],
);
for my $s (@subst) {
    my ($re, $to) = @$s;
    ok($conf =~ s/$re/$to->()/e, "example config: $re found");
}
spew("$n/nginx.conf", $conf);

($rc, $out) = run($NGINX, '-t', '-c', "$n/nginx.conf", '-e', "$n/error.log");
is($rc, 0, 'nginx -t with the packaged example') or diag($out);

$nginx_pid = spawn("$n/stderr.log", $NGINX, '-c', "$n/nginx.conf",
                   '-e', "$n/error.log", '-g', 'daemon off;');
my $http = HTTP::Tiny->new(timeout => 5, keep_alive => 0);
my $url = "http://127.0.0.1:$port";
ok(wait_for(sub { $http->get("$url/")->{status} != 599 }, 10), "nginx answers on $port")
    or diag(slurp("$n/error.log") // '', slurp("$n/stderr.log") // '');

my $json = JSON::PP->new->utf8;
sub api {
    my ($method, $path, $body) = @_;
    my $r = $http->request($method, "$url$path", $body ? {
        headers => { 'Content-Type' => 'application/json' },
        content => $json->encode($body) } : {});
    my $data = eval { $json->decode($r->{content}) };
    return ($r, $data);
}

my ($r, $d) = api('POST', '/api/heartbeat', { user_id => 'alice' });
is($r->{status}, 200, 'POST /api/heartbeat alice: 200') or diag($r->{content});
like($r->{headers}{'content-type'} // '', qr{^application/json}, '... JSON');
is($d->{user_id}, 'alice', '... user_id alice');
is($d->{room}, 'global', '... room global');
is($d->{online}, 1, '... online 1');

($r, $d) = api('GET', '/api/online');
is($r->{status}, 200, 'GET /api/online: 200');
is_deeply($d->{users}, ['alice'], '... lists alice');
ok($r->{headers}{etag}, '... with an ETag');

(undef, $out) = run('redis-cli', '-p', $rport, 'ZSCORE', 'presence:{global}', 'alice');
like($out, qr/^\d+/, 'the heartbeat is in Redis (presence:{global})');

$r = $http->get("$url/");
is($r->{status}, 200, 'GET /: 200');
is($r->{content}, slurp("$HTML/index.html"), '... the page (index.html)');
like($r->{headers}{'content-type'} // '', qr{^text/html}, '... text/html');
for my $f (qw(app.js style.css)) {
    is($http->get("$url/$f")->{status}, 200, "GET /$f: 200");
}
$r = $http->get("$url/vendor/jquery.min.js");
is($r->{status}, 200, 'GET /vendor/jquery.min.js: 200');
ok(defined $r->{content} && $r->{content} eq slurp($JQUERY), '... libjs-jquery\'s file');

if ($conf =~ /^\s*location = (\S+) \{\s*presence_status;/m) {
    ($r, $d) = api('GET', $1);
    is($r->{status}, 200, "GET $1 (presence_status): 200");
    ok(ref $d eq 'HASH', '... JSON');
}

($r, $d) = api('POST', '/api/leave', { user_id => 'alice' });
is($r->{status}, 200, 'POST /api/leave alice: 200');
is($d->{online}, 0, '... online 0');

ok(stop_pid($nginx_pid, 'QUIT'), 'nginx quits');
undef $nginx_pid;
ok(stop_pid($redis_pid, 'TERM'), 'redis-server stops');
undef $redis_pid;

my @bad = grep { /\[(emerg|crit)\]|exited on signal/
                 || (/\[alert\]/ && !/LuaJIT version which is not OpenResty/) }
          split /\n/, slurp("$n/error.log") // '';
is_deeply(\@bad, [], 'error.log: no emerg, crit, alert or crash');
ok(!(grep { /exited on signal/ } split /\n/, slurp("$n/error.log") // ''),
   'no worker crashed');

###########################################################################
# remove, then purge

($rc, $out) = apt('remove', $PKG);
is($rc, 0, "apt-get remove $PKG") or diag($out);
ok(!-e $SO, '... the module is gone');
ok(!-l $ENABLED, '... not enabled any more');
is(readlink("$ENABLED.removed"), $AVAIL,
   '... the link parked as .removed (dh_nginx), which *.conf does not include');

($rc, $out) = apt('purge', $PKG);
is($rc, 0, "apt-get purge $PKG") or diag($out);
$installed = 0;
like(status(), qr/^(un|unknown)/, 'the package is gone from dpkg');
my @left = grep { -e $_ || -l $_ } @files, $ENABLED, "$ENABLED.removed",
                                    '/usr/share/nginx-presence';
is_deeply(\@left, [], 'every file of the package is gone');
is_deeply(listing(), $before, join(', ', @WATCH) . ': as before the test');

done_testing();
