"""Integration test harness for sparkrelay (Python 3.11, standard library only).

A test runs the real binary on loopback:

    executor --TCP--> relay (pool on 127.0.0.2:P) ==TLS/HTTP2== sidecar --TCP--> driver (127.0.0.1:P)

The relay and the sidecar (`sparkrelay relay|tunnel --config FILE`) run as child
processes with their stderr in a log file; certificates are made at test time
with the openssl command line; the "driver" and the "executors" are stand-ins
in this process.

Environment:
  SPARKRELAY_BIN          path of the built binary (set by CTest)
  SR_IT_DIRECT=1          no relay, no sidecar: executors connect straight to
                          the stand-in driver. Proves the test logic on its own.
  SR_IT_SELFTEST_FAULT=F  DIRECT mode only (ignored otherwise): put a stand-in
                          relay (FaultProxy, in this process, on 127.0.0.2:P)
                          between executors and driver, with fault F:
                            none        faithful forwarding (must pass)
                            corrupt     flip byte 1000 of each executor->driver stream
                            rst-as-fin  forward a reset as a clean FIN
                            fin-closes  turn a FIN into a full close of both directions
                            unbounded   read from executors without any limit
                          so each kind of check can be seen to fail.
  SR_IT_SELFTEST_CORRUPT=1  same as SR_IT_SELFTEST_FAULT=corrupt
  SR_IT_LOG_LEVEL         log level written into the configs (default debug)
  SR_IT_KEEP=1            keep the temp directory (it is kept on failure anyway)
  SR_IT_FILE_TIMEOUT      seconds before the watchdog dumps and aborts (270)

Every wait is bounded: sockets carry timeouts, threads are joined with
timeouts, and a watchdog aborts the whole file (after dumping the logs and the
Python stacks, and killing the children) before CTest's 300 s limit.
"""

import copy
import ctypes
import faulthandler
import hashlib
import json
import os
import queue
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

KiB = 1 << 10
MiB = 1 << 20

DIRECT = os.environ.get("SR_IT_DIRECT") == "1"
# The corruption knob exists only to show that the checks can fail; it can
# never act on a run against the real binary.
FAULTS = ("none", "corrupt", "rst-as-fin", "fin-closes", "unbounded")
_fault_env = os.environ.get("SR_IT_SELFTEST_FAULT") or \
    ("corrupt" if os.environ.get("SR_IT_SELFTEST_CORRUPT") == "1" else None)
if _fault_env is not None and _fault_env not in FAULTS:
    raise SystemExit("SR_IT_SELFTEST_FAULT must be one of %s" % (FAULTS,))
FAULT = _fault_env if DIRECT else None
CORRUPT_OFFSET = 1000
BIN = os.environ.get("SPARKRELAY_BIN")
KEEP = os.environ.get("SR_IT_KEEP") == "1"
LOG_LEVEL = os.environ.get("SR_IT_LOG_LEVEL", "debug")
FILE_TIMEOUT = float(os.environ.get("SR_IT_FILE_TIMEOUT", "270"))
LOG_TAIL = 60

DRIVER_HOST = "127.0.0.1"  # where the stand-in driver binds (spark.driver.bindAddress)
POOL_HOST = "127.0.0.2"    # where the relay binds and advertises the lease ports
POOL_SIZE = 16

# Handler threads run simple loops; a small stack keeps 1,000+ of them cheap.
threading.stack_size(512 * KiB)


class HarnessError(Exception):
    """The environment could not be set up (not a verdict on the relay)."""


def log(msg):
    sys.stderr.write("[it %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# --------------------------------------------------------------------------
# Process-wide setup: limits, temp directory, watchdog.

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log("cannot raise RLIMIT_NOFILE to %d: %s" % (target, e))
        return soft
    return target


_ROOT = None
_any_failure = False


def root_dir():
    global _ROOT
    if _ROOT is None:
        _ROOT = tempfile.mkdtemp(prefix="sr-it-")
    return _ROOT


def new_dir(name):
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-80:]
    d = tempfile.mkdtemp(prefix=safe + "-", dir=root_dir())
    return d


def _cleanup_root():
    if _ROOT is None:
        return
    if KEEP or _any_failure:
        log("kept temp dir %s" % _ROOT)
        return
    shutil.rmtree(_ROOT, ignore_errors=True)


_live_procs = []
_live_lock = threading.Lock()


def _kill_all_procs():
    with _live_lock:
        procs = list(_live_procs)
    for p in procs:
        p.kill()


def _watchdog(limit):
    time.sleep(limit)
    log("WATCHDOG: file exceeded %.0f s; dumping state and aborting" % limit)
    with _live_lock:
        procs = list(_live_procs)
    for p in procs:
        p.dump()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    _kill_all_procs()
    sys.stderr.flush()
    os._exit(4)


atexit_registered = False


def _register_exit_hooks():
    global atexit_registered
    if atexit_registered:
        return
    import atexit
    atexit.register(_cleanup_root)
    atexit.register(_kill_all_procs)
    atexit_registered = True


# --------------------------------------------------------------------------
# Certificates (openssl command line, ECDSA P-256), cached per process.

class Certs:
    pass


_certs = None
_certs_lock = threading.Lock()


def _openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise HarnessError("openssl %s failed (%d): %s" % (" ".join(args), r.returncode,
                                                          r.stderr.strip()))
    return r.stdout


