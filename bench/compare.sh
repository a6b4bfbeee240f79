#!/usr/bin/env bash
# Side-by-side benchmark of sparkrelay against what a platform team would use
# instead, in one run: direct TCP (the limit), sparkrelay (relay + sidecar),
# ssh -R (AES-128-GCM), a stunnel pair, HAProxy (TCP, no TLS) and socat. Every
# tool runs on loopback in the same shape: the servers (the "driver") listen
# on 127.0.0.1:P, the clients (the "executors") connect to the tool's front on
# 127.0.0.2:P. Bulk is measured with iperf3, many small requests with
# redis-benchmark against a redis-server, round trips, connection set-up,
# memory and the Spark scenarios with sparkrelay-bench.
#
# usage: bench/compare.sh [--quick] [--reps N] [--tools "direct sparkrelay ..."]
#                         [--only "iperf redis rpc connect fairness spark idle
#                                  idle10k longlink"]
#                         [--long-link] [--big-idle N] [--out DIR] [--keep]
#   --quick      one repetition, short loads: a smoke run (just the numbers,
#                no PASS/MISS: too short to judge a target)
#   default      3 rounds (each tool once per round, in turn; medians), the
#                targets table with PASS/MISS and the ratios per round,
#                about 20 minutes on 2 cores, plus a first build
#   --reps N     rounds (default 3)
#   --only       run only these scenarios (idle10k: sparkrelay only)
#   --long-link  also the emulated 25 ms / 1 % loss link (bench/netem/, root)
#   --big-idle N connections of the idle10k run (default 10000; quick: skipped)
#   --out DIR    where results go (default /tmp/sr-bench-results/<date>/;
#                `--out bench/results` for a run meant to be committed)
# Writes DIR/<date>.json, <date>.md and <date>.png (with gnuplot).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=default
REPS=3
TOOLS="direct sparkrelay ssh stunnel haproxy socat"
ALL_SCEN="iperf redis rpc connect fairness spark idle idle10k"
ONLY=""
LONG_LINK=0
BIG_IDLE=""
OUT=""
KEEP=0
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) MODE=quick; REPS=1 ;;
	--reps) REPS=$2; shift ;;
	--tools) TOOLS=$2; shift ;;
	--only) ONLY=$2; shift ;;
	--long-link) LONG_LINK=1 ;;
	--big-idle) BIG_IDLE=$2; shift ;;
	--out) OUT=$2; shift ;;
	--keep) KEEP=1 ;;
	-h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
	*) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
case "$REPS" in '' | *[!0-9]*) REPS=0 ;; *) REPS=$((10#$REPS)) ;; esac
if [ "$REPS" -lt 1 ]; then
	echo "compare.sh: --reps takes a positive integer" >&2
	exit 2
fi
if [ -n "$ONLY" ]; then
	for s in $ONLY; do
		case " $ALL_SCEN longlink " in *" $s "*) ;; *) echo "compare.sh: unknown scenario $s" >&2; exit 2 ;; esac
	done
	SCEN=$ONLY
	case " $ONLY " in *" longlink "*) LONG_LINK=1 ;; esac
else
	SCEN=$ALL_SCEN
	[ "$MODE" = quick ] && SCEN=${SCEN/ idle10k/}
fi
want() { case " $SCEN " in *" $1 "*) return 0 ;; esac; return 1; }

log() { printf '%s compare: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

DATE=$(date -u +%Y-%m-%dT%H%M%SZ)
OUT=${OUT:-/tmp/sr-bench-results/$DATE}

# ---------------------------------------------------------------- dependencies
# What the chosen tools and scenarios run, plus SR_COMPARE_NEED
# ("command:package ...") from a script that sources this file as a library.
uses() { case " $TOOLS " in *" $1 "*) return 0 ;; esac; return 1; }
has() { command -v "$1" >/dev/null 2>&1; }
missing=()
if uses ssh; then
	has /usr/sbin/sshd || missing+=(openssh-server)
	has ssh || missing+=(openssh-client)
fi
if uses stunnel && ! has stunnel4 && ! has stunnel; then missing+=(stunnel4); fi
if uses haproxy && ! has haproxy && ! has /usr/sbin/haproxy; then missing+=(haproxy); fi
if uses socat && ! has socat; then missing+=(socat); fi
if { want iperf || [ "$LONG_LINK" = 1 ]; } && ! has iperf3; then missing+=(iperf3); fi
if want redis; then
	has redis-server || missing+=(redis-server)
	has redis-benchmark || missing+=(redis-tools)
