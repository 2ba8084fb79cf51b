#pragma once
// A worker thread: one uv_loop_t, its own SO_REUSEPORT listeners, every session it accepted.
// The data path never leaves the loop and takes no lock. Other threads talk to a worker only
// through post(), which queues a task and wakes the loop with uv_async_send.

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bridge/hub.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "net/listener.h"
#include "net/tcp_stream.h"
#include "proxy/generation.h"
#include "proxy/relay.h"
#include "websocket/close_code.h"

namespace upgate {

class Session;
class HttpClient;
class Poller;
class UpstreamPool;

// One listening fd per configured listener, in config order, made by the main thread. In a
// reload, fds[i] == -1 means "keep the socket of the running listener named reuse[i]" (the same
// address; the name may have changed). Whatever is still owned here when it goes is closed, so
// a task that never ran leaks nothing.
struct ListenFds {
  std::vector<int> fds;
  std::vector<std::string> reuse;  // reloads only; aligned with fds
  ListenFds() = default;
  ListenFds(ListenFds&& o) noexcept : fds(std::move(o.fds)), reuse(std::move(o.reuse)) {
    o.fds.clear();
  }
  ListenFds& operator=(ListenFds&&) = delete;
  ~ListenFds();
  int take(size_t i) { return std::exchange(fds[i], -1); }
};

// A route's counters on one worker, looked up once per session (see metrics.h). The
// unmatched-request set ("" route) has only `requests`.
struct RouteMetrics {
  std::string route;
  metrics::Counter* bytes_up = nullptr;    // client -> upstream
  metrics::Counter* bytes_down = nullptr;  // upstream -> client
  MessageCounters messages;
  metrics::Counter* client_pauses = nullptr;
  metrics::Counter* upstream_pauses = nullptr;
  std::vector<std::pair<int, metrics::Counter*>> requests;     // by status, in first-use order
  std::vector<std::pair<uint32_t, metrics::Counter*>> closes;  // by code and origin, the same
  metrics::Counter* channel_dropped = nullptr;  // made at the first drop (overflow: drop routes)

  // upgate_requests_total{route, code}: a short scan once the code was seen on this worker.
  metrics::Counter& requestsWith(int status, metrics::Registry& registry);
  // upgate_websocket_closes_total{route, code, by}, likewise.
  metrics::Counter& closesWith(FirstClose close, metrics::Registry& registry);
  // upgate_channel_dropped_total{route}.
  metrics::Counter& channelDropped(metrics::Registry& registry);
};

// Client connections open in the process, for limits.max_connections: shared by the workers,
// one atomic add per accepted connection and one subtract when it ends (never per message).
struct ConnectionCount {
  std::atomic<uint64_t> open{0};
};

class Worker {
 public:
  Worker(unsigned index, GenerationPtr generation, Hub& hub, ConnectionCount& connections,
         ListenFds fds);
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker();

  // Starts the thread; the future resolves to 0 once every listener accepts, or a UV error.
  std::future<int> start();
  void join();
  // Thread-safe: stop accepting, let sessions end until drain_timeout, then abort the rest.
  void requestDrain();
  // Thread-safe: a reload. New connections get `generation`; established sessions keep theirs.
  // `fds` is aligned with the new config's listeners (see ListenFds); running listeners it does
  // not reuse stop accepting (their sessions carry on).
  void reload(GenerationPtr generation, ListenFds fds);
  // Thread-safe: runs `task` on this worker's loop, in post order. False if the worker is
  // stopping and will not run it.
  bool post(std::function<void()> task);
  // Loop thread (POST /revoke): ends the sessions whose id is `id` (0: any) and whose plugin
  // identity is `user` ("": any) as Session::revoke does. Returns how many.
  size_t revoke(uint64_t id, const std::string& user, uint16_t code, const std::string& reason);

  // Loop-thread API for sessions.
  uv_loop_t* loop() { return &loop_; }
  // The generation new connections get (sessions keep the one they were accepted under).
  const GenerationPtr& generation() const { return generation_; }
  // Index of the endpoint to try first for `upstream` (per-worker round robin, by name, so it
  // carries on across reloads).
  size_t nextEndpoint(const UpstreamConfig& upstream);
  void removeSession(Session* s);
  unsigned index() const { return index_; }
  bool draining() const { return draining_; }
  Hub& hub() { return hub_; }
  HttpClient& httpClient() { return *http_client_; }
  // Counting (loop thread): series by family and labels, and a route's cached set.
  metrics::Registry& metrics() { return metrics_; }
  RouteMetrics& routeMetrics(const std::string& route);
  RouteMetrics& unroutedMetrics() { return unrouted_metrics_; }
  metrics::Counter& deliveries() { return deliveries_; }
  // Thread-safe: adds this worker's series into `out` (GET /metrics on the main thread).
  void collectMetrics(metrics::Snapshot& out) const { metrics_.collect(out); }
  UpstreamPool& upstreamPool() { return *upstream_pool_; }

  // Channels (loop thread). The worker keeps its own subscriber lists; the hub only counts.
  // `route` belongs to `generation`, which a poller started for the channel keeps.
  void addSubscriber(const std::string& channel, const Generation& generation,
                     const RouteConfig& route, const PollRequest& poll, ChannelSubscriber* s);
  void removeSubscriber(const std::string& channel, ChannelSubscriber* s);
  void deliverLocal(const std::string& channel, const MessagePtr& message);
  // Long-poll channels owned by this worker (posted by the hub).
  void acquirePoller(const std::string& channel, GenerationPtr generation, const RouteConfig& route,
                     const PollRequest& poll);
  void releasePoller(const std::string& channel);
  void forgetPoller(const std::string& channel);

 private:
  static void onAsync(uv_async_t* a) noexcept;
  static void onDrainTimer(uv_timer_t* t) noexcept;
  static void onSpreadTimer(uv_timer_t* t) noexcept;

  void run(std::promise<int> ready);
  void accept(Listener& listener, uv_stream_t* server);
  std::unique_ptr<Listener> openListener(const ListenerConfig& config, int fd, int& rc);
  void closeListener(std::unique_ptr<Listener> listener);
  metrics::Counter& acceptedCounter(const std::string& listener);
  void rejectOverCapacity(Listener& listener, Session& s, uint64_t cap);
  void applyGeneration(GenerationPtr generation, ListenFds& fds);
  void beginDrain();
  void drainDue();
  void maybeStop();

  const unsigned index_;
  GenerationPtr generation_;
  metrics::Registry metrics_;
  std::unordered_map<std::string, RouteMetrics> route_metrics_;  // by route name
  RouteMetrics unrouted_metrics_;
  std::unordered_map<const Listener*, metrics::Counter*> accepted_;  // by listener
  metrics::Counter& open_connections_;
  metrics::Counter& subscribers_gauge_;
  metrics::Counter& deliveries_;
  Hub& hub_;
  ConnectionCount& connections_;
  uint64_t last_reject_log_ms_ = 0;  // over max_connections: one warning a second at most
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
  size_t listeners_open_ = 0;  // including those a reload is closing

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
  std::unordered_map<std::string, size_t> round_robin_;  // upstream name -> next endpoint
};

}  // namespace upgate
