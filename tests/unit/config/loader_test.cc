#include "config/loader.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "config/config.h"
#include "loader_test_util.h"

namespace upgate {
namespace {

using namespace test;

TEST_CASE("loader: ConfigError::text formats the location", "[config]") {
  ConfigError e{"conf/x.yaml", 12, 7, "routes[0].upstream", "unknown upstream \"chta\""};
  CHECK(e.text() == "conf/x.yaml:12:7: routes[0].upstream: unknown upstream \"chta\"");
  e.path.clear();
  CHECK(e.text() == "conf/x.yaml:12:7: unknown upstream \"chta\"");
  e.line = 0;
  e.column = 0;
  CHECK(e.text() == "conf/x.yaml: unknown upstream \"chta\"");
  e.path = "workers";
  CHECK(e.text() == "conf/x.yaml: workers: unknown upstream \"chta\"");
}

TEST_CASE("loader: ConfigErrors::what joins every error", "[config]") {
  ConfigErrors errs({{"a.yaml", 1, 2, "x", "first"}, {"a.yaml", 3, 4, "", "second"}});
  CHECK(std::string(errs.what()) == "a.yaml:1:2: x: first\na.yaml:3:4: second");
  const char* p = errs.what();
  CHECK(errs.what() == p);  // stable while the errors do not change
}

TEST_CASE("loader: good fixture loads every key", "[config]") {
  const std::string path = kFixtures + "good.yaml";
  auto c = loadConfigFile(path);
  REQUIRE(c);
  CHECK(c->source == path);
  CHECK(c->workers == 3);
  CHECK(c->drain_timeout == Millis(1500));
  CHECK(c->drain_spread == Millis(250));

  REQUIRE(c->listeners.size() == 2);
  CHECK(c->listeners[0].name == "public");
  CHECK(c->listeners[0].address.host == "127.0.0.1");
  CHECK(c->listeners[0].address.port == 0);
  CHECK(c->listeners[0].backlog == 128);
  CHECK(c->listeners[1].name == "v6");
  CHECK(c->listeners[1].address.host == "::1");
  CHECK(c->listeners[1].address.port == 8443);
  CHECK(c->listeners[1].backlog == 511);

  REQUIRE(c->upstreams.size() == 2);
  const UpstreamConfig& chat = c->upstreams.at("chat");
  CHECK(chat.name == "chat");
  REQUIRE(chat.endpoints.size() == 3);
  CHECK(chat.endpoints[0].text() == "127.0.0.1:9001");
  CHECK(chat.endpoints[1].text() == "[::1]:9002");
  CHECK(chat.endpoints[2].text() == "chat.internal:80");
  CHECK(chat.connect_timeout == Millis(250));
  CHECK(chat.handshake_timeout == Millis(120000));
  const UpstreamConfig& feed = c->upstreams.at("feed");
  REQUIRE(feed.endpoints.size() == 1);
  CHECK(feed.endpoints[0].text() == "10.0.0.1:7000");
  CHECK(feed.connect_timeout == Millis(5000));
  CHECK(feed.handshake_timeout == Millis(10000));

  REQUIRE(c->routes.size() == 3);
  const RouteConfig& r0 = c->routes[0];
  CHECK(r0.name == "chat");
  CHECK_FALSE(r0.match.path.has_value());
  CHECK(r0.match.path_prefix == std::optional<std::string>("/chat"));
  CHECK(r0.match.host == std::optional<std::string>("*.example.com"));
  REQUIRE(r0.match.headers.size() == 2);
  CHECK(r0.match.headers[0].name == "X-Tenant");
  CHECK(r0.match.headers[0].value == std::optional<std::string>("blue"));
  CHECK(r0.match.headers[1].name == "X-Debug");
  CHECK_FALSE(r0.match.headers[1].value.has_value());
  CHECK(r0.kind == RouteKind::WebSocket);
  CHECK(r0.upstream == "chat");
  CHECK(r0.mode == TunnelMode::Passthrough);
  CHECK(c->routes[1].match.path == std::optional<std::string>("/feed"));
  CHECK(c->routes[1].upstream == "feed");
  CHECK(c->routes[2].name == "fallback");
  CHECK_FALSE(c->routes[2].match.path.has_value());
  CHECK_FALSE(c->routes[2].match.path_prefix.has_value());
  CHECK_FALSE(c->routes[2].match.host.has_value());
  CHECK(c->routes[2].match.headers.empty());

  CHECK(c->limits.max_head_bytes == 8192);
  CHECK(c->limits.max_headers == 50);
  CHECK(c->limits.high_water == 1048576);
  CHECK(c->limits.max_response_head_bytes == 4096);
  CHECK(c->limits.max_error_body_bytes == 1000);
  CHECK(c->limits.max_connections == 5000);
  CHECK(c->timeouts.head == Millis(5000));
  CHECK(c->timeouts.idle == Millis(3600000));
  CHECK(c->timeouts.half_close == Millis(0));
  CHECK(c->log.level == LogLevel::Debug);
  CHECK_FALSE(c->log.access_log);
}

TEST_CASE("loader: absent keys take the documented defaults", "[config]") {
  auto c = loadConfigString("listeners: [{name: a, address: \"127.0.0.1:1\"}]\n", "mem");
  const Config d;
  CHECK(c->source == "mem");
  CHECK(c->workers == 0);
  CHECK(c->drain_timeout == d.drain_timeout);
  CHECK(d.drain_spread == Millis(2000));
  CHECK(c->drain_spread == d.drain_spread);
  CHECK(c->upstreams.empty());
  CHECK(c->routes.empty());
  CHECK(c->listeners[0].backlog == 511);
  CHECK(c->limits.max_head_bytes == d.limits.max_head_bytes);
  CHECK(c->limits.max_headers == d.limits.max_headers);
  CHECK(c->limits.high_water == d.limits.high_water);
  CHECK(c->limits.max_response_head_bytes == d.limits.max_response_head_bytes);
  CHECK(c->limits.max_error_body_bytes == d.limits.max_error_body_bytes);
  CHECK(c->timeouts.head == d.timeouts.head);
  CHECK(c->timeouts.idle == d.timeouts.idle);
  CHECK(c->timeouts.half_close == d.timeouts.half_close);
  CHECK(c->timeouts.plugin_pause == Millis(10000));
  CHECK(c->timeouts.send == Millis(60000));
  CHECK(c->log.level == LogLevel::Info);
  CHECK(c->log.access_log);
}

TEST_CASE("loader: timeouts.plugin_pause", "[config]") {
  auto c = loadConfigString(
      "listeners: [{name: a, address: \"127.0.0.1:1\"}]\ntimeouts: {plugin_pause: 1500ms}\n",
      "mem");
  CHECK(c->timeouts.plugin_pause == Millis(1500));
}

TEST_CASE("loader: timeouts.send", "[config]") {
  auto c = loadConfigString(
      "listeners: [{name: a, address: \"127.0.0.1:1\"}]\ntimeouts: {send: 30s}\n", "mem");
  CHECK(c->timeouts.send == Millis(30000));
  c = loadConfigString("listeners: [{name: a, address: \"127.0.0.1:1\"}]\ntimeouts: {send: 0}\n",
                       "mem");
  CHECK(c->timeouts.send == Millis(0));  // never
}

TEST_CASE("loader: shipped configs load", "[config]") {
  auto file = GENERATE(as<std::string>{}, "conf/upgate.yaml", "conf/examples/minimal.yaml",
                       "conf/examples/multi-upstream.yaml", "conf/examples/tls.yaml");
  INFO(file);
  std::shared_ptr<const Config> c;
  try {
    c = loadConfigFile(std::string(UPGATE_SOURCE_DIR) + "/" + file);
  } catch (const ConfigErrors& e) {
    FAIL(e.what());
  }
  REQUIRE(c);
  CHECK_FALSE(c->listeners.empty());
  CHECK_FALSE(c->routes.empty());
}

TEST_CASE("loader: built-in default matches the documented setup", "[config]") {
  auto c = loadConfigFile(std::string(UPGATE_SOURCE_DIR) + "/conf/upgate.yaml");
  CHECK(c->workers == 2);
  REQUIRE(c->listeners.size() == 2);
  CHECK(c->listeners[0].name == "public");
  CHECK(c->listeners[0].address.text() == "127.0.0.1:8080");
  CHECK_FALSE(c->listeners[0].tls.has_value());
  // wss:// with the self-signed demo certificate: `tls: {}`, every TLS key at its default.
  CHECK(c->listeners[1].name == "secure");
  CHECK(c->listeners[1].address.text() == "127.0.0.1:8443");
  REQUIRE(c->listeners[1].tls.has_value());
  const ListenerTlsConfig& tls = *c->listeners[1].tls;
  const ListenerTlsConfig dt;
  CHECK(tls.certificates.empty());
  CHECK(tls.min_version == dt.min_version);
  CHECK(tls.ciphers == dt.ciphers);
  CHECK(tls.ciphersuites == dt.ciphersuites);
  CHECK(tls.groups == dt.groups);
  CHECK(tls.session_tickets == dt.session_tickets);
  CHECK(tls.ticket_key_rotation == dt.ticket_key_rotation);
  CHECK_FALSE(tls.client_auth.has_value());
  REQUIRE(c->upstreams.count("demo") == 1);
  CHECK_FALSE(c->upstreams.at("demo").tls.has_value());
  REQUIRE(c->upstreams.at("demo").endpoints.size() == 1);
  CHECK(c->upstreams.at("demo").endpoints[0].text() == "127.0.0.1:9001");
  // The demo: /echo tunnels to the echo server, /ticker bridges the legacy app's long-poll,
  // /news/ is a publish-API channel, and the rest is the legacy app over plain HTTP.
  const Config d;  // the reference file spells out every default; they must agree with config.h
  REQUIRE(c->routes.size() == 4);
  CHECK(c->routes[0].name == "echo");
  CHECK(c->routes[0].match.path_prefix == std::optional<std::string>("/echo"));
  CHECK(c->routes[0].kind == RouteKind::WebSocket);
  CHECK(c->routes[0].upstream == "demo");
  CHECK(c->routes[1].kind == RouteKind::LongPoll);
  CHECK(c->routes[1].upstream == "legacy");
  CHECK(c->routes[2].kind == RouteKind::Channel);
  CHECK(c->routes[3].kind == RouteKind::Http);
  CHECK(c->admin.enabled);
  CHECK(c->admin.address.text() == "127.0.0.1:9901");
  CHECK(c->limits.max_message_size == d.limits.max_message_size);
  CHECK(c->drain_timeout == d.drain_timeout);
  CHECK(c->listeners[0].backlog == ListenerConfig{}.backlog);
  CHECK(c->upstreams.at("demo").connect_timeout == UpstreamConfig{}.connect_timeout);
  CHECK(c->upstreams.at("demo").handshake_timeout == UpstreamConfig{}.handshake_timeout);
  CHECK(c->limits.max_head_bytes == d.limits.max_head_bytes);
  CHECK(c->limits.max_headers == d.limits.max_headers);
  CHECK(c->limits.high_water == d.limits.high_water);
  CHECK(c->limits.max_response_head_bytes == d.limits.max_response_head_bytes);
  CHECK(c->limits.max_error_body_bytes == d.limits.max_error_body_bytes);
  CHECK(c->timeouts.head == d.timeouts.head);
  CHECK(c->timeouts.idle == d.timeouts.idle);
  CHECK(c->timeouts.half_close == d.timeouts.half_close);
  CHECK(c->log.level == d.log.level);
  CHECK(c->log.access_log == d.log.access_log);
}

TEST_CASE("loader: unknown key names its path", "[config]") {
  const std::string path = kFixtures + "unknown_key.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 13, 7, "routes[1].match.pth",
             "unknown key (expected one of: path, path_prefix, host, headers)");
  CHECK(errs[0].text() == path +
                              ":13:7: routes[1].match.pth: unknown key (expected one of: path, "
                              "path_prefix, host, headers)");

