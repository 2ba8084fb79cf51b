"""The long-poll bridge (`kind: longpoll` routes) end to end: the real upgate in front of the
bundled legacy ticker app (docker/demo/ticker_app.py, started here with a fast tick).

- fan-out: 1,000 WebSocket subscribers on one channel (2 workers) each get every update in order
  while the app never sees more than one poll in flight for that channel;
- client messages become POSTs to /send, and the answer goes back to the sender only;
- 500s from the app: upgate backs off exponentially, keeps its cursor, loses nothing;
- an upstream restart on the same port with its history continuing: no gap, no duplicate;
- the poll loop stops a grace period after the last subscriber leaves;
- a reload moves a running poll to the app's new address at once; an unchanged route keeps it;
- two channels get independent polls and messages;
- the app's answers go out as text or binary messages by one rule, and client messages are
  POSTed with a Content-Type of their own;
- an answer the poll cannot move on from (no cursor in it, over longpoll.max_response_bytes)
  is polled again only after the backoff; max_queue_bytes does not limit what a poll reads.
"""

import json
import os
import re
import signal
import socket
import sys
import threading
import time
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import harness
from harness import GatewayTestCase, OP_BINARY, OP_TEXT
import bridge_util
from bridge_util import SubscriberPool, TickerApp, seq_of, start_gateway

FANOUT = 1000
FANOUT_WINDOW = 60         # updates the app produces while all 1,000 are subscribed
SOURCES = ["127.0.0.%d" % i for i in range(2, 10)]  # spread clients over source addresses
BACKOFF_INITIAL_MS = 200
BACKOFF_MAX_MS = 1600
API_KEYS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "tests", "fixtures", "plugin", "api_keys.txt")


def longpoll_route(name="ticker", prefix="/ticker", channel="{query.symbols}",
                   poll="/poll?symbols={query.symbols}&cursor={cursor}", grace="1s", **extra):
    lp = {
        "channel": channel,
        "poll": poll,
        "cursor": {"header": "X-Cursor", "initial": "0"},
        "split": "json_array",
        "send": "/send",
        "grace": grace,
        "backoff": {"initial": "%dms" % BACKOFF_INITIAL_MS, "max": "%dms" % BACKOFF_MAX_MS},
        "timeout": "20s",
    }
    lp.update(extra)
    return {"name": name, "match": {"path_prefix": prefix}, "kind": "longpoll",
            "upstream": "legacy", "longpoll": lp}


def bridge_config(app_addr, routes=None, **overrides):
    return harness.make_config(upstreams={"legacy": {"endpoints": [app_addr]}},
                               routes=routes or [longpoll_route()], **overrides)


def seqs(sub):
    """Ticker sequence numbers of every price update a subscriber received, in order."""
    out = []
    for op, payload in sub.messages:
        s = seq_of(payload)
        if s is not None:
            out.append(s)
    return out


def last_seq(sub):
    for op, payload in reversed(sub.messages):
        s = seq_of(payload)
        if s is not None:
            return s
    return 0


class BridgeTestCase(GatewayTestCase):
    def start_app(self, **kw):
        app = TickerApp(**kw)
        self.addCleanup(app.stop)
        app.start()
        return app

    def pool(self, gw, **kw):
        pool = SubscriberPool(gw.addr(), **kw)
        self.addCleanup(pool.stop)
        return pool

    def assertContiguous(self, values, what):
        """Strictly increasing by exactly 1 (no duplicate, no gap, no reordering)."""
        bad = [(i, values[i - 1], values[i]) for i in range(1, len(values))
               if values[i] != values[i - 1] + 1]
        if bad:
            self.fail("%s: not contiguous at (index, previous, value) %r; sequence %r"
                      % (what, bad[:10], values[:200]))

    def assertStrictlyIncreasing(self, values, what):
        bad = [(i, values[i - 1], values[i]) for i in range(1, len(values))
               if values[i] <= values[i - 1]]
        if bad:
            self.fail("%s: not strictly increasing at %r; sequence %r"
                      % (what, bad[:10], values[:200]))


class FanOutTest(BridgeTestCase):
    def test_1000_subscribers_every_update_in_order_one_poll_in_flight(self):
        app = self.start_app(symbols="GOOG", tick=0.05, quiet=True)
        gw = start_gateway(self, bridge_config(app.addr, workers=2))
        pool = self.pool(gw, name="fan-out")
        started = time.monotonic()
        subs = pool.connect_ws("/ticker?symbols=GOOG", FANOUT, sources=SOURCES)
        connected_s = time.monotonic() - started
        # Every update the app produces from now on goes to all 1,000 subscribers.
        s0 = app.stats()["seq"]
        samples = []

        def produced():
            st = app.stats()
            samples.append(st)
            return st["seq"] >= s0 + FANOUT_WINDOW

        harness.poll_until(produced, 60, interval=0.1, what="the app producing updates")
        end = samples[-1]["seq"]
        try:
            harness.poll_until(lambda: pool.check(lambda: all(last_seq(c) >= end for c in subs)),
                               60, interval=0.1, what="every subscriber receiving update %d" % end)
        except TimeoutError as exc:
            with pool.cond:
                behind = [(c.index, last_seq(c)) for c in subs if last_seq(c) < end]
            self.fail("%s: %d behind, e.g. %r; %s" % (exc, len(behind), behind[:10],
                                                        pool.summary()))

        busy = [s["in_flight"].get("GOOG", 0) for s in samples]
        self.assertLessEqual(max(busy), 1, "polls in flight for GOOG over time: %r" % busy)
        final = app.stats()
        self.assertEqual(final["max_in_flight"], {"GOOG": 1},
                         "the app saw more than one poll at once: %r" % final)
        self.assertEqual(list(final["polls"]), ["GOOG"], final)

        with pool.cond:
            for c in subs:
                self.assertEqual(c.errors, [], c)
                self.assertIsNone(c.close_code, c)
                self.assertIsNone(c.eof, c)
                self.assertTrue(all(op == OP_TEXT for op, _ in c.messages), c)
                got = seqs(c)
                self.assertEqual(len(got), len(c.messages),
                                 "subscriber %d got a message that is no price update: %r"
                                 % (c.index, c.messages[:5]))
                self.assertStrictlyIncreasing(got, "subscriber %d" % c.index)
                window = [s for s in got if s0 < s <= end]
                self.assertEqual(window, list(range(s0 + 1, end + 1)),
                                 "subscriber %d (%s): updates %d..%d" % (c.index, c.local,
                                                                          s0 + 1, end))
        pool.close_all(timeout=30)
        self.assertEqual(bridge_util.workers_of(gw, subs, timeout=30), {0, 1},
                         "the subscribers should be spread over both workers")
        sys.stderr.write("fan-out: %d subscribers connected in %.1fs, %d updates each\n"
                         % (FANOUT, connected_s, end - s0))


