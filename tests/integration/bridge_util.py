"""Shared helpers for the long-poll bridge and channel-route tests (test_bridge.py,
test_channels.py).

  start_gateway / start_class_gateway
                 upgate with an `admin:` listener: the harness checks that the ready file lists
                 exactly the configured listeners, so the config is handed over as YAML text and
                 the ready file (listeners plus "admin") is checked here instead.
  http_request   one HTTP/1.1 request with http.client (admin API, the legacy app).
  Admin          the admin listener: publish, healthz, readyz (optional bearer token).
  TickerApp      docker/demo/ticker_app.py in a child process on port 0; its request log lines
                 (stderr) are kept with the time each one arrived.
  SubscriberPool many raw WebSocket / Server-Sent-Events subscribers read by one selector
                 thread: cheap enough for 1,000 connections in one Python process.
  gateway_events the JSON lines upgate writes to stderr.

Everything waits on a condition with a deadline; nothing sleeps to synchronise.
"""

import calendar
import codecs
import http.client
import json
import os
import re
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

import harness
from harness import (IO_TIMEOUT, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                     STOP_TIMEOUT, accept_key, encode_frame, parse_head, read_head, ws_key)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TICKER_APP = os.path.join(ROOT, "docker", "demo", "ticker_app.py")
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


# ---------------------------------------------------------------------------------------------
# The gateway, with an admin listener


def _check_ready(gw, config):
    want = {l["name"] for l in config.get("listeners", [])}
    if config.get("admin") is not None:
        want.add("admin")
    if set(gw.listeners) != want:
        raise harness.GatewayError("ready file lists %s, want %s"
                                   % (sorted(gw.listeners), sorted(want)))


def start_gateway(tc, config):
    """Start upgate for one test (tc: a GatewayTestCase); it must exit 0 after SIGTERM."""
    gw = harness.Gateway(harness.to_yaml(config) + "\n",
                         name="upgate[%s]" % tc.id().rsplit(".", 1)[-1])
    tc.addCleanup(gw.cleanup)
    gw.start()
    tc.addCleanup(gw.check_stopped_cleanly)
    _check_ready(gw, config)
    return gw


def start_class_gateway(cls, config):
    gw = harness.Gateway(harness.to_yaml(config) + "\n", name="upgate[%s]" % cls.__name__)
    cls.addClassCleanup(gw.cleanup)
    gw.start()
    cls.addClassCleanup(gw.check_stopped_cleanly)
    _check_ready(gw, config)
    return gw


def gateway_events(gw):
    """upgate's stderr as a list of dicts (non-JSON lines are skipped)."""
    out = []
    for line in gw.stderr_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def event_time(event):
    """The `ts` of an upgate log event ("2026-01-02T03:04:05.678Z", UTC) as a Unix time."""
    ts = event["ts"]
    whole = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    frac = re.match(r"\.(\d+)", ts[19:])
    return whole + (float("0." + frac.group(1)) if frac else 0.0)


def gateway_messages(gw, pattern):
    """(event, match) for every stderr event whose msg matches the regex `pattern`."""
    rx = re.compile(pattern)
    found = []
    for e in gateway_events(gw):
        m = rx.search(str(e.get("msg", "")))
        if m:
            found.append((e, m))
    return found


def wait_gateway_message(gw, pattern, timeout=10.0, count=1):
    """Wait until at least `count` stderr events match `pattern`; returns them all."""
    try:
        return harness.poll_until(
            lambda: (lambda f: f if len(f) >= count else None)(gateway_messages(gw, pattern)),
            timeout, interval=0.05, what="upgate log line /%s/" % pattern)
    except TimeoutError:
        raise AssertionError("no upgate log line matching /%s/ within %.0fs; stderr:\n%s"
                             % (pattern, timeout, gw.stderr_tail(60)))


def workers_of(gw, subscribers, timeout=10.0):
    """The worker indexes that served these (ended) subscribers, from their access-log lines.
    Relies on upgate's session-id layout: (per-worker counter << 8) | worker index
    (gateway/proxy/worker.cc); used only to check that a test really spans both workers."""
    want = {harness.hostport(c.local) for c in subscribers}
    found = {}

    def all_logged():
        for e in gw.access_log():
            if e.get("client") in want and isinstance(e.get("id"), int):
                found[e["client"]] = e["id"] & 0xFF
        return len(found) == len(want)

    try:
        harness.poll_until(all_logged, timeout, interval=0.1, what="access-log lines")
    except TimeoutError:
        raise AssertionError("%d of %d subscribers have an access-log line"
                             % (len(found), len(want)))
    return set(found.values())


# ---------------------------------------------------------------------------------------------
# HTTP


class HttpAnswer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<HTTP %d %r %r>" % (self.status, self.headers, self.body[:300])


