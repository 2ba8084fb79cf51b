// rate_limit: token buckets for handshakes, per client IP, identity or header value -> 429, and
// for WebSocket messages, per session -> close 1008.
//
// config:
//   rate: 5            # handshakes per second per key, for the whole process (> 0)
//   burst: 10          # bucket size: handshakes allowed at once (default: max(1, rate))
//   key: ip            # ip | identity (the identity an earlier plugin set; else the IP) |
//                      # header:NAME (requests without it share one bucket)
//   max_keys: 100000   # buckets kept per worker; full (idle) buckets are dropped first
//   messages:          # optional: a message rate per session (routes in `mode: frames` only)
//     rate: 50         #   messages per second (> 0)
//     burst: 100       #   messages allowed at once (default: max(1, rate))
//     direction: client  # client (messages from the client) | upstream | both (one bucket)
//
// At least one of `rate` and `messages` is required; without `rate` handshakes are not limited.
//
// Handshake buckets: per-worker semantics. Each worker loop keeps its own buckets, with no locks
// and no shared cache lines: it refills at rate/workers per second and holds at most
// max(1, burst/workers) tokens. The kernel spreads a client's connections over the workers
// (SO_REUSEPORT hashes the 4-tuple), so the process as a whole admits about `rate` per second
// per key, and never more than max(burst, workers) + rate*t handshakes in any t seconds: the split
// can make the limit stricter for an unlucky client, never looser. Buckets are not shared between
// gateway processes or machines. The clock is the loop's monotonic clock (host->now_ms).
//
// A refusal answers 429 with Retry-After: the whole seconds until this worker's bucket holds a
// token again.
//
// Message buckets: one per session, created full at the session's first counted message and
// freed when it ends. A session lives on one worker, so its bucket is that worker's alone and
// `messages.rate` and `messages.burst` apply to each session unchanged (no split by workers);
// they limit one connection, not a client with several connections. Complete data messages count
// (after reassembly; control frames do not). The message that finds the bucket empty closes the
// session with 1008 ("message rate exceeded") and is not forwarded. Messages are seen only on
// routes in `mode: frames`; on passthrough routes `messages:` has no effect, and without
// `messages:` on_message returns at once.

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

struct Bucket {
  double tokens = 0;
  uint64_t last_ms = 0;
};

// One worker's buckets, padded so two workers never write the same cache line.
struct alignas(64) WorkerTable {
  std::unordered_map<std::string, Bucket> buckets;
};

class RateLimitPlugin : public PluginBase {
 public:
  RateLimitPlugin(const upgate_host_api_t* host, const YAML::Node& cfg)
      : PluginBase(host), tables_(std::max<uint32_t>(1, host->worker_count)) {
    checkKeys(cfg, "config", {"rate", "burst", "key", "max_keys", "messages"});
    if (YAML::Node m = cfg["messages"]; m && !m.IsNull()) loadMessages(m);
    if (!cfg["rate"]) {
      if (!limit_messages_) {
        throw ConfigError("config.rate: required (handshakes per second), unless messages: is set");
      }
      if (cfg["burst"] || cfg["key"] || cfg["max_keys"]) {
        throw ConfigError("config: burst, key and max_keys need a handshake rate (config.rate)");
      }
      return;
    }
    limit_handshakes_ = true;
    const double rate = getNumber(cfg, "rate", "config", 0, 1e-6, 1e9);
    const double burst = getNumber(cfg, "burst", "config", std::max(1.0, rate), 1, 1e9);
    max_keys_ = static_cast<size_t>(getNumber(cfg, "max_keys", "config", 100000, 1, 1e9));
    const double workers = static_cast<double>(tables_.size());
    rate_per_ms_ = rate / workers / 1000.0;
    capacity_ = std::max(1.0, std::floor(burst / workers));
    std::string key = getString(cfg, "key", "config", "ip");
    if (key == "ip") {
      key_ = Key::Ip;
    } else if (key == "identity") {
      key_ = Key::Identity;
    } else if (key.rfind("header:", 0) == 0 && key.size() > 7) {
      key_ = Key::Header;
      header_ = key.substr(7);
    } else {
      throw ConfigError("config.key: \"" + key + "\" is not ip, identity or header:NAME");
    }
  }

