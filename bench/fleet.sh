#!/usr/bin/env bash
# The relay fleet under load, in one run on loopback: one etcd (Debian's
# etcd-server), three relays (a 127.0.0.2, b 127.0.0.3, c 127.0.0.4, each its
# own pool bind address, tunnel port and peer port), one sidecar with its
# tunnel on relay a, and the "driver" behind it on 127.0.0.1 at the lease's
# ports (sparkrelay-bench server on the blockManager port, an iperf3 server
# per run on the driver port). Every relay binds the lease's ports.
#
#   direct:  executor -> relay a (holds the tunnel) -> sidecar -> driver
#   hop:     executor -> relay b ==peer link==> relay a -> sidecar -> driver
#
# In this order, so that the memory figure comes from fresh relays:
#   1. scale: --per-relay N (1000) executor connections against each relay's
#      lease port at once (sparkrelay-bench idle, three runs concurrently),
#      each proven by one exchange, held, then proven alive again; the relays'
#      and the sidecar's RSS growth per connection;
#   2. side by side, each repetition: 64-byte round trip p50/p99 (plain TCP
#      to the driver, direct, hop), iperf3 one connection up and down on each
#      path, with the CPU seconds per GB of the relays on the path (utime +
#      stime from /proc before and after);
#   3. kill -9 of relay c (which holds no tunnel) during a 64-byte rpc run
#      through all three relays: how many connections through c die, whether
#      those through a and b survive, and a new connection through b.
#
# usage: bench/fleet.sh [--reps N] [--seconds S] [--per-relay N] [--hold S]
#                       [--no-kill] [--out DIR] [--keep]
#   --reps N       repetitions of step 2 (3); medians are reported
#   --seconds S    length of each rpc and iperf3 run (4)
#   --per-relay N  executor connections per relay in step 1 (1000)
#   --hold S       how long step 1 holds them (5)
#   --out DIR      results: DIR/fleet-<date>.json and .md
#                  (default /tmp/sr-bench-results/)
#   --keep         keep the temporary folder (every process's log)
# About 3-4 minutes with the defaults on 2 cores, plus a first Release build
# in build-bench/ (override with SR_BENCH_BUILD=DIR).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=3
SECS=4
PER_RELAY=1000
HOLD=5
KILL=1
OUT=""
KEEP=0
while [ $# -gt 0 ]; do
	case "$1" in
	--reps) REPS=$2; shift ;;
	--seconds) SECS=$2; shift ;;
	--per-relay) PER_RELAY=$2; shift ;;
	--hold) HOLD=$2; shift ;;
	--no-kill) KILL=0 ;;
	--out) OUT=$2; shift ;;
	--keep) KEEP=1 ;;
	-h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
	*) echo "fleet.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
for v in "$REPS" "$SECS" "$PER_RELAY" "$HOLD"; do
	case "$v" in '' | *[!0-9]* | 0) echo "fleet.sh: --reps, --seconds, --per-relay and --hold take positive integers" >&2; exit 2 ;; esac
done
[ "$PER_RELAY" -le 20000 ] || { echo "fleet.sh: --per-relay at most 20000" >&2; exit 2; }
if [ "$REPS" -gt 20 ] || [ "$SECS" -gt 60 ] || [ "$HOLD" -gt 120 ]; then
	echo "fleet.sh: at most 20 reps, 60 s runs, 120 s hold" >&2
	exit 2
fi

# compare.sh's dependencies (plus etcd, iperf3, curl and ss), Release build,
# descriptor limit, temporary folder, start and wait_listen (it returns before
# running anything of its own). It parses its own arguments into the same
# names: REPS, OUT and KEEP come back as given here.
SR_COMPARE_AS_LIB=1
SR_COMPARE_NEED="etcd:etcd-server iperf3:iperf3 curl:curl ss:iproute2"
FL_KEEP=()
[ "$KEEP" = 1 ] && FL_KEEP=(--keep)
# shellcheck source=bench/compare.sh
. "$ROOT/bench/compare.sh" --reps "$REPS" --only rpc --tools direct \
	--out "${OUT:-/tmp/sr-bench-results}" "${FL_KEEP[@]}"
