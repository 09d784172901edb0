#!/usr/bin/env python3
"""The counted clients of bench/soak.sh: one asyncio process, until SIGINT/SIGTERM.

    soak_client.py PORT STATS_JSON FAILURES_JSONL

Every request is counted once as `sent` when its first byte is written, and ends as exactly
one of: `ok` (200, whole body), `injected` (the failure it asked the backend for, see
soak_backend.py), `unexpected` (anything else: reset, timeout, a 5xx nobody asked for, a
short body), or `aborted` (the client itself walked away, by design). Each kind of client
uses its own path, so that the gateway's access log can be counted per kind as well.

Clients (counts and pauses from the environment, defaults in brackets):
  ka          SOAK_KA [8] keep-alive connections, a request each SOAK_KA_MS [50] ms; 10% POST
              with a 2 KB body; 1% ask for a failure (500, reset or midreset in turn)
  new         SOAK_NEW [4] clients, one connection per request (`Connection: close`) each
              SOAK_NEW_MS [100] ms; 1% ask for a failure
  abort_head  sends half a request head, then closes (each second)
  abort_body  sends a POST head and a quarter of its body, then closes (each second)
  abort_resp  asks for 1 MB, reads 16 KB, then closes (each second)
  slow_head   SOAK_SLOW [2] clients sending their head in 6 pieces 300 ms apart
  slow_read   SOAK_SLOW [2] clients reading a 2 MB body at about 320 KB/s (small receive buffer)
Sources are 127.0.X.1 for varying X, so that ip_hash spreads them over the servers.
On SIGINT/SIGTERM no new request starts; the final figures are written once those in flight end.
"""
import asyncio
import json
import os
import random
import signal
import socket
import sys
import time

TIMEOUT = 30.0
KINDS = ["ka", "new", "abort_head", "abort_body", "abort_resp", "slow_head", "slow_read"]
MARKS = ["500", "reset", "midreset"]


class Stats:
    def __init__(self, path, fail_path):
        self.path = path
        self.fail_file = open(fail_path, "a", buffering=1)
        self.k = {k: {"sent": 0, "ok": 0, "injected": 0, "unexpected": 0, "aborted": 0}
                  for k in KINDS}
        self.marked = {m: 0 for m in MARKS}
        self.inflight = 0

    def sent(self, kind):
        self.k[kind]["sent"] += 1

    def end(self, kind, outcome, detail=None):
        self.k[kind][outcome] += 1
        if outcome == "unexpected":
            rec = {"t": round(time.time(), 3), "kind": kind, "detail": detail}
            self.fail_file.write(json.dumps(rec) + "\n")

    def write(self, final=False):
        tot = {f: sum(v[f] for v in self.k.values())
               for f in ("sent", "ok", "injected", "unexpected", "aborted")}
        doc = {"t": time.time(), "final": final, "total": tot, "kinds": self.k,
               "marked": self.marked, "inflight": self.inflight}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)


class Failed(Exception):
    pass


def source():
    return "127.0.%d.1" % random.randint(1, 250)


async def connect(port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source(), 0))
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), TIMEOUT)
    except (OSError, asyncio.TimeoutError) as e:
        s.close()
        raise Failed("connect: %r" % e)
    return await asyncio.open_connection(sock=s)


async def read_head(reader):
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    except asyncio.IncompleteReadError as e:
        raise Failed("closed before a response (%d bytes)" % len(e.partial))
    except asyncio.TimeoutError:
        raise Failed("timeout waiting for the response head")
    except (OSError, asyncio.LimitOverrunError) as e:
        raise Failed("reading the response head: %r" % e)
    lines = raw.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise Failed("bad status line %r" % lines[0][:80])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k:
            hdrs[k.strip().lower()] = v.strip()
    return status, hdrs


async def read_body(reader, hdrs, pace=None):
    """Reads the whole body; pace = (chunk, seconds) reads slowly. Returns its length."""
    n = 0
    try:
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
                size = int(line.split(b";")[0], 16)
                data = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
                n += size
                if size == 0:
                    return n
                del data
        want = int(hdrs.get("content-length", "0"))
        while n < want:
            step = min(want - n, pace[0] if pace else 1 << 20)
            data = await asyncio.wait_for(reader.readexactly(step), TIMEOUT)
            n += len(data)
            if pace:
                await asyncio.sleep(pace[1])
        return n
    except asyncio.IncompleteReadError as e:
        raise Failed("body cut after %d bytes" % (n + len(e.partial)))
    except asyncio.TimeoutError:
        raise Failed("timeout in the body after %d bytes" % n)
    except (OSError, ValueError) as e:
        raise Failed("reading the body after %d bytes: %r" % (n, e))


