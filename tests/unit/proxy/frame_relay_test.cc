#include "proxy/frame_relay.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "proxy/tcp_bridge.h"
#include "proxy/tunnel.h"
#include "websocket/close_code.h"
#include "websocket/frame_writer.h"
#include "websocket/utf8.h"

namespace upgate {
namespace {

// ---- Frame building and decoding -------------------------------------------------------------

std::string frame(uint8_t op, const std::string& payload, bool masked, bool fin = true,
                  bool rsv1 = false) {
  const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
  char head[kMaxFrameHeader];
  size_t n = writeFrameHeader(head, op, fin, rsv1, payload.size(), masked ? key : nullptr);
  std::string out(head, n);
  std::string body = payload;
  if (masked) maskPayload(&body[0], body.size(), key);
  return out + body;
}
std::string cframe(uint8_t op, const std::string& p, bool fin = true, bool rsv1 = false) {
  return frame(op, p, true, fin, rsv1);
}
std::string sframe(uint8_t op, const std::string& p, bool fin = true, bool rsv1 = false) {
  return frame(op, p, false, fin, rsv1);
}

struct Decoded {
  uint8_t op;
  bool fin;
  bool rsv1;
  bool masked;
  std::string payload;
};

// Decodes a byte stream with the project's own parser (its correctness is tested elsewhere).
class Collect final : public FrameSink {
 public:
  bool onFrameHeader(const FrameHeader& h, const char*, size_t) override {
    frames.push_back({h.opcode, h.fin, h.rsv1, h.masked, ""});
    return true;
  }
  bool onFramePayload(const FrameHeader&, char* d, size_t n, uint64_t) override {
    frames.back().payload.append(d, n);
    return true;
  }
  bool onFrameEnd(const FrameHeader&) override { return true; }
  std::vector<Decoded> frames;
};

std::vector<Decoded> decode(std::string bytes, Role from) {
  FrameParser p(from, FrameParser::Limits{}, true);
  Collect c;
  ParseError e = p.feed(&bytes[0], bytes.size(), c);
  REQUIRE_FALSE(e);
  REQUIRE(p.atFrameBoundary());
  return c.frames;
}

std::string deflated(const std::string& message) {
  Deflater d(DeflateChannel{15, false});
  std::string out;
  REQUIRE(d.compress(message.data(), message.size(), true, &out) == CodecStatus::Ok);
  return out;
}

std::string inflated(const std::string& payload) {
  Inflater i(DeflateChannel{15, false});
  std::string out;
  REQUIRE(i.decompress(payload.data(), payload.size(), true, 1 << 24, &out) == CodecStatus::Ok);
  return out;
}

// Records what a relay hands on; control frames are forwarded unless listed as swallowed.
class Sink final : public RelayOutput {
 public:
  bool relayBytes(const char* data, size_t len) override {
    out.append(data, len);
    ++writes;
    return true;
  }
  bool relayControl(uint8_t op, std::string_view payload, std::string_view f) override {
    controls.emplace_back(op, std::string(payload));
    if (op == opcode::kPong && swallow_pongs) return true;
    return relayBytes(f.data(), f.size());
  }
  MessageVerdict relayMessage(uint8_t op, const std::string& payload) override {
    messages.emplace_back(op, payload);
    return verdict;
  }
  std::string out;
  int writes = 0;
  bool swallow_pongs = false;
  std::vector<std::pair<uint8_t, std::string>> controls;
  std::vector<std::pair<uint8_t, std::string>> messages;
  MessageVerdict verdict;
};

// Feeds `input` to a fresh relay in two pieces split at `at` (the relay unmasks in place, so
// each call gets its own copy).
ParseError feedSplit(FrameRelay& r, const std::string& input, size_t at) {
  std::string a = input.substr(0, at), b = input.substr(at);
  ParseError e = r.feed(&a[0], a.size());
  if (e) return e;
  return r.feed(&b[0], b.size());
}

// ---- FrameTracker ------------------------------------------------------------------------------

TEST_CASE("FrameTracker: boundaries at every split, all length encodings", "[proxy][frames]") {
  std::vector<std::string> frames = {
      cframe(opcode::kText, "hi"), cframe(opcode::kBinary, std::string(300, 'x')),  // 16-bit length
      sframe(opcode::kBinary, std::string(70000, 'y')),                             // 64-bit length
      sframe(opcode::kPing, ""), cframe(opcode::kClose, std::string("\x03\xe8", 2))};
  std::string all;
  std::vector<size_t> ends;
  for (const auto& f : frames) {
    all += f;
    ends.push_back(all.size());
  }
  SECTION("byte by byte") {
    FrameTracker t;
    for (size_t i = 0; i < all.size(); ++i) {
      t.feed(&all[i], 1);
      bool at_end = std::find(ends.begin(), ends.end(), i + 1) != ends.end();
      REQUIRE(t.atBoundary() == at_end);
      REQUIRE(t.closeSeen() == (i + 1 == all.size()));
    }
  }
  SECTION("split at every offset") {
    for (size_t at = 0; at <= all.size(); at += (at < 400 ? 1 : 997)) {
      FrameTracker t;
      t.feed(all.data(), at);
      bool at_end = at == 0 || std::find(ends.begin(), ends.end(), at) != ends.end();
      REQUIRE(t.atBoundary() == at_end);
      t.feed(all.data() + at, all.size() - at);
      REQUIRE(t.atBoundary());
      REQUIRE(t.closeSeen());
    }
  }
}

TEST_CASE("FrameTracker: counts data messages as their last frame begins", "[proxy][frames]") {
  const std::string all = cframe(opcode::kText, "one") + cframe(opcode::kBinary, "tw", false) +
                          cframe(opcode::kPing, "p") + cframe(opcode::kContinuation, "o", false) +
                          cframe(opcode::kContinuation, "!") + cframe(opcode::kPong, "") +
                          cframe(opcode::kBinary, std::string(300, 'x'));
  for (size_t at = 0; at <= all.size(); ++at) {
    FrameTracker t;
    t.feed(all.data(), at);
    uint32_t n = t.takeMessages();
    t.feed(all.data() + at, all.size() - at);
    n += t.takeMessages();
    REQUIRE(n == 3);  // "one", "two!" (three frames, a ping between) and the 300 x
    REQUIRE(t.takeMessages() == 0);
  }
}

TEST_CASE("FrameTracker: reads a close frame's code at every split, masked or not",
          "[proxy][frames]") {
  auto masked = GENERATE(true, false);
  const std::string lead = frame(opcode::kText, "hello", masked);
  for (auto [payload, want] :
       std::vector<std::pair<std::string, uint16_t>>{{std::string("\x0f\xa1"
                                                                  "bye",
                                                                  5),
                                                      4001},
                                                     {std::string("\x03\xe8", 2), 1000},
                                                     {"", close_code::kNoStatus}}) {
    const std::string all = lead + frame(opcode::kClose, payload, masked);
    for (size_t at = 0; at <= all.size(); ++at) {
      FrameTracker t;
      t.feed(all.data(), at);
      t.feed(all.data() + at, all.size() - at);
      REQUIRE(t.closeSeen());
      REQUIRE(t.closeCode() == want);
    }
    FrameTracker t;  // byte by byte
    for (char c : all) t.feed(&c, 1);
    REQUIRE(t.closeCode() == want);
  }
}

TEST_CASE("FrameTracker: stops at the first close frame", "[proxy][frames]") {
  // Bytes after a close frame belong to no frame (§5.5.1): a second close, whole or cut off,
  // and data frames change neither the code nor the message count.
  const std::string first = cframe(opcode::kClose, std::string("\x03\xe8", 2));
  for (const std::string& after : {cframe(opcode::kClose, std::string("\x0f\xa0", 2)),
                                   cframe(opcode::kClose, std::string("\x0f\xa0", 2)).substr(0, 2),
                                   cframe(opcode::kText, "late") + cframe(opcode::kBinary, "x")}) {
    FrameTracker t;
    std::string bytes = cframe(opcode::kText, "m") + first + after;
    t.feed(bytes.data(), bytes.size());
    CHECK(t.closeSeen());
    CHECK(t.closeCode() == 1000);
    CHECK(t.takeMessages() == 1);
    t.feed(after.data(), after.size());  // a later read
    CHECK(t.closeCode() == 1000);
    CHECK(t.takeMessages() == 0);
  }
}

// ---- FrameRelay: streaming ---------------------------------------------------------------------

FrameRelay::Options clientOptions() {
  FrameRelay::Options o;
  o.from = Role::Client;
  o.max_message_size = 1024 * 1024;
  return o;
}

TEST_CASE("FrameRelay: valid traffic goes on byte-identical at every split", "[proxy][frames]") {
  const std::string input =
      cframe(opcode::kText, "hello") + cframe(opcode::kBinary, std::string(200, 'b'), false) +
      cframe(opcode::kPing, "p") + cframe(opcode::kContinuation, std::string(70, 'c'), true) +
      cframe(opcode::kClose, std::string("\x03\xe8"
                                         "bye",
                                         5));
  for (size_t at = 0; at <= input.size(); ++at) {
    Sink s;
    FrameRelay r(clientOptions(), s);
    REQUIRE_FALSE(feedSplit(r, input, at));
    REQUIRE(s.out == input);
    REQUIRE(r.closeSeen());
    REQUIRE(r.atBoundary());
    REQUIRE(s.controls.size() == 2);
  }
  SECTION("contiguous data frames of one read go on in one write") {
    Sink s;
    FrameRelay r(clientOptions(), s);
    std::string data = cframe(opcode::kText, "a") + cframe(opcode::kText, "b");
    REQUIRE_FALSE(r.feed(&data[0], data.size()));
    CHECK(s.writes == 1);
  }
}

TEST_CASE("FrameRelay: nothing after a close frame is read", "[proxy][frames]") {
  Sink s;
  FrameRelay r(clientOptions(), s);
  std::string close = cframe(opcode::kClose, "");
  std::string input = close + cframe(opcode::kText, "late");
  REQUIRE_FALSE(r.feed(&input[0], input.size()));
  CHECK(s.out == close);
  std::string more = cframe(opcode::kText, "later");
  REQUIRE_FALSE(r.feed(&more[0], more.size()));
  CHECK(s.out == close);
}

TEST_CASE("FrameRelay: a violation stops at the frame boundary before it", "[proxy][frames]") {
  const std::string good = cframe(opcode::kText, "fine");
  SECTION("invalid UTF-8 in a frame that began in this read") {
    std::string input = good + cframe(opcode::kText, "\xc3\x28 bad");
    Sink s;
    FrameRelay r(clientOptions(), s);
    ParseError e = r.feed(&input[0], input.size());
    CHECK(e.code == close_code::kInvalidPayload);
    CHECK(s.out == good);
    CHECK(r.atBoundary());
  }
  SECTION("unmasked client frame (a header the parser refuses)") {
    std::string input = good + sframe(opcode::kText, "x");
    Sink s;
    FrameRelay r(clientOptions(), s);
    CHECK(r.feed(&input[0], input.size()).code == close_code::kProtocolError);
    CHECK(s.out == good);
    CHECK(r.atBoundary());
  }
  SECTION("a frame that began in an earlier read leaves the destination inside it") {
    std::string bad = cframe(opcode::kText, std::string(100, 'a') + "\xff");
    std::string input = good + bad;
    size_t at = good.size() + 50;
    Sink s;
    FrameRelay r(clientOptions(), s);
    ParseError e = feedSplit(r, input, at);
    CHECK(e.code == close_code::kInvalidPayload);
    CHECK(s.out == input.substr(0, at));
    CHECK_FALSE(r.atBoundary());
  }
  SECTION("split at every offset") {
    std::string bad = cframe(opcode::kText, std::string(20, 'a') + "\xff");
    const size_t header = 6;
    std::string input = good + bad;
    for (size_t at = 0; at < input.size(); ++at) {
      Sink s;
      FrameRelay r(clientOptions(), s);
      REQUIRE(feedSplit(r, input, at).code == close_code::kInvalidPayload);
      if (at < good.size() + header) {  // the bad frame's header ends in the second read
        REQUIRE(s.out == (at < good.size() ? good : input.substr(0, std::min(at, good.size()))));
        REQUIRE(r.atBoundary());
      } else {
        REQUIRE(s.out == input.substr(0, at));
        REQUIRE_FALSE(r.atBoundary());
      }
    }
  }
  SECTION("message over max_message_size") {
    FrameRelay::Options o = clientOptions();
    o.max_message_size = 100;
    std::string input = good + cframe(opcode::kBinary, std::string(101, 'x'));
    Sink s;
    FrameRelay r(o, s);
    CHECK(r.feed(&input[0], input.size()).code == close_code::kMessageTooBig);
    CHECK(s.out == good);
  }
}

TEST_CASE("FrameRelay: a swallowed control frame is cut out of the stream", "[proxy][frames]") {
  const std::string a = sframe(opcode::kText, "a");
  const std::string pong = sframe(opcode::kPong, "upgate-keepalive");
  const std::string b = sframe(opcode::kText, "b");
  const std::string input = a + pong + b;
  FrameRelay::Options o;
  o.from = Role::Server;
  for (size_t at = 0; at <= input.size(); ++at) {
    Sink s;
    s.swallow_pongs = true;
    FrameRelay r(o, s);
    REQUIRE_FALSE(feedSplit(r, input, at));
    REQUIRE(s.out == a + b);
    REQUIRE(s.controls.size() == 1);
  }
}

// ---- FrameRelay: whole messages ----------------------------------------------------------------

TEST_CASE("FrameRelay: inflates a compressed client leg for an uncompressed upstream",
          "[proxy][frames][deflate]") {
  const std::string text = std::string(3000, 'z') + " end";
  std::string payload = deflated(text);
  // The compressed message in two fragments, a ping between them.
  std::string input = cframe(opcode::kText, payload.substr(0, 10), false, true) +
                      cframe(opcode::kPing, "x") +
                      cframe(opcode::kContinuation, payload.substr(10), true);
  const DeflateChannel from_client{15, false};
  FrameRelay::Options o = clientOptions();
  o.inflate = &from_client;
  for (size_t at = 0; at <= input.size(); at += 7) {
    Sink s;
    FrameRelay r(o, s);
    REQUIRE_FALSE(feedSplit(r, input, at));
    auto out = decode(s.out, Role::Client);
    REQUIRE(out.size() == 2);
    CHECK(out[0].op == opcode::kPing);  // control frames are not held behind the message
    CHECK(out[1].op == opcode::kText);
    CHECK(out[1].fin);
    CHECK_FALSE(out[1].rsv1);
    CHECK(out[1].masked);  // towards the upstream upgate is the client
    CHECK(out[1].payload == text);
  }
}

TEST_CASE("FrameRelay: deflates towards a compressed client leg", "[proxy][frames][deflate]") {
  const std::string part1 = std::string(5000, 'q');
  const std::string part2 = "tail";
  std::string input =
      sframe(opcode::kBinary, part1, false) + sframe(opcode::kContinuation, part2, true);
  const DeflateChannel to_client{15, false};
  FrameRelay::Options o;
  o.from = Role::Server;
  o.deflate = &to_client;
  Sink s;
  FrameRelay r(o, s);
  REQUIRE_FALSE(r.feed(&input[0], input.size()));
  auto out = decode(s.out, Role::Server);
  REQUIRE(out.size() == 1);
  CHECK(out[0].op == opcode::kBinary);
  CHECK(out[0].rsv1);
  CHECK_FALSE(out[0].masked);
  CHECK(out[0].payload.size() < part1.size() / 10);
  CHECK(inflated(out[0].payload) == part1 + part2);
  CHECK(r.codecMemory() > 0);  // context takeover: the window is the shared dictionary
  SECTION("no_context_takeover frees the codec between messages") {
    const DeflateChannel fresh{15, true};
    o.deflate = &fresh;
    Sink s2;
    FrameRelay r2(o, s2);
    std::string again = sframe(opcode::kText, "small");
    REQUIRE_FALSE(r2.feed(&again[0], again.size()));
    CHECK(r2.codecMemory() == 0);
    CHECK(inflated(decode(s2.out, Role::Server)[0].payload) == "small");
  }
}

TEST_CASE("FrameRelay: bad compressed input fails with the right code",
          "[proxy][frames][deflate]") {
  const DeflateChannel ch{15, false};
  FrameRelay::Options o = clientOptions();
  o.inflate = &ch;
  SECTION("not a deflate stream -> 1007") {
    std::string input = cframe(opcode::kBinary, "\xff\xff\xff\xff garbage", true, true);
    Sink s;
    FrameRelay r(o, s);
    CHECK(r.feed(&input[0], input.size()).code == close_code::kInvalidPayload);
    CHECK(s.out.empty());
  }
  SECTION("inflate bomb over max_message_size -> 1009") {
    o.max_message_size = 1000;
    std::string input = cframe(opcode::kBinary, deflated(std::string(100000, 0)), true, true);
    Sink s;
    FrameRelay r(o, s);
    CHECK(r.feed(&input[0], input.size()).code == close_code::kMessageTooBig);
  }
  SECTION("a message of exactly max_message_size once inflated passes, one byte more -> 1009") {
    // Split over fragments and reads, so the cap is checked against the whole message, not
    // against what each call inflates (nor the rest of it twice).
    o.max_message_size = 1000;
    for (size_t size : {size_t{1000}, size_t{1001}}) {
      std::string payload = deflated(std::string(size, 'a'));
      std::string input = cframe(opcode::kBinary, payload.substr(0, 4), false, true) +
                          cframe(opcode::kContinuation, payload.substr(4), true);
      for (size_t at = 0; at <= input.size(); ++at) {
        Sink s;
        FrameRelay r(o, s);
        ParseError e = feedSplit(r, input, at);
        if (size == 1000) {
          REQUIRE_FALSE(e);
          auto out = decode(s.out, Role::Client);
          REQUIRE(out.size() == 1);
          REQUIRE(out[0].payload == std::string(size, 'a'));
        } else {
          REQUIRE(e.code == close_code::kMessageTooBig);
        }
      }
    }
  }
  SECTION("invalid UTF-8 once inflated -> 1007") {
    std::string input = cframe(opcode::kText, deflated("ok \xed\xa0\x80"), true, true);
    Sink s;
    FrameRelay r(o, s);
    CHECK(r.feed(&input[0], input.size()).code == close_code::kInvalidPayload);
  }
  SECTION("RSV1 on a leg without compression -> 1002") {
    FrameRelay::Options plain = clientOptions();
    plain.whole_messages = true;
    std::string input = cframe(opcode::kBinary, deflated("x"), true, true);
    Sink s;
    FrameRelay r(plain, s);
    CHECK(r.feed(&input[0], input.size()).code == close_code::kProtocolError);
  }
}

TEST_CASE("FrameRelay: message hooks pass, rewrite, drop or close", "[proxy][frames]") {
  FrameRelay::Options o = clientOptions();
  o.whole_messages = true;
  std::string input = cframe(opcode::kText, "one", false) + cframe(opcode::kContinuation, "two");
  Sink s;
  FrameRelay r(o, s);
  SECTION("pass: one frame with the whole message") {
    REQUIRE_FALSE(r.feed(&input[0], input.size()));
    REQUIRE(s.messages.size() == 1);
    CHECK(s.messages[0] == std::make_pair(opcode::kText, std::string("onetwo")));
    auto out = decode(s.out, Role::Client);
    REQUIRE(out.size() == 1);
    CHECK(out[0].payload == "onetwo");
  }
  SECTION("rewrite") {
    s.verdict.action = UPGATE_MESSAGE_REWRITE;
    s.verdict.opcode = opcode::kBinary;
    s.verdict.payload = "new";
    REQUIRE_FALSE(r.feed(&input[0], input.size()));
    auto out = decode(s.out, Role::Client);
    REQUIRE(out.size() == 1);
    CHECK(out[0].op == opcode::kBinary);
    CHECK(out[0].payload == "new");
  }
  SECTION("a rewrite over max_message_size is the plugin's error: 1011, nothing sent") {
    FrameRelay::Options small = o;
    small.max_message_size = 10;
    FrameRelay r2(small, s);
    s.verdict.action = UPGATE_MESSAGE_REWRITE;
    s.verdict.opcode = opcode::kBinary;
    s.verdict.payload = std::string(11, 'x');
    ParseError e = r2.feed(&input[0], input.size());
    CHECK(e.code == close_code::kInternalError);
    CHECK(s.out.empty());
  }
  SECTION("drop") {
    s.verdict.action = UPGATE_MESSAGE_DROP;
    REQUIRE_FALSE(r.feed(&input[0], input.size()));
    CHECK(s.out.empty());
  }
  SECTION("close") {
    s.verdict.action = UPGATE_MESSAGE_CLOSE;
    s.verdict.close_code = 1008;
    s.verdict.close_reason = "too many messages";
    ParseError e = r.feed(&input[0], input.size());
    CHECK(e.code == 1008);
    CHECK(std::string(e.reason) == "too many messages");
    CHECK(s.out.empty());
  }
}

// ---- Tunnel ------------------------------------------------------------------------------------

class Owner final : public TunnelOwner {
 public:
  bool tunnelWrite(bool to_client, const char* data, size_t len) override {
    (to_client ? to_client_ : to_upstream).append(data, len);
    return !ended;
  }
  bool tunnelWriteLast(bool to_client, const char* data, size_t len) override {
    (to_client ? last_to_client : last_to_upstream).assign(data, len);
    return tunnelWrite(to_client, data, len);
  }
  void tunnelEnd(const std::string& reason) override {
    ended = true;
    end_reason = reason;
  }
  MessageVerdict tunnelMessage(bool, uint8_t, const std::string&) override { return {}; }
  void tunnelWatchPeer(bool client, uint32_t timeout_ms) override {
    watched.push_back({client, timeout_ms});
  }
  std::vector<std::pair<bool, uint32_t>> watched;  // tunnelWatchPeer calls
  std::string to_client_;
  std::string to_upstream;
  std::string last_to_client;  // what went through tunnelWriteLast
  std::string last_to_upstream;
  bool ended = false;
  std::string end_reason;
};

uint16_t closeCodeOf(const Decoded& d) {
  REQUIRE(d.op == opcode::kClose);
  REQUIRE(d.payload.size() >= 2);
  return static_cast<uint16_t>((static_cast<uint8_t>(d.payload[0]) << 8) |
                               static_cast<uint8_t>(d.payload[1]));
}

void feed(Tunnel& t, bool from_client, std::string bytes, uint64_t now) {
  t.onData(from_client, &bytes[0], bytes.size(), now);
}

// A route's message counters, as RouteMetrics keeps them.
struct Counted {
  metrics::Counter up, down;
  MessageCounters counters{&up, &down};
};

TEST_CASE("Tunnel: counts data messages each way in both modes", "[proxy][tunnel]") {
  auto mode = GENERATE(TunnelMode::Passthrough, TunnelMode::Frames);
  Owner o;
  Counted c;
  TunnelSetup setup;
  setup.mode = mode;
  setup.messages = &c.counters;
  Tunnel t(o, setup, 0);
  feed(t, true, cframe(opcode::kText, "a") + cframe(opcode::kBinary, "b", false), 1);
  feed(t, true, cframe(opcode::kPing, "") + cframe(opcode::kContinuation, "c"), 2);
  feed(t, false, sframe(opcode::kText, "d"), 3);
  CHECK(c.up.value() == 2);
  CHECK(c.down.value() == 1);
  feed(t, false, sframe(opcode::kClose, std::string("\x03\xe8", 2)), 4);
  CHECK(c.down.value() == 1);  // control frames are no messages
}

TEST_CASE("Tunnel: close frames wait for a frame boundary in passthrough", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;  // passthrough
  Tunnel t(o, setup, 0);
  std::string big = sframe(opcode::kBinary, std::string(1000, 'x'));
  feed(t, false, big.substr(0, 100), 1);  // the upstream is in the middle of a frame
  t.close(close_code::kGoingAway, "server going away", 2);
  CHECK(t.firstClose().by == CloseOrigin::Gateway);
  CHECK(t.firstClose().code == 1001);
  // The upstream got its (masked) close at once; the client's waits for the frame's end.
  auto up = decode(o.to_upstream, Role::Client);
  REQUIRE(up.size() == 1);
  CHECK(closeCodeOf(up[0]) == 1001);
  CHECK(up[0].masked);
  CHECK(o.to_client_ == big.substr(0, 100));
  feed(t, false, big.substr(100), 3);
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 2);
  CHECK(down[0].payload.size() == 1000);
  CHECK(closeCodeOf(down[1]) == 1001);
  // The replies are swallowed: neither peer gets a second close frame.
  std::string before_up = o.to_upstream, before_down = o.to_client_;
  feed(t, true, cframe(opcode::kClose, std::string("\x03\xe9", 2)), 4);
  CHECK_FALSE(o.ended);
  feed(t, false, sframe(opcode::kClose, std::string("\x03\xe9", 2)), 5);
  CHECK(o.to_upstream == before_up);
  CHECK(o.to_client_ == before_down);
  CHECK(o.ended);
  CHECK(o.end_reason == "close handshake complete");
}

TEST_CASE("Tunnel: a peer-initiated close is mediated in both modes", "[proxy][tunnel]") {
  auto mode = GENERATE(TunnelMode::Passthrough, TunnelMode::Frames);
  Owner o;
  TunnelSetup setup;
  setup.mode = mode;
  Tunnel t(o, setup, 0);
  std::string c = cframe(opcode::kClose, std::string("\x03\xe8", 2));
  std::string u = sframe(opcode::kClose, std::string("\x03\xe8", 2));
  CHECK(t.firstClose().by == CloseOrigin::None);
  feed(t, true, c, 1);
  CHECK(t.firstClose().by == CloseOrigin::Client);
  CHECK(t.firstClose().code == 1000);
  CHECK(o.to_upstream == c);
  CHECK(o.last_to_upstream.empty());  // the upstream has not answered yet: not the last bytes
  CHECK_FALSE(o.ended);
  CHECK(t.nextDue() == 1 + setup.close_timeout_ms);
  feed(t, false, u, 2);
  CHECK(o.to_client_ == u);
  CHECK(o.last_to_client == u);  // the reply completes the handshake: the FIN may go with it
  CHECK(o.ended);
}

TEST_CASE("Tunnel: the reply to an upstream's close is the last write to the upstream",
          "[proxy][tunnel]") {
  auto mode = GENERATE(TunnelMode::Passthrough, TunnelMode::Frames);
  Owner o;
  TunnelSetup setup;
  setup.mode = mode;
  Tunnel t(o, setup, 0);
  std::string u = sframe(opcode::kClose, std::string("\x03\xe8", 2));
  std::string c = cframe(opcode::kClose, std::string("\x03\xe8", 2));
  feed(t, true, cframe(opcode::kText, "hi"), 1);
  CHECK(o.last_to_upstream.empty());
  feed(t, false, u, 2);
  CHECK(o.last_to_client.empty());
  feed(t, true, c, 3);
  CHECK(t.firstClose().by == CloseOrigin::Upstream);  // the client's reply does not replace it
  CHECK(t.firstClose().code == 1000);
  CHECK(o.last_to_upstream == c);
  CHECK(o.last_to_client.empty());
  CHECK(o.ended);
}

TEST_CASE("Tunnel: timeouts.close bounds the wait for a reply", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;
  setup.close_timeout_ms = 1000;
  Tunnel t(o, setup, 0);
  t.close(close_code::kGoingAway, "bye", 10);
  CHECK(t.nextDue() == 1010);
  t.onTimer(1009);
  CHECK_FALSE(o.ended);
  t.onTimer(1010);
  CHECK(o.ended);
  CHECK(o.end_reason ==
        "close handshake not completed within timeouts.close: no close frame from either side");
}

TEST_CASE("Tunnel: the close deadline names the leg that did not answer", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;
  setup.close_timeout_ms = 1000;
  Tunnel t(o, setup, 0);
  CHECK_FALSE(t.discardsFrom(true));
  CHECK_FALSE(t.discardsFrom(false));
  t.close(close_code::kGoingAway, "bye", 10);
  // Both legs were at a frame boundary and got their close frame: nothing more goes to them, so
  // what either sends now goes nowhere.
  CHECK(t.discardsFrom(true));
  CHECK(t.discardsFrom(false));
  feed(t, false, sframe(opcode::kClose, std::string("\x03\xe9", 2)), 20);  // only one answer
  t.onTimer(1010);
  CHECK(o.ended);
  CHECK(o.end_reason ==
        "close handshake not completed within timeouts.close: no close frame from the client");
}

TEST_CASE("Tunnel: a leg mid-frame keeps receiving until its close frame can go",
          "[proxy][tunnel]") {
  auto mode = GENERATE(TunnelMode::Passthrough, TunnelMode::Frames);
  Owner o;
  TunnelSetup setup;
  setup.mode = mode;
  Tunnel t(o, setup, 0);
  const std::string big = sframe(opcode::kBinary, std::string(100, 'x'));
  feed(t, false, big.substr(0, 10), 5);  // the upstream is inside a frame towards the client
  t.close(close_code::kGoingAway, "bye", 10);
  CHECK(t.discardsFrom(true));         // the upstream got its close frame
  CHECK_FALSE(t.discardsFrom(false));  // the rest of the frame still goes to the client
  feed(t, false, big.substr(10), 20);
  CHECK(t.discardsFrom(false));  // then the client's close frame, and nothing after it
}

TEST_CASE("Tunnel: a close frame that never went out is not counted", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;  // passthrough
  setup.close_timeout_ms = 1000;
  Tunnel t(o, setup, 0);
  // Both peers are inside a frame when upgate decides to close: neither close frame can go.
  feed(t, false, sframe(opcode::kBinary, std::string(1000, 'x')).substr(0, 100), 1);
  feed(t, true, cframe(opcode::kBinary, std::string(1000, 'y')).substr(0, 100), 2);
  t.close(close_code::kGoingAway, "server going away", 3);
  CHECK(t.firstClose().by == CloseOrigin::None);  // the session counts a 1006
  t.onTimer(1003);
  CHECK(o.ended);
  CHECK(t.firstClose().by == CloseOrigin::None);
  CHECK(o.end_reason ==
        "close handshake not completed within timeouts.close: upgate's close frame found no "
        "frame boundary to go out at");
}

// A tunnel in `mode` whose keepalive pings after 1000 ms of quiet and waits 500 ms for a pong.
TunnelSetup keepaliveSetup(TunnelMode mode) {
  TunnelSetup setup;
  setup.mode = mode;
  setup.keepalive.interval = Millis{1000};
  setup.keepalive.timeout = Millis{500};
  return setup;
}

TEST_CASE("Tunnel: keepalive pings quiet legs and closes a dead one", "[proxy][tunnel]") {
  auto mode = GENERATE(TunnelMode::Passthrough, TunnelMode::Frames);
  Owner o;
  Tunnel t(o, keepaliveSetup(mode), 0);
  CHECK(t.nextDue() == 1000);
  t.onTimer(1000);
  auto up = decode(o.to_upstream, Role::Client);
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(up.size() == 1);
  REQUIRE(down.size() == 1);
  CHECK(up[0].op == opcode::kPing);
  CHECK(up[0].masked);
  CHECK(down[0].op == opcode::kPing);
  CHECK(down[0].payload == "upgate-keepalive");
  CHECK(t.nextDue() == 1500);
  // The client answers; the upstream does not.
  std::string pong = cframe(opcode::kPong, "upgate-keepalive");
  feed(t, true, pong, 1200);
  if (mode == TunnelMode::Frames) {
    CHECK(decode(o.to_upstream, Role::Client).size() == 1);  // the pong is swallowed
  } else {
    CHECK(decode(o.to_upstream, Role::Client).size() == 2);  // passed on (unsolicited pong)
  }
  t.onTimer(1500);
  CHECK_FALSE(o.ended);  // waits for the client's reply to the 1001
  down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 2);
  CHECK(closeCodeOf(down[1]) == 1001);
  feed(t, true, cframe(opcode::kClose, std::string("\x03\xe9", 2)), 1600);
  CHECK(o.ended);
  CHECK(o.end_reason == "upstream did not answer a ping");
}

