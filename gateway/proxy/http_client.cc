#include "proxy/http_client.h"

#include <netinet/in.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <exception>
#include <string_view>
#include <utility>

#include "core/handle.h"
#include "core/log.h"
#include "http/response_parser.h"
#include "net/tcp_stream.h"
#include "tls/tls_stream.h"

namespace upgate {

namespace {

enum class CallState { Queued, Resolving, Connecting, Waiting, Done };
enum class ConnState { Connecting, Busy, Idle, Closing };

constexpr size_t kMaxAddresses = 8;  // of one name; tried in resolver order

bool isIdempotent(const std::string& method) {
  return method == "GET" || method == "HEAD";
}

bool sendsContentLength(const HttpRequest& r) {
  return !r.body.empty() || r.method == "POST" || r.method == "PUT" || r.method == "PATCH";
}

std::string uvName(int err) {
  return uv_err_name(err);
}

// ResponseParser words its errors for the proxy ("upstream ..."); callers of this client see
// "malformed response: ...", "response body exceeds N bytes", "server closed ...".
std::string responseError(const std::string& reason) {
  static constexpr std::pair<std::string_view, std::string_view> kRewrites[] = {
      {"malformed upstream response", "malformed response"},
      {"upstream response", "response"},
      {"upstream closed", "server closed"},
  };
  for (const auto& [from, to] : kRewrites) {
    if (reason.compare(0, from.size(), from) == 0) {
      return std::string(to) + reason.substr(from.size());
    }
  }
  return reason;
}

bool validTarget(const std::string& target) {
  if (target.empty()) return false;
  for (unsigned char ch : target) {
    if (ch <= 0x20 || ch == 0x7f) return false;
  }
  return true;
}

// Empty if the request can be sent; else what is wrong with it.
std::string validate(const HttpRequest& r) {
  if (!isToken(r.method)) return "invalid request: bad method";
  if (!validTarget(r.target)) return "invalid request: bad target";
  if (r.endpoint.host.empty() || r.endpoint.port == 0 || !validTarget(r.endpoint.host)) {
    return "invalid request: bad endpoint";
  }
  for (const Header& h : r.headers) {
    if (!isToken(h.name) || !isFieldValue(h.value)) {
      return "invalid request: bad header " + (isToken(h.name) ? h.name : std::string("name"));
    }
  }
  return {};
}

std::string hostHeader(const HttpRequest& r) {
  const HostPort& ep = r.endpoint;
  std::string host = ep.host.find(':') != std::string::npos ? "[" + ep.host + "]" : ep.host;
  const uint16_t default_port = r.tls ? 443 : 80;
  if (ep.port != default_port) host += ":" + std::to_string(ep.port);
  return host;
}

std::string serialize(const HttpRequest& r) {
  std::string out;
  out.reserve(256 + r.body.size());
  out.append(r.method).append(" ").append(r.target).append(" HTTP/1.1\r\n");
  if (findHeader(r.headers, "host") == nullptr)
    out.append("Host: ").append(hostHeader(r)).append("\r\n");
  for (const Header& h : r.headers) {
    // We frame the body ourselves, always with Content-Length.
    if (iequals(h.name, "content-length") || iequals(h.name, "transfer-encoding")) continue;
    out.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  if (sendsContentLength(r)) {
    out.append("Content-Length: ").append(std::to_string(r.body.size())).append("\r\n");
  }
  out.append("\r\n").append(r.body);
  return out;
}

// Connections are shared only between requests with the same address and TLS settings. The
// TlsContext pointer is a safe identity: every connection made with it holds a reference.
std::string poolKey(const HttpRequest& r) {
  std::string key = r.endpoint.host + "|" + std::to_string(r.endpoint.port);
  if (r.tls) {
    key += "|tls|" + std::to_string(reinterpret_cast<uintptr_t>(r.tls.get())) + "|" +
           r.tls_server_name;
  }
  return key;
}

bool parseLiteral(const HostPort& hp, sockaddr_storage& out) {
  out = {};
  return uv_ip4_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in*>(&out)) == 0 ||
         uv_ip6_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(&out)) == 0;
}

}  // namespace

