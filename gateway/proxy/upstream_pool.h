#pragma once
// Upstream connections for streamed HTTP exchanges (proxy/http_exchange), one pool per worker
// loop. Unlike HttpClient, which buffers whole responses for the gateway's own requests, the pool
// only makes, lends and keeps connections: whoever leases one reads and writes its Stream
// directly, so bodies stream both ways with the watermark contract (style §2.5).
//
//   connect()     a new connection to one endpoint (resolve on the threadpool for host names,
//                 uv_tcp_connect, TLS client setup); upstreamConnected() follows from the loop.
//   acquireIdle() the most recently released idle connection to the same endpoint and TLS
//                 settings, or null.
//   release()     the user is done: a reusable connection goes idle (reads stay on, so a server
//                 close or stray bytes close it; an idle timer closes it; at most
//                 max_idle_per_endpoint per endpoint, the oldest closed first), anything else is
//                 closed.
//   close(done)   at worker shutdown: idle connections close, released ones are closed from then
//                 on; `done` runs once every connection's handles have closed.
//
// Lifetime (style §2.4): each UpstreamConn is its own heap object owning a uv_tcp_t (behind a
// TcpStream, optionally wrapped by a TlsStream), a uv_timer_t and, while a host name is being
// resolved, a uv_getaddrinfo_t; it deletes itself only once all of them have called back. A user
// therefore never frees a connection: it calls release() exactly once per connection it got, at
// any time (from inside the connection's own upcalls too), and receives no upcall afterwards.
// The pool must outlive its connections' users; ~UpstreamPool asserts close() has completed.
//
// Loop thread only; nothing here throws except std::bad_alloc (OOM aborts, style §2.6).

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "config/config.h"
#include "net/tcp_stream.h"
#include "tls/tls_context.h"
#include "tls/tls_stream.h"

namespace upgate {

class UpstreamPool;

// Upcalls from a leased connection to its user, on the loop thread. After any of them the user
// may have released the connection; the connection touches nothing of the user's afterwards.
class UpstreamUser {
 public:
  virtual ~UpstreamUser() = default;
  // The TCP connect finished: 0, or a negative UV code (UV_ETIMEDOUT when the connect timeout,
  // name resolution included, ran out; UV_EAI_* when the name did not resolve). Over TLS the
  // handshake runs afterwards, with writes queued meanwhile; its failure is an upstreamError().
  virtual void upstreamConnected(int status) = 0;
  // Bytes read; borrowed for the call only (the loop's shared buffer).
  virtual void upstreamData(const char* data, size_t len) = 0;
  virtual void upstreamEof() = 0;
  virtual void upstreamError(int uv_err) = 0;
  // The connection's pending bytes fell from above its high mark to half of it.
  virtual void upstreamDrain() = 0;
  // The timer started with UpstreamConn::startTimer() expired.
  virtual void upstreamTimer() = 0;
};

// Where to connect: one endpoint plus the TLS settings. Connections are shared only between
// targets with the same key().
struct UpstreamTarget {
  HostPort endpoint;
  std::shared_ptr<const TlsContext> tls;  // client context; null = plain TCP
  std::string server_name;                // SNI and verified name; empty = endpoint.host
  Millis connect_timeout{5000};           // resolve + TCP connect

  // "host:port" plus, for TLS, the context's identity and the server name. A TlsContext pointer
  // is a safe identity: every connection made with it keeps a reference.
  std::string key() const;
};

// One upstream connection. Created and owned by the pool; see the header comment for lifetime.
class UpstreamConn final : private StreamListener {
 public:
  UpstreamConn(const UpstreamConn&) = delete;
  UpstreamConn& operator=(const UpstreamConn&) = delete;

  // The outermost stream (TLS when the target has TLS). Valid while leased.
  Stream& stream() { return *stream_; }
  const std::string& key() const { return key_; }
  const HostPort& endpoint() const { return target_.endpoint; }
  // True when the connection carried an earlier exchange (it came from the idle pool).
  bool reused() const { return leases_ > 1; }
  // Bytes queued on the TCP socket itself (under TLS: without TlsStream's pre-handshake buffer).
  // Only a queue above the high mark here is sure to end in an upstreamDrain().
  size_t socketPendingBytes() const { return tcp_.pendingBytes(); }
  // OpenSSL's reason for the last TLS failure, or empty.
  std::string errorDetail() const;

