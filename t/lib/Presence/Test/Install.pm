package Presence::Test::Install;

# What t/20-install.t (make install into a DESTDIR) and t/21-deb.t (the
# .deb through apt-get) check alike of an installed module: where the
# files go (Debian's libnginx-mod-* layout), the load snippet and its
# modules-enabled link, the page and jQuery; a listing of a tree to prove
# that install and removal change nothing else; make run as a user would;
# and, for the stock nginx loading the installed module, what it serves
# and what its error.log may not say.  Built on Presence::Test.
#
#   installed_ok(root => $DESTDIR, module => $so, html => $dir, jquery => $file)
#   listing($root, @dirs)           make_target($target, VAR => value ...)
#   stock_nginx(port => $port)      served_ok($ng, html => ..., jquery => ..., redis => $r)
#   error_log_ok($file)

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(sha1_hex);
use Exporter qw(import);
use File::Find qw(find);
use FindBin;
use Test::More;

use Presence::Test qw(slurp);

our @EXPORT = qw(
    $TOP $BUILT $SO $AVAILABLE $ENABLED $SHARE $SNIPPET $JQUERY @PAGE
    installed_ok listing make_target stock_nginx served_ok error_log_ok
);

our $TOP   = abs_path("$FindBin::Bin/..");
# what make install installs (not TEST_NGINX_MODULE, which may be another build)
our $BUILT = "$TOP/build/ngx_http_presence_module.so";

# where Debian's packages put a module, its snippet and the link that
# enables it (make install's defaults, the .deb's paths); the page
our $SO        = '/usr/lib/nginx/modules/ngx_http_presence_module.so';
our $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-presence.conf';
our $ENABLED   = '/etc/nginx/modules-enabled/50-mod-http-presence.conf';
our $SHARE     = '/usr/share/nginx-presence';
our $SNIPPET   = "load_module modules/ngx_http_presence_module.so;\n";
our $JQUERY    = '/usr/share/javascript/jquery/jquery.min.js';   # libjs-jquery's
our @PAGE      = qw(index.html app.js style.css);

# installed_ok(root => $dir, module => $so, html => $dir, jquery => $file):
# the module (the same bytes as $so, or only there without module), the
# snippet loading it relative to the prefix as Debian's do, the
# modules-enabled link to it, the page the same as $html's and jQuery the
# same as $jquery, all under root ('' for the system itself)
sub installed_ok {
    my (%o) = @_;
    my $r = $o{root} // '';
    if (defined $o{module}) {
        is(slurp("$r$SO"), slurp($o{module}), "the module is the built one: $SO");
    } else {
        ok(-f "$r$SO", "the module: $SO");
    }
    is(slurp("$r$AVAILABLE"), $SNIPPET,
       "the snippet loads it relative to the prefix, as Debian's do: $AVAILABLE");
    is(readlink("$r$ENABLED"), $AVAILABLE,
       "enabled, a link to the snippet as a postinst makes it: $ENABLED");
    for my $f (@PAGE) {
        is(slurp("$r$SHARE/html/$f"), slurp("$o{html}/$f"), "the page: $SHARE/html/$f");
    }
    is(slurp("$r$SHARE/vendor/jquery.min.js"), slurp($o{jquery}),
       "jQuery: $SHARE/vendor/jquery.min.js is $o{jquery}");
}

# listing($root, @dirs): every path under $root$dir for each @dirs that
# exists, named without $root ('/' for $root itself): type, permissions,
# size, content hash, link target, and a file's mtime (a directory's
# changes whenever an entry comes or goes)
sub listing {
    my ($root, @dirs) = @_;
    my %l;
    for my $top (grep { -e } map { "$root$_" } @dirs) {
        find({ no_chdir => 1, wanted => sub {
            my $p = $File::Find::name;
            my @st = lstat $p or return;
            my $mode = sprintf '%04o', $st[2] & 07777;
            $l{ substr($p, length $root) || '/' }
                = -l _ ? 'link -> ' . readlink($p)
                : -d _ ? "dir $mode"
                : "file $mode $st[7] $st[9] " . sha1_hex(slurp($p));
        } }, $top);
    }
    return \%l;
}

