package Presence::Test::SSE;

# A Server-Sent Events client for the tests of presence_stream, over a raw
# non-blocking socket: the request, the status line and headers, chunked
# transfer encoding, and the event stream itself as a browser's
# EventSource reads it (https://html.spec.whatwg.org/#event-stream-interpretation).
# Core Perl only.
#
#   my $s = Presence::Test::SSE->open($port, '/stream',
#               headers => ['Last-Event-ID' => 42], http => '1.0',
#               rcvbuf => 4096, method => 'HEAD', close => 1);
#   my $ev = $s->next_event(2);           # the next event not taken yet
#   $ev = $s->wait_event('join', 2);      # the next join (others passed over)
#   $ev = $s->wait_event(sub { $_[0]{json}{user_id} eq 'bob' }, 2);
#   $s->wait(sub { $s->closed }, 2);      # any condition, reading meanwhile
#   Presence::Test::SSE::wait_all([@streams], sub { ... }, 5);
#   my $st = Presence::Test::SSE::replay($s->events);
#
# Every timeout is in seconds and scaled (Presence::Test::scaled), as the
# waits of Presence::Test are.  An event is a hash:
#
#   type     the event field ('message' without one)
#   id       the id field of this event, undef when it had none
#   last_id  the last event ID after it (what a browser would send back)
#   data     the data lines joined with "\n"
#   json     data decoded as JSON (undef if it is not JSON)
#   retry    the retry value given in this event's block, if any
#   raw      the block's text
#   t        when it was read (Time::HiRes::time)
#
# As in a browser, a block without a data field dispatches nothing; such
# blocks are counted in {dataless} (with their text in {dataless_raw}).
# Comments (":" lines) go to comments(), without the ":" and the one space
# after it, with their times in comment_times(); retry values to retries().

use strict;
use warnings;

use Carp qw(croak);
use Errno qw(EAGAIN EWOULDBLOCK EINTR ECONNRESET);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use Socket qw(SOL_SOCKET SO_RCVBUF IPPROTO_TCP inet_aton pack_sockaddr_in);
use Time::HiRes qw(time);

my $JSON = JSON::PP->new->utf8->allow_nonref;

sub _scaled { Presence::Test::scaled($_[0]) }

# Presence::Test::SSE->open($port, $path, %o): connects, sends the request
# and returns at once (nothing read yet).
#   method   GET (default), HEAD, POST...
#   http     '1.1' (default) or '1.0'
#   headers  [name => value, ...] added to the request
#   body     a request body (Content-Length added)
#   close    1: send Connection: close (HTTP/1.1)
#   rcvbuf   SO_RCVBUF set before connecting (a small TCP window)
#   no_read  1: do not read at all until resume_reading()
sub open {
    my ($class, $port, $path, %o) = @_;
    my $method = $o{method} // 'GET';
    my $http = $o{http} // '1.1';
    my $s = IO::Socket::INET->new(Proto => 'tcp')
        or croak "socket: $!";
    if ($o{rcvbuf}) {
        setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', $o{rcvbuf}))
            or croak "SO_RCVBUF: $!";
    }
    connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1')))
        or croak "connect to 127.0.0.1:$port: $!";
    $s->blocking(0);

    my $req = "$method $path HTTP/$http\r\nHost: localhost\r\n";
    $req .= "Connection: close\r\n" if $o{close} && $http eq '1.1';
    my @h = @{ $o{headers} || [] };
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    $req .= 'Content-Length: ' . length($o{body}) . "\r\n" if defined $o{body};
    $req .= "\r\n";
    $req .= $o{body} if defined $o{body};

    my $self = bless {
        sock => $s, port => $port, path => $path, method => $method,
        t0 => time, out => $req,
        raw => '',          # bytes read, not parsed yet
        body => '',         # the decoded body, all of it
        sse => '',          # body not parsed as events yet
        events => [], comments => [], comment_times => [], retries => [],
        dataless => 0, dataless_raw => [],
        pos => 0,           # next_event's cursor
        last_id => '',
        cur => _new_block(),
        no_read => $o{no_read},
        bytes => 0,
    }, $class;
    $self->_flush;
    return $self;
}

sub _new_block { { data => undef, type => undef, id => undef,
                   retry => undef, raw => '' } }

sub sock     { $_[0]{sock} }
sub fd       { defined $_[0]{sock} ? CORE::fileno($_[0]{sock}) : undef }

