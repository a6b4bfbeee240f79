#!/bin/sh
# Run every libFuzzer target found in a build directory for a while each.
#
#   tests/fuzz/run.sh BUILDDIR SECONDS
#
# Builds nothing: configure and build first with
#   CC=clang cmake -S . -B build-fuzz -DSR_FUZZ=ON && cmake --build build-fuzz -j2
# Each target fuzz_X starts from a scratch copy of tests/fuzz/corpus/X, so the
# checked-in seed corpus is never modified; crash inputs are kept in
# BUILDDIR/fuzz-artifacts/fuzz_X/. Exits non-zero if any target crashes,
# leaks, or times out, or if no target is found.
set -u

if [ $# -ne 2 ]; then
	echo "usage: $0 BUILDDIR SECONDS" >&2
	exit 2
fi
builddir=$1
seconds=$2
case $seconds in
'' | *[!0-9]*)
	echo "$0: SECONDS must be a positive integer" >&2
	exit 2
	;;
esac
here=$(cd "$(dirname "$0")" && pwd)

targets=$(find "$builddir" -type f -perm -u+x -name 'fuzz_*' ! -name '*.*' 2>/dev/null | sort)
if [ -z "$targets" ]; then
	echo "$0: no fuzz_* executables under $builddir (built with -DSR_FUZZ=ON?)" >&2
	exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sr_fuzz.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT INT TERM

failed=0
for bin in $targets; do
	name=$(basename "$bin")
	corpus=$work/$name
	artifacts=$builddir/fuzz-artifacts/$name
	mkdir -p "$corpus" "$artifacts"
	if [ -d "$here/corpus/${name#fuzz_}" ]; then
		cp -R "$here/corpus/${name#fuzz_}/." "$corpus/"
	fi
	echo "== $name: ${seconds}s on $(ls "$corpus" | wc -l) seed(s)"
	# -timeout: one input running over 10 s is a hang, reported as a crash.
	if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" \
		>"$work/$name.log" 2>&1; then
		tail -n 3 "$work/$name.log"
	else
		echo "!! $name failed; log tail below, inputs in $artifacts/" >&2
		tail -n 40 "$work/$name.log" >&2
		failed=1
	fi
done
exit $failed
