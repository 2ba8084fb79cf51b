#include "config/validate.h"

#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/template.h"
#include "websocket/deflate.h"
#include "websocket/utf8.h"

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
    checkNonNegative("drain_spread", c_.drain_spread);
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
      if (l.tls) checkListenerTls(base + ".tls", *l.tls);
    }
  }

  // What a client can send in SNI: a DNS name, or "*.name" covering one more label. No port,
  // and no IP address (RFC 6066 §3: SNI carries host names only).
  void checkServerNamePattern(const std::string& path, const std::string& name) {
    std::string_view rest = name;
    bool wildcard = rest.size() > 2 && rest.substr(0, 2) == "*.";
    if (wildcard) rest.remove_prefix(2);
    HostPort hp;
    std::string ignored;
    bool ok = !rest.empty() && rest.front() != '[' &&
              parseHostPort(std::string(rest) + ":1", hp, ignored, false);
    bool is_ip = ok && rest.find_first_not_of("0123456789.") == std::string_view::npos;
    if (is_ip && !wildcard) {
      error(path, "invalid server name " + quoted(name) +
                      ": clients never send an IP address in SNI (connections by address get "
                      "the first certificate)");
    } else if (!ok || is_ip) {
      error(path, "invalid server name " + quoted(name) +
                      " (expected a DNS name or \"*.example.com\", without port)");
    }
  }

  // Response header names for the client certificate: tokens, distinct; "" = not sent.
  void checkClientCertHeaders(const std::string& base, const ClientCertHeaders& h) {
    std::map<std::string, std::string> seen;  // lower-case name -> key of the first use
    const std::pair<const char*, const std::string*> kHeaders[] = {
        {"subject", &h.subject}, {"sans", &h.sans}, {"fingerprint", &h.fingerprint}};
    for (const auto& [key, name] : kHeaders) {
      if (name->empty()) continue;
      const std::string path = base + "." + key;
      if (!isToken(*name)) {
        error(path, "invalid header name " + quoted(*name));
      } else if (auto [it, fresh] = seen.emplace(lowered(*name), key); !fresh) {
        error(path, "header " + quoted(*name) + " is also used by " + it->second +
                        " (header names ignore case)");
      }
    }
  }

  void checkListenerTls(const std::string& base, const ListenerTlsConfig& t) {
    std::map<std::string, std::string> names;  // lower-case server name -> path of first use
    for (size_t i = 0; i < t.certificates.size(); ++i) {
      const TlsCertificateConfig& c = t.certificates[i];
      const std::string cbase = base + ".certificates[" + std::to_string(i) + "]";
      if (c.cert.empty()) error(cbase + ".cert", "must not be empty");
      if (c.key.empty()) error(cbase + ".key", "must not be empty");
      for (size_t j = 0; j < c.server_names.size(); ++j) {
        const std::string path = cbase + ".server_names[" + std::to_string(j) + "]";
        const size_t before = errors_.size();
        checkServerNamePattern(path, c.server_names[j]);
        if (errors_.size() != before) continue;
        auto [it, fresh] = names.emplace(lowered(c.server_names[j]), path);
        if (!fresh) {
          error(path,
                "server name " + quoted(c.server_names[j]) + " is also listed at " + it->second);
        }
      }
    }
    checkPositive(base + ".ticket_key_rotation", t.ticket_key_rotation);
    if (t.client_auth) {
      if (t.client_auth->ca.empty()) error(base + ".client_auth.ca", "must not be empty");
      checkClientCertHeaders(base + ".client_auth.headers", t.client_auth->headers);
    }
  }

  // The name an upstream's certificate is verified against (and sent in SNI when it is not an
  // address): a DNS name, or an IPv4 / IPv6 address without brackets. "" = the endpoint's host.
  void checkUpstreamServerName(const std::string& path, const std::string& name) {
    if (name.empty()) return;
    HostPort hp;
    std::string ignored;
    bool ok = name.find(':') != std::string::npos
                  ? parseHostPort("[" + name + "]:1", hp, ignored, false)
                  : parseHostPort(name + ":1", hp, ignored, false);
    if (!ok) {
      error(path, "invalid server name " + quoted(name) +
                      " (expected a DNS name or an IP address, without port)");
    }
  }

  void checkUpstreamTls(const std::string& base, const UpstreamTlsConfig& t) {
    if (t.ca.empty()) error(base + ".ca", "must not be empty (\"system\" = the OS trust store)");
    checkUpstreamServerName(base + ".server_name", t.server_name);
    if (!t.cert.empty() && t.key.empty()) error(base + ".key", "required when cert is set");
    if (t.cert.empty() && !t.key.empty()) error(base + ".cert", "required when key is set");
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
      if (up.tls) checkUpstreamTls(base + ".tls", *up.tls);
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

  // keepalive and compression apply to websocket tunnels; answering pings and compressing need
  // the frames mode (upgate must see every frame).
  void checkTunnelOptions(const std::string& base, const RouteConfig& r) {
    if (r.kind == RouteKind::Tcp && r.mode == TunnelMode::Frames) {
      error(base + ".mode", "applies to websocket routes (a tcp route relays a byte stream)");
    }
    const KeepaliveConfig& k = r.keepalive;
    if (k.interval.count() != 0 || k.peer_pings != PeerPings::Forward) {
      if (r.kind != RouteKind::WebSocket && r.kind != RouteKind::Tcp) {
        error(base + ".keepalive", "only websocket and tcp routes have a gateway keepalive");
      } else if (k.interval.count() != 0 && k.timeout.count() == 0) {
        error(base + ".keepalive.timeout", "must be above 0 when interval is set");
      }
      if (r.kind == RouteKind::Tcp && k.peer_pings != PeerPings::Forward) {
        error(base + ".keepalive.peer_pings",
              "a tcp route answers the client's pings itself (the upstream has none)");
      } else if (k.peer_pings == PeerPings::Answer && r.mode != TunnelMode::Frames) {
        error(base + ".keepalive.peer_pings", "answer needs mode: frames");
      }
    }
    const CompressionConfig& c = r.compression;
    if (!c.enabled) return;
    if (r.kind != RouteKind::WebSocket) {
      error(base + ".compression", "only websocket routes relay compressed messages");
    } else if (r.mode != TunnelMode::Frames) {
      error(base + ".compression",
            "per-leg compression needs mode: frames (passthrough relays the extension untouched)");
    }
    // The most zlib state the legs can need: a compressor and a decompressor per compressed
    // leg, at the largest windows the negotiation can end with.
    size_t need = 0;
    if (c.client) {
      need += Deflater::estimateMemory(DeflateChannel{15, false}, Deflater::Options{}) +
              Inflater::estimateMemory(DeflateChannel{c.client_max_window_bits, false});
    }
    if (c.upstream) {
      need += Deflater::estimateMemory(DeflateChannel{15, false}, Deflater::Options{}) +
              Inflater::estimateMemory(DeflateChannel{15, false});
    }
    if (c.max_memory < need) {
      error(base + ".compression.max_memory",
            "is " + std::to_string(c.max_memory / 1024) + "KiB, below the " +
                std::to_string((need + 1023) / 1024) +
                "KiB the compressed legs can need (lower client_max_window_bits or raise it)");
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
      if (r.kind == RouteKind::Channel) {
        if (!r.upstream.empty()) {
          error(base + ".upstream",
                "a channel route has no upstream (it is fed by the publish API)");
        }
        if (!c_.admin.enabled) {
          error(base + ".kind", "channel routes need the publish API: configure `admin:`");
        }
      } else if (r.upstream.empty()) {
        error(base + ".upstream", "missing upstream");
      } else if (c_.upstreams.count(r.upstream) == 0) {
        error(base + ".upstream", "unknown upstream " + quoted(r.upstream));
      }
      checkTunnelOptions(base, r);
      std::string why;
      if (r.kind == RouteKind::Channel && !checkTemplate(r.channel, false, why)) {
        error(base + ".channel", why);
      }
      if (r.kind == RouteKind::LongPoll) {
        const LongPollConfig& lp = r.longpoll;
        if (lp.poll.empty()) error(base + ".longpoll.poll", "required for a longpoll route");
        if (!checkTemplate(lp.channel, false, why)) error(base + ".longpoll.channel", why);
        if (!lp.poll.empty() && !checkTemplate(lp.poll, true, why)) {
          error(base + ".longpoll.poll", why);
        } else if (!lp.poll.empty() && lp.poll[0] != '/') {
          error(base + ".longpoll.poll", "must start with '/' (a target on the upstream)");
        }
        if (!lp.send.empty() && (lp.send[0] != '/' || !checkTemplate(lp.send, false, why))) {
          error(base + ".longpoll.send", lp.send[0] != '/' ? "must start with '/'" : why);
        }
        if (!lp.cursor_header.empty() && !lp.cursor_json.empty()) {
          error(base + ".longpoll.cursor", "set either header or json, not both");
        } else if (!lp.cursor_json.empty() && lp.split_json_array) {
          // A split answer is an array, which has no field to read; an object is not split.
          error(base + ".longpoll.cursor.json",
                "cannot be read with split: json_array (an array answer has no fields): use "
                "cursor: {header: ...}, or split: body");
        }
        if (lp.timeout.count() <= 0) error(base + ".longpoll.timeout", "must be greater than 0");
        checkSize(base + ".longpoll.max_response_bytes", lp.max_response_bytes,
                  config_range::kMinPollResponseBytes, config_range::kMaxPollResponseBytes);
        if (lp.backoff_initial.count() <= 0 || lp.backoff_max < lp.backoff_initial) {
          error(base + ".longpoll.backoff", "need 0 < initial <= max");
        }
        for (const char* key : {"forward_headers", "poll_forward_headers"}) {
          const auto& list = std::string_view(key) == "forward_headers" ? lp.forward_headers
                                                                        : lp.poll_forward_headers;
          for (size_t j = 0; j < list.size(); ++j) {
            if (!list[j].empty() && !isToken(list[j]))
              error(base + ".longpoll." + key + "[" + std::to_string(j) + "]",
                    "invalid header name " + quoted(list[j]));
          }
        }
      }
      if (r.kind == RouteKind::Http && r.response_timeout.count() <= 0) {
        error(base + ".response_timeout", "must be greater than 0");
      }
      if ((r.kind == RouteKind::Channel || r.kind == RouteKind::LongPoll) &&
          r.max_queue_bytes < 1024) {
        error(base + ".max_queue_bytes", "must be at least 1KiB");
      }
      if (!r.overflow_notice.empty()) {
        if (r.kind != RouteKind::Channel && r.kind != RouteKind::LongPoll) {
          error(base + ".overflow_notice", "only channel and longpoll routes have subscribers");
        } else if (r.overflow != OverflowPolicy::Drop) {
          error(base + ".overflow_notice",
                "needs overflow: drop (with overflow: close nothing is skipped)");
        } else if (!isValidUtf8(r.overflow_notice)) {
          error(base + ".overflow_notice", "must be valid UTF-8 (it goes as a text message)");
        }
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
    checkSize("limits.max_message_size", l.max_message_size, 125, size_t{1} << 31);
    // A published message is held whole, and goes to SSE readers base64-encoded (4/3 of it).
    checkSize("admin.max_body_bytes", c_.admin.max_body_bytes, 1, size_t{1} << 30);
  }

  void checkTimeouts() {
    checkPositive("timeouts.head", c_.timeouts.head);
    checkNonNegative("timeouts.idle", c_.timeouts.idle);
    checkNonNegative("timeouts.half_close", c_.timeouts.half_close);
    checkPositive("timeouts.plugin_pause", c_.timeouts.plugin_pause);
    checkPositive("timeouts.close", c_.timeouts.close);  // 0 would drop the close frame queued
    checkNonNegative("timeouts.send", c_.timeouts.send);
  }

  const Config& c_;
  std::vector<ConfigError> errors_;
};

}  // namespace

std::vector<ConfigError> validateConfig(const Config& config) {
  return Validator(config).run();
}

}  // namespace upgate
