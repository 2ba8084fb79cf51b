"""Integration-test harness for upgate: spawn the real binary and the peers it talks to.

Everything listens on 127.0.0.1 with port 0; nothing sleeps to synchronise (waits poll a
condition with a deadline); every loop is bounded in count and in time.

Run with Debian's interpreter (/usr/bin/python3), which has python3-websockets 10.4.

Pieces:
  Gateway            upgate with a generated YAML config in a temp dir; ready-file parsing;
                     stdout/stderr captured to files; SIGTERM -> wait 10 s -> SIGKILL teardown.
  GatewayTestCase    unittest base: starts gateways and fails the test unless they exit 0.
  EchoUpstream       python-websockets echo server in a background thread; records requests.
  EchoUpstreamProcess  the same echo server in a child process (for load: its own GIL).
  RawUpstream        TCP server running a handler per connection in threads (scripted peers).
  RefusedPort, BlackholeUpstream, silent/forbidden handlers: misbehaving upstreams.
  RawClient          hand-written request heads, response-head parsing, WebSocket frames.
"""

import asyncio
import base64
import datetime
import hashlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import websockets

import wire

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOOPBACK = "127.0.0.1"

# Limits on everything that waits, so that a broken gateway fails tests instead of hanging them.
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# Process environment


def raise_fd_limit():
    """Raise the soft open-files limit to the hard limit (each proxied session costs 2 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


raise_fd_limit()


def upgate_bin():
    """Path of the binary under test: $UPGATE_BIN (set by ctest), else the usual build dirs."""
    env = os.environ.get("UPGATE_BIN")
    if env:
        return env
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for build in ("build", "build-it"):
        cand = os.path.join(root, build, "gateway", "upgate")
        if os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("upgate binary not found: set UPGATE_BIN")


def poll_until(predicate, timeout, interval=0.02, what="condition"):
    """Call predicate() until it returns a truthy value or `timeout` seconds pass.

    Returns the value; raises TimeoutError naming `what` otherwise. The short pause between
    polls only paces the loop; the deadline is what bounds it."""
    deadline = time.monotonic() + timeout
    max_iterations = int(timeout / interval) + 1000
    for _ in range(max_iterations):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))


# ---------------------------------------------------------------------------------------------
# YAML emission (the stdlib has no YAML; configs are small dict/list/scalar trees)

_PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9_/][A-Za-z0-9_./:-]*$")
_YAML_SPECIAL = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _yaml_scalar(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if _PLAIN_SCALAR.match(text) and text.lower() not in _YAML_SPECIAL:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(node, indent=0):
    """Block-style YAML for nested dicts/lists of scalars (order preserved)."""
    pad = " " * indent
    lines = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                lines.append("%s%s:" % (pad, key))
                lines.append(to_yaml(value, indent + 2))
            elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
                lines.append("%s%s:" % (pad, key))
                lines.append(to_yaml(value, indent + 2))
            elif isinstance(value, list):
                lines.append("%s%s: [%s]" % (pad, key, ", ".join(_yaml_scalar(v) for v in value)))
            elif isinstance(value, dict):
                lines.append("%s%s: {}" % (pad, key))
            else:
                lines.append("%s%s: %s" % (pad, key, _yaml_scalar(value)))
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict) and item:
                body = to_yaml(item, indent + 2).split("\n")
                body[0] = pad + "- " + body[0][indent + 2:]
                lines.append("\n".join(body))
            else:
                lines.append("%s- %s" % (pad, _yaml_scalar(item)))
    else:
        lines.append(pad + _yaml_scalar(node))
    return "\n".join(lines)


def _merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def hostport(addr):
    return "%s:%d" % (addr[0], addr[1])


def make_config(upstreams, routes, **overrides):
    """A full gateway config dict with test-friendly defaults.

    upstreams: {name: {"endpoints": [...], ...}} (endpoint tuples are turned into "ip:port")
    routes:    list of route dicts; `kind: websocket` is filled in when missing.
    overrides: deep-merged into the top level (e.g. timeouts={"idle": "1s"}).
    """
    ups = {}
    for name, up in upstreams.items():
        up = dict(up)
        up["endpoints"] = [e if isinstance(e, str) else hostport(e) for e in up["endpoints"]]
        ups[name] = up
    rts = []
    for r in routes:
        r = dict(r)
        r.setdefault("kind", "websocket")
        rts.append(r)
    config = {
        "workers": 2,
        "drain_timeout": "2s",
        "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
        "upstreams": ups,
        "routes": rts,
        "limits": {"max_head_bytes": "16KiB", "max_headers": 100, "high_water": "256KiB"},
        "timeouts": {"head": "10s", "idle": 0, "half_close": "5s"},
        "log": {"level": "info", "access_log": True},
    }
    return _merge(config, overrides)


# ---------------------------------------------------------------------------------------------
# The gateway process


class GatewayError(AssertionError):
    pass


class Gateway:
    """One upgate process with its own temp dir (config, ready file, stdout, stderr)."""

    def __init__(self, config, name="upgate"):
        self.config = config
        self.name = name
        self.dir = None
        self.proc = None
        self.listeners = {}
        self.returncode = None
        self.killed = False
        self._files = []

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout=READY_TIMEOUT):
        self.dir = tempfile.mkdtemp(prefix="upgate-it-")
        self.config_path = os.path.join(self.dir, "upgate.yaml")
        self.ready_path = os.path.join(self.dir, "ready")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        text = self.config if isinstance(self.config, str) else to_yaml(self.config) + "\n"
        with open(self.config_path, "w") as f:
            f.write(text)
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        self._files = [out, err]
        self.proc = subprocess.Popen(
            [upgate_bin(), "-c", self.config_path, "--ready-file", self.ready_path],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True)
        self.started_at = time.monotonic()

        def ready():
            if os.path.exists(self.ready_path):
                return True
            if self.proc.poll() is not None:
                raise GatewayError("upgate exited with %s before writing its ready file\n"
                                   "config:\n%s\nstderr:\n%s"
                                   % (self.proc.returncode, text, self.stderr_tail()))
            return False

        try:
            poll_until(ready, timeout, what="upgate ready file")
        except TimeoutError:
            raise GatewayError("upgate wrote no ready file within %.0fs\nstderr:\n%s"
                               % (timeout, self.stderr_tail()))
        content = self.read_ready_file()
        if not isinstance(self.config, str):
            want = {l["name"] for l in self.config.get("listeners", [])}
            admin = self.config.get("admin")
            if isinstance(admin, dict) and admin.get("enabled", True):
                want.add("admin")  # the admin listener's line ("admin ip:port")
            if want != set(self.listeners):
                raise GatewayError("ready file lists %s, config has %s (file: %r)"
                                   % (sorted(self.listeners), sorted(want), content))
        return self

    def read_ready_file(self):
        """(Re)reads "<listener> <ip:port>" lines into self.listeners (a reload rewrites the
        file); returns the file's text."""
        with open(self.ready_path) as f:
            content = f.read()
        listeners = {}
        for line in content.splitlines():
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or ":" not in parts[1]:
                raise GatewayError("malformed ready-file line %r in %r" % (line, content))
            host, port = parts[1].rsplit(":", 1)
            listeners[parts[0]] = (host.strip("[]"), int(port))
        self.listeners = listeners
        return content

    def addr(self, listener="public"):
        return self.listeners[listener]

    def url(self, path="/chat", listener="public"):
        host, port = self.addr(listener)
        return "ws://%s:%d%s" % (host, port, path)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to `timeout`, SIGKILL fallback. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.returncode = self.proc.returncode
        for f in self._files:
            f.flush()
        return self.returncode

    def check_stopped_cleanly(self):
        """Stop and raise unless upgate exited 0 on its own after SIGTERM."""
        code = self.stop()
        if self.killed:
            raise GatewayError("%s did not exit within %.0fs of SIGTERM (SIGKILLed)\nstderr:\n%s"
                               % (self.name, STOP_TIMEOUT, self.stderr_tail()))
        if code != 0:
            raise GatewayError("%s exited with %s (want 0)\nstderr:\n%s"
                               % (self.name, describe_exit(code), self.stderr_tail()))

    def cleanup(self):
        try:
            self.stop()
        finally:
            for f in self._files:
                f.close()
            self._files = []
            if self.dir and os.environ.get("UPGATE_IT_KEEP"):
                sys.stderr.write("kept %s\n" % self.dir)
            elif self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    # -- logs -----------------------------------------------------------------------------
    def stdout_text(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr_tail(self, lines=40):
        try:
            return "\n".join(self.stderr_text().splitlines()[-lines:])
        except OSError:
            return "<no stderr>"

    def access_log(self):
        """Complete JSON lines of stdout; a line that is not JSON is returned as {'_raw': line}."""
        entries = []
        text = self.stdout_text()
        for line in text.split("\n")[:-1]:  # the last piece is incomplete (or empty)
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"_raw": line})
        return entries

    def wait_access_log(self, predicate, timeout=5.0, what="access-log line"):
        found = []

        def check():
            for e in self.access_log():
                if "_raw" not in e and predicate(e):
                    found.append(e)
                    return True
            return False

        try:
            poll_until(check, timeout, interval=0.05, what=what)
        except TimeoutError:
            raise AssertionError("no %s within %.0fs; stdout so far:\n%s"
                                 % (what, timeout, self.stdout_text()[-4000:]))
        return found[0]

    def access_log_for_client(self, client_addr, timeout=5.0):
        """The line of the session from `client_addr`. The kernel hands a client's port out again
        once it is closed, so for a RawClient's address only lines written after it connected
        count: an earlier session from the same port is someone else's."""
        want = hostport(client_addr)
        since = _connected_at.get(tuple(client_addr[:2]))

        def mine(e):
            # Half a millisecond of slack for the float round trip of equal milliseconds.
            return e.get("client") == want and (
                since is None or _log_time(e) >= since - 0.0005)

        return self.wait_access_log(mine, timeout, what="access-log line for client %s" % want)

    # -- resources ------------------------------------------------------------------------
    def rss_kib(self):
        """VmRSS of upgate plus any child processes it forked, in KiB."""
        total = 0
        for pid in _process_tree(self.pid):
            total += _vmrss_kib(pid)
        return total


def describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return "signal %s" % signal.Signals(-code).name
        except ValueError:
            return "signal %d" % -code
    return "code %d" % code


def _vmrss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _process_tree(root):
    pids, todo = [], [root]
    for _ in range(1000):
        if not todo:
            break
        pid = todo.pop()
        pids.append(pid)
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                todo.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


class GatewayTestCase(unittest.TestCase):
    """Starts gateways and peers whose teardown is part of the test's verdict."""

    maxDiff = 4000

    def start_gateway(self, config):
        gw = Gateway(config, name="upgate[%s]" % self.id().rsplit(".", 1)[-1])
        self.addCleanup(gw.cleanup)
        gw.start()
        self.addCleanup(gw.check_stopped_cleanly)
        return gw

    @classmethod
    def start_class_gateway(cls, config):
        gw = Gateway(config, name="upgate[%s]" % cls.__name__)
        cls.addClassCleanup(gw.cleanup)
        gw.start()
        cls.addClassCleanup(gw.check_stopped_cleanly)
        return gw

    def start_peer(self, peer):
        self.addCleanup(peer.stop)
        peer.start()
        return peer

    @classmethod
    def start_class_peer(cls, peer):
        cls.addClassCleanup(peer.stop)
        peer.start()
        return peer

    def assertGatewayAlive(self, gw):
        if not gw.alive():
            self.fail("%s died with %s\nstderr:\n%s"
                      % (gw.name, describe_exit(gw.proc.returncode), gw.stderr_tail()))

    def run_async(self, coro, timeout=60.0):
        """Run a coroutine on a fresh event loop, bounded by `timeout` seconds."""
        return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------------------------------
