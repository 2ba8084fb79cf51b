#include "http/response_writer.h"

#include <catch2/catch.hpp>
#include <string>

#include "http/request_parser.h"

namespace upgate {
namespace {

TEST_CASE("response_writer: reasonPhrase", "[http]") {
  CHECK(reasonPhrase(101) == "Switching Protocols");
  CHECK(reasonPhrase(400) == "Bad Request");
  CHECK(reasonPhrase(426) == "Upgrade Required");
  CHECK(reasonPhrase(431) == "Request Header Fields Too Large");
  CHECK(reasonPhrase(502) == "Bad Gateway");
  CHECK(reasonPhrase(505) == "HTTP Version Not Supported");
  CHECK(reasonPhrase(499).empty());
}

TEST_CASE("response_writer: errorResponse exact bytes", "[http]") {
  CHECK(errorResponse(400, "Sec-WebSocket-Key must be 16 bytes base64") ==
        "HTTP/1.1 400 Bad Request\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 42\r\n"
        "Connection: close\r\n"
        "\r\n"
        "Sec-WebSocket-Key must be 16 bytes base64\n");
  CHECK(errorResponse(426, "unsupported", {{"Sec-WebSocket-Version", "13"}}) ==
        "HTTP/1.1 426 Upgrade Required\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 12\r\n"
        "Connection: close\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
        "unsupported\n");
  CHECK(errorResponse(404, "") ==
        "HTTP/1.1 404 Not Found\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 1\r\n"
        "Connection: close\r\n"
        "\r\n"
        "\n");
}

TEST_CASE("response_writer: errorResponse filters unsafe extra headers", "[http]") {
  const HeaderList extra = {
      {"WWW-Authenticate", "Bearer realm=\"chat\""},
      {"X-Evil", "a\r\nSet-Cookie: x=1"},
      {"Bad Name", "v"},
      {"content-length", "999"},
      {"Connection", "keep-alive"},
      {"Content-Type", "application/json"},
      {"Transfer-Encoding", "chunked"},
      {"Retry-After", "5"},
  };
  CHECK(errorResponse(401, "no token", extra) ==
        "HTTP/1.1 401 Unauthorized\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 9\r\n"
        "Connection: close\r\n"
        "WWW-Authenticate: Bearer realm=\"chat\"\r\n"
        "Retry-After: 5\r\n"
        "\r\n"
        "no token\n");
}

TEST_CASE("response_writer: errorResponse with an unknown or invalid status", "[http]") {
  CHECK(errorResponse(499, "x").rfind("HTTP/1.1 499 \r\n", 0) == 0);
  CHECK(errorResponse(42, "x").rfind("HTTP/1.1 500 Internal Server Error\r\n", 0) == 0);
}

TEST_CASE("response_writer: switchingResponse keeps end-to-end headers only", "[http]") {
  ResponseHead up;
  up.status = 101;
  up.reason = "Web Socket Protocol Handshake";
  up.headers = {
      {"Upgrade", "WebSocket"},
      {"Connection", "Upgrade, X-Internal"},
      {"Keep-Alive", "timeout=5"},
      {"Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
      {"Sec-WebSocket-Protocol", "chat"},
      {"Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits=10"},
      {"X-Internal", "secret"},
      {"Content-Length", "0"},
      {"Set-Cookie", "sid=1"},
      {"Transfer-Encoding", "chunked"},
  };
  CHECK(switchingResponse(up) ==
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        "Sec-WebSocket-Protocol: chat\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10\r\n"
        "Set-Cookie: sid=1\r\n"
        "\r\n");
}

TEST_CASE("response_writer: relayedResponse", "[http]") {
  ResponseHead up;
  up.status = 403;
  up.reason = "Go Away";
  up.headers = {
      {"Content-Type", "application/json"}, {"Content-Length", "17"}, {"Connection", "keep-alive"},
      {"Keep-Alive", "timeout=5"},          {"X-Request-Id", "abc"},
  };
  SECTION("status, reason, end-to-end headers and a fresh Content-Length") {
    CHECK(relayedResponse(up, "{\"error\":\"nope\"}\n") ==
          "HTTP/1.1 403 Go Away\r\n"
          "Content-Type: application/json\r\n"
          "X-Request-Id: abc\r\n"
          "Content-Length: 17\r\n"
          "Connection: close\r\n"
          "\r\n"
          "{\"error\":\"nope\"}\n");
  }
  SECTION("an empty upstream reason gets the standard phrase") {
    up.reason.clear();
    up.headers.clear();
    CHECK(relayedResponse(up, "") ==
          "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  }
  SECTION("204 has neither Content-Length nor body") {
    up.status = 204;
    up.reason = "No Content";
    up.headers = {{"Content-Length", "0"}, {"Transfer-Encoding", "chunked"}};
    CHECK(relayedResponse(up, "") == "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
  }
}

TEST_CASE("response_writer: an error response parses back", "[http]") {
  const std::string bytes = errorResponse(431, "header section exceeds 16384 bytes");
  ResponseParser parser(4096, 4096);
  REQUIRE(parser.feed(bytes.data(), bytes.size()) == ParseResult::Complete);
  CHECK(parser.consumed() == bytes.size());
  CHECK(parser.head().status == 431);
  CHECK(parser.body() == "header section exceeds 16384 bytes\n");
}

}  // namespace
}  // namespace upgate
