#include "proxy/upstream_pool.h"

#include <netdb.h>

#include <cassert>
#include <utility>

#include "core/handle.h"

namespace upgate {

std::string UpstreamTarget::key() const {
  std::string k = endpoint.text();
  if (tls) {
    k += "|tls|" + std::to_string(reinterpret_cast<uintptr_t>(tls.get())) + "|" + server_name;
  }
  return k;
}

// ---- UpstreamConn -----------------------------------------------------------------------------

UpstreamConn::UpstreamConn(UpstreamPool& pool, uv_loop_t* loop, UpstreamTarget target,
                           std::string key)
    : pool_(pool), loop_(loop), target_(std::move(target)), key_(std::move(key)) {}

UpstreamConn::~UpstreamConn() {
  assert(pending_ == 0);
}

std::string UpstreamConn::errorDetail() const {
  return tls_ ? tls_->errorDetail() : std::string();
}

int UpstreamConn::start(UpstreamUser* user) {
  user_ = user;
  leases_ = 1;
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  ++pending_;
  int rc = tcp_.init(loop_, this);
  if (rc != 0) return rc;
  ++pending_;
  if (target_.tls) {
    StreamListener* self = this;  // a private base: convert here, not inside make_unique
    tls_ = std::make_unique<TlsStream>(tcp_, target_.tls, self);
    stream_ = tls_.get();
    if ((rc = tls_->init()) != 0) return rc;
  }
  timer_is_connect_ = true;
  uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(target_.connect_timeout.count()), 0);

  const HostPort& ep = target_.endpoint;
  sockaddr_storage addr{};
  if (uv_ip4_addr(ep.host.c_str(), ep.port, reinterpret_cast<sockaddr_in*>(&addr)) == 0 ||
      uv_ip6_addr(ep.host.c_str(), ep.port, reinterpret_cast<sockaddr_in6*>(&addr)) == 0) {
    return connectTo(reinterpret_cast<const sockaddr*>(&addr));
  }
  // A host name: resolved on the threadpool, never on the loop.
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  resolve_req_.data = this;
  const std::string port = std::to_string(ep.port);
  rc = uv_getaddrinfo(loop_, &resolve_req_, onResolved, ep.host.c_str(), port.c_str(), &hints);
  if (rc != 0) return rc;
  ++pending_;
  resolve_pending_ = true;
  state_ = State::Resolving;
  return 0;
}

int UpstreamConn::connectTo(const sockaddr* addr) {
  state_ = State::Connecting;
  connect_req_.data = this;
  return uv_tcp_connect(&connect_req_, tcp_.handle(), addr, onConnect);
}

void UpstreamConn::onResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept {
  static_cast<UpstreamConn*>(req->data)->resolved(status, res);
}

void UpstreamConn::resolved(int status, addrinfo* res) {
  resolve_pending_ = false;
  if (state_ == State::Resolving && !connect_reported_) {
    int rc = status;
    if (rc == 0 && res == nullptr) rc = UV_EAI_NONAME;
    if (rc == 0) rc = connectTo(res->ai_addr);  // the first address, as Session does
    if (rc != 0) reportConnect(rc);
  }
  if (res != nullptr) uv_freeaddrinfo(res);
  handleGone();  // last: may delete this
}

void UpstreamConn::onConnect(uv_connect_t* req, int status) noexcept {
  static_cast<UpstreamConn*>(req->data)->connectDone(status);
}

void UpstreamConn::connectDone(int status) {
  // UV_ECANCELED: we closed the handle; libuv runs this before the close callback.
  if (state_ != State::Connecting || connect_reported_) return;
  stopTimer();
  if (status != 0) {
    reportConnect(status);
    return;
  }
  uv_tcp_nodelay(tcp_.handle(), 1);
  int rc = stream_->readStart();
  if (rc == 0 && tls_) {
    rc = tls_->connect(target_.server_name.empty() ? target_.endpoint.host : target_.server_name);
  }
  // A TLS failure inside connect() was already reported through onError.
  if (!connect_reported_) reportConnect(rc);
}

void UpstreamConn::reportConnect(int status) {
  connect_reported_ = true;
  if (status == 0) state_ = State::Leased;
  if (user_ != nullptr) user_->upstreamConnected(status);
}

void UpstreamConn::startTimer(uint64_t ms) {
  if (state_ == State::Closing) return;
  timer_is_connect_ = false;
  uv_timer_start(&timer_, onTimer, ms, 0);
}

void UpstreamConn::stopTimer() {
  if (state_ == State::Closing) return;
  timer_is_connect_ = false;
  uv_timer_stop(&timer_);
}

void UpstreamConn::onTimer(uv_timer_t* t) noexcept {
  ownerOf<UpstreamConn>(t)->timerFired();
}

void UpstreamConn::timerFired() {
  switch (state_) {
    case State::Resolving:
    case State::Connecting:
      if (timer_is_connect_ && !connect_reported_) {
        timer_is_connect_ = false;
        reportConnect(UV_ETIMEDOUT);  // the user releases us: close() cancels a lookup
      }
      return;
    case State::Leased:
      if (user_ != nullptr) user_->upstreamTimer();
      return;
    case State::Idle:
      pool_.idleEnded(this);
      return;
    case State::Closing:
      return;
  }
}

void UpstreamConn::onData(const char* data, size_t len) {
  if (state_ == State::Leased && user_ != nullptr) {
    user_->upstreamData(data, len);
  } else if (state_ == State::Idle) {
    pool_.idleEnded(this);  // nothing was asked: a late or broken answer; never trust it again
  }
}

