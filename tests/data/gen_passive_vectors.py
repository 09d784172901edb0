#!/usr/bin/env python3
"""Builds tests/data/passive_vectors.txt from real nginx (Debian's package).

Each case runs one nginx (one worker, so one set of counters) with an upstream of small
backends on loopback that answer 503 when the request asks them to fail (`?f<index>=1`) and
200 otherwise, with `proxy_next_upstream error timeout http_503`. For every request of the case
nginx reports, in `X-Up`, the servers it tried in order ($upstream_addr). The file lists, per
request, the source address, which servers fail it, the servers tried, and the final status; a
`sleep` line is real time between requests. graygate's pool, driven through the same events
(src/upstream/tests.rs), must try the same servers in the same order.

Run: python3 tests/data/gen_passive_vectors.py > tests/data/passive_vectors.txt
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

BASE = 38100


def srv(weight, max_fails, fail_timeout, flag=""):
    return (weight, max_fails, fail_timeout, flag)


def alternate(n, fails, every=2, first=0):
    return [("req", "127.0.0.1", fails if (k - first) % every == 0 and k >= first else [])
            for k in range(n)]


def clean(n, src="127.0.0.1"):
    return [("req", src, [])] * n


CLIENTS = ["127.1.1.1", "127.2.7.1", "127.3.9.1", "127.40.2.1", "127.99.5.1", "127.200.1.1"]


def each_client(fails=()):
    return [("req", c, list(fails)) for c in CLIENTS]


CASES = [
    # A server failing every other time it is asked, max_fails 3: the successes in between do
    # not reset its count (no check since the failure), so the third failure sidelines it.
    ("every_other_fails", "round_robin", [srv(1, 3, 1), srv(1, 3, 1)],
     alternate(12, [0], every=4) + [("sleep", 2.5)] + clean(6) + alternate(8, [0])
     + [("sleep", 2.5)] + clean(6)),
    # One failure lowers server 0's effective weight by 3/3: the sequence shifts.
    ("effective_weight_shift", "round_robin", [srv(3, 3, 60), srv(3, 3, 60)],
     clean(3) + [("req", "127.0.0.1", [0])] + clean(14)),
    ("smooth_with_failures", "round_robin", [srv(5, 2, 60), srv(1, 2, 60), srv(1, 2, 60)],
     clean(3) + [("req", "127.0.0.1", [0])] + clean(3) + [("req", "127.0.0.1", [0, 1])]
     + clean(2) + [("req", "127.0.0.1", [2])] + clean(20)),
    ("rest_and_return", "round_robin", [srv(1, 1, 1), srv(1, 1, 1), srv(1, 1, 1)],
     [("req", "127.0.0.1", [1])] * 6 + [("sleep", 2.5)] + clean(6)
     + [("req", "127.0.0.1", [0, 1])] + clean(4) + [("sleep", 2.5)] + clean(6)),
    ("weights_4_2_1", "round_robin", [srv(4, 2, 1), srv(2, 2, 1), srv(1, 2, 1)],
     clean(2) + [("req", "127.0.0.1", [0])] * 2 + clean(5) + [("req", "127.0.0.1", [1])]
     + clean(7) + [("sleep", 2.5)] + clean(14)),
    ("backup_takes_over", "round_robin",
     [srv(2, 1, 1), srv(1, 1, 1), srv(1, 1, 1, "backup")],
     [("req", "127.0.0.1", [0, 1])] * 3 + clean(3) + [("sleep", 2.5)] + clean(6)),
    ("down_server", "round_robin", [srv(1, 2, 60), srv(1, 2, 60, "down"), srv(1, 2, 60)],
     alternate(10, [0], every=3)),
    ("max_fails_0_never_rests", "round_robin", [srv(1, 0, 60), srv(1, 0, 60)],
     [("req", "127.0.0.1", [0])] * 6 + clean(4)),
    ("ip_hash_moves_only_failed", "ip_hash", [srv(1, 1, 1), srv(1, 1, 1), srv(1, 1, 1)],
     each_client() + each_client([0]) + each_client() + [("sleep", 2.5)] + each_client()),
    ("ip_hash_all_fail", "ip_hash", [srv(1, 2, 60), srv(2, 2, 60)],
     each_client([0, 1])[:3] + each_client()),
    ("ip_hash_weights", "ip_hash", [srv(4, 4, 60), srv(1, 4, 60), srv(1, 4, 60)],
     each_client() + each_client([0])[:4] + each_client() + each_client([0])),
]


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start")


def ask(src, fails):
    query = "&".join("f%d=1" % i for i in fails) or "x=1"
    s = socket.create_connection(("127.0.0.1", BASE), timeout=5, source_address=(src, 0))
    s.sendall(("GET /?%s HTTP/1.0\r\nHost: x\r\n\r\n" % query).encode())
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    status = lines[0].split()[1]
    up = next(l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("x-up:"))
    return status, up


def run_case(name, policy, servers, steps):
    d = tempfile.mkdtemp()
    ups = "\n".join(
        "server 127.0.0.1:%d weight=%d max_fails=%d fail_timeout=%ds%s;"
        % (BASE + 1 + i, w, mf, ft, (" " + flag) if flag else "")
        for i, (w, mf, ft, flag) in enumerate(servers)
    )
    backends = "\n".join(
        'server { listen 127.0.0.1:%d; location / { if ($arg_f%d) { return 503 "%d"; } '
        'return 200 "%d"; } }' % (BASE + 1 + i, i, i, i)
        for i in range(len(servers))
    )
    conf = """
pid %s/nginx.pid;
error_log %s/error.log error;
worker_processes 1;
events {}
http {
  access_log off;
  upstream u { %s %s }
  server {
    listen 127.0.0.1:%d;
    location / {
      proxy_pass http://u;
      proxy_next_upstream error timeout http_503;
      add_header X-Up $upstream_addr always;
    }
  }
  %s
}
""" % (d, d, "ip_hash;" if policy == "ip_hash" else "", ups, BASE, backends)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    p = subprocess.Popen(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"])
    try:
        wait_port(BASE)
        for i in range(len(servers)):
            wait_port(BASE + 1 + i)
        print("case %s %s" % (name, policy))
        for i, (w, mf, ft, flag) in enumerate(servers):
            print("server %d weight=%d max_fails=%d fail_timeout=%d%s"
                  % (i, w, mf, ft, (" " + flag) if flag else ""))
        port_index = {"127.0.0.1:%d" % (BASE + 1 + i): str(i) for i in range(len(servers))}
        for step in steps:
            if step[0] == "sleep":
                time.sleep(step[1])
                print("sleep %d" % int(step[1] * 1000))
                continue
            _, src, fails = step
            status, up = ask(src, fails)
            tried = ",".join(port_index.get(a.strip(), "none") for a in up.split(","))
            print("req %s %s %s %s" % (src, ",".join(map(str, fails)) or "-", tried, status))
        print("end")
    finally:
        p.terminate()
        p.wait()


def main():
    v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    print("# nginx passive health: per request, source, failing servers, servers tried, status")
    print("# generated by tests/data/gen_passive_vectors.py with %s" % v)
    for case in CASES:
        run_case(*case)
    sys.stdout.flush()


main()
