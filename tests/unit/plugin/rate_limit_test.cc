#include <catch2/catch.hpp>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

TEST_CASE("rate_limit plugin: bucket arithmetic on the loop clock", "[plugin]") {
  test::Harness h("rate_limit", "rate: 2\nburst: 3\n");
  // A full bucket: three at once, then 429.
  for (int i = 0; i < 3; ++i) CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(h.status() == 429);
  REQUIRE(h.rejectHeader("Retry-After") != nullptr);
  CHECK(*h.rejectHeader("Retry-After") == "1");
  // 2 per second: one token every 500 ms.
  h.session.now += 499;
  CHECK(h.run({}) == ChainOutcome::Reject);
  h.session.now += 1;
  CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Reject);
  // Refill stops at the burst size.
  h.session.now += 60000;
  for (int i = 0; i < 3; ++i) CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Reject);
  // Another client has its own bucket.
  h.session.ip = "2001:db8::7";
  CHECK(h.run({}) == ChainOutcome::Continue);
}

TEST_CASE("rate_limit plugin: Retry-After rounds the wait up to whole seconds", "[plugin]") {
  test::Harness h("rate_limit", "rate: 0.25\nburst: 1\n");  // one every 4 s
  CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(*h.rejectHeader("Retry-After") == "4");
  h.session.now += 2500;
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(*h.rejectHeader("Retry-After") == "2");
}

TEST_CASE("rate_limit plugin: per-worker buckets split the rate and burst", "[plugin]") {
  test::Harness h("rate_limit", "rate: 10\nburst: 4\n", 2);  // each worker: 5/s, 2 tokens
  for (uint32_t w = 0; w < 2; ++w) {
    h.session.worker = w;
    CHECK(h.run({}) == ChainOutcome::Continue);
    CHECK(h.run({}) == ChainOutcome::Continue);
    CHECK(h.run({}) == ChainOutcome::Reject);
  }
  h.session.now += 200;  // 5/s: one token per worker
  h.session.worker = 0;
  CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Reject);
  h.session.worker = 1;
  CHECK(h.run({}) == ChainOutcome::Continue);
}

TEST_CASE("rate_limit plugin: keyed by a header", "[plugin]") {
  test::Harness h("rate_limit", "rate: 1\nburst: 1\nkey: header:X-Tenant\n");
  CHECK(h.run({{"X-Tenant", "a"}}) == ChainOutcome::Continue);
  CHECK(h.run({{"X-Tenant", "a"}}) == ChainOutcome::Reject);
  CHECK(h.run({{"X-Tenant", "b"}}) == ChainOutcome::Continue);
}

TEST_CASE("rate_limit plugin: a full table drops idle buckets first", "[plugin]") {
  test::Harness h("rate_limit", "rate: 1\nburst: 1\nmax_keys: 2\n");
  h.session.ip = "192.0.2.1";
  CHECK(h.run({}) == ChainOutcome::Continue);
  h.session.ip = "192.0.2.2";
  CHECK(h.run({}) == ChainOutcome::Continue);
  h.session.ip = "192.0.2.3";  // table full of non-idle buckets: admitted, not tracked
  CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Continue);
  h.session.now += 1000;  // both refilled: swept, .3 gets a bucket
  CHECK(h.run({}) == ChainOutcome::Continue);
  CHECK(h.run({}) == ChainOutcome::Reject);
}

TEST_CASE("rate_limit plugin: config errors", "[plugin]") {
  CHECK(test::createError("rate_limit", "burst: 3") ==
        "test.yaml:3:5: plugin \"rate_limit\": config.rate: required (handshakes per second), "
        "unless messages: is set");
  CHECK(test::createError("rate_limit", "rate: 0") ==
        "test.yaml:3:5: plugin \"rate_limit\": config.rate: 0 is out of range [1e-06, 1e+09]");
  CHECK(test::createError("rate_limit", "rate: 1\nkey: cookie") ==
        "test.yaml:3:5: plugin \"rate_limit\": config.key: \"cookie\" is not ip, identity or "
        "header:NAME");
}

// Runs one message through the chain of `h` (which must have admitted the session).
upgate_message_action_t message(test::Harness& h, upgate_direction_t dir,
                                MessageVerdict* out = nullptr) {
  const uint8_t payload[] = {'h', 'i'};
  MessageVerdict v = h.chain->onMessage(dir, UPGATE_OPCODE_TEXT, payload, sizeof(payload));
  if (out != nullptr) *out = v;
  return v.action;
}

