"""Helpers for the lifecycle, security and bad-input tests, on top of harness.py.

What harness.ITCase does not cover and these tests need:
  - sidecars started, killed, stopped and restarted by the test (XCase keeps
    every process it ever started and checks all their logs at teardown);
  - several sidecars on one relay, each with its own directory and config;
  - extra client certificates (CN sidecar-a / sidecar-b) from the test CA;
  - bounded polling on logs, files and ports, and one-shot echo exchanges.
"""

import errno
import os
import signal
import sys
import socket
import time
import unittest

import harness as H
from harness import KiB


# --------------------------------------------------------------------------
# Polling (always bounded).

def wait_for(pred, timeout, interval=0.02):
    """Poll pred() until it returns a true value (returned) or timeout (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def log_count(proc, needle):
    return len(proc.grep(needle)) if proc is not None else 0


def wait_log(proc, needle, timeout, count=1):
    """Wait until proc's log holds at least count lines containing needle;
    returns those lines or None."""
    def check():
        lines = proc.grep(needle)
        return lines if len(lines) >= count else None
    return wait_for(check, timeout)


# --------------------------------------------------------------------------
# Ports and connections.

def connect_result(host, port, timeout=2.0):
    """'refused' | 'accepted' | 'timeout' | 'error:<errno>' for one TCP connect."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        # accepted, then reset before connect() returned (seen on gVisor)
        return "reset"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error:%s" % errno.errorcode.get(e.errno, e.errno)
    finally:
        s.close()


def closed_within(s, timeout):
    """Read from s (discarding) until EOF or reset. Returns ('eof'|'reset'|
    'timeout', seconds, bytes received)."""
    t0 = time.monotonic()
    got = 0
    deadline = t0 + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return ("timeout", time.monotonic() - t0, got)
            s.settimeout(left)
            b = s.recv(64 * KiB)
            if not b:
                return ("eof", time.monotonic() - t0, got)
            got += len(b)
    except (ConnectionResetError, BrokenPipeError):
        return ("reset", time.monotonic() - t0, got)
    except socket.timeout:
        return ("timeout", time.monotonic() - t0, got)
    except OSError as e:
        if getattr(e, "errno", None) in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return ("reset", time.monotonic() - t0, got)
        # ssl.SSLError and friends: the peer broke the TLS session off
        return ("reset", time.monotonic() - t0, got)


def echo_once(host, port, seed=1, size=4 * KiB, timeout=10.0):
    """A fresh executor connection: send a distinct message, expect it echoed
    byte for byte, half-close, expect EOF. Returns None or a problem string."""
    m = H.message(seed, size, seed=seed)
    try:
        s = H.connect(host, port, timeout=timeout)
    except OSError as e:
        return "connect to %s:%d failed: %r" % (host, port, e)
    try:
        s.sendall(m)
        end, got, _, data = H.recv_exact(s, size)
        if end != "ok" or data != m:
            return "echo on %s:%d: %s after %d of %d bytes%s" % (
                host, port, end, got, size, "" if end != "ok" else " (bytes differ)")
        s.shutdown(socket.SHUT_WR)
        end, extra, _ = H.recv_to_eof(s, 1 * KiB)
        if end != "eof" or extra:
            return "echo on %s:%d: after half-close got %s with %d extra bytes" % (
                host, port, end, extra)
        return None
    except OSError as e:
        return "echo on %s:%d failed: %r" % (host, port, e)
    finally:
        s.close()


class Echoer:
    """A long-lived executor connection through a lease whose exchanges prove
    that a tunnel keeps working while something else happens."""

    def __init__(self, host, port, seed=77):
        self.s = H.connect(host, port, timeout=10)
        self.n = 0
        self.seed = seed

    def check(self, size=4 * KiB):
        self.n += 1
        m = H.message(self.n, size, seed=self.seed)
        try:
            self.s.sendall(m)
            end, got, _, data = H.recv_exact(self.s, size)
        except OSError as e:
            return "long-lived echo #%d failed: %r" % (self.n, e)
        if end != "ok" or data != m:
            return "long-lived echo #%d: %s after %d bytes%s" % (
                self.n, end, got, " (bytes differ)" if end == "ok" else "")
        return None

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# Extra certificates from the harness CA.

_extra_certs = {}


def client_cert(cn):
    """(cert, key) for a client certificate with this CN, signed by the test CA."""
    if cn in _extra_certs:
        return _extra_certs[cn]
    c = H.certs()
    name = "client-" + "".join(ch if ch.isalnum() else "_" for ch in cn)
    H._make_leaf(c.dir, name, cn, "ca", ["extendedKeyUsage=clientAuth"])
    pair = (os.path.join(c.dir, name + ".pem"), os.path.join(c.dir, name + ".key"))
    _extra_certs[cn] = pair
    return pair


# --------------------------------------------------------------------------
# Sidecars under the test's control.

