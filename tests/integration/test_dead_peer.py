"""Dead peers that keepalive pings cannot reach: the other peer is in the middle of a long frame
towards them (trickling its payload), so upgate's ping has no frame boundary to go out at. The
leg's TCP connection judges it instead (TCP_USER_TIMEOUT of interval + timeout): a client or an
upstream that stops acknowledging is found dead and the other peer gets a 1001; a live peer
behind the same trickle is left alone. Both modes.

"Dead" means what a pulled cable or a vanished host looks like to TCP: nothing comes back, not
even ACKs. The test makes that with an nftables rule that drops every packet to the client's
port, so it runs in a network namespace of its own (netns.sh), never on the machine's loopback.
"""

import os
import socket
import subprocess
import threading
import time
import unittest

import harness
from harness import GatewayTestCase, RawClient, RawUpstream, FrameReader, OP_BINARY, OP_CLOSE

INTERVAL = 1.0       # keepalive.interval
PING_TIMEOUT = 1.0   # keepalive.timeout
SLACK = 4.0          # retransmission timer granularity and a shared, noisy machine
TRICKLE = 0.1        # seconds between the pieces of the long frame
PIECE = b"p" * 16
FRAME_SIZE = 1 << 20  # announced payload (under max_message_size): never ends within a test
# The ping to the quiet peer becomes due INTERVAL after the 101 and finds no boundary: from then
# on TCP gives what is sent to it interval + timeout to be acknowledged.
FOUND_WITHIN = 2 * INTERVAL + PING_TIMEOUT + SLACK
ENDED = ("close", "eof", "send-failed", "recv-failed")


def nft(*args):
    subprocess.run(["nft"] + list(args), check=True, timeout=10)


def drop_packets_to(test, port):
    """From now on nothing sent to `port` on this namespace's loopback arrives: it leaves its
    sender and is dropped on input, so it goes unacknowledged and is sent again until TCP gives
    up, as if the host behind the port had vanished. Undone when the test ends."""
    nft("add", "table", "inet", "dead_peer")
    test.addCleanup(nft, "delete", "table", "inet", "dead_peer")
    nft("add", "chain", "inet", "dead_peer", "in", "{ type filter hook input priority 0; }")
    nft("add", "rule", "inet", "dead_peer", "in", "tcp", "dport", str(port), "drop")


def frame_start(mask):
    """The header of a binary frame of FRAME_SIZE bytes (mask: with an all-zero masking key,
    so that the payload bytes go as they are)."""
    return (bytes([0x80 | OP_BINARY, (0x80 if mask else 0) | 127]) + FRAME_SIZE.to_bytes(8, "big")
            + (b"\0\0\0\0" if mask else b""))


def trickle(sock, peer, mask, stopping):
    """Starts the long frame on `sock` and sends a piece of it every TRICKLE seconds, reading
    what comes back meanwhile. Records, on `peer` (a RawUpstream or a Peer), the close frame
    that arrives ("close", code, reason) or how the connection ended, and returns then."""
    sock.sendall(frame_start(mask))
    peer.event("frame-started")
    frames = FrameReader()
    sock.settimeout(TRICKLE)
    for _ in range(int(120 / TRICKLE)):
        if stopping.is_set():
            return
        try:
            sock.sendall(PIECE)
        except OSError as exc:
            peer.event("send-failed", repr(exc))
            return
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError as exc:
            peer.event("recv-failed", repr(exc))
            return
        if not data:
            peer.event("eof")
            return
        frames.feed(data)
        for _ in range(100):
            f = frames.next_frame()
            if f is None:
                break
            _, opcode, payload = f
            if opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                peer.event("close", code, payload[2:].decode("utf-8", "replace"))
                return


class TricklingClient(threading.Thread):
    """The client side of the same: a RawClient that trickles its long frame in a thread, with
    the same event log as RawUpstream."""

    def __init__(self, client):
        super().__init__(daemon=True, name="trickling-client")
        self.client = client
        self.events = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()

    def event(self, *item):
        with self.cond:
            self.events.append(item)
            self.cond.notify_all()

    def wait_event(self, predicate, timeout, what):
        with self.cond:
            if not self.cond.wait_for(lambda: any(predicate(e) for e in self.events), timeout):
                raise AssertionError("client: no %s within %.0fs; events: %r"
                                     % (what, timeout, self.events))
            return next(e for e in self.events if predicate(e))

    def run(self):
        trickle(self.client.sock, self, True, self.stopping)

    def stop(self):
        self.stopping.set()
        self.join(5)


