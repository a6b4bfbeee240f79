"""Configuration for operators: a file change reaches the relay by itself,
check-config checks what the relay would trip on, route explain answers from
a file.

  - relay.reload.watch: a file rewritten, replaced by rename, or swapped as a
    Kubernetes ConfigMap swaps it (a "..data" symbolic link) is reloaded
    without a signal; a bad file is refused as on SIGHUP (counted, old
    configuration kept); several writes in a burst make one reload; a
    rewrite with the same content makes none;
  - the relay's certificate and key renewed in place in a Secret-like
    folder: new tunnels get the new certificate (checked in a real TLS
    handshake against the sidecars' CA), the tunnel up is untouched, one
    reload for the pair; a key that does not match is refused and the
    renewed certificate stays;
  - check-config loads the relay's certificate, key and client CA and names
    the setting when one fails; the relay does the same at start; fleet
    settings the relay would refuse (id, peer addresses, missing settings,
    a short secret) are refused by check-config as by the relay; the
    effective configuration only with --print; warnings for unreachable
    routes and CIDRs with host bits;
  - `sparkrelay route explain --config FILE` without a relay: exit status,
    -o json, --san, --token (never printed); names with escape sequences
    come out as visible text, not as control bytes;
  - configured tenants without limits get the default limits (follow-up 4).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import harness as H
import harness_extra as X
import test_admin as A

TOKEN = A.TOKEN


def run(*args, env=None, timeout=30):
    r = subprocess.run([H.BIN] + list(args), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=env)
    for marker in H.SANITIZER_MARKERS:
        assert marker not in r.stderr, "%s: sanitizer report:\n%s" % (args, r.stderr)
    return r


def clean_env():
    """The environment without SPARKRELAY_* variables of the caller."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SPARKRELAY_")}


# --------------------------------------------------------------------------
# The file watch.

class WatchCase(X.XCase):
    """A relay whose configuration file lives where the test says (a plain
    file, or a ConfigMap-like folder), with its admin API."""

    auto_tunnel = False
    configmap = False
    DEBOUNCE_MS = 400

    def setUp(self):
        self.admin_port = H.free_port()
        self.url = "http://127.0.0.1:%d" % self.admin_port
        self.relay_overrides = {"relay": {
            "admin": {"listen": "127.0.0.1:%d" % self.admin_port, "token": TOKEN},
            "reload": {"debounce_ms": self.DEBOUNCE_MS}}}
        super().setUp()

    def prepare(self):
        # Restart the relay on a file of our own layout.
        self.stack.relay.stop()
        self.retire(self.stack.relay)
        self.cfg = json.loads(json.dumps(self.stack.relay_cfg))
        self.cm = os.path.join(self.stack.dir, "cm")
        os.makedirs(self.cm)
        if self.configmap:
            self.gen = 0
            self.swap(self.cfg)
        else:
            H.write_config(os.path.join(self.cm, "relay.json"), self.cfg)
        self.path = os.path.join(self.cm, "relay.json")
        p = H.Proc("relay-w", [H.BIN, "relay", "--config", self.path], self.stack.dir)
        p.start()
        self.track(p)
        self.stack.relay = p
        ok = X.wait_for(lambda: self.get("/healthz")[0] == 200, 10)
        if not ok:
            raise H.HarnessError("the relay on %s did not come up" % self.path)

    def swap(self, cfg):
        """What the kubelet does to a ConfigMap volume: a new timestamped
        folder, a new "..data_tmp" link to it renamed over "..data";
        relay.json is a link to ..data/relay.json and never changes."""
        self.gen += 1
        d = "..2026_11_30_00_00_%02d.%d" % (self.gen, os.getpid())
        os.makedirs(os.path.join(self.cm, d))
        H.write_config(os.path.join(self.cm, d, "relay.json"), cfg)
        os.symlink(d, os.path.join(self.cm, "..data_tmp"))
        old = os.path.realpath(os.path.join(self.cm, "..data")) \
            if os.path.lexists(os.path.join(self.cm, "..data")) else None
        os.rename(os.path.join(self.cm, "..data_tmp"), os.path.join(self.cm, "..data"))
        if not os.path.lexists(os.path.join(self.cm, "relay.json")):
            os.symlink("..data/relay.json", os.path.join(self.cm, "relay.json"))
        if old:
            shutil.rmtree(old)

    def get(self, path):
        try:
            return A.http("GET", self.url + path, TOKEN, timeout=2)[:3:2]
        except OSError:
            return None, None

    def metrics(self):
        code, text = self.get("/metrics")
        self.assertEqual(code, 200)
        return A.parse_metrics(text)

    def auto(self, m, result):
        return A.metric(m, "sparkrelay_config_auto_reloads_total", result=result)

    def max_pending(self):
        code, text = self.get("/v1/config")
        self.assertEqual(code, 200, text)
        return json.loads(text)["relay"]["lease"]["max_pending"]

    def wait_max_pending(self, want, timeout=10.0):
        return X.wait_for(lambda: self.max_pending() == want, timeout)


