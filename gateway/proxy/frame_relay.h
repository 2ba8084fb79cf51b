#pragma once
// Frame-aware relaying of one direction of a websocket tunnel (client -> upstream or back).
//
// FrameTracker (passthrough mode) follows frame headers only, so upgate knows whether the bytes
// it relayed end between frames: only there can it inject a ping or a close frame (drain, dead
// peer). Payload is never read or unmasked, but for the two code bytes of a close frame (for
// metrics and logs); the cost is a few integer operations per frame.
//
// FrameRelay (frames mode) parses and checks every frame (FrameParser + MessageValidator: RFC
// 6455 enforced on both legs, never trusting the upstream) and hands what goes on to the
// RelayOutput. Two ways of relaying:
//   - streaming (the default): data frames go on as they came, in place (masked payload is
//     unmasked for the checks and masked again), coalesced into one piece per read where they
//     are contiguous. Control frames (131 bytes at most) are held until complete, then relayed,
//     answered or swallowed as the output decides (e.g. the pong to upgate's own ping).
//   - whole messages: when upgate terminates permessage-deflate on a leg, or plugins inspect
//     messages, data messages are assembled (inflated when the source compressed them), passed
//     to the output's hook, and sent on as one frame: deflated when the destination leg
//     compresses, masked with a fresh key towards the upstream. Bounded by max_message_size.
//
// Errors: feed() returns the close code for the source (1002, 1007, 1009; 1011 for a codec
// failure) and relays only the frames that ended before the offending one, so the destination is
// left between frames (atBoundary()) and can be sent a close frame. After a close frame nothing
// more of this direction is read (RFC 6455 §5.5.1).
//
// Not thread-safe: one per direction per session, on the session's loop thread. Never throws
// except std::bad_alloc (whole-message buffers).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "plugin/chain.h"  // MessageVerdict
#include "websocket/deflate.h"
#include "websocket/frame_parser.h"
#include "websocket/message_validator.h"

namespace upgate {

class FrameTracker {
 public:
  // Follows `len` more bytes of the stream, up to the end of its first close frame.
  void feed(const char* data, size_t len);
  // The bytes so far end between frames.
  bool atBoundary() const { return remaining_ == 0 && have_ == 0; }
  // A complete close frame went by.
  bool closeSeen() const { return close_seen_; }
  // Once closeSeen(): its code (close_code::kNoStatus if it had none), not checked.
  uint16_t closeCode() const { return close_code_; }
  // Data messages whose last frame began since the previous call.
  uint32_t takeMessages() {
    uint32_t n = messages_;
    messages_ = 0;
    return n;
  }

 private:
  void takeCloseCode(const char* data, uint64_t n);
  void closeEnded();

  uint64_t remaining_ = 0;  // payload bytes of the current frame still to come
  uint32_t messages_ = 0;   // see takeMessages()
  uint8_t head_[kMaxFrameHeader] = {};
  uint8_t have_ = 0;  // header bytes collected so far
  bool in_close_ = false;
  bool close_seen_ = false;
  uint8_t code_have_ = 0;  // close frame: code bytes collected so far
  uint8_t mask_at_ = 0;    // close frame: where head_ keeps its masking key (0: unmasked)
  uint16_t close_code_ = 0;
};

class RelayOutput {
 public:
  virtual ~RelayOutput() = default;
  // Bytes for the destination, in order. Returns false when the session is ending: stop.
  virtual bool relayBytes(const char* data, size_t len) = 0;
  // A complete, valid control frame from the source (opcode kPing, kPong or kClose): its payload,
  // and the frame re-encoded as it came (masked with its own key if it was). The output relays
  // `frame` with relayBytes(), answers it, or swallows it. Returns false to stop.
  virtual bool relayControl(uint8_t opcode, std::string_view payload, std::string_view frame) = 0;
  // A complete data message (whole-message mode only). PASS sends `payload` on; REWRITE the
  // verdict's payload; DROP nothing; CLOSE fails the source with the verdict's code.
  virtual MessageVerdict relayMessage(uint8_t opcode, const std::string& payload) = 0;
};

class FrameRelay final : private FrameSink {
 public:
  struct Options {
    Role from = Role::Client;  // who sends the frames: Client (masked) or Server (unmasked)
    uint64_t max_message_size = 16 * 1024 * 1024;
    bool end_to_end_deflate = false;  // permessage-deflate agreed between the peers: RSV1 passes
    const DeflateChannel* inflate = nullptr;  // upgate agreed compression with the source
    const DeflateChannel* deflate = nullptr;  // ...and with the destination
    bool whole_messages = false;              // hand complete messages to relayMessage()
  };

  FrameRelay(const Options& options, RelayOutput& out);

  // Checks and relays `len` bytes (writable: unmasked and masked again in place). Returns the
  // close code and reason for the source on a violation; later calls then do nothing.
  ParseError feed(char* data, size_t len);

  // What was relayed so far ends between frames: a frame may be injected now.
  bool atBoundary() const { return !in_frame_; }
  // A valid close frame arrived; nothing after it is read.
  bool closeSeen() const { return close_seen_; }
  // Valid data messages that ended since the previous call (whatever hooks did with them).
  uint32_t takeMessages() {
    uint32_t n = messages_;
    messages_ = 0;
    return n;
  }
  // zlib memory held now (whole-message mode with compression).
  size_t codecMemory() const;

 private:
  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override;
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override;
  bool onFrameEnd(const FrameHeader& h) override;

  bool inBuffer(const char* p) const { return p >= base_ && p <= base_ + len_; }
  // Streaming: extend the pending run of in-place bytes, or flush it and start a new one.
  bool extendRun(const char* p, size_t n);
  bool flushRun();
  bool fail(ParseError e);
  bool stop();
  bool endControl(const FrameHeader& h);
  bool endMessage();
  bool sendMessage(uint8_t opcode, const std::string& payload);

  FrameParser parser_;
  MessageValidator validator_;
  RelayOutput& out_;
  const Role from_;
  const bool hooks_;                    // relayMessage() sees every message
  const bool whole_messages_;           // messages are assembled (hooks or compression)
  std::unique_ptr<Inflater> inflater_;  // source compresses (upgate's agreement with it)
  std::unique_ptr<Deflater> deflater_;  // destination wants compressed messages

  ParseError error_;
  const char* base_ = nullptr;  // the read being relayed
  size_t len_ = 0;
  const char* run_ = nullptr;  // streaming: start of in-place bytes not yet relayed
  size_t run_len_ = 0;
  char head_[kMaxFrameHeader] = {};  // a data frame header that began in the previous read
  uint8_t head_len_ = 0;
  const char* frame_start_ = nullptr;  // where the current data frame's relayed bytes start
  bool frame_spilled_ = false;         // ...or it started with head_ (a spilled header)
  bool in_frame_ = false;              // a data frame's header was relayed, its end not yet
  bool close_seen_ = false;
  bool stopped_ = false;      // the output said stop, or an error: nothing more is read
  uint32_t messages_ = 0;     // see takeMessages()
  std::string message_;       // whole-message mode: the message being assembled (inflated)
  std::string compressed_;    // whole-message mode: the deflated message
  std::string wire_;          // whole-message mode: the frame being sent
  std::string close_reason_;  // a plugin's close reason (error_.reason points into it)
};

}  // namespace upgate
