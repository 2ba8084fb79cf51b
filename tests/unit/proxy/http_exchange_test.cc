#include "proxy/http_exchange.h"

#include <catch2/catch.hpp>
#include <cctype>
#include <climits>
#include <csignal>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/handle.h"
#include "http/request_parser.h"
#include "net/tcp_stream.h"
#include "proxy/upstream_pool.h"
#include "python_peer.h"
#include "test_origin.h"
#include "tls/tls_context.h"

using namespace upgate;

namespace {

using namespace upgate::test_origin;
using upgate::test::PythonPeer;

// ---- A TLS origin: Python's http.server behind ssl, in a child process --------------------------

const char* const kTlsOrigin = R"PY(
import http.server, ssl, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(b"tls " + self.path.encode() + b" from " + str(self.client_address[1]).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(b"%d" % len(body))

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
)PY";

std::string okResponse(const std::string& body, const std::string& extra = "") {
  return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra +
         "\r\n" + body;
}

// ---- The client side: a fake client stream that is also the exchange's owner -------------------

struct FakeClient final : Stream, HttpExchangeOwner {
  std::string received;
  uint64_t first_write_ns = 0;
  bool reading = true;
  int read_stops = 0;
  bool stuck = false;  // when set, everything written since stays "pending"
  size_t stuck_base = 0;
  size_t high_water = SIZE_MAX;

  int upcalls = 0;
  bool done = false, keep_alive = false;
  int status = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  int failed_status = 0;
  std::string reason;
  bool aborted = false;
  // Like a real session, the owner drops the exchange inside its final upcall.
  std::unique_ptr<HttpExchange> exchange;
  std::function<void()> after_done;

  // Stream
  int readStart() override {
    reading = true;
    return 0;
  }
  void readStop() override {
    reading = false;
    ++read_stops;
  }
  int write(const char* data, size_t len) override {
    if (first_write_ns == 0) first_write_ns = uv_hrtime();
    received.append(data, len);
    return 0;
  }
  size_t pendingBytes() const override { return stuck ? received.size() - stuck_base : 0; }
  void shutdown() override {}
  void setHighWater(size_t high) override { high_water = high; }
  void close() override {}
  bool isClosing() const override { return false; }
  bool isOpen() const override { return true; }

  void stick() {
    stuck = true;
    stuck_base = received.size();
  }
  void unstick() {
    stuck = false;
    if (exchange) exchange->onClientDrain();
  }

  // HttpExchangeOwner
  Stream& clientStream() override { return *this; }
  uint64_t sessionId() const override { return 7; }
  void exchangeDone(bool ka, int st, uint64_t in, uint64_t out) override {
    ++upcalls;
    done = true;
    keep_alive = ka;
    status = st;
    bytes_in = in;
    bytes_out = out;
    exchange.reset();
    if (after_done) after_done();
  }
  void exchangeFailed(int st, const std::string& why) override {
    ++upcalls;
    failed_status = st;
    reason = why;
    exchange.reset();
  }
  void exchangeAborted(const std::string& why) override {
    ++upcalls;
    aborted = true;
    reason = why;
    exchange.reset();
  }
  bool ended() const { return upcalls > 0; }
};

// The client's view of what it received: interim heads, the final head, the decoded body.
struct ClientView {
  std::vector<std::string> interim;
  std::string head;
  std::string body;
  int status = 0;
  bool complete = false;
};

ClientView parseClient(const std::string& bytes, bool head_request = false) {
  ClientView v;
  size_t pos = 0;
  for (;;) {
    const size_t end = bytes.find("\r\n\r\n", pos);
    if (end == std::string::npos) return v;
    std::string head = bytes.substr(pos, end + 4 - pos);
    pos = end + 4;
    const int status = std::stoi(head.substr(9, 3));
    if (status < 200) {
      v.interim.push_back(head);
      continue;
    }
    v.head = head;
    v.status = status;
    break;
  }
  const std::string rest = bytes.substr(pos);
  if (head_request || v.status == 204 || v.status == 304) {
    v.complete = rest.empty();
  } else if (lowerCase(headerIn(v.head, "transfer-encoding")) == "chunked") {
    v.complete = dechunk(rest, v.body) == rest.size() && !rest.empty();
  } else if (hasHeader(v.head, "content-length")) {
    v.body = rest;
    v.complete = rest.size() == std::stoul(headerIn(v.head, "content-length"));
  } else {
    v.body = rest;  // read until close
    v.complete = true;
  }
  return v;
}

RequestHead parseHead(const std::string& raw, std::string* leftover = nullptr) {
  RequestParser p(16 * 1024, 100);
  REQUIRE(p.feed(raw.data(), raw.size()) == ParseResult::Complete);
  if (leftover) *leftover = raw.substr(p.consumed());
  return std::move(p.head());
}

struct Harness {
  uv_loop_t loop{};
  std::unique_ptr<LoopContext> ctx = std::make_unique<LoopContext>();
  uv_timer_t watchdog{};
  bool expired = false;
  bool shut = false;
  std::unique_ptr<UpstreamPool> pool;
  LimitsConfig limits;
  RouteConfig route;
  UpstreamConfig upstream;
  ForwardInfo forward;
  std::vector<std::unique_ptr<Origin>> origins;
  std::vector<std::unique_ptr<PythonPeer>> tls_origins;
  std::shared_ptr<const TlsContext> tls;  // for exchanges started by send()
  std::vector<std::unique_ptr<FakeClient>> clients;
  uv_tcp_t refused{};  // bound, never listening: connections to it are refused
  bool refused_open = false;

