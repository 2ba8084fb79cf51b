#pragma once
// One proxied HTTP/1.1 request/response on an `http` route (plain HTTP pass-through): the client's
// request goes to the legacy app over a pooled upstream connection and the answer streams back as
// it arrives. Long-polls pass through untouched: the app may hold a request for up to
// route.response_timeout (default 120 s).
//
// Request (RFC 9112): the head is checked for smuggling shapes (checkRequest() below) and sent
// with hop-by-hop headers removed and X-Forwarded-* / Forwarded added (upstreamHttpRequest());
// the body streams as it arrives. A Content-Length body is forwarded byte for byte; a chunked
// body is decoded by llhttp and re-encoded canonically (plain hex sizes, no extensions, no
// trailers), so the app never parses the client's framing and no parser difference can split
// one request into two.
// Response: llhttp reads the upstream's framing; the head is rewritten (hop-by-hop removed,
// `Connection: keep-alive|close` for the client) and the body streams on: Content-Length bodies
// byte for byte, chunked ones re-chunked (decoded for HTTP/1.0 clients, then delimited by the
// close), read-until-close bodies followed by closing the client connection; HEAD, 1xx, 204 and
// 304 have none. 1xx interim answers (100 Continue for `Expect: 100-continue`, 103) are relayed
// to HTTP/1.1 clients.
// Backpressure (style §2.5): upstream pending bytes > limits.high_water stop client reads until
// the upstream drains; client pending bytes > high_water stop upstream reads until the owner
// calls onClientDrain().
// Timeouts: connect_timeout per attempt; endpoints are tried round robin from
// worker.nextEndpoint(), the next one on a connect failure, then 504 if any attempt timed out
// else 502. route.response_timeout bounds the wait for the first response byte after the request
// was sent (restarted by request-body progress: 504, or 408 when the client stalls its body) and
// then every silence of the upstream while reading its response (504 after interim answers
// only; once the final head went out the connection is aborted). While the upstream is paused
// for a slow client, timeouts.send bounds how long the client may take none of the bytes queued
// for it (then the connection is aborted and the upstream connection dropped).
// Reuse: the upstream connection goes back to the pool only after a complete, keep-alive response
// to a completely sent request with nothing extra on the wire. A pooled connection that fails
// before any response byte is retried once on a fresh connection when the request is idempotent
// and has no body (RFC 9110 §9.2.2; the app may have closed it while idle).
//
// Threading and lifetime: loop thread only. The exchange owns no libuv handle (its connection
// belongs to the UpstreamPool), so it may be destroyed at any time after abort() or after its
// final upcall. Upcalls to the owner (exchangeDone/Failed/Aborted) are always the last thing the
// exchange does on that call path, and they may happen inside start(), onClientData() and
// onClientEof() too: the owner may delete the exchange inside an upcall, and must re-check its
// own state after those calls return. Exactly one of the three upcalls happens, unless the owner
// calls abort() first. Nothing throws (OOM aborts, style §2.6).

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "config/config.h"
#include "http/forwarding.h"
#include "http/request_head.h"
#include "net/stream.h"
#include "proxy/generation.h"
#include "proxy/upstream_pool.h"
#include "tls/tls_context.h"

