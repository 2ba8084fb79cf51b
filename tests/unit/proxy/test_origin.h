#pragma once
// A raw libuv HTTP/1.1 origin server on 127.0.0.1:0, on the test's own loop, for the tests of the
// HTTP client and the HTTP exchange: it records every request (head, decoded body, raw bytes),
// answers through a handler, and closes all its handles through uv_close.

#include <uv.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"  // HostPort
#include "core/handle.h"

namespace upgate {
namespace test_origin {

inline std::string lowerCase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Value of the first header `name` in a raw head ("" if absent); test code, no folding.
inline std::string headerIn(const std::string& head, const std::string& name) {
  const std::string h = lowerCase(head);
  const size_t at = h.find("\r\n" + lowerCase(name) + ":");
  if (at == std::string::npos) return {};
  const size_t start = head.find_first_not_of(' ', at + 3 + name.size());
  return head.substr(start, head.find("\r\n", start) - start);
}

inline bool hasHeader(const std::string& head, const std::string& name) {
  return lowerCase(head).find("\r\n" + lowerCase(name) + ":") != std::string::npos;
}

// Decodes a chunked body at the start of `in`; returns bytes used, or 0 if incomplete.
inline size_t dechunk(const std::string& in, std::string& body) {
  size_t pos = 0;
  body.clear();
  for (;;) {
    const size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) return 0;
    const size_t size = std::stoul(in.substr(pos, eol - pos), nullptr, 16);
    pos = eol + 2;
    if (size == 0) {
      const size_t end = in.find("\r\n\r\n", pos - 2);  // no trailers from our side
      return end == std::string::npos ? 0 : end + 4;
    }
    if (in.size() < pos + size + 2) return 0;
    body.append(in, pos, size);
    pos += size + 2;
  }
}

// ---- A raw libuv HTTP/1.1 origin server on 127.0.0.1:0 ------------------------------------------

struct Origin;

struct OriginConn {
  uv_tcp_t tcp{};
  Origin* origin = nullptr;
  int id = 0;        // accept order, from 1
  int requests = 0;  // complete requests on this connection
  std::string in;
  bool eof = false;        // the client closed its side
  bool head_seen = false;  // the current request's head was reported
  bool closing = false;
  bool closed = false;
};

struct OriginRequest {
  int conn = 0;
  int seq = 0;       // OriginConn::requests after this one
  std::string head;  // up to and including the blank line
  std::string body;  // decoded
  std::string raw;   // head + body bytes exactly as received
};

struct Origin {
  using Handler = std::function<void(Origin&, OriginConn&, const OriginRequest&)>;
  uv_tcp_t listener{};
  uint16_t port = 0;
  Handler on_request;
  Handler on_head;  // optional: the head arrived (body may follow)
  std::vector<std::unique_ptr<OriginConn>> conns;
  std::vector<OriginRequest> requests;
  bool listener_closed = false;

  Origin(uv_loop_t* loop, Handler h) : on_request(std::move(h)) {
    REQUIRE(uv_tcp_init(loop, &listener) == 0);
    listener.data = this;
    sockaddr_in addr{};
    uv_ip4_addr("127.0.0.1", 0, &addr);
    REQUIRE(uv_tcp_bind(&listener, reinterpret_cast<const sockaddr*>(&addr), 0) == 0);
    REQUIRE(uv_listen(asStream(&listener), 64, onConnection) == 0);
    sockaddr_storage bound{};
    int len = sizeof(bound);
    uv_tcp_getsockname(&listener, reinterpret_cast<sockaddr*>(&bound), &len);
    port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }

  HostPort endpoint() const { return HostPort{"127.0.0.1", port}; }

  static void onConnection(uv_stream_t* s, int status) {
    auto* self = static_cast<Origin*>(s->data);
    if (status != 0) return;
    auto c = std::make_unique<OriginConn>();
    c->origin = self;
    c->id = static_cast<int>(self->conns.size()) + 1;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c.get();
    if (uv_accept(s, asStream(&c->tcp)) != 0) {
      c->closing = true;
      uv_close(asHandle(&c->tcp),
               [](uv_handle_t* h) { static_cast<OriginConn*>(h->data)->closed = true; });
      self->conns.push_back(std::move(c));
      return;
    }
    self->startReading(*c);
    self->conns.push_back(std::move(c));
  }

  void startReading(OriginConn& c) {
    uv_read_start(
        asStream(&c.tcp),
        [](uv_handle_t*, size_t, uv_buf_t* buf) {
          static char storage[64 * 1024];
          *buf = uv_buf_init(storage, sizeof(storage));
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
          auto* conn = static_cast<OriginConn*>(s->data);
          if (n < 0) {
            conn->eof = true;
            conn->origin->closeConn(*conn);
            return;
          }
          conn->in.append(buf->base, static_cast<size_t>(n));
          conn->origin->parse(*conn);
        });
  }

  void parse(OriginConn& c) {
    while (!c.closing) {
      const size_t end = c.in.find("\r\n\r\n");
      if (end == std::string::npos) return;
      const std::string head = c.in.substr(0, end + 4);
      if (!c.head_seen) {
        c.head_seen = true;
        if (on_head) on_head(*this, c, OriginRequest{c.id, c.requests + 1, head, {}, {}});
        if (c.closing) return;
      }
      std::string body;
      size_t total = head.size();
      if (lowerCase(headerIn(head, "transfer-encoding")) == "chunked") {
        const size_t used = dechunk(c.in.substr(head.size()), body);
        if (used == 0) return;
        total += used;
      } else if (hasHeader(head, "content-length")) {
        const size_t n = std::stoul(headerIn(head, "content-length"));
        if (c.in.size() < head.size() + n) return;
        body = c.in.substr(head.size(), n);
        total += n;
      }
      OriginRequest r{c.id, ++c.requests, head, body, c.in.substr(0, total)};
      c.in.erase(0, total);
      c.head_seen = false;
      requests.push_back(r);
      if (on_request) on_request(*this, c, r);
    }
  }

  void write(OriginConn& c, const std::string& bytes) {
    if (c.closing) return;
    struct Write {
      uv_write_t req;
      std::string data;
    };
    auto* w = new Write{{}, bytes};
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    if (uv_write(&w->req, asStream(&c.tcp), &buf, 1,
                 [](uv_write_t* req, int) { delete reinterpret_cast<Write*>(req); }) != 0) {
      delete w;
    }
  }

  void closeConn(OriginConn& c) {
    if (c.closing) return;
    c.closing = true;
    uv_close(asHandle(&c.tcp),
             [](uv_handle_t* h) { static_cast<OriginConn*>(h->data)->closed = true; });
  }

  void close() {
    for (auto& c : conns) closeConn(*c);
    if (!uv_is_closing(asHandle(&listener))) {
      uv_close(asHandle(&listener),
               [](uv_handle_t* h) { static_cast<Origin*>(h->data)->listener_closed = true; });
    }
  }

  bool allClosed() const {
    if (!listener_closed) return false;
    for (const auto& c : conns) {
      if (!c->closed) return false;
    }
    return true;
  }
};

}  // namespace test_origin
}  // namespace upgate
