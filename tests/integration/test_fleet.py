"""The relay fleet with a real etcd (Debian's etcd-server) on loopback.

  - a sidecar's lease lives in etcd: killed and replaced by one that dials
    another relay (same state file), it gets the same lease id and ports;
  - two relays granting at the same moment never give the same port
    (registrations raced on both relays at once); a join or a resume of
    the winner's lease on the loser, while the loser's grant still holds
    the port, waits for it instead of being refused;
  - three relays (127.0.0.2, .3, .4), one sidecar on the first: executors
    connect to the lease port on the other two and exchange bytes
    byte-exact with the driver through the relay-to-relay link; kill -9 one
    relay: connections through the others continue, and new connections
    through a survivor succeed;
  - the relay holding the tunnel killed: the sidecar resumes on the next relay
    of its list and executors through a third relay are served;
  - executors that arrive while no relay holds a tunnel wait, and are
    carried once the sidecar comes back on another relay; so is one whose
    carrying failed on every relay (etcd still named a dead holder);
  - a draining relay withdraws from etcd at once, and its sidecar resumes
    elsewhere;
  - malformed values in etcd are ignored; etcd over mutual TLS;
  - a lease released by its old tunnel while a resume of it waits for etcd:
    the resume is refused (unknown_lease) and the relay lives on;
  - a lease whose keys etcd lost while its tunnel is up is made again with
    the same ports, or ended (error `revoked`, ports closed) when one of
    its ports went to another lease meanwhile; with tunnels on two relays
    it is made once and both keep serving it;
  - etcd stopped (SIGSTOP) for 10 s: streams undisturbed, a new
    registration fails with `fleet_unavailable` after its bound, and once
    etcd is back registrations succeed again;
  - etcd stopped for longer than a lease's grace TTL: the relay says it
    cannot keep the grace lease alive and keeps trying; streams go on and
    the lease is in etcd again with the same ports afterwards; two of
    three members stopped as long: etcd renews leases when a leader is
    elected, and the relay's next keepalive holds the grace lease (never
    deleted nor made again);
  - a rolling update (live handover) while etcd is stopped: the new relay
    is not ready until etcd is back, then serves the executor that waited;
    once the relay's registration is lost, a takeover is refused and the
    relay goes on serving;
  - a relay that cannot read the lease table, or register itself, when it
    starts answers /readyz with 503 and why (sparkrelay_ready 0), refuses
    a registration with `fleet_unavailable` after its bound, and once etcd
    answers turns ready and grants the lease; a relay taken over turns
    ready again;
  - a relay that cannot bind a lease's ports (another program listens
    there) binds them once they are free, though etcd does not change;
  - what etcd says is checked where it enters: a relay's peer address that
    is not a numeric IP:port one can dial (a wildcard would reach this very
    host) is never dialled, a lease's ports outside the pool are never
    bound, a key with a NUL byte does not act on the key before the NUL;
  - one resume token presented to two relays at the same moment resumes
    the lease once: the other is told `resume_conflict`;
  - a watch stream that goes silent is started again from its last
    revision; if etcd compacted that revision meanwhile, the relay reads
    every key again and serves what it missed.

Each measured number is logged with the prefix "measured:".
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import etcd as E
import fake_sidecar as F
import harness as H
import harness_extra as X
from fleet_support import (FleetCase, FreezingProxy, HOSTS, POOL, admin_get,  # noqa: F401
                           admin_port, echo_exchange, readyz, wait_for)
from harness import MiB







class FleetTest(FleetCase):

    # -- processes

    def start_sidecar(self, name, relay, workdir=None, more=()):
        workdir = workdir or os.path.join(self.dir, name)
        os.makedirs(workdir, exist_ok=True)
        relays = ["%s:%d" % (r.host, r.port) for r in (relay,) + tuple(more)]
        cfg = H.tunnel_config(relay.port, workdir,
                              {"tunnel": {"relays": relays, "server_name": "localhost"}})
        path = H.write_config(os.path.join(self.dir, name + ".json"), cfg)
        p = H.Proc(name, [H.BIN, "tunnel", "--config", path], self.dir).start()
        p.workdir_ = workdir
        p.spark_json = cfg["tunnel"]["spark_json"]
        self.procs.append(p)
        return p

    def handover_relay(self, fleet=None, lease=None):
        """relay-a with a handover socket and a fixed peer port, a sidecar on it
        and the driver of its lease: (relay, lease, driver port)."""
        ho = os.path.join(tempfile.mkdtemp(prefix="ho-", dir=H.root_dir()), "ho.sock")
        over = {"relay": {"handover_socket": ho, "handover_timeout_ms": 10000,
                          "lease": dict(lease or {}),
                          "fleet": dict(fleet or {}, peer_listen="%s:%d" % (
                              HOSTS[0], H.free_port(HOSTS[0])))}}
        a = self.start_relay("relay-a", HOSTS[0], overrides=over)
        sc = self.start_sidecar("sc", a)
        lease_msg = self.lease_of(sc)
        port = self.start_driver(lease_msg)
        return a, sc, lease_msg, port

    def takeover_proc(self, name, a):
        """A new relay process with --takeover on relay-a's configuration."""
        p = H.Proc(name, [H.BIN, "relay", "--config", os.path.join(self.dir, "relay-a.json"),
                          "--takeover"], self.dir).start()
        self.procs.append(p)
        p.host, p.port, p.fid = a.host, a.port, "relay-a"
        return p

    # -- tests

    def test_resume_on_another_relay(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        s1 = self.start_sidecar("sc1", a)
        l1 = self.lease_of(s1)
        s1.kill()
        t0 = time.time()
        time.sleep(0.05)
        s2 = self.start_sidecar("sc2", b, workdir=s1.workdir_)
        l2 = self.lease_of(s2, not_before=t0)
        took = time.time() - t0
        H.log("measured: sidecar resumed its lease on another relay %.2f s after starting"
              % took)
        self.assertEqual(l1["lease"], l2["lease"])
        self.assertEqual(l1["ports"], l2["ports"])
        self.assertTrue(b.grep("resumed in the fleet"), "relay-b did not resume the lease")
        # The lease's ports answer on both relays; the one without the
        # tunnel carries the connection to the one with it.
        self.start_driver(l2)
        for r in (a, b):
            s = H.connect(r.host, int(l2["ports"]["driver"]))
            ok, why = echo_exchange(s, 7, 256 * 1024)
            s.close()
            self.assertTrue(ok, "through %s: %s" % (r.name, why))

    def test_the_relay_to_relay_hop_keeps_tcp_keepalive_on_both_ends(self):
        # Nothing else watches the hop: a relay whose node vanished without a
        # FIN or RST would leave the carried executor's connection open on
        # the other relay for ever. The kernel's keepalive notices it.
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        sc = self.start_sidecar("sc", b)
        lease = self.lease_of(sc)
        port = self.start_driver(lease)
        peer = re.search(r"registered in the fleet as relay-b \(peer address ([\d.]+):(\d+)\)",
                         b.log_text())
        self.assertIsNotNone(peer, "relay-b's peer address in its log")
        s = H.connect(a.host, port)  # relay-a carries it to relay-b
        self.addCleanup(s.close)
        ok, why = echo_exchange(s, 3, 4096)
        self.assertTrue(ok, why)

        def timers(which):
            return subprocess.run(["ss", "-tnoH", "state", "established", which,
                                   "%s:%s" % peer.groups()], capture_output=True, text=True,
                                  timeout=10).stdout.splitlines()
        dialled, accepted = timers("dst"), timers("src")
        self.assertEqual(len(dialled), 1, dialled)
        self.assertEqual(len(accepted), 1, accepted)
        # libevent's listeners turn keepalive on with the kernel's 2 hours;
        # the hop's is 30 s.
        for side, lines in (("relay-a's dialled socket", dialled),
                            ("relay-b's accepted socket", accepted)):
            m = re.search(r"timer:\(keepalive,(\d+)sec", lines[0])
            self.assertIsNotNone(m, "%s: no keepalive timer in seconds: %s" % (side, lines[0]))
            self.assertLessEqual(int(m.group(1)), 30, lines[0])

    def _relay_a_watching_through_a_proxy(self, overrides=None):
        """relay-a, whose etcd watch goes through a FreezingProxy (the proxy's
        freeze(marked_only=True) stalls it), and relay-b."""
        px = FreezingProxy(("127.0.0.1", self.etcd.port), mark=b"POST /v3/watch")
        self.addCleanup(px.close)
        over = {"relay": {"fleet": {"etcd": ["http://127.0.0.1:%d" % px.port]}}}
        H.deep_merge(over, overrides or {})
        a = self.start_relay("relay-a", HOSTS[0], overrides=over)
        b = self.start_relay("relay-b", HOSTS[1], overrides=overrides)
        wait_for(px.marked, 10, "relay-a's watch")
        return px, a, b

    def _lease_msg(self, relay):
        """A FakeSidecar's lease granted by relay (kept until the test ends):
        the lease message."""
        sc = F.FakeSidecar(relay.port, H.certs().ca, host=relay.host).connect().start_h2()
        self.addCleanup(sc.close)
        sc.send_ctl(F.register_msg())
        m = sc.read_ctl(15) or {}
        self.assertEqual(m.get("type"), "lease", m)
        return m

    def _join_on_a_of_a_lease_of_b(self, a, b):
        """A lease granted on relay-b, and a join of it sent to relay-a (its
        answer not read): (relay-b's lease message, the joining FakeSidecar)."""
        m = self._lease_msg(b)
        joiner = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
        self.addCleanup(joiner.close)
        joiner.send_ctl(F.register_msg(resume="join_" + m["resume"], join=m["lease"]))
        return m, joiner

    def test_a_resume_on_a_relay_whose_watch_is_stuck_keeps_the_lease(self):
        # relay-a's watch stream stalls without breaking, so its copy of
        # the lease table misses a lease made on relay-b. A resume of that
        # lease on relay-a was answered unknown_lease, and the sidecar
        # started afresh with new ports: every executor of the app lost its
        # driver. relay-a now asks etcd whether its copy is behind before it
        # refuses, and reads the table again when the watch does not catch
        # up.
        px, a, b = self._relay_a_watching_through_a_proxy()
        self.assertEqual(px.freeze(marked_only=True), 1)
        s1 = self.start_sidecar("sc1", b)
        l1 = self.lease_of(s1)
        s1.kill()
        time.sleep(1.0)
        self.assertFalse(a.grep("lease=%s" % l1["lease"]), "relay-a's watch is not stuck")
        # what an operator sees: relay-a's copy stays behind relay-b's
        self.assertLess(self.metrics(a)["sparkrelay_fleet_revision"],
                        self.metrics(b)["sparkrelay_fleet_revision"])
        t0 = time.time()
        s2 = self.start_sidecar("sc2", a, workdir=s1.workdir_)
        l2 = self.lease_of(s2, not_before=t0)
        H.log("measured: a resume on a relay whose etcd watch was stuck kept its lease, "
              "%.2f s after the sidecar started" % (time.time() - t0))
        self.assertEqual(l1["lease"], l2["lease"])
        self.assertEqual(l1["ports"], l2["ports"])
        self.assertTrue(a.grep("resumed in the fleet"), a.log_text()[-2000:])
        self.assertTrue(a.grep("a resume waits for the lease table here"))
        self.assertTrue(a.grep("reading every key again"))
        self.assertFalse(a.grep("unknown_lease"))
        self.start_driver(l2)
        s = wait_for(lambda: self._try_connect(a.host, int(l2["ports"]["driver"])), 10,
                     "connect via relay-a")
        ok, why = echo_exchange(s, 5, 256 * 1024)
        s.close()
        self.assertTrue(ok, why)

    def test_a_resume_against_an_old_copy_of_its_lease_is_not_refused_for_good(self):
        # relay-a's watch is stuck with an old version of a lease: the
        # lease was resumed on relay-b since (its token T1 is now the
        # previous one there, still good: the sidecar never read the new
        # one). A resume of it with T1 on relay-a found T1 in the old
        # version, lost its write to the newer one in etcd, and was answered
        # resume_conflict, again on every try until the watch restarted
        # (25 min by default), while the lease's grace ran out. Now the
        # answer waits until relay-a has the newer version (here: a full
        # read), and the next try resumes.
        px, a, b = self._relay_a_watching_through_a_proxy()
        ca = H.certs().ca

        def register(relay, **extra):
            fs = F.FakeSidecar(relay.port, ca, host=relay.host).connect().start_h2()
            try:
                fs.send_ctl(F.register_msg(**extra))
                return fs.read_ctl(15) or {}
            finally:
                fs.close()
        m = register(b)
        lease, t1 = m["lease"], m["resume"]
        wait_for(lambda: a.grep("lease=%s: serving its ports here" % lease), 10,
                 "relay-a serving the lease")
        self.assertEqual(px.freeze(marked_only=True), 1)
        m = register(b, resume=t1, lease=lease)  # its new token never read
        self.assertEqual(m.get("type"), "lease", m)
        self.assertNotEqual(m.get("resume"), t1)
        m = register(a, resume=t1, lease=lease)
        self.assertEqual(m.get("code"), "resume_conflict", m)
        self.assertTrue(a.grep("the lease table here is behind etcd"), a.log_text()[-3000:])
        m = register(a, resume=t1, lease=lease)
        self.assertEqual(m.get("type"), "lease", m)
        self.assertEqual(m.get("lease"), lease)
        self.assertTrue(a.alive() and b.alive())

    def test_a_join_on_a_relay_whose_copy_lacks_the_lease_waits_for_it(self):
        # A sidecar with tunnel.connections 2 joins a second relay right
        # after the first granted its lease, often before the second
        # relay's watch has delivered the grant. The join was refused
        # (join_refused) and the tunnel went to another relay than the
        # sidecar chose, or, with two relays, to none. relay-a now asks etcd
        # first, as for a resume. Here its watch is stuck, so the answer
        # also needs its full read.
        px, a, b = self._relay_a_watching_through_a_proxy()
        self.assertEqual(px.freeze(marked_only=True), 1)
        ca = H.certs().ca
        m = self._lease_msg(b)
        lease, token, ports = m["lease"], m["resume"], m.get("ports")
        time.sleep(0.5)
        self.assertFalse(a.grep("lease=%s" % lease), "relay-a's watch is not stuck")
        second = F.FakeSidecar(a.port, ca, host=a.host).connect().start_h2()
        self.addCleanup(second.close)
        second.send_ctl(F.register_msg(resume="join_" + token, join=lease))
        m = second.read_ctl(15) or {}
        self.assertEqual((m.get("type"), m.get("lease")), ("lease", lease), m)
        self.assertEqual(m.get("ports"), ports)
        self.assertTrue(a.grep("lease=%s: a join waits for the lease table here" % lease),
                        a.log_text()[-3000:])
        self.assertTrue(a.grep("joining lease=%s" % lease))
        # a made-up proof is still refused, after one read of the key
        fs = F.FakeSidecar(a.port, ca, host=a.host).connect().start_h2()
        try:
            fs.send_ctl(F.register_msg(resume="join_" + "0" * len(token), join=lease))
            m = fs.read_ctl(15) or {}
        finally:
            fs.close()
        self.assertEqual((m.get("type"), m.get("code")), ("error", "join_refused"), m)
        self.assertTrue(a.alive() and b.alive())

    def _while_a_grant_here_holds_its_port(self, kind, msg):
        """relay-a's own new lease holds a port (its grant held at the etcd
        proxy) that etcd has given to a lease of relay-b; then msg(lease,
        token) is sent to relay-a. Returns (the answer, relay-b's lease
        message)."""
        px, a, b = self._relay_a_watching_through_a_proxy()
        ca = H.certs().ca
        # relay-a's grant, held at the proxy (within the etcd client's 2.5 s timeout)
        px.delay_next(b"/v3/kv/txn", 1.5)
        x = F.FakeSidecar(a.port, ca, host=a.host).connect().start_h2()
        self.addCleanup(x.close)
        x.send_ctl(F.register_msg(app="on-a"))
        wait_for(px.delaying, 10, "relay-a's grant on its way to etcd")
        m = self._lease_msg(b)
        lease, ports = m["lease"], m.get("ports")
        # what relay-a says of it: the race, not a misconfigured lease
        wait_for(lambda: a.grep("lease=%s: port %d is held here by a grant etcd has not "
                                "answered yet" % (lease, ports["driver"])), 10,
                 "relay-a's copy of relay-b's lease, its port held here")
        self.assertFalse(a.grep("lease=%s: port %d is outside" % (lease, ports["driver"])))
        fs = F.FakeSidecar(a.port, ca, host=a.host).connect().start_h2()
        self.addCleanup(fs.close)
        fs.send_ctl(msg(lease, m["resume"]))
        self.assertTrue(px.delaying(), "relay-a's grant answered first: no test")
        got = fs.read_ctl(15) or {}
        self.assertEqual((got.get("type"), got.get("lease"), got.get("ports")),
                         ("lease", lease, ports), a.log_text()[-3000:])
        self.assertTrue(a.grep("lease=%s: a %s waits for a grant here" % (lease, kind)))
        self.assertTrue(a.grep("granted elsewhere at the same time"))
        # relay-a's own registration ends with other ports
        n = x.read_ctl(15) or {}
        self.assertEqual(n.get("type"), "lease", n)
        self.assertFalse(set(n["ports"].values()) & set(ports.values()), (n, m))
        self.assertTrue(a.alive() and b.alive())
        return got, m

    def test_a_join_waits_while_a_grant_here_holds_its_port(self):
        # Two relays granted the same port at once (each picks from the
        # ports it holds). etcd gave it to relay-b's lease; relay-a's own
        # new lease held it here until its etcd write failed, a few ms.
        # A join of relay-b's lease on relay-a in that window was refused
        # (join_refused) and the sidecar's second tunnel went to a third
        # relay or to none. The join now waits for relay-a's grant.
        self._while_a_grant_here_holds_its_port(
            "join", lambda lease, token: F.register_msg(resume="join_" + token, join=lease))

    def test_a_resume_waits_while_a_grant_here_holds_its_port(self):
        # The same window for a resume (the sidecar's tunnel to relay-b
        # died just after the grant): it was refused as unknown_lease and
        # the sidecar started afresh on new ports, losing its executors.
        got, m = self._while_a_grant_here_holds_its_port(
            "resume", lambda lease, token: F.register_msg(resume=token, lease=lease))
        self.assertNotEqual(got.get("resume"), m["resume"])

    def test_a_lease_granted_while_the_table_is_read_stays_in_the_copy(self):
        # A full read makes relay-a's copy of the lease table what etcd held
        # at the read's first page. A lease relay-a granted while the later
        # pages came was dropped from the copy until the next watch brought
        # it back, and relay-a took its own new lease for one etcd had lost
        # and asked etcd to make it again.
        px, a, b = self._relay_a_watching_through_a_proxy()
        for i in range(0, 1100, 100):  # two pages: over 1,000 keys
            self.etcd.call("/v3/kv/txn", {"success": [
                {"request_put": {"key": E.b64(b"/sparkrelay/other/k-%04d" % j),
                                 "value": E.b64(b"x")}} for j in range(i, i + 100)]})
        self.assertEqual(px.freeze(marked_only=True), 1)
        px.delay_next(b'"revision":', 2.0)  # the read's second page, inside the timeout
        # a join relay-a's stuck watch does not bring makes it read the table
        m, joiner = self._join_on_a_of_a_lease_of_b(a, b)
        wait_for(px.delaying, 15, "relay-a's read of the table at its second page")
        n = self._lease_msg(a)
        self.assertTrue(px.delaying(), "granted after the read had ended: no test")
        m = joiner.read_ctl(20) or {}
        self.assertEqual(m.get("type"), "lease", m)  # the read has ended
        time.sleep(1.0)
        self.assertFalse(a.grep("lease=%s: made again" % n["lease"]), a.log_text()[-3000:])
        self.assertFalse(a.grep("lease=%s ended" % n["lease"]))
        self.assertTrue(a.alive() and b.alive())

    def test_a_deleted_relay_registration_is_written_again(self):
        # relays/<id> deleted by hand (etcdctl del, a clean-up script) while
        # the relay's etcd lease lives: the other relays no longer knew
        # where to carry executors of the relay's leases, until its lease
        # ended, which it never does while it runs.
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        sc = self.start_sidecar("sc", a)
        lease = self.lease_of(sc)
        port = int(lease["ports"]["driver"])
        key = b"/sparkrelay/relays/relay-a"
        tkey = ("/sparkrelay/tunnels/%s/relay-a" % lease["lease"]).encode()
        wait_for(lambda: self.etcd.get(tkey) is not None, 10, "relay-a's tunnels key")

        def raw(k):
            kvs = [kv for kk, _, kv in self.etcd.get_prefix(k) if kk == k]
            return kvs[0] if kvs else None
        value, own = self.etcd.get(key), raw(key)["lease"]
        self.assertIsNotNone(value)
        self.assertEqual(self.etcd.delete(key), 1)
        self.assertEqual(self.etcd.delete(tkey), 1)
        wait_for(lambda: self.etcd.get(key) is not None, 5, "relay-a's registration back")
        wait_for(lambda: self.etcd.get(tkey) is not None, 5, "relay-a's tunnels key back")
        self.assertEqual(self.etcd.get(key), value)
        # on relay-a's own etcd lease, so that they go when relay-a does
        self.assertEqual(raw(key)["lease"], own)
        self.assertEqual(raw(tkey)["lease"], own)
        self.assertTrue(a.grep("keys of this relay were deleted from etcd"))
        # relay-b carries an executor of the lease to relay-a again.
        self.start_driver(lease)
        wait_for(lambda: b.grep("serving its ports here"), 10, "the lease on relay-b")
        s = wait_for(lambda: self._try_connect(b.host, port), 10, "connect via relay-b")
        ok, why = echo_exchange(s, 9, 256 * 1024)
        s.close()
        self.assertTrue(ok, "carried by relay-b: %s" % why)
        self.assertEqual(self.etcd.get(key), value)

    def test_a_failed_write_back_of_deleted_keys_is_tried_again(self):
        # The write-back is one transaction; when etcd refuses it (here:
        # unavailable, twice), the relay tries again with backoff instead
        # of leaving its registration gone until it restarts.
        px, a, b = self._relay_a_watching_through_a_proxy()
        key = b"/sparkrelay/relays/relay-a"
        wait_for(lambda: self.etcd.get(key) is not None, 10, "relay-a's registration")
        value = self.etcd.get(key)
        px.fail_next(b"POST /v3/kv/txn", 2)
        self.assertEqual(self.etcd.delete(key), 1)
        wait_for(lambda: self.etcd.get(key) is not None, 15, "relay-a's registration back")
        self.assertEqual(px.failed, 2, "the write-back never reached etcd through the proxy")
        self.assertEqual(self.etcd.get(key), value)
        self.assertGreaterEqual(len(a.grep("cannot write this relay's keys back to etcd")), 2)
        self.assertTrue(a.alive())

    def _resume_answer(self, relay, timeout=15, **extra):
        fs = F.FakeSidecar(relay.port, H.certs().ca, host=relay.host).connect().start_h2()
        try:
            fs.send_ctl(F.register_msg(resume="not-known-here-%s" % ("x" * 40), **extra))
            return fs.read_ctl(timeout) or {}
        finally:
            fs.close()

    def test_a_stray_tunnels_key_of_a_relay_is_deleted(self):
        # tunnels/<lease>/<id> says "relay <id> holds a tunnel of the lease":
        # other relays carry the lease's executors there. One for a lease
        # without a tunnel on that relay (a put that etcd applied after the
        # delete that followed it) sent them there for good.
        a = self.start_relay("relay-a", HOSTS[0])
        stray = b"/sparkrelay/tunnels/L-5-feed/relay-a"
        other = b"/sparkrelay/tunnels/L-5-feed/relay-z"
        self.etcd.put(other, b"")
        self.etcd.put(stray, b"")
        wait_for(lambda: self.etcd.get(stray) is None, 5, "the stray key deleted")
        self.assertTrue(a.alive())
        self.assertIsNotNone(self.etcd.get(other), "another relay's key was deleted")

    def test_a_resume_while_etcd_is_stopped_keeps_the_token(self):
        # A token relay-a does not know, for a lease it names, while etcd
        # does not answer: the relay cannot tell a made-up token from a
        # lease it has not heard of yet, so the sidecar hears
        # fleet_unavailable and keeps its lease, where it heard
        # unknown_lease and lost it.
        a = self.start_relay("relay-a", HOSTS[0])
        self.etcd.pause()
        try:
            m = self._resume_answer(a, lease="L-9-0ddba11")
        finally:
            self.etcd.resume()
        self.assertEqual(m.get("code"), "fleet_unavailable", m)
        # With etcd back, the same token is refused for what it is; and
        # at once for a sidecar that does not name its lease (older ones).
        self.assertEqual(self._resume_answer(a, lease="L-9-0ddba11").get("code"),
                         "unknown_lease")
        self.etcd.pause()
        try:
            m = self._resume_answer(a, timeout=3)
        finally:
            self.etcd.resume()
        self.assertEqual(m.get("code"), "unknown_lease", m)

    def test_resumes_waiting_for_etcd_are_capped(self):
        # Made-up tokens naming leases, while etcd is slow: at most 32 wait
        # for it; the others hear fleet_unavailable at once instead of
        # holding a handshake slot each (here for 10 s: etcd's answer).
        # etcd's answer awaited for 10 s: the 32 keep waiting while the
        # others connect, even on a slow machine
        a = self.start_relay("relay-a", HOSTS[0], overrides={"relay": {
            "max_handshakes_per_source": 64, "fleet": {"register_wait_ms": 20000}}})
        self.etcd.pause()
        fss = []
        try:
            for i in range(40):
                fs = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
                fss.append(fs)
                fs.send_ctl(F.register_msg(resume="made-up-%d-%s" % (i, "x" * 40),
                                           lease="L-%d-0ddba11" % i))
            # which 8 depends on the order the relay reads them in
            answers, deadline = {}, time.monotonic() + 5.0
            while time.monotonic() < deadline and len(answers) < 8:
                for i, fs in enumerate(fss):
                    if i not in answers:
                        m = fs.read_ctl(0.05)
                        if m:
                            answers[i] = m
            time.sleep(1.0)
            for i, fs in enumerate(fss):
                if i not in answers:
                    m = fs.read_ctl(0.05)
                    if m:
                        answers[i] = m
            self.assertEqual(len(answers), 8, answers)
            for m in answers.values():
                self.assertEqual(m.get("code"), "fleet_unavailable", m)
                self.assertIn("too many registrations wait", m.get("message", ""))
        finally:
            self.etcd.resume()
            for fs in fss:
                fs.close()
        self.assertTrue(a.alive())

    def test_max_tunnels_holds_for_a_resume_in_a_fleet(self):
        a = self.start_relay("relay-a", HOSTS[0], overrides={"relay": {"max_tunnels": 1}})
        b = self.start_relay("relay-b", HOSTS[1])
        s1 = self.start_sidecar("sc1", b)
        self.lease_of(s1)
        s2 = self.start_sidecar("sc2", a)
        self.lease_of(s2)  # relay-a is full now
        s1.kill()
        self.start_sidecar("sc1-again", a, workdir=s1.workdir_)
        self.assertTrue(X.wait_log(a, "registration refused: too_many_tunnels", 15),
                        "a fleet relay resumed a lease past relay.max_tunnels")
        self.assertFalse(a.grep("resumed in the fleet"))

    def test_waiting_executors_follow_the_tunnel(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        c = self.start_relay("relay-c", HOSTS[2])
        s1 = self.start_sidecar("sc1", a)
        l1 = self.lease_of(s1)
        port = self.start_driver(l1)
        wait_for(lambda: c.grep("serving its ports here"), 10, "the lease on relay-c")
        s1.kill()
        # relay-a notices the tunnel is gone and withdraws its tunnels key
        wait_for(lambda: not self.etcd.get_prefix(b"/sparkrelay/tunnels/"), 10,
                 "the tunnels key withdrawn")
        # executors arrive while no relay holds a tunnel: they wait
        waiting = [H.connect(r.host, port) for r in (a, c)]
        time.sleep(0.3)
        t0 = time.monotonic()
        s2 = self.start_sidecar("sc2", b, workdir=s1.workdir_)
        for i, s in enumerate(waiting):
            ok, why = echo_exchange(s, 600 + i, 256 * 1024)
            self.assertTrue(ok, "a waiting executor: %s" % why)
            s.close()
        H.log("measured: executors waiting on two relays served %.2f s after the sidecar "
              "started on a third" % (time.monotonic() - t0))
        self.assertEqual(self.lease_of(s2)["lease"], l1["lease"])

    def test_executor_uncarried_follows_a_tunnel_that_comes_up_later(self):
        """An executor whose carrying failed on every relay (etcd still names
        a holder, but it does not answer) waits on its relay, and is carried
        to the tunnel that comes up later on another relay: it is not taken
        for one carried in by a peer, which never moves again."""
        over = {"relay": {"lease": {"pending_timeout_ms": 60000}}}
        a = self.start_relay("relay-a", HOSTS[0], overrides=over)
        b = self.start_relay("relay-b", HOSTS[1], overrides=over)
        c = self.start_relay("relay-c", HOSTS[2], overrides=over)
        s1 = self.start_sidecar("sc1", a)
        l1 = self.lease_of(s1)
        port = self.start_driver(l1)
        wait_for(lambda: b.grep("serving its ports here"), 10, "the lease on relay-b")
        tkey = ("/sparkrelay/tunnels/%s/relay-a" % l1["lease"]).encode()
        # relay-a dies with the only tunnel: its keys stay in etcd until
        # their TTL (10 s), so relay-b still sends executors there
        a.kill()
        s1.kill()
        self.assertIsNotNone(self.etcd.get(tkey), "relay-a's tunnels key already gone")
        waiting = H.connect(b.host, port)
        wait_for(lambda: b.grep("relay relay-a not reached"), 5,
                 "relay-b trying to carry the executor to the dead relay-a")
        wait_for(lambda: b.grep("waiting for the tunnel"), 5, "the executor waiting on relay-b")
        self.assertEqual(self.metrics(b)["sparkrelay_fleet_carry_failed_total"], 1)
        self.assertIsNotNone(self.etcd.get(tkey), "relay-a's tunnels key expired before the "
                             "executor's carrying failed: the test proves nothing")
        # More executors meanwhile: a log line each would let anyone who
        # can connect grow the log at their connect rate.
        more = [H.connect(b.host, port) for _ in range(20)]
        wait_for(lambda: self.metrics(b)["sparkrelay_fleet_carry_failed_total"] >= 21, 10,
                 "the others' carrying failed too")
        self.assertLessEqual(len(b.grep("not reached")), 2, b.grep("not reached"))
        for s in more:
            s.close()
        # the sidecar comes back on relay-c, neither the executor's relay
        # nor the dead one
        t0 = time.monotonic()
        s2 = self.start_sidecar("sc2", c, workdir=s1.workdir_)
        wait_for(lambda: c.grep("resumed in the fleet"), 20, "the lease resumed on relay-c")
        ok, why = echo_exchange(waiting, 700, 256 * 1024, timeout=20.0)
        waiting.close()
        self.assertTrue(ok, "the executor whose carrying failed: %s" % why)
        H.log("measured: an executor whose carrying failed served %.2f s after the sidecar "
              "started on another relay" % (time.monotonic() - t0))
        self.assertTrue(b.grep("carried to relay relay-c"),
                        "relay-b did not carry the waiting executor to relay-c")
        self.assertEqual(self.lease_of(s2)["lease"], l1["lease"])

    def test_a_draining_relay_withdraws(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        sc = self.start_sidecar("sc", a, more=(b,))
        lease = self.lease_of(sc)
        key = b"/sparkrelay/relays/relay-a"
        tkey = ("/sparkrelay/tunnels/%s/relay-a" % lease["lease"]).encode()
        wait_for(lambda: self.etcd.get(tkey) is not None, 5, "relay-a's tunnels key")
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        # gone long before its 10 s TTL: other relays stop carrying executors there
        wait_for(lambda: self.etcd.get(key) is None and self.etcd.get(tkey) is None, 3,
                 "relay-a withdrawn from etcd")
        H.log("measured: draining relay withdrawn from etcd in %.2f s"
              % (time.monotonic() - t0))
        wait_for(lambda: b.grep("resumed in the fleet"), 20, "the lease resumed on relay-b")
        self.assertEqual(H.read_spark_json(sc.spark_json)["lease"], lease["lease"])

    def test_a_draining_relay_gives_its_carried_connections_time_to_finish(self):
        # relay-b carries an executor connection to relay-a, which holds the
        # tunnel. On SIGTERM relay-b drains: the carried connection has
        # drain_timeout_ms too, as a stream would (it was reset at once).
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1],
                             overrides={"relay": {"drain_timeout_ms": 8000}})
        sc = self.start_sidecar("sc", a)
        lease = self.lease_of(sc)
        port = self.start_driver(lease)
        wait_for(lambda: b.grep("lease=%s: serving its ports here" % lease["lease"]), 10,
                 "the lease on relay-b")
        s = H.connect(b.host, port)
        ok, why = echo_exchange(s, 5, 64 * 1024)
        self.assertTrue(ok, why)
        b.signal(signal.SIGTERM)
        time.sleep(1.0)
        ok, why = echo_exchange(s, 6, 64 * 1024, timeout=5.0)
        self.assertTrue(ok, "the carried connection 1 s into relay-b's drain: %s" % why)
        self.assertTrue(b.alive())
        s.close()
        wait_for(lambda: b.grep("drained: no open streams; exiting"), 10, "relay-b drained")

    def test_concurrent_grants_never_share_a_port(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        n = 6
        scs = []
        for i in range(n):
            scs.append(self.start_sidecar("sc-a%d" % i, a))
            scs.append(self.start_sidecar("sc-b%d" % i, b))
        leases = [self.lease_of(sc, timeout=40) for sc in scs]
        ids = [l["lease"] for l in leases]
        ports = [int(p) for l in leases for p in l["ports"].values()]
        self.assertEqual(len(set(ids)), len(ids), "lease ids repeat: %s" % ids)
        self.assertEqual(len(set(ports)), len(ports), "ports repeat: %s" % sorted(ports))
        conflicts = len(a.grep("granted elsewhere")) + len(b.grep("granted elsewhere"))
        H.log("measured: %d concurrent registrations on 2 relays, %d port conflicts retried"
              % (2 * n, conflicts))

    def test_three_relays_forward_and_survive_a_kill(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        c = self.start_relay("relay-c", HOSTS[2])
        sc = self.start_sidecar("sc", a)
        lease = self.lease_of(sc)
        port = self.start_driver(lease)
        # b and c learn the tunnels key through their watch
        wait_for(lambda: b.grep("serving its ports here") and c.grep("serving its ports here"),
                 10, "the lease's ports on relay-b and relay-c")
        conns = {}
        for r in (a, b, c):
            conns[r.fid] = wait_for(lambda: self._try_connect(r.host, port), 10,
                                    "connect via %s" % r.fid)
        t0 = time.monotonic()
        for i, (name, s) in enumerate(sorted(conns.items())):
            ok, why = echo_exchange(s, 100 + i, 4 * MiB)
            self.assertTrue(ok, "via %s: %s" % (name, why))
        H.log("measured: 3 x 4 MiB echoed through a, b, c in %.2f s" % (time.monotonic() - t0))
        for r in (b, c):
            self.assertTrue(r.grep("carried to relay relay-a"),
                            "%s did not carry its executor to relay-a" % r.name)
            m = self.metrics(r)
            self.assertEqual((m["sparkrelay_fleet_registered"], m["sparkrelay_fleet_leases"],
                              m["sparkrelay_fleet_carried_total"]), (1, 1, 1), r.name)
        self.assertEqual(self.metrics(a)["sparkrelay_fleet_carried_total"], 0)
        b.kill()
        for i, name in enumerate(("relay-a", "relay-c")):
            ok, why = echo_exchange(conns[name], 200 + i, 2 * MiB)
            self.assertTrue(ok, "via %s after relay-b died: %s" % (name, why))
        t0 = time.monotonic()
        s = H.connect(c.host, port, timeout=2.0)
        ok, why = echo_exchange(s, 300, 1 * MiB)
        self.assertTrue(ok, "new connection via relay-c: %s" % why)
        H.log("measured: new connection via a survivor echoed 1 MiB in %.2f s"
              % (time.monotonic() - t0))
        s.close()
        # relay-b restarted with the same id takes the lease's ports back
        t0 = time.monotonic()
        b2 = self.start_relay("relay-b", HOSTS[1])
        wait_for(lambda: b2.grep("serving its ports here"), 10, "relay-b serving again")
        s = wait_for(lambda: self._try_connect(b2.host, port), 10, "connect via relay-b again")
        ok, why = echo_exchange(s, 400, 1 * MiB)
        self.assertTrue(ok, "via the restarted relay-b: %s" % why)
        H.log("measured: restarted relay serves the lease %.2f s after its start"
              % (time.monotonic() - t0))
        self.assertTrue(b2.grep("replacing an earlier registration"),
                        "the restarted relay did not replace its old registration")
        s.close()
        for name in ("relay-a", "relay-c"):
            ok, why = echo_exchange(conns[name], 500, 1 * MiB)
            self.assertTrue(ok, "via %s at the end: %s" % (name, why))
        for s in conns.values():
            s.close()

    def test_relay_with_the_tunnel_killed(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        c = self.start_relay("relay-c", HOSTS[2])
        sc = self.start_sidecar("sc", a, more=(b,))
        lease = self.lease_of(sc)
        port = self.start_driver(lease)
        wait_for(lambda: c.grep("serving its ports here"), 10, "the lease on relay-c")
        s = wait_for(lambda: self._try_connect(c.host, port), 10, "connect via relay-c")
        ok, why = echo_exchange(s, 1, 1 * MiB)
        self.assertTrue(ok, why)
        s.close()
        a.kill()
        t0 = time.monotonic()
        # the sidecar dials relay-b next and resumes its lease there
        wait_for(lambda: b.grep("resumed in the fleet"), 20, "the lease resumed on relay-b")
        H.log("measured: lease resumed on relay-b %.2f s after relay-a was killed"
              % (time.monotonic() - t0))
        s = H.connect(c.host, port, timeout=2.0)
        ok, why = echo_exchange(s, 2, 1 * MiB)
        self.assertTrue(ok, "via relay-c after relay-a died: %s" % why)
        H.log("measured: new connection via relay-c served %.2f s after relay-a was killed"
              % (time.monotonic() - t0))
        s.close()
        l2 = H.read_spark_json(sc.spark_json)
        self.assertEqual((lease["lease"], lease["ports"]), (l2["lease"], l2["ports"]))

    def test_a_cut_tunnel_resumes_on_the_relay_that_holds_its_connections(self):
        # One tunnel, relays [a, b]; the lease moved to relay-b (relay-a
        # died) and relay-a is back. When the tunnel's TCP connection is
        # reset the sidecar must dial relay-b again, where its executor
        # connections wait: it dialled relay-a, first in its list, resumed
        # the lease there and lost every stream (found by the fleet chaos
        # test).
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        sc = self.start_sidecar("sc", a, more=(b,))
        lease = self.lease_of(sc)
        port = self.start_driver(lease)
        a.kill()
        wait_for(lambda: b.grep("resumed in the fleet"), 20, "the lease resumed on relay-b")
        a = self.start_relay("relay-a", HOSTS[0], port=a.port)
        s = H.connect(b.host, port)
        ok, why = echo_exchange(s, 3, 64 * 1024)
        self.assertTrue(ok, why)
        out = subprocess.run(["ss", "-K", "state", "established", "dst", b.host, "dport", "=",
                              ":%d" % b.port], capture_output=True, text=True, timeout=10).stdout
        self.assertIn(str(b.port), out, "no tunnel connection to relay-b to reset")
        ok, why = echo_exchange(s, 4, 64 * 1024, timeout=10.0)
        self.assertTrue(ok, "the executor connection after the tunnel's reset: %s" % why)
        s.close()
        self.assertEqual(len(b.grep("resumed in the fleet")), 2, "relay-b resumed it again")
        self.assertFalse(sc.grep("held streams reset"))

    def test_etcd_stopped(self):
        a = self.start_relay("relay-a", HOSTS[0])
        c = self.start_relay("relay-c", HOSTS[2])
        sc = self.start_sidecar("sc", a)
        lease = self.lease_of(sc)
        port = self.start_driver(lease)
        wait_for(lambda: c.grep("serving its ports here"), 10, "the lease on relay-c")
        s = wait_for(lambda: self._try_connect(c.host, port), 10, "connect via relay-c")
        ok, why = echo_exchange(s, 1, 1 * MiB)
        self.assertTrue(ok, why)
        self.etcd.pause()
        paused = time.monotonic()
        try:
            late = self.start_sidecar("late", a)
            wait_for(lambda: a.grep("fleet_unavailable"), 12, "a registration refused")
            refused_after = time.monotonic() - paused
            ok, why = echo_exchange(s, 2, 2 * MiB)
            self.assertTrue(ok, "while etcd is stopped: %s" % why)
            self.assertFalse(os.path.exists(late.spark_json), "a lease granted without etcd")
            time.sleep(max(0.0, 10.0 - (time.monotonic() - paused)))
        finally:
            self.etcd.resume()
        H.log("measured: registration refused %.1f s into the etcd stop" % refused_after)
        self.lease_of(late, timeout=30)
        ok, why = echo_exchange(s, 3, 1 * MiB)
        self.assertTrue(ok, "after etcd is back: %s" % why)
        s.close()

    def test_a_lease_outlives_an_etcd_outage_longer_than_its_grace(self):
        # etcd stopped for longer than the grace lease's TTL: the relay
        # holding the tunnel cannot keep the grace lease alive, says so and
        # keeps trying; the lease, its ports and its streams go on, and
        # once etcd is back the lease is in etcd again, kept alive (still
        # there past another TTL), and served by every relay.
        grace = {"relay": {"lease": {"grace_s": 5}}}
        a = self.start_relay("relay-a", HOSTS[0], overrides=grace)
        c = self.start_relay("relay-c", HOSTS[2], overrides=grace)
        sc = self.start_sidecar("sc", a)
        lease = self.lease_of(sc)
        port = int(lease["ports"]["driver"])
        key = ("/sparkrelay/leases/%s" % lease["lease"]).encode()
        self.start_driver(lease)
        wait_for(lambda: c.grep("serving its ports here"), 10, "the lease on relay-c")
        conns = [wait_for(lambda: self._try_connect(r.host, port), 10, "connect via " + r.fid)
                 for r in (a, c)]
        self.etcd.pause()
        try:
            wait_for(lambda: a.grep("lease=%s: cannot keep its grace lease alive"
                                    % lease["lease"]), 15, "the grace keepalive failing")
            for i, s in enumerate(conns):
                ok, why = echo_exchange(s, 40 + i, 1 * MiB)
                self.assertTrue(ok, "while etcd is stopped: %s" % why)
        finally:
            self.etcd.resume()
        wait_for(lambda: self.etcd.get(key), 20, "the lease in etcd after the outage")
        time.sleep(7)  # past another grace TTL: the grace lease is kept alive again
        self.assertIsNotNone(self.etcd.get(key), "the lease expired after the outage")
        self.assertEqual(self.etcd.get(b"/sparkrelay/ports/%d" % port), lease["lease"].encode())
        for i, s in enumerate(conns):
            ok, why = echo_exchange(s, 50 + i, 1 * MiB)
            self.assertTrue(ok, "after the outage: %s" % why)
            s.close()
        for r in (a, c):
            s = wait_for(lambda: self._try_connect(r.host, port), 10, "a new connection via "
                         + r.fid)
            ok, why = echo_exchange(s, 60, 64 * 1024)
            s.close()
            self.assertTrue(ok, "a new connection via %s: %s" % (r.fid, why))
        j = H.read_spark_json(sc.spark_json)
        self.assertEqual((j["lease"], j["ports"]), (lease["lease"], lease["ports"]))
        self.assertTrue(a.alive() and c.alive())

    def test_garbage_in_etcd_is_ignored(self):
        # Values in etcd are input too: a relay must neither crash nor bind
        # what a malformed key says.
        bad_port = self.pool_base + POOL - 1
        big_port = self.pool_base + POOL - 2
        wide_port = self.pool_base + POOL - 3
        junk = {
            b"/sparkrelay/leases/L-1-aaaa": b"not json",
            b"/sparkrelay/leases/L-2-bbbb": (b'{"app":"x","tenant":"default","route":"default",'
                                             b'"pool":"default","idkey":"k","roles":1,'
                                             b'"ports":[99999,0,0],"resume":"","prev":""}'),
            b"/sparkrelay/leases/../../x": b"{}",
            b"/sparkrelay/leases/L-3-cccc": (b'{"app":"x","tenant":"default","route":"default",'
                                             b'"pool":"default","idkey":"k","roles":7,'
                                             b'"ports":[%d,%d,%d],"resume":"","prev":""}'
                                             % (bad_port, bad_port, bad_port)),
            b"/sparkrelay/relays/relay-z": b'{"peer": 12}',
            b"/sparkrelay/tunnels/L-3-cccc/relay-z": b"",
            # a well-formed lease, but larger than any the fleet writes
            b"/sparkrelay/leases/L-4-dddd": (b'{"app":"x","tenant":"default","route":"default",'
                                             b'"pool":"default","idkey":"k","roles":1,'
                                             b'"ports":[%d,0,0],"resume":"","prev":"",'
                                             b'"pad":"%s"}' % (big_port, b"x" * 70000)),
            # roles 2^32 + 1 was read as an int: 1, the driver port alone
            b"/sparkrelay/leases/L-5-eeee": (b'{"app":"x","tenant":"default","route":"default",'
                                             b'"pool":"default","idkey":"k","roles":4294967297,'
                                             b'"ports":[%d,0,0],"resume":"","prev":""}'
                                             % wide_port),
        }
        for k, v in junk.items():
            self.etcd.put(k, v)
        a = self.start_relay("relay-a", HOSTS[0])
        sc = self.start_sidecar("sc", a)
        lease = self.lease_of(sc)
        for k, v in junk.items():
            self.etcd.put(k + b"x", v)
        time.sleep(0.5)
        self.assertIsNone(self._try_connect(HOSTS[0], bad_port),
                          "a port bound for a malformed lease")
        self.assertIsNone(self._try_connect(HOSTS[0], big_port),
                          "a port bound for a lease of 70 KB")
        self.assertIsNone(self._try_connect(HOSTS[0], wide_port),
                          "a port bound for a lease whose roles are out of range")
        self.assertTrue(a.grep("more than a fleet value has"))
        self.assertTrue(a.alive())
        self.start_driver(lease)
        s = H.connect(a.host, int(lease["ports"]["driver"]))
        ok, why = echo_exchange(s, 5, 64 * 1024)
        s.close()
        self.assertTrue(ok, why)

    def test_etcd_over_mutual_tls(self):
        tls = E.Etcd("fleet-tls", tls=True).start()
        self.addCleanup(tls.stop)  # after tearDown has stopped the relays
        over = {"relay": {"fleet": {"etcd": [tls.url], "etcd_ca": tls.ca,
                                    "etcd_cert": tls.client_cert,
                                    "etcd_key": tls.client_key}}}
        a = self.start_relay("relay-a", HOSTS[0], overrides=over)
        b = self.start_relay("relay-b", HOSTS[1], overrides=over)
        s1 = self.start_sidecar("sc1", a)
        l1 = self.lease_of(s1)
        s1.kill()
        t0 = time.time()
        time.sleep(0.05)
        s2 = self.start_sidecar("sc2", b, workdir=s1.workdir_)
        l2 = self.lease_of(s2, not_before=t0)
        self.assertEqual((l1["lease"], l1["ports"]), (l2["lease"], l2["ports"]))
        self.assertTrue(tls.get_prefix(b"/sparkrelay/leases/"), "no lease key in etcd")

    def test_release_while_a_resume_waits_for_etcd(self):
        # A resume holds the lease while its etcd write is under way; the
        # lease's old tunnel releases it meanwhile. The resume must be
        # refused, not finished on a freed lease (the relay crashed).
        a = self.start_relay("relay-a", HOSTS[0])
        fs1 = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
        self.addCleanup(fs1.close)
        fs1.send_ctl(F.register_msg())
        lease = fs1.read_ctl(10)
        self.assertEqual((lease or {}).get("type"), "lease", lease)
        wait_for(lambda: a.grep("granted in the fleet"), 10, "the grant")
        fs2 = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
        self.addCleanup(fs2.close)
        self.etcd.pause()
        try:
            fs2.send_ctl(F.register_msg(resume=lease["resume"]))
            time.sleep(0.3)  # the resume's etcd write is sent (and waits)
            fs1.send_ctl({"v": 2, "type": "release"})
            wait_for(lambda: a.grep("lease released by the sidecar"), 5, "the release")
        finally:
            self.etcd.resume()
        m = fs2.read_ctl(10)
        self.assertEqual((m or {}).get("type"), "error", m)
        self.assertEqual(m.get("code"), "unknown_lease", m)
        time.sleep(0.5)
        self.assertTrue(a.alive(), "relay died: %s" % a.sanitizer_lines()[:1])

    def _fake_lease(self, relay):
        fs = F.FakeSidecar(relay.port, H.certs().ca, host=relay.host).connect().start_h2()
        self.addCleanup(fs.close)
        fs.send_ctl(F.register_msg())
        lease = fs.read_ctl(10)
        self.assertEqual((lease or {}).get("type"), "lease", lease)
        key = b"/sparkrelay/leases/" + lease["lease"].encode()
        wait_for(lambda: self.etcd.get(key), 10, "the lease in etcd")
        grace = int([kv for k, _, kv in self.etcd.get_prefix(key) if k == key][0]["lease"])
        return fs, lease, key, grace

    def test_a_port_held_by_another_program_is_bound_once_it_is_free(self):
        # relay-c cannot bind the lease's ports while another program
        # listens on them: it says so, and binds them once they are free,
        # without waiting for the next change in etcd (the fleet is quiet).
        a = self.start_relay("relay-a", HOSTS[0])
        c = self.start_relay("relay-c", HOSTS[2])
        squat = []
        for port in range(self.pool_base, self.pool_base + POOL):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((c.host, port))
                s.listen(1)
                squat.append(s)
            except OSError:
                s.close()
        try:
            sc = self.start_sidecar("sc", a)
            lease = self.lease_of(sc)
            port = int(lease["ports"]["driver"])
            wait_for(lambda: c.grep("lease=%s: cannot bind port" % lease["lease"]), 10,
                     "relay-c failing to bind the lease's port")
            self.assertFalse(c.grep("lease=%s: serving its ports here" % lease["lease"]))
            wait_for(lambda: self.etcd.get(("/sparkrelay/tunnels/%s/relay-a" %
                                            lease["lease"]).encode()) is not None, 10,
                     "the tunnels key")
            rev = self.etcd.revision()
        finally:
            for s in squat:
                s.close()
        self.start_driver(lease)
        t0 = time.monotonic()
        wait_for(lambda: c.grep("lease=%s: serving its ports here" % lease["lease"]), 10,
                 "relay-c serving the lease once its ports are free")
        H.log("measured: ports bound %.1f s after they were freed" % (time.monotonic() - t0))
        self.assertEqual(self.etcd.revision(), rev, "etcd changed meanwhile: not a quiet fleet")
        s = wait_for(lambda: self._try_connect(c.host, port), 10, "connect via relay-c")
        ok, why = echo_exchange(s, 80, 256 * 1024)
        s.close()
        self.assertTrue(ok, why)
        self.assertTrue(a.alive() and c.alive())

    def test_a_lease_etcd_lost_while_its_tunnel_is_up_is_made_again(self):
        # Its grace lease revoked (as when etcd expires it while the relay
        # cannot reach etcd): the lease's keys vanish and its ports are free
        # for any relay to grant; the relay holding its tunnel makes it again.
        a = self.start_relay("relay-a", HOSTS[0])
        fs, lease, key, grace = self._fake_lease(a)
        self.etcd.revoke(grace)
        back = wait_for(lambda: fs.read_ctl(0.2) is None and self.etcd.get(key), 10,
                        "the lease made again in etcd")
        self.assertEqual(back.decode().count(lease["resume"]), 0, "token in clear in etcd")
        for role in ("driver", "blockManager"):
            port = lease["ports"][role]
            self.assertEqual(self.etcd.get(b"/sparkrelay/ports/%d" % port),
                             lease["lease"].encode(), "ports/%d not claimed again" % port)
        self.assertTrue(a.alive())

    def test_a_lease_etcd_lost_with_tunnels_on_two_relays_is_made_again_once(self):
        # Two relays hold a tunnel of the lease (a resume on b while the
        # old tunnel on a is still up): both try to make it again; the one
        # that loses finds it made by the other and keeps serving.
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        fs1, lease, key, grace = self._fake_lease(a)
        fs2 = F.FakeSidecar(b.port, H.certs().ca, host=b.host).connect().start_h2()
        self.addCleanup(fs2.close)
        fs2.send_ctl(F.register_msg(resume=lease["resume"]))
        m = fs2.read_ctl(10)
        self.assertEqual((m or {}).get("type"), "lease", m)
        self.assertEqual(m["lease"], lease["lease"])
        wait_for(lambda: len(self.etcd.get_prefix(
            b"/sparkrelay/tunnels/" + lease["lease"].encode() + b"/")) == 2, 10,
            "tunnels keys of both relays")
        self.etcd.revoke(grace)
        wait_for(lambda: self.etcd.get(key), 10, "the lease made again in etcd")
        for fs in (fs1, fs2):
            m = fs.read_ctl(2)
            self.assertIsNone(m, "a tunnel was told %r" % (m,))
        self.assertTrue(a.alive() and b.alive())
        self.assertTrue(a.grep("made again in etcd") and b.grep("made again in etcd"))

    def test_a_grace_lease_made_again_elsewhere_is_kept_alive_here_too(self):
        # Tunnels of the lease on relay-a and relay-b; etcd loses its grace
        # lease. relay-b makes the lease again on a new grace lease, and
        # relay-a's copy of the table gets the delete and the put together
        # (its watch was stuck), so it never saw the lease gone: it kept no
        # grace lease alive at all, and when relay-b died the lease expired
        # under relay-a's tunnel. relay-a now keeps the new one.
        grace_s = 5
        px, a, b = self._relay_a_watching_through_a_proxy(
            {"relay": {"lease": {"grace_s": grace_s}}})
        fs1, lease, key, grace = self._fake_lease(b)
        fs2 = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
        self.addCleanup(fs2.close)
        fs2.send_ctl(F.register_msg(resume=lease["resume"]))
        m = fs2.read_ctl(10)
        self.assertEqual((m or {}).get("type"), "lease", m)
        wait_for(lambda: len(self.etcd.get_prefix(
            b"/sparkrelay/tunnels/" + lease["lease"].encode() + b"/")) == 2, 10,
            "tunnels keys of both relays")
        self.assertEqual(px.freeze(marked_only=True), 1)

        def grace_now():
            kvs = [kv for k, _, kv in self.etcd.get_prefix(key) if k == key]
            return int(kvs[0]["lease"]) if kvs else None
        self.etcd.revoke(grace)
        remade = wait_for(lambda: grace_now() not in (None, grace) and grace_now(), 10,
                          "relay-b making the lease again")
        wait_for(lambda: a.grep("lease=%s: its grace lease is gone" % lease["lease"]), 15,
                 "relay-a's keeper finding its grace lease gone")
        rev = self.etcd.revision()
        self.assertEqual(px.cut(marked_only=True), 1)  # relay-a watches again
        wait_for(lambda: self.metrics(a)["sparkrelay_fleet_revision"] >= rev, 15,
                 "relay-a's copy catching up")
        self.assertFalse(a.grep("lease=%s: made again in etcd after" % lease["lease"]),
                         "relay-a saw the lease gone: not the case under test")
        b.kill()
        time.sleep(grace_s + 4)
        self.assertEqual(grace_now(), remade,
                         "the lease's grace lease expired with relay-b (now %s)" % grace_now())
        self.assertIsNone(fs2.read_ctl(0.5))
        self.assertTrue(a.alive())

    def test_a_lease_etcd_lost_whose_port_went_elsewhere_ends(self):
        # Its driver port taken by another lease before the relay could make
        # it again: executors of that lease must not reach this lease's
        # driver, so the relay ends this one and closes its ports.
        a = self.start_relay("relay-a", HOSTS[0])
        fs, lease, key, grace = self._fake_lease(a)
        port = lease["ports"]["driver"]
        self.etcd.put(b"/sparkrelay/ports/%d" % port, b"L-other")  # off the grace lease
        self.etcd.revoke(grace)
        m = fs.read_ctl(10)
        self.assertEqual((m or {}).get("type"), "error", m)
        self.assertEqual(m.get("code"), "revoked", m)
        wait_for(lambda: self._try_connect(a.host, port) is None, 5, "the port closed")
        self.assertIsNone(self.etcd.get(key), "the lease made again over another's port")
        self.assertTrue(a.alive())

    def _lease_on_a_served_by_b(self):
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1])
        fs, lease, key, grace = self._fake_lease(a)
        wait_for(lambda: b.grep("serving its ports here"), 10, "the lease on relay-b")
        return a, b, fs, lease

    def test_a_peer_address_from_etcd_is_checked(self):
        # relays/<id> names where other relays carry executors: 0.0.0.0:P
        # reaches this very host's port P (Linux), so whoever can write it
        # could send executors' bytes to any local service.
        a, b, fs, lease = self._lease_on_a_served_by_b()
        trap = socket.socket()
        self.addCleanup(trap.close)
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.settimeout(2.0)
        tport = trap.getsockname()[1]
        lid = lease["lease"].encode()
        self.etcd.put(b"/sparkrelay/relays/relay-z", b'{"peer": "0.0.0.0:%d"}' % tport)
        self.etcd.put(b"/sparkrelay/relays/relay-y",
                      b'{"peer": "\x1b[2J127.0.0.1:%d"}' % tport)
        self.etcd.put(b"/sparkrelay/tunnels/" + lid + b"/relay-z", b"")
        self.etcd.put(b"/sparkrelay/tunnels/" + lid + b"/relay-y", b"")
        # relay-a's own key gone: relay-z and relay-y are the only holders
        self.etcd.delete(b"/sparkrelay/tunnels/" + lid + b"/relay-a")
        wait_for(lambda: b.grep("relay relay-y: its peer address"), 10,
                 "relay-b refusing relay-y's address")
        ex = H.connect(b.host, int(lease["ports"]["driver"]))
        self.addCleanup(ex.close)
        ex.sendall(b"executor bytes")
        try:
            c, _ = trap.accept()
            c.close()
            self.fail("relay-b dialled a peer address etcd gave it unchecked")
        except socket.timeout:
            pass
        self.assertTrue(b.grep("relay relay-z: its peer address 0.0.0.0:%d" % tport))
        self.assertNotIn("\x1b", b.log_text(), "etcd text logged unescaped")
        self.assertTrue(b.alive())

    def test_lease_ports_outside_the_pool_are_not_bound(self):
        # A lease in etcd whose port is outside this relay's pool: checked
        # before anything is bound (it was bound, then refused).
        a = self.start_relay("relay-a", HOSTS[0])
        outside = H.free_port(HOSTS[0])
        self.etcd.put(b"/sparkrelay/leases/L-9-dddd",
                      b'{"app":"x","tenant":"default","route":"default","pool":"default",'
                      b'"idkey":"k","roles":1,"ports":[%d,0,0],"resume":"","prev":""}' % outside)
        wait_for(lambda: a.grep("lease=L-9-dddd"), 10, "relay-a reading the lease")
        self.assertTrue(a.grep("lease=L-9-dddd: port %d is outside pool default's range"
                               % outside), a.grep("lease=L-9-dddd"))
        self.assertIsNone(self._try_connect(HOSTS[0], outside))
        self.assertTrue(a.alive())

    def test_a_key_with_a_nul_byte_does_not_alias_a_lease(self):
        # "leases/<id>\0x" put and deleted: the mirror's keys are C strings,
        # and the delete removed leases/<id> itself (its ports closed on
        # relay-b while the lease lives on).
        a, b, fs, lease = self._lease_on_a_served_by_b()
        alias = b"/sparkrelay/leases/" + lease["lease"].encode() + b"\0x"
        self.etcd.put(alias, b"junk")
        self.etcd.delete(alias)
        # a key put after them: once relay-b has it, it has seen both
        self.etcd.put(b"/sparkrelay/relays/relay-w", b'{"peer": "not an address"}')
        wait_for(lambda: b.grep("relay relay-w: its peer address"), 10,
                 "relay-b reading the keys")
        time.sleep(0.3)
        s = self._try_connect(b.host, int(lease["ports"]["driver"]))
        self.assertIsNotNone(s, "relay-b closed the lease's port")
        s.close()
        self.assertTrue(b.grep("holds a NUL byte"))
        self.assertTrue(b.alive())

    def test_a_change_in_etcd_costs_linear_time_in_the_leases(self):
        # With L leases served here and K keys mirrored, a change in etcd
        # cost O(K x L) (a scan of the mirror per lease); now O(K + L). 1,000
        # leases and 200 changes: the relay's CPU time for them, which was
        # seconds, is a small fraction of that.
        n, changes = 1000, 200
        base = H.pick_pool_base(n, hosts=(HOSTS[0],))
        over = {"relay": {"pool": {"port_min": base, "port_max": base + n - 1}}}
        for i in range(0, n, 100):
            ops = []
            for k in range(i, min(n, i + 100)):
                v = ('{"app":"x","tenant":"default","route":"default","pool":"default",'
                     '"idkey":"k","roles":1,"ports":[%d,0,0],"resume":"%s","prev":""}'
                     % (base + k, "%064x" % k))
                ops.append({"request_put": {"key": E.b64(b"/sparkrelay/leases/L-%d-scale" % k),
                                            "value": E.b64(v.encode())}})
            self.etcd.call("/v3/kv/txn", {"success": ops})
        a = self.start_relay("relay-a", HOSTS[0], overrides=over)
        wait_for(lambda: len(a.grep("serving its ports here")) == n, 60, "every lease bound")

        def cpu_s():
            with open("/proc/%d/stat" % a.p.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        t0 = cpu_s()
        for i in range(changes):
            self.etcd.put(b"/sparkrelay/other/%d" % i, b"x")
        # a key it logs, put last: once logged, every change before it is done
        self.etcd.put(b"/sparkrelay/relays/relay-s", b'{"peer": "sentinel"}')
        wait_for(lambda: a.grep("relay relay-s: its peer address"), 120, "the changes read")
        took = cpu_s() - t0
        H.log("measured: %d changes in etcd with %d leases served cost the relay %.2f s CPU"
              % (changes, n, took))
        self.assertLess(took, 1.0, "a change in etcd costs %.1f ms CPU with %d leases"
                        % (1000 * took / changes, n))

    def test_carried_connections_count_against_the_lease_limit(self):
        # Executor connections a relay carries to the relay that holds the
        # tunnel used to count against none of its limits: relay-b let any
        # number through, whatever its max_lease_connections said.
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1],
                             overrides={"relay": {"max_lease_connections": 3}})
        s1 = self.start_sidecar("sc1", a)
        l1 = self.lease_of(s1)
        port = self.start_driver(l1)
        wait_for(lambda: b.grep("lease=%s: serving its ports here" % l1["lease"]), 10,
                 "the lease on relay-b")
        kept = []
        for i in range(3):
            s = H.connect(b.host, port)
            kept.append(s)
            ok, why = echo_exchange(s, 900 + i, 64 * 1024)
            self.assertTrue(ok, "carried connection %d: %s" % (i, why))
        def carried(seed, timeout):
            try:
                s = H.connect(b.host, port)
            except OSError:
                return False  # reset at once
            kept.append(s)
            try:
                return echo_exchange(s, seed, 1024, timeout=timeout)[0]
            except OSError:
                return False

        for i in range(2):
            self.assertFalse(carried(950 + i, 5.0), "a connection over relay-b's "
                             "max_lease_connections was carried")
        key = 'sparkrelay_refused_total{reason="lease_connection_limit"}'
        wait_for(lambda: self.metrics(b).get(key) == 2, 5, "two refusals counted")
        # One closed: room for another once relay-b has seen it end.
        kept[0].close()
        seeds = iter(range(1000, 1100))
        wait_for(lambda: carried(next(seeds), 2.0), 10, "a connection after one closed")
        for s in kept:
            s.close()

    def test_carried_connections_still_count_once_the_lease_is_bound_again(self):
        # etcd loses the lease's grace lease: relay-b drops its copy of the
        # lease while it carries connections of it, and binds it again when
        # relay-a makes it again. The connections it carries meanwhile used
        # to count against the old copy only, so the new one let
        # max_lease_connections more through.
        a = self.start_relay("relay-a", HOSTS[0])
        b = self.start_relay("relay-b", HOSTS[1],
                             overrides={"relay": {"max_lease_connections": 2}})
        s1 = self.start_sidecar("sc1", a)
        l1 = self.lease_of(s1)
        port = self.start_driver(l1)
        served = "lease=%s: serving its ports here" % l1["lease"]
        wait_for(lambda: b.grep(served), 10, "the lease on relay-b")
        kept = []
        for i in range(2):
            s = H.connect(b.host, port)
            kept.append(s)
            ok, why = echo_exchange(s, 1200 + i, 64 * 1024)
            self.assertTrue(ok, "carried connection %d: %s" % (i, why))
        key = b"/sparkrelay/leases/" + l1["lease"].encode()
        grace = int([kv for k, _, kv in self.etcd.get_prefix(key) if k == key][0]["lease"])
        self.etcd.revoke(grace)
        wait_for(lambda: len(b.grep(served)) >= 2, 15, "relay-b serving the lease again")
        for i, s in enumerate(kept):
            ok, why = echo_exchange(s, 1300 + i, 4096)
            self.assertTrue(ok, "carried connection %d after the lease came back: %s" % (i, why))
        try:
            s = H.connect(b.host, port)
            kept.append(s)
            ok = echo_exchange(s, 1400, 1024, timeout=5.0)[0]
        except OSError:
            ok = False  # reset at once
        self.assertFalse(ok, "a third connection was carried past relay-b's "
                         "max_lease_connections of 2")
        key = 'sparkrelay_refused_total{reason="lease_connection_limit"}'
        wait_for(lambda: self.metrics(b).get(key) == 1, 5, "the refusal counted")
        for s in kept:
            s.close()

    def test_a_table_over_64_mib_is_read_in_smaller_pages(self):
        # The table is read in pages of 1,000 keys. Large values of other
        # writers under the prefix (here 70 of almost 1 MiB) made the one
        # read of the whole table fail for good (an answer over 64 MiB):
        # a page too large (over 64 MiB, or too slow to come through the
        # proxy within the timeout) is now asked again at an eighth of the
        # size, and the relay's later reads keep that size.
        junk = b"x" * (1024 * 1024 - 256)
        for i in range(70):
            self.etcd.put(b"/sparkrelay/other/junk-%d" % i, junk)
        self.etcd.put(b"/sparkrelay/zz/after-the-junk", b"1")
        px = FreezingProxy(("127.0.0.1", self.etcd.port), mark=b"POST /v3/watch")
        self.addCleanup(px.close)
        a = self.start_relay("relay-a", HOSTS[0], wait=False, overrides={"relay": {"fleet": {
            "etcd": ["http://127.0.0.1:%d" % px.port]}}})
        a.wait_ready(lambda: a.grep("lease table read from etcd"), 60, "the table read")
        smaller = len(a.grep("a page of the fleet's keys"))
        self.assertGreaterEqual(smaller, 1)
        line = a.grep("lease table read from etcd")[0]
        m = re.search(r"\((\d+) keys in (\d+) pages", line)
        self.assertIsNotNone(m, line)
        # 70 junk keys, the last one, and perhaps relay-a's own registration
        self.assertIn(int(m.group(1)), (71, 72), line)
        self.assertGreaterEqual(int(m.group(2)), 2, line)
        # and the relay works: a sidecar gets a lease from it
        sc = self.start_sidecar("sc", a)
        self.assertTrue(self.lease_of(sc)["lease"])
        # A second read (a join its stuck watch does not bring) asks for
        # small pages at once, not for 64 MiB again.
        b = self.start_relay("relay-b", HOSTS[1], wait=False)
        b.wait_ready(lambda: b.grep("lease table read from etcd"), 60, "relay-b's table read")
        wait_for(px.marked, 10, "relay-a's watch")
        self.assertEqual(px.freeze(marked_only=True), 1)
        m, _ = self._join_on_a_of_a_lease_of_b(a, b)
        # (the join may end first: 72 MiB through the proxy take about 5 s)
        wait_for(lambda: a.grep("lease=%s: serving its ports here" % m["lease"]), 60,
                 "relay-a's second read of the table")
        self.assertTrue(a.grep("reading every key again"))
        # Its pages start at the size the first read ended with: any page
        # it shrinks further (a loaded machine can make 15 MiB late too)
        # is smaller still, never 125 keys (an eighth of 1,000) again.
        sizes = [int(re.search(r"reading (\d+) keys a page", ln).group(1))
                 for ln in a.grep("a page of the fleet's keys")]
        self.assertTrue(all(n < min(sizes[:smaller]) for n in sizes[smaller:]),
                        "page sizes %s (the first read's: %s)" % (sizes, sizes[:smaller]))

    def test_a_relay_is_ready_once_it_has_joined_the_fleet(self):
        # A relay that cannot reach etcd at start cannot grant a lease: its
        # /readyz says why with 503 (discovery then leaves it out), a
        # registration sent to it anyway is refused within its bound, and
        # once etcd answers it joins, turns ready and grants the lease the
        # sidecar asks for again.
        no_read = FreezingProxy(("127.0.0.1", self.etcd.port))
        no_grant = FreezingProxy(("127.0.0.1", self.etcd.port))
        for px in (no_read, no_grant):
            self.addCleanup(px.close)
        no_read.fail_next(b"POST /v3/kv/range", 10**6)
        no_grant.fail_next(b"POST /v3/lease/grant", 10**6)
        a = self.start_relay("relay-a", HOSTS[0], wait=False, overrides={"relay": {"fleet": {
            "etcd": ["http://127.0.0.1:%d" % no_read.port], "register_wait_ms": 1500}}})
        b = self.start_relay("relay-b", HOSTS[1], wait=False, overrides={"relay": {"fleet": {
            "etcd": ["http://127.0.0.1:%d" % no_grant.port]}}})
        wait_for(lambda: a.grep("cannot read the fleet's keys"), 20, "relay-a's read failing")
        wait_for(lambda: b.grep("cannot get an etcd lease for this relay"), 20,
                 "relay-b's registration failing")
        wait_for(lambda: b.grep("lease table read from etcd"), 20, "relay-b's table read")
        self.assertEqual(readyz(a), (503, "not ready: the fleet's lease table not read from "
                                          "etcd yet"))
        self.assertEqual(readyz(b), (503, "not ready: not registered in the fleet (etcd) yet"))
        self.assertIn("\nsparkrelay_ready 0\n", admin_get(b, "/metrics"))
        sc = self.start_sidecar("sc", a)
        wait_for(lambda: a.grep("did not answer within 1500 ms"), 20, "the registration's bound")
        self.assertFalse(os.path.exists(sc.spark_json), "a lease granted without etcd")
        no_read.fail_next(b"POST /v3/kv/range", 0)
        no_grant.fail_next(b"POST /v3/lease/grant", 0)
        for r in (a, b):
            wait_for(lambda: readyz(r) == (200, "ready"), 30, "%s ready" % r.fid)
        lease = self.lease_of(sc, timeout=30)
        self.assertIn(int(lease["ports"]["driver"]),
                      range(self.pool_base, self.pool_base + POOL))
        self.assertIn("\nsparkrelay_ready 1\n", admin_get(b, "/metrics"))
        self.assertTrue(a.alive() and b.alive())

    def test_a_read_of_the_table_that_fails_is_retried_with_backoff(self):
        # A read of the table that fails was asked again every second, by
        # every relay of the fleet. Retries back off now (1 s doubling,
        # +-25 %); once etcd answers, the relay reads the table.
        px = FreezingProxy(("127.0.0.1", self.etcd.port))
        self.addCleanup(px.close)
        px.fail_next(b"POST /v3/kv/range", 1000)
        a = self.start_relay("relay-a", HOSTS[0], wait=False, overrides={"relay": {"fleet": {
            "etcd": ["http://127.0.0.1:%d" % px.port]}}})
        t0 = time.monotonic()
        wait_for(lambda: a.grep("cannot read the fleet's keys"), 20, "the first read failing")
        time.sleep(max(0.0, 12.0 - (time.monotonic() - t0)))
        tries = len(a.grep("cannot read the fleet's keys"))
        H.log("measured: %d failed reads of the table in 12 s" % tries)
        # 1 s, then about 2 and 4 s later: at most 5 in 12 s (it was 8-10)
        self.assertLessEqual(tries, 5, a.grep("cannot read the fleet's keys"))
        self.assertGreaterEqual(tries, 2, "the read was not tried again")
        self.assertGreaterEqual(px.failed, tries)
        px.fail_next(b"POST /v3/kv/range", 0)
        a.wait_ready(lambda: a.grep("lease table read from etcd"), 30, "the table read")
        self.assertTrue(a.alive())

    def test_a_reload_serves_the_leases_it_now_can(self):
        # A lease of a route this relay does not have is not served here.
        # A reload that adds the route serves it, with no change in etcd to
        # prompt it (the relay matched leases only when etcd changed).
        port = self.pool_base + 3
        v = ('{"app":"x","tenant":"default","route":"r2","pool":"default","idkey":"k",'
             '"roles":1,"ports":[%d,0,0],"resume":"%064x","prev":""}' % (port, 7))
        self.etcd.put(b"/sparkrelay/leases/L-7-later", v.encode())
        a = self.start_relay("relay-a", HOSTS[0])
        wait_for(lambda: a.grep("lease=L-7-later: not served here"), 10, "the lease skipped")
        path = os.path.join(self.dir, "relay-a.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["relay"]["routes"] = [{"name": "default"}, {"name": "r2"}]
        H.write_config(path, cfg)
        os.kill(a.p.pid, signal.SIGHUP)
        wait_for(lambda: a.grep("configuration reloaded"), 10, "the reload")
        wait_for(lambda: a.grep("lease=L-7-later: serving its ports here"), 10,
                 "the lease served after the reload")

    def _foreign_leases(self, n):
        """n leases in etcd of a pool no relay here has; a relay started now."""
        for i in range(0, n, 100):
            ops = []
            for k in range(i, min(n, i + 100)):
                v = ('{"app":"x","tenant":"default","route":"default","pool":"elsewhere",'
                     '"idkey":"k","roles":1,"ports":[%d,0,0],"resume":"%064x","prev":""}'
                     % (20000 + k % 1000, k))
                ops.append({"request_put": {"key": E.b64(b"/sparkrelay/leases/L-%d-many" % k),
                                            "value": E.b64(v.encode())}})
            self.etcd.call("/v3/kv/txn", {"success": ops})
        a = self.start_relay("relay-a", HOSTS[0])
        wait_for(lambda: len(a.grep(": not served here")) >= n, 60, "every lease read")
        return a

    @staticmethod
    def _cpu_s(proc):
        with open("/proc/%d/stat" % proc.p.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def test_made_up_resume_tokens_cost_little_with_many_leases(self):
        # A resume compares the token's digest with every lease's in the
        # mirror. Each lease's JSON was parsed for that, on the event loop,
        # so anyone who reaches the tunnel port (no sidecar authentication by
        # default) could stall every tunnel with made-up tokens: 135 ms a try
        # at 20,000 leases. The digests are read once, when a lease arrives.
        n, tries = 10000, 20
        a = self._foreign_leases(n)
        t0 = self._cpu_s(a)
        for i in range(tries):
            fs = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
            try:
                # naming a lease that exists: the relay asks etcd about it
                fs.send_ctl(F.register_msg(resume="made-up-%d-%s" % (i, "x" * 40),
                                           lease="L-%d-many" % i))
                m = fs.read_ctl(10)
            finally:
                fs.close()
            self.assertEqual((m or {}).get("code"), "unknown_lease", m)
        took = self._cpu_s(a) - t0
        H.log("measured: %d resumes with made-up tokens against %d leases cost the relay "
              "%.2f s CPU" % (tries, n, took))
        # With the JSON parsed each try: 5.6 s here (ASan); now 0.6 s, most
        # of it the TLS handshakes.
        self.assertLess(took, 2.0, "a made-up resume costs %.0f ms CPU with %d leases"
                        % (1000 * took / tries, n))
        self.assertTrue(a.alive())

    def test_leases_of_another_pool_cost_nothing_per_change(self):
        # Relays of a fleet may serve different pools. Every change in etcd
        # reconciles the leases not bound here, and each such lease's JSON
        # was parsed again to learn that its pool is not configured here:
        # 122 ms of the event loop per change at 20,000 of them. That
        # outcome now holds until the lease's value or the configuration
        # changes.
        n, changes = 10000, 50
        a = self._foreign_leases(n)
        t0 = self._cpu_s(a)
        for i in range(changes):
            self.etcd.put(b"/sparkrelay/other/%d" % i, b"x")
        self.etcd.put(b"/sparkrelay/relays/relay-s", b'{"peer": "sentinel"}')
        wait_for(lambda: a.grep("relay relay-s: its peer address"), 120, "the changes read")
        took = self._cpu_s(a) - t0
        H.log("measured: %d changes in etcd with %d leases of another pool cost the relay "
              "%.2f s CPU" % (changes, n, took))
        self.assertLess(took, 1.0, "a change in etcd costs %.0f ms CPU with %d leases of "
                        "another pool" % (1000 * took / changes, n))
        # A lease whose value changes is looked at again: now of this
        # relay's pool, it is served.
        self.etcd.put(b"/sparkrelay/leases/L-0-many", (
            '{"app":"y","tenant":"default","route":"default","pool":"default","idkey":"k",'
            '"roles":1,"ports":[%d,0,0],"resume":"%064x","prev":""}'
            % (self.pool_base, 0)).encode())
        wait_for(lambda: a.grep("lease=L-0-many: serving its ports here"), 10,
                 "the changed lease served")

    def test_a_takeover_of_a_fleet_relay_keeps_leases_streams_and_registration(self):
        # relay-a taken over by a new process (live handover) on its node:
        # executor connections through it (streams of its own tunnel's
        # lease, one another relay carried to it, one it carries to another
        # relay) continue byte-exact, it stays registered under its id with
        # its fixed peer port, and it goes on serving both leases past
        # their grace period.
        ho = os.path.join(tempfile.mkdtemp(prefix="ho-", dir=H.root_dir()), "ho.sock")
        peer_port = H.free_port(HOSTS[0])
        over = {"relay": {"handover_socket": ho, "handover_timeout_ms": 10000,
                          "lease": {"grace_s": 5, "resume_hold_s": 60},
                          "fleet": {"peer_listen": "%s:%d" % (HOSTS[0], peer_port)}}}
        a = self.start_relay("relay-a", HOSTS[0], overrides=over)
        b = self.start_relay("relay-b", HOSTS[1], overrides={"relay": {"lease": {"grace_s": 5}}})
        s1 = self.start_sidecar("sc1", a)
        s2 = self.start_sidecar("sc2", b)
        l1, l2 = self.lease_of(s1), self.lease_of(s2)
        p1, p2 = int(l1["ports"]["driver"]), int(l2["ports"]["driver"])
        self.driver = H.Driver({"driver": p1})
        self.driver.start()
        d2 = H.Driver({"driver": p2})
        d2.start()
        self.addCleanup(d2.stop)
        wait_for(lambda: a.grep("lease=%s: serving its ports here" % l2["lease"]) and
                 b.grep("lease=%s: serving its ports here" % l1["lease"]), 10,
                 "each relay serving the other's lease")
        conns = {"a to its lease": H.connect(a.host, p1), "b to a's lease": H.connect(b.host, p1),
                 "a to b's lease": H.connect(a.host, p2)}
        for i, (name, s) in enumerate(sorted(conns.items())):
            ok, why = echo_exchange(s, 700 + i, 256 * 1024)
            self.assertTrue(ok, "%s before the takeover: %s" % (name, why))
        t0 = time.monotonic()
        new = self.takeover_proc("relay-a-new", a)
        rc = a.p.wait(20)
        self.assertEqual(rc, 0, "the old relay-a exited %s" % rc)
        wait_for(lambda: new.grep("resumed in the fleet"), 20, "the lease resumed on relay-a")
        H.log("measured: fleet relay taken over, its lease resumed %.2f s after the start"
              % (time.monotonic() - t0))
        for i, (name, s) in enumerate(sorted(conns.items())):
            ok, why = echo_exchange(s, 710 + i, 1 * MiB)
            self.assertTrue(ok, "%s after the takeover: %s" % (name, why))
        self.assertTrue(new.grep("registered in the fleet as relay-a (peer address %s:%d)"
                                 % (HOSTS[0], peer_port)), "relay-a not registered again")
        tkey = ("/sparkrelay/tunnels/%s/relay-a" % l1["lease"]).encode()
        wait_for(lambda: self.etcd.get(b"/sparkrelay/relays/relay-a") and self.etcd.get(tkey)
                 is not None, 10, "relay-a's registration and tunnels key")
        # the new process joined the fleet itself: ready (the readiness probe)
        wait_for(lambda: readyz(new) == (200, "ready"), 10, "relay-a ready after the takeover")
        self.assertEqual((H.read_spark_json(s1.spark_json)["lease"],
                          H.read_spark_json(s1.spark_json)["ports"]), (l1["lease"], l1["ports"]))
        # past grace_s: leases are etcd's to end, not a local timer's
        time.sleep(6)
        for host, port in ((a.host, p1), (a.host, p2), (b.host, p1)):
            s = wait_for(lambda: self._try_connect(host, port), 5,
                         "connect to %s:%d after the grace period" % (host, port))
            ok, why = echo_exchange(s, 720, 64 * 1024)
            s.close()
            self.assertTrue(ok, "%s:%d after the grace period: %s" % (host, port, why))
        for s in conns.values():
            s.close()
        self.assertTrue(new.alive() and b.alive())

    def test_a_relay_taken_over_during_an_etcd_outage_is_ready_once_etcd_is_back(self):
        # A rolling update while etcd is down: the sidecars the new process
        # took over cannot resume before etcd confirms it (another relay
        # might hold the lease by then), so its executors wait. The new
        # process is not ready meanwhile, which holds the rollout on this
        # node instead of doing the same to every node. Once etcd is back
        # it joins, turns ready, and the lease is resumed and served.
        a, sc, lease, port = self.handover_relay(lease={"pending_timeout_ms": 30000})
        self.assertEqual(readyz(a), (200, "ready"))
        self.etcd.pause()
        try:
            new = self.takeover_proc("relay-a-new", a)
            self.assertEqual(a.p.wait(20), 0, "the old relay-a did not hand over")
            wait_for(lambda: admin_port(new), 10, "the new relay's admin API")
            self.assertEqual(readyz(new)[0], 503)
            s = wait_for(lambda: self._try_connect(a.host, port), 10, "connect to the lease")
            time.sleep(2)
            self.assertEqual(readyz(new)[0], 503)
        finally:
            self.etcd.resume()
        # the executor that waited is served once the sidecar has resumed
        ok, why = echo_exchange(s, 90, 256 * 1024)
        s.close()
        self.assertTrue(ok, "the executor that waited through the outage: %s" % why)
        wait_for(lambda: readyz(new) == (200, "ready"), 30, "relay-a ready once etcd is back")
        self.assertEqual(H.read_spark_json(sc.spark_json)["lease"], lease["lease"])
        self.assertTrue(new.alive())

    def test_a_takeover_is_refused_while_the_relay_is_not_registered_in_etcd(self):
        # etcd unreachable for longer than the relay's registration TTL: a
        # new process could not resume the sidecars, so the running relay
        # refuses the takeover and goes on serving; once it is registered
        # again the takeover goes through.
        a, sc, lease, port = self.handover_relay(fleet={"ttl_s": 2})
        s = wait_for(lambda: self._try_connect(a.host, port), 10, "connect to the lease")
        self.etcd.pause()
        try:
            wait_for(lambda: a.grep("this relay's registration in etcd is lost"), 15,
                     "relay-a's registration lost")
            late = self.takeover_proc("relay-a-late", a)
            self.assertNotEqual(late.p.wait(20), 0, "the takeover was not refused")
            self.assertTrue(late.grep("this relay is not registered in the fleet's etcd now"),
                            late.tail())
            self.assertTrue(a.alive())
            ok, why = echo_exchange(s, 95, 256 * 1024)
            self.assertTrue(ok, "after the refused takeover: %s" % why)
        finally:
            self.etcd.resume()
        wait_for(lambda: len(a.grep("registered in the fleet as relay-a")) >= 2, 30,
                 "relay-a registered again")
        self.takeover_proc("relay-a-new", a)
        self.assertEqual(a.p.wait(20), 0, "the takeover after etcd came back")
        ok, why = echo_exchange(s, 96, 256 * 1024)
        s.close()
        self.assertTrue(ok, "after the takeover: %s" % why)

    def test_one_resume_token_on_two_relays_at_once_resumes_once(self):
        # Both relays check the token against the same revision of the
        # lease; their writes reach etcd together (it is paused meanwhile).
        # An unconditional write let both resume it.
        a, b, fs, lease = self._lease_on_a_served_by_b()
        fa = F.FakeSidecar(a.port, H.certs().ca, host=a.host).connect().start_h2()
        fb = F.FakeSidecar(b.port, H.certs().ca, host=b.host).connect().start_h2()
        self.addCleanup(fa.close)
        self.addCleanup(fb.close)
        self.etcd.pause()
        try:
            fa.send_ctl(F.register_msg(resume=lease["resume"]))
            fb.send_ctl(F.register_msg(resume=lease["resume"]))
            time.sleep(0.4)  # both writes sent, both waiting on etcd
        finally:
            self.etcd.resume()
        answers = [fa.read_ctl(10), fb.read_ctl(10)]
        types = sorted((m or {}).get("type") for m in answers)
        self.assertEqual(types, ["error", "lease"], answers)
        err = [m for m in answers if m["type"] == "error"][0]
        self.assertEqual(err.get("code"), "resume_conflict", err)
        won = [m for m in answers if m["type"] == "lease"][0]
        self.assertEqual(won["lease"], lease["lease"])
        self.assertTrue(a.alive() and b.alive())

    @staticmethod
    def metrics(relay):
        m = re.search(r"\[relay admin 127\.0\.0\.1:(\d+)\] admin API listening",
                      relay.log_text())
        body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % m.group(1),
                                      timeout=5).read().decode()
        return {l.split()[0]: float(l.split()[1]) for l in body.splitlines()
                if l and not l.startswith("#")}

    def _lease_held_by(self, relay, lease_id, peers):
        """A lease in etcd whose tunnels, etcd says, are on relays at peers
        (host:port each, none of them a relay); waits for relay to serve it:
        its driver port."""
        P = self.pool_base
        lease = {"app": "x", "tenant": "default", "route": "default", "pool": "default",
                 "idkey": "k", "roles": 7, "ports": [P, P + 1, P + 2], "resume": "0" * 64,
                 "prev": ""}
        for i, peer in enumerate(peers):
            self.etcd.put(b"/sparkrelay/relays/ghost%d" % i,
                          json.dumps({"peer": peer, "tunnel": "x"}).encode())
            self.etcd.put(b"/sparkrelay/tunnels/%s/ghost%d" % (lease_id.encode(), i), b"")
        self.etcd.put(b"/sparkrelay/leases/" + lease_id.encode(), json.dumps(lease).encode())
        wait_for(lambda: relay.grep("lease=%s: serving its ports here" % lease_id), 10,
                 "the lease")
        return P

    def _executor_waits(self, host, port, limit):
        """Connect an executor that sends nothing: (seconds until the relay
        closed it, the bytes it got)."""
        s = socket.create_connection((host, port), timeout=5)
        t0 = time.monotonic()
        s.settimeout(limit)
        try:
            got = s.recv(1)
        except socket.timeout:
            self.fail("the executor still waits %d s after it connected" % limit)
        except OSError:
            got = b""
        finally:
            s.close()
        return time.monotonic() - t0, got

    def test_an_executor_no_relay_can_carry_waits_no_longer_than_pending_timeout(self):
        # etcd lists a holder of the lease's tunnel that nobody reaches (its
        # peer address is wrong, or the key outlived the relay). Each change
        # in etcd tries it again; a failed try used to queue the executor as
        # a new connection with a fresh pending_timeout_ms, so while etcd
        # kept changing the executor waited for ever.
        a = self.start_relay("relay-a", HOSTS[0],
                             overrides={"relay": {"lease": {"pending_timeout_ms": 2000}}})
        port = self._lease_held_by(a, "L-ghost1", ["127.0.0.1:1"])
        stop = threading.Event()

        def churn():
            i = 0
            while not stop.wait(0.3):
                self.etcd.put(b"/sparkrelay/churn", str(i).encode())
                i += 1
        th = threading.Thread(target=churn)
        th.start()
        try:
            waited, got = self._executor_waits(a.host, port, 10)
        finally:
            stop.set()
            th.join()
        self.assertEqual(got, b"")
        self.assertLess(waited, 4.0)
        self.assertGreater(waited, 1.5)
        # It counts as one connection, refused once, for its wait.
        m = self.metrics(a)
        self.assertEqual(m["sparkrelay_executor_connections_total"], 1)
        self.assertEqual(m['sparkrelay_refused_total{reason="pending_timeout"}'], 1)
        self.assertGreaterEqual(m["sparkrelay_fleet_carry_failed_total"], 2)

    def test_carrying_an_executor_stops_where_its_wait_ends(self):
        # Holders etcd lists whose peer ports drop the connection attempt (a
        # firewall, a node gone): each try takes the 1 s connect timeout.
        # Tried one after the other, five of them kept an executor with a
        # 3 s wait for 5 s; a try starts now only with a connect timeout
        # left in the wait.
        a = self.start_relay("relay-a", HOSTS[0],
                             overrides={"relay": {"lease": {"pending_timeout_ms": 3000}}})
        peers = []
        for _ in range(5):
            ls = socket.socket()
            self.addCleanup(ls.close)
            ls.bind(("127.0.0.1", 0))
            ls.listen(0)
            held = socket.create_connection(ls.getsockname())  # the backlog is full
            self.addCleanup(held.close)
            peers.append("127.0.0.1:%d" % ls.getsockname()[1])
        port = self._lease_held_by(a, "L-hole1", peers)
        waited, got = self._executor_waits(a.host, port, 15)
        self.assertEqual(got, b"")
        H.log("measured: an executor with a 3 s wait and 5 unreachable holders closed "
              "after %.2f s" % waited)
        self.assertLess(waited, 4.0)
        self.assertGreater(waited, 2.5)
        m = self.metrics(a)
        self.assertEqual(m['sparkrelay_refused_total{reason="pending_timeout"}'], 1)

    @staticmethod
    def _try_connect(host, port):
        try:
            return H.connect(host, port, timeout=2.0)
        except OSError:
            return None


class EtcdLeaderTest(FleetCase):
    """Relays on a three-member etcd cluster."""

    def setUp(self):
        super().setUp()
        self.cluster = E.EtcdCluster(3).start()
        self.addCleanup(self.cluster.stop)

    def test_a_watch_through_a_member_without_a_leader_is_ended(self):
        # relay-a watches through one member. When that member loses the
        # cluster's leader (here: the two others stopped; in life, a member
        # cut off from them), it keeps the watch open but delivers nothing
        # more, and relay-a heard of no change until watch_idle_ms (25 min
        # by default). The relay now asks etcd to end its watches and
        # refuse its requests when the member has no leader, and watches
        # again through the next endpoint.
        m0, m1, m2 = self.cluster.members
        a = self.start_relay("relay-a", HOSTS[0], overrides={"relay": {"fleet": {
            "etcd": [m0.url]}}})
        b = self.start_relay("relay-b", HOSTS[1], overrides={"relay": {"fleet": {
            "etcd": [m1.url, m2.url]}}})
        m1.pause()
        m2.pause()
        t0 = time.monotonic()
        try:
            # one line: the watch itself ended for that reason (a request
            # refused for it alone would not do)
            wait_for(lambda: [l for l in a.grep("etcd watch broke") if "no leader" in l], 30,
                     "relay-a's watch ended by a member without a leader")
            H.log("measured: a watch through a member without a leader ended %.1f s after "
                  "the other two members stopped" % (time.monotonic() - t0))
        finally:
            m1.resume()
            m2.resume()
        # The cluster has a leader again: relay-a's watch goes on from where
        # it stopped, and serves a lease granted on relay-b.
        sc = FleetTest.start_sidecar(self, "sc", b)
        lease = self.lease_of(sc, timeout=30)
        wait_for(lambda: a.grep("lease=%s: serving its ports here" % lease["lease"]), 20,
                 "relay-a serving the lease granted on relay-b")
        self.assertTrue(a.alive() and b.alive())

    def test_a_grace_lease_is_kept_through_a_loss_of_quorum(self):
        # The two followers stopped for longer than the grace lease's TTL:
        # no keepalive succeeds, and the relay says so but keeps trying. The
        # leader, cut off from them, steps down, so etcd expires no lease
        # without a quorum and gives every lease its whole TTL again when a
        # leader is elected: the relay's next keepalive holds it. The lease
        # is never deleted nor made again, its streams go on, and it stays
        # past another TTL. (Stopping any two members once failed this: a
        # leader stopped and resumed with a follower can go on leading and
        # expire what ran out meanwhile; the relay then makes the lease
        # again, as in test_a_lease_outlives_an_etcd_outage_longer_than_...)
        m0 = self.cluster.members[0]
        a = self.start_relay("relay-a", HOSTS[0], overrides={"relay": {
            "lease": {"grace_s": 5}, "fleet": {"etcd": [m.url for m in self.cluster.members]}}})
        sc = FleetTest.start_sidecar(self, "sc", a)
        lease = self.lease_of(sc)
        port = int(lease["ports"]["driver"])
        key = ("/sparkrelay/leases/%s" % lease["lease"]).encode()
        before = m0.get(key)  # any member answers with the cluster's data
        self.start_driver(lease)
        s = wait_for(lambda: FleetTest._try_connect(a.host, port), 10, "connect via relay-a")
        lead = self.cluster.leader()
        followers = [m for m in self.cluster.members if m is not lead]
        for m in followers:
            m.pause()
        try:
            wait_for(lambda: a.grep("lease=%s: cannot keep its grace lease alive"
                                    % lease["lease"]), 20, "the grace keepalive failing")
            ok, why = echo_exchange(s, 70, 1 * MiB)
            self.assertTrue(ok, "without quorum: %s" % why)
        finally:
            for m in followers:
                m.resume()
        time.sleep(8)  # past another grace TTL once the cluster has a leader again
        self.assertEqual(self.cluster.leader().get(key), before, "the lease in etcd changed")
        self.assertFalse(a.grep("grace lease is gone") or a.grep("made again in etcd"),
                         "the grace lease expired: %s" % a.grep("lease="))
        ok, why = echo_exchange(s, 71, 1 * MiB)
        self.assertTrue(ok, "after the quorum is back: %s" % why)
        s.close()
        self.assertTrue(a.alive())


class WatchSilenceTest(FleetCase):
    """etcd sends progress notifications every 500 ms, as
    --experimental-watch-progress-notify-interval makes it do."""

    ETCD_PROGRESS = "500ms"

    def relays_a_watching_through_a_proxy(self, watch_idle_ms):
        """relay-a, whose etcd watch goes through a FreezingProxy, and relay-b."""
        px = FreezingProxy(("127.0.0.1", self.etcd.port), mark=b"POST /v3/watch")
        self.addCleanup(px.close)
        a = self.start_relay("relay-a", HOSTS[0], overrides={"relay": {"fleet": {
            "etcd": ["http://127.0.0.1:%d" % px.port], "watch_idle_ms": watch_idle_ms}}})
        b = self.start_relay("relay-b", HOSTS[1])
        wait_for(px.marked, 10, "relay-a's watch")
        return px, a, b

    def test_a_silent_watch_is_started_again(self):
        # relay-a's watch stream goes silent without breaking. It used to
        # stay so for good: a lease granted on relay-b was never served on
        # relay-a (and a resume there would have been answered
        # unknown_lease, ending the lease). With progress notifications, a
        # stream silent for watch_idle_ms is started again from the last
        # revision it delivered, and the lease is served.
        px, a, b = self.relays_a_watching_through_a_proxy(3000)
        # Longer than watch_idle_ms: the progress notifications keep a
        # quiet watch from being taken for a silent one.
        time.sleep(4.5)
        self.assertFalse(a.grep("watch stream was silent"), a.log_text()[-2000:])
        self.assertEqual(px.freeze(marked_only=True), 1)
        t0 = time.monotonic()
        sc = FleetTest.start_sidecar(self, "sc", b)
        lease = self.lease_of(sc)
        wait_for(lambda: a.grep("lease=%s: serving its ports here" % lease["lease"]), 20,
                 "relay-a serving the lease granted on relay-b")
        H.log("measured: a lease granted while relay-a's watch was frozen was served there "
              "%.1f s later (watch_idle_ms 3000)" % (time.monotonic() - t0))
        self.assertTrue(a.grep("watch stream was silent for 3000 ms"))
        self.assertTrue(a.alive() and b.alive())

    def test_a_watch_restarted_after_a_compaction_reads_every_key_again(self):
        # As above, and etcd compacts its history while relay-a's watch is
        # silent: the revision the watch starts again from is gone, etcd
        # says so, and relay-a must read the whole table again instead of
        # going on without the changes it missed.
        px, a, b = self.relays_a_watching_through_a_proxy(8000)
        self.assertEqual(px.freeze(marked_only=True), 1)
        sc = FleetTest.start_sidecar(self, "sc", b)
        lease = self.lease_of(sc)
        self.etcd.compact(self.etcd.revision())
        self.assertFalse(a.grep("watch stream was silent"),
                         "the watch started again before the compaction")
        wait_for(lambda: a.grep("lease=%s: serving its ports here" % lease["lease"]), 30,
                 "relay-a serving the lease granted on relay-b")
        self.assertTrue(a.grep("watch fell behind etcd's compaction"), a.log_text()[-2000:])
        self.assertTrue(a.alive() and b.alive())


if __name__ == "__main__":
    H.main()
