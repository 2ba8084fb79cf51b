#include "websocket/frame_parser.h"

#include <algorithm>
#include <cstring>

#include "websocket/close_code.h"

namespace upgate {

namespace {

constexpr ParseError protocolError(const char* reason) {
  return ParseError{close_code::kProtocolError, reason};
}

// Header size implied by the second byte: 2, plus the extended length, plus the masking key.
size_t headerLength(uint8_t b1) {
  const uint8_t len7 = b1 & 0x7F;
  size_t n = 2;
  if (len7 == 126) {
    n += 2;
  } else if (len7 == 127) {
    n += 8;
  }
  if ((b1 & 0x80) != 0) {
    n += 4;
  }
  return n;
}

}  // namespace

FrameParser::FrameParser(Role expect, Limits limits, bool allow_rsv1)
    : expect_(expect), limits_(limits), allow_rsv1_(allow_rsv1) {}

ParseError FrameParser::fail(ParseError e) {
  state_ = State::Failed;
  error_ = e;
  return e;
}

ParseError FrameParser::checkFirstBytes(uint8_t b0, uint8_t b1) const {
  const uint8_t op = b0 & 0x0F;
  const bool control = isControlOpcode(op);
  if ((op >= 0x3 && op <= 0x7) || op >= 0xB) {
    return protocolError("reserved opcode");
  }
  if ((b0 & 0x30) != 0) {
    return protocolError("RSV2 or RSV3 set without a negotiated extension");
  }
  if ((b0 & 0x40) != 0) {
    if (!allow_rsv1_) {
      return protocolError("RSV1 set without a negotiated extension");
    }
    // RFC 7692 §6: the "Per-Message Compressed" bit belongs to the first frame of a data message.
    if (control || op == opcode::kContinuation) {
      return protocolError("RSV1 set on a control or continuation frame");
    }
  }
  const bool masked = (b1 & 0x80) != 0;
  if (expect_ == Role::Client && !masked) {
    return protocolError("unmasked frame from a client");
  }
  if (expect_ == Role::Server && masked) {
    return protocolError("masked frame from a server");
  }
  if (control) {
    if ((b0 & 0x80) == 0) {
      return protocolError("fragmented control frame");
    }
    // 126 and 127 announce extended lengths, which only payloads over 125 bytes may use.
    if ((b1 & 0x7F) > kMaxControlPayload) {
      return protocolError("control frame payload over 125 bytes");
    }
  }
  return ParseError{};
}

ParseError FrameParser::decodeHeader(const uint8_t* h, size_t header_len) {
  FrameHeader& f = header_;
  f.fin = (h[0] & 0x80) != 0;
  f.rsv1 = (h[0] & 0x40) != 0;
  f.rsv2 = false;
  f.rsv3 = false;
  f.opcode = h[0] & 0x0F;
  f.masked = (h[1] & 0x80) != 0;
  f.header_len = header_len;
  const uint8_t len7 = h[1] & 0x7F;
  size_t pos = 2;
  if (len7 == 126) {
    f.payload_len = (uint64_t{h[2]} << 8) | h[3];
    pos = 4;
    // §5.2: "the minimal number of bytes MUST be used to encode the length".
    if (f.payload_len < 126) {
      return protocolError("16-bit length used for a payload under 126 bytes");
    }
  } else if (len7 == 127) {
    uint64_t v = 0;
    for (size_t i = 2; i < 10; ++i) {
      v = (v << 8) | h[i];
    }
    f.payload_len = v;
    pos = 10;
    if ((v >> 63) != 0) {
      return protocolError("64-bit length with the most significant bit set");
    }
    if (v <= 0xFFFF) {
      return protocolError("64-bit length used for a payload under 65536 bytes");
    }
  } else {
    f.payload_len = len7;
  }
  if (f.masked) {
    std::memcpy(f.mask, h + pos, 4);
  } else {
    std::memset(f.mask, 0, 4);
  }
  if (f.payload_len > limits_.max_frame_payload) {
    return ParseError{close_code::kMessageTooBig, "frame payload over the size limit"};
  }
  return ParseError{};
}

ParseError FrameParser::feed(char* data, size_t len, FrameSink& sink) {
  consumed_ = 0;
  if (state_ == State::Failed) {
    return error_;
  }
  size_t pos = 0;
  for (;;) {
    switch (state_) {
      case State::Header: {
        if (pos == len) {
          consumed_ = len;
          return ParseError{};
        }
        const uint8_t* hdr = nullptr;
        size_t hlen = 0;
        if (spill_len_ == 0 && len - pos >= 2) {
          // Fast path: the header starts in this read; decode it in place if it is all here.
          const auto* p = reinterpret_cast<const uint8_t*>(data + pos);
          if (ParseError e = checkFirstBytes(p[0], p[1])) {
            consumed_ = pos + 2;
            return fail(e);
          }
          hlen = headerLength(p[1]);
          if (len - pos < hlen) {
            std::memcpy(spill_, p, len - pos);
            spill_len_ = static_cast<uint8_t>(len - pos);
            consumed_ = len;
            return ParseError{};
          }
          hdr = p;
          pos += hlen;
        } else {
          // Slow path: the header is split across reads; gather it in spill_.
          if (spill_len_ < 2) {
            spill_[spill_len_++] = static_cast<uint8_t>(data[pos++]);
            if (spill_len_ < 2) {
              continue;
            }
            if (ParseError e = checkFirstBytes(spill_[0], spill_[1])) {
              consumed_ = pos;
              return fail(e);
            }
          }
          hlen = headerLength(spill_[1]);
          const size_t take = std::min(hlen - spill_len_, len - pos);
          std::memcpy(spill_ + spill_len_, data + pos, take);
          spill_len_ = static_cast<uint8_t>(spill_len_ + take);
          pos += take;
          if (spill_len_ < hlen) {
            consumed_ = len;
            return ParseError{};
          }
          hdr = spill_;
          spill_len_ = 0;  // spill_ keeps its bytes until the next split header
        }
        if (ParseError e = decodeHeader(hdr, hlen)) {
          consumed_ = pos;
          return fail(e);
        }
        offset_ = 0;
        state_ = State::Payload;
        if (!sink.onFrameHeader(header_, reinterpret_cast<const char*>(hdr), hlen)) {
          consumed_ = pos;
          return ParseError{};
        }
        break;
      }
      case State::Payload: {
        if (header_.payload_len == 0) {
          state_ = State::End;
          if (!sink.onFramePayload(header_, data + pos, 0, 0)) {
            consumed_ = pos;
            return ParseError{};
          }
          break;
        }
        if (pos == len) {
          consumed_ = len;
          return ParseError{};
        }
        const uint64_t remaining = header_.payload_len - offset_;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining, len - pos));
        char* chunk = data + pos;
        if (header_.masked) {
          applyMask(chunk, take, header_.mask, offset_);
        }
        const uint64_t chunk_offset = offset_;
        offset_ += take;
        pos += take;
        if (offset_ == header_.payload_len) {
          state_ = State::End;
        }
        if (!sink.onFramePayload(header_, chunk, take, chunk_offset)) {
          consumed_ = pos;
          return ParseError{};
        }
        break;
      }
      case State::End: {
        // Reported even when the read ended with the payload: the sink learns of a complete
        // frame (a close, a ping to answer) without waiting for more bytes.
        state_ = State::Header;
        if (!sink.onFrameEnd(header_)) {
          consumed_ = pos;
          return ParseError{};
        }
        break;
      }
      case State::Failed:
        return error_;
    }
  }
}

void applyMask(char* data, size_t len, const uint8_t mask[4], uint64_t offset) {
  // Key bytes in the order they apply from data[0]; the period of 4 divides 8, so one 64-bit
  // word serves every aligned step and the tail indexes the same array.
  uint8_t rotated[8];
  for (unsigned i = 0; i < 8; ++i) {
    rotated[i] = mask[(offset + i) & 3];
  }
  uint64_t key;
  std::memcpy(&key, rotated, sizeof key);
  size_t i = 0;
  for (; i + 32 <= len; i += 32) {
    uint64_t w[4];
    std::memcpy(w, data + i, sizeof w);
    w[0] ^= key;
    w[1] ^= key;
    w[2] ^= key;
    w[3] ^= key;
    std::memcpy(data + i, w, sizeof w);
  }
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, sizeof w);
    w ^= key;
    std::memcpy(data + i, &w, sizeof w);
  }
  for (; i < len; ++i) {
    data[i] = static_cast<char>(data[i] ^ static_cast<char>(rotated[i & 7]));
  }
}

}  // namespace upgate
