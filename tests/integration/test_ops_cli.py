"""The command line and the logs, as an operator uses them.

  - CLI conventions: -V/--version, `ctl help`, every command's --help short,
    on stdout, exit 0; relay --help does not require --config;
  - ctl tables: the app of a session, a detached lease's expiry countdown,
    --tenant/--app filters, --no-headers, -o wide; route explain against a
    running relay exits 1 when refused, -o json, --san;
  - logs: every relay line about a lease carries lease=<id> (grep follows a
    notebook), a start-up line with the version and the configuration, the
    JSON format, and executor refusals logged once per period while every one
    is counted.
"""

import json
import os
import re
import shutil
import tempfile
import signal
import socket
import subprocess
import time

import harness as H
import harness_extra as X
import test_admin as A
from harness import h_echo

COMMANDS = ["demo", "relay", "tunnel", "ctl", "check-config", "route", "config-docs",
            "gen-certs", "version"]


def run(*args, env=None, timeout=30):
    r = subprocess.run([H.BIN] + list(args), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=env)
    for marker in H.SANITIZER_MARKERS:
        assert marker not in r.stderr, "%s: sanitizer report:\n%s" % (args, r.stderr)
    return r


class CliTest(X.XCase):
    auto_tunnel = False

    def test_version_and_help_conventions(self):
        want = run("version").stdout
        self.assertRegex(want, r"^sparkrelay \d+\.\d+\.\d+ \(tunnel protocol v\d+\)\n$")
        for flag in ("-V", "--version"):
            r = run(flag)
            self.assertEqual((r.returncode, r.stdout, r.stderr), (0, want, ""), flag)
        for role in ("relay", "tunnel"):
            r = run(role, "--version")
            self.assertEqual((r.returncode, r.stdout), (0, want), role)
        r = run("ctl", "--version")
        self.assertEqual(r.returncode, 0)
        self.assertIn("sparkrelay", r.stdout)
        for cmd in COMMANDS:
            for flag in ("--help", "-h"):
                r = run(cmd, flag)
                self.assertEqual(r.returncode, 0, "%s %s: rc %d\n%s" %
                                 (cmd, flag, r.returncode, r.stderr))
                self.assertEqual(r.stderr, "", "%s %s wrote to stderr" % (cmd, flag))
                self.assertIn("usage: sparkrelay", r.stdout, "%s %s" % (cmd, flag))
                self.assertLessEqual(len(r.stdout.splitlines()), 45,
                                     "%s %s prints %d lines" %
                                     (cmd, flag, len(r.stdout.splitlines())))
        for role in ("relay", "tunnel"):
            out = run(role, "--help").stdout
            self.assertIn("[--config FILE]", out)
            self.assertIn("environment", out)
        r = run("ctl", "help")
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assertIn("commands:", r.stdout)
        r = run("ctl", "help", "leases")
        self.assertEqual(r.returncode, 0)
        self.assertTrue(r.stdout.startswith("usage: sparkrelay ctl leases"), r.stdout)
        self.assertEqual(run("ctl", "help", "frobnicate").returncode, 2)
        self.assertEqual(run("relay", "extra-argument").returncode, 2)
        self.assertEqual(run("config-docs", "extra").returncode, 2)
        self.assertEqual(run("version", "extra").returncode, 2)
        for args, why in ((("check-config",), "FILE is required"),
                          (("check-config", "a", "b"), "one FILE only")):
            r = run(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(why, r.stderr, args)
            self.assertIn("usage: sparkrelay check-config", r.stderr, args)
        r = run()
        self.assertEqual(r.returncode, 2)


    def test_misused_options_exit_2_and_say_why(self):
        """A wrong option exits 2 before anything starts, with one line on
        stderr that names the option (escaped) and nothing on stdout."""
        cases = [
            (("tunnel", "--takeover"), "--takeover is a relay option"),
            (("tunnel", "--wait-after-handover"), "--wait-after-handover is a relay option"),
            (("relay", "--takeover=now"), '--takeover takes no value but "auto"'),
            (("relay", "--log-level", "loud\x1b[31m"), 'unknown log level "loud\\x1b[31m"'),
            (("tunnel", "--no-such-option"), "usage: sparkrelay tunnel [--config FILE]"),
        ]
        for args, want in cases:
            r = run(*args, timeout=10)
            self.assertEqual(r.returncode, 2, "%s: rc %d\n%s" % (args, r.returncode, r.stderr))
            self.assertEqual(r.stdout, "", args)
            self.assertIn(want, r.stderr, args)
            self.assertNotIn("\x1b", r.stderr, args)

    def test_paths_and_arguments_are_escaped_in_messages(self):
        """A config path, a stray argument or a gen-certs directory is
        quoted back in errors and reports: its control characters (C1 too)
        escaped, the message one line."""
        d = tempfile.mkdtemp(prefix="sr-esc-")
        self.addCleanup(shutil.rmtree, d, True)
        evil = "\x1b[31mRED\n\rX\u009b2J"
        cases = [(("relay", "--config", evil), 1, "cannot open"),
                 (("tunnel", "--config", evil), 1, "cannot open"),
                 (("check-config", evil), 1, "cannot open"),
                 (("relay", evil), 2, "unexpected argument"),
                 (("gen-certs", os.path.join(d, evil), "relay.example.com"), 0, "wrote"),
                 (("gen-certs", os.path.join(d, "x"), "bad" + evil), 1, "extra name")]
        for args, rc, want in cases:
            r = run(*args, timeout=30)
            self.assertEqual(r.returncode, rc, "%r: %s" % (args, r.stderr))
            out = r.stdout + r.stderr
            self.assertIn(want, out, args)
            self.assertIn("\\x1b[31mRED\\x0a\\x0dX", out, args)
            self.assertFalse(re.search("[\x00-\x09\x0b-\x1f\x7f\x80-\x9f]", out),
                             "%r: a control character reached the terminal: %r" % (args, out))
            self.assertEqual(out.count("\n"), 1, "%r: %r" % (args, out))

    def test_a_first_run_without_configuration_says_what_to_give(self):
        """No file and no variables, only variables, a file with no
        section: each says what is missing and how to give it, exit 1."""
        bare = {k: v for k, v in os.environ.items()
                if not k.startswith("SPARKRELAY_") or k.startswith("SPARKRELAY_BIN")}
        for cmd, var in (("relay", "SPARKRELAY_RELAY_*"), ("tunnel", "SPARKRELAY_TUNNEL_*")):
            r = run(cmd, env=bare)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("no configuration: give --config FILE", r.stderr)
            self.assertIn(var, r.stderr)
        r = run("relay", env=dict(bare, SPARKRELAY_RELAY_LISTEN="127.0.0.1:1"))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("relay.tls.cert: required, but not set (set SPARKRELAY_RELAY_TLS_CERT, "
                      "or give --config FILE)", r.stderr)
        d = tempfile.mkdtemp(prefix="sr-empty-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "empty.json")
        with open(path, "w") as f:
            f.write("{}\n")
        r = run("check-config", path)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('neither a "relay" nor a "tunnel" section', r.stderr)

    def test_a_relay_name_that_resolves_twice_is_dialled_once(self):
        """"localhost" came back twice as 127.0.0.1 on the machine this was
        found on (libevent's own answer and /etc/hosts): each round dialled it
        twice and said so twice. Where it resolves once, this passes either
        way."""
        d = tempfile.mkdtemp(prefix="sr-lh-")
        self.addCleanup(shutil.rmtree, d, True)
        port = H.free_port()
        cfg = H.tunnel_config(port, d, {"tunnel": {"relays": ["localhost:%d" % port],
                                                   "backoff_initial_ms": 200}})
        path = H.write_config(os.path.join(d, "tunnel.json"), cfg) or os.path.join(
            d, "tunnel.json")
        p = subprocess.Popen([H.BIN, "tunnel", "--config", path], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        p.terminate()
        _, err = p.communicate(timeout=15)
        rounds = err.count("reconnecting in")
        dials = err.count("cannot reach relay 127.0.0.1:%d" % port)
        self.assertGreaterEqual(rounds, 2, err)
        self.assertIn(dials, (rounds, rounds + 1), err)

    def test_ctl_escapes_what_it_was_given(self):
        """The admin URL and the arguments come from the environment and the
        command line, and reach the terminal in error messages: no control
        byte of theirs may (an escape sequence sets a terminal's title, its
        colours, or worse)."""
        evil = "\x1b]0;PWNED\x07\x1b[31m"
        env = dict(os.environ, SPARKRELAY_ADMIN_URL="http://127.0.0.1:1/" + evil)
        cases = [(("ctl", "health"), env, "not printable ASCII"),
                 (("ctl", "--admin", "http://127.0.0.1:1/" + evil, "health"), None,
                  "not printable ASCII"),
                 (("ctl", evil), None, "unknown command"),
                 (("ctl", "help", evil), None, "no command"),
                 (("ctl", "-o", evil, "leases"), None, "-o takes"),
                 ((evil,), None, "unknown command"),
                 (("ctl", "--bogus" + evil, "leases"), None, "bad option"),
                 (("check-config", "-" + evil), None, "bad option")]
        for args, e, want in cases:
            r = run(*args, env=e)
            self.assertEqual(r.returncode, 2, "%r: %s" % (args, r.stderr))
            self.assertIn(want, r.stderr, args)
            self.assertFalse(re.search(r"[\x00-\x09\x0b-\x1f\x7f]", r.stderr),
                             "%r: a control byte reached the terminal: %r" % (args, r.stderr))


class CtlTablesTest(A.AdminCase):
    extra_tunnel = {"tunnel": {"app": "etl-nightly"}}

    def test_sessions_app_filters_wide_and_headers(self):
        lease = self.stack.lease["lease"]
        sc = self.sidecar("sc-two", {"tunnel": {"app": "ml-train"}}).start()
        sc.wait_lease(15)
        rc, out, err = self.ctl("sessions")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        head = lines[0].split()
        self.assertIn("APP", head)
        at = lines[0].index("APP")
        apps = sorted(l[at:].split()[0] for l in lines[1:])
        self.assertEqual(apps, ["etl-nightly", "ml-train"], out)
        self.assertNotIn("OPENED", head)
        rc, out, _ = self.ctl("sessions", "-o", "wide")
        self.assertIn("OPENED", out.splitlines()[0].split())
        # Filters, before or after the command, on tables and JSON alike.
        rc, out, _ = self.ctl("leases", "--app", "etl-*")
        self.assertEqual(len(out.splitlines()), 2, out)
        self.assertIn(lease, out)
        rc, out, _ = self.ctl("--app", "ml-*", "-o", "json", "leases")
        self.assertEqual([l["app"] for l in json.loads(out)], ["ml-train"])
        rc, out, _ = self.ctl("sessions", "--tenant", "default", "--no-headers")
        self.assertEqual(len(out.splitlines()), 2, out)
        self.assertFalse(out.startswith("PEER"), out)
        rc, out, _ = self.ctl("leases", "--tenant", "nobody")
        self.assertEqual(out.splitlines(), [out.splitlines()[0]], out)
        rc, out, _ = self.ctl("leases", "--tenant", "nobody", "--no-headers")
        self.assertEqual((rc, out), (0, ""))
        rc, out, _ = self.ctl("leases", "-o", "wide")
        head = out.splitlines()[0].split()
        for col in ("ROUTE", "PEER", "HELD_BYTES", "RESUMES", "REPLAYED", "LOST"):
            self.assertIn(col, head)
        self.assertNotIn("ROUTE", self.ctl("leases")[1].splitlines()[0].split())

    def test_detached_lease_shows_its_expiry(self):
        lease = self.stack.lease["lease"]
        rc, out, _ = self.ctl("leases")
        head, row = out.splitlines()[:2]
        at = head.index("EXPIRES")
        self.assertEqual(row[at:].split()[0], "-", "an attached lease has no expiry:\n" + out)
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        j = self.api_json("GET", "/v1/leases")[0]
        self.assertIs(j["attached"], False)
        self.assertTrue(295000 <= j["expires_in_ms"] <= 300000, j)
        time.sleep(1.2)
        j2 = self.api_json("GET", "/v1/leases")[0]
        self.assertLess(j2["expires_in_ms"], j["expires_in_ms"] - 1000, (j, j2))
        self.assertGreaterEqual(j2["detached_ms"], 1000, j2)
        rc, out, _ = self.ctl("leases")
        head, row = out.splitlines()[:2]
        self.assertRegex(row[head.index("EXPIRES"):].split()[0], r"^4m5\ds$", out)
        self.assertIn(lease, row)

    def test_route_explain_against_the_relay(self):
        rc, out, err = self.ctl("route", "explain", "--cn", "x", "--san", "a.example",
                                "--app", "etl")
        self.assertEqual(rc, 0, err)
        self.assertIn('tenant "default"', out)
        self.assertIn("1 san", out)
        rc, out, err = self.ctl("route", "explain", "-o", "json", "--app", "etl")
        self.assertEqual(rc, 0, err)
        j = json.loads(out)
        self.assertEqual((j["allowed"], j["tenant"], j["route"], j["pool"]),
                         (True, "default", "default", "default"))
        # Without the Accept header the API still answers text (curl).
        code, hdr, text = self.api("POST", "/v1/route/explain", {"app": "etl"})
        self.assertEqual(code, 200)
        self.assertTrue(hdr.get("Content-Type", "").startswith("text/plain"), hdr)
        self.assertIn('tenant "default"', text)
        rc, _, err = self.ctl("route", "explain", "--addr", "not-an-ip")
        self.assertEqual(rc, 2, err)
        rc, _, err = self.ctl("route", "explain", "--app", "x",
                              url="http://127.0.0.1:%d" % H.free_port())
        self.assertEqual(rc, 3, err)


class RefusedExplainTest(A.AdminCase):
    extra_relay = {"relay": {"routes": [{"name": "etl-only", "app": "etl-*"}]}}
    extra_tunnel = {"tunnel": {"app": "etl-1"}}

    def test_a_refusal_exits_1(self):
        rc, out, err = self.ctl("route", "explain", "--app", "ml-train")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("refused", out)
        rc, out, err = self.ctl("route", "explain", "--app", "ml-train", "-o", "json")
        self.assertEqual(rc, 1, out + err)
        j = json.loads(out)
        self.assertEqual((j["allowed"], j["route"]), (False, None))
        self.assertTrue(j["reason"])


# --------------------------------------------------------------------------
# Logs.

class LeaseLogTest(A.AdminCase):
    # Executors from 127.0.0.1 only; a short wait, so that one times out.
    extra_relay = {"relay": {"routes": [{"name": "local", "executor_cidrs": ["127.0.0.1"]}],
                             "lease": {"pending_timeout_ms": 600}}}

    def test_every_line_about_a_lease_carries_lease_id(self):
        lease = self.stack.lease["lease"]
        port = self.lease_ports()["driver"]
        self.stack.start_driver(default=h_echo)
        self.assertIsNone(X.echo_once(self.stack.exec_host, port))
        # Refused by CIDR: a burst from 127.0.0.3, logged once, counted each.
        n = 25
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.bind(("127.0.0.3", 0))
                s.connect((self.stack.exec_host, port))
                X.closed_within(s, 5)
            except ConnectionResetError:
                pass
            finally:
                s.close()
        ok = X.wait_for(lambda: A.metric(self.metrics(), "sparkrelay_refused_total",
                                         reason="cidr") == n, 5)
        self.assertTrue(ok, "the CIDR refusals were not all counted")
        cidr = self.relay.grep("executor_cidrs")
        self.assertEqual(len(cidr), 1, "%d refusals logged %d lines" % (n, len(cidr)))
        # The tunnel goes; an executor waits and times out; the lease is revoked.
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        s = self.stack.executor("driver")
        X.closed_within(s, 5)
        self.assertTrue(X.wait_log(self.relay, "closed after waiting", 5))
        self.assertEqual(self.api("DELETE", "/v1/leases/" + lease)[0], 200)
        self.assertTrue(X.wait_log(self.relay, "revoked by an operator", 5))
        about = [l for l in self.relay.log_text().splitlines() if lease in l]
        self.assertGreaterEqual(len(about), 6, "\n".join(about))
        missing = [l for l in about if "lease=%s" % lease not in l]
        self.assertEqual(missing, [], "lines about %s that grep 'lease=%s' misses:\n%s" %
                         (lease, lease, "\n".join(missing)))
        for needle in ("granted to app", "refused, address not in route",
                       "waiting for the tunnel", "closed after waiting", "revoked"):
            self.assertTrue([l for l in about if needle in l], "no %r line about the lease" %
                            needle)
        # The start-up line: version and what runs.
        start = self.relay.grep("sparkrelay %s" % run("version").stdout.split()[1])
        self.assertEqual(len(start), 1, start)
        for want in ("relay: config %s" % self.stack.relay_cfg_path, "(watched)",
                     "listen 127.0.0.1:%d" % self.relay_port(), "1 pool", "1 route",
                     "admin 127.0.0.1:%d (token)" % self.admin_port, "log debug/text"):
            self.assertIn(want, start[0])


class JsonLogTest(X.XCase):
    """log.format json: every line an object with time, level, role, ctx,
    msg, and text from a sidecar escaped by jansson."""
    relay_overrides = {"log": {"format": "json"}}
    auto_tunnel = False
    APP = "app-\u202e\u00e9-\"q\"\\"

    def test_json_lines(self):
        sc = self.sidecar("sc-json", {"tunnel": {"app": self.APP}}).start()
        j = sc.wait_lease(15)
        self.assertTrue(X.wait_log(self.relay, "granted to app", 5))
        self.relay.signal(signal.SIGHUP)
        self.assertTrue(X.wait_log(self.relay, "configuration reloaded", 5))
        with open(self.relay.log_path, "rb") as f:
            raw = f.read()
        self.assertNotIn("\u202e".encode(), raw, "a bidi override reached the log raw")
        objs = []
        for line in raw.decode("ascii").splitlines():
            o = json.loads(line)  # every line is JSON, and ASCII
            self.assertEqual(sorted(o), ["ctx", "level", "msg", "role", "time"], line)
            self.assertRegex(o["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIn(o["level"], ("error", "warn", "info", "debug"))
            self.assertEqual(o["role"], "relay")
            objs.append(o)
        granted = [o for o in objs if "granted to app" in o["msg"]]
        self.assertEqual(len(granted), 1)
        self.assertIn("lease=%s" % j["lease"], granted[0]["ctx"])
        # The app as the relay escapes it for one line, then JSON-escaped.
        self.assertIn('"app-\\xe2\\x80\\xae\\xc3\\xa9-\\"q\\"\\\\"', granted[0]["msg"])
        self.assertTrue([o for o in objs if o["msg"].startswith("sparkrelay ") and
                         "log debug/json" in o["msg"]])


if __name__ == "__main__":
    H.main()
