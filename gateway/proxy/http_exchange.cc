#include "proxy/http_exchange.h"

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <utility>

#include "core/log.h"
#include "http/forwarding.h"
#include "http/headers.h"
#include "http/llhttp_strict.h"
#include "http/response_parser.h"
#include "proxy/worker.h"

namespace upgate {

namespace {

// llhttp is C: trampolines recover the exchange from parser->data and call one member.
template <int (HttpExchange::*Member)(const char*, size_t) noexcept>
int dataCb(llhttp_t* parser, const char* at, size_t len) noexcept {
  return (static_cast<HttpExchange*>(parser->data)->*Member)(at, len);
}

template <int (HttpExchange::*Member)() noexcept>
int eventCb(llhttp_t* parser) noexcept {
  return (static_cast<HttpExchange*>(parser->data)->*Member)();
}

// A chunked body is decoded by an llhttp request parser that first reads this head: from then
// on it is in the body state and frames exactly what the client sends next.
constexpr std::string_view kChunkedPrime = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";

// RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
bool isIdempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "TRACE" ||
         method == "PUT" || method == "DELETE";
}

void appendChunk(std::string& out, const char* data, size_t len) {
  char size[24];
  int n = std::snprintf(size, sizeof(size), "%zx\r\n", len);
  out.append(size, static_cast<size_t>(n));
  out.append(data, len);
  out.append("\r\n");
}

// RFC 9110 §8.6: 1*DIGIT. No sign, no spaces, no list; overflow is an error.
bool parseContentLength(std::string_view v, uint64_t& out) {
  if (v.empty() || v.size() > 19) return false;  // 19 digits always fit in uint64_t
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  out = n;
  return true;
}

std::string uvName(int err) {
  return uv_err_name(err);
}

}  // namespace

// ---- Request checks and the upstream head -------------------------------------------------------

