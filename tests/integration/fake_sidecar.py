"""A hand-written sidecar for bad-input tests: the TLS client / HTTP/2 server
end of a tunnel, with just enough HTTP/2 to reach the control stream, so a
test can send the relay control bytes that the real sidecar never would.

    fs = FakeSidecar(relay_port, ca).connect()   # TLS 1.3, ALPN h2
    fs.start_h2()        # read the relay's preface, send SETTINGS (+ACK),
                         # answer the control stream's HEADERS with :status 200
    fs.send_ctl(obj)     # u32 length | JSON, as DATA on stream 1
    fs.send_ctl_raw(b)   # any bytes as DATA on stream 1
    fs.read_ctl(t)       # next control message from the relay (dict) or None
    fs.wait_closed(t)    # ('eof'|'reset'|'timeout', seconds)

HPACK: the only header block we send is ":status: 200", which is entry 8 of
the static table, so the whole block is the single byte 0x88 (an indexed
header field). The relay's header blocks are never decoded: for the control
stream only the frame type and stream id matter.

Standard library only; every socket operation has a timeout."""

import json
import socket
import ssl
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_ACK = 0x1
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
STATUS_200 = b"\x88"
CTL_STREAM = 1
MAX_FRAME = 16384


class FakeError(Exception):
    pass


def frame(ftype, flags, stream, payload=b""):
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack("!I", stream & 0x7FFFFFFF) + payload


def ctl_frame(obj_or_bytes):
    body = obj_or_bytes if isinstance(obj_or_bytes, bytes) else \
        json.dumps(obj_or_bytes, separators=(",", ":")).encode()
    return struct.pack("!I", len(body)) + body


def register_msg(app="fake-sidecar", v=2, **extra):
    m = {"v": v, "type": "register", "app": app, "roles": ["driver", "blockManager"]}
    m.update(extra)
    return m


class FakeSidecar:

    def __init__(self, relay_port, ca, host="127.0.0.1", server_name="localhost",
                 alpn=("h2",), timeout=5.0):
        self.addr = (host, relay_port)
        self.ca = ca
        self.server_name = server_name
        self.alpn = list(alpn) if alpn is not None else None
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.ctl_buf = b""
        self.frames = []       # (type, flags, stream, payload) of every frame read
        self.closed = None     # 'eof' | 'reset' once the relay closed
        self.t_connect = None

    # -- transport
    def context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.alpn is not None:
            ctx.set_alpn_protocols(self.alpn)
        return ctx

    def connect(self):
        raw = socket.create_connection(self.addr, timeout=self.timeout)
        self.t_connect = time.monotonic()
        try:
            self.sock = self.context().wrap_socket(raw, server_hostname=self.server_name)
        except BaseException:
            raw.close()
            raise
        self.sock.settimeout(self.timeout)
        return self

    def alpn_selected(self):
        return self.sock.selected_alpn_protocol()

    def sendall(self, b):
        self.sock.sendall(b)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("fake sidecar: read timed out")
            self.sock.settimeout(left)
            try:
                b = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
                self.closed = "reset"
                raise FakeError("relay reset the tunnel: %r" % (e,))
            if not b:
                self.closed = "eof"
                raise FakeError("relay closed the tunnel")
            self.buf += b

    def _take(self, n, deadline):
        self._fill(n, deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout):
        """One frame; answers SETTINGS and PING on the way. Raises FakeError on
        close, socket.timeout on timeout."""
        deadline = time.monotonic() + timeout
        hdr = self._take(9, deadline)
        length = struct.unpack("!I", b"\x00" + hdr[:3])[0]
        ftype, flags = hdr[3], hdr[4]
        stream = struct.unpack("!I", hdr[5:9])[0] & 0x7FFFFFFF
        payload = self._take(length, deadline)
        self.frames.append((ftype, flags, stream, payload))
        if ftype == SETTINGS and not flags & FLAG_ACK:
            self.sendall(frame(SETTINGS, FLAG_ACK, 0))
        elif ftype == PING and not flags & FLAG_ACK:
            self.sendall(frame(PING, FLAG_ACK, 0, payload))
        elif ftype == DATA and stream == CTL_STREAM:
            if flags & FLAG_PADDED and payload:
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            self.ctl_buf += payload
        return ftype, flags, stream, payload

    # -- HTTP/2 server side
    def start_h2(self, timeout=5.0):
        """Read the relay's client preface, send our SETTINGS, and answer the
        control stream's request with :status 200."""
        deadline = time.monotonic() + timeout
        magic = self._take(len(PREFACE), deadline)
        if magic != PREFACE:
            raise FakeError("relay sent no HTTP/2 client preface: %r" % magic[:24])
        self.sendall(frame(SETTINGS, 0, 0))
        while True:
            ftype, flags, stream, _ = self.read_frame(max(0.01, deadline - time.monotonic()))
            if ftype == HEADERS and stream == CTL_STREAM:
                if not flags & FLAG_END_HEADERS:
                    raise FakeError("control HEADERS continued in CONTINUATION (unsupported)")
                break
        self.sendall(frame(HEADERS, FLAG_END_HEADERS, CTL_STREAM, STATUS_200))
        return self

    def send_ctl_raw(self, data):
        for i in range(0, len(data), MAX_FRAME):
            self.sendall(frame(DATA, 0, CTL_STREAM, data[i:i + MAX_FRAME]))

    def send_ctl(self, obj_or_bytes):
        self.send_ctl_raw(ctl_frame(obj_or_bytes))

    def read_ctl(self, timeout=5.0):
        """The next control message from the relay as a dict, or None if the
        tunnel closed or nothing came within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.ctl_buf) >= 4:
                n = struct.unpack("!I", self.ctl_buf[:4])[0]
                if len(self.ctl_buf) >= 4 + n:
                    body, self.ctl_buf = self.ctl_buf[4:4 + n], self.ctl_buf[4 + n:]
                    return json.loads(body)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.read_frame(left)
            except (FakeError, socket.timeout):
                return None

    def wait_closed(self, timeout):
        """Read (and answer) frames until the relay closes the connection.
        Returns ('eof'|'reset'|'timeout', seconds waited)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while self.closed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return ("timeout", time.monotonic() - t0)
            try:
                self.read_frame(left)
            except FakeError:
                break
            except socket.timeout:
                return ("timeout", time.monotonic() - t0)
            except OSError:
                self.closed = "reset"
        return (self.closed, time.monotonic() - t0)

    def goaway_seen(self):
        return any(f[0] == GOAWAY for f in self.frames)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
