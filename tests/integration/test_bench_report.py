"""bench/report.py, the verdicts of a side-by-side run (docs/benchmarks.md):

- a target is judged on the medians, and also per round: sparkrelay's run of
  round N against the other tool's run of round N, with how many rounds met it;
- the added round trip is taken over direct TCP's run of the same round;
- a failed run gives no figure in its round;
- a quick run (one round) judges nothing and shows no per-round ratios.

Result files are written here as compare.sh writes them (TOOL.SCENARIO.ROUND
.json and .rc); no benchmark runs.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

REPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "report.py")


def write_run(res, tool, name, rnd, results, rc=0):
    base = os.path.join(res, "%s.%s.%d" % (tool, name, rnd))
    if results is not None:
        with open(base + ".json", "w") as fh:
            json.dump({"results": results}, fh)
    with open(base + ".rc", "w") as fh:
        fh.write(str(rc))


def report(res, out, mode="default", reps=3):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKRELAY_")}
    p = subprocess.run([sys.executable, REPORT, "--res", res, "--out", out, "--date", "T",
                        "--mode", mode, "--reps", str(reps), "--tools", "direct sparkrelay ssh"],
                       capture_output=True, text=True, timeout=60, env=env)
    if p.returncode != 0:
        raise AssertionError("report.py failed: %s" % p.stderr)
    with open(os.path.join(out, "T.json")) as fh:
        doc = json.load(fh)
    return {t["figure"] + ":" + str(t["anchor"]): t for t in doc["targets"]}, p.stdout


def target_row(md, label, against):
    for line in md.splitlines():
        if line.startswith("| %s | %s |" % (label, against)):
            return line
    raise AssertionError("no row for %s against %s in:\n%s" % (label, against, md))


class ReportRoundsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.res = os.path.join(self.tmp.name, "res")
        self.out = os.path.join(self.tmp.name, "out")
        os.makedirs(self.res)

    def tearDown(self):
        self.tmp.cleanup()

    def test_verdict_on_medians_and_per_round(self):
        # iperf 1 conn down: medians 3.4 against 3.0 (1.13x, met), but
        # round 2 alone misses (3.0 against 3.3).
        for rnd, mine, ssh in ((1, 3.4, 2.9), (2, 3.0, 3.3), (3, 3.5, 3.0)):
            write_run(self.res, "sparkrelay", "iperf1_down", rnd, {"gbit_s": mine})
            write_run(self.res, "ssh", "iperf1_down", rnd, {"gbit_s": ssh})
        tg, md = report(self.res, self.out)
        t = tg["iperf1_down_gbit:ssh"]
        self.assertTrue(t["ok"])
        self.assertAlmostEqual(t["value"], 3.4 / 3.0)
        self.assertEqual(len(t["rounds"]), 3)
        self.assertAlmostEqual(t["rounds"][1], 3.0 / 3.3)
        self.assertEqual(t["rounds_ok"], 2)
        row = target_row(md, "iperf3 1 conn down, Gbit/s", "ssh -R (aes128-gcm)")
        self.assertIn("| PASS | 1.17x 0.91x 1.17x (2 of 3) |", row)

    def test_added_round_trip_per_round_over_same_round_direct(self):
        # Added p50 per round: sparkrelay 100, 150, 100 us; ssh 200, 150, 100.
        for rnd, direct, mine, ssh in ((1, 50, 150, 250), (2, 100, 250, 250), (3, 60, 160, 160)):
            write_run(self.res, "direct", "rpc64", rnd, {"rtt_us": {"p50": direct}})
            write_run(self.res, "sparkrelay", "rpc64", rnd, {"rtt_us": {"p50": mine}})
            write_run(self.res, "ssh", "rpc64", rnd, {"rtt_us": {"p50": ssh}})
        tg, _md = report(self.res, self.out)
        t = tg["rtt64_added_p50:ssh"]
        self.assertEqual([round(v, 3) for v in t["rounds"]], [0.5, 1.0, 1.0])
        self.assertEqual(t["rounds_ok"], 1)

    def test_failed_run_has_no_round_figure(self):
        for rnd in (1, 2, 3):
            write_run(self.res, "sparkrelay", "fairness", rnd,
                      None if rnd == 2 else {"hb_rtt_us": {"p99": 1500 * rnd}}, rc=1 if rnd == 2 else 0)
        tg, md = report(self.res, self.out)
        t = tg["hb_p99_ms:None"]
        self.assertEqual(t["rounds"], [1.5, 4.5])
        self.assertEqual(t["rounds_ok"], 1)
        self.assertIn("| 1.50 4.50 (1 of 2) |",
                      target_row(md, "heartbeat p99 beside bulk (same tunnel), ms", "absolute"))

    def test_quick_run_judges_nothing(self):
        write_run(self.res, "sparkrelay", "iperf1_down", 1, {"gbit_s": 3.0})
        write_run(self.res, "ssh", "iperf1_down", 1, {"gbit_s": 2.0})
        tg, md = report(self.res, self.out, mode="quick", reps=1)
        self.assertIsNone(tg["iperf1_down_gbit:ssh"]["ok"])
        self.assertNotIn("per round", md)


if __name__ == "__main__":
    unittest.main()
