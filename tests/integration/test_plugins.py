"""Plugins through the real binary: the built-ins on real routes, two external plugins built from
plugins/examples/ with their Makefiles, a probe plugin written here, and the loader's and the
config checker's errors.

- jwt (HS256 from the fixture JWKS; RS256, ES256, ES384, EdDSA signed with `openssl`): 101 with a
  good token from the Authorization header, a query parameter, a cookie or Sec-WebSocket-Protocol,
  on a websocket and a channel route (and its Server-Sent Events door); 401 with an RFC 6750
  WWW-Authenticate for a missing, expired, not-yet-valid, wrong-audience, wrong-issuer, exp-less,
  alg-none, tampered, wrongly-keyed or algorithm-confused token, and the upstream never hears of
  those. Connection-lifetime auth: a channel subscriber gets a 1008 close frame at exp, a
  passthrough tunnel is cut at the TCP level, also when exp passed during the upstream handshake.
  SIGHUP re-reads the JWKS file. A browser offering the token as a subprotocol gets one
  of its subprotocols selected.
- api_key (hashed key file): header and query keys, 401 + WWW-Authenticate: ApiKey, the key is
  stripped before the upstream, the identity reaches the access log and the upstream.
- origin (403), ip_filter (deny / allow / trusted proxies, also as a global plugin), rate_limit
  (429 + Retry-After, per client IP and per identity), route_by_header (header, cookie, query,
  weighted split; which upstream answered; an unknown upstream is a 500).
- External: header_gate.so (C) and path_router.so (C++) loaded through `path:` relative to the
  config file, alone and chained. A probe plugin compiled here checks the host side of the ABI:
  invalid results -> 500 + a log line, reject headers filtered and the body sent as given,
  PAUSE/resume and the 503 for a pause never resumed, set_upstream_header's refusals, close()
  before the 101, on_close once per session; api_key on an http route judges every request of a
  keep-alive connection. A client naming plugin-set headers in its Connection header does not
  keep them from the upstream (http and websocket routes).
- Loader fixtures (wrong ABI, missing entry, short struct, undefined symbol, missing file, not an
  ELF file) make `upgate -t` and a real start exit 2 naming the entry, the path and the reason; a
  plugin's config error gives file:line:col of its entry, all errors at once.

Tokens are made here with hmac/hashlib/base64/json; asymmetric signatures come from the `openssl`
command and the test-only keys in tests/fixtures/plugin/ (those tests are skipped without it).
Plugins are compiled with the system cc/c++ against plugins/include into temp dirs.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import bridge_util
import harness
from harness import (GatewayTestCase, EchoUpstream, RawClient, accept_key, header_values,
                     ws_key, ws_request)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "plugin")
PLUGIN_INCLUDE = os.path.join(ROOT, "plugins", "include")
EXAMPLES = os.path.join(ROOT, "plugins", "examples")
JWKS = os.path.join(FIXTURES, "jwks.json")
API_KEYS = os.path.join(FIXTURES, "api_keys.txt")
BUILD_TIMEOUT = 120
CHECK_TIMEOUT = 20

ORIGINS = ["https://app.example.com", "https://*.example.com", "http://localhost:*"]


# ---------------------------------------------------------------------------------------------
# JSON Web Tokens, made with the standard library (and `openssl` for the asymmetric algorithms)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwks_key(kid):
    with open(JWKS) as f:
        for k in json.load(f)["keys"]:
            if k.get("kid") == kid:
                return k
    raise AssertionError("no key %r in %s" % (kid, JWKS))


HS_SECRET = b64url_decode(_jwks_key("hs1")["k"])
with open(os.path.join(FIXTURES, "hs256.secret"), "rb") as _f:
    assert _f.read().rstrip(b"\r\n") == HS_SECRET, "hs256.secret and the JWKS oct key differ"

HAVE_OPENSSL = shutil.which("openssl") is not None


def _der_ecdsa_to_raw(der, size):
    """DER ECDSA-Sig-Value (SEQUENCE of INTEGER r, s) -> r || s, each `size` bytes (RFC 7518)."""

    def read_len(buf, pos):
        n = buf[pos]
        if n < 0x80:
            return n, pos + 1
        count = n & 0x7F
        return int.from_bytes(buf[pos + 1:pos + 1 + count], "big"), pos + 1 + count

    if der[0] != 0x30:
        raise AssertionError("not a DER sequence: %r" % der[:8])
    _, pos = read_len(der, 1)
    out = b""
    for _ in range(2):
        if der[pos] != 0x02:
            raise AssertionError("not a DER integer in %r" % der)
        n, pos = read_len(der, pos + 1)
        value = int.from_bytes(der[pos:pos + n], "big")
        pos += n
        out += value.to_bytes(size, "big")
    return out


def openssl_sign(alg, key_file, data):
    """Signature bytes of `data` in JWS form, from the `openssl` command."""
    key = os.path.join(FIXTURES, key_file)
    if alg == "EdDSA":
        with tempfile.NamedTemporaryFile(prefix="upgate-jwt-") as f:
            f.write(data)
            f.flush()
            r = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key,
                                "-in", f.name], capture_output=True, timeout=CHECK_TIMEOUT)
    else:
        digest = {"RS256": "-sha256", "ES256": "-sha256", "ES384": "-sha384"}[alg]
        r = subprocess.run(["openssl", "dgst", digest, "-sign", key], input=data,
                           capture_output=True, timeout=CHECK_TIMEOUT)
    if r.returncode != 0:
        raise AssertionError("openssl failed for %s: %s" % (alg, r.stderr.decode(errors="replace")))
    sig = r.stdout
    if alg.startswith("ES"):
        # Each half is the size of the key's curve (P-384 keys also sign "ES256" misuse cases).
        sig = _der_ecdsa_to_raw(sig, 48 if "384" in key_file else 32)
    return sig


def make_jwt(claims, alg="HS256", kid=None, secret=HS_SECRET, key_file=None, header=None):
    """A compact JWS. `header` replaces the default header entirely when given."""
    if header is None:
        header = {"alg": alg, "typ": "JWT"}
        if kid:
            header["kid"] = kid
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(claims).encode())).encode("ascii")
    if alg == "none":
        sig = b""
    elif alg.startswith("HS"):
        sig = hmac.new(secret, signing_input, getattr(hashlib, "sha" + alg[2:])).digest()
    else:
        sig = openssl_sign(alg, key_file, signing_input)
    return signing_input.decode("ascii") + "." + b64url(sig)


def claims(**kw):
    now = int(time.time())
    out = {"sub": "alice", "aud": "chat", "iss": "https://auth.test", "iat": now,
           "exp": now + 600}
    for k, v in kw.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def jwt_config(**extra):
    cfg = {"jwks_file": JWKS, "audience": "chat", "issuer": "https://auth.test",
           "leeway": "0s",
           "token_from": ["header", "query:access_token", "cookie:token", "protocol"]}
    cfg.update(extra)
    return cfg


def bearer(token):
    return [("Authorization", "Bearer " + token)]


# ---------------------------------------------------------------------------------------------
# Handshakes


def attempt(addr, path, headers=(), source=harness.LOOPBACK, echo=True):
    """One upgrade request. On 101 the tunnel is checked with one echoed message (unless
    echo=False, e.g. on channel routes); otherwise the body is read. Returns the Response,
    with .local = the client's address."""
    with RawClient(addr, source=source) as c:
        key = ws_key()
        c.send(ws_request(path, key=key, extra=list(headers)))
        resp = c.read_response()
        resp.local = c.local
        if resp.status == 101:
            if resp.header("Sec-WebSocket-Accept") != accept_key(key):
                raise AssertionError("bad Sec-WebSocket-Accept in %r" % resp)
            if echo:
                c.frames.feed(c.pending)
                c.pending = b""
                c.send_frame(harness.OP_TEXT, b"through " + path.encode())
                frame = c.recv_frame()
                if frame[2] != b"through " + path.encode():
                    raise AssertionError("echo through %s: got %r" % (path, frame))
            c.send_frame(harness.OP_CLOSE, harness.close_payload(1000))
        else:
            c.read_body(resp)
        return resp


def upstream_saw(echo, path):
    return [r for r in echo.requests if r["path"] == path]


def build_dir():
    return tempfile.mkdtemp(prefix="upgate-it-plugins-")


