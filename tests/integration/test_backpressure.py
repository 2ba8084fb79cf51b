"""Backpressure: a peer that stops reading must not make upgate buffer without bound.

Upstream -> client: the upstream floods 64 KiB binary messages as fast as it can (up to 1 GiB
or 60 s) to a client that completed the handshake and then stopped reading (small SO_RCVBUF).
upgate's VmRSS (sampled every 100 ms) must not grow by more than RSS_GROWTH_MIB over its value
when the flood starts (a bound on growth, so that a sanitizer build's larger baseline does not
matter; the flood is 1 GiB, so unbounded buffering cannot hide under it). Then the client reads
again: every message arrives, in order, intact, and the session still echoes.

Client -> upstream: the same with the roles swapped (the upstream stops reading).

Keepalive under backpressure: a leg upgate stops reading is not declared dead for a ping it
cannot read the answer to; the side that takes no data is."""

import os
import socket
import struct
import threading
import time
import unittest

import harness
from harness import GatewayTestCase, RawClient, RawUpstream

RSS_GROWTH_MIB = int(os.environ.get("UPGATE_IT_RSS_GROWTH_MIB", "16"))
FLOOD_BYTES = 1 << 30
FLOOD_SECONDS = 60.0
MSG = 64 * 1024
SAMPLE_EVERY = 0.1
STALL_SECONDS = 3.0     # the flood made no progress for this long: backpressure reached it
MIN_OBSERVE = 5.0       # observe at least this long before concluding


def msg_payload(seq, base):
    return struct.pack("!Q", seq) + base[8:]


def unmasked_frame(opcode, payload):
    return harness.encode_frame(opcode, payload, mask=False)


def send_fully(conn, data, deadline):
    """Send all of `data` in spite of a full socket; False if `deadline` passed first."""
    view = memoryview(data)
    for _ in range(10 ** 7):
        if not view:
            return True
        if time.monotonic() > deadline:
            return False
        conn.settimeout(0.2)
        try:
            n = conn.send(view)
        except socket.timeout:
            continue
        view = view[n:]
    return False


class Flood:
    """Shared state between the flooding peer (a thread) and the test."""

    def __init__(self):
        self.base = os.urandom(MSG)
        self.sent_msgs = 0
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.error = None


