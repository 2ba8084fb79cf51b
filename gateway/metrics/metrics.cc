#include "metrics/metrics.h"

#include <array>

namespace upgate::metrics {
namespace {

constexpr std::array<FamilyInfo, static_cast<size_t>(Family::Count)> kFamilies{{
    {"upgate_connections_accepted_total", "counter", "TCP connections accepted, by listener.",
     true},
    {"upgate_connections_open", "gauge",
     "Client connections open: WebSocket sessions, SSE readers, HTTP connections.", false},
    {"upgate_connections_rejected_total", "counter",
     "Client connections turned away because limits.max_connections were open, by listener "
     "(plain: a 503; TLS: closed before the handshake).",
     true},
    {"upgate_requests_total", "counter",
     "Requests answered, by route and status (101: WebSocket upgrades; route \"\": none "
     "matched).",
     true},
    {"upgate_bytes_total", "counter",
     "Bytes relayed, by route and direction (up: client to upstream; WebSocket bytes after the "
     "101, HTTP request bodies and responses, channel payloads).",
     true},
    {"upgate_messages_total", "counter",
     "WebSocket data messages, by route and direction (up: from the client; down: from the "
     "upstream, or written to subscribers), counted as each message's last frame begins.",
     true},
    {"upgate_read_pauses_total", "counter",
     "Times backpressure stopped reading a side (client or upstream), by route.", true},
    {"upgate_upstream_errors_total", "counter",
     "Requests upgate answered 502 or 504 because of an upstream, by upstream and status.", true},
    {"upgate_websocket_closes_total", "counter",
     "WebSocket sessions ended, by route, the code of the first close frame and who sent it "
     "(client, upstream, or gateway: upgate itself); 1006 when none was sent, by the side whose "
     "connection ended first.",
     true},
    {"upgate_channel_subscribers", "gauge", "Channel and long-poll subscribers.", false},
    {"upgate_channel_deliveries_total", "counter",
     "Channel messages delivered (one per subscriber and message).", false},
    {"upgate_channel_dropped_total", "counter",
     "Channel messages not sent to a subscriber whose unsent bytes were over max_queue_bytes "
     "(overflow: drop), by route (one per subscriber and message).",
     true},
    {"upgate_published_messages_total", "counter", "Messages published with POST /publish.", false},
    {"upgate_longpoll_polls_total", "counter",
     "Upstream long-polls finished, by route and result (data; empty: no change, or the poll "
     "timeout; error; too_large: over longpoll.max_response_bytes).",
     true},
    {"upgate_reloads_total", "counter", "Configuration reloads, by result (ok, failed).", true},
    {"upgate_config_generation", "gauge",
     "The configuration generation new connections use (1 at start, +1 per reload).", false},
}};

std::string key(Family f, const std::string& label_text) {
  std::string k(1, static_cast<char>(f));
  k += label_text;
  return k;
}

}  // namespace

const FamilyInfo& info(Family f) {
  return kFamilies[static_cast<size_t>(f)];
}

std::string labels(std::initializer_list<std::pair<std::string_view, std::string_view>> pairs) {
  std::string out;
  for (const auto& [name, value] : pairs) {
    if (!out.empty()) out += ',';
    out.append(name);
    out += "=\"";
    for (char c : value) {
      if (c == '\\' || c == '"') {
        out += '\\';
        out += c;
      } else if (c == '\n') {
        out += "\\n";
      } else {
        out += c;
      }
    }
    out += '"';
  }
  return out;
}

Counter& Registry::get(Family family, const std::string& label_text) {
  std::string k = key(family, label_text);
  // Only the owner inserts, so its own lookups need no lock.
  auto it = series_.find(k);
  if (it != series_.end()) return it->second;
  std::lock_guard<std::mutex> lock(mutex_);
  return series_.try_emplace(std::move(k)).first->second;
}

void Registry::collect(Snapshot& out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [k, counter] : series_) {
    auto family = static_cast<Family>(static_cast<unsigned char>(k[0]));
    out[{family, k.substr(1)}] += counter.value();
  }
}

std::string render(const Snapshot& snapshot) {
  std::string out;
  for (size_t i = 0; i < kFamilies.size(); ++i) {
    const auto family = static_cast<Family>(i);
    const FamilyInfo& f = kFamilies[i];
    out += "# HELP ";
    out += f.name;
    out += ' ';
    out += f.help;
    out += "\n# TYPE ";
    out += f.name;
    out += ' ';
    out += f.type;
    out += '\n';
    auto it = snapshot.lower_bound({family, std::string()});
    if (it == snapshot.end() || it->first.first != family) {
      // No series yet: a plain counter or gauge still reads 0; labelled ones have none.
      if (!f.labelled) {
        out += f.name;
        out += " 0\n";
      }
      continue;
    }
    for (; it != snapshot.end() && it->first.first == family; ++it) {
      out += f.name;
      if (!it->first.second.empty()) {
        out += '{';
        out += it->first.second;
        out += '}';
      }
      out += ' ';
      out += std::to_string(it->second);
      out += '\n';
    }
  }
  return out;
}

}  // namespace upgate::metrics
