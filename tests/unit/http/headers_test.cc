#include "http/headers.h"

#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace upgate {
namespace {

std::vector<std::string> toStrings(const std::vector<std::string_view>& views) {
  return std::vector<std::string>(views.begin(), views.end());
}

TEST_CASE("headers: iequals is ASCII case-insensitive", "[http]") {
  CHECK(iequals("Sec-WebSocket-Key", "sec-websocket-key"));
  CHECK(iequals("", ""));
  CHECK_FALSE(iequals("Host", "Hos"));
  CHECK_FALSE(iequals("Host", "Hosu"));
  CHECK_FALSE(iequals("a\xC3\xA9", "A\xC3\x89"));  // no Unicode folding
}

TEST_CASE("headers: sameFieldName takes '_' for '-', in any case", "[http]") {
  CHECK(sameFieldName("X-Upgate-User", "x_upgate_user"));
  CHECK(sameFieldName("X_Upgate_User", "X-UPGATE-USER"));
  CHECK_FALSE(sameFieldName("X-Upgate-User", "X-Upgate-Users"));
  CHECK_FALSE(sameFieldName("X-Upgate-User", "X.Upgate-User"));
}

TEST_CASE("headers: findHeader returns the first match, countHeader counts all", "[http]") {
  const HeaderList h = {{"Host", "a"}, {"X-Thing", "1"}, {"x-thing", "2"}};
  const std::string* v = findHeader(h, "X-THING");
  REQUIRE(v != nullptr);
  CHECK(*v == "1");
  CHECK(findHeader(h, "Missing") == nullptr);
  CHECK(countHeader(h, "x-thing") == 2);
  CHECK(countHeader(h, "host") == 1);
  CHECK(countHeader(h, "nope") == 0);
}

TEST_CASE("headers: splitTokens trims and drops empty elements", "[http]") {
  CHECK(toStrings(splitTokens("a, b ,,c")) == std::vector<std::string>{"a", "b", "c"});
  CHECK(toStrings(splitTokens("")).empty());
  CHECK(toStrings(splitTokens(" , ,\t")).empty());
  CHECK(toStrings(splitTokens("\tkeep-alive,Upgrade\t")) ==
        std::vector<std::string>{"keep-alive", "Upgrade"});
  CHECK(toStrings(splitTokens("one")) == std::vector<std::string>{"one"});
}

TEST_CASE("headers: headerHasToken searches every instance", "[http]") {
  const HeaderList h = {
      {"Connection", "keep-alive"}, {"connection", " Upgrade "}, {"Upgrade", "h2c, WebSocket"}};
  CHECK(headerHasToken(h, "Connection", "upgrade"));
  CHECK(headerHasToken(h, "Connection", "KEEP-ALIVE"));
  CHECK(headerHasToken(h, "Upgrade", "websocket"));
  CHECK_FALSE(headerHasToken(h, "Upgrade", "web"));
  CHECK_FALSE(headerHasToken(h, "Connection", "close"));
  CHECK_FALSE(headerHasToken(h, "Missing", "x"));
}

TEST_CASE("headers: isHopByHop is exactly the RFC 7230 set", "[http]") {
  for (const char* name : {"Connection", "keep-alive", "Proxy-Connection", "te", "Trailer",
                           "TRANSFER-ENCODING", "Upgrade"}) {
    CAPTURE(name);
    CHECK(isHopByHop(name));
  }
  for (const char* name : {"Host", "Proxy-Authenticate", "Proxy-Authorization", "Content-Length",
                           "Sec-WebSocket-Key", "Trailers", ""}) {
    CAPTURE(name);
    CHECK_FALSE(isHopByHop(name));
  }
}

TEST_CASE("headers: token, OWS and field value helpers", "[http]") {
  CHECK(isToken("X-Custom_1.~!#$%&'*+^`|"));
  CHECK_FALSE(isToken(""));
  CHECK_FALSE(isToken("Host "));
  CHECK_FALSE(isToken("a:b"));
  CHECK_FALSE(isToken("a\"b"));
  CHECK(trimOws(" \t a b\t ") == "a b");
  CHECK(trimOws("   ").empty());
  CHECK(isFieldValue("text/plain; q=0.5\tx \xC3\xA9"));
  CHECK_FALSE(isFieldValue("a\r\nInjected: 1"));
  CHECK_FALSE(isFieldValue(std::string_view("a\0b", 3)));
  CHECK_FALSE(isFieldValue("a\x7f"));
}

}  // namespace
}  // namespace upgate