  explicit Harness(UpstreamPool::Options options = {}) {
    REQUIRE(uv_loop_init(&loop) == 0);
    loop.data = ctx.get();
    uv_timer_init(&loop, &watchdog);
    watchdog.data = this;
    pool = std::make_unique<UpstreamPool>(&loop, options);
    route.name = "legacy";
    route.kind = RouteKind::Http;
    upstream.name = "app";
    upstream.connect_timeout = Millis(2000);
    forward.client_ip = "192.0.2.7";
    forward.client_port = 40000;
    forward.listener_host = "127.0.0.1";
  }

  template <typename F>
  bool runUntil(F cond, uint64_t ms = 10000) {
    expired = false;
    uv_timer_start(
        &watchdog, [](uv_timer_t* t) { static_cast<Harness*>(t->data)->expired = true; }, ms, 0);
    while (!cond() && !expired) uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&watchdog);
    return cond();
  }
  // Runs the loop for `ms` of loop time (to show that something does NOT happen).
  void runFor(uint64_t ms) {
    runUntil([] { return false; }, ms);
  }

  Origin& origin(Origin::Handler h) {
    origins.push_back(std::make_unique<Origin>(&loop, std::move(h)));
    return *origins.back();
  }

  PythonPeer* tlsOrigin() {
    tls_origins.push_back(std::make_unique<PythonPeer>());
    PythonPeer* o = tls_origins.back().get();
    static const std::string dir = std::string(UPGATE_TEST_FIXTURES) + "/config/certs/";
    o->start(&loop, kTlsOrigin, {dir + "server.pem", dir + "server.key"});
    return runUntil([&] { return o->port != 0 || o->exited; }) && o->port != 0 ? o : nullptr;
  }

  HostPort refusedEndpoint() {
    if (!refused_open) {
      uv_tcp_init(&loop, &refused);
      sockaddr_in addr{};
      uv_ip4_addr("127.0.0.1", 0, &addr);
      REQUIRE(uv_tcp_bind(&refused, reinterpret_cast<const sockaddr*>(&addr), 0) == 0);
      refused_open = true;
    }
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&refused, reinterpret_cast<sockaddr*>(&bound), &len);
    return HostPort{"127.0.0.1", ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)};
  }

  // Parses `raw` (head + early bytes), starts an exchange owned by a new client; returns the
  // client. `used` receives start()'s return value.
  FakeClient& send(const std::string& raw, size_t* used = nullptr) {
    clients.push_back(std::make_unique<FakeClient>());
    FakeClient& c = *clients.back();
    start(c, raw, used);
    return c;
  }

  void start(FakeClient& c, const std::string& raw, size_t* used = nullptr) {
    std::string leftover;
    RequestHead head = parseHead(raw, &leftover);
    HttpExchangeContext xctx{*pool, limits, tls, 0};
    c.exchange = std::make_unique<HttpExchange>(xctx, c, route, upstream, std::move(head), forward);
    const size_t n = c.exchange->start(leftover.data(), leftover.size());
    if (used) *used = n;
  }

  void shutdown() {
    if (shut) return;
    shut = true;
    for (auto& c : clients) {
      if (c->exchange) c->exchange->abort();
      c->exchange.reset();
    }
    bool pool_closed = false;
    pool->close([&] { pool_closed = true; });
    for (auto& o : origins) o->close();
    for (auto& o : tls_origins) o->stop();
    if (refused_open) uv_close(asHandle(&refused), nullptr);
    runUntil([&] {
      for (auto& o : origins) {
        if (!o->allClosed()) return false;
      }
      for (auto& o : tls_origins) {
        if (!o->stopped()) return false;
      }
      return pool_closed;
    });
    CHECK(pool_closed);
    pool.reset();
    uv_close(asHandle(&watchdog), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }

  ~Harness() { shutdown(); }
};

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return s;
}

}  // namespace

// ---- Request checks (no network) ----------------------------------------------------------------

