"""Client certificates (mTLS) on a listener.

`client_auth: {ca, required: true}`: a certificate from that CA is accepted (s_client and
python3-websockets), and the upstream sees the verified subject, SANs and SHA-256 fingerprint
in the configured headers, never the client's own copies of them; no certificate, one from
another CA, or an expired one is a TLS alert and nothing reaches the upstream.
`required: false`: connections without a certificate are accepted and carry no identity."""

import asyncio
import ssl
import unittest

import websockets

import harness
from harness import GatewayTestCase, header_values

import tlsutil
from tlsutil import Pki, s_client, tls_listener, http_get, TlsEchoUpstream

DEFAULT_NAMES = {"subject": "X-Client-Cert-Subject", "sans": "X-Client-Cert-SANs",
                 "fingerprint": "X-Client-Cert-SHA256"}
CUSTOM_NAMES = {"subject": "X-Peer-Subject", "sans": "X-Peer-Names",
                "fingerprint": "X-Peer-Fingerprint"}


class MutualTlsTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        pki = cls.pki = Pki(tlsutil.temp_dir(cls))
        cls.ca = pki.ca("server-ca", "upgate server CA")
        cls.server = pki.leaf("server", cls.ca, "a.example.com", dns=["a.example.com"])
        cls.clients_ca = pki.ca("clients-ca", "upgate clients CA")
        cls.good = pki.leaf("client-one", cls.clients_ca, "client-one", org="Tenant Blue",
                            dns=["client-one.clients.test"], emails=["one@clients.test"],
                            usage="client")
        cls.other_ca = pki.ca("other-ca", "unrelated CA")
        cls.stranger = pki.leaf("stranger", cls.other_ca, "client-one", org="Tenant Blue",
                                dns=["client-one.clients.test"], usage="client")
        cls.expired = pki.dated_leaf("expired-client", cls.clients_ca, "client-old",
                                     "20200101000000Z", "20200201000000Z",
                                     usage="client")
        cls.echo = cls.start_class_peer(TlsEchoUpstream(name="plain-echo"))
        listeners = [
            tls_listener("mtls", [cls.server], client_auth={
                "ca": cls.clients_ca.cert, "required": True, "headers": DEFAULT_NAMES}),
            tls_listener("optional", [cls.server], client_auth={
                "ca": cls.clients_ca.cert, "required": False, "headers": CUSTOM_NAMES}),
        ]
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"echo": {"endpoints": [cls.echo.addr]}},
            routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "echo"}],
            listeners=listeners))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    # -- helpers ----------------------------------------------------------------------------
    def sclient(self, *args, listener="mtls", **kw):
        r = s_client(self.gw.addr(listener), "-servername", "a.example.com",
                     "-CAfile", self.ca.cert, *args, **kw)
        self.assertFalse(r.timed_out, "s_client hung:\n" + r.describe())
        return r

    def assertRefusedWithAlert(self, r, what):
        self.assertIsNone(r.http_status, "%s: got an HTTP answer:\n%s" % (what, r.describe()))
        self.assertIsNotNone(r.alert, "%s: no TLS alert from the gateway:\n%s"
                             % (what, r.describe()))
        self.assertNotEqual(r.returncode, 0, "%s: s_client exit 0:\n%s" % (what, r.describe()))

    def identity_headers(self, path, names, cert=None, listener="mtls", forged=()):
        """Open a wss session with `cert`, echo one message; return the upstream's request."""
        ctx = tlsutil.client_context(self.ca.cert, cert=cert)

        async def run():
            async with tlsutil.connect_wss(self.gw, path, ctx, listener=listener,
                                           extra_headers=list(forged)) as ws:
                await ws.send("hello over mTLS")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "hello over mTLS")

        self.run_async(run(), timeout=30)
        req = self.echo.request_for(path)
        return {key: header_values(req["headers"], name) for key, name in names.items()}

    # -- accepted ---------------------------------------------------------------------------
    def test_good_client_certificate_accepted_by_s_client(self):
        for version in ("-tls1_3", "-tls1_2"):
            with self.subTest(version=version):
                r = self.sclient(version, "-cert", self.good.cert, "-key", self.good.key,
                                 "-ign_eof", stdin=http_get())
                self.assertTrue(r.handshake_ok, r.describe())
                self.assertEqual(r.http_status, 426, r.describe())
                self.assertIn("upgate clients CA", r.out,
                              "the CertificateRequest should name the client CA:\n"
                              + r.describe())

    def test_identity_forwarded_upstream(self):
        got = self.identity_headers("/mtls/identity", DEFAULT_NAMES, cert=self.good)
        self.assertEqual(len(got["subject"]), 1, got)
        self.assertIn("CN=client-one", got["subject"][0])
        self.assertIn("O=Tenant Blue", got["subject"][0])
        self.assertEqual(len(got["sans"]), 1, got)
        self.assertIn("DNS:client-one.clients.test", got["sans"][0])
        self.assertIn("one@clients.test", got["sans"][0])
        self.assertEqual(len(got["fingerprint"]), 1, got)
        self.assertEqual(got["fingerprint"][0].replace(":", "").lower(), self.good.fingerprint,
                         "fingerprint header is not the SHA-256 of the client certificate")

    def test_client_copies_of_identity_headers_are_stripped(self):
        forged = [("X-Client-Cert-Subject", "CN=admin"), ("X-Client-Cert-SANs", "DNS:admin"),
                  ("x-client-cert-sha256", "00" * 32)]
        got = self.identity_headers("/mtls/forged", DEFAULT_NAMES, cert=self.good, forged=forged)
        self.assertEqual(len(got["subject"]), 1, got)
        self.assertIn("CN=client-one", got["subject"][0])
        self.assertEqual(len(got["sans"]), 1, got)
        self.assertNotIn("admin", got["sans"][0])
        self.assertEqual([f.replace(":", "").lower() for f in got["fingerprint"]],
                         [self.good.fingerprint], got)

    def test_optional_client_auth_without_certificate(self):
        forged = [("X-Peer-Subject", "CN=admin"), ("X-Peer-Names", "DNS:admin"),
                  ("X-Peer-Fingerprint", "ab" * 32)]
        got = self.identity_headers("/optional/anonymous", CUSTOM_NAMES, listener="optional",
                                    forged=forged)
        self.assertEqual(got, {"subject": [], "sans": [], "fingerprint": []},
                         "no certificate: the upstream must see no identity, forged or not")

    def test_optional_client_auth_with_certificate_uses_configured_names(self):
        got = self.identity_headers("/optional/named", CUSTOM_NAMES, cert=self.good,
                                    listener="optional")
        self.assertEqual(len(got["subject"]), 1, got)
        self.assertIn("CN=client-one", got["subject"][0])
        self.assertEqual([f.replace(":", "").lower() for f in got["fingerprint"]],
                         [self.good.fingerprint], got)
        req = self.echo.request_for("/optional/named")
        self.assertEqual(header_values(req["headers"], "X-Client-Cert-Subject"), [],
                         "the default header name was used although others are configured")

    def test_optional_client_auth_rejects_untrusted_certificate(self):
        # required: false means "may come without one", not "any certificate will do".
        r = self.sclient("-cert", self.stranger.cert, "-key", self.stranger.key, "-ign_eof",
                         stdin=http_get(), listener="optional")
        self.assertRefusedWithAlert(r, "optional mTLS, certificate from another CA")

    def test_identity_survives_session_resumption(self):
        # A resumed session has no Certificate message: the identity must come from the
        # session (ticket), not be dropped, and must still be the verified one.
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version.name):
                ctx = tlsutil.client_context(self.ca.cert, cert=self.good, minimum=version,
                                             maximum=version)
                first = tlsutil.TlsRawClient(self.gw.addr("mtls"), ctx)
                self.addCleanup(first.close)
                path1 = "/mtls/resume-first-%s" % version.name
                first.handshake(path1, host="a.example.com")
                session = first.sock.session  # the ticket has arrived with the 101
                first.close()
                second = tlsutil.TlsRawClient(self.gw.addr("mtls"), ctx, session=session)
                self.addCleanup(second.close)
                path2 = "/mtls/resume-second-%s" % version.name
                second.handshake(path2, host="a.example.com")
                self.assertTrue(second.sock.session_reused, "%s: not resumed" % version.name)
                second.send_frame(harness.OP_TEXT, b"resumed")
                self.assertEqual(second.recv_frame(), (True, harness.OP_TEXT, b"resumed"))
                for path in (path1, path2):
                    req = self.echo.request_for(path)
                    got = {k: header_values(req["headers"], n) for k, n in DEFAULT_NAMES.items()}
                    self.assertEqual(len(got["subject"]), 1, "%s: %r" % (path, got))
                    self.assertIn("CN=client-one", got["subject"][0], path)
                    self.assertEqual([f.replace(":", "").lower() for f in got["fingerprint"]],
                                     [self.good.fingerprint], "%s: %r" % (path, got))

    # -- refused ----------------------------------------------------------------------------
    def test_no_client_certificate_refused(self):
        before = self.echo.count()
        for version in ("-tls1_3", "-tls1_2"):
            with self.subTest(version=version):
                # TLS 1.3: the client finishes first and learns of the refusal when reading,
                # hence a request and -ign_eof.
                r = self.sclient(version, "-ign_eof", stdin=http_get())
                self.assertRefusedWithAlert(r, "no client certificate " + version)
        self.assertEqual(self.echo.count(), before, "a refused client reached the upstream")

    def test_certificate_from_another_ca_refused(self):
        before = self.echo.count()
        for version in ("-tls1_3", "-tls1_2"):
            with self.subTest(version=version):
                r = self.sclient(version, "-cert", self.stranger.cert, "-key",
                                 self.stranger.key, "-ign_eof", stdin=http_get())
                self.assertRefusedWithAlert(r, "certificate from another CA " + version)
                self.assertEqual(r.alert, "unknown ca", r.describe())
        self.assertEqual(self.echo.count(), before, "a refused client reached the upstream")

    def test_expired_client_certificate_refused(self):
        r = self.sclient("-cert", self.expired.cert, "-key", self.expired.key, "-ign_eof",
                         stdin=http_get())
        self.assertRefusedWithAlert(r, "expired client certificate")
        self.assertEqual(r.alert, "certificate expired", r.describe())

    def test_refused_websocket_client_never_reaches_upstream(self):
        before = self.echo.count()
        ctx = tlsutil.client_context(self.ca.cert, cert=self.stranger)

        async def run():
            async with tlsutil.connect_wss(self.gw, "/mtls/stranger", ctx, listener="mtls") as ws:
                await ws.send("should not pass")
                await asyncio.wait_for(ws.recv(), 10)

        with self.assertRaises((ssl.SSLError, ConnectionError, OSError, EOFError,
                                websockets.exceptions.WebSocketException)):
            self.run_async(run(), timeout=30)
        self.assertEqual(self.echo.count(), before)

    def test_refusal_is_logged_with_the_reason(self):
        r = self.sclient("-cert", self.stranger.cert, "-key", self.stranger.key, "-ign_eof",
                         stdin=http_get())
        self.assertRefusedWithAlert(r, "certificate from another CA")
        entries = tlsutil.wait_event(
            self.gw, lambda e: "certificate" in tlsutil.msg(e).lower()
            and "verif" in tlsutil.msg(e).lower(),
            what="log line about the refused client certificate")
        self.assertTrue(any("unable to get local issuer certificate" in tlsutil.msg(e)
                            or "unknown ca" in tlsutil.msg(e).lower() for e in entries),
                        "the log does not say why: %r" % [tlsutil.msg(e) for e in entries])


if __name__ == "__main__":
    unittest.main(verbosity=2)
