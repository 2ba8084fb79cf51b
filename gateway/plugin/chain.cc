#include "plugin/chain.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/log.h"
#include "http/response_writer.h"
#include "plugin/host.h"
#include "websocket/close_code.h"
#include "websocket/utf8.h"

namespace upgate {

namespace {

constexpr size_t kMaxRejectBody = 64 * 1024;
constexpr size_t kMaxCloseReason = 123;  // RFC 6455 §5.5: control payload <= 125 with the code

// A plugin's close reason as it may go on the wire: valid UTF-8 (RFC 6455 §5.5.1), cut to 123
// bytes on a character boundary. A reason that is not UTF-8 is dropped, not sent.
std::string wireCloseReason(std::string_view reason) {
  if (!isValidUtf8(reason)) return std::string();
  return std::string(reason.substr(0, utf8TruncationPoint(reason, kMaxCloseReason)));
}

// Headers a plugin may not set on the upstream request: the gateway owns the framing and the
// WebSocket handshake (its own Sec-WebSocket-Key, the client's negotiated extensions).
bool reservedUpstreamHeader(std::string_view name) {
  static constexpr std::string_view kReserved[] = {
      "Host",
      "Content-Length",
      "Sec-WebSocket-Key",
      "Sec-WebSocket-Version",
      "Sec-WebSocket-Extensions",
      "Sec-WebSocket-Protocol",
      "Sec-WebSocket-Accept",
  };
  if (isHopByHop(name)) return true;
  return std::any_of(std::begin(kReserved), std::end(kReserved),
                     [&](std::string_view r) { return iequals(r, name); });
}

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

// "http://host[:port][/path][?query]" -> endpoint and origin-form target. No userinfo, no
// fragment (dropped), no whitespace or control bytes; https is not offered to plugins.
bool parseHttpUrl(std::string_view url, HostPort& endpoint, std::string& target) {
  constexpr std::string_view kScheme = "http://";
  if (url.size() <= kScheme.size() || !iequals(url.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  }
  std::string_view rest = url.substr(kScheme.size());
  size_t hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);
  size_t end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, end);
  std::string_view path = end == std::string_view::npos ? std::string_view() : rest.substr(end);
  if (authority.empty() || authority.find('@') != std::string_view::npos) return false;
  std::string_view host;
  std::string_view port;
  bool has_port = false;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') return false;
    has_port = !after.empty();
    if (has_port) port = after.substr(1);
    for (char c : host) {
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.') return false;
    }
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    has_port = colon != std::string_view::npos;
    if (has_port) port = authority.substr(colon + 1);
    if (host.empty()) return false;
    for (char c : host) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
        return false;
      }
    }
  }
  uint32_t p = 80;
  if (has_port) {
    if (port.empty() || port.size() > 5) return false;
    p = 0;
    for (char c : port) {
      if (!isDigit(c)) return false;
      p = p * 10 + static_cast<uint32_t>(c - '0');
    }
    if (p == 0 || p > 65535) return false;
  }
  endpoint.host = std::string(host);
  endpoint.port = static_cast<uint16_t>(p);
  target = path.empty() ? std::string("/") : std::string(path);
  if (target.front() == '?') target.insert(0, "/");
  return true;
}

}  // namespace

PluginChain::PluginChain(PluginSession& session, Instances instances, Millis pause_timeout)
    : session_(session),
      instances_(std::move(instances)),
      handles_(instances_.size()),
      pause_timeout_(pause_timeout) {
  for (size_t i = 0; i < instances_.size(); ++i) {
    handles_[i].chain = this;
    handles_[i].index = i;
    if (instances_[i]->vtable().on_message != nullptr) has_message_hooks_ = true;
  }
}

PluginChain::~PluginChain() {
  // No upcall from here: the session may be half destroyed.
  if (!closed_) closeImpl(0, "session ended", false);
}

const std::string& PluginChain::nameOf(size_t i) const {
  return instances_[i]->name();
}

