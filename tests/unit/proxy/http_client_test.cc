#include "proxy/http_client.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/handle.h"
#include "net/tcp_stream.h"
#include "python_peer.h"
#include "test_origin.h"
#include "tls/tls_context.h"

using namespace upgate;
using namespace upgate::test_origin;
using upgate::test::PythonPeer;

namespace {

// ---- The raw origin server of test_origin.h, under this file's names -------------------------

using TestServer = Origin;
using Peer = OriginConn;
using Request = OriginRequest;

std::string response(int status, const std::string& body, const std::string& extra = "") {
  return "HTTP/1.1 " + std::to_string(status) +
         " X\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra + "\r\n" + body;
}

// ---- A real peer: Python's http.server (threaded, HTTP/1.1 keep-alive), optionally over TLS ----

const char* const kPythonServer = R"PY(
import hashlib, http.server, ssl, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, chunked=False):
        self.send_response(status)
        self.send_header("X-Client-Port", str(self.client_address[1]))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/chunked"):
            self.reply(200, b"".join(b"line %d\n" % i for i in range(200)), chunked=True)
        else:
            self.reply(200, b"hello " + self.path.encode() + b" host=" + self.headers["Host"].encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(201, b"%d:%s" % (len(body), hashlib.sha256(body).hexdigest().encode()))

http.server.ThreadingHTTPServer.daemon_threads = True
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 2:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
)PY";

// ---- The loop under test ----------------------------------------------------------------------

struct Result {
  int calls = 0;
  std::string error;
  HttpResponse response;
  uint64_t at_ns = 0;  // uv_hrtime() when the callback ran
};

HttpCallback record(Result& r) {
  return [&r](const std::string& error, HttpResponse& response) {
    ++r.calls;
    r.error = error;
    r.response = std::move(response);
    r.at_ns = uv_hrtime();
  };
}

struct Harness {
  uv_loop_t loop{};
  std::unique_ptr<LoopContext> ctx = std::make_unique<LoopContext>();
  uv_timer_t watchdog{};
  bool expired = false;
  bool shut = false;
  std::unique_ptr<HttpClient> client;
  std::vector<std::unique_ptr<TestServer>> servers;
  std::vector<std::unique_ptr<PythonPeer>> pythons;

  explicit Harness(HttpClient::Options options = {}) {
    REQUIRE(uv_loop_init(&loop) == 0);
    loop.data = ctx.get();
    uv_timer_init(&loop, &watchdog);
    watchdog.data = this;
    client = std::make_unique<HttpClient>(&loop, options);
  }

  // Runs the loop until done() holds or `ms` of loop time pass (a watchdog, not a sleep).
  template <typename F>
  bool runUntil(F done, uint64_t ms = 10000) {
    expired = false;
    uv_timer_start(
        &watchdog, [](uv_timer_t* t) { static_cast<Harness*>(t->data)->expired = true; }, ms, 0);
    while (!done() && !expired) uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&watchdog);
    return done();
  }

  TestServer& server(TestServer::Handler handler) {
    servers.push_back(std::make_unique<TestServer>(&loop, std::move(handler)));
    return *servers.back();
  }

  PythonPeer* python(const std::string& cert = "", const std::string& key = "") {
    pythons.push_back(std::make_unique<PythonPeer>());
    PythonPeer* p = pythons.back().get();
    std::vector<std::string> args;
    if (!cert.empty()) args = {cert, key};
    p->start(&loop, kPythonServer, args);
    return runUntil([&] { return p->port != 0 || p->exited; }) && p->port != 0 ? p : nullptr;
  }

  HttpRequest get(const HostPort& ep, const std::string& target = "/") {
    HttpRequest r;
    r.endpoint = ep;
    r.target = target;
    return r;
  }

  // Close-all, then the loop must close cleanly (style §2.10).
  void shutdown() {
    if (shut) return;
    shut = true;
    bool client_closed = false;
    client->close([&] { client_closed = true; });
    for (auto& s : servers) s->close();
    for (auto& p : pythons) p->stop();
    runUntil([&] {
      for (auto& s : servers) {
        if (!s->allClosed()) return false;
      }
      for (auto& p : pythons) {
        if (!p->stopped()) return false;
      }
      return client_closed;
    });
    CHECK(client_closed);
    uv_close(asHandle(&watchdog), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }

  ~Harness() { shutdown(); }
};

