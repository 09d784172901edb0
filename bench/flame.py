#!/usr/bin/env python3
"""Folds `perf script` output (with call graphs) into stacks and draws them as a flame graph
SVG: each box a function, its width its share of the samples, callers below callees. Our own
small renderer, so the bench needs nothing beyond perf.

    perf script -i perf.data | flame.py TITLE > out.svg
    flame.py --folded < perf-script.txt     # the folded stacks, "a;b;c COUNT" per line
"""
import collections
import html
import re
import sys


def fold(lines):
    stacks = collections.Counter()
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                stacks[";".join(reversed(frames))] += 1
            frames = []
        elif line.startswith((" ", "\t")):
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                sym = re.sub(r"\s*\([^()]*\)$", "", parts[1])  # the (dso)
                sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
                frames.append(sym if sym != "[unknown]" else "?")
    if frames:
        stacks[";".join(reversed(frames))] += 1
    return stacks


def color(name):
    h = sum(map(ord, name)) % 60
    if name.startswith(("graygate::", "<graygate::")) or "graygate::" in name[:40]:
        return "rgb(%d,%d,%d)" % (80 + h, 160 + h // 2, 80)  # ours: green
    return "rgb(%d,%d,%d)" % (220, 100 + 2 * h, 50 + h // 2)


def svg(stacks, title):
    root = {"n": 0, "c": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for f in stack.split(";"):
            node = node["c"].setdefault(f, {"n": 0, "c": {}})
            node["n"] += n
    total = max(root["n"], 1)
    width, row = 1200.0, 16
    boxes = []

    def walk(node, name, x, depth):
        w = width * node["n"] / total
        if w < 0.3:
            return
        boxes.append((x, depth, w, name, node["n"]))
        cx = x
        for child, sub in sorted(node["c"].items()):
            walk(sub, child, cx, depth + 1)
            cx += width * sub["n"] / total

    walk(root, "all", 0.0, 0)
    depth = max(b[1] for b in boxes) + 1
    height = depth * row + 40
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="monospace" font-size="11">' % (width, height),
           '<text x="4" y="16" font-size="14">%s (%d samples; green: graygate\'s own code)</text>' % (html.escape(title), total)]
    for x, d, w, name, n in boxes:
        y = height - (d + 1) * row
        label = html.escape(name[: int(w / 7)]) if w > 21 else ""
        out.append('<g><title>%s: %d samples (%.2f%%)</title><rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" stroke="white" stroke-width="0.5"/><text x="%.1f" y="%d">%s</text></g>'
                   % (html.escape(name), n, 100.0 * n / total, x, y, w, row - 1, color(name), x + 2, y + 11, label))
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    st = fold(sys.stdin)
    if sys.argv[1:] == ["--folded"]:
        for k, v in sorted(st.items()):
            print(k, v)
    else:
        print(svg(st, sys.argv[1] if len(sys.argv) > 1 else "flame graph"))
