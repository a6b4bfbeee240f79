"""Stream resumption with real processes: executor connections outlive the
tunnel that carries them (protocol v2).

  - the tunnel's TCP connection killed mid-transfer (`ss -K`), a few times,
    then over and over for 1.5 s (TLS handshake, registration, resume);
  - the sidecar frozen (SIGSTOP) past the PING timeout (the relay's resume
    line counts the time away from the freeze, not from the timeout);
  - the tunnel path blackholed (iptables DROP) for 5 s and for 60 s, with the
    relay and the sidecar in two network namespaces joined by a veth pair;
  - a peer that never comes back: streams reset after resume_hold_s, counted,
    and the relay's memory back to its baseline;
  - a sidecar killed and restarted: the driver sockets died with it, so the
    relay resets their executor connections once the lease is resumed.

Load: executor connections doing request/response with sequence numbers
(each echo checked byte for byte, in order, one request in flight per
connection), a bulk transfer each way on one connection (sha256 of every
byte, paced so that the cuts land in the middle of it) and, on loopback,
connections half-closed each way across the cuts. "Survived" means: no
connection reset or ended at either end, no new driver connection (a resumed
stream keeps its driver socket), every byte exact and in order, and every
connection answering a new request within 1 s of the sidecar's reconnect
(the relay's "tunnel up" line of the tunnel that resumed the lease).

Also here: a resume token must outlive the loss of the lease message that
carried its successor (found by the flapping test).

Each measured number (reconnect time after the path returns, streams
resumed, bytes replayed, RSS) is logged with the prefix "measured:".
"""

import calendar
import ctypes
import hashlib
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid

import fake_sidecar as F
import harness as H
import harness_extra as X
from harness import KiB, MiB, h_echo


# --------------------------------------------------------------------------
# Logs.

def log_time(line):
    """Epoch seconds of a log line ("2026-11-27T07:31:31.123Z LEVEL [...] ...")."""
    return calendar.timegm(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")) + \
        int(line[20:23]) / 1000.0


RESUMED_RE = re.compile(r"resumed (\d+) streams, replayed (\d+) bytes after ([0-9.]+) s away")


def resumes(proc):
    """[(streams, bytes replayed, seconds away, epoch time)] from proc's log."""
    out = []
    for l in proc.grep("resumed "):
        m = RESUMED_RE.search(l)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), float(m.group(3)), log_time(l)))
    return out


def reconnect_time(relay, resumed_before):
    """When the tunnel that resumed the lease (the resumed_before+1-th
    "resuming lease" line) came up at the relay: epoch seconds of the last
    "tunnel up" line before it. None if there is no such resume yet."""
    lines = relay.log_text().splitlines()
    up = None
    n = 0
    for l in lines:
        if "tunnel up" in l:
            up = l
        elif "resuming lease" in l:
            n += 1
            if n == resumed_before + 1:
                return log_time(up if up is not None else l)
    return None


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


# --------------------------------------------------------------------------
# Network namespaces: a thread may enter one for a while (sockets made there
# stay there), a child process is started in one with `ip netns exec`.

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


