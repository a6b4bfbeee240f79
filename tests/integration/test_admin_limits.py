"""Admin API and sidecar status listener: no client holds them, nor the
process's file descriptors, by opening connections or sending slowly.

Before these limits, every accepted admin connection stayed open as long as
it sent a byte within evhttp's 10 s inactivity timeout, and nothing bounded
their number: a loop of idle sockets exhausted the relay's descriptors.
Now at most relay.admin.max_connections are open at once (a new one closes
the oldest, of its own address when that address holds half: refusing the
newcomer instead let a few idle connections keep every health probe out),
each connection carries one request and is
closed relay.admin.request_timeout_ms after its accept however slowly it
sends, and both closes are counted in /metrics. The sidecar's status
listener has the same limits with fixed values (16 connections, 10 s).
And what the admin API answers to a bad configuration file does not quote
the file's secrets.
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import harness as H
import harness_extra as X

TOKEN = "it-limits-" + os.urandom(8).hex()
HTTP_TIMEOUT = 10.0


def http(method, url, token=None, timeout=HTTP_TIMEOUT):
    """(status, headers, text). Never raises for an HTTP status."""
    headers = {"Authorization": "Bearer " + token} if token else {}
    req = urllib.request.Request(url, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def metric_value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no sample %s in the metrics" % name)


def idle_conns(port, n, src="127.0.0.1"):
    """n connections from address src that send nothing (all connected
    before returning)."""
    out = []
    try:
        for _ in range(n):
            out.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                                source_address=(src, 0)))
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def still_open(s):
    """True if the server has neither closed nor reset s (nothing to read)."""
    s.setblocking(False)
    try:
        return s.recv(1) != b""  # EOF: closed
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class LimitsCase(X.XCase):
    """A relay whose admin API has a small cap, and the stack's sidecar with
    a status listener."""
    max_conns = 8
    timeout_ms = 5000

    def setUp(self):
        self.admin_port = H.free_port()
        self.status_port = H.free_port()
        self.relay_overrides = {"relay": {"admin": {
            "listen": "127.0.0.1:%d" % self.admin_port, "token": TOKEN,
            "max_connections": self.max_conns, "request_timeout_ms": self.timeout_ms}}}
        self.tunnel_overrides = {"tunnel": {"admin": {
            "listen": "127.0.0.1:%d" % self.status_port}}}
        self.url = "http://127.0.0.1:%d" % self.admin_port
        self.status_url = "http://127.0.0.1:%d" % self.status_port
        self.socks = []
        super().setUp()
        self.addCleanup(self._close_socks)

    def prepare(self):
        ok = X.wait_for(lambda: self._healthz(self.url), 10)
        self.assertTrue(ok, "admin API did not answer /healthz")
        ok = X.wait_for(lambda: self._healthz(self.status_url), 10)
        self.assertTrue(ok, "status listener did not answer /healthz")

    def _healthz(self, base):
        try:
            return http("GET", base + "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def _close_socks(self):
        for s in self.socks:
            s.close()
        self.socks = []

    def metrics(self):
        code, _, text = http("GET", self.url + "/metrics", TOKEN)
        self.assertEqual(code, 200, "GET /metrics: %d %s" % (code, text))
        return text

    def assert_closed_soon(self, s, within, what):
        end, took, _ = X.closed_within(s, within)
        self.assertIn(end, ("eof", "reset"),
                      "%s: still open after %.1f s" % (what, within))
        return took

    def oldest_make_room(self, port, cap, what, settled=None):
        """Idle connections from one address: only the newest cap/2 stay
        open, and a request still gets its answer at once, then again with
        cap idle connections from two addresses."""
        half = cap // 2
        self.socks = idle_conns(port, cap)
        time.sleep(0.3)  # let the server accept them all
        ok = X.wait_for(lambda: not any(still_open(s) for s in self.socks[:half]), 2)
        self.assertTrue(ok, "%s: %d idle connections from one address, the oldest %d not "
                        "closed" % (what, cap, half))
        for i, s in enumerate(self.socks[half:]):
            self.assertTrue(still_open(s), "%s: connection %d of the newest %d was closed"
                            % (what, i + 1, half))
        base = "http://127.0.0.1:%d" % port
        for i in range(3):
            t0 = time.monotonic()
            self.assertTrue(self._healthz(base), "%s: /healthz %d with %d idle connections "
                            "open from its address" % (what, i + 1, half))
            self.assertLess(time.monotonic() - t0, 1.0)
        self._close_socks()
        # the server must have seen them closed, or the next connections
        # would push out their stale records
        if settled:
            self.assertTrue(X.wait_for(settled, 5), "%s: closed connections still counted"
                            % what)
        else:
            time.sleep(0.3)
        self.socks = idle_conns(port, half, "127.0.0.2") + idle_conns(port, half, "127.0.0.3")
        time.sleep(0.3)
        self.assertTrue(all(still_open(s) for s in self.socks),
                        "%s: %d idle connections from each of two addresses" % (what, half))
        self.assertTrue(self._healthz(base), "%s: /healthz with %d idle connections open"
                        % (what, cap))
        self._close_socks()

    def one_address_cannot_push_out_another(self, port, cap, what):
        """cap/2 idle connections from one address, then many more from
        another: the first address's all stay open."""
        half = cap // 2
        kept = idle_conns(port, half, "127.0.0.3")
        self.socks = list(kept)
        time.sleep(0.2)
        for _ in range(3):
            self.socks += idle_conns(port, cap, "127.0.0.2")
            time.sleep(0.2)
        for i, s in enumerate(kept):
            self.assertTrue(still_open(s), "%s: connection %d from 127.0.0.3 was closed "
                            "by 127.0.0.2's" % (what, i + 1))
        self._close_socks()


