#include "admin/admin_server.h"

#include <cassert>
#include <nlohmann/json.hpp>

#include "core/handle.h"
#include "core/log.h"
#include "http/headers.h"
#include "http/request_parser.h"
#include "http/response_writer.h"
#include "http/template.h"
#include "net/listener.h"
#include "websocket/close_code.h"
#include "websocket/utf8.h"

namespace upgate {
namespace {

constexpr uint64_t kConnectionTimeoutMs = 10000;

std::string jsonEscaped(const std::string& s) {
  std::string out;
  log::appendJsonEscaped(out, s);
  return out;
}

std::string response200(const char* content_type, const std::string& body) {
  return std::string("HTTP/1.1 200 OK\r\nContent-Type: ") + content_type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
         body;
}

std::string okResponse(const std::string& json) {
  return response200("application/json", json + "\n");
}

// The Prometheus text exposition format.
std::string metricsResponse(const std::string& text) {
  return response200("text/plain; version=0.0.4; charset=utf-8", text);
}

}  // namespace

// One admin request: head, then a Content-Length body, then one answer and close.
class AdminConnection final : public StreamListener {
 public:
  explicit AdminConnection(AdminServer& server)
      : server_(server),
        parser_(server.config().limits.max_head_bytes, server.config().limits.max_headers) {}

  int init() {
    int rc = tcp_.init(server_.loop(), this);
    if (rc != 0) return rc;
    uv_timer_init(server_.loop(), &timer_);
    timer_.data = this;
    open_ = 2;
    return 0;
  }
  TcpStream& tcp() { return tcp_; }

  void start() {
    uv_timer_start(&timer_, onTimer, kConnectionTimeoutMs, 0);
    if (tcp_.readStart() != 0) close();
  }

  void close() {
    if (closing_) return;
    closing_ = true;
    tcp_.close();
    uv_close(asHandle(&timer_), onTimerClosed);
  }

 private:
  static void onTimer(uv_timer_t* t) noexcept { ownerOf<AdminConnection>(t)->close(); }
  static void onTimerClosed(uv_handle_t* h) noexcept { ownerOf<AdminConnection>(h)->released(); }

  void released() {
    if (--open_ > 0) return;
    server_.connectionClosed(this);
    delete this;
  }

  void onData(const char* data, size_t len) override {
    if (answered_) return;
    if (!head_done_) {
      ParseResult r = parser_.feed(data, len);
      if (r == ParseResult::NeedMore) return;
      if (r == ParseResult::Error) {
        answer(errorResponse(parser_.errorStatus(), parser_.errorReason()));
        return;
      }
      head_done_ = true;
      const RequestHead& head = parser_.head();
      if (findHeader(head.headers, "transfer-encoding")) {
        answer(errorResponse(411, "send the message with a Content-Length"));
        return;
      }
      const std::string* cl = findHeader(head.headers, "content-length");
      expected_ = cl ? std::strtoull(cl->c_str(), nullptr, 10) : 0;
      if (expected_ > server_.config().admin.max_body_bytes) {
        answer(errorResponse(413, "message larger than admin.max_body_bytes (" +
                                      std::to_string(server_.config().admin.max_body_bytes) + ")"));
        return;
      }
      size_t used = parser_.consumed();
      data += used;
      len -= used;
      // A client that waits for permission to send its body (curl does, for a second, above 1 KiB)
      // gets it at once (RFC 9110 §10.1.1).
      // HTTP/1.0 clients know no 100 (RFC 9110 §10.1.1: the expectation is ignored for them).
      if (expected_ > len && head.http_minor >= 1 &&
          headerHasToken(head.headers, "expect", "100-continue")) {
        static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        if (tcp_.write(kContinue.data(), kContinue.size()) != 0) {
          close();
          return;
        }
      }
    }
    body_.append(data, std::min<size_t>(len, expected_ - body_.size()));
    if (body_.size() == expected_) dispatch();
  }

  void dispatch() {
    const RequestHead& head = parser_.head();
    answer(server_.handle(head.method, head.path, head.query,
                          findHeader(head.headers, "authorization"),
                          findHeader(head.headers, "content-type"), body_));
  }

  void answer(const std::string& response) {
    answered_ = true;
    if (tcp_.write(response.data(), response.size()) != 0) {
      close();
      return;
    }
    tcp_.shutdown();  // the client sees EOF after the answer and closes; the timer backs it up
  }

