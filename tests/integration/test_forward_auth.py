"""forward_auth through the real binary, with a real HTTP authorization service (a threaded
http.server on loopback) and the python-websockets echo upstream.

- allow: 101; the service saw the client's method and URI (X-Forwarded-Method, X-Forwarded-Uri,
  X-Original-URI), Host, address and the configured request headers only; the upstream saw the
  answer's X-User (and the identity as X-Upgate-User), and not the X-Groups the client tried to
  supply itself; the access log carries the user.
- deny: 401 relays WWW-Authenticate and the body; 403 relays its body and not the headers that
  were not chosen; nothing reached the upstream.
- the service too slow (beyond forward_auth's timeout) -> 503; the service down -> 503; a PAUSE
  beyond timeouts.plugin_pause (set to 1.5 s here, forward_auth's own timeout longer) -> 503,
  well before the built-in 10 s.
- 500 handshakes paused at once: the service holds every subrequest until it has all 500 in
  flight, then admits them; every client gets its 101 within a bounded time.
"""

import asyncio
import http.server
import os
import threading
import time
import unittest

import harness
from harness import GatewayTestCase, EchoUpstream, RawClient, RefusedPort, accept_key, ws_key
from harness import header_values, ws_request

MASS = 500
MASS_LIMIT = 120.0  # seconds for the whole concurrent run
PAUSE = "1500ms"


class AuthService:
    """HTTP/1.1 authorization service (keep-alive, one thread per connection). Decides by the
    X-Forwarded-Uri the gateway sends:
      /chat/allow...  200, X-User: alice, X-Groups: staff
      /chat/deny401   401, WWW-Authenticate: Bearer realm="chat", body "log in first"
      /chat/deny403   403, X-Internal: secret, body "forbidden by policy"
      /chat/slow..., /hang/...   answer 200 only after `slow_s` seconds
      /mass/...       holds the answer until `mass` subrequests are in flight (or 60 s), then 200
    Records every subrequest's (path, headers)."""

    def __init__(self, mass=0, slow_s=4.0):
        self.requests = []
        self.mass = mass
        self.slow_s = slow_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.all_arrived = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.addr = None

    def start(self):
        svc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, headers=(), body=b""):
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # A late answer: the gateway gave up on this subrequest and closed it.
                    self.close_connection = True

            def do_GET(self):
                uri = self.headers.get("X-Forwarded-Uri", "")
                with svc.lock:
                    svc.requests.append({"path": self.path, "headers": list(self.headers.items())})
                if uri.startswith("/chat/allow"):
                    self.answer(200, [("X-User", "alice"), ("X-Groups", "staff")])
                elif uri.startswith("/chat/deny401"):
                    self.answer(401, [("WWW-Authenticate", 'Bearer realm="chat"')],
                                b"log in first")
                elif uri.startswith("/chat/deny403"):
                    self.answer(403, [("X-Internal", "secret")], b"forbidden by policy")
                elif uri.startswith("/chat/slow") or uri.startswith("/hang/"):
                    svc.stopping.wait(svc.slow_s)
                    self.answer(200, [("X-User", "late")])
                elif uri.startswith("/mass/"):
                    with svc.lock:
                        svc.in_flight += 1
                        svc.max_in_flight = max(svc.max_in_flight, svc.in_flight)
                        if svc.in_flight >= svc.mass:
                            svc.all_arrived.set()
                    svc.all_arrived.wait(60)
                    with svc.lock:
                        svc.in_flight -= 1
                    self.answer(204, [("X-User", "crowd")])
                else:
                    self.answer(500, body=b"unexpected " + uri.encode())

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 1024  # the mass test connects hundreds at once
            daemon_threads = True

        self.server = Server((harness.LOOPBACK, 0), Handler)
        self.addr = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True,
                                       name="auth-service")
        self.thread.start()
        return self

    def url(self, path="/auth"):
        return "http://%s:%d%s" % (self.addr[0], self.addr[1], path)

    def seen(self, uri):
        with self.lock:
            return [r for r in self.requests
                    if dict((k.lower(), v) for k, v in r["headers"]).get("x-forwarded-uri") == uri]

    def stop(self):
        self.stopping.set()
        self.all_arrived.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(harness.STOP_TIMEOUT)