def compile_so(source, out):
    """cc -shared -fPIC against plugins/include; raises with the compiler's output."""
    cmd = ["cc", "-std=c99", "-shared", "-fPIC", "-I", PLUGIN_INCLUDE, "-o", out, source]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if r.returncode != 0:
        raise AssertionError("%s failed:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return out


_examples = {}


def build_examples():
    """plugins/examples/ built once per run with their own Makefiles into a temp dir (removed by
    tearDownModule). Returns that dir, holding header_gate.so and path_router.so."""
    if "dir" not in _examples:
        out = build_dir()
        _examples["dir"] = out
        for example, so in [("c_plugin", "header_gate.so"), ("cpp_plugin", "path_router.so")]:
            # The source tree's header, whatever pkg-config may know about an installed one.
            cmd = ["make", "--no-print-directory", "-C", os.path.join(EXAMPLES, example),
                   "OUT=" + os.path.join(out, so), "PLUGIN_CFLAGS=-I" + PLUGIN_INCLUDE]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            if r.returncode != 0:
                raise AssertionError("%s failed:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return _examples["dir"]


def tearDownModule():
    if "dir" in _examples:
        shutil.rmtree(_examples.pop("dir"), ignore_errors=True)


def run_check(config_path):
    return subprocess.run([harness.upgate_bin(), "-t", "-c", config_path], capture_output=True,
                          text=True, timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL)


def run_start(config_path, ready_path):
    """A real start that is expected to fail: bounded by CHECK_TIMEOUT (killed after it)."""
    try:
        return subprocess.run([harness.upgate_bin(), "-c", config_path, "--ready-file", ready_path],
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("upgate kept running for %ds with a broken plugin config; stderr:\n%s"
                             % (CHECK_TIMEOUT, exc.stderr))


# A config with one route; the test appends that route's plugin entries (YAML text).
CHECK_CONFIG_HEAD = """\
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  chat:
    endpoints: [127.0.0.1:9]
routes:
  - name: chat
    match: { path_prefix: /chat }
    upstream: chat
    plugins:
"""


def line_of(text, needle):
    """1-based line number of the first line containing `needle`."""
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError("%r not in config" % needle)


# ---------------------------------------------------------------------------------------------
# jwt


SLOW_101 = 3.5  # seconds the slow upstream takes to answer the upgrade


def slow_accept(conn, upstream):
    """Upstream that answers the upgrade only after SLOW_101 seconds, then holds the tunnel
    open until the gateway closes it."""
    head, _ = harness.read_head(conn)
    upstream.event("head", head)
    if upstream.stopping.wait(SLOW_101):
        return
    _, headers = harness.parse_head(head)
    key = header_values(headers, "Sec-WebSocket-Key")[0]
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                  % accept_key(key)).encode())
    upstream.event("sent-101")
    if harness.wait_peer_close(conn, 30, upstream.stopping):
        upstream.event("peer-closed")


class JwtTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream(name="echo"))
        cls.slow = cls.start_class_peer(harness.RawUpstream(slow_accept, name="slow"))
        # Channel routes need the publish API (admin:), which bridge_util's start checks.
        cls.gw = bridge_util.start_class_gateway(cls, harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]},
                       "slow": {"endpoints": [cls.slow.addr]}},
            admin={"address": "127.0.0.1:0"},
            # The slow upstream never answers a close frame: timeouts.close ends its sessions.
            timeouts={"close": "1s"},
            routes=[
                {"name": "slow", "match": {"path_prefix": "/slow/"}, "upstream": "slow",
                 "plugins": [{"name": "jwt", "config": jwt_config()}]},
                {"name": "ws", "match": {"path_prefix": "/ws/"}, "upstream": "chat",
                 "plugins": [{"name": "jwt", "config": jwt_config()}]},
                {"name": "lenient", "match": {"path_prefix": "/lenient/"}, "upstream": "chat",
                 "plugins": [{"name": "jwt",
                              "config": jwt_config(leeway="60s", require_exp=False,
                                                   token_from=["header"])}]},
                {"name": "news", "match": {"path_prefix": "/news/"}, "kind": "channel",
                 "channel": "{path.1}",
                 "plugins": [{"name": "jwt", "config": jwt_config()}]},
            ]))

    def setUp(self):
        self.n = 0

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.echo.errors + self.slow.errors, [])

    def path(self, prefix="/ws/", tag="t"):
        self.n += 1
        return "%s%s-%s-%d" % (prefix, self._testMethodName, tag, self.n)

    def assert_admitted(self, path, headers, echo=True):
        resp = attempt(self.gw.addr(), path, headers, echo=echo)
        self.assertEqual(resp.status, 101, "%s with %r: %r" % (path, headers, resp))
        return resp

    def assert_401(self, path, headers, invalid=True):
        resp = attempt(self.gw.addr(), path, headers)
        self.assertEqual(resp.status, 401, "%s with %r: %r" % (path, headers, resp))
        challenge = resp.header("WWW-Authenticate")
        self.assertIsNotNone(challenge, "401 without WWW-Authenticate: %r" % resp)
        self.assertRegex(challenge, r'^Bearer realm="upgate"', resp)
        if invalid:
            # RFC 6750 §3.1: a token was presented and refused -> error="invalid_token".
            self.assertIn('error="invalid_token"', challenge, resp)
        else:
            # No credentials at all -> no error code (RFC 6750 §3.1).
            self.assertNotIn("error=", challenge, resp)
        self.assertIn("close", resp.tokens("Connection"), resp)
        return resp

    def assert_upstream_never_saw(self, paths):
        # Plugins decide before anything connects: a refused handshake never reaches the app.
        # The admitted ones (sent after the refused) are echoed, so the upstream is caught up.
        for p in paths:
            self.assertEqual(upstream_saw(self.echo, p), [], "the upstream saw refused %s" % p)

    # -- good tokens ---------------------------------------------------------------------------

    def test_good_hs256_from_each_source(self):
        token = make_jwt(claims(), kid="hs1")
        cases = [
            ("header", bearer(token), ""),
            ("header-lowercase-scheme", [("Authorization", "bearer " + token)], ""),
            ("query", [], "?room=1&access_token=" + token),
            ("cookie", [("Cookie", "theme=dark; token=" + token)], ""),
            ("protocol", [("Sec-WebSocket-Protocol", "chat.v1, " + token)], ""),
        ]
        for tag, headers, query in cases:
            with self.subTest(source=tag):
                path = self.path(tag=tag) + query
                self.assert_admitted(path, headers)
                self.assertEqual(len(upstream_saw(self.echo, path)), 1, path)

    def test_good_token_without_kid(self):
        self.assert_admitted(self.path(), bearer(make_jwt(claims())))

    def test_audience_list_and_leeway(self):
        now = int(time.time())
        self.assert_admitted(self.path(), bearer(make_jwt(claims(aud=["other", "chat"]))))
        # leeway 60s on the lenient route: expired 10 s ago, or valid in 10 s, is still fine.
        self.assert_admitted(self.path("/lenient/", "exp"), bearer(make_jwt(claims(exp=now - 10))))
        self.assert_admitted(self.path("/lenient/", "nbf"), bearer(make_jwt(claims(nbf=now + 10))))
        # require_exp: false there.
        self.assert_admitted(self.path("/lenient/", "noexp"), bearer(make_jwt(claims(exp=None))))

    @unittest.skipUnless(HAVE_OPENSSL, "needs the openssl command")
    def test_asymmetric_algorithms(self):
        cases = [("RS256", "rsa1", "rsa.key.pem"), ("ES256", "ec1", "ec256.key.pem"),
                 ("ES384", "ec384", "ec384.key.pem"), ("EdDSA", "ed1", "ed25519.key.pem")]
        for alg, kid, key in cases:
            with self.subTest(alg=alg):
                self.assert_admitted(self.path(tag=alg),
                                     bearer(make_jwt(claims(), alg=alg, kid=kid, key_file=key)))
                # Without a kid every key that fits the alg is tried.
                self.assert_admitted(self.path(tag=alg + "-nokid"),
                                     bearer(make_jwt(claims(), alg=alg, key_file=key)))

    def test_channel_route_admits_good_token(self):
        self.assert_admitted(self.path("/news/", "good"), bearer(make_jwt(claims())), echo=False)
        self.assert_admitted(self.path("/news/", "query") + "?access_token=" +
                             make_jwt(claims()), [], echo=False)

    def test_protocol_token_on_channel_route_selects_a_subprotocol(self):
        """`token_from: protocol` exists for browsers, which cannot set headers on WebSockets. A
        browser that offered subprotocols fails the connection when the 101 selects none (WHATWG
        WebSockets: "if protocols is not empty and ... `Sec-WebSocket-Protocol` ... results in
        null ... fail the WebSocket connection"). On a channel route upgate writes the 101
        itself, so it has to select one of the offered entries."""
        token = make_jwt(claims())
        offered = ["upgate.jwt", token]
        resp = self.assert_admitted(self.path("/news/", "protocol"),
                                    [("Sec-WebSocket-Protocol", ", ".join(offered))], echo=False)
        chosen = resp.header("Sec-WebSocket-Protocol")
        self.assertIsNotNone(chosen, "the 101 selects no subprotocol, so a browser that offered "
                                     "%r fails the connection: %r" % (offered, resp))
        self.assertIn(chosen, offered, resp)

    def test_server_sent_events_readers_are_judged_too(self):
        """A channel route also serves GET + Accept: text/event-stream: the same plugins guard
        that door."""
        def sse_get(path, headers=()):
            with RawClient(self.gw.addr()) as c:
                lines = ["GET %s HTTP/1.1" % path, "Host: localhost",
                         "Accept: text/event-stream"] + ["%s: %s" % h for h in headers]
                c.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                return c.read_response()

        resp = sse_get("/news/sse-anonymous")
        self.assertEqual(resp.status, 401, resp)
        self.assertIsNotNone(resp.header("WWW-Authenticate"), resp)
        resp = sse_get("/news/sse-expired",
                       bearer(make_jwt(claims(exp=int(time.time()) - 60))))
        self.assertEqual(resp.status, 401, resp)
        resp = sse_get("/news/sse-good", bearer(make_jwt(claims())))
        self.assertEqual(resp.status, 200, resp)
        self.assertIn("text/event-stream", resp.header("Content-Type") or "", resp)

    # -- bad tokens ----------------------------------------------------------------------------

    def test_missing_token(self):
        refused = []
        for tag, headers in [("none", []),
                             ("basic", [("Authorization", "Basic YWxpY2U6cHc=")]),
                             ("empty-query", []),
                             ("other-protocol", [("Sec-WebSocket-Protocol", "chat.v1")])]:
            with self.subTest(case=tag):
                path = self.path(tag=tag) + ("?access_token=" if tag == "empty-query" else "")
                self.assert_401(path, headers, invalid=False)
                refused.append(path)
        self.assert_admitted(self.path(), bearer(make_jwt(claims())))
        self.assert_upstream_never_saw(refused)

    def test_invalid_tokens_get_401(self):
        now = int(time.time())
        good = make_jwt(claims())
        head, payload, sig = good.split(".")
        forged_payload = b64url(json.dumps(claims(sub="mallory")).encode())
        flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
        with open(os.path.join(FIXTURES, "rsa.pub.pem"), "rb") as f:
            rsa_public_pem = f.read()
        cases = [
            ("expired", make_jwt(claims(exp=now - 3600))),
            ("expired-just-now", make_jwt(claims(exp=now - 2))),
            ("not-yet-valid", make_jwt(claims(nbf=now + 3600))),
            ("wrong-audience", make_jwt(claims(aud="billing"))),
            ("no-audience", make_jwt(claims(aud=None))),
            ("wrong-issuer", make_jwt(claims(iss="https://evil.test"))),
            ("no-exp", make_jwt(claims(exp=None))),
            ("no-sub", make_jwt(claims(sub=None))),
            ("alg-none", make_jwt(claims(), alg="none")),
            ("alg-None", make_jwt(claims(), header={"alg": "None", "typ": "JWT"}, alg="none")),
            ("tampered-payload", head + "." + forged_payload + "." + sig),
            ("tampered-signature", head + "." + payload + "." + flipped),
            ("stripped-signature", head + "." + payload + "."),
            ("wrong-secret", make_jwt(claims(), secret=b"another-secret-of-at-least-32-bytes!!")),
            # Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
            ("rsa-key-as-hmac-secret", make_jwt(claims(), kid="rsa1", secret=rsa_public_pem)),
            ("unknown-kid", make_jwt(claims(), kid="nope")),
            ("garbage", "not.a.jwt"),
            ("two-parts", head + "." + payload),
        ]
        refused = []
        for tag, token in cases:
            with self.subTest(case=tag):
                path = self.path(tag=tag)
                self.assert_401(path, bearer(token))
                refused.append(path)
        # The same refusals hold for the other token sources.
        expired = make_jwt(claims(exp=now - 3600))
        for tag, headers, query in [("query", [], "?access_token=" + expired),
                                    ("cookie", [("Cookie", "token=" + expired)], ""),
                                    ("protocol", [("Sec-WebSocket-Protocol", expired)], "")]:
            with self.subTest(source=tag):
                path = self.path(tag="expired-" + tag) + query
                self.assert_401(path, headers)
                refused.append(path)
        self.assert_admitted(self.path(), bearer(good))
        self.assert_upstream_never_saw(refused)

    @unittest.skipUnless(HAVE_OPENSSL, "needs the openssl command")
    def test_asymmetric_misuse(self):
        # An ES256 token signed with the P-384 key, and an RS256 token claiming the EC key's kid.
        es_by_p384 = make_jwt(claims(), alg="ES256", kid="ec1", key_file="ec384.key.pem")
        self.assert_401(self.path(tag="es-wrong-curve"), bearer(es_by_p384))
        self.assert_401(self.path(tag="rs-kid-mismatch"),
                        bearer(make_jwt(claims(), alg="RS256", kid="ec1", key_file="rsa.key.pem")))
        # The encryption-only JWK (use: enc) must not verify signatures.
        self.assert_401(self.path(tag="enc-key"),
                        bearer(make_jwt(claims(), alg="RS256", kid="enc1", key_file="rsa.key.pem")))

    def test_channel_route_refuses_bad_tokens(self):
        now = int(time.time())
        self.assert_401(self.path("/news/", "missing"), [], invalid=False)
        self.assert_401(self.path("/news/", "expired"), bearer(make_jwt(claims(exp=now - 60))))
        self.assert_401(self.path("/news/", "aud"), bearer(make_jwt(claims(aud="billing"))))

    # -- connection-lifetime auth --------------------------------------------------------------

    def test_session_closed_when_token_expires(self):
        """At exp a channel subscriber and a passthrough tunnel both get a 1008 close frame (the
        tunnel's is placed between frames, on both legs); their replies end the sessions."""
        exp = int(time.time()) + 3
        token = make_jwt(claims(exp=exp))
        sub = RawClient(self.gw.addr())
        tunnel = RawClient(self.gw.addr())
        self.addCleanup(sub.close)
        self.addCleanup(tunnel.close)
        sub.handshake("/news/expiring", extra=bearer(token))
        tunnel_path = "/ws/expiring-tunnel"
        tunnel.handshake(tunnel_path, extra=bearer(token))
        tunnel.send_frame(harness.OP_TEXT, b"before expiry")
        self.assertEqual(tunnel.recv_frame()[2], b"before expiry")

        fin, opcode, payload = sub.recv_frame(timeout=exp - time.time() + 5)
        closed_at = time.time()
        self.assertEqual(opcode, harness.OP_CLOSE, (fin, opcode, payload))
        self.assertGreaterEqual(len(payload), 2, payload)
        code = struct.unpack("!H", payload[:2])[0]
        self.assertEqual(code, 1008, "close payload %r" % payload)
        self.assertGreaterEqual(closed_at, exp - 0.2, "closed %.2fs before exp" % (exp - closed_at))
        self.assertLess(closed_at, exp + 3, "closed %.2fs after exp" % (closed_at - exp))
        # The subscriber answers the close; the gateway then ends the connection.
        sub.send_frame(harness.OP_CLOSE, payload[:2])
        _, how = sub.read_until_closed(5)
        self.assertIn(how, ("eof", "reset"))

        fin, opcode, payload = tunnel.recv_frame(timeout=max(0.5, exp + 3 - time.time()))
        self.assertGreaterEqual(time.time(), exp - 0.2)
        self.assertEqual(opcode, harness.OP_CLOSE, (fin, opcode, payload))
        self.assertEqual(struct.unpack("!H", payload[:2])[0], 1008, payload)
        tunnel.send_frame(harness.OP_CLOSE, payload[:2])
        data, how = tunnel.read_until_closed(3)
        self.assertIn(how, ("eof", "reset"), "tunnel still open after the close handshake")
        # The upstream side of the tunnel is ended too.
        self.echo.wait_close_for(tunnel_path, timeout=5)

    def test_sse_reader_closed_when_token_expires(self):
        """An SSE reader is a request that lives on: at exp its stream ends too."""
        exp = int(time.time()) + 2
        with RawClient(self.gw.addr()) as c:
            lines = ["GET /news/sse-expiring HTTP/1.1", "Host: localhost",
                     "Accept: text/event-stream"] + ["%s: %s" % h for h in
                                                     bearer(make_jwt(claims(exp=exp)))]
            c.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
            _, how = c.read_until_closed(exp - time.time() + 5)
            closed_at = time.time()
            self.assertIn(how, ("eof", "reset"), "the SSE stream outlived its token")
            self.assertGreaterEqual(closed_at, exp - 0.2)
            entry = self.gw.access_log_for_client(c.local)
        self.assertIn("token expired", entry.get("close", ""), entry)

    def test_token_expiring_during_the_upstream_handshake(self):
        """The token expires while the upstream is still answering the upgrade (a slow app, or
        a PAUSEd plugin later in the chain). host->close refuses to act before the 101, so the
        expiry must still end the session once it is established: an expired credential must not
        buy an endless session."""
        exp = int(time.time()) + 2          # valid now; expires before the upstream's 101
        with RawClient(self.gw.addr()) as c:
            c.send(ws_request("/slow/expiring", extra=bearer(make_jwt(claims(exp=exp)))))
            resp = c.read_response(timeout=SLOW_101 + 5)
            if resp.status != 101:
                return  # refusing once the token has expired is fine too
            self.assertGreater(time.time(), exp, "the 101 came before exp: the test needs a "
                                                 "slower upstream")
            # The close frame may have come in the same read as the 101.
            c.frames.feed(c.pending)
            c.pending = b""
            fin, opcode, payload = c.recv_frame(timeout=max(1.0, exp + 3 - time.time()))
            self.assertEqual(opcode, harness.OP_CLOSE,
                             "session admitted with a token that expired at %d got %r instead of "
                             "a close frame" % (exp, (fin, opcode, payload)))
            self.assertEqual(struct.unpack("!H", payload[:2])[0], 1008, payload)
            c.send_frame(harness.OP_CLOSE, payload[:2])
            _, how = c.read_until_closed(timeout=3)
            self.assertIn(how, ("eof", "reset"), "still open after the close handshake")

    def test_no_timer_beyond_a_long_lived_token(self):
        # A token valid for 10 minutes keeps its session (sanity check for the test above).
        with RawClient(self.gw.addr()) as c:
            c.handshake(self.path(tag="long"), extra=bearer(make_jwt(claims())))
            for i in range(3):
                c.send_frame(harness.OP_TEXT, b"%d" % i)
                self.assertEqual(c.recv_frame()[2], b"%d" % i)


