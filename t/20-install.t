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

use Cwd qw(abs_path);
use Digest::SHA qw(sha1_hex);
use File::Find qw(find);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use FindBin;
use POSIX qw(_exit);
use Test::More;

my $TOP    = abs_path("$FindBin::Bin/..");
my $MODULE = "$TOP/build/ngx_http_presence_module.so";
my $NGINX  = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $JQUERY = '/usr/share/javascript/jquery/jquery.min.js';

plan(skip_all => "module not built ($MODULE); run make") unless -f $MODULE;

my $tmp = tempdir('presence-install-XXXXXX', TMPDIR => 1,
                  CLEANUP => !$ENV{TEST_NGINX_LEAVE});
diag("test directory: $tmp") if $ENV{TEST_NGINX_LEAVE};
my $D = "$tmp/root";

# without libjs-jquery, install would apt-get it: hand it a jQuery instead
my %JQ;
if (!-f $JQUERY) {
    $JQUERY = "$tmp/jquery.min.js";
    open my $fh, '>', $JQUERY or die;
    print {$fh} "/* stand-in for jquery.min.js */\n";
    close $fh;
    %JQ = (JQUERY => $JQUERY);
}

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

# (exit code, stdout+stderr) of a command, with extra environment
sub run {
    my ($env, @cmd) = @_;
    my $out = "$tmp/out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        @ENV{keys %$env} = values %$env;
        open STDOUT, '>', $out or _exit(127);
        open STDERR, '>&', \*STDOUT or _exit(127);
        exec { $cmd[0] } @cmd or _exit(127);
    }
    waitpid $pid, 0;
    return ($? >> 8, slurp($out) // '');
}

sub make {
    my ($target, %arg) = @_;
    my %var = (%JQ, %arg);
    # the module is built: make must not rebuild it here (-o), only run
    # the target as a user would
    return run({}, 'make', '--no-print-directory', '-s', '-C', $TOP,
               '-o', $MODULE, $target,
               map { "$_=$var{$_}" } sort keys %var);
}

# every path under $D: type, permissions, size, content hash, link target,
# and a file's mtime (a directory's changes whenever an entry comes or goes)
sub listing {
    my %l;
    find({ no_chdir => 1, wanted => sub {
        my $p = $File::Find::name;
        my $rel = substr($p, length $D) || '/';
        my @st = lstat $p or die "lstat $p: $!";
        my $mode = sprintf '%04o', $st[2] & 07777;
        if (-l _) {
            $l{$rel} = "link -> " . readlink($p);
        } elsif (-d _) {
            $l{$rel} = "dir $mode";
        } else {
            $l{$rel} = "file $mode $st[7] $st[9] " . sha1_hex(slurp($p));
        }
    } }, $D);
    return \%l;
}

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
my $before = listing();

###########################################################################
# install

my ($rc, $out) = make('install', DESTDIR => $D);
is($rc, 0, 'make install DESTDIR=... succeeds') or diag($out);

my $after = listing();
my $so        = '/usr/lib/nginx/modules/ngx_http_presence_module.so';
my $available = '/usr/share/nginx/modules-available/mod-http-presence.conf';
my $enabled   = '/etc/nginx/modules-enabled/50-mod-http-presence.conf';
my $share     = '/usr/share/nginx-presence';

is_deeply(added($before, $after), [ sort
    $enabled, $so, $available, $share, "$share/.installed",
    "$share/html", map("$share/html/$_", qw(index.html app.js style.css)),
    "$share/vendor", "$share/vendor/jquery.min.js",
], 'install adds the module, snippet, link, page, jQuery and manifest, nothing else');
is_deeply(changed($before, $after), [], 'install changes nothing that was there');
is_deeply(manifest_paths("$D$share/.installed"), added($before, $after),
          'the manifest names exactly what install added');

is(slurp("$D$so"), slurp($MODULE), 'the module is the built one');
like($after->{$so}, qr/^file 0644 /, 'module mode 0644');
is(slurp("$D$available"), "load_module modules/ngx_http_presence_module.so;\n",
   'the snippet loads it relative to the prefix, as Debian\'s do');
is(readlink("$D$enabled"), $available,
   'modules-enabled/50-mod-http-presence.conf links the snippet, as postinst does');
