#!/usr/bin/env python3
"""Sequence-echo executors for bench/survival.sh (standard library only).

server --listen HOST:PORT [...]: echoes every byte back (the "driver").

client --connect HOST:PORT --conns N --ready FILE --json FILE: N connections
(the "executors"), each sending its next sequence number ("<n>\\n") every
--interval seconds and checking that the echoes come back in order, each number
exactly once. SIGUSR1 marks the start of the event (outage, kill, takeover),
SIGUSR2 the moment the path returned (rules removed, new process up). After
SIGUSR2 the client waits until every connection still open has had an echo
again (at most --tail seconds), keeps sending for --settle seconds, then stops
sending and waits for the last echoes (at most --drain seconds). A connection
survived when it never saw an error, every echo was in order and every number
sent came back. One more connection is opened at the end (is the front still
serving new executors?). Every phase is bounded; --max-seconds bounds it all.
"""
import argparse
import errno
import json
import os
import selectors
import signal
import socket
import sys
import time

LINE_MAX = 32  # a sequence number line; anything longer is a broken echo


def hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def serve(args):
    sel = selectors.DefaultSelector()
    for a in args.listen:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(hostport(a))
        ls.listen(1024)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, None)
    pend = {}
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        for key, ev in sel.select(0.5):
            s = key.fileobj
            if key.data is None:
                try:
                    c, _ = s.accept()
                except OSError:
                    continue
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pend[c] = b""
                sel.register(c, selectors.EVENT_READ, "c")
                continue
            if ev & selectors.EVENT_READ:
                try:
                    d = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    d = None
                except OSError:
                    d = b""
                if d == b"":
                    sel.unregister(s)
                    pend.pop(s, None)
                    s.close()
                    continue
                if d:
                    pend[s] += d
            if pend.get(s):
                try:
                    n = s.send(pend[s])
                    pend[s] = pend[s][n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    sel.unregister(s)
                    pend.pop(s, None)
                    s.close()
                    continue
                sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if pend[s] else 0), "c")


class Conn:
    def __init__(self, i, sock, t0, interval, n):
        self.i = i
        self.sock = sock
        self.next_send = t0 + interval * i / max(n, 1)  # staggered over one interval
        self.sent = 0
        self.echoed = 0
        self.out = b""
        self.inbuf = b""
        self.err = None
        self.err_t = None
        self.last_echo = None
        self.max_gap = 0.0  # longest wait between echoes since the event began
        self.first_after = None  # first echo at or after the path returned