  SECTION("at the top level") {
    CHECK(oneError(kBase + "worker: 2\n") ==
          "t.yaml:7:1: worker: unknown key (expected one of: workers, drain_timeout, "
          "drain_spread, listeners, upstreams, routes, limits, timeouts, log, admin, plugins)");
  }
  SECTION("in an upstream") {
    CHECK(oneError(kBase + "    timeout: 5s\n") ==
          "t.yaml:7:5: upstreams.chat.timeout: unknown key (expected one of: endpoints, "
          "connect_timeout, handshake_timeout, tls)");
  }
  SECTION("in limits, timeouts and log") {
    auto errs2 = errorsOf(kBase + "limits: {max_body: 1}\ntimeouts: {read: 1s}\nlog: {file: x}\n");
    REQUIRE(errs2.size() == 3);
    CHECK(errs2[0].path == "limits.max_body");
    CHECK(errs2[1].path == "timeouts.read");
    CHECK(errs2[2].path == "log.file");
  }
}

TEST_CASE("loader: wrong node type is an error", "[config]") {
  const std::string path = kFixtures + "wrong_type.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 2, 3, "listeners", "expected a sequence, got a map");

  SECTION("scalar where a map belongs") {
    CHECK(oneError(kBase + "limits: 5\n") == "t.yaml:7:9: limits: expected a map, got a scalar");
  }
  SECTION("sequence where a string belongs") {
    CHECK(oneError(kBase + "routes:\n  - name: [a]\n    upstream: chat\n") ==
          "t.yaml:8:11: routes[0].name: expected a string, got a sequence");
  }
  SECTION("empty value points at its key") {
    CHECK(oneError(kBase + "routes:\n  - name: r\n    match:\n    upstream: chat\n") ==
          "t.yaml:9:5: routes[0].match: expected a map, got null");
  }
  SECTION("endpoints must be a list") {
    CHECK(oneError("listeners: [{name: a, address: \"1.2.3.4:1\"}]\n"
                   "upstreams: {u: {endpoints: 127.0.0.1:9001}}\n") ==
          "t.yaml:2:28: upstreams.u.endpoints: expected a sequence, got a scalar");
  }
  SECTION("integer") {
    CHECK(oneError(kBase + "workers: two\n") ==
          "t.yaml:7:10: workers: expected an integer, got \"two\"");
    CHECK(oneError(kBase + "workers: 1.5\n") ==
          "t.yaml:7:10: workers: expected an integer, got \"1.5\"");
  }
  SECTION("boolean") {
    CHECK(oneError(kBase + "log: {access_log: maybe}\n") ==
          "t.yaml:7:19: log.access_log: expected true or false, got \"maybe\"");
    auto c = loadConfigString(kBase + "log: {access_log: No}\n", "t.yaml");
    CHECK_FALSE(c->log.access_log);
  }
  SECTION("header value") {
    CHECK(oneError(kBase +
                   "routes:\n  - {name: r, upstream: chat, match: {headers: {X-A: [1]}}}\n") ==
          "t.yaml:8:54: routes[0].match.headers.X-A: expected a string or ~ (any value), got a "
          "sequence");
  }
  SECTION("top level") {
    CHECK(oneError("- a\n") == "t.yaml:1:1: the top level must be a map, got a sequence");
  }
}

TEST_CASE("loader: bad duration is an error", "[config]") {
  const std::string path = kFixtures + "bad_duration.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 2);
  checkError(errs[0], path, 5, 9, "timeouts.head",
             "invalid duration \"10\": a unit is required (ms, s, m or h), e.g. 10s");
  checkError(errs[1], path, 6, 9, "timeouts.idle",
             "invalid duration \"5 minutes\" (expected e.g. 250ms, 10s, 1.5s, 2m, 1h or 0)");
}

TEST_CASE("loader: drain_spread takes a duration", "[config]") {
  CHECK(load(kBase + "drain_spread: 0\n")->drain_spread == Millis(0));
  CHECK(oneError(kBase + "drain_spread: soon\n") ==
        "t.yaml:7:15: drain_spread: invalid duration \"soon\" (expected e.g. 250ms, 10s, 1.5s, "
        "2m, 1h or 0)");
}

TEST_CASE("loader: bad size is an error", "[config]") {
  const std::string path = kFixtures + "bad_size.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 2);
  checkError(errs[0], path, 5, 15, "limits.high_water",
             "invalid size \"12XB\" (expected bytes or e.g. 16KiB, 1MiB, 16k, 16KB)");
  checkError(errs[1], path, 6, 19, "limits.max_head_bytes",
             "must be between 1KiB and 1MiB, got 512");
}

TEST_CASE("loader: bad address is an error", "[config]") {
  const std::string path = kFixtures + "bad_address.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 2);
  checkError(errs[0], path, 3, 14, "listeners[0].address",
             "invalid address \"localhost\": missing port (expected host:port)");
  checkError(errs[1], path, 6, 33, "upstreams.chat.endpoints[1]",
             "invalid address \"127.0.0.1:0\": port 0 is not allowed here (must be 1 to 65535)");
}

TEST_CASE("loader: unknown upstream points at the value", "[config]") {
  const std::string path = kFixtures + "unknown_upstream.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 10, 15, "routes[0].upstream", "unknown upstream \"chta\"");
  CHECK(errs[0].text() == path + ":10:15: routes[0].upstream: unknown upstream \"chta\"");
}

