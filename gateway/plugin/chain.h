#pragma once
// The plugin chain of one session: runs the hooks of the route's plugin instances in config order
// (global ones first, then the route's), turns their results into decisions the session acts on,
// and implements the per-session side of the host API (headers, identity, timers, resume, close,
// HTTP callouts).
//
// The chain never touches sockets or the loop. It talks to its session through PluginSession,
// which the proxy's Session implements. Everything here runs on the session's loop thread.
//
// The session's side of the contract:
//  1. Construct a PluginChain with the instances of PluginSet::chainFor(route) once the head is
//     read, and keep the RequestHead alive (unchanged) until handshakeDone().
//  2. Call start(head, ...). Continue: apply upstream() (if not empty), identity() and
//     applyUpstreamHeaders(), then go on. Reject: answer with reject() (errorResponse(status,
//     body, headers)) and close. Paused: keep reads stopped and wait for onPluginsResumed(),
//     then read outcome() and act as above.
//  3. When PluginSession::setPluginWakeup(t) was called, arrange for onWakeup() to be called once
//     the loop clock reaches t (one timer is enough: each call replaces the previous deadline).
//  4. After the 101 (or after forwarding a plain HTTP request) call handshakeDone(); in frames
//     mode pass each complete data message through onMessage() if hasMessageHooks().
//  5. When the session ends call close(code, reason) exactly once (the destructor does it with
//     code 0 if you did not). Do not destroy the chain from inside a PluginSession upcall: those
//     are always the last thing a chain method does, but the chain may still be on the stack.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "http/headers.h"
#include "http/request_head.h"
#include "upgate/plugin.h"

namespace upgate {
class PluginChain;
class PluginInstance;
}  // namespace upgate

// The C ABI's opaque session handle: one per (session, plugin instance), owned by the chain.
struct upgate_session {
  upgate::PluginChain* chain = nullptr;
  size_t index = 0;      // position of the instance in the chain
  void* data = nullptr;  // host->set_data / get_data
};

namespace upgate {

// A verified TLS client certificate, as the session extracted it (see ClientCertHeaders).
struct PluginTlsIdentity {
  std::string subject;            // RFC 2253
  std::vector<std::string> sans;  // "DNS:a.example", "IP:192.0.2.1", ...
  std::string sha256;             // lower-case hex fingerprint of the DER certificate
};

// An HTTP callout a plugin asked for (host->http_request), checked and parsed by the chain.
struct PluginHttpRequest {
  std::string method;
  HostPort endpoint;   // from the URL: host (IPv6 without brackets) and port
  std::string target;  // origin-form: "/auth?x=1"
  HeaderList headers;  // validated fields, in the plugin's order
  std::string body;
  Millis timeout{5000};
};

// How a callout ended: `result` is an upgate_http_result_t; status, headers and body only for
// UPGATE_HTTP_OK; `error` is a short reason otherwise.
struct PluginHttpResult {
  upgate_http_result_t result = UPGATE_HTTP_ERROR;
  int status = 0;
  HeaderList headers;
  std::string body;
  std::string error;
};
using PluginHttpDone = std::function<void(PluginHttpResult& result)>;

// A callout in flight, as the session started it. cancel() (and the destructor) guarantee that
// its `done` does not run afterwards.
class PluginHttpCall {
 public:
  virtual ~PluginHttpCall() = default;
  virtual void cancel() = 0;
};

// What the chain needs from the session that owns it. Implemented by the proxy's Session; kept
// small on purpose. All calls happen on the session's loop thread.
class PluginSession {
 public:
  virtual ~PluginSession() = default;

  // Session id carried by every log line.
  virtual uint64_t sessionId() const = 0;
  // Index of the worker loop, 0 .. workers-1 (plugins keep per-worker state by it).
  virtual uint32_t workerIndex() const = 0;
  // The loop clock in milliseconds (uv_now): pause deadlines and plugin timers use it.
  virtual uint64_t nowMs() const = 0;
  // Peer address of the client TCP connection (no brackets, no port) and its port.
  virtual const std::string& clientIp() const = 0;
  virtual uint16_t clientPort() const = 0;
  // The verified client certificate, or null (no mTLS, or none sent). Must stay valid for the
  // session's lifetime once returned.
  virtual const PluginTlsIdentity* tlsClient() const = 0;

