"""Security: the sidecar only trusts a relay its CA vouches for; the relay only
grants leases to sidecars that prove who they are (client certificate, bearer
token); and one identity can never resume another identity's lease. A client
certificate renewed in place (same CN) is used at the next dial and resumes
the lease; one from a rotated CA too, once the relay trusts that CA; a
certificate written before its key leaves the pair read before in use; a
sidecar the relay no longer trusts retries with backoff, not in a loop."""

import json
import os
import shutil
import signal
import subprocess
import time

import harness as H
import harness_extra as X
from harness import h_echo

NO_LEASE_WAIT = 3.0


class SecCase(X.XCase):
    auto_tunnel = False

    def assert_no_lease(self, sc, wait=NO_LEASE_WAIT):
        time.sleep(wait)
        self.assertIsNone(sc.lease(), "%s got a lease: %r" % (sc.name, sc.lease()))
        self.assertFalse(self.relay.grep("granted"), "relay granted a lease")
        self.assertTrue(sc.proc.alive(), "%s exited (it should keep retrying)" % sc.name)

    def echo_through(self, sc, seed):
        j = sc.wait_lease(15)
        ports = sc.ports()
        drv = H.Driver(ports, default=h_echo).start()
        try:
            for i, p in enumerate(ports.values()):
                self.assertIsNone(X.echo_once(j["host"], p, seed=seed + i))
        finally:
            drv.stop()
        return drv


class ServerVerifyTest(SecCase):

    def test_sidecar_refuses_relay_signed_by_another_ca(self):
        c = H.certs()
        sc = self.sidecar("sc", {"tunnel": {"tls": {"ca": c.other_ca}}}).start()
        self.assert_no_lease(sc)
        lines = sc.proc.grep("TLS handshake failed")
        self.assertTrue(lines, "sidecar log has no 'TLS handshake failed'")
        self.assertTrue(any("certificate verify failed" in l for l in lines), lines[:3])
        self.assertTrue(any("unknown ca" in l for l in self.relay.grep("TLS handshake failed")),
                        "relay log shows no handshake refused by the sidecar (unknown ca)")
        self.assertFalse(self.relay.grep("waiting for registration"),
                         "relay completed a tunnel with a sidecar that does not trust it")


class MutualTLSTest(SecCase):

    def setUp(self):
        # client_ca is only known once the certificates exist
        self.relay_overrides = {"relay": {"tls": {"client_ca": H.certs().ca,
                                                  "require_client_cert": True}}}
        super().setUp()

    def test_client_cert_from_another_ca_is_rejected(self):
        c = H.certs()
        sc = self.sidecar("sc", {"tunnel": {"tls": {"cert": c.other_client_cert,
                                                    "key": c.other_client_key}}}).start()
        self.assert_no_lease(sc)
        lines = self.relay.grep("TLS handshake failed")
        self.assertTrue(any("certificate verify failed" in l for l in lines),
                        "relay log has no 'TLS handshake failed: ... certificate verify "
                        "failed'")
        self.assertFalse(self.relay.grep("waiting for registration"))

    def test_missing_client_cert_is_rejected(self):
        sc = self.sidecar("sc").start()
        self.assert_no_lease(sc)
        lines = self.relay.grep("TLS handshake failed")
        self.assertTrue(any("did not return a certificate" in l for l in lines),
                        "relay log has no 'TLS handshake failed: ... peer did not return a "
                        "certificate'")
        self.assertFalse(self.relay.grep("waiting for registration"))
        # the sidecar says what to set, once
        self.assertTrue(X.wait_log(sc.proc, "set tunnel.tls.cert and tunnel.tls.key", 5),
                        sc.proc.tail())
        self.assertEqual(len(sc.proc.grep("asks for a client certificate")), 1)

    def test_right_client_cert_gets_a_lease(self):
        c = H.certs()
        sc = self.sidecar("sc", {"tunnel": {"tls": {"cert": c.client_cert,
                                                    "key": c.client_key}}}).start()
        self.echo_through(sc, seed=1)
        self.assertTrue(self.relay.grep("cn=sidecar-1"), "relay log does not name the "
                        "client certificate's CN")


