"""A hand-written relay for trust tests: the TLS server / HTTP/2 client end of
a tunnel, holding a certificate the sidecar trusts, so a test can play a
compromised relay against the real sidecar.

    fr = FakeRelay(certs).start()           # TLS 1.3 listener on 127.0.0.1, ALPN h2
    s = fr.accept(timeout)                  # the sidecar's next tunnel
    s.start_h2()        # preface + SETTINGS, open the control stream (stream 1)
    s.read_ctl(t)       # next control message from the sidecar (dict) or None
    s.send_ctl(obj)     # u32 length | JSON (or raw bytes) as DATA on stream 1
    sid = s.connect(port, lease=.., conn=.., peer=..)   # a CONNECT stream
    s.wait_stream(sid, t)   # ('ok', None) on :status 200, ('reset', code), ('timeout', None)
    s.wait_closed(t)    # ('eof'|'reset'|'timeout', seconds)

Frames and control framing come from fake_sidecar.py. Header blocks we send
use HPACK literals without indexing (new name), so no encoder state is kept;
the sidecar's header blocks are not decoded: a response HEADERS is taken as
its :status 200 (the sidecar answers nothing else), RST_STREAM carries the
refusal. Every wait reads, answers SETTINGS and PING, and records frames.

Standard library only; every wait is bounded."""

import json
import socket
import ssl
import struct
import time

import fake_sidecar as F

CTL_PATH = "/sparkrelay/v1/control"
REFUSED_STREAM = 7
CANCEL = 8
SETTINGS_INITIAL_WINDOW_SIZE = 4
BIG_WINDOW = (1 << 31) - 1


def hpack_int(value, prefix_bits, first=0):
    """HPACK integer (RFC 7541 5.1) with the given prefix, OR-ed into first."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman coding."""
    name = name if isinstance(name, bytes) else name.encode()
    value = value if isinstance(value, bytes) else value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def header_block(headers):
    return b"".join(hpack_literal(n, v) for n, v in headers)


class Session:
    """One tunnel from the sidecar, seen from the relay's side. One thread:
    every wait reads (and answers SETTINGS and PING) until its condition
    holds, since an SSL socket must not be read and written concurrently."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.ctl_buf = b""
        self.next_id = 3          # stream 1 is the control stream
        self.nframes = 0
        self.answered = set()     # streams whose response HEADERS came
        self.resets = {}          # stream -> RST_STREAM error code from the sidecar
        self.goaway = None        # error code of a GOAWAY from the sidecar
        self.closed = None        # 'eof' | 'reset' | 'local'

    # -- transport
    def sendall(self, b):
        self.sock.settimeout(10.0)
        self.sock.sendall(b)

    def pump(self, timeout):
        """Read what arrives within timeout (at least one recv) and handle
        it. Returns False once the sidecar closed the tunnel."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            b = self.sock.recv(262144)
        except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
            return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            self.closed = "reset"
            return False
        if not b:
            self.closed = "eof"
            return False
        self.buf += b
        while len(self.buf) >= 9:
            length = struct.unpack("!I", b"\x00" + self.buf[:3])[0]
            if len(self.buf) < 9 + length:
                break
            hdr, payload = self.buf[:9], self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            self._on_frame(hdr[3], hdr[4], struct.unpack("!I", hdr[5:9])[0] & 0x7FFFFFFF,
                           payload)
        return True

    def _on_frame(self, ftype, flags, stream, payload):
        self.nframes += 1
        try:
            if ftype == F.SETTINGS and not flags & F.FLAG_ACK:
                self.sendall(F.frame(F.SETTINGS, F.FLAG_ACK, 0))
            elif ftype == F.PING and not flags & F.FLAG_ACK:
                self.sendall(F.frame(F.PING, F.FLAG_ACK, 0, payload))
        except OSError:
            pass
        if ftype == F.DATA and stream == F.CTL_STREAM:
            if flags & F.FLAG_PADDED and payload:
                payload = payload[1:len(payload) - payload[0]]
            self.ctl_buf += payload
        elif ftype == F.HEADERS and stream != F.CTL_STREAM:
            self.answered.add(stream)
        elif ftype == F.RST_STREAM and len(payload) == 4:
            self.resets[stream] = struct.unpack("!I", payload)[0]
        elif ftype == F.GOAWAY and len(payload) >= 8:
            self.goaway = struct.unpack("!I", payload[4:8])[0]

    def _wait(self, pred, timeout):
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            left = deadline - time.monotonic()
            if v or left <= 0 or not self.pump(min(left, 0.2)):
                return v or pred()

    # -- HTTP/2 client side
    def start_h2(self):
        """Client preface and SETTINGS (large windows, so the sidecar is never
        held up by us), then the control stream's request."""
        settings = struct.pack("!HI", SETTINGS_INITIAL_WINDOW_SIZE, BIG_WINDOW)
        block = header_block([(":method", "POST"), (":scheme", "https"),
                              (":authority", "sparkrelay"), (":path", CTL_PATH)])
        self.sendall(F.PREFACE + F.frame(F.SETTINGS, 0, 0, settings) +
                     F.frame(F.WINDOW_UPDATE, 0, 0, struct.pack("!I", BIG_WINDOW - 65535)) +
                     F.frame(F.HEADERS, F.FLAG_END_HEADERS, F.CTL_STREAM, block))
        return self

    def send_ctl(self, obj_or_bytes):
        self.sendall(F.frame(F.DATA, 0, F.CTL_STREAM, F.ctl_frame(obj_or_bytes)))

    def read_ctl(self, timeout=5.0):
        """The next control message from the sidecar (dict), or None."""
        def one():
            if len(self.ctl_buf) >= 4:
                n = struct.unpack("!I", self.ctl_buf[:4])[0]
                return len(self.ctl_buf) >= 4 + n
            return False
        if not self._wait(one, timeout):
            return None
        n = struct.unpack("!I", self.ctl_buf[:4])[0]
        body, self.ctl_buf = self.ctl_buf[4:4 + n], self.ctl_buf[4 + n:]
        return json.loads(body)

    @staticmethod
    def connect_headers(port=None, lease=None, conn="1", peer="10.0.0.9:40000",
                        authority=None, extra=()):
        h = [(":method", "CONNECT"),
             (":authority", authority if authority is not None else "127.0.0.1:%d" % port)]
        if lease is not None:
            h.append(("sparkrelay-lease", lease))
        if conn is not None:
            h.append(("sparkrelay-conn", conn))
        if peer is not None:
            h.append(("sparkrelay-peer", peer))
        h.extend(extra)
        return header_block(h)

    def new_stream_id(self):
        sid = self.next_id
        self.next_id += 2
        return sid

    def connect(self, port=None, **kw):
        """Open a CONNECT stream; returns its id."""
        sid = self.new_stream_id()
        self.sendall(F.frame(F.HEADERS, F.FLAG_END_HEADERS, sid,
                             self.connect_headers(port, **kw)))
        return sid

    def wait_stream(self, sid, timeout=5.0):
        """('ok', None) on a response, ('reset', code), or ('closed'|'timeout', None)."""
        def done():
            if sid in self.resets:
                return ("reset", self.resets[sid])
            if sid in self.answered:
                return ("ok", None)
            return None
        r = self._wait(done, timeout)
        if r:
            return r
        return ("closed", None) if self.closed else ("timeout", None)

    def reset(self, sid, code=CANCEL):
        self.sendall(F.frame(F.RST_STREAM, 0, sid, struct.pack("!I", code)))

    def wait_closed(self, timeout):
        """Read until the sidecar closes the tunnel: ('eof'|'reset'|'timeout', s)."""
        t0 = time.monotonic()
        self._wait(lambda: self.closed, timeout)
        return (self.closed or "timeout", time.monotonic() - t0)

    def close(self):
        self.closed = self.closed or "local"
        try:
            self.sock.close()
        except OSError:
            pass


