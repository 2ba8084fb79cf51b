#include "websocket/message_validator.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "websocket/close_code.h"
#include "websocket/frame_writer.h"

namespace upgate {
namespace {

// Frame bytes as a client sends them (masked), via the writer.
std::string frame(bool fin, uint8_t op, const std::string& payload, bool rsv1 = false) {
  const uint8_t key[4] = {0xA1, 0x02, 0xB3, 0x04};
  char h[kMaxFrameHeader];
  const size_t n = writeFrameHeader(h, op, fin, rsv1, payload.size(), key);
  std::string f(h, n);
  std::string body = payload;
  maskPayload(&body[0], body.size(), key);
  return f + body;
}

std::string closePayload(uint16_t code, const std::string& reason) {
  std::string p;
  p.push_back(static_cast<char>(code >> 8));
  p.push_back(static_cast<char>(code & 0xFF));
  return p + reason;
}

// What a session's sink does: parser events into the validator, first error wins.
class ValidatingSink : public FrameSink {
 public:
  explicit ValidatingSink(MessageValidator* v) : v_(v) {}
  ParseError error;
  std::vector<std::string> controls;  // "op:payload" of each control frame, after validation

  bool onFrameHeader(const FrameHeader& h, const char*, size_t) override {
    return keep(v_->onFrameHeader(h));
  }
  bool onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t) override {
    return keep(v_->onFramePayload(h, data, len));
  }
  bool onFrameEnd(const FrameHeader& h) override {
    if (!keep(v_->onFrameEnd(h))) {
      return false;
    }
    if (isControlOpcode(h.opcode)) {
      controls.push_back(std::to_string(h.opcode) + ":" + std::string(v_->controlPayload()));
    }
    return true;
  }