TEST_CASE("Tunnel: a ping held back behind a frame leaves the leg to TCP", "[proxy][tunnel]") {
  auto mode = GENERATE(TunnelMode::Passthrough, TunnelMode::Frames);
  Owner o;
  Tunnel t(o, keepaliveSetup(mode), 0);
  // The upstream trickles a long frame to the quiet client: the client's ping has no boundary.
  std::string big = sframe(opcode::kBinary, std::string(1000, 'x'));
  feed(t, false, big.substr(0, 100), 0);
  t.onTimer(1000);
  auto up = decode(o.to_upstream, Role::Client);
  REQUIRE(up.size() == 1);  // both are quiet: the upstream is pinged at its boundary...
  CHECK(up[0].op == opcode::kPing);
  CHECK(o.to_client_ == big.substr(0, 100));  // ...the client cannot be
  REQUIRE(o.watched.size() == 1);
  CHECK(o.watched[0] == std::pair<bool, uint32_t>{true, 1500});  // interval + timeout
  feed(t, false, big.substr(100, 100), 1100);                    // the upstream is alive
  t.onTimer(1900);
  CHECK(o.watched.size() == 1);  // once per leg
  CHECK_FALSE(o.ended);
  SECTION("the frame ends: the ping goes out after it, and TCP's watch ends") {
    feed(t, false, big.substr(200), 2000);
    auto down = decode(o.to_client_, Role::Server);
    REQUIRE(down.size() == 2);
    CHECK(down[1].op == opcode::kPing);
    REQUIRE(o.watched.size() == 2);
    CHECK(o.watched[1] == std::pair<bool, uint32_t>{true, 0});
  }
  SECTION("the client sends something: no ping is wanted, and TCP's watch ends") {
    feed(t, true, cframe(opcode::kText, "hi"), 2000);
    REQUIRE(o.watched.size() == 2);
    CHECK(o.watched[1] == std::pair<bool, uint32_t>{true, 0});
    feed(t, false, big.substr(200), 2100);  // the frame ends: the client is not quiet, no ping
    CHECK(decode(o.to_client_, Role::Server).size() == 1);
  }
  SECTION("TCP gives up on the client: the upstream gets 1001, its reply ends the session") {
    REQUIRE(t.peerLost(/*client=*/true, 2000));
    std::string before = o.to_client_;
    up = decode(o.to_upstream, Role::Client);
    REQUIRE(up.size() == 2);
    CHECK(closeCodeOf(up[1]) == 1001);
    CHECK(up[1].payload.substr(2) == "client stopped acknowledging TCP");
    CHECK(t.firstClose().by == CloseOrigin::Gateway);
    CHECK(t.discardsFrom(false));  // what the upstream still sends goes nowhere...
    feed(t, false, big.substr(200), 2100);
    CHECK(o.to_client_ == before);  // ...not to the dead client
    CHECK_FALSE(o.ended);
    feed(t, false, sframe(opcode::kClose, std::string("\x03\xe9", 2)), 2200);
    CHECK(o.ended);
    CHECK(o.end_reason == "client stopped acknowledging TCP");
  }
}

