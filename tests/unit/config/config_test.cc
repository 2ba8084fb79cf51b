// Value parsers (defined in gateway/config/config.cc) and HostPort::text().
#include "config/config.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "config/loader.h"

namespace upgate {
namespace {

TEST_CASE("config: HostPort::text brackets IPv6 hosts", "[config]") {
  CHECK(HostPort{"127.0.0.1", 8080}.text() == "127.0.0.1:8080");
  CHECK(HostPort{"::1", 9001}.text() == "[::1]:9001");
  CHECK(HostPort{"backend.local", 0}.text() == "backend.local:0");
}

TEST_CASE("config: enum names match the YAML spelling", "[config]") {
  CHECK(std::string(logLevelName(LogLevel::Debug)) == "debug");
  CHECK(std::string(logLevelName(LogLevel::Info)) == "info");
  CHECK(std::string(logLevelName(LogLevel::Warn)) == "warn");
  CHECK(std::string(logLevelName(LogLevel::Error)) == "error");
  CHECK(std::string(routeKindName(RouteKind::WebSocket)) == "websocket");
  CHECK(std::string(tunnelModeName(TunnelMode::Passthrough)) == "passthrough");
}

TEST_CASE("parseDuration: accepted forms", "[config]") {
  struct Row {
    const char* text;
    int64_t ms;
  };
  auto row = GENERATE(values<Row>({
      {"0", 0},
      {"0ms", 0},
      {"0s", 0},
      {"250ms", 250},
      {"10s", 10000},
      {"2m", 120000},
      {"1h", 3600000},
      {"1.5s", 1500},
      {"1.500s", 1500},
      {"0.25s", 250},
      {"1.5m", 90000},
      {"0.5h", 1800000},
      {"0.001s", 1},
      {"0.00001h", 36},
      {"007s", 7000},
  }));
  INFO(row.text);
  auto d = parseDuration(row.text);
  REQUIRE(d.has_value());
  CHECK(d->count() == row.ms);
}

TEST_CASE("parseDuration: rejected forms", "[config]") {
  auto text =
      GENERATE(as<std::string>{}, "", "10", "1", "0.0", "00", "s", "ms", "-1s", "+1s", "1.s", ".5s",
               "1.5ms", "0.0001s", "10 s", " 10s", "10s ", "10S", "10sec", "1d", "1m30s", "1e3ms",
               "abc", "99999999999999999999ms", "9223372036854775807s", "1.0000000001s");
  INFO(text);
  CHECK_FALSE(parseDuration(text).has_value());
}

TEST_CASE("parseDuration: largest value", "[config]") {
  const int64_t max = std::numeric_limits<int64_t>::max();
  auto d = parseDuration(std::to_string(max) + "ms");
  REQUIRE(d.has_value());
  CHECK(d->count() == max);
  CHECK_FALSE(parseDuration("9223372036854775808ms").has_value());
}

TEST_CASE("parseSize: accepted forms", "[config]") {
  struct Row {
    const char* text;
    uint64_t bytes;
  };
  auto row = GENERATE(values<Row>({
      {"0", 0},
      {"512", 512},
      {"512B", 512},
      {"16KiB", 16384},
      {"1MiB", 1048576},
      {"1GiB", 1073741824},
      {"16k", 16384},
      {"16K", 16384},
      {"2m", 2097152},
      {"2M", 2097152},
      {"1g", 1073741824},
      {"1G", 1073741824},
      {"16KB", 16000},
      {"16kB", 16000},
      {"3MB", 3000000},
      {"2GB", 2000000000},
  }));
  INFO(row.text);
  auto s = parseSize(row.text);
  REQUIRE(s.has_value());
  CHECK(*s == row.bytes);
}

TEST_CASE("parseSize: rejected forms", "[config]") {
  auto text = GENERATE(as<std::string>{}, "", "KiB", "-1", "+1", "1.5MiB", "16 KiB", "16kb", "16Kb",
                       "16kib", "16KIB", "16XB", "1TiB", "0x10", " 1", "1 ", "99999999999999999999",
                       "18446744073709551615KiB");
  INFO(text);
  CHECK_FALSE(parseSize(text).has_value());
}

TEST_CASE("parseSize: largest value", "[config]") {
  const size_t max = std::numeric_limits<size_t>::max();
  auto s = parseSize(std::to_string(max));
  REQUIRE(s.has_value());
  CHECK(*s == max);
  CHECK_FALSE(parseSize(std::to_string(max / 1024 + 1) + "KiB").has_value());
}

TEST_CASE("parseHostPort: accepted forms", "[config]") {
  struct Row {
    const char* text;
    const char* host;
    uint16_t port;
  };
  auto row = GENERATE(values<Row>({
      {"127.0.0.1:8080", "127.0.0.1", 8080},
      {"0.0.0.0:1", "0.0.0.0", 1},
      {"[::1]:9001", "::1", 9001},
      {"[::]:443", "::", 443},
      {"[2001:db8::1]:65535", "2001:db8::1", 65535},
      {"[::ffff:192.0.2.1]:80", "::ffff:192.0.2.1", 80},
      {"host.name:80", "host.name", 80},
      {"localhost:0080", "localhost", 80},
      {"my_host-1.internal:9", "my_host-1.internal", 9},
      {"a:1", "a", 1},
  }));
  INFO(row.text);
  HostPort hp;
  std::string err;
  REQUIRE(parseHostPort(row.text, hp, err, false));
  CHECK(hp.host == row.host);
  CHECK(hp.port == row.port);
  CHECK(err.empty());
}

TEST_CASE("parseHostPort: port zero only when allowed", "[config]") {
  HostPort hp;
  std::string err;
  CHECK(parseHostPort("127.0.0.1:0", hp, err, true));
  CHECK(hp.port == 0);
  CHECK_FALSE(parseHostPort("127.0.0.1:0", hp, err, false));
  CHECK(err == "port 0 is not allowed here (must be 1 to 65535)");
}

TEST_CASE("parseHostPort: rejected forms explain why", "[config]") {
  struct Row {
    const char* text;
    const char* err;
  };
  auto row = GENERATE(values<Row>({
      {"", "missing port (expected host:port)"},
      {"localhost", "missing port (expected host:port)"},
      {"127.0.0.1:", "missing port"},
      {":8080", "missing host (use 0.0.0.0 or [::] for all interfaces)"},
      {"::1:8080", "IPv6 addresses must be in brackets, e.g. [::1]:8080"},
      {"[::1]", "missing port (expected [address]:port)"},
      {"[::1]8080", "expected ':' and a port after ']'"},
      {"[::1:8080", "missing ']' after IPv6 address"},
      {"[]:80", "empty IPv6 address"},
      {"[fe80::1%eth0]:80", "invalid IPv6 address"},
      {"[127.0.0.1]:80", "invalid IPv6 address"},
      {"256.0.0.1:80", "invalid IPv4 address"},
      {"1.2.3:80", "invalid IPv4 address"},
      {"-bad.host:80", "invalid host name"},
      {"bad..host:80", "invalid host name"},
      {"host.:80", "invalid host name"},
      {"sp ace:80", "invalid host name"},
      {"*.example.com:80", "invalid host name"},
      {"host:65536", "port must be a number from 1 to 65535"},
      {"host:-1", "port must be a number from 1 to 65535"},
      {"host:+80", "port must be a number from 1 to 65535"},
      {"host:80a", "port must be a number from 1 to 65535"},
      {"host:000080", "port must be a number from 1 to 65535"},
  }));
  INFO(row.text);
  HostPort hp;
  std::string err;
  CHECK_FALSE(parseHostPort(row.text, hp, err, false));
  CHECK(err == row.err);
}

TEST_CASE("parseHostPort: host name length limits", "[config]") {
  HostPort hp;
  std::string err;
  std::string label63(63, 'a');
  CHECK(parseHostPort(label63 + ".com:1", hp, err, false));
  CHECK_FALSE(parseHostPort(std::string(64, 'a') + ".com:1", hp, err, false));
  std::string long_name = label63 + "." + label63 + "." + label63 + "." + label63;  // 255
  CHECK_FALSE(parseHostPort(long_name + ":1", hp, err, false));
}

}  // namespace
}  // namespace upgate
