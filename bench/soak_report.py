#!/usr/bin/env python3
"""Figures of bench/soak.sh, read from its work directory W.

    soak_report.py sample W T      one row (each 10 s): requests, failures, RSS/fds, log lines
    soak_report.py summary W WARMUP  the verdict, once graygate has stopped

W holds client.json (soak_client.py), wrk.json (soak_wrk.lua), gg.pid, logs/access.log*,
events.log (one line per control command) and failures.jsonl; samples go to samples.jsonl.
"""
import collections
import glob
import json
import os
import re
import sys


# Worker sockets may differ by this many between two windows without counting as growth.
SOCKET_SLACK = 8


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def proc_status(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fds(pid):
    """(sockets, other fds): sockets follow the load; files, pipes, epoll do not."""
    socks = other = 0
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return 0, 0
    for n in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            continue
        if target.startswith("socket:"):
            socks += 1
        else:
            other += 1
    return socks, other


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append((int(fields[19]), int(d)))  # start time, pid
    return [p for _, p in sorted(out)]


def log_lines(w):
    n = 0
    for p in glob.glob(os.path.join(w, "logs", "access.log*")):
        with open(p, "rb") as f:
            n += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return n


def counts(w):
    """(sent, ok, injected, unexpected, aborted) over both clients, with wrk's socket errors."""
    c = load(os.path.join(w, "client.json"), {}).get("total", {})
    k = load(os.path.join(w, "wrk.json"), {})
    errs = sum(k.get("errors", {}).values())
    return {
        "sent": c.get("sent", 0) + k.get("sent", 0),
        "ok": c.get("ok", 0) + k.get("ok", 0),
        "injected": c.get("injected", 0) + k.get("injected", 0),
        "unexpected": c.get("unexpected", 0) + k.get("bad", 0) + errs,
        "aborted": c.get("aborted", 0),
    }


def sample(w, t, idle=False):
    try:
        master = int(open(os.path.join(w, "gg.pid")).read().split()[0])
    except (OSError, ValueError, IndexError):
        master = 0
    workers = children(master) if master else []
    mfd = fds(master)
    wfd = [fds(p) for p in workers]
    s = {"t": t, "idle": idle, **counts(w), "lines": log_lines(w),
         "master_rss": proc_status(master, "VmRSS"), "master_fds": sum(mfd),
         "workers": len(workers),
         "worker_rss": sum(proc_status(p, "VmRSS") for p in workers),
         "worker_socks": sum(f[0] for f in wfd), "worker_files": sum(f[1] for f in wfd)}
    with open(os.path.join(w, "samples.jsonl"), "a") as f:
        f.write(json.dumps(s) + "\n")
    if t == 0 or int(t) % 100 == 0:
        print("%5s %9s %6s %7s %6s | %10s %4s | %2s %10s %5s %5s | %9s %7s" % (
            "t s", "sent", "unexp", "inject", "abort", "master kB", "fds",
            "wk", "worker kB", "socks", "files", "log lines", "-sent"))
    print("%5d %9d %6d %7d %6d | %10d %4d | %2d %10d %5d %5d | %9d %+7d" % (
        t, s["sent"], s["unexpected"], s["injected"], s["aborted"], s["master_rss"],
        s["master_fds"], s["workers"], s["worker_rss"], s["worker_socks"],
        s["worker_files"], s["lines"], s["lines"] - s["sent"]), flush=True)


def path_kind(line):
    m = re.match(rb'[^"]*"[A-Z]* /([a-z_]+)', line)
    return m.group(1).decode() if m else "other"


def summary(w, warmup):
    samples = [json.loads(l) for l in open(os.path.join(w, "samples.jsonl"))]
    c = load(os.path.join(w, "client.json"), {})
    k = load(os.path.join(w, "wrk.json"), {})
    tot = counts(w)
    ok = True
    print()
    print("== soak summary (%s) ==" % w)
    errs = k.get("errors", {})
    print("requests sent: %d (soak_client %d, wrk %d); ok %d, injected failures %d, aborted by "
          "design %d" % (tot["sent"], c.get("total", {}).get("sent", 0), k.get("sent", 0),
                         tot["ok"], tot["injected"], tot["aborted"]))
    print("asked for failures: client %s, wrk 500: %d" % (
        c.get("marked"), k.get("injected", 0)))
    print("unexpected failures: %d (goal 0): soak_client %d, wrk bad statuses %d [%s], wrk "
          "socket errors %s" % (tot["unexpected"], c.get("total", {}).get("unexpected", 0),
                                k.get("bad", 0), k.get("bad_statuses", "").strip(), errs))
    for kind, v in c.get("kinds", {}).items():
        print("  %-11s %s" % (kind, " ".join("%s %d" % kv for kv in v.items())))
    if tot["unexpected"]:
        ok = False
        reasons = collections.Counter()
        try:
            for line in open(os.path.join(w, "failures.jsonl")):
                r = json.loads(line)
                reasons["%s: %s" % (r["kind"], re.sub(r"\d+", "N", r["detail"] or ""))] += 1
        except OSError:
            pass
        for r, n in reasons.most_common(10):
            print("    %5d x %s" % (n, r))
    if not c.get("final") or not k.get("final"):
        print("warning: a client did not write its final figures (client %s, wrk %s)" % (
            c.get("final"), k.get("final")))
        ok = False

    # RSS and fds under load: the median of the samples in the first window after warm-up
    # vs that of the last window (a window: a third of the time after warm-up, at most 60 s).
    # Samples taken while an old generation still drains (two workers) are left out.
    steady = [s for s in samples if s["t"] >= warmup and s["workers"] == 1 and s["master_rss"]
              and not s.get("idle")]
    if len(steady) >= 2:
        end_t = steady[-1]["t"]
        span = max(10, min(60, (end_t - warmup) // 3))
        first = [s for s in steady if s["t"] < warmup + span]
        last = [s for s in steady if s["t"] > end_t - span]
        med = lambda xs, key: sorted(x[key] for x in xs)[len(xs) // 2]
        print("under load, median of t=%d..%ds (%d samples) vs t=%d..%ds (%d samples):" % (
            warmup, warmup + span, len(first), end_t - span, end_t, len(last)))
        for key, label in (("master_rss", "master RSS kB"), ("master_fds", "master fds"),
                           ("worker_rss", "worker RSS kB"), ("worker_files", "worker files"),
                           ("worker_socks", "worker sockets")):
            a, b = med(first, key), med(last, key)
            lo, hi = min(x[key] for x in steady), max(x[key] for x in steady)
            ch = (b - a) * 100.0 / a if a else 0.0
            # Open sockets follow the clients of the moment (new-connection, slow and
            # aborting clients, pooled upstream connections): a few either way is the load.
            slack = SOCKET_SLACK if key == "worker_socks" else 0
            good = ch <= 5.0 or b - a <= slack
            flag = "ok" if good else "OVER 5%"
            if not good:
                ok = False
            print("  %-14s %8d -> %8d (%+.1f%%; min %d, max %d after warm-up) %s" % (
                label, a, b, ch, lo, hi, flag))
    else:
        print("not enough samples after warm-up (%ds) with one worker" % warmup)
        ok = False
    idle = [s for s in samples if s.get("idle")]
    if idle:
        s = idle[-1]
        print("  load stopped (t=%ds): master %d kB %d fds, %d worker(s) %d kB, %d sockets, "
              "%d other fds" % (s["t"], s["master_rss"], s["master_fds"], s["workers"],
                                s["worker_rss"], s["worker_socks"], s["worker_files"]))

    # Log lines: every access log file, rotated ones too, once graygate has flushed and exited.
    per_kind = collections.Counter()
    statuses = collections.defaultdict(collections.Counter)
    for p in sorted(glob.glob(os.path.join(w, "logs", "access.log*"))):
        with open(p, "rb") as f:
            for line in f:
                kind = path_kind(line)
                per_kind[kind] += 1
                m = re.search(rb'" (\d{3}) ', line)
                statuses[kind][m.group(1).decode() if m else "?"] += 1
    lines = sum(per_kind.values())
    rotated = len(glob.glob(os.path.join(w, "logs", "access.log.*")))
    flag = "ok" if lines == tot["sent"] else "MISMATCH"
    if lines != tot["sent"]:
        ok = False
    print("access log lines: %d in %d files (%d rotated) vs requests sent %d: %+d %s" % (
        lines, rotated + 1, rotated, tot["sent"], lines - tot["sent"], flag))
    sent_kind = {kk: v["sent"] for kk, v in c.get("kinds", {}).items()}
    sent_kind["wrk"] = k.get("sent", 0)
    for kind in sorted(set(per_kind) | set(sent_kind)):
        st = " ".join("%s:%d" % kv for kv in sorted(statuses[kind].items()))
        d = per_kind[kind] - sent_kind.get(kind, 0)
        print("  %-11s lines %8d sent %8d %+6d  statuses %s" % (
            kind, per_kind[kind], sent_kind.get(kind, 0), d, st))

    ops = collections.Counter()
    bad_ops = []
    try:
        for line in open(os.path.join(w, "events.log")):
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            ops[(parts[1], parts[2] == "0")] += 1
            if parts[2] != "0":
                bad_ops.append(line.rstrip())
    except OSError:
        pass
    print("control commands: " + ", ".join(
        "%s %d ok / %d failed" % (op, ops[(op, True)], ops[(op, False)])
        for op in sorted({o for o, _ in ops})))
    for line in bad_ops[:10]:
        print("  " + line)
    if bad_ops:
        ok = False
    print("verdict: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        sample(sys.argv[2], int(sys.argv[3]), idle=len(sys.argv) > 4)
    else:
        sys.exit(summary(sys.argv[2], int(sys.argv[3])))