RequestFraming checkRequest(const RequestHead& head) {
  RequestFraming f;
  auto reject = [&f](int status, std::string why) {
    f.error_status = status;
    f.error = std::move(why);
    return f;
  };
  if (head.http_major != 1) return reject(505, "only HTTP/1.x is proxied");
  if (head.method == "CONNECT") return reject(405, "CONNECT is not proxied on http routes");
  // RFC 9112 §3.2: exactly one Host in HTTP/1.1; two could route one way and be served another.
  const size_t hosts = countHeader(head.headers, "Host");
  if (hosts > 1) return reject(400, "more than one Host header");
  if (hosts == 0 && head.http_minor >= 1) return reject(400, "HTTP/1.1 request without Host");
  const std::string& t = head.target;
  if (t == "*") {
    if (head.method != "OPTIONS") return reject(400, "asterisk-form target with " + head.method);
  } else if (t.empty() || (t[0] != '/' && t.find("://") == std::string::npos)) {
    return reject(400, "authority-form target without CONNECT");
  }

  // RFC 9112 §6.1 and §6.3: the framing must be unambiguous, or a server behind us could see a
  // different request boundary than we do.
  size_t te_headers = 0, chunked = 0, codings = 0;
  bool chunked_last = false;
  std::string other;
  for (const Header& h : head.headers) {
    if (!iequals(h.name, "Transfer-Encoding")) continue;
    ++te_headers;
    for (std::string_view token : splitTokens(h.value)) {
      ++codings;
      chunked_last = iequals(token, "chunked");
      if (chunked_last) {
        ++chunked;
      } else if (other.empty()) {
        other.assign(token);
      }
    }
  }
  const size_t lengths = countHeader(head.headers, "Content-Length");
  if (te_headers > 0) {
    if (lengths > 0) return reject(400, "both Content-Length and Transfer-Encoding");
    if (head.http_minor == 0) return reject(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (codings == 0) return reject(400, "empty Transfer-Encoding");
    if (!chunked_last) return reject(400, "Transfer-Encoding does not end in chunked");
    if (chunked > 1) return reject(400, "chunked applied more than once");
    if (!other.empty()) return reject(501, "transfer coding \"" + other + "\" is not supported");
    f.body = RequestFraming::Body::Chunked;
    return f;
  }
  if (lengths > 1) return reject(400, "more than one Content-Length");
  if (lengths == 1) {
    if (!parseContentLength(*findHeader(head.headers, "Content-Length"), f.length)) {
      return reject(400, "invalid Content-Length");
    }
    f.body = RequestFraming::Body::Length;
  }
  return f;
}

std::string upstreamHttpRequest(const RequestHead& head, const ForwardInfo& forward,
                                const RequestFraming& framing, const std::string& default_host) {
  const HeaderList& in = head.headers;
  const std::string* host = findHeader(in, "Host");

  std::string out;
  out.reserve(512);
  out.append(head.method).push_back(' ');
  if (head.target == "*") {
    out.append("*");
  } else if (head.target.empty()) {
    out.append("/");
  } else if (head.target[0] == '/') {
    out.append(std::string_view(head.target).substr(0, head.target.find('#')));
  } else {
    // absolute-form: a reverse proxy sends origin-form (RFC 9112 §3.2.1). Routing used Host.
    out.append(head.path);
    if (!head.query.empty()) out.append("?").append(head.query);
  }
  out.append(" HTTP/1.1\r\n");
  for (const Header& h : in) {
    if (isHopByHop(h.name) || iequals(h.name, "Content-Length") || isProxyHeader(h.name)) {
      continue;
    }
    // An HTTP/1.0 client cannot receive the 100 an Expect asks for (RFC 9110 §10.1.1).
    if (head.http_minor == 0 && iequals(h.name, "Expect")) continue;
    appendHeader(out, h.name, h.value);
  }
  if (host == nullptr) appendHeader(out, "Host", default_host);
  if (framing.body == RequestFraming::Body::Length) {
    appendHeader(out, "Content-Length", std::to_string(framing.length));
  } else if (framing.body == RequestFraming::Body::Chunked) {
    appendHeader(out, "Transfer-Encoding", "chunked");
  }

  appendProxyHeaders(out, in, forward);
  out.append("\r\n");
  return out;
}

// ---- Construction -----------------------------------------------------------------------------

HttpExchange::HttpExchange(Worker& worker, const Generation& generation, UpstreamPool& pool,
                           HttpExchangeOwner& owner, const RouteConfig& route,
                           const UpstreamConfig& upstream, RequestHead head,
                           const ForwardInfo& forward)
    : HttpExchange(
          HttpExchangeContext{pool, generation.config->limits,
                              generation.upstreamTls(upstream.name), worker.nextEndpoint(upstream),
                              static_cast<uint64_t>(generation.config->timeouts.send.count())},
          owner, route, upstream, std::move(head), forward) {}

HttpExchange::HttpExchange(const HttpExchangeContext& ctx, HttpExchangeOwner& owner,
                           const RouteConfig& route, const UpstreamConfig& upstream,
                           RequestHead head, const ForwardInfo& forward)
    : pool_(ctx.pool),
      owner_(owner),
      route_(route),
      upstream_(upstream),
      tls_(ctx.tls),
      first_endpoint_(ctx.first_endpoint),
      high_water_(ctx.limits.high_water),
      send_timeout_ms_(ctx.send_timeout_ms),
      max_response_head_bytes_(ctx.limits.max_response_head_bytes),
      max_headers_(ctx.limits.max_headers),
      max_trailer_bytes_(ctx.limits.max_head_bytes),
      head_(std::move(head)),
      forward_(forward) {
  llhttp_init(&resp_parser_, HTTP_RESPONSE, &responseSettings());
  resp_parser_.data = this;
}

HttpExchange::~HttpExchange() {
  if (conn_ != nullptr) releaseConn(false);
}

const llhttp_settings_t& HttpExchange::responseSettings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = eventCb<&HttpExchange::respMessageBegin>;
    s.on_status = dataCb<&HttpExchange::respStatus>;
    s.on_header_field = dataCb<&HttpExchange::respHeaderField>;
    s.on_header_field_complete = eventCb<&HttpExchange::respHeaderFieldComplete>;
    s.on_header_value = dataCb<&HttpExchange::respHeaderValue>;
    s.on_header_value_complete = eventCb<&HttpExchange::respHeaderValueComplete>;
    s.on_headers_complete = eventCb<&HttpExchange::respHeadersComplete>;
    s.on_body = dataCb<&HttpExchange::respBody>;
    s.on_message_complete = eventCb<&HttpExchange::respMessageComplete>;
    return s;
  }();
  return kSettings;
}