uint16_t unusedPort(uv_loop_t* loop) {
  uv_tcp_t t;
  uv_tcp_init(loop, &t);
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", 0, &addr);
  uv_tcp_bind(&t, reinterpret_cast<sockaddr*>(&addr), 0);
  sockaddr_storage bound{};
  int len = sizeof(bound);
  uv_tcp_getsockname(&t, reinterpret_cast<sockaddr*>(&bound), &len);
  uv_close(asHandle(&t), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
  return ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
}

std::string binaryPattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return s;
}

std::string sha256Hex(const std::string& data) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  char b[3];
  for (unsigned i = 0; i < len; ++i) {
    std::snprintf(b, sizeof(b), "%02x", md[i]);
    hex += b;
  }
  return hex;
}

// A throwaway self-signed certificate for "upgate.test" in a temporary directory.
struct TempCert {
  std::string dir, cert, key;
  TempCert() {
    char tmpl[] = "/tmp/upgate-http-client-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    cert = dir + "/cert.pem";
    key = dir + "/key.pem";
    EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    REQUIRE(pkey != nullptr);
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
    X509_set_pubkey(x, pkey);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("upgate.test"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3{};
    X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* san =
        X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "DNS:upgate.test");
    REQUIRE(san != nullptr);
    X509_add_ext(x, san, -1);
    X509_EXTENSION_free(san);
    REQUIRE(X509_sign(x, pkey, EVP_sha256()) > 0);
    FILE* f = std::fopen(cert.c_str(), "w");
    REQUIRE(f != nullptr);
    PEM_write_X509(f, x);
    std::fclose(f);
    f = std::fopen(key.c_str(), "w");
    REQUIRE(f != nullptr);
    PEM_write_PrivateKey(f, pkey, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
  }
  ~TempCert() {
    std::remove(cert.c_str());
    std::remove(key.c_str());
    ::rmdir(dir.c_str());
  }
};

bool startsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

// ---- Basic exchanges --------------------------------------------------------------------------

TEST_CASE("http_client: GET 200 with Content-Length", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) {
    srv.write(p, response(200, "hello world", "X-Test: yes\r\n"));
  });
  Result r;
  HttpRequest req = h.get(s.endpoint(), "/poll?cursor=3");
  req.headers.push_back({"Accept", "text/plain"});
  h.client->send(std::move(req), record(r));
  CHECK(r.calls == 0);  // never inside send()
  CHECK(h.client->activeCalls() == 1);
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.status == 200);
  CHECK(r.response.body == "hello world");
  const std::string* x = findHeader(r.response.headers, "x-test");
  REQUIRE(x != nullptr);
  CHECK(*x == "yes");
  REQUIRE(s.requests.size() == 1);
  CHECK(startsWith(s.requests[0].head, "GET /poll?cursor=3 HTTP/1.1\r\n"));
  CHECK(headerIn(s.requests[0].head, "host") == "127.0.0.1:" + std::to_string(s.port));
  CHECK(headerIn(s.requests[0].head, "accept") == "text/plain");
  CHECK(headerIn(s.requests[0].head, "content-length").empty());  // GET without a body
  CHECK(h.client->activeCalls() == 0);
  CHECK(h.client->idleConnections() == 1);
  h.shutdown();
}

TEST_CASE("http_client: chunked response is decoded", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) {
    srv.write(p,
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n");
  });
  Result r;
  h.client->send(h.get(s.endpoint()), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.body == "hello world");
  CHECK(h.client->idleConnections() == 1);  // a chunked response is delimited: reusable
}

