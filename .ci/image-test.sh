#!/usr/bin/env bash
# CI step "image test": builds docker/Dockerfile with podman and runs the image for
# real, both roles, on loopback; lints the Kubernetes manifests; runs the
# self-contained binary (./dev dist) in the bare base image, where none of its
# libraries are installed, and the notebook start-up script with it.
#
# No container registry and no Docker engine here: podman (Debian) builds the
# unmodified Dockerfile on a debian:bookworm-slim made locally with debootstrap. State
# (podman storage, the base image tarball) is kept in $SPARKRELAY_CI_PODMAN_DIR
# (default /var/tmp/sparkrelay-ci-podman) and reused: a fresh machine needs ~10 min,
# a cached run ~1 min. Runs as root (apt-get, rootful podman).
#
#   .ci/image-test.sh             everything
#   KEEP=1 .ci/image-test.sh      keep the work folder (certs, logs) afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STATE=${SPARKRELAY_CI_PODMAN_DIR:-/var/tmp/sparkrelay-ci-podman}
IMAGE=localhost/sparkrelay:ci
P=sparkrelay-ci # container name prefix
PY=/usr/bin/python3
T0=$SECONDS
STEP="start"
STEP_T=$SECONDS
TIMES=()
BG_PIDS=()
WORK=""

step() {
	[ "$STEP" = start ] || TIMES+=("$(printf '%4d s  %s' $((SECONDS - STEP_T)) "$STEP")")
	STEP=$1
	STEP_T=$SECONDS
	echo
	echo "== image-test: $STEP (t=$((SECONDS - T0)) s) =="
}

# podman without systemd logs an error for every health check timer it cannot
# create or remove; the checks are run by hand here (podman healthcheck run).
# Fd 9 holds the run lock; no container monitor (conmon) may inherit it.
podman() {
	command podman "$@" 9>&- 2> >(grep -v 'systemd connection' >&2)
}

fail() {
	echo "image-test: FAILED in step \"$STEP\": $*" >&2
	exit 1
}

# wait_log CONTAINER TEXT SECONDS: until the container's log contains TEXT.
wait_log() {
	local deadline=$((SECONDS + $3))
	until podman logs "$1" 2>&1 | grep -qF -- "$2"; do
		[ "$SECONDS" -lt "$deadline" ] || fail "$1: no \"$2\" in its log within $3 s"
		sleep 0.2
	done
}

# expect_log CONTAINER TEXT: the log contains TEXT (after the container stopped).
expect_log() {
	podman logs "$1" 2>&1 | grep -qF -- "$2" || fail "$1: log lacks \"$2\""
	echo "  log of $1 has: $2"
}

# stop_graceful CONTAINER: podman stop (SIGTERM), then exit code 0.
stop_graceful() {
	local rc
	timeout 90 podman stop -t 60 "$1" 9>&- 2> >(grep -v "systemd connection" >&2) >/dev/null || fail "podman stop $1 failed"
	rc=$(podman inspect --format '{{.State.ExitCode}}' "$1")
	[ "$rc" = 0 ] || fail "$1 exited $rc after SIGTERM (want 0)"
	echo "  $1: SIGTERM -> exit code 0"
}

containers() { echo "$P-gencerts $P-check $P-relay $P-sidecar $P-sidecar2 $P-nolease $P-dist"; }

cleanup() {
	local rc=$?
	set +e
	if [ "$rc" -ne 0 ] && command -v podman >/dev/null && [ -n "${CONTAINERS_CONF:-}" ]; then
		for c in $(containers); do
			podman container exists "$c" 2>/dev/null || continue
			echo "---- log of $c (last 40 lines) ----" >&2
			podman logs "$c" 2>&1 | tail -n 40 >&2
		done
	fi
	for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	for pidfile in "$WORK"/nb*/.sparkrelay/sparkrelay.pid; do
		[ -n "$WORK" ] && [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
	done
	if [ -n "${CONTAINERS_CONF:-}" ] && command -v podman >/dev/null; then
		# shellcheck disable=SC2046
		podman rm -f -t 0 --ignore $(containers) >/dev/null 2>&1
	fi
	if [ -n "$WORK" ]; then
		if [ "$rc" -ne 0 ] || [ -n "${KEEP:-}" ]; then
			echo "image-test: work folder kept: $WORK" >&2
		else
			rm -rf "$WORK"
		fi
	fi
	if [ "$rc" -ne 0 ]; then
		echo "image-test: FAILED (step \"$STEP\", exit $rc, after $((SECONDS - T0)) s)" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || fail "run as root (apt-get, rootful podman)"

# ---------------------------------------------------------------------------------
step "install tools (podman, runc, debootstrap, yamllint)"
PKGS=(podman runc debootstrap debian-archive-keyring yamllint python3 python3-yaml)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing+=("$p")
done
# kubectl, for `kubectl kustomize` (offline): the machine's own, else Debian's.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	timeout 300 apt-get update -qq || fail "apt-get update"
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]}"
fi
podman --version
runc --version | head -n 1

