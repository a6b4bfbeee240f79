"""`sparkrelay demo` works out of the box, refuses bad options before it
starts anything, and the sidecar's Spark settings files match its lease."""

import os
import re
import signal
import subprocess
import tempfile
import time
import unittest

import harness

DEMO_WITHIN = 30


@unittest.skipIf(harness.DIRECT, "needs the binary")
class DemoTest(unittest.TestCase):

    def test_demo_exits_0_and_prints_the_spark_settings(self):
        if not harness.BIN:
            self.fail("SPARKRELAY_BIN is not set")
        d = harness.new_dir("demo")
        tmp = os.path.join(d, "tmp")
        os.mkdir(tmp)
        try:
            r = subprocess.run([harness.BIN, "demo"], cwd=d, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=DEMO_WITHIN,
                               env=dict(os.environ, TMPDIR=tmp),
                               preexec_fn=harness._child_setup)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode("utf-8", "replace").splitlines()[-30:]
            err = (e.stderr or b"").decode("utf-8", "replace").splitlines()[-30:]
            self.fail("demo did not exit within %d s\nstdout:\n%s\nstderr:\n%s" %
                      (DEMO_WITHIN, "\n".join(out), "\n".join(err)))
        out = r.stdout.decode("utf-8", "replace")
        err = r.stderr.decode("utf-8", "replace")
        tail = "\nstdout (tail):\n%s\nstderr (tail):\n%s" % (
            "\n".join(out.splitlines()[-30:]), "\n".join(err.splitlines()[-30:]))
        self.assertEqual(r.returncode, 0, "demo exit code" + tail)
        lines = [l for l in (out + "\n" + err).splitlines() if "spark.driver.port" in l]
        self.assertTrue(lines, "no line with spark.driver.port in the demo's output" + tail)
        self.assertTrue(any(re.search(r"spark\.driver\.port\D{1,4}\d{2,5}", l) for l in lines),
                        "spark.driver.port printed without a port number: %r" % lines[:3])
        sanitizer = [l for l in err.splitlines() if any(m in l for m in harness.SANITIZER_MARKERS)]
        self.assertEqual(sanitizer, [], "sanitizer report from the demo")
        self.assertIn("development certificates in %s/sparkrelay-demo-" % tmp, out)
        self.assertEqual(os.listdir(tmp), [], "the demo left its folder (with a CA key)")

    def test_bad_options_are_refused_before_anything_starts(self):
        # A value that is not a whole number in range (a wrap-around of a
        # huge one included) is refused with the option's range; a name
        # with an escape sequence is shown as text; nothing is made.
        d = harness.new_dir("demo-args")
        cases = [(["--executors", "0"], "--executors takes a number from 1 to 500"),
                 (["--executors", "5x"], '"5x"'),
                 (["--executors", "4294967297"], '"4294967297"'),
                 (["--rounds", "-1"], "--rounds takes a number from 1 to 100000"),
                 (["--bulk-mib", "17592186044416"], "--bulk-mib takes a number from 0 to 4096"),
                 (["--executors", "\x1b[2J"], '"\\x1b[2J"'),
                 (["extra"], "takes no arguments")]
        for args, want in cases:
            r = subprocess.run([harness.BIN, "demo"] + args, cwd=d, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10,
                               env=dict(os.environ, TMPDIR=d), text=True)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertIn(want, r.stderr, args)
            self.assertNotIn("\x1b", r.stderr, args)
        self.assertEqual(os.listdir(d), [], "a refused demo made files")
        r = subprocess.run([harness.BIN, "demo", "--help"], capture_output=True, timeout=10,
                           text=True, stdin=subprocess.DEVNULL)
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assertIn("usage: sparkrelay demo", r.stdout)

    def test_interrupted_demo_removes_its_folder(self):
        """SIGINT or SIGTERM at any point: the folder holding the CA key goes."""
        if not harness.BIN:
            self.fail("SPARKRELAY_BIN is not set")
        d = harness.new_dir("demo-int")
        for sig, delay in ((signal.SIGINT, 0.0), (signal.SIGINT, 0.5), (signal.SIGTERM, 0.2)):
            with self.subTest(signal=sig, after=delay):
                tmp = tempfile.mkdtemp(dir=d)
                p = subprocess.Popen([harness.BIN, "demo", "--rounds", "100000"], cwd=d,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, TMPDIR=tmp),
                                     preexec_fn=harness._child_setup)
                try:
                    line = p.stdout.readline()
                    self.assertIn("development certificates in", line)
                    self.assertEqual(len(os.listdir(tmp)), 1, "no folder while it runs")
                    time.sleep(delay)
                    p.send_signal(sig)
                    out, err = p.communicate(timeout=DEMO_WITHIN)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.communicate()
                self.assertEqual(p.returncode, 1, "an interrupted demo is not a success")
                self.assertFalse(any(m in err for m in harness.SANITIZER_MARKERS), err)
                self.assertEqual(os.listdir(tmp), [], "the folder (with a CA key) was left")


@unittest.skipIf(harness.DIRECT, "needs the binary")
class SparkFilesTest(harness.ITCase):

    def test_spark_json_and_conf_match_the_lease(self):
        j = self.stack.lease
        base = self.stack.pool_base
        self.assertEqual(set(j), {"lease", "host", "ports", "spark"}, "spark_json keys")
        self.assertIsInstance(j["lease"], str)
        self.assertTrue(j["lease"].startswith("L-"), "lease id %r" % j["lease"])
        self.assertEqual(j["host"], harness.POOL_HOST)
        p1, p2 = j["ports"]["driver"], j["ports"]["blockManager"]
        for name, p in (("driver", p1), ("blockManager", p2)):
            self.assertIsInstance(p, int, "ports.%s" % name)
            self.assertTrue(base <= p <= base + harness.POOL_SIZE - 1,
                            "ports.%s=%d outside the pool %d..%d" %
                            (name, p, base, base + harness.POOL_SIZE - 1))
        self.assertNotEqual(p1, p2)
        want = {
            "spark.driver.host": harness.POOL_HOST,
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.port": str(p1),
            "spark.driver.blockManager.port": str(p2),
            "spark.port.maxRetries": "0",
            "spark.kubernetes.executor.useDriverPodIP": "false",
            # results up to 256 MiB come back over the relayed RPC connection
            "spark.task.maxDirectResultSize": "256m",
            "spark.rpc.message.maxSize": "256",
        }
        self.assertEqual(j["spark"], want, "spark_json.spark")
        conf = {}
        with open(self.stack.spark_conf) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                k, _, v = line.partition(" ")
                self.assertNotIn(k, conf, "duplicate key in spark_conf")
                conf[k] = v.strip()
        self.assertEqual(conf, want, "spark_conf")
        # the relay really listens on the leased ports, on the pool address only
        # (No driver runs here: the relay accepts, the sidecar refuses the
        # stream and the relay resets the connection, which can arrive before
        # connect() returns. A reset proves the port listens; only a refusal
        # would not.)
        for p in (p1, p2):
            try:
                harness.connect(harness.POOL_HOST, p, timeout=5).close()
            except ConnectionResetError:
                pass
            self.assertTrue(harness._can_bind(harness.DRIVER_HOST, p),
                            "port %d is taken on 127.0.0.1: the relay must bind the pool "
                            "address only, the driver binds 127.0.0.1" % p)
        leftovers = [f for f in os.listdir(os.path.dirname(self.stack.spark_json))
                     if f.startswith("spark") and f not in ("spark.json", "spark-defaults.conf")]
        self.assertEqual(leftovers, [], "temporary files left by the atomic write")


if __name__ == "__main__":
    harness.main()
