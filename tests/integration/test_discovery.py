"""The sidecar finds its relay through discovery, with the real binary:

- `k8s:NAMESPACE/SERVICE:PORT`: the Ready endpoints of a Service, from a
  stand-in Kubernetes API server in this process (HTTPS with a certificate
  made at test time, checking the bearer token, serving EndpointSlice JSON
  in the API's shape). No real Kubernetes API server runs here.
- `srv:_SERVICE._tcp.DOMAIN`: SRV records from a small DNS server in this
  process on 127.0.0.1 (UDP), which also answers the target's A record.

In both cases the relay certificate names only the configured name (the
Service's DNS name, the SRV domain) and 127.0.0.1 is never what the sidecar
verifies: the sidecar registers, gets its lease and carries an executor's
bytes. A wrong token and an API server that goes away are logged clearly.
"""

import http.server
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

TOKEN = "it-token-7b1f0c"
SRV_NAME = "_sparkrelay._tcp.relays.it.test"
TARGET = "relay-a.relays.it.test"
SERVICE_NAME = "sparkrelay.sparkrelay.svc"  # what a k8s:sparkrelay/sparkrelay entry verifies
PATH = ("/apis/discovery.k8s.io/v1/namespaces/sparkrelay/endpointslices"
        "?labelSelector=kubernetes.io%2Fservice-name%3Dsparkrelay")


def slice_list(port, ready=True):
    """An EndpointSliceList as the API server sends it, with one Ready relay
    on 127.0.0.1 and one that is not Ready (on an address nothing serves)."""
    return {
        "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": "4711"},
        "items": [{
            "metadata": {"name": "sparkrelay-abcde", "namespace": "sparkrelay",
                         "labels": {"kubernetes.io/service-name": "sparkrelay"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["127.0.0.1"],
                 "conditions": {"ready": ready, "serving": ready, "terminating": False},
                 "nodeName": "node-a"},
                {"addresses": ["127.0.0.99"],
                 "conditions": {"ready": False, "serving": False, "terminating": True},
                 "nodeName": "node-b"},
            ],
            "ports": [{"name": "metrics", "port": 9, "protocol": "TCP"},
                      {"name": "tunnel", "port": port, "protocol": "TCP"}],
        }],
    }


class ApiServer:
    """The stand-in Kubernetes API server: HTTPS on 127.0.0.1, one path."""

    def __init__(self, cert, key):
        outer = self
        self.port_fn = lambda: 1
        self.status = 200
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != "Bearer " + TOKEN:
                    return self._send(401, {"kind": "Status", "message": "Unauthorized",
                                            "code": 401})
                if self.path != PATH:
                    return self._send(404, {"kind": "Status", "message": "not found"})
                if outer.status != 200:
                    return self._send(outer.status, {"kind": "Status", "message": "down"})
                return self._send(200, slice_list(outer.port_fn()))

            def _send(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="api")
        self.t.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _qname(msg):
    labels, o = [], 12
    while o < len(msg) and msg[o]:
        n = msg[o]
        labels.append(msg[o + 1:o + 1 + n].decode("ascii", "replace").lower())
        o += 1 + n
    return ".".join(labels), o + 1


class DnsServer:
    """SRV for SRV_NAME (the relay's port, read when asked), A for TARGET;
    NXDOMAIN for other names. UDP on 127.0.0.1."""

    def __init__(self):
        self.port_fn = lambda: 1
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.t = threading.Thread(target=self._loop, daemon=True, name="dns")
        self.t.start()

    def _loop(self):
        while not self.stopping:
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(q) < 17:
                continue
            name, o = _qname(q)
            qtype = struct.unpack(">H", q[o:o + 2])[0]
            self.queries.append((name, qtype))
            answers = []
            if name == SRV_NAME and qtype == 33:
                target = b"".join(bytes([len(p)]) + p.encode() for p in TARGET.split("."))
                rd = struct.pack(">HHH", 10, 1, self.port_fn()) + target + b"\0"
                answers.append(struct.pack(">HHHIH", 0xc00c, 33, 1, 30, len(rd)) + rd)
            elif name == TARGET and qtype == 1:
                answers.append(struct.pack(">HHHIH", 0xc00c, 1, 1, 30, 4) +
                               socket.inet_aton("127.0.0.1"))
            known = name in (SRV_NAME, TARGET)
            flags = 0x8180 | (0 if known else 3)
            a = q[:2] + struct.pack(">HHHHH", flags, 1, len(answers), 0, 0) + q[12:o + 4]
            self.sock.sendto(a + b"".join(answers), peer)

    def stop(self):
        self.stopping = True
        self.sock.close()


