"""Backpressure: a connection whose driver never reads holds a bounded amount
of data, does not slow another connection of the same tunnel, and loses
nothing once the driver reads."""

import hashlib
import selectors
import time

import harness
from harness import KiB, MiB, h_duplex, h_hold_then_read, recv_exact, Sender

STALL_S = 2.0
BOUND = 32 * MiB   # more than this accepted means something buffers without bound
CAP = 48 * MiB     # stop writing here (the test has failed by then)
BULK = 64 * MiB
BULK_WITHIN = 60.0
FILL_LIMIT_S = 40.0  # still accepting after this: unbounded, however slowly


def fill_until_blocked(s, seed, stall_s=STALL_S, cap=CAP, limit_s=FILL_LIMIT_S):
    """Write the pattern non-blocking until no byte was accepted for stall_s
    (or cap bytes were accepted, or limit_s passed). Returns (accepted,
    sha256 of them, seconds, why it stopped)."""
    s.setblocking(False)
    p = harness.Pattern(seed, cap + 1 * MiB)
    h = hashlib.sha256()
    pending = b""
    n = 0
    why = "time limit"
    t0 = last = time.monotonic()
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_WRITE)
        while n <= cap and time.monotonic() - t0 < limit_s:
            if not pending:
                pending = p.next(64 * KiB)
            try:
                k = s.send(pending)
            except BlockingIOError:
                k = 0
            if k:
                h.update(pending[:k])
                pending = pending[k:]
                n += k
                last = time.monotonic()
                continue
            idle = time.monotonic() - last
            if idle >= stall_s:
                why = "blocked for %.0f s" % stall_s
                break
            sel.select(timeout=stall_s - idle)
    if n > cap:
        why = "cap of %d MiB reached" % (cap // MiB)
    return n, h.hexdigest(), time.monotonic() - t0, why


class StallTest(harness.ITCase):

    def test_unread_connection_is_bounded_and_does_not_stall_others(self):
        seed_a, seed_be, seed_bd = 41, 42, 43
        drv = self.stack.start_driver(handlers={"driver": h_hold_then_read,
                                                "blockManager": h_duplex(seed_bd, BULK, BULK)})
        a = self.stack.executor("driver", timeout=10)
        dca = drv.next_conn(10, port="driver")

        accepted, sha_a, took, why = fill_until_blocked(a, seed_a)
        harness.log("unread connection accepted %.2f MiB in %.2f s, then stopped: %s"
                    % (accepted / MiB, took, why))
        self.assertGreater(accepted, 0)
        self.assertLess(took, FILL_LIMIT_S, "the unread connection kept accepting data for "
                        "%.0f s (%.1f MiB)" % (took, accepted / MiB))
        self.assertLess(accepted, BOUND, "an executor connection whose driver never reads "
                        "accepted %.1f MiB: something buffers without bound" % (accepted / MiB))
        self.assertEqual(dca.rx_bytes, 0, "the held connection was read early")

        # B moves 64 MiB each way on the same tunnel while A stays stuck
        b = self.stack.executor("blockManager", timeout=BULK_WITHIN)
        t0 = time.monotonic()
        snd = Sender(b, seed_be, BULK)
        snd.start()
        end, got, digest, _ = recv_exact(b, BULK)
        err = snd.finish(max(1.0, t0 + BULK_WITHIN - time.monotonic()))
        took_b = time.monotonic() - t0
        self.assertIsNone(err, "executor -> driver on B")
        self.assertEqual(end, "ok", "B: executor read ended with %s after %.1f MiB in %.1f s" %
                         (end, got / MiB, took_b))
        self.assertLess(took_b, BULK_WITHIN, "B took %.1f s for 64 MiB each way" % took_b)
        dcb = drv.next_conn(10, port="blockManager")
        deadline = time.monotonic() + 30
        while not dcb.info.get("rx_done") and not dcb.done.is_set() and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(dcb.info.get("rx_end"), "ok", "B: driver read ended early after %d "
                         "bytes" % dcb.rx_bytes)
        self.assertExact("B executor -> driver", dcb.rx_bytes, dcb.rx_sha, BULK, snd.sha)
        self.assertExact("B driver -> executor", got, digest, BULK,
                         harness.pattern_sha(seed_bd, BULK))
        harness.log("B moved 64 MiB each way in %.2f s while A was stalled" % took_b)
        self.assertEqual(dca.rx_bytes, 0)
        self.assertFalse(dca.done.is_set(), "A's driver side ended: %s %r" %
                         (dca.end, dca.error))

        # now the driver reads A: every accepted byte arrives, exactly
        dca.expect = accepted
        t0 = time.monotonic()
        dca.go.set()
        deadline = t0 + 30
        while not dca.info.get("rx_done") and not dca.done.is_set() and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(dca.info.get("rx_end"), "ok", "A: driver read ended with %s after "
                         "%d of %d bytes (%r)" % (dca.info.get("rx_end"), dca.rx_bytes,
                                                  accepted, dca.error))
        self.assertExact("A after the stall", dca.info["rx_got"], dca.rx_sha, accepted, sha_a)
        harness.log("A drained in %.2f s" % (time.monotonic() - t0))
        a.close()
        b.close()
        self.assertTrue(dca.wait_done(15), "A: driver side did not see the executor's close")
        self.assertEqual(dca.info.get("extra"), 0, "A: bytes beyond those accepted")


if __name__ == "__main__":
    harness.main()
