#include "proxy/frame_relay.h"

#include <cstring>

#include "websocket/close_code.h"
#include "websocket/frame_writer.h"

namespace upgate {

// ---- FrameTracker ------------------------------------------------------------------------------

void FrameTracker::feed(const char* data, size_t len) {
  const char* end = data + len;
  // Nothing after a close frame is a frame of this stream (RFC 6455 §5.5.1): its code and the
  // message count stay as the close left them.
  while (data < end && !close_seen_) {
    if (remaining_ > 0) {
      uint64_t n = static_cast<uint64_t>(end - data);
      if (n > remaining_) n = remaining_;
      if (in_close_) takeCloseCode(data, n);
      remaining_ -= n;
      data += n;
      if (remaining_ == 0 && in_close_) closeEnded();
      continue;
    }
    // A header: 2 bytes, then 0, 2 or 8 length bytes, then 4 mask bytes if masked.
    head_[have_++] = static_cast<uint8_t>(*data++);
    if (have_ < 2) continue;
    const uint8_t len7 = head_[1] & 0x7F;
    const size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((head_[1] & 0x80) ? 4 : 0);
    if (have_ < need) continue;
    uint64_t payload = len7;
    if (len7 >= 126) {
      payload = 0;
      for (size_t i = 2; i < (len7 == 126 ? 4u : 10u); ++i) payload = (payload << 8) | head_[i];
    }
    messages_ += (head_[0] & 0x88) == 0x80;  // FIN on a data frame (opcodes 0-7)
    in_close_ = (head_[0] & 0x0F) == opcode::kClose;
    if (in_close_) {
      code_have_ = 0;
      close_code_ = 0;
      mask_at_ = (head_[1] & 0x80) ? static_cast<uint8_t>(need - 4) : 0;
    }
    have_ = 0;
    remaining_ = payload;
    if (remaining_ == 0 && in_close_) closeEnded();
  }
}

void FrameTracker::takeCloseCode(const char* data, uint64_t n) {
  // head_ still holds this frame's header: the next one is not started before the payload ends.
  for (uint64_t i = 0; i < n && code_have_ < 2; ++i, ++code_have_) {
    uint8_t b = static_cast<uint8_t>(data[i]);
    if (mask_at_ != 0) b ^= head_[mask_at_ + code_have_];
    close_code_ = static_cast<uint16_t>((close_code_ << 8) | b);
  }
}

void FrameTracker::closeEnded() {
  if (code_have_ < 2) close_code_ = close_code::kNoStatus;
  close_seen_ = true;
}

// ---- FrameRelay --------------------------------------------------------------------------------

namespace {

ParseError codecError(CodecStatus s) {
  switch (s) {
    case CodecStatus::Ok:
      return ParseError{};
    case CodecStatus::TooBig:
      return ParseError{close_code::kMessageTooBig, "message too big once inflated"};
    case CodecStatus::DataError:
      return ParseError{close_code::kInvalidPayload, "invalid permessage-deflate data"};
    case CodecStatus::InternalError:
      break;
  }
  return ParseError{close_code::kInternalError, "compression failed"};
}

// Assembly buffers above this are freed after their message, so an idle session keeps none.
constexpr size_t kKeepBufferBytes = 64 * 1024;

void trim(std::string& s) {
  if (s.capacity() > kKeepBufferBytes) {
    std::string().swap(s);
  } else {
    s.clear();
  }
}

}  // namespace

FrameRelay::FrameRelay(const Options& o, RelayOutput& out)
    : parser_(o.from, FrameParser::Limits{o.max_message_size},
              o.end_to_end_deflate || o.inflate != nullptr),
      validator_(o.max_message_size),
      out_(out),
      from_(o.from),
      hooks_(o.whole_messages),
      whole_messages_(o.whole_messages || o.inflate != nullptr || o.deflate != nullptr) {
  if (o.inflate) inflater_ = std::make_unique<Inflater>(*o.inflate);
  if (o.deflate) deflater_ = std::make_unique<Deflater>(*o.deflate);
}

size_t FrameRelay::codecMemory() const {
  return (inflater_ ? inflater_->memoryBytes() : 0) + (deflater_ ? deflater_->memoryBytes() : 0);
}

ParseError FrameRelay::feed(char* data, size_t len) {
  if (stopped_) return error_;
  base_ = data;
  len_ = len;
  run_ = nullptr;
  run_len_ = 0;
  frame_start_ = nullptr;
  frame_spilled_ = false;
  ParseError e = parser_.feed(data, len, *this);
  if (e) {
    // A header the parser refused: the frames before it are complete; relay them.
    fail(e);
  } else if (!stopped_) {
    flushRun();
  }
  base_ = nullptr;
  return error_;
}

bool FrameRelay::extendRun(const char* p, size_t n) {
  if (run_len_ == 0) {  // a spilled header (head_) may be pending: it goes first at flushRun
    run_ = p;
    run_len_ = n;
    return true;
  }
  if (run_ + run_len_ == p) {
    run_len_ += n;
    return true;
  }
  if (!flushRun()) return false;
  run_ = p;
  run_len_ = n;
  return true;
}

bool FrameRelay::flushRun() {
  if (head_len_ > 0) {
    size_t n = head_len_;
    head_len_ = 0;
    if (!out_.relayBytes(head_, n)) return stop();
  }
  if (run_len_ > 0) {
    size_t n = run_len_;
    run_len_ = 0;
    if (!out_.relayBytes(run_, n)) return stop();
  }
  run_ = nullptr;
  return true;
}

bool FrameRelay::stop() {
  stopped_ = true;
  return false;
}

bool FrameRelay::fail(ParseError e) {
  if (in_frame_ && (frame_start_ != nullptr || frame_spilled_)) {
    // The offending data frame began in this read: none of it goes on, so the destination is
    // left between frames.
    if (frame_spilled_) {
      head_len_ = 0;
      run_len_ = 0;
    } else {
      run_len_ = static_cast<size_t>(frame_start_ - run_);
    }
    in_frame_ = false;
  } else if (in_frame_) {
    run_len_ = 0;  // it began in an earlier read: the destination stays inside it
  }
  if (!stopped_) flushRun();
  error_ = e;
  return stop();
}

bool FrameRelay::onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) {
  ParseError e = validator_.onFrameHeader(h);
  if (e) return fail(e);
  if (isControlOpcode(h.opcode) || whole_messages_) return true;  // held until complete
  in_frame_ = true;
  if (inBuffer(raw) && inBuffer(raw + raw_len)) {
    frame_start_ = raw;
    return extendRun(raw, raw_len);
  }
  // The header began in the previous read (the parser's spill copy): it is the first event of
  // this read, so nothing is pending before it.
  std::memcpy(head_, raw, raw_len);
  head_len_ = static_cast<uint8_t>(raw_len);
  frame_spilled_ = true;
  return true;
}

