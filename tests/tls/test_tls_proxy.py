"""python3-websockets over wss:// through upgate, to a plain ws:// upstream and to a wss://
upstream that upgate verifies (`tls: {ca, server_name}`): messages up to 16 MiB echo exactly,
bytes right behind the head (same TLS record) arrive after the 101, the upstream gets the
configured SNI (none for an IP, whose IP SAN is then verified), an upstream whose certificate
does not match `server_name` (or is signed by a CA upgate does not trust, or not in the system
store) is a 502 whose reason is in the log, `verify: false` skips the check, upgate presents
its configured client certificate to an upstream that requires one, and 200 TLS sessions at
once each echo a few messages. A tcp route to OpenSSL's own s_server answers its 101 only
after a verified TLS handshake."""

import asyncio
import os
import socket
import ssl
import subprocess
import threading
import unittest

import websockets

import harness
from harness import GatewayTestCase, EchoUpstreamProcess

import tlsutil
from tlsutil import Pki, tls_listener, TlsEchoUpstream

SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 * 1024 * 1024]
CONCURRENT = 200
MESSAGES_EACH = 3


def text_payload(n):
    return ("0123456789abcdefghijklmnopqrstuvwxyz" * (n // 36 + 1))[:n]


class TlsProxyTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        pki = cls.pki = Pki(tlsutil.temp_dir(cls))
        cls.ca = pki.ca("edge-ca", "upgate edge CA")
        cls.edge = pki.leaf("edge", cls.ca, "a.example.com", dns=["a.example.com"])
        cls.up_ca = pki.ca("upstream-ca", "upgate upstream CA")
        cls.up_cert = pki.leaf("upstream", cls.up_ca, "up.example.com", dns=["up.example.com"])
        cls.unrelated_ca = pki.ca("unrelated-ca", "unrelated CA")
        cls.ip_cert = pki.leaf("upstream-ip", cls.up_ca, "127.0.0.1", ips=["127.0.0.1"])
        # upgate's own client certificate towards an upstream that requires one.
        cls.gw_client_ca = pki.ca("gateway-client-ca", "upgate as a client CA")
        cls.gw_client = pki.leaf("gateway-client", cls.gw_client_ca, "upgate-gateway",
                                 usage="client")

        cls.plain = cls.start_class_peer(TlsEchoUpstream(name="plain-echo"))
        cls.secure = cls.start_class_peer(TlsEchoUpstream(cls.up_cert, name="tls-echo"))
        cls.bulk = cls.start_class_peer(EchoUpstreamProcess())
        cls.by_ip = cls.start_class_peer(TlsEchoUpstream(cls.ip_cert, name="tls-echo-ip"))
        cls.mutual = cls.start_class_peer(TlsEchoUpstream(cls.up_cert, name="tls-echo-mtls",
                                                          client_ca=cls.gw_client_ca))
        up = cls.secure.addr
        upstreams = {
            "plain": {"endpoints": [cls.plain.addr]},
            "bulk": {"endpoints": [cls.bulk.addr]},
            "wss": {"endpoints": [up], "tls": {"ca": cls.up_ca.cert,
                                               "server_name": "up.example.com", "verify": True}},
            "wrongname": {"endpoints": [up], "tls": {"ca": cls.up_ca.cert,
                                                     "server_name": "other.example.com"}},
            "untrusted": {"endpoints": [up], "tls": {"ca": cls.unrelated_ca.cert,
                                                     "server_name": "up.example.com"}},
            "systemca": {"endpoints": [up], "tls": {"ca": "system",
                                                    "server_name": "up.example.com"}},
            "noverify": {"endpoints": [up], "tls": {"ca": cls.unrelated_ca.cert,
                                                    "server_name": "other.example.com",
                                                    "verify": False}},
            # No server_name: the endpoint's IP is what is verified (IP SAN).
            "byip": {"endpoints": [cls.by_ip.addr], "tls": {"ca": cls.up_ca.cert}},
            "byip_nosan": {"endpoints": [up], "tls": {"ca": cls.up_ca.cert}},
            "upmtls": {"endpoints": [cls.mutual.addr], "tls": {
                "ca": cls.up_ca.cert, "server_name": "up.example.com",
                "cert": cls.gw_client.cert, "key": cls.gw_client.key}},
            "upmtls_nocert": {"endpoints": [cls.mutual.addr], "tls": {
                "ca": cls.up_ca.cert, "server_name": "up.example.com"}},
        }
        routes = [{"name": n, "match": {"path_prefix": "/" + n + "/"}, "upstream": n}
                  for n in upstreams]
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams, routes, listeners=[tls_listener("secure", [cls.edge])],
            limits={"max_head_bytes": "16KiB", "max_headers": 100, "high_water": "1MiB"}))
        cls.client_ctx = tlsutil.client_context(cls.ca.cert)

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.plain.errors, [])
        self.assertEqual(self.secure.errors, [])

    # -- echo -------------------------------------------------------------------------------
    def echo_sizes(self, path):
        async def run():
            async with tlsutil.connect_wss(self.gw, path, self.client_ctx) as ws:
                for n in SIZES:
                    text = text_payload(n)
                    await ws.send(text)
                    got = await asyncio.wait_for(ws.recv(), 60)
                    self.assertIsInstance(got, str, "text message of %d bytes" % n)
                    self.assertEqual(len(got), n, "text message of %d bytes" % n)
                    self.assertTrue(got == text, "text message of %d bytes differs" % n)
                    data = os.urandom(n)
                    await ws.send(data)
                    got = await asyncio.wait_for(ws.recv(), 60)
                    self.assertIsInstance(got, bytes, "binary message of %d bytes" % n)
                    self.assertEqual(len(got), n, "binary message of %d bytes" % n)
                    self.assertTrue(got == data, "binary message of %d bytes differs" % n)
                # Several messages in flight at once keep their order.
                batch = [os.urandom(1000 + i) for i in range(50)]
                for m in batch:
                    await ws.send(m)
                for i, m in enumerate(batch):
                    self.assertTrue(await asyncio.wait_for(ws.recv(), 30) == m,
                                    "pipelined message %d differs" % i)

        self.run_async(run(), timeout=240)

    def test_wss_to_plain_upstream(self):
        self.echo_sizes("/plain/sizes")
        req = self.plain.request_for("/plain/sizes")
        self.assertIn("https", [v.lower() for v in harness.header_values(
            req["headers"], "X-Forwarded-Proto")], "X-Forwarded-Proto should say https")

    def test_wss_to_wss_upstream(self):
        self.echo_sizes("/wss/sizes")
        self.secure.request_for("/wss/sizes")
        self.assertIn("up.example.com", self.secure.server_names,
                      "upgate should send server_name as SNI to the upstream")

    def test_wss_upstream_verify_false(self):
        async def run():
            async with tlsutil.connect_wss(self.gw, "/noverify/x", self.client_ctx) as ws:
                await ws.send("unverified")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "unverified")

        self.run_async(run(), timeout=30)
        self.secure.request_for("/noverify/x")

    def test_bytes_after_the_head_in_the_same_tls_record(self):
        # The upgrade request and the first frame in one write (one TLS record): the frame
        # must reach the upstream after its 101, over a plain and over a TLS upstream.
        for path in ("/plain/pipelined", "/wss/pipelined"):
            with self.subTest(path=path):
                c = tlsutil.TlsRawClient(self.gw.addr("secure"), self.client_ctx)
                self.addCleanup(c.close)
                key = harness.ws_key()
                c.send(harness.ws_request(path, host="a.example.com", key=key)
                       + harness.encode_frame(harness.OP_TEXT, b"right behind the head"))
                resp = c.read_response()
                self.assertEqual(resp.status, 101, repr(resp))
                self.assertEqual(resp.header("Sec-WebSocket-Accept"), harness.accept_key(key))
                c.frames.feed(c.pending)
                self.assertEqual(c.recv_frame(),
                                 (True, harness.OP_TEXT, b"right behind the head"))

    def test_upstream_verified_by_ip_when_no_server_name(self):
        async def run():
            async with tlsutil.connect_wss(self.gw, "/byip/x", self.client_ctx) as ws:
                await ws.send("by ip")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "by ip")

        self.run_async(run(), timeout=30)
        self.by_ip.request_for("/byip/x")
        self.assertEqual(self.by_ip.server_names, [None] * len(self.by_ip.server_names),
                         "no SNI is sent for an IP address (RFC 6066 §3)")

    def test_upstream_without_ip_san_is_502_when_verified_by_ip(self):
        self.expect_502("/byip_nosan/x", [r"(?i)certificate verify failed",
                                          r"(?i)(IP address mismatch|mismatch)"])

    def test_upstream_client_certificate(self):
        async def run():
            async with tlsutil.connect_wss(self.gw, "/upmtls/x", self.client_ctx) as ws:
                await ws.send("with a client certificate")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10),
                                 "with a client certificate")

        self.run_async(run(), timeout=30)
        req = self.mutual.request_for("/upmtls/x")
        self.assertEqual(req["peer_cert"], self.gw_client.fingerprint,
                         "the upstream should see upgate's configured client certificate")

    def test_upstream_requiring_a_client_certificate_without_one_is_502(self):
        c = tlsutil.TlsRawClient(self.gw.addr("secure"), self.client_ctx)
        self.addCleanup(c.close)
        c.send(harness.ws_request("/upmtls_nocert/x", host="a.example.com"))
        resp = c.read_response()
        self.assertEqual(resp.status, 502, repr(resp))
        entry = self.gw.access_log_for_client(c.local)
        text = "\n".join(tlsutil.msg(e) for e in tlsutil.for_session(self.gw, entry["id"]))
        # Python's asyncio TLS server closes without sending an alert, so "closed" is all
        # upgate can know here.
        self.assertRegex(text, r"(?i)(alert|certificate|closed|eof)",
                         "the log does not say why:\n" + text)

    # -- upstream verification failures -----------------------------------------------------
    def expect_502(self, path, reason_patterns):
        before = self.secure.count()
        c = tlsutil.TlsRawClient(self.gw.addr("secure"), self.client_ctx)
        self.addCleanup(c.close)
        c.send(harness.ws_request(path, host="a.example.com"))
        resp = c.read_response()
        c.read_body(resp)
        self.assertEqual(resp.status, 502, "%s: %r" % (path, resp))
        self.assertIn("close", resp.tokens("Connection"), repr(resp))
        self.assertEqual(self.secure.count(), before,
                         "the upstream received a request over an unverified connection")
        entry = self.gw.access_log_for_client(c.local)
        self.assertEqual(entry.get("status"), 502, entry)
        lines = [tlsutil.msg(e) for e in tlsutil.wait_event(
            self.gw, lambda e: e.get("id") == entry["id"] and (
                "502" in tlsutil.msg(e) or "verif" in tlsutil.msg(e).lower()),
            what="log line for session %s" % entry["id"])]
        text = "\n".join(lines)
        for pattern in reason_patterns:
            self.assertRegex(text, pattern, "the log does not say why (session %s):\n%s"
                             % (entry["id"], "\n".join(tlsutil.msg(e) for e in
                                                       tlsutil.for_session(self.gw, entry["id"]))))
        return resp

    def test_upstream_name_mismatch_is_502(self):
        self.expect_502("/wrongname/x", [r"(?i)certificate verify failed",
                                         r"(?i)hostname mismatch"])

    def test_upstream_untrusted_ca_is_502(self):
        self.expect_502("/untrusted/x", [r"(?i)certificate verify failed",
                                         r"(?i)unable to get local issuer certificate"])

    def test_upstream_private_ca_not_in_system_store_is_502(self):
        self.expect_502("/systemca/x", [r"(?i)certificate verify failed"])

    # -- load -------------------------------------------------------------------------------
    def test_200_concurrent_tls_sessions(self):
        async def open_one(i):
            return await tlsutil.connect_wss(self.gw, "/bulk/%d" % i, self.client_ctx,
                                             open_timeout=60)

        async def exchange(i, ws):
            for k in range(MESSAGES_EACH):
                msg = "session %d message %d %s" % (i, k, "x" * (i * 13 % 4000))
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 60)
                if got != msg:
                    raise AssertionError("session %d message %d: got %r" % (i, k, got[:80]))

        def failures(results):
            return [(i, repr(r)) for i, r in enumerate(results) if isinstance(r, BaseException)]

        async def run():
            # All sessions are open at the same time before any of them talks.
            conns = await asyncio.gather(*(open_one(i) for i in range(CONCURRENT)),
                                         return_exceptions=True)
            problems = {"open": failures(conns)}
            live = [(i, ws) for i, ws in enumerate(conns) if not isinstance(ws, BaseException)]
            done = await asyncio.gather(*(exchange(i, ws) for i, ws in live),
                                        return_exceptions=True)
            problems["echo"] = [(live[k][0], e) for k, e in failures(done)]
            closed = await asyncio.gather(*(asyncio.wait_for(ws.close(), 20) for _, ws in live),
                                          return_exceptions=True)
            problems["close"] = [(live[k][0], e) for k, e in failures(closed)]
            return problems

        problems = self.run_async(run(), timeout=240)
        for phase in ("open", "echo", "close"):
            self.assertEqual(problems[phase][:5], [], "%s: %d of %d sessions failed (first 5)"
                             % (phase, len(problems[phase]), CONCURRENT))
        self.assertEqual(self.bulk.proc.poll(), None, "the bulk echo upstream died")