class FakeRelay:
    """A TLS 1.3 listener with the harness relay certificate (SAN 127.0.0.1,
    localhost), ALPN h2, on 127.0.0.1:<free port>."""

    def __init__(self, certs, host="127.0.0.1", tls_max=None):
        self.certs = certs
        self.host = host
        self.tls_max = tls_max  # e.g. ssl.TLSVersion.TLSv1_2: a relay of the wrong kind
        self.ls = None
        self.port = None
        self.sessions = []

    def start(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.tls_max is not None:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.maximum_version = self.tls_max
        ctx.load_cert_chain(self.certs.relay_cert, self.certs.relay_key)
        ctx.set_alpn_protocols(["h2"])
        self.ctx = ctx
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, 0))
        ls.listen(16)
        self.ls = ls
        self.port = ls.getsockname()[1]
        return self

    def accept(self, timeout=10.0):
        """The next tunnel from the sidecar, TLS done; raises socket.timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("fake relay: no tunnel within %.0f s" % timeout)
            self.ls.settimeout(left)
            raw, _ = self.ls.accept()
            raw.settimeout(max(0.5, deadline - time.monotonic()))
            try:
                tls = self.ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            if tls.selected_alpn_protocol() != "h2":
                tls.close()
                continue
            s = Session(tls)
            self.sessions.append(s)
            return s

    def session(self, timeout=10.0):
        """accept + start_h2 + read the register message: (session, register)."""
        s = self.accept(timeout).start_h2()
        reg = s.read_ctl(timeout)
        if reg is None or reg.get("type") != "register":
            raise AssertionError("fake relay: no register from the sidecar: %r" % (reg,))
        return s, reg

    def stop(self):
        for s in self.sessions:
            s.close()
        if self.ls is not None:
            self.ls.close()
            self.ls = None


def lease_msg(lease="L-1-0a1b2c3d", host="127.0.0.2", ports=None, ttl=300,
              resume="0123456789abcdef", **extra):
    m = {"v": 1, "type": "lease", "lease": lease, "host": host,
         "ports": ports if ports is not None else {"driver": 40001, "blockManager": 40002},
         "ttl": ttl, "resume": resume}
    m.update(extra)
    return m