TEST_CASE("loader: duplicate names are errors", "[config]") {
  const std::string path = kFixtures + "duplicate_names.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 2);
  checkError(errs[0], path, 4, 11, "listeners[1].name",
             "duplicate listener name \"public\" (also listeners[0])");
  checkError(errs[1], path, 12, 11, "routes[1].name",
             "duplicate route name \"chat\" (also routes[0])");

  SECTION("duplicate YAML key") {
    CHECK(oneError(kBase + "  chat:\n    endpoints: [127.0.0.1:9002]\n") ==
          "t.yaml:7:3: upstreams.chat: duplicate key (first at line 5)");
  }
}

TEST_CASE("loader: missing listeners is an error", "[config]") {
  const std::string path = kFixtures + "missing_listeners.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 1, 1, "listeners", "required key is missing");

  SECTION("empty list") {
    CHECK(oneError("listeners: []\n") ==
          "t.yaml:1:12: listeners: at least one listener is required");
  }
  SECTION("other required keys") {
    auto e = errorsOf(
        "listeners:\n  - name: a\nupstreams:\n  u: {connect_timeout: 1s}\n"
        "routes:\n  - match: {path: /}\n");
    REQUIRE(e.size() == 4);
    CHECK(e[0].text() == "t.yaml:2:5: listeners[0].address: required key is missing");
    CHECK(e[1].text() == "t.yaml:4:6: upstreams.u.endpoints: required key is missing");
    CHECK(e[2].text() == "t.yaml:6:5: routes[0].name: required key is missing");
    CHECK(e[3].text() == "t.yaml:6:5: routes[0].upstream: required key is missing");
  }
}