class JwksReloadTest(GatewayTestCase):
    """jwt keys come "from PEM files or a JWKS file (reloaded on SIGHUP)": key rotation
    at the identity provider must not need a restart."""

    def test_sighup_rereads_the_jwks_file(self):
        echo = self.start_peer(EchoUpstream(name="echo"))
        keys_dir = build_dir()
        self.addCleanup(shutil.rmtree, keys_dir, True)
        jwks_path = os.path.join(keys_dir, "jwks.json")
        new_secret = b"the-rotated-hmac-secret-of-32-bytes-or-more"
        old_key = _jwks_key("hs1")
        new_key = {"kty": "oct", "kid": "hs2", "alg": "HS256", "k": b64url(new_secret)}

        def write_jwks(keys):
            tmp = jwks_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"keys": keys}, f)
            os.replace(tmp, jwks_path)

        write_jwks([old_key])
        gw = self.start_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [echo.addr]}},
            routes=[{"name": "ws", "match": {"path_prefix": "/ws/"}, "upstream": "chat",
                     "plugins": [{"name": "jwt", "config": jwt_config(jwks_file=jwks_path)}]}]))
        old_token = bearer(make_jwt(claims(), kid="hs1"))
        new_token = bearer(make_jwt(claims(), kid="hs2", secret=new_secret))
        self.assertEqual(attempt(gw.addr(), "/ws/old", old_token).status, 101)
        self.assertEqual(attempt(gw.addr(), "/ws/new-before", new_token).status, 401)

        # Rotation: the provider publishes the new key and retires the old one.
        write_jwks([new_key])
        gw.signal(signal.SIGHUP)
        try:
            harness.poll_until(lambda: attempt(gw.addr(), "/ws/new", new_token).status == 101,
                               5, interval=0.1, what="the rotated key to be accepted")
        except TimeoutError:
            said = [e.get("msg") for e in bridge_util.gateway_events(gw)
                    if "SIGHUP" in e.get("msg", "") or "reload" in e.get("msg", "")]
            self.fail("5 s after SIGHUP a token signed with the new JWKS key is still refused "
                      "(SIGHUP log lines: %r)" % said)
        self.assertEqual(attempt(gw.addr(), "/ws/old-after", old_token).status, 401)
        # A broken file on the next SIGHUP keeps the keys in use.
        with open(jwks_path, "w") as f:
            f.write("{not json")
        gw.signal(signal.SIGHUP)
        time.sleep(0.5)  # nothing observable to wait for: the old keys simply stay
        self.assertGatewayAlive(gw)
        self.assertEqual(attempt(gw.addr(), "/ws/new-after-broken", new_token).status, 101)


