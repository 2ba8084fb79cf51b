#pragma once
// Per-direction message state on top of FrameParser: the RFC 6455 checks that need to remember
// earlier frames.
//
//   1002  continuation frame with no message open (§5.4)
//   1002  text or binary frame while a fragmented message is open (§5.4)
//   1002  close frame with a 1-byte payload, or with a code isValidWireCloseCode() rejects (§7.4)
//   1007  text message, or close reason, that is not valid UTF-8 (§8.1), checked incrementally
//         across reads and fragments and failed at the first invalid byte
//   1009  message larger than max_message_size across all its fragments (§7.4.1)
// Control frames may arrive between the fragments of a message (§5.4) and leave it untouched.
//
// Frame level and payload level are separate calls, because with permessage-deflate the UTF-8
// rule applies to the inflated bytes (RFC 7692 §6), which only the caller produces:
//
//   FrameSink::onFrameHeader   -> onFrameHeader(h)
//   FrameSink::onFramePayload  -> onFramePayload(h, data, len)     wire bytes, already unmasked
//                                 and, if messageCompressed(), inflate them and pass the output
//                                 to onInflatedPayload(data, len)
//   FrameSink::onFrameEnd      -> on the final frame of a compressed message, inflate the tail
//                                 first (and pass it to onInflatedPayload), then onFrameEnd(h)
//
// For a compressed message onFramePayload checks nothing (the wire size is counted from the
// headers); onInflatedPayload checks UTF-8 (text) and the size limit against the inflated size,
// and onFrameEnd of the final frame checks that the text did not end inside a character. The wire
// size of a compressed message is held to the same limit (deflate grows incompressible data by at
// most 5 bytes per 16 KiB, so this only matters within 0.04% of the limit).
//
// After a close frame the caller stops processing this direction (§5.5.1); the validator does not
// police what follows. Never throws, never allocates; one per direction on the loop thread.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "websocket/frame_parser.h"
#include "websocket/utf8.h"

namespace upgate {

class MessageValidator {
 public:
  explicit MessageValidator(uint64_t max_message_size) : max_message_size_(max_message_size) {}

  // A header FrameParser accepted (so opcode, RSV and control-frame rules already hold).
  ParseError onFrameHeader(const FrameHeader& h);

  // Unmasked wire bytes of the current frame (the same calls FrameSink gets).
  ParseError onFramePayload(const FrameHeader& h, const char* data, size_t len);

  // Inflated bytes of the current compressed message, in order, before onFrameEnd of its final
  // frame. Only valid while messageCompressed().
  ParseError onInflatedPayload(const char* data, size_t len);

  // End of the current frame: completes a message (fin), or validates a close frame's payload.
  ParseError onFrameEnd(const FrameHeader& h);

  // True from the header of a data message's first frame until its final frame ends.
  bool inMessage() const { return in_message_; }

  // Opcode (kText or kBinary), RSV1 flag and byte count of the data message in progress, or of
  // the last one once it ended. Bytes are inflated bytes for compressed messages.
  uint8_t messageOpcode() const { return message_opcode_; }
  bool messageCompressed() const { return message_compressed_; }
  uint64_t messageBytes() const { return message_compressed_ ? inflated_bytes_ : wire_bytes_; }

  // The cap on a whole message (inflated bytes, for a compressed one): the Inflater's
  // max_message_out, which it compares with all it produced for the message so far.
  uint64_t maxMessageSize() const { return max_message_size_; }

  // Payload of the last control frame, complete after its onFrameEnd (e.g. to answer a ping);
  // valid until the next control frame's header. Pointer into this object.
  std::string_view controlPayload() const { return std::string_view(control_, control_len_); }

  // After onFrameEnd of a valid close frame: its code (close_code::kNoStatus if the payload was
  // empty) and reason (valid UTF-8; points into this object and lasts until the next control
  // frame's header, so copy it if frames are still parsed).
  uint16_t closeCode() const { return close_code_; }
  std::string_view closeReason() const;

  // True once a close frame has been validated.
  bool closeReceived() const { return close_received_; }

  // Forgets all state (new connection).
  void reset();

 private:
  ParseError checkText(const char* data, size_t len);

  uint64_t max_message_size_;
  bool in_message_ = false;          // a data message has started and its fin frame not ended
  uint8_t message_opcode_ = 0;       // opcode of its first frame
  bool message_compressed_ = false;  // RSV1 on its first frame
  uint64_t wire_bytes_ = 0;          // payload bytes on the wire so far
  uint64_t inflated_bytes_ = 0;      // inflated bytes so far (compressed only)
  Utf8Validator utf8_;               // text messages only
  uint8_t control_len_ = 0;
  char control_[kMaxControlPayload] = {};
  uint16_t close_code_ = 0;
  bool close_received_ = false;
};

// The pong a read owes: RFC 6455 §5.5.3 lets an endpoint answer only the latest of several pings,
// so a peer that floods pings and reads nothing cannot make it queue a pong per ping. Sinks record
// each ping here while parsing a read and send what take() gives once the read is parsed. The
// payload is held only while due: an idle connection keeps no buffer.
class PendingPong {
 public:
  void set(std::string_view ping) {
    payload_.assign(ping.data(), ping.size());
    due_ = true;
  }
  // True once per set(), with the payload moved into `out`.
  bool take(std::string& out) {
    if (!due_) return false;
    due_ = false;
    out.clear();
    out.swap(payload_);
    return true;
  }

 private:
  std::string payload_;
  bool due_ = false;
};

}  // namespace upgate
