"""Routing, tenants, limits and live reload against a live relay.

Every relay here runs with two named pools on 127.0.0.2 (relay.pools, so
relay.pool is removed from the harness config), two tenants recognised by the
SHA-256 of their bearer tokens, and routes:

    a-etl  tenant ta, app "etl-*"  -> pool b
    a-any  tenant ta, any app      -> pool a   (executor_cidrs per test)
    b-any  tenant tb, any app      -> pool b

Pool a is the lower half of the harness's port range, pool b the upper half.
The admin API listens on 127.0.0.1:0; its port is read from the relay's
"admin API listening" log line. Each check is on something a user relies on:
which ports a sidecar gets, which executors reach the driver, what the relay
logs and counts, and that reloads neither break running transfers nor fail
to apply.
"""

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import harness as H
import harness_extra as X
import test_admin as A
from harness import KiB, MiB, h_echo

ADMIN_TOKEN = "it-routing-admin-" + os.urandom(8).hex()
TOKEN_A = "tenant-a-" + os.urandom(12).hex()
TOKEN_B = "tenant-b-" + os.urandom(12).hex()
TOKEN_X = "tenant-x-" + os.urandom(12).hex()  # fits no tenant
HALF = H.POOL_SIZE // 2
ADMIN_RE = re.compile(r"\[relay admin 127\.0\.0\.1:(\d+)\] admin API listening")
# A sidecar that is expected to be refused retries only after this long, so
# that every refusal counter moves exactly once within a test.
SLOW_BACKOFF = {"backoff_initial_ms": 60000, "backoff_max_ms": 60000}


def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


