#include "websocket/frame_writer.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "websocket/close_code.h"
#include "websocket/message_validator.h"

namespace upgate {
namespace {

std::string bytes(std::initializer_list<int> list) {
  std::string s;
  for (int b : list) {
    s.push_back(static_cast<char>(b));
  }
  return s;
}

std::string header(uint8_t op, bool fin, bool rsv1, uint64_t len, const uint8_t* mask) {
  char buf[kMaxFrameHeader];
  const size_t n = writeFrameHeader(buf, op, fin, rsv1, len, mask);
  return std::string(buf, n);
}

// Parses whole frames and keeps the last one.
struct OneFrame : FrameSink {
  FrameHeader last;
  std::string payload;
  int frames = 0;
  bool onFrameHeader(const FrameHeader& hdr, const char*, size_t) override {
    last = hdr;
    payload.clear();
    return true;
  }
  bool onFramePayload(const FrameHeader&, char* data, size_t len, uint64_t) override {
    payload.append(data, len);
    return true;
  }
  bool onFrameEnd(const FrameHeader&) override {
    ++frames;
    return true;
  }
};

const uint8_t kRfcMask[4] = {0x37, 0xFA, 0x21, 0x3D};

TEST_CASE("frame_writer: RFC 6455 §5.7 examples", "[websocket]") {
  // A single-frame unmasked text message.
  CHECK(header(opcode::kText, true, false, 5, nullptr) + "Hello" ==
        bytes({0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}));
  // A single-frame masked text message.
  std::string masked = "Hello";
  maskPayload(&masked[0], masked.size(), kRfcMask);
  CHECK(header(opcode::kText, true, false, 5, kRfcMask) + masked ==
        bytes({0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}));
  // A fragmented unmasked text message.
  CHECK(header(opcode::kText, false, false, 3, nullptr) + "Hel" ==
        bytes({0x01, 0x03, 0x48, 0x65, 0x6c}));
  CHECK(header(opcode::kContinuation, true, false, 2, nullptr) + "lo" ==
        bytes({0x80, 0x02, 0x6c, 0x6f}));
  // Unmasked ping and masked pong.
  char frame[kMaxControlFrame];
  size_t n = writeControlFrame(frame, opcode::kPing, "Hello", nullptr);
  CHECK(std::string(frame, n) == bytes({0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}));
  n = writeControlFrame(frame, opcode::kPong, "Hello", kRfcMask);
  CHECK(std::string(frame, n) ==
        bytes({0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}));
  // 256 bytes and 64 KiB binary messages in a single unmasked frame.
  CHECK(header(opcode::kBinary, true, false, 256, nullptr) == bytes({0x82, 0x7E, 0x01, 0x00}));
  CHECK(header(opcode::kBinary, true, false, 65536, nullptr) ==
        bytes({0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00}));
}

TEST_CASE("frame_writer: header lengths and bits", "[websocket]") {
  const uint8_t key[4] = {1, 2, 3, 4};
  CHECK(header(opcode::kBinary, true, false, 0, nullptr).size() == 2);
  CHECK(header(opcode::kBinary, true, false, 125, nullptr).size() == 2);
  CHECK(header(opcode::kBinary, true, false, 126, nullptr).size() == 4);
  CHECK(header(opcode::kBinary, true, false, 0xFFFF, nullptr).size() == 4);
  CHECK(header(opcode::kBinary, true, false, 0x10000, nullptr).size() == 10);
  CHECK(header(opcode::kBinary, true, false, uint64_t{1} << 62, key).size() == 14);
  const std::string h = header(opcode::kText, false, true, 3, key);
  CHECK(h == bytes({0x41, 0x83, 1, 2, 3, 4}));
}

TEST_CASE("frame_writer: frames round-trip through the parser", "[websocket]") {
  const bool masked = GENERATE(true, false);
  const size_t len = GENERATE(0, 1, 5, 125, 126, 127, 1000, 0xFFFF, 0x10000, 100001);
  const bool rsv1 = GENERATE(false, true);
  std::string payload(len, '\0');
  for (size_t i = 0; i < len; ++i) {
    payload[i] = static_cast<char>(i * 13 + 7);
  }
  uint8_t key[4];
  maskingKey(key);
  std::string wire = header(opcode::kBinary, true, rsv1, len, masked ? key : nullptr);
  const size_t hlen = wire.size();
  wire += payload;
  if (masked) {
    // In two pieces, to use the offset argument.
    maskPayload(&wire[hlen], len / 3, key, 0);
    maskPayload(&wire[hlen + len / 3], len - len / 3, key, len / 3);
  }
  FrameParser parser(masked ? Role::Client : Role::Server, {}, true);
  OneFrame sink;
  REQUIRE(parser.feed(&wire[0], wire.size(), sink).code == 0);
  CHECK(sink.frames == 1);
  CHECK(sink.last.fin);
  CHECK(sink.last.rsv1 == rsv1);
  CHECK(sink.last.opcode == opcode::kBinary);
  CHECK(sink.last.masked == masked);
  CHECK(sink.last.payload_len == len);
  CHECK(sink.last.header_len == hlen);
  CHECK(sink.payload == payload);
}

TEST_CASE("frame_writer: close frames", "[websocket]") {
  SECTION("code and reason, unmasked") {
    CHECK(closeFrame(1000, "bye", false) == bytes({0x88, 0x05, 0x03, 0xE8, 'b', 'y', 'e'}));
  }
  SECTION("no status means an empty payload") {
    CHECK(closeFrame(close_code::kNoStatus, "ignored", false) == bytes({0x88, 0x00}));
    CHECK(closeFrame(0, "", false) == bytes({0x88, 0x00}));
  }
  SECTION("masked close frames parse as client frames and validate") {
    const std::string f = closeFrame(close_code::kGoingAway, "drain", true);
    std::string wire = f;
    FrameParser parser(Role::Client, {}, false);
    MessageValidator validator(1024);
    struct Sink : OneFrame {
      MessageValidator* v;
      ParseError err;
      bool onFrameHeader(const FrameHeader& h, const char* r, size_t n) override {
        err = v->onFrameHeader(h);
        return OneFrame::onFrameHeader(h, r, n);
      }
      bool onFramePayload(const FrameHeader& h, char* d, size_t n, uint64_t o) override {
        if (!err) {
          err = v->onFramePayload(h, d, n);
        }
        return OneFrame::onFramePayload(h, d, n, o);
      }
      bool onFrameEnd(const FrameHeader& h) override {
        if (!err) {
          err = v->onFrameEnd(h);
        }
        return OneFrame::onFrameEnd(h);
      }
    } sink;
    sink.v = &validator;
    REQUIRE(parser.feed(&wire[0], wire.size(), sink).code == 0);
    CHECK(sink.err.code == 0);
    CHECK(validator.closeCode() == close_code::kGoingAway);
    CHECK(validator.closeReason() == "drain");
  }
  SECTION("long reasons are cut to 123 bytes on a character boundary") {
    const std::string ascii(200, 'x');
    std::string f = closeFrame(1001, ascii, false);
    CHECK(f.size() == 2 + 125);
    CHECK(f.substr(4) == std::string(123, 'x'));
    // 122 ASCII bytes then "é" (2 bytes): the é would end at byte 124 > 123, so it goes.
    const std::string accent = std::string(122, 'y') + "\xC3\xA9" + "tail";
    f = closeFrame(1001, accent, false);
    CHECK(f.size() == 2 + 2 + 122);
    CHECK(static_cast<unsigned char>(f[1]) == 124);
    // 121 ASCII then "é": fits exactly.
    f = closeFrame(1001, std::string(121, 'y') + "\xC3\xA9" + "tail", false);
    CHECK(f.substr(4) == std::string(121, 'y') + "\xC3\xA9");
  }
}

TEST_CASE("frame_writer: control frame limits", "[websocket]") {
  char frame[kMaxControlFrame];
  CHECK(writeControlFrame(frame, opcode::kPing, std::string(125, 'p'), kRfcMask) ==
        kMaxControlFrame);
  CHECK(writeControlFrame(frame, opcode::kPing, std::string(126, 'p'), nullptr) == 0);
  CHECK(writeControlFrame(frame, opcode::kText, "x", nullptr) == 0);
  CHECK(writeControlFrame(frame, opcode::kPong, std::string_view(), nullptr) == 2);
  const std::string ping = pingFrame(std::string(200, 'p'), false);
  CHECK(ping.size() == 2 + 125);
  CHECK(ping.substr(0, 2) == bytes({0x89, 125}));
  const std::string pong = pongFrame("abc", true);
  CHECK(pong.size() == 2 + 4 + 3);
  CHECK(static_cast<unsigned char>(pong[0]) == 0x8A);
  CHECK(static_cast<unsigned char>(pong[1]) == 0x83);
}

TEST_CASE("frame_writer: masking keys vary, across refills and threads", "[websocket]") {
  std::set<uint32_t> seen;
  for (int i = 0; i < 2000; ++i) {  // 2000 keys: several 256-key pool refills
    uint8_t key[4];
    maskingKey(key);
    uint32_t v;
    std::memcpy(&v, key, 4);
    seen.insert(v);
  }
  // Collisions among 2000 random 32-bit values are possible but rare (p ~ 5e-4).
  CHECK(seen.size() >= 1998);
  std::vector<uint32_t> other(500);
  std::thread t([&other] {
    for (uint32_t& v : other) {
      uint8_t key[4];
      maskingKey(key);
      std::memcpy(&v, key, 4);
    }
  });
  t.join();
  size_t shared = 0;
  for (uint32_t v : other) {
    shared += seen.count(v);
  }
  CHECK(shared <= 1);  // another thread has its own pool, not a copy of ours
}

}  // namespace
}  // namespace upgate
