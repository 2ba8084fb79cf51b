"""Route matching: exact path (query excluded), path prefix, host wildcard, header match,
first match wins, and 404 when nothing matches."""

import unittest

import harness
from harness import GatewayTestCase, EchoUpstream, RawClient, ws_request


class RoutingTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_class_peer(EchoUpstream(name="A"))
        cls.b = cls.start_class_peer(EchoUpstream(name="B"))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"a": {"endpoints": [cls.a.addr]}, "b": {"endpoints": [cls.b.addr]}},
            routes=[
                {"name": "exact", "match": {"path": "/exact"}, "upstream": "a"},
                {"name": "wild", "match": {"host": "*.example.com", "path_prefix": "/h"},
                 "upstream": "b"},
                {"name": "tenant", "match": {"path_prefix": "/t",
                                             "headers": {"X-Tenant": "blue"}}, "upstream": "b"},
                {"name": "first", "match": {"path_prefix": "/first"}, "upstream": "b"},
                {"name": "second", "match": {"path_prefix": "/first"}, "upstream": "a"},
                {"name": "tprefix", "match": {"path_prefix": "/t"}, "upstream": "a"},
            ]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def route(self, path, host="localhost", extra=()):
        """Open a session; return (upstream name that got it, access-log route)."""
        with RawClient(self.gw.addr()) as c:
            c.handshake(path, host=host, extra=extra)
            c.send_frame(harness.OP_TEXT, b"ping")
            self.assertEqual(c.recv_frame()[2], b"ping")
            local = c.local
        entry = self.gw.access_log_for_client(local)
        got = [u.name for u in (self.a, self.b) if any(r["path"] == path for r in u.requests)]
        self.assertEqual(len(got), 1, "path %s reached %r" % (path, got))
        return got[0], entry["route"]

    def status(self, path, host="localhost", extra=()):
        with RawClient(self.gw.addr()) as c:
            c.send(ws_request(path, host=host, extra=extra))
            return c.read_response().status

    def test_exact_path(self):
        self.assertEqual(self.route("/exact"), ("A", "exact"))
        self.assertEqual(self.route("/exact?q=1"), ("A", "exact"))
        self.assertEqual(self.status("/exact/more"), 404)
        self.assertEqual(self.status("/exactly"), 404)

    def test_host_wildcard(self):
        self.assertEqual(self.route("/h1", host="chat.example.com"), ("B", "wild"))
        self.assertEqual(self.route("/h2", host="chat.example.com:8080"), ("B", "wild"))
        self.assertEqual(self.status("/h3", host="chat.example.org"), 404)

    def test_absolute_form_target_routes_on_its_authority(self):
        # RFC 9112 §3.2.2: the target's authority wins over Host, for routing too.
        self.assertEqual(self.status("http://chat.example.com/h4", host="chat.example.org"),
                         101)
        self.assertEqual(self.status("http://chat.example.org/h5", host="chat.example.com"),
                         404)

    def test_header_match(self):
        self.assertEqual(self.route("/t1", extra=[("X-Tenant", "blue")]), ("B", "tenant"))
        self.assertEqual(self.route("/t2", extra=[("x-tenant", "blue")]), ("B", "tenant"))
        self.assertEqual(self.route("/t3", extra=[("X-Tenant", "red")]), ("A", "tprefix"))
        self.assertEqual(self.route("/t4"), ("A", "tprefix"))

    def test_first_match_wins(self):
        self.assertEqual(self.route("/first/x"), ("B", "first"))

    def test_no_match(self):
        self.assertEqual(self.status("/"), 404)
        self.assertEqual(self.status("/nothing"), 404)


if __name__ == "__main__":
    unittest.main(verbosity=2)
