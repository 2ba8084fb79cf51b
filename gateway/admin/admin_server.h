#pragma once
// The admin listener (loopback by default), on the main thread's loop so it answers even when
// workers are busy:
//   POST /publish/{channel}   body = one message to every subscriber of the channel, on every
//                             worker, in order. Content-Type application/octet-stream (or
//                             ?binary=1) sends a binary message, anything else text.
//                             200 {"channel":..,"seq":N,"subscribers":M}
//   GET  /healthz             200 while the process runs
//   GET  /readyz              200 while accepting, 503 once draining
//   GET  /metrics             Prometheus text format: every worker's counters and this
//                             thread's (publishes, reloads), summed
//   POST /reload              as SIGHUP: 200 {"reloaded":true,"generation":N,
//                             "restart_needed":[..]}, or 500 with why nothing changed
//   POST /revoke              body {"user": "..."} and/or {"session": N} (both: that session if
//                             it is that user's), optional "code" (default 1008) and "reason"
//                             (default "revoked"): every established WebSocket or SSE session
//                             of that plugin identity (or with that access-log id) gets the close
//                             frame; one still in its upgrade, a 403. 200 {"revoked": N}
// With `admin.token` set, every request needs "Authorization: Bearer <token>" (else 401).
// One request per connection (Connection: close): publishers are legacy apps doing plain POSTs.

#include <uv.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "bridge/hub.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "net/tcp_stream.h"

namespace upgate {

class AdminConnection;

// POST /revoke: which sessions to close, and how.
struct RevokeRequest {
  std::string user;      // a plugin identity ("": none)
  uint64_t session = 0;  // an access-log id (0: none)
  uint16_t code = 1008;
  std::string reason = "revoked";
};

// What a reload did, for POST /reload.
struct ReloadResult {
  std::string error;                        // empty: the new configuration is in use
  uint64_t generation = 0;                  // the generation in use afterwards
  std::vector<std::string> restart_needed;  // keys that changed but apply at the next start
};

class AdminServer {
 public:
  AdminServer(uv_loop_t* loop, std::shared_ptr<const Config> config, Hub& hub);
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;
  ~AdminServer();

  // Binds and listens; returns the bound "ip:port" or sets `err`.
  bool start(std::string& bound, std::string& err);
  void setDraining() { draining_ = true; }
  // What POST /reload runs (on this loop): the same as SIGHUP.
  void setReload(std::function<ReloadResult()> reload) { reload_ = std::move(reload); }
  // What POST /revoke runs (on this loop): asks every worker, returns how many sessions it
  // closed, or nothing if a worker did not answer in time.
  void setRevoke(std::function<std::optional<size_t>(const RevokeRequest&)> revoke) {
    revoke_ = std::move(revoke);
  }
  // After a reload (on this loop): the token, body limit and request limits of the new
  // configuration apply to the next request; the listening address stays (restart_needed).
  void setConfig(std::shared_ptr<const Config> config) { config_ = std::move(config); }
  // The main thread's counters (publishes here; reloads, by the server).
  metrics::Registry& metrics() { return metrics_; }
  // Adds the workers' counters for GET /metrics (called on this loop).
  void setMetricsSource(std::function<void(metrics::Snapshot&)> collect) {
    collect_workers_ = std::move(collect);
  }
  // Stops listening and closes open admin connections; `done` runs when all handles closed.
  void close(std::function<void()> done);

  // Used by connections.
  std::string handle(const std::string& method, const std::string& path, const std::string& query,
                     const std::string* authorization, const std::string* content_type,
                     std::string& body);
  const Config& config() const { return *config_; }
  uv_loop_t* loop() { return loop_; }
  void connectionClosed(AdminConnection* c);

 private:
  static void onConnection(uv_stream_t* server, int status) noexcept;
  static void onListenerClosed(uv_handle_t* h) noexcept;
  void maybeDone();

  uv_loop_t* loop_;
  std::shared_ptr<const Config> config_;
  Hub& hub_;
  metrics::Registry metrics_;
  metrics::Counter& published_;
  std::function<void(metrics::Snapshot&)> collect_workers_;
  uv_tcp_t tcp_{};
  bool listening_ = false;
  bool closing_ = false;
  bool draining_ = false;
  std::function<ReloadResult()> reload_;
  std::function<std::optional<size_t>(const RevokeRequest&)> revoke_;
  std::unordered_set<AdminConnection*> connections_;
  std::function<void()> done_;
};

}  // namespace upgate
