"""What upgate itself does inside an established WebSocket tunnel: the gateway keepalive (pings,
dead legs, answered peer pings), the close handshake it mediates on drain (SIGTERM) in
passthrough mode, timeouts.close, per-leg permessage-deflate in frames mode, and the config
errors for options a route's mode cannot honour.

Peers are real: python3-websockets clients and servers (one in a child process, so that it can
be frozen with SIGSTOP), and raw sockets where the test must see or write exact frames (masks,
RSV1, a close frame left unanswered, half a frame)."""

import asyncio
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib

import websockets

import harness

import wire
from harness import (GatewayTestCase, EchoUpstream, EchoUpstreamProcess, RawClient, RawUpstream,
                     OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT)

INTERVAL = 1.0      # keepalive.interval of the keepalive routes
PING_TIMEOUT = 1.0  # keepalive.timeout
SLACK = 3.0         # shared, noisy machines: bounds are loose on purpose
CLOSE_TIMEOUT = 1.0
PING_PAYLOAD = b"upgate-keepalive"
KEEPALIVE = {"interval": "1s", "timeout": "1s"}


def ws_connect(url, **kw):
    kw.setdefault("compression", None)
    return websockets.connect(url, ping_interval=None, open_timeout=10, close_timeout=5,
                              max_size=None, **kw)


