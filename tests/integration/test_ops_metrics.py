"""Metrics an operator can scrape without the admin key, and what they say.

  - relay.metrics.listen serves /metrics, /healthz and /readyz without a
    token, and nothing else (the admin API behind it keeps its token);
  - pool capacity (ports, ports used) and tenant usage with their labels,
    process_*, the reload state, executor-wait buckets up to the pending
    timeout;
  - a full pool is counted and logged as no_ports, with pool, tenant and app;
  - stream resumption: a tunnel that goes away while it carries a connection
    shows as held (per lease: since when), and its resume is counted, on the
    relay and in the sidecar's /status;
  - a registration that never comes is a handshake failure (follow-up 6);
  - executors over lease.max_pending are refused, counted by tenant, and
    logged once per period (follow-ups 3 and 7); so are executors over
    relay.max_lease_connections; registrations over the implicit tenant's
    lease limit (relay.default_tenant) and over relay.max_tunnels are
    refused and counted (follow-up 7).
"""

import json
import os
import signal
import ssl
import time

import harness as H
import harness_extra as X
import test_admin as A
from harness import h_echo


def sample(samples, name, **labels):
    """The value of one sample, or None."""
    want = tuple(sorted(labels.items()))
    for (n, lab), v in samples.items():
        if n == name and tuple(sorted(lab)) == want:
            return v
    return None


class MetricsCase(A.AdminCase):
    """The admin API with its token, plus the metrics listener."""

    extra_metrics = None

    def setUp(self):
        self.metrics_port = H.free_port()
        self.extra_relay = H.deep_merge(
            {"relay": {"metrics": {"listen": "127.0.0.1:%d" % self.metrics_port}}},
            self.extra_metrics)
        self.metrics_url = "http://127.0.0.1:%d" % self.metrics_port
        super().setUp()

    def scrape(self):
        """/metrics of the metrics listener, without a token, parsed strictly."""
        code, hdr, text = A.http("GET", self.metrics_url + "/metrics")
        self.assertEqual(code, 200, "GET /metrics on the metrics listener: %d %s" %
                         (code, text[:300]))
        self.assertTrue(hdr.get("Content-Type", "").startswith("text/plain; version=0.0.4"))
        try:
            return A.parse_metrics(text)
        except AssertionError as e:
            self.fail("malformed /metrics: %s\n%s" % (e, text[:3000]))

    def wait_metric(self, pred, timeout=10.0):
        got = X.wait_for(lambda: (lambda m: m if pred(m) else None)(self.scrape()), timeout)
        return got


