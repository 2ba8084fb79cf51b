"""Certificate reload on SIGHUP: replaced files are served to new handshakes while an
established wss session keeps echoing on its old connection; a broken replacement (not PEM,
a key that does not match, a missing file, an expired certificate) keeps the certificate in
use and logs why; a good file after a broken one is picked up again."""

import http.client
import json
import os
import signal
import unittest

import harness
from harness import GatewayTestCase, OP_TEXT

import tlsutil
from tlsutil import Pki, s_client, tls_listener, TlsEchoUpstream

RELOAD_TIMEOUT = 10.0
ADMIN_TOKEN = "reload-token"


class TlsReloadTest(GatewayTestCase):
    def setUp(self):
        pki = self.pki = Pki(tlsutil.temp_dir(type(self)))
        self.ca = pki.ca("ca", "upgate reload CA")
        self.gen = [pki.leaf("gen%d" % i, self.ca, "a.example.com", dns=["a.example.com"],
                             org="generation %d" % i) for i in range(1, 5)]
        self.expired = pki.dated_leaf("expired", self.ca, "a.example.com", "20200101000000Z",
                                      "20200201000000Z", dns=["a.example.com"])
        # The gateway reads these two paths; the test replaces their contents.
        self.live = tlsutil.Cert("live", pki.path("live.pem"), pki.path("live.key"),
                                 "a.example.com")
        self.install(self.gen[0])
        self.echo = self.start_peer(TlsEchoUpstream(name="plain-echo"))
        self.gw = self.start_gateway(harness.make_config(
            upstreams={"echo": {"endpoints": [self.echo.addr]}},
            routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "echo"}],
            listeners=[tls_listener("secure", [(self.live, ["a.example.com"])])],
            admin={"address": "127.0.0.1:0", "token": ADMIN_TOKEN}))
        self.ctx = tlsutil.client_context(self.ca.cert)

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    # -- helpers ----------------------------------------------------------------------------
    def install(self, cert):
        tlsutil.replace_file(cert.key, self.live.key)
        tlsutil.replace_file(cert.cert, self.live.cert)

    def served(self):
        r = s_client(self.gw.addr("secure"), "-servername", "a.example.com")
        self.assertFalse(r.timed_out, "s_client hung:\n" + r.describe())
        self.assertTrue(r.handshake_ok, "handshake failed:\n" + r.describe())
        return r.peer_fingerprint

    def wait_served(self, cert, what):
        last = []

        def check():
            last[:] = [self.served()]
            return last[0] == cert.fingerprint

        try:
            harness.poll_until(check, RELOAD_TIMEOUT, interval=0.1, what=what)
        except TimeoutError:
            self.fail("%s: new handshakes still get %s, want %s (%s)\nstderr:\n%s"
                      % (what, last[0], cert.fingerprint, cert.name, self.gw.stderr_tail()))

    def open_session(self, path):
        c = tlsutil.TlsRawClient(self.gw.addr("secure"), self.ctx)
        self.addCleanup(c.close)
        c.handshake(path, host="a.example.com")
        return c

    def assertEchoes(self, c, text, what):
        c.send_frame(OP_TEXT, text.encode())
        fin, op, payload = c.recv_frame()
        self.assertEqual((fin, op, payload), (True, OP_TEXT, text.encode()), what)

    def error_lines(self, name):
        return [tlsutil.msg(e) for e in tlsutil.events(self.gw)
                if name in tlsutil.msg(e) and e.get("level") in ("error", "err", "warn",
                                                                "warning", "critical")]

    def reload_expecting_error(self, about, what):
        """SIGHUP and wait for a new warn/error line naming `about` (a file name)."""
        before = len(self.error_lines(about))
        self.gw.signal(signal.SIGHUP)
        try:
            harness.poll_until(lambda: len(self.error_lines(about)) > before, RELOAD_TIMEOUT,
                               interval=0.05, what="error line naming %s" % about)
        except TimeoutError:
            self.fail("%s: SIGHUP logged no warning/error naming %s; stderr:\n%s"
                      % (what, about, self.gw.stderr_tail()))
        return self.error_lines(about)[-1]

    def admin(self, method, path, token=ADMIN_TOKEN):
        """One request to the admin listener: (status, body text)."""
        host, port = self.gw.addr("admin")
        conn = http.client.HTTPConnection(host, port, timeout=RELOAD_TIMEOUT)
        try:
            headers = {"Authorization": "Bearer " + token} if token else {}
            conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    # -- tests ------------------------------------------------------------------------------
    def test_admin_reload_does_what_sighup_does(self):
        old = self.open_session("/reload/admin-old")
        self.install(self.gen[1])
        status, body = self.admin("POST", "/reload")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body),
                         {"reloaded": True, "generation": 2, "restart_needed": []})
        # The workers take the new contexts from their inboxes: new handshakes get them shortly.
        self.wait_served(self.gen[1], "after POST /reload")
        self.assertEchoes(old, "after admin reload", "established session after POST /reload")

        # A broken file: 500 naming what failed, and the running certificate stays.
        garbage = self.pki.path("garbage-admin.pem")
        with open(garbage, "w") as f:
            f.write("this is not a certificate\n")
        tlsutil.replace_file(garbage, self.live.cert)
        status, body = self.admin("POST", "/reload")
        self.assertEqual(status, 500, body)
        self.assertIn("reload failed, kept the running state: TLS", body)
        self.assertEqual(self.served(), self.gen[1].fingerprint)

        # Only POST, and only with the admin token.
        self.assertEqual(self.admin("GET", "/reload")[0], 405)
        self.assertEqual(self.admin("POST", "/reload", token=None)[0], 401)

    def test_new_certificate_for_new_handshakes_old_session_keeps_going(self):
        self.assertEqual(self.served(), self.gen[0].fingerprint)
        old = self.open_session("/reload/old")
        self.assertEqual(old.peer_fingerprint(), self.gen[0].fingerprint)
        self.assertEchoes(old, "before reload", "established session before reload")

        self.install(self.gen[1])
        self.gw.signal(signal.SIGHUP)
        self.wait_served(self.gen[1], "after replacing the files and SIGHUP")
        self.assertEchoes(old, "after reload", "established session after reload")

        new = self.open_session("/reload/new")
        self.assertEqual(new.peer_fingerprint(), self.gen[1].fingerprint)
        self.assertEchoes(new, "new session", "session opened after reload")
        self.assertEchoes(old, "still here", "established session, again")
        # And again: a second reload works just as well.
        self.install(self.gen[2])
        self.gw.signal(signal.SIGHUP)
        self.wait_served(self.gen[2], "second reload")
        self.assertEchoes(old, "third generation", "first session after two reloads")
        self.assertEchoes(new, "third generation", "second session after a reload")

    def test_broken_replacements_keep_the_old_certificate(self):
        old = self.open_session("/reload/survivor")
        self.install(self.gen[1])
        self.gw.signal(signal.SIGHUP)
        self.wait_served(self.gen[1], "good reload")
        garbage = self.pki.path("garbage.pem")
        with open(garbage, "w") as f:
            f.write("this is not a certificate\n")

        def not_pem():
            tlsutil.replace_file(garbage, self.live.cert)

        def wrong_key():
            tlsutil.replace_file(self.gen[2].cert, self.live.cert)
            tlsutil.replace_file(self.gen[3].key, self.live.key)

        def missing_key():
            os.unlink(self.live.key)

        def expired():
            self.install(self.expired)

        cases = [("certificate file is not PEM", not_pem, self.live.cert),
                 ("key does not match the certificate", wrong_key, self.live.key),
                 ("key file missing", missing_key, self.live.key),
                 ("certificate expired", expired, self.live.cert)]
        for what, breakit, about in cases:
            with self.subTest(what):
                self.install(self.gen[1])
                breakit()
                line = self.reload_expecting_error(os.path.basename(about), what)
                self.assertIn(about, line, "%s: the log line should name the file" % what)
                self.assertGatewayAlive(self.gw)
                self.assertEqual(self.served(), self.gen[1].fingerprint,
                                 "%s: the previous certificate must stay in use; log: %s"
                                 % (what, line))
                self.assertEchoes(old, what, "established session after a failed reload")
        # A good file after the broken ones is served again.
        self.install(self.gen[3])
        self.gw.signal(signal.SIGHUP)
        self.wait_served(self.gen[3], "good reload after broken ones")
        self.assertEchoes(old, "the end", "established session after everything")


if __name__ == "__main__":
    unittest.main(verbosity=2)
