#!/bin/bash
# Start the sparkrelay sidecar next to a notebook and leave the Spark settings where
# PySpark and Scala kernels pick them up. Meant as a SageMaker Studio lifecycle
# configuration (or any start-up hook: JupyterHub, a container entrypoint, ~/.bashrc).
#
#   start-sparkrelay.sh [start]   start the sidecar in the background (unless one runs)
#                                 and wait for its lease; exit 0 when the Spark
#                                 settings are in place, 1 otherwise
#   start-sparkrelay.sh start --detach
#                                 for lifecycle hooks: do the above in a detached
#                                 process and return at once, always with exit 0
#                                 (a relay outage or a mistake never blocks or fails
#                                 the notebook's start); progress in
#                                 $SPARKRELAY_HOME/start.log
#   start-sparkrelay.sh stop      SIGTERM the sidecar (it releases its lease and removes
#                                 the Spark settings), wait
#   start-sparkrelay.sh status    one line: the sidecar's pid and lease, or what is
#                                 wrong; exit 0 with a lease and a live tunnel, 1 no
#                                 sidecar running, 3 no lease, 4 relay unreachable
#                                 (the lease is kept while the sidecar reconnects)
#
# Configuration, from the environment (set them in the lifecycle configuration):
#   SPARKRELAY_TUNNEL_RELAYS      relay host:port list, comma-separated (required
#                                 unless SPARKRELAY_CONFIG has it)
#   SPARKRELAY_TUNNEL_TLS_CA      CA bundle that verifies the relay (required, likewise)
#   SPARKRELAY_TUNNEL_TOKEN, SPARKRELAY_TUNNEL_APP, ...  any other setting
#                                 (docs/configuration.md)
#   SPARKRELAY_CONFIG             optional tunnel config file (env still overrides it)
#   SPARKRELAY_BIN                the binary (default: sparkrelay on PATH)
#   SPARKRELAY_HOME               state folder (default ~/.sparkrelay): spark.json,
#                                 spark-defaults.conf, state.json, status.json,
#                                 sparkrelay.log, pid
#   SPARKRELAY_WAIT_S             seconds to wait for the lease (default 60; 600
#                                 with --detach)
#   SPARK_CONF_DIR                where Spark reads spark-defaults.conf; default
#                                 $SPARK_HOME/conf, else pip's pyspark/conf. When that
#                                 folder is not writable (a root-owned image, a
#                                 read-only site-packages), $SPARKRELAY_HOME/spark-conf
#                                 is used instead: it starts as a copy of the
#                                 folder's spark-defaults.conf, with links to its
#                                 other files (spark-env.sh, log4j2.properties, ...),
#                                 and the IPython start-up file points kernels at it.
#
# Where the settings go (no port is ever typed by the user):
#   1. $SPARK_CONF_DIR/spark-defaults.conf: the sidecar itself keeps the lease's
#      settings there (tunnel.spark_defaults), in a "# sparkrelay begin/end" block,
#      current on every lease change (a revoked lease, a relay that restarted, a
#      grace period that ran out), and removes the block when the lease is released
#      or lost. Other lines are kept; lines setting the same keys are dropped.
#      spark-submit reads this file, and PySpark starts its JVM through
#      spark-submit, so SparkSession.builder.getOrCreate() picks them up; so do
#      Scala kernels (spylon, Almond, Toree) that use $SPARK_HOME. A running Spark
#      session keeps the ports it started with: restart it after a lease change.
#   2. An IPython start-up file (~/.ipython/profile_default/startup/00-sparkrelay.py)
#      that sets SPARK_CONF_DIR (to the folder of 1.) and SPARKRELAY_SPARK_JSON in
#      every new Python kernel (a lifecycle script cannot change the environment of
#      kernels directly), and before each cell reads $SPARKRELAY_HOME/status.json:
#      when the lease changed, was lost or the relay is unreachable, the notebook
#      shows one line saying so (and whether the running Spark session must be
#      restarted).
#   3. $SPARKRELAY_HOME/spark.json: the same settings as JSON (example_pyspark.py),
#      removed with the lease.
#
# SageMaker Studio runs lifecycle scripts with a time limit (5 minutes) and ends their
# process group afterwards: the sidecar (and with --detach, the waiting start-up) is
# started with setsid and nohup so it lives on, and the lease wait is bounded by
# SPARKRELAY_WAIT_S.
set -euo pipefail

