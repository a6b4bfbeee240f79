#!/bin/bash
# The self-contained binary (./dev dist) where none of its libraries exist.
# Run by .ci/image-test.sh INSIDE the bare debootstrapped base image (Debian 12
# minbase: no libevent, OpenSSL, nghttp2, jansson or libcurl), with no network
# but its own loopback, as an unprivileged user:
#
#   dist-smoke.sh BINARY
#
# Checks: the image really lacks those libraries (else this proves nothing);
# the binary needs only glibc; `version`, `demo --help`, a short demo (TLS 1.3,
# HTTP/2, libevent in one process); a relay and a sidecar as two processes
# (the sidecar resolves "localhost" through evdns) with a lease; `ctl` (libcurl)
# against the relay's admin API; both stop on SIGTERM.
set -euo pipefail
BIN=$1
T=$(mktemp -d)
PIDS=()

fail() {
	echo "dist-smoke: FAILED: $*" >&2
	for f in "$T"/*.log; do
		[ -s "$f" ] || continue
		echo "---- $f ----" >&2
		tail -n 20 "$f" >&2
	done
	exit 1
}
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$T"
}
trap cleanup EXIT

for lib in libevent libssl.so libcrypto.so libnghttp2 libjansson libcurl; do
	for d in /lib /usr/lib /lib64 /usr/lib64 /usr/local/lib; do
		if find "$d" -name "$lib*" 2>/dev/null | grep -q .; then
			fail "the image has $lib ($(find "$d" -name "$lib*" | head -n 1)): the check would prove nothing"
		fi
	done
done
echo "  the image has no libevent, libssl, libcrypto, libnghttp2, libjansson, libcurl"

ldd "$BIN" | sed 's/^[[:space:]]*/  ldd: /'
if ldd "$BIN" | grep -q 'not found'; then
	fail "a shared library is missing"
fi

"$BIN" version || fail "sparkrelay version"
"$BIN" demo --help >"$T/help.log" 2>&1 || fail "sparkrelay demo --help exits non-zero"
grep -q '^usage: sparkrelay demo' "$T/help.log" || fail "sparkrelay demo --help prints no usage"
echo "  demo --help: $(head -n 1 "$T/help.log")"
timeout 60 "$BIN" demo --executors 2 --rounds 20 --bulk-mib 2 >"$T/demo.log" 2>&1 ||
	fail "sparkrelay demo"
grep -qE '^result +OK' "$T/demo.log" || fail "the demo did not end in OK"
grep -E '^(time to lease|executor conns|broadcast|result)' "$T/demo.log" | sed 's/^/  demo: /'

# Relay and sidecar as two processes; ctl talks to the relay's admin API.
mkdir "$T/certs"
"$BIN" gen-certs "$T/certs" 127.0.0.1 localhost >/dev/null || fail "gen-certs"
SPARKRELAY_RELAY_LISTEN=127.0.0.1:18443 SPARKRELAY_RELAY_TLS_CERT="$T/certs/relay.pem" \
	SPARKRELAY_RELAY_TLS_KEY="$T/certs/relay.key" SPARKRELAY_RELAY_POOL_BIND=127.0.0.2 \
	SPARKRELAY_RELAY_POOL_ADVERTISE=127.0.0.2 SPARKRELAY_RELAY_POOL_PORT_MIN=20000 \
	SPARKRELAY_RELAY_POOL_PORT_MAX=20009 SPARKRELAY_RELAY_ADMIN_LISTEN=127.0.0.1:19090 \
	"$BIN" relay >"$T/relay.log" 2>&1 &
PIDS+=($!)
RELAY=$!
ADMIN=(--admin http://127.0.0.1:19090)
deadline=$((SECONDS + 20))
until "$BIN" ctl "${ADMIN[@]}" health >/dev/null 2>&1; do
	kill -0 "$RELAY" 2>/dev/null || fail "the relay exited"
	[ "$SECONDS" -lt "$deadline" ] || fail "ctl health: no answer within 20 s"
	sleep 0.2
done
"$BIN" ctl "${ADMIN[@]}" ready >/dev/null || fail "ctl ready"
echo "  relay up; ctl health and ctl ready answer (libcurl, HTTP)"
SPARKRELAY_TUNNEL_RELAYS=localhost:18443 SPARKRELAY_TUNNEL_TLS_CA="$T/certs/ca.pem" \
	SPARKRELAY_TUNNEL_ALLOWED_PORTS=20000-20009 \
	SPARKRELAY_TUNNEL_APP=dist-smoke SPARKRELAY_TUNNEL_SPARK_JSON="$T/spark.json" \
	SPARKRELAY_TUNNEL_SPARK_CONF="$T/spark-defaults.conf" \
	SPARKRELAY_TUNNEL_STATE_FILE="$T/state.json" \
	"$BIN" tunnel >"$T/sidecar.log" 2>&1 &
PIDS+=($!)
SIDECAR=$!
deadline=$((SECONDS + 20))
until [ -s "$T/spark.json" ]; do
	kill -0 "$SIDECAR" 2>/dev/null || fail "the sidecar exited"
	[ "$SECONDS" -lt "$deadline" ] || fail "no lease within 20 s"
	sleep 0.2
done
grep -q '^spark.driver.port ' "$T/spark-defaults.conf" || fail "no spark.driver.port written"
"$BIN" ctl "${ADMIN[@]}" leases >"$T/leases.out" 2>&1 || fail "ctl leases"
grep -q 'dist-smoke' "$T/leases.out" || fail "ctl leases does not show the lease"
echo "  sidecar dialled localhost:18443 (evdns, TLS 1.3 + h2), got a lease; ctl leases shows it"
kill -TERM "$SIDECAR"
wait "$SIDECAR" || fail "the sidecar did not exit 0 on SIGTERM"
kill -TERM "$RELAY"
wait "$RELAY" || fail "the relay did not exit 0 on SIGTERM"
PIDS=()
grep -q 'lease released' "$T/sidecar.log" || fail "the sidecar did not release its lease"
echo "  SIGTERM: sidecar released its lease, both exited 0"
