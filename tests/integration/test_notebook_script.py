"""docker/notebook/start-sparkrelay.sh with the real sidecar against a relay
the test plays (fake_relay.py), as a notebook user lives through it:

- the Spark settings follow the lease: the sidecar keeps a marked block in
  the spark-defaults.conf Spark reads, rewritten when the lease changes
  (lost after a relay restart, a new one granted on other ports), removed
  while there is none and when the sidecar stops; other lines are kept;
- `status` says "no lease" / "relay unreachable" with a non-zero exit
  (1 no sidecar, 3 no lease, 4 relay unreachable), 0 with a lease;
- the IPython start-up file tells the notebook, before a cell runs, when the
  lease changed (and that the running Spark session must be restarted), was
  lost, or the relay is unreachable; it sets SPARK_CONF_DIR with literals;
- `stop` leaves no lease settings behind, also after a sidecar was killed.

Before, the script merged the lease into spark-defaults.conf once: after
any lease change the file Spark reads kept the old ports, and `stop` left
the block (with spark.port.maxRetries 0) and spark.json behind.
"""

import ast
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import types
import unittest

import harness as H
import harness_extra as X
import fake_relay as FR
import test_admin as A

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_SCRIPT = os.path.join(REPO, "docker", "notebook", "start-sparkrelay.sh")
ORIGINAL = "spark.executor.memory 4g\nspark.driver.port=1234\n# a comment of the user\n"
UNKNOWN_LEASE = {"v": 1, "type": "error", "code": "unknown_lease",
                 "message": "no lease for this resume token"}