TEST_CASE("loader: YAML syntax error reports yaml-cpp's position", "[config]") {
  const std::string path = kFixtures + "syntax_error.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 3, 19, "", "end of map not found");
  CHECK(errs[0].text() == path + ":3:19: end of map not found");

  SECTION("unquoted wildcard host gets a hint") {
    CHECK(oneError(kBase + "routes:\n  - {name: r, upstream: chat, match: {host: *.a.com}}\n") ==
          "t.yaml:8:45: the referenced anchor is not defined (a value starting with '*' must be "
          "quoted, e.g. \"*.example.com\")");
  }
}

TEST_CASE("loader: every error is reported at once", "[config]") {
  const std::string path = kFixtures + "many_errors.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 5);
  checkError(errs[0], path, 1, 10, "workers", "expected an integer, got \"many\"");
  checkError(errs[1], path, 5, 5, "listeners[0].colour",
             "unknown key (expected one of: name, address, backlog, tls)");
  checkError(errs[2], path, 11, 11, "routes[0].kind",
             "unknown route kind \"sockets\" (expected one of: websocket, http, longpoll, "
             "channel, tcp)");
  checkError(errs[3], path, 12, 15, "routes[0].upstream", "unknown upstream \"chta\"");
  checkError(errs[4], path, 13, 19, "timeouts.head", "must be greater than 0, got 0");

  try {
    loadConfigFile(path);
    FAIL("no exception");
  } catch (const ConfigErrors& e) {
    std::string what = e.what();
    CHECK(what == errs[0].text() + "\n" + errs[1].text() + "\n" + errs[2].text() + "\n" +
                      errs[3].text() + "\n" + errs[4].text());
  }
}

