// bare_relay: the benchmark's floor for a user-space proxy (tests/bench/).
//
// Accepts TCP connections, connects each to --upstream and copies bytes both ways, nothing
// else: no HTTP, no WebSocket, no limits beyond one bounded write per direction. It does per
// chunk what any read/write relay must: one read(2) on one socket, one send(2) on the other, so
// run.sh can show, in the same run, what the kernel charges a proxy before any proxy logic.
// The WebSocket upgrade and every frame pass through it unchanged, so the load generator talks
// to the echo server behind it as if directly.
//
// One thread, one libuv loop (as upgate with `workers: 1`). A chunk the other socket does not
// take at once is copied into one write request, and the side it came from stops reading until
// that write completes: at most one read buffer's worth is held per direction. A FIN is passed
// on (shutdown) once what came before it is written; a connection closes when both directions
// have ended, or at once on an error.
//
//   bare_relay --upstream HOST:PORT [--host 127.0.0.1] [--port 0] [--ready-file PATH]
//
// Prints "listening HOST:PORT" once bound (and writes the same line to --ready-file, atomically).
// On SIGTERM/SIGINT prints one JSON line with its totals and exits 0.

#include <arpa/inet.h>
#include <sys/socket.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench_util.h"

namespace {

constexpr size_t kReadBufferSize = 64 * 1024;

char g_read_buffer[kReadBufferSize];
sockaddr_in g_upstream{};
uint64_t g_connections = 0, g_failed = 0, g_bytes_up = 0, g_bytes_down = 0;

template <typename T, typename U>
T* as(U* p) {
  return reinterpret_cast<T*>(p);
}

struct Pair;

// One socket of a relayed connection; `peer` is where what it reads goes.
struct Side {
  uv_tcp_t tcp;
  Pair* pair = nullptr;
  Side* peer = nullptr;
  uint64_t* counter = nullptr;  // g_bytes_up or g_bytes_down: what this side reads
  uv_write_t write_req;         // the one write in flight to this side, if any
  std::string queued;           // its bytes
  bool writing = false;
  bool eof_read = false;  // this side sent its FIN
  bool shut = false;      // our FIN to this side is sent or on its way
  uv_shutdown_t shutdown_req;
};

struct Pair {
  Side client, upstream;
  uv_connect_t connect_req;
  int handles_open = 2;
  bool closing = false;
};

void onClosed(uv_handle_t* h) {
  auto* pair = static_cast<Side*>(h->data)->pair;
  if (--pair->handles_open == 0) delete pair;
}

void closePair(Pair* p) {
  if (p->closing) return;
  p->closing = true;
  uv_close(as<uv_handle_t>(&p->client.tcp), onClosed);
  uv_close(as<uv_handle_t>(&p->upstream.tcp), onClosed);
}

void onAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  *buf = uv_buf_init(g_read_buffer, sizeof(g_read_buffer));
}

void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*);

void startReading(Side* s) {
  if (uv_read_start(as<uv_stream_t>(&s->tcp), onAlloc, onRead) != 0) closePair(s->pair);
}

void onShutdown(uv_shutdown_t* req, int status) {
  auto* s = static_cast<Side*>(req->data);
  Pair* p = s->pair;
  if (status < 0 || (p->client.eof_read && p->upstream.eof_read)) closePair(p);
}

// Passes the FIN on to `to` once nothing is left to write to it.
void maybeShutdown(Side* to) {
  if (to->shut || to->writing || !to->peer->eof_read || to->pair->closing) return;
  to->shut = true;
  to->shutdown_req.data = to;
  if (uv_shutdown(&to->shutdown_req, as<uv_stream_t>(&to->tcp), onShutdown) != 0)
    closePair(to->pair);
}

void onWritten(uv_write_t* req, int status) {
  auto* to = static_cast<Side*>(req->data);
  to->writing = false;
  std::string().swap(to->queued);
  if (to->pair->closing) return;
  if (status < 0) {
    closePair(to->pair);
    return;
  }
  Side* from = to->peer;
  if (!from->eof_read) startReading(from);
  maybeShutdown(to);
}

