#!/usr/bin/env bash
# Which lines of the daemon no test runs: builds build-cov/ with gcov
# (-DSR_COVERAGE=ON, no sanitizers), runs every test under ctest, and prints
# each source file's line coverage, least covered first. The annotated
# sources (`#####` marks a line never run) are left in build-cov/gcov/.
#
# usage: tests/coverage.sh [ctest arguments, e.g. -L unit or -R test_fleet]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-cov -DCMAKE_BUILD_TYPE=Debug -DSR_COVERAGE=ON -DSR_TESTS=ON >/dev/null
cmake --build build-cov -j"$(nproc)" >/dev/null
find build-cov -name '*.gcda' -delete
(cd build-cov && ctest -j"$(nproc)" --timeout 900 "$@") || echo "coverage: some tests failed; the figures below count what ran" >&2
rm -rf build-cov/gcov && mkdir -p build-cov/gcov
# The daemon's objects (its libraries and cmd/), not those of the tests or bench/.
find "$PWD/build-cov" -name '*.gcda' ! -path '*/build-cov/tests/*' ! -path '*/build-cov/bench/*' -print0 |
	(cd build-cov/gcov && xargs -0 -r -n 1 sh -c 'gcov -o "${1%/*}" "$1" >/dev/null 2>&1' _)
printf '%7s %15s  %s\n' covered lines file
for f in build-cov/gcov/*.c.gcov; do
	awk -F: -v f="$(basename "$f" .gcov)" '
		{ c = $1; gsub(/ /, "", c) }
		c == "#####" { u++ }
		c ~ /^[0-9]+\*?$/ { e++ }
		END { if (e + u) printf "%6.1f%% %7d/%-7d  %s\n", 100 * e / (e + u), e, e + u, f }' "$f"
done | sort -n
