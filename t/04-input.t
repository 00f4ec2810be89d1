#!/usr/bin/perl

# Input rules: every broken input is a 4xx with the JSON error body and
# leaves Redis exactly as it was; odd but valid ids and rooms touch their
# own key and nothing else; bodies that arrive chunked, slowly, in several
# buffers, pipelined or spooled to a temp file are read, not ignored.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Presence::Test;

need_module();

my $r = start_redis();
my $ng = start_nginx(<<'EOF', vars => { REDIS => $r->addr });
presence_redis %%REDIS%%;
presence_ttl 300s;

server {
    listen 127.0.0.1:%%PORT%%;

%%API%%
    location = /hbv    { presence_heartbeat $http_x_user; }
    location = /status { presence_status; }

    location = /room/hb     { presence_room $arg_room; presence_heartbeat; }
    location = /room/online { presence_room $arg_room; presence_online; }
    location = /hroom/hb    { presence_room $http_x_room; presence_heartbeat; }

    location = /short/hb { presence_max_id_length 8; presence_heartbeat; }
    location = /short/online { presence_max_id_length 8; presence_online; }
    location = /small/hb { presence_max_body_size 64; presence_heartbeat; }
    location = /big/hb   { presence_max_body_size 512k; presence_heartbeat; }

    location = /spool/hb {
        client_body_buffer_size 16;
        presence_heartbeat;
    }
    location = /file/hb {
        client_body_in_file_only clean;
        presence_heartbeat;
    }
    location = /file/leave {
        client_body_in_file_only clean;
        presence_leave;
    }
}
EOF

my $KEY = 'presence:{global}';

ok(wait_for(sub { $ng->get('/online')->{status} == 200 }, 5),
   'module connected to redis');

# keys that no request below may touch
$r->cmd('SET', 'sentinel', 'keep');
$r->cmd('ZADD', 'presence:{other}', '99999999999999', 'x');
$r->cmd('ZADD', $KEY, '99999999999999', 'seed');
$r->cmd({ db => 1 }, 'SET', 'db1', 'keep');

# rejects($name, $status, $code, sub { request }): the answer is the error
# and Redis is unchanged
sub rejects {
    my ($name, $status, $code, $req) = @_;
    my $before = $r->snapshot;
    my $res = $req->();
    my $ok = api_error_ok($res, $status, $code, $name);
    is_deeply($r->snapshot, $before, "  redis unchanged")
        or diag explain $r->snapshot;
    return $res;
}

# touches_only($name, $key, $member, sub { request }): 200, and of all of
# Redis only $key changed, now holding $member
sub touches_only {
    my ($name, $key, $member, $req) = @_;
    my $before = $r->snapshot;
    my $res = $req->();
    my $after = $r->snapshot;
    is($res->{status}, 200, $name) or diag $res->{raw};
    my %b = %$before;
    my %a = %$after;
    my $z = delete $a{"0/$key"};
    delete $b{"0/$key"};
    # and the room's last event id, when the user joined
    delete $_->{"0/$key:v"} for \%a, \%b;
    is_deeply(\%a, \%b, "  no other key touched")
        or diag explain $after;
    my %members = @{ $z ? $z->[1] : [] };
    ok(exists $members{$member}, "  member stored as sent")
        or diag explain $z;
    return $res;
}

sub post { my ($path, $body, @h) = @_; $ng->post($path, $body, headers => \@h) }

###########################################################################
# user ids

rejects('missing user_id', 400, 'invalid_user_id', sub { post('/hb', '{}') });
for my $v ('5', 'null', 'true', '["a"]', '{"a":"b"}', '1.5') {
    rejects("user_id $v", 400, 'invalid_user_id',
            sub { post('/hb', qq({"user_id":$v})) });
}
rejects('empty user_id', 400, 'invalid_user_id',
        sub { post('/hb', '{"user_id":""}') });
rejects('129 bytes', 400, 'invalid_user_id',
        sub { post('/hb', '{"user_id":"' . ('a' x 129) . '"}') });
rejects('43 x 3-byte characters = 129 bytes', 400, 'invalid_user_id',
        sub { post('/hb', '{"user_id":"' . ("\xe2\x82\xac" x 43) . '"}') });
rejects('129 bytes from escapes', 400, 'invalid_user_id',
        sub { post('/hb', '{"user_id":"' . ('\u00e9' x 64) . 'x"}') });

