package Presence::Test::HTTP;

# HTTP for the tests, over raw sockets: a client of a server on
# 127.0.0.1:<port> (the base of Presence::Test::Nginx; http_to() for any
# other server), the answers parsed, and the checks of the module's JSON
# answers and errors.  Presence::Test exports the checks.

use strict;
use warnings;

use Carp qw(croak);
use Exporter qw(import);
use IO::Socket::INET;
use JSON::PP;
use Test::More ();
use Time::HiRes qw(time sleep);

our @EXPORT_OK = qw(parse_response api_error_ok json_ok);

my $JSON = JSON::PP->new->utf8->allow_nonref;

sub new  { my ($class, $port) = @_; bless { port => $port }, $class }
sub port { $_[0]{port} }
sub url  { "http://127.0.0.1:$_[0]{port}$_[1]" }

# $ng->request($method, $path, headers => [name => value, ...],
#              body => $bytes, timeout => $s) -> response hash:
# {status, reason, headers => {lc name => value}, header_list, body,
#  raw, json (decoded when JSON), elapsed (seconds)}.
# Content-Length is added for a body unless a Content-Length or a
# Transfer-Encoding header is given.  The connection is closed after.
sub request {
    my ($self, $method, $path, %o) = @_;
    return $self->send_request($method, $path, %o)->finish($o{timeout});
}

sub build_request {
    my ($self, $method, $path, %o) = @_;
    my @h = @{ $o{headers} || [] };
    my %has;
    for (my $i = 0; $i < @h; $i += 2) { $has{ lc $h[$i] } = 1 }
    push @h, 'Content-Length' => length $o{body}
        if defined $o{body} && !$has{'content-length'}
           && !$has{'transfer-encoding'};
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
    $req .= "Connection: close\r\n" unless $has{connection};
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    $req .= "\r\n";
    $req .= $o{body} if defined $o{body};
    return $req;
}

sub send_request {
    my ($self, $method, $path, %o) = @_;
    return $self->send_raw($self->build_request($method, $path, %o),
                           head => $method eq 'HEAD', %o);
}

sub get  { my ($self, $path, %o) = @_; $self->request('GET', $path, %o) }
sub head { my ($self, $path, %o) = @_; $self->request('HEAD', $path, %o) }

# POST a body (a hash ref is encoded as JSON) with
# Content-Type: application/json unless the headers name one or no_ct => 1
sub post {
    my ($self, $path, $body, %o) = @_;
    $body = $JSON->encode($body) if ref $body;
    my @h = @{ $o{headers} || [] };
    my $has_ct = 0;
    for (my $i = 0; $i < @h; $i += 2) {
        $has_ct = 1 if lc($h[$i]) eq q{content-type};
    }
    unshift @h, 'Content-Type' => 'application/json'
        unless $has_ct || $o{no_ct};
    return $self->request('POST', $path, %o, body => $body, headers => \@h);
}

# $ng->raw($bytes | [$piece, ...], delay => $s, head => 1): sends the
# bytes (pieces with a pause between them), reads until the server
# closes; returns the first response in scalar context, all of them in
# list context (pipelining).
sub raw {
    my ($self, $data, %o) = @_;
    my $p = $self->send_raw($data, %o);
    return wantarray ? $p->finish_all($o{timeout}) : $p->finish($o{timeout});
}

sub send_raw {
    my ($self, $data, %o) = @_;
    my $t0 = time;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->{port}, Proto => 'tcp',
                                  Timeout => 5)
        or croak "connect to nginx: $!";
    my @pieces = ref $data ? @$data : ($data);
    for my $i (0 .. $#pieces) {
        sleep $o{delay} if $i && $o{delay};
        my $buf = $pieces[$i];
        while (length $buf) {
            my $n = syswrite $s, $buf;
            last unless defined $n;     # the server may answer early
            substr($buf, 0, $n, '');
        }
    }
    return bless { sock => $s, t0 => $t0, head => $o{head} },
                 'Presence::Test::Pending';
}

###########################################################################
# the answers

