"""Lifecycle: a sidecar that crashes, restarts, stops or freezes, and a relay
that is asked to stop, keep the promises Spark relies on: the same ports after
a reconnect, executor connections that wait for the tunnel (for a bounded
time), leases that end when they should, and in-flight transfers that finish."""

import hashlib
import json
import os
import signal
import socket
import time

import harness as H
import harness_extra as X
from harness import KiB, MiB, h_echo


def lease_key(j):
    return (j.get("lease"), j.get("host"),
            int(j["ports"]["driver"]), int(j["ports"]["blockManager"]))


class SidecarRestartTest(X.XCase):
    relay_overrides = {"relay": {"lease": {"pending_timeout_ms": 8000}}}

    def prepare(self):
        self.drv = self.stack.start_driver(default=h_echo)
        self.host = self.stack.exec_host
        self.assertIsNone(X.echo_once(self.host, self.stack.ports["driver"], seed=1))

    def kill_sidecar_and_wait_lost(self):
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1),
                        "relay did not notice the killed sidecar within 5 s")

    def test_sigkill_and_restart_keeps_the_same_ports(self):
        before = dict(self.stack.lease)
        with open(self.stack.tunnel_cfg["tunnel"]["state_file"]) as f:
            state = json.load(f)
        self.assertTrue(state.get("resume"), "state file holds no resume token: %r" % state)
        self.kill_sidecar_and_wait_lost()
        os.unlink(self.stack.spark_json)  # so that the new lease is seen being written
        resumed = X.log_count(self.relay, "resuming lease")
        self.restart_stack_sidecar("tunnel-2")
        after = X.wait_for(lambda: H.read_spark_json(self.stack.spark_json), 15)
        self.assertTrue(after, "restarted sidecar wrote no spark_json within 15 s")
        self.assertEqual(lease_key(after), lease_key(before),
                         "restarted sidecar got a different lease or ports")
        self.assertGreater(X.log_count(self.relay, "resuming lease"), resumed,
                           "relay log does not show the lease being resumed")
        for i, port in enumerate((after["ports"]["driver"], after["ports"]["blockManager"])):
            self.assertIsNone(X.echo_once(self.host, int(port), seed=10 + i))

    def test_executor_waits_for_the_sidecar_to_come_back(self):
        port = self.stack.ports["driver"]
        self.kill_sidecar_and_wait_lost()
        waiting = X.log_count(self.relay, "waiting for the tunnel")
        s = H.connect(self.host, port, timeout=15)
        self.stack.execs.append(s)
        m = H.message(5, 64 * KiB, seed=5)
        s.sendall(m)
        self.assertTrue(X.wait_log(self.relay, "waiting for the tunnel", 5, count=waiting + 1),
                        "relay did not hold the executor connection for the tunnel")
        time.sleep(1.0)
        self.restart_stack_sidecar("tunnel-2")
        end, got, _, data = H.recv_exact(s, len(m))
        self.assertEqual(end, "ok", "echo through the re-established tunnel: %s after %d "
                         "bytes" % (end, got))
        self.assertEqual(data, m, "echoed bytes differ")
        s.shutdown(socket.SHUT_WR)
        end, extra, _ = H.recv_to_eof(s, 1 * KiB)
        self.assertEqual((end, extra), ("eof", 0))
        dcs = [dc for dc in self.drv.all_conns() if dc.port == port]
        self.assertEqual(len(dcs), 2, "driver connections on port %d: %d (want the first "
                         "echo and the waiting one)" % (port, len(dcs)))
        self.assertFalse(self.drv.wait_all_done(10, dcs[1:]), "driver conn not finished")
        self.assertEqual(dcs[1].rx_bytes, len(m), "driver received %d bytes, want exactly %d"
                         % (dcs[1].rx_bytes, len(m)))


class PendingTimeoutTest(X.XCase):
    relay_overrides = {"relay": {"lease": {"pending_timeout_ms": 1500}}}

    def test_waiting_executor_is_closed_after_pending_timeout(self):
        host, port = self.stack.exec_host, self.stack.ports["driver"]
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        s = H.connect(host, port, timeout=10)
        self.stack.execs.append(s)
        t0 = time.monotonic()
        s.sendall(b"hello?")
        how, took, got = X.closed_within(s, 8)
        took = time.monotonic() - t0
        self.assertNotEqual(how, "timeout", "waiting executor still open after 8 s "
                            "(pending_timeout_ms=1500)")
        self.assertEqual(got, 0)
        self.assertGreaterEqual(took, 1.2, "closed after %.2f s, before pending_timeout_ms"
                                % took)
        self.assertLessEqual(took, 5.0, "closed only after %.2f s" % took)
        self.assertTrue(X.wait_log(self.relay, "closed after waiting 1500 ms", 2))


