#!/usr/bin/env python3
"""Live relay handover (`sparkrelay relay --takeover`): a new relay process takes
the listeners, leases and executor connections of the running one over its
handover socket, the sidecar reconnects and resumes, and nothing is lost.

  - under load (60 executor connections doing request/response with sequence
    numbers, a bulk transfer each way through slow readers), three handovers
    in a row: no reset, every byte exact and in order, no executor connect
    refused during the handovers (a connect every 10 ms), each old relay
    exits 0 by itself;
  - a sidecar holding its lease on two tunnels (tunnel.connections 2): both
    move, every stream resumes, the lease is on two tunnels again; twice;
  - a handover right after a tunnel was replaced by a new one of its lease,
    while the old one still closes (its output stuck): the lease moves;
  - a new configuration with a changed route takes effect at the handover;
    one that moved the pool to other ports leaves the lease taken over its
    ports (open and new executor connections served) and gives a new
    sidecar ports from the moved pool; one that dropped the sidecar's tenant
    leaves the lease its tenant's limits and lets the sidecar resume it, and
    one that moved the sidecar's token to another tenant does not;
  - a takeover with another relay.listen is refused: the old relay goes on;
    so is one whose relay.listen a reload of the running relay had changed
    (a reload cannot move the listener);
  - a new relay speaking another handover protocol version is refused with
    the version needed, and a draining relay refuses a takeover: the old
    relay freezes nothing and goes on serving;
  - a second takeover while one holds the state is refused with its reason;
  - a new process killed in the middle, or one that never commits: the old
    relay takes everything back and goes on serving, and a real takeover
    works afterwards;
  - a relay started without --takeover where another one's handover socket
    is (another relay.listen) leaves that socket alone, so the running one
    can still be taken over; a file that is not a socket there is not
    removed; both relays serve, live handover off in the second.
"""

import hashlib
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import fake_sidecar as F  # noqa: E402
import harness_extra as X  # noqa: E402
from harness import KiB, MiB  # noqa: E402

RPC_CONNS = 60
RPC_SIZE = 256
BULK = 40 * MiB
BULK_RATE = 6 * MiB  # bytes per second, each way


def handover_dir():
    # Short: a Unix socket path has at most 107 bytes.
    return tempfile.mkdtemp(prefix="ho-", dir=H.root_dir())


class RpcClient(threading.Thread):
    """An executor connection doing request/response: each request carries its
    sequence number, the driver (h_echo) answers it byte for byte."""

    def __init__(self, host, port, idx, interval=0.02):
        super().__init__(daemon=True, name="rpc-%d" % idx)
        self.s = H.connect(host, port, timeout=30)
        self.idx = idx
        self.interval = interval
        self.seq = 0
        self.error = None
        self.stop_ev = threading.Event()
        self.max_gap = 0.0

    def run(self):
        last = time.monotonic()
        try:
            while not self.stop_ev.is_set():
                m = H.message(self.seq, RPC_SIZE, seed=self.idx + 1)
                self.s.sendall(m)
                end, got, _, data = H.recv_exact(self.s, RPC_SIZE)
                if end != "ok" or data != m:
                    self.error = "conn %d request %d: %s after %d bytes%s" % (
                        self.idx, self.seq, end, got, " (answer differs)" if end == "ok" else "")
                    return
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                self.seq += 1
                time.sleep(self.interval)
        except OSError as e:
            self.error = "conn %d request %d: %r" % (self.idx, self.seq, e)

    def finish(self):
        """Stop, then close cleanly: the driver must see a clean end too."""
        self.stop_ev.set()
        self.join(30)
        if self.is_alive():
            return "conn %d: still running after 30 s" % self.idx
        if self.error:
            return self.error
        try:
            self.s.shutdown(socket.SHUT_WR)
            end, extra, _ = H.recv_to_eof(self.s, 1 * KiB)
        except OSError as e:
            return "conn %d: close: %r" % (self.idx, e)
        finally:
            self.s.close()
        if end != "eof" or extra:
            return "conn %d: after its last request got %s with %d extra bytes" % (
                self.idx, end, extra)
        return None


class Throttled(threading.Thread):
    """Send n pattern bytes at about rate bytes/s (or read them at that pace)."""

    def __init__(self, s, seed, n, rate, read=False):
        super().__init__(daemon=True)
        self.s, self.seed, self.n, self.rate, self.read = s, seed, n, rate, read
        self.done = 0
        self.error = None
        self.sha = None

    def run(self):
        h = hashlib.sha256()
        pat = H.Pattern(self.seed, self.n) if not self.read else None
        t0 = time.monotonic()
        try:
            while self.done < self.n:
                k = min(64 * KiB, self.n - self.done)
                if self.read:
                    b = self.s.recv(k)
                    if not b:
                        self.error = "eof after %d of %d bytes" % (self.done, self.n)
                        return
                else:
                    b = pat.next(k)
                    self.s.sendall(b)
                h.update(b)
                self.done += len(b)
                ahead = self.done / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as e:
            self.error = "%r after %d of %d bytes" % (e, self.done, self.n)
        self.sha = h.hexdigest()


