#pragma once
// Frame-aware validation for `mode: frames` tunnels, one per direction. It walks the bytes of
// each read with FrameParser + MessageValidator, enforcing RFC 6455 on both legs itself (never
// trusting the upstream to do it), and leaves the bytes exactly as they were: masked payload is
// unmasked in place for the checks and masked again. The tunnel then forwards the checked bytes
// as they are, so frames mode costs one parse and two XOR passes over masked payload, no copy.
//
// inspect() says how much of a read may be forwarded: all of it; or, on a violation, the frames
// that ended before the offending one (so the other side is left between frames and can be
// sent a close frame); or, after a close frame, nothing that follows it (RFC 6455 §5.5.1).
//
// Compressed messages (permessage-deflate negotiated end to end): RSV1 is accepted on a
// message's first frame; their text is not UTF-8-checked (that would mean inflating).

#include <cstddef>
#include <cstdint>

#include "websocket/frame_parser.h"
#include "websocket/message_validator.h"

namespace upgate {

class FrameInspector final : private FrameSink {
 public:
  // `from`: who sends the frames this inspector sees (Client: masked, Server: unmasked).
  FrameInspector(Role from, uint64_t max_message_size, bool allow_rsv1);

  // Checks `len` bytes in place and sets `forward` to how many of them may be forwarded. On a
  // violation (code != 0) `forward` covers the complete frames before the offending one.
  ParseError inspect(char* data, size_t len, size_t& forward);

  // The bytes forwarded so far end between frames: a frame may be injected now.
  bool atFrameBoundary() const { return boundary_; }
  // A valid close frame went through (nothing after it is forwarded).
  bool closeSeen() const { return close_seen_; }

 private:
  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override;
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override;
  bool onFrameEnd(const FrameHeader& h) override;
  void advance(const char* end);

  FrameParser parser_;
  MessageValidator validator_;
  ParseError error_;
  const char* base_ = nullptr;  // the read being inspected
  size_t len_ = 0;
  size_t pos_ = 0;            // furthest byte of this read the parser has reported
  size_t last_end_ = 0;       // end of the last complete frame in this read
  bool ended_frame_ = false;  // some frame ended in this read
  bool boundary_ = true;
  bool close_seen_ = false;
};

}  // namespace upgate
