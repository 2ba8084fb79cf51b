#include "http/request_parser.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace upgate {
namespace {

const std::string kUpgradeRequest =
    "GET /chat?room=lobby&x=%20y HTTP/1.1\r\n"
    "Host: example.com:8080\r\n"
    "User-Agent: test/1.0\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "X-Spaced:   padded value \t\r\n"
    "X-Empty:\r\n"
    "x-repeat: 1\r\n"
    "X-Repeat: 2\r\n"
    "\r\n";

// A masked client text frame "Hello" (RFC 6455 §5.7), pipelined right after the head.
const std::string kFrame = std::string("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);

constexpr size_t kMaxHead = 8192;
constexpr size_t kMaxHeaders = 64;

// Outcome of parsing one byte stream cut into pieces.
struct Outcome {
  ParseResult result = ParseResult::NeedMore;
  size_t head_end = 0;   // absolute offset of the first leftover byte, on Complete
  std::string leftover;  // bytes of the stream after the request
  RequestHead head;
  int status = 0;
  std::string reason;
};

// Feeds `input` in pieces ending at the given cut offsets (ascending, < input.size()), stopping
// at the first Complete or Error as a caller would.
Outcome parsePieces(const std::string& input, const std::vector<size_t>& cuts,
                    size_t max_head = kMaxHead, size_t max_headers = kMaxHeaders) {
  RequestParser parser(max_head, max_headers);
  Outcome out;
  size_t start = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(input.size());
  for (size_t end : ends) {
    out.result = parser.feed(input.data() + start, end - start);
    if (out.result == ParseResult::Complete) {
      out.head_end = start + parser.consumed();
      out.leftover = input.substr(out.head_end);
      out.head = parser.head();
      return out;
    }
    if (out.result == ParseResult::Error) {
      out.status = parser.errorStatus();
      out.reason = parser.errorReason();
      return out;
    }
    start = end;
  }
  return out;
}

Outcome parseWhole(const std::string& input, size_t max_head = kMaxHead,
                   size_t max_headers = kMaxHeaders) {
  return parsePieces(input, {}, max_head, max_headers);
}

Outcome parseBytewise(const std::string& input, size_t max_head = kMaxHead,
                      size_t max_headers = kMaxHeaders) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < input.size(); ++i) {
    cuts.push_back(i);
  }
  return parsePieces(input, cuts, max_head, max_headers);
}

void requireSameHead(const RequestHead& a, const RequestHead& b) {
  CHECK(a.method == b.method);
  CHECK(a.target == b.target);
  CHECK(a.path == b.path);
  CHECK(a.query == b.query);
  CHECK(a.http_major == b.http_major);
  CHECK(a.http_minor == b.http_minor);
  CHECK(a.upgrade == b.upgrade);
  REQUIRE(a.headers.size() == b.headers.size());
  for (size_t i = 0; i < a.headers.size(); ++i) {
    CHECK(a.headers[i].name == b.headers[i].name);
    CHECK(a.headers[i].value == b.headers[i].value);
  }
}

TEST_CASE("request_parser: parses a WebSocket upgrade request", "[http]") {
  const Outcome o = parseWhole(kUpgradeRequest);
  REQUIRE(o.result == ParseResult::Complete);
  CHECK(o.head_end == kUpgradeRequest.size());
  CHECK(o.leftover.empty());
  const RequestHead& h = o.head;
  CHECK(h.method == "GET");
  CHECK(h.target == "/chat?room=lobby&x=%20y");
  CHECK(h.path == "/chat");
  CHECK(h.query == "room=lobby&x=%20y");
  CHECK(h.http_major == 1);
  CHECK(h.http_minor == 1);
  CHECK(h.upgrade);
  REQUIRE(h.headers.size() == 11);
  CHECK(h.headers[0].name == "Host");
  CHECK(h.headers[0].value == "example.com:8080");
  CHECK(h.headers[7].name == "X-Spaced");
  CHECK(h.headers[7].value == "padded value");
  CHECK(h.headers[8].name == "X-Empty");
  CHECK(h.headers[8].value.empty());
  CHECK(h.headers[9].value == "1");
  CHECK(h.headers[10].name == "X-Repeat");
  CHECK(h.headers[10].value == "2");
}

TEST_CASE("request_parser: any split gives the same head and leftover", "[http]") {
  const Outcome reference = parseWhole(kUpgradeRequest);
  REQUIRE(reference.result == ParseResult::Complete);

  const std::string trailer = GENERATE(std::string(), kFrame, kFrame + kFrame);
  const std::string input = kUpgradeRequest + trailer;
  CAPTURE(trailer.size());

  SECTION("whole") {
    const Outcome o = parseWhole(input);
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head_end == kUpgradeRequest.size());
    CHECK(o.leftover == trailer);
    requireSameHead(o.head, reference.head);
  }
  SECTION("byte by byte") {
    const Outcome o = parseBytewise(input);
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head_end == kUpgradeRequest.size());
    CHECK(o.leftover == trailer);
    requireSameHead(o.head, reference.head);
  }
  SECTION("two feeds, split at every offset") {
    for (size_t cut = 1; cut < input.size(); ++cut) {
      CAPTURE(cut);
      const Outcome o = parsePieces(input, {cut});
      REQUIRE(o.result == ParseResult::Complete);
      CHECK(o.head_end == kUpgradeRequest.size());
      CHECK(o.leftover == trailer);
      requireSameHead(o.head, reference.head);
    }
  }
}