def text_payload(n):
    return ("0123456789abcdefghijklmnopqrstuvwxyz" * (n // 36 + 1))[:n]


# ---------------------------------------------------------------------------------------------
# Frames with everything visible (RSV1 and the mask bit): the conformance suite's wire helpers


def encode(opcode, payload, mask, fin=True, rsv1=False):
    return wire.frame(opcode, payload, fin=fin, rsv=wire.RSV1 if rsv1 else 0, mask=mask or None)


class Deflate:
    """permessage-deflate for one endpoint, with context takeover (RFC 7692 §7.2)."""

    def __init__(self):
        self.c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.d = zlib.decompressobj(-15)

    def compress(self, data):
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def decompress(self, data):
        return self.d.decompress(data + b"\x00\x00\xff\xff")


# ---------------------------------------------------------------------------------------------
# A raw client that sees every frame


class WireClient:
    def __init__(self, test, addr):
        self.raw = RawClient(addr)
        test.addCleanup(self.raw.close)
        self.reader = wire.FrameStream()
        self.queue = []
        self.resp = None

    def handshake(self, path, extensions=None):
        extra = [("Sec-WebSocket-Extensions", extensions)] if extensions else []
        self.resp = self.raw.handshake(path, extra=extra)
        self.queue += self.reader.feed(bytes(self.raw.frames.buf))
        self.raw.frames.buf.clear()
        return self.resp

    def send(self, opcode, payload, fin=True, rsv1=False):
        self.raw.send(encode(opcode, payload, mask=True, fin=fin, rsv1=rsv1))

    def _read(self, timeout):
        self.raw.sock.settimeout(max(timeout, 0.01))
        chunk = self.raw.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection ended; %d bytes of a frame buffered"
                                  % len(self.reader.buf))
        self.queue += self.reader.feed(chunk)
        return len(chunk)

    def recv(self, timeout=harness.IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        for _ in range(10 ** 6):
            if self.queue:
                return self.queue.pop(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame within %.1fs (%d bytes buffered)"
                                   % (timeout, len(self.reader.buf)))
            try:
                self._read(remaining)
            except socket.timeout:
                pass
        raise AssertionError("recv: too many reads")

    def recv_data(self, timeout=harness.IO_TIMEOUT, answer_pings=True):
        """The next data or close frame; pings on the way are answered, control frames kept."""
        deadline = time.monotonic() + timeout
        seen = []
        for _ in range(10000):
            f = self.recv(max(deadline - time.monotonic(), 0.01))
            if f.opcode == OP_PING and answer_pings:
                self.send(OP_PONG, f.payload)
            if f.opcode in (OP_PING, OP_PONG):
                seen.append(f)
                continue
            return f, seen
        raise AssertionError("recv_data: too many control frames")

    def fill(self, n, timeout):
        """Reads until `n` bytes of frames are buffered (without taking frames)."""
        deadline = time.monotonic() + timeout
        for _ in range(10 ** 6):
            if self.buffered() >= n:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("%d of %d bytes within %.1fs" % (self.buffered(), n, timeout))
            try:
                self._read(remaining)
            except socket.timeout:
                pass

    def buffered(self):
        return len(self.reader.buf) + sum(len(f.payload) for f in self.queue)

    def read_until_closed(self, timeout=5.0):
        """(frames that arrived, 'eof' | 'reset' | 'timeout')."""
        frames, self.queue = self.queue, []
        data, how = self.raw.read_until_closed(timeout)
        frames += self.reader.feed(data)
        return frames, how


# ---------------------------------------------------------------------------------------------
# A raw upstream that records every frame


class UpConn:
    """The upstream side of one connection; send() may be called from the test thread."""

    def __init__(self, conn, path, deflate):
        self.conn = conn
        self.path = path
        self.deflate = Deflate() if deflate else None
        self.lock = threading.Lock()
        self.sent_close = False

    def send(self, data):
        with self.lock:
            self.conn.sendall(data)

    def send_close(self, code):
        with self.lock:
            self.sent_close = True
            self.conn.sendall(encode(OP_CLOSE, struct.pack("!H", code), mask=False))


def accept_upgrade(conn, up, deflate, answer_extensions=None):
    """Server side of the handshake; accepts a permessage-deflate offer when `deflate`, or
    answers `answer_extensions` as Sec-WebSocket-Extensions whatever was offered."""
    head, leftover = harness.read_head(conn)
    start, headers = harness.parse_head(head)
    key = harness.header_values(headers, "Sec-WebSocket-Key")
    if not key:
        raise AssertionError("upstream got no Sec-WebSocket-Key: %r" % head)
    offers = ",".join(harness.header_values(headers, "Sec-WebSocket-Extensions"))
    resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n" % harness.accept_key(key[0]))
    agreed = deflate and "permessage-deflate" in offers
    if agreed:
        resp += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    elif answer_extensions:
        resp += "Sec-WebSocket-Extensions: %s\r\n" % answer_extensions
    conn.sendall((resp + "\r\n").encode())
    path = start.split(" ")[1]
    up.event("head", path, head.decode("latin-1"))
    return UpConn(conn, path, agreed), leftover


def make_upstream(echo=True, answer_close=True, deflate=False, answer_extensions=None):
    """A RawUpstream handler: records ("frame", path, wire.Frame) and ("message", path, opcode,
    payload, compressed) events, answers pings, echoes messages (compressed when deflate was
    agreed), answers a close frame unless told not to, and records ("eof", path)."""

    def handler(conn, up):
        uc, leftover = accept_upgrade(conn, up, deflate, answer_extensions)
        up.event("conn", uc.path, uc)
        reader = wire.FrameStream()
        frames = reader.feed(leftover)
        message, message_op, compressed = b"", None, False
        got_close = False
        deadline = time.monotonic() + 60
        conn.settimeout(0.2)
        for _ in range(10 ** 6):
            for f in frames:
                up.event("frame", uc.path, f)
                if got_close:
                    continue
                if f.opcode == OP_CLOSE:
                    got_close = True
                    if answer_close and not uc.sent_close:
                        uc.send_close(f.close_code or 1000)
                elif f.opcode == OP_PING:
                    if not uc.sent_close:
                        uc.send(encode(OP_PONG, f.payload, mask=False))
                elif f.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                    if f.opcode != OP_CONT:
                        message, message_op, compressed = b"", f.opcode, f.rsv1
                    message += f.payload
                    if not f.fin:
                        continue
                    if compressed:
                        message = uc.deflate.decompress(message)
                    up.event("message", uc.path, message_op, message, compressed)
                    if echo and not uc.sent_close:
                        if uc.deflate:
                            uc.send(encode(message_op, uc.deflate.compress(message), mask=False,
                                           rsv1=True))
                        else:
                            uc.send(encode(message_op, message, mask=False))
            frames = []
            if up.stopping.is_set() or time.monotonic() > deadline:
                return
            try:
                chunk = conn.recv(1 << 20)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                up.event("eof", uc.path)
                return
            frames = reader.feed(chunk)

    return handler


def upstream_frames(up, path):
    with up.cond:
        return [e[2] for e in up.events if e[0] == "frame" and e[1] == path]


def upstream_messages(up, path):
    with up.cond:
        return [e[2:] for e in up.events if e[0] == "message" and e[1] == path]


def upstream_head(up, path):
    e = up.wait_event(lambda e: e[0] == "head" and e[1] == path, what="request for %s" % path)
    return harness.parse_head(e[2].encode("latin-1"))[1]


def wait_upstream_close(up, path, timeout=harness.IO_TIMEOUT):
    e = up.wait_event(lambda e: e[0] == "frame" and e[1] == path and e[2].opcode == OP_CLOSE,
                      timeout, what="close frame on %s" % path)
    return e[2]


class ExtensionsEchoUpstream(EchoUpstream):
    """The python-websockets echo server with permessage-deflate; records what it agreed."""

    def __init__(self):
        super().__init__(compression="deflate", name="deflate-echo")
        self.extensions = {}

    async def _handler(self, ws):
        self.extensions[ws.path] = [e.name for e in ws.extensions]
        await super()._handler(ws)


def route(name, prefix, upstream, **kw):
    r = {"name": name, "match": {"path_prefix": prefix}, "upstream": upstream}
    r.update(kw)
    return r


# ---------------------------------------------------------------------------------------------
# Keepalive


class DeadUpstreamTest(GatewayTestCase):
    """An upstream that stops answering (SIGSTOP) is found dead by the keepalive: the client
    gets 1001 within interval + timeout."""

    def freeze_and_expect_1001(self, path):
        up = self.start_peer(EchoUpstreamProcess())
        gw = self.start_gateway(harness.make_config(
            upstreams={"echo": {"endpoints": [up.addr]}},
            routes=[route("pt", "/pt", "echo", keepalive=KEEPALIVE),
                    route("fr", "/fr", "echo", mode="frames", keepalive=KEEPALIVE)]))

        def resume():
            if up.proc.poll() is None:
                os.kill(up.proc.pid, signal.SIGCONT)

        async def run():
            async with ws_connect(gw.url(path)) as ws:
                await ws.send("alive?")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "alive?")
                os.kill(up.proc.pid, signal.SIGSTOP)
                self.addCleanup(resume)  # runs before the upstream is stopped
                started = time.monotonic()
                with self.assertRaises(websockets.ConnectionClosed) as cm:
                    await asyncio.wait_for(ws.recv(), INTERVAL + PING_TIMEOUT + SLACK + 5)
                elapsed = time.monotonic() - started
                await asyncio.wait_for(ws.wait_closed(), 10)
                return cm.exception, elapsed

        exc, elapsed = self.run_async(run(), timeout=30)
        self.assertIsNotNone(exc.rcvd, "no close frame from upgate: %r" % exc)
        self.assertEqual(exc.rcvd.code, 1001, exc)
        self.assertGreater(elapsed, (INTERVAL + PING_TIMEOUT) * 0.5,
                           "declared dead before interval + timeout")
        self.assertLess(elapsed, INTERVAL + PING_TIMEOUT + SLACK)
        self.assertRegex(gw.stderr_text(), r"upstream did not answer a ping")

    def test_upstream_dead_inside_a_frame(self):
        # The upstream sends the start of a frame and then nothing, pongs included. It is found
        # dead, but the client's 1001 cannot go inside that frame: the client's connection just
        # ends, and the session is counted as what the client saw, 1006, not as a 1001.
        def half_frame(conn, up):
            harness.websocket_accept(conn, up)
            conn.sendall(harness.encode_frame(harness.OP_BINARY, b"x" * 1000, mask=False)[:100])
            conn.settimeout(30)
            try:
                while conn.recv(65536):  # pings are read and not answered
                    pass
            except OSError:
                pass

        up = self.start_peer(RawUpstream(half_frame, name="half-frame"))
        gw = self.start_gateway(harness.make_config(
            upstreams={"half": {"endpoints": [up.addr]}},
            routes=[route("half", "/half", "half", keepalive=KEEPALIVE)],
            timeouts={"close": "1s"}))
        c = RawClient(gw.addr())
        self.addCleanup(c.close)
        c.handshake("/half")
        data, how = c.read_until_closed(INTERVAL + PING_TIMEOUT + CLOSE_TIMEOUT + SLACK + 5)
        self.assertEqual(how, "eof")
        self.assertEqual(len(bytes(c.frames.buf) + data), 100, "only the start of the frame")
        entry = gw.access_log_for_client(c.local)
        self.assertEqual((entry.get("close_code"), entry.get("close_by")), (1006, "gateway"),
                         entry)
        self.assertRegex(entry.get("close", ""), r"^upstream did not answer a ping", entry)

    def test_frozen_upstream_passthrough(self):
        self.freeze_and_expect_1001("/pt/frozen")

    def test_frozen_upstream_frames(self):
        self.freeze_and_expect_1001("/fr/frozen")


class KeepaliveTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream())
        cls.raw = cls.start_class_peer(RawUpstream(make_upstream(), name="recording"))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"echo": {"endpoints": [cls.echo.addr]},
                       "raw": {"endpoints": [cls.raw.addr]}},
            routes=[route("echo-pt", "/echo-pt", "echo", keepalive=KEEPALIVE),
                    route("echo-fr", "/echo-fr", "echo", mode="frames", keepalive=KEEPALIVE),
                    route("raw-pt", "/raw-pt", "raw", keepalive=KEEPALIVE),
                    route("raw-fr", "/raw-fr", "raw", mode="frames", keepalive=KEEPALIVE),
                    route("answer", "/answer", "raw", mode="frames",
                          keepalive={"peer_pings": "answer"})]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.raw.errors, [])

    def silent_client_is_dropped(self, path):
        c = WireClient(self, self.gw.addr())
        c.handshake(path)
        c.send(OP_TEXT, b"then silence")
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.payload), (OP_TEXT, b"then silence"))
        started = time.monotonic()
        ping = c.recv(INTERVAL + SLACK)  # never answered
        self.assertEqual((ping.opcode, ping.payload, ping.masked), (OP_PING, PING_PAYLOAD, False))
        frames, how = c.read_until_closed(PING_TIMEOUT + SLACK)
        elapsed = time.monotonic() - started
        self.assertIn(how, ("eof", "reset"), "client that ignores pings still connected after "
                      "%.1fs; frames %r" % (elapsed, frames))
        self.assertGreater(elapsed, PING_TIMEOUT * 0.5)
        # (in passthrough the upstream's pong to upgate's ping comes on to the client)
        self.assertEqual([f for f in frames if f.opcode not in (OP_PING, OP_PONG, OP_CLOSE)], [],
                         "only control frames may follow")
        self.assertEqual(self.echo.wait_close_for(path)[1], 1001,
                         "the upstream should get 1001 when the client is dead")
        self.assertRegex(self.gw.stderr_text(), r"client did not answer a ping")

    def test_silent_client_passthrough(self):
        self.silent_client_is_dropped("/echo-pt/silent")

    def test_silent_client_frames(self):
        self.silent_client_is_dropped("/echo-fr/silent")

    def pings_answered_keep_the_session(self, path, pong_forwarded):
        c = WireClient(self, self.gw.addr())
        c.handshake(path)
        c.send(OP_TEXT, b"hello")
        f, _ = c.recv_data()
        self.assertEqual(f.payload, b"hello")
        last_sent = time.monotonic()
        pings, pongs = [], []
        hold = INTERVAL * 2 + PING_TIMEOUT + 0.5  # past interval + timeout, twice over
        deadline = last_sent + hold
        for _ in range(1000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                f = c.recv(remaining)
            except TimeoutError:
                break
            if f.opcode == OP_PING:
                pings.append((time.monotonic() - last_sent, f))
                c.send(OP_PONG, f.payload)
            elif f.opcode == OP_PONG:
                pongs.append(f)
            else:
                self.fail("unexpected frame %r while idle" % f)
        self.assertTrue(pings, "no keepalive ping within %.1fs of silence" % hold)
        self.assertEqual(pings[0][1].payload, PING_PAYLOAD)
        self.assertFalse(pings[0][1].masked, "frames to the client are not masked")
        self.assertGreater(pings[0][0], INTERVAL * 0.5, "pinged before the interval")
        # Still alive: the pongs kept it.
        c.send(OP_TEXT, b"still here")
        f, more = c.recv_data()
        self.assertEqual((f.opcode, f.payload), (OP_TEXT, b"still here"))
        pongs += [m for m in more if m.opcode == OP_PONG]
        c.send(OP_CLOSE, harness.close_payload(1000))
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.close_code), (OP_CLOSE, 1000))
        _, how = c.read_until_closed(5)
        self.assertIn(how, ("eof", "reset"))

        up = upstream_frames(self.raw, path)
        up_pings = [f for f in up if f.opcode == OP_PING]
        up_pongs = [f for f in up if f.opcode == OP_PONG]
        self.assertTrue(up_pings, "the upstream leg was never pinged: %r" % up)
        self.assertTrue(all(p.masked and p.payload == PING_PAYLOAD for p in up_pings), up_pings)
        if pong_forwarded:
            self.assertTrue(up_pongs, "passthrough: the client's pong should reach the upstream")
            self.assertTrue(all(p.payload == PING_PAYLOAD and p.masked for p in up_pongs), up_pongs)
            self.assertTrue(pongs, "passthrough: the upstream's pong should reach the client")
        else:
            self.assertEqual(up_pongs, [], "frames: pongs answering upgate are swallowed")
            self.assertEqual(pongs, [], "frames: the upstream's pongs are swallowed")

    def test_pings_answered_passthrough(self):
        self.pings_answered_keep_the_session("/raw-pt/answered", pong_forwarded=True)

    def test_pings_answered_frames(self):
        self.pings_answered_keep_the_session("/raw-fr/answered", pong_forwarded=False)

    def test_peer_ping_answered_by_upgate(self):
        path = "/answer/ping"
        c = WireClient(self, self.gw.addr())
        c.handshake(path)
        c.send(OP_PING, b"are you there?")
        f = c.recv()
        self.assertEqual((f.opcode, f.payload, f.masked), (OP_PONG, b"are you there?", False))
        c.send(OP_PING, b"")
        f = c.recv()
        self.assertEqual((f.opcode, f.payload), (OP_PONG, b""))
        c.send(OP_TEXT, b"after the pings")
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.payload), (OP_TEXT, b"after the pings"))
        self.raw.wait_event(lambda e: e[0] == "message" and e[1] == path)
        up = upstream_frames(self.raw, path)
        self.assertEqual([f for f in up if f.opcode in (OP_PING, OP_PONG)], [],
                         "the client's pings must not reach the upstream")
        self.assertEqual([f.payload for f in up if f.opcode == OP_TEXT], [b"after the pings"])