  void onEof() override {
    if (!answered_) {
      close();
      return;
    }
    close();
  }
  void onError(int) override { close(); }
  void onDrain() override {}
  void onClosed() override { released(); }

  AdminServer& server_;
  TcpStream tcp_;
  uv_timer_t timer_{};
  RequestParser parser_;
  std::string body_;
  uint64_t expected_ = 0;
  int open_ = 0;
  bool head_done_ = false;
  bool answered_ = false;
  bool closing_ = false;
};

AdminServer::AdminServer(uv_loop_t* loop, std::shared_ptr<const Config> config, Hub& hub)
    : loop_(loop),
      config_(std::move(config)),
      hub_(hub),
      published_(metrics_.get(metrics::Family::Published)) {}

AdminServer::~AdminServer() {
  assert(!listening_ && connections_.empty());
}

bool AdminServer::start(std::string& bound, std::string& err) {
  int fd = openListenSocket(config_->admin.address, 128, /*delay_first_ack=*/false, bound, err);
  if (fd < 0) return false;
  uv_tcp_init(loop_, &tcp_);
  tcp_.data = this;
  listening_ = true;
  int rc = uv_tcp_open(&tcp_, fd);
  if (rc == 0) rc = uv_listen(asStream(&tcp_), 128, onConnection);
  if (rc != 0) {
    err = std::string("admin listener: ") + uv_strerror(rc);
    return false;
  }
  return true;
}

void AdminServer::onConnection(uv_stream_t* server, int status) noexcept {
  auto* self = ownerOf<AdminServer>(server);
  if (status < 0 || self->closing_) return;
  auto* c = new AdminConnection(*self);
  if (c->init() != 0) {
    delete c;
    return;
  }
  self->connections_.insert(c);
  if (uv_accept(server, asStream(c->tcp().handle())) != 0) {
    c->close();
    return;
  }
  c->start();
}

void AdminServer::connectionClosed(AdminConnection* c) {
  connections_.erase(c);
  maybeDone();
}

void AdminServer::close(std::function<void()> done) {
  closing_ = true;
  done_ = std::move(done);
  if (listening_) {
    uv_close(asHandle(&tcp_), onListenerClosed);
  } else {
    maybeDone();
  }
  for (AdminConnection* c : std::vector<AdminConnection*>(connections_.begin(), connections_.end()))
    c->close();
}

void AdminServer::onListenerClosed(uv_handle_t* h) noexcept {
  auto* self = ownerOf<AdminServer>(h);
  self->listening_ = false;
  self->maybeDone();
}

void AdminServer::maybeDone() {
  if (!closing_ || listening_ || !connections_.empty() || !done_) return;
  auto done = std::move(done_);
  done_ = nullptr;
  done();
}

namespace {

// Close reasons upgate sends are cut at 100 bytes (tunnel.cc): refuse longer ones up front.
constexpr size_t kMaxCloseReason = 100;

// The body of POST /revoke; "" or what is wrong with it.
std::string parseRevoke(const std::string& body, RevokeRequest& out) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return "the body must be a JSON object, e.g. {\"user\": \"alice\"}";
  for (const auto& [key, value] : j.items()) {
    if (key == "user") {
      if (!value.is_string() || value.get<std::string>().empty())
        return "\"user\" must be a non-empty string";
      out.user = value.get<std::string>();
    } else if (key == "session") {
      if (!value.is_number_unsigned() || value.get<uint64_t>() == 0)
        return "\"session\" must be a session id (a positive integer, as in the access log)";
      out.session = value.get<uint64_t>();
    } else if (key == "code") {
      if (!value.is_number_unsigned() || value.get<uint64_t>() > UINT16_MAX ||
          !isSendableCloseCode(static_cast<uint16_t>(value.get<uint64_t>())))
        return "\"code\" must be a close code a server may send (1000-1003, 1007-1009, "
               "1011-1014, 3000-4999)";
      out.code = static_cast<uint16_t>(value.get<uint64_t>());
    } else if (key == "reason") {
      if (!value.is_string()) return "\"reason\" must be a string";
      out.reason = value.get<std::string>();
      if (out.reason.size() > kMaxCloseReason || !isValidUtf8(out.reason))
        return "\"reason\" must be valid UTF-8 of at most " + std::to_string(kMaxCloseReason) +
               " bytes";
    } else {
      return "unknown key \"" + jsonEscaped(key) + "\" (user, session, code, reason)";
    }
  }
  if (out.user.empty() && out.session == 0) return "name the sessions: \"user\" or \"session\"";
  return "";
}

}  // namespace

