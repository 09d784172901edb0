#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT one after another, each sending one request
and reading its answer before the next connects (so the proxy never has many requests in
flight: what is measured is the cost of holding idle connections, not of a burst), writes
READY_FILE, then holds the connections idle until killed."""
import socket
import sys
import time

port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    # Spread over many source addresses to stay clear of the ephemeral port range.
    src = "127.%d.%d.%d" % (100 + i // 60000, (i // 250) % 240, i % 250 + 1)
    s = socket.socket()
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    socks.append(s)
open(ready, "w").write("%d\n" % len(socks))
while True:
    time.sleep(3600)