# ---------------------------------------------------------------------------------
step "lint Kubernetes manifests (yamllint, schema, consistency, kustomize)"
WORK=$(mktemp -d /tmp/sparkrelay-image-test.XXXXXX)
chmod 0755 "$WORK"
yamllint -c docker/ci/yamllint.yaml --strict docker/k8s/ || fail "yamllint docker/k8s"
echo "  yamllint: docker/k8s/*.yaml clean"
$PY docker/ci/check_manifests.py "$ROOT" --render require --extract-relay-json "$WORK/relay.json" ||
	fail "manifest checks (schema, consistency, kubectl kustomize)"
$PY docker/ci/test_check_manifests.py "$ROOT" || fail "the manifest checks miss a broken manifest"
bash -n docker/notebook/start-sparkrelay.sh docker/healthcheck.sh || fail "shell syntax"
$PY -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' docker/notebook/example_pyspark.py || fail "example_pyspark.py syntax"

# ---------------------------------------------------------------------------------
step "configure podman (runc, ulimits, private storage in $STATE)"
mkdir -p "$STATE"
exec 9>"$STATE/lock"
flock -w 1800 9 || fail "another image test holds $STATE/lock"
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
cat >"$STATE/containers.conf" <<EOF
# Written by .ci/image-test.sh. crun refuses this machine's hybrid cgroup layout; no
# systemd (cgroupfs, file events); the default nofile would be above the hard limit.
[containers]
default_ulimits = ["nofile=$hard:$hard", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$STATE/storage.conf" <<EOF
# Written by .ci/image-test.sh: storage of its own, kept between runs.
[storage]
driver = "overlay"
runroot = "/run/$(basename "$STATE")"
graphroot = "$STATE/storage"
EOF
export CONTAINERS_CONF=$STATE/containers.conf
export CONTAINERS_STORAGE_CONF=$STATE/storage.conf
podman info --format 'runtime={{.Host.OCIRuntime.Name}} storage={{.Store.GraphDriverName}} cgroups={{.Host.CgroupsVersion}}' ||
	fail "podman info"
podman rm -f -t 0 --ignore $(containers) >/dev/null || fail "cannot remove old containers"

# ---------------------------------------------------------------------------------
step "base image debian:bookworm-slim (debootstrap --variant=minbase, podman import)"
# The Debian mirror this machine uses (deb822 or one-line sources), else the default.
mirror_of() { # SUFFIX: debian | debian-security
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -oE "(https?|file)://[^ ]*/$1/?( |$)" | head -n 1 | tr -d ' ' | sed 's:/$::' ||
		true
}
# Bump when the recipe below changes, so a cached base made by an older one is rebuilt.
BASE_RECIPE=2
if [ "$(cat "$STATE/base.recipe" 2>/dev/null)" != "$BASE_RECIPE" ]; then
	podman rmi -f debian:bookworm-slim >/dev/null 2>&1 || true
	rm -f "$STATE/bookworm-minbase.tar"
fi
if podman image exists debian:bookworm-slim; then
	echo "  cached: $(podman image inspect --format '{{.Id}}' debian:bookworm-slim | cut -c1-12)"
else
	TARBALL=$STATE/bookworm-minbase.tar
	if [ ! -s "$TARBALL" ]; then
		MIRROR=$(mirror_of debian)
		MIRROR=${MIRROR:-http://deb.debian.org/debian}
		SECURITY=$(mirror_of debian-security)
		echo "  debootstrap from $MIRROR"
		RFS=$STATE/rootfs
		rm -rf "$RFS"
		timeout 900 debootstrap --variant=minbase bookworm "$RFS" "$MIRROR" \
			>"$STATE/debootstrap.log" 2>&1 ||
			{ tail -n 30 "$STATE/debootstrap.log" >&2; fail "debootstrap"; }
		# What the official slim image has too: updates and security sources, no docs.
		{
			echo "deb $MIRROR bookworm main"
			echo "deb $MIRROR bookworm-updates main"
			[ -n "$SECURITY" ] && echo "deb $SECURITY bookworm-security main"
		} >"$RFS/etc/apt/sources.list"
		cat >"$RFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
		cat >"$RFS/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
		chroot "$RFS" apt-get clean
		find "$RFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
		rm -rf "$RFS"/usr/share/man/* "$RFS"/usr/share/info/* "$RFS"/usr/share/locale/*
		rm -rf "$RFS"/var/lib/apt/lists/* "$RFS"/var/cache/apt/*.bin "$RFS"/var/log/*.log
		tar --numeric-owner -C "$RFS" --exclude='./dev/*' --exclude='./proc/*' \
			--exclude='./sys/*' -cf "$TARBALL.tmp" . || fail "tar of the rootfs"
		mv "$TARBALL.tmp" "$TARBALL"
		rm -rf "$RFS"
	fi
	podman import --change 'CMD ["bash"]' "$TARBALL" debian:bookworm-slim >/dev/null ||
		fail "podman import"
	echo "$BASE_RECIPE" >"$STATE/base.recipe"
fi
podman run --rm --network=host debian:bookworm-slim cat /etc/debian_version ||
	fail "the base image does not run"

# ---------------------------------------------------------------------------------
step "self-contained binary: ./dev dist, then run it in the bare base image"
# Built from scratch in CI (a fresh clone has no build-dist/); nothing is cached for it.
./dev dist >"$WORK/dist.log" 2>&1 || { tail -n 40 "$WORK/dist.log" >&2; fail "./dev dist"; }
grep '^dist: ' "$WORK/dist.log" | sed 's/^/  /'
VERSION=$(sed -n 's/^project(sparkrelay VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
DIST_NAME=sparkrelay-$VERSION-linux-$(uname -m)
(cd dist && sha256sum --check --quiet "$DIST_NAME.sha256") || fail "dist/$DIST_NAME.sha256 does not match"
echo "  dist/$DIST_NAME.sha256 matches"
# debian:bookworm-slim as made above (minbase): no libevent, OpenSSL, nghttp2, jansson
# or libcurl (dist-smoke.sh checks that first). Its own network namespace (loopback
# only) and an unprivileged user.
podman run --rm --name "$P-dist" --network=none --user 65534:65534 \
	-v "$ROOT/dist/$DIST_NAME:/opt/sparkrelay:ro" -v "$ROOT/.ci/dist-smoke.sh:/dist-smoke.sh:ro" \
	debian:bookworm-slim bash /dist-smoke.sh /opt/sparkrelay ||
	fail "the self-contained binary does not work in the bare base image"
mkdir -p "$WORK/bin"
cp "dist/$DIST_NAME" "$WORK/bin/sparkrelay"
chmod 0755 "$WORK/bin" "$WORK/bin/sparkrelay"

# ---------------------------------------------------------------------------------
step "podman build docker/Dockerfile -> $IMAGE"
# --format docker keeps HEALTHCHECK (the OCI format has none); --network=host needs no
# bridge networking on this machine. The Dockerfile itself is used as it is.
timeout 1500 podman build 9>&- --pull=never --format docker --network=host \
	-f docker/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
	{ tail -n 60 "$WORK/build.log" >&2; fail "podman build"; }
grep -E '^(STEP|COMMIT|--> Using cache)' "$WORK/build.log" | cut -c1-110 || true
# Keep the build stage tagged (it is the layer cache of the next run: apt and the
# compiler) and drop images that earlier runs left untagged, so storage stays bounded.
podman build 9>&- --pull=never --format docker --network=host --target build \
	-f docker/Dockerfile -t localhost/sparkrelay-ci-build:latest . >>"$WORK/build.log" 2>&1 ||
	fail "tagging the build stage"
podman image prune -f >/dev/null || true

# ---------------------------------------------------------------------------------
step "image properties (entrypoint, non-root, healthcheck, runtime-only)"
cfg=$(podman image inspect --format \
	'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} stop={{.Config.StopSignal}} health={{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}' \
	"$IMAGE")
echo "  $cfg"
case "$cfg" in *"user=10001:10001 "*) ;; *) fail "image user is not 10001:10001" ;; esac
case "$cfg" in *"entrypoint=[/usr/local/bin/sparkrelay]"*) ;; *) fail "entrypoint" ;; esac
case "$cfg" in *"health=[CMD /usr/local/bin/sparkrelay-healthcheck]"*) ;; *) fail "no HEALTHCHECK" ;; esac
podman run --rm "$IMAGE" version || fail "sparkrelay version"
podman run --rm --entrypoint /bin/sh "$IMAGE" -c \
	'for t in gcc cc cmake make pkg-config; do command -v $t && exit 1; done; exit 0' ||
	fail "the runtime image contains build tools"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "  runtime image: $((size / 1024 / 1024)) MiB, no compiler or build tools"
# The runtime packages docs/operations.md lists for the image's binary are the ones
# its NEEDED entries come from (same Debian release as the host), and the Dockerfile
# installs each.
cid=$(podman create "$IMAGE")
podman cp "$cid:/usr/local/bin/sparkrelay" "$WORK/image-sparkrelay" || fail "podman cp"
podman rm "$cid" >/dev/null
needed_pkgs=$(readelf -d "$WORK/image-sparkrelay" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' |
	grep -v '^libc\.so' | while read -r so; do
		dpkg -S "*/$so" 2>/dev/null | head -n 1 | cut -d: -f1
	done | sort -u)
[ -n "$needed_pkgs" ] || fail "cannot map the image binary's libraries to packages"
# shellcheck disable=SC2016 # the backquotes are Markdown's, matched literally
documented=$(sed -n 's/.*runtime libraries `\([^`]*\)`.*/\1/p' docs/operations.md | tr ' ' '\n' |
	sort -u)
[ "$needed_pkgs" = "$documented" ] ||
	fail "docs/operations.md lists runtime libraries \"$(tr '\n' ' ' <<<"$documented")\", the binary needs \"$(tr '\n' ' ' <<<"$needed_pkgs")\""
for pkg in $needed_pkgs; do
	grep -q "[[:space:]]${pkg}[[:space:]]" docker/Dockerfile || fail "the Dockerfile does not install $pkg"
done
echo "  runtime libraries (docs/operations.md, Dockerfile): $(tr '\n' ' ' <<<"$needed_pkgs")"

# ---------------------------------------------------------------------------------
step "certificates (sparkrelay gen-certs, in the image) and the ConfigMap's relay.json"
mkdir -p "$WORK/certs" "$WORK/out" "$WORK/out2" "$WORK/nolease"
chown 10001:10001 "$WORK/certs" "$WORK/out" "$WORK/out2" "$WORK/nolease"
podman run --rm --name "$P-gencerts" -v "$WORK/certs:/certs" "$IMAGE" \
	gen-certs /certs 127.0.0.1 localhost || fail "gen-certs"
for f in ca.pem relay.pem relay.key sidecar.pem sidecar.key; do
	[ -s "$WORK/certs/$f" ] || fail "gen-certs did not write $f"
done
BASE=$($PY docker/ci/image_test.py free-ports 14) || fail "no free ports"
LPORT=$BASE POOL_MIN=$((BASE + 1)) POOL_MAX=$((BASE + 11)) APORT=$((BASE + 12))
MPORT=$((BASE + 13))
ADMIN=http://127.0.0.1:$APORT
echo "  relay.listen 127.0.0.1:$LPORT, pool 127.0.0.2:$POOL_MIN-$POOL_MAX, admin $ADMIN"
# The deployed file as it is, at the DaemonSet's paths; the environment overrides
# what differs on loopback (and exercises SPARKRELAY_* overrides).
RELAY_ENV=(-e SPARKRELAY_RELAY_LISTEN=127.0.0.1:$LPORT
	-e SPARKRELAY_RELAY_POOL_BIND=127.0.0.2 -e SPARKRELAY_RELAY_POOL_ADVERTISE=127.0.0.2
	-e SPARKRELAY_RELAY_POOL_PORT_MIN=$POOL_MIN -e SPARKRELAY_RELAY_POOL_PORT_MAX=$POOL_MAX
	-e SPARKRELAY_RELAY_ADMIN_LISTEN=127.0.0.1:$APORT -e SPARKRELAY_RELAY_ADMIN_TOKEN=ci-token
	-e SPARKRELAY_RELAY_METRICS_LISTEN=127.0.0.1:$MPORT
	-e 'SPARKRELAY_RELAY_ROUTES=[{"name": "ci", "executor_cidrs": ["127.0.0.0/8"]}]'
	-e SPARKRELAY_RELAY_DRAIN_TIMEOUT_MS=30000)
RELAY_VOLS=(-v "$WORK/relay.json:/etc/sparkrelay/config/relay.json:ro"
	-v "$WORK/certs:/etc/sparkrelay/tls:ro")
podman run --rm --name "$P-check" "${RELAY_VOLS[@]}" "$IMAGE" \
	check-config /etc/sparkrelay/config/relay.json >/dev/null ||
	fail "check-config rejects the ConfigMap's relay.json"
echo "  check-config accepts the ConfigMap's relay.json"

# ---------------------------------------------------------------------------------
step "start the relay container (--network=host, ConfigMap config + env overrides)"
podman run -d --name "$P-relay" --network=host --health-interval=disable \
	"${RELAY_VOLS[@]}" "${RELAY_ENV[@]}" "$IMAGE" \
	relay --config /etc/sparkrelay/config/relay.json >/dev/null || fail "podman run relay"
wait_log "$P-relay" "listening for sidecars on 127.0.0.1:$LPORT" 20
[ "$(podman exec "$P-relay" cat /proc/1/comm)" = sparkrelay ] ||
	fail "PID 1 of the relay container is not sparkrelay"
[ "$(podman exec "$P-relay" id -u)" = 10001 ] || fail "the relay does not run as 10001"
echo "  PID 1 is sparkrelay, uid 10001"
podman exec "$P-relay" sparkrelay ctl --admin "$ADMIN" health >/dev/null ||
	fail "sparkrelay ctl health (the liveness probe) fails"
podman exec "$P-relay" sparkrelay ctl --admin "$ADMIN" ready >/dev/null ||
	fail "sparkrelay ctl ready (the readiness probe) fails"
echo "  admin API: ctl health and ctl ready (the DaemonSet's probes) answer 0"
podman healthcheck run "$P-relay" >/dev/null || fail "relay health check is not healthy"
echo "  health check (Dockerfile HEALTHCHECK, via the admin API): healthy"

# ---------------------------------------------------------------------------------
step "start the sidecar container (environment only) and wait for its lease"
SIDECAR_ENV=(-e SPARKRELAY_TUNNEL_RELAYS=127.0.0.1:$LPORT
	-e SPARKRELAY_TUNNEL_ALLOWED_PORTS=$POOL_MIN-$POOL_MAX
	-e SPARKRELAY_TUNNEL_TLS_CA=/certs/ca.pem -e SPARKRELAY_TUNNEL_APP=image-test
	-e SPARKRELAY_TUNNEL_SPARK_JSON=/out/spark.json
	-e SPARKRELAY_TUNNEL_SPARK_CONF=/out/spark-defaults.conf
	-e SPARKRELAY_TUNNEL_STATE_FILE=/out/state.json)
podman run -d --name "$P-sidecar" --network=host --health-interval=disable \
	-v "$WORK/certs:/certs:ro" -v "$WORK/out:/out" "${SIDECAR_ENV[@]}" "$IMAGE" tunnel \
	>/dev/null || fail "podman run sidecar"
$PY docker/ci/image_test.py wait-file "$WORK/out/spark.json" 30 || fail "no lease"
read -r D1 D2 < <($PY docker/ci/image_test.py lease-ports "$WORK/out/spark.json")
echo "  lease: driver port $D1, blockManager port $D2"
grep -q "^spark.driver.port $D1\$" "$WORK/out/spark-defaults.conf" ||
	fail "spark-defaults.conf does not carry the lease"
podman healthcheck run "$P-sidecar" >/dev/null || fail "sidecar health check is not healthy"
echo "  health check: healthy"
# The health check must be able to fail: a sidecar that never gets a lease.
podman run -d --name "$P-nolease" --network=host --health-interval=disable \
	-v "$WORK/certs:/certs:ro" -v "$WORK/nolease:/out" \
	-e SPARKRELAY_TUNNEL_RELAYS=127.0.0.1:1 -e SPARKRELAY_TUNNEL_TLS_CA=/certs/ca.pem \
	-e SPARKRELAY_TUNNEL_SPARK_JSON=/out/spark.json "$IMAGE" tunnel >/dev/null ||
	fail "podman run of the lease-less sidecar"
wait_log "$P-nolease" "reconnecting" 20
if podman healthcheck run "$P-nolease" >/dev/null 2>&1; then
	fail "health check says healthy for a sidecar without a lease"
fi
echo "  health check: a sidecar without a relay is unhealthy"
stop_graceful "$P-nolease"

# ---------------------------------------------------------------------------------
step "executor/driver exchange through relay and sidecar containers"
$PY docker/ci/image_test.py driver "$WORK/out/spark.json" >"$WORK/driver.log" 2>&1 &
BG_PIDS+=($!)
DRIVER_PID=$!
sleep 0.3
$PY docker/ci/image_test.py exchange "$WORK/out/spark.json" 127.0.0.2 4 ||
	fail "bytes did not echo exactly"
kill "$DRIVER_PID"
wait "$DRIVER_PID" 2>/dev/null || true
# ctl in the container finds the token where the relay does (SPARKRELAY_RELAY_ADMIN_TOKEN,
# as in the DaemonSet); emptied, or wrong, the relay refuses and ctl names the source.
if podman exec -e SPARKRELAY_RELAY_ADMIN_TOKEN= "$P-relay" \
	sparkrelay ctl --admin "$ADMIN" metrics >/dev/null 2>&1; then
	fail "/metrics answered without the admin token"
fi
out=$(podman exec -e SPARKRELAY_RELAY_ADMIN_TOKEN=wrong "$P-relay" \
	sparkrelay ctl --admin "$ADMIN" metrics 2>&1) && fail "/metrics answered a wrong token"
case "$out" in *"from SPARKRELAY_RELAY_ADMIN_TOKEN"*) ;; *) fail "ctl's 401 does not name its token source: $out" ;; esac
podman exec "$P-relay" sparkrelay ctl --admin "$ADMIN" metrics >"$WORK/metrics.txt" ||
	fail "ctl metrics with the relay's own SPARKRELAY_RELAY_ADMIN_TOKEN"