# the status line and the headers (after wait_headers)
sub status   { $_[0]{status} }
sub reason   { $_[0]{reason} }
sub version  { $_[0]{version} }
sub headers  { $_[0]{headers} || {} }
sub header   { $_[0]{headers} ? $_[0]{headers}{ lc $_[1] } : undef }
sub header_list { @{ $_[0]{header_list} || [] } }

# the body as decoded so far (de-chunked), the body decoded as JSON
sub body     { $_[0]{body} }
sub json     { my $j = eval { $JSON->decode($_[0]{body}) }; $j }

# how many bytes of the response were read so far (headers included)
sub bytes_read { $_[0]{bytes} }

sub events        { @{ $_[0]{events} } }
sub comments      { @{ $_[0]{comments} } }
sub comment_times { @{ $_[0]{comment_times} } }
sub retries       { @{ $_[0]{retries} } }
sub last_event_id { $_[0]{last_id} }

# the events of a type, in order
sub events_of {
    my ($self, $type) = @_;
    return grep { $_->{type} eq $type } @{ $self->{events} };
}

# the response is over: the last chunk came, the Content-Length was read,
# or the server closed the connection
sub closed   { $_[0]{ended} || $_[0]{eof} ? 1 : 0 }
# the response ended as HTTP says it ends (last chunk, Content-Length,
# the end of a HEAD or a body-less answer; HTTP/1.0: the close)
sub complete { $_[0]{ended} ? 1 : 0 }
# the server closed the connection (read 0, or a reset)
sub eof      { $_[0]{eof} ? 1 : 0 }
sub reset    { $_[0]{reset} ? 1 : 0 }
# what broke the parse, if anything (a bad chunk, a bad status line)
sub error    { $_[0]{error} }
sub have_headers { defined $_[0]{status} }

sub stop_reading   { $_[0]{no_read} = 1 }
sub resume_reading { $_[0]{no_read} = 0 }

sub close {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
    $self->{sock} = undef;
    $self->{closed_by_us} = 1;
}

sub DESTROY {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
}

###########################################################################
# reading

sub _flush {
    my ($self) = @_;
    while (length $self->{out}) {
        my $n = syswrite $self->{sock}, $self->{out};
        if (!defined $n) {
            return if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            $self->{out} = '';      # the server closed: read what it said
            return;
        }
        substr($self->{out}, 0, $n, '');
    }
}

# wants select(): not closed, not told to stop reading
sub _readable {
    my ($self) = @_;
    return $self->{sock} && !$self->{eof} && !$self->{no_read};
}

# reads what the socket holds now (without waiting) and parses it;
# returns true when something new was read
sub poll {
    my ($self) = @_;
    $self->_flush if length $self->{out};
    return 0 unless $self->_readable;
    my $got = 0;
    while (1) {
        my $n = sysread $self->{sock}, my $buf, 65536;
        if (!defined $n) {
            last if $! == EAGAIN || $! == EWOULDBLOCK;
            next if $! == EINTR;
            $self->{reset} = 1 if $! == ECONNRESET;
            $self->{eof} = 1;
            $self->{eof_at} = time;
            last;
        }
        if ($n == 0) {
            $self->{eof} = 1;
            $self->{eof_at} = time;
            last;
        }
        $got = 1;
        $self->{bytes} += $n;
        $self->{raw} .= $buf;
        last if $self->{no_read};
    }
    $self->_parse;
    if ($self->{eof} && !$self->{ended} && defined $self->{status}
        && $self->{until_close})
    {
        # a body delimited by the close (HTTP/1.0): the close ends it
        $self->_sse_end;
        $self->{ended} = 1;
        $self->{ended_at} = time;
    }
    return $got || $self->{eof};
}

