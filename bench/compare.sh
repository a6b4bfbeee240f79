#!/usr/bin/env bash
# Side-by-side load benchmark: the same sparkrelay-bench scenarios, in one run,
# through direct TCP (the limit), sparkrelay (relay + sidecar), ssh -R, a
# stunnel pair, HAProxy (TCP mode) and socat. Every tool runs on loopback in
# the same shape: the bench server (the "driver") listens on 127.0.0.1:P, the
# clients (the "executors") connect to the tool's front on 127.0.0.2:P.
#
# usage: bench/compare.sh [--quick] [--reps N] [--tools "direct sparkrelay ..."]
#                         [--out DIR] [--keep]
#   --quick   one repetition, short loads (about 2 minutes): a smoke run
#   default   3 repetitions (medians), about 9 minutes on 2 cores (528-534 s in the
#             runs in bench/results), plus a first build
# Writes bench/results/<date>.json, <date>.md and <date>.png.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=default
REPS=3
TOOLS="direct sparkrelay ssh stunnel haproxy socat"
OUT="$ROOT/bench/results"
KEEP=0
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) MODE=quick; REPS=1 ;;
	--reps) REPS=$2; shift ;;
	--tools) TOOLS=$2; shift ;;
	--out) OUT=$2; shift ;;
	--keep) KEEP=1 ;;
	-h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
	*) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

log() { printf '%s compare: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- dependencies
missing=()
command -v /usr/sbin/sshd >/dev/null 2>&1 || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
command -v haproxy >/dev/null 2>&1 || command -v /usr/sbin/haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}" >/dev/null ||
		{ $SUDO apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}" >/dev/null; }
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# ----------------------------------------------------------------------- build
BUILD=${SR_BENCH_BUILD:-$ROOT/build-bench}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
	log "configuring a Release build in $BUILD"
	cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSR_TESTS=OFF >/dev/null
fi
cmake --build "$BUILD" -j2 --target sparkrelay sparkrelay-bench >/dev/null
SR="$BUILD/cmd/sparkrelay"
BENCH="$BUILD/bench/sparkrelay-bench"

# ------------------------------------------------------------- run parameters
if [ "$MODE" = quick ]; then
	TP_S=2; RPC_S=1.5; CONN_S=1.5; FAIR_S=2; IDLE_N=500; SPARK_E=40; SPARK_B=20; SPARK_MIB=8
	BIG_IDLE=0
else
	TP_S=3; RPC_S=2; CONN_S=2; FAIR_S=3; IDLE_N=2000; SPARK_E=100; SPARK_B=20; SPARK_MIB=16
	BIG_IDLE=10000
fi

TMP=$(mktemp -d /tmp/sr-compare.XXXXXX)
RES="$TMP/res"
mkdir -p "$RES" "$OUT"
PIDS=()      # every process we started, killed by pid on exit
TOOL_PIDS=() # the current tool's processes
TPIDS=()     # the pids whose CPU and memory count as "the tunnel"

cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
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
	TOOL_PIDS+=("$LAST_PID")
}

stop_tool() {
	local p
	for p in "${TOOL_PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${TOOL_PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	TOOL_PIDS=()
	TPIDS=()
}

wait_listen() { # wait_listen ADDR:PORT [seconds]
	local i
	for ((i = 0; i < ${2:-10} * 20; i++)); do
		if ss -Hltn "src $1" 2>/dev/null | grep -q .; then
			return 0
		fi
		sleep 0.05
	done
	log "nothing listens on $1"
	return 1
}

# Ports below the ephemeral range, so no client socket ever holds them.
# Each tool gets its own pair: P1 (driver RPC), P2 (block manager).
tool_ports() {
	case "$1" in
	direct) P1=20010 ;;
	ssh) P1=20020 ;;
	stunnel) P1=20030 ;;
	haproxy) P1=20040 ;;
	socat) P1=20050 ;;
	esac
	P2=$((P1 + 1))
}

CERTS="$TMP/certs"
mkdir -p "$CERTS"
"$SR" gen-certs "$CERTS" >/dev/null

setup_direct() {
	tool_ports direct
	FRONT=127.0.0.1
}

