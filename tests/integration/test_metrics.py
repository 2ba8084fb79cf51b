"""GET /metrics on the admin listener: Prometheus text format, read with the Prometheus
project's own Python parser (Debian's python3-prometheus-client), and counters that match the
traffic the test made: connections, requests by route and status, bytes and messages per
direction, upstream errors, WebSocket closes by code and origin, channel subscribers, deliveries and publishes,
reloads."""

import os
import time
import unittest

from prometheus_client.parser import text_string_to_metric_families

import harness
from harness import (GatewayTestCase, EchoUpstream, RawClient, RawUpstream, RefusedPort, OP_TEXT,
                     OP_CLOSE, close_payload, encode_frame)

import bridge_util

TOKEN = "metrics-token"
SETTLE = 10.0


class MetricsTest(GatewayTestCase):
    def setUp(self):
        self.echo = self.start_peer(EchoUpstream())
        self.refused = self.start_peer(RefusedPort())
        # An upstream that answers the upgrade with its own 502: relayed, not upgate's error.
        self.app = self.start_peer(RawUpstream(harness.make_response_handler(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")))
        self.bad = self.start_peer(RawUpstream(harness.make_response_handler(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")))
        self.gw = self.start_gateway(self.config())
        self.admin = bridge_util.Admin(self.gw, TOKEN)

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def config(self):
        return harness.make_config(
            upstreams={"echo": {"endpoints": [self.echo.addr]},
                       "dead": {"endpoints": [self.refused.addr]},
                       "bad": {"endpoints": [self.bad.addr]},
                       "app": {"endpoints": [self.app.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "echo"},
                    {"name": "strict", "match": {"path_prefix": "/strict"}, "upstream": "echo",
                     "mode": "frames"},
                    {"name": "dead", "match": {"path_prefix": "/dead"}, "upstream": "dead"},
                    {"name": "bad", "match": {"path_prefix": "/bad"}, "upstream": "bad"},
                    {"name": "page", "match": {"path": "/page"}, "kind": "http",
                     "upstream": "app"},
                    {"name": "news", "match": {"path_prefix": "/news/"}, "kind": "channel",
                     "channel": "{path.1}"}],
            admin={"address": "127.0.0.1:0", "token": TOKEN})

    # -- helpers ----------------------------------------------------------------------------
    def scrape(self):
        """{(name, frozenset(labels)): value} for every sample, and the families by name."""
        answer = self.admin.request("GET", "/metrics")
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
        samples = {}
        for f in families.values():
            for s in f.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples, families

    def value(self, name, **labels):
        samples, _ = self.scrape()
        return samples.get((name, frozenset(labels.items())))

    def wait_value(self, want, name, **labels):
        """Counters are written by the workers: wait until `name{labels}` reads `want`."""
        seen = []

        def check():
            seen[:] = [self.value(name, **labels)]
            return seen[0] == want
        try:
            harness.poll_until(check, SETTLE, interval=0.05, what=name)
        except TimeoutError:
            self.fail("%s%r = %r, want %r" % (name, labels, seen[0], want))

    def session(self, path):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake(path)
        return c

    # -- tests ------------------------------------------------------------------------------
    def test_every_family_is_described_and_parses(self):
        _, families = self.scrape()
        # The parser strips _total from counter family names.
        want = {"upgate_connections_accepted": "counter", "upgate_connections_open": "gauge",
                "upgate_requests": "counter", "upgate_bytes": "counter",
                "upgate_read_pauses": "counter", "upgate_upstream_errors": "counter",
                "upgate_websocket_closes": "counter", "upgate_messages": "counter",
                "upgate_channel_subscribers": "gauge", "upgate_channel_deliveries": "counter",
                "upgate_published_messages": "counter", "upgate_longpoll_polls": "counter",
                "upgate_reloads": "counter", "upgate_config_generation": "gauge"}
        for name, kind in want.items():
            self.assertIn(name, families)
            self.assertEqual(families[name].type, kind, name)
            self.assertTrue(families[name].documentation, name)
        self.assertEqual(self.value("upgate_config_generation"), 1)
        self.assertEqual(self.value("upgate_connections_open"), 0)

    def test_the_token_is_required(self):
        self.assertEqual(self.admin.request("GET", "/metrics", token=False).status, 401)
        self.assertEqual(self.admin.request("POST", "/metrics", b"").status, 405)

    def test_counters_follow_the_traffic(self):
        sessions = [self.session("/chat/%d" % i) for i in range(3)]
        for c in sessions:
            c.send_frame(OP_TEXT, b"hello")  # 11 bytes up (masked), 7 bytes down
            self.assertEqual(c.recv_frame()[2], b"hello")
        self.wait_value(3, "upgate_requests_total", route="chat", code="101")
        self.wait_value(33, "upgate_bytes_total", route="chat", direction="up")
        self.wait_value(21, "upgate_bytes_total", route="chat", direction="down")
        self.wait_value(3, "upgate_messages_total", route="chat", direction="up")
        self.wait_value(3, "upgate_messages_total", route="chat", direction="down")
        self.wait_value(3, "upgate_connections_open")

        # No route: 404 under route "". A refused upstream: 502, counted for the upstream too.
        c = RawClient(self.gw.addr())
        c.send(harness.ws_request("/nowhere"))
        self.assertEqual(c.read_response().status, 404)
        c.close()
        c = RawClient(self.gw.addr())
        c.send(harness.ws_request("/dead/x"))
        self.assertEqual(c.read_response().status, 502)
        c.close()
        self.wait_value(1, "upgate_requests_total", route="", code="404")
        self.wait_value(1, "upgate_requests_total", route="dead", code="502")
        self.wait_value(1, "upgate_upstream_errors_total", upstream="dead", code="502")
        c = RawClient(self.gw.addr())
        c.send(harness.ws_request("/bad/x"))
        self.assertEqual(c.read_response().status, 502)
        c.close()
        self.wait_value(1, "upgate_requests_total", route="bad", code="502")
        self.assertIsNone(self.value("upgate_upstream_errors_total", upstream="bad", code="502"),
                          "the upstream's own 502 is not an upstream error of upgate's")
        self.wait_value(6, "upgate_connections_accepted_total", listener="public")

        # Channels: two subscribers, one publish, two deliveries.
        subs = [self.session("/news/sports") for _ in range(2)]
        self.wait_value(2, "upgate_channel_subscribers")
        answer = self.admin.publish("sports", "goal")
        self.assertEqual(answer["subscribers"], 2)
        for s in subs:
            self.assertEqual(s.recv_frame()[2], b"goal")
        self.wait_value(1, "upgate_published_messages_total")
        self.wait_value(2, "upgate_channel_deliveries_total")
        self.wait_value(2, "upgate_messages_total", route="news", direction="down")
        self.wait_value(2, "upgate_requests_total", route="news", code="101")

        # Sessions ending take the gauges down.
        for c in sessions + subs:
            c.close()
        self.wait_value(0, "upgate_connections_open")
        self.wait_value(0, "upgate_channel_subscribers")

    def test_websocket_closes_by_code_and_origin(self):
        """Each WebSocket session is counted once, by its first close frame's code and sender;
        its access-log line says the same. A session that ends without one is 1006."""
        ended = []  # (client address, route, code, by)

        def opened(path):
            c = self.session(path)
            return c, c.sock.getsockname()

        # The client closes (passthrough): the echo upstream answers through upgate.
        c, local = opened("/chat/a")
        c.send_frame(OP_CLOSE, close_payload(1000, b"done"))
        self.assertEqual(c.recv_frame()[1:], (OP_CLOSE, close_payload(1000, b"done")))
        ended.append((local, "chat", 1000, "client"))
        # The upstream closes first: the echo server ends /close paths with 4001 "bye".
        c, local = opened("/chat/close")
        c.send_frame(OP_TEXT, b"x")
        self.assertEqual(c.recv_frame()[1:], (OP_CLOSE, close_payload(4001, b"bye")))
        c.send_frame(OP_CLOSE, close_payload(4001))
        ended.append((local, "chat", 4001, "upstream"))
        # The client's connection drops without a close frame.
        c, local = opened("/chat/b")
        c.close()
        ended.append((local, "chat", 1006, "client"))
        # Frames mode: an unmasked client frame is upgate's to refuse, with 1002.
        c, local = opened("/strict/a")
        c.send(encode_frame(OP_TEXT, b"x", mask=False))
        self.assertEqual(c.recv_frame()[1], OP_CLOSE)
        ended.append((local, "strict", 1002, "gateway"))
        # A channel subscriber: upgate is the server and answers the client's close itself.
        c, local = opened("/news/closes")
        c.send_frame(OP_CLOSE, close_payload(1001))
        self.assertEqual(c.recv_frame()[1:], (OP_CLOSE, close_payload(1001)))
        ended.append((local, "news", 1001, "client"))

        for local, route, code, by in ended:
            self.wait_value(1, "upgate_websocket_closes_total", route=route, code=str(code), by=by)
            entry = self.gw.access_log_for_client(local)
            self.assertEqual((entry["route"], entry["close_code"], entry["close_by"]),
                             (route, code, by), entry)
        samples, _ = self.scrape()
        counted = sum(v for (name, _), v in samples.items()
                      if name == "upgate_websocket_closes_total")
        self.assertEqual(counted, len(ended), samples)

    def test_http_requests_and_their_bytes(self):
        answer = bridge_util.http_request(self.gw.addr(), "GET", "/page")
        self.assertEqual((answer.status, answer.body), (200, b"hello"))
        self.wait_value(1, "upgate_requests_total", route="page", code="200")
        samples, _ = self.scrape()
        up = samples[("upgate_bytes_total", frozenset({"route": "page", "direction": "up"}.items()))]
        down = samples[("upgate_bytes_total",
                        frozenset({"route": "page", "direction": "down"}.items()))]
        self.assertEqual(up, 0)                 # HTTP: request bodies (a GET has none)
        self.assertGreater(down, len("hello"))  # the response as sent: head and body
        entry = self.gw.wait_access_log(lambda e: e.get("route") == "page", 5, what="page")
        self.assertEqual((entry["close_code"], entry["close_by"]), (None, None), entry)

    def test_reloads_are_counted(self):
        self.assertEqual(self.admin.request("POST", "/reload", b"").status, 200)
        self.wait_value(1, "upgate_reloads_total", result="ok")
        self.assertEqual(self.value("upgate_config_generation"), 2)
        with open(self.gw.config_path, "w") as f:
            f.write("listeners: [\n")
        self.assertEqual(self.admin.request("POST", "/reload", b"").status, 500)
        self.wait_value(1, "upgate_reloads_total", result="failed")
        self.assertEqual(self.value("upgate_config_generation"), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