for m in sparkrelay_tunnels_active sparkrelay_leases_active sparkrelay_streams_active \
	sparkrelay_handshake_failures_total sparkrelay_reloads_total; do
	grep -q "^$m" "$WORK/metrics.txt" || fail "metric $m missing"
done
grep -qE '^sparkrelay_(executor_)?refused_total\{reason=' "$WORK/metrics.txt" ||
	fail "metric sparkrelay_(executor_)refused_total{reason} missing"
grep -q '^sparkrelay_leases_active 1$' "$WORK/metrics.txt" ||
	fail "sparkrelay_leases_active is not 1: $(grep leases_active "$WORK/metrics.txt")"
echo "  metrics (token required, ctl reads the relay's variable): tunnels, leases (1 active), streams, refusals, handshake failures, reloads"
# The read-only metrics listener (relay.metrics.listen): the same, without a token.
$PY - "$MPORT" <<'PYEOF' || fail "the metrics listener (no token) does not serve /metrics"
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
text = opener.open("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode()
assert "\nsparkrelay_leases_active 1\n" in text, text[:500]
assert 'sparkrelay_pool_ports{pool="default"} 11' in text, text[:500]
PYEOF
echo "  metrics listener: /metrics without a token, pool capacity"

# ---------------------------------------------------------------------------------
step "notebook start-up script (the dist binary, settings merged)"
mkdir -p "$WORK/nbhome/spark-conf"
printf 'spark.executor.memory 4g\nspark.driver.port=1234\n' \
	>"$WORK/nbhome/spark-conf/spark-defaults.conf"
NB_ENV=(HOME="$WORK/nbhome" SPARK_CONF_DIR="$WORK/nbhome/spark-conf"
	SPARKRELAY_BIN="$WORK/bin/sparkrelay" SPARKRELAY_WAIT_S=30
	SPARKRELAY_TUNNEL_RELAYS=127.0.0.1:$LPORT SPARKRELAY_TUNNEL_ALLOWED_PORTS=$POOL_MIN-$POOL_MAX
	SPARKRELAY_TUNNEL_TLS_CA="$WORK/certs/ca.pem" SPARKRELAY_TUNNEL_APP=notebook-test)
env "${NB_ENV[@]}" docker/notebook/start-sparkrelay.sh start 9>&- || fail "start-sparkrelay.sh start"
NB_JSON=$WORK/nbhome/.sparkrelay/spark.json
read -r N1 _ < <($PY docker/ci/image_test.py lease-ports "$NB_JSON")
conf=$WORK/nbhome/spark-conf/spark-defaults.conf
grep -q '^spark.executor.memory 4g$' "$conf" || fail "merge dropped an unrelated setting"
[ "$(grep -c '^spark.driver.port' "$conf")" = 1 ] && grep -q "^spark.driver.port $N1\$" "$conf" ||
	fail "merge did not replace spark.driver.port with the lease's $N1"
for k in spark.driver.host spark.driver.bindAddress spark.driver.blockManager.port \
	spark.port.maxRetries spark.kubernetes.executor.useDriverPodIP; do
	grep -q "^$k " "$conf" || fail "merged spark-defaults.conf lacks $k"
done
grep -q "SPARK_CONF_DIR" "$WORK/nbhome/.ipython/profile_default/startup/00-sparkrelay.py" ||
	fail "no IPython start-up file"
st=$(env "${NB_ENV[@]}" docker/notebook/start-sparkrelay.sh status) ||
	fail "start-sparkrelay.sh status exits non-zero with a lease: $st"
case "$st" in *"driver port $N1,"*) ;; *) fail "status does not show the lease: $st" ;; esac
echo "  spark-defaults.conf has the lease (port $N1, other settings kept), IPython hook written"
echo "  status: $st"
$PY docker/ci/image_test.py driver "$NB_JSON" >"$WORK/driver-nb.log" 2>&1 &
BG_PIDS+=($!)
DRIVER_PID=$!
sleep 0.3
$PY docker/ci/image_test.py exchange "$NB_JSON" 127.0.0.2 2 || fail "exchange via the notebook sidecar"
kill "$DRIVER_PID"
wait "$DRIVER_PID" 2>/dev/null || true
env "${NB_ENV[@]}" docker/notebook/start-sparkrelay.sh stop || fail "start-sparkrelay.sh stop"
grep -q "lease released" "$WORK/nbhome/.sparkrelay/sparkrelay.log" ||
	fail "the notebook sidecar did not release its lease"
