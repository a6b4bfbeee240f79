#!/usr/bin/env python3
"""Small helpers of bench/fleet.sh. Standard library only.

  fleet.py ports N                  N consecutive TCP ports free on 127.0.0.1-.4
                                    (bind-and-check), below the ephemeral range;
                                    prints the first
  fleet.py ticks PID...             utime+stime of each PID (clock ticks), one line
  fleet.py rss PID...               VmRSS of each PID (KiB), one line (0: gone)
  fleet.py rsswatch OUT SECONDS PID...   samples VmRSS of the PIDs every 0.2 s for
                                    at most SECONDS (or until OUT.stop exists) and
                                    writes the per-PID maximum to OUT
  fleet.py iperf JSON               "bytes gbit_s" of one iperf3 -J run
  fleet.py report RESDIR OUT.json OUT.md META.json   medians and the table

A gigabyte is 1e9 bytes.
"""

import json
import os
import random
import socket
import statistics
import sys
import time

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def port_free(port):
    for host in HOSTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def ports(n):
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            high = int(fh.read().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        high = 32767
    low = 20000
    rng = random.Random()
    for _ in range(2000):
        start = rng.randint(low, high - n + 1)
        if all(port_free(p) for p in range(start, start + n)):
            return start
    raise SystemExit("fleet.py ports: no %d free consecutive ports in %d-%d" % (n, low, high))


def ticks(pid):
    try:
        with open("/proc/%s/stat" % pid) as fh:
            data = fh.read()
    except OSError:
        return 0
    rest = data[data.rfind(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def rss(pid):
    try:
        with open("/proc/%s/status" % pid) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rsswatch(out, seconds, pids):
    peak = {p: 0 for p in pids}
    end = time.monotonic() + seconds
    while time.monotonic() < end and not os.path.exists(out + ".stop"):
        for p in pids:
            peak[p] = max(peak[p], rss(p))
        time.sleep(0.2)
    with open(out, "w") as fh:
        fh.write(" ".join(str(peak[p]) for p in pids) + "\n")


def iperf(path):
    with open(path) as fh:
        doc = json.load(fh)
    if doc.get("error"):
        raise SystemExit("iperf3: %s" % doc["error"])
    e = doc["end"]["sum_received"]
    print(int(e["bytes"]), e["bits_per_second"] / 1e9)


def load(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def res_of(path):
    doc = load(path)
    return doc.get("results", {}) if isinstance(doc, dict) else {}


def num(r, key, sub=None):
    v = r.get(key)
    if isinstance(v, dict):
        v = v.get(sub) if sub else v.get("value")
    if isinstance(v, dict):
        v = v.get("value")
    return v if isinstance(v, (int, float)) else None


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0, unit=""):
    if v is None:
        return "-"
    return ("%." + str(nd) + "f%s") % (v, unit)


def report(resdir, out_json, out_md, meta_path):
    meta = load(meta_path) or {}
    reps = int(meta.get("reps", 1))
    m = {}
    # Latency and throughput: medians over the repetitions.
    for path in ("plain", "direct", "hop"):
        rp = [res_of(os.path.join(resdir, "rpc.%s.%d.json" % (path, i))) for i in range(1, reps + 1)]
        m["rtt_p50_us_" + path] = med([num(r, "rtt_us", "p50") for r in rp])
        m["rtt_p99_us_" + path] = med([num(r, "rtt_us", "p99") for r in rp])
        if path == "plain":
            continue
        for d in ("up", "down"):
            runs = [load(os.path.join(resdir, "iperf.%s.%s.%d.json" % (path, d, i)))
                    for i in range(1, reps + 1)]
            runs = [r for r in runs if r]
            m["gbit_s_%s_%s" % (d, path)] = med([r["gbit_s"] for r in runs])
            for who in ("relays", "a", "b", "sidecar"):
                m["cpu_s_per_gb_%s_%s_%s" % (who, d, path)] = med(
                    [r["cpu_s"][who] / (r["bytes"] / 1e9) for r in runs
                     if r.get("bytes") and who in r["cpu_s"]])
    per_rep = {}
    for path in ("plain", "direct", "hop"):
        rp = [res_of(os.path.join(resdir, "rpc.%s.%d.json" % (path, i))) for i in range(1, reps + 1)]
        per_rep["rtt_us_" + path] = [(num(r, "rtt_us", "p50"), num(r, "rtt_us", "p99")) for r in rp]
        if path == "plain":
            continue
        for d in ("up", "down"):
            runs = [load(os.path.join(resdir, "iperf.%s.%s.%d.json" % (path, d, i)))
                    for i in range(1, reps + 1)]
            per_rep["iperf_%s_%s" % (d, path)] = [r for r in runs if r]
    scale = load(os.path.join(resdir, "scale.json")) or {}
    kill = load(os.path.join(resdir, "kill.json")) or {}
    doc = {"meta": meta, "medians": m, "runs": per_rep, "scale": scale, "kill": kill}
    with open(out_json, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)

    L = []
    L.append("Relay fleet: 3 relays (127.0.0.2 a, .3 b, .4 c), one etcd, one sidecar with its "
             "tunnel on relay a; medians of %d repetitions" % reps)
    L.append("")
    L.append("| path | 64 B round trip p50 | p99 | iperf3 1 conn up | down | relay CPU s/GB up | down |")
    L.append("|---|---|---|---|---|---|---|")
    L.append("| plain TCP to the driver (reference) | %s | %s | - | - | - | - |" % (
        fmt(m["rtt_p50_us_plain"], 0, " us"), fmt(m["rtt_p99_us_plain"], 0, " us")))
    for path, label in (("direct", "direct: executor -> relay a (tunnel) -> sidecar"),
                        ("hop", "hop: executor -> relay b -> peer link -> relay a -> sidecar")):
        L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            label, fmt(m["rtt_p50_us_" + path], 0, " us"), fmt(m["rtt_p99_us_" + path], 0, " us"),
            fmt(m["gbit_s_up_" + path], 2, " Gbit/s"), fmt(m["gbit_s_down_" + path], 2, " Gbit/s"),
            fmt(m["cpu_s_per_gb_relays_up_" + path], 2), fmt(m["cpu_s_per_gb_relays_down_" + path], 2)))
    L.append("")
    L.append("CPU s per GB by process (up / down): direct: relay a %s / %s, sidecar %s / %s; "
             "hop: relay b %s / %s, relay a %s / %s, sidecar %s / %s" % tuple(
                 fmt(m["cpu_s_per_gb_%s_%s_%s" % (w, d, p)], 2)
                 for p, ws in (("direct", ("a", "sidecar")), ("hop", ("b", "a", "sidecar")))
                 for w in ws for d in ("up", "down")))
    if m["rtt_p50_us_hop"] is not None and m["rtt_p50_us_direct"] is not None:
        L.append("The hop adds %s us at p50 and %s us at p99 to a 64-byte round trip." % (
            fmt(m["rtt_p50_us_hop"] - m["rtt_p50_us_direct"], 0),
            fmt(m["rtt_p99_us_hop"] - m["rtt_p99_us_direct"], 0)))
    L.append("Each repetition, round trip p50/p99 us: " + "; ".join(
        "%s %s" % (p, " ".join("%s/%s" % (fmt(a), fmt(b)) for a, b in per_rep["rtt_us_" + p]))
        for p in ("plain", "direct", "hop")) + ".")
    L.append("Each repetition, iperf3 Gbit/s: " + "; ".join(
        "%s %s %s" % (p, d, " ".join(fmt(r["gbit_s"], 2) for r in per_rep["iperf_%s_%s" % (d, p)]))
        for d in ("up", "down") for p in ("direct", "hop")) + ".")
    L.append("")
    if scale:
        L.append("Scale: %d executor connections asked (%d per relay, at once on the three), "
                 "held %s s" % (scale["asked"], scale["per_relay"], scale["hold_s"]))
        L.append("")
        L.append("| relay | established | alive after the hold | failed | open time | carried over the peer link | RSS before -> peak | KiB per connection |")
        L.append("|---|---|---|---|---|---|---|---|")
        for row in scale["rows"]:
            L.append("| %s | %s | %s | %s | %s | %s | %s -> %s KiB | %s |" % (
                row["name"], fmt(row.get("established")), fmt(row.get("alive")),
                fmt(row.get("failed")), fmt(row.get("open_s"), 2, " s"), row.get("carried", "-"),
                fmt(row.get("rss0_kib")), fmt(row.get("rss1_kib")),
                fmt(row.get("kib_per_conn"), 1)))
        L.append("")
        L.append("KiB per connection: relay b and c per executor connection they accepted (executor "
                 "socket + peer socket); relay a and the sidecar per stream they carry (all %d); "
                 "fleet: the three relays' growth over all connections: %s KiB." % (
                     scale["asked"], fmt(scale.get("fleet_kib_per_conn"), 1)))
        L.append("Total alive after the hold: %s of %s." % (
            fmt(scale.get("alive_total")), fmt(scale.get("asked"))))
        L.append("")
    if kill:
        L.append("kill -9 of relay c (no tunnel) %s s into a %s s rpc run (%s connections per "
                 "relay, 64 B round trips):" % (kill["kill_at_s"], kill["seconds"], kill["conns"]))
        L.append("")
        L.append("| executors through | connections failed | round trips | p99 |")
        L.append("|---|---|---|---|")
        for row in kill["rows"]:
            L.append("| %s | %s of %s | %s | %s |" % (
                row["name"], fmt(row.get("failed")), kill["conns"], fmt(row.get("rtts")),
                fmt(row.get("p99_us"), 0, " us")))
        L.append("")
        L.append("After the kill: a new connection through relay b served in %s; lease and ports "
                 "unchanged: %s." % (fmt(kill.get("new_conn_s"), 2, " s"),
                                      kill.get("lease_unchanged")))
        L.append("")
    L.append("Machine: %s cores; load average before %s, after %s; CPU idle before the run %s%%; "
             "run took %s s; git %s." % (meta.get("ncpu"), meta.get("load_before"),
                                           meta.get("load_after"), meta.get("idle_pct"),
                                           meta.get("seconds"), meta.get("git")))
    text = "\n".join(L) + "\n"
    with open(out_md, "w") as fh:
        fh.write(text)
    sys.stdout.write(text)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    if cmd == "ports" and len(args) == 1:
        print(ports(int(args[0])))
    elif cmd == "ticks":
        print(" ".join(str(ticks(a)) for a in args))
    elif cmd == "rss":
        print(" ".join(str(rss(a)) for a in args))
    elif cmd == "rsswatch" and len(args) >= 3:
        rsswatch(args[0], float(args[1]), args[2:])
    elif cmd == "iperf" and len(args) == 1:
        iperf(args[0])
    elif cmd == "report" and len(args) == 4:
        report(*args)
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
