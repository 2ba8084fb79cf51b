"""`http` routes through the real binary: the gateway fronts a legacy polling app.

The app is Python's http.server (HTTP/1.1, keep-alive) in a background thread. Covered:
a long-poll held 30 s by the app passes through untouched; chunked responses stream (the first
chunk reaches the client while the app still holds the rest); keep-alive from the client (two
requests on one client connection, also pipelined) over one pooled upstream connection; 2 MB
POST bodies (Content-Length and chunked) arrive intact; Expect: 100-continue; request-smuggling
shapes get 400 and never reach the app; upstream down -> 502; response timeout -> 504.
A scripted app misbehaves: a status code that is not three digits -> 502 (never relayed as an
interim answer); a timeout or a close after a relayed 100 Continue -> 504 or 502, then close.
"""

import hashlib
import http.server
import json
import socket
import threading
import time
import unittest
import urllib.parse

import harness
from harness import GatewayTestCase, RawClient, RefusedPort

LONG_POLL_HOLD = 30.0   # seconds the app holds the long-poll
SLOW_MARGIN = 6.0       # shared noisy machines: never assert tighter than a few seconds


class LegacyApp:
    """A polling web app in a thread. Records every request it starts handling."""

    def __init__(self):
        self.requests = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.release_chunks = threading.Event()
        self.server = None
        self.thread = None
        self.addr = None

    def record(self, handler):
        entry = {"method": handler.command, "path": handler.path,
                 "headers": list(handler.headers.items()),
                 "port": handler.client_address[1]}
        with self.cond:
            self.requests.append(entry)
            self.cond.notify_all()
        return entry

    def seen(self, predicate):
        with self.cond:
            return [r for r in self.requests if predicate(r)]

    def start(self):
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body, extra=()):
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the gateway gave up (504 test): expected

            def read_body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    for _ in range(10 ** 6):
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return body
                        body += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def do_GET(self):
                app.record(self)
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path.endswith("/poll"):
                    hold = float(query.get("hold", ["0"])[0])
                    started = time.monotonic()
                    app.stopping.wait(hold)
                    body = json.dumps({"waited": round(time.monotonic() - started, 1),
                                       "cursor": query.get("cursor", ["0"])[0]}).encode()
                    self.reply(200, body, [("Content-Type", "application/json"),
                                           ("X-Cursor", "42")])
                elif url.path == "/chunks":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"b\r\nfirst-chunk\r\n")
                    self.wfile.flush()
                    app.release_chunks.wait(harness.IO_TIMEOUT)
                    for part in (b"second", b"third-and-last"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                elif url.path == "/big":
                    self.reply(200, b"b" * BIG_BODY, [("Content-Type", "text/plain")])
                elif url.path == "/hello":
                    self.reply(200, b"hello %s" % url.query.encode(),
                               [("X-App", "legacy"), ("X-Upstream-Port", str(self.client_address[1])),
                                ("Keep-Alive", "timeout=30"), ("Connection", "X-Drop"),
                                ("X-Drop", "secret")])
                else:
                    self.reply(404, b"not found")

            def do_POST(self):
                app.record(self)
                body = self.read_body()
                self.reply(200, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))

            do_PUT = do_POST

        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.addr = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="legacy-app")
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.release_chunks.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(harness.STOP_TIMEOUT)


