"""RFC 6455 conformance of upgate's `mode: frames` tunnels, organised like the Autobahn
Testsuite's case groups (the cases themselves are this project's own).

Every session is   raw client  <->  upgate (route mode: frames)  <->  lenient upstream.
The upstream validates nothing (peers.LenientUpstream), so every violation, whichever side sends
it, must be caught by upgate itself. For each case the suite checks:
  - the close code each side receives (the violator gets 1002/1007/1009; the other side gets
    1001 if the client misbehaved, 1011 if the upstream did; close frames towards the upstream
    are masked, towards the client unmasked), and that both TCP connections end;
  - that nothing invalid reached the other side: what it received is exactly the violator's
    bytes up to a frame boundary at or before the offending frame, then the gateway's close;
  - that valid traffic is byte-identical: each side receives exactly the bytes the other sent
    (masks, fragmentation, control frames and close frames included).

Usage: test_frames.py [-v] [-k SUBSTRING] [--list]      (UPGATE_BIN names the binary)
Exit status 0 only if every case passed.
"""

import argparse
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "support"))

import harness  # noqa: E402
from peers import CaseFailure, Client, LenientUpstream  # noqa: E402
from wire import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RSV1, RSV2,  # noqa: E402
                  RSV3, FrameStream, cframe, close_body, deflate_message, frame_boundaries,
                  is_utf8, uframe)

MAIN_LIMIT = 1024 * 1024       # limits.max_message_size of the main gateway
SMALL_LIMIT = 64 * 1024        # ... of the gateway for group 9
SUITE_BUDGET = 240.0           # seconds; cases not started by then fail as "not run"

GROUPS = {
    1: "Framing",
    2: "Pings/Pongs",
    3: "Reserved bits",
    4: "Opcodes",
    5: "Fragmentation",
    6: "UTF-8 handling",
    7: "Close handling",
    9: "Limits",
    10: "Masking",
    12: "Compression (RSV1)",
    13: "Drain (SIGTERM)",
}


def maker(who):
    """Frame constructor for a side: clients mask, servers do not."""
    return cframe if who == "client" else uframe


def other(who):
    return "upstream" if who == "client" else "client"


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n if len(a) != len(b) else -1


def describe_stream(data, limit=6):
    fs = FrameStream()
    frames = fs.feed(data)
    text = ", ".join(repr(f) for f in frames[:limit]) or "no complete frame"
    if len(frames) > limit:
        text += ", ... (%d frames)" % len(frames)
    if fs.pending:
        text += " + %d bytes of an incomplete frame" % fs.pending
    return "[%s]" % text


def tx_before_close(peer):
    """What a peer sent before its own first close frame."""
    for f in peer.tx_frames:
        if f.opcode == OP_CLOSE:
            return bytes(peer.tx[:f.offset])
    return bytes(peer.tx)


def check_gateway_close(f, want, to_upstream, where):
    """A close frame the gateway generated (or forwarded) towards `where`."""
    want = want if isinstance(want, (set, frozenset, tuple, list)) else (want,)
    problems = []
    if f.close_code not in want:
        problems.append("close code %s, want %s" % (f.close_code, "/".join(map(str, want))))
    if to_upstream and not f.masked:
        problems.append("close frame to the upstream is not masked")
    if not to_upstream and f.masked:
        problems.append("close frame to the client is masked")
    if not f.fin or f.rsv:
        problems.append("close frame has fin=%s rsv=%d" % (f.fin, f.rsv))
    if len(f.payload) > 125 or not is_utf8(f.close_reason):
        problems.append("close payload invalid (%d bytes, reason %r)"
                        % (len(f.payload), f.close_reason[:40]))
    if problems:
        raise CaseFailure("%s got %r: %s" % (where, f, "; ".join(problems)))


# ---------------------------------------------------------------------------------------------
# Sessions