for my $f (qw(index.html app.js style.css)) {
    is(slurp("$D$share/html/$f"), slurp("$TOP/html/$f"), "html/$f installed");
}
is(slurp("$D$share/vendor/jquery.min.js"), slurp($JQUERY),
   "jQuery from libjs-jquery (or JQUERY) installed");
like($after->{"$share/html"}, qr/^dir 0755$/, 'page directory mode 0755');

# the stock nginx loads the installed module through the snippet, from
# DESTDIR: -p makes "modules/" DESTDIR's usr/share/nginx/modules
my $port = 20000 + $$ % 20000;
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
        root $D$share/html;
        location = /vendor/jquery.min.js { alias $D$share/vendor/jquery.min.js; }
        location = /api/heartbeat { presence_heartbeat; }
        location = /api/online    { presence_online; }
    }
}
EOF
mkdir "$tmp/conf" or die;
spew("$tmp/conf/with.conf", "include $D$available;\npid $tmp/conf/nginx.pid;\n$http");
spew("$tmp/conf/without.conf", "pid $tmp/conf/nginx.pid;\n$http");
my @t = ($NGINX, '-t', '-p', "$D/usr/share/nginx/", '-e', "$tmp/conf/error.log");
($rc, $out) = run({}, @t, '-c', "$tmp/conf/with.conf");
is($rc, 0, 'nginx -t: the snippet from DESTDIR loads the module') or diag($out);
($rc, $out) = run({}, @t, '-c', "$tmp/conf/without.conf");
like($out, qr/unknown directive "presence_redis"/,
     'nginx -t without the snippet knows no presence_* directive');

###########################################################################
# install again: replaces the first

($rc, $out) = make('install', DESTDIR => $D);
is($rc, 0, 'a second make install succeeds') or diag($out);
is_deeply(without_mtimes(listing()), without_mtimes($after),
          'and leaves the same files');

###########################################################################
# uninstall

($rc, $out) = make('uninstall', DESTDIR => $D);
is($rc, 0, 'make uninstall succeeds') or diag($out);
is_deeply(listing(), $before, 'uninstall leaves the tree exactly as before install');

($rc, $out) = make('uninstall', DESTDIR => $D);
isnt($rc, 0, 'uninstall with nothing installed fails');
like($out, qr/nothing was installed/, '... and says so');
is_deeply(listing(), $before, '... touching nothing');

###########################################################################
# a file install did not put there is never overwritten

make_path("$D$share/html");
spew("$D$share/html/index.html", "someone else's\n");
my $foreign = listing();
($rc, $out) = make('install', DESTDIR => $D);
isnt($rc, 0, 'install refuses when one of its files exists already');
like($out, qr{\Q$D$share/html/index.html\E}, '... naming it');
is_deeply(listing(), $foreign, '... and changes nothing');
unlink "$D$share/html/index.html";
rmdir "$D$share/html";
rmdir "$D$share";
is_deeply(listing(), $before, 'fixture restored');

###########################################################################
# another layout: PREFIX and MODULES_PATH

my %other = (DESTDIR => $D, PREFIX => '/usr/local', MODULES_PATH => '/opt/nginx/modules');
($rc, $out) = make('install', %other);
is($rc, 0, 'make install PREFIX=/usr/local MODULES_PATH=/opt/nginx/modules') or diag($out);
ok(-f "$D/opt/nginx/modules/ngx_http_presence_module.so", 'module under MODULES_PATH');
is(slurp("$D/usr/local/share/nginx/modules-available/mod-http-presence.conf"),
   "load_module /opt/nginx/modules/ngx_http_presence_module.so;\n",
   'a modules path outside the prefix: an absolute load_module path');
is(readlink("$D$enabled"), '/usr/local/share/nginx/modules-available/mod-http-presence.conf',
   'the link points at the snippet under PREFIX');
ok(-f "$D/usr/local/share/nginx-presence/html/index.html", 'page under PREFIX');
($rc, $out) = make('uninstall', %other);
is($rc, 0, 'make uninstall with the same variables') or diag($out);
is_deeply(listing(), $before, 'leaves the tree as before');

done_testing();