# make_target($target, VAR => value, ...): (exit code, output) of make
# $target in the tree as a user runs it; -o: the module is built and is
# never rebuilt here
sub make_target {
    my ($target, %var) = @_;
    return Presence::Test::run_capture('make', '--no-print-directory', '-s',
        '-C', $TOP, '-o', $BUILT, $target, map { "$_=$var{$_}" } sort keys %var);
}

# stock_nginx(port => $port): start_nginx's object for the stock
# /usr/sbin/nginx with its default prefix, so that "modules/" in Debian's snippets is
# /usr/lib/nginx/modules; not started: write $ng->conf_file, then start
sub stock_nginx {
    my (%o) = @_;
    return Presence::Test::Install::Nginx->new('', %o, no_start => 1);
}

# served_ok($ng, html => $dir, jquery => $file, redis => $redis,
#           status => $path): through the nginx $ng, which loaded the
# installed module, a heartbeat (in $redis), a listing, the page, jQuery,
# presence_status at $path if given, a leave
sub served_ok {
    my ($ng, %o) = @_;

    my $r = $ng->post('/api/heartbeat', { user_id => 'alice' });
    is($r->{status}, 200, 'POST /api/heartbeat alice: 200') or diag($r->{body});
    like($r->{headers}{'content-type'} // '', qr{^application/json}, '... JSON');
    is($r->{json}{user_id}, 'alice', '... user_id alice');
    is($r->{json}{room}, 'global', '... room global');
    is($r->{json}{online}, 1, '... online 1');

    $r = $ng->get('/api/online');
    is($r->{status}, 200, 'GET /api/online: 200');
    is_deeply($r->{json}{users}, ['alice'], '... lists alice');
    ok($r->{headers}{etag}, '... with an ETag');

    like($o{redis}->cli('ZSCORE', 'presence:{global}', 'alice'), qr/^\d+/,
         'the heartbeat is in Redis (presence:{global})');

    $r = $ng->get('/');
    is($r->{status}, 200, 'GET /: 200');
    is($r->{body}, slurp("$o{html}/index.html"), '... the page (index.html)');
    like($r->{headers}{'content-type'} // '', qr{^text/html}, '... text/html');
    for my $f (grep { $_ ne 'index.html' } @PAGE) {
        is($ng->get("/$f")->{status}, 200, "GET /$f: 200");
    }
    $r = $ng->get('/vendor/jquery.min.js');
    is($r->{status}, 200, 'GET /vendor/jquery.min.js: 200');
    ok($r->{body} eq slurp($o{jquery}), "... $o{jquery}");

    if (defined $o{status}) {
        $r = $ng->get($o{status});
        is($r->{status}, 200, "GET $o{status} (presence_status): 200");
        ok(ref $r->{json} eq 'HASH', '... JSON');
    }

    $r = $ng->post('/api/leave', { user_id => 'alice' });
    is($r->{status}, 200, 'POST /api/leave alice: 200');
    is($r->{json}{online}, 0, '... online 0');
}

# error_log_ok($file): the last word of nginx-tests, for the stock nginx
# with every module the system enabled: no emerg, crit or alert (but the
# alert the lua module logs when nginx is not OpenResty's), no worker
# killed by a signal
sub error_log_ok {
    my ($file) = @_;
    my @lines = split /\n/, slurp($file);
    my @bad = grep { /\[(emerg|crit)\]|exited on signal/
                     || (/\[alert\]/ && !/LuaJIT version which is not OpenResty/) }
              @lines;
    is_deeply(\@bad, [], 'error.log: no emerg, crit, alert or crash');
    ok(!(grep { /exited on signal/ } @lines), 'no worker crashed');
}

###########################################################################

package Presence::Test::Install::Nginx;

# Presence::Test::Nginx: the stock nginx, started without -p (the
# default prefix)

our @ISA = ('Presence::Test::Nginx');

our $STOCK = '/usr/sbin/nginx';

sub conf_file { "$_[0]{dir}/nginx.conf" }

sub command {
    my ($self, @extra) = @_;
    return ($STOCK, '-c', $self->conf_file,
            '-e', $self->error_log, '-g', 'daemon off;', @extra);
}

1;