class netns:
    """with netns(name): sockets created by this thread belong to namespace
    name. Only the calling thread moves (setns on a network namespace is per
    thread); it moves back on exit."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.old = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open("/var/run/netns/" + self.name, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setns(%s): %s" % (self.name, os.strerror(e)))
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        try:
            if _libc.setns(self.old, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setns back: %s" % os.strerror(e))
        finally:
            os.close(self.old)


def run(argv, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=20)
    if check and r.returncode != 0:
        raise H.HarnessError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                     r.stderr.strip()))
    return r


_namespaces = set()


def _delete_namespaces():
    for ns in list(_namespaces):
        run(["ip", "netns", "del", ns], check=False)
        _namespaces.discard(ns)


class NetPair:
    """Two network namespaces (relay, sidecar) joined by a veth pair with a
    private /30 and no default route. Removed by remove(), and at exit."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.rns, self.sns = "srr-" + tag, "srs-" + tag
        self.rif, self.sif = "srr" + tag, "srs" + tag
        k = random.randrange(0, 1 << 14)  # 10.64.0.0/10 in /30 steps, any will do
        base = (10 << 24) | (64 << 16) | (k << 2)
        ip = lambda n: socket.inet_ntoa(struct.pack("!I", base + n))
        self.rip, self.sip = ip(1), ip(2)

    def create(self):
        import atexit
        atexit.register(_delete_namespaces)
        for ns in (self.rns, self.sns):
            run(["ip", "netns", "add", ns])
            _namespaces.add(ns)
        # Both ends made in their namespaces: nothing is left behind in ours.
        run(["ip", "-n", self.rns, "link", "add", self.rif, "type", "veth", "peer", "name",
             self.sif, "netns", self.sns])
        for ns, ifn, addr in ((self.rns, self.rif, self.rip), (self.sns, self.sif, self.sip)):
            run(["ip", "-n", ns, "addr", "add", addr + "/30", "dev", ifn])
            run(["ip", "-n", ns, "link", "set", ifn, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return self

    def remove(self):
        for ns in (self.rns, self.sns):
            if ns in _namespaces:
                run(["ip", "netns", "del", ns], check=False)
                _namespaces.discard(ns)

    def rules(self, op):
        """Add (-A) or delete (-D) the blackhole: every packet over the veth,
        both ways, dropped in the sidecar's namespace (its loopback, where the
        driver is, keeps working)."""
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            run(["ip", "netns", "exec", self.sns, "iptables", op, chain, flag, self.sif,
                 "-j", "DROP"])

    def blackhole(self):
        self.rules("-A")

    def restore(self):
        self.rules("-D")


# --------------------------------------------------------------------------
# Load: request/response with sequence numbers.

class _Rpc:
    def __init__(self, idx, sock):
        self.idx = idx
        self.s = sock
        self.seq = 0
        self.expect = None     # the request whose echo is awaited
        self.pending = b""     # its bytes not yet sent
        self.got = bytearray()
        self.t_send = 0.0
        self.next_at = 0.0
        self.done = []         # (seq, t_send, t_done), epoch seconds
        self.error = None
        self.t_error = None


class RpcLoad:
    """n connections, each sending a request (header: connection index, size,
    sequence number; then bytes derived from those) and waiting for its echo
    before the next, one every `interval` s. One selector thread for all.
    A connection that sees a reset, an end, a wrong byte or an extra byte
    records an error and is closed."""

    def __init__(self, connect, n, interval=0.1, min_size=64, max_size=4 * KiB, seed=1):
        self.connect = connect
        self.n = n
        self.interval = interval
        self.min_size, self.max_size = min_size, max_size
        self.seed = seed
        self.conns = []
        self.stopping = threading.Event()
        self.sel = selectors.DefaultSelector()
        self.thread = None
        self.loop_error = None
        self.closed = False

    def open(self):
        for i in range(self.n):
            s = self.connect()
            s.setblocking(False)
            c = _Rpc(i, s)
            c.next_at = time.time() + random.random() * self.interval
            self.conns.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)
        return self

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True, name="rpc")
        self.thread.start()
        return self

    def request(self, c):
        size = random.Random((self.seed << 40) ^ (c.idx << 20) ^ c.seq).randrange(
            self.min_size, self.max_size + 1)
        head = struct.pack("!IIQ", c.idx, size, c.seq)
        body = random.Random((self.seed << 48) ^ (c.idx << 24) ^ c.seq).randbytes(
            size - len(head))
        return head + body

    def _fail(self, c, why):
        if c.error is None:
            c.error = "conn %d seq %d: %s" % (c.idx, c.seq, why)
            c.t_error = time.time()
        try:
            self.sel.unregister(c.s)
        except (KeyError, ValueError):
            pass

    def _send(self, c):
        try:
            k = c.s.send(c.pending)
        except BlockingIOError:
            k = 0
        except OSError as e:
            self._fail(c, "send: %r" % (e,))
            return
        c.pending = c.pending[k:]
        self.sel.modify(c.s, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.pending else 0),
                        c)

    def _recv(self, c):
        try:
            b = c.s.recv(64 * KiB)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(c, "reset (%s) after %d echoes" % (type(e).__name__, len(c.done)))
            return
        if not b:
            self._fail(c, "end of stream after %d echoes" % len(c.done))
            return
        if c.expect is None:
            self._fail(c, "%d unexpected bytes" % len(b))
            return
        c.got += b
        n = len(c.expect)
        if c.got[:n] != c.expect[:len(c.got)]:
            self._fail(c, "echo differs from the request (%d bytes in)" % len(c.got))
            return
        if len(c.got) > n:
            self._fail(c, "%d bytes beyond the echo" % (len(c.got) - n))
            return
        if len(c.got) == n:
            now = time.time()
            c.done.append((c.seq, c.t_send, now))
            c.seq += 1
            c.expect = None
            c.got = bytearray()
            c.next_at = now + self.interval

    def _loop(self):
        try:
            while not self.stopping.is_set():
                now = time.time()
                wake = now + 0.05
                for c in self.conns:
                    if c.error is not None or c.expect is not None:
                        continue
                    if c.next_at <= now:
                        c.expect = self.request(c)
                        c.pending = c.expect
                        c.t_send = now
                        self._send(c)
                    else:
                        wake = min(wake, c.next_at)
                for key, mask in self.sel.select(max(0.0, wake - time.time())):
                    c = key.data
                    if c.error is not None:
                        continue
                    if mask & selectors.EVENT_WRITE and c.pending:
                        self._send(c)
                    if c.error is None and mask & selectors.EVENT_READ:
                        self._recv(c)
        except BaseException as e:  # a harness bug: reported by check()
            self.loop_error = repr(e)

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)

    def errors(self):
        out = [c.error for c in self.conns if c.error]
        if self.loop_error:
            out.insert(0, "load loop: " + self.loop_error)
        return out

    def completed(self):
        return sum(len(c.done) for c in self.conns)

    def flowing_after(self, t_ref, within):
        """For each connection, the first echo of a request sent at or after
        t_ref; returns (worst delay after t_ref, [connections without one
        within `within` s])."""
        worst, late = 0.0, []
        for c in self.conns:
            d = next((t_done - t_ref for _, t_send, t_done in c.done if t_send >= t_ref), None)
            if d is None or d > within:
                late.append((c.idx, d))
            else:
                worst = max(worst, d)
        return worst, late

    def wait_flowing_after(self, t_ref, within, timeout):
        X.wait_for(lambda: self.errors() or not self.flowing_after(t_ref, within)[1], timeout,
                   interval=0.1)
        return self.flowing_after(t_ref, within)

    def close_and_check(self, timeout=10.0):
        """Stop, wait for the last echo, half-close every connection and
        expect a clean end from the driver's echo. Returns problems."""
        self.stop()
        probs = self.errors()
        deadline = time.monotonic() + timeout
        for c in self.conns:
            if c.error:
                continue
            c.s.setblocking(True)
            try:
                if c.pending:
                    c.s.settimeout(max(0.1, deadline - time.monotonic()))
                    c.s.sendall(c.pending)
                if c.expect is not None:
                    c.s.settimeout(max(0.1, deadline - time.monotonic()))
                    left = len(c.expect) - len(c.got)
                    end, got, _, data = H.recv_exact(c.s, left)
                    if end != "ok" or bytes(c.got) + data != c.expect:
                        probs.append("conn %d seq %d: last echo %s after %d of %d bytes" %
                                     (c.idx, c.seq, end, got, left))
                        continue
                    c.done.append((c.seq, c.t_send, time.time()))
                c.s.shutdown(socket.SHUT_WR)
                c.s.settimeout(max(0.1, deadline - time.monotonic()))
                end, extra, _ = H.recv_to_eof(c.s, 64 * KiB)
                if (end, extra) != ("eof", 0):
                    probs.append("conn %d: after half-close %s with %d extra bytes" %
                                 (c.idx, end, extra))
            except OSError as e:
                probs.append("conn %d: closing: %r" % (c.idx, e))
        self.abandon()
        return probs

    def abandon(self):
        """Stop and close everything (a test's cleanup; idempotent)."""
        self.stop()
        for c in self.conns:
            c.s.close()
        if not self.closed:
            self.closed = True
            self.sel.close()


# --------------------------------------------------------------------------
# Load: one bulk transfer each way on one connection, paced.

