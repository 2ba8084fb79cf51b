"""How sessions end: upstream reset, clean closes both ways, half-closes both ways, the idle
timeout, and SIGTERM with sessions open."""

import asyncio
import select
import signal
import socket
import threading
import time
import unittest

import websockets

import harness
from harness import GatewayTestCase, EchoUpstream, RawClient, RawUpstream

ABRUPT_CLOSE_DEADLINE = 2.0   # the brief's bound for "upstream reset ends the client"
DRAIN_TIMEOUT = 2.0
SHUTDOWN_MARGIN = 5.0
IDLE = 1.0


def ws_connect(url, **kw):
    return websockets.connect(url, compression=None, ping_interval=None, open_timeout=10,
                              close_timeout=5, **kw)


def assert_only_close_frames(test, data):
    """Bytes that arrived before the gateway hung up may only be close frame(s)."""
    reader = harness.FrameReader()
    reader.feed(data)
    for _ in range(10):
        frame = reader.next_frame()
        if frame is None:
            break
        test.assertEqual(frame[1], harness.OP_CLOSE, "unexpected frame %r" % (frame,))
    test.assertEqual(len(reader.buf), 0, "partial frame before close: %r" % bytes(reader.buf))


def answer_after_eof(conn, up, leftover):
    """Reads everything until the client's EOF, then answers with a frame and closes."""
    data = leftover
    conn.settimeout(harness.IO_TIMEOUT)
    for _ in range(10000):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    up.event("eof", data)
    conn.sendall(harness.encode_frame(harness.OP_TEXT, b"got %d bytes" % len(data), mask=False))
    conn.shutdown(socket.SHUT_WR)
    harness.wait_peer_close(conn, 10, up.stopping)


def client_half_close_handler(conn, up):
    """Accepts the upgrade, then answer_after_eof."""
    _, leftover = harness.websocket_accept(conn, up)
    answer_after_eof(conn, up, leftover)


def upstream_half_close_handler(conn, up):
    """Sends a frame, half-closes, then still reads what the client sends until its EOF."""
    _, leftover = harness.websocket_accept(conn, up)
    conn.sendall(harness.encode_frame(harness.OP_TEXT, b"last words", mask=False))
    conn.shutdown(socket.SHUT_WR)
    up.event("shut-wr")
    reader = harness.FrameReader()
    reader.feed(leftover)
    conn.settimeout(harness.IO_TIMEOUT)
    for _ in range(10000):
        frame = reader.next_frame()
        if frame is not None:
            up.event("frame", frame[2])
            continue
        chunk = conn.recv(65536)
        if not chunk:
            up.event("eof")
            return
        reader.feed(chunk)


def read_to_end(conn, reader, up, tag):
    """Reports the frames that arrive, then how the connection ended: eof or reset."""
    conn.settimeout(harness.IO_TIMEOUT)
    for _ in range(10000):
        frame = reader.next_frame()
        if frame is not None:
            up.event("frame", tag, frame[1], frame[2])
            continue
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            up.event("end", tag, "reset")
            return
        if not chunk:
            up.event("end", tag, "eof")
            return
        reader.feed(chunk)


def close_handshake_handler(conn, up):
    """/ch/client-*: answers the client's close frame and keeps its own FIN until it sees the
    gateway's. /ch/server-closes*: answers it and closes at once, as a server should (RFC 6455
    §7.1.1). /ch/upstream-*: sends the first close frame, then waits for the reply. Events are
    tagged with the path."""
    head, leftover = harness.websocket_accept(conn, up)
    tag = head.split(b" ")[1].decode()
    reader = harness.FrameReader()
    reader.feed(leftover)
    if tag.startswith("/ch/upstream"):
        conn.sendall(harness.encode_frame(harness.OP_CLOSE, b"\x03\xe9going", mask=False))
        read_to_end(conn, reader, up, tag)
        return
    conn.settimeout(harness.IO_TIMEOUT)
    for _ in range(10000):
        frame = reader.next_frame()
        if frame is not None:
            up.event("frame", tag, frame[1], frame[2])
            if frame[1] == harness.OP_CLOSE:
                conn.sendall(harness.encode_frame(harness.OP_CLOSE, frame[2], mask=False))
                if tag.startswith("/ch/server-closes"):
                    conn.shutdown(socket.SHUT_WR)
                read_to_end(conn, reader, up, tag)
                return
            continue
        chunk = conn.recv(65536)
        if not chunk:
            up.event("end", tag, "eof")
            return
        reader.feed(chunk)


