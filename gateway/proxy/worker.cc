#include "proxy/worker.h"

#include <unistd.h>

#include <algorithm>

#include "bridge/poller.h"
#include "bridge/subscription.h"
#include "core/handle.h"
#include "core/log.h"
#include "plugin/host.h"
#include "proxy/http_client.h"
#include "proxy/session.h"
#include "proxy/upstream_pool.h"

namespace upgate {
namespace {

// How often a spread drain tells the next share of sessions.
constexpr uint64_t kSpreadTick = 10;  // ms

}  // namespace

ListenFds::~ListenFds() {
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
}

Worker::Worker(unsigned index, GenerationPtr generation, Hub& hub, ConnectionCount& connections,
               ListenFds fds)
    : index_(index),
      generation_(std::move(generation)),
      // Made here, before the thread starts (which publishes them); then only the loop writes.
      open_connections_(metrics_.get(metrics::Family::ConnectionsOpen)),
      subscribers_gauge_(metrics_.get(metrics::Family::ChannelSubscribers)),
      deliveries_(metrics_.get(metrics::Family::ChannelDeliveries)),
      hub_(hub),
      connections_(connections),
      fds_(std::move(fds)) {}

Worker::~Worker() {
  join();
}

std::future<int> Worker::start() {
  std::promise<int> ready;
  std::future<int> f = ready.get_future();
  thread_ = std::thread([this, p = std::move(ready)]() mutable { run(std::move(p)); });
  return f;
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::run(std::promise<int> ready) {
  loop_ctx_ = std::make_unique<LoopContext>();
  uv_loop_init(&loop_);
  loop_.data = loop_ctx_.get();
  uv_async_init(&loop_, &async_, onAsync);
  async_.data = this;
  uv_timer_init(&loop_, &drain_timer_);
  uv_timer_init(&loop_, &spread_timer_);
  drain_timer_.data = spread_timer_.data = this;
  http_client_ = std::make_unique<HttpClient>(&loop_);
  upstream_pool_ = std::make_unique<UpstreamPool>(&loop_);
  http_client_open_ = true;

  int rc = 0;
  const auto& listeners = generation_->config->listeners;
  for (size_t i = 0; i < listeners.size(); ++i) {
    int r = 0;
    listeners_.push_back(openListener(listeners[i], fds_.take(i), r));
    if (r != 0 && rc == 0) rc = r;
  }
  ready.set_value(rc);
  if (rc != 0) beginDrain();

  uv_run(&loop_, UV_RUN_DEFAULT);
  // Every handle should be closed by now; make sure, then close the loop (libuv test/task.h).
  uv_walk(
      &loop_,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop_) != 0)
    UPGATE_LOG(err, 0, "worker {}: loop closed with live handles", index_);
}

bool Worker::post(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(inbox_mutex_);
  if (inbox_closed_) return false;  // stopping: nothing will run it
  inbox_.push_back(std::move(task));
  uv_async_send(&async_);
  return true;
}

size_t Worker::revoke(uint64_t id, const std::string& user, uint16_t code,
                      const std::string& reason) {
  // Closing starts the session's close handshake; it leaves the list later (handles close
  // asynchronously), so walking on is safe.
  size_t n = 0;
  for (Session* s = sessions_; s != nullptr;) {
    Session* next = s->next;
    n += s->revoke(id, user, code, reason);
    s = next;
  }
  return n;
}

void Worker::onAsync(uv_async_t* a) noexcept {
  auto* self = ownerOf<Worker>(a);
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(self->inbox_mutex_);
    tasks.swap(self->inbox_);
  }
  for (auto& t : tasks) t();
}

void Worker::requestDrain() {
  post([this] { beginDrain(); });
}

std::unique_ptr<Listener> Worker::openListener(const ListenerConfig& config, int fd, int& rc) {
  auto l = std::make_unique<Listener>(
      config, [this](Listener& listener, uv_stream_t* server) { accept(listener, server); });
  rc = l->open(&loop_, fd, config.backlog);
  ++listeners_open_;  // open or not, close() reports back once
  accepted_[l.get()] = &acceptedCounter(config.name);
  return l;
}

