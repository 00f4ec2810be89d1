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

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);

use Presence::Test qw(slurp spew free_port start_redis);
use Presence::Test::Install;

plan(skip_all => 'installs a package into this system: set DEB_TEST=1 (make deb-test)')
    unless $ENV{DEB_TEST};
plan(skip_all => 'must run as root (apt-get install)') unless $> == 0;

my $DEB_DIR = $ENV{DEB_DIR} || "$TOP/build/deb";
# the page as the package was built from it (make deb's copy of the tree)
my $HTML    = -d "$DEB_DIR/src/html" ? "$DEB_DIR/src/html" : "$TOP/html";
my $PKG     = 'libnginx-mod-http-presence';
my $EXAMPLE = "/usr/share/doc/$PKG/examples/nginx.conf.example";
my @WATCH   = ('/etc/nginx', '/usr/lib/nginx/modules', '/usr/share/nginx',
               $SHARE, "/usr/share/doc/$PKG");

my ($deb) = grep { !/-dbgsym_/ } glob("$DEB_DIR/${PKG}_*.deb");
BAIL_OUT("no $DEB_DIR/${PKG}_*.deb; run make deb") unless $deb;
diag("package: $deb");

# apt-get and dpkg, never asking
$ENV{DEBIAN_FRONTEND} = 'noninteractive';
open STDIN, '<', '/dev/null' or die "stdin: $!";

sub run { Presence::Test::run_capture(@_) }

sub status {
    my ($rc, $out) = run('dpkg-query', '-W', '-f', '${db:Status-Abbrev}', $PKG);
    return $rc == 0 ? $out =~ s/\s+$//r : 'unknown';
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
BAIL_OUT("$SHARE/.installed exists: make uninstall first")
    if -e "$SHARE/.installed";
my $before = listing('', @WATCH);

my ($redis, $ng, $installed);
END {
    # whatever happened: stop what this test started, purge what it installed
    local $?;
    $ng->stop if $ng;
    $redis->stop if $redis;
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

# the module, the snippet, enabled by the postinst, the page, jQuery
installed_ok(html => $HTML, jquery => $JQUERY);
is(readlink("$SHARE/vendor/jquery.min.js"), '../../javascript/jquery/jquery.min.js',
   'jQuery: a link into libjs-jquery');
ok(-f $EXAMPLE, "the example config: $EXAMPLE");
ok(-f "/usr/share/doc/$PKG/copyright", 'copyright');

# make install must not take over the package's files (make uninstall would
# then delete them)
SKIP: {
    skip "module not built ($BUILT)", 2 unless -f $BUILT;
    ($rc, $out) = make_target('install');
    isnt($rc, 0, 'make install refuses while the package is installed');
    like($out, qr/package is installed/, '... and says why');
}

###########################################################################
# the stock nginx loading it through modules-enabled, and a redis-server

$redis = eval { start_redis() };
ok($redis, 'redis-server on port ' . ($redis ? $redis->port : '?')) or diag($@);

$ng = stock_nginx();
my $port = $ng->port;
my $n = $ng->dir;
chmod 0755, "$n/..";    # the workers (www-data) reach their temp directory
mkdir "$n/temp" or die;
chown scalar(getpwnam('www-data')), -1, "$n/temp";

# the packaged example, its "make run" lines pointed at this test
my $conf = slurp($EXAMPLE);
my @subst = (
    [ qr/^load_module .*$/m,  sub { 'include /etc/nginx/modules-enabled/*.conf;' } ],
    [ qr/^pid .*$/m,          sub { "pid $n/nginx.pid;\nuser www-data;" } ],
    [ qr/^error_log .*$/m,    sub { "error_log $n/error.log notice;" } ],
    [ qr/^(\s*)access_log .*$/m,             sub { "$1access_log $n/access.log;" } ],
    [ qr/^(\s*)presence_redis \S+;.*$/m,     sub { "$1presence_redis " . $redis->addr . ';' } ],
    [ qr/^(\s*)listen 127\.0\.0\.1:8080;.*$/m, sub { "$1listen 127.0.0.1:$port;" } ],
    [ qr/^http \{$/m, sub { join "\n    ", 'http {',
        map { "${_}_temp_path $n/temp/$_;" } qw(client_body proxy fastcgi uwsgi scgi) } ],
);
for my $s (@subst) {
    my ($re, $to) = @$s;
    ok($conf =~ s/$re/$to->()/e, "example config: $re found");
}
spew($ng->conf_file, $conf);

($rc, $out) = run($ng->command('-t'));
is($rc, 0, 'nginx -t with the packaged example') or diag($out);

ok(eval { $ng->start }, "nginx answers on $port")
    or diag($@, slurp($ng->error_log), slurp($ng->stderr_log));

my ($status) = $conf =~ /^\s*location = (\S+) \{\s*presence_status;/m;
served_ok($ng, html => $HTML, jquery => $JQUERY, redis => $redis, status => $status);

ok(defined $ng->quit(5), 'nginx quits');
$redis->stop;
like(slurp($redis->dir . '/redis.log'), qr/ready to exit/, 'redis-server stops');

error_log_ok($ng->error_log);

###########################################################################
# remove, then purge

($rc, $out) = apt('remove', $PKG);
is($rc, 0, "apt-get remove $PKG") or diag($out);
ok(!-e $SO, '... the module is gone');
ok(!-l $ENABLED, '... not enabled any more');
is(readlink("$ENABLED.removed"), $AVAILABLE,
   '... the link parked as .removed (dh_nginx), which *.conf does not include');

($rc, $out) = apt('purge', $PKG);
is($rc, 0, "apt-get purge $PKG") or diag($out);
$installed = 0;
like(status(), qr/^(un|unknown)/, 'the package is gone from dpkg');
my @left = grep { -e $_ || -l $_ } @files, $ENABLED, "$ENABLED.removed", $SHARE;
is_deeply(\@left, [], 'every file of the package is gone');
is_deeply(listing('', @WATCH), $before, join(', ', @WATCH) . ': as before the test');

done_testing();