sub parse_response {
    my ($buf, $pos, $head) = @_;
    my $end = index($$buf, "\r\n\r\n", $pos);
    return if $end < 0;
    my @lines = split /\r\n/, substr($$buf, $pos, $end - $pos);
    my $status_line = shift @lines;
    my ($status, $reason) = $status_line =~ m{^HTTP/\d\.\d (\d{3})(?: (.*))?$}
        or return;

    my (%h, @list);
    for (@lines) {
        my ($k, $v) = /^([^:]+):[ \t]*(.*?)[ \t]*$/ or next;
        push @list, [$k, $v];
        push @{ $h{lc $k} }, $v;
    }
    my %headers = map { $_ => join(', ', @{ $h{$_} }) } keys %h;

    my $body = '';
    my $next = $end + 4;
    if ($head || $status =~ /^(?:1..|204|304)$/) {
        # no body
    } elsif (($headers{'transfer-encoding'} // '') =~ /chunked/i) {
        while (1) {
            my $eol = index($$buf, "\r\n", $next);
            return if $eol < 0;
            my $size = hex substr($$buf, $next, $eol - $next);
            $next = $eol + 2;
            if ($size == 0) {
                my $tend = index($$buf, "\r\n", $next);
                return if $tend < 0;
                $next = $tend + 2;
                last;
            }
            return if length($$buf) < $next + $size + 2;
            $body .= substr($$buf, $next, $size);
            $next += $size + 2;
        }
    } elsif (defined $headers{'content-length'}) {
        my $len = $headers{'content-length'};
        return if length($$buf) < $next + $len;
        $body = substr($$buf, $next, $len);
        $next += $len;
    } else {
        $body = substr($$buf, $next);
        $next = length $$buf;
    }

    my $r = {
        status => 0 + $status, reason => $reason, headers => \%headers,
        header_list => \@list, body => $body,
        raw => substr($$buf, $pos, $next - $pos),
    };
    if (($headers{'content-type'} // '') =~ m{json}i && length $body) {
        $r->{json} = eval { $JSON->decode($body) };
    }
    return ($r, $next);
}

# is the response the module's JSON error with this status and code?
sub api_error_ok {
    my ($r, $status, $code, $name) = @_;
    return _answer_ok($r, $status, $name // "$status $code", sub {
        my ($j) = @_;
        return "body is not a JSON object: " . substr($r->{body} // '', 0, 200)
            if ref $j ne 'HASH';
        my @why;
        push @why, "error is " . ($j->{error} // 'undef')
            if ($j->{error} // '') ne $code;
        push @why, 'message missing'
            unless defined $j->{message} && !ref $j->{message}
                   && length $j->{message};
        return @why;
    });
}

# a 200 JSON answer of the API?
sub json_ok {
    my ($r, $name) = @_;
    return _answer_ok($r, 200, $name, sub {
        return defined $_[0] ? () : 'body is not JSON';
    });
}

# the status, the headers of every JSON answer, and what $body_why finds
sub _answer_ok {
    my ($r, $status, $name, $body_why) = @_;
    my $tb = Test::More->builder;
    my @why;
    if (!$r) {
        push @why, 'no response';
    } else {
        push @why, "status $r->{status}" if $r->{status} != $status;
        push @why, $body_why->($r->{json});
        my $ct = $r->{headers}{'content-type'} // '';
        push @why, "content-type '$ct'"
            unless $ct =~ m{^application/json;\s*charset=utf-8$}i;
        push @why, 'no Cache-Control: no-store'
            unless ($r->{headers}{'cache-control'} // '') =~ /\bno-store\b/;
    }
    my $ok = $tb->ok(!@why, $name);
    $tb->diag(join("\n", @why) . "\n" . ($r ? $r->{raw} : '')) unless $ok;
    return $ok;
}

###########################################################################

package Presence::Test::Pending;

use Carp qw(croak);
use IO::Select;
use Time::HiRes qw(time);

sub sock { $_[0]{sock} }

# reads until the server closes (or the timeout, scaled); undef when
# nothing parseable came back
sub _read_all {
    my ($self, $timeout) = @_;
    return $self->{buf} if $self->{done};
    my $s = $self->{sock};
    my $sel = IO::Select->new($s);
    my $deadline = time + Presence::Test::scaled($timeout // 10);
    $self->{buf} //= '';
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $self->{buf}, 65536, length $self->{buf};
        last unless $n;
    }
    $self->{elapsed} = time - $self->{t0};
    $self->{done} = 1;
    CORE::close $s;
    return $self->{buf};
}

# true once the server has sent something (or closed)
sub ready {
    my ($self) = @_;
    return 1 if $self->{done};
    return IO::Select->new($self->{sock})->can_read(0) ? 1 : 0;
}

sub finish {
    my ($self, $timeout) = @_;
    my @all = $self->finish_all($timeout);
    return $all[0];
}

sub finish_all {
    my ($self, $timeout) = @_;
    my $buf = $self->_read_all($timeout);
    my ($pos, @r) = (0);
    while ($pos < length $buf) {
        my ($r, $next) = Presence::Test::parse_response(\$buf, $pos,
                                                        $self->{head});
        last unless $r;
        $r->{elapsed} = $self->{elapsed};
        push @r, $r;
        $pos = $next;
    }
    return @r;
}

# the client goes away without reading the answer
sub abort {
    my ($self) = @_;
    CORE::close $self->{sock} unless $self->{done};
    $self->{done} = 1;
    $self->{buf} //= '';
}

1;