void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
  auto* from = static_cast<Side*>(stream->data);
  Pair* p = from->pair;
  if (p->closing || nread == 0) return;
  if (nread == UV_EOF) {
    from->eof_read = true;
    uv_read_stop(stream);
    maybeShutdown(from->peer);
    return;
  }
  if (nread < 0) {
    closePair(p);
    return;
  }
  Side* to = from->peer;
  size_t len = static_cast<size_t>(nread);
  *from->counter += len;
  uv_os_fd_t fd;
  if (uv_fileno(as<uv_handle_t>(&to->tcp), &fd) != 0) {
    closePair(p);
    return;
  }
  ssize_t n = ::send(fd, g_read_buffer, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0 && errno != EAGAIN) {
    closePair(p);
    return;
  }
  size_t done = n < 0 ? 0 : static_cast<size_t>(n);
  if (done == len) return;
  // The rest waits in one write; `from` is not read again until it is written.
  to->queued.assign(g_read_buffer + done, len - done);
  to->writing = true;
  to->write_req.data = to;
  uv_buf_t b = uv_buf_init(to->queued.data(), static_cast<unsigned>(to->queued.size()));
  if (uv_write(&to->write_req, as<uv_stream_t>(&to->tcp), &b, 1, onWritten) != 0) {
    to->writing = false;
    closePair(p);
    return;
  }
  uv_read_stop(stream);
}

void onUpstreamConnected(uv_connect_t* req, int status) {
  auto* p = static_cast<Pair*>(req->data);
  if (p->closing) return;
  if (status < 0) {
    ++g_failed;
    closePair(p);
    return;
  }
  uv_tcp_nodelay(&p->upstream.tcp, 1);
  startReading(&p->client);
  startReading(&p->upstream);
}

void onConnection(uv_stream_t* server, int status) {
  if (status < 0) return;
  auto* p = new Pair();
  Side* sides[2] = {&p->client, &p->upstream};
  for (Side* s : sides) {
    uv_tcp_init(server->loop, &s->tcp);
    s->tcp.data = s;
    s->pair = p;
  }
  p->client.peer = &p->upstream;
  p->upstream.peer = &p->client;
  p->client.counter = &g_bytes_up;
  p->upstream.counter = &g_bytes_down;
  if (uv_accept(server, as<uv_stream_t>(&p->client.tcp)) != 0) {
    closePair(p);
    return;
  }
  ++g_connections;
  uv_tcp_nodelay(&p->client.tcp, 1);
  p->connect_req.data = p;
  if (uv_tcp_connect(&p->connect_req, &p->upstream.tcp, as<const sockaddr>(&g_upstream),
                     onUpstreamConnected) != 0) {
    ++g_failed;
    closePair(p);
  }
}

void onSignal(uv_signal_t*, int) {
  std::printf(
      "{\"bare_relay\":\"stopped\",\"connections\":%llu,\"upstream_failures\":%llu,"
      "\"bytes_up\":%llu,\"bytes_down\":%llu}\n",
      static_cast<unsigned long long>(g_connections), static_cast<unsigned long long>(g_failed),
      static_cast<unsigned long long>(g_bytes_up), static_cast<unsigned long long>(g_bytes_down));
  std::fflush(stdout);
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "bare_relay: the benchmark's floor for a proxy, one read and one send per chunk between "
      "two sockets"};
  bench::ServerOptions options;
  bench::addServerOptions(app, options);
  std::string upstream;
  app.add_option("--upstream", upstream, "IPV4:PORT to relay every connection to")->required();
  bench::parseOrExit(app, argc, argv);
  size_t colon = upstream.rfind(':');
  if (colon == std::string::npos ||
      uv_ip4_addr(upstream.substr(0, colon).c_str(), std::atoi(upstream.c_str() + colon + 1),
                  &g_upstream) != 0) {
    std::fprintf(stderr, "bare_relay: --upstream needs IPV4:PORT, not %s\n", upstream.c_str());
    return 2;
  }
  return bench::serve(options, "bare_relay", onConnection, onSignal);
}