# a body that is not UTF-8 is no JSON text (RFC 8259, 8.1), whichever
# string the bytes are in
for my $bad (["\xff", 'byte ff'], ["\xc0\xaf", 'overlong /'],
             ["\xed\xa0\x80", 'encoded surrogate'], ["caf\xc3", 'truncated'],
             ["\xf4\x90\x80\x80", 'above U+10FFFF'])
{
    rejects("invalid UTF-8 in user_id: $bad->[1]", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"a$bad->[0]b"})) });
}

for my $esc ('\u0000', '\u0001', '\n', '\r', '\t', '\u001f', '\u007f',
             '\r\n*1\r\n$4\r\nPING\r\n')
{
    rejects("control character $esc", 400, 'invalid_user_id',
            sub { post('/hb', qq({"user_id":"a${esc}b"})) });
}

for my $esc ('\u0085', "\xc2\x9f") {
    rejects("C1 control character $esc", 400, 'invalid_user_id',
            sub { post('/hb', qq({"user_id":"a${esc}b"})) });
}

rejects('leave checks ids too', 400, 'invalid_user_id',
        sub { post('/leave', '{"user_id":"a\u0000"}') });
rejects('presence_max_id_length 8', 400, 'invalid_user_id',
        sub { post('/short/hb', '{"user_id":"123456789"}') });

touches_only('128 bytes', $KEY, 'a' x 128,
             sub { post('/hb', '{"user_id":"' . ('a' x 128) . '"}') });
touches_only('64 x 2-byte characters = 128 bytes', $KEY, "\xc3\xa9" x 64,
             sub { post('/hb', '{"user_id":"' . ("\xc3\xa9" x 64) . '"}') });
touches_only('escaped characters are decoded', $KEY, "\xc3\xa9t\xc3\xa9",
             sub { post('/hb', '{"user_id":"\u00e9t\u00E9"}') });
touches_only('a surrogate pair', $KEY, "\xf0\x9f\x98\x80",
             sub { post('/hb', '{"user_id":"\ud83d\ude00"}') });
touches_only('presence_max_id_length 8: 8 bytes', $KEY, '12345678',
             sub { post('/short/hb', '{"user_id":"12345678"}') });

for my $id ('*1 $4 PING', 'presence:{other}', '{global}', '} x {', 'a"b\\c',
            '<script>alert(1)</script>', 'EVAL x 0', ' ')
{
    my $json = JSON::PP->new->encode({ user_id => $id });
    my $res = touches_only("id '$id'", $KEY, $id, sub { post('/hb', $json) });
    is($res->{json}{user_id}, $id, '  echoed back exactly');
}

###########################################################################
# malformed bodies

for my $body ('{"user_id":', '{user_id:"a"}', "{'user_id':'a'}", '"alice"',
              '["alice"]', '42', 'null', '{"user_id":"a"} x',
              '{"user_id":"a"}{}', '{"user_id":"a"}}', '{"user_id":"a",}',
              '{"user_id":"a"', "\x00", 'user_id=alice')
{
    (my $show = $body) =~ s/\x00/\\0/g;
    rejects("invalid JSON: $show", 400, 'invalid_json',
            sub { post('/hb', $body) });
}
{
    # nesting deeper than any parser should recurse: refused or parsed,
    # never a crash (the error.log check at the end looks for one)
    my $deep = '{"a":' . ('[' x 2000) . (']' x 2000) . ',"user_id":"deep"}';
    my $res = post('/hb', $deep);
    ok($res->{status} == 200
       || ($res->{status} == 400 && $res->{json}{error} eq 'invalid_json'),
       'JSON nested 2000 deep: 200 or invalid_json') or diag $res->{raw};
}
###########################################################################
# strict JSON: RFC 8259 and nothing more lenient, in every field

# raw control characters are not allowed inside a JSON string; a NUL byte
# must not cut the id short either
for my $c (["alice\x00evil", 'NUL byte'], ["ali\x01ce", 'byte 01'],
           ["a\x1fb", 'byte 1f'], ["a\tb", 'tab'], ["a\nb", 'newline'],
           ["a\r\n*1\r\n\$4\r\nPING\r\nb", 'CR LF'])
{
    (my $show = $c->[1]) =~ s/\n/\\n/g;
    rejects("raw $show in user_id", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"$c->[0]"})) });
    rejects("raw $show in another field", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"bob","x":"$c->[0]"})) });
}
rejects('leave: raw NUL byte in user_id', 400, 'invalid_json',
        sub { post('/leave', qq({"user_id":"alice\x00evil"})) });
