#!/usr/bin/python3
"""Idle TLS session memory: opens N wss:// sessions through upgate and holds them.

Starts an echo upstream (tests/bench/echo_server, or the Python demo echo server), upgate with
one worker and a TLS listener (ECDSA P-256 certificate made here with openssl, TLS 1.3), opens N
WebSocket sessions over TLS from this process, waits until all are established and idle, and
reports upgate's user-space memory per idle TLS session: (PSS with N sessions - PSS before) / N,
from /proc/PID/smaps_rollup. Then the same with plain ws:// for comparison.

  /usr/bin/python3 tests/bench/idle_tls.py --upgate build/gateway/upgate --sessions 2000

The hard limit of 20,000 open files here caps a proxy near 9,800 sessions (two descriptors each);
this script also holds one descriptor per session itself.
"""
import argparse
import asyncio
import base64
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def pss_kib(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss line for %d" % pid)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def open_session(host, port, ctx, i):
    # Spread source addresses over 127.0.0.x so ephemeral ports never run out.
    local = ("127.0.0.%d" % (2 + i % 200), 0)
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, local_addr=local,
                                                   server_hostname="localhost" if ctx else None)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(("GET /idle HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError("no 101: %r" % head[:80])
    return writer


async def measure(pid, host, port, ctx, n):
    await asyncio.sleep(0.5)
    before = pss_kib(pid)
    writers = []
    for start in range(0, n, 200):
        writers += await asyncio.gather(
            *[open_session(host, port, ctx, i) for i in range(start, min(n, start + 200))])
    await asyncio.sleep(2.0)  # let handshake buffers go (SSL_MODE_RELEASE_BUFFERS)
    after = pss_kib(pid)
    for w in writers:
        w.close()
    return before, after


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upgate", default=os.path.join(ROOT, "build/gateway/upgate"))
    ap.add_argument("--sessions", type=int, default=2000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(a.sessions, 9000)
    with tempfile.TemporaryDirectory() as tmp:
        key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"],
                       check=True, capture_output=True)
        echo_port = free_port()
        echo = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "docker/demo/echo_server.py"),
                                 "--port", str(echo_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conf = os.path.join(tmp, "u.yaml")
        with open(conf, "w") as f:
            f.write("workers: 1\ndrain_timeout: 1s\nlog: { level: warn, access_log: false }\n"
                    "listeners:\n  - { name: plain, address: 127.0.0.1:0 }\n"
                    "  - name: tls\n    address: 127.0.0.1:0\n"
                    "    tls: { min_version: \"1.3\", certificates: [{ cert: %s, key: %s }] }\n"
                    "upstreams:\n  echo: { endpoints: [127.0.0.1:%d] }\n"
                    "routes:\n  - { name: idle, match: { path_prefix: / }, upstream: echo }\n"
                    % (crt, key, echo_port))
        ready = os.path.join(tmp, "ready")
        gw = subprocess.Popen([a.upgate, "-c", conf, "--ready-file", ready],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(ready):
                if time.monotonic() > deadline:
                    raise RuntimeError("upgate did not start")
                time.sleep(0.05)
            ports = dict(line.split() for line in open(ready).read().splitlines())
            ctx = ssl.create_default_context(cafile=crt)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            results = {}
            for name, c in (("plain", None), ("tls", ctx)):
                host, port = ports[name].rsplit(":", 1)
                before, after = asyncio.run(measure(gw.pid, host, int(port), c, n))
                results[name] = (after - before) / n
                print("%-5s %d idle sessions: upgate PSS %d KiB -> %d KiB: %.1f KiB per session"
                      % (name, n, before, after, results[name]), flush=True)
            print("(the 20,000 open-file hard limit caps one proxy near 9,800 sessions)")
        finally:
            gw.send_signal(signal.SIGTERM)
            gw.wait(15)
            echo.terminate()
            echo.wait(5)


if __name__ == "__main__":
    sys.exit(main())
