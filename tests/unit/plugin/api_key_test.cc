#include <catch2/catch.hpp>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

TEST_CASE("api_key plugin: hashed lookup from a header or query parameter", "[plugin]") {
  test::Harness h("api_key", "keys_file: api_keys.txt\nquery: api_key\n");
  CHECK(h.run({{"X-API-Key", "key-alice"}}) == ChainOutcome::Continue);
  CHECK(h.chain->identityUser() == "alice");
  CHECK(h.chain->identityClaims() == "{\"role\":\"admin\"}");
  // The key header is not forwarded upstream.
  HeaderList up = {{"X-Api-Key", "key-alice"}, {"Host", "x"}};
  h.chain->applyUpstreamHeaders(up);
  CHECK(up.size() == 1);

  CHECK(h.run({}, "/chat?room=1&api_key=key-bob") == ChainOutcome::Continue);
  CHECK(h.chain->identityUser() == "bob");
  CHECK(h.chain->identityClaims().empty());

  CHECK(h.run({{"X-API-Key", "key-mallory"}}) == ChainOutcome::Reject);
  CHECK(h.status() == 401);
  CHECK(h.chain->reject().reason == "plugin api_key: unknown API key");
  REQUIRE(h.rejectHeader("WWW-Authenticate") != nullptr);
  CHECK(*h.rejectHeader("WWW-Authenticate") == "ApiKey realm=\"upgate\"");
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(h.chain->reject().reason == "plugin api_key: no API key");
  // The file holds hashes: the hash itself is not a key.
  CHECK(
      h.run({{"X-API-Key", "87844ec0b0d738e89628640588acaa48537b814a5c4f9697e3b352d11ffedaef"}}) ==
      ChainOutcome::Reject);
}

TEST_CASE("api_key plugin: a custom header, no query", "[plugin]") {
  test::Harness h("api_key", "keys_file: api_keys.txt\nheader: X-Token\nstrip: false\n");
  CHECK(h.run({{"X-Token", "key-bob"}}) == ChainOutcome::Continue);
  CHECK(h.chain->upstreamHeaderEdits().empty());
  CHECK(h.run({}, "/chat?api_key=key-bob") == ChainOutcome::Reject);
}

TEST_CASE("api_key plugin: config errors", "[plugin]") {
  CHECK(test::createError("api_key", "{}") ==
        "test.yaml:3:5: plugin \"api_key\": config.keys_file: required");
  CHECK(test::createError("api_key", "keys_file: missing.txt")
            .find("config.keys_file: cannot read " UPGATE_TEST_FIXTURES
                  "/plugin/missing.txt: No such "
                  "file or directory") != std::string::npos);
  CHECK(test::createError("api_key", "keys_file: rsa.pub.pem")
            .find("rsa.pub.pem:1: expected the 64 hex digits of a SHA-256 hash first") !=
        std::string::npos);
}

}  // namespace
}  // namespace upgate