setup_sparkrelay() {
	local d="$TMP/sparkrelay" i
	mkdir -p "$d"
	rm -f "$d/spark.json"
	cat >"$d/config.json" <<EOF
{"log": {"level": "warn"},
 "relay": {"listen": "127.0.0.1:20090", "tls": {"cert": "$CERTS/relay.pem", "key": "$CERTS/relay.key"},
   "pool": {"bind": "127.0.0.2", "advertise": "127.0.0.2", "port_min": 20100, "port_max": 20199}},
 "tunnel": {"relays": ["127.0.0.1:20090"], "tls": {"ca": "$CERTS/ca.pem"}, "app": "bench",
   "spark_json": "$d/spark.json", "spark_conf": "$d/spark-defaults.conf", "state_file": "$d/state.json",
   "allowed_ports": ["20100-20199"]}}
EOF
	start relay "$SR" relay --config "$d/config.json"
	TPIDS+=("$LAST_PID")
	wait_listen 127.0.0.1:20090
	start sidecar "$SR" tunnel --config "$d/config.json"
	TPIDS+=("$LAST_PID")
	for ((i = 0; i < 200; i++)); do
		[ -s "$d/spark.json" ] && break
		sleep 0.05
	done
	[ -s "$d/spark.json" ] || { log "sidecar wrote no spark.json"; cat "$TMP"/relay.log "$TMP"/sidecar.log >&2; return 1; }
	P1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["driver"])' "$d/spark.json")
	P2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["blockManager"])' "$d/spark.json")
	FRONT=127.0.0.2
}

setup_ssh() {
	local d="$TMP/ssh"
	tool_ports ssh
	mkdir -p "$d" /run/sshd
	rm -f "$d/hostkey" "$d/hostkey.pub" "$d/userkey" "$d/userkey.pub"
	ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
	ssh-keygen -q -t ed25519 -N '' -f "$d/userkey"
	cp "$d/userkey.pub" "$d/authorized_keys"
	cat >"$d/sshd_config" <<EOF
Port 20092
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
	TPIDS+=("$LAST_PID")
	wait_listen 127.0.0.1:20092
	start ssh ssh -N -p 20092 -i "$d/userkey" -c aes128-gcm@openssh.com \
		-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
		-o ExitOnForwardFailure=yes -o ServerAliveInterval=0 -o LogLevel=ERROR \
		-R "127.0.0.2:$P1:127.0.0.1:$P1" -R "127.0.0.2:$P2:127.0.0.1:$P2" root@127.0.0.1
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2"
	FRONT=127.0.0.2
}

setup_stunnel() {
	local d="$TMP/stunnel" p
	tool_ports stunnel
	mkdir -p "$d"
	{
		echo "foreground = yes"
		echo "pid ="
		echo "debug = 3"
		echo "socket = l:TCP_NODELAY=1"
		echo "socket = r:TCP_NODELAY=1"
		for p in $P1 $P2; do
			printf '[c%s]\nclient = yes\naccept = 127.0.0.2:%s\nconnect = 127.0.0.1:%s\n' "$p" "$p" $((p + 500))
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
			printf '[s%s]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "$p" $((p + 500)) "$p"
			printf 'sslVersionMin = TLSv1.3\ncert = %s\nkey = %s\n' "$CERTS/relay.pem" "$CERTS/relay.key"
		done
	} >"$d/server.conf"
	start stunnel-server "$STUNNEL" "$d/server.conf"
	TPIDS+=("$LAST_PID")
	start stunnel-client "$STUNNEL" "$d/client.conf"
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2" && wait_listen "127.0.0.1:$((P1 + 500))"
	FRONT=127.0.0.2
}

setup_haproxy() {
	local d="$TMP/haproxy" p
	tool_ports haproxy
	mkdir -p "$d"
	{
		printf 'global\n  maxconn 9000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n'
		printf '  timeout client 1h\n  timeout server 1h\n'
		for p in $P1 $P2; do
			printf '\nfrontend f%s\n  bind 127.0.0.2:%s\n  default_backend b%s\n' "$p" "$p" "$p"
			printf 'backend b%s\n  server s%s 127.0.0.1:%s\n' "$p" "$p" "$p"
		done
	} >"$d/haproxy.cfg"
	start haproxy "$HAPROXY" -db -f "$d/haproxy.cfg"
	TPIDS+=("$LAST_PID")
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2"
	FRONT=127.0.0.2
}

