// libFuzzer target: websocket/frame_parser (FrameParser, applyMask) and
// websocket/message_validator (MessageValidator).
//
// Input: [config byte][seed byte][wire bytes of one direction of a WebSocket connection...]
//   config bit 0     allow_rsv1 (permessage-deflate negotiated)
//   config bit 1     the stand-in "inflater" doubles every byte (else it passes bytes through)
//   config bits 2-3  FrameParser::Limits::max_frame_payload, from kFrameLimits
//   config bits 4-6  MessageValidator max_message_size, from kMessageLimits
//   config bit 7     the sink stops the parser often (else rarely)
//   seed byte        seeds the split points and the sink's stop decisions
//
// The wire bytes are decoded for both roles (client frames must be masked, server frames must
// not), each fed whole and then in small pieces of pseudo-random size, every piece in a heap
// buffer of exactly its size (so ASan sees any read past a read). Every run is compared with a
// whole-buffer reference decoder written here from RFC 6455 §5.2 (not from the parser), and
// the MessageValidator driven by the sink with a reference model of §5.4/§5.5/§7.4/§8.1:
//   - consumed() <= len; consumed() == len unless the sink stopped or an error occurred, and then
//     it is exactly the end of the stopping event or of the failing header bytes;
//   - errors: the reference's code at the reference's position, sticky (same error, consumed()
//     0, no events on later feeds), reported by error() too; no event after an error or a stop;
//   - events: header -> payload pieces (contiguous offsets, in place in the read, correctly
//     unmasked; one zero-length call for an empty payload) -> end; header fields and raw bytes;
//     header delivered in place when it lies wholly in the read; atFrameBoundary() at the end;
//   - validator: the first error (frame, phase, close code) matches the model for every split;
//     control payloads, close code/reason and message byte counts as the model says.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "websocket/frame_parser.h"
#include "websocket/message_validator.h"

namespace {

using upgate::FrameHeader;
using upgate::FrameParser;
using upgate::MessageValidator;
using upgate::ParseError;
using upgate::Role;

constexpr uint64_t kFrameLimits[4] = {uint64_t{16} << 20, 0, 125, 300};
constexpr uint64_t kMessageLimits[8] = {uint64_t{16} << 20, 0, 1, 10, 125, 126, 300, 1000};

struct Config {
  bool allow_rsv1 = false;
  bool doubling_inflate = false;
  uint64_t max_frame = 0;
  uint64_t max_message = 0;
  unsigned stop_one_in = 16;
  uint8_t seed = 0;
};

Config parseConfig(uint8_t c, uint8_t seed) {
  Config cfg;
  cfg.allow_rsv1 = (c & 0x01) != 0;
  cfg.doubling_inflate = (c & 0x02) != 0;
  cfg.max_frame = kFrameLimits[(c >> 2) & 0x3];
  cfg.max_message = kMessageLimits[(c >> 4) & 0x7];
  cfg.stop_one_in = (c & 0x80) != 0 ? 2 : 16;
  cfg.seed = seed;
  return cfg;
}

using fuzz::Rng;

// Mostly tiny pieces (headers split everywhere), sometimes larger ones, sometimes the rest.
size_t nextChunk(Rng& rng, size_t remaining) {
  const size_t kind = rng.below(16);
  size_t n = remaining;
  if (kind < 10) {
    n = 1 + rng.below(4);
  } else if (kind < 14) {
    n = 1 + rng.below(32);
  } else if (kind < 15) {
    n = 1 + rng.below(512);
  }
  return std::min(n, remaining);
}

// ---------------------------------------------------------------------------------------------
// Reference decoder (RFC 6455 §5.2, §5.5; RFC 7692 §6), whole buffer at once.

struct RefFrame {
  bool fin = false;
  bool rsv1 = false;
  uint8_t opcode = 0;
  bool masked = false;
  uint8_t mask[4] = {0, 0, 0, 0};
  uint64_t payload_len = 0;
  size_t header_start = 0;
  size_t header_len = 0;
  std::string payload;  // unmasked bytes of the payload present in the input
  bool complete = false;

