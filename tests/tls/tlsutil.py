"""Helpers for upgate's TLS tests, on top of tests/support/harness.py.

  Pki             certificates made with Debian's openssl CLI in a temp dir: CAs, server and
                  client leaves (ECDSA P-256), an expired leaf (`openssl ca -startdate/-enddate`,
                  since openssl 3.0's `x509` cannot backdate), SHA-256 fingerprints.
  s_client        `openssl s_client` bounded by a timeout; SClientResult parses what it prints
                  (served certificate, ALPN, protocol, New/Reused, verification, HTTP status).
  TlsEchoUpstream python-websockets echo server over TLS (or plain) in a thread; records the
                  request headers and the SNI name each connection asked for.
  client_hello    the bytes of a real ClientHello (Python's ssl over memory BIOs), to send
                  whole, half, or not at all.
  events          stderr JSON event lines of a gateway; for_session() filters one session id.

Everything is bounded: subprocesses by timeouts, waits by deadlines (harness.poll_until).
"""

import asyncio
import hashlib
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import websockets

import harness
from harness import LOOPBACK, READY_TIMEOUT, STOP_TIMEOUT, IO_TIMEOUT

OPENSSL = "openssl"
S_CLIENT_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# Certificates


class CertError(RuntimeError):
    pass


def _run_openssl(args, cwd, what):
    proc = subprocess.run([OPENSSL] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if proc.returncode != 0:
        raise CertError("openssl %s failed (%s): %s\n%s" % (
            what, proc.returncode, " ".join(args), proc.stderr.decode(errors="replace")))
    return proc.stdout


class Cert:
    """A PEM certificate file and its key file."""

    def __init__(self, name, cert, key, cn):
        self.name = name
        self.cert = cert
        self.key = key
        self.cn = cn

    @property
    def fingerprint(self):
        return cert_fingerprint(self.cert)

    def __repr__(self):
        return "<Cert %s CN=%s %s>" % (self.name, self.cn, self.cert)


def pem_blocks(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def pem_fingerprint(pem):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def cert_fingerprint(path):
    """SHA-256 (lower-case hex) of the DER of the first certificate in a PEM file."""
    with open(path) as f:
        blocks = pem_blocks(f.read())
    if not blocks:
        raise CertError("no certificate in %s" % path)
    return pem_fingerprint(blocks[0])


class Pki:
    """Certificates in `directory`, made with the openssl CLI (ECDSA P-256, SHA-256)."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _new_key_and_csr(self, name, subject):
        key, csr = self.path(name + ".key"), self.path(name + ".csr")
        _run_openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", key, "-out", csr, "-subj", subject],
                     self.dir, "req (%s)" % name)
        return key, csr

    def ca(self, name, cn):
        key, cert = self.path(name + ".key"), self.path(name + ".pem")
        _run_openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-sha256",
                      "-subj", "/O=upgate tests/CN=%s" % cn,
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                      "-addext", "subjectKeyIdentifier=hash"],
                     self.dir, "req -x509 (%s)" % name)
        return Cert(name, cert, key, cn)

    @staticmethod
    def _extensions(dns, ips, emails, usage):
        alt = ["DNS:%s" % d for d in dns] + ["IP:%s" % i for i in ips] + \
              ["email:%s" % e for e in emails]
        eku = {"server": "serverAuth", "client": "clientAuth",
               "both": "serverAuth,clientAuth"}[usage]
        lines = ["[leaf]", "basicConstraints = critical,CA:FALSE",
                 "keyUsage = critical,digitalSignature", "extendedKeyUsage = %s" % eku,
                 "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
        if alt:
            lines.append("subjectAltName = %s" % ",".join(alt))
        return "\n".join(lines) + "\n"

    def leaf(self, name, ca, cn, dns=(), ips=(), emails=(), usage="server", days=30, org=None):
        """A certificate signed by `ca` (a Cert), valid from now for `days`."""
        subject = ("/O=%s" % org if org else "") + "/CN=%s" % cn
        key, csr = self._new_key_and_csr(name, subject)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write(self._extensions(dns, ips, emails, usage))
        cert = self.path(name + ".pem")
        _run_openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
                      "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                      "-days", str(days), "-sha256", "-extfile", ext, "-extensions", "leaf",
                      "-out", cert], self.dir, "x509 -req (%s)" % name)
        return Cert(name, cert, key, cn)

    def dated_leaf(self, name, ca, cn, start, end, dns=(), usage="server"):
        """A leaf with explicit validity (YYYYMMDDHHMMSSZ), e.g. already expired. openssl 3.0's
        `x509` has no -not_before, so this goes through `openssl ca` with a minimal config."""
        key, csr = self._new_key_and_csr(name, "/CN=%s" % cn)
        cadir = self.path(name + ".cadb")
        os.makedirs(cadir, exist_ok=True)
        open(os.path.join(cadir, "index.txt"), "w").close()
        with open(os.path.join(cadir, "serial"), "w") as f:
            f.write("%016X\n" % int.from_bytes(os.urandom(7), "big"))
        conf = os.path.join(cadir, "ca.cnf")
        with open(conf, "w") as f:
            f.write("[ca]\ndefault_ca = test_ca\n"
                    "[test_ca]\n"
                    "database = %s/index.txt\nserial = %s/serial\nnew_certs_dir = %s\n"
                    "default_md = sha256\npolicy = any\nunique_subject = no\n"
                    "copy_extensions = none\n"
                    "[any]\ncommonName = supplied\n" % (cadir, cadir, cadir))
            f.write(self._extensions(dns, (), (), usage))
        cert = self.path(name + ".pem")
        _run_openssl(["ca", "-batch", "-config", conf, "-cert", ca.cert, "-keyfile", ca.key,
                      "-in", csr, "-out", cert, "-notext", "-startdate", start, "-enddate", end,
                      "-extensions", "leaf"], self.dir, "ca (%s)" % name)
        return Cert(name, cert, key, cn)


def cert_text(path):
    return _run_openssl(["x509", "-in", path, "-noout", "-subject", "-dates"],
                        os.path.dirname(path) or ".", "x509 -noout").decode()


# ---------------------------------------------------------------------------------------------
# openssl s_client


class SClientResult:
    def __init__(self, args, returncode, out, err, timed_out, elapsed):
        self.args = args
        self.returncode = returncode
        self.out = out
        self.err = err
        self.timed_out = timed_out
        self.elapsed = elapsed

    def _field(self, pattern, text=None):
        m = re.search(pattern, self.out if text is None else text, re.M)
        return m.group(1).strip() if m else None

    @property
    def peer_pem(self):
        blocks = pem_blocks(self.out)
        return blocks[0] if blocks else None

    @property
    def peer_fingerprint(self):
        pem = self.peer_pem
        return pem_fingerprint(pem) if pem else None

    @property
    def subject(self):
        # openssl 3.0: "subject=CN = a.example.com" (or "subject=O = ..., CN = ...")
        return self._field(r"^subject=(.*)$")

    @property
    def alpn(self):
        if re.search(r"^No ALPN negotiated", self.out, re.M):
            return ""
        return self._field(r"^ALPN protocol: (.*)$")

    @property
    def protocol(self):
        # From "New, TLSv1.3, Cipher is ..." (the SSL-Session block is not always printed).
        return self._field(r"^(?:New|Reused), (\S+), Cipher is ")

    @property
    def cipher(self):
        return self._field(r"^(?:New|Reused), \S+, Cipher is (\S+)")

    @property
    def session_kind(self):
        """'New' or 'Reused' (from the "New, TLSv1.3, Cipher is ..." line), or None."""
        return self._field(r"^(New|Reused), ")

    @property
    def verification(self):
        return self._field(r"^Verification(?: error)?: (.*)$")

    @property
    def verify_return(self):
        return self._field(r"^\s*Verify return code: (.*)$")

    @property
    def handshake_ok(self):
        return self.session_kind is not None and self.peer_pem is not None

    @property
    def http_status(self):
        # Not anchored: s_client's buffered session printout and the raw application data
        # it writes can interleave mid-line.
        m = re.search(r"HTTP/1\.1 (\d{3}) ", self.out)
        return int(m.group(1)) if m else None

    @property
    def alert(self):
        m = re.search(r"(?:sslv3|tlsv1|tlsv13|ssl/tls) alert ([a-z ]+?)(?::|$)", self.err, re.M)
        return m.group(1).strip() if m else None

    def describe(self):
        return ("openssl %s\n rc=%s timed_out=%s elapsed=%.2fs\n--- stdout (head) ---\n%s\n"
                "--- stderr ---\n%s" % (" ".join(self.args), self.returncode, self.timed_out,
                                        self.elapsed, _squeeze(self.out), self.err.strip()))


def _squeeze(text, limit=3000):
    # Certificates make s_client output long; keep the parts a reader needs.
    text = re.sub(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                  "<certificate>", text, flags=re.S)
    text = re.sub(r"-----BEGIN SSL SESSION PARAMETERS-----.*?-----END SSL SESSION PARAMETERS-----",
                  "<session>", text, flags=re.S)
    return text[:limit]


def s_client(addr, *args, stdin=b"", timeout=S_CLIENT_TIMEOUT):
    """Run `openssl s_client -connect addr args...`, feeding `stdin` (then EOF).

    Bounded by `timeout` (the process is killed: timed_out=True). Without -ign_eof, s_client
    closes right after the handshake once stdin ends; pass -ign_eof (and a request on stdin)
    to keep reading until the server closes."""
    argv = ["s_client", "-connect", "%s:%d" % (addr[0], addr[1])] + list(args)
    start = time.monotonic()
    proc = subprocess.Popen([OPENSSL] + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    timed_out = False
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
    return SClientResult(argv, proc.returncode, out.decode("utf-8", "replace"),
                         err.decode("utf-8", "replace"), timed_out, time.monotonic() - start)


def http_get(host="localhost", path="/tls-probe"):
    """A plain GET (not an upgrade) that a WebSocket route answers and closes."""
    return ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode()


def upgrade_request(host="localhost", path="/chat", extra=()):
    return harness.ws_request(path, host=host, extra=extra)


# ---------------------------------------------------------------------------------------------
# Python TLS clients


def client_context(cafile=None, cert=None, verify=True, minimum=None, maximum=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_hello(server_name="a.example.com"):
    """The bytes of the first flight of a TLS client (a ClientHello), without any socket."""
    ctx = client_context(verify=False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = outgoing.read()
    if len(data) < 100 or data[0] != 0x16:
        raise RuntimeError("unexpected ClientHello bytes: %r" % data[:20])
    return data


def wss_url(gw, path="/chat", listener="secure"):
    host, port = gw.addr(listener)
    return "wss://%s:%d%s" % (host, port, path)


def connect_wss(gw, path, ctx, server_hostname="a.example.com", listener="secure", **kw):
    """websockets.connect over TLS to a gateway listener, with test-friendly defaults."""
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", IO_TIMEOUT)
    kw.setdefault("close_timeout", 5)
    return websockets.connect(wss_url(gw, path, listener), ssl=ctx,
                              server_hostname=server_hostname, **kw)


def wait_closed(sock, timeout):
    """Read and discard until the peer closes. Returns (how, seconds, bytes_received) with how
    in {'eof', 'reset', 'timeout'}."""
    start = time.monotonic()
    deadline = start + timeout
    got = b""
    for _ in range(100000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", time.monotonic() - start, got
        r, _, _ = select.select([sock], [], [], min(remaining, 0.5))
        if not r:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return "reset", time.monotonic() - start, got
        if not chunk:
            return "eof", time.monotonic() - start, got
        got += chunk
    return "timeout", time.monotonic() - start, got


# ---------------------------------------------------------------------------------------------
# TLS (or plain) WebSocket echo upstream


class TlsEchoUpstream:
    """An echo WebSocket server in a thread. With `cert` (a Cert) it serves wss:// and records
    the SNI name of every TLS connection; without, plain ws://. With `client_ca` it requires a
    client certificate from that CA. Records each request's path, headers and the SHA-256 of
    the client certificate (if any)."""

    def __init__(self, cert=None, name="tls-echo", client_ca=None):
        self.cert = cert
        self.client_ca = client_ca  # a Cert: require client certificates signed by it
        self.name = name
        self.requests = []
        self.server_names = []
        self.errors = []
        self.addr = None
        self._cond = threading.Condition()
        self._thread = None
        self._loop = None
        self._stop = None

    def _ssl_context(self):
        if self.cert is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert.cert, self.cert.key)

        def on_sni(sslobj, server_name, _ctx):
            with self._cond:
                self.server_names.append(server_name)
                self._cond.notify_all()

        ctx.sni_callback = on_sni
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.client_ca.cert)
        return ctx

    def start(self):
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name=self.name)
        self._thread.start()
        if not started.wait(READY_TIMEOUT) or self.addr is None:
            raise RuntimeError("%s did not start: %r" % (self.name, self.errors))
        return self

    def _run(self, started):
        try:
            asyncio.run(self._serve(started))
        except Exception as exc:
            self.errors.append(repr(exc))
            started.set()

    async def _serve(self, started):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with websockets.serve(self._echo, LOOPBACK, 0, ssl=self._ssl_context(),
                                    max_size=None, compression=None, ping_interval=None,
                                    close_timeout=5, backlog=512) as server:
            self.addr = server.sockets[0].getsockname()[:2]
            started.set()
            await self._stop.wait()

    async def _echo(self, ws):
        peer = None
        sslobj = ws.transport.get_extra_info("ssl_object")
        if sslobj is not None:
            der = sslobj.getpeercert(binary_form=True)
            peer = hashlib.sha256(der).hexdigest() if der else None
        with self._cond:
            self.requests.append({"path": ws.path, "peer_cert": peer,
                                  "headers": list(ws.request_headers.raw_items())})
            self._cond.notify_all()
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    def request_for(self, path, timeout=IO_TIMEOUT):
        with self._cond:
            found = []

            def check():
                found[:] = [r for r in self.requests if r["path"] == path]
                return bool(found)

            if not self._cond.wait_for(check, timeout):
                raise AssertionError("%s saw no request for %s; saw %r"
                                     % (self.name, path, [r["path"] for r in self.requests]))
            return found[0]

    def count(self):
        with self._cond:
            return len(self.requests)

    def stop(self):
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)


# ---------------------------------------------------------------------------------------------
# Gateway configs and logs


def tls_listener(name, certificates=None, **tls):
    """A listener dict on 127.0.0.1:0 with `tls:`; certificates: list of (Cert, [names]) or
    Cert; None = `tls: {}` plus whatever `tls` keys are given."""
    block = {}
    if certificates:
        items = []
        for c in certificates:
            cert, names = (c if isinstance(c, tuple) else (c, None))
            item = {"cert": cert.cert, "key": cert.key}
            if names:
                item["server_names"] = list(names)
            items.append(item)
        block["certificates"] = items
    block.update(tls)
    return {"name": name, "address": "127.0.0.1:0", "tls": block}


def events(gw):
    """The gateway's stderr event lines, parsed (non-JSON lines as {'_raw': line})."""
    out = []
    for line in gw.stderr_text().split("\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"_raw": line})
    return out


def for_session(gw, session_id):
    return [e for e in events(gw) if e.get("id") == session_id]


def wait_event(gw, predicate, timeout=5.0, what="log event"):
    found = []

    def check():
        found[:] = [e for e in events(gw) if predicate(e)]
        return bool(found)

    try:
        harness.poll_until(check, timeout, interval=0.05, what=what)
    except TimeoutError:
        raise AssertionError("no %s within %.0fs; stderr:\n%s" % (what, timeout,
                                                                   gw.stderr_tail(60)))
    return found


def msg(e):
    return e.get("msg", e.get("_raw", ""))


def replace_file(src, dst):
    """Copy src over dst atomically (write beside it, then rename)."""
    tmp = dst + ".new"
    with open(src, "rb") as f:
        data = f.read()
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)


class TlsRawClient(harness.RawClient):
    """harness.RawClient over TLS: hand-written heads and frames inside a TLS connection."""

    def __init__(self, addr, ctx, server_hostname="a.example.com", session=None):
        super().__init__(addr)
        raw = self.sock
        raw.settimeout(IO_TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
        self.local = self.sock.getsockname()

    def peer_fingerprint(self):
        return hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest()


def temp_dir(owner, prefix="upgate-tls-"):
    """A temp dir removed at class cleanup (kept when UPGATE_IT_KEEP is set). `owner` is a
    TestCase class."""
    path = tempfile.mkdtemp(prefix=prefix)

    def remove():
        if os.environ.get("UPGATE_IT_KEEP"):
            sys.stderr.write("kept %s\n" % path)
        else:
            shutil.rmtree(path, ignore_errors=True)

    owner.addClassCleanup(remove)
    return path


class TrickleTlsClient:
    """A TLS client over memory BIOs that writes its ciphertext to the socket one byte per
    send() (TCP_NODELAY), so the gateway sees every record split at every offset; with
    write_records() the plaintext can also be cut into 1-byte TLS records."""

    def __init__(self, addr, ctx, server_hostname="a.example.com"):
        self.sock = socket.create_connection(tuple(addr), timeout=IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.plain = b""

    def _flush(self):
        data = self.outgoing.read()
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])

    def _receive(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("trickle client: nothing from the gateway in time")
        r, _, _ = select.select([self.sock], [], [], min(remaining, 0.5))
        if r:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("trickle client: gateway closed")
            self.incoming.write(data)

    def handshake(self, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            try:
                self.tls.do_handshake()
                self._flush()
                return self.tls.version()
            except ssl.SSLWantReadError:
                self._flush()
                self._receive(deadline)
        raise AssertionError("trickle client: handshake loop")

    def write_records(self, data, record_size=1):
        for i in range(0, len(data), record_size):
            self.tls.write(data[i:i + record_size])
        self._flush()

    def read_until(self, predicate, timeout=IO_TIMEOUT):
        """Read plaintext until predicate(buffer) is true; returns the buffer (kept)."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            try:
                self.plain += self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            if predicate(self.plain):
                return self.plain
            self._receive(deadline)
        raise AssertionError("trickle client: read loop")

    def close(self):
        self.sock.close()
