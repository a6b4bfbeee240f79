#!/usr/bin/env bash
# Survival scenario, side by side for every tool of bench/compare.sh: N
# executor-like connections (bench/survival/seqecho.py: each sends a sequence
# number every 100 ms and checks its echoes come back in order, each exactly
# once) stay open through
#   out10    a 10 s outage of the tunnel path,
#   out60    a 60 s outage of the tunnel path,
#   restart  a restart of the cluster-side process (what each tool offers):
#            sparkrelay: live handover (`relay --takeover`), and separately
#                        kill -9 of the relay and a plain restart;
#            ssh -R:     the ssh client (its connection) killed and restarted
#                        (sshd's per-connection process cannot be restarted);
#            stunnel:    the executor-facing stunnel stopped and restarted;
#            haproxy:    its own reload: a new process with -sf OLDPID;
#            socat:      the listening socat stopped and restarted;
#            direct:     no middle, nothing to restart (the control).
# The outage drops the path's packets on loopback with iptables (INPUT -i lo,
# --dport and --sport). The path: sparkrelay the sidecar->relay TLS port,
# ssh -R the ssh port, stunnel the stunnel-to-stunnel TLS port; haproxy and
# socat have no tunnel, the executor connection IS the path: their front port
# (both legs, same port number); direct: the server's port. All tools run at
# the same time, each on its own ports, and live through the same outage.
#
# usage: bench/survival.sh [--quick] [--conns N] [--tools "direct sparkrelay ..."]
#                          [--scenarios "out10 out60 restart"] [--out DIR] [--keep]
#   --quick      one 5 s outage, 20 connections per tool (under a minute)
#   default      the three scenarios, 50 connections per tool (3 to 4 minutes)
# Needs root (iptables); without it, says so and exits 0.
# Writes DIR/survival-<date>.json and .md (default DIR /tmp/sr-bench-results).
set -euo pipefail

SV_ROOT=$(cd "$(dirname "$0")/.." && pwd)
SV_MODE=default
SV_CONNS=""
SV_ALL_TOOLS="direct sparkrelay ssh stunnel haproxy socat"
SV_TOOLS=$SV_ALL_TOOLS
SV_SCEN=""
SV_OUT=/tmp/sr-bench-results
SV_KEEP=()
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) SV_MODE=quick ;;
	--conns) SV_CONNS=$2; shift ;;
	--tools) SV_TOOLS=$2; shift ;;
	--scenarios) SV_SCEN=$2; shift ;;
	--out) SV_OUT=$2; shift ;;
	--keep) SV_KEEP=(--keep) ;;
	-h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
	*) echo "survival.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
if [ "$SV_MODE" = quick ]; then
	SV_CONNS=${SV_CONNS:-20}
	SV_SCEN=${SV_SCEN:-out5}
else
	SV_CONNS=${SV_CONNS:-50}
	SV_SCEN=${SV_SCEN:-out10 out60 restart}
fi
case "$SV_CONNS" in '' | *[!0-9]* | 0) echo "survival.sh: --conns takes a positive integer" >&2; exit 2 ;; esac
[ "$SV_CONNS" -le 2000 ] || { echo "survival.sh: --conns at most 2000" >&2; exit 2; }
for s in $SV_SCEN; do
	case "$s" in
	out[0-9] | out[0-9][0-9] | out[0-9][0-9][0-9] | restart) ;;
	*) echo "survival.sh: unknown scenario $s (outN: an N-second outage, N < 1000; restart)" >&2; exit 2 ;;
	esac
done
for t in $SV_TOOLS; do
	case " $SV_ALL_TOOLS " in *" $t "*) ;; *) echo "survival.sh: unknown tool $t" >&2; exit 2 ;; esac
done
if [ "$(id -u)" -ne 0 ] || ! command -v iptables >/dev/null 2>&1; then
	echo "survival.sh: skipped: the outages need root and iptables (run it as root on a machine of your own)" >&2
	exit 0
fi