// One request from send() until its callback ran or it was cancelled. Shared with the caller
// (cancel handle) and owned by HttpClient::active_ while it is not Done.
class HttpClient::Call {
 public:
  HttpClient* client = nullptr;  // null once Done
  HttpRequest req;
  HttpCallback cb;
  std::string key;    // pool key
  std::string wire;   // the serialized request, kept for a retry
  std::string error;  // a validation error, delivered by the deferred start
  CallState state = CallState::Queued;
  Conn* conn = nullptr;
  Resolve* resolve = nullptr;
  std::vector<sockaddr_storage> addrs;
  size_t next_addr = 0;
  int last_connect_error = UV_EADDRNOTAVAIL;
  std::unique_ptr<ResponseParser> parser;
  std::multimap<uint64_t, Call*>::iterator deadline;
  bool has_deadline = false;
  bool reused = false;     // sent on a connection taken from the idle pool
  bool retried = false;    // the one retry on a fresh connection was used
  bool got_bytes = false;  // some response byte arrived on the current connection
};

// One TCP (+ TLS) connection. Owned by HttpClient::conns_ and deleted in its close callback.
struct HttpClient::Conn final : StreamListener {
  Conn(HttpClient& c, std::string k) : client(c), key(std::move(k)) {}

  void onData(const char* data, size_t len) override { client.connData(this, data, len); }
  void onEof() override { client.connEof(this); }
  void onError(int uv_err) override { client.connError(this, uv_err); }
  void onDrain() override {}
  void onClosed() override { client.connClosed(this); }  // deletes this

  HttpClient& client;
  const std::string key;
  TcpStream tcp;
  std::unique_ptr<TlsStream> tls;  // set for https; a decorator over tcp
  Stream* stream = &tcp;
  uv_connect_t connect_req{};
  ConnState state = ConnState::Connecting;
  Call* call = nullptr;                             // the call using it (Connecting, Busy)
  std::multimap<uint64_t, Conn*>::iterator expiry;  // valid while Idle
};

// A uv_getaddrinfo request outlives a cancelled call (uv_cancel cannot stop a running lookup),
// so it is its own allocation, freed in its callback. close() waits for those callbacks.
struct HttpClient::Resolve {
  uv_getaddrinfo_t req{};
  HttpClient* client = nullptr;
  Call* call = nullptr;  // null once the call finished or was cancelled
};

// ---- Lifetime ---------------------------------------------------------------------------------

HttpClient::HttpClient(uv_loop_t* loop) : HttpClient(loop, Options()) {}

HttpClient::HttpClient(uv_loop_t* loop, Options options) : loop_(loop), options_(options) {
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  uv_idle_init(loop_, &deferred_);
  deferred_.data = this;
  open_handles_ = 2;
}

HttpClient::~HttpClient() {
  assert(closed_ && "HttpClient destroyed before close() finished");
}

void HttpClient::close(std::function<void()> done) {
  if (closed_) {
    if (done) done();
    return;
  }
  on_closed_ = std::move(done);
  if (closing_) return;
  closing_ = true;
  queue_.clear();
  // Detach everything first, then drop the callbacks: destroying a callback's captures may run
  // user code that cancels or sends, and must find every call already Done.
  std::unordered_map<Call*, std::shared_ptr<Call>> calls;
  calls.swap(active_);
  for (auto& entry : calls) detach(entry.second.get());
  for (auto& entry : calls) entry.second->cb = nullptr;
  calls.clear();
  for (auto& entry : conns_) closeConn(entry.first);
  uv_timer_stop(&timer_);
  uv_idle_stop(&deferred_);
  uv_close(asHandle(&timer_), onHandleClosed);
  uv_close(asHandle(&deferred_), onHandleClosed);
}

void HttpClient::onHandleClosed(uv_handle_t* h) noexcept {
  ownerOf<HttpClient>(h)->handleClosed();
}

void HttpClient::handleClosed() {
  --open_handles_;
  maybeFinishClose();
}

void HttpClient::maybeFinishClose() {
  if (!closing_ || closed_ || open_handles_ != 0 || !conns_.empty() || pending_resolves_ != 0) {
    return;
  }
  closed_ = true;
  std::function<void()> done = std::move(on_closed_);
  on_closed_ = nullptr;
  if (!done) return;
  try {
    done();
  } catch (const std::exception& e) {
    UPGATE_LOG(err, 0, "http client: close callback threw: {}", e.what());
  } catch (...) {
    UPGATE_LOG(err, 0, "http client: close callback threw");
  }
}

// ---- Calls ------------------------------------------------------------------------------------

