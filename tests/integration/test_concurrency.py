"""200 concurrent sessions x 100 messages each through one gateway (2 workers): every message
arrives complete and in order, and every session gets its own access-log line."""

import asyncio
import os
import random
import time
import unittest

import websockets

import harness
from harness import GatewayTestCase, EchoUpstreamProcess

SESSIONS = 200
MESSAGES = 100
TOTAL_LIMIT = 120.0  # seconds for the whole exchange


class ConcurrencyTest(GatewayTestCase):
    def test_many_sessions_in_order(self):
        echo = self.start_peer(EchoUpstreamProcess())
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}]))
        rng = random.Random(1234)
        sizes = [[rng.choice([0, 1, 17, 125, 126, 1000, 4096, 16000]) for _ in range(MESSAGES)]
                 for _ in range(SESSIONS)]
        opened = []
        received = [0]
        all_open = asyncio.Event()  # (3.10+: binds to the running loop on first use)

        async def session(i):
            # Spread clients over several loopback source addresses (ephemeral ports).
            source = "127.0.0.%d" % (1 + i % 8)
            async with websockets.connect(gw.url("/chat/s%d" % i), compression=None,
                                          max_size=None, ping_interval=None, open_timeout=30,
                                          close_timeout=10, local_addr=(source, 0)) as ws:
                opened.append(ws.local_address)
                if len(opened) == SESSIONS:
                    all_open.set()
                # Every session is open at the same time before any traffic flows.
                await asyncio.wait_for(all_open.wait(), 60)
                # Pipelined half: send everything first, then read in order.
                # Lock-step half: one message in flight at a time.
                pipelined = i % 2 == 0
                expected = []
                for j in range(MESSAGES):
                    tag = "s%d-m%d:" % (i, j)
                    n = sizes[i][j]
                    if j % 2:
                        msg = tag.encode() + os.urandom(n)
                    else:
                        msg = tag + "x" * n
                    expected.append(msg)
                    await ws.send(msg)
                    if not pipelined:
                        got = await asyncio.wait_for(ws.recv(), 30)
                        self.assertEqual(got, msg, "session %d message %d" % (i, j))
                        received[0] += 1
                if pipelined:
                    for j, msg in enumerate(expected):
                        got = await asyncio.wait_for(ws.recv(), 30)
                        if got != msg:
                            self.fail("session %d message %d: got %r..., want %r..."
                                      % (i, j, got[:40], msg[:40]))
                        received[0] += 1
            return i

        async def run():
            results = await asyncio.gather(*(session(i) for i in range(SESSIONS)),
                                           return_exceptions=True)
            failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
            return failures

        started = time.monotonic()
        failures = self.run_async(run(), timeout=TOTAL_LIMIT)
        elapsed = time.monotonic() - started
        print("\n%d sessions x %d messages in %.1fs" % (SESSIONS, MESSAGES, elapsed))
        self.assertGatewayAlive(gw)
        self.assertEqual(failures, [], "%d of %d sessions failed; first: %r"
                         % (len(failures), SESSIONS, failures[:3]))
        self.assertEqual(received[0], SESSIONS * MESSAGES)

        want = {harness.hostport(a) for a in opened}

        def all_logged():
            seen = {e.get("client") for e in gw.access_log() if e.get("status") == 101}
            return want <= seen

        try:
            harness.poll_until(all_logged, 10, what="one access-log line per session")
        except TimeoutError:
            seen = {e.get("client") for e in gw.access_log()}
            self.fail("%d sessions have no access-log line (status 101)" % len(want - seen))


if __name__ == "__main__":
    unittest.main(verbosity=2)
