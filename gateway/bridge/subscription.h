#pragma once
// A client subscribed to a channel (route kinds `channel` and `longpoll`). upgate is the
// WebSocket server here: it answered the 101 itself, writes each published message as one
// unmasked frame, answers pings, runs the close handshake, and (longpoll routes) turns the
// client's own messages into HTTP POSTs to the legacy app, whose answer goes back to this client.
// A subscriber reading Server-Sent Events instead gets `id:`/`data:` events and sends nothing.
//
// Memory: a subscription holds no buffer while idle. A slow subscriber's unsent bytes are
// bounded by the route's max_queue_bytes: beyond it the session is closed with 1008 (policy
// `close`) or messages are skipped for it (policy `drop`).

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>

#include "bridge/hub.h"
#include "config/config.h"
#include "net/stream.h"
#include "proxy/generation.h"
#include "proxy/http_client.h"
#include "proxy/relay.h"
#include "websocket/close_code.h"
#include "websocket/frame_parser.h"
#include "websocket/message_validator.h"

namespace upgate {

class Worker;
struct RouteMetrics;

// What a subscription needs from the session that owns the client connection.
class SubscriptionOwner {
 public:
  virtual ~SubscriptionOwner() = default;
  virtual Stream& clientStream() = 0;
  virtual uint64_t sessionId() const = 0;
  // The subscription is over (close handshake done, protocol error, overflow): end the session.
  // `code` is the WebSocket close code sent or received (0 for SSE).
  virtual void subscriptionEnded(uint16_t code, const std::string& reason) = 0;
  // We sent a close frame and wait for the client's: bound the wait.
  virtual void subscriptionClosing() = 0;
  // Counts payload bytes for the access log.
  virtual void countBytes(uint64_t in, uint64_t out) = 0;
};

std::string encodeWsFrame(const ChannelMessage& m);
std::string encodeSseEvent(const ChannelMessage& m);
// A route's overflow_notice for `count` skipped messages: "{count}" replaced, then a text frame
// (WebSocket) or an `overflow` event (SSE).
std::string encodeOverflowNotice(std::string_view notice, uint64_t count, bool sse);

class Subscription final : public ChannelSubscriber, private FrameSink {
 public:
  enum class Mode { WebSocket, Sse };
  // `route` belongs to `generation`, which the owner keeps for longer than this.
  Subscription(Worker& worker, const Generation& generation, SubscriptionOwner& owner,
               const RouteConfig& route, std::string channel, Mode mode);
  ~Subscription() override;
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // Registers with the worker (and so the hub). `send_target` is the route's send target
  // expanded for this client (longpoll), `poll` the poll it would start (longpoll).
  void start(const PollRequest& poll, std::string send_target, HeaderList forward_headers);
  // Bytes from the client (WebSocket frames). The buffer is the loop's read buffer: writable.
  void onClientData(char* data, size_t len);
  // Server-initiated close (drain: 1001, overflow: 1008); waits for the client's close frame
  // up to the close timeout, which the owner enforces.
  void close(uint16_t code, const std::string& reason);
  bool closeSent() const { return close_sent_; }
  // "1008 subscriber too slow": the close frame we sent, for logs.
  const std::string& closeSentDescription() const { return close_description_; }
  const std::string& channel() const { return channel_; }
  // The first close frame of the WebSocket, either way (CloseOrigin::None: none yet; SSE).
  FirstClose firstClose() const { return first_close_; }
  // Messages this subscriber was not sent (overflow: drop).
  uint64_t dropped() const { return dropped_; }

  void deliver(const Delivery& d) override;
  // The client's queue fell to half of max_queue_bytes (the owner sets the stream's high water
  // to it): a gap in what it was sent is told now (overflow_notice) rather than only before the
  // next message, which may never come.
  void onClientDrain();

 private:
  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override;
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override;
  bool onFrameEnd(const FrameHeader& h) override;

  void fail(uint16_t code, const std::string& reason);
  bool failWith(ParseError e);  // fail() with a parse error; returns false (stop the parser)
  bool writeFrame(uint8_t opcode, const char* data, size_t len);
  void onClientMessage();
  void sendNext();
  // Writes the overflow notice for the messages skipped since the last one told, if any and if
  // the route has one. False when the write failed (the subscription has ended).
  bool announceGap();

  Worker& worker_;
  const Generation& generation_;
  SubscriptionOwner& owner_;
  const RouteConfig& route_;
  const std::string channel_;
  const Mode mode_;
  RouteMetrics& metrics_;  // the route's, on this worker
  bool registered_ = false;
  FrameParser parser_;

  // The message being received from the client (fragments reassembled, bounded).
  MessageValidator validator_;  // fragmentation order, UTF-8, close payloads, message size
  std::string message_;

  // longpoll: client messages POSTed to the legacy app, one at a time, in order. Each keeps
  // whether it was a binary message: its POST's Content-Type says so, however many messages
  // the client sent after it while it waited.
  struct OutgoingMessage {
    std::string payload;
    bool binary = false;
  };
  std::string send_target_;
  HeaderList forward_headers_;
  std::deque<OutgoingMessage> outbox_;
  std::shared_ptr<HttpClient::Call> send_call_;

  uint64_t dropped_ = 0;      // messages not sent: over max_queue_bytes with overflow: drop
  uint64_t unannounced_ = 0;  // ...of which overflow_notice has not told yet
  PendingPong pong_;
  bool close_sent_ = false;
  std::string close_description_;
  FirstClose first_close_;
  bool ended_ = false;
};

}  // namespace upgate