TEST_CASE("Tunnel: a leg lost after a keepalive death keeps the first reason", "[proxy][tunnel]") {
  Owner o;
  Tunnel t(o, keepaliveSetup(TunnelMode::Passthrough), 0);
  t.onTimer(1000);  // both pinged
  feed(t, true, cframe(opcode::kPong, "upgate-keepalive"), 1100);
  t.onTimer(1500);  // the upstream did not answer: 1001 to the client
  REQUIRE(closeCodeOf(decode(o.to_client_, Role::Server).back()) == 1001);
  CHECK_FALSE(o.ended);
  SECTION("the dead leg's TCP gives up too: the client's reply is still awaited") {
    REQUIRE(t.peerLost(/*client=*/false, 1600));
    CHECK_FALSE(o.ended);
    feed(t, true, cframe(opcode::kClose, std::string("\x03\xe9", 2)), 1700);
    CHECK(o.ended);
  }
  SECTION("the client's TCP gives up: nothing is left to wait for") {
    REQUIRE(t.peerLost(/*client=*/true, 1600));
    CHECK(o.ended);
  }
  CHECK(o.end_reason == "upstream did not answer a ping");
}

TEST_CASE("Tunnel: a leg lost while the other one is done ends the session", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;  // passthrough, no keepalive: TCP's own retransmission limit
  Tunnel t(o, setup, 0);
  // The client's close frame went on to the upstream, whose reply is awaited when TCP gives up
  // on it: the client's answer is upgate's 1001, and nothing is left to wait for.
  feed(t, true, cframe(opcode::kClose, std::string("\x03\xe8", 2)), 1);
  CHECK_FALSE(o.ended);
  REQUIRE(t.peerLost(/*client=*/false, 2));
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 1);
  CHECK(closeCodeOf(down[0]) == 1001);
  CHECK(o.ended);
  CHECK(o.end_reason == "upstream stopped acknowledging TCP");
}