def upstream_flood_handler(flood):
    def handler(conn, up):
        try:
            harness.websocket_accept(conn, up)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + FLOOD_SECONDS + 30
            stop_at = time.monotonic() + FLOOD_SECONDS
            for seq in range(FLOOD_BYTES // MSG):
                if flood.stop.is_set() or time.monotonic() > stop_at:
                    break
                if not send_fully(conn, unmasked_frame(harness.OP_BINARY,
                                                       msg_payload(seq, flood.base)), deadline):
                    flood.error = "flood: could not send message %d before the deadline" % seq
                    return
                flood.sent_msgs = seq + 1
            end = unmasked_frame(harness.OP_TEXT, b"END %d" % flood.sent_msgs)
            if not send_fully(conn, end, deadline):
                flood.error = "flood: could not send END"
                return
        finally:
            flood.finished.set()
        # Echo phase: echo data frames, answer a close, then wait for the gateway to hang up.
        reader = harness.FrameReader()
        conn.settimeout(harness.IO_TIMEOUT)
        for _ in range(1000):
            frame = reader.next_frame()
            if frame is None:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                reader.feed(chunk)
                continue
            fin, op, payload = frame
            conn.sendall(unmasked_frame(op, payload))
            if op == harness.OP_CLOSE:
                return  # the server closes the TCP connection first (RFC 6455 7.1.1)

    return handler


def lazy_upstream_handler(state):
    """Accepts the upgrade, then reads nothing until state.stop is set; then counts what
    arrives until the END text frame and checks the sequence; then echoes."""

    def handler(conn, up):
        harness.websocket_accept(conn, up)
        up.event("accepted")
        state.stop.wait(FLOOD_SECONDS + 30)
        reader = harness.FrameReader()
        expected = 0
        conn.settimeout(harness.IO_TIMEOUT)
        for _ in range(10 ** 7):
            frame = reader.next_frame()
            if frame is None:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    state.error = "upstream: EOF after %d messages" % expected
                    return
                reader.feed(chunk)
                continue
            fin, op, payload = frame
            if op == harness.OP_BINARY:
                if payload != msg_payload(expected, state.base):
                    state.error = "upstream: message %d corrupt or out of order" % expected
                    return
                expected += 1
            elif op == harness.OP_TEXT:
                up.event("received", expected, payload)
                conn.sendall(unmasked_frame(harness.OP_TEXT, payload))
            elif op == harness.OP_CLOSE:
                conn.sendall(unmasked_frame(harness.OP_CLOSE, payload))
                return  # the server closes the TCP connection first (RFC 6455 7.1.1)

    return handler


class BackpressureTest(GatewayTestCase):
    def start(self, handler):
        up = self.start_peer(RawUpstream(handler, name="flood-peer"))
        gw = self.start_gateway(harness.make_config(
            upstreams={"flood": {"endpoints": [up.addr]}},
            routes=[{"name": "flood", "match": {"path_prefix": "/flood"}, "upstream": "flood"}],
            limits={"high_water": "256KiB"}))
        return up, gw

    def observe_rss(self, gw, progress, done):
        """Sample VmRSS every 100 ms until the flood stalls, finishes, or FLOOD_SECONDS pass.
        Returns (baseline_kib, max_kib, samples)."""
        baseline = gw.rss_kib()
        peak, samples = baseline, 0
        started = time.monotonic()
        last_progress, last_change = progress(), started
        pacer = threading.Event()  # never set: wait() only paces the sampling
        for _ in range(int(FLOOD_SECONDS / SAMPLE_EVERY) + 10):
            now = time.monotonic()
            self.assertGatewayAlive(gw)
            rss = gw.rss_kib()
            samples += 1
            peak = max(peak, rss)
            if rss > baseline + RSS_GROWTH_MIB * 1024:
                self.fail("upgate VmRSS %.1f MiB grew more than %d MiB over its %.1f MiB "
                          "baseline after %.1fs (%.1f MiB flooded so far)"
                          % (rss / 1024, RSS_GROWTH_MIB, baseline / 1024, now - started,
                             progress() / 2 ** 20))
            p = progress()
            if p != last_progress:
                last_progress, last_change = p, now
            if done():
                break
            if now - started >= MIN_OBSERVE and now - last_change >= STALL_SECONDS:
                break
            if now - started > FLOOD_SECONDS:
                break
            pacer.wait(SAMPLE_EVERY)
        return baseline, peak, samples

    def report(self, direction, baseline, peak, samples, flooded):
        print("\n%s: flooded %.1f MiB before stalling; upgate VmRSS baseline %.1f MiB, "
              "max %.1f MiB over %d samples (growth bound %d MiB)"
              % (direction, flooded / 2 ** 20, baseline / 1024, peak / 1024, samples,
                 RSS_GROWTH_MIB))

    def test_upstream_flood_to_client_that_stopped_reading(self):
        flood = Flood()
        up, gw = self.start(upstream_flood_handler(flood))
        self.addCleanup(flood.stop.set)
        c = RawClient(gw.addr(), rcvbuf=4096)
        self.addCleanup(c.close)
        c.handshake("/flood")
        # From here on the client reads nothing until the RSS observation is over.
        baseline, peak, samples = self.observe_rss(gw, lambda: flood.sent_msgs * MSG,
                                                   flood.finished.is_set)
        flooded = flood.sent_msgs * MSG
        self.report("upstream->client", baseline, peak, samples, flooded)
        self.assertLess(peak - baseline, RSS_GROWTH_MIB * 1024)
        self.assertIsNone(flood.error)

        # Read again: everything the upstream sent arrives in order, then the session echoes.
        flood.stop.set()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        expected = 0
        drain_deadline = time.monotonic() + 60
        for _ in range(FLOOD_BYTES // MSG + 10):
            self.assertLess(time.monotonic(), drain_deadline, "draining took over 60s")
            fin, op, payload = c.recv_frame(timeout=30)
            if op == harness.OP_TEXT:
                self.assertEqual(payload, b"END %d" % flood.sent_msgs)
                break
            self.assertEqual(op, harness.OP_BINARY)
            self.assertEqual(len(payload), MSG, "message %d" % expected)
            seq = struct.unpack("!Q", payload[:8])[0]
            self.assertEqual(seq, expected, "messages lost or reordered")
            self.assertTrue(payload[8:] == flood.base[8:], "message %d corrupt" % expected)
            expected += 1
        self.assertEqual(expected, flood.sent_msgs)
        self.assertTrue(flood.finished.wait(30))
        self.assertIsNone(flood.error)

        c.send_frame(harness.OP_TEXT, b"still alive")
        self.assertEqual(c.recv_frame(), (True, harness.OP_TEXT, b"still alive"))
        c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
        self.assertEqual(c.recv_frame()[1], harness.OP_CLOSE)
        _, how = c.read_until_closed(10)
        self.assertIn(how, ("eof", "reset"))
        self.assertEqual(up.errors, [])

    def test_client_flood_to_upstream_that_stopped_reading(self):
        state = Flood()
        up, gw = self.start(lazy_upstream_handler(state))
        c = RawClient(gw.addr())
        self.addCleanup(c.close)
        c.handshake("/flood")
        up.wait_event(lambda e: e[0] == "accepted")
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        sent = [0]
        finished = threading.Event()
        errors = []

        def client_flood():
            try:
                deadline = time.monotonic() + FLOOD_SECONDS + 30
                stop_at = time.monotonic() + FLOOD_SECONDS
                for seq in range(FLOOD_BYTES // MSG):
                    if state.stop.is_set() or time.monotonic() > stop_at:
                        break
                    frame = harness.encode_frame(harness.OP_BINARY, msg_payload(seq, state.base))
                    if not send_fully(c.sock, frame, deadline):
                        errors.append("client could not send message %d" % seq)
                        return
                    sent[0] = seq + 1
                if not send_fully(c.sock, harness.encode_frame(harness.OP_TEXT, b"END"),
                                  deadline):
                    errors.append("client could not send END")
            except OSError as exc:
                errors.append(repr(exc))
            finally:
                finished.set()

        t = threading.Thread(target=client_flood, daemon=True)
        t.start()
        self.addCleanup(t.join, 30)
        self.addCleanup(state.stop.set)
        baseline, peak, samples = self.observe_rss(gw, lambda: sent[0] * MSG, finished.is_set)
        self.report("client->upstream", baseline, peak, samples, sent[0] * MSG)
        self.assertLess(peak - baseline, RSS_GROWTH_MIB * 1024)

        state.stop.set()  # the upstream reads again
        self.assertTrue(finished.wait(60), "client flood did not finish after upstream resumed")
        self.assertEqual(errors, [])
        got = up.wait_event(lambda e: e[0] == "received", timeout=60, what="END at upstream")
        self.assertIsNone(state.error)
        self.assertEqual(got[1], sent[0], "messages received by the upstream")
        self.assertEqual(c.recv_frame(timeout=30), (True, harness.OP_TEXT, b"END"))
        c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
        self.assertEqual(c.recv_frame()[1], harness.OP_CLOSE)
        _, how = c.read_until_closed(10)
        self.assertIn(how, ("eof", "reset"))
        self.assertEqual(up.errors, [])


SHORT_HOLD = 1.2          # well under keepalive interval (2 s) + timeout (2 s): sanitizer builds
LONG_HOLD = 6.0           # > interval + timeout, with room
STEADY_MSGS = 256         # 16 MiB: more than the kernel buffers on the way can hold


def steady_flood_handler(state, size=MSG, count=STEADY_MSGS):
    """Accepts the upgrade, sends `count` binary messages of `size` bytes (the first 8: the
    sequence number) and "END" from a writer thread
    while the handler reads what the client sends: pings are answered (between the writer's
    frames, so after the flood when the socket is full), a text frame is echoed once the flood
    is out, a close frame is answered."""

    def handler(conn, up):
        harness.websocket_accept(conn, up)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lock = threading.Lock()  # one frame at a time on the wire

        def writer():
            deadline = time.monotonic() + FLOOD_SECONDS
            try:
                for seq in range(count):
                    with lock:
                        if not send_fully(conn, unmasked_frame(harness.OP_BINARY,
                                                               msg_payload(seq, state.base)[:size]),
                                          deadline):
                            state.error = "flood: message %d not sent before the deadline" % seq
                            return
                    state.sent_msgs = seq + 1
                with lock:
                    if not send_fully(conn, unmasked_frame(harness.OP_TEXT, b"END"), deadline):
                        state.error = "flood: END not sent before the deadline"
            except OSError as exc:  # the gateway hung up (expected when it ends the session)
                state.error = "flood: %s after %d messages" % (exc, state.sent_msgs)
            finally:
                state.finished.set()

        threading.Thread(target=writer, daemon=True, name="steady-flood").start()
        reader = harness.FrameReader()
        quiet_until = time.monotonic() + FLOOD_SECONDS
        for _ in range(10 ** 6):
            frame = reader.next_frame()
            if frame is None:
                try:  # the writer's send_fully sets the socket's (shared) timeout
                    chunk = conn.recv(65536)
                except socket.timeout:
                    if time.monotonic() > quiet_until:
                        return
                    continue
                if not chunk:
                    return
                reader.feed(chunk)
                continue
            fin, op, payload = frame
            if op == harness.OP_PING:
                with lock:
                    conn.sendall(unmasked_frame(harness.OP_PONG, payload))
            elif op == harness.OP_TEXT and payload == b"still alive":
                state.finished.wait(FLOOD_SECONDS)
                with lock:
                    conn.sendall(unmasked_frame(harness.OP_TEXT, payload))
            elif op == harness.OP_CLOSE:
                state.finished.wait(FLOOD_SECONDS)
                with lock:
                    conn.sendall(unmasked_frame(harness.OP_CLOSE, payload))
                return  # the server closes the TCP connection first (RFC 6455 7.1.1)

    return handler


class KeepaliveUnderBackpressureTest(GatewayTestCase):
    """The upstream floods a client that reads nothing for a while but keeps talking. upgate
    stops reading the upstream (backpressure), so the upstream's pongs wait unread behind its
    data: the keepalive must not take the upstream for dead. A stall shorter than interval +
    timeout is survived with nothing lost; a longer one ends the session naming the client,
    which is the side that took no data (a quiet dead client behind a chatty upstream is found
    the same way). The short stalls guard against regressions: the old code survived them too;
    the long ones named the wrong side (or hung) before."""

    def start(self, mode, **flood):
        self.state = Flood()
        self.up = self.start_peer(RawUpstream(steady_flood_handler(self.state, **flood),
                                              name="steady-flood"))
        self.gw = self.start_gateway(harness.make_config(
            upstreams={"flood": {"endpoints": [self.up.addr]}},
            routes=[{"name": "flood", "match": {"path_prefix": "/flood"}, "upstream": "flood",
                     "mode": mode, "keepalive": {"interval": "2s", "timeout": "2s"}}],
            limits={"high_water": "256KiB"}))
        self.c = RawClient(self.gw.addr(), rcvbuf=4096)
        self.addCleanup(self.c.close)
        self.c.handshake("/flood")

    def stall(self, seconds, talk=True):
        """Read nothing for `seconds`; with `talk`, say something every 300 ms (the client is
        plainly alive), else stay silent too (as a client whose host vanished)."""
        until = time.monotonic() + seconds
        pacer = threading.Event()  # never set: wait() only paces
        for _ in range(1000):
            if time.monotonic() >= until:
                break
            try:
                if talk:
                    self.c.send_frame(harness.OP_TEXT, b"tick")
            except OSError:
                return  # the gateway hung up: the caller finds out why
            pacer.wait(0.3)

    def recv_data(self, timeout):
        """The next data or close frame; pings are answered, pongs skipped (in passthrough the
        upstream's answer to upgate's ping comes on to the client)."""
        for _ in range(100):
            fin, op, payload = self.c.recv_frame(timeout=timeout)
            if op == harness.OP_PING:
                self.c.send_frame(harness.OP_PONG, payload)
            elif op != harness.OP_PONG:
                return op, payload
        self.fail("only control frames")

    def short_stall_survives(self, mode):
        self.start(mode)
        self.stall(SHORT_HOLD)
        self.assertFalse(self.state.finished.is_set(),
                         "the flood was not held back: the upstream's leg was never paused")
        expected = 0
        for _ in range(STEADY_MSGS + 1):
            op, payload = self.recv_data(30)
            self.assertNotEqual(op, harness.OP_CLOSE,
                                "closed after %d messages: %r" % (expected, payload))
            if op == harness.OP_TEXT:
                self.assertEqual(payload, b"END")
                break
            self.assertEqual(op, harness.OP_BINARY)
            self.assertEqual(struct.unpack("!Q", payload[:8])[0], expected,
                             "messages lost or reordered")
            expected += 1
        self.assertEqual(expected, STEADY_MSGS)
        self.assertIsNone(self.state.error)
        self.c.send_frame(harness.OP_TEXT, b"still alive")
        self.assertEqual(self.recv_data(10), (harness.OP_TEXT, b"still alive"))
        self.c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
        self.assertEqual(self.recv_data(10)[0], harness.OP_CLOSE)
        self.assertNotRegex(self.gw.stderr_text(), r"did not answer a ping|did not read")
        self.assertEqual(self.up.errors, [])

    def long_stall_names_the_client(self, mode, talk=True):
        self.start(mode)
        started = time.monotonic()
        self.stall(LONG_HOLD, talk)
        entry = self.gw.wait_access_log(lambda e: e.get("route") == "flood", 15,
                                        what="the session's access-log line")
        self.assertRegex(entry.get("close", ""), r"^client did not read", entry)
        self.assertLess(time.monotonic() - started, LONG_HOLD + 15)
        self.assertNotRegex(self.gw.stderr_text(), r"upstream did not answer a ping")
        self.assertRegex(self.gw.stderr_text(),
                         r"client did not take half of what upgate held for it within 4000 ms")

    def test_short_stall_passthrough(self):
        self.short_stall_survives("passthrough")

    def test_short_stall_frames(self):
        self.short_stall_survives("frames")

    def test_long_stall_passthrough(self):
        self.long_stall_names_the_client("passthrough")

    def test_long_stall_frames(self):
        self.long_stall_names_the_client("frames")

    def test_silent_stalled_client_is_found(self):
        self.long_stall_names_the_client("passthrough", talk=False)

    def test_silent_client_behind_small_messages_is_found_at_once(self):
        # Small messages: the paused direction stops at a frame boundary, so the silent client
        # is pinged and found by the ping (interval + timeout after its handshake), before the
        # stall verdict. The upstream, which must answer the close, is not being read: upgate
        # ends the session then, not at timeouts.close (5 s later).
        self.start("passthrough", size=1020, count=16384)
        started = time.monotonic()
        entry = self.gw.wait_access_log(lambda e: e.get("route") == "flood", 30,
                                        what="the session's access-log line")
        self.assertRegex(entry.get("close", ""), r"^client did not (answer a ping|read)$", entry)
        self.assertLess(time.monotonic() - started, 4.0 + 4.0,
                        "ended long after interval + timeout: waited for timeouts.close?")


if __name__ == "__main__":
    unittest.main(verbosity=2)
