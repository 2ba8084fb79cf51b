#include "websocket/handshake.h"

#include <catch2/catch.hpp>
#include <string>

#include "http/request_parser.h"

namespace upgate {
namespace {

RequestHead parseRequest(const std::string& raw) {
  RequestParser parser(8192, 100);
  REQUIRE(parser.feed(raw.data(), raw.size()) == ParseResult::Complete);
  return parser.head();
}

ResponseHead parseResponse(const std::string& raw) {
  ResponseParser parser(8192, 8192);
  REQUIRE(parser.feed(raw.data(), raw.size()) == ParseResult::Complete);
  return parser.head();
}

TEST_CASE("handshake: RFC 6455 §1.3 accept vector", "[websocket]") {
  CHECK(computeAccept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  // RFC 6455 §4.2.2 uses the key verbatim: another key, another accept.
  CHECK(computeAccept("x3JJHMbDL1EzLkh9GBhXDw==") == "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
  CHECK(computeAccept("").size() == 28);
}

TEST_CASE("handshake: isValidKey", "[websocket]") {
  struct Row {
    std::string key;
    bool valid;
  };
  const Row row = GENERATE(values<Row>({
      {"dGhlIHNhbXBsZSBub25jZQ==", true},
      {"AAAAAAAAAAAAAAAAAAAAAA==", true},
      {"+/+/+/+/+/+/+/+/+/+/+w==", true},
      {"dGhlIHNhbXBsZSBub25jZR==", true},  // non-zero pad bits: still 16 bytes
      {"", false},
      {"dGhlIHNhbXBsZSBub25jZQ=", false},    // 23 characters
      {"dGhlIHNhbXBsZSBub25jZQ===", false},  // 25 characters
      {"dGhlIHNhbXBsZSBub25jZQ", false},     // unpadded
      {"dGhlIHNhbXBsZSBub25jZQAA", false},   // 18 bytes
      {"dGhlIHNhbXBsZSBub25j====", false},   // misplaced padding
      {"dGhlIHNhbXBsZSBub25jZ===", false},
      {"dGhlIHNhbXBsZSBub25jZQ==\r", false},
      {"dGhlIHNhbXBsZS-ub25jZQ==", false},  // base64url alphabet
      {"dGhlIHNhbXBsZSBub25j ZQ=", false},
      {"c2hvcnQ=", false},                      // 5 bytes
      {"dGhlIHNhbXBsZSBub25jZWRkZA==", false},  // 19 bytes
  }));
  CAPTURE(row.key);
  CHECK(isValidKey(row.key) == row.valid);
}

const std::string kGoodRequest =
    "GET /chat HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Version: 13\r\n";

TEST_CASE("handshake: isUpgradeRequest", "[websocket]") {
  CHECK(isUpgradeRequest(parseRequest(kGoodRequest + "\r\n")));
  CHECK(isUpgradeRequest(parseRequest("GET / HTTP/1.1\r\nUpgrade: h2c, WebSocket\r\n\r\n")));
  CHECK_FALSE(isUpgradeRequest(parseRequest("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n")));
  CHECK_FALSE(isUpgradeRequest(parseRequest("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
}

// Replaces the first line starting with `prefix` (case-sensitive) by `line` (empty: remove it).
std::string editHeader(std::string raw, const std::string& prefix, const std::string& line) {
  const size_t at = raw.find("\r\n" + prefix);
  REQUIRE(at != std::string::npos);
  const size_t end = raw.find("\r\n", at + 2);
  raw.replace(at + 2, end + 2 - (at + 2), line.empty() ? "" : line + "\r\n");
  return raw;
}

TEST_CASE("handshake: checkClientHandshake table", "[websocket]") {
  struct Row {
    const char* name;
    std::string request;  // head without the final blank line
    int status;
    const char* reason;
  };
  const std::string& g = kGoodRequest;
  const Row row = GENERATE_REF(values<Row>({
      {"good", g, 0, ""},
      {"good, token lists and case",
       editHeader(editHeader(g, "Connection", "connection: keep-alive, UPGRADE"), "Upgrade",
                  "upgrade: WebSocket"),
       0, ""},
      {"good with Content-Length: 0", g + "Content-Length: 0\r\n", 0, ""},
      {"POST", "POST" + g.substr(3), 400, "WebSocket handshake must use GET, not POST"},
      {"HTTP/1.0", "GET /chat HTTP/1.0" + g.substr(g.find("\r\n")), 400,
       "WebSocket handshake requires HTTP/1.1"},
      {"no Host", editHeader(g, "Host", ""), 400, "missing Host header"},
      {"two Host", g + "Host: other\r\n", 400, "more than one Host header"},
      {"no Upgrade", editHeader(g, "Upgrade", ""), 400,
       "Upgrade header must include \"websocket\""},
      {"Upgrade: h2c", editHeader(g, "Upgrade", "Upgrade: h2c"), 400,
       "Upgrade header must include \"websocket\""},
      {"no Connection", editHeader(g, "Connection", ""), 400,
       "Connection header must include \"Upgrade\""},
      {"Connection: keep-alive", editHeader(g, "Connection", "Connection: keep-alive"), 400,
       "Connection header must include \"Upgrade\""},
      {"no key", editHeader(g, "Sec-WebSocket-Key", ""), 400, "missing Sec-WebSocket-Key header"},
      {"two keys", g + "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", 400,
       "more than one Sec-WebSocket-Key header"},
      {"short key", editHeader(g, "Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ="), 400,
       "Sec-WebSocket-Key must be 16 bytes base64"},
      {"empty key", editHeader(g, "Sec-WebSocket-Key", "Sec-WebSocket-Key:"), 400,
       "Sec-WebSocket-Key must be 16 bytes base64"},
      {"no version", editHeader(g, "Sec-WebSocket-Version", ""), 400,
       "missing Sec-WebSocket-Version header"},
      {"two versions", g + "Sec-WebSocket-Version: 13\r\n", 400,
       "more than one Sec-WebSocket-Version header"},
      {"version 8", editHeader(g, "Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"), 426,
       "unsupported Sec-WebSocket-Version (only 13 is supported)"},
      {"version list", editHeader(g, "Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8"), 426,
       "unsupported Sec-WebSocket-Version (only 13 is supported)"},
      {"body", g + "Content-Length: 4\r\n", 400,
       "WebSocket handshake request must not have a body"},
      {"chunked body", g + "Transfer-Encoding: chunked\r\n", 400,
       "WebSocket handshake request must not have a body"},
  }));
  CAPTURE(row.name);
  const HandshakeVerdict v = checkClientHandshake(parseRequest(row.request + "\r\n"));
  CHECK(v.status == row.status);
  CHECK(v.reason == row.reason);
  if (v.status == 426) {
    REQUIRE(v.headers.size() == 1);
    CHECK(v.headers[0].name == "Sec-WebSocket-Version");
    CHECK(v.headers[0].value == "13");
  } else {
    CHECK(v.headers.empty());
  }
}

TEST_CASE("handshake: HTTP/2.0 in a hand-built head is 505", "[websocket]") {
  RequestHead head = parseRequest(kGoodRequest + "\r\n");
  head.http_major = 2;
  head.http_minor = 0;
  CHECK(checkClientHandshake(head).status == 505);
}

const std::string kGood101 =
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    "Sec-WebSocket-Protocol: chat\r\n";

TEST_CASE("handshake: checkUpstreamSwitch table", "[websocket]") {
  struct Row {
    const char* name;
    std::string response;  // head without the final blank line
    int status;
    const char* reason;
  };
  const std::string& g = kGood101;
  const Row row = GENERATE_REF(values<Row>({
      {"good", g, 0, ""},
      {"good without subprotocol", editHeader(g, "Sec-WebSocket-Protocol", ""), 0, ""},
      {"good with extensions", g + "Sec-WebSocket-Extensions: permessage-deflate\r\n", 0, ""},
      {"good, case of Upgrade/Connection",
       editHeader(editHeader(g, "Upgrade", "upgrade: WebSocket"), "Connection",
                  "connection: upgrade"),
       0, ""},
      {"second offered subprotocol",
       editHeader(g, "Sec-WebSocket-Protocol", "Sec-WebSocket-Protocol: superchat"), 0, ""},
      {"not 101", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", 502,
       "upstream answered 200 instead of 101"},
      {"no Upgrade", editHeader(g, "Upgrade", ""), 502,
       "upstream 101 lacks \"Upgrade: websocket\""},
      {"no Connection", editHeader(g, "Connection", ""), 502,
       "upstream 101 lacks \"Connection: Upgrade\""},
      {"no accept", editHeader(g, "Sec-WebSocket-Accept", ""), 502,
       "upstream 101 lacks Sec-WebSocket-Accept"},
      {"two accepts", g + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", 502,
       "upstream 101 has more than one Sec-WebSocket-Accept"},
      {"wrong accept",
       editHeader(g, "Sec-WebSocket-Accept", "Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk="),
       502, "upstream Sec-WebSocket-Accept does not match Sec-WebSocket-Key"},
      {"subprotocol not offered",
       editHeader(g, "Sec-WebSocket-Protocol", "Sec-WebSocket-Protocol: mqtt"), 502,
       "upstream chose a subprotocol the client did not offer"},
      {"subprotocol differs in case",
       editHeader(g, "Sec-WebSocket-Protocol", "Sec-WebSocket-Protocol: Chat"), 502,
       "upstream chose a subprotocol the client did not offer"},
      {"subprotocol list",
       editHeader(g, "Sec-WebSocket-Protocol", "Sec-WebSocket-Protocol: chat, superchat"), 502,
       "upstream chose a subprotocol the client did not offer"},
      {"two subprotocols", g + "Sec-WebSocket-Protocol: superchat\r\n", 502,
       "upstream 101 has more than one Sec-WebSocket-Protocol"},
  }));
  CAPTURE(row.name);
  const RequestHead client = parseRequest(kGoodRequest + "\r\n");
  const HandshakeVerdict v = checkUpstreamSwitch(parseResponse(row.response + "\r\n"), client);
  CHECK(v.status == row.status);
  CHECK(v.reason == row.reason);
}

TEST_CASE("handshake: a subprotocol the client never offered any of", "[websocket]") {
  const RequestHead client =
      parseRequest(editHeader(kGoodRequest, "Sec-WebSocket-Protocol", "") + "\r\n");
  const HandshakeVerdict v = checkUpstreamSwitch(parseResponse(kGood101 + "\r\n"), client);
  CHECK(v.status == 502);
  CHECK(v.reason == "upstream chose a subprotocol the client did not offer");
  // Offers spread over several header lines count too.
  const RequestHead split =
      parseRequest(editHeader(kGoodRequest, "Sec-WebSocket-Protocol",
                              "Sec-WebSocket-Protocol: superchat\r\nSec-WebSocket-Protocol: chat") +
                   "\r\n");
  CHECK(checkUpstreamSwitch(parseResponse(kGood101 + "\r\n"), split).status == 0);
}

}  // namespace
}  // namespace upgate