TEST_CASE("Tunnel: peer_pings answer (frames mode)", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;
  setup.mode = TunnelMode::Frames;
  setup.keepalive.peer_pings = PeerPings::Answer;
  Tunnel t(o, setup, 0);
  feed(t, true, cframe(opcode::kPing, "are you there"), 1);
  CHECK(o.to_upstream.empty());
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 1);
  CHECK(down[0].op == opcode::kPong);
  CHECK(down[0].payload == "are you there");
}

TEST_CASE("Tunnel: a violation closes both legs with their codes", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;
  setup.mode = TunnelMode::Frames;
  Tunnel t(o, setup, 0);
  feed(t, false, sframe(opcode::kText, "\xff"), 1);  // the upstream sends invalid UTF-8
  auto down = decode(o.to_client_, Role::Server);
  auto up = decode(o.to_upstream, Role::Client);
  REQUIRE(down.size() == 1);
  REQUIRE(up.size() == 1);
  CHECK(closeCodeOf(down[0]) == 1011);
  CHECK(closeCodeOf(up[0]) == 1007);
  CHECK(o.ended);
  // Counted as upgate's close, with the code the offender got.
  CHECK(t.firstClose().by == CloseOrigin::Gateway);
  CHECK(t.firstClose().code == 1007);
}

}  // namespace
}  // namespace upgate