  upgate_decision_t onRequest(upgate_session_t* s, const upgate_request_t*, upgate_reject_t* out) {
    if (!limit_handshakes_) return UPGATE_CONTINUE;
    WorkerTable& t = tables_[host()->worker_index(s) % tables_.size()];
    const uint64_t now = host()->now_ms(s);
    const std::string k = keyOf(s);
    auto it = t.buckets.find(k);
    if (it == t.buckets.end()) {
      if (t.buckets.size() >= max_keys_) sweep(t, now);
      if (t.buckets.size() >= max_keys_) {
        // Still full of active clients: admit untracked rather than evict someone's debt.
        log(s, UPGATE_LOG_WARN, "bucket table full; request not limited");
        return UPGATE_CONTINUE;
      }
      it = t.buckets.emplace(k, Bucket{capacity_, now}).first;
    }
    Bucket& b = it->second;
    refill(b, now);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return UPGATE_CONTINUE;
    }
    const double wait_s = (1 - b.tokens) / rate_per_ms_ / 1000.0;
    thread_local std::string retry_after;
    thread_local upgate_header_t header;
    retry_after = std::to_string(std::max<long long>(1, static_cast<long long>(std::ceil(wait_s))));
    header = upgate_header_t{"Retry-After", retry_after.c_str()};
    return reject(out, {429, "rate limited", &header, 1});
  }

  upgate_message_action_t onMessage(upgate_session_t* s, const upgate_message_t* m,
                                    upgate_message_result_t* out) {
    if (!limit_messages_) return UPGATE_MESSAGE_PASS;
    const bool from_client = m->direction == UPGATE_CLIENT_TO_UPSTREAM;
    if ((from_client && !count_client_) || (!from_client && !count_upstream_)) {
      return UPGATE_MESSAGE_PASS;
    }
    const uint64_t now = host()->now_ms(s);
    auto* b = static_cast<Bucket*>(host()->get_data(s));
    if (b == nullptr) {
      b = new Bucket{msg_capacity_, now};
      host()->set_data(s, b);
    }
    refill(*b, now, msg_capacity_, msg_rate_per_ms_);
    if (b->tokens >= 1) {
      b->tokens -= 1;
      return UPGATE_MESSAGE_PASS;
    }
    log(s, UPGATE_LOG_INFO, "message rate exceeded; closing with 1008");
    out->close_code = 1008;
    out->close_reason = "message rate exceeded";
    return UPGATE_MESSAGE_CLOSE;
  }

  void onClose(upgate_session_t* s, uint16_t, const char*) {
    delete static_cast<Bucket*>(host()->get_data(s));
    host()->set_data(s, nullptr);
  }

 private:
  enum class Key { Ip, Identity, Header };

  void loadMessages(const YAML::Node& m) {
    checkKeys(m, "config.messages", {"rate", "burst", "direction"});
    if (!m["rate"]) throw ConfigError("config.messages.rate: required (messages per second)");
    const double rate = getNumber(m, "rate", "config.messages", 0, 1e-6, 1e9);
    msg_capacity_ = getNumber(m, "burst", "config.messages", std::max(1.0, rate), 1, 1e9);
    msg_capacity_ = std::floor(msg_capacity_);
    msg_rate_per_ms_ = rate / 1000.0;
    const std::string dir = getString(m, "direction", "config.messages", "client");
    if (dir == "client") {
      count_client_ = true;
    } else if (dir == "upstream") {
      count_upstream_ = true;
    } else if (dir == "both") {
      count_client_ = count_upstream_ = true;
    } else {
      throw ConfigError("config.messages.direction: \"" + dir +
                        "\" is not client, upstream or both");
    }
    limit_messages_ = true;
  }

  std::string keyOf(upgate_session_t* s) const {
    if (key_ == Key::Identity) {
      if (const char* user = host()->identity(s, nullptr)) return std::string("u:") + user;
    } else if (key_ == Key::Header) {
      const char* v = host()->header(s, header_.c_str(), 0);
      return std::string("h:") + (v != nullptr ? v : "");
    }
    const char* ip = host()->client_address(s, nullptr);
    return std::string("ip:") + (ip != nullptr ? ip : "");
  }

  void refill(Bucket& b, uint64_t now) const { refill(b, now, capacity_, rate_per_ms_); }
  static void refill(Bucket& b, uint64_t now, double capacity, double rate_per_ms) {
    if (now > b.last_ms) {
      b.tokens = std::min(capacity, b.tokens + static_cast<double>(now - b.last_ms) * rate_per_ms);
    }
    b.last_ms = std::max(b.last_ms, now);
  }

  void sweep(WorkerTable& t, uint64_t now) const {
    for (auto it = t.buckets.begin(); it != t.buckets.end();) {
      refill(it->second, now);
      it = it->second.tokens >= capacity_ ? t.buckets.erase(it) : std::next(it);
    }
  }

  std::vector<WorkerTable> tables_;
  double rate_per_ms_ = 0;
  double capacity_ = 1;
  size_t max_keys_ = 100000;
  Key key_ = Key::Ip;
  std::string header_;
  bool limit_handshakes_ = false;
  bool limit_messages_ = false;
  bool count_client_ = false;
  bool count_upstream_ = false;
  double msg_rate_per_ms_ = 0;
  double msg_capacity_ = 1;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::RateLimitPlugin, "rate_limit")
