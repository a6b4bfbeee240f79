#!/usr/bin/env python3
"""Small helpers of bench/compare.sh. Standard library only.

  srbench.py cpu PID...            CPU seconds (utime+stime, and those of waited-for
                                   children) of the PIDs and all their live descendants
  srbench.py ports SIZE...         for each SIZE a block of that many consecutive TCP
                                   ports, free on 127.0.0.1 and 127.0.0.2 (bind-and-check),
                                   below the ephemeral range, blocks not overlapping;
                                   prints the first port of each block
  srbench.py busy [SECONDS]        load average and CPU idle share over SECONDS (1);
                                   prints "load1 idle_pct" on stdout, a warning on
                                   stderr when the machine looks busy
  srbench.py iperf JSON CPU0 CPU1 OUT     one iperf3 -J run as a result file
  srbench.py redis CSV CPU0 CPU1 N OUT    one redis-benchmark --csv run as a result file
                                   (CPU0/CPU1: `cpu` readings around the run, or "-")

Result files have the shape of sparkrelay-bench --json ({"results": {...}}), so
report.py reads every run the same way. A gigabyte is 1e9 bytes.
"""

import json
import os
import random
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_table():
    """pid -> (ppid, cpu ticks) for every process that can be read now."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as fh:
                data = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        rest = data[data.rfind(")") + 2:].split()
        try:
            ppid = int(rest[1])
            ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        except (IndexError, ValueError):
            continue
        table[int(name)] = (ppid, ticks)
    return table


def cpu_seconds(pids):
    table = proc_table()
    children = {}
    for pid, (ppid, _t) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo, ticks = set(), list(pids), 0
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        ticks += table[pid][1]
        todo.extend(children.get(pid, []))
    return ticks / CLK_TCK


def port_free(port):
    for host in ("127.0.0.1", "127.0.0.2"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_blocks(sizes):
    """Ports below the ephemeral range, so that no client socket of the run can
    take one between this check and the tool's bind. Another program may still
    bind one first: the caller then fails to listen and says so."""
    low = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            high = int(fh.read().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        high = 32767
    rng = random.Random()
    taken = set()
    out = []
    for size in sizes:
        for _attempt in range(2000):
            start = rng.randint(low, high - size + 1)
            block = range(start, start + size)
            if any(p in taken for p in block):
                continue
            if all(port_free(p) for p in block):
                taken.update(block)
                out.append(start)
                break
        else:
            raise SystemExit("srbench ports: no %d free consecutive ports in %d-%d"
                             % (size, low, high))
    return out


def cpu_times():
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return idle, sum(vals[:8])


def busy(seconds):
    with open("/proc/loadavg") as fh:
        load = fh.read().split()
    i0, t0 = cpu_times()
    time.sleep(seconds)
    i1, t1 = cpu_times()
    idle = 100.0 * (i1 - i0) / max(1, t1 - t0)
    ncpu = os.cpu_count() or 1
    load1 = float(load[0])
    print("%s %.1f" % (load[0], idle))
    msg = "load average %s %s %s on %d cores; CPU idle %.0f%% over %.1f s" % (
        load[0], load[1], load[2], ncpu, idle, seconds)
    if idle < 85 or load1 > 0.5 * ncpu:
        sys.stderr.write("compare: WARNING: the machine is busy (%s): figures will be noisy; "
                         "ratios within the run are still comparable, absolute values less so\n"
                         % msg)
    else:
        sys.stderr.write("compare: machine quiet enough: %s\n" % msg)


def span(cpu0, cpu1):
    """CPU seconds between two `cpu` readings; "-" (no process measured) gives None."""
    if cpu0 == "-" or cpu1 == "-":
        return None
    return float(cpu1) - float(cpu0)


def write(out, results):
    with open(out, "w") as fh:
        json.dump({"results": results}, fh, indent=1, sort_keys=True)


def iperf(path, cpu0, cpu1, out):
    with open(path) as fh:
        doc = json.load(fh)
    if doc.get("error"):
        raise SystemExit("iperf3: %s" % doc["error"])
    end = doc["end"]
    recv = end["sum_received"]
    sent = end["sum_sent"]
    nbytes = float(recv["bytes"])
    cpu = span(cpu0, cpu1)
    write(out, {
        "gbit_s": recv["bits_per_second"] / 1e9,
        "mib_s": recv["bits_per_second"] / 8 / 1048576,
        "bytes": nbytes,
        "seconds": recv["seconds"],
        "retransmits": sent.get("retransmits"),
        "streams": len(end.get("streams", [])),
        "cpu_s": cpu,
        "cpu_s_per_gb": cpu / (nbytes / 1e9) if cpu is not None and nbytes > 0 else None,
    })


def redis(path, cpu0, cpu1, n, out):
    rows = {}
    with open(path) as fh:
        lines = [l.strip() for l in fh if l.strip().startswith('"')]
    header = [h.strip('"') for h in lines[0].split(",")] if lines else []
    for line in lines[1:]:
        vals = [v.strip('"') for v in line.split(",")]
        row = dict(zip(header, vals))
        try:
            rows[row["test"].lower()] = {k: float(v) for k, v in row.items() if k != "test"}
        except (KeyError, ValueError):
            continue
    if not rows:
        raise SystemExit("redis-benchmark: no result rows in %s" % path)
    cpu = span(cpu0, cpu1)
    requests = int(n) * len(rows)
    res = {"cpu_s": cpu, "requests": requests,
           "cpu_us_per_req": cpu * 1e6 / requests if cpu is not None and requests else None}
    for test, row in rows.items():
        res[test + "_rps"] = row.get("rps")
        res[test + "_p50_ms"] = row.get("p50_latency_ms")
        res[test + "_p99_ms"] = row.get("p99_latency_ms")
    write(out, res)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        sys.stdout.write(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    if cmd == "cpu":
        print("%.2f" % cpu_seconds([int(a) for a in args]))
    elif cmd == "ports":
        print(" ".join(str(p) for p in free_blocks([int(a) for a in args])))
    elif cmd == "busy":
        busy(float(args[0]) if args else 1.0)
    elif cmd == "iperf" and len(args) == 4:
        iperf(*args)
    elif cmd == "redis" and len(args) == 5:
        redis(*args)
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
