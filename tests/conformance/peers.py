"""The two peers of the conformance suite, both recording every byte they send and receive.

LenientUpstream  a raw asyncio TCP server (in its own thread) that does the server side of the
                 handshake and then validates NOTHING: in echo mode it sends every frame back
                 unmasked with the same FIN/RSV/opcode/payload (pings are answered with pongs),
                 otherwise the test scripts what it sends. So any violation that reaches it, or
                 that it sends, is upgate's to catch.
Client           a blocking raw client (the test thread's) that writes whatever bytes it is
                 given and records what comes back.

Both answer a close frame with a close frame (echoing the code) unless they sent one first,
then wait for the TCP connection to end: the upstream half-closes (as a server may), the
client waits for the gateway to close. Both expose the same waiting API (wait, wait_close,
wait_end) so checks can treat "the violator" and "the other side" alike.
"""

import asyncio
import select
import socket
import threading
import time

import harness
from wire import (OP_CLOSE, OP_PING, OP_PONG, FrameStream, cframe, uframe)

EXPECT_TIMEOUT = 3.0  # a wait for something the gateway must do promptly


class CaseFailure(AssertionError):
    pass


def _reply_close_payload(payload):
    """What a peer sends back in its close reply: the code, if the close had one."""
    return bytes(payload[:2]) if len(payload) >= 2 else b""


# ---------------------------------------------------------------------------------------------
# Upstream side


class Expectations:
    """What a test waits for on either side of the gateway: bytes, a close frame, the end of TCP.

    The class using it has rx (bytes received), frames (parsed frames), ended (why TCP ended, or
    None), wait(predicate, timeout, what) and SIDE, the name its failures start with.
    """
    SIDE = "peer"

    def wait_rx(self, n, what=None, timeout=EXPECT_TIMEOUT):
        self.wait(lambda: len(self.rx) >= n or self.ended, timeout,
                  what or "%d received bytes" % n)
        if len(self.rx) < n:
            raise CaseFailure("%s: connection ended (%s) after %d of %d expected bytes; "
                              "frames %r" % (self.SIDE, self.ended, len(self.rx), n,
                                             self.frames[-4:]))

    def wait_close(self, timeout=EXPECT_TIMEOUT):
        """The first close frame received, or None if TCP ended without one."""
        def done():
            return any(f.opcode == OP_CLOSE for f in self.frames) or self.ended
        self.wait(done, timeout, "close frame from the gateway")
        for f in self.frames:
            if f.opcode == OP_CLOSE:
                return f
        return None

    def wait_end(self, timeout=EXPECT_TIMEOUT):
        self.wait(lambda: self.ended, timeout, "end of the TCP connection from the gateway")


class UpConn(Expectations):
    """One connection accepted by the lenient upstream. Mutated on the upstream's loop under
    `cond`; read by the test thread under `cond`."""
    SIDE = "upstream"

    is_client = False
    side = "upstream"

    def __init__(self, server, token, settings, head):
        self.server = server
        self.cond = server.cond
        self.token = token
        self.echo = settings.get("echo", True)
        self.head = head
        _, self.headers = harness.parse_head(head)
        self.rx = bytearray()
        self.tx = bytearray()
        self.frames = []
        self.tx_frames = []
        self._rx_stream = FrameStream()
        self._tx_stream = FrameStream()
        self.sent_close = False
        self.got_close = False
        self.ended = None  # "eof" | "reset" when the gateway's side of TCP ended
        self.deflate = False
        self.writer = None
        self._eof_sent = False

    # -- on the loop ---------------------------------------------------------------------
    def _write(self, data):
        if self.writer is None or self.writer.is_closing() or self._eof_sent:
            return
        with self.cond:
            self.tx += data
            for f in self._tx_stream.feed(data):
                self.tx_frames.append(f)
                if f.opcode == OP_CLOSE:
                    self.sent_close = True
            self.cond.notify_all()
        self.writer.write(data)
        if self.sent_close and self.got_close:
            self._half_close()

    def _half_close(self):
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except (OSError, RuntimeError):
            pass

    def _on_data(self, data):
        # Under the lock throughout, so that a test that sees these bytes in rx also sees the
        # echo or close reply they caused in tx.
        with self.cond:
            self.rx += data
            new = self._rx_stream.feed(data)
            self.frames.extend(new)
            self.cond.notify_all()
            for f in new:
                if self.got_close:
                    continue  # nothing after a close is answered
                if f.opcode == OP_CLOSE:
                    self.got_close = True
                    if not self.sent_close:
                        self._write(uframe(OP_CLOSE, _reply_close_payload(f.payload)))
                    else:
                        self._half_close()
                elif self.echo and not self.sent_close:
                    if f.opcode == OP_PING:
                        self._write(uframe(OP_PONG, f.payload, rsv=f.rsv))
                    elif f.opcode != OP_PONG:
                        self._write(uframe(f.opcode, f.payload, fin=f.fin, rsv=f.rsv))

    # -- from the test thread ------------------------------------------------------------
    def send(self, data):
        """Write from the test thread; returns once the bytes are handed to the transport (and
        recorded in tx)."""
        data = bytes(data)
        done = threading.Event()

        def go():
            try:
                self._write(data)
            finally:
                done.set()

        self.server.loop.call_soon_threadsafe(go)
        if not done.wait(5):
            raise CaseFailure("upstream: write not done within 5 s")

    def send_slowly(self, data, chunk=1, pause=0.002):
        for i in range(0, len(data), chunk):
            self.send(data[i:i + chunk])
            time.sleep(pause)

    def wait(self, predicate, timeout=EXPECT_TIMEOUT, what="condition"):
        with self.cond:
            if self.cond.wait_for(predicate, timeout):
                return True
        raise CaseFailure("upstream: no %s within %.1fs (rx %d bytes, frames %r, ended %s)"
                          % (what, timeout, len(self.rx), self.frames[-4:], self.ended))

    def snapshot(self):
        with self.cond:
            return bytes(self.rx), bytes(self.tx), list(self.frames)