sub _parse {
    my ($self) = @_;
    return if $self->{error};
    if (!defined $self->{status}) {
        my $end = index $self->{raw}, "\r\n\r\n";
        return if $end < 0;
        my $head = substr $self->{raw}, 0, $end;
        substr($self->{raw}, 0, $end + 4, '');
        my @lines = split /\r\n/, $head;
        my $sl = shift @lines;
        my ($ver, $st, $reason) = $sl =~ m{^HTTP/(\d\.\d) (\d{3})(?: (.*))?$};
        if (!defined $st) {
            $self->{error} = "bad status line: $sl";
            return;
        }
        my (%h, @list);
        for (@lines) {
            my ($k, $v) = /^([^:]+):[ \t]*(.*?)[ \t]*$/ or next;
            push @list, [$k, $v];
            push @{ $h{lc $k} }, $v;
        }
        @{$self}{qw(version status reason)} = ($ver, 0 + $st, $reason);
        $self->{headers} = { map { $_ => join(', ', @{ $h{$_} }) } keys %h };
        $self->{header_list} = \@list;
        $self->{headers_at} = time;
        my $te = $self->{headers}{'transfer-encoding'} // '';
        my $cl = $self->{headers}{'content-length'};
        if ($self->{method} eq 'HEAD' || $st =~ /^(?:1..|204|304)$/) {
            $self->{ended} = 1;
            $self->{ended_at} = time;
            return;
        } elsif ($te =~ /\bchunked\b/i) {
            $self->{chunked} = 1;
        } elsif (defined $cl) {
            $self->{left} = $cl;
        } else {
            $self->{until_close} = 1;
        }
    }
    return if $self->{ended};

    my $new = '';
    if ($self->{chunked}) {
        while (1) {
            if ($self->{in_chunk}) {
                my $take = $self->{in_chunk};
                $take = length $self->{raw} if length $self->{raw} < $take;
                $new .= substr($self->{raw}, 0, $take, '');
                $self->{in_chunk} -= $take;
                last if $self->{in_chunk};
                $self->{need_crlf} = 1;
            }
            if ($self->{need_crlf}) {
                last if length $self->{raw} < 2;
                if (substr($self->{raw}, 0, 2) ne "\r\n") {
                    $self->{error} = 'no CRLF after a chunk: '
                        . substr($self->{raw}, 0, 40);
                    last;
                }
                substr($self->{raw}, 0, 2, '');
                $self->{need_crlf} = 0;
            }
            if ($self->{trailer}) {
                # trailer lines up to an empty line
                my $eol = index $self->{raw}, "\r\n";
                last if $eol < 0;
                my $line = substr($self->{raw}, 0, $eol + 2, '');
                next if $eol > 0;
                $self->{ended} = 1;
                $self->{ended_at} = time;
                $self->{extra} = $self->{raw};   # anything after the end
                last;
            }
            my $eol = index $self->{raw}, "\r\n";
            last if $eol < 0;
            my $line = substr($self->{raw}, 0, $eol + 2, '');
            my ($hex) = $line =~ /^([0-9a-fA-F]+)(?:;[^\r]*)?\r\n$/;
            if (!defined $hex) {
                $self->{error} = "bad chunk size line: $line";
                last;
            }
            my $size = hex $hex;
            push @{ $self->{chunks} }, $size;
            if ($size == 0) {
                $self->{trailer} = 1;
                next;
            }
            $self->{in_chunk} = $size;
        }
    } elsif (defined $self->{left}) {
        my $take = $self->{left};
        $take = length $self->{raw} if length $self->{raw} < $take;
        $new = substr($self->{raw}, 0, $take, '');
        $self->{left} -= $take;
        if (!$self->{left}) {
            $self->{ended} = 1;
            $self->{ended_at} = time;
        }
    } else {
        $new = $self->{raw};
        $self->{raw} = '';
    }
    $self->{body} .= $new;
    $self->{sse} .= $new;
    $self->_sse;
    $self->_sse_end if $self->{ended};
}

