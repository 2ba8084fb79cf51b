"""Every error status upgate sends before the 101, and the upstream failures it maps.

Each response must carry `Connection: close` and the gateway must close the socket after it.
One gateway serves all cases; each misbehaving upstream has its own route."""

import socket
import ssl
import time
import unittest

import bridge_util
import harness
from harness import (GatewayTestCase, EchoUpstream, RawClient, RawUpstream, RefusedPort,
                     BlackholeUpstream, ws_request)

HEAD_TIMEOUT = 2.0          # timeouts.head of the gateway under test
SLOW_MARGIN = 6.0           # shared noisy machines: never assert tighter than a few seconds
FORBIDDEN_BODY = b"upstream says no: token expired\n"


class ErrorsTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream())
        cls.refused = [cls.start_class_peer(RefusedPort()) for _ in range(2)]
        cls.blackhole = cls.start_class_peer(BlackholeUpstream())
        cls.silent = cls.start_class_peer(RawUpstream(harness.silent_handler, name="silent"))
        cls.forbidden = cls.start_class_peer(RawUpstream(harness.make_response_handler(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Upstream: yes\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(FORBIDDEN_BODY), FORBIDDEN_BODY)),
            name="forbidden"))
        # A 101 whose Sec-WebSocket-Accept does not answer the key, and an answer that is no
        # HTTP at all: the real binary must turn both into its own 502.
        cls.wrong_accept = cls.start_class_peer(RawUpstream(harness.make_response_handler(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"), name="wrong-accept"))
        cls.garbage = cls.start_class_peer(RawUpstream(harness.make_response_handler(
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), name="garbage"))
        upstreams = {
            "echo": {"endpoints": [cls.echo.addr]},
            "refused": {"endpoints": [p.addr for p in cls.refused], "connect_timeout": "30s"},
            "failover": {"endpoints": [cls.refused[0].addr, cls.echo.addr]},
            "blackhole": {"endpoints": [cls.blackhole.addr], "connect_timeout": "1s"},
            "silent": {"endpoints": [cls.silent.addr], "handshake_timeout": "1s"},
            "forbidden": {"endpoints": [cls.forbidden.addr]},
            "wrongaccept": {"endpoints": [cls.wrong_accept.addr]},
            "garbage": {"endpoints": [cls.garbage.addr]},
        }
        routes = [{"name": n, "match": {"path_prefix": "/" + n}, "upstream": n} for n in upstreams]
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams, routes, timeouts={"head": "2s", "idle": 0, "half_close": "5s"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    # -- helpers ----------------------------------------------------------------------------
    def exchange(self, data, timeout=harness.IO_TIMEOUT):
        """Send `data` in one write; return (response with body, client address)."""
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(data)
        resp = c.read_response(timeout)
        c.read_body(resp)
        self.assertClosedAfter(c, resp)
        return resp, c.local

    def assertClosedAfter(self, c, resp):
        """The gateway said Connection: close and then closes: nothing more arrives."""
        self.assertIn("close", resp.tokens("Connection"), "no Connection: close in %r" % resp)
        extra, how = c.read_until_closed(5.0)
        self.assertIn(how, ("eof", "reset"), "socket still open 5s after %r" % resp)
        self.assertEqual(extra, b"", "bytes after the response body: %r" % extra[:200])
        c.close()  # the gateway may linger for our FIN before it ends (and logs) the session

    def assertStatus(self, data, status, **kw):
        resp, local = self.exchange(data, **kw)
        self.assertEqual(resp.status, status, "request %r\ngot %r" % (data[:300], resp))
        return resp, local

    # -- 400 -------------------------------------------------------------------------------
    def test_400_missing_key(self):
        self.assertStatus(ws_request("/echo", omit=["Sec-WebSocket-Key"]), 400)

    def test_400_invalid_key(self):
        for key in ["abc", "not base64 at all!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]:
            with self.subTest(key=key):
                self.assertStatus(ws_request("/echo", key=key), 400)

    def test_400_method_not_get(self):
        for method in ["POST", "PUT"]:
            with self.subTest(method=method):
                self.assertStatus(ws_request("/echo", method=method,
                                             extra=[("Content-Length", "0")]), 400)

    def test_400_http10_upgrade(self):
        self.assertStatus(ws_request("/echo", http="HTTP/1.0"), 400)

    def test_400_malformed_requests(self):
        cases = [
            b"GARBAGE\r\n\r\n",
            b"GET /echo HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            ws_request("/echo").replace(b"Upgrade: websocket\r\n", b"Upgrade websocket\r\n"),
            ws_request("/echo").replace(b"Host: localhost", b"Ho st: localhost"),
        ]
        for data in cases:
            with self.subTest(request=data[:40]):
                self.assertStatus(data, 400)

    # -- 426 / 404 -------------------------------------------------------------------------
    def test_426_wrong_version(self):
        for version in ["8", "14"]:
            with self.subTest(version=version):
                resp, _ = self.assertStatus(ws_request("/echo", version=version), 426)
                self.assertEqual(resp.header("Sec-WebSocket-Version"), "13", resp)

    def test_404_no_route(self):
        resp, local = self.assertStatus(ws_request("/nowhere"), 404)
        entry = self.gw.access_log_for_client(local)
        self.assertEqual(entry["status"], 404, entry)
        self.assertIsNone(entry["route"], entry)
        self.assertIsNone(entry["upstream"], entry)

    # -- 408 -------------------------------------------------------------------------------
    def test_408_head_never_finished(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(ws_request("/echo")[:-2])  # everything but the final CRLF
        started = time.monotonic()
        resp = c.read_response(HEAD_TIMEOUT + SLOW_MARGIN)
        self.assertEqual(resp.status, 408, resp)
        self.assertGreater(time.monotonic() - started, HEAD_TIMEOUT * 0.5,
                           "408 long before timeouts.head")
        c.read_body(resp)
        self.assertClosedAfter(c, resp)

    def test_408_trickling_client_cut_at_total_deadline(self):
        """One byte every 200 ms keeps a per-read timer alive forever; the head deadline is a
        total deadline, so the 408 must still arrive near timeouts.head."""
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        data = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
        started = time.monotonic()
        limit = HEAD_TIMEOUT + SLOW_MARGIN
        got_answer = False
        for i in range(len(data)):  # bounded by the data and by `limit`
            if time.monotonic() - started > limit:
                break
            try:
                c.sock.send(data[i:i + 1])
            except OSError:
                got_answer = True  # reset after the gateway closed: read what it sent
                break
            # Paces the trickle; wakes early when the gateway answers.
            readable = harness.select.select([c.sock], [], [], 0.2)[0]
            if readable:
                got_answer = True
                break
        elapsed = time.monotonic() - started
        self.assertTrue(got_answer, "no answer after trickling for %.1fs (timeouts.head %.0fs)"
                        % (elapsed, HEAD_TIMEOUT))
        resp = c.read_response(5)
        self.assertEqual(resp.status, 408, resp)
        c.read_body(resp)
        self.assertClosedAfter(c, resp)

    # -- 431 -------------------------------------------------------------------------------
    def test_431_head_too_large(self):
        self.assertStatus(ws_request("/echo", extra=[("X-Big", "b" * (20 * 1024))]), 431)

    def test_431_too_many_headers(self):
        extra = [("X-H%d" % i, "v") for i in range(150)]
        self.assertStatus(ws_request("/echo", extra=extra), 431)

    def test_heads_below_limits_are_accepted(self):
        # 12 KiB in 4 KiB headers (python-websockets, the upstream, caps a line at 8 KiB).
        big = [("X-Big%d" % i, "b" * 4096) for i in range(3)]
        for extra in (big, [("X-H%d" % i, "v") for i in range(80)]):
            with self.subTest(headers=len(extra)):
                c = RawClient(self.gw.addr())
                self.addCleanup(c.close)
                c.handshake("/echo", extra=extra)
                c.send_frame(harness.OP_TEXT, b"ok")
                self.assertEqual(c.recv_frame()[2], b"ok")

    # -- upstream failures -------------------------------------------------------------------
    def test_502_all_endpoints_refused(self):
        started = time.monotonic()
        resp, local = self.assertStatus(ws_request("/refused"), 502)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 10.0, "502 took %.1fs; refusals must not wait for the 30s "
                        "connect_timeout" % elapsed)
        entry = self.gw.access_log_for_client(local)
        self.assertEqual(entry["status"], 502, entry)
        self.assertEqual(entry["route"], "refused", entry)

    def test_502_for_a_101_with_the_wrong_accept_or_an_answer_that_is_no_http(self):
        for route in ("wrongaccept", "garbage"):
            with self.subTest(route=route):
                resp, local = self.assertStatus(ws_request("/" + route), 502)
                entry = self.gw.access_log_for_client(local)
                self.assertEqual((entry["status"], entry["route"]), (502, route), entry)

    def test_failover_to_next_endpoint(self):
        for i in range(4):  # round robin starts anywhere: every attempt must end up on echo
            with self.subTest(attempt=i):
                c = RawClient(self.gw.addr())
                self.addCleanup(c.close)
                c.handshake("/failover")
                c.send_frame(harness.OP_TEXT, b"fo%d" % i)
                self.assertEqual(c.recv_frame()[2], b"fo%d" % i)
                c.close()

    def test_504_connect_timeout(self):
        started = time.monotonic()
        resp, local = self.assertStatus(ws_request("/blackhole"), 504, timeout=1.0 + SLOW_MARGIN)
        self.assertGreater(time.monotonic() - started, 0.5, "504 before connect_timeout (1s)")
        entry = self.gw.access_log_for_client(local)
        self.assertEqual(entry["status"], 504, entry)

    def test_504_no_101_within_handshake_timeout(self):
        started = time.monotonic()
        resp, local = self.assertStatus(ws_request("/silent"), 504, timeout=1.0 + SLOW_MARGIN)
        self.assertGreater(time.monotonic() - started, 0.5, "504 before handshake_timeout (1s)")
        # The upstream saw the request, and the gateway hung up on it.
        self.silent.wait_event(lambda e: e[0] == "head", what="request head at the upstream")
        self.silent.wait_event(lambda e: e[0] == "peer-closed", timeout=5,
                               what="gateway closing the silent upstream connection")

    def test_403_from_upstream_is_relayed(self):
        resp, local = self.assertStatus(ws_request("/forbidden"), 403)
        self.assertEqual(resp.body, FORBIDDEN_BODY, resp)
        entry = self.gw.access_log_for_client(local)
        self.assertEqual(entry["status"], 403, entry)
        self.assertEqual(entry["upstream"], harness.hostport(self.forbidden.addr), entry)


class ConnectionCapTest(GatewayTestCase):
    """limits.max_connections counts client connections in the whole process (both workers,
    both listeners): beyond it a plain connection gets a 503 with Retry-After at once, a TLS one
    is closed before its handshake; a place that frees up is taken by the next client."""

    def setUp(self):
        self.echo = self.start_peer(EchoUpstream())
        self.gw = self.start_gateway(harness.make_config(
            {"echo": {"endpoints": [self.echo.addr]}},
            [{"name": "chat", "match": {"path_prefix": "/"}, "upstream": "echo"}],
            listeners=[{"name": "public", "address": "127.0.0.1:0"},
                       {"name": "secure", "address": "127.0.0.1:0", "tls": {}}],
            limits={"max_connections": 3},
            admin={"address": "127.0.0.1:0"}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def open_session(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/chat")
        return c

    def test_over_the_cap_is_a_503_then_a_freed_place_is_taken(self):
        sessions = [self.open_session() for _ in range(3)]
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        resp = c.read_response()  # sent without waiting for a request
        self.assertEqual(resp.status, 503, resp)
        self.assertEqual(resp.header("Retry-After"), "1", resp)
        self.assertEqual(resp.header("Connection"), "close", resp)
        # The request that follows is read and dropped; the connection ends.
        c.send(ws_request("/chat"))
        _, how = c.read_until_closed(SLOW_MARGIN)
        self.assertIn(how, ("eof", "reset"))
        # TLS: closed before any handshake work.
        raw = socket.create_connection(self.gw.addr("secure"), timeout=SLOW_MARGIN)
        self.addCleanup(raw.close)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with self.assertRaises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname="localhost").do_handshake()
        # One session ends: its place is free again (once the gateway has seen it go).
        sessions.pop().close()
        refused = [1]  # 503s on the public listener so far

        def admitted():
            probe = RawClient(self.gw.addr())
            self.addCleanup(probe.close)
            probe.send(ws_request("/chat"))
            status = probe.read_response().status
            refused[0] += status == 503
            return status == 101
        harness.poll_until(admitted, SLOW_MARGIN, interval=0.1, what="a freed place")
        entry = self.gw.wait_access_log(lambda e: e.get("status") == 503, 5, what="the 503")
        self.assertEqual(entry["close"], "over limits.max_connections", entry)
        metrics = bridge_util.Admin(self.gw).request("GET", "/metrics").body.decode()
        self.assertIn('upgate_connections_rejected_total{listener="public"} %d' % refused[0],
                      metrics)
        self.assertIn('upgate_connections_rejected_total{listener="secure"} 1', metrics)


if __name__ == "__main__":
    unittest.main(verbosity=2)
