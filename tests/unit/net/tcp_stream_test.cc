#include "net/tcp_stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>

#include "net/listener.h"

using namespace upgate;

namespace {

// Records every upcall of one stream.
struct Recorder : StreamListener {
  std::string data;
  int eofs = 0, drains = 0, closed = 0, error = 0;
  void onData(const char* d, size_t n) override { data.append(d, n); }
  void onEof() override { ++eofs; }
  void onError(int e) override { error = e; }
  void onDrain() override { ++drains; }
  void onClosed() override { ++closed; }
};

// A loop with a connected pair of TcpStreams on 127.0.0.1 (the server side from uv_accept).
struct Pair {
  uv_loop_t loop{};
  LoopContext ctx;
  uv_tcp_t server{};
  uv_connect_t connect{};
  TcpStream a, b;  // a = connecting side, b = accepted side
  Recorder ra, rb;
  bool connected = false, accepted = false;

  Pair() {
    REQUIRE(uv_loop_init(&loop) == 0);
    loop.data = &ctx;
    REQUIRE(uv_tcp_init(&loop, &server) == 0);
    server.data = this;
    sockaddr_in addr{};
    uv_ip4_addr("127.0.0.1", 0, &addr);
    REQUIRE(uv_tcp_bind(&server, reinterpret_cast<sockaddr*>(&addr), 0) == 0);
    REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&server), 16, [](uv_stream_t* s, int st) {
              auto* p = static_cast<Pair*>(s->data);
              REQUIRE(st == 0);
              REQUIRE(p->b.init(&p->loop, &p->rb) == 0);
              REQUIRE(uv_accept(s, reinterpret_cast<uv_stream_t*>(p->b.handle())) == 0);
              p->accepted = true;
            }) == 0);
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&server, reinterpret_cast<sockaddr*>(&bound), &len);
    REQUIRE(a.init(&loop, &ra) == 0);
    connect.data = this;
    REQUIRE(uv_tcp_connect(&connect, a.handle(), reinterpret_cast<sockaddr*>(&bound),
                           [](uv_connect_t* c, int st) {
                             REQUIRE(st == 0);
                             static_cast<Pair*>(c->data)->connected = true;
                           }) == 0);
    runUntil([&] { return connected && accepted; });
  }

  template <typename F>
  void runUntil(F done, int max_iterations = 100000) {
    for (int i = 0; i < max_iterations && !done(); ++i) uv_run(&loop, UV_RUN_ONCE);
    REQUIRE(done());
  }

  ~Pair() {
    a.close();
    b.close();
    uv_close(reinterpret_cast<uv_handle_t*>(&server), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(ra.closed == 1);
    CHECK(rb.closed == 1);
    CHECK(uv_loop_close(&loop) == 0);
  }
};

int fdOf(TcpStream& s) {
  uv_os_fd_t fd = -1;
  REQUIRE(uv_fileno(reinterpret_cast<uv_handle_t*>(s.handle()), &fd) == 0);
  return fd;
}

int tcpOption(int fd, int option) {
  int v = -1;
  socklen_t len = sizeof(v);
  REQUIRE(getsockopt(fd, IPPROTO_TCP, option, &v, &len) == 0);
  return v;
}

// glibc's tcp_info stops before the segment counters of Linux's (since 4.2): the fields that
// follow it in <linux/tcp.h>, which cannot be included next to <netinet/tcp.h>.
struct TcpInfoSegs {
  tcp_info base;
  uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
  uint32_t segs_out, segs_in;
};
static_assert(sizeof(tcp_info) == 104, "glibc's tcp_info layout");

uint32_t segmentsOut(TcpStream& s) {
  TcpInfoSegs info{};
  socklen_t len = sizeof(info);
  REQUIRE(getsockopt(fdOf(s), IPPROTO_TCP, TCP_INFO, &info, &len) == 0);
  REQUIRE(len >= sizeof(info));
  return info.segs_out;
}

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
  return s;
}

// Writes 256 KiB chunks to `s`, whose peer is not reading, until the kernel's buffers are full
// and the stream queues the rest; returns what was written.
std::string fillUntilQueued(TcpStream& s) {
  const std::string chunk = pattern(256 * 1024);
  std::string sent;
  for (int i = 0; i < 64 && s.pendingBytes() == 0; ++i) {
    REQUIRE(s.write(chunk.data(), chunk.size()) == 0);
    sent += chunk;
  }
  REQUIRE(s.pendingBytes() > 0);
  return sent;
}

}  // namespace