class WatchFileTest(WatchCase):

    def test_rewrite_rename_bad_file_and_bursts(self):
        path = self.path
        # Written in place.
        self.cfg["relay"]["lease"]["max_pending"] = 111
        H.write_config(path, self.cfg)
        self.assertTrue(self.wait_max_pending(111), "an edited file was not reloaded")
        self.assertTrue(X.wait_log(self.relay, "relay.json changed: reloading it", 5))
        m = self.metrics()
        self.assertEqual((self.auto(m, "ok"), self.auto(m, "failed")), (1, 0))
        self.assertEqual(A.metric(m, "sparkrelay_reloads_total", result="ok"), 1)
        # Replaced by a rename (how editors and config tools write).
        self.cfg["relay"]["lease"]["max_pending"] = 112
        H.write_config(path + ".tmp", self.cfg)
        os.rename(path + ".tmp", path)
        self.assertTrue(self.wait_max_pending(112), "a renamed-over file was not reloaded")
        # A bad file: refused as on SIGHUP, counted, and the old one stays.
        with open(path, "w") as f:
            f.write('{"relay": {"lease": {"max_pending": "many"}}}\n')
        ok = X.wait_for(lambda: self.auto(self.metrics(), "failed") == 1, 10)
        self.assertTrue(ok, "a bad file was not counted as a failed auto reload")
        m = self.metrics()
        self.assertEqual(A.metric(m, "sparkrelay_config_last_reload_successful"), 0)
        self.assertEqual(self.max_pending(), 112)
        self.assertTrue(self.relay.grep("reload refused, the running configuration stays"))
        self.assertEqual(self.get("/readyz")[0], 200)
        # A burst of writes (an editor's or a script's steps) is one reload.
        before = self.auto(self.metrics(), "ok")
        for n in range(113, 118):
            self.cfg["relay"]["lease"]["max_pending"] = n
            H.write_config(path, self.cfg)
            time.sleep(0.02)
        self.assertTrue(self.wait_max_pending(117))
        time.sleep(3 * self.DEBOUNCE_MS / 1000)
        m = self.metrics()
        self.assertEqual(self.auto(m, "ok") - before, 1, "a burst of 5 writes made %d reloads" %
                         (self.auto(m, "ok") - before))
        self.assertEqual(A.metric(m, "sparkrelay_config_last_reload_successful"), 1)
        # The same content written again, and a change of its mode: no reload.
        H.write_config(path, self.cfg)
        os.chmod(path, 0o640)
        time.sleep(5 * self.DEBOUNCE_MS / 1000)
        self.assertEqual(self.auto(self.metrics(), "ok") - before, 1,
                         "an unchanged file was reloaded")
        # SIGHUP after a change reloads once, not once more by the watch.
        m = self.metrics()
        auto, total = self.auto(m, "ok"), A.metric(m, "sparkrelay_reloads_total", result="ok")
        self.cfg["relay"]["lease"]["max_pending"] = 120
        H.write_config(path, self.cfg)
        self.relay.signal(signal.SIGHUP)
        self.assertTrue(self.wait_max_pending(120))
        time.sleep(5 * self.DEBOUNCE_MS / 1000)
        m = self.metrics()
        self.assertEqual((self.auto(m, "ok") - auto,
                          A.metric(m, "sparkrelay_reloads_total", result="ok") - total), (0, 1),
                         "the SIGHUP'd change was applied again by the watch")


class WatchConfigMapTest(WatchCase):
    configmap = True

    def test_a_configmap_update_is_reloaded(self):
        self.assertTrue(os.path.islink(self.path))
        for n in (201, 202):
            self.cfg["relay"]["lease"]["max_pending"] = n
            self.swap(self.cfg)
            self.assertTrue(self.wait_max_pending(n), "ConfigMap update %d was not reloaded "
                            "(max_pending %s)" % (n, self.max_pending()))
        m = self.metrics()
        self.assertEqual((self.auto(m, "ok"), self.auto(m, "failed")), (2, 0))
        # A bad ConfigMap is refused and the relay keeps serving.
        self.swap({"relay": {"listen": 5}})
        ok = X.wait_for(lambda: self.auto(self.metrics(), "failed") == 1, 10)
        self.assertTrue(ok, "a bad ConfigMap update was not refused and counted")
        self.assertEqual(self.max_pending(), 202)


