#include "common/util.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/cpp_plugin.h"

namespace upgate_plugins {

void copyError(char* err, size_t errlen, const std::string& msg) noexcept {
  if (err == nullptr || errlen == 0) return;
  size_t n = msg.size() < errlen - 1 ? msg.size() : errlen - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

YAML::Node parseConfig(const char* cfg, size_t len) {
  if (cfg == nullptr || len == 0) return YAML::Node(YAML::NodeType::Map);
  YAML::Node n = YAML::Load(std::string(cfg, len));
  if (n.IsNull()) return YAML::Node(YAML::NodeType::Map);
  return n;
}

std::string yamlErrorText(const YAML::Exception& e) {
  std::string out = "config: " + e.msg;
  if (!e.mark.is_null()) {
    out += " (line " + std::to_string(e.mark.line + 1) + ", column " +
           std::to_string(e.mark.column + 1) + " of the config)";
  }
  return out;
}

namespace {

std::string child(const std::string& path, const char* key) {
  return path + "." + key;
}

YAML::Node scalarAt(const YAML::Node& map, const char* key, const std::string& path) {
  if (!map.IsMap()) return YAML::Node();
  YAML::Node n = map[key];
  if (n && !n.IsNull() && !n.IsScalar())
    throw ConfigError(child(path, key) + ": expected a scalar");
  return n;
}

}  // namespace

void checkKeys(const YAML::Node& node, const std::string& path,
               std::initializer_list<const char*> allowed) {
  if (!node || node.IsNull()) return;
  if (!node.IsMap()) throw ConfigError(path + ": expected a map");
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    bool ok = false;
    for (const char* a : allowed) ok = ok || key == a;
    if (!ok) {
      std::string list;
      for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
      throw ConfigError(path + ": unknown key \"" + key + "\" (expected one of: " + list + ")");
    }
  }
}

std::string getString(const YAML::Node& map, const char* key, const std::string& path,
                      const std::string& def) {
  YAML::Node n = scalarAt(map, key, path);
  if (!n || n.IsNull()) return def;
  return n.as<std::string>();
}

std::vector<std::string> getStrings(const YAML::Node& map, const char* key,
                                    const std::string& path) {
  std::vector<std::string> out;
  if (!map.IsMap()) return out;
  YAML::Node n = map[key];
  if (!n || n.IsNull()) return out;
  if (n.IsScalar()) {
    out.push_back(n.as<std::string>());
    return out;
  }
  if (!n.IsSequence()) throw ConfigError(child(path, key) + ": expected a string or a list");
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      throw ConfigError(child(path, key) + "[" + std::to_string(i) + "]: expected a string");
    }
    out.push_back(n[i].as<std::string>());
  }
  return out;
}

double getNumber(const YAML::Node& map, const char* key, const std::string& path, double def,
                 double min, double max) {
  YAML::Node n = scalarAt(map, key, path);
  if (!n || n.IsNull()) return def;
  double v = 0;
  if (!YAML::convert<double>::decode(n, v) || !std::isfinite(v)) {
    throw ConfigError(child(path, key) + ": expected a number, got \"" + n.Scalar() + "\"");
  }
  if (v < min || v > max) {
    std::ostringstream os;
    os << child(path, key) << ": " << v << " is out of range [" << min << ", " << max << "]";
    throw ConfigError(os.str());
  }
  return v;
}

bool getBool(const YAML::Node& map, const char* key, const std::string& path, bool def) {
  YAML::Node n = scalarAt(map, key, path);
  if (!n || n.IsNull()) return def;
  bool v = false;
  if (!YAML::convert<bool>::decode(n, v)) {
    throw ConfigError(child(path, key) + ": expected true or false");
  }
  return v;
}

double getSeconds(const YAML::Node& map, const char* key, const std::string& path, double def) {
  YAML::Node n = scalarAt(map, key, path);
  if (!n || n.IsNull()) return def;
  const std::string s = n.Scalar();
  double factor = 1;
  std::string num = s;
  auto ends = [&](const char* suffix) {
    size_t k = std::strlen(suffix);
    return s.size() > k && s.compare(s.size() - k, k, suffix) == 0;
  };
  if (ends("ms")) {
    factor = 0.001;
    num = s.substr(0, s.size() - 2);
  } else if (ends("s")) {
    num = s.substr(0, s.size() - 1);
  } else if (ends("m")) {
    factor = 60;
    num = s.substr(0, s.size() - 1);
  } else if (ends("h")) {
    factor = 3600;
    num = s.substr(0, s.size() - 1);
  }
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(num.c_str(), &end);
  if (num.empty() || end == nullptr || *end != '\0' || errno != 0 || !std::isfinite(v) || v < 0) {
    throw ConfigError(child(path, key) + ": expected a duration like 30s, 500ms or 5m, got \"" + s +
                      "\"");
  }
  return v * factor;
}

std::string resolvePath(const upgate_host_api_t* host, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  const char* dir = host != nullptr && host->config_dir != nullptr ? host->config_dir : "";
  return std::string(dir) + name;
}

std::string readFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(what + ": cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + 32) : a[i];
    char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] + 32) : b[i];
    if (x != y) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  while (!s.empty()) {
    size_t p = s.find(sep);
    std::string_view piece = trim(s.substr(0, p));
    if (!piece.empty()) out.push_back(piece);
    if (p == std::string_view::npos) break;
    s.remove_prefix(p + 1);
  }
  return out;
}

std::optional<std::string> percentDecode(std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return std::nullopt;
      int hi = hex(in[i + 1]);
      int lo = hex(in[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::optional<std::string> queryParam(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    std::optional<std::string> key = percentDecode(pair.substr(0, eq), true);
    if (key && *key == name) {
      if (eq == std::string_view::npos) return std::string();
      return percentDecode(pair.substr(eq + 1), true);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<std::string> cookieValue(const upgate_host_api_t* host, upgate_session_t* s,
                                       std::string_view name) {
  for (size_t i = 0;; ++i) {
    const char* h = host->header(s, "Cookie", i);
    if (h == nullptr) break;
    for (std::string_view pair : split(h, ';')) {
      size_t eq = pair.find('=');
      if (eq == std::string_view::npos) continue;
      if (trim(pair.substr(0, eq)) != name) continue;
      std::string_view v = trim(pair.substr(eq + 1));
      // RFC 6265 §4.1.1: a cookie value may be wrapped in double quotes.
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      return std::string(v);
    }
  }
  return std::nullopt;
}

std::optional<std::string> base64UrlDecode(std::string_view in) {
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '-') {
      v = 62;
    } else if (c == '_') {
      v = 63;
    } else {
      return std::nullopt;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  if (bits >= 6) return std::nullopt;  // a lone trailing character carries no whole byte
  return out;
}

std::string base64UrlEncode(std::string_view in) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    acc = (acc << 8) | static_cast<uint8_t>(c);
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 0x3F]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 0x3F]);
  return out;
}

std::string sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0xF]);
  }
  return out;
}

bool constantTimeEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

upgate_decision_t reject(upgate_reject_t* out, const RejectSpec& spec) {
  out->status = spec.status;
  out->reason = spec.reason;
  out->headers = spec.headers;
  out->header_count = spec.header_count;
  return UPGATE_REJECT;
}

}  // namespace upgate_plugins