# WebSocket upstreams


class EchoUpstream:
    """python-websockets server in a background thread.

    Echoes text and binary messages. Path keywords change the behaviour of one session:
      .../abort   on the first message: SO_LINGER 0 + transport.abort() (the client sees RST)
      .../close   on the first message: clean close with code 4001, reason "bye"
    Records every request (path, headers, subprotocol) and every close it saw.
    """

    def __init__(self, subprotocols=None, compression=None, name="echo"):
        self.subprotocols = subprotocols
        self.compression = compression
        self.name = name
        self.requests = []
        self.closes = []
        self.errors = []
        self.addr = None
        self._cond = threading.Condition()
        self._thread = None
        self._loop = None
        self._stop = None

    def start(self):
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                        name="echo-upstream")
        self._thread.start()
        if not started.wait(READY_TIMEOUT) or self.addr is None:
            raise RuntimeError("echo upstream did not start: %r" % self.errors)
        return self

    def _run(self, started):
        try:
            asyncio.run(self._main(started))
        except Exception as exc:  # reported through self.errors
            self.errors.append(repr(exc))
            started.set()

    async def _main(self, started):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with websockets.serve(self._handler, LOOPBACK, 0, subprotocols=self.subprotocols,
                                    compression=self.compression, max_size=None,
                                    ping_interval=None, close_timeout=5) as server:
            self.addr = server.sockets[0].getsockname()[:2]
            started.set()
            await self._stop.wait()

    async def _handler(self, ws):
        record = {
            "path": ws.path,
            "headers": list(ws.request_headers.raw_items()),
            "subprotocol": ws.subprotocol,
            "remote": ws.remote_address,
            "messages": 0,
        }
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()
        try:
            async for message in ws:
                record["messages"] += 1
                if "/abort" in ws.path:
                    sock = ws.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    ws.transport.abort()
                    return
                if "/close" in ws.path:
                    await ws.close(4001, "bye")
                    return
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            with self._cond:
                self.closes.append((ws.path, ws.close_code, ws.close_reason))
                self._cond.notify_all()

    def wait_requests(self, count, timeout=IO_TIMEOUT):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError("%s saw %d requests, want %d"
                                     % (self.name, len(self.requests), count))
            return list(self.requests)

    def wait_closes(self, count, timeout=IO_TIMEOUT):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.closes) >= count, timeout):
                raise AssertionError("%s saw %d closes, want %d"
                                     % (self.name, len(self.closes), count))
            return list(self.closes)

    def wait_close_for(self, path, timeout=IO_TIMEOUT):
        """(path, code, reason) of the close the upstream saw on the session for `path`."""
        with self._cond:
            found = []

            def check():
                found[:] = [c for c in self.closes if c[0] == path]
                return bool(found)

            if not self._cond.wait_for(check, timeout):
                raise AssertionError("%s: session %s not closed; closes: %r"
                                     % (self.name, path, self.closes))
            return found[0]

    def stop(self):
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # loop already closed
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)


