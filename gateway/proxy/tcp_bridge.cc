#include "proxy/tcp_bridge.h"

#include <algorithm>

#include "core/log.h"
#include "websocket/close_code.h"
#include "websocket/frame_writer.h"

namespace upgate {
namespace {

// One worker's frame being written: header and payload side by side, so a read from the
// upstream leaves as one write (and, with TCP_NODELAY, one segment) instead of two. Per thread,
// not per session: an idle bridge holds no buffer.
std::string& frameScratch() {
  static thread_local std::string scratch;
  return scratch;
}

}  // namespace

TcpBridge::TcpBridge(TunnelOwner& owner, const TunnelSetup& setup, uint64_t now_ms)
    : owner_(owner),
      parser_(Role::Client, FrameParser::Limits{setup.max_message_size}, false),
      validator_(setup.max_message_size),
      session_id_(setup.session_id),
      messages_(setup.messages),
      now_ms_(now_ms),
      last_rx_ms_(now_ms),
      ping_interval_ms_(relayMs(setup.keepalive.interval.count())),
      ping_timeout_ms_(relayMs(setup.keepalive.timeout.count())),
      close_timeout_ms_(relayMs(setup.close_timeout_ms)) {}

// ---- Relaying ----------------------------------------------------------------------------------

void TcpBridge::onData(bool from_client, char* data, size_t len, uint64_t now_ms) {
  if (ended_) return;
  now_ms_ = now_ms;
  if (!from_client) {
    // After our close frame nothing more goes to the client (RFC 6455 §5.5.1).
    if (!close_sent_ && sendFrame(opcode::kBinary, data, len) && messages_) messages_->down->add();
    return;
  }
  last_rx_ms_ = now_ms;
  ping_sent_ms_ = 0;  // anything from the client shows it is alive
  if (close_received_) return;
  ParseError e = parser_.feed(data, len, *this);
  if (e) {
    failWith(e);
    return;
  }
  std::string pong;
  if (pong_.take(pong) && !ended_ && !close_sent_)
    sendFrame(opcode::kPong, pong.data(), pong.size());
}

bool TcpBridge::onFrameHeader(const FrameHeader& h, const char*, size_t) {
  if (ParseError e = validator_.onFrameHeader(h)) return failWith(e);
  return true;
}

bool TcpBridge::onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t) {
  if (ParseError e = validator_.onFramePayload(h, data, len)) return failWith(e);
  if (isControlOpcode(h.opcode) || close_sent_) return true;  // the validator keeps controls
  // Data bytes go to the upstream as they come: the stream has no message boundaries.
  if (!owner_.tunnelWrite(false, data, len)) {
    ended_ = true;
    return false;
  }
  return true;
}

bool TcpBridge::onFrameEnd(const FrameHeader& h) {
  if (ParseError e = validator_.onFrameEnd(h)) return failWith(e);
  switch (h.opcode) {
    case opcode::kPing:
      pong_.set(validator_.controlPayload());  // answered once this read is parsed
      return true;
    case opcode::kClose: {
      close_received_ = true;
      const uint16_t code = validator_.closeCode();
      first_close_.note(CloseOrigin::Client, code);
      if (!close_sent_) {
        // Echo the code (§5.5.1); a close without one is answered with 1000.
        close_sent_ = true;
        std::string frame =
            closeFrame(code == close_code::kNoStatus ? close_code::kNormal : code, "", false);
        if (!owner_.tunnelWrite(true, frame.data(), frame.size())) {
          ended_ = true;
          return false;
        }
      }
      end("client closed (" + std::to_string(code) + ")");
      return false;
    }
    case opcode::kPong:
      return true;
    default:
      // The end of a data frame (its bytes went already).
      if (h.fin && messages_) messages_->up->add();
      return true;
  }
}

bool TcpBridge::sendFrame(uint8_t op, const char* data, size_t len) {
  std::string& out = frameScratch();
  out.resize(kMaxFrameHeader);
  out.resize(writeFrameHeader(out.data(), op, true, false, len, nullptr));
  out.append(data, len);
  if (!owner_.tunnelWrite(true, out.data(), out.size())) {
    ended_ = true;
    return false;
  }
  return true;
}

