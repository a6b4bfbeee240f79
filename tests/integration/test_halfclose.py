"""Half-close is carried per direction: a FIN on one side arrives as EOF on the
other while the opposite direction keeps flowing, and other connections on the
tunnel are not disturbed."""

import socket
import time

import harness
from harness import MiB, h_echo, h_script, recv_exact, recv_to_eof, Sender

RPC_SIZE = 256
REQ_SIZE = 200


class HalfCloseTest(harness.ITCase):

    def prepare(self):
        # the driver port is scripted by each test; the blockManager port
        # echoes, for a parallel RPC connection that must never be disturbed
        self.drv = self.stack.start_driver(handlers={"driver": h_script,
                                                     "blockManager": h_echo})
        self.rpc_sock = self.stack.executor("blockManager", timeout=5)
        self.rpc_n = 0
        self.rpc()

    def rpc(self):
        """One request/response on the parallel connection, within 5 s."""
        self.rpc_n += 1
        m = harness.message(self.rpc_n, RPC_SIZE, seed=3)
        t0 = time.monotonic()
        self.rpc_sock.sendall(m)
        end, got, _, data = recv_exact(self.rpc_sock, RPC_SIZE)
        self.assertEqual(end, "ok", "parallel RPC #%d ended with %s after %d bytes" %
                         (self.rpc_n, end, got))
        self.assertEqual(data, m, "parallel RPC #%d reply differs" % self.rpc_n)
        return time.monotonic() - t0

    def test_executor_fin_then_driver_replies_after_eof(self):
        n = 1 * MiB
        s = self.stack.executor("driver", timeout=30)
        snd = Sender(s, 21, n, shut_wr=True)
        snd.start()
        dc = self.drv.next_conn(10, port="driver")
        r = dc.do("recv_to_eof", 2 * n, timeout=30)
        self.assertIsNone(snd.finish(30))
        self.assertEqual(r[0], "eof", "driver read after the executor's FIN ended with %s "
                         "after %d bytes" % (r[0], r[1]))
        self.assertExact("executor -> driver before FIN", r[1], r[2], n, snd.sha)
        self.rpc()
        # a half-closed stream must stay open while the driver takes its time
        dc.do("sleep", 0.5)
        self.rpc()
        r = dc.do("send", 22, n, timeout=30)
        self.assertEqual(r[0], "ok", "driver reply after the executor's FIN: %r" % (r,))
        self.assertEqual(dc.do("close")[0], "ok")
        end, got, digest = recv_to_eof(s, 2 * n)
        self.assertEqual(end, "eof", "executor read of the reply ended with %s after %d "
                         "bytes" % (end, got))
        self.assertExact("driver reply after executor FIN", got, digest, n,
                         harness.pattern_sha(22, n))
        self.rpc()

    def test_driver_fin_then_executor_replies_after_eof(self):
        n = 1 * MiB
        s = self.stack.executor("driver", timeout=30)
        dc = self.drv.next_conn(10, port="driver")
        dc.submit("send", 31, n)
        dc.submit("shut_wr")
        end, got, digest = recv_to_eof(s, 2 * n)
        self.assertEqual(dc.result(10)[0], "ok")
        self.assertEqual(dc.result(10)[0], "ok")
        self.assertEqual(end, "eof", "executor read after the driver's FIN ended with %s "
                         "after %d bytes" % (end, got))
        self.assertExact("driver -> executor before FIN", got, digest, n,
                         harness.pattern_sha(31, n))
        self.rpc()
        time.sleep(0.5)
        self.rpc()
        sent = harness.send_pattern(s, 32, n)
        s.shutdown(socket.SHUT_WR)
        r = dc.do("recv_to_eof", 2 * n, timeout=30)
        self.assertEqual(r[0], "eof", "driver read of the executor's reply ended with %s "
                         "after %d bytes" % (r[0], r[1]))
        self.assertExact("executor reply after driver FIN", r[1], r[2], n, sent)
        self.assertEqual(dc.do("close")[0], "ok")
        self.rpc()

    def test_replies_continue_after_executor_fin(self):
        # RPC style: requests in flight, then FIN from the executor; the
        # driver answers them one by one afterwards
        k = 20
        s = self.stack.executor("driver", timeout=5)
        reqs = [harness.message(i, REQ_SIZE, seed=11) for i in range(k)]
        s.sendall(b"".join(reqs))
        s.shutdown(socket.SHUT_WR)
        dc = self.drv.next_conn(10, port="driver")
        for i in range(k):
            r = dc.do("recv_exact", REQ_SIZE, timeout=10)
            self.assertEqual((r[0], r[3]), ("ok", reqs[i]), "request %d at the driver" % i)
            reply = harness.message(1000 + i, 64 + i, seed=12)
            self.assertEqual(dc.do("sendbytes", reply)[0], "ok")
            end, got, _, data = recv_exact(s, len(reply))
            self.assertEqual((end, data), ("ok", reply), "reply %d at the executor" % i)
            if i % 5 == 4:
                self.rpc()
                dc.do("sleep", 0.05)
        r = dc.do("recv_to_eof", 1, timeout=10)
        self.assertEqual(r[:2], ("eof", 0), "the executor's FIN after its requests")
        self.assertEqual(dc.do("close")[0], "ok")
        end, got, _ = recv_to_eof(s, 1)
        self.assertEqual((end, got), ("eof", 0), "executor sees the driver's close")
        self.rpc()

    def test_requests_continue_after_driver_fin(self):
        k = 20
        s = self.stack.executor("driver", timeout=5)
        dc = self.drv.next_conn(10, port="driver")
        self.assertEqual(dc.do("sendbytes", b"no more from the driver")[0], "ok")
        self.assertEqual(dc.do("shut_wr")[0], "ok")
        end, got, _, data = recv_exact(s, 23)
        self.assertEqual((end, data), ("ok", b"no more from the driver"))
        end, got, _ = recv_to_eof(s, 1)
        self.assertEqual((end, got), ("eof", 0), "executor sees the driver's FIN")
        for i in range(k):
            m = harness.message(i, REQ_SIZE, seed=13)
            s.sendall(m)
            r = dc.do("recv_exact", REQ_SIZE, timeout=10)
            self.assertEqual((r[0], r[3]), ("ok", m), "message %d after the driver's FIN" % i)
            if i % 5 == 4:
                self.rpc()
                time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        r = dc.do("recv_to_eof", 1, timeout=10)
        self.assertEqual(r[:2], ("eof", 0), "the executor's FIN after its messages")
        self.assertEqual(dc.do("close")[0], "ok")
        self.rpc()


if __name__ == "__main__":
    harness.main()
