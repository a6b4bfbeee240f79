"""Helpers shared by the fleet tests (test_fleet, test_twotun, test_etcd_harness).

Standard library only, like the harness they build on."""
import os
import re
import socket
import threading
import time
import unittest
import urllib.error
import urllib.request

import etcd as E
import harness as H

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
POOL = 64


def wait_for(check, timeout, what):
    """check() until it returns something true (which is returned); fail the
    test naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("no %s within %.0f s" % (what, timeout))
        time.sleep(0.05)


def echo_exchange(s, seed, n, timeout=30.0):
    """Send n pattern bytes on s and read the echo: (ok, message)."""
    s.settimeout(timeout)
    snd = H.Sender(s, seed, n)
    snd.start()
    end, got, sha, _ = H.recv_exact(s, n)
    err = snd.finish(timeout)
    if err:
        return False, err
    want = H.pattern_sha(seed, n)
    if end != "ok" or sha != want or snd.sha != want:
        return False, "echo %s: %d of %d bytes, sha %s want %s" % (end, got, n, sha[:12],
                                                                   want[:12])
    return True, ""


def admin_port(proc):
    """The relay's admin API or the sidecar's status API, from its log."""
    m = re.search(r"(?:admin|status) 127\.0\.0\.1:(\d+)\] (?:admin|status) API listening",
                  proc.log_text())
    return int(m.group(1)) if m else None


def admin_get(proc, path):
    port = admin_port(proc)
    body = urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5).read()
    return body.decode()


def readyz(proc):
    """(status, text) of GET /readyz on proc's admin API."""
    try:
        return 200, admin_get(proc, "/readyz").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


class FleetCase(unittest.TestCase):
    """Relays of one fleet on HOSTS sharing a real etcd started per test, a pool of
    POOL ports from pool_base; tearDown stops them (and reports exit codes and
    sanitizer lines). Subclasses start their sidecars."""

    ETCD_NAME = "fleet"
    ETCD_PROGRESS = None  # etcd's watch progress notification interval ("1s"); None: its own

    def setUp(self):
        if not E.installed():
            self.fail("etcd is not installed: ./dev deps installs Debian's etcd-server")
        self.dir = H.new_dir(self.id())
        self.etcd = E.Etcd(self.ETCD_NAME, progress_interval=self.ETCD_PROGRESS).start()
        self.procs = []
        self.relays = {}
        self.secret = os.path.join(self.dir, "fleet.secret")
        with open(self.secret, "wb") as f:
            f.write(os.urandom(48))
        self.pool_base = H.pick_pool_base(POOL, hosts=HOSTS + (H.DRIVER_HOST,))
        self.driver = None

    def tearDown(self):
        failed = H._test_failed(self)
        problems = []
        if self.driver is not None:
            self.driver.stop()
        for p in reversed(self.procs):
            problems += p.stop_problems(20.0, ended_ok=True, dump=False)
        if failed or problems:
            for p in self.procs:
                p.dump(80)
        self.etcd.stop()
        if problems:
            self.fail("; ".join(problems))

    def start_relay(self, name, host, port=None, wait=True, overrides=None):
        """A fleet relay with id `name` on host (port: a free one unless given);
        waits for its registration and first read of the lease table."""
        port = port or H.free_port(host)
        over = {
            "relay": {
                "listen": "%s:%d" % (host, port),
                "pool": {"bind": host, "advertise": host, "port_min": self.pool_base,
                         "port_max": self.pool_base + POOL - 1},
                "lease": {"grace_s": 60, "pending_timeout_ms": 5000},
                "fleet": {"etcd": [self.etcd.url], "id": name,
                          "peer_listen": "%s:0" % host, "secret_file": self.secret,
                          "ttl_s": 10},
                "handover_socket": None,
            }
        }
        H.deep_merge(over, overrides)
        cfg = H.relay_config(port, self.pool_base, over)
        path = H.write_config(os.path.join(self.dir, name + ".json"), cfg)
        p = H.Proc(name + "-%d" % len(self.procs), [H.BIN, "relay", "--config", path],
                   self.dir).start()
        self.procs.append(p)
        p.host, p.port, p.fid = host, port, name
        if wait:
            p.wait_ready(lambda: p.grep("registered in the fleet") and
                         p.grep("lease table read from etcd"), 20, "fleet registration")
        self.relays[name] = p
        return p

    def lease_of(self, sc, timeout=20, not_before=0.0):
        """The sidecar's Spark JSON once it names a lease (written after not_before)."""
        def ready():
            try:
                if os.path.getmtime(sc.spark_json) < not_before:
                    return None
            except OSError:
                return None
            j = H.read_spark_json(sc.spark_json)
            return j if isinstance(j, dict) and j.get("lease") and "ports" in j else None
        return sc.wait_ready(ready, timeout, "lease")

    def start_driver(self, lease):
        """A driver on the driver port of lease (a Spark JSON): the port."""
        port = int(lease["ports"]["driver"])
        self.driver = H.Driver({"driver": port})
        self.driver.start()
        return port


