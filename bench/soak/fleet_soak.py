#!/usr/bin/env python3
"""Bounded randomized soak of a sparkrelay fleet (three relays, two sidecars
with two tunnels each).

Setup (the integration harness, all on loopback): one etcd (tests/
integration/etcd.py), relays relay-a/b/c on fleet_support.HOSTS sharing it
(FleetCase.start_relay), sidecars sc1 (relays a,b,c) and sc2 (relays b,c,a)
with tunnel.connections 2 (test_twotun.FleetTwoTunnelsTest.start_sidecar),
and a stand-in driver serving both leases' driver and blockManager ports.

Load, spread over every path = (lease, lease port, entry relay): 2 leases x
2 ports x 3 relays = 12 paths:

  rpc    request/response connections (soak.SoakRpc = test_resume.RpcLoad:
         every echo checked byte for byte), --rpc of them, round robin over
         the paths; replaced by a fresh group after each relay kill/stop;
  bulk   workers running paced duplex transfers one after another on random
         paths (soak.py's counter pattern, checked as it arrives at both
         ends, then a clean end both ways);
  churn  workers opening short echo connections on random paths.

Cuts at seeded random intervals (--gap, default 3-8 s, so the fleet settles):

  kill     SIGKILL of one relay; new connections through the two others are
           probed at once; after 0.5-3 s the relay is restarted with the same
           id and address;
  stop     SIGSTOP of one relay for 1-6 s (--stop), then SIGCONT;
  ssk      `ss -K` of one tunnel TCP connection of one sidecar (its socket);
  delkey   deletion of /sparkrelay/relays/<id> in etcd: the relay must write
           it back within 5 s;
  etcdstop SIGSTOP of etcd for 1-3 s, then SIGCONT.

What must follow (else a failure):
  - each sidecar's lease id and ports (its Spark JSON) never change;
  - every connection ends as planned, byte-exact, unless its path may have
    crossed a killed or stopped relay: its entry relay was cut, or the cut
    relay held a tunnel of its lease (it may have been carried there) and it
    was open during the cut. Those may end by reset/EOF (never wrong bytes,
    never a timeout): counted as expected, by cut relay;
  - after each cut (after the restart / SIGCONT), a new connection to each
    lease port through each live relay echoes within --probe-bound s (5);
    after a relay kill the same through the two survivors, timed from the
    kill (the "new connections within about a second" promise);
  - request/response connections not exposed to the cut answer again within
    10 s of it;
  - processes alive (the killed relay aside), no sanitizer line or line out of
    the log format in any relay or sidecar log, "stream lost" lines only in
    the window of a relay kill/stop; at the end, relay stream gauges back to
    0, every relay and sidecar exits 0 on SIGTERM.
Reported: cuts by kind, connections and bytes checked, expected resets by
cut relay, probe times (median/max) after each kind of cut, RSS at the end.

Every wait has a timeout; a watchdog ends the run at --minutes + 5 min.
Exit status: 0 pass, 1 failures found, 2 could not set up, 3 soak script
error, 4 watchdog. Children (etcd, relays, sidecars) die with this process.
"""

import argparse
import collections
import json
import os
import random
import re
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
LATE_FAIL = 10.0
SOCK_TIMEOUT = 30.0   # executor sockets: a stall this long is a failure
DRIVER_IDLE = 60.0    # the stand-in driver's bulk idle limit
HOLD_S = 15           # resume_hold_s of the sidecars and relays (default 90): how long
                      # the streams of a lost tunnel are held for a resume before reset
KINDS = ("kill", "stop", "ssk", "delkey", "etcdstop")


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Randomized soak of a sparkrelay fleet: 3 relays on one etcd, 2 sidecars "
                    "with 2 tunnels each, load through every relay while relays are killed, "
                    "stopped, tunnels reset, registrations deleted and etcd stopped.",
        epilog="Environment: SPARKRELAY_BIN (default /tmp/fsoakbin/sparkrelay), ASAN_OPTIONS, "
               "UBSAN_OPTIONS. Needs root (ss -K) and etcd (Debian's etcd-server).")
    ap.add_argument("--minutes", type=float, default=5.0, help="time spent cutting (5)")
    ap.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    ap.add_argument("--bin", default=os.environ.get("SPARKRELAY_BIN", "/tmp/fsoakbin/sparkrelay"))
    ap.add_argument("--dir", default=None,
                    help="run directory (default /tmp/sr-fleet-soak-<time>-seed<seed>)")
    ap.add_argument("--rpc", type=int, default=24, help="request/response connections (24)")
    ap.add_argument("--bulk", type=int, default=3, help="bulk transfer workers (3)")
    ap.add_argument("--bulk-max-mib", type=float, default=8.0, help="largest bulk transfer per "
                    "direction, MiB (8)")
    ap.add_argument("--bulk-rate-mib", type=float, default=3.0, help="highest bulk rate, MiB/s (3)")
    ap.add_argument("--churn", type=int, default=2, help="short-connection workers (2)")
    ap.add_argument("--gap", default="3,8", help="seconds between cuts, min,max (3,8)")
    ap.add_argument("--stop", default="1,6", help="seconds a stopped relay stays stopped, "
                    "min,max (1,6); past about 6 (the sidecar's PING timeout and its 3 s "
                    "dial) its sidecars' spare tunnel dials it for their held connections")
    ap.add_argument("--weights", default="kill=25,stop=20,ssk=25,delkey=15,etcdstop=15",
                    help="relative weights of the cut kinds")
    ap.add_argument("--probe-bound", type=float, default=5.0, help="a new connection must echo "
                    "through every live relay within this many seconds after a cut (5)")
    ap.add_argument("--log-level", default="debug", help="relay and sidecar log level (debug)")
    ap.add_argument("--keep-going", action="store_true", help="keep cutting after a failure")
    return ap.parse_args(argv)