class ClientCertRotationTest(SecCase):
    """The client CA rotated on both ends while a sidecar is connected: the
    relay trusts only the new CA after a reload, the sidecar's certificate
    and key are replaced in place by ones from that CA (same CN). The tunnel
    up goes on; when its connection is cut, the sidecar dials with the new
    files and resumes the same lease (before, it kept the files it started
    with and was refused until restarted)."""

    def setUp(self):
        self.relay_overrides = {"relay": {"tls": {"client_ca": H.certs().ca,
                                                  "require_client_cert": True}}}
        super().setUp()

    def sidecar_with_cert_files(self):
        """A sidecar whose client certificate and key are copies in a folder of
        their own (so the test can renew them), with its lease:
        (sidecar, lease, cert path, key path)."""
        c = H.certs()
        files = os.path.join(self.stack.dir, "sc-tls")
        os.makedirs(files)
        cert, key = os.path.join(files, "tls.crt"), os.path.join(files, "tls.key")
        shutil.copy(c.client_cert, cert)
        shutil.copy(c.client_key, key)
        sc = self.sidecar("sc", {"tunnel": {"tls": {"cert": cert, "key": key}}}).start()
        return sc, sc.wait_lease(15), cert, key

    def test_renewed_client_certificate_is_used_at_the_next_dial(self):
        sc, j, cert, key = self.sidecar_with_cert_files()
        drv = H.Driver(sc.ports(), default=h_echo).start()
        self.addCleanup(drv.stop)
        e = X.Echoer(j["host"], sc.ports()["driver"])
        self.assertIsNone(e.check())
        # A new CA; a certificate from it with the same CN.
        new = os.path.join(self.stack.dir, "ca2")
        os.makedirs(new)
        H._make_ca(new, "ca2", "sparkrelay-it-ca-2")
        H._make_leaf(new, "client", "sidecar-1", "ca2", ["extendedKeyUsage=clientAuth"])
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["tls"]["client_ca"] = os.path.join(new, "ca2.pem")
        H.write_config(self.stack.relay_cfg_path, cfg)
        reloaded = X.log_count(self.relay, "configuration reloaded")
        self.relay.signal(signal.SIGHUP)
        self.assertTrue(X.wait_log(self.relay, "configuration reloaded", 10,
                                   count=reloaded + 1))
        self.assertIsNone(e.check(), "the tunnel up was cut by the CA change")
        for src, dst in ((os.path.join(new, "client.pem"), cert),
                         (os.path.join(new, "client.key"), key)):
            shutil.copy(src, dst + ".tmp")
            os.rename(dst + ".tmp", dst)
        resumed = X.log_count(sc.proc, "resumed")
        r = subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=",
                            ":%d" % self.stack.relay_port], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(X.wait_log(sc.proc, "tunnel.tls: the files changed; this tunnel and "
                                            "the next use them", 10), sc.proc.tail())
        self.assertTrue(X.wait_log(sc.proc, "resumed", 15, count=resumed + 1), sc.proc.tail())
        self.assertEqual(sc.lease()["lease"], j["lease"])
        self.assertIsNone(e.check(), "the executor connection after the resume")
        self.assertIsNone(X.echo_once(j["host"], sc.ports()["driver"], seed=5))
        e.close()


    def test_files_that_do_not_load_leave_the_ones_read_before(self):
        # A certificate written before its key (the pair does not match
        # for a moment): the sidecar says so once and dials with what it
        # read before; the whole pair then takes effect at the next dial.
        c = H.certs()
        sc, j, cert, key = self.sidecar_with_cert_files()
        renewed = os.path.join(self.stack.dir, "renewed")
        os.makedirs(renewed)
        H._make_leaf(renewed, "client", "sidecar-1", os.path.join(c.dir, "ca"),
                     ["extendedKeyUsage=clientAuth"])  # the same CN: the same identity
        new_cert, new_key = (os.path.join(renewed, "client.pem"),
                             os.path.join(renewed, "client.key"))

        def cut_and_resume():
            n = X.log_count(sc.proc, "lease resumed")
            r = subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=",
                                ":%d" % self.stack.relay_port], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(X.wait_log(sc.proc, "lease resumed", 15, count=n + 1),
                            sc.proc.tail())
            self.assertEqual(sc.lease()["lease"], j["lease"])

        shutil.copy(new_cert, cert)  # the key is still the old one
        cut_and_resume()
        self.assertTrue(sc.proc.grep("tunnel.tls: the files changed but cannot be used"),
                        sc.proc.tail())
        self.assertFalse(sc.proc.grep("this tunnel and the next use them"))
        shutil.copy(new_key, key)
        cut_and_resume()
        self.assertEqual(len(sc.proc.grep("this tunnel and the next use them")), 1)

    def test_a_sidecar_the_relay_no_longer_trusts_retries_gently(self):
        # The relay's client CA changed, the sidecar's certificate did not.
        # With TLS 1.3 the relay refuses the certificate after the
        # handshake, so every tunnel looked up for a moment; while it held
        # driver connections the sidecar dialled again at once, in a loop
        # (hundreds of dials a second). It now backs off (at most 1 s while
        # holding), and resumes once the relay trusts it again.
        c = H.certs()
        sc = self.sidecar("sc", {"tunnel": {"tls": {"cert": c.client_cert,
                                                    "key": c.client_key}}}).start()
        j = sc.wait_lease(15)
        drv = H.Driver(sc.ports(), default=h_echo).start()
        self.addCleanup(drv.stop)
        e = X.Echoer(j["host"], sc.ports()["driver"])
        self.assertIsNone(e.check())
        other = json.loads(json.dumps(self.stack.relay_cfg))
        other["relay"]["tls"]["client_ca"] = c.other_ca
        self.reload(other)
        before = X.log_count(sc.proc, "reconnecting in")
        r = subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=",
                            ":%d" % self.stack.relay_port], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        time.sleep(4)
        dials = X.log_count(sc.proc, "reconnecting in") - before
        H.log("measured: %d reconnects in 4 s while the relay refused the certificate" % dials)
        self.assertGreaterEqual(dials, 3, "the sidecar stopped trying")
        self.assertLessEqual(dials, 12, "the sidecar dials in a loop")
        # counted before the reload: the sidecar may resume right after it
        resumed = X.log_count(sc.proc, "resumed")
        self.reload(self.stack.relay_cfg)
        self.assertTrue(X.wait_log(sc.proc, "resumed", 10, count=resumed + 1),
                        sc.proc.tail())
        self.assertEqual(sc.lease()["lease"], j["lease"])
        self.assertIsNone(e.check(), "the executor connection after the resume")
        e.close()

    def reload(self, cfg):
        H.write_config(self.stack.relay_cfg_path, cfg)
        n = X.log_count(self.relay, "configuration reloaded")
        self.relay.signal(signal.SIGHUP)
        self.assertTrue(X.wait_log(self.relay, "configuration reloaded", 10, count=n + 1))


