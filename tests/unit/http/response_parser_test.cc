#include "http/response_parser.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace upgate {
namespace {

const std::string k101 =
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    "Sec-WebSocket-Protocol: chat\r\n"
    "\r\n";

// An unmasked server text frame "Hello" (RFC 6455 §5.7).
const std::string kFrame = std::string("\x81\x05Hello", 7);

constexpr size_t kMaxHead = 4096;
constexpr size_t kMaxBody = 1024;

struct Outcome {
  ParseResult result = ParseResult::NeedMore;
  size_t end = 0;  // absolute offset of the first leftover byte, on Complete
  std::string leftover;
  ResponseHead head;
  std::string body;
  std::string reason;
};

// Feeds `input` in pieces ending at `cuts`, stopping at Complete or Error; optionally signals EOF
// when the input is exhausted without a verdict.
Outcome parsePieces(const std::string& input, const std::vector<size_t>& cuts, bool eof = false,
                    size_t max_head = kMaxHead, size_t max_body = kMaxBody) {
  ResponseParser parser(max_head, max_body);
  Outcome out;
  size_t start = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(input.size());
  for (size_t end : ends) {
    out.result = parser.feed(input.data() + start, end - start);
    if (out.result == ParseResult::Complete) {
      out.end = start + parser.consumed();
      out.leftover = input.substr(out.end);
      break;
    }
    if (out.result == ParseResult::Error) {
      break;
    }
    start = end;
  }
  if (out.result == ParseResult::NeedMore && eof) {
    out.result = parser.finishEof();
    out.end = input.size();
  }
  out.head = parser.head();
  out.body = parser.body();
  out.reason = parser.errorReason();
  return out;
}

Outcome parseWhole(const std::string& input, bool eof = false, size_t max_head = kMaxHead,
                   size_t max_body = kMaxBody) {
  return parsePieces(input, {}, eof, max_head, max_body);
}

std::vector<size_t> everyByte(const std::string& input) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < input.size(); ++i) {
    cuts.push_back(i);
  }
  return cuts;
}

void checkSwitch(const Outcome& o, const std::string& leftover) {
  REQUIRE(o.result == ParseResult::Complete);
  CHECK(o.end == k101.size());
  CHECK(o.leftover == leftover);
  CHECK(o.head.status == 101);
  CHECK(o.head.reason == "Switching Protocols");
  REQUIRE(o.head.headers.size() == 4);
  CHECK(o.head.headers[2].name == "Sec-WebSocket-Accept");
  CHECK(o.head.headers[2].value == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  CHECK(o.body.empty());
}

TEST_CASE("response_parser: 101 with the first frames as leftover", "[http]") {
  const std::string leftover = GENERATE(std::string(), kFrame, kFrame + kFrame);
  const std::string input = k101 + leftover;
  SECTION("whole") {
    checkSwitch(parseWhole(input), leftover);
  }
  SECTION("byte by byte") {
    checkSwitch(parsePieces(input, everyByte(input)), leftover);
  }
  SECTION("split at every offset") {
    for (size_t cut = 1; cut < input.size(); ++cut) {
      CAPTURE(cut);
      checkSwitch(parsePieces(input, {cut}), leftover);
    }
  }
}

TEST_CASE("response_parser: a 101 never has a body, whatever its headers say", "[http]") {
  const std::string head =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Content-Length: 5\r\n\r\n";
  const Outcome o = parseWhole(head + kFrame);
  REQUIRE(o.result == ParseResult::Complete);
  CHECK(o.end == head.size());
  CHECK(o.leftover == kFrame);
}

TEST_CASE("response_parser: a 101 without upgrade headers still stops at its head", "[http]") {
  const std::string head = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
  const Outcome o = parseWhole(head + kFrame);
  REQUIRE(o.result == ParseResult::Complete);
  CHECK(o.head.status == 101);
  CHECK(o.leftover == kFrame);
}

TEST_CASE("response_parser: interim 1xx responses are skipped", "[http]") {
  const std::string interim =
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
  const std::string input = interim + k101 + kFrame;
  for (const Outcome& o : {parseWhole(input), parsePieces(input, everyByte(input))}) {
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.end == interim.size() + k101.size());
    CHECK(o.leftover == kFrame);
    CHECK(o.head.status == 101);
    CHECK(o.head.headers.size() == 4);
    CHECK(findHeader(o.head.headers, "Link") == nullptr);
  }
}

