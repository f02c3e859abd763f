#!/usr/bin/env python3
"""bench-upgrade.py — the upgrade benchmark's client (run by scripts/bench-upgrade.sh).

Starts the server itself (loopback, free ports), opens CONNS WebSocket connections
(PROBES of them in room "probe", the rest idle in 100 rooms), publishes to "probe" at a
steady RATE on the control port without waiting for replies, triggers an upgrade with
SIGUSR2 and measures:

  * the longest pause in delivery: the largest publish-to-arrival latency of any probe
    message (messages published while the old process is frozen wait in the control
    socket and arrive once the new process runs);
  * the freeze and the time per handed-over connection, from the old process's log;
  * the peak memory (VmRSS) of the old and the new process, sampled every 10 ms.

Then it checks that nothing was lost or duplicated (every probe got every message once,
in order), that no connection was dropped (a final BROADCAST reaches all of them, none
saw EOF) and that INFO counts are the same. It talks only to 127.0.0.1 and stops only
the processes it started (the old one by its PID, the new one by the PID INFO reports).
Prints one JSON object on stdout; exit status 0 if every check passed, 1 if not.
"""

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

CONNS = int(os.environ.get("CONNS", "19000"))
PROBES = int(os.environ.get("PROBES", "50"))
RATE = int(os.environ.get("RATE", "200"))
THREADS = os.environ.get("THREADS", "2")
SERVER_BIN = os.environ.get("SERVER_BIN", "target/release/wspush")
SERVER_ARGS = os.environ.get("SERVER_ARGS", "").split()
BEFORE = float(os.environ.get("BEFORE", "2"))
AFTER = float(os.environ.get("AFTER", "3"))
DEADLINE = time.monotonic() + float(os.environ.get("DURATION", "300"))


