"""Admin API, metrics and `sparkrelay ctl` against a live relay and sidecar.

The relay's admin listener (relay.admin.listen, with relay.admin.token) and
the sidecar's status listener (tunnel.admin.listen) run on loopback ports
picked per test. Every check compares what the API says with what the test
did or can observe on its own: the lease in the sidecar's spark_json, bytes
it pushed through the tunnel, ports that stop accepting, a relay that exits.
"""

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import harness as H
import harness_extra as X
from harness import KiB, h_echo

TOKEN = "it-admin-" + os.urandom(8).hex()
HTTP_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# HTTP and the Prometheus text format.

def http(method, url, token=None, body=None, timeout=HTTP_TIMEOUT):
    """(status, headers, text). Never raises for an HTTP status."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    # No proxy: the admin API is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Parse the text exposition format 0.0.4 strictly enough to catch
    mistakes: every sample belongs to a family announced by HELP and TYPE
    before it, counters end in _total, histogram buckets are cumulative and
    +Inf equals _count. Returns {(name, ((label, value), ...)): float}."""
    families = {}  # name -> type
    helped = set()
    out = {}
    hist = {}  # family -> list of (le, value), count
    for ln, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split()
            assert typ in ("counter", "gauge", "histogram"), "line %d: type %s" % (ln, typ)
            assert name not in families, "line %d: family %s announced twice" % (ln, name)
            assert name in helped, "line %d: TYPE without HELP for %s" % (ln, name)
            families[name] = typ
            continue
        assert not line.startswith("#"), "line %d: stray comment %r" % (ln, line)
        m = SAMPLE_RE.match(line)
        assert m, "line %d: not a sample: %r" % (ln, line)
        name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
        lab = tuple(LABEL_RE.findall(labels))
        fam = name
        for suf in ("_bucket", "_sum", "_count"):
            if name.endswith(suf) and name[:-len(suf)] in families and \
                    families[name[:-len(suf)]] == "histogram":
                fam = name[:-len(suf)]
        assert fam in families, "line %d: sample %s before its TYPE" % (ln, name)
        if families[fam] == "counter":
            assert name.endswith("_total"), "line %d: counter %s without _total" % (ln, name)
        if families[fam] == "histogram":
            h = hist.setdefault(fam, {"buckets": [], "count": None})
            if name.endswith("_bucket"):
                le = dict(lab)["le"]
                h["buckets"].append((float("inf") if le == "+Inf" else float(le), value))
            elif name.endswith("_count"):
                h["count"] = value
        key = (name, lab)
        assert key not in out, "line %d: duplicate sample %s%s" % (ln, name, labels)
        out[key] = value
    for fam, h in hist.items():
        les = [b[0] for b in h["buckets"]]
        vals = [b[1] for b in h["buckets"]]
        assert les == sorted(les) and les[-1] == float("inf"), "%s: bucket bounds %r" % (fam, les)
        assert vals == sorted(vals), "%s: buckets not cumulative %r" % (fam, vals)
        assert h["count"] == vals[-1], "%s: +Inf %s != _count %s" % (fam, vals[-1], h["count"])
    return out


def metric(samples, name, **labels):
    want = tuple(sorted(labels.items()))
    for (n, lab), v in samples.items():
        if n == name and tuple(sorted(lab)) == want:
            return v
    raise AssertionError("no sample %s%r in the metrics" % (name, labels))


# --------------------------------------------------------------------------
# Base case: relay with an admin listener, sidecar with a status listener.

