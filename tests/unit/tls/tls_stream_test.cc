// TlsStream on a real loopback socket, against OpenSSL's client in a thread of its own:
// the handshake by OpenSSL, then (TLS 1.3) records by upgate, with tickets, KeyUpdates,
// records split across reads, forged records and close_notify.
#include "tls/tls_stream.h"

#include <netinet/in.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

using namespace upgate;

namespace {

// The server side: one accepted connection, wrapped in a TlsStream that echoes what it reads.
struct Server : StreamListener {
  uv_loop_t loop{};
  LoopContext ctx;
  uv_tcp_t listener{};
  TcpStream tcp;
  std::shared_ptr<const TlsContext> tls_ctx;
  std::unique_ptr<TlsStream> tls;
  std::string got;
  int eofs = 0;
  int error = 0;
  bool closed = false;
  bool offloaded_at_first_data = false;
  int port = 0;

  explicit Server(const ListenerTlsConfig& cfg) {
    tls_ctx = TlsContext::forListener(cfg, "test");
    REQUIRE(uv_loop_init(&loop) == 0);
    loop.data = &ctx;
    REQUIRE(uv_tcp_init(&loop, &listener) == 0);
    listener.data = this;
    sockaddr_in addr{};
    uv_ip4_addr("127.0.0.1", 0, &addr);
    REQUIRE(uv_tcp_bind(&listener, reinterpret_cast<sockaddr*>(&addr), 0) == 0);
    REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&listener), 4, [](uv_stream_t* s, int) {
              auto* self = static_cast<Server*>(s->data);
              REQUIRE(self->tcp.init(&self->loop, nullptr) == 0);
              REQUIRE(uv_accept(s, reinterpret_cast<uv_stream_t*>(self->tcp.handle())) == 0);
              self->tls = std::make_unique<TlsStream>(self->tcp, self->tls_ctx, self);
              REQUIRE(self->tls->init() == 0);
              REQUIRE(self->tls->readStart() == 0);
            }) == 0);
    sockaddr_in bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&listener, reinterpret_cast<sockaddr*>(&bound), &len);
    port = ntohs(bound.sin_port);
  }
  ~Server() {
    if (tls && !tls->isClosing()) tls->close();
    uv_close(reinterpret_cast<uv_handle_t*>(&listener), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }

  void onData(const char* d, size_t n) override {
    if (got.empty()) offloaded_at_first_data = tls->offloaded();
    got.append(d, n);
    if (std::string(d, n) == "bye") {  // our close_notify instead of an echo
      tls->shutdown();
      return;
    }
    tls->write(d, n);
  }
  void onEof() override {
    ++eofs;
    tls->shutdown();
  }
  void onError(int e) override {
    error = e;
    tls->close();
  }
  void onDrain() override {}
  void onClosed() override { closed = true; }

  // Runs the loop while `client` runs in its own thread (at most 20 s).
  void serve(const std::function<void(int port)>& client) {
    std::atomic<bool> done{false};
    std::thread t([&] {
      client(port);
      done = true;
    });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done && std::chrono::steady_clock::now() < deadline) {
      uv_run(&loop, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    t.join();
    for (int i = 0; i < 50; ++i) {  // what the client's last bytes caused
      uv_run(&loop, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
};

// OpenSSL's client on a blocking socket.
struct Client {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = nullptr;
  int fd = -1;

  Client(int port, int max_version = TLS1_3_VERSION) {
    SSL_CTX_set_max_proto_version(ctx, max_version);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    REQUIRE(SSL_connect(ssl) == 1);
  }
  ~Client() {
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    ERR_clear_error();
  }
  void write(const std::string& s) {
    REQUIRE(SSL_write(ssl, s.data(), static_cast<int>(s.size())) == static_cast<int>(s.size()));
  }
  std::string read(size_t n) {
    std::string out;
    char buf[16384];
    while (out.size() < n) {
      int r = SSL_read(ssl, buf, static_cast<int>(std::min(sizeof(buf), n - out.size())));
      if (r <= 0) break;
      out.append(buf, static_cast<size_t>(r));
    }
    return out;
  }
};

// Counts the KeyUpdate messages the server sends to `ssl` (handshake messages, decrypted).
void countKeyUpdates(SSL* ssl, int* count) {
  SSL_set_msg_callback_arg(ssl, count);
  SSL_set_msg_callback(
      ssl, [](int write_p, int, int content_type, const void* buf, size_t len, SSL*, void* arg) {
        if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
            static_cast<const uint8_t*>(buf)[0] == SSL3_MT_KEY_UPDATE)
          ++*static_cast<int*>(arg);
      });
}

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('A' + i % 53);
  return s;
}

}  // namespace

TEST_CASE("TLS 1.3: records move to upgate after the handshake; echo, KeyUpdate, close_notify") {
  ListenerTlsConfig cfg;  // self-signed
  bool tickets = GENERATE(true, false);
  INFO("session tickets " << tickets);
  cfg.session_tickets = tickets;
  Server server(cfg);
  std::string big = pattern(100000);
  std::string echoed_ping, echoed_big, after_update;
  bool clean_close = false;
  int key_updates_received = 0;
  server.serve([&](int port) {
    Client c(port);
    countKeyUpdates(c.ssl, &key_updates_received);
    c.write("ping");
    echoed_ping = c.read(4);
    c.write(big);
    echoed_big = c.read(big.size());
    // The client asks for our KeyUpdate; what follows is under both new keys.
    REQUIRE(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
    c.write("after update");
    after_update = c.read(12);
    SSL_shutdown(c.ssl);  // close_notify
    char b;
    clean_close = SSL_read(c.ssl, &b, 1) == 0 &&  // ours back
                  SSL_get_error(c.ssl, 0) == SSL_ERROR_ZERO_RETURN;
  });
  CHECK(server.offloaded_at_first_data);
  CHECK(echoed_ping == "ping");
  CHECK(echoed_big == big);
  CHECK(after_update == "after update");
  CHECK(key_updates_received == 1);  // the server answered the request (RFC 8446 §4.6.3)
  CHECK(server.got == "ping" + big + "after update");
  CHECK(server.eofs == 1);
  CHECK(server.error == 0);
  CHECK(clean_close);
}

TEST_CASE("TLS 1.3 offload: after our close_notify a KeyUpdate request goes unanswered") {
  Server server(ListenerTlsConfig{});
  int key_updates_received = 0;
  bool got_close = false;
  server.serve([&](int port) {
    Client c(port);
    countKeyUpdates(c.ssl, &key_updates_received);
    c.write("bye");
    char b;
    got_close = SSL_read(c.ssl, &b, 1) == 0;
    // Half-closed: the client may still send, under a new key (RFC 8446 §6.1, §4.6.3).
    REQUIRE(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
    c.write("more");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  });
  CHECK(got_close);
  CHECK(server.got == "byemore");
  CHECK(server.error == 0);
  CHECK(key_updates_received == 0);
}

TEST_CASE("TLS 1.3 offload: a record split across reads is put together") {
  Server server(ListenerTlsConfig{});
  std::string msg = pattern(16384);
  std::string echoed;
  server.serve([&](int port) {
    Client c(port);
    // Seal into memory, then send the record in three pieces with pauses between them.
    BIO* mem = BIO_new(BIO_s_mem());
    SSL_set0_wbio(c.ssl, mem);
    c.write(msg);
    BUF_MEM* wire = nullptr;
    BIO_get_mem_ptr(mem, &wire);
    std::string bytes(wire->data, wire->length);
    for (auto [at, n] : {std::pair<size_t, size_t>{0, 3}, {3, 1000}, {1003, std::string::npos}}) {
      std::string piece = bytes.substr(at, n);
      REQUIRE(send(c.fd, piece.data(), piece.size(), 0) == static_cast<ssize_t>(piece.size()));
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    echoed = c.read(msg.size());
  });
  CHECK(server.offloaded_at_first_data);
  CHECK(server.got == msg);
  CHECK(echoed == msg);
}

// After one echoed "ping", the client sends `raw` past its TLS layer; returns the alert it
// then receives (OpenSSL's reason code for it).
unsigned long alertAfter(Server& server, const std::string& raw) {
  unsigned long alert = 0;
  server.serve([&](int port) {
    Client c(port);
    c.write("ping");
    REQUIRE(c.read(4) == "ping");
    REQUIRE(send(c.fd, raw.data(), raw.size(), 0) == static_cast<ssize_t>(raw.size()));
    char b;
    REQUIRE(SSL_read(c.ssl, &b, 1) <= 0);
    alert = ERR_GET_REASON(ERR_peek_error());
  });
  CHECK(server.offloaded_at_first_data);
  CHECK(server.error == UV_EPROTO);
  REQUIRE(server.tls);
  return alert;
}

TEST_CASE("TLS 1.3 offload: a forged record ends the connection with bad_record_mac") {
  Server server(ListenerTlsConfig{});
  std::string forged = std::string("\x17\x03\x03\x00\x14", 5) + std::string(20, 'f');
  CHECK(alertAfter(server, forged) == SSL_AD_REASON_OFFSET + SSL_AD_BAD_RECORD_MAC);
  CHECK_THAT(server.tls->errorDetail(), Catch::Contains("authentication"));
}

TEST_CASE("TLS 1.3 offload: a record longer than the limit gets record_overflow") {
  Server server(ListenerTlsConfig{});
  std::string header("\x17\x03\x03\x41\x01", 5);  // 16641 = 2^14 + 256 + 1
  CHECK(alertAfter(server, header) == SSL_AD_REASON_OFFSET + SSL_AD_RECORD_OVERFLOW);
  CHECK_THAT(server.tls->errorDetail(), Catch::Contains("longer than"));
}

TEST_CASE("TLS 1.3 offload: a change_cipher_spec after the handshake gets unexpected_message") {
  Server server(ListenerTlsConfig{});
  std::string ccs("\x14\x03\x03\x00\x01\x01", 6);
  CHECK(alertAfter(server, ccs) == SSL_AD_REASON_OFFSET + SSL_AD_UNEXPECTED_MESSAGE);
  CHECK_THAT(server.tls->errorDetail(), Catch::Contains("unexpected record type"));
}

TEST_CASE("OpenSSL keeps the records for TLS 1.2, and when record_offload is off") {
  ListenerTlsConfig cfg;
  int max_version = TLS1_3_VERSION;
  SECTION("TLS 1.2") {
    max_version = TLS1_2_VERSION;
  }
  SECTION("record_offload: false") {
    cfg.record_offload = false;
  }
  Server server(cfg);
  std::string echoed;
  server.serve([&](int port) {
    Client c(port, max_version);
    c.write("ping");
    echoed = c.read(4);
  });
  CHECK(echoed == "ping");
  CHECK_FALSE(server.offloaded_at_first_data);
  CHECK(server.got == "ping");
}

namespace {

// The client side: a TlsStream in client mode on a uv loop, against OpenSSL's server in a
// thread of its own (a listener context with a self-signed certificate).
struct UpstreamLeg : StreamListener {
  uv_loop_t loop{};
  LoopContext ctx;
  TcpStream tcp;
  uv_connect_t connect_req{};
  std::unique_ptr<TlsStream> tls;
  std::string got;
  bool offloaded_at_first_data = false;
  bool acked = false;
  int eofs = 0;
  int error = 0;

  UpstreamLeg() {
    REQUIRE(uv_loop_init(&loop) == 0);
    loop.data = &ctx;
  }
  ~UpstreamLeg() {
    if (!tcp.isClosing()) tcp.close();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  void onData(const char* d, size_t n) override {
    if (got.empty()) offloaded_at_first_data = tls->offloaded();
    got.append(d, n);
    if (!acked && got == "hello" + std::string("after update")) {
      acked = true;
      tls->write("ack", 3);
    }
  }
  void onEof() override { ++eofs; }
  void onError(int e) override { error = e; }
  void onDrain() override {}
  void onClosed() override {}
};

}  // namespace

TEST_CASE("TLS 1.3 offload on an upstream leg: tickets dropped, KeyUpdate answered") {
  ListenerTlsConfig server_cfg;  // self-signed; one session ticket per handshake
  server_cfg.record_offload = false;
  auto server_ctx = TlsContext::forListener(server_cfg, "test server");
  UpstreamTlsConfig client_cfg;
  client_cfg.verify = false;
  auto client_ctx = TlsContext::forUpstream(client_cfg, "test upstream");

  int listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(listen(listen_fd, 1) == 0);
  socklen_t len = sizeof(addr);
  getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len);

  std::string server_got;
  std::atomic<bool> done{false};
  std::thread server([&] {
    int fd = accept(listen_fd, nullptr, nullptr);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    SSL* ssl = server_ctx->newSsl();
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      char buf[64];
      int n = SSL_read(ssl, buf, sizeof(buf));  // "hello"
      if (n > 0) server_got.append(buf, static_cast<size_t>(n));
      SSL_write(ssl, buf, n > 0 ? n : 0);
      SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED);
      SSL_write(ssl, "after update", 12);
      n = SSL_read(ssl, buf, sizeof(buf));  // "ack", under the client's updated key
      if (n > 0) server_got.append(buf, static_cast<size_t>(n));
      SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    done = true;
  });

  UpstreamLeg leg;
  REQUIRE(leg.tcp.init(&leg.loop, nullptr) == 0);
  leg.tls = std::make_unique<TlsStream>(leg.tcp, client_ctx, &leg);
  REQUIRE(leg.tls->init() == 0);
  leg.connect_req.data = &leg;
  REQUIRE(uv_tcp_connect(&leg.connect_req, leg.tcp.handle(), reinterpret_cast<sockaddr*>(&addr),
                         [](uv_connect_t* c, int status) {
                           auto* self = static_cast<UpstreamLeg*>(c->data);
                           REQUIRE(status == 0);
                           REQUIRE(self->tls->readStart() == 0);
                           REQUIRE(self->tls->connect("localhost") == 0);
                           self->tls->write("hello", 5);  // sent once the handshake is done
                         }) == 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!(done && leg.eofs > 0) && std::chrono::steady_clock::now() < deadline) {
    uv_run(&leg.loop, UV_RUN_NOWAIT);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  server.join();
  close(listen_fd);
  CHECK(leg.offloaded_at_first_data);
  CHECK(leg.got == "helloafter update");
  CHECK(server_got == "helloack");
  CHECK(leg.eofs == 1);  // the server's close_notify
  CHECK(leg.error == 0);
}