class SendTest(BridgeTestCase):
    def test_client_messages_become_posts_and_answers_go_to_the_sender_only(self):
        app = self.start_app(symbols="GOOG", tick=0.05)
        gw = start_gateway(self, bridge_config(app.addr))
        pool = self.pool(gw)
        a, b = pool.connect_ws("/ticker?symbols=GOOG", 2)
        pool.wait(lambda: last_seq(a) > 0 and last_seq(b) > 0, 15, "the first updates")

        orders = [{"action": "buy", "symbol": "GOOG", "qty": 1},
                  {"action": "sell", "symbol": "GOOG", "qty": 2},
                  {"action": "buy", "symbol": "GOOG", "qty": 3}]
        for order in orders:
            pool.send(a, OP_TEXT, json.dumps(order).encode())

        def answers(c):
            out = []
            for op, payload in c.messages:
                try:
                    doc = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(doc, dict) and "ok" in doc:
                    out.append(doc)
            return out

        pool.wait(lambda: len(answers(a)) >= 3, 15, "the app's three answers at the sender")
        got = answers(a)
        self.assertEqual(len(got), 3, got)
        for order, ans in zip(orders, got):
            self.assertIs(ans["ok"], True, ans)
            self.assertEqual((ans["action"], ans["symbol"], ans["qty"]),
                             (order["action"], order["symbol"], order["qty"]), got)
        self.assertEqual([x["order"] for x in got], [1, 2, 3],
                         "answers should come back in the order the messages were sent")
        self.assertEqual(app.stats()["orders"], 3)
        # (The app logs a request after writing its answer: wait for the third line.)
        harness.poll_until(
            lambda: len([l for _, l in app.log_lines() if '"POST /send"' in l]) >= 3, 10,
            what="three POST /send lines in the app's log")
        posts = [l for _, l in app.log_lines() if '"POST /send"' in l]
        self.assertEqual(len(posts), 3, "POSTs to /send in the app's log: %r" % posts)
        self.assertTrue(all(" 200 " in l for l in posts), posts)

        # Both keep receiving prices; the other subscriber never sees the answers.
        after = app.stats()["seq"]
        pool.wait(lambda: last_seq(a) > after and last_seq(b) > after, 15,
                  "updates after the answers")
        with pool.cond:
            self.assertEqual(answers(b), [], "the answers leaked to another subscriber")
            self.assertEqual(len(seqs(b)), len(b.messages), b.messages[:5])
            self.assertContiguous(seqs(a), "sender's updates around its answers")
            self.assertContiguous(seqs(b), "other subscriber's updates")
        pool.close_all()