  // One-shot timer for the user (response deadline); a new start replaces the old one.
  void startTimer(uint64_t ms);
  void stopTimer();
  uint64_t now() const { return uv_now(loop_); }

 private:
  friend class UpstreamPool;
  enum class State { Resolving, Connecting, Leased, Idle, Closing };

  UpstreamConn(UpstreamPool& pool, uv_loop_t* loop, UpstreamTarget target, std::string key);
  ~UpstreamConn() override;

  int start(UpstreamUser* user);  // init handles and begin resolve/connect; 0 or a UV code
  int connectTo(const sockaddr* addr);
  void connectDone(int status);
  void resolved(int status, addrinfo* res);
  void timerFired();
  void reportConnect(int status);
  void close();
  void handleGone();  // one handle or request called back for the last time

  // StreamListener: upcalls from the (TLS or TCP) stream.
  void onData(const char* data, size_t len) override;
  void onEof() override;
  void onError(int uv_err) override;
  void onDrain() override;
  void onClosed() override;

  static void onTimer(uv_timer_t* t) noexcept;
  static void onTimerClosed(uv_handle_t* h) noexcept;
  static void onConnect(uv_connect_t* req, int status) noexcept;
  static void onResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept;

  UpstreamPool& pool_;
  uv_loop_t* loop_;
  const UpstreamTarget target_;
  const std::string key_;
  State state_ = State::Connecting;
  UpstreamUser* user_ = nullptr;  // set while Resolving, Connecting and Leased
  TcpStream tcp_;
  std::unique_ptr<TlsStream> tls_;
  Stream* stream_ = &tcp_;
  uv_timer_t timer_{};
  uv_connect_t connect_req_{};
  uv_getaddrinfo_t resolve_req_{};
  int pending_ = 0;  // handles and requests that still owe us a callback
  uint64_t leases_ = 0;
  bool resolve_pending_ = false;   // uv_getaddrinfo submitted, callback not yet run
  bool timer_is_connect_ = false;  // the running timer is the connect deadline (not the user's)
  bool connect_reported_ = false;
};

class UpstreamPool {
 public:
  struct Options {
    size_t max_idle_per_endpoint = 32;  // more idle connections close the oldest; 0 = no reuse
    Millis idle_timeout{30000};         // an idle connection is closed after this
  };

  // The loop must carry a LoopContext in loop->data and outlive the pool.
  explicit UpstreamPool(uv_loop_t* loop);
  UpstreamPool(uv_loop_t* loop, Options options);
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;
  // close() must have run its `done` (or no connection was ever made); asserted.
  ~UpstreamPool();

  // An idle connection for `target`, now leased to `user`, or null. Its reads are on.
  UpstreamConn* acquireIdle(const UpstreamTarget& target, UpstreamUser* user);
  // A new connection leased to `user`; upstreamConnected() follows from the loop, never inside
  // this call. Null (and *error set) when it could not even start; nothing to release then.
  UpstreamConn* connect(const UpstreamTarget& target, UpstreamUser* user, int* error);
  // The user is done with `conn` (leased from this pool): idle when `reusable` and the pool has
  // room, else closed. No upcall reaches the user afterwards. Must be called exactly once.
  void release(UpstreamConn* conn, bool reusable);

  // Closes idle connections now and every released one from then on; `done` runs once no
  // connection is left (at once if none is). Connections still leased close when released.
  void close(std::function<void()> done);
  bool isClosing() const { return closing_; }

  uv_loop_t* loop() const { return loop_; }
  const Options& options() const { return options_; }
  size_t idleConnections() const { return idle_count_; }
  size_t liveConnections() const { return live_.size(); }
  uint64_t connectionsOpened() const { return opened_; }

 private:
  friend class UpstreamConn;

  void removeIdle(UpstreamConn* conn);
  void idleEnded(UpstreamConn* conn);  // the idle connection saw EOF, data, an error or expiry
  void forget(UpstreamConn* conn);     // from the connection's last callback, just before delete
  void maybeFinishClose();

  uv_loop_t* loop_;
  const Options options_;
  std::unordered_set<UpstreamConn*> live_;
  std::unordered_map<std::string, std::vector<UpstreamConn*>> idle_;  // key -> oldest first
  size_t idle_count_ = 0;
  uint64_t opened_ = 0;
  bool closing_ = false;
  std::function<void()> on_closed_;
};

}  // namespace upgate
