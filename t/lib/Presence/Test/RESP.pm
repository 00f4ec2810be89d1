package Presence::Test::RESP;

# Redis's protocol for the tests: replies to write (resp_int...), a
# parser for what comes back, and the handshake answers every fake Redis
# gives (fake_std).  Presence::Test exports these.

use strict;
use warnings;

use Digest::SHA qw(sha1_hex);
use Exporter qw(import);

our @EXPORT_OK = qw(
    resp_int resp_status resp_err resp_nil resp_bulk resp_array
    resp_parse resp_command fake_std fake_reply
);

sub resp_int    { ":$_[0]\r\n" }
sub resp_status { "+$_[0]\r\n" }
sub resp_err    { "-$_[0]\r\n" }
sub resp_nil    { "\$-1\r\n" }
sub resp_bulk   { defined $_[0] ? '$' . length($_[0]) . "\r\n$_[0]\r\n" : resp_nil() }
sub resp_array  { '*' . scalar(@_) . "\r\n" . join('', @_) }

# resp_parse(\$buf, $pos) -> ($value, $next_pos), or () while incomplete.
# Errors come back as Presence::Test::RespError objects.
sub resp_parse {
    my ($buf, $pos) = @_;
    $pos //= 0;
    my $eol = index($$buf, "\r\n", $pos);
    return if $eol < 0;
    my $type = substr($$buf, $pos, 1);
    my $line = substr($$buf, $pos + 1, $eol - $pos - 1);
    my $next = $eol + 2;

    return ($line, $next) if $type eq '+';
    return (Presence::Test::RespError->new($line), $next) if $type eq '-';
    return (0 + $line, $next) if $type eq ':';

    if ($type eq '$') {
        return (undef, $next) if $line < 0;
        return if length($$buf) < $next + $line + 2;
        return (substr($$buf, $next, $line), $next + $line + 2);
    }

    if ($type eq '*') {
        return (undef, $next) if $line < 0;
        my @a;
        for (1 .. $line) {
            my @r = resp_parse($buf, $next);
            return unless @r;
            push @a, $r[0];
            $next = $r[1];
        }
        return (\@a, $next);
    }

    die "resp_parse: unexpected type byte " . sprintf('0x%02x', ord $type)
        . "\n";
}

# inside a fake's handler: the reply the test set with $fake->set_reply
sub fake_reply {
    my ($state, $name) = @_;
    my $f = "$state->{dir}/reply.$name";
    return undef unless -e $f;
    return Presence::Test::slurp($f);
}

sub resp_command {
    my @args = @_;
    return '*' . scalar(@args) . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
}

# Answers the connection handshake the module sends (AUTH, SELECT,
# SCRIPT LOAD, PING, CLIENT ...) like a real Redis; undef for anything
# else.  For handlers of fake_redis: fake_std($argv, $state) // ...
sub fake_std {
    my ($argv, $state) = @_;
    my $cmd = uc($argv->[0] // '');
    # a listing is MULTI, EVALSHA, ZREVRANGE, EXEC: queued like Redis does,
    # and the reply to EXEC is what the test set for it
    if ($state) {
        if ($cmd eq 'MULTI') {
            $state->{multi} = 1;
            return resp_status('OK');
        }
        if ($state->{multi}) {
            return resp_status('QUEUED') if $cmd ne 'EXEC';
            $state->{multi} = 0;
        }
    }
    return resp_status('OK') if $cmd eq 'AUTH' || $cmd eq 'SELECT'
                                || $cmd eq 'CLIENT' || $cmd eq 'HELLO';
    return resp_status('PONG') if $cmd eq 'PING';
    if ($cmd eq 'SCRIPT' && uc($argv->[1] // '') eq 'LOAD') {
        my $sha = sha1_hex($argv->[2] // '');
        $state->{scripts}{$sha} = $argv->[2] if $state;
        return resp_bulk($sha);
    }
    return undef;
}

###########################################################################

package Presence::Test::RespError;

use overload '""' => sub { "ERR(" . $_[0]{message} . ")" }, fallback => 1;

sub new { bless { message => $_[1] }, $_[0] }
sub message { $_[0]{message} }

1;