namespace upgate {
namespace {

TEST_CASE("Tunnel: a long close reason is cut on a character boundary", "[proxy][tunnel]") {
  Owner o;
  TunnelSetup setup;
  Tunnel t(o, setup, 0);
  std::string euros;
  for (int i = 0; i < 34; ++i) euros += "\xe2\x82\xac";  // 102 bytes: byte 100 is mid-character
  t.close(close_code::kNormal, euros, 1);
  for (bool to_client : {true, false}) {
    auto frames =
        decode(to_client ? o.to_client_ : o.to_upstream, to_client ? Role::Server : Role::Client);
    REQUIRE(frames.size() == 1);
    std::string reason = frames[0].payload.substr(2);
    CHECK(reason.size() == 99);
    CHECK(isValidUtf8(reason));
  }
}

// ---- TcpBridge (tcp routes) --------------------------------------------------------------------

void feed(TcpBridge& b, bool from_client, std::string bytes, uint64_t now) {
  b.onData(from_client, &bytes[0], bytes.size(), now);
}

TunnelSetup bridgeSetup() {
  TunnelSetup s;
  s.max_message_size = 1024;
  s.close_timeout_ms = 5000;
  return s;
}

TEST_CASE("TcpBridge: messages become a byte stream, reads become binary messages",
          "[proxy][tcp]") {
  Owner o;
  Counted counted;
  TunnelSetup setup = bridgeSetup();
  setup.messages = &counted.counters;
  TcpBridge b(o, setup, 0);
  feed(b, true, cframe(opcode::kBinary, "abc") + cframe(opcode::kText, "d\xc3\xa9", false), 1);
  feed(b, true, cframe(opcode::kContinuation, "f"), 2);
  CHECK(o.to_upstream ==
        "abcd\xc3\xa9"
        "f");  // payloads only, unmasked, boundaries gone
  feed(b, false, std::string(300, 'x'), 3);
  feed(b, false, "yz", 4);
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 2);  // one binary message per read, unmasked
  CHECK(down[0].op == opcode::kBinary);
  CHECK(down[0].fin);
  CHECK_FALSE(down[0].masked);
  CHECK(down[0].payload == std::string(300, 'x'));
  CHECK(down[1].payload == "yz");
  // A frame split anywhere arrives the same way.
  std::string f = cframe(opcode::kBinary, "split me");
  for (char c : f) feed(b, true, std::string(1, c), 5);
  CHECK(o.to_upstream ==
        "abcd\xc3\xa9"
        "fsplit me");
  CHECK_FALSE(o.ended);
  CHECK(counted.up.value() == 3);    // "abc", "d\xc3\xa9f", "split me"
  CHECK(counted.down.value() == 2);  // one per upstream read
}

TEST_CASE("TcpBridge: pings are answered, pongs swallowed", "[proxy][tcp]") {
  Owner o;
  TcpBridge b(o, bridgeSetup(), 0);
  feed(b, true, cframe(opcode::kPing, "hi") + cframe(opcode::kPong, "x"), 1);
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 1);
  CHECK(down[0].op == opcode::kPong);
  CHECK(down[0].payload == "hi");
  CHECK(o.to_upstream.empty());
  // A read full of pings gets one pong, for the latest (a flood cannot queue a pong each).
  feed(b, true,
       cframe(opcode::kPing, "1") + cframe(opcode::kPing, "2") + cframe(opcode::kPing, "3"), 2);
  down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 2);
  CHECK(down[1].payload == "3");
}