const llhttp_settings_t& HttpExchange::requestSettings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_header_field = dataCb<&HttpExchange::reqHeaderBytes>;  // trailers: counted, dropped
    s.on_header_value = dataCb<&HttpExchange::reqHeaderBytes>;
    s.on_body = dataCb<&HttpExchange::reqBody>;
    s.on_message_complete = eventCb<&HttpExchange::reqMessageComplete>;
    return s;
  }();
  return kSettings;
}

// ---- Request side -----------------------------------------------------------------------------

size_t HttpExchange::start(const char* early, size_t len) {
  if (started_ || finished_) return 0;
  started_ = true;
  framing_ = checkRequest(head_);
  if (framing_.error_status != 0) {
    UPGATE_LOG(debug, owner_.sessionId(), "http: refused {} {}: {}", head_.method, head_.target,
               framing_.error);
    fail(framing_.error_status, framing_.error);
    return 0;
  }
  client_11_ = head_.http_minor >= 1;
  client_wants_ka_ = client_11_ ? !headerHasToken(head_.headers, "Connection", "close")
                                : headerHasToken(head_.headers, "Connection", "keep-alive");
  head_request_ = head_.method == "HEAD";
  retryable_ = isIdempotent(head_.method) && framing_.body == RequestFraming::Body::None;
  owner_.clientStream().setHighWater(high_water_);

  switch (framing_.body) {
    case RequestFraming::Body::None:
      req_done_ = true;
      break;
    case RequestFraming::Body::Length:
      body_left_ = framing_.length;
      req_done_ = body_left_ == 0;
      break;
    case RequestFraming::Body::Chunked:
      llhttpInitStrict(&req_parser_, HTTP_REQUEST, &requestSettings());
      req_parser_.data = this;
      // Cannot fail: a constant, valid head. Its header bytes are not trailer bytes.
      llhttpExecuteStrict(&req_parser_, kChunkedPrime.data(), kChunkedPrime.size());
      trailer_bytes_ = 0;
      break;
  }
  size_t used = 0;
  if (!req_done_ && len > 0 && !consumeBody(early, len, &used)) return 0;
  // The body flows while we connect; consumeBody() stopped reads if too much is waiting.
  if (!req_done_ && !client_paused_) owner_.clientStream().readStart();
  connectNext();  // may end the exchange (every endpoint failed at once): touch nothing after
  return used;
}

size_t HttpExchange::onClientData(const char* data, size_t len) {
  if (!started_ || finished_ || req_done_) return 0;
  size_t used = 0;
  if (!consumeBody(data, len, &used)) return 0;
  if (!flushUpstream()) return 0;
  return used;
}

bool HttpExchange::consumeBody(const char* data, size_t len, size_t* used) {
  if (framing_.body == RequestFraming::Body::Length) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, body_left_));
    pending_up_.append(data, n);
    body_left_ -= n;
    req_done_ = body_left_ == 0;
    *used = n;
  } else {
    const llhttp_errno_t err = llhttpExecuteStrict(&req_parser_, data, len);
    if (err == HPE_PAUSED) {  // reqMessageComplete: the body ended inside this read
      *used = static_cast<size_t>(llhttp_get_error_pos(&req_parser_) - data);
    } else if (err == HPE_OK) {
      *used = len;
    } else {
      const char* why =
          err == HPE_USER ? "trailer section too large" : llhttp_get_error_reason(&req_parser_);
      failOrAbort(400, std::string("malformed chunked request body: ") +
                           (why != nullptr ? why : llhttp_errno_name(err)));
      return false;
    }
  }
  bytes_in_ += *used;
  if (!connected_ && !req_done_ && pending_up_.size() > high_water_) pauseClient();
  return true;
}

int HttpExchange::reqHeaderBytes(const char*, size_t len) noexcept {
  trailer_bytes_ += len;
  return trailer_bytes_ > max_trailer_bytes_ ? HPE_USER : HPE_OK;
}

