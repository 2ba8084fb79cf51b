#include "proxy/frame_inspector.h"

namespace upgate {

FrameInspector::FrameInspector(Role from, uint64_t max_message_size, bool allow_rsv1)
    : parser_(from, FrameParser::Limits{max_message_size}, allow_rsv1),
      validator_(max_message_size) {}

ParseError FrameInspector::inspect(char* data, size_t len, size_t& forward) {
  forward = 0;
  if (close_seen_) return ParseError{};  // nothing after a close frame goes on
  error_ = ParseError{};
  base_ = data;
  len_ = len;
  pos_ = last_end_ = 0;
  ended_frame_ = false;
  const bool started_at_boundary = boundary_;
  ParseError e = parser_.feed(data, len, *this);
  if (!e) e = error_;
  if (e) {
    // Forward the frames that ended before the offending one; the other side is then between
    // frames iff one ended here, or this read started between frames.
    forward = last_end_;
    boundary_ = ended_frame_ || started_at_boundary;
  } else if (close_seen_) {
    forward = last_end_;  // up to the end of the close frame
    boundary_ = true;
  } else {
    forward = len;
    boundary_ = parser_.atFrameBoundary();
  }
  base_ = nullptr;
  return e;
}

void FrameInspector::advance(const char* end) {
  if (base_ != nullptr && end >= base_ && end <= base_ + len_) {
    size_t at = static_cast<size_t>(end - base_);
    if (at > pos_) pos_ = at;
  }
}

bool FrameInspector::onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) {
  advance(raw + raw_len);  // a header spilled from an earlier read is outside this one
  error_ = validator_.onFrameHeader(h);
  return !error_;
}

bool FrameInspector::onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) {
  advance(data + len);
  error_ = validator_.onFramePayload(h, data, len);
  // The bytes go on as they came: mask them again (masking is its own inverse).
  if (h.masked) applyMask(data, len, h.mask, offset);
  return !error_;
}

bool FrameInspector::onFrameEnd(const FrameHeader& h) {
  error_ = validator_.onFrameEnd(h);
  if (error_) return false;
  last_end_ = pos_;
  ended_frame_ = true;
  if (h.opcode == opcode::kClose) {
    close_seen_ = true;
    return false;  // stop: what follows a close frame is not forwarded
  }
  return true;
}

}  // namespace upgate
