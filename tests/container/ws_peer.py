#!/usr/bin/python3
"""WebSocket peers for tests/container/run.sh (Debian's python3-websockets, hence /usr/bin/python3).

  ws_peer.py serve            echo upstream on 127.0.0.1, port picked by the kernel; prints
                              "PORT <n>" once listening, runs until SIGTERM/SIGINT
  ws_peer.py check URL        connects to URL, checks text and binary messages come back
                              unchanged; exit 0 on success, 1 with a reason otherwise
  ws_peer.py free-port        prints a free TCP port on 127.0.0.1
"""
import asyncio
import os
import signal
import socket
import sys

import websockets

TIMEOUT = 10  # seconds, for every single network step of `check`


async def serve():
    async def echo(ws, path=None):
        async for message in ws:
            await ws.send(message)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await stop


async def check(url):
    messages = ["hello through the container", "ü" * 1000, os.urandom(70000), b""]
    async with websockets.connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                                  max_size=None) as ws:
        for sent in messages:
            await asyncio.wait_for(ws.send(sent), TIMEOUT)
            got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if got != sent:
                raise AssertionError(f"echo mismatch: sent {type(sent).__name__} of {len(sent)}, "
                                     f"got {type(got).__name__} of {len(got)}")
    print(f"echo OK: {len(messages)} messages through {url}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "serve":
        asyncio.run(serve())
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        try:
            asyncio.run(check(sys.argv[2]))
        except Exception as e:  # any failure is a test failure with its reason
            print(f"echo FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
    elif len(sys.argv) == 2 and sys.argv[1] == "free-port":
        free_port()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