class DeadPeerBehindAFrame:
    """Mixed into a TestCase per mode (MODE)."""

    MODE = "passthrough"

    def start(self, handler):
        if os.environ.get("UPGATE_NETNS") != "1":
            self.skipTest("drops packets with nftables: run through netns.sh, which gives the "
                          "test a network namespace of its own")
        self.up = self.start_peer(RawUpstream(handler, name="upstream"))
        self.gw = self.start_gateway(harness.make_config(
            upstreams={"up": {"endpoints": [self.up.addr]}},
            routes=[{"name": "r", "match": {"path_prefix": "/"}, "upstream": "up",
                     "mode": self.MODE,
                     "keepalive": {"interval": "%gs" % INTERVAL, "timeout": "%gs" % PING_TIMEOUT}}],
            timeouts={"close": "1s"}))
        self.client = RawClient(self.gw.addr())
        self.addCleanup(self.client.close)
        self.client.handshake("/dead-peer")

    def assert_found_dead(self, who, got, elapsed):
        self.assertEqual(got[:2], ("close", 1001), "the other peer got %r" % (got,))
        self.assertEqual(got[2], "%s stopped acknowledging TCP" % who)
        self.assertLess(elapsed, FOUND_WITHIN, "found dead only after %.1f s" % elapsed)
        entry = self.gw.access_log_for_client(self.client.local, timeout=10)
        self.assertRegex(entry.get("close", ""), r"^%s stopped acknowledging TCP" % who, entry)
        self.assertEqual((entry.get("close_code"), entry.get("close_by")), (1001, "gateway"),
                         entry)
        self.assertRegex(self.gw.stderr_text(),
                         r"%s's TCP connection timed out while a keepalive ping waited for a "
                         r"frame boundary" % who)

    # -- the upstream trickles, the client vanishes or stays -------------------------------

    def start_upstream_trickling(self):
        def handler(conn, up):
            harness.websocket_accept(conn, up)
            trickle(conn, up, False, up.stopping)

        self.start(handler)
        self.up.wait_event(lambda e: e[0] == "frame-started", what="the frame's start")
        self.received = 0
        self.read_client(TRICKLE * 5)
        self.assertGreater(self.received, 0, "nothing of the upstream's frame reached the client")

    def read_client(self, seconds):
        """Reads (and counts) what reaches the client for `seconds`."""
        deadline = time.monotonic() + seconds
        for _ in range(100000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.client.sock.settimeout(remaining)
            try:
                data = self.client.sock.recv(65536)
            except socket.timeout:
                return
            if not data:
                self.fail("the client's connection ended: %d bytes received" % self.received)
            self.received += len(data)

    def test_client_that_stops_acknowledging_is_found_dead(self):
        self.start_upstream_trickling()
        drop_packets_to(self, self.client.local[1])
        started = time.monotonic()
        got = self.up.wait_event(lambda e: e[0] in ENDED, timeout=FOUND_WITHIN + 5,
                                 what="the end of the session")
        self.assert_found_dead("client", got, time.monotonic() - started)
        # The upstream, inside its frame, cannot answer the close frame; it closes its socket
        # instead, and with the client gone that ends the session at once.
        entry = self.gw.access_log_for_client(self.client.local)
        self.assertEqual(entry.get("close"), "client stopped acknowledging TCP; upstream closed")

    def test_live_client_behind_the_frame_is_left_alone(self):
        self.start_upstream_trickling()
        before = self.received
        self.read_client(FOUND_WITHIN)  # well past the bound: the client acknowledges
        self.assertGreater(self.received, before)
        self.assertFalse([e for e in self.up.events if e[0] in ENDED],
                         "the session ended: %r" % self.up.events)
        self.assertGatewayAlive(self.gw)

    # -- the client trickles, the upstream vanishes ----------------------------------------

    def test_upstream_that_stops_acknowledging_is_found_dead(self):
        def handler(conn, up):
            harness.websocket_accept(conn, up)
            up.event("upstream-port", conn.getsockname()[1])
            conn.settimeout(1)
            for _ in range(600):  # reads the trickle, sends nothing, until the test stops
                if up.stopping.is_set():
                    return
                try:
                    if not conn.recv(65536):
                        return
                except socket.timeout:
                    continue

        self.start(handler)
        port = self.up.wait_event(lambda e: e[0] == "upstream-port", what="the upstream")[1]
        client = TricklingClient(self.client)
        self.addCleanup(client.stop)
        client.start()
        client.wait_event(lambda e: e[0] == "frame-started", 10, "the frame's start")
        time.sleep(TRICKLE * 5)  # a few pieces reach the upstream
        drop_packets_to(self, port)
        started = time.monotonic()
        got = client.wait_event(lambda e: e[0] in ENDED, FOUND_WITHIN + 5, "the end of the session")
        self.assert_found_dead("upstream", got, time.monotonic() - started)


class PassthroughTest(DeadPeerBehindAFrame, GatewayTestCase):
    MODE = "passthrough"


class FramesTest(DeadPeerBehindAFrame, GatewayTestCase):
    MODE = "frames"


if __name__ == "__main__":
    unittest.main(verbosity=2)
