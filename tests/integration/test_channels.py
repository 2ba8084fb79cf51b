"""Channel routes (`kind: channel`) and the admin publish API end to end, against the real upgate:

- POST /publish/{channel} from 4 concurrent publishers: every subscriber, on both workers, sees
  the same order, and each message's position is the seq its publish answer named; one
  publisher: the order is the publish order;
- Server-Sent Events subscribers get the same messages (id = seq, one data: line per line);
- binary publishes arrive as binary frames;
- the admin API: bearer token, 404, 405, /healthz, /readyz (503 while draining);
- a client message on a channel route is answered with close 1003; a subscriber that stops
  reading is closed with 1008 (overflow: close) or skipped (overflow: drop) while the others
  receive everything;
- SIGTERM: subscribers get close 1001 and upgate exits 0.
"""

import asyncio
import base64
import json
import re
import signal
import struct
import threading
import time
import unittest

import websockets

import harness
from harness import GatewayTestCase, OP_BINARY, OP_CLOSE, OP_TEXT, RawClient
import bridge_util
from bridge_util import Admin, SubscriberPool, start_class_gateway, start_gateway

TOKEN = "it-s3cret-token"
SOURCES = ["127.0.0.%d" % i for i in range(2, 10)]
QUEUE = 64 * 1024          # max_queue_bytes of the slow-subscriber routes
BIG = 192 * 1024           # message size for the slow-subscriber tests (3 x the queue limit)
NOTICE = '{"type":"overflow","missed":{count}}'  # overflow_notice of the dropnote route


def channel_routes():
    return [
        {"name": "news", "match": {"path_prefix": "/news/"}, "kind": "channel",
         "channel": "{path.1}", "sse": True},
        {"name": "slow", "match": {"path_prefix": "/slow/"}, "kind": "channel",
         "channel": "{path.1}", "max_queue_bytes": "64KiB", "overflow": "close"},
        {"name": "drop", "match": {"path_prefix": "/drop/"}, "kind": "channel",
         "channel": "{path.1}", "max_queue_bytes": "64KiB", "overflow": "drop"},
        {"name": "dropnote", "match": {"path_prefix": "/dropnote/"}, "kind": "channel",
         "channel": "{path.1}", "max_queue_bytes": "64KiB", "overflow": "drop",
         "overflow_notice": NOTICE},
    ]


def channel_config(token=TOKEN, **overrides):
    admin = {"address": "127.0.0.1:0"}
    if token:
        admin["token"] = token
    overrides.setdefault("workers", 2)
    return harness.make_config(upstreams={}, routes=channel_routes(), admin=admin, **overrides)


def warm_up(admin, channel, subscribers, timeout=10.0):
    """Publish "warmup" messages until the hub counts `subscribers` on `channel` (a subscription
    is registered just after its 101 is written). Returns how many were published."""
    published = [0]

    def ready():
        answer = admin.publish(channel, "warmup")
        published[0] += 1
        return answer["subscribers"] == subscribers

    harness.poll_until(ready, timeout, interval=0.05,
                       what="%d subscribers counted on %s" % (subscribers, channel))
    return published[0]


def payloads(sub, skip_warmup=True):
    out = [p for _, p in sub.messages]
    return [p for p in out if not (skip_warmup and p == b"warmup")]


def big_message(i):
    tag = b"m%04d:" % i
    return tag + bytes([65 + i % 26]) * (BIG - len(tag))


def tag_of(payload):
    m = re.match(rb"m(\d{4}):", payload)
    return int(m.group(1)) if m else None


class ChannelTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = start_class_gateway(cls, channel_config())
        cls.admin = Admin(cls.gw, TOKEN)

    def tearDown(self):
        self.assertGatewayAlive(self.gw)

    def pool(self, **kw):
        pool = SubscriberPool(self.gw.addr(), **kw)
        self.addCleanup(pool.stop)
        return pool

    # -- ordering -------------------------------------------------------------------------
    def test_four_concurrent_publishers_every_subscriber_sees_one_order(self):
        n_subs, publishers, per_publisher = 100, 4, 50
        pool = self.pool(name="order")
        subs = pool.connect_ws("/news/order4", n_subs, sources=SOURCES)
        warm = warm_up(self.admin, "order4", n_subs)

        results = [[] for _ in range(publishers)]
        errors = []

        def publisher(k):
            try:
                for i in range(per_publisher):
                    text = "p%d-%03d" % (k, i)
                    answer = self.admin.publish("order4", text)
                    results[k].append((text, answer))
            except Exception as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=publisher, args=(k,)) for k in range(publishers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        total = publishers * per_publisher
        seq_of = {}
        for k in range(publishers):
            self.assertEqual(len(results[k]), per_publisher)
            for text, answer in results[k]:
                self.assertEqual(answer["channel"], "order4", answer)
                self.assertEqual(answer["subscribers"], n_subs, answer)
                seq_of[text] = answer["seq"]
            own = [a["seq"] for _, a in results[k]]
            self.assertEqual(own, sorted(own), "publisher %d's seqs should increase" % k)
        self.assertEqual(sorted(seq_of.values()), list(range(warm + 1, warm + total + 1)),
                         "publish answers should name each seq once")

        pool.wait(lambda: all(len(payloads(c)) >= total for c in subs), 30,
                  "%d messages at every subscriber" % total)
        with pool.cond:
            reference = [p.decode() for p in payloads(subs[0])]
            self.assertEqual(len(reference), total)
            for pos, text in enumerate(reference):
                self.assertEqual(seq_of[text], warm + 1 + pos,
                                 "message %r at position %d has seq %d from its publish answer"
                                 % (text, pos, seq_of[text]))
            for c in subs:
                self.assertEqual([p.decode() for p in payloads(c)], reference,
                                 "subscriber %d (%s) saw another order" % (c.index, c.local))
                self.assertTrue(all(op == OP_TEXT for op, _ in c.messages), c)
                self.assertEqual(c.errors, [])
        pool.close_all()
        self.assertEqual(bridge_util.workers_of(self.gw, subs), {0, 1},
                         "the subscribers should be spread over both workers")

    def test_single_publisher_order_is_publish_order(self):
        n_subs, total = 40, 200
        pool = self.pool(name="order1")
        subs = pool.connect_ws("/news/order1", n_subs, sources=SOURCES)
        warm = warm_up(self.admin, "order1", n_subs)
        sent = []
        for i in range(total):
            text = "single-%03d" % i
            answer = self.admin.publish("order1", text)
            self.assertEqual(answer["seq"], warm + 1 + i, answer)
            sent.append(text)
        pool.wait(lambda: all(len(payloads(c)) >= total for c in subs), 30, "all messages")
        with pool.cond:
            for c in subs:
                self.assertEqual([p.decode() for p in payloads(c)], sent,
                                 "subscriber %d" % c.index)
        pool.close_all()

    # -- Server-Sent Events ---------------------------------------------------------------
    def test_sse_subscribers_get_the_same_messages(self):
        pool = self.pool(name="sse")
        ws = pool.connect_ws("/news/ssechan", 4, sources=SOURCES)
        sse = pool.connect_sse("/news/ssechan", 4, sources=SOURCES)
        warm = warm_up(self.admin, "ssechan", 8)
        messages = ["plain", "line one\nline two\nline three", "crlf one\r\ncrlf two",
                    "trailing newline\n", "", "\u00fcn\u00efc\u00f8d\u00e9 \u2713 \U0001F600",
                    "data: looks like a field\nid: 999", "x" * 70000]
        seqs = []
        for m in messages:
            seqs.append(self.admin.publish("ssechan", m)["seq"])
        self.assertEqual(seqs, list(range(warm + 1, warm + 1 + len(messages))))
        expected = {str(s): m.replace("\r\n", "\n") for s, m in zip(seqs, messages)}

        def done(c):
            if c.kind == "sse":
                return any(i == str(seqs[-1]) for i, _ in c.messages)
            return len(payloads(c)) >= len(messages)

        pool.wait(lambda: all(done(c) for c in ws + sse), 20, "every message everywhere")
        with pool.cond:
            for c in ws:
                self.assertEqual([p.decode() for p in payloads(c)], messages, c)
            for c in sse:
                got = [(i, d) for i, d in c.messages if d != "warmup"]
                self.assertEqual([i for i, _ in got], [str(s) for s in seqs],
                                 "SSE ids should be the publish seqs (subscriber %d)" % c.index)
                self.assertEqual(dict(got), expected, "SSE data (subscriber %d)" % c.index)
                raw = bytes(c.raw_sse)
                three = ("id: %d\ndata: line one\ndata: line two\ndata: line three\n\n"
                         % seqs[1]).encode()
                self.assertIn(three, raw, "a 3-line message should be 3 data: lines")
                self.assertIn(("id: %d\ndata: crlf one\ndata: crlf two\n\n" % seqs[2]).encode(),
                              raw)
                self.assertIn(("id: %d\ndata: trailing newline\ndata: \n\n" % seqs[3]).encode(),
                              raw)
                self.assertIn(("id: %d\ndata: data: looks like a field\ndata: id: 999\n\n"
                               % seqs[6]).encode(), raw)
        pool.close_all()

    def test_sse_payload_with_a_lone_cr_keeps_its_text(self):
        # EventSource ends lines at CRLF, LF *or a lone CR*: a CR inside a data line starts a
        # new line that is not a data: field, and the rest of the message is lost.
        pool = self.pool(name="sse-cr")
        sse = pool.connect_sse("/news/ssecr", 1)[0]
        warm_up(self.admin, "ssecr", 1)
        seq = self.admin.publish("ssecr", "before\rafter")["seq"]
        end = self.admin.publish("ssecr", "end")["seq"]
        pool.wait(lambda: any(i == str(end) for i, _ in sse.messages), 10, "the SSE events")
        with pool.cond:
            got = dict(sse.messages)
            raw = bytes(sse.raw_sse)
        self.assertEqual(got.get(str(seq)), "before\nafter",
                         "an EventSource client reads %r for the payload 'before\\rafter'; "
                         "raw stream %r" % (got.get(str(seq)), raw[-120:]))

    # -- binary ---------------------------------------------------------------------------
    def test_binary_publish_arrives_as_binary_frame(self):
        pool = self.pool(name="binary")
        subs = pool.connect_ws("/news/bin", 3, sources=SOURCES)
        warm_up(self.admin, "bin", 3)
        blob = bytes(range(256)) * 16 + b"\xff\xfe\x00"
        self.admin.publish("bin", blob, content_type="application/octet-stream")
        self.admin.publish("bin", b"flagged", content_type="text/plain", query="?binary=1")
        self.admin.publish("bin", "text again")
        pool.wait(lambda: all(len(payloads(c)) >= 3 for c in subs), 10, "three messages")
        with pool.cond:
            for c in subs:
                got = [(op, p) for op, p in c.messages if p != b"warmup"]
                self.assertEqual(got, [(OP_BINARY, blob), (OP_BINARY, b"flagged"),
                                       (OP_TEXT, b"text again")], c)
        pool.close_all()

    def test_binary_publish_reaches_sse_readers_as_base64(self):
        # SSE carries UTF-8 text in lines: raw bytes would be split at CR/LF and mangled.
        pool = self.pool(name="binary-sse")
        sse = pool.connect_sse("/news/binsse", 1)[0]
        warm_up(self.admin, "binsse", 1)
        blob = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
        seq = self.admin.publish("binsse", blob, content_type="application/octet-stream")["seq"]
        end = self.admin.publish("binsse", "end")["seq"]
        pool.wait(lambda: any(i == str(end) for i, _ in sse.messages), 10, "the SSE events")
        with pool.cond:
            raw = bytes(sse.raw_sse)
        event = ("id: %d\nevent: binary\ndata: %s\n\n"
                 % (seq, base64.b64encode(blob).decode())).encode()
        self.assertIn(event, raw, raw[-400:])
        self.assertIn(("id: %d\ndata: end\n\n" % end).encode(), raw)
        pool.close_all()

    def test_text_publish_that_is_not_utf8_does_not_break_subscribers(self):
        # A text frame must carry UTF-8 (RFC 6455 8.1): clients fail the connection on anything
        # else. A text publish of other bytes must be refused or sent another way, not break
        # every subscriber of the channel.
        pool = self.pool(name="utf8")
        subs = pool.connect_ws("/news/utf8", 2)
        warm_up(self.admin, "utf8", 2)
        answer = self.admin.publish("utf8", b"\xff\xfe not UTF-8", content_type="text/plain",
                                    check=False)
        self.assertIn(answer.status, (200, 400), answer)
        self.admin.publish("utf8", "after")
        pool.wait(lambda: all(payloads(c)[-1:] == [b"after"] for c in subs), 10, "'after'")
        with pool.cond:
            for c in subs:
                for op, p in c.messages:
                    if op == OP_TEXT:
                        try:
                            p.decode("utf-8")
                        except UnicodeDecodeError:
                            self.fail("publish answered %d %r, and subscribers got a text frame "
                                      "that is not UTF-8: %r" % (answer.status, answer.body, p))
        pool.close_all()

    # -- the admin API --------------------------------------------------------------------
    def test_admin_token_and_endpoints(self):
        pool = self.pool(name="admin")
        sub = pool.connect_ws("/news/adminchan", 1)[0]
        no = self.admin.request("POST", "/publish/adminchan", b"no token", token=False)
        self.assertEqual(no.status, 401, no)
        self.assertIn("bearer", (no.header("WWW-Authenticate") or "").lower(), no)
        wrong = self.admin.request("POST", "/publish/adminchan", b"wrong",
                                   token="Bearer not-" + TOKEN)
        self.assertEqual(wrong.status, 401, wrong)
        basic = self.admin.request("POST", "/publish/adminchan", b"basic",
                                   token="Basic " + TOKEN)
        self.assertEqual(basic.status, 401, basic)
        # Fresh channel: the refused publishes took no sequence number and reached no one.
        accepted = [0]

        def publish_ok():
            answer = self.admin.publish("adminchan", "ok")
            accepted[0] += 1
            self.assertEqual(answer["seq"], accepted[0], answer)
            return answer["subscribers"] == 1

        harness.poll_until(publish_ok, 10, what="the subscriber counted")
        ok = self.admin.publish("adminchan", "last")
        self.assertEqual(ok["channel"], "adminchan")
        self.assertEqual(ok["seq"], accepted[0] + 1, ok)
        pool.wait(lambda: payloads(sub)[-1:] == [b"last"], 10, "the last message")
        with pool.cond:
            got = payloads(sub)
        self.assertEqual(set(got), {b"ok", b"last"}, got)

        unknown = self.admin.request("GET", "/nope")
        self.assertEqual(unknown.status, 404, unknown)
        unknown_post = self.admin.request("POST", "/publishx/a", b"x")
        self.assertEqual(unknown_post.status, 404, unknown_post)
        get = self.admin.request("GET", "/publish/adminchan")
        self.assertEqual(get.status, 405, get)
        self.assertEqual(get.header("Allow"), "POST", get)
        health = self.admin.request("GET", "/healthz")
        self.assertEqual(health.status, 200, health)
        ready = self.admin.request("GET", "/readyz")
        self.assertEqual(ready.status, 200, ready)
        pool.close_all()

    # -- client messages and slow subscribers ---------------------------------------------
    def test_client_message_on_channel_route_gets_1003(self):
        pool = self.pool(name="1003")
        talker, listener = pool.connect_ws("/news/talk", 2)
        warm_up(self.admin, "talk", 2)
        pool.send(talker, OP_TEXT, b"hello from a client")
        pool.wait(lambda: talker.close_code is not None, 10, "a close frame for the talker")
        self.assertEqual(talker.close_code, 1003, talker)
        pool.wait(lambda: talker.eof is not None, 10, "the talker's connection to end")
        self.admin.publish("talk", "still here")
        pool.wait(lambda: payloads(listener)[-1:] == [b"still here"], 10, "the listener")
        with pool.cond:
            self.assertIsNone(listener.close_code)
            self.assertNotIn(b"still here", payloads(talker))
        pool.close_all()

    def test_pings_in_one_read_get_one_pong_for_the_latest(self):
        c = RawClient(self.gw.addr())
        self.addCleanup(c.close)
        c.handshake("/news/pings")
        c.send(b"".join(harness.encode_frame(harness.OP_PING, p) for p in (b"1", b"2", b"3")))
        fin, op, payload = c.recv_frame()
        self.assertEqual((op, payload), (harness.OP_PONG, b"3"))
        c.send_frame(harness.OP_PING, b"4")  # and the next read's ping gets its own
        fin, op, payload = c.recv_frame()
        self.assertEqual((op, payload), (harness.OP_PONG, b"4"))

    def _slow_client(self, path):
        c = RawClient(self.gw.addr(), rcvbuf=4096)
        self.addCleanup(c.close)
        c.handshake(path)
        return c

    def _publish_until_logged(self, channel, fast, pool, pattern, count, first=0, limit=60):
        """Publish BIG messages one at a time (each read by the fast subscribers before the
        next) until `count` stderr lines match `pattern`. Returns the number published."""
        i = first
        for _ in range(limit):
            self.admin.publish(channel, big_message(i))
            i += 1
            n = i
            pool.wait(lambda: all(len(payloads(c)) >= n for c in fast), 20,
                      "fast subscribers reading message %d" % (n - 1))
            if len(bridge_util.gateway_messages(self.gw, pattern)) >= count:
                return i
        self.fail("no %d log lines /%s/ after %d messages of %d bytes; stderr:\n%s"
                  % (count, pattern, limit, BIG, self.gw.stderr_tail()))

    def _check_fast(self, pool, fast, total, extra=0):
        """Every fast subscriber got big messages 0..total-1 exactly (then `extra` others)."""
        pool.wait(lambda: all(len(payloads(c)) >= total + extra for c in fast), 20,
                  "all messages")
        with pool.cond:
            for c in fast:
                got = payloads(c)
                self.assertEqual(len(got), total + extra, c)
                got = got[:total]
                self.assertEqual([tag_of(p) for p in got], list(range(total)), c)
                self.assertTrue(all(len(p) == BIG for p in got), c)
                self.assertTrue(all(p == big_message(tag_of(p)) for p in got), c)
                self.assertIsNone(c.close_code, c)

    def _read_all(self, client, stop, timeout=30):
        """Frames from a RawClient until stop(frames) or the timeout."""
        frames = []
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if stop(frames):
                return frames
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            frames.append(client.recv_frame(timeout=remaining))
        self.fail("reading the slow subscriber: stopped after %d frames: %r"
                  % (len(frames), [(op, p[:12]) for _, op, p in frames[-5:]]))

    def test_subscriber_that_stops_reading_is_closed_with_1008(self):
        pool = self.pool(name="1008")
        fast = pool.connect_ws("/slow/slowclose", 3)
        slow = self._slow_client("/slow/slowclose")
        warm_up(self.admin, "slowclose", 4)
        pattern = r"channel slowclose: subscriber too slow \("
        n = self._publish_until_logged("slowclose", fast, pool, pattern, 1)
        # The others keep receiving after the slow one was cut off.
        for i in range(n, n + 5):
            self.admin.publish("slowclose", big_message(i))
        self._check_fast(pool, fast, n + 5)

        frames = self._read_all(slow, lambda f: f and f[-1][1] == OP_CLOSE)
        data = [p for _, op, p in frames if op != OP_CLOSE and p != b"warmup"]
        tags = [tag_of(p) for p in data]
        self.assertEqual(tags, list(range(len(tags))),
                         "the slow subscriber should get an in-order prefix, then the close")
        self.assertLess(len(tags), n + 5)
        code = struct.unpack("!H", frames[-1][2][:2])[0]
        self.assertEqual(code, 1008, "close frame %r" % frames[-1][2])
        slow.send_frame(OP_CLOSE, harness.close_payload(1008))
        _, how = slow.read_until_closed(10)
        self.assertIn(how, ("eof", "reset"))
        pool.close_all()

    def test_subscriber_that_never_reads_again_is_disconnected(self):
        # After the 1008 close frame is queued, a subscriber that never reads (and so never
        # answers) must not keep its connection and queue forever.
        pool = self.pool(name="1008-gone")
        fast = pool.connect_ws("/slow/slowgone", 2)
        slow = self._slow_client("/slow/slowgone")
        warm_up(self.admin, "slowgone", 3)
        n = self._publish_until_logged("slowgone", fast, pool,
                                       r"channel slowgone: subscriber too slow \(", 1)
        self.admin.publish("slowgone", big_message(n))
        self._check_fast(pool, fast, n + 1)
        try:
            entry = self.gw.access_log_for_client(slow.local, timeout=15)
        except AssertionError:
            self.fail("a subscriber closed with 1008 that never reads again still holds its "
                      "session 15 s later (no access-log line for %s); stderr:\n%s"
                      % (harness.hostport(slow.local), self.gw.stderr_tail(10)))
        self.assertIn("1008", str(entry.get("close")), entry)
        pool.close_all()

    def test_overflow_drop_keeps_slow_subscriber_and_others_get_everything(self):
        self._overflow_drop("drop", "dropchan")

    def test_overflow_notice_tells_the_slow_subscriber_what_it_missed(self):
        self._overflow_drop("dropnote", "notechan", notice=True)

    def test_overflow_notice_comes_when_the_backlog_drains(self):
        # The last messages published are skipped for the slow subscriber, and nothing is
        # published after them: the notice must not wait for a next message that never comes.
        pool = self.pool(name="drain-notice")
        fast = pool.connect_ws("/dropnote/tailchan", 1)
        slow = self._slow_client("/dropnote/tailchan")
        warm_up(self.admin, "tailchan", 2)  # how many of these the slow one got may vary
        n = self._publish_until_logged("tailchan", fast, pool,
                                       r"channel tailchan: subscriber too slow, dropping", 1)
        for i in range(n, n + 3):
            self.admin.publish("tailchan", big_message(i))
        self._check_fast(pool, fast, n + 3)
        published = n + 3

        def told_everything(frames):
            got = sum(1 for _, _, p in frames if tag_of(p) is not None)
            told = sum(json.loads(p)["missed"] for _, op, p in frames
                       if p.startswith(b'{"type":"overflow"'))
            return got + told == published

        frames = self._read_all(slow, told_everything, timeout=30)
        self.assertTrue(frames[-1][2].startswith(b'{"type":"overflow"'),
                        "the last skipped messages should be told last: %r" % frames[-1][2][:40])
        tags = [tag_of(p) for _, _, p in frames if tag_of(p) is not None]
        self.assertEqual(tags, sorted(set(tags)))
        self.assertLess(tags[-1], n + 2, "the last messages should have been skipped")
        slow.send_frame(OP_CLOSE, harness.close_payload(1000))
        _, op, _ = slow.recv_frame()
        self.assertEqual(op, OP_CLOSE)
        pool.close_all()

    def _dropped_total(self, route):
        """upgate_channel_dropped_total{route=...}: 0 before the route's first skip."""
        series = r'^upgate_channel_dropped_total\{route="%s"\} (\d+)$' % route
        m = re.search(series, self.admin.request("GET", "/metrics").body.decode(), re.M)
        return int(m.group(1)) if m else 0

    def _overflow_drop(self, route, channel, notice=False):
        dropped_before = self._dropped_total(route)  # other tests of the class use the route
        pool = self.pool(name=route)
        fast = pool.connect_ws("/%s/%s" % (route, channel), 3)
        slow = self._slow_client("/%s/%s" % (route, channel))
        warm = warm_up(self.admin, channel, 4)
        n = self._publish_until_logged(channel, fast, pool,
                                       r"channel %s: subscriber too slow, dropping" % channel, 1)
        for i in range(n, n + 10):
            self.admin.publish(channel, big_message(i))
        total = n + 10
        self._check_fast(pool, fast, total)

        # The slow subscriber reads again. While its backlog (over the limit) drains, new
        # messages are still skipped for it, so publish small "final-k" messages until one
        # reaches it (bounded), then one more message: it is a live subscriber.
        frames, reader_errors = [], []
        lock = threading.Lock()

        def read_slow():
            try:
                for _ in range(100000):
                    frame = slow.recv_frame(timeout=30)
                    with lock:
                        frames.append(frame)
                    if frame[2] == b"after" or frame[1] == OP_CLOSE:
                        return
            except Exception as exc:  # reported below
                reader_errors.append(repr(exc))

        reader = threading.Thread(target=read_slow, daemon=True)
        reader.start()
        self.addCleanup(reader.join, 5)

        def got_final():
            with lock:
                return any(p.startswith(b"final-") for _, _, p in frames)

        answer = None
        for k in range(60):
            answer = self.admin.publish(channel, "final-%d" % k)
            try:
                harness.poll_until(got_final, 1.0, interval=0.02, what="a final message")
                break
            except TimeoutError:
                self.assertEqual(reader_errors, [])
        self.assertTrue(got_final(), "the slow subscriber never caught up: %r %r"
                        % (reader_errors, [(op, p[:10]) for _, op, p in frames[-5:]]))
        self.assertEqual(answer["subscribers"], 4, "the slow subscriber should still count")
        self.admin.publish(channel, "after")
        reader.join(15)
        self.assertFalse(reader.is_alive(), "no 'after' message at the slow subscriber")
        self.assertEqual(reader_errors, [])
        self.assertEqual(frames[-1][2], b"after")
        self.assertNotIn(OP_CLOSE, {op for _, op, _ in frames},
                         "overflow: drop must not close the subscriber")
        # The notices (dropnote) come apart from the messages: each just before the first message
        # after a gap, saying how many went missing; together, every message skipped.
        notices = [json.loads(p) for _, op, p in frames if p.startswith(b'{"type":"overflow"')]
        if notice:
            self.assertTrue(notices, "no overflow notice reached the slow subscriber")
            for i, (_, op, p) in enumerate(frames):
                if p.startswith(b'{"type":"overflow"'):
                    self.assertEqual(op, OP_TEXT)
                    self.assertLess(i + 1, len(frames), "a notice with no message after it")
                    self.assertFalse(frames[i + 1][2].startswith(b'{"type":"overflow"'))
        else:
            self.assertEqual(notices, [])
        frames = [f for f in frames if not f[2].startswith(b'{"type":"overflow"')]
        tags = [tag_of(p) for _, op, p in frames if tag_of(p) is not None]
        self.assertEqual(tags, sorted(set(tags)), "what the slow subscriber got is in order")
        self.assertLess(len(tags), total, "some messages should have been dropped")
        self.assertTrue(all(p == big_message(tag_of(p)) for _, _, p in frames
                            if tag_of(p) is not None))
        finals = [p for _, _, p in frames if p.startswith(b"final-")]
        self.assertEqual(finals, sorted(finals, key=lambda p: int(p[6:])))
        self._check_fast(pool, fast, total, extra=k + 2)
        slow.send_frame(OP_CLOSE, harness.close_payload(1000))
        fin, op, payload = slow.recv_frame()
        self.assertEqual(op, OP_CLOSE)

        # What was skipped is counted, exactly: in the metric and in the session's log line.
        published = warm + total + (k + 1) + 1
        dropped = published - sum(1 for _, op, _ in frames if op in (OP_TEXT, OP_BINARY))
        self.assertGreater(dropped, 0)
        if notice:
            # Every skip comes before some message it got ("after" came last), so every one was
            # told of.
            self.assertEqual(sum(x["missed"] for x in notices), dropped, notices)
        harness.poll_until(lambda: self._dropped_total(route) - dropped_before == dropped, 5,
                           interval=0.05, what="upgate_channel_dropped_total{route=\"%s\"} %d "
                           "more than before" % (route, dropped))
        entry = self.gw.access_log_for_client(slow.local, timeout=10)
        self.assertIn("; %d channel messages not sent (over max_queue_bytes, overflow: drop)"
                      % dropped, entry.get("close"), entry)
        pool.close_all()


class DrainTest(GatewayTestCase):
    def test_readyz_503_while_draining(self):
        gw = start_gateway(self, channel_config(token=None, drain_timeout="10s"))
        admin = Admin(gw)
        self.assertEqual(admin.request("GET", "/readyz").status, 200)
        self.assertEqual(admin.request("GET", "/healthz").status, 200)
        # A subscriber that does not answer the close frame yet keeps the drain going.
        sub = RawClient(gw.addr())
        self.addCleanup(sub.close)
        sub.handshake("/news/draining")
        harness.poll_until(lambda: admin.publish("draining", "hi")["subscribers"] == 1, 10,
                           what="the subscriber counted")
        gw.signal(signal.SIGTERM)
        ready = harness.poll_until(
            lambda: (lambda a: a if a.status != 200 else None)(admin.request("GET", "/readyz")),
            5, what="/readyz to change")
        self.assertEqual(ready.status, 503, ready)
        self.assertTrue(gw.alive(), "upgate should still be draining")
        frames = []
        for _ in range(100):
            frames.append(sub.recv_frame())
            if frames[-1][1] == OP_CLOSE:
                break
        self.assertEqual(frames[-1][1], OP_CLOSE, frames)
        self.assertEqual(struct.unpack("!H", frames[-1][2][:2])[0], 1001, frames[-1])
        sub.send_frame(OP_CLOSE, harness.close_payload(1001))
        _, how = sub.read_until_closed(10)
        self.assertIn(how, ("eof", "reset"))
        gw.proc.wait(10)
        self.assertEqual(gw.proc.returncode, 0, gw.stderr_tail())


class SigtermTest(GatewayTestCase):
    def test_sigterm_closes_subscribers_with_1001_and_exits_0(self):
        gw = start_gateway(self, channel_config())
        admin = Admin(gw, TOKEN)
        pool = SubscriberPool(gw.addr(), name="sigterm")
        self.addCleanup(pool.stop)
        raw = pool.connect_ws("/news/bye", 20, sources=SOURCES)
        sse = pool.connect_sse("/news/bye", 2, sources=SOURCES)

        async def run():
            clients = [await websockets.connect(gw.url("/news/bye"), ping_interval=None,
                                                open_timeout=10, close_timeout=10)
                       for _ in range(2)]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, warm_up, admin, "bye", 24)
            await loop.run_in_executor(None, admin.publish, "bye", "before")
            for ws in clients:
                for _ in range(50):
                    if await asyncio.wait_for(ws.recv(), 10) == "before":
                        break
            gw.signal(signal.SIGTERM)
            for ws in clients:
                await asyncio.wait_for(ws.wait_closed(), 15)
            return [(ws.close_code, ws.close_reason) for ws in clients]

        codes = self.run_async(run(), timeout=60)
        self.assertEqual([c for c, _ in codes], [1001, 1001], codes)
        pool.wait(lambda: all(c.close_code is not None and c.eof for c in raw), 15,
                  "close frames at the raw subscribers")
        pool.wait(lambda: all(c.eof for c in sse), 15, "the SSE streams to end")
        with pool.cond:
            self.assertEqual({c.close_code for c in raw}, {1001}, pool.summary())
            self.assertTrue(all(any(d == "before" for _, d in c.messages) for c in sse))
        gw.proc.wait(15)
        self.assertEqual(gw.proc.returncode, 0, gw.stderr_tail())


