// origin: the cross-site WebSocket hijacking defence. Browsers always send Origin on a WebSocket
// handshake and let any page open a socket to any host, with the user's cookies; so a gateway
// that authenticates by cookie must check that the page is one of its own (RFC 6455 §10.2).
//
// config:
//   allow: ["https://app.example.com", "https://*.example.com", "http://localhost:*"]
//   allow_missing: true   # no Origin header = not a browser; such clients can forge it anyway
//
// A pattern is scheme://host[:port]. "*." at the start of the host matches one or more labels
// (not the bare domain); port "*" matches any port; no port = the scheme's default port. Scheme
// and host compare case-insensitively. "null" matches the literal opaque origin "null" only.
// Anything else, several Origin headers, or an unparsable one -> 403.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

struct OriginParts {
  std::string scheme;
  std::string host;
  std::string port;  // "" = default port, "*" = any (patterns only)
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  }
  return out;
}

std::string defaultPort(const std::string& scheme) {
  if (scheme == "http" || scheme == "ws") return "80";
  if (scheme == "https" || scheme == "wss") return "443";
  return "";
}

// Parses scheme://host[:port] (no path); nullopt if it is not of that form.
std::optional<OriginParts> parseOrigin(std::string_view text, bool pattern) {
  size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) return std::nullopt;
  OriginParts o;
  o.scheme = lower(text.substr(0, sep));
  std::string_view rest = text.substr(sep + 3);
  if (rest.empty() || rest.find_first_of("/?#@ ") != std::string_view::npos) return std::nullopt;
  std::string_view host = rest;
  std::string_view port;
  if (rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = rest.substr(0, close + 1);
    std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return std::nullopt;
      port = after.substr(1);
    }
  } else {
    size_t colon = rest.rfind(':');
    if (colon != std::string_view::npos) {
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
    }
  }
  if (host.empty()) return std::nullopt;
  if (!port.empty() && !(pattern && port == "*")) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos) {
      return std::nullopt;
    }
  } else if (port.empty() && rest.back() == ':') {
    return std::nullopt;
  }
  o.host = lower(host);
  o.port = std::string(port);
  if (o.port == defaultPort(o.scheme)) o.port.clear();
  if (!pattern && o.host.find('*') != std::string::npos) return std::nullopt;
  if (pattern && o.host.find('*') != std::string::npos &&
      (o.host.rfind("*.", 0) != 0 || o.host.find('*', 1) != std::string::npos ||
       o.host.size() < 3)) {
    return std::nullopt;
  }
  return o;
}

class OriginPlugin : public PluginBase {
 public:
  OriginPlugin(const upgate_host_api_t* host, const YAML::Node& cfg) : PluginBase(host) {
    checkKeys(cfg, "config", {"allow", "allow_missing"});
    allow_missing_ = getBool(cfg, "allow_missing", "config", true);
    std::vector<std::string> allow = getStrings(cfg, "allow", "config");
    if (allow.empty()) throw ConfigError("config.allow: at least one origin is required");
    for (size_t i = 0; i < allow.size(); ++i) {
      if (allow[i] == "null") {
        allow_null_ = true;
        continue;
      }
      std::optional<OriginParts> p = parseOrigin(allow[i], true);
      if (!p) {
        throw ConfigError("config.allow[" + std::to_string(i) + "]: \"" + allow[i] +
                          "\" is not scheme://host[:port] (host may start with \"*.\", port may "
                          "be \"*\")");
      }
      patterns_.push_back(std::move(*p));
    }
  }

  upgate_decision_t onRequest(upgate_session_t* s, const upgate_request_t*, upgate_reject_t* out) {
    const char* origin = host()->header(s, "Origin", 0);
    if (origin == nullptr) {
      if (allow_missing_) return UPGATE_CONTINUE;
      return reject(out, {403, "no Origin header"});
    }
    if (host()->header(s, "Origin", 1) != nullptr) {
      return reject(out, {403, "several Origin headers"});
    }
    if (allowed(origin)) return UPGATE_CONTINUE;
    return reject(out, {403, "origin not allowed"});
  }

  bool allowed(std::string_view origin) const {
    if (origin == "null") return allow_null_;
    std::optional<OriginParts> o = parseOrigin(origin, false);
    if (!o) return false;
    for (const OriginParts& p : patterns_) {
      if (p.scheme != o->scheme) continue;
      if (p.port != "*" && p.port != o->port) continue;
      if (p.host.rfind("*.", 0) == 0) {
        std::string_view suffix = std::string_view(p.host).substr(1);  // ".example.com"
        if (o->host.size() > suffix.size() &&
            o->host.compare(o->host.size() - suffix.size(), suffix.size(), suffix) == 0) {
          return true;
        }
      } else if (p.host == o->host) {
        return true;
      }
    }
    return false;
  }

 private:
  std::vector<OriginParts> patterns_;
  bool allow_missing_ = true;
  bool allow_null_ = false;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::OriginPlugin, "origin")
