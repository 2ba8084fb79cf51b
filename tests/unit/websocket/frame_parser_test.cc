#include "websocket/frame_parser.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "websocket/close_code.h"

namespace upgate {
namespace {

const uint8_t kMask[4] = {0x37, 0xFA, 0x21, 0x3D};

// Encodes a frame independently of frame_writer, so the parser is tested on its own. len_bytes
// forces the length encoding (0: minimal, 2: 16-bit, 8: 64-bit); b0_extra ORs RSV bits in.
std::string rawFrame(bool fin, uint8_t op, const std::string& payload, const uint8_t* mask,
                     int len_bytes = 0, uint8_t b0_extra = 0) {
  std::string f;
  f.push_back(static_cast<char>((fin ? 0x80 : 0) | b0_extra | op));
  const uint8_t m = mask != nullptr ? 0x80 : 0;
  const uint64_t n = payload.size();
  if (len_bytes == 0) {
    len_bytes = n < 126 ? 0 : (n <= 0xFFFF ? 2 : 8);
  }
  if (len_bytes == 0) {
    f.push_back(static_cast<char>(m | n));
  } else if (len_bytes == 2) {
    f.push_back(static_cast<char>(m | 126));
    f.push_back(static_cast<char>(n >> 8));
    f.push_back(static_cast<char>(n));
  } else {
    f.push_back(static_cast<char>(m | 127));
    for (int i = 7; i >= 0; --i) {
      f.push_back(static_cast<char>(n >> (8 * i)));
    }
  }
  if (mask != nullptr) {
    f.append(reinterpret_cast<const char*>(mask), 4);
  }
  for (size_t i = 0; i < payload.size(); ++i) {
    f.push_back(static_cast<char>(payload[i] ^ (mask != nullptr ? mask[i % 4] : 0)));
  }
  return f;
}

std::string hex(const char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned char>(p[i]);
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 15]);
  }
  return s;
}

// Records events in a normal form that does not depend on how the input was split: payload
// pieces are joined per frame, and their offsets must be contiguous.
class Recorder : public FrameSink {
 public:
  std::vector<std::string> events;
  std::string problem;  // first inconsistency seen
  int stop_at_event = -1;
  int event_count = 0;

  bool onFrameHeader(const FrameHeader& h, const char* raw, size_t raw_len) override {
    if (raw_len != h.header_len) {
      note("raw_len != header_len");
    }
    payload_.clear();
    payload_calls_ = 0;
    events.push_back("H fin=" + std::to_string(h.fin) + " rsv1=" + std::to_string(h.rsv1) +
                     " op=" + std::to_string(h.opcode) + " masked=" + std::to_string(h.masked) +
                     " len=" + std::to_string(h.payload_len) + " raw=" + hex(raw, raw_len));
    return next();
  }
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t offset) override {
    if (offset != payload_.size()) {
      note("non-contiguous offset");
    }
    if (len == 0 && h.payload_len != 0) {
      note("empty payload call for a non-empty frame");
    }
    ++payload_calls_;
    payload_.append(data, len);
    return next();
  }
  bool onFrameEnd(const FrameHeader& h) override {
    if (payload_.size() != h.payload_len) {
      note("frame ended early");
    }
    if (h.payload_len == 0 && payload_calls_ != 1) {
      note("empty frame needs exactly one payload call");
    }
    events.push_back("P " + payload_);
    events.push_back("E");
    return next();
  }

 private:
  void note(const char* what) {
    if (problem.empty()) {
      problem = what;
    }
  }
  bool next() { return event_count++ != stop_at_event; }

  std::string payload_;
  int payload_calls_ = 0;
};

struct Run {
  std::vector<std::string> events;
  ParseError error;
  std::string problem;
};

// Parses `input` cut at the given offsets (ascending); each piece is a separate feed().
Run parsePieces(const std::string& input, const std::vector<size_t>& cuts, Role role,
                FrameParser::Limits limits = {}, bool allow_rsv1 = false) {
  std::string buf = input;  // the parser unmasks in place
  FrameParser parser(role, limits, allow_rsv1);
  Recorder rec;
  Run run;
  size_t start = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(buf.size());
  for (size_t end : ends) {
    const ParseError e = parser.feed(&buf[0] + start, end - start, rec);
    if (e.code != 0) {
      run.error = e;
      break;
    }
    if (parser.consumed() != end - start) {
      run.problem = "feed did not consume its input";
    }
    start = end;
  }
  run.events = rec.events;
  if (run.problem.empty()) {
    run.problem = rec.problem;
  }
  return run;
}