std::shared_ptr<HttpClient::Call> HttpClient::send(HttpRequest request, HttpCallback callback) {
  auto call = std::make_shared<Call>();
  if (closing_) {
    call->state = CallState::Done;
    return call;
  }
  call->client = this;
  call->req = std::move(request);
  call->cb = std::move(callback);
  call->error = validate(call->req);
  if (call->error.empty()) {
    call->key = poolKey(call->req);
    call->wire = serialize(call->req);
  }
  // The cached loop time may be old when send() runs outside a callback; a timeout must never
  // fire early.
  uv_update_time(loop_);
  const auto ms = static_cast<uint64_t>(std::max<Millis::rep>(0, call->req.timeout.count()));
  call->deadline = deadlines_.emplace(uv_now(loop_) + ms, call.get());
  call->has_deadline = true;
  active_.emplace(call.get(), call);
  // Started from the loop, never here: the callback can then never run inside send(), and a
  // send() from inside a callback does not re-enter the connection that is calling back.
  queue_.push_back(call);
  if (!uv_is_active(asHandle(&deferred_))) uv_idle_start(&deferred_, onDeferred);
  armTimer();
  return call;
}

void HttpClient::cancel(const std::shared_ptr<Call>& call) {
  if (!call || call->state == CallState::Done || call->client == nullptr) return;
  std::shared_ptr<Call> keep = call;  // detach() drops the client's reference
  keep->client->detach(keep.get());
  HttpCallback drop = std::move(keep->cb);  // captures die here, after the call is Done
}

void HttpClient::onDeferred(uv_idle_t* h) noexcept {
  ownerOf<HttpClient>(h)->runDeferred();
}

void HttpClient::runDeferred() {
  std::vector<std::shared_ptr<Call>> batch;
  batch.swap(queue_);
  uv_idle_stop(&deferred_);
  for (const std::shared_ptr<Call>& call : batch) {
    if (closing_) return;
    if (call->state != CallState::Queued) continue;  // cancelled meanwhile
    if (!call->error.empty()) {
      const std::string error = std::move(call->error);
      fail(call.get(), error);
      continue;
    }
    start(call.get(), /*fresh=*/false);
  }
}

void HttpClient::start(Call* call, bool fresh) {
  call->reused = false;
  if (!fresh) {
    if (Conn* conn = takeIdle(call->key)) {
      conn->state = ConnState::Busy;
      conn->call = call;
      call->conn = conn;
      call->state = CallState::Waiting;
      call->reused = true;
      writeRequest(call);
      return;
    }
  }
  call->addrs.clear();
  call->next_addr = 0;
  sockaddr_storage literal;
  if (parseLiteral(call->req.endpoint, literal)) {
    call->addrs.push_back(literal);
    connectNext(call);
    return;
  }
  auto* r = new Resolve();
  r->req.data = r;
  r->client = this;
  r->call = call;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc =
      uv_getaddrinfo(loop_, &r->req, onResolved, call->req.endpoint.host.c_str(), nullptr, &hints);
  if (rc != 0) {
    delete r;
    fail(call, "resolve: " + uvName(rc));
    return;
  }
  ++pending_resolves_;
  call->resolve = r;
  call->state = CallState::Resolving;
}

void HttpClient::onResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept {
  auto* r = static_cast<Resolve*>(req->data);
  r->client->resolved(r, status, res);
}

void HttpClient::resolved(Resolve* r, int status, addrinfo* res) {
  --pending_resolves_;
  Call* call = r->call;
  delete r;
  if (call == nullptr || closing_) {
    uv_freeaddrinfo(res);
    maybeFinishClose();
    return;
  }
  call->resolve = nullptr;
  if (status != 0) {
    uv_freeaddrinfo(res);
    fail(call, "resolve: " + uvName(status));
    return;
  }
  for (addrinfo* ai = res; ai != nullptr && call->addrs.size() < kMaxAddresses; ai = ai->ai_next) {
    sockaddr_storage a{};
    if (ai->ai_family == AF_INET) {
      std::memcpy(&a, ai->ai_addr, sizeof(sockaddr_in));
      reinterpret_cast<sockaddr_in*>(&a)->sin_port = htons(call->req.endpoint.port);
    } else if (ai->ai_family == AF_INET6) {
      std::memcpy(&a, ai->ai_addr, sizeof(sockaddr_in6));
      reinterpret_cast<sockaddr_in6*>(&a)->sin6_port = htons(call->req.endpoint.port);
    } else {
      continue;
    }
    call->addrs.push_back(a);
  }
  uv_freeaddrinfo(res);
  if (call->addrs.empty()) {
    fail(call, "resolve: no address for " + call->req.endpoint.host);
    return;
  }
  connectNext(call);
}