TEST_CASE("http_exchange: checkRequest refuses ambiguous framing", "[proxy]") {
  struct Case {
    const char* name;
    const char* head;  // bypasses RequestParser: heads a lenient parser might have let through
    int status;
  };
  const Case cases[] = {
      {"CL + TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
       400},
      {"TE + CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
       400},
      {"duplicate CL, differing",
       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6", 400},
      {"duplicate CL, equal",
       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5", 400},
      {"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5", 400},
      {"CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5", 400},
      {"CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5", 400},
      {"CL overflow", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999", 400},
      {"TE not ending in chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip",
       400},
      {"TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity", 400},
      {"TE chunked twice",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
       400},
      {"TE empty", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ", 400},
      {"TE chunked with a parameter",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1", 400},
      {"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400},
      {"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked", 501},
      {"two Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400},
      {"no Host in 1.1", "GET / HTTP/1.1\r\nAccept: */*", 400},
      {"authority-form", "GET a:80 HTTP/1.1\r\nHost: a", 400},
      {"asterisk with GET", "GET * HTTP/1.1\r\nHost: a", 400},
      {"CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443", 405},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    // Build the head by hand: method, target, version, headers.
    RequestHead head;
    std::string text = c.head;
    size_t sp1 = text.find(' '), sp2 = text.find(' ', sp1 + 1), eol = text.find("\r\n");
    head.method = text.substr(0, sp1);
    head.target = text.substr(sp1 + 1, sp2 - sp1 - 1);
    head.http_minor = text.substr(sp2 + 1, eol - sp2 - 1) == "HTTP/1.0" ? 0 : 1;
    splitTarget(head.target, head.path, head.query);
    size_t pos = eol + 2;
    while (pos < text.size()) {
      size_t end = text.find("\r\n", pos);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(pos, end - pos);
      size_t colon = line.find(':');
      head.headers.push_back({line.substr(0, colon), std::string(trimOws(line.substr(colon + 1)))});
      pos = end + 2;
    }
    RequestFraming f = checkRequest(head);
    CHECK(f.error_status == c.status);
    CHECK(!f.error.empty());
  }
}

TEST_CASE("http_exchange: checkRequest accepts the plain shapes", "[proxy]") {
  CHECK(checkRequest(parseHead("GET / HTTP/1.1\r\nHost: a\r\n\r\n")).body ==
        RequestFraming::Body::None);
  CHECK(checkRequest(parseHead("GET / HTTP/1.0\r\n\r\n")).error_status == 0);
  RequestFraming cl =
      checkRequest(parseHead("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"));
  CHECK(cl.body == RequestFraming::Body::Length);
  CHECK(cl.length == 12);
  CHECK(checkRequest(parseHead("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"))
            .body == RequestFraming::Body::Chunked);
  CHECK(checkRequest(parseHead("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")).error_status == 0);
  CHECK(checkRequest(parseHead("GET http://a/x?y HTTP/1.1\r\nHost: a\r\n\r\n")).error_status == 0);
}

TEST_CASE("http_exchange: the upstream head drops hop-by-hop headers and adds forwarding",
          "[proxy]") {
  RequestHead head = parseHead(
      "GET http://example.test/poll?c=1#frag HTTP/1.1\r\n"
      "Host: example.test\r\n"
      "Connection: keep-alive, X-Secret, Host\r\n"
      "Keep-Alive: timeout=5\r\n"
      "Proxy-Connection: keep-alive\r\n"
      "TE: trailers\r\n"
      "Upgrade: h2c\r\n"
      "X-Secret: 1\r\n"
      "X-Forwarded-For: 198.51.100.1\r\n"
      "X-Forwarded-Proto: https\r\n"
      "Accept: text/plain\r\n"
      "\r\n");
  dropConnectionNominated(head.headers, false);  // as the session does, before plugins run
  // A plugin's header under a name the client nominated still goes (the client cannot strip it).
  head.headers.push_back({"X-Secret", "from a plugin"});
  ForwardInfo fwd;
  fwd.client_ip = "2001:db8::1";
  fwd.listener_host = "127.0.0.1";
  const std::string out = upstreamHttpRequest(head, fwd, checkRequest(head), "10.0.0.1:80");
  CHECK(out.rfind("GET /poll?c=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(headerIn(out, "Host") == "example.test");  // nominated, but never dropped
  for (const char* gone : {"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Upgrade",
                           "Content-Length", "Transfer-Encoding"}) {
    INFO(gone);
    CHECK_FALSE(hasHeader(out, gone));
  }
  CHECK(headerIn(out, "X-Secret") == "from a plugin");
  CHECK(headerIn(out, "Accept") == "text/plain");
  CHECK(headerIn(out, "X-Forwarded-For") == "198.51.100.1, 2001:db8::1");
  CHECK(headerIn(out, "X-Forwarded-Proto") == "http");
  CHECK(headerIn(out, "X-Forwarded-Host") == "example.test");
  CHECK(headerIn(out, "Forwarded") ==
        "for=\"[2001:db8::1]\";by=127.0.0.1;proto=http;host=example.test");
  CHECK(out.size() >= 4);
  CHECK(out.compare(out.size() - 4, 4, "\r\n\r\n") == 0);

  SECTION("HTTP/1.0 without Host: the endpoint is named; Expect is dropped") {
    RequestHead h10 =
        parseHead("POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    const std::string o = upstreamHttpRequest(h10, fwd, checkRequest(h10), "10.0.0.1:8080");
    CHECK(o.rfind("POST /x HTTP/1.1\r\n", 0) == 0);
    CHECK(headerIn(o, "Host") == "10.0.0.1:8080");
    CHECK(headerIn(o, "Content-Length") == "3");
    CHECK_FALSE(hasHeader(o, "Expect"));
  }
}

// ---- Exchanges against a real origin ------------------------------------------------------------

TEST_CASE("http_exchange: GET 200 with Content-Length", "[proxy]") {
  Harness h;
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest&) {
    srv.write(c, okResponse("hello",
                            "Keep-Alive: timeout=5\r\nConnection: Keep-Alive, X-Hop\r\n"
                            "X-Hop: 1\r\nX-App: yes\r\n"));
  });
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& c =
      h.send("GET /a?b=1 HTTP/1.1\r\nHost: site.test\r\nConnection: keep-alive\r\n\r\n");
  REQUIRE(h.runUntil([&] { return c.ended(); }));
  REQUIRE(c.done);
  CHECK(c.status == 200);
  CHECK(c.keep_alive);
  CHECK(c.upcalls == 1);
  ClientView v = parseClient(c.received);
  CHECK(v.complete);
  CHECK(v.body == "hello");
  CHECK(headerIn(v.head, "Connection") == "keep-alive");
  CHECK(headerIn(v.head, "X-App") == "yes");
  CHECK_FALSE(hasHeader(v.head, "Keep-Alive"));
  CHECK_FALSE(hasHeader(v.head, "X-Hop"));
  CHECK(c.bytes_out == c.received.size());
  REQUIRE(o.requests.size() == 1);
  const std::string& up = o.requests[0].head;
  CHECK(up.rfind("GET /a?b=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(headerIn(up, "Host") == "site.test");
  CHECK(headerIn(up, "X-Forwarded-For") == "192.0.2.7");
  CHECK(headerIn(up, "Forwarded") == "for=192.0.2.7;by=127.0.0.1;proto=http;host=site.test");
  CHECK_FALSE(hasHeader(up, "Connection"));
  CHECK(h.pool->idleConnections() == 1);
}

TEST_CASE("http_exchange: a chunked response streams before the upstream finishes", "[proxy]") {
  Harness h;
  OriginConn* held = nullptr;
  Origin& o = h.origin([&](Origin& srv, OriginConn& c, const OriginRequest&) {
    held = &c;
    srv.write(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nfirst\r\n");
  });
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& c = h.send("GET /stream HTTP/1.1\r\nHost: a\r\n\r\n");
  REQUIRE(h.runUntil([&] { return c.received.find("first") != std::string::npos; }));
  CHECK_FALSE(c.ended());  // the upstream has not finished: the first chunk went out alone
  ClientView partial = parseClient(c.received);
  CHECK(headerIn(partial.head, "Transfer-Encoding") == "chunked");
  CHECK_FALSE(partial.complete);

  o.write(*held, "6\r\nsecond\r\n0\r\nX-Trailer: t\r\n\r\n");
  REQUIRE(h.runUntil([&] { return c.ended(); }));
  REQUIRE(c.done);
  ClientView v = parseClient(c.received);
  CHECK(v.complete);
  CHECK(v.body == "firstsecond");
  CHECK(c.received.find("ext=1") == std::string::npos);      // re-framed
  CHECK(c.received.find("X-Trailer") == std::string::npos);  // trailers dropped
  CHECK(c.keep_alive);
}

TEST_CASE("http_exchange: POST bodies arrive intact", "[proxy]") {
  Harness h;
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest& r) {
    srv.write(c, okResponse("got " + std::to_string(r.body.size())));
  });
  h.upstream.endpoints = {o.endpoint()};
  const std::string body = pattern(300 * 1024);

  SECTION("Content-Length, split between start() and onClientData()") {
    const std::string head =
        "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\n\r\n";
    size_t used = 0;
    FakeClient& c = h.send(head + body.substr(0, 1000), &used);
    CHECK(used == 1000);
    size_t off = 1000;
    while (off < body.size()) {
      const size_t n = std::min<size_t>(64 * 1024, body.size() - off);
      REQUIRE(c.exchange);
      CHECK(c.exchange->onClientData(body.data() + off, n) == n);
      off += n;
      h.runUntil([&] { return c.reading; }, 2000);  // honour the exchange's read stops
    }
    std::string next = "GET /next HTTP/1.1\r\n\r\n";
    CHECK(c.exchange->onClientData(next.data(), next.size()) == 0);  // not ours
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(c.keep_alive);
    CHECK(c.bytes_in == body.size());
    REQUIRE(o.requests.size() == 1);
    CHECK(o.requests[0].body == body);
    CHECK(headerIn(o.requests[0].head, "Content-Length") == std::to_string(body.size()));
  }

  SECTION("chunked: re-framed canonically, the pipelined request left to the owner") {
    // Odd but valid framing: upper-case hex, an extension, a trailer.
    const std::string wire = "A;name=value\r\n0123456789\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
    const std::string pipelined = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t used = 0;
    FakeClient& c = h.send(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + wire + pipelined,
        &used);
    CHECK(used == wire.size());
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    REQUIRE(o.requests.size() == 1);
    CHECK(o.requests[0].body == "0123456789abc");
    CHECK(o.requests[0].raw.find("a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n") != std::string::npos);
    CHECK(o.requests[0].raw.find("name=value") == std::string::npos);
    CHECK(o.requests[0].raw.find("X-T") == std::string::npos);
  }

  SECTION("chunked, fed byte by byte") {
    std::string wire;
    for (size_t i = 0; i < 2100; i += 700) {  // three chunks of 700
      const std::string part = body.substr(i, 700);
      char size[16];
      std::snprintf(size, sizeof(size), "%zx\r\n", part.size());
      wire += size + part + "\r\n";
    }
    wire += "0\r\n\r\n";
    FakeClient& c = h.send("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    size_t total = 0;
    for (size_t i = 0; i < wire.size() && c.exchange; ++i)
      total += c.exchange->onClientData(&wire[i], 1);
    CHECK(total == wire.size());
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    REQUIRE(o.requests.size() == 1);
    CHECK(o.requests[0].body.size() == 2100);
    CHECK(o.requests[0].body == body.substr(0, 2100));
  }
}

TEST_CASE("http_exchange: keep-alive reuses the upstream connection", "[proxy]") {
  Harness h;
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest& r) {
    srv.write(c, okResponse("conn " + std::to_string(r.conn) + " req " + std::to_string(r.seq)));
  });
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& c = h.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
  // The owner starts the next request from inside exchangeDone, as a keep-alive session does.
  c.after_done = [&] {
    c.after_done = nullptr;
    c.done = false;
    c.upcalls = 0;
    c.received.clear();
    h.start(c, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
  };
  REQUIRE(h.runUntil([&] { return c.done && o.requests.size() == 2; }));
  CHECK(parseClient(c.received).body == "conn 1 req 2");
  CHECK(o.conns.size() == 1);
  CHECK(h.pool->connectionsOpened() == 1);
  CHECK(h.pool->idleConnections() == 1);
}

TEST_CASE("http_exchange: Connection: close answers are not pooled", "[proxy]") {
  Harness h;
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest&) {
    srv.write(c, okResponse("x", "Connection: close\r\n"));
  });
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  REQUIRE(h.runUntil([&] { return c.ended(); }));
  CHECK(c.done);
  CHECK(c.keep_alive);  // the client's connection is its own business
  CHECK(h.pool->idleConnections() == 0);
}

TEST_CASE("http_exchange: a stale pooled connection is retried once for bodyless GET", "[proxy]") {
  Harness h;
  // Drops the connection when its second request arrives, like a server that closed an idle
  // connection just as it was reused.
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest& r) {
    if (r.seq == 2) {
      srv.closeConn(c);
      return;
    }
    srv.write(c, okResponse("conn " + std::to_string(r.conn)));
  });
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& first = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  REQUIRE(h.runUntil([&] { return first.done; }));
  REQUIRE(h.pool->idleConnections() == 1);

  SECTION("GET: a fresh connection") {
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(parseClient(c.received).body == "conn 2");
    CHECK(o.conns.size() == 2);
  }
  SECTION("POST with a body: 502, nothing sent twice") {
    FakeClient& c = h.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nonce");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 502);
    CHECK(o.conns.size() == 1);
  }
}

TEST_CASE("http_exchange: connect failures", "[proxy]") {
  Harness h;
  SECTION("refused: 502") {
    h.upstream.endpoints = {h.refusedEndpoint()};
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_FALSE(c.ended());  // never inside start()
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 502);
    CHECK(c.reason.find("ECONNREFUSED") != std::string::npos);
    CHECK(c.received.empty());
  }
  SECTION("the next endpoint after a refusal") {
    Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest&) {
      srv.write(c, okResponse("second"));
    });
    h.upstream.endpoints = {h.refusedEndpoint(), o.endpoint()};
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(parseClient(c.received).body == "second");
  }
  SECTION("a host name that does not resolve: 502 (504 if the resolver is slow)") {
    h.upstream.endpoints = {HostPort{"upgate-does-not-exist.invalid", 80}};
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }, 20000));
    CHECK((c.failed_status == 502 || c.failed_status == 504));
  }
}

