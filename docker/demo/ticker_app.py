#!/usr/bin/env python3
"""The bundled legacy demo app: a long-polling stock ticker (Python 3 standard library only).

It is written the way a web app was written around 2010 and knows nothing about WebSockets:
browsers were expected to long-poll GET /poll and POST their orders to /send. upgate's
`longpoll` route turns /poll into a WebSocket (/ticker) and client messages into POSTs to
/send; its `http` route serves everything else (the page, /poll, /send, /stats) unchanged.

Endpoints
  GET  /                 the ticker page. It opens ws(s)://HOST/ticker?symbols=..., which only
                         upgate serves: loaded from the app directly it shows "closed".
  GET  /poll?symbols=GOOG,AAPL&cursor=N[&hold=SECONDS]
                         long-poll. Answers 200 with a JSON array of price updates
                         {"symbol","price","seq","ts"} (ts = epoch milliseconds) as soon as
                         there are updates with seq > N for those symbols, or 204 No Content
                         after --hold seconds (or `hold`, at most 300) without any.
                         cursor 0 or missing: the latest price of each symbol, at once.
                         A cursor older than the kept history (the last --history updates),
                         or newer than any seq issued (a cursor from an earlier run of the
                         app), also gets the latest prices at once, with X-Cursor-Reset: 1.
                         X-Cursor (on 200 and 204) = the highest seq issued so far: every
                         update for these symbols up to it has been delivered, so it is the
                         next request's cursor. Sequence numbers are global, start at 1 and
                         only increase.
  POST /send             body: a JSON order {"action":"buy"|"sell","symbol":"GOOG","qty":1}.
                         200 {"ok":true,"order":N,"action":..,"symbol":..,"qty":..,
                         "price":..} or 400 {"ok":false,"error":".."}.
  GET  /stats            {"in_flight": {symbols-key: polls held right now},
                          "max_in_flight": {symbols-key: the most ever held at once},
                          "polls": {symbols-key: polls received}, "polls_total", "orders",
                          "seq", "fail_pending"}; the symbols-key is the `symbols` query
                         parameter exactly as requested. A poll counts as in flight from the
                         moment its request is read until just before its response is written,
                         so a client that re-polls when an answer arrives never overlaps.
  POST /admin/fail?count=N  the next N /poll requests answer 500 (N = 0 cancels).
  POST /admin/tick[?symbol=GOOG]  one price change now (a random symbol unless named).

Options: --host 127.0.0.1 --port 8000 (0 = any free port; the bound address is printed as
`ticker app on http://HOST:PORT/`), --symbols GOOG,AAPL,MSFT,AMZN, --tick 1.0 (seconds between
background price moves; 0 = only /admin/tick moves prices), --hold 25, --seed N (a
deterministic random walk), --history 1000, --quiet (no per-request log lines).
One log line per request goes to stderr. SIGTERM/SIGINT: held polls answer 204, exit 0.
"""
import argparse
import collections
import json
import random
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 64 * 1024
MAX_HOLD = 300.0
MAX_QTY = 1_000_000
SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
START_PRICES = {"GOOG": 140.00, "AAPL": 190.00, "MSFT": 370.00, "AMZN": 145.00}

_log_lock = threading.Lock()
_quiet = False


def log(line):
    if _quiet:
        return
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class BadRequest(Exception):
    pass


