"""Every way the sidecar cannot start ends with one line naming the file and
the setting, and exit status 1; `check-config` refuses the same settings.

Before, a CA file that could not be loaded made `sparkrelay tunnel` crash
(exit 139, nothing on stderr) and `check-config` said "configuration OK";
later it printed OpenSSL's error queue. The user has to learn which file,
which setting and why:

    sparkrelay tunnel: cannot load CA /nope/ca.pem (tunnel.tls.ca): No such file or directory

One case per failure of the sidecar's constructor a user can reach: the CA
(missing, unreadable, a directory, empty, not PEM, no certificate in it), the
client certificate and key (missing, not PEM, encrypted, not a pair), given
in a file or in SPARKRELAY_* variables; and the status listener that cannot
bind. The relays list and the CA are required settings, refused by the
loader before (tests/unit/conf).
"""

import os
import socket
import subprocess
import unittest

import harness as H

RUN_TIMEOUT = 30


def env_with(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKRELAY_")}
    env.update(extra)
    return env


class SidecarStartErrorTest(unittest.TestCase):

    def setUp(self):
        if H.DIRECT or not H.BIN:
            self.skipTest("needs the sparkrelay binary")
        self.dir = H.new_dir(self.id())
        self.c = H.certs()

    def path(self, name, content=None, mode=None):
        p = os.path.join(self.dir, name)
        if content is not None:
            with open(p, "w") as f:
                f.write(content)
        if mode is not None:
            os.chmod(p, mode)
        return p

    def config(self, name, tls):
        cfg = H.tunnel_config(H.free_port(), self.dir, {"tunnel": {"tls": tls}})
        return H.write_config(self.path(name + ".json"), cfg)

    def run_bin(self, argv, env=None):
        r = subprocess.run([H.BIN] + argv, env=env_with(env or {}), cwd=self.dir,
                           capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           stdin=subprocess.DEVNULL, preexec_fn=H._child_setup)
        for m in H.SANITIZER_MARKERS:
            self.assertNotIn(m, r.stderr, "sanitizer report:\n" + r.stderr)
        return r

    def assert_refused(self, r, want, what):
        self.assertEqual(r.returncode, 1, "%s: exit status %d (want 1), stderr:\n%s" %
                         (what, r.returncode, r.stderr))
        self.assertIn(want, r.stderr, what)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, "%s: more than one line: %r" % (what, lines))

    def check_both(self, what, cfg, want):
        """`tunnel --config cfg` and `check-config cfg` both refuse with want."""
        r = self.run_bin(["tunnel", "--config", cfg])
        self.assert_refused(r, want, "tunnel: " + what)
        self.assertTrue(r.stderr.startswith("sparkrelay tunnel: "), r.stderr)
        r = self.run_bin(["check-config", cfg])
        self.assert_refused(r, want, "check-config: " + what)
        self.assertNotIn("configuration OK", r.stderr)
        self.assertEqual(r.stdout, "", "check-config printed a configuration it refused")

    def test_the_issue_example_from_the_environment(self):
        env = {"SPARKRELAY_TUNNEL_TLS_CA": "/nope/ca.pem",
               "SPARKRELAY_TUNNEL_RELAYS": "127.0.0.1:%d" % H.free_port()}
        r = self.run_bin(["tunnel"], env)
        self.assertEqual(r.stderr, "sparkrelay tunnel: cannot load CA /nope/ca.pem "
                         "(tunnel.tls.ca): No such file or directory\n")
        self.assertEqual(r.returncode, 1)
        # the variable also overrides a file that names a good CA
        cfg = self.config("good", {"ca": self.c.ca})
        r = self.run_bin(["tunnel", "--config", cfg], env)
        self.assert_refused(r, "cannot load CA /nope/ca.pem (tunnel.tls.ca): No such file "
                            "or directory", "env over a file")
        r = self.run_bin(["check-config", cfg], env)
        self.assert_refused(r, "cannot load CA /nope/ca.pem (tunnel.tls.ca)", "check-config")

    def test_folders_of_the_files_it_writes_must_exist(self):
        # It makes none: a missing folder was found at the first lease, with
        # the name of a temporary file, and the sidecar went on without
        # writing the driver's settings.
        f = self.path("a-file", "x")
        for key, path, want in (
                ("spark_conf", "/nope/dir/spark-defaults.conf", "does not exist"),
                ("spark_json", "/nope/spark.json", "does not exist"),
                ("status_file", os.path.join(f, "status.json"), "is not a folder"),
                ("state_file", "/nope/state.json", "does not exist"),
                ("spark_defaults", "/nope/conf/spark-defaults.conf", "does not exist")):
            cfg = H.tunnel_config(H.free_port(), self.dir, {"tunnel": {
                "tls": {"ca": self.c.ca}, key: path}})
            p = H.write_config(self.path(key + ".json"), cfg)
            self.check_both(key, p, "the folder of %s (tunnel.%s) %s" % (path, key, want))

    def test_bad_ca_files(self):
        d = self.path("a-directory")
        os.mkdir(d)
        cases = [
            ("missing", "/nope/ca.pem", "No such file or directory"),
            ("a directory", d, "Is a directory"),
            ("empty", self.path("empty.pem", ""), "the file is empty"),
            ("not PEM", self.path("garbage.pem", "hello\n" * 10), "no PEM certificate in it"),
            ("a key, no certificate", self.c.ca_key, "no PEM certificate in it"),
            ("a broken PEM block", self.path("broken.pem", "-----BEGIN CERTIFICATE-----\n"
                                             "!!!!\n-----END CERTIFICATE-----\n"),
             "not PEM certificates"),
        ]
        if os.geteuid() != 0:  # root reads any file
            cases.append(("unreadable", self.path("secret.pem", open(self.c.ca).read(),
                                                  0o000), "Permission denied"))
        for what, ca, why in cases:
            with self.subTest(what):
                cfg = self.config("ca-" + what.replace(" ", "-").replace(",", ""),
                                  {"ca": ca})
                self.check_both(what, cfg, "cannot load CA %s (tunnel.tls.ca): %s" %
                                (ca, why))

    def test_bad_client_certificate_or_key(self):
        enc = self.path("encrypted.key")
        H._openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-aes256", "-pass", "pass:secret", "-out", enc], self.dir)
        cert, key = self.c.client_cert, self.c.client_key
        cases = [
            ("certificate missing", "/nope/client.pem", key,
             "cannot load certificate /nope/client.pem (tunnel.tls.cert): No such file"),
            ("key missing", cert, "/nope/client.key",
             "cannot load key /nope/client.key (tunnel.tls.key): No such file"),
            ("certificate is a key", key, key,
             "cannot load certificate %s (tunnel.tls.cert): no PEM certificate" % key),
            ("key is a certificate", cert, cert,
             "cannot load key %s (tunnel.tls.key): no PEM private key" % cert),
            ("key encrypted", cert, enc,
             "cannot load key %s (tunnel.tls.key): the key is encrypted" % enc),
            ("key of another certificate", cert, self.c.other_client_key,
             "cannot load key %s (tunnel.tls.key): it does not match certificate %s "
             "(tunnel.tls.cert)" % (self.c.other_client_key, cert)),
        ]
        for what, c, k, want in cases:
            with self.subTest(what):
                cfg = self.config("pair-" + what.replace(" ", "-"),
                                  {"ca": self.c.ca, "cert": c, "key": k})
                self.check_both(what, cfg, want)
        # the same from the environment, over a file without them
        cfg = self.config("no-pair", {"ca": self.c.ca})
        env = {"SPARKRELAY_TUNNEL_TLS_CERT": cert,
               "SPARKRELAY_TUNNEL_TLS_KEY": self.c.other_client_key}
        for argv in (["tunnel", "--config", cfg], ["check-config", cfg]):
            r = self.run_bin(argv, env)
            self.assert_refused(r, "(tunnel.tls.key): it does not match certificate",
                                " ".join(argv[:1]) + " from the environment")

    def test_good_files_pass(self):
        cfg = self.config("good", {"ca": self.c.ca, "cert": self.c.client_cert,
                                   "key": self.c.client_key})
        r = self.run_bin(["check-config", cfg])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK (tunnel)", r.stderr)

    def test_status_listener_that_cannot_bind(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = H.tunnel_config(H.free_port(), self.dir,
                              {"tunnel": {"admin": {"listen": "127.0.0.1:%d" % port}}})
        path = H.write_config(self.path("admin.json"), cfg)
        r = self.run_bin(["tunnel", "--config", path])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("cannot start the status API", r.stderr)
        self.assertIn("127.0.0.1:%d" % port, r.stderr)


if __name__ == "__main__":
    H.main()