int HttpExchange::reqBody(const char* at, size_t len) noexcept {
  // Re-framed: the app parses our canonical chunks, never the client's (extensions, odd
  // whitespace or line ends that llhttp's loose mode tolerates).
  appendChunk(pending_up_, at, len);
  return HPE_OK;
}

int HttpExchange::reqMessageComplete() noexcept {
  pending_up_.append("0\r\n\r\n");  // request trailers are dropped (RFC 9110 §6.5.1 allows it)
  req_done_ = true;
  return HPE_PAUSED;  // whatever follows is the next request: the owner keeps it
}

bool HttpExchange::flushUpstream() {
  if (!connected_ || pending_up_.empty()) return true;
  Stream& up = conn_->stream();
  const int rc = up.write(pending_up_.data(), pending_up_.size());
  pending_up_.clear();
  if (rc != 0) {
    upstreamFailed("upstream write: " + uvName(rc));
    return false;
  }
  if (!got_response_byte_) last_activity_ = conn_->now();  // progress before the answer
  if (!req_done_ && up.pendingBytes() > high_water_) pauseClient();
  return true;
}

void HttpExchange::pauseClient() {
  if (client_paused_) return;
  client_paused_ = true;
  owner_.clientStream().readStop();
  armTimer();  // a re-check, when no onDrain is sure to come (see armTimer)
}

void HttpExchange::resumeClient() {
  if (!client_paused_) return;
  client_paused_ = false;
  owner_.clientStream().readStart();  // a failure surfaces on the client stream itself
}

UpstreamTarget HttpExchange::targetFor(const HostPort& endpoint) const {
  UpstreamTarget t;
  t.endpoint = endpoint;
  t.tls = tls_;
  if (tls_ && upstream_.tls) t.server_name = upstream_.tls->server_name;
  t.connect_timeout = upstream_.connect_timeout;
  return t;
}

void HttpExchange::connectNext() {
  const std::vector<HostPort>& endpoints = upstream_.endpoints;
  while (attempts_ < endpoints.size()) {
    const HostPort& ep = endpoints[(first_endpoint_ + attempts_) % endpoints.size()];
    ++attempts_;
    endpoint_text_ = ep.text();
    const UpstreamTarget target = targetFor(ep);
    if (!fresh_only_) {
      if (UpstreamConn* conn = pool_.acquireIdle(target, this)) {
        conn_ = conn;
        reused_ = true;
        sendRequest();  // may end the exchange
        return;
      }
    }
    int err = 0;
    if (UpstreamConn* conn = pool_.connect(target, this, &err)) {
      conn_ = conn;
      reused_ = false;
      return;  // upstreamConnected() follows
    }
    last_error_ = err;
    UPGATE_LOG(warn, owner_.sessionId(), "upstream {} ({}): connect failed: {}", endpoint_text_,
               upstream_.name, uv_strerror(err));
  }
  // Every endpoint failed once: a timeout anywhere means the upstream is slow (504), else down.
  fail(any_timeout_ ? 504 : 502,
       "upstream \"" + upstream_.name + "\" unavailable (last error: " +
           (last_error_ != 0 ? uvName(last_error_) : std::string("timeout")) + ")");
}

void HttpExchange::upstreamConnected(int status) {
  if (finished_) return;
  if (status != 0) {
    any_timeout_ |= status == UV_ETIMEDOUT;
    last_error_ = status;
    std::string detail = conn_->errorDetail();
    UPGATE_LOG(warn, owner_.sessionId(), "upstream {} ({}): connect failed: {}", endpoint_text_,
               upstream_.name, detail.empty() ? uv_strerror(status) : detail);
    releaseConn(false);
    connectNext();
    return;
  }
  sendRequest();
}

void HttpExchange::sendRequest() {
  connected_ = true;
  got_response_byte_ = false;
  Stream& up = conn_->stream();
  up.setHighWater(high_water_);
  std::string wire = upstreamHttpRequest(head_, forward_, framing_, endpoint_text_);
  wire.append(pending_up_);  // body bytes read while connecting (bounded by high water)
  pending_up_.clear();
  int rc = up.readStart();
  if (rc == 0) rc = up.write(wire.data(), wire.size());
  if (rc != 0) {
    upstreamFailed("upstream write: " + uvName(rc));
    return;
  }
  last_activity_ = conn_->now();
  armTimer();
  if (client_paused_ && !req_done_ && up.pendingBytes() <= high_water_) resumeClient();
}

