#pragma once
// Frame-aware validation for `mode: frames` tunnels, one per direction. It walks the bytes of
// each read with FrameParser + MessageValidator, enforcing RFC 6455 on both legs itself (never
// trusting the upstream to do it), and leaves the bytes exactly as they were: masked payload is
// unmasked in place for the checks and masked again. The tunnel then forwards the read whole,
// so frames mode costs one parse and two XOR passes over masked payload, and no copy.
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

  // Checks `len` bytes in place. On an error nothing of this read may be forwarded.
  ParseError inspect(char* data, size_t len);

  // The last successfully inspected (and so forwarded) read ended between frames: a frame may be
  // injected into this direction now.
  bool atFrameBoundary() const { return boundary_; }
  // A valid close frame went through (its code), and pongs seen (keepalive bookkeeping).
  bool closeSeen() const { return validator_.closeReceived(); }
  uint16_t closeCode() const { return validator_.closeCode(); }
  uint64_t pongs() const { return pongs_; }

 private:
  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override;
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override;
  bool onFrameEnd(const FrameHeader& h) override;

  FrameParser parser_;
  MessageValidator validator_;
  ParseError error_;
  uint64_t pongs_ = 0;
  bool boundary_ = true;
};

}  // namespace upgate
