#include "http/template.h"

#include <catch2/catch.hpp>
#include <string>

using namespace upgate;

namespace {

RequestHead request(std::string path, std::string query = "") {
  RequestHead r;
  r.path = std::move(path);
  r.query = std::move(query);
  r.headers.push_back({"X-Tenant", "blue team"});
  return r;
}

std::string channelKey(const std::string& tpl, const RequestHead& r) {
  std::string error;
  auto out = expandTemplate(tpl, r, TemplateUse::ChannelKey, &error);
  REQUIRE(out.has_value());
  CHECK(error.empty());
  return *out;
}

}  // namespace

TEST_CASE("template: path segments count from 0", "[http][template]") {
  const RequestHead r = request("/news/sports");
  CHECK(channelKey("{path.0}", r) == "news");
  CHECK(channelKey("{path.1}", r) == "sports");  // route /news/ -> channel "sports"
  CHECK(channelKey("{path.2}", r).empty());      // missing: ""
  CHECK(channelKey("{path}", r) == "/news/sports");
  // Empty segments are skipped and each segment is percent-decoded.
  CHECK(channelKey("{path.1}", request("//a//b%20c/")) == "b c");
}

TEST_CASE("template: query, header and literal text", "[http][template]") {
  const RequestHead r = request("/ticker", "symbols=GOOG%2CAAPL&x=1");
  CHECK(channelKey("q-{query.symbols}-{header.x-tenant}", r) == "q-GOOG,AAPL-blue team");
  CHECK(channelKey("{query.missing}", r).empty());
  // In URL targets values are percent-encoded; {cursor} is left for the poller.
  auto target = expandTemplate("/poll?s={query.symbols}&t={header.X-Tenant}&c={cursor}", r,
                               TemplateUse::UrlTarget);
  REQUIRE(target.has_value());
  CHECK(*target == "/poll?s=GOOG%2CAAPL&t=blue%20team&c={cursor}");
  CHECK(substituteCursor(*target, "a b") == "/poll?s=GOOG%2CAAPL&t=blue%20team&c=a%20b");
}

TEST_CASE("template: malformed templates are refused with a reason", "[http][template]") {
  for (const char* bad : {"{path.x}", "{path.}", "{path.1000}", "{nope}", "{query.}", "{path"}) {
    CAPTURE(bad);
    std::string error;
    CHECK_FALSE(checkTemplate(bad, false, error));
    CHECK_FALSE(error.empty());
  }
  std::string error;
  CHECK(checkTemplate("{path.0}/{query.a}", false, error));
  CHECK_FALSE(checkTemplate("{cursor}", false, error));  // only poll targets have a cursor
  CHECK(checkTemplate("/poll?c={cursor}", true, error));
}
