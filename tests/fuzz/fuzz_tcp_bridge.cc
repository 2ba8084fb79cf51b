// libFuzzer target: proxy/tcp_bridge (TcpBridge, the relay of tcp routes) driven by a script of
// reads from both sides, time, closes and the upstream's end.
//
// Input: [setup][script...]
//   setup bits 0-1   max_message_size, from kMessageLimits
//   setup bits 2-3   keepalive interval, from kIntervals (0: off); timeout half of it
//   setup bits 4-7   1..15: the owner's write number that fails (the session ended); 0: none
// Script operations, [op] then its bytes; kind = op % 6:
//   0  raw bytes from the client: [len][len bytes] (anything, so parse errors too)
//   1  a frame from the client: [flags][len][len payload bytes]; flags bits 0-2 opcode
//      (continuation, text, binary, close, ping, pong, 0x3, 0xB), bit 3 not fin, bit 4 unmasked,
//      bit 5 RSV1; op bits 3-7 split the frame into two reads at that many bytes (0: one read)
//   2  bytes from the upstream: [len][len bytes]
//   3  time passes: [delta] times 1/10/100 ms (op bits 3-4); due timers fire on the way
//   4  close(code): [code index into kCodes]
//   5  the upstream's FIN (upstreamEnded)
// Every read goes to onData in a heap buffer of exactly its size.
//
// Checked on every run (FUZZ_CHECK aborts):
//   - owner: no write after tunnelEnd or after a failed write; tunnelEnd at most once, with a
//     reason;
//   - the client's byte stream decodes as frames from a server (unmasked, no RSV bits) that a
//     MessageValidator accepts, all whole: binary messages, pongs, pings, and at most one close
//     frame, the last thing written;
//   - the binary payloads, in order, are exactly the upstream's bytes that arrived before the
//     bridge wrote its close frame (or ended), each read one message;
//   - the upstream's byte stream is the data payload bytes a reference FrameParser and
//     MessageValidator accept from the same client reads, up to the client's close frame or its
//     first violation; all of it while the bridge runs, a prefix once it closed or ended;
//   - onTimer at nextDue() makes progress (nextDue() moves past now, or the bridge ends).
// Plus ASan, UBSan and LeakSanitizer on all of it.

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "proxy/tcp_bridge.h"
#include "websocket/close_code.h"
#include "websocket/frame_parser.h"
#include "websocket/frame_writer.h"
#include "websocket/message_validator.h"

using namespace upgate;

namespace {

constexpr uint64_t kMessageLimits[] = {16, 125, 1000, 1 << 20};
constexpr int64_t kIntervals[] = {0, 10, 300, 5000};
constexpr uint16_t kCodes[] = {1000, 1001, 1002, 1008, 1011, 3000, 4999, 1005};
constexpr uint8_t kOpcodes[] = {0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB};
constexpr uint64_t kSteps[] = {1, 10, 100, 100};

class Owner final : public TunnelOwner {
 public:
  explicit Owner(int fail_at) : fail_at_(fail_at) {}
  bool tunnelWrite(bool to_client, const char* data, size_t len) override {
    FUZZ_CHECK(!ended && !failed, "write after the end (ended %d, failed %d)", ended, failed);
    if (++writes_ == fail_at_) {
      failed = true;
      return false;
    }
    (to_client ? client : upstream).append(data, len);
    if (to_client) client_writes.push_back(len);
    return true;
  }
  void tunnelEnd(const std::string& reason) override {
    FUZZ_CHECK(!ended, "tunnelEnd twice");
    FUZZ_CHECK(!reason.empty(), "tunnelEnd without a reason");
    ended = true;
  }
  MessageVerdict tunnelMessage(bool, uint8_t, const std::string&) override { return {}; }

  std::string client, upstream;
  std::vector<size_t> client_writes;
  bool ended = false;
  bool failed = false;

 private:
  int writes_ = 0;
  const int fail_at_;
};

// Collects what a client-side parser accepts: data payload bytes, until close or violation.
class Reference final : public FrameSink {
 public:
  explicit Reference(uint64_t limit) : parser_(Role::Client, {limit}, false), validator_(limit) {}
  void feed(std::string bytes) {
    if (done_) return;
    if (parser_.feed(&bytes[0], bytes.size(), *this)) done_ = true;
  }
  std::string payload;

