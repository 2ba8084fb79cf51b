// forward_auth: asks an HTTP authorization service whether a request may pass, like nginx's
// auth_request or Traefik's ForwardAuth. The service sees a subrequest, never the client.
//
// config:
//   url: http://127.0.0.1:9091/auth  # required; http:// only; path and query are sent as given
//   method: GET                      # method of the subrequest (default GET; no body is sent)
//   timeout: 2s                      # the whole subrequest (default 5s); keep it below the
//                                    # gateway's timeouts.plugin_pause (default 10s)
//   request_headers: [Cookie, Authorization]  # client headers copied to the subrequest, every
//                                    # value, in order (default: Cookie, Authorization)
//   response_headers: [X-User]       # copied from a 2xx answer to the upstream request
//   identity_header: X-User          # a 2xx answer's header whose value becomes the session's
//                                    # identity (access log, X-Upgate-User, later plugins)
//   reject_headers: [WWW-Authenticate, Location]  # copied from a refusal to the client (default)
//   cache: { ttl: 5s, max_entries: 10000 }        # optional decision cache (below)
//
// The subrequest carries, besides the configured request_headers:
//   X-Forwarded-Method: GET             the client's method
//   X-Forwarded-Uri: /chat?room=1       the client's request target, as received
//   X-Original-URI: /chat?room=1        the same, under nginx's name
//   X-Forwarded-Host: chat.example.com  the client's Host header (when it sent one)
//   X-Forwarded-For: 192.0.2.7          the client's address (the TCP peer)
//
// Decisions:
//  - 2xx: the request continues. Each response_headers name is set on the upstream request to
//    the answer's value, or removed when the answer has none, so a client can never supply
//    those headers itself. identity_header (if set and present) sets the identity.
//  - 400-599: refused with that status; the reject_headers of the answer and its body are sent
//    to the client (the body as text/plain, at most 64 KiB).
//  - any other status (1xx, 3xx such as a login redirect): refused with 403, reject_headers and
//    body as above (a WebSocket client cannot follow a redirect; the Location header still
//    reaches it).
//  - timeout or no connection to the service: 503. A response the gateway cannot read: 502.
//
// Cache (only with `cache:`): each worker loop keeps its own decisions, no locks, keyed by the
// SHA-256 of the request_headers' values. Enable it only if the service decides on those headers
// alone (not on the URI, the method or the client address). 2xx and 4xx answers are kept for
// `ttl` (default 5s); 5xx answers, timeouts and connection failures are never kept. At
// `max_entries` (default 10000) per worker the least recently used decision is dropped. A client
// may thus be admitted up to `ttl` after the service changed its mind, per worker.

#include <algorithm>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

constexpr size_t kMaxBody = 64 * 1024;

// One decision of the service, as replayed to a request.
struct Decision {
  bool allow = false;
  uint16_t status = 0;  // refusal: the status sent to the client
  std::vector<std::pair<std::string, std::string>> headers;  // allow: upstream; refusal: client
  std::vector<std::string> absent;  // allow: response_headers the answer did not have
  std::string identity;             // allow: "" = none
  std::string body;                 // refusal
};

// One worker's decisions, least recently used last; padded so workers never share a cache line.
struct alignas(64) WorkerCache {
  struct Entry {
    std::string key;
    uint64_t expires_ms;
    Decision decision;
  };
  std::list<Entry> lru;
  std::unordered_map<std::string, std::list<Entry>::iterator> index;
};

bool isForbiddenRequestHeader(const std::string& name) {
  static const char* const kNames[] = {"Host",
                                       "Content-Length",
                                       "Transfer-Encoding",
                                       "Connection",
                                       "Keep-Alive",
                                       "Upgrade",
                                       "TE",
                                       "Trailer",
                                       "Proxy-Connection",
                                       "X-Forwarded-Method",
                                       "X-Forwarded-Uri",
                                       "X-Original-URI",
                                       "X-Forwarded-Host",
                                       "X-Forwarded-For"};
  return std::any_of(std::begin(kNames), std::end(kNames),
                     [&](const char* n) { return iequal(n, name); });
}