# ---------------------------------------------------------------------------------------------
# Drain and timeouts.close (passthrough)


class DrainPassthroughTest(GatewayTestCase):
    DRAIN = 10.0  # well above what a completed handshake takes: exiting sooner proves it ended it

    def start(self, close=None, **handler):
        up = self.start_peer(RawUpstream(make_upstream(**handler), name="drain-upstream"))
        timeouts = {"head": "10s", "idle": 0, "half_close": "5s"}
        if close:
            timeouts["close"] = close
        gw = self.start_gateway(harness.make_config(
            upstreams={"up": {"endpoints": [up.addr]}},
            routes=[route("pt", "/pt", "up")], drain_timeout="10s", timeouts=timeouts))
        c = WireClient(self, gw.addr())
        c.handshake("/pt/drain")
        uc = up.wait_event(lambda e: e[0] == "conn")[2]
        return gw, up, uc, c

    def wait_exit(self, gw, limit):
        try:
            gw.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.fail("upgate still running %.0fs after SIGTERM with the handshake done\n%s"
                      % (limit, gw.stderr_tail()))
        self.assertEqual(gw.proc.returncode, 0, gw.stderr_tail())

    def test_drain_closes_both_legs_with_1001(self):
        gw, up, uc, c = self.start()
        c.send(OP_TEXT, b"before the drain")
        f, _ = c.recv_data()
        self.assertEqual(f.payload, b"before the drain")
        gw.signal(signal.SIGTERM)
        started = time.monotonic()
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.close_code, f.masked), (OP_CLOSE, 1001, False), f)
        uf = wait_upstream_close(up, uc.path)
        self.assertEqual((uf.close_code, uf.masked), (1001, True), uf)
        c.send(OP_CLOSE, harness.close_payload(1001))  # the upstream replied on its own
        frames, how = c.read_until_closed(5)
        self.assertEqual(how, "eof", "client connection after both close replies")
        self.assertEqual(frames, [], "the upstream's close reply must not reach the client")
        up.wait_event(lambda e: e[0] == "eof", 5, what="end of the upstream connection")
        closes = [f for f in upstream_frames(up, uc.path) if f.opcode == OP_CLOSE]
        self.assertEqual(len(closes), 1, "the client's close reply must not reach the upstream: "
                         "%r" % closes)
        self.wait_exit(gw, self.DRAIN - 2)
        self.assertLess(time.monotonic() - started, self.DRAIN - 2)

    def test_drain_waits_for_the_end_of_a_frame(self):
        gw, up, uc, c = self.start(echo=False, answer_close=False)
        big = os.urandom(300 * 1024)
        frame = encode(OP_BINARY, big, mask=False)
        first, rest = frame[:64 * 1024], frame[64 * 1024:]
        uc.send(first)
        c.fill(len(first), 10)
        gw.signal(signal.SIGTERM)
        uf = wait_upstream_close(up, uc.path)  # the drain has begun
        self.assertEqual((uf.close_code, uf.masked), (1001, True), uf)
        sender = threading.Thread(target=uc.send, args=(rest,), daemon=True)
        sender.start()
        f = c.recv(10)
        self.assertEqual((f.opcode, f.fin, len(f.payload)), (OP_BINARY, True, len(big)), f)
        self.assertTrue(f.payload == big, "the large frame arrived altered")
        f = c.recv(10)
        self.assertEqual((f.opcode, f.close_code), (OP_CLOSE, 1001), f)
        sender.join(10)
        uc.send_close(1001)
        c.send(OP_CLOSE, harness.close_payload(1001))
        frames, how = c.read_until_closed(5)
        self.assertEqual((frames, how), ([], "eof"))
        up.wait_event(lambda e: e[0] == "eof", 5, what="end of the upstream connection")
        self.wait_exit(gw, self.DRAIN - 2)

    def test_unanswered_close_times_out(self):
        gw, up, uc, c = self.start(close="1s")
        gw.signal(signal.SIGTERM)
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.close_code), (OP_CLOSE, 1001), f)
        started = time.monotonic()
        frames, how = c.read_until_closed(CLOSE_TIMEOUT + SLACK)  # never replies
        elapsed = time.monotonic() - started
        self.assertIn(how, ("eof", "reset"), "still connected %.1fs after the close frame" % elapsed)
        self.assertEqual(frames, [])
        self.assertGreater(elapsed, CLOSE_TIMEOUT * 0.5, "closed before timeouts.close")
        self.wait_exit(gw, self.DRAIN - 2)