def send_paced(s, seed, n, rate, chunk=64 * KiB):
    """sendall n pattern bytes at about rate bytes/s; returns the sha256."""
    h = hashlib.sha256()
    p = H.Pattern(seed, n)
    t0 = time.monotonic()
    sent = 0
    while True:
        b = p.next(chunk)
        if not b:
            return h.hexdigest()
        s.sendall(b)
        h.update(b)
        sent += len(b)
        lag = t0 + sent / rate - time.monotonic()
        if lag > 0:
            time.sleep(lag)


def h_paced_duplex(seed, n, rate):
    """Driver side of Bulk: send n pattern bytes (paced) while reading n; then
    read to the end (counting extra bytes)."""
    def handler(dc):
        err = []

        def snd():
            try:
                dc.tx_sha = send_paced(dc.sock, seed, n, rate)
            except BaseException as e:
                err.append(e)
        t = threading.Thread(target=snd, daemon=True)
        t.start()
        end, got, digest, _ = H.recv_exact(dc.sock, n, recv=dc.recv)
        dc.info["rx_end"], dc.rx_sha = end, digest
        t.join(300)
        dc.info["tx_error"] = repr(err[0]) if err else (None if not t.is_alive() else "stuck")
        end2, extra, _ = H.recv_to_eof(dc.sock, 1 << 30, recv=dc.recv)
        dc.info["extra"] = extra
        dc.end = end if end != "ok" else end2
    return handler


class Bulk:
    """The executor side: n bytes each way at about rate bytes/s, at once."""

    SEED_EXEC, SEED_DRV = 0xE5, 0xD5

    def __init__(self, sock, n, rate):
        self.s, self.n, self.rate = sock, n, rate
        self.tx_sha = None
        self.tx_err = None
        self.rx = None

    def start(self):
        self.ts = threading.Thread(target=self._send, daemon=True)
        self.tr = threading.Thread(target=self._recv, daemon=True)
        self.ts.start()
        self.tr.start()
        return self

    def _send(self):
        try:
            self.tx_sha = send_paced(self.s, self.SEED_EXEC, self.n, self.rate)
        except BaseException as e:
            self.tx_err = e

    def _recv(self):
        self.rx = H.recv_exact(self.s, self.n)

    def finish(self, case, dc, timeout):
        """Both directions complete and exact, then a clean end both ways."""
        self.ts.join(timeout)
        self.tr.join(timeout)
        case.assertFalse(self.ts.is_alive() or self.tr.is_alive(),
                         "bulk transfer not done within %.0f s" % timeout)
        case.assertIsNone(self.tx_err, "bulk executor -> driver: send failed")
        end, got, digest, _ = self.rx
        case.assertEqual(end, "ok", "bulk driver -> executor: %s after %d of %d bytes" %
                         (end, got, self.n))
        case.assertExact("bulk driver -> executor", got, digest, self.n,
                         H.pattern_sha(self.SEED_DRV, self.n))
        self.s.shutdown(socket.SHUT_WR)
        end, extra, _ = H.recv_to_eof(self.s, 1 * MiB)
        case.assertEqual((end, extra), ("eof", 0), "bulk connection's end")
        case.assertTrue(dc.wait_done(15), "driver side of the bulk connection not done")
        case.assertEqual(dc.info.get("rx_end"), "ok", "bulk executor -> driver: driver "
                         "read %d bytes (end %s)" % (dc.rx_bytes, dc.info.get("rx_end")))
        case.assertExact("bulk executor -> driver", dc.rx_bytes, dc.rx_sha, self.n, self.tx_sha)
        case.assertIsNone(dc.info.get("tx_error"), "bulk driver -> executor: send failed")
        case.assertEqual(dc.info.get("extra"), 0)
        case.assertEqual(dc.end, "eof")


# --------------------------------------------------------------------------
# Load: connections half-closed across the cut, one direction each.

HALF_EXEC, HALF_DRV = b"HALF-EXE", b"HALF-DRV"
HALF_N = 256 * KiB


def h_dispatch(dc):
    """The driver port: an echo, or (by an 8-byte tag first) one of the
    half-closed exchanges:
      HALF-EXE: the executor sends HALF_N bytes and its FIN first; the driver
                answers HALF_N bytes and its FIN once the test sets dc.go;
      HALF-DRV: the driver sends HALF_N bytes and its FIN at once; the
                executor answers HALF_N bytes and its FIN when the test says."""
    end, got, _, tag = H.recv_exact(dc.sock, 8, recv=dc.recv)
    if end != "ok":
        dc.end = end
        return
    if tag in (HALF_EXEC, HALF_DRV):
        seed = struct.unpack("!I", H.recv_exact(dc.sock, 4, recv=dc.recv)[3])[0]
        dc.info["half"], dc.info["seed"] = tag, seed
        if tag == HALF_DRV:
            dc.tx_sha = H.send_pattern(dc.sock, seed ^ 0xD, HALF_N)
            dc.sock.shutdown(socket.SHUT_WR)
        end, got, dc.rx_sha = H.recv_to_eof(dc.sock, 1 << 30, recv=dc.recv)
        dc.info["rx"] = (end, got)
        if tag == HALF_EXEC and end == "eof":
            dc.go.wait(dc.driver.hold_timeout)
            dc.tx_sha = H.send_pattern(dc.sock, seed ^ 0xD, HALF_N)
            dc.sock.shutdown(socket.SHUT_WR)
        dc.end = end
        return
    dc.sendall(tag)
    h_echo(dc)