 private:
  bool keep(ParseError e) {
    if (e.code != 0) {
      error = e;
      return false;
    }
    return true;
  }
  MessageValidator* v_;
};

// Runs the stream cut into pieces of `step` bytes (0: whole).
ParseError validate(const std::string& stream, size_t step, uint64_t max_message,
                    MessageValidator* validator = nullptr,
                    std::vector<std::string>* controls = nullptr) {
  MessageValidator local(max_message);
  MessageValidator* v = validator != nullptr ? validator : &local;
  ValidatingSink sink(v);
  FrameParser parser(Role::Client, {}, true);
  std::string buf = stream;
  size_t pos = 0;
  while (pos < buf.size()) {
    const size_t n = step == 0 ? buf.size() - pos : std::min(step, buf.size() - pos);
    const ParseError e = parser.feed(&buf[pos], n, sink);
    if (e.code != 0) {
      return e;
    }
    if (sink.error.code != 0) {
      return sink.error;
    }
    pos += n;
  }
  if (controls != nullptr) {
    *controls = sink.controls;
  }
  return sink.error;
}

struct Row {
  const char* name;
  std::string stream;
  uint64_t max_message;
  uint16_t code;
};

TEST_CASE("message_validator: table, whole, byte by byte and in 3-byte pieces", "[websocket]") {
  const uint64_t big = 1 << 20;
  const Row row = GENERATE_REF(values<Row>({
      {"text", frame(true, 1, "Hello"), big, 0},
      {"empty text", frame(true, 1, ""), big, 0},
      {"fragmented text", frame(false, 1, "Hel") + frame(true, 0, "lo"), big, 0},
      {"fragmented with empty pieces",
       frame(false, 2, "") + frame(false, 0, "") + frame(true, 0, ""), big, 0},
      {"ping and pong between fragments",
       frame(false, 1, "a") + frame(true, 9, "p") + frame(false, 0, "b") + frame(true, 10, "") +
           frame(true, 0, "c"),
       big, 0},
      {"close between fragments", frame(false, 1, "a") + frame(true, 8, closePayload(1000, "")),
       big, 0},
      {"continuation without start", frame(true, 0, "x"), big, 1002},
      {"continuation after a finished message", frame(true, 1, "a") + frame(true, 0, "b"), big,
       1002},
      {"text inside a fragmented text", frame(false, 1, "a") + frame(true, 1, "b"), big, 1002},
      {"binary inside a fragmented text", frame(false, 1, "a") + frame(true, 2, "b"), big, 1002},
      {"text inside a fragmented binary, after a ping",
       frame(false, 2, "a") + frame(true, 9, "") + frame(false, 1, "b"), big, 1002},
      {"invalid UTF-8", frame(true, 1, "ab\xC0\xAF"), big, 1007},
      {"surrogate", frame(true, 1, "\xED\xA0\x80"), big, 1007},
      {"UTF-8 split across fragments", frame(false, 1, "\xCE") + frame(true, 0, "\xBA"), big, 0},
      {"4-byte character over three fragments",
       frame(false, 1, "\xF0") + frame(false, 0, "\x9F\x98") + frame(true, 0, "\x80"), big, 0},
      {"text ends inside a character", frame(true, 1, "ok\xE2\x82"), big, 1007},
      {"fragmented text ends inside a character",
       frame(false, 1, "ok") + frame(true, 0, "\xE2\x82"), big, 1007},
      {"invalid UTF-8 in a first fragment fails before fin",
       frame(false, 1, "\xFF") + frame(true, 0, "\x80"), big, 1007},
      {"binary is not UTF-8 checked", frame(true, 2, "\xFF\xC0"), big, 0},
      {"message at the limit", frame(false, 2, "12345") + frame(true, 0, "67890"), 10, 0},
      {"message over the limit across fragments",
       frame(false, 2, "123456") + frame(true, 0, "78901"), 10, 1009},
      {"single frame over the limit", frame(true, 1, "12345678901"), 10, 1009},
      {"control frames do not count",
       frame(false, 2, "1234567890") + frame(true, 9, "ping") + frame(true, 0, ""), 10, 0},
      {"limit resets per message", frame(true, 2, "1234567890") + frame(true, 2, "1234567890"), 10,
       0},
      {"close without payload", frame(true, 8, ""), big, 0},
      {"close 1000", frame(true, 8, closePayload(1000, "bye")), big, 0},
      {"close with a 1-byte payload", frame(true, 8, "\x03"), big, 1002},
      {"close reason invalid UTF-8", frame(true, 8, closePayload(1000, "\xFF")), big, 1007},
      {"close reason truncated UTF-8", frame(true, 8, closePayload(1000, "\xC3")), big, 1007},
      {"close reason valid UTF-8", frame(true, 8, closePayload(1001, "\xCE\xBA")), big, 0},
  }));
  CAPTURE(row.name);
  for (size_t step : {size_t{0}, size_t{1}, size_t{3}}) {
    CAPTURE(step);
    const ParseError e = validate(row.stream, step, row.max_message);
    CHECK(e.code == row.code);
  }
}

TEST_CASE("message_validator: close codes", "[websocket]") {
  struct CodeRow {
    uint16_t code;
    bool valid;
  };
  const CodeRow row = GENERATE(values<CodeRow>({
      {0, false},    {999, false},  {1000, true},  {1001, true},   {1002, true}, {1003, true},
      {1004, false}, {1005, false}, {1006, false}, {1007, true},   {1008, true}, {1009, true},
      {1010, true},  {1011, true},  {1012, true},  {1013, true},   {1014, true}, {1015, false},
      {1016, false}, {1100, false}, {2000, false}, {2999, false},  {3000, true}, {3999, true},
      {4000, true},  {4999, true},  {5000, false}, {65535, false},
  }));
  CAPTURE(row.code);
  CHECK(isValidWireCloseCode(row.code) == row.valid);
  // A server sends the same codes but 1010 (a client's), as the plugin ABI's macro says.
  CHECK(isSendableCloseCode(row.code) == (row.valid && row.code != 1010));
  MessageValidator v(1024);
  const ParseError e = validate(frame(true, 8, closePayload(row.code, "r")), 0, 1024, &v);
  CHECK(e.code == (row.valid ? 0 : 1002));
  if (row.valid) {
    CHECK(v.closeReceived());
    CHECK(v.closeCode() == row.code);
    CHECK(v.closeReason() == "r");
  }
}

TEST_CASE("message_validator: empty close reports no status", "[websocket]") {
  MessageValidator v(1024);
  CHECK(validate(frame(true, 8, ""), 1, 1024, &v).code == 0);
  CHECK(v.closeReceived());
  CHECK(v.closeCode() == close_code::kNoStatus);
  CHECK(v.closeReason().empty());
}

TEST_CASE("message_validator: control payloads are collected across reads", "[websocket]") {
  std::vector<std::string> controls;
  const std::string stream = frame(false, 1, "a") + frame(true, 9, std::string(125, 'p')) +
                             frame(true, 0, "b") + frame(true, 10, "pong");
  CHECK(validate(stream, 7, 1024, nullptr, &controls).code == 0);
  REQUIRE(controls.size() == 2);
  CHECK(controls[0] == "9:" + std::string(125, 'p'));
  CHECK(controls[1] == "10:pong");
}

TEST_CASE("message_validator: message state accessors", "[websocket]") {
  MessageValidator v(100);
  FrameHeader h;
  h.fin = false;
  h.opcode = opcode::kBinary;
  h.payload_len = 4;
  CHECK(v.onFrameHeader(h).code == 0);
  CHECK(v.inMessage());
  CHECK(v.messageOpcode() == opcode::kBinary);
  CHECK(v.onFramePayload(h, "abcd", 4).code == 0);
  CHECK(v.onFrameEnd(h).code == 0);
  CHECK(v.inMessage());
  CHECK(v.messageBytes() == 4);
  h.fin = true;
  h.opcode = opcode::kContinuation;
  h.payload_len = 0;
  CHECK(v.onFrameHeader(h).code == 0);
  CHECK(v.onFramePayload(h, "", 0).code == 0);
  CHECK(v.onFrameEnd(h).code == 0);
  CHECK_FALSE(v.inMessage());
  v.reset();
  CHECK(v.messageBytes() == 0);
}

// Compressed messages: the caller feeds inflated bytes; here they are given directly.
TEST_CASE("message_validator: compressed text is checked on the inflated bytes", "[websocket]") {
  FrameHeader first;
  first.fin = false;
  first.rsv1 = true;
  first.opcode = opcode::kText;
  first.payload_len = 3;
  FrameHeader last;
  last.fin = true;
  last.opcode = opcode::kContinuation;
  last.payload_len = 2;

  SECTION("valid, with a character split across inflate outputs") {
    MessageValidator v(100);
    REQUIRE(v.onFrameHeader(first).code == 0);
    CHECK(v.messageCompressed());
    // Wire bytes are compressed data: never UTF-8 checked.
    CHECK(v.onFramePayload(first, "\xFF\xFF\xFF", 3).code == 0);
    CHECK(v.onInflatedPayload("ab\xCE", 3).code == 0);
    CHECK(v.onFrameEnd(first).code == 0);
    REQUIRE(v.onFrameHeader(last).code == 0);
    CHECK(v.onFramePayload(last, "\x00\x00", 2).code == 0);
    CHECK(v.onInflatedPayload("\xBA", 1).code == 0);
    CHECK(v.onFrameEnd(last).code == 0);
    CHECK(v.messageBytes() == 4);
  }
  SECTION("invalid inflated text") {
    MessageValidator v(100);
    REQUIRE(v.onFrameHeader(first).code == 0);
    CHECK(v.onInflatedPayload("\xED\xA0\x80", 3).code == close_code::kInvalidPayload);
  }
  SECTION("inflated text ends inside a character") {
    MessageValidator v(100);
    REQUIRE(v.onFrameHeader(first).code == 0);
    CHECK(v.onInflatedPayload("ab\xCE", 3).code == 0);
    CHECK(v.onFrameEnd(first).code == 0);
    REQUIRE(v.onFrameHeader(last).code == 0);
    CHECK(v.onFrameEnd(last).code == close_code::kInvalidPayload);
  }
  SECTION("inflated size over the limit") {
    MessageValidator v(10);
    REQUIRE(v.onFrameHeader(first).code == 0);
    CHECK(v.onInflatedPayload("123456", 6).code == 0);
    CHECK(v.onInflatedPayload("12345", 5).code == close_code::kMessageTooBig);
  }
}

}  // namespace
}  // namespace upgate