class GraceExpiryTest(X.XCase):
    relay_overrides = {"relay": {"lease": {"grace_s": 2}}}

    def test_lease_ports_close_when_grace_runs_out(self):
        self.stack.start_driver(default=h_echo)
        host, p1 = self.stack.exec_host, self.stack.ports["driver"]
        p2 = self.stack.ports["blockManager"]
        self.assertIsNone(X.echo_once(host, p1, seed=1))
        lost = X.log_count(self.relay, "tunnel lost")
        self.stack_sidecar_sigkill()
        self.assertTrue(X.wait_log(self.relay, "tunnel lost", 5, count=lost + 1))
        t0 = time.monotonic()
        # Within the grace period the ports still take executors (they wait).
        waiter = H.connect(host, p1, timeout=10)
        self.stack.execs.append(waiter)
        self.assertEqual(X.connect_result(host, p2), "accepted",
                         "blockManager port refused during the grace period")
        first_refusal = None
        while time.monotonic() - t0 < 6.0:
            if X.connect_result(host, p1, timeout=1) == "refused":
                first_refusal = time.monotonic() - t0
                break
            time.sleep(0.2)
        self.assertIsNotNone(first_refusal, "driver port still accepts 6 s after the tunnel "
                             "was lost (grace_s=2)")
        self.assertGreaterEqual(first_refusal, 1.5, "port refused after %.2f s, before "
                                "grace_s=2" % first_refusal)
        self.assertEqual(X.connect_result(host, p2), "refused")
        how, _, _ = X.closed_within(waiter, 3)
        self.assertIn(how, ("eof", "reset"), "executor waiting when the lease expired is "
                      "still open")
        self.assertTrue(self.relay.grep("lease expired"), "relay log has no 'lease expired'")


class SidecarSigtermTest(X.XCase):

    def test_sigterm_exits_0_and_releases_the_lease(self):
        host, ports = self.stack.exec_host, dict(self.stack.ports)
        self.assertIn(X.connect_result(host, ports["driver"]), ("accepted", "reset"))
        p = self.stack.tunnel
        t0 = time.monotonic()
        rc = p.stop(10)
        took = time.monotonic() - t0
        self.retire(p)
        self.assertEqual(rc, 0, "sidecar exit code after SIGTERM")
        self.assertLess(took, 5.0, "sidecar took %.1f s to exit" % took)
        for name, port in ports.items():
            r = X.wait_for(lambda: X.connect_result(host, port) == "refused", 3)
            self.assertTrue(r, "%s port %d still accepts after the sidecar released it" %
                            (name, port))
        self.assertTrue(X.wait_log(self.relay, "lease released by the sidecar", 3))
        self.assertFalse(os.path.exists(self.stack.tunnel_cfg["tunnel"]["state_file"]),
                         "state file (resume token) kept after the lease was released")


def h_slow_sink(dc):
    """Read to EOF in 64 KiB steps with a pause after each (a slow reader)."""
    h = hashlib.sha256()
    try:
        while True:
            b = dc.recv(64 * KiB)
            if not b:
                dc.end = "eof"
                break
            h.update(b)
            time.sleep(0.012)
    except ConnectionResetError:
        dc.end = "reset"
    dc.rx_sha = h.hexdigest()


class RelayDrainTest(X.XCase):
    relay_overrides = {"relay": {"drain_timeout_ms": 30000}}

    def test_sigterm_lets_an_inflight_transfer_finish(self):
        n = 32 * MiB
        self.drv = self.stack.start_driver(handlers={"driver": h_slow_sink}, default=h_echo)
        host, p1, p2 = self.stack.exec_host, self.stack.ports["driver"], \
            self.stack.ports["blockManager"]
        s = self.stack.executor("driver", timeout=30)
        snd = H.Sender(s, 42, n, shut_wr=True)
        snd.start()
        dc = self.drv.next_conn(10, port="driver")
        self.assertTrue(X.wait_for(lambda: dc.rx_bytes >= 2 * MiB, 20),
                        "transfer did not get going")
        relay = self.relay
        t_term = time.monotonic()
        relay.signal(signal.SIGTERM)
        self.assertTrue(X.wait_log(relay, "draining", 3))
        self.assertLess(dc.rx_bytes, n, "transfer finished before SIGTERM; test too fast")
        # New executor connections are refused while draining: refused outright,
        # or closed at once without reaching the driver; never left hanging.
        before = len(self.drv.all_conns())
        late = {}
        for name, port in (("driver", p1), ("blockManager", p2)):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(2)
            try:
                c.connect((host, port))
                c.sendall(b"late executor")
                how, took, _ = X.closed_within(c, 1.0)
                late[name] = "%s after %.2f s" % (how, took)
            except (ConnectionRefusedError, ConnectionResetError) as e:
                late[name] = type(e).__name__
            finally:
                c.close()
        self.assertTrue(relay.alive() and dc.rx_bytes < n,
                        "transfer or relay ended before the late connections were checked; "
                        "test too fast")
        self.assertIsNone(snd.finish(60))
        end, extra, _ = H.recv_to_eof(s, 1 * KiB)
        self.assertEqual((end, extra), ("eof", 0), "executor side after the transfer")
        self.assertFalse(self.drv.wait_all_done(10, [dc]), "driver conn not finished")
        self.assertExact("32 MiB through the draining relay", dc.rx_bytes, dc.rx_sha,
                         n, snd.sha)
        self.assertEqual(dc.end, "eof")
        self.assertEqual(len(self.drv.all_conns()), before,
                         "a connection made during the drain reached the driver")
        s.close()
        try:
            rc = relay.p.wait(15)
        except Exception:
            rc = None
        took = time.monotonic() - t_term
        self.assertEqual(rc, 0, "relay exit code after drain")
        self.retire(relay)
        self.assertLess(took, 30.0)
        self.assertTrue(relay.grep("drained: no open streams"),
                        "relay did not exit because its streams were done")
        self.assertFalse(relay.grep("drain timeout"))
        hanging = {k: v for k, v in late.items() if v.startswith("timeout")}
        self.assertFalse(hanging, "new executor connections during the drain were neither "
                         "refused nor closed within 1 s (left hanging in the listen backlog "
                         "while the relay drains): %r" % (late,))