class Session:
    def __init__(self, env, client, upstream):
        self.env = env
        self.c = client
        self.u = upstream
        self.violator = None

    def peer(self, who):
        return self.c if who == "client" else self.u

    # -- valid traffic -----------------------------------------------------------------------
    def send(self, who, data, slowly=False, chunk=1, pause=0.002):
        """Valid bytes from `who`: the other side must receive them identically (and, in an
        echo session, the client must receive the upstream's echo identically)."""
        sender = self.peer(who)
        if slowly:
            sender.send_slowly(data, chunk, pause)
        else:
            sender.send(data)
        self.sync(who)

    def sync(self, who):
        sender, receiver = self.peer(who), self.peer(other(who))
        want = bytes(sender.tx)
        receiver.wait_rx(len(want), "%d bytes sent by the %s" % (len(want), who))
        got = bytes(receiver.rx[:len(want)])
        if got != want:
            at = first_diff(got, want)
            raise CaseFailure("%s -> %s: bytes differ at offset %d\n  sent %s\n  got  %s"
                              % (who, receiver.side, at, describe_stream(want), describe_stream(got)))
        if who == "client" and self.u.echo:
            _, utx, _ = self.u.snapshot()
            self.c.wait_rx(len(utx), "echo of %d bytes" % len(utx))
            if bytes(self.c.rx[:len(utx)]) != utx:
                raise CaseFailure("upstream -> client (echo): bytes differ\n  sent %s\n  got  %s"
                                  % (describe_stream(utx), describe_stream(bytes(self.c.rx))))

    def close_clean(self, by="client", code=1000, reason=b""):
        """Close handshake started by `by`; both sides must see exactly what the other sent,
        and both TCP connections must end."""
        body = close_body(code, reason)
        initiator, responder = self.peer(by), self.peer(other(by))
        initiator.send(maker(by)(OP_CLOSE, body))
        got = responder.wait_close()
        if got is None:
            raise CaseFailure("%s: connection ended (%s) without the %s's close frame; got %s"
                              % (responder.side, responder.ended, by,
                                 describe_stream(bytes(responder.rx))))
        reply = initiator.wait_close()
        if reply is None:
            raise CaseFailure("%s: connection ended (%s) without a close reply"
                              % (initiator.side, initiator.ended))
        self.c.wait_end()
        self.u.wait_end()
        self.check_identical()
        return got, reply

    def check_identical(self):
        crx, ctx, _ = self.c.snapshot()
        urx, utx, _ = self.u.snapshot()
        for name, got, sent in (("client -> upstream", urx, ctx), ("upstream -> client", crx, utx)):
            if got != sent:
                at = first_diff(got, sent)
                raise CaseFailure("%s: streams differ at offset %d of %d/%d bytes\n"
                                  "  sent     %s\n  received %s"
                                  % (name, at, len(sent), len(got), describe_stream(sent),
                                     describe_stream(got)))

    # -- violations --------------------------------------------------------------------------
    def send_bad(self, who, data, bad=0, chunks=None, pause=0.05):
        """Invalid bytes from `who`; `bad` is the offset in `data` of the offending frame (or,
        for a payload split over reads, of the first byte of the read that makes it invalid).
        `chunks`: split offsets, each chunk sent after `pause`."""
        v = self.peer(who)
        self.violator = who
        self.v_mark = len(v.tx)
        self.v_rx_mark = len(v.rx)
        self.bad_at = self.v_mark + bad
        if chunks:
            cuts = [0] + list(chunks) + [len(data)]
            for i in range(len(cuts) - 1):
                if i:
                    time.sleep(pause)
                self._raw_send(v, data[cuts[i]:cuts[i + 1]])
        else:
            self._raw_send(v, data)

    def mark_bad(self, who, bad_at):
        """The violation was already sent (with the handshake): everything `who` sent from
        offset `bad_at` on is invalid; the valid frames before it came in the same read, so the
        gateway may forward them or not (nothing was synchronised)."""
        self.violator = who
        self.v_mark = 0
        self.v_rx_mark = 0
        self.bad_at = bad_at

    @staticmethod
    def _raw_send(peer, data):
        if peer.is_client:
            peer.send(data, quiet=True)
        else:
            peer.send(data)

    def expect_failure(self, code, mid_frame_ok=False):
        who = self.violator
        v, p = self.peer(who), self.peer(other(who))
        other_code = 1001 if who == "client" else 1011
        # The violator: the gateway's close with `code`, and nothing it should not have got.
        vc = v.wait_close()
        if vc is None:
            raise CaseFailure("%s (violator): connection ended (%s) without a close frame, want "
                              "close %s; received %s" % (v.side, v.ended, code,
                                                         describe_stream(bytes(v.rx))))
        check_gateway_close(vc, code, not v.is_client, "%s (violator)" % v.side)
        # The other side: a clean close with 1001/1011 after a valid prefix of the violator's
        # bytes.
        pc = p.wait_close()
        v.wait_end()
        p.wait_end()
        vrx, vtx, _ = v.snapshot()
        prx, ptx, _ = p.snapshot()
        # What the violator received: a frame-boundary prefix of the other side's bytes, then
        # the close, then nothing.
        p_sent = tx_before_close(p)
        j = vc.offset
        if vrx[j + len(vc.raw):]:
            raise CaseFailure("%s (violator) received bytes after the gateway's close: %s"
                              % (v.side, describe_stream(vrx[j + len(vc.raw):])))
        if vrx[:j] != p_sent[:j] or j not in frame_boundaries(p_sent) or j < self.v_rx_mark:
            raise CaseFailure("%s (violator) received %s before the close; the %s sent %s"
                              % (v.side, describe_stream(vrx[:j]), p.side, describe_stream(p_sent)))
        if pc is not None:
            k = pc.offset
            forwarded = prx[:k]
            if prx[k + len(pc.raw):]:
                raise CaseFailure("%s received bytes after the gateway's close: %s"
                                  % (p.side, describe_stream(prx[k + len(pc.raw):])))
            if forwarded != vtx[:k]:
                at = first_diff(forwarded, vtx[:k])
                raise CaseFailure("%s received bytes the %s did not send (offset %d): got %s, "
                                  "sent %s" % (p.side, who, at, describe_stream(forwarded),
                                               describe_stream(vtx)))
            if k > self.bad_at or k not in frame_boundaries(vtx):
                raise CaseFailure("%s received %d bytes of the %s's (invalid part starts at %d): "
                                  "%s" % (p.side, k, who, self.bad_at, describe_stream(forwarded)))
            if k < self.v_mark:
                raise CaseFailure("%s got %d bytes, fewer than the %d valid bytes sent before"
                                  % (p.side, k, self.v_mark))
            check_gateway_close(pc, other_code, p is self.u, "%s (other side)" % p.side)
            return
        # No close frame reached the other side.
        k = len(prx)
        if mid_frame_ok and prx == vtx[:k] and self.v_mark <= k <= self.bad_at \
                and k not in frame_boundaries(vtx):
            self.env.note("%s got %d bytes (a frame cut short by the violation) and then a TCP "
                          "close without a close frame" % (p.side, k))
            return
        raise CaseFailure("%s: connection ended (%s) without a close frame (want %d); received "
                          "%s; the %s sent %s (invalid from offset %d)"
                          % (p.side, p.ended, other_code, describe_stream(prx), who,
                             describe_stream(vtx), self.bad_at))


# ---------------------------------------------------------------------------------------------
# Environment: the lenient upstream and two gateways


class Env:
    def __init__(self, verbose=False, mode="frames"):
        self.verbose = verbose
        self.mode = mode
        self.up = None
        self.gws = {}
        self.limits = {"main": MAIN_LIMIT, "limits": SMALL_LIMIT}
        self.counter = 0
        self.sessions = []
        self.notes = []
        self.deaths = []

    def config(self, limit):
        return harness.make_config(
            upstreams={"lenient": {"endpoints": [self.up.addr]}},
            routes=[{"name": "frames", "match": {"path_prefix": "/frames"},
                     "upstream": "lenient", "mode": self.mode}],
            limits={"max_message_size": limit})

    def start(self):
        self.up = LenientUpstream().start()
        for name in self.limits:
            self.start_gateway(name)

    def start_gateway(self, name):
        gw = harness.Gateway(self.config(self.limits[name]), name="upgate[%s]" % name)
        self.gws[name] = gw
        gw.start()
        return gw

    def gateway(self, name):
        gw = self.gws[name]
        if not gw.alive():
            raise CaseFailure("gateway %s is not running" % name)
        return gw

    def check_gateways(self):
        """After a case: a gateway that died fails the case and is restarted for the rest."""
        for name, gw in list(self.gws.items()):
            if gw.proc is not None and gw.proc.poll() is not None and not getattr(gw, "drained", False):
                tail = gw.stderr_tail(15)
                code = harness.describe_exit(gw.proc.returncode)
                self.deaths.append(name)
                gw.cleanup()
                self.start_gateway(name)
                raise CaseFailure("gateway %s died (%s); restarted. stderr:\n%s" % (name, code, tail))

    def session(self, gw="main", echo=True, deflate=False, extra=(), close_on_eof=True,
                early=b"", with_101=b""):
        """A client connected through gateway `gw` to the lenient upstream. early: frames the
        client writes together with its request head; with_101: frames the upstream writes
        together with its 101."""
        self.counter += 1
        token = "t%d" % self.counter
        self.up.expect(token, echo=echo, deflate=deflate, with_101=with_101)
        client = Client(self.gateway(gw).addr(), "/frames/%s" % token, extra, close_on_eof, early)
        self.sessions.append(client)
        upstream = self.up.wait_conn(token)
        return Session(self, client, upstream)

    def note(self, text):
        self.notes.append(text)

    def end_case(self):
        for c in self.sessions:
            c.close()
        self.sessions = []

    def stop(self):
        problems = []
        for name, gw in self.gws.items():
            if getattr(gw, "drained", False):
                continue
            try:
                gw.check_stopped_cleanly()
            except AssertionError as exc:
                problems.append(str(exc))
            finally:
                gw.cleanup()
        if self.up:
            self.up.stop()
        return problems