# compare.sh's dependencies, Release build, certificates and tool set-up
# functions (it returns before running anything of its own).
SR_COMPARE_AS_LIB=1
# shellcheck source=bench/compare.sh
. "$SV_ROOT/bench/compare.sh" --quick --only rpc --tools "$SV_TOOLS" --out "$SV_OUT" "${SV_KEEP[@]}"
ROOT=$SV_ROOT
log() { printf '%s survival: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
SEQ=(python3 "$ROOT/bench/survival/seqecho.py")
TMP0=$TMP
# Two relays at once (and compare.sh's default 9090 may be taken): any free port.
export SPARKRELAY_RELAY_ADMIN_LISTEN=127.0.0.1:0
# Info: the relay's and sidecar's "resumed N streams, replayed B bytes after T s
# away" lines go into the report.
export SPARKRELAY_LOG_LEVEL=info
SV_RES="$TMP0/survival"
mkdir -p "$SV_RES"

RULES=() # "PORT" of every iptables rule pair in place
drop_path() { # drop_path PORT: both directions of PORT on loopback
	iptables -w 5 -I INPUT -i lo -p tcp --dport "$1" -j DROP
	iptables -w 5 -I INPUT -i lo -p tcp --sport "$1" -j DROP
	RULES+=("$1")
}
undrop_all() {
	local p
	for p in "${RULES[@]}"; do
		iptables -w 5 -D INPUT -i lo -p tcp --dport "$p" -j DROP 2>/dev/null || true
		iptables -w 5 -D INPUT -i lo -p tcp --sport "$p" -j DROP 2>/dev/null || true
	done
	RULES=()
}
sv_cleanup() {
	undrop_all
	TMP=$TMP0
	cleanup
}
trap sv_cleanup EXIT

forget_pid() { # forget_pid PID: reaped; the exit clean-up must not signal it
	local q keep=()
	for q in "${PIDS[@]}"; do
		[ "$q" = "$1" ] || keep+=("$q")
	done
	PIDS=("${keep[@]}")
}

# Per instance: tool, front, path port, pids, directory, client pid.
declare -A I_TOOL I_P1 I_FRONT I_PATH I_PIDS I_DIR I_CLIENT I_METHOD I_RELAYPORT
INSTS=()

inst_up() { # inst_up INST TOOL: the tool and an echo server behind it
	local inst=$1 tool=$2
	TMP="$TMP0/$inst"
	rm -rf "$TMP"
	mkdir -p "$TMP"
	TOOL=$tool
	TOOL_PIDS=()
	TPIDS=()
	if [ "$tool" = sparkrelay ]; then
		export SPARKRELAY_RELAY_HANDOVER_SOCKET="$TMP/ho.sock"
	fi
	if ! "setup_$tool"; then
		log "$inst: set-up failed, skipped"
		stop_pids "${TOOL_PIDS[@]}"
		TMP=$TMP0
		return 1
	fi
	unset SPARKRELAY_RELAY_HANDOVER_SOCKET
	case "$tool" in
	direct | haproxy | socat) I_PATH[$inst]=$P1 ;;
	sparkrelay | ssh) I_PATH[$inst]=${PORTS[0]} ;;
	stunnel) I_PATH[$inst]=${PORTS[1]} ;;
	esac
	I_RELAYPORT[$inst]=${PORTS[0]}
	start echo "${SEQ[@]}" server --listen "127.0.0.1:$P1" --max-seconds 1200
	TOOL_PIDS+=("$LAST_PID")
	wait_listen "127.0.0.1:$P1" || { stop_pids "${TOOL_PIDS[@]}"; TMP=$TMP0; return 1; }
	I_TOOL[$inst]=$tool
	I_P1[$inst]=$P1
	I_FRONT[$inst]=$FRONT
	I_PIDS[$inst]="${TOOL_PIDS[*]}"
	I_DIR[$inst]=$TMP
	INSTS+=("$inst")
	TMP=$TMP0
}

client_up() { # client_up INST SCEN TAIL
	local inst=$1
	start "client-$inst" "${SEQ[@]}" client --connect "${I_FRONT[$inst]}:${I_P1[$inst]}" \
		--conns "$SV_CONNS" --tail "$3" --ready "${I_DIR[$inst]}/ready" \
		--json "$SV_RES/$2.$inst.json"
	I_CLIENT[$inst]=$LAST_PID
	mv "$TMP0/client-$inst.log" "${I_DIR[$inst]}/" 2>/dev/null || true
}

clients_ready() { # every client connected and echoing, or logged
	local inst i
	for inst in "${INSTS[@]}"; do
		for ((i = 0; i < 600; i++)); do
			[ -f "${I_DIR[$inst]}/ready" ] && break
			kill -0 "${I_CLIENT[$inst]}" 2>/dev/null || break
			sleep 0.1
		done
		[ "$(cat "${I_DIR[$inst]}/ready" 2>/dev/null)" = ok ] ||
			log "$inst: its $SV_CONNS connections were not all echoing before the event"
	done
}