def header_values(headers, name):
    """All values of header `name` (case-insensitive) in a list of (name, value) pairs."""
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


class EchoUpstreamProcess:
    """The echo server in a child /usr/bin/python3 process, so load tests get a second GIL."""

    def __init__(self):
        self.proc = None
        self.addr = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "echo-server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline().decode() if ready else ""
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError("echo-server process did not report its port: %r" % line)
        self.addr = (LOOPBACK, int(m.group(1)))
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()


async def _echo_server_main():
    async def handler(ws):
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with websockets.serve(handler, LOOPBACK, 0, compression=None, max_size=None,
                                ping_interval=None, backlog=1024) as server:
        sys.stdout.write("PORT %d\n" % server.sockets[0].getsockname()[1])
        sys.stdout.flush()
        await stop


# ---------------------------------------------------------------------------------------------
# Raw TCP upstreams and misbehaving peers


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def read_head(sock, timeout=IO_TIMEOUT, limit=256 * 1024):
    """Read until CRLFCRLF. Returns (head_without_terminator, leftover_bytes)."""
    buf = b""
    deadline = time.monotonic() + timeout
    for _ in range(100000):
        idx = buf.find(b"\r\n\r\n")
        if idx >= 0:
            return buf[:idx], buf[idx + 4:]
        if len(buf) > limit:
            raise AssertionError("head longer than %d bytes: %r" % (limit, buf[:200]))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete head within %.1fs; got %r" % (timeout, buf[:500]))
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed before the end of the head; got %r" % buf[:500])
        buf += chunk
    raise AssertionError("read_head: too many reads")


def parse_head(head):
    """'start line', [(name, value)] from a head without its terminator."""
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


