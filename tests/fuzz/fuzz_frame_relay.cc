// libFuzzer target: proxy/tunnel (Tunnel) and, in frames mode, proxy/frame_relay (FrameRelay),
// with websocket/deflate's codecs on the legs upgate compresses itself.
//
// Input: [5 setup bytes][script...]; the fake owner's on_message verdicts are taken from the end
// of the input, one byte per message (PASS once the script reaches them).
//   setup[0] bit 0     mode: frames (else passthrough)
//   setup[0] bits 1-2  frames: per-leg permessage-deflate: none, client, upstream, both
//   setup[0] bit 3     frames: message hooks (the owner's tunnelMessage sees every message)
//   setup[0] bit 4     frames: keepalive peer_pings answer (else forward)
//   setup[0] bit 5     the peers agreed permessage-deflate end to end (when upgate compresses
//                      no leg and runs no hooks, as Session sets it up)
//   setup[0] bits 6-7  keepalive interval, from kIntervals (0: off)
//   setup[1], [2]      the client's and the upstream's agreement: bit 0 server_no_context_
//                      takeover, bit 1 client_no_context_takeover, bits 2-4 and 5-7 server_ and
//                      client_max_window_bits - 8
//   setup[3]           bits 0-2 max_message_size (kMessageLimits), bits 3-4 keepalive timeout
//                      (kPingTimeouts), bits 5-6 timeouts.close (kCloseTimeouts)
//   setup[4]           1..63: the owner's write number setup[4] fails (the session ended)
// Script operations, [op] then its bytes; kind = op & 7:
//   0, 1   raw bytes from the client / the upstream: [len][split][len bytes]
//   2, 6   a frame from the client; 3, 7 from the upstream: [flags][len][split][payload]
//            flags bits 0-2 opcode (continuation, text, binary, close, ping, pong, 0x3, 0xB);
//            bit 3 not fin; bit 4 flips RSV1; bit 5 compress a data frame's payload with the
//            sender's Deflater (RSV1 on a message's first frame); bit 6 flips the mask bit; bit 7
//            zero key.
//            len < 0xF0: that many payload bytes from the script; else (len - 0xEF) * 5000 bytes
//            of text (while the per-input budget lasts)
//   4      time passes: [delta] times 1/10/100/1000 ms (op bits 3-4); due timers fire on the way,
//          as the owner's timer would; op bit 5 fires onTimer once more at the end (the owner's
//          timer also serves the idle and half-close deadlines)
//   5      close(code, reason): [code index][reason: bits 0-6 length, op bits 3-7 characters]
// Every read goes to onData in a heap buffer of exactly its size; split picks the read sizes.
//
// Checked on every run (FUZZ_CHECK aborts):
//   - owner: no write, message or tunnelEnd after tunnelEnd or after a failed write; tunnelEnd
//     once, with a reason; ended() agrees; the owner's timer never fires more than a few times
//     at one instant (nextDue() moves past now once onTimer ran);
//   - each leg's byte stream decodes with FrameParser (frames to the client unmasked, to the
//     upstream masked; RSV1 only where a compression agreement allows it) and passes a
//     MessageValidator (fragmentation, close payloads, UTF-8 of text messages and close reasons),
//     up to a frame boundary or an incomplete last frame; RSV1 messages towards a leg upgate
//     compresses inflate with an Inflater on the agreed channel (window, no_context_takeover);
//   - nothing is written to a leg after a close frame was written to it;
//   - firstClose(): once a leg received a close frame, it names who closed first; it names a
//     peer only after that peer sent a close frame (or bytes that are no valid stream), with the
//     code of that frame;
//   - hooks: tunnelMessage sees only complete text (valid UTF-8) or binary messages within
//     max_message_size;
//   - every data message a leg receives (inflated if upgate compresses it) is the next one the
//     hook passed or rewrote for it, or without hooks the next valid one the other peer sent
//     (inflated if upgate agreed compression with that peer), same opcode and payload;
//   - passthrough relays bytes unchecked, so a leg is checked only while what its peer sent is
//     valid by the same rules (a frame after the peer's close frame, in the same read, counts as
//     invalid; later reads are not relayed).
// Plus ASan, UBSan and LeakSanitizer on all of it.

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "fuzz_check.h"
#include "proxy/tunnel.h"
#include "websocket/deflate.h"
#include "websocket/extensions.h"
#include "websocket/frame_parser.h"
#include "websocket/message_validator.h"
#include "websocket/utf8.h"

