"""An executor that connects while no driver listens: the most common setup
mistake (the notebook's Spark session not started, or started without the
lease's settings). It was reset correctly, but nothing said so:
refused_total{reason="stream"} stayed 0 and the sidecar logged at debug
level only. Now:

- the relay counts it as sparkrelay_refused_total{reason="driver"}, per
  lease in /v1/leases (driver_refused) and `ctl leases` (DRIVER_REFUSED),
  and logs a line (at most one per 10 s);
- the sidecar logs `conn=N peer=A: cannot connect to driver port P: ...` at
  the default level, at most one line per 10 s.

And executors that wait for a missing tunnel are served in arrival order,
not newest first (the queue was a stack).
"""

import json
import select
import socket
import time

import harness as H
import harness_extra as X
import test_admin as A

KiB = H.KiB


class DriverRefusalTest(A.AdminCase):
    # the documented default level: the lines must show without debug
    extra_tunnel = {"log": {"level": "info"}}
    extra_relay = {"log": {"level": "info"}}

    def test_no_driver_is_counted_logged_and_shown_per_lease(self):
        port = self.stack.ports["driver"]
        before = A.metric(self.metrics(), "sparkrelay_refused_total", reason="driver")
        n = 5
        for i in range(n):
            s = socket.socket()
            s.settimeout(10)
            try:
                # on loopback the reset may beat connect() back
                s.connect((self.stack.exec_host, port))
                s.sendall(b"hello %d" % i)
                how, _, got = X.closed_within(s, 10)
            except ConnectionResetError:
                how, got = "reset", 0
            finally:
                s.close()
            self.assertNotEqual(how, "timeout", "executor %d not closed with no driver" % i)
            self.assertEqual(got, 0)
        ok = X.wait_for(lambda: A.metric(self.metrics(), "sparkrelay_refused_total",
                                         reason="driver") >= before + n, 10)
        self.assertTrue(ok, "refused_total{reason=\"driver\"} did not count %d refusals" % n)
        self.assertEqual(A.metric(self.metrics(), "sparkrelay_refused_total", reason="driver"),
                         before + n)
        self.assertEqual(A.metric(self.metrics(), "sparkrelay_refused_total", reason="stream"),
                         0, "a sidecar's refusal is not a stream the relay could not open")

        leases = self.api_json("GET", "/v1/leases")
        self.assertEqual([l["driver_refused"] for l in leases], [n], leases)
        rc, out, err = self.ctl("leases")
        self.assertEqual(rc, 0, err)
        head, row = out.splitlines()[0].split(), out.splitlines()[1].split()
        self.assertEqual(head[-1], "DRIVER_REFUSED", out)
        self.assertEqual(row[-1], str(n), out)
        rc, out, err = self.ctl("-o", "json", "leases")
        self.assertEqual(json.loads(out)[0]["driver_refused"], n)

        # one line each, not one per connection (rate-limited), at the default level
        sc = self.stack.tunnel
        lines = sc.grep("cannot connect to driver port %d" % port)
        self.assertEqual(len(lines), 1, "sidecar lines: %r" % lines)
        self.assertIn(" WARN ", lines[0])
        self.assertIn("Connection refused", lines[0])
        self.assertRegex(lines[0], r"conn=\d+ peer=127\.0\.0\.\d+:\d+: cannot connect")
        lines = self.relay.grep("the sidecar refused the stream")
        self.assertEqual(len(lines), 1, "relay lines: %r" % lines)
        self.assertIn("port=%d" % port, lines[0])

        # once the driver listens, the same executor gets through and nothing more counts
        self.stack.start_driver()
        self.assertIsNone(X.echo_once(self.stack.exec_host, port, seed=3))
        self.assertEqual(A.metric(self.metrics(), "sparkrelay_refused_total", reason="driver"),
                         before + n)


class DriverSilentTest(A.AdminCase):
    """A driver port whose listen queue is full: the kernel drops the
    sidecar's SYN, so its connect neither completes nor fails. The sidecar
    gives up after driver_connect_timeout_ms and the executor is closed; it
    must not hang. (On loopback a connect usually completes at once, which
    the sidecar checks for; this is the other path.)"""
    extra_tunnel = {"log": {"level": "info"}, "tunnel": {"driver_connect_timeout_ms": 600}}
    extra_relay = {"log": {"level": "info"}}

    def test_driver_that_never_accepts_times_out(self):
        port = self.stack.ports["driver"]
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(0)
        fillers = []
        try:
            for _ in range(2):  # one fills the queue of a listen(0), one more to be sure
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(("127.0.0.1", port))
                fillers.append(f)
                if len(fillers) == 1:  # in the queue before the next one tries
                    select.select([], [f], [], 5)
            probe = socket.socket()
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", port))
                full = False
            except (socket.timeout, BlockingIOError):
                full = True
            finally:
                probe.close()
            if not full:
                self.skipTest("the kernel completed a connect beyond the listen queue")

            t0 = time.monotonic()
            s = socket.socket()
            s.settimeout(10)
            try:
                s.connect((self.stack.exec_host, port))
                s.sendall(b"hello")
                how, _, got = X.closed_within(s, 10)
            finally:
                s.close()
            elapsed = time.monotonic() - t0
            self.assertNotEqual(how, "timeout", "executor not closed while the driver hangs")
            self.assertEqual(got, 0)
            self.assertGreaterEqual(elapsed, 0.5, "closed before the connect timeout")
            lines = self.stack.tunnel.grep("cannot connect to driver port %d" % port)
            self.assertEqual(len(lines), 1, "sidecar lines: %r" % lines)
            self.assertIn("Connection timed out", lines[0])
        finally:
            for f in fillers:
                f.close()
            ls.close()
        # a driver that does accept is reached as before
        self.stack.start_driver()
        self.assertIsNone(X.echo_once(self.stack.exec_host, port, seed=4))


def h_first_line(dc):
    """Record the first line the executor sent (its arrival number), then echo."""
    buf = b""
    while b"\n" not in buf:
        b = dc.recv(64)
        if not b:
            break
        buf += b
    dc.info["first"] = buf.split(b"\n")[0]
    dc.sendall(buf)
    H.h_echo(dc)


class PendingOrderTest(X.XCase):

    def test_waiting_executors_are_served_in_arrival_order(self):
        self.stack.start_driver(default=h_first_line)
        host, port = self.stack.exec_host, self.stack.ports["driver"]
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        n = 6
        socks = []
        for i in range(n):
            waiting = X.log_count(self.relay, "waiting for the tunnel")
            s = H.connect(host, port, timeout=10)
            self.stack.execs.append(s)
            s.sendall(b"%d\n" % i)
            socks.append(s)
            # the relay has queued it before the next one arrives
            self.assertTrue(X.wait_log(self.relay, "waiting for the tunnel", 5,
                                       count=waiting + 1))
        self.restart_stack_sidecar("tunnel-2")
        self.assertEqual(self.stack.driver.wait_accepted(n, 15), n)
        for i, s in enumerate(socks):
            end, _, _, data = H.recv_exact(s, len(b"%d\n" % i))
            self.assertEqual((end, data), ("ok", b"%d\n" % i))
        order = [dc.info.get("first") for dc in self.stack.driver.all_conns()]
        self.assertEqual(order, [b"%d" % i for i in range(n)],
                         "the driver saw the waiting executors in this order")


if __name__ == "__main__":
    H.main()