class Sidecar:
    """One `sparkrelay tunnel` with its own directory, config, state file and
    spark_json. Restarts reuse the config and the state file; each run gets
    its own log file (name, name-2, ...)."""

    def __init__(self, case, name, relay_port, overrides=None):
        self.case = case
        self.name = name
        self.dir = os.path.join(case.stack.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        cfg = H.tunnel_config(relay_port, self.dir, overrides)
        self.cfg = cfg
        self.cfg_path = H.write_config(os.path.join(self.dir, "tunnel.json"), cfg)
        self.spark_json = cfg["tunnel"]["spark_json"]
        self.state_file = cfg["tunnel"]["state_file"]
        self.runs = 0
        self.proc = None

    def start(self):
        self.runs += 1
        pname = self.name if self.runs == 1 else "%s-%d" % (self.name, self.runs)
        self.proc = H.Proc(pname, [H.BIN, "tunnel", "--config", self.cfg_path], self.dir)
        self.proc.start()
        self.case.track(self.proc)
        return self

    def lease(self):
        j = H.read_spark_json(self.spark_json)
        return j if isinstance(j, dict) and "ports" in j else None

    def wait_lease(self, timeout=15.0):
        j = wait_for(self.lease, timeout)
        if not j:
            raise AssertionError("%s: no lease in %s within %.0f s" %
                                 (self.name, self.spark_json, timeout))
        return j

    def ports(self):
        j = self.lease()
        return None if j is None else {k: int(v) for k, v in j["ports"].items()}

    def sigkill(self):
        """SIGKILL (a crash); the process counts as ended on purpose."""
        p = self.proc
        p.p.send_signal(signal.SIGKILL)
        p.p.wait(10)
        self.case.retire(p)

    def sigterm(self, timeout=10.0):
        """SIGTERM; returns (exit code or None if it had to be killed, seconds)."""
        p = self.proc
        t0 = time.monotonic()
        rc = p.stop(timeout)
        took = time.monotonic() - t0
        self.case.retire(p)
        return rc, took


# --------------------------------------------------------------------------
# Test case base.

class XCase(unittest.TestCase):
    """A relay per test and (unless auto_tunnel is False) the stack's sidecar.

    Every process a test starts is tracked. At teardown: processes still
    running get SIGTERM and must exit 0; a process that died without the test
    ending it on purpose (retire) is a failure; and no log of any process may
    hold a sanitizer report. Logs are dumped whenever the test failed."""

    relay_overrides = None
    tunnel_overrides = None
    auto_tunnel = True

    def setUp(self):
        if H.DIRECT:
            self.skipTest("needs the sparkrelay binary (not meaningful in SR_IT_DIRECT mode)")
        if not H.BIN or not os.access(H.BIN, os.X_OK):
            raise H.HarnessError("SPARKRELAY_BIN is not set to an executable")
        self.stack = H.Stack(self.id(), self.relay_overrides, self.tunnel_overrides)
        self.tracked = []   # every Proc ever started (for log checks and dumps)
        self.retired = set()  # ids of procs that ended on purpose
        self.addCleanup(self._kill_everything)
        try:
            self.stack.pool_base = H.pick_pool_base()
            self.stack.start_relay()
            self.track(self.stack.relay)
            if self.auto_tunnel:
                self.stack.start_tunnel()
                self.track(self.stack.tunnel)
            self.prepare()
        except BaseException:
            H._any_failure = True
            self.dump_all()
            raise

    def prepare(self):
        pass

    # -- process bookkeeping
    def track(self, p):
        if p not in self.tracked:
            self.tracked.append(p)

    def retire(self, p):
        self.retired.add(id(p))
        p._forget()

    @property
    def relay(self):
        return self.stack.relay

    def relay_port(self):
        return self.stack.relay_port

    def sidecar(self, name, overrides=None):
        return Sidecar(self, name, self.stack.relay_port, overrides)

    def stack_sidecar_sigkill(self):
        """SIGKILL the stack's own sidecar (started by setUp)."""
        p = self.stack.tunnel
        p.p.send_signal(signal.SIGKILL)
        p.p.wait(10)
        self.retire(p)

    def restart_stack_sidecar(self, name):
        """Start the stack's sidecar again with the same config (new log name)."""
        p = H.Proc(name, [H.BIN, "tunnel", "--config", self.stack.tunnel_cfg_path],
                   self.stack.dir)
        p.start()
        self.track(p)
        self.stack.tunnel = p
        return p

    def assert_relay_alive(self):
        self.assertTrue(self.relay.alive(), "relay exited (rc=%s)" %
                        (self.relay.p.returncode if self.relay.p else None))

    def sanitizer_problems(self):
        out = []
        for p in self.tracked:
            san = p.sanitizer_lines()
            if san:
                out.append("%s sanitizer report: %s" % (p.name, san[0].strip()))
        return out

    def assert_no_sanitizer_reports(self):
        probs = self.sanitizer_problems()
        self.assertFalse(probs, "; ".join(probs))

    def assertExact(self, what, got_n, got_sha, want_n, want_sha):
        if got_n != want_n or got_sha != want_sha:
            self.fail("%s: got %d bytes sha256 %s, want %d bytes sha256 %s" %
                      (what, got_n, (got_sha or "-")[:16], want_n, (want_sha or "-")[:16]))

    # -- teardown
    def dump_all(self):
        for p in self.tracked:
            p.dump()
        sys.stderr.write("(test dir %s)\n" % self.stack.dir)

    def _kill_everything(self):
        for p in self.tracked:
            if p.alive():
                try:
                    p.p.send_signal(signal.SIGCONT)
                except OSError:
                    pass
            p.kill()
        if self.stack.driver is not None:
            self.stack.driver.stop()

    def tearDown(self):
        failed = H._test_failed(self)
        problems = []
        for p in self.tracked:
            if p.p is not None and not p.alive() and id(p) not in self.retired:
                problems.append("%s died during the test (rc=%s)" % (p.name, p.p.returncode))
        self.stack.close_executors()
        if self.stack.driver is not None:
            self.stack.driver.stop()
        # sidecars first, the relay last
        order = [p for p in self.tracked if p is not self.stack.relay] + [self.stack.relay]
        for p in order:
            if p is not None:
                problems += p.stop_problems(20.0, ended_ok=True, dump=False, cont=True)
        if failed or problems:
            H._any_failure = True
            self.dump_all()
        if problems:
            self.fail("; ".join(problems))