ARGS = parse_args(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["SPARKRELAY_BIN"] = ARGS.bin
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
    if "quarantine_size_mb" not in os.environ["ASAN_OPTIONS"]:
        os.environ["ASAN_OPTIONS"] += ":quarantine_size_mb=32:allocator_release_to_os_interval_ms=1000"
    os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    os.environ["SR_IT_LOG_LEVEL"] = ARGS.log_level

sys.path.insert(0, IT_DIR)
sys.path.insert(0, HERE)
import soak as S             # noqa: E402  (its ARGS stay None when imported)
import harness as H          # noqa: E402
import etcd as E             # noqa: E402
import test_resume as R      # noqa: E402
import test_twotun as TT     # noqa: E402
from fleet_support import HOSTS  # noqa: E402

FIDS = ("relay-a", "relay-b", "relay-c")
HOST = dict(zip(FIDS, HOSTS))
SCS = ("sc1", "sc2")
PORTS = ("driver", "blockManager")
PATHS = [(sc, pn, fid) for sc in SCS for pn in PORTS for fid in FIDS]
EXPOSING = ("kill", "stop")


def pstr(path):
    return "%s/%s via %s" % path


def stats(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "n=0"
    return "n=%d median %.3f s, max %.3f s" % (len(xs), xs[len(xs) // 2], xs[-1])


class Rig(TT.FleetTwoTunnelsTest):
    """The tests' fleet setup, driven by hand (no unittest runner)."""
    ETCD_NAME = "fsoak-etcd"

    def __init__(self):
        super().__init__("runTest")

    def id(self):
        return "fleet-soak"


class Event:
    """A relay kill/stop: connections whose path may cross fid, open during
    [t_cut, t_restore], may end by reset/EOF."""

    def __init__(self, kind, fid, holders):
        self.kind, self.fid, self.holders = kind, fid, holders
        self.t_cut = time.time()
        self.t_restore = float("inf")

    def exposes(self, sc, entry):
        return self.fid == entry or self.fid in self.holders.get(sc, ())

    def covers(self, t_open, t_fail):
        return t_open <= self.t_restore and \
            self.t_cut - 0.05 <= t_fail <= self.t_restore + HOLD_S + 30


class FleetSoak(S.SoakRun):
    NAME = "fleet-soak"
    DRIVER_IDLE = DRIVER_IDLE

    def __init__(self, args):
        super().__init__(args, "fleet-cuts")
        self.cuts_file = open(os.path.join(self.dir, "cuts.jsonl"), "a", buffering=1)
        self.tags = {}            # tag -> {"path", "t_open", "kind", "abandoned"}
        self.pending = []         # unplanned connection ends, judged later
        self.events = []          # Event
        self.excused = collections.Counter()
        self.probe_times = collections.defaultdict(list)   # label -> per-cut worst
        self.probe_soft = collections.Counter()
        self.path_times = collections.defaultdict(list)    # cut kind -> every path's time
        self.stalls = collections.defaultdict(list)        # exposed rpc conns that stalled
        self.watch = {}           # Proc -> soak.LogWatch
        self.retired = set()      # Procs ended by the soak
        self.lost_lines = []      # (name, reason, t, line)
        self.rpc = None
        self.rpc_groups = []
        self.rpc_paths = {}       # id(rpc) -> [path per conn]
        self.threads = []
        self.cut_stats = []
        self.admin_ports = {}
        self.rig = None
        self.driver = None
        self.stopped = None       # the relay Proc under SIGSTOP, if any

    # ------------------------------------------------------------ reporting
    def ts(self, t):
        if t is None or t == float("inf"):
            return str(t)
        return "%s.%03d (+%.2fs)" % (time.strftime("%H:%M:%S", time.localtime(t)),
                                     int((t % 1) * 1000), t - self.t_start)

    def new_tag(self, kind, path):
        with self.lock:
            t = self.tag_next
            self.tag_next += 1
            self.tags[t] = {"kind": kind, "path": path, "t_open": time.time(),
                            "abandoned": False}
            return t

    # soak.LogWatch calls these
    def on_lost(self, w, reason, t, line):
        with self.lock:
            self.lost_lines.append((w.name, reason, t or time.time(), line.strip()))

    def on_resume_lost(self, w, why, t, line):
        self.on_lost(w, "resume: " + why, t, line)

    def on_bad_line(self, w, line):
        if "relay refused registration" in line:
            self.inc("log: relay refused registration")
            self.say("note %s: %s" % (w.name, line.strip()[:300]))
            return
        self.fail("%s: %s" % (w.name, line.strip()[:300]), log=w.proc.log_path)

    # ------------------------------------------------------------ judging
    def conn_failure(self, side, what, path, t_open, end, detail, t_fail=None):
        with self.lock:
            self.pending.append(dict(side=side, what=what, path=path, t_open=t_open,
                                     t_fail=t_fail or time.time(), end=end, detail=detail))

    def excuse_for(self, f):
        if f["end"] == "connect" and f["path"] is not None:
            # The entry relay is down (killed, not restarted yet): refused.
            for ev in self.events:
                if ev.kind == "kill" and ev.fid == f["path"][2] and \
                        ev.t_cut - 0.05 <= f["t_fail"] <= ev.t_restore + 0.5:
                    return ev
            return None
        ok_ends = ("reset", "eof") if f["side"] == "exec" else ("reset", "eof", "error")
        if f["end"] not in ok_ends:
            return None
        for ev in self.events:
            if not ev.covers(f["t_open"], f["t_fail"]):
                continue
            if f["path"] is None or ev.exposes(f["path"][0], f["path"][2]):
                return ev
        return None

    def judge_pending(self, final=False):
        with self.lock:
            todo, self.pending = self.pending, []
        now = time.time()
        for f in todo:
            open_ev = any(ev.t_restore == float("inf") for ev in self.events)
            if not final and (open_ev or f["t_fail"] > now - 1.0):
                with self.lock:
                    self.pending.append(f)
                continue
            ev = self.excuse_for(f)
            if ev is not None:
                how = "entry" if f["path"] and f["path"][2] == ev.fid else \
                    "holder" if f["path"] else "path unknown"
                self.excused["%s %s (%s %s, %s)" % (f["side"], f["end"], ev.kind, ev.fid,
                                                    how)] += 1
                self.say("expected (%s %s at %s): %s %s [%s]: %s" % (
                    ev.kind, ev.fid, self.ts(ev.t_cut), f["side"], f["what"],
                    pstr(f["path"]) if f["path"] else "path unknown", f["detail"]))
            else:
                self.fail("%s side, %s [%s] (opened %s, ended %s): %s: %s" % (
                    f["side"], f["what"], pstr(f["path"]) if f["path"] else "path unknown",
                    self.ts(f["t_open"]), self.ts(f["t_fail"]), f["end"], f["detail"]))

    def judge_lost_lines(self, final=False):
        with self.lock:
            todo, self.lost_lines = self.lost_lines, []
        for name, reason, t, line in todo:
            if any(ev.t_cut - 0.05 <= t <= ev.t_restore + HOLD_S + 30 for ev in self.events):
                self.counts["log: stream lost lines in a kill/stop window"] += 1
                self.say("expected log line (relay kill/stop window): %s: %s" % (name, line[:300]))
            elif not final and any(ev.t_restore == float("inf") for ev in self.events):
                with self.lock:
                    self.lost_lines.append((name, reason, t, line))
            else:
                self.fail("%s: %s" % (name, line[:300]))

    # ------------------------------------------------------------ setup
    def track(self, p):
        self.watch[p] = S.LogWatch(p, self)

    def relay(self, fid):
        return self.rig.relays[fid]

    def relay_over(self):
        return {"relay": {"h2": {"ping_interval_ms": PING_INTERVAL_MS,
                                 "ping_timeout_ms": PING_TIMEOUT_MS},
                          "lease": {"resume_hold_s": HOLD_S}}}

    def start(self):
        rig = self.rig = Rig()
        rig.setUp()
        for fid in FIDS:
            self.track(rig.start_relay(fid, HOST[fid], overrides=self.relay_over()))
        more = {"tunnel": {"h2": {"ping_interval_ms": PING_INTERVAL_MS,
                                  "ping_timeout_ms": PING_TIMEOUT_MS},
                           "resume_hold_s": HOLD_S}}
        r = rig.relays
        self.sc = {
            "sc1": rig.start_sidecar("sc1", (r["relay-a"], r["relay-b"], r["relay-c"]),
                                     more=more),
            "sc2": rig.start_sidecar("sc2", (r["relay-b"], r["relay-c"], r["relay-a"]),
                                     more=more),
        }
        for p in self.sc.values():
            self.track(p)
        self.lease0 = {}
        for n, p in self.sc.items():
            j = rig.lease_of(p)
            self.lease0[n] = (j["lease"], {k: int(v) for k, v in j["ports"].items()})
            p.wait_ready(lambda: p.grep("joined the lease: 2 tunnels"), 20,
                         "%s joining its lease on a second relay" % n)
        self.ports = {(n, pn): self.lease0[n][1][pn] for n in SCS for pn in PORTS}
        self.driver = H.Driver({"%s/%s" % k: v for k, v in self.ports.items()},
                               default=self.dispatch, conn_timeout=120, hold_timeout=300)
        self.driver.start()
        rig.driver = self.driver
        lids = [l for l, _ in self.lease0.values()]

        def knows(fid):
            try:
                ls = self.relay_leases(fid)
            except (OSError, ValueError):
                return False
            return all(ls.get(l) for l in lids)
        for fid in FIDS:
            H.Proc.wait_ready(self.relay(fid), lambda: knows(fid), 15, "both leases on " + fid)
        rev = rig.etcd.revision()
        for fid in FIDS:
            H.Proc.wait_ready(self.relay(fid), lambda: self.metrics(fid).get(
                "sparkrelay_fleet_revision", 0) >= rev, 15, "lease table at revision %d" % rev)
        self.out("etcd %s; relays %s; leases %s; run dir %s; logs in %s" % (
            rig.etcd.url, ", ".join("%s %s:%d pid %d" % (f, r[f].host, r[f].port, r[f].p.pid)
                                    for f in FIDS),
            {n: (l, p) for n, (l, p) in self.lease0.items()}, self.dir, rig.dir))
        times = self.probe_all(10.0, "setup")
        bad = [pstr(p) for p, t in times.items() if t is None]
        if bad:
            raise H.HarnessError("no echo at the start through %s" % bad)
        self.rss0 = self.rss_now()

    # ------------------------------------------------------------ admin
    def admin(self, p, path, timeout=3.0):
        port = self.admin_ports.get(p)
        if port is None:
            port = self.admin_ports[p] = TT.admin_port(p)
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=timeout) as f:
            return f.read().decode()

    def relay_leases(self, fid):
        j = json.loads(self.admin(self.relay(fid), "/v1/leases"))
        return {l["id"]: l for l in (j["leases"] if isinstance(j, dict) else j)}

    def metrics(self, fid):
        try:
            body = self.admin(self.relay(fid), "/metrics")
        except OSError:
            return {}
        m = {}
        for l in body.splitlines():
            if l and not l.startswith("#"):
                k, _, v = l.rpartition(" ")
                try:
                    m[k] = float(v)
                except ValueError:
                    pass
        return m

    def holders(self):
        """{sidecar: set of relay ids holding a tunnel of its lease}, as the
        live relays say; a relay that does not answer counts as a holder."""
        out = {sc: set() for sc in SCS}
        for fid in FIDS:
            p = self.relay(fid)
            if p in self.retired or p is self.stopped:
                continue
            try:
                ls = self.relay_leases(fid)
            except (OSError, ValueError):
                for sc in SCS:
                    out[sc].add(fid)
                continue
            for sc in SCS:
                if (ls.get(self.lease0[sc][0]) or {}).get("tunnels", 0) > 0:
                    out[sc].add(fid)
        return out

    def rss_now(self):
        out = {}
        for name, p in [(f, self.relay(f)) for f in FIDS] + list(self.sc.items()):
            try:
                out[name] = R.rss_kib(p.p.pid)
            except (OSError, AssertionError):
                out[name] = None
        return out

    # ------------------------------------------------------------ driver side
    def dispatch(self, dc):
        dc.info["t_open"] = time.time()
        try:
            self._dispatch(dc)
        except S.Ended as e:
            dc.end = e.end
            dc.info["problem"] = e.detail
        except (OSError, ValueError) as e:
            dc.end = S.classify(e)
            dc.info["problem"] = repr(e)
        finally:
            dc.info["t_end"] = time.time()

    def _dispatch(self, dc):
        end, got, _, tag = H.recv_exact(dc.sock, 8, recv=dc.recv)
        if end != "ok":
            dc.info["kind"] = "none"
            raise S.Ended(end, "ended after %d bytes, before its tag" % got)
        if tag == S.BULK:
            dc.info["kind"] = "bulk"
            return self.drv_bulk(dc)
        if tag in (S.CHURN, S.PROBE):
            dc.info["kind"] = "churn" if tag == S.CHURN else "probe"
            e2, _, _, cid = H.recv_exact(dc.sock, 4, recv=dc.recv)
            if e2 != "ok":
                raise S.Ended(e2, "ended within its header")
            cid = struct.unpack("!I", cid)[0]
            dc.info["cid"] = cid
            dc.sendall(tag + struct.pack("!I", cid))
        else:
            dc.info["kind"] = "rpc"
            dc.sendall(tag)
        self.drv_echo(dc)

    def bulk_started(self, dc, tag_up, tag_dn):
        dc.info["cid"] = tag_up

    def judge_driver(self, final=False):
        for dc in self.driver.all_conns():
            if not dc.done.is_set() or dc.info.get("judged"):
                continue
            dc.info["judged"] = True
            self.inc("driver connections")
            prob = dc.info.get("problem")
            end = dc.end
            if end == "eof" and not prob:
                continue
            meta = self.tags.get(dc.info.get("cid"))
            if meta and meta["abandoned"]:
                continue  # the executor gave up on it first (a probe's retry)
            if end is None and dc.error is not None:
                end = S.classify(dc.error)
            kind = dc.info.get("kind", "?")
            self.conn_failure("driver", "%s connection %s on %s" % (
                kind, dc.info.get("cid", ""), dc.port_name), meta["path"] if meta else None,
                dc.info.get("t_open", 0), end or "error", prob or repr(dc.error),
                t_fail=dc.info.get("t_end"))

    # ------------------------------------------------------------ executor side
    def connect(self, path, timeout=SOCK_TIMEOUT):
        sc, pn, fid = path
        s = H.connect(HOST[fid], self.ports[(sc, pn)], timeout=timeout)
        self.inc("exec connections")
        s.settimeout(timeout)
        return s

    def probe_once(self, path, timeout, size=1 * KiB):
        cid = self.new_tag("probe", path)
        try:
            s = self.connect(path, timeout=timeout)
        except OSError:
            self.tags[cid]["abandoned"] = True
            raise
        try:
            s.sendall(S.PROBE + struct.pack("!I", cid) + S.pat_bytes(cid, 0, size))
            head = H.recv_exact(s, 12)
            if head[0] != "ok" or head[3] != S.PROBE + struct.pack("!I", cid):
                raise S.Ended(head[0] if head[0] != "ok" else "data", "probe header %r" %
                              (head[:2],))
            chk = S.StreamCheck(cid, size)
            S.recv_check(s, chk, size, what="probe echo")
            s.shutdown(socket.SHUT_WR)
            S.recv_eof(s, what="probe end")
            self.add_bytes(2 * size)
        except BaseException:
            self.tags[cid]["abandoned"] = True
            raise
        finally:
            s.close()

    def probe_until(self, path, t_ref, bound, res):
        """Retry a probe until one echoes; res[path] = seconds after t_ref, or None."""
        deadline = t_ref + bound
        last = None
        tries = 0
        while True:
            left = deadline - time.time()
            if left <= 0:
                res[path] = None
                res.setdefault("_why", {})[path] = "%d attempts, last: %s" % (tries, last)
                return
            try:
                tries += 1
                self.probe_once(path, timeout=max(0.2, min(1.0, left)))
                res[path] = time.time() - t_ref
                self.inc("probes ok")
                if tries > 1:
                    res.setdefault("_retried", {})[path] = "%d failed attempts, last: %s" % (
                        tries - 1, last)
                return
            except (S.Ended, OSError) as e:
                last = e
                self.inc("probe attempts failed")
                time.sleep(0.05)

    def probe_all(self, bound, label, t_ref=None, fids=FIDS):
        t_ref = t_ref or time.time()
        res = {}
        ths = [threading.Thread(target=self.probe_until, args=(p, t_ref, bound, res),
                                daemon=True) for p in PATHS if p[2] in fids]
        for t in ths:
            t.start()
        for t in ths:
            t.join(bound + 10)
        why = res.pop("_why", {})
        retried = res.pop("_retried", {})
        for p, text in sorted(retried.items()):
            self.say("%s: via %s after %s" % (label, pstr(p), text))
        for p in PATHS:
            if p[2] in fids and p not in res:
                res[p] = None
        for p, v in res.items():
            if v is None:
                self.say("%s: no echo via %s within %.1f s: %s" % (label, pstr(p), bound,
                                                                  why.get(p)))
        return res

    def bulk_worker(self, slot):
        rng = random.Random("fleet-bulk-%d-%d" % (self.seed, slot))
        a = self.args
        while not self.stop_load.is_set() and (a.keep_going or not self.failed.is_set()):
            big = int(a.bulk_max_mib * MiB)
            n_up, n_dn = rng.randrange(256 * KiB, big + 1), rng.randrange(256 * KiB, big + 1)
            r = rng.random()
            if r < 0.15:
                n_up = 0
            elif r < 0.30:
                n_dn = 0
            rate = rng.uniform(0.5, a.bulk_rate_mib) * MiB
            self.one_bulk(rng.choice(PATHS), n_up, n_dn, rate)
            self.stop_load.wait(rng.uniform(0.05, 0.5))

    def one_bulk(self, path, n_up, n_dn, rate):
        tag_up = self.new_tag("bulk", path)
        tag_dn = self.new_tag("bulk", path)
        t_open = time.time()
        what = "bulk tag %d/%d (%d up, %d down at %.1f MiB/s)" % (tag_up, tag_dn, n_up, n_dn,
                                                                  rate / MiB)
        try:
            s = self.connect(path)
        except OSError as e:
            self.conn_failure("exec", what, path, t_open, "connect", repr(e))
            return
        chk = S.StreamCheck(tag_dn, n_dn)
        try:
            try:
                S.duplex(s, S.BULK + S.BULK_HDR.pack(tag_up, tag_dn, n_up, n_dn, rate), tag_up,
                         n_up, rate, chk, n_dn, idle=SOCK_TIMEOUT, what="bulk, at the executor")
            finally:
                self.add_bytes(chk.off)
            s.shutdown(socket.SHUT_WR)
            S.recv_eof(s, what="bulk driver->executor end")
            self.inc("bulk ok")
        except (S.Ended, OSError) as e:
            self.conn_failure("exec", what, path, t_open, S.classify(e), str(e))
        finally:
            s.close()

    def churn_worker(self, slot):
        rng = random.Random("fleet-churn-%d-%d" % (self.seed, slot))
        while not self.stop_load.is_set() and (self.args.keep_going or
                                               not self.failed.is_set()):
            path = rng.choice(PATHS)
            cid = self.new_tag("churn", path)
            size = rng.choice((rng.randrange(1, 512), rng.randrange(512, 32 * KiB)))
            t_open = time.time()
            what = "churn id %d (%d bytes)" % (cid, size)
            try:
                s = self.connect(path)
            except OSError as e:
                self.conn_failure("exec", what, path, t_open, "connect", repr(e))
                continue
            try:
                s.sendall(S.CHURN + struct.pack("!I", cid) + S.pat_bytes(cid, 0, size))
                e, got, _, head = H.recv_exact(s, 12)
                if e != "ok":
                    raise S.Ended(e, "churn: %s after %d bytes of the echoed header" % (e, got))
                if head != S.CHURN + struct.pack("!I", cid):
                    raise S.Ended("data", "churn: echoed header %s" % head.hex())
                S.recv_check(s, S.StreamCheck(cid, size), size, what="churn echo")
                s.shutdown(socket.SHUT_WR)
                S.recv_eof(s, what="churn end")
                self.add_bytes(2 * size)
                self.inc("churn ok")
            except (S.Ended, OSError) as e:
                self.conn_failure("exec", what, path, t_open, S.classify(e), str(e))
            finally:
                s.close()
            self.stop_load.wait(rng.uniform(0.02, 0.2))

    # ------------------------------------------------------------ request/response
    def start_rpc(self):
        n = self.args.rpc
        paths = []

        def connect():
            path = PATHS[len(paths) % len(PATHS)]
            paths.append(path)
            last = None
            for _ in range(3):
                try:
                    return self.connect(path, timeout=5)
                except OSError as e:
                    last = e
                    time.sleep(0.2)
            raise last
        gen = len(self.rpc_groups) + 1
        rpc = S.SoakRpc(connect, n, interval=0.1, seed=(self.seed * 131 + gen) & 0xffff)
        rpc.t_open = time.time()
        rpc.gen = gen
        rpc.paths = paths
        try:
            rpc.open().start()
        except OSError as e:
            self.fail("cannot open request/response connection %d (%s): %r" % (
                len(paths) - 1, pstr(paths[-1]), e))
            rpc.abandon()
            return
        self.rpc = rpc
        self.rpc_groups.append(rpc)

    def judge_rpc(self, rpc):
        for c in rpc.conns:
            if c.error and c.idx not in rpc.judged:
                rpc.judged.add(c.idx)
                self.conn_failure("exec", "rpc gen %d conn %d" % (rpc.gen, c.idx),
                                  rpc.paths[c.idx], rpc.t_open, S.rpc_end(c.error), c.error,
                                  t_fail=c.t_error)

    def check_flowing(self, t_ref, what, ev=None):
        """Every request/response connection answers a request sent after
        t_ref within LATE_FAIL s, except those whose path crossed the relay
        of ev (a kill/stop): they may stall; each must then either answer
        or end (reset/EOF, judged with the other ends) within HOLD_S + 10 s
        of t_ref, never hang."""
        rpc = self.rpc
        if rpc is None:
            return None
        # (RpcLoad.wait_flowing_after returns at the first error: here some
        # are expected, so wait for each connection on its own.)
        def answered(c):
            return any(ts >= t_ref for _, ts, _ in c.done)
        R.X.wait_for(lambda: all(c.error is not None or answered(c) for c in rpc.conns),
                     max(0.0, t_ref + LATE_FAIL + 0.5 - time.time()), interval=0.1)
        self.judge_rpc(rpc)
        worst, late = rpc.flowing_after(t_ref, LATE_FAIL)
        late = [(i, d) for i, d in late if rpc.conns[i].error is None]
        exposed = [i for i, _ in late if ev is not None and
                   ev.exposes(rpc.paths[i][0], rpc.paths[i][2])]
        hard = [(i, d) for i, d in late if i not in exposed]
        if hard:
            self.fail("%d request/response connections without an answer within %.0f s of %s "
                      "(index, path, delay): %s" % (len(hard), LATE_FAIL, what, [
                          (i, pstr(rpc.paths[i]), d) for i, d in hard[:6]]))
        if exposed:
            def settled(i):
                c = rpc.conns[i]
                return c.error is not None or any(ts >= t_ref for _, ts, _ in c.done)
            R.X.wait_for(lambda: all(settled(i) for i in exposed),
                         max(0.0, t_ref + HOLD_S + 10 - time.time()), interval=0.1)
            self.judge_rpc(rpc)
            for i in exposed:
                c = rpc.conns[i]
                tag = "%s %s" % (ev.kind, pstr(rpc.paths[i]))
                if c.error is not None:
                    self.stalls["stalled, then ended (%s)" % S.rpc_end(c.error)].append(
                        c.t_error - ev.t_cut)
                    self.say("%s: rpc conn %d stalled after the cut, ended %.1f s after it: %s"
                             % (tag, i, c.t_error - ev.t_cut, c.error))
                elif settled(i):
                    d = next(t_done for _, ts, t_done in c.done if ts >= t_ref)
                    self.stalls["stalled, then answered"].append(d - ev.t_cut)
                    self.say("%s: rpc conn %d stalled after the cut, answered %.1f s after it"
                             % (tag, i, d - ev.t_cut))
                else:
                    self.fail("request/response connection %d (%s) neither answered nor "
                              "ended within %d s of %s" % (i, pstr(rpc.paths[i]), HOLD_S + 10,
                                                           what))
        return worst

    def retire_rpc(self):
        rpc = self.rpc
        if rpc is None:
            return
        self.rpc = None
        self.judge_rpc(rpc)
        probs = rpc.close_and_check(timeout=15)
        errs = set(c.error for c in rpc.conns if c.error)
        for pr in probs:
            if pr in errs:
                continue
            m = re.match(r"conn (\d+)", pr)
            path = rpc.paths[int(m.group(1))] if m else None
            self.conn_failure("exec", "rpc gen %d closing" % rpc.gen, path, rpc.t_open,
                              S.rpc_end(pr), pr)
        self.judge_rpc(rpc)

    # ------------------------------------------------------------ cuts
    def sidecar_tunnels(self, sc):
        """(local port, relay id) of the sidecar's established tunnel sockets."""
        pid = self.sc[sc].p.pid
        out = []
        for fid in FIDS:
            p = self.relay(fid)
            r = subprocess.run(["ss", "-Htnp", "state", "established", "dst", p.host, "dport",
                                "=", ":%d" % p.port], capture_output=True, text=True,
                               timeout=10).stdout
            for line in r.splitlines():
                if "pid=%d," % pid in line:
                    f = line.split()
                    out.append((int(f[2].rsplit(":", 1)[1]), fid))
        return out

    def cut(self, i, kind):
        info = {"i": i, "kind": kind, "t": time.time()}
        ev = None
        holders = self.holders()
        info["holders"] = {k: sorted(v) for k, v in holders.items()}
        bound = self.args.probe_bound
        if kind == "kill":
            fid = self.rng.choice(FIDS)
            info["relay"] = fid
            old = self.relay(fid)
            ev = Event(kind, fid, holders)
            self.events.append(ev)
            self.retired.add(old)
            old.p.send_signal(signal.SIGKILL)
            try:
                old.p.wait(10)
            except subprocess.TimeoutExpired:
                self.fail("cut %d: %s not dead 10 s after SIGKILL" % (i, fid))
            old._forget()
            down = self.rng.uniform(0.5, 3.0)
            info["down"] = down
            others = [f for f in FIDS if f != fid]
            res = self.probe_all(bound, "cut %d survivors" % i, t_ref=ev.t_cut, fids=others)
            self.note_probes(info, "kill: via survivors, from the kill", res, hard=True)
            time.sleep(max(0.0, ev.t_cut + down - time.time()))
            t_rs = time.time()
            try:
                p = self.rig.start_relay(fid, HOST[fid], port=old.port,
                                         overrides=self.relay_over())
            except H.HarnessError as e:
                self.fail("cut %d: %s did not come back: %s" % (i, fid, e))
                ev.t_restore = time.time()
                return info
            self.track(p)
            ev.t_restore = time.time()
            info["restart_ready_s"] = ev.t_restore - t_rs
            res = self.probe_all(bound, "cut %d after restart" % i, t_ref=ev.t_restore)
            self.note_probes(info, "kill: all paths, from the restart", res, hard=True)
            t_ref = ev.t_restore
        elif kind == "stop":
            fid = self.rng.choice(FIDS)
            info["relay"] = fid
            p = self.relay(fid)
            dur = self.rng.uniform(*(float(x) for x in self.args.stop.split(",")))
            info["freeze"] = dur
            ev = Event(kind, fid, holders)
            self.events.append(ev)
            self.stopped = p
            p.signal(signal.SIGSTOP)
            try:
                others = [f for f in FIDS if f != fid]
                res = self.probe_all(dur, "cut %d during the stop" % i, t_ref=ev.t_cut,
                                     fids=others)
                self.note_probes(info, "stop: via the others, during the stop", res, hard=False)
                time.sleep(max(0.0, ev.t_cut + dur - time.time()))
            finally:
                p.signal(signal.SIGCONT)
                self.stopped = None
            ev.t_restore = time.time()
            res = self.probe_all(bound, "cut %d after SIGCONT" % i, t_ref=ev.t_restore)
            self.note_probes(info, "stop: all paths, from SIGCONT", res, hard=True)
            t_ref = ev.t_restore
        elif kind == "ssk":
            sc = self.rng.choice(SCS)
            tuns = self.sidecar_tunnels(sc)
            info["sidecar"], info["tunnels"] = sc, [f for _, f in tuns]
            if not tuns:
                self.fail("cut %d: %s has no tunnel socket to kill" % (i, sc))
                return info
            lport, fid = self.rng.choice(tuns)
            info["relay"] = fid
            p = self.relay(fid)
            t0 = time.time()
            r = subprocess.run(["ss", "-K", "state", "established", "sport", "=", ":%d" % lport,
                                "dst", p.host, "dport", "=", ":%d" % p.port],
                               capture_output=True, text=True, timeout=10).stdout
            info["killed"] = r.count(":%d" % lport)
            res = self.probe_all(bound, "cut %d after ss -K" % i, t_ref=t0)
            self.note_probes(info, "ssk: all paths, from the reset", res, hard=True)
            t_ref = t0
        elif kind == "delkey":
            fid = self.rng.choice(FIDS)
            info["relay"] = fid
            key = ("/sparkrelay/relays/%s" % fid).encode()
            etcd = self.rig.etcd
            n = etcd.delete(key)
            t0 = time.time()
            info["deleted"] = n
            back = None
            while time.time() < t0 + bound:
                if etcd.get(key) is not None:
                    back = time.time() - t0
                    break
                time.sleep(0.05)
            info["back_s"] = back
            if back is None:
                self.fail("cut %d: %s did not write relays/%s back within %.0f s" % (
                    i, fid, fid, bound))
            else:
                self.probe_times["delkey: key written back"].append(back)
            res = self.probe_all(bound, "cut %d after delkey" % i, t_ref=t0)
            self.note_probes(info, "delkey: all paths, from the delete", res, hard=True)
            t_ref = t0
        elif kind == "etcdstop":
            dur = self.rng.uniform(1.0, 3.0)
            info["freeze"] = dur
            etcd = self.rig.etcd
            t0 = time.time()
            etcd.pause()
            try:
                res = self.probe_all(dur, "cut %d during the etcd stop" % i, t_ref=t0)
                self.note_probes(info, "etcdstop: all paths, during the stop", res, hard=False)
                time.sleep(max(0.0, t0 + dur - time.time()))
            finally:
                etcd.resume()
            t_ref = time.time()
            res = self.probe_all(bound, "cut %d after etcd SIGCONT" % i, t_ref=t_ref)
            self.note_probes(info, "etcdstop: all paths, from SIGCONT", res, hard=True)
        else:
            raise ValueError(kind)
        info["rpc_worst"] = self.check_flowing(t_ref, "cut %d (%s)" % (i, kind),
                                               ev=ev if kind in EXPOSING else None)
        if kind in EXPOSING:
            self.retire_rpc()
            self.start_rpc()
        return info

    def note_probes(self, info, label, res, hard):
        ok = [v for v in res.values() if v is not None]
        if ok:
            self.path_times[label.split(":")[0]].extend(ok)
        bad = [pstr(p) for p, v in res.items() if v is None]
        if ok:
            self.probe_times[label].append(max(ok))
        info.setdefault("probes", {})[label] = {
            "worst": round(max(ok), 3) if ok else None, "failed": bad}
        if bad:
            if hard:
                self.fail("cut %d (%s): %s: no new connection echoed within %.0f s through %s" %
                          (info["i"], info["kind"], label, self.args.probe_bound, bad))
            else:
                self.probe_soft[label] += len(bad)

    # ------------------------------------------------------------ checks
    def check_invariants(self, where):
        for n, p in self.sc.items():
            j = H.read_spark_json(p.spark_json)
            if not isinstance(j, dict) or "lease" not in j:
                continue  # being rewritten
            got = (j.get("lease"), {k: int(v) for k, v in (j.get("ports") or {}).items()})
            if got != self.lease0[n]:
                self.fail("%s: %s's lease changed: %r, was %r" % (where, n, got, self.lease0[n]),
                          log=p.log_path)
                self.lease0[n] = got
        for p in [self.relay(f) for f in FIDS] + list(self.sc.values()):
            if p not in self.retired and not p.alive():
                self.retired.add(p)
                self.fail("%s: %s died (rc=%s)" % (where, p.name, p.p.returncode),
                          log=p.log_path)

    def poll_logs(self):
        for w in list(self.watch.values()):
            w.poll()

    def after_cut(self, where):
        self.poll_logs()
        self.check_invariants(where)
        self.judge_driver()
        if self.rpc is not None:
            self.judge_rpc(self.rpc)
        self.judge_pending()
        self.judge_lost_lines()

    # ------------------------------------------------------------ the run
    def run(self):
        a = self.args
        wk = dict(kv.split("=") for kv in a.weights.split(","))
        kinds = [k for k in KINDS if float(wk.get(k, 0)) > 0]
        weights = [float(wk[k]) for k in kinds]
        gmin, gmax = (float(x) for x in a.gap.split(","))
        self.out("seed %d; %.1f min of cuts (%s), gaps %.1f-%.1f s; load: %d rpc, %d bulk, "
                 "%d churn over %d paths; binary %s" % (self.seed, a.minutes, a.weights, gmin,
                                                        gmax, a.rpc, a.bulk, a.churn,
                                                        len(PATHS), H.BIN))
        self.start()
        self.start_rpc()
        for k in range(a.bulk):
            self.threads.append(threading.Thread(target=self.bulk_worker, args=(k,),
                                                 daemon=True, name="bulk%d" % k))
        for k in range(a.churn):
            self.threads.append(threading.Thread(target=self.churn_worker, args=(k,),
                                                 daemon=True, name="churn%d" % k))
        for t in self.threads:
            t.start()
        self.t_cuts = time.time()
        t_end = self.t_cuts + a.minutes * 60
        i = 0
        last_progress = time.time()
        while time.time() < t_end and (a.keep_going or not self.failed.is_set()):
            deadline = time.time() + self.rng.uniform(gmin, gmax)
            while time.time() < deadline:
                time.sleep(min(0.25, max(0.0, deadline - time.time())))
                self.poll_logs()
            if time.time() >= t_end or (self.failed.is_set() and not a.keep_going):
                break
            kind = self.rng.choices(kinds, weights)[0]
            info = self.cut(i, kind)
            self.inc("cuts " + kind)
            i += 1
            self.cut_stats.append(info)
            line = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()}
            self.cuts_file.write(json.dumps(line) + "\n")
            self.say("cut %d %s: %s" % (info["i"], kind, json.dumps(
                {k: v for k, v in line.items() if k not in ("i", "kind", "t")})))
            self.after_cut("after cut %d (%s)" % (info["i"], kind))
            if time.time() - last_progress > 30:
                last_progress = time.time()
                self.progress(i)
        self.n_cuts = i
        self.final()
        return self.summary()

    def progress(self, i):
        self.out("t=%4.0fs cuts=%d bytes-checked=%.1f MiB rpc-echoes=%d bulk=%d churn=%d "
                 "probes=%d expected=%d failures=%d" % (
                     time.time() - self.t_start, i, self.total_bytes() / MiB,
                     sum(rp.completed() for rp in self.rpc_groups), self.counts["bulk ok"],
                     self.counts["churn ok"], self.counts["probes ok"],
                     sum(self.excused.values()), len(self.failures)))

    def total_bytes(self):
        return self.bytes_checked + sum(rp.bytes_ok for rp in self.rpc_groups)

    def final(self):
        self.out("cuts over; final checks")
        res = self.probe_all(20.0, "final")
        bad = [pstr(p) for p, v in res.items() if v is None]
        if bad:
            self.fail("final: no echo within 20 s through %s" % bad)
        self.stop_load.set()
        for t in self.threads:
            t.join(120)
            if t.is_alive():
                self.fail("final: load thread %s still running after 120 s" % t.name)
        self.retire_rpc()
        left = self.driver.wait_all_done(HOLD_S + 30)
        if left:
            self.fail("final: %d driver connections still open %d s after every executor "
                      "connection closed: %s" % (len(left), HOLD_S + 30, [
                          (dc.port_name, dc.info.get("kind"), dc.info.get("cid"),
                           self.ts(dc.info.get("t_open"))) for dc in left[:6]]))
        self.poll_logs()
        self.judge_driver(final=True)
        self.judge_pending(final=True)
        self.judge_lost_lines(final=True)
        self.check_invariants("final")
        gauges = ("sparkrelay_streams_active", "sparkrelay_executor_buffered_bytes",
                  "sparkrelay_resume_streams_held")
        self.final_metrics = {}
        for fid in FIDS:
            m = {}

            def settled():
                m.clear()
                m.update(self.metrics(fid))
                return all(m.get(k, 0) == 0 for k in gauges)
            if not R.X.wait_for(settled, 15, interval=0.5):
                self.fail("final: %s gauges not back to 0 15 s after the end: %s" % (
                    fid, {k: m.get(k) for k in gauges}))
            self.final_metrics[fid] = m
        self.rss_end = self.rss_now()
        for p in list(self.sc.values()) + [self.relay(f) for f in FIDS]:
            for pr in p.stop_problems(20.0, ended_ok=True, dump=False, cont=True):
                if "sanitizer report" not in pr:
                    self.fail("final: " + pr, log=p.log_path)
        time.sleep(0.2)
        self.poll_logs()
        for p, w in self.watch.items():
            if w.malformed and not w.sanitizer:
                self.fail("%s: %d lines not in the log format, first: %r" % (
                    p.name, len(w.malformed), w.malformed[0][:200]), log=p.log_path)
        self.driver.stop()
        self.rig.etcd.stop()

    def summary(self):
        dur = time.time() - self.t_start
        L = []
        L.append("=" * 72)
        L.append("sparkrelay fleet soak: seed %d, %.1f min of cuts, %.0f s in all" % (
            self.seed, self.args.minutes, dur))
        L.append("cuts: %d (%s)" % (getattr(self, "n_cuts", 0), ", ".join(
            "%s %d" % (k[5:], v) for k, v in sorted(self.counts.items())
            if k.startswith("cuts "))))
        per = collections.Counter()
        for c in self.cut_stats:
            per["%s %s" % (c["kind"], c.get("relay", c.get("sidecar", "")))] += 1
        L.append("cuts by target: %s" % ", ".join("%s %d" % kv for kv in sorted(per.items())))
        rpc_conns = sum(len(rp.conns) for rp in self.rpc_groups)
        L.append("connections checked: rpc %d in %d groups (%d echoes), bulk %d, churn %d, "
                 "probes %d; executor connections %d, driver connections %d" % (
                     rpc_conns, len(self.rpc_groups),
                     sum(rp.completed() for rp in self.rpc_groups), self.counts["bulk ok"],
                     self.counts["churn ok"], self.counts["probes ok"],
                     self.counts["exec connections"], self.counts["driver connections"]))
        L.append("bytes checked: %d (%.1f MiB)" % (self.total_bytes(),
                                                   self.total_bytes() / MiB))
        L.append("expected ends (path crossed a killed/stopped relay): %d" %
                 sum(self.excused.values()))
        for k, v in sorted(self.excused.items()):
            L.append("  %6d  %s" % (v, k))
        if self.counts["log: stream lost lines in a kill/stop window"]:
            L.append("'stream lost' log lines in kill/stop windows: %d" %
                     self.counts["log: stream lost lines in a kill/stop window"])
        L.append("new-connection probe times (per cut, the worst path):")
        for k in sorted(self.probe_times):
            L.append("  %-45s %s" % (k, stats(self.probe_times[k])))
        L.append("  (every path, all phases of a kind: %s)" % "; ".join(
            "%s %s" % (k, stats(v)) for k, v in sorted(self.path_times.items())))
        L.append("  probe attempts that failed before one echoed (retried, 1 s timeout "
                 "each): %d" % self.counts["probe attempts failed"])
        for k, v in sorted(self.probe_soft.items()):
            L.append("  %-45s %d paths without an echo (not judged)" % (k, v))
        rw = [c.get("rpc_worst") for c in self.cut_stats]
        L.append("rpc: worst first answer after a cut %s" % stats(rw))
        for k, v in sorted(self.stalls.items()):
            L.append("rpc connections through a killed/stopped relay that %s: %d; seconds "
                     "from the cut: %s" % (k, len(v), stats(v)))
        rs0, rs1 = getattr(self, "rss0", {}), getattr(self, "rss_end", {})
        if rs1:
            L.append("RSS KiB (after setup -> end; relays restarted count from their restart): "
                     + ", ".join("%s %s -> %s" % (k, rs0.get(k), rs1.get(k)) for k in rs1))
        fm = getattr(self, "final_metrics", {})
        for fid, m in sorted(fm.items()):
            L.append("%s metrics at the end: %s" % (fid, ", ".join(
                "%s=%d" % (k.replace("sparkrelay_", ""), v) for k, v in sorted(m.items())
                if any(s in k for s in ("streams_active", "fleet_forward", "carried",
                                        "resume_streams_lost", "leases_resumed")))))
        warns = collections.Counter()
        for w in self.watch.values():
            for msg, n in w.warns.items():
                warns["%s: %s" % (w.name.rsplit("-", 1)[0] if w.name.startswith("relay") else
                                  w.name, msg)] += n
        if warns:
            L.append("WARN/ERROR lines in the logs (numbers as N), top 15:")
            for msg, n in warns.most_common(15):
                L.append("  %6d  %s" % (n, msg))
        L.append("logs: %s" % (self.rig.dir if self.rig else "-"))
        L.append("timeline: %s" % self.timeline_path)
        return S.end_summary(self, L)


def main():
    H.raise_nofile()
    import atexit
    atexit.register(H._kill_all_procs)
    if not os.access(ARGS.bin, os.X_OK):
        sys.stderr.write("fleet_soak: %s is not an executable (--bin or SPARKRELAY_BIN)\n" %
                         ARGS.bin)
        return 2
    if not E.installed():
        sys.stderr.write("fleet_soak: no etcd in PATH (Debian's etcd-server)\n")
        return 2
    H.BIN = ARGS.bin
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    soak = FleetSoak(ARGS)
    threading.Thread(target=S.watchdog, args=(ARGS.minutes * 60 + 300, soak, "fleet-soak"),
                     daemon=True, name="watchdog").start()
    try:
        rc = soak.run()
    except (H.HarnessError, AssertionError) as e:
        if getattr(soak, "t_cuts", None) is None:
            sys.stderr.write("fleet_soak: setup failed: %s\n(logs in %s)\n" % (e, soak.dir))
            rc = 2
        else:
            traceback.print_exc()
            soak.fail("soak script error: %s" % e)
            rc = 3
    except BaseException:
        rc = S.script_failed(soak)
    H._kill_all_procs()
    try:
        if soak.rig is not None:
            soak.rig.etcd.stop()
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
