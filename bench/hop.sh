#!/usr/bin/env bash
# The relay-to-relay hop by itself (fleet/peer.h + fleet/splice.h): what an
# executor pays when the relay it reached holds no tunnel of its lease.
#
#   direct:  client ----------------------------------------------> server 127.0.0.1
#   one:     client -> fwd 127.0.0.4 --------------------------------> server 127.0.0.1
#   hop:     client -> z 127.0.0.2 ==header, splice==> x 127.0.0.3 -> server 127.0.0.1
#
# z is the relay without a tunnel (accepts, writes the header, splices); x is
# the relay with one: its peer listener checks the header and, standing in
# for the tunnel, splices on to the server. "one" is a single splice
# forwarder (fwd): the relay that serves the executor itself, so hop - one is
# what the hop adds. Measured, each repetition, in one run so that the
# machine's load moves all three alike:
#   - iperf3 throughput, one connection, up and down, on each path
#   - z's CPU seconds per GB moved (utime + stime from /proc), and x's
#   - 64-byte round trip (sparkrelay-bench rpc): p50 and p99 on each path
# and prints the medians over the repetitions.
#
# usage: bench/hop.sh [--reps N] [--seconds S]     (defaults: 5 reps, 4 s each)
# Needs iperf3 and python3 (installed from Debian when missing). Builds a
# Release tree in build-bench/ (override with SR_BENCH_BUILD=DIR).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=5
SECS=4
while [ $# -gt 0 ]; do
	case "$1" in
	--reps) REPS=$2; shift ;;
	--seconds) SECS=$2; shift ;;
	-h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
	*) echo "hop.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
case "$REPS$SECS" in *[!0-9]*) echo "hop.sh: --reps and --seconds take integers" >&2; exit 2 ;; esac