# ---------------------------------------------------------------------------------------------
# Case registry

CASES = []


class Case:
    def __init__(self, group, title, fn):
        self.group = group
        self.title = title
        self.fn = fn
        self.id = None


def add(group, title, fn):
    CASES.append(Case(group, title, fn))


def valid(group, title, who, writes, gw="main", deflate=False, slowly=False, close_code=1000):
    """`who` sends each element of `writes` (bytes, or a callable(maker) -> bytes) as one write;
    all of it must arrive identically, then a clean close started by `who`."""
    def run(env):
        s = env.session(gw=gw, echo=(who == "client"), deflate=deflate,
                        extra=DEFLATE_OFFER if deflate else ())
        for w in writes:
            data = w(maker(who)) if callable(w) else w
            s.send(who, data, slowly=slowly)
        s.close_clean(by=who, code=close_code)
    add(group, "%s: %s" % (who, title), run)


def violation(group, title, who, bad, code, prefix=True, after=True, setup=(), gw="main",
              deflate=False, bad_offset=0, chunks=None, mid_frame_ok=False):
    """After an optional valid "hello" and `setup` writes, `who` sends `bad` (bytes or
    callable(maker)) followed by a valid frame; the gateway must fail `who` with `code`."""
    def run(env):
        s = env.session(gw=gw, echo=(who == "client"), deflate=deflate,
                        extra=DEFLATE_OFFER if deflate else ())
        m = maker(who)
        if prefix:
            s.send(who, m(OP_TEXT, b"hello"))
        for w in setup:
            s.send(who, w(m) if callable(w) else w)
        data = bad(m) if callable(bad) else bad
        tail = m(OP_BINARY, b"after") if after else b""
        s.send_bad(who, data + tail, bad=bad_offset, chunks=chunks)
        s.expect_failure(code, mid_frame_ok=mid_frame_ok)
    add(group, "%s: %s" % (who, title), run)


def both(group, title, bad, code, **kw):
    """The same violation sent by the client and by the upstream."""
    for who in ("client", "upstream"):
        violation(group, title, who, bad, code, **kw)


DEFLATE_OFFER = (("Sec-WebSocket-Extensions", "permessage-deflate"),)