namespace upgate {

class Worker;

// Implemented by proxy/Session: the client side of an exchange.
class HttpExchangeOwner {
 public:
  virtual ~HttpExchangeOwner() = default;
  // The client connection (plain or TLS). The exchange writes the response to it, sets its high
  // mark to limits.high_water, and may readStop()/readStart() it while the request body flows.
  virtual Stream& clientStream() = 0;
  virtual uint64_t sessionId() const = 0;
  // The whole response was handed to the client stream (possibly still queued). keep_alive: the
  // connection may carry the next request (both sides allow it, the request body was fully
  // read, the response was delimited). bytes_in: request body bytes read from the client (framing
  // included); bytes_out: response bytes written to the client (interim heads included).
  virtual void exchangeDone(bool keep_alive, int status, uint64_t bytes_in, uint64_t bytes_out) = 0;
  // Failed before any byte of the final response went to the client (interim 1xx heads may
  // have): the owner answers `status` (400, 405, 408, 501, 502, 504) with Connection: close, and
  // closes.
  virtual void exchangeFailed(int status, const std::string& reason) = 0;
  // Failed after the final response started: the owner closes the client connection at once.
  virtual void exchangeAborted(const std::string& reason) = 0;
};

// What an exchange takes from its worker; the Worker constructor below fills it in.
struct HttpExchangeContext {
  UpstreamPool& pool;
  const LimitsConfig& limits;             // copied by the exchange
  std::shared_ptr<const TlsContext> tls;  // generation.upstreamTls(upstream.name); null = plain
  size_t first_endpoint = 0;              // worker.nextEndpoint(upstream)
  uint64_t send_timeout_ms = 0;           // timeouts.send; 0 = none
};

// How a client request's body is delimited (RFC 9112 §6.3), or why it cannot be forwarded.
struct RequestFraming {
  enum class Body { None, Length, Chunked };
  Body body = Body::None;
  uint64_t length = 0;   // Body::Length
  int error_status = 0;  // 0: forwardable; else 400, 405, 501 or 505
  std::string error;
};

// Checks a request head for the pass-through. RequestParser (llhttp) already refuses many bad
// shapes; this repeats the framing checks on the head itself and adds the rest, RFC 9112 §6.1,
// §6.3 and §3.2:
//   400: Content-Length together with Transfer-Encoding; more than one Content-Length (equal or
//        not); a Content-Length that is not plain digits or overflows; Transfer-Encoding in an
//        HTTP/1.0 request; Transfer-Encoding empty, not ending in "chunked", or chunked twice;
//        no Host in HTTP/1.1, more than one Host; authority-form or "*" target (except OPTIONS *)
//   405: CONNECT;  501: a transfer coding other than chunked;  505: not HTTP/1.x.
RequestFraming checkRequest(const RequestHead& head);

// The request head sent upstream, ending in the blank line:
//   <method> <origin-form target, or * for OPTIONS *> HTTP/1.1
//   <request headers in order, except hop-by-hop ones (headers.h isHopByHop), Content-Length
//    (re-sent below), Expect from an HTTP/1.0 client, and X-Forwarded-For/-Proto and Forwarded
//    (re-sent below)>
//   Host: <default_host>                       (only when the client sent none: HTTP/1.0)
//   Content-Length: N | Transfer-Encoding: chunked   (per `framing`)
//   X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Host / Forwarded, as forwarding.h documents
//   for upstreamUpgradeRequest.
// An absolute-form target is sent in origin-form (path and query); a fragment is dropped.
// Like upstreamUpgradeRequest, it expects the headers the client's Connection header names to be
// gone already (dropConnectionNominated, forwarding.h): what the gateway and its plugins added
// under such a name goes upstream.
std::string upstreamHttpRequest(const RequestHead& head, const ForwardInfo& forward,
                                const RequestFraming& framing, const std::string& default_host);

class HttpExchange final : private UpstreamUser {
 public:
  // The production constructor. The Worker owns one UpstreamPool (constructed on its loop
  // thread, closed with close(done) at shutdown) and passes it here; `route` and `upstream`
  // belong to `generation` (the session's).
  HttpExchange(Worker& worker, const Generation& generation, UpstreamPool& pool,
               HttpExchangeOwner& owner, const RouteConfig& route, const UpstreamConfig& upstream,
               RequestHead head, const ForwardInfo& forward);
  // The same without a Worker (tests). `route` and `upstream` must outlive the exchange.
  HttpExchange(const HttpExchangeContext& ctx, HttpExchangeOwner& owner, const RouteConfig& route,
               const UpstreamConfig& upstream, RequestHead head, const ForwardInfo& forward);
  HttpExchange(const HttpExchange&) = delete;
  HttpExchange& operator=(const HttpExchange&) = delete;
  // Safe at any time after abort() or after the final upcall; never deletes the owner. Without
  // either it behaves like abort().
  ~HttpExchange() override;

  // Starts the exchange. `early` = bytes the client sent after the head (body, maybe a pipelined
  // next request). Returns how many belong to this request's body; the owner keeps the rest.
  // While the body is incomplete the exchange owns the client's read state: it starts reads
  // here and stops/restarts them for backpressure; the owner only stops them once
  // requestComplete() (or when it holds pipelined bytes), and never restarts them meanwhile.
  size_t start(const char* early, size_t len);
  // Client bytes while the exchange runs (the owner keeps client reads going while the body is
  // incomplete). Returns the bytes consumed by this request's body; once the body is complete it
  // returns 0 and the owner must stop reading the client (holding what it read) until the
  // exchange ends.
  size_t onClientData(const char* data, size_t len);
  // The client half-closed: fine after a complete body (the response still goes out, and
  // keep_alive will be false), else the exchange fails (400) or aborts.
  void onClientEof();
  // The client's write queue fell below low water: upstream reads resume.
  void onClientDrain();
  // The owner is closing: the upstream connection is closed (never pooled), nothing is left
  // running, and no upcall follows.
  void abort();

  // True once the body was fully read from the client (the owner stops reading then).
  bool requestComplete() const { return req_done_; }
  bool finished() const { return finished_; }
  // For logs: the endpoint in use ("127.0.0.1:8080"), and whether its connection was pooled.
  const std::string& upstreamAddress() const { return endpoint_text_; }
  bool upstreamReused() const { return reused_; }
  // The final response's status once some of it went to the client (else 0), and the bytes
  // so far.
  int status() const { return resp_started_ ? status_ : 0; }
  uint64_t bytesIn() const { return bytes_in_; }
  uint64_t bytesOut() const { return bytes_out_; }

