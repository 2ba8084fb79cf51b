#include "bridge/poller.h"

#include <catch2/catch.hpp>
#include <memory>
#include <string>

using namespace upgate;

// makePollRequest: what a channel's shared poll asks the legacy app, made from the request of
// the subscriber that started it (and made again from it on a reload). The poll loop itself
// needs a worker loop and the legacy app: tests/integration/test_bridge.py.

namespace {

std::shared_ptr<const RequestHead> request(const std::string& target, HeaderList headers = {}) {
  auto head = std::make_shared<RequestHead>();
  head->method = "GET";
  head->target = target;
  splitTarget(target, head->path, head->query);
  head->headers = std::move(headers);
  return head;
}

}  // namespace

TEST_CASE("poll request: the template is expanded, {cursor} is left for each poll", "[bridge]") {
  LongPollConfig lp;
  lp.poll = "/poll/{path.1}?symbols={query.symbols}&cursor={cursor}";
  PollRequest poll = makePollRequest(lp, request("/ticker/eu?symbols=GOOG%2CAAPL"));
  CHECK(poll.target == "/poll/eu?symbols=GOOG%2CAAPL&cursor={cursor}");
  CHECK(poll.headers.empty());
  REQUIRE(poll.origin != nullptr);
  CHECK(poll.origin->path == "/ticker/eu");
}

TEST_CASE("poll request: only the configured headers of the request go on the poll", "[bridge]") {
  LongPollConfig lp;
  lp.poll = "/poll?cursor={cursor}";
  auto head = request(
      "/t",
      {{"Cookie", "sid=1"}, {"X-Upgate-User", "alice"}, {"X-Other", "no"}, {"x-tenant", "acme"}});
  SECTION("none by default: the poll is shared, so credentials are not forwarded unless asked") {
    CHECK(makePollRequest(lp, head).headers.empty());
  }
  SECTION("the names listed, in the order listed, matched without regard to case") {
    lp.poll_forward_headers = {"X-Tenant", "x-upgate-user", "Authorization"};
    PollRequest poll = makePollRequest(lp, head);
    REQUIRE(poll.headers.size() == 2);  // no Authorization in the request: nothing sent
    CHECK(poll.headers[0] == std::make_pair(std::string("X-Tenant"), std::string("acme")));
    CHECK(poll.headers[1] == std::make_pair(std::string("x-upgate-user"), std::string("alice")));
  }
}

TEST_CASE("poll request: made again from the same request under a changed route", "[bridge]") {
  LongPollConfig before, after;
  before.poll = "/v1/poll?s={query.s}&c={cursor}";
  after.poll = "/v2/updates?symbol={query.s}&since={cursor}";
  PollRequest first = makePollRequest(before, request("/t?s=GOOG"));
  PollRequest again = makePollRequest(after, first.origin);
  CHECK(again.target == "/v2/updates?symbol=GOOG&since={cursor}");
  CHECK(again.origin == first.origin);  // the request is kept, not copied again
}

TEST_CASE("answers: binary when the Content-Type says so or the body is not UTF-8", "[bridge]") {
  HttpResponse r;
  r.status = 200;
  r.body = "caf\xc3\xa9";  // UTF-8
  CHECK_FALSE(isBinaryAnswer(r));
  r.headers = {{"Content-Type", "text/plain; charset=utf-8"}};
  CHECK_FALSE(isBinaryAnswer(r));
  SECTION("a text frame must be UTF-8, whatever the Content-Type claims") {
    r.body = "caf\xe9";  // Latin-1
    CHECK(isBinaryAnswer(r));
    r.headers = {{"content-type", "application/json"}};
    CHECK(isBinaryAnswer(r));
  }
  SECTION("application/octet-stream is binary even when its bytes happen to be UTF-8") {
    r.headers = {{"content-type", "application/octet-stream"}};
    CHECK(isBinaryAnswer(r));
  }
  SECTION("an empty body is text") {
    r.body.clear();
    CHECK_FALSE(isBinaryAnswer(r));
  }
}
