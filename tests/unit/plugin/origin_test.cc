#include <catch2/catch.hpp>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

TEST_CASE("origin plugin: allow-list with wildcards", "[plugin]") {
  test::Harness h("origin",
                  "allow:\n"
                  "  - https://app.example.com\n"
                  "  - https://*.example.com\n"
                  "  - http://localhost:*\n"
                  "  - https://[2001:db8::1]:8443\n");
  struct Row {
    const char* origin;
    int status;
  };
  const Row rows[] = {
      {"https://app.example.com", 0},
      {"HTTPS://App.Example.COM", 0},      // scheme and host are case-insensitive
      {"https://app.example.com:443", 0},  // the default port is the same origin
      {"https://a.example.com", 0},
      {"https://a.b.example.com", 0},  // one or more labels
      {"https://example.com", 403},    // not the bare domain
      {"https://evilexample.com", 403},
      {"https://example.com.evil.net", 403},
      {"http://app.example.com", 403},        // other scheme
      {"https://app.example.com:8443", 403},  // other port
      {"http://localhost:3000", 0},
      {"http://localhost", 0},
      {"https://[2001:db8::1]:8443", 0},
      {"https://[2001:db8::1]", 403},
      {"null", 403},
      {"https://app.example.com/path", 403},  // not an origin
      {"app.example.com", 403},
      {"", 403},
  };
  for (const Row& r : rows) {
    INFO(r.origin);
    h.run({{"Origin", r.origin}});
    CHECK(h.status() == r.status);
  }
}

TEST_CASE("origin plugin: missing and repeated Origin headers", "[plugin]") {
  test::Harness open("origin", "allow: [\"https://a.example\"]");
  CHECK(open.run({}) == ChainOutcome::Continue);
  CHECK(open.run({{"Origin", "https://a.example"}, {"Origin", "https://a.example"}}) ==
        ChainOutcome::Reject);
  test::Harness strict("origin", "allow: [\"https://a.example\", \"null\"]\nallow_missing: false");
  CHECK(strict.run({}) == ChainOutcome::Reject);
  CHECK(strict.status() == 403);
  CHECK(strict.run({{"Origin", "null"}}) == ChainOutcome::Continue);
}

TEST_CASE("origin plugin: config errors", "[plugin]") {
  CHECK(test::createError("origin", "allow: [\"https://*example.com\"]") ==
        "test.yaml:3:5: plugin \"origin\": config.allow[0]: \"https://*example.com\" is not "
        "scheme://host[:port] (host may start with \"*.\", port may be \"*\")");
  CHECK(test::createError("origin", "allow: \"https://a.example\"\nallow_missing: maybe") ==
        "test.yaml:3:5: plugin \"origin\": config.allow_missing: expected true or false");
  CHECK(
      test::createError("origin", "allow: [").find("test.yaml:3:5: plugin \"origin\": config: ") ==
      0);
}

}  // namespace
}  // namespace upgate