TEST_CASE("response_parser: 403 with a Content-Length body", "[http]") {
  const std::string message =
      "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nnope!\n";
  const std::string input = message + "junk";
  for (size_t cut = 0; cut < input.size(); ++cut) {
    CAPTURE(cut);
    const Outcome o = cut == 0 ? parseWhole(input) : parsePieces(input, {cut});
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.end == message.size());
    CHECK(o.leftover == "junk");
    CHECK(o.head.status == 403);
    CHECK(o.head.reason == "Forbidden");
    CHECK(o.body == "nope!\n");
  }
}

TEST_CASE("response_parser: chunked body is decoded, trailers dropped", "[http]") {
  const std::string message =
      "HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n";
  const Outcome whole = parseWhole(message);
  REQUIRE(whole.result == ParseResult::Complete);
  CHECK(whole.end == message.size());
  CHECK(whole.body == "Wikipedia in \r\n\r\nchunks.");
  CHECK(whole.head.headers.size() == 1);
  CHECK(findHeader(whole.head.headers, "X-Trailer") == nullptr);
  const Outcome bytewise = parsePieces(message, everyByte(message));
  REQUIRE(bytewise.result == ParseResult::Complete);
  CHECK(bytewise.body == whole.body);
  CHECK(bytewise.head.headers.size() == 1);
}

TEST_CASE("response_parser: body delimited by EOF", "[http]") {
  const std::string message = "HTTP/1.1 503 Service Unavailable\r\nX-A: b\r\n\r\ntry later";
  SECTION("completes on finishEof") {
    for (const Outcome& o :
         {parseWhole(message, true), parsePieces(message, everyByte(message), true)}) {
      REQUIRE(o.result == ParseResult::Complete);
      CHECK(o.head.status == 503);
      CHECK(o.body == "try later");
    }
  }
  SECTION("needs more until then") {
    ResponseParser parser(kMaxHead, kMaxBody);
    CHECK(parser.feed(message.data(), message.size()) == ParseResult::NeedMore);
    CHECK(parser.finishEof() == ParseResult::Complete);
    CHECK(parser.consumed() == 0);
    CHECK(parser.finishEof() == ParseResult::Complete);
    CHECK(parser.feed("x", 1) == ParseResult::Complete);
    CHECK(parser.body() == "try later");
  }
}

TEST_CASE("response_parser: EOF before the response is complete", "[http]") {
  struct Row {
    const char* name;
    const char* input;
    const char* reason;
  };
  const Row row = GENERATE(values<Row>({
      {"nothing at all", "", "upstream closed without sending a response"},
      {"inside the status line", "HTTP/1.1 40", "upstream closed before the response was complete"},
      {"inside the headers", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
       "upstream closed before the response was complete"},
      {"short Content-Length body", "HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nnope",
       "upstream closed before the response was complete"},
      {"unfinished chunked body",
       "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno",
       "upstream closed before the response was complete"},
  }));
  CAPTURE(row.name);
  const Outcome o = parseWhole(row.input, true);
  REQUIRE(o.result == ParseResult::Error);
  CHECK(o.reason == row.reason);
}

