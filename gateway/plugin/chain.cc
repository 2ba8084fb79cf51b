#include "plugin/chain.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/log.h"
#include "http/response_writer.h"
#include "plugin/host.h"

namespace upgate {

namespace {

constexpr size_t kMaxRejectBody = 64 * 1024;
constexpr size_t kMaxCloseReason = 123;  // RFC 6455 §5.5: control payload <= 125 with the code

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
    headers.erase(std::remove_if(headers.begin(), headers.end(),
                                 [&](const Header& h) { return iequals(h.name, name); }),
                  headers.end());
    if (value) headers.push_back(Header{name, *value});
  }
}

void PluginChain::handshakeDone() {
  handshake_done_ = true;
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
      if (out.close_reason != nullptr) v.close_reason = out.close_reason;
      if (v.close_reason.size() > kMaxCloseReason) v.close_reason.resize(kMaxCloseReason);
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

bool PluginChain::validCloseCode(uint16_t code) {
  return UPGATE_CLOSE_CODE_OK(code);
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
  Timer t{next_timer_id_++, session_.nowMs() + delay_ms, i, cb, arg};
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
  if (!handshake_done_ || closed_ || !validCloseCode(code)) return -1;
  UPGATE_LOG(info, session_.sessionId(), "plugin {}: closes the session with {}", nameOf(i), code);
  std::string sent = reason != nullptr ? reason : "";
  if (sent.size() > kMaxCloseReason) sent.resize(kMaxCloseReason);
  if (!pending_close_) pending_close_.emplace(code, sent);
  leave();  // delivered at once only if called outside any chain frame
  return 0;
}

}  // namespace upgate