# ---------------------------------------------------------------------------------------------
# api_key, origin, ip_filter (also global), rate_limit


class AccessTest(GatewayTestCase):
    RATE = 1      # handshakes per second per client IP, whole process
    BURST = 2

    @classmethod
    def setUpClass(cls):
        cls.echo = cls.start_class_peer(EchoUpstream(name="echo"))
        route = lambda name, plugins: {"name": name, "match": {"path_prefix": "/%s/" % name},
                                       "upstream": "chat", "plugins": plugins}
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]}},
            plugins=[{"name": "ip_filter", "config": {"deny": ["127.0.0.3"]}}],
            routes=[
                route("key", [{"name": "api_key",
                               "config": {"keys_file": API_KEYS, "query": "api_key"}}]),
                route("origin", [{"name": "origin", "config": {"allow": ORIGINS}}]),
                route("strict-origin", [{"name": "origin",
                                         "config": {"allow": ORIGINS, "allow_missing": False}}]),
                route("deny", [{"name": "ip_filter", "config": {"deny": ["127.0.0.0/8"]}}]),
                route("allow", [{"name": "ip_filter", "config": {"allow": ["127.0.0.1/32"]}}]),
                route("proxied", [{"name": "ip_filter",
                                   "config": {"trusted_proxies": ["127.0.0.1"],
                                              "deny": ["203.0.113.0/24"]}}]),
                route("rl", [{"name": "rate_limit",
                              "config": {"rate": cls.RATE, "burst": cls.BURST}}]),
                route("keyrl", [{"name": "api_key", "config": {"keys_file": API_KEYS}},
                                {"name": "rate_limit",
                                 "config": {"rate": cls.RATE, "burst": cls.BURST,
                                            "key": "identity"}}]),
                route("open", []),
                dict(route("msgrl", [{"name": "rate_limit",
                                      "config": {"messages": {"rate": 0.5, "burst": 3}}}]),
                     mode="frames"),
            ]))

    def setUp(self):
        self.n = 0

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.echo.errors, [])

    def path(self, route, tag="t"):
        self.n += 1
        return "/%s/%s-%s-%d" % (route, self._testMethodName, tag, self.n)

    def status(self, route, headers=(), source=harness.LOOPBACK, query=""):
        path = self.path(route) + query
        resp = attempt(self.gw.addr(), path, headers, source=source)
        resp.path = path
        return resp

    # -- api_key -------------------------------------------------------------------------------

    def test_api_key_good_keys(self):
        for tag, headers, query in [("alice-header", [("X-API-Key", "key-alice")], ""),
                                    ("bob-header", [("x-api-key", "key-bob")], ""),
                                    ("alice-query", [], "?api_key=key-alice&x=1")]:
            with self.subTest(case=tag):
                resp = self.status("key", headers, query=query)
                self.assertEqual(resp.status, 101, resp)
                seen = upstream_saw(self.echo, resp.path)
                self.assertEqual(len(seen), 1, resp.path)
                # strip: true (the default): the key itself never reaches the upstream.
                self.assertEqual(header_values(seen[0]["headers"], "X-API-Key"), [],
                                 seen[0]["headers"])

    def test_api_key_refusals(self):
        for tag, headers, query in [("missing", [], ""),
                                    ("unknown", [("X-API-Key", "key-mallory")], ""),
                                    ("empty", [("X-API-Key", "")], ""),
                                    ("hash-as-key", [("X-API-Key", "87844ec0b0d738e89628640588"
                                                      "acaa48537b814a5c4f9697e3b352d11ffedaef")],
                                     ""),
                                    ("case-differs", [("X-API-Key", "KEY-ALICE")], ""),
                                    ("unknown-query", [], "?api_key=nope")]:
            with self.subTest(case=tag):
                resp = self.status("key", headers, query=query)
                self.assertEqual(resp.status, 401, resp)
                self.assertEqual(resp.header("WWW-Authenticate"), 'ApiKey realm="upgate"', resp)
                self.assertEqual(upstream_saw(self.echo, resp.path), [], resp.path)

    def test_api_key_identity_reaches_access_log_and_upstream(self):
        """plugins/README.md: set_identity -> "later plugins, the access log and the upstream
        see it"; README.md: "CONTINUE: header edits and identity go upstream". The field and
        header names are not documented, so any field / header carrying the user is accepted."""
        resp = self.status("key", [("X-API-Key", "key-alice")])
        self.assertEqual(resp.status, 101, resp)
        entry = self.gw.access_log_for_client(resp.local)
        seen = upstream_saw(self.echo, resp.path)
        self.assertEqual(len(seen), 1)
        problems = []
        if not any(v == "alice" or (isinstance(v, dict) and "alice" in v.values())
                   for v in entry.values()):
            problems.append("access-log line has no identity \"alice\": %r" % entry)
        if not any("alice" in v for _, v in seen[0]["headers"]):
            problems.append("no upstream header carries the identity \"alice\": %r"
                            % seen[0]["headers"])
        if problems:
            self.fail("\n".join(problems))

    # -- origin --------------------------------------------------------------------------------

    def test_origin_allowed(self):
        for origin in ["https://app.example.com", "https://APP.example.com:443",
                       "https://chat.example.com", "https://a.b.example.com",
                       "http://localhost:3000", "http://localhost"]:
            with self.subTest(origin=origin):
                resp = self.status("origin", [("Origin", origin)])
                self.assertEqual(resp.status, 101, "%s: %r" % (origin, resp))
        # allow_missing defaults to true: no Origin = not a browser.
        self.assertEqual(self.status("origin").status, 101)

    def test_origin_refused(self):
        for tag, headers in [
                ("evil", [("Origin", "https://evil.com")]),
                ("bare-domain-for-wildcard", [("Origin", "https://example.com")]),
                ("suffix-trick", [("Origin", "https://app.example.com.evil.com")]),
                ("lookalike", [("Origin", "https://evilexample.com")]),
                ("wrong-scheme", [("Origin", "http://app.example.com")]),
                ("wrong-port", [("Origin", "https://app.example.com:8443")]),
                ("null", [("Origin", "null")]),
                ("with-path", [("Origin", "https://app.example.com/x")]),
                ("two-origins", [("Origin", "https://app.example.com"),
                                 ("Origin", "https://evil.com")])]:
            with self.subTest(case=tag):
                resp = self.status("origin", headers)
                self.assertEqual(resp.status, 403, "%s: %r" % (tag, resp))
                self.assertEqual(upstream_saw(self.echo, resp.path), [], resp.path)
        resp = self.status("strict-origin")
        self.assertEqual(resp.status, 403, "allow_missing: false and no Origin: %r" % resp)
        self.assertEqual(self.status("strict-origin", [("Origin", "https://app.example.com")])
                         .status, 101)

    # -- ip_filter -----------------------------------------------------------------------------

    def test_ip_filter_deny_and_allow(self):
        resp = self.status("deny")
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(upstream_saw(self.echo, resp.path), [])
        self.assertEqual(self.status("allow").status, 101)
        resp = self.status("allow", source="127.0.0.2")
        self.assertEqual(resp.status, 403, "127.0.0.2 is outside allow 127.0.0.1/32: %r" % resp)
        self.assertEqual(upstream_saw(self.echo, resp.path), [])

    def test_ip_filter_trusted_proxy(self):
        xff = lambda v: [("X-Forwarded-For", v)]
        # From a trusted proxy (127.0.0.1) the forwarded client is judged.
        self.assertEqual(self.status("proxied", xff("203.0.113.9")).status, 403)
        self.assertEqual(self.status("proxied", xff("198.51.100.7")).status, 101)
        # Read right to left: the last untrusted hop is the client; what it claims is ignored.
        self.assertEqual(self.status("proxied", xff("203.0.113.9, 198.51.100.7")).status, 101)
        self.assertEqual(self.status("proxied", xff("198.51.100.7, 203.0.113.9")).status, 403)
        self.assertEqual(self.status("proxied", xff("garbage")).status, 400)
        # From an untrusted peer (127.0.0.2) the header is not believed.
        self.assertEqual(self.status("proxied", xff("203.0.113.9"), source="127.0.0.2").status,
                         101)

    def test_global_plugin_runs_on_every_route(self):
        for route in ["open", "origin", "key"]:
            with self.subTest(route=route):
                resp = self.status(route, [("X-API-Key", "key-alice")], source="127.0.0.3")
                self.assertEqual(resp.status, 403, "global deny 127.0.0.3 on %s: %r"
                                 % (route, resp))
        self.assertEqual(self.status("open", source="127.0.0.4").status, 101)

    # -- rate_limit ----------------------------------------------------------------------------

    def test_rate_limit_handshake_burst(self):
        workers = 2  # harness.make_config
        attempts = 12
        started = time.monotonic()
        results = [self.status("rl") for _ in range(attempts)]
        elapsed = time.monotonic() - started
        admitted = [r for r in results if r.status == 101]
        limited = [r for r in results if r.status == 429]
        self.assertEqual(len(admitted) + len(limited), attempts,
                         [r.status for r in results])
        self.assertGreaterEqual(len(admitted), 1, [r.status for r in results])
        # Documented bound: never more than max(burst, workers) + rate * t in t seconds.
        self.assertLessEqual(len(admitted), max(self.BURST, workers) + self.RATE * elapsed,
                             "%d of %d admitted in %.2fs" % (len(admitted), attempts, elapsed))
        self.assertTrue(limited, [r.status for r in results])
        waits = []
        for r in limited:
            ra = r.header("Retry-After")
            self.assertIsNotNone(ra, "429 without Retry-After: %r" % r)
            self.assertRegex(ra, r"^[0-9]+$", r)
            waits.append(int(ra))
            # A worker refills at rate/workers per second: a token is never further away.
            self.assertTrue(1 <= int(ra) <= workers / self.RATE, "Retry-After %s" % ra)
            self.assertEqual(upstream_saw(self.echo, r.path), [], r.path)
        # Another client IP has its own bucket.
        self.assertEqual(self.status("rl", source="127.0.0.2").status, 101)
        # After the longest Retry-After every worker's bucket holds a token again.
        time.sleep(max(waits))
        self.assertEqual(self.status("rl").status, 101)


    def test_rate_limit_messages_in_a_frames_tunnel(self):
        """on_message hooks run in the frames tunnel: the message that finds the session's bucket
        empty closes it with 1008 (the client) and 1001 (the upstream); it is not relayed, so the
        next frame the client gets is the close, not an echo."""
        path = self.path("msgrl")
        with RawClient(self.gw.addr()) as c:
            c.handshake(path)
            for i in range(3):
                c.send_frame(harness.OP_TEXT, b"m%d" % i)
                self.assertEqual(c.recv_frame()[2], b"m%d" % i)
            c.send_frame(harness.OP_TEXT, b"one too many")
            fin, opcode, payload = c.recv_frame()
            self.assertEqual(opcode, harness.OP_CLOSE, (fin, opcode, payload))
            self.assertEqual(struct.unpack("!H", payload[:2])[0], 1008, payload)
            c.send_frame(harness.OP_CLOSE, payload[:2])
            _, how = c.read_until_closed(5)
            self.assertIn(how, ("eof", "reset"))
        _, code, _ = self.echo.wait_close_for(path)
        self.assertEqual(code, 1001)

    def test_rate_limit_per_identity(self):
        # key: identity -> the user api_key attached, not the IP: alice running out of handshakes
        # leaves bob (same address) alone.
        alice = [("X-API-Key", "key-alice")]
        statuses = [self.status("keyrl", alice).status for _ in range(8)]
        self.assertIn(429, statuses, statuses)
        self.assertEqual(set(statuses), {101, 429}, statuses)
        self.assertEqual(self.status("keyrl", [("X-API-Key", "key-bob")]).status, 101)
        # An unauthenticated request is refused by api_key first (401), never counted.
        self.assertEqual(self.status("keyrl").status, 401)