metrics::Counter& Worker::acceptedCounter(const std::string& listener) {
  return metrics_.get(metrics::Family::ConnectionsAccepted,
                      metrics::labels({{"listener", listener}}));
}

void Worker::closeListener(std::unique_ptr<Listener> listener) {
  accepted_.erase(listener.get());
  Listener* l = listener.release();
  l->close([this, l] {
    delete l;
    --listeners_open_;
    maybeStop();
  });
}

void Worker::accept(Listener& listener, uv_stream_t* server) {
  // Ids are unique per process: the worker index in the low bits, a counter above.
  uint64_t id = (++next_id_ << 8) | (index_ & 0xff);
  size_t index = static_cast<size_t>(&listener.config() - generation_->config->listeners.data());
  auto* s =
      new Session(*this, generation_, listener.config(), id, generation_->tls->listeners[index]);
  if (s->clientTcp().init(&loop_, nullptr) != 0) {
    delete s;  // no handle was made: nothing to close
    return;
  }
  s->next = sessions_;
  if (sessions_) sessions_->prev = s;
  sessions_ = s;
  ++session_count_;
  open_connections_.add();
  accepted_[&listener]->add();
  if (uv_accept(server, asStream(s->clientTcp().handle())) != 0) {
    s->abort("accept failed");  // frees itself once the fresh handle is closed
    return;
  }
  s->start();
  // Every session holds a place in the count from here until removeSession; one over the cap
  // gives it back at once and is turned away.
  const uint64_t cap = generation_->config->limits.max_connections;
  s->counted = true;
  if (connections_.open.fetch_add(1, std::memory_order_relaxed) >= cap && cap != 0) {
    connections_.open.fetch_sub(1, std::memory_order_relaxed);
    s->counted = false;
    rejectOverCapacity(listener, *s, cap);
  }
}

void Worker::rejectOverCapacity(Listener& listener, Session& s, uint64_t cap) {
  metrics_
      .get(metrics::Family::ConnectionsRejected,
           metrics::labels({{"listener", listener.config().name}}))
      .add();
  const uint64_t now = uv_now(&loop_);
  if (last_reject_log_ms_ == 0 || now - last_reject_log_ms_ >= 1000) {
    last_reject_log_ms_ = now;
    UPGATE_LOG(warn, s.id(), "limits.max_connections ({}) reached: turning connections away", cap);
  }
  s.rejectOverCapacity();
}

void Worker::reload(GenerationPtr generation, ListenFds fds) {
  // std::function needs a copyable task: the fds travel behind a shared_ptr.
  auto shared = std::make_shared<ListenFds>(std::move(fds));
  post([this, g = std::move(generation), shared]() mutable {
    applyGeneration(std::move(g), *shared);
  });
}

// On the loop. A kept listener is re-pointed at its new config entry (accept() finds the TLS
// context by that entry's index), a new one adopts its fd, and one the plan does not reuse
// stops accepting; its open sessions carry on.
void Worker::applyGeneration(GenerationPtr generation, ListenFds& fds) {
  if (draining_) return;  // the fds close with `fds`
  const auto& configs = generation->config->listeners;
  std::vector<std::unique_ptr<Listener>> next;
  for (size_t i = 0; i < configs.size(); ++i) {
    std::unique_ptr<Listener> l;
    if (fds.fds[i] < 0) {
      for (auto& old : listeners_) {
        if (old && old->config().name == fds.reuse[i]) {
          l = std::move(old);
          break;
        }
      }
      if (!l) {
        UPGATE_LOG(err, 0, "worker {}: reload reuses listener {}, which this worker does not have",
                   index_, fds.reuse[i]);
        continue;
      }
      const ListenerConfig& before = l->config();
      if (before.backlog != configs[i].backlog ||
          before.tls.has_value() != configs[i].tls.has_value())
        l->reconfigure(configs[i].backlog, /*delay_first_ack=*/!configs[i].tls);
      l->rebind(configs[i]);
      accepted_[l.get()] = &acceptedCounter(configs[i].name);
    } else {
      int rc = 0;
      l = openListener(configs[i], fds.take(i), rc);
      if (rc != 0) {
        UPGATE_LOG(err, 0, "worker {}: listener {}: cannot accept: {}", index_, configs[i].name,
                   uv_strerror(rc));
      }
    }
    next.push_back(std::move(l));
  }
  for (auto& old : listeners_) {
    if (old) closeListener(std::move(old));
  }
  listeners_ = std::move(next);
  generation_ = std::move(generation);
  for (auto& [channel, p] : pollers_) p->follow(generation_);
}

