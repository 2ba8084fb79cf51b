#pragma once
// Listening sockets. The main thread creates one SO_REUSEPORT socket per listener per worker
// (the first binds the configured port, which may be 0; the others bind the port it got), so
// the kernel spreads connections over workers without a shared accept lock. Each worker then
// adopts its sockets with Listener::open on its own loop.

#include <uv.h>

#include <functional>
#include <string>

#include "config/config.h"

namespace upgate {

// Creates, binds and listens a non-blocking socket. On success returns the fd and fills
// `bound` with the real address (port resolved); on failure returns -1 and sets `err`.
// Accepted sockets inherit TCP_NODELAY from it (Linux copies the option at accept), so no
// per-connection setsockopt is needed. With `delay_first_ack`, TCP_QUICKACK is turned off after
// listen(), which accepted sockets inherit too: the ACK of a request is then sent with its answer
// instead of as a segment of its own (HAProxy does the same on HTTP listeners). Only for
// listeners whose first answer follows the request at once (plain HTTP, not TLS); see
// TcpStream::quickAck for where it is turned back on.
int openListenSocket(const HostPort& address, int backlog, bool delay_first_ack, std::string& bound,
                     std::string& err);

// Formats a socket address as "ip:port" / "[ip]:port"; `ip_only` gets the bare ip when given.
std::string formatSockaddr(const sockaddr* sa, std::string* ip_only = nullptr,
                           uint16_t* port = nullptr);

class Listener {
 public:
  // Called on the loop thread for each pending connection; accept it with uv_accept(server, ..).
  using AcceptFn = std::function<void(Listener&, uv_stream_t* server)>;

  Listener(const ListenerConfig& config, AcceptFn on_accept)
      : config_(&config), on_accept_(std::move(on_accept)) {}
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Adopts an fd from openListenSocket on `loop` and starts accepting. Returns a UV code.
  int open(uv_loop_t* loop, int fd, int backlog);
  // Stops accepting; `done` runs from the loop once the handle is closed (it may delete this).
  void close(std::function<void()> done);
  const ListenerConfig& config() const { return *config_; }
  // A reload kept this socket (same address): the new generation's entry replaces the old one,
  // which may be freed once the sessions using it end.
  void rebind(const ListenerConfig& config) { config_ = &config; }
  // The kept socket's backlog or kind (plain: first ACK delayed; TLS: not) changed.
  void reconfigure(int backlog, bool delay_first_ack);

 private:
  static void onConnection(uv_stream_t* server, int status) noexcept;
  static void onClose(uv_handle_t* h) noexcept;

  const ListenerConfig* config_;
  AcceptFn on_accept_;
  std::function<void()> on_closed_;
  uv_tcp_t tcp_{};
  bool open_ = false;
};

}  // namespace upgate
