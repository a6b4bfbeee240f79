#!/usr/bin/env python3
"""Table of bench/survival.sh: tool x scenario -> connections that survived
(open, every number echoed in order, exactly once) / N, and how long after
the path returned (or the new process was up) echoes flowed on all of them."""
import argparse
import json
import os
import platform

NAMES = {
    "direct": "direct TCP (control)",
    "sparkrelay": "sparkrelay",
    "sparkrelay-kill9": "sparkrelay, relay kill -9",
    "ssh": "ssh -R",
    "stunnel": "stunnel pair",
    "haproxy": "HAProxy",
    "socat": "socat",
}


def scen_title(s):
    if s == "restart":
        return "restart"
    return "%s s outage" % s[3:]


def cell(r):
    if r is None:
        return "-"
    n, ok = r["conns"], r["survived"]
    s = "%d/%d" % (ok, n)
    if not r.get("ready"):
        s += " (not ready before the event)"
    if ok:
        t = r.get("echo_again_all_s")
        if t is not None:
            s += ", %.1f s" % t
        else:
            s += ", some never echoed again"
    if r.get("errors"):
        errs = ", ".join("%s %d" % kv for kv in sorted(r["errors"].items()))
        loss = r.get("first_loss_after_event_s")
        s += " (%s%s)" % (errs, "" if loss is None else ", first at +%.1f s" % max(0.0, loss))
    return s


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, Linux %s" % (model, os.cpu_count() or 0, platform.release())


def main():
    p = argparse.ArgumentParser()
    for a in ("res", "out", "date", "conns", "scenarios", "tools", "seconds",
              "load-before", "load-after", "git"):
        p.add_argument("--" + a, required=True)
    a = p.parse_args()
    scens = a.scenarios.split()
    methods = {}
    try:
        with open(os.path.join(a.res, "methods.tsv")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                methods[k] = v
    except OSError:
        pass
    insts = []
    for t in a.tools.split():
        insts.append(t)
        if t == "sparkrelay" and "restart" in scens:
            insts.append("sparkrelay-kill9")
    res = {}
    for s in scens:
        for i in insts:
            path = os.path.join(a.res, "%s.%s.json" % (s, i))
            try:
                with open(path) as f:
                    r = json.load(f)
            except (OSError, ValueError):
                continue
            r["method"] = methods.get("%s.%s" % (s, i), "")
            res.setdefault(s, {})[i] = r
    out = {"date": a.date, "git": a.git, "machine": machine(), "conns_per_tool": int(a.conns),
           "seconds": int(a.seconds), "load_before": a.load_before, "load_after": a.load_after,
           "results": res}
    L = ["# Survival: %s" % a.date, "",
         "%s per tool, each sending a sequence number every 100 ms. Cell: connections "
         "still open with every number echoed in order, exactly once / N, then the time "
         "from the path's return (outage) or the new process being up (restart) until "
         "every surviving connection had an echo again; then what was lost and when "
         "(seconds after the event began)." % a.conns, "",
         "Machine: %s; load before %s, after %s; git %s; %s s." % (
             machine(), a.load_before, a.load_after, a.git, a.seconds), ""]
    L.append("| tool | " + " | ".join(scen_title(s) for s in scens) + " |")
    L.append("|---" * (len(scens) + 1) + "|")
    for i in insts:
        row = [cell(res.get(s, {}).get(i)) for s in scens]
        if all(c == "-" for c in row):
            continue
        L.append("| %s | %s |" % (NAMES.get(i, i), " | ".join(row)))
    L.append("")
    if "restart" in res:
        L.append("Restart, per tool:")
        L.append("")
        for i in insts:
            r = res["restart"].get(i)
            if r:
                L.append("- %s: %s; longest stall %s s; a new connection afterwards: %s" % (
                    NAMES.get(i, i), r["method"],
                    "-" if r.get("max_stall_s") is None else "%.2f" % r["max_stall_s"],
                    "served" if r.get("new_connection_ok") else "FAILED"))
        L.append("")
    lines = []
    for s in scens:
        for i in insts:
            try:
                with open(os.path.join(a.res, "%s.%s.log-lines" % (s, i))) as f:
                    got = [ln.rstrip("\n") for ln in f if ln.strip()][:20]
            except OSError:
                continue
            if got:
                res.get(s, {}).get(i, {})["log_lines"] = got
                lines.append("- %s, %s:" % (scen_title(s), NAMES.get(i, i)))
                lines += ["  `%s`" % ln.replace("`", "'")[:300] for ln in got]
    if lines:
        L.append("sparkrelay's own account (relay and sidecar log):")
        L.append("")
        L += lines
        L.append("")
    for s in scens:
        if s == "restart" or s not in res:
            continue
        bad = [i for i in insts if i in res[s] and not res[s][i].get("new_connection_ok")]
        if bad:
            L.append("%s: a new connection after the outage failed on: %s" % (
                scen_title(s), ", ".join(NAMES.get(i, i) for i in bad)))
            L.append("")
    with open(a.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