class Prober(threading.Thread):
    """Connect to host:port every interval seconds until stopped; every result
    is kept (all must be 'accepted')."""

    def __init__(self, host, port, interval=0.01):
        super().__init__(daemon=True)
        self.host, self.port, self.interval = host, port, interval
        self.results = {}
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            r = X.connect_result(self.host, self.port, timeout=3.0)
            self.results[r] = self.results.get(r, 0) + 1
            time.sleep(self.interval)

    def finish(self):
        self.stop_ev.set()
        self.join(10)
        return self.results


class HandoverCase(X.XCase):
    """The relay listens on a handover socket of its own; takeover() starts a
    new relay process on it and waits for the old one to exit 0."""

    extra_relay = None

    @property
    def relay_overrides(self):
        if not hasattr(self, "_ho_sock"):
            self._ho_sock = os.path.join(handover_dir(), "handover.sock")
        o = {"relay": {"handover_socket": self._ho_sock, "handover_timeout_ms": 10000,
                       "lease": {"resume_hold_s": 60}}}
        return H.deep_merge(o, self.extra_relay or {})

    def takeover(self, cfg=None, expect_ok=True, name=None, timeout=20.0):
        """A new relay with --takeover (cfg: a config dict, default the running
        one's). Returns (new Proc, seconds until the old relay exited)."""
        self.ntake = getattr(self, "ntake", 0) + 1
        name = name or "relay-%d" % (self.ntake + 1)
        path = H.write_config(os.path.join(self.stack.dir, name + ".json"),
                              cfg or self.stack.relay_cfg)
        old = self.stack.relay
        p = H.Proc(name, [H.BIN, "relay", "--config", path, "--takeover"], self.stack.dir)
        t0 = time.monotonic()
        p.start()
        self.track(p)
        if not expect_ok:
            try:
                rc = p.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.fail("%s: refused takeover did not exit within %.0f s" % (name, timeout))
            self.retire(p)
            return p, rc
        # Until the old relay exits; a new one that gave up ends the wait early.
        deadline = t0 + timeout
        while old.p.poll() is None and p.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            old.p.wait(max(0.0, min(2.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        if old.p.poll() is None:
            if not p.alive():
                self.retire(p)
            self.fail("old relay %s still running %.1f s after the takeover began (%s: %s); "
                      "it says: %s" % (old.name, time.monotonic() - t0, name,
                                       "running" if p.alive() else "exited %s" % p.p.poll(),
                                       old.grep("handover to")[-2:]))
        rc = old.p.returncode
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, "old relay %s exited %s after the handover" % (old.name, rc))
        self.retire(old)
        self.assertTrue(p.alive(), "%s died after taking over" % name)
        self.stack.relay = p
        return p, took

    def fake_new(self, name):
        """A stand-in new relay (FAKE_NEW) that takes the state and never
        commits; returned once it has the whole state."""
        path = os.path.join(self.stack.dir, "fake_new.py")
        with open(path, "w") as f:
            f.write(FAKE_NEW)
        out = open(os.path.join(self.stack.dir, name + ".out"), "w+")
        p = subprocess.Popen([sys.executable, path, self._ho_sock,
                              self.stack.relay_cfg["relay"]["listen"]],
                             stdout=out, stderr=subprocess.STDOUT, preexec_fn=H._child_setup)
        self.addCleanup(lambda: (p.kill(), p.wait(5), out.close()))
        ok = X.wait_for(lambda: (out.seek(0), out.read())[1].startswith("GOT"), 15)
        self.assertTrue(ok, "the stand-in never got the state: %r" % (out.seek(0), out.read())[1])
        return p

    def handover_line(self, proc):
        """(ms, leases, conns, bytes, retained, waiting) of the old relay's summary line."""
        lines = proc.grep("handed over to pid")
        self.assertTrue(lines, "%s has no 'handed over' line" % proc.name)
        m = re.search(r"in (\d+) ms: (\d+) leases, (\d+) executor connections \((\d+) bytes "
                      r"buffered, (\d+) of them sent and not yet acknowledged\), (\d+) waiting",
                      lines[-1])
        self.assertIsNotNone(m, lines[-1])
        return tuple(int(x) for x in m.groups())

    def resumed_count(self):
        return X.log_count(self.stack.tunnel, "resumed ")

    def wait_resumed(self, before, timeout=15.0):
        self.assertTrue(X.wait_for(lambda: self.resumed_count() > before, timeout),
                        "the sidecar did not resume within %.0f s" % timeout)

    def assert_rpcs_go_on(self, rpcs, seqs, what="the handover"):
        """Every RPC connection made two more round trips since seqs, none
        failed."""
        self.assertTrue(X.wait_for(lambda: all(c.seq > s + 2 for c, s in zip(rpcs, seqs))
                                   or any(c.error for c in rpcs), 20),
                        "request/response did not resume after " + what)
        errs = [c.error for c in rpcs if c.error]
        self.assertFalse(errs, errs[:3])


class TestHandoverUnderLoad(HandoverCase):

    def test_three_handovers_lose_nothing(self):
        st = self.stack
        d = st.start_driver(handlers={"blockManager": H.h_duplex(501, BULK, BULK)})
        rpcs = [RpcClient(st.exec_host, st.ports["driver"], i) for i in range(RPC_CONNS)]
        for c in rpcs:
            c.start()
        # the bulk connection: executor -> driver and driver -> executor at once,
        # both paced, so that every handover finds bytes in flight and buffered (a
        # small receive buffer keeps the relay's output to this executor full)
        bulk = st.executor("blockManager", timeout=30, rcvbuf=32 * KiB)
        tx = Throttled(bulk, 502, BULK, BULK_RATE)
        rx = Throttled(bulk, 0, BULK, BULK_RATE, read=True)
        tx.start()
        rx.start()
        self.assertTrue(X.wait_for(lambda: all(c.seq > 3 for c in rpcs), 30),
                        "request/response did not start on every connection")
        prober = Prober(st.exec_host, st.ports["driver"])
        prober.start()
        report = []
        for i in range(3):
            time.sleep(0.5)
            before = self.resumed_count()
            old = st.relay
            seqs = [c.seq for c in rpcs]
            new, took = self.takeover()
            ms, leases, conns, nbytes, retained, waiting = self.handover_line(old)
            self.assertEqual(leases, 1)
            self.assertGreaterEqual(conns, RPC_CONNS + 1)
            self.wait_resumed(before)
            # request/response flows again on every connection
            self.assert_rpcs_go_on(rpcs, seqs)
            report.append((ms, conns, nbytes, retained, took))
            H.log("handover %d: %d ms in the old relay, %.2f s until it exited; %d executor "
                  "connections and %d buffered bytes (%d retained) moved" %
                  (i + 1, ms, took, conns, nbytes, retained))
        probes = prober.finish()
        self.assertEqual(set(probes), {"accepted"},
                         "executor connects during the handovers: %r" % probes)
        tx.join(120)
        rx.join(120)
        self.assertIsNone(tx.error, "bulk executor -> driver: %s" % tx.error)
        self.assertIsNone(rx.error, "bulk driver -> executor: %s" % rx.error)
        self.assertEqual(rx.sha, H.pattern_sha(501, BULK), "bulk driver -> executor: bytes differ")
        dc = [c for c in d.all_conns() if c.port_name == "blockManager"][0]
        bulk.shutdown(socket.SHUT_WR)
        self.assertTrue(dc.wait_done(60), "driver side of the bulk transfer did not finish")
        self.assertEqual(dc.info.get("rx_end"), "ok", dc.info)
        self.assertEqual(dc.rx_sha, H.pattern_sha(502, BULK), "bulk executor -> driver: bytes differ")
        problems = [p for p in (c.finish() for c in rpcs) if p]
        self.assertFalse(problems, problems[:3])
        self.assertGreater(min(c.seq for c in rpcs), 10)
        H.log("RESULT handovers: %s; %d probes accepted; rpc max gap %.2f s" % (
            report, probes.get("accepted", 0), max(c.max_gap for c in rpcs)))
        # the sidecar never saw a refusal and lost no stream
        self.assertFalse(st.tunnel.grep("Connection refused"), st.tunnel.grep("Connection refused"))
        self.assertFalse(st.tunnel.grep("stream lost"), st.tunnel.grep("stream lost")[:3])
        for p in self.tracked:
            self.assertFalse(p.grep("stream lost"), (p.name, p.grep("stream lost")[:3]))


class TestHandoverTwoTunnels(HandoverCase):
    """A sidecar holding its lease on two tunnels (tunnel.connections 2):
    the handover detaches both, the new relay takes the lease with every
    stream of both tunnels held, the sidecar resumes on one and joins the
    other again; twice in a row."""

    tunnel_overrides = {"tunnel": {"connections": 2}}

    def leases(self):
        status, body = admin_get(admin_port(self.stack.relay), "/v1/leases")
        if status != 200:
            return {}
        j = json.loads(body)
        return {l["id"]: l for l in (j["leases"] if isinstance(j, dict) else j)}

    def tunnels(self):
        return self.leases().get(self.stack.lease["lease"], {}).get("tunnels")

    def test_both_tunnels_move_and_every_stream_resumes(self):
        st = self.stack
        self.assertTrue(X.wait_for(lambda: self.tunnels() == 2, 15), "no second tunnel")
        st.start_driver()
        rpcs = [RpcClient(st.exec_host, st.ports["driver"], i) for i in range(12)]
        for c in rpcs:
            c.start()
        self.assertTrue(X.wait_for(lambda: all(c.seq > 3 for c in rpcs), 30),
                        "request/response did not start on every connection")
        for i in range(2):
            before = self.resumed_count()
            seqs = [c.seq for c in rpcs]
            old = st.relay
            new, took = self.takeover()
            ms, leases, conns, nbytes, retained, waiting = self.handover_line(old)
            self.assertEqual(leases, 1)
            self.assertGreaterEqual(conns, 12)
            self.wait_resumed(before)
            self.assert_rpcs_go_on(rpcs, seqs)
            self.assertTrue(X.wait_for(lambda: self.tunnels() == 2, 15),
                            "handover %d: the lease is not on two tunnels again: %r"
                            % (i + 1, self.leases()))
            H.log("handover %d with two tunnels: %d ms, %d connections moved"
                  % (i + 1, ms, conns))
        problems = [p for p in (c.finish() for c in rpcs) if p]
        self.assertFalse(problems, problems[:3])
        for p in self.tracked:
            self.assertFalse(p.grep("stream lost"), (p.name, p.grep("stream lost")[:3]))
        self.assertEqual(H.read_spark_json(st.spark_json)["lease"], st.lease["lease"])


def tx_queue(local_port, remote_port):
    """Bytes the kernel holds unacknowledged on the loopback TCP socket
    127.0.0.1:local_port -> 127.0.0.1:remote_port (None: no such socket)."""
    want = ("0100007F:%04X" % local_port, "0100007F:%04X" % remote_port)
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if (p[1], p[2]) == want:
                return int(p[4].split(":")[0], 16)
    return None


class TestHandoverRightAfterATunnelWasReplaced(HandoverCase):
    """A tunnel replaced by another one of its lease (the sidecar resumed on a
    new tunnel while the relay still had the old one) closes over up to 2 s
    when what the relay sent it is stuck (a sidecar that no longer reads it):
    its GOAWAY waits behind that. A handover in that time must still happen:
    the old session carries none of the lease's streams any more (they went
    to the lease's group and on to the new tunnel)."""

    auto_tunnel = False
    # the stream the fakes never answer would hold the relay's exit 5 s
    extra_relay = {"relay": {"drain_timeout_ms": 500}}

    def stuck_tunnel(self):
        """A fake sidecar's tunnel with a lease, an executor stream over it,
        and relay output that can never leave (the fake reads nothing, its
        receive buffer and the relay's send buffer are full) queued in the
        session itself, not just in the TLS layer: that is what makes the
        relay's close of it wait for its 2 s flush timeout. Returns
        (fake, lease message, executor socket)."""
        st = self.stack
        a = F.FakeSidecar(st.relay_port, H.certs().ca)
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        raw.settimeout(5)
        raw.connect(a.addr)
        a.sock = a.context().wrap_socket(raw, server_hostname=a.server_name)
        a.sock.settimeout(5)
        self.addCleanup(a.close)
        a.start_h2()
        a.send_ctl(F.register_msg())
        lease = a.read_ctl(5)
        self.assertEqual((lease or {}).get("type"), "lease", lease)
        # Streams start with no send window (SETTINGS_INITIAL_WINDOW_SIZE 0),
        # the connection with all of it: we hand out every byte.
        a.sendall(F.frame(F.SETTINGS, 0, 0, struct.pack("!HI", 4, 0)) +
                  F.frame(F.WINDOW_UPDATE, 0, 0, struct.pack("!I", 0x7FFFFFFF - 65535)))
        acks = sum(1 for f in a.frames if f[0] == F.SETTINGS and f[1] & F.FLAG_ACK)
        deadline = time.monotonic() + 5
        while sum(1 for f in a.frames if f[0] == F.SETTINGS and f[1] & F.FLAG_ACK) <= acks:
            a.read_frame(max(0.01, deadline - time.monotonic()))
        ex = H.connect(lease["host"], int(lease["ports"]["driver"]), timeout=5)
        self.addCleanup(ex.close)
        while True:
            ftype, _, sid, _ = a.read_frame(max(0.01, deadline - time.monotonic()))
            if ftype == F.HEADERS and sid != F.CTL_STREAM:
                break
        a.sendall(F.frame(F.HEADERS, F.FLAG_END_HEADERS, sid, F.STATUS_200))
        ex.settimeout(10)

        def push():
            try:
                ex.sendall(bytes(4 * MiB))  # far more than the relay takes
            except OSError:
                pass
        threading.Thread(target=push, daemon=True).start()
        # One DATA frame's worth of window at a time, each with a PING: the
        # relay's PING ACK goes first, so a DATA frame never meets a full TLS
        # layer on its own (nghttp2 would hold it back, and with it anything
        # after it, the GOAWAY included). Once the kernel is full, the TLS
        # layer fills up, and the next PING ACK stays in the session's output.
        # Done once the kernel took nothing of the last 10 frames (160 KiB,
        # where the TLS layer stops at 64 KiB).
        rport, aport = st.relay_port, a.sock.getsockname()[1]
        last, same = None, 0
        for i in range(300):
            a.sendall(F.frame(F.WINDOW_UPDATE, 0, sid, struct.pack("!I", 16384)) +
                      F.frame(F.PING, 0, 0, struct.pack("!Q", i)))
            time.sleep(0.02)
            q = tx_queue(rport, aport)
            self.assertIsNotNone(q, "no relay socket to the fake sidecar in /proc/net/tcp")
            same = same + 1 if q == last else 0
            last = q
            if same >= 10:
                break
        else:
            self.fail("the relay's output to the fake sidecar never backed up")
        H.log("the relay's output is stuck: %d bytes in the kernel after %d frames"
              % (last, i + 1))
        return a, lease, ex

    def replace_and_take_over(self, register):
        """Replace the stuck tunnel by a new one registering with
        register(first lease message), take over at once, and check that the
        lease moved with its stream and resumes on the new relay."""
        st = self.stack
        a, lease, ex = self.stuck_tunnel()
        aport = a.sock.getsockname()[1]
        b = F.FakeSidecar(st.relay_port, H.certs().ca).connect().start_h2()
        self.addCleanup(b.close)
        b.send_ctl(register(lease))
        again = b.read_ctl(5)
        self.assertEqual(((again or {}).get("type"), (again or {}).get("lease")),
                         ("lease", lease["lease"]), again)
        self.assertTrue(X.wait_log(st.relay, "closing this one", 5), "a was not replaced")
        old = st.relay
        new, took = self.takeover(timeout=10)
        # The case at hand: the replaced session was still closing when the
        # handover froze the relay.
        lines = old.log_text().splitlines()
        freeze = [i for i, l in enumerate(lines) if "freezing" in l][0]
        closed = [i for i, l in enumerate(lines) if "peer=127.0.0.1:%d]" % aport in l and
                  "CLOSING -> CLOSED" in l]
        self.assertFalse(closed and closed[0] < freeze,
                         "the replaced tunnel was closed before the handover began")
        ms, leases, conns = self.handover_line(old)[:3]
        self.assertEqual(leases, 1, "the lease did not move")
        self.assertEqual(conns, 1, "the executor connection did not move")
        H.log("handover right after the replacement: %d ms in the old relay, %.2f s until "
              "it exited" % (ms, took))
        # the new relay has the lease: the sidecar resumes it there
        c = F.FakeSidecar(st.relay_port, H.certs().ca).connect().start_h2()
        self.addCleanup(c.close)
        c.send_ctl(F.register_msg(resume=again["resume"] or lease["resume"]))
        m = c.read_ctl(5)
        self.assertEqual(((m or {}).get("type"), (m or {}).get("lease")),
                         ("lease", lease["lease"]), m)
        self.assertTrue(X.wait_log(new, "resuming lease=" + lease["lease"], 5))

    def test_replaced_by_a_resume(self):
        self.replace_and_take_over(lambda lease: F.register_msg(resume=lease["resume"]))

    def test_replaced_by_a_join(self):
        # what a sidecar with tunnel.connections > 1 sends for a tunnel it lost
        self.replace_and_take_over(lambda lease: F.register_msg(
            resume="join_" + lease["resume"], join=lease["lease"], replaces=lease["tunnel"]))


def admin_port(proc):
    """The admin API port a relay logged."""
    for line in proc.grep("admin API listening"):
        m = re.search(r"\[relay admin 127\.0\.0\.1:(\d+)\]", line)
        if m:
            return int(m.group(1))
    return None


def admin_get(port, path):
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as e:
        return None, repr(e)


class TestHandoverKeepsTheAdminAPI(HandoverCase):

    def test_admin_port_and_counters_carry_over(self):
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        port = admin_port(st.relay)
        self.assertIsNotNone(port, "the relay logged no admin port")
        for i in range(2):
            new, _ = self.takeover()
        # the admin listener was handed over too: the same port answers, from
        # the new process, which knows the lease and counts the handovers
        self.assertEqual(admin_port(new), port)
        code, body = admin_get(port, "/v1/leases")
        self.assertEqual(code, 200, body)
        self.assertIn(st.lease["lease"], body)
        code, body = admin_get(port, "/metrics")
        self.assertEqual(code, 200, body)
        self.assertRegex(body, r"(?m)^sparkrelay_handovers_total 2$")
        self.assertRegex(body, r"(?m)^sparkrelay_leases_granted_total 1$")
        self.assertIsNone(e.check(), "the executor connection after two handovers")
        e.close()


class TestHandoverTenant(HandoverCase):
    """A lease made under a tenant matched by its token, with a limit of two
    executor connections."""

    TOKEN = "ho-tenant-" + os.urandom(8).hex()
    extra_relay = {"relay": {"tenants": [{
        "name": "team", "match": {"token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()]},
        "limits": {"connections": 2}}]}}
    tunnel_overrides = {"tunnel": {"token": TOKEN}}

    def test_removed_tenant_keeps_the_limits_of_its_leases(self):
        # The new configuration has no tenants. The lease keeps the tenant
        # and the limits it was made under, as after a reload that removed
        # them: its two open connections go on, a third is still refused.
        st = self.stack
        st.start_driver()
        es = [X.Echoer(st.exec_host, st.ports["driver"]) for _ in range(2)]
        for e in es:
            self.assertIsNone(e.check())
        self.assertIsNotNone(X.echo_once(st.exec_host, st.ports["driver"], seed=7, timeout=5),
                             "a third connection got through before the handover: no test")
        cfg = json.loads(json.dumps(st.relay_cfg))
        del cfg["relay"]["tenants"]
        new, _ = self.takeover(cfg)
        self.assertTrue(X.wait_log(new, "keeps the rules it was made under", 5),
                        new.log_text()[-2000:])
        self.assertTrue(X.wait_log(st.tunnel, "resumed ", 15, count=1))
        for e in es:
            self.assertIsNone(e.check(), "open executor connection after the handover")
        self.assertIsNotNone(X.echo_once(st.exec_host, st.ports["driver"], seed=8, timeout=5),
                             "the tenant's connection limit was lost in the handover")
        self.assertTrue(X.wait_log(new, "tenant team is at its limit of 2 connections", 5))
        for e in es:
            self.assertIsNone(e.check())
            e.close()

    def test_a_tenant_that_remains_keeps_its_leases_to_itself(self):
        # The tenant is still configured, but the sidecar's token now
        # matches another one: the lease stays the old tenant's, and the
        # sidecar's resume is refused (it registers afresh, on new ports).
        st = self.stack
        cfg = json.loads(json.dumps(st.relay_cfg))
        cfg["relay"]["tenants"] = [
            {"name": "team", "match": {"token_sha256": [hashlib.sha256(b"x").hexdigest()]}},
            {"name": "moved", "match": {"token_sha256": [
                hashlib.sha256(self.TOKEN.encode()).hexdigest()]}}]
        new, _ = self.takeover(cfg)
        self.assertTrue(X.wait_log(new, "registration refused: unknown_lease", 10),
                        new.log_text()[-2000:])
        self.assertTrue(X.wait_log(new, "tenant moved", 10), new.log_text()[-2000:])


class TestHandoverConfig(HandoverCase):

    extra_relay = {"relay": {"routes": [{"name": "pods", "executor_cidrs": ["127.0.0.0/8"]}]}}

    def new_config(self, routes):
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["routes"] = routes
        return cfg

    def test_changed_route_applies(self):
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=3))
        new, _ = self.takeover(self.new_config(
            [{"name": "pods", "executor_cidrs": ["10.0.0.0/8"]}]))
        self.assertTrue(X.wait_log(st.tunnel, "resumed ", 15, count=1))
        # the open connection goes on; a new one from 127.0.0.1 is now outside
        # the route's executor_cidrs and refused
        self.assertIsNone(e.check(), "open executor connection after the handover")
        self.assertIsNotNone(X.echo_once(st.exec_host, st.ports["driver"], seed=4, timeout=5),
                             "a new executor outside the changed route got through")
        self.assertTrue(X.wait_log(new, "address not in route pods's executor_cidrs", 5))
        self.assertIsNone(e.check())
        e.close()

    def test_removed_route_keeps_the_rules_of_its_leases(self):
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        new, _ = self.takeover(self.new_config(
            [{"name": "others", "executor_cidrs": ["10.0.0.0/8"]}]))
        self.assertTrue(X.wait_log(new, "keeps the rules it was made under", 5))
        # as after a reload that removed it: the lease keeps its route's CIDRs
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=5))
        self.assertIsNone(e.check())
        e.close()

    def test_moved_pool_keeps_the_ports_of_its_leases(self):
        # The new configuration moves the pool to other ports. The lease
        # taken over keeps its ports (the old pool, kept for it alone and
        # making no new leases), its open and new executor connections are
        # served, and a new sidecar gets ports from the moved pool.
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        cfg = json.loads(json.dumps(st.relay_cfg))
        base = H.pick_pool_base(8)
        cfg["relay"]["pool"]["port_min"], cfg["relay"]["pool"]["port_max"] = base, base + 7
        new, _ = self.takeover(cfg)
        self.assertTrue(X.wait_log(new, "kept with its old settings for the leases taken "
                                   "over", 5), new.log_text()[-2000:])
        self.assertTrue(X.wait_log(st.tunnel, "resumed ", 15, count=1))
        self.assertIsNone(e.check(), "open executor connection after the handover")
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=6),
                          "a new executor of the lease on its old port")
        fs = F.FakeSidecar(st.relay_port, H.certs().ca).connect().start_h2()
        self.addCleanup(fs.close)
        fs.send_ctl(F.register_msg(app="after-the-move"))
        m = fs.read_ctl(10) or {}
        self.assertEqual(m.get("type"), "lease", m)
        self.assertTrue(all(base <= p <= base + 7 for p in m["ports"].values()), m)
        self.assertIsNone(e.check())
        e.close()

    def test_other_listen_address_is_refused_and_the_relay_goes_on(self):
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        cfg = json.loads(json.dumps(st.relay_cfg))
        cfg["relay"]["listen"] = "127.0.0.1:%d" % H.free_port()
        p, rc = self.takeover(cfg, expect_ok=False)
        self.assertNotEqual(rc, 0)
        self.assertTrue(p.grep("relay.listen differs"), p.tail())
        self.assertTrue(st.relay.grep("takeover by pid"), "the old relay logged no refusal")
        self.assertFalse(st.relay.grep("freezing"), "the old relay froze for a refused takeover")
        self.assert_relay_alive()
        self.assertIsNone(e.check(), "executor connection after the refused takeover")
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=6))
        self.assertFalse(st.tunnel.grep("reconnecting"), "the sidecar lost its tunnel")
        e.close()

    def hello(self, v):
        """A handover HELLO of protocol version v on the old relay's socket:
        the old relay's answer (type byte, JSON)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        try:
            s.connect(self._ho_sock)
            s.send(b"H" + json.dumps({"v": v, "version": "9.9.9", "pid": 0, "listen":
                                      self.stack.relay_cfg["relay"]["listen"]}).encode())
            msg = s.recv(70000)
        finally:
            s.close()
        return msg[:1], json.loads(msg[1:] or b"null")

    def test_another_protocol_version_and_a_draining_relay_are_refused(self):
        # A rolling update to a release that speaks another handover
        # protocol: the running relay refuses with the version it needs,
        # freezes nothing, and goes on serving; so does a draining relay,
        # whose streams are finishing and whose state is no longer whole.
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        self.assertEqual(self.hello(2), (b"X", {"error": "handover protocol v1 is required"}))
        self.assertTrue(X.wait_log(st.relay, "refused: handover protocol v1 is required", 5))
        self.assertFalse(st.relay.grep("freezing"), "the old relay froze for a refused takeover")
        self.assert_relay_alive()
        self.assertIsNone(e.check(), "executor connection after the refused takeover")
        self.assertFalse(st.tunnel.grep("reconnecting"), "the sidecar lost its tunnel")
        st.relay.p.send_signal(signal.SIGTERM)  # drains: e's stream holds it open
        self.assertTrue(X.wait_log(st.relay, "draining", 5))
        p, rc = self.takeover(expect_ok=False, name="relay-late")
        self.assertNotEqual(rc, 0)
        self.assertTrue(p.grep("the running relay refused: this relay is draining"), p.tail())
        self.assertTrue(st.relay.grep("refused: this relay is draining"), st.relay.tail())
        self.assertIsNone(e.check(), "executor connection of the draining relay")
        e.close()

    def test_a_listen_changed_by_a_reload_is_still_refused(self):
        """A reload cannot move the tunnel listener: it warns, and the relay
        goes on saying (and handing over) the address it listens on, so a
        takeover with the changed relay.listen is still refused. It used to
        take the reloaded value as its own and pass the old listener on to
        a process configured for another address."""
        st = self.stack
        st.start_driver()
        cfg = json.loads(json.dumps(st.relay_cfg))
        cfg["relay"]["listen"] = "127.0.0.1:%d" % H.free_port()
        H.write_config(st.relay_cfg_path, cfg)
        st.relay.p.send_signal(signal.SIGHUP)
        lines = X.wait_log(st.relay, "reload: relay.listen changed; the running value stays", 10)
        self.assertTrue(lines, st.relay.tail())
        self.assertTrue(X.wait_log(st.relay, "configuration reloaded", 5))
        p, rc = self.takeover(cfg, expect_ok=False)
        self.assertNotEqual(rc, 0)
        self.assertTrue(p.grep("relay.listen differs"), p.tail())
        self.assert_relay_alive()
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=8))
        # the file as it was started: a takeover works
        H.write_config(st.relay_cfg_path, st.relay_cfg)
        self.takeover()
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=9))


class TestHandoverWithTheSidecarAway(HandoverCase):

    def test_lease_in_grace_and_waiting_executor_move(self):
        st = self.stack
        st.start_driver()
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(st.relay, "tunnel lost", 10))
        # an executor arrives while the tunnel is away: it waits in the relay
        s = H.connect(st.exec_host, st.ports["driver"], timeout=30)
        m = H.message(1, 4 * KiB, seed=42)
        s.sendall(m)
        self.assertTrue(X.wait_log(st.relay, "waiting for the tunnel", 10))
        old = st.relay
        new, _ = self.takeover()
        self.assertEqual(self.handover_line(old)[-1], 1, "the waiting executor was not passed")
        # the sidecar comes back to the new relay: same lease, and the executor
        # that waited gets through with its first bytes
        self.restart_stack_sidecar("tunnel-2")
        self.assertTrue(X.wait_log(new, "resuming lease=" + st.lease["lease"], 15),
                        "the sidecar did not resume its lease on the new relay")
        end, got, _, data = H.recv_exact(s, len(m))
        self.assertEqual((end, data == m), ("ok", True), "waiting executor: %s after %d" % (end, got))
        s.close()


# A stand-in for a new relay that stops mid-handover: it greets the running
# relay, reads its state (descriptors included) and then either waits to be
# killed or just never commits.
FAKE_NEW = r"""
import json, socket, sys, time
path, listen = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(path)
s.send(b"H" + json.dumps({"v": 1, "version": "fake", "pid": 0, "listen": listen}).encode())
fds, n = [], 0
while True:
    msg, got, flags, addr = socket.recv_fds(s, 70000, 16)
    fds += got
    n += 1
    if not msg or msg[:1] != b"S":
        continue
    if json.loads(msg[1:]).get("kind") == "end":
        break