TEST_CASE("TcpBridge: the client's close is echoed and ends the bridge", "[proxy][tcp]") {
  Owner o;
  TcpBridge b(o, bridgeSetup(), 0);
  feed(b, true,
       cframe(opcode::kClose, std::string("\x0f\xa0", 2)) + cframe(opcode::kBinary, "late"), 1);
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 1);
  CHECK(closeCodeOf(down[0]) == 4000);
  CHECK(b.closeReceivedFrom(true));
  CHECK_FALSE(b.closeReceivedFrom(false));
  CHECK(o.ended);
  CHECK(o.end_reason == "client closed (4000)");
  CHECK(o.to_upstream.empty());  // nothing after the close frame is relayed
  CHECK(b.firstClose().by == CloseOrigin::Client);
  CHECK(b.firstClose().code == 4000);
}

TEST_CASE("TcpBridge: the upstream's end is a 1000 close awaiting the client's reply",
          "[proxy][tcp]") {
  Owner o;
  TcpBridge b(o, bridgeSetup(), 10);
  CHECK(b.nextDue() == UINT64_MAX);
  CHECK_FALSE(b.discardsFrom(true));
  CHECK_FALSE(b.discardsFrom(false));
  CHECK(b.upstreamEnded(20));
  CHECK(b.discardsFrom(true));  // after upgate's close frame nothing is relayed either way
  CHECK(b.discardsFrom(false));
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 1);
  CHECK(closeCodeOf(down[0]) == 1000);
  CHECK(down[0].payload.substr(2) == "upstream closed");
  CHECK(b.firstClose().by == CloseOrigin::Gateway);  // upgate wrote the close frame
  CHECK(b.firstClose().code == 1000);
  CHECK(b.takeRearm());
  CHECK(b.nextDue() == 20 + 5000);
  CHECK_FALSE(o.ended);
  feed(b, false, "dropped", 21);  // nothing follows our close frame
  CHECK(decode(o.to_client_, Role::Server).size() == 1);
  SECTION("the reply ends it, without a second close frame") {
    feed(b, true, cframe(opcode::kClose, std::string("\x03\xe8", 2)), 30);
    CHECK(o.ended);
    CHECK(decode(o.to_client_, Role::Server).size() == 1);
  }
  SECTION("no reply: timeouts.close ends it") {
    b.onTimer(20 + 4999);
    CHECK_FALSE(o.ended);
    b.onTimer(20 + 5000);
    CHECK(o.ended);
    CHECK(o.end_reason == "the client did not answer the close frame in time");
  }
}

