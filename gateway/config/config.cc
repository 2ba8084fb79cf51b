#include "config/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "config/loader.h"

namespace upgate {

std::string HostPort::text() const {
  std::string out;
  if (host.find(':') != std::string::npos) {
    out.append("[").append(host).append("]");
  } else {
    out = host;
  }
  out.append(":").append(std::to_string(port));
  return out;
}

const char* logLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
  }
  return "?";
}

const char* routeKindName(RouteKind kind) {
  switch (kind) {
    case RouteKind::WebSocket:
      return "websocket";
    case RouteKind::Http:
      return "http";
    case RouteKind::LongPoll:
      return "longpoll";
    case RouteKind::Channel:
      return "channel";
    case RouteKind::Tcp:
      return "tcp";
  }
  return "?";
}

const char* tunnelModeName(TunnelMode mode) {
  switch (mode) {
    case TunnelMode::Passthrough:
      return "passthrough";
    case TunnelMode::Frames:
      return "frames";
  }
  return "?";
}

namespace {

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}
bool isAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Consumes leading digits into `out`; false on no digits or uint64 overflow.
bool takeDigits(std::string_view& s, uint64_t& out, size_t* count = nullptr) {
  size_t i = 0;
  uint64_t v = 0;
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  while (i < s.size() && isDigit(s[i])) {
    uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (v > (kMax - d) / 10) return false;
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return false;
  if (count != nullptr) *count = i;
  out = v;
  s.remove_prefix(i);
  return true;
}

bool validDnsName(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  size_t start = 0;
  while (start <= host.size()) {
    size_t dot = host.find('.', start);
    if (dot == std::string_view::npos) dot = host.size();
    std::string_view label = host.substr(start, dot - start);
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!isAlpha(c) && !isDigit(c) && c != '-' && c != '_') return false;
    }
    start = dot + 1;
  }
  return true;
}

}  // namespace

std::optional<Millis> parseDuration(std::string_view text) {
  if (text == "0") return Millis{0};
  std::string_view s = text;
  uint64_t whole = 0;
  if (!takeDigits(s, whole)) return std::nullopt;
  uint64_t frac = 0;
  size_t frac_digits = 0;
  if (!s.empty() && s.front() == '.') {
    s.remove_prefix(1);
    std::string_view digits = s;
    size_t n = 0;
    while (n < digits.size() && isDigit(digits[n])) ++n;
    if (n == 0) return std::nullopt;
    s.remove_prefix(n);
    digits = digits.substr(0, n);
    // "1.500s" == "1.5s": trailing zeros carry no precision.
    while (!digits.empty() && digits.back() == '0') digits.remove_suffix(1);
    if (digits.size() > 9) return std::nullopt;  // finer than any unit's millisecond
    for (char c : digits) frac = frac * 10 + static_cast<uint64_t>(c - '0');
    frac_digits = digits.size();
  }
  uint64_t unit = 0;
  if (s == "ms") {
    unit = 1;
  } else if (s == "s") {
    unit = 1000;
  } else if (s == "m") {
    unit = 60 * 1000;
  } else if (s == "h") {
    unit = 60 * 60 * 1000;
  } else {
    return std::nullopt;  // includes a bare number: "10" could mean s or ms
  }
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<Millis::rep>::max());
  if (whole > kMax / unit) return std::nullopt;
  uint64_t ms = whole * unit;
  if (frac_digits > 0) {
    uint64_t scale = 1;
    for (size_t i = 0; i < frac_digits; ++i) scale *= 10;
    uint64_t part = frac * unit;                 // < 1e9 * 3.6e6, no overflow
    if (part % scale != 0) return std::nullopt;  // "1.5ms": not a whole millisecond
    part /= scale;
    if (ms > kMax - part) return std::nullopt;
    ms += part;
  }
  return Millis{static_cast<Millis::rep>(ms)};
}

std::optional<size_t> parseSize(std::string_view text) {
  std::string_view s = text;
  uint64_t n = 0;
  if (!takeDigits(s, n)) return std::nullopt;
  constexpr uint64_t kKi = 1024;
  uint64_t mult = 0;
  // Binary for "KiB" and for nginx's bare letters; decimal only when spelled "KB"/"kB".
  if (s.empty() || s == "B") {
    mult = 1;
  } else if (s == "k" || s == "K" || s == "KiB") {
    mult = kKi;
  } else if (s == "m" || s == "M" || s == "MiB") {
    mult = kKi * kKi;
  } else if (s == "g" || s == "G" || s == "GiB") {
    mult = kKi * kKi * kKi;
  } else if (s == "KB" || s == "kB") {
    mult = 1000;
  } else if (s == "MB") {
    mult = 1000 * 1000;
  } else if (s == "GB") {
    mult = 1000 * 1000 * 1000;
  } else {
    return std::nullopt;
  }
  constexpr uint64_t kMax = std::numeric_limits<size_t>::max();
  if (n > kMax / mult) return std::nullopt;
  return static_cast<size_t>(n * mult);
}

bool parseHostPort(std::string_view text, HostPort& out, std::string& err, bool allow_port_zero) {
  std::string_view host;
  std::string_view port;
  bool bracketed = false;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) {
      err = "missing ']' after IPv6 address";
      return false;
    }
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty()) {
      err = "missing port (expected [address]:port)";
      return false;
    }
    if (rest.front() != ':') {
      err = "expected ':' and a port after ']'";
      return false;
    }
    port = rest.substr(1);
    bracketed = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      err = "missing port (expected host:port)";
      return false;
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      err = "IPv6 addresses must be in brackets, e.g. [::1]:8080";
      return false;
    }
  }
  if (host.empty()) {
    err =
        bracketed ? "empty IPv6 address" : "missing host (use 0.0.0.0 or [::] for all interfaces)";
    return false;
  }

  std::string host_str(host);
  if (bracketed) {
    in6_addr a6{};
    if (inet_pton(AF_INET6, host_str.c_str(), &a6) != 1) {
      err = "invalid IPv6 address";
      return false;
    }
  } else if (host.find_first_not_of("0123456789.") == std::string_view::npos) {
    // All digits and dots cannot be a DNS name (a TLD is never numeric): must be IPv4.
    in_addr a4{};
    if (inet_pton(AF_INET, host_str.c_str(), &a4) != 1) {
      err = "invalid IPv4 address";
      return false;
    }
  } else if (!validDnsName(host)) {
    err = "invalid host name";
    return false;
  }

  if (port.empty()) {
    err = "missing port";
    return false;
  }
  uint64_t p = 0;
  std::string_view digits = port;
  if (port.size() > 5 || !takeDigits(digits, p) || !digits.empty() || p > 65535) {
    err = "port must be a number from " + std::string(allow_port_zero ? "0" : "1") + " to 65535";
    return false;
  }
  if (p == 0 && !allow_port_zero) {
    err = "port 0 is not allowed here (must be 1 to 65535)";
    return false;
  }
  out.host = std::move(host_str);
  out.port = static_cast<uint16_t>(p);
  return true;
}

}  // namespace upgate