SR_HOME=${SPARKRELAY_HOME:-$HOME/.sparkrelay}
SR_BIN=${SPARKRELAY_BIN:-sparkrelay}
WAIT_S=${SPARKRELAY_WAIT_S:-60}
PIDFILE=$SR_HOME/sparkrelay.pid
LOG=$SR_HOME/sparkrelay.log

# The sidecar's output files live in SR_HOME unless set explicitly.
export SPARKRELAY_TUNNEL_SPARK_JSON=${SPARKRELAY_TUNNEL_SPARK_JSON:-$SR_HOME/spark.json}
export SPARKRELAY_TUNNEL_SPARK_CONF=${SPARKRELAY_TUNNEL_SPARK_CONF:-$SR_HOME/spark-defaults.conf}
export SPARKRELAY_TUNNEL_STATE_FILE=${SPARKRELAY_TUNNEL_STATE_FILE:-$SR_HOME/state.json}
export SPARKRELAY_TUNNEL_STATUS_FILE=${SPARKRELAY_TUNNEL_STATUS_FILE:-$SR_HOME/status.json}
LEASE_JSON=$SPARKRELAY_TUNNEL_SPARK_JSON
STATUS_JSON=$SPARKRELAY_TUNNEL_STATUS_FILE
# The spark-defaults.conf the sidecar keeps the lease in (written by start).
DEFAULTS_PATH_FILE=$SR_HOME/spark-defaults.path

say() { echo "sparkrelay-start: $*" >&2; }

running_pid() {
	local pid
	[ -s "$PIDFILE" ] || return 1
	pid=$(cat "$PIDFILE")
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	# The pid must still be our sidecar, not a recycled pid.
	kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' tunnel' || return 1
	echo "$pid"
}

# spark_conf_dir: the folder Spark reads by default (empty: none found).
spark_conf_dir() {
	if [ -n "${SPARK_CONF_DIR:-}" ]; then
		echo "$SPARK_CONF_DIR"
	elif [ -n "${SPARK_HOME:-}" ]; then
		echo "$SPARK_HOME/conf"
	else
		local py
		py=$(python3 -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' \
			2>/dev/null) || py=""
		[ -n "$py" ] && echo "$py/conf"
	fi
	return 0
}

# writable_dir DIR: DIR exists (or can be made) and a file can be created in it.
# A real probe, not [ -w ]: that is always true for root, even on a read-only mount.
writable_dir() {
	local probe
	mkdir -p "$1" 2>/dev/null || return 1
	probe=$(mktemp "$1/.sparkrelay-probe.XXXXXX" 2>/dev/null) || return 1
	rm -f "$probe"
}

# seed_conf_dir FROM TO: TO stands in for the folder FROM that Spark would read.
# The first time, it gets a copy of FROM's spark-defaults.conf (later edits in TO
# are kept); every time, a link to each other file of FROM that TO lacks.
seed_conf_dir() {
	local from=$1 to=$2 f name
	[ -d "$from" ] || return 0
	if [ -r "$from/spark-defaults.conf" ] && [ ! -e "$to/spark-defaults.conf" ]; then
		cp "$from/spark-defaults.conf" "$to/spark-defaults.conf" 2>/dev/null ||
			say "cannot copy $from/spark-defaults.conf; its settings are not in $to"
	fi
	for f in "$from"/* "$from"/.[!.]*; do
		[ -e "$f" ] || continue
		name=${f##*/}
		[ "$name" = spark-defaults.conf ] && continue
		[ -e "$to/$name" ] || [ -L "$to/$name" ] || ln -s "$f" "$to/$name" 2>/dev/null || true
	done
}

# choose_conf_dir: print the folder to merge the settings into, falling back to
# $SR_HOME/spark-conf when Spark's own is not writable; 1 when none is.
choose_conf_dir() {
	local want fallback=$SR_HOME/spark-conf
	want=$(spark_conf_dir)
	# A symlinked spark-defaults.conf is never written through (the sidecar
	# refuses it, as it could point anywhere): like a read-only folder.
	if [ -n "$want" ] && writable_dir "$want" && [ ! -L "$want/spark-defaults.conf" ]; then
		echo "$want"
		return 0
	fi
	if ! writable_dir "$fallback"; then
		say "cannot write the Spark settings to ${want:+$want or }$fallback"
		return 1
	fi
	if [ -n "$want" ]; then
		local why="$want is not writable"
		[ -L "$want/spark-defaults.conf" ] && why="$want/spark-defaults.conf is a symbolic link"
		say "$why: the Spark settings go to $fallback instead" \
			"(seeded from $want; new kernels get SPARK_CONF_DIR=$fallback)"
		seed_conf_dir "$want" "$fallback"
	fi
	echo "$fallback"
}

