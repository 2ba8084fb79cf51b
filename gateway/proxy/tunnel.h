#pragma once
// The WebSocket side of an established websocket-route session: what upgate knows and does
// about frames between the 101 and the end, in both modes.
//
//   - Relaying: passthrough hands reads on unchanged and follows frame headers (FrameTracker);
//     frames mode checks everything (FrameRelay) and, with per-leg compression or message hooks,
//     rebuilds messages.
//   - Close handshake, mediated per leg: a close frame from one leg goes to the other, whose
//     reply comes back; once both legs have sent and received one, the session ends. When upgate
//     itself closes (drain, a plugin, a dead peer, a violation) it injects its own close frame at
//     the next frame boundary of that leg and swallows the reply. Nothing is written to a leg
//     after its close frame. timeouts.close bounds the wait for replies.
//   - Keepalive (route `keepalive:`): a leg that sent nothing for `interval` is pinged; if nothing
//     at all arrives within `timeout`, the leg is dead and the other one gets 1001. Pongs that
//     answer upgate's pings are swallowed in frames mode; in passthrough they go on to the other
//     peer, which RFC 6455 §5.5.3 allows (an unsolicited pong needs no answer).
//
// The owning Session keeps the sockets, backpressure, half-close and the idle timeout; it calls
// onData() for every read, onTimer() when nextDue() passes, and close() to end the session
// cleanly. One per tunnel, on the session's loop thread.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "plugin/chain.h"  // MessageVerdict
#include "proxy/frame_relay.h"
#include "proxy/relay.h"
#include "websocket/extensions.h"

namespace upgate {

class TunnelOwner {
 public:
  virtual ~TunnelOwner() = default;
  // Writes to one leg, with backpressure. Returns false if the session ended.
  virtual bool tunnelWrite(bool to_client, const char* data, size_t len) = 0;
  // The same for the close frame that completes the close handshake: nothing more goes to that
  // leg, nor comes from it (its own close frame came first), and tunnelEnd follows, so the owner
  // may send the leg's FIN with these bytes, or close it.
  virtual bool tunnelWriteLast(bool to_client, const char* data, size_t len) {
    return tunnelWrite(to_client, data, len);
  }
  // The close handshake completed, or upgate failed the connection: close both legs once what
  // is queued (close frames) is written.
  virtual void tunnelEnd(const std::string& reason) = 0;
  // A complete message for the plugins' on_message hooks (frames mode, hooks configured).
  virtual MessageVerdict tunnelMessage(bool from_client, uint8_t opcode,
                                       const std::string& payload) = 0;
  // Keepalive cannot ping that leg (a frame in progress towards it has not ended): its transport
  // is to judge the peer instead (Stream::watchPeer); a peer it gives up on comes back as
  // peerLost(). timeout_ms 0: the ping went out after all, or is no longer wanted (the leg spoke,
  // or was sent its close frame): the watch ends.
  virtual void tunnelWatchPeer(bool client, uint32_t timeout_ms) {
    (void)client;
    (void)timeout_ms;
  }
};

// Payload of upgate's keepalive pings (tunnels and tcp bridges): the pong that echoes it is
// recognised as the answer to upgate's own ping.
inline constexpr std::string_view kKeepalivePing = "upgate-keepalive";

// A millisecond setting as the relays keep it (uint32_t: 49 days is plenty; a negative
// duration, which the loader refuses, counts as 0).
inline uint32_t relayMs(int64_t ms) {
  return static_cast<uint32_t>(std::clamp<int64_t>(ms, 0, UINT32_MAX));
}
inline uint32_t relayMs(uint64_t ms) {
  return static_cast<uint32_t>(std::min<uint64_t>(ms, UINT32_MAX));
}

struct TunnelSetup {
  TunnelMode mode = TunnelMode::Passthrough;
  uint64_t max_message_size = 16 * 1024 * 1024;
  bool end_to_end_deflate = false;                   // the peers agreed permessage-deflate
  std::optional<DeflateAgreement> client_deflate;    // upgate's agreement with the client
  std::optional<DeflateAgreement> upstream_deflate;  // ...and with the upstream
  bool message_hooks = false;
  KeepaliveConfig keepalive;
  uint64_t close_timeout_ms = 5000;
  uint64_t session_id = 0;                    // for log lines
  const MessageCounters* messages = nullptr;  // the route's, on this worker
};

class Tunnel final : public Relay {
 public:
  Tunnel(TunnelOwner& owner, const TunnelSetup& setup, uint64_t now_ms);
  Tunnel(const Tunnel&) = delete;
  Tunnel& operator=(const Tunnel&) = delete;