namespace {

using upgate::DeflateAgreement;
using upgate::DeflateChannel;
using upgate::Deflater;
using upgate::FrameHeader;
using upgate::FrameParser;
using upgate::Inflater;
using upgate::MessageValidator;
using upgate::MessageVerdict;
using upgate::ParseError;
using upgate::Role;
using upgate::Tunnel;
using upgate::TunnelSetup;

constexpr uint64_t kStart = 1000000;  // the owner's clock starts here (a loop's uv_now)
constexpr uint64_t kIntervals[4] = {0, 50, 1000, 30000};
constexpr uint64_t kPingTimeouts[4] = {1, 20, 1000, 10000};
constexpr uint64_t kCloseTimeouts[4] = {1, 100, 1000, 5000};
constexpr uint64_t kMessageLimits[8] = {125, 126, 200, 1000, 4096, 65536, 1 << 20, 16 << 20};
constexpr uint16_t kCloseCodes[8] = {1000, 1001, 1008, 1011, 1012, 3000, 4000, 4999};
constexpr uint8_t kOpcodes[8] = {0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB};
constexpr size_t kChunkMax[8] = {0, 1, 2, 3, 7, 16, 100, 1500};  // 0: the whole piece
constexpr size_t kByteBudget = 1 << 20;  // generated frame and rewrite bytes per input
constexpr size_t kTimerFiresPerInstant = 8;
constexpr uint64_t kCheckLimit = uint64_t{1} << 30;  // the checkers' frame and message limits

using fuzz::Rng;

const char* legName(bool client) {
  return client ? "client" : "upstream";
}

// Valid UTF-8 of about `len` bytes (at most 3 more), its characters picked by `kind`, so a cut
// at any byte count may fall inside a character.
std::string utf8Text(size_t len, unsigned kind) {
  static const char* const kChars[4] = {"a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9D\x84\x9E"};
  std::string s;
  unsigned k = kind;
  while (s.size() < len) {
    s += kChars[k % 4];
    k = (kind & 0x10) != 0 ? k + 1 : k;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// One byte stream as a peer reads it: FrameParser, MessageValidator, and an Inflater when the
// stream's sender compresses under an agreement. strict: a violation is a finding (a leg's
// output); else it only marks the stream invalid (what a peer sent, in passthrough).

class StreamChecker final : public upgate::FrameSink {
 public:
  StreamChecker(std::string name, Role sender, bool allow_rsv1,
                std::optional<DeflateChannel> inflate, bool strict)
      : name_(std::move(name)),
        parser_(sender, FrameParser::Limits{kCheckLimit}, allow_rsv1),
        validator_(kCheckLimit),
        strict_(strict) {
    if (inflate) {
      inflater_ = std::make_unique<Inflater>(*inflate);
    }
  }

  // Stops checking (passthrough: the peer's own bytes are invalid from here on).
  void disable() { enabled_ = false; }
  bool enabled() const { return enabled_; }
  bool closed() const { return closed_; }
  bool invalid() const { return invalid_; }
  // Once closed(): the close frame's code (1005 without one).
  uint16_t closeCode() const { return close_code_; }

  // Data messages the leg must receive, in order, as far as it receives any.
  void expect(uint8_t opcode, std::string payload) {
    expected_.emplace_back(opcode, std::move(payload));
  }
  void compareMessages() { compare_ = true; }
  // A peer's stream: each valid data message it completes is expected by `leg`.
  void forwardTo(StreamChecker* leg) { forward_ = leg; }

  void feed(const char* data, size_t len) {
    if (!enabled_ || invalid_ || len == 0) {
      return;
    }
    if (closed_) {
      violation("%zu bytes after the close frame", len);
      return;
    }
    // The parser unmasks in place: a copy, in a buffer of exactly this size.
    std::unique_ptr<char[]> buf(new char[len]);
    std::memcpy(buf.get(), data, len);
    const ParseError e = parser_.feed(buf.get(), len, *this);
    if (invalid_) {
      return;
    }
    if (e) {
      violation("frame error %u (%s) at byte %zu of a %zu-byte write", e.code, e.reason,
                parser_.consumed(), len);
      return;
    }
    if (parser_.consumed() != len) {
      FUZZ_CHECK(closed_, "%s: parser stopped without a close frame", name_.c_str());
      violation("%zu bytes after the close frame in the same write", len - parser_.consumed());
    }
  }

 private:
  __attribute__((format(printf, 2, 3))) void violation(const char* fmt, ...) {
    if (strict_) {
      char msg[256];
      va_list args;
      va_start(args, fmt);
      std::vsnprintf(msg, sizeof msg, fmt, args);
      va_end(args);
      FUZZ_CHECK(false, "%s: %s", name_.c_str(), msg);
    }
    invalid_ = true;
  }

  bool check(ParseError e, const char* where) {
    if (e) {
      violation("%s: %u (%s), frame %zu", where, e.code, e.reason, frames_);
      return false;
    }
    return true;
  }

  bool inflating() const { return inflater_ != nullptr && validator_.messageCompressed(); }

  bool inflate(const char* data, size_t len, bool end) {
    const size_t before = message_.size();
    const upgate::CodecStatus s = inflater_->decompress(data, len, end, kCheckLimit, &message_);
    if (s != upgate::CodecStatus::Ok) {
      violation("compressed message %zu does not inflate: %s", messages_,
                upgate::codecStatusName(s));
      return false;
    }
    return check(validator_.onInflatedPayload(message_.data() + before, message_.size() - before),
                 "inflated payload");
  }

  bool onFrameHeader(const FrameHeader& h, const char*, size_t) override {
    ++frames_;
    return check(validator_.onFrameHeader(h), "header");
  }

  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t) override {
    if (!check(validator_.onFramePayload(h, data, len), "payload")) {
      return false;
    }
    if (upgate::isControlOpcode(h.opcode)) {
      return true;
    }
    if (inflating()) {
      return inflate(data, len, false);
    }
    if (compare_ || forward_ != nullptr) {
      message_.append(data, len);
    }
    return true;
  }

  bool onFrameEnd(const FrameHeader& h) override {
    const bool data = !upgate::isControlOpcode(h.opcode);
    if (data && h.fin && inflating() && !inflate(nullptr, 0, true)) {
      return false;
    }
    if (!check(validator_.onFrameEnd(h), "frame end")) {
      return false;
    }
    if (h.opcode == upgate::opcode::kClose) {
      closed_ = true;
      close_code_ = validator_.closeCode();
      return false;  // nothing may follow
    }
    if (!data || !h.fin) {
      return true;
    }
    ++messages_;
    if (compare_) {
      FUZZ_CHECK(!expected_.empty(),
                 "%s: data message %zu (opcode %u, %zu bytes) that was not sent or passed",
                 name_.c_str(), messages_, validator_.messageOpcode(), message_.size());
      const auto& want = expected_.front();
      FUZZ_CHECK(want.first == validator_.messageOpcode() && want.second == message_,
                 "%s: data message %zu is opcode %u with %zu bytes; expected opcode %u with %zu "
                 "bytes%s",
                 name_.c_str(), messages_, validator_.messageOpcode(), message_.size(), want.first,
                 want.second.size(), want.second.size() == message_.size() ? " (differing)" : "");
      expected_.pop_front();
    }
    if (forward_ != nullptr) {
      forward_->expect(validator_.messageOpcode(), message_);
    }
    message_.clear();
    if (inflater_) {
      inflater_->release();
    }
    return true;
  }

  std::string name_;
  FrameParser parser_;
  MessageValidator validator_;
  std::unique_ptr<Inflater> inflater_;
  const bool strict_;
  bool enabled_ = true;
  bool invalid_ = false;
  bool closed_ = false;
  uint16_t close_code_ = 0;
  bool compare_ = false;
  StreamChecker* forward_ = nullptr;
  size_t frames_ = 0;
  size_t messages_ = 0;
  std::string message_;
  std::deque<std::pair<uint8_t, std::string>> expected_;
};

// ---------------------------------------------------------------------------------------------
// The script: operations from the front, verdicts from the back.

class Script {
 public:
  Script(const uint8_t* data, size_t size) : data_(data), head_(0), tail_(size) {}
  bool more() const { return head_ < tail_; }
  uint8_t byte() { return head_ < tail_ ? data_[head_++] : 0; }
  // Up to n bytes from the front.
  std::string bytes(size_t n) {
    n = std::min(n, tail_ - head_);
    std::string s(reinterpret_cast<const char*>(data_ + head_), n);
    head_ += n;
    return s;
  }
  // A byte from the back, or nullopt once the two ends met.
  std::optional<uint8_t> verdictByte() {
    if (tail_ > head_) {
      return data_[--tail_];
    }
    return std::nullopt;
  }

 private:
  const uint8_t* data_;
  size_t head_;
  size_t tail_;
};

struct Setup {
  TunnelSetup tunnel;
  bool frames = false;
  unsigned write_fail_at = 0;
};

Setup parseSetup(const uint8_t* s) {
  Setup out;
  TunnelSetup& t = out.tunnel;
  out.frames = (s[0] & 0x01) != 0;
  t.mode = out.frames ? upgate::TunnelMode::Frames : upgate::TunnelMode::Passthrough;
  auto agreement = [](uint8_t b) {
    DeflateAgreement a;
    a.server_no_context_takeover = (b & 0x01) != 0;
    a.client_no_context_takeover = (b & 0x02) != 0;
    a.server_max_window_bits = static_cast<uint8_t>(8 + ((b >> 2) & 0x7));
    a.client_max_window_bits = static_cast<uint8_t>(8 + ((b >> 5) & 0x7));
    return a;
  };
  if (out.frames) {
    const unsigned legs = (s[0] >> 1) & 0x3;
    if ((legs & 1) != 0) {
      t.client_deflate = agreement(s[1]);
    }
    if ((legs & 2) != 0) {
      t.upstream_deflate = agreement(s[2]);
    }
    t.message_hooks = (s[0] & 0x08) != 0;
    if ((s[0] & 0x10) != 0) {
      t.keepalive.peer_pings = upgate::PeerPings::Answer;
    }
  }
  // Session: end to end only when upgate terminates no extension (no compression, no hooks).
  t.end_to_end_deflate =
      (s[0] & 0x20) != 0 && !t.client_deflate && !t.upstream_deflate && !t.message_hooks;
  t.keepalive.interval = upgate::Millis(kIntervals[s[0] >> 6]);
  t.keepalive.timeout = upgate::Millis(kPingTimeouts[(s[3] >> 3) & 0x3]);
  t.max_message_size = kMessageLimits[s[3] & 0x7];
  t.close_timeout_ms = kCloseTimeouts[(s[3] >> 5) & 0x3];
  t.session_id = 7;
  out.write_fail_at = s[4] >= 1 && s[4] <= 63 ? s[4] : 0;
  return out;
}

// ---------------------------------------------------------------------------------------------
// The fake owner (the Session's side of the tunnel) and the driver.

class Harness final : public upgate::TunnelOwner {
 public:
  Harness(const Setup& setup, Script& script)
      : setup_(setup),
        script_(script),
        to_client_("towards the client", Role::Server,
                   setup.tunnel.end_to_end_deflate || setup.tunnel.client_deflate.has_value(),
                   channel(setup.tunnel.client_deflate, Role::Server), true),
        to_upstream_("towards the upstream", Role::Client,
                     setup.tunnel.end_to_end_deflate || setup.tunnel.upstream_deflate.has_value(),
                     channel(setup.tunnel.upstream_deflate, Role::Client), true),
        from_client_("from the client", Role::Client,
                     setup.tunnel.end_to_end_deflate || setup.tunnel.client_deflate.has_value(),
                     channel(setup.tunnel.client_deflate, Role::Client), false),
        from_upstream_("from the upstream", Role::Server,
                       setup.tunnel.end_to_end_deflate || setup.tunnel.upstream_deflate.has_value(),
                       channel(setup.tunnel.upstream_deflate, Role::Server), false) {
    // The peers' compressors, for the frames the script builds.
    client_deflater_ = std::make_unique<Deflater>(
        channel(setup.tunnel.client_deflate, Role::Client).value_or(DeflateChannel{}));
    upstream_deflater_ = std::make_unique<Deflater>(
        channel(setup.tunnel.upstream_deflate, Role::Server).value_or(DeflateChannel{}));
    // What each leg receives is what the hook passed, or else what the other peer sent.
    to_client_.compareMessages();
    to_upstream_.compareMessages();
    if (!setup.tunnel.message_hooks) {
      from_client_.forwardTo(&to_upstream_);
      from_upstream_.forwardTo(&to_client_);
    }
    tunnel_ = std::make_unique<Tunnel>(*this, setup.tunnel, now_);
  }

  void run() {
    while (script_.more() && !tunnel_->ended()) {
      const uint8_t op = script_.byte();
      switch (op & 7) {
        case 0:
        case 1: {
          const size_t len = script_.byte();
          const uint8_t split = script_.byte();
          deliver((op & 7) == 0, script_.bytes(len), split);
          break;
        }
        case 2:
        case 6:
          sendFrame(true);
          break;
        case 3:
        case 7:
          sendFrame(false);
          break;
        case 4: {
          static constexpr uint64_t kUnit[4] = {1, 10, 100, 1000};
          advance(script_.byte() * kUnit[(op >> 3) & 0x3], (op & 0x20) != 0);
          break;
        }
        case 5: {
          const uint8_t c = script_.byte();
          const uint8_t r = script_.byte();
          const std::string reason = utf8Text(r & 0x7F, op >> 3);
          tunnel_->close(kCloseCodes[c & 7], reason, now_);
          afterCall();
          break;
        }
      }
    }
  }

  // ---- TunnelOwner ----

  bool tunnelWrite(bool to_client, const char* data, size_t len) override {
    FUZZ_CHECK(!ended_, "%zu bytes written to the %s after tunnelEnd", len, legName(to_client));
    FUZZ_CHECK(!write_failed_, "%zu bytes written to the %s after a failed write", len,
               legName(to_client));
    ++writes_;
    if (writes_ == setup_.write_fail_at) {
      write_failed_ = true;
      return false;
    }
    (to_client ? to_client_ : to_upstream_).feed(data, len);
    return true;
  }

  void tunnelEnd(const std::string& reason) override {
    FUZZ_CHECK(!ended_, "tunnelEnd called twice (now: %s)", reason.c_str());
    FUZZ_CHECK(!write_failed_, "tunnelEnd after a failed write (%s)", reason.c_str());
    FUZZ_CHECK(!reason.empty(), "tunnelEnd without a reason");
    ended_ = true;
  }

  MessageVerdict tunnelMessage(bool from_client, uint8_t opcode,
                               const std::string& payload) override {
    FUZZ_CHECK(!ended_ && !write_failed_, "tunnelMessage after the tunnel ended");
    FUZZ_CHECK(setup_.tunnel.message_hooks, "tunnelMessage without message hooks");
    FUZZ_CHECK(opcode == upgate::opcode::kText || opcode == upgate::opcode::kBinary,
               "tunnelMessage with opcode %u", opcode);
    FUZZ_CHECK(payload.size() <= setup_.tunnel.max_message_size,
               "tunnelMessage: %zu bytes, max_message_size %llu", payload.size(),
               static_cast<unsigned long long>(setup_.tunnel.max_message_size));
    FUZZ_CHECK(opcode != upgate::opcode::kText || upgate::isValidUtf8(payload),
               "tunnelMessage: a text message from the %s that is not UTF-8", legName(from_client));
    StreamChecker& dst = from_client ? to_upstream_ : to_client_;
    MessageVerdict v;
    const uint8_t b = script_.verdictByte().value_or(0);
    switch (b & 3) {
      case 0:
        v.action = UPGATE_MESSAGE_PASS;
        dst.expect(opcode, payload);
        break;
      case 1:
        v.action = UPGATE_MESSAGE_DROP;
        break;
      case 2:
        v.action = UPGATE_MESSAGE_REWRITE;
        v.opcode = (b & 0x04) != 0 ? upgate::opcode::kBinary : upgate::opcode::kText;
        switch ((b >> 3) & 3) {
          case 0:
            break;
          case 1:
            v.payload = payload + "+";
            break;
          case 2:
            v.payload = std::string(spend(70000), 'r');
            break;
          case 3:
            v.payload =
                "r\xC3\xA9\xC3\xA9"
                "crit \xE2\x82\xAC";
            break;
        }
        if (v.opcode == upgate::opcode::kText && !upgate::isValidUtf8(v.payload)) {
          v.payload = "rewritten";
        }
        dst.expect(v.opcode, v.payload);
        break;
      case 3:
        // What PluginChain hands on: a valid code and at most 123 bytes of reason.
        v.action = UPGATE_MESSAGE_CLOSE;
        v.close_code = kCloseCodes[(b >> 2) & 7];
        if ((b & 0x20) != 0) {
          v.close_reason = utf8Text(b >> 6 == 3 ? 120 : 20 * (b >> 6), b >> 2);
        }
        break;
    }
    return v;
  }

 private:
  static std::optional<DeflateChannel> channel(const std::optional<DeflateAgreement>& a,
                                               Role sender) {
    if (!a) {
      return std::nullopt;
    }
    return upgate::channelFor(*a, sender);
  }

  // Takes up to `n` bytes of the per-input budget.
  size_t spend(size_t n) {
    n = std::min(n, kByteBudget - spent_);
    spent_ += n;
    return n;
  }

  // After every call into the tunnel, what the Session does: re-arm, and fire its timer at once
  // when the tunnel is already due.
  void afterCall() {
    const bool ended = ended_ || write_failed_;
    FUZZ_CHECK(tunnel_->ended() == ended, "ended() %d; the owner saw tunnelEnd %d, failed write %d",
               tunnel_->ended(), ended_, write_failed_);
    checkFirstClose();
    tunnel_->takeRearm();
    fireDue(now_);
  }

  void checkFirstClose() {
    const upgate::FirstClose fc = tunnel_->firstClose();
    FUZZ_CHECK(
        fc.by != upgate::CloseOrigin::None || (!to_client_.closed() && !to_upstream_.closed()),
        "a leg received a close frame, but firstClose() names nobody");
    for (bool client : {true, false}) {
      if (fc.by != (client ? upgate::CloseOrigin::Client : upgate::CloseOrigin::Upstream)) {
        continue;
      }
      const StreamChecker& sent = client ? from_client_ : from_upstream_;
      if (sent.invalid()) {
        continue;  // passthrough relays anything: what it took for a close frame is unknown
      }
      FUZZ_CHECK(sent.closed(), "firstClose() names the %s, which sent no close frame",
                 client ? "client" : "upstream");
      FUZZ_CHECK(fc.code == sent.closeCode(), "firstClose() code %u; the %s sent %u", fc.code,
                 client ? "client" : "upstream", sent.closeCode());
    }
  }

  // Fires the owner's timer for every due time up to `until`; the time stands still while the
  // tunnel is due at that instant, so it must stop being due after a few fires.
  void fireDue(uint64_t until) {
    size_t same = 0;
    while (!tunnel_->ended() && tunnel_->nextDue() <= until) {
      const uint64_t due = std::max(now_, tunnel_->nextDue());
      same = due == now_ ? same + 1 : 1;
      FUZZ_CHECK(same <= kTimerFiresPerInstant,
                 "nextDue() stays at %llu after %zu onTimer calls at that time",
                 static_cast<unsigned long long>(due), same - 1);
      now_ = due;
      tunnel_->onTimer(now_);
      const bool ended = ended_ || write_failed_;
      FUZZ_CHECK(tunnel_->ended() == ended, "ended() %d after onTimer; the owner saw %d/%d",
                 tunnel_->ended(), ended_, write_failed_);
      tunnel_->takeRearm();
    }
  }

  void advance(uint64_t delta, bool extra_fire) {
    const uint64_t until = now_ + delta;
    fireDue(until);
    now_ = until;
    if (extra_fire && !tunnel_->ended()) {
      tunnel_->onTimer(now_);
      afterCall();
    }
  }

  // Hands `bytes` from one peer to the tunnel in reads whose sizes `split` picks.
  void deliver(bool from_client, const std::string& bytes, uint8_t split) {
    const size_t max = kChunkMax[split & 7];
    Rng rng(split >> 3);
    size_t pos = 0;
    while (pos < bytes.size() && !tunnel_->ended()) {
      size_t n = bytes.size() - pos;
      if (max != 0) {
        n = std::min(n, 1 + rng.below(max));
      }
      std::unique_ptr<char[]> buf(new char[n]);
      std::memcpy(buf.get(), bytes.data() + pos, n);
      // The peer's stream as sent, for the messages the other leg must receive. Passthrough
      // relays it unchecked: the other leg is checked only while it is valid.
      StreamChecker& src = from_client ? from_client_ : from_upstream_;
      if (!src.closed()) {
        src.feed(buf.get(), n);
        if (src.invalid() && !setup_.frames) {
          (from_client ? to_upstream_ : to_client_).disable();
        }
      }
      tunnel_->onData(from_client, buf.get(), n, now_);
      pos += n;
      afterCall();
    }
  }

  void sendFrame(bool from_client) {
    const uint8_t flags = script_.byte();
    const uint8_t len = script_.byte();
    const uint8_t split = script_.byte();
    const uint8_t op = kOpcodes[flags & 7];
    const bool fin = (flags & 0x08) == 0;
    const bool data = !upgate::isControlOpcode(op);
    const bool compress = (flags & 0x20) != 0 && data;
    std::string payload;
    if (len < 0xF0) {
      payload = script_.bytes(len);
    } else {
      const size_t n = spend((len - 0xEFu) * 5000u);
      payload = n != 0 ? utf8Text(n, len) : script_.bytes(len - 0xEFu);
    }
    bool rsv1 = (flags & 0x10) != 0;
    if (compress) {
      Deflater& d = from_client ? *client_deflater_ : *upstream_deflater_;
      std::string out;
      if (d.compress(payload.data(), payload.size(), fin, &out) == upgate::CodecStatus::Ok) {
        payload.swap(out);
      }
      rsv1 = rsv1 != (op != upgate::opcode::kContinuation);
    }
    const bool masked = from_client != ((flags & 0x40) != 0);
    const uint8_t key[4] = {static_cast<uint8_t>((flags & 0x80) != 0 ? 0 : 0x37 ^ split),
                            static_cast<uint8_t>((flags & 0x80) != 0 ? 0 : 0xFA),
                            static_cast<uint8_t>((flags & 0x80) != 0 ? 0 : 0x21 ^ len),
                            static_cast<uint8_t>((flags & 0x80) != 0 ? 0 : 0x3D)};
    std::string frame;
    frame.push_back(static_cast<char>((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | op));
    const uint8_t m = masked ? 0x80 : 0;
    const uint64_t n = payload.size();
    if (n < 126) {
      frame.push_back(static_cast<char>(m | n));
    } else if (n <= 0xFFFF) {
      frame.push_back(static_cast<char>(m | 126));
      frame.push_back(static_cast<char>(n >> 8));
      frame.push_back(static_cast<char>(n & 0xFF));
    } else {
      frame.push_back(static_cast<char>(m | 127));
      for (int shift = 56; shift >= 0; shift -= 8) {
        frame.push_back(static_cast<char>((n >> shift) & 0xFF));
      }
    }
    if (masked) {
      frame.append(reinterpret_cast<const char*>(key), 4);
      for (size_t i = 0; i < payload.size(); ++i) {
        payload[i] = static_cast<char>(payload[i] ^ key[i % 4]);
      }
    }
    frame += payload;
    deliver(from_client, frame, split);
  }

  const Setup& setup_;
  Script& script_;
  StreamChecker to_client_;    // what the client receives
  StreamChecker to_upstream_;  // what the upstream receives
  StreamChecker from_client_;  // passthrough: what the client sent
  StreamChecker from_upstream_;
  std::unique_ptr<Deflater> client_deflater_;
  std::unique_ptr<Deflater> upstream_deflater_;
  std::unique_ptr<Tunnel> tunnel_;
  uint64_t now_ = kStart;
  size_t spent_ = 0;
  unsigned writes_ = 0;
  bool write_failed_ = false;
  bool ended_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Tunnel logs violations at info: format them (UBSan sees the arguments), print nothing.
  auto logger =
      std::make_shared<spdlog::logger>("upgate", std::make_shared<spdlog::sinks::null_sink_mt>());
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::debug);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) {
    return 0;
  }
  const Setup setup = parseSetup(data);
  Script script(data + 5, size - 5);
  Harness h(setup, script);
  h.run();
  return 0;
}
