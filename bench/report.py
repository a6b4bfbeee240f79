#!/usr/bin/env python3
"""Aggregate the JSON files of one bench/compare.sh run: medians per tool,
ratios against the targets stated in docs/benchmarks.md ("Targets"), a
Markdown table, and a gnuplot script for the chart. Standard library only."""

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess

TOOL_NAMES = {
    "direct": "direct TCP",
    "sparkrelay": "sparkrelay",
    "ssh": "ssh -R (aes128-gcm)",
    "stunnel": "stunnel pair (TLS 1.3)",
    "haproxy": "HAProxy (tcp)",
    "socat": "socat",
}

# (key, label, run name, path into "results", decimals)
FIGURES = [
    ("tp1_gbit", "1-conn throughput down, Gbit/s", "tp1_down", ["gbit_s"], 2),
    ("tp1_up_gbit", "1-conn throughput up, Gbit/s", "tp1_up", ["gbit_s"], 2),
    ("tp4_both_gbit", "4 conns both ways, Gbit/s", "tp4_both", ["gbit_s"], 2),
    ("cpu_s_per_gb", "tunnel CPU s per GB (1 conn down)", "tp1_down", ["cpu_s_per_gb"], 3),
    ("rtt64_p50", "64 B round trip p50, us", "rpc64", ["rtt_us", "p50"], 0),
    ("rtt64_p99", "64 B round trip p99, us", "rpc64", ["rtt_us", "p99"], 0),
    ("rtt16k_p50", "16 KiB round trip p50 (8 conns), us", "rpc16k", ["rtt_us", "p50"], 0),
    ("rtt16k_p99", "16 KiB round trip p99 (8 conns), us", "rpc16k", ["rtt_us", "p99"], 0),
    ("conn_rate", "new connections/s (conc. 8)", "connect", ["rate"], 0),
    ("conn_reply_p99", "connect + first reply p99, us", "connect", ["first_reply_us", "p99"], 0),
    ("idle_kib", "memory per idle connection, KiB", "idle", ["kib_per_conn"], 2),
    ("hb_p50", "heartbeat p50 during bulk, us", "fairness", ["hb_rtt_us", "p50"], 0),
    ("hb_p99", "heartbeat p99 during bulk, us", "fairness", ["hb_rtt_us", "p99"], 0),
    ("fair_bulk_gbit", "bulk beside the heartbeat, Gbit/s", "fairness", ["bulk_gbit_s"], 2),
    ("spark_reg_s", "spark: time until all registered, s", "spark", ["all_registered_s"], 2),
    ("spark_hb_p99", "spark: heartbeat p99, us", "spark", ["hb_rtt_us", "p99"], 0),
    ("spark_bcast_gbit", "spark: broadcast aggregate, Gbit/s", "spark", ["broadcast_gbit_s"], 2),
    ("spark_failures", "spark: failed connections", "spark", None, 0),
    ("result_us", "64 MiB task result on an RPC stream, us", "spark_result",
     ["result_us", "p50"], 0),
    ("result_hb_p99", "heartbeat p99 of other executors meanwhile, us", "spark_result",
     ["hb_during_result_us", "p99"], 0),
]


def dig(obj, path):
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return None
        obj = obj[p]
    return obj


def load_runs(res):
    runs = {}  # (tool, name) -> [results]
    for f in sorted(glob.glob(os.path.join(res, "*.json"))):
        base = os.path.basename(f)[:-5]
        parts = base.split(".")
        if len(parts) != 3:
            continue
        tool, name, _rep = parts
        try:
            with open(f) as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            continue
        res_doc = dict(doc.get("results", {}))
        try:
            with open(f[:-5] + ".rc") as fh:
                res_doc["_rc"] = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            res_doc["_rc"] = 0
        runs.setdefault((tool, name), []).append(res_doc)
    return runs


def load_crashes(res, tool):
    try:
        with open(os.path.join(res, tool + ".crashes")) as fh:
            return [l.strip() for l in fh if l.strip()]
    except OSError:
        return []


