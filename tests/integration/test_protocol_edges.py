"""Protocol edges found in review, kept as regressions:

- a peer's RST_STREAM(NO_ERROR) on an executor stream must end the executor
  socket (it was left open forever);
- executors that stop reading (a long GC pause) while the driver sends to them
  must not stop the rest of the tunnel: with conn_window = 4 x stream_window,
  five stalled streams used to hold the whole connection window, so a fresh
  connection's reply never arrived.
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import harness_extra as X  # noqa: E402
import fake_sidecar as F  # noqa: E402


class RstStreamNoErrorTest(X.XCase):
    auto_tunnel = False

    def run_case(self, code):
        fs = F.FakeSidecar(self.stack.relay_port, H.certs().ca).connect().start_h2()
        self.addCleanup(fs.close)
        fs.send_ctl(F.register_msg())
        m = fs.read_ctl(5)
        self.assertEqual(m.get("type"), "lease", m)
        host = m["host"]; port = m["ports"]["driver"]
        ex = socket.create_connection((host, port), timeout=5)
        self.addCleanup(ex.close)
        # wait for the CONNECT HEADERS of the executor stream
        deadline = time.monotonic() + 5
        sid = None
        while sid is None and time.monotonic() < deadline:
            t, fl, st, p = fs.read_frame(5)
            if t == F.HEADERS and st != F.CTL_STREAM:
                sid = st
        self.assertIsNotNone(sid)
        fs.sendall(F.frame(F.HEADERS, F.FLAG_END_HEADERS, sid, F.STATUS_200))
        fs.sendall(F.frame(F.RST_STREAM, 0, sid, struct.pack("!I", code)))
        ex.settimeout(4)
        try:
            b = ex.recv(100)
            end = "eof" if not b else "data"
        except socket.timeout:
            end = "timeout"
        except ConnectionResetError:
            end = "reset"
        # keep the tunnel alive; answer pings
        return end

    def test_rst_no_error(self):
        end = self.run_case(0)
        self.assertNotEqual(end, "timeout", "executor socket left open after RST_STREAM(NO_ERROR)")

    def test_rst_cancel(self):
        end = self.run_case(8)
        self.assertNotEqual(end, "timeout")

H2 = {"h2": {"conn_window": 1048576, "stream_window": 262144}}

def h_blast(dc):
    try:
        H.send_pattern(dc.sock, 5, 64 * H.MiB)
    except OSError:
        pass
    dc.end = "done"

class StalledExecutorsTest(H.ITCase):
    relay_overrides = {"relay": H2}
    tunnel_overrides = {"tunnel": H2}

    def prepare(self):
        self.drv = self.stack.start_driver(handlers={"driver": h_blast, "blockManager": H.h_echo},
                                           conn_timeout=30)

    def echo_ok(self):
        s = H.connect(self.stack.exec_host, self.stack.ports["blockManager"], timeout=4)
        try:
            s.sendall(b"x" * 100)
            end, got, _, data = H.recv_exact(s, 100)
            return end == "ok"
        except OSError:
            return False
        finally:
            s.close()

    def stall(self, n):
        socks = []
        for i in range(n):
            s = H.connect(self.stack.exec_host, self.stack.ports["driver"], timeout=5,
                          rcvbuf=4096)
            socks.append(s)
        time.sleep(3)  # let the driver fill every window
        return socks

    def test_two_stalled_ok(self):
        socks = self.stall(2)
        self.assertTrue(self.echo_ok(), "echo failed with 2 stalled executors")
        for s in socks: s.close()

    def test_five_stalled_blocks_everyone(self):
        self.assertTrue(self.echo_ok())
        socks = self.stall(5)
        ok = self.echo_ok()
        for s in socks: s.close()
        self.assertTrue(ok, "a fresh connection's reply never arrived while 5 unrelated "
                        "executors were not reading")

if __name__ == "__main__":
    H.main()