TEST_CASE("http_client: POST body arrives intact with Content-Length", "[proxy]") {
  Harness h;
  TestServer& s =
      h.server([](TestServer& srv, Peer& p, const Request&) { srv.write(p, response(204, "")); });
  const std::string body = binaryPattern(300 * 1000);
  Result r;
  HttpRequest req = h.get(s.endpoint(), "/messages");
  req.method = "POST";
  req.body = body;
  req.headers.push_back({"Content-Length", "1"});           // replaced
  req.headers.push_back({"Transfer-Encoding", "chunked"});  // dropped
  req.headers.push_back({"Content-Type", "application/octet-stream"});
  h.client->send(std::move(req), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.status == 204);
  REQUIRE(s.requests.size() == 1);
  CHECK(startsWith(s.requests[0].head, "POST /messages HTTP/1.1\r\n"));
  CHECK(headerIn(s.requests[0].head, "content-length") == std::to_string(body.size()));
  CHECK(headerIn(s.requests[0].head, "transfer-encoding").empty());
  CHECK(s.requests[0].body == body);

  SECTION("an empty POST still says Content-Length: 0") {
    Result r2;
    HttpRequest empty = h.get(s.endpoint(), "/empty");
    empty.method = "POST";
    h.client->send(std::move(empty), record(r2));
    REQUIRE(h.runUntil([&] { return r2.calls == 1; }));
    REQUIRE(s.requests.size() == 2);
    CHECK(headerIn(s.requests[1].head, "content-length") == "0");
  }
}

TEST_CASE("http_client: interim 1xx responses are skipped", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) {
    srv.write(p, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" +
                     response(200, "final"));
  });
  Result r;
  h.client->send(h.get(s.endpoint()), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.status == 200);
  CHECK(r.response.body == "final");
  CHECK(findHeader(r.response.headers, "link") == nullptr);
}

TEST_CASE("http_client: HEAD ends at the head despite Content-Length", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) {
    srv.write(p, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
  });
  Result r;
  HttpRequest req = h.get(s.endpoint());
  req.method = "HEAD";
  h.client->send(std::move(req), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.status == 200);
  CHECK(r.response.body.empty());
  CHECK(*findHeader(r.response.headers, "content-length") == "1000");
}

TEST_CASE("http_client: a host name is resolved off the loop", "[proxy]") {
  Harness h;
  TestServer& s = h.server(
      [](TestServer& srv, Peer& p, const Request&) { srv.write(p, response(200, "by name")); });
  Result r;
  // "localhost" may resolve to ::1 first; the server listens on 127.0.0.1 only, so this also
  // covers trying the next address after a refusal.
  h.client->send(h.get(HostPort{"localhost", s.port}), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.body == "by name");
  REQUIRE(s.requests.size() == 1);
  CHECK(headerIn(s.requests[0].head, "host") == "localhost:" + std::to_string(s.port));

  SECTION("an unknown name is an error") {
    Result bad;
    h.client->send(h.get(HostPort{"no-such-host.invalid", 80}), record(bad));
    // Bounded by the resolver's own timeouts when no DNS server answers.
    REQUIRE(h.runUntil([&] { return bad.calls == 1; }, 30000));
    CHECK(startsWith(bad.error, "resolve: "));
  }
}

// ---- Keep-alive -------------------------------------------------------------------------------

TEST_CASE("http_client: keep-alive reuses one connection", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request& req) {
    srv.write(p, response(200, "n" + std::to_string(req.seq)));
  });
  Result first, second;
  h.client->send(h.get(s.endpoint()), record(first));
  REQUIRE(h.runUntil([&] { return first.calls == 1; }));
  CHECK(h.client->idleConnections() == 1);
  h.client->send(h.get(s.endpoint()), record(second));
  REQUIRE(h.runUntil([&] { return second.calls == 1; }));
  CHECK(first.response.body == "n1");
  CHECK(second.response.body == "n2");
  REQUIRE(s.requests.size() == 2);
  CHECK(s.requests[0].conn == s.requests[1].conn);
  CHECK(s.conns.size() == 1);
  CHECK(h.client->connectionsOpened() == 1);
  CHECK(h.client->idleConnections() == 1);
}

