"""Handshakes that go wrong on a TLS listener.

`timeouts.head: 1s` covers the TLS handshake: a TCP connection that sends nothing, half a
ClientHello, or trickles one is cut; a client that finishes the handshake but sends no request
gets a 408 inside TLS. Garbage instead of a ClientHello (random bytes, a plain-HTTP request)
is closed at once, well before the head timeout, with exactly one log line for that session;
the gateway keeps serving."""

import os
import socket
import ssl
import time
import unittest

import harness
from harness import GatewayTestCase, RawClient

import tlsutil
from tlsutil import Pki, tls_listener, TlsEchoUpstream

HEAD_TIMEOUT = 1.0        # timeouts.head of the "fast" gateway
SLOW_HEAD_TIMEOUT = 30.0  # the "slow" gateway: anything closed quickly there was not a timeout
MARGIN = 6.0              # shared noisy machines: no bound tighter than a few seconds


class HandshakeLimitsTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        pki = cls.pki = Pki(tlsutil.temp_dir(cls))
        cls.ca = pki.ca("ca", "upgate test CA")
        cls.cert = pki.leaf("a", cls.ca, "a.example.com", dns=["a.example.com"])
        cls.echo = cls.start_class_peer(TlsEchoUpstream(name="plain-echo"))

        def config(head):
            return harness.make_config(
                upstreams={"echo": {"endpoints": [cls.echo.addr]}},
                routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "echo"}],
                listeners=[tls_listener("secure", [cls.cert])],
                timeouts={"head": head, "idle": 0, "half_close": "5s"})

        cls.fast = cls.start_class_gateway(config("1s"))
        cls.slow = cls.start_class_gateway(config("30s"))
        cls.ctx = tlsutil.client_context(cls.ca.cert)

    def tearDown(self):
        self.assertGatewayAlive(self.fast)
        self.assertGatewayAlive(self.slow)

    # -- helpers ----------------------------------------------------------------------------
    def connect(self, gw):
        c = RawClient(gw.addr("secure"))
        self.addCleanup(c.close)
        return c

    def assertCutByHeadTimeout(self, c, what, sent_at=None):
        start = sent_at if sent_at is not None else time.monotonic()
        how, _, got = tlsutil.wait_closed(c.sock, HEAD_TIMEOUT + MARGIN)
        elapsed = time.monotonic() - start
        self.assertIn(how, ("eof", "reset"), "%s: still open after %.1fs (timeouts.head is %.0fs)"
                      % (what, elapsed, HEAD_TIMEOUT))
        self.assertGreaterEqual(elapsed, HEAD_TIMEOUT * 0.9,
                                "%s: closed after %.2fs, before timeouts.head" % (what, elapsed))
        self.assertFalse(got.startswith(b"HTTP/"), "%s: plaintext HTTP on a TLS connection: %r"
                         % (what, got[:200]))
        return got

    def assertWorks(self, gw):
        c = tlsutil.TlsRawClient(gw.addr("secure"), self.ctx)
        self.addCleanup(c.close)
        c.handshake("/after", host="a.example.com")
        c.send_frame(harness.OP_TEXT, b"still serving")
        self.assertEqual(c.recv_frame(), (True, harness.OP_TEXT, b"still serving"))

    def session_lines(self, gw, c):
        """(access-log entry, stderr events) of the session of client socket `c`."""
        entry = gw.access_log_for_client(c.local)
        return entry, tlsutil.for_session(gw, entry["id"])

    # -- timeouts.head covers the handshake -------------------------------------------------
    def test_silent_connection_cut(self):
        c = self.connect(self.fast)
        self.assertCutByHeadTimeout(c, "TCP connect, nothing sent", sent_at=time.monotonic())
        self.assertWorks(self.fast)

    def test_half_client_hello_cut(self):
        hello = tlsutil.client_hello()
        c = self.connect(self.fast)
        c.send(hello[:len(hello) // 2])
        self.assertCutByHeadTimeout(c, "half a ClientHello")
        self.assertWorks(self.fast)

    def test_trickled_client_hello_cut(self):
        # The deadline is total: bytes arriving now and then do not extend it.
        hello = tlsutil.client_hello()
        c = self.connect(self.fast)
        start = time.monotonic()
        closed = False
        for i in range(len(hello) - 1):  # never the last byte
            try:
                c.sock.sendall(hello[i:i + 1])
            except OSError:
                closed = True
                break
            how, _, _ = tlsutil.wait_closed(c.sock, 0.1)  # paces the trickle, ~10 bytes/s
            if how != "timeout":
                closed = True
                break
            if time.monotonic() - start > HEAD_TIMEOUT + MARGIN:
                break
        elapsed = time.monotonic() - start
        self.assertTrue(closed, "a trickled ClientHello kept the connection open %.1fs" % elapsed)
        self.assertGreaterEqual(elapsed, HEAD_TIMEOUT * 0.9)

    def test_handshake_done_no_request_gets_408(self):
        c = tlsutil.TlsRawClient(self.fast.addr("secure"), self.ctx)
        self.addCleanup(c.close)
        start = time.monotonic()
        resp = c.read_response(timeout=HEAD_TIMEOUT + MARGIN)
        self.assertEqual(resp.status, 408, repr(resp))
        self.assertGreaterEqual(time.monotonic() - start, HEAD_TIMEOUT * 0.5)
        extra, how = c.read_until_closed(MARGIN)
        self.assertIn(how, ("eof", "reset"), "still open after the 408")

    def test_head_timeout_session_is_logged(self):
        c = self.connect(self.fast)
        self.assertCutByHeadTimeout(c, "TCP connect, nothing sent", sent_at=time.monotonic())
        entry, _ = self.session_lines(self.fast, c)
        self.assertEqual(entry.get("listener"), "secure", entry)

    # -- slow but valid ----------------------------------------------------------------------
    def test_handshake_and_records_split_at_every_byte(self):
        # Every TCP segment carries one byte of ciphertext, and the request and a frame go as
        # 1-byte TLS records: the TLS layer must reassemble both, for 1.3 and 1.2.
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version.name):
                ctx = tlsutil.client_context(self.ca.cert, minimum=version, maximum=version)
                c = tlsutil.TrickleTlsClient(self.slow.addr("secure"), ctx)
                self.addCleanup(c.close)
                self.assertEqual(c.handshake(), version.name.replace("_", "."))
                key = harness.ws_key()
                c.write_records(harness.ws_request("/trickle", host="a.example.com", key=key))
                head = c.read_until(lambda b: b"\r\n\r\n" in b)
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head[:200])
                self.assertIn(harness.accept_key(key).encode(), head)
                c.plain = c.plain[c.plain.index(b"\r\n\r\n") + 4:]
                payload = b"one byte per record, one byte per segment"
                c.write_records(harness.encode_frame(harness.OP_TEXT, payload))
                reader = harness.FrameReader()
                got = c.read_until(lambda b: len(b) >= 2 + len(payload))
                reader.feed(got)
                self.assertEqual(reader.next_frame(), (True, harness.OP_TEXT, payload))

    # -- garbage instead of a ClientHello ---------------------------------------------------
    def check_garbage(self, data, what):
        c = self.connect(self.slow)
        c.send(data)
        how, elapsed, got = tlsutil.wait_closed(c.sock, MARGIN)
        self.assertIn(how, ("eof", "reset"), "%s: still open after %.1fs (head timeout %.0fs)"
                      % (what, elapsed, SLOW_HEAD_TIMEOUT))
        self.assertFalse(got.startswith(b"HTTP/"), "%s: got plaintext HTTP %r" % (what, got[:200]))
        entry, lines = self.session_lines(self.slow, c)
        about = [tlsutil.msg(e) for e in lines
                 if any(w in tlsutil.msg(e).lower() for w in ("tls", "ssl", "handshake"))]
        self.assertEqual(len(about), 1, "%s: want exactly one log line about the failed "
                         "handshake for session %s, got %d:\n%s\nall lines of the session:\n%s"
                         % (what, entry["id"], len(about), "\n".join(about),
                            "\n".join(str(e) for e in lines)))
        self.assertWorks(self.slow)
        return entry, about[0]

    def test_random_bytes_instead_of_client_hello(self):
        self.check_garbage(b"\x00\xffnot tls at all" + os.urandom(200), "random bytes")

    def test_plain_http_on_tls_port(self):
        self.check_garbage(harness.ws_request("/chat", host="a.example.com"),
                           "plain HTTP upgrade on the TLS port")

    def test_bad_record_after_valid_header_byte(self):
        # Starts like a handshake record, then claims an impossible length.
        self.check_garbage(b"\x16\x03\x01\xff\xff" + b"\x00" * 64, "oversized record header")

    def test_many_garbage_connections_then_normal_service(self):
        # Not purely random bytes: about 1 in 900 random prefixes is a plausible record header
        # (type, 0x03 0xNN, a length under the limit) that TLS rightly waits to complete.
        # A second byte other than 0x03 is a wrong version at once.
        socks = []
        for i in range(50):
            s = socket.create_connection(self.slow.addr("secure"), timeout=harness.IO_TIMEOUT)
            self.addCleanup(s.close)
            s.sendall(b"NOT TLS " + os.urandom(64 + i))
            socks.append(s)
        for i, s in enumerate(socks):
            how, elapsed, _ = tlsutil.wait_closed(s, MARGIN)
            self.assertIn(how, ("eof", "reset"), "garbage connection %d still open" % i)
        self.assertWorks(self.slow)


if __name__ == "__main__":
    unittest.main(verbosity=2)
