"""Task results larger than 1 MiB come back through the relay.

Spark sends a task result up to spark.task.maxDirectResultSize (1 MiB by
default) in the executor's RPC connection; a larger one stays in the
executor's block manager and the driver dials the executor's pod to fetch
it, which a notebook cannot. The sidecar writes maxDirectResultSize=256m
(with spark.rpc.message.maxSize raised to match), so results travel as one
message on the executor's RPC stream through the tunnel.

This runs the Spark simulation of bench/ (sparkrelay-bench spark) through
a real relay and sidecar: 20 executors register and heartbeat, then one
sends two 64 MiB task results on its RPC connection; the driver (the bench
server) acknowledges each only once all of it has arrived. Meanwhile the
other executors' heartbeats must keep their latency: per-stream flow
control means none of them waits behind the result (the executor that sends
it waits, as it does in Spark).
"""

import json
import os
import subprocess
import unittest

import harness as H

BENCH = os.environ.get("SPARKRELAY_BENCH")
RESULT_MIB = 64
RESULTS = 2


@unittest.skipIf(H.DIRECT, "needs the relay")
class SparkResultsTest(H.ITCase):

    def test_64_mib_result_over_the_rpc_stream_while_heartbeats_keep_their_latency(self):
        if not BENCH or not os.access(BENCH, os.X_OK):
            self.fail("SPARKRELAY_BENCH is not set to the sparkrelay-bench binary")
        with open(self.stack.spark_conf) as f:
            conf = f.read()
        self.assertIn("spark.task.maxDirectResultSize 256m\n", conf)
        self.assertIn("spark.rpc.message.maxSize 256\n", conf)

        p1, p2 = self.stack.ports["driver"], self.stack.ports["blockManager"]
        srv = H.Proc("bench-server", [BENCH, "server", "--listen", "127.0.0.1:%d" % p1,
                                      "--listen", "127.0.0.1:%d" % p2, "--max-seconds", "120"],
                     self.stack.dir).start()
        self.addCleanup(srv.kill)
        srv.wait_ready(lambda: H._accepts("127.0.0.1", p1), 10, "bench server listening")
        out = os.path.join(self.stack.dir, "spark.bench.json")
        host = self.stack.exec_host
        r = subprocess.run([BENCH, "spark", "--connect", "%s:%d" % (host, p1),
                            "--connect2", "%s:%d" % (host, p2), "--executors", "20",
                            "--batch", "20", "--bm-mib", "1", "--hb-ms", "10000",
                            "--time-scale", "0.005", "--result-mib", str(RESULT_MIB),
                            "--results", str(RESULTS), "--hold", "0.3", "--seconds", "60",
                            "--timeout", "90", "--json", out],
                           capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        sys_out = r.stdout + r.stderr
        H.log("bench spark through the relay:\n" + r.stdout)
        self.assertEqual(r.returncode, 0, sys_out)
        with open(out) as f:
            res = json.load(f)["results"]
        self.assertEqual(res["results_ok"], RESULTS, "results acknowledged by the driver")
        self.assertEqual(res["registered"], 20)
        for k in ("fail_boot", "fail_rpc", "fail_bm"):
            self.assertEqual(res[k], 0, k)
        transfer = res["result_us"]["p50"]
        before, during = res["hb_before_result_us"], res["hb_during_result_us"]
        for what, h in (("before", before), ("during", during)):
            self.assertGreaterEqual(h["count"], 20, "too few heartbeats %s the results to "
                                    "say anything: %r" % (what, h))
        # Had the heartbeats waited behind the result, they would take about as long as
        # the transfer. They keep the latency they had before it (the figures printed
        # above are the measurement; the bounds leave room for a loaded 2-core machine
        # and ASan).
        self.assertLess(during["p99"], max(0.25 * transfer, 20000),
                        "heartbeat p99 %.0f us during a %.0f us result transfer" %
                        (during["p99"], transfer))
        self.assertLess(during["p99"], max(3 * before["p99"], 20000),
                        "heartbeat p99 %.0f us during the results, %.0f us before" %
                        (during["p99"], before["p99"]))
        # The executor sending the result waits behind it, as in Spark: the measurement
        # sees the difference.
        self.assertGreater(res["hb_result_exec_us"]["max"], during["p99"])
        self.assertTrue(srv.alive(), "the bench server died")


if __name__ == "__main__":
    H.main()