 private:
  bool onFrameHeader(const FrameHeader& h, const char*, size_t) override {
    if (validator_.onFrameHeader(h)) return stop();
    return true;
  }
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t) override {
    if (validator_.onFramePayload(h, data, len)) return stop();
    if (!isControlOpcode(h.opcode)) payload.append(data, len);
    return true;
  }
  bool onFrameEnd(const FrameHeader& h) override {
    if (validator_.onFrameEnd(h) || h.opcode == opcode::kClose) return stop();
    return true;
  }
  bool stop() {
    done_ = true;
    return false;
  }
  FrameParser parser_;
  MessageValidator validator_;
  bool done_ = false;
};

// What the client received: checks the frames and returns the binary payloads, one per message.
std::vector<std::string> clientFrames(const std::string& wire) {
  struct Sink final : FrameSink {
    explicit Sink(uint64_t l) : validator(l) {}
    bool onFrameHeader(const FrameHeader& h, const char*, size_t) override {
      FUZZ_CHECK(!closed, "a frame after the close frame");
      FUZZ_CHECK(!h.rsv1 && h.fin, "RSV1 or a fragment towards the client");
      FUZZ_CHECK(!validator.onFrameHeader(h), "an invalid frame header towards the client");
      if (h.opcode == opcode::kBinary) binary.emplace_back();
      return true;
    }
    bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t) override {
      FUZZ_CHECK(!validator.onFramePayload(h, data, len), "invalid payload towards the client");
      FUZZ_CHECK(h.opcode != opcode::kText, "a text message towards the client");
      if (h.opcode == opcode::kBinary) binary.back().append(data, len);
      return true;
    }
    bool onFrameEnd(const FrameHeader& h) override {
      FUZZ_CHECK(!validator.onFrameEnd(h), "an invalid frame end towards the client");
      if (h.opcode == opcode::kClose) closed = true;
      return true;
    }
    MessageValidator validator;
    std::vector<std::string> binary;
    bool closed = false;
  };
  // Binary messages are as large as the upstream's reads, not bound by max_message_size.
  Sink sink(UINT64_MAX);
  FrameParser parser(Role::Server, {UINT64_MAX}, false);
  std::string copy = wire;
  ParseError e = parser.feed(copy.data(), copy.size(), sink);
  FUZZ_CHECK(!e, "the client's stream does not parse: %s", e.reason);
  FUZZ_CHECK(parser.atFrameBoundary(), "a partial frame towards the client");
  return sink.binary;
}

bool hasCloseFrame(const std::string& wire) {
  struct Sink final : FrameSink {
    bool onFrameHeader(const FrameHeader& h, const char*, size_t) override {
      if (h.opcode == opcode::kClose) close = true;
      return true;
    }
    bool onFramePayload(const FrameHeader&, char*, size_t, uint64_t) override { return true; }
    bool onFrameEnd(const FrameHeader&) override { return true; }
    bool close = false;
  } sink;
  FrameParser parser(Role::Server, {UINT64_MAX}, false);
  std::string copy = wire;
  parser.feed(copy.data(), copy.size(), sink);
  return sink.close;
}

std::string clientFrame(uint8_t flags, const uint8_t* payload, size_t len) {
  static const uint8_t kKey[4] = {0x37, 0xFA, 0x21, 0x3D};
  const bool masked = (flags & 0x10) == 0;
  char head[kMaxFrameHeader];
  size_t n = writeFrameHeader(head, kOpcodes[flags & 7], (flags & 8) == 0, (flags & 0x20) != 0, len,
                              masked ? kKey : nullptr);
  std::string out(head, n);
  std::string body(reinterpret_cast<const char*>(payload), len);
  if (masked && len > 0) maskPayload(&body[0], body.size(), kKey);
  return out + body;
}