TEST_CASE("response_parser: oversized responses are errors", "[http]") {
  SECTION("head over the limit, complete or not, whole or byte by byte") {
    const std::string big = "HTTP/1.1 101 Switching Protocols\r\nX-Big: " + std::string(200, 'b');
    for (const std::string& input : {big, big + "\r\n\r\n"}) {
      for (const Outcome& o :
           {parseWhole(input, false, 100), parsePieces(input, everyByte(input), false, 100)}) {
        REQUIRE(o.result == ParseResult::Error);
        CHECK(o.reason == "upstream response head exceeds 100 bytes");
      }
    }
  }
  SECTION("interim responses count towards the head limit") {
    std::string input;
    for (int i = 0; i < 10; ++i) {
      input += "HTTP/1.1 100 Continue\r\n\r\n";  // 25 bytes each
    }
    CHECK(parseWhole(input + k101, false, 200).result == ParseResult::Error);
    CHECK(parseWhole(input + k101, false, input.size() + k101.size()).result ==
          ParseResult::Complete);
  }
  SECTION("body over the limit") {
    const std::string body(kMaxBody + 1, 'x');
    const std::string lengths[] = {
        "HTTP/1.1 403 Forbidden\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
            body,
        "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n" +
            body.substr(0, 512) + "\r\n201\r\n" + body.substr(0, 513) + "\r\n0\r\n\r\n",
        "HTTP/1.1 403 Forbidden\r\n\r\n" + body,
    };
    for (const std::string& input : lengths) {
      const Outcome o = parseWhole(input, true);
      REQUIRE(o.result == ParseResult::Error);
      CHECK(o.reason == "upstream response body exceeds 1024 bytes");
    }
  }
  SECTION("a body of exactly the limit is fine") {
    const std::string body(kMaxBody, 'x');
    const Outcome o = parseWhole("HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + body);
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.body == body);
  }
}

TEST_CASE("response_parser: garbage is an error", "[http]") {
  const std::string input =
      GENERATE(std::string("SSH-2.0-OpenSSH_9.2\r\n"), std::string("HTTP/1.1 abc OK\r\n\r\n"),
               std::string("HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"),
               std::string("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
               std::string("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"),
               std::string("\x15\x03\x03\x00\x02\x02\x46", 7));
  CAPTURE(input);
  const Outcome o = parseWhole(input);
  REQUIRE(o.result == ParseResult::Error);
  CHECK(o.reason.rfind("malformed upstream response: ", 0) == 0);
  ResponseParser parser(kMaxHead, kMaxBody);
  REQUIRE(parser.feed(input.data(), input.size()) == ParseResult::Error);
  CHECK(parser.feed(k101.data(), k101.size()) == ParseResult::Error);
  CHECK(parser.finishEof() == ParseResult::Error);
}

TEST_CASE("response_parser: lenient header shapes are normalised", "[http]") {
  const Outcome o = parseWhole(
      "HTTP/1.1 404 \r\nX-Spaced : v \r\nX-Folded: a\r\n  b\r\nContent-Length: 0\r\n\r\n");
  REQUIRE(o.result == ParseResult::Complete);
  CHECK(o.head.reason.empty());
  REQUIRE(o.head.headers.size() == 3);
  CHECK(o.head.headers[0].name == "X-Spaced");
  CHECK(o.head.headers[0].value == "v");
  CHECK(o.head.headers[1].name == "X-Folded");
  CHECK(o.head.headers[1].value == "a  b");
}

TEST_CASE("response_parser: needsEof names a body only the end of the connection ends", "[http]") {
  ResponseParser eof(kMaxHead, kMaxBody);
  const std::string a = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc";
  REQUIRE(eof.feed(a.data(), a.size()) == ParseResult::NeedMore);
  CHECK(eof.needsEof());
  CHECK(eof.finishEof() == ParseResult::Complete);
  CHECK_FALSE(eof.needsEof());  // complete now
  ResponseParser sized(kMaxHead, kMaxBody);
  const std::string b = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab";
  REQUIRE(sized.feed(b.data(), b.size()) == ParseResult::NeedMore);
  CHECK_FALSE(sized.needsEof());
  ResponseParser head_only(kMaxHead, kMaxBody);
  const std::string c = "HTTP/1.0 200 OK\r\nX: y\r\n";
  REQUIRE(head_only.feed(c.data(), c.size()) == ParseResult::NeedMore);
  CHECK_FALSE(head_only.needsEof());  // no head yet
}

TEST_CASE("response_parser: 204 and 304 have no body", "[http]") {
  const std::string status =
      GENERATE(std::string("204 No Content"), std::string("304 Not Modified"));
  const std::string head = "HTTP/1.1 " + status + "\r\nContent-Length: 4\r\n\r\n";
  const Outcome o = parseWhole(head + "more");
  REQUIRE(o.result == ParseResult::Complete);
  CHECK(o.end == head.size());
  CHECK(o.body.empty());
}

}  // namespace
}  // namespace upgate