TEST_CASE("tcp_stream: bytes arrive in order and EOF follows shutdown", "[net]") {
  Pair p;
  REQUIRE(p.b.readStart() == 0);
  std::string msg = pattern(100000);
  for (size_t off = 0; off < msg.size(); off += 1000)
    REQUIRE(p.a.write(msg.data() + off, 1000) == 0);
  p.a.shutdown();
  p.runUntil([&] { return p.rb.eofs == 1; });
  CHECK(p.rb.data == msg);
  CHECK(p.a.bytesWritten() == msg.size());
  CHECK(p.b.bytesRead() == msg.size());
}

TEST_CASE("tcp_stream: writeLast sends the bytes and the FIN in one segment", "[net]") {
  Pair p;
  REQUIRE(p.b.readStart() == 0);
  p.runUntil([&] { return segmentsOut(p.a) > 0; });  // the handshake's ACK is out
  uint32_t before = segmentsOut(p.a);
  REQUIRE(p.a.writeLast("close", 5) == 0);
  CHECK(segmentsOut(p.a) - before == 1);
  CHECK(p.a.write("x", 1) == UV_EPIPE);  // nothing after the last bytes
  p.runUntil([&] { return p.rb.eofs == 1; });
  CHECK(p.rb.data == "close");
  // write() then shutdown() takes two.
  REQUIRE(p.a.readStart() == 0);
  before = segmentsOut(p.b);
  REQUIRE(p.b.write("reply", 5) == 0);
  p.b.shutdown();
  CHECK(segmentsOut(p.b) - before == 2);
  p.runUntil([&] { return p.ra.eofs == 1; });
  CHECK(p.ra.data == "reply");
}

TEST_CASE("tcp_stream: writeLast behind queued bytes keeps their order", "[net]") {
  Pair p;
  const std::string sent = fillUntilQueued(p.a);
  REQUIRE(p.a.writeLast("end", 3) == 0);
  REQUIRE(p.b.readStart() == 0);
  p.runUntil([&] { return p.rb.eofs == 1; });
  CHECK(p.rb.data == sent + "end");
}

TEST_CASE("tcp_stream: writeFinal closes with the bytes when the kernel takes them", "[net]") {
  Pair p;
  REQUIRE(p.b.readStart() == 0);
  REQUIRE(p.a.writeFinal("close", 5) == 0);
  CHECK_FALSE(p.a.isOpen());  // closed: the peer's FIN needs no read
  CHECK(p.a.bytesWritten() == 5);
  // Bytes then EOF at the peer, not a reset (nothing unread on our side).
  p.runUntil([&] { return p.rb.eofs == 1 || p.rb.error != 0; });
  CHECK(p.rb.error == 0);
  CHECK(p.rb.data == "close");
}

TEST_CASE("tcp_stream: writeFinal behind queued bytes falls back to writeLast", "[net]") {
  Pair p;
  const std::string sent = fillUntilQueued(p.a);
  REQUIRE(p.a.writeFinal("end", 3) == 0);
  CHECK(p.a.isOpen());  // closing now would drop what is queued: FIN after it instead
  CHECK(p.a.write("x", 1) == UV_EPIPE);
  REQUIRE(p.b.readStart() == 0);
  p.runUntil([&] { return p.rb.eofs == 1; });
  CHECK(p.rb.data == sent + "end");
}

TEST_CASE("tcp_stream: quickAck turns TCP_QUICKACK back on", "[net]") {
  Pair p;
  int zero = 0;
  REQUIRE(setsockopt(fdOf(p.b), IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero)) == 0);
  REQUIRE(tcpOption(fdOf(p.b), TCP_QUICKACK) == 0);
  p.b.quickAck();
  CHECK(tcpOption(fdOf(p.b), TCP_QUICKACK) == 1);
}

TEST_CASE("tcp_stream: watchPeer sets TCP_USER_TIMEOUT", "[net]") {
  Pair p;
  CHECK(tcpOption(fdOf(p.a), TCP_USER_TIMEOUT) == 0);  // the kernel's retransmission limit
  p.a.watchPeer(2500);
  CHECK(tcpOption(fdOf(p.a), TCP_USER_TIMEOUT) == 2500);
  p.a.watchPeer(UINT32_MAX);  // clamped to what the option holds
  CHECK(tcpOption(fdOf(p.a), TCP_USER_TIMEOUT) == INT32_MAX);
}