print("GOT %d messages %d fds" % (n, len(fds)), flush=True)
time.sleep(120)
"""


class TestHandoverFailures(HandoverCase):

    extra_relay = {"relay": {"handover_timeout_ms": 1500}}

    def check_serving(self, rpcs, what, before):
        st = self.stack
        self.wait_resumed(before)
        seqs = [c.seq for c in rpcs]
        self.assert_rpcs_go_on(rpcs, seqs, what)
        self.assertIsNone(X.echo_once(st.exec_host, st.ports["driver"], seed=9))

    def test_new_process_killed_or_stalled_mid_handover(self):
        st = self.stack
        st.start_driver()
        rpcs = [RpcClient(st.exec_host, st.ports["driver"], i) for i in range(8)]
        for c in rpcs:
            c.start()
        self.assertTrue(X.wait_for(lambda: all(c.seq > 3 for c in rpcs), 20))
        prober = Prober(st.exec_host, st.ports["driver"])
        prober.start()

        # killed after it received everything, before it committed
        before = self.resumed_count()
        p = self.fake_new("fake-1")
        self.assertTrue(X.wait_log(st.relay, "state sent", 5))
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        self.assertTrue(X.wait_log(st.relay, "abandoned: the new relay went away", 5),
                        "the old relay did not notice the new one die")
        self.assert_relay_alive()
        self.check_serving(rpcs, "a killed takeover", before)

        # alive but never committing: abandoned after handover_timeout_ms
        before = self.resumed_count()
        p = self.fake_new("fake-2")
        self.assertTrue(X.wait_log(st.relay, "not committed within", 5),
                        "the old relay did not give up on a stalled takeover")
        self.assert_relay_alive()
        self.check_serving(rpcs, "a stalled takeover", before)
        p.kill()
        p.wait(5)

        # and a real takeover still works, with the same connections
        before = self.resumed_count()
        self.takeover()
        self.check_serving(rpcs, "a real takeover", before)
        probes = prober.finish()
        self.assertEqual(set(probes), {"accepted"}, probes)
        problems = [x for x in (c.finish() for c in rpcs) if x]
        self.assertFalse(problems, problems[:3])


class TestHandoverOneAtATime(HandoverCase):
    """Two takeovers at once (a restart that raced another): while one new
    relay holds the state, a second is refused with the reason and exits
    non-zero; the running relay goes on, takes back what the first one
    abandoned, and a takeover afterwards works."""

    def test_a_second_takeover_while_one_is_under_way_is_refused(self):
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        fake = self.fake_new("fake-new")
        p, rc = self.takeover(expect_ok=False, name="relay-second")
        self.assertNotEqual(rc, 0)
        self.assertTrue(p.grep("the running relay refused: a handover is under way "
                               "already"), p.tail())
        self.assertTrue(st.relay.grep("refused: a handover to pid %d is under way already"
                                      % fake.pid), "the old relay logged no refusal")
        self.assert_relay_alive()
        # the first one goes away: everything is the old relay's again
        before = self.resumed_count()
        fake.kill()
        fake.wait(5)
        self.assertTrue(X.wait_log(st.relay, "abandoned: the new relay went away", 10))
        self.wait_resumed(before)
        self.assertIsNone(e.check(), "executor connection after the abandoned handover")
        self.takeover()
        self.assertIsNone(e.check(), "executor connection after the takeover")
        e.close()


class TestHandoverSocketInTheWay(HandoverCase):
    """What an operator may leave at relay.handover_socket is not taken over
    by a relay started without --takeover: a running relay's socket (another
    relay.listen, the same handover path) stays that relay's, so it can still
    be taken over; a file that is not a socket stays as it was. Either way the
    new relay serves, with live handover off, and says why."""

    def start_second(self, name, handover_socket):
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["listen"] = "127.0.0.1:%d" % H.free_port()
        cfg["relay"]["handover_socket"] = handover_socket
        base = H.pick_pool_base()
        cfg["relay"]["pool"].update(port_min=base, port_max=base + H.POOL_SIZE - 1)
        path = H.write_config(os.path.join(self.stack.dir, name + ".json"), cfg)
        p = H.Proc(name, [H.BIN, "relay", "--config", path], self.stack.dir).start()
        self.track(p)
        self.assertTrue(X.wait_log(p, "listening for sidecars on", 10), p.tail())
        return p

    def stop_second(self, p):
        self.assertEqual(p.stop_problems(10), [])
        self.retire(p)

    def test_a_running_relays_socket_stays_its_own(self):
        st = self.stack
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        p = self.start_second("relay-other", self._ho_sock)
        self.assertTrue(p.grep("a running relay answers there (start with --takeover"),
                        p.tail())
        self.stop_second(p)
        # the first relay's socket is still there and still its own
        self.assertTrue(stat.S_ISSOCK(os.lstat(self._ho_sock).st_mode))
        self.takeover()
        self.assertIsNone(e.check(), "executor connection after the takeover")
        e.close()

    def test_a_file_that_is_not_a_socket_is_left_alone(self):
        path = os.path.join(handover_dir(), "handover.sock")
        with open(path, "w") as f:
            f.write("an operator's notes\n")
        p = self.start_second("relay-file", path)
        self.assertTrue(p.grep("a file that is not a socket is in the way; live handover "
                               "is off"), p.tail())
        self.stop_second(p)
        with open(path) as f:
            self.assertEqual(f.read(), "an operator's notes\n")


if __name__ == "__main__":
    H.main()
