#!/usr/bin/env python3
"""Aggregate the result files of one bench/compare.sh run: medians per tool, a
table of every figure, then one table per target figure with each tool's value,
its ratio to direct TCP and sparkrelay's ratio to it, against the targets of
issue 13 (TARGETS below: the one place they are written in code; the text of
docs/benchmarks.md, "Targets", states the same). A quick run prints the
numbers only: it is too short to judge a target. Standard library only."""

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess

TOOL_NAMES = {
    "direct": "direct TCP",
    "sparkrelay": "sparkrelay",
    "ssh": "ssh -R (aes128-gcm)",
    "stunnel": "stunnel pair (TLS 1.3)",
    "haproxy": "HAProxy (tcp)",
    "socat": "socat",
    "llplain": "plain TCP, long link",
    "llsparkrelay": "sparkrelay, long link",
}

# (key, label, run name, path into "results", decimals). "down" is the
# driver's side sending to the executor's (iperf3 -R), "up" the reverse.
FIGURES = [
    ("iperf1_down_gbit", "iperf3 1 conn down, Gbit/s", "iperf1_down", ["gbit_s"], 2),
    ("iperf1_up_gbit", "iperf3 1 conn up, Gbit/s", "iperf1_up", ["gbit_s"], 2),
    ("iperf8_down_gbit", "iperf3 8 conns down, Gbit/s", "iperf8_down", ["gbit_s"], 2),
    ("iperf8_up_gbit", "iperf3 8 conns up, Gbit/s", "iperf8_up", ["gbit_s"], 2),
    ("iperf1_down_cpu", "middle CPU s per GB, 1 conn down", "iperf1_down", ["cpu_s_per_gb"], 3),
    ("iperf1_up_cpu", "middle CPU s per GB, 1 conn up", "iperf1_up", ["cpu_s_per_gb"], 3),
    ("iperf8_down_cpu", "middle CPU s per GB, 8 conns down", "iperf8_down", ["cpu_s_per_gb"], 3),
    ("iperf8_up_cpu", "middle CPU s per GB, 8 conns up", "iperf8_up", ["cpu_s_per_gb"], 3),
    ("redis_get_rps", "redis-benchmark -c 50 GET, requests/s", "redis", ["get_rps"], 0),
    ("redis_set_rps", "redis-benchmark -c 50 SET, requests/s", "redis", ["set_rps"], 0),
    ("redis_cpu_us", "middle CPU per redis request, us", "redis", ["cpu_us_per_req"], 1),
    ("rtt64_p50", "64 B round trip p50, us", "rpc64", ["rtt_us", "p50"], 0),
    ("rtt64_added_p50", "64 B round trip p50 added over direct, us", None, None, 0),
    ("rtt64_p99", "64 B round trip p99, us", "rpc64", ["rtt_us", "p99"], 0),
    ("rpc64_cpu_us", "middle CPU per 64 B round trip, us", "rpc64", ["cpu_us_per_rtt"], 1),
    # The same on the instance of the idle run, after its connections came
    # and went (docs/benchmarks.md: ssh -R is slower then).
    ("rtt64i_p50", "64 B round trip p50 after the idle run's connections, us", "rpc64i",
     ["rtt_us", "p50"], 0),
    ("rpc64i_cpu_us", "middle CPU per 64 B round trip after the idle run's connections, us",
     "rpc64i", ["cpu_us_per_rtt"], 1),
    ("rtt16k_p50", "16 KiB round trip p50 (8 conns), us", "rpc16k", ["rtt_us", "p50"], 0),
    ("rtt16k_p99", "16 KiB round trip p99 (8 conns), us", "rpc16k", ["rtt_us", "p99"], 0),
    ("conn1_rate", "new connections/s, one at a time", "connect1", ["rate"], 0),
    ("conn1_reply_p99", "connect + first echo p99, one at a time, us", "connect1",
     ["first_reply_us", "p99"], 0),
    ("conn1_cpu_us", "middle CPU per connection, us", "connect1", ["cpu_us_per_conn"], 1),
    ("conn8_rate", "new connections/s, 8 at a time", "connect8", ["rate"], 0),
    ("conn8_reply_p99", "connect + first echo p99, 8 at a time, us", "connect8",
     ["first_reply_us", "p99"], 0),
    ("idle_kib", "memory per idle connection, KiB", "idle", ["kib_per_conn"], 2),
    ("hb_p50_ms", "heartbeat p50 beside bulk (same tunnel), ms", "fairness",
     ["hb_rtt_us", "p50"], 2),
    ("hb_p99_ms", "heartbeat p99 beside bulk (same tunnel), ms", "fairness",
     ["hb_rtt_us", "p99"], 2),
    ("fair_bulk_gbit", "bulk beside the heartbeat, Gbit/s", "fairness", ["bulk_gbit_s"], 2),
    # A heartbeat every 0.6 s, after a quiet spell as Spark's (10 s apart):
    # what a real executor's heartbeat waits behind.
    ("hbs_p50_ms", "heartbeat p50 beside bulk, one every 0.6 s, ms", "fairness_sparse",
     ["hb_rtt_us", "p50"], 2),
    ("hbs_max_ms", "heartbeat max beside bulk, one every 0.6 s, ms", "fairness_sparse",
     ["hb_rtt_us", "max"], 2),
    ("spark_reg_s", "spark: time until all registered, s", "spark", ["all_registered_s"], 2),
    ("spark_hb_p99", "spark: heartbeat p99, us", "spark", ["hb_rtt_us", "p99"], 0),
    ("spark_bcast_gbit", "spark: broadcast aggregate, Gbit/s", "spark", ["broadcast_gbit_s"], 2),
    ("spark_failures", "spark: failed connections", "spark", "failures", 0),
    ("result_us", "64 MiB task result on an RPC stream, us", "spark_result",
     ["result_us", "p50"], 0),
    ("result_hb_p99", "heartbeat p99 of other executors meanwhile, us", "spark_result",
     ["hb_during_result_us", "p99"], 0),
    ("idle10k_established", "idle10k: connections established", "idle10k", ["established"], 0),
    ("idle10k_alive", "idle10k: alive after the hold", "idle10k", ["alive_after_hold"], 0),
    ("idle10k_kib", "idle10k: memory per connection, KiB", "idle10k", ["kib_per_conn"], 2),
    # The long link (tools llplain and llsparkrelay).
    ("ll_down_mib", "long link: 1 stream down, MiB/s", "iperf_down", ["mib_s"], 2),
    ("ll_up_mib", "long link: 1 stream up, MiB/s", "iperf_up", ["mib_s"], 2),
    ("ll_rtt_idle_p50", "long link: 64 B round trip, idle, p50, ms", "rtt_idle",
     ["rtt_us", "p50"], 1),
    ("ll_rtt_idle_p99", "long link: 64 B round trip, idle, p99, ms", "rtt_idle",
     ["rtt_us", "p99"], 1),
    ("ll_rtt_bulk_down_p50", "long link: 64 B round trip beside bulk down, p50, ms",
     "rtt_bulk_down", ["rtt_us", "p50"], 1),
    ("ll_rtt_bulk_down_p99", "long link: 64 B round trip beside bulk down, p99, ms",
     "rtt_bulk_down", ["rtt_us", "p99"], 1),
    ("ll_rtt_bulk_up_p50", "long link: 64 B round trip beside bulk up, p50, ms",
     "rtt_bulk_up", ["rtt_us", "p50"], 1),
    ("ll_rtt_bulk_up_p99", "long link: 64 B round trip beside bulk up, p99, ms",
     "rtt_bulk_up", ["rtt_us", "p99"], 1),
    # The same with tunnel.connections 2: the round trips (driver port) and the
    # bulk stream (block manager port) on tunnels of their own.
    ("ll_2t_down_mib", "long link: 1 stream down, 2 tunnels, MiB/s", "iperf_2t_down",
     ["mib_s"], 2),
    ("ll_2t_up_mib", "long link: 1 stream up, 2 tunnels, MiB/s", "iperf_2t_up", ["mib_s"], 2),
    ("ll_2t_rtt_bulk_down_p50", "long link: 64 B round trip beside bulk down, 2 tunnels, p50, ms",
     "rtt_2t_bulk_down", ["rtt_us", "p50"], 1),
    ("ll_2t_rtt_bulk_down_p99", "long link: 64 B round trip beside bulk down, 2 tunnels, p99, ms",
     "rtt_2t_bulk_down", ["rtt_us", "p99"], 1),
    ("ll_2t_rtt_bulk_up_p50", "long link: 64 B round trip beside bulk up, 2 tunnels, p50, ms",
     "rtt_2t_bulk_up", ["rtt_us", "p50"], 1),
    ("ll_2t_rtt_bulk_up_p99", "long link: 64 B round trip beside bulk up, 2 tunnels, p99, ms",
     "rtt_2t_bulk_up", ["rtt_us", "p99"], 1),
]
FIG = {f[0]: f for f in FIGURES}
# Figures kept in microseconds by the bench and shown in milliseconds.
MS_FIGURES = {"hb_p50_ms", "hb_p99_ms", "hbs_p50_ms", "hbs_max_ms",
              "ll_rtt_idle_p50", "ll_rtt_idle_p99",
              "ll_rtt_bulk_down_p50", "ll_rtt_bulk_down_p99", "ll_rtt_bulk_up_p50",
              "ll_rtt_bulk_up_p99", "ll_2t_rtt_bulk_down_p50", "ll_2t_rtt_bulk_down_p99",
              "ll_2t_rtt_bulk_up_p50", "ll_2t_rtt_bulk_up_p99"}
