"""`kind: tcp` routes: upgate answers the WebSocket handshake itself and bridges the client to a
plain TCP upstream (websockify-style). Client data messages become a byte stream; upstream bytes
come back as binary messages; the close handshake is mediated (upstream FIN <-> close frames);
protocol errors get their close codes; keepalive pings the client, and names the service when
a stuck service holds the client back. Clients are Debian's
python3-websockets and hand-written frames; the upstream is a plain TCP server."""

import asyncio
import os
import re
import signal
import socket
import struct
import threading
import time
import unittest

import websockets

import bridge_util
import harness
from harness import GatewayTestCase, RawClient, RefusedPort, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING

IO = 10.0


class TcpUpstream:
    """A TCP server: echoes bytes; on a line "quit" says "bye" and closes, on "reset" resets the
    connection. Records each connection's events: ("data", n), ("eof",)."""

    def __init__(self, slow=False):
        self.slow = slow  # a sink: reads nothing for 2 s, then everything; echoes nothing
        self.sock = None
        self.addr = None
        self.conns = []  # one event list per connection
        self.cond = threading.Condition()
        self.stopping = False

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.slow:  # inherited by accepted sockets: the gateway's queue fills sooner
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()
        threading.Thread(target=self._accept_loop, daemon=True, name="tcp-upstream").start()
        return self

    def _accept_loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            events = []
            with self.cond:
                self.conns.append(events)
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(conn, events), daemon=True).start()

    def _event(self, events, *item):
        with self.cond:
            events.append(item)
            self.cond.notify_all()

    def _serve(self, conn, events):
        conn.settimeout(IO * 3)
        buf = b""
        try:
            if self.slow:
                time.sleep(2.0)  # the gateway holds what the kernel's buffers do not
            while self.slow:
                data = conn.recv(65536)
                if not data:
                    self._event(events, "eof")
                    return
                self._event(events, "data", len(data))
            while True:
                data = conn.recv(65536)
                if not data:
                    self._event(events, "eof")
                    return
                self._event(events, "data", len(data))
                buf = (buf + data)[-16:]
                if buf.endswith(b"quit\n"):
                    conn.sendall(b"bye\n")
                    return
                if buf.endswith(b"reset\n"):  # RST instead of FIN
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(data)
        except OSError as e:
            self._event(events, "error", repr(e))
        finally:
            conn.close()

    def wait_event(self, index, kind, timeout=IO):
        with self.cond:
            ok = self.cond.wait_for(
                lambda: len(self.conns) > index and any(e[0] == kind for e in self.conns[index]),
                timeout)
            if not ok:
                raise AssertionError("upstream connection %d: no %s event in %r"
                                     % (index, kind, self.conns))

    def received(self, index):
        with self.cond:
            return sum(e[1] for e in self.conns[index] if e[0] == "data")

    def stop(self):
        self.stopping = True
        if self.sock:
            self.sock.close()


def ws_connect(url, **kw):
    return websockets.connect(url, compression=None, ping_interval=None, open_timeout=IO,
                              close_timeout=5, max_size=None, **kw)


async def recv_bytes(ws, n):
    """Binary messages until `n` bytes came (one message per upstream read)."""
    got = b""
    while len(got) < n:
        m = await asyncio.wait_for(ws.recv(), IO)
        assert isinstance(m, bytes), "the bridge sends binary messages, got %r" % (m,)
        got += m
    return got


class TcpBridgeTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_class_peer(TcpUpstream())
        cls.refused = cls.start_class_peer(RefusedPort())
        cls.sink = cls.start_class_peer(TcpUpstream(slow=True))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"tcp": {"endpoints": [cls.up.addr]},
                       "gone": {"endpoints": [cls.refused.addr]},
                       "sink": {"endpoints": [cls.sink.addr]}},
            routes=[{"name": "vnc", "match": {"path": "/vnc"}, "kind": "tcp", "upstream": "tcp"},
                    {"name": "alive", "match": {"path": "/alive"}, "kind": "tcp",
                     "upstream": "tcp", "keepalive": {"interval": "300ms", "timeout": "300ms"}},
                    {"name": "gone", "match": {"path": "/gone"}, "kind": "tcp",
                     "upstream": "gone"},
                    {"name": "sink", "match": {"path": "/sink"}, "kind": "tcp",
                     "upstream": "sink"}],
            limits={"max_message_size": "256KiB", "high_water": "8MiB"},
            timeouts={"close": "2s"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def test_messages_become_a_byte_stream_and_back(self):
        async def run():
            async with ws_connect(self.gw.url("/vnc"), subprotocols=["base64", "binary"]) as ws:
                self.assertEqual(ws.subprotocol, "binary")
                await ws.send(b"\x00\x01binary\xff")
                self.assertEqual(await recv_bytes(ws, 9), b"\x00\x01binary\xff")
                await ws.send("t\u00e9xt")  # a text message's UTF-8 bytes go on as bytes
                self.assertEqual(await recv_bytes(ws, 5), "t\u00e9xt".encode())
                data = os.urandom(1 << 20)  # 1 MiB in 64 KiB messages, echoed in reads
                for i in range(0, len(data), 65536):
                    await ws.send(data[i:i + 65536])
                self.assertEqual(await recv_bytes(ws, len(data)), data)
                # A ping is answered by upgate (the upstream has none).
                await asyncio.wait_for(await ws.ping(b"p"), IO)
        self.run_async(run(), timeout=60)

    def test_upstream_fin_becomes_a_1000_close(self):
        async def run():
            async with ws_connect(self.gw.url("/vnc")) as ws:
                await ws.send(b"quit\n")
                self.assertEqual(await recv_bytes(ws, 4), b"bye\n")
                await asyncio.wait_for(ws.wait_closed(), IO)
                return ws.close_code, ws.close_reason
        self.assertEqual(self.run_async(run()), (1000, "upstream closed"))

    def test_an_upstream_reset_is_a_1011_close(self):
        async def run():
            async with ws_connect(self.gw.url("/vnc")) as ws:
                await ws.send(b"reset\n")
                await asyncio.wait_for(ws.wait_closed(), IO)
                return ws.close_code, ws.close_reason
        self.assertEqual(self.run_async(run()), (1011, "upstream connection error"))

    def test_client_close_reaches_the_upstream_as_a_fin(self):
        index = len(self.up.conns)

        async def run():
            async with ws_connect(self.gw.url("/vnc")) as ws:
                await ws.send(b"x")
                await recv_bytes(ws, 1)
                await ws.close(1000, "done")
                return ws.close_code
        self.assertEqual(self.run_async(run()), 1000)
        self.up.wait_event(index, "eof")

    def test_a_quick_close_does_not_cut_off_what_the_upstream_has_not_read(self):
        """The client sends 6 MiB and closes at once, while the service is not reading yet:
        past the kernel's buffers (4 MiB at most here) upgate holds bytes for it when the close
        comes (high_water is 8 MiB, so the client is never paused). Every one of them is
        written before the service's FIN."""
        total = 6 << 20

        async def run():
            async with ws_connect(self.gw.url("/sink")) as ws:
                for i in range(0, total, 65536):
                    await ws.send(b"s" * 65536)
                await ws.close(1000, "done")
        self.run_async(run(), timeout=60)
        self.sink.wait_event(0, "eof", timeout=30)
        self.assertEqual(self.sink.received(0), total)

    def close_after(self, frame_bytes):
        """Raw client: send bytes after the handshake, return the close code received."""
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/vnc")
        c.send(frame_bytes)
        fin, op, payload = c.recv_frame()
        self.assertEqual(op, OP_CLOSE, payload)
        data, how = c.read_until_closed(IO)
        self.assertIn(how, ("eof", "reset"))
        return struct.unpack("!H", payload[:2])[0]

    def test_protocol_errors_get_their_close_codes(self):
        unmasked = harness.encode_frame(OP_BINARY, b"abc", mask=False)
        self.assertEqual(self.close_after(unmasked), 1002)
        bad_utf8 = harness.encode_frame(OP_TEXT, b"\xc3\x28")
        self.assertEqual(self.close_after(bad_utf8), 1007)
        too_big = harness.encode_frame(OP_BINARY, b"x" * (256 * 1024 + 1))
        self.assertEqual(self.close_after(too_big), 1009)

    def test_keepalive_pings_the_client_and_drops_a_silent_one(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/alive")
        fin, op, payload = c.recv_frame(timeout=IO)
        self.assertEqual(op, OP_PING)
        # No answer: a 1001 close and the end, within interval + timeout (and some slack).
        started = time.monotonic()
        fin, op, payload = c.recv_frame(timeout=IO)
        self.assertEqual((op, struct.unpack("!H", payload[:2])[0]), (OP_CLOSE, 1001))
        _, how = c.read_until_closed(IO)
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(time.monotonic() - started, 3.0)

    def test_an_unreachable_upstream_is_a_502_before_any_101(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(harness.ws_request("/gone"))
        self.assertEqual(c.read_response().status, 502)

    def test_a_plain_request_is_told_to_upgrade(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(b"GET /vnc HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.read_response().status, 426)


def silent_service(tc):
    """A listening socket nobody accepts on yet: a TCP service that reads nothing until the test
    accepts (the kernel completes the handshake and buffers what arrives)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tc.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener


def stuck_config(listener, keepalive=None, **overrides):
    """One tcp route, /stuck, to the silent service."""
    route = {"name": "stuck", "match": {"path": "/stuck"}, "kind": "tcp", "upstream": "stuck"}
    if keepalive:
        route["keepalive"] = keepalive
    return harness.make_config(upstreams={"stuck": {"endpoints": [listener.getsockname()]}},
                               routes=[route], **overrides)


class StuckUpstreamTest(GatewayTestCase):
    """A service that stops reading. After the client's close, upgate writes what it holds for
    the service for up to timeouts.half_close, then ends the session and says how many bytes it
    dropped: exactly those the service never got."""

    def setUp(self):
        self.listener = silent_service(self)
        self.gw = self.start_gateway(stuck_config(self.listener, limits={"high_water": "8MiB"},
                                                  timeouts={"half_close": "1s"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def test_bytes_the_service_never_took_are_dropped_and_counted(self):
        total = 6 << 20  # past the kernel's buffers (4 MiB at most here): upgate holds the rest

        async def run():
            async with ws_connect(self.gw.url("/stuck")) as ws:
                for _ in range(0, total, 65536):
                    await ws.send(b"s" * 65536)
                await ws.close(1000, "done")
                return ws.close_code
        self.assertEqual(self.run_async(run(), timeout=60), 1000)
        entry = self.gw.wait_access_log(lambda e: e.get("route") == "stuck", IO,
                                        what="the stuck session's access-log line")
        found = re.search(r"; (\d+) bytes for the upstream dropped: not taken within "
                          r"timeouts.half_close$", entry["close"])
        self.assertIsNotNone(found, entry)
        dropped = int(found.group(1))
        self.assertGreater(dropped, 0, entry)
        # The service reads at last: what the kernel held for it, then upgate's FIN.
        self.listener.settimeout(IO)
        conn, _ = self.listener.accept()
        self.addCleanup(conn.close)
        conn.settimeout(IO)
        got = 0
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            got += len(data)
        self.assertEqual(got + dropped, total)


class DrainWhileHeldBackTest(GatewayTestCase):
    """A drain reaches a client that upgate stopped reading for a service that reads nothing.
    Once upgate's close frame is out, what the client sends goes nowhere, so upgate reads it
    again: the client's reply, behind the data it had sent, ends the session, instead of being
    left unread until timeouts.close and the client blamed for not answering."""

    def test_reply_behind_held_back_data_ends_the_session(self):
        listener = silent_service(self)
        gw = self.start_gateway(stuck_config(
            listener, limits={"high_water": "256KiB"},
            timeouts={"close": "4s", "half_close": "1s"}, drain_timeout="20s",
            admin={"address": "127.0.0.1:0", "token": "t0ken"}))
        admin = bridge_util.Admin(gw, "t0ken")
        c = RawClient(gw.addr())
        self.addCleanup(c.close)
        c.handshake("/stuck")
        frame = harness.encode_frame(OP_BINARY, b"s" * 65536)
        # Send until upgate stops reading and every buffer on the way is full (nothing moves for
        # a second), keeping the unsent tail of the last frame.
        c.sock.settimeout(1.0)
        rest = b""
        for _ in range(2000):
            view = memoryview(frame)
            try:
                while view:
                    view = view[c.sock.send(view):]
            except socket.timeout:
                rest = bytes(view)
                break
        self.assertTrue(rest, "the client's sends never blocked")
        metrics = admin.request("GET", "/metrics").body.decode()
        self.assertRegex(metrics, r'upgate_read_pauses_total\{[^}]*side="client"[^}]*\} [1-9]',
                         "upgate never stopped reading the client")
        gw.signal(signal.SIGTERM)
        self.assertEqual(c.recv_frame(timeout=IO), (True, OP_CLOSE, struct.pack("!H", 1001)
                                                    + b"server going away"))
        c.sock.settimeout(IO)  # upgate reads again now: this does not block for long
        c.sock.sendall(rest + harness.encode_frame(OP_CLOSE, struct.pack("!H", 1001)))
        entry = gw.wait_access_log(lambda e: e.get("route") == "stuck", IO,
                                   what="the session's access-log line")
        # Not "the client did not answer the close frame in time" after timeouts.close.
        self.assertRegex(entry.get("close", ""), r"^client closed \(1001\)", entry)
        self.assertEqual(gw.proc.wait(IO), 0)


class KeepaliveUnderBackpressureTest(GatewayTestCase):
    """The client floods a service that reads nothing for a while: upgate stops reading the
    client (backpressure), so the client's pongs wait unread behind its data and cannot prove it
    alive. A stall shorter than keepalive interval + timeout is survived and every byte arrives;
    a longer one ends the session naming the service, the side that took no data."""

    TOTAL = 48 << 20  # past every buffer on the way (kernel ones autotune to several MiB)

    def setUp(self):
        self.listener = silent_service(self)
        self.gw = self.start_gateway(stuck_config(
            self.listener, keepalive={"interval": "2s", "timeout": "2s"},
            limits={"high_water": "256KiB"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def read_service(self, total):
        self.listener.settimeout(IO)
        conn, _ = self.listener.accept()
        self.addCleanup(conn.close)
        conn.settimeout(IO)
        got = 0
        while got < total:
            data = conn.recv(1 << 20)
            if not data:
                break
            got += len(data)
        return got

    async def flood_and_stall(self, ws, hold, then_read):
        async def flood():
            for _ in range(0, self.TOTAL, 65536):
                await ws.send(b"s" * 65536)
        sending = asyncio.ensure_future(flood())
        # The scenario: the service reads nothing for `hold` seconds. Within the first second
        # (before any keepalive verdict) the client must be held back.
        await asyncio.sleep(min(hold, 1.0))
        held = not sending.done()
        await asyncio.sleep(hold - min(hold, 1.0))
        got = None
        if then_read:
            got = await asyncio.get_running_loop().run_in_executor(None, self.read_service,
                                                                   self.TOTAL)
            await asyncio.wait_for(sending, IO)
        else:
            sending.cancel()
        return held, got

    def test_a_short_stall_of_the_service_is_survived(self):
        async def run():
            async with ws_connect(self.gw.url("/stuck")) as ws:
                held, got = await self.flood_and_stall(ws, 1.2, then_read=True)
                await ws.close(1000, "done")
                return held, got, ws.close_code
        held, got, code = self.run_async(run(), timeout=60)
        self.assertTrue(held, "the client's sends were never held back: no backpressure")
        self.assertEqual(got, self.TOTAL)
        self.assertEqual(code, 1000)
        self.assertNotRegex(self.gw.stderr_text(), r"did not answer a ping|did not read")

    def test_a_long_stall_names_the_service(self):
        async def run():
            async with ws_connect(self.gw.url("/stuck")) as ws:
                held, _ = await self.flood_and_stall(ws, 5.0, then_read=False)
                await asyncio.wait_for(ws.wait_closed(), IO)
                return held, ws.close_code, ws.close_reason
        held, code, reason = self.run_async(run(), timeout=60)
        self.assertTrue(held, "the client's sends were never held back: no backpressure")
        self.assertEqual((code, reason), (1001, "upstream did not read"))
        self.assertNotRegex(self.gw.stderr_text(), r"client did not answer a ping")


if __name__ == "__main__":
    unittest.main(verbosity=2)