TEST_CASE("loader: a broken section does not also fail its checks", "[config]") {
  SECTION("invalid endpoint does not add 'at least one endpoint'") {
    auto e = errorsOf(
        "listeners: [{name: a, address: \"1.2.3.4:1\"}]\n"
        "upstreams: {u: {endpoints: [nope]}}\n");
    REQUIRE(e.size() == 1);
    CHECK(e[0].path == "upstreams.u.endpoints[0]");
  }
  SECTION("broken upstream still counts as defined") {
    auto e = errorsOf(
        "listeners: [{name: a, address: \"1.2.3.4:1\"}]\n"
        "upstreams: {u: 5}\nroutes: [{name: r, upstream: u}]\n");
    REQUIRE(e.size() == 1);
    CHECK(e[0].text() == "t.yaml:2:16: upstreams.u: expected a map, got a scalar");
  }
  SECTION("listeners of the wrong type are not also missing") {
    auto e = errorsOf("listeners: 3\n");
    REQUIRE(e.size() == 1);
    CHECK(e[0].text() == "t.yaml:1:12: listeners: expected a sequence, got a scalar");
  }
  SECTION("semantic errors on one route all show") {
    auto e = errorsOf(kBase +
                      "routes:\n  - name: r\n    upstream: chat\n    match:\n"
                      "      path: chat\n      path_prefix: /\n");
    REQUIRE(e.size() == 2);
    CHECK(e[0].text() == "t.yaml:11:7: routes[0].match: set either path or path_prefix, not both");
    CHECK(e[1].text() == "t.yaml:11:13: routes[0].match.path: must start with '/', got \"chat\"");
  }
}

TEST_CASE("loader: route kinds and modes", "[config]") {
  auto tcp = loadConfigString(kBase +
                                  "routes:\n  - name: r\n    upstream: chat\n    kind: tcp\n"
                                  "    keepalive: {interval: 20s, timeout: 5s}\n",
                              "t.yaml");
  REQUIRE(tcp->routes.size() == 1);
  CHECK(tcp->routes[0].kind == RouteKind::Tcp);
  CHECK(tcp->routes[0].keepalive.interval == Millis(20000));
  CHECK(oneError(kBase + "routes:\n  - name: r\n    upstream: chat\n    kind: tcp\n"
                         "    mode: frames\n") ==
        "t.yaml:11:11: routes[0].mode: applies to websocket routes (a tcp route relays a byte "
        "stream)");
  CHECK(oneError(kBase + "routes:\n  - name: r\n    upstream: chat\n    kind: ws\n") ==
        "t.yaml:10:11: routes[0].kind: unknown route kind \"ws\" (expected one of: websocket, "
        "http, longpoll, channel, tcp)");
  CHECK(loadConfigString(kBase + "routes:\n  - name: r\n    upstream: chat\n    mode: frames\n",
                         "t.yaml")
            ->routes.at(0)
            .mode == TunnelMode::Frames);
  CHECK(oneError(kBase + "routes:\n  - name: r\n    upstream: chat\n    mode: raw\n") ==
        "t.yaml:10:11: routes[0].mode: unknown tunnel mode \"raw\" (expected passthrough or "
        "frames)");
}