  size_t payloadStart() const { return header_start + header_len; }
};

struct RefStream {
  std::vector<RefFrame> frames;  // every frame whose header is complete and valid
  uint16_t error = 0;            // 1002 or 1009, 0 if none is detectable from the input
  size_t error_end = 0;          // stream offset just past the bytes that prove the error
  bool at_boundary = false;      // no error and the input ends exactly after a frame
};

bool knownOpcode(uint8_t op) {
  return op == 0x0 || op == 0x1 || op == 0x2 || op == 0x8 || op == 0x9 || op == 0xA;
}

// Everything the first two header bytes decide.
bool firstTwoBytesAcceptable(uint8_t b0, uint8_t b1, Role role, bool allow_rsv1) {
  const bool fin = (b0 & 0x80) != 0;
  const bool rsv1 = (b0 & 0x40) != 0;
  const bool rsv2 = (b0 & 0x20) != 0;
  const bool rsv3 = (b0 & 0x10) != 0;
  const uint8_t op = b0 & 0x0F;
  const bool masked = (b1 & 0x80) != 0;
  const unsigned len7 = b1 & 0x7F;
  const bool control = op >= 0x8;
  if (!knownOpcode(op) || rsv2 || rsv3) {
    return false;
  }
  if (rsv1 && !(allow_rsv1 && (op == 0x1 || op == 0x2))) {
    return false;
  }
  if (masked != (role == Role::Client)) {
    return false;
  }
  if (control && (!fin || len7 > 125)) {
    return false;
  }
  return true;
}

RefStream referenceDecode(const uint8_t* in, size_t n, Role role, const Config& cfg) {
  RefStream out;
  size_t pos = 0;
  for (;;) {
    if (pos == n) {
      out.at_boundary = true;
      return out;
    }
    const size_t start = pos;
    if (n - start < 2) {
      return out;  // one byte of a header: nothing can be judged yet
    }
    const uint8_t b0 = in[start];
    const uint8_t b1 = in[start + 1];
    if (!firstTwoBytesAcceptable(b0, b1, role, cfg.allow_rsv1)) {
      out.error = 1002;
      out.error_end = start + 2;
      return out;
    }
    const unsigned len7 = b1 & 0x7F;
    const size_t ext = len7 == 126 ? 2 : (len7 == 127 ? 8 : 0);
    const bool masked = (b1 & 0x80) != 0;
    const size_t hlen = 2 + ext + (masked ? 4 : 0);
    if (n - start < hlen) {
      return out;
    }
    uint64_t len = len7;
    if (ext != 0) {
      len = 0;
      for (size_t i = 0; i < ext; ++i) {
        len = (len << 8) | in[start + 2 + i];
      }
    }
    bool minimal = true;
    if (ext == 2) {
      minimal = len >= 126;
    } else if (ext == 8) {
      minimal = len > 0xFFFF && len < (uint64_t{1} << 63);
    }
    if (!minimal) {
      out.error = 1002;
      out.error_end = start + hlen;
      return out;
    }
    if (len > cfg.max_frame) {
      out.error = 1009;
      out.error_end = start + hlen;
      return out;
    }
    RefFrame f;
    f.fin = (b0 & 0x80) != 0;
    f.rsv1 = (b0 & 0x40) != 0;
    f.opcode = b0 & 0x0F;
    f.masked = masked;
    if (masked) {
      std::memcpy(f.mask, in + start + 2 + ext, 4);
    }
    f.payload_len = len;
    f.header_start = start;
    f.header_len = hlen;
    const size_t avail = static_cast<size_t>(std::min<uint64_t>(len, n - (start + hlen)));
    f.payload.resize(avail);
    for (size_t i = 0; i < avail; ++i) {
      const uint8_t key = masked ? f.mask[i % 4] : 0;
      f.payload[i] = static_cast<char>(in[start + hlen + i] ^ key);
    }
    f.complete = avail == len;
    out.frames.push_back(std::move(f));
    pos = start + hlen + avail;
    if (!out.frames.back().complete) {
      return out;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reference model of the message-level checks.

// Index of the first byte at which `s` stops being a prefix of valid UTF-8 (RFC 3629 §4), or
// npos; *boundary says whether a valid `s` ends between characters.
size_t firstInvalidUtf8(std::string_view s, bool* boundary) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    size_t follow = 0;
    uint8_t lo = 0x80;
    uint8_t hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      follow = 1;
    } else if (b == 0xE0) {
      follow = 2;
      lo = 0xA0;
    } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
      follow = 2;
    } else if (b == 0xED) {
      follow = 2;
      hi = 0x9F;
    } else if (b == 0xF0) {
      follow = 3;
      lo = 0x90;
    } else if (b >= 0xF1 && b <= 0xF3) {
      follow = 3;
    } else if (b == 0xF4) {
      follow = 3;
      hi = 0x8F;
    } else {
      return i;
    }
    for (size_t k = 1; k <= follow; ++k) {
      if (i + k >= s.size()) {
        *boundary = false;
        return std::string_view::npos;
      }
      const auto c = static_cast<uint8_t>(s[i + k]);
      const uint8_t min = k == 1 ? lo : 0x80;
      const uint8_t max = k == 1 ? hi : 0xBF;
      if (c < min || c > max) {
        return i + k;
      }
    }
    i += follow + 1;
  }
  *boundary = true;
  return std::string_view::npos;
}