class HalfClosed:
    """k connections of each kind, opened and half-closed before the cuts,
    finished after them: each direction exact, each FIN after every byte."""

    def __init__(self, case, k):
        self.case = case
        self.conns = []
        drv = case.stack.driver
        for i in range(2 * k):
            tag = HALF_EXEC if i % 2 == 0 else HALF_DRV
            seed = random.randrange(1 << 30)
            s = case.exec_connect(timeout=60)
            case.stack.execs.append(s)
            s.sendall(tag + struct.pack("!I", seed))
            if tag == HALF_EXEC:
                s.sendall(H.pattern_bytes(seed, HALF_N))
                s.shutdown(socket.SHUT_WR)
            dc = X.wait_for(lambda: next((d for d in drv.all_conns()
                                          if d.info.get("seed") == seed), None), 10)
            case.assertIsNotNone(dc, "the driver did not get the half-closed connection")
            self.conns.append((tag, seed, s, dc))
        # Each HALF-DRV connection's first direction is over before the cuts.
        for tag, seed, s, dc in self.conns:
            if tag == HALF_DRV:
                end, got, digest = H.recv_to_eof(s, 1 << 30)
                case.assertEqual(end, "eof")
                case.assertExact("half-closed by the driver: driver -> executor", got, digest,
                                 HALF_N, H.pattern_sha(seed ^ 0xD, HALF_N))

    def finish(self):
        case = self.case
        for tag, seed, s, dc in self.conns:
            if tag == HALF_EXEC:
                dc.go.set()
                end, got, digest = H.recv_to_eof(s, 1 << 30)
                case.assertEqual(end, "eof", "half-closed by the executor: the driver's "
                                 "answer ended with %s after %d bytes (driver side: %r, "
                                 "%d bytes received, from %s)" % (end, got, dc.info,
                                                                  dc.rx_bytes, dc.peer))
                case.assertExact("half-closed by the executor: driver -> executor", got,
                                 digest, HALF_N, H.pattern_sha(seed ^ 0xD, HALF_N))
            else:
                s.sendall(H.pattern_bytes(seed, HALF_N))
                s.shutdown(socket.SHUT_WR)
        for tag, seed, s, dc in self.conns:
            case.assertTrue(dc.wait_done(15), "driver side of a half-closed connection not "
                            "done")
            case.assertEqual(dc.info.get("rx"), ("eof", HALF_N), "%s: the executor's bytes "
                             "at the driver" % tag.decode())
            case.assertExact("%s: executor -> driver" % tag.decode(), dc.rx_bytes - 12,
                             dc.rx_sha, HALF_N, H.pattern_sha(seed, HALF_N))


# --------------------------------------------------------------------------
# Test bodies shared by the loopback and the namespace cases.

class ResumeCase(X.XCase):
    """XCase plus: the driver (echo on the driver port, the paced bulk on the
    blockManager port) and checks that hold after every resume."""

    BULK_N = 8 * MiB
    BULK_RATE = 4 * MiB

    def exec_connect(self, port_name="driver", timeout=10.0):
        return H.connect(self.stack.exec_host, self.stack.ports[port_name], timeout=timeout)

    def start_load(self, n_rpc, interval=0.1, bulk=True, sock_timeout=150.0):
        """The driver, n_rpc request/response connections, and (bulk) the
        bulk transfer; returns (RpcLoad, Bulk or None, driver conn of the bulk)."""
        drv = self.stack.driver or self.start_driver()
        rpc = RpcLoad(lambda: self.exec_connect(timeout=sock_timeout), n_rpc,
                      interval=interval, seed=random.randrange(1 << 16))
        self.addCleanup(rpc.abandon)
        rpc.open().start()
        self.assertTrue(X.wait_for(lambda: drv.wait_accepted(n_rpc, 0) >= n_rpc, 20),
                        "the driver accepted %d of %d connections" %
                        (len(drv.all_conns()), n_rpc))
        b, bdc = None, None
        if bulk:
            s = self.exec_connect("blockManager", timeout=sock_timeout)
            self.stack.execs.append(s)
            b = Bulk(s, self.BULK_N, self.BULK_RATE).start()
            bdc = drv.next_conn(10, port="blockManager")
        self.assertTrue(X.wait_for(lambda: all(c.done for c in rpc.conns), 10),
                        "request/response not flowing before the cut")
        return rpc, b, bdc

    def start_driver(self):
        return self.stack.start_driver(
            handlers={"blockManager": h_paced_duplex(Bulk.SEED_DRV, self.BULK_N,
                                                     self.BULK_RATE)},
            default=h_dispatch, conn_timeout=300)

    def assert_flowing(self, rpc, t_ref, what, wait=5.0):
        """Every request/response connection alive and answering a request
        sent after t_ref within 1 s of it; returns the worst delay."""
        worst, late = rpc.wait_flowing_after(t_ref, 1.0, wait)
        self.assertEqual(rpc.errors(), [], "request/response connections broke (%s)" % what)
        self.assertEqual(late, [], "%d connections without a request/response within 1 s of "
                         "%s (index, delay): %s" % (len(late), what, late[:5]))
        return worst

    def assert_bulk_running(self, bulk):
        if not bulk.tr.is_alive():
            self.assertEqual(bulk.rx[0], "ok", "bulk transfer broke: %s after %d bytes" %
                             bulk.rx[:2])
        self.assertTrue(bulk.tr.is_alive(), "the bulk transfer ended before the last cut: "
                        "make it longer")

    def check_no_loss(self, rpc, n_conns_before, final=False, done=()):
        """Nothing reset, no new driver connection made behind the executors'
        backs (a resumed stream keeps its driver socket). final: after
        finish_load (the connections ended on purpose)."""
        drv = self.stack.driver
        self.assertEqual(rpc.errors(), [], "request/response connections broke")
        ended = [dc for dc in drv.all_conns() if dc.done.is_set() and dc not in done]
        if not final:
            self.assertEqual(len(ended), 0, "driver connections ended: %s" %
                             [(dc.port_name, dc.end, repr(dc.error)) for dc in ended[:5]])
        self.assertEqual(len(drv.all_conns()), n_conns_before,
                         "the driver accepted connections during the outage")
        for p in self.tracked:
            lost = p.grep("stream lost") + p.grep("held streams reset")
            self.assertEqual(lost, [], "%s lost streams: %s" % (p.name, lost[:3]))

    def finish_load(self, rpc, bulk, bdc):
        if bulk is not None:
            bulk.finish(self, bdc, 120)
        probs = rpc.close_and_check()
        self.assertEqual(probs, [], "request/response connections at the end")
        self.assertFalse(self.stack.driver.wait_all_done(15),
                         "driver connections still open after the executors closed")
        for dc in self.stack.driver.all_conns():
            self.assertEqual(dc.end, "eof", "driver conn on %s ended with %s (%r)" %
                             (dc.port_name, dc.end, dc.error))

    def report(self, what, relay_resumes_before, t_path=None):
        """Log and return the resumes since relay_resumes_before."""
        new = resumes(self.relay)[relay_resumes_before:]
        sc = resumes(self.stack.tunnel)
        for n, b, away, t in new:
            H.log("measured: %s: relay resumed %d streams, replayed %d bytes after %.3f s "
                  "away%s" % (what, n, b, away,
                              "" if t_path is None else
                              "; %.3f s after the path returned" % (t - t_path)))
        if sc:
            n, b, away, _ = sc[-1]
            H.log("measured: %s: sidecar resumed %d streams, replayed %d bytes after %.3f s "
                  "away" % (what, n, b, away))
        return new