  // Bytes read from a leg; writable (frames mode unmasks in place).
  void onData(bool from_client, char* data, size_t len, uint64_t now_ms) override;
  // Ends the session cleanly: `code` to both legs, then waits for their replies.
  void close(uint16_t code, const std::string& reason, uint64_t now_ms) override;
  // A WebSocket upstream's FIN is a TCP half-close: the session passes it on.
  bool upstreamEnded(uint64_t) override { return false; }
  // Keepalive and the close deadline. Call when nextDue() has passed.
  void onTimer(uint64_t now_ms) override;
  // When onTimer() next has work (UINT64_MAX: nothing scheduled).
  uint64_t nextDue() const override;
  // The tunnel ended (tunnelEnd was called, or a write failed).
  bool ended() const { return ended_; }
  // That leg's close frame arrived (or the leg was declared dead): it sends nothing more.
  bool closeReceivedFrom(bool client) const override { return leg(client).close_received; }
  // Nothing more is written to a leg after its close frame.
  bool discardsFrom(bool client) const override { return leg(!client).close_sent; }
  // Something was scheduled earlier than nextDue() said before (a close deadline, a ping sent
  // while relaying): the owner re-arms its timer. Clears the flag.
  bool takeRearm() override {
    bool r = rearm_;
    rearm_ = false;
    return r;
  }
  FirstClose firstClose() const override { return first_close_; }
  bool closing() const override { return ended_ || close_deadline_ms_ != 0; }
  void readsPaused(bool client, bool paused, uint64_t now_ms) override;
  bool peerLost(bool client, uint64_t now_ms) override;

 private:
  // Relays one direction's output to the other leg.
  class Direction final : public RelayOutput {
   public:
    Direction(Tunnel& t, bool from_client) : t_(t), from_client_(from_client) {}
    bool relayBytes(const char* data, size_t len) override;
    bool relayControl(uint8_t opcode, std::string_view payload, std::string_view frame) override;
    MessageVerdict relayMessage(uint8_t opcode, const std::string& payload) override;

   private:
    Tunnel& t_;
    bool from_client_;
  };

  // Why a leg was declared dead.
  enum class Death : uint8_t { Ping, Stalled, Transport };

  // Per leg: 32 bytes.
  struct Leg {
    uint64_t last_rx_ms = 0;      // bytes last arrived from this leg
    uint64_t ping_sent_ms = 0;    // our ping is unanswered since (0: none)
    uint16_t close_code = 0;      // a close frame to inject at the next frame boundary
    bool want_ping = false;       // quiet for the keepalive interval: ping at the next boundary
    bool close_sent = false;      // a close frame went to this leg: nothing more is written to it
    bool close_received = false;  // this leg sent its close frame: nothing more is read
    bool pong_due = false;        // peer_pings answer: Frames::pong[leg] is to be sent
    bool peer_watched = false;    // a ping found no frame boundary: TCP judges it (watchPeer)
    uint64_t paused_ms = 0;       // the owner stopped reading this leg then (0: reading)
  };

  // Frames mode only, allocated with the tunnel: the relays and what they need.
  struct Frames {
    Frames(Tunnel& t, const FrameRelay::Options& o_up, const FrameRelay::Options& o_down)
        : out_up(t, true), out_down(t, false), up(o_up, out_up), down(o_down, out_down) {}
    Direction out_up;  // client -> upstream
    Direction out_down;
    FrameRelay up;
    FrameRelay down;
    std::string pong[2];  // peer_pings answer: [0] to the upstream, [1] to the client
  };

  Leg& leg(bool client) { return client ? client_ : upstream_; }
  const Leg& leg(bool client) const { return client ? client_ : upstream_; }
  bool atBoundaryTowards(bool to_client) const;
  // last: these bytes complete the close handshake (tunnelWriteLast).
  bool write(bool to_client, const char* data, size_t len, bool last = false);
  bool inject(bool to_client, uint64_t now_ms);
  // Both legs' injections, `first_to_client`'s first.
  bool flushInjections(uint64_t now_ms, bool first_to_client = true);
  void closeSentTo(Leg& l, uint64_t now_ms);
  // Ends the transport's watch (tunnelWatchPeer 0) of a leg whose held-back ping went out or is
  // no longer wanted.
  void unwatch(bool client);
  void fail(bool from_client, ParseError e);
  // Ping: no answer within timeout; Stalled: it took no data for interval + timeout while the
  // other leg waited on it; Transport: its TCP connection gave up on the peer.
  void legDead(bool client, uint64_t now_ms, Death why);
  // When a leg paused since l.paused_ms makes the other one dead (legDead, stalled).
  uint64_t stallDue(const Leg& l) const {
    return l.paused_ms + ping_interval_ms_ + ping_timeout_ms_;
  }
  std::string deadReason() const;
  void checkDone();
  void end(const std::string& reason);
  void countMessages(bool from_client, uint32_t n);

  // A passthrough tunnel is about 200 bytes: an established idle session must stay small.
  TunnelOwner& owner_;
  const uint64_t session_id_;
  const MessageCounters* const messages_;
  std::unique_ptr<Frames> frames_;  // frames mode
  FrameTracker track_up_;           // passthrough: client -> upstream
  FrameTracker track_down_;
  Leg client_;
  Leg upstream_;
  std::string close_reason_;        // reason sent with injected close frames
  uint64_t close_deadline_ms_ = 0;  // the close handshake must be over by then (0: not started)
  uint64_t now_ms_ = 0;             // time of the current onData/onTimer call
  uint32_t ping_interval_ms_;       // keepalive (0: off)
  uint32_t ping_timeout_ms_;
  uint32_t close_timeout_ms_;
  const bool answer_pings_;
  FirstClose first_close_;
  int8_t dead_leg_ = -1;  // 1: the client, 0: the upstream was declared dead (legDead)
  Death dead_why_ = Death::Ping;
  bool ended_ = false;
  bool rearm_ = false;
};

}  // namespace upgate