void HttpExchange::upstreamDrain() {
  if (!finished_ && client_paused_ && !req_done_) resumeClient();
}

void HttpExchange::onClientEof() {
  if (!started_ || finished_) return;
  client_eof_ = true;
  if (req_done_) return;  // a half-close after the request: the answer still goes out
  failOrAbort(400, "client closed before the end of the request body");
}

// ---- Response side ----------------------------------------------------------------------------

void HttpExchange::upstreamData(const char* data, size_t len) {
  if (finished_) return;
  got_response_byte_ = true;
  last_activity_ = conn_->now();
  const llhttp_errno_t err = llhttp_execute(&resp_parser_, data, len);
  size_t extra = 0;
  if (err == HPE_PAUSED) {  // respMessageComplete: the final response ended here
    extra = static_cast<size_t>(data + len - llhttp_get_error_pos(&resp_parser_));
  } else if (err != HPE_OK) {
    const char* reason = llhttp_get_error_reason(&resp_parser_);
    // A callback that refused says why; llhttp reports those refusals as HPE_USER from a data
    // callback but as HPE_CB_* from an event callback (on_headers_complete).
    std::string why = !resp_error_.empty() ? resp_error_ : reason ? reason : llhttp_errno_name(err);
    out_.clear();  // a head parsed in this read but not sent yet is dropped with the rest
    failOrAbort(502, "malformed upstream response: " + why);
    return;
  }
  if (!flushClient()) return;
  if (resp_complete_) {
    // Reusable: the upstream allows it, nothing follows the response on the wire (a server
    // talking out of turn cannot be trusted with the next request).
    complete(extra == 0 && llhttp_should_keep_alive(&resp_parser_) != 0);
    return;
  }
  if (!upstream_paused_ && owner_.clientStream().pendingBytes() > high_water_) {
    upstream_paused_ = true;
    send_check_at_ = conn_->now();
    send_check_pending_ = owner_.clientStream().unacknowledgedBytes();
    conn_->stream().readStop();
    armTimer();  // without the response deadline: a slow client is not a silent upstream
  }
}

void HttpExchange::onClientDrain() {
  if (finished_ || !upstream_paused_ || conn_ == nullptr) return;
  upstream_paused_ = false;
  last_activity_ = conn_->now();
  armTimer();
  if (conn_->stream().readStart() != 0) upstreamFailed("upstream read restart failed");
}

void HttpExchange::upstreamEof() {
  if (finished_) return;
  if (final_head_) {
    // A body delimited by the end of the connection ends here; any other is truncated. Over TLS
    // only a close_notify ends it: a bare FIN may be an attacker cutting it short.
    if (llhttp_message_needs_eof(&resp_parser_) != 0 && !conn_->stream().eofAuthenticated()) {
      failOrAbort(502,
                  "upstream ended its TLS connection without close_notify inside a response "
                  "delimited by the end of the connection (it may be cut short)");
      return;
    }
    llhttp_finish(&resp_parser_);
    if (resp_complete_) {
      if (!flushClient()) return;
      complete(false);
      return;
    }
    failOrAbort(502, "upstream closed the connection before the end of the response");
    return;
  }
  upstreamFailed(got_response_byte_ ? "upstream closed the connection inside the response head"
                                    : "upstream closed the connection before answering");
}

void HttpExchange::upstreamError(int uv_err) {
  if (finished_) return;
  upstreamFailed("upstream connection error: " + uvName(uv_err));
}