class TokenTest(SecCase):
    TOKEN = "it-token-8c1f0a9e5d7b4e2a"
    relay_overrides = {"relay": {"auth_token": TOKEN}}

    def test_missing_token_is_unauthorized(self):
        sc = self.sidecar("sc").start()
        self.assert_no_lease(sc)
        self.assertTrue(self.relay.grep("unauthorized"), "relay log has no 'unauthorized'")

    def test_wrong_token_is_unauthorized(self):
        sc = self.sidecar("sc", {"tunnel": {"token": self.TOKEN[:-1] + "X"}}).start()
        self.assert_no_lease(sc)
        self.assertTrue(self.relay.grep("unauthorized"), "relay log has no 'unauthorized'")
        for p in (self.relay, sc.proc):
            self.assertFalse(any(self.TOKEN[:-1] in l for l in p.log_text().splitlines()),
                             "%s log shows the token" % p.name)

    def test_right_token_gets_a_lease(self):
        sc = self.sidecar("sc", {"tunnel": {"token": self.TOKEN}}).start()
        self.echo_through(sc, seed=2)
        self.assertFalse(self.relay.grep("unauthorized"))


class ResumeIdentityTest(SecCase):

    def setUp(self):
        self.relay_overrides = {"relay": {"tls": {"client_ca": H.certs().ca,
                                                  "require_client_cert": True}}}
        super().setUp()

    def sc_for(self, name, cn):
        cert, key = X.client_cert(cn)
        return self.sidecar(name, {"tunnel": {"tls": {"cert": cert, "key": key}}})

    def test_resume_token_of_another_identity_is_refused(self):
        a = self.sc_for("a", "sidecar-a").start()
        ja = a.wait_lease(15)
        ports_a = a.ports()
        self.assertTrue(os.path.exists(a.state_file))
        drv_a = H.Driver(ports_a, default=h_echo).start()
        self.addCleanup(drv_a.stop)
        self.assertIsNone(X.echo_once(ja["host"], ports_a["driver"], seed=1))

        # B (same CA, other CN) starts with A's state file while A is connected.
        b = self.sc_for("b", "sidecar-b")
        shutil.copy(a.state_file, b.state_file)
        refused = X.log_count(self.relay, "unknown_lease")
        b.start()
        self.assertTrue(X.wait_log(self.relay, "unknown_lease", 10, count=refused + 1),
                        "relay did not refuse B's resume with A's token")
        jb = X.wait_for(b.lease, 10)
        if jb is not None:
            self.assertNotEqual(jb["lease"], ja["lease"], "B got A's lease")
            self.assertFalse(set(b.ports().values()) & set(ports_a.values()),
                             "B got some of A's ports: %r vs %r" % (b.ports(), ports_a))
        self.assertFalse(self.relay.grep("replaced by a new tunnel"),
                         "B's tunnel took over A's lease")
        self.assertFalse(a.proc.grep("tunnel closed"), "A's tunnel was closed")
        self.assertIsNone(X.echo_once(ja["host"], ports_a["driver"], seed=2))

        # Now A is gone (its lease waits in grace): B tries A's token again.
        if jb is not None:
            b.sigterm()  # releases B's own lease; its state file goes with it
        else:
            b.sigkill()
        a.sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5))
        shutil.copy(a.state_file, b.state_file)
        refused = X.log_count(self.relay, "unknown_lease")
        if os.path.exists(b.spark_json):
            os.unlink(b.spark_json)
        b.start()
        self.assertTrue(X.wait_log(self.relay, "unknown_lease", 10, count=refused + 1),
                        "relay did not refuse B's resume of A's lease in grace")
        jb2 = X.wait_for(b.lease, 10)
        if jb2 is not None:
            self.assertNotEqual(jb2["lease"], ja["lease"], "B got A's lease while A was away")
            self.assertFalse(set(b.ports().values()) & set(ports_a.values()))
        # A comes back and gets its own ports again.
        resumed = X.log_count(self.relay, "resuming lease")
        os.unlink(a.spark_json)
        a.start()
        ja2 = a.wait_lease(15)
        self.assertEqual((ja2["lease"], a.ports()), (ja["lease"], ports_a),
                         "A did not get its own lease back")
        self.assertGreater(X.log_count(self.relay, "resuming lease"), resumed)
        self.assertIsNone(X.echo_once(ja["host"], ports_a["driver"], seed=3))
        self.assertEqual(sum(dc.port == ports_a["driver"] for dc in drv_a.all_conns()), 3,
                         "A's driver did not see exactly its three echo connections")


if __name__ == "__main__":
    H.main()