bool validUtf8(std::string_view s) {
  bool boundary = false;
  return firstInvalidUtf8(s, &boundary) == std::string_view::npos && boundary;
}

// Close codes a peer may send: RFC 6455 §7.4.1, the IANA registrations 1012-1014, §7.4.2.
bool sendableCloseCode(unsigned code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

std::string fakeInflate(const char* data, size_t len, bool doubling) {
  std::string out;
  for (size_t i = 0; i < len; ++i) {
    out.push_back(data[i]);
    if (doubling) {
      out.push_back(data[i]);
    }
  }
  return out;
}

enum class Phase { Header, Payload, End };

const char* phaseName(Phase p) {
  return p == Phase::Header ? "header" : (p == Phase::Payload ? "payload" : "end");
}

struct ValidatorVerdict {
  bool failed = false;
  size_t frame = 0;
  Phase phase = Phase::Header;
  uint16_t code = 0;      // actual runs: the code returned
  uint16_t alt_code = 0;  // model only: a second acceptable code (split-dependent order)
};

ValidatorVerdict referenceValidate(const RefStream& ref, const Config& cfg) {
  ValidatorVerdict v;
  auto fail = [&v](size_t i, Phase p, uint16_t code, uint16_t alt = 0) {
    v.failed = true;
    v.frame = i;
    v.phase = p;
    v.code = code;
    v.alt_code = alt;
    return v;
  };
  bool in_message = false;
  uint8_t message_op = 0;
  bool compressed = false;
  uint64_t wire = 0;
  uint64_t inflated = 0;
  std::string text;  // text message so far (inflated bytes when compressed)
  for (size_t i = 0; i < ref.frames.size(); ++i) {
    const RefFrame& f = ref.frames[i];
    const bool control = f.opcode >= 0x8;
    if (control) {
      if (f.opcode == 0x8 && f.payload_len == 1) {
        return fail(i, Phase::Header, 1002);
      }
    } else {
      if (f.opcode == 0x0) {
        if (!in_message) {
          return fail(i, Phase::Header, 1002);
        }
      } else {
        if (in_message) {
          return fail(i, Phase::Header, 1002);
        }
        in_message = true;
        message_op = f.opcode;
        compressed = f.rsv1;
        wire = 0;
        inflated = 0;
        text.clear();
      }
      if (wire + f.payload_len > cfg.max_message) {
        return fail(i, Phase::Header, 1009);
      }
      wire += f.payload_len;
      // Payload (all bytes present, however they were split).
      std::string bytes = f.payload;
      bool too_big = false;
      if (compressed) {
        bytes = fakeInflate(f.payload.data(), f.payload.size(), cfg.doubling_inflate);
        too_big = inflated + bytes.size() > cfg.max_message;
      }
      bool bad_text = false;
      if (message_op == 0x1) {
        bool boundary = false;
        bad_text = firstInvalidUtf8(text + bytes, &boundary) != std::string_view::npos;
      }
      if (too_big && bad_text) {
        // Which one fires first depends on where the reads split the frame.
        return fail(i, Phase::Payload, 1009, 1007);
      }
      if (too_big) {
        return fail(i, Phase::Payload, 1009);
      }
      if (bad_text) {
        return fail(i, Phase::Payload, 1007);
      }
      inflated += compressed ? bytes.size() : 0;
      if (message_op == 0x1) {
        text += bytes;
      }
    }
    if (!f.complete) {
      break;
    }
    if (control) {
      if (f.opcode == 0x8) {
        if (f.payload.size() >= 2) {
          const unsigned code = (static_cast<unsigned>(static_cast<uint8_t>(f.payload[0])) << 8) |
                                static_cast<uint8_t>(f.payload[1]);
          if (!sendableCloseCode(code)) {
            return fail(i, Phase::End, 1002);
          }
          if (!validUtf8(std::string_view(f.payload).substr(2))) {
            return fail(i, Phase::End, 1007);
          }
        }
        return v;  // the caller stops reading this direction after a close (§5.5.1)
      }
    } else if (f.fin) {
      in_message = false;
      if (message_op == 0x1 && !validUtf8(text)) {
        return fail(i, Phase::End, 1007);
      }
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// The sink: checks every event against the reference and drives a MessageValidator.

class CheckingSink final : public upgate::FrameSink {
 public:
  CheckingSink(const uint8_t* input, const RefStream& ref, const Config& cfg, Rng& stop_rng)
      : input_(input), ref_(ref), cfg_(cfg), stop_rng_(stop_rng), validator_(cfg.max_message) {}

  void beginFeed(char* chunk, size_t len, size_t base) {
    chunk_ = chunk;
    chunk_len_ = len;
    base_ = base;
    stopped_ = false;
  }
  void parserFailed() { parser_failed_ = true; }
  bool stopped() const { return stopped_; }
  size_t stopEnd() const { return stop_end_; }
  size_t framesSeen() const { return frames_seen_; }
  bool inFrame() const { return in_frame_; }
  uint64_t delivered() const { return delivered_; }
  const ValidatorVerdict& verdict() const { return verdict_; }

  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override {
    checkEventAllowed("header");
    FUZZ_CHECK(!in_frame_, "header of a new frame before the end of frame %zu", frames_seen_ - 1);
    FUZZ_CHECK(frames_seen_ < ref_.frames.size(), "header of frame %zu; the reference has %zu",
               frames_seen_, ref_.frames.size());
    const RefFrame& r = ref_.frames[frames_seen_];
    ++frames_seen_;
    in_frame_ = true;
    delivered_ = 0;
    empty_seen_ = false;
    FUZZ_CHECK(h.fin == r.fin && h.rsv1 == r.rsv1 && !h.rsv2 && !h.rsv3 && h.opcode == r.opcode &&
                   h.masked == r.masked && std::memcmp(h.mask, r.mask, 4) == 0 &&
                   h.payload_len == r.payload_len && h.header_len == r.header_len,
               "frame %zu header: fin=%d rsv1=%d op=%u masked=%d len=%llu hlen=%zu, expected "
               "fin=%d rsv1=%d op=%u masked=%d len=%llu hlen=%zu",
               frames_seen_ - 1, h.fin, h.rsv1, h.opcode, h.masked,
               static_cast<unsigned long long>(h.payload_len), h.header_len, r.fin, r.rsv1,
               r.opcode, r.masked, static_cast<unsigned long long>(r.payload_len), r.header_len);
    FUZZ_CHECK(raw_len == r.header_len && std::memcmp(raw, input_ + r.header_start, raw_len) == 0,
               "raw header bytes of frame %zu differ from the wire", frames_seen_ - 1);
    const size_t end = r.payloadStart();
    FUZZ_CHECK(end > base_ && end <= base_ + chunk_len_,
               "header ending at %zu reported during the read [%zu, %zu)", end, base_,
               base_ + chunk_len_);
    if (r.header_start >= base_) {
      FUZZ_CHECK(raw == chunk_ + (r.header_start - base_),
                 "header wholly inside the read not reported in place (zero copy)");
    }
    header_ = h;
    if (validating_) {
      if (ParseError e = validator_.onFrameHeader(h)) {
        validatorFailed(Phase::Header, e);
      } else if (!upgate::isControlOpcode(h.opcode) && h.opcode != 0) {
        message_bytes_ = 0;
      }
    }
    return maybeStop(end);
  }

  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override {
    checkEventAllowed("payload");
    FUZZ_CHECK(in_frame_, "payload outside a frame");
    checkSameHeader(h);
    const RefFrame& r = ref_.frames[frames_seen_ - 1];
    FUZZ_CHECK(offset == delivered_, "payload offset %llu, %llu bytes delivered before",
               static_cast<unsigned long long>(offset),
               static_cast<unsigned long long>(delivered_));
    size_t end = r.payloadStart();
    if (r.payload_len == 0) {
      FUZZ_CHECK(len == 0 && !empty_seen_, "empty payload reported as len %zu (again: %d)", len,
                 empty_seen_);
      empty_seen_ = true;
    } else {
      FUZZ_CHECK(len > 0, "zero-length payload call for a non-empty payload");
      FUZZ_CHECK(offset + len <= r.payload.size(),
                 "payload [%llu, +%zu) beyond the %zu payload bytes in the input",
                 static_cast<unsigned long long>(offset), len, r.payload.size());
      const auto p = reinterpret_cast<uintptr_t>(data);
      const auto c = reinterpret_cast<uintptr_t>(chunk_);
      FUZZ_CHECK(p >= c && len <= chunk_len_ && p - c <= chunk_len_ - len,
                 "payload pointer not inside the read");
      const size_t at = base_ + (p - c);
      FUZZ_CHECK(at == r.payloadStart() + offset, "payload taken from stream offset %zu, not %llu",
                 at, static_cast<unsigned long long>(r.payloadStart() + offset));
      FUZZ_CHECK(std::memcmp(data, r.payload.data() + offset, len) == 0,
                 "payload bytes [%llu, +%zu) not correctly unmasked",
                 static_cast<unsigned long long>(offset), len);
      end = at + len;
    }
    delivered_ += len;
    if (validating_) {
      if (ParseError e = validator_.onFramePayload(h, data, len)) {
        validatorFailed(Phase::Payload, e);
      } else if (!upgate::isControlOpcode(h.opcode)) {
        if (validator_.messageCompressed()) {
          const std::string out = fakeInflate(data, len, cfg_.doubling_inflate);
          if (ParseError e2 = validator_.onInflatedPayload(out.data(), out.size())) {
            validatorFailed(Phase::Payload, e2);
          }
          message_bytes_ += out.size();
        } else {
          message_bytes_ += len;
        }
      }
    }
    if (len > 0) {
      std::memset(data, 0xEE, len);  // the sink may modify the bytes; the parser must not care
    }
    return maybeStop(end);
  }

  bool onFrameEnd(const FrameHeader& h) override {
    checkEventAllowed("end");
    FUZZ_CHECK(in_frame_, "frame end outside a frame");
    checkSameHeader(h);
    const RefFrame& r = ref_.frames[frames_seen_ - 1];
    FUZZ_CHECK(r.complete, "end of frame %zu, whose payload is not all in the input",
               frames_seen_ - 1);
    FUZZ_CHECK(delivered_ == r.payload_len && (r.payload_len != 0 || empty_seen_),
               "frame end after %llu of %llu payload bytes (empty payload reported: %d)",
               static_cast<unsigned long long>(delivered_),
               static_cast<unsigned long long>(r.payload_len), empty_seen_);
    in_frame_ = false;
    const size_t end = r.payloadStart() + r.payload.size();
    FUZZ_CHECK(end >= base_ && end <= base_ + chunk_len_, "frame end reported outside its read");
    if (validating_) {
      if (ParseError e = validator_.onFrameEnd(h)) {
        validatorFailed(Phase::End, e);
      } else if (upgate::isControlOpcode(h.opcode)) {
        FUZZ_CHECK(validator_.controlPayload() == r.payload, "controlPayload() differs");
        if (h.opcode == upgate::opcode::kClose) {
          unsigned code = 1005;
          std::string_view reason;
          if (r.payload.size() >= 2) {
            code = (static_cast<unsigned>(static_cast<uint8_t>(r.payload[0])) << 8) |
                   static_cast<uint8_t>(r.payload[1]);
            reason = std::string_view(r.payload).substr(2);
          }
          FUZZ_CHECK(validator_.closeReceived() && validator_.closeCode() == code &&
                         validator_.closeReason() == reason,
                     "close frame: code %u, expected %u", validator_.closeCode(), code);
          validating_ = false;  // the caller stops reading this direction after a close
        }
      } else {
        FUZZ_CHECK(validator_.inMessage() == !h.fin, "inMessage() %d after a frame with fin=%d",
                   validator_.inMessage(), h.fin);
        FUZZ_CHECK(validator_.messageBytes() == message_bytes_,
                   "messageBytes() %llu, expected %llu",
                   static_cast<unsigned long long>(validator_.messageBytes()),
                   static_cast<unsigned long long>(message_bytes_));
      }
    }
    return maybeStop(end);
  }

 private:
  void checkEventAllowed(const char* what) {
    FUZZ_CHECK(!parser_failed_, "%s event after the parser reported an error", what);
    FUZZ_CHECK(!stopped_, "%s event after the sink returned false", what);
  }

  void checkSameHeader(const FrameHeader& h) {
    FUZZ_CHECK(h.fin == header_.fin && h.rsv1 == header_.rsv1 && h.opcode == header_.opcode &&
                   h.masked == header_.masked && h.payload_len == header_.payload_len &&
                   std::memcmp(h.mask, header_.mask, 4) == 0 && h.header_len == header_.header_len,
               "header changed between the events of one frame");
  }

  void validatorFailed(Phase phase, ParseError e) {
    FUZZ_CHECK(e.reason != nullptr && e.reason[0] != '\0', "validator error without a reason");
    verdict_.failed = true;
    verdict_.frame = frames_seen_ - 1;
    verdict_.phase = phase;
    verdict_.code = e.code;
    validating_ = false;  // the caller fails the connection
  }

  bool maybeStop(size_t event_end) {
    if (stop_rng_.below(cfg_.stop_one_in) == 0) {
      stopped_ = true;
      stop_end_ = event_end;
      return false;
    }
    return true;
  }

  const uint8_t* input_;
  const RefStream& ref_;
  const Config& cfg_;
  Rng& stop_rng_;
  MessageValidator validator_;
  bool validating_ = true;
  ValidatorVerdict verdict_;
  uint64_t message_bytes_ = 0;

  char* chunk_ = nullptr;
  size_t chunk_len_ = 0;
  size_t base_ = 0;  // stream offset of chunk_[0]
  bool stopped_ = false;
  size_t stop_end_ = 0;
  bool parser_failed_ = false;

  size_t frames_seen_ = 0;
  bool in_frame_ = false;
  bool empty_seen_ = false;
  uint64_t delivered_ = 0;
  FrameHeader header_;
};

const char* roleName(Role r) {
  return r == Role::Client ? "client" : "server";
}

void runParser(const uint8_t* in, size_t n, Role role, const Config& cfg, const RefStream& ref,
               const ValidatorVerdict& expected, bool split) {
  Rng chunk_rng(cfg.seed);
  Rng stop_rng(cfg.seed ^ 0xA5u ^ (split ? 0x100u : 0u));
  FrameParser parser(role, FrameParser::Limits{cfg.max_frame}, cfg.allow_rsv1);
  CheckingSink sink(in, ref, cfg, stop_rng);
  const char* mode = split ? "split" : "whole";
  size_t pos = 0;
  bool pending = false;  // the sink stopped the last feed: events may be waiting for a feed
  for (;;) {
    if (pos == n && !pending) {
      break;
    }
    const size_t want = split ? nextChunk(chunk_rng, n - pos) : n - pos;
    // A buffer of exactly this read's size: reading past it is a heap-buffer-overflow.
    std::unique_ptr<char[]> buf(new char[want]);
    if (want > 0) {
      std::memcpy(buf.get(), in + pos, want);
    }
    sink.beginFeed(buf.get(), want, pos);
    const ParseError e = parser.feed(buf.get(), want, sink);
    const size_t c = parser.consumed();
    FUZZ_CHECK(c <= want, "[%s %s] consumed() %zu > len %zu", roleName(role), mode, c, want);
    if (e) {
      FUZZ_CHECK(!sink.stopped(), "[%s %s] error %u although the sink stopped the parser",
                 roleName(role), mode, e.code);
      FUZZ_CHECK(e.code == ref.error && pos + c == ref.error_end,
                 "[%s %s] error %u (%s) at stream offset %zu; reference: %u at %zu", roleName(role),
                 mode, e.code, e.reason, pos + c, ref.error, ref.error_end);
      FUZZ_CHECK(e.reason != nullptr && e.reason[0] != '\0', "error without a reason");
      FUZZ_CHECK(parser.error().code == e.code && parser.error().reason == e.reason,
                 "error() differs from the returned error");
      FUZZ_CHECK(sink.framesSeen() == ref.frames.size() && !sink.inFrame(),
                 "[%s %s] error after %zu frame headers; reference has %zu complete frames",
                 roleName(role), mode, sink.framesSeen(), ref.frames.size());
      FUZZ_CHECK(!parser.atFrameBoundary(), "atFrameBoundary() after an error");
      sink.parserFailed();  // any later event is a failure
      // Sticky: the rest of this read, an empty read and a fresh copy change nothing.
      for (int again = 0; again < 3; ++again) {
        char* p = again == 0 ? buf.get() + c : buf.get();
        const size_t l = again == 0 ? want - c : (again == 1 ? 0 : want);
        if (again == 2 && want > 0) {
          std::memcpy(buf.get(), in + pos, want);
        }
        const ParseError e2 = parser.feed(p, l, sink);
        FUZZ_CHECK(e2.code == e.code && e2.reason == e.reason && parser.consumed() == 0,
                   "error not sticky: %u then %u, consumed() %zu", e.code, e2.code,
                   parser.consumed());
      }
      break;
    }
    FUZZ_CHECK(!parser.error(), "error() set while feed() returned no error");
    if (sink.stopped()) {
      FUZZ_CHECK(pos + c == sink.stopEnd(),
                 "[%s %s] sink stopped at stream offset %zu, consumed() says %zu", roleName(role),
                 mode, sink.stopEnd(), pos + c);
      pos += c;
      pending = true;
    } else {
      FUZZ_CHECK(c == want, "[%s %s] consumed() %zu of %zu without an error or a stop",
                 roleName(role), mode, c, want);
      pos += want;
      pending = false;
    }
  }
  if (!parser.error()) {
    FUZZ_CHECK(ref.error == 0, "[%s %s] no error; the reference fails with %u at offset %zu",
               roleName(role), mode, ref.error, ref.error_end);
    FUZZ_CHECK(sink.framesSeen() == ref.frames.size(),
               "[%s %s] %zu frame headers reported; reference: %zu", roleName(role), mode,
               sink.framesSeen(), ref.frames.size());
    if (!ref.frames.empty()) {
      const RefFrame& last = ref.frames.back();
      FUZZ_CHECK(sink.inFrame() == !last.complete, "last frame left open: %d, complete: %d",
                 sink.inFrame(), last.complete);
      if (!last.complete) {
        FUZZ_CHECK(sink.delivered() == last.payload.size(),
                   "%llu of the %zu payload bytes present were delivered",
                   static_cast<unsigned long long>(sink.delivered()), last.payload.size());
      }
    }
    FUZZ_CHECK(parser.atFrameBoundary() == ref.at_boundary, "atFrameBoundary() %d, expected %d",
               parser.atFrameBoundary(), ref.at_boundary);
  }
  const ValidatorVerdict& v = sink.verdict();
  FUZZ_CHECK(v.failed == expected.failed &&
                 (!v.failed || (v.frame == expected.frame && v.phase == expected.phase &&
                                (v.code == expected.code || v.code == expected.alt_code))),
             "[%s %s] validator: failed=%d frame=%zu phase=%s code=%u; model: failed=%d frame=%zu "
             "phase=%s code=%u/%u",
             roleName(role), mode, v.failed, v.frame, phaseName(v.phase), v.code, expected.failed,
             expected.frame, phaseName(expected.phase), expected.code, expected.alt_code);
}

// applyMask on its own: any offset, any length, any alignment, against a byte-wise XOR.
void checkApplyMask(const uint8_t* in, size_t n, uint8_t seed) {
  if (n < 4) {
    return;
  }
  const uint8_t* mask = in;
  const uint64_t offset = (uint64_t{seed} << 24) | seed;
  const size_t len = n - 4;
  std::unique_ptr<char[]> buf(new char[len == 0 ? 1 : len]);
  std::memcpy(buf.get(), in + 4, len);
  upgate::applyMask(buf.get(), len, mask, offset);
  for (size_t i = 0; i < len; ++i) {
    const auto want = static_cast<char>(in[4 + i] ^ mask[(offset + i) % 4]);
    FUZZ_CHECK(buf[i] == want, "applyMask wrong at byte %zu of %zu (offset %llu)", i, len,
               static_cast<unsigned long long>(offset));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  const Config cfg = parseConfig(data[0], data[1]);
  const uint8_t* in = data + 2;
  const size_t n = size - 2;
  for (Role role : {Role::Client, Role::Server}) {
    const RefStream ref = referenceDecode(in, n, role, cfg);
    const ValidatorVerdict expected = referenceValidate(ref, cfg);
    runParser(in, n, role, cfg, ref, expected, /*split=*/false);
    runParser(in, n, role, cfg, ref, expected, /*split=*/true);
  }
  checkApplyMask(in, n, data[1]);
  return 0;
}
