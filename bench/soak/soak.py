#!/usr/bin/env python3
"""Bounded randomized soak of stream resumption (sparkrelay).

One relay and one sidecar on loopback (the integration harness's Stack), a
stand-in driver, and a mix of executor load through the lease ports:

  rpc    N long-lived request/response connections (tests/integration/
         test_resume.RpcLoad: sequence numbers, every echo checked byte for
         byte, one request in flight), on both lease ports;
  bulk   B workers, each running one paced duplex transfer after another on
         the blockManager port (random sizes and rates, sometimes one-way);
         every byte is a counter pattern (8-byte words: 24-bit stream tag,
         40-bit word index) checked as it arrives at both ends, so a
         mismatch says where and whether bytes were lost, duplicated or
         came from another stream; then a clean end both ways;
  half   episodes of K+K connections half-closed by the executor / by the
         driver, held across cuts for a few seconds, then finished and
         checked (each direction exact, each FIN after the last byte);
  churn  C workers opening short connections continuously: a tagged
         message echoed and checked, then a half-close + EOF, a plain
         close, or (sometimes) an abortive close (RST).

At random intervals (seeded) the tunnel is cut:

  ssk    `ss -K` of the tunnel TCP connection: the sidecar's socket, the
         relay's socket, or both;
  flap   `ss -K` over and over for 0.5-1.5 s (handshake, registration,
         resume, data phases);
  stop   SIGSTOP of the sidecar, mostly past the PING timeout, then SIGCONT;
  kill   SIGKILL of the sidecar and a restart from its state file: the
         lease must come back with the same ports, the connections it held
         must be RESET (not resumed, not ended cleanly), new ones must work.

After each cut: the lease is resumed, every request/response connection
answers a new request within LATE_FAIL s, the relay's resume line reports no
lost stream (except the ones a kill or an executor RST explains), relay and
sidecar alive, no sanitizer report. Continuously: every byte checked, nothing
duplicated. At the end: everything drained and closed cleanly, the driver saw
exactly one connection per executor connection, relay metrics back to zero
(streams, held bytes), both processes exit 0 on SIGTERM without a sanitizer
(LeakSanitizer) report, RSS of the relay and of the last sidecar bounded.

Every wait has a timeout; a watchdog ends the run at --minutes + 6 min.
Exit status: 0 pass, 1 failures found, 2 could not set up, 4 watchdog.
"""

import argparse
import array
import collections
import faulthandler
import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
IT_DIR = os.path.join(REPO, "tests", "integration")

KiB, MiB = 1 << 10, 1 << 20

PING_INTERVAL_MS = 1000
PING_TIMEOUT_MS = 3000
LATE_FAIL = 10.0      # a connection not answering this long after the reconnect fails
LATE_SLOW = 1.0       # ... this long is counted as slow (the tests' bound)
SOCK_TIMEOUT = 60.0   # executor socket timeouts: a stall this long is a failure

# ASan keeps freed memory in its quarantine (256 MiB by default) and gives
# free pages back late: for RSS to mean something the quarantine is capped.
ASAN_BASE = "detect_leaks=1:abort_on_error=1"
ASAN_RSS = "quarantine_size_mb=32:allocator_release_to_os_interval_ms=1000"
UBSAN_BASE = "print_stacktrace=1:halt_on_error=1"


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Randomized soak of sparkrelay's stream resumption: load through the "
                    "lease ports while the tunnel is cut (ss -K, SIGSTOP, SIGKILL+restart).",
        epilog="Environment: SPARKRELAY_BIN (default /tmp/soakbin/sparkrelay), ASAN_OPTIONS and "
               "UBSAN_OPTIONS (defaults: %s:%s / %s). Logs and the timeline stay in --dir." %
               (ASAN_BASE, ASAN_RSS, UBSAN_BASE))
    ap.add_argument("--minutes", type=float, required=True, help="time spent cutting (the run "
                    "takes about 30 s more for setup and the final checks)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the cut schedule and of "
                    "the load's sizes (default: random, printed)")
    ap.add_argument("--bin", default=os.environ.get("SPARKRELAY_BIN", "/tmp/soakbin/sparkrelay"))
    ap.add_argument("--dir", default=None, help="run directory (default /tmp/sr-soak-<time>-<seed>)")
    ap.add_argument("--rpc", type=int, default=16, help="request/response connections (16)")
    ap.add_argument("--bulk", type=int, default=2, help="bulk transfer workers (2)")
    ap.add_argument("--bulk-max-mib", type=float, default=24.0, help="largest bulk transfer "
                    "per direction, MiB (24)")
    ap.add_argument("--bulk-rate-mib", type=float, default=3.0, help="highest bulk rate per "
                    "direction, MiB/s (3)")
    ap.add_argument("--churn", type=int, default=2, help="short-connection workers (2)")
    ap.add_argument("--half", type=int, default=2, help="half-closed connections of each kind "
                    "per episode (2)")
    ap.add_argument("--gap", default="0.3,4", help="seconds between cuts, min,max (0.3,4)")
    ap.add_argument("--weights", default="ssk=78,flap=5,stop=10,kill=7",
                    help="relative weights of the cut kinds (ssk=78,flap=5,stop=10,kill=7)")
    ap.add_argument("--kill-until", type=float, default=0.6, help="SIGKILL cuts only in this "
                    "first fraction of the run, so that the last sidecar lives long enough "
                    "for its RSS to be judged (0.6)")
    ap.add_argument("--log-level", default="debug", help="relay and sidecar log level (debug)")
    ap.add_argument("--keep-going", action="store_true", help="keep cutting after a failure "
                    "(default: stop at the first, its logs are the clearest)")
    return ap.parse_args(argv)


ARGS = parse_args(sys.argv[1:]) if __name__ == "__main__" else None

if ARGS is not None:
    os.environ["SPARKRELAY_BIN"] = ARGS.bin
    os.environ.setdefault("ASAN_OPTIONS", ASAN_BASE)
    if "quarantine_size_mb" not in os.environ["ASAN_OPTIONS"]:
        os.environ["ASAN_OPTIONS"] += ":" + ASAN_RSS
    os.environ.setdefault("UBSAN_OPTIONS", UBSAN_BASE)
    os.environ["SR_IT_LOG_LEVEL"] = ARGS.log_level

sys.path.insert(0, IT_DIR)
import harness as H          # noqa: E402
import test_resume as R      # noqa: E402

# --------------------------------------------------------------------------
# Counter pattern: word i (8 bytes, big-endian) of stream `tag` is
# (tag << 40) | i. A wrong byte tells which stream and offset it came from.

assert array.array("Q").itemsize == 8
_SWAP = sys.byteorder == "little"
BLK_MASK = (1 << 40) - 1


def pat_bytes(tag, off, n):
    if n <= 0:
        return b""
    b0, b1 = off >> 3, (off + n + 7) >> 3
    base = tag << 40
    a = array.array("Q", range(base + b0, base + b1))
    if _SWAP:
        a.byteswap()
    s = off - (b0 << 3)
    return a.tobytes()[s:s + n]


def first_diff(a, b):
    n = min(len(a), len(b))
    step = 4096
    i = 0
    while i < n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def explain(tag, off, data, i):
    """Why data (stream bytes from offset off) differs at data[i]: the raw
    bytes, and where they seem to come from (this stream, shifted: bytes
    lost or repeated; another stream; neither)."""
    at = off + i
    raw = "got %s want %s" % (data[i:i + 8].hex(), pat_bytes(tag, at, min(8, len(data) - i)).hex())
    w = (at + 7) & ~7
    j = w - off
    for d in range(8):
        k = j + d
        if k < 0 or k + 8 > len(data):
            continue
        v = struct.unpack("!Q", data[k:k + 8])[0]
        t2, blk = v >> 40, v & BLK_MASK
        if t2 == tag and blk < (1 << 36):
            shift = blk * 8 - (w + d)
            if shift == 0:
                return "%s; corrupted in place (the bytes after are right)" % raw
            if shift < 0:
                return ("%s; bytes repeated: offset %d carries the bytes of offset %d (%d bytes "
                        "duplicated)" % (raw, w + d, blk * 8, -shift))
            return ("%s; bytes missing: offset %d carries the bytes of offset %d (%d bytes "
                    "lost)" % (raw, w + d, blk * 8, shift))
    for d in range(8):
        k = j + d
        if 0 <= k and k + 8 <= len(data):
            v = struct.unpack("!Q", data[k:k + 8])[0]
            t2, blk = v >> 40, v & BLK_MASK
            if blk * 8 == w + d:
                return "%s; corrupted in place (offset %d right, tag %d)" % (raw, w + d, t2)
            if 0 < t2 < (1 << 24) and blk < (1 << 29):
                return "%s; bytes of another stream (tag %d, offset %d) at offset %d" % (
                    raw, t2, blk * 8, w + d)
    return "%s; foreign bytes" % raw