Run parseWhole(const std::string& input, Role role, FrameParser::Limits limits = {},
               bool allow_rsv1 = false) {
  return parsePieces(input, {}, role, limits, allow_rsv1);
}

Run parseBytewise(const std::string& input, Role role, FrameParser::Limits limits = {},
                  bool allow_rsv1 = false) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < input.size(); ++i) {
    cuts.push_back(i);
  }
  return parsePieces(input, cuts, role, limits, allow_rsv1);
}

struct CorpusFrame {
  bool fin;
  uint8_t op;
  std::string payload;
  uint8_t rsv = 0;
};

std::string encodeCorpus(const std::vector<CorpusFrame>& frames, bool masked) {
  std::string out;
  for (const CorpusFrame& f : frames) {
    out += rawFrame(f.fin, f.op, f.payload, masked ? kMask : nullptr, 0, f.rsv);
  }
  return out;
}

std::vector<std::string> expectedEvents(const std::vector<CorpusFrame>& frames, bool masked) {
  std::vector<std::string> ev;
  for (const CorpusFrame& f : frames) {
    const std::string raw = rawFrame(f.fin, f.op, f.payload, masked ? kMask : nullptr, 0, f.rsv);
    const size_t hlen = raw.size() - f.payload.size();
    ev.push_back("H fin=" + std::to_string(f.fin) + " rsv1=" + std::to_string(f.rsv != 0) +
                 " op=" + std::to_string(f.op) + " masked=" + std::to_string(masked) +
                 " len=" + std::to_string(f.payload.size()) + " raw=" + hex(raw.data(), hlen));
    ev.push_back("P " + f.payload);
    ev.push_back("E");
  }
  return ev;
}

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>('a' + (i * 7 + i / 26) % 26);
  }
  return s;
}

// 7- and 16-bit lengths, empty frames, control frames between fragments.
const std::vector<CorpusFrame>& smallCorpus() {
  static const std::vector<CorpusFrame> frames = {
      {true, opcode::kText, "Hello"},
      {true, opcode::kBinary, pattern(126)},  // smallest 16-bit length
      {false, opcode::kText, "frag-"},
      {true, opcode::kPing, "p"},
      {false, opcode::kContinuation, "ment"},
      {true, opcode::kPong, ""},
      {true, opcode::kContinuation, ""},
      {true, opcode::kBinary, ""},
      {true, opcode::kText, pattern(125)},  // largest 7-bit length
      {true, opcode::kClose, std::string("\x03\xE8", 2) + "bye"},
  };
  return frames;
}

TEST_CASE("frame_parser: small corpus, whole and byte by byte", "[websocket]") {
  const bool masked = GENERATE(true, false);
  const Role role = masked ? Role::Client : Role::Server;
  const std::string input = encodeCorpus(smallCorpus(), masked);
  const std::vector<std::string> expected = expectedEvents(smallCorpus(), masked);
  const Run whole = parseWhole(input, role);
  CHECK(whole.problem.empty());
  CHECK(whole.error.code == 0);
  CHECK(whole.events == expected);
  const Run bytes = parseBytewise(input, role);
  CHECK(bytes.problem.empty());
  CHECK(bytes.error.code == 0);
  CHECK(bytes.events == expected);
}

