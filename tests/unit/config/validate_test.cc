#include "config/validate.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "config/config.h"

namespace upgate {
namespace {

Config validConfig() {
  Config c;
  c.listeners.push_back(ListenerConfig{"public", HostPort{"127.0.0.1", 8080}, 511, std::nullopt});
  UpstreamConfig up;
  up.name = "chat";
  up.endpoints.push_back(HostPort{"127.0.0.1", 9001});
  c.upstreams.emplace("chat", up);
  RouteConfig r;
  r.name = "chat";
  r.upstream = "chat";
  c.routes.push_back(r);
  return c;
}

std::vector<std::string> texts(const Config& c) {
  std::vector<std::string> out;
  for (const ConfigError& e : validateConfig(c)) out.push_back(e.text());
  return out;
}

TEST_CASE("validate: a hand-built config passes", "[config]") {
  CHECK(validateConfig(validConfig()).empty());
}

TEST_CASE("validate: errors carry a path but no location", "[config]") {
  Config c = validConfig();
  c.routes[0].upstream = "nope";
  auto errs = validateConfig(c);
  REQUIRE(errs.size() == 1);
  CHECK(errs[0].file.empty());
  CHECK(errs[0].line == 0);
  CHECK(errs[0].column == 0);
  CHECK(errs[0].text() == "routes[0].upstream: unknown upstream \"nope\"");
}

TEST_CASE("validate: listeners", "[config]") {
  Config c = validConfig();
  SECTION("at least one") {
    c.listeners.clear();
    CHECK(texts(c) == std::vector<std::string>{"listeners: at least one listener is required"});
  }
  SECTION("names and addresses unique; port 0 may repeat") {
    c.listeners.push_back(ListenerConfig{"public", HostPort{"127.0.0.1", 8080}, 511, std::nullopt});
    c.listeners.push_back(ListenerConfig{"a", HostPort{"127.0.0.1", 0}, 511, std::nullopt});
    c.listeners.push_back(ListenerConfig{"b", HostPort{"127.0.0.1", 0}, 511, std::nullopt});
    CHECK(texts(c) ==
          std::vector<std::string>{
              "listeners[1].name: duplicate listener name \"public\" (also listeners[0])",
              "listeners[1].address: address 127.0.0.1:8080 is also used by listeners[0]"});
  }
  SECTION("name rules") {
    c.listeners[0].name = "bad name";
    c.listeners.push_back(ListenerConfig{"", HostPort{"127.0.0.1", 1}, 511, std::nullopt});
    c.listeners.push_back(
        ListenerConfig{std::string(65, 'x'), HostPort{"127.0.0.1", 2}, 511, std::nullopt});
    c.listeners.push_back(
        ListenerConfig{"ok_name-1.v2", HostPort{"127.0.0.1", 3}, 511, std::nullopt});
    auto t = texts(c);
    REQUIRE(t.size() == 3);
    CHECK(t[0] ==
          "listeners[0].name: invalid name \"bad name\" (up to 64 letters, digits, '_', '-' and "
          "'.')");
    CHECK(t[1] == "listeners[1].name: must not be empty");
    CHECK(t[2].rfind("listeners[2].name: invalid name", 0) == 0);
  }
  SECTION("backlog and host") {
    c.listeners[0].backlog = 0;
    c.listeners[0].address.host.clear();
    CHECK(texts(c) == std::vector<std::string>{"listeners[0].address: missing host",
                                               "listeners[0].backlog: must be between 1 and "
                                               "65535, got 0"});
  }
}

TEST_CASE("validate: upstreams", "[config]") {
  Config c = validConfig();
  UpstreamConfig& up = c.upstreams.at("chat");
  SECTION("endpoints") {
    up.endpoints.push_back(HostPort{"10.0.0.1", 0});
    up.endpoints.push_back(HostPort{"", 80});
    CHECK(texts(c) ==
          std::vector<std::string>{"upstreams.chat.endpoints[1]: port must be between 1 and 65535",
                                   "upstreams.chat.endpoints[2]: missing host"});
    up.endpoints.clear();
    CHECK(texts(c) ==
          std::vector<std::string>{"upstreams.chat.endpoints: at least one endpoint is required"});
  }
  SECTION("timeouts") {
    up.connect_timeout = Millis(0);
    up.handshake_timeout = Millis(-5);
    CHECK(texts(c) == std::vector<std::string>{
                          "upstreams.chat.connect_timeout: must be greater than 0, got 0",
                          "upstreams.chat.handshake_timeout: must be greater than 0, got -5ms"});
  }
  SECTION("unused upstreams are fine") {
    UpstreamConfig other;
    other.name = "spare";
    other.endpoints.push_back(HostPort{"10.0.0.2", 1});
    c.upstreams.emplace("spare", other);
    CHECK(validateConfig(c).empty());
  }
}

TEST_CASE("validate: listener TLS", "[config][tls]") {
  Config c = validConfig();
  ListenerTlsConfig& t = c.listeners[0].tls.emplace();
  SECTION("defaults are valid: no certificates = self-signed") {
    CHECK(validateConfig(c).empty());
  }
  SECTION("certificate entries need cert and key") {
    t.certificates.push_back(TlsCertificateConfig{"a.pem", "", {}});
    t.certificates.push_back(TlsCertificateConfig{"", "b.key", {}});
    CHECK(texts(c) ==
          std::vector<std::string>{"listeners[0].tls.certificates[0].key: must not be empty",
                                   "listeners[0].tls.certificates[1].cert: must not be empty"});
  }
  SECTION("server names: DNS names or one leading wildcard label, no port, no address") {
    auto ok = GENERATE(as<std::string>{}, "example.com", "*.example.com", "localhost",
                       "Example.COM", "a-b.c_d.example", "*.com");
    INFO(ok);
    t.certificates.push_back(TlsCertificateConfig{"a.pem", "a.key", {ok}});
    CHECK(validateConfig(c).empty());
  }
  SECTION("bad server names") {
    auto bad = GENERATE(as<std::string>{}, "", "*", "*.", "**.a.com", "*.*.a.com", "a.*.com",
                        "a.com.", "a.com:443", "*.a.com:443", "[::1]", "::1", "*.10.0.0.1",
                        "a b.com", "-a.com", "https://a.com");
    INFO(bad);
    t.certificates.push_back(TlsCertificateConfig{"a.pem", "a.key", {bad}});
    auto v = texts(c);
    REQUIRE(v.size() == 1);
    CHECK(v[0].rfind("listeners[0].tls.certificates[0].server_names[0]: invalid server name", 0) ==
          0);
  }
  SECTION("an IP address is explained") {
    t.certificates.push_back(TlsCertificateConfig{"a.pem", "a.key", {"127.0.0.1"}});
    CHECK(texts(c) == std::vector<std::string>{
                          "listeners[0].tls.certificates[0].server_names[0]: invalid server name "
                          "\"127.0.0.1\": clients never send an IP address in SNI (connections "
                          "by address get the first certificate)"});
  }
  SECTION("a name is listed once per listener, ignoring case") {
    t.certificates.push_back(TlsCertificateConfig{"a.pem", "a.key", {"a.com", "*.a.com"}});
    t.certificates.push_back(TlsCertificateConfig{"b.pem", "b.key", {"b.com", "*.A.com"}});
    CHECK(texts(c) ==
          std::vector<std::string>{"listeners[0].tls.certificates[1].server_names[1]: server "
                                   "name \"*.A.com\" is also listed at "
                                   "listeners[0].tls.certificates[0].server_names[1]"});
    // Another listener may reuse it.
    c.listeners.push_back(ListenerConfig{"other", HostPort{"127.0.0.1", 8443}, 511, t});
    CHECK(texts(c).size() == 2);
  }
  SECTION("ticket key rotation must be positive") {
    t.ticket_key_rotation = Millis(0);
    CHECK(texts(c) == std::vector<std::string>{
                          "listeners[0].tls.ticket_key_rotation: must be greater than 0, got 0"});
    t.ticket_key_rotation = Millis(1);
    CHECK(validateConfig(c).empty());
  }
  SECTION("client_auth") {
    TlsClientAuthConfig& a = t.client_auth.emplace();
    CHECK(texts(c) ==
          std::vector<std::string>{"listeners[0].tls.client_auth.ca: must not be empty"});
    a.ca = "ca.pem";
    CHECK(validateConfig(c).empty());
    a.headers = ClientCertHeaders{"", "", ""};  // none sent: valid
    CHECK(validateConfig(c).empty());
    a.headers = ClientCertHeaders{"X-Id", "x-ID", "X-Fp:"};
    CHECK(texts(c) == std::vector<std::string>{
                          "listeners[0].tls.client_auth.headers.sans: header \"x-ID\" is also "
                          "used by subject (header names ignore case)",
                          "listeners[0].tls.client_auth.headers.fingerprint: invalid header name "
                          "\"X-Fp:\""});
  }
}

TEST_CASE("validate: upstream TLS", "[config][tls]") {
  Config c = validConfig();
  UpstreamTlsConfig& t = c.upstreams.at("chat").tls.emplace();
  SECTION("defaults are valid") {
    CHECK(t.ca == "system");
    CHECK(validateConfig(c).empty());
  }
  SECTION("cert and key go together") {
    t.cert = "c.pem";
    CHECK(texts(c) ==
          std::vector<std::string>{"upstreams.chat.tls.key: required when cert is set"});
    t.cert.clear();
    t.key = "c.key";
    CHECK(texts(c) ==
          std::vector<std::string>{"upstreams.chat.tls.cert: required when key is set"});
    t.cert = "c.pem";
    CHECK(validateConfig(c).empty());
  }
  SECTION("ca") {
    t.ca.clear();
    CHECK(texts(c) == std::vector<std::string>{
                          "upstreams.chat.tls.ca: must not be empty (\"system\" = the OS trust "
                          "store)"});
  }
  SECTION("server_name: a DNS name or an address, no port, no wildcard") {
    auto ok = GENERATE(as<std::string>{}, "", "chat.internal", "10.0.0.1", "::1", "fe80::1");
    INFO(ok);
    t.server_name = ok;
    CHECK(validateConfig(c).empty());
  }
  SECTION("bad server_name") {
    auto bad = GENERATE(as<std::string>{}, "chat.internal:443", "*.internal", "[::1]", "a b",
                        "10.0.0.1:443", "300.1.1.1");
    INFO(bad);
    t.server_name = bad;
    auto v = texts(c);
    REQUIRE(v.size() == 1);
    CHECK(v[0] == "upstreams.chat.tls.server_name: invalid server name \"" + bad +
                      "\" (expected a DNS name or an IP address, without port)");
  }
}

TEST_CASE("validate: routes", "[config]") {
  Config c = validConfig();
  RouteMatch& m = c.routes[0].match;
  SECTION("paths") {
    m.path = "/exact?x=1";
    CHECK(texts(c) == std::vector<std::string>{
                          "routes[0].match.path: must not contain '?' or '#' (the query string is "
                          "not matched)"});
    m.path.reset();
    m.path_prefix = "/a b";
    CHECK(texts(c) == std::vector<std::string>{
                          "routes[0].match.path_prefix: must not contain spaces or control "
                          "characters"});
    m.path_prefix = "";
    CHECK(texts(c) ==
          std::vector<std::string>{"routes[0].match.path_prefix: must start with '/', got \"\""});
  }
  SECTION("hosts") {
    auto bad = GENERATE(as<std::string>{}, "", "*", "*.", "*.*.a.com", "a.*.com", "a.com.",
                        "*.10.0.0.1", "*.[::1]", "[::1]:80", "a_b:80");
    INFO(bad);
    m.host = bad;
    auto t = texts(c);
    REQUIRE(t.size() == 1);
    CHECK(t[0].rfind("routes[0].match.host: invalid host pattern", 0) == 0);
  }
  SECTION("header values must not carry control characters") {
    m.headers.push_back(HeaderMatch{"X-A", std::string("a\r\nb")});
    CHECK(texts(c) == std::vector<std::string>{
                          "routes[0].match.headers.X-A: header value must not contain control "
                          "characters"});
  }
  SECTION("upstream") {
    c.routes[0].upstream.clear();
    CHECK(texts(c) == std::vector<std::string>{"routes[0].upstream: missing upstream"});
  }
  SECTION("no routes is valid") {
    c.routes.clear();
    CHECK(validateConfig(c).empty());
  }
}

TEST_CASE("validate: limits and timeouts at their bounds", "[config]") {
  Config c = validConfig();
  c.limits.max_head_bytes = 1024;
  c.limits.max_response_head_bytes = 1024 * 1024;
  c.limits.max_headers = 10000;
  c.limits.high_water = 1024;
  c.limits.max_error_body_bytes = 0;
  c.timeouts.head = Millis(1);
  c.timeouts.idle = Millis(0);
  c.timeouts.half_close = Millis(0);
  c.drain_timeout = Millis(0);
  c.workers = 256;
  CHECK(validateConfig(c).empty());

  c.timeouts.idle = Millis(-1);
  c.drain_timeout = Millis(-1);
  c.limits.max_headers = 0;
  CHECK(texts(c) == std::vector<std::string>{"drain_timeout: must not be negative",
                                             "limits.max_headers: must be between 1 and 10000, "
                                             "got 0",
                                             "timeouts.idle: must not be negative"});
}

TEST_CASE("validate: message helpers", "[config]") {
  CHECK(quoted("a\"b\\c\n") == "\"a\\\"b\\\\c\\x0a\"");
  CHECK(formatSize(0) == "0");
  CHECK(formatSize(1000) == "1000");
  CHECK(formatSize(16384) == "16KiB");
  CHECK(formatSize(size_t{3} << 20) == "3MiB");
  CHECK(formatSize(size_t{1} << 30) == "1GiB");
  CHECK(formatDuration(Millis(0)) == "0");
  CHECK(formatDuration(Millis(1500)) == "1500ms");
  CHECK(formatDuration(Millis(10000)) == "10s");
  CHECK(formatDuration(Millis(120000)) == "2m");
  CHECK(formatDuration(Millis(7200000)) == "2h");
}

}  // namespace
}  // namespace upgate