TEST_CASE("loader: longpoll, channel and http routes", "[config]") {
  SECTION("a longpoll route loads every key") {
    auto cfg = loadConfigString(
        kBase +
            "routes:\n  - name: ticker\n    kind: longpoll\n    upstream: chat\n"
            "    longpoll:\n      channel: \"{query.symbols}\"\n"
            "      poll: \"/poll?s={query.symbols}&c={cursor}\"\n"
            "      cursor: { header: X-Cursor, initial: \"7\" }\n      split: json_array\n"
            "      send: /send\n      grace: 2s\n      backoff: { initial: 100ms, max: 5s }\n"
            "      headers: { X-From: upgate }\n      max_response_bytes: 2MiB\n",
        "t.yaml");
    const RouteConfig& r = cfg->routes.at(0);
    CHECK(r.kind == RouteKind::LongPoll);
    CHECK(r.longpoll.channel == "{query.symbols}");
    CHECK(r.longpoll.poll == "/poll?s={query.symbols}&c={cursor}");
    CHECK(r.longpoll.cursor_header == "X-Cursor");
    CHECK(r.longpoll.cursor_initial == "7");
    CHECK(r.longpoll.split_json_array);
    CHECK(r.longpoll.send == "/send");
    CHECK(r.longpoll.grace == Millis(2000));
    CHECK(r.longpoll.backoff_initial == Millis(100));
    CHECK(r.longpoll.backoff_max == Millis(5000));
    REQUIRE(r.longpoll.headers.size() == 1);
    CHECK(r.longpoll.headers[0].first == "X-From");
    CHECK(r.longpoll.max_response_bytes == 2 * 1024 * 1024);
    // Not max_queue_bytes, which bounds a subscriber's unsent bytes, not what a poll may read.
    CHECK(loadConfigString(kBase + "routes:\n  - name: r\n    kind: longpoll\n    upstream: "
                                   "chat\n    max_queue_bytes: 1KiB\n    longpoll: { poll: /p }\n",
                           "t.yaml")
              ->routes.at(0)
              .longpoll.max_response_bytes == 16 * 1024 * 1024);
  }
  SECTION("longpoll needs a poll target with known variables") {
    CHECK(oneError(kBase + "routes:\n  - name: r\n    kind: longpoll\n    upstream: chat\n") ==
          "t.yaml:8:5: routes[0].longpoll.poll: required for a longpoll route");
    CHECK(oneError(kBase + "routes:\n  - name: r\n    kind: longpoll\n    upstream: chat\n"
                           "    longpoll: { poll: \"/p?x={query}\" }\n") ==
          "t.yaml:11:23: routes[0].longpoll.poll: unknown variable {query} (expected path, "
          "path.N, query.NAME, header.NAME, cursor)");
  }
  SECTION("a JSON cursor cannot be read from answers split as a JSON array") {
    // The split needs an array, the cursor an object: no answer can give both, and the poll
    // would repeat its cursor (and republish the same messages) forever.
    const std::string route =
        "routes:\n  - name: r\n    kind: longpoll\n    upstream: chat\n"
        "    longpoll:\n      poll: \"/p?c={cursor}\"\n";
    CHECK(oneError(kBase + route +
                   "      cursor: { json: \"$.cursor\" }\n      split: json_array\n") ==
          "t.yaml:13:23: routes[0].longpoll.cursor.json: cannot be read with split: json_array "
          "(an array answer has no fields): use cursor: {header: ...}, or split: body");
    auto cfg = loadConfigString(kBase + route + "      cursor: { json: \"$.cursor\" }\n", "t.yaml");
    CHECK(cfg->routes.at(0).longpoll.cursor_json == "$.cursor");
    CHECK_FALSE(cfg->routes.at(0).longpoll.split_json_array);
  }
  SECTION("a channel route needs no upstream but needs the admin API") {
    CHECK(
        oneError(kBase + "routes:\n  - name: n\n    kind: channel\n    channel: \"{path.1}\"\n") ==
        "t.yaml:9:11: routes[0].kind: channel routes need the publish API: configure `admin:`");
    auto cfg = loadConfigString(kBase +
                                    "admin: { address: 127.0.0.1:0, token: s3cret }\n"
                                    "routes:\n  - name: n\n    kind: channel\n"
                                    "    channel: \"{path.1}\"\n    overflow: drop\n",
                                "t.yaml");
    CHECK(cfg->admin.enabled);
    CHECK(cfg->admin.token == "s3cret");
    CHECK(cfg->routes.at(0).overflow == OverflowPolicy::Drop);
  }
  SECTION("overflow_notice: channel and longpoll routes, with overflow: drop, in UTF-8") {
    const std::string admin = "admin: { address: 127.0.0.1:0, token: s3cret }\n";
    const std::string channel = "routes:\n  - name: n\n    kind: channel\n";
    auto cfg = loadConfigString(
        kBase + admin + channel + "    overflow: drop\n    overflow_notice: 'missed {count}'\n",
        "t.yaml");
    CHECK(cfg->routes.at(0).overflow_notice == "missed {count}");
    CHECK(oneError(kBase + admin + channel + "    overflow: drop\n    overflow_notice: ''\n") ==
          "t.yaml:12:22: routes[0].overflow_notice: must not be empty (leave the key out for the "
          "default)");
    CHECK(oneError(kBase + admin + channel + "    overflow_notice: 'missed {count}'\n") ==
          "t.yaml:11:22: routes[0].overflow_notice: needs overflow: drop (with overflow: close "
          "nothing is skipped)");
    CHECK(oneError(kBase + admin + channel +
                   "    overflow: drop\n    overflow_notice: a\xff\xfe\n") ==  // raw bytes
          "t.yaml:12:22: routes[0].overflow_notice: must be valid UTF-8 (it goes as a text "
          "message)");
    // A mistyped policy is the one error: the notice is not also said to need drop.
    CHECK(oneError(kBase + admin + channel +
                   "    overflow: dorp\n    overflow_notice: 'missed {count}'\n") ==
          "t.yaml:11:15: routes[0].overflow: unknown overflow policy \"dorp\" (expected close or "
          "drop)");
    CHECK(oneError(kBase + admin + channel +
                   "    overflow: [drop]\n    overflow_notice: 'missed {count}'\n") ==
          "t.yaml:11:15: routes[0].overflow: expected a string, got a sequence");
    CHECK(oneError(kBase + "routes:\n  - name: w\n    upstream: chat\n"
                           "    overflow_notice: 'missed {count}'\n") ==
          "t.yaml:10:22: routes[0].overflow_notice: only channel and longpoll routes have "
          "subscribers");
  }
  SECTION("other routes still need an upstream") {
    CHECK(oneError(kBase + "routes:\n  - name: r\n    kind: http\n") ==
          "t.yaml:8:5: routes[0].upstream: required key is missing");
  }
}