clients_done() { # clients_done SECONDS
	local inst
	for inst in "${INSTS[@]}"; do
		wait_gone "${I_CLIENT[$inst]}" "$1" || log "$inst: client still running after $1 s; stopped"
		stop_pids "${I_CLIENT[$inst]}"
	done
}

scenario_down() { # scenario_down SCEN
	local inst
	undrop_all
	for inst in "${INSTS[@]}"; do
		# shellcheck disable=SC2086
		stop_pids ${I_PIDS[$inst]}
		mkdir -p "$SV_RES/logs/$1.$inst"
		cp "${I_DIR[$inst]}"/*.log "$SV_RES/logs/$1.$inst/" 2>/dev/null || true
		if [ "${I_TOOL[$inst]}" = sparkrelay ]; then
			grep -hE 'resumed [0-9]+ streams|took over in|handed over to|streams reset|lease changed|ended by the relay' \
				"${I_DIR[$inst]}"/relay*.log "${I_DIR[$inst]}"/sidecar.log 2>/dev/null |
				head -20 >"$SV_RES/$1.$inst.log-lines" || true
		fi
	done
	stop_pids "${PIDS[@]}" # what a restart started
	INSTS=()
	sleep 1
}

bring_all() { # bring_all SCEN: every tool of the scenario, its instance names
	local t
	INSTS=()
	for t in $SV_TOOLS; do
		if [ "$1" = restart ]; then
			[ "$t" = direct ] && continue
			inst_up "$t" "$t" || continue
			if [ "$t" = sparkrelay ]; then
				inst_up sparkrelay-kill9 sparkrelay || true
			fi
		else
			inst_up "$t" "$t" || true
		fi
	done
}

run_outage() { # run_outage SCEN SECONDS
	local scen=$1 secs=$2 inst tail
	tail=$((secs + 30 > 70 ? 70 : secs + 30))
	log "$scen: ${SV_CONNS} connections per tool, the tunnel path dropped for $secs s"
	bring_all "$scen"
	for inst in "${INSTS[@]}"; do
		client_up "$inst" "$scen" "$tail"
		I_METHOD[$scen.$inst]="iptables DROP of port ${I_PATH[$inst]} for $secs s"
	done
	clients_ready
	sleep 2
	for inst in "${INSTS[@]}"; do
		kill -USR1 "${I_CLIENT[$inst]}"
		drop_path "${I_PATH[$inst]}"
	done
	# In the background: an interrupt ends the run (and the outage) at once.
	sleep "$secs" &
	wait $!
	undrop_all
	for inst in "${INSTS[@]}"; do
		kill -USR2 "${I_CLIENT[$inst]}"
	done
	log "$scen: path back; waiting for the echoes (at most $((tail + 20)) s)"
	clients_done $((tail + 20))
	scenario_down "$scen"
}

restart_one() { # restart_one INST: the tool's restart; sets the method text
	local inst=$1 d=${I_DIR[$1]} old new rc i
	local -a p
	read -r -a p <<<"${I_PIDS[$inst]}"
	TMP=$d
	case "$inst" in
	sparkrelay)
		old=${p[0]}
		export SPARKRELAY_RELAY_HANDOVER_SOCKET="$d/ho.sock"
		start relay-new "$SR" relay --config "$d/sparkrelay/config.json" --takeover
		new=$LAST_PID
		unset SPARKRELAY_RELAY_HANDOVER_SOCKET
		I_PIDS[$inst]+=" $new"
		rc=timeout
		if wait_gone "$old" 30; then
			rc=0
			wait "$old" 2>/dev/null || rc=$?
			forget_pid "$old"
		fi
		kill -0 "$new" 2>/dev/null || log "$inst: the new relay exited"
		I_METHOD[restart.$inst]="live handover: relay --takeover (old relay exit $rc)"
		;;
	sparkrelay-kill9)
		old=${p[0]}
		kill -9 "$old"
		wait "$old" 2>/dev/null || true
		forget_pid "$old"
		export SPARKRELAY_RELAY_HANDOVER_SOCKET="$d/ho.sock"
		start relay-new "$SR" relay --config "$d/sparkrelay/config.json"
		I_PIDS[$inst]+=" $LAST_PID"
		unset SPARKRELAY_RELAY_HANDOVER_SOCKET
		wait_listen "127.0.0.1:${I_RELAYPORT[$inst]}" || true
		I_METHOD[restart.$inst]="kill -9 of the relay, a new relay started (no fleet)"
		;;
	ssh)
		# ssh runs its connection in the client; killing it ends the
		# connection (sshd's process for it exits too).
		old=${p[1]}
		kill "$old"
		wait "$old" 2>/dev/null || true
		forget_pid "$old"
		for ((i = 0; i < 5; i++)); do
			start ssh-new ssh -N -p "${I_RELAYPORT[$inst]}" -i "$d/ssh/userkey" -c aes128-gcm@openssh.com \
				-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
				-o ExitOnForwardFailure=yes -o ServerAliveInterval=0 -o LogLevel=ERROR \
				-R "127.0.0.2:${I_P1[$inst]}:127.0.0.1:${I_P1[$inst]}" root@127.0.0.1
			new=$LAST_PID
			wait_listen "127.0.0.2:${I_P1[$inst]}" 3 && break
			stop_pids "$new"
		done
		I_PIDS[$inst]+=" $new"
		I_METHOD[restart.$inst]="ssh client (the tunnel's connection) stopped, started again"
		;;
	stunnel)
		old=${p[1]} # the client-side stunnel: the one executors connect to
		kill "$old"
		wait "$old" 2>/dev/null || true
		forget_pid "$old"
		start stunnel-new "$STUNNEL" "$d/stunnel/client.conf"
		I_PIDS[$inst]+=" $LAST_PID"
		wait_listen "127.0.0.2:${I_P1[$inst]}" || true
		I_METHOD[restart.$inst]="executor-facing stunnel stopped, started again"
		;;
	haproxy)
		old=${p[0]}
		# HAProxy's reload: the new process binds, the old one stops
		# accepting and serves its connections until they end.
		start haproxy-new "$HAPROXY" -db -f "$d/haproxy/haproxy.cfg" -sf "$old"
		I_PIDS[$inst]+=" $LAST_PID"
		sleep 1
		kill -0 "$LAST_PID" 2>/dev/null || log "$inst: the new haproxy exited"
		I_METHOD[restart.$inst]="haproxy reload: new process with -sf OLDPID (old one keeps its connections)"
		;;
	socat)
		old=${p[0]}
		kill "$old"
		wait "$old" 2>/dev/null || true
		forget_pid "$old"
		start socat-new socat "TCP-LISTEN:${I_P1[$inst]},bind=127.0.0.2,fork,reuseaddr,nodelay,backlog=1024" \
			"TCP:127.0.0.1:${I_P1[$inst]},nodelay"
		I_PIDS[$inst]+=" $LAST_PID"
		wait_listen "127.0.0.2:${I_P1[$inst]}" || true
		I_METHOD[restart.$inst]="listening socat stopped (SIGTERM), started again"
		;;
	esac
	TMP=$TMP0
}

run_restart() {
	local inst
	log "restart: ${SV_CONNS} connections per tool, the cluster-side process restarted"
	bring_all restart
	for inst in "${INSTS[@]}"; do
		client_up "$inst" restart 30
	done
	clients_ready
	sleep 2
	for inst in "${INSTS[@]}"; do
		log "restart: $inst"
		kill -USR1 "${I_CLIENT[$inst]}"
		restart_one "$inst"
		kill -USR2 "${I_CLIENT[$inst]}"
	done
	clients_done 50
	scenario_down restart
}

SV_DATE=$(date -u +%Y-%m-%dT%H%M%SZ)
SV_T0=$(date +%s)
SV_LOAD0=$(cat /proc/loadavg)
log "tools: $SV_TOOLS; scenarios: $SV_SCEN; $SV_CONNS connections per tool"
for s in $SV_SCEN; do
	case "$s" in
	restart) run_restart ;;
	out*) run_outage "$s" "${s#out}" ;;
	esac
done
SV_T1=$(date +%s)
{
	for k in "${!I_METHOD[@]}"; do
		printf '%s\t%s\n' "$k" "${I_METHOD[$k]}"
	done
} >"$SV_RES/methods.tsv"
mkdir -p "$SV_OUT"
python3 "$ROOT/bench/survival/report.py" --res "$SV_RES" --out "$SV_OUT/survival-$SV_DATE" \
	--date "$SV_DATE" --conns "$SV_CONNS" --scenarios "$SV_SCEN" --tools "$SV_TOOLS" \
	--seconds $((SV_T1 - SV_T0)) --load-before "$SV_LOAD0" --load-after "$(cat /proc/loadavg)" \
	--git "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
cat "$SV_OUT/survival-$SV_DATE.md"
log "wrote $SV_OUT/survival-$SV_DATE.json and .md ($((SV_T1 - SV_T0)) s)"
