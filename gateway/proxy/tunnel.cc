#include "proxy/tunnel.h"

#include <algorithm>

#include "core/log.h"
#include "websocket/close_code.h"
#include "websocket/frame_writer.h"
#include "websocket/utf8.h"

namespace upgate {

namespace {

const char* legName(bool client) {
  return client ? "client" : "upstream";
}

CloseOrigin origin(bool client) {
  return client ? CloseOrigin::Client : CloseOrigin::Upstream;
}

// The code of a checked close frame's payload.
uint16_t payloadCloseCode(std::string_view payload) {
  if (payload.size() < 2) return close_code::kNoStatus;
  return static_cast<uint16_t>((static_cast<uint8_t>(payload[0]) << 8) |
                               static_cast<uint8_t>(payload[1]));
}

}  // namespace

Tunnel::Tunnel(TunnelOwner& owner, const TunnelSetup& setup, uint64_t now_ms)
    : owner_(owner),
      session_id_(setup.session_id),
      messages_(setup.messages),
      now_ms_(now_ms),
      ping_interval_ms_(relayMs(setup.keepalive.interval.count())),
      ping_timeout_ms_(relayMs(setup.keepalive.timeout.count())),
      close_timeout_ms_(relayMs(setup.close_timeout_ms)),
      answer_pings_(setup.keepalive.peer_pings == PeerPings::Answer) {
  client_.last_rx_ms = upstream_.last_rx_ms = now_ms;
  if (setup.mode != TunnelMode::Frames) return;
  // Channels of upgate's own agreements: on the client leg upgate is the server, on the
  // upstream leg the client (RFC 7692 names parameters after the server and the client).
  std::optional<DeflateChannel> from_client, to_client, from_upstream, to_upstream;
  if (setup.client_deflate) {
    from_client = channelFor(*setup.client_deflate, Role::Client);
    to_client = channelFor(*setup.client_deflate, Role::Server);
  }
  if (setup.upstream_deflate) {
    from_upstream = channelFor(*setup.upstream_deflate, Role::Server);
    to_upstream = channelFor(*setup.upstream_deflate, Role::Client);
  }
  auto ptr = [](const std::optional<DeflateChannel>& c) { return c ? &*c : nullptr; };
  FrameRelay::Options up;
  up.from = Role::Client;
  up.max_message_size = setup.max_message_size;
  up.end_to_end_deflate = setup.end_to_end_deflate;
  up.inflate = ptr(from_client);
  up.deflate = ptr(to_upstream);
  up.whole_messages = setup.message_hooks;
  FrameRelay::Options down = up;
  down.from = Role::Server;
  down.inflate = ptr(from_upstream);
  down.deflate = ptr(to_client);
  frames_ = std::make_unique<Frames>(*this, up, down);
}

// ---- Relaying ----------------------------------------------------------------------------------

void Tunnel::onData(bool from_client, char* data, size_t len, uint64_t now_ms) {
  if (ended_) return;
  now_ms_ = now_ms;
  Leg& src = leg(from_client);
  Leg& dst = leg(!from_client);
  src.last_rx_ms = now_ms;
  src.ping_sent_ms = 0;  // anything at all proves the leg is alive
  src.want_ping = false;
  if (src.peer_watched) unwatch(from_client);
  if (src.close_received) return;  // nothing after a close frame is read (RFC 6455 §5.5.1)
  if (frames_) {
    FrameRelay& relay = from_client ? frames_->up : frames_->down;
    ParseError e = relay.feed(data, len);
    countMessages(from_client, relay.takeMessages());
    if (ended_) return;
    if (e) {
      fail(from_client, e);
      return;
    }
  } else {
    FrameTracker& t = from_client ? track_up_ : track_down_;
    t.feed(data, len);
    countMessages(from_client, t.takeMessages());
    if (t.closeSeen()) first_close_.note(origin(from_client), t.closeCode());
    // A close frame answering the one dst sent, after ours went to src, completes the close
    // handshake: checkDone ends the tunnel right after this write.
    const bool last = t.closeSeen() && src.close_sent && dst.close_received;
    if (!write(!from_client, data, len, last)) return;
    if (t.closeSeen()) {
      src.close_received = true;
      closeSentTo(dst, now_ms);  // it went on with this read (or dst was closed already)
    }
  }
  if (!flushInjections(now_ms)) return;
  checkDone();
}

bool Tunnel::write(bool to_client, const char* data, size_t len, bool last) {
  if (ended_) return false;
  if (leg(to_client).close_sent) return true;  // after a close frame nothing more goes to a leg
  if (!(last ? owner_.tunnelWriteLast(to_client, data, len)
             : owner_.tunnelWrite(to_client, data, len))) {
    ended_ = true;
    return false;
  }
  return true;
}

bool Tunnel::Direction::relayBytes(const char* data, size_t len) {
  return t_.write(!from_client_, data, len);
}

bool Tunnel::Direction::relayControl(uint8_t op, std::string_view payload, std::string_view frame) {
  Tunnel& t = t_;
  Leg& src = t.leg(from_client_);
  Leg& dst = t.leg(!from_client_);
  switch (op) {
    case opcode::kPing:
      if (t.answer_pings_) {
        // The latest ping is answered (§5.5.3).
        t.frames_->pong[from_client_ ? 1 : 0].assign(payload.data(), payload.size());
        src.pong_due = true;
        return true;
      }
      break;
    case opcode::kPong:
      if (payload == kKeepalivePing) return true;  // the answer to our own ping
      break;
    case opcode::kClose:
      t.first_close_.note(origin(from_client_), payloadCloseCode(payload));
      src.close_received = true;
      if (dst.close_sent) return true;  // the reply to a close upgate sent: the other leg has one
      // The answer to dst's close, after ours went to src: the handshake is complete (checkDone).
      if (!t.write(!from_client_, frame.data(), frame.size(), src.close_sent && dst.close_received))
        return false;
      t.closeSentTo(dst, t.now_ms_);
      return true;
    default:
      break;
  }
  return t.write(!from_client_, frame.data(), frame.size());
}

MessageVerdict Tunnel::Direction::relayMessage(uint8_t op, const std::string& payload) {
  return t_.owner_.tunnelMessage(from_client_, op, payload);
}

// ---- Injected frames ---------------------------------------------------------------------------

bool Tunnel::atBoundaryTowards(bool to_client) const {
  // The direction that writes to the client is the one from the upstream, and back.
  if (frames_) return (to_client ? frames_->down : frames_->up).atBoundary();
  return (to_client ? track_down_ : track_up_).atBoundary();
}

bool Tunnel::inject(bool to_client, uint64_t now_ms) {
  Leg& l = leg(to_client);
  if (l.close_sent || !atBoundaryTowards(to_client)) return true;
  // Towards the upstream upgate is the client: its frames are masked (§5.3).
  const bool masked = !to_client;
  if (l.pong_due) {
    l.pong_due = false;
    std::string f = pongFrame(frames_->pong[to_client ? 1 : 0], masked);
    if (!write(to_client, f.data(), f.size())) return false;
  }
  if (l.want_ping) {
    l.want_ping = false;
    l.ping_sent_ms = now_ms;
    if (l.peer_watched) unwatch(to_client);
    rearm_ = true;
    std::string f = pingFrame(kKeepalivePing, masked);
    if (!write(to_client, f.data(), f.size())) return false;
  }
  if (l.close_code != 0) {
    // Counted when it goes out: a frame that never found its leg's frame boundary was not sent,
    // and the session ends without one (1006) unless a peer's close came first.
    first_close_.note(CloseOrigin::Gateway, l.close_code);
    std::string f = closeFrame(l.close_code, close_reason_, masked);
    if (!write(to_client, f.data(), f.size())) return false;
    closeSentTo(l, now_ms);
  }
  return true;
}

bool Tunnel::flushInjections(uint64_t now_ms, bool first_to_client) {
  return inject(first_to_client, now_ms) && inject(!first_to_client, now_ms);
}

void Tunnel::unwatch(bool client) {
  // The ping that TCP stood in for went out, or is no longer wanted: keepalive judges the leg
  // by itself again.
  leg(client).peer_watched = false;
  owner_.tunnelWatchPeer(client, 0);
}

void Tunnel::closeSentTo(Leg& l, uint64_t now_ms) {
  l.close_sent = true;
  if (l.peer_watched) unwatch(&l == &client_);
  l.want_ping = l.pong_due = false;
  l.ping_sent_ms = 0;
  if (close_deadline_ms_ == 0) {
    close_deadline_ms_ = now_ms + close_timeout_ms_;
    rearm_ = true;
  }
}

void Tunnel::close(uint16_t code, const std::string& reason, uint64_t now_ms) {
  if (ended_) return;
  now_ms_ = now_ms;
  // A close frame still waiting for its leg's frame boundary keeps the reason it was given.
  // Cut on a character boundary: a close reason must stay valid UTF-8 (RFC 6455 §5.5.1).
  const bool pending = (!client_.close_sent && client_.close_code != 0) ||
                       (!upstream_.close_sent && upstream_.close_code != 0);
  if (!pending) close_reason_ = reason.substr(0, utf8TruncationPoint(reason, 100));
  for (bool c : {true, false}) {
    Leg& l = leg(c);
    if (!l.close_sent && l.close_code == 0) l.close_code = code;
  }
  if (close_deadline_ms_ == 0) {
    close_deadline_ms_ = now_ms + close_timeout_ms_;
    rearm_ = true;
  }
  if (!flushInjections(now_ms)) return;
  checkDone();
}

void Tunnel::fail(bool from_client, ParseError e) {
  std::string reason = std::string(legName(from_client)) + " violated RFC 6455: " + e.reason +
                       " (" + std::to_string(e.code) + ")";
  UPGATE_LOG(info, session_id_, "{}", reason);
  // The offender gets the code; the other side a clean close: 1001 towards the upstream when
  // the client failed, 1011 towards the client when the upstream did. Frames that cannot be
  // placed (a leg left inside a frame) are not sent: TCP closes anyway.
  close_reason_ = e.reason;
  leg(from_client).close_code = e.code;
  leg(!from_client).close_code = from_client ? close_code::kGoingAway : close_code::kInternalError;
  // The offender's frame first: the session's close is counted with the code it got.
  if (!flushInjections(now_ms_, /*first_to_client=*/from_client)) return;
  end(reason);
}

// ---- Timers ------------------------------------------------------------------------------------

void Tunnel::onTimer(uint64_t now_ms) {
  if (ended_) return;
  now_ms_ = now_ms;
  if (close_deadline_ms_ != 0 && now_ms >= close_deadline_ms_) {
    // Named by who was waited on: a leg that was sent a close frame and sent none back, or
    // else the frame that found no frame boundary to go out at.
    const bool c = client_.close_sent && !client_.close_received;
    const bool u = upstream_.close_sent && !upstream_.close_received;
    const std::string prefix = "close handshake not completed within timeouts.close: ";
    if (dead_leg_ >= 0) {
      end(deadReason() + "; no close reply within timeouts.close");
    } else if (c || u) {
      end(prefix + "no close frame from " +
          (c && u ? "either side"
           : c    ? "the client"
                  : "the upstream"));
    } else {
      end(prefix + "upgate's close frame found no frame boundary to go out at");
    }
    return;
  }
  if (ping_interval_ms_ > 0) {
    const uint64_t interval = ping_interval_ms_;
    const uint64_t timeout = ping_timeout_ms_;
    for (bool c : {true, false}) {
      Leg& l = leg(c);
      if (l.close_sent || l.close_received) continue;
      if (l.paused_ms != 0) {
        // Held back by the other leg, whose queue has not drained to half since: it is stuck.
        if (!leg(!c).close_sent && now_ms >= stallDue(l)) {
          legDead(!c, now_ms, Death::Stalled);
          return;
        }
        continue;
      }
      if (l.ping_sent_ms != 0 && now_ms >= l.ping_sent_ms + timeout) {
        legDead(c, now_ms, Death::Ping);
        return;
      }
      if (l.ping_sent_ms == 0 && now_ms >= l.last_rx_ms + interval) l.want_ping = true;
    }
  }
  if (!flushInjections(now_ms)) return;
  // A ping still wanted found no frame boundary towards its leg: the other leg is in the middle
  // of a frame. While that frame goes on (a peer trickling a long one) the ping cannot go out,
  // so the leg's TCP connection judges it instead: what upgate relays to it must be
  // acknowledged within interval + timeout (the time a stalled leg gets), or peerLost() follows.
  // Should the frame stall instead, its sender is the one that is pinged and found dead.
  for (bool c : {true, false}) {
    Leg& l = leg(c);
    if (l.want_ping && !l.peer_watched) {
      l.peer_watched = true;
      UPGATE_LOG(debug, session_id_,
                 "keepalive ping to the {} waits for a frame boundary: TCP watches it meanwhile",
                 legName(c));
      owner_.tunnelWatchPeer(c, relayMs(uint64_t{ping_interval_ms_} + ping_timeout_ms_));
    }
  }
  checkDone();
}

uint64_t Tunnel::nextDue() const {
  uint64_t due = close_deadline_ms_ != 0 ? close_deadline_ms_ : UINT64_MAX;
  if (ping_interval_ms_ == 0 || ended_) return due;
  for (bool c : {true, false}) {
    const Leg* l = &leg(c);
    if (l->close_sent || l->close_received) continue;
    if (l->paused_ms != 0) {
      if (!leg(!c).close_sent) due = std::min(due, stallDue(*l));
      continue;
    }
    if (l->want_ping) continue;
    uint64_t at = l->ping_sent_ms != 0 ? l->ping_sent_ms + ping_timeout_ms_
                                       : l->last_rx_ms + ping_interval_ms_;
    due = std::min(due, at);
  }
  return due;
}

void Tunnel::readsPaused(bool client, bool paused, uint64_t now_ms) {
  Leg& l = leg(client);
  if ((l.paused_ms != 0) == paused) return;
  l.paused_ms = paused ? now_ms : 0;
  if (!paused && l.ping_sent_ms != 0) l.ping_sent_ms = now_ms;  // its pong may have waited unread
  rearm_ = true;  // a deadline moved: the other leg's (paused) or this one's (resumed)
}

bool Tunnel::peerLost(bool client, uint64_t now_ms) {
  if (ended_) return false;
  now_ms_ = now_ms;
  if (dead_leg_ >= 0) {
    // A leg was declared dead already, and keeps that reason: if it was this one, its 1001 went
    // to the other leg, whose reply is still awaited; if it was the other, this one was all the
    // session waited for.
    if (dead_leg_ != (client ? 1 : 0)) end(deadReason());
    return true;
  }
  legDead(client, now_ms, Death::Transport);
  return true;
}

void Tunnel::legDead(bool client, uint64_t now_ms, Death why) {
  if (why == Death::Transport) {
    UPGATE_LOG(
        info, session_id_, "{}'s TCP connection timed out{}: closing", legName(client),
        leg(client).peer_watched ? " while a keepalive ping waited for a frame boundary" : "");
  } else if (why == Death::Stalled) {
    UPGATE_LOG(info, session_id_,
               "{} did not take half of what upgate held for it within {} ms while the other "
               "side waited: closing",
               legName(client), ping_interval_ms_ + ping_timeout_ms_);
  } else {
    UPGATE_LOG(info, session_id_, "{} did not answer a ping within {} ms: closing", legName(client),
               ping_timeout_ms_);
  }
  // Nothing more is written to a dead leg, nor expected from it; the other one gets 1001.
  Leg& dead = leg(client);
  dead.close_sent = dead.close_received = true;
  dead_leg_ = client ? 1 : 0;
  dead_why_ = why;
  close(close_code::kGoingAway, deadReason(), now_ms);
  // When upgate stopped reading the other leg for this one's sake (so always for a stall), its
  // answer to the close would come only behind everything it had queued while held back, which
  // would have to be read and dropped first. Its close frame is queued; end now (the owner
  // still flushes what is queued before TCP closes).
  if (leg(!client).paused_ms != 0 && !ended_) end(deadReason());
}

std::string Tunnel::deadReason() const {
  const char* what = dead_why_ == Death::Stalled     ? " did not read"
                     : dead_why_ == Death::Transport ? kLostLegReason
                                                     : " did not answer a ping";
  return std::string(legName(dead_leg_ == 1)) + what;
}

void Tunnel::checkDone() {
  if (ended_) return;
  if (client_.close_sent && client_.close_received && upstream_.close_sent &&
      upstream_.close_received) {
    end(dead_leg_ < 0 ? std::string("close handshake complete") : deadReason());
  }
}

void Tunnel::countMessages(bool from_client, uint32_t n) {
  if (n == 0 || messages_ == nullptr) return;
  (from_client ? messages_->up : messages_->down)->add(n);
}

void Tunnel::end(const std::string& reason) {
  if (ended_) return;
  ended_ = true;
  owner_.tunnelEnd(reason);
}

}  // namespace upgate