# remove_block FILE: the "# sparkrelay begin/end" block out of FILE, for a sidecar
# that could not do it itself (killed). Written atomically; other lines kept; a
# begin without an end drops only itself, as the sidecar does.
remove_block() {
	local target=$1 tmp
	[ -f "$target" ] && [ ! -L "$target" ] || return 0
	grep -q '^# sparkrelay begin' "$target" 2>/dev/null || return 0
	tmp=$(mktemp "$target.XXXXXX" 2>/dev/null) || return 1
	if awk 'FNR == NR { if ($0 ~ /^# sparkrelay end/) last = FNR; next }
		/^# sparkrelay begin/ { if (FNR < last) skip = 1; next }
		skip && /^# sparkrelay end/ { skip = 0; next }
		!skip' "$target" "$target" >"$tmp" &&
		chmod --reference="$target" "$tmp" 2>/dev/null &&
		mv -f "$tmp" "$target"; then
		return 0
	fi
	rm -f "$tmp"
	return 1
}

# status_field NAME: the value of a top-level string or number field of the
# sidecar's status.json (the sidecar writes one field per line, ASCII only, every
# value a single token or escaped text). Empty when missing.
status_field() {
	[ -s "$STATUS_JSON" ] || return 0
	# a string, or a bare token (a number; null, before the first lease, is
	# "missing" rather than the text "null")
	sed -n -e 's/^  "'"$1"'": "\([^"]*\)",\{0,1\}$/\1/p' \
		-e 's/^  "'"$1"'": \([^",]*\),\{0,1\}$/\1/p' "$STATUS_JSON" | head -n 1 |
		sed 's/^null$//'
}

# py_str S: S as a Python string literal; fails for control characters.
py_str() {
	local s=$1
	case $s in *[[:cntrl:]]*) return 1 ;; esac
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