setup_socat() {
	local p
	tool_ports socat
	for p in $P1 $P2; do
		start "socat-$p" socat "TCP-LISTEN:$p,bind=127.0.0.2,fork,reuseaddr,nodelay,backlog=1024" \
			"TCP:127.0.0.1:$p,nodelay"
		TPIDS+=("$LAST_PID")
	done
	wait_listen "127.0.0.2:$P1" && wait_listen "127.0.0.2:$P2"
	FRONT=127.0.0.2
}

tool_alive() {
	local p
	for p in "${TPIDS[@]}"; do
		kill -0 "$p" 2>/dev/null || return 1
	done
	return 0
}

bring_up() { # bring_up TOOL: the tool, then a bench server behind it
	local tool=$1
	if ! "setup_$tool"; then
		return 1
	fi
	start "server-$tool" "$BENCH" server --listen "127.0.0.1:$P1" --listen "127.0.0.1:$P2" --max-seconds 1200
	wait_listen "127.0.0.1:$P1" || return 1
	pid_args
	F1="$FRONT:$P1"
	F2="$FRONT:$P2"
	# A few exchanges so lazy set-up (ssh channels, TLS sessions) is not measured.
	"$BENCH" rpc --connect "$F1" --count 10 --seconds 1 >/dev/null 2>&1 || true
}