void Worker::addSubscriber(const std::string& channel, const Generation& generation,
                           const RouteConfig& route, const PollRequest& poll,
                           ChannelSubscriber* s) {
  subscribers_[channel].push_back(s);
  subscribers_gauge_.add();
  hub_.subscribed(index_, channel, generation, route, poll);
}

void Worker::removeSubscriber(const std::string& channel, ChannelSubscriber* s) {
  auto it = subscribers_.find(channel);
  if (it == subscribers_.end()) return;
  auto& list = it->second;
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] != s) continue;
    list[i] = list.back();  // order among subscribers does not matter; messages keep theirs
    list.pop_back();
    subscribers_gauge_.sub();
    if (list.empty()) subscribers_.erase(it);
    hub_.unsubscribed(index_, channel);
    return;
  }
}

void Worker::deliverLocal(const std::string& channel, const MessagePtr& message) {
  auto it = subscribers_.find(channel);
  if (it == subscribers_.end()) return;
  // A delivery may close a subscriber (queue overflow), which unsubscribes it from this very
  // list: iterate over a copy of the pointers.
  std::vector<ChannelSubscriber*> targets = it->second;
  Delivery d(*message);
  for (ChannelSubscriber* s : targets) s->deliver(d);
}

void Worker::acquirePoller(const std::string& channel, GenerationPtr generation,
                           const RouteConfig& route, const PollRequest& poll) {
  if (stopping_ || draining_) return;
  auto it = pollers_.find(channel);
  if (it != pollers_.end()) {
    it->second->keep();  // back within the grace period
    return;
  }
  auto* p = new Poller(*this, channel, std::move(generation), route, poll);
  pollers_[channel] = p;
  p->follow(generation_);  // a subscriber from before this worker's last reload
  p->start();
}

void Worker::releasePoller(const std::string& channel) {
  auto it = pollers_.find(channel);
  if (it != pollers_.end()) it->second->releaseAfterGrace();
}

void Worker::forgetPoller(const std::string& channel) {
  auto it = pollers_.find(channel);
  if (it == pollers_.end()) return;
  Poller* p = it->second;
  pollers_.erase(it);
  p->destroy();
}

void Worker::removeSession(Session* s) {
  if (drain_next_ == s) drain_next_ = s->next;
  if (s->prev) s->prev->next = s->next;
  if (s->next) s->next->prev = s->prev;
  if (sessions_ == s) sessions_ = s->next;
  --session_count_;
  open_connections_.sub();
  if (s->counted) connections_.open.fetch_sub(1, std::memory_order_relaxed);
  maybeStop();
}

namespace {

// A short scan of the series seen on this worker; `lookup` makes a new one on first use.
template <typename Key, typename Lookup>
metrics::Counter& cachedSeries(std::vector<std::pair<Key, metrics::Counter*>>& cache, Key key,
                               Lookup lookup) {
  for (auto& [k, counter] : cache) {
    if (k == key) return *counter;
  }
  metrics::Counter& c = lookup();
  cache.emplace_back(key, &c);
  return c;
}

}  // namespace

metrics::Counter& RouteMetrics::requestsWith(int status, metrics::Registry& registry) {
  return cachedSeries(requests, status, [&]() -> metrics::Counter& {
    return registry.get(metrics::Family::Requests,
                        metrics::labels({{"route", route}, {"code", std::to_string(status)}}));
  });
}

metrics::Counter& RouteMetrics::channelDropped(metrics::Registry& registry) {
  if (channel_dropped == nullptr) {
    channel_dropped =
        &registry.get(metrics::Family::ChannelDropped, metrics::labels({{"route", route}}));
  }
  return *channel_dropped;
}