TEST_CASE("loader: value ranges", "[config]") {
  struct Row {
    std::string yaml;
    std::string text;
  };
  auto row = GENERATE(values<Row>({
      {"workers: 257\n", "t.yaml:7:10: workers: must be between 0 and 256, got 257"},
      {"workers: -1\n", "t.yaml:7:10: workers: must be between 0 and 256, got -1"},
      {"workers: 99999999999999999999\n",
       "t.yaml:7:10: workers: must be between 0 and 256, got 99999999999999999999"},
      {"limits: {max_headers: 10001}\n",
       "t.yaml:7:23: limits.max_headers: must be between 1 and 10000, got 10001"},
      {"routes:\n  - name: lp\n    kind: longpoll\n    upstream: chat\n    longpoll:\n"
       "      poll: /poll\n      forward_headers: [Cookie, \"bad name\"]\n",
       "t.yaml:13:33: routes[0].longpoll.forward_headers[1]: invalid header name \"bad name\""},
      {"routes:\n  - name: lp\n    kind: longpoll\n    upstream: chat\n    longpoll:\n"
       "      poll: /poll\n      max_response_bytes: 1000\n",
       "t.yaml:13:27: routes[0].longpoll.max_response_bytes: must be between 1KiB and 1GiB, got "
       "1000"},
      {"routes:\n  - name: lp\n    kind: longpoll\n    upstream: chat\n    longpoll:\n"
       "      poll: /poll\n      max_response_bytes: 2GiB\n",
       "t.yaml:13:27: routes[0].longpoll.max_response_bytes: must be between 1KiB and 1GiB, got "
       "2GiB"},
      {"limits: {max_connections: -1}\n",
       "t.yaml:7:27: limits.max_connections: must be between 0 and 100000000, got -1"},
      {"limits: {high_water: 1023}\n",
       "t.yaml:7:22: limits.high_water: must be between 1KiB and 1GiB, got 1023"},
      {"limits: {max_head_bytes: 2MiB}\n",
       "t.yaml:7:26: limits.max_head_bytes: must be between 1KiB and 1MiB, got 2MiB"},
      {"limits: {max_response_head_bytes: 1000}\n",
       "t.yaml:7:35: limits.max_response_head_bytes: must be between 1KiB and 1MiB, got 1000"},
      {"limits: {max_error_body_bytes: 17MiB}\n",
       "t.yaml:7:32: limits.max_error_body_bytes: must be between 0 and 16MiB, got 17MiB"},
      {"timeouts: {head: 0}\n", "t.yaml:7:18: timeouts.head: must be greater than 0, got 0"},
      {"timeouts: {plugin_pause: 0}\n",
       "t.yaml:7:26: timeouts.plugin_pause: must be greater than 0, got 0"},
      {"timeouts: {close: 0}\n", "t.yaml:7:19: timeouts.close: must be greater than 0, got 0"},
      {"admin: {address: \"127.0.0.1:0\", max_body_bytes: 2GiB}\n",
       "t.yaml:7:49: admin.max_body_bytes: must be between 1 and 1GiB, got 2GiB"},
      {"log: {level: trace}\n",
       "t.yaml:7:14: log.level: unknown log level \"trace\" (expected one of: debug, info, warn, "
       "error)"},
      {"    connect_timeout: 0\n",
       "t.yaml:7:22: upstreams.chat.connect_timeout: must be greater than 0, got 0"},
  }));
  CHECK(oneError(kBase + row.yaml) == row.text);
}

TEST_CASE("loader: match rules", "[config]") {
  const std::string head = kBase + "routes:\n  - name: r\n    upstream: chat\n    match:\n";
  SECTION("paths must start with '/'") {
    CHECK(oneError(head + "      path_prefix: chat\n") ==
          "t.yaml:11:20: routes[0].match.path_prefix: must start with '/', got \"chat\"");
  }
  SECTION("host pattern") {
    CHECK(oneError(head + "      host: example.com:80\n") ==
          "t.yaml:11:13: routes[0].match.host: invalid host pattern \"example.com:80\" (expected "
          "a host name, \"*.example.com\" or an IP address, without port)");
    auto ok = GENERATE(as<std::string>{}, "example.com", "\"*.example.com\"", "10.0.0.1",
                       "\"[::1]\"", "Example.COM");
    INFO(ok);
    CHECK_NOTHROW(loadConfigString(head + "      host: " + ok + "\n", "t.yaml"));
  }
  SECTION("header names are tokens, unique ignoring case") {
    auto e =
        errorsOf(head + "      headers:\n        X-A: 1\n        x-a: 2\n        \"a b\": 3\n");
    REQUIRE(e.size() == 2);
    CHECK(e[0].text() ==
          "t.yaml:13:9: routes[0].match.headers.x-a: duplicate header \"x-a\" (header names "
          "ignore case)");
    CHECK(e[1].text() == "t.yaml:14:9: routes[0].match.headers.a b: invalid header name \"a b\"");
  }
  SECTION("empty match and absent match both match everything") {
    auto c = loadConfigString(head + "      {}\n", "t.yaml");
    CHECK(c->routes[0].match.headers.empty());
    CHECK_FALSE(c->routes[0].match.path_prefix.has_value());
  }
}

TEST_CASE("loader: file problems name the file", "[config]") {
  SECTION("missing file") {
    auto e = errorsOfFile(kFixtures + "does-not-exist.yaml");
    REQUIRE(e.size() == 1);
    CHECK(e[0].text() ==
          kFixtures + "does-not-exist.yaml: cannot open file: No such file or directory");
  }
  SECTION("a directory") {
    auto e = errorsOfFile(kFixtures);
    REQUIRE(e.size() == 1);
    CHECK(e[0].text() == kFixtures + ": cannot read file: Is a directory");
  }
  SECTION("empty document") {
    CHECK(oneError("") == "t.yaml: configuration is empty");
    CHECK(oneError("# nothing\n") == "t.yaml: configuration is empty");
  }
  SECTION("more than one document") {
    CHECK(oneError(kBase + "---\nworkers: 1\n") ==
          "t.yaml:8:1: only one YAML document is allowed per file");
  }
}

}  // namespace
}  // namespace upgate