class BackoffTest(BridgeTestCase):
    FAILS = 6

    def test_500s_back_off_exponentially_and_nothing_is_lost(self):
        app = self.start_app(symbols="GOOG", tick=0.05)
        gw = start_gateway(self, bridge_config(app.addr))
        pool = self.pool(gw)
        subs = pool.connect_ws("/ticker?symbols=GOOG", 3)
        pool.wait(lambda: all(len(c.messages) >= 3 for c in subs), 15, "updates flowing")

        app.fail(self.FAILS)
        bridge_util.wait_gateway_message(
            gw, r'channel ticker:GOOG: poll failed \(upstream answered 500\); retry %d in'
            % self.FAILS, timeout=30)
        self.assertEqual(app.stats()["fail_pending"], 0)
        resumed_at = app.stats()["seq"]
        pool.wait(lambda: all(last_seq(c) >= resumed_at for c in subs), 20,
                  "updates after the failures (up to %d)" % resumed_at)
        after = app.stats()["seq"]
        pool.wait(lambda: all(last_seq(c) >= after for c in subs), 20, "updates resumed")

        # upgate's own account: retries 1..N, each delay within [base/2, base] where base
        # doubles from backoff.initial up to backoff.max, and the cursor kept throughout.
        rx = (r'channel ticker:GOOG: poll failed \(upstream answered 500\); '
              r'retry (\d+) in (\d+) ms, cursor "(\d+)" kept')
        lines = bridge_util.gateway_messages(gw, rx)
        retries = [int(m.group(1)) for _, m in lines]
        delays = [int(m.group(2)) for _, m in lines]
        cursors = {m.group(3) for _, m in lines}
        self.assertEqual(retries, list(range(1, self.FAILS + 1)),
                         "retry lines: %r" % [e["msg"] for e, _ in lines])
        self.assertEqual(len(cursors), 1, "the cursor changed while failing: %r" % cursors)
        cursor = int(cursors.pop())
        for k, d in enumerate(delays, start=1):
            base = min(BACKOFF_INITIAL_MS << (k - 1), BACKOFF_MAX_MS)
            self.assertTrue(base // 2 <= d <= base,
                            "retry %d: delay %d ms outside [%d, %d]" % (k, d, base // 2, base))

        # The app's view: N polls answered 500, all with that cursor, then a successful poll
        # with the same cursor; the retries were spread out (loosely: at least most of the
        # announced delays elapsed between the first failure and the recovery).
        def app_polls():
            out = []
            for t, line in app.log_lines():
                m = re.search(r'"GET /poll\?symbols=GOOG&cursor=(\d+)" (\d+)', line)
                if m:
                    out.append((t, int(m.group(1)), int(m.group(2))))
            return out

        def recovered():
            # The app logs a request once its answer is written: wait for the recovery's line.
            p = app_polls()
            fails = [i for i, x in enumerate(p) if x[2] == 500]
            return p if fails and any(x[2] != 500 for x in p[fails[-1]:]) else None

        try:
            polls = harness.poll_until(recovered, 10, what="the app logging the recovery")
        except TimeoutError:
            self.fail("no successful poll after the 500s in the app's log: %r" % app_polls())
        first = [i for i, p in enumerate(polls) if p[2] == 500]
        self.assertEqual(len(first), self.FAILS, "polls answered 500: %r" % polls)
        i0 = first[0]
        self.assertEqual(first, list(range(i0, i0 + self.FAILS)), "the failures are not "
                         "consecutive polls: %r" % polls[i0:i0 + self.FAILS + 2])
        self.assertTrue(all(p[1] == cursor for p in polls[i0:i0 + self.FAILS]),
                        polls[i0:i0 + self.FAILS])
        self.assertGreater(len(polls), i0 + self.FAILS, "no poll after the failures: %r" % polls)
        recovery = polls[i0 + self.FAILS]
        self.assertEqual(recovery[1], cursor, "the first poll after the failures should resume "
                         "at the kept cursor %d: %r" % (cursor, recovery))
        self.assertEqual(recovery[2], 200, recovery)
        span = recovery[0] - polls[i0][0]
        self.assertGreaterEqual(span, 0.8 * sum(delays) / 1000.0,
                                "first failure to recovery took %.2fs; announced delays %r ms"
                                % (span, delays))
        self.assertEqual(app.stats()["max_in_flight"], {"GOOG": 1})

        # Nothing lost, nothing repeated: every subscriber's updates are contiguous.
        with pool.cond:
            for c in subs:
                got = seqs(c)
                self.assertContiguous(got, "subscriber %d across the failures" % c.index)
                self.assertLessEqual(got[0], cursor, (got[:3], cursor))
                self.assertIsNone(c.close_code, c)
        pool.close_all()


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive), and no request log on stderr."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


class LegacyServer:
    """A small legacy app's HTTP server on 127.0.0.1, port 0, one thread per connection."""

    def serve(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.addr = self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class HistoryApp:
    """A small legacy long-poll app (stdlib) whose history outlives its process, unlike the
    ticker app, whose sequence numbers restart at 1: stop() drops every connection as a crash
    would; start() binds the same port again (SO_REUSEADDR) and continues the history.

      GET /poll?cursor=N   200 [{"seq","text"}...] with seq > N at once or as soon as there are
                           some (held up to `hold` s, then 204); X-Cursor = the highest seq.
    Every poll is recorded as (instance, cursor)."""

    def __init__(self, hold=1.0):
        self.hold = hold
        self.cond = threading.Condition()
        self.items = []
        self.polls = []
        self.port = 0
        self.instance = 0
        self.server = None
        self.thread = None
        self.conns = set()
        self.running = False

    def add(self, count):
        with self.cond:
            for _ in range(count):
                seq = len(self.items) + 1
                self.items.append({"seq": seq, "text": "update %d" % seq})
            self.cond.notify_all()
            return len(self.items)

    def start(self):
        app = self

        class Handler(QuietHandler):
            def setup(self):
                super().setup()
                with app.cond:
                    app.conns.add(self.connection)

            def finish(self):
                with app.cond:
                    app.conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                if url.path != "/poll":
                    self.send_error(404)
                    return
                cursor = int(q.get("cursor", "0"))
                instance = self.server.instance
                deadline = time.monotonic() + app.hold
                with app.cond:
                    app.polls.append((instance, cursor))
                    app.cond.notify_all()
                    for _ in range(100000):
                        if app.instance != instance or not app.running:
                            self.close_connection = True
                            return  # crashed: no answer
                        newer = app.items[cursor:]
                        left = deadline - time.monotonic()
                        if newer or left <= 0:
                            break
                        app.cond.wait(left)
                    top = len(app.items)
                if newer:
                    body = json.dumps(newer).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("X-Cursor", str(top))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(204)
                    self.send_header("X-Cursor", str(top))
                    self.end_headers()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True  # SO_REUSEADDR: the port may have TIME_WAIT entries

        with self.cond:
            self.instance += 1
            self.running = True
        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.instance = self.instance
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True, name="history-app")
        self.thread.start()
        return self

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    def stop(self):
        if self.server is None:
            return
        with self.cond:
            self.running = False
            self.cond.notify_all()
            conns = list(self.conns)
        self.server.shutdown()
        self.server.server_close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(harness.STOP_TIMEOUT)
        self.server = None

    def wait_poll(self, predicate, timeout, what):
        with self.cond:
            if not self.cond.wait_for(lambda: any(predicate(p) for p in self.polls), timeout):
                raise AssertionError("history app: no %s within %.0fs; polls %r"
                                     % (what, timeout, self.polls))


class UpstreamRestartTest(BridgeTestCase):
    def test_cursor_survives_an_upstream_restart_on_the_same_port(self):
        app = HistoryApp(hold=1.0)
        self.addCleanup(app.stop)
        app.add(3)
        app.start()
        port = app.port
        route = longpoll_route(name="feed", prefix="/feed", channel="{path}",
                               poll="/poll?cursor={cursor}")
        route["longpoll"]["backoff"] = {"initial": "100ms", "max": "500ms"}
        gw = start_gateway(self, bridge_config(app.addr, routes=[route]))
        pool = self.pool(gw)
        subs = pool.connect_ws("/feed", 3)

        def feed_seqs(c):
            return [json.loads(p)["seq"] for _, p in c.messages]

        def all_have(n):
            return lambda: all(feed_seqs(c) and feed_seqs(c)[-1] >= n for c in subs)

        top = app.add(2)
        pool.wait(all_have(top), 15, "updates up to %d before the restart" % top)
        app.wait_poll(lambda p: p == (1, top), 10, "poll with cursor %d" % top)
        before_cursor = top

        app.stop()
        bridge_util.wait_gateway_message(gw, r"channel feed:/feed: poll failed .*cursor \"%d\" kept"
                                         % before_cursor, timeout=15)
        top = app.add(3)  # written to the app's store while it was down
        app.start()
        self.assertEqual(app.port, port)
        top = app.add(2)
        pool.wait(all_have(top), 20, "updates up to %d after the restart" % top)

        with app.cond:
            second = [cursor for inst, cursor in app.polls if inst == 2]
        self.assertTrue(second, app.polls)
        self.assertEqual(second[0], before_cursor,
                         "the first poll after the restart should carry the kept cursor "
                         "(polls: %r)" % app.polls)
        with pool.cond:
            for c in subs:
                got = feed_seqs(c)
                self.assertContiguous(got, "subscriber %d across the restart" % c.index)
                self.assertEqual(got[-1], top, got)
                self.assertLessEqual(got[0], 4, got)
                texts = [json.loads(p)["text"] for _, p in c.messages]
                self.assertEqual(texts, ["update %d" % s for s in got])
        pool.close_all()


class PollStopTest(BridgeTestCase):
    def test_poll_loop_stops_after_the_last_subscriber_leaves(self):
        app = self.start_app(symbols="GOOG", tick=0.05)
        gw = start_gateway(self, bridge_config(app.addr))  # grace: 1s
        pool = self.pool(gw)
        subs = pool.connect_ws("/ticker?symbols=GOOG", 2)
        pool.wait(lambda: all(len(c.messages) >= 3 for c in subs), 15, "updates flowing")
        harness.poll_until(lambda: app.stats()["in_flight"].get("GOOG") == 1, 10,
                           what="a poll held by the app")

        left_at = time.time()
        pool.close_all()
        stopped = bridge_util.wait_gateway_message(
            gw, r"channel ticker:GOOG: no subscribers for 1000 ms, "
            r"polling stopped after (\d+) polls",
            timeout=15)
        event, match = stopped[0]
        harness.poll_until(lambda: app.stats()["in_flight"].get("GOOG", 0) == 0, 10,
                           what="no poll in flight at the app")
        # Not before the grace period (lower bound only: the machine may be slow).
        ts = bridge_util.event_time(event)
        self.assertGreaterEqual(ts - left_at, 0.9, "stopped %.2fs after the last subscriber "
                                "left; grace is 1s (%r)" % (ts - left_at, event))
        sent = int(match.group(1))
        try:
            stats = harness.poll_until(
                lambda: (lambda st: st if st["polls"]["GOOG"] == sent else None)(app.stats()),
                5, what="the app counting %d polls" % sent)
        except TimeoutError:
            self.fail("upgate says it polled %d times, the app counted %r" % (sent, app.stats()))

        # It stays stopped while the app keeps producing (bounded watch, not a sync sleep).
        seq = stats["seq"]
        deadline = time.monotonic() + 1.5
        for _ in range(1000):
            st = app.stats()
            self.assertEqual(st["polls"]["GOOG"], stats["polls"]["GOOG"],
                             "polls continued after the loop stopped: %r" % st)
            self.assertEqual(st["in_flight"].get("GOOG", 0), 0, st)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        self.assertGreater(app.stats()["seq"], seq, "the app should have kept ticking")

        # A new subscriber starts a new loop.
        again = pool.connect_ws("/ticker?symbols=GOOG", 1)[0]
        pool.wait(lambda: len(again.messages) >= 2, 15, "updates for a new subscriber")
        starts = bridge_util.gateway_messages(gw, r"channel ticker:GOOG: first subscriber, polling")
        self.assertEqual(len(starts), 2, [e["msg"] for e, _ in starts])
        pool.close_all()


class ReloadTest(BridgeTestCase):
    """A reload moves a channel's running poll to the new configuration (here: the legacy app
    moved to another address) without waiting for its subscribers to leave; a reload that
    changes nothing the poll depends on leaves the poll in flight alone."""

    def write_config(self, gw, config):
        tmp = gw.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(harness.to_yaml(config) + "\n")
        os.replace(tmp, gw.config_path)

    def reload(self, gw, config, generation):
        self.write_config(gw, config)
        gw.signal(signal.SIGHUP)
        bridge_util.wait_gateway_message(gw, r"configuration generation %d" % generation)

    def test_a_reload_moves_the_running_poll_to_the_new_upstream(self):
        # The first app moves prices only when told, and holds each poll for up to 60 s: a poll
        # that only moved when the held one ended would wait for the route's 20 s timeout.
        old_app = self.start_app(symbols="GOOG", tick=0, hold=60)
        new_app = self.start_app(symbols="GOOG", tick=0.05, seed=11)
        gw = start_gateway(self, bridge_config(old_app.addr))
        pool = self.pool(gw)
        sub = pool.connect_ws("/ticker?symbols=GOOG", 1)[0]
        for n in range(1, 4):
            harness.poll_until(lambda: old_app.stats()["in_flight"].get("GOOG") == 1, 10,
                               what="a poll held by the first app")
            old_app.post("/admin/tick?symbol=GOOG")
            pool.wait(lambda: len(sub.messages) >= n, 15, "update %d from the first app" % n)
        harness.poll_until(lambda: old_app.stats()["in_flight"].get("GOOG") == 1, 10,
                           what="a poll held by the first app")
        old_polls = old_app.stats()["polls"]["GOOG"]

        # The same file again: nothing the poll depends on changed, the held poll stays.
        self.reload(gw, bridge_config(old_app.addr), 2)

        # The app moved: the subscriber stays, the held poll is given up and the next goes to
        # the new address at once.
        moved_at = time.monotonic()
        self.reload(gw, bridge_config(new_app.addr), 3)
        harness.poll_until(lambda: new_app.stats()["polls"].get("GOOG", 0) >= 1, 10,
                           what="a poll at the new address")
        self.assertLess(time.monotonic() - moved_at, 5.0,
                        "the poll waited for the held one to end instead of moving")
        moves = bridge_util.gateway_messages(gw, r"configuration generation (\d+): now polling "
                                                 r"upstream legacy /poll\?symbols=GOOG")
        self.assertEqual([m.group(1) for _, m in moves], ["3"],
                         "one move, for the reload that changed the app's address")
        self.assertEqual(old_app.stats()["polls"]["GOOG"], old_polls,
                         "the unchanged reload restarted the poll at the first app")
        count = len(sub.messages)
        pool.wait(lambda: len(sub.messages) >= count + 3, 15,
                  "updates from the new address for the subscriber that was already there")
        self.assertGatewayAlive(gw)


class TwoChannelsTest(BridgeTestCase):
    def test_two_channels_get_independent_polls_and_messages(self):
        app = self.start_app(symbols="GOOG,AAPL", tick=0.05, quiet=True)
        gw = start_gateway(self, bridge_config(app.addr))
        pool = self.pool(gw)
        goog = pool.connect_ws("/ticker?symbols=GOOG", 3, sources=SOURCES)
        aapl = pool.connect_ws("/ticker?symbols=AAPL", 3, sources=SOURCES)
        both = pool.connect_ws("/ticker?symbols=GOOG,AAPL", 2, sources=SOURCES)
        s0 = app.stats()["seq"]
        harness.poll_until(lambda: app.stats()["seq"] >= s0 + 40, 30, what="40 updates")
        end = app.stats()["seq"]
        pool.wait(lambda: all(last_seq(c) >= end for c in both), 20,
                  "the combined channel reaching %d" % end)

        def updates(c):
            return [json.loads(p) for _, p in c.messages]

        with pool.cond:
            combined = [(u["seq"], u["symbol"]) for u in updates(both[0])]
        window = [(s, sym) for s, sym in combined if s0 < s <= end]
        self.assertEqual([s for s, _ in window], list(range(s0 + 1, end + 1)),
                         "the GOOG,AAPL channel should carry every update")
        want = {sym: [s for s, x in window if x == sym] for sym in ("GOOG", "AAPL")}
        self.assertTrue(want["GOOG"] and want["AAPL"], want)
        pool.wait(lambda: all(last_seq(c) >= want["GOOG"][-1] for c in goog) and
                  all(last_seq(c) >= want["AAPL"][-1] for c in aapl), 20, "per-symbol updates")
        with pool.cond:
            for sym, group in (("GOOG", goog), ("AAPL", aapl)):
                for c in group:
                    got = updates(c)
                    self.assertEqual({u["symbol"] for u in got}, {sym},
                                     "subscriber of %s got %r" % (sym, got[:5]))
                    self.assertStrictlyIncreasing([u["seq"] for u in got], sym)
                    self.assertEqual([u["seq"] for u in got if s0 < u["seq"] <= end], want[sym],
                                     "subscriber %d of %s" % (c.index, sym))
            # (Updates published before the second one subscribed may be missing there.)
            self.assertEqual([u for u in updates(both[1]) if s0 < u["seq"] <= end],
                             [u for u in updates(both[0]) if s0 < u["seq"] <= end])

        stats = app.stats()
        self.assertEqual(stats["max_in_flight"], {"GOOG": 1, "AAPL": 1, "GOOG,AAPL": 1}, stats)
        harness.poll_until(
            lambda: (lambda f: f.get("GOOG") == 1 and f.get("AAPL") == 1)(
                app.stats()["in_flight"]), 10, what="both single-symbol polls held at once")
        starts = bridge_util.gateway_messages(gw, r"channel (\S+): first subscriber, polling")
        self.assertEqual(sorted(m.group(1) for _, m in starts),
                         ["ticker:AAPL", "ticker:GOOG", "ticker:GOOG,AAPL"])

        # Stopping one channel leaves the other polling and delivering.
        for c in goog:
            pool.send_close(c)
        pool.wait(lambda: all(c.eof for c in goog), 10, "GOOG subscribers closed")
        bridge_util.wait_gateway_message(
            gw, r"channel ticker:GOOG: no subscribers .* polling stopped", timeout=15)
        harness.poll_until(lambda: app.stats()["in_flight"].get("GOOG", 0) == 0, 10,
                           what="no GOOG poll in flight")
        self.assertEqual(
            bridge_util.gateway_messages(gw, r"channel ticker:AAPL: .*polling stopped"), [])
        later = app.tick("AAPL")[0]["seq"]
        pool.wait(lambda: all(last_seq(c) >= later for c in aapl), 10,
                  "AAPL update %d after GOOG stopped" % later)
        goog_polls = app.stats()["polls"]["GOOG"]
        app.tick("GOOG")
        harness.poll_until(lambda: app.stats()["in_flight"].get("AAPL") == 1, 10,
                           what="AAPL still polling")
        self.assertEqual(app.stats()["polls"]["GOOG"], goog_polls)
        pool.close_all()


class TaggedApp(LegacyServer):
    """A legacy app whose first poll answer (cursor 0), held until release is set, is one message
    naming the app; later polls are held briefly and answered 204. Counts the polls it gets."""

    def __init__(self, tag):
        self.polls = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        app = self

        class Handler(QuietHandler):
            def do_GET(self):
                with app.lock:
                    app.polls += 1
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                if query.get("cursor") == ["0"] and app.release.wait(harness.IO_TIMEOUT):
                    body = json.dumps(["from %s" % tag]).encode()
                    self.send_response(200)
                    self.send_header("X-Cursor", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                time.sleep(0.3)
                self.send_response(204)
                self.end_headers()

        self.serve(Handler)


class RouteScopeTest(BridgeTestCase):
    """A long-poll channel belongs to its route: two routes with the same channel key poll their
    own upstreams and feed only their own subscribers; a channel route (the publish API's
    namespace) with that key neither gets their messages nor keeps their polls from starting."""

    def test_same_channel_key_on_two_longpoll_routes_and_a_channel_route(self):
        apps = {}
        for tag in ("app-a", "app-b"):
            apps[tag] = TaggedApp(tag)
            self.addCleanup(apps[tag].stop)
        routes = []
        for name, tag in (("a", "app-a"), ("b", "app-b")):
            r = longpoll_route(name=name, prefix="/" + name, channel="{query.q}",
                               poll="/poll?cursor={cursor}")
            r["upstream"] = tag
            routes.append(r)
        routes.append({"name": "news", "match": {"path_prefix": "/news/"}, "kind": "channel",
                       "channel": "{path.1}"})
        gw = start_gateway(self, harness.make_config(
            upstreams={tag: {"endpoints": [app.addr]} for tag, app in apps.items()},
            routes=routes, admin={"address": "127.0.0.1:0"}, workers=2))
        admin = bridge_util.Admin(gw)
        pool = self.pool(gw)
        # The channel route's subscriber comes first: it must not stand in for a poller.
        news = pool.connect_ws("/news/X", 1)[0]
        a = pool.connect_ws("/a?q=X", 2)
        b = pool.connect_ws("/b?q=X", 2)
        for app in apps.values():  # every subscriber is registered once its 101 came
            app.release.set()

        def texts(c):
            return [p for _, p in c.messages]

        pool.wait(lambda: all(texts(c) == [b'from app-a'] for c in a) and
                  all(texts(c) == [b'from app-b'] for c in b), 15,
                  "each route's subscribers getting their own app's message")
        self.assertGreater(apps["app-a"].polls, 0)
        self.assertGreater(apps["app-b"].polls, 0)
        answer = admin.publish("X", "published")
        self.assertEqual(answer["subscribers"], 1, "only the channel route's subscriber: %r"
                         % answer)
        pool.wait(lambda: texts(news) == [b"published"], 10, "the publish at the channel route")
        time.sleep(0.5)  # nothing more may arrive anywhere
        with pool.cond:
            self.assertEqual(texts(news), [b"published"])
            self.assertEqual([texts(c) for c in a], [[b"from app-a"]] * 2)
            self.assertEqual([texts(c) for c in b], [[b"from app-b"]] * 2)
        starts = bridge_util.gateway_messages(gw, r"channel (\S+): first subscriber, polling")
        self.assertEqual(sorted(m.group(1) for _, m in starts), ["a:X", "b:X"])

        # Channel names are text: control characters are refused on both doors.
        answer = admin.publish("a\x1fX", "x", check=False)
        self.assertEqual(answer.status, 400, answer)
        c = harness.RawClient(gw.addr())
        self.addCleanup(c.close)
        c.send(harness.ws_request("/news/%1Fa%1FX"))
        self.assertEqual(c.read_response().status, 400)
        pool.close_all()


class RecordingApp(LegacyServer):
    """A legacy app that records the headers of every poll and POST: polls are answered 204
    after a short hold, POSTs with "ok"."""

    def __init__(self):
        self.polls, self.posts = [], []
        self.cond = threading.Condition()
        app = self

        class Handler(QuietHandler):
            def _record(self, into):
                with app.cond:
                    into.append({k.lower(): v for k, v in self.headers.items()})
                    app.cond.notify_all()

            def do_GET(self):
                self._record(app.polls)
                time.sleep(0.2)
                self.send_response(204)
                self.end_headers()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._record(app.posts)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.serve(Handler)

    def wait(self, what, predicate, timeout=10):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError("no %s: polls %r, posts %r" % (what, self.polls, self.posts))


class ScriptedApp(LegacyServer):
    """A legacy app whose answers the test writes. `poll(cursor)` answers GET /poll?cursor=N and
    `send(body, headers)` a POST: each returns (status, headers dict, body bytes), or None for a
    204 after `hold` seconds (an idle long-poll). Every request is recorded as a dict: t
    (monotonic), method, path, cursor, headers (names lowercased), body."""

    def __init__(self, poll=None, send=None, hold=0.5):
        self.requests = []
        self.cond = threading.Condition()
        app = self

        class Handler(QuietHandler):
            def _answer(self, script, *args):
                answer = script(*args) if script else None
                if answer is None:
                    time.sleep(hold)
                    answer = (204, {}, b"")
                status, headers, body = answer
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True  # upgate gave the request up (it stopped)

            def _record(self, body):
                url = urllib.parse.urlsplit(self.path)
                req = {"t": time.monotonic(), "method": self.command, "path": url.path,
                       "cursor": dict(urllib.parse.parse_qsl(url.query)).get("cursor"),
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": body}
                with app.cond:
                    app.requests.append(req)
                    app.cond.notify_all()
                return req

            def do_GET(self):
                req = self._record(b"")
                self._answer(poll, req["cursor"])

            def do_POST(self):
                req = self._record(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self._answer(send, req["body"], req["headers"])

        self.serve(Handler)

    def polls(self):
        with self.cond:
            return [r for r in self.requests if r["method"] == "GET"]

    def posts(self):
        with self.cond:
            return [r for r in self.requests if r["method"] == "POST"]

    def wait(self, what, predicate, timeout=10):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError("no %s: requests %r" % (what, self.requests[-20:]))


def json_array(items):
    return json.dumps(items).encode()


ADMIN = {"address": "127.0.0.1:0"}  # for /metrics


def metric(gw, name, **labels):
    """One series of upgate's /metrics (the config needs `admin: ADMIN`); 0 until it exists."""
    text = bridge_util.Admin(gw).request("GET", "/metrics").body.decode()
    for m in re.finditer(r"^%s\{([^}]*)\} (\S+)$" % re.escape(name), text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) == labels:
            return float(m.group(2))
    return 0


class MessageTypeTest(BridgeTestCase):
    """Text or binary, both ways. What the legacy app answers (a poll, a client's message) goes
    to clients by one rule: binary when the answer's Content-Type says application/octet-stream
    or its body is not UTF-8, else text. A client's message is POSTed with a Content-Type that
    says which it was."""

    def scripted_app(self, **kw):
        app = ScriptedApp(**kw)
        self.addCleanup(app.stop)
        return app

    def test_split_json_array_publishes_a_non_json_non_utf8_answer_as_binary(self):
        latin1 = "caf\xe9 price".encode("latin-1")

        def poll(cursor):
            if cursor == "0":
                return 200, {"Content-Type": "text/plain; charset=iso-8859-1", "X-Cursor": "1"}, \
                    latin1
            if cursor == "1":
                return 200, {"Content-Type": "text/plain", "X-Cursor": "2"}, "caf\xe9".encode()
            return None

        app = self.scripted_app(poll=poll)
        gw = start_gateway(self, bridge_config(app.addr))  # split: json_array
        pool = self.pool(gw)
        sub = pool.connect_ws("/ticker?symbols=GOOG", 1)[0]
        pool.wait(lambda: len(sub.messages) >= 2, 15, "both answers, published whole")
        with pool.cond:
            # A text frame with invalid UTF-8 would make a browser fail the connection.
            self.assertEqual(sub.messages[:2], [(OP_BINARY, latin1),
                                                (OP_TEXT, "caf\xe9".encode())])
            self.assertEqual(sub.errors, [])
        bridge_util.wait_gateway_message(gw, r"channel ticker:GOOG: split: json_array, but the "
                                             r"body is not a JSON array; published whole",
                                         count=2)
        pool.close_all()

    def test_the_answer_to_a_client_message_is_binary_unless_it_is_utf8_text(self):
        answers = {
            b"octets": (200, {"Content-Type": "application/octet-stream"}, b"\x00\xff\xfe\x01"),
            b"latin1": (200, {"Content-Type": "text/plain"}, "caf\xe9".encode("latin-1")),
            b"utf8": (200, {"Content-Type": "text/plain"}, "caf\xe9".encode()),
        }
        app = self.scripted_app(send=lambda body, headers: answers[body])
        gw = start_gateway(self, bridge_config(app.addr))  # send: /send
        c = harness.RawClient(gw.addr())
        self.addCleanup(c.close)
        c.handshake("/ticker?symbols=GOOG")
        for message, op in ((b"octets", OP_BINARY), (b"latin1", OP_BINARY), (b"utf8", OP_TEXT)):
            c.send_frame(OP_TEXT, message)
            self.assertEqual(c.recv_frame()[1:], (op, answers[message][2]),
                             "the answer to %r" % message)
        self.assertEqual([p["body"] for p in app.posts()], [b"octets", b"latin1", b"utf8"])

    def test_a_queued_client_message_is_posted_with_its_own_content_type(self):
        # The app holds the first POST until the next two messages are queued behind it.
        queued = threading.Event()
        self.addCleanup(queued.set)

        def send(body, headers):
            if body == b"A":
                queued.wait(10)
            return 200, {}, b""

        app = self.scripted_app(send=send)
        gw = start_gateway(self, bridge_config(app.addr, admin=ADMIN))
        c = harness.RawClient(gw.addr())
        self.addCleanup(c.close)
        c.handshake("/ticker?symbols=GOOG")
        c.send_frame(OP_TEXT, b"A")
        app.wait("the first POST", lambda: len(app.posts()) >= 1)
        c.send_frame(OP_BINARY, b"\x00\x01BIN")
        c.send_frame(OP_TEXT, b"C-text")
        # Both read by upgate (and so queued: no POST goes out while one is in flight) before
        # the first is answered.
        harness.poll_until(lambda: metric(gw, "upgate_messages_total", route="ticker",
                                          direction="up") >= 3, 10, what="3 client messages")
        self.assertEqual(len(app.posts()), 1, "a POST went out while one was in flight")
        queued.set()
        app.wait("the queued POSTs", lambda: len(app.posts()) >= 3)
        c.send_frame(OP_BINARY, b"\x02D")  # nothing queued: sent at once
        app.wait("the last POST", lambda: len(app.posts()) >= 4)
        got = [(p["body"], p["headers"].get("content-type")) for p in app.posts()]
        self.assertEqual(got, [(b"A", "text/plain; charset=utf-8"),
                               (b"\x00\x01BIN", "application/octet-stream"),
                               (b"C-text", "text/plain; charset=utf-8"),
                               (b"\x02D", "application/octet-stream")])


class PollPaceTest(BridgeTestCase):
    """An answer the poll cannot move on from (no cursor in it, or over the route's
    longpoll.max_response_bytes) would come back as it is if polled again at once: the next
    poll waits the route's backoff, so no configuration or app makes a tight poll loop."""

    def scripted_app(self, **kw):
        app = ScriptedApp(**kw)
        self.addCleanup(app.stop)
        return app

    def assertBackedOff(self, lines, what):
        """The retry lines number 1, 2, ... and wait within [base/2, base], base doubling from
        backoff.initial up to backoff.max (as for a failed poll)."""
        retries = [int(m.group(1)) for _, m in lines]
        self.assertEqual(retries, list(range(1, len(lines) + 1)), what)
        for k, (_, m) in enumerate(lines, start=1):
            base = min(BACKOFF_INITIAL_MS << (k - 1), BACKOFF_MAX_MS)
            self.assertTrue(base // 2 <= int(m.group(2)) <= base,
                            "%s: retry %d waits %s ms, outside [%d, %d]"
                            % (what, k, m.group(2), base // 2, base))

    def test_an_answer_without_its_cursor_is_polled_again_after_the_backoff(self):
        # Every poll: a message, and no X-Cursor (the route reads the cursor from that header).
        app = self.scripted_app(
            poll=lambda cursor: (200, {"Content-Type": "application/json"}, b'["tick"]'))
        gw = start_gateway(self, bridge_config(app.addr))
        pool = self.pool(gw)
        sub = pool.connect_ws("/ticker?symbols=GOOG", 1)[0]
        pool.wait(lambda: len(sub.messages) >= 1, 15, "the first answer")
        # A bounded watch: the backoff (200 ms doubling to 1.6 s) allows a handful of polls in
        # two seconds; at once, the app would be asked hundreds of times.
        before = len(app.polls())
        time.sleep(2)
        self.assertLessEqual(len(app.polls()) - before, 8, "polls in 2 s after the first")
        rx = (r'channel ticker:GOOG: the poll answer carried no cursor \(header X-Cursor\); '
              r'retry (\d+) in (\d+) ms repeats cursor "0"')
        lines = bridge_util.wait_gateway_message(gw, rx, count=4, timeout=15)[:4]
        self.assertBackedOff(lines, "retries without a cursor")
        # One poll per retry (and the one in flight), all with the same cursor.
        polls = app.polls()
        self.assertLessEqual(len(polls), len(bridge_util.gateway_messages(gw, rx)) + 1, polls)
        self.assertEqual({p["cursor"] for p in polls}, {"0"})
        with pool.cond:
            self.assertEqual(set(sub.messages), {(OP_TEXT, b"tick")})
            self.assertLessEqual(len(sub.messages), len(polls))
        pool.close_all()

    def test_an_answer_over_max_queue_bytes_is_delivered(self):
        # max_queue_bytes bounds what a subscriber has not been sent yet, not a poll answer.
        batch = json_array(["x" * 100] * 20)  # ~2 KiB: 20 small messages

        def poll(cursor):
            if cursor == "0":
                return 200, {"X-Cursor": "1"}, batch
            if cursor == "1":
                return 200, {"X-Cursor": "2"}, json_array(["small"])
            return None

        app = self.scripted_app(poll=poll)
        route = longpoll_route()
        route["max_queue_bytes"] = "1KiB"
        gw = start_gateway(self, bridge_config(app.addr, routes=[route]))
        pool = self.pool(gw)
        sub = pool.connect_ws("/ticker?symbols=GOOG", 1)[0]
        pool.wait(lambda: len(sub.messages) >= 21, 15, "the big batch and the next one")
        with pool.cond:
            self.assertEqual(sub.messages, [(OP_TEXT, b"x" * 100)] * 20 + [(OP_TEXT, b"small")])
        app.wait("a poll with cursor 2", lambda: any(p["cursor"] == "2" for p in app.polls()))
        self.assertEqual(bridge_util.gateway_messages(gw, r"poll failed"), [])
        pool.close_all()

    def test_an_answer_over_max_response_bytes_is_an_error_retried_after_the_backoff(self):
        small = threading.Event()  # set: the app answers in smaller batches
        self.addCleanup(small.set)

        def poll(cursor):
            if cursor == "0":
                count = 5 if small.is_set() else 20  # ~2 KiB: over the 1 KiB limit
                return 200, {"X-Cursor": "1"}, json_array(["x" * 100] * count)
            return None

        app = self.scripted_app(poll=poll)
        gw = start_gateway(self, bridge_config(app.addr, admin=ADMIN, routes=[
            longpoll_route(max_response_bytes="1KiB")]))
        pool = self.pool(gw)
        sub = pool.connect_ws("/ticker?symbols=GOOG", 1)[0]
        rx = (r'channel ticker:GOOG: the poll answer is larger than longpoll.max_response_bytes '
              r'\(1KiB\) of route ticker and was not taken; retry (\d+) in (\d+) ms, '
              r'cursor "0" kept')
        lines = bridge_util.wait_gateway_message(gw, rx, count=3, timeout=15)[:3]
        self.assertTrue(all(e["level"] in ("error", "err") for e, _ in lines), lines)
        self.assertBackedOff(lines, "retries of the answer over the limit")
        self.assertGreaterEqual(metric(gw, "upgate_longpoll_polls_total", route="ticker",
                                       result="too_large"), 3)
        polls = app.polls()
        self.assertLessEqual(len(polls), len(bridge_util.gateway_messages(gw, rx)) + 1, polls)
        with pool.cond:
            self.assertEqual(sub.messages, [])  # nothing of an answer that was not taken
        # Answers under the limit go through, and the cursor moves on.
        small.set()
        pool.wait(lambda: len(sub.messages) >= 5, 15, "the smaller batch")
        app.wait("a poll with cursor 1", lambda: any(p["cursor"] == "1" for p in app.polls()))
        with pool.cond:
            self.assertEqual(sub.messages, [(OP_TEXT, b"x" * 100)] * 5)
        pool.close_all()


class IdentityTest(GatewayTestCase):
    """Auth plugins run before subscribing; the identity they attach (X-Upgate-User) and the
    client's credentials go along on the client's POSTs (longpoll.forward_headers) and, where
    configured, on the poll of a channel it starts (longpoll.poll_forward_headers)."""

    def test_identity_headers_go_on_the_poll_and_posts_where_configured(self):
        app = RecordingApp()
        self.addCleanup(app.stop)
        api_key = [{"name": "api_key", "config": {"keys_file": API_KEYS}}]
        config = bridge_config(app.addr, routes=[
            # One channel per user, so its poll may carry that user's identity.
            {"name": "mine", "match": {"path_prefix": "/mine"}, "kind": "longpoll",
             "upstream": "legacy", "plugins": api_key,
             "longpoll": {"channel": "user-{header.X-Upgate-User}",
                          "poll": "/poll?cursor={cursor}", "send": "/send",
                          "poll_forward_headers": ["X-Upgate-User"],
                          "forward_headers": ["X-Upgate-User"]}},
            # The defaults: credentials and identity on POSTs, nothing of a client on the poll.
            {"name": "shared", "match": {"path_prefix": "/shared"}, "kind": "longpoll",
             "upstream": "legacy", "plugins": api_key,
             "longpoll": {"channel": "shared", "poll": "/poll?cursor={cursor}", "send": "/send"}},
        ])
        gw = start_gateway(self, config)
        for path in ("/mine", "/shared"):
            c = harness.RawClient(gw.addr())
            self.addCleanup(c.close)
            # A client's own X-Upgate-User is dropped: only the plugin's identity goes on.
            c.handshake(path, extra=[("X-API-Key", "key-alice"), ("Authorization", "Basic eA=="),
                                     ("X-Upgate-User", "mallory")])
            count = len(app.posts)
            c.send_frame(OP_TEXT, b"order")
            self.assertEqual(c.recv_frame()[1:], (OP_TEXT, b"ok"))
            app.wait("POST from " + path, lambda: len(app.posts) > count)
            post = app.posts[count]
            self.assertEqual(post.get("x-upgate-user"), "alice", post)
            if path == "/mine":
                self.assertNotIn("authorization", post)  # not in this route's list
            else:
                self.assertEqual(post.get("authorization"), "Basic eA==", post)
        # Each channel's poll runs on its own; both are under way soon after the subscribe.
        app.wait("poll with alice's identity (channel user-alice)",
                 lambda: any(p.get("x-upgate-user") == "alice" for p in app.polls))
        app.wait("poll without an identity (channel shared)",
                 lambda: any("x-upgate-user" not in p for p in app.polls))
        self.assertEqual({p.get("x-upgate-user") for p in app.polls}, {"alice", None}, app.polls)


if __name__ == "__main__":
    unittest.main(verbosity=2)