class AdminCapTest(LimitsCase):

    def test_a_new_connection_closes_the_oldest_and_is_counted(self):
        before = self.metrics()
        self.oldest_make_room(self.admin_port, self.max_conns, "admin API", settled=lambda:
                              metric_value(self.metrics(),
                                           "sparkrelay_admin_connections_active") == 1)
        after = self.metrics()
        # 4 pushed out by the last 4 of 8 from one address, 1 by the first
        # probe (the others find 3 open), 1 by the probe beside 4 + 4
        name = "sparkrelay_admin_connections_evicted_total"
        self.assertEqual(metric_value(after, name) - metric_value(before, name), 4 + 1 + 1,
                         "evicted")
        self.assertEqual(metric_value(after, "sparkrelay_admin_connections_refused_total"), 0)
        self.assertGreaterEqual(metric_value(after, "sparkrelay_admin_connections_total") -
                                metric_value(before, "sparkrelay_admin_connections_total"),
                                2 * self.max_conns + 3)
        self.assertTrue(X.wait_log(self.relay, "closing the oldest to make room", 5),
                        "the relay did not log reaching the cap")

    def test_one_address_cannot_push_out_another(self):
        self.one_address_cannot_push_out_another(self.admin_port, self.max_conns, "admin API")

    def test_a_flood_of_idle_connections_does_not_hold_descriptors(self):
        pid = self.relay.p.pid
        base = open_fds(pid)
        socks = []
        try:
            for _ in range(150):
                socks.append(socket.create_connection(("127.0.0.1", self.admin_port),
                                                      timeout=5))
            # the relay closes the ones over the cap as it accepts them
            def n_open():
                return sum(1 for s in socks if still_open(s))
            settled = X.wait_for(lambda: n_open() <= self.max_conns, 5)
            self.assertTrue(settled, "%d of 150 idle admin connections still open after "
                            "5 s (cap %d)" % (n_open(), self.max_conns))
            self.assertLessEqual(open_fds(pid), base + self.max_conns + 2,
                                 "relay holds %d descriptors (%d before, cap %d)" %
                                 (open_fds(pid), base, self.max_conns))
        finally:
            for s in socks:
                s.close()
        ok = X.wait_for(lambda: self._healthz(self.url), 5)
        self.assertTrue(ok, "admin API did not serve after the flood")

    def test_each_connection_carries_one_request(self):
        s = socket.create_connection(("127.0.0.1", self.admin_port), timeout=5)
        self.socks.append(s)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        end, took, got = X.closed_within(s, 3.0)
        self.assertEqual(end, "eof", "a keep-alive request left the connection open")
        s2 = socket.create_connection(("127.0.0.1", self.admin_port), timeout=5)
        self.socks.append(s2)
        s2.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = s2.recv(4096)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:64])
        self.assertIn(b"\r\nConnection: close\r\n", head)