def request(method, path, mark=None, close=False, body_len=0, extra=b""):
    h = b"%s %s HTTP/1.1\r\nHost: soak\r\nUser-Agent: soak\r\n" % (method.encode(), path.encode())
    if mark:
        h += b"X-Soak-Fail: %s\r\n" % mark.encode()
    if close:
        h += b"Connection: close\r\n"
    if method == "POST":
        h += b"Content-Length: %d\r\n" % body_len
    return h + extra + b"\r\n" + b"p" * body_len


def judge(mark, status, hdrs, got, want):
    """Outcome of a finished exchange: 'ok', 'injected' or an error text."""
    if mark is None:
        if status == 200 and got == want:
            return "ok"
        return "status %d, %d of %d body bytes" % (status, got, want)
    if mark == "500":
        return "injected" if status == 500 and hdrs.get("x-injected") == "1" else \
            "asked for 500, got %d (x-injected %r)" % (status, hdrs.get("x-injected"))
    if mark == "reset":
        return "injected" if status == 502 else "asked for reset, got %d" % status
    return "injected" if (status, got) != (200, want) else "asked for midreset, got it whole"


class Runner:
    def __init__(self, port, stats):
        self.port = port
        self.stats = stats
        self.stopping = False
        self.markn = 0

    def mark(self):
        if random.random() < 0.01:
            self.markn += 1
            m = MARKS[self.markn % len(MARKS)]
            self.stats.marked[m] += 1
            return m
        return None

    async def pause(self, ms):
        await asyncio.sleep(ms / 1000.0 * random.uniform(0.5, 1.5))

    async def exchange(self, kind, writer, reader, req, mark, want, pace=None):
        """Sends req, reads the answer, records the outcome. Returns keep-alive."""
        st = self.stats
        st.sent(kind)
        st.inflight += 1
        try:
            try:
                writer.write(req)
                await asyncio.wait_for(writer.drain(), TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                raise Failed("sending: %r" % e)
            status, hdrs = await read_head(reader)
            try:
                got = await read_body(reader, hdrs, pace)
            except Failed as e:
                if mark == "midreset" or mark == "reset":
                    st.end(kind, "injected")
                    return False
                raise Failed("status %d, %s" % (status, e))
            verdict = judge(mark, status, hdrs, got, want)
            if verdict in ("ok", "injected"):
                st.end(kind, verdict)
            else:
                st.end(kind, "unexpected", verdict)
            return hdrs.get("connection", "").lower() != "close"
        except Failed as e:
            if mark == "midreset" or (mark == "reset" and "timeout" not in str(e)):
                st.end(kind, "injected")
            else:
                st.end(kind, "unexpected", str(e))
            return False
        finally:
            st.inflight -= 1

    async def ka(self, i):
        reader = writer = None
        n = 0
        while not self.stopping:
            if writer is None:
                try:
                    reader, writer = await connect(self.port)
                except Failed as e:
                    self.stats.sent("ka")
                    self.stats.end("ka", "unexpected", str(e))
                    await self.pause(200)
                    continue
            n += 1
            mark = self.mark()
            if random.random() < 0.1:
                req = request("POST", "/ka?c=%d&n=%d" % (i, n), mark, body_len=2048)
            else:
                req = request("GET", "/ka?c=%d&n=%d" % (i, n), mark)
            keep = await self.exchange("ka", writer, reader, req, mark, 9)
            if not keep:
                writer.close()
                writer = None
            await self.pause(float(os.environ.get("SOAK_KA_MS", 50)))
        if writer is not None:
            writer.close()

    async def new(self, i):
        n = 0
        while not self.stopping:
            n += 1
            mark = self.mark()
            try:
                reader, writer = await connect(self.port)
            except Failed as e:
                self.stats.sent("new")
                self.stats.end("new", "unexpected", str(e))
            else:
                req = request("GET", "/new?c=%d&n=%d" % (i, n), mark, close=True)
                await self.exchange("new", writer, reader, req, mark, 9)
                writer.close()
            await self.pause(float(os.environ.get("SOAK_NEW_MS", 100)))

    async def walk_away(self, kind, send, read=0):
        """Sends part of a request (or reads part of a response), then closes."""
        st = self.stats
        try:
            reader, writer = await connect(self.port)
        except Failed as e:
            st.sent(kind)
            st.end(kind, "unexpected", str(e))
            return
        st.sent(kind)
        try:
            writer.write(send)
            await asyncio.wait_for(writer.drain(), TIMEOUT)
            if read:
                status, hdrs = await read_head(reader)
                if status != 200:
                    st.end(kind, "unexpected", "status %d before walking away" % status)
                    return
                await asyncio.wait_for(reader.readexactly(read), TIMEOUT)
            else:
                await asyncio.sleep(0.05)
            st.end(kind, "aborted")
        except (Failed, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            st.end(kind, "unexpected", "before walking away: %r" % e)
        finally:
            writer.transport.abort()

    async def aborts(self):
        n = 0
        while not self.stopping:
            n += 1
            head = request("GET", "/abort_head?n=%d" % n)
            await self.walk_away("abort_head", head[: len(head) // 2])
            post = request("POST", "/abort_body?n=%d" % n, body_len=4096)
            await self.walk_away("abort_body", post[: len(post) - 3072])
            await self.walk_away("abort_resp", request("GET", "/abort_resp?size=1048576&n=%d" % n),
                                 read=16384)
            await self.pause(1000)

    async def slow_head(self, i):
        n = 0
        while not self.stopping:
            n += 1
            try:
                reader, writer = await connect(self.port)
            except Failed as e:
                self.stats.sent("slow_head")
                self.stats.end("slow_head", "unexpected", str(e))
                await self.pause(1000)
                continue
            req = request("GET", "/slow_head?c=%d&n=%d" % (i, n), close=True,
                          extra=b"X-Pad: %s\r\n" % (b"s" * 200))
            step = len(req) // 6 + 1
            self.stats.sent("slow_head")
            self.stats.inflight += 1
            try:
                for at in range(0, len(req), step):
                    writer.write(req[at: at + step])
                    await asyncio.wait_for(writer.drain(), TIMEOUT)
                    await asyncio.sleep(0.3)
                status, hdrs = await read_head(reader)
                got = await read_body(reader, hdrs)
                v = judge(None, status, hdrs, got, 9)
                self.stats.end("slow_head", v if v == "ok" else "unexpected",
                               None if v == "ok" else v)
            except (Failed, OSError, asyncio.TimeoutError) as e:
                self.stats.end("slow_head", "unexpected", str(e) or repr(e))
            finally:
                self.stats.inflight -= 1
                writer.close()
            await self.pause(500)

    async def slow_read(self, i):
        n = 0
        size = 2 << 20
        while not self.stopping:
            n += 1
            try:
                reader, writer = await connect(self.port, rcvbuf=32768)
            except Failed as e:
                self.stats.sent("slow_read")
                self.stats.end("slow_read", "unexpected", str(e))
                await self.pause(1000)
                continue
            req = request("GET", "/slow_read?size=%d&c=%d&n=%d" % (size, i, n), close=True)
            await self.exchange("slow_read", writer, reader, req, None, size, pace=(32768, 0.1))
            writer.close()
            await self.pause(500)


async def main():
    port, stats_path, fail_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    stats = Stats(stats_path, fail_path)
    r = Runner(port, stats)
    loop = asyncio.get_running_loop()

    def stop():
        r.stopping = True

    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGTERM, stop)
    env = lambda k, d: int(os.environ.get(k, d))
    tasks = [r.ka(i) for i in range(env("SOAK_KA", 8))]
    tasks += [r.new(i) for i in range(env("SOAK_NEW", 4))]
    tasks += [r.slow_head(i) for i in range(env("SOAK_SLOW", 2))]
    tasks += [r.slow_read(i) for i in range(env("SOAK_SLOW", 2))]
    tasks.append(r.aborts())
    tasks = [asyncio.ensure_future(t) for t in tasks]

    async def report():
        while True:
            stats.write()
            await asyncio.sleep(1)

    rep = asyncio.ensure_future(report())
    await asyncio.gather(*tasks)
    rep.cancel()
    stats.write(final=True)


if __name__ == "__main__":
    asyncio.run(main())