// ---- Connections ------------------------------------------------------------------------------

void HttpClient::connectNext(Call* call) {
  int err = call->last_connect_error;
  while (call->next_addr < call->addrs.size()) {
    const sockaddr_storage& addr = call->addrs[call->next_addr++];
    auto owned = std::make_unique<Conn>(*this, call->key);
    Conn* conn = owned.get();
    int rc = conn->tcp.init(loop_, conn);
    if (rc != 0) {
      err = rc;
      continue;  // never initialized: nothing to close
    }
    conns_.emplace(conn, std::move(owned));
    ++connections_opened_;
    uv_tcp_nodelay(conn->tcp.handle(), 1);
    if (call->req.tls) {
      conn->tls = std::make_unique<TlsStream>(conn->tcp, call->req.tls, conn);
      conn->stream = conn->tls.get();
      if (conn->tls->init() != 0) {
        closeConn(conn);
        fail(call, "TLS setup failed");
        return;
      }
    }
    conn->connect_req.data = conn;
    rc = uv_tcp_connect(&conn->connect_req, conn->tcp.handle(),
                        reinterpret_cast<const sockaddr*>(&addr), onConnect);
    if (rc != 0) {
      err = rc;
      closeConn(conn);
      continue;
    }
    conn->call = call;
    call->conn = conn;
    call->state = CallState::Connecting;
    return;
  }
  fail(call, "connect: " + uvName(err));
}

void HttpClient::onConnect(uv_connect_t* req, int status) noexcept {
  auto* conn = static_cast<Conn*>(req->data);
  conn->client.connected(conn, status);
}

void HttpClient::connected(Conn* conn, int status) {
  // UV_ECANCELED: we closed the handle (call cancelled, timed out, client closing); libuv runs
  // this before the close callback, so conn is still alive.
  if (conn->state == ConnState::Closing || conn->call == nullptr) return;
  Call* call = conn->call;
  if (status != 0) {
    call->last_connect_error = status;
    call->conn = nullptr;
    closeConn(conn);
    connectNext(call);  // the next address, or the error
    return;
  }
  conn->state = ConnState::Busy;
  call->state = CallState::Waiting;
  // The request first (over TLS, TlsStream holds it until the handshake is done), so the
  // parser exists before anything can be read.
  writeRequest(call);
  if (conn->state == ConnState::Closing) return;  // failed: the call may be freed already
  int rc = conn->stream->readStart();
  if (rc != 0) {
    fail(call, "connection: " + uvName(rc));
    return;
  }
  if (conn->tls) {
    const HttpRequest& r = call->req;
    // A failure upcalls onError from inside connect(), which finishes the call.
    conn->tls->connect(r.tls_server_name.empty() ? r.endpoint.host : r.tls_server_name);
  }
}

void HttpClient::writeRequest(Call* call) {
  Conn* conn = call->conn;
  call->parser =
      std::make_unique<ResponseParser>(options_.max_head_bytes, call->req.max_response_bytes);
  call->got_bytes = false;
  int rc = conn->stream->write(call->wire.data(), call->wire.size());
  if (rc != 0) {
    const bool tls_detail = conn->tls && !conn->tls->errorDetail().empty();
    failOrRetry(call, tls_detail ? conn->tls->errorDetail() : "connection: " + uvName(rc));
  }
}