def figure_values(runs, tool, name, path):
    vals = []
    for r in runs.get((tool, name), []):
        if path is None:  # spark failures
            v = sum(r.get(k, 0) or 0 for k in ("fail_boot", "fail_rpc", "fail_bm"))
        elif r.get("_rc", 0) != 0:
            continue  # a failed run has no figure, only its failure count
        else:
            v = dig(r, path)
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return vals


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["mem_kib"] = int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    for tool, cmd in (("ssh", ["ssh", "-V"]), ("stunnel", ["stunnel4", "-version"]),
                      ("haproxy", ["haproxy", "-v"]), ("socat", ["socat", "-V"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            text = (out.stdout + out.stderr).strip().splitlines()
            line = next((l for l in text if any(c.isdigit() for c in l)), "")
            info[tool + "_version"] = line.strip()[:100]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(med):
    """The targets of docs/benchmarks.md ("Targets") as (figure, measured, target, ok).
    A change here changes that table too."""
    sr = med.get("sparkrelay", {})
    ssh = med.get("ssh", {})
    st = med.get("stunnel", {})
    hp = med.get("haproxy", {})
    d = med.get("direct", {})
    out = []

    def add(name, value, target, ok, fmt="{:.2f}x"):
        shown = "n/a" if value is None else fmt.format(value)
        out.append({"figure": name, "measured": shown, "value": value,
                    "target": target, "ok": None if value is None else bool(ok(value))})

    add("1-conn throughput vs ssh -R", ratio(sr.get("tp1_gbit"), ssh.get("tp1_gbit")),
        ">= 1.1x", lambda v: v >= 1.1)
    add("1-conn throughput vs stunnel pair", ratio(sr.get("tp1_gbit"), st.get("tp1_gbit")),
        ">= 1.7x", lambda v: v >= 1.7)
    add("tunnel CPU per GB vs ssh -R", ratio(sr.get("cpu_s_per_gb"), ssh.get("cpu_s_per_gb")),
        "<= 0.9x", lambda v: v <= 0.9)
    added = {}
    for t in ("sparkrelay", "ssh"):
        if med.get(t, {}).get("rtt64_p50") is not None and d.get("rtt64_p50") is not None:
            added[t] = med[t]["rtt64_p50"] - d["rtt64_p50"]
    add("64 B p50 added over direct vs ssh -R",
        ratio(added.get("sparkrelay"), added.get("ssh")) if added.get("ssh", 0) > 0 else None,
        "<= 0.75x", lambda v: v <= 0.75)
    add("64 B p99 vs stunnel pair", ratio(sr.get("rtt64_p99"), st.get("rtt64_p99")),
        "<= 1.0x", lambda v: v <= 1.0)
    add("new connections/s vs HAProxy", ratio(sr.get("conn_rate"), hp.get("conn_rate")),
        ">= 0.75x", lambda v: v >= 0.75)
    add("connect + first reply p99 vs HAProxy",
        ratio(sr.get("conn_reply_p99"), hp.get("conn_reply_p99")), "<= 2x", lambda v: v <= 2)
    add("idle memory per connection vs HAProxy", ratio(sr.get("idle_kib"), hp.get("idle_kib")),
        "<= 2.5x", lambda v: v <= 2.5)
    add("heartbeat p99 during bulk (same tunnel)",
        None if sr.get("hb_p99") is None else sr["hb_p99"] / 1000.0,
        "<= 2 ms", lambda v: v <= 2.0, "{:.2f} ms")
    big = sr.get("idle10k_established")
    add("concurrent executor connections on one relay", big, ">= 10,000 alive",
        lambda v: v >= 10000 and sr.get("idle10k_alive", 0) >= 10000, "{:.0f}")
    return out


def fmt(v, dec):
    if v is None:
        return "-"
    if dec == 0:
        return "{:,.0f}".format(v)
    return "{:.{}f}".format(v, dec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--mode", default="default")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default=" ".join(TOOL_NAMES))
    ap.add_argument("--load-before", default="")
    ap.add_argument("--load-after", default="")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--git", default="")
    a = ap.parse_args()

    tools = a.tools.split()
    runs = load_runs(a.res)
    med, spread = {}, {}
    for tool in tools:
        med[tool], spread[tool] = {}, {}
        for key, _label, name, path, _dec in FIGURES:
            vals = figure_values(runs, tool, name, path)
            if vals:
                med[tool][key] = statistics.median(vals)
                spread[tool][key] = [min(vals), max(vals), len(vals)]
    if "sparkrelay" in tools:
        for r in runs.get(("sparkrelay", "idle10k"), []):
            med["sparkrelay"]["idle10k_established"] = r.get("established")
            med["sparkrelay"]["idle10k_alive"] = r.get("alive_after_hold")
            med["sparkrelay"]["idle10k_kib"] = r.get("kib_per_conn")
            med["sparkrelay"]["idle10k_open_s"] = r.get("open_s")
    crashes = {t: load_crashes(a.res, t) for t in tools}
    failed_runs = {t: sorted("%s.%s" % (k[1], i + 1) for k, v in runs.items() if k[0] == t
                             for i, r in enumerate(v) if r.get("_rc", 0) != 0) for t in tools}
    tg = targets(med)

    doc = {
        "date": a.date, "git": a.git, "mode": a.mode, "repetitions": a.reps, "seconds": a.seconds,
        "load_before": a.load_before, "load_after": a.load_after, "machine": machine(),
        "medians": med, "min_max_n": spread, "targets": tg,
        "crashes": crashes, "failed_runs": failed_runs,
        "raw": {"%s.%s" % k: v for k, v in runs.items()},
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, a.date + ".json"), "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)

    m = doc["machine"]
    lines = [
        "# sparkrelay benchmark, %s" % a.date, "",
        "Mode `%s`, %d repetition(s), medians; %d s wall time. Machine: %s cores, %s, kernel %s. "
        "Load average before: `%s`, after: `%s`. Source: %s." % (
            a.mode, a.reps, a.seconds, m.get("nproc"), m.get("cpu", "?"), m.get("kernel"),
            a.load_before, a.load_after, a.git), "",
        "| figure | " + " | ".join(TOOL_NAMES.get(t, t) for t in tools) + " |",
        "|---|" + "---|" * len(tools),
    ]
    for key, label, _name, _path, dec in FIGURES:
        lines.append("| %s | %s |" % (label, " | ".join(fmt(med[t].get(key), dec) for t in tools)))
    lines.append("| tunnel process died (runs) | %s |" % " | ".join(
        str(len(crashes[t])) for t in tools))
    lines.append("| runs with an error exit | %s |" % " | ".join(
        str(len(failed_runs[t])) for t in tools))
    if "sparkrelay" in med and med["sparkrelay"].get("idle10k_established") is not None:
        s = med["sparkrelay"]
        lines += ["", "sparkrelay, one relay: %s of 10,000 idle executor connections established "
                  "in %.1f s, %s alive after the hold, %.2f KiB per connection (relay + sidecar)." % (
                      fmt(s.get("idle10k_established"), 0), s.get("idle10k_open_s") or 0,
                      fmt(s.get("idle10k_alive"), 0), s.get("idle10k_kib") or 0)]
    lines += ["", "## Targets (docs/benchmarks.md, ratios within this run)", "",
              "| target | measured | wanted | met |", "|---|---|---|---|"]
    for t in tg:
        ok = "n/a" if t["ok"] is None else ("yes" if t["ok"] else "**no**")
        lines.append("| %s | %s | %s | %s |" % (t["figure"], t["measured"], t["target"], ok))
    lines += ["", "Memory is VmRSS of the tool's processes (and children) before and after "
              "opening the idle connections, divided by their number; socat forks a process per "
              "connection and has no such figure. CPU is utime+stime of the same processes."]
    with open(os.path.join(a.out, a.date + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")

    # gnuplot: three panels, one bar per tool.
    dat = os.path.join(a.out, a.date + ".dat")
    with open(dat, "w") as fh:
        fh.write("tool tp1 tp4 rtt50 rtt99 kib\n")
        for t in tools:
            v = med[t]
            fh.write('"%s" %s %s %s %s %s\n' % (
                t, v.get("tp1_gbit", 0), v.get("tp4_both_gbit", 0), v.get("rtt64_p50", 0),
                v.get("rtt64_p99", 0), v.get("idle_kib", 0)))
    gp = """set terminal pngcairo size 1500,480 font ",10"
set output "{date}.png"
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xtics rotate by -30
set grid ytics
set key outside bottom center horizontal
set yrange [0:*]
set multiplot layout 1,3 title "sparkrelay vs alternatives, {date} ({mode}, medians)"
set title "throughput, Gbit/s"
plot "{date}.dat" using 2:xtic(1) title "1 conn down", "" using 3 title "4 conns both ways"
set title "64 B round trip, us"
set yrange [1:*]
set logscale y
plot "{date}.dat" using 4:xtic(1) title "p50", "" using 5 title "p99"
set title "memory per idle connection, KiB (log)"
set yrange [0.1:*]
plot "{date}.dat" using 6:xtic(1) title "RSS per connection"
unset logscale y
unset multiplot
""".format(date=a.date, mode=a.mode)
    with open(os.path.join(a.out, a.date + ".gp"), "w") as fh:
        fh.write(gp)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
