"""Configuration reload (SIGHUP and POST /reload): the file is read again and new connections
follow it (routes, upstreams, limits, timeouts, listeners added and removed) while established
sessions keep the configuration they started with; a file with errors, or a listener that
cannot bind, changes nothing and says why; settings that need a restart are reported."""

import json
import os
import signal
import socket
import time
import unittest

import harness
from harness import GatewayTestCase, EchoUpstream, RawClient, OP_TEXT

import bridge_util

ADMIN_TOKEN = "reload-test-token"
RELOAD_TIMEOUT = 10.0


class ReloadTest(GatewayTestCase):
    def setUp(self):
        self.a = self.start_peer(EchoUpstream(name="a"))
        self.b = self.start_peer(EchoUpstream(name="b"))
        self.gw = self.start_gateway(self.config("a"))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    # -- helpers ----------------------------------------------------------------------------
    def config(self, upstream, listeners=None, **overrides):
        return harness.make_config(
            upstreams={"a": {"endpoints": [self.a.addr]}, "b": {"endpoints": [self.b.addr]}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": upstream}],
            listeners=listeners or [{"name": "public", "address": "127.0.0.1:0"}],
            admin={"address": "127.0.0.1:0", "token": ADMIN_TOKEN},
            **overrides)

    def write_config(self, config):
        text = config if isinstance(config, str) else harness.to_yaml(config) + "\n"
        tmp = self.gw.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.gw.config_path)

    def admin_reload(self):
        """POST /reload: (status, body text)."""
        answer = bridge_util.Admin(self.gw, ADMIN_TOKEN).request("POST", "/reload", b"")
        return answer.status, answer.body.decode()

    def reload(self):
        """POST /reload; returns the decoded 200 body."""
        status, body = self.admin_reload()
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def assertEchoes(self, c, text):
        c.send_frame(OP_TEXT, text.encode())
        self.assertEqual(c.recv_frame()[2], text.encode())

    def paths(self, upstream):
        return [r["path"] for r in upstream.requests]

    def session_on(self, upstream, path, listener="public"):
        """A session that reached `upstream`: the workers apply a reload from their inboxes,
        so the first connections after one may still get the previous generation."""
        found = []

        def check():
            unique = "%s/%d" % (path, len(found))
            c = self.session(unique, listener)
            self.assertEchoes(c, "probe")
            if unique in self.paths(upstream):
                return True
            found.append(c)  # an older generation's session: closed by the cleanup
            return False
        harness.poll_until(check, RELOAD_TIMEOUT, interval=0.05,
                           what="%s via %s" % (path, upstream.name))
        return self._last_session

    def session(self, path, listener="public"):
        c = RawClient(self.gw.addr(listener))
        self.addCleanup(c.close)
        c.handshake(path)
        self._last_session = c
        return c

    def log_lines(self, levels=("error", "err", "warn", "warning")):
        return [e.get("msg", "") for e in bridge_util.gateway_events(self.gw)
                if e.get("level") in levels]

    # -- tests ------------------------------------------------------------------------------
    def test_new_connections_follow_the_file_established_sessions_keep_theirs(self):
        old = self.session("/chat/old")
        self.assertEchoes(old, "before")
        self.assertEqual(self.paths(self.a), ["/chat/old"])

        # Route to b, a second listener, and an idle timeout the old session must not get.
        self.write_config(self.config("b", listeners=[
            {"name": "public", "address": "127.0.0.1:0"},
            {"name": "extra", "address": "127.0.0.1:0"}], timeouts={"idle": "1s"}))
        public_before = self.gw.addr("public")
        body = self.reload()
        self.assertEqual(body, {"reloaded": True, "generation": 2, "restart_needed": []})
        self.gw.read_ready_file()
        self.assertEqual(self.gw.addr("public"), public_before, "a kept listener keeps its port")
        self.assertIn("extra", self.gw.listeners, "the ready file lists the new listener")

        self.session_on(self.b, "/chat/new")
        via_extra = self.session("/chat/extra", listener="extra")
        self.assertEchoes(via_extra, "through the new listener")
        self.assertIn("/chat/extra", self.paths(self.b))

        # The old session is still on a, with no idle timeout: quiet for twice the new one.
        time.sleep(2.0)  # the point of the test is elapsed idle time
        self.assertEchoes(old, "after reload")
        self.assertNotIn("/chat/old", self.paths(self.b))
        # A new session gets the 1 s idle timeout (so has via_extra, by now).
        new = self.session("/chat/idle")
        self.assertEchoes(new, "once")
        started = time.monotonic()
        _, how = new.read_until_closed(5.0)
        self.assertIn(how, ("eof", "reset"), "a new session did not get the new idle timeout")
        self.assertLess(time.monotonic() - started, 4.0)

        # Back to a and no idle timeout; then the extra listener goes: it stops accepting, and
        # the session it accepted carries on.
        self.write_config(self.config("a", listeners=[
            {"name": "public", "address": "127.0.0.1:0"},
            {"name": "extra", "address": "127.0.0.1:0"}]))
        self.assertEqual(self.reload()["generation"], 3)
        on_extra = self.session_on(self.a, "/chat/on-extra", listener="extra")
        self.write_config(self.config("a"))
        extra_addr = self.gw.addr("extra")
        self.gw.signal(signal.SIGHUP)

        def refused():
            try:
                socket.create_connection(extra_addr, timeout=1).close()
                return False
            except OSError:
                return True
        harness.poll_until(refused, RELOAD_TIMEOUT, interval=0.1, what="removed listener closed")
        self.gw.read_ready_file()
        self.assertNotIn("extra", self.gw.listeners)
        self.assertEchoes(on_extra, "its listener is gone, the session is not")
        self.assertEchoes(old, "three reloads later")
        msgs = [e.get("msg", "") for e in bridge_util.gateway_events(self.gw)]
        self.assertTrue(any("SIGHUP: configuration generation 4" in m for m in msgs), msgs)
        self.assertTrue(any("listener extra on" in m and "closed" in m for m in msgs), msgs)

    def test_a_file_with_errors_changes_nothing(self):
        self.write_config("workers: 2\nlisteners:\n  - name: public\n    adress: 127.0.0.1:0\n")
        status, body = self.admin_reload()
        self.assertEqual(status, 500, body)
        # Every error, with file:line:column and the key.
        self.assertIn("reload failed, kept the running state", body)
        self.assertIn(self.gw.config_path + ":4:5: listeners[0].adress", body)
        self.assertTrue(any("keeping configuration generation 1" in m and "adress" in m
                            for m in self.log_lines()), self.log_lines())
        # Still generation 1: routed to a, and a later good file is taken as generation 2.
        self.session_on(self.a, "/chat/still-a")
        self.write_config(self.config("b"))
        self.assertEqual(self.reload()["generation"], 2)
        self.session_on(self.b, "/chat/now-b")

    def test_a_listener_that_cannot_bind_refuses_the_whole_reload(self):
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        self.write_config(self.config("b", listeners=[
            {"name": "public", "address": "127.0.0.1:0"},
            {"name": "busy", "address": "127.0.0.1:%d" % port}]))
        status, body = self.admin_reload()
        self.assertEqual(status, 500, body)
        self.assertIn("listener busy: cannot listen on", body)
        # The route change in the same file did not apply either.
        self.session_on(self.a, "/chat/kept")
        self.gw.read_ready_file()
        self.assertNotIn("busy", self.gw.listeners)

    def test_a_listener_at_the_same_address_keeps_its_socket(self):
        """Renamed, with another backlog: the same socket, so nothing in its accept queue is
        lost; an established session through it carries on."""
        old = self.session("/chat/before-rename")
        port = self.gw.addr("public")[1]
        probe = socket.create_connection(self.gw.addr("public"))  # accepted, held open
        self.addCleanup(probe.close)
        self.write_config(self.config("b", listeners=[
            {"name": "front", "address": "127.0.0.1:0", "backlog": 64}]))
        self.assertEqual(self.reload()["generation"], 2)
        self.gw.read_ready_file()
        self.assertEqual(set(self.gw.listeners), {"front", "admin"})
        self.assertEqual(self.gw.addr("front")[1], port, "renamed listener kept its port")
        c = RawClient(self.gw.addr("front"))
        self.addCleanup(c.close)
        c.handshake("/chat/after-rename")
        self.assertEchoes(c, "renamed")
        self.assertEchoes(old, "still here")
        msgs = [e.get("msg", "") for e in bridge_util.gateway_events(self.gw)]
        self.assertTrue(any("listener front (was public)" in m for m in msgs), msgs)
        self.assertFalse(any("listener public on" in m and "closed" in m for m in msgs), msgs)

    def test_turning_the_admin_listener_off_keeps_its_token(self):
        config = self.config("a")
        del config["admin"]
        self.write_config(config)
        body = self.reload()
        self.assertEqual(body["restart_needed"], ["admin.enabled"])
        # Still running, still asking for the token.
        answer = bridge_util.Admin(self.gw).request("POST", "/reload", b"", token=False)
        self.assertEqual(answer.status, 401)

    def test_settings_that_need_a_restart_are_reported(self):
        self.write_config(self.config("a", workers=1))
        body = self.reload()
        self.assertEqual(body["restart_needed"], ["workers"])
        self.assertTrue(any("workers changed; it applies at the next start" in m
                            for m in self.log_lines()), self.log_lines())
        # Both workers still serve (two sessions at once still work).
        s1, s2 = self.session("/chat/w1"), self.session("/chat/w2")
        self.assertEchoes(s1, "one")
        self.assertEchoes(s2, "two")

    def test_limits_apply_to_new_requests(self):
        self.write_config(self.config("a", limits={"max_head_bytes": "1KiB"}))
        self.reload()

        def refused():
            c = RawClient(self.gw.addr())
            try:
                c.send(harness.ws_request("/chat/big", extra=[("X-Pad", "p" * 2000)]))
                return c.read_response().status == 431
            finally:
                c.close()
        harness.poll_until(refused, RELOAD_TIMEOUT, interval=0.1, what="431 under the new limit")


if __name__ == "__main__":
    unittest.main(verbosity=2)
