#pragma once
// WebSocket close status codes (RFC 6455 §7.4, IANA "WebSocket Close Code Number Registry") and
// the check applied to a code received in a close frame. Header-only, constexpr, any thread.

#include <cstdint>

namespace upgate {

namespace close_code {
inline constexpr uint16_t kNormal = 1000;              // purpose fulfilled
inline constexpr uint16_t kGoingAway = 1001;           // server shutdown, page left, drain
inline constexpr uint16_t kProtocolError = 1002;       // RFC 6455 framing violation
inline constexpr uint16_t kUnsupportedData = 1003;     // data type the endpoint cannot accept
inline constexpr uint16_t kNoStatus = 1005;            // local only: close frame had no code
inline constexpr uint16_t kAbnormal = 1006;            // local only: no close frame at all
inline constexpr uint16_t kInvalidPayload = 1007;      // e.g. invalid UTF-8 in a text message
inline constexpr uint16_t kPolicyViolation = 1008;     // generic policy refusal
inline constexpr uint16_t kMessageTooBig = 1009;       // frame or message over our limits
inline constexpr uint16_t kMandatoryExtension = 1010;  // client: server lacked an extension
inline constexpr uint16_t kInternalError = 1011;       // server-side unexpected condition
inline constexpr uint16_t kServiceRestart = 1012;      // IANA registered
inline constexpr uint16_t kTryAgainLater = 1013;       // IANA registered
inline constexpr uint16_t kBadGateway = 1014;          // IANA registered
inline constexpr uint16_t kTlsHandshake = 1015;        // local only: TLS handshake failure
}  // namespace close_code

// True if `code` may appear in a received close frame. Accepted:
//   1000-1003 and 1007-1011 (RFC 6455 §7.4.1);
//   1012-1014 (registered with IANA after RFC 6455; current Autobahn accepts them);
//   3000-3999 (registered by libraries and frameworks) and 4000-4999 (private use), §7.4.2.
// Rejected, so the receiver fails the connection with 1002:
//   0-999 (unused, §7.4.2); 1004 (reserved); 1005, 1006 and 1015 (MUST NOT be sent, §7.4.1);
//   1016-2999 (reserved for future RFCs: no meaning we could act on); 5000 and above.
constexpr bool isValidWireCloseCode(uint16_t code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

// True if a server may send `code`: a valid received code but 1010, which only clients send
// (§7.4.1). The same set as the plugin ABI's UPGATE_CLOSE_CODE_OK.
constexpr bool isSendableCloseCode(uint16_t code) {
  return isValidWireCloseCode(code) && code != close_code::kMandatoryExtension;
}

// How a WebSocket session began to end: who sent the first close frame, with which code. Kept by
// the relays (tunnels, tcp bridges, channel subscriptions) for the access log, the plugins'
// on_close and upgate_websocket_closes_total. A session that ends without any close frame is
// counted as 1006 (RFC 6455 §7.1.5), by the side whose connection ended first.
enum class CloseOrigin : uint8_t {
  None,      // no close frame yet
  Client,    // the client's close frame came first
  Upstream,  // the upstream's (websocket routes)
  Gateway,   // upgate sent one first: drain, a plugin, a limit or violation, a dead or ended peer
};

struct FirstClose {
  uint16_t code = 0;  // as in the frame; close_code::kNoStatus for a close frame without a code
  CloseOrigin by = CloseOrigin::None;

  // Keeps the first close only.
  void note(CloseOrigin origin, uint16_t c) {
    if (by != CloseOrigin::None) return;
    by = origin;
    code = c;
  }
};

constexpr const char* closeOriginName(CloseOrigin o) {
  switch (o) {
    case CloseOrigin::Client:
      return "client";
    case CloseOrigin::Upstream:
      return "upstream";
    case CloseOrigin::Gateway:
      return "gateway";
    case CloseOrigin::None:
      break;
  }
  return "none";
}

// Short name of a registered code for logs ("protocol error"); "unknown" for others.
constexpr const char* closeCodeName(uint16_t code) {
  switch (code) {
    case close_code::kNormal:
      return "normal";
    case close_code::kGoingAway:
      return "going away";
    case close_code::kProtocolError:
      return "protocol error";
    case close_code::kUnsupportedData:
      return "unsupported data";
    case close_code::kNoStatus:
      return "no status";
    case close_code::kAbnormal:
      return "abnormal closure";
    case close_code::kInvalidPayload:
      return "invalid payload data";
    case close_code::kPolicyViolation:
      return "policy violation";
    case close_code::kMessageTooBig:
      return "message too big";
    case close_code::kMandatoryExtension:
      return "mandatory extension";
    case close_code::kInternalError:
      return "internal error";
    case close_code::kServiceRestart:
      return "service restart";
    case close_code::kTryAgainLater:
      return "try again later";
    case close_code::kBadGateway:
      return "bad gateway";
    case close_code::kTlsHandshake:
      return "TLS handshake failure";
    default:
      return "unknown";
  }
}

}  // namespace upgate