# --------------------------------------------------------------------------
# 1. The tunnel's TCP connection reset.

class TunnelResetTest(ResumeCase):
    """A bulk transfer fast enough that bytes are in flight at the cuts
    (replayed), and connections half-closed each way across them."""

    BULK_N = 64 * MiB
    BULK_RATE = 16 * MiB

    def kill_tunnel_tcp(self):
        r = run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", ":%d" % self.relay_port()])
        return r.stdout

    def test_ss_kill_mid_transfer_resumes_every_stream(self):
        n_rpc = 60
        rpc, bulk, bdc = self.start_load(n_rpc)
        half = HalfClosed(self, 4)
        n_conns = len(self.stack.driver.all_conns())
        n_streams = n_rpc + 1 + len(half.conns)
        for cut in range(3):
            time.sleep(0.2 + random.random() * 0.3)
            before = len(resumes(self.relay))
            resumed_n = X.log_count(self.relay, "resuming lease")
            done_before = rpc.completed()
            t_cut = time.time()
            killed = self.kill_tunnel_tcp()
            self.assertIn("ESTAB", killed, "ss -K killed no tunnel connection")
            self.assertTrue(X.wait_log(self.relay, "resuming lease", 10, count=resumed_n + 1),
                            "the sidecar did not resume its lease within 10 s of cut %d" % cut)
            t_up = reconnect_time(self.relay, resumed_n)
            worst = self.assert_flowing(rpc, t_up, "the reconnect after cut %d" % cut)
            self.assertTrue(X.wait_for(lambda: len(resumes(self.relay)) > before, 5),
                            "relay logged no 'resumed N streams' line after cut %d" % cut)
            got = self.report("ss -K cut %d" % cut, before)
            self.assertEqual(got[0][0], n_streams, "relay resumed another number of "
                             "streams than were open")
            H.log("measured: cut %d: tunnel back %.3f s after the cut; every connection "
                  "answered within %.3f s of it; %d echoes before" %
                  (cut, t_up - t_cut, worst, done_before))
            self.check_no_loss(rpc, n_conns)
        self.assert_bulk_running(bulk)
        half.finish()
        self.finish_load(rpc, bulk, bdc)
        self.check_no_loss(rpc, n_conns, final=True)

    def test_cuts_in_every_phase_of_the_tunnel(self):
        """Killed over and over for 1.5 s: in the TLS handshake, the
        registration, the resume itself, and while carrying data."""
        n_rpc = 50
        rpc, bulk, bdc = self.start_load(n_rpc)
        half = HalfClosed(self, 4)
        n_conns = len(self.stack.driver.all_conns())
        before = len(resumes(self.relay))
        ups = X.log_count(self.relay, "tunnel up")
        kills = 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            if "ESTAB" in self.kill_tunnel_tcp():
                kills += 1
            time.sleep(random.random() * 0.04)
        t_stop = time.time()
        self.assert_bulk_running(bulk)
        X.wait_for(lambda: rpc.errors() or not rpc.flowing_after(t_stop, 5.0)[1], 10)
        self.assertEqual(rpc.errors(), [], "request/response connections broke")
        t_up = reconnect_time(self.relay, X.log_count(self.relay, "resuming lease") - 1)
        worst = self.assert_flowing(rpc, t_up, "the last reconnect", wait=0)
        got = resumes(self.relay)[before:]
        H.log("measured: flapping: %d tunnels killed in 1.5 s, %d came up, %d resumes "
              "completed, %d bytes replayed by the relay, %d by the sidecar; every "
              "connection answered within %.3f s of the last reconnect" %
              (kills, X.log_count(self.relay, "tunnel up") - ups, len(got),
               sum(g[1] for g in got), sum(g[1] for g in resumes(self.stack.tunnel)), worst))
        self.assertGreater(kills, 3)
        self.check_no_loss(rpc, n_conns)
        half.finish()
        self.finish_load(rpc, bulk, bdc)
        self.check_no_loss(rpc, n_conns, final=True)


class ResumeTokenTest(X.XCase):
    """The relay gives a lease a new resume token on every resume, in the
    lease message. A tunnel cut after the relay rotated the token and before
    the sidecar read that message leaves the sidecar with the old one (found
    by TunnelResetTest's flapping: the sidecar was refused, reset all its
    streams and got a new lease on new ports). The old token must stay good
    until the sidecar is known to hold the new one, and not after."""
    auto_tunnel = False

    def tunnel(self, resume=None):
        fs = F.FakeSidecar(self.stack.relay_port, H.certs().ca).connect().start_h2()
        self.addCleanup(fs.close)
        fs.send_ctl(F.register_msg(**({"resume": resume} if resume else {})))
        return fs

    def lease(self, fs):
        m = fs.read_ctl(5)
        self.assertIsNotNone(m, "no answer to the registration")
        return m

    def settle(self, fs, timeout=3.0):
        """Answer the relay's barrier PING (sent after the lease message),
        then wait for the ACK of a PING of ours sent after that answer: the
        relay has read the answer, so it knows we have the lease."""
        deadline = time.monotonic() + timeout

        def wait(pred, what):
            while not any(pred(f) for f in fs.frames):
                left = deadline - time.monotonic()
                self.assertGreater(left, 0, "fake sidecar: no %s from the relay" % what)
                fs.read_frame(left)
        wait(lambda f: f[0] == F.PING and not f[1] & F.FLAG_ACK and f[3] != bytes(8),
             "barrier PING")
        fs.sendall(F.frame(F.PING, 0, 0, b"it-sync!"))
        wait(lambda f: f[0] == F.PING and f[1] & F.FLAG_ACK and f[3] == b"it-sync!",
             "PING ACK")

    def test_token_of_a_lost_lease_message_still_resumes(self):
        fs = self.tunnel()
        first = self.lease(fs)
        self.assertEqual(first.get("type"), "lease", first)
        t1 = first["resume"]
        fs.close()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5))
        # Resumed with t1; the tunnel dies before we read the lease (and t2).
        resumed = X.log_count(self.relay, "resuming lease")
        fs = self.tunnel(t1)
        self.assertTrue(X.wait_log(self.relay, "resuming lease", 5, count=resumed + 1))
        fs.close()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=2))
        # t1 is all we have: the lease must come back, same id and ports.
        fs = self.tunnel(t1)
        again = self.lease(fs)
        self.assertEqual(again.get("type"), "lease", "resume with the token whose successor "
                         "never arrived: %r" % again)
        self.assertEqual((again["lease"], again["ports"]), (first["lease"], first["ports"]))
        t3 = again["resume"]
        self.assertNotIn(t3, (t1,))
        # This time we have read it and answered the relay's PING: t1 is
        # worthless from now on, t3 is the one.
        self.settle(fs)
        fs.close()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=3))
        fs = self.tunnel(t1)
        m = self.lease(fs)
        self.assertEqual((m.get("type"), m.get("code")), ("error", "unknown_lease"),
                         "an old token still resumes the lease: %r" % m)
        fs.close()
        fs = self.tunnel(t3)
        m = self.lease(fs)
        self.assertEqual((m.get("type"), m.get("lease")), ("lease", first["lease"]), m)