def text_of(n):
    return (b"0123456789abcdefghijklmnopqrstuvwxyz" * (n // 36 + 1))[:n]


def bin_of(n):
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# ---------------------------------------------------------------------------------------------
# 1 Framing

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 200000]
for n in SIZES:
    valid(1, "text message of %d bytes" % n, "client",
          [lambda m, n=n: m(OP_TEXT, text_of(n))])
for n in SIZES:
    valid(1, "binary message of %d bytes" % n, "client",
          [lambda m, n=n: m(OP_BINARY, bin_of(n))])
valid(1, "text frame (16-bit length) written byte by byte", "client",
      [lambda m: m(OP_TEXT, text_of(130))], slowly=True)
valid(1, "text frame (16-bit length) written byte by byte", "upstream",
      [lambda m: m(OP_TEXT, text_of(130))], slowly=True)
valid(1, "binary frame (7-bit length) written byte by byte", "client",
      [lambda m: m(OP_BINARY, bin_of(20))], slowly=True)


def _split_64bit(who):
    def run(env):
        s = env.session(echo=(who == "client"))
        data = maker(who)(OP_BINARY, bin_of(70000))
        # The 10- or 14-byte header a byte at a time, then the payload in uneven pieces.
        hl = 14 if who == "client" else 10
        s.peer(who).send_slowly(data[:hl], 1, 0.003)
        s.peer(who).send_slowly(data[hl:], 9999, 0.003)
        s.sync(who)
        s.close_clean(by=who)
    add(1, "%s: binary frame (64-bit length), header split at every byte, payload in reads"
        % who, run)


_split_64bit("client")
_split_64bit("upstream")
valid(1, "200 small frames in one write", "client",
      [lambda m: b"".join(m(OP_TEXT if i % 2 else OP_BINARY, text_of(i % 40)) for i in range(200))])
valid(1, "200 small frames in one write", "upstream",
      [lambda m: b"".join(m(OP_TEXT if i % 2 else OP_BINARY, text_of(i % 40)) for i in range(200))])
valid(1, "text and binary of several sizes", "upstream",
      [lambda m, n=n: m(OP_TEXT if n % 2 else OP_BINARY, text_of(n)) for n in SIZES])


def _with_handshake(who, bad):
    """Frames in the same write as the request head (client) or the 101 (upstream): the
    gateway must inspect the bytes that came with the handshake too."""
    def run(env):
        m = maker(who)
        data = (m(OP_TEXT, b"with the handshake") + m(OP_PING, b"p")
                + (m(OP_TEXT, b"x", rsv=RSV1) + m(OP_TEXT, b"after") if bad else b""))
        kw = {"early": data} if who == "client" else {"with_101": data}
        s = env.session(echo=False, **kw)
        if not bad:
            s.sync(who)
            s.close_clean(by=who)
            return
        s.mark_bad(who, len(data) - len(m(OP_TEXT, b"x", rsv=RSV1) + m(OP_TEXT, b"after")))
        s.expect_failure(1002)
    where = "request head" if who == "client" else "101 response"
    if bad:
        add(3, "%s: RSV1 frame in the same write as the %s -> 1002" % (who, where), run)
    else:
        add(1, "%s: frames in the same write as the %s pass" % (who, where), run)


for who in ("client", "upstream"):
    _with_handshake(who, False)
both(1, "5-byte text frame with a 16-bit length (non-minimal) -> 1002",
     lambda m: m(OP_TEXT, b"short", form=16), 1002)
both(1, "200-byte binary frame with a 64-bit length (non-minimal) -> 1002",
     lambda m: m(OP_BINARY, bin_of(200), form=64), 1002)
both(1, "64-bit length with the most significant bit set -> 1002",
     lambda m: m(OP_BINARY, b"", length=(1 << 63) + 5, form=64), 1002, after=False)

# ---------------------------------------------------------------------------------------------
# 2 Pings and pongs

valid(2, "empty ping, answered by the upstream's pong", "client", [lambda m: m(OP_PING, b"")])
valid(2, "125-byte ping (largest allowed), answered", "client",
      [lambda m: m(OP_PING, bin_of(125))])
valid(2, "ping with binary payload, written byte by byte", "client",
      [lambda m: m(OP_PING, bytes([0, 255, 128, 10, 13]) * 5)], slowly=True)
valid(2, "10 pings in one write", "client",
      [lambda m: b"".join(m(OP_PING, b"ping %d" % i) for i in range(10))])
valid(2, "unsolicited pong", "client", [lambda m: m(OP_PONG, b"unsolicited")])


def _ping_from_upstream(env):
    s = env.session(echo=False)
    s.send("upstream", uframe(OP_PING, b"are you there"))
    f = s.c.frames[-1]
    if f.opcode != OP_PING or f.payload != b"are you there":
        raise CaseFailure("client got %r, want the upstream's ping" % f)
    s.send("client", cframe(OP_PONG, f.payload))
    s.send("upstream", uframe(OP_PING, bin_of(125)))
    s.send("client", cframe(OP_PONG, bin_of(125)))
    s.close_clean(by="upstream")


add(2, "upstream: ping reaches the client, its pong reaches the upstream", _ping_from_upstream)
valid(2, "unsolicited pong", "upstream", [lambda m: m(OP_PONG, b"unsolicited")])
valid(2, "10 pings and pongs in one write", "upstream",
      [lambda m: b"".join(m(OP_PING if i % 2 else OP_PONG, b"%d" % i) for i in range(10))])
both(2, "126-byte ping -> 1002", lambda m: m(OP_PING, bin_of(126)), 1002)
both(2, "126-byte pong -> 1002", lambda m: m(OP_PONG, bin_of(126)), 1002)
both(2, "ping with fin=0 (fragmented control frame) -> 1002",
     lambda m: m(OP_PING, b"frag", fin=False), 1002)
violation(2, "pong with fin=0 followed by a continuation -> 1002", "client",
          lambda m: m(OP_PONG, b"frag", fin=False) + m(OP_CONT, b"ment"), 1002)
violation(2, "ping declaring a 16-bit length of 126 bytes -> 1002", "client",
          lambda m: m(OP_PING, bin_of(126), form=16), 1002)

# ---------------------------------------------------------------------------------------------
# 3 Reserved bits (no extension negotiated)

for who in ("client", "upstream"):
    for name, rsv in (("RSV1", RSV1), ("RSV2", RSV2), ("RSV3", RSV3), ("RSV1+2+3", 7)):
        violation(3, "text frame with %s -> 1002" % name, who,
                  lambda m, rsv=rsv: m(OP_TEXT, b"reserved", rsv=rsv), 1002)
violation(3, "binary frame with RSV1+RSV3 -> 1002", "client",
          lambda m: m(OP_BINARY, bin_of(10), rsv=RSV1 | RSV3), 1002)
both(3, "ping with RSV3 -> 1002", lambda m: m(OP_PING, b"p", rsv=RSV3), 1002)
both(3, "close frame with RSV2 -> 1002", lambda m: m(OP_CLOSE, close_body(1000), rsv=RSV2), 1002)
violation(3, "continuation with RSV1 -> 1002", "client", lambda m: m(OP_CONT, b"b", rsv=RSV1), 1002,
          setup=[lambda m: m(OP_TEXT, b"a", fin=False)])
violation(3, "empty binary frame with RSV2 -> 1002", "upstream",
          lambda m: m(OP_BINARY, b"", rsv=RSV2), 1002)
for who in ("client", "upstream"):
    _with_handshake(who, True)


def _bad_after_split(group, title, who, bad, code, gw="main"):
    """A valid frame is split across two reads; the second read completes it and then carries
    the violation. The valid frame must reach the other side whole, followed by a clean close:
    the violation is at a frame boundary, so nothing forces a cut mid-frame."""
    def run(env):
        s = env.session(gw=gw, echo=False)
        m = maker(who)
        good = m(OP_BINARY, bin_of(300))
        half = len(good) // 2
        s.peer(who).send(good[:half])
        time.sleep(0.05)  # let the gateway read (and forward) the first half on its own
        s.send_bad(who, good[half:] + bad(m), bad=len(good) - half)
        s.expect_failure(code)
    add(group, "%s: %s in the read that completes a valid frame split across reads -> %d"
        % (who, title, code), run)


for who in ("client", "upstream"):
    _bad_after_split(3, "RSV1 frame", who, lambda m: m(OP_TEXT, b"x", rsv=RSV1), 1002)

# ---------------------------------------------------------------------------------------------
# 4 Opcodes

for who in ("client", "upstream"):
    for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        violation(4, "reserved opcode 0x%X -> 1002" % op, who,
                  lambda m, op=op: m(op, b"payload" if op < 8 else b""), 1002)
violation(4, "reserved opcode 0x3 with fin=0 -> 1002", "client",
          lambda m: m(3, b"x", fin=False), 1002)

# ---------------------------------------------------------------------------------------------
# 5 Fragmentation

for who in ("client", "upstream"):
    valid(5, "text in 2 fragments", who,
          [lambda m: m(OP_TEXT, b"frag", fin=False) + m(OP_CONT, b"mented")])
    valid(5, "ping and pong between fragments", who,
          [lambda m: m(OP_BINARY, b"one", fin=False) + m(OP_PING, b"p") + m(OP_CONT, b"two", fin=False)
           + m(OP_PONG, b"q") + m(OP_CONT, b"three")])
    valid(5, "fragments in separate writes, a ping between each", who,
          [lambda m: m(OP_TEXT, b"a", fin=False), lambda m: m(OP_PING, b"1"),
           lambda m: m(OP_CONT, b"b", fin=False), lambda m: m(OP_PING, b"2"),
           lambda m: m(OP_CONT, b"c")])
valid(5, "binary in 3 fragments", "client",
      [lambda m: m(OP_BINARY, bin_of(1000), fin=False) + m(OP_CONT, bin_of(70000), fin=False)
       + m(OP_CONT, bin_of(3))])
valid(5, "text in 30 one-byte fragments", "client",
      [lambda m: m(OP_TEXT, b"0", fin=False) + b"".join(m(OP_CONT, b"x", fin=False) for _ in range(28))
       + m(OP_CONT, b"!")])
valid(5, "empty fragments (empty first, middle and final)", "client",
      [lambda m: m(OP_TEXT, b"", fin=False) + m(OP_CONT, b"", fin=False) + m(OP_CONT, b"")])
valid(5, "two fragmented messages back to back", "client",
      [lambda m: m(OP_TEXT, b"a", fin=False) + m(OP_CONT, b"b") + m(OP_BINARY, b"c", fin=False)
       + m(OP_CONT, b"d")])
valid(5, "fragmented message written byte by byte", "client",
      [lambda m: m(OP_TEXT, b"ab", fin=False) + m(OP_PING, b"") + m(OP_CONT, b"cd")], slowly=True)
both(5, "continuation (fin=1) with no message started -> 1002",
     lambda m: m(OP_CONT, b"orphan"), 1002)
both(5, "continuation (fin=0) with no message started -> 1002",
     lambda m: m(OP_CONT, b"orphan", fin=False) + m(OP_CONT, b"end"), 1002)
violation(5, "continuation after a complete message -> 1002", "client",
          lambda m: m(OP_CONT, b"late"), 1002, setup=[lambda m: m(OP_TEXT, b"a", fin=False) + m(OP_CONT, b"b")])
both(5, "text frame inside a fragmented text message -> 1002",
     lambda m: m(OP_TEXT, b"new"), 1002, setup=[lambda m: m(OP_TEXT, b"first", fin=False)])
both(5, "binary frame (fin=0) inside a fragmented text message -> 1002",
     lambda m: m(OP_BINARY, b"new", fin=False), 1002, setup=[lambda m: m(OP_TEXT, b"first", fin=False)])
violation(5, "text frame (fin=0) inside a fragmented binary message -> 1002", "client",
          lambda m: m(OP_TEXT, b"new", fin=False), 1002,
          setup=[lambda m: m(OP_BINARY, b"first", fin=False) + m(OP_CONT, b"second", fin=False)])

# ---------------------------------------------------------------------------------------------
# 6 UTF-8

KOSME = "\u03ba\u1f79\u03c3\u03bc\u03b5".encode()  # the usual Greek test word
VALID_TEXTS = [
    KOSME,
    "a\u00e9\u20ac\U0001F600".encode(),                      # 1-, 2-, 3-, 4-byte characters
    "\u0000\u007f\u0080\u07ff\u0800\uffff".encode(),         # boundaries of 1-3 byte forms
    "\U00010000\U0010FFFF".encode(),                         # first and last 4-byte code points
    "\ud7ff\ue000\ufffd\ufeff".encode(),                     # around the surrogate range
    "\u4e16\u754c \u0928\u092e\u0938\u094d\u0924\u0947".encode(),
]


def _valid_utf8_case(who, how):
    def run(env):
        s = env.session(echo=(who == "client"))
        m = maker(who)
        for t in VALID_TEXTS:
            if how == "whole":
                s.send(who, m(OP_TEXT, t))
            elif how == "split2":
                for i in range(1, len(t)):
                    s.send(who, m(OP_TEXT, t[:i], fin=False) + m(OP_CONT, t[i:]))
            elif how == "bytewise":
                s.send(who, m(OP_TEXT, t[:1], fin=False)
                       + b"".join(m(OP_CONT, t[i:i + 1], fin=False) for i in range(1, len(t)))
                       + m(OP_CONT, b""))
            elif how == "reads":
                s.send(who, m(OP_TEXT, t), slowly=True, pause=0.001)
        s.close_clean(by=who)
    title = {"whole": "valid UTF-8 texts (boundary code points) pass",
             "split2": "valid UTF-8 split into 2 fragments at every byte passes",
             "bytewise": "valid UTF-8 with every byte in its own fragment passes",
             "reads": "valid UTF-8 frames split across reads at every byte pass"}[how]
    add(6, "%s: %s" % (who, title), run)


for who in ("client", "upstream"):
    for how in ("whole", "split2", "bytewise", "reads"):
        _valid_utf8_case(who, how)
valid(6, "invalid UTF-8 in a binary message passes (not text)", "client",
      [lambda m: m(OP_BINARY, b"\xc0\xaf\xed\xa0\x80\xff\xfe")])

INVALID_UTF8 = [
    ("overlong '/' (C0 AF)", b"\xc0\xaf"),
    ("overlong NUL (C0 80)", b"\xc0\x80"),
    ("overlong 2-byte max (C1 BF)", b"\xc1\xbf"),
    ("overlong 3-byte (E0 80 AF)", b"\xe0\x80\xaf"),
    ("overlong U+07FF (E0 9F BF)", b"\xe0\x9f\xbf"),
    ("overlong 4-byte (F0 80 80 AF)", b"\xf0\x80\x80\xaf"),
    ("overlong U+FFFF (F0 8F BF BF)", b"\xf0\x8f\xbf\xbf"),
    ("surrogate U+D800 (ED A0 80)", b"\xed\xa0\x80"),
    ("surrogate U+DFFF (ED BF BF)", b"\xed\xbf\xbf"),
    ("surrogate pair (ED A0 80 ED B0 80)", b"\xed\xa0\x80\xed\xb0\x80"),
    ("U+110000 (F4 90 80 80)", b"\xf4\x90\x80\x80"),
    ("F5 lead byte", b"\xf5\x80\x80\x80"),
    ("F7 BF BF BF", b"\xf7\xbf\xbf\xbf"),
    ("5-byte form (F8 88 80 80 80)", b"\xf8\x88\x80\x80\x80"),
    ("6-byte form (FC 84 80 80 80 80)", b"\xfc\x84\x80\x80\x80\x80"),
    ("byte FE", b"\xfe"),
    ("byte FF", b"\xff"),
    ("lone continuation 80", b"\x80"),
    ("lone continuation BF", b"\xbf"),
    ("2-byte lead then ASCII (C2 41)", b"\xc2\x41"),
    ("3-byte lead, 1 continuation, then ASCII", b"\xe2\x82\x41"),
    ("4-byte lead, 2 continuations, then ASCII", b"\xf0\x9f\x98\x41"),
]
for name, seq in INVALID_UTF8:
    violation(6, "text with %s -> 1007" % name, "client",
              lambda m, seq=seq: m(OP_TEXT, KOSME + seq + b"edited"), 1007)
for name, seq in (("truncated 3-byte (E2 82)", b"\xe2\x82"), ("truncated 4-byte (F0 9F 98)", b"\xf0\x9f\x98"),
                  ("truncated 2-byte (C3)", b"\xc3")):
    violation(6, "text ending with %s -> 1007" % name, "client",
              lambda m, seq=seq: m(OP_TEXT, b"abc" + seq), 1007)
for name, seq in (INVALID_UTF8[0], INVALID_UTF8[7], INVALID_UTF8[10], INVALID_UTF8[14],
                  INVALID_UTF8[17]):
    violation(6, "text with %s -> 1007" % name, "upstream",
              lambda m, seq=seq: m(OP_TEXT, KOSME + seq + b"edited"), 1007)
violation(6, "text ending with truncated 3-byte (E2 82) -> 1007", "upstream",
          lambda m: m(OP_TEXT, b"abc\xe2\x82"), 1007)

# Invalid sequences split across fragments: the first fragment is valid on its own (and may be
# forwarded); the offending one is not.
for who in ("client", "upstream"):
    violation(6, "surrogate split across fragments (..ED | A0 80..) -> 1007", who,
              lambda m: m(OP_CONT, b"\xa0\x80edited"), 1007,
              setup=[lambda m: m(OP_TEXT, KOSME + b"\xed", fin=False)])
    violation(6, "U+110000 split across fragments (F4 | 90 80 80) -> 1007", who,
              lambda m: m(OP_CONT, b"\x90\x80\x80"), 1007,
              setup=[lambda m: m(OP_TEXT, b"\xf4", fin=False)])
    violation(6, "message ends inside a character (E2 82 | empty final fragment) -> 1007", who,
              lambda m: m(OP_CONT, b""), 1007,
              setup=[lambda m: m(OP_TEXT, b"ab\xe2\x82", fin=False)])
violation(6, "3 fragments, the middle one invalid (F4 90 80 80) -> 1007", "client",
          lambda m: m(OP_CONT, b"\xf4\x90\x80\x80", fin=False) + m(OP_CONT, b"edited"), 1007,
          setup=[lambda m: m(OP_TEXT, KOSME, fin=False)])
violation(6, "overlong split across 3 fragments (E0 | 80 | AF) -> 1007", "client",
          lambda m: m(OP_CONT, b"\x80", fin=False) + m(OP_CONT, b"\xaf"), 1007,
          setup=[lambda m: m(OP_TEXT, b"x\xe0", fin=False)])


def _mid_frame(who, seq_head, seq_tail, title):
    """One text frame whose payload is split over two reads right before the byte that makes it
    invalid: bytes of the first read may have been forwarded already."""
    def bad(m):
        return m(OP_TEXT, KOSME + seq_head + seq_tail + b"edited")
    hl = 6 if who == "client" else 2
    cut = hl + len(KOSME) + len(seq_head)
    violation(6, title, who, bad, 1007, after=False, bad_offset=cut, chunks=[cut],
              mid_frame_ok=True)


for who in ("client", "upstream"):
    _mid_frame(who, b"\xed", b"\xa0\x80", "surrogate split across reads inside one frame -> 1007")
    _bad_after_split(6, "text frame with invalid UTF-8", who,
                     lambda m: m(OP_TEXT, b"\xc0\xaf"), 1007)
_mid_frame("client", b"", b"\xff", "byte FF at the start of a second read inside one frame -> 1007")

# ---------------------------------------------------------------------------------------------
# 7 Close handling

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
               4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]


