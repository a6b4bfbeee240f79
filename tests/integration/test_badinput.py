"""Bad input on the relay's tunnel port: plain TCP, random bytes, TLS without
HTTP/2, TLS 1.2, silent TLS clients, and a hand-written sidecar (fake_sidecar.py) that
sends malformed control messages or ones only a relay sends. Each is closed (within the handshake
timeout where time matters) with a log line saying why, and never disturbs a
real sidecar's tunnel: an echo through it works before and after, on a
connection that stays open across the bad input and on a fresh one."""

import random
import socket
import ssl
import time

import harness as H
import harness_extra as X
import fake_sidecar as F
from harness import KiB, MiB, h_echo

HANDSHAKE_MS = 1000


class BadInputCase(X.XCase):
    relay_overrides = {"relay": {"handshake_timeout_ms": HANDSHAKE_MS}}

    def prepare(self):
        self.stack.start_driver(default=h_echo)
        self.host, self.ports = self.stack.exec_host, dict(self.stack.ports)
        self.echoer = X.Echoer(self.host, self.ports["driver"])
        self.addCleanup(self.echoer.close)
        self.n_echo = 0
        self.check_tunnel("before")

    def check_tunnel(self, when):
        self.assert_relay_alive()
        self.assertIsNone(self.echoer.check(), "real tunnel %s the bad input" % when)
        self.n_echo += 1
        self.assertIsNone(X.echo_once(self.host, self.ports["blockManager"], seed=self.n_echo),
                          "new executor connection %s the bad input" % when)

    def after(self):
        self.check_tunnel("after")
        self.assert_no_sanitizer_reports()
        self.assertTrue(self.stack.tunnel.alive())
        self.assertFalse(self.stack.tunnel.grep("tunnel closed"),
                         "the real sidecar's tunnel was closed")

    def raw(self):
        s = socket.create_connection(("127.0.0.1", self.relay_port()), timeout=5)
        self.addCleanup(s.close)
        return s

    def fake(self, **kw):
        fs = F.FakeSidecar(self.relay_port(), H.certs().ca, **kw)
        self.addCleanup(fs.close)
        return fs


class RawBytesTest(BadInputCase):

    def test_http_request_is_closed(self):
        failed = X.log_count(self.relay, "TLS handshake failed")
        s = self.raw()
        s.sendall(b"GET / HTTP/1.1\r\nHost: relay\r\nUser-Agent: it\r\n\r\n")
        how, took, got = X.closed_within(s, 5)
        self.assertIn(how, ("eof", "reset"), "HTTP request on the tunnel port: connection "
                      "still open after 5 s")
        self.assertLessEqual(took, HANDSHAKE_MS / 1000 + 1.5)
        self.assertTrue(X.wait_log(self.relay, "TLS handshake failed", 2, count=failed + 1),
                        "relay log has no 'TLS handshake failed' for the HTTP request")
        self.after()

    def test_silent_tcp_client_is_closed_after_handshake_timeout(self):
        s = self.raw()
        how, took, got = X.closed_within(s, 6)
        self.assertIn(how, ("eof", "reset"), "silent TCP client still connected after 6 s")
        self.assertGreaterEqual(took, 0.8 * HANDSHAKE_MS / 1000)
        self.assertLessEqual(took, HANDSHAKE_MS / 1000 + 2.0)
        self.assertTrue(X.wait_log(self.relay, "no handshake within %d ms" % HANDSHAKE_MS, 2))
        self.after()

    def test_64kib_of_random_bytes_is_closed(self):
        failed = X.log_count(self.relay, "TLS handshake failed")
        s = self.raw()
        junk = random.Random(64).randbytes(64 * KiB)
        try:
            s.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: fine
        how, took, got = X.closed_within(s, 5)
        self.assertIn(how, ("eof", "reset"), "random bytes: connection still open after 5 s")
        self.assertTrue(X.wait_log(self.relay, "TLS handshake failed", 2, count=failed + 1))
        self.after()


