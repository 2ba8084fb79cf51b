// route_by_header: chooses the upstream from a header, cookie or query value, with a weighted
// canary split for everyone else.
//
// config:
//   from: header:X-Version      # header:NAME | cookie:NAME | query:NAME (optional)
//   values:                     # exact value -> upstream name
//     beta: chat-beta
//   split:                      # no value matched: choose by weight (optional)
//     - { upstream: chat-v1, weight: 90 }
//     - { upstream: chat-v2, weight: 10 }
//   sticky: ip                  # what the split hashes: ip | identity | none (random) ; default ip
//
// With `sticky: ip` a client keeps landing on the same side of the split across reconnects;
// `identity` uses the identity an earlier plugin set (falling back to the IP). Nothing chosen
// (no match, no split) leaves the decision to the route table. The gateway checks that the
// chosen upstream exists.

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

// FNV-1a, then the splitmix64 finaliser so that nearby keys spread evenly over the weights.
uint64_t hashKey(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

class RouteByHeaderPlugin : public PluginBase {
 public:
  RouteByHeaderPlugin(const upgate_host_api_t* host, const YAML::Node& cfg) : PluginBase(host) {
    checkKeys(cfg, "config", {"from", "values", "split", "sticky"});
    std::string from = getString(cfg, "from", "config");
    if (!from.empty()) {
      size_t colon = from.find(':');
      std::string kind = from.substr(0, colon);
      name_ = colon == std::string::npos ? "" : from.substr(colon + 1);
      if (name_.empty() || (kind != "header" && kind != "cookie" && kind != "query")) {
        throw ConfigError("config.from: \"" + from +
                          "\" is not header:NAME, cookie:NAME or query:NAME");
      }
      source_ = kind == "header"   ? Source::Header
                : kind == "cookie" ? Source::Cookie
                                   : Source::Query;
    }
    YAML::Node values = cfg["values"];
    if (values && !values.IsNull()) {
      if (!values.IsMap()) throw ConfigError("config.values: expected a map of value: upstream");
      if (from.empty()) throw ConfigError("config.values: needs config.from");
      for (const auto& kv : values) {
        if (!kv.second.IsScalar() || kv.second.Scalar().empty()) {
          throw ConfigError("config.values." + kv.first.as<std::string>() +
                            ": expected an upstream name");
        }
        values_[kv.first.as<std::string>()] = kv.second.as<std::string>();
      }
    }
    YAML::Node split = cfg["split"];
    if (split && !split.IsNull()) {
      if (!split.IsSequence()) throw ConfigError("config.split: expected a list");
      for (size_t i = 0; i < split.size(); ++i) {
        const std::string path = "config.split[" + std::to_string(i) + "]";
        checkKeys(split[i], path, {"upstream", "weight"});
        std::string up = getString(split[i], "upstream", path);
        if (up.empty()) throw ConfigError(path + ".upstream: required");
        auto w = static_cast<uint64_t>(getNumber(split[i], "weight", path, 1, 0, 1e6));
        total_ += w;
        split_.push_back({up, total_});
      }
      if (total_ == 0) throw ConfigError("config.split: the weights add up to 0");
    }
    if (values_.empty() && split_.empty()) throw ConfigError("config: give values, split or both");
    std::string sticky = getString(cfg, "sticky", "config", "ip");
    if (sticky == "ip") {
      sticky_ = Sticky::Ip;
    } else if (sticky == "identity") {
      sticky_ = Sticky::Identity;
    } else if (sticky == "none") {
      sticky_ = Sticky::None;
    } else {
      throw ConfigError("config.sticky: \"" + sticky + "\" is not ip, identity or none");
    }
  }

  upgate_decision_t onRoute(upgate_session_t* s, const upgate_request_t* r, upgate_route_t* route,
                            upgate_reject_t*) {
    if (!values_.empty()) {
      std::optional<std::string> v = value(s, r);
      if (v) {
        auto it = values_.find(*v);
        if (it != values_.end()) {
          route->upstream = it->second.c_str();
          return UPGATE_CONTINUE;
        }
      }
    }
    if (!split_.empty()) route->upstream = pick(s)->c_str();
    return UPGATE_CONTINUE;
  }

 private:
  enum class Source { Header, Cookie, Query };
  enum class Sticky { Ip, Identity, None };
  struct Slice {
    std::string upstream;
    uint64_t upto;  // cumulative weight
  };

  std::optional<std::string> value(upgate_session_t* s, const upgate_request_t* r) const {
    switch (source_) {
      case Source::Header: {
        const char* v = host()->header(s, name_.c_str(), 0);
        return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
      }
      case Source::Cookie:
        return cookieValue(host(), s, name_);
      case Source::Query:
        return r->query != nullptr ? queryParam(r->query, name_) : std::nullopt;
    }
    return std::nullopt;
  }

  const std::string* pick(upgate_session_t* s) const {
    uint64_t h = 0;
    if (sticky_ == Sticky::None) {
      thread_local std::mt19937_64 rng{std::random_device{}()};
      h = rng();
    } else {
      const char* user = sticky_ == Sticky::Identity ? host()->identity(s, nullptr) : nullptr;
      const char* ip = host()->client_address(s, nullptr);
      h = hashKey(user != nullptr ? std::string("u:") + user
                                  : std::string("ip:") + (ip != nullptr ? ip : ""));
    }
    uint64_t point = h % total_;
    for (const Slice& sl : split_) {
      if (point < sl.upto) return &sl.upstream;
    }
    return &split_.back().upstream;
  }

  Source source_ = Source::Header;
  std::string name_;
  std::map<std::string, std::string> values_;
  std::vector<Slice> split_;
  uint64_t total_ = 0;
  Sticky sticky_ = Sticky::Ip;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::RouteByHeaderPlugin, "route_by_header")