def _close_valid(who, code, reason=b""):
    def run(env):
        s = env.session(echo=True)
        s.send("client", cframe(OP_TEXT, b"before close"))
        got, reply = s.close_clean(by=who, code=code, reason=reason)
        want = close_body(code, reason)
        if got.payload != want:
            raise CaseFailure("close payload %r, want %r" % (got.payload, want))
    add(7, "%s: close %s%s completes the handshake" % (
        who, code if code is not None else "(no code)",
        " with a %d-byte reason" % len(reason) if reason else ""), run)


for code in VALID_CODES:
    _close_valid("client", code)
for code in (1000, 1001, 1011, 3000, 4999):
    _close_valid("upstream", code)
for who in ("client", "upstream"):
    _close_valid(who, None)
    _close_valid(who, 1000, "bye \u2603 \U0001F44B".encode())
_close_valid("client", 1000, b"r" * 123)

for code in INVALID_CODES:
    violation(7, "close with invalid code %d -> 1002" % code, "client",
              lambda m, code=code: m(OP_CLOSE, close_body(code)), 1002)
for code in (0, 1005, 1006, 1015, 5000):
    violation(7, "close with invalid code %d -> 1002" % code, "upstream",
              lambda m, code=code: m(OP_CLOSE, close_body(code)), 1002)