ChainOutcome PluginChain::start(const RequestHead& head, upgate_request_kind_t kind,
                                const std::string& route) {
  if (phase_ != Phase::Idle || closed_) return outcome_;
  head_ = &head;
  route_name_ = route;
  request_ = upgate_request_t{};
  request_.struct_size = sizeof(upgate_request_t);
  request_.kind = kind;
  request_.method = head.method.c_str();
  request_.target = head.target.c_str();
  request_.path = head.path.c_str();
  request_.query = head.query.c_str();
  request_.http_major = head.http_major;
  request_.http_minor = head.http_minor;
  request_.route = route_name_.c_str();
  request_.client_ip = session_.clientIp().c_str();
  request_.client_port = session_.clientPort();

  phase_ = Phase::Request;
  pos_ = 0;
  ++depth_;
  run();
  --depth_;
  // Nothing to deliver: a chain that finishes inside start() reports through the return value.
  notify_resumed_ = false;
  return outcome_;
}

void PluginChain::advance() {
  ++pos_;
  if (phase_ == Phase::Request && pos_ >= instances_.size()) {
    phase_ = Phase::Route;
    pos_ = 0;
  }
  if (phase_ == Phase::Route && (pos_ >= instances_.size() || !upstream_.empty())) {
    phase_ = Phase::Done;
  }
}

void PluginChain::run() {
  if (phase_ == Phase::Request && instances_.empty()) phase_ = Phase::Done;
  while (phase_ != Phase::Done && !closed_) {
    const upgate_plugin_v1_t& vt = instances_[pos_]->vtable();
    void* self = instances_[pos_]->self();
    upgate_session* s = &handles_[pos_];
    upgate_reject_t rej{};
    rej.struct_size = sizeof(rej);
    upgate_route_t route{};
    route.struct_size = sizeof(route);
    upgate_decision_t d = UPGATE_CONTINUE;
    bool has_hook = phase_ == Phase::Request ? vt.on_request != nullptr : vt.on_route != nullptr;
    if (has_hook) {
      in_hook_ = pos_;
      early_resume_.reset();
      try {
        d = phase_ == Phase::Request ? vt.on_request(self, s, &request_, &rej)
                                     : vt.on_route(self, s, &request_, &route, &rej);
      } catch (...) {
        // Only a C++ plugin that broke the ABI's no-exception rule gets here.
        in_hook_.reset();
        UPGATE_LOG(err, session_.sessionId(), "plugin {}: a hook threw an exception", nameOf(pos_));
        setRejectStatus(500, "plugin " + nameOf(pos_) + ": hook threw");
        return;
      }
      in_hook_.reset();
    }
    if (d == UPGATE_PAUSE && early_resume_) {
      // host->resume was called from within the hook: the pause is already over.
      EarlyResume er = std::move(*early_resume_);
      early_resume_.reset();
      if (er.decision == UPGATE_REJECT) {
        finishReject(std::move(*er.reject));
        return;
      }
      if (er.upstream) upstream_ = *er.upstream;
      advance();
      continue;
    }
    if (!apply(d, rej, phase_ == Phase::Route ? route.upstream : nullptr)) return;
  }
  if (outcome_ != ChainOutcome::Reject) outcome_ = ChainOutcome::Continue;
}

bool PluginChain::apply(upgate_decision_t d, const upgate_reject_t& rej, const char* chosen) {
  switch (d) {
    case UPGATE_CONTINUE:
      if (chosen != nullptr && chosen[0] != '\0') upstream_ = chosen;
      advance();
      return true;
    case UPGATE_REJECT:
      finishReject(buildReject(pos_, &rej));
      return false;
    case UPGATE_PAUSE:
      paused_ = true;
      outcome_ = ChainOutcome::Paused;
      pause_deadline_ = session_.nowMs() + static_cast<uint64_t>(pause_timeout_.count());
      updateWakeup();
      return false;
  }
  UPGATE_LOG(err, session_.sessionId(), "plugin {}: invalid decision {}", nameOf(pos_),
             static_cast<int>(d));
  setRejectStatus(500, "plugin " + nameOf(pos_) + ": invalid decision");
  return false;
}

void PluginChain::setRejectStatus(int status, std::string reason) {
  PluginReject r;
  r.status = status;
  r.reason = std::move(reason);
  r.body = std::string(reasonPhrase(status));
  finishReject(std::move(r));
}