class Market:
    """Prices, the update history and the counters; every field is guarded by `cond`."""

    def __init__(self, symbols, seed, history):
        self.cond = threading.Condition()
        self.rng = random.Random(seed)
        self.symbols = list(symbols)
        self.seq = 0
        self.history = collections.deque(maxlen=history)
        self.latest = {}
        self.orders = 0
        self.fail_pending = 0
        self.in_flight = collections.Counter()
        self.max_in_flight = collections.Counter()
        self.polls = collections.Counter()
        self.polls_total = 0
        self.stopping = False
        with self.cond:
            for sym in self.symbols:
                price = START_PRICES.get(sym) or round(self.rng.uniform(20, 500), 2)
                self._publish(sym, price)

    # -- prices (call with cond held) --------------------------------------------------------
    def _publish(self, sym, price):
        self.seq += 1
        update = {"symbol": sym, "price": price, "seq": self.seq, "ts": int(time.time() * 1000)}
        self.history.append(update)
        self.latest[sym] = update
        return update

    def _move(self, sym):
        old = self.latest[sym]["price"]
        new = round(old * (1 + self.rng.gauss(0, 0.004)), 2)
        if new == old:
            new = round(old + self.rng.choice((-0.01, 0.01)), 2)
        return self._publish(sym, max(new, 1.00))

    def tick(self, symbol=None):
        """One background step (symbol None: each symbol moves with probability 1/2, at least
        one), or exactly one change of `symbol`. Returns the new updates."""
        with self.cond:
            if symbol is not None:
                moved = [symbol]
            else:
                moved = [s for s in self.symbols if self.rng.random() < 0.5]
                if not moved:
                    moved = [self.rng.choice(self.symbols)]
            updates = [self._move(s) for s in moved]
            self.cond.notify_all()
            return updates

    # -- long-poll ---------------------------------------------------------------------------
    def _newer(self, cursor, wanted):
        """Updates for `wanted` with seq > cursor, oldest first (history is in seq order)."""
        out = []
        for u in reversed(self.history):
            if u["seq"] <= cursor:
                break
            if u["symbol"] in wanted:
                out.append(u)
        out.reverse()
        return out

    def _latest_of(self, wanted):
        return sorted((self.latest[s] for s in wanted), key=lambda u: u["seq"])

    def poll(self, key, wanted, cursor, hold):
        """Blocks up to `hold` seconds. Returns (status, updates, headers); the poll is no
        longer counted in flight when this returns."""
        with self.cond:
            self.polls[key] += 1
            self.polls_total += 1
            self.in_flight[key] += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self.in_flight[key])
            try:
                if self.fail_pending > 0:
                    self.fail_pending -= 1
                    return 500, None, {}
                if cursor <= 0:
                    return 200, self._latest_of(wanted), {"X-Cursor": str(self.seq)}
                oldest = self.history[0]["seq"] if self.history else self.seq + 1
                if cursor > self.seq or cursor < oldest - 1:
                    return 200, self._latest_of(wanted), {"X-Cursor": str(self.seq),
                                                         "X-Cursor-Reset": "1"}
                deadline = time.monotonic() + hold
                while True:
                    updates = self._newer(cursor, wanted)
                    if updates:
                        return 200, updates, {"X-Cursor": str(self.seq)}
                    left = deadline - time.monotonic()
                    if left <= 0 or self.stopping:
                        return 204, None, {"X-Cursor": str(self.seq)}
                    self.cond.wait(left)
            finally:
                self.in_flight[key] -= 1

    # -- orders and admin --------------------------------------------------------------------
    def order(self, msg):
        if not isinstance(msg, dict):
            raise BadRequest("the message must be a JSON object")
        action = msg.get("action")
        if action not in ("buy", "sell"):
            raise BadRequest('action must be "buy" or "sell"')
        sym = msg.get("symbol")
        if not isinstance(sym, str) or sym not in self.latest:
            raise BadRequest("unknown symbol %r" % (sym,))
        qty = msg.get("qty", 1)
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise BadRequest("qty must be an integer from 1 to %d" % MAX_QTY)
        with self.cond:
            self.orders += 1
            return {"ok": True, "order": self.orders, "action": action, "symbol": sym,
                    "qty": qty, "price": self.latest[sym]["price"]}

    def stats(self):
        with self.cond:
            return {"in_flight": dict(self.in_flight), "max_in_flight": dict(self.max_in_flight),
                    "polls": dict(self.polls), "polls_total": self.polls_total,
                    "orders": self.orders, "seq": self.seq, "fail_pending": self.fail_pending}

    def set_fail(self, count):
        with self.cond:
            self.fail_pending = count

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def polls_held(self):
        with self.cond:
            return sum(self.in_flight.values())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a gateway can pool its connections
    server_version = "LegacyTicker/1.0"
    market = None      # set in main()
    hold = 25.0
    page = b""

    # -- plumbing ----------------------------------------------------------------------------
    def log_request(self, code="-", size="-"):
        pass  # one line per request is written by _finish_log instead

    def log_message(self, fmt, *args):
        log("%s %s" % (self.address_string(), fmt % args))

    def _reply(self, status, body=b"", ctype="application/json", headers=None):
        self._status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status == 204:
            self.end_headers()
            return
        if isinstance(body, (dict, list)):
            body = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._bytes = len(body)

    def _error(self, status, message, headers=None):
        self._reply(status, {"ok": False, "error": message}, headers=headers)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunked body")
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise BadRequest("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length")
        if length < 0 or length > MAX_BODY:
            raise BadRequest("body too large")
        return self.rfile.read(length) if length else b""

    def _dispatch(self, routes):
        self._status, self._bytes, started = "-", 0, time.monotonic()
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            handler = routes.get(url.path)
            if handler is None:
                other = [m for m, table in (("GET", GET_ROUTES), ("POST", POST_ROUTES))
                         if url.path in table]
                if other:
                    self._error(405, "method not allowed", {"Allow": ", ".join(other)})
                else:
                    self._error(404, "no such resource: " + url.path)
            else:
                handler(self)
        except BadRequest as e:
            self.close_connection = True  # the body may be unread
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            fwd = self.headers.get("X-Forwarded-For")
            log('%s%s "%s %s" %s %s %.3fs' % (
                self.client_address[0], " (for %s)" % fwd if fwd else "", self.command,
                self.path, self._status, self._bytes, time.monotonic() - started))

    def do_GET(self):
        self._dispatch(GET_ROUTES)

    def do_HEAD(self):
        self._dispatch({"/": Handler.page_get})

    def do_POST(self):
        self._dispatch(POST_ROUTES)

    # -- endpoints ---------------------------------------------------------------------------
    def page_get(self):
        self._reply(200, self.page, "text/html; charset=utf-8")

    def poll_get(self):
        key = self.query.get("symbols", "")
        wanted = parse_symbols(key, self.market.latest)
        cursor = self.query.get("cursor", "0") or "0"
        if not cursor.isdigit():
            raise BadRequest("cursor must be a non-negative integer")
        hold = self.hold
        if "hold" in self.query:
            try:
                hold = min(max(float(self.query["hold"]), 0.0), MAX_HOLD)
            except ValueError:
                raise BadRequest("hold must be a number of seconds")
        status, updates, headers = self.market.poll(key, wanted, int(cursor), hold)
        if status == 500:
            self._error(500, "injected failure (POST /admin/fail)")
        else:
            self._reply(status, updates if status == 200 else b"", headers=headers)

    def send_post(self):
        body = self._read_body()
        try:
            msg = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the message is not JSON")
        self._reply(200, self.market.order(msg))

    def stats_get(self):
        self._reply(200, self.market.stats())

    def fail_post(self):
        self._read_body()
        count = self.query.get("count", "1")
        if not count.isdigit():
            raise BadRequest("count must be a non-negative integer")
        self.market.set_fail(int(count))
        self._reply(200, {"ok": True, "fail_pending": int(count)})

    def tick_post(self):
        self._read_body()
        sym = self.query.get("symbol")
        if sym is not None and sym not in self.market.latest:
            raise BadRequest("unknown symbol %r" % sym)
        self._reply(200, {"ok": True, "updates": self.market.tick(sym)})


