#pragma once
// The admin listener (loopback by default), on the main thread's loop so it answers even when
// workers are busy:
//   POST /publish/{channel}   body = one message to every subscriber of the channel, on every
//                             worker, in order. Content-Type application/octet-stream (or
//                             ?binary=1) sends a binary message, anything else text.
//                             200 {"channel":..,"seq":N,"subscribers":M}
//   GET  /healthz             200 while the process runs
//   GET  /readyz              200 while accepting, 503 once draining
// With `admin.token` set, every request needs "Authorization: Bearer <token>" (else 401).
// One request per connection (Connection: close): publishers are legacy apps doing plain POSTs.

#include <uv.h>

#include <functional>
#include <string>
#include <unordered_set>

#include "bridge/hub.h"
#include "config/config.h"
#include "net/tcp_stream.h"

namespace upgate {

class AdminConnection;

class AdminServer {
 public:
  AdminServer(uv_loop_t* loop, const Config& config, Hub& hub);
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;
  ~AdminServer();

  // Binds and listens; returns the bound "ip:port" or sets `err`.
  bool start(std::string& bound, std::string& err);
  void setDraining() { draining_ = true; }
  // What POST /reload runs (on this loop): the same as SIGHUP. Returns an empty string when
  // everything reloaded, else what failed (the running state is kept for that part).
  void setReload(std::function<std::string()> reload) { reload_ = std::move(reload); }
  // Stops listening and closes open admin connections; `done` runs when all handles closed.
  void close(std::function<void()> done);

  // Used by connections.
  std::string handle(const std::string& method, const std::string& path, const std::string& query,
                     const std::string* authorization, const std::string* content_type,
                     std::string& body);
  const Config& config() const { return config_; }
  uv_loop_t* loop() { return loop_; }
  void connectionClosed(AdminConnection* c);

 private:
  static void onConnection(uv_stream_t* server, int status) noexcept;
  static void onListenerClosed(uv_handle_t* h) noexcept;
  void maybeDone();

  uv_loop_t* loop_;
  const Config& config_;
  Hub& hub_;
  uv_tcp_t tcp_{};
  bool listening_ = false;
  bool closing_ = false;
  bool draining_ = false;
  std::function<std::string()> reload_;
  std::unordered_set<AdminConnection*> connections_;
  std::function<void()> done_;
};

}  // namespace upgate