class MetricsListenerTest(MetricsCase):

    def test_metrics_without_the_admin_token_and_nothing_else(self):
        # The admin API still wants its token for /metrics.
        self.assertEqual(self.api("GET", "/metrics", token=None)[0], 401)
        m = self.scrape()
        self.assertEqual(A.metric(m, "sparkrelay_leases_active"), 1)
        for path in ("/healthz", "/readyz"):
            code, _, text = A.http("GET", self.metrics_url + path)
            self.assertEqual(code, 200, "%s on the metrics listener: %d %s" % (path, code, text))
        # Nothing that acts or shows more than counters: not even with the token.
        lease = self.stack.lease["lease"]
        for method, path in (("GET", "/v1/leases"), ("GET", "/v1/sessions"),
                             ("GET", "/v1/config"), ("POST", "/v1/drain"),
                             ("POST", "/v1/reload"), ("DELETE", "/v1/leases/" + lease),
                             ("POST", "/v1/route/explain")):
            code, _, text = A.http(method, self.metrics_url + path, token=A.TOKEN,
                                   body={} if method == "POST" else None)
            self.assertEqual(code, 404, "%s %s on the metrics listener: %d %s" %
                             (method, path, code, text))
        for method in ("POST", "DELETE", "PUT"):
            code, hdr, _ = A.http(method, self.metrics_url + "/metrics")
            self.assertEqual(code, 405, "%s /metrics" % method)
            self.assertIn("GET", hdr.get("Allow", ""))
        # None of it acted.
        self.assertEqual(self.api("GET", "/readyz", token=None)[0], 200)
        self.assertEqual([l["id"] for l in self.api_json("GET", "/v1/leases")], [lease])
        # The admin's /metrics and the listener's say the same and count each other.
        admin = self.metrics()
        self.assertGreaterEqual(A.metric(admin, "sparkrelay_metrics_connections_total"), 1)
        self.assertGreaterEqual(A.metric(self.scrape(), "sparkrelay_admin_connections_total"),
                                1)

    def test_pool_tenant_process_and_reload_gauges(self):
        m = self.scrape()
        self.assertEqual(A.metric(m, "sparkrelay_pool_ports", pool="default"), H.POOL_SIZE)
        # One lease of two ports (driver, blockManager).
        self.assertEqual(A.metric(m, "sparkrelay_pool_ports_used", pool="default"), 2)
        self.assertEqual(A.metric(m, "sparkrelay_pool_leases", pool="default"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_leases", tenant="default"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_max_leases", tenant="default"), 256)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_max_connections", tenant="default"),
                         16384)
        now = time.time()
        start = A.metric(m, "process_start_time_seconds")
        self.assertTrue(now - 300 < start <= now + 1, "process_start_time_seconds %s, now %s" %
                        (start, now))
        self.assertGreater(A.metric(m, "process_resident_memory_bytes"), 1 << 20)
        fds = A.metric(m, "process_open_fds")
        real = len(os.listdir("/proc/%d/fd" % self.relay.p.pid))
        self.assertTrue(5 <= fds <= real + 2, "process_open_fds %s, /proc says %d" % (fds, real))
        self.assertGreater(A.metric(m, "process_max_fds"), fds)
        self.assertGreaterEqual(A.metric(m, "process_cpu_seconds_total"), 0)
        self.assertEqual(A.metric(m, "sparkrelay_config_last_reload_successful"), 1)
        t0 = A.metric(m, "sparkrelay_config_last_reload_success_timestamp_seconds")
        self.assertTrue(now - 300 < t0 <= now + 1, t0)
        # Executor-wait buckets reach the pending timeout (30 s) and beyond.
        for le in ("1", "2.5", "10", "30", "60", "600", "+Inf"):
            self.assertIsNotNone(sample(m, "sparkrelay_executor_wait_seconds_bucket", le=le),
                                 "no executor_wait bucket le=%s" % le)
        # A refused reload turns config_last_reload_successful to 0 and keeps
        # the timestamp; a good one sets both.
        with open(self.stack.relay_cfg_path) as f:
            good = f.read()
        with open(self.stack.relay_cfg_path, "w") as f:
            f.write('{"relay": {"listen": 5}}\n')
        self.assertEqual(self.ctl("reload")[0], 1)
        m = self.scrape()
        self.assertEqual(A.metric(m, "sparkrelay_config_last_reload_successful"), 0)
        self.assertEqual(A.metric(m, "sparkrelay_config_last_reload_success_timestamp_seconds"),
                         t0)
        time.sleep(0.01)
        with open(self.stack.relay_cfg_path, "w") as f:
            f.write(good)
        self.assertEqual(self.ctl("reload")[0], 0)
        m = self.scrape()
        self.assertEqual(A.metric(m, "sparkrelay_config_last_reload_successful"), 1)
        self.assertGreater(
            A.metric(m, "sparkrelay_config_last_reload_success_timestamp_seconds"), t0)


