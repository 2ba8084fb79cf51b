// echo_server: the benchmark's WebSocket echo upstream (tests/bench/).
//
// One thread, one libuv loop. Answers the RFC 6455 upgrade (Sec-WebSocket-Accept = base64 of
// SHA-1 over key + GUID, via OpenSSL) and echoes every frame back unmasked, frame by frame and
// streaming: a frame's header is answered as soon as it is parsed and its payload is unmasked
// into one per-loop output buffer as it arrives, so a 16 KiB message is never buffered whole.
// Pings get pongs; a close frame is answered with the same close frame, then this side sends its
// FIN first (as RFC 6455 §7.1.1 asks of servers), which keeps TIME_WAIT off client ports.
//
//   echo_server [--host 127.0.0.1] [--port 0] [--ready-file PATH]
//
// Prints "listening HOST:PORT" once bound (and writes the same line to --ready-file, atomically).
// On SIGTERM/SIGINT prints one JSON line with its totals and exits 0.
//
// It is also the benchmark's direct fan-out server (the floor a gateway's fan-out is measured
// against): a `POST` with a Content-Length body is answered 200 after the body has been sent,
// as one unmasked binary frame built once, to every connection upgraded on a /fan/ path, each
// by one send(2) straight from that frame (a copy is queued only for what a full socket did not
// take). Subscribers listen only: a message could land inside the echo of a long frame.

#include <arpa/inet.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"

namespace {

using bench::lower;
using bench::trim;

constexpr size_t kReadBufferSize = 256 * 1024;
constexpr size_t kMaxHead = 8192;
constexpr size_t kPauseAbove = 4 * 1024 * 1024;  // stop reading a client that does not read
constexpr size_t kResumeBelow = 1024 * 1024;

char g_read_buffer[kReadBufferSize];
std::vector<char> g_out;  // one output buffer for the loop, reused by every read callback
uint64_t g_connections = 0, g_frames = 0, g_bytes = 0, g_handshakes = 0, g_bad = 0;
uint64_t g_published = 0, g_deliveries = 0;

template <typename T, typename U>
T* as(U* p) {
  return reinterpret_cast<T*>(p);
}

// XOR-unmask n bytes from src into dst; `pos` is the offset into the 4-byte key, updated.
void unmaskCopy(char* dst, const char* src, size_t n, const uint8_t key[4], uint32_t& pos) {
  uint8_t rot[8];
  for (int i = 0; i < 8; ++i) rot[i] = key[(pos + static_cast<uint32_t>(i)) & 3];
  uint64_t k;
  std::memcpy(&k, rot, 8);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, src + i, 8);
    v ^= k;
    std::memcpy(dst + i, &v, 8);
  }
  for (; i < n; ++i) dst[i] = static_cast<char>(static_cast<uint8_t>(src[i]) ^ rot[i & 7]);
  pos = static_cast<uint32_t>((pos + n) & 3);
}

struct WriteReq {
  uv_write_t req;
  size_t len;
  char data[1];
};

struct Conn {
  uv_tcp_t tcp;
  std::string head;  // request head until the 101, then released
  bool upgraded = false;
  bool closing = false;
  bool reading = false;
  bool close_sent = false;
  size_t queued = 0;  // bytes handed to uv_write, not yet written
  // Frame parser.
  uint8_t hdr[14];
  size_t hdr_have = 0;
  uint64_t payload_left = 0;
  bool in_payload = false;
  uint8_t opcode = 0;
  uint8_t mask[4];
  uint32_t mask_pos = 0;
  std::string control;          // payload of the control frame being read (<= 125 bytes)
  size_t sub_index = SIZE_MAX;  // position in g_subscribers once upgraded
  uv_shutdown_t shutdown_req;
};

std::vector<Conn*> g_subscribers;  // every upgraded connection: the fan-out's audience

void onClose(uv_handle_t* h) {
  delete static_cast<Conn*>(h->data);
}

void unsubscribe(Conn* c) {
  if (c->sub_index == SIZE_MAX) return;
  Conn* last = g_subscribers.back();
  g_subscribers[c->sub_index] = last;
  last->sub_index = c->sub_index;
  g_subscribers.pop_back();
  c->sub_index = SIZE_MAX;
}

void closeConn(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  unsubscribe(c);
  uv_close(as<uv_handle_t>(&c->tcp), onClose);
}

void onAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  *buf = uv_buf_init(g_read_buffer, sizeof(g_read_buffer));
}

void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);

void onWrite(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* c = static_cast<Conn*>(req->data);
  c->queued -= w->len;
  std::free(w);
  if (c->closing) return;
  if (status < 0) {
    closeConn(c);
    return;
  }
  if (!c->reading && !c->close_sent && c->queued < kResumeBelow) {
    if (uv_read_start(as<uv_stream_t>(&c->tcp), onAlloc, onRead) == 0) c->reading = true;
  }
}

// Sends data: straight to the socket when nothing is queued, the rest copied into a request.
bool send(Conn* c, const char* data, size_t len) {
  if (len == 0) return true;
  size_t done = 0;
  if (c->queued == 0) {
    uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(len));
    int n = uv_try_write(as<uv_stream_t>(&c->tcp), &b, 1);
    if (n >= 0) {
      done = static_cast<size_t>(n);
    } else if (n != UV_EAGAIN) {
      return false;
    }
  }
  if (done == len) return true;
  size_t rest = len - done;
  auto* w = static_cast<WriteReq*>(std::malloc(offsetof(WriteReq, data) + rest));
  if (w == nullptr) std::abort();
  w->len = rest;
  std::memcpy(w->data, data + done, rest);
  w->req.data = c;
  uv_buf_t b = uv_buf_init(w->data, static_cast<unsigned>(rest));
  if (uv_write(&w->req, as<uv_stream_t>(&c->tcp), &b, 1, onWrite) != 0) {
    std::free(w);
    return false;
  }
  c->queued += rest;
  return true;
}

void appendFrameHeader(std::vector<char>& out, uint8_t byte0, uint64_t len) {
  out.push_back(static_cast<char>(byte0));
  if (len < 126) {
    out.push_back(static_cast<char>(len));
  } else if (len < 65536) {
    out.push_back(126);
    out.push_back(static_cast<char>(len >> 8));
    out.push_back(static_cast<char>(len));
  } else {
    out.push_back(127);
    for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>(len >> (8 * i)));
  }
}

void reject(Conn* c, const char* status) {
  ++g_bad;
  std::string r =
      std::string("HTTP/1.1 ") + status + "\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
  send(c, r.data(), r.size());
  closeConn(c);
}

void onShutdown(uv_shutdown_t* req, int);

// The value of a header in a request head (names compared case-insensitively), or "".
std::string headerValue(const std::string& head, size_t end, const char* wanted) {
  size_t pos = head.find("\r\n") + 2;
  while (pos < end) {
    size_t eol = head.find("\r\n", pos);
    size_t colon = head.find(':', pos);
    if (colon != std::string::npos && colon < eol &&
        lower(trim(head.substr(pos, colon - pos))) == wanted)
      return trim(head.substr(colon + 1, eol - colon - 1));
    pos = eol + 2;
  }
  return "";
}

// Writes one frame to every subscriber: one send(2) each from the shared frame.
void fanOut(const std::vector<char>& frame) {
  ++g_published;
  for (size_t i = 0; i < g_subscribers.size(); ++i) {
    Conn* c = g_subscribers[i];
    ssize_t n = 0;
    if (c->queued == 0) {
      uv_os_fd_t fd;
      if (uv_fileno(as<uv_handle_t>(&c->tcp), &fd) == 0)
        n = ::send(fd, frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN) {
        closeConn(c);  // swaps the last subscriber into slot i
        --i;
        continue;
      }
      if (n < 0) n = 0;
    }
    size_t done = static_cast<size_t>(n);
    if (done < frame.size() && !send(c, frame.data() + done, frame.size() - done)) {
      closeConn(c);
      --i;
      continue;
    }
    ++g_deliveries;
  }
}