class TlsWithoutTunnelTest(BadInputCase):

    def test_h2_client_that_never_registers_is_closed(self):
        fs = self.fake().connect()
        self.assertEqual(fs.alpn_selected(), "h2")
        how, took = fs.wait_closed(6)
        took = time.monotonic() - fs.t_connect
        self.assertIn(how, ("eof", "reset"), "silent TLS client still connected after 6 s")
        self.assertGreaterEqual(took, 0.8 * HANDSHAKE_MS / 1000,
                                "closed after %.2f s, before handshake_timeout_ms" % took)
        self.assertLessEqual(took, HANDSHAKE_MS / 1000 + 2.0)
        self.assertTrue(X.wait_log(self.relay, "register timeout", 2),
                        "relay log has no 'register timeout'")
        self.after()

    def test_alpn_http11_only_is_refused(self):
        failed = X.log_count(self.relay, "TLS handshake failed")
        fs = self.fake(alpn=["http/1.1"])
        try:
            fs.connect()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass  # refused during the handshake (no_application_protocol)
        else:
            self.assertNotEqual(fs.alpn_selected(), "h2")
            how, took = fs.wait_closed(5)
            self.assertIn(how, ("eof", "reset"), "http/1.1 client still connected after 5 s")
            self.assertFalse(any(f[0] == F.HEADERS for f in fs.frames),
                             "relay spoke HTTP/2 to an http/1.1-only client")
        self.assertTrue(X.wait_log(self.relay, "TLS handshake failed", 3, count=failed + 1))
        self.assertFalse(self.relay.grep("waiting for registration")[1:],
                         "relay started a tunnel session for the http/1.1 client")
        self.after()

    def test_no_alpn_is_refused(self):
        failed = X.log_count(self.relay, "TLS handshake failed")
        fs = self.fake(alpn=None)
        try:
            fs.connect()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
        else:
            how, took = fs.wait_closed(5)
            self.assertIn(how, ("eof", "reset"), "client without ALPN still connected")
            self.assertLessEqual(took, 1.5)
            self.assertFalse(any(f[0] == F.HEADERS for f in fs.frames))
        self.assertTrue(X.wait_log(self.relay, "TLS handshake failed", 3, count=failed + 1))
        self.after()

    def test_tls12_is_refused(self):
        # A client that offers TLS 1.2 at most (right CA, h2 offered) fails
        # the handshake: the relay speaks TLS 1.3 only.
        failed = X.log_count(self.relay, "TLS handshake failed")
        ctx = ssl.create_default_context(cafile=H.certs().ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2"])
        raw = self.raw()
        with self.assertRaises(ssl.SSLError) as cm:
            ctx.wrap_socket(raw, server_hostname="localhost")
        self.assertIn("PROTOCOL_VERSION", str(cm.exception).upper().replace(" ", "_"))
        lines = X.wait_log(self.relay, "TLS handshake failed", 3, count=failed + 1)
        self.assertTrue(lines)
        self.assertIn("protocol", lines[-1].lower(), lines[-1])
        self.assertFalse(self.relay.grep("waiting for registration")[1:],
                         "relay started a tunnel session for a TLS 1.2 client")
        self.after()


class FakeSidecarTest(BadInputCase):

    def closed_with_log(self, fs, needle, within=3.0):
        how, took = fs.wait_closed(within)
        self.assertIn(how, ("eof", "reset"), "relay kept the bad tunnel open %.0f s" % within)
        lines = X.wait_log(self.relay, needle, 2)
        self.assertTrue(lines, "relay log has no line with %r" % needle)
        return lines

    def test_valid_register_gets_a_lease(self):
        # Proves the fake speaks enough HTTP/2 for the other tests to mean something.
        fs = self.fake().connect().start_h2()
        fs.send_ctl(F.register_msg())
        m = fs.read_ctl(5)
        self.assertIsNotNone(m, "no answer to a valid register")
        self.assertEqual((m.get("v"), m.get("type")), (2, "lease"), m)
        ports = set(m["ports"].values())
        self.assertEqual(len(ports), 2)
        self.assertFalse(ports & set(self.ports.values()))
        fs.close()
        self.after()

    def test_control_frame_over_the_cap_is_closed(self):
        fs = self.fake().connect().start_h2()
        fs.send_ctl_raw((10 * MiB).to_bytes(4, "big") + b'{"v":1,"type":"register"')
        lines = self.closed_with_log(fs, "bad control message")
        self.assertTrue(any("10485760" in l for l in lines), lines)
        self.assertIsNone(fs.read_ctl(0.1))
        self.after()

    def test_malformed_json_is_closed(self):
        fs = self.fake().connect().start_h2()
        fs.send_ctl(b'{"v":1,"type":"register","app":')
        lines = self.closed_with_log(fs, "bad control message")
        self.assertTrue(any("JSON" in l for l in lines), lines)
        self.after()

    def test_garbage_instead_of_http2_is_closed(self):
        fs = self.fake().connect()
        self.assertEqual(fs.alpn_selected(), "h2")
        try:
            fs.sendall(random.Random(3).randbytes(4 * KiB))
        except OSError:
            pass
        how, took = fs.wait_closed(3)
        self.assertIn(how, ("eof", "reset"), "relay kept a tunnel open that sent garbage")
        self.assertTrue(X.wait_log(self.relay, "tunnel closed", 2),
                        "relay log has no 'tunnel closed' line for the garbage tunnel")
        self.assertFalse(self.relay.grep("granted")[1:])
        self.after()

    def test_register_version_3_is_refused(self):
        fs = self.fake().connect().start_h2()
        fs.send_ctl(F.register_msg(v=3))
        m = fs.read_ctl(3)
        self.assertTrue(m is None or m.get("type") == "error",
                        "relay answered a v3 register with %r" % (m,))
        lines = self.closed_with_log(fs, "unsupported version")
        self.assertEqual(len(self.relay.grep("granted")), 1, "relay granted a lease to v3")
        self.after()

    def test_register_version_1_gets_an_error_naming_both_versions(self):
        """An older sidecar learns why, in a message of its own version."""
        fs = self.fake().connect().start_h2()
        fs.send_ctl(F.register_msg(v=1))
        m = fs.read_ctl(3)
        self.assertIsNotNone(m, "no answer to a v1 register")
        self.assertEqual((m.get("v"), m.get("type"), m.get("code")), (1, "error", "version"))
        self.assertIn("v2", m.get("message", ""))
        self.assertIn("v1", m.get("message", ""))
        self.assertEqual(len(self.relay.grep("granted")), 1, "relay granted a lease to v1")
        self.after()

    def test_a_message_only_a_relay_sends_is_closed(self):
        """A sidecar that sends what only a relay sends (a lease, a release
        confirmation), before or after its own lease, is ended as a protocol
        error, with the message's type in the relay's log."""
        msgs = [{"v": 2, "type": "released"},
                {"v": 2, "type": "lease", "lease": "L-9-0a1b2c3d", "host": "127.0.0.2",
                 "ports": {"driver": 40001, "blockManager": 40002}, "ttl": 300,
                 "resume": "0123456789abcdef"}]
        k = 0
        for msg in msgs:
            for registered in (False, True):
                fs = self.fake().connect().start_h2()
                if registered:
                    fs.send_ctl(F.register_msg())
                    self.assertEqual((fs.read_ctl(5) or {}).get("type"), "lease")
                fs.send_ctl(msg)
                how, _ = fs.wait_closed(3)
                self.assertIn(how, ("eof", "reset"), "relay kept the tunnel open: %r" % msg)
                k += 1
                lines = X.wait_log(self.relay, "unexpected control message", 2, count=k)
                self.assertTrue(lines, "no log line for %r (registered %s)" % (msg, registered))
                self.assertIn("unexpected control message " + msg["type"], lines[k - 1])
        self.after()

    def test_many_bad_tunnels_in_a_row(self):
        for i in range(10):
            fs = self.fake().connect().start_h2()
            fs.send_ctl(b"\x00" * (i + 1))
            how, _ = fs.wait_closed(3)
            self.assertIn(how, ("eof", "reset"), "bad tunnel #%d still open" % i)
            fs.close()
        self.assertTrue(self.relay.grep("bad control message"))
        self.after()


if __name__ == "__main__":
    H.main()