class NotebookScriptCase(unittest.TestCase):

    def setUp(self):
        if H.DIRECT or not H.BIN:
            self.skipTest("needs the sparkrelay binary")
        self.dir = H.new_dir(self.id())
        self.home = os.path.join(self.dir, "home")
        self.conf_dir = os.path.join(self.dir, "spark-conf")
        os.makedirs(self.home)
        os.makedirs(self.conf_dir)
        self.conf = os.path.join(self.conf_dir, "spark-defaults.conf")
        with open(self.conf, "w") as f:
            f.write(ORIGINAL)
        self.sr_home = os.path.join(self.home, ".sparkrelay")
        self.spark_json = os.path.join(self.sr_home, "spark.json")
        self.status_json = os.path.join(self.sr_home, "status.json")
        self.log = os.path.join(self.sr_home, "sparkrelay.log")
        self.hook = os.path.join(self.home, ".ipython", "profile_default", "startup",
                                 "00-sparkrelay.py")
        self.fr = FR.FakeRelay(H.certs()).start()
        self.addCleanup(self.fr.stop)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SPARK", "SPARKRELAY"))}
        self.env.update(HOME=self.home, SPARK_CONF_DIR=self.conf_dir, SPARKRELAY_BIN=H.BIN,
                        SPARKRELAY_WAIT_S="20",
                        SPARKRELAY_TUNNEL_RELAYS="127.0.0.1:%d" % self.fr.port,
                        SPARKRELAY_TUNNEL_TLS_CA=H.certs().ca,
                        SPARKRELAY_TUNNEL_ALLOWED_PORTS="1024-65535",
                        SPARKRELAY_TUNNEL_BACKOFF_INITIAL_MS="100",
                        SPARKRELAY_TUNNEL_BACKOFF_MAX_MS="300",
                        SPARKRELAY_TUNNEL_RELEASE_TIMEOUT_MS="300",
                        SPARKRELAY_LOG_LEVEL="debug")
        self.addCleanup(self.kill_sidecar)

    def tearDown(self):
        if H._test_failed(self):
            H._any_failure = True
            try:
                with open(self.log) as f:
                    sys.stderr.write("----- sidecar log -----\n" + f.read()[-6000:])
            except OSError:
                pass
        try:
            with open(self.log) as f:
                text = f.read()
        except OSError:
            text = ""
        for m in H.SANITIZER_MARKERS:
            self.assertNotIn(m, text, "sanitizer report in the sidecar log")

    def sidecar_pid(self):
        try:
            with open(os.path.join(self.sr_home, "sparkrelay.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def kill_sidecar(self):
        pid = self.sidecar_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def script(self, *args, timeout=40):
        return subprocess.run(["bash", START_SCRIPT] + list(args), env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start_leased(self, lease):
        """`start` while the fake relay grants lease; returns the session."""
        p = subprocess.Popen(["bash", START_SCRIPT, "start"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
        try:
            s, reg = self.fr.session(20)
            s.send_ctl(lease)
            out, err = p.communicate(timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertEqual(p.returncode, 0, err)
        return s, err

    def conf_text(self):
        with open(self.conf) as f:
            return f.read()

    def block(self):
        """The settings in the sparkrelay block, {key: value}, or None."""
        lines = self.conf_text().splitlines()
        begins = [i for i, l in enumerate(lines) if l.startswith("# sparkrelay begin")]
        if not begins:
            return None
        self.assertEqual(len(begins), 1, "two blocks:\n" + self.conf_text())
        out = {}
        for l in lines[begins[0] + 1:]:
            if l.startswith("# sparkrelay end"):
                return out
            k, _, v = l.partition(" ")
            out[k] = v
        self.fail("block without an end:\n" + self.conf_text())

    def status_state(self):
        try:
            with open(self.status_json) as f:
                return json.load(f).get("state")
        except (OSError, ValueError):
            return None

    def wait_state(self, state, timeout=10):
        ok = X.wait_for(lambda: self.status_state() == state, timeout)
        self.assertTrue(ok, "status.json state %r, want %r" % (self.status_state(), state))

    def assert_user_lines_kept(self):
        text = self.conf_text()
        self.assertIn("spark.executor.memory 4g\n", text)
        self.assertIn("# a comment of the user\n", text)
        self.assertNotIn("spark.driver.port=1234", text)


class SettingsFollowTheLeaseTest(NotebookScriptCase):

    def test_settings_status_and_notices_follow_the_lease(self):
        p1, p2, p3, p4 = 41001, 41002, 41101, 41102
        s, err = self.start_leased(FR.lease_msg(lease="L-1-aaaaaaaa",
                                                ports={"driver": p1, "blockManager": p2}))
        self.assertIn("kept current by the sidecar", err)
        b = self.block()
        self.assertEqual((b["spark.driver.port"], b["spark.driver.blockManager.port"],
                          b["spark.driver.host"], b["spark.port.maxRetries"]),
                         (str(p1), str(p2), "127.0.0.2", "0"))
        self.assertEqual(b["spark.task.maxDirectResultSize"], "256m")
        self.assert_user_lines_kept()
        r = self.script("status")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("lease L-1-aaaaaaaa, driver port %d, blockManager port %d" % (p1, p2),
                      r.stdout)
        nb = Notebook(self)
        self.assertEqual(nb.cell(), "", "a notice while all is well")

        # The relay restarted and lost the lease: the settings go at once.
        s.close()
        s2, reg2 = self.fr.session(15)
        self.assertEqual(reg2.get("resume"), "0123456789abcdef")
        s2.send_ctl(UNKNOWN_LEASE)
        self.wait_state("no_lease")
        self.assertIsNone(self.block(), "the lost lease's settings stayed:\n" +
                          self.conf_text())
        self.assertFalse(os.path.exists(self.spark_json))
        self.assert_user_lines_kept()
        r = self.script("status")
        self.assertEqual(r.returncode, 3, r.stdout)
        self.assertIn("no lease", r.stdout)
        self.assertIn("no lease: lease L-1-aaaaaaaa ended by the relay", nb.cell())

        # A new lease on other ports: the file Spark reads follows it.
        s3, reg3 = self.fr.session(15)
        self.assertNotIn("resume", reg3)
        s3.send_ctl(FR.lease_msg(lease="L-2-bbbbbbbb", ports={"driver": p3, "blockManager": p4}))
        self.wait_state("leased")
        b = self.block()
        self.assertEqual((b["spark.driver.port"], b["spark.driver.blockManager.port"]),
                         (str(p3), str(p4)))
        self.assertEqual(H.read_spark_json(self.spark_json)["lease"], "L-2-bbbbbbbb")
        self.assert_user_lines_kept()
        line = nb.cell()
        self.assertIn("the lease changed (now L-2-bbbbbbbb: driver port %d" % p3, line)
        self.assertIn("restart the Spark session", line)
        self.assertEqual(nb.cell(), "", "the same notice twice")
        with open(self.log) as f:
            self.assertEqual(f.read().count("the driver must be restarted"), 1)

        # The relay goes away: status and notebook say so; the lease is kept.
        s3.close()
        self.fr.stop()
        self.wait_state("relay_unreachable")
        r = self.script("status")
        self.assertEqual(r.returncode, 4, r.stdout)
        self.assertIn("relay unreachable: cannot reach relay 127.0.0.1:%d" % self.fr.port,
                      r.stdout)
        self.assertIn("(lease L-2-bbbbbbbb kept while it reconnects)", r.stdout)
        self.assertIsNotNone(self.block(), "the lease may come back: its settings stay")
        self.assertIn("relay unreachable: cannot reach relay", nb.cell())

        # stop: nothing of the lease is left for the next Spark session.
        r = self.script("stop")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNone(self.block(), self.conf_text())
        self.assert_user_lines_kept()
        self.assertFalse(os.path.exists(self.spark_json))
        self.assertEqual(self.status_state(), "stopped")
        r = self.script("status")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no sidecar running", r.stdout)
        self.assertIn("the sidecar is not running", nb.cell())

    def test_release_removes_the_settings(self):
        s, _ = self.start_leased(FR.lease_msg(ports={"driver": 41001, "blockManager": 41002}))
        p = subprocess.Popen(["bash", START_SCRIPT, "stop"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rel = s.read_ctl(10)
        self.assertEqual(rel and rel.get("type"), "release")
        s.send_ctl({"v": 1, "type": "released"})
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        with open(self.log) as f:
            self.assertIn("lease released", f.read())
        self.assertIsNone(self.block(), self.conf_text())
        self.assertEqual(self.conf_text(), ORIGINAL.replace("spark.driver.port=1234\n", ""))
        self.assertFalse(os.path.exists(self.spark_json))

    def test_stop_cleans_up_after_a_killed_sidecar(self):
        self.start_leased(FR.lease_msg(ports={"driver": 41001, "blockManager": 41002}))
        os.kill(self.sidecar_pid(), signal.SIGKILL)
        time.sleep(0.2)
        self.assertIsNotNone(self.block())
        r = self.script("stop")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("no sidecar running", r.stderr)
        self.assertIsNone(self.block(), self.conf_text())
        self.assert_user_lines_kept()
        self.assertFalse(os.path.exists(self.spark_json))


class ConfFolderTest(NotebookScriptCase):

    def test_a_symlinked_spark_defaults_sends_the_settings_to_the_fallback(self):
        """The sidecar never writes through a symbolic link: start used to
        choose the folder anyway, wait its whole time and fail, while the
        sidecar ran leased and every status said ready."""
        target = os.path.join(self.dir, "elsewhere.conf")
        os.replace(self.conf, target)
        os.symlink(target, self.conf)
        s, err = self.start_leased(FR.lease_msg(ports={"driver": 41001, "blockManager": 41002}))
        self.assertIn("spark-defaults.conf is a symbolic link: the Spark settings go to", err)
        with open(os.path.join(self.sr_home, "spark-conf", "spark-defaults.conf")) as f:
            text = f.read()
        self.assertIn("# sparkrelay begin", text)
        self.assertIn("spark.executor.memory 4g\n", text)  # seeded from the link's file
        with open(target) as f:
            self.assertEqual(f.read(), ORIGINAL, "the file behind the link was changed")

    def test_status_before_any_lease_names_none(self):
        # nothing listens there: relay_unreachable, with no lease yet
        env = dict(self.env, SPARKRELAY_WAIT_S="1",
                   SPARKRELAY_TUNNEL_RELAYS="127.0.0.1:%d" % H.free_port())
        r = subprocess.run(["bash", START_SCRIPT, "start"], env=env, capture_output=True,
                           text=True, timeout=40, stdin=subprocess.DEVNULL)
        self.assertNotEqual(r.returncode, 0, "no relay answered, yet start succeeded")
        self.wait_state("relay_unreachable")
        r = subprocess.run(["bash", START_SCRIPT, "status"], env=env, capture_output=True,
                           text=True, timeout=40, stdin=subprocess.DEVNULL)
        self.assertIn("relay unreachable", r.stdout)
        self.assertNotIn("null", r.stdout + r.stderr)
        self.assertNotIn("(lease", r.stdout)


class RefusedLeaseStatusTest(NotebookScriptCase):

    def test_a_lease_outside_allowed_ports_is_said_in_the_status(self):
        """The sidecar refuses a lease on ports its tunnel.allowed_ports
        leave out (its own configuration against the relay's pool): the
        status said only "reconnecting", which the hook does not report."""
        self.env.update(SPARKRELAY_TUNNEL_ALLOWED_PORTS="27000-27009", SPARKRELAY_WAIT_S="3")
        p = subprocess.Popen(["bash", START_SCRIPT, "start"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
        try:
            s, reg = self.fr.session(20)
            s.send_ctl(FR.lease_msg(ports={"driver": 41001, "blockManager": 41002}))
            p.communicate(timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.wait_state("no_lease")
        with open(self.status_json) as f:
            msg = json.load(f).get("message", "")
        self.assertIn("refused the relay's lease: lease grants driver port 41001, outside "
                      "tunnel.allowed_ports (27000-27009)", msg)
        r = self.script("status")
        self.assertIn("outside tunnel.allowed_ports", r.stdout)


class RestartTest(NotebookScriptCase):

    def test_restarted_sidecar_whose_lease_is_gone(self):
        """A sidecar that died leaves its settings (its lease may still be
        resumed); when the relay says the lease is gone, they go at once."""
        self.start_leased(FR.lease_msg(lease="L-1-aaaaaaaa",
                                       ports={"driver": 41001, "blockManager": 41002}))
        os.kill(self.sidecar_pid(), signal.SIGKILL)
        time.sleep(0.2)
        self.assertIsNotNone(self.block())
        p = subprocess.Popen(["bash", START_SCRIPT, "start"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
        try:
            s, reg = self.fr.session(20)
            self.assertEqual(reg.get("resume"), "0123456789abcdef")
            s.send_ctl(UNKNOWN_LEASE)
            self.wait_state("no_lease")
            self.assertIsNone(self.block(), self.conf_text())
            self.assert_user_lines_kept()
            s, reg = self.fr.session(20)
            s.send_ctl(FR.lease_msg(lease="L-2-bbbbbbbb",
                                    ports={"driver": 41003, "blockManager": 41004}))
            out, err = p.communicate(timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(self.block()["spark.driver.port"], "41003")
        with open(self.log) as f:
            self.assertEqual(f.read().count("lease changed from L-1-aaaaaaaa (host 127.0.0.2, "
                                            "ports 41001,41002) to L-2-bbbbbbbb"), 1,
                             "the restarted sidecar did not compare with the lease it "
                             "had written before")


class RevokeTest(A.AdminCase):
    """`ctl lease revoke` on a real relay: the sidecar drops the revoked
    lease's settings at once and writes the next lease's."""

    def setUp(self):
        self.d = H.new_dir(self.id() + "-nb")
        self.conf = os.path.join(self.d, "spark-defaults.conf")
        self.status_json = os.path.join(self.d, "status.json")
        with open(self.conf, "w") as f:
            f.write(ORIGINAL)
        self.extra_tunnel = {"tunnel": {"spark_defaults": self.conf,
                                        "status_file": self.status_json}}
        super().setUp()

    def test_revoked_lease_is_replaced_in_the_settings(self):
        old = self.stack.lease["lease"]
        with open(self.conf) as f:
            self.assertIn("lease %s" % old, f.read())
        rc, out, err = self.ctl("lease", "revoke", old)
        self.assertEqual(rc, 0, err)

        def new_lease():
            try:
                with open(self.status_json) as f:
                    st = json.load(f)
            except (OSError, ValueError):
                return None
            return st if st.get("state") == "leased" and st.get("lease") != old else None
        st = X.wait_for(new_lease, 15)
        self.assertTrue(st, "no new lease after the revoke")
        self.assertTrue(X.wait_log(self.stack.tunnel, "lease %s ended by the relay (revoked)"
                                   % old, 5))
        with open(self.conf) as f:
            text = f.read()
        self.assertNotIn(old, text)
        self.assertIn("# sparkrelay begin: lease %s," % st["lease"], text)
        self.assertIn("spark.driver.port %d\n" % st["ports"]["driver"], text)
        self.assertIn("spark.executor.memory 4g\n", text)
        self.assertEqual(text.count("# sparkrelay begin"), 1)


class Notebook:
    """The IPython start-up file run as IPython would, with a stand-in for
    get_ipython(); cell() runs the pre_run_cell hooks and returns what they
    printed."""

    def __init__(self, case):
        self.case = case
        self.hooks = []
        events = types.SimpleNamespace(register=lambda name, fn: self.hooks.append((name, fn)))
        shell = types.SimpleNamespace(events=events)
        saved = dict(os.environ)
        try:
            with open(case.hook) as f:
                code = f.read()
            exec(compile(code, case.hook, "exec"), {"get_ipython": lambda: shell,
                                                   "__name__": "__main__"})
            self.env = {k: os.environ.get(k) for k in
                        ("SPARK_CONF_DIR", "SPARKRELAY_SPARK_JSON", "SPARKRELAY_STATUS")}
        finally:
            os.environ.clear()
            os.environ.update(saved)
        case.assertEqual([n for n, _ in self.hooks], ["pre_run_cell"])

    def cell(self):
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            for _, fn in self.hooks:
                fn()
        return buf.getvalue()


class IPythonHookTest(NotebookScriptCase):

    def test_hook_takes_paths_as_literals(self):
        name = "conf \"dir\\\" ) ; import sys #"
        self.conf_dir = os.path.join(self.dir, name)
        os.makedirs(self.conf_dir)
        self.conf = os.path.join(self.conf_dir, "spark-defaults.conf")
        with open(self.conf, "w") as f:
            f.write(ORIGINAL)
        self.env["SPARK_CONF_DIR"] = self.conf_dir
        self.start_leased(FR.lease_msg(ports={"driver": 41001, "blockManager": 41002}))
        with open(self.hook) as f:
            tree = ast.parse(f.read())
        values = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setdefault":
                values[node.args[0].value] = node.args[1].value
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript) \
                    and getattr(node.targets[0].value, "attr", "") == "environ":
                self.assertIsInstance(node.value, ast.Constant)
                values[node.targets[0].slice.value] = node.value.value
        self.assertEqual(values.get("SPARK_CONF_DIR"), self.conf_dir)
        self.assertEqual(values.get("SPARKRELAY_SPARK_JSON"), self.spark_json)
        self.assertEqual(values.get("SPARKRELAY_STATUS"), self.status_json)
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        self.assertEqual(sorted(a.name for n in imports for a in n.names), ["json", "os", "sys"])
        nb = Notebook(self)
        self.assertEqual(nb.env["SPARK_CONF_DIR"], self.conf_dir)
        self.assertIsNotNone(self.block())

    def test_running_spark_session_on_other_ports_is_told_to_restart(self):
        self.start_leased(FR.lease_msg(ports={"driver": 41001, "blockManager": 41002}))
        nb = Notebook(self)
        conf = types.SimpleNamespace(get=lambda k: "40001" if k == "spark.driver.port" else None)
        ctx = types.SimpleNamespace(getConf=lambda: conf)
        pyspark = types.ModuleType("pyspark")
        pyspark.SparkContext = types.SimpleNamespace(_active_spark_context=ctx)
        saved = sys.modules.get("pyspark")
        sys.modules["pyspark"] = pyspark
        try:
            line = nb.cell()
        finally:
            if saved is None:
                del sys.modules["pyspark"]
            else:
                sys.modules["pyspark"] = saved
        self.assertIn("the running Spark session uses port 40001: restart it", line)

    def test_relay_text_reaches_the_notebook_escaped(self):
        """A notice quotes the sidecar's message, which may hold relay text."""
        p = subprocess.Popen(["bash", START_SCRIPT, "start"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            s, reg = self.fr.session(20)
            s.send_ctl({"v": 1, "type": "error", "code": "no_ports",
                        "message": "pool full \x1b]0;owned\x07 \u202e evil"})
            self.wait_state("no_lease")
            nb = Notebook(self)
            line = nb.cell()
        finally:
            p.kill()
            p.communicate()
        self.assertIn("sparkrelay: no lease: relay refused registration: no_ports: pool full",
                      line)
        self.assertTrue(all(" " <= c <= "~" or c == "\n" for c in line), repr(line))


if __name__ == "__main__":
    H.main()
