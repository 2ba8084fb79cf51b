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

#include "bridge/hub.h"
#include "config/config.h"
#include "net/listener.h"
#include "net/tcp_stream.h"
#include "routing/route_table.h"
#include "tls/tls_context.h"

namespace upgate {

class Session;
class HttpClient;
class Poller;
class UpstreamPool;
class PluginSet;

// One listening fd per configured listener, in config order, made by the main thread.
struct ListenFds {
  std::vector<int> fds;
};

class Worker {
 public:
  Worker(unsigned index, std::shared_ptr<const Config> config, std::shared_ptr<const TlsBundle> tls,
         std::shared_ptr<const PluginSet> plugins, Hub& hub, ListenFds fds);
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
  void swapPlugins(std::shared_ptr<const PluginSet> plugins);
  // Thread-safe: runs `task` on this worker's loop, in post order.
  void post(std::function<void()> task);

  // Loop-thread API for sessions.
  uv_loop_t* loop() { return &loop_; }
  const Config& config() const { return *config_; }
  const RouteTable& routes() const { return routes_; }
  // Index of the endpoint to try first for `upstream` (per-worker round robin).
  size_t nextEndpoint(const UpstreamConfig& upstream);
  void removeSession(Session* s);
  std::shared_ptr<const TlsContext> upstreamTls(const std::string& upstream) const;
  unsigned index() const { return index_; }
  bool draining() const { return draining_; }
  Hub& hub() { return hub_; }
  const PluginSet& plugins() const { return *plugins_; }
  HttpClient& httpClient() { return *http_client_; }
  UpstreamPool& upstreamPool() { return *upstream_pool_; }

  // Channels (loop thread). The worker keeps its own subscriber lists; the hub only counts.
  void addSubscriber(const std::string& channel, const RouteConfig& route,
                     const std::string& poll_target, ChannelSubscriber* s);
  void removeSubscriber(const std::string& channel, ChannelSubscriber* s);
  void deliverLocal(const std::string& channel, const MessagePtr& message);
  // Long-poll channels owned by this worker (posted by the hub).
  void acquirePoller(const std::string& channel, const RouteConfig& route,
                     const std::string& poll_target);
  void releasePoller(const std::string& channel);
  void forgetPoller(const std::string& channel);

 private:
  static void onAsync(uv_async_t* a) noexcept;
  static void onDrainTimer(uv_timer_t* t) noexcept;
  static void onSpreadTimer(uv_timer_t* t) noexcept;

  void run(std::promise<int> ready);
  void accept(Listener& listener, uv_stream_t* server);
  void beginDrain();
  void drainDue();
  void maybeStop();

  const unsigned index_;
  std::shared_ptr<const Config> config_;
  RouteTable routes_;
  std::shared_ptr<const TlsBundle> tls_;
  std::shared_ptr<const PluginSet> plugins_;
  Hub& hub_;
  std::unique_ptr<HttpClient> http_client_;
  std::unique_ptr<UpstreamPool> upstream_pool_;  // keep-alive connections of http routes
  std::unordered_map<std::string, std::vector<ChannelSubscriber*>> subscribers_;
  std::unordered_map<std::string, Poller*> pollers_;  // each deletes itself after destroy()
  bool http_client_open_ = false;
  ListenFds fds_;
  std::thread thread_;

  uv_loop_t loop_{};
  uv_async_t async_{};
  uv_timer_t drain_timer_{};
  uv_timer_t spread_timer_{};  // drain_spread: tells the next share of sessions every tick
  std::unique_ptr<LoopContext> loop_ctx_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  size_t listeners_open_ = 0;

  std::mutex inbox_mutex_;
  std::vector<std::function<void()>> inbox_;
  bool inbox_closed_ = false;  // guarded by inbox_mutex_

  Session* sessions_ = nullptr;  // intrusive list head
  size_t session_count_ = 0;
  uint64_t next_id_ = 0;
  bool draining_ = false;
  // Drain spread: sessions_ at the start of the drain are told in list order, `drain_told_` of
  // `drain_total_` so far; drain_next_ is the next one (removeSession moves it on).
  Session* drain_next_ = nullptr;
  size_t drain_total_ = 0, drain_told_ = 0;
  uint64_t drain_start_ = 0, drain_window_ = 0;  // ms, loop time
  bool stopping_ = false;
  std::unordered_map<const UpstreamConfig*, size_t> round_robin_;
};

}  // namespace upgate