# ---------------------------------------------------------------------------------------------
# route_by_header


class RouteByHeaderTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.stable = cls.start_class_peer(EchoUpstream(name="stable"))
        cls.beta = cls.start_class_peer(EchoUpstream(name="beta"))
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"stable": {"endpoints": [cls.stable.addr]},
                       "beta": {"endpoints": [cls.beta.addr]}},
            routes=[
                {"name": "hdr", "match": {"path_prefix": "/hdr/"}, "upstream": "stable",
                 "plugins": [{"name": "route_by_header",
                              "config": {"from": "header:X-Version",
                                         "values": {"beta": "beta", "ghost": "nowhere"}}}]},
                {"name": "cookie", "match": {"path_prefix": "/cookie/"}, "upstream": "stable",
                 "plugins": [{"name": "route_by_header",
                              "config": {"from": "cookie:track", "values": {"beta": "beta"}}}]},
                {"name": "query", "match": {"path_prefix": "/query/"}, "upstream": "stable",
                 "plugins": [{"name": "route_by_header",
                              "config": {"from": "query:v", "values": {"2": "beta"}}}]},
                {"name": "canary", "match": {"path_prefix": "/canary/"}, "upstream": "stable",
                 "plugins": [{"name": "route_by_header",
                              "config": {"from": "header:X-Version", "values": {"old": "stable"},
                                         "split": [{"upstream": "stable", "weight": 0},
                                                   {"upstream": "beta", "weight": 5}]}}]},
            ]))

    def setUp(self):
        self.n = 0

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.stable.errors + self.beta.errors, [])

    def answered_by(self, prefix, headers=(), query=""):
        self.n += 1
        path = "/%s/%s-%d%s" % (prefix, self._testMethodName, self.n, query)
        resp = attempt(self.gw.addr(), path, headers)
        self.assertEqual(resp.status, 101, "%s: %r" % (path, resp))
        got = [u.name for u in (self.stable, self.beta) if upstream_saw(u, path)]
        self.assertEqual(len(got), 1, "%s reached %r" % (path, got))
        return got[0]

    def test_header_value_picks_upstream(self):
        self.assertEqual(self.answered_by("hdr", [("X-Version", "beta")]), "beta")
        self.assertEqual(self.answered_by("hdr"), "stable")
        self.assertEqual(self.answered_by("hdr", [("X-Version", "gamma")]), "stable")
        self.assertEqual(self.answered_by("hdr", [("X-Version", "BETA")]), "stable",
                         "values match exactly")
        self.assertEqual(self.answered_by("hdr", [("x-version", "beta")]), "beta",
                         "header names are case-insensitive")

    def test_cookie_and_query_sources(self):
        self.assertEqual(self.answered_by("cookie", [("Cookie", "a=1; track=beta")]), "beta")
        self.assertEqual(self.answered_by("cookie", [("Cookie", "track=stable")]), "stable")
        self.assertEqual(self.answered_by("query", query="?v=2"), "beta")
        self.assertEqual(self.answered_by("query", query="?v=1"), "stable")

    def test_weighted_split(self):
        # Weights 0 / 5: everyone without a matching value lands on beta.
        for _ in range(4):
            self.assertEqual(self.answered_by("canary"), "beta")
        self.assertEqual(self.answered_by("canary", [("X-Version", "old")]), "stable")

    def test_unknown_upstream_is_a_500(self):
        path = "/hdr/ghost"
        resp = attempt(self.gw.addr(), path, [("X-Version", "ghost")])
        self.assertEqual(resp.status, 500, resp)
        self.assertEqual(upstream_saw(self.stable, path) + upstream_saw(self.beta, path), [])


