#pragma once
// What a Session drives once a route's WebSocket is open and it relays both ways: a Tunnel
// (websocket routes: WebSocket on both legs) or a TcpBridge (tcp routes: WebSocket to the
// client, raw bytes to the upstream). The session keeps the sockets, backpressure, half-close
// and the idle timeout; the relay decides what bytes mean and how the close handshake goes.
// Both write through TunnelOwner (tunnel.h).

#include <cstddef>
#include <cstdint>
#include <string>

#include "metrics/metrics.h"
#include "websocket/close_code.h"

namespace upgate {

// A route's WebSocket message counters on one worker (upgate_messages_total; RouteMetrics owns
// them, relays add to them). Null: not counted (unit tests).
struct MessageCounters {
  metrics::Counter* up = nullptr;    // data messages from the client
  metrics::Counter* down = nullptr;  // ...to the client
};

// How a leg whose TCP connection timed out is named in close reasons ("client" + this): the
// tunnel's 1001 and the session's own reason say the same.
inline constexpr const char* kLostLegReason = " stopped acknowledging TCP";

class Relay {
 public:
  virtual ~Relay() = default;
  // Bytes read from a leg; writable (payloads are unmasked in place).
  virtual void onData(bool from_client, char* data, size_t len, uint64_t now_ms) = 0;
  // Ends the session cleanly with `code` (drain, a plugin), then waits for the replies.
  virtual void close(uint16_t code, const std::string& reason, uint64_t now_ms) = 0;
  // The upstream's FIN arrived while the client is still open. True: the relay turns it into a
  // close handshake with the client (and ends the session itself); false: the session passes
  // the half-close on.
  virtual bool upstreamEnded(uint64_t now_ms) = 0;
  // Keepalive and the close deadline. Call when nextDue() has passed.
  virtual void onTimer(uint64_t now_ms) = 0;
  // When onTimer() next has work (UINT64_MAX: nothing scheduled).
  virtual uint64_t nextDue() const = 0;
  // That leg sent its close frame (or was declared dead): it sends nothing more.
  virtual bool closeReceivedFrom(bool client) const = 0;
  // What that leg sends from now on goes nowhere (the leg it fed was sent its close frame): the
  // owner needs no backpressure on it and resumes its reads if paused, so that its close reply
  // or FIN is seen instead of waiting unread until timeouts.close.
  virtual bool discardsFrom(bool client) const = 0;
  // Something was scheduled earlier than nextDue() said before: the owner re-arms its timer.
  // Clears the flag.
  virtual bool takeRearm() = 0;
  // The first close frame so far, either way (CloseOrigin::None: none yet).
  virtual FirstClose firstClose() const = 0;
  // A close handshake has begun (either way), or the relay ended.
  virtual bool closing() const = 0;
  // The owner stopped reading that leg (backpressure: the other leg is slow) or resumed. A
  // paused leg's pongs wait unread in its socket, so the keepalive does not judge it while
  // paused (an unanswered ping gets a full timeout again from the resume); it judges the other
  // leg instead, which is dead when the pause outlasts interval + timeout.
  virtual void readsPaused(bool client, bool paused, uint64_t now_ms) = 0;
  // That leg's TCP connection gave up on its peer (ETIMEDOUT: bytes left unacknowledged for the
  // user timeout or the kernel's retransmission limit); the owner has closed it. True: the relay
  // takes the leg as dead and closes the other one cleanly; false: the owner ends the session.
  virtual bool peerLost(bool client, uint64_t now_ms) {
    (void)client;
    (void)now_ms;
    return false;
  }
};

}  // namespace upgate