bench() { # bench TOOL NAME SCENARIO ARGS...: one measured run into $RES
	local tool=$1 name=$2 scen=$3 rc=0
	shift 3
	# A tool that died in an earlier run is counted and started again, so one
	# crash costs one figure, not the rest of the tool's column.
	if ! tool_alive; then
		log "$tool: a tunnel process died before $name; restarting it"
		echo "$name" >>"$RES/$tool.crashes"
		local logdir="$TMP/crash-$tool-$name"
		mkdir -p "$logdir"
		cp "$TMP"/*.log "$logdir"/ 2>/dev/null || true
		stop_tool
		bring_up "$tool" || { log "$tool: restart failed"; return 0; }
		pid_args
		# The arguments name the old front ports: map them to the new ones.
		local a args=()
		for a in "$@"; do
			case "$a" in
			*:[0-9]*) if [ "$a" = "$OLD_F1" ]; then a=$F1; elif [ "$a" = "$OLD_F2" ]; then a=$F2; fi ;;
			esac
			args+=("$a")
		done
		set -- "${args[@]}"
		# --pid arguments of the dead processes are replaced too.
		args=()
		while [ $# -gt 0 ]; do
			if [ "$1" = --pid ]; then
				shift 2
				continue
			fi
			args+=("$1")
			shift
		done
		set -- "${args[@]}" "${PIDARGS[@]}"
		OLD_F1=$F1
		OLD_F2=$F2
	fi
	timeout 300 "$BENCH" "$scen" --label "$tool" --json "$RES/$tool.$name.json" "$@" \
		>>"$TMP/bench-$tool.log" 2>&1 || rc=$?
	echo "$rc" >"$RES/$tool.$name.rc"
	if [ $rc -ne 0 ]; then
		log "$tool $name: exit $rc"
	fi
	# TIME_WAIT and the tools' own clean-up settle between runs.
	sleep 0.3
}

restart_tool() { # a fresh instance on (usually) the same ports; F1/F2 follow
	stop_tool
	sleep 0.5
	if ! bring_up "$1"; then
		log "$1: restart failed"
		return 0
	fi
	OLD_F1=$F1
	OLD_F2=$F2
}

pid_args() {
	local p
	PIDARGS=()
	for p in "${TPIDS[@]}"; do
		PIDARGS+=(--pid "$p")
	done
}

run_tool() {
	local tool=$1 rep
	log "$tool: starting"
	if ! bring_up "$tool"; then
		log "$tool: set-up failed, skipped"
		stop_tool
		return 0
	fi
	OLD_F1=$F1
	OLD_F2=$F2
	for ((rep = 1; rep <= REPS; rep++)); do
		log "$tool: repetition $rep/$REPS"
		bench "$tool" "tp1_down.$rep" throughput --connect "$F1" --conns 1 --dir down --seconds "$TP_S" "${PIDARGS[@]}"
		bench "$tool" "tp1_up.$rep" throughput --connect "$F1" --conns 1 --dir up --seconds "$TP_S" "${PIDARGS[@]}"
		bench "$tool" "tp4_both.$rep" throughput --connect "$F1" --conns 4 --dir both --seconds "$TP_S" "${PIDARGS[@]}"
		bench "$tool" "rpc64.$rep" rpc --connect "$F1" --conns 1 --size 64 --seconds "$RPC_S"
		bench "$tool" "rpc16k.$rep" rpc --connect "$F1" --conns 8 --size 16K --seconds "$RPC_S"
		bench "$tool" "connect.$rep" connect --connect "$F1" --concurrency 8 --seconds "$CONN_S"
		bench "$tool" "fairness.$rep" fairness --connect "$F1" --bulk 1 --hb-ms 10 --seconds "$FAIR_S"
		if [ "$tool" != socat ]; then
			# socat forks a process per connection: its summed RSS would count
			# shared pages thousands of times, so it has no idle figure.
			# A fresh instance: heap kept from the bulk runs would hide the
			# memory the idle connections take.
			restart_tool "$tool"
			bench "$tool" "idle.$rep" idle --connect "$F1" --conns "$IDLE_N" --concurrency 64 --hold 1 "${PIDARGS[@]}"
		fi
		bench "$tool" "spark.$rep" spark --connect "$F1" --connect2 "$F2" --executors "$SPARK_E" \
			--batch "$SPARK_B" --bm-mib "$SPARK_MIB" --hb-ms 10000 --time-scale 0.02 --hold 1
		# Task results in the executor's RPC connection (maxDirectResultSize raised):
		# 64 MiB each while 20 other executors heartbeat every 50 ms.
		bench "$tool" "spark_result.$rep" spark --connect "$F1" --connect2 "$F2" \
			--executors 20 --batch 20 --bm-mib 1 --hb-ms 10000 --time-scale 0.005 \
			--result-mib 64 --results 3 --hold 0.3
	done
	if [ "$tool" = sparkrelay ] && [ "$BIG_IDLE" -gt 0 ]; then
		log "$tool: $BIG_IDLE concurrent executor connections on one relay"
		restart_tool "$tool"
		bench "$tool" "idle10k.1" idle --connect "$F1" --conns "$BIG_IDLE" --concurrency 128 --hold 2 "${PIDARGS[@]}"
	fi
	if ! tool_alive; then
		echo "end" >>"$RES/$tool.crashes"
	fi
	stop_tool
}

DATE=$(date -u +%Y-%m-%dT%H%M%SZ)
LOAD_BEFORE=$(cat /proc/loadavg)
T0=$(date +%s)
log "mode $MODE, $REPS repetition(s), tools: $TOOLS; load before: $LOAD_BEFORE"
for tool in $TOOLS; do
	run_tool "$tool"
done
LOAD_AFTER=$(cat /proc/loadavg)
T1=$(date +%s)
log "done in $((T1 - T0)) s; load after: $LOAD_AFTER"

GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)
python3 "$ROOT/bench/report.py" --git "$GIT_REV (+$GIT_DIRTY changed files)" --res "$RES" --out "$OUT" --date "$DATE" --mode "$MODE" \
	--reps "$REPS" --tools "$TOOLS" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" \
	--seconds $((T1 - T0))
if command -v gnuplot >/dev/null 2>&1 && [ -f "$OUT/$DATE.gp" ]; then
	(cd "$OUT" && gnuplot "$DATE.gp") && rm -f "$OUT/$DATE.gp" "$OUT/$DATE.dat"
fi
log "wrote $OUT/$DATE.json, $OUT/$DATE.md and $OUT/$DATE.png"
