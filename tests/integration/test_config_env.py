"""Each role reads the environment variables of its own section only.

One environment often holds the settings of both roles (a notebook image
sets SPARKRELAY_TUNNEL_*, an operator's shell may have both). Before, any
SPARKRELAY_TUNNEL_* variable made `sparkrelay relay` and `sparkrelay
check-config relay.json` fail (the variable made the tunnel section present
and it lacked its required keys, or an unknown name in it was a typo), and
SPARKRELAY_RELAY_* did the same to `sparkrelay tunnel`. A typo within a
role's own section is still refused.
"""

import os
import subprocess
import time
import unittest

import harness as H

# The other role's variables: a valid one, a bad value and an unknown name.
TUNNEL_VARS = {"SPARKRELAY_TUNNEL_TOKEN": "tok", "SPARKRELAY_TUNNEL_RELAYS": "not a host",
               "SPARKRELAY_TUNNEL_NO_SUCH_KEY": "1"}
RELAY_VARS = {"SPARKRELAY_RELAY_POOL_PORT_MIN": "0", "SPARKRELAY_RELAY_NO_SUCH_KEY": "1"}
START_TIMEOUT = 15.0


def env_with(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKRELAY_")}
    env.update(extra)
    return env


class RoleEnvTest(unittest.TestCase):

    def setUp(self):
        if H.DIRECT or not H.BIN:
            self.skipTest("needs the sparkrelay binary")
        self.dir = H.new_dir(self.id())
        self.procs = []
        self.relay_port = H.free_port()
        self.relay_cfg = H.relay_config(self.relay_port, 41000)
        self.relay_json = H.write_config(os.path.join(self.dir, "relay.json"), self.relay_cfg)
        self.tunnel_json = H.write_config(os.path.join(self.dir, "tunnel.json"),
                                          H.tunnel_config(H.free_port(), self.dir))

    def tearDown(self):
        for p, log in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            log.close()

    def check_config(self, path, extra):
        return subprocess.run([H.BIN, "check-config", path], env=env_with(extra),
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)

    def start(self, name, argv, extra):
        log = open(os.path.join(self.dir, name + ".log"), "w+")
        p = subprocess.Popen([H.BIN] + argv, env=env_with(extra), cwd=self.dir,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=log, preexec_fn=H._child_setup)
        self.procs.append((p, log))
        return p, log

    def wait_until(self, p, log, ready, what):
        """ready() true within START_TIMEOUT while p runs; else fail with its log."""
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if p.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                self.fail("%s (rc=%s):\n%s" % (what, p.poll(), log.read()[-2000:]))
            time.sleep(0.05)

    def exits_refusing(self, p, log, needle):
        try:
            rc = p.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("still running with an unknown variable of its own section")
        log.seek(0)
        text = log.read()
        self.assertEqual(rc, 1, text)
        self.assertIn(needle, text)

    def test_check_config_reads_the_sections_of_the_file(self):
        r = self.check_config(self.relay_json, TUNNEL_VARS)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK (relay)", r.stderr)
        r = self.check_config(self.tunnel_json, RELAY_VARS)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK (tunnel)", r.stderr)
        # a typo within the file's own section is refused
        r = self.check_config(self.relay_json, dict(TUNNEL_VARS, SPARKRELAY_RELAY_MAX_TUNNEL="7"))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("env SPARKRELAY_RELAY_MAX_TUNNEL: no such setting", r.stderr)

    def test_relay_ignores_the_tunnel_variables(self):
        p, log = self.start("relay", ["relay", "--config", self.relay_json], TUNNEL_VARS)
        self.wait_until(p, log, lambda: H._accepts("127.0.0.1", self.relay_port),
                        "the relay did not start next to SPARKRELAY_TUNNEL_* variables")

    def test_relay_from_the_environment_alone(self):
        r = self.relay_cfg["relay"]
        env = dict(TUNNEL_VARS,
                   SPARKRELAY_RELAY_LISTEN=r["listen"],
                   SPARKRELAY_RELAY_TLS_CERT=r["tls"]["cert"],
                   SPARKRELAY_RELAY_TLS_KEY=r["tls"]["key"],
                   SPARKRELAY_RELAY_POOL_BIND=H.POOL_HOST,
                   SPARKRELAY_RELAY_POOL_PORT_MIN="41000",
                   SPARKRELAY_RELAY_POOL_PORT_MAX="41015",
                   SPARKRELAY_RELAY_ADMIN_LISTEN="127.0.0.1:0")
        p, log = self.start("relay-env", ["relay"], env)
        self.wait_until(p, log, lambda: H._accepts("127.0.0.1", self.relay_port),
                        "the relay did not start from the environment")

    def test_relay_refuses_a_typo_of_its_own(self):
        p, log = self.start("relay-typo", ["relay", "--config", self.relay_json],
                            dict(TUNNEL_VARS, SPARKRELAY_RELAY_MAX_TUNNEL="7"))
        self.exits_refusing(p, log, "env SPARKRELAY_RELAY_MAX_TUNNEL: no such setting")

    def test_tunnel_ignores_the_relay_variables(self):
        p, log = self.start("tunnel", ["tunnel", "--config", self.tunnel_json], RELAY_VARS)
        # a line tagged with the role is logged only once the configuration loaded
        def logged():
            log.seek(0)
            return any(H.LOG_LINE_RE.match(l) and "[tunnel" in l for l in log)

        self.wait_until(p, log, logged,
                        "the sidecar did not start next to SPARKRELAY_RELAY_* variables")
        self.assertIsNone(p.poll())

    def test_tunnel_refuses_a_typo_of_its_own(self):
        p, log = self.start("tunnel-typo", ["tunnel", "--config", self.tunnel_json],
                            dict(RELAY_VARS, SPARKRELAY_TUNNEL_TOKN="x"))
        self.exits_refusing(p, log, "env SPARKRELAY_TUNNEL_TOKN: no such setting")


if __name__ == "__main__":
    H.main()
