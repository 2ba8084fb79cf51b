#include "websocket/message_validator.h"

#include <algorithm>
#include <cstring>

#include "websocket/close_code.h"

namespace upgate {

namespace {

constexpr ParseError kContinuationWithoutStart{close_code::kProtocolError,
                                               "continuation frame without a message to continue"};
constexpr ParseError kDataInsideFragmented{close_code::kProtocolError,
                                           "new data message inside a fragmented message"};
constexpr ParseError kCloseOneByte{close_code::kProtocolError, "close frame with a 1-byte payload"};
constexpr ParseError kCloseBadCode{close_code::kProtocolError, "close frame with an invalid code"};
constexpr ParseError kCloseBadReason{close_code::kInvalidPayload,
                                     "close reason is not valid UTF-8"};
constexpr ParseError kInvalidText{close_code::kInvalidPayload, "text message is not valid UTF-8"};
constexpr ParseError kTooBig{close_code::kMessageTooBig, "message over the size limit"};

}  // namespace

ParseError MessageValidator::onFrameHeader(const FrameHeader& h) {
  if (isControlOpcode(h.opcode)) {
    control_len_ = 0;
    if (h.opcode == opcode::kClose && h.payload_len == 1) {
      return kCloseOneByte;  // known from the header: no need to wait for the byte
    }
    return ParseError{};
  }
  if (h.opcode == opcode::kContinuation) {
    if (!in_message_) {
      return kContinuationWithoutStart;
    }
  } else {
    if (in_message_) {
      return kDataInsideFragmented;
    }
    in_message_ = true;
    message_opcode_ = h.opcode;
    message_compressed_ = h.rsv1;
    wire_bytes_ = 0;
    inflated_bytes_ = 0;
    utf8_.reset();
  }
  // Checked against the declared length, so an oversized message fails before its payload.
  if (h.payload_len > max_message_size_ - std::min(wire_bytes_, max_message_size_)) {
    return kTooBig;
  }
  wire_bytes_ += h.payload_len;
  return ParseError{};
}

ParseError MessageValidator::checkText(const char* data, size_t len) {
  if (message_opcode_ == opcode::kText && !utf8_.feed(data, len)) {
    return kInvalidText;
  }
  return ParseError{};
}

ParseError MessageValidator::onFramePayload(const FrameHeader& h, const char* data, size_t len) {
  if (isControlOpcode(h.opcode)) {
    // The parser guarantees at most 125 bytes; min() keeps a misbehaving caller in bounds.
    const size_t n = std::min(len, kMaxControlPayload - control_len_);
    std::memcpy(control_ + control_len_, data, n);
    control_len_ = static_cast<uint8_t>(control_len_ + n);
    return ParseError{};
  }
  if (message_compressed_) {
    return ParseError{};  // checked after inflation, in onInflatedPayload
  }
  return checkText(data, len);
}

ParseError MessageValidator::onInflatedPayload(const char* data, size_t len) {
  if (len > max_message_size_ - inflated_bytes_) {
    return kTooBig;
  }
  inflated_bytes_ += len;
  return checkText(data, len);
}

ParseError MessageValidator::onFrameEnd(const FrameHeader& h) {
  if (isControlOpcode(h.opcode)) {
    if (h.opcode != opcode::kClose) {
      return ParseError{};
    }
    if (control_len_ == 0) {
      close_code_ = close_code::kNoStatus;
    } else {
      const auto* p = reinterpret_cast<const unsigned char*>(control_);
      const auto code = static_cast<uint16_t>((p[0] << 8) | p[1]);
      if (!isValidWireCloseCode(code)) {
        return kCloseBadCode;
      }
      if (!isValidUtf8(std::string_view(control_ + 2, control_len_ - 2u))) {
        return kCloseBadReason;
      }
      close_code_ = code;
    }
    close_received_ = true;
    return ParseError{};
  }
  if (!h.fin) {
    return ParseError{};
  }
  in_message_ = false;
  if (message_opcode_ == opcode::kText && !utf8_.complete()) {
    return kInvalidText;  // ends inside a character
  }
  return ParseError{};
}

std::string_view MessageValidator::closeReason() const {
  if (!close_received_ || control_len_ < 2) {
    return std::string_view();
  }
  return std::string_view(control_ + 2, control_len_ - 2u);
}

void MessageValidator::reset() {
  const uint64_t max = max_message_size_;
  *this = MessageValidator(max);
}

}  // namespace upgate