void HttpClient::connData(Conn* conn, const char* data, size_t len) {
  if (conn->state == ConnState::Idle) {
    // Nothing was asked: a late or broken answer. The connection cannot be trusted any more.
    UPGATE_LOG(debug, 0, "http client: {} unexpected bytes on an idle connection to {}", len,
               conn->key);
    closeConn(conn);
    return;
  }
  if (conn->state != ConnState::Busy || conn->call == nullptr) return;
  Call* call = conn->call;
  call->got_bytes = true;
  const ParseResult result = call->parser->feed(data, len);
  if (result == ParseResult::NeedMore) {
    // ResponseParser cannot be told that the request was HEAD, so it would wait for the body
    // that Content-Length or chunked announces (RFC 7230 §3.3.3 rule 1). The head is all there
    // is: finish once the final head is in. The framing is uncertain, so no reuse.
    if (call->req.method == "HEAD" && call->parser->head().status >= 200) {
      responseDone(call, false);
    }
    return;
  }
  if (result == ParseResult::Error) {
    fail(call, responseError(call->parser->errorReason()));
    return;
  }
  const ResponseHead& head = call->parser->head();
  if (head.status == 101) {
    fail(call, "malformed response: unexpected 101 Switching Protocols");
    return;
  }
  // Keep-alive only after a complete HTTP/1.1 exchange that neither side ended (RFC 7230 §6.3);
  // bytes after the response mean the stream is out of step.
  const bool reusable = call->parser->consumed() == len && head.http_major == 1 &&
                        head.http_minor >= 1 &&
                        !headerHasToken(head.headers, "Connection", "close") &&
                        !headerHasToken(call->req.headers, "Connection", "close");
  responseDone(call, reusable);
}

void HttpClient::connEof(Conn* conn) {
  if (conn->state == ConnState::Idle) {
    closeConn(conn);  // the server ended an idle keep-alive connection
    return;
  }
  if (conn->state != ConnState::Busy || conn->call == nullptr) return;
  Call* call = conn->call;
  if (call->parser->needsEof() && !conn->stream->eofAuthenticated()) {
    failOrRetry(call, responseError("the TLS connection ended without close_notify inside a "
                                    "response delimited by the end of the connection"));
    return;
  }
  if (call->parser->finishEof() == ParseResult::Complete) {
    responseDone(call, false);  // a body delimited by the end of the connection
    return;
  }
  failOrRetry(call, responseError(call->parser->errorReason()));
}

void HttpClient::connError(Conn* conn, int uv_err) {
  if (conn->state == ConnState::Idle) {
    closeConn(conn);
    return;
  }
  if (conn->state == ConnState::Closing || conn->call == nullptr) return;
  const bool tls_detail = conn->tls && !conn->tls->errorDetail().empty();
  failOrRetry(conn->call, tls_detail ? conn->tls->errorDetail() : "connection: " + uvName(uv_err));
}

void HttpClient::connClosed(Conn* conn) {
  assert(conn->state == ConnState::Closing && conn->call == nullptr);
  conns_.erase(conn);  // deletes conn; the stream that called us touches nothing after
  maybeFinishClose();
}

void HttpClient::closeConn(Conn* conn) {
  if (conn->state == ConnState::Closing) return;
  removeIdle(conn);
  conn->state = ConnState::Closing;
  conn->call = nullptr;
  conn->stream->close();
}

void HttpClient::release(Conn* conn, bool reusable) {
  if (!reusable || closing_ || options_.max_idle_per_endpoint == 0 ||
      conn->state == ConnState::Closing || !conn->stream->isOpen()) {
    closeConn(conn);
    return;
  }
  auto it = idle_.find(conn->key);
  if (it != idle_.end() && it->second.size() >= options_.max_idle_per_endpoint) {
    closeConn(it->second.front());  // the oldest; may erase the map entry
  }
  conn->state = ConnState::Idle;
  conn->call = nullptr;
  idle_[conn->key].push_back(conn);
  ++idle_count_;
  conn->expiry = idle_expiry_.emplace(
      uv_now(loop_) + static_cast<uint64_t>(options_.idle_timeout.count()), conn);
  armTimer();
}

HttpClient::Conn* HttpClient::takeIdle(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end()) return nullptr;
  Conn* conn = it->second.back();  // the most recently used is the least likely to be stale
  removeIdle(conn);
  return conn;
}

void HttpClient::removeIdle(Conn* conn) {
  if (conn->state != ConnState::Idle) return;
  auto it = idle_.find(conn->key);
  assert(it != idle_.end());
  std::vector<Conn*>& list = it->second;
  for (auto pos = list.begin(); pos != list.end(); ++pos) {
    if (*pos == conn) {
      list.erase(pos);
      break;
    }
  }
  if (list.empty()) idle_.erase(it);
  idle_expiry_.erase(conn->expiry);
  --idle_count_;
  conn->state = ConnState::Busy;  // the caller sets what comes next
}