# --------------------------------------------------------------------------
# 2. The sidecar frozen past the PING timeout.

class SidecarFrozenTest(ResumeCase):
    h2 = {"h2": {"ping_interval_ms": 500, "ping_timeout_ms": 1500}}
    relay_overrides = {"relay": h2}
    tunnel_overrides = {"tunnel": h2}

    def test_sigstop_past_ping_timeout_then_sigcont(self):
        n_rpc = 50
        rpc, bulk, bdc = self.start_load(n_rpc)
        n_conns = len(self.stack.driver.all_conns())
        time.sleep(0.5)
        p = self.stack.tunnel
        before = len(resumes(self.relay))
        resumed_n = X.log_count(self.relay, "resuming lease")
        timeouts = X.log_count(self.relay, "ping timeout")
        t_stop = time.time()
        p.signal(signal.SIGSTOP)
        try:
            ok = X.wait_log(self.relay, "ping timeout", 6, count=timeouts + 1)
            time.sleep(1.5)  # well past it
        finally:
            p.signal(signal.SIGCONT)
        t_cont = time.time()
        self.assertTrue(ok, "relay did not declare the frozen sidecar dead within 6 s")
        self.assertTrue(X.wait_log(self.relay, "resuming lease", 10, count=resumed_n + 1),
                        "sidecar did not resume its lease within 10 s of SIGCONT")
        t_up = reconnect_time(self.relay, resumed_n)
        worst = self.assert_flowing(rpc, t_up, "the reconnect")
        self.assertTrue(X.wait_for(lambda: len(resumes(self.relay)) > before, 5))
        got = self.report("SIGSTOP", before)
        self.assertEqual(got[0][0], n_rpc + 1, "relay resumed another number of streams "
                         "than were open")
        # "after T s away" counts from the last byte the old tunnel brought
        # (the moment of SIGSTOP, with the load running), not from when the
        # PING timeout noticed the outage 1.5-2 s later: T is the outage the
        # executors saw, SIGSTOP to the resume.
        away, t_resumed = got[0][2], got[0][3]
        outage = t_resumed - t_stop
        H.log("measured: SIGSTOP: relay says %.3f s away; %.3f s from SIGSTOP to its resume "
              "line (frozen %.3f s)" % (away, outage, t_cont - t_stop))
        self.assertGreaterEqual(away, outage - 0.5, "the resume line's time away does not "
                                "count from the outage's start")
        self.assertLessEqual(away, outage + 0.5, "the resume line's time away is longer "
                             "than the outage")
        H.log("measured: SIGSTOP: tunnel back %.3f s after SIGCONT; every connection "
              "answered within %.3f s of it" % (t_up - t_cont, worst))
        self.check_no_loss(rpc, n_conns)
        self.finish_load(rpc, bulk, bdc)
        self.check_no_loss(rpc, n_conns, final=True)



# --------------------------------------------------------------------------
# 4. A peer that never comes back.

def h_stall(dc):
    """Never read until the test (or the driver's stop) sets dc.go: the
    executor's bytes pile up in the tunnel, up to the stream windows."""
    dc.go.wait(dc.driver.hold_timeout)
    end, _, _ = H.recv_to_eof(dc.sock, 1 << 30, recv=dc.recv)
    dc.end = end


