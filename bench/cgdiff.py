#!/usr/bin/env python3
"""Compares two callgrind files function by function (inclusive instructions per request):
the functions whose inclusive cost differs most between B (e.g. graygate) and A (e.g. the
bare proxy). Names are merged over the source files inlining spread them across.

    cgdiff.py [--self] A.out B.out N [TOP]

--self: exclusive costs (additive: the rows sum to the total difference).
"""
import re
import subprocess
import sys


def inclusive(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=" + ("no" if SELF else "yes"), "--auto=no",
         "--threshold=100", path],
        capture_output=True, text=True, check=True).stdout
    cost = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2)
        name = re.sub(r" \[[^\]]*\]\s*$", "", name).strip()
        name = name.split(":", 1)[1] if ":" in name.split(" ")[0] else name
        cost[name] = cost.get(name, 0) + int(m.group(1).replace(",", ""))
    return cost


SELF = "--self" in sys.argv
if SELF:
    sys.argv.remove("--self")
a, b, n = inclusive(sys.argv[1]), inclusive(sys.argv[2]), float(sys.argv[3])
top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
rows = [(b.get(k, 0) / n - a.get(k, 0) / n, a.get(k, 0) / n, b.get(k, 0) / n, k)
        for k in set(a) | set(b)]
rows.sort(key=lambda r: -abs(r[0]))
print("%9s %9s %9s  %s" % ("B-A", "A", "B", "function (instructions per request)"))
for d, x, y, k in rows[:top]:
    print("%9.0f %9.0f %9.0f  %s" % (d, x, y, k[:150]))