! grep -q '^# sparkrelay begin' "$conf" || fail "stop left the lease's block in $conf"
grep -q '^spark.executor.memory 4g$' "$conf" || fail "stop dropped an unrelated setting"
[ ! -e "$NB_JSON" ] || fail "stop left $NB_JSON"
rc=0
env "${NB_ENV[@]}" docker/notebook/start-sparkrelay.sh status >/dev/null || rc=$?
[ "$rc" = 1 ] || fail "status after stop exits $rc (want 1: no sidecar)"
echo "  stopped; the sidecar released its lease and removed its settings; status exits 1"

# ---------------------------------------------------------------------------------
step "notebook start-up script in a root-owned image: read-only \$SPARK_HOME/conf, --detach"
# As a notebook user would run it (uid 65534, not root: root writes anywhere), with
# Spark installed by root: \$SPARK_HOME/conf is not writable. The script and binary
# are copied where that user can read them.
NB2=$WORK/nb2
mkdir -p "$NB2/home" "$NB2/spark/conf"
cp docker/notebook/start-sparkrelay.sh "$WORK/bin/start-sparkrelay.sh"
chmod 0755 "$WORK/bin/start-sparkrelay.sh"
printf 'spark.executor.memory 2g\n' >"$NB2/spark/conf/spark-defaults.conf"
echo 'rootLogger.level = warn' >"$NB2/spark/conf/log4j2.properties"
chmod -R a+rX,go-w "$NB2/spark"
chown 65534:65534 "$NB2/home"
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@" 9>&-; }
NB2_ENV=(HOME="$NB2/home" SPARK_HOME="$NB2/spark" SPARKRELAY_BIN="$WORK/bin/sparkrelay"
	SPARKRELAY_WAIT_S=30 SPARKRELAY_TUNNEL_RELAYS="127.0.0.1:$LPORT"
	SPARKRELAY_TUNNEL_ALLOWED_PORTS=$POOL_MIN-$POOL_MAX
	SPARKRELAY_TUNNEL_TLS_CA="$WORK/certs/ca.pem" SPARKRELAY_TUNNEL_APP=notebook-ro)