TEST_CASE("request_parser: consumed() is relative to the last feed", "[http]") {
  RequestParser parser(kMaxHead, kMaxHeaders);
  const std::string input = kUpgradeRequest + kFrame;
  const size_t first = 10;
  REQUIRE(parser.feed(input.data(), first) == ParseResult::NeedMore);
  CHECK(parser.consumed() == 0);
  REQUIRE(parser.feed(input.data() + first, input.size() - first) == ParseResult::Complete);
  CHECK(parser.consumed() == kUpgradeRequest.size() - first);
  SECTION("later feeds return Complete and consume nothing") {
    CHECK(parser.feed(kFrame.data(), kFrame.size()) == ParseResult::Complete);
    CHECK(parser.consumed() == 0);
    CHECK(parser.head().method == "GET");
  }
}

TEST_CASE("request_parser: requests that are not upgrades", "[http]") {
  SECTION("plain GET completes; a pipelined request stays in the leftover") {
    const std::string first = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const std::string second = "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    const Outcome o = parseWhole(first + second);
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head_end == first.size());
    CHECK(o.leftover == second);
    CHECK_FALSE(o.head.upgrade);
    CHECK(o.head.path == "/a");
    CHECK(o.head.query.empty());
  }
  SECTION("a request with a Content-Length body completes at the end of the head") {
    const std::string head = "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
    const Outcome o = parseWhole(head + "hello");
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head_end == head.size());
    CHECK(o.leftover == "hello");
    CHECK(o.head.method == "POST");
  }
  SECTION("a chunked request completes at the end of the head") {
    const std::string head = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    const Outcome o = parseBytewise(head + "5\r\nhello\r\n0\r\n\r\n");
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head_end == head.size());
  }
  SECTION("HTTP/1.0 parses; the handshake check rejects it") {
    const Outcome o = parseWhole("GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head.http_major == 1);
    CHECK(o.head.http_minor == 0);
  }
  SECTION("absolute-form target") {
    const Outcome o = parseWhole("GET http://example.com/ws/x?a=b HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(o.result == ParseResult::Complete);
    CHECK(o.head.target == "http://example.com/ws/x?a=b");
    CHECK(o.head.path == "/ws/x");
    CHECK(o.head.query == "a=b");
    // RFC 9112 §3.2.2: the target's authority wins over Host (userinfo is dropped).
    REQUIRE(o.head.headers.size() == 1);
    CHECK(o.head.headers[0].value == "example.com");
    const Outcome u = parseWhole("GET http://u:p@site.test:8080?q HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(u.result == ParseResult::Complete);
    CHECK(u.head.headers[0].value == "site.test:8080");
    CHECK(u.head.path == "/");
  }
  SECTION("Upgrade header without Connection: upgrade is not an llhttp upgrade") {
    const Outcome o = parseWhole("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nrest");
    REQUIRE(o.result == ParseResult::Complete);
    CHECK_FALSE(o.head.upgrade);
    CHECK(o.leftover == "rest");
  }
}

TEST_CASE("request_parser: splitTarget", "[http]") {
  struct Row {
    const char* target;
    const char* path;
    const char* query;
  };
  const Row row = GENERATE(values<Row>({
      {"/", "/", ""},
      {"/a/b", "/a/b", ""},
      {"/a?", "/a", ""},
      {"/a?x=1&y", "/a", "x=1&y"},
      {"/a?x#frag", "/a", "x"},
      {"/a#frag", "/a", ""},
      {"*", "*", ""},
      {"example.com:443", "", ""},
      {"http://h", "/", ""},
      {"https://h:8443?q", "/", "q"},
      {"http://h/p%2Fq?r", "/p%2Fq", "r"},
  }));
  CAPTURE(row.target);
  std::string path = "stale";
  std::string query = "stale";
  splitTarget(row.target, path, query);
  CHECK(path == row.path);
  CHECK(query == row.query);
}

TEST_CASE("request_parser: 431 for a head over the byte limit", "[http]") {
  const size_t limit = kUpgradeRequest.size();
  SECTION("a head of exactly the limit is fine") {
    CHECK(parseWhole(kUpgradeRequest, limit).result == ParseResult::Complete);
    CHECK(parseBytewise(kUpgradeRequest + kFrame, limit).result == ParseResult::Complete);
  }
  SECTION("one byte more is 431, whole or byte by byte") {
    const std::string longer = "GET /chat?room=lobby&x=%20yz" + kUpgradeRequest.substr(27);
    REQUIRE(longer.size() == limit + 1);
    for (const Outcome& o : {parseWhole(longer, limit), parseBytewise(longer, limit)}) {
      REQUIRE(o.result == ParseResult::Error);
      CHECK(o.status == 431);
      CHECK(o.reason == "header section exceeds " + std::to_string(limit) + " bytes");
    }
  }
  SECTION("a head that never completes") {
    const std::string endless = "GET / HTTP/1.1\r\nX-Long: " + std::string(200, 'a');
    for (const Outcome& o : {parseWhole(endless, 100), parseBytewise(endless, 100)}) {
      REQUIRE(o.result == ParseResult::Error);
      CHECK(o.status == 431);
    }
    // Within the limit it just waits for more.
    CHECK(parseWhole(endless, 1000).result == ParseResult::NeedMore);
  }
  SECTION("the limit counts across feeds") {
    RequestParser parser(50, kMaxHeaders);
    const std::string part = "GET / HTTP/1.1\r\nX: " + std::string(20, 'a');  // 39 bytes
    REQUIRE(parser.feed(part.data(), part.size()) == ParseResult::NeedMore);
    REQUIRE(parser.feed(part.data() + 19, 11) == ParseResult::NeedMore);  // 50 bytes so far
    CHECK(parser.feed("a", 1) == ParseResult::Error);
    CHECK(parser.errorStatus() == 431);
    CHECK(parser.feed("\r\n\r\n", 4) == ParseResult::Error);  // stays failed
    CHECK(parser.errorStatus() == 431);
  }
}

TEST_CASE("request_parser: 431 for too many header fields", "[http]") {
  const std::string head = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  CHECK(parseWhole(head, kMaxHead, 3).result == ParseResult::Complete);
  for (const Outcome& o : {parseWhole(head, kMaxHead, 2), parseBytewise(head, kMaxHead, 2)}) {
    REQUIRE(o.result == ParseResult::Error);
    CHECK(o.status == 431);
    CHECK(o.reason == "more than 2 header fields");
  }
}

TEST_CASE("request_parser: malformed requests", "[http]") {
  struct Row {
    const char* name;
    std::string input;
    int status;
  };
  const Row row = GENERATE(values<Row>({
      {"lower-case method", "get / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"unknown method", "FETCH / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"no version (HTTP/0.9)", "GET /\r\n\r\n", 400},
      {"bad version", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 400},
      {"garbage after version", "GET / HTTP/1.1 x\r\nHost: x\r\n\r\n", 400},
      {"not HTTP at all", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400},
      {"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
      {"tab before colon", "GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", 400},
      {"bare CR in value", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400},
      {"bare LF in value", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400},
      {"LF-only lines", "GET / HTTP/1.1\nHost: x\n\n", 400},
      {"CR without LF ending the head", "GET / HTTP/1.1\r\nHost: x\r\n\rX", 400},
      {"raw UTF-8 in target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"control char in target", "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"control char in value", "GET / HTTP/1.1\r\nHost: a\x01z\r\n\r\n", 400},
      {"NUL in value", std::string("GET / HTTP/1.1\r\nHost: a\0z\r\n\r\n", 30), 400},
      {"quote in field name", "GET / HTTP/1.1\r\nHo\"st: x\r\n\r\n", 400},
      {"empty field name", "GET / HTTP/1.1\r\n: x\r\n\r\n", 400},
      {"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400},
      {"whitespace before first header", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400},
      {"Content-Length with Transfer-Encoding",
       "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
       400},
      {"two Content-Length", "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
       400},
      {"bad Content-Length", "POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n", 400},
      {"Transfer-Encoding not ending in chunked",
       "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
      {"HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
      {"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
  }));
  CAPTURE(row.name);
  const Outcome whole = parseWhole(row.input);
  REQUIRE(whole.result == ParseResult::Error);
  CHECK(whole.status == row.status);
  CHECK_FALSE(whole.reason.empty());
  // The verdict does not depend on how the bytes arrive.
  const Outcome bytewise = parseBytewise(row.input);
  REQUIRE(bytewise.result == ParseResult::Error);
  CHECK(bytewise.status == row.status);
  for (size_t cut = 1; cut < row.input.size(); ++cut) {
    CAPTURE(cut);
    const Outcome split = parsePieces(row.input, {cut});
    REQUIRE(split.result == ParseResult::Error);
    CHECK(split.status == row.status);
  }
}

TEST_CASE("request_parser: error reasons are precise", "[http]") {
  CHECK(parseWhole("GET / HTTP/1.1\r\nHost : x\r\n\r\n").reason ==
        "whitespace between header field name and colon");
  CHECK(parseWhole("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n").reason ==
        "obs-fold (header line starting with whitespace) is not allowed");
  CHECK(parseWhole("GET /\r\n\r\n").reason == "request line has no HTTP version");
  CHECK(parseWhole("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n").reason.rfind("malformed request: ", 0) ==
        0);
}

TEST_CASE("request_parser: an empty feed changes nothing", "[http]") {
  RequestParser parser(kMaxHead, kMaxHeaders);
  CHECK(parser.feed(nullptr, 0) == ParseResult::NeedMore);
  CHECK(parser.feed(kUpgradeRequest.data(), kUpgradeRequest.size()) == ParseResult::Complete);
  CHECK(parser.consumed() == kUpgradeRequest.size());
}

}  // namespace
}  // namespace upgate