both(7, "close with a 1-byte payload -> 1002", lambda m: m(OP_CLOSE, b"\x03"), 1002)
both(7, "close with a 124-byte reason (126-byte payload) -> 1002",
     lambda m: m(OP_CLOSE, close_body(1000, b"r" * 124)), 1002)
both(7, "close with fin=0 -> 1002", lambda m: m(OP_CLOSE, close_body(1000), fin=False), 1002)
both(7, "close reason with invalid UTF-8 -> 1007",
     lambda m: m(OP_CLOSE, close_body(1000, KOSME + b"\xed\xa0\x80edited")), 1007)
violation(7, "close reason ending inside a character -> 1007", "client",
          lambda m: m(OP_CLOSE, close_body(1000, b"bye \xe2\x82")), 1007)


def _data_after_close(who):
    def run(env):
        s = env.session(echo=False)
        sender, receiver = s.peer(who), s.peer(other(who))
        close = maker(who)(OP_CLOSE, close_body(1000))
        sender.send(close + maker(who)(OP_TEXT, b"after close") + maker(who)(OP_PING, b"x"))
        got = receiver.wait_close()
        if got is None:
            raise CaseFailure("%s: no close frame; got %s" % (receiver.side,
                                                             describe_stream(bytes(receiver.rx))))
        reply = sender.wait_close()
        if reply is None:
            raise CaseFailure("%s: no close reply (ended %s)" % (sender.side, sender.ended))
        s.c.wait_end()
        s.u.wait_end()
        rrx = bytes(receiver.snapshot()[0])
        if rrx[:len(close)] != close or rrx[len(close):]:
            raise CaseFailure("%s received %s, want exactly the close frame (nothing after it)"
                              % (receiver.side, describe_stream(rrx)))
        check_gateway_close(reply, (1000, 1002), not sender.is_client, sender.side)
    add(7, "%s: frames after its close frame are not forwarded" % who, run)