class NoPortsTest(MetricsCase):
    APP = "etl-\u00e9"

    def test_a_full_pool_is_no_ports_with_pool_tenant_and_app(self):
        # Shrink the pool to the lease's two ports with a reload (the
        # sidecar already holds them).
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        ports = sorted(self.lease_ports().values())
        cfg["relay"]["pool"]["port_min"] = ports[0]
        cfg["relay"]["pool"]["port_max"] = ports[1]
        H.write_config(self.stack.relay_cfg_path, cfg)
        self.assertEqual(self.ctl("reload")[0], 0)
        before = self.scrape()
        sc = self.sidecar("sc-full", {"tunnel": {"app": self.APP, "backoff_initial_ms": 60000,
                                                 "backoff_max_ms": 60000}}).start()
        lines = X.wait_log(self.relay, "registration refused: no_ports", 15)
        self.assertTrue(lines, "no \"registration refused: no_ports\" line")
        line = lines[-1]
        for want in ("pool default: ports %d-%d" % (ports[0], ports[1]), "tenant default",
                     'app "etl-\\xc3\\xa9"'):
            self.assertIn(want, line, "the no_ports line lacks %r:\n%s" % (want, line))
        self.assertTrue(X.wait_log(sc.proc, "relay refused registration: no_ports", 5))
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_refused_total",
                                                reason="no_ports") >= 1)
        self.assertTrue(m, "refused_total{reason=no_ports} did not grow")
        self.assertEqual(A.metric(m, "sparkrelay_refused_total", reason="no_ports") -
                         A.metric(before, "sparkrelay_refused_total", reason="no_ports"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_refused_total", reason="reg_limit"),
                         A.metric(before, "sparkrelay_refused_total", reason="reg_limit"),
                         "a full pool was counted as reg_limit")
        self.assertEqual(A.metric(m, "sparkrelay_tenant_refused_total", tenant="default",
                                  pool="default", reason="no_ports"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_pool_ports", pool="default"), 2)
        self.assertEqual(A.metric(m, "sparkrelay_pool_ports_used", pool="default"), 2)


class ResumeMetricsTest(MetricsCase):
    # PINGs fast enough that a stopped sidecar is noticed in about a second.
    extra_metrics = {"relay": {"h2": {"ping_interval_ms": 300, "ping_timeout_ms": 1200}}}
    extra_tunnel = {"tunnel": {"h2": {"ping_interval_ms": 300, "ping_timeout_ms": 1200}}}

    def test_held_streams_and_resume_on_relay_and_sidecar(self):
        self.stack.start_driver(default=h_echo)
        lease = self.stack.lease["lease"]
        e = X.Echoer(self.stack.exec_host, self.lease_ports()["driver"], seed=5)
        self.addCleanup(e.close)
        self.assertIsNone(e.check())
        m = self.scrape()
        self.assertEqual(A.metric(m, "sparkrelay_resume_leases_away"), 0)
        self.assertEqual(A.metric(m, "sparkrelay_resume_streams_held"), 0)
        # The sidecar stops answering: the relay declares the tunnel dead
        # and holds the executor's connection.
        tunnel = self.stack.tunnel
        tunnel.signal(signal.SIGSTOP)
        self.addCleanup(lambda: tunnel.signal(signal.SIGCONT))
        t_stop = time.time()
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_resume_streams_held") == 1, 15)
        self.assertTrue(m, "the relay holds no stream after its tunnel went away")
        self.assertEqual(A.metric(m, "sparkrelay_resume_leases_away"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_resume_aways_total"), 1)
        since = sample(m, "sparkrelay_resume_away_since_seconds", lease=lease,
                       tenant="default", pool="default")
        self.assertIsNotNone(since, "no away_since sample for lease %s" % lease)
        self.assertTrue(t_stop - 1 <= since <= time.time(), "away since %s, stopped at %s" %
                        (since, t_stop))
        leases = self.api_json("GET", "/v1/leases")
        r = leases[0]["resumption"]
        self.assertIs(r["away"], True, r)
        self.assertEqual(r["streams_held"], 1, r)
        self.assertGreater(r["away_ms"], 0, r)
        rc, out, err = self.ctl("leases")
        self.assertEqual(rc, 0, err)
        head, row = out.splitlines()[0], out.splitlines()[1]
        at = head.index("HELD")
        self.assertEqual(row[at:at + 1], "1", "HELD column:\n" + out)
        at = head.index("AWAY")
        self.assertRegex(row[at:], r"^\d+s ", "AWAY column:\n" + out)
        # Back: the sidecar reconnects and the held stream resumes.
        tunnel.signal(signal.SIGCONT)
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_resume_streams_resumed_total")
                             >= 1, 20)
        self.assertTrue(m, "the held stream was not resumed")
        self.assertEqual(A.metric(m, "sparkrelay_resumes_total"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_resume_streams_held"), 0)
        self.assertEqual(A.metric(m, "sparkrelay_resume_leases_away"), 0)
        self.assertIsNone(sample(m, "sparkrelay_resume_away_since_seconds", lease=lease,
                                 tenant="default", pool="default"))
        for reason in ("hold", "unknown", "socket", "mismatch", "ended"):
            self.assertEqual(A.metric(m, "sparkrelay_resume_streams_lost_total",
                                      reason=reason), 0, reason)
        self.assertIsNone(e.check(), "the resumed connection does not carry bytes exactly")
        st = X.wait_for(lambda: (lambda s: s if s["resumption"]["streams_resumed"] >= 1 else None)(
            self.status()), 10)
        self.assertTrue(st, "the sidecar's /status shows no resumed stream: %s" %
                        self.status())
        r = st["resumption"]
        self.assertEqual((r["away"], r["streams_held"], r["resumes"], r["aways"]),
                         (False, 0, 1, 1), r)
        self.assertEqual(sum(r["streams_lost"].values()), 0, r)


class RegistrationTimeoutTest(MetricsCase):
    extra_metrics = {"relay": {"handshake_timeout_ms": 1500}}

    def test_a_registration_that_never_comes_is_a_handshake_failure(self):
        before = A.metric(self.scrape(), "sparkrelay_handshake_failures_total")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        raw = H.connect("127.0.0.1", self.relay_port(), timeout=10)
        s = ctx.wrap_socket(raw)  # TLS completes; nothing more is sent
        self.addCleanup(s.close)
        self.assertTrue(X.wait_log(self.relay, "register timeout", 10),
                        "the relay did not time the registration out")
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_handshake_failures_total") >
                             before, 5)
        self.assertTrue(m, "a registration timeout was not counted as a handshake failure")
        self.assertEqual(A.metric(m, "sparkrelay_handshake_failures_total") - before, 1)


class PendingFullTest(MetricsCase):
    # lease.max_pending itself: the implicit tenant's own pending limit off.
    extra_metrics = {"relay": {"lease": {"max_pending": 2, "pending_timeout_ms": 20000},
                               "default_tenant": {"pending": 0}}}
    N = 12

    def test_over_max_pending_is_refused_counted_and_logged_once(self):
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        lease = self.stack.lease["lease"]
        port = self.lease_ports()["driver"]
        waiting = [self.stack.executor("driver") for _ in range(2)]
        self.assertTrue(X.wait_log(self.relay, "waiting for the tunnel", 5, count=2))
        outcomes = []
        for _ in range(self.N):
            try:
                s = H.connect(self.stack.exec_host, port, timeout=5)
            except ConnectionResetError:
                outcomes.append("reset")  # reset before connect() returned
                continue
            try:
                end, _, _ = X.closed_within(s, 5)
            finally:
                s.close()
            outcomes.append(end)
        self.assertTrue(all(o in ("reset", "eof") for o in outcomes), outcomes)
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_refused_total",
                                                reason="pending_full") >= self.N)
        self.assertTrue(m, "pending_full refusals were not all counted")
        self.assertEqual(A.metric(m, "sparkrelay_refused_total", reason="pending_full"), self.N)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_refused_total", tenant="default",
                                  pool="default", reason="pending_full"), self.N)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_connections", tenant="default"), 2)
        # One line for the burst (more in a later period), naming the lease.
        lines = self.relay.grep("already wait for the tunnel")
        self.assertEqual(len(lines), 1, "refusals of one burst logged %d times:\n%s" %
                         (len(lines), "\n".join(lines[:5])))
        self.assertIn("lease=%s" % lease, lines[0])
        self.assertEqual(len(waiting), 2)


class LeaseConnectionLimitTest(MetricsCase):
    extra_metrics = {"relay": {"max_lease_connections": 2}}

    def test_a_lease_over_its_connection_limit(self):
        self.stack.start_driver(default=h_echo)
        lease = self.stack.lease["lease"]
        port = self.lease_ports()["driver"]
        keep = [X.Echoer(self.stack.exec_host, port, seed=i) for i in (1, 2)]
        for e in keep:
            self.addCleanup(e.close)
            self.assertIsNone(e.check())
        for _ in range(5):
            try:
                s = H.connect(self.stack.exec_host, port, timeout=5)
            except ConnectionResetError:
                continue
            try:
                end, _, got = X.closed_within(s, 5)
            finally:
                s.close()
            self.assertIn(end, ("reset", "eof"))
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_refused_total",
                                                reason="lease_connection_limit") >= 5)
        self.assertTrue(m, "lease_connection_limit refusals were not counted")
        self.assertEqual(A.metric(m, "sparkrelay_refused_total",
                                  reason="lease_connection_limit"), 5)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_refused_total", tenant="default",
                                  pool="default", reason="lease_connection_limit"), 5)
        lines = self.relay.grep("relay.max_lease_connections")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("lease=%s" % lease, lines[0])
        for e in keep:
            self.assertIsNone(e.check(), "a connection under the limit stopped working")