TEST_CASE("http_exchange: response timeout is 504, and long waits within it pass", "[proxy]") {
  Harness h;
  OriginConn* held = nullptr;
  Origin& o = h.origin([&](Origin&, OriginConn& c, const OriginRequest&) { held = &c; });
  h.upstream.endpoints = {o.endpoint()};
  h.route.response_timeout = Millis(300);

  SECTION("silent upstream") {
    const uint64_t t0 = uv_hrtime();
    FakeClient& c = h.send("GET /poll HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }, 5000));
    CHECK(c.failed_status == 504);
    const uint64_t ms = (uv_hrtime() - t0) / 1000000;
    CHECK(ms >= 250);
    CHECK(ms < 3000);
    CHECK(h.pool->idleConnections() == 0);
  }
  SECTION("an answer just before the deadline") {
    FakeClient& c = h.send("GET /poll HTTP/1.1\r\nHost: a\r\n\r\n");
    h.runFor(200);
    REQUIRE(held != nullptr);
    CHECK_FALSE(c.ended());
    o.write(*held, okResponse("late"));
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(parseClient(c.received).body == "late");
  }
}

TEST_CASE("http_exchange: smuggling shapes through the whole pipeline get 400", "[proxy]") {
  // RequestParser (the session's) refuses some of these already; the exchange refuses the rest.
  // Either way, nothing reaches the origin.
  Harness h;
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest&) {
    srv.write(c, okResponse("should not happen"));
  });
  h.upstream.endpoints = {o.endpoint()};
  const char* const requests[] = {
      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: "
      "3\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
  };
  for (const char* raw : requests) {
    INFO(raw);
    RequestParser p(16 * 1024, 100);
    const std::string text = raw;
    const ParseResult r = p.feed(text.data(), text.size());
    if (r == ParseResult::Error) {
      CHECK(p.errorStatus() == 400);  // the session answers it
      continue;
    }
    REQUIRE(r == ParseResult::Complete);
    const std::string leftover = text.substr(p.consumed());
    h.clients.push_back(std::make_unique<FakeClient>());
    FakeClient& c = *h.clients.back();
    HttpExchangeContext xctx{*h.pool, h.limits, nullptr, 0};
    c.exchange = std::make_unique<HttpExchange>(xctx, c, h.route, h.upstream, std::move(p.head()),
                                                h.forward);
    c.exchange->start(leftover.data(), leftover.size());
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 400);
  }
  CHECK(o.requests.empty());
}