class AdminLimitsTest(GatewayTestCase):
    """admin.max_body_bytes: a larger publish is refused with 413 and reaches nobody."""

    @classmethod
    def setUpClass(cls):
        config = harness.make_config(upstreams={}, routes=channel_routes(), workers=1,
                                     admin={"address": "127.0.0.1:0", "token": TOKEN,
                                            "max_body_bytes": "1KiB"})
        cls.gw = start_class_gateway(cls, config)
        cls.admin = Admin(cls.gw, TOKEN)

    def test_publish_over_max_body_bytes_is_413(self):
        pool = SubscriberPool(self.gw.addr())
        self.addCleanup(pool.stop)
        sub = pool.connect_ws("/news/big")[0]
        warm_up(self.admin, "big", 1)
        ok = self.admin.publish("big", "x" * 1024)
        too_big = self.admin.publish("big", "y" * 1025, check=False)
        self.assertEqual(too_big.status, 413, too_big)
        after = self.admin.publish("big", "after")
        self.assertEqual(after["seq"], ok["seq"] + 1, "the refused publish took a sequence number")
        pool.wait(lambda: b"after" in payloads(sub), 10, "the publish after the refused one")
        self.assertEqual(payloads(sub), [b"x" * 1024, b"after"])
        self.assertGatewayAlive(self.gw)

    def test_expect_100_continue_is_answered_before_the_body(self):
        pool = SubscriberPool(self.gw.addr())
        self.addCleanup(pool.stop)
        sub = pool.connect_ws("/news/cont")[0]
        warm_up(self.admin, "cont", 1)
        body = bytes(range(256))  # not UTF-8: binary by its Content-Type, whatever its case
        with harness.RawClient(self.gw.addr("admin")) as c:
            c.send(("POST /publish/cont HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n"
                    "Content-Type: Application/Octet-Stream; x=1\r\nContent-Length: %d\r\n"
                    "Expect: 100-continue\r\n\r\n" % (TOKEN, len(body))).encode())
            interim = c.read_response()
            self.assertEqual(interim.status, 100, interim)
            c.send(body)
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)
        pool.wait(lambda: body in payloads(sub), 10, "the binary publish")
        with pool.cond:
            self.assertIn((harness.OP_BINARY, body), sub.messages)
        # An HTTP/1.0 client knows no 100: its expectation is ignored (RFC 9110 §10.1.1).
        with harness.RawClient(self.gw.addr("admin")) as c:
            c.send(("POST /publish/cont HTTP/1.0\r\nAuthorization: Bearer %s\r\n"
                    "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n" % TOKEN).encode())
            time.sleep(0.3)  # the head alone first: an HTTP/1.1 client would get its 100 now
            c.send(b"hi")
            resp = c.read_response()
            self.assertEqual(resp.status, 200, resp)


if __name__ == "__main__":
    unittest.main(verbosity=2)
