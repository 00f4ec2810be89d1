#!/usr/bin/perl

# make install / make uninstall, always with DESTDIR in a temporary
# directory (the real system is never touched): a Debian-like tree with
# another module already installed and enabled, a listing of every path
# (type, mode, size, SHA-1, link target, a file's mtime) before install,
# after install and after uninstall.  Install adds exactly the files, the
# link and the directories its manifest names and changes nothing else;
# the snippet loads into the stock nginx (nginx -t, with -p pointed into
# DESTDIR so that "modules/" resolves there); a second install replaces
# the first; uninstall gives back the listing from before, byte for byte;
# install refuses to overwrite a file it did not put there; PREFIX and
# MODULES_PATH move the files and make the load_module path absolute.

use strict;
use warnings;

use File::Path qw(make_path);
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;

use Presence::Test qw(slurp spew free_port);
use Presence::Test::Install;

plan(skip_all => "module not built ($BUILT); run make") unless -f $BUILT;

my $tmp = Presence::Test::new_dir('install');
my $D = "$tmp/root";

# without libjs-jquery, install would apt-get it: hand it a jQuery instead
my ($jquery, %JQ) = ($JQUERY);
if (!-f $jquery) {
    $jquery = "$tmp/jquery.min.js";
    spew($jquery, "/* stand-in for jquery.min.js */\n");
    %JQ = (JQUERY => $jquery);
}

sub make {
    my ($target, %arg) = @_;
    return make_target($target, %JQ, %arg);
}

# every path under $D (named without $D)
sub tree { listing($D, '') }

sub without_mtimes {
    my ($l) = @_;
    my %c = %$l;
    s/^(file \d+ \d+) \d+ /$1 /s for values %c;
    return \%c;
}

# a Debian-like tree: nginx's prefix links its modules directory, another
# module installed and enabled the way its package did it
sub fixture {
    make_path("$D/usr/lib/nginx/modules", "$D/usr/share/nginx/modules-available",
              "$D/etc/nginx/modules-enabled", "$D/usr/share/doc");
    spew("$D/usr/lib/nginx/modules/ngx_http_echo_module.so", "not really\n");
    symlink('../../lib/nginx/modules', "$D/usr/share/nginx/modules") or die;
    spew("$D/usr/share/nginx/modules-available/mod-http-echo.conf",
         "load_module modules/ngx_http_echo_module.so;\n");
    symlink('/usr/share/nginx/modules-available/mod-http-echo.conf',
            "$D/etc/nginx/modules-enabled/50-mod-http-echo.conf") or die;
    spew("$D/etc/nginx/nginx.conf", "include /etc/nginx/modules-enabled/*.conf;\n");
    utime 1_000_000_000, 1_000_000_000, "$D/etc/nginx/nginx.conf";
}

# the paths install added, from comparing two listings
sub added {
    my ($before, $after) = @_;
    return [ sort grep { !exists $before->{$_} } keys %$after ];
}

# what is in both listings and differs
sub changed {
    my ($before, $after) = @_;
    return [ sort grep { exists $after->{$_} && $before->{$_} ne $after->{$_} }
             keys %$before ];
}

sub manifest_paths {
    my ($path) = @_;
    my $text = slurp($path) // return [];
    return [ sort map { (split / /, $_, 2)[1] } split /\n/, $text ];
}

fixture();
my $before = tree();

###########################################################################
# install

my ($rc, $out) = make('install', DESTDIR => $D);
is($rc, 0, 'make install DESTDIR=... succeeds') or diag($out);

my $after = tree();

is_deeply(added($before, $after), [ sort
    $ENABLED, $SO, $AVAILABLE, $SHARE, "$SHARE/.installed",
    "$SHARE/html", map("$SHARE/html/$_", @PAGE),
    "$SHARE/vendor", "$SHARE/vendor/jquery.min.js",
], 'install adds the module, snippet, link, page, jQuery and manifest, nothing else');
is_deeply(changed($before, $after), [], 'install changes nothing that was there');
is_deeply(manifest_paths("$D$SHARE/.installed"), added($before, $after),
          'the manifest names exactly what install added');

# the module built, the snippet, its link, the page, jQuery from
# libjs-jquery (or JQUERY)
installed_ok(root => $D, module => $BUILT, html => "$TOP/html", jquery => $jquery);
like($after->{$SO}, qr/^file 0644 /, 'module mode 0644');
like($after->{"$SHARE/html"}, qr/^dir 0755$/, 'page directory mode 0755');