PluginReject PluginChain::buildReject(size_t i, const upgate_reject_t* r) const {
  const std::string who = "plugin " + nameOf(i);
  PluginReject out;
  if (r == nullptr || r->status < 400 || r->status > 599) {
    UPGATE_LOG(err, session_.sessionId(), "{}: rejected with invalid status {}; answering 500", who,
               r == nullptr ? 0 : r->status);
    out.status = 500;
    out.reason = who + ": invalid reject status";
    out.body = std::string(reasonPhrase(500));
    return out;
  }
  out.status = r->status;
  out.reason = who;
  if (r->reason != nullptr && r->reason[0] != '\0') out.reason += std::string(": ") + r->reason;
  for (size_t h = 0; r->headers != nullptr && h < r->header_count; ++h) {
    const upgate_header_t& f = r->headers[h];
    if (f.name == nullptr || f.value == nullptr || !isToken(f.name) || !isFieldValue(f.value)) {
      UPGATE_LOG(warn, session_.sessionId(), "{}: dropped an invalid reject header", who);
      continue;
    }
    out.headers.push_back(Header{f.name, f.value});
  }
  if (r->body != nullptr) {
    size_t n = std::min(r->body_len, kMaxRejectBody);
    if (n < r->body_len) {
      UPGATE_LOG(warn, session_.sessionId(), "{}: reject body cut to {} bytes", who, n);
    }
    out.body.assign(r->body, n);
  } else {
    out.body = std::string(reasonPhrase(out.status));
  }
  return out;
}

void PluginChain::finishReject(PluginReject r) {
  reject_ = std::move(r);
  outcome_ = ChainOutcome::Reject;
  phase_ = Phase::Done;
  paused_ = false;
  updateWakeup();
}

void PluginChain::applyUpstreamHeaders(HeaderList& headers) const {
  for (const auto& [name, value] : header_edits_) {
    removeHeaders(headers, name);  // look-alikes too (X_User): the app gets the plugin's value
    if (value) headers.push_back(Header{name, *value});
  }
}

void PluginChain::handshakeDone(bool closable) {
  handshake_done_ = true;
  closable_ = closable;
  head_ = nullptr;
  request_ = upgate_request_t{};
}

MessageVerdict PluginChain::onMessage(upgate_direction_t dir, uint8_t opcode, const uint8_t* data,
                                      size_t len) {
  MessageVerdict v;
  if (!has_message_hooks_ || closed_) return v;
  ++depth_;
  upgate_message_t m{};
  m.struct_size = sizeof(m);
  m.direction = dir;
  m.opcode = opcode;
  m.data = data;
  m.len = len;
  bool rewritten = false;
  for (size_t i = 0; i < instances_.size() && !closed_; ++i) {
    const upgate_plugin_v1_t& vt = instances_[i]->vtable();
    if (vt.on_message == nullptr) continue;
    upgate_message_result_t out{};
    out.struct_size = sizeof(out);
    upgate_message_action_t a = UPGATE_MESSAGE_CLOSE;
    try {
      a = vt.on_message(instances_[i]->self(), &handles_[i], &m, &out);
    } catch (...) {
      UPGATE_LOG(err, session_.sessionId(), "plugin {}: on_message threw", nameOf(i));
      out = upgate_message_result_t{};
      out.close_code = 1011;
    }
    if (a == UPGATE_MESSAGE_PASS) continue;
    if (a == UPGATE_MESSAGE_DROP) {
      v = MessageVerdict{};
      v.action = UPGATE_MESSAGE_DROP;
      break;
    }
    if (a == UPGATE_MESSAGE_REWRITE &&
        (out.opcode == UPGATE_OPCODE_TEXT || out.opcode == UPGATE_OPCODE_BINARY) &&
        (out.data != nullptr || out.len == 0)) {
      std::string payload(reinterpret_cast<const char*>(out.data), out.len);
      if (out.opcode == UPGATE_OPCODE_TEXT && !isValidUtf8(payload)) {
        // The peer would fail the connection on it (1007): the plugin's fault, not the peer's.
        UPGATE_LOG(err, session_.sessionId(),
                   "plugin {}: rewrote a text message into bytes "
                   "that are not UTF-8",
                   nameOf(i));
        v = MessageVerdict{};
        v.action = UPGATE_MESSAGE_CLOSE;
        v.close_code = 1011;
        v.close_reason = "plugin error";
        break;
      }
      v.payload = std::move(payload);
      v.opcode = out.opcode;
      rewritten = true;
      m.opcode = v.opcode;
      m.data = reinterpret_cast<const uint8_t*>(v.payload.data());
      m.len = v.payload.size();
      continue;
    }
    v = MessageVerdict{};
    v.action = UPGATE_MESSAGE_CLOSE;
    if (a == UPGATE_MESSAGE_CLOSE && validCloseCode(out.close_code)) {
      v.close_code = out.close_code;
      if (out.close_reason != nullptr) v.close_reason = wireCloseReason(out.close_reason);
    } else {
      UPGATE_LOG(err, session_.sessionId(), "plugin {}: invalid on_message result {} (code {})",
                 nameOf(i), static_cast<int>(a), out.close_code);
      v.close_code = 1011;
      v.close_reason = "plugin error";
    }
    break;
  }
  if (v.action == UPGATE_MESSAGE_PASS && rewritten) v.action = UPGATE_MESSAGE_REWRITE;
  if (pending_close_ && v.action != UPGATE_MESSAGE_CLOSE) {
    // host->close from inside on_message: report it as this message's verdict.
    v = MessageVerdict{};
    v.action = UPGATE_MESSAGE_CLOSE;
    v.close_code = pending_close_->first;
    v.close_reason = pending_close_->second;
  }
  pending_close_.reset();
  --depth_;
  leave();
  return v;
}

