"""`sparkrelay gen-certs` as the README shows it, from nothing to an mTLS
tenant:

- `gen-certs DIR` creates DIR (and missing parents) mode 0700, since it will
  hold a CA key; before, it failed with "No such file or directory";
- `gen-certs DIR --client NAME [--san SAN]...` issues a client certificate
  with CN NAME from the CA in DIR, and a relay whose tenant matches that CN
  (or SAN) gives the sidecar presenting it a lease as that tenant.
"""

import json
import os
import re
import stat
import subprocess
import unittest
import urllib.request

import harness as H

ADMIN_RE = re.compile(r"127\.0\.0\.1:(\d+)")


def gen_certs(*args):
    return subprocess.run([H.BIN, "gen-certs"] + list(args), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


class GenCertsTest(unittest.TestCase):

    def setUp(self):
        if H.DIRECT or not H.BIN:
            self.skipTest("needs the sparkrelay binary")
        self.dir = H.new_dir(self.id())
        self.stack = None

    def tearDown(self):
        if self.stack is not None:
            problems = self.stack.stop()
            if problems or H._test_failed(self):
                H._any_failure = True
                self.stack.dump_logs()
            self.assertEqual(problems, [])

    def test_missing_folder_is_created_private(self):
        d = os.path.join(self.dir, "new", "certs")
        r = gen_certs(d, "relay.example.com")
        self.assertEqual(r.returncode, 0, r.stderr)
        for p in (os.path.join(self.dir, "new"), d):
            self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o700, p)
        self.assertEqual(sorted(os.listdir(d)), ["ca.key", "ca.pem", "relay.key", "relay.pem",
                                                  "sidecar.key", "sidecar.pem"])
        # an existing folder keeps its mode
        os.chmod(d, 0o755)
        self.assertEqual(gen_certs(d).returncode, 0)
        self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o755)

    def test_client_without_a_ca_says_how_to_make_one(self):
        d = os.path.join(self.dir, "empty")
        r = gen_certs(d, "--client", "alice")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no development CA there (make one first: sparkrelay gen-certs %s)" % d,
                      r.stderr)
        self.assertFalse(os.path.exists(d))
        for bad in ("../alice", "-x", "a b"):
            r = gen_certs(self.dir, "--client", bad)
            self.assertNotEqual(r.returncode, 0, bad)
        self.assertEqual(gen_certs(self.dir, "--san", "x").returncode, 2)

    def test_client_certificate_is_a_tenant_identity(self):
        d = os.path.join(self.dir, "pki")
        self.assertEqual(gen_certs(d, "localhost", "127.0.0.1").returncode, 0)
        r = gen_certs(d, "--client", "alice", "--san", "alice.notebooks.example",
                      "--san", "spiffe://cluster/ns/ds/sa/alice")
        self.assertEqual(r.returncode, 0, r.stderr)
        cert, key = os.path.join(d, "client-alice.pem"), os.path.join(d, "client-alice.key")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        out = H._openssl(["x509", "-in", cert, "-noout", "-subject", "-ext",
                          "subjectAltName,extendedKeyUsage"], d)
        self.assertIn("CN = alice", out)
        self.assertIn("DNS:alice.notebooks.example", out)
        self.assertIn("URI:spiffe://cluster/ns/ds/sa/alice", out)
        self.assertIn("TLS Web Client Authentication", out)
        H._openssl(["verify", "-CAfile", os.path.join(d, "ca.pem"), "-purpose", "sslclient",
                    cert], d)

        # a relay that knows tenants only by certificate: alice by CN, bob by SAN
        tenants = [{"name": "by-cn", "match": {"cn": ["alice"]}},
                   {"name": "by-san", "match": {"san": ["*.notebooks.example"]}}]
        relay = {"relay": {"tls": {"cert": os.path.join(d, "relay.pem"),
                                   "key": os.path.join(d, "relay.key"),
                                   "client_ca": os.path.join(d, "ca.pem"),
                                   "require_client_cert": True},
                           "tenants": tenants}}
        tunnel = {"tunnel": {"server_name": "localhost",
                             "tls": {"ca": os.path.join(d, "ca.pem"), "cert": cert,
                                     "key": key}}}
        self.stack = H.Stack(self.id(), relay, tunnel)
        self.stack.start()
        with urllib.request.urlopen(self.admin_url() + "/v1/leases", timeout=10) as resp:
            leases = json.load(resp)
        self.assertEqual([l["tenant"] for l in leases], ["by-cn"], leases)

    def admin_url(self):
        for line in self.stack.relay.log_text().splitlines():
            m = ADMIN_RE.search(line)
            if "admin API listening" in line and m:
                return "http://127.0.0.1:%s" % m.group(1)
        self.fail("no admin API address in the relay log")

if __name__ == "__main__":
    H.main()