# ---------------------------------------------------------------------------------------------
# Per-leg compression (frames)


class CompressionTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.plain_ws = cls.start_class_peer(EchoUpstream(compression=None, name="plain-echo"))
        cls.deflate_ws = cls.start_class_peer(ExtensionsEchoUpstream())
        cls.plain_raw = cls.start_class_peer(RawUpstream(make_upstream(), name="plain-raw"))
        cls.deflate_raw = cls.start_class_peer(RawUpstream(make_upstream(deflate=True),
                                                           name="deflate-raw"))
        # Accepts permessage-deflate, or another extension, whether offered or not.
        cls.rogue_pmd = cls.start_class_peer(RawUpstream(
            make_upstream(answer_extensions="permessage-deflate"), name="rogue-pmd"))
        cls.rogue_other = cls.start_class_peer(RawUpstream(
            make_upstream(answer_extensions="x-not-permessage-deflate"), name="rogue-other"))
        client_only = {"client": "on", "upstream": "off"}
        upstream_only = {"client": "off", "upstream": "on"}
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"plain-ws": {"endpoints": [cls.plain_ws.addr]},
                       "deflate-ws": {"endpoints": [cls.deflate_ws.addr]},
                       "plain-raw": {"endpoints": [cls.plain_raw.addr]},
                       "deflate-raw": {"endpoints": [cls.deflate_raw.addr]},
                       "rogue-pmd": {"endpoints": [cls.rogue_pmd.addr]},
                       "rogue-other": {"endpoints": [cls.rogue_other.addr]}},
            routes=[route("c-ws", "/c-ws", "plain-ws", mode="frames", compression=client_only),
                    route("c-raw", "/c-raw", "plain-raw", mode="frames", compression=client_only),
                    route("u-ws", "/u-ws", "deflate-ws", mode="frames", compression=upstream_only),
                    route("u-raw", "/u-raw", "deflate-raw", mode="frames",
                          compression=upstream_only),
                    route("c-rogue", "/c-rogue", "rogue-pmd", mode="frames",
                          compression=client_only),
                    route("f-rogue", "/f-rogue", "rogue-pmd", mode="frames"),
                    route("f-other", "/f-other", "rogue-other", mode="frames"),
                    route("p-other", "/p-other", "rogue-other")],
            # The 1 MiB messages of roundtrip() are over half of it: the cap is the whole
            # message's, however much of it was already inflated.
            limits={"max_message_size": "1536KiB"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.plain_raw.errors + self.deflate_raw.errors, [])
        self.assertEqual(self.rogue_pmd.errors + self.rogue_other.errors, [])
        self.assertEqual(self.plain_ws.errors + self.deflate_ws.errors, [])

    async def roundtrip(self, ws):
        messages = ["hello", b"\x00\x01\x02binary", text_payload(1 << 20), os.urandom(1 << 20),
                    "h\u00e9llo \u4e16\u754c " * 1000]
        for m in messages:
            await ws.send(m)
            got = await asyncio.wait_for(ws.recv(), 30)
            self.assertIs(type(got), type(m))
            self.assertEqual(len(got), len(m))
            self.assertTrue(got == m, "%s of %d differs" % (type(m).__name__, len(m)))

    def test_compressed_client_uncompressed_upstream(self):
        path = "/c-ws/roundtrip"

        async def run():
            async with ws_connect(self.gw.url(path), compression="deflate") as ws:
                self.assertEqual([e.name for e in ws.extensions], ["permessage-deflate"])
                self.assertIn("permessage-deflate",
                              ws.response_headers.get("Sec-WebSocket-Extensions", ""))
                await self.roundtrip(ws)

        self.run_async(run(), timeout=60)
        req = [r for r in self.plain_ws.wait_requests(1) if r["path"] == path]
        self.assertEqual(len(req), 1)
        self.assertEqual(harness.header_values(req[0]["headers"], "Sec-WebSocket-Extensions"), [],
                         "upstream: off, so nothing should be offered to it")

    def test_client_leg_compressed_on_the_wire(self):
        path = "/c-raw/wire"
        c = WireClient(self, self.gw.addr())
        resp = c.handshake(path, extensions="permessage-deflate; client_max_window_bits")
        self.assertIn("permessage-deflate", resp.header("Sec-WebSocket-Extensions") or "")
        self.assertEqual(harness.header_values(upstream_head(self.plain_raw, path),
                                               "Sec-WebSocket-Extensions"), [])
        codec = Deflate()
        # upgate answered without no_context_takeover parameters, or with: either way an inflater
        # that keeps its window reads both.
        text = text_payload(5000).encode()
        c.send(OP_TEXT, codec.compress(text), rsv1=True)
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.rsv1), (OP_TEXT, True), "echo towards the client: %r" % f)
        self.assertEqual(codec.decompress(f.payload), text)
        self.assertLess(len(f.payload), len(text) // 4, "not really compressed")
        # An uncompressed message on the compressed leg is fine too (RFC 7692 §6).
        data = os.urandom(3000)
        c.send(OP_BINARY, data)
        f, _ = c.recv_data()
        self.assertEqual(f.opcode, OP_BINARY)
        self.assertEqual(codec.decompress(f.payload) if f.rsv1 else f.payload, data)
        # A fragmented compressed message: RSV1 on the first frame only.
        body = codec.compress(b"fragmented " * 400)
        c.send(OP_TEXT, body[:10], fin=False, rsv1=True)
        c.send(OP_CONT, body[10:])
        f, _ = c.recv_data()
        self.assertEqual(codec.decompress(f.payload) if f.rsv1 else f.payload,
                         b"fragmented " * 400)
        self.raw_wait_messages(self.plain_raw, path, 3)
        got = upstream_messages(self.plain_raw, path)
        self.assertEqual([(op, p, comp) for op, p, comp in got],
                         [(OP_TEXT, text, False), (OP_BINARY, data, False),
                          (OP_TEXT, b"fragmented " * 400, False)])
        frames = [f for f in upstream_frames(self.plain_raw, path) if f.opcode != OP_PING]
        self.assertTrue(all(f.masked and not f.rsv1 for f in frames), frames)

    def raw_wait_messages(self, up, path, n):
        up.wait_event(lambda e: len(upstream_messages(up, path)) >= n if e[0] == "message"
                      else False, what="%d messages at the upstream" % n)

    def test_uncompressed_client_compressed_upstream(self):
        path = "/u-ws/roundtrip"

        async def run():
            async with ws_connect(self.gw.url(path), compression=None) as ws:
                self.assertEqual(ws.extensions, [])
                self.assertNotIn("Sec-WebSocket-Extensions", ws.response_headers)
                await self.roundtrip(ws)

        self.run_async(run(), timeout=60)
        self.assertEqual(self.deflate_ws.extensions.get(path), ["permessage-deflate"],
                         "the upstream leg should have agreed permessage-deflate")
        req = [r for r in self.deflate_ws.wait_requests(1) if r["path"] == path]
        offer = ",".join(harness.header_values(req[0]["headers"], "Sec-WebSocket-Extensions"))
        self.assertIn("permessage-deflate", offer)

    def test_upstream_leg_compressed_on_the_wire(self):
        path = "/u-raw/wire"
        c = WireClient(self, self.gw.addr())
        resp = c.handshake(path)
        self.assertIsNone(resp.header("Sec-WebSocket-Extensions"))
        offer = ",".join(harness.header_values(upstream_head(self.deflate_raw, path),
                                               "Sec-WebSocket-Extensions"))
        self.assertIn("permessage-deflate", offer)
        text = text_payload(8000).encode()
        data = bytes(range(256)) * 40
        for op, payload in ((OP_TEXT, text), (OP_BINARY, data)):
            c.send(op, payload)
            f, _ = c.recv_data()
            self.assertEqual((f.opcode, f.rsv1, f.payload), (op, False, payload),
                             "the client leg is not compressed")
        self.raw_wait_messages(self.deflate_raw, path, 2)
        got = upstream_messages(self.deflate_raw, path)
        self.assertEqual(got, [(OP_TEXT, text, True), (OP_BINARY, data, True)],
                         "messages to the upstream should arrive compressed (RSV1)")
        data_frames = [f for f in upstream_frames(self.deflate_raw, path)
                       if f.opcode in (OP_TEXT, OP_BINARY)]
        self.assertTrue(all(f.masked and len(f.payload) < 2000 for f in data_frames), data_frames)

    def test_extension_accepted_unasked_is_502(self):
        # RFC 6455 §4.1: a client fails the connection when the server accepts an extension it
        # did not offer. Towards the upstream upgate is that client; in frames mode it also has
        # to know what RSV1 means, so only permessage-deflate the client offered passes.
        cases = [
            ("/c-rogue/x", "permessage-deflate", "upgate did not offer"),  # nothing offered up
            ("/f-rogue/x", None, "permessage-deflate, which the client did not offer"),
            ("/f-other/x", "permessage-deflate",
             "x-not-permessage-deflate, which the client did not offer"),
            ("/f-other/y", "x-not-permessage-deflate",
             "x-not-permessage-deflate, which frames mode cannot check"),
        ]
        for path, offer, reason in cases:
            with self.subTest(path=path, offer=offer):
                c = RawClient(self.gw.addr())
                self.addCleanup(c.close)
                extra = [("Sec-WebSocket-Extensions", offer)] if offer else []
                c.send(harness.ws_request(path, extra=extra))
                resp = c.read_response()
                self.assertEqual(resp.status, 502, resp)
                entry = self.gw.access_log_for_client(c.local)
                self.assertIn(reason, entry.get("close", ""), entry)
        # Passthrough leaves the extensions to the peers: the client gets the 101 as it came.
        c = WireClient(self, self.gw.addr())
        resp = c.handshake("/p-other/x")
        self.assertEqual(resp.header("Sec-WebSocket-Extensions"), "x-not-permessage-deflate")

    def test_corrupt_deflate_from_client_gets_1007(self):
        path = "/c-raw/corrupt"
        c = WireClient(self, self.gw.addr())
        resp = c.handshake(path, extensions="permessage-deflate")
        self.assertIn("permessage-deflate", resp.header("Sec-WebSocket-Extensions") or "")
        c.send(OP_TEXT, b"\xff" * 16 + b"not a deflate stream", rsv1=True)
        f, _ = c.recv_data()
        self.assertEqual((f.opcode, f.close_code, f.masked), (OP_CLOSE, 1007, False), f)
        frames, how = c.read_until_closed(5)
        self.assertIn(how, ("eof", "reset"))
        self.assertEqual(frames, [])
        uf = wait_upstream_close(self.plain_raw, path)
        self.assertEqual((uf.close_code, uf.masked), (1001, True), uf)
        self.assertEqual(upstream_messages(self.plain_raw, path), [],
                         "nothing of the corrupt message may reach the upstream")


# ---------------------------------------------------------------------------------------------
# Config errors


BAD_TEMPLATE = """\
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  chat:
    endpoints: [127.0.0.1:9001]
routes:
  - name: chat
    match: { path_prefix: /chat }
    upstream: chat
    mode: passthrough
%s
"""


class TunnelConfigTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="upgate-it-conf-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def check(self, extra, want_line, want_key, want_words):
        path = os.path.join(self.dir, "bad.yaml")
        with open(path, "w") as f:
            f.write(BAD_TEMPLATE % extra)
        r = subprocess.run([harness.upgate_bin(), "-t", "-c", path], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2, "stdout=%r stderr=%r" % (r.stdout, r.stderr))
        self.assertNotIn("configuration OK", r.stdout)
        pattern = re.compile(r"^%s:(\d+):(\d+): (\S+): (.+)$" % re.escape(path))
        found = [m for m in map(pattern.match, r.stderr.splitlines()) if m]
        self.assertEqual(len(found), 1, r.stderr)
        self.assertEqual((int(found[0].group(1)), found[0].group(3)), (want_line, want_key),
                         found[0].group(0))
        self.assertRegex(found[0].group(4), want_words)

    def test_compression_on_passthrough(self):
        self.check("    compression: { client: on, upstream: off }", 12,
                   "routes[0].compression", r"frames")

    def test_peer_pings_answer_on_passthrough(self):
        self.check("    keepalive:\n      interval: 10s\n      peer_pings: answer", 14,
                   "routes[0].keepalive.peer_pings", r"frames")


if __name__ == "__main__":
    unittest.main(verbosity=2)