void PluginChain::onWakeup() {
  if (closed_) return;
  // The session's timer is one-shot and has fired: no wakeup is armed now. (Left at the fired
  // deadline, a timer a callback starts for that same instant, with delay 0, would look armed
  // to updateWakeup() and never run; nor would the pause deadline behind it.)
  wakeup_ = 0;
  ++depth_;
  const uint64_t now = session_.nowMs();
  // Only timers that exist now: one started by a callback with delay 0 waits for the next turn.
  const uint64_t last_id = next_timer_id_ - 1;
  while (!closed_) {
    auto due = timers_.end();
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->id <= last_id && it->deadline <= now &&
          (due == timers_.end() || it->deadline < due->deadline)) {
        due = it;
      }
    }
    if (due == timers_.end()) break;
    Timer t = *due;
    timers_.erase(due);
    try {
      t.cb(&handles_[t.index], t.arg);
    } catch (...) {
      UPGATE_LOG(err, session_.sessionId(), "plugin {}: a timer callback threw", nameOf(t.index));
    }
  }
  if (paused_ && now >= pause_deadline_ && !closed_) {
    UPGATE_LOG(warn, session_.sessionId(), "plugin {}: no resume within {} ms; answering 503",
               nameOf(pos_), pause_timeout_.count());
    setRejectStatus(503, "plugin " + nameOf(pos_) + ": pause timed out");
    notify_resumed_ = true;
  }
  updateWakeup();
  --depth_;
  leave();
}

void PluginChain::close(uint16_t ws_code, const std::string& reason) {
  closeImpl(ws_code, reason, true);
}

void PluginChain::closeImpl(uint16_t ws_code, const std::string& reason, bool upcalls) {
  if (closed_) return;
  closed_ = true;
  paused_ = false;
  timers_.clear();
  cancelCallouts();
  pending_close_.reset();
  notify_resumed_ = false;
  if (wakeup_ != 0 && upcalls) session_.setPluginWakeup(0);
  wakeup_ = 0;
  for (size_t i = 0; i < instances_.size(); ++i) {
    const upgate_plugin_v1_t& vt = instances_[i]->vtable();
    if (vt.on_close == nullptr) continue;
    try {
      vt.on_close(instances_[i]->self(), &handles_[i], ws_code, reason.c_str());
    } catch (...) {
      UPGATE_LOG(err, session_.sessionId(), "plugin {}: on_close threw", nameOf(i));
    }
  }
  head_ = nullptr;
}

void PluginChain::updateWakeup() {
  uint64_t next = 0;
  for (const Timer& t : timers_) {
    if (next == 0 || t.deadline < next) next = t.deadline;
  }
  if (paused_ && (next == 0 || pause_deadline_ < next)) next = pause_deadline_;
  if (next == 0 && (paused_ || !timers_.empty())) next = 1;  // 0 would mean "none"
  if (next != wakeup_ && !closed_) {
    wakeup_ = next;
    session_.setPluginWakeup(next);
  }
}

