"""upgate end to end: messages of every framing size echo exactly through the tunnel, the
upstream's subprotocol reaches the client, forwarded headers reach the upstream, bytes sent in
the same write as the head are delivered, and the access log describes the session."""

import asyncio
import json
import os
import re
import unittest

import websockets

import harness
from harness import GatewayTestCase, EchoUpstream, RawClient, header_values

SIZES = [0, 125, 126, 65535, 65536, 16 * 1024 * 1024]


def text_payload(n):
    # ASCII so that the byte size is exactly n; the pattern makes reordering visible.
    return ("0123456789abcdefghijklmnopqrstuvwxyz" * (n // 36 + 1))[:n]


class EchoTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream(subprotocols=["chat.v1"]))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}],
            listeners=[{"name": "public", "address": "127.0.0.1:0"},
                       {"name": "second", "address": "127.0.0.1:0"}]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.echo.errors, [])

    def test_text_and_binary_sizes_echo_exactly(self):
        async def run():
            async with websockets.connect(self.gw.url("/chat/sizes"), max_size=None,
                                          compression=None, ping_interval=None,
                                          open_timeout=10) as ws:
                for n in SIZES:
                    text = text_payload(n)
                    await ws.send(text)
                    got = await asyncio.wait_for(ws.recv(), 30)
                    self.assertIsInstance(got, str, "text message of %d bytes" % n)
                    self.assertEqual(len(got), n, "text message of %d bytes" % n)
                    self.assertTrue(got == text, "text message of %d bytes differs" % n)
                    data = os.urandom(n)
                    await ws.send(data)
                    got = await asyncio.wait_for(ws.recv(), 30)
                    self.assertIsInstance(got, bytes, "binary message of %d bytes" % n)
                    self.assertEqual(len(got), n, "binary message of %d bytes" % n)
                    self.assertTrue(got == data, "binary message of %d bytes differs" % n)
                # Non-ASCII text survives too.
                await ws.send("h\u00e9llo \u4e16\u754c \U0001F600")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10),
                                 "h\u00e9llo \u4e16\u754c \U0001F600")

        self.run_async(run(), timeout=120)

    def test_subprotocol_chosen_by_upstream_reaches_client(self):
        async def run():
            async with websockets.connect(self.gw.url("/chat/proto"),
                                          subprotocols=["chat.v2", "chat.v1"], compression=None,
                                          ping_interval=None, open_timeout=10) as ws:
                self.assertEqual(ws.subprotocol, "chat.v1")
                await ws.send("x")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "x")
                return ws.local_address

        local = self.run_async(run(), timeout=30)
        req = [r for r in self.echo.wait_requests(1) if r["path"] == "/chat/proto"]
        self.assertEqual(len(req), 1)
        offered = ",".join(header_values(req[0]["headers"], "Sec-WebSocket-Protocol"))
        self.assertEqual([p.strip() for p in offered.split(",")], ["chat.v2", "chat.v1"],
                         "the client's offer should reach the upstream unchanged")
        self.assertEqual(req[0]["subprotocol"], "chat.v1")

    def test_forwarded_headers_and_target_reach_upstream(self):
        async def run():
            async with websockets.connect(self.gw.url("/chat/fwd?room=7&x=%2F"),
                                          compression=None, ping_interval=None,
                                          open_timeout=10) as ws:
                await ws.send("hi")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "hi")

        self.run_async(run(), timeout=30)
        reqs = [r for r in self.echo.wait_requests(1) if r["path"].startswith("/chat/fwd")]
        self.assertEqual(len(reqs), 1)
        req = reqs[0]
        self.assertEqual(req["path"], "/chat/fwd?room=7&x=%2F",
                         "request target should be forwarded unchanged")
        h = req["headers"]
        xff = header_values(h, "X-Forwarded-For")
        self.assertTrue(xff, "no X-Forwarded-For in %r" % h)
        self.assertEqual(xff[-1].split(",")[-1].strip(), "127.0.0.1", "X-Forwarded-For %r" % xff)
        self.assertEqual([v.strip().lower() for v in header_values(h, "X-Forwarded-Proto")],
                         ["http"], "X-Forwarded-Proto in %r" % h)
        fwd = ",".join(header_values(h, "Forwarded"))
        self.assertRegex(fwd, r'(?i)for="?127\.0\.0\.1', "Forwarded: %r" % fwd)
        self.assertRegex(fwd, r"(?i)proto=http\b", "Forwarded: %r" % fwd)
        self.assertTrue(header_values(h, "Host"), "no Host header at the upstream")

    def test_bytes_pipelined_after_head_are_delivered(self):
        with RawClient(self.gw.addr()) as c:
            key = harness.ws_key()
            head = harness.ws_request("/chat/pipelined", key=key)
            frame = harness.encode_frame(harness.OP_TEXT, b"hello-pipelined")
            frame2 = harness.encode_frame(harness.OP_BINARY, bytes(range(256)) * 4)
            c.send(head + frame + frame2)  # one write: head and two frames
            resp = c.read_response()
            self.assertEqual(resp.status, 101, resp)
            self.assertEqual(resp.header("Sec-WebSocket-Accept"), harness.accept_key(key))
            c.frames.feed(c.pending)
            fin, op, payload = c.recv_frame()
            self.assertEqual((fin, op, payload), (True, harness.OP_TEXT, b"hello-pipelined"))
            fin, op, payload = c.recv_frame()
            self.assertEqual((fin, op, payload), (True, harness.OP_BINARY, bytes(range(256)) * 4))
            # The tunnel keeps working after the pipelined bytes.
            c.send_frame(harness.OP_TEXT, b"after")
            self.assertEqual(c.recv_frame()[2], b"after")
            c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
            fin, op, payload = c.recv_frame()
            self.assertEqual(op, harness.OP_CLOSE)
            _, how = c.read_until_closed(10)
            self.assertIn(how, ("eof", "reset"), "connection should end after the close handshake")

    def test_access_log_line(self):
        sent = 3 * 1000

        async def run():
            async with websockets.connect(self.gw.url("/chat/log"), compression=None,
                                          ping_interval=None, open_timeout=10) as ws:
                for i in range(3):
                    await ws.send("m" * 1000)
                    await asyncio.wait_for(ws.recv(), 10)
                return ws.local_address

        local = self.run_async(run(), timeout=30)
        entry = self.gw.access_log_for_client(local, timeout=5)
        for key in ("ts", "id", "client", "listener", "route", "upstream", "status", "bytes_in",
                    "bytes_out", "duration_ms", "close"):
            self.assertIn(key, entry, "access-log field %r missing in %r" % (key, entry))
        self.assertEqual(entry["status"], 101, entry)
        self.assertEqual(entry["listener"], "public", entry)
        self.assertEqual(entry["route"], "chat", entry)
        self.assertEqual(entry["upstream"], harness.hostport(self.echo.addr), entry)
        self.assertIsInstance(entry["bytes_in"], int, entry)
        self.assertIsInstance(entry["bytes_out"], int, entry)
        # Frames carry payload plus headers (and the close frames): at least the payload.
        self.assertGreaterEqual(entry["bytes_in"], sent, entry)
        self.assertGreaterEqual(entry["bytes_out"], sent, entry)
        self.assertLess(entry["bytes_in"], sent + 200, entry)
        self.assertLess(entry["bytes_out"], sent + 200, entry)
        self.assertGreaterEqual(entry["duration_ms"], 0, entry)
        self.assertIsInstance(entry["close"], str, entry)
        ids = [e.get("id") for e in self.gw.access_log()]
        self.assertEqual(ids.count(entry["id"]), 1, "session ids should be unique: %r" % ids)

    def test_second_listener_from_ready_file(self):
        async def run():
            async with websockets.connect(self.gw.url("/chat/second", listener="second"),
                                          compression=None, ping_interval=None,
                                          open_timeout=10) as ws:
                await ws.send("via second")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "via second")
                return ws.local_address

        self.assertNotEqual(self.gw.addr("public"), self.gw.addr("second"))
        local = self.run_async(run(), timeout=30)
        entry = self.gw.access_log_for_client(local, timeout=5)
        self.assertEqual(entry["listener"], "second", entry)

    def test_default_client_compression_offer(self):
        # Browsers always offer permessage-deflate; whatever the gateway does with the offer,
        # messages must survive (upstream here also supports deflate).
        async def run():
            async with websockets.connect(self.gw.url("/chat/deflate"), ping_interval=None,
                                          max_size=None, open_timeout=10) as ws:
                for msg in ["a" * 10000, os.urandom(70000), "z"]:
                    await ws.send(msg)
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 10), msg)

        self.run_async(run(), timeout=30)


