#include <catch2/catch.hpp>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

TEST_CASE("ip_filter plugin: CIDR table, IPv4 and IPv6", "[plugin]") {
  test::Harness h("ip_filter",
                  "allow: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\", \"::1\"]\n"
                  "deny: [10.66.0.0/16, \"2001:db8:bad::/48\"]\n");
  struct Row {
    const char* ip;
    int status;
  };
  const Row rows[] = {
      {"10.1.2.3", 0},        {"10.255.255.255", 0},  {"11.0.0.1", 403},
      {"10.66.1.1", 403},     {"10.67.0.1", 0},       {"192.0.2.7", 0},
      {"192.0.2.8", 403},     {"2001:db8::1", 0},     {"2001:db8:bad::1", 403},
      {"2001:db8:bae::1", 0}, {"2001:db9::1", 403},   {"::1", 0},
      {"::2", 403},           {"::ffff:10.1.2.3", 0}, {"::ffff:10.66.0.1", 403},
      {"not-an-ip", 403},
  };
  for (const Row& r : rows) {
    INFO(r.ip);
    h.session.ip = r.ip;
    h.run({});
    CHECK(h.status() == r.status);
  }
}

TEST_CASE("ip_filter plugin: odd prefix lengths", "[plugin]") {
  test::Harness h("ip_filter", "allow: [192.0.2.128/25, \"2001:db8:8000::/33\"]");
  const std::pair<const char*, int> rows[] = {{"192.0.2.128", 0},      {"192.0.2.255", 0},
                                              {"192.0.2.127", 403},    {"2001:db8:8000::1", 0},
                                              {"2001:db8:ffff::1", 0}, {"2001:db8:7fff::1", 403}};
  for (const auto& [ip, status] : rows) {
    INFO(ip);
    h.session.ip = ip;
    h.run({});
    CHECK(h.status() == status);
  }
}

TEST_CASE("ip_filter plugin: X-Forwarded-For only from trusted proxies", "[plugin]") {
  test::Harness h("ip_filter",
                  "deny: [203.0.113.0/24]\n"
                  "trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n");
  // Untrusted peer: its header is ignored.
  h.session.ip = "198.51.100.1";
  CHECK(h.run({{"X-Forwarded-For", "203.0.113.9"}}) == ChainOutcome::Continue);
  // Trusted peer: the rightmost untrusted hop is the client.
  h.session.ip = "127.0.0.1";
  CHECK(h.run({{"X-Forwarded-For", "203.0.113.9"}}) == ChainOutcome::Reject);
  CHECK(h.run({{"X-Forwarded-For", "203.0.113.9, 10.1.1.1"}}) == ChainOutcome::Reject);
  // A spoofed left part does not help: the proxy appended the real address.
  CHECK(h.run({{"X-Forwarded-For", "198.51.100.5, 203.0.113.9"}}) == ChainOutcome::Reject);
  CHECK(h.run({{"X-Forwarded-For", "203.0.113.9, 198.51.100.5"}}) == ChainOutcome::Continue);
  // Several header lines count as one list.
  CHECK(h.run({{"X-Forwarded-For", "198.51.100.5"}, {"X-Forwarded-For", "203.0.113.9"}}) ==
        ChainOutcome::Reject);
  CHECK(h.run({{"X-Forwarded-For", "garbage"}}) == ChainOutcome::Reject);
  CHECK(h.status() == 400);
  CHECK(h.run({}) == ChainOutcome::Continue);
}

TEST_CASE("ip_filter plugin: config errors", "[plugin]") {
  CHECK(test::createError("ip_filter", "allow: [10.0.0.1/8]") ==
        "test.yaml:3:5: plugin \"ip_filter\": config.allow[0]: \"10.0.0.1/8\" has host bits set "
        "beyond /8");
  CHECK(test::createError("ip_filter", "deny: [10.0.0.0/33]") ==
        "test.yaml:3:5: plugin \"ip_filter\": config.deny[0]: \"10.0.0.0/33\" has a bad prefix "
        "length");
  CHECK(test::createError("ip_filter", "deny: [example.com]") ==
        "test.yaml:3:5: plugin \"ip_filter\": config.deny[0]: \"example.com\" is not an IPv4 or "
        "IPv6 address or CIDR");
  CHECK(test::createError("ip_filter", "trusted_proxies: [127.0.0.1]") ==
        "test.yaml:3:5: plugin \"ip_filter\": config: give at least one of allow or deny");
}

}  // namespace
}  // namespace upgate