def forward_auth(url, timeout="800ms"):
    return {"name": "forward_auth",
            "config": {"url": url, "timeout": timeout,
                       "request_headers": ["Cookie", "Authorization"],
                       "response_headers": ["X-User", "X-Groups"],
                       "identity_header": "X-User"}}


def attempt(addr, path, headers=(), timeout=harness.IO_TIMEOUT):
    """One upgrade request; returns the Response (body read unless 101), with .local and
    .elapsed."""
    started = time.monotonic()
    with RawClient(addr) as c:
        key = ws_key()
        c.send(ws_request(path, key=key, extra=list(headers)))
        resp = c.read_response(timeout=timeout)
        resp.local = c.local
        resp.elapsed = time.monotonic() - started
        if resp.status == 101:
            if resp.header("Sec-WebSocket-Accept") != accept_key(key):
                raise AssertionError("bad Sec-WebSocket-Accept in %r" % resp)
            c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
        else:
            c.read_body(resp, timeout=timeout)
        return resp


class ForwardAuthTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.auth = cls.start_class_peer(AuthService())
        cls.down = cls.start_class_peer(RefusedPort())
        cls.echo = cls.start_class_peer(EchoUpstream(name="echo"))
        down_url = "http://%s:%d/auth" % cls.down.addr
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]}},
            routes=[
                {"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "chat",
                 "plugins": [forward_auth(cls.auth.url("/auth?realm=chat"))]},
                {"name": "down", "match": {"path_prefix": "/down"}, "upstream": "chat",
                 "plugins": [forward_auth(down_url)]},
                # forward_auth would wait 30 s: the gateway's pause timeout ends it first.
                {"name": "hang", "match": {"path_prefix": "/hang"}, "upstream": "chat",
                 "plugins": [forward_auth(cls.auth.url("/auth"), timeout="30s")]},
            ],
            timeouts={"plugin_pause": PAUSE}))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.echo.errors, [])

    def upstream_saw(self, path):
        return [r for r in self.echo.requests if r["path"] == path]

    def test_allow_copies_the_answer_upstream(self):
        path = "/chat/allow/1?room=5"
        resp = attempt(self.gw.addr(), path,
                       [("Cookie", "session=abc"), ("Authorization", "Bearer t0k"),
                        ("X-Groups", "admin"), ("X-Other", "private")])
        self.assertEqual(resp.status, 101, resp)

        subs = self.auth.seen(path)
        self.assertEqual(len(subs), 1, self.auth.requests)
        self.assertEqual(subs[0]["path"], "/auth?realm=chat")
        h = subs[0]["headers"]
        self.assertEqual(header_values(h, "X-Forwarded-Method"), ["GET"])
        self.assertEqual(header_values(h, "X-Original-URI"), [path])
        self.assertEqual(header_values(h, "X-Forwarded-Host"), ["localhost"])
        self.assertEqual(header_values(h, "X-Forwarded-For"), [harness.LOOPBACK])
        self.assertEqual(header_values(h, "Cookie"), ["session=abc"])
        self.assertEqual(header_values(h, "Authorization"), ["Bearer t0k"])
        self.assertEqual(header_values(h, "X-Other"), [])
        self.assertEqual(header_values(h, "Upgrade"), [])

        seen = harness.poll_until(lambda: self.upstream_saw(path), 5, what="upstream request")
        up = seen[0]["headers"]
        self.assertEqual(header_values(up, "X-User"), ["alice"])
        # The service's X-Groups replaced the one the client sent.
        self.assertEqual(header_values(up, "X-Groups"), ["staff"])
        self.assertEqual(header_values(up, "X-Upgate-User"), ["alice"])
        self.assertEqual(header_values(up, "Cookie"), ["session=abc"])
        entry = self.gw.access_log_for_client(resp.local)
        self.assertEqual(entry.get("user"), "alice", entry)

    def test_deny_401_relays_the_challenge_and_body(self):
        resp = attempt(self.gw.addr(), "/chat/deny401")
        self.assertEqual(resp.status, 401, resp)
        self.assertEqual(resp.header("WWW-Authenticate"), 'Bearer realm="chat"', resp)
        self.assertEqual(resp.body, b"log in first")
        self.assertEqual(resp.header("Connection"), "close", resp)
        self.assertEqual(self.upstream_saw("/chat/deny401"), [])

    def test_deny_403_relays_the_body_only(self):
        resp = attempt(self.gw.addr(), "/chat/deny403")
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(resp.body, b"forbidden by policy")
        self.assertIsNone(resp.header("X-Internal"), resp)
        self.assertEqual(self.upstream_saw("/chat/deny403"), [])

    def test_slow_service_is_a_503(self):
        resp = attempt(self.gw.addr(), "/chat/slow/1")
        self.assertEqual(resp.status, 503, resp)
        # Cut by forward_auth's own 800 ms timeout, not by the gateway's pause timeout.
        entry = self.gw.access_log_for_client(resp.local)
        self.assertIn("authorization service unavailable", entry.get("close", ""), entry)
        self.assertEqual(self.upstream_saw("/chat/slow/1"), [])

    def test_service_down_is_a_503(self):
        resp = attempt(self.gw.addr(), "/down/x")
        self.assertEqual(resp.status, 503, resp)
        entry = self.gw.access_log_for_client(resp.local)
        self.assertIn("authorization service unavailable", entry.get("close", ""), entry)
        self.assertEqual(self.upstream_saw("/down/x"), [])

    def test_pause_timeout_from_the_config(self):
        # The service sleeps 4 s on /hang/; the route's forward_auth would wait 30 s.
        resp = attempt(self.gw.addr(), "/hang/x")
        self.assertEqual(resp.status, 503, resp)
        entry = self.gw.access_log_for_client(resp.local)
        self.assertIn("pause timed out", entry.get("close", ""), entry)
        # timeouts.plugin_pause is 1.5 s; the built-in default would have been 10 s.
        self.assertLess(resp.elapsed, 8.0)
        self.assertEqual(self.upstream_saw("/hang/x"), [])


