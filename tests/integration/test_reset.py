"""An abortive close is carried as a reset (ECONNRESET on the other side, not
a clean EOF), touches no other connection, and churn does not kill the tunnel."""

import time

import harness
from harness import KiB, h_echo, h_script, recv_exact

RESET_WITHIN = 5.0


class ResetTest(harness.ITCase):

    def prepare(self):
        self.drv = self.stack.start_driver(handlers={"driver": h_script,
                                                     "blockManager": h_echo})
        self.echo_sock = self.stack.executor("blockManager", timeout=5)
        self.echo_n = 0
        self.echo()

    def echo(self, size=4 * KiB):
        """An exchange on the parallel connection, which must never be disturbed."""
        self.echo_n += 1
        m = harness.message(self.echo_n, size, seed=5)
        self.echo_sock.sendall(m)
        end, got, _, data = recv_exact(self.echo_sock, size)
        self.assertEqual(end, "ok", "parallel echo #%d ended with %s after %d bytes" %
                         (self.echo_n, end, got))
        self.assertEqual(data, m, "parallel echo #%d differs" % self.echo_n)

    def connected_pair(self):
        """An executor connection to the scripted driver port, proven end to end."""
        s = self.stack.executor("driver", timeout=10)
        s.sendall(b"ping-from-executor")
        dc = self.drv.next_conn(10, port="driver")
        r = dc.do("recv_exact", 18, timeout=10)
        self.assertEqual((r[0], r[3]), ("ok", b"ping-from-executor"))
        self.assertEqual(dc.do("sendbytes", b"pong-from-driver")[0], "ok")
        end, _, _, data = recv_exact(s, 16)
        self.assertEqual((end, data), ("ok", b"pong-from-driver"))
        return s, dc

    def test_executor_abort_is_a_reset_at_the_driver(self):
        s, dc = self.connected_pair()
        self.assertEqual(dc.do("timeout", RESET_WITHIN + 5)[0], "ok")
        dc.submit("recv_to_eof", 1 * KiB)
        time.sleep(0.1)
        t0 = time.monotonic()
        harness.abort(s)
        r = dc.result(RESET_WITHIN + 6)
        took = time.monotonic() - t0
        self.assertEqual(r[0], "reset", "driver side after the executor's abortive close: "
                         "%s after %.2f s (want ECONNRESET, not a clean EOF)" % (r[0], took))
        self.assertLess(took, RESET_WITHIN)
        self.assertEqual(r[1], 0, "bytes the driver received after the ping")
        self.echo()

    def test_driver_abort_is_a_reset_at_the_executor(self):
        s, dc = self.connected_pair()
        s.settimeout(RESET_WITHIN + 5)
        t0 = time.monotonic()
        self.assertEqual(dc.do("abort")[0], "ok")
        end, got, _ = harness.recv_to_eof(s, 1 * KiB)
        took = time.monotonic() - t0
        self.assertEqual(end, "reset", "executor side after the driver's abortive close: "
                         "%s after %.2f s (want ECONNRESET, not a clean EOF)" % (end, took))
        self.assertLess(took, RESET_WITHIN)
        self.assertEqual(got, 0)
        self.echo()

    def test_200_resets_in_a_tight_loop_leave_the_tunnel_working(self):
        # every churned connection goes to the echo port
        k = 200
        t0 = time.monotonic()
        for i in range(k):
            s = self.stack.executor("blockManager", timeout=10)
            mode = i % 3
            if mode >= 1:
                s.sendall(harness.message(i, 100, seed=6))
            if mode == 2:
                end, _, _, data = recv_exact(s, 100)
                self.assertEqual((end, data), ("ok", harness.message(i, 100, seed=6)),
                                 "echo on churn connection %d" % i)
            harness.abort(s)
            self.stack.execs.remove(s)
            if i % 50 == 49:
                self.echo()
        churn = time.monotonic() - t0
        self.echo()
        # a normal exchange on a new connection
        s = self.stack.executor("blockManager", timeout=10)
        m = harness.message(9999, 64 * KiB, seed=6)
        s.sendall(m)
        end, got, _, data = recv_exact(s, len(m))
        self.assertEqual((end, data == m), ("ok", True), "echo on a new connection after the "
                         "churn (%s after %d bytes)" % (end, got))
        s.close()
        self.stack.execs.remove(s)
        # no driver connection of the churn is left open
        churned = [dc for dc in self.drv.all_conns() if dc.port_name == "blockManager"][1:]
        left = self.drv.wait_all_done(15, churned)
        self.assertEqual(len(left), 0, "%d of %d driver connections still open 15 s after "
                         "their executors reset" % (len(left), len(churned)))
        self.assertLessEqual(len(churned), k + 1)
        echoed = len([i for i in range(k) if i % 3 == 2])
        self.assertGreaterEqual(len(churned), echoed + 1,
                                "the echoed connections all reached the driver")
        ends = {}
        for dc in churned:
            ends[dc.end] = ends.get(dc.end, 0) + 1
        harness.log("200 resets in %.2f s; driver-side ends: %s" % (churn, ends))
        bad = set(ends) - {"reset", "eof"}
        self.assertEqual(bad, set(), "driver handlers ended abnormally: %s" % ends)
        self.echo()

    def test_executors_that_reset_at_once_do_not_end_the_tunnel(self):
        # An executor that resets its connection the moment it is accepted
        # (a crash loop, a port scanner, a client's own timeout) made the
        # relay reset the stream before the sidecar had answered it. The
        # sidecar takes resets before the answer faster than 20/s (after a
        # burst of 200) for a rapid-reset attack, and ended the whole tunnel:
        # anyone who could reach a lease port cut every executor's
        # connection, over and over. The relay now holds such a reset until
        # the answer has come.
        k = 600
        t0 = time.monotonic()
        for _ in range(k // 50):
            # in batches, so that resets come while answers are on the way
            batch = [self.stack.executor("blockManager", timeout=10) for _ in range(50)]
            for s in batch:
                s.sendall(b"x" * 32)
            for s in batch:
                harness.abort(s)
                self.stack.execs.remove(s)
        took = time.monotonic() - t0
        self.assertGreater(k / took, 40, "resets too slow to test the limit (%.0f/s)" %
                           (k / took))
        churned = [dc for dc in self.drv.all_conns() if dc.port_name == "blockManager"][1:]
        left = self.drv.wait_all_done(15, churned)
        self.assertEqual(len(left), 0, "%d driver connections still open 15 s after their "
                         "executors reset" % len(left))
        self.echo()
        self.assertFalse(self.stack.tunnel.grep("rapid reset"),
                         "the sidecar took the executors' resets for an attack")
        self.assertFalse(self.stack.tunnel.grep("tunnel closed"), "the tunnel ended")
        self.assertTrue(self.stack.relay.alive() and self.stack.tunnel.alive())


if __name__ == "__main__":
    harness.main()
