#!/usr/bin/env bash
# An emulated long link between two network namespaces, through sr-netem
# (a user-space TUN forwarder: this kernel has no sch_netem).
#
#   link.sh up STATE_DIR [DELAY_MS [LOSS [MTU]]]   create it; STATE_DIR/env says
#                                                  NS_A, NS_B, IP_A, IP_B, NETEM_PID
#   link.sh down STATE_DIR                         remove it (idempotent)
#   link.sh verify [DELAY_MS [LOSS [MTU]]]         up, ping and plain iperf3
#                                                  both ways, then down
#
# DELAY_MS (25) is one way and applies in each direction, like netem on both
# ends of a link: ping shows about twice it. LOSS (0.01) is the probability
# that a packet is dropped, independently in each direction. MTU (1500) is
# that of both devices, so loss strikes wire-sized packets.
#
# Side A (198.18.0.1) plays the cluster: relay and executors. Side B
# (198.18.0.2) plays the notebook: sidecar and driver. 198.18.0.0/15 is the
# range set aside for benchmarks (RFC 2544); the namespaces have no other
# interface than their loopback and this device, so nothing leaves them.
# Needs root (namespaces, /dev/net/tun).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NETEM=${SR_NETEM:-$HERE/../../build-bench/bench/sr-netem}

link_up() {
	local st=$1 delay=${2:-25} loss=${3:-0.01} mtu=${4:-1500} tag i
	mkdir -p "$st"
	[ -x "$NETEM" ] || { echo "link.sh: no $NETEM (cmake --build build-bench --target sr-netem)" >&2; return 1; }
	tag="srll$$$RANDOM"
	tag=${tag:0:12}
	NS_A="$tag-a"
	NS_B="$tag-b"
	# Written first, so that `down` can clean up whatever part came up.
	printf 'NS_A=%s\nNS_B=%s\nIP_A=198.18.0.1\nIP_B=198.18.0.2\nDELAY_MS=%s\nLOSS=%s\nMTU=%s\n' \
		"$NS_A" "$NS_B" "$delay" "$loss" "$mtu" >"$st/env"
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	ip -n "$NS_A" link set lo up
	ip -n "$NS_B" link set lo up
	"$NETEM" --ns-a "/run/netns/$NS_A" --ns-b "/run/netns/$NS_B" --delay-ms "$delay" \
		--loss "$loss" --max-seconds 3600 >"$st/netem.log" 2>&1 &
	echo "NETEM_PID=$!" >>"$st/env"
	for ((i = 0; i < 100; i++)); do
		if ip -n "$NS_A" link show srnetem0 >/dev/null 2>&1 &&
			ip -n "$NS_B" link show srnetem0 >/dev/null 2>&1; then
			break
		fi
		sleep 0.05
	done
	ip -n "$NS_A" link set srnetem0 mtu "$mtu" up
	ip -n "$NS_B" link set srnetem0 mtu "$mtu" up
	ip -n "$NS_A" addr add 198.18.0.1/30 dev srnetem0
	ip -n "$NS_B" addr add 198.18.0.2/30 dev srnetem0
	# No IPv6 chatter (router solicitations) through the emulated link.
	ip netns exec "$NS_A" sysctl -qw net.ipv6.conf.srnetem0.disable_ipv6=1 2>/dev/null || true
	ip netns exec "$NS_B" sysctl -qw net.ipv6.conf.srnetem0.disable_ipv6=1 2>/dev/null || true
}

link_down() {
	local st=$1 NS_A="" NS_B="" NETEM_PID="" p i
	[ -f "$st/env" ] || return 0
	# shellcheck disable=SC1091
	. "$st/env"
	# Whatever still runs inside the namespaces was started for this link.
	for ns in "$NS_A" "$NS_B"; do
		[ -n "$ns" ] || continue
		for p in $(ip netns pids "$ns" 2>/dev/null); do
			kill "$p" 2>/dev/null || true
		done
	done
	if [ -n "$NETEM_PID" ] && kill -0 "$NETEM_PID" 2>/dev/null; then
		kill "$NETEM_PID" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "$NETEM_PID" 2>/dev/null || break
			sleep 0.05
		done
	fi
	for ns in "$NS_A" "$NS_B"; do
		[ -n "$ns" ] || continue
		for p in $(ip netns pids "$ns" 2>/dev/null); do
			kill -9 "$p" 2>/dev/null || true
		done
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -f "$st/env"
}

# Fixed ports are fine inside the fresh namespaces: nothing else runs there.
link_verify() {
	local st srv rc=0 secs=${SR_LL_SECONDS:-8}
	st=$(mktemp -d /tmp/sr-link.XXXXXX)
	VERIFY_ST=$st
	trap 'link_down "$VERIFY_ST"; rm -rf "$VERIFY_ST"' EXIT
	trap 'exit 130' INT TERM
	link_up "$st" "$@"
	# shellcheck disable=SC1091
	. "$st/env"
	echo "== TCP congestion control: $(ip netns exec "$NS_A" sysctl -n net.ipv4.tcp_congestion_control)"
	echo "== ping 198.18.0.2 from $NS_A, 300 packets, 20 ms apart"
	ip netns exec "$NS_A" ping -q -n -i 0.02 -c 300 -W 2 198.18.0.2 | tail -2 || rc=1
	ip netns exec "$NS_B" iperf3 -s -1 -B 198.18.0.2 -p 25201 >"$st/iperf-s1.log" 2>&1 &
	srv=$!
	sleep 0.3
	echo "== plain TCP, one connection A -> B (iperf3 -t $secs)"
	ip netns exec "$NS_A" iperf3 -c 198.18.0.2 -p 25201 -t "$secs" -f m | grep -E "sender|receiver" || rc=1
	wait "$srv" || true
	ip netns exec "$NS_B" iperf3 -s -1 -B 198.18.0.2 -p 25202 >"$st/iperf-s2.log" 2>&1 &
	srv=$!
	sleep 0.3
	echo "== plain TCP, one connection B -> A (iperf3 -R)"
	ip netns exec "$NS_A" iperf3 -c 198.18.0.2 -p 25202 -t "$secs" -R -f m | grep -E "sender|receiver" || rc=1
	wait "$srv" || true
	link_down "$st"
	echo "== forwarder"
	cat "$st/netem.log"
	return $rc
}

case "${1:-}" in
up) shift; link_up "$@" ;;
down) shift; link_down "$@" ;;
verify) shift; link_verify "$@" ;;
*) sed -n '2,/^set/{/^#/p}' "$0" >&2; exit 2 ;;
esac