class AdminCase(X.XCase):
    admin_token = TOKEN
    extra_relay = None
    extra_tunnel = None

    def setUp(self):
        self.admin_port = H.free_port()
        self.status_port = H.free_port()
        admin = {"listen": "127.0.0.1:%d" % self.admin_port}
        if self.admin_token:
            admin["token"] = self.admin_token
        self.relay_overrides = H.deep_merge({"relay": {"admin": admin}},
                                            self.extra_relay)
        self.tunnel_overrides = H.deep_merge(
            {"tunnel": {"admin": {"listen": "127.0.0.1:%d" % self.status_port}}},
            self.extra_tunnel)
        self.url = "http://127.0.0.1:%d" % self.admin_port
        self.status_url = "http://127.0.0.1:%d" % self.status_port
        super().setUp()

    def prepare(self):
        ok = X.wait_for(lambda: self._get_quiet("/healthz") == 200, 10)
        self.assertTrue(ok, "admin API on %s did not answer /healthz within 10 s" % self.url)

    def _get_quiet(self, path):
        try:
            return http("GET", self.url + path, timeout=1)[0]
        except OSError:
            return None

    def api(self, method, path, body=None, token=True):
        return http(method, self.url + path, self.admin_token if token is True else token,
                    body)

    def api_json(self, method, path, body=None):
        code, _, text = self.api(method, path, body)
        self.assertEqual(code, 200, "%s %s: %d %s" % (method, path, code, text))
        return json.loads(text)

    def metrics(self):
        code, hdr, text = self.api("GET", "/metrics")
        self.assertEqual(code, 200, "GET /metrics: %d %s" % (code, text))
        self.assertTrue(hdr.get("Content-Type", "").startswith("text/plain; version=0.0.4"),
                        "metrics Content-Type %r" % hdr.get("Content-Type"))
        try:
            return parse_metrics(text)
        except AssertionError as e:
            self.fail("malformed /metrics: %s\n%s" % (e, text[:2000]))

    def ctl(self, *args, token=True, url=None, timeout=30, env_extra=None):
        """Run `sparkrelay ctl`; returns (rc, stdout, stderr)."""
        env = dict(os.environ, **(env_extra or {}))
        env.pop("SPARKRELAY_ADMIN_TOKEN", None)
        env.pop("SPARKRELAY_ADMIN_URL", None)
        if token is True and self.admin_token:
            env["SPARKRELAY_ADMIN_TOKEN"] = self.admin_token
        elif isinstance(token, str):
            env["SPARKRELAY_ADMIN_TOKEN"] = token
        env["SPARKRELAY_ADMIN_URL"] = url or self.url
        r = subprocess.run([H.BIN, "ctl"] + list(args), env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        for marker in H.SANITIZER_MARKERS:
            self.assertNotIn(marker, r.stderr, "ctl %s: sanitizer report:\n%s" %
                             (" ".join(args), r.stderr))
        return r.returncode, r.stdout, r.stderr

    def status(self):
        code, _, text = http("GET", self.status_url + "/status")
        self.assertEqual(code, 200, "sidecar /status: %d %s" % (code, text))
        return json.loads(text)

    def lease_ports(self):
        return {k: int(v) for k, v in self.stack.lease["ports"].items()}


# --------------------------------------------------------------------------

class ProbesAndAuthTest(AdminCase):

    def test_healthz_and_readyz_need_no_token(self):
        code, _, text = self.api("GET", "/healthz", token=None)
        self.assertEqual((code, text.strip()), (200, "ok"))
        code, _, text = self.api("GET", "/readyz", token=None)
        self.assertEqual(code, 200, "readyz on a running relay: %d %s" % (code, text))

    def test_every_other_endpoint_requires_the_token(self):
        lease = self.stack.lease["lease"]
        cases = [("GET", "/metrics", None), ("GET", "/v1/sessions", None),
                 ("GET", "/v1/leases", None), ("GET", "/v1/config", None),
                 ("POST", "/v1/reload", None), ("POST", "/v1/drain", None),
                 ("DELETE", "/v1/leases/" + lease, None),
                 ("POST", "/v1/route/explain", {"app": "x"})]
        for bad in (None, "wrong-" + TOKEN, TOKEN + "x", TOKEN[:-1], ""):
            for method, path, body in cases:
                code, hdr, text = self.api(method, path, body, token=bad)
                self.assertEqual(code, 401, "%s %s with token %r: %d %s" %
                                 (method, path, bad, code, text))
                self.assertIn("Bearer", hdr.get("WWW-Authenticate", ""))
        # None of those refused requests may have acted.
        self.assertEqual(self.api("GET", "/readyz", token=None)[0], 200,
                         "an unauthenticated drain took effect")
        leases = self.api_json("GET", "/v1/leases")
        self.assertEqual([l["id"] for l in leases], [lease],
                         "an unauthenticated revoke took effect")
        # "reset": accepted, then reset as no driver listens (still a listener).
        for port in self.lease_ports().values():
            self.assertIn(X.connect_result(self.stack.exec_host, port), ("accepted", "reset"))

    def test_unknown_paths_404_and_wrong_methods_405(self):
        code, _, _ = self.api("GET", "/v1/nope")
        self.assertEqual(code, 404)
        code, _, _ = self.api("DELETE", "/v1/leases/L-0-doesnotexist")
        self.assertEqual(code, 404)
        for method, path, allow in (("POST", "/v1/leases", "GET"), ("GET", "/v1/drain", "POST"),
                                    ("PUT", "/metrics", "GET"),
                                    ("GET", "/v1/route/explain", "POST")):
            code, hdr, text = self.api(method, path)
            self.assertEqual(code, 405, "%s %s: %d %s" % (method, path, code, text))
            self.assertIn(allow, hdr.get("Allow", ""), "%s %s: Allow %r" %
                          (method, path, hdr.get("Allow")))

    def test_oversized_requests_are_refused_and_the_relay_keeps_serving(self):
        # A body over the cap, then headers over the cap: each gets an error
        # status or a closed connection, never a hang, and the API still works.
        for payload in (
                b"POST /v1/route/explain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                TOKEN.encode() + b"\r\nContent-Length: 200000\r\n\r\n" + b"{" * 200000,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", self.admin_port), timeout=10)
            try:
                try:
                    s.sendall(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                try:
                    head = s.recv(64)
                except (ConnectionResetError, socket.timeout):
                    head = b""
            finally:
                s.close()
            self.assertFalse(head.startswith(b"HTTP/1.1 2"), "oversized request got %r" % head)
        self.assertEqual(self.api("GET", "/healthz", token=None)[0], 200)
        self.assertEqual(self.api("GET", "/v1/leases")[0], 200)

    def test_sidecar_readyz_follows_its_lease_and_tunnel(self):
        # The sidecar's readiness probe: ready only with a lease and its
        # tunnel up; while the tunnel is re-dialled the lease is kept and
        # the probe says why it is not ready; before any lease, likewise.
        self.assertEqual(self._readyz(self.status_url), (200, "ready"))
        relay = self.stack.relay
        relay.kill()
        relay.p.wait(10)
        self.retire(relay)
        self.assertTrue(X.wait_for(lambda: self._readyz(self.status_url) ==
                                   (503, "not ready: tunnel down"), 5),
                        self._readyz(self.status_url))
        other = H.free_port()
        sc = self.sidecar("sc-no-relay", {"tunnel": {"admin": {
            "listen": "127.0.0.1:%d" % other}}}).start()
        url = "http://127.0.0.1:%d" % other
        self.assertTrue(X.wait_for(lambda: self._readyz(url) == (503, "not ready: no lease"),
                                   10), self._readyz(url))
        self.assertTrue(sc.proc.alive())

    def _readyz(self, base):
        try:
            code, _, text = http("GET", base + "/readyz", timeout=2)
        except OSError as e:
            return (None, str(e))
        return (code, text.strip())


class MetricsTest(AdminCase):
    extra_relay = {"relay": {"lease": {"pending_timeout_ms": 1000}}}

    def prepare(self):
        super().prepare()
        self.drv = self.stack.start_driver(default=h_echo)

    def test_counters_move_when_traffic_flows(self):
        before = self.metrics()
        self.assertEqual(metric(before, "sparkrelay_tunnels_active"), 1)
        self.assertEqual(metric(before, "sparkrelay_leases_active"), 1)
        self.assertEqual(metric(before, "sparkrelay_draining"), 0)
        n, size = 3, 64 * KiB
        for i in range(n):
            self.assertIsNone(X.echo_once(self.stack.exec_host, self.lease_ports()["driver"],
                                          seed=i + 1, size=size))
        # Byte counters are bumped as the data moves; the last exchange is
        # complete at the executor, so allow the relay a moment to account.
        after = X.wait_for(lambda: (lambda m: m if metric(
            m, "sparkrelay_bytes_total", direction="to_executor") -
            metric(before, "sparkrelay_bytes_total", direction="to_executor") >= n * size
            else None)(self.metrics()), 5)
        self.assertTrue(after, "to_executor bytes did not grow by %d" % (n * size))
        for direction in ("to_driver", "to_executor"):
            d = metric(after, "sparkrelay_bytes_total", direction=direction) - \
                metric(before, "sparkrelay_bytes_total", direction=direction)
            self.assertEqual(d, n * size, "bytes %s grew by %d, want exactly %d" %
                             (direction, d, n * size))
        for name in ("sparkrelay_streams_opened_total", "sparkrelay_executor_connections_total"):
            self.assertEqual(metric(after, name) - metric(before, name), n, name)
        self.assertEqual(metric(after, "sparkrelay_tunnels_accepted_total"), 1)
        self.assertEqual(metric(after, "sparkrelay_leases_granted_total"), 1)
        # Sessions agree with the metrics.
        sess = self.api_json("GET", "/v1/sessions")
        self.assertEqual(len(sess), 1, sess)
        self.assertGreaterEqual(sess[0]["bytes_to_driver"], n * size)
        self.assertGreaterEqual(sess[0]["bytes_to_executor"], n * size)
        self.assertGreaterEqual(sess[0]["streams_opened"], n)

    def test_a_pending_timeout_is_counted(self):
        before = self.metrics()
        reason = "pending_timeout"
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1),
                        "relay did not notice the killed sidecar")
        s = H.connect(self.stack.exec_host, self.lease_ports()["driver"], timeout=10)
        self.stack.execs.append(s)
        end, took, _ = X.closed_within(s, 10)
        self.assertIn(end, ("eof", "reset"), "waiting executor was not closed: %s" % end)
        after = X.wait_for(lambda: (lambda m: m if metric(m, "sparkrelay_refused_total",
                                                          reason=reason) >
                                    metric(before, "sparkrelay_refused_total", reason=reason)
                                    else None)(self.metrics()), 5)
        self.assertTrue(after, "refused_total{reason=%s} did not grow" % reason)
        self.assertEqual(metric(after, "sparkrelay_refused_total", reason=reason) -
                         metric(before, "sparkrelay_refused_total", reason=reason), 1)
        self.assertEqual(metric(after, "sparkrelay_tunnels_active"), 0)
        leases = self.api_json("GET", "/v1/leases")
        self.assertEqual(len(leases), 1)
        self.assertFalse(leases[0]["attached"], "lease still attached with its tunnel gone")