class DefaultTenantLimitTest(MetricsCase):
    extra_metrics = {"relay": {"default_tenant": {"leases": 1}, "max_grace_leases": 0}}

    def test_the_implicit_tenant_is_held_to_its_lease_limit(self):
        m = self.scrape()
        self.assertEqual(A.metric(m, "sparkrelay_tenant_max_leases", tenant="default"), 1)
        sc = self.sidecar("sc-two", {"tunnel": {"backoff_initial_ms": 60000,
                                                "backoff_max_ms": 60000}}).start()
        self.assertTrue(X.wait_log(self.relay, "registration refused: too_many_leases", 15))
        self.assertTrue(X.wait_log(sc.proc, "relay refused registration: too_many_leases", 5))
        self.assertIsNone(sc.lease())
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_refused_total",
                                                reason="reg_limit") >= 1)
        self.assertTrue(m)
        self.assertEqual(A.metric(m, "sparkrelay_refused_total", reason="reg_limit"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_refused_total", tenant="default",
                                  pool="", reason="reg_limit"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_tenant_leases", tenant="default"), 1)


class MaxTunnelsTest(MetricsCase):
    extra_metrics = {"relay": {"max_tunnels": 1}}

    def test_a_registration_over_max_tunnels_is_refused(self):
        sc = self.sidecar("sc-two", {"tunnel": {"backoff_initial_ms": 60000,
                                                "backoff_max_ms": 60000}}).start()
        self.assertTrue(X.wait_log(self.relay, "registration refused: too_many_tunnels", 15))
        self.assertIsNone(sc.lease())
        m = self.wait_metric(lambda m: A.metric(m, "sparkrelay_refused_total",
                                                reason="tunnel_limit") >= 1)
        self.assertTrue(m)
        self.assertEqual(A.metric(m, "sparkrelay_refused_total", reason="tunnel_limit"), 1)
        self.assertEqual(A.metric(m, "sparkrelay_leases_active"), 1)


if __name__ == "__main__":
    H.main()
