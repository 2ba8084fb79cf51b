#pragma once
// The process-wide channel hub: who subscribes to which channel on which worker, and the
// fan-out of published messages. Each worker keeps its own subscriber lists (touched only on its
// loop); the hub keeps per-channel counts per worker and posts each message once to every
// worker that has subscribers. Publishes, subscribes and unsubscribes take one mutex — control
// events, never per byte. Holding it while posting keeps every channel's messages in one order
// on every worker, whichever thread published them.
//
// Long-poll channels: the first subscriber in the process starts the channel's poller on its
// owner worker (hash of the key); when the last one leaves, the owner stops it after a grace.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.h"
#include "http/request_head.h"

namespace upgate {

class Worker;
struct Generation;

// Channel names, as a request's template or the publish API give them, are text: not empty, no
// control characters (they also go into logs as they are).
bool isValidChannelName(std::string_view name);

// The hub's key for channel `name` of `route`. Channel routes share one namespace with the
// publish API: a message published to "sports" reaches every channel route keyed "sports". A
// long-poll channel belongs to its route, whose upstream alone feeds it, so its key also names
// the route, in a form no valid name can take ("\x1f" + route + "\x1f" + name): subscribers of
// another route, and publishers, cannot reach it.
std::string hubChannelKey(const RouteConfig& route, std::string_view name);
// A key as logs show it: the name itself, or "route:name" for a long-poll channel.
std::string channelForLog(std::string_view key);

struct ChannelMessage {
  std::string payload;
  bool binary = false;
  uint64_t seq = 0;  // per channel, from 1
};
using MessagePtr = std::shared_ptr<const ChannelMessage>;

// Per-worker encodings of one message, built once per worker and written to every local
// subscriber (with uv_try_write, so usually without a copy).
// Each encoding is built on first use, so a worker with only WebSocket subscribers never
// builds SSE events.
class Delivery {
 public:
  explicit Delivery(const ChannelMessage& m) : message(m) {}
  const ChannelMessage& message;
  const std::string& wsFrame() const;   // header + payload, unmasked
  const std::string& sseEvent() const;  // "id: N\ndata: ...\n\n"

 private:
  mutable std::string ws_frame_;
  mutable std::string sse_event_;
};

// What a long-poll channel's poller sends, taken from the subscriber that starts it: the route's
// poll target expanded for that request, and the headers of longpoll.poll_forward_headers.
struct PollRequest {
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  // The subscriber's request it was made from: a reload makes the poll again from it.
  std::shared_ptr<const RequestHead> origin;
};

// A session subscribed to a channel (loop thread only).
class ChannelSubscriber {
 public:
  virtual ~ChannelSubscriber() = default;
  virtual void deliver(const Delivery& delivery) = 0;
};

class Hub {
 public:
  // Called once, before any worker runs.
  void setWorkers(std::vector<Worker*> workers) { workers_ = std::move(workers); }

  // From `worker`'s loop, after it added the subscriber to its local list. `route` is a
  // longpoll or channel route of `generation`; `poll` is the route's poll request made from
  // this subscriber's (longpoll only) and is used if it starts the poller, which then keeps
  // `generation` (and so `route`) until a reload moves it to a newer one (Poller::follow).
  void subscribed(unsigned worker, const std::string& channel, const Generation& generation,
                  const RouteConfig& route, const PollRequest& poll);
  // From `worker`'s loop, after it removed the subscriber from its local list.
  void unsubscribed(unsigned worker, const std::string& channel);

  // Any thread. Returns the message's sequence number and how many workers it went to.
  uint64_t publish(const std::string& channel, std::string payload, bool binary,
                   size_t* workers_reached = nullptr);
  // Subscribers in the process (all workers), for the admin API and tests.
  size_t subscribers(const std::string& channel);
  // Channels the hub keeps an entry for (tests: entries do not pile up).
  size_t channelCount();

 private:
  struct Channel {
    std::vector<uint32_t> per_worker;  // subscriber counts
    uint64_t total = 0;
    uint64_t seq = 0;
    bool polled = false;  // a poller was started for it (the owner releases it when it empties)
  };
  unsigned ownerOf(const std::string& channel) const;

  std::vector<Worker*> workers_;
  std::mutex mutex_;
  std::unordered_map<std::string, Channel> channels_;
};

}  // namespace upgate