class DiscoveryTest(H.ITCase):
    api = dns = None

    @classmethod
    def setUpClass(cls):
        c = H.certs()
        d = os.path.join(H.root_dir(), "certs-discovery")
        os.makedirs(d, exist_ok=True)
        # The relay's certificate names the configured names only: neither
        # 127.0.0.1 nor the SRV target, so verifying the address dialled or
        # the target would fail.
        H._make_leaf(d, "relay", "sparkrelay", os.path.join(c.dir, "ca"),
                     ["extendedKeyUsage=serverAuth",
                      "subjectAltName=DNS:%s,DNS:relays.it.test" % SERVICE_NAME])
        cls.relay_cert = os.path.join(d, "relay.pem")
        cls.relay_key = os.path.join(d, "relay.key")
        cls.sa = os.path.join(d, "serviceaccount")
        os.makedirs(cls.sa, exist_ok=True)
        cls.token_file = os.path.join(cls.sa, "token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")
        with open(os.path.join(cls.sa, "namespace"), "w") as f:
            f.write("sparkrelay")
        # The API server's own certificate: the harness's, for 127.0.0.1.
        cls.api = ApiServer(c.relay_cert, c.relay_key)
        cls.dns = DnsServer()
        cls.relay_overrides = {"relay": {"tls": {"cert": cls.relay_cert,
                                                 "key": cls.relay_key}}}

    @classmethod
    def tearDownClass(cls):
        if cls.api:
            cls.api.stop()
        if cls.dns:
            cls.dns.stop()

    def k8s_tunnel(self, token_file=None):
        return {"tunnel": {
            "relays": ["k8s:sparkrelay/sparkrelay:tunnel"],
            "discovery": {"cache_s": 0, "stale_s": 300, "timeout_ms": 2000,
                          "k8s": {"api_server": "https://127.0.0.1:%d" % self.api.port,
                                  "token_file": token_file or self.token_file,
                                  "ca": H.certs().ca,
                                  "namespace_file": os.path.join(self.sa, "namespace")}}}}

    def setUp(self):
        if H.DIRECT:
            self.skipTest("discovery needs the sidecar (not in SR_IT_DIRECT mode)")
        name = self._testMethodName
        if name.startswith("test_srv"):
            self.tunnel_overrides = {"tunnel": {
                "relays": ["srv:" + SRV_NAME],
                "discovery": {"nameservers": ["127.0.0.1:%d" % self.dns.port]}}}
        elif name == "test_k8s_wrong_token_is_a_clear_error":
            bad = os.path.join(self.sa, "bad-token")
            with open(bad, "w") as f:
                f.write("not-the-token")
            self.tunnel_overrides = self.k8s_tunnel(bad)
            self.stack = H.Stack(self.id(), self.relay_overrides, self.tunnel_overrides)
            self.addCleanup(self.stack.kill)
            self.stack.pool_base = H.pick_pool_base()
            self.stack.start_relay()
            return
        else:
            self.tunnel_overrides = self.k8s_tunnel()
        if name == "test_k8s_endpointslices_find_the_relay":
            # libcurl would write the TLS secrets of the API server's
            # connection (the token travels in it) to the file it names.
            self.keylog = os.path.join(H.root_dir(), "keylog-%d" % os.getpid())
            os.environ["SSLKEYLOGFILE"] = self.keylog
            self.addCleanup(os.environ.pop, "SSLKEYLOGFILE", None)
        self.api.port_fn = self.dns.port_fn = lambda: self.stack.relay_port
        self.api.status = 200
        super().setUp()

    def exchange(self):
        self.stack.start_driver()
        s = self.stack.executor("driver", timeout=10)
        s.sendall(b"ping through discovery")
        end, got, _, data = H.recv_exact(s, 22)
        self.assertEqual((end, data), ("ok", b"ping through discovery"))

    def test_k8s_endpointslices_find_the_relay(self):
        self.exchange()
        self.assertIn((PATH, "Bearer " + TOKEN), self.api.requests)
        self.assertFalse(os.path.exists(self.keylog), "TLS secrets written to SSLKEYLOGFILE")
        self.assertTrue(self.stack.tunnel.grep("SSLKEYLOGFILE is set and ignored"))
        log = self.stack.tunnel.log_text()
        self.assertIn("relay discovery k8s:sparkrelay/sparkrelay:tunnel: 1 address "
                      "(1 Ready endpoint), TLS name " + SERVICE_NAME, log)

    def test_k8s_api_server_down_keeps_the_last_answer(self):
        # The relay goes away and comes back while the API server fails:
        # the sidecar re-dials the address it had, and says so.
        self.api.status = 503
        self.stack.relay.kill()
        port = self.stack.relay_port
        relay = H.Proc("relay2", [H.BIN, "relay", "--config", self.stack.relay_cfg_path],
                       self.stack.dir)
        self.stack.relay = relay.start()
        relay.wait_ready(lambda: H._accepts("127.0.0.1", port), 15, "listening again")
        self.stack.tunnel.wait_ready(
            lambda: "using its answer from" in self.stack.tunnel.log_text(), 20,
            "the log line about the last answer")
        log = self.stack.tunnel.log_text()
        self.assertIn("listing EndpointSlices failed: HTTP 503: \"down\"; using its answer "
                      "from", log)
        # (the new relay process does not know the old lease: a new one)
        self.stack.tunnel.wait_ready(
            lambda: self.stack.tunnel.log_text().count("lease granted") >= 2, 20,
            "a lease from the restarted relay")

    def test_k8s_wrong_token_is_a_clear_error(self):
        cfg = H.tunnel_config(self.stack.relay_port, self.stack.dir, self.tunnel_overrides)
        path = H.write_config(os.path.join(self.stack.dir, "tunnel.json"), cfg)
        self.stack.tunnel = H.Proc("tunnel", [H.BIN, "tunnel", "--config", path],
                                   self.stack.dir).start()
        self.stack.tunnel.wait_ready(
            lambda: "refused the token" in self.stack.tunnel.log_text(), 15,
            "the refusal in the log")
        log = self.stack.tunnel.log_text()
        self.assertIn("relay discovery k8s:sparkrelay/sparkrelay:tunnel: listing "
                      "EndpointSlices failed: HTTP 401 (the API server refused the token): "
                      "\"Unauthorized\"", log)
        self.assertNotIn("not-the-token", log)
        self.assertFalse(os.path.exists(cfg["tunnel"]["spark_json"]))

    def test_srv_records_find_the_relay(self):
        self.exchange()
        self.assertIn((SRV_NAME, 33), self.dns.queries)
        self.assertIn((TARGET, 1), self.dns.queries)
        log = self.stack.tunnel.log_text()
        self.assertIn("relay discovery srv:%s: 1 address (1 SRV record), TLS name "
                      "relays.it.test" % SRV_NAME, log)


if __name__ == "__main__":
    H.main()