void HttpExchange::upstreamFailed(const std::string& what) {
  std::string reason = what;
  if (conn_ != nullptr) {
    const std::string detail = conn_->errorDetail();
    if (!detail.empty()) reason = detail;
  }
  // RFC 9112 §9.3.1: a kept-alive connection the server closed while idle fails before the
  // first response byte; a request that is safe to repeat gets one fresh connection.
  if (!got_response_byte_ && reused_ && !retried_ && retryable_ && !resp_started_) {
    UPGATE_LOG(debug, owner_.sessionId(), "upstream {}: pooled connection failed ({}), retrying",
               endpoint_text_, reason);
    retried_ = true;
    fresh_only_ = true;
    connected_ = false;
    releaseConn(false);
    attempts_ = 0;
    connectNext();
    return;
  }
  failOrAbort(502, reason);
}

// One timer (the connection's) serves two purposes once the request is sent:
//  - the response deadline, lazily: activity only moves last_activity_, and the timer re-arms
//    for the remainder when it fires early (no timer restart per read);
//  - while client reads are paused because the upstream is above high water: TcpStream promises
//    onDrain only when its own queue passed the mark. Over TLS the excess may sit in TlsStream's
//    pre-handshake buffer instead, which the kernel may then take whole: no onDrain would come,
//    so the pause is re-checked every kPauseRecheckMs.
void HttpExchange::armTimer() {
  if (conn_ == nullptr || !connected_) return;
  constexpr uint64_t kPauseRecheckMs = 20;
  uint64_t due = UINT64_MAX;
  if (route_.response_timeout.count() > 0 && !upstream_paused_) {
    const uint64_t timeout = static_cast<uint64_t>(route_.response_timeout.count());
    const uint64_t idle = conn_->now() - last_activity_;
    due = idle >= timeout ? 0 : timeout - idle;
  }
  if (client_paused_ && conn_->socketPendingBytes() <= high_water_) {
    due = std::min(due, kPauseRecheckMs);
  }
  if (upstream_paused_ && send_timeout_ms_ > 0) {
    const uint64_t waited = conn_->now() - send_check_at_;
    due = std::min(due, waited >= send_timeout_ms_ ? 0 : send_timeout_ms_ - waited);
  }
  if (due == UINT64_MAX) {
    conn_->stopTimer();
  } else {
    conn_->startTimer(due);
  }
}

void HttpExchange::upstreamTimer() {
  if (finished_) return;
  if (upstream_paused_ && send_timeout_ms_ > 0 &&
      conn_->now() - send_check_at_ >= send_timeout_ms_) {
    // Nothing is added to the client's queue while the upstream is paused: if what it has not
    // acknowledged did not shrink, it took nothing in all that time.
    const size_t pending = owner_.clientStream().unacknowledgedBytes();
    if (pending >= send_check_pending_) {
      failOrAbort(504, "client took no response bytes for " + std::to_string(send_timeout_ms_) +
                           " ms (timeouts.send)");
      return;
    }
    send_check_at_ = conn_->now();
    send_check_pending_ = pending;
  }
  if (client_paused_ && !req_done_ && conn_->stream().pendingBytes() <= high_water_ / 2) {
    resumeClient();
  }
  const uint64_t timeout = static_cast<uint64_t>(route_.response_timeout.count());
  if (upstream_paused_ || timeout == 0 || conn_->now() - last_activity_ < timeout) {
    armTimer();  // not due yet (or not running): wait for the rest
    return;
  }
  const std::string ms = std::to_string(timeout);
  if (got_response_byte_) {
    failOrAbort(504, "upstream sent nothing for " + ms + " ms inside its response");
  } else if (!req_done_ && !client_paused_) {
    // The upstream waits for a body the client is not sending.
    fail(408, "client sent no request body for " + ms + " ms");
  } else {
    fail(504, "upstream did not answer within " + ms + " ms");
  }
}

bool HttpExchange::flushClient() {
  if (out_.empty()) return true;
  const int rc = owner_.clientStream().write(out_.data(), out_.size());
  bytes_out_ += out_.size();
  // Interim heads alone do not start the response: a 502 or 504 may still follow them.
  if (final_head_) resp_started_ = true;
  if (out_.capacity() > 2 * LoopContext::kReadBufferSize) {
    std::string().swap(out_);  // one large read (many chunks) should not pin its buffer
  } else {
    out_.clear();
  }
  if (rc != 0) {
    abortWith("client write: " + uvName(rc));
    return false;
  }
  return true;
}

