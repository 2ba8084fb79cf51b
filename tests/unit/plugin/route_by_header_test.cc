#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

TEST_CASE("route_by_header plugin: exact values from a header, cookie or query", "[plugin]") {
  test::Harness h("route_by_header",
                  "from: header:X-Version\nvalues: { beta: chat-beta, v2: chat-v2 }");
  CHECK(h.run({{"X-Version", "beta"}}) == ChainOutcome::Continue);
  CHECK(h.chain->upstream() == "chat-beta");
  h.run({{"x-version", "v2"}});
  CHECK(h.chain->upstream() == "chat-v2");
  h.run({{"X-Version", "v3"}});
  CHECK(h.chain->upstream().empty());  // the route table decides
  h.run({});
  CHECK(h.chain->upstream().empty());

  test::Harness c("route_by_header", "from: cookie:ver\nvalues: { beta: chat-beta }");
  c.run({{"Cookie", "session=1; ver=beta"}});
  CHECK(c.chain->upstream() == "chat-beta");
  test::Harness q("route_by_header", "from: query:ver\nvalues: { beta: chat-beta }");
  q.run({}, "/chat?ver=beta");
  CHECK(q.chain->upstream() == "chat-beta");
}

TEST_CASE("route_by_header plugin: weighted split, sticky per client IP", "[plugin]") {
  test::Harness h("route_by_header",
                  "from: header:X-Version\n"
                  "values: { beta: chat-beta }\n"
                  "split:\n"
                  "  - { upstream: stable, weight: 90 }\n"
                  "  - { upstream: canary, weight: 10 }\n"
                  "  - { upstream: never, weight: 0 }\n");
  std::map<std::string, int> count;
  for (int i = 0; i < 10000; ++i) {
    h.session.ip = "10." + std::to_string(i / 65536) + "." + std::to_string((i / 256) % 256) + "." +
                   std::to_string(i % 256);
    h.run({});
    ++count[h.chain->upstream()];
  }
  CHECK(count["never"] == 0);
  CHECK(count["canary"] > 700);
  CHECK(count["canary"] < 1300);
  CHECK(count["stable"] + count["canary"] == 10000);
  // The same client lands on the same side every time; a matched value wins over the split.
  h.session.ip = "198.51.100.20";
  h.run({});
  const std::string first = h.chain->upstream();
  for (int i = 0; i < 20; ++i) {
    h.run({});
    CHECK(h.chain->upstream() == first);
  }
  h.run({{"X-Version", "beta"}});
  CHECK(h.chain->upstream() == "chat-beta");
}

TEST_CASE("route_by_header plugin: random split when not sticky", "[plugin]") {
  test::Harness h("route_by_header",
                  "split: [{ upstream: a, weight: 1 }, { upstream: b, weight: 1 }]\nsticky: none");
  std::map<std::string, int> count;
  for (int i = 0; i < 2000; ++i) {
    h.run({});
    ++count[h.chain->upstream()];
  }
  CHECK(count["a"] > 800);
  CHECK(count["b"] > 800);
}

TEST_CASE("route_by_header plugin: config errors", "[plugin]") {
  CHECK(test::createError("route_by_header", "from: header:X") ==
        "test.yaml:3:5: plugin \"route_by_header\": config: give values, split or both");
  CHECK(test::createError("route_by_header", "from: body:X\nvalues: {a: b}") ==
        "test.yaml:3:5: plugin \"route_by_header\": config.from: \"body:X\" is not header:NAME, "
        "cookie:NAME or query:NAME");
  CHECK(test::createError("route_by_header", "split: [{ upstream: a, weight: 0 }]") ==
        "test.yaml:3:5: plugin \"route_by_header\": config.split: the weights add up to 0");
  CHECK(test::createError("route_by_header", "split: [{ upstream: a, wieght: 1 }]") ==
        "test.yaml:3:5: plugin \"route_by_header\": config.split[0]: unknown key \"wieght\" "
        "(expected one of: upstream, weight)");
}

}  // namespace
}  // namespace upgate