is($r->cmd('ZSCORE', $KEY, 'alice'), undef, '  alice was never written');

for my $c (['01', 'leading zero'], ['-01', 'negative leading zero'],
           ['00.5', 'leading zeros in a fraction'], ['1.', 'no digit after .'],
           ['.5', 'no digit before .'], ['+1', 'a plus sign'],
           ['0x10', 'hex'], ['NaN', 'NaN'], ['Infinity', 'Infinity'],
           ['TRUE', 'TRUE'], ["'x'", 'single quotes'])
{
    rejects("another field: $c->[1] ($c->[0])", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"bob","n":$c->[0]})) });
}

for my $c (["\xff", 'byte ff'], ["\xc0\xaf", 'overlong /'],
           ["\xed\xa0\x80", 'encoded surrogate'], ["caf\xc3", 'truncated'])
{
    rejects("invalid UTF-8 in another field: $c->[1]", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"bob","x":"$c->[0]"})) });
    rejects("invalid UTF-8 in a key: $c->[1]", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"bob","$c->[0]":1})) });
}
rejects('invalid UTF-8 after the object', 400, 'invalid_json',
        sub { post('/hb', qq({"user_id":"bob"}\xff)) });
rejects('NUL byte after the object', 400, 'invalid_json',
        sub { post('/hb', qq({"user_id":"bob"}\x00)) });
# jansson skips a raw NUL right after a number or a literal: the module
# refuses any raw NUL itself
for my $c (['1', 'a number'], ['null', 'null'], ['true', 'true'])
{
    rejects("raw NUL byte after $c->[1] in another field", 400,
            'invalid_json',
            sub { post('/hb', qq({"user_id":"bob","n":[$c->[0]\x00,2]})) });
    rejects("raw NUL byte after $c->[1] before the end", 400, 'invalid_json',
            sub { post('/hb', qq({"user_id":"bob","n":$c->[0]\x00})) });
}
rejects('byte order mark', 400, 'invalid_json',
        sub { post('/hb', qq(\xef\xbb\xbf{"user_id":"bob"})) });
rejects('a lone surrogate escape in another field', 400, 'invalid_json',
        sub { post('/hb', '{"user_id":"bob","x":"\ud800"}') });

# two ids in one body: which one counts would be the parser's choice
rejects('two user_id keys', 400, 'invalid_json',
        sub { post('/hb', '{"user_id":"bob","user_id":"eve"}') });
rejects('two user_id keys, one escaped', 400, 'invalid_json',
        sub { post('/hb', '{"user_id":"bob","user\u005fid":"eve"}') });
rejects('leave: two user_id keys', 400, 'invalid_json',
        sub { post('/leave', '{"user_id":"seed","user_id":"eve"}') });

# legal JSON around the id is the client's business
touches_only('"\u0000" in another field', $KEY, 'nul-elsewhere',
             sub { post('/hb', '{"user_id":"nul-elsewhere","x":"a\u0000b"}') });
touches_only('nesting in another field', $KEY, 'nested', sub {
    post('/hb', '{"x":{"a":[1,{"b":null},[]],"c":{}},"user_id":"nested"}');
});
touches_only('numbers in other fields', $KEY, 'numbers', sub {
    post('/hb', '{"a":0,"b":-0,"c":-1.5e+3,"d":1E-999,"e":0.0e0,'
                . '"f":123456789012345678901234567890,"user_id":"numbers"}');
});
touches_only('every JSON whitespace', $KEY, 'spaces',
             sub { post('/hb', qq( \t\r\n{ "user_id" :\n"spaces"\t} \r\n)) });
touches_only('DEL and C1 characters in another field', $KEY, 'c1',
             sub { post('/hb', qq({"user_id":"c1","x":"\x7f\xc2\x85"})) });
rejects('"\u0000" in user_id: valid JSON, not a valid id', 400,
        'invalid_user_id', sub { post('/hb', '{"user_id":"a\u0000b"}') });

{
    # deeper than jansson's limit (2048) with room for it in the body:
    # refused, and no unbounded recursion
    for my $n (3000, 100000) {
        rejects("JSON nested $n deep", 400, 'invalid_json', sub {
            post('/big/hb',
                 '{"a":' . ('[' x $n) . (']' x $n) . ',"user_id":"deep"}');
        });
    }
}

