#include "bridge/subscription.h"

#include <catch2/catch.hpp>
#include <string>

#include "websocket/frame_writer.h"

using namespace upgate;

// What a subscriber is sent, byte for byte. The sending itself (queues, overflow) runs on a
// worker loop and is covered by the integration tests.

TEST_CASE("subscription: SSE events carry the id and one data field per line", "[bridge]") {
  ChannelMessage m;
  m.seq = 7;
  m.payload = "a\r\nb\nc\rd";
  CHECK(encodeSseEvent(m) == "id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
  m.payload = "";
  CHECK(encodeSseEvent(m) == "id: 7\ndata: \n\n");
}

TEST_CASE("subscription: binary messages reach SSE readers as base64 `binary` events", "[bridge]") {
  ChannelMessage m;
  m.seq = 9;
  m.binary = true;
  m.payload = std::string("\x89PNG\r\n\x1a\n\x00\xff", 10);
  CHECK(encodeSseEvent(m) == "id: 9\nevent: binary\ndata: iVBORw0KGgoA/w==\n\n");
  m.payload = "";
  CHECK(encodeSseEvent(m) == "id: 9\nevent: binary\ndata: \n\n");
  m.payload = "ab";
  CHECK(encodeSseEvent(m) == "id: 9\nevent: binary\ndata: YWI=\n\n");
}

TEST_CASE("subscription: the overflow notice says how many were missed", "[bridge]") {
  const std::string notice = R"({"type":"overflow","count":{count},"again":"{count}"})";
  const std::string text = R"({"type":"overflow","count":12,"again":"12"})";
  SECTION("WebSocket: one unmasked text frame") {
    std::string frame = encodeOverflowNotice(notice, 12, /*sse=*/false);
    REQUIRE(frame.size() == 2 + text.size());
    CHECK(static_cast<uint8_t>(frame[0]) == (0x80 | opcode::kText));
    CHECK(static_cast<uint8_t>(frame[1]) == text.size());  // < 126, no mask bit
    CHECK(frame.substr(2) == text);
  }
  SECTION("SSE: an overflow event, without an id (it is no channel message)") {
    CHECK(encodeOverflowNotice(notice, 12, /*sse=*/true) ==
          "event: overflow\ndata: " + text + "\n\n");
    CHECK(encodeOverflowNotice("missed\n{count}", 3, true) ==
          "event: overflow\ndata: missed\ndata: 3\n\n");
  }
  SECTION("no placeholder: the text as it is") {
    CHECK(encodeOverflowNotice("{counted}", 3, true) == "event: overflow\ndata: {counted}\n\n");
  }
}
