#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT, sends one request on each, reads the
answers, writes READY_FILE, then holds the connections idle until killed."""
import selectors
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
    socks.append(s)
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
pending = len(socks)
deadline = time.time() + 120
while pending and time.time() < deadline:
    for key, _ in sel.select(timeout=1):
        data = key.fileobj.recv(65536)
        if b"\r\n\r\n" in data or not data:
            sel.unregister(key.fileobj)
            pending -= 1
open(ready, "w").write("%d\n" % (len(socks) - pending))
while True:
    time.sleep(3600)
