"""A real etcd for integration tests (Python 3.11, standard library only).

Debian's etcd-server (/usr/bin/etcd, 3.4) runs as a single member on
loopback ports picked at start, in a folder under the harness's temporary
directory, optionally with TLS and client certificates required:

    import etcd as E
    e = E.Etcd("leases", tls=True).start()     # healthy when this returns
    e.url                                     # https://127.0.0.1:PORT, for relay configs
    e.ca, e.client_cert, e.client_key          # what a client needs with tls
    e.put(b"k", b"v"); e.get(b"k"); e.get_prefix(b"k")
    e.pause(); e.resume()                      # SIGSTOP/SIGCONT: briefly unavailable
    e.kill(); e.restart()                      # SIGKILL, then the same data and ports
    e.stop()                                   # SIGTERM; the data folder is removed

The process is a harness.Proc: it dies with the test process (PDEATHSIG)
and the watchdog kills it. A small reaper process removes the data folder
(about 60 MB of preallocated log) however the test process ends; the log
(etcd.log) stays with the harness's temporary directory.
"""

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import harness as H

ETCD_BIN = os.environ.get("SR_IT_ETCD", "etcd")
HEALTHY_WITHIN = 20.0

_REAPER = r"""
import os, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
pid = 0
for line in sys.stdin:
    pid = int(line)
if pid > 0:
    for s in (signal.SIGKILL, signal.SIGCONT):
        try:
            os.kill(pid, s)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.02)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""

_server_cert_lock = threading.Lock()
_server_cert = None


def installed():
    return shutil.which(ETCD_BIN) is not None


def server_cert():
    """A server certificate from harness.certs()'s CA with serverAuth and
    clientAuth: etcd's own gateway connects to etcd with it as a client
    certificate, which --client-cert-auth checks."""
    global _server_cert
    with _server_cert_lock:
        if _server_cert is None:
            c = H.certs()
            H._make_leaf(c.dir, "etcd", "etcd", "ca",
                         ["extendedKeyUsage=serverAuth,clientAuth",
                          "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,"
                          "IP:127.0.0.3,IP:127.0.0.4,IP:::1"])
            _server_cert = (os.path.join(c.dir, "etcd.pem"), os.path.join(c.dir, "etcd.key"))
        return _server_cert


def b64(b):
    return base64.b64encode(b).decode()


def unb64(s):
    return base64.b64decode(s, validate=True)


def prefix_end(prefix):
    """The range end of every key starting with prefix (etcd's rule)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\0"
    p[-1] += 1
    return bytes(p)


class EtcdError(Exception):
    pass


class Etcd:
    def __init__(self, name="etcd", tls=False, host="127.0.0.1", progress_interval=None):
        self.name = name
        self.tls = tls
        self.host = host
        self.progress_interval = progress_interval
        self.dir = None
        self.data = None
        self.port = self.peer_port = None
        self.proc = None
        self.paused = False
        self._reaper = None
        c = H.certs() if tls else None
        self.ca = c.ca if tls else None
        self.client_cert = c.client_cert if tls else None
        self.client_key = c.client_key if tls else None
        self._ctx = None
        self.initial_cluster = None  # EtcdCluster sets it: "name=peer,..."

    # ---- process ---------------------------------------------------------

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http", self.host, self.port)

    def _argv(self):
        peer = "http://%s:%d" % (self.host, self.peer_port)
        argv = [ETCD_BIN, "--name=" + self.name, "--data-dir", self.data,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.initial_cluster or "%s=%s" % (self.name, peer),
                "--logger=zap", "--log-outputs=stderr"]
        if self.tls:
            cert, key = server_cert()
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", self.ca,
                     "--client-cert-auth"]
        if self.progress_interval:
            argv += ["--experimental-watch-progress-notify-interval", self.progress_interval]
        return argv

    def _spawn(self):
        self.proc = H.Proc(self.name, self._argv(), self.dir).start()
        self.paused = False
        self._tell_reaper(self.proc.p.pid)

    def _tell_reaper(self, pid):
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.stdin.write(("%d\n" % pid).encode())
            self._reaper.stdin.flush()

    def _wait_healthy(self):
        """True when healthy, False if etcd exited first."""
        deadline = time.monotonic() + HEALTHY_WITHIN
        while time.monotonic() < deadline:
            if not self.proc.alive():
                self._tell_reaper(0)
                return False
            if self.healthy():
                return True
            time.sleep(0.05)
        self.proc.dump()
        raise H.HarnessError("%s at %s: not healthy within %.0f s" %
                             (self.name, self.url, HEALTHY_WITHIN))

    def _prepare(self):
        if not installed():
            raise H.HarnessError("no %s in PATH: install Debian's etcd-server (./dev deps)"
                                 % ETCD_BIN)
        self.dir = H.new_dir(self.name)
        self.data = os.path.join(self.dir, "data")
        self._reaper = subprocess.Popen([sys.executable, "-c", _REAPER, self.data],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        start_new_session=True)

    def start(self):
        self._prepare()
        # Free when picked; another test may take them before etcd binds,
        # which makes etcd exit: then another pair is tried.
        for _ in range(3):
            self.port = H.free_port(self.host)
            self.peer_port = H.free_port(self.host)
            if self.peer_port == self.port:
                continue
            self._spawn()
            if self._wait_healthy():
                return self
            shutil.rmtree(self.data, ignore_errors=True)
        self.proc.dump()
        raise H.HarnessError("%s exited before it was healthy, three times" % self.name)

    def pause(self):
        """SIGSTOP, returning once every thread has stopped: the signal stops
        the threads asynchronously, and on a loaded machine one may still
        answer a request for a few milliseconds."""
        self.proc.signal(signal.SIGSTOP)
        self.paused = True
        pid = self.proc.p.pid
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                states = []
                for tid in os.listdir("/proc/%d/task" % pid):
                    with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                return
            if states and all(st in ("T", "t") for st in states):
                return
            time.sleep(0.01)
        raise H.HarnessError("%s: not stopped 5 s after SIGSTOP" % self.name)

    def resume(self):
        self.proc.signal(signal.SIGCONT)
        self.paused = False

    def kill(self):
        """SIGKILL; the data stays for restart()."""
        if self.proc is not None:
            self.proc.signal(signal.SIGCONT)
            self.proc.kill()
            self._tell_reaper(0)
        self.paused = False

    def restart(self):
        """The same data, name and ports; healthy when this returns."""
        if self.proc is not None and self.proc.alive():
            raise H.HarnessError("%s: restart while it runs" % self.name)
        self._spawn()
        if not self._wait_healthy():
            self.proc.dump()
            raise H.HarnessError("%s exited at restart on port %d" % (self.name, self.port))
        return self

    def stop(self):
        """SIGTERM (SIGKILL after 10 s), then the data folder is removed.
        Returns etcd's exit status: -SIGTERM after a clean shutdown (etcd
        ends itself with the signal it got), None if it had to be killed.
        Safe twice."""
        rc = None
        if self.proc is not None:
            if self.paused:
                self.resume()
            rc = self.proc.stop(timeout=10.0)
        if self._reaper is not None:
            self._tell_reaper(0)
            self._reaper.stdin.close()
            try:
                self._reaper.wait(10)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
            self._reaper = None
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)
        return rc

    def log_text(self):
        return self.proc.log_text() if self.proc else ""

    # ---- the v3 JSON gateway ---------------------------------------------

    def _context(self):
        if self.tls and self._ctx is None:
            ctx = ssl.create_default_context(cafile=self.ca)
            ctx.load_cert_chain(self.client_cert, self.client_key)
            self._ctx = ctx
        return self._ctx

    def request(self, path, obj=None, timeout=5.0):
        """POST obj as JSON (GET when None) to the gateway; returns (status,
        decoded JSON or None)."""
        data = None if obj is None else json.dumps(obj).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._context()) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def call(self, path, obj):
        """request() that raises EtcdError unless etcd answered 200."""
        status, ans = self.request(path, obj)
        if status != 200 or not isinstance(ans, dict) or "error" in ans:
            raise EtcdError("%s %s: HTTP %d %r" % (self.name, path, status, ans))
        return ans

    def healthy(self):
        try:
            status, ans = self.request("/health", timeout=1.0)
        except (OSError, ssl.SSLError):
            return False
        return status == 200 and isinstance(ans, dict) and ans.get("health") == "true"

    def put(self, key, value, lease=0):
        """Returns the revision of the put."""
        req = {"key": b64(key), "value": b64(value)}
        if lease:
            req["lease"] = str(lease)
        return int(self.call("/v3/kv/put", req)["header"]["revision"])

    def _kvs(self, req):
        ans = self.call("/v3/kv/range", req)
        return [(unb64(kv["key"]), unb64(kv.get("value", "")), kv) for kv in ans.get("kvs", [])]

    def get(self, key):
        """The value, or None."""
        kvs = self._kvs({"key": b64(key)})
        return kvs[0][1] if kvs else None

    def get_prefix(self, prefix):
        """[(key, value, raw kv dict)] of every key under prefix, in key order."""
        return self._kvs({"key": b64(prefix), "range_end": b64(prefix_end(prefix))})

    def delete(self, key, prefix=False):
        req = {"key": b64(key)}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        return int(self.call("/v3/kv/deleterange", req).get("deleted", "0"))

    def revision(self):
        return int(self.call("/v3/kv/range", {"key": b64(b"\0")})["header"]["revision"])

    def compact(self, revision):
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def grant(self, ttl):
        """A new lease: (id, ttl)."""
        ans = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(ans["ID"]), int(ans["TTL"])

    def revoke(self, lease):
        self.call("/v3/lease/revoke", {"ID": str(lease)})