TEST_CASE("rate_limit plugin: messages per session, token bucket, close 1008", "[plugin]") {
  test::Harness h("rate_limit", "messages: { rate: 2, burst: 3 }\n");
  REQUIRE(h.run({}) == ChainOutcome::Continue);  // no handshake rate: admitted
  h.chain->handshakeDone(true);
  REQUIRE(h.chain->hasMessageHooks());
  for (int i = 0; i < 3; ++i) CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
  // The upstream's messages are not counted by default.
  for (int i = 0; i < 10; ++i) CHECK(message(h, UPGATE_UPSTREAM_TO_CLIENT) == UPGATE_MESSAGE_PASS);
  // 2 per second: one token every 500 ms.
  h.session.now += 499;
  MessageVerdict v;
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM, &v) == UPGATE_MESSAGE_CLOSE);
  CHECK(v.close_code == 1008);
  CHECK(v.close_reason == "message rate exceeded");
  h.session.now += 1;
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_CLOSE);
  // Refill stops at the burst.
  h.session.now += 60000;
  for (int i = 0; i < 3; ++i) CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_CLOSE);
}

TEST_CASE("rate_limit plugin: every session has its own message bucket", "[plugin]") {
  test::Harness h("rate_limit", "messages: { rate: 1, burst: 1 }\n", 2);
  REQUIRE(h.run({}) == ChainOutcome::Continue);
  h.chain->handshakeDone(true);
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_CLOSE);
  // A new session of the same client, on any worker: a full bucket, not split by workers.
  for (uint32_t w = 0; w < 2; ++w) {
    h.session.worker = w;
    REQUIRE(h.run({}) == ChainOutcome::Continue);
    h.chain->handshakeDone(true);
    CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
    CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_CLOSE);
  }
}

TEST_CASE("rate_limit plugin: message direction upstream and both", "[plugin]") {
  SECTION("upstream") {
    test::Harness h("rate_limit", "messages: { rate: 1, direction: upstream }\n");
    REQUIRE(h.run({}) == ChainOutcome::Continue);
    h.chain->handshakeDone(true);
    for (int i = 0; i < 5; ++i) CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
    CHECK(message(h, UPGATE_UPSTREAM_TO_CLIENT) == UPGATE_MESSAGE_PASS);
    CHECK(message(h, UPGATE_UPSTREAM_TO_CLIENT) == UPGATE_MESSAGE_CLOSE);
  }
  SECTION("both share one bucket") {
    test::Harness h("rate_limit", "messages: { rate: 1, burst: 2, direction: both }\n");
    REQUIRE(h.run({}) == ChainOutcome::Continue);
    h.chain->handshakeDone(true);
    CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
    CHECK(message(h, UPGATE_UPSTREAM_TO_CLIENT) == UPGATE_MESSAGE_PASS);
    CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_CLOSE);
  }
}

TEST_CASE("rate_limit plugin: handshake and message limits together", "[plugin]") {
  test::Harness h("rate_limit", "rate: 1\nburst: 1\nmessages: { rate: 100 }\n");
  CHECK(h.run({}) == ChainOutcome::Continue);
  h.chain->handshakeDone(true);
  for (int i = 0; i < 100; ++i) CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
  CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_CLOSE);
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(h.status() == 429);
}

TEST_CASE("rate_limit plugin: handshake-only config passes every message", "[plugin]") {
  test::Harness h("rate_limit", "rate: 1\n");
  CHECK(h.run({}) == ChainOutcome::Continue);
  h.chain->handshakeDone(true);
  for (int i = 0; i < 50; ++i) CHECK(message(h, UPGATE_CLIENT_TO_UPSTREAM) == UPGATE_MESSAGE_PASS);
}

TEST_CASE("rate_limit plugin: message config errors", "[plugin]") {
  const std::string at = "test.yaml:3:5: plugin \"rate_limit\": ";
  CHECK(test::createError("rate_limit", "messages: { burst: 3 }") ==
        at + "config.messages.rate: required (messages per second)");
  CHECK(test::createError("rate_limit", "messages: { rate: 0 }") ==
        at + "config.messages.rate: 0 is out of range [1e-06, 1e+09]");
  CHECK(test::createError("rate_limit", "messages: { rate: 1, direction: sideways }") ==
        at + "config.messages.direction: \"sideways\" is not client, upstream or both");
  CHECK(test::createError("rate_limit", "messages: { rate: 1, bytes: 5 }") ==
        at + "config.messages: unknown key \"bytes\" (expected one of: rate, burst, direction)");
  CHECK(test::createError("rate_limit", "messages: { rate: 1 }\nkey: identity") ==
        at + "config: burst, key and max_keys need a handshake rate (config.rate)");
}

}  // namespace
}  // namespace upgate