TEST_CASE("http_client: Connection: close is not reused", "[proxy]") {
  Harness h;
  bool close_from_client = GENERATE(false, true);
  TestServer& s = h.server([&](TestServer& srv, Peer& p, const Request&) {
    srv.write(p, response(200, "x", close_from_client ? "" : "Connection: close\r\n"));
  });
  for (int i = 0; i < 2; ++i) {
    Result r;
    HttpRequest req = h.get(s.endpoint());
    if (close_from_client) req.headers.push_back({"Connection", "close"});
    h.client->send(std::move(req), record(r));
    REQUIRE(h.runUntil([&] { return r.calls == 1; }));
    CHECK(r.error.empty());
    CHECK(h.client->idleConnections() == 0);
  }
  REQUIRE(s.requests.size() == 2);
  CHECK(s.requests[0].conn != s.requests[1].conn);
  CHECK(h.client->connectionsOpened() == 2);
}

TEST_CASE("http_client: an HTTP/1.0 answer is not reused", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) {
    srv.write(p, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
  });
  Result r;
  h.client->send(h.get(s.endpoint()), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.response.body == "ok");
  CHECK(h.client->idleConnections() == 0);
}

TEST_CASE("http_client: a body delimited by EOF completes", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) {
    srv.write(p, "HTTP/1.1 200 OK\r\n\r\nuntil the end");
    srv.closeConn(p);
  });
  Result r;
  h.client->send(h.get(s.endpoint()), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error.empty());
  CHECK(r.response.body == "until the end");
  CHECK(h.client->idleConnections() == 0);
}

TEST_CASE("http_client: idle connections expire and are capped per endpoint", "[proxy]") {
  HttpClient::Options options;
  options.idle_timeout = Millis(50);
  options.max_idle_per_endpoint = 2;
  Harness h(options);
  TestServer& s =
      h.server([](TestServer& srv, Peer& p, const Request&) { srv.write(p, response(200, "x")); });
  Result r[3];
  for (auto& one : r) h.client->send(h.get(s.endpoint()), record(one));
  REQUIRE(h.runUntil([&] { return r[0].calls + r[1].calls + r[2].calls == 3; }));
  CHECK(s.conns.size() == 3);  // concurrent calls each get a connection
  CHECK(h.client->idleConnections() == 2);
  REQUIRE(h.runUntil([&] { return h.client->idleConnections() == 0; }));
  REQUIRE(h.runUntil([&] {
    for (auto& p : s.conns) {
      if (!p->eof) return false;
    }
    return true;
  }));
}

TEST_CASE("http_client: a stale keep-alive connection is retried once for GET only", "[proxy]") {
  Harness h;
  // The server drops each connection when its second request arrives, as one that closed an
  // idle connection just as the client reused it would.
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request& req) {
    if (req.seq == 2) {
      srv.closeConn(p);
      return;
    }
    srv.write(p, response(200, "conn " + std::to_string(req.conn)));
  });
  Result first;
  h.client->send(h.get(s.endpoint()), record(first));
  REQUIRE(h.runUntil([&] { return first.calls == 1; }));
  REQUIRE(h.client->idleConnections() == 1);

  SECTION("GET: retried on a new connection") {
    Result second;
    h.client->send(h.get(s.endpoint()), record(second));
    REQUIRE(h.runUntil([&] { return second.calls == 1; }));
    CHECK(second.error.empty());
    CHECK(second.response.body == "conn 2");
    CHECK(s.conns.size() == 2);
    CHECK(s.requests.size() == 3);
  }
  SECTION("POST: the error is reported, nothing is sent twice") {
    Result second;
    HttpRequest req = h.get(s.endpoint());
    req.method = "POST";
    req.body = "once";
    h.client->send(std::move(req), record(second));
    REQUIRE(h.runUntil([&] { return second.calls == 1; }));
    CHECK((second.error == "server closed without sending a response" ||
           startsWith(second.error, "connection: ")));
    CHECK(s.conns.size() == 1);
    CHECK(s.requests.size() == 2);
  }
}