class Client:
    def __init__(self, args):
        self.a = args
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.t_event = None
        self.t_restore = None
        self.sending = True

    def fail(self, c, why, now):
        if c.err is None:
            c.err = why
            c.err_t = now
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()

    def on_read(self, c, now):
        try:
            d = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "error", now)
            return
        if d == b"":
            self.fail(c, "closed", now)
            return
        c.inbuf += d
        while True:
            k = c.inbuf.find(b"\n")
            if k < 0:
                if len(c.inbuf) > LINE_MAX:
                    self.fail(c, "order", now)
                return
            line, c.inbuf = c.inbuf[:k], c.inbuf[k + 1:]
            if line != str(c.echoed).encode() or c.echoed >= c.sent:
                self.fail(c, "order", now)
                return
            c.echoed += 1
            if self.t_event is not None and c.last_echo is not None:
                c.max_gap = max(c.max_gap, now - max(c.last_echo, self.t_event))
            c.last_echo = now
            if self.t_restore is not None and c.first_after is None:
                c.first_after = now

    def flush(self, c, now):
        if c.out:
            try:
                n = c.sock.send(c.out)
                c.out = c.out[n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self.fail(c, "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "error", now)
                return
        if c.err is None:
            self.sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0), c)

    def tick(self, timeout):
        now = time.monotonic()
        for key, ev in self.sel.select(timeout):
            c = key.data
            if ev & selectors.EVENT_READ:
                self.on_read(c, now)
            if c.err is None and ev & selectors.EVENT_WRITE:
                self.flush(c, now)
        now = time.monotonic()
        if self.sending:
            for c in self.conns:
                if c.err is None and now >= c.next_send:
                    c.out += b"%d\n" % c.sent
                    c.sent += 1
                    c.next_send += self.a.interval
                    if c.next_send < now:  # a stalled loop does not burst
                        c.next_send = now + self.a.interval
                    self.flush(c, now)

    def run(self):
        a = self.a
        hard = time.monotonic() + a.max_seconds
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "t_event", time.monotonic()))
        signal.signal(signal.SIGUSR2, lambda *_: setattr(self, "t_restore", time.monotonic()))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        t0 = time.monotonic()
        for i in range(a.conns):
            s = socket.create_connection(hostport(a.connect), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            c = Conn(i, s, t0, a.interval, a.conns)
            self.conns.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)
        # Ready when every connection has had an echo: the path works end to end.
        t_ready = time.monotonic() + 30
        while time.monotonic() < t_ready:
            self.tick(0.01)
            if all(c.err is None and c.echoed >= 2 for c in self.conns):
                break
        ready = all(c.err is None and c.echoed >= 2 for c in self.conns)
        with open(a.ready + ".tmp", "w") as f:
            f.write("ok\n" if ready else "fail\n")
        os.rename(a.ready + ".tmp", a.ready)
        # Wait for the event and the path's return (the script bounds both).
        while self.t_restore is None and time.monotonic() < hard:
            self.tick(0.01)
        # Echoes again on every connection still open, or the tail bound.
        t_tail = min(time.monotonic() + a.tail, hard)
        while time.monotonic() < t_tail:
            self.tick(0.01)
            if all(c.err is not None or c.first_after is not None for c in self.conns):
                break
        t_settle = min(time.monotonic() + a.settle, hard)
        while time.monotonic() < t_settle:
            self.tick(0.01)
        self.sending = False
        t_drain = min(time.monotonic() + a.drain, hard)
        while time.monotonic() < t_drain:
            self.tick(0.01)
            if all(c.err is not None or c.echoed == c.sent for c in self.conns):
                break
        fresh = self.fresh()
        return self.report(ready, fresh)

    def fresh(self):
        try:
            s = socket.create_connection(hostport(self.a.connect), timeout=5)
            s.settimeout(5)
            s.sendall(b"0\n")
            d = b""
            while not d.endswith(b"\n") and len(d) <= LINE_MAX:
                b = s.recv(64)
                if not b:
                    break
                d += b
            s.close()
            return d == b"0\n"
        except OSError:
            return False

    def report(self, ready, fresh):
        tr, te = self.t_restore, self.t_event
        errs = {}
        ok = []
        for c in self.conns:
            if c.err is None and c.echoed < c.sent:
                c.err = "stalled"  # open, but echoes missing at the end
            if c.err is None:
                ok.append(c)
            else:
                errs[c.err] = errs.get(c.err, 0) + 1
        lost_t = sorted(c.err_t - te for c in self.conns
                        if c.err_t is not None and te is not None)
        rec = sorted(c.first_after - tr for c in ok if c.first_after is not None and tr is not None)
        r = {
            "conns": len(self.conns),
            "ready": ready,
            "survived": len(ok),
            "errors": errs,
            "first_loss_after_event_s": round(lost_t[0], 2) if lost_t else None,
            "echo_again_first_s": round(rec[0], 2) if rec else None,
            "echo_again_all_s": round(rec[-1], 2) if rec and len(rec) == len(ok) else None,
            "max_stall_s": round(max(c.max_gap for c in ok), 2) if ok else None,
            "event_to_restore_s": round(tr - te, 2) if tr and te else None,
            "numbers_echoed": sum(c.echoed for c in self.conns),
            "new_connection_ok": fresh,
        }
        with open(self.a.json, "w") as f:
            json.dump(r, f, indent=1)
        return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", action="append", required=True)
    s.add_argument("--max-seconds", type=float, default=3600)
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--conns", type=int, default=50)
    c.add_argument("--interval", type=float, default=0.1)
    c.add_argument("--tail", type=float, default=70)
    c.add_argument("--settle", type=float, default=2)
    c.add_argument("--drain", type=float, default=10)
    c.add_argument("--max-seconds", type=float, default=400)
    c.add_argument("--ready", required=True)
    c.add_argument("--json", required=True)
    a = p.parse_args()
    if a.cmd == "server":
        serve(a)
        return 0
    if not 1 <= a.conns <= 5000 or not 0.01 <= a.interval <= 10:
        p.error("--conns 1..5000, --interval 0.01..10")
    return Client(a).run()


if __name__ == "__main__":
    sys.exit(main())