GET_ROUTES = {"/": Handler.page_get, "/index.html": Handler.page_get,
              "/poll": Handler.poll_get, "/stats": Handler.stats_get}
POST_ROUTES = {"/send": Handler.send_post, "/admin/fail": Handler.fail_post,
               "/admin/tick": Handler.tick_post}


def parse_symbols(text, known):
    """"GOOG,aapl" -> {"GOOG", "AAPL"}; unknown or no symbols are a BadRequest."""
    wanted = {s.strip().upper() for s in text.split(",") if s.strip()}
    if not wanted:
        raise BadRequest("symbols is required, e.g. ?symbols=GOOG,AAPL")
    unknown = sorted(wanted - set(known))
    if unknown:
        raise BadRequest("unknown symbols: " + ",".join(unknown))
    return wanted


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>upgate stock ticker</title>
<link rel="icon" href="data:,">
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 44em; color: #222; }
  h1 { font-size: 1.5em; margin-bottom: .2em; }
  table { border-collapse: collapse; width: 100%; margin: 1em 0; }
  th, td { padding: .45em .8em; border-bottom: 1px solid #ddd; text-align: left; }
  td.price, td.change, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.price { font-weight: 600; transition: background-color .8s; }
  td.up { background-color: #b8f0c0; transition: none; }
  td.down { background-color: #f6c0c0; transition: none; }
  .pos { color: #08802a; } .neg { color: #c0161c; }
  button { font: inherit; padding: .2em .9em; cursor: pointer; }
  #status { padding: .5em .8em; background: #f3f3f3; border-radius: 4px; }
  #state.connected { color: #08802a; font-weight: 600; }
  #state.closed { color: #c0161c; font-weight: 600; }
  #reply { font-family: ui-monospace, monospace; font-size: 13px; }
  #note { margin-top: 1.5em; padding: .8em; border: 1px solid #e0c060; background: #fff8dc; }
  #note.hidden { display: none; }
  small { color: #666; }
</style>
</head>
<body>
<h1>upgate stock ticker</h1>
<small>A 2010-style long-polling app, served over a WebSocket by upgate.</small>
<table>
  <thead><tr><th>Symbol</th><th class="num">Price</th><th class="num">Change</th><th></th></tr></thead>
  <tbody id="quotes"></tbody>
</table>
<div id="status">
  WebSocket: <span id="state">connecting</span>
  &middot; updates received: <span id="updates">0</span>
  &middot; last order: <span id="reply">none</span>
</div>
<div id="note" class="hidden">
  This page receives prices over a WebSocket at <code>/ticker</code>, which the app itself does
  not serve: it only speaks long-polling (<code>/poll</code>, <code>/send</code>). It works only
  when loaded through upgate, e.g. <code>http://127.0.0.1:8080/</code>, whose
  <code>longpoll</code> route turns the long-poll into a WebSocket.
</div>
<script>
(function () {
  "use strict";
  var fromUrl = new URLSearchParams(location.search).get("symbols");
  var SYMBOLS = fromUrl || "%SYMBOLS%";
  var list = SYMBOLS.split(",");
  var rows = {}, last = {}, updates = 0, everOpen = false, ws = null;
  var $ = function (id) { return document.getElementById(id); };

  list.forEach(function (sym) {
    var tr = document.createElement("tr");
    tr.innerHTML = '<td class="sym"></td><td class="price">&ndash;</td>' +
                   '<td class="change"></td><td><button class="buy">BUY</button></td>';
    tr.querySelector(".sym").textContent = sym;
    var btn = tr.querySelector("button");
    btn.dataset.symbol = sym;
    btn.addEventListener("click", function () { buy(sym); });
    $("quotes").appendChild(tr);
    rows[sym] = tr;
  });

  function setState(s) { var el = $("state"); el.textContent = s; el.className = s; }

  function onPrice(u) {
    updates += 1;
    $("updates").textContent = String(updates);
    var tr = rows[u.symbol];
    if (!tr) return;
    var prev = last[u.symbol];
    if (prev && u.seq <= prev.seq) return;  // a repeat or out of order: keep the newer price
    last[u.symbol] = u;
    var cell = tr.querySelector(".price"), change = tr.querySelector(".change");
    cell.textContent = u.price.toFixed(2);
    if (prev) {
      var d = u.price - prev.price;
      change.textContent = (d >= 0 ? "+" : "") + d.toFixed(2);
      change.className = "change " + (d >= 0 ? "pos" : "neg");
      cell.classList.remove("up", "down");
      void cell.offsetWidth;  // restart the flash
      cell.classList.add(d >= 0 ? "up" : "down");
      setTimeout(function () { cell.classList.remove("up", "down"); }, 150);
    }
  }

  function buy(sym) {
    if (!ws || ws.readyState !== WebSocket.OPEN) { $("reply").textContent = "not connected"; return; }
    $("reply").textContent = "sending...";
    ws.send(JSON.stringify({ action: "buy", symbol: sym, qty: 1 }));
  }

  function connect() {
    setState("connecting");
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
                       "/ticker?symbols=" + SYMBOLS);
    ws.onopen = function () { everOpen = true; setState("connected"); $("note").className = "hidden"; };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { $("reply").textContent = String(ev.data); return; }
      if (msg && typeof msg === "object" && "ok" in msg) { $("reply").textContent = ev.data.trim(); }
      else if (msg && typeof msg.symbol === "string" && typeof msg.price === "number") { onPrice(msg); }
      else { $("reply").textContent = ev.data; }
    };
    ws.onclose = function () {
      setState("closed");
      if (everOpen) { setTimeout(connect, 2000); }           // upgate restarted: try again
      else { $("note").className = ""; }                    // never connected: not behind upgate
    };
  }
  connect();
})();
</script>
</body>
</html>
"""


def ticker_loop(market, interval, stop):
    while not stop.wait(interval):
        market.tick()


def main():
    global _quiet
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--symbols", default="GOOG,AAPL,MSFT,AMZN")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between price moves; 0 = none")
    p.add_argument("--hold", type=float, default=25.0, help="seconds a poll is held at most")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--history", type=int, default=1000, help="updates kept for cursors")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    a = p.parse_args()

    symbols = []
    for s in a.symbols.split(","):
        s = s.strip().upper()
        if s and s not in symbols:
            if not SYMBOL_RE.match(s):
                p.error("bad symbol %r (A-Z, 0-9 and '.', up to 10 characters)" % s)
            symbols.append(s)
    if not symbols:
        p.error("--symbols is empty")
    if a.tick < 0 or a.hold < 0 or a.history < len(symbols):
        p.error("--tick and --hold must be >= 0 and --history >= the number of symbols")
    _quiet = a.quiet

    market = Market(symbols, a.seed, a.history)
    Handler.market = market
    Handler.hold = a.hold
    Handler.page = PAGE.replace("%SYMBOLS%", ",".join(symbols)).encode()

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024
        address_family = socket.AF_INET6 if ":" in a.host else socket.AF_INET

    server = Server((a.host, a.port), Handler)
    host, port = server.server_address[:2]
    shown = "[%s]" % host if ":" in host else host
    print("ticker app on http://%s:%d/" % (shown, port), flush=True)

    stop = threading.Event()

    def on_signal(signum, frame):
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if a.tick > 0:
        threading.Thread(target=ticker_loop, args=(market, a.tick, stop), daemon=True).start()

    server.serve_forever(poll_interval=0.2)
    market.stop()  # held polls answer 204 now
    deadline = time.monotonic() + 2.0
    while market.polls_held() and time.monotonic() < deadline:
        time.sleep(0.02)
    server.server_close()
    log("ticker app stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