namespace upgate {
namespace {

TEST_CASE("loader: odd documents fail with ConfigErrors only", "[config]") {
  auto doc = GENERATE(as<std::string>{}, "~\n", "42\n", "\"just a string\"\n", "[\n", "{a: 1\n",
                      "\tlisteners: []\n", "listeners: &a [*a]\n", "? [complex]\n: key\n",
                      "listeners: !!binary aGVsbG8=\n", std::string("a: \0\x01\xff\n", 7),
                      std::string(5000, '[') + std::string(5000, ']'),
                      "listeners:\n  - name: a\n    address: 1.2.3.4:1\n    <<: {backlog: 1}\n");
  INFO(doc);
  try {
    loadConfigString(doc, "t.yaml");
    FAIL("loaded");
  } catch (const ConfigErrors& e) {
    CHECK_FALSE(e.errors.empty());
  }
}

}  // namespace
}  // namespace upgate

namespace upgate {
namespace {

const std::string kTunnelBase =
    "listeners:\n"
    "  - name: public\n"
    "    address: 127.0.0.1:8080\n"
    "upstreams:\n"
    "  chat:\n"
    "    endpoints: [127.0.0.1:9001]\n"
    "routes:\n"
    "  - name: chat\n"
    "    upstream: chat\n";

std::vector<std::string> tunnelErrors(const std::string& route_tail) {
  std::vector<std::string> out;
  try {
    loadConfigString(kTunnelBase + route_tail, "t.yaml");
  } catch (const ConfigErrors& e) {
    for (const ConfigError& x : e.errors) out.push_back(x.text());
  }
  return out;
}

TEST_CASE("loader: route keepalive and compression", "[config]") {
  SECTION("defaults: off, negotiation passes through") {
    auto cfg = loadConfigString(kTunnelBase, "t.yaml");
    const Config& c = *cfg;
    const RouteConfig& r = c.routes[0];
    CHECK(r.keepalive.interval.count() == 0);
    CHECK(r.keepalive.timeout.count() == 10000);
    CHECK(r.keepalive.peer_pings == PeerPings::Forward);
    CHECK_FALSE(r.compression.enabled);
    CHECK(c.timeouts.close.count() == 5000);
  }
  SECTION("every key") {
    auto cfg = loadConfigString(kTunnelBase +
                                    "    mode: frames\n"
                                    "    keepalive: {interval: 30s, timeout: 5s, peer_pings: "
                                    "answer}\n"
                                    "    compression:\n"
                                    "      client: on\n"
                                    "      upstream: off\n"
                                    "      server_no_context_takeover: true\n"
                                    "      client_max_window_bits: 10\n"
                                    "      max_memory: 2MiB\n"
                                    "timeouts: {close: 2s}\n",
                                "t.yaml");
    const Config& c = *cfg;
    const RouteConfig& r = c.routes[0];
    CHECK(r.keepalive.interval.count() == 30000);
    CHECK(r.keepalive.timeout.count() == 5000);
    CHECK(r.keepalive.peer_pings == PeerPings::Answer);
    CHECK(r.compression.enabled);
    CHECK(r.compression.client);
    CHECK_FALSE(r.compression.upstream);
    CHECK(r.compression.server_no_context_takeover);
    CHECK(r.compression.client_max_window_bits == 10);
    CHECK(r.compression.max_memory == 2 * 1024 * 1024);
    CHECK(c.timeouts.close.count() == 2000);
  }
  SECTION("keepalive works in passthrough mode") {
    CHECK(tunnelErrors("    keepalive: {interval: 1s, timeout: 1s}\n").empty());
  }
  SECTION("errors name file, line, column and key") {
    CHECK(tunnelErrors("    keepalive: {interval: 1s, peer_pings: answer}\n") ==
          std::vector<std::string>{
              "t.yaml:10:43: routes[0].keepalive.peer_pings: answer needs mode: frames"});
    CHECK(tunnelErrors("    keepalive: {peer_pings: sometimes}\n") ==
          std::vector<std::string>{"t.yaml:10:29: routes[0].keepalive.peer_pings: unknown "
                                   "peer_pings \"sometimes\" (expected forward or answer)"});
    CHECK(tunnelErrors("    keepalive: {interval: 1s, timeout: 0}\n") ==
          std::vector<std::string>{
              "t.yaml:10:40: routes[0].keepalive.timeout: must be above 0 when interval is set"});
    CHECK(tunnelErrors("    compression: {client: on}\n") ==
          std::vector<std::string>{
              "t.yaml:10:18: routes[0].compression: per-leg compression needs mode: frames "
              "(passthrough relays the extension untouched)"});
    CHECK(tunnelErrors("    mode: frames\n    compression: {client_max_window_bits: 7}\n") ==
          std::vector<std::string>{"t.yaml:11:43: routes[0].compression.client_max_window_bits: "
                                   "must be between 8 and 15, got 7"});
    auto mem = tunnelErrors(
        "    mode: frames\n    compression: {client: on, upstream: on, max_memory: 64KiB}\n");
    REQUIRE(mem.size() == 1);
    CHECK(mem[0].rfind("t.yaml:11:", 0) == 0);
    CHECK(mem[0].find("routes[0].compression.max_memory: is 64KiB, below the") !=
          std::string::npos);
    CHECK(tunnelErrors("    mode: frames\n    compression: {level: 9}\n") ==
          std::vector<std::string>{
              "t.yaml:11:19: routes[0].compression.level: unknown key (expected one of: client, "
              "upstream, "
              "server_no_context_takeover, client_max_window_bits, max_memory)"});
  }
}

}  // namespace
}  // namespace upgate