void PluginChain::leave() {
  if (depth_ != 0) return;
  // Upcalls go last: the session may act on them at once (e.g. end the handshake).
  bool resumed = notify_resumed_;
  notify_resumed_ = false;
  std::optional<std::pair<uint16_t, std::string>> close = std::move(pending_close_);
  pending_close_.reset();
  if (close) {
    session_.onPluginClose(close->first, close->second);
  } else if (resumed) {
    session_.onPluginsResumed();
  }
}

// The ABI's macro and the gateway's own check name one set of codes: checked for every code.
constexpr bool closeCodeSetsAgree() {
  for (uint32_t c = 0; c <= UINT16_MAX; ++c) {
    if (UPGATE_CLOSE_CODE_OK(c) != isSendableCloseCode(static_cast<uint16_t>(c))) return false;
  }
  return true;
}
static_assert(closeCodeSetsAgree(), "UPGATE_CLOSE_CODE_OK and isSendableCloseCode differ");

bool PluginChain::validCloseCode(uint16_t code) {
  return isSendableCloseCode(code);
}

// ---- Host API ----------------------------------------------------------------------------------

const upgate_request_t* PluginChain::apiRequest() const {
  return head_ != nullptr ? &request_ : nullptr;
}

const char* PluginChain::apiHeader(const char* name, size_t index) const {
  if (head_ == nullptr || name == nullptr) return nullptr;
  for (const Header& h : head_->headers) {
    if (iequals(h.name, name) && index-- == 0) return h.value.c_str();
  }
  return nullptr;
}

size_t PluginChain::apiHeaderCount() const {
  return head_ != nullptr ? head_->headers.size() : 0;
}

int PluginChain::apiHeaderAt(size_t i, const char** name, const char** value) const {
  if (head_ == nullptr || i >= head_->headers.size()) return -1;
  if (name != nullptr) *name = head_->headers[i].name.c_str();
  if (value != nullptr) *value = head_->headers[i].value.c_str();
  return 0;
}

const char* PluginChain::apiClientAddress(uint16_t* port) const {
  if (port != nullptr) *port = session_.clientPort();
  return session_.clientIp().c_str();
}

const upgate_tls_identity_t* PluginChain::apiTlsClient() {
  const PluginTlsIdentity* id = session_.tlsClient();
  if (id == nullptr) return nullptr;
  if (!tls_built_) {
    tls_sans_.clear();
    for (const std::string& san : id->sans) tls_sans_.push_back(san.c_str());
    tls_.struct_size = sizeof(tls_);
    tls_.subject = id->subject.c_str();
    tls_.sans = tls_sans_.data();
    tls_.san_count = tls_sans_.size();
    tls_.sha256_fingerprint = id->sha256.c_str();
    tls_built_ = true;
  }
  return &tls_;
}

int PluginChain::apiSetUpstreamHeader(size_t i, const char* name, const char* value) {
  if (handshake_done_ || closed_ || name == nullptr || !isToken(name) ||
      reservedUpstreamHeader(name) || (value != nullptr && !isFieldValue(value))) {
    UPGATE_LOG(warn, session_.sessionId(), "plugin {}: set_upstream_header refused", nameOf(i));
    return -1;
  }
  header_edits_.erase(std::remove_if(header_edits_.begin(), header_edits_.end(),
                                     [&](const auto& e) { return iequals(e.first, name); }),
                      header_edits_.end());
  header_edits_.emplace_back(name,
                             value != nullptr ? std::optional<std::string>(value) : std::nullopt);
  return 0;
}

int PluginChain::apiSetIdentity(size_t i, const char* user, const char* claims_json) {
  if (closed_ || user == nullptr || user[0] == '\0' || !isFieldValue(user)) return -1;
  if (claims_json != nullptr) {
    nlohmann::json j = nlohmann::json::parse(claims_json, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      UPGATE_LOG(warn, session_.sessionId(), "plugin {}: set_identity claims are not a JSON object",
                 nameOf(i));
      return -1;
    }
  }
  identity_user_ = user;
  identity_claims_ = claims_json != nullptr ? claims_json : "";
  return 0;
}

