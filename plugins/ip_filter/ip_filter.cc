// ip_filter: admits or refuses a client by address, IPv4 and IPv6 CIDR lists.
//
// config:
//   deny:  ["192.0.2.0/24", "2001:db8:bad::/48"]   # checked first -> 403
//   allow: ["10.0.0.0/8", "::1"]                   # if not empty, everything else -> 403
//   trusted_proxies: ["127.0.0.1", "10.1.0.0/16"]  # peers whose forwarded header is believed
//   forwarded_header: X-Forwarded-For              # default
//
// The client address is the TCP peer's, unless the peer is a trusted proxy: then the forwarded
// header is read from right to left (each proxy appends the address it saw), trusted proxies are
// skipped, and the first untrusted address is the client; if every entry is trusted, the
// leftmost one is. An unparsable entry on that walk -> 400. IPv4-mapped IPv6 addresses
// (::ffff:192.0.2.1) are matched as IPv4. An address without "/len" is a single host.

#include <arpa/inet.h>

#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

struct Address {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};  // IPv4 uses the first 4
};

std::optional<Address> parseAddress(std::string_view text) {
  std::string s(text);
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  Address a;
  if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) return a;
  if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) != 1) return std::nullopt;
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(a.bytes.data(), kMapped, 12) == 0) {
    std::memmove(a.bytes.data(), a.bytes.data() + 12, 4);
    std::memset(a.bytes.data() + 4, 0, 12);
    return a;
  }
  a.v6 = true;
  return a;
}

struct Cidr {
  Address net;
  unsigned bits = 0;

  bool contains(const Address& a) const {
    if (a.v6 != net.v6) return false;
    unsigned full = bits / 8;
    if (std::memcmp(a.bytes.data(), net.bytes.data(), full) != 0) return false;
    unsigned rest = bits % 8;
    if (rest == 0) return true;
    uint8_t mask = static_cast<uint8_t>(0xFF << (8 - rest));
    return (a.bytes[full] & mask) == (net.bytes[full] & mask);
  }
};

// "10.0.0.0/8", "2001:db8::/32", "192.0.2.7" (a /32), "::1" (a /128). Host bits must be zero.
Cidr parseCidr(const std::string& text, const std::string& path) {
  size_t slash = text.find('/');
  std::optional<Address> a = parseAddress(std::string_view(text).substr(0, slash));
  if (!a) throw ConfigError(path + ": \"" + text + "\" is not an IPv4 or IPv6 address or CIDR");
  Cidr c;
  c.net = *a;
  unsigned max = a->v6 ? 128 : 32;
  c.bits = max;
  if (slash != std::string::npos) {
    std::string len = text.substr(slash + 1);
    if (len.empty() || len.size() > 3 || len.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(len) > max) {
      throw ConfigError(path + ": \"" + text + "\" has a bad prefix length");
    }
    c.bits = static_cast<unsigned>(std::stoul(len));
    // A mapped IPv4 network written in IPv6 form ("::ffff:10.0.0.0/104") counts in IPv4 bits.
    if (!a->v6 && text.find(':') != std::string::npos) {
      if (c.bits < 96) throw ConfigError(path + ": \"" + text + "\" has a bad prefix length");
      c.bits -= 96;
    }
  }
  Cidr masked = c;
  for (unsigned i = 0; i < 16; ++i) {
    unsigned keep = c.bits > i * 8 ? std::min(8u, c.bits - i * 8) : 0;
    masked.net.bytes[i] &= static_cast<uint8_t>(keep == 0 ? 0 : 0xFF << (8 - keep));
  }
  if (masked.net.bytes != c.net.bytes) {
    throw ConfigError(path + ": \"" + text + "\" has host bits set beyond /" +
                      std::to_string(slash == std::string::npos ? max : c.bits));
  }
  return c;
}

std::vector<Cidr> cidrList(const YAML::Node& cfg, const char* key) {
  std::vector<Cidr> out;
  std::vector<std::string> items = getStrings(cfg, key, "config");
  for (size_t i = 0; i < items.size(); ++i) {
    out.push_back(
        parseCidr(items[i], std::string("config.") + key + "[" + std::to_string(i) + "]"));
  }
  return out;
}

bool inList(const std::vector<Cidr>& list, const Address& a) {
  for (const Cidr& c : list) {
    if (c.contains(a)) return true;
  }
  return false;
}

class IpFilterPlugin : public PluginBase {
 public:
  IpFilterPlugin(const upgate_host_api_t* host, const YAML::Node& cfg) : PluginBase(host) {
    checkKeys(cfg, "config", {"allow", "deny", "trusted_proxies", "forwarded_header"});
    allow_ = cidrList(cfg, "allow");
    deny_ = cidrList(cfg, "deny");
    trusted_ = cidrList(cfg, "trusted_proxies");
    header_ = getString(cfg, "forwarded_header", "config", "X-Forwarded-For");
    if (allow_.empty() && deny_.empty()) {
      throw ConfigError("config: give at least one of allow or deny");
    }
  }

  upgate_decision_t onRequest(upgate_session_t* s, const upgate_request_t*, upgate_reject_t* out) {
    const char* peer_text = host()->client_address(s, nullptr);
    std::optional<Address> client = parseAddress(peer_text != nullptr ? peer_text : "");
    if (!client) return reject(out, {403, "client address unknown"});
    if (!trusted_.empty() && inList(trusted_, *client)) {
      // Collect every instance of the header in order; later ones were appended later.
      std::vector<std::string> hops;
      for (size_t i = 0;; ++i) {
        const char* v = host()->header(s, header_.c_str(), i);
        if (v == nullptr) break;
        for (std::string_view h : split(v, ',')) hops.emplace_back(h);
      }
      for (size_t k = hops.size(); k-- > 0;) {
        std::optional<Address> hop = parseAddress(hops[k]);
        if (!hop) return reject(out, {400, "bad forwarded address"});
        client = hop;
        if (!inList(trusted_, *hop)) break;
      }
    }
    if (inList(deny_, *client)) return reject(out, {403, "address denied"});
    if (!allow_.empty() && !inList(allow_, *client))
      return reject(out, {403, "address not allowed"});
    return UPGATE_CONTINUE;
  }

 private:
  std::vector<Cidr> allow_;
  std::vector<Cidr> deny_;
  std::vector<Cidr> trusted_;
  std::string header_;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::IpFilterPlugin, "ip_filter")