LL_FIGURES = [f[0] for f in FIGURES if f[0].startswith("ll_")]
LL_TOOLS = ["llplain", "llsparkrelay"]

# The targets of issue 13, the one place in code. Each:
#   (figure, anchor, op, threshold)
# anchor "TOOL" compares sparkrelay's figure with that tool's in the same run
# (a ratio); anchor "TOOL:FIGURE" compares with another figure of that tool;
# anchor None compares sparkrelay's figure itself. Long-link figures compare
# the llsparkrelay column with llplain.
TARGETS = [
    # 1. Bulk: 1 and 8 connections, both directions.
    ("iperf1_down_gbit", "ssh", ">=", 1.1), ("iperf1_down_gbit", "stunnel", ">=", 1.7),
    ("iperf1_up_gbit", "ssh", ">=", 1.1), ("iperf1_up_gbit", "stunnel", ">=", 1.7),
    ("iperf8_down_gbit", "ssh", ">=", 1.1), ("iperf8_down_gbit", "stunnel", ">=", 1.7),
    ("iperf8_up_gbit", "ssh", ">=", 1.1), ("iperf8_up_gbit", "stunnel", ">=", 1.7),
    ("iperf1_down_cpu", "ssh", "<=", 0.9), ("iperf1_up_cpu", "ssh", "<=", 0.9),
    ("iperf8_down_cpu", "ssh", "<=", 0.9), ("iperf8_up_cpu", "ssh", "<=", 0.9),
    # 2. Small messages.
    ("rtt64_added_p50", "ssh", "<=", 0.75),
    ("rpc64_cpu_us", "ssh", "<=", 0.75),
    ("conn1_rate", "haproxy", ">=", 0.75),
    ("conn1_reply_p99", "haproxy", "<=", 1.25),
    ("hb_p99_ms", None, "<=", 2.0),
    # 3. Long link: one stream vs plain TCP; a round trip beside it vs the plain link's.
    ("ll_down_mib", "llplain", ">=", 0.8), ("ll_up_mib", "llplain", ">=", 0.8),
    ("ll_rtt_bulk_down_p50", "llplain:ll_rtt_idle_p50", "<=", 1.5),
    ("ll_rtt_bulk_up_p50", "llplain:ll_rtt_idle_p50", "<=", 1.5),
    # The same with tunnel.connections 2 (not the default; docs/benchmarks.md).
    ("ll_2t_down_mib", "llplain:ll_down_mib", ">=", 0.8),
    ("ll_2t_up_mib", "llplain:ll_up_mib", ">=", 0.8),
    ("ll_2t_rtt_bulk_down_p50", "llplain:ll_rtt_idle_p50", "<=", 1.5),
    ("ll_2t_rtt_bulk_up_p50", "llplain:ll_rtt_idle_p50", "<=", 1.5),
    # 5. Memory.
    ("idle_kib", "haproxy", "<=", 1.0),
    ("idle10k_alive", None, ">=", 10000),
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
        parts = os.path.basename(f)[:-5].split(".")
        if len(parts) != 3:
            continue
        tool, name, rep = parts
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
        res_doc["_rep"] = int(rep) if rep.isdigit() else 0
        runs.setdefault((tool, name), []).append(res_doc)
    # A run that failed before writing results still counts as failed.
    for f in sorted(glob.glob(os.path.join(res, "*.rc"))):
        parts = os.path.basename(f)[:-3].split(".")
        if len(parts) != 3 or os.path.exists(f[:-3] + ".json"):
            continue
        try:
            with open(f) as fh:
                rc = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            continue
        runs.setdefault((parts[0], parts[1]), []).append(
            {"_rc": rc or 1, "_rep": int(parts[2]) if parts[2].isdigit() else 0})
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
        if path == "failures":
            v = sum(r.get(k, 0) or 0 for k in ("fail_boot", "fail_rpc", "fail_bm"))
        elif r.get("_rc", 0) != 0:
            continue  # a failed run has no figure, only its failure count
        else:
            v = dig(r, path)
        if isinstance(v, (int, float)):
            vals.append(float(v))
    return vals


def round_values(runs, tool, key):
    """A figure per round (compare.sh runs round N of every tool before round
    N+1): {round: value}, failed runs left out."""
    if key == "rtt64_added_p50":
        mine, direct = round_values(runs, tool, "rtt64_p50"), round_values(runs, "direct", "rtt64_p50")
        return {r: v - direct[r] for r, v in mine.items() if r in direct}
    _key, _label, name, path, _dec = FIG[key]
    out = {}
    for r in runs.get((tool, name), []):
        if r.get("_rc", 0) != 0 or not r.get("_rep"):
            continue
        v = dig(r, path)
        if isinstance(v, (int, float)):
            out[r["_rep"]] = float(v) / (1000.0 if key in MS_FIGURES else 1.0)
    return out


def medians(runs, tools):
    med, spread = {}, {}
    for tool in tools:
        med[tool], spread[tool] = {}, {}
        for key, _label, name, path, _dec in FIGURES:
            if name is None:
                continue
            vals = figure_values(runs, tool, name, path)
            if key in MS_FIGURES:
                vals = [v / 1000.0 for v in vals]
            if vals:
                med[tool][key] = statistics.median(vals)
                spread[tool][key] = [min(vals), max(vals), len(vals)]
    d = med.get("direct", {}).get("rtt64_p50")
    for tool in tools:
        v = med[tool].get("rtt64_p50")
        if tool != "direct" and v is not None and d is not None:
            med[tool]["rtt64_added_p50"] = v - d
    return med, spread


def machine(tcp_cc):
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "tcp_cc": tcp_cc}
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
                      ("haproxy", ["haproxy", "-v"]), ("socat", ["socat", "-V"]),
                      ("iperf3", ["iperf3", "--version"]),
                      ("redis", ["redis-benchmark", "--version"])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            text = (out.stdout + out.stderr).strip().splitlines()
            line = next((l for l in text if any(c.isdigit() for c in l)), "")
            info[tool + "_version"] = line.strip()[:100]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def ratio(a, b):
    """a over b; None without both, or when b is not positive (an added
    time of zero or less over direct TCP has no meaningful ratio)."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def subject_tool(key):
    return "llsparkrelay" if key.startswith("ll_") else "sparkrelay"


def passes(value, op, thr):
    """At the precision shown (two decimals): a ratio printed as 1.10x meets
    a target of >= 1.10x."""
    value = round(value, 2)
    return value >= thr if op == ">=" else value <= thr


def evaluate(med, judge, runs=None):
    """Every target as a dict; "ok" is None when a figure is missing or the run
    is not one to judge (quick). The verdict is on the medians; "rounds" holds
    the same ratio (or figure) per round, sparkrelay's run against the other
    tool's of the same round, to show whether the verdict held in each."""
    out = []
    for key, anchor, op, thr in TARGETS:
        subj = med.get(subject_tool(key), {}).get(key)
        rounds = {}
        # The long link runs once: no rounds.
        per_round = runs is not None and not key.startswith("ll_")
        if anchor is None:
            value, against = subj, None
            if per_round:
                rounds = round_values(runs, subject_tool(key), key)
        else:
            tool, _, fig = anchor.partition(":")
            against = tool
            value = ratio(subj, med.get(tool, {}).get(fig or key))
            if per_round and not fig:
                mine, theirs = round_values(runs, "sparkrelay", key), round_values(runs, tool, key)
                rounds = {r: None for r in set(mine) | set(theirs)}
                rounds.update({r: ratio(v, theirs[r]) for r, v in mine.items() if r in theirs})
        ok = None
        if judge and value is not None:
            ok = passes(value, op, thr)
        out.append({"figure": key, "label": FIG[key][1], "anchor": anchor, "against": against,
                    "op": op, "threshold": thr, "value": value, "ok": ok,
                    # [round, value or None when a side has no figure then]
                    "rounds": [[r, rounds[r]] for r in sorted(rounds)],
                    "rounds_ok": sum(1 for v in rounds.values()
                                     if v is not None and passes(v, op, thr))})
    return out