write_ipython_startup() {
	local conf_dir=$1 dir=$HOME/.ipython/profile_default/startup conf_lit json_lit st_lit tmp
	if ! conf_lit=$(py_str "$conf_dir") || ! json_lit=$(py_str "$LEASE_JSON") ||
		! st_lit=$(py_str "$STATUS_JSON"); then
		say "no IPython start-up file written: a path has control characters"
		return 1
	fi
	if ! { mkdir -p "$dir" && tmp=$(mktemp "$dir/.00-sparkrelay.py.XXXXXX"); } 2>/dev/null; then
		say "cannot write an IPython start-up file in $dir: set SPARK_CONF_DIR=$conf_dir" \
			"in the kernels yourself"
		return 1
	fi
	# The paths go in as string literals only, never as code or comment text.
	# SPARK_CONF_DIR is set, not defaulted: the folder holding the lease is the only
	# one whose settings bind the driver to the leased ports.
	cat >"$tmp" <<EOF
# Written by start-sparkrelay.sh: lets PySpark in this kernel find the sparkrelay
# lease settings (spark-defaults.conf in SPARK_CONF_DIR), and says in the notebook
# when the lease changes or is lost (before a cell runs, one line, once per change).
import os
os.environ["SPARK_CONF_DIR"] = $conf_lit
os.environ.setdefault("SPARKRELAY_SPARK_JSON", $json_lit)
os.environ.setdefault("SPARKRELAY_STATUS", $st_lit)


def _sparkrelay_install(status_path):
    import json
    import sys

    seen = {"key": None, "lease": None}

    def tok(v):
        # only printable ASCII from the file reaches the notebook
        return "".join(c for c in str(v) if " " <= c <= "~")[:200]

    def running_port():
        ctx = getattr(sys.modules.get("pyspark"), "SparkContext", None)
        sc = getattr(ctx, "_active_spark_context", None) if ctx else None
        try:
            return sc.getConf().get("spark.driver.port") if sc else None
        except Exception:
            return None

    def notice():
        try:
            with open(status_path) as f:
                st = json.load(f)
            state = tok(st.get("state", ""))
            pid = int(st.get("pid", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            st, state, pid = {}, "missing", 0
        if pid > 0 and state != "stopped":
            try:
                os.kill(pid, 0)
                # a zombie answers kill 0 until reaped, which a container
                # whose PID 1 reaps nothing never does
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                        state = "dead"
            except ProcessLookupError:
                state = "dead"
            except (OSError, IndexError):
                pass
        ports = st.get("ports") if isinstance(st.get("ports"), dict) else {}
        lease = (tok(st.get("lease") or ""), tok(st.get("host") or ""),
                 tok(ports.get("driver", "")), tok(ports.get("blockManager", "")))
        key = (state, lease)
        if key == seen["key"]:
            return None
        prev, seen["key"] = seen["key"][0] if seen["key"] else None, key
        msg = tok(st.get("message", ""))
        if state == "leased":
            before, seen["lease"] = seen["lease"], lease
            run = running_port()
            if run and run != lease[2]:
                return ("sparkrelay: the lease changed (now %s: driver port %s, host %s); "
                        "the running Spark session uses port %s: restart it "
                        "(spark.stop(), then build it again)"
                        % (lease[0], lease[2], lease[1], run))
            if before and before[1:] != lease[1:]:
                return ("sparkrelay: the lease changed (now %s: driver port %s, host %s): "
                        "restart the Spark session (spark.stop(), then build it again)"
                        % (lease[0], lease[2], lease[1]))
            if prev is None or prev == "leased":
                return None
            if before:
                return "sparkrelay: tunnel to the relay back up (lease %s)" % lease[0]
            return "sparkrelay: lease %s ready (driver port %s)" % (lease[0], lease[2])
        if state == "connecting" or (state == "reconnecting" and prev is None):
            return None
        if state == "reconnecting":
            return "sparkrelay: tunnel to the relay lost, reconnecting (%s)" % msg
        if state == "relay_unreachable":
            return "sparkrelay: relay unreachable: %s" % msg
        if state == "no_lease":
            return "sparkrelay: no lease: %s" % msg
        return ("sparkrelay: the sidecar is not running: executors cannot reach this "
                "notebook (start-sparkrelay.sh start)")

    def pre_run_cell(*args):
        try:
            line = notice()
        except Exception:
            return
        if line:
            print(line, file=sys.stderr)

    try:
        get_ipython().events.register("pre_run_cell", pre_run_cell)
    except Exception:
        pass


_sparkrelay_install(os.environ["SPARKRELAY_STATUS"])
del _sparkrelay_install
EOF
	chmod 0644 "$tmp"
	mv -f "$tmp" "$dir/00-sparkrelay.py"
}

cmd_start() {
	local pid conf_dir deadline
	if ! { mkdir -p "$SR_HOME" && chmod 0700 "$SR_HOME"; } 2>/dev/null; then
		say "cannot create $SR_HOME (set SPARKRELAY_HOME to a writable folder)"
		exit 1
	fi
	# Where the settings will go is settled before a lease is taken.
	conf_dir=$(choose_conf_dir) || exit 1
	export SPARKRELAY_TUNNEL_SPARK_DEFAULTS=${SPARKRELAY_TUNNEL_SPARK_DEFAULTS:-$conf_dir/spark-defaults.conf}
	# Kernels started while the lease is awaited already look in the right place, and
	# say when it arrives.
	write_ipython_startup "$conf_dir" || true
	if pid=$(running_pid); then
		say "sidecar already running (pid $pid)"
	else
		command -v "$SR_BIN" >/dev/null || { say "cannot find $SR_BIN"; exit 1; }
		# A stale lease file would be taken for the new lease.
		rm -f "$LEASE_JSON"
		set -- tunnel
		[ -n "${SPARKRELAY_CONFIG:-}" ] && set -- tunnel --config "$SPARKRELAY_CONFIG"
		# No shell stays between us and the sidecar: signals reach it directly.
		setsid nohup "$SR_BIN" "$@" </dev/null >>"$LOG" 2>&1 &
		pid=$!
		echo "$pid" >"$PIDFILE"
		printf '%s\n' "$SPARKRELAY_TUNNEL_SPARK_DEFAULTS" >"$DEFAULTS_PATH_FILE"
		say "started the sidecar (pid $pid), log $LOG"
	fi

	deadline=$((SECONDS + WAIT_S))
	until [ -s "$LEASE_JSON" ]; do
		if ! kill -0 "$pid" 2>/dev/null; then
			say "the sidecar exited; its log:"
			tail -n 20 "$LOG" >&2 || true
			exit 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			say "no lease within ${WAIT_S} s (the sidecar keeps trying); its log:"
			tail -n 20 "$LOG" >&2 || true
			exit 1
		fi
		sleep 0.2
	done

	# The sidecar writes spark.json, then the block: wait for the block too.
	until grep -q '^# sparkrelay end' "$SPARKRELAY_TUNNEL_SPARK_DEFAULTS" 2>/dev/null; do
		if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
			say "the sidecar did not write the settings into" \
				"$SPARKRELAY_TUNNEL_SPARK_DEFAULTS; its log:"
			tail -n 20 "$LOG" >&2 || true
			exit 1
		fi
		sleep 0.2
	done
	say "lease: $(sed -n '/^# sparkrelay begin/,/^# sparkrelay end/p' \
		"$SPARKRELAY_TUNNEL_SPARK_DEFAULTS" | grep -v '^#' | tr '\n' ' ')"
	say "Spark settings in $SPARKRELAY_TUNNEL_SPARK_DEFAULTS (kept current by the sidecar)"
}

# cmd_start_detached: `start` in a process of its own session, so that it outlives a
# lifecycle hook's process group; returns at once and never fails.
cmd_start_detached() {
	local script
	if ! { mkdir -p "$SR_HOME" && chmod 0700 "$SR_HOME"; } 2>/dev/null; then
		say "cannot create $SR_HOME: sparkrelay not started (the notebook starts without it)"
		return 0
	fi
	script=$(readlink -f "$0" 2>/dev/null) || script=$0
	SPARKRELAY_WAIT_S=${SPARKRELAY_WAIT_S:-600} \
		setsid nohup bash "$script" start </dev/null >>"$SR_HOME/start.log" 2>&1 &
	say "starting in the background (pid $!): the Spark settings are merged when the" \
		"lease arrives; progress in $SR_HOME/start.log, state with \"$script status\""
	return 0
}

# cleanup_settings: what a sidecar that was killed left behind (one that stops
# removes them itself).
cleanup_settings() {
	local defaults=""
	[ -s "$DEFAULTS_PATH_FILE" ] && defaults=$(head -n 1 "$DEFAULTS_PATH_FILE")
	rm -f "$LEASE_JSON" "$SPARKRELAY_TUNNEL_SPARK_CONF"
	if [ -n "$defaults" ] && ! remove_block "$defaults"; then
		say "cannot remove the lease's settings from $defaults"
	fi
	return 0
}

cmd_stop() {
	local pid i
	if ! pid=$(running_pid); then
		say "no sidecar running"
		rm -f "$PIDFILE"
		cleanup_settings
		return 0
	fi
	kill -TERM "$pid"
	# The sidecar waits at most tunnel.release_timeout_ms (3 s) for the relay.
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "sidecar (pid $pid) did not exit within 10 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		cleanup_settings
		exit 1
	fi
	rm -f "$PIDFILE"
	cleanup_settings
	say "sidecar stopped (lease released, Spark settings removed)"
}

cmd_status() {
	local pid state lease host driver bm relay msg
	if ! pid=$(running_pid); then
		echo "no sidecar running: no lease (start-sparkrelay.sh start)"
		return 1
	fi
	state=$(status_field state)
	lease=$(status_field lease) host=$(status_field host) relay=$(status_field relay)
	driver=$(sed -n 's/^    "driver": \([0-9]*\),\{0,1\}$/\1/p' "$STATUS_JSON" 2>/dev/null | head -n 1)
	bm=$(sed -n 's/^    "blockManager": \([0-9]*\),\{0,1\}$/\1/p' "$STATUS_JSON" 2>/dev/null |
		head -n 1)
	# escaped by the sidecar; no control character reaches the terminal
	msg=$(status_field message | tr -d '[:cntrl:]')
	case "$state" in
	leased)
		echo "sidecar running (pid $pid): lease $lease, driver port $driver," \
			"blockManager port $bm, host $host, relay $relay"
		return 0
		;;
	reconnecting | relay_unreachable)
		echo "sidecar running (pid $pid): relay unreachable: $msg" \
			"${lease:+(lease $lease kept while it reconnects)}"
		return 4
		;;
	*)
		echo "sidecar running (pid $pid): no lease${msg:+: $msg}"
		return 3
		;;
	esac
}

usage() {
	sed -n '/^#   start-sparkrelay.sh/,/^#$/p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-start}" in
start)
	case "${2:-}" in
	"") cmd_start ;;
	--detach) cmd_start_detached ;;
	*)
		usage >&2
		exit 2
		;;
	esac
	;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*)
	usage >&2
	exit 2
	;;
esac