class OpensslReverseServer:
    """`openssl s_server -rev` (OpenSSL's own TLS server: each line comes back reversed) on a
    free loopback port, as the TLS upstream of a tcp route."""

    def __init__(self, cert):
        self.cert = cert
        self.proc = None
        self.addr = None

    def start(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", self.cert.cert,
             "-key", self.cert.key, "-rev", "-quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addr = ("127.0.0.1", port)

        def listening():
            try:
                socket.create_connection(self.addr, timeout=1).close()
                return True
            except OSError:
                return False
        harness.poll_until(listening, 10, interval=0.05, what="openssl s_server")
        return self

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait(5)


class TcpRouteTlsUpstreamTest(GatewayTestCase):
    """A tcp route to a TLS service: the 101 waits for a verified TLS handshake, so a
    certificate upgate does not trust is still a 502."""

    @classmethod
    def setUpClass(cls):
        pki = Pki(tlsutil.temp_dir(cls))
        ca = pki.ca("svc-ca", "upgate service CA")
        other = pki.ca("other-ca", "unrelated CA")
        cert = pki.leaf("svc", ca, "svc.example.com", dns=["svc.example.com"])
        cls.svc = cls.start_class_peer(OpensslReverseServer(cert))
        # A service that accepts TCP (the kernel does, from the backlog) and never answers.
        cls.silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cls.silent.bind(("127.0.0.1", 0))
        cls.silent.listen(8)
        cls.addClassCleanup(cls.silent.close)
        edge_ca = pki.ca("edge-ca", "upgate edge CA")
        cls.edge = pki.leaf("edge", edge_ca, "a.example.com", dns=["a.example.com"])
        cls.client_ctx = tlsutil.client_context(edge_ca.cert)
        tls = {"server_name": "svc.example.com"}
        cls.gw = cls.start_class_gateway(harness.make_config(
            listeners=[{"name": "public", "address": "127.0.0.1:0"},
                       tls_listener("secure", [cls.edge], record_offload=False)],
            upstreams={"svc": {"endpoints": [cls.svc.addr], "tls": dict(tls, ca=ca.cert)},
                       "svc-openssl-records": {"endpoints": [cls.svc.addr], "tls": dict(
                           tls, ca=ca.cert, record_offload=False)},
                       "untrusted": {"endpoints": [cls.svc.addr],
                                     "tls": dict(tls, ca=other.cert)},
                       "silent": {"endpoints": [cls.silent.getsockname()],
                                  "tls": dict(tls, ca=ca.cert), "handshake_timeout": "500ms"}},
            routes=[{"name": "svc", "match": {"path": "/svc"}, "kind": "tcp",
                     "upstream": "svc"},
                    {"name": "svc-openssl-records", "match": {"path": "/svc-openssl-records"},
                     "kind": "tcp", "upstream": "svc-openssl-records"},
                    {"name": "untrusted", "match": {"path": "/untrusted"}, "kind": "tcp",
                     "upstream": "untrusted"},
                    {"name": "silent", "match": {"path": "/silent"}, "kind": "tcp",
                     "upstream": "silent"}]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def test_lines_go_through_tls_and_back(self):
        async def run():
            async with websockets.connect(self.gw.url("/svc"), compression=None,
                                          ping_interval=None, open_timeout=10) as ws:
                await ws.send(b"hello upgate\n")
                got = b""
                while not got.endswith(b"\n"):
                    got += await asyncio.wait_for(ws.recv(), 10)
                return got
        self.assertEqual(self.run_async(run()), b"etagpu olleh\n")

    def test_tls_on_both_legs_with_openssl_records(self):
        # Both legs keep OpenSSL's record layer (record_offload: false): the upstream leg's last
        # handshake flight is written when its handshake completes, just before the 101 goes to
        # the client's TLS leg. The two must not mix (the loop shares one buffer for records on
        # their way out).
        for path in ("/svc-openssl-records", "/svc"):
            with self.subTest(path=path):
                async def run():
                    async with tlsutil.connect_wss(self.gw, path, self.client_ctx) as ws:
                        await ws.send(b"both legs\n")
                        got = b""
                        while not got.endswith(b"\n"):
                            got += await asyncio.wait_for(ws.recv(), 10)
                        return got
                self.assertEqual(self.run_async(run()), b"sgel htob\n")

    def test_an_untrusted_certificate_is_a_502_before_any_101(self):
        c = harness.RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(harness.ws_request("/untrusted"))
        self.assertEqual(c.read_response().status, 502)

    def test_a_silent_tls_service_is_a_504_after_handshake_timeout(self):
        c = harness.RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.send(harness.ws_request("/silent"))
        self.assertEqual(c.read_response().status, 504)
        entry = self.gw.access_log_for_client(c.sock.getsockname())
        self.assertEqual(entry["close"], "upstream TLS handshake not done within 500 ms", entry)


class CloseDelimitedTlsServer:
    """An HTTPS app (Python's ssl, a thread) that answers every request with an HTTP/1.0 body
    delimited by the end of the connection, "PART-ONE;", then ends the connection: with its
    close_notify for /clean, with a bare TCP FIN for /bare (what anyone on the path could send
    to cut a response short)."""

    def __init__(self, cert):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        self.errors = []

    def start(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = self.sock.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self):
        for _ in range(1000):
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw):
        raw.settimeout(10)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ")[1]
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nPART-ONE;")
            if path == b"/clean":
                try:
                    conn.unwrap()  # close_notify (then waits for the gateway's, bounded)
                except (OSError, ssl.SSLError):
                    pass
            conn.close() if path != b"/clean" else raw.close()
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(repr(exc))

    def stop(self):
        self.sock.close()


class CloseDelimitedTlsBodyTest(GatewayTestCase):
    """RFC 9112 §9.8: over TLS, a body delimited by the end of the connection is whole only when
    the close_notify came. Such a body goes to an HTTP/1.1 client chunked, so a cut one (no last
    chunk) can be told from a whole one."""

    @classmethod
    def setUpClass(cls):
        pki = Pki(tlsutil.temp_dir(cls))
        ca = pki.ca("app-ca", "upgate app CA")
        cls.app = cls.start_class_peer(CloseDelimitedTlsServer(
            pki.leaf("app", ca, "app.example.com", dns=["app.example.com"])))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"app": {"endpoints": [cls.app.addr],
                               "tls": {"ca": ca.cert, "server_name": "app.example.com"}}},
            routes=[{"name": "site", "match": {"path_prefix": "/"}, "kind": "http",
                     "upstream": "app"}]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def fetch(self, path):
        """The raw answer: up to the last chunk, or all there was until the connection ended."""
        with harness.RawClient(self.gw.addr()) as c:
            c.send(("GET %s HTTP/1.1\r\nHost: app.example.com\r\n\r\n" % path).encode())
            data = b""
            c.sock.settimeout(10)
            for _ in range(1000):
                if data.endswith(b"\r\n0\r\n\r\n"):
                    break
                try:
                    chunk = c.sock.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    break
                if not chunk:
                    break
                data += chunk
            return data, c.local

    def test_a_body_ended_by_close_notify_is_whole(self):
        data, _ = self.fetch("/clean")
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\n9\r\nPART-ONE;\r\n0\r\n\r\n"), data)

    def test_a_body_ended_by_a_bare_fin_is_cut_short(self):
        data, local = self.fetch("/bare")
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
        self.assertIn(b"PART-ONE;", data)
        self.assertNotIn(b"\r\n0\r\n\r\n", data, "the last chunk must not come: %r" % data)
        entry = self.gw.access_log_for_client(local)
        self.assertIn("without close_notify", entry.get("close", ""), entry)


if __name__ == "__main__":
    unittest.main(verbosity=2)