TEST_CASE("http_exchange: backpressure stops upstream reads until the client drains", "[proxy]") {
  Harness h;
  h.limits.high_water = 64 * 1024;
  const size_t total = 32 * 1024 * 1024;  // far beyond what loopback socket buffers hold
  OriginConn* conn = nullptr;
  Origin& o = h.origin([&](Origin& srv, OriginConn& c, const OriginRequest&) {
    conn = &c;
    srv.write(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(total) + "\r\n\r\n");
    srv.write(c, std::string(total, 'x'));
  });
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& c = h.send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
  c.stick();  // the client reads nothing
  REQUIRE(h.runUntil([&] { return c.received.size() > h.limits.high_water; }));
  const size_t before = c.received.size();
  h.runFor(300);
  CHECK(c.received.size() == before);  // the gateway stopped reading the upstream
  // At most one read (64 KiB) beyond the high mark went to the client...
  CHECK(c.received.size() <= h.limits.high_water + LoopContext::kReadBufferSize + 1024);
  // ...while the origin could not get rid of its bytes.
  REQUIRE(conn != nullptr);
  CHECK(uv_stream_get_write_queue_size(asStream(&conn->tcp)) > 0);
  CHECK_FALSE(c.ended());

  c.unstick();
  REQUIRE(h.runUntil([&] { return c.ended(); }, 30000));
  REQUIRE(c.done);
  const size_t head_end = c.received.find("\r\n\r\n") + 4;
  CHECK(c.received.size() - head_end == total);
}