fi
if [ "${SR_COMPARE_AS_LIB:-0}" != 1 ] && ! has gnuplot; then missing+=(gnuplot); fi
has python3 || missing+=(python3)
has cmake || missing+=(cmake)
has ip || missing+=(iproute2)
for cp in ${SR_COMPARE_NEED:-}; do
	has "${cp%%:*}" || missing+=("${cp#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
		{ $SUDO apt-get update >/dev/null &&
			DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel || true) # only when the stunnel pair runs
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
SRB=(python3 "$ROOT/bench/srbench.py")

# ----------------------------------------------------------------------- build
# What a user runs: a Release build, no sanitizers, no test hooks.
BUILD=${SR_BENCH_BUILD:-$ROOT/build-bench}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
	log "configuring a Release build in $BUILD"
	cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSR_TESTS=OFF >/dev/null
fi
if ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$BUILD/CMakeCache.txt" ||
	grep -q '^SR_SANITIZE:BOOL=ON$' "$BUILD/CMakeCache.txt"; then
	echo "compare.sh: $BUILD is not a plain Release build; remove it or set SR_BENCH_BUILD" >&2
	exit 2
fi
cmake "$BUILD" >/dev/null # picks up new sources (bench/netem)
cmake --build "$BUILD" -j2 --target sparkrelay sparkrelay-bench sr-netem >/dev/null
# The source the binaries were built from (the tree may move during the run).
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
SR="$BUILD/cmd/sparkrelay"
BENCH="$BUILD/bench/sparkrelay-bench"
export SR_NETEM="$BUILD/bench/sr-netem"

# ------------------------------------------------------------- run parameters
if [ "$MODE" = quick ]; then
	IPERF_S=2; REDIS_N=10000; REDIS_TIMEOUT=60; RPC_S=1.5; CONN_S=1.5; FAIR_S=2; FAIR_SPARSE_S=3; IDLE_N=500
	SPARK_E=40; SPARK_B=20; SPARK_MIB=8; LL_S=6
	BIG_IDLE=${BIG_IDLE:-10000}
else
	IPERF_S=5; REDIS_N=50000; REDIS_TIMEOUT=300; RPC_S=2; CONN_S=2; FAIR_S=3; FAIR_SPARSE_S=8; IDLE_N=2000
	SPARK_E=100; SPARK_B=20; SPARK_MIB=16; LL_S=12
	BIG_IDLE=${BIG_IDLE:-10000}
fi
LL_DELAY_MS=${SR_LL_DELAY_MS:-25} # one way, each direction: RTT 50 ms
LL_LOSS=${SR_LL_LOSS:-0.01}       # each direction
LL_MTU=${SR_LL_MTU:-1500}

# Every process here (relay, sidecar, 10,000 held sockets each side) needs
# descriptors: root may raise the hard limit (not in every sandbox), anyone
# the soft one up to it.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 65536 ]; then
	ulimit -Hn 65536 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if want idle10k && [ "$(ulimit -n)" -lt $((BIG_IDLE + 1000)) ]; then
	log "open files limit $(ulimit -n) is too small for $BIG_IDLE connections; idle10k uses $(($(ulimit -n) - 1000))"
	BIG_IDLE=$(($(ulimit -n) - 1000))
fi
if [ "$LONG_LINK" = 1 ] && { [ "$(id -u)" -ne 0 ] || [ ! -c /dev/net/tun ]; }; then
	log "--long-link needs root and /dev/net/tun; skipped"
	LONG_LINK=0
fi

TMP=$(mktemp -d /tmp/sr-compare.XXXXXX)
RES="$TMP/res"
mkdir -p "$RES" "$OUT"
PIDS=()      # every process we started, killed by pid on exit
TOOL_PIDS=() # the current tool's processes
TPIDS=()     # the pids whose CPU and memory count as "the tunnel" (the middle)
BACK_PIDS=() # the current servers behind the tool
BACKEND=none
LINK_ST="$TMP/link"

cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	bash "$ROOT/bench/netem/link.sh" down "$LINK_ST" 2>/dev/null || true
	if [ "$KEEP" = 1 ]; then
		log "kept $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start LOGNAME CMD...: background, remembered by pid
	local name=$1
	shift
	"$@" >"$TMP/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

stop_pids() { # stop_pids PID...: by pid, then reaped and forgotten
	local p q keep=()
	for p in "$@"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "$@"; do
		wait "$p" 2>/dev/null || true
	done
	# A reaped pid may be reused: the exit clean-up must not signal it.
	for q in "${PIDS[@]}"; do
		for p in "$@"; do
			[ "$p" = "$q" ] && continue 2
		done
		keep+=("$q")
	done
	PIDS=("${keep[@]}")
}

stop_backend() {
	stop_pids "${BACK_PIDS[@]}"
	BACK_PIDS=()
}

stop_tool() {
	stop_backend
	stop_pids "${TOOL_PIDS[@]}"
	TOOL_PIDS=()
	TPIDS=()
}

listening() { # listening ADDR:PORT [netns]
	if [ -n "${2:-}" ]; then
		ip netns exec "$2" ss -Hltn "src $1" 2>/dev/null | grep -q .
	else
		ss -Hltn "src $1" 2>/dev/null | grep -q .
	fi
}

wait_listen() { # wait_listen ADDR:PORT [seconds [netns]]
	local i
	for ((i = 0; i < ${2:-10} * 20; i++)); do
		listening "$1" "${3:-}" && return 0
		sleep 0.05
	done
	log "nothing listens on $1"
	return 1
}

wait_gone() { # wait_gone PID SECONDS: true when it exited in time
	local i
	for ((i = 0; i < $2 * 20; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}

cpu_now() { # CPU seconds of the middle so far, "-" when nothing is in the middle
	if [ ${#TPIDS[@]} -eq 0 ]; then
		echo -
	else
		"${SRB[@]}" cpu "${TPIDS[@]}"
	fi
}

# Ports are taken when a tool starts: consecutive blocks free on 127.0.0.1 and
# 127.0.0.2 right now (bind-and-check), below the ephemeral range so that no
# client socket of this run takes one. Another program on the machine may
# still bind one first; the tool then fails to listen and is skipped.
ports() { # ports SIZE...: sets PORTS (array of block starts)
	read -r -a PORTS <<<"$("${SRB[@]}" ports "$@")"
}

CERTS="$TMP/certs"
mkdir -p "$CERTS"
# 198.18.0.1: the relay's address on the emulated long link.
"$SR" gen-certs "$CERTS" 198.18.0.1 >/dev/null

setup_direct() {
	ports 2 # P1 (driver RPC), P1+1 (block manager)
	P1=${PORTS[0]}
	P2=$((P1 + 1))
	FRONT=127.0.0.1
}

sparkrelay_config() { # sparkrelay_config FILE LISTEN POOL_BIND PORT_MIN PORT_MAX RELAY DIR
	# A user's configuration: defaults everywhere but the addresses, log level warn.
	cat >"$1" <<EOF
{"log": {"level": "warn"},
 "relay": {"listen": "$2", "tls": {"cert": "$CERTS/relay.pem", "key": "$CERTS/relay.key"},
   "pool": {"bind": "$3", "advertise": "$3", "port_min": $4, "port_max": $5}},
 "tunnel": {"relays": ["$6"], "tls": {"ca": "$CERTS/ca.pem"}, "app": "bench",
   "spark_json": "$7/spark.json", "spark_conf": "$7/spark-defaults.conf", "state_file": "$7/state.json",
   "allowed_ports": ["$4-$5"]}}
EOF
}

wait_lease() { # wait_lease DIR: P1, P2 from the sidecar's spark.json
	local i
	for ((i = 0; i < 200; i++)); do
		[ -s "$1/spark.json" ] && break
		sleep 0.05
	done
	[ -s "$1/spark.json" ] || { log "sidecar wrote no spark.json"; return 1; }
	P1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["driver"])' "$1/spark.json")
	P2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["blockManager"])' "$1/spark.json")
}

setup_sparkrelay() {
	local d="$TMP/sparkrelay"
	mkdir -p "$d"
	rm -f "$d/spark.json" "$d/state.json"
	ports 1 8
	sparkrelay_config "$d/config.json" "127.0.0.1:${PORTS[0]}" 127.0.0.2 "${PORTS[1]}" \
		$((PORTS[1] + 7)) "127.0.0.1:${PORTS[0]}" "$d"
	start relay "$SR" relay --config "$d/config.json"
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.1:${PORTS[0]}" || return 1
	start sidecar "$SR" tunnel --config "$d/config.json"
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	wait_lease "$d" || { cat "$TMP"/relay.log "$TMP"/sidecar.log >&2; return 1; }
	FRONT=127.0.0.2
}

setup_ssh() {
	local d="$TMP/ssh"
	ports 1 2
	P1=${PORTS[1]}
	P2=$((P1 + 1))
	mkdir -p "$d" /run/sshd
	rm -f "$d/hostkey" "$d/hostkey.pub" "$d/userkey" "$d/userkey.pub"
	ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
	ssh-keygen -q -t ed25519 -N '' -f "$d/userkey"
	cp "$d/userkey.pub" "$d/authorized_keys"
	cat >"$d/sshd_config" <<EOF
Port ${PORTS[0]}
ListenAddress 127.0.0.1
HostKey $d/hostkey
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts clientspecified
Ciphers aes128-gcm@openssh.com
Compression no
MaxSessions 100
LogLevel ERROR
EOF
	start sshd /usr/sbin/sshd -D -e -f "$d/sshd_config"
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.1:${PORTS[0]}" || return 1
	start ssh ssh -N -p "${PORTS[0]}" -i "$d/userkey" -c aes128-gcm@openssh.com \
		-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
		-o ExitOnForwardFailure=yes -o ServerAliveInterval=0 -o LogLevel=ERROR \
		-R "127.0.0.2:$P1:127.0.0.1:$P1" -R "127.0.0.2:$P2:127.0.0.1:$P2" root@127.0.0.1
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2" || return 1
	FRONT=127.0.0.2
}

setup_stunnel() {
	local d="$TMP/stunnel" p
	ports 2 2
	P1=${PORTS[0]}
	P2=$((P1 + 1))
	local hop=$((PORTS[1] - P1)) # server-side stunnel port = P + hop
	mkdir -p "$d"
	{
		echo "foreground = yes"
		echo "pid ="
		echo "debug = 3"
		echo "socket = l:TCP_NODELAY=1"
		echo "socket = r:TCP_NODELAY=1"
		for p in $P1 $P2; do
			printf '[c%s]\nclient = yes\naccept = 127.0.0.2:%s\nconnect = 127.0.0.1:%s\n' "$p" "$p" $((p + hop))
			printf 'sslVersionMin = TLSv1.3\nCAfile = %s\nverifyChain = yes\ncheckHost = localhost\n' "$CERTS/ca.pem"
		done
	} >"$d/client.conf"
	{
		echo "foreground = yes"
		echo "pid ="
		echo "debug = 3"
		echo "socket = l:TCP_NODELAY=1"
		echo "socket = r:TCP_NODELAY=1"
		for p in $P1 $P2; do
			printf '[s%s]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "$p" $((p + hop)) "$p"
			printf 'sslVersionMin = TLSv1.3\ncert = %s\nkey = %s\n' "$CERTS/relay.pem" "$CERTS/relay.key"
		done
	} >"$d/server.conf"
	start stunnel-server "$STUNNEL" "$d/server.conf"
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	start stunnel-client "$STUNNEL" "$d/client.conf"
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2" &&
		wait_listen "127.0.0.1:$((P1 + hop))" || return 1
	FRONT=127.0.0.2
}

setup_haproxy() {
	local d="$TMP/haproxy" p maxconn
	maxconn=$((($(ulimit -Hn) - 200) / 2))
	[ "$maxconn" -gt 12000 ] && maxconn=12000
	ports 2
	P1=${PORTS[0]}
	P2=$((P1 + 1))
	mkdir -p "$d"
	{
		# HAProxy refuses to start when maxconn needs more descriptors
		# (two per connection) than the hard limit allows.
		printf 'global\n  maxconn %s\n\ndefaults\n  mode tcp\n  timeout connect 5s\n' "$maxconn"
		printf '  timeout client 1h\n  timeout server 1h\n'
		for p in $P1 $P2; do
			printf '\nfrontend f%s\n  bind 127.0.0.2:%s\n  default_backend b%s\n' "$p" "$p" "$p"
			printf 'backend b%s\n  server s%s 127.0.0.1:%s\n' "$p" "$p" "$p"
		done
	} >"$d/haproxy.cfg"
	start haproxy "$HAPROXY" -db -f "$d/haproxy.cfg"
	TOOL_PIDS+=("$LAST_PID")
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2" || return 1
	FRONT=127.0.0.2
}

setup_socat() {
	local p
	ports 2
	P1=${PORTS[0]}
	P2=$((P1 + 1))
	for p in $P1 $P2; do
		start "socat-$p" socat "TCP-LISTEN:$p,bind=127.0.0.2,fork,reuseaddr,nodelay,backlog=1024" \
			"TCP:127.0.0.1:$p,nodelay"
		TOOL_PIDS+=("$LAST_PID")
		TPIDS+=("$LAST_PID")
	done
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2" || return 1
	FRONT=127.0.0.2
}

tool_alive() {
	local p
	for p in "${TPIDS[@]}"; do
		kill -0 "$p" 2>/dev/null || return 1
	done
	return 0
}

# ------------------------------------------------------------------- backends
# The servers behind the tool, on 127.0.0.1:P1/P2 (for sparkrelay: the ports
# of the lease, which the sidecar dials). One kind at a time.

backend_bench() {
	start "server-$TOOL" "$BENCH" server --listen "127.0.0.1:$P1" --listen "127.0.0.1:$P2" --max-seconds 3600
	BACK_PIDS+=("$LAST_PID")
	wait_listen "127.0.0.1:$P1" || return 1
	# A few exchanges so that lazy set-up (ssh channels, TLS sessions) is not measured.
	"$BENCH" rpc --connect "$FRONT:$P1" --count 10 --seconds 1 >/dev/null 2>&1 || true
}

backend_iperf() { # started per run: an iperf3 server serves one test (-1)
	:
}

backend_redis() {
	mkdir -p "$TMP/redis"
	start "redis-$TOOL" redis-server --port "$P1" --bind 127.0.0.1 --save '' --appendonly no \
		--protected-mode no --daemonize no --dir "$TMP/redis" --logfile '' --maxclients 1000
	BACK_PIDS+=("$LAST_PID")
	wait_listen "127.0.0.1:$P1"
}

use_backend() { # use_backend KIND: the servers of the next runs
	[ "$BACKEND" = "$1" ] && [ ${#BACK_PIDS[@]} -gt 0 ] && return 0
	stop_backend
	BACKEND=$1
	"backend_$1"
}

bring_up() { # the tool, then the current backend behind it
	"setup_$TOOL" || return 1
	if [ "$BACKEND" != none ]; then
		"backend_$BACKEND" || return 1
	fi
}

restart_tool() { # a fresh instance (a fresh heap for the idle figure)
	stop_tool
	sleep 0.3
	bring_up || { log "$TOOL: restart failed"; return 1; }
}

# A tunnel process died before NAME: counted, and its logs kept (--keep)
# before a restart overwrites them.
record_crash() { # record_crash NAME
	echo "$1" >>"$RES/$TOOL.crashes"
	mkdir -p "$TMP/crash-$TOOL-$1"
	cp "$TMP"/*.log "$TMP/crash-$TOOL-$1"/ 2>/dev/null || true
}

# A tool that died in an earlier run is counted and started again, so that one
# crash costs one figure, not the rest of the tool's column.
ensure_tool() { # ensure_tool NAME
	tool_alive && return 0
	log "$TOOL: a tunnel process died before $1; restarting it"
	record_crash "$1"
	restart_tool
}

pid_args() {
	local p
	PIDARGS=()
	for p in "${TPIDS[@]}"; do
		PIDARGS+=(--pid "$p")
	done
}

record_rc() { # record_rc NAME RC
	echo "$2" >"$RES/$TOOL.$1.rc"
	[ "$2" -eq 0 ] || log "$TOOL $1: exit $2"
}

sbench() { # sbench NAME SCENARIO ARGS...: one sparkrelay-bench run into $RES
	local name=$1 scen=$2 rc=0
	shift 2
	use_backend bench || { record_rc "$name" 99; return 0; }
	ensure_tool "$name" || { record_rc "$name" 98; return 0; }
	pid_args
	# "@F1"/"@F2" stand for the fronts, which a restart may have moved.
	local a args=()
	for a in "$@"; do
		case "$a" in
		@F1) a="$FRONT:$P1" ;;
		@F2) a="$FRONT:$P2" ;;
		@PIDS) args+=("${PIDARGS[@]}"); continue ;;
		esac
		args+=("$a")
	done
	timeout 600 "$BENCH" "$scen" --label "$TOOL" --json "$RES/$TOOL.$name.json" "${args[@]}" \
		>>"$TMP/bench-$TOOL.log" 2>&1 || rc=$?
	record_rc "$name" "$rc"
	# TIME_WAIT and the tools' own clean-up settle between runs.
	sleep 0.3
}

iperf_run() { # iperf_run NAME CONNS up|down
	local name=$1 conns=$2 dir=$3 rc=0 srv c0 c1 rflag=()
	use_backend iperf || { record_rc "$name" 99; return 0; }
	ensure_tool "$name" || { record_rc "$name" 98; return 0; }
	[ "$dir" = down ] && rflag=(-R) # down: the driver's side sends
	start "iperf-s-$TOOL" iperf3 -s -1 -B 127.0.0.1 -p "$P1"
	srv=$LAST_PID
	wait_listen "127.0.0.1:$P1" || { record_rc "$name" 97; stop_pids "$srv"; return 0; }
	c0=$(cpu_now)
	timeout $((IPERF_S + 60)) iperf3 -c "$FRONT" -p "$P1" -t "$IPERF_S" -P "$conns" "${rflag[@]}" -J \
		>"$TMP/iperf-$TOOL-$name.json" 2>>"$TMP/iperf-$TOOL.log" || rc=$?
	c1=$(cpu_now)
	wait_gone "$srv" 5 || stop_pids "$srv"
	wait "$srv" 2>/dev/null || true
	if [ $rc -eq 0 ]; then
		"${SRB[@]}" iperf "$TMP/iperf-$TOOL-$name.json" "$c0" "$c1" "$RES/$TOOL.$name.json" \
			2>>"$TMP/iperf-$TOOL.log" || rc=96
	fi
	record_rc "$name" "$rc"
	sleep 0.3
}

redis_run() { # redis_run NAME
	local name=$1 rc=0 c0 c1
	use_backend redis || { record_rc "$name" 99; return 0; }
	ensure_tool "$name" || { record_rc "$name" 98; return 0; }
	c0=$(cpu_now)
	timeout "$REDIS_TIMEOUT" redis-benchmark -h "$FRONT" -p "$P1" -c 50 -n "$REDIS_N" -t set,get --csv \
		>"$TMP/redis-$TOOL-$name.csv" 2>>"$TMP/redis-$TOOL.log" || rc=$?
	c1=$(cpu_now)
	if [ $rc -eq 0 ]; then
		"${SRB[@]}" redis "$TMP/redis-$TOOL-$name.csv" "$c0" "$c1" "$REDIS_N" "$RES/$TOOL.$name.json" \
			2>>"$TMP/redis-$TOOL.log" || rc=96
	fi
	record_rc "$name" "$rc"
	sleep 0.3
}

# Whether TOOL has an idle figure: direct TCP has no middle, and socat forks
# a process per connection, whose summed RSS would count shared pages
# thousands of times.
has_idle() { # has_idle TOOL
	[ "$1" != direct ] && [ "$1" != socat ]
}

# Whether TOOL has a scenario of a round to run (idle10k runs after the
# rounds).
round_work() { # round_work TOOL
	local s
	for s in $SCEN; do
		case "$s" in
		idle10k | longlink) ;;
		idle) has_idle "$1" && return 0 ;;
		*) return 0 ;;
		esac
	done
	return 1
}

# One round of one tool: brought up, every scenario once, stopped. Round N
# of every tool runs before round N+1 of any (main loop below), so the runs
# that report.py pairs per round are minutes apart, and a change of load on a
# shared machine shifts both sides of a ratio instead of one tool's median.
run_tool() { # run_tool TOOL REP
	local rep=$2
	TOOL=$1
	BACKEND=none
	round_work "$TOOL" || return 0
	log "$TOOL: round $rep/$REPS"
	if ! bring_up; then
		log "$TOOL: set-up failed, round $rep skipped"
		record_rc "setup.$rep" 95 # a trace in the report's failed runs
		stop_tool
		return 0
	fi
	if want rpc; then
		sbench "rpc64.$rep" rpc --connect @F1 --conns 1 --size 64 --seconds "$RPC_S" @PIDS
		sbench "rpc16k.$rep" rpc --connect @F1 --conns 8 --size 16K --seconds "$RPC_S" @PIDS
	fi
	if want connect; then
		sbench "connect1.$rep" connect --connect @F1 --concurrency 1 --seconds "$CONN_S" @PIDS
		sbench "connect8.$rep" connect --connect @F1 --concurrency 8 --seconds "$CONN_S" @PIDS
	fi
	if want fairness; then
		sbench "fairness.$rep" fairness --connect @F1 --bulk 1 --hb-ms 10 --seconds "$FAIR_S"
		# One heartbeat every 0.6 s, after a quiet spell as Spark's (10 s
		# apart): whether it waits behind a window the bulk stream grew
		# while alone (docs/architecture.md, "Receive window auto-tuning").
		sbench "fairness_sparse.$rep" fairness --connect @F1 --bulk 1 --hb-ms 600 \
			--seconds "$FAIR_SPARSE_S"
	fi
	if want spark; then
		sbench "spark.$rep" spark --connect @F1 --connect2 @F2 --executors "$SPARK_E" \
			--batch "$SPARK_B" --bm-mib "$SPARK_MIB" --hb-ms 10000 --time-scale 0.02 --hold 1
		# Task results in the executor's RPC connection (maxDirectResultSize
		# raised): 64 MiB each while 20 other executors heartbeat.
		sbench "spark_result.$rep" spark --connect @F1 --connect2 @F2 \
			--executors 20 --batch 20 --bm-mib 1 --hb-ms 10000 --time-scale 0.005 \
			--result-mib 64 --results 3 --hold 0.3
	fi
	if want iperf; then
		iperf_run "iperf1_up.$rep" 1 up
		iperf_run "iperf1_down.$rep" 1 down
		iperf_run "iperf8_up.$rep" 8 up
		iperf_run "iperf8_down.$rep" 8 down
	fi
	if want redis; then
		redis_run "redis.$rep"
	fi
	if want idle && has_idle "$TOOL"; then
		# A fresh instance: heap kept from the bulk runs would hide what
		# idle connections take.
		BACKEND=bench
		if restart_tool; then
			sbench "idle.$rep" idle --connect @F1 --conns "$IDLE_N" --concurrency 64 --hold 1 @PIDS
			# The round trip again on the instance those connections
			# passed through. ssh -R's cost per message was higher there
			# (docs/benchmarks.md); the judged round trip is the one on a
			# fresh instance above.
			if want rpc; then
				sbench "rpc64i.$rep" rpc --connect @F1 --conns 1 --size 64 --seconds "$RPC_S" @PIDS
			fi
		else
			record_rc "idle.$rep" 95
		fi
	fi
	end_tool "end.$rep"
}

end_tool() { # end_tool NAME: a tunnel that died in the last run is counted, then stopped
	tool_alive || record_crash "$1"
	stop_tool
}

# sparkrelay alone, once, after the rounds: 10,000 idle executor connections.
run_idle10k() {
	TOOL=sparkrelay
	BACKEND=bench
	# One lease holds at most relay.max_lease_connections (8192 by default):
	# the one setting a user with this many executor connections to one
	# driver changes, through its environment override.
	log "$TOOL: $BIG_IDLE concurrent executor connections on one relay (one lease;" \
		"SPARKRELAY_RELAY_MAX_LEASE_CONNECTIONS=$BIG_IDLE)"
	export SPARKRELAY_RELAY_MAX_LEASE_CONNECTIONS=$BIG_IDLE
	if bring_up; then
		sbench "idle10k.1" idle --connect @F1 --conns "$BIG_IDLE" --concurrency 128 --hold 2 @PIDS
	else
		record_rc "idle10k.1" 95
	fi
	unset SPARKRELAY_RELAY_MAX_LEASE_CONNECTIONS
	end_tool "end.idle10k"
}

# ------------------------------------------------------------------ long link
# Relay and executors in namespace A (the cluster), sidecar and driver in B
# (the notebook), the emulated link between them. Plain TCP across the link
# is the reference: one iperf3 connection each way and a 64-byte round trip
# on an idle link; then one sparkrelay stream each way, with a 64-byte round
# trip on another stream of the same tunnel while the bulk stream runs.

ll_iperf() { # ll_iperf NAME HOST PORT up|down: one iperf3 connection from A
	local name=$1 host=$2 port=$3 dir=$4 rc=0 srv rflag=()
	[ "$dir" = down ] && rflag=(-R)
	start "ll-iperf-s" ip netns exec "$NS_B" iperf3 -s -1 -B "$host" -p "$port"
	srv=$LAST_PID
	wait_listen "$host:$port" 10 "$NS_B" || { record_rc "$name" 97; stop_pids "$srv"; return 0; }
	timeout $((LL_S + 60)) ip netns exec "$NS_A" iperf3 -c "$host" -p "$port" -t "$LL_S" -O 2 "${rflag[@]}" -J \
		>"$TMP/ll-$TOOL-$name.json" 2>>"$TMP/ll-iperf.log" || rc=$?
	wait_gone "$srv" 5 || stop_pids "$srv"
	wait "$srv" 2>/dev/null || true
	[ $rc -eq 0 ] && { "${SRB[@]}" iperf "$TMP/ll-$TOOL-$name.json" - - "$RES/$TOOL.$name.json" || rc=96; }
	record_rc "$name" "$rc"
}

ll_rtt() { # ll_rtt NAME HOST:PORT SECONDS: 64-byte ping-pong from A
	local rc=0
	timeout $(($3 + 60)) ip netns exec "$NS_A" "$BENCH" rpc --label "$TOOL" --connect "$2" --size 64 --seconds "$3" \
		--json "$RES/$TOOL.$1.json" >>"$TMP/ll-rpc.log" 2>&1 || rc=$?
	record_rc "$1" "$rc"
}

ll_bulk_and_rtt() { # ll_bulk_and_rtt DIR [INFIX]: sparkrelay stream + round trips beside it
	local dir=$1 x=${2:-} rtt_pid rc=0
	# As in Spark: the bulk stream on the block manager port (broadcast
	# pieces), the round trips on the driver port (heartbeats). The round
	# trips start after the bulk stream's first seconds (its slow start)
	# and end before it does.
	(
		sleep 2.5
		ip netns exec "$NS_A" "$BENCH" rpc --label "$TOOL" --connect "127.0.0.1:$P1" --size 64 \
			--seconds $((LL_S - 4)) --json "$RES/$TOOL.rtt_${x}bulk_$dir.1.json" >>"$TMP/ll-rpc.log" 2>&1
	) &
	rtt_pid=$!
	PIDS+=("$rtt_pid")
	ll_iperf "iperf_$x$dir.1" 127.0.0.1 "$P2" "$dir"
	wait "$rtt_pid" || rc=$?
	record_rc "rtt_${x}bulk_$dir.1" "$rc"
}

ll_sparkrelay() { # ll_sparkrelay DIR INFIX: relay in A, sidecar in B, the runs through them
	local d=$1 x=$2 pids=() i
	rm -f "$d/spark.json" "$d/state.json"
	start ll-relay ip netns exec "$NS_A" "$SR" relay --config "$d/config.json"
	pids+=("$LAST_PID")
	if wait_listen 198.18.0.1:25443 10 "$NS_A"; then
		start ll-sidecar ip netns exec "$NS_B" "$SR" tunnel --config "$d/config.json"
		pids+=("$LAST_PID")
		if wait_lease "$d"; then
			# With several tunnels, the others join after the lease.
			for ((i = 0; i < 100; i++)); do
				[ "$(ip netns exec "$NS_B" ss -Htn state established dst 198.18.0.1 \
					dport = :25443 | wc -l)" -ge "${SPARKRELAY_TUNNEL_CONNECTIONS:-1}" ] && break
				sleep 0.1
			done
			start ll-server2 ip netns exec "$NS_B" "$BENCH" server --listen "127.0.0.1:$P1" --max-seconds 3600
			pids+=("$LAST_PID")
			if wait_listen "127.0.0.1:$P1" 10 "$NS_B"; then
				if [ -z "$x" ]; then
					ll_rtt "rtt_idle.1" "127.0.0.1:$P1" $((LL_S / 2))
				fi
				ll_bulk_and_rtt down "$x"
				ll_bulk_and_rtt up "$x"
			fi
		else
			cat "$TMP"/ll-relay.log "$TMP"/ll-sidecar.log >&2
		fi
	fi
	if grep -qE ' (WARN|ERROR) ' "$TMP/ll-relay.log" "$TMP/ll-sidecar.log" 2>/dev/null; then
		log "long link: the relay or sidecar logged warnings or errors (--keep keeps $TMP/ll-*.log)"
	fi
	stop_pids "${pids[@]}"
}

run_longlink() {
	local d="$TMP/longlink" ll_pids=()
	log "long link: ${LL_DELAY_MS} ms one way (each direction), loss $LL_LOSS, MTU $LL_MTU"
	mkdir -p "$d"
	if ! bash "$ROOT/bench/netem/link.sh" up "$LINK_ST" "$LL_DELAY_MS" "$LL_LOSS" "$LL_MTU"; then
		log "long link: set-up failed, skipped"
		return 0
	fi
	# shellcheck disable=SC1091
	. "$LINK_ST/env" # NS_A, NS_B; link.sh down stops its forwarder (not our child)
	TOOL=llplain
	# Ports are fixed: nothing else runs in these fresh namespaces.
	start ll-server ip netns exec "$NS_B" "$BENCH" server --listen 198.18.0.2:25002 --max-seconds 3600
	ll_pids+=("$LAST_PID")
	if wait_listen 198.18.0.2:25002 10 "$NS_B"; then
		ll_rtt "rtt_idle.1" 198.18.0.2:25002 $((LL_S / 2))
		ll_iperf "iperf_down.1" 198.18.0.2 25001 down
		ll_iperf "iperf_up.1" 198.18.0.2 25001 up
	fi

	stop_pids "${ll_pids[@]}"
	TOOL=llsparkrelay
	sparkrelay_config "$d/config.json" 198.18.0.1:25443 127.0.0.1 25100 25107 198.18.0.1:25443 "$d"
	ll_sparkrelay "$d" ""
	# The same with a second tunnel (TCP connection): the relay puts the
	# driver port's streams on one and the block manager's on the other.
	SPARKRELAY_TUNNEL_CONNECTIONS=2 ll_sparkrelay "$d" 2t_
	bash "$ROOT/bench/netem/link.sh" down "$LINK_ST" || true
	cp "$LINK_ST/netem.log" "$RES/longlink-netem.log" 2>/dev/null || true
	sed 's/^/    /' "$LINK_ST/netem.log" >&2 || true
}

# ------------------------------------------------------------------------ run
# bench/survival.sh sources this file for its dependencies, build, certificates
# and the tools' set-up functions, and runs scenarios of its own.
if [ "${SR_COMPARE_AS_LIB:-0}" = 1 ]; then
	return 0
fi
BUSY=$("${SRB[@]}" busy 2)
LOAD_BEFORE=$(cat /proc/loadavg)
T0=$(date +%s)
log "mode $MODE, $REPS repetition(s), tools: $TOOLS; scenarios: $SCEN$([ "$LONG_LINK" = 1 ] && echo ', long link (one run)'); results: $OUT"
# SPARKRELAY_* variables reach the relay and sidecar and override their
# configuration (a trade-off under study, docs/operations.md); the report
# lists them.
if env | grep -q '^SPARKRELAY_'; then
	log "sparkrelay runs with SPARKRELAY_* variables from the environment: $(env | grep -o '^SPARKRELAY_[A-Z0-9_]*' | sort | tr '\n' ' ')"
fi
for ((round = 1; round <= REPS; round++)); do
	for tool in $TOOLS; do
		run_tool "$tool" "$round"
	done
done
if want idle10k; then
	if uses sparkrelay; then
		run_idle10k
	else
		log "idle10k measures sparkrelay only, which --tools leaves out: skipped"
	fi
fi
if [ "$LONG_LINK" = 1 ]; then
	run_longlink
fi
LOAD_AFTER=$(cat /proc/loadavg)
T1=$(date +%s)
log "done in $((T1 - T0)) s; load after: $LOAD_AFTER"

CC=$(sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null || echo unknown)
python3 "$ROOT/bench/report.py" --git "$GIT_REV (+$GIT_DIRTY changed files)" --res "$RES" --out "$OUT" \
	--date "$DATE" --mode "$MODE" --reps "$REPS" --tools "$TOOLS" --load-before "$LOAD_BEFORE" \
	--load-after "$LOAD_AFTER" --busy "$BUSY" --seconds $((T1 - T0)) --tcp-cc "$CC" \
	--long-link "${LL_DELAY_MS}ms one way, loss $LL_LOSS, MTU $LL_MTU"
if command -v gnuplot >/dev/null 2>&1 && [ -f "$OUT/$DATE.gp" ]; then
	(cd "$OUT" && gnuplot "$DATE.gp") && rm -f "$OUT/$DATE.gp" "$OUT/$DATE.dat"
fi
log "wrote $OUT/$DATE.json, $OUT/$DATE.md$([ -f "$OUT/$DATE.png" ] && echo " and $OUT/$DATE.png")"