class LeasesTest(AdminCase):
    # Slow reconnects, so that a revoked lease's ports can be seen closed
    # before the sidecar registers again.
    extra_tunnel = {"tunnel": {"backoff_initial_ms": 8000, "backoff_max_ms": 8000}}

    def test_sessions_leases_and_status_match_the_sidecar(self):
        mine = self.stack.lease
        ports = self.lease_ports()
        leases = self.api_json("GET", "/v1/leases")
        self.assertEqual(len(leases), 1, leases)
        l = leases[0]
        self.assertEqual(l["id"], mine["lease"])
        self.assertEqual(l["host"], mine["host"])
        self.assertEqual({k: int(v) for k, v in l["ports"].items()}, ports)
        self.assertIs(l["attached"], True)
        self.assertEqual(l["app"], self.stack.tunnel_cfg["tunnel"]["app"])
        sess = self.api_json("GET", "/v1/sessions")
        self.assertEqual(len(sess), 1, sess)
        self.assertEqual(sess[0]["lease"], mine["lease"])
        self.assertEqual(sess[0]["peer"], l["peer"])
        self.assertTrue(sess[0]["peer"].startswith("127.0.0.1:"), sess[0]["peer"])
        st = self.status()
        self.assertEqual(st["lease"], mine["lease"])
        self.assertEqual(st["host"], mine["host"])
        self.assertEqual({k: int(v) for k, v in st["ports"].items()}, ports)
        self.assertIs(st["connected"], True)
        self.assertEqual(st["relay"], "127.0.0.1:%d" % self.relay_port())
        self.assertEqual(st["reconnects"], 0)
        # The token itself (the sidecar's state file has it) and no field for it.
        with open(self.stack.tunnel_cfg["tunnel"]["state_file"]) as f:
            token = json.load(f)["resume"]
        self.assertTrue(token)
        self.assertNotIn(token, json.dumps(st), "status leaks the resume token")
        self.assertFalse([k for k in st if "token" in k or k == "resume"], st)
        code, _, text = http("GET", self.status_url + "/healthz")
        self.assertEqual((code, text.strip()), (200, "ok"))
        self.assertEqual(http("POST", self.status_url + "/status")[0], 405)
        self.assertEqual(http("GET", self.status_url + "/nope")[0], 404)

    def test_revoke_closes_the_lease_ports(self):
        lease = self.stack.lease["lease"]
        ports = self.lease_ports()
        self.stack.start_driver(default=h_echo)
        for p in ports.values():
            self.assertIsNone(X.echo_once(self.stack.exec_host, p))
        code, _, text = self.api("DELETE", "/v1/leases/" + lease)
        self.assertEqual(code, 200, text)
        self.assertEqual(json.loads(text).get("lease"), lease)
        closed = X.wait_for(lambda: all(X.connect_result(self.stack.exec_host, p) == "refused"
                                        for p in ports.values()), 3)
        self.assertTrue(closed, "ports %r still accept after the revoke" % ports)
        self.assertNotIn(lease, [l["id"] for l in self.api_json("GET", "/v1/leases")])
        self.assertEqual(self.api("DELETE", "/v1/leases/" + lease)[0], 404)
        st = X.wait_for(lambda: (lambda s: s if not s["connected"] else None)(self.status()), 5)
        self.assertTrue(st, "sidecar /status still says connected after the revoke")