class LenientUpstream:
    """Raw asyncio server on 127.0.0.1:0 in a background thread.

    The request path names a token (last path segment); expect(token, ...) registered the
    connection's settings beforehand:
      echo    send frames back (default True)
      deflate answer a permessage-deflate offer with "permessage-deflate" (default False)
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.conns = {}
        self.settings = {}
        self.errors = []
        self.loop = None
        self.addr = None
        self._thread = None
        self._stopped = None

    def start(self):
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name="lenient-upstream")
        self._thread.start()
        if not started.wait(10) or self.addr is None:
            raise RuntimeError("lenient upstream did not start: %r" % self.errors)
        return self

    def _run(self, started):
        try:
            asyncio.run(self._main(started))
        except Exception as exc:
            self.errors.append(repr(exc))
            started.set()

    async def _main(self, started):
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._handle, harness.LOOPBACK, 0, backlog=256)
        self.addr = server.sockets[0].getsockname()[:2]
        started.set()
        async with server:
            await self._stopped.wait()

    def expect(self, token, **settings):
        with self.cond:
            self.settings[token] = settings

    def wait_conn(self, token, timeout=EXPECT_TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(lambda: token in self.conns, timeout):
                raise CaseFailure("the upstream got no connection for %s within %.1fs (errors %r)"
                                  % (token, timeout, self.errors[-3:]))
            return self.conns[token]

    async def _handle(self, reader, writer):
        conn = None
        try:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            head = head[:-4]
            start, headers = harness.parse_head(head)
            path = start.split(" ")[1] if len(start.split(" ")) > 1 else "/"
            token = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            with self.cond:
                settings = self.settings.pop(token, {})
            conn = UpConn(self, token, settings, head)
            key = harness.header_values(headers, "Sec-WebSocket-Key")
            resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                    % harness.accept_key(key[0] if key else ""))
            offers = ",".join(harness.header_values(headers, "Sec-WebSocket-Extensions"))
            if settings.get("deflate") and "permessage-deflate" in offers:
                resp += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                conn.deflate = True
            conn.writer = writer
            # with_101: frames in the same write as the 101 (the gateway gets them together
            # with the response head).
            with_101 = bytes(settings.get("with_101", b""))
            conn.tx += with_101
            for f in conn._tx_stream.feed(with_101):
                conn.tx_frames.append(f)
                if f.opcode == OP_CLOSE:
                    conn.sent_close = True
            writer.write((resp + "\r\n").encode() + with_101)
            with self.cond:
                self.conns[token] = conn
                self.cond.notify_all()
            for _ in range(10 ** 7):
                try:
                    data = await reader.read(1 << 17)
                except ConnectionResetError:
                    with self.cond:
                        conn.ended = "reset"
                        self.cond.notify_all()
                    break
                if not data:
                    with self.cond:
                        conn.ended = "eof"
                        self.cond.notify_all()
                    break
                conn._on_data(data)
        except Exception as exc:  # recorded, reported by the runner
            self.errors.append("%s: %r" % (conn.token if conn else "?", exc))
        finally:
            if conn is not None and conn.ended is None:
                with self.cond:
                    conn.ended = "closed-by-upstream"
                    self.cond.notify_all()
            writer.close()

    def stop(self):
        if self.loop is not None and self._stopped is not None:
            try:
                self.loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(10)


# ---------------------------------------------------------------------------------------------
# Client side


class Client(Expectations):
    """Raw client socket driven by the test thread. Reading happens inside wait()."""
    SIDE = "client"

    is_client = True
    side = "client"

    def __init__(self, addr, path, extra=(), close_on_eof=True, early=b""):
        # close_on_eof: close the socket as soon as the gateway's FIN arrives, as real clients
        # do once the server has ended the connection (False keeps it open, half-closed).
        self.close_on_eof = close_on_eof
        self.sock = socket.create_connection(tuple(addr), timeout=harness.IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = harness.ws_key()
        # `early`: frames written together with the request head, before the 101.
        self.sock.sendall(harness.ws_request(path, key=key, extra=extra) + early)
        try:
            head, leftover = harness.read_head(self.sock, harness.IO_TIMEOUT)
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise CaseFailure("client: no HTTP response head from the gateway: %s" % exc)
        start, self.headers = harness.parse_head(head)
        parts = start.split(" ")
        if len(parts) < 2 or parts[1] != "101":
            raise CaseFailure("handshake through the gateway failed: %r" % head[:300])
        if harness.header_values(self.headers, "Sec-WebSocket-Accept") != [harness.accept_key(key)]:
            raise CaseFailure("bad Sec-WebSocket-Accept: %r" % head[:300])
        self.rx = bytearray()
        self.tx = bytearray()
        self.frames = []
        self.tx_frames = []
        self._rx_stream = FrameStream()
        self._tx_stream = FrameStream()
        self.sent_close = False
        self.got_close = False
        self.ended = None
        self.send_error = None
        self.tx += early
        for f in self._tx_stream.feed(early):
            self.tx_frames.append(f)
            if f.opcode == OP_CLOSE:
                self.sent_close = True
        self._on_data(leftover)

    def extension(self):
        return ",".join(harness.header_values(self.headers, "Sec-WebSocket-Extensions"))

    def _on_data(self, data):
        if not data:
            return
        self.rx += data
        for f in self._rx_stream.feed(data):
            self.frames.append(f)
            if self.got_close:
                continue
            if f.opcode == OP_CLOSE:
                self.got_close = True
                if not self.sent_close:
                    self.send(cframe(OP_CLOSE, _reply_close_payload(f.payload)), quiet=True)

    def send(self, data, quiet=False):
        data = bytes(data)
        try:
            self.sock.settimeout(harness.IO_TIMEOUT)
            self.sock.sendall(data)
        except OSError as exc:
            self.send_error = exc
            if not quiet:
                raise CaseFailure("client: send failed: %r" % exc)
            return
        self.tx += data
        for f in self._tx_stream.feed(data):
            self.tx_frames.append(f)
            if f.opcode == OP_CLOSE:
                self.sent_close = True

    def send_slowly(self, data, chunk=1, pause=0.002):
        for i in range(0, len(data), chunk):
            self.send(data[i:i + chunk])
            time.sleep(pause)

    def _pump(self, timeout):
        if self.ended or self.sock.fileno() < 0:
            return
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return
        try:
            chunk = self.sock.recv(1 << 18)
        except ConnectionResetError:
            self.ended = "reset"
            return
        except OSError as exc:
            self.ended = "error %r" % exc
            return
        if not chunk:
            self.ended = "eof"
            if self.close_on_eof:
                self.close()
            return
        self._on_data(chunk)

    def wait(self, predicate, timeout=EXPECT_TIMEOUT, what="condition"):
        deadline = time.monotonic() + timeout
        for _ in range(10 ** 6):
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                break
            self._pump(min(remaining, 0.5))
        if predicate():
            return True
        raise CaseFailure("client: no %s within %.1fs (rx %d bytes, frames %r, ended %s)"
                          % (what, timeout, len(self.rx), self.frames[-4:], self.ended))

    def snapshot(self):
        return bytes(self.rx), bytes(self.tx), list(self.frames)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
