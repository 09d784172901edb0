#!/usr/bin/env python3
"""Microseconds per request, function by function, from two `perf record -e cpu-clock`
profiles (graygate and the bare Pingora proxy) and each one's CPU time per request.

cpu-clock samples are CPU time at a fixed rate, so a function's share of a profile's samples
times the proxy's CPU-microseconds per request (1e6 / requests per CPU-second, measured under
the same load) is the time that function costs each request. The difference of the two
profiles names where graygate's extra microseconds go.

    profile_us.py GRAYGATE.txt GG_REQ_PER_CPU_S BARE.txt BARE_REQ_PER_CPU_S [TOP]

The .txt files are `perf script -F ip,sym,dso` output (bench/flame.sh keeps them).
Prints markdown: a table by component (kernel, tokio, Pingora, graygate, allocator, ...) and
the TOP functions (self time) with the largest difference.
"""
import collections
import re
import sys


def leaves(path):
    """(self function, component) of each sample, and the set of graygate hooks on its stack."""
    out = collections.Counter()
    incl = collections.Counter()
    frames = []

    def flush():
        if not frames:
            return
        sym, dso = frames[0]
        out[(short(sym), component(sym, dso))] += 1
        seen = set()
        for s, _ in frames:
            if s.startswith(("graygate::", "<graygate::")) and "graygate::main" not in s:
                h = short(s)
                if h not in seen:
                    seen.add(h)
                    incl[h] += 1

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                flush()
                frames = []
            elif line.startswith((" ", "\t")):
                m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
                if m:
                    frames.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)), m.group(2)))
                else:
                    parts = line.strip().split(None, 1)
                    if len(parts) == 2:
                        frames.append((re.sub(r"\+0x[0-9a-f]+$", "", parts[1]), "?"))
    flush()
    return out, incl


def short(sym):
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    sym = re.sub(r"\{\{closure\}\}", "{closure}", sym)
    return sym[:110]


def component(sym, dso):
    if "kernel" in dso or dso.startswith("[") and "vdso" not in dso:
        return "kernel"
    s = sym.lstrip("<")
    if s.startswith("graygate::") or "graygate::" in sym[:60]:
        return "graygate"
    if s.startswith("pingora_proxy") or "pingora_proxy::" in sym[:60]:
        return "pingora-proxy"
    if "pingora" in sym[:60]:
        return "pingora-core (and other pingora crates)"
    if s.startswith("tokio") or "tokio::" in sym[:60]:
        return "tokio"
    if sym.startswith(("mi_", "_mi_", "mi_malloc", "_mi")) or "mimalloc" in sym:
        return "allocator (mimalloc)"
    if "memcpy" in sym or "memmove" in sym or "memset" in sym:
        return "memcpy/memmove (libc)"
    if s.startswith(("http::", "httparse", "bytes::", "h2::", "hashbrown")):
        return "http/bytes/httparse crates"
    if "libc" in dso or "ld-linux" in dso:
        return "libc (other)"
    return "other (std, core, unresolved)"


def main():
    gg_path, gg_rate, bare_path, bare_rate = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 30
    gg, gg_incl = leaves(gg_path)
    bare, _ = leaves(bare_path)
    gg_total, bare_total = sum(gg.values()), sum(bare.values())
    gg_us, bare_us = 1e6 / gg_rate, 1e6 / bare_rate

    def us(counter, total, per_req):
        return {k: v / total * per_req for k, v in counter.items()}

    g, b = us(gg, gg_total, gg_us), us(bare, bare_total, bare_us)
    print(f"CPU per request: graygate {gg_us:.2f} us ({gg_total} samples), "
          f"bare Pingora {bare_us:.2f} us ({bare_total} samples); difference {gg_us - bare_us:+.2f} us.")
    print()
    print("| component | graygate us/req | bare us/req | difference |")
    print("|---|---|---|---|")
    comp_g, comp_b = collections.Counter(), collections.Counter()
    for (fn, c), v in g.items():
        comp_g[c] += v
    for (fn, c), v in b.items():
        comp_b[c] += v
    for c in sorted(set(comp_g) | set(comp_b), key=lambda c: -(comp_g[c] - comp_b[c])):
        print(f"| {c} | {comp_g[c]:.2f} | {comp_b[c]:.2f} | {comp_g[c] - comp_b[c]:+.2f} |")
    print()
    print(f"Functions with the largest difference (self time; top {top}):")
    print()
    print("| function | component | graygate us/req | bare us/req | difference |")
    print("|---|---|---|---|---|")
    keys = set(g) | set(b)
    for k in sorted(keys, key=lambda k: -abs(g.get(k, 0) - b.get(k, 0)))[:top]:
        fn, c = k
        print(f"| `{fn}` | {c} | {g.get(k, 0):.2f} | {b.get(k, 0):.2f} | {g.get(k, 0) - b.get(k, 0):+.2f} |")
    print()
    print("graygate's own code, inclusive (everything called from it, Pingora's header insert included):")
    print()
    print("| graygate function | us/req inclusive |")
    print("|---|---|")
    for fn, n in sorted(gg_incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| `{fn}` | {n / gg_total * gg_us:.2f} |")


if __name__ == "__main__":
    main()