void read(TcpBridge& b, bool from_client, const std::string& bytes, uint64_t now) {
  // An exactly sized heap buffer, so ASan sees any read past its end.
  std::unique_ptr<char[]> buf(new char[bytes.size() + (bytes.empty() ? 1 : 0)]);
  std::copy(bytes.begin(), bytes.end(), buf.get());
  b.onData(from_client, buf.get(), bytes.size(), now);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("fuzz", std::make_shared<spdlog::sinks::null_sink_mt>()));
    return true;
  }();
  (void)quiet;
  if (size < 1) return 0;
  const uint8_t setup_byte = data[0];
  TunnelSetup setup;
  setup.max_message_size = kMessageLimits[setup_byte & 3];
  setup.keepalive.interval = Millis(kIntervals[(setup_byte >> 2) & 3]);
  setup.keepalive.timeout = Millis(kIntervals[(setup_byte >> 2) & 3] / 2 + 1);
  setup.close_timeout_ms = 100;
  Owner owner(setup_byte >> 4);
  uint64_t now = 1000;
  TcpBridge bridge(owner, setup, now);
  Reference reference(setup.max_message_size);
  std::string upstream_sent;  // the upstream's bytes before the bridge closed towards the client

  size_t i = 1;
  auto take = [&](size_t n) {
    n = std::min(n, size - i);
    std::string s(reinterpret_cast<const char*>(data + i), n);
    i += n;
    return s;
  };
  while (i < size && !owner.ended && !owner.failed) {
    const uint8_t op = data[i++];
    switch (op % 6) {
      case 0:
      case 1: {
        std::string wire;
        if (op % 6 == 0) {
          wire = take(i < size ? data[i++] : 0);
        } else {
          if (i + 2 > size) return 0;
          uint8_t flags = data[i++];
          size_t len = data[i++];
          std::string payload = take(len);
          wire =
              clientFrame(flags, reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
        }
        const size_t split = std::min<size_t>(op >> 3, wire.size());
        for (const std::string& part :
             split == 0 ? std::vector<std::string>{wire}
                        : std::vector<std::string>{wire.substr(0, split), wire.substr(split)}) {
          reference.feed(part);
          read(bridge, true, part, now);
          if (owner.ended || owner.failed) break;
        }
        break;
      }
      case 2: {
        std::string bytes = take(i < size ? data[i++] : 0);
        if (bytes.empty()) break;
        if (!hasCloseFrame(owner.client)) upstream_sent += bytes;
        read(bridge, false, bytes, now);
        break;
      }
      case 3: {
        uint64_t delta = (i < size ? data[i++] : 0) * kSteps[(op >> 3) & 3];
        const uint64_t until = now + delta;
        for (int guard = 0; !owner.ended && !owner.failed; ++guard) {
          uint64_t due = bridge.nextDue();
          if (due > until) break;
          FUZZ_CHECK(guard < 16, "onTimer makes no progress at %llu (due %llu)",
                     static_cast<unsigned long long>(now), static_cast<unsigned long long>(due));
          now = std::max(now, due);
          bridge.onTimer(now);
        }
        now = std::max(now, until);
        break;
      }
      case 4:
        bridge.close(kCodes[(i < size ? data[i++] : 0) % 8], "fuzz", now);
        break;
      case 5:
        bridge.upstreamEnded(now);
        break;
    }
  }

  std::vector<std::string> messages = clientFrames(owner.client);
  std::string delivered;
  for (const std::string& m : messages) delivered += m;
  if (owner.failed || owner.ended || hasCloseFrame(owner.client)) {
    FUZZ_CHECK(upstream_sent.compare(0, delivered.size(), delivered) == 0,
               "the client got upstream bytes that were not sent (%zu of %zu)", delivered.size(),
               upstream_sent.size());
    FUZZ_CHECK(reference.payload.compare(0, owner.upstream.size(), owner.upstream) == 0,
               "the upstream got bytes the client did not send validly");
  } else {
    FUZZ_CHECK(delivered == upstream_sent, "upstream bytes lost or changed on the way (%zu, %zu)",
               delivered.size(), upstream_sent.size());
    FUZZ_CHECK(owner.upstream == reference.payload,
               "client payload bytes lost or changed on the way (%zu, %zu)", owner.upstream.size(),
               reference.payload.size());
  }
  return 0;
}
