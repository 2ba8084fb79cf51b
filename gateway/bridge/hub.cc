#include "bridge/hub.h"

#include <algorithm>
#include <functional>

#include "proxy/worker.h"

namespace upgate {

namespace {
constexpr char kScope = '\x1f';  // a control character: never in a valid name
}

bool isValidChannelName(std::string_view name) {
  return !name.empty() && std::none_of(name.begin(), name.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
}

std::string hubChannelKey(const RouteConfig& route, std::string_view name) {
  if (route.kind != RouteKind::LongPoll) return std::string(name);
  std::string key;
  key.reserve(route.name.size() + name.size() + 2);
  key.append(1, kScope).append(route.name).append(1, kScope).append(name);
  return key;
}

std::string channelForLog(std::string_view key) {
  if (key.empty() || key[0] != kScope) return std::string(key);
  std::string shown(key.substr(1));
  size_t cut = shown.find(kScope);
  if (cut != std::string::npos) shown[cut] = ':';
  return shown;
}

unsigned Hub::ownerOf(const std::string& channel) const {
  return static_cast<unsigned>(std::hash<std::string>{}(channel) % workers_.size());
}

void Hub::subscribed(unsigned worker, const std::string& channel, const Generation& generation,
                     const RouteConfig& route, const PollRequest& poll) {
  std::lock_guard<std::mutex> lock(mutex_);
  Channel& c = channels_[channel];
  if (c.per_worker.empty()) c.per_worker.resize(workers_.size());
  ++c.per_worker[worker];
  if (c.total++ == 0 && route.kind == RouteKind::LongPoll) {
    c.polled = true;
    // Posted under the lock: the owner sees start/release in the order the counts changed.
    Worker* owner = workers_[ownerOf(channel)];
    // The task holds the route's generation: the subscriber may be gone (and a reload done)
    // before it runs.
    const RouteConfig* r = &route;
    owner->post([owner, channel, g = generation.shared_from_this(), r, poll] {
      owner->acquirePoller(channel, g, *r, poll);
    });
  }
}

void Hub::unsubscribed(unsigned worker, const std::string& channel) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = channels_.find(channel);
  if (it == channels_.end() || it->second.per_worker[worker] == 0) return;
  Channel& c = it->second;
  --c.per_worker[worker];
  if (--c.total != 0) return;
  if (c.polled) {  // channel routes have no poller to release
    c.polled = false;
    Worker* owner = workers_[ownerOf(channel)];
    owner->post([owner, channel] { owner->releasePoller(channel); });
  }
  // An entry that carries a sequence number stays (it is tiny), so a channel's numbers never
  // restart. One nothing was ever published to goes: clients choosing ever new names would
  // otherwise grow the map for good.
  if (c.seq == 0) channels_.erase(it);
}

uint64_t Hub::publish(const std::string& channel, std::string payload, bool binary,
                      size_t* workers_reached) {
  auto message = std::make_shared<ChannelMessage>();
  message->payload = std::move(payload);
  message->binary = binary;
  std::lock_guard<std::mutex> lock(mutex_);
  Channel& c = channels_[channel];
  if (c.per_worker.empty()) c.per_worker.resize(workers_.size());
  message->seq = ++c.seq;
  MessagePtr shared = std::move(message);
  size_t reached = 0;
  for (size_t w = 0; w < workers_.size(); ++w) {
    if (c.per_worker[w] == 0) continue;
    Worker* target = workers_[w];
    target->post([target, channel, shared] { target->deliverLocal(channel, shared); });
    ++reached;
  }
  if (workers_reached) *workers_reached = reached;
  return shared->seq;
}

size_t Hub::channelCount() {
  std::lock_guard<std::mutex> lock(mutex_);
  return channels_.size();
}

size_t Hub::subscribers(const std::string& channel) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = channels_.find(channel);
  return it == channels_.end() ? 0 : it->second.total;
}

}  // namespace upgate
