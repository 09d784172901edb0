#!/usr/bin/env python3
"""Sends N plain GET requests to 127.0.0.1:PORT over C keep-alive connections, one request at
a time (round robin over the connections), and checks every answer is a 200. Sequential on
purpose: the count of instructions the proxy runs for them does not depend on timing.

    requests.py PORT N [C]
"""
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
c = int(sys.argv[3]) if len(sys.argv) > 3 else 4
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(c)]
bad = 0
for i in range(n):
    h = conns[i % c]
    h.request("GET", "/", headers={"User-Agent": "requests.py", "Accept": "*/*"})
    r = h.getresponse()
    r.read()
    if r.status != 200:
        bad += 1
for h in conns:
    h.close()
if bad:
    sys.exit("%d of %d requests were not 200" % (bad, n))
