#pragma once
// An asynchronous HTTP/1.1 client on one worker's libuv loop, for the gateway's own requests to
// the legacy app: the long-poll bridge's GETs (held open for up to a minute), POSTs of client
// messages and plugin callouts. One HttpClient per worker loop; everything runs on that loop's
// thread and nothing here is thread-safe.
//
//   send()  -> the request starts on the next loop iteration: an idle keep-alive connection to
//              the same endpoint (and TLS settings) is reused, else the host is resolved with
//              uv_getaddrinfo (threadpool; IP literals skip it), each address is tried in turn,
//              TLS (if any) is set up, the request is written and the whole response is read
//              (ResponseParser: Content-Length, chunked or until EOF; 1xx interim answers are
//              skipped) -> the callback runs once, on the loop thread.
//   cancel() / close() -> the callback never runs; the connection in use is closed.
//
// Connections are reused only after a complete HTTP/1.1 response without `Connection: close`
// (and a request without it); at most Options::max_idle_per_endpoint stay idle per endpoint, each
// for Options::idle_timeout. A reused connection that fails before the first response byte (the
// server closed it while idle, RFC 7230 §6.3.1) is retried once on a new connection for GET and
// HEAD. Requests are not pipelined; there is no limit on concurrent connections per endpoint.
//
// Lifetime (style §2.4): the client owns two handles (a deadline timer and an idle handle that
// starts deferred work) and every connection's uv_tcp_t; all are freed in their close callbacks.
// close() must have run its `done` before the HttpClient is destroyed. Nothing throws out of
// this class except std::bad_alloc from send() (OOM aborts, style §2.6); a callback that throws
// is caught and logged.

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "http/headers.h"
#include "tls/tls_context.h"

namespace upgate {

struct HttpRequest {
  std::string method = "GET";  // an RFC 7230 token, sent as given
  // Host and port to connect to. The host may be a name (resolved on the threadpool, never
  // blocking the loop) or an IPv4/IPv6 literal (IPv6 without brackets).
  HostPort endpoint;
  std::shared_ptr<const TlsContext> tls;  // client-side context; null = plain http
  std::string tls_server_name;            // SNI and the verified name; empty = endpoint.host
  std::string target;                     // origin-form, e.g. "/poll?cursor=3"
  // Sent in order. Host is added if absent. Content-Length and Transfer-Encoding are replaced by
  // a Content-Length computed from `body` (sent when the body is non-empty or the method is
  // POST, PUT or PATCH). Names must be tokens and values must not contain CR, LF or NUL.
  HeaderList headers;
  std::string body;
  Millis timeout{30000};  // the whole exchange: resolve + connect + TLS + send + full response
  size_t max_response_bytes = 1 << 20;  // decoded body limit; more is an error
};

struct HttpResponse {
  int status = 0;
  HeaderList headers;  // wire order, as ResponseParser trims them
  std::string body;    // decoded (chunked framing removed)
};

// `error` is empty on success (any status code is a success), else a short reason:
// "connect: ECONNREFUSED", "resolve: EAI_NONAME", "timeout after 30000 ms",
// "malformed response: ...", "response body exceeds N bytes", "TLS handshake failed: ...",
// "connection: ECONNRESET", "server closed before the response was complete",
// "invalid request: ...". On error `response` is empty. The callee may move from `response`.
using HttpCallback = std::function<void(const std::string& error, HttpResponse& response)>;

class HttpClient {
 public:
  struct Options {
    Millis idle_timeout{30000};         // an idle keep-alive connection is closed after this
    size_t max_idle_per_endpoint = 8;   // more idle connections close the oldest; 0 = no reuse
    size_t max_head_bytes = 64 * 1024;  // status line + headers (interim responses included)
  };

  // The loop must carry a LoopContext in loop->data (net/tcp_stream.h) and outlive the client.
  // Initializes the client's two handles (inactive: they keep no loop alive until used).
  explicit HttpClient(uv_loop_t* loop);
  HttpClient(uv_loop_t* loop, Options options);
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;
  // close() must have completed (its `done` ran) first; asserted.
  ~HttpClient();

  // One request in flight; opaque. The client keeps it alive until it finishes, so callers may
  // drop their handle at any time (the callback still runs unless cancelled).
  class Call;

  // Starts a request. The callback runs later on the loop thread exactly once, never inside
  // send() itself, unless the call is cancelled (or the client closed) first. The callback may
  // send, cancel or close() freely. After close() the call is returned already cancelled.
  std::shared_ptr<Call> send(HttpRequest request, HttpCallback callback);

  // The callback is guaranteed not to run afterwards (also from inside another callback). A
  // connection the call was using is closed; a no-op for null, finished or cancelled calls.
  static void cancel(const std::shared_ptr<Call>& call);

  // Cancels every call (no callbacks run), closes every connection and both handles. `done` runs
  // from the loop once all close callbacks and pending getaddrinfo requests have come back, so
  // uv_loop_close() can succeed after it. Idempotent: a second close() replaces `done` while
  // closing, and runs it at once if closing already finished.
  void close(std::function<void()> done);
  bool isClosed() const { return closed_; }

  size_t idleConnections() const { return idle_count_; }
  // Calls started and not yet finished or cancelled (queued ones included).
  size_t activeCalls() const { return active_.size(); }
  // Connections opened over the client's life (for tests and metrics).
  uint64_t connectionsOpened() const { return connections_opened_; }

 private:
  struct Conn;
  struct Resolve;
  friend struct Conn;

  static void onDeferred(uv_idle_t* h) noexcept;
  static void onTimer(uv_timer_t* t) noexcept;
  static void onHandleClosed(uv_handle_t* h) noexcept;
  static void onResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept;
  static void onConnect(uv_connect_t* req, int status) noexcept;

  void runDeferred();
  void runTimers();
  void start(Call* call, bool fresh);
  void resolved(Resolve* r, int status, addrinfo* res);
  void connectNext(Call* call);
  void connected(Conn* conn, int status);
  void writeRequest(Call* call);
  void connData(Conn* conn, const char* data, size_t len);
  void connEof(Conn* conn);
  void connError(Conn* conn, int uv_err);
  void connClosed(Conn* conn);
  void responseDone(Call* call, bool reusable);
  void failOrRetry(Call* call, const std::string& error);
  void fail(Call* call, const std::string& error);
  void finish(Call* call, const std::string& error, HttpResponse& response);
  void detach(Call* call);
  void release(Conn* conn, bool reusable);
  void closeConn(Conn* conn);
  Conn* takeIdle(const std::string& key);
  void removeIdle(Conn* conn);
  void armTimer();
  void handleClosed();
  void maybeFinishClose();

  uv_loop_t* loop_;
  const Options options_;
  uv_timer_t timer_{};                        // the earliest call deadline or idle expiry
  uv_idle_t deferred_{};                      // runs queued starts on the next loop iteration
  std::vector<std::shared_ptr<Call>> queue_;  // sent, not started yet
  std::unordered_map<Call*, std::shared_ptr<Call>> active_;
  std::multimap<uint64_t, Call*> deadlines_;                  // loop time (ms) -> call
  std::multimap<uint64_t, Conn*> idle_expiry_;                // loop time (ms) -> idle connection
  std::unordered_map<std::string, std::vector<Conn*>> idle_;  // endpoint key -> oldest first
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;    // every connection not yet closed
  size_t idle_count_ = 0;
  size_t pending_resolves_ = 0;
  int open_handles_ = 0;
  uint64_t connections_opened_ = 0;
  bool closing_ = false;
  bool closed_ = false;
  std::function<void()> on_closed_;
};

}  // namespace upgate