def _make_ca(d, name, cn):
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", name + ".key"], d)
    _openssl(["req", "-x509", "-new", "-key", name + ".key", "-sha256", "-days", "3",
              "-subj", "/CN=" + cn,
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-addext", "subjectKeyIdentifier=hash",
              "-out", name + ".pem"], d)


def _make_leaf(d, name, cn, ca, ext_lines):
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", name + ".key"], d)
    _openssl(["req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
              "-out", name + ".csr"], d)
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("\n".join(["basicConstraints=critical,CA:FALSE",
                           "keyUsage=critical,digitalSignature",
                           "subjectKeyIdentifier=hash",
                           "authorityKeyIdentifier=keyid"] + ext_lines) + "\n")
    _openssl(["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
              "-set_serial", str(random.randrange(1, 1 << 62)), "-days", "3", "-sha256",
              "-extfile", ext, "-out", name + ".pem"], d)
    _openssl(["verify", "-CAfile", ca + ".pem", name + ".pem"], d)


def certs():
    """CA, relay server cert (SAN localhost/127.0.0.1/::1), sidecar client cert
    (CN sidecar-1), and an unrelated CA with its own client cert."""
    global _certs
    with _certs_lock:
        if _certs is not None:
            return _certs
        d = os.path.join(root_dir(), "certs")
        os.makedirs(d, exist_ok=True)
        _make_ca(d, "ca", "sparkrelay-it-ca")
        _make_leaf(d, "relay", "localhost", "ca",
                   ["extendedKeyUsage=serverAuth",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"])
        _make_leaf(d, "sidecar", "sidecar-1", "ca", ["extendedKeyUsage=clientAuth"])
        _make_ca(d, "other-ca", "sparkrelay-it-other-ca")
        _make_leaf(d, "other-client", "sidecar-intruder", "other-ca",
                   ["extendedKeyUsage=clientAuth"])
        c = Certs()
        p = lambda n: os.path.join(d, n)
        c.dir = d
        c.ca, c.ca_key = p("ca.pem"), p("ca.key")
        c.relay_cert, c.relay_key = p("relay.pem"), p("relay.key")
        c.client_cert, c.client_key = p("sidecar.pem"), p("sidecar.key")
        c.other_ca, c.other_ca_key = p("other-ca.pem"), p("other-ca.key")
        c.other_client_cert, c.other_client_key = p("other-client.pem"), p("other-client.key")
        _certs = c
        return c


# --------------------------------------------------------------------------
# Ports.

def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _can_bind(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def pick_pool_base(n=POOL_SIZE, hosts=(DRIVER_HOST, POOL_HOST)):
    """A random base in 20000..60000 such that base..base+n-1 are bindable on
    every host. Ranges clear of the ephemeral range are preferred so that
    outgoing connections never sit on a pool port."""
    lo, hi = _ephemeral_range()
    rng = random.Random()
    for attempt in range(200):
        base = rng.randrange(20000, 60000 - n)
        clear = base + n - 1 < lo or base > hi
        if attempt < 150 and not clear:
            continue
        if all(_can_bind(h, p) for p in range(base, base + n) for h in hosts):
            return base
    raise HarnessError("no free pool range of %d ports found" % n)


# --------------------------------------------------------------------------
# Configuration.

DELETE = object()  # in an override: remove this key


def deep_merge(base, over):
    """Merge over into base (in place) and return base. Dicts merge
    recursively; any other value replaces; DELETE removes the key."""
    for k, v in (over or {}).items():
        if v is DELETE:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def relay_config(listen_port, pool_base, overrides=None, c=None):
    c = c or certs()
    cfg = {
        "log": {"level": LOG_LEVEL},
        "relay": {
            "listen": "127.0.0.1:%d" % listen_port,
            "tls": {"cert": c.relay_cert, "key": c.relay_key, "client_ca": None,
                    "require_client_cert": False},
            "pool": {"bind": POOL_HOST, "advertise": POOL_HOST,
                     "port_min": pool_base, "port_max": pool_base + POOL_SIZE - 1},
            "lease": {"grace_s": 300, "pending_timeout_ms": 30000, "max_pending": 256},
            "handshake_timeout_ms": 10000,
            "drain_timeout_ms": 5000,
            "h2": {"ping_interval_ms": 10000, "ping_timeout_ms": 30000},
            # Port 0: relays of concurrent tests must not fight over 9090.
            "admin": {"listen": "127.0.0.1:0"},
        },
    }
    return deep_merge(cfg, overrides)


def tunnel_config(relay_port, workdir, overrides=None, c=None):
    c = c or certs()
    cfg = {
        "log": {"level": LOG_LEVEL},
        "tunnel": {
            "relays": ["127.0.0.1:%d" % relay_port],
            "server_name": None,
            "tls": {"ca": c.ca, "cert": None, "key": None},
            "app": "it-test",
            "spark_conf": os.path.join(workdir, "spark-defaults.conf"),
            "spark_json": os.path.join(workdir, "spark.json"),
            "state_file": os.path.join(workdir, "state.json"),
            "backoff_initial_ms": 100,
            "backoff_max_ms": 2000,
            # Test pools lie anywhere in 20000..60000 (pick_pool_base); fake
            # relays grant free ports: the default (the default pool) would
            # refuse them.
            "allowed_ports": ["1024-65535"],
        },
    }
    return deep_merge(cfg, overrides)


def write_config(path, cfg):
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    return path


# --------------------------------------------------------------------------
# Child processes.

_libc = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _child_setup():
    # Children die with this process even if it is SIGKILLed, so a crashed
    # or timed-out test never leaves a relay running on the shared machine.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# The documented stderr format: one line per message,
#   2026-11-27T07:31:31.123Z INFO  [relay lease=.. peer=..] text
LOG_LINE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                         r"(DEBUG|INFO |WARN |ERROR|FATAL) \[(relay|tunnel)\b[^\]]*\] \S")

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:", "ThreadSanitizer")


class Proc:
    """A sparkrelay child process with stdout/stderr captured to files."""

    def __init__(self, name, argv, workdir):
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.log_path = os.path.join(workdir, name + ".log")
        self.out_path = os.path.join(workdir, name + ".out")
        self.p = None
        self.rc = None
        self.killed = False

    def start(self):
        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.p = subprocess.Popen(self.argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=err, preexec_fn=_child_setup)
        with _live_lock:
            _live_procs.append(self)
        return self

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def wait_ready(self, check, timeout, what):
        """Poll check() until it returns a true value; fail early if the
        process exits."""
        deadline = time.monotonic() + timeout
        while True:
            v = check()
            if v:
                return v
            if not self.alive():
                raise HarnessError("%s exited (rc=%s) before %s" %
                                   (self.name, self.p.returncode, what))
            if time.monotonic() > deadline:
                raise HarnessError("%s: no %s within %.0f s" % (self.name, what, timeout))
            time.sleep(0.02)

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self, timeout=15.0):
        """SIGTERM, wait, and return the exit code (None if it had to be killed)."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.rc = None
                self._forget()
                return None
        self.rc = self.p.returncode
        self._forget()
        return self.rc

    def kill(self):
        if self.p is not None and self.p.poll() is None:
            self.killed = True
            self.p.kill()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._forget()

    def _forget(self):
        with _live_lock:
            if self in _live_procs:
                _live_procs.remove(self)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n=LOG_TAIL):
        return self.log_text().splitlines()[-n:]

    def grep(self, needle):
        return [l for l in self.log_text().splitlines() if needle in l]

    def malformed_lines(self):
        """Log lines not in the documented format."""
        return [l for l in self.log_text().splitlines() if l and not LOG_LINE_RE.match(l)]

    def sanitizer_lines(self):
        return [l for l in self.log_text().splitlines()
                if any(m in l for m in SANITIZER_MARKERS)]

    def stop_problems(self, timeout=10.0, ended_ok=False, dump=True, cont=False):
        """SIGTERM, then what a clean exit rules out: no exit within timeout
        seconds (it is killed), an exit code other than 0, a sanitizer report
        in the log (the log is dumped with it unless dump is False).
        ended_ok: a process that had already exited is not judged by its exit
        code (the test ended it, or the caller reports its death itself); its
        log still is. cont: SIGCONT first, as a stopped process cannot exit."""
        was_alive = self.alive()
        if cont and was_alive:
            try:
                self.p.send_signal(signal.SIGCONT)
            except OSError:
                pass
        rc = self.stop(timeout)
        problems = []
        if was_alive or not ended_ok:
            if rc is None:
                problems.append("%s did not exit within %.0f s of SIGTERM (killed)" %
                                (self.name, timeout))
            elif rc != 0:
                problems.append("%s exited %s after SIGTERM (expected 0)" % (self.name, rc))
        san = self.sanitizer_lines()
        if san:
            if dump:
                self.dump(80)
            problems.append("%s sanitizer report: %s" % (self.name, san[0].strip()))
        return problems

    def dump(self, n=LOG_TAIL):
        lines = self.tail(n)
        sys.stderr.write("----- %s log %s (last %d lines) -----\n" %
                         (self.name, self.log_path, len(lines)))
        for l in lines:
            sys.stderr.write("  " + l + "\n")
        try:
            with open(self.out_path, "rb") as f:
                out = f.read().decode("utf-8", "replace").splitlines()[-20:]
        except OSError:
            out = []
        if out:
            sys.stderr.write("----- %s stdout (last %d lines) -----\n" % (self.name, len(out)))
            for l in out:
                sys.stderr.write("  " + l + "\n")
        sys.stderr.write("----- end %s -----\n" % self.name)
        sys.stderr.flush()


# --------------------------------------------------------------------------
# Data: deterministic pseudo-random streams and hashing.

class Pattern:
    """A deterministic byte stream of n bytes from a seed, produced in chunks."""

    CHUNK = 256 * KiB

    def __init__(self, seed, n):
        self.rng = random.Random(seed)
        self.left = n

    def next(self, size=CHUNK):
        k = min(size, self.left)
        if k <= 0:
            return b""
        self.left -= k
        return self.rng.randbytes(k)


def pattern_bytes(seed, n):
    return random.Random(seed).randbytes(n)


def pattern_sha(seed, n):
    h = hashlib.sha256()
    p = Pattern(seed, n)
    while True:
        b = p.next()
        if not b:
            return h.hexdigest()
        h.update(b)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def message(i, size=1 * KiB, seed=0):
    """A distinct message for index i: an 8-byte index header plus pseudo-random bytes."""
    head = struct.pack("!II", i, size)
    return head + random.Random((seed << 32) ^ i).randbytes(size - len(head))


# --------------------------------------------------------------------------
# Socket helpers (blocking, always with a timeout).

def set_nodelay(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(host, port, timeout=10.0, sndbuf=None, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        set_nodelay(s)
        s.settimeout(timeout)
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def abort(s):
    """Abortive close: SO_LINGER {1, 0} then close, so the peer gets a RST."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def send_pattern(s, seed, n):
    """sendall the pattern; returns its sha256 hex digest."""
    h = hashlib.sha256()
    p = Pattern(seed, n)
    while True:
        b = p.next()
        if not b:
            return h.hexdigest()
        s.sendall(b)
        h.update(b)


def recv_exact(s, n, recv=None):
    """Read exactly n bytes. Returns (end, got, sha, data_if_small) where end is
    'ok', 'eof' (peer closed early), 'reset' or 'timeout'."""
    recv = recv or s.recv
    h = hashlib.sha256()
    got = 0
    keep = [] if n <= 1 * MiB else None
    try:
        while got < n:
            b = recv(min(256 * KiB, n - got))
            if not b:
                return ("eof", got, h.hexdigest(), _join(keep))
            h.update(b)
            got += len(b)
            if keep is not None:
                keep.append(b)
    except ConnectionResetError:
        return ("reset", got, h.hexdigest(), _join(keep))
    except socket.timeout:
        return ("timeout", got, h.hexdigest(), _join(keep))
    return ("ok", got, h.hexdigest(), _join(keep))


def recv_to_eof(s, limit, recv=None):
    """Read until EOF (at most limit bytes). Returns (end, got, sha) with end in
    'eof', 'reset', 'timeout', 'overflow'."""
    recv = recv or s.recv
    h = hashlib.sha256()
    got = 0
    try:
        while True:
            b = recv(256 * KiB)
            if not b:
                return ("eof", got, h.hexdigest())
            h.update(b)
            got += len(b)
            if got > limit:
                return ("overflow", got, h.hexdigest())
    except ConnectionResetError:
        return ("reset", got, h.hexdigest())
    except socket.timeout:
        return ("timeout", got, h.hexdigest())


def _join(parts):
    return None if parts is None else b"".join(parts)


class Sender(threading.Thread):
    """Sends a pattern on a socket from a thread (optionally then SHUT_WR)."""

    def __init__(self, s, seed, n, shut_wr=False):
        super().__init__(daemon=True)
        self.s, self.seed, self.n, self.shut_wr = s, seed, n, shut_wr
        self.sha = None
        self.error = None
        self.elapsed = None

    def run(self):
        t0 = time.monotonic()
        try:
            self.sha = send_pattern(self.s, self.seed, self.n)
            if self.shut_wr:
                self.s.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the test
            self.error = e
        self.elapsed = time.monotonic() - t0

    def finish(self, timeout):
        self.join(timeout)
        if self.is_alive():
            return "sender still running after %.0f s" % timeout
        if self.error is not None:
            return "sender failed: %r" % (self.error,)
        return None


# --------------------------------------------------------------------------
# The stand-in driver.

class DriverConn:
    """One connection accepted by the stand-in driver. The handler thread owns
    the socket; the test reads the recorded results after done is set."""

    def __init__(self, driver, sock, port_name, port, peer):
        self.driver = driver
        self.sock = sock
        self.port_name = port_name
        self.port = port
        self.peer = peer
        self.accepted_at = time.monotonic()
        self.done = threading.Event()
        self.end = None            # how the handler finished
        self.error = None
        self.rx_bytes = 0          # every byte received through recv()
        self.rx_sha = None
        self.tx_bytes = 0
        self.tx_sha = None
        self.info = {}
        self.go = threading.Event()  # for handlers that wait for the test
        self.expect = None
        self.cmds = queue.Queue()
        self.results = queue.Queue()

    def recv(self, n):
        b = self.sock.recv(n)
        self.rx_bytes += len(b)
        return b

    def sendall(self, b):
        self.sock.sendall(b)
        self.tx_bytes += len(b)

    # scripted handler interface
    def submit(self, *cmd):
        self.cmds.put(cmd)

    def result(self, timeout):
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("driver conn %s: no result within %.1f s" % (self.peer, timeout))

    def do(self, *cmd, timeout=30.0):
        self.submit(*cmd)
        return self.result(timeout)

    def wait_done(self, timeout):
        return self.done.wait(timeout)


# Handlers: callables taking a DriverConn. They may raise; the driver records it.

def h_echo(dc):
    while True:
        try:
            b = dc.recv(64 * KiB)
            if not b:
                dc.end = "eof"
                return
            dc.sendall(b)
        except (ConnectionResetError, BrokenPipeError) as e:
            dc.end, dc.error = "reset", e
            return


def h_sink(dc):
    end, got, digest = recv_to_eof(dc.sock, 1 << 40, recv=dc.recv)
    dc.end, dc.rx_sha = end, digest


def h_source(seed, n):
    def handler(dc):
        dc.tx_sha = send_pattern(dc.sock, seed, n)
        dc.tx_bytes = n
        dc.sock.shutdown(socket.SHUT_WR)
        end, got, digest = recv_to_eof(dc.sock, 1 << 40, recv=dc.recv)
        dc.end = end
    return handler


def h_duplex(seed, n_send, n_recv):
    """Send n_send pattern bytes while reading exactly n_recv bytes; then wait
    for the peer to close. Neither direction is half-closed."""
    def handler(dc):
        snd = Sender(dc.sock, seed, n_send)
        snd.start()
        t0 = time.monotonic()
        end, got, digest, _ = recv_exact(dc.sock, n_recv, recv=dc.recv)
        dc.info["rx_end"] = end
        dc.info["rx_elapsed"] = time.monotonic() - t0
        dc.rx_sha = digest
        err = snd.finish(120)
        dc.info["tx_error"] = err
        dc.tx_sha = snd.sha
        dc.tx_bytes = n_send if err is None else None
        dc.info["tx_elapsed"] = snd.elapsed
        dc.info["rx_done"] = True
        # then stay until the executor closes (bytes after this are extra)
        end2, extra, _ = recv_to_eof(dc.sock, 1 << 40, recv=dc.recv)
        dc.info["extra"] = extra
        dc.end = end if end != "ok" else end2
    return handler


def h_hold_then_read(dc):
    """Accept and never read until the test sets dc.go (with dc.expect set);
    then read exactly dc.expect bytes, then to EOF (counting extra bytes)."""
    if not dc.go.wait(dc.driver.hold_timeout):
        dc.end = "never-released"
        return
    end, got, digest, _ = recv_exact(dc.sock, dc.expect, recv=dc.recv)
    dc.info["rx_end"], dc.info["rx_got"], dc.rx_sha = end, got, digest
    dc.info["rx_done"] = True
    end2, extra, _ = recv_to_eof(dc.sock, 1 << 40, recv=dc.recv)
    dc.info["extra"] = extra
    dc.end = end2 if end == "ok" else end


def h_script(dc):
    """Run commands sent by the test (dc.submit / dc.do), one result each:
      ('recv_exact', n)          -> (end, got, sha, data_if_small)
      ('recv_to_eof', limit)     -> (end, got, sha)
      ('send', seed, n)          -> ('ok', sha) | ('error', repr)
      ('sendbytes', data)        -> ('ok',) | ('error', repr)
      ('sleep', seconds)         -> ('ok',)
      ('shut_wr',) ('abort',) ('close',) ('timeout', seconds)  -> ('ok',) | ('error', repr)
    'abort' and 'close' end the handler."""
    while True:
        try:
            cmd = dc.cmds.get(timeout=dc.driver.hold_timeout)
        except queue.Empty:
            dc.end = "script-idle-timeout"
            return
        op = cmd[0]
        try:
            if op == "recv_exact":
                r = recv_exact(dc.sock, cmd[1], recv=dc.recv)
            elif op == "recv_to_eof":
                r = recv_to_eof(dc.sock, cmd[1], recv=dc.recv)
            elif op == "send":
                r = ("ok", send_pattern(dc.sock, cmd[1], cmd[2]))
            elif op == "sendbytes":
                dc.sendall(cmd[1])
                r = ("ok",)
            elif op == "sleep":
                time.sleep(cmd[1])
                r = ("ok",)
            elif op == "timeout":
                dc.sock.settimeout(cmd[1])
                r = ("ok",)
            elif op == "shut_wr":
                dc.sock.shutdown(socket.SHUT_WR)
                r = ("ok",)
            elif op == "abort":
                dc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                dc.sock.close()
                dc.end = "aborted"
                dc.results.put(("ok",))
                return
            elif op == "close":
                dc.sock.close()
                dc.end = "closed"
                dc.results.put(("ok",))
                return
            else:
                r = ("error", "unknown command %r" % (op,))
        except (OSError, ValueError) as e:
            r = ("error", repr(e))
        dc.results.put(r)


class Driver:
    """Stand-in Spark driver: listens on 127.0.0.1 at the leased ports and runs
    a handler thread per accepted connection.

    ports:    {"driver": P1, "blockManager": P2}
    handlers: {port name: handler}; default handler for names not listed
    rcvbuf:   {port name: SO_RCVBUF set on the listener (inherited by accepts)}"""

    def __init__(self, ports, handlers=None, default=h_echo, rcvbuf=None,
                 host=DRIVER_HOST, conn_timeout=60.0, hold_timeout=120.0):
        self.host = host
        self.ports = dict(ports)
        self.handlers = dict(handlers or {})
        self.default = default
        self.rcvbuf = dict(rcvbuf or {})
        self.conn_timeout = conn_timeout
        self.hold_timeout = hold_timeout
        self.listeners = []
        self.threads = []
        self.conns = []
        self.taken = set()  # ids of conns handed out by next_conn
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.accept_errors = []

    def start(self):
        try:
            for name, port in self.ports.items():
                ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if name in self.rcvbuf:
                    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf[name])
                try:
                    ls.bind((self.host, port))
                except OSError as e:
                    ls.close()
                    raise HarnessError("driver cannot bind %s:%d (%s): %s" %
                                       (self.host, port, name, e))
                ls.listen(4096)
                ls.settimeout(0.2)
                self.listeners.append(ls)
                t = threading.Thread(target=self._accept_loop, args=(ls, name, port),
                                     daemon=True, name="accept-" + name)
                t.start()
                self.threads.append(t)
        except BaseException:
            self.stop()
            raise
        return self

    def _accept_loop(self, ls, name, port):
        while not self.stopping.is_set():
            try:
                s, peer = ls.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if not self.stopping.is_set():
                    self.accept_errors.append(repr(e))
                    time.sleep(0.05)
                continue
            try:
                set_nodelay(s)
            except OSError:
                pass
            s.settimeout(self.conn_timeout)
            dc = DriverConn(self, s, name, port, peer)
            handler = self.handlers.get(name, self.default)
            t = threading.Thread(target=self._run, args=(dc, handler), daemon=True)
            try:
                t.start()
            except RuntimeError as e:  # cannot start a thread
                dc.end, dc.error = "error", e
                dc.done.set()
                s.close()
                continue
            with self.cond:
                self.conns.append(dc)
                self.cond.notify_all()

    def _run(self, dc, handler):
        try:
            handler(dc)
        except BaseException as e:
            dc.error = e
            if dc.end is None:
                dc.end = "error"
        finally:
            try:
                dc.sock.close()
            except OSError:
                pass
            dc.done.set()

    def next_conn(self, timeout=10.0, port=None, what=None):
        """The oldest accepted connection (on port name `port`, if given) not
        handed out before."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for dc in self.conns:
                    if id(dc) not in self.taken and (port is None or dc.port_name == port):
                        self.taken.add(id(dc))
                        return dc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("stand-in driver did not accept %s within %.0f s" %
                                         (what or "a connection on %s" % (port or "any port"),
                                          timeout))
                self.cond.wait(left)

    def all_conns(self):
        with self.lock:
            return list(self.conns)

    def wait_accepted(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.all_conns()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.all_conns())

    def wait_all_done(self, timeout, conns=None):
        """Wait until every (given) connection's handler finished; returns the unfinished."""
        conns = self.all_conns() if conns is None else conns
        deadline = time.monotonic() + timeout
        for dc in conns:
            dc.done.wait(max(0.0, deadline - time.monotonic()))
        return [dc for dc in conns if not dc.done.is_set()]

    def stop(self):
        self.stopping.set()
        for ls in self.listeners:
            try:
                ls.close()
            except OSError:
                pass
        for dc in self.all_conns():
            dc.go.set()
            if not dc.done.is_set():
                try:
                    dc.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                dc.cmds.put(("close",))
        deadline = time.monotonic() + 10
        for dc in self.all_conns():
            dc.done.wait(max(0.0, deadline - time.monotonic()))
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------
# FaultProxy: a stand-in relay for the harness self-test (DIRECT mode only).

