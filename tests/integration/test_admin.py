"""POST /revoke on the admin listener: established WebSocket sessions (tunnels and channel
subscribers, on every worker) of one plugin identity, or the one with a given access-log id, get
a close frame with the code and reason asked for; other sessions go on. Bad bodies get a 400
that says what is wrong. Clients are hand-written frames against Debian's python3-websockets
echo upstream; identities come from the api_key plugin."""

import json
import os
import unittest

import harness
from harness import (GatewayTestCase, EchoUpstream, RawClient, RawUpstream, OP_TEXT, OP_CLOSE,
                     close_payload)

import bridge_util

TOKEN = "admin-token"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEYS = os.path.join(ROOT, "tests", "fixtures", "plugin", "api_keys.txt")
KEYS = {"alice": "key-alice", "bob": "key-bob"}


def gateway_config(echo, workers, routes):
    return harness.make_config(workers=workers, upstreams={"echo": {"endpoints": [echo.addr]}},
                               routes=routes, admin={"address": "127.0.0.1:0", "token": TOKEN})


def chat_route(plugins):
    return {"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "echo",
            "plugins": plugins}


class RevokeCase(GatewayTestCase):
    """Helpers; the tests are in the subclasses."""

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def session(self, user, path="/chat"):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake(path, extra=[("X-API-Key", KEYS[user])])
        return c

    def revoke(self, body, status=200):
        answer = self.admin.request("POST", "/revoke", json.dumps(body).encode())
        self.assertEqual(answer.status, status, answer)
        return answer.json() if status == 200 else answer

    def assert_closed_with(self, c, code, reason):
        fin, op, payload = c.recv_frame()
        self.assertEqual((op, payload), (OP_CLOSE, close_payload(code, reason.encode())))
        c.send_frame(OP_CLOSE, close_payload(code))  # the client's reply ends it
        _, how = c.read_until_closed(10)
        self.assertIn(how, ("eof", "reset"))

    def assert_open(self, c):
        c.send_frame(OP_TEXT, b"still here")
        self.assertEqual(c.recv_frame()[1:], (OP_TEXT, b"still here"))


class RevokeTest(RevokeCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream())
        cls.silent = cls.start_class_peer(RawUpstream(harness.silent_handler, name="silent"))
        api_key = [{"name": "api_key", "config": {"keys_file": API_KEYS}}]
        config = gateway_config(cls.echo, 2, [
            chat_route(api_key),
            {"name": "news", "match": {"path_prefix": "/news/"}, "kind": "channel",
             "channel": "{path.1}", "plugins": api_key},
            {"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "silent",
             "plugins": api_key}])
        config["upstreams"]["silent"] = {"endpoints": [harness.hostport(cls.silent.addr)],
                                         "handshake_timeout": "60s"}
        cls.gw = cls.start_class_gateway(config)
        cls.admin = bridge_util.Admin(cls.gw, TOKEN)

    def test_every_session_of_a_user_is_closed_on_every_worker(self):
        # Enough sessions that both workers hold some of alice's (SO_REUSEPORT spreads them by
        # address and port: all 16 on one worker would be a 1 in 32,768 chance).
        alices = [self.session("alice") for _ in range(16)]
        subscriber = self.session("alice", "/news/revoked")
        bob = self.session("bob")
        self.assertEqual(self.revoke({"user": "alice", "code": 4001, "reason": "logged out"}),
                         {"revoked": 17})
        # Closing already (the clients have not answered): not counted again, and the close
        # under way keeps its code and reason.
        self.assertEqual(self.revoke({"user": "alice", "code": 4002}), {"revoked": 0})
        for c in alices + [subscriber]:
            self.assert_closed_with(c, 4001, "logged out")
        self.assert_open(bob)
        workers = set()
        for c in alices:
            entry = self.gw.access_log_for_client(c.sock.getsockname())
            self.assertEqual((entry["user"], entry["close_code"], entry["close_by"]),
                             ("alice", 4001, "gateway"), entry)
            workers.add(entry["id"] & 0xFF)  # ids carry their worker's index
        self.assertEqual(workers, {0, 1})
        # Nobody left to revoke.
        self.assertEqual(self.revoke({"user": "alice"}), {"revoked": 0})

    def test_an_upgrade_still_in_its_handshake_gets_a_403(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(harness.ws_request("/slow", extra=[("X-API-Key", KEYS["alice"])]))
        # Admitted: the upstream has the upgrade, and no 101 comes.
        self.silent.wait_event(lambda e: e[0] == "head", what="the upgrade at the upstream")
        self.assertEqual(self.revoke({"user": "alice"}), {"revoked": 1})
        self.assertEqual(c.read_response().status, 403)

    def test_user_and_session_together_mean_that_users_session(self):
        bob = self.session("bob")
        bob.send_frame(OP_CLOSE, close_payload(1000))
        bob.recv_frame()
        bob_id = self.gw.access_log_for_client(bob.sock.getsockname())["id"]
        alice = self.session("alice")
        # bob's id (ended) is no session of alice's; nothing of alice's is touched.
        self.assertEqual(self.revoke({"user": "alice", "session": bob_id}), {"revoked": 0})
        self.assert_open(alice)

    def test_bad_bodies_are_refused_with_the_reason(self):
        cases = [
            ({}, "name the sessions"),
            ({"user": ""}, "\"user\" must be a non-empty string"),
            ({"session": -1}, "\"session\" must be a session id"),
            ({"user": "alice", "code": 1006}, "\"code\" must be a close code a server may send"),
            ({"user": "alice", "code": 1010}, "\"code\" must be a close code a server may send"),
            ({"user": "alice", "reason": "x" * 101}, "at most 100 bytes"),
            ({"user": "alice", "who": "x"}, "unknown key \"who\""),
            ([1, 2], "must be a JSON object"),
        ]
        for body, want in cases:
            with self.subTest(body=body):
                answer = self.revoke(body, status=400)
                self.assertIn(want, answer.body.decode(), answer)
        answer = self.admin.request("POST", "/revoke", b"{not json")
        self.assertEqual(answer.status, 400, answer)
        self.assertEqual(self.admin.request("GET", "/revoke").status, 405)
        self.assertEqual(self.admin.request("POST", "/revoke", b"{}", token=False).status, 401)


class RevokeOneSessionTest(RevokeCase):
    """By access-log id. One worker, so ids follow accept order: (n << 8) | worker index."""

    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream())
        cls.gw = cls.start_class_gateway(gateway_config(cls.echo, 1, [
            chat_route([{"name": "api_key", "config": {"keys_file": API_KEYS}}])]))
        cls.admin = bridge_util.Admin(cls.gw, TOKEN)

    def test_one_session_by_its_id_with_the_default_code(self):
        probe = self.session("bob")
        probe.send_frame(OP_CLOSE, close_payload(1000))
        probe.recv_frame()
        probe_id = self.gw.access_log_for_client(probe.sock.getsockname())["id"]
        first, second = self.session("bob"), self.session("bob")
        self.assertEqual(self.revoke({"session": probe_id + (1 << 8)}), {"revoked": 1})
        self.assert_closed_with(first, 1008, "revoked")
        self.assert_open(second)
        entry = self.gw.access_log_for_client(first.sock.getsockname())
        self.assertEqual(entry["id"], probe_id + (1 << 8), entry)
        self.assertEqual(self.revoke({"session": probe_id}), {"revoked": 0})  # ended already


if __name__ == "__main__":
    unittest.main(verbosity=2)
