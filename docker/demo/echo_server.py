#!/usr/bin/env python3
"""The bundled demo upstream: a WebSocket echo server (Debian's python3-websockets).

`make run` starts it on 127.0.0.1:9001, where conf/upgate.yaml points the `demo` upstream.
Every text or binary message is sent back unchanged; the subprotocols "echo" and "chat" are
accepted when offered.
"""
import argparse
import asyncio
import signal

import websockets


async def echo(ws, path=None):
    async for message in ws:
        await ws.send(message)


async def main(host, port):
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with websockets.serve(echo, host, port, subprotocols=["echo", "chat"], max_size=None):
        print(f"demo echo upstream on ws://{host}:{port}/", flush=True)
        await stop


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    a = p.parse_args()
    asyncio.run(main(a.host, a.port))