class _PConn:
    """One proxied connection: side 0 is the executor, side 1 the driver.
    buf[i] holds bytes waiting to be written to socket i."""

    def __init__(self, a, b):
        self.s = [a, b]
        self.buf = [bytearray(), bytearray()]
        self.eof = [False, False]   # EOF read from socket i
        self.shut = [False, False]  # SHUT_WR done on socket i
        self.fwd = [0, 0]           # bytes read from socket i
        self.reg = [0, 0]           # selector interest registered for socket i
        self.closed = False


class FaultProxy:
    """Forwards 127.0.0.2:P -> 127.0.0.1:P like the relay+sidecar pair, with
    half-close and reset semantics and bounded buffers, unless `fault` breaks
    one of them on purpose. One selector thread for all connections."""

    HIGH = 256 * KiB

    def __init__(self, fault, ports, listen_host=POOL_HOST, target_host=DRIVER_HOST):
        assert fault in FAULTS
        self.fault = fault
        self.ports = list(ports)
        self.listen_host = listen_host
        self.target_host = target_host
        self.sel = selectors.DefaultSelector()
        self.listeners = []
        self.conns = set()
        self.stopping = threading.Event()
        self.thread = None
        self.errors = []

    def start(self):
        for port in self.ports:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((self.listen_host, port))
            ls.listen(4096)
            ls.setblocking(False)
            self.sel.register(ls, selectors.EVENT_READ, ("listen", port))
            self.listeners.append(ls)
        self.thread = threading.Thread(target=self._loop, daemon=True, name="faultproxy")
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        for pc in list(self.conns):
            self._close(pc, abortive=False)
        for ls in self.listeners:
            ls.close()
        self.sel.close()

    def _loop(self):
        while not self.stopping.is_set():
            for key, mask in self.sel.select(timeout=0.1):
                try:
                    if key.data[0] == "listen":
                        self._accept(key.fileobj, key.data[1])
                        continue
                    pc, i = key.data
                    if pc.closed:
                        continue
                    if mask & selectors.EVENT_READ:
                        self._on_read(pc, i)
                    if not pc.closed and mask & selectors.EVENT_WRITE:
                        self._on_write(pc, i)
                    if not pc.closed:
                        self._update(pc)
                except Exception as e:  # a harness bug: record, keep going
                    self.errors.append(repr(e))

    def _accept(self, ls, port):
        try:
            a, _ = ls.accept()
        except BlockingIOError:
            return
        b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            b.settimeout(2.0)
            b.connect((self.target_host, port))
        except OSError:
            b.close()
            abort(a)
            return
        for x in (a, b):
            set_nodelay(x)
            x.setblocking(False)
        pc = _PConn(a, b)
        self.conns.add(pc)
        self._update(pc)

    def _update(self, pc):
        for i in (0, 1):
            want = 0
            limit = self.fault == "unbounded" and i == 0
            if not pc.eof[i] and (limit or len(pc.buf[1 - i]) < self.HIGH):
                want |= selectors.EVENT_READ
            if pc.buf[i]:
                want |= selectors.EVENT_WRITE
            if want == pc.reg[i]:
                continue
            if pc.reg[i] == 0:
                self.sel.register(pc.s[i], want, (pc, i))
            elif want == 0:
                self.sel.unregister(pc.s[i])
            else:
                self.sel.modify(pc.s[i], want, (pc, i))
            pc.reg[i] = want

    def _on_read(self, pc, i):
        try:
            d = pc.s[i].recv(64 * KiB)
        except BlockingIOError:
            return
        except OSError:
            self._reset(pc, i)
            return
        if not d:
            pc.eof[i] = True
            self._maybe_shut(pc, 1 - i)
            return
        if self.fault == "corrupt" and i == 0 and pc.fwd[0] <= CORRUPT_OFFSET < pc.fwd[0] + len(d):
            k = CORRUPT_OFFSET - pc.fwd[0]
            d = d[:k] + bytes([d[k] ^ 0x01]) + d[k + 1:]
        pc.fwd[i] += len(d)
        pc.buf[1 - i] += d

    def _on_write(self, pc, i):
        try:
            k = pc.s[i].send(pc.buf[i])
        except BlockingIOError:
            return
        except OSError:
            self._reset(pc, i)
            return
        del pc.buf[i][:k]
        if not pc.buf[i]:
            self._maybe_shut(pc, i)

    def _maybe_shut(self, pc, i):
        """Socket i gets its FIN once the other side sent EOF and all is flushed."""
        if pc.closed or not pc.eof[1 - i] or pc.buf[i] or pc.shut[i]:
            return
        if self.fault == "fin-closes":
            self._close(pc, abortive=False)
            return
        try:
            pc.s[i].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        pc.shut[i] = True
        if pc.shut[0] and pc.shut[1]:
            self._close(pc, abortive=False)

    def _reset(self, pc, i):
        """Socket i failed (reset): reset the other side too."""
        self._close(pc, abortive=self.fault != "rst-as-fin", which=1 - i)

    def _close(self, pc, abortive, which=None):
        if pc.closed:
            return
        pc.closed = True
        for k in (0, 1):
            if pc.reg[k]:
                try:
                    self.sel.unregister(pc.s[k])
                except (KeyError, ValueError, OSError):
                    pass
                pc.reg[k] = 0
        for k in (0, 1):
            if abortive and (which is None or k == which):
                abort(pc.s[k])
            else:
                pc.s[k].close()
        self.conns.discard(pc)


