#!/usr/bin/env python3
"""App server for bench/soak.sh: HTTP/1.1 keep-alive, one asyncio process.

    soak_backend.py PORT NAME

GET/POST any path: 200 with `?size=N` bytes (default 9) and `X-Backend: NAME`; a POST body
(Content-Length) is read first. Failures happen only when the client asks for them, so
that the soak client can tell an injected failure from a real one, also through the
gateway's retries (every server of the pool fails a marked request alike):

    X-Soak-Fail: 500       500 with `X-Injected: 1` (the gateway passes it through)
    X-Soak-Fail: reset     connection reset before any byte of the response
    X-Soak-Fail: midreset  response head and half the body, then a reset

SIGTERM is a graceful stop, like `nginx -s quit`: stop listening, close idle keep-alive
connections at once (the race with a gateway reusing one is part of the test), finish the
responses in flight, exit.
"""
import asyncio
import signal
import socket
import struct
import sys

HEAD_MAX = 65536
BODIES = {}


def body(n):
    b = BODIES.get(n)
    if b is None:
        b = (b"0123456789abcdef" * (n // 16 + 1))[:n]
        if len(BODIES) < 64:
            BODIES[n] = b
    return b


def reset(transport):
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Conn(asyncio.Protocol):
    def __init__(self, app):
        self.app = app
        self.buf = bytearray()
        self.need_body = 0
        self.pending = None  # (head fields) while the body is read
        self.busy = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.app.conns.add(self)

    def connection_lost(self, exc):
        self.app.conns.discard(self)

    def data_received(self, data):
        self.buf += data
        self.busy = True
        self.step()

    def step(self):
        while True:
            if self.pending is not None:
                if len(self.buf) < self.need_body:
                    return
                del self.buf[: self.need_body]
                req, self.pending = self.pending, None
                if not self.answer(*req):
                    return
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > HEAD_MAX:
                    self.transport.close()
                if not self.buf:
                    self.busy = False
                    if self.app.stopping:
                        self.transport.close()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            target = parts[1] if len(parts) > 1 else "/"
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            self.need_body = int(hdrs.get("content-length", "0") or 0)
            self.pending = (target, hdrs)

    def answer(self, target, hdrs):
        """Writes one response; False when the connection is gone."""
        fail = hdrs.get("x-soak-fail", "")
        self.app.served += 1
        if fail == "reset":
            reset(self.transport)
            return False
        size = 9
        q = target.partition("?")[2]
        for kv in q.split("&"):
            if kv.startswith("size="):
                try:
                    size = max(0, min(int(kv[5:]), 64 << 20))
                except ValueError:
                    pass
        close = hdrs.get("connection", "").lower() == "close" or self.app.stopping
        conn = b"close" if close else b"keep-alive"
        if fail == "500":
            payload = b"injected\n"
            head = (b"HTTP/1.1 500 Internal Server Error\r\nX-Injected: 1\r\n"
                    b"Content-Length: %d\r\nConnection: %s\r\n\r\n" % (len(payload), conn))
            self.transport.write(head + payload)
        else:
            payload = body(size)
            head = (b"HTTP/1.1 200 OK\r\nX-Backend: %s\r\nContent-Length: %d\r\n"
                    b"Connection: %s\r\n\r\n" % (self.app.name, size, conn))
            if fail == "midreset":
                self.transport.write(head + payload[: size // 2])
                t = self.transport
                asyncio.get_running_loop().call_later(0.02, reset, t)
                return False
            self.transport.write(head + payload)
        if close:
            self.transport.close()  # after the buffered response is written
            return False
        return True


class App:
    def __init__(self, name):
        self.name = name.encode()
        self.conns = set()
        self.stopping = False
        self.served = 0

    def stop(self, server):
        self.stopping = True
        server.close()
        for c in list(self.conns):
            if not c.busy and not c.buf and c.pending is None:
                c.transport.close()


async def main():
    port, name = int(sys.argv[1]), sys.argv[2]
    app = App(name)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(app), "127.0.0.1", port,
                                      reuse_address=True, backlog=1024)
    loop.add_signal_handler(signal.SIGTERM, app.stop, server)
    loop.add_signal_handler(signal.SIGINT, app.stop, server)
    while not app.stopping:
        await asyncio.sleep(0.2)
    # A reader that never reads cannot hold the restart forever.
    deadline = loop.time() + 30
    while app.conns and loop.time() < deadline:
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