class StreamCheck:
    """Checks a stream of n pattern bytes as it arrives."""

    def __init__(self, tag, n):
        self.tag, self.n = tag, n
        self.off = 0
        self.bad = None

    def feed(self, data):
        if self.bad is not None:
            return False
        k = len(data)
        m = min(k, self.n - self.off)
        exp = pat_bytes(self.tag, self.off, m)
        if data[:m] != exp:
            i = first_diff(data[:m], exp)
            self.bad = "stream tag %d: byte %d of %d differs: %s" % (
                self.tag, self.off + i, self.n, explain(self.tag, self.off, data, i))
        elif k > m:
            self.bad = "stream tag %d: %d bytes beyond its %d (%s)" % (
                self.tag, self.off + k - self.n, self.n,
                explain(self.tag, self.n, data[m:], 0) if k - m >= 16 else data[m:].hex())
        self.off += k
        return self.bad is None

    def complete(self):
        return self.bad is None and self.off == self.n


class Ended(Exception):
    """A connection ended other than planned: .end in reset|eof|timeout|data|error."""

    def __init__(self, end, detail):
        super().__init__("%s: %s" % (end, detail))
        self.end, self.detail = end, detail


def classify(e):
    if isinstance(e, Ended):
        return e.end
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, socket.timeout):
        return "timeout"
    return "error"


def recv_check(s, check, n_total, recv=None, what=""):
    """Read until check has n_total bytes; raise Ended on anything else."""
    recv = recv or s.recv
    while check.off < n_total:
        b = recv(min(256 * KiB, n_total - check.off))
        if not b:
            raise Ended("eof", "%s: end after %d of %d bytes" % (what, check.off, n_total))
        if not check.feed(b):
            raise Ended("data", "%s: %s" % (what, check.bad))


def recv_eof(s, recv=None, what=""):
    """Expect a clean end with no byte before it."""
    recv = recv or s.recv
    b = recv(64 * KiB)
    if b:
        raise Ended("data", "%s: %d bytes where the end was expected: %s" %
                    (what, len(b), b[:16].hex()))


def send_counter(s, tag, n, rate=None, chunk=64 * KiB, stop=None, send=None):
    send = send or s.sendall
    t0 = time.monotonic()
    off = 0
    while off < n:
        k = min(chunk, n - off)
        send(pat_bytes(tag, off, k))
        off += k
        if rate:
            lag = t0 + off / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
    return off


def duplex(sock, head, tx_tag, n_tx, rate, check, n_rx, idle=None, what="bulk"):
    """Send head + n_tx pattern bytes (paced at rate) while reading n_rx
    bytes into check, in ONE thread on a non-blocking socket. One thread
    matters: Linux reports a RST's ECONNRESET to one syscall only, and the
    next recv() returns 0, so a receiving thread next to a sending one sees
    a reset as a clean end. Raises Ended (or OSError) on anything else."""
    idle = idle or SOCK_TIMEOUT
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    try:
        sel.register(sock, selectors.EVENT_READ)
        buf = head
        off = 0               # pattern bytes queued in buf so far
        t0 = time.monotonic()
        last = t0
        mask = selectors.EVENT_READ
        while True:
            now = time.monotonic()
            if not buf and off < n_tx:
                allowed = n_tx if not rate else min(n_tx, int((now - t0) * rate) + 64 * KiB)
                if allowed > off:
                    k = min(64 * KiB, allowed - off)
                    buf = pat_bytes(tx_tag, off, k)
                    off += k
            tx_done = not buf and off >= n_tx
            rx_done = check.off >= n_rx
            if tx_done and rx_done:
                return
            want = (0 if rx_done else selectors.EVENT_READ) | \
                (selectors.EVENT_WRITE if buf else 0)
            if want != mask:
                if want:
                    if mask:
                        sel.modify(sock, want)
                    else:
                        sel.register(sock, want)
                else:
                    sel.unregister(sock)
                mask = want
            if now - last > idle:
                raise Ended("timeout", "%s: no progress for %.0f s (sent %d of %d, received "
                            "%d of %d)" % (what, idle, off - len(buf), n_tx, check.off, n_rx))
            wait = 0.05
            if not buf and off < n_tx and rate:
                wait = min(wait, max(0.001, (off - 64 * KiB) / rate - (now - t0)))
            events = sel.select(wait) if mask else (time.sleep(wait) or [])
            for _, ev in events:
                if ev & selectors.EVENT_READ:
                    try:
                        b = sock.recv(256 * KiB)
                    except BlockingIOError:
                        b = None
                    if b is not None:
                        if not b:
                            raise Ended("eof", "%s: end after %d of %d bytes" % (
                                what, check.off, n_rx))
                        last = time.monotonic()
                        if not check.feed(b):
                            raise Ended("data", "%s: %s" % (what, check.bad))
                if ev & selectors.EVENT_WRITE and buf:
                    try:
                        k = sock.send(buf)
                    except BlockingIOError:
                        k = 0
                    if k:
                        buf = buf[k:]
                        last = time.monotonic()
    finally:
        sel.close()
        sock.setblocking(True)
        sock.settimeout(SOCK_TIMEOUT)


# --------------------------------------------------------------------------
# Logs, read incrementally.

LOG_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z ")
LOST_RE = re.compile(r"stream lost \((\w+)\)")
RESUMED_RE = re.compile(r"resumed (\d+) streams, replayed (\d+) bytes after ([0-9.]+) s away"
                        r"(?:; (\d+) streams lost and reset \(([^)]*)\))?")
KEYS = ("tunnel up", "resuming lease", "tunnel lost", "resumed ", "stream lost",
        "held streams reset", "socket failed while", "unknown to it", "lease changed",
        "ping timeout", "protocol error", "refused", "lease ")


def log_epoch(line):
    m = LOG_TS_RE.match(line)
    if not m:
        return None
    import calendar
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + \
        int(m.group(2)) / 1000.0


class LogWatch:
    def __init__(self, proc, soak):
        self.proc = proc
        self.name = proc.name
        self.soak = soak
        self.pos = 0
        self.partial = b""
        self.counts = collections.Counter()
        self.order = []          # ("up"|"resuming", epoch) for reconnect times
        self.resumed = []        # (streams, bytes, away, lost, why, epoch, line)
        self.lost = []           # (reason, epoch, line)
        self.warns = collections.Counter()
        self.warn_first = {}
        self.sanitizer = []
        self.malformed = []
        self.n_lines = 0
        self.lock = threading.Lock()

    def poll(self):
        with self.lock:
            try:
                with open(self.proc.log_path, "rb") as f:
                    f.seek(self.pos)
                    data = f.read()
            except OSError:
                return
            self.pos += len(data)
            data = self.partial + data
            lines = data.split(b"\n")
            self.partial = lines.pop()
            for raw in lines:
                self._line(raw.decode("utf-8", "replace"))

    def _line(self, l):
        self.n_lines += 1
        if any(m in l for m in H.SANITIZER_MARKERS):
            self.sanitizer.append(l)
            if len(self.sanitizer) == 1:
                    self.soak.fail("%s: sanitizer report: %s" % (self.name, l.strip()[:300]),
                               log=self.proc.log_path)
        if l and not H.LOG_LINE_RE.match(l):
            if len(self.malformed) < 20:
                self.malformed.append(l)
            return
        t = log_epoch(l)
        lvl = l[25:30]
        if lvl in ("WARN ", "ERROR", "FATAL"):
            msg = re.sub(r"\d+", "N", l[31:])[:160]
            self.warns[msg] += 1
            self.warn_first.setdefault(msg, l)
        for k in KEYS:
            if k in l:
                self.counts[k] += 1
        if "tunnel up" in l:
            self.order.append(("up", t))
        elif "resuming lease" in l:
            self.order.append(("resuming", t))
        m = RESUMED_RE.search(l)
        if m:
            self.resumed.append((int(m.group(1)), int(m.group(2)), float(m.group(3)),
                                 int(m.group(4) or 0), m.group(5) or "", t, l))
            if m.group(4):
                self.soak.on_resume_lost(self, m.group(5), t, l)
        if "socket failed while the tunnel was away" in l:
            self.soak.on_lost(self, "socket", t, l)
        m = LOST_RE.search(l)
        if m:
            self.lost.append((m.group(1), t, l))
            self.soak.on_lost(self, m.group(1), t, l)
        # "held here are unknown to it" is not judged: streams complete at
        # both ends (lingering for their PING barrier) are finished, not
        # lost; a lost one logs "stream lost (unknown)", judged in on_lost.
        if "lease changed" in l or "protocol error" in l or \
                "relay refused registration" in l:
            self.soak.on_bad_line(self, l)

    def count(self, key):
        self.poll()
        return self.counts[key]

    def wait_count(self, key, n, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.count(key) >= n:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.03)

    def reconnect_time(self, resumed_before):
        """Epoch of the 'tunnel up' before the (resumed_before+1)-th 'resuming lease'."""
        self.poll()
        up = None
        n = 0
        for k, t in self.order:
            if k == "up":
                up = t
            else:
                n += 1
                if n == resumed_before + 1:
                    return up if up is not None else t
        return None