bool isToken(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

class ForwardAuthPlugin : public PluginBase {
 public:
  ForwardAuthPlugin(const upgate_host_api_t* host, const YAML::Node& cfg)
      : PluginBase(host), caches_(std::max<uint32_t>(1, host->worker_count)) {
    checkKeys(cfg, "config",
              {"url", "method", "timeout", "request_headers", "response_headers", "identity_header",
               "reject_headers", "cache"});
    if (!UPGATE_HAS_FIELD(host, upgate_host_api_t, http_cancel)) {
      throw ConfigError("this gateway offers no HTTP callouts (host API too old)");
    }
    url_ = getString(cfg, "url", "config");
    if (url_.empty()) throw ConfigError("config.url: required (the authorization service)");
    if (url_.compare(0, 8, "https://") == 0) {
      throw ConfigError("config.url: https:// is not supported; use http:// to a local service");
    }
    if (url_.compare(0, 7, "http://") != 0 || url_.size() == 7 || url_[7] == '/') {
      throw ConfigError("config.url: \"" + url_ + "\" is not http://host[:port]/path");
    }
    method_ = getString(cfg, "method", "config", "GET");
    if (!isToken(method_)) throw ConfigError("config.method: \"" + method_ + "\" is not a token");
    const double timeout_s = getSeconds(cfg, "timeout", "config", 5);
    if (timeout_s < 0.001 || timeout_s > 3600) {
      throw ConfigError("config.timeout: must be between 1ms and 1h");
    }
    timeout_ms_ = static_cast<uint64_t>(timeout_s * 1000 + 0.5);
    request_headers_ = cfg["request_headers"] ? getStrings(cfg, "request_headers", "config")
                                              : std::vector<std::string>{"Cookie", "Authorization"};
    for (const std::string& h : request_headers_) {
      if (!isToken(h)) {
        throw ConfigError("config.request_headers: \"" + h + "\" is not a header name");
      }
      if (isForbiddenRequestHeader(h)) {
        throw ConfigError("config.request_headers: " + h +
                          " cannot be copied (set by the gateway or hop-by-hop)");
      }
    }
    response_headers_ = getStrings(cfg, "response_headers", "config");
    for (const std::string& h : response_headers_) {
      if (!isToken(h)) {
        throw ConfigError("config.response_headers: \"" + h + "\" is not a header name");
      }
    }
    identity_header_ = getString(cfg, "identity_header", "config");
    if (!identity_header_.empty() && !isToken(identity_header_)) {
      throw ConfigError("config.identity_header: \"" + identity_header_ +
                        "\" is not a header name");
    }
    reject_headers_ = cfg["reject_headers"]
                          ? getStrings(cfg, "reject_headers", "config")
                          : std::vector<std::string>{"WWW-Authenticate", "Location"};
    for (const std::string& h : reject_headers_) {
      if (!isToken(h)) {
        throw ConfigError("config.reject_headers: \"" + h + "\" is not a header name");
      }
    }
    if (YAML::Node c = cfg["cache"]; c && !c.IsNull()) {
      checkKeys(c, "config.cache", {"ttl", "max_entries"});
      const double ttl_s = getSeconds(c, "ttl", "config.cache", 5);
      if (ttl_s < 0.001 || ttl_s > 86400) {
        throw ConfigError("config.cache.ttl: must be between 1ms and 24h");
      }
      ttl_ms_ = static_cast<uint64_t>(ttl_s * 1000 + 0.5);
      max_entries_ =
          static_cast<size_t>(getNumber(c, "max_entries", "config.cache", 10000, 1, 1e7));
    }
  }

  upgate_decision_t onRequest(upgate_session_t* s, const upgate_request_t* r,
                              upgate_reject_t* out) {
    std::string key;
    if (ttl_ms_ != 0) {
      key = cacheKey(s);
      if (const Decision* d = lookup(s, key)) return apply(s, *d, out);
    }
    // The subrequest: the client's method and target, its address, and the chosen headers.
    std::vector<std::pair<std::string, std::string>> fields;
    fields.emplace_back("X-Forwarded-Method", r->method);
    fields.emplace_back("X-Forwarded-Uri", r->target);
    fields.emplace_back("X-Original-URI", r->target);
    if (const char* h = host()->header(s, "Host", 0)) fields.emplace_back("X-Forwarded-Host", h);
    if (r->client_ip != nullptr) fields.emplace_back("X-Forwarded-For", r->client_ip);
    for (const std::string& name : request_headers_) {
      for (size_t i = 0;; ++i) {
        const char* v = host()->header(s, name.c_str(), i);
        if (v == nullptr) break;
        fields.emplace_back(name, v);
      }
    }
    std::vector<upgate_header_t> wire;
    wire.reserve(fields.size());
    for (const auto& [n, v] : fields) wire.push_back(upgate_header_t{n.c_str(), v.c_str()});

    auto pending = std::make_unique<Pending>();
    pending->self = this;
    pending->key = std::move(key);
    const uint64_t id =
        host()->http_request(s, method_.c_str(), url_.c_str(), wire.data(), wire.size(), nullptr, 0,
                             timeout_ms_, &ForwardAuthPlugin::onAnswer, pending.get());
    if (id == 0) {
      log(s, UPGATE_LOG_ERROR, "could not start the subrequest to " + url_);
      return reject(out, {503, "authorization service unavailable"});
    }
    pending->callout = id;
    delete static_cast<Pending*>(host()->get_data(s));  // a previous request's (keep-alive)
    host()->set_data(s, pending.release());
    return UPGATE_PAUSE;
  }

  void onClose(upgate_session_t* s, uint16_t, const char*) {
    // The host has cancelled a subrequest still in flight: its callback will not run.
    delete static_cast<Pending*>(host()->get_data(s));
    host()->set_data(s, nullptr);
  }

 private:
  // Per-session state while the subrequest runs (host->set_data).
  struct Pending {
    ForwardAuthPlugin* self = nullptr;
    uint64_t callout = 0;
    std::string key;  // cache key, "" without a cache
  };

  static void onAnswer(upgate_session_t* s, void* arg,
                       const upgate_http_response_t* resp) noexcept {
    auto* p = static_cast<Pending*>(arg);
    try {
      p->self->answered(s, *p, *resp);
    } catch (...) {
      upgate_reject_t rej{};
      rej.struct_size = sizeof(rej);
      rej.status = 500;
      rej.reason = "forward_auth: internal error";
      p->self->host()->resume(s, UPGATE_REJECT, &rej, nullptr);
    }
  }

  void answered(upgate_session_t* s, Pending& p, const upgate_http_response_t& resp) {
    p.callout = 0;
    upgate_reject_t rej{};
    rej.struct_size = sizeof(rej);
    if (resp.result != UPGATE_HTTP_OK) {
      const bool unreachable =
          resp.result == UPGATE_HTTP_TIMEOUT || resp.result == UPGATE_HTTP_CONNECT;
      log(s, UPGATE_LOG_WARN,
          std::string("authorization service ") + (unreachable ? "unavailable" : "failed") + ": " +
              (resp.error != nullptr ? resp.error : "?"));
      rej.status = unreachable ? 503 : 502;
      rej.reason = unreachable ? "authorization service unavailable"
                               : "authorization service answer unusable";
      host()->resume(s, UPGATE_REJECT, &rej, nullptr);
      return;
    }
    Decision d = decide(resp);
    if (ttl_ms_ != 0 && resp.status < 500) store(s, p.key, d);
    if (apply(s, d, &rej) == UPGATE_CONTINUE) {
      host()->resume(s, UPGATE_CONTINUE, nullptr, nullptr);
    } else {
      host()->resume(s, UPGATE_REJECT, &rej, nullptr);
    }
  }

  static const char* field(const upgate_http_response_t& r, const std::string& name, size_t nth) {
    for (size_t i = 0; i < r.header_count; ++i) {
      if (iequal(r.headers[i].name, name) && nth-- == 0) return r.headers[i].value;
    }
    return nullptr;
  }

  Decision decide(const upgate_http_response_t& r) const {
    Decision d;
    d.allow = r.status >= 200 && r.status <= 299;
    if (d.allow) {
      for (const std::string& name : response_headers_) {
        const char* v = field(r, name, 0);
        if (v != nullptr) {
          d.headers.emplace_back(name, v);
        } else {
          d.absent.push_back(name);
        }
      }
      if (!identity_header_.empty()) {
        if (const char* v = field(r, identity_header_, 0)) d.identity = v;
      }
      return d;
    }
    d.status = r.status >= 400 && r.status <= 599 ? r.status : 403;
    for (const std::string& name : reject_headers_) {
      for (size_t i = 0;; ++i) {
        const char* v = field(r, name, i);
        if (v == nullptr) break;
        d.headers.emplace_back(name, v);
      }
    }
    d.body.assign(r.body, std::min(r.body_len, kMaxBody));
    return d;
  }

  // Applies a decision: CONTINUE after setting headers and identity, or REJECT with `out` filled
  // from `d` (which must outlive the hook or the resume call that reads `out`).
  upgate_decision_t apply(upgate_session_t* s, const Decision& d, upgate_reject_t* out) const {
    if (d.allow) {
      for (const auto& [name, value] : d.headers) {
        if (host()->set_upstream_header(s, name.c_str(), value.c_str()) != 0) {
          log(s, UPGATE_LOG_WARN, "the service's " + name + " cannot go upstream; dropped");
        }
      }
      for (const std::string& name : d.absent)
        host()->set_upstream_header(s, name.c_str(), nullptr);
      if (!d.identity.empty() && host()->set_identity(s, d.identity.c_str(), nullptr) != 0) {
        log(s, UPGATE_LOG_WARN, "the service's " + identity_header_ + " is not a valid identity");
      }
      return UPGATE_CONTINUE;
    }
    thread_local std::vector<upgate_header_t> headers;
    headers.clear();
    for (const auto& [name, value] : d.headers) {
      headers.push_back(upgate_header_t{name.c_str(), value.c_str()});
    }
    out->status = d.status;
    out->reason = "refused by the authorization service";
    out->headers = headers.empty() ? nullptr : headers.data();
    out->header_count = headers.size();
    out->body = d.body.data();
    out->body_len = d.body.size();
    return UPGATE_REJECT;
  }

  // ---- Cache ---------------------------------------------------------------------------------

  std::string cacheKey(upgate_session_t* s) const {
    std::string material;
    for (const std::string& name : request_headers_) {
      material += name;
      material += '\0';
      for (size_t i = 0;; ++i) {
        const char* v = host()->header(s, name.c_str(), i);
        if (v == nullptr) break;
        material += v;
        material += '\0';
      }
      material += '\1';
    }
    return sha256Hex(material);
  }

  WorkerCache& cacheOf(upgate_session_t* s) {
    return caches_[host()->worker_index(s) % caches_.size()];
  }

  const Decision* lookup(upgate_session_t* s, const std::string& key) {
    WorkerCache& c = cacheOf(s);
    auto it = c.index.find(key);
    if (it == c.index.end()) return nullptr;
    if (it->second->expires_ms <= host()->now_ms(s)) {
      c.lru.erase(it->second);
      c.index.erase(it);
      return nullptr;
    }
    c.lru.splice(c.lru.begin(), c.lru, it->second);  // most recently used first
    return &it->second->decision;
  }

  void store(upgate_session_t* s, const std::string& key, const Decision& d) {
    WorkerCache& c = cacheOf(s);
    auto it = c.index.find(key);
    if (it != c.index.end()) {
      c.lru.erase(it->second);
      c.index.erase(it);
    }
    while (c.index.size() >= max_entries_ && !c.lru.empty()) {
      c.index.erase(c.lru.back().key);
      c.lru.pop_back();
    }
    c.lru.push_front(WorkerCache::Entry{key, host()->now_ms(s) + ttl_ms_, d});
    c.index.emplace(key, c.lru.begin());
  }

  std::string url_;
  std::string method_;
  uint64_t timeout_ms_ = 5000;
  std::vector<std::string> request_headers_;
  std::vector<std::string> response_headers_;
  std::string identity_header_;
  std::vector<std::string> reject_headers_;
  uint64_t ttl_ms_ = 0;  // 0 = no cache
  size_t max_entries_ = 10000;
  std::vector<WorkerCache> caches_;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::ForwardAuthPlugin, "forward_auth")
