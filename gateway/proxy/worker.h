#pragma once
// A worker thread: one uv_loop_t, its own SO_REUSEPORT listeners, every session it accepted.
// The data path never leaves the loop and takes no lock. Other threads talk to a worker only
// through post(), which queues a task and wakes the loop with uv_async_send.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "net/listener.h"
#include "net/tcp_stream.h"
#include "routing/route_table.h"
#include "tls/tls_context.h"

namespace upgate {

class Session;

// One listening fd per configured listener, in config order, made by the main thread.
struct ListenFds {
  std::vector<int> fds;
};

class Worker {
 public:
  Worker(unsigned index, std::shared_ptr<const Config> config,
         std::shared_ptr<const TlsBundle> tls, ListenFds fds);
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker();

  // Starts the thread; the future resolves to 0 once every listener accepts, or a UV error.
  std::future<int> start();
  void join();
  // Thread-safe: stop accepting, let sessions end until drain_timeout, then abort the rest.
  void requestDrain();
  // Thread-safe: new connections use these contexts; established sessions keep theirs.
  void swapTls(std::shared_ptr<const TlsBundle> tls);

  // Loop-thread API for sessions.
  uv_loop_t* loop() { return &loop_; }
  const Config& config() const { return *config_; }
  const RouteTable& routes() const { return routes_; }
  // Index of the endpoint to try first for `upstream` (per-worker round robin).
  size_t nextEndpoint(const UpstreamConfig& upstream);
  void removeSession(Session* s);
  std::shared_ptr<const TlsContext> upstreamTls(const std::string& upstream) const;

 private:
  static void onAsync(uv_async_t* a) noexcept;
  static void onDrainTimer(uv_timer_t* t) noexcept;

  void run(std::promise<int> ready);
  void post(std::function<void()> task);
  void accept(Listener& listener, uv_stream_t* server);
  void beginDrain();
  void maybeStop();

  const unsigned index_;
  std::shared_ptr<const Config> config_;
  RouteTable routes_;
  std::shared_ptr<const TlsBundle> tls_;
  ListenFds fds_;
  std::thread thread_;

  uv_loop_t loop_{};
  uv_async_t async_{};
  uv_timer_t drain_timer_{};
  std::unique_ptr<LoopContext> loop_ctx_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  size_t listeners_open_ = 0;

  std::mutex inbox_mutex_;
  std::vector<std::function<void()>> inbox_;

  Session* sessions_ = nullptr;  // intrusive list head
  size_t session_count_ = 0;
  uint64_t next_id_ = 0;
  bool draining_ = false;
  bool stopping_ = false;
  std::unordered_map<const UpstreamConfig*, size_t> round_robin_;
};

}  // namespace upgate