# --------------------------------------------------------------------------
# The stack: relay + sidecar (or nothing in DIRECT mode) + driver + executors.

def read_spark_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Stack:
    """Everything one test needs. In relay mode:
         start():  relay (ready when its listen port accepts TCP), then the
                   sidecar (ready when spark_json appears with a lease).
       exec_host/ports: where executors connect (127.0.0.2:P in relay mode,
                   127.0.0.1:P in DIRECT mode); the driver binds 127.0.0.1:P."""

    def __init__(self, name, relay_overrides=None, tunnel_overrides=None):
        self.name = name
        self.relay_overrides = relay_overrides
        self.tunnel_overrides = tunnel_overrides
        self.dir = new_dir(name)
        self.relay = None
        self.tunnel = None
        self.driver = None
        self.execs = []
        self.lease = None
        self.ports = None
        self.exec_host = None
        self.pool_base = None
        self.proxy = None

    # -- lifecycle
    def start(self, relay_timeout=15.0, lease_timeout=20.0):
        self.pool_base = pick_pool_base()
        if DIRECT:
            self.ports = {"driver": self.pool_base, "blockManager": self.pool_base + 1}
            self.exec_host = DRIVER_HOST
            if FAULT:
                self.proxy = FaultProxy(FAULT, self.ports.values()).start()
                self.exec_host = POOL_HOST
            return self
        if not BIN:
            raise HarnessError("SPARKRELAY_BIN is not set (set SR_IT_DIRECT=1 to check the "
                               "test logic without the binary)")
        if not os.access(BIN, os.X_OK):
            raise HarnessError("SPARKRELAY_BIN=%s is not an executable file" % BIN)
        self.start_relay(relay_timeout)
        self.start_tunnel(lease_timeout)
        return self

    def start_relay(self, timeout=15.0):
        self.relay_port = free_port()
        cfg = relay_config(self.relay_port, self.pool_base, self.relay_overrides)
        self.relay_cfg_path = write_config(os.path.join(self.dir, "relay.json"), cfg)
        self.relay_cfg = cfg
        self.relay = Proc("relay", [BIN, "relay", "--config", self.relay_cfg_path], self.dir)
        self.relay.start()
        self.relay.wait_ready(lambda: _accepts("127.0.0.1", self.relay_port), timeout,
                              "listening on 127.0.0.1:%d" % self.relay_port)

    def start_tunnel(self, timeout=20.0):
        cfg = tunnel_config(self.relay_port, self.dir, self.tunnel_overrides)
        self.tunnel_cfg_path = write_config(os.path.join(self.dir, "tunnel.json"), cfg)
        self.tunnel_cfg = cfg
        self.spark_json = cfg["tunnel"]["spark_json"]
        self.spark_conf = cfg["tunnel"]["spark_conf"]
        self.tunnel = Proc("tunnel", [BIN, "tunnel", "--config", self.tunnel_cfg_path], self.dir)
        self.tunnel.start()
        self.lease = self.tunnel.wait_ready(self._lease_ready, timeout,
                                            "lease (%s)" % self.spark_json)
        try:
            self.exec_host = self.lease["host"]
            self.ports = {"driver": int(self.lease["ports"]["driver"]),
                          "blockManager": int(self.lease["ports"]["blockManager"])}
        except (KeyError, TypeError, ValueError) as e:
            raise HarnessError("spark_json lacks host/ports: %r (%r)" % (self.lease, e))

    def _lease_ready(self):
        j = read_spark_json(self.spark_json)
        if isinstance(j, dict) and "ports" in j:
            return j
        return None

    def start_driver(self, handlers=None, default=h_echo, rcvbuf=None, **kw):
        self.driver = Driver(self.ports, handlers=handlers, default=default, rcvbuf=rcvbuf, **kw)
        self.driver.start()
        return self.driver

    def executor(self, port_name="driver", timeout=10.0, **kw):
        """Connect an executor to a leased port (tracked; closed at stop)."""
        s = connect(self.exec_host, self.ports[port_name], timeout=timeout, **kw)
        self.execs.append(s)
        return s

    def close_executors(self):
        for s in self.execs:
            try:
                s.close()
            except OSError:
                pass
        self.execs = []

    def procs(self):
        return [p for p in (self.tunnel, self.relay) if p is not None]

    def problems_alive(self):
        out = []
        for p in self.procs():
            if p.p is not None and not p.alive():
                out.append("%s died during the test (rc=%s)" % (p.name, p.p.returncode))
        return out

    def stop(self):
        """Tear everything down; return a list of contract problems found on
        the way (processes died early, did not exit 0 on SIGTERM, sanitizer
        reports)."""
        problems = self.problems_alive()
        self.close_executors()
        if self.driver is not None:
            self.driver.stop()
        if self.proxy is not None:
            self.proxy.stop()
            if self.proxy.errors:
                problems.append("FaultProxy errors: %s" % self.proxy.errors[:3])
            self.proxy = None
        for p, t in ((self.tunnel, 15.0), (self.relay, 20.0)):
            if p is None or p.p is None:
                continue
            problems += p.stop_problems(t, ended_ok=True, dump=False)
            # a sanitizer report is not in the log format; it is reported already
            if not p.sanitizer_lines():
                bad = p.malformed_lines()
                if bad:
                    problems.append("%s: %d stderr lines not in the log format, first: %r" %
                                    (p.name, len(bad), bad[0][:160]))
        return problems

    def kill(self):
        for p in self.procs():
            p.kill()
        if self.driver is not None:
            self.driver.stop()
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def dump_logs(self):
        for p in self.procs():
            p.dump()
        sys.stderr.write("(test dir %s)\n" % self.dir)