void UpstreamConn::onEof() {
  if (state_ == State::Leased && user_ != nullptr) {
    user_->upstreamEof();
  } else if (state_ == State::Idle) {
    pool_.idleEnded(this);  // the server ended an idle keep-alive connection
  }
}

void UpstreamConn::onError(int uv_err) {
  if ((state_ == State::Resolving || state_ == State::Connecting) && !connect_reported_) {
    reportConnect(uv_err);  // a TLS failure while starting the handshake
  } else if (state_ == State::Leased && user_ != nullptr) {
    user_->upstreamError(uv_err);
  } else if (state_ == State::Idle) {
    pool_.idleEnded(this);
  }
}

void UpstreamConn::onDrain() {
  if (state_ == State::Leased && user_ != nullptr) user_->upstreamDrain();
}

void UpstreamConn::close() {
  if (state_ == State::Closing) return;
  state_ = State::Closing;
  user_ = nullptr;
  uv_timer_stop(&timer_);
  if (!uv_is_closing(asHandle(&timer_))) uv_close(asHandle(&timer_), onTimerClosed);
  stream_->close();  // a no-op if the TCP handle was never initialized
  // A lookup already running cannot be cancelled (UV_EBUSY): its callback is awaited either way.
  if (resolve_pending_) uv_cancel(reinterpret_cast<uv_req_t*>(&resolve_req_));
}

void UpstreamConn::onTimerClosed(uv_handle_t* h) noexcept {
  ownerOf<UpstreamConn>(h)->handleGone();
}

void UpstreamConn::onClosed() {
  handleGone();
}

void UpstreamConn::handleGone() {
  --pending_;
  if (pending_ > 0 || state_ != State::Closing) return;
  UpstreamPool& pool = pool_;
  pool.forget(this);
  delete this;  // the stream that called us touches nothing after this upcall
  pool.maybeFinishClose();
}

// ---- UpstreamPool -----------------------------------------------------------------------------

UpstreamPool::UpstreamPool(uv_loop_t* loop) : UpstreamPool(loop, Options()) {}

UpstreamPool::UpstreamPool(uv_loop_t* loop, Options options)
    : loop_(loop), options_(std::move(options)) {}

UpstreamPool::~UpstreamPool() {
  assert(live_.empty());
}

UpstreamConn* UpstreamPool::acquireIdle(const UpstreamTarget& target, UpstreamUser* user) {
  if (closing_) return nullptr;
  auto it = idle_.find(target.key());
  if (it == idle_.end()) return nullptr;
  UpstreamConn* conn = it->second.back();  // the most recently used: the least likely stale
  removeIdle(conn);
  conn->stopTimer();
  conn->state_ = UpstreamConn::State::Leased;
  conn->user_ = user;
  ++conn->leases_;
  return conn;
}

UpstreamConn* UpstreamPool::connect(const UpstreamTarget& target, UpstreamUser* user, int* error) {
  if (closing_) {
    *error = UV_ECANCELED;
    return nullptr;
  }
  auto* conn = new UpstreamConn(*this, loop_, target, target.key());
  live_.insert(conn);
  ++opened_;
  int rc = conn->start(user);
  if (rc != 0) {
    *error = rc;
    conn->close();  // frees itself once its handles are closed
    return nullptr;
  }
  return conn;
}

void UpstreamPool::release(UpstreamConn* conn, bool reusable) {
  conn->user_ = nullptr;
  if (!reusable || closing_ || options_.max_idle_per_endpoint == 0 ||
      conn->state_ != UpstreamConn::State::Leased || !conn->stream_->isOpen()) {
    conn->close();
    return;
  }
  conn->stopTimer();
  // Reads stay on while idle: a FIN, an error or stray bytes close the connection at once.
  if (conn->stream_->readStart() != 0) {
    conn->close();
    return;
  }
  std::vector<UpstreamConn*>& list = idle_[conn->key_];
  if (list.size() >= options_.max_idle_per_endpoint) {
    UpstreamConn* oldest = list.front();
    removeIdle(oldest);  // may erase the map entry: take the list again below
    oldest->close();
  }
  conn->state_ = UpstreamConn::State::Idle;
  idle_[conn->key_].push_back(conn);
  ++idle_count_;
  conn->startTimer(static_cast<uint64_t>(options_.idle_timeout.count()));
}

void UpstreamPool::removeIdle(UpstreamConn* conn) {
  if (conn->state_ != UpstreamConn::State::Idle) return;
  auto it = idle_.find(conn->key_);
  assert(it != idle_.end());
  std::vector<UpstreamConn*>& list = it->second;
  for (auto pos = list.begin(); pos != list.end(); ++pos) {
    if (*pos == conn) {
      list.erase(pos);
      break;
    }
  }
  if (list.empty()) idle_.erase(it);
  --idle_count_;
  conn->state_ = UpstreamConn::State::Leased;  // the caller decides what comes next
}

void UpstreamPool::idleEnded(UpstreamConn* conn) {
  removeIdle(conn);
  conn->close();
}

void UpstreamPool::forget(UpstreamConn* conn) {
  live_.erase(conn);
}

void UpstreamPool::maybeFinishClose() {
  if (!closing_ || !live_.empty() || !on_closed_) return;
  std::function<void()> done = std::move(on_closed_);
  on_closed_ = nullptr;
  done();  // may destroy the pool: touch nothing after
}

void UpstreamPool::close(std::function<void()> done) {
  closing_ = true;
  on_closed_ = std::move(done);
  while (!idle_.empty()) idleEnded(idle_.begin()->second.front());
  maybeFinishClose();
}

}  // namespace upgate