def http_request(addr, method, path, body=None, headers=None, timeout=IO_TIMEOUT):
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return HttpAnswer(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


class Admin:
    """upgate's admin listener."""

    def __init__(self, gw, token=None):
        self.addr = gw.addr("admin")
        self.token = token

    def request(self, method, path, body=None, headers=None, token=True):
        h = dict(headers or {})
        if token is True and self.token:
            h["Authorization"] = "Bearer " + self.token
        elif isinstance(token, str):
            h["Authorization"] = token
        return http_request(self.addr, method, path, body, h)

    def publish(self, channel, payload, content_type=None, query="", check=True):
        """POST /publish/{channel}; returns the decoded JSON answer (check=True) or the answer."""
        body = payload.encode("utf-8") if isinstance(payload, str) else payload
        headers = {"Content-Type": content_type or "text/plain; charset=utf-8"}
        path = "/publish/" + urllib.parse.quote(channel, safe="") + query
        answer = self.request("POST", path, body, headers)
        if not check:
            return answer
        if answer.status != 200:
            raise AssertionError("publish to %r: %r" % (channel, answer))
        return answer.json()


# ---------------------------------------------------------------------------------------------
# The bundled legacy app


class TickerApp:
    """docker/demo/ticker_app.py as a child process. `log` holds (monotonic time, line) for every
    stderr line, in arrival order."""

    def __init__(self, symbols="GOOG", tick=0.05, hold=None, quiet=False, seed=7, port=0,
                 extra=()):
        self.args = [PYTHON, TICKER_APP, "--host", "127.0.0.1", "--port", str(port),
                     "--symbols", symbols, "--tick", str(tick), "--seed", str(seed)]
        if hold is not None:
            self.args += ["--hold", str(hold)]
        if quiet:
            self.args.append("--quiet")
        self.args += list(extra)
        self.proc = None
        self.addr = None
        self.log = []
        self._log_lock = threading.Lock()
        self._reader = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True, name="ticker-log")
        self._reader.start()
        ready, _, _ = select.select([self.proc.stdout], [], [], harness.READY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        m = re.search(rb"http://([0-9.]+):(\d+)/", line)
        if not m:
            self.stop()
            raise RuntimeError("ticker app did not print its address: %r; stderr: %s"
                               % (line, self.log_text()[-2000:]))
        self.addr = (m.group(1).decode(), int(m.group(2)))
        return self

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            with self._log_lock:
                self.log.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))

    def log_lines(self):
        with self._log_lock:
            return list(self.log)

    def log_text(self):
        return "\n".join(l for _, l in self.log_lines())

    def get(self, path):
        return http_request(self.addr, "GET", path)

    def post(self, path, body=b""):
        return http_request(self.addr, "POST", path, body,
                            {"Content-Type": "application/json"})

    def stats(self):
        answer = self.get("/stats")
        if answer.status != 200:
            raise AssertionError("ticker /stats: %r" % answer)
        return answer.json()

    def fail(self, count):
        answer = self.post("/admin/fail?count=%d" % count)
        if answer.status != 200:
            raise AssertionError("ticker /admin/fail: %r" % answer)

    def tick(self, symbol=None):
        answer = self.post("/admin/tick" + ("?symbol=" + symbol if symbol else ""))
        if answer.status != 200:
            raise AssertionError("ticker /admin/tick: %r" % answer)
        return answer.json()["updates"]

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return self.proc.returncode


# ---------------------------------------------------------------------------------------------
# Subscribers


