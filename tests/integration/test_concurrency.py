"""1,000 executor connections open at once on one tunnel, all exact."""

import selectors
import time

import harness
import harness_extra as X
from harness import KiB, h_echo


N = 1000
MSG = 1 * KiB


class ConcurrencyTest(harness.ITCase):

    def test_1000_concurrent_connections_echo_exactly(self):
        drv = self.stack.start_driver(default=h_echo)
        msgs = [harness.message(i, MSG, seed=7) for i in range(N)]
        self.assertEqual(len(set(msgs)), N)
        socks = []
        t0 = time.monotonic()
        for i in range(N):
            port = "driver" if i % 2 == 0 else "blockManager"
            try:
                socks.append(self.stack.executor(port, timeout=30))
            except OSError as e:
                self.fail("executor connection %d (%s) failed: %r" % (i, port, e))
        t_conn = time.monotonic() - t0
        for i, s in enumerate(socks):
            s.sendall(msgs[i])

        # read every echo; nothing is closed until all have arrived
        bufs = [bytearray() for _ in range(N)]
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        pending = N
        deadline = time.monotonic() + 90
        problems = []
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                i = key.data
                try:
                    b = socks[i].recv(4 * KiB)
                except BlockingIOError:
                    continue
                except OSError as e:
                    problems.append("connection %d: %r after %d bytes" % (i, e, len(bufs[i])))
                    sel.unregister(socks[i])
                    pending -= 1
                    continue
                if not b:
                    problems.append("connection %d: EOF after %d of %d bytes" %
                                    (i, len(bufs[i]), MSG))
                    sel.unregister(socks[i])
                    pending -= 1
                    continue
                bufs[i] += b
                if len(bufs[i]) >= MSG:
                    sel.unregister(socks[i])
                    pending -= 1
        sel.close()
        t_echo = time.monotonic() - t0
        self.assertEqual(problems[:5], [], "%d connections failed" % len(problems))
        missing = [i for i in range(N) if len(bufs[i]) < MSG]
        self.assertEqual(missing[:10], [], "%d connections without a full echo after 90 s" %
                         len(missing))
        wrong = [i for i in range(N) if bytes(bufs[i]) != msgs[i]]
        self.assertEqual(wrong[:10], [], "%d echoes differ from what was sent" % len(wrong))

        # all still open: no data and no EOF pending on any of them
        closed = []
        for i, s in enumerate(socks):
            try:
                b = s.recv(1)
                closed.append((i, "extra byte" if b else "EOF"))
            except BlockingIOError:
                pass
            except OSError as e:
                closed.append((i, repr(e)))
        self.assertEqual(closed[:10], [], "%d connections were not intact after all echoed" %
                         len(closed))

        self.assertEqual(drv.wait_accepted(N, 10), N, "driver connections for %d executor "
                         "connections" % N)
        by_port = {}
        for dc in drv.all_conns():
            by_port[dc.port_name] = by_port.get(dc.port_name, 0) + 1
        self.assertEqual(by_port, {"driver": N // 2, "blockManager": N // 2})

        self.stack.close_executors()
        left = drv.wait_all_done(30)
        self.assertEqual(len(left), 0, "%d driver connections still open 30 s after the "
                         "executors closed" % len(left))
        ends = {}
        for dc in drv.all_conns():
            ends[dc.end] = ends.get(dc.end, 0) + 1
        self.assertEqual(ends, {"eof": N}, "how driver connections ended")
        self.assertTrue(all(dc.rx_bytes == MSG for dc in drv.all_conns()))

        # the tunnel still takes a new connection
        s = self.stack.executor("driver", timeout=10)
        probe = harness.message(N + 1, MSG, seed=7)
        s.sendall(probe)
        end, got, digest, data = harness.recv_exact(s, MSG)
        self.assertEqual((end, data), ("ok", probe), "echo on a new connection afterwards")
        s.close()
        harness.log("%d connections: connected in %.2f s, all echoed at %.2f s" %
                    (N, t_conn, t_echo))



class SidecarStreamLimitTest(harness.ITCase):
    """The sidecar takes at most tunnel.h2.max_streams streams at once (the
    control stream is one): executor connections past it wait in the relay,
    which says so, and go through, exact, once another ends."""

    LIMIT = 5
    tunnel_overrides = {"tunnel": {"h2": {"max_streams": LIMIT}}}

    def echo(self, s, i):
        m = harness.message(i, MSG, seed=9)
        s.sendall(m)
        return harness.recv_exact(s, MSG)[3] == m

    def test_connections_past_the_limit_wait_and_then_go_through(self):
        drv = self.stack.start_driver(default=h_echo)
        socks = [self.stack.executor("driver", timeout=10) for _ in range(self.LIMIT - 1)]
        for i, s in enumerate(socks):
            self.assertTrue(self.echo(s, i), "connection %d within the limit" % i)
        late = self.stack.executor("driver", timeout=10)
        m = harness.message(99, MSG, seed=9)
        late.sendall(m)  # sent before its stream is open: kept, not lost
        self.assertTrue(X.wait_log(self.stack.relay, "waits for a stream: the "
                                           "sidecar takes %d at once" % self.LIMIT, 5),
                        "the relay did not say why the connection waits")
        late.settimeout(0.5)
        try:
            early = late.recv(1)
        except OSError:
            early = None
        self.assertIsNone(early, "a connection past the sidecar's stream limit was carried")
        self.assertEqual(len(drv.all_conns()), self.LIMIT - 1)
        socks.pop(0).close()
        late.settimeout(10)
        end, got, digest, data = harness.recv_exact(late, MSG)
        self.assertEqual((end, data), ("ok", m), "the waiting connection, once one ended")
        for i, s in enumerate(socks):
            self.assertTrue(self.echo(s, 10 + i), "connection %d afterwards" % i)
        late.close()
        for s in socks:
            s.close()


if __name__ == "__main__":
    harness.main()