TEST_CASE("TcpBridge: violations close with their code", "[proxy][tcp]") {
  auto codeAfter = [](const std::string& bytes) {
    Owner o;
    TcpBridge b(o, bridgeSetup(), 0);
    feed(b, true, bytes, 1);
    CHECK(o.ended);
    auto down = decode(o.to_client_, Role::Server);
    REQUIRE(down.size() == 1);
    return closeCodeOf(down[0]);
  };
  CHECK(codeAfter(sframe(opcode::kBinary, "unmasked")) == 1002);
  CHECK(codeAfter(cframe(opcode::kText, "\xc3\x28")) == 1007);
  CHECK(codeAfter(cframe(opcode::kBinary, std::string(1025, 'x'))) == 1009);
  CHECK(codeAfter(cframe(opcode::kContinuation, "x")) == 1002);
  CHECK(codeAfter(cframe(opcode::kClose, std::string("\x03\xed", 2))) == 1002);  // 1005 sent
}

TEST_CASE("TcpBridge: keepalive pings a quiet client and ends a silent one", "[proxy][tcp]") {
  Owner o;
  TunnelSetup setup = bridgeSetup();
  setup.keepalive.interval = Millis(1000);
  setup.keepalive.timeout = Millis(500);
  TcpBridge b(o, setup, 0);
  CHECK(b.nextDue() == 1000);
  feed(b, true, cframe(opcode::kBinary, "x"), 600);  // activity moves the ping
  CHECK(b.nextDue() == 1600);
  b.onTimer(1600);
  auto down = decode(o.to_client_, Role::Server);
  REQUIRE(down.size() == 1);
  CHECK(down[0].op == opcode::kPing);
  CHECK(b.nextDue() == 2100);
  SECTION("an answer keeps it") {
    feed(b, true, cframe(opcode::kPong, down[0].payload), 1700);
    b.onTimer(2100);
    CHECK_FALSE(o.ended);
    CHECK(b.nextDue() == 2700);
  }
  SECTION("silence ends it with 1001") {
    b.onTimer(2100);
    CHECK(o.ended);
    auto all = decode(o.to_client_, Role::Server);
    REQUIRE(all.size() == 2);
    CHECK(closeCodeOf(all[1]) == 1001);
  }
}

}  // namespace
}  // namespace upgate
