#include "net/listener.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <string>

using namespace upgate;

TEST_CASE("listener: formatSockaddr writes addresses and ports", "[net]") {
  struct Case {
    const char* ip;
    uint16_t port;
    const char* text;
  };
  const Case v4[] = {{"0.0.0.0", 0, "0.0.0.0:0"},
                     {"127.0.0.1", 8080, "127.0.0.1:8080"},
                     {"10.20.100.9", 65535, "10.20.100.9:65535"},
                     {"255.255.255.255", 1, "255.255.255.255:1"},
                     {"192.0.2.10", 443, "192.0.2.10:443"}};
  for (const Case& c : v4) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(c.port);
    REQUIRE(inet_pton(AF_INET, c.ip, &sa.sin_addr) == 1);
    std::string ip;
    uint16_t port = 0;
    CHECK(formatSockaddr(reinterpret_cast<const sockaddr*>(&sa), &ip, &port) == c.text);
    CHECK(ip == c.ip);
    CHECK(port == c.port);
  }
  sockaddr_in6 sa6{};
  sa6.sin6_family = AF_INET6;
  sa6.sin6_port = htons(9000);
  REQUIRE(inet_pton(AF_INET6, "2001:db8::1", &sa6.sin6_addr) == 1);
  std::string ip;
  CHECK(formatSockaddr(reinterpret_cast<const sockaddr*>(&sa6), &ip) == "[2001:db8::1]:9000");
  CHECK(ip == "2001:db8::1");
}