def request(method, path, headers=(), body=b"", http="HTTP/1.1", host="legacy.test"):
    lines = ["%s %s %s" % (method, path, http)]
    if host is not None:
        lines.append("Host: %s" % host)
    lines += ["%s: %s" % (k, v) for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def recv_more(client, timeout):
    client.sock.settimeout(timeout)
    chunk = client.sock.recv(65536)
    if not chunk:
        raise ConnectionError("gateway closed the connection (had %r)" % client.pending[:200])
    client.pending += chunk


def read_response(client, timeout=harness.IO_TIMEOUT):
    """The next response head, from bytes already buffered in client.pending first."""
    deadline = time.monotonic() + timeout
    for _ in range(10 ** 5):
        end = client.pending.find(b"\r\n\r\n")
        if end >= 0:
            resp = harness.Response(client.pending[:end], client.pending[end + 4:])
            client.pending = client.pending[end + 4:]
            return resp
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no response head within %.1fs: %r" % (timeout, client.pending))
        recv_more(client, remaining)
    raise AssertionError("read_response: too many reads")


def read_chunked(client, resp, timeout=harness.IO_TIMEOUT):
    """Decode a chunked body from client.pending + the socket into resp.body."""
    deadline = time.monotonic() + timeout
    body = b""
    for _ in range(10 ** 6):
        line_end = client.pending.find(b"\r\n")
        if line_end >= 0:
            size = int(client.pending[:line_end].split(b";")[0], 16)
            if size == 0:
                end = client.pending.find(b"\r\n\r\n", line_end - 2 if line_end >= 2 else 0)
                if end >= 0:
                    client.pending = client.pending[end + 4:]
                    resp.body = body
                    return body
            elif len(client.pending) >= line_end + 2 + size + 2:
                body += client.pending[line_end + 2:line_end + 2 + size]
                client.pending = client.pending[line_end + 2 + size + 2:]
                continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("chunked body incomplete: %r" % client.pending[:200])
        recv_more(client, remaining)
    raise AssertionError("read_chunked: too many reads")


class HttpProxyTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.app = cls.start_class_peer(LegacyApp())
        cls.down = cls.start_class_peer(RefusedPort())
        upstreams = {"app": {"endpoints": [cls.app.addr]},
                     "down": {"endpoints": [cls.down.addr]}}
        routes = [
            {"name": "slow", "match": {"path_prefix": "/slow"}, "kind": "http",
             "upstream": "app", "response_timeout": "1s"},
            {"name": "down", "match": {"path_prefix": "/down"}, "kind": "http",
             "upstream": "down"},
            {"name": "legacy", "match": {"path_prefix": "/"}, "kind": "http", "upstream": "app"},
        ]
        cls.gw = cls.start_class_gateway(harness.make_config(upstreams, routes))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def client(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        return c

    def roundtrip(self, c, data, timeout=harness.IO_TIMEOUT):
        c.send(data)
        resp = read_response(c, timeout)
        if "chunked" in resp.tokens("Transfer-Encoding"):
            read_chunked(c, resp, timeout)
        else:
            c.read_body(resp, timeout)
        return resp

    def assertClosedAfter(self, c, resp):
        self.assertIn("close", resp.tokens("Connection"), "no Connection: close in %r" % resp)
        extra, how = c.read_until_closed(5.0)
        self.assertIn(how, ("eof", "reset"), "socket still open 5s after %r" % resp)
        self.assertEqual(extra, b"", "bytes after the response: %r" % extra[:200])

    # -- long-poll ---------------------------------------------------------------------------
    def test_long_poll_held_30s_passes_through(self):
        c = self.client()
        started = time.monotonic()
        resp = self.roundtrip(c, request("GET", "/api/poll?hold=%d&cursor=7" % LONG_POLL_HOLD,
                                         [("Accept", "application/json")]),
                              timeout=LONG_POLL_HOLD + 30)
        elapsed = time.monotonic() - started
        self.assertEqual(resp.status, 200, resp)
        self.assertGreaterEqual(elapsed, LONG_POLL_HOLD - 1)
        self.assertEqual(json.loads(resp.body)["cursor"], "7")
        self.assertEqual(resp.header("X-Cursor"), "42")
        self.assertEqual(resp.header("Content-Type"), "application/json")
        self.assertIn("keep-alive", resp.tokens("Connection"))
        seen = self.app.seen(lambda r: r["path"].startswith("/api/poll"))
        self.assertEqual(len(seen), 1)
        headers = dict((k.lower(), v) for k, v in seen[0]["headers"])
        self.assertEqual(headers["host"], "legacy.test")
        self.assertEqual(headers["x-forwarded-for"], c.local[0])
        self.assertEqual(headers["x-forwarded-proto"], "http")
        self.assertIn("for=%s" % c.local[0], headers["forwarded"])
        # The connection still works after the long wait.
        again = self.roundtrip(c, request("GET", "/hello?after-poll"))
        self.assertEqual(again.body, b"hello after-poll")

    def test_response_timeout_is_504(self):
        c = self.client()
        started = time.monotonic()
        resp = self.roundtrip(c, request("GET", "/slow/poll?hold=5"))
        self.assertEqual(resp.status, 504, resp)
        self.assertLess(time.monotonic() - started, 1 + SLOW_MARGIN)
        self.assertClosedAfter(c, resp)

    # -- streaming ---------------------------------------------------------------------------
    def test_chunked_response_streams(self):
        self.app.release_chunks.clear()
        c = self.client()
        c.send(request("GET", "/chunks"))
        resp = read_response(c)
        self.assertEqual(resp.status, 200, resp)
        self.assertIn("chunked", resp.tokens("Transfer-Encoding"))
        deadline = time.monotonic() + harness.IO_TIMEOUT
        for _ in range(10000):
            if b"first-chunk" in c.pending:
                break
            remaining = deadline - time.monotonic()
            self.assertGreater(remaining, 0, "first chunk not streamed: %r" % c.pending)
            recv_more(c, remaining)
        # The app is still holding the rest: the first chunk came through on its own.
        self.assertNotIn(b"second", c.pending)
        self.app.release_chunks.set()
        body = read_chunked(c, resp)
        self.assertEqual(body, b"first-chunksecondthird-and-last")

    # -- keep-alive --------------------------------------------------------------------------
    def test_keep_alive_two_requests_one_connection(self):
        c = self.client()
        first = self.roundtrip(c, request("GET", "/hello?one"))
        second = self.roundtrip(c, request("GET", "/hello?two"))
        self.assertEqual((first.status, first.body), (200, b"hello one"))
        self.assertEqual((second.status, second.body), (200, b"hello two"))
        for resp in (first, second):
            self.assertIn("keep-alive", resp.tokens("Connection"))
            self.assertEqual(resp.header("X-App"), "legacy")
            self.assertIsNone(resp.header("Keep-Alive"))  # hop-by-hop
            self.assertIsNone(resp.header("X-Drop"))      # nominated by the app's Connection
        # One client connection lives on one worker, whose pool reused the upstream connection.
        self.assertEqual(first.header("X-Upstream-Port"), second.header("X-Upstream-Port"))

    def test_pipelined_requests_answered_in_order(self):
        c = self.client()
        c.send(request("GET", "/hello?a") + request("GET", "/hello?b"))
        a = read_response(c)
        c.read_body(a)
        b = read_response(c)
        c.read_body(b)
        self.assertEqual((a.status, a.body), (200, b"hello a"))
        self.assertEqual((b.status, b.body), (200, b"hello b"))

    def test_client_connection_close_is_honoured(self):
        c = self.client()
        resp = self.roundtrip(c, request("GET", "/hello?bye", [("Connection", "close")]))
        self.assertEqual(resp.body, b"hello bye")
        self.assertClosedAfter(c, resp)

    # -- request bodies ----------------------------------------------------------------------
    def test_2mb_post_arrives_intact(self):
        body = bytes((i * 131 + i // 7) & 0xFF for i in range(2 * 1024 * 1024))
        want = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        c = self.client()
        resp = self.roundtrip(c, request("POST", "/upload", [
            ("Content-Length", str(len(body))), ("Content-Type", "application/octet-stream")],
            body), timeout=30)
        self.assertEqual((resp.status, resp.body), (200, want))
        # The same body chunked, on the same connection.
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                           for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
        resp = self.roundtrip(c, request("POST", "/upload", [("Transfer-Encoding", "chunked")],
                                         chunked), timeout=30)
        self.assertEqual((resp.status, resp.body), (200, want))

    def test_expect_100_continue(self):
        c = self.client()
        c.send(request("PUT", "/upload", [("Content-Length", "5"), ("Expect", "100-continue")]))
        interim = read_response(c)
        self.assertEqual(interim.status, 100, interim)
        resp = self.roundtrip(c, b"hello")
        self.assertEqual(resp.status, 200, resp)
        self.assertTrue(resp.body.startswith(b"5 "), resp)

    # -- refusals ----------------------------------------------------------------------------
    def test_smuggling_shapes_get_400(self):
        shapes = {
            "cl-te": request("POST", "/smuggle/1", [("Content-Length", "4"),
                                                     ("Transfer-Encoding", "chunked")],
                             b"0\r\n\r\n"),
            "te-cl": request("POST", "/smuggle/2", [("Transfer-Encoding", "chunked"),
                                                     ("Content-Length", "4")], b"0\r\n\r\n"),
            "cl-cl": request("POST", "/smuggle/3", [("Content-Length", "3"),
                                                     ("Content-Length", "4")], b"abcd"),
            "te-not-last": request("POST", "/smuggle/4", [("Transfer-Encoding",
                                                            "chunked, identity")], b"0\r\n\r\n"),
            "te-twice": request("POST", "/smuggle/5", [("Transfer-Encoding", "chunked"),
                                                        ("Transfer-Encoding", "chunked")],
                                b"0\r\n\r\n"),
            "te-xchunked": request("POST", "/smuggle/6", [("Transfer-Encoding", "xchunked")],
                                   b"0\r\n\r\n"),
            "te-space-colon": request("POST", "/smuggle/7", [("Transfer-Encoding ", "chunked")],
                                      b"0\r\n\r\n"),
            "te-http10": request("POST", "/smuggle/8", [("Transfer-Encoding", "chunked")],
                                 b"0\r\n\r\n", http="HTTP/1.0"),
            "two-hosts": request("GET", "/smuggle/9", [("Host", "other.test")]),
            "no-host": request("GET", "/smuggle/10", host=None),
            "te-obs-fold": b"POST /smuggle/11 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n"
                           b" chunked\r\n\r\n0\r\n\r\n",
            "bad-chunk-size": request("POST", "/chunkbody/1", [("Transfer-Encoding", "chunked")],
                                      b"zz\r\nabc\r\n0\r\n\r\n"),
            "chunk-overflow": request("POST", "/chunkbody/2", [("Transfer-Encoding", "chunked")],
                                      b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
            # Chunk data must end in CRLF: a parser that skips any two bytes there reads
            # "3\r\nabc\n1" + "00\r\n" as a last chunk, and what follows as another request.
            "chunk-data-lf": request("POST", "/chunkbody/3", [("Transfer-Encoding", "chunked")],
                                     b"3\r\nabc\n100\r\n\r\nGET /smuggle/13 HTTP/1.1\r\n"
                                     b"Host: a\r\n\r\n" + b"x" * 212 + b"\r\n0\r\n\r\n"),
            "chunk-data-xx": request("POST", "/chunkbody/4", [("Transfer-Encoding", "chunked")],
                                     b"5\r\nhelloXX0\r\n\r\n"),
            "head-cr-x": b"GET /smuggle/14 HTTP/1.1\r\nHost: a\r\n\rX",
            "raw-utf8-target": b"GET /smuggle/caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        }
        for name, data in shapes.items():
            with self.subTest(shape=name):
                c = self.client()
                c.send(data)
                resp = read_response(c)
                self.assertEqual(resp.status, 400, "%s: %r" % (name, resp))
                c.read_body(resp)
                self.assertClosedAfter(c, resp)
        # Header-level shapes are refused before anything is sent upstream.
        self.assertEqual(self.app.seen(lambda r: r["path"].startswith("/smuggle")), [])

    def test_upstream_down_is_502(self):
        c = self.client()
        resp = self.roundtrip(c, request("GET", "/down/anything"))
        self.assertEqual(resp.status, 502, resp)
        self.assertClosedAfter(c, resp)


def scripted_app(conn, upstream):
    """An app misbehaving as the request's path says (one request per connection):
      /status/<code>     answers "<code> Odd", then a 200 (a status llhttp reads but no 1xx)
      /continue/silent   answers 100 Continue, then nothing until the gateway closes
      /continue/close    answers 100 Continue, then closes its side"""
    head, _ = harness.read_head(conn)
    path = head.split(b" ", 2)[1].decode("latin-1")
    upstream.event("head", path)
    if path.startswith("/status/"):
        # Never pooled, whatever the gateway makes of it: the next request gets a fresh app.
        conn.sendall(b"HTTP/1.1 %s Odd\r\nContent-Length: 0\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                     % path[8:].encode())
        conn.shutdown(socket.SHUT_WR)
    elif path.startswith("/continue/"):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if path == "/continue/close":
            conn.shutdown(socket.SHUT_WR)  # a FIN, not a reset: the body may still be unread
    if harness.wait_peer_close(conn, 30, upstream.stopping):
        upstream.event("peer-closed", path)


class MisbehavingUpstreamTest(GatewayTestCase):
    """Answers the gateway must not relay as they are: the client gets upgate's own status."""

    @classmethod
    def setUpClass(cls):
        cls.app = cls.start_class_peer(harness.RawUpstream(scripted_app, name="scripted-app"))
        cls.gw = cls.start_class_gateway(harness.make_config(
            {"app": {"endpoints": [cls.app.addr]}},
            [{"name": "scripted", "match": {"path_prefix": "/"}, "kind": "http",
              "upstream": "app", "response_timeout": "1s"}]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.app.errors, [])

    def client(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        return c

    def assertClosedAfter(self, c, resp):
        c.read_body(resp)
        self.assertIn("close", resp.tokens("Connection"), "no Connection: close in %r" % resp)
        extra, how = c.read_until_closed(5.0)
        self.assertIn(how, ("eof", "reset"), "socket still open 5s after %r" % resp)
        self.assertEqual(extra, b"", "bytes after the response: %r" % extra[:200])

    def test_status_code_not_three_digits_is_502(self):
        # llhttp reads "099" as 99, "0" as 0 and "020" as 20: below 200, but none is a 1xx
        # the client may be sent as an interim answer.
        for code in ("099", "0", "020"):
            with self.subTest(status=code):
                c = self.client()
                c.send(request("GET", "/status/" + code))
                resp = read_response(c)
                self.assertEqual(resp.status, 502, resp)
                self.assertClosedAfter(c, resp)

    def test_failure_after_100_continue_still_gets_a_status(self):
        # An interim answer is not the answer: a silent upstream is a 504 after it, one that
        # closes a 502.
        for path, status in (("/continue/silent", 504), ("/continue/close", 502)):
            with self.subTest(path=path):
                c = self.client()
                started = time.monotonic()
                c.send(request("POST", path,
                               [("Expect", "100-continue"), ("Content-Length", "2")], b"hi"))
                interim = read_response(c)
                self.assertEqual(interim.status, 100, interim)
                resp = read_response(c)
                self.assertEqual(resp.status, status, resp)
                self.assertLess(time.monotonic() - started, 1 + SLOW_MARGIN)
                self.assertClosedAfter(c, resp)


def start_app_and_gateway(cls, **overrides):
    """For a test class: the legacy app, and a gateway with one http route to it."""
    cls.app = cls.start_class_peer(LegacyApp())
    cls.gw = cls.start_class_gateway(harness.make_config(
        {"app": {"endpoints": [cls.app.addr]}},
        [{"name": "legacy", "match": {"path_prefix": "/"}, "kind": "http", "upstream": "app"}],
        **overrides))


class KeepAliveTimeoutTest(GatewayTestCase):
    """timeouts.keepalive: a kept-alive client connection idle for that long is closed, silently
    (no 408: no request was started); one that sends its next request in time is served."""

    @classmethod
    def setUpClass(cls):
        start_app_and_gateway(cls, timeouts={"keepalive": "1s"})

    def test_idle_keep_alive_connection_is_closed(self):
        with RawClient(self.gw.addr()) as c:
            c.send(request("GET", "/hello?first"))
            resp = read_response(c)
            c.read_body(resp)
            self.assertIn("keep-alive", resp.tokens("Connection"))
            time.sleep(0.5)  # within the timeout: still served
            c.send(request("GET", "/hello?second"))
            resp = read_response(c)
            c.read_body(resp)
            self.assertEqual(resp.body, b"hello second")
            started = time.monotonic()
            extra, how = c.read_until_closed(5.0)
            idle = time.monotonic() - started
            self.assertIn(how, ("eof", "reset"))
            self.assertEqual(extra, b"", "an idle keep-alive connection gets no answer")
            self.assertGreater(idle, 0.8, "closed after %.2fs, before timeouts.keepalive" % idle)
            self.assertLess(idle, 3.0, "still open %.2fs after timeouts.keepalive" % idle)


class SendTimeoutTest(GatewayTestCase):
    """timeouts.send: a client that takes none of the response queued for it (the upstream paused
    behind it) is cut, and its upstream connection dropped; one that reads slowly is not."""

    @classmethod
    def setUpClass(cls):
        start_app_and_gateway(cls, timeouts={"send": "1s"}, limits={"high_water": "16KiB"})

    def test_client_that_stops_reading_is_cut(self):
        c = RawClient(self.gw.addr(), rcvbuf=4096)
        self.addCleanup(c.close)
        c.send(request("GET", "/big"))
        entry = self.gw.access_log_for_client(c.local, timeout=20)
        self.assertIn("client took no response bytes for 1000 ms (timeouts.send)",
                      entry.get("close", ""), entry)
        self.assertEqual(entry.get("status"), 200, entry)
        extra, how = c.read_until_closed(10)
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(len(extra), BIG_BODY, "the whole body cannot have been sent")

    def test_slow_reader_is_not_cut(self):
        c = RawClient(self.gw.addr(), rcvbuf=4096)
        self.addCleanup(c.close)
        c.send(request("GET", "/big"))
        data = b""
        c.sock.settimeout(5)
        for _ in range(12):  # about 3 s of a few KiB every 0.25 s: well over timeouts.send
            time.sleep(0.25)
            chunk = c.sock.recv(8192)
            self.assertTrue(chunk, "the gateway closed a client that was reading")
            data += chunk
        # Then the rest at full speed: all of it must come (a cut connection would still hand
        # over what the kernel had buffered, then end short).
        head_end = data.find(b"\r\n\r\n")
        self.assertGreater(head_end, 0, data[:200])
        want = head_end + 4 + BIG_BODY
        deadline = time.monotonic() + 60
        for _ in range(10 ** 6):
            if len(data) >= want or time.monotonic() > deadline:
                break
            chunk = c.sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        self.assertEqual(len(data), want, "the body ended short: the slow reader was cut")


BIG_BODY = 16 << 20  # /big: far over the gateway's high water and the kernel's buffers


if __name__ == "__main__":
    unittest.main(verbosity=2)