TEST_CASE("tcp_stream: queue above high water drains with one onDrain upcall", "[net]") {
  Pair p;
  p.a.setHighWater(64 * 1024);
  std::string chunk = pattern(256 * 1024);
  // The peer is not reading: the kernel buffers fill and our queue must grow past high water.
  size_t written = 0;
  for (int i = 0; i < 64 && p.a.pendingBytes() <= 64 * 1024; ++i) {
    REQUIRE(p.a.write(chunk.data(), chunk.size()) == 0);
    written += chunk.size();
  }
  REQUIRE(p.a.pendingBytes() > 64 * 1024);
  CHECK(p.ra.drains == 0);
  REQUIRE(p.b.readStart() == 0);
  p.runUntil([&] { return p.rb.data.size() == written; });
  CHECK(p.ra.drains == 1);
  CHECK(p.a.pendingBytes() == 0);
}

TEST_CASE("tcp_stream: unacknowledgedBytes counts the kernel's queue too", "[net]") {
  Pair p;
  CHECK(p.a.unacknowledgedBytes() == 0);
  std::string chunk = pattern(64 * 1024);
  REQUIRE(p.a.write(chunk.data(), chunk.size()) == 0);  // the peer is not reading yet
  // Until the peer reads, the bytes sit in our queue or in the kernel's send queue (the peer's
  // kernel may already have acknowledged what fits its receive buffer).
  CHECK(p.a.unacknowledgedBytes() >= p.a.pendingBytes());
  REQUIRE(p.b.readStart() == 0);
  p.runUntil([&] { return p.rb.data.size() == chunk.size(); });
  p.runUntil([&] { return p.a.unacknowledgedBytes() == 0; });
  CHECK(p.a.unacknowledgedBytes() == 0);
  CHECK(p.a.pendingBytes() == 0);
}

TEST_CASE("tcp_stream: writes after close fail and the close upcall comes once", "[net]") {
  Pair p;
  p.a.close();
  CHECK(p.a.isClosing());
  CHECK(p.a.write("x", 1) == UV_EPIPE);
  p.a.close();  // idempotent
  REQUIRE(p.b.readStart() == 0);
  p.runUntil([&] { return p.rb.eofs == 1 || p.rb.error != 0; });
}

TEST_CASE("listener: openListenSocket binds port 0 and reports the real port", "[net]") {
  HostPort hp;
  hp.host = "127.0.0.1";
  hp.port = 0;
  std::string bound, err;
  int fd = openListenSocket(hp, 16, false, bound, err);
  REQUIRE(fd >= 0);
  CHECK(bound.rfind("127.0.0.1:", 0) == 0);
  CHECK(bound != "127.0.0.1:0");
  // A second socket on the same port succeeds thanks to SO_REUSEPORT (one per worker).
  HostPort same = hp;
  same.port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
  std::string bound2;
  int fd2 = openListenSocket(same, 16, false, bound2, err);
  CHECK(fd2 >= 0);
  CHECK(bound2 == bound);
  ::close(fd);
  if (fd2 >= 0) ::close(fd2);
}

TEST_CASE("listener: accepted sockets inherit TCP_NODELAY and the delayed first ACK", "[net]") {
  auto delay = GENERATE(false, true);
  HostPort hp;
  hp.host = "127.0.0.1";
  hp.port = 0;
  std::string bound, err;
  int lfd = openListenSocket(hp, 16, delay, bound, err);
  REQUIRE(lfd >= 0);
  sockaddr_in addr{};
  uv_ip4_addr("127.0.0.1", std::stoi(bound.substr(bound.rfind(':') + 1)), &addr);
  int cfd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(cfd >= 0);
  REQUIRE(connect(cfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  int afd = -1;
  for (int i = 0; i < 1000 && afd < 0; ++i) {  // the listening socket is non-blocking
    afd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (afd < 0) usleep(1000);
  }
  REQUIRE(afd >= 0);
  CHECK(tcpOption(afd, TCP_NODELAY) == 1);
  CHECK(tcpOption(afd, TCP_QUICKACK) == (delay ? 0 : 1));
  ::close(afd);
  ::close(cfd);
  ::close(lfd);
}

TEST_CASE("listener: a bad address is a clear error", "[net]") {
  HostPort hp;
  hp.host = "256.1.1.1";
  hp.port = 80;
  std::string bound, err;
  CHECK(openListenSocket(hp, 16, false, bound, err) == -1);
  CHECK(err.find("256.1.1.1:80") != std::string::npos);
}