def connect_from(src, host, port, timeout=10.0):
    """A TCP connection to host:port whose source address is src."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((src, 0))
        H.set_nodelay(s)
        s.settimeout(timeout)
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def echo_on(s, seed, size=64 * KiB):
    """Send a distinct message on s, expect it echoed exactly, half-close,
    expect EOF. Returns None or a problem string."""
    m = H.message(seed, size, seed=seed)
    try:
        s.sendall(m)
        end, got, _, data = H.recv_exact(s, size)
        if end != "ok" or data != m:
            return "echo: %s after %d of %d bytes%s" % (
                end, got, size, " (bytes differ)" if end == "ok" else "")
        s.shutdown(socket.SHUT_WR)
        end, extra, _ = H.recv_to_eof(s, 1 * KiB)
        if end != "eof" or extra:
            return "echo: after half-close got %s with %d extra bytes" % (end, extra)
        return None
    except OSError as e:
        return "echo failed: %r" % (e,)


def refused_outcome(host, port, src=None, timeout=5.0):
    """Connect (from src if given), send a little, and see how the
    connection ends: ('reset'|'eof'|'timeout', bytes received). A relay that
    accepts and resets at once may reset the connect itself (seen on
    gVisor): that is 'reset' with 0 bytes."""
    try:
        s = connect_from(src, host, port, timeout) if src else \
            H.connect(host, port, timeout=timeout)
    except ConnectionResetError:
        return "reset", 0
    try:
        if src:
            assert s.getsockname()[0] == src, s.getsockname()
        try:
            s.sendall(b"x" * 100)
        except OSError:
            pass  # already reset
        end, _, got = X.closed_within(s, timeout)
        return end, got
    finally:
        s.close()


class PacedTransfer:
    """One executor connection through an echoing driver carrying n bytes,
    sent in chunks paced over about `seconds`, while a second thread reads the
    echo back and hashes it. `got` is the progress of the echo."""

    CHUNK = 256 * KiB

    def __init__(self, host, port, seed, n=32 * MiB, seconds=3.0):
        self.s = H.connect(host, port, timeout=60)
        self.seed, self.n, self.seconds = seed, n, seconds
        self.want_sha = H.pattern_sha(seed, n)
        self.got = 0
        self.end = None
        self.rx_sha = None
        self.tx_error = None
        self.tx = threading.Thread(target=self._send, daemon=True, name="paced-tx")
        self.rx = threading.Thread(target=self._recv, daemon=True, name="paced-rx")

    def start(self):
        self.tx.start()
        self.rx.start()
        return self

    def _send(self):
        p = H.Pattern(self.seed, self.n)
        chunks = (self.n + self.CHUNK - 1) // self.CHUNK
        t0 = time.monotonic()
        try:
            for i in range(chunks):
                self.s.sendall(p.next(self.CHUNK))
                delay = t0 + (i + 1) * self.seconds / chunks - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        except OSError as e:
            self.tx_error = e

    def _recv(self):
        h = hashlib.sha256()
        try:
            while self.got < self.n:
                b = self.s.recv(min(256 * KiB, self.n - self.got))
                if not b:
                    self.end = "eof"
                    break
                h.update(b)
                self.got += len(b)
            else:
                self.end = "ok"
        except ConnectionResetError:
            self.end = "reset"
        except socket.timeout:
            self.end = "timeout"
        except OSError as e:
            self.end = "error %r" % (e,)
        self.rx_sha = h.hexdigest()

    def wait_progress(self, nbytes, timeout):
        return X.wait_for(lambda: self.got >= nbytes or self.end is not None, timeout)

    def finish(self, timeout):
        """None when all n bytes came back byte-exact, else a problem string."""
        self.tx.join(timeout)
        self.rx.join(max(1.0, timeout))
        if self.tx.is_alive() or self.rx.is_alive():
            return "transfer still running after %.0f s (%d of %d bytes back)" % (
                timeout, self.got, self.n)
        if self.tx_error is not None:
            return "sending failed after the reload: %r" % (self.tx_error,)
        if self.end != "ok" or self.rx_sha != self.want_sha:
            return "transfer ended %s after %d of %d bytes (sha256 %s, want %s)" % (
                self.end, self.got, self.n, (self.rx_sha or "-")[:16], self.want_sha[:16])
        return None

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class RoutingCase(X.XCase):
    """A relay with pools a/b, tenants ta/tb and routes (see the module
    docstring); no sidecar until a test starts one."""

    auto_tunnel = False
    a_limits = None          # relay.tenants[ta].limits
    a_executor_cidrs = []    # route a-any's executor_cidrs

    def setUp(self):
        if H.DIRECT:
            self.skipTest("needs the sparkrelay binary (not meaningful in SR_IT_DIRECT mode)")
        if not H.BIN or not os.access(H.BIN, os.X_OK):
            raise H.HarnessError("SPARKRELAY_BIN is not set to an executable")
        self.stack = H.Stack(self.id())
        self.tracked = []
        self.retired = set()
        self.addCleanup(self._kill_everything)
        try:
            base = self.stack.pool_base = H.pick_pool_base()
            self.range_a = (base, base + HALF - 1)
            self.range_b = (base + HALF, base + H.POOL_SIZE - 1)
            self.stack.relay_overrides = self.routing_overrides()
            self.stack.start_relay()
            self.track(self.stack.relay)
            line = X.wait_log(self.relay, "admin API listening", 10)
            m = ADMIN_RE.search(line[0]) if line else None
            if not m:
                raise H.HarnessError("no \"admin API listening\" line with a port in the "
                                     "relay log")
            self.admin_url = "http://127.0.0.1:%s" % m.group(1)
            ok = X.wait_for(lambda: self._healthz() == 200, 10)
            if not ok:
                raise H.HarnessError("admin API on %s did not answer" % self.admin_url)
        except BaseException:
            H._any_failure = True
            self.dump_all()
            raise

    def routing_overrides(self):
        lo_a, hi_a = self.range_a
        lo_b, hi_b = self.range_b
        pool = lambda name, lo, hi: {"name": name, "bind": H.POOL_HOST,
                                     "advertise": H.POOL_HOST, "port_min": lo,
                                     "port_max": hi}
        ta = {"name": "ta", "match": {"token_sha256": [sha256_hex(TOKEN_A)]}}
        if self.a_limits:
            ta["limits"] = dict(self.a_limits)
        return {"relay": {
            "pool": H.DELETE,
            "pools": [pool("a", lo_a, hi_a), pool("b", lo_b, hi_b)],
            "tenants": [ta, {"name": "tb", "match": {"token_sha256": [sha256_hex(TOKEN_B)]}}],
            "routes": [
                {"name": "a-etl", "tenant": "ta", "app": "etl-*", "pool": "b"},
                {"name": "a-any", "tenant": "ta", "pool": "a",
                 "executor_cidrs": list(self.a_executor_cidrs)},
                {"name": "b-any", "tenant": "tb", "pool": "b"},
            ],
            "admin": {"listen": "127.0.0.1:0", "token": ADMIN_TOKEN},
        }}

    # -- admin API and ctl
    def _healthz(self):
        try:
            return A.http("GET", self.admin_url + "/healthz", timeout=1)[0]
        except OSError:
            return None

    def api_json(self, method, path):
        code, _, text = A.http(method, self.admin_url + path, ADMIN_TOKEN)
        self.assertEqual(code, 200, "%s %s: %d %s" % (method, path, code, text))
        return json.loads(text)

    def metrics(self):
        code, _, text = A.http("GET", self.admin_url + "/metrics", ADMIN_TOKEN)
        self.assertEqual(code, 200, "GET /metrics: %d %s" % (code, text))
        return A.parse_metrics(text)

    def refused(self, m, reason):
        return A.metric(m, "sparkrelay_refused_total", reason=reason)

    def reloads(self, m, result):
        return A.metric(m, "sparkrelay_reloads_total", result=result)

    def wait_refused(self, before, reason, want=1, timeout=5.0):
        """Wait for refused_total{reason} to grow by want; then check it grew
        by exactly want (after a short settle)."""
        b = self.refused(before, reason)
        ok = X.wait_for(lambda: self.refused(self.metrics(), reason) - b >= want, timeout)
        time.sleep(0.3)
        d = self.refused(self.metrics(), reason) - b
        self.assertTrue(ok, "refused_total{reason=\"%s\"} did not grow by %d within %.0f s "
                        "(grew by %d)" % (reason, want, timeout, d))
        self.assertEqual(d, want, "refused_total{reason=\"%s\"} grew by %d, want exactly %d" %
                         (reason, d, want))

    def ctl(self, *args, timeout=30):
        env = dict(os.environ)
        env["SPARKRELAY_ADMIN_TOKEN"] = ADMIN_TOKEN
        env["SPARKRELAY_ADMIN_URL"] = self.admin_url
        r = subprocess.run([H.BIN, "ctl"] + list(args), env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        for marker in H.SANITIZER_MARKERS:
            self.assertNotIn(marker, r.stderr, "ctl %s: sanitizer report:\n%s" %
                             (" ".join(args), r.stderr))
        return r.returncode, r.stdout, r.stderr

    # -- configuration
    def new_cfg(self):
        return copy.deepcopy(self.stack.relay_cfg)

    def write_cfg(self, cfg_or_text):
        path = self.stack.relay_cfg_path
        if isinstance(cfg_or_text, str):
            with open(path, "w") as f:
                f.write(cfg_or_text)
        else:
            H.write_config(path, cfg_or_text)

    def sighup(self, needle, timeout=10.0):
        """SIGHUP the relay and wait for one more log line holding needle."""
        n = X.log_count(self.relay, needle)
        self.relay.p.send_signal(signal.SIGHUP)
        lines = X.wait_log(self.relay, needle, timeout, count=n + 1)
        self.assertTrue(lines, "no new %r line in the relay log within %.0f s of SIGHUP" %
                        (needle, timeout))
        return lines[-1]

    # -- sidecars, drivers, executors
    def start_sidecar(self, name, token, extra=None):
        o = {"tunnel": {"token": token}}
        if extra:
            o["tunnel"].update(extra)
        return self.sidecar(name, o).start()

    def leased(self, sc, timeout=15.0):
        """(lease json, {role: port}) of a sidecar that must get a lease."""
        j = sc.wait_lease(timeout)
        self.assertEqual(j.get("host"), H.POOL_HOST, j)
        return j, {k: int(v) for k, v in j["ports"].items()}

    def assert_in_range(self, ports, rng, what):
        for role, p in ports.items():
            self.assertTrue(rng[0] <= p <= rng[1], "%s: %s port %d is outside %d..%d" %
                            (what, role, p, rng[0], rng[1]))

    def driver(self, ports):
        d = H.Driver(ports, default=h_echo)
        d.start()
        self.addCleanup(d.stop)
        return d

    def keep(self, s):
        self.addCleanup(lambda: s.close())
        return s

    def assert_refused_registration(self, sc, code, timeout=15.0):
        """The sidecar was refused with code (relay log and sidecar log), and
        holds no lease."""
        line = X.wait_log(self.relay, "registration refused: %s" % code, timeout)
        self.assertTrue(line, "relay did not log \"registration refused: %s\"" % code)
        self.assertTrue(X.wait_log(sc.proc, "relay refused registration: %s" % code, 5),
                        "sidecar %s did not log the %s refusal" % (sc.name, code))
        self.assertIsNone(sc.lease(), "sidecar %s wrote a lease although it was refused: %r" %
                          (sc.name, sc.lease()))
        return line


# --------------------------------------------------------------------------

class ExecutorCidrTest(RoutingCase):
    a_executor_cidrs = ["127.0.0.1/32"]

    def test_executor_outside_the_route_cidrs_is_refused(self):
        sc = self.start_sidecar("sc-a", TOKEN_A)
        j, ports = self.leased(sc)
        drv = self.driver(ports)
        before = self.metrics()
        # Inside the CIDR: end to end.
        s = self.keep(connect_from("127.0.0.1", H.POOL_HOST, ports["driver"]))
        self.assertEqual(s.getsockname()[0], "127.0.0.1")
        self.assertIsNone(echo_on(s, seed=11))
        self.assertEqual(drv.wait_accepted(1, 5), 1)
        # Outside: reset or closed at once, nothing reaches the driver.
        end, got = refused_outcome(H.POOL_HOST, ports["driver"], src="127.0.0.3")
        self.assertIn(end, ("reset", "eof"), "executor from 127.0.0.3 was not closed: %s" % end)
        self.assertEqual(got, 0, "executor from 127.0.0.3 received %d bytes" % got)
        lines = X.wait_log(self.relay, "refused, address not in route a-any's executor_cidrs",
                           5)
        self.assertTrue(lines, "relay did not log the CIDR refusal")
        self.assertTrue(any("peer=127.0.0.3:" in l for l in lines), lines)
        self.wait_refused(before, "cidr", 1)
        # A scanner's burst: counted each, logged once per 10 s.
        for _ in range(30):
            refused_outcome(H.POOL_HOST, ports["driver"], src="127.0.0.3")
        self.wait_refused(before, "cidr", 31)
        lines = self.relay.grep("refused, address not in route a-any's executor_cidrs")
        self.assertLessEqual(len(lines), 2, lines)
        time.sleep(0.3)
        self.assertEqual(len(drv.all_conns()), 1, "the refused executor reached the driver")
        after = self.metrics()
        self.assertEqual(A.metric(after, "sparkrelay_streams_opened_total") -
                         A.metric(before, "sparkrelay_streams_opened_total"), 1,
                         "a stream was opened for the refused executor")
        # The lease is unharmed: a new executor from inside still works.
        s2 = self.keep(connect_from("127.0.0.1", H.POOL_HOST, ports["blockManager"]))
        self.assertIsNone(echo_on(s2, seed=12))


class TenantsByTokenTest(RoutingCase):

    def test_tokens_pick_tenant_and_pool_and_unknown_tokens_are_refused(self):
        before = self.metrics()
        sa = self.start_sidecar("sc-a", TOKEN_A)
        sb = self.start_sidecar("sc-b", TOKEN_B)
        _, pa = self.leased(sa)
        _, pb = self.leased(sb)
        self.assert_in_range(pa, self.range_a, "tenant ta's lease")
        self.assert_in_range(pb, self.range_b, "tenant tb's lease")
        leases = {l["tenant"]: l for l in self.api_json("GET", "/v1/leases")}
        self.assertEqual(set(leases), {"ta", "tb"}, leases)
        self.assertEqual((leases["ta"]["pool"], leases["ta"]["route"]), ("a", "a-any"))
        self.assertEqual((leases["tb"]["pool"], leases["tb"]["route"]), ("b", "b-any"))
        self.driver(pa)
        self.driver(pb)
        self.assertIsNone(X.echo_once(H.POOL_HOST, pa["driver"], seed=21))
        self.assertIsNone(X.echo_once(H.POOL_HOST, pb["driver"], seed=22))
        sx = self.start_sidecar("sc-x", TOKEN_X, SLOW_BACKOFF)
        line = self.assert_refused_registration(sx, "unauthorized")
        self.assertNotIn(TOKEN_X, "".join(line) + self.relay.log_text(),
                         "the relay logged the bearer token")
        self.wait_refused(before, "reg_auth", 1)
        self.assertEqual(len(self.api_json("GET", "/v1/leases")), 2)


class TenantIsolationTest(RoutingCase):

    def test_another_tenants_resume_token_does_not_get_the_lease(self):
        sa = self.start_sidecar("sc-a", TOKEN_A)
        ja, pa = self.leased(sa)
        self.driver(pa)
        e = X.Echoer(H.POOL_HOST, pa["driver"])
        self.addCleanup(e.close)
        self.assertIsNone(e.check())
        self.assertTrue(X.wait_for(lambda: os.path.exists(sa.state_file), 5),
                        "sidecar a wrote no state file")
        before = self.metrics()
        # Tenant b's sidecar starts with tenant a's resume token.
        thief = self.sidecar("sc-b-thief", {"tunnel": {"token": TOKEN_B}})
        shutil.copyfile(sa.state_file, thief.state_file)
        thief.start()
        self.assertTrue(X.wait_log(self.relay, "registration refused: unknown_lease", 15),
                        "relay did not refuse the stolen resume token with unknown_lease")
        self.assertTrue(X.wait_log(thief.proc, "relay refused registration: unknown_lease", 5))
        jb, pb = self.leased(thief)
        self.assertNotEqual(jb["lease"], ja["lease"], "tenant tb got tenant ta's lease")
        self.assert_in_range(pb, self.range_b, "the thief's fresh lease")
        self.assertFalse(set(pb.values()) & set(pa.values()))
        self.wait_refused(before, "reg_resume", 1)
        m = self.metrics()
        self.assertEqual(A.metric(m, "sparkrelay_leases_resumed_total"),
                         A.metric(before, "sparkrelay_leases_resumed_total"))
        # Tenant a's lease is untouched: same tunnel, same ports, still working.
        leases = {l["id"]: l for l in self.api_json("GET", "/v1/leases")}
        la = leases.get(ja["lease"])
        self.assertIsNotNone(la, "tenant ta's lease is gone: %r" % leases)
        self.assertEqual(la["tenant"], "ta")
        self.assertIs(la["attached"], True)
        self.assertEqual({k: int(v) for k, v in la["ports"].items()}, pa)
        self.assertEqual(leases[jb["lease"]]["tenant"], "tb")
        self.assertIsNone(e.check())
        self.assertIsNone(X.echo_once(H.POOL_HOST, pa["blockManager"], seed=31))
        self.assertEqual(sa.lease()["lease"], ja["lease"])


class TenantLeaseLimitTest(RoutingCase):
    a_limits = {"leases": 1}

    def test_second_lease_of_a_tenant_is_refused(self):
        sa = self.start_sidecar("sc-a1", TOKEN_A)
        _, pa = self.leased(sa)
        before = self.metrics()
        sa2 = self.start_sidecar("sc-a2", TOKEN_A, SLOW_BACKOFF)
        self.assert_refused_registration(sa2, "too_many_leases")
        self.wait_refused(before, "reg_limit", 1)
        leases = self.api_json("GET", "/v1/leases")
        self.assertEqual([l["tenant"] for l in leases], ["ta"], leases)
        # The limit is per tenant: tenant tb still gets a lease.
        sb = self.start_sidecar("sc-b", TOKEN_B)
        self.leased(sb)
        self.driver(pa)
        self.assertIsNone(X.echo_once(H.POOL_HOST, pa["driver"], seed=41))


class ReloadBadFileTest(RoutingCase):

    def test_bad_reload_is_refused_and_the_transfer_is_untouched(self):
        sa = self.start_sidecar("sc-a", TOKEN_A)
        _, pa = self.leased(sa)
        self.driver(pa)
        before = self.metrics()
        t = PacedTransfer(H.POOL_HOST, pa["driver"], seed=51).start()
        self.addCleanup(t.close)
        self.assertTrue(t.wait_progress(1 * MiB, 20), "transfer did not start")
        # SIGHUP with a file that is not JSON.
        self.write_cfg('{"relay": {"listen": \n')
        line = self.sighup("reload refused")
        self.assertIn(os.path.basename(self.stack.relay_cfg_path), line)
        # ctl reload with a route naming a pool that does not exist.
        cfg = self.new_cfg()
        cfg["relay"]["routes"][2]["pool"] = "nope"
        self.write_cfg(cfg)
        rc, out, err = self.ctl("reload")
        self.assertEqual(rc, 1, "ctl reload of a bad file: rc %d\n%s%s" % (rc, out, err))
        self.assertIn("relay.routes[2].pool", err)
        self.assertIn('"nope"', err)
        self.assertLess(t.got, t.n, "the transfer finished before the reloads: nothing was "
                        "tested during a transfer")
        self.assertTrue(self.relay.alive())
        self.assertIsNone(t.finish(60))
        m = self.metrics()
        self.assertEqual(self.reloads(m, "failed") - self.reloads(before, "failed"), 2)
        self.assertEqual(self.reloads(m, "ok") - self.reloads(before, "ok"), 0)
        self.assertEqual(X.log_count(self.relay, "reload refused"), 2)
        # The old configuration is in force and new connections work.
        self.assertEqual(self.ctl("ready")[0], 0)
        self.assertEqual(self.api_json("GET", "/v1/config")["relay"]["routes"][2]["pool"], "b")
        self.assertIsNone(X.echo_once(H.POOL_HOST, pa["blockManager"], seed=52))
        sb = self.start_sidecar("sc-b", TOKEN_B)
        _, pb = self.leased(sb)
        self.assert_in_range(pb, self.range_b, "tenant tb's lease after the refused reload")


class ReloadNewLimitsTest(RoutingCase):
    a_limits = {"connections": 100}

    def test_good_reload_applies_new_limits_to_new_connections(self):
        sa = self.start_sidecar("sc-a", TOKEN_A)
        _, pa = self.leased(sa)
        self.driver(pa)
        before = self.metrics()
        t = PacedTransfer(H.POOL_HOST, pa["driver"], seed=61).start()
        self.addCleanup(t.close)
        self.assertTrue(t.wait_progress(1 * MiB, 20), "transfer did not start")
        cfg = self.new_cfg()
        cfg["relay"]["tenants"][0]["limits"]["connections"] = 2
        self.write_cfg(cfg)
        self.sighup("configuration reloaded")
        self.assertLess(t.got, t.n, "the transfer finished before the reload: nothing was "
                        "tested during a transfer")
        self.assertIsNone(t.finish(60))
        m = self.metrics()
        self.assertEqual(self.reloads(m, "ok") - self.reloads(before, "ok"), 1)
        self.assertEqual(self.reloads(m, "failed") - self.reloads(before, "failed"), 0)
        self.assertEqual(self.api_json("GET", "/v1/config")["relay"]["tenants"][0]["limits"]
                         ["connections"], 2)
        # The transfer's connection is still open: with a second one the
        # tenant is at its new limit of 2.
        e2 = X.Echoer(H.POOL_HOST, pa["blockManager"], seed=62)
        self.addCleanup(e2.close)
        self.assertIsNone(e2.check())
        # A lease made after the reload: its first connection is the
        # tenant's third, refused.
        sa2 = self.start_sidecar("sc-a2", TOKEN_A)
        _, pa2 = self.leased(sa2)
        drv2 = self.driver(pa2)
        before3 = self.metrics()
        self.assert_third_refused(pa2["driver"], "on a lease made after the reload")
        self.wait_refused(before3, "tenant_limit", 1)
        self.assertEqual(len(drv2.all_conns()), 0, "the refused executor reached the driver")
        # The lease made before the reload: a third connection is refused too.
        before4 = self.metrics()
        self.assert_third_refused(pa["driver"], "on the lease made before the reload")
        self.wait_refused(before4, "tenant_limit", 1)
        # Both open connections still work.
        self.assertIsNone(e2.check())

    def assert_third_refused(self, port, where):
        n = X.log_count(self.relay, "refused, tenant ta is at its limit of 2 connections")
        end, got = refused_outcome(H.POOL_HOST, port)
        self.assertIn(end, ("reset", "eof"), "the 3rd concurrent connection of tenant ta %s "
                      "was not refused after a reload lowered the limit to 2 (%s, %d bytes "
                      "echoed)" % (where, end, got))
        self.assertTrue(X.wait_log(self.relay, "refused, tenant ta is at its limit of 2 "
                                   "connections", 5, count=n + 1))


class RouteExplainTest(RoutingCase):

    def test_ctl_route_explain_names_tenant_route_and_pool(self):
        sa = self.start_sidecar("sc-a", TOKEN_A)
        self.leased(sa)
        live = self.api_json("GET", "/v1/leases")[0]
        lo_a, hi_a = self.range_a
        lo_b, hi_b = self.range_b
        rc, out, err = self.ctl("route", "explain", "--token", TOKEN_A, "--app", "it-test",
                                "--addr", "127.0.0.1")
        self.assertEqual(rc, 0, err)
        self.assertNotIn(TOKEN_A, out, "route explain shows the token")
        self.assertIn('tenant "ta" (relay.tenants[0])', out, out)
        self.assertIn('not route "a-etl"', out, out)
        self.assertIn('route "a-any" (relay.routes[1])', out, out)
        self.assertIn('pool "a"', out, out)
        self.assertIn("ports %d..%d on %s" % (lo_a, hi_a, H.POOL_HOST), out)
        self.assertIn("executors: any address may connect", out)
        # What explain says agrees with what the live sidecar got.
        self.assertEqual((live["tenant"], live["route"], live["pool"]), ("ta", "a-any", "a"))
        rc, out, err = self.ctl("route", "explain", "--token", TOKEN_A, "--app", "etl-nightly",
                                "--addr", "127.0.0.1")
        self.assertEqual(rc, 0, err)
        self.assertIn('route "a-etl" (relay.routes[0])', out, out)
        self.assertIn('pool "b"', out, out)
        self.assertIn("ports %d..%d" % (lo_b, hi_b), out)
        rc, out, err = self.ctl("route", "explain", "--token", TOKEN_B, "--app", "it-test",
                                "--addr", "127.0.0.1")
        self.assertEqual(rc, 0, err)
        self.assertIn('not tenant "ta"', out, out)
        self.assertIn('tenant "tb" (relay.tenants[1])', out, out)
        self.assertIn('route "b-any"', out, out)
        self.assertIn('pool "b"', out, out)
        rc, out, err = self.ctl("route", "explain", "--token", TOKEN_X, "--app", "it-test",
                                "--addr", "127.0.0.1")
        self.assertEqual(rc, 1, err)  # the registration would be refused
        self.assertIn("none matches", out, out)
        self.assertNotIn('pool "', out, out)


class PoolRemovedByReloadTest(RoutingCase):

    def test_removed_pool_keeps_its_lease_and_makes_no_new_ones(self):
        sb = self.start_sidecar("sc-b", TOKEN_B)
        jb, pb = self.leased(sb)
        self.assert_in_range(pb, self.range_b, "tenant tb's lease")
        self.driver(pb)
        e = X.Echoer(H.POOL_HOST, pb["driver"])
        self.addCleanup(e.close)
        self.assertIsNone(e.check())
        cfg = self.new_cfg()
        cfg["relay"]["pools"] = [p for p in cfg["relay"]["pools"] if p["name"] != "b"]
        cfg["relay"]["routes"] = [r for r in cfg["relay"]["routes"] if r["pool"] != "b"]
        self.write_cfg(cfg)
        rc, out, err = self.ctl("reload")
        self.assertEqual(rc, 0, "ctl reload: %s%s" % (out, err))
        self.assertIn("reloaded", out)
        self.assertEqual([p["name"] for p in self.api_json("GET", "/v1/config")["relay"]
                          ["pools"]], ["a"])
        # The existing lease and its connections keep working.
        self.assertIsNone(e.check())
        self.assertIsNone(X.echo_once(H.POOL_HOST, pb["blockManager"], seed=81))
        self.assertIsNone(X.echo_once(H.POOL_HOST, pb["driver"], seed=82))
        leases = {l["id"]: l for l in self.api_json("GET", "/v1/leases")}
        self.assertIn(jb["lease"], leases)
        self.assertEqual(leases[jb["lease"]]["pool"], "b")
        self.assertIs(leases[jb["lease"]]["attached"], True)
        # A new sidecar of tenant tb has no route any more.
        before = self.metrics()
        sb2 = self.start_sidecar("sc-b2", TOKEN_B, SLOW_BACKOFF)
        self.assert_refused_registration(sb2, "no_route")
        self.wait_refused(before, "reg_route", 1)
        self.assertIsNone(e.check())


if __name__ == "__main__":
    H.main()