rejects('empty body', 400, 'invalid_json', sub { post('/hb', '') });
rejects('empty body, no content type', 400, 'invalid_json',
        sub { $ng->post('/hb', '', no_ct => 1) });
rejects('no body at all', 400, 'invalid_json',
        sub { $ng->request('POST', '/hb') });
rejects('leave: invalid JSON', 400, 'invalid_json',
        sub { post('/leave', '{') });

###########################################################################
# content types

for my $ct ('application/x-www-form-urlencoded', 'text/html',
            'multipart/form-data; boundary=x', 'application/jsonp',
            'application/json-patch+json', 'text/plainx', 'json')
{
    rejects("Content-Type: $ct", 415, 'unsupported_media_type',
            sub { post('/hb', '{"user_id":"ct"}', 'Content-Type' => $ct) });
}
for my $ct ('application/json', 'application/json;charset=utf-8',
            'application/json ; charset="utf-8"', 'text/plain',
            'text/plain; charset=UTF-8', 'APPLICATION/JSON', 'Text/Plain')
{
    touches_only("Content-Type: $ct accepted", $KEY, 'ct',
                 sub { post('/hb', '{"user_id":"ct"}', 'Content-Type' => $ct) });
}

###########################################################################
# sizes

my $pad = sub {         # a valid body of exactly $n bytes
    my ($n, $id) = @_;
    my $head = qq({"user_id":"$id");
    return $head . (' ' x ($n - length($head) - 1)) . '}';
};
touches_only('body of 4096 bytes', $KEY, 'big', sub { post('/hb', $pad->(4096, 'big')) });
rejects('body of 4097 bytes', 413, 'body_too_large',
        sub { post('/hb', $pad->(4097, 'toobig')) });
rejects('body of 1 MB', 413, 'body_too_large',
        sub { post('/hb', $pad->(1 << 20, 'toobig')) });
touches_only('presence_max_body_size 64: 64 bytes', $KEY, 'small',
             sub { post('/small/hb', $pad->(64, 'small')) });
rejects('presence_max_body_size 64: 65 bytes', 413, 'body_too_large',
        sub { post('/small/hb', $pad->(65, 'small')) });

# over the limit by Content-Length alone, before the body is sent
rejects('Content-Length 5000, body not sent yet', 413, 'body_too_large', sub {
    my $p = $ng->send_raw("POST /hb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        . "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n");
    $p->finish(5);
});

my $chunked = sub {
    my ($path, @chunks) = @_;
    my $req = "POST $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        . "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    $req .= sprintf("%x\r\n%s\r\n", length $_, $_) for @chunks;
    return $req . "0\r\n\r\n";
};

my $big = $pad->(5000, 'chunky');
rejects('chunked, 5000 bytes in 5 chunks', 413, 'body_too_large',
        sub { $ng->raw($chunked->('/hb', unpack '(a1000)*', $big)) });
rejects('chunked, 5000 bytes in one chunk', 413, 'body_too_large',
        sub { $ng->raw($chunked->('/hb', $big)) });
rejects('chunked, 65 bytes, max 64', 413, 'body_too_large',
        sub { $ng->raw($chunked->('/small/hb', unpack '(a20)*', $pad->(65, 's'))) });

###########################################################################
# bodies the way they arrive

touches_only('chunked body', $KEY, 'chunky', sub {
    $ng->raw($chunked->('/hb', '{"user_', 'id":"chu', 'nky"}'));
});
touches_only('chunked, one byte per chunk', $KEY, 'bytes', sub {
    $ng->raw($chunked->('/hb', split //, '{"user_id":"bytes"}'));
});

my $body = '{"user_id":"slowpoke"}';
my $head = "POST /hb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    . "Content-Type: application/json\r\nContent-Length: " . length($body)
    . "\r\n\r\n";
touches_only('body sent slowly in pieces', $KEY, 'slowpoke', sub {
    $ng->raw([$head, unpack('(a5)*', $body)], delay => 0.05);
});
touches_only('headers and half the body, then the rest', $KEY, 'slowpoke', sub {
    $ng->raw([$head . substr($body, 0, 10), substr($body, 10)], delay => 0.1);
});
touches_only('slow chunked body', $KEY, 'chunky2', sub {
    my $req = $chunked->('/hb', '{"user_', 'id":"chu', 'nky2"}');
    $ng->raw([unpack '(a13)*', $req], delay => 0.03);
});

my $long = '{"pad":"' . ('x' x 300) . '","user_id":"spooled"}';
touches_only('body spooled to a temp file (client_body_buffer_size 16)',
             $KEY, 'spooled', sub { post('/spool/hb', $long) });
touches_only('chunked body spooled to a temp file', $KEY, 'spooled2', sub {
    (my $b = $long) =~ s/spooled/spooled2/;
    $ng->raw($chunked->('/spool/hb', unpack '(a50)*', $b));
});
touches_only('client_body_in_file_only', $KEY, 'infile',
             sub { post('/file/hb', '{"user_id":"infile"}') });
rejects('invalid JSON in a temp file', 400, 'invalid_json',
        sub { post('/spool/hb', '{"pad":"' . ('x' x 300) . '",') });
rejects('invalid user_id in a temp file', 400, 'invalid_user_id',
        sub { post('/file/hb', '{"user_id":""}') });
rejects('trailing text in a temp file', 400, 'invalid_json',
        sub { post('/spool/hb', $long . ' x') });
rejects('too large in a temp file', 413, 'body_too_large',
        sub { post('/spool/hb', $pad->(4097, 'toobig')) });

my $res = post('/file/leave', '{"user_id":"infile"}');
is($res->{status}, 200, 'leave with a body in a file');
is($r->cmd('ZSCORE', $KEY, 'infile'), undef, '  and it left');

# two heartbeats pipelined on one connection
my $one = '{"user_id":"pipe1"}';
my $two = '{"user_id":"pipe2"}';
my @res = $ng->raw(
    "POST /hb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    . "Content-Length: " . length($one) . "\r\n\r\n$one"
    . "POST /hb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    . "Connection: close\r\nContent-Length: " . length($two) . "\r\n\r\n$two");
is(scalar @res, 2, 'pipelined: two answers');
is($res[0]{json}{user_id}, 'pipe1', '  first');
is($res[1]{json}{user_id}, 'pipe2', '  second');
ok(defined $r->cmd('ZSCORE', $KEY, 'pipe1')
   && defined $r->cmd('ZSCORE', $KEY, 'pipe2'), '  both stored');

# a body nobody reads (variable identity) must not become a request
@res = $ng->raw(
    "POST /hbv HTTP/1.1\r\nHost: x\r\nX-User: kept\r\n"
    . "Content-Type: application/json\r\nContent-Length: 22\r\n\r\n"
    . "GET /hb HTTP/1.1\r\n\r\n\r\n"
    . "GET /online?user_id=kept HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
is(scalar @res, 2, 'keep-alive after a variable identity with a body');
is($res[0]{json}{user_id}, 'kept', '  first answered');
ok($res[1] && $res[1]{status} == 200 && $res[1]{json}{online},
   '  then the next request, not the body') or diag $res[1]{raw};

# Expect: 100-continue
@res = $ng->raw(["POST /hb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 . "Content-Type: application/json\r\nContent-Length: 21\r\n"
                 . "Expect: 100-continue\r\n\r\n", '{"user_id":"expect1"}'],
                delay => 0.1);
is(join(' ', map { $_->{status} } @res), '100 200',
   'Expect: 100-continue, then 200') or diag explain \@res;

# keep-alive after an error: the rest of the body must not become a request
@res = $ng->raw(
    "POST /small/hb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    . "Content-Length: 100\r\n\r\n" . $pad->(100, 'POST /hb HTTP/1.1')
    . "GET /online?user_id=seed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
is($res[0]{status}, 413, 'keep-alive: 413 first');
ok(!$res[1] || $res[1]{status} == 200, '  then nothing or the next request')
    or diag $res[1]{raw};

###########################################################################
# chunked bodies nginx cannot parse: nginx's own 400 whichever handler and
# whatever the module would have answered, never a 500; the connection is
# closed, so that the bytes after the broken chunk never become a request

my $next = "GET /online?user_id=seed HTTP/1.1\r\nHost: x\r\n"
    . "Connection: close\r\n\r\n";

sub broken_chunk {
    my ($name, $method, $path, $headers, $body, %o) = @_;
    my $head = "$method $path HTTP/1.1\r\nHost: x\r\n"
        . join('', map { "$_\r\n" } @$headers)
        . "Transfer-Encoding: chunked\r\n\r\n";
    my $before = $r->snapshot;
    my @res = $ng->raw($o{late} ? [$head, $body . $next] : $head . $body . $next,
                       delay => 0.2);
    my $st = join ' ', map { $_->{status} } @res;
    is($st, $o{status} // 400, $name) or diag explain \@res;
    api_error_ok($res[0], $o{status}, $o{code}, '  the JSON error') if $o{code};
    is_deeply($r->snapshot, $before, '  redis unchanged');
}

my @json = ('Content-Type: application/json');
my @html = ('Content-Type: text/html');

broken_chunk('415 on the way, broken chunk', 'POST', '/hb', \@html, "zz\r\n");
broken_chunk('405 on the way, broken chunk', 'GET', '/hb', [], "zz\r\n");
broken_chunk('PUT, broken chunk', 'PUT', '/hb', \@json, "zz\r\n");
broken_chunk('heartbeat, broken chunk', 'POST', '/hb', \@json, "zz\r\n");
broken_chunk('heartbeat, a good chunk then a broken one', 'POST', '/hb',
             \@json, "5\r\n{\"use\r\nzz\r\n");
broken_chunk('heartbeat, chunk size overflows', 'POST', '/hb', \@json,
             "fffffffffffffffffffff\r\n");
broken_chunk('heartbeat, no CRLF after the chunk', 'POST', '/hb', \@json,
             "2\r\n{}xx");
broken_chunk('heartbeat, the broken chunk comes later', 'POST', '/hb',
             \@json, "zz\r\n", late => 1);
broken_chunk('variable identity, broken chunk', 'POST', '/hbv',
             [@json, 'X-User: broken'], "zz\r\n");
broken_chunk('online, broken chunk', 'GET', '/online', [], "zz\r\n");
broken_chunk('status, broken chunk', 'GET', '/status', [], "zz\r\n");

# the module answered before the broken chunk came: its error stands
broken_chunk('415 sent, then a broken chunk', 'POST', '/hb', \@html,
             "zz\r\n", late => 1, status => 415,
             code => 'unsupported_media_type');
broken_chunk('405 sent, then a broken chunk', 'GET', '/hb', [],
             "zz\r\n", late => 1, status => 405,
             code => 'method_not_allowed');

###########################################################################
# methods

for my $c (['GET', '/hb', 'POST'], ['PUT', '/hb', 'POST'],
           ['DELETE', '/leave', 'POST'], ['GET', '/leave', 'POST'],
           ['POST', '/online', 'GET, HEAD'], ['PUT', '/online', 'GET, HEAD'],
           ['DELETE', '/online', 'GET, HEAD'], ['OPTIONS', '/online', 'GET, HEAD'])
{
    my ($m, $path, $allow) = @$c;
    my $res = rejects("$m $path", 405, 'method_not_allowed', sub {
        $ng->request($m, $path, $m eq 'GET' ? () : (body => '{"user_id":"m"}',
                     headers => ['Content-Type' => 'application/json']));
    });
    is($res->{headers}{allow}, $allow, "  Allow: $allow");
}
my $hres = $ng->head('/hb');
is($hres->{status}, 405, 'HEAD /hb: 405');
is($hres->{headers}{allow}, 'POST', '  Allow: POST');

###########################################################################
# rooms

rejects('room from an empty variable', 400, 'invalid_room',
        sub { post('/room/hb', '{"user_id":"r"}') });
rejects('listing of an empty room name', 400, 'invalid_room',
        sub { $ng->get('/room/online') });
rejects('room of 129 bytes', 400, 'invalid_room',
        sub { post('/room/hb?room=' . ('r' x 129), '{"user_id":"r"}') });
rejects('room with a control character', 400, 'invalid_room',
        sub { post('/hroom/hb', '{"user_id":"r"}', 'X-Room' => "a\x01b") });
rejects('room with a DEL', 400, 'invalid_room',
        sub { post('/hroom/hb', '{"user_id":"r"}', 'X-Room' => "a\x7fb") });
rejects('room that is not UTF-8', 400, 'invalid_room',
        sub { post('/hroom/hb', '{"user_id":"r"}', 'X-Room' => "caf\xe9") });
touches_only('room of 128 bytes', 'presence:{' . ('r' x 128) . '}', 'r',
             sub { post('/room/hb?room=' . ('r' x 128), '{"user_id":"r"}') });

# rooms that look like key syntax or escapes: either refused with nothing
# written, or written to exactly their own key
for my $room ('{room}', '%00', '}', 'a}{b', '*1', 'other}') {
    my $before = $r->snapshot;
    my $res = post("/room/hb?room=$room", '{"user_id":"r"}');
    if ($res->{status} == 200) {
        is($res->{json}{room}, $room, "room '$room': used as is");
        my %b = %$before;
        my %a = %{ $r->snapshot };
        my $z = delete $a{"0/presence:{$room}"};
        ok($z, "  in its own key presence:{$room}");
        ok(delete $a{"0/presence:{$room}:v"}, '  and its last event id');
        delete $b{"0/presence:{$room}:v"};
        is_deeply(\%a, \%b, '  no other key touched');
    } else {
        api_error_ok($res, 400, 'invalid_room', "room '$room': refused");
        is_deeply($r->snapshot, $before, '  redis unchanged');
    }
}

###########################################################################
# online arguments

for my $l ('abc', '-1', '1.5', '3x', '0x10', '+1') {
    rejects("limit=$l", 400, 'invalid_limit', sub { $ng->get("/online?limit=$l") });
}
$res = $ng->get('/online?limit=5000');
is($res->{status}, 200, 'limit=5000 (over presence_online_limit) is capped');
$res = $ng->get('/online?limit=99999999999999999999');
is($res->{status}, 200, 'a limit too large for any integer is capped too');

for my $c (['', 'empty'], ['%FF', 'not UTF-8'], ['a%0Ab', 'newline'],
           ['%00', 'NUL'], ['a' x 129, '129 bytes'], ['%7F', 'DEL'])
{
    rejects("lookup of $c->[1] user_id", 400, 'invalid_user_id',
            sub { $ng->get("/online?user_id=$c->[0]") });
}
# query values as browsers encode forms: '+' is a space, "%2B" a '+'
touches_only('heartbeat as "a b"', $KEY, 'a b',
             sub { post('/hb', '{"user_id":"a b"}') });
$res = $ng->get('/online?user_id=a+b');
is($res->{status}, 200, 'lookup of a+b') or diag $res->{raw};
is($res->{json}{user_id}, 'a b', "  is user 'a b'");
ok($res->{json}{online}, '  and finds them online');
$res = $ng->get('/online?user_id=a%2Bb');
is($res->{json}{user_id}, 'a+b', "lookup of a%2Bb is user 'a+b'");
ok(!$res->{json}{online}, '  who is not online');
$res = $ng->get('/online?user_id=+a%20+b%2B+');
is($res->{json}{user_id}, ' a  b+ ', "'+' and \"%20\" mix, \"%2B\" kept");
rejects("lookup of %0A+: still a newline in it", 400, 'invalid_user_id',
        sub { $ng->get('/online?user_id=%0A+') });

rejects('lookup over presence_max_id_length 8', 400, 'invalid_user_id',
        sub { $ng->get('/short/online?user_id=123456789') });
$res = $ng->get('/online?user_id=' . ('a' x 128));
ok($res->{status} == 200 && $res->{json}{online}, 'lookup of 128 bytes');

###########################################################################
# identity from a variable

for my $c (['{{{', 'application/json', 'malformed JSON'],
           ['x', 'text/html', 'another content type'],
           ['{"user_id":"' . ('x' x 10000) . '"}', 'application/json',
            'a body over presence_max_body_size'])
{
    touches_only("variable identity: body ignored, even $c->[2]", $KEY, 'varid',
        sub { post('/hbv', $c->[0], 'X-User' => 'varid',
                   'Content-Type' => $c->[1]) });
}
rejects('variable identity of 129 bytes', 400, 'invalid_user_id',
        sub { $ng->request('POST', '/hbv', headers => ['X-User' => 'u' x 129]) });
rejects('variable identity with a control character', 400, 'invalid_user_id',
        sub { $ng->request('POST', '/hbv', headers => ['X-User' => "a\x01b"]) });
rejects('variable identity not UTF-8', 400, 'invalid_user_id',
        sub { $ng->request('POST', '/hbv', headers => ['X-User' => "\xff"]) });

is($r->cmd('GET', 'sentinel'), 'keep', 'sentinel key intact');
is($r->cmd({ db => 1 }, 'GET', 'db1'), 'keep', 'db 1 intact');

done_testing;