# Set by a test once its early bytes (and FIN) are on their way: the upstream holds its 101
# until then, so they reach the gateway while it waits for the upstream's answer.
RELEASE_101 = threading.Event()


def late_switch_handler(conn, up):
    """Answers the upgrade only when RELEASE_101 is set, then reads to EOF and reports."""
    head, leftover = harness.read_head(conn)
    up.event("head", head)
    if not RELEASE_101.wait(10):
        return
    _, headers = harness.parse_head(head)
    key = harness.header_values(headers, "Sec-WebSocket-Key")[0]
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                  % harness.accept_key(key)).encode())
    answer_after_eof(conn, up, leftover)


class TunnelEndTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream())
        cls.chc = cls.start_class_peer(RawUpstream(client_half_close_handler, name="chc"))
        cls.uhc = cls.start_class_peer(RawUpstream(upstream_half_close_handler, name="uhc"))
        cls.late = cls.start_class_peer(RawUpstream(late_switch_handler, name="late"))
        cls.ch = cls.start_class_peer(RawUpstream(close_handshake_handler, name="ch"))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]},
                       "chc": {"endpoints": [cls.chc.addr]},
                       "uhc": {"endpoints": [cls.uhc.addr]},
                       "late": {"endpoints": [cls.late.addr]},
                       "ch": {"endpoints": [cls.ch.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"},
                    {"name": "chc", "match": {"path_prefix": "/chc"}, "upstream": "chc"},
                    {"name": "uhc", "match": {"path_prefix": "/uhc"}, "upstream": "uhc"},
                    {"name": "late", "match": {"path_prefix": "/late"}, "upstream": "late"},
                    {"name": "ch", "match": {"path_prefix": "/ch/"}, "upstream": "ch"}],
            timeouts={"head": "10s", "idle": 0, "half_close": "5s"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def test_upstream_reset_ends_client_connection(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/chat/abort")
        c.send_frame(harness.OP_TEXT, b"boom")
        started = time.monotonic()
        data, how = c.read_until_closed(ABRUPT_CLOSE_DEADLINE + 5)
        elapsed = time.monotonic() - started
        self.assertIn(how, ("eof", "reset"), "client still connected %.1fs after the upstream "
                      "reset its connection" % elapsed)
        self.assertLess(elapsed, ABRUPT_CLOSE_DEADLINE,
                        "client connection ended %.1fs after the upstream reset" % elapsed)
        assert_only_close_frames(self, bytes(c.frames.buf) + data)
        entry = self.gw.access_log_for_client(c.local)
        self.assertEqual(entry["status"], 101, entry)

    def test_upstream_clean_close_propagates(self):
        async def run():
            async with ws_connect(self.gw.url("/chat/close")) as ws:
                await ws.send("please close")
                # (websockets calls a 4001 close an "error": only 1000/1001 are "OK" to it)
                with self.assertRaises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                await asyncio.wait_for(ws.wait_closed(), 10)
                return ws.close_code, ws.close_reason, ws.local_address

        code, reason, local = self.run_async(run(), timeout=30)
        self.assertEqual((code, reason), (4001, "bye"))
        entry = self.gw.access_log_for_client(local)
        self.assertEqual(entry["status"], 101, entry)
        self.assertTrue(entry["close"], entry)

    def test_client_clean_close_propagates(self):
        async def run():
            async with ws_connect(self.gw.url("/chat/client-close")) as ws:
                await ws.send("hello")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "hello")
                await asyncio.wait_for(ws.close(4002, "client bye"), 10)
                return ws.close_code, ws.close_reason

        code, reason = self.run_async(run(), timeout=30)
        self.assertEqual((code, reason), (4002, "client bye"), "close echoed by the upstream")
        self.assertEqual(self.echo.wait_close_for("/chat/client-close"),
                         ("/chat/client-close", 4002, "client bye"))

    def test_completed_close_handshake_ends_both_legs_with_a_fin(self):
        # The reply completes the handshake: the client gets it and then EOF (the gateway sends
        # its FIN with the frame), and the upstream, which holds its own FIN, sees the gateway's
        # FIN, not a reset.
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/ch/client-closes")
        c.send_frame(harness.OP_TEXT, b"before closing")
        c.send_frame(harness.OP_CLOSE, b"\x03\xe8done")
        self.assertEqual(c.recv_frame(), (True, harness.OP_CLOSE, b"\x03\xe8done"))
        data, how = c.read_until_closed(5)
        self.assertEqual((bytes(c.frames.buf) + data, how), (b"", "eof"))
        c.sock.shutdown(socket.SHUT_WR)
        tag = "/ch/client-closes"
        self.ch.wait_event(lambda e: e == ("frame", tag, harness.OP_TEXT, b"before closing"))
        self.ch.wait_event(lambda e: e == ("frame", tag, harness.OP_CLOSE, b"\x03\xe8done"))
        self.assertEqual(self.ch.wait_event(lambda e: e[:2] == ("end", tag), what="upstream's end"),
                         ("end", tag, "eof"))

    def test_session_ends_without_waiting_for_the_clients_fin(self):
        # After the client's close frame it sends nothing more (RFC 6455 §5.5.1): once the reply
        # and the FIN are on their way to it and the upstream has closed, the session is over,
        # while this client keeps its end open. The gateway's linger for a FIN is 2 s.
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/ch/server-closes")
        c.send_frame(harness.OP_CLOSE, b"\x03\xe8done")
        self.assertEqual(c.recv_frame(), (True, harness.OP_CLOSE, b"\x03\xe8done"))
        data, how = c.read_until_closed(5)
        self.assertEqual((bytes(c.frames.buf) + data, how), (b"", "eof"))
        entry = self.gw.access_log_for_client(c.local, timeout=1.0)
        self.assertEqual((entry["status"], entry.get("close_code"), entry.get("close_by")),
                         (101, 1000, "client"), entry)
        tag = "/ch/server-closes"
        self.assertEqual(self.ch.wait_event(lambda e: e[:2] == ("end", tag), what="upstream's end"),
                         ("end", tag, "eof"))

    def test_upstream_initiated_close_handshake(self):
        # The client's reply is the last thing the upstream gets, then EOF.
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/ch/upstream-closes")
        self.assertEqual(c.recv_frame(), (True, harness.OP_CLOSE, b"\x03\xe9going"))
        c.send_frame(harness.OP_CLOSE, b"\x03\xe9")
        data, how = c.read_until_closed(5)
        self.assertEqual((bytes(c.frames.buf) + data, how), (b"", "eof"))
        c.sock.shutdown(socket.SHUT_WR)
        tag = "/ch/upstream-closes"
        self.ch.wait_event(lambda e: e == ("frame", tag, harness.OP_CLOSE, b"\x03\xe9"),
                           what="the client's reply at the upstream")
        self.assertEqual(self.ch.wait_event(lambda e: e[:2] == ("end", tag), what="upstream's end"),
                         ("end", tag, "eof"))

    def test_client_half_close(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/chc")
        frame = harness.encode_frame(harness.OP_TEXT, b"half-closed")
        c.send(frame)
        c.sock.shutdown(socket.SHUT_WR)
        got = self.chc.wait_event(lambda e: e[0] == "eof", what="client EOF at the upstream")
        self.assertEqual(got[1], frame, "upstream should get the frame, then EOF")
        # The other direction still flows after the client's FIN.
        self.assertEqual(c.recv_frame(), (True, harness.OP_TEXT, b"got %d bytes" % len(frame)))
        data, how = c.read_until_closed(5)
        self.assertEqual((data, how), (b"", "eof"))

    def early_bytes_before_101(self, path, fin):
        RELEASE_101.clear()
        self.addCleanup(RELEASE_101.set)
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        key = harness.ws_key()
        c.send(harness.ws_request(path, key=key))
        self.late.wait_event(lambda e: e[0] == "head", what="upgrade request at the upstream")
        early = harness.encode_frame(harness.OP_TEXT, b"sent before the 101")
        c.send(early)
        if fin:
            c.sock.shutdown(socket.SHUT_WR)
        RELEASE_101.set()
        resp = c.read_response()
        self.assertEqual(resp.status, 101, resp)
        c.frames.feed(c.pending)
        c.pending = b""
        late = b""
        if not fin:
            late = harness.encode_frame(harness.OP_TEXT, b"sent after the 101")
            c.send(late)
            c.sock.shutdown(socket.SHUT_WR)
        # (Events of earlier tests on this peer stay recorded: match this session's bytes.)
        self.late.wait_event(lambda e: e[0] == "eof" and e[1] == early + late,
                             what="the early bytes first, in order, then the client's EOF")
        # The client's FIN was a half-close: the answer still comes back.
        self.assertEqual(c.recv_frame(),
                         (True, harness.OP_TEXT, b"got %d bytes" % len(early + late)))
        data, how = c.read_until_closed(5)
        self.assertEqual((data, how), (b"", "eof"))

    def test_bytes_before_the_101_are_sent_after_it(self):
        self.early_bytes_before_101("/late/bytes", fin=False)

    def test_client_fin_before_the_101_is_a_half_close(self):
        self.early_bytes_before_101("/late/fin", fin=True)

    def test_upstream_half_close(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/uhc")
        self.assertEqual(c.recv_frame(), (True, harness.OP_TEXT, b"last words"))
        self.uhc.wait_event(lambda e: e[0] == "shut-wr")
        # The upstream's FIN reaches the client as a FIN (no close frame invented)...
        data, how = c.read_until_closed(5)
        self.assertEqual((bytes(c.frames.buf) + data, how), (b"", "eof"))
        # ...and the client can still talk to the upstream that stopped sending.
        c.send_frame(harness.OP_TEXT, b"still listening?")
        got = self.uhc.wait_event(lambda e: e[0] in ("frame", "eof"),
                                  what="client frame at the half-closed upstream")
        self.assertEqual(got, ("frame", b"still listening?"))
        c.sock.shutdown(socket.SHUT_WR)
        self.uhc.wait_event(lambda e: e[0] == "eof", timeout=5,
                            what="client EOF at the half-closed upstream")


class IdleTimeoutTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream())
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}],
            timeouts={"head": "10s", "idle": "1s", "half_close": "5s"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def test_idle_session_is_closed(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/chat/idle")
        c.send_frame(harness.OP_TEXT, b"once")
        self.assertEqual(c.recv_frame()[2], b"once")
        started = time.monotonic()
        data, how = c.read_until_closed(IDLE + SHUTDOWN_MARGIN)
        elapsed = time.monotonic() - started
        self.assertIn(how, ("eof", "reset"), "idle session still open after %.1fs" % elapsed)
        self.assertGreater(elapsed, IDLE * 0.5, "closed before the idle timeout")
        assert_only_close_frames(self, bytes(c.frames.buf) + data)
        entry = self.gw.access_log_for_client(c.local)
        self.assertTrue(entry["close"], entry)

    def test_active_session_survives_idle_timeout(self):
        async def run():
            async with ws_connect(self.gw.url("/chat/active")) as ws:
                started = time.monotonic()
                for i in range(10):  # ~3 s of traffic, a message every 0.3 s
                    await ws.send("tick %d" % i)
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "tick %d" % i)
                    await asyncio.sleep(0.3)  # pacing, not synchronisation
                return time.monotonic() - started

        elapsed = self.run_async(run(), timeout=60)
        self.assertGreater(elapsed, IDLE * 2, "traffic should have outlived the idle timeout")


class ShutdownTest(GatewayTestCase):
    def test_sigterm_with_open_sessions(self):
        echo = self.start_peer(EchoUpstream())
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}],
            drain_timeout="2s"))
        clients = []
        for i in range(5):
            c = RawClient(gw.addr())
            self.addCleanup(c.close)
            c.handshake("/chat/drain%d" % i)
            c.send_frame(harness.OP_TEXT, b"before %d" % i)
            self.assertEqual(c.recv_frame()[2], b"before %d" % i)
            clients.append(c)
        # One client stuck in the middle of its head.
        half = RawClient(gw.addr())
        self.addCleanup(half.close)
        half.send(b"GET /chat HTTP/1.1\r\nHost: x\r\n")
        addr = gw.addr()

        started = time.monotonic()
        gw.signal(signal.SIGTERM)

        def refused():
            s = socket.socket()
            s.settimeout(1)
            try:
                s.connect(addr)
                return False
            except OSError:
                return True
            finally:
                s.close()

        harness.poll_until(refused, DRAIN_TIMEOUT + SHUTDOWN_MARGIN, interval=0.05,
                           what="listener closed after SIGTERM")
        try:
            code = gw.proc.wait(DRAIN_TIMEOUT + SHUTDOWN_MARGIN)
        except harness.subprocess.TimeoutExpired:
            self.fail("upgate still running %.0fs after SIGTERM with drain_timeout %.0fs"
                      % (DRAIN_TIMEOUT + SHUTDOWN_MARGIN, DRAIN_TIMEOUT))
        elapsed = time.monotonic() - started
        print("\nSIGTERM -> exit %s in %.2fs (drain_timeout %.0fs)"
              % (harness.describe_exit(code), elapsed, DRAIN_TIMEOUT))
        self.assertEqual(code, 0, "exit after SIGTERM: %s\n%s"
                         % (harness.describe_exit(code), gw.stderr_tail()))
        for c in clients + [half]:
            data, how = c.read_until_closed(5)
            self.assertIn(how, ("eof", "reset"))
            if c is not half:
                assert_only_close_frames(self, bytes(c.frames.buf) + data)
        logged = {e.get("client") for e in gw.access_log() if e.get("status") == 101}
        for c in clients:
            self.assertIn(harness.hostport(c.local), logged,
                          "a session closed by the drain has no access-log line")

    def drain_arrivals(self, n, spread, drain_timeout="4s"):
        """Opens n echo sessions, SIGTERMs upgate (drain_timeout, drain_spread `spread`) and
        returns when each client got its close frame, in seconds after the signal; every client
        answers its close, and upgate must exit 0."""
        echo = self.start_peer(EchoUpstream())
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}],
            workers=1, drain_timeout=drain_timeout, drain_spread=spread))
        by_sock = {}
        for i in range(n):
            c = RawClient(gw.addr())
            self.addCleanup(c.close)
            c.handshake("/chat/spread%d" % i)
            by_sock[c.sock] = c
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        arrivals, codes = [], set()
        pending = set(by_sock)
        while pending and time.monotonic() < started + 4.0:
            ready, _, _ = select.select(list(pending), [], [], 0.1)
            for sock in ready:
                c = by_sock[sock]
                data = sock.recv(65536)
                self.assertTrue(data, "a client saw EOF before its close frame")
                c.frames.feed(data)
                frame = c.frames.next_frame()
                if frame is None:
                    continue
                self.assertEqual(frame[1], harness.OP_CLOSE)
                arrivals.append(time.monotonic() - started)
                codes.add(int.from_bytes(frame[2][:2], "big"))
                c.send_frame(harness.OP_CLOSE, frame[2][:2])
                pending.discard(sock)
        self.assertFalse(pending, "%d of %d clients got no close frame" % (len(pending), n))
        self.assertEqual(codes, {1001})
        self.assertEqual(gw.proc.wait(DRAIN_TIMEOUT + SHUTDOWN_MARGIN), 0)
        return sorted(arrivals)

    def test_drain_spreads_the_closes(self):
        arrivals = self.drain_arrivals(40, "1s")
        print("\n1001 arrivals with drain_spread 1s: first %.3fs, median %.3fs, last %.3fs"
              % (arrivals[0], arrivals[20], arrivals[-1]))
        # Bounds wide enough for a loaded machine (sanitizer builds): the point is the spread.
        self.assertLess(arrivals[0], 0.5, "the first share goes out at once")
        self.assertGreater(arrivals[-1] - arrivals[0], 0.6,
                           "the last closes wait for the end of the window")
        self.assertLess(arrivals[-1], 2.5)
        early = sum(1 for t in arrivals if t < arrivals[0] + 0.5)
        self.assertTrue(8 <= early <= 32, "%d of 40 closes in the first half of the window" % early)

    def test_drain_spread_is_capped_at_half_the_drain_timeout(self):
        # drain_spread 10s with drain_timeout 2s: every close within the first second, so every
        # client still gets its 1001 before the drain deadline.
        arrivals = self.drain_arrivals(20, "10s", drain_timeout="2s")
        self.assertLess(arrivals[-1] - arrivals[0], 1.3)

    def test_drain_spread_zero_closes_at_once(self):
        arrivals = self.drain_arrivals(20, 0)
        self.assertLess(arrivals[-1] - arrivals[0], 0.3,
                        "drain_spread 0: every close goes out at once")

    def test_sigint_exits_zero(self):
        echo = self.start_peer(EchoUpstream())
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat"}],
            drain_timeout="2s"))
        with RawClient(gw.addr()) as c:
            c.handshake("/chat/sigint")
            c.send_frame(harness.OP_TEXT, b"x")
            self.assertEqual(c.recv_frame()[2], b"x")
            gw.signal(signal.SIGINT)
            try:
                code = gw.proc.wait(DRAIN_TIMEOUT + SHUTDOWN_MARGIN)
            except harness.subprocess.TimeoutExpired:
                self.fail("upgate still running %.0fs after SIGINT"
                          % (DRAIN_TIMEOUT + SHUTDOWN_MARGIN))
            self.assertEqual(code, 0, "exit after SIGINT: %s\n%s"
                             % (harness.describe_exit(code), gw.stderr_tail()))


if __name__ == "__main__":
    unittest.main(verbosity=2)