TEST_CASE("frame_parser: small corpus split at every offset and every pair", "[websocket]") {
  const bool masked = GENERATE(true, false);
  const Role role = masked ? Role::Client : Role::Server;
  const std::string input = encodeCorpus(smallCorpus(), masked);
  const std::vector<std::string> expected = expectedEvents(smallCorpus(), masked);
  size_t mismatches = 0;
  for (size_t i = 0; i <= input.size(); ++i) {
    const Run r = parsePieces(input, {i}, role);
    if (r.events != expected || !r.problem.empty() || r.error.code != 0) {
      ++mismatches;
      CAPTURE(i, r.problem);
      CHECK(r.events == expected);
    }
  }
  // Three pieces: every header boundary lands in every position of a split.
  for (size_t i = 0; i <= input.size(); ++i) {
    for (size_t j = i; j <= input.size(); ++j) {
      const Run r = parsePieces(input, {i, j}, role);
      if (r.events != expected || !r.problem.empty() || r.error.code != 0) {
        ++mismatches;
      }
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("frame_parser: 16-bit maximum and 64-bit lengths, split across headers", "[websocket]") {
  const bool masked = GENERATE(true, false);
  const Role role = masked ? Role::Client : Role::Server;
  const std::vector<CorpusFrame> frames = {
      {true, opcode::kBinary, pattern(0xFFFF)},      // largest 16-bit length
      {false, opcode::kText, pattern(0x10000)},      // smallest 64-bit length
      {true, opcode::kPing, "between"},              // control frame between fragments
      {true, opcode::kContinuation, pattern(70001)}  // 64-bit, odd size
  };
  const std::string input = encodeCorpus(frames, masked);
  const std::vector<std::string> expected = expectedEvents(frames, masked);
  CHECK(parseWhole(input, role).events == expected);
  const Run bytes = parseBytewise(input, role);
  CHECK(bytes.problem.empty());
  CHECK(bytes.events == expected);
  // Every offset within 32 bytes of each frame boundary (all header splits), and a stride
  // through the payloads; splitting at all ~200k offsets would re-parse 40 GB.
  std::vector<size_t> offsets;
  size_t boundary = 0;
  for (const CorpusFrame& f : frames) {
    for (size_t d = 0; d < 32; ++d) {
      offsets.push_back(boundary + d);
      if (boundary >= d) {
        offsets.push_back(boundary - d);
      }
    }
    boundary += rawFrame(f.fin, f.op, f.payload, masked ? kMask : nullptr).size();
  }
  for (size_t i = 0; i < input.size(); i += 997) {
    offsets.push_back(i);
  }
  size_t mismatches = 0;
  for (size_t i : offsets) {
    if (i > input.size()) {
      continue;
    }
    const Run r = parsePieces(input, {i}, role);
    if (r.events != expected || !r.problem.empty()) {
      ++mismatches;
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("frame_parser: RSV1 on the first data frame when negotiated", "[websocket]") {
  const std::vector<CorpusFrame> frames = {
      {true, opcode::kText, "compressed", 0x40},
      {false, opcode::kBinary, "first", 0x40},
      {true, opcode::kContinuation, "second"},
  };
  const std::string input = encodeCorpus(frames, true);
  const Run r = parseBytewise(input, Role::Client, {}, true);
  CHECK(r.error.code == 0);
  CHECK(r.events == expectedEvents(frames, true));
  // Not negotiated: the same bytes fail.
  CHECK(parseWhole(input, Role::Client).error.code == close_code::kProtocolError);
}

TEST_CASE("frame_parser: protocol errors with their close codes", "[websocket]") {
  struct Row {
    const char* name;
    std::string bytes;
    Role role;
    bool allow_rsv1;
    uint64_t max_payload;
    uint16_t code;
  };
  const uint64_t big = uint64_t{1} << 40;
  const std::string close_payload = std::string("\x03\xE8", 2);
  const std::string msb("\x82\x7F\x80\x00\x00\x00\x00\x00\x00\x00", 10);
  const Row row = GENERATE_REF(values<Row>({
      {"unmasked frame from a client", rawFrame(true, 1, "hi", nullptr), Role::Client, false, big,
       1002},
      {"masked frame from a server", rawFrame(true, 1, "hi", kMask), Role::Server, false, big,
       1002},
      {"RSV1 not negotiated", rawFrame(true, 1, "hi", kMask, 0, 0x40), Role::Client, false, big,
       1002},
      {"RSV2", rawFrame(true, 1, "hi", kMask, 0, 0x20), Role::Client, true, big, 1002},
      {"RSV3", rawFrame(true, 1, "hi", kMask, 0, 0x10), Role::Client, true, big, 1002},
      {"RSV1 on a continuation", rawFrame(true, 0, "hi", kMask, 0, 0x40), Role::Client, true, big,
       1002},
      {"RSV1 on a ping", rawFrame(true, 9, "hi", kMask, 0, 0x40), Role::Client, true, big, 1002},
      {"opcode 3", rawFrame(true, 3, "", kMask), Role::Client, false, big, 1002},
      {"opcode 4", rawFrame(true, 4, "", kMask), Role::Client, false, big, 1002},
      {"opcode 5", rawFrame(true, 5, "", kMask), Role::Client, false, big, 1002},
      {"opcode 6", rawFrame(true, 6, "", kMask), Role::Client, false, big, 1002},
      {"opcode 7", rawFrame(true, 7, "", kMask), Role::Client, false, big, 1002},
      {"opcode B", rawFrame(true, 0xB, "", kMask), Role::Client, false, big, 1002},
      {"opcode C", rawFrame(true, 0xC, "", nullptr), Role::Server, false, big, 1002},
      {"opcode D", rawFrame(true, 0xD, "", nullptr), Role::Server, false, big, 1002},
      {"opcode E", rawFrame(true, 0xE, "", nullptr), Role::Server, false, big, 1002},
      {"opcode F", rawFrame(true, 0xF, "", nullptr), Role::Server, false, big, 1002},
      {"fragmented ping", rawFrame(false, 9, "", kMask), Role::Client, false, big, 1002},
      {"fragmented close", rawFrame(false, 8, close_payload, kMask), Role::Client, false, big,
       1002},
      {"ping of 126 bytes", rawFrame(true, 9, pattern(126), kMask), Role::Client, false, big, 1002},
      {"close of 126 bytes", rawFrame(true, 8, close_payload + pattern(124), nullptr), Role::Server,
       false, big, 1002},
      {"pong with a 16-bit length", rawFrame(true, 0xA, "x", nullptr, 2), Role::Server, false, big,
       1002},
      {"16-bit length for 125 bytes", rawFrame(true, 2, pattern(125), kMask, 2), Role::Client,
       false, big, 1002},
      {"16-bit length for 0 bytes", rawFrame(true, 2, "", nullptr, 2), Role::Server, false, big,
       1002},
      {"64-bit length for 65535 bytes", rawFrame(true, 2, pattern(0xFFFF), kMask, 8), Role::Client,
       false, big, 1002},
      {"64-bit length for 126 bytes", rawFrame(true, 2, pattern(126), nullptr, 8), Role::Server,
       false, big, 1002},
      {"64-bit length with the MSB set", msb, Role::Server, false, ~uint64_t{0}, 1002},
      {"frame over the limit", rawFrame(true, 2, pattern(200), kMask), Role::Client, false, 199,
       1009},
      {"64-bit frame over the limit", rawFrame(true, 2, pattern(70000), nullptr), Role::Server,
       false, 65536, 1009},
  }));
  CAPTURE(row.name);
  FrameParser::Limits limits;
  limits.max_frame_payload = row.max_payload;
  const Run whole = parseWhole(row.bytes, row.role, limits, row.allow_rsv1);
  CHECK(whole.error.code == row.code);
  CHECK(std::strlen(whole.error.reason) > 0);
  CHECK(whole.events.empty());  // rejected at the header: the sink heard nothing
  const Run bytes = parseBytewise(row.bytes, row.role, limits, row.allow_rsv1);
  CHECK(bytes.error.code == row.code);
  CHECK(bytes.events.empty());
}

TEST_CASE("frame_parser: errors are sticky and found from the first two bytes", "[websocket]") {
  FrameParser parser(Role::Client, {}, false);
  Recorder rec;
  std::string bad = "\x83\x80";  // opcode 3, masked, header incomplete (mask missing)
  const ParseError e = parser.feed(&bad[0], bad.size(), rec);
  CHECK(e.code == close_code::kProtocolError);
  CHECK(std::string(e.reason) == "reserved opcode");
  std::string good = rawFrame(true, 1, "ok", kMask);
  CHECK(parser.feed(&good[0], good.size(), rec).code == close_code::kProtocolError);
  CHECK(parser.error().code == close_code::kProtocolError);
  CHECK(rec.events.empty());
}

TEST_CASE("frame_parser: limit is inclusive", "[websocket]") {
  FrameParser::Limits limits;
  limits.max_frame_payload = 200;
  const Run r = parseWhole(rawFrame(true, 2, pattern(200), kMask), Role::Client, limits);
  CHECK(r.error.code == 0);
  CHECK(r.events.size() == 3);
}

TEST_CASE("frame_parser: sink stops and the parser resumes", "[websocket]") {
  const std::string input = encodeCorpus(smallCorpus(), true);
  const std::vector<std::string> expected = expectedEvents(smallCorpus(), true);
  // Stop at every event in turn; resuming with the unconsumed rest gives the same events.
  for (int stop = 0; stop < 40; ++stop) {
    CAPTURE(stop);
    std::string buf = input;
    FrameParser parser(Role::Client, {}, false);
    Recorder rec;
    rec.stop_at_event = stop;
    size_t pos = 0;
    int feeds = 0;
    while (pos < buf.size() || !parser.atFrameBoundary()) {
      REQUIRE(++feeds < 1000);
      const ParseError e = parser.feed(&buf[0] + pos, buf.size() - pos, rec);
      REQUIRE(e.code == 0);
      pos += parser.consumed();
    }
    CHECK(rec.problem.empty());
    CHECK(rec.events == expected);
  }
}

TEST_CASE("frame_parser: atFrameBoundary", "[websocket]") {
  FrameParser parser(Role::Server, {}, false);
  Recorder rec;
  CHECK(parser.atFrameBoundary());
  std::string f = rawFrame(true, 2, "abc", nullptr);
  parser.feed(&f[0], 1, rec);
  CHECK_FALSE(parser.atFrameBoundary());  // half a header
  parser.feed(&f[1], 2, rec);
  CHECK_FALSE(parser.atFrameBoundary());  // inside the payload
  parser.feed(&f[3], f.size() - 3, rec);
  CHECK(parser.atFrameBoundary());
}

TEST_CASE("frame_parser: setAllowRsv1 after construction", "[websocket]") {
  FrameParser parser(Role::Client, {}, false);
  parser.setAllowRsv1(true);
  Recorder rec;
  std::string f = rawFrame(true, 1, "x", kMask, 0, 0x40);
  CHECK(parser.feed(&f[0], f.size(), rec).code == 0);
  CHECK(rec.events.size() == 3);
}

TEST_CASE("frame_parser: applyMask at every alignment, length and offset", "[websocket]") {
  const uint8_t key[4] = {0x01, 0x80, 0xFE, 0x5A};
  std::vector<char> storage(128 + 8);
  for (size_t align = 0; align < 8; ++align) {
    for (size_t len = 0; len <= 100; ++len) {
      for (uint64_t offset : {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{5},
                              uint64_t{7}, (uint64_t{1} << 32) + 1, ~uint64_t{0} - 2}) {
        char* data = storage.data() + align;
        std::string ref(len, '\0');
        for (size_t i = 0; i < len; ++i) {
          data[i] = static_cast<char>(i * 31 + align);
          ref[i] = static_cast<char>(data[i] ^ static_cast<char>(key[(offset + i) % 4]));
        }
        storage[align + len] = 'Z';  // guard byte after the range
        applyMask(data, len, key, offset);
        if (std::string(data, len) != ref || storage[align + len] != 'Z') {
          CAPTURE(align, len, offset);
          FAIL("applyMask mismatch");
        }
      }
    }
  }
}

TEST_CASE("frame_parser: unmasking in pieces equals unmasking whole", "[websocket]") {
  const std::string payload = pattern(1000);
  const std::string frame = rawFrame(true, 2, payload, kMask);
  // Cut the payload at offsets of every residue mod 4 and 8.
  for (size_t cut = 14; cut < 14 + 17; ++cut) {
    const Run r = parsePieces(frame, {cut, cut + 3, cut + 250}, Role::Client);
    REQUIRE(r.events.size() == 3);
    CHECK(r.events[1] == "P " + payload);
  }
}

}  // namespace
}  // namespace upgate
