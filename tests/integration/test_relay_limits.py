"""Nobody can starve a relay: every peer-held resource has a cap.

Each test plays one attacker against the real relay on loopback and checks
that a legitimate sidecar is still served, that the attack is bounded (CPU,
log lines, leases, memory) and that the relay counts what it refused:

  - idle TCP connections (slowloris) from one address, and unregistered
    connections overall, cannot keep registered sidecars out;
  - accept() failing with EMFILE pauses the tunnel listener instead of
    spinning and flooding the log;
  - `release` ends the tunnel: it holds no slot and cannot register again;
  - a client that registers and drops tunnels holds a bounded number of
    leases, and other sidecars and tenants still get theirs;
  - executor connections into a tunnel that grants no flow-control window
    stay under the per-tunnel buffer cap;
  - a resume token works once and only for the identity that made it, also
    for token-only tenants;
  - sidecar-chosen text (the app name) reaches logs and `sparkrelay ctl`
    escaped, and `ctl` finds the admin token where the relay finds it.
"""

import errno
import hashlib
import json
import os
import resource
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request

import harness as H
import harness_extra as X
import fake_sidecar as F
from harness import KiB, MiB

ADMIN_TOKEN = "it-limits-admin-" + os.urandom(6).hex()


def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


def parse_metrics(text):
    """{(name, frozenset(labels)): value}, for plain samples."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        labs = frozenset(tuple(kv.split("=", 1)) for kv in labels.rstrip("}").split(",")
                         if kv) if labels else frozenset()
        out[(name, frozenset((k, v.strip('"')) for k, v in labs))] = float(value)
    return out


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS for pid %d" % pid)


def connect_from(src, port, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


class LimitsCase(X.XCase):
    """A relay with an admin listener (token required) and a pool of
    pool_ports ports; no sidecar unless the test starts one."""

    auto_tunnel = False
    pool_ports = H.POOL_SIZE
    extra_relay = None

    def setUp(self):
        if H.DIRECT:
            self.skipTest("needs the sparkrelay binary")
        self.admin_port = H.free_port()
        self.url = "http://127.0.0.1:%d" % self.admin_port
        base = H.pick_pool_base(self.pool_ports)
        self.relay_overrides = H.deep_merge(
            {"relay": {"admin": {"listen": "127.0.0.1:%d" % self.admin_port,
                                 "token": ADMIN_TOKEN},
                       "pool": {"port_min": base, "port_max": base + self.pool_ports - 1}}},
            self.extra_relay)
        orig = H.pick_pool_base
        H.pick_pool_base = lambda *a, **k: base
        try:
            super().setUp()
        finally:
            H.pick_pool_base = orig
        ok = X.wait_for(lambda: self._healthz() == 200, 10)
        self.assertTrue(ok, "admin API did not come up")

    def _healthz(self):
        try:
            return self.http("GET", "/healthz", token=None)[0]
        except OSError:
            return None

    def http(self, method, path, token=ADMIN_TOKEN, body=None, accept=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        if accept:
            headers["Accept"] = accept
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None
                                     else None)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self):
        code, text = self.http("GET", "/metrics")
        self.assertEqual(code, 200, text)
        return parse_metrics(text)

    def metric(self, m, name, **labels):
        key = (name, frozenset(labels.items()))
        self.assertIn(key, m, "no metric %s%r" % (name, labels))
        return m[key]

    def fake(self, **kw):
        fs = F.FakeSidecar(self.relay_port(), H.certs().ca, **kw)
        self.addCleanup(fs.close)
        return fs

    def register(self, app="fake-sidecar", timeout=5.0, **extra):
        """A fresh fake sidecar that registered; returns (fake, answer)."""
        fs = self.fake().connect().start_h2()
        fs.send_ctl(F.register_msg(app=app, **extra))
        return fs, fs.read_ctl(timeout)

    def leases(self):
        code, text = self.http("GET", "/v1/leases")
        self.assertEqual(code, 200, text)
        return json.loads(text)


# --------------------------------------------------------------------------
# Row 4: unregistered connections have their own caps.

class HandshakeLimitTest(LimitsCase):
    # A small max_tunnels makes the old behaviour (idle connections count
    # against it) show with few sockets.
    extra_relay = {"relay": {"max_tunnels": 64}}

    def test_idle_connections_from_one_source_do_not_lock_out_a_sidecar(self):
        idle = []
        self.addCleanup(lambda: [s.close() for s in idle])
        for _ in range(100):
            try:
                idle.append(connect_from("127.0.0.3", self.relay_port()))
            except OSError:
                break
        self.assertGreaterEqual(len(idle), 64, "could not open the idle connections")
        time.sleep(0.5)
        # The sidecar dials from 127.0.0.1 and must get in at once, long
        # before handshake_timeout_ms (10 s) would free the idle slots.
        sc = self.sidecar("sc").start()
        sc.wait_lease(5)
        m = self.metrics()
        refused = self.metric(m, "sparkrelay_refused_total", reason="handshake_source_limit")
        self.assertGreaterEqual(refused, len(idle) - 16,
                                "refusals past max_handshakes_per_source not counted")
        self.assertEqual(self.metric(m, "sparkrelay_handshakes_active"), 16)
        lines = self.relay.grep("tunnel connection refused")
        self.assertTrue(lines, "refusals are not logged at all")
        self.assertLessEqual(len(lines), 2, "one log line per refused socket: %d" % len(lines))



class HandshakeCapTest(LimitsCase):
    extra_relay = {"relay": {"max_handshakes": 20}}

    def test_unregistered_connections_overall_are_capped(self):
        idle = []
        self.addCleanup(lambda: [s.close() for s in idle])
        for src in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
            for _ in range(10):
                idle.append(connect_from(src, self.relay_port()))
        time.sleep(0.5)
        m = self.metrics()
        self.assertEqual(self.metric(m, "sparkrelay_handshakes_active"), 20)
        self.assertEqual(self.metric(m, "sparkrelay_refused_total", reason="handshake_limit"),
                         10)


# --------------------------------------------------------------------------
# Row 3: EMFILE on the tunnel listener.

class AcceptErrorTest(LimitsCase):

    def test_emfile_pauses_the_listener_instead_of_spinning(self):
        pid = self.relay.p.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        nfd = len(os.listdir("/proc/%d/fd" % pid))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (nfd + 3, hard))
        restored = [False]

        def restore():
            if not restored[0]:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
                restored[0] = True
        self.addCleanup(restore)
        conns = []
        self.addCleanup(lambda: [s.close() for s in conns])
        for _ in range(12):
            conns.append(connect_from("127.0.0.3", self.relay_port()))
        time.sleep(0.3)
        size0 = os.path.getsize(self.relay.log_path)
        cpu0 = proc_cpu_s(pid)
        time.sleep(3.0)
        cpu = proc_cpu_s(pid) - cpu0
        grown = os.path.getsize(self.relay.log_path) - size0
        restore()
        self.assertLess(cpu, 0.6, "relay used %.2f s of CPU in 3 s with accept() failing" % cpu)
        self.assertLess(grown, 4 * KiB, "relay logged %d bytes in 3 s with accept() failing"
                        % grown)
        self.assertTrue(self.relay.grep("accept failed"), "accept failures are not logged")
        # With descriptors back, the listener accepts again.
        for s in conns:
            s.close()
        conns.clear()
        sc = self.sidecar("sc").start()
        sc.wait_lease(10)
        self.assertGreater(self.metric(self.metrics(), "sparkrelay_accept_errors_total"), 0)


# --------------------------------------------------------------------------
# Row 5: release ends the tunnel.

class ReleaseTest(LimitsCase):
    extra_relay = {"relay": {"max_tunnels": 2}}

    def test_release_answers_released_and_closes_the_tunnel(self):
        fs, m = self.register()
        self.assertEqual(m and m.get("type"), "lease", m)
        fs.send_ctl({"v": 1, "type": "release"})
        m = fs.read_ctl(5)
        self.assertEqual(m and m.get("type"), "released", m)
        how, took = fs.wait_closed(5)
        self.assertIn(how, ("eof", "reset"), "tunnel still open %.1f s after release" % took)

    def test_register_after_release_is_refused(self):
        fs, m = self.register()
        self.assertEqual(m and m.get("type"), "lease", m)
        fs.send_ctl_raw(F.ctl_frame({"v": 1, "type": "release"}) +
                        F.ctl_frame(F.register_msg()))
        m = fs.read_ctl(5)
        self.assertEqual(m and m.get("type"), "released", m)
        m = fs.read_ctl(2)
        self.assertIsNone(m, "the released tunnel registered again: %r" % (m,))
        self.assertEqual(len(self.relay.grep("granted")), 1)
        self.assertEqual(self.leases(), [])

    def test_register_release_loop_holds_no_slot(self):
        for i in range(6):
            fs, m = self.register(app="loop-%d" % i)
            self.assertEqual(m and m.get("type"), "lease", "round %d: %r" % (i, m))
            fs.send_ctl({"v": 1, "type": "release"})
            self.assertEqual((fs.read_ctl(5) or {}).get("type"), "released")
            # the attacker keeps its end open
        sc = self.sidecar("sc").start()
        sc.wait_lease(10)
        m = self.metrics()
        self.assertEqual(self.metric(m, "sparkrelay_refused_total", reason="tunnel_limit"), 0)


# --------------------------------------------------------------------------
# Row 7: register-and-drop is bounded by default; others still get leases.

class RegisterDropTest(LimitsCase):
    pool_ports = 100  # 50 leases; the default max_grace_leases is 32
    ROUNDS = 60

    def drop_loop(self, **extra):
        got = 0
        for i in range(self.ROUNDS):
            fs, m = self.register(app="drop-%d" % i, **extra)
            got += bool(m and m.get("type") == "lease")
            H.abort(fs.sock)  # a crash: the relay keeps the lease in grace
            fs.sock = None
        return got

    def test_register_and_drop_is_bounded_and_others_get_leases(self):
        got = self.drop_loop()
        self.assertEqual(got, self.ROUNDS, "the dropping client itself was refused")
        X.wait_for(lambda: not any(l["attached"] for l in self.leases()), 5)
        held = len(self.leases())
        self.assertLessEqual(held, 34, "a register-and-drop loop holds %d leases" % held)
        sc = self.sidecar("sc").start()
        sc.wait_lease(10)
        self.assertGreater(self.metric(self.metrics(), "sparkrelay_leases_reclaimed_total"), 0)


class RegisterDropTenantsTest(RegisterDropTest):
    TOKEN_A = "it-tenant-a-" + os.urandom(4).hex()
    TOKEN_B = "it-tenant-b-" + os.urandom(4).hex()
    extra_relay = {"relay": {"tenants": [
        {"name": "a", "match": {"token_sha256": [sha256_hex(TOKEN_A)]}},
        {"name": "b", "match": {"token_sha256": [sha256_hex(TOKEN_B)]}}]}}

    def test_register_and_drop_is_bounded_and_others_get_leases(self):
        got = self.drop_loop(token=self.TOKEN_A)
        self.assertEqual(got, self.ROUNDS)
        X.wait_for(lambda: not any(l["attached"] for l in self.leases()), 5)
        held = len(self.leases())
        self.assertLessEqual(held, 34, "tenant a holds %d leases" % held)
        # Tenant b is untouched by a's leases and gets one.
        sc = self.sidecar("b", {"tunnel": {"token": self.TOKEN_B}}).start()
        sc.wait_lease(10)
        # Another sidecar of tenant a gets one too.
        sa = self.sidecar("a2", {"tunnel": {"token": self.TOKEN_A}}).start()
        sa.wait_lease(10)
        tenants = sorted(l["tenant"] for l in self.leases() if l["attached"])
        self.assertEqual(tenants, ["a", "b"])


# --------------------------------------------------------------------------
# Row 12: memory per executor connection into a tunnel that grants no window.

class BufferCapTest(LimitsCase):
    CONNS = 400

    def start_h2_no_window(self, fs, timeout=5.0):
        """start_h2, but with SETTINGS_INITIAL_WINDOW_SIZE 0 and a
        WINDOW_UPDATE for the control stream only: the relay may send no
        DATA on any executor stream."""
        deadline = time.monotonic() + timeout
        magic = fs._take(len(F.PREFACE), deadline)
        self.assertEqual(magic, F.PREFACE)
        fs.sendall(F.frame(F.SETTINGS, 0, 0, struct.pack("!HI", 4, 0)))
        while True:
            ftype, flags, stream, _ = fs.read_frame(max(0.01, deadline - time.monotonic()))
            if ftype == F.HEADERS and stream == F.CTL_STREAM:
                break
        fs.sendall(F.frame(F.HEADERS, F.FLAG_END_HEADERS, F.CTL_STREAM, F.STATUS_200))
        # Window for the control stream only, so that the lease can come.
        fs.sendall(F.frame(F.WINDOW_UPDATE, 0, F.CTL_STREAM, struct.pack("!I", 65535)))

    def test_executors_into_a_stalled_tunnel_stay_under_the_cap(self):
        fs = self.fake().connect()
        self.start_h2_no_window(fs)
        fs.send_ctl(F.register_msg())
        m = fs.read_ctl(5)
        self.assertEqual(m and m.get("type"), "lease", m)
        host, port = m["host"], m["ports"]["driver"]
        pid = self.relay.p.pid
        rss0 = proc_rss(pid)
        chunk = os.urandom(64 * KiB)
        execs = []
        self.addCleanup(lambda: [s.close() for s in execs])
        for i in range(self.CONNS):
            s = socket.create_connection((host, port), timeout=5)
            s.setblocking(False)
            execs.append(s)
            for _ in range(5):  # 320 KiB offered, more than sock_read_high
                try:
                    s.send(chunk)
                except BlockingIOError:
                    break
            if i % 50 == 0:
                try:  # keep the relay's frames flowing; answer its PINGs
                    while True:
                        fs.read_frame(0.01)
                except (F.FakeError, socket.timeout, OSError):
                    pass
        time.sleep(2.0)
        rss = proc_rss(pid)
        H.log("%d connections: relay RSS grew %.1f MiB" % (self.CONNS, (rss - rss0) / MiB))
        self.assertLess(rss - rss0, 56 * MiB, "relay RSS grew by %.1f MiB for %d connections"
                        % ((rss - rss0) / MiB, self.CONNS))
        m = self.metrics()
        buffered = self.metric(m, "sparkrelay_executor_buffered_bytes")
        cap = 16 * MiB + self.CONNS * 16 * KiB + 256 * KiB
        self.assertGreater(buffered, 8 * MiB, "the test did not fill the relay's buffers")
        self.assertLessEqual(buffered, cap, "%d bytes buffered, cap %d" % (buffered, cap))
        self.assertGreaterEqual(self.metric(m, "sparkrelay_tunnel_buffer_full_total"), 1)
        self.assertTrue(self.relay.alive())


# --------------------------------------------------------------------------
# Row 14: resume is bound to the registering identity and rotates.

class ResumeBindingTest(LimitsCase):
    TOKEN_A = "it-team-a-" + os.urandom(4).hex()
    TOKEN_B = "it-team-b-" + os.urandom(4).hex()
    extra_relay = {"relay": {"tenants": [
        {"name": "team", "match": {"token_sha256": [sha256_hex(TOKEN_A),
                                                    sha256_hex(TOKEN_B)]}}]}}

    def test_stolen_resume_token_of_a_token_only_tenant(self):
        a1, la = self.register(token=self.TOKEN_A)
        self.assertEqual(la and la.get("type"), "lease", la)
        r1 = la["resume"]
        # Another identity of the same tenant (token B) holds A's token.
        b, m = self.register(token=self.TOKEN_B, resume=r1)
        self.assertEqual(m and m.get("type"), "error", m)
        self.assertEqual(m.get("code"), "unknown_lease")
        self.assertFalse(self.relay.grep("replaced by a new tunnel"))
        self.assertTrue([l for l in self.leases() if l["id"] == la["lease"] and l["attached"]])
        # A itself resumes (its first tunnel still attached): the lease comes
        # with a new token, and the takeover is logged with both peers.
        a2, m = self.register(token=self.TOKEN_A, resume=r1)
        self.assertEqual(m and m.get("type"), "lease", m)
        self.assertEqual(m["lease"], la["lease"])
        self.assertEqual(m["ports"], la["ports"])
        r2 = m["resume"]
        self.assertNotEqual(r2, r1, "the resume token did not rotate")
        lines = X.wait_log(self.relay, "replaced by a new tunnel", 3)
        self.assertTrue(lines)
        p1 = "127.0.0.1:%d" % a1.sock.getsockname()[1]
        p2 = "127.0.0.1:%d" % a2.sock.getsockname()[1]
        self.assertTrue(p1 in lines[-1] and p2 in lines[-1], lines[-1])
        self.assertIn("WARN", lines[-1])
        # The old token is spent, even for A, once A has the new one: it read
        # the lease and answered the PING the relay sent after it (until
        # then the old token still resumes: the lease may die with a2). The
        # relay's ACK of a PING of ours, sent after that answer, shows the
        # relay has read the answer.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(
                f[0] == F.PING and not f[1] & F.FLAG_ACK and f[3] != bytes(8)
                for f in a2.frames):
            a2.read_frame(max(0.01, deadline - time.monotonic()))
        a2.sendall(F.frame(F.PING, 0, 0, b"it-sync!"))
        while time.monotonic() < deadline and not any(
                f[0] == F.PING and f[1] & F.FLAG_ACK and f[3] == b"it-sync!"
                for f in a2.frames):
            a2.read_frame(max(0.01, deadline - time.monotonic()))
        a3, m = self.register(token=self.TOKEN_A, resume=r1)
        self.assertEqual((m or {}).get("code"), "unknown_lease", m)
        # B with the current token: still not B's lease.
        b2, m = self.register(token=self.TOKEN_B, resume=r2)
        self.assertEqual((m or {}).get("code"), "unknown_lease", m)


# --------------------------------------------------------------------------
# Row 9 (relay side) and row 18 (ctl token): escaping and token sources.

# Control characters (C0 and C1) never get past the control-message parser;
# what it lets through may still hold quotes, backslashes and non-ASCII text.
EVIL_APP = 'evil\x1b]0;pwned\x07\x1b[31m" tenant=root\u009b31m'
ODD_APP = 'odd" tenant=root \\ caf\u00e9'


class CtlTest(LimitsCase):

    def ctl(self, *args, env_extra=None):
        env = {k: v for k, v in os.environ.items()
               if k not in ("SPARKRELAY_ADMIN_TOKEN", "SPARKRELAY_RELAY_ADMIN_TOKEN",
                            "SPARKRELAY_ADMIN_URL")}
        env["SPARKRELAY_ADMIN_URL"] = self.url
        env.update(env_extra or {})
        r = subprocess.run([H.BIN, "ctl"] + list(args), env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        return r.returncode, r.stdout, r.stderr

    def test_app_name_with_control_characters_is_refused(self):
        fs, m = self.register(app=EVIL_APP)
        self.assertNotEqual(m and m.get("type"), "lease", m)
        self.assertTrue(X.wait_log(self.relay, "bad control message", 3))
        for l in self.relay.log_text().splitlines():
            self.assertNotIn("\x1b", l)
            self.assertNotIn("\u009b", l)
        self.assertEqual(self.leases(), [])

    def test_app_name_is_escaped_in_the_log_and_in_ctl_output(self):
        fs, m = self.register(app=ODD_APP)
        self.assertEqual(m and m.get("type"), "lease", m)
        tok = {"SPARKRELAY_ADMIN_TOKEN": ADMIN_TOKEN}
        rc, out, err = self.ctl("leases", env_extra=tok)
        self.assertEqual(rc, 0, err)
        self.assertIn(b'odd\\" tenant=root \\\\ caf\\xc3\\xa9', out)
        rc, out, err = self.ctl("-o", "json", "leases", env_extra=tok)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)[0]["app"], ODD_APP)
        self.assertNotIn("\u00e9".encode("utf-8"), out, "non-ASCII must be escaped in JSON")
        # The admin API's own answer, as curl would print it: ASCII too.
        code, text = self.http("GET", "/v1/leases")
        self.assertEqual(code, 200, text)
        self.assertTrue(text.isascii(), "the admin API answered non-ASCII: %r" % text[:200])
        self.assertEqual(json.loads(text)[0]["app"], ODD_APP)
        rc, out, err = self.ctl("sessions", env_extra=tok)
        self.assertEqual(rc, 0, err)
        # The relay log: one line, the quote escaped, so no forged field.
        lines = self.relay.grep("granted to app")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn('\\" tenant=root', lines[0])
        self.assertNotIn('" tenant=root', lines[0].replace('\\"', ""))

    def test_ctl_reads_the_relays_token_variable_and_names_the_source(self):
        rc, out, err = self.ctl("leases",
                                env_extra={"SPARKRELAY_RELAY_ADMIN_TOKEN": ADMIN_TOKEN})
        self.assertEqual(rc, 0, err)
        rc, out, err = self.ctl("leases", env_extra={"SPARKRELAY_RELAY_ADMIN_TOKEN": "wrong"})
        self.assertEqual(rc, 1)
        self.assertIn(b"unauthorized", err)
        self.assertIn(b"SPARKRELAY_RELAY_ADMIN_TOKEN", err)
        rc, out, err = self.ctl("leases", env_extra={"SPARKRELAY_ADMIN_TOKEN": "wrong",
                                                     "SPARKRELAY_RELAY_ADMIN_TOKEN":
                                                     ADMIN_TOKEN})
        self.assertEqual(rc, 1, "SPARKRELAY_ADMIN_TOKEN must win over the relay's variable")
        self.assertIn(b"from SPARKRELAY_ADMIN_TOKEN", err)
        path = os.path.join(self.stack.dir, "admin-token")
        with open(path, "w") as f:
            f.write(ADMIN_TOKEN + "\n")
        rc, out, err = self.ctl("--token-file", path, "leases",
                                env_extra={"SPARKRELAY_ADMIN_TOKEN": "wrong"})
        self.assertEqual(rc, 0, err)
        with open(path, "w") as f:
            f.write("wrong\n")
        rc, out, err = self.ctl("--token-file", path, "leases")
        self.assertEqual(rc, 1)
        self.assertIn(("--token-file %s" % path).encode(), err)
        # a file that cannot be read says why; two sources are one too many
        for bad, why in ((path + ".missing", b"No such file or directory"),
                         (self.stack.dir, b"Is a directory")):
            rc, out, err = self.ctl("--token-file", bad, "leases")
            self.assertEqual(rc, 2, err)
            self.assertIn(b"cannot read the token file", err)
            self.assertIn(why, err)
        rc, out, err = self.ctl("--token", ADMIN_TOKEN, "--token-file", path, "leases")
        self.assertEqual(rc, 2, err)
        self.assertIn(b"give one of --token and --token-file", err)
        rc, out, err = self.ctl("leases")
        self.assertEqual(rc, 1)
        self.assertIn(b"no token", err)
        # The probes need no token.
        self.assertEqual(self.ctl("health")[0], 0)
        self.assertEqual(self.ctl("ready")[0], 0)


class RefusedLeaseTest(LimitsCase):

    def test_a_lease_the_sidecar_refuses_is_released_at_once(self):
        # A sidecar whose tunnel.allowed_ports leave out the relay's pool
        # refuses every lease; each one stayed on the relay for its grace
        # period (300 s), two pool ports each, one more at every retry.
        sc = self.sidecar("sc", {"tunnel": {"allowed_ports": ["1024-1030"],
                                            "backoff_initial_ms": 50}}).start()
        self.assertTrue(X.wait_log(sc.proc, "outside tunnel.allowed_ports", 10, count=3),
                        sc.proc.tail())
        self.assertTrue(X.wait_log(self.relay, "lease released by the sidecar", 5, count=3))
        time.sleep(0.3)
        self.assertEqual(self.leases(), [], "leases the sidecar refused are still held")


class RefusalEscapeTest(LimitsCase):
    extra_relay = {"relay": {"routes": [{"name": "ok-only", "app": "ok-*"}]}}

    def test_a_refusal_that_quotes_the_app_is_escaped_in_the_log(self):
        fs, m = self.register(app='bad" tenant=root')
        self.assertEqual((m or {}).get("code"), "no_route", m)
        lines = X.wait_log(self.relay, "registration refused: no_route", 3)
        self.assertTrue(lines)
        self.assertIn('bad\\\" tenant=root', lines[0])
        self.assertNotIn('bad" tenant=root', lines[0])

    def explain(self, body, accept="application/json"):
        return self.http("POST", "/v1/route/explain", body=body, accept=accept)

    def test_a_long_non_ascii_app_is_refused_with_a_message(self):
        # The quote of the app in the reason is cut at 80 bytes: cut inside
        # the "é", it made the message invalid UTF-8, which the control
        # channel cannot carry, and the sidecar saw only the close.
        app = "x" * 79 + "\u00e9" + "y" * 10
        fs, m = self.register(app=app)
        self.assertEqual((m or {}).get("code"), "no_route", m)
        self.assertIn("x" * 79 + "?", m.get("message", ""))
        # The admin API explains it too, in JSON and in text.
        for accept in ("application/json", "text/plain"):
            code, text = self.explain({"app": app}, accept)
            self.assertIn(code, (200, 403), text)
            self.assertIn("x" * 79 + "?", text, accept)
            self.assertNotIn("invalid utf-8", text, accept)
        # A bad address quoted back is cut the same way: 400, not 500.
        code, text = self.explain({"app": "ok-1", "addr": "1" * 63 + "\u00e9"})
        self.assertEqual(code, 400, text)
        self.assertIn("not a numeric IPv4 or IPv6 address", text)


if __name__ == "__main__":
    H.main()