// ---- Errors -----------------------------------------------------------------------------------

TEST_CASE("http_client: connection refused is an error", "[proxy]") {
  Harness h;
  Result r;
  h.client->send(h.get(HostPort{"127.0.0.1", unusedPort(&h.loop)}), record(r));
  CHECK(r.calls == 0);
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error == "connect: ECONNREFUSED");
  CHECK(r.response.status == 0);
  CHECK(h.client->activeCalls() == 0);
}

TEST_CASE("http_client: a silent server times out within the bound", "[proxy]") {
  Harness h;
  TestServer& s = h.server(nullptr);  // accepts and reads, never answers
  Result r;
  HttpRequest req = h.get(s.endpoint());
  req.timeout = Millis(200);
  const uint64_t t0 = uv_hrtime();
  h.client->send(std::move(req), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }, 5000));
  const uint64_t elapsed_ms = (r.at_ns - t0) / 1000000;
  CHECK(r.error == "timeout after 200 ms");
  CHECK(elapsed_ms >= 199);
  CHECK(elapsed_ms < 2000);
  CHECK(s.requests.size() == 1);
  // The connection is closed, not pooled: the server sees the end.
  REQUIRE(h.runUntil([&] { return s.conns.size() == 1 && s.conns[0]->eof; }));
  CHECK(h.client->idleConnections() == 0);
}

TEST_CASE("http_client: a body over the cap is an error", "[proxy]") {
  Harness h;
  bool chunked = GENERATE(false, true);
  TestServer& s = h.server([&](TestServer& srv, Peer& p, const Request&) {
    std::string body(100, 'b');
    srv.write(p, chunked ? "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + body +
                               "\r\n0\r\n\r\n"
                         : response(200, body));
  });
  Result r;
  HttpRequest req = h.get(s.endpoint());
  req.max_response_bytes = 16;
  h.client->send(std::move(req), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error == "response body exceeds 16 bytes");
  CHECK(r.response.body.empty());
  CHECK(h.client->idleConnections() == 0);
}

TEST_CASE("http_client: a malformed response is an error", "[proxy]") {
  Harness h;
  TestServer& s = h.server(
      [](TestServer& srv, Peer& p, const Request&) { srv.write(p, "HTTP/1.1 abc Nope\r\n\r\n"); });
  Result r;
  h.client->send(h.get(s.endpoint()), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(startsWith(r.error, "malformed response: "));
}

TEST_CASE("http_client: a server that closes without answering is an error", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request&) { srv.closeConn(p); });
  Result r;
  h.client->send(h.get(s.endpoint()), record(r));
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error == "server closed without sending a response");
}

TEST_CASE("http_client: an invalid request fails from the loop, not inside send()", "[proxy]") {
  Harness h;
  Result r;
  HttpRequest req = h.get(HostPort{"127.0.0.1", 9});
  req.headers.push_back({"X-Bad", "a\r\nInjected: yes"});
  h.client->send(std::move(req), record(r));
  CHECK(r.calls == 0);
  REQUIRE(h.runUntil([&] { return r.calls == 1; }));
  CHECK(r.error == "invalid request: bad header X-Bad");
  CHECK(h.client->connectionsOpened() == 0);
}

// ---- Cancel, close, re-entrancy ---------------------------------------------------------------