const char* PluginChain::apiIdentity(const char** claims_json) const {
  if (claims_json != nullptr) {
    *claims_json = identity_claims_.empty() ? nullptr : identity_claims_.c_str();
  }
  return identity_user_.empty() ? nullptr : identity_user_.c_str();
}

void PluginChain::apiLog(size_t i, upgate_log_level_t level, const char* message) const {
  const char* msg = message != nullptr ? message : "";
  switch (level) {
    case UPGATE_LOG_DEBUG:
      UPGATE_LOG(debug, session_.sessionId(), "plugin {}: {}", nameOf(i), msg);
      break;
    case UPGATE_LOG_INFO:
      UPGATE_LOG(info, session_.sessionId(), "plugin {}: {}", nameOf(i), msg);
      break;
    case UPGATE_LOG_WARN:
      UPGATE_LOG(warn, session_.sessionId(), "plugin {}: {}", nameOf(i), msg);
      break;
    default:
      UPGATE_LOG(err, session_.sessionId(), "plugin {}: {}", nameOf(i), msg);
      break;
  }
}

uint64_t PluginChain::apiTimerStart(size_t i, uint64_t delay_ms, upgate_timer_cb cb, void* arg) {
  if (closed_ || cb == nullptr) return 0;
  // Saturated: a huge delay means "not for ages", not a wrapped-around deadline that is due now.
  const uint64_t now = session_.nowMs();
  const uint64_t deadline = delay_ms > UINT64_MAX - 1 - now ? UINT64_MAX - 1 : now + delay_ms;
  Timer t{next_timer_id_++, deadline, i, cb, arg};
  timers_.push_back(t);
  updateWakeup();
  return t.id;
}

void PluginChain::apiTimerCancel(size_t i, uint64_t id) {
  auto it = std::find_if(timers_.begin(), timers_.end(),
                         [&](const Timer& t) { return t.id == id && t.index == i; });
  if (it == timers_.end()) return;
  timers_.erase(it);
  updateWakeup();
}

int PluginChain::apiResume(size_t i, upgate_decision_t decision, const upgate_reject_t* reject,
                           const upgate_route_t* route) {
  if (closed_ || phase_ == Phase::Done || pos_ != i) return -1;
  if (decision != UPGATE_CONTINUE && decision != UPGATE_REJECT) return -1;
  const char* chosen = phase_ == Phase::Route && route != nullptr ? route->upstream : nullptr;
  if (in_hook_ && *in_hook_ == i) {
    // Resumed before the hook even returned PAUSE: remember it, run() picks it up.
    EarlyResume er{decision, std::nullopt, std::nullopt};
    if (decision == UPGATE_REJECT) {
      er.reject = buildReject(i, reject);
    } else if (chosen != nullptr && chosen[0] != '\0') {
      er.upstream = std::string(chosen);
    }
    early_resume_ = std::move(er);
    return 0;
  }
  if (!paused_) return -1;
  paused_ = false;
  outcome_ = ChainOutcome::Continue;
  ++depth_;
  if (decision == UPGATE_REJECT) {
    finishReject(buildReject(i, reject));
  } else {
    if (chosen != nullptr && chosen[0] != '\0') upstream_ = chosen;
    advance();
    run();
  }
  updateWakeup();
  if (outcome_ != ChainOutcome::Paused) notify_resumed_ = true;
  --depth_;
  leave();
  return 0;
}

int PluginChain::apiClose(size_t i, uint16_t code, const char* reason) {
  // Only a WebSocket or SSE stream can be closed this way: a plain HTTP request admitted when
  // it arrived runs to its end (its response is not cut mid-body), which -2 tells for good.
  if (handshake_done_ && !closable_) return -2;
  if (!handshake_done_ || closed_ || !validCloseCode(code)) return -1;
  UPGATE_LOG(info, session_.sessionId(), "plugin {}: closes the session with {}", nameOf(i), code);
  std::string sent = wireCloseReason(reason != nullptr ? reason : "");
  if (!pending_close_) pending_close_.emplace(code, sent);
  leave();  // delivered at once only if called outside any chain frame
  return 0;
}

// ---- HTTP callouts ---------------------------------------------------------------------------

