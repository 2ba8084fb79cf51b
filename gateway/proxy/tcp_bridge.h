#pragma once
// The relay of a `kind: tcp` route (design.md §1): upgate answers the client's WebSocket
// handshake itself, once a plain TCP (or TLS) connection to the upstream is up, and then
//   - client -> upstream: the payload bytes of the client's data messages (text or binary),
//     as they arrive, form one byte stream;
//   - upstream -> client: each read becomes one binary message.
// This is how a browser reaches a TCP service (VNC, MQTT, a line protocol) that speaks no
// WebSocket, as websockify does.
//
// The client leg gets RFC 6455 in full: frames checked (masking, control frames, UTF-8 of text
// messages, max_message_size), pings answered, keepalive pings if the route asks, and a
// mediated close. The client's close frame is answered and the upstream gets a FIN; the
// upstream's FIN becomes a 1000 close frame whose reply ends the session; a violation is a
// close frame with its code (1002, 1007, 1009) and the end. timeouts.close bounds the waits.
//
// One per session, on its loop thread: 392 bytes with its parser and validator, no heap while
// idle.

#include <cstddef>
#include <cstdint>
#include <string>

#include "config/config.h"
#include "proxy/relay.h"
#include "proxy/tunnel.h"  // TunnelOwner, TunnelSetup
#include "websocket/frame_parser.h"
#include "websocket/message_validator.h"

namespace upgate {

class TcpBridge final : public Relay, private FrameSink {
 public:
  // From `setup`: max_message_size, keepalive (towards the client), close_timeout_ms and
  // session_id; the rest concerns WebSocket upstreams.
  TcpBridge(TunnelOwner& owner, const TunnelSetup& setup, uint64_t now_ms);
  TcpBridge(const TcpBridge&) = delete;
  TcpBridge& operator=(const TcpBridge&) = delete;

  void onData(bool from_client, char* data, size_t len, uint64_t now_ms) override;
  void close(uint16_t code, const std::string& reason, uint64_t now_ms) override;
  bool upstreamEnded(uint64_t now_ms) override;
  void onTimer(uint64_t now_ms) override;
  uint64_t nextDue() const override;
  // The upstream has no close frame: only the client's counts.
  bool closeReceivedFrom(bool client) const override { return client && close_received_; }
  // After upgate's close frame the upstream's bytes are not sent on, nor the client's payloads.
  bool discardsFrom(bool) const override { return close_sent_; }
  bool takeRearm() override {
    bool r = rearm_;
    rearm_ = false;
    return r;
  }
  FirstClose firstClose() const override { return first_close_; }
  bool closing() const override { return ended_ || close_sent_ || close_received_; }
  void readsPaused(bool client, bool paused, uint64_t now_ms) override;

 private:
  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override;
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override;
  bool onFrameEnd(const FrameHeader& h) override;

  // One unmasked frame to the client, header and payload in one write. False: the session
  // ended (stop at once).
  bool sendFrame(uint8_t opcode, const char* data, size_t len);
  void sendClose(uint16_t code, const std::string& reason, uint64_t now_ms);
  bool failWith(ParseError e);  // close frame with e.code, then the end; returns false
  void end(const std::string& reason);

  TunnelOwner& owner_;
  FrameParser parser_;
  MessageValidator validator_;  // fragmentation order, UTF-8, close payloads, message size
  const uint64_t session_id_;
  const MessageCounters* const messages_;
  uint64_t now_ms_ = 0;
  uint64_t last_rx_ms_;             // bytes last arrived from the client
  uint64_t ping_sent_ms_ = 0;       // our ping is unanswered since (0: none)
  uint64_t close_deadline_ms_ = 0;  // our close frame must be answered by then (0: none sent)
  const uint32_t ping_interval_ms_;
  const uint32_t ping_timeout_ms_;
  const uint32_t close_timeout_ms_;
  PendingPong pong_;
  FirstClose first_close_;
  bool close_sent_ = false;
  bool close_received_ = false;
  bool ended_ = false;
  uint64_t client_paused_ms_ = 0;  // the session stopped reading the client then (0: reading)
  bool rearm_ = false;
};

}  // namespace upgate