TEST_CASE("http_exchange: request backpressure stops client reads", "[proxy]") {
  Harness h;
  h.limits.high_water = 16 * 1024;
  Origin& o = h.origin(
      [](Origin& srv, OriginConn& c, const OriginRequest&) { srv.write(c, okResponse("ok")); });
  h.upstream.endpoints = {o.endpoint()};
  const std::string body = pattern(64 * 1024);
  // Before the connection exists, the body waits in the exchange: above high water the client
  // must stop.
  FakeClient& c =
      h.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + std::to_string(body.size() * 2) +
             "\r\n\r\n" + body);
  CHECK_FALSE(c.reading);
  CHECK(c.read_stops == 1);
  REQUIRE(h.runUntil([&] { return c.reading; }));  // connected and flushed: reads resume
  REQUIRE(c.exchange);
  CHECK(c.exchange->onClientData(body.data(), body.size()) == body.size());
  REQUIRE(h.runUntil([&] { return c.ended(); }));
  REQUIRE(c.done);
  CHECK(o.requests[0].body == body + body);
}

TEST_CASE("http_exchange: Expect: 100-continue is relayed", "[proxy]") {
  Harness h;
  Origin& o = h.origin([](Origin& srv, OriginConn& c, const OriginRequest& r) {
    srv.write(c, okResponse("body " + r.body));
  });
  o.on_head = [](Origin& srv, OriginConn& c, const OriginRequest& r) {
    if (headerIn(r.head, "Expect") == "100-continue") {
      srv.write(c, "HTTP/1.1 100 Continue\r\n\r\n");
    }
  };
  h.upstream.endpoints = {o.endpoint()};
  FakeClient& c =
      h.send("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  REQUIRE(h.runUntil([&] { return c.received.find("100 Continue") != std::string::npos; }));
  CHECK_FALSE(c.ended());
  REQUIRE(c.exchange);
  CHECK(c.exchange->onClientData("data", 4) == 4);
  REQUIRE(h.runUntil([&] { return c.ended(); }));
  REQUIRE(c.done);
  ClientView v = parseClient(c.received);
  REQUIRE(v.interim.size() == 1);
  CHECK(v.interim[0] == "HTTP/1.1 100 Continue\r\n\r\n");
  CHECK(v.body == "body data");
}

TEST_CASE("http_exchange: a failure after only interim answers still gets a status", "[proxy]") {
  // A 100 Continue is no final response: the client must still learn how the request ended.
  Harness h;
  bool close_after = false;
  Origin& o = h.origin([](Origin&, OriginConn&, const OriginRequest&) {});  // never answers
  o.on_head = [&](Origin& srv, OriginConn& c, const OriginRequest&) {
    srv.write(c, "HTTP/1.1 100 Continue\r\n\r\n");
    if (close_after) srv.closeConn(c);
  };
  h.upstream.endpoints = {o.endpoint()};
  h.route.response_timeout = Millis(300);

  SECTION("the upstream goes silent: 504") {
    FakeClient& c =
        h.send("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.received.find("100 Continue") != std::string::npos; }));
    REQUIRE(c.exchange);
    CHECK(c.exchange->onClientData("data", 4) == 4);
    REQUIRE(h.runUntil([&] { return c.ended(); }, 5000));
    CHECK_FALSE(c.aborted);
    CHECK(c.failed_status == 504);
  }
  SECTION("the upstream closes: 502") {
    close_after = true;
    FakeClient& c =
        h.send("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK_FALSE(c.aborted);
    CHECK(c.failed_status == 502);
    CHECK(parseClient(c.received).interim.size() == 1);
  }
}

TEST_CASE("http_exchange: bodies the framing rules leave out or delimit by close", "[proxy]") {
  Harness h;
  std::string answer;
  Origin& o = h.origin([&](Origin& srv, OriginConn& c, const OriginRequest&) {
    srv.write(c, answer);
    if (answer.find("HTTP/1.0") == 0) srv.closeConn(c);
  });
  h.upstream.endpoints = {o.endpoint()};

  SECTION("HEAD: the head only, Content-Length kept") {
    answer = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    FakeClient& c = h.send("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(c.keep_alive);
    ClientView v = parseClient(c.received, true);
    CHECK(v.complete);
    CHECK(headerIn(v.head, "Content-Length") == "1234");
    CHECK(h.pool->idleConnections() == 1);
  }
  SECTION("204 and 304 have no body") {
    answer = "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(c.status == 304);
    CHECK(parseClient(c.received).complete);
  }
  SECTION("read until close: chunked to an HTTP/1.1 client, which keeps its connection") {
    // The last chunk tells the client the body is whole; a cut-short one lacks it.
    answer = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(c.keep_alive);
    ClientView v = parseClient(c.received);
    CHECK(headerIn(v.head, "Transfer-Encoding") == "chunked");
    CHECK(headerIn(v.head, "Connection") == "keep-alive");
    CHECK(v.complete);
    CHECK(v.body == "until the end");
    CHECK(h.pool->idleConnections() == 0);  // the upstream connection ended with the body
  }
  SECTION("read until close with a coding: the coding, then chunked") {
    answer = "HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    ClientView v = parseClient(c.received);
    CHECK(headerIn(v.head, "Transfer-Encoding") == "gzip, chunked");
  }
  SECTION("read until close with chunked among the codings: never chunked twice") {
    answer = "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzipped";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK_FALSE(c.keep_alive);
    ClientView v = parseClient(c.received);
    CHECK(headerIn(v.head, "Transfer-Encoding") == "chunked, gzip");
    CHECK(headerIn(v.head, "Connection") == "close");
  }
  SECTION("read until close to an HTTP/1.0 client: as it came, then close") {
    answer = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
    FakeClient& c = h.send("GET / HTTP/1.0\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK_FALSE(c.keep_alive);
    ClientView v = parseClient(c.received);
    CHECK(headerIn(v.head, "Connection") == "close");
    CHECK(v.body == "until the end");
  }
  SECTION("an HTTP/1.0 client gets a chunked answer decoded, then close") {
    answer =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    FakeClient& c = h.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK_FALSE(c.keep_alive);
    ClientView v = parseClient(c.received);
    CHECK_FALSE(hasHeader(v.head, "Transfer-Encoding"));
    CHECK(headerIn(v.head, "Connection") == "close");
    CHECK(v.body == "abcde");
  }
  SECTION("an HTTP/1.0 keep-alive client with a Content-Length answer stays open") {
    answer = okResponse("ten bytes!");
    FakeClient& c = h.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK(c.keep_alive);
    CHECK(headerIn(parseClient(c.received).head, "Connection") == "keep-alive");
  }
  SECTION("Connection: close from the client") {
    answer = okResponse("x");
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK_FALSE(c.keep_alive);
    CHECK(headerIn(parseClient(c.received).head, "Connection") == "close");
  }
}

TEST_CASE("http_exchange: upstream failures", "[proxy]") {
  Harness h;
  std::string answer;
  bool close_after = false;
  Origin& o = h.origin([&](Origin& srv, OriginConn& c, const OriginRequest&) {
    srv.write(c, answer);
    if (close_after) srv.closeConn(c);
  });
  h.upstream.endpoints = {o.endpoint()};

  SECTION("malformed status line: 502") {
    answer = "HTTP/1.1 2x0 Nope\r\n\r\n";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 502);
    CHECK(c.received.empty());
  }
  SECTION("a status code that is not three digits: 502, never relayed as interim") {
    // llhttp reads these as 99, 0 and 20: each is below 200 but no 1xx.
    for (const char* status : {"099 Weird", "0 Zero", "020 Short"}) {
      INFO(status);
      answer = std::string("HTTP/1.1 ") + status +
               "\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
      FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
      REQUIRE(h.runUntil([&] { return c.ended(); }));
      CHECK(c.failed_status == 502);
      INFO(c.reason);
      CHECK(c.reason.find("not three digits") != std::string::npos);
      CHECK(c.received.empty());
    }
  }
  SECTION("whitespace before a colon is removed, not a 502 (RFC 9112 5.1)") {
    answer = "HTTP/1.1 200 OK\r\nX-Spaced  : v\r\nContent-Length: 2\r\n\r\nok";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    INFO(c.reason);
    REQUIRE(c.done);
    ClientView v = parseClient(c.received);
    CHECK(headerIn(v.head, "X-Spaced") == "v");
    CHECK(v.head.find("X-Spaced  :") == std::string::npos);
    CHECK(v.body == "ok");
  }
  SECTION("101 to a plain request: 502") {
    answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 502);
    // The reason the head callback gave, not llhttp's "User callback error".
    CHECK(c.reason ==
          "malformed upstream response: 101 Switching Protocols to a request without "
          "Upgrade");
  }
  SECTION("closed before answering: 502") {
    answer = "";
    close_after = true;
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 502);
  }
  SECTION("closed inside the body: aborted after the head went out") {
    answer = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part";
    close_after = true;
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.aborted);
    CHECK(c.received.find("only part") != std::string::npos);
  }
  SECTION("a head over the limit: 502") {
    h.limits.max_response_head_bytes = 1024;
    answer =
        "HTTP/1.1 200 OK\r\nX-Big: " + std::string(2000, 'b') + "\r\nContent-Length: 0\r\n\r\n";
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    CHECK(c.failed_status == 502);
  }
}

TEST_CASE("http_exchange: the client goes away", "[proxy]") {
  Harness h;
  OriginConn* held = nullptr;
  Origin& o = h.origin([&](Origin& srv, OriginConn& c, const OriginRequest&) {
    held = &c;
    srv.write(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n");
  });
  h.upstream.endpoints = {o.endpoint()};

  SECTION("abort() mid-response: no upcall, the upstream connection is closed") {
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.received.find("\r\na\r\n") != std::string::npos; }));
    c.exchange->abort();
    c.exchange.reset();
    REQUIRE(h.runUntil([&] { return held != nullptr && held->closed; }));
    CHECK(c.upcalls == 0);
    CHECK(h.pool->idleConnections() == 0);
  }
  SECTION("EOF in the middle of the request body: 400") {
    FakeClient& c = h.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    c.exchange->onClientEof();
    CHECK(c.failed_status == 400);
  }
  SECTION("EOF after a complete request: the answer still goes out") {
    FakeClient& c = h.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    c.exchange->onClientEof();
    REQUIRE(h.runUntil([&] { return held != nullptr; }));
    o.write(*held, "0\r\n\r\n");
    REQUIRE(h.runUntil([&] { return c.ended(); }));
    REQUIRE(c.done);
    CHECK_FALSE(c.keep_alive);
  }
}