class RawUpstream:
    """TCP server on 127.0.0.1:0; each accepted connection runs handler(conn, upstream) in a
    thread. Exceptions from handlers are kept in .errors; .events is a free-form log that
    handlers append to (under .cond) for the test to wait on."""

    def __init__(self, handler, backlog=128, name="raw-upstream"):
        self.handler = handler
        self.backlog = backlog
        self.name = name
        self.errors = []
        self.events = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.conns = []
        self._threads = []
        self.addr = None

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(self.backlog)
        self.addr = self.sock.getsockname()
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=self.name)
        self._accept_thread.start()
        return self

    def _accept_loop(self):
        # Bounded: one iteration per accepted connection or per 0.2 s wake-up to see .stopping.
        for _ in range(10 ** 7):
            if self.stopping.is_set():
                return
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if not r:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._run_handler, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run_handler(self, conn):
        try:
            self.handler(conn, self)
        except Exception as exc:
            if not self.stopping.is_set():
                self.errors.append("%s: %r" % (self.name, exc))
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self.event("handler-done")

    def event(self, *item):
        with self.cond:
            self.events.append(item)
            self.cond.notify_all()

    def wait_event(self, predicate, timeout=IO_TIMEOUT, what="upstream event"):
        with self.cond:
            found = []

            def check():
                for e in self.events:
                    if predicate(e):
                        found.append(e)
                        return True
                return False

            if not self.cond.wait_for(check, timeout):
                raise AssertionError("%s: no %s within %.0fs; events: %r; errors: %r"
                                     % (self.name, what, timeout, self.events, self.errors))
            return found[0]

    def stop(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        if getattr(self, "_accept_thread", None):
            self._accept_thread.join(STOP_TIMEOUT)
        for t in self._threads:
            t.join(STOP_TIMEOUT)


def wait_peer_close(conn, timeout, stopping=None):
    """Read and discard until the peer closes (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    for _ in range(100000):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (stopping is not None and stopping.is_set()):
            return False
        r, _, _ = select.select([conn], [], [], min(remaining, 0.2))
        if r:
            try:
                if not conn.recv(65536):
                    return True
            except OSError:
                return True
    return False


def silent_handler(conn, upstream):
    """Accepts the connection, reads the request head, never answers. Records when the
    gateway gives up and closes ("peer-closed")."""
    upstream.event("accepted")
    try:
        head, _ = read_head(conn, timeout=30)
        upstream.event("head", head)
    except (OSError, ConnectionError, TimeoutError):
        pass
    if wait_peer_close(conn, 60, upstream.stopping):
        upstream.event("peer-closed")


def make_response_handler(response):
    """A handler that reads the request head, sends `response` bytes and closes."""

    def handler(conn, upstream):
        head, _ = read_head(conn)
        upstream.event("head", head)
        conn.sendall(response)
        conn.shutdown(socket.SHUT_WR)
        wait_peer_close(conn, 10, upstream.stopping)
        conn.close()

    return handler


def websocket_accept(conn, upstream, subprotocol=None):
    """Server side of the handshake on a raw socket. Returns (request_head, leftover)."""
    head, leftover = read_head(conn)
    upstream.event("head", head)
    _, headers = parse_head(head)
    key = header_values(headers, "Sec-WebSocket-Key")
    if not key:
        raise AssertionError("upstream got no Sec-WebSocket-Key: %r" % head)
    resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n" % accept_key(key[0]))
    if subprotocol:
        resp += "Sec-WebSocket-Protocol: %s\r\n" % subprotocol
    conn.sendall((resp + "\r\n").encode())
    return head, leftover


class RefusedPort:
    """An address that refuses connections: bound (so nobody else gets the port) but never
    listening, so a SYN to it gets RST -> ECONNREFUSED."""

    def __init__(self):
        self.sock = None
        self.addr = None

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.addr = self.sock.getsockname()
        return self

    def stop(self):
        if self.sock:
            self.sock.close()


class BlackholeUpstream:
    """A listener whose accept queue is full, so new SYNs are dropped and connects time out:
    listen(0) and fill the queue with connections that are never accepted."""

    def __init__(self):
        self.fillers = []
        self.addr = None

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(0)
        self.addr = self.sock.getsockname()
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(self.addr)
            self.fillers.append(s)
            _, w, _ = select.select([], [s], [], 1.0)
            if not w:
                return self  # this connect hangs: the queue is full
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                raise RuntimeError("blackhole filler connect failed")
        raise RuntimeError("could not fill the accept queue of a listen(0) socket")

    def stop(self):
        for s in self.fillers:
            s.close()
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Raw client: hand-written requests, response heads, frames


def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def ws_request(path="/chat", host="localhost", key=None, version="13", method="GET",
               http="HTTP/1.1", extra=(), omit=()):
    """A WebSocket upgrade request head (bytes). `omit` drops standard headers by name."""
    key = key if key is not None else ws_key()
    std = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
    omit = {o.lower() for o in omit}
    lines = ["%s %s %s" % (method, path, http)]
    lines += ["%s: %s" % (k, v) for k, v in std if k.lower() not in omit]
    lines += ["%s: %s" % (k, v) for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def encode_frame(opcode, payload, mask=True, fin=True):
    return wire.frame(opcode, payload, fin=fin, mask=True if mask else None)


_apply_mask = wire.mask_bytes


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class FrameReader:
    """Incremental frame decoder (accepts masked and unmasked frames): wire.FrameStream, one
    frame at a time as (fin, opcode, payload); undecoded bytes stay in `buf`."""

    def __init__(self):
        self._stream = wire.FrameStream()
        self.buf = self._stream.buf

    def feed(self, data):
        self.buf += data

    def next_frame(self):
        """(fin, opcode, payload) or None if more bytes are needed."""
        f = self._stream.next_frame()
        return None if f is None else (f.fin, f.opcode, f.payload)


class Response:
    def __init__(self, head, leftover):
        self.raw_head = head
        start, self.headers = parse_head(head)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise AssertionError("malformed status line %r" % start)
        self.version = parts[0]
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        self.leftover = leftover
        self.body = b""

    def header(self, name):
        values = header_values(self.headers, name)
        return values[0] if values else None

    def tokens(self, name):
        out = set()
        for v in header_values(self.headers, name):
            out.update(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def __repr__(self):
        return "<Response %d %r %r body=%r>" % (self.status, self.reason, self.headers,
                                                self.body[:200])


# When each RawClient connected (wall clock, whole milliseconds down, as the access log's "ts"),
# by its local address: access_log_for_client tells its session from an earlier one on the port.
_connected_at = {}


def _log_time(entry):
    ts = entry.get("ts", "")
    try:
        return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return float("inf")  # not a time: never taken for an earlier session's


class RawClient:
    """A client socket for hand-written traffic."""

    def __init__(self, addr, rcvbuf=None, source=LOOPBACK):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((source, 0))
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(tuple(addr))
        self.local = self.sock.getsockname()
        _connected_at[tuple(self.local[:2])] = int(time.time() * 1000) / 1000.0
        self.pending = b""
        self.frames = FrameReader()

    def send(self, data):
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.sendall(data)

    def read_response(self, timeout=IO_TIMEOUT):
        """Read a response head (bytes after it are kept in .pending and response.leftover)."""
        head, leftover = read_head(self.sock, timeout)
        resp = Response(head, leftover)
        self.pending = leftover
        return resp

    def read_body(self, resp, timeout=IO_TIMEOUT):
        """Read a Content-Length body (or nothing if there is none) into resp.body."""
        length = resp.header("Content-Length")
        if length is None:
            return resp.body
        n = int(length)
        data = self.pending
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if len(data) >= n:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("body: got %d of %d bytes" % (len(data), n))
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        resp.body, self.pending = data[:n], data[n:]
        return resp.body

    def read_until_closed(self, timeout=5.0):
        """Read until EOF or reset. Returns (extra_bytes, how) with how in
        {'eof', 'reset', 'timeout'}."""
        data = self.pending
        self.pending = b""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return data, "timeout"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return data, "timeout"
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk
        return data, "timeout"

    def handshake(self, path="/chat", timeout=IO_TIMEOUT, **kw):
        key = kw.pop("key", None) or ws_key()
        self.send(ws_request(path, key=key, **kw))
        resp = self.read_response(timeout)
        if resp.status != 101:
            raise AssertionError("handshake: %r" % resp)
        if resp.header("Sec-WebSocket-Accept") != accept_key(key):
            raise AssertionError("bad Sec-WebSocket-Accept in %r" % resp)
        self.frames.feed(self.pending)
        self.pending = b""
        return resp

    def send_frame(self, opcode, payload, fin=True):
        self.send(encode_frame(opcode, payload, mask=True, fin=fin))

    def recv_frame(self, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        for _ in range(10 ** 6):
            frame = self.frames.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame within %.1fs (%d bytes buffered)"
                                   % (timeout, len(self.frames.buf)))
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed while waiting for a frame (%d bytes buffered)"
                                      % len(self.frames.buf))
            self.frames.feed(chunk)
        raise AssertionError("recv_frame: too many reads")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["echo-server"]:
        asyncio.run(_echo_server_main())
    else:
        sys.exit("usage: harness.py echo-server")
