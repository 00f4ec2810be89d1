#!/usr/bin/perl

# The fuzz targets (fuzz/*.c, make fuzz) replayed over their committed
# corpus: every seed, and every input a fuzzer ever found, goes through
# the same property checks with ASan and UBSan on each test run.

use strict;
use warnings;

use FindBin;
use Test::More;

my $top = "$FindBin::Bin/..";
my $build = $ENV{BUILD} || "$top/build";

plan skip_all => 'clang is not installed (tools/deps fuzz)'
    unless grep { -x "$_/clang" } split /:/, $ENV{PATH};
plan skip_all => "$build/nginx is not configured (make)"
    unless -f "$build/nginx/objs/ngx_auto_config.h";

my @targets = map { m{fuzz/(\w+)\.c$} ? $1 : () } glob "$top/fuzz/*.c";
ok(@targets >= 5, 'a target per input parser') or diag "@targets";

for my $t (@targets) {
    my @seeds = glob "$top/fuzz/corpus/$t/*";
    ok(@seeds, "$t: committed seeds");
    my $out = qx{FUZZ_SECONDS=0 FUZZ_TARGETS=$t BUILD=$build $top/tools/fuzz 2>&1};
    is($?, 0, "$t: every seed passes") or diag $out;
    like($out, qr/\Q$t\E\s+ok, (\d+) runs/, "$t: replayed");
    my ($runs) = $out =~ /ok, (\d+) runs/;
    ok(($runs // 0) >= @seeds, "$t: all ${\ scalar @seeds} seeds ran")
        or diag $out;
}

done_testing;