as_user env "${NB2_ENV[@]}" "$WORK/bin/start-sparkrelay.sh" start >"$WORK/nb2.out" 2>&1 ||
	{ cat "$WORK/nb2.out" >&2; fail "start with a read-only \$SPARK_HOME/conf"; }
if grep -qiE 'permission denied|^touch:|^mktemp:' "$WORK/nb2.out"; then
	cat "$WORK/nb2.out" >&2
	fail "raw errors from a read-only \$SPARK_HOME/conf"
fi
grep -q "is not writable: the Spark settings go to $NB2/home/.sparkrelay/spark-conf" \
	"$WORK/nb2.out" || fail "no word of the fallback folder: $(cat "$WORK/nb2.out")"
conf2=$NB2/home/.sparkrelay/spark-conf/spark-defaults.conf
grep -q '^spark.executor.memory 2g$' "$conf2" ||
	fail "the fallback lost the image's spark-defaults.conf settings"
grep -q '^spark.driver.port [0-9]' "$conf2" || fail "the fallback has no lease settings"
[ "$(readlink "$NB2/home/.sparkrelay/spark-conf/log4j2.properties")" = \
	"$NB2/spark/conf/log4j2.properties" ] || fail "the fallback does not link the image's other conf files"
[ "$(cat "$NB2/spark/conf/spark-defaults.conf")" = "spark.executor.memory 2g" ] ||
	fail "the read-only spark-defaults.conf changed"