  // Call PluginChain::onWakeup() once nowMs() >= deadline_ms; 0 cancels. Replaces any earlier
  // deadline.
  virtual void setPluginWakeup(uint64_t deadline_ms) = 0;
  // A chain that start() reported as Paused has finished: outcome() is Continue or Reject.
  virtual void onPluginsResumed() = 0;
  // A plugin closed the established session (host->close or a CLOSE message action that came
  // from a timer): send a close frame with `code` and end the session.
  virtual void onPluginClose(uint16_t code, const std::string& reason) = 0;
  // Starts an HTTP request on the session's loop; `done` runs later on the loop thread (never
  // inside this call), exactly once unless the returned call is cancelled or destroyed first.
  // Null when the request cannot be started.
  virtual std::unique_ptr<PluginHttpCall> startHttpCall(PluginHttpRequest request,
                                                        PluginHttpDone done) = 0;
};

enum class ChainOutcome { Continue, Reject, Paused };

// A validated REJECT: status in 400..599, headers already filtered, body set.
struct PluginReject {
  int status = 500;
  std::string reason;  // for the log and access log: "plugin jwt: token expired"
  HeaderList headers;  // for errorResponse's `extra`
  std::string body;    // the plugin's body, or the reason phrase
};

// Result of running a message through the on_message hooks.
struct MessageVerdict {
  upgate_message_action_t action = UPGATE_MESSAGE_PASS;  // PASS, REWRITE, DROP or CLOSE
  uint8_t opcode = 0;                                    // REWRITE: the new opcode
  std::string payload;                                   // REWRITE: the new payload
  uint16_t close_code = 0;                               // CLOSE: a valid close code
  std::string close_reason;                              // CLOSE
};

class PluginChain {
 public:
  using Instances = std::vector<std::shared_ptr<const PluginInstance>>;

  // `instances` in call order; `pause_timeout` bounds every PAUSE (-> 503).
  PluginChain(PluginSession& session, Instances instances, Millis pause_timeout = Millis{10000});
  PluginChain(const PluginChain&) = delete;
  PluginChain& operator=(const PluginChain&) = delete;
  ~PluginChain();

  // Runs on_request of every instance, then on_route until one chooses. `head` must stay valid
  // and unchanged until handshakeDone(). `route` is the route table's match ("" if none).
  ChainOutcome start(const RequestHead& head, upgate_request_kind_t kind, const std::string& route);

  // Continue, Reject or Paused; Continue before start().
  ChainOutcome outcome() const { return outcome_; }
  // Valid when outcome() == Reject.
  const PluginReject& reject() const { return reject_; }
  // The upstream an on_route hook chose; empty = use the route table's.
  const std::string& upstream() const { return upstream_; }
  // Identity set by plugins (user empty = none) and its claims (JSON object text or empty).
  const std::string& identityUser() const { return identity_user_; }
  const std::string& identityClaims() const { return identity_claims_; }
  // Header edits for the upstream request, in order: value nullopt = remove.
  const std::vector<std::pair<std::string, std::optional<std::string>>>& upstreamHeaderEdits()
      const {
    return header_edits_;
  }
  // Applies upstreamHeaderEdits() to `headers` (removes every field of each name, then appends).
  void applyUpstreamHeaders(HeaderList& headers) const;

  // The handshake is over (101 sent, SSE stream answered, or the HTTP request forwarded): the
  // request head is no longer read. `closable`: the session lives on as a WebSocket or SSE
  // stream that host->close may end; a forwarded HTTP request (false) runs to its end.
  void handshakeDone(bool closable);

  // True if some instance defines on_message.
  bool hasMessageHooks() const { return has_message_hooks_; }
  // Runs one complete data message through the on_message hooks in order.
  MessageVerdict onMessage(upgate_direction_t dir, uint8_t opcode, const uint8_t* data, size_t len);

  // The deadline given to setPluginWakeup has passed: fires due plugin timers and the pause
  // timeout.
  void onWakeup();

  // The session ended (`ws_code` 0 before the 101): cancels timers and HTTP callouts, calls
  // every on_close once.
  void close(uint16_t ws_code, const std::string& reason);

  size_t size() const { return instances_.size(); }

