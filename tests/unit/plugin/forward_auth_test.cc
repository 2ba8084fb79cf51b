#include <catch2/catch.hpp>
#include <cstring>
#include <optional>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

using test::FakeSession;

const char* kConfig =
    "url: http://127.0.0.1:9091/auth?realm=chat\n"
    "timeout: 750ms\n"
    "request_headers: [Cookie, Authorization]\n"
    "response_headers: [X-User, X-Groups]\n"
    "identity_header: X-User\n";

// The value an upstream header edit sets (nullopt: removed; "<none>": not edited).
std::optional<std::string> edit(const test::Harness& h, const std::string& name) {
  for (const auto& [n, v] : h.chain->upstreamHeaderEdits()) {
    if (iequals(n, name)) return v;
  }
  return std::string("<none>");
}

TEST_CASE("forward_auth plugin: the subrequest carries the request's facts", "[plugin]") {
  test::Harness h("forward_auth", kConfig);
  HeaderList headers{{"Host", "chat.example"},
                     {"Cookie", "a=1"},
                     {"Authorization", "Bearer t"},
                     {"Cookie", "b=2"},
                     {"X-Other", "not sent"}};
  CHECK(h.run(headers, "/chat/room?id=5") == ChainOutcome::Paused);
  REQUIRE(h.session.http_calls.size() == 1);
  const PluginHttpRequest& req = h.session.http_calls[0]->request;
  CHECK(req.method == "GET");
  CHECK(req.endpoint.host == "127.0.0.1");
  CHECK(req.endpoint.port == 9091);
  CHECK(req.target == "/auth?realm=chat");
  CHECK(req.timeout == Millis(750));
  CHECK(req.body.empty());
  HeaderList want{{"X-Forwarded-Method", "GET"},
                  {"X-Forwarded-Uri", "/chat/room?id=5"},
                  {"X-Original-URI", "/chat/room?id=5"},
                  {"X-Forwarded-Host", "chat.example"},
                  {"X-Forwarded-For", "192.0.2.1"},
                  {"Cookie", "a=1"},
                  {"Cookie", "b=2"},
                  {"Authorization", "Bearer t"}};
  REQUIRE(req.headers.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    CHECK(req.headers[i].name == want[i].name);
    CHECK(req.headers[i].value == want[i].value);
  }
}