class Pusher(threading.Thread):
    """An executor connection that sends n bytes, then waits for the end;
    records how (and when, epoch seconds) the connection ended."""

    def __init__(self, sock, n, seed):
        super().__init__(daemon=True)
        self.s, self.n, self.seed = sock, n, seed
        self.end = None
        self.t_end = None
        self.sent_all = False

    def run(self):
        try:
            H.send_pattern(self.s, self.seed, self.n)
            self.sent_all = True
            end, _, _ = H.recv_to_eof(self.s, 1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            end = "reset"
        except socket.timeout:
            end = "timeout"
        except OSError as e:
            end = "error %r" % (e,)
        self.end, self.t_end = end, time.time()


# ASan keeps freed memory in its quarantine and never gives it back to the
# kernel by default; for RSS to say anything, the relay of this test runs
# without the quarantine and returns free pages at once.
ASAN_RSS = "quarantine_size_mb=0:thread_local_quarantine_size_kb=0:" \
           "allocator_release_to_os_interval_ms=0"


class HoldExpiryTest(ResumeCase):
    HOLD_S = 3
    relay_overrides = {"relay": {"lease": {"resume_hold_s": HOLD_S}}}

    def setUp(self):
        old = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = (old + ":" if old else "") + ASAN_RSS
        try:
            super().setUp()
        finally:
            if old is None:
                os.environ.pop("ASAN_OPTIONS", None)
            else:
                os.environ["ASAN_OPTIONS"] = old

    def rss_settled(self, pid, timeout=5.0):
        """RSS once it stopped changing by more than 256 KiB in 0.5 s."""
        last = rss_kib(pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = rss_kib(pid)
            if abs(now - last) < 256:
                return now
            last = now
        return last

    def test_streams_reset_after_the_hold_and_memory_returns(self):
        n, size = 50, 2 * MiB
        drv = self.stack.start_driver(handlers={"driver": h_stall}, default=h_echo,
                                      conn_timeout=300)
        pid = self.relay.p.pid
        self.assertIsNone(X.echo_once(self.stack.exec_host, self.stack.ports["blockManager"]))
        base = self.rss_settled(pid)
        # Connections made, then the sidecar frozen while the executors push:
        # the relay keeps what it sent unacknowledged (a stream window each)
        # and what it read and could not send, as it would for a sidecar
        # behind a path that went silent.
        socks = [self.exec_connect(timeout=60) for _ in range(n)]
        self.stack.execs.extend(socks)
        self.assertEqual(drv.wait_accepted(n + 1, 20), n + 1)  # and the echo
        self.stack.tunnel.signal(signal.SIGSTOP)
        pushers = [Pusher(sk, size, 100 + i) for i, sk in enumerate(socks)]
        for p in pushers:
            p.start()
        loaded = self.rss_settled(pid)
        self.assertTrue(all(p.end is None for p in pushers),
                        "executor connections ended before the sidecar went: %s" %
                        [p.end for p in pushers if p.end][:5])
        lost = X.log_count(self.relay, "tunnel lost")
        t_kill = time.time()
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        held = self.rss_settled(pid, 2.0)
        time.sleep(max(0.0, self.HOLD_S - 1.0 - (time.time() - t_kill)))
        early = [p.end for p in pushers if p.end is not None]
        self.assertEqual(early, [], "executor connections ended within %d s of the kill, "
                         "before resume_hold_s=%d" % (self.HOLD_S - 1, self.HOLD_S))
        self.assertTrue(X.wait_for(lambda: all(p.end for p in pushers), self.HOLD_S + 5),
                        "executor connections still open %d s after the kill" %
                        (2 * self.HOLD_S + 4))
        ends = {p.end for p in pushers}
        self.assertEqual(ends, {"reset"}, "executors must see their connection reset")
        took = sorted(p.t_end - t_kill for p in pushers)
        self.assertGreaterEqual(took[0], self.HOLD_S - 0.2, "reset %.2f s after the kill, "
                                "before resume_hold_s" % took[0])
        self.assertLessEqual(took[-1], self.HOLD_S + 2.0, "reset only %.2f s after the kill"
                             % took[-1])
        # the summary line follows the last reset (20 ms later under load)
        lines = X.wait_log(self.relay, "held streams reset (hold)", 5) or []
        self.assertEqual(len(lines), 1, "relay log: %s" % lines)
        self.assertIn(" %d held streams reset" % n, lines[0])
        after = self.rss_settled(pid)
        H.log("measured: hold expiry: %d streams reset %.2f..%.2f s after the kill "
              "(resume_hold_s=%d); relay RSS %d KiB at baseline, %d KiB loaded, %d KiB held, "
              "%d KiB after the reset" % (n, took[0], took[-1], self.HOLD_S, base, loaded,
                                          held, after))
        self.assertGreater(held - base, 10 * 1024, "the held streams do not show in the RSS "
                           "(baseline %d KiB, held %d KiB): the measurement would prove "
                           "nothing" % (base, held))
        self.assertLess(after - base, 2 * 1024, "relay RSS did not return to its baseline: "
                        "%d KiB before, %d KiB held, %d KiB after the reset" %
                        (base, held, after))
        # The lease is still there: a sidecar that comes back later gets it.
        resumed = X.log_count(self.relay, "resuming lease")
        self.restart_stack_sidecar("tunnel-2")
        self.assertTrue(X.wait_log(self.relay, "resuming lease", 15, count=resumed + 1))
        self.assertTrue(X.wait_for(lambda: X.echo_once(
            self.stack.exec_host, self.stack.ports["blockManager"]) is None, 10),
            "no echo through the lease after the sidecar came back")


# --------------------------------------------------------------------------
# 5. A sidecar killed and restarted.

class SidecarRestartTest(ResumeCase):

    def test_connections_of_a_killed_sidecar_are_reset_when_it_returns(self):
        n_rpc = 20
        self.stack.start_driver(default=h_echo, conn_timeout=300)
        rpc, _, _ = self.start_load(n_rpc, bulk=False)
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        # The relay cannot tell a crash from a broken path: it holds them.
        time.sleep(1.5)
        self.assertEqual(rpc.errors(), [], "executor connections ended while the sidecar "
                         "was down (the relay must hold them for a resume)")
        resumed = X.log_count(self.relay, "resuming lease")
        self.restart_stack_sidecar("tunnel-2")
        self.assertTrue(X.wait_log(self.relay, "resuming lease", 15, count=resumed + 1),
                        "restarted sidecar did not resume the lease")
        t_up = reconnect_time(self.relay, resumed)
        self.assertTrue(X.wait_for(lambda: len(rpc.errors()) == n_rpc, 5),
                        "executor connections of the killed sidecar still open 5 s after "
                        "it came back: %d of %d ended" % (len(rpc.errors()), n_rpc))
        rpc.stop()
        resets = [c for c in rpc.conns if c.error and "reset" in c.error]
        self.assertEqual(len(resets), n_rpc, "executors must see a reset: %s" %
                         rpc.errors()[:3])
        took = max(c.t_error for c in rpc.conns) - t_up
        H.log("measured: sidecar restart: %d executor connections reset within %.3f s of "
              "the new tunnel" % (n_rpc, took))
        self.assertLess(took, 2.0)
        # Counted, and said in the resume's line.
        self.assertTrue(X.wait_log(self.relay, "%d streams lost and reset (unknown %d)" %
                                   (n_rpc, n_rpc), 2),
                        "relay log does not count the lost streams: %s" %
                        self.relay.grep("resumed ")[-1:])
        for c in rpc.conns:
            c.s.close()
        # New connections work, on both ports.
        for i, port in enumerate(self.stack.ports.values()):
            self.assertIsNone(X.echo_once(self.stack.exec_host, port, seed=30 + i))
        fresh = RpcLoad(self.exec_connect, 5)
        self.addCleanup(fresh.abandon)
        fresh.open().start()
        self.assertTrue(X.wait_for(lambda: all(len(c.done) >= 3 for c in fresh.conns), 10))
        self.assertEqual(fresh.close_and_check(), [])



# --------------------------------------------------------------------------
# 3. The tunnel path blackholed, relay and sidecar in their own namespaces.

class BlackholeTest(ResumeCase):
    """relay (namespace R, 10.64.x.1) <-veth /30-> sidecar (namespace S,
    10.64.x.2); no default route. The executors (stand-ins, in this process)
    connect from R to the relay's pool address there; the driver listens on
    127.0.0.1 in S. PINGs at the defaults (2 s, 6 s) on both ends."""

    h2 = {"h2": {"ping_interval_ms": 2000, "ping_timeout_ms": 6000}}
    relay_overrides = {"relay": h2}
    tunnel_overrides = {"tunnel": h2}
    N_RPC = 200

    def setUp(self):
        if H.DIRECT:
            self.skipTest("needs the sparkrelay binary")
        if not H.BIN or not os.access(H.BIN, os.X_OK):
            raise H.HarnessError("SPARKRELAY_BIN is not set to an executable")
        net = NetPair()
        try:
            net.create()
        except (H.HarnessError, OSError) as e:
            net.remove()
            self.skipTest("cannot create network namespaces and a veth pair (needs root "
                          "and CAP_NET_ADMIN): %s" % e)
        self.net = net
        self.addCleanup(net.remove)
        self.stack = H.Stack(self.id(), self.relay_overrides, self.tunnel_overrides)
        self.tracked, self.retired = [], set()
        self.addCleanup(self._kill_everything)
        try:
            self.start_in_namespaces()
        except BaseException:
            H._any_failure = True
            self.dump_all()
            raise

    def accepts_from_sidecar_ns(self, host, port):
        with netns(self.net.sns):
            return H._accepts(host, port)

    def start_in_namespaces(self):
        st, net = self.stack, self.net
        st.pool_base = H.pick_pool_base()
        st.relay_port = H.free_port()
        cfg = H.relay_config(st.relay_port, st.pool_base, self.relay_overrides)
        cfg["relay"]["listen"] = "%s:%d" % (net.rip, st.relay_port)
        st.relay_cfg_path = H.write_config(os.path.join(st.dir, "relay.json"), cfg)
        st.relay = H.Proc("relay", ["ip", "netns", "exec", net.rns, H.BIN, "relay",
                                    "--config", st.relay_cfg_path], st.dir).start()
        self.track(st.relay)
        st.relay.wait_ready(lambda: self.accepts_from_sidecar_ns(net.rip, st.relay_port), 15,
                            "listening on %s:%d" % (net.rip, st.relay_port))
        over = H.deep_merge({"tunnel": {"relays": ["%s:%d" % (net.rip, st.relay_port)],
                                        "server_name": "localhost"}},
                            self.tunnel_overrides)
        tcfg = H.tunnel_config(st.relay_port, st.dir, over)
        st.tunnel_cfg_path = H.write_config(os.path.join(st.dir, "tunnel.json"), tcfg)
        st.tunnel_cfg = tcfg
        st.spark_json = tcfg["tunnel"]["spark_json"]
        st.tunnel = H.Proc("tunnel", ["ip", "netns", "exec", net.sns, H.BIN, "tunnel",
                                      "--config", st.tunnel_cfg_path], st.dir).start()
        self.track(st.tunnel)
        st.lease = st.tunnel.wait_ready(st._lease_ready, 20, "lease")
        st.exec_host = st.lease["host"]
        st.ports = {k: int(v) for k, v in st.lease["ports"].items()}

    def exec_connect(self, port_name="driver", timeout=10.0):
        with netns(self.net.rns):
            return super().exec_connect(port_name, timeout)

    def start_driver(self):
        with netns(self.net.sns):
            return super().start_driver()

    def outage(self, rpc, seconds):
        """Blackhole the path for `seconds` under the load (and a bulk
        transfer each way started just before); everything must survive."""
        drv = self.stack.driver
        s = self.exec_connect("blockManager", timeout=seconds + 90)
        self.stack.execs.append(s)
        bulk = Bulk(s, self.BULK_N, self.BULK_RATE).start()
        bdc = drv.next_conn(10, port="blockManager")
        n_conns = len(drv.all_conns())
        time.sleep(1.0)
        before = len(resumes(self.relay))
        resumed_n = X.log_count(self.relay, "resuming lease")
        done_before = rpc.completed()
        t_drop = time.time()
        self.net.blackhole()
        try:
            time.sleep(seconds)
        finally:
            self.net.restore()
        t_path = time.time()
        reconnected = X.wait_log(self.relay, "resuming lease", 15, count=resumed_n + 1)
        if seconds > 6:
            self.assertTrue(reconnected, "the sidecar did not resume its lease within 15 s "
                            "of the path's return")
        if reconnected:
            t_ref = reconnect_time(self.relay, resumed_n)
            what = "the sidecar's reconnect"
        else:
            t_ref, what = t_path, "the path's return (the tunnel outlived the outage)"
        worst = self.assert_flowing(rpc, t_ref, "%s (%d s blackhole)" % (what, seconds),
                                    wait=8)
        bulk.finish(self, bdc, 120)
        self.check_no_loss(rpc, n_conns, done=self.bulks_done + [bdc])
        self.bulks_done.append(bdc)
        if reconnected:
            self.assertTrue(X.wait_for(lambda: len(resumes(self.relay)) > before, 5))
            got = self.report("%d s blackhole" % seconds, before, t_path)
            self.assertEqual(got[0][0], self.N_RPC + 1, "relay resumed another number of "
                             "streams than were open")
            H.log("measured: %d s blackhole: sidecar reconnected %.3f s after the path "
                  "returned (%.3f s after the drop)" % (seconds, t_ref - t_path,
                                                       t_ref - t_drop))
        H.log("measured: %d s blackhole: every connection answered within %.3f s of %s; "
              "%d echoes before, %d after" % (seconds, worst, what, done_before,
                                               rpc.completed()))

    def test_blackhole_5s_then_60s(self):
        self.bulks_done = []
        rpc, _, _ = self.start_load(self.N_RPC, interval=0.2, bulk=False, sock_timeout=200)
        self.outage(rpc, 5)
        self.outage(rpc, 60)
        probs = rpc.close_and_check()
        self.assertEqual(probs, [], "request/response connections at the end")


if __name__ == "__main__":
    H.main()
