#!/bin/bash
# Health check of the sparkrelay container (Dockerfile HEALTHCHECK; the Kubernetes
# probes use `sparkrelay ctl` directly). Exit 0: healthy; 1: not. It must run as the
# container's user, inside the container (it reads /proc/1).
#
#   relay with relay.admin.listen set (the default, 127.0.0.1:9090):
#           `sparkrelay ctl --admin http://<that address> health`: /healthz answers 200,
#           which also proves the event loop is not stuck.
#   relay with the admin API off (relay.admin.listen null):
#           PID 1 holds a listening TCP socket on relay.listen's port (no network
#           traffic: a TCP connect would log "TLS handshake failed" in the relay).
#   tunnel: the lease file (tunnel.spark_json) exists and PID 1 has an established
#           TCP connection (the tunnel; a sidecar between reconnects is unhealthy).
#
# `sparkrelay-healthcheck ready` (the relay's Kubernetes readiness probe): PID 1
# holds the listening socket on relay.listen (a relay that handed over to a new one,
# or has not taken over yet, does not; the admin port alone cannot tell the two relay
# pods of a rolling update apart, they share the node's loopback) and `sparkrelay ctl
# ready` answers (listeners up, not draining, a fleet relay joined its fleet).
#
# The addresses come from `sparkrelay check-config`, so the config file named on PID
# 1's command line and SPARKRELAY_* variables both count. SPARKRELAY_HEALTHCHECK_ADMIN
# (a URL) forces the admin check at that address.
set -u

mode=${1:-health}
case "$mode" in health | ready) ;; *) echo "usage: $0 [ready]" >&2 && exit 2 ;; esac

if [ -n "${SPARKRELAY_HEALTHCHECK_ADMIN:-}" ] && [ "$mode" = health ]; then
	exec /usr/local/bin/sparkrelay ctl --admin "$SPARKRELAY_HEALTHCHECK_ADMIN" health >/dev/null
fi

fail() {
	echo "unhealthy: $*" >&2
	exit 1
}

# PID 1's arguments: role and --config FILE / --config=FILE / -c FILE.
mapfile -d '' argv </proc/1/cmdline || fail "cannot read /proc/1/cmdline"
role="" config=""
for ((i = 1; i < ${#argv[@]}; i++)); do
	case "${argv[i]}" in
	relay | tunnel) [ -z "$role" ] && role=${argv[i]} ;;
	--config | -c) config=${argv[i + 1]:-} ;;
	--config=*) config=${argv[i]#--config=} ;;
	esac
done
[ -n "$role" ] || fail "PID 1 is not 'sparkrelay relay' or 'sparkrelay tunnel'"

# Relative paths in the configuration are relative to PID 1's working directory.
cd /proc/1/cwd 2>/dev/null || fail "cannot enter PID 1's working directory"
if [ -n "$config" ]; then
	dump=$(/usr/local/bin/sparkrelay check-config --print "$config" 2>/dev/null)
else
	dump=$(echo '{}' | /usr/local/bin/sparkrelay check-config --print /dev/stdin 2>/dev/null)
fi
[ -n "$dump" ] || fail "check-config failed"

# Inodes of PID 1's sockets.
declare -A mine=()
for fd in /proc/1/fd/*; do
	link=$(readlink "$fd" 2>/dev/null) || continue
	case "$link" in
	socket:\[*\]) ino=${link#socket:[} && mine[${ino%]}]=1 ;;
	esac
done

# has_socket STATE [PORT]: PID 1 owns a TCP socket in STATE (hex, as in /proc/net/tcp),
# with local port PORT when given.
has_socket() {
	local want_state=$1 want_port=${2:-} sl local rem st rest ino
	for f in /proc/net/tcp /proc/net/tcp6; do
		[ -r "$f" ] || continue
		while read -r sl local rem st _ _ _ _ _ ino rest; do
			[ "$st" = "$want_state" ] || continue
			[ -n "${mine[$ino]:-}" ] || continue
			if [ -n "$want_port" ] && [ $((16#${local##*:})) -ne "$want_port" ]; then
				continue
			fi
			return 0
		done < <(tail -n +2 "$f")
	done
	return 1
}

# The dump as "path=value" lines (it is jansson's 2-space indented JSON).
conf=$(awk '
	match($0, /^ *"[^"]+": /) {
		lvl = (index($0, "\"") - 1) / 2
		key = substr($0, lvl * 2 + 2); key = substr(key, 1, index(key, "\"") - 1)
		val = substr($0, RLENGTH + 1); sub(/,$/, "", val)
		path[lvl] = key
		if (val == "{") next
		p = path[1]; for (i = 2; i <= lvl; i++) p = p "." path[i]
		gsub(/^"|"$/, "", val)
		print p "=" val
	}' <<<"$dump")
setting() { sed -n "s/^$1=//p" <<<"$conf" | head -n 1; }

case "$role" in
relay)
	admin=$(setting relay.admin.listen)
	if [ "$mode" = ready ]; then
		listen=$(setting relay.listen)
		port=${listen##*:}
		case "$port" in '' | *[!0-9]*) fail "no relay.listen port in the configuration" ;; esac
		if [ "$port" -ne 0 ]; then
			has_socket 0A "$port" ||
				fail "this relay does not hold the listener on port $port (not taken over yet, or handed over)"
		fi
		[ -n "$admin" ] && [ "$admin" != null ] || exit 0
		host=${admin%:*} port=${admin##*:}
		case "$host" in 0.0.0.0 | "") host=127.0.0.1 ;; "[::]" | "::") host="[::1]" ;; esac
		exec /usr/local/bin/sparkrelay ctl --admin "http://$host:$port" ready >/dev/null
	fi
	if [ -n "$admin" ] && [ "$admin" != null ]; then
		host=${admin%:*} port=${admin##*:}
		case "$host" in 0.0.0.0 | "") host=127.0.0.1 ;; "[::]" | "::") host="[::1]" ;; esac
		exec /usr/local/bin/sparkrelay ctl --admin "http://$host:$port" health >/dev/null
	fi
	listen=$(setting relay.listen)
	port=${listen##*:}
	case "$port" in '' | *[!0-9]*) fail "no relay.listen port in the configuration" ;; esac
	[ "$port" -ne 0 ] || exit 0 # port 0: any free port; nothing to match
	has_socket 0A "$port" || fail "no listening socket on port $port"
	;;
tunnel)
	json=$(setting tunnel.spark_json)
	if [ -n "$json" ] && [ "$json" != null ]; then
		[ -s "$json" ] || fail "no lease yet ($json not written)"
	fi
	has_socket 01 || fail "no established connection (tunnel down, reconnecting)"
	;;
esac
exit 0
