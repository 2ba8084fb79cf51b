#include "config/validate.h"

#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace upgate {

std::string quoted(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out.append(buf);
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

std::string rangeMessage(int64_t lo, int64_t hi, int64_t value) {
  return "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " +
         std::to_string(value);
}

std::string formatSize(size_t bytes) {
  static constexpr std::pair<size_t, const char*> kUnits[] = {
      {size_t{1} << 30, "GiB"}, {size_t{1} << 20, "MiB"}, {size_t{1} << 10, "KiB"}};
  for (const auto& [mult, suffix] : kUnits) {
    if (bytes != 0 && bytes % mult == 0) return std::to_string(bytes / mult) + suffix;
  }
  return std::to_string(bytes);
}

std::string formatDuration(Millis d) {
  auto ms = d.count();
  if (ms == 0) return "0";
  if (ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

namespace {

bool isAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string lowered(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

// RFC 9110 §5.6.2 token.
bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!isAlnum(c) && std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos) {
      return false;
    }
  }
  return true;
}

bool hasControl(std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return true;
  }
  return false;
}

class Validator {
 public:
  explicit Validator(const Config& c) : c_(c) {}

  std::vector<ConfigError> run() {
    checkTop();
    checkListeners();
    checkUpstreams();
    checkRoutes();
    checkLimits();
    checkTimeouts();
    return std::move(errors_);
  }

 private:
  void error(std::string path, std::string message) {
    ConfigError e;
    e.path = std::move(path);
    e.message = std::move(message);
    errors_.push_back(std::move(e));
  }

  // Listener and route names end up in logs, metrics labels and the ready file.
  void checkName(const std::string& path, const std::string& name) {
    if (name.empty()) {
      error(path, "must not be empty");
      return;
    }
    bool ok = name.size() <= 64;
    for (char c : name) ok = ok && (isAlnum(c) || c == '_' || c == '-' || c == '.');
    if (!ok) {
      error(path, "invalid name " + quoted(name) + " (up to 64 letters, digits, '_', '-' and '.')");
    }
  }

  void checkPositive(const std::string& path, Millis d) {
    if (d.count() <= 0) error(path, "must be greater than 0, got " + formatDuration(d));
  }

  void checkNonNegative(const std::string& path, Millis d) {
    if (d.count() < 0) error(path, "must not be negative");
  }

  void checkSize(const std::string& path, size_t v, size_t lo, size_t hi) {
    if (v < lo || v > hi) {
      error(path, "must be between " + formatSize(lo) + " and " + formatSize(hi) + ", got " +
                      formatSize(v));
    }
  }

  void checkTop() {
    if (c_.workers > config_range::kMaxWorkers) {
      error("workers",
            rangeMessage(0, config_range::kMaxWorkers, c_.workers) + " (0 = one per CPU)");
    }
    checkNonNegative("drain_timeout", c_.drain_timeout);
  }

  void checkListeners() {
    if (c_.listeners.empty()) {
      error("listeners", "at least one listener is required");
      return;
    }
    std::map<std::string, std::string> names;      // name -> path of the first use
    std::map<std::string, std::string> addresses;  // host:port -> path of the first use
    for (size_t i = 0; i < c_.listeners.size(); ++i) {
      const ListenerConfig& l = c_.listeners[i];
      const std::string base = "listeners[" + std::to_string(i) + "]";
      checkName(base + ".name", l.name);
      if (!l.name.empty()) {
        auto [it, fresh] = names.emplace(l.name, base);
        if (!fresh) {
          error(base + ".name",
                "duplicate listener name " + quoted(l.name) + " (also " + it->second + ")");
        }
      }
      if (l.address.host.empty()) {
        error(base + ".address", "missing host");
      } else if (l.address.port != 0) {  // port 0 binds a fresh ephemeral port every time
        auto [it, fresh] = addresses.emplace(l.address.text(), base);
        if (!fresh) {
          error(base + ".address",
                "address " + l.address.text() + " is also used by " + it->second);
        }
      }
      if (l.backlog < config_range::kMinBacklog || l.backlog > config_range::kMaxBacklog) {
        error(base + ".backlog",
              rangeMessage(config_range::kMinBacklog, config_range::kMaxBacklog, l.backlog));
      }
    }
  }

  void checkUpstreams() {
    for (const auto& [key, up] : c_.upstreams) {
      const std::string base = "upstreams." + key;
      checkName(base, key);
      if (up.endpoints.empty()) {
        error(base + ".endpoints", "at least one endpoint is required");
      }
      for (size_t i = 0; i < up.endpoints.size(); ++i) {
        const HostPort& ep = up.endpoints[i];
        const std::string path = base + ".endpoints[" + std::to_string(i) + "]";
        if (ep.host.empty()) {
          error(path, "missing host");
        } else if (ep.port == 0) {
          error(path, "port must be between 1 and 65535");
        }
      }
      checkPositive(base + ".connect_timeout", up.connect_timeout);
      checkPositive(base + ".handshake_timeout", up.handshake_timeout);
    }
  }

  void checkPath(const std::string& path, const std::string& value) {
    if (value.empty() || value.front() != '/') {
      error(path, "must start with '/', got " + quoted(value));
    } else if (value.find_first_of("?#") != std::string::npos) {
      error(path, "must not contain '?' or '#' (the query string is not matched)");
    } else if (hasControl(value) || value.find(' ') != std::string::npos) {
      error(path, "must not contain spaces or control characters");
    }
  }

  void checkHostPattern(const std::string& path, const std::string& pattern) {
    std::string_view rest = pattern;
    bool wildcard = rest.size() > 2 && rest.substr(0, 2) == "*.";
    if (wildcard) rest.remove_prefix(2);
    // parseHostPort already knows what a host is; a dummy port lets it judge this one.
    HostPort hp;
    std::string ignored;
    bool ok = parseHostPort(std::string(rest) + ":1", hp, ignored, false);
    bool is_ip = !rest.empty() && (rest.front() == '[' ||
                                   rest.find_first_not_of("0123456789.") == std::string::npos);
    if (!ok || (wildcard && is_ip)) {
      error(path, "invalid host pattern " + quoted(pattern) +
                      " (expected a host name, \"*.example.com\" or an IP address, without port)");
    }
  }

  void checkRoutes() {
    std::map<std::string, std::string> names;
    for (size_t i = 0; i < c_.routes.size(); ++i) {
      const RouteConfig& r = c_.routes[i];
      const std::string base = "routes[" + std::to_string(i) + "]";
      checkName(base + ".name", r.name);
      if (!r.name.empty()) {
        auto [it, fresh] = names.emplace(r.name, base);
        if (!fresh) {
          error(base + ".name",
                "duplicate route name " + quoted(r.name) + " (also " + it->second + ")");
        }
      }
      const RouteMatch& m = r.match;
      if (m.path && m.path_prefix) {
        error(base + ".match", "set either path or path_prefix, not both");
      }
      if (m.path) checkPath(base + ".match.path", *m.path);
      if (m.path_prefix) checkPath(base + ".match.path_prefix", *m.path_prefix);
      if (m.host) checkHostPattern(base + ".match.host", *m.host);
      std::map<std::string, std::string> header_names;
      for (const HeaderMatch& h : m.headers) {
        const std::string path = base + ".match.headers." + h.name;
        if (!isToken(h.name)) {
          error(path, "invalid header name " + quoted(h.name));
        } else if (!header_names.emplace(lowered(h.name), h.name).second) {
          error(path, "duplicate header " + quoted(h.name) + " (header names ignore case)");
        }
        if (h.value && hasControl(*h.value)) {
          error(path, "header value must not contain control characters");
        }
      }
      if (r.upstream.empty()) {
        error(base + ".upstream", "missing upstream");
      } else if (c_.upstreams.count(r.upstream) == 0) {
        error(base + ".upstream", "unknown upstream " + quoted(r.upstream));
      }
    }
  }

  void checkLimits() {
    using namespace config_range;
    const LimitsConfig& l = c_.limits;
    checkSize("limits.max_head_bytes", l.max_head_bytes, kMinHeadBytes, kMaxHeadBytes);
    if (l.max_headers < kMinHeaders || l.max_headers > kMaxHeaders) {
      error("limits.max_headers",
            rangeMessage(static_cast<int64_t>(kMinHeaders), static_cast<int64_t>(kMaxHeaders),
                         static_cast<int64_t>(l.max_headers)));
    }
    checkSize("limits.high_water", l.high_water, kMinHighWater, kMaxHighWater);
    checkSize("limits.max_response_head_bytes", l.max_response_head_bytes, kMinHeadBytes,
              kMaxHeadBytes);
    checkSize("limits.max_error_body_bytes", l.max_error_body_bytes, 0, kMaxErrorBodyBytes);
  }

  void checkTimeouts() {
    checkPositive("timeouts.head", c_.timeouts.head);
    checkNonNegative("timeouts.idle", c_.timeouts.idle);
    checkNonNegative("timeouts.half_close", c_.timeouts.half_close);
  }

  const Config& c_;
  std::vector<ConfigError> errors_;
};

}  // namespace

std::vector<ConfigError> validateConfig(const Config& config) {
  return Validator(config).run();
}

}  // namespace upgate