# the event stream: lines end with CRLF, LF or CR; a blank line
# dispatches the block
sub _sse {
    my ($self) = @_;
    return unless ($self->{headers}{'content-type'} // '')
                  =~ m{^text/event-stream}i;
    if (!$self->{bom_checked} && length $self->{sse} >= 3) {
        $self->{bom_checked} = 1;
        $self->{sse} =~ s/^\xEF\xBB\xBF//;
    }
    while ($self->{sse} =~ /\A([^\r\n]*)(\r\n|\n|\r)/) {
        my ($line, $eol) = ($1, $2);
        # a CR at the end of what came so far may be the CR of a CRLF
        last if $eol eq "\r" && length($line) + 1 == length $self->{sse}
                && !$self->{ended} && !$self->{eof};
        substr($self->{sse}, 0, length($line) + length($eol), '');
        $self->_line($line);
    }
}

# at the end of the stream a block not ended by a blank line is dropped,
# as a browser drops it; it is kept in {partial} to look at
sub _sse_end {
    my ($self) = @_;
    return if $self->{sse_ended}++;
    $self->{partial} = $self->{cur}{raw} . $self->{sse}
        if length($self->{cur}{raw}) || length $self->{sse};
}

sub _line {
    my ($self, $line) = @_;
    my $cur = $self->{cur};
    if ($line eq '') {
        $self->_dispatch if length $cur->{raw};
        return;
    }
    $cur->{raw} .= "$line\n";
    if ($line =~ /^:(.*)$/s) {
        my $c = $1;
        $c =~ s/^ //;
        push @{ $self->{comments} }, $c;
        push @{ $self->{comment_times} }, time;
        $cur->{raw} = '' if $cur->{raw} eq "$line\n";   # a comment alone
        return;
    }
    my ($field, $value) = $line =~ /^([^:]*)(?::(.*))?$/s;
    $value //= '';
    $value =~ s/^ //;
    if ($field eq 'event') {
        $cur->{type} = $value;
    } elsif ($field eq 'data') {
        $cur->{data} = defined $cur->{data} ? "$cur->{data}\n$value" : $value;
    } elsif ($field eq 'id') {
        if ($value !~ /\0/) {
            $cur->{id} = $value;
            $self->{last_id} = $value;
        }
    } elsif ($field eq 'retry') {
        if ($value =~ /^[0-9]+$/) {
            $cur->{retry} = $value;
            push @{ $self->{retries} }, 0 + $value;
        }
    } else {
        push @{ $self->{unknown_fields} }, $line;
    }
}

sub _dispatch {
    my ($self) = @_;
    my $cur = $self->{cur};
    $self->{cur} = _new_block();
    if (!defined $cur->{data}) {
        # a retry alone, or an event without data: no event in a browser
        if (defined $cur->{type} || defined $cur->{id}) {
            $self->{dataless}++;
            push @{ $self->{dataless_raw} }, $cur->{raw};
        }
        return;
    }
    my $ev = {
        type    => (defined $cur->{type} && length $cur->{type})
                   ? $cur->{type} : 'message',
        id      => $cur->{id},
        last_id => $self->{last_id},
        data    => $cur->{data},
        retry   => $cur->{retry},
        raw     => $cur->{raw},
        t       => time,
    };
    $ev->{json} = eval { $JSON->decode($cur->{data}) };
    push @{ $self->{events} }, $ev;
}

###########################################################################
# waiting

# $s->wait($cond, $timeout): reads until $cond->($s) is true (returns its
# value) or the timeout (scaled) passes (returns undef)
sub wait {
    my ($self, $cond, $timeout) = @_;
    my $v = wait_all([$self], sub { $cond->($self) }, $timeout);
    return $v;
}

# reads for $timeout seconds (scaled) whatever comes: for "nothing else"
sub settle {
    my ($self, $timeout) = @_;
    wait_all([$self], sub { 0 }, $timeout);
    return $self;
}

sub wait_headers {
    my ($self, $timeout) = @_;
    return $self->wait(sub { defined $_[0]{status} || $_[0]->closed
                             || $_[0]{error} }, $timeout)
           && defined $self->{status};
}

sub wait_closed {
    my ($self, $timeout) = @_;
    return $self->wait(sub { $_[0]->closed }, $timeout);
}

# the next event not taken yet, waiting for it up to $timeout (scaled);
# undef if none came
sub next_event {
    my ($self, $timeout) = @_;
    my $ok = $self->wait(sub { $_[0]{pos} < @{ $_[0]{events} } }, $timeout);
    return undef unless $ok;
    return $self->{events}[ $self->{pos}++ ];
}

# the next event not taken yet that matches: a type, or a code ref given
# the event; the events passed over are taken too (events() still has
# them).  undef if none came within $timeout (scaled).
sub wait_event {
    my ($self, $match, $timeout) = @_;
    my $test = ref $match ? $match : sub { $_[0]{type} eq $match };
    my $found;
    $self->wait(sub {
        my ($s) = @_;
        while ($s->{pos} < @{ $s->{events} }) {
            my $ev = $s->{events}[ $s->{pos}++ ];
            local $@;
            if (eval { $test->($ev) }) { $found = $ev; return 1 }
        }
        return 0;
    }, $timeout);
    return $found;
}

# the events not taken yet, taking them
sub take {
    my ($self) = @_;
    my @ev = @{ $self->{events} }[ $self->{pos} .. $#{ $self->{events} } ];
    $self->{pos} = @{ $self->{events} };
    return @ev;
}

# wait_all([@streams], $cond, $timeout): reads all the streams (one
# select over them) until $cond->() is true; returns its value, or undef
# at the deadline ($timeout scaled).  With no $cond, until the timeout.
sub wait_all {
    my ($streams, $cond, $timeout) = @_;
    my $deadline = time + _scaled($timeout // 5);
    $_->poll for @$streams;
    while (1) {
        if ($cond) {
            my $v = $cond->();
            return $v if $v;
        }
        my $left = $deadline - time;
        return undef if $left <= 0;
        my $sel = IO::Select->new;
        my %by_fd;
        for (@$streams) {
            next unless $_->_readable;
            $sel->add($_->{sock});
            $by_fd{ CORE::fileno $_->{sock} } = $_;
        }
        # nothing to read from: the condition can only change by time
        if (!$sel->count) {
            Time::HiRes::sleep($left < 0.02 ? $left : 0.02);
            next;
        }
        my @ready = $sel->can_read($left < 0.05 ? $left : 0.05);
        $by_fd{ CORE::fileno $_ }->poll for @ready;
    }
}

# reads whatever all the streams hold now, without waiting
sub poll_all { $_->poll for @{ $_[0] } }

###########################################################################
# replay(@events): what a client holds after applying a snapshot and then
# the events in order (a later snapshot starts again from it; events that
# are no snapshot, join or leave are passed over).  Returns
#   { users => [sorted], count => N, snapshot => the last snapshot event,
#     id => the last id applied, errors => [what was wrong] }
# errors: no snapshot first, an id that is not a decimal integer, ids not
# strictly increasing (a later snapshot may repeat the last id: it holds
# every event up to its id), an event at or below its snapshot's id, bad
# JSON; with
# a full snapshot (every user listed) also a join of a user already there,
# a leave of one not there, a count that is not the number of users.
sub replay {
    my (@events) = @_;
    my (%users, $count, $snap, $last, @errors);
    my $full = 0;
    for my $ev (@events) {
        my $t = $ev->{type};
        next unless $t eq 'snapshot' || $t eq 'join' || $t eq 'leave';
        my $j = $ev->{json};
        my $where = "$t " . ($ev->{id} // '(no id)') . " $ev->{data}";
        if (ref $j ne 'HASH') {
            push @errors, "not a JSON object: $where";
            next;
        }
        my $id = $ev->{id};
        if (!defined $id || $id !~ /^[0-9]+$/) {
            push @errors, "no decimal id: $where";
        } elsif (defined $last && $t eq 'snapshot' ? _id_gt($last, $id)
                                                   : defined $last && !_id_gt($id, $last)) {
            # a snapshot carries the id of the last event it holds: a
            # fresh one may repeat the last id (nothing happened since)
            push @errors, "id out of order after $last: $where";
        }
        if ($t eq 'snapshot') {
            %users = map { $_ => 1 } @{ $j->{users} || [] };
            $count = $j->{count};
            $full = @{ $j->{users} || [] } == ($count // -1);
            push @errors, "snapshot users not sorted: $where"
                if join("\n", @{ $j->{users} || [] })
                   ne join("\n", sort @{ $j->{users} || [] });
            $snap = $ev;
        } elsif (!$snap) {
            push @errors, "$t before any snapshot: $where";
            next;
        } else {
            push @errors, "at or below the snapshot's id $snap->{id}: $where"
                if defined $id && defined $snap->{id}
                   && !_id_gt($id, $snap->{id});
            my $u = $j->{user_id};
            if (!defined $u) {
                push @errors, "no user_id: $where";
            } elsif ($t eq 'join') {
                push @errors, "join of a user already online: $where"
                    if $full && $users{$u};
                $users{$u} = 1;
            } else {
                push @errors, "leave of a user not online: $where"
                    if $full && !$users{$u};
                delete $users{$u};
                push @errors, "leave with reason "
                              . ($j->{reason} // 'undef') . ": $where"
                    unless ($j->{reason} // '') =~ /^(?:leave|timeout)$/;
            }
            $count = $j->{count};
            push @errors, "count $count, users " . scalar(keys %users)
                          . ": $where"
                if $full && ($count // -1) != keys %users;
        }
        $last = $id if defined $id && $id =~ /^[0-9]+$/;
    }
    push @errors, 'no snapshot' unless $snap;
    return { users => [sort keys %users], count => $count, id => $last,
             snapshot => $snap, errors => \@errors };
}

# $a > $b for decimal strings of any length
sub _id_gt {
    my ($a, $b) = @_;
    s/^0+(?=\d)// for $a, $b;
    return length $a > length $b if length $a != length $b;
    return $a gt $b;
}

1;