TEST_CASE("http_client: cancel() before the response means no callback", "[proxy]") {
  Harness h;
  std::vector<Peer*> waiting;
  TestServer& s = h.server([&](TestServer&, Peer& p, const Request&) { waiting.push_back(&p); });
  Result r;
  auto call = h.client->send(h.get(s.endpoint()), record(r));

  SECTION("while the request is queued") {
    HttpClient::cancel(call);
    CHECK(h.client->activeCalls() == 0);
    HttpClient::cancel(call);  // idempotent
    Result after;
    h.client->send(h.get(s.endpoint()), record(after));  // the loop still works
    REQUIRE(h.runUntil([&] { return waiting.size() == 1; }));
    s.write(*waiting[0], response(200, "late"));
    REQUIRE(h.runUntil([&] { return after.calls == 1; }));
    CHECK(s.requests.size() == 1);
  }
  SECTION("while waiting for the answer") {
    REQUIRE(h.runUntil([&] { return waiting.size() == 1; }));
    HttpClient::cancel(call);
    CHECK(h.client->activeCalls() == 0);
    s.write(*waiting[0], response(200, "late"));
    // The connection was closed mid-exchange, so the server sees the end of it.
    REQUIRE(h.runUntil([&] { return waiting[0]->eof; }));
    CHECK(h.client->idleConnections() == 0);
  }
  CHECK(r.calls == 0);
  call.reset();
  HttpClient::cancel(call);  // null: a no-op
}

TEST_CASE("http_client: close() with a pending call runs no callback", "[proxy]") {
  Harness h;
  TestServer& s = h.server(nullptr);
  Result pending, resolving, queued;
  h.client->send(h.get(s.endpoint()), record(pending));
  h.client->send(h.get(HostPort{"localhost", s.port}), record(resolving));
  REQUIRE(h.runUntil([&] { return s.requests.size() >= 1; }));
  h.client->send(h.get(s.endpoint()), record(queued));
  bool done = false;
  h.client->close([&] { done = true; });
  CHECK(h.client->activeCalls() == 0);
  CHECK(!done);  // only once the handles have closed
  REQUIRE(h.runUntil([&] { return done; }));
  CHECK(h.client->isClosed());
  auto late = h.client->send(h.get(s.endpoint()), record(queued));  // after close: cancelled
  CHECK(late != nullptr);
  h.shutdown();  // requires uv_loop_close() == 0
  CHECK(pending.calls == 0);
  CHECK(resolving.calls == 0);
  CHECK(queued.calls == 0);
}

TEST_CASE("http_client: a request sent from inside a callback works", "[proxy]") {
  Harness h;
  TestServer& s = h.server([](TestServer& srv, Peer& p, const Request& req) {
    srv.write(p, response(200, "r" + std::to_string(req.seq)));
  });
  Result second;
  std::shared_ptr<HttpClient::Call> first_call;
  int first_calls = 0;
  first_call = h.client->send(h.get(s.endpoint()), [&](const std::string& error, HttpResponse& r) {
    ++first_calls;
    CHECK(error.empty());
    CHECK(r.body == "r1");
    first_call.reset();              // dropping our own handle inside the callback is fine
    HttpClient::cancel(first_call);  // and so is cancelling a finished call
    h.client->send(h.get(s.endpoint()), record(second));
  });
  REQUIRE(h.runUntil([&] { return second.calls == 1; }));
  CHECK(first_calls == 1);
  CHECK(second.error.empty());
  CHECK(second.response.body == "r2");
  CHECK(s.conns.size() == 1);  // the second request reused the first one's connection
}

TEST_CASE("http_client: a callback may cancel other calls and close the client", "[proxy]") {
  Harness h;
  std::vector<Peer*> waiting;
  TestServer& s = h.server([&](TestServer& srv, Peer& p, const Request& req) {
    if (startsWith(req.head, "GET /fast")) {
      srv.write(p, response(200, "fast"));
    } else {
      waiting.push_back(&p);
    }
  });
  Result slow;
  auto slow_call = h.client->send(h.get(s.endpoint(), "/slow"), record(slow));
  bool closed = false;
  int fast_calls = 0;
  h.client->send(h.get(s.endpoint(), "/fast"), [&](const std::string&, HttpResponse&) {
    ++fast_calls;
    HttpClient::cancel(slow_call);
    h.client->close([&] { closed = true; });
  });
  REQUIRE(h.runUntil([&] { return closed; }));
  CHECK(fast_calls == 1);
  CHECK(slow.calls == 0);
}