int HttpExchange::respMessageBegin() noexcept {
  resp_reason_.clear();
  resp_headers_.clear();
  field_.clear();
  value_.clear();
  resp_head_bytes_ = 0;
  in_head_ = true;
  return HPE_OK;
}

int HttpExchange::respCountHead(size_t len) noexcept {
  resp_head_bytes_ += len;
  if (resp_head_bytes_ <= max_response_head_bytes_) return HPE_OK;
  resp_error_ = (in_head_ ? "head exceeds " : "trailer section exceeds ") +
                std::to_string(max_response_head_bytes_) + " bytes";
  return HPE_USER;
}

int HttpExchange::respStatus(const char* at, size_t len) noexcept {
  resp_reason_.append(at, len);
  return respCountHead(len);
}

int HttpExchange::respHeaderField(const char* at, size_t len) noexcept {
  if (in_head_) field_.append(at, len);
  return respCountHead(len);
}

int HttpExchange::respHeaderFieldComplete() noexcept {
  // ": " and CRLF, once per line however the name arrived (a name split over reads comes in
  // several callbacks).
  if (int rc = respCountHead(4); rc != HPE_OK) return rc;
  if (!in_head_) return HPE_OK;
  // RFC 9112 §5.1: a proxy removes whitespace between a response's field name and the colon
  // (llhttp's loose mode leaves it in the name), as ResponseParser does.
  while (!field_.empty() && (field_.back() == ' ' || field_.back() == '\t')) field_.pop_back();
  if (!isToken(field_)) {
    resp_error_ = "invalid header name";
    return HPE_USER;
  }
  if (resp_headers_.size() >= max_headers_) {
    resp_error_ = "more than " + std::to_string(max_headers_) + " header fields";
    return HPE_USER;
  }
  return HPE_OK;
}

int HttpExchange::respHeaderValue(const char* at, size_t len) noexcept {
  if (in_head_) value_.append(at, len);
  return respCountHead(len);
}

int HttpExchange::respHeaderValueComplete() noexcept {
  if (in_head_) resp_headers_.push_back(Header{std::move(field_), std::string(trimOws(value_))});
  field_.clear();
  value_.clear();
  return HPE_OK;
}

int HttpExchange::respHeadersComplete() noexcept {
  in_head_ = false;
  resp_head_bytes_ = 0;  // trailers, if any, get a budget of their own
  return onResponseHead();
}

int HttpExchange::onResponseHead() {
  const int status = resp_parser_.status_code;
  if (resp_parser_.http_major != 1) {
    resp_error_ = "not HTTP/1.x";
    return HPE_USER;
  }
  // Anything below 100 would otherwise pass for an interim answer and reach the client as one.
  if (!isThreeDigitStatus(status)) {
    resp_error_ = "status code " + std::to_string(status) + " is not three digits";
    return HPE_USER;
  }
  if (status == 101) {  // we never forward Upgrade, so nothing may switch
    resp_error_ = "101 Switching Protocols to a request without Upgrade";
    return HPE_USER;
  }
  if (status < 200) {
    // RFC 9110 §15.2: a proxy forwards 1xx, except to HTTP/1.0 clients. No body ever.
    interim_ = true;
    if (client_11_) appendResponseHead(true);
    return 1;
  }
  interim_ = false;
  final_head_ = true;
  status_ = status;
  const bool no_body = head_request_ || status == 204 || status == 304;
  bool delimited = true;
  if (no_body) {
    out_body_ = OutBody::None;
  } else if ((resp_parser_.flags & F_CHUNKED) != 0) {
    out_body_ = client_11_ ? OutBody::Chunked : OutBody::Raw;  // 1.0: decoded, close-delimited
    delimited = client_11_;
  } else if (llhttp_message_needs_eof(&resp_parser_) != 0) {
    // Delimited by the end of the upstream connection: chunked to an HTTP/1.1 client, so it
    // can tell the whole body (the last chunk) from one cut short, and keep its connection.
    // Not when the upstream's codings name chunked already (not last): chunked may not be
    // applied twice (RFC 9112 §6.1), so that body goes as it came, then close.
    const bool chunk = client_11_ && !headerHasToken(resp_headers_, "Transfer-Encoding", "chunked");
    out_body_ = chunk ? OutBody::Chunked : OutBody::Raw;
    delimited = chunk;
  } else {
    out_body_ = OutBody::Raw;  // Content-Length: byte for byte
  }
  // A body still arriving from the client when the answer starts means the connection cannot
  // carry another request afterwards: say so now.
  client_ka_ = client_wants_ka_ && delimited && req_done_ && !client_eof_;
  appendResponseHead(false);
  return no_body ? 1 : 0;  // 1: llhttp expects no body (HEAD, 204, 304)
}

