"""TLS termination as `openssl s_client` sees it: SNI picks the certificate (exact, wildcard,
by SAN, default), ALPN is http/1.1 only (h2 alone fails cleanly), TLS 1.2 minimum (1.1 and
1.0 refused, `min_version: "1.3"` honoured), TLS 1.3 preferred, no legacy ciphers or
compression, configured ciphers/groups honoured, stateless resumption (tickets) for 1.2 and
1.3, HTTP over TLS reaches the router, and `tls: {}` serves a logged self-signed certificate.

One gateway serves every case; each listener has a different TLS setup."""

import os
import re
import unittest

import harness
from harness import GatewayTestCase

import tlsutil
from tlsutil import Pki, s_client, tls_listener, http_get, TlsEchoUpstream


class TlsHandshakeTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        pki = cls.pki = Pki(tlsutil.temp_dir(cls))
        cls.ca = pki.ca("ca", "upgate test CA")
        cls.a = pki.leaf("a", cls.ca, "a.example.com", dns=["a.example.com"])
        cls.b = pki.leaf("b", cls.ca, "wild.b.example.net", dns=["*.b.example.net"])
        # No server_names in the config: SNI must find it by its SANs.
        cls.c = pki.leaf("c", cls.ca, "c.example.org", dns=["c.example.org", "alt.example.org"])
        cls.echo = cls.start_class_peer(TlsEchoUpstream(name="plain-echo"))
        listeners = [
            tls_listener("secure", [(cls.a, ["a.example.com"]), (cls.b, ["*.b.example.net"]),
                                    cls.c]),
            tls_listener("tls13", [cls.a], min_version="1.3"),
            tls_listener("tuned", [cls.a], ciphers="ECDHE-ECDSA-CHACHA20-POLY1305",
                         ciphersuites="TLS_CHACHA20_POLY1305_SHA256", groups="P-384"),
            tls_listener("notickets", [cls.a], session_tickets=False),
            tls_listener("selfsigned"),
        ]
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"echo": {"endpoints": [cls.echo.addr]}},
            routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "echo"}],
            listeners=listeners))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    # -- helpers ----------------------------------------------------------------------------
    def sclient(self, *args, listener="secure", **kw):
        r = s_client(self.gw.addr(listener), *args, **kw)
        self.assertFalse(r.timed_out, "s_client hung (killed after %.0fs):\n%s"
                         % (tlsutil.S_CLIENT_TIMEOUT, r.describe()))
        return r

    def assertHandshake(self, r, what):
        self.assertTrue(r.handshake_ok, "%s: handshake did not complete:\n%s" % (what, r.describe()))

    def assertRefused(self, r, what, alert=None):
        """The handshake failed, quickly, with a TLS alert from the server."""
        self.assertFalse(r.handshake_ok, "%s: handshake completed:\n%s" % (what, r.describe()))
        self.assertNotEqual(r.returncode, 0, "%s: s_client exit 0:\n%s" % (what, r.describe()))
        if alert:
            self.assertEqual(r.alert, alert, "%s: want a '%s' alert from the server:\n%s"
                             % (what, alert, r.describe()))

    # -- SNI --------------------------------------------------------------------------------
    def test_sni_selects_certificate(self):
        cases = [
            (["-servername", "a.example.com"], self.a, "exact name, first certificate"),
            (["-servername", "A.Example.COM"], self.a, "names are case-insensitive"),
            (["-servername", "x.b.example.net"], self.b, "*.b.example.net wildcard"),
            (["-servername", "chat.b.example.net"], self.b, "*.b.example.net wildcard"),
            (["-servername", "c.example.org"], self.c, "no server_names: first SAN"),
            (["-servername", "alt.example.org"], self.c, "no server_names: second SAN"),
            (["-servername", "unknown.example.com"], self.a, "unknown name -> default"),
            (["-servername", "b.example.net"], self.a, "wildcard does not cover its base"),
            (["-servername", "y.x.b.example.net"], self.a, "wildcard covers one label only"),
            (["-noservername"], self.a, "no SNI -> default"),
        ]
        for args, want, why in cases:
            with self.subTest(args=args):
                r = self.sclient(*args)
                self.assertHandshake(r, why)
                self.assertEqual(r.peer_fingerprint, want.fingerprint,
                                 "%s: served %r, want %s (%s)\n%s"
                                 % (" ".join(args), r.subject, want.cn, why, r.describe()))
                self.assertIn("CN = %s" % want.cn, r.subject or "", why)

    def test_served_chains_verify_against_the_ca(self):
        for name in ("a.example.com", "x.b.example.net", "c.example.org"):
            with self.subTest(name=name):
                r = self.sclient("-servername", name, "-CAfile", self.ca.cert,
                                 "-verify_return_error", "-verify_hostname", name)
                self.assertHandshake(r, name)
                self.assertEqual(r.verification, "OK", r.describe())

    def test_http_over_tls_reaches_the_router(self):
        # A plain GET on a WebSocket route: 426 proves the request went through TLS to HTTP.
        r = self.sclient("-servername", "a.example.com", "-ign_eof", stdin=http_get())
        self.assertHandshake(r, "GET over TLS")
        self.assertEqual(r.http_status, 426, r.describe())

    # -- ALPN -------------------------------------------------------------------------------
    def test_alpn_http11(self):
        for offer in ("http/1.1", "h2,http/1.1", "http/1.1,h2"):
            with self.subTest(offer=offer):
                r = self.sclient("-servername", "a.example.com", "-alpn", offer)
                self.assertHandshake(r, "ALPN " + offer)
                self.assertEqual(r.alpn, "http/1.1", r.describe())

    def test_no_alpn_offered_still_works(self):
        r = self.sclient("-servername", "a.example.com", "-ign_eof", stdin=http_get())
        self.assertHandshake(r, "no ALPN")
        self.assertEqual(r.alpn, "", "server chose a protocol nobody offered:\n" + r.describe())
        self.assertEqual(r.http_status, 426, r.describe())

    def test_alpn_h2_only_fails_cleanly(self):
        for version in ("-tls1_3", "-tls1_2"):
            with self.subTest(version=version):
                r = self.sclient("-servername", "a.example.com", "-alpn", "h2", version,
                                 stdin=http_get())
                self.assertRefused(r, "ALPN h2 only", alert="no application protocol")
                self.assertLess(r.elapsed, 8.0, r.describe())
                self.assertIsNone(r.http_status, r.describe())

    # -- versions and ciphers ---------------------------------------------------------------
    def test_tls11_and_tls10_refused(self):
        # SECLEVEL=0 so that our own client may offer the old versions at all: the refusal
        # must come from the gateway (a protocol_version alert), not from the local policy.
        for version in ("-tls1_1", "-tls1"):
            with self.subTest(version=version):
                r = self.sclient("-servername", "a.example.com", version,
                                 "-cipher", "DEFAULT:@SECLEVEL=0")
                self.assertNotIn("no protocols available", r.err,
                                 "the local client refused to offer %s: test is void\n%s"
                                 % (version, r.describe()))
                self.assertRefused(r, version, alert="protocol version")

    def test_tls12_handshake(self):
        r = self.sclient("-servername", "a.example.com", "-tls1_2", "-ign_eof", stdin=http_get())
        self.assertHandshake(r, "TLS 1.2")
        self.assertEqual(r.protocol, "TLSv1.2", r.describe())
        self.assertEqual(r.http_status, 426, r.describe())

    def test_tls13_handshake_and_preferred(self):
        r = self.sclient("-servername", "a.example.com", "-tls1_3", "-ign_eof", stdin=http_get())
        self.assertHandshake(r, "TLS 1.3")
        self.assertEqual(r.protocol, "TLSv1.3", r.describe())
        self.assertEqual(r.http_status, 426, r.describe())
        r = self.sclient("-servername", "a.example.com")
        self.assertEqual(r.protocol, "TLSv1.3", "1.3 should win when offered:\n" + r.describe())

    def test_min_version_13(self):
        r = self.sclient("-servername", "a.example.com", "-tls1_2", listener="tls13")
        self.assertRefused(r, "TLS 1.2 on a min_version 1.3 listener", alert="protocol version")
        r = self.sclient("-servername", "a.example.com", "-tls1_3", listener="tls13")
        self.assertHandshake(r, "TLS 1.3 on a min_version 1.3 listener")

    def test_no_legacy_ciphers_or_compression(self):
        for cipher in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"):
            with self.subTest(cipher=cipher):
                r = self.sclient("-servername", "a.example.com", "-tls1_2", "-cipher", cipher)
                self.assertRefused(r, "TLS 1.2 with only " + cipher, alert="handshake failure")
        r = self.sclient("-servername", "a.example.com", "-tls1_2")
        self.assertHandshake(r, "TLS 1.2 defaults")
        self.assertRegex(r.cipher or "", r"^ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$",
                         r.describe())
        self.assertRegex(r.out, r"(?m)^Compression: NONE$", r.describe())

    def test_configured_ciphers_and_groups(self):
        r = self.sclient("-servername", "a.example.com", "-tls1_2", listener="tuned")
        self.assertHandshake(r, "tuned 1.2")
        self.assertEqual(r.cipher, "ECDHE-ECDSA-CHACHA20-POLY1305", r.describe())
        r = self.sclient("-servername", "a.example.com", "-tls1_3", listener="tuned")
        self.assertHandshake(r, "tuned 1.3")
        self.assertEqual(r.cipher, "TLS_CHACHA20_POLY1305_SHA256", r.describe())
        self.assertRegex(r.out, r"Server Temp Key: ECDH, (secp384r1|P-384)", r.describe())
        r = self.sclient("-servername", "a.example.com", "-tls1_2", "-cipher",
                         "ECDHE-ECDSA-AES128-GCM-SHA256", listener="tuned")
        self.assertRefused(r, "a cipher outside the configured list")
        r = self.sclient("-servername", "a.example.com", "-groups", "X25519", listener="tuned")
        self.assertRefused(r, "a group outside the configured list")

    def test_renegotiation_refused(self):
        # "R" on s_client's stdin asks for a TLS 1.2 renegotiation; the gateway must refuse it.
        r = self.sclient("-servername", "a.example.com", "-tls1_2", stdin=b"R\n")
        self.assertHandshake(r, "TLS 1.2 before renegotiation")
        self.assertIn("RENEGOTIATING", r.err, "s_client did not try:\n" + r.describe())
        self.assertIn("no renegotiation", r.err, "renegotiation was not refused:\n"
                      + r.describe())

    # -- resumption -------------------------------------------------------------------------
    def check_resumption(self, version, listener="secure", want="Reused"):
        sess = os.path.join(self.pki.dir, "session-%s-%s.pem" % (listener, version))
        # The request makes s_client wait for the server's close, so the ticket (sent after
        # the handshake in TLS 1.3) has arrived before it writes -sess_out.
        r1 = self.sclient("-servername", "a.example.com", version, "-sess_out", sess,
                          "-ign_eof", stdin=http_get(), listener=listener)
        self.assertHandshake(r1, "first connection")
        self.assertEqual(r1.session_kind, "New", r1.describe())
        self.assertEqual(r1.http_status, 426, r1.describe())
        self.assertTrue(os.path.exists(sess), "s_client wrote no session file\n" + r1.describe())
        r2 = self.sclient("-servername", "a.example.com", version, "-sess_in", sess,
                          "-ign_eof", stdin=http_get(), listener=listener)
        self.assertHandshake(r2, "second connection")
        self.assertEqual(r2.session_kind, want, "second connection:\n" + r2.describe())
        self.assertEqual(r2.http_status, 426, r2.describe())
        return r1, r2

    def test_resumption_tls13(self):
        self.check_resumption("-tls1_3")

    def test_resumption_tls12(self):
        r1, r2 = self.check_resumption("-tls1_2")
        self.assertRegex(r1.out, r"TLS session ticket lifetime hint", "no ticket issued:\n"
                         + r1.describe())

    def test_resumption_off_when_tickets_disabled(self):
        # session_tickets: false and no session cache: nothing to resume with (TLS 1.3 sends
        # no ticket, so s_client has no session to save), or a session that is not resumed.
        for version in ("-tls1_3", "-tls1_2"):
            with self.subTest(version=version):
                sess = os.path.join(self.pki.dir, "session-notickets-%s.pem" % version)
                r1 = self.sclient("-servername", "a.example.com", version, "-sess_out", sess,
                                  "-ign_eof", stdin=http_get(), listener="notickets")
                self.assertHandshake(r1, "first connection")
                self.assertNotRegex(r1.out, r"TLS session ticket lifetime hint",
                                    "a ticket was issued with session_tickets: false\n"
                                    + r1.describe())
                if not os.path.exists(sess):
                    continue
                r2 = self.sclient("-servername", "a.example.com", version, "-sess_in", sess,
                                  "-ign_eof", stdin=http_get(), listener="notickets")
                self.assertHandshake(r2, "second connection")
                self.assertEqual(r2.session_kind, "New", "resumed without tickets:\n"
                                 + r2.describe())

    # -- tls: {} ----------------------------------------------------------------------------
    def test_self_signed_when_no_certificate_configured(self):
        r = self.sclient("-servername", "localhost", listener="selfsigned")
        self.assertHandshake(r, "self-signed")
        pem = os.path.join(self.pki.dir, "selfsigned-served.pem")
        with open(pem, "w") as f:
            f.write(r.peer_pem + "\n")
        text = tlsutil._run_openssl(["x509", "-in", pem, "-noout", "-ext", "subjectAltName"],
                                    self.pki.dir, "x509 -ext").decode()
        self.assertIn("DNS:localhost", text)
        self.assertIn("IP Address:127.0.0.1", text)
        # The subject and issuer are the same certificate: self-signed.
        issuer = re.search(r"(?m)^issuer=(.*)$", r.out)
        self.assertEqual(issuer and issuer.group(1).strip(), r.subject, r.describe())
        # ... and the start-up log says so.
        found = [tlsutil.msg(e) for e in tlsutil.events(self.gw)
                 if re.search(r"self-signed", tlsutil.msg(e), re.I)]
        self.assertTrue(found, "no log line says the certificate is self-signed; stderr:\n"
                        + self.gw.stderr_tail())


if __name__ == "__main__":
    unittest.main(verbosity=2)