# ---------------------------------------------------------------------------------------------
# External plugins: plugins/examples/ built with their Makefiles and loaded through `path:`


class ExternalPluginTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.out = build_examples()
        cls.stable = cls.start_class_peer(EchoUpstream(name="stable"))
        cls.v2 = cls.start_class_peer(EchoUpstream(name="v2"))
        # `path:` is relative to the config file, which lives in the gateway's own temp dir:
        # both dirs are siblings under the temp root.
        rel = lambda so: "../%s/%s" % (os.path.basename(cls.out), so)
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"stable": {"endpoints": [cls.stable.addr]},
                       "v2": {"endpoints": [cls.v2.addr]}},
            routes=[
                {"name": "chat", "match": {"path_prefix": "/chat"}, "upstream": "stable",
                 "plugins": [
                     {"name": "gate", "path": rel("header_gate.so"),
                      "config": {"header": "X-Gate", "value": "open-sesame"}},
                     {"name": "router", "path": rel("path_router.so"),
                      "config": {"routes": {"/chat/v2/": "v2", "/chat/ghost/": "nowhere"}}}]},
                {"name": "routed", "match": {"path_prefix": "/r"}, "upstream": "stable",
                 "plugins": [{"name": "router", "path": rel("path_router.so"),
                              "config": {"routes": {"/r/v2/": "v2"}}}]},
            ]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.stable.errors + self.v2.errors, [])

    def test_c_plugin_gate(self):
        path = "/chat/closed"
        resp = attempt(self.gw.addr(), path)
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(resp.header("X-Gate-Hint"), "ask the admin", resp)
        # (Byte-exact reject bodies are checked in HostApiTest.test_reject_headers_are_filtered.)
        self.assertTrue(resp.body.startswith(b"the gate is closed\n"), resp)
        resp = attempt(self.gw.addr(), "/chat/wrong", [("X-Gate", "open-sesame!")])
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(upstream_saw(self.stable, path) + upstream_saw(self.v2, path), [])

        path = "/chat/open"
        resp = attempt(self.gw.addr(), path, [("X-Gate", "open-sesame")])
        self.assertEqual(resp.status, 101, resp)
        seen = upstream_saw(self.stable, path)
        self.assertEqual(len(seen), 1, path)
        h = seen[0]["headers"]
        self.assertEqual(header_values(h, "X-Gate-Passed"), ["1"], h)
        self.assertEqual(header_values(h, "X-Gate"), [], "the secret must stay at the gateway")

    def test_cpp_plugin_routes(self):
        resp = attempt(self.gw.addr(), "/r/v2/x")
        self.assertEqual(resp.status, 101, resp)
        self.assertEqual(len(upstream_saw(self.v2, "/r/v2/x")), 1)
        resp = attempt(self.gw.addr(), "/r/v1/x")
        self.assertEqual(resp.status, 101, resp)
        self.assertEqual(len(upstream_saw(self.stable, "/r/v1/x")), 1)

    def test_chain_of_both(self):
        # The gate (on_request) runs before the router (on_route); a refusal ends the chain.
        self.assertEqual(attempt(self.gw.addr(), "/chat/v2/shut").status, 403)
        self.assertEqual(upstream_saw(self.v2, "/chat/v2/shut"), [])
        resp = attempt(self.gw.addr(), "/chat/v2/in", [("X-Gate", "open-sesame")])
        self.assertEqual(resp.status, 101, resp)
        seen = upstream_saw(self.v2, "/chat/v2/in")
        self.assertEqual(len(seen), 1)
        self.assertEqual(header_values(seen[0]["headers"], "X-Gate-Passed"), ["1"])
        # A plugin choosing an upstream that does not exist: 500, nothing connected.
        resp = attempt(self.gw.addr(), "/chat/ghost/x", [("X-Gate", "open-sesame")])
        self.assertEqual(resp.status, 500, resp)


# ---------------------------------------------------------------------------------------------
# The host's side of the ABI, through a probe plugin written here, and plugins on http routes

PROBE_SOURCE = r"""
/* test_plugins.py probe: what it does is chosen per request by the X-Probe header. */
#include <stdio.h>
#include <string.h>

#include "upgate/plugin.h"

static const upgate_host_api_t* host;

static void* probe_create(const upgate_host_api_t* h, const char* cfg, size_t len, char* err,
                          size_t errlen) {
  (void)cfg, (void)len, (void)err, (void)errlen;
  host = h;
  return (void*)&host;
}

static void probe_destroy(void* self) { (void)self; }

static void resume_continue(upgate_session_t* s, void* arg) {
  (void)arg;
  host->resume(s, UPGATE_CONTINUE, NULL, NULL);
}

static void resume_reject(upgate_session_t* s, void* arg) {
  upgate_reject_t r;
  (void)arg;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  r.status = 451;
  r.reason = "probe refused after a pause";
  host->resume(s, UPGATE_REJECT, &r, NULL);
}

static upgate_decision_t probe_on_request(void* self, upgate_session_t* s,
                                          const upgate_request_t* r, upgate_reject_t* out) {
  static const upgate_header_t headers[] = {{"X-Probe-Ok", "fine"},
                                            {"X-Probe-Split", "a\r\nSet-Cookie: pwned=1"},
                                            {"Bad Name", "x"},
                                            {"Content-Length", "999"}};
  const char* what = host->header(s, "X-Probe", 0);
  (void)self;
  if (what == NULL) return UPGATE_CONTINUE;
  if (strcmp(what, "status-200") == 0 || strcmp(what, "status-600") == 0) {
    out->status = what[7] == '2' ? 200 : 600;
    return UPGATE_REJECT;
  }
  if (strcmp(what, "bad-decision") == 0) return (upgate_decision_t)42;
  if (strcmp(what, "bad-headers") == 0) {
    out->status = 403;
    out->headers = headers;
    out->header_count = sizeof headers / sizeof headers[0];
    out->body = "denied";
    out->body_len = 6;
    return UPGATE_REJECT;
  }
  if (strcmp(what, "pause-forever") == 0) return UPGATE_PAUSE;
  if (strcmp(what, "pause-continue") == 0 || strcmp(what, "pause-reject") == 0) {
    if (host->timer_start(s, 300, what[6] == 'c' ? resume_continue : resume_reject, NULL) == 0)
      return UPGATE_CONTINUE;
    return UPGATE_PAUSE;
  }
  if (strcmp(what, "host-api") == 0) {
    char report[512];
    uint16_t port = 0;
    const char* ip = host->client_address(s, &port);
    int set = host->set_upstream_header(s, "X-Probe-Set", "yes");
    int hst = host->set_upstream_header(s, "Host", "evil.example");
    int sec = host->set_upstream_header(s, "Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==");
    int crlf = host->set_upstream_header(s, "X-Probe-Crlf", "a\r\nX-Injected: 1");
    int name = host->set_upstream_header(s, "Bad Name", "x");
    int early_close = host->close(s, 1008, "too early");
    host->set_upstream_header(s, "X-Remove-Me", NULL);
    snprintf(report, sizeof report,
             "set=%d host=%d sec=%d crlf=%d name=%d close=%d ip=%s port=%u route=%s target=%s",
             set, hst, sec, crlf, name, early_close, ip != NULL ? ip : "-", (unsigned)port,
             r->route, r->target);
    host->set_upstream_header(s, "X-Probe-Report", report);
  }
  return UPGATE_CONTINUE;
}

static void probe_on_close(void* self, upgate_session_t* s, uint16_t ws_code, const char* reason) {
  char line[160];
  (void)self;
  snprintf(line, sizeof line, "probe on_close code=%u reason=%s", (unsigned)ws_code,
           reason != NULL ? reason : "-");
  host->log(s, UPGATE_LOG_WARN, line);
}

static const upgate_plugin_v1_t probe = {UPGATE_PLUGIN_ABI_VERSION, sizeof(upgate_plugin_v1_t),
                                         "probe", probe_create, probe_destroy, probe_on_request,
                                         NULL, NULL, probe_on_close};

UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t v) {
  return v == UPGATE_PLUGIN_ABI_VERSION ? &probe : NULL;
}
"""


class HttpApp:
    """A plain HTTP/1.1 app (keep-alive) in a thread: 200 "app <path>", records requests."""

    def __init__(self):
        self.requests = []
        self.server = None
        self.thread = None
        self.addr = None

    def start(self):
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                app.requests.append({"path": self.path, "headers": list(self.headers.items())})
                body = b"app " + self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.addr = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True,
                                       name="http-app")
        self.thread.start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(harness.STOP_TIMEOUT)


def http_get(client, path, headers=()):
    lines = ["GET %s HTTP/1.1" % path, "Host: localhost"] + ["%s: %s" % h for h in headers]
    client.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    resp = client.read_response()
    client.read_body(resp)
    return resp


class HostApiTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.out = build_dir()
        cls.addClassCleanup(shutil.rmtree, cls.out, True)
        src = os.path.join(cls.out, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE_SOURCE)
        so = compile_so(src, os.path.join(cls.out, "probe.so"))
        cls.echo = cls.start_class_peer(EchoUpstream(name="echo"))
        cls.app = cls.start_class_peer(HttpApp())
        cls.gw = cls.start_class_gateway(harness.make_config(
            upstreams={"chat": {"endpoints": [cls.echo.addr]},
                       "app": {"endpoints": [cls.app.addr]}},
            routes=[
                {"name": "probe", "match": {"path_prefix": "/probe"}, "upstream": "chat",
                 "plugins": [{"name": "probe", "path": so}]},
                {"name": "site", "match": {"path_prefix": "/site"}, "kind": "http",
                 "upstream": "app",
                 "plugins": [{"name": "api_key", "config": {"keys_file": API_KEYS}}]},
            ]))

    def tearDown(self):
        self.assertGatewayAlive(self.gw)
        self.assertEqual(self.echo.errors, [])

    def probe(self, what, path):
        return attempt(self.gw.addr(), path, [("X-Probe", what), ("X-Remove-Me", "1")])

    def session_log(self, resp):
        """(access-log entry, stderr events with its id) of the session behind `resp`."""
        entry = self.gw.access_log_for_client(resp.local)
        events = bridge_util.gateway_events(self.gw)
        return entry, [e for e in events if e.get("id") == entry["id"]]

    def test_invalid_results_become_500_with_a_log_line(self):
        for what in ["status-200", "status-600", "bad-decision"]:
            with self.subTest(case=what):
                path = "/probe/" + what
                resp = self.probe(what, path)
                self.assertEqual(resp.status, 500, resp)
                self.assertEqual(upstream_saw(self.echo, path), [])
                entry, events = self.session_log(resp)
                self.assertEqual(entry.get("status"), 500, entry)
                self.assertTrue(any(e.get("level") in ("error", "err", "warn", "warning")
                                    and "probe" in e.get("msg", "") for e in events),
                                "no log line about the plugin: %r" % events)

    def test_reject_headers_are_filtered(self):
        resp = self.probe("bad-headers", "/probe/bad-headers")
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(resp.header("X-Probe-Ok"), "fine", resp)
        self.assertEqual(header_values(resp.headers, "Set-Cookie"), [], resp)
        self.assertEqual(header_values(resp.headers, "X-Probe-Split"), [], resp)
        # The plugin's Content-Length: 999 is dropped; the host frames the body itself.
        self.assertEqual(header_values(resp.headers, "Content-Length"), [str(len(resp.body))],
                         resp)
        # upgate_reject_t.body/body_len: the response body, byte for byte.
        self.assertEqual(resp.body, b"denied", resp)

    def test_pause_then_resume(self):
        started = time.monotonic()
        self.assertEqual(self.probe("pause-continue", "/probe/pause-continue").status, 101)
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertEqual(len(upstream_saw(self.echo, "/probe/pause-continue")), 1)
        resp = self.probe("pause-reject", "/probe/pause-reject")
        self.assertEqual(resp.status, 451, resp)
        self.assertEqual(upstream_saw(self.echo, "/probe/pause-reject"), [])

    def test_pause_never_resumed_is_a_503(self):
        # The host bounds every PAUSE (timeouts.plugin_pause, 10 s by default): 503, nothing
        # connected.
        started = time.monotonic()
        with RawClient(self.gw.addr()) as c:
            c.send(ws_request("/probe/pause-forever", extra=[("X-Probe", "pause-forever")]))
            resp = c.read_response(timeout=30)
            c.read_body(resp)
        self.assertEqual(resp.status, 503, resp)
        self.assertLess(time.monotonic() - started, 25)
        self.assertEqual(upstream_saw(self.echo, "/probe/pause-forever"), [])

    def test_host_api_on_the_way_upstream(self):
        path = "/probe/host-api?x=1"
        resp = self.probe("host-api", path)
        self.assertEqual(resp.status, 101, resp)
        seen = upstream_saw(self.echo, path)
        self.assertEqual(len(seen), 1)
        h = seen[0]["headers"]
        self.assertEqual(header_values(h, "X-Probe-Set"), ["yes"], h)
        self.assertEqual(header_values(h, "Host"), ["localhost"], h)
        self.assertEqual(header_values(h, "X-Probe-Crlf") + header_values(h, "X-Injected"), [], h)
        self.assertEqual(header_values(h, "X-Remove-Me"), [], h)
        report = header_values(h, "X-Probe-Report")
        self.assertEqual(len(report), 1, h)
        want = ("set=0 host=-1 sec=-1 crlf=-1 name=-1 close=-1 ip=127.0.0.1 port=%d route=probe "
                "target=%s" % (resp.local[1], path))
        self.assertEqual(report[0], want)

    def test_connection_cannot_strip_what_plugins_add(self):
        """A client's Connection header names hop-by-hop headers of its own: naming the ones
        plugins add (identity, set_upstream_header) must not keep them from the upstream."""
        # http route: api_key's identity.
        with RawClient(self.gw.addr()) as c:
            resp = http_get(c, "/site/conn-strip", [
                ("X-API-Key", "key-alice"), ("X-Upgate-User", "mallory"), ("X-Hop", "client"),
                ("Connection", "X-Upgate-User, X-Upgate-Claims, X-Hop")])
            self.assertEqual(resp.status, 200, resp)
        seen = [r for r in self.app.requests if r["path"] == "/site/conn-strip"]
        self.assertEqual(len(seen), 1)
        h = seen[0]["headers"]
        self.assertEqual(header_values(h, "X-Upgate-User"), ["alice"], h)
        self.assertEqual(header_values(h, "X-Upgate-Claims"), ['{"role":"admin"}'], h)
        self.assertEqual(header_values(h, "X-Hop"), [], h)  # the client's own: still dropped
        # websocket route: the probe's set_upstream_header.
        path = "/probe/conn-strip"
        resp = attempt(self.gw.addr(), path, [
            ("X-Probe", "host-api"), ("X-Probe-Set", "client"), ("X-Hop", "client"),
            ("Connection", "X-Probe-Set, X-Probe-Report, X-Hop")])
        self.assertEqual(resp.status, 101, resp)
        seen = upstream_saw(self.echo, path)
        self.assertEqual(len(seen), 1)
        h = seen[0]["headers"]
        self.assertEqual(header_values(h, "X-Probe-Set"), ["yes"], h)
        self.assertEqual(len(header_values(h, "X-Probe-Report")), 1, h)
        self.assertEqual(header_values(h, "X-Hop"), [], h)

    def test_look_alikes_of_vouched_headers_do_not_reach_the_upstream(self):
        """Servers that read headers CGI-style take X_Upgate_User for X-Upgate-User: a client's
        look-alike of a header upgate or a plugin vouches for must not get through."""
        with RawClient(self.gw.addr()) as c:
            resp = http_get(c, "/site/look-alike", [
                ("X-API-Key", "key-alice"), ("X_Upgate_User", "mallory"),
                ("x_upgate_claims", '{"role":"root"}'), ("X_Forwarded_Proto", "https"),
                ("X_Forwarded_For", "10.0.0.1")])
            self.assertEqual(resp.status, 200, resp)
        seen = [r for r in self.app.requests if r["path"] == "/site/look-alike"]
        self.assertEqual(len(seen), 1)
        names = [n.lower().replace("_", "-") for n, _ in seen[0]["headers"]]
        self.assertEqual(names.count("x-upgate-user"), 1, seen[0]["headers"])
        self.assertEqual(names.count("x-upgate-claims"), 1, seen[0]["headers"])
        self.assertEqual(header_values(seen[0]["headers"], "X-Upgate-User"), ["alice"])
        # The proxy headers upgate writes itself: only its own.
        self.assertEqual(names.count("x-forwarded-proto"), 1, seen[0]["headers"])
        self.assertEqual(header_values(seen[0]["headers"], "X-Forwarded-Proto"), ["http"])
        self.assertEqual(names.count("x-forwarded-for"), 1, seen[0]["headers"])
        # set_upstream_header: the probe's X-Probe-Set replaces the client's X_Probe_Set.
        path = "/probe/look-alike"
        resp = attempt(self.gw.addr(), path, [("X-Probe", "host-api"),
                                              ("X_Probe_Set", "client")])
        self.assertEqual(resp.status, 101, resp)
        h = upstream_saw(self.echo, path)[0]["headers"]
        self.assertEqual([n for n, _ in h if n.lower().replace("_", "-") == "x-probe-set"],
                         ["X-Probe-Set"], h)

    def test_on_close_runs_once_per_session(self):
        rejected = self.probe("bad-headers", "/probe/close-rejected")
        admitted = self.probe("none", "/probe/admitted")  # ("/close" in a path: echo closes)
        self.assertEqual((rejected.status, admitted.status), (403, 101))
        # The admitted client closes with 1000 (attempt() runs the close handshake).
        for resp, code in [(rejected, 0), (admitted, 1000)]:
            entry = self.gw.access_log_for_client(resp.local)

            def closes():
                return [e for e in bridge_util.gateway_events(self.gw)
                        if e.get("id") == entry["id"] and "probe on_close" in e.get("msg", "")]

            try:
                found = harness.poll_until(closes, 5, what="on_close log line")
            except TimeoutError:
                self.fail("no on_close for session %s; stderr:\n%s"
                          % (entry["id"], self.gw.stderr_tail()))
            self.assertEqual(len(found), 1, found)
            self.assertIn("code=%d " % code, found[0]["msg"], found)

    def test_http_route_decides_per_request(self):
        with RawClient(self.gw.addr()) as c:
            resp = http_get(c, "/site/one", [("X-API-Key", "key-bob")])
            self.assertEqual((resp.status, resp.body), (200, b"app /site/one"), resp)
            # Keep-alive: the next request on the same connection is judged on its own.
            resp = http_get(c, "/site/two")
            self.assertEqual(resp.status, 401, resp)
            self.assertEqual(resp.header("WWW-Authenticate"), 'ApiKey realm="upgate"', resp)
            self.assertIn("close", resp.tokens("Connection"), resp)
        seen = [r for r in self.app.requests if r["path"] == "/site/one"]
        self.assertEqual(len(seen), 1)
        self.assertEqual(header_values(seen[0]["headers"], "X-API-Key"), [], seen[0])
        self.assertEqual([r for r in self.app.requests if r["path"] == "/site/two"], [])
        with RawClient(self.gw.addr()) as c:
            self.assertEqual(http_get(c, "/site/three", [("X-API-Key", "key-alice")]).status, 200)
            self.assertEqual(http_get(c, "/site/four", [("X-API-Key", "key-bob")]).status, 200)