std::string AdminServer::handle(const std::string& method, const std::string& path,
                                const std::string& query, const std::string* authorization,
                                const std::string* content_type, std::string& body) {
  // Health probes stay open (load balancers and orchestrators call them without credentials).
  if (path == "/healthz") return okResponse("{\"status\":\"ok\"}");
  if (path == "/readyz") {
    return draining_ ? errorResponse(503, "draining") : okResponse("{\"status\":\"ready\"}");
  }
  if (!config_->admin.token.empty() &&
      (authorization == nullptr || *authorization != "Bearer " + config_->admin.token)) {
    return errorResponse(401, "admin API: missing or wrong bearer token",
                         {{"WWW-Authenticate", "Bearer realm=\"upgate admin\""}});
  }
  if (path == "/metrics") {
    if (method != "GET") return errorResponse(405, "use GET", {{"Allow", "GET"}});
    metrics::Snapshot snapshot;
    metrics_.collect(snapshot);
    if (collect_workers_) collect_workers_(snapshot);
    return metricsResponse(metrics::render(snapshot));
  }
  if (path == "/reload") {
    if (method != "POST") return errorResponse(405, "use POST", {{"Allow", "POST"}});
    if (!reload_) return errorResponse(503, "reload is not available");
    const ReloadResult r = reload_();
    if (!r.error.empty())
      return errorResponse(500, "reload failed, kept the running state: " + r.error);
    std::string json = "{\"reloaded\":true,\"generation\":" + std::to_string(r.generation) +
                       ",\"restart_needed\":[";
    for (size_t i = 0; i < r.restart_needed.size(); ++i)
      json += (i ? ",\"" : "\"") + r.restart_needed[i] + "\"";  // fixed key names
    return okResponse(json + "]}");
  }
  if (path == "/revoke") {
    if (method != "POST") return errorResponse(405, "use POST", {{"Allow", "POST"}});
    if (!revoke_) return errorResponse(503, "revoke is not available");
    RevokeRequest request;
    if (std::string why = parseRevoke(body, request); !why.empty())
      return errorResponse(400, "POST /revoke: " + why);
    const std::optional<size_t> n = revoke_(request);
    if (!n) return errorResponse(503, "a worker did not answer in time; sessions may be closing");
    return okResponse("{\"revoked\":" + std::to_string(*n) + "}");
  }
  static const std::string kPublish = "/publish/";
  if (path.compare(0, kPublish.size(), kPublish) == 0) {
    if (method != "POST") return errorResponse(405, "use POST", {{"Allow", "POST"}});
    std::string channel = percentDecode(std::string_view(path).substr(kPublish.size()));
    if (channel.empty()) return errorResponse(400, "no channel name after /publish/");
    if (!isValidChannelName(channel))
      return errorResponse(400, "a channel name must not contain control characters");
    // Media types are case-insensitive (RFC 9110 §8.3.1); parameters may follow.
    const std::string_view media =
        content_type ? trimOws(std::string_view(*content_type).substr(0, content_type->find(';')))
                     : std::string_view();
    bool binary = iequals(media, "application/octet-stream") ||
                  queryParam(query, "binary").value_or("") == "1";
    // A text frame must be UTF-8 (RFC 6455 §5.6), or every subscriber's client fails the
    // connection: refuse it here, where the publisher can be told.
    if (!binary && !isValidUtf8(body)) {
      return errorResponse(400,
                           "a text message must be valid UTF-8; publish binary data with "
                           "Content-Type: application/octet-stream or ?binary=1");
    }
    uint64_t seq = hub_.publish(channel, std::move(body), binary);
    published_.add();
    return okResponse("{\"channel\":\"" + jsonEscaped(channel) +
                      "\",\"seq\":" + std::to_string(seq) +
                      ",\"subscribers\":" + std::to_string(hub_.subscribers(channel)) + "}");
  }
  return errorResponse(404, "admin API: no such endpoint " + path);
}

}  // namespace upgate
