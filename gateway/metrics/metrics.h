#pragma once
// Counters for GET /metrics (Prometheus text exposition format 0.0.4).
//
// Each worker owns a Registry and is the only thread that writes to it, so counting is a plain
// load, add and store (no locked instruction, no shared cache line on the data path); the main
// thread sums every registry when /metrics is asked for. A series is created on its first use
// (under the registry's mutex, which collection takes too); its Counter never moves, so hot
// paths look a series up once (per session, per listener) and keep the pointer.
//
// What is counted, and where, is listed with the families in metrics.cc and in the README.

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace upgate::metrics {

enum class Family {
  ConnectionsAccepted,  // counter {listener}
  ConnectionsOpen,      // gauge
  ConnectionsRejected,  // counter {listener}: over limits.max_connections
  Requests,             // counter {route, code}: 101 = WebSocket upgrades
  Bytes,                // counter {route, direction}: after the 101 / request and response
  Messages,             // counter {route, direction}: WebSocket data messages
  ReadPauses,           // counter {route, side}: backpressure stopped reading that side
  UpstreamErrors,       // counter {upstream, code}: 502/504 upgate answered for that upstream
  WebSocketCloses,      // counter {route, code, by}: how each WebSocket session began to end
  ChannelSubscribers,   // gauge
  ChannelDeliveries,    // counter
  ChannelDropped,       // counter {route}: not sent to a subscriber over max_queue_bytes (drop)
  Published,            // counter: messages published through POST /publish
  LongPolls,            // counter {route, result}
  Reloads,              // counter {result}
  ConfigGeneration,     // gauge
  Count
};

struct FamilyInfo {
  const char* name;
  const char* type;  // "counter" or "gauge"
  const char* help;
  bool labelled;  // false: one series, shown as 0 before anything counted
};
const FamilyInfo& info(Family f);

// One writer (the registry's owner), any number of readers. Gauges go down with sub(); the sum
// over registries is taken modulo 2^64, so a gauge that moved between workers adds up.
class Counter {
 public:
  void add(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, kRelaxed); }
  void sub(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) - n, kRelaxed); }
  void set(uint64_t v) { v_.store(v, kRelaxed); }
  uint64_t value() const { return v_.load(kRelaxed); }

 private:
  static constexpr std::memory_order kRelaxed = std::memory_order_relaxed;
  std::atomic<uint64_t> v_{0};
};

// `name="value",...` with values escaped as the format wants (\\, \", \n).
std::string labels(std::initializer_list<std::pair<std::string_view, std::string_view>> pairs);

// (family, labels) -> value, summed over registries.
using Snapshot = std::map<std::pair<Family, std::string>, uint64_t>;

class Registry {
 public:
  // Owner thread only. `labels` as made by labels() ("" for none).
  Counter& get(Family family, const std::string& label_text = {});
  // Any thread: adds every series into `out`.
  void collect(Snapshot& out) const;

 private:
  mutable std::mutex mutex_;  // the map's shape: insertions (owner) and collect (others)
  // key: one byte of family, then the labels. Node-based, so a Counter never moves.
  std::unordered_map<std::string, Counter> series_;
};

// The exposition text: every family in enum order with # HELP and # TYPE, series sorted by
// labels; an unlabelled family with no series reads 0.
std::string render(const Snapshot& snapshot);

}  // namespace upgate::metrics