def rounds_text(t):
    """'0.91x 1.14x - (1 of 2)': the value of each round ('-' where a side has no
    figure), and in how many of the rounds with one it met the target; '-' with
    fewer than two rounds."""
    if len(t["rounds"]) < 2:
        return "-"
    show = fmt_x if t["anchor"] else (lambda v: fmt(v, 2))
    have = [v for _r, v in t["rounds"] if v is not None]
    return "%s (%d of %d)" % (" ".join("-" if v is None else show(v) for _r, v in t["rounds"]),
                              t["rounds_ok"], len(have))


def fmt(v, dec):
    if v is None:
        return "-"
    if dec == 0:
        return "{:,.0f}".format(v)
    return "{:.{}f}".format(v, dec)


def fmt_x(v):
    return "-" if v is None else "{:.2f}x".format(v)


def target_text(t):
    if t["anchor"] is None:
        return "%s %s" % (t["op"], fmt(t["threshold"], 0 if t["threshold"] >= 100 else 2))
    return "%s %.2fx" % (t["op"], t["threshold"])


def short_label(key):
    label = FIG[key][1]
    return label[len("long link: "):] if label.startswith("long link: ") else label


def against_text(t):
    if t["anchor"] is None:
        return "absolute"
    tool, _, fig = t["anchor"].partition(":")
    return TOOL_NAMES.get(tool, tool) + (" (its %s)" % short_label(fig) if fig else "")