uint64_t PluginChain::apiHttpRequest(size_t i, const char* method, const char* url,
                                     const upgate_header_t* headers, size_t n_headers,
                                     const char* body, size_t body_len, uint64_t timeout_ms,
                                     upgate_http_cb cb, void* arg) {
  auto refuse = [&](const char* why) {
    UPGATE_LOG(warn, session_.sessionId(), "plugin {}: http_request refused: {}", nameOf(i), why);
    return uint64_t{0};
  };
  if (closed_) return refuse("the session has ended");
  if (cb == nullptr || method == nullptr || url == nullptr || timeout_ms == 0 ||
      (headers == nullptr && n_headers != 0) || (body == nullptr && body_len != 0)) {
    return refuse("invalid argument");
  }
  if (!isToken(method)) return refuse("the method is not a token");
  size_t mine = static_cast<size_t>(std::count_if(callouts_.begin(), callouts_.end(),
                                                  [&](const Callout& c) { return c.index == i; }));
  if (mine >= kMaxCalloutsPerInstance) return refuse("too many callouts in flight");
  PluginHttpRequest req;
  req.method = method;
  if (!parseHttpUrl(url, req.endpoint, req.target)) {
    return refuse("the URL is not http://host[:port]/path");
  }
  for (size_t h = 0; h < n_headers; ++h) {
    const upgate_header_t& f = headers[h];
    if (f.name == nullptr || f.value == nullptr || !isToken(f.name) || !isFieldValue(f.value)) {
      return refuse("an invalid header field");
    }
    req.headers.push_back(Header{f.name, f.value});
  }
  if (body_len != 0) req.body.assign(body, body_len);
  // A day is longer than any pause or session the callout could serve.
  req.timeout = Millis(static_cast<int64_t>(std::min<uint64_t>(timeout_ms, 86400000)));

  const uint64_t id = next_callout_id_++;
  std::weak_ptr<char> alive = alive_;
  std::unique_ptr<PluginHttpCall> call =
      session_.startHttpCall(std::move(req), [this, alive, id](PluginHttpResult& r) {
        if (!alive.expired()) onHttpDone(id, r);
      });
  if (!call) return refuse("the gateway could not start it");
  callouts_.push_back(Callout{id, i, cb, arg, std::move(call)});
  return id;
}

void PluginChain::apiHttpCancel(size_t i, uint64_t id) {
  auto it = std::find_if(callouts_.begin(), callouts_.end(),
                         [&](const Callout& c) { return c.id == id && c.index == i; });
  if (it == callouts_.end()) return;
  std::unique_ptr<PluginHttpCall> call = std::move(it->call);
  callouts_.erase(it);
  call->cancel();
}

void PluginChain::cancelCallouts() {
  std::vector<Callout> calls;
  calls.swap(callouts_);
  for (Callout& c : calls) c.call->cancel();
}

void PluginChain::onHttpDone(uint64_t id, PluginHttpResult& r) {
  if (closed_) return;
  auto it = std::find_if(callouts_.begin(), callouts_.end(),
                         [&](const Callout& c) { return c.id == id; });
  if (it == callouts_.end()) return;
  const size_t index = it->index;
  const upgate_http_cb cb = it->cb;
  void* const arg = it->arg;
  // The call is finished; dropping it now keeps the count right for callouts the callback starts.
  callouts_.erase(it);

  std::vector<upgate_header_t> fields;
  fields.reserve(r.headers.size());
  for (const Header& h : r.headers)
    fields.push_back(upgate_header_t{h.name.c_str(), h.value.c_str()});
  upgate_http_response_t resp{};
  resp.struct_size = sizeof(resp);
  resp.result = static_cast<uint32_t>(r.result);
  const bool ok = r.result == UPGATE_HTTP_OK;
  resp.status = ok ? static_cast<uint16_t>(r.status) : 0;
  resp.headers = ok && !fields.empty() ? fields.data() : nullptr;
  resp.header_count = ok ? fields.size() : 0;
  resp.body = ok ? r.body.c_str() : "";
  resp.body_len = ok ? r.body.size() : 0;
  resp.error = ok ? "" : r.error.c_str();

  ++depth_;
  try {
    cb(&handles_[index], arg, &resp);
  } catch (...) {
    UPGATE_LOG(err, session_.sessionId(), "plugin {}: an HTTP callback threw", nameOf(index));
  }
  updateWakeup();
  --depth_;
  leave();
}

}  // namespace upgate