# --------------------------------------------------------------------------
# Request/response load (the tests' RpcLoad, counting checked bytes).

class SoakRpc(R.RpcLoad):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.bytes_ok = 0
        self.t_open = None
        self.judged = set()

    def _recv(self, c):
        n = len(c.expect) if c.expect is not None else 0
        k = len(c.done)
        super()._recv(c)
        if len(c.done) > k:
            self.bytes_ok += 2 * n


def rpc_end(err):
    if "beyond the echo" in err or "differs" in err or "unexpected bytes" in err:
        return "data"
    if "end of stream" in err:
        return "eof"
    if "reset" in err or "Reset" in err or "BrokenPipe" in err or "Aborted" in err:
        return "reset"
    if "timeout" in err or "timed out" in err:
        return "timeout"
    return "error"


# --------------------------------------------------------------------------

BULK, CHURN, HALF_E, HALF_D, PROBE = b"BULK-SOK", b"CHURN-SK", b"HALF-EXE", b"HALF-DRV", \
    b"PROBE-SK"
BULK_HDR = struct.Struct("!IIQQd")
HALF_N = 256 * KiB


class KillEvent:
    def __init__(self, t_kill):
        self.t_kill = t_kill
        self.t_bound = float("inf")  # connections opened before this may be reset


class SoakRun:
    """What both soaks (this one and fleet_soak.py) share: the seed, the run
    directory and its timeline, and the counts and failures their threads
    report into."""
    NAME = "soak"   # the run directory's and the console lines' prefix

    def __init__(self, args, rng_name):
        self.args = args
        self.seed = args.seed if args.seed is not None else random.randrange(1 << 31)
        random.seed(self.seed)
        self.rng = random.Random("%s-%d" % (rng_name, self.seed))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = os.path.abspath(args.dir or "/tmp/sr-%s-%s-seed%d" % (self.NAME, stamp,
                                                                         self.seed))
        os.makedirs(self.dir, exist_ok=True)
        H._ROOT = self.dir
        self.timeline_path = os.path.join(self.dir, "timeline.log")
        self.timeline = open(self.timeline_path, "a", buffering=1)
        self.lock = threading.Lock()
        self.failures = []          # (epoch, text, log)
        self.failed = threading.Event()
        self.stop_load = threading.Event()
        self.counts = collections.Counter()
        self.bytes_checked = 0
        self.tag_next = 1
        self.t_start = time.time()

    def say(self, msg):
        self.timeline.write("%s +%7.2fs %s\n" % (time.strftime("%H:%M:%S"),
                                                 time.time() - self.t_start, msg))

    def out(self, msg):
        self.say(msg)
        sys.stdout.write("[%s %s] %s\n" % (self.NAME, time.strftime("%H:%M:%S"), msg))
        sys.stdout.flush()

    def fail(self, text, log=None):
        with self.lock:
            self.failures.append((time.time(), text, log))
        self.failed.set()
        self.out("FAILURE: " + text + (" [log %s]" % log if log else ""))

    def inc(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def add_bytes(self, n):
        with self.lock:
            self.bytes_checked += n

    # The stand-in driver's end of the load both soaks send (the executor
    # side opens each connection with a tag saying which kind it is).
    DRIVER_IDLE = None  # a bulk transfer's idle limit at the driver (duplex)

    def bulk_started(self, dc, tag_up, tag_dn):
        """A bulk connection's header came (a subclass notes its tags)."""

    def drv_echo(self, dc):
        """Send back whatever comes, until EOF."""
        while True:
            b = dc.recv(64 * KiB)
            if not b:
                dc.end = "eof"
                return
            dc.sendall(b)

    def drv_bulk(self, dc):
        """A paced duplex transfer: the pattern down, every byte up checked,
        then a clean end both ways."""
        e, _, _, hdr = H.recv_exact(dc.sock, BULK_HDR.size, recv=dc.recv)
        if e != "ok":
            raise Ended(e, "bulk: ended within its header")
        tag_up, tag_dn, n_up, n_dn, rate = BULK_HDR.unpack(hdr)
        self.bulk_started(dc, tag_up, tag_dn)
        chk = StreamCheck(tag_up, n_up)
        try:
            duplex(dc.sock, b"", tag_dn, n_dn, rate, chk, n_up, idle=self.DRIVER_IDLE,
                   what="bulk, at the driver")
        finally:
            self.add_bytes(chk.off)
        recv_eof(dc.sock, recv=dc.recv, what="bulk executor->driver end")
        dc.end = "eof"


class Soak(SoakRun):
    def __init__(self, args):
        super().__init__(args, "cuts")
        self.flap_rng = random.Random("flap-%d" % self.seed)
        self.kills = []
        self.aborts = []            # epochs of executor RSTs (churn)
        self.early_aborts = []      # ... of those sent before the echo came back
        self.pending = []           # deferred judgements: dicts
        self.excused = collections.Counter()
        self.registry = {}          # tag/id -> DriverConn
        self.churn_aborted = set()
        self.procs = []             # every relay/sidecar Proc
        self.watch = {}             # Proc -> LogWatch
        self.retired = set()
        self.rss = []               # (epoch, relay KiB, sidecar KiB, sidecar incarnation)
        self.cut_stats = []         # per cut: dict
        self.judged_dc = set()
        self.rpc = None
        self.rpc_gen = 0
        self.rpc_old = []
        self.threads = []
        self.incarnation = 1
        self.worst_late = 0.0
        self.slow = 0
        self.lost_expected = collections.Counter()

    # ------------------------------------------------------------ reporting
    def new_tag(self):
        with self.lock:
            t = self.tag_next
            self.tag_next += 1
            return t

    # Connections that ended unplanned are judged later, when the kills
    # around them are known: a reset (or, at the driver, an end) of a
    # connection opened before a SIGKILL'ed sidecar's loss was noticed, and
    # seen after the kill, is expected.
    def conn_failure(self, side, what, t_open, end, detail, t_fail=None):
        with self.lock:
            self.pending.append(dict(side=side, what=what, t_open=t_open,
                                     t_fail=t_fail or time.time(), end=end, detail=detail))

    def excusable(self, f):
        if f["end"] in ("data", "timeout", "connect"):
            return False
        ok_ends = ("reset",) if f["side"] == "exec" else ("reset", "eof", "error")
        if f["end"] not in ok_ends:
            return False
        for k in self.kills:
            if f["t_fail"] >= k.t_kill - 0.05 and f["t_open"] <= k.t_bound:
                return True
        return False

    def judge_pending(self, final=False):
        with self.lock:
            todo, self.pending = self.pending, []
        for f in todo:
            kill_open = any(k.t_bound == float("inf") for k in self.kills)
            if not final and kill_open and f["t_fail"] >= min(
                    k.t_kill for k in self.kills if k.t_bound == float("inf")) - 0.05:
                with self.lock:
                    self.pending.append(f)  # its kill is not settled yet
                continue
            if self.excusable(f):
                self.excused["%s %s" % (f["side"], f["end"])] += 1
                self.say("expected (sidecar killed): %s %s: %s" % (f["side"], f["what"],
                                                                   f["detail"]))
            else:
                self.fail("%s side, %s (opened %s, ended %s): %s: %s" % (
                    f["side"], f["what"], self.ts(f["t_open"]), self.ts(f["t_fail"]),
                    f["end"], f["detail"]))

    def ts(self, t):
        return "%s.%03d (+%.2fs)" % (time.strftime("%H:%M:%S", time.localtime(t)),
                                     int((t % 1) * 1000), t - self.t_start)

    # Lines from the logs
    def on_lost(self, w, reason, t, line):
        t = t or time.time()
        if reason == "unknown" and w.proc is self.stack.relay:
            if any(k.t_kill - 0.05 <= t for k in self.kills):
                self.lost_expected["unknown"] += 1
                return
        if reason == "socket":
            if any(t - 60 <= a <= t + 1 for a in self.aborts):
                self.lost_expected["socket"] += 1
                return
        self.fail("%s: %s" % (w.name, line.strip()[:300]), log=w.proc.log_path)

    def on_resume_lost(self, w, why, t, line):
        """The tail of a resume line: '; L streams lost and reset (unknown 3,
        socket 1)'. It also counts losses no per-stream line names (the
        relay's resumed streams the sidecar refused)."""
        t = t or time.time()
        for part in why.split(","):
            reason, _, n = part.strip().partition(" ")
            if reason == "unknown" and w.proc is self.stack.relay and \
                    any(k.t_kill - 0.05 <= t <= k.t_kill + 60 for k in self.kills):
                continue
            if reason == "socket" and any(t - 60 <= a <= t + 1 for a in self.aborts):
                continue
            self.fail("%s: %s" % (w.name, line.strip()[:300]), log=w.proc.log_path)
            return

    def on_bad_line(self, w, line):
        self.fail("%s: %s" % (w.name, line.strip()[:300]), log=w.proc.log_path)

    # ------------------------------------------------------------ setup
    def start(self):
        a = self.args
        self.metrics_port = H.free_port()
        h2 = {"h2": {"ping_interval_ms": PING_INTERVAL_MS, "ping_timeout_ms": PING_TIMEOUT_MS}}
        relay_over = {"log": {"level": a.log_level},
                      "relay": dict(h2, metrics={"listen": "127.0.0.1:%d" % self.metrics_port})}
        tunnel_over = {"log": {"level": a.log_level}, "tunnel": dict(h2)}
        self.stack = H.Stack("soak", relay_over, tunnel_over)
        self.stack.start()
        self.track(self.stack.relay)
        self.track(self.stack.tunnel)
        self.lease0 = dict(self.stack.lease)
        self.ports0 = dict(self.stack.ports)
        self.out("relay pid %d, sidecar pid %d, lease %s ports %s on %s; dir %s" % (
            self.stack.relay.p.pid, self.stack.tunnel.p.pid, self.lease0.get("lease"),
            self.ports0, self.stack.exec_host, self.stack.dir))
        self.stack.start_driver(default=self.dispatch, conn_timeout=120)
        self.stack.driver.hold_timeout = 300
        # The first connection through the lease.
        for i, port in enumerate(self.ports0):
            self.probe(port, 4 * KiB)

    def track(self, p):
        self.procs.append(p)
        self.watch[p] = LogWatch(p, self)

    @property
    def relay(self):
        return self.watch[self.stack.relay]

    @property
    def sidecar(self):
        return self.watch[self.stack.tunnel]

    def exec_connect(self, port_name, timeout=30.0):
        s = H.connect(self.stack.exec_host, self.stack.ports[port_name], timeout=timeout)
        self.inc("exec connections")
        s.settimeout(SOCK_TIMEOUT)
        return s

    # ------------------------------------------------------------ driver side
    def dispatch(self, dc):
        dc.info["t_open"] = time.time()
        try:
            self._dispatch(dc)
        except Ended as e:
            dc.end = e.end
            dc.info["problem"] = e.detail
        except (OSError, ValueError) as e:
            dc.end = classify(e)
            dc.info["problem"] = repr(e)
        finally:
            dc.info["t_end"] = time.time()

    def register(self, key, dc):
        with self.lock:
            old = self.registry.get(key)
            self.registry[key] = dc
        if old is not None:
            self.fail("the driver got a second connection for %r (a stream opened twice?)" %
                      (key,))

    def _dispatch(self, dc):
        end, got, _, tag = H.recv_exact(dc.sock, 8, recv=dc.recv)
        if end != "ok":
            dc.info["kind"] = "none"
            raise Ended(end, "ended after %d bytes, before its tag" % got)
        if tag == BULK:
            dc.info["kind"] = "bulk"
            return self.drv_bulk(dc)
        if tag in (HALF_E, HALF_D):
            dc.info["kind"] = "half"
            return self.drv_half(dc, tag)
        if tag in (CHURN, PROBE):
            dc.info["kind"] = "churn" if tag == CHURN else "probe"
            e2, _, _, cid = H.recv_exact(dc.sock, 4, recv=dc.recv)
            if e2 != "ok":
                raise Ended(e2, "ended within its header")
            cid = struct.unpack("!I", cid)[0]
            dc.info["cid"] = cid
            self.register(("churn", cid), dc)
            dc.sendall(tag + struct.pack("!I", cid))
            return self.drv_echo(dc)
        # A request/response connection: its first request's header.
        dc.info["kind"] = "rpc"
        e2, _, _, rest = H.recv_exact(dc.sock, 8, recv=dc.recv)
        if e2 != "ok":
            raise Ended(e2, "ended within the first request's header")
        idx, size = struct.unpack("!II", tag)
        seq = struct.unpack("!Q", rest)[0]
        if seq != 0 or not 16 <= size <= 4 * KiB or idx >= 1 << 16:
            self.fail("the driver got a connection starting with unknown bytes %s (a stream "
                      "opened in its middle?)" % (tag + rest).hex())
        dc.sendall(tag + rest)
        return self.drv_echo(dc)

    def bulk_started(self, dc, tag_up, tag_dn):
        dc.info["tags"] = (tag_up, tag_dn)
        self.register(("bulk", tag_up), dc)

    def drv_bulk(self, dc):
        super().drv_bulk(dc)
        dc.info["ok"] = True

    def drv_half(self, dc, tag):
        e, _, _, hdr = H.recv_exact(dc.sock, 8, recv=dc.recv)
        if e != "ok":
            raise Ended(e, "half: ended within its header")
        tag_a, tag_b = struct.unpack("!II", hdr)
        dc.info["tags"] = (tag_a, tag_b)
        self.register(("half", tag_a), dc)
        if tag == HALF_D:
            send_counter(dc.sock, tag_b, HALF_N)
            dc.sock.shutdown(socket.SHUT_WR)
        chk = StreamCheck(tag_a, HALF_N)
        recv_check(dc.sock, chk, HALF_N, recv=dc.recv, what="half %s executor->driver" %
                   tag.decode())
        recv_eof(dc.sock, recv=dc.recv, what="half %s executor->driver end" % tag.decode())
        self.add_bytes(HALF_N)
        if tag == HALF_E:
            if not dc.go.wait(300):
                raise Ended("timeout", "half: never told to answer")
            send_counter(dc.sock, tag_b, HALF_N)
            dc.sock.shutdown(socket.SHUT_WR)
        dc.info["ok"] = True
        dc.end = "eof"

    # ------------------------------------------------------------ executor side
    def probe(self, port, size):
        """One short echo on a fresh connection; raises on any problem."""
        cid = self.new_tag()
        s = self.exec_connect(port)
        try:
            s.sendall(PROBE + struct.pack("!I", cid) + pat_bytes(cid, 0, size))
            head = H.recv_exact(s, 12)
            if head[0] != "ok" or head[3] != PROBE + struct.pack("!I", cid):
                raise Ended("data", "probe: bad header %r" % (head[:2],))
            chk = StreamCheck(cid, size)
            recv_check(s, chk, size, what="probe echo")
            s.shutdown(socket.SHUT_WR)
            recv_eof(s, what="probe end")
        finally:
            s.close()

    def bulk_worker(self, slot):
        rng = random.Random("bulk-%d-%d" % (self.seed, slot))
        a = self.args
        while not self.stop_load.is_set() and not self.failed.is_set():
            big = int(a.bulk_max_mib * MiB)
            n_up = rng.randrange(MiB, big + 1)
            n_dn = rng.randrange(MiB, big + 1)
            r = rng.random()
            if r < 0.15:
                n_up = 0
            elif r < 0.30:
                n_dn = 0
            rate = rng.uniform(0.5, a.bulk_rate_mib) * MiB
            self.one_bulk(n_up, n_dn, rate)
            self.stop_load.wait(rng.uniform(0.05, 0.5))

    def one_bulk(self, n_up, n_dn, rate):
        tag_up, tag_dn = self.new_tag(), self.new_tag()
        t_open = time.time()
        what = "bulk tag %d/%d (%d up, %d down at %.1f MiB/s)" % (tag_up, tag_dn, n_up, n_dn,
                                                                  rate / MiB)
        try:
            s = self.exec_connect("blockManager")
        except OSError as e:
            self.conn_failure("exec", what, t_open, "connect", repr(e))
            return
        chk = StreamCheck(tag_dn, n_dn)
        try:
            try:
                duplex(s, BULK + BULK_HDR.pack(tag_up, tag_dn, n_up, n_dn, rate), tag_up, n_up,
                       rate, chk, n_dn, what="bulk, at the executor")
            finally:
                self.add_bytes(chk.off)
            s.shutdown(socket.SHUT_WR)
            recv_eof(s, what="bulk driver->executor end")
        except (Ended, OSError) as e:
            self.conn_failure("exec", what, t_open, classify(e), str(e))
            s.close()
            return
        s.close()
        dc = self.wait_registered(("bulk", tag_up), 5)
        if dc is None:
            self.conn_failure("exec", what, t_open, "data", "the driver never saw the "
                              "connection though both directions completed")
            return
        if not dc.done.wait(20):
            self.conn_failure("driver", what, t_open, "timeout", "driver side not done 20 s "
                              "after the executor's clean end")
            return
        self.inc("bulk transfers", 1)

    def wait_registered(self, key, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                dc = self.registry.get(key)
            if dc is not None:
                return dc
            time.sleep(0.02)
        return None

    def churn_worker(self, slot):
        rng = random.Random("churn-%d-%d" % (self.seed, slot))
        ports = sorted(self.ports0)
        while not self.stop_load.is_set() and not self.failed.is_set():
            self.one_churn(rng, rng.choice(ports))
            self.stop_load.wait(rng.uniform(0.02, 0.2))

    def one_churn(self, rng, port):
        cid = self.new_tag()
        size = rng.choice((rng.randrange(1, 512), rng.randrange(512, 32 * KiB)))
        mode = rng.random()
        t_open = time.time()
        what = "churn id %d on %s (%d bytes)" % (cid, port, size)
        try:
            s = self.exec_connect(port)
        except OSError as e:
            self.conn_failure("exec", what, t_open, "connect", repr(e))
            return
        try:
            if mode < 0.03:
                # RST right after sending: the echo is still on its way.
                s.sendall(CHURN + struct.pack("!I", cid) + pat_bytes(cid, 0, size))
                self.inc("churn aborted early")
                with self.lock:
                    self.early_aborts.append(time.time())
                self.abort_conn(s, cid)
                return
            s.sendall(CHURN + struct.pack("!I", cid) + pat_bytes(cid, 0, size))
            e, got, _, head = H.recv_exact(s, 8 + 4)
            if e != "ok":
                raise Ended(e, "churn: %s after %d bytes of the echoed header" % (e, got))
            if head != CHURN + struct.pack("!I", cid):
                raise Ended("data", "churn: echoed header %s" % head.hex())
            chk = StreamCheck(cid, size)
            recv_check(s, chk, size, what="churn echo")
            self.add_bytes(2 * size)
            if mode < 0.08:
                self.abort_conn(s, cid)  # RST after the echo
                return
            if mode < 0.30:
                s.close()  # plain close, no waiting
                self.inc("churn ok", 1)
                return
            s.shutdown(socket.SHUT_WR)
            recv_eof(s, what="churn end")
            self.inc("churn ok", 1)
        except (Ended, OSError) as e:
            self.conn_failure("exec", what, t_open, classify(e), str(e))
        finally:
            s.close()

    def abort_conn(self, s, cid):
        with self.lock:
            self.churn_aborted.add(cid)
            self.aborts.append(time.time())
        self.inc("churn aborted (RST)", 1)
        H.abort(s)

    def half_worker(self):
        rng = random.Random("half-%d" % self.seed)
        while not self.stop_load.is_set() and not self.failed.is_set():
            self.half_episode(rng)
            self.stop_load.wait(rng.uniform(0.1, 1.0))

    def half_episode(self, rng):
        conns = []
        for i in range(2 * self.args.half):
            tag = HALF_E if i % 2 == 0 else HALF_D
            ta, tb = self.new_tag(), self.new_tag()
            t_open = time.time()
            what = "half %s tag %d/%d" % (tag.decode(), ta, tb)
            try:
                s = self.exec_connect("driver")
                s.sendall(tag + struct.pack("!II", ta, tb))
                if tag == HALF_E:
                    send_counter(s, ta, HALF_N)
                    s.shutdown(socket.SHUT_WR)
            except (Ended, OSError) as e:
                self.conn_failure("exec", what, t_open, classify(e), "opening: %s" % e)
                continue
            conns.append([tag, ta, tb, s, t_open, what])
        # Held open across whatever cuts come.
        self.stop_load.wait(rng.uniform(1.0, 8.0))
        for c in conns:
            tag, ta, tb, s, t_open, what = c
            try:
                if tag == HALF_E:
                    dc = self.wait_registered(("half", ta), 30)
                    if dc is None:
                        raise Ended("timeout", "the driver never got the connection")
                    dc.go.set()
                chk = StreamCheck(tb, HALF_N)
                recv_check(s, chk, HALF_N, what="half driver->executor")
                recv_eof(s, what="half driver->executor end")
                self.add_bytes(HALF_N)
                if tag == HALF_D:
                    send_counter(s, ta, HALF_N)
                    s.shutdown(socket.SHUT_WR)
                    recv_eof(s, what="half close after the executor's FIN")
                self.inc("half-closed ok", 1)
            except (Ended, OSError) as e:
                self.conn_failure("exec", what, t_open, classify(e), str(e))
            finally:
                s.close()

    # ------------------------------------------------------------ request/response
    def start_rpc(self):
        self.rpc_gen += 1
        n = self.args.rpc
        names = sorted(self.ports0)
        k = [0]

        def connect():
            name = names[k[0] % len(names)]
            k[0] += 1
            return self.exec_connect(name, timeout=30)
        rpc = SoakRpc(connect, n, interval=0.1, seed=(self.seed * 131 + self.rpc_gen) & 0xffff)
        rpc.t_open = time.time()
        rpc.open().start()
        self.rpc = rpc
        ok = R.X.wait_for(lambda: rpc.errors() or all(c.done for c in rpc.conns), 20,
                          interval=0.05)
        if not ok or rpc.errors():
            self.fail("request/response connections not flowing after their start: %s" %
                      rpc.errors()[:3])

    def judge_rpc(self, rpc):
        for c in rpc.conns:
            if c.error and c.idx not in rpc.judged:
                rpc.judged.add(c.idx)
                self.conn_failure("exec", "rpc gen %d conn %d" % (self.rpc_gen, c.idx),
                                  rpc.t_open, rpc_end(c.error), c.error, t_fail=c.t_error)

    def check_flowing(self, t_ref, what):
        rpc = self.rpc
        rpc.wait_flowing_after(t_ref, LATE_FAIL, LATE_FAIL + 2)
        self.judge_rpc(rpc)
        worst, late = rpc.flowing_after(t_ref, LATE_FAIL)
        late = [(i, d) for i, d in late if rpc.conns[i].error is None]
        if late:
            self.fail("%d request/response connections without an answer within %.0f s of %s "
                      "(index, delay): %s" % (len(late), LATE_FAIL, what, late[:5]))
        slow = [i for i, _ in rpc.flowing_after(t_ref, LATE_SLOW)[1]
                if rpc.conns[i].error is None]
        if slow:
            self.slow += 1
        self.worst_late = max(self.worst_late, worst)
        return worst

    # ------------------------------------------------------------ cuts
    def ss_kill(self, side):
        port = self.stack.relay_port
        flt = {"client": ["dst", "127.0.0.1", "dport", "=", ":%d" % port],
               "server": ["src", "127.0.0.1", "sport", "=", ":%d" % port],
               "both": ["(", "dport", "=", ":%d" % port, "or", "sport", "=", ":%d" % port,
                        ")"]}
        n = 0
        # double: the sidecar's socket, then (a few ms later) whichever
        # tunnel the relay has then: often the replacement, mid-resume.
        for sd in (("client", "server") if side == "double" else (side,)):
            r = subprocess.run(["ss", "-K"] + flt[sd], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=20)
            n += r.stdout.count("ESTAB")
        return n

    def cut(self, i, kind):
        relay = self.relay
        resumed_before = relay.count("resuming lease")
        res_lines_before = len(relay.resumed)
        t0 = time.time()
        info = {"i": i, "kind": kind, "t": t0}
        if kind == "ssk":
            side = self.rng.choice(("client", "client", "server", "both", "double"))
            info["side"] = side
            n = self.ss_kill(side)
            info["killed"] = n
            if n == 0:
                self.inc("cuts that killed nothing", 1)
                self.say("cut %d: ss -K %s killed nothing" % (i, side))
                return info
            if not relay.wait_count("resuming lease", resumed_before + 1, 15):
                self.fail("cut %d (ss -K %s): no resume within 15 s" % (i, side))
                return info
            t_ref = relay.reconnect_time(resumed_before)
        elif kind == "flap":
            dur = self.rng.uniform(0.5, 1.5)
            t_end = time.monotonic() + dur
            n = 0
            while time.monotonic() < t_end:
                n += self.ss_kill(self.flap_rng.choice(("client", "server")))
                time.sleep(self.flap_rng.random() * 0.04)
            info["killed"] = n
            info["flap_s"] = dur
            t_ref = time.time()
            if n == 0:
                return info
            if not relay.wait_count("resuming lease", resumed_before + 1, 15):
                self.fail("cut %d (flap): no resume within 15 s" % i)
                return info
        elif kind == "stop":
            longer = self.rng.random() < 0.75
            freeze = (PING_TIMEOUT_MS / 1000.0 + self.rng.uniform(0.5, 2.0)) if longer else \
                self.rng.uniform(0.1, 1.0)
            info["freeze"] = freeze
            p = self.stack.tunnel
            p.signal(signal.SIGSTOP)
            try:
                time.sleep(freeze)
            finally:
                p.signal(signal.SIGCONT)
            t_cont = time.time()
            if longer:
                if not relay.wait_count("resuming lease", resumed_before + 1, 15):
                    self.fail("cut %d (SIGSTOP %.1f s): no resume within 15 s of SIGCONT" %
                              (i, freeze))
                    return info
                t_ref = relay.reconnect_time(resumed_before)
            else:
                time.sleep(0.3)
                t_ref = t_cont
                if relay.count("resuming lease") > resumed_before:
                    info["resumed_anyway"] = True
                    relay.wait_count("resuming lease", resumed_before + 1, 0)
                    t_ref = max(t_cont, relay.reconnect_time(resumed_before) or t_cont)
        elif kind == "kill":
            return self.kill_cut(i, info, resumed_before, res_lines_before)
        else:
            raise ValueError(kind)
        info["t_up"] = t_ref
        if t_ref is not None:
            info["back_after"] = t_ref - t0
        worst = self.check_flowing(t_ref or t0, "the reconnect after cut %d (%s)" % (i, kind))
        info["worst"] = worst
        self.note_resume(info, res_lines_before)
        return info

    def note_resume(self, info, res_lines_before):
        relay = self.relay
        R.X.wait_for(lambda: (relay.poll() or True) and len(relay.resumed) > res_lines_before,
                     3, interval=0.05)
        new = relay.resumed[res_lines_before:]
        info["resumes"] = len(new)
        info["streams"] = sum(x[0] for x in new)
        info["replayed"] = sum(x[1] for x in new)
        info["lost"] = sum(x[3] for x in new)
        for x in new:
            self.inc("resumes (relay)", 1)
            self.inc("streams resumed (relay)", x[0])
            self.inc("bytes replayed (relay)", x[1])

    def kill_cut(self, i, info, resumed_before, res_lines_before):
        relay = self.relay
        lost_before = relay.count("tunnel lost")
        old = self.stack.tunnel
        self.sidecar.poll()
        ev = KillEvent(time.time())
        self.kills.append(ev)
        rpc = self.rpc
        old.p.send_signal(signal.SIGKILL)
        try:
            old.p.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("cut %d: sidecar not dead 10 s after SIGKILL" % i)
        self.retired.add(old)
        old._forget()
        if not relay.wait_count("tunnel lost", lost_before + 1, 10):
            self.fail("cut %d (SIGKILL): the relay did not notice within 10 s" % i)
        ev.t_bound = time.time() + 0.2
        down = self.rng.uniform(0.1, 2.0)
        info["down"] = down
        time.sleep(down)
        self.incarnation += 1
        p = H.Proc("tunnel-%d" % self.incarnation,
                   [H.BIN, "tunnel", "--config", self.stack.tunnel_cfg_path], self.stack.dir)
        p.start()
        self.stack.tunnel = p
        self.track(p)
        if not relay.wait_count("resuming lease", resumed_before + 1, 20):
            self.fail("cut %d: the restarted sidecar did not resume its lease within 20 s" % i)
            return info
        t_up = relay.reconnect_time(resumed_before)
        info["t_up"] = t_up
        info["back_after"] = (t_up or time.time()) - ev.t_kill
        lease = R.X.wait_for(self.stack._lease_ready, 10)
        if lease and (lease.get("lease") != self.lease0.get("lease") or
                      {k: int(v) for k, v in lease["ports"].items()} != self.ports0):
            self.fail("cut %d: the restarted sidecar has another lease: %r, was %r" %
                      (i, lease, self.lease0))
        # Every request/response connection of the killed sidecar: reset.
        R.X.wait_for(lambda: all(c.error for c in rpc.conns), 10, interval=0.05)
        still = [c.idx for c in rpc.conns if not c.error]
        if still:
            self.fail("cut %d: %d request/response connections of the killed sidecar still "
                      "open 10 s after the restarted one resumed the lease" % (i, len(still)))
        ends = collections.Counter(rpc_end(c.error) for c in rpc.conns if c.error)
        info["rpc_ends"] = dict(ends)
        self.judge_rpc(rpc)
        rpc.abandon()
        self.rpc_old.append(rpc)
        self.start_rpc()
        info["worst"] = self.check_flowing(time.time(), "the new connections after cut %d" % i)
        self.note_resume(info, res_lines_before)
        return info

    # ------------------------------------------------------------ monitoring
    def sampler(self):
        while not self.sampler_stop.is_set():
            try:
                r = R.rss_kib(self.stack.relay.p.pid)
            except (OSError, AssertionError):
                r = None
            try:
                p = self.stack.tunnel
                s = R.rss_kib(p.p.pid) if p.alive() else None
            except (OSError, AssertionError):
                s = None
            self.rss.append((time.time(), r, s, self.incarnation))
            self.sampler_stop.wait(2.0)

    def metrics(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                        timeout=5) as f:
                text = f.read().decode()
        except OSError as e:
            return {"error": repr(e)}
        m = {}
        for l in text.splitlines():
            if l.startswith("#") or not l.strip():
                continue
            k, _, v = l.rpartition(" ")
            try:
                m[k] = float(v)
            except ValueError:
                pass
        return m

    def check_alive(self):
        for p in (self.stack.relay, self.stack.tunnel):
            if not p.alive() and p not in self.retired:
                self.retired.add(p)
                self.fail("%s died (rc=%s)" % (p.name, p.p.returncode), log=p.log_path)

    def poll_logs(self):
        for w in list(self.watch.values()):
            w.poll()

    def judge_driver(self, final=False):
        drv = self.stack.driver
        for dc in drv.all_conns():
            if id(dc) in self.judged_dc or not dc.done.is_set():
                continue
            self.judged_dc.add(id(dc))
            kind = dc.info.get("kind", "?")
            end = dc.end
            with self.lock:
                aborted = dc.info.get("cid") in self.churn_aborted
            if kind in ("churn", "probe") and aborted:
                continue
            if kind == "none" and dc.end == "reset" and self.take_early_abort(
                    dc.info.get("t_open", 0)):
                # An executor that sent its RST right after its bytes: the
                # relay may read the RST first (the bytes are dropped).
                self.inc("driver connections reset before their first byte (early RST)")
                continue
            prob = dc.info.get("problem")
            if end == "eof" and not prob:
                continue
            if end is None and dc.error is not None:
                end = classify(dc.error)
            self.conn_failure("driver", "%s connection from %s (%s)" % (
                kind, dc.peer, dc.info.get("tags") or dc.info.get("cid") or ""),
                dc.info.get("t_open", 0), end or "error",
                prob or repr(dc.error), t_fail=dc.info.get("t_end"))

    def take_early_abort(self, t):
        with self.lock:
            for k, a in enumerate(self.early_aborts):
                if t - 10 <= a <= t + 10:
                    del self.early_aborts[k]
                    return True
        return False

    # ------------------------------------------------------------ the run
    def progress(self, i):
        r = self.rss[-1] if self.rss else (0, 0, 0, 0)
        self.out("t=%4.0fs cuts=%d resumes=%d streams-resumed=%d replayed=%d bytes-checked=%.1f MiB "
                 "rpc-echoes=%d churn=%d bulk=%d half=%d excused=%d failures=%d rss relay=%s "
                 "sidecar=%s KiB" % (
                     time.time() - self.t_start, i, self.counts["resumes (relay)"],
                     self.counts["streams resumed (relay)"],
                     self.counts["bytes replayed (relay)"], self.total_bytes() / MiB,
                     sum(rp.completed() for rp in self.rpcs()),
                     self.counts["churn ok"], self.counts["bulk transfers"],
                     self.counts["half-closed ok"], sum(self.excused.values()),
                     len(self.failures), r[1], r[2]))

    def rpcs(self):
        return self.rpc_old + ([self.rpc] if self.rpc is not None else [])

    def total_bytes(self):
        return self.bytes_checked + sum(rp.bytes_ok for rp in self.rpcs())

    def run(self):
        a = self.args
        wk = dict(kv.split("=") for kv in a.weights.split(","))
        kinds = [k for k in ("ssk", "flap", "stop", "kill") if float(wk.get(k, 0)) > 0]
        weights = [float(wk[k]) for k in kinds]
        gmin, gmax = (float(x) for x in a.gap.split(","))
        self.out("seed %d; %.1f min of cuts (%s), gaps %.1f-%.1f s; load: %d rpc, %d bulk, %d "
                 "churn, %d+%d half-closed; binary %s" % (
                     self.seed, a.minutes, a.weights, gmin, gmax, a.rpc, a.bulk, a.churn,
                     a.half, a.half, H.BIN))
        self.start()
        self.sampler_stop = threading.Event()
        st = threading.Thread(target=self.sampler, daemon=True, name="rss")
        st.start()
        self.start_rpc()
        for k in range(a.bulk):
            self.threads.append(threading.Thread(target=self.bulk_worker, args=(k,),
                                                 daemon=True, name="bulk%d" % k))
        for k in range(a.churn):
            self.threads.append(threading.Thread(target=self.churn_worker, args=(k,),
                                                 daemon=True, name="churn%d" % k))
        if a.half:
            self.threads.append(threading.Thread(target=self.half_worker, daemon=True,
                                                 name="half"))
        for t in self.threads:
            t.start()
        self.t_cuts = time.time()
        t_end = self.t_cuts + a.minutes * 60
        t_kill_until = self.t_cuts + a.minutes * 60 * a.kill_until
        i = 0
        last_progress = time.time()
        while time.time() < t_end and (a.keep_going or not self.failed.is_set()):
            gap = self.rng.uniform(gmin, gmax)
            deadline = time.time() + gap
            while time.time() < deadline:
                time.sleep(min(0.25, max(0.0, deadline - time.time())))
                self.poll_logs()
                self.check_alive()
            if time.time() >= t_end or (self.failed.is_set() and not a.keep_going):
                break
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "kill" and time.time() > t_kill_until:
                kind = "ssk"
            info = self.cut(i, kind)
            self.inc("cuts " + kind)
            i += 1
            self.cut_stats.append(info)
            self.say("cut %d %s: %s" % (info["i"], kind, json.dumps(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()
                 if k not in ("i", "kind", "t", "t_up")})))
            self.poll_logs()
            self.check_alive()
            self.judge_driver()
            self.judge_rpc(self.rpc)
            self.judge_pending()
            if time.time() - last_progress > 30:
                last_progress = time.time()
                self.progress(i)
        self.n_cuts = i
        self.final()
        self.sampler_stop.set()
        st.join(5)
        self.check_rss()
        return self.summary()

    # ------------------------------------------------------------ the end
    def final(self):
        self.out("cuts over; final checks")
        relay = self.relay
        # The tunnel up and carrying: a fresh echo on each port.
        for port in self.ports0:
            ok = R.X.wait_for(lambda: self._probe_ok(port), 20, interval=0.5)
            if not ok:
                self.fail("final: no echo through %s within 20 s" % port)
        self.stop_load.set()
        for t in self.threads:
            t.join(150)
            if t.is_alive():
                self.fail("final: load thread %s still running after 150 s" % t.name)
        rpc = self.rpc
        probs = rpc.close_and_check(timeout=20)
        self.judge_rpc(rpc)
        for pr in probs:
            if not any(pr == c.error for c in rpc.conns):
                self.conn_failure("exec", "rpc at the end", rpc.t_open, rpc_end(pr), pr)
        for old in self.rpc_old:
            old.abandon()
        self.stack.close_executors()
        left = self.stack.driver.wait_all_done(30)
        if left:
            self.fail("final: %d driver connections still open 30 s after every executor "
                      "connection closed: %s" % (len(left), [
                          (dc.info.get("kind"), dc.info.get("tags") or dc.info.get("cid"),
                           self.ts(dc.info.get("t_open", 0))) for dc in left[:5]]))
        self.poll_logs()
        self.judge_driver(final=True)
        self.judge_pending(final=True)
        # One driver connection per executor connection.
        n_drv = len(self.stack.driver.all_conns())
        n_exec = self.counts["exec connections"]
        self.counts["driver connections"] = n_drv
        may_miss = self.counts["churn aborted early"] + \
            sum(v for k, v in self.excused.items() if k.startswith("exec"))
        if n_drv > n_exec or n_drv < n_exec - may_miss:
            self.fail("final: the driver accepted %d connections for %d executor connections "
                      "(%d of which may never have reached it)" % (n_drv, n_exec, may_miss))
        # The relay: nothing left open or held.
        want = ("sparkrelay_streams_active", "sparkrelay_resume_streams_held",
                "sparkrelay_resume_held_bytes", "sparkrelay_executor_buffered_bytes",
                "sparkrelay_resume_leases_away")
        m = {}

        def settled():
            m.clear()
            m.update(self.metrics())
            return all(m.get(k, 0) == 0 for k in want)
        if not R.X.wait_for(settled, 15, interval=0.5):
            self.fail("final: relay metrics not back to zero 15 s after the end: %s" %
                      {k: m.get(k) for k in want})
        self.final_metrics = dict(m)
        ex = m.get("sparkrelay_executor_connections_total")
        if ex is not None and int(ex) != n_exec:
            self.fail("final: the relay counted %d executor connections, the soak made %d" %
                      (int(ex), n_exec))
        lost = {k: v for k, v in m.items() if k.startswith("sparkrelay_resume_streams_lost_total")}
        for k, v in lost.items():
            if v and not ('"unknown"' in k and self.kills) and not ('"socket"' in k and
                                                                   self.aborts):
                self.fail("final: relay metric %s = %d" % (k, v))
        # SIGTERM: the sidecar, then the relay; exit 0, no sanitizer report.
        for p in (self.stack.tunnel, self.stack.relay):
            for pr in p.stop_problems(20.0, ended_ok=True, dump=False, cont=True):
                if "sanitizer report" not in pr:  # the log scan reports those
                    self.fail("final: " + pr, log=p.log_path)
        time.sleep(0.2)
        self.poll_logs()
        for p, w in self.watch.items():
            if w.malformed and not w.sanitizer:
                self.fail("%s: %d lines not in the log format, first: %r" %
                          (p.name, len(w.malformed), w.malformed[0][:200]), log=p.log_path)
        if self.stack.driver is not None:
            self.stack.driver.stop()

    def _probe_ok(self, port):
        try:
            self.probe(port, 1 * KiB)
            return True
        except (Ended, OSError) as e:
            self.say("final probe on %s: %s" % (port, e))
            return False

    def check_rss(self):
        """RSS must not grow without bound: the relay over the run, the last
        sidecar over its life. Baseline: the highest sample of the second
        quarter of the series; end: the median of its last 10 %."""
        self.rss_report = {}
        t_stop = self.t_cuts + self.args.minutes * 60
        series = {"relay": [(t, r) for t, r, _, _ in self.rss if r and t <= t_stop]}
        last = self.incarnation
        series["sidecar"] = [(t, s) for t, _, s, inc in self.rss
                             if s and inc == last and t <= t_stop]
        for name, xs in series.items():
            if len(xs) < 20:
                self.rss_report[name] = "too few samples (%d)" % len(xs)
                continue
            n = len(xs)
            q2 = [v for _, v in xs[n // 4:n // 2]]
            tail = sorted(v for _, v in xs[-max(2, n // 10):])
            base = max(q2)
            end = tail[len(tail) // 2]
            peak = max(v for _, v in xs)
            # slope over the second half (KiB per minute), least squares
            h = xs[n // 2:]
            tm = sum(t for t, _ in h) / len(h)
            vm = sum(v for _, v in h) / len(h)
            den = sum((t - tm) ** 2 for t, _ in h) or 1.0
            slope = sum((t - tm) * (v - vm) for t, v in h) / den * 60
            span = (xs[-1][0] - xs[0][0]) / 60
            self.rss_report[name] = ("first %d KiB, baseline %d KiB, end %d KiB, peak %d KiB, "
                                     "second-half slope %+.0f KiB/min over %.1f min" % (
                                         xs[0][1], base, end, peak, slope, span))
            limit = base + max(64 * 1024, base // 2)
            if end > limit:
                self.fail("%s RSS grew from %d KiB (baseline) to %d KiB at the end (limit %d)" %
                          (name, base, end, limit))

    def summary(self):
        dur = time.time() - self.t_start
        lines = []
        lines.append("=" * 72)
        lines.append("sparkrelay resume soak: seed %d, %.1f min of cuts, %.0f s in all" %
                     (self.seed, self.args.minutes, dur))
        kinds = ", ".join("%s %d" % (k[5:], v) for k, v in sorted(self.counts.items())
                          if k.startswith("cuts ") and k != "cuts that killed nothing")
        lines.append("cuts: %d (%s; %d ss -K killed nothing)" % (
            getattr(self, "n_cuts", 0), kinds, self.counts["cuts that killed nothing"]))
        rs = [x for w in self.watch.values() if w.proc.name == "relay" for x in w.resumed]
        ss = [x for w in self.watch.values() if w.proc.name.startswith("tunnel")
              for x in w.resumed]
        lines.append("resumes seen: relay %d (%d streams, %d bytes replayed), sidecar %d "
                     "(%d streams, %d bytes replayed)" % (
                         len(rs), sum(x[0] for x in rs), sum(x[1] for x in rs),
                         len(ss), sum(x[0] for x in ss), sum(x[1] for x in ss)))
        lines.append("bytes checked: %d (%.1f MiB); rpc echoes %d; bulk transfers %d; "
                     "half-closed %d; churn %d ok, %d aborted by RST; executor connections %d, "
                     "driver connections %d" % (
                         self.total_bytes(), self.total_bytes() / MiB,
                         sum(rp.completed() for rp in self.rpcs()),
                         self.counts["bulk transfers"], self.counts["half-closed ok"],
                         self.counts["churn ok"], self.counts["churn aborted (RST)"],
                         self.counts["exec connections"], self.counts["driver connections"]))
        lines.append("reconnect: worst request/response delay after a reconnect %.3f s; cuts "
                     "with a connection slower than %.0f s: %d" % (self.worst_late, LATE_SLOW,
                                                                 self.slow))
        backs = [c["back_after"] for c in self.cut_stats if c.get("back_after") is not None
                 and c["kind"] == "ssk"]
        if backs:
            backs.sort()
            lines.append("ss -K: tunnel back after median %.3f s, max %.3f s" %
                         (backs[len(backs) // 2], backs[-1]))
        lines.append("expected resets (SIGKILL'ed sidecar): %s; lost streams explained: %s" %
                     (dict(self.excused) or 0, dict(self.lost_expected) or 0))
        fm = getattr(self, "final_metrics", {})
        lines.append("relay metrics at the end: " + ", ".join(
            "%s=%d" % (k.replace("sparkrelay_", ""), v) for k, v in sorted(fm.items())
            if k.startswith(("sparkrelay_resume", "sparkrelay_leases_resumed",
                             "sparkrelay_streams_opened"))))
        for k, v in getattr(self, "rss_report", {}).items():
            lines.append("RSS %s: %s" % (k, v))
        warns = collections.Counter()
        for w in self.watch.values():
            for msg, n in w.warns.items():
                warns["%s: %s" % ("relay" if w.proc.name == "relay" else "sidecar", msg)] += n
        if warns:
            lines.append("WARN/ERROR lines in the logs (numbers as N):")
            for msg, n in warns.most_common(15):
                lines.append("  %6d  %s" % (n, msg))
        lines.append("logs: %s" % ", ".join(p.log_path for p in self.procs))
        lines.append("timeline: %s" % self.timeline_path)
        return end_summary(self, lines)


# Shared with fleet_soak.py: a soak object has dir, timeline, timeline_path,
# failures [(t, text, log)], ts(t), fail(text) and summary().

def end_summary(soak, lines):
    """Add the failures and the verdict to the summary lines, print them and
    write them to the timeline and summary.txt: the exit status (1: failures)."""
    if soak.failures:
        lines.append("FAILED: %d failures" % len(soak.failures))
        for t, text, log in soak.failures[:25]:
            lines.append("  %s %s%s" % (soak.ts(t), text, " [log %s]" % log if log else ""))
    else:
        lines.append("PASSED")
    lines.append("=" * 72)
    text = "\n".join(lines)
    print(text)
    soak.timeline.write(text + "\n")
    with open(os.path.join(soak.dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    return 1 if soak.failures else 0


def watchdog(limit, soak, name="soak"):
    """Thread body: after limit seconds, dump every thread, write the summary and
    exit 4 with every child killed."""
    time.sleep(limit)
    sys.stderr.write("[%s] WATCHDOG: the run exceeded %.0f s; dumping and aborting\n" %
                     (name, limit))
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    try:
        soak.fail("WATCHDOG: the run exceeded %.0f s" % limit)
        soak.summary()
    except Exception:
        pass
    H._kill_all_procs()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(4)


def script_failed(soak):
    """From an except block: the soak script itself failed. Exit status 3."""
    traceback.print_exc()
    soak.fail("soak script error: %s" % traceback.format_exc().strip().splitlines()[-1])
    try:
        soak.summary()
    except Exception:
        pass
    return 3


def main():
    H.raise_nofile()
    import atexit
    atexit.register(H._kill_all_procs)
    if not os.access(ARGS.bin, os.X_OK):
        sys.stderr.write("soak: %s is not an executable (set --bin or SPARKRELAY_BIN)\n" %
                         ARGS.bin)
        return 2
    H.BIN = ARGS.bin
    soak = Soak(ARGS)
    threading.Thread(target=watchdog, args=(ARGS.minutes * 60 + 360, soak), daemon=True,
                     name="watchdog").start()
    try:
        rc = soak.run()
    except H.HarnessError as e:
        sys.stderr.write("soak: setup failed: %s\n(logs in %s)\n" % (e, soak.dir))
        rc = 2
    except BaseException:
        rc = script_failed(soak)
    H._kill_all_procs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