def figure_tables(med, tools, tg, judge):
    """One table per figure that has a target, and the redis figures (whose
    point is the ratio to direct)."""
    keys = []
    for t in tg:
        if t["figure"] not in keys:
            keys.append(t["figure"])
    for k in ("redis_get_rps", "redis_set_rps", "redis_cpu_us"):
        keys.insert(keys.index("rtt64_added_p50"), k)
    for k in ("rpc64i_cpu_us", "rtt64i_p50"):
        keys.insert(keys.index("rpc64_cpu_us") + 1, k)
    lines = []
    for key in keys:
        dec = FIG[key][4]
        subj = subject_tool(key)
        rows = LL_TOOLS if key.startswith("ll_") else tools
        if not any(med.get(t, {}).get(key) is not None for t in rows):
            continue
        mine = [t for t in tg if t["figure"] == key]
        lines += ["", "### %s" % FIG[key][1], ""]
        # No "vs direct" column where direct has no such figure (no middle).
        ll = key.startswith("ll_") or med.get("direct", {}).get(key) is None
        head = "| tool | value |%s %s / tool |" % ("" if ll else " vs direct |", TOOL_NAMES[subj])
        if judge:
            head += " target | verdict |"
        lines += [head, "|---|---|" + ("" if ll else "---|") + "---|" + ("---|---|" if judge else "")]
        for tool in rows:
            v = med.get(tool, {}).get(key)
            if v is None and tool != subj:
                continue  # direct has no middle: no CPU, memory or added time
            d = med.get("direct", {}).get(key)
            line = "| %s | %s |%s %s |" % (
                TOOL_NAMES.get(tool, tool), fmt(v, dec),
                "" if ll else " %s |" % (fmt_x(ratio(v, d)) if tool != "direct" else ""),
                fmt_x(ratio(med.get(subj, {}).get(key), v)) if tool != subj else "")
            if judge:
                mt = [t for t in mine if t["against"] == tool]
                if tool == subj:
                    mt = [t for t in mine if t["against"] is None]
                line += " %s | %s |" % (
                    "; ".join(target_text(t) for t in mt),
                    "; ".join("n/a" if t["ok"] is None else ("PASS" if t["ok"] else "**MISS**")
                              for t in mt))
            lines.append(line)
        for t in mine:
            if t["anchor"] and ":" in t["anchor"]:
                tool, _, fig = t["anchor"].partition(":")
                lines.append("\nThis figure over %s's %s: %s%s." % (
                    TOOL_NAMES.get(tool, tool), short_label(fig), fmt_x(t["value"]),
                    " (target %s %.2fx: %s)" % (
                        t["op"], t["threshold"],
                        "n/a" if t["ok"] is None else ("PASS" if t["ok"] else "**MISS**"))
                    if judge else ""))
    return lines


