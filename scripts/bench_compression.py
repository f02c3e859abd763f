#!/usr/bin/env python3
"""bench_compression.py - one run of scripts/bench-compression.sh (issue 12 §6).

SUBS raw-socket subscribers of one room (offering permessage-deflate or not), then
MESSAGES PUBLISHes of one payload in batches of BATCH, each batch read to the last
frame by every subscriber before the next one is published (so neither run pays for
slow consumers). Prints one JSON object:
  rss_idle_bytes_per_conn   server RSS growth per open, idle subscriber (before pushes)
  rss_after_bytes_per_conn  the same after the pushes (nothing kept per connection)
  wire_bytes_per_delivery   server bytes_written / deliveries during the pushes
  cpu_us_per_delivery       server user+system CPU / deliveries during the pushes
  compressed_frames         frames with RSV1 among those read (all subscribers)
Every frame is counted; subscriber 0 inflates and compares every message it gets, and
all bytes the server wrote must have been read. Standard library only; it talks to
127.0.0.0/8 only and exits by itself.
"""
import argparse
import json
import os
import selectors
import socket
import struct
import sys
import time
import zlib

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Control:
    """A minimal RESP client (blocking)."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)))
        self.buf = b""

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("control port closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self.line()
        if line[:1] == b"$":
            n = int(line[1:])
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(65536)
            body, self.buf = self.buf[:n], self.buf[n + 2:]
            return body
        if line[:1] == b"-":
            raise RuntimeError(line.decode())
        return line

    def info(self):
        self.send("INFO")
        out = {}
        for l in self.reply().decode().splitlines():
            if ":" in l and not l.startswith("#"):
                k, v = l.split(":", 1)
                out[k] = v
        return out


class Sub:
    __slots__ = ("sock", "buf", "frames", "rsv1", "head_done", "bytes", "keep")

    def __init__(self, sock, keep):
        self.sock = sock
        self.buf = b""
        self.frames = 0
        self.rsv1 = 0
        self.head_done = False
        self.bytes = 0
        self.keep = keep


def parse_frames(sub, payload_check):
    buf = sub.buf
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        ln = b1 & 0x7F
        hl = 2
        if ln == 126:
            if n - pos < 4:
                break
            ln = struct.unpack_from(">H", buf, pos + 2)[0]
            hl = 4
        elif ln == 127:
            if n - pos < 10:
                break
            ln = struct.unpack_from(">Q", buf, pos + 2)[0]
            hl = 10
        if n - pos < hl + ln:
            break
        if b0 & 0x0F in (1, 2):
            sub.frames += 1
            if b0 & 0x40:
                sub.rsv1 += 1
            if sub.keep:
                body = buf[pos + hl:pos + hl + ln]
                if b0 & 0x40:
                    body = zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")
                if body != payload_check:
                    raise RuntimeError("subscriber 0 got a message that is not the payload")
        pos += hl + ln
    sub.buf = buf[pos:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ws")
    ap.add_argument("control")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--subs", type=int, default=10000)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--payload", required=True)
    ap.add_argument("--offer", action="store_true")
    ap.add_argument("--src", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    deadline = time.time() + a.timeout
    payload = open(a.payload, "rb").read()
    host, port = a.ws.rsplit(":", 1)
    ctl = Control(a.control)
    sel = selectors.DefaultSelector()
    extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if a.offer else ""
    request = (
        f"GET /ws?rooms=bench HTTP/1.1\r\nHost: {a.ws}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()

    time.sleep(0.5)
    rss0 = proc_rss(a.pid)
    subs = []
    # Connect in steps of 500 so the listen backlog never overflows.
    for start in range(0, a.subs, 500):
        batch = []
        for i in range(start, min(a.subs, start + 500)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((a.src, 0))
            s.connect((host, int(port)))
            s.sendall(request)
            s.setblocking(False)
            sub = Sub(s, i == 0)
            batch.append(sub)
            sel.register(s, selectors.EVENT_READ, sub)
        waiting = len(batch)
        while waiting:
            if time.time() > deadline:
                sys.exit("bench_compression: handshakes timed out")
            for key, _ in sel.select(5):
                sub = key.data
                if sub.head_done:
                    continue
                chunk = sub.sock.recv(65536)
                if not chunk:
                    sys.exit("bench_compression: connection closed during the handshake")
                sub.buf += chunk
                if b"\r\n\r\n" in sub.buf:
                    head, sub.buf = sub.buf.split(b"\r\n\r\n", 1)
                    head = head.decode().lower()
                    if not head.startswith("http/1.1 101"):
                        sys.exit("bench_compression: refused: " + head.splitlines()[0])
                    agreed = "sec-websocket-extensions: permessage-deflate" in head
                    if agreed != a.offer:
                        sys.exit(f"bench_compression: extension agreed={agreed}, offered={a.offer}")
                    sub.head_done = True
                    waiting -= 1
        subs.extend(batch)
    # Every room join is counted once the dispatcher shows them all.
    while int(ctl.info().get("room_memberships", "0")) < a.subs:
        if time.time() > deadline:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    rss1 = proc_rss(a.pid)

    before = ctl.info()
    cpu0 = proc_cpu(a.pid)
    received_bytes = 0
    want = 0
    for start in range(0, a.messages, a.batch):
        k = min(a.batch, a.messages - start)
        for _ in range(k):
            ctl.send("PUBLISH", "bench", payload)
        for _ in range(k):
            if int(ctl.reply()[1:]) != a.subs:
                sys.exit("bench_compression: a PUBLISH did not reach every subscriber")
        want += k
        behind = sum(1 for s in subs if s.frames < want)
        while behind:
            if time.time() > deadline:
                sys.exit(f"bench_compression: timed out with {behind} subscribers behind")
            for key, _ in sel.select(5):
                sub = key.data
                try:
                    chunk = sub.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not chunk:
                    sys.exit("bench_compression: a subscriber was closed")
                received_bytes += len(chunk)
                was = sub.frames
                sub.buf += chunk
                parse_frames(sub, payload)
                if was < want <= sub.frames:
                    behind -= 1
    cpu1 = proc_cpu(a.pid)
    after = ctl.info()
    time.sleep(1.0)
    rss2 = proc_rss(a.pid)
    deliveries = int(after["deliveries"]) - int(before["deliveries"])
    written = int(after["bytes_written"]) - int(before["bytes_written"])
    if deliveries != a.messages * a.subs:
        sys.exit(f"bench_compression: {deliveries} deliveries, expected {a.messages * a.subs}")
    if written != received_bytes:
        sys.exit(f"bench_compression: server wrote {written} bytes, subscribers read {received_bytes}")
    print(json.dumps({
        "offer": a.offer,
        "subscribers": a.subs,
        "messages": a.messages,
        "payload_bytes": len(payload),
        "deliveries": deliveries,
        "compressed_frames": sum(s.rsv1 for s in subs),
        "wire_bytes_per_delivery": written / deliveries,
        "cpu_us_per_delivery": (cpu1 - cpu0) * 1e6 / deliveries,
        "cpu_seconds": cpu1 - cpu0,
        "rss_idle_bytes_per_conn": (rss1 - rss0) / a.subs,
        "rss_after_bytes_per_conn": (rss2 - rss0) / a.subs,
    }))
    for s in subs:
        s.sock.close()


if __name__ == "__main__":
    main()
