#!/usr/bin/env python3
"""Reads a callgrind output file and prints "INSTRUCTIONS ALLOCATIONS": the total of
instructions (Ir) and the number of calls into the allocator (mimalloc's allocating entry
points, reallocations included). With --callers N, also the functions that call the
allocator, with their number of calls divided by N (per request).

    cgcount.py FILE [--callers N]
"""
import re
import sys

ALLOC = re.compile(r"^(mi_malloc|mi_zalloc|mi_calloc|mi_realloc|mi_malloc_aligned|"
                   r"mi_zalloc_aligned|mi_realloc_aligned|mi_rezalloc_aligned|malloc|calloc|"
                   r"realloc|posix_memalign|aligned_alloc)$")
names = {}
total = 0
allocs = 0
pending_alloc = False
current = ""
callers = {}
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("summary:", "totals:")):
        total = max(total, int(line.split()[1]))
    elif line.startswith("cfn="):
        m = re.match(r"cfn=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
        ident, name = m.group(1), m.group(2)
        if ident and name:
            names[ident] = name
        elif ident:
            name = names.get(ident, "")
        # Calls between the allocator's own functions are one allocation.
        pending_alloc = bool(ALLOC.match(name)) and not ALLOC.match(current)
    elif line.startswith("fn="):
        m = re.match(r"fn=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
        if m.group(1) and m.group(2):
            names[m.group(1)] = m.group(2)
        current = names.get(m.group(1), m.group(2)) if m.group(1) else m.group(2)
    elif line.startswith("calls=") and pending_alloc:
        n = int(line.split("=")[1].split()[0])
        allocs += n
        callers[current] = callers.get(current, 0) + n
        pending_alloc = False
print(total, allocs)
if len(sys.argv) > 3 and sys.argv[2] == "--callers":
    per = float(sys.argv[3])
    for name, n in sorted(callers.items(), key=lambda kv: -kv[1]):
        if n / per >= 0.01:
            print("%8.2f  %s" % (n / per, name[:200]))
