#include "http/forwarding.h"

#include <catch2/catch.hpp>
#include <string>

#include "http/request_parser.h"

namespace upgate {
namespace {

RequestHead parse(const std::string& raw) {
  RequestParser parser(8192, 100);
  REQUIRE(parser.feed(raw.data(), raw.size()) == ParseResult::Complete);
  return parser.head();
}

const char* const kClientHead =
    "GET /chat?room=1 HTTP/1.1\r\n"
    "Host: chat.example.com\r\n"
    "Connection: keep-alive, Upgrade, X-Hop\r\n"
    "Upgrade: websocket\r\n"
    "Keep-Alive: timeout=5\r\n"
    "Proxy-Connection: keep-alive\r\n"
    "TE: trailers\r\n"
    "X-Hop: drop me\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "Origin: https://chat.example.com\r\n"
    "Cookie: sid=42\r\n"
    "\r\n";

TEST_CASE("forwarding: exact upstream request for a plain client", "[http]") {
  ForwardInfo info;
  info.client_ip = "192.0.2.7";
  info.client_port = 51000;
  RequestHead head = parse(kClientHead);
  dropConnectionNominated(head.headers, true);  // as the session does
  CHECK(upstreamUpgradeRequest(head, info) ==
        "GET /chat?room=1 HTTP/1.1\r\n"
        "Host: chat.example.com\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: chat, superchat\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        "Origin: https://chat.example.com\r\n"
        "Cookie: sid=42\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: websocket\r\n"
        "X-Forwarded-For: 192.0.2.7\r\n"
        "X-Forwarded-Proto: http\r\n"
        "X-Forwarded-Host: chat.example.com\r\n"
        "Forwarded: for=192.0.2.7;proto=http;host=chat.example.com\r\n"
        "\r\n");
}

TEST_CASE("forwarding: existing proxy headers are extended, not trusted blindly", "[http]") {
  const RequestHead head = parse(
      "GET / HTTP/1.1\r\n"
      "Host: example.com:8443\r\n"
      "X-Forwarded-For: 203.0.113.1\r\n"
      "X-Forwarded-Proto: https\r\n"
      "X-Forwarded-Host: public.example\r\n"
      "x-forwarded-for: 198.51.100.2, 198.51.100.3\r\n"
      "Forwarded: for=203.0.113.1;proto=https\r\n"
      "Upgrade: websocket\r\n"
      "Connection: Upgrade\r\n"
      "Content-Length: 0\r\n"
      "\r\n");
  ForwardInfo info;
  info.client_ip = "2001:db8::1";
  info.tls = true;
  info.listener_host = "10.0.0.5";
  CHECK(upstreamUpgradeRequest(head, info) ==
        "GET / HTTP/1.1\r\n"
        "Host: example.com:8443\r\n"
        "X-Forwarded-Host: public.example\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: websocket\r\n"
        "X-Forwarded-For: 203.0.113.1, 198.51.100.2, 198.51.100.3, 2001:db8::1\r\n"
        "X-Forwarded-Proto: https\r\n"
        "Forwarded: for=203.0.113.1;proto=https, "
        "for=\"[2001:db8::1]\";by=10.0.0.5;proto=https;host=\"example.com:8443\"\r\n"
        "\r\n");
}

TEST_CASE("forwarding: Forwarded node quoting", "[http]") {
  RequestHead head = parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  ForwardInfo info;
  SECTION("IPv6 for= and by= are bracketed and quoted") {
    info.client_ip = "fe80::1%eth0";
    info.listener_host = "::1";
    const std::string out = upstreamUpgradeRequest(head, info);
    CHECK(out.find("Forwarded: for=\"[fe80::1%eth0]\";by=\"[::1]\";proto=http;host=h\r\n") !=
          std::string::npos);
    CHECK(out.find("X-Forwarded-For: fe80::1%eth0\r\n") != std::string::npos);
  }
  SECTION("an unknown client is \"unknown\"") {
    const std::string out = upstreamUpgradeRequest(head, info);
    CHECK(out.find("Forwarded: for=unknown;proto=http;host=h\r\n") != std::string::npos);
    CHECK(out.find("X-Forwarded-For: unknown\r\n") != std::string::npos);
  }
  SECTION("without Host there is no host= and no X-Forwarded-Host") {
    head.headers.clear();
    info.client_ip = "192.0.2.1";
    const std::string out = upstreamUpgradeRequest(head, info);
    CHECK(out.find("Forwarded: for=192.0.2.1;proto=http\r\n") != std::string::npos);
    CHECK(out.find("X-Forwarded-Host") == std::string::npos);
  }
}

TEST_CASE("forwarding: Connection cannot strip what the handshake needs", "[http]") {
  RequestHead head = parse(
      "GET / HTTP/1.1\r\n"
      "Host: h\r\n"
      "Connection: Upgrade, Host, Sec-WebSocket-Key, Cookie\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Cookie: a=b\r\n"
      "\r\n");
  dropConnectionNominated(head.headers, true);
  const std::string out = upstreamUpgradeRequest(head, ForwardInfo{"192.0.2.1", 1, false, ""});
  CHECK(out.find("Host: h\r\n") != std::string::npos);
  CHECK(out.find("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") != std::string::npos);
  CHECK(out.find("Cookie") == std::string::npos);
}

TEST_CASE("forwarding: dropConnectionNominated removes the client's nominations only", "[http]") {
  const std::string raw =
      "POST / HTTP/1.1\r\n"
      "Host: h\r\n"
      "Connection: keep-alive, X-A, host, content-length, TE, sec-websocket-key, X-Upgate-User\r\n"
      "Connection: x-b, x-forwarded-for\r\n"
      "Keep-Alive: timeout=5\r\n"
      "TE: trailers\r\n"
      "X-A: 1\r\n"
      "Content-Length: 0\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "x-a: 2\r\n"
      "X-B: 3\r\n"
      "X-Upgate-User: mallory\r\n"
      "X-Forwarded-For: 203.0.113.1\r\n"
      "X-C: kept\r\n"
      "\r\n";
  auto names = [](const HeaderList& headers) {
    std::string out;
    for (const Header& h : headers) out += h.name + ";";
    return out;
  };
  SECTION("a plain request (the proxy headers stay: upgate extends them itself)") {
    RequestHead head = parse(raw);
    dropConnectionNominated(head.headers, false);
    CHECK(names(head.headers) ==
          "Host;Connection;Connection;Keep-Alive;TE;Content-Length;X-Forwarded-For;X-C;");
  }
  SECTION("an upgrade keeps Sec-WebSocket-*") {
    RequestHead head = parse(raw);
    dropConnectionNominated(head.headers, true);
    CHECK(names(head.headers) ==
          "Host;Connection;Connection;Keep-Alive;TE;Content-Length;Sec-WebSocket-Key;"
          "X-Forwarded-For;X-C;");
  }
  SECTION("nothing named that goes: unchanged") {
    RequestHead head = parse(
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, close\r\n"
        "Upgrade: websocket\r\nX-A: 1\r\n\r\n");
    const HeaderList before = head.headers;
    dropConnectionNominated(head.headers, false);
    CHECK(names(head.headers) == names(before));
  }
}

TEST_CASE("forwarding: a header the gateway adds under a nominated name goes upstream", "[http]") {
  // The client names X-Upgate-User in Connection to strip the identity a plugin vouches for.
  RequestHead head = parse(
      "GET / HTTP/1.1\r\n"
      "Host: h\r\n"
      "Connection: Upgrade, X-Upgate-User, X-Plugin\r\n"
      "Upgrade: websocket\r\n"
      "X-Plugin: from the client\r\n"
      "\r\n");
  dropConnectionNominated(head.headers, true);
  head.headers.push_back({"X-Upgate-User", "alice"});
  head.headers.push_back({"X-Plugin", "from a plugin"});
  const std::string out = upstreamUpgradeRequest(head, ForwardInfo{"192.0.2.1", 1, false, ""});
  CHECK(out.find("X-Upgate-User: alice\r\n") != std::string::npos);
  CHECK(out.find("X-Plugin: from a plugin\r\n") != std::string::npos);
  CHECK(out.find("from the client") == std::string::npos);
}

TEST_CASE("forwarding: the upstream request parses back", "[http]") {
  const std::string out =
      upstreamUpgradeRequest(parse(kClientHead), ForwardInfo{"2001:db8::7", 1, true, "::1"});
  RequestParser parser(8192, 100);
  REQUIRE(parser.feed(out.data(), out.size()) == ParseResult::Complete);
  CHECK(parser.consumed() == out.size());
  CHECK(parser.head().upgrade);
  CHECK(parser.head().target == "/chat?room=1");
}

}  // namespace
}  // namespace upgate