# ---------------------------------------------------------------------------------------------
# Loader and config errors: `upgate -t` and a real start exit 2, naming the file and the reason


class PluginConfigErrorTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.out = build_dir()
        cls.addClassCleanup(shutil.rmtree, cls.out, True)
        for name in ["good_plugin", "wrong_abi_plugin", "no_entry_plugin", "short_struct_plugin"]:
            compile_so(os.path.join(FIXTURES, name + ".c"), os.path.join(cls.out, name + ".so"))
        # A plugin that needs a symbol nobody provides: dlopen(RTLD_NOW) must fail at start.
        src = os.path.join(cls.out, "undefined_symbol_plugin.c")
        with open(src, "w") as f:
            f.write('#include "upgate/plugin.h"\n'
                    "extern int upgate_it_symbol_nobody_defines(void);\n"
                    "static upgate_plugin_v1_t table;\n"
                    "UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t v)"
                    " {\n  table.abi_version = v + (uint32_t)upgate_it_symbol_nobody_defines();\n"
                    "  return &table;\n}\n")
        compile_so(src, os.path.join(cls.out, "undefined_symbol_plugin.so"))
        with open(os.path.join(cls.out, "not_elf.so"), "w") as f:
            f.write("this is not a shared object\n")

    def write(self, name, plugins_yaml):
        text = CHECK_CONFIG_HEAD + plugins_yaml
        path = os.path.join(self.out, name + ".yaml")
        with open(path, "w") as f:
            f.write(text)
        return path, text

    def assert_fails(self, config_path, *needles, start=True):
        r = run_check(config_path)
        self.assertEqual(r.returncode, 2, "upgate -t: stdout %r stderr %r" % (r.stdout, r.stderr))
        self.assertNotIn("configuration OK", r.stdout + r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr, "upgate -t stderr lacks %r:\n%s" % (n, r.stderr))
        if start:
            ready = config_path + ".ready"
            s = run_start(config_path, ready)
            self.assertEqual(s.returncode, 2, "real start: %r" % s.stderr)
            self.assertFalse(os.path.exists(ready), "a ready file was written")
            for n in needles:
                self.assertIn(n, s.stderr, "real start stderr lacks %r:\n%s" % (n, s.stderr))
        return r

    def test_good_external_plugin_passes_check(self):
        path, _ = self.write("good", "      - name: fixture\n        path: ./good_plugin.so\n")
        r = run_check(path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_loader_errors(self):
        cases = [
            ("wrong_abi", "./wrong_abi_plugin.so", ["plugin ABI version 99",
                                                    "speaks version 1"]),
            ("no_entry", "./no_entry_plugin.so", ["does not export upgate_plugin_entry"]),
            ("short_struct", "./short_struct_plugin.so", ["16-byte plugin struct"]),
            ("undefined_symbol", "./undefined_symbol_plugin.so",
             ["upgate_it_symbol_nobody_defines"]),
            ("missing_file", "./no_such_plugin.so", ["cannot load", "No such file"]),
            ("not_elf", "./not_elf.so", ["cannot load"]),
        ]
        for name, so, reasons in cases:
            with self.subTest(case=name):
                config, text = self.write(name, "      - name: ext\n        path: %s\n" % so)
                where = "%s:%d:" % (config, line_of(text, "- name: ext"))
                # The message names the config entry, the (resolved) file and the reason.
                self.assert_fails(config, where, 'plugin "ext"',
                                  os.path.join(self.out, so), *reasons)

    def test_external_plugin_config_error(self):
        config, text = self.write("fail", "      - name: fixture\n        path: ./good_plugin.so\n"
                                          "        config: { mode: fail }\n")
        self.assert_fails(config, "%s:%d:" % (config, line_of(text, "- name: fixture")),
                          "config says fail")

    def test_example_plugin_config_errors(self):
        out = build_examples()
        text = (CHECK_CONFIG_HEAD +
                "      - name: gate\n        path: ./header_gate.so\n"
                "        config: { header: X-Gate }\n"
                "      - name: router\n        path: ./path_router.so\n"
                "        config: { routes: { /v2/: chat }, colour: blue }\n")
        config = os.path.join(out, "examples.yaml")
        with open(config, "w") as f:
            f.write(text)
        self.assert_fails(config,
                          "%s:%d:" % (config, line_of(text, "- name: gate")),
                          "header and value are required",
                          "%s:%d:" % (config, line_of(text, "- name: router")),
                          'unknown key "colour"', start=False)

    def test_builtin_config_errors_name_file_and_line(self):
        entries = [
            ("jwt-no-keys", "      - name: jwt\n        config: { audience: chat }\n",
             "no keys"),
            ("jwt-short-secret",
             "      - name: jwt\n        config: { keys: [ { secret: short, alg: HS256 } ] }\n",
             "at least 32 bytes"),
            ("jwt-weak-rsa",
             "      - name: jwt\n        config: { keys: [ { file: %s } ] }\n"
             % os.path.join(FIXTURES, "rsa1024.pub.pem"), "2048 bits"),
            ("jwt-private-key",
             "      - name: jwt\n        config: { keys: [ { file: %s } ] }\n"
             % os.path.join(FIXTURES, "rsa.key.pem"), "public"),
            ("jwt-bad-source",
             "      - name: jwt\n        config: { jwks_file: %s, token_from: [body] }\n" % JWKS,
             "token_from[0]"),
            ("api-key-no-file",
             "      - name: api_key\n        config: { keys_file: /nonexistent/keys.txt }\n",
             "/nonexistent/keys.txt"),
            ("origin-bad-pattern",
             "      - name: origin\n        config: { allow: [app.example.com] }\n",
             "allow[0]"),
            ("ip-filter-host-bits",
             "      - name: ip_filter\n        config: { deny: [10.0.0.1/8] }\n", "host bits"),
            ("rate-limit-no-rate",
             "      - name: rate_limit\n        config: { burst: 5 }\n", "config.rate"),
            ("route-by-header-empty",
             "      - name: route_by_header\n        config: { from: \"header:X-V\" }\n",
             "give values, split or both"),
            ("unknown-builtin", "      - name: jwtt\n", "no built-in plugin"),
            ("unknown-key",
             "      - name: origin\n        config: { allow: [\"https://a.example\"], "
             "bogus: 1 }\n", 'unknown key "bogus"'),
        ]
        # Each alone: exit 2 with file:line:col of its entry and the plugin's message.
        for name, yaml_text, reason in entries:
            with self.subTest(case=name):
                config, text = self.write(name, yaml_text)
                where = "%s:%d:" % (config, line_of(text, "      - name:"))
                self.assert_fails(config, where, reason, start=(name == "jwt-no-keys"))
        # All at once: every error is reported, each at its own line.
        config, text = self.write("all", "".join(e[1] for e in entries))
        r = self.assert_fails(config, start=False)
        lines = r.stderr.splitlines()
        line = CHECK_CONFIG_HEAD.count("\n") + 1
        for name, yaml_text, reason in entries:
            want = "%s:%d:" % (config, line)
            self.assertTrue(any(l.startswith(want) and reason in l for l in lines),
                            "%s: no line starting %r with %r in:\n%s"
                            % (name, want, reason, r.stderr))
            line += yaml_text.count("\n")

    def test_shipped_example_passes_check(self):
        example = os.path.join(ROOT, "conf", "examples", "plugins.yaml")
        r = run_check(example)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