def _accepts(host, port):
    try:
        s = socket.create_connection((host, port), timeout=0.5)
    except OSError:
        return False
    s.close()
    return True


# --------------------------------------------------------------------------
# unittest glue.

def _test_failed(tc):
    """Whether the running test has failed so far (for tearDown/cleanups).
    Python 3.11 resets _outcome.success for each part (setUp, test,
    tearDown), so look at what the result recorded for this test."""
    outcome = getattr(tc, "_outcome", None)
    if outcome is None:
        return False
    result = getattr(outcome, "result", None)
    if result is not None:
        for t, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])):
            if t is tc or getattr(t, "test_case", None) is tc:
                return True
    return not getattr(outcome, "success", True)


class ITCase(unittest.TestCase):
    """Base class: a fresh relay+sidecar per test (nothing in DIRECT mode).
    Teardown fails the test if a process died, did not exit 0 on SIGTERM, or
    printed a sanitizer report; logs are dumped whenever the test failed."""

    relay_overrides = None
    tunnel_overrides = None

    def setUp(self):
        self.stack = Stack(self.id(), self.relay_overrides, self.tunnel_overrides)
        self.addCleanup(self.stack.kill)
        try:
            self.stack.start()
            self.prepare()
        except BaseException:
            global _any_failure
            _any_failure = True
            self.stack.dump_logs()
            raise

    def prepare(self):
        """Per-class setup after the stack is up (a failure here dumps the logs)."""

    def tearDown(self):
        global _any_failure
        failed = _test_failed(self)
        problems = self.stack.stop()
        if failed or problems:
            _any_failure = True
            self.stack.dump_logs()
        if problems:
            self.fail("; ".join(problems))

    # convenience
    def assertExact(self, what, got_n, got_sha, want_n, want_sha):
        if got_n != want_n or got_sha != want_sha:
            self.fail("%s: got %d bytes sha256 %s, want %d bytes sha256 %s" %
                      (what, got_n, (got_sha or "-")[:16], want_n, (want_sha or "-")[:16]))


def main():
    raise_nofile()
    _register_exit_hooks()
    mode = "DIRECT (no relay)" if DIRECT else "relay: %s" % BIN
    if FAULT:
        mode += ", through FaultProxy with fault=%s" % FAULT
    elif _fault_env:
        log("SR_IT_SELFTEST_FAULT/CORRUPT ignored outside DIRECT mode")
    log("mode: %s; RLIMIT_NOFILE=%s" % (mode, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    threading.Thread(target=_watchdog, args=(FILE_TIMEOUT,), daemon=True,
                     name="watchdog").start()
    prog = unittest.main(verbosity=2, exit=False)
    ok = prog.result.wasSuccessful()
    if not ok:
        global _any_failure
        _any_failure = True
    _kill_all_procs()
    _cleanup_root()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if ok else 1)