grep -qF "os.environ[\"SPARK_CONF_DIR\"] = \"$NB2/home/.sparkrelay/spark-conf\"" \
	"$NB2/home/.ipython/profile_default/startup/00-sparkrelay.py" ||
	fail "the IPython hook does not point kernels at the fallback folder"
as_user env "${NB2_ENV[@]}" "$WORK/bin/start-sparkrelay.sh" stop >/dev/null 2>&1 ||
	fail "stop after the fallback"
echo "  read-only \$SPARK_HOME/conf: exit 0, settings in ~/.sparkrelay/spark-conf (image settings kept, other files linked), hook points there"
# A lifecycle hook: --detach returns at once with 0, even with the relay down.
rm -rf "$NB2/home/.sparkrelay" "$NB2/home/.ipython"
t0=$SECONDS
as_user env "${NB2_ENV[@]}" SPARKRELAY_TUNNEL_RELAYS=127.0.0.1:1 \
	"$WORK/bin/start-sparkrelay.sh" start --detach >"$WORK/nb2-detach.out" 2>&1 ||
	{ cat "$WORK/nb2-detach.out" >&2; fail "start --detach with the relay down exits non-zero"; }
[ $((SECONDS - t0)) -le 5 ] || fail "start --detach took $((SECONDS - t0)) s (must return at once)"
deadline=$((SECONDS + 10))
until grep -q "reconnecting" "$NB2/home/.sparkrelay/sparkrelay.log" 2>/dev/null; do
	[ "$SECONDS" -lt "$deadline" ] || fail "the detached start-up did not start the sidecar"
	sleep 0.2