def log(*a):
    print("bench-upgrade:", *a, file=sys.stderr, flush=True)


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid):
    """Child PIDs of pid: from /proc/PID/task/*/children when the kernel has it."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        return out
    except OSError:
        pass
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                if int(rest[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Control:
    def __init__(self, addr):
        self.s = socket.create_connection(addr)
        self.f = self.s.makefile("rb")

    def reply(self):
        line = self.f.readline()
        if line[:1] == b"$":
            n = int(line[1:])
            data = self.f.read(n + 2)[:-2] if n >= 0 else None
            return data
        return line.strip().decode()

    def cmd(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()

    def info(self):
        text = self.cmd("INFO").decode()
        return dict(l.split(":", 1) for l in text.split("\r\n") if ":" in l)


class Conn:
    __slots__ = ("s", "buf", "probe", "got", "final", "ended")

    def __init__(self, s, probe):
        self.s, self.buf, self.probe = s, b"", probe
        self.got, self.final, self.ended = [], False, False


def handshake(addr, query):
    s = socket.create_connection(addr)
    s.sendall(
        (
            f"GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:100])
    s.setblocking(False)
    return s, head.split(b"\r\n\r\n", 1)[1]


def frames(c):
    """Yields the payloads of the complete frames in c.buf."""
    b = c.buf
    pos = 0
    while len(b) - pos >= 2:
        n = b[pos + 1] & 0x7F
        h = 2
        if n == 126:
            if len(b) - pos < 4:
                break
            n, h = int.from_bytes(b[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if len(b) - pos < 10:
                break
            n, h = int.from_bytes(b[pos + 2 : pos + 10], "big"), 10
        if len(b) - pos < h + n:
            break
        op = b[pos] & 0x0F
        yield op, b[pos + h : pos + h + n]
        pos += h + n
    c.buf = b[pos:]


def main():
    env = dict(os.environ, RUST_LOG="info")
    err = open(os.environ.get("SERVER_LOG", "/tmp/bench-upgrade-server.log"), "w")
    cmd = [SERVER_BIN, "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--threads", THREADS]
    cmd += ["--ping-interval", "0"] + SERVER_ARGS
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
    line = srv.stdout.readline().decode()
    f = dict(w.split("=", 1) for w in line.split() if "=" in w)
    host, port = f["ws"].rsplit(":", 1)
    ws = (host, int(port))
    host, port = f["control"].rsplit(":", 1)
    ctl_addr = (host, int(port))
    old_pid = srv.pid
    new_pid = None
    ok = True
    try:
        sel = selectors.DefaultSelector()
        conns = []
        t0 = time.monotonic()
        for i in range(CONNS):
            probe = i < PROBES
            room = "probe" if probe else f"r{i % 100}"
            s, rest = handshake(ws, f"?user=c{i}&rooms={room}")
            c = Conn(s, probe)
            c.buf = rest
            conns.append(c)
            sel.register(s, selectors.EVENT_READ, c)
        log(f"{CONNS} connections open in {time.monotonic() - t0:.1f}s")
        ctl = Control(ctl_addr)
        while int(ctl.info()["connected_clients"]) != CONNS:
            time.sleep(0.1)
        before = ctl.info()

        # The publisher: steady rate, never waits for a reply; a thread reads them.
        pub = socket.create_connection(ctl_addr)
        pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = []
        replies = []
        stop = threading.Event()

        def publish():
            k = 0
            start = time.monotonic()
            while not stop.is_set():
                now = time.monotonic_ns()
                pub.sendall(resp("PUBLISH", "probe", f"{k} {now}"))
                sent.append(now)
                k += 1
                due = start + k / RATE
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)

        def read_replies():
            f = pub.makefile("rb")
            while len(replies) < len(sent) or not stop.is_set():
                line = f.readline()
                if not line:
                    break
                replies.append(line.strip())

        threads = [threading.Thread(target=publish), threading.Thread(target=read_replies, daemon=True)]
        for t in threads:
            t.start()

        peak = {"old": 0, "new": 0, "sum": 0}
        sampling = threading.Event()

        def sample():
            nonlocal new_pid
            while not sampling.is_set():
                o = rss(old_pid)
                if new_pid is None:
                    kids = children(old_pid)
                    if kids:
                        new_pid = kids[0]
                if new_pid is None and srv.poll() is not None:
                    new_pid = int(Control(ctl_addr).info()["process_id"])
                n = rss(new_pid) if new_pid else 0
                peak["old"] = max(peak["old"], o)
                peak["new"] = max(peak["new"], n)
                peak["sum"] = max(peak["sum"], o + n)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)

        def pump(until):
            while time.monotonic() < until:
                for key, _ in sel.select(timeout=0.01):
                    c = key.data
                    try:
                        data = c.s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        c.ended = True
                        sel.unregister(c.s)
                        continue
                    arrived = time.monotonic_ns()
                    c.buf += data
                    for op, p in frames(c):
                        if op == 8:
                            c.ended = True
                        elif p == b"FINAL":
                            c.final = True
                        elif c.probe and op == 1:
                            k, at = p.split()
                            c.got.append((int(k), arrived - int(at)))

        pump(time.monotonic() + BEFORE)
        sampler.start()
        t_up = time.monotonic()
        os.kill(old_pid, signal.SIGUSR2)
        log("SIGUSR2 sent")
        while srv.poll() is None and time.monotonic() < DEADLINE:
            pump(time.monotonic() + 0.05)
        status = srv.poll()
        log(f"old process exited with {status} after {time.monotonic() - t_up:.2f}s")
        pump(time.monotonic() + AFTER)
        sampling.set()
        sampler.join()
        stop.set()
        threads[0].join()
        pump(time.monotonic() + 1)

        ctl2 = Control(ctl_addr)
        after = ctl2.info()
        new_pid = int(after["process_id"])
        ctl2.cmd("BROADCAST", "FINAL")
        until = time.monotonic() + 60
        while time.monotonic() < until and not all(c.final or c.ended for c in conns):
            pump(time.monotonic() + 0.2)

        problems = []
        if status != 0:
            problems.append(f"old process exit status {status}")
        if new_pid == old_pid:
            problems.append("no new process")
        ended = sum(c.ended for c in conns)
        missing_final = sum(not c.final for c in conns)
        if ended:
            problems.append(f"{ended} connections ended")
        if missing_final:
            problems.append(f"{missing_final} connections did not get the final broadcast")
        n = len(sent)
        lost = dup = 0
        pause = 0
        for c in conns:
            if not c.probe:
                continue
            ks = [k for k, _ in c.got]
            if ks != list(range(n)):
                lost += len(set(range(n)) - set(ks))
                dup += len(ks) - len(set(ks))
                if not lost and not dup:
                    problems.append("a probe got messages out of order")
            if c.got:
                pause = max(pause, max(l for _, l in c.got))
        if lost or dup:
            problems.append(f"{lost} messages lost, {dup} duplicated")
        bad_replies = [r for r in replies if r != b":%d" % PROBES]
        if len(replies) != n or bad_replies:
            problems.append(f"{len(replies)} replies for {n} publishes; unexpected: {bad_replies[:3]}")
        for key in ("connected_clients", "rooms", "room_memberships", "users"):
            if before.get(key) != after.get(key):
                problems.append(f"INFO {key}: {before.get(key)} before, {after.get(key)} after")

        err.flush()
        text = open(err.name).read()

        def dur(s):
            m = re.match(r"([0-9.]+)(ns|µs|us|ms|s)", s)
            if not m:
                return None
            v = float(m.group(1))
            return v * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]

        frozen = re.search(r"upgrade: frozen for (\S+) \((\d+) connections", text)
        took = re.search(r"took (\d+) connections and (\d+) control clients in (\S+);", text)
        frozen_ms = dur(frozen.group(1)) if frozen else None
        total_ms = dur(took.group(3)) if took else None
        handed = int(frozen.group(2)) if frozen else 0
        per_conn_us = frozen_ms * 1000 / handed if frozen_ms and handed else None
        result = {
            "connections": CONNS,
            "handed_over": handed,
            "publish_rate": RATE,
            "published": n,
            "longest_pause_ms": round(pause / 1e6, 1),
            "freeze_ms": frozen_ms,
            "upgrade_total_ms": total_ms,
            "per_connection_us": round(per_conn_us, 2) if per_conn_us else None,
            "extrapolated_pause_1M_ms": round(per_conn_us * 1e6 / 1000) if per_conn_us else None,
            "peak_rss_old_mib": round(peak["old"] / 2**20, 1),
            "peak_rss_new_mib": round(peak["new"] / 2**20, 1),
            "peak_rss_both_mib": round(peak["sum"] / 2**20, 1),
            "lost": lost,
            "duplicated": dup,
            "reconnects": ended,
            "problems": problems,
        }
        print(json.dumps(result))
        ok = not problems
    finally:
        for pid in (new_pid, old_pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        try:
            srv.wait(timeout=15)
        except subprocess.TimeoutExpired:
            srv.kill()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