_data_after_close("client")
_data_after_close("upstream")


def _close_mid_message(env):
    s = env.session(echo=True)
    s.send("client", cframe(OP_TEXT, b"unfinished", fin=False))
    s.close_clean(by="client", code=1000)


add(7, "client: close in the middle of a fragmented message completes the handshake",
    _close_mid_message)


def _upstream_tcp_closed(by):
    """RFC 6455 §5.5.1: after sending and receiving a close frame an endpoint MUST close the TCP
    connection. In frames mode upgate is the endpoint of the upstream leg: once that leg's close
    handshake is done (and the upstream has ended TCP) it must close its side, whatever the
    client's socket is doing. The client here keeps its socket open after the gateway's FIN."""
    def run(env):
        s = env.session(echo=True, close_on_eof=False)
        s.send("client", cframe(OP_TEXT, b"x"))
        s.close_clean(by=by)
    add(7, "%s starts the close, client keeps its socket open: the gateway still closes the "
        "upstream TCP connection" % by, run)


_upstream_tcp_closed("client")
_upstream_tcp_closed("upstream")

# ---------------------------------------------------------------------------------------------
# 9 Limits (gateway with limits.max_message_size = 64 KiB)

L = SMALL_LIMIT
valid(9, "text message of exactly max_message_size passes", "client",
      [lambda m: m(OP_TEXT, text_of(L))], gw="limits")