class FreezingProxy:
    """TCP proxy 127.0.0.1:port -> target; freeze() stops every connection
    through it now (nothing more read, written or closed either way): a
    path that went silent, as a dead NAT entry or a cut cable leaves it.
    Connections made later pass normally. With mark, connections whose
    client sent those bytes are marked, and freeze(marked_only=True) stops
    those alone (an etcd watch: "POST /v3/watch"). fail_next(marker, n)
    answers the next n requests whose bytes hold marker with etcd's error
    for an unavailable server (HTTP 503, code 14) and closes that
    connection, instead of passing them on. delay_next(marker, seconds)
    passes the next request holding marker on after seconds (delaying()
    is true meanwhile)."""

    def __init__(self, target, mark=None):
        self.target = target
        self.mark = mark
        self.fail_marker, self.fail_left, self.failed = None, 0, 0
        self.delay_marker, self.delay_s, self.delayed = None, 0.0, 0
        self.delay_busy = threading.Event()
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.pairs = []
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.ls.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                a, _ = self.ls.accept()
            except OSError:
                continue
            try:
                b = socket.create_connection(self.target, timeout=5)
            except OSError:
                a.close()
                continue
            pair = {"socks": (a, b), "frozen": False, "marked": False}
            with self.lock:
                self.pairs.append(pair)
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    def _pump(self, pair, src, dst):
        try:
            src.settimeout(0.1)
        except OSError:
            return  # closed by the other direction (fail_next)
        while not self.stop_ev.is_set():
            if pair["frozen"]:
                time.sleep(0.1)
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if pair["frozen"]:
                continue  # read before the freeze: dropped, as on a dead path
            if self.mark and src is pair["socks"][0] and self.mark in data:
                pair["marked"] = True
            if src is pair["socks"][0] and data and self._delay(data):
                self.delay_busy.set()
                time.sleep(self.delay_s)
                self.delay_busy.clear()
            if src is pair["socks"][0] and self._fail(data):
                body = (b'{"error":"etcdserver: unavailable (test)","code":14,'
                        b'"message":"etcdserver: unavailable (test)"}')
                try:
                    src.sendall(b"HTTP/1.1 503 Service Unavailable\r\n"
                                b"Content-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                                + body)
                except OSError:
                    pass
                for x in pair["socks"]:
                    x.close()
                return
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def freeze(self, marked_only=False):
        with self.lock:
            frozen = [p for p in self.pairs if p["marked"] or not marked_only]
            for pair in frozen:
                pair["frozen"] = True
            return len(frozen)

    def cut(self, marked_only=False):
        """Close the connections freeze() would stop (the client sees its
        connection end); the number closed."""
        with self.lock:
            cut = [p for p in self.pairs if p["marked"] or not marked_only]
            for pair in cut:
                pair["frozen"] = True
                for x in pair["socks"]:
                    x.close()
            return len(cut)

    def fail_next(self, marker, n=1):
        with self.lock:
            self.fail_marker, self.fail_left = marker, n

    def delay_next(self, marker, seconds):
        with self.lock:
            self.delay_marker, self.delay_s = marker, seconds

    def _delay(self, data):
        with self.lock:
            if self.delay_marker is None or self.delay_marker not in data:
                return False
            self.delay_marker = None
            self.delayed += 1
            return True

    def delaying(self):
        return self.delay_busy.is_set()

    def _fail(self, data):
        with self.lock:
            if not self.fail_left or self.fail_marker not in data:
                return False
            self.fail_left -= 1
            self.failed += 1
            return True

    def marked(self):
        with self.lock:
            return sum(1 for p in self.pairs if p["marked"])

    def close(self):
        self.stop_ev.set()
        self.ls.close()
        with self.lock:
            for pair in self.pairs:
                for x in pair["socks"]:
                    x.close()
