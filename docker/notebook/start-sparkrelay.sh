#!/bin/bash
# Start the sparkrelay sidecar next to a notebook and leave the Spark settings where
# PySpark and Scala kernels pick them up. Meant as a SageMaker Studio lifecycle
# configuration (or any start-up hook: JupyterHub, a container entrypoint, ~/.bashrc).
#
#   start-sparkrelay.sh [start]   start the sidecar in the background (unless one runs),
#                                 wait for its lease, merge the settings; exit 0 when
#                                 the Spark settings are in place, 1 otherwise
#   start-sparkrelay.sh start --detach
#                                 for lifecycle hooks: do the above in a detached
#                                 process and return at once, always with exit 0
#                                 (a relay outage or a mistake never blocks or fails
#                                 the notebook's start); progress in
#                                 $SPARKRELAY_HOME/start.log
#   start-sparkrelay.sh stop      SIGTERM the sidecar (it releases its lease), wait
#   start-sparkrelay.sh status    print the sidecar's pid and lease, exit 1 if none
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
#                                 spark-defaults.conf, state.json, sparkrelay.log, pid
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
#   1. $SPARK_CONF_DIR/spark-defaults.conf: the lease's keys are replaced in place
#      (other lines are kept), inside a "# sparkrelay begin/end" block. Only the
#      settings a lease defines are taken from the sidecar's fragment, each value
#      checked for its shape; a fragment with any other line is refused whole and
#      nothing is merged (the file is the driver's: a line there can run code in
#      it, e.g. spark.jars or spark.driver.extraJavaOptions). spark-submit
#      reads this file, and PySpark starts its JVM through spark-submit, so
#      SparkSession.builder.getOrCreate() picks them up; so do Scala kernels
#      (spylon, Almond, Toree) that use $SPARK_HOME.
#   2. An IPython start-up file (~/.ipython/profile_default/startup/00-sparkrelay.py)
#      that sets SPARK_CONF_DIR (to the folder of 1.) and SPARKRELAY_SPARK_JSON in
#      every new Python kernel: a lifecycle script cannot change the environment of
#      kernels directly.
#   3. $SPARKRELAY_HOME/spark.json: the same settings as JSON (example_pyspark.py).
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
LEASE_JSON=$SPARKRELAY_TUNNEL_SPARK_JSON
FRAGMENT=$SPARKRELAY_TUNNEL_SPARK_CONF

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
	if [ -n "$want" ] && writable_dir "$want"; then
		echo "$want"
		return 0
	fi
	if ! writable_dir "$fallback"; then
		say "cannot write the Spark settings to ${want:+$want or }$fallback"
		return 1
	fi
	if [ -n "$want" ]; then
		say "$want is not writable: the Spark settings go to $fallback instead" \
			"(seeded from $want; new kernels get SPARK_CONF_DIR=$fallback)"
		seed_conf_dir "$want" "$fallback"
	fi
	echo "$fallback"
}