class DrainTest(AdminCase):
    extra_relay = {"relay": {"drain_timeout_ms": 20000}}

    def test_drain_makes_readyz_503_and_the_relay_exit(self):
        self.stack.start_driver(default=h_echo)
        e = X.Echoer(self.stack.exec_host, self.lease_ports()["driver"])
        self.addCleanup(e.close)
        self.assertIsNone(e.check())
        rc, out, err = self.ctl("drain")
        self.assertEqual(rc, 0, "ctl drain: %s %s" % (out, err))
        code, _, text = self.api("GET", "/readyz", token=None)
        self.assertEqual(code, 503, "readyz while draining: %d %s" % (code, text))
        self.assertIn("draining", text)
        self.assertEqual(metric(self.metrics(), "sparkrelay_draining"), 1)
        rc, out, _ = self.ctl("ready")
        self.assertEqual(rc, 1, "ctl ready while draining: %s" % out)
        # The open stream keeps the relay up and working until it ends.
        self.assertIsNone(e.check())
        self.assertTrue(self.relay.alive())
        e.close()
        exited = X.wait_for(lambda: not self.relay.alive(), 15)
        self.assertTrue(exited, "relay did not exit after drain once its streams ended")
        self.assertEqual(self.relay.p.returncode, 0)
        self.retire(self.relay)


