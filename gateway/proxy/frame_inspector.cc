#include "proxy/frame_inspector.h"

namespace upgate {

FrameInspector::FrameInspector(Role from, uint64_t max_message_size, bool allow_rsv1)
    : parser_(from, FrameParser::Limits{max_message_size}, allow_rsv1),
      validator_(max_message_size) {}

ParseError FrameInspector::inspect(char* data, size_t len) {
  error_ = ParseError{};
  ParseError e = parser_.feed(data, len, *this);
  if (!e) e = error_;
  if (!e) boundary_ = parser_.atFrameBoundary();
  return e;
}

bool FrameInspector::onFrameHeader(const FrameHeader& h, const char*, size_t) {
  error_ = validator_.onFrameHeader(h);
  return !error_;
}

bool FrameInspector::onFramePayload(const FrameHeader& h, char* data, size_t len,
                                    uint64_t offset) {
  error_ = validator_.onFramePayload(h, data, len);
  // The bytes go on as they came: mask them again (masking is its own inverse).
  if (h.masked) applyMask(data, len, h.mask, offset);
  return !error_;
}

bool FrameInspector::onFrameEnd(const FrameHeader& h) {
  error_ = validator_.onFrameEnd(h);
  if (h.opcode == opcode::kPong) ++pongs_;
  return !error_;
}

}  // namespace upgate