log() { printf '%s hop: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}" >/dev/null ||
		{ $SUDO apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}" >/dev/null; }
fi

BUILD=${SR_BENCH_BUILD:-$ROOT/build-bench}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
	log "configuring a Release build in $BUILD"
	cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSR_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD" -j2 --target sparkrelay-fleet-hop sparkrelay-bench >/dev/null
HOP="$BUILD/bench/hop/sparkrelay-fleet-hop"
BENCH="$BUILD/bench/sparkrelay-bench"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sr-hop.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# Ports: iperf3 server P1, bench server P2; z listens on the same numbers on
# 127.0.0.2, fwd on 127.0.0.4, x on P1+1000 / P2+1000 on 127.0.0.3.
P1=25301
P2=25302
head -c 48 /dev/urandom >"$TMP/secret"
BOUND=$((REPS * (6 * SECS + 3 * 3 + 20) + 60)) # every process ends by then

iperf3 -s -B 127.0.0.1 -p "$P1" >"$TMP/iperf3-server.log" 2>&1 &
PIDS+=($!)
"$BENCH" server --listen "127.0.0.1:$P2" --max-seconds "$BOUND" >"$TMP/bench-server.log" 2>&1 &
PIDS+=($!)
"$HOP" x --listen "127.0.0.3:$((P1 + 1000))" --target "127.0.0.1:$P1" --secret "$TMP/secret" --max-seconds "$BOUND" 2>"$TMP/x1.log" &
X1=$!
PIDS+=($X1)
"$HOP" z --listen "127.0.0.2:$P1" --peer "127.0.0.3:$((P1 + 1000))" --secret "$TMP/secret" --max-seconds "$BOUND" 2>"$TMP/z1.log" &
Z1=$!
PIDS+=($Z1)
"$HOP" x --listen "127.0.0.3:$((P2 + 1000))" --target "127.0.0.1:$P2" --secret "$TMP/secret" --max-seconds "$BOUND" 2>"$TMP/x2.log" &
PIDS+=($!)
"$HOP" z --listen "127.0.0.2:$P2" --peer "127.0.0.3:$((P2 + 1000))" --secret "$TMP/secret" --max-seconds "$BOUND" 2>"$TMP/z2.log" &
PIDS+=($!)
for P in "$P1" "$P2"; do
	"$HOP" fwd --listen "127.0.0.4:$P" --target "127.0.0.1:$P" --secret "$TMP/secret" --max-seconds "$BOUND" 2>"$TMP/fwd$P.log" &
	PIDS+=($!)
	[ "$P" = "$P1" ] && F1=$!
done
sleep 0.5
for p in "${PIDS[@]}"; do
	kill -0 "$p" 2>/dev/null || { log "a process did not start"; cat "$TMP"/*.log >&2; exit 1; }
done

TICK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a pid, in clock ticks
	awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# iperf3 DIR HOST: one run into $TMP/ip.json; prints "bytes gbit_s"
run_iperf() {
	local rev=() out=$TMP/ip.json
	[ "$1" = down ] && rev=(-R)
	timeout $((SECS + 20)) iperf3 -c "$2" -p "$P1" -t "$SECS" -J "${rev[@]}" >"$out"
	python3 - "$out" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))["end"]["sum_received"]
print(int(e["bytes"]), e["bits_per_second"] / 1e9)
EOF
}

RES=$TMP/results.txt
: >"$RES"
for ((rep = 1; rep <= REPS; rep++)); do
	log "repetition $rep/$REPS"
	for dir in up down; do
		read -r _ g <<<"$(run_iperf "$dir" 127.0.0.1)"
		echo "tp_${dir}_direct $g" >>"$RES"
		f0=$(cpu_ticks "$F1")
		read -r bytes g <<<"$(run_iperf "$dir" 127.0.0.4)"
		f1=$(cpu_ticks "$F1")
		echo "tp_${dir}_one $g" >>"$RES"
		python3 -c "import sys; t,b=float(sys.argv[1]),float(sys.argv[2]); print('fcpu_per_gb_$dir', (float(sys.argv[3])/t)/(b/1e9))" \
			"$TICK" "$bytes" "$((f1 - f0))" >>"$RES"
		z0=$(cpu_ticks "$Z1"); x0=$(cpu_ticks "$X1")
		read -r bytes g <<<"$(run_iperf "$dir" 127.0.0.2)"
		z1=$(cpu_ticks "$Z1"); x1=$(cpu_ticks "$X1")
		echo "tp_${dir}_hop $g" >>"$RES"
		python3 -c "import sys; t,b=float(sys.argv[1]),float(sys.argv[2]); print('zcpu_per_gb_$dir', (float(sys.argv[3])/t)/(b/1e9)); print('xcpu_per_gb_$dir', (float(sys.argv[4])/t)/(b/1e9))" \
			"$TICK" "$bytes" "$((z1 - z0))" "$((x1 - x0))" >>"$RES"
	done
	for path in direct one hop; do
		case $path in direct) host=127.0.0.1 ;; one) host=127.0.0.4 ;; hop) host=127.0.0.2 ;; esac
		timeout 30 "$BENCH" rpc --connect "$host:$P2" --conns 1 --size 64 --seconds 3 \
			--json "$TMP/rpc.json" >/dev/null
		python3 - "$TMP/rpc.json" "$path" >>"$RES" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]["rtt_us"]
print("rtt_p50_" + sys.argv[2], r["p50"])
print("rtt_p99_" + sys.argv[2], r["p99"])
EOF
	done
done

for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()
grep -h "pairs\|refused" "$TMP"/*.log >&2 || true

python3 - "$RES" "$REPS" "$(nproc)" <<'EOF'
import statistics, sys, collections
vals = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, v = line.split()
    vals[k].append(float(v))
m = {k: statistics.median(v) for k, v in vals.items()}
print(f"relay-to-relay hop, medians of {sys.argv[2]} repetitions ({sys.argv[3]} cores, loopback)")
for d in ("up", "down"):
    print(f"  iperf3, one connection, {d:>4}: direct {m[f'tp_{d}_direct']:6.2f}   "
          f"one forwarder {m[f'tp_{d}_one']:6.2f}   hop {m[f'tp_{d}_hop']:6.2f} Gbit/s")
    print(f"    CPU s per GB moved: z {m[f'zcpu_per_gb_{d}']:.3f}   x {m[f'xcpu_per_gb_{d}']:.3f}   "
          f"one forwarder {m[f'fcpu_per_gb_{d}']:.3f}")
for p in ("p50", "p99"):
    dd, oo, hh = m[f"rtt_{p}_direct"], m[f"rtt_{p}_one"], m[f"rtt_{p}_hop"]
    print(f"  64-byte round trip {p}: direct {dd:.0f}   one forwarder {oo:.0f}   hop {hh:.0f} us"
          f"   (the hop adds {hh - oo:.0f} us over one forwarder)")
EOF