class CtlTest(AdminCase):

    def prepare(self):
        super().prepare()
        self.stack.start_driver(default=h_echo)

    def test_health_ready_and_errors(self):
        self.assertEqual(self.ctl("health")[:2], (0, "ok\n"))
        rc, out, _ = self.ctl("ready")
        self.assertEqual(rc, 0, out)
        rc, out, err = self.ctl("leases", token=None)
        self.assertEqual(rc, 1)
        self.assertIn("unauthorized: pass --token or SPARKRELAY_ADMIN_TOKEN", err)
        rc, out, err = self.ctl("--token", TOKEN, "leases", token=None)
        self.assertEqual(rc, 0, err)
        dead = "http://127.0.0.1:%d" % H.free_port()
        rc, _, err = self.ctl("health", url=dead)
        self.assertEqual(rc, 1)
        self.assertIn("cannot reach the admin API at %s" % dead, err)
        for args in (("frobnicate",), ("lease",), ("lease", "revoke"),
                     ("-o", "yaml", "leases"), ("route", "explain", "--bogus"),
                     ("sessions", "extra")):
            rc, _, err = self.ctl(*args)
            self.assertEqual(rc, 2, "ctl %s: rc %d (want usage error 2): %s" %
                             (" ".join(args), rc, err))
        for cmd in ("health", "ready", "sessions", "leases", "drain", "reload", "metrics",
                    "config"):
            rc, out, _ = self.ctl(cmd, "--help")
            self.assertEqual(rc, 0)
            self.assertIn("usage: sparkrelay ctl", out)
        self.assertIn("usage", self.ctl("route", "explain", "--help")[1])
        self.assertIn("usage", self.ctl("lease", "revoke", "--help")[1])
        rc, _, err = self.ctl("lease", "revoke", "L-0-nope")
        self.assertEqual(rc, 1)
        self.assertIn("no such lease", err)
        self.assertTrue(self.relay.alive())

    def test_proxy_variables_are_not_used(self):
        """A proxy named by the environment would get the admin token in clear
        and could answer for the relay: ctl talks to the admin API itself."""
        sink = socket.socket()
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        sink.setblocking(False)
        proxy = "http://127.0.0.1:%d" % sink.getsockname()[1]
        try:
            rc, out, err = self.ctl("leases", timeout=20, env_extra={
                v: proxy for v in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")})
            with self.assertRaises(BlockingIOError, msg="the proxy got a connection"):
                sink.accept()
        finally:
            sink.close()
        self.assertEqual(rc, 0, err)
        self.assertIn(self.stack.lease["lease"], out)

    def test_tables_and_json(self):
        mine = self.stack.lease
        ports = self.lease_ports()
        self.assertIsNone(X.echo_once(self.stack.exec_host, ports["driver"], size=8 * KiB))
        rc, out, err = self.ctl("leases")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        head = lines[0].split()
        for col in ("ID", "APP", "TENANT", "HOST", "PORTS", "ATTACHED", "CONNS"):
            self.assertIn(col, head)
        # Columns are aligned: each header starts where its values start.
        for col, want in (("ID", mine["lease"]), ("HOST", mine["host"])):
            at = lines[0].index(col)
            self.assertEqual(lines[1][at:at + len(want)], want, "column %s:\n%s" % (col, out))
        self.assertIn("driver=%d" % ports["driver"], lines[1])
        self.assertIn("blockManager=%d" % ports["blockManager"], lines[1])
        self.assertIn("yes", lines[1].split())
        rc, out, err = self.ctl("-o", "json", "leases")
        self.assertEqual(rc, 0, err)
        j = json.loads(out)
        self.assertEqual([l["id"] for l in j], [mine["lease"]])
        self.assertEqual(j, json.loads(self.ctl("leases", "-o", "json")[1]))
        rc, out, err = self.ctl("sessions")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertEqual(lines[0].split()[0], "PEER")
        self.assertIn(mine["lease"], lines[1].split())
        j = json.loads(self.ctl("-o", "json", "sessions")[1])
        self.assertEqual(len(j), 1)
        self.assertGreaterEqual(j[0]["bytes_to_driver"], 8 * KiB)
        rc, out, err = self.ctl("metrics")
        self.assertEqual(rc, 0, err)
        m = parse_metrics(out)
        self.assertGreaterEqual(metric(m, "sparkrelay_bytes_total", direction="to_driver"),
                                8 * KiB)
        rc, out, err = self.ctl("config")
        self.assertEqual(rc, 0, err)
        cfg = json.loads(out)
        self.assertIn("relay", cfg)
        self.assertNotIn(TOKEN, out, "the admin token is shown by ctl config")
        code, _, text = self.api("GET", "/v1/config")
        self.assertEqual(code, 200)
        self.assertNotIn(TOKEN, text, "the admin token is shown by /v1/config")
        rc, out, err = self.ctl("route", "explain", "--cn", "sidecar-1", "--token", "t0k",
                                "--app", "etl", "--addr", "10.1.2.3")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.strip(), "route explain printed nothing")
        self.assertIn("default", out, "route explain without tenants should name the "
                      "implicit tenant \"default\":\n" + out)
        rc, out, err = self.ctl("route", "explain", "--addr", "not-an-ip")
        self.assertEqual(rc, 2)  # a usage error, found before asking the relay
        self.assertIn("addr", err)

    def test_reload_and_revoke_via_ctl(self):
        rc, out, err = self.ctl("reload")
        self.assertEqual(rc, 0, err)
        self.assertIn("reloaded", out)
        m = self.metrics()
        self.assertEqual(metric(m, "sparkrelay_reloads_total", result="ok"), 1)
        # A broken file is refused with the reason, counted, and nothing changes.
        with open(self.stack.relay_cfg_path, "w") as f:
            f.write('{"relay": {"listen": 5}}\n')
        rc, out, err = self.ctl("reload")
        self.assertEqual(rc, 1)
        self.assertIn("relay.listen", err)
        m = self.metrics()
        self.assertEqual(metric(m, "sparkrelay_reloads_total", result="failed"), 1)
        self.assertEqual(self.ctl("ready")[0], 0)
        lease = self.stack.lease["lease"]
        rc, out, err = self.ctl("lease", "revoke", lease)
        self.assertEqual(rc, 0, err)
        self.assertIn(lease, out)
        self.assertNotIn(lease, [l["id"] for l in json.loads(self.ctl("-o", "json",
                                                                       "leases")[1])])


class LoopbackWithoutTokenTest(AdminCase):
    """No token: allowed on loopback (127.0.0.2 counts), every endpoint open."""
    admin_token = None

    def test_loopback_admin_needs_no_token(self):
        code, _, text = self.api("GET", "/v1/leases", token=None)
        self.assertEqual(code, 200, text)
        self.assertEqual(len(json.loads(text)), 1)
        self.assertEqual(self.ctl("leases", token=None)[0], 0)


class OffLoopbackTest(X.XCase):
    auto_tunnel = False
    # The stack's own relay must not take the default admin port 9090.
    relay_overrides = {"relay": {"admin": {"listen": "127.0.0.1:0"}}}

    def non_loopback_address(self):
        """An IPv4 address of this machine that is not loopback, or None."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            a = s.getsockname()[0]
        except OSError:
            return None
        finally:
            s.close()
        return None if a.startswith("127.") or a == "0.0.0.0" else a

    def start_relay_with_admin(self, name, admin):
        port = H.free_port()
        cfg = H.relay_config(port, H.pick_pool_base(), {"relay": {"admin": admin}})
        path = H.write_config(os.path.join(self.stack.dir, name + ".json"), cfg)
        p = H.Proc(name, [H.BIN, "relay", "--config", path], self.stack.dir)
        return p, path

    def test_admin_off_loopback_without_a_token_is_refused(self):
        addr = self.non_loopback_address() or "0.0.0.0"
        listen = "%s:%d" % (addr, H.free_port(addr if addr != "0.0.0.0" else "127.0.0.1"))
        p, path = self.start_relay_with_admin("relay-noauth", {"listen": listen})
        r = subprocess.run([H.BIN, "check-config", path], capture_output=True, text=True,
                           timeout=30)
        self.assertNotEqual(r.returncode, 0, "check-config accepted an admin listener on %s "
                            "without a token:\n%s" % (listen, r.stderr))
        self.assertIn("relay.admin.token", r.stderr)
        p.start()
        self.track(p)
        X.wait_for(lambda: not p.alive(), 10)
        self.assertFalse(p.alive(), "relay started with an admin API on %s and no token" % listen)
        self.assertNotEqual(p.p.returncode, 0)
        self.retire(p)

    def test_admin_off_loopback_with_a_token_requires_it(self):
        addr = self.non_loopback_address()
        if addr is None:
            self.skipTest("this machine has no non-loopback IPv4 address")
        port = H.free_port(addr)
        p, _ = self.start_relay_with_admin("relay-auth", {"listen": "%s:%d" % (addr, port),
                                                          "token": TOKEN})
        p.start()
        self.track(p)
        url = "http://%s:%d" % (addr, port)
        ok = X.wait_for(lambda: (lambda c: c == 200)(
            _try(lambda: http("GET", url + "/healthz", timeout=1)[0])), 10)
        self.assertTrue(ok, "admin API on %s did not come up" % url)
        self.assertEqual(http("GET", url + "/v1/leases")[0], 401)
        self.assertEqual(http("GET", url + "/metrics", token="nope")[0], 401)
        self.assertEqual(http("GET", url + "/v1/leases", token=TOKEN)[0], 200)


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


if __name__ == "__main__":
    H.main()