def netem_summary(res):
    try:
        with open(os.path.join(res, "longlink-netem.log")) as fh:
            text = fh.read()
    except OSError:
        return None
    out = []
    for m in re.finditer(r"sr-netem (\S+): (\d+) packets in .*?, (\d+) lost \(([\d.]+)%\)", text):
        out.append("%s %s of %s packets lost (%s%%)" % (m.group(1), m.group(3), m.group(2),
                                                        m.group(4)))
    return "; ".join(out) or None


# Values of these are not written out: a results file is meant to be shared.
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD")


def sr_settings(environ):
    """The SPARKRELAY_* variables in force for the run. They override
    sparkrelay's configuration (docs/configuration.md), so a result compares
    only with runs under the same ones. Names that are not plain variable
    names are dropped, secret values hidden, other values cut to 200
    characters of printable ASCII (the rest becomes "?")."""
    out = {}
    for k in sorted(environ):
        if not k.startswith("SPARKRELAY_") or not re.fullmatch(r"[A-Z0-9_]{1,100}", k):
            continue
        if any(w in k for w in SECRET_WORDS):
            out[k] = "(set, not shown)"
            continue
        v = environ[k][:200]
        out[k] = "".join(c if " " <= c <= "~" and c != "`" else "?" for c in v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--mode", default="default")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default="direct sparkrelay ssh stunnel haproxy socat")
    ap.add_argument("--load-before", default="")
    ap.add_argument("--load-after", default="")
    ap.add_argument("--busy", default="", help='"load1 idle_pct" before the run')
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--git", default="")
    ap.add_argument("--tcp-cc", default="")
    ap.add_argument("--long-link", default="")
    a = ap.parse_args()

    judge = a.mode != "quick"
    tools = a.tools.split()
    runs = load_runs(a.res)
    all_tools = tools + [t for t in LL_TOOLS if any(k[0] == t for k in runs)]
    med, spread = medians(runs, all_tools)
    crashes = {t: load_crashes(a.res, t) for t in tools}
    failed_runs = {t: sorted("%s.%s" % (k[1], r.get("_rep", 0)) for k, v in runs.items()
                             if k[0] == t for r in v if r.get("_rc", 0) != 0)
                   for t in all_tools}
    tg = evaluate(med, judge, runs)
    settings = sr_settings(os.environ)
    netem = netem_summary(a.res)

    doc = {
        "date": a.date, "git": a.git, "mode": a.mode, "repetitions": a.reps, "seconds": a.seconds,
        "load_before": a.load_before, "load_after": a.load_after, "busy_before": a.busy,
        "settings": settings,
        "machine": machine(a.tcp_cc), "medians": med, "min_max_n": spread, "targets": tg,
        "judged": judge, "crashes": crashes, "failed_runs": failed_runs,
        "long_link": {"link": a.long_link, "netem": netem} if netem else None,
        "raw": {"%s.%s" % k: v for k, v in runs.items()},
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, a.date + ".json"), "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)

    m = doc["machine"]
    busy = a.busy.split()
    lines = [
        "# sparkrelay benchmark, %s" % a.date, "",
        "Mode `%s`, %d repetition(s), medians; %d s wall time. Machine: %s cores, %s, kernel %s, "
        "TCP congestion control %s. Load average before: `%s`%s, after: `%s`. Source: %s." % (
            a.mode, a.reps, a.seconds, m.get("nproc"), m.get("cpu", "?"), m.get("kernel"),
            a.tcp_cc or "?", a.load_before,
            " (CPU idle %s%% over 2 s)" % busy[1] if len(busy) == 2 else "", a.load_after, a.git),
    ]
    if settings:
        lines += ["", "sparkrelay ran with these variables set, which override its "
                  "configuration: " + ", ".join("`%s=%s`" % kv for kv in settings.items()) + "."]
    if not judge:
        lines += ["", "Quick run: smoke numbers from short loads, not a verdict on any target; "
                  "run the default mode for that."]
    shown = tools  # a tool without figures still shows its failures
    lines += ["", "## Every figure", "",
              "| figure | " + " | ".join(TOOL_NAMES.get(t, t) for t in shown) + " |",
              "|---|" + "---|" * len(shown)]
    for key, label, _name, _path, dec in FIGURES:
        if key.startswith("ll_") or not any(med[t].get(key) is not None for t in shown):
            continue
        lines.append("| %s | %s |" % (label, " | ".join(fmt(med[t].get(key), dec) for t in shown)))
    lines.append("| tunnel process died (runs) | %s |" % " | ".join(
        str(len(crashes[t])) for t in shown))
    lines.append("| runs with an error exit | %s |" % " | ".join(
        str(len(failed_runs[t])) for t in shown))
    ll_shown = [t for t in LL_TOOLS if t in med and med[t]]
    if ll_shown:
        lines += ["", "## Long link (%s)" % a.long_link, "",
                  "One run each (no median over repetitions): the repetitions "
                  "above apply to the loopback scenarios only. The same holds for the "
                  "long-link rows of the tables below.", ""]
        if netem:
            lines += ["Emulator: %s." % netem, ""]
        lines += ["| figure | " + " | ".join(TOOL_NAMES[t] for t in ll_shown) + " |",
                  "|---|" + "---|" * len(ll_shown)]
        for key in LL_FIGURES:
            lines.append("| %s | %s |" % (FIG[key][1][len("long link: "):], " | ".join(
                fmt(med[t].get(key), FIG[key][4]) for t in ll_shown)))
        lines.append("| runs with an error exit | %s |" % " | ".join(
            str(len(failed_runs[t])) for t in ll_shown))
    lines += ["", "## Per figure: ratios" + (" and targets (issue 13)" if judge else ""), ""]
    lines += ["\"vs direct\": the tool's figure over direct TCP's; \"sparkrelay / tool\": "
              "sparkrelay's figure over the tool's (for times and CPU, lower is better)."]
    lines += figure_tables(med, shown, tg, judge)
    if judge:
        met = sum(1 for t in tg if t["ok"])
        judged = sum(1 for t in tg if t["ok"] is not None)
        lines += ["", "## Targets", "", "%d of %d judged targets met (%d without a figure in "
                  "this run)." % (met, judged, len(tg) - judged) +
                  (" Long-link rows: one run each." if ll_shown else ""), "",
                  "\"measured\" is sparkrelay's median over the other tool's median; \"per "
                  "round\" is the same ratio within each round (the tools take turns, round by "
                  "round), and in how many rounds it met the target: a verdict that holds in "
                  "one round out of three is not settled.", "",
                  "| figure | against | measured | target | verdict | per round |",
                  "|---|---|---|---|---|---|"]
        for t in tg:
            shown_v = (fmt_x(t["value"]) if t["anchor"] else fmt(t["value"], 2))
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                t["label"], against_text(t),
                shown_v, target_text(t),
                "n/a" if t["ok"] is None else ("PASS" if t["ok"] else "**MISS**"),
                rounds_text(t)))
    lines += ["", "Middle CPU: utime+stime of the tool's own processes and their children "
              "(sparkrelay: relay + sidecar; ssh -R: sshd + ssh; stunnel: both; HAProxy; socat "
              "and its forks) from /proc before and after each run. Memory: their VmRSS before "
              "and after opening the idle connections, divided by their number; socat forks a "
              "process per connection and has no such figure."]
    with open(os.path.join(a.out, a.date + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")

    # gnuplot: a panel per kind of figure that has data, one bar per tool.
    cols = ["iperf1_down_gbit", "iperf8_down_gbit", "rtt64_p50", "rtt64_p99", "idle_kib"]
    panels = [
        ("iperf3 down, Gbit/s", [(2, "1 conn"), (3, "8 conns")], False),
        ("64 B round trip, us (log)", [(4, "p50"), (5, "p99")], True),
        ("memory per idle connection, KiB (log)", [(6, "RSS per connection")], True),
    ]
    panels = [p for p in panels if any(med[t].get(cols[c - 2]) is not None
                                       for t in shown for c, _ in p[1])]
    if panels:
        with open(os.path.join(a.out, a.date + ".dat"), "w") as fh:
            fh.write("tool %s\n" % " ".join(cols))
            for t in shown:
                fh.write('"%s" %s\n' % (t, " ".join(
                    "-" if med[t].get(c) is None else repr(med[t][c]) for c in cols)))
        gp = ['set terminal pngcairo size %d,480 font ",10"' % (500 * len(panels)),
              'set output "%s.png"' % a.date, 'set datafile missing "-"',
              "set style data histograms", "set style histogram clustered gap 1",
              "set style fill solid 0.8 border -1", "set xtics rotate by -30", "set grid ytics",
              "set key outside bottom center horizontal",
              'set multiplot layout 1,%d title "sparkrelay vs alternatives, %s (%s, medians)"'
              % (len(panels), a.date, a.mode)]
        for title, series, logy in panels:
            gp += ['set title "%s"' % title,
                   "set logscale y" if logy else "unset logscale y",
                   "set yrange [%s:*]" % ("0.1" if logy else "0")]
            gp.append("plot " + ", ".join(
                '%s using %d%s title "%s"' % ('"%s.dat"' % a.date if k == 0 else '""', c,
                                              ":xtic(1)" if k == 0 else "", name)
                for k, (c, name) in enumerate(series)))
        gp.append("unset multiplot")
        with open(os.path.join(a.out, a.date + ".gp"), "w") as fh:
            fh.write("\n".join(gp) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