class AdminSlowDripTest(LimitsCase):
    timeout_ms = 1500

    def test_a_slow_drip_request_is_closed_at_the_deadline(self):
        before = self.metrics()
        s = socket.create_connection(("127.0.0.1", self.admin_port), timeout=5)
        self.socks.append(s)
        # One byte every 0.25 s: far inside evhttp's inactivity timeout, so
        # only an absolute deadline can end it.
        req = b"GET /v1/leases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + \
            TOKEN.encode() + b"\r\nX-Pad: " + b"a" * 200
        t0 = time.monotonic()
        closed_at = None
        for i in range(len(req)):
            if time.monotonic() - t0 > 6.0:
                break
            try:
                s.sendall(req[i:i + 1])
            except OSError:
                closed_at = time.monotonic() - t0
                break
            if not still_open(s):
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.25)
        self.assertIsNotNone(closed_at, "a connection dripping a byte every 0.25 s was "
                             "still open after 6 s (deadline 1.5 s)")
        self.assertGreater(closed_at, 1.0, "closed before its deadline")
        after = self.metrics()
        name = "sparkrelay_admin_connections_timed_out_total"
        self.assertEqual(metric_value(after, name) - metric_value(before, name), 1)
        # A prompt request on a new connection is served as before.
        self.assertEqual(http("GET", self.url + "/v1/leases", TOKEN)[0], 200)

    def test_a_client_that_never_reads_the_answer_does_not_keep_the_connection(self):
        # The request is complete, but the deadline also covers the answer:
        # a client that sends requests it never reads holds nothing.
        s = socket.create_connection(("127.0.0.1", self.admin_port), timeout=5)
        self.socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  TOKEN.encode() + b"\r\n\r\n")
        took = self.assert_closed_soon(s, 5.0, "a connection that never reads")
        self.assertLess(took, 5.0)


class ReloadErrorsDoNotQuoteSecretsTest(LimitsCase):
    """A configuration file whose secret string is cut by a newline: jansson
    quoted up to 20 bytes of it ("near '..."), and that text reached the
    400 answer of POST /v1/reload, the relay log and check-config."""

    def test_a_broken_secret_is_not_quoted_anywhere(self):
        secret = "Zq" + os.urandom(4).hex()  # 10 bytes: short enough to be quoted
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["auth_token"] = "@@SECRET@@"
        text = json.dumps(cfg, indent=2).replace('"@@SECRET@@"', '"' + secret + '\n"')
        path = self.stack.relay_cfg_path
        with open(path) as f:
            good = f.read()
        with open(path, "w") as f:
            f.write(text)
        try:
            code, _, body = http("POST", self.url + "/v1/reload", TOKEN)
            r = subprocess.run([H.BIN, "check-config", path], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
        finally:
            with open(path, "w") as f:
                f.write(good)
        self.assertEqual(code, 400, body)
        self.assertIn("syntax error: unexpected newline", body)
        self.assertNotIn(secret, body)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("syntax error: unexpected newline", r.stderr)
        self.assertRegex(r.stderr, r"relay\.json:\d+:\d+: ")
        self.assertNotIn(secret, r.stderr + r.stdout)
        self.assertTrue(X.wait_log(self.relay, "reload refused", 5))
        self.assertEqual(self.relay.grep(secret), [], "the relay log quotes the secret")
        # the running configuration stayed
        self.assertTrue(self._healthz(self.url))


class StatusListenerTest(LimitsCase):

    def test_status_connections_over_16_close_the_oldest(self):
        self.oldest_make_room(self.status_port, 16, "status listener")
        self.one_address_cannot_push_out_another(self.status_port, 16, "status listener")
        ok = X.wait_for(lambda: self._healthz(self.status_url), 5)
        self.assertTrue(ok, "status listener did not serve after the idle connections closed")
        code, hdr, text = http("GET", self.status_url + "/status")
        self.assertEqual(code, 200)
        self.assertEqual(hdr.get("Connection"), "close")
        self.assertTrue(json.loads(text)["have_lease"])

    def test_status_slow_drip_is_closed_within_10s(self):
        s = socket.create_connection(("127.0.0.1", self.status_port), timeout=5)
        self.socks.append(s)
        req = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
        t0 = time.monotonic()
        closed_at = None
        for i in range(len(req)):
            if time.monotonic() - t0 > 14.0:
                break
            try:
                s.sendall(req[i:i + 1])
            except OSError:
                closed_at = time.monotonic() - t0
                break
            if not still_open(s):
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.5)
        self.assertIsNotNone(closed_at, "a status connection dripping a byte every 0.5 s "
                             "was still open after 14 s (deadline 10 s)")
        self.assertGreater(closed_at, 8.0, "closed before its deadline")
        self.assertTrue(self._healthz(self.status_url))


if __name__ == "__main__":
    H.main()
