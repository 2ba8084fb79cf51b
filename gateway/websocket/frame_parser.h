#pragma once
// Incremental, zero-copy decoder for the frames of one direction of a WebSocket connection
// (RFC 6455 §5.2), in the style of a push parser: feed() walks the bytes of each read and calls
// a FrameSink for every header, payload piece and frame end.
//
// - Zero copy: payload is unmasked in place in the caller's (writable) read buffer and handed to
//   the sink as pointers into it. Only a header split across reads is copied, into a 14-byte spill
//   buffer inside the parser, so a parser holds no heap memory at all.
// - Frame-level checks (RFC 6455 §5.2, §5.5, RFC 7692 §6) fail with a close code: mask bit wrong
//   for the role, RSV bits not negotiated, reserved opcodes, control frames fragmented or over 125
//   bytes, non-minimal or 2^63+ lengths (1002); frames over Limits::max_frame_payload (1009).
//   Checks that need message state (fragmentation order, UTF-8, close payloads, message size)
//   are MessageValidator's (message_validator.h).
// - Errors are detected as early as possible: everything knowable from the first two bytes is
//   checked before the rest of the header arrives.
//
// Never throws, never allocates. One parser per direction per connection, used on that
// connection's loop thread; not copyable (the sink is not stored, only borrowed during feed()).

#include <cstddef>
#include <cstdint>

namespace upgate {

// Frame opcodes (RFC 6455 §5.2, §11.8).
namespace opcode {
inline constexpr uint8_t kContinuation = 0x0;
inline constexpr uint8_t kText = 0x1;
inline constexpr uint8_t kBinary = 0x2;
inline constexpr uint8_t kClose = 0x8;
inline constexpr uint8_t kPing = 0x9;
inline constexpr uint8_t kPong = 0xA;
}  // namespace opcode

// Control frames have the high opcode bit set (§5.5).
constexpr bool isControlOpcode(uint8_t op) {
  return (op & 0x8) != 0;
}

// Largest control frame payload (§5.5) and largest frame header: 2 + 8 (64-bit length) + 4
// (mask).
inline constexpr size_t kMaxControlPayload = 125;
inline constexpr size_t kMaxFrameHeader = 14;

// Who sends the frames a parser reads: frames from a Client must be masked, frames from a Server
// must not be (§5.1).
enum class Role { Client, Server };

// One decoded frame header. Valid from onFrameHeader until onFrameEnd of the same frame.
struct FrameHeader {
  bool fin = false;
  bool rsv1 = false;  // "compressed" on the first frame of a message when permessage-deflate is on
  bool rsv2 = false;  // always false once accepted by the parser (no extension defines them)
  bool rsv3 = false;
  uint8_t opcode = 0;
  bool masked = false;
  uint8_t mask[4] = {0, 0, 0, 0};  // the masking key when masked, else zeros
  uint64_t payload_len = 0;
  size_t header_len = 0;  // 2..14 bytes on the wire
};

// Receives the parser's events; implemented by the session (or a test). Each call may return
// false to stop the parser at once: the caller has closed the session, or wants to stop reading
// this buffer. After a stop the event counts as consumed and consumed() says how far feed() got;
// the parser can continue with the remaining bytes later.
class FrameSink {
 public:
  virtual ~FrameSink() = default;

  // A complete, valid header. raw_header points at its wire bytes (in the read buffer, or in
  // the parser's spill buffer when it was split across reads); valid during the call only.
  virtual bool onFrameHeader(const FrameHeader& header, const char* raw_header, size_t raw_len) = 0;

  // The next payload bytes of the frame, already unmasked in place; `offset` is the position of
  // data[0] within the frame's payload. Called one or more times per frame (once per read that
  // holds payload), with len > 0 — except for an empty payload, reported by exactly one call with
  // len 0. The sink may modify the bytes (e.g. re-mask them for forwarding).
  virtual bool onFramePayload(const FrameHeader& header, char* data, size_t len,
                              uint64_t offset) = 0;

  // All payload bytes have been delivered.
  virtual bool onFrameEnd(const FrameHeader& header) = 0;
};

// A protocol failure: the close code to fail the connection with (RFC 6455 §7.1.7) and a short
// static reason for logs and the close frame. code 0 means no failure.
struct ParseError {
  uint16_t code = 0;
  const char* reason = "";
  explicit operator bool() const { return code != 0; }
};

class FrameParser {
 public:
  struct Limits {
    // Largest payload of one frame; a larger declared length fails with 1009 as soon as the
    // length is known, before any payload arrives. Bounded by 2^63 - 1 anyway (§5.2).
    uint64_t max_frame_payload = uint64_t{16} * 1024 * 1024;
  };

  // expect: who sends the frames parsed here. allow_rsv1: permessage-deflate was negotiated for
  // this direction, so RSV1 may be set on the first frame of a data message (RFC 7692 §6).
  FrameParser(Role expect, Limits limits, bool allow_rsv1);
  FrameParser(const FrameParser&) = delete;
  FrameParser& operator=(const FrameParser&) = delete;

  // Consumes `len` bytes of `data`, unmasking payload in place, and reports events to `sink`.
  // Returns a ParseError with code != 0 on a protocol violation; the parser then stays failed and
  // every later feed() returns the same error without calling the sink. Returns code 0 when all
  // bytes were consumed or when the sink returned false (see consumed()).
  ParseError feed(char* data, size_t len, FrameSink& sink);

  // Bytes of the last feed() that were processed: len, unless the sink stopped early or an
  // error occurred (then the offset just past the event or the failing header byte).
  size_t consumed() const { return consumed_; }

  // True between frames: no partial header or payload pending (clean end of stream).
  bool atFrameBoundary() const { return state_ == State::Header && spill_len_ == 0; }

  // Set once permessage-deflate is negotiated (the parser may exist before the handshake ends).
  void setAllowRsv1(bool allow) { allow_rsv1_ = allow; }

  // The error the parser failed with, or code 0.
  ParseError error() const { return error_; }

 private:
  // Header: reading a header (maybe partly in spill_). Payload: delivering payload (or the one
  // empty-payload event). End: onFrameEnd still to be called. Failed: sticky error_.
  enum class State : uint8_t { Header, Payload, End, Failed };

  ParseError checkFirstBytes(uint8_t b0, uint8_t b1) const;
  ParseError decodeHeader(const uint8_t* h, size_t header_len);
  ParseError fail(ParseError e);

  Role expect_;
  Limits limits_;
  bool allow_rsv1_;
  State state_ = State::Header;
  uint8_t spill_len_ = 0;
  uint8_t spill_[kMaxFrameHeader] = {};
  FrameHeader header_;
  uint64_t offset_ = 0;  // payload bytes of the current frame already delivered
  size_t consumed_ = 0;
  ParseError error_;
};

// XORs `len` bytes with the 4-byte masking key, `offset` being the position of data[0] within
// the frame payload (masking is its own inverse: use it to mask and to unmask, §5.3). Works on
// eight bytes per step with the key rotated once for the offset.
void applyMask(char* data, size_t len, const uint8_t mask[4], uint64_t offset);

}  // namespace upgate