valid(9, "binary of max_message_size in 4 fragments with pings between passes", "client",
      [lambda m: b"".join(m(OP_BINARY if i == 0 else OP_CONT, bin_of(L // 4), fin=(i == 3))
                          + (m(OP_PING, b"%d" % i) if i < 3 else b"") for i in range(4))],
      gw="limits")
valid(9, "binary message of exactly max_message_size passes", "upstream",
      [lambda m: m(OP_BINARY, bin_of(L))], gw="limits")
for who in ("client", "upstream"):
    violation(9, "binary message of max_message_size + 1 -> 1009", who,
              lambda m: m(OP_BINARY, bin_of(L + 1)), 1009, gw="limits")
    violation(9, "fragmented binary over the limit (40000 + 40000) -> 1009", who,
              lambda m: m(OP_CONT, bin_of(40000)), 1009, gw="limits",
              setup=[lambda m: m(OP_BINARY, bin_of(40000), fin=False)])
    violation(9, "frame declaring 2^40 bytes (header only) -> 1009", who,
              lambda m: m(OP_BINARY, b"", length=1 << 40), 1009, gw="limits", after=False)
violation(9, "text message of max_message_size + 1 -> 1009", "client",
          lambda m: m(OP_TEXT, text_of(L + 1)), 1009, gw="limits")


def _many_fragments(env):
    s = env.session(gw="limits", echo=False)
    frags = [cframe(OP_BINARY if i == 0 else OP_CONT, bin_of(4096), fin=False) for i in range(17)]
    frags.append(cframe(OP_CONT, b"end"))
    s.send_bad("client", b"".join(frags), bad=sum(len(f) for f in frags[:16]))
    s.expect_failure(1009)


add(9, "client: 17 fragments of 4 KiB in one write (over the limit at the 17th) -> 1009",
    _many_fragments)
for who in ("client", "upstream"):
    _bad_after_split(9, "frame over max_message_size", who,
                     lambda m: m(OP_BINARY, b"", length=L + 1), 1009, gw="limits")

# ---------------------------------------------------------------------------------------------
# 10 Masking

for name, op, payload in (("text", OP_TEXT, b"not masked"), ("empty binary", OP_BINARY, b""),
                          ("ping", OP_PING, b"p"), ("close", OP_CLOSE, close_body(1000))):
    violation(10, "unmasked %s frame -> 1002" % name, "client",
              lambda m, op=op, payload=payload: frame_unmasked(op, payload), 1002)
    violation(10, "masked %s frame -> 1002" % name, "upstream",
              lambda m, op=op, payload=payload: uframe(op, payload, mask=True), 1002)
violation(10, "unmasked continuation of a masked message -> 1002", "client",
          lambda m: frame_unmasked(OP_CONT, b"tail"), 1002,
          setup=[lambda m: m(OP_TEXT, b"head", fin=False)])
violation(10, "masked frame with an all-zero key -> 1002", "upstream",
          lambda m: uframe(OP_TEXT, b"zero key", mask=b"\0\0\0\0"), 1002)
valid(10, "all-zero masking key is still a masked frame", "client",
      [lambda m: cframe(OP_TEXT, b"zero key", mask=b"\0\0\0\0")
       + cframe(OP_PING, b"z", mask=b"\0\0\0\0")])


def frame_unmasked(op, payload):
    return uframe(op, payload, mask=None)


# ---------------------------------------------------------------------------------------------
# 12 Compression: permessage-deflate negotiated end to end makes RSV1 legal on first frames

Z = deflate_message("compressed text \u2603 ".encode() * 20)


def _negotiated(env):
    s = env.session(echo=True, deflate=True, extra=DEFLATE_OFFER)
    offers = ",".join(harness.header_values(s.u.headers, "Sec-WebSocket-Extensions"))
    if "permessage-deflate" not in offers:
        raise CaseFailure("the upstream got no permessage-deflate offer (headers %r)" % s.u.headers)
    if "permessage-deflate" not in s.c.extension():
        raise CaseFailure("the client's 101 has no permessage-deflate (headers %r)" % s.c.headers)
    s.close_clean(by="client")


add(12, "client: permessage-deflate offer and answer pass through", _negotiated)
for who in ("client", "upstream"):
    valid(12, "compressed text (RSV1 on the frame) passes", who,
          [lambda m: m(OP_TEXT, Z, rsv=RSV1)], deflate=True)
    valid(12, "compressed text in 3 fragments (RSV1 on the first only) passes", who,
          [lambda m: m(OP_TEXT, Z[:10], rsv=RSV1, fin=False) + m(OP_PING, b"")
           + m(OP_CONT, Z[10:20], fin=False) + m(OP_CONT, Z[20:])], deflate=True)
    violation(12, "RSV1 on a continuation frame -> 1002", who,
              lambda m: m(OP_CONT, Z[10:], rsv=RSV1), 1002, deflate=True,
              setup=[lambda m: m(OP_TEXT, Z[:10], rsv=RSV1, fin=False)])
    violation(12, "RSV1 on a ping -> 1002", who, lambda m: m(OP_PING, b"p", rsv=RSV1), 1002,
              deflate=True)
    violation(12, "RSV2 on a data frame -> 1002", who, lambda m: m(OP_TEXT, b"x", rsv=RSV2), 1002,
              deflate=True)
valid(12, "compressed binary and uncompressed text mixed pass", "client",
      [lambda m: m(OP_BINARY, deflate_message(bin_of(3000)), rsv=RSV1) + m(OP_TEXT, b"plain")],
      deflate=True)
violation(12, "uncompressed text with invalid UTF-8 -> 1007", "client",
          lambda m: m(OP_TEXT, b"\xc0\xaf"), 1007, deflate=True)


def _declined(env):
    # The client offers deflate, the upstream does not accept it: RSV1 is not negotiated.
    s = env.session(echo=True, deflate=False, extra=DEFLATE_OFFER)
    if "permessage-deflate" in s.c.extension():
        raise CaseFailure("client's 101 claims permessage-deflate the upstream did not accept")
    s.send("client", cframe(OP_TEXT, b"hello"))
    s.send_bad("client", cframe(OP_TEXT, Z, rsv=RSV1))
    s.expect_failure(1002)


add(12, "client: deflate offered but declined by the upstream, RSV1 -> 1002", _declined)

# ---------------------------------------------------------------------------------------------
# 13 Drain: SIGTERM sends 1001 to both legs (runs last: it stops the gateways)


def _drain(gwname, states):
    def run(env):
        gw = env.gateway(gwname)
        sessions = []
        for state in states:
            s = env.session(gw=gwname, echo=False)
            if state == "client-mid-message":
                s.send("client", cframe(OP_TEXT, b"unfinished", fin=False))
            elif state == "upstream-mid-message":
                s.send("upstream", uframe(OP_BINARY, b"unfinished", fin=False))
            elif state == "traffic":
                s.send("client", cframe(OP_BINARY, bin_of(1000)))
                s.send("upstream", uframe(OP_TEXT, text_of(1000)))
            sessions.append(s)
        gw.drained = True
        gw.proc.send_signal(signal.SIGTERM)
        for s in sessions:
            for peer in (s.c, s.u):
                f = peer.wait_close(timeout=5)
                if f is None:
                    raise CaseFailure("%s: connection ended (%s) without a 1001 close during drain"
                                      % (peer.side, peer.ended))
                check_gateway_close(f, 1001, not peer.is_client, peer.side)
                if bytes(peer.rx[:f.offset]) != tx_before_close(s.peer(other(peer.side))):
                    raise CaseFailure("%s: before the drain close got %s" %
                                      (peer.side, describe_stream(bytes(peer.rx))))
            for peer in (s.c, s.u):
                peer.wait_end(timeout=5)
        try:
            gw.proc.wait(10)
        except Exception:
            gw.stop()
            raise CaseFailure("gateway did not exit within 10 s of SIGTERM")
        if gw.proc.returncode != 0:
            raise CaseFailure("gateway exited with %s after drain\n%s"
                              % (harness.describe_exit(gw.proc.returncode), gw.stderr_tail(15)))
    add(13, "SIGTERM with sessions %s: 1001 close frames to both legs, exit 0"
        % ", ".join(states), run)


_drain("limits", ["idle", "upstream-mid-message"])
_drain("main", ["idle", "client-mid-message", "traffic"])


# ---------------------------------------------------------------------------------------------
# Runner


def number_cases():
    counts = {}
    for c in CASES:
        counts[c.group] = counts.get(c.group, 0) + 1
        c.id = "%d.%d" % (c.group, counts[c.group])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    ap.add_argument("-k", dest="pattern", help="run only cases whose id or title contains this")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--mode", default="frames",
                    help="route mode under test (passthrough: self-check of the suite, where "
                         "every violation case must fail because the upstream is lenient)")
    args = ap.parse_args()
    number_cases()
    selected = [c for c in CASES
                if not args.pattern or args.pattern in c.id + " " + c.title
                or args.pattern == c.id]
    if args.list:
        for c in selected:
            print("%-6s %s" % (c.id, c.title))
        print("%d cases" % len(selected))
        return 0

    print("upgate frames-mode conformance: %d cases, binary %s" % (len(selected), harness.upgate_bin()))
    env = Env(verbose=args.verbose, mode=args.mode)
    try:
        env.start()
    except Exception as exc:
        print("SETUP FAILED: %s" % exc)
        env.stop()
        return 2

    t0 = time.monotonic()
    results = []  # (case, ok, message, seconds)
    for c in selected:
        if time.monotonic() - t0 > SUITE_BUDGET:
            results.append((c, False, "not run: suite budget of %.0fs exhausted" % SUITE_BUDGET, 0))
            continue
        env.notes = []
        start = time.monotonic()
        ok, msg = True, ""
        try:
            c.fn(env)
        except CaseFailure as exc:
            ok, msg = False, str(exc)
        except Exception:
            ok, msg = False, traceback.format_exc()
        finally:
            env.end_case()
        try:
            env.check_gateways()
        except CaseFailure as exc:
            ok, msg = False, (msg + "\n" if msg else "") + str(exc)
        if env.up.errors:
            ok, msg = False, (msg + "\n" if msg else "") + "upstream errors: %r" % env.up.errors
            env.up.errors.clear()
        took = time.monotonic() - start
        results.append((c, ok, msg, took))
        if not ok or args.verbose or env.notes:
            print("%s %-6s %s (%.2fs)" % ("PASS" if ok else "FAIL", c.id, c.title, took))
            for n in env.notes:
                print("         note: %s" % n)
            if msg:
                print("         " + msg.replace("\n", "\n         "))
        sys.stdout.flush()

    problems = env.stop()
    elapsed = time.monotonic() - t0

    print()
    print("%-5s %-22s %6s %7s %7s" % ("group", "", "cases", "passed", "failed"))
    print("-" * 51)
    total = passed = 0
    for g in sorted(GROUPS):
        rs = [r for r in results if r[0].group == g]
        if not rs:
            continue
        p = sum(1 for r in rs if r[1])
        total += len(rs)
        passed += p
        print("%-5d %-22s %6d %7d %7d" % (g, GROUPS[g], len(rs), p, len(rs) - p))
    print("-" * 51)
    print("%-5s %-22s %6d %7d %7d" % ("all", "", total, passed, total - passed))
    for p in problems:
        print("TEARDOWN: %s" % p)
    print("CONFORMANCE: %d cases, %d passed, %d failed in %.1fs%s"
          % (total, passed, total - passed, elapsed,
             "; %d gateway teardown problem(s)" % len(problems) if problems else ""))
    return 0 if passed == total and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