// ---- Closing -----------------------------------------------------------------------------------

void TcpBridge::sendClose(uint16_t code, const std::string& reason, uint64_t now_ms) {
  if (close_sent_ || ended_) return;
  close_sent_ = true;
  first_close_.note(CloseOrigin::Gateway, code);
  std::string frame = closeFrame(code, reason, false);
  if (!owner_.tunnelWrite(true, frame.data(), frame.size())) {
    ended_ = true;
    return;
  }
  close_deadline_ms_ = now_ms + close_timeout_ms_;
  rearm_ = true;
}

void TcpBridge::close(uint16_t code, const std::string& reason, uint64_t now_ms) {
  now_ms_ = now_ms;
  sendClose(code, reason, now_ms);
}

bool TcpBridge::upstreamEnded(uint64_t now_ms) {
  now_ms_ = now_ms;
  sendClose(close_code::kNormal, "upstream closed", now_ms);
  return true;
}

bool TcpBridge::failWith(ParseError e) {
  if (ended_) return false;
  UPGATE_LOG(info, session_id_, "client violated the protocol, closing with {}: {}", e.code,
             e.reason);
  sendClose(e.code, e.reason, now_ms_);
  end(std::string("client protocol error: ") + e.reason);
  return false;
}

void TcpBridge::end(const std::string& reason) {
  if (ended_) return;
  ended_ = true;
  owner_.tunnelEnd(reason);
}

// ---- Timers ------------------------------------------------------------------------------------

void TcpBridge::onTimer(uint64_t now_ms) {
  if (ended_) return;
  now_ms_ = now_ms;
  if (close_deadline_ms_ != 0 && now_ms >= close_deadline_ms_) {
    end("the client did not answer the close frame in time");
    return;
  }
  if (ping_interval_ms_ == 0 || close_sent_) return;
  if (client_paused_ms_ != 0) {
    // The client is held back by the service, whose queue has not drained to half since.
    if (now_ms >= client_paused_ms_ + ping_interval_ms_ + ping_timeout_ms_) {
      UPGATE_LOG(info, session_id_,
                 "upstream did not take half of what upgate held for it within {} ms while the "
                 "client waited: closing",
                 ping_interval_ms_ + ping_timeout_ms_);
      sendClose(close_code::kGoingAway, "upstream did not read", now_ms);
      end("upstream did not read");
    }
    return;
  }
  if (ping_sent_ms_ != 0 && now_ms >= ping_sent_ms_ + ping_timeout_ms_) {
    sendClose(close_code::kGoingAway, "client did not answer a ping", now_ms);
    end("client did not answer a ping");
    return;
  }
  if (ping_sent_ms_ == 0 && now_ms >= last_rx_ms_ + ping_interval_ms_) {
    if (sendFrame(opcode::kPing, kKeepalivePing.data(), kKeepalivePing.size()))
      ping_sent_ms_ = now_ms;
  }
}

uint64_t TcpBridge::nextDue() const {
  uint64_t due = close_deadline_ms_ != 0 ? close_deadline_ms_ : UINT64_MAX;
  if (ping_interval_ms_ == 0 || close_sent_) return due;
  if (client_paused_ms_ != 0)
    return std::min(due, client_paused_ms_ + ping_interval_ms_ + ping_timeout_ms_);
  return std::min(
      due, ping_sent_ms_ != 0 ? ping_sent_ms_ + ping_timeout_ms_ : last_rx_ms_ + ping_interval_ms_);
}

void TcpBridge::readsPaused(bool client, bool paused, uint64_t now_ms) {
  if (!client || (client_paused_ms_ != 0) == paused) return;  // the service has no pings
  client_paused_ms_ = paused ? now_ms : 0;
  if (!paused && ping_sent_ms_ != 0) ping_sent_ms_ = now_ms;  // its pong may have waited unread
  rearm_ = true;                                              // a deadline moved
}

}  // namespace upgate