class DebugLogTest(GatewayTestCase):
    def test_stderr_lines_carry_session_id(self):
        echo = self.start_peer(EchoUpstream())
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}],
            log={"level": "debug", "access_log": True}))
        with RawClient(gw.addr()) as c:
            c.handshake("/chat")
            c.send_frame(harness.OP_TEXT, b"x")
            self.assertEqual(c.recv_frame()[2], b"x")
            local = c.local
        entry = gw.access_log_for_client(local)
        session_id = json.dumps(entry["id"])

        def lines_with_id():
            out = []
            for line in gw.stderr_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and json.dumps(rec.get("id")) == session_id:
                    out.append(rec)
            return out

        try:
            harness.poll_until(lines_with_id, 5, what="stderr lines with the session id")
        except TimeoutError:
            self.fail("no structured stderr line with \"id\": %s at level debug:\n%s"
                      % (session_id, gw.stderr_tail()))


class CompressionTest(GatewayTestCase):
    """Upstream that negotiates permessage-deflate: the negotiation must be end to end."""

    def test_deflate_negotiated_end_to_end(self):
        echo = self.start_peer(EchoUpstream(compression="deflate"))
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}]))

        async def run():
            async with websockets.connect(gw.url("/chat"), ping_interval=None, max_size=None,
                                          open_timeout=10) as ws:
                for msg in ["a" * 10000, os.urandom(70000), "z" * 5]:
                    await ws.send(msg)
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 10), msg)

        self.run_async(run(), timeout=30)
        self.assertEqual(echo.errors, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