done
rc=0
st=$(as_user env "${NB2_ENV[@]}" "$WORK/bin/start-sparkrelay.sh" status) || rc=$?
[ "$rc" = 4 ] && [ "${st#*relay unreachable}" != "$st" ] ||
	fail "status with the relay down: exit $rc, \"$st\" (want 4, relay unreachable)"
as_user env "${NB2_ENV[@]}" "$WORK/bin/start-sparkrelay.sh" stop >/dev/null 2>&1 ||
	fail "stop after --detach"
echo "  start --detach with the relay down: exit 0 at once, the sidecar keeps trying;" \
	"status says relay unreachable (exit 4)"
rm -rf "$NB2/home/.sparkrelay" "$NB2/home/.ipython"
as_user env "${NB2_ENV[@]}" "$WORK/bin/start-sparkrelay.sh" start --detach >/dev/null 2>&1 ||
	fail "start --detach exits non-zero"
deadline=$((SECONDS + 30))
until grep -q "kept current by the sidecar" "$NB2/home/.sparkrelay/start.log" 2>/dev/null; do
	[ "$SECONDS" -lt "$deadline" ] || fail "the detached start-up did not merge the lease"
	sleep 0.2
done
grep -q '^spark.driver.port [0-9]' "$conf2" || fail "--detach merged no lease settings"
as_user env "${NB2_ENV[@]}" "$WORK/bin/start-sparkrelay.sh" stop >/dev/null 2>&1 ||
	fail "stop after --detach"