  // ---- Host API, per instance (called from host_api.cc; `i` is the handle's index) ----------
  const upgate_request_t* apiRequest() const;
  const char* apiHeader(const char* name, size_t index) const;
  size_t apiHeaderCount() const;
  int apiHeaderAt(size_t i, const char** name, const char** value) const;
  const char* apiClientAddress(uint16_t* port) const;
  const upgate_tls_identity_t* apiTlsClient();
  int apiSetUpstreamHeader(size_t i, const char* name, const char* value);
  int apiSetIdentity(size_t i, const char* user, const char* claims_json);
  const char* apiIdentity(const char** claims_json) const;
  void apiLog(size_t i, upgate_log_level_t level, const char* message) const;
  uint64_t apiSessionId() const { return session_.sessionId(); }
  uint32_t apiWorkerIndex() const { return session_.workerIndex(); }
  uint64_t apiNowMs() const { return session_.nowMs(); }
  uint64_t apiTimerStart(size_t i, uint64_t delay_ms, upgate_timer_cb cb, void* arg);
  void apiTimerCancel(size_t i, uint64_t id);
  int apiResume(size_t i, upgate_decision_t decision, const upgate_reject_t* reject,
                const upgate_route_t* route);
  int apiClose(size_t i, uint16_t code, const char* reason);
  uint64_t apiHttpRequest(size_t i, const char* method, const char* url,
                          const upgate_header_t* headers, size_t n_headers, const char* body,
                          size_t body_len, uint64_t timeout_ms, upgate_http_cb cb, void* arg);
  void apiHttpCancel(size_t i, uint64_t id);

  // Callouts in flight (all instances).
  size_t httpCallsInFlight() const { return callouts_.size(); }
  // At most this many callouts in flight per instance and session.
  static constexpr size_t kMaxCalloutsPerInstance = 16;

 private:
  enum class Phase { Idle, Request, Route, Done };
  struct Timer {
    uint64_t id;
    uint64_t deadline;
    size_t index;
    upgate_timer_cb cb;
    void* arg;
  };
  struct Callout {
    uint64_t id;
    size_t index;
    upgate_http_cb cb;
    void* arg;
    std::unique_ptr<PluginHttpCall> call;
  };
  struct EarlyResume {
    upgate_decision_t decision;
    std::optional<PluginReject> reject;
    std::optional<std::string> upstream;
  };

  const std::string& nameOf(size_t i) const;
  // Runs hooks from pos_ on until the chain ends or pauses.
  void run();
  // Applies one hook result; returns false when the chain stops here (reject or pause).
  bool apply(upgate_decision_t d, const upgate_reject_t& rej, const char* chosen);
  // Validates a plugin's reject (bad status -> 500 and a log line); no side effects.
  PluginReject buildReject(size_t i, const upgate_reject_t* r) const;
  void finishReject(PluginReject r);
  void closeImpl(uint16_t ws_code, const std::string& reason, bool upcalls);
  void setRejectStatus(int status, std::string reason);
  void advance();
  void updateWakeup();
  void leave();  // at the end of every outermost entry point: deliver upcalls
  void onHttpDone(uint64_t id, PluginHttpResult& result);
  void cancelCallouts();
  static bool validCloseCode(uint16_t code);

  PluginSession& session_;
  Instances instances_;
  std::vector<upgate_session> handles_;
  Millis pause_timeout_;

  const RequestHead* head_ = nullptr;
  upgate_request_t request_{};
  std::string route_name_;
  upgate_tls_identity_t tls_{};
  std::vector<const char*> tls_sans_;
  bool tls_built_ = false;

  Phase phase_ = Phase::Idle;
  size_t pos_ = 0;  // instance whose hook runs next (or is paused)
  ChainOutcome outcome_ = ChainOutcome::Continue;
  bool paused_ = false;
  uint64_t pause_deadline_ = 0;
  std::optional<size_t> in_hook_;  // instance whose on_request/on_route is on the stack
  std::optional<EarlyResume> early_resume_;

  PluginReject reject_;
  std::string upstream_;
  std::string identity_user_;
  std::string identity_claims_;
  std::vector<std::pair<std::string, std::optional<std::string>>> header_edits_;
  bool has_message_hooks_ = false;
  bool handshake_done_ = false;
  bool closable_ = false;  // handshakeDone(true): host->close may end the session
  bool closed_ = false;

  std::vector<Timer> timers_;
  uint64_t next_timer_id_ = 1;
  uint64_t wakeup_ = 0;  // deadline last given to the session

  std::vector<Callout> callouts_;
  uint64_t next_callout_id_ = 1;
  // Expires with the chain: a callout's completion that outlives it finds it gone.
  std::shared_ptr<char> alive_ = std::make_shared<char>();

  int depth_ = 0;                // chain entry points on the stack
  bool notify_resumed_ = false;  // deliver onPluginsResumed when depth_ returns to 0
  std::optional<std::pair<uint16_t, std::string>> pending_close_;
};

}  // namespace upgate