# merge_defaults FRAGMENT TARGET: replace the fragment's keys in TARGET (any separator:
# Spark reads "key value", "key=value" and "key: value"), keep every other line, and
# append the fragment as one marked block. Written atomically.
#
# The fragment must be what the sidecar writes: comment lines, and "key value"
# lines (one space) for the keys below, each at most once, each value of its
# shape. Anything else (a key it did not expect, a value out of shape) refuses
# the whole fragment: returns 1 and leaves TARGET as it was.
merge_defaults() {
	local fragment=$1 target=$2 tmp
	if ! { mkdir -p "$(dirname "$target")" && touch "$target" &&
		tmp=$(mktemp "$target.XXXXXX"); } 2>/dev/null; then
		say "cannot write $target"
		return 1
	fi
	if ! awk -v frag="$fragment" '
		function port(v) { return v ~ /^[1-9][0-9]*$/ && length(v) <= 5 && v + 0 <= 65535 }
		# a DNS name or an IP address (mawk has no {m,n}: the length is checked apart)
		function host(v) { return v ~ /^[A-Za-z0-9:][A-Za-z0-9.:-]*$/ && length(v) <= 253 }
		function valid(k, v) {
			if (k == "spark.driver.host") return host(v)
			if (k == "spark.driver.bindAddress") return v == "127.0.0.1"
			if (k == "spark.driver.port" || k == "spark.driver.blockManager.port" ||
			    k == "spark.ui.port") return port(v)
			if (k == "spark.port.maxRetries") return v == "0"
			if (k == "spark.kubernetes.executor.useDriverPodIP") return v == "false"
			return 0
		}
		function refuse(why) {
			# never the line itself: it may hold terminal escapes
			printf "sparkrelay-start: refusing %s: %s\n", frag, why > "/dev/stderr"
			bad = 1
			exit 1
		}
		BEGIN {
			nl = 0
			while ((r = (getline line < frag)) > 0) {
				nl++
				if (line ~ /^#/ || line == "") continue
				if (line !~ /^[A-Za-z.]+ [A-Za-z0-9.:-]+$/)
					refuse("line " nl " is not a \"key value\" setting")
				k = substr(line, 1, index(line, " ") - 1)
				v = substr(line, index(line, " ") + 1)
				if (!valid(k, v))
					refuse("line " nl ": not a setting of a lease, or a bad value for it")
				if (k in keys)
					refuse("line " nl ": " k " appears twice")
				keys[k] = 1
				block = block k " " v "\n"
			}
			if (r < 0)
				refuse("cannot read it")
			n = split("spark.driver.host spark.driver.bindAddress spark.driver.port " \
			          "spark.driver.blockManager.port spark.port.maxRetries " \
			          "spark.kubernetes.executor.useDriverPodIP", need, " ")
			for (i = 1; i <= n; i++)
				if (!(need[i] in keys))
					refuse("it lacks " need[i])
		}
		/^# sparkrelay (begin|end)/ { next }
		{
			l = $0; sub(/^[ \t]+/, "", l)
			split(l, kv, /[ \t=:]+/)
			if (l ~ /^#/ || !(kv[1] in keys)) print
		}
		END {
			if (bad)
				exit 1
			printf "# sparkrelay begin: written by start-sparkrelay.sh from the lease; do not edit\n"
			printf "%s", block
			printf "# sparkrelay end\n"
		}' "$target" >"$tmp"; then
		rm -f "$tmp"
		return 1
	fi
	chmod 0644 "$tmp"
	if ! mv -f "$tmp" "$target" 2>/dev/null; then
		rm -f "$tmp"
		say "cannot replace $target"
		return 1
	fi
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
	local conf_dir=$1 dir=$HOME/.ipython/profile_default/startup conf_lit json_lit tmp
	if ! conf_lit=$(py_str "$conf_dir") || ! json_lit=$(py_str "$LEASE_JSON"); then
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
# lease settings (spark-defaults.conf in SPARK_CONF_DIR).
import os
os.environ["SPARK_CONF_DIR"] = $conf_lit
os.environ.setdefault("SPARKRELAY_SPARK_JSON", $json_lit)
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

	if ! merge_defaults "$FRAGMENT" "$conf_dir/spark-defaults.conf"; then
		say "$FRAGMENT: nothing merged"
		exit 1
	fi
	write_ipython_startup "$conf_dir" || true
	# From the merged block: only what passed the checks is shown.
	say "lease: $(sed -n '/^# sparkrelay begin/,/^# sparkrelay end/p' \
		"$conf_dir/spark-defaults.conf" | grep -v '^#' | tr '\n' ' ')"
	say "Spark settings merged into $conf_dir/spark-defaults.conf"
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

cmd_stop() {
	local pid i
	if ! pid=$(running_pid); then
		say "no sidecar running"
		rm -f "$PIDFILE"
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
		exit 1
	fi
	rm -f "$PIDFILE"
	say "sidecar stopped (lease released)"
}

cmd_status() {
	local pid
	if pid=$(running_pid); then
		echo "sidecar running, pid $pid"
		[ -s "$LEASE_JSON" ] && cat "$LEASE_JSON"
		return 0
	fi
	echo "no sidecar running"
	return 1
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