 private:
  // UpstreamUser.
  void upstreamConnected(int status) override;
  void upstreamData(const char* data, size_t len) override;
  void upstreamEof() override;
  void upstreamError(int uv_err) override;
  void upstreamDrain() override;
  void upstreamTimer() override;

  // Request side. Functions returning bool return false when the exchange ended (an upcall
  // happened: `this` may be gone) and the caller must return at once.
  bool consumeBody(const char* data, size_t len, size_t* used);
  bool flushUpstream();
  void connectNext();
  void sendRequest();
  void pauseClient();
  void resumeClient();
  UpstreamTarget targetFor(const HostPort& endpoint) const;

  // Response side.
  int onResponseHead();
  void appendResponseHead(bool interim);
  bool flushClient();
  void armTimer();
  void upstreamFailed(const std::string& what);

  // Ends: each releases the connection, then makes its one upcall last.
  void complete(bool upstream_reusable);
  void fail(int status, const std::string& reason);
  void abortWith(const std::string& reason);
  void failOrAbort(int status, const std::string& reason);
  void releaseConn(bool reusable);

  // llhttp callbacks (through trampolines in the .cc): the upstream response...
  int respMessageBegin() noexcept;
  int respStatus(const char* at, size_t len) noexcept;
  int respHeaderField(const char* at, size_t len) noexcept;
  int respHeaderFieldComplete() noexcept;
  int respHeaderValue(const char* at, size_t len) noexcept;
  int respHeaderValueComplete() noexcept;
  int respHeadersComplete() noexcept;
  int respBody(const char* at, size_t len) noexcept;
  int respMessageComplete() noexcept;
  int respCountHead(size_t len) noexcept;
  // ...and the client's chunked request body.
  int reqHeaderBytes(const char* at, size_t len) noexcept;
  int reqBody(const char* at, size_t len) noexcept;
  int reqMessageComplete() noexcept;
  static const llhttp_settings_t& responseSettings();
  static const llhttp_settings_t& requestSettings();

  UpstreamPool& pool_;
  HttpExchangeOwner& owner_;
  const RouteConfig& route_;
  const UpstreamConfig& upstream_;
  const std::shared_ptr<const TlsContext> tls_;
  const size_t first_endpoint_;
  const size_t high_water_;
  const uint64_t send_timeout_ms_;
  const size_t max_response_head_bytes_;
  const size_t max_headers_;
  const size_t max_trailer_bytes_;
  RequestHead head_;
  const ForwardInfo forward_;
  RequestFraming framing_;

  UpstreamConn* conn_ = nullptr;
  std::string endpoint_text_;
  size_t attempts_ = 0;
  int last_error_ = 0;
  bool any_timeout_ = false;
  bool fresh_only_ = false;  // the retry: no pooled connection
  bool retried_ = false;
  bool retryable_ = false;  // idempotent method, no body
  bool reused_ = false;
  bool connected_ = false;  // conn_ is connected and the request head was written

  // Request body.
  llhttp_t req_parser_{};   // chunked bodies only, primed with a synthetic head
  uint64_t body_left_ = 0;  // Content-Length bodies
  size_t trailer_bytes_ = 0;
  std::string pending_up_;  // framed body bytes not yet written upstream
  bool req_done_ = false;
  bool client_paused_ = false;  // we stopped client reads (upstream above high water)
  bool client_eof_ = false;
  bool client_11_ = true;
  bool client_wants_ka_ = true;
  bool head_request_ = false;

  // Response.
  llhttp_t resp_parser_{};
  std::string out_;  // bytes for the client, written once per upstream read
  std::string resp_reason_;
  HeaderList resp_headers_;
  std::string field_, value_;
  std::string resp_error_;  // why a callback failed (HPE_USER)
  size_t resp_head_bytes_ = 0;
  enum class OutBody { None, Raw, Chunked } out_body_ = OutBody::None;
  int status_ = 0;
  bool in_head_ = false;
  bool interim_ = false;
  bool final_head_ = false;  // the final head was parsed (and queued in out_)
  bool resp_complete_ = false;
  bool resp_started_ = false;  // some byte of the final response went to the client
  bool got_response_byte_ = false;
  bool client_ka_ = false;        // what the final head told the client
  bool upstream_paused_ = false;  // we stopped upstream reads (client above high water)
  // While upstream_paused_: when the client's unacknowledged bytes were last seen to shrink, and
  // how many there were then.
  uint64_t send_check_at_ = 0;
  size_t send_check_pending_ = 0;

  uint64_t last_activity_ = 0;  // loop time of the last progress the response timer counts
  uint64_t bytes_in_ = 0;
  uint64_t bytes_out_ = 0;
  bool started_ = false;
  bool finished_ = false;
};

}  // namespace upgate