echo "  start --detach with the relay up: returns, then merges the lease in the background"

# ---------------------------------------------------------------------------------
step "SIGTERM the sidecar (podman stop): releases its lease, exits 0"
stop_graceful "$P-sidecar"
expect_log "$P-sidecar" "shutting down: releasing lease"
expect_log "$P-sidecar" "lease released"
wait_log "$P-relay" "lease released by the sidecar" 10
echo "  relay log has: lease released by the sidecar"

# ---------------------------------------------------------------------------------
step "SIGTERM the relay (podman stop) with an executor connection open: drain, exit 0"
podman run -d --name "$P-sidecar2" --network=host --health-interval=disable \
	-v "$WORK/certs:/certs:ro" -v "$WORK/out2:/out" "${SIDECAR_ENV[@]}" "$IMAGE" tunnel \
	>/dev/null || fail "podman run sidecar2"
$PY docker/ci/image_test.py wait-file "$WORK/out2/spark.json" 30 || fail "no second lease"
$PY docker/ci/image_test.py driver "$WORK/out2/spark.json" >"$WORK/driver2.log" 2>&1 &
BG_PIDS+=($!)
sleep 0.3
$PY docker/ci/image_test.py hold "$WORK/out2/spark.json" 127.0.0.2 \
	"$WORK/hold.ready" "$WORK/hold.go" 60 &
HOLD_PID=$!
BG_PIDS+=($HOLD_PID)
deadline=$((SECONDS + 20))
until [ -e "$WORK/hold.ready" ]; do
	kill -0 "$HOLD_PID" 2>/dev/null || fail "the held connection failed"
	[ "$SECONDS" -lt "$deadline" ] || fail "the held connection did not start"
	sleep 0.1
done
timeout 90 podman stop -t 60 "$P-relay" 9>&- >/dev/null 2>&1 &
STOP_PID=$!
BG_PIDS+=($STOP_PID)
wait_log "$P-relay" "draining:" 20
sleep 1
# "stopping" while podman stop waits; the process itself must still be there.
rpid=$(podman inspect --format '{{.State.Pid}}' "$P-relay")
[ "${rpid:-0}" -gt 0 ] && kill -0 "$rpid" 2>/dev/null ||
	fail "the relay exited with a stream still open"
podman logs "$P-relay" 2>&1 | grep -qF "drained:" && fail "the relay drained with a stream open"
echo "  relay is draining and waits for the open stream"
# podman cannot exec into a container it is stopping: ask from the host (same network)
# with the self-contained binary (./dev dist, above).
out=$("$WORK/bin/sparkrelay" ctl --admin "$ADMIN" ready 2>&1) &&
	fail "ctl ready (readiness) still succeeds while the relay drains: $out"
case "$out" in *draining*) ;; *) fail "ctl ready while draining: expected \"draining\", got: $out" ;; esac
"$WORK/bin/sparkrelay" ctl --admin "$ADMIN" health >/dev/null ||
	fail "ctl health (liveness) fails while the relay drains"
echo "  while draining: readiness fails (NotReady), liveness still passes"
touch "$WORK/hold.go"
wait "$HOLD_PID" || fail "the open connection broke during the drain"
wait "$STOP_PID" || fail "podman stop of the relay failed"
rc=$(podman inspect --format '{{.State.ExitCode}}' "$P-relay")
[ "$rc" = 0 ] || fail "the relay exited $rc after SIGTERM (want 0)"
echo "  $P-relay: SIGTERM -> exit code 0"
expect_log "$P-relay" "signal 15: shutting down gracefully"
expect_log "$P-relay" "draining: no new tunnels"
expect_log "$P-relay" "drained: no open streams; exiting"
podman logs "$P-relay" 2>&1 | grep -q "drain timeout" && fail "the drain timed out"
expect_log "$P-sidecar2" "relay is draining"
stop_graceful "$P-sidecar2"
expect_log "$P-sidecar2" "stopped"

step "done"
echo "image-test: all steps passed in $((SECONDS - T0)) s:"
printf '  %s\n' "${TIMES[@]}"