TEST_CASE("forward_auth plugin: 2xx continues with the answer's headers and identity", "[plugin]") {
  test::Harness h("forward_auth", kConfig);
  CHECK(h.run({{"Cookie", "s=1"}, {"X-Groups", "admin"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(0, FakeSession::httpAnswer(200, {{"x-user", "alice"}})));
  CHECK(h.chain->outcome() == ChainOutcome::Continue);
  CHECK(h.session.resumed == 1);
  CHECK(edit(h, "X-User") == std::optional<std::string>("alice"));
  // Absent from the answer: removed, so the client's own X-Groups never reaches the upstream.
  CHECK(edit(h, "X-Groups") == std::nullopt);
  CHECK(h.chain->identityUser() == "alice");
}

TEST_CASE("forward_auth plugin: refusals relay status, chosen headers and body", "[plugin]") {
  test::Harness h("forward_auth", "url: http://127.0.0.1:9091/auth\n");
  SECTION("401 with a challenge") {
    CHECK(h.run({}) == ChainOutcome::Paused);
    CHECK(h.session.completeHttp(
        0, FakeSession::httpAnswer(
               401, {{"WWW-Authenticate", "Bearer realm=\"chat\""}, {"X-Internal", "secret"}},
               "log in first")));
    CHECK(h.status() == 401);
    REQUIRE(h.rejectHeader("WWW-Authenticate") != nullptr);
    CHECK(*h.rejectHeader("WWW-Authenticate") == "Bearer realm=\"chat\"");
    CHECK(h.rejectHeader("X-Internal") == nullptr);
    CHECK(h.chain->reject().body == "log in first");
  }
  SECTION("403 with a body") {
    CHECK(h.run({}) == ChainOutcome::Paused);
    CHECK(h.session.completeHttp(0, FakeSession::httpAnswer(403, {}, "banned")));
    CHECK(h.status() == 403);
    CHECK(h.chain->reject().body == "banned");
  }
  SECTION("a redirect becomes 403 and keeps its Location") {
    CHECK(h.run({}) == ChainOutcome::Paused);
    CHECK(h.session.completeHttp(
        0, FakeSession::httpAnswer(302, {{"Location", "https://login.example/"}})));
    CHECK(h.status() == 403);
    REQUIRE(h.rejectHeader("Location") != nullptr);
    CHECK(*h.rejectHeader("Location") == "https://login.example/");
  }
}

TEST_CASE("forward_auth plugin: an unreachable service is a 503, a bad answer a 502", "[plugin]") {
  test::Harness h("forward_auth", "url: http://127.0.0.1:9091/auth\n");
  CHECK(h.run({}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(
      0, FakeSession::httpFailure(UPGATE_HTTP_TIMEOUT, "timeout after 5000 ms")));
  CHECK(h.status() == 503);
  CHECK(h.run({}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(
      1, FakeSession::httpFailure(UPGATE_HTTP_CONNECT, "connect: ECONNREFUSED")));
  CHECK(h.status() == 503);
  CHECK(h.run({}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(
      2, FakeSession::httpFailure(UPGATE_HTTP_ERROR, "malformed response: x")));
  CHECK(h.status() == 502);
  // The gateway cannot start a callout at all.
  h.session.refuse_http = true;
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(h.status() == 503);
}

TEST_CASE("forward_auth plugin: the session ending cancels the subrequest", "[plugin]") {
  test::Harness h("forward_auth", "url: http://127.0.0.1:9091/auth\n");
  CHECK(h.run({}) == ChainOutcome::Paused);
  h.chain->close(0, "client went away");
  CHECK(h.session.http_calls[0]->cancelled);
  CHECK_FALSE(h.session.completeHttp(0, FakeSession::httpAnswer(200)));
}

TEST_CASE("forward_auth plugin: the pause timeout still bounds a slow service", "[plugin]") {
  test::Harness h("forward_auth", "url: http://127.0.0.1:9091/auth\ntimeout: 1h\n");
  CHECK(h.run({}) == ChainOutcome::Paused);
  h.session.advance(10000);  // the chain's default pause timeout
  CHECK(h.status() == 503);
  CHECK(h.session.resumed == 1);
  // The answer arriving later changes nothing.
  CHECK(h.session.completeHttp(0, FakeSession::httpAnswer(200)));
  CHECK(h.status() == 503);
}

TEST_CASE("forward_auth plugin: cached decisions, keyed by the forwarded headers", "[plugin]") {
  test::Harness h("forward_auth",
                  "url: http://127.0.0.1:9091/auth\nresponse_headers: [X-User]\n"
                  "identity_header: X-User\ncache: { ttl: 2s, max_entries: 2 }\n");
  CHECK(h.run({{"Cookie", "s=alice"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(0, FakeSession::httpAnswer(204, {{"X-User", "alice"}})));
  CHECK(h.chain->outcome() == ChainOutcome::Continue);

  // Same cookie: decided at once, same effects, no subrequest.
  CHECK(h.run({{"Cookie", "s=alice"}}) == ChainOutcome::Continue);
  CHECK(h.session.http_calls.size() == 1);
  CHECK(edit(h, "X-User") == std::optional<std::string>("alice"));
  CHECK(h.chain->identityUser() == "alice");

  // Another cookie: asks; a refusal is cached too.
  CHECK(h.run({{"Cookie", "s=mallory"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(
      1, FakeSession::httpAnswer(401, {{"WWW-Authenticate", "Cookie"}}, "who?")));
  CHECK(h.status() == 401);
  CHECK(h.run({{"Cookie", "s=mallory"}}) == ChainOutcome::Reject);
  CHECK(h.status() == 401);
  CHECK(h.chain->reject().body == "who?");
  REQUIRE(h.rejectHeader("WWW-Authenticate") != nullptr);
  CHECK(h.session.http_calls.size() == 2);

  // A 5xx is never kept.
  CHECK(h.run({{"Cookie", "s=bob"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(2, FakeSession::httpAnswer(500)));
  CHECK(h.status() == 500);
  CHECK(h.run({{"Cookie", "s=bob"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(3, FakeSession::httpAnswer(200)));
  CHECK(h.session.http_calls.size() == 4);

  // max_entries 2: bob's entry pushed out the least recently used one (alice, used before
  // mallory's lookup), mallory's is still there.
  CHECK(h.run({{"Cookie", "s=mallory"}}) == ChainOutcome::Reject);
  CHECK(h.run({{"Cookie", "s=alice"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(4, FakeSession::httpAnswer(204, {{"X-User", "alice"}})));
  CHECK(h.session.http_calls.size() == 5);

  // Past the ttl: asked again.
  h.session.now += 2000;
  CHECK(h.run({{"Cookie", "s=alice"}}) == ChainOutcome::Paused);
  CHECK(h.session.http_calls.size() == 6);
}

TEST_CASE("forward_auth plugin: each worker keeps its own cache", "[plugin]") {
  test::Harness h("forward_auth", "url: http://127.0.0.1:9091/auth\ncache: { ttl: 10s }\n", 2);
  h.session.worker = 0;
  CHECK(h.run({{"Authorization", "Bearer x"}}) == ChainOutcome::Paused);
  CHECK(h.session.completeHttp(0, FakeSession::httpAnswer(200)));
  CHECK(h.run({{"Authorization", "Bearer x"}}) == ChainOutcome::Continue);
  h.session.worker = 1;
  CHECK(h.run({{"Authorization", "Bearer x"}}) == ChainOutcome::Paused);
  CHECK(h.session.http_calls.size() == 2);
}

TEST_CASE("forward_auth plugin: config errors", "[plugin]") {
  const std::string at = "test.yaml:3:5: plugin \"forward_auth\": ";
  CHECK(test::createError("forward_auth", "timeout: 1s") ==
        at + "config.url: required (the authorization service)");
  CHECK(test::createError("forward_auth", "url: https://auth.example/") ==
        at + "config.url: https:// is not supported; use http:// to a local service");
  CHECK(test::createError("forward_auth", "url: auth.example/check") ==
        at + "config.url: \"auth.example/check\" is not http://host[:port]/path");
  CHECK(test::createError("forward_auth", "url: http://a/\nmethod: \"GE T\"") ==
        at + "config.method: \"GE T\" is not a token");
  CHECK(test::createError("forward_auth", "url: http://a/\ntimeout: 0") ==
        at + "config.timeout: must be between 1ms and 1h");
  CHECK(test::createError("forward_auth", "url: http://a/\nrequest_headers: [Host]") ==
        at + "config.request_headers: Host cannot be copied (set by the gateway or hop-by-hop)");
  CHECK(test::createError("forward_auth", "url: http://a/\nresponse_headers: [\"X User\"]") ==
        at + "config.response_headers: \"X User\" is not a header name");
  CHECK(test::createError("forward_auth", "url: http://a/\ncache: { ttl: 5s, size: 3 }") ==
        at + "config.cache: unknown key \"size\" (expected one of: ttl, max_entries)");
  CHECK(test::createError("forward_auth", "url: http://a/\ncache: { max_entries: 0 }") ==
        at + "config.cache.max_entries: 0 is out of range [1, 1e+07]");
  CHECK(test::createError("forward_auth", "url: http://a/\nheaders: [Cookie]") ==
        at + "config: unknown key \"headers\" (expected one of: url, method, timeout, "
             "request_headers, response_headers, identity_header, reject_headers, cache)");
}

TEST_CASE("forward_auth plugin: refuses a host API without HTTP callouts", "[plugin]") {
  const upgate_plugin_v1_t* vt = nullptr;
  for (size_t i = 0; i < kBuiltinPluginCount; ++i) {
    if (std::strcmp(kBuiltinPlugins[i].name, "forward_auth") == 0) {
      vt = kBuiltinPlugins[i].entry(UPGATE_PLUGIN_ABI_VERSION);
    }
  }
  REQUIRE(vt != nullptr);
  upgate_host_api_t old{};
  fillHostApi(old);
  old.abi_version = UPGATE_PLUGIN_ABI_VERSION;
  old.worker_count = 1;
  old.config_dir = "";
  // A table from a gateway that predates the callouts ends after set_data.
  old.struct_size = static_cast<uint32_t>(offsetof(upgate_host_api_t, http_request));
  const char cfg[] = "url: http://127.0.0.1/auth";
  char err[256] = "";
  CHECK(vt->create(&old, cfg, sizeof(cfg) - 1, err, sizeof(err)) == nullptr);
  CHECK(std::string(err) == "this gateway offers no HTTP callouts (host API too old)");
  CHECK(UPGATE_HAS_FIELD(&old, upgate_host_api_t, set_data));
  CHECK_FALSE(UPGATE_HAS_FIELD(&old, upgate_host_api_t, http_request));
}

}  // namespace
}  // namespace upgate
