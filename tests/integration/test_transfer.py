"""Bulk transfer through the tunnel is byte-exact: one connection moving
64 MiB in each direction at the same time, and 8 connections in parallel."""

import threading
import time

import harness
from harness import MiB, h_duplex, h_echo, recv_exact, Sender


class TransferTest(harness.ITCase):

    def test_64mib_each_way_at_once_on_one_connection(self):
        n = 64 * MiB
        seed_exec, seed_drv = 0xE1, 0xD1
        drv = self.stack.start_driver(handlers={"driver": h_duplex(seed_drv, n, n)})
        s = self.stack.executor("driver", timeout=60)
        t0 = time.monotonic()
        snd = Sender(s, seed_exec, n)
        snd.start()
        end, got, digest, _ = recv_exact(s, n)
        err = snd.finish(90)
        elapsed = time.monotonic() - t0
        self.assertIsNone(err, "executor -> driver")
        self.assertEqual(end, "ok", "executor read of driver's 64 MiB ended with %s after "
                         "%d bytes" % (end, got))
        dc = drv.next_conn(5, port="driver")
        # the driver's reader finishes independently of ours; wait for it
        deadline = time.monotonic() + 60
        while not dc.info.get("rx_done") and not dc.done.is_set() and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(dc.info.get("rx_done"), "driver did not finish reading: end=%s "
                        "error=%r rx=%d" % (dc.end, dc.error, dc.rx_bytes))
        self.assertEqual(dc.info["rx_end"], "ok", "driver read ended early after %d bytes"
                         % dc.rx_bytes)
        self.assertIsNone(dc.info["tx_error"], "driver -> executor send")
        self.assertExact("executor -> driver", dc.rx_bytes, dc.rx_sha, n, snd.sha)
        self.assertExact("driver -> executor", got, digest, n, dc.tx_sha)
        self.assertEqual(dc.tx_sha, harness.pattern_sha(seed_drv, n))
        s.close()
        self.assertTrue(dc.wait_done(15), "driver side did not see the executor's close")
        self.assertEqual(dc.info["extra"], 0, "driver received bytes beyond the 64 MiB")
        self.assertEqual(len(drv.all_conns()), 1, "one executor connection must be one "
                         "driver connection")
        harness.log("64 MiB each way in %.2f s (%.0f MiB/s per direction)" %
                    (elapsed, 64 / elapsed))

    def test_8_connections_of_4mib_in_parallel(self):
        k, n = 8, 4 * MiB
        drv = self.stack.start_driver(default=h_echo)
        results = [None] * k

        def one(i):
            try:
                s = self.stack.executor("driver" if i % 2 == 0 else "blockManager", timeout=60)
                snd = Sender(s, 1000 + i, n)
                snd.start()
                end, got, digest, _ = recv_exact(s, n)
                err = snd.finish(60)
                results[i] = (err, end, got, digest, snd.sha)
            except BaseException as e:
                results[i] = ("exception %r" % (e,), None, 0, None, None)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(k)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, t0 + 90 - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "transfers still running after 90 s")
        sent = set()
        for i, r in enumerate(results):
            err, end, got, digest, want = r
            self.assertIsNone(err, "connection %d" % i)
            self.assertEqual(end, "ok", "connection %d: echo ended with %s after %d bytes" %
                             (i, end, got))
            # the echo must come back on the same connection, so our own pattern
            self.assertExact("connection %d echo" % i, got, digest, n, want)
            self.assertEqual(want, harness.pattern_sha(1000 + i, n))
            sent.add(want)
        self.stack.close_executors()
        left = drv.wait_all_done(20)
        self.assertEqual(left, [], "driver connections not closed after the executors closed")
        conns = drv.all_conns()
        self.assertEqual(len(conns), k, "driver accepted %d connections for %d executor "
                         "connections" % (len(conns), k))
        for dc in conns:
            self.assertEqual(dc.end, "eof", "driver conn %s ended with %s (%r)" %
                             (dc.peer, dc.end, dc.error))
            self.assertEqual(dc.rx_bytes, n)
        harness.log("8 x 4 MiB echoed in %.2f s" % (time.monotonic() - t0))


if __name__ == "__main__":
    harness.main()