bool FrameRelay::onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) {
  ParseError e = validator_.onFramePayload(h, data, len);
  if (e) return fail(e);
  if (isControlOpcode(h.opcode)) return true;  // the validator keeps control payloads
  if (!whole_messages_) {
    if (h.masked) applyMask(data, len, h.mask, offset);  // on as it came
    return extendRun(data, len);
  }
  if (!validator_.messageCompressed()) {
    message_.append(data, len);
    return true;
  }
  size_t before = message_.size();
  e = codecError(inflater_->decompress(data, len, false, validator_.maxMessageSize(), &message_));
  if (!e) e = validator_.onInflatedPayload(message_.data() + before, message_.size() - before);
  return e ? fail(e) : true;
}

bool FrameRelay::onFrameEnd(const FrameHeader& h) {
  if (whole_messages_ && !isControlOpcode(h.opcode) && h.fin && validator_.messageCompressed()) {
    size_t before = message_.size();
    ParseError e =
        codecError(inflater_->decompress(nullptr, 0, true, validator_.maxMessageSize(), &message_));
    if (!e) e = validator_.onInflatedPayload(message_.data() + before, message_.size() - before);
    if (e) return fail(e);
  }
  ParseError e = validator_.onFrameEnd(h);
  if (e) return fail(e);
  if (isControlOpcode(h.opcode)) return endControl(h);
  messages_ += h.fin;
  if (!whole_messages_) {
    in_frame_ = false;
    frame_start_ = nullptr;
    frame_spilled_ = false;
    return true;
  }
  return h.fin ? endMessage() : true;
}

bool FrameRelay::endControl(const FrameHeader& h) {
  if (!flushRun()) return false;  // what came before it goes first
  std::string_view payload = validator_.controlPayload();
  if (h.opcode == opcode::kClose) close_seen_ = true;
  // Re-encoded as it came: masked with its own key when it came from the client.
  char frame[kMaxControlFrame];
  size_t n = writeControlFrame(frame, h.opcode, payload, h.masked ? h.mask : nullptr);
  if (!out_.relayControl(h.opcode, payload, std::string_view(frame, n))) return stop();
  if (close_seen_) return stop();  // nothing after a close frame is read (§5.5.1)
  return true;
}

bool FrameRelay::endMessage() {
  const uint8_t op = validator_.messageOpcode();
  bool ok = true;
  if (!hooks_) {
    ok = sendMessage(op, message_);
  } else {
    MessageVerdict v = out_.relayMessage(op, message_);
    switch (v.action) {
      case UPGATE_MESSAGE_PASS:
        ok = sendMessage(op, message_);
        break;
      case UPGATE_MESSAGE_REWRITE:
        // The peer holds messages to the same limit: one a plugin made longer than it is a
        // plugin error (1011), not the sender's.
        if (v.payload.size() > validator_.maxMessageSize()) {
          return fail(ParseError{close_code::kInternalError,
                                 "plugin rewrote a message over "
                                 "limits.max_message_size"});
        }
        ok = sendMessage(v.opcode, v.payload);
        break;
      case UPGATE_MESSAGE_DROP:
        break;
      case UPGATE_MESSAGE_CLOSE:
        close_reason_ = std::move(v.close_reason);
        return fail(ParseError{v.close_code, close_reason_.c_str()});
    }
  }
  trim(message_);
  if (inflater_) inflater_->release();  // frees zlib state only with no_context_takeover
  return ok;
}

bool FrameRelay::sendMessage(uint8_t op, const std::string& payload) {
  const std::string* body = &payload;
  if (deflater_) {
    compressed_.clear();
    ParseError e =
        codecError(deflater_->compress(payload.data(), payload.size(), true, &compressed_));
    if (e) return fail(e);
    deflater_->release();
    body = &compressed_;
  }
  // Towards the upstream upgate is the client: every frame it writes is masked (§5.3).
  const bool mask = from_ == Role::Client;
  uint8_t key[4];
  if (mask) maskingKey(key);
  wire_.resize(kMaxFrameHeader + body->size());
  size_t n = writeFrameHeader(&wire_[0], op, true, deflater_ != nullptr, body->size(),
                              mask ? key : nullptr);
  std::memcpy(&wire_[n], body->data(), body->size());
  if (mask) maskPayload(&wire_[n], body->size(), key);
  bool ok = out_.relayBytes(wire_.data(), n + body->size());
  trim(wire_);
  trim(compressed_);
  return ok ? true : stop();
}

}  // namespace upgate