TEST_CASE("http_client: a throwing callback is contained", "[proxy]") {
  Harness h;
  TestServer& s =
      h.server([](TestServer& srv, Peer& p, const Request&) { srv.write(p, response(200, "x")); });
  int calls = 0;
  h.client->send(h.get(s.endpoint()), [&](const std::string&, HttpResponse&) {
    ++calls;
    throw std::runtime_error("boom");
  });
  REQUIRE(h.runUntil([&] { return calls == 1; }));
  Result next;
  h.client->send(h.get(s.endpoint()), record(next));
  REQUIRE(h.runUntil([&] { return next.calls == 1; }));
  CHECK(next.error.empty());
}

// ---- A real peer ------------------------------------------------------------------------------

TEST_CASE("http_client: against Python's http.server", "[proxy]") {
  Harness h;
  PythonPeer* py = h.python();
  REQUIRE(py != nullptr);

  Result chunked;
  h.client->send(h.get(py->endpoint(), "/chunked"), record(chunked));
  REQUIRE(h.runUntil([&] { return chunked.calls == 1; }));
  REQUIRE(chunked.error.empty());
  CHECK(chunked.response.status == 200);
  std::string expected;
  for (int i = 0; i < 200; ++i) expected += "line " + std::to_string(i) + "\n";
  CHECK(chunked.response.body == expected);

  const std::string body = binaryPattern(1 << 20);
  Result post;
  HttpRequest req = h.get(py->endpoint(), "/upload");
  req.method = "POST";
  req.body = body;
  req.max_response_bytes = 4096;
  h.client->send(std::move(req), record(post));
  REQUIRE(h.runUntil([&] { return post.calls == 1; }));
  REQUIRE(post.error.empty());
  CHECK(post.response.status == 201);
  CHECK(post.response.body == std::to_string(body.size()) + ":" + sha256Hex(body));

  // Both went over one connection: the server saw the same client port.
  const std::string* port1 = findHeader(chunked.response.headers, "x-client-port");
  const std::string* port2 = findHeader(post.response.headers, "x-client-port");
  REQUIRE(port1 != nullptr);
  REQUIRE(port2 != nullptr);
  CHECK(*port1 == *port2);
  CHECK(h.client->connectionsOpened() == 1);
}

TEST_CASE("http_client: https with a verified certificate", "[proxy]") {
  TempCert cert;
  Harness h;
  PythonPeer* py = h.python(cert.cert, cert.key);
  REQUIRE(py != nullptr);
  UpstreamTlsConfig tls_cfg;
  tls_cfg.ca = cert.cert;
  auto tls = TlsContext::forUpstream(tls_cfg, "test upstream");

  SECTION("the right name") {
    Result r[2];
    for (auto& one : r) {
      HttpRequest req = h.get(py->endpoint(), "/secure");
      req.tls = tls;
      req.tls_server_name = "upgate.test";
      h.client->send(std::move(req), record(one));
      REQUIRE(h.runUntil([&] { return one.calls == 1; }));
      REQUIRE(one.error.empty());
      CHECK(one.response.status == 200);
      CHECK(one.response.body == "hello /secure host=127.0.0.1:" + std::to_string(py->port));
    }
    CHECK(h.client->connectionsOpened() == 1);  // TLS connections are pooled too
  }
  SECTION("the wrong name fails verification") {
    Result r;
    HttpRequest req = h.get(py->endpoint(), "/secure");
    req.tls = tls;
    req.tls_server_name = "other.test";
    h.client->send(std::move(req), record(r));
    REQUIRE(h.runUntil([&] { return r.calls == 1; }));
    CHECK(startsWith(r.error, "TLS handshake failed"));
    CHECK(h.client->idleConnections() == 0);
  }
}