class TlsWatchTest(WatchCase):
    """The relay's certificate and key in a folder laid out as a Kubernetes
    Secret volume: renewed in place (cert-manager), they are used for new
    tunnels without a restart, and tunnels up are left alone."""

    def prepare(self):
        self.tls = os.path.join(self.stack.dir, "tls")
        os.makedirs(self.tls)
        self.tgen = 0
        c = H.certs()
        self.swap_tls(c.relay_cert, c.relay_key)
        self.stack.relay_cfg["relay"]["tls"].update(
            cert=os.path.join(self.tls, "tls.crt"), key=os.path.join(self.tls, "tls.key"))
        super().prepare()

    def swap_tls(self, cert, key):
        """The kubelet's update of a Secret volume (see WatchCase.swap)."""
        self.tgen += 1
        d = "..2026_12_03_00_00_%02d.%d" % (self.tgen, os.getpid())
        os.makedirs(os.path.join(self.tls, d))
        shutil.copy(cert, os.path.join(self.tls, d, "tls.crt"))
        shutil.copy(key, os.path.join(self.tls, d, "tls.key"))
        link = os.path.join(self.tls, "..data")
        old = os.path.realpath(link) if os.path.lexists(link) else None
        os.symlink(d, link + "_tmp")
        os.rename(link + "_tmp", link)
        for name in ("tls.crt", "tls.key"):
            if not os.path.lexists(os.path.join(self.tls, name)):
                os.symlink("..data/" + name, os.path.join(self.tls, name))
        if old:
            shutil.rmtree(old)

    def served_cert(self):
        """The DER certificate the relay's tunnel listener presents, verified
        against the sidecars' CA as a sidecar verifies it."""
        ctx = ssl.create_default_context(cafile=H.certs().ca)
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", self.stack.relay_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return s.getpeercert(binary_form=True)

    @staticmethod
    def der(path):
        with open(path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    @staticmethod
    def not_after(path):
        out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", path],
                             capture_output=True, text=True, check=True).stdout
        return int(ssl.cert_time_to_seconds(out.strip().split("=", 1)[1]))

    def expiry_metric(self):
        return A.metric(self.metrics(), "sparkrelay_tls_certificate_expiry_timestamp_seconds")

    def test_a_renewed_certificate_is_used_for_new_tunnels(self):
        st, c = self.stack, H.certs()
        self.assertEqual(self.served_cert(), self.der(c.relay_cert))
        self.assertEqual(self.expiry_metric(), self.not_after(c.relay_cert))
        st.start_tunnel()
        self.track(st.tunnel)
        st.start_driver()
        e = X.Echoer(st.exec_host, st.ports["driver"])
        self.assertIsNone(e.check())
        new = os.path.join(self.stack.dir, "renewed")
        os.makedirs(new)
        H._make_leaf(new, "relay", "localhost", os.path.join(c.dir, "ca"),
                     ["extendedKeyUsage=serverAuth",
                      "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"])
        renewed = os.path.join(new, "relay.pem"), os.path.join(new, "relay.key")
        self.swap_tls(*renewed)
        ok = X.wait_for(lambda: self.served_cert() == self.der(renewed[0]), 10)
        self.assertTrue(ok, "the renewed certificate is not served")
        self.assertTrue(X.wait_log(self.relay, "relay.tls.cert: a new certificate for new "
                                               "tunnels (/CN=localhost, valid until", 5))
        self.assertEqual(self.expiry_metric(), self.not_after(renewed[0]))
        self.assertTrue(self.relay.grep("tls.crt changed: reloading (relay.reload.watch)") or
                        self.relay.grep("tls.key changed: reloading (relay.reload.watch)"))
        self.assertIsNone(e.check(), "the tunnel up was disturbed")
        self.assertFalse(st.tunnel.grep("reconnecting"), "the sidecar lost its tunnel")
        # cert and key change together: one reload that took, none refused
        time.sleep(3 * self.DEBOUNCE_MS / 1000)
        m = self.metrics()
        self.assertEqual((self.auto(m, "ok"), self.auto(m, "failed")), (1, 0))
        # A key that is not the certificate's: refused, the renewed one stays.
        self.swap_tls(c.relay_cert, renewed[1])
        ok = X.wait_for(lambda: self.auto(self.metrics(), "failed") >= 1, 10)
        self.assertTrue(ok, "a mismatched key was not refused")
        self.assertTrue(self.relay.grep("reload refused, the running configuration stays: "
                                        "private key"), self.relay.tail())
        self.assertEqual(self.served_cert(), self.der(renewed[0]))
        self.assertEqual(A.metric(self.metrics(), "sparkrelay_config_last_reload_successful"), 0)
        # A good pair again: taken.
        self.swap_tls(c.relay_cert, c.relay_key)
        ok = X.wait_for(lambda: self.served_cert() == self.der(c.relay_cert), 10)
        self.assertTrue(ok, "the first certificate is not served again")
        self.assertIsNone(e.check())
        e.close()