// A POST (fan-out mode): waits for the Content-Length body, sends it to every subscriber as
// one binary frame, answers 200 and closes. Returns 0 while the body is incomplete.
size_t publish(Conn* c, size_t end) {
  std::string cl = headerValue(c->head, end, "content-length");
  char* stop = nullptr;
  unsigned long long body = std::strtoull(cl.c_str(), &stop, 10);
  if (cl.empty() || *stop != '\0' || body > kMaxHead) {
    reject(c, "400 Bad Request");
    return SIZE_MAX;
  }
  if (c->head.size() < end + 4 + body) return 0;
  std::vector<char> frame;
  appendFrameHeader(frame, 0x82, body);
  frame.insert(frame.end(), c->head.begin() + static_cast<long>(end + 4),
               c->head.begin() + static_cast<long>(end + 4 + body));
  fanOut(frame);
  static const char kOk[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  uv_read_stop(as<uv_stream_t>(&c->tcp));
  c->reading = false;
  if (!send(c, kOk, sizeof(kOk) - 1)) {
    closeConn(c);
    return SIZE_MAX;
  }
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, as<uv_stream_t>(&c->tcp), onShutdown) != 0) closeConn(c);
  return SIZE_MAX;
}

// Parses the request head; on success answers 101 and returns the count of bytes used.
// Returns 0 when more is needed, SIZE_MAX after rejecting or answering a POST.
size_t handshake(Conn* c) {
  size_t end = c->head.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (c->head.size() > kMaxHead) {
      reject(c, "431 Request Header Fields Too Large");
      return SIZE_MAX;
    }
    return 0;
  }
  std::string key, upgrade, connection, version;
  size_t line_end = c->head.find("\r\n");
  if (c->head.compare(0, 5, "POST ") == 0) return publish(c, end);
  if (c->head.compare(0, 4, "GET ") != 0) {
    reject(c, "400 Bad Request");
    return SIZE_MAX;
  }
  size_t pos = line_end + 2;
  while (pos < end) {
    size_t eol = c->head.find("\r\n", pos);
    std::string line = c->head.substr(pos, eol - pos);
    pos = eol + 2;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = lower(trim(line.substr(0, colon)));
    std::string value = trim(line.substr(colon + 1));
    if (name == "sec-websocket-key")
      key = value;
    else if (name == "upgrade")
      upgrade = lower(value);
    else if (name == "connection")
      connection = lower(value);
    else if (name == "sec-websocket-version")
      version = value;
  }
  if (key.size() != 24 || upgrade != "websocket" ||
      connection.find("upgrade") == std::string::npos || version != "13") {
    reject(c, "400 Bad Request");
    return SIZE_MAX;
  }
  std::string resp =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Accept: " +
      bench::websocketAccept(key) + "\r\n\r\n";
  if (!send(c, resp.data(), resp.size())) {
    closeConn(c);
    return SIZE_MAX;
  }
  ++g_handshakes;
  c->upgraded = true;
  if (c->head.compare(4, 5, "/fan/") == 0) {  // a fan-out subscriber, not an echo session
    c->sub_index = g_subscribers.size();
    g_subscribers.push_back(c);
  }
  size_t used = end + 4;
  return used;
}

void onShutdown(uv_shutdown_t* req, int) {
  auto* c = static_cast<Conn*>(req->data);
  closeConn(c);
}

// Handles a complete control frame. Returns false once the connection is finished.
bool controlFrame(Conn* c) {
  if (c->opcode == 0x9) {  // ping -> pong
    appendFrameHeader(g_out, 0x8A, c->control.size());
    g_out.insert(g_out.end(), c->control.begin(), c->control.end());
    return true;
  }
  if (c->opcode == 0x8) {  // close -> the same close back, then our FIN
    appendFrameHeader(g_out, 0x88, c->control.size());
    g_out.insert(g_out.end(), c->control.begin(), c->control.end());
    c->close_sent = true;
    unsubscribe(c);  // nothing may follow the close frame
    return false;
  }
  return true;  // pong: ignored
}