TEST_CASE("http_exchange: a TLS upstream, pooled, with a body under backpressure", "[proxy]") {
  Harness h;
  PythonPeer* o = h.tlsOrigin();
  REQUIRE(o != nullptr);
  UpstreamTlsConfig tls_cfg;
  tls_cfg.ca = std::string(UPGATE_TEST_FIXTURES) + "/config/certs/ca.pem";
  tls_cfg.server_name = "example.com";
  h.upstream.tls = tls_cfg;
  h.tls = TlsContext::forUpstream(tls_cfg, "test upstream");
  h.upstream.endpoints = {HostPort{"127.0.0.1", o->port}};
  h.limits.high_water = 16 * 1024;  // the body outgrows it during the handshake

  // First a body on a fresh connection: it outgrows high water while TCP connects and TLS
  // shakes hands, so client reads stop; they must resume (without an onDrain from a socket that
  // took the buffered bytes at once).
  const std::string body = pattern(256 * 1024);
  FakeClient& post =
      h.send("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n\r\n");
  size_t off = 0;
  while (off < body.size() && post.exchange) {
    REQUIRE(h.runUntil([&] { return post.reading || post.ended(); }));
    if (!post.exchange) break;
    const size_t n = std::min<size_t>(8 * 1024, body.size() - off);
    off += post.exchange->onClientData(body.data() + off, n);
  }
  CHECK(post.read_stops > 0);
  REQUIRE(h.runUntil([&] { return post.ended(); }, 20000));
  REQUIRE(post.done);
  CHECK(parseClient(post.received).body == std::to_string(body.size()));

  // Then two GETs over the pooled TLS connection.
  FakeClient& first = h.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
  REQUIRE(h.runUntil([&] { return first.ended(); }));
  REQUIRE(first.done);
  const std::string body1 = parseClient(first.received).body;
  CHECK(body1.rfind("tls /one from ", 0) == 0);
  FakeClient& second = h.send("GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
  REQUIRE(h.runUntil([&] { return second.ended(); }));
  REQUIRE(second.done);
  const std::string body2 = parseClient(second.received).body;
  CHECK(body2.substr(body2.find(" from ")) == body1.substr(body1.find(" from ")));
  CHECK(h.pool->connectionsOpened() == 1);
}