void HttpExchange::appendResponseHead(bool interim) {
  const int status = resp_parser_.status_code;
  out_.append("HTTP/1.1 ").append(std::to_string(status)).append(" ").append(resp_reason_);
  out_.append("\r\n");
  const bool bodiless_status = status < 200 || status == 204;  // RFC 9110 §8.6, §6.1
  bool has_te = false;
  for (const Header& h : resp_headers_) {
    if (iequals(h.name, "Transfer-Encoding")) {
      has_te = true;
      continue;
    }
    if (iequals(h.name, "Content-Length")) {
      if (bodiless_status || (resp_parser_.flags & F_CHUNKED) != 0) continue;
    } else if (isHopByHop(h.name) || headerHasToken(resp_headers_, "Connection", h.name)) {
      continue;
    }
    appendHeader(out_, h.name, h.value);
  }
  if (!interim) {
    // Chunked output, a read-until-close body or a HEAD/304 describing one keep the upstream's
    // codings; an HTTP/1.0 client cannot be sent any. A body the upstream delimits by closing
    // goes chunked to an HTTP/1.1 client: its codings, then chunked.
    if (out_body_ == OutBody::Chunked && (resp_parser_.flags & F_CHUNKED) == 0) {
      std::string codings = joinValues(resp_headers_, "Transfer-Encoding");
      appendHeader(out_, "Transfer-Encoding", codings.empty() ? "chunked" : codings + ", chunked");
    } else if (has_te && client_11_ && !bodiless_status) {
      appendHeader(out_, "Transfer-Encoding", joinValues(resp_headers_, "Transfer-Encoding"));
    }
    appendHeader(out_, "Connection", client_ka_ ? "keep-alive" : "close");
  }
  out_.append("\r\n");
}

int HttpExchange::respBody(const char* at, size_t len) noexcept {
  if (out_body_ == OutBody::Chunked) {
    appendChunk(out_, at, len);
  } else {
    out_.append(at, len);
  }
  return HPE_OK;
}

int HttpExchange::respMessageComplete() noexcept {
  if (interim_) return HPE_OK;  // the final response follows on the same connection
  if (out_body_ == OutBody::Chunked) out_.append("0\r\n\r\n");  // upstream trailers dropped
  resp_complete_ = true;
  return HPE_PAUSED;
}

// ---- Ends -------------------------------------------------------------------------------------

void HttpExchange::releaseConn(bool reusable) {
  UpstreamConn* conn = conn_;
  conn_ = nullptr;
  connected_ = false;
  if (conn != nullptr) pool_.release(conn, reusable);
}

void HttpExchange::complete(bool upstream_reusable) {
  finished_ = true;
  // Only a fully sent request leaves the connection in step for the next one.
  const bool reusable =
      upstream_reusable && req_done_ && pending_up_.empty() && conn_->stream().pendingBytes() == 0;
  releaseConn(reusable);  // back in the pool before the upcall: the next request may take it
  owner_.exchangeDone(client_ka_ && req_done_ && !client_eof_, status_, bytes_in_, bytes_out_);
}

void HttpExchange::fail(int status, const std::string& reason) {
  finished_ = true;
  releaseConn(false);
  owner_.exchangeFailed(status, reason);
}

void HttpExchange::abortWith(const std::string& reason) {
  finished_ = true;
  releaseConn(false);
  owner_.exchangeAborted(reason);
}

void HttpExchange::failOrAbort(int status, const std::string& reason) {
  if (resp_started_) {
    abortWith(reason);
  } else {
    fail(status, reason);
  }
}

void HttpExchange::abort() {
  finished_ = true;
  releaseConn(false);
}

}  // namespace upgate