// Parses frames out of data, appending the echo to g_out. Returns false to stop (close/error).
bool frames(Conn* c, const char* data, size_t len) {
  while (len > 0) {
    if (!c->in_payload) {
      // Header: 2 bytes, then the extended length and the mask key.
      size_t need = 2;
      if (c->hdr_have >= 2) {
        uint8_t l7 = c->hdr[1] & 0x7f;
        need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + 4;
      }
      while (c->hdr_have < need && len > 0) {
        c->hdr[c->hdr_have++] = static_cast<uint8_t>(*data++);
        --len;
        if (c->hdr_have == 2) {
          if ((c->hdr[1] & 0x80) == 0) {  // clients must mask
            ++g_bad;
            return false;
          }
          uint8_t l7 = c->hdr[1] & 0x7f;
          need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + 4;
        }
      }
      if (c->hdr_have < need) return true;
      uint8_t l7 = c->hdr[1] & 0x7f;
      uint64_t plen = l7;
      size_t off = 2;
      if (l7 == 126) {
        plen = (uint64_t{c->hdr[2]} << 8) | c->hdr[3];
        off = 4;
      } else if (l7 == 127) {
        plen = 0;
        for (int i = 0; i < 8; ++i) plen = (plen << 8) | c->hdr[2 + i];
        off = 10;
      }
      std::memcpy(c->mask, c->hdr + off, 4);
      c->mask_pos = 0;
      c->opcode = c->hdr[0] & 0x0f;
      c->payload_left = plen;
      c->hdr_have = 0;
      c->in_payload = true;
      ++g_frames;
      if (c->opcode >= 0x8) {
        if (plen > 125) {
          ++g_bad;
          return false;
        }
        c->control.clear();
      } else {
        appendFrameHeader(g_out, c->hdr[0], plen);
      }
    }
    size_t take = c->payload_left < len ? static_cast<size_t>(c->payload_left) : len;
    if (c->opcode >= 0x8) {
      size_t at = c->control.size();
      c->control.resize(at + take);
      unmaskCopy(&c->control[at], data, take, c->mask, c->mask_pos);
    } else {
      size_t at = g_out.size();
      g_out.resize(at + take);
      unmaskCopy(g_out.data() + at, data, take, c->mask, c->mask_pos);
      g_bytes += take;
    }
    data += take;
    len -= take;
    c->payload_left -= take;
    if (c->payload_left == 0) {
      c->in_payload = false;
      if (c->opcode >= 0x8 && !controlFrame(c)) return false;
    }
  }
  return true;
}

void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* c = static_cast<Conn*>(s->data);
  if (c->closing || nread == 0) return;
  if (nread < 0) {
    closeConn(c);
    return;
  }
  const char* data = g_read_buffer;
  size_t len = static_cast<size_t>(nread);
  if (!c->upgraded) {
    c->head.append(data, len);
    size_t used = handshake(c);
    if (used == 0 || used == SIZE_MAX) return;
    std::string rest = c->head.substr(used);
    std::string().swap(c->head);
    std::memcpy(g_read_buffer, rest.data(), rest.size());
    len = rest.size();
  }
  g_out.clear();
  bool go_on = frames(c, data, len);
  if (!send(c, g_out.data(), g_out.size())) {
    closeConn(c);
    return;
  }
  if (!go_on) {
    uv_read_stop(s);
    c->reading = false;
    if (!c->close_sent) {  // protocol error: just drop
      closeConn(c);
      return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, s, onShutdown) != 0) closeConn(c);
    return;
  }
  if (c->queued > kPauseAbove) {
    uv_read_stop(s);
    c->reading = false;
  }
}

void onConnection(uv_stream_t* server, int status) {
  if (status < 0) return;
  auto* c = new Conn();
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, as<uv_stream_t>(&c->tcp)) != 0) {
    closeConn(c);
    return;
  }
  ++g_connections;
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start(as<uv_stream_t>(&c->tcp), onAlloc, onRead) == 0) c->reading = true;
}

void onSignal(uv_signal_t*, int) {
  std::printf(
      "{\"echo_server\":\"stopped\",\"connections\":%llu,\"handshakes\":%llu,\"frames\":%llu,"
      "\"payload_bytes\":%llu,\"rejected\":%llu,\"published\":%llu,\"deliveries\":%llu}\n",
      static_cast<unsigned long long>(g_connections), static_cast<unsigned long long>(g_handshakes),
      static_cast<unsigned long long>(g_frames), static_cast<unsigned long long>(g_bytes),
      static_cast<unsigned long long>(g_bad), static_cast<unsigned long long>(g_published),
      static_cast<unsigned long long>(g_deliveries));
  std::fflush(stdout);
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "echo_server: the benchmark's WebSocket echo upstream, and its bare fan-out server (POST "
      "a body: it goes to every connection upgraded on a /fan/ path)"};
  bench::ServerOptions options;
  bench::addServerOptions(app, options);
  bench::parseOrExit(app, argc, argv);
  g_out.reserve(kReadBufferSize * 2);
  return bench::serve(options, "echo_server", onConnection, onSignal);
}
