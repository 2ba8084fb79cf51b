"""The python3-websockets echo upstream of the interop test (run with /usr/bin/python3, which has
Debian's python3-websockets): no compression. Prints "PORT <n>" once listening on 127.0.0.1:0,
then one JSON line per accepted session: its path, the Sec-WebSocket-Extensions it was offered
and the extensions it agreed (always none here). Echoes text and binary; exits on SIGTERM."""

import asyncio
import json
import signal
import sys

import websockets


async def handler(ws):
    offered = ",".join(ws.request_headers.get_all("Sec-WebSocket-Extensions"))
    print(json.dumps({"path": ws.path, "offered": offered,
                      "agreed": [e.name for e in ws.extensions]}), flush=True)
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def main():
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with websockets.serve(handler, "127.0.0.1", 0, compression=None, max_size=None,
                                ping_interval=None) as server:
        print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