class ForwardAuthMassTest(GatewayTestCase):
    def test_500_paused_handshakes_complete(self):
        auth = self.start_peer(AuthService(mass=MASS))
        echo = self.start_peer(harness.EchoUpstreamProcess())
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "mass", "match": {"path_prefix": "/mass"}, "upstream": "chat",
                     "plugins": [forward_auth(auth.url(), timeout="60s")]}],
            timeouts={"plugin_pause": "90s"},
            log={"level": "warn", "access_log": False}))
        host, port = gw.addr()

        async def handshake(i):
            # Spread the clients over loopback source addresses (ephemeral ports).
            source = "127.0.0.%d" % (1 + i % 8)
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
            try:
                key = ws_key()
                writer.write(ws_request("/mass/%d" % i, key=key))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                if status != 101:
                    return "session %d: status %d" % (i, status)
                if accept_key(key).encode() not in head:
                    return "session %d: bad accept" % i
                return None
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except (ConnectionError, OSError):
                    pass

        async def run():
            return await asyncio.gather(*(handshake(i) for i in range(MASS)),
                                        return_exceptions=True)

        started = time.monotonic()
        results = self.run_async(run(), timeout=MASS_LIMIT)
        elapsed = time.monotonic() - started
        print("\n%d paused handshakes in %.1fs (service saw %d at once)"
              % (MASS, elapsed, auth.max_in_flight))
        failures = [r for r in results if r is not None]
        self.assertGatewayAlive(gw)
        self.assertEqual(failures, [], "%d of %d failed; first: %r"
                         % (len(failures), MASS, failures[:3]))
        # Every handshake was paused at the same time: the service held all of them.
        self.assertEqual(auth.max_in_flight, MASS)
        self.assertEqual(len(auth.requests), MASS)


if __name__ == "__main__":
    unittest.main(verbosity=2)