// ---- Finishing --------------------------------------------------------------------------------

void HttpClient::responseDone(Call* call, bool reusable) {
  HttpResponse response;
  ResponseHead& head = call->parser->head();
  response.status = head.status;
  response.headers = std::move(head.headers);
  response.body = call->parser->body();
  Conn* conn = call->conn;
  call->conn = nullptr;
  conn->call = nullptr;
  // Back in the pool before the callback, so a request it sends can use the connection.
  release(conn, reusable);
  finish(call, {}, response);
}

void HttpClient::failOrRetry(Call* call, const std::string& error) {
  // A keep-alive connection the server closed while it was idle fails before any response
  // byte; a request that is safe to repeat gets one more try on a new connection (RFC 7230
  // §6.3.1).
  if (call->reused && !call->got_bytes && !call->retried && isIdempotent(call->req.method)) {
    UPGATE_LOG(debug, 0, "http client: reused connection to {} failed ({}), retrying",
               call->req.endpoint.text(), error);
    call->retried = true;
    Conn* conn = call->conn;
    call->conn = nullptr;
    closeConn(conn);
    call->parser.reset();
    call->state = CallState::Queued;
    start(call, /*fresh=*/true);
    return;
  }
  fail(call, error);
}

void HttpClient::fail(Call* call, const std::string& error) {
  HttpResponse empty;
  finish(call, error, empty);
}

void HttpClient::finish(Call* call, const std::string& error, HttpResponse& response) {
  auto it = active_.find(call);
  if (it == active_.end()) return;          // cannot happen: only active calls finish
  std::shared_ptr<Call> keep = it->second;  // the callback may drop the caller's reference
  HttpCallback cb = std::move(call->cb);
  detach(call);
  if (!cb) return;
  // Callbacks run from libuv callbacks: nothing may unwind into C frames (style §2.6).
  try {
    cb(error, response);
  } catch (const std::exception& e) {
    UPGATE_LOG(err, 0, "http client: callback for {} threw: {}", call->req.endpoint.text(),
               e.what());
  } catch (...) {
    UPGATE_LOG(err, 0, "http client: callback for {} threw", call->req.endpoint.text());
  }
}

// Makes the call Done and lets go of everything it holds. The caller keeps a reference: the
// last line may drop the client's.
void HttpClient::detach(Call* call) {
  if (call->state == CallState::Done) return;
  call->state = CallState::Done;
  call->client = nullptr;
  if (call->has_deadline) {
    deadlines_.erase(call->deadline);
    call->has_deadline = false;
  }
  if (call->resolve != nullptr) {
    call->resolve->call = nullptr;
    uv_cancel(reinterpret_cast<uv_req_t*>(&call->resolve->req));  // fails if already running
    call->resolve = nullptr;
  }
  if (call->conn != nullptr) {
    Conn* conn = call->conn;  // mid-exchange: the connection cannot be reused
    call->conn = nullptr;
    closeConn(conn);
  }
  call->parser.reset();
  armTimer();
  active_.erase(call);
}

// ---- Timers -----------------------------------------------------------------------------------

void HttpClient::armTimer() {
  if (closing_) return;
  uint64_t next = UINT64_MAX;
  if (!deadlines_.empty()) next = deadlines_.begin()->first;
  if (!idle_expiry_.empty()) next = std::min(next, idle_expiry_.begin()->first);
  if (next == UINT64_MAX) {
    uv_timer_stop(&timer_);  // nothing pending: do not keep the loop alive
    return;
  }
  const uint64_t now = uv_now(loop_);
  uv_timer_start(&timer_, onTimer, next > now ? next - now : 0, 0);
}

void HttpClient::onTimer(uv_timer_t* t) noexcept {
  ownerOf<HttpClient>(t)->runTimers();
}

void HttpClient::runTimers() {
  const uint64_t now = uv_now(loop_);
  // Re-read begin() every time: a callback may add, cancel or finish calls, or close().
  while (!closing_ && !deadlines_.empty() && deadlines_.begin()->first <= now) {
    Call* call = deadlines_.begin()->second;
    fail(call, "timeout after " + std::to_string(call->req.timeout.count()) + " ms");
  }
  while (!closing_ && !idle_expiry_.empty() && idle_expiry_.begin()->first <= now) {
    closeConn(idle_expiry_.begin()->second);
  }
  armTimer();
}

}  // namespace upgate