class NoWatchTest(WatchCase):

    def prepare(self):
        self.stack.relay_cfg["relay"]["reload"] = {"watch": False}
        super().prepare()

    def test_watch_off_means_no_reload(self):
        self.cfg["relay"]["lease"]["max_pending"] = 99
        H.write_config(self.path, self.cfg)
        time.sleep(1.0)
        self.assertEqual(self.max_pending(), 256)
        self.assertEqual(self.auto(self.metrics(), "ok"), 0)


# --------------------------------------------------------------------------
# check-config and the relay's TLS files.

class CheckConfigTest(X.XCase):
    auto_tunnel = False

    def write(self, name, cfg):
        return H.write_config(os.path.join(self.stack.dir, name), cfg)

    def relay_cfg(self, **tls):
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["tls"].update(tls)
        return cfg

    def test_tls_files_are_loaded_and_the_setting_named(self):
        c = H.certs()
        junk = os.path.join(self.stack.dir, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        # A FIFO (or a device) blocked check-config and the relay's start in
        # open() for ever.
        fifo = os.path.join(self.stack.dir, "fifo.pem")
        os.mkfifo(fifo)
        enc = os.path.join(self.stack.dir, "encrypted.key")
        H._openssl(["pkey", "-in", c.relay_key, "-aes256", "-passout", "pass:secret",
                    "-out", enc], self.stack.dir)
        cases = [
            ("encrypted key", {"key": enc},
             "cannot load private key %s (relay.tls.key): the key is encrypted; the relay "
             "needs it unencrypted" % enc),
            ("fifo as cert", {"cert": fifo},
             "cannot load certificate %s (relay.tls.cert): not a regular file" % fifo),
            ("fifo as client CA", {"client_ca": fifo},
             "cannot load CA certificates %s (relay.tls.client_ca): not a regular file" % fifo),
            ("missing cert", {"cert": "/nonexistent/relay.pem"},
             "cannot load certificate /nonexistent/relay.pem (relay.tls.cert): No such file"),
            ("key as cert", {"cert": c.relay_key},
             "cannot load certificate %s (relay.tls.cert): no PEM certificate" % c.relay_key),
            ("missing key", {"key": "/nonexistent/relay.key"},
             "cannot load private key /nonexistent/relay.key (relay.tls.key): No such file"),
            ("key of another certificate", {"key": c.client_key},
             "private key %s (relay.tls.key) does not match certificate %s (relay.tls.cert)" %
             (c.client_key, c.relay_cert)),
            ("junk client CA", {"client_ca": junk},
             "cannot load CA certificates %s (relay.tls.client_ca)" % junk),
        ]
        for name, tls, want in cases:
            path = self.write(name.replace(" ", "_") + ".json", self.relay_cfg(**tls))
            r = run("check-config", path)
            self.assertEqual(r.returncode, 1, "%s: check-config rc %d\n%s" %
                             (name, r.returncode, r.stderr))
            self.assertIn(want, r.stderr, name)
            self.assertEqual(r.stdout, "", name)
        # The relay refuses to start with the same words, before binding.
        path = self.write("relay-bad.json", self.relay_cfg(key=c.client_key))
        p = H.Proc("relay-bad", [H.BIN, "relay", "--config", path], self.stack.dir).start()
        self.track(p)
        X.wait_for(lambda: not p.alive(), 10)
        self.assertFalse(p.alive())
        self.assertEqual(p.p.returncode, 1)
        self.retire(p)
        self.assertTrue(p.grep("cannot start: private key %s (relay.tls.key) does not match" %
                               c.client_key), p.log_text())

    def test_config_from_a_fifo_or_a_pipe(self):
        # The configuration itself as a FIFO nobody writes to blocked
        # check-config (and the relay's start) in open() for ever.
        fifo = os.path.join(self.stack.dir, "config-fifo.json")
        os.mkfifo(fifo)
        t0 = time.monotonic()
        r = run("check-config", fifo)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("%s: cannot read: not a regular file, and it gave nothing (a FIFO "
                      "with no writer yet?)" % fifo, r.stderr)
        # A pipe whose writer holds it open and writes nothing: a deadline.
        stdin_r, stdin_w = os.pipe()
        try:
            t0 = time.monotonic()
            r = subprocess.run([H.BIN, "check-config", "/dev/stdin"], stdin=stdin_r,
                               capture_output=True, text=True, timeout=40)
            self.assertLess(time.monotonic() - t0, 25)
        finally:
            os.close(stdin_r)
            os.close(stdin_w)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("/dev/stdin: cannot read: not a regular file, and nothing came to read "
                      "within 10000 ms", r.stderr)
        # A writer that is slow, as `<(vault read ...)` can be, is waited
        # for as long as it keeps sending: three parts 6 s apart, 12 s in all
        # (the first version gave a pipe 5 s in all).
        text = json.dumps(self.relay_cfg())
        writer = ("import sys, time; t = sys.argv[1]\n"
                  "for part in (t[:20], t[20:40], t[40:]):\n"
                  "    sys.stdout.write(part); sys.stdout.flush(); time.sleep(6)\n")
        w = subprocess.Popen([sys.executable, "-c", writer, text], stdout=subprocess.PIPE)
        try:
            r = subprocess.run([H.BIN, "check-config", "/dev/stdin"], stdin=w.stdout,
                               capture_output=True, text=True, timeout=40)
        finally:
            w.stdout.close()
            w.wait(10)
        self.assertEqual((r.returncode, r.stderr), (0, "/dev/stdin: configuration OK (relay)\n"))
        # A pipe that carries a configuration at once is read to its end, as
        # `--config <(envsubst < template)` needs.
        r = subprocess.run([H.BIN, "check-config", "/dev/stdin"], input=text,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual((r.returncode, r.stderr), (0, "/dev/stdin: configuration OK (relay)\n"))

    def test_quiet_by_default_print_on_request_and_warnings(self):
        good = self.write("good.json", self.relay_cfg(client_ca=H.certs().ca))
        r = run("check-config", good)
        self.assertEqual((r.returncode, r.stdout), (0, ""), r.stderr)
        self.assertEqual(r.stderr, "%s: configuration OK (relay)\n" % good)
        r = run("check-config", "-q", good)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))
        r = run("check-config", "--print", good)
        self.assertEqual(r.returncode, 0, r.stderr)
        dump = json.loads(r.stdout)
        self.assertEqual(dump["relay"]["tls"]["client_ca"], H.certs().ca)
        # A catch-all route first hides the others; CIDRs with host bits.
        cfg = self.relay_cfg()
        cfg["relay"]["tenants"] = [{"name": "t1", "match": {"cn": ["a"]}},
                                   {"name": "t2", "match": {"cn": ["b"]}}]
        cfg["relay"]["routes"] = [
            {"name": "t1-any", "tenant": "t1"},
            {"name": "t1-etl", "tenant": "t1", "app": "etl-*"},
            {"name": "t2-net", "tenant": "t2", "sidecar_cidrs": ["10.1.2.3/8"],
             "executor_cidrs": ["10.0.0.0/8", "192.168.1.1/24", "fd00::1/64"]},
            {"name": "all", "tenant": "*"},
            {"name": "t2-late", "tenant": "t2"},
        ]
        path = self.write("warn.json", cfg)
        r = run("check-config", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        warnings = [l for l in r.stderr.splitlines() if l.startswith("warning: ")]
        text = "\n".join(warnings)
        self.assertIn('relay.routes[1] ("t1-etl") is never used: relay.routes[0] ("t1-any")',
                      text)
        self.assertIn('relay.routes[4] ("t2-late") is never used: relay.routes[3] ("all")',
                      text)
        self.assertIn("relay.routes[2].sidecar_cidrs[0]: 10.1.2.3/8 has host bits set: it "
                      "means 10.0.0.0/8", text)
        self.assertIn("relay.routes[2].executor_cidrs[1]: 192.168.1.1/24 has host bits set: "
                      "it means 192.168.1.0/24", text)
        self.assertIn("relay.routes[2].executor_cidrs[2]: fd00::1/64 has host bits set: it "
                      "means fd00::/64", text)
        self.assertEqual(len(warnings), 5, text)
        self.assertNotIn("executor_cidrs[0]", text)
        self.assertTrue(r.stderr.endswith("configuration OK (relay), 5 warnings\n"), r.stderr)
        # A pool bound to an address this host does not have: a warning (the
        # check may run elsewhere), which the relay makes an error at start.
        other = self.relay_cfg()
        other["relay"].pop("pool", None)
        other["relay"]["pools"] = [{"name": "a", "bind": "127.0.0.1", "port_min": 41500,
                                    "port_max": 41509},
                                   {"name": "b", "bind": "192.0.2.1", "port_min": 41510,
                                    "port_max": 41519}]
        r = run("check-config", self.write("bind.json", other))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("warning: relay.pools[1].bind 192.0.2.1 is not an address of this host",
                      r.stderr)
        self.assertNotIn("pools[0]", r.stderr)
        # The relay says the same at start.
        cfg["relay"]["listen"] = "127.0.0.1:%d" % H.free_port()
        path = self.write("warn-run.json", cfg)
        p = H.Proc("relay-warn", [H.BIN, "relay", "--config", path], self.stack.dir).start()
        self.track(p)
        self.assertTrue(X.wait_log(p, "is never used", 10, count=2), p.log_text())
        self.assertTrue(X.wait_log(p, "listening for sidecars", 10))

    def test_fleet_settings_the_relay_would_refuse_are_refused(self):
        # check-config said "configuration OK" for fleet settings the relay
        # then refused at start (or, a secret file too short, refused
        # at start only): each is now named by check-config, with its place
        # in the file, and the relay refuses it in the same words.
        secret = os.path.join(self.stack.dir, "fleet.secret")
        short = os.path.join(self.stack.dir, "short.secret")
        for path, n in ((secret, 48), (short, 10)):
            with open(path, "wb") as f:
                f.write(os.urandom(n))
            os.chmod(path, 0o600)
        good = {"etcd": ["http://127.0.0.1:9"], "peer_listen": "127.0.0.2:0",
                "secret_file": secret}
        rule = ("must be a numeric IP:port other relays can dial (not a wildcard, multicast "
                "or broadcast address, nor port 0)")
        cases = [
            ("id", {"id": "relay\x1b[2Ja"},
             "relay.fleet.id: must be 1-63 letters, digits, '.', '_' or '-' "
             "(got \"relay\\x1b[2Ja\")"),
            ("no peer_listen", {"peer_listen": None},
             "relay.fleet.peer_listen: required with relay.fleet.etcd"),
            ("no secret_file", {"secret_file": None},
             "relay.fleet.secret_file: required with relay.fleet.etcd"),
            ("name as peer_listen", {"peer_listen": "localhost:8444"},
             "relay.fleet.peer_listen: must be a numeric host:port (got \"localhost:8444\")"),
            ("wildcard peer_listen", {"peer_listen": "0.0.0.0:8444"},
             "relay.fleet.peer_advertise: required when relay.fleet.peer_listen "
             "(\"0.0.0.0:8444\") is a wildcard address"),
            ("v6 wildcard peer_listen", {"peer_listen": "[::]:8444"},
             "relay.fleet.peer_advertise: required when relay.fleet.peer_listen "
             "(\"[::]:8444\") is a wildcard address"),
            ("multicast peer_listen", {"peer_listen": "224.0.0.1:0"},
             "relay.fleet.peer_listen: with no relay.fleet.peer_advertise, other relays dial "
             "this address"),
            ("wildcard advertise", {"peer_advertise": "0.0.0.0:8444"},
             "relay.fleet.peer_advertise: %s (got \"0.0.0.0:8444\")" % rule),
            ("port 0 advertise", {"peer_advertise": "10.0.0.1:0"},
             "relay.fleet.peer_advertise: %s (got \"10.0.0.1:0\")" % rule),
            ("etcd endpoint without a scheme", {"etcd": ["etcd-0:2379"]},
             "relay.fleet.etcd: etcd endpoint \"etcd-0:2379\": want http://host:port or "
             "https://host:port"),
            ("etcd endpoint with a path", {"etcd": ["http://127.0.0.1:9", "https://e:2379/v3"]},
             "relay.fleet.etcd: etcd endpoint \"https://e:2379/v3\": want http(s)://host:port "
             "with no path or user"),
            ("missing etcd CA", {"etcd_ca": "/nonexistent/etcd-ca.pem"},
             "relay.fleet.etcd_ca, etcd_cert, etcd_key: the CA file /nonexistent/etcd-ca.pem"),
            ("short secret", {"secret_file": short},
             "fleet secret /tmp/"),  # long paths are cut
        ]
        for name, fleet, want in cases:
            cfg = self.relay_cfg()
            cfg["relay"]["fleet"] = dict(good, **fleet)
            path = self.write("fleet-" + name.replace(" ", "_") + ".json", cfg)
            r = run("check-config", path, env=clean_env())
            self.assertEqual(r.returncode, 1, "%s: check-config rc %d\n%s" %
                             (name, r.returncode, r.stderr))
            self.assertIn(want, r.stderr, name)
            if name == "short secret":
                self.assertIn(": must hold 32 to 1024 bytes, it holds 10", r.stderr)
            self.assertNotIn("\x1b", r.stderr, name)
            if name not in ("short secret", "missing etcd CA"):  # files: no place in the file
                self.assertRegex(r.stderr, r"^%s:\d+:\d+: relay\.fleet\." % re.escape(path),
                                 name)
        cfg = self.relay_cfg()
        cfg["relay"]["fleet"] = good
        r = run("check-config", self.write("fleet-good.json", cfg), env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        # The relay refuses the same at start, in the same words.
        for name, fleet, want in (cases[4], cases[9], cases[-1]):
            cfg = self.relay_cfg()
            cfg["relay"]["listen"] = "127.0.0.1:%d" % H.free_port()
            cfg["relay"]["fleet"] = dict(good, **fleet)
            path = self.write("fleet-run-" + name.replace(" ", "_") + ".json", cfg)
            p = H.Proc("relay-" + name.replace(" ", "-"), [H.BIN, "relay", "--config", path],
                       self.stack.dir).start()
            self.track(p)
            X.wait_for(lambda: not p.alive(), 10)
            self.assertEqual(p.p.returncode, 1, name)
            self.retire(p)
            self.assertTrue(p.grep(want), p.log_text())
            self.assertFalse(p.grep("listening for sidecars"), name)

    def test_usage(self):
        r = run("check-config")
        self.assertEqual(r.returncode, 2)
        r = run("check-config", "--bogus", "x.json")
        self.assertEqual(r.returncode, 2)


# --------------------------------------------------------------------------
# route explain on a file, and configured tenants' default limits.

class PoolBindTest(X.XCase):
    """pool.bind must be an address of this host: lease ports are bound only
    when a lease is granted, so such a pool used to start fine and then
    refuse every registration as "internal". The relay now refuses to start
    with it, and a reload to it is refused (the running configuration
    stays and goes on granting)."""

    auto_tunnel = False
    WANT = ("pool default: pool.bind 10.255.255.1 is not an address of this host "
            "(Cannot assign requested address)")

    def bad_cfg(self):
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["pool"]["bind"] = "10.255.255.1"
        return cfg

    def test_a_relay_does_not_start_with_it(self):
        cfg = self.bad_cfg()
        cfg["relay"]["listen"] = "127.0.0.1:%d" % H.free_port()
        path = H.write_config(os.path.join(self.stack.dir, "bad-bind.json"), cfg)
        p = H.Proc("relay-bad", [H.BIN, "relay", "--config", path], self.stack.dir).start()
        self.track(p)
        X.wait_for(lambda: not p.alive(), 10)
        self.assertEqual(p.p.returncode, 1)
        self.retire(p)
        self.assertTrue(p.grep("cannot start: " + self.WANT), p.log_text())
        self.assertFalse(p.grep("listening for sidecars"))

    def test_a_reload_to_it_is_refused(self):
        st = self.stack
        H.write_config(st.relay_cfg_path, self.bad_cfg())
        st.relay.p.send_signal(signal.SIGHUP)
        self.assertTrue(X.wait_log(st.relay, "reload refused, the running configuration "
                                             "stays: " + self.WANT, 10), st.relay.tail())
        st.start_tunnel()
        self.track(st.tunnel)
        self.assertEqual(st.lease["host"], "127.0.0.2")


class RouteExplainFileTest(X.XCase):
    auto_tunnel = False

    def setUp(self):
        super().setUp()
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        base = self.stack.pool_base
        cfg["relay"].pop("pool", None)
        cfg["relay"]["pools"] = [
            {"name": "cpu", "bind": H.POOL_HOST, "port_min": base, "port_max": base + 7},
            {"name": "gpu", "bind": H.POOL_HOST, "port_min": base + 8, "port_max": base + 15}]
        cfg["relay"]["tenants"] = [
            {"name": "ds", "match": {"san": ["*.notebooks.example.com"]}},
            {"name": "ops", "match": {"cn": ["ops-*"]}, "limits": {"leases": 3}}]
        cfg["relay"]["routes"] = [
            {"name": "ds-gpu", "tenant": "ds", "app": "gpu-*", "pool": "gpu"},
            {"name": "ops-vpc", "tenant": "ops", "sidecar_cidrs": ["10.0.0.0/8"],
             "pool": "cpu"}]
        self.path = H.write_config(os.path.join(self.stack.dir, "candidate.json"), cfg)

    def test_explain_without_a_relay(self):
        r = run("route", "explain", "--config", self.path, "--san", "x.example.org",
                "--san", "nb1.notebooks.example.com", "--app", "gpu-train",
                env=clean_env())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('tenant "ds"', r.stdout)
        self.assertIn('route "ds-gpu"', r.stdout)
        self.assertIn('pool "gpu"', r.stdout)
        r = run("route", "explain", "--config", self.path, "--san",
                "nb1.notebooks.example.com", "--app", "gpu-train", "-o", "json",
                env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual({k: j[k] for k in ("allowed", "tenant", "route", "pool", "reason")},
                         {"allowed": True, "tenant": "ds", "route": "ds-gpu", "pool": "gpu",
                          "reason": None})
        self.assertIn("ds-gpu", j["explanation"])
        # Refused: no route for the app, or no tenant at all: exit 1.
        r = run("route", "explain", "--config", self.path, "--san",
                "nb1.notebooks.example.com", "--app", "cpu-etl", "-o", "json",
                env=clean_env())
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual((j["allowed"], j["tenant"], j["route"]), (False, "ds", None))
        self.assertTrue(j["reason"])
        r = run("route", "explain", "--config", self.path, "--cn", "ops-1", "--addr",
                "192.168.0.1", env=clean_env())
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("refused", r.stdout)
        r = run("route", "explain", "--config", self.path, "--cn", "ops-1", "--addr",
                "10.9.8.7", env=clean_env())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run("route", "explain", "--config", self.path, "--cn", "nobody", env=clean_env())
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        # Errors: a file that does not load (3), usage (2).
        cfg = json.loads(json.dumps(self.stack.relay_cfg))
        cfg["relay"]["routes"] = [{"name": "r", "pool": "nope"}]
        bad = H.write_config(os.path.join(self.stack.dir, "bad.json"), cfg)
        r = run("route", "explain", "--config", bad, env=clean_env())
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("relay.routes[0].pool", r.stderr)
        self.assertEqual(run("route", "explain", "--cn", "x", env=clean_env()).returncode, 2)
        self.assertEqual(run("route", "explain", "--config", self.path, "--addr", "nope",
                             env=clean_env()).returncode, 2)
        self.assertEqual(run("route", "frobnicate", env=clean_env()).returncode, 2)
        # ctl route explain --config is the same, without a relay.
        env = clean_env()
        env["SPARKRELAY_ADMIN_URL"] = "http://127.0.0.1:%d" % H.free_port()
        r = run("ctl", "route", "explain", "--config", self.path, "--cn", "nobody", env=env)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)

    def test_explain_prints_no_control_bytes_and_no_token(self):
        # The question's names reach the terminal: an app name or a
        # certificate name with an escape sequence (ESC, BEL, a C1 CSI in
        # UTF-8) must come out as visible text, never as the bytes. A token
        # picks its tenant by digest and is never printed.
        token = "explain-token-%d" % os.getpid()
        with open(self.path) as f:
            cfg = json.loads(f.read())
        cfg["relay"]["tenants"].append({"name": "by-token", "match": {
            "token_sha256": [hashlib.sha256(token.encode()).hexdigest()]}})
        path = H.write_config(os.path.join(self.stack.dir, "with-token.json"), cfg)
        hostile = [b"--app", b"gpu-\x1b[31mred\xc2\x9b\x07", b"--cn", b"ops-\x1b]0;title\x07",
                   b"--san", b"nb\x08.notebooks.example.com"]
        r = subprocess.run([H.BIN, "route", "explain", "--config", path] + hostile,
                           capture_output=True, timeout=30, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        bad = sorted({c for c in r.stdout if (c < 0x20 and c != 0x0a) or c >= 0x7f})
        self.assertEqual(bad, [], r.stdout)
        self.assertIn(b"red", r.stdout)  # the name is shown, made visible
        self.assertIn(b'tenant "ds"', r.stdout)
        r = subprocess.run([H.BIN, "route", "explain", "--config", path, "-o", "json"]
                           + hostile, capture_output=True, timeout=30, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted({c for c in r.stdout if c < 0x0a or 0x0a < c < 0x20
                                 or c >= 0x7f}), [], r.stdout)
        json.loads(r.stdout)
        r = run("route", "explain", "--config", path, "--token", token, "--app", "x",
                env=clean_env())
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)  # no route for tenant by-token
        self.assertIn('tenant "by-token"', r.stdout)
        self.assertNotIn(token, r.stdout + r.stderr)
        r = run("route", "explain", "--config", path, "-o", "yaml", env=clean_env())
        self.assertEqual((r.returncode, r.stdout), (2, ""))
        self.assertIn("-o takes text or json", r.stderr)
        r = run("route", "explain", "--help", env=clean_env())
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assertIn("usage: sparkrelay route explain", r.stdout)

    def test_configured_tenants_get_default_limits(self):
        r = run("check-config", "--print", self.path, env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        tenants = {t["name"]: t["limits"] for t in json.loads(r.stdout)["relay"]["tenants"]}
        self.assertEqual(tenants["ds"], {"leases": 256, "connections": 16384, "pending": 0})
        self.assertEqual(tenants["ops"]["leases"], 3)
        self.assertEqual(tenants["ops"]["connections"], 16384)


if __name__ == "__main__":
    H.main()