class EtcdCluster:
    """n members of one cluster on loopback (plain HTTP). members[i] is an
    Etcd: pause(), resume(), url and the client calls work on each."""

    def __init__(self, n=3, name="etcdc", progress_interval=None):
        self.members = [Etcd("%s%d" % (name, i), progress_interval=progress_interval)
                        for i in range(n)]

    def start(self):
        ports = set()
        for m in self.members:
            m._prepare()
            while True:
                m.port, m.peer_port = H.free_port(m.host), H.free_port(m.host)
                if m.port != m.peer_port and not ports & {m.port, m.peer_port}:
                    break
            ports |= {m.port, m.peer_port}
        cluster = ",".join("%s=http://%s:%d" % (m.name, m.host, m.peer_port)
                           for m in self.members)
        for m in self.members:
            m.initial_cluster = cluster
            m._spawn()
        for m in self.members:
            if not m._wait_healthy():
                m.proc.dump()
                raise H.HarnessError("%s exited before the cluster was healthy" % m.name)
        return self

    def leader(self, timeout=10.0):
        """The member that leads now (by /v3/maintenance/status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                try:
                    st = m.call("/v3/maintenance/status", {})
                except Exception:  # noqa: BLE001 (a member between states)
                    continue
                if st.get("leader") and st.get("leader") == st["header"].get("member_id"):
                    return m
            time.sleep(0.05)
        raise H.HarnessError("no etcd leader within %.0f s" % timeout)

    def stop(self):
        for m in self.members:
            m.stop()