metrics::Counter& RouteMetrics::closesWith(FirstClose close, metrics::Registry& registry) {
  const uint32_t key = static_cast<uint32_t>(close.code) << 8 | static_cast<uint8_t>(close.by);
  return cachedSeries(closes, key, [&]() -> metrics::Counter& {
    return registry.get(metrics::Family::WebSocketCloses,
                        metrics::labels({{"route", route},
                                         {"code", std::to_string(close.code)},
                                         {"by", closeOriginName(close.by)}}));
  });
}

RouteMetrics& Worker::routeMetrics(const std::string& route) {
  auto [it, added] = route_metrics_.try_emplace(route);
  if (added) {
    using metrics::Family;
    auto get = [this, &route](Family f, std::string_view name, std::string_view value) {
      return &metrics_.get(f, metrics::labels({{"route", route}, {name, value}}));
    };
    RouteMetrics& m = it->second;
    m.route = route;
    m.bytes_up = get(Family::Bytes, "direction", "up");
    m.bytes_down = get(Family::Bytes, "direction", "down");
    m.messages.up = get(Family::Messages, "direction", "up");
    m.messages.down = get(Family::Messages, "direction", "down");
    m.client_pauses = get(Family::ReadPauses, "side", "client");
    m.upstream_pauses = get(Family::ReadPauses, "side", "upstream");
  }
  return it->second;
}

size_t Worker::nextEndpoint(const UpstreamConfig& upstream) {
  size_t& rr = round_robin_[upstream.name];
  return rr++ % upstream.endpoints.size();
}

void Worker::beginDrain() {
  if (draining_) return;
  draining_ = true;
  for (auto& l : listeners_) {
    l->close([this] {
      --listeners_open_;
      maybeStop();
    });
  }
  uv_timer_start(&drain_timer_, onDrainTimer,
                 static_cast<uint64_t>(generation_->config->drain_timeout.count()), 0);
  // Sessions are told in list order, evenly over the window: the share due is proportional to
  // the time gone, checked every tick, so a burst of reconnects is spread the same way.
  drain_next_ = sessions_;
  drain_total_ = session_count_;
  drain_start_ = uv_now(&loop_);
  drain_window_ = static_cast<uint64_t>(
      std::min(generation_->config->drain_spread, generation_->config->drain_timeout / 2).count());
  drainDue();
  if (drain_next_ != nullptr)
    uv_timer_start(&spread_timer_, onSpreadTimer, kSpreadTick, kSpreadTick);
  maybeStop();
}

void Worker::drainDue() {
  const uint64_t gone = uv_now(&loop_) - drain_start_;
  const size_t due = gone >= drain_window_
                         ? drain_total_
                         : static_cast<size_t>(static_cast<double>(drain_total_) *
                                               static_cast<double>(gone + kSpreadTick) /
                                               static_cast<double>(drain_window_));
  while (drain_next_ != nullptr && drain_told_ < due) {
    Session* s = drain_next_;
    drain_next_ = s->next;  // before drain(), which may end s
    ++drain_told_;
    s->drain();
  }
  if (drain_next_ == nullptr || drain_told_ >= drain_total_) {
    drain_next_ = nullptr;
    uv_timer_stop(&spread_timer_);
  }
}

void Worker::onSpreadTimer(uv_timer_t* t) noexcept {
  ownerOf<Worker>(t)->drainDue();
}

void Worker::onDrainTimer(uv_timer_t* t) noexcept {
  auto* self = ownerOf<Worker>(t);
  UPGATE_LOG(info, 0, "worker {}: drain timeout, closing {} sessions", self->index_,
             self->session_count_);
  for (Session* s = self->sessions_; s != nullptr; s = s->next) s->abort("drain timeout");
}

void Worker::maybeStop() {
  if (!draining_ || stopping_ || session_count_ != 0 || listeners_open_ != 0) return;
  stopping_ = true;
  for (auto& [channel, p] : pollers_) p->destroy();
  pollers_.clear();
  uv_close(asHandle(&drain_timer_), nullptr);
  uv_close(asHandle(&spread_timer_), nullptr);
  // Pooled connections close asynchronously; the inbox goes last, once they all have.
  upstream_pool_->close([this] {
    http_client_->close([this] {
      {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        inbox_closed_ = true;
      }
      uv_close(asHandle(&async_), nullptr);
    });
  });
}

}  // namespace upgate
