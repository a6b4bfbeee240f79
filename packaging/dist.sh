#!/usr/bin/env bash
# Package the self-contained binary that `./dev dist` built (SR_STATIC=ON) and
# refuse it unless it is what docs/operations.md promises:
#   - it needs no shared library but glibc's (libc.so.6, libm.so.6, the loader);
#   - no glibc symbol newer than GLIBC_FLOOR (2.34);
#   - it runs (`version`).
# Writes OUT/sparkrelay-<version>-linux-<arch> and a .sha256 beside it in
# sha256sum's format (`sha256sum -c FILE.sha256` in OUT verifies it).
#
#   packaging/dist.sh BUILD_DIR OUT_DIR
set -euo pipefail

GLIBC_FLOOR=2.34
ALLOWED_NEEDED="libc.so.6 libm.so.6"

build=${1:?usage: packaging/dist.sh BUILD_DIR OUT_DIR}
out=${2:?usage: packaging/dist.sh BUILD_DIR OUT_DIR}
bin=$build/cmd/sparkrelay

fail() {
	echo "dist: $*" >&2
	exit 1
}

[ -x "$bin" ] || fail "no $bin: build with -DSR_STATIC=ON first (./dev dist)"

needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
	case " $ALLOWED_NEEDED " in
	*" $lib "*) ;;
	*) fail "$bin needs $lib: only glibc may be dynamic (is SR_STATIC on?)" ;;
	esac
done

# The highest GLIBC_x.y any dynamic symbol asks for: the oldest glibc it runs on.
max=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n 1)
[ -n "$max" ] || fail "cannot read the glibc symbol versions of $bin"
if [ "$(printf '%s\n%s\n' "$max" "$GLIBC_FLOOR" | sort -V | tail -n 1)" != "$GLIBC_FLOOR" ]; then
	objdump -T "$bin" | grep "GLIBC_$max" >&2 || true
	fail "$bin needs glibc $max, above the promised floor $GLIBC_FLOOR (symbols above)"
fi

version=$("$bin" version | awk '{print $2; exit}')
case "$version" in
'' | *[!0-9.]*) fail "cannot read the version from \`$bin version\`" ;;
esac
arch=$(uname -m)
name=sparkrelay-$version-linux-$arch

mkdir -p "$out"
strip -o "$out/$name.tmp" "$bin"
chmod 0755 "$out/$name.tmp"
mv -f "$out/$name.tmp" "$out/$name"
(cd "$out" && sha256sum "$name" >"$name.sha256.tmp" && mv -f "$name.sha256.tmp" "$name.sha256")
"$out/$name" version >/dev/null || fail "the stripped binary does not run"

size=$(stat -c %s "$out/$name")
echo "dist: $out/$name ($((size / 1024)) KiB; needs ${needed//$'\n'/, } only, glibc >= $max)"
echo "dist: $out/$name.sha256: $(cut -d' ' -f1 "$out/$name.sha256")"