class SseParser:
    """The EventSource parsing algorithm (HTML Living Standard, "Interpreting an event
    stream"), incremental: lines end at CRLF, LF or a lone CR; `data:` lines are joined with
    LF; a blank line dispatches. feed() returns the [(id, data)] completed by the new bytes."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""
        self._data = []
        self._id = None

    def feed(self, data):
        self._text += self._decoder.decode(bytes(data))
        events = []
        text, pos, n = self._text, 0, len(self._text)
        for _ in range(10 ** 7):
            i_n = text.find("\n", pos)
            i_r = text.find("\r", pos)
            ends = [i for i in (i_n, i_r) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if text[end] == "\r":
                if end + 1 >= n:
                    break  # maybe the first half of a CRLF: wait for the next byte
                nxt = end + 2 if text[end + 1] == "\n" else end + 1
            else:
                nxt = end + 1
            line, pos = text[pos:end], nxt
            if line == "":
                if self._data:
                    events.append((self._id, "\n".join(self._data)))
                self._data = []
                continue
            if line.startswith(":"):
                continue
            field, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "id":
                self._id = value
        self._text = text[pos:]
        return events


class Subscriber:
    """One raw subscriber connection (WebSocket or SSE). Fields are written by the pool's reader
    thread; read them under pool.cond (or after the pool stopped)."""

    def __init__(self, index, sock, kind, path):
        self.index = index
        self.sock = sock
        self.kind = kind          # "ws" or "sse"
        self.path = path
        self.local = sock.getsockname()
        self.buf = bytearray()
        self.messages = []        # ws: (opcode, payload bytes); sse: (id, data str)
        self.raw_sse = bytearray()
        self.close_code = None    # ws: code of the close frame received
        self.close_reason = None
        self.eof = None           # "eof" / "reset" once the connection ended
        self.errors = []
        self.paused = False
        self._frag_op = None
        self._frag = bytearray()
        self._sse = SseParser() if kind == "sse" else None

    def texts(self):
        return [p.decode("utf-8") for op, p in self.messages if op == OP_TEXT]

    def __repr__(self):
        return "<Subscriber %d %s %s msgs=%d close=%r eof=%r>" % (
            self.index, self.kind, self.path, len(self.messages), self.close_code, self.eof)


class SubscriberPool:
    """Many subscribers on one selector thread. connect_ws/connect_sse do the handshakes in the
    calling thread (blocking, bounded), then hand the sockets to the reader thread."""

    def __init__(self, gw_addr, auto_close_reply=True, name="subscribers"):
        self.addr = tuple(gw_addr)
        self.auto_close_reply = auto_close_reply
        self.name = name
        self.clients = []
        self.cond = threading.Condition()
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    # -- connecting -------------------------------------------------------------------------
    def _open(self, source, rcvbuf):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.settimeout(IO_TIMEOUT)
        sock.connect(self.addr)
        return sock

    def connect_ws(self, path, count=1, sources=("127.0.0.1",), rcvbuf=None, headers=()):
        out = []
        for i in range(count):
            sock = self._open(sources[i % len(sources)], rcvbuf)
            key = ws_key()
            sock.sendall(harness.ws_request(path, key=key, extra=headers))
            head, leftover = read_head(sock)
            start, hdrs = parse_head(head)
            if " 101 " not in start + " ":
                sock.close()
                raise AssertionError("subscriber %d on %s: handshake answered %r"
                                     % (i, path, head[:500]))
            accept = harness.header_values(hdrs, "Sec-WebSocket-Accept")
            if accept != [accept_key(key)]:
                sock.close()
                raise AssertionError("bad Sec-WebSocket-Accept %r" % accept)
            out.append(self._adopt(sock, "ws", path, leftover))
        return out

    def connect_sse(self, path, count=1, sources=("127.0.0.1",)):
        out = []
        for i in range(count):
            sock = self._open(sources[i % len(sources)], None)
            sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                          "\r\n" % path).encode())
            head, leftover = read_head(sock)
            start, hdrs = parse_head(head)
            ctype = ",".join(harness.header_values(hdrs, "Content-Type"))
            if not start.startswith("HTTP/1.1 200") or "text/event-stream" not in ctype:
                sock.close()
                raise AssertionError("SSE subscriber on %s: answered %r" % (path, head[:500]))
            out.append(self._adopt(sock, "sse", path, leftover))
        return out

    def _adopt(self, sock, kind, path, leftover):
        sock.setblocking(False)
        c = Subscriber(len(self.clients), sock, kind, path)
        with self.cond:
            self.clients.append(c)
            if leftover:
                self._feed(c, leftover)
        self._command(("add", c))
        return c

    def _command(self, cmd):
        with self.cond:
            self._pending.append(cmd)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- control ----------------------------------------------------------------------------
    def pause(self, c):
        """Stop reading c (its socket buffers fill up: a slow subscriber)."""
        c.paused = True
        self._command(("pause", c))

    def resume(self, c):
        c.paused = False
        self._command(("resume", c))

    def send(self, c, opcode, payload, timeout=IO_TIMEOUT):
        """Send one masked frame from subscriber c (main thread)."""
        data = encode_frame(opcode, payload, mask=True)
        self._sendall(c, data, timeout)

    def send_close(self, c, code=1000):
        self.send(c, OP_CLOSE, harness.close_payload(code))

    def _sendall(self, c, data, timeout):
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if not view:
                return
            try:
                n = c.sock.send(view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("subscriber %d: could not send within %.0fs" % (c.index, timeout))
            select.select([], [c.sock], [], min(remaining, 0.2))
        raise AssertionError("send: too many attempts")

    def close_all(self, timeout=10.0):
        """Clean close handshake for every open WebSocket subscriber; SSE ones are just closed.
        Waits until each connection ended (or the timeout)."""
        ws = [c for c in self.clients if c.kind == "ws" and c.eof is None and c.close_code is None]
        for c in ws:
            try:
                self.send_close(c)
            except OSError:
                pass
        try:
            self.wait(lambda: all(c.eof is not None for c in ws), timeout,
                      what="close handshakes of %d subscribers" % len(ws))
        finally:
            for c in self.clients:
                if c.kind == "sse" and c.eof is None:
                    self._command(("drop", c))

    def stop(self):
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(STOP_TIMEOUT)
        for c in self.clients:
            try:
                c.sock.close()
            except OSError:
                pass
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- waiting ----------------------------------------------------------------------------
    def wait(self, predicate, timeout, what="subscribers"):
        """Wait (under the pool's lock) until predicate() is true; AssertionError otherwise."""
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError("%s: timed out after %.0fs waiting for %s; %s"
                                     % (self.name, timeout, what, self.summary()))

    def check(self, predicate):
        """predicate() evaluated once under the pool's lock."""
        with self.cond:
            return predicate()

    def summary(self, limit=5):
        counts = sorted(len(c.messages) for c in self.clients)
        closed = [c for c in self.clients if c.eof or c.close_code]
        errors = [e for c in self.clients for e in c.errors]
        return ("%d subscribers, messages min/max %s/%s, %d closed %r, errors %r"
                % (len(self.clients), counts[0] if counts else None,
                   counts[-1] if counts else None, len(closed), closed[:limit], errors[:limit]))

    # -- the reader thread ------------------------------------------------------------------
    def _loop(self):
        for _ in range(10 ** 9):
            if self._stop.is_set():
                return
            with self.cond:
                pending, self._pending = self._pending, []
            for op, c in pending:
                self._apply(op, c)
            try:
                events = self.sel.select(0.1)
            except (OSError, ValueError):
                return
            touched = False
            for key, _ in events:
                c = key.data
                if c is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                touched = self._read(c) or touched
            if touched:
                with self.cond:
                    self.cond.notify_all()

    def _apply(self, op, c):
        registered = c.sock.fileno() >= 0 and self._registered(c)
        if op in ("add", "resume") and not c.paused and c.eof is None and not registered:
            self.sel.register(c.sock, selectors.EVENT_READ, c)
        elif op in ("pause", "drop") and registered:
            self.sel.unregister(c.sock)
        if op == "drop":
            with self.cond:
                c.eof = c.eof or "closed by test"
                self.cond.notify_all()
            try:
                c.sock.close()
            except OSError:
                pass

    def _registered(self, c):
        try:
            self.sel.get_key(c.sock)
            return True
        except (KeyError, ValueError):
            return False

    def _read(self, c):
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            data = None
            how = "reset"
        except OSError as e:
            data = None
            how = "error %r" % e
        else:
            how = "eof"
        if not data:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            with self.cond:
                c.eof = how
            return True
        with self.cond:
            self._feed(c, data)
        return True

    def _feed(self, c, data):
        if c.kind == "sse":
            c.raw_sse += data
            c.messages.extend(c._sse.feed(data))
            return
        c.buf += data
        buf = c.buf
        pos = 0
        n = len(buf)
        for _ in range(10 ** 7):
            if n - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            fin, op = b0 & 0x80, b0 & 0x0F
            length = b1 & 0x7F
            hlen = 2
            if b1 & 0x80:
                c.errors.append("masked frame from the server")
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                hlen = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                hlen = 10
            if n - pos < hlen + length:
                break
            payload = bytes(buf[pos + hlen:pos + hlen + length])
            pos += hlen + length
            if op == OP_CLOSE:
                if c.close_code is None:
                    c.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    c.close_reason = payload[2:].decode("utf-8", "replace")
                    if self.auto_close_reply:
                        try:
                            c.sock.send(encode_frame(OP_CLOSE, payload[:2], mask=True))
                        except OSError:
                            pass
            elif op == OP_PING:
                try:
                    c.sock.send(encode_frame(OP_PONG, payload, mask=True))
                except OSError:
                    pass
            elif op == OP_PONG:
                pass
            elif op in (OP_TEXT, OP_BINARY):
                if c._frag_op is not None:
                    c.errors.append("new data frame inside a fragmented message")
                if fin:
                    c.messages.append((op, payload))
                else:
                    c._frag_op, c._frag = op, bytearray(payload)
            elif op == OP_CONT:
                if c._frag_op is None:
                    c.errors.append("continuation without a message")
                else:
                    c._frag += payload
                    if fin:
                        c.messages.append((c._frag_op, bytes(c._frag)))
                        c._frag_op, c._frag = None, bytearray()
            else:
                c.errors.append("unknown opcode %d" % op)
        if pos:
            del buf[:pos]


def seq_of(payload):
    """The `seq` of a ticker update (a JSON object), or None for anything else."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if isinstance(doc, dict) and "seq" in doc and "price" in doc:
        return doc["seq"]
    return None