class DeadPeerTest(X.XCase):
    h2 = {"h2": {"ping_interval_ms": 500, "ping_timeout_ms": 1500}}
    relay_overrides = {"relay": h2}
    tunnel_overrides = {"tunnel": h2}

    def test_frozen_sidecar_is_detected_and_resumes(self):
        self.stack.start_driver(default=h_echo)
        host = self.stack.exec_host
        before = dict(self.stack.lease)
        self.assertIsNone(X.echo_once(host, self.stack.ports["driver"], seed=2))
        p = self.stack.tunnel
        resumed = X.log_count(self.relay, "resuming lease")
        closed = X.log_count(self.relay, "ping timeout")
        t0 = time.monotonic()
        p.signal(signal.SIGSTOP)
        try:
            ok = X.wait_log(self.relay, "ping timeout", 6, count=closed + 1)
            took = time.monotonic() - t0
        finally:
            p.signal(signal.SIGCONT)
        self.assertTrue(ok, "relay logged no ping-timeout close within 6 s of SIGSTOP")
        # The relay may count from the sidecar's last frame, up to one ping
        # interval before the SIGSTOP.
        self.assertGreaterEqual(took, 0.9, "tunnel declared dead after only %.2f s" % took)
        self.assertLessEqual(took, 4.0, "tunnel declared dead only after %.2f s" % took)
        self.assertTrue(any("tunnel closed" in l for l in ok[closed:]), ok[closed:])
        self.assertTrue(X.wait_log(self.relay, "resuming lease", 10, count=resumed + 1),
                        "sidecar did not resume its lease within 10 s of SIGCONT")
        self.assertTrue(X.wait_log(p, "lease resumed", 5))
        self.assertFalse(p.grep("lease changed"))
        self.assertEqual(lease_key(H.read_spark_json(self.stack.spark_json)), lease_key(before))
        for i, port in enumerate(self.stack.ports.values()):
            self.assertIsNone(X.echo_once(host, port, seed=20 + i))


class RelayAddressTest(X.XCase):
    auto_tunnel = False

    def test_name_with_several_addresses(self):
        names = set()
        try:
            with open("/etc/hosts") as f:
                for line in f:
                    parts = line.split("#")[0].split()
                    if len(parts) >= 2 and "localhost" in parts[1:]:
                        names.add(parts[0])
        except OSError:
            pass
        if not {"::1", "127.0.0.1"} <= names:
            self.skipTest("/etc/hosts does not map localhost to both ::1 and 127.0.0.1 "
                          "(has %s)" % sorted(names))
        sc = self.sidecar("sc", {"tunnel": {"relays": ["localhost:%d" % self.relay_port()],
                                            "server_name": "localhost"}}).start()
        j = sc.wait_lease(15)
        self.stack.ports = sc.ports()
        self.stack.exec_host = j["host"]
        self.stack.start_driver(default=h_echo)
        self.assertIsNone(X.echo_once(j["host"], self.stack.ports["driver"], seed=3))

    def test_dead_first_relay_address_is_skipped(self):
        dead = H.free_port()
        sc = self.sidecar("sc", {"tunnel": {"relays": ["127.0.0.1:%d" % dead,
                                                       "localhost:%d" % self.relay_port()]}})
        sc.start()
        j = sc.wait_lease(15)
        self.assertTrue(sc.proc.grep("127.0.0.1:%d" % dead),
                        "sidecar log does not show the dead address being tried")
        self.stack.ports = sc.ports()
        self.stack.exec_host = j["host"]
        self.stack.start_driver(default=h_echo)
        self.assertIsNone(X.echo_once(j["host"], self.stack.ports["driver"], seed=4))


if __name__ == "__main__":
    H.main()
