#include "routing/route_table.h"

#include <catch2/catch.hpp>

using namespace upgate;

namespace {

RequestHead request(std::string path, std::string host, HeaderList extra = {}) {
  RequestHead h;
  h.method = "GET";
  h.target = path;
  h.path = std::move(path);
  h.headers.push_back({"Host", std::move(host)});
  for (auto& x : extra) h.headers.push_back(x);
  return h;
}

RouteConfig route(std::string name, RouteMatch m) {
  RouteConfig r;
  r.name = std::move(name);
  r.match = std::move(m);
  r.upstream = "u";
  return r;
}

}  // namespace

TEST_CASE("route_table: first match wins in config order", "[routing]") {
  Config cfg;
  RouteMatch exact;
  exact.path = "/chat";
  RouteMatch prefix;
  prefix.path_prefix = "/chat";
  RouteMatch all;
  cfg.routes = {route("exact", exact), route("prefix", prefix), route("all", all)};
  RouteTable t(cfg);
  CHECK(t.match(request("/chat", "a"))->name == "exact");
  CHECK(t.match(request("/chat/room1", "a"))->name == "prefix");
  CHECK(t.match(request("/chatter", "a"))->name == "prefix");
  CHECK(t.match(request("/other", "a"))->name == "all");
}

TEST_CASE("route_table: no route returns null", "[routing]") {
  Config cfg;
  RouteMatch prefix;
  prefix.path_prefix = "/chat/";
  cfg.routes = {route("chat", prefix)};
  RouteTable t(cfg);
  CHECK(t.match(request("/chat", "a")) == nullptr);
  CHECK(t.match(request("/", "a")) == nullptr);
}

TEST_CASE("route_table: host matching", "[routing]") {
  SECTION("exact, case-insensitive, port ignored") {
    CHECK(RouteTable::hostMatches("example.com", "example.com"));
    CHECK(RouteTable::hostMatches("example.com", "EXAMPLE.com:8080"));
    CHECK(RouteTable::hostMatches("example.com", "example.com."));
    CHECK_FALSE(RouteTable::hostMatches("example.com", "www.example.com"));
  }
  SECTION("wildcard matches subdomains only") {
    CHECK(RouteTable::hostMatches("*.example.com", "a.example.com"));
    CHECK(RouteTable::hostMatches("*.example.com", "a.b.example.com:443"));
    CHECK_FALSE(RouteTable::hostMatches("*.example.com", "example.com"));
    CHECK_FALSE(RouteTable::hostMatches("*.example.com", "badexample.com"));
  }
  SECTION("IPv6 literal hosts") {
    CHECK(RouteTable::hostMatches("[::1]", "[::1]:8080"));
    CHECK_FALSE(RouteTable::hostMatches("[::1]", "[::2]:8080"));
  }
}

TEST_CASE("route_table: header criteria", "[routing]") {
  Config cfg;
  RouteMatch m;
  m.headers.push_back({"X-Tenant", std::string("blue")});
  m.headers.push_back({"X-Beta", std::nullopt});
  cfg.routes = {route("blue-beta", m)};
  RouteTable t(cfg);
  CHECK(t.match(request("/", "a", {{"x-tenant", "blue"}, {"X-BETA", "1"}})) != nullptr);
  CHECK(t.match(request("/", "a", {{"X-Tenant", "blue"}})) == nullptr);
  CHECK(t.match(request("/", "a", {{"X-Tenant", "green"}, {"X-Beta", "1"}})) == nullptr);
}

TEST_CASE("route_table: host criterion requires a Host header", "[routing]") {
  Config cfg;
  RouteMatch m;
  m.host = "*.example.com";
  cfg.routes = {route("wild", m)};
  RouteTable t(cfg);
  RequestHead h;
  h.path = "/";
  CHECK(t.match(h) == nullptr);
  CHECK(t.match(request("/", "chat.example.com"))->name == "wild");
}