log() { printf '%s fleet: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
FP=(python3 "$ROOT/bench/fleet/fleet.py")

# Descriptors (compare.sh raised the limit as far as it goes): the relay with
# the tunnel holds every stream's peer socket, the sidecar and the bench
# server one per connection.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((3 * PER_RELAY + 1000)) ]; then
	PER_RELAY=$((($(ulimit -n) - 1000) / 3))
	log "open files limit $(ulimit -n): $PER_RELAY connections per relay"
fi

cleanup() {
	local p
	# etcd last: a relay told to stop withdraws its keys from etcd first.
	for p in "${PIDS[@]}"; do
		[ "$p" = "${ETCD_PID:-}" ] || kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		[ "$p" = "${ETCD_PID:-}" ] || wait "$p" 2>/dev/null || true
	done
	if [ -n "${ETCD_PID:-}" ]; then
		kill "$ETCD_PID" 2>/dev/null || true
		wait "$ETCD_PID" 2>/dev/null || true
	fi
	if [ "$KEEP" = 1 ]; then
		log "kept $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget() { # forget PID: reaped; the exit clean-up must not signal a reused pid
	local q keep=()
	wait "$1" 2>/dev/null || true
	for q in "${PIDS[@]}"; do
		[ "$q" = "$1" ] || keep+=("$q")
	done
	PIDS=("${keep[@]}")
}

die() {
	log "$*"
	for f in "$TMP"/*.log; do
		echo "--- $f" >&2
		tail -n 20 "$f" >&2
	done
	exit 1
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
read -r _ IDLE_PCT <<<"$(python3 "$ROOT/bench/srbench.py" busy 2)"
T0=$(date +%s)

# ---------------------------------------------------------------- the fleet
# One block of ports, free on 127.0.0.1-.4: etcd client and peer, the three
# relays' tunnel ports, their peer ports, and the pool (8 ports; the lease
# takes the same numbers on every relay and on the driver's 127.0.0.1).
BASE=$("${FP[@]}" ports 16)
ETCD_PORT=$BASE
ETCD_PEER=$((BASE + 1))
HOSTS=(127.0.0.2 127.0.0.3 127.0.0.4)
NAMES=(a b c)
POOL_MIN=$((BASE + 8))
POOL_MAX=$((BASE + 15))

CERTS="$TMP/fleet-certs"
mkdir -p "$CERTS"
"$SR" gen-certs "$CERTS" "${HOSTS[@]}" >/dev/null
head -c 48 /dev/urandom >"$TMP/fleet.secret"

start etcd etcd --name fleetbench --data-dir "$TMP/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
	--initial-cluster "fleetbench=http://127.0.0.1:$ETCD_PEER" --logger=zap --log-outputs=stderr --log-level=warn
ETCD_PID=$LAST_PID
for ((i = 0; i < 400; i++)); do
	curl -sf -m 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' && break
	kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited"
	sleep 0.05
done
curl -sf -m 1 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"' || die "etcd not healthy in 20 s"

RPID=()
for i in 0 1 2; do
	h=${HOSTS[$i]}
	# A user's configuration: defaults but the addresses, the fleet and log
	# level warn; admin on any free port and no handover socket, so that
	# three relays fit on one machine.
	cat >"$TMP/relay-${NAMES[$i]}.json" <<EOF
{"log": {"level": "warn"},
 "relay": {"listen": "$h:$((BASE + 2 + i))",
   "tls": {"cert": "$CERTS/relay.pem", "key": "$CERTS/relay.key"},
   "pool": {"bind": "$h", "advertise": "$h", "port_min": $POOL_MIN, "port_max": $POOL_MAX},
   "admin": {"listen": "127.0.0.1:0"}, "handover_socket": null,
   "fleet": {"etcd": ["http://127.0.0.1:$ETCD_PORT"], "id": "relay-${NAMES[$i]}",
     "peer_listen": "$h:$((BASE + 5 + i))", "secret_file": "$TMP/fleet.secret"}}}
EOF
	start "relay-${NAMES[$i]}" "$SR" relay --config "$TMP/relay-${NAMES[$i]}.json"
	RPID+=("$LAST_PID")
done
for i in 0 1 2; do
	wait_listen "${HOSTS[$i]}:$((BASE + 2 + i))" 20 || die "relay ${NAMES[$i]} did not start"
done
RA=${RPID[0]}
RB=${RPID[1]}
RC=${RPID[2]}

SCD="$TMP/sidecar"
mkdir -p "$SCD"
cat >"$TMP/sidecar.json" <<EOF
{"log": {"level": "warn"},
 "tunnel": {"relays": ["127.0.0.2:$((BASE + 2))"], "tls": {"ca": "$CERTS/ca.pem"}, "app": "fleetbench",
   "spark_json": "$SCD/spark.json", "spark_conf": "$SCD/spark-defaults.conf", "state_file": "$SCD/state.json",
   "allowed_ports": ["$POOL_MIN-$POOL_MAX"]}}
EOF
start sidecar "$SR" tunnel --config "$TMP/sidecar.json"
SC=$LAST_PID
for ((i = 0; i < 400; i++)); do
	[ -s "$SCD/spark.json" ] && break
	sleep 0.05
done
[ -s "$SCD/spark.json" ] || die "the sidecar got no lease in 20 s"
lease_of() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["lease"], j["ports"]["driver"], j["ports"]["blockManager"])' "$SCD/spark.json"; }
read -r LEASE P1 P2 <<<"$(lease_of)"
log "lease $LEASE: driver port $P1, blockManager port $P2; tunnel on relay a"

start server "$BENCH" server --listen "127.0.0.1:$P2" --max-seconds 1800
wait_listen "127.0.0.1:$P2" || die "the bench server did not start"
# Every relay binds the lease's ports once its etcd watch shows the lease.
for h in "${HOSTS[@]}"; do
	wait_listen "$h:$P2" 10 || die "relay at $h does not serve the lease's ports"
done
for h in "${HOSTS[@]}"; do
	timeout 20 "$BENCH" rpc --connect "$h:$P2" --count 20 --seconds 2 >/dev/null 2>&1 ||
		die "no exchange through the relay at $h"
done

carried() { # carried PID: the relay's sparkrelay_fleet_carried_total ("-" unknown)
	local port
	# The admin listener is the relay's only one on 127.0.0.1 (port 0: any).
	port=$(ss -Hltnp 2>/dev/null | awk -v pid="pid=$1," 'index($0, pid) && $4 ~ /^127\.0\.0\.1:/ { sub(/.*:/, "", $4); print $4; exit }')
	[ -n "$port" ] || { echo -; return 0; }
	curl -sf -m 5 "http://127.0.0.1:$port/metrics" 2>/dev/null |
		awk '$1 == "sparkrelay_fleet_carried_total" { printf "%d\n", $2; f = 1 } END { if (!f) print "-" }'
}

alive_all() {
	local p
	for p in "$ETCD_PID" "${RPID[@]}" "$SC"; do
		kill -0 "$p" 2>/dev/null || return 1
	done
}

# ------------------------------------------------------------------ 1. scale
log "scale: $PER_RELAY executor connections on each of the 3 relays at once, held ${HOLD} s"
read -r -a RSS0 <<<"$("${FP[@]}" rss "$RA" "$RB" "$RC" "$SC")"
# The peak RSS while the connections are up (sampled every 0.2 s).
"${FP[@]}" rsswatch "$TMP/rss.peak" $((HOLD + 90)) "$RA" "$RB" "$RC" "$SC" &
WATCH=$!
PIDS+=("$WATCH")
IDLE=()
for i in 0 1 2; do
	start "idle-${NAMES[$i]}" timeout $((HOLD + 120)) "$BENCH" idle --connect "${HOSTS[$i]}:$P2" \
		--conns "$PER_RELAY" --concurrency 64 --hold "$HOLD" --seconds 60 --json "$RES/idle.${NAMES[$i]}.json"
	IDLE+=("$LAST_PID")
done
for p in "${IDLE[@]}"; do
	forget "$p"
done
touch "$TMP/rss.peak.stop"
forget "$WATCH"
read -r -a RSS1 <<<"$(cat "$TMP/rss.peak")"
# Proof that the hop path is one: b and c carried their executors to a.
CARRIED="$(carried "$RA") $(carried "$RB") $(carried "$RC")"
log "  carried over the peer link (fleet_carried_total) by a, b, c: $CARRIED"
alive_all || log "WARNING: a fleet process died during the scale step"
python3 - "$RES" "$PER_RELAY" "$HOLD" "${RSS0[*]}" "${RSS1[*]}" "$CARRIED" >"$RES/scale.json" <<'EOF'
import json, sys
res, per, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
carried = dict(zip("abc", sys.argv[6].split()))
rss0 = [int(x) for x in sys.argv[4].split()]
rss1 = [int(x) for x in sys.argv[5].split()]
def r(name):
    try:
        return json.load(open("%s/idle.%s.json" % (res, name)))["results"]
    except (OSError, ValueError, KeyError):
        return {}
rows, alive, est = [], 0, 0
for i, name in enumerate("abc"):
    x = r(name)
    alive += int(x.get("alive_after_hold", 0))
    est += int(x.get("established", 0))
    conns = 3 * per if name == "a" else per
    rows.append({"name": "relay %s (%s)" % (name, "tunnel; carries every stream" if name == "a" else "hop"),
                 "established": x.get("established"), "alive": x.get("alive_after_hold"),
                 "failed": x.get("failed"), "open_s": x.get("open_s"),
                 "carried": carried.get(name),
                 "rss0_kib": rss0[i], "rss1_kib": rss1[i],
                 "kib_per_conn": (rss1[i] - rss0[i]) / conns})
rows.append({"name": "sidecar", "rss0_kib": rss0[3], "rss1_kib": rss1[3],
             "kib_per_conn": (rss1[3] - rss0[3]) / (3 * per)})
fleet = sum(rss1[:3]) - sum(rss0[:3])
print(json.dumps({"asked": 3 * per, "per_relay": per, "hold_s": hold, "rows": rows,
                  "alive_total": alive, "established_total": est,
                  "fleet_kib_per_conn": fleet / (3 * per)}, indent=1))
EOF
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("  alive after the hold: %d of %d" % (d["alive_total"], d["asked"]))' "$RES/scale.json" >&2
sleep 2 # the closes settle

# -------------------------------------------------------- 2. direct vs hop
TICK=$(getconf CLK_TCK)
rpc_run() { # rpc_run PATH HOST REP
	timeout $((SECS + 60)) "$BENCH" rpc --connect "$2:$P2" --conns 1 --size 64 --seconds "$SECS" \
		--json "$RES/rpc.$1.$3.json" >>"$TMP/rpc.log" 2>&1 || log "rpc $1: exit $?"
}
iperf_run() { # iperf_run PATH HOST up|down REP
	local rflag=() srv t0 t1 rc=0
	[ "$3" = down ] && rflag=(-R) # down: the driver's side sends
	start iperf-s iperf3 -s -1 -B 127.0.0.1 -p "$P1"
	srv=$LAST_PID
	wait_listen "127.0.0.1:$P1" || { forget "$srv"; return 0; }
	read -r -a t0 <<<"$("${FP[@]}" ticks "$RA" "$RB" "$SC")"
	timeout $((SECS + 60)) iperf3 -c "$2" -p "$P1" -t "$SECS" "${rflag[@]}" -J \
		>"$TMP/iperf.json" 2>>"$TMP/iperf-client.log" || rc=$?
	read -r -a t1 <<<"$("${FP[@]}" ticks "$RA" "$RB" "$SC")"
	wait_gone "$srv" 5 || kill "$srv" 2>/dev/null || true
	forget "$srv"
	if [ $rc -ne 0 ]; then
		log "iperf3 $1 $3: exit $rc"
		return 0
	fi
	read -r bytes gbit <<<"$("${FP[@]}" iperf "$TMP/iperf.json")"
	python3 - "$TICK" "$1" "$bytes" "$gbit" "${t0[*]}" "${t1[*]}" >"$RES/iperf.$1.$3.$4.json" <<'EOF'
import json, sys
tick, path, nbytes, gbit = float(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
t0 = [int(x) for x in sys.argv[5].split()]
t1 = [int(x) for x in sys.argv[6].split()]
a, b, sc = ((y - x) / tick for x, y in zip(t0, t1))
cpu = {"a": a, "sidecar": sc, "relays": a + b if path == "hop" else a}
if path == "hop":
    cpu["b"] = b
print(json.dumps({"bytes": nbytes, "gbit_s": gbit, "cpu_s": cpu}))
EOF
}
for ((rep = 1; rep <= REPS; rep++)); do
	log "direct vs hop: repetition $rep/$REPS"
	alive_all || die "a fleet process died"
	rpc_run plain 127.0.0.1 "$rep"
	# The order alternates so that a drift in the machine's load hits both.
	if [ $((rep % 2)) = 1 ]; then order="direct hop"; else order="hop direct"; fi
	for path in $order; do
		[ "$path" = direct ] && h=127.0.0.2 || h=127.0.0.3
		rpc_run "$path" "$h" "$rep"
	done
	for dir in up down; do
		for path in $order; do
			[ "$path" = direct ] && h=127.0.0.2 || h=127.0.0.3
			iperf_run "$path" "$h" "$dir" "$rep"
		done
	done
done

# ------------------------------------------------------------ 3. kill -9 c
if [ "$KILL" = 1 ]; then
	KSECS=6
	KAT=2
	KCONNS=20
	log "kill -9 of relay c ${KAT} s into a ${KSECS} s rpc run, $KCONNS connections through each relay"
	RUNS=()
	for i in 0 1 2; do
		start "kill-rpc-${NAMES[$i]}" timeout $((KSECS + 60)) "$BENCH" rpc --connect "${HOSTS[$i]}:$P2" \
			--conns "$KCONNS" --size 64 --seconds "$KSECS" --json "$RES/kill.${NAMES[$i]}.json"
		RUNS+=("$LAST_PID")
	done
	sleep "$KAT"
	kill -9 "$RC"
	forget "$RC"
	# A new executor connection through a survivor, right after the kill.
	T_NEW0=$(date +%s.%N)
	NEW_OK=0
	timeout 10 "$BENCH" rpc --connect "127.0.0.3:$P2" --conns 1 --count 10 --seconds 2 \
		>"$TMP/kill-new.log" 2>&1 && NEW_OK=1
	T_NEW1=$(date +%s.%N)
	for p in "${RUNS[@]}"; do
		forget "$p"
	done
	read -r LEASE2 P1B P2B <<<"$(lease_of)"
	UNCHANGED=no
	[ "$LEASE2 $P1B $P2B" = "$LEASE $P1 $P2" ] && UNCHANGED=yes
	python3 - "$RES" "$KSECS" "$KAT" "$KCONNS" "$NEW_OK" "$T_NEW0" "$T_NEW1" "$UNCHANGED" >"$RES/kill.json" <<'EOF'
import json, sys
res, secs, at, conns, ok, t0, t1, unch = sys.argv[1:]
rows = []
for name, label in (("a", "relay a (direct)"), ("b", "relay b (hop)"), ("c", "relay c (hop, killed)")):
    try:
        x = json.load(open("%s/kill.%s.json" % (res, name)))["results"]
    except (OSError, ValueError, KeyError):
        x = {}
    rtt = x.get("rtt_us") or {}
    rows.append({"name": label, "failed": x.get("failed"), "rtts": rtt.get("count"),
                 "p99_us": rtt.get("p99")})
print(json.dumps({"seconds": int(secs), "kill_at_s": int(at), "conns": int(conns), "rows": rows,
                  "new_conn_ok": ok == "1",
                  "new_conn_s": float(t1) - float(t0) if ok == "1" else None,
                  "lease_unchanged": unch}, indent=1))
EOF
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
T1=$(date +%s)
if grep -qE '(WARN|ERROR)' "$TMP"/relay-*.log "$TMP"/sidecar.log 2>/dev/null; then
	log "the relays or the sidecar logged warnings or errors (--keep keeps them):"
	grep -hE '(WARN|ERROR)' "$TMP"/relay-*.log "$TMP"/sidecar.log | sort | uniq -c | sort -rn | head -n 10 >&2
fi
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)
python3 - "$TMP/meta.json" <<EOF
import json, sys
json.dump({"date": "$DATE", "reps": $REPS, "seconds_per_run": $SECS, "ncpu": $(nproc),
           "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER", "idle_pct": "$IDLE_PCT",
           "seconds": $((T1 - T0)), "git": "$GIT_REV (+$GIT_DIRTY changed files)",
           "etcd": "$(etcd --version 2>/dev/null | head -n 1 | tr -d '"')",
           "iperf3": "$(iperf3 --version 2>/dev/null | head -n 1 | tr -d '"')"}, open(sys.argv[1], "w"))
EOF
"${FP[@]}" report "$RES" "$OUT/fleet-$DATE.json" "$OUT/fleet-$DATE.md" "$TMP/meta.json"
log "done in $((T1 - T0)) s; wrote $OUT/fleet-$DATE.json and $OUT/fleet-$DATE.md"