# the stock nginx loads the installed module through the snippet, from
# DESTDIR: -p makes "modules/" DESTDIR's usr/share/nginx/modules
my $port = free_port();
my $http = <<"EOF";
events {}
http {
    access_log off;
    client_body_temp_path $tmp/conf/body;
    proxy_temp_path $tmp/conf/proxy;
    fastcgi_temp_path $tmp/conf/fastcgi;
    uwsgi_temp_path $tmp/conf/uwsgi;
    scgi_temp_path $tmp/conf/scgi;
    presence_redis 127.0.0.1:6379;
    server {
        listen 127.0.0.1:$port;
        root $D$SHARE/html;
        location = /vendor/jquery.min.js { alias $D$SHARE/vendor/jquery.min.js; }
        location = /api/heartbeat { presence_heartbeat; }
        location = /api/online    { presence_online; }
    }
}
EOF
mkdir "$tmp/conf" or die;
spew("$tmp/conf/with.conf", "include $D$AVAILABLE;\npid $tmp/conf/nginx.pid;\n$http");
spew("$tmp/conf/without.conf", "pid $tmp/conf/nginx.pid;\n$http");
my @t = ($Presence::Test::NGINX, '-t', '-p', "$D/usr/share/nginx/", '-e', "$tmp/conf/error.log");
($rc, $out) = Presence::Test::run_capture(@t, '-c', "$tmp/conf/with.conf");
is($rc, 0, 'nginx -t: the snippet from DESTDIR loads the module') or diag($out);
($rc, $out) = Presence::Test::run_capture(@t, '-c', "$tmp/conf/without.conf");
like($out, qr/unknown directive "presence_redis"/,
     'nginx -t without the snippet knows no presence_* directive');

###########################################################################
# install again: replaces the first

($rc, $out) = make('install', DESTDIR => $D);
is($rc, 0, 'a second make install succeeds') or diag($out);
is_deeply(without_mtimes(tree()), without_mtimes($after),
          'and leaves the same files');

###########################################################################
# uninstall

($rc, $out) = make('uninstall', DESTDIR => $D);
is($rc, 0, 'make uninstall succeeds') or diag($out);
is_deeply(tree(), $before, 'uninstall leaves the tree exactly as before install');

($rc, $out) = make('uninstall', DESTDIR => $D);
isnt($rc, 0, 'uninstall with nothing installed fails');
like($out, qr/nothing was installed/, '... and says so');
is_deeply(tree(), $before, '... touching nothing');

###########################################################################
# a file install did not put there is never overwritten

make_path("$D$SHARE/html");
spew("$D$SHARE/html/index.html", "someone else's\n");
my $foreign = tree();
($rc, $out) = make('install', DESTDIR => $D);
isnt($rc, 0, 'install refuses when one of its files exists already');
like($out, qr{\Q$D$SHARE/html/index.html\E}, '... naming it');
is_deeply(tree(), $foreign, '... and changes nothing');
unlink "$D$SHARE/html/index.html";
rmdir "$D$SHARE/html";
rmdir "$D$SHARE";
is_deeply(tree(), $before, 'fixture restored');

###########################################################################
# another layout: PREFIX and MODULES_PATH

my %other = (DESTDIR => $D, PREFIX => '/usr/local', MODULES_PATH => '/opt/nginx/modules');
($rc, $out) = make('install', %other);
is($rc, 0, 'make install PREFIX=/usr/local MODULES_PATH=/opt/nginx/modules') or diag($out);
ok(-f "$D/opt/nginx/modules/ngx_http_presence_module.so", 'module under MODULES_PATH');
is(slurp("$D/usr/local/share/nginx/modules-available/mod-http-presence.conf"),
   "load_module /opt/nginx/modules/ngx_http_presence_module.so;\n",
   'a modules path outside the prefix: an absolute load_module path');
is(readlink("$D$ENABLED"), '/usr/local/share/nginx/modules-available/mod-http-presence.conf',
   'the link points at the snippet under PREFIX');
ok(-f "$D/usr/local/share/nginx-presence/html/index.html", 'page under PREFIX');
($rc, $out) = make('uninstall', %other);
is($rc, 0, 'make uninstall with the same variables') or diag($out);
is_deeply(tree(), $before, 'leaves the tree as before');

done_testing();
