#!/usr/bin/env python3
"""Host-side helpers of .ci/image-test.sh (standard library only).

The containers run with --network=host, so these stand-ins talk to them on loopback:
the driver listens on 127.0.0.1:<lease port> (where the sidecar dials it) and the
executors dial the relay's pool address (127.0.0.2:<same port>; the whole of 127/8 is
loopback, so both can bind the same port number on one machine).

  free-ports COUNT                    print a base port B with B..B+COUNT-1 free on
                                      127.0.0.1 and 127.0.0.2
  wait-file PATH SECONDS              wait until PATH holds a JSON object
  lease-ports JSON                    print "DRIVER BLOCKMANAGER" from a spark.json
  driver JSON                         echo server on the lease's ports (until SIGTERM)
  exchange JSON HOST [CONNS]          CONNS concurrent executors per port; bytes must
                                      come back exactly, half-close included
  hold JSON HOST READY GO SECONDS     one executor connection: exchange, touch READY,
                                      wait for GO, exchange again on the same
                                      connection, half-close, expect EOF
Every wait is bounded; any failure exits 1 with a message.
"""
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time

IO_TIMEOUT = 30.0


def die(msg):
    print(f"image_test.py: {msg}", file=sys.stderr)
    sys.exit(1)


def load_lease(path):
    with open(path) as f:
        doc = json.load(f)
    ports = doc.get("ports", {})
    spark = doc.get("spark", {})
    p1, p2 = ports.get("driver"), ports.get("blockManager")
    if not isinstance(p1, int) or not isinstance(p2, int):
        die(f"{path}: no driver/blockManager ports: {doc}")
    if spark.get("spark.driver.port") != str(p1) or \
            spark.get("spark.driver.blockManager.port") != str(p2):
        die(f"{path}: spark settings disagree with ports: {doc}")
    if spark.get("spark.driver.bindAddress") != "127.0.0.1" or \
            spark.get("spark.port.maxRetries") != "0":
        die(f"{path}: unexpected spark settings: {spark}")
    return doc, p1, p2


def cmd_free_ports(count):
    count = int(count)
    for base in range(27000, 60000, 97):
        socks = []
        try:
            for port in range(base, base + count):
                for host in ("127.0.0.1", "127.0.0.2"):
                    s = socket.socket()
                    socks.append(s)
                    s.bind((host, port))
            print(base)
            return
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    die("no free port range found")


def cmd_wait_file(path, seconds):
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if isinstance(json.load(f), dict):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    die(f"{path} did not appear within {seconds} s")


def cmd_lease_ports(path):
    _, p1, p2 = load_lease(path)
    print(p1, p2)


def echo_conn(conn):
    """Echo until EOF, then half-close our side: the reply direction ends only after
    the request direction has, which checks that FIN is carried per direction."""
    try:
        conn.settimeout(IO_TIMEOUT)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        print(f"driver: connection error: {e}", file=sys.stderr)
    finally:
        conn.close()


def cmd_driver(path):
    _, p1, p2 = load_lease(path)
    listeners = []
    for port in (p1, p2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        listeners.append(s)

    def serve(ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=echo_conn, args=(c,), daemon=True).start()

    for ls in listeners:
        threading.Thread(target=serve, args=(ls,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"driver: echoing on 127.0.0.1:{p1} and 127.0.0.1:{p2}", flush=True)
    # Bounded: the shell kills us long before this.
    time.sleep(1800)


def roundtrip(sock, payload):
    """Send payload while reading the echo concurrently (the echo may block on a full
    window otherwise); return what came back before EOF when half_close."""
    got = bytearray()
    err = []

    def reader(n):
        try:
            while len(got) < n:
                d = sock.recv(min(262144, n - len(got)))
                if not d:
                    break
                got.extend(d)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=reader, args=(len(payload),))
    t.start()
    sock.sendall(payload)
    t.join(IO_TIMEOUT + 5)
    if t.is_alive():
        raise TimeoutError("echo did not come back in time")
    if err:
        raise err[0]
    return bytes(got)


def executor(host, port, size, seed, results, idx):
    try:
        payload = hashlib.sha256(seed).digest() * (size // 32) + os.urandom(size % 32)
        with socket.create_connection((host, port), timeout=IO_TIMEOUT) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = roundtrip(s, payload)
            if back != payload:
                raise ValueError(f"echo differs: sent {len(payload)} bytes, got {len(back)}")
            s.shutdown(socket.SHUT_WR)
            if s.recv(1) != b"":
                raise ValueError("expected EOF after half-close")
        results[idx] = None
    except Exception as e:  # reported by the caller
        results[idx] = f"{host}:{port} ({size} bytes): {e!r}"


def cmd_exchange(path, host, conns="4"):
    _, p1, p2 = load_lease(path)
    conns = int(conns)
    jobs = []
    for i in range(conns):
        # RPC-sized on the driver port, bulk on the blockManager port.
        jobs.append((p1, 1000 + 4096 * i))
        jobs.append((p2, (1 << 20) * (i + 1) + 17))
    results = [Ellipsis] * len(jobs)
    threads = []
    t0 = time.monotonic()
    for idx, (port, size) in enumerate(jobs):
        t = threading.Thread(target=executor,
                             args=(host, port, size, f"{idx}".encode(), results, idx))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(IO_TIMEOUT * 2)
    bad = [r for r in results if r is not None]
    if bad:
        die("exchange failed: " + "; ".join(str(b) for b in bad))
    total = sum(size for _, size in jobs)
    print(f"exchange: {len(jobs)} connections via {host}:{p1}/{p2}, "
          f"{total} bytes echoed exactly in {time.monotonic() - t0:.2f} s")


def cmd_hold(path, host, ready, go, seconds):
    _, p1, _ = load_lease(path)
    with socket.create_connection((host, p1), timeout=IO_TIMEOUT) as s:
        first = os.urandom(10000)
        if roundtrip(s, first) != first:
            die("hold: first echo differs")
        open(ready, "w").close()
        deadline = time.monotonic() + float(seconds)
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                die(f"hold: {go} did not appear within {seconds} s")
            time.sleep(0.05)
        second = os.urandom(300000)
        if roundtrip(s, second) != second:
            die("hold: echo after the relay's SIGTERM differs")
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"":
            die("hold: expected EOF after half-close")
    print(f"hold: connection on {host}:{p1} kept working through the relay's drain")


def main(argv):
    cmds = {
        "free-ports": cmd_free_ports,
        "wait-file": cmd_wait_file,
        "lease-ports": cmd_lease_ports,
        "driver": cmd_driver,
        "exchange": cmd_exchange,
        "hold": cmd_hold,
    }
    if len(argv) < 2 or argv[1] not in cmds:
        die(__doc__)
    try:
        cmds[argv[1]](*argv[2:])
    except TypeError as e:
        die(f"{argv[1]}: bad arguments: {e}")


if __name__ == "__main__":
    main(sys.argv)
