// The `tls:` sections of listeners and upstreams (loader.cc), and the checks validate.cc adds
// for them, seen through the loader: values, resolved file names, and errors with their
// position. The other keys are in loader_test.cc.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/loader.h"
#include "loader_test_util.h"

namespace upgate {
namespace {

using namespace test;

const std::string kPem = kFixtures + "certs/server.pem";
const std::string kKey = kFixtures + "certs/server.key";
const std::string kCa = kFixtures + "certs/ca.pem";

// A listener whose `tls:` map is `body`: body lines start at line 5, indented 6.
std::string listenerTls(const std::string& body) {
  return "listeners:\n"
         "  - name: secure\n"
         "    address: 127.0.0.1:8443\n"
         "    tls:\n" +
         body;
}

// An upstream whose `tls:` map is `body`: body lines start at line 6, indented 6.
std::string upstreamTls(const std::string& body) {
  return "listeners: [{name: a, address: \"127.0.0.1:1\"}]\n"
         "upstreams:\n"
         "  chat:\n"
         "    endpoints: [127.0.0.1:9443]\n"
         "    tls:\n" +
         body;
}

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

TEST_CASE("loader tls: the shipped TLS example loads with its values", "[config][tls]") {
  const std::string dir = std::string(UPGATE_SOURCE_DIR) + "/conf/examples/";
  std::shared_ptr<const Config> c;
  try {
    c = loadConfigFile(dir + "tls.yaml");
  } catch (const ConfigErrors& e) {
    FAIL(e.what());
  }
  REQUIRE(c->listeners.size() == 1);
  REQUIRE(c->listeners[0].tls.has_value());
  const ListenerTlsConfig& t = *c->listeners[0].tls;
  REQUIRE(t.certificates.size() == 2);
  // Relative to the config file's directory, resolved at load time.
  CHECK(t.certificates[0].cert == dir + "certs/example.com.pem");
  CHECK(t.certificates[0].key == dir + "certs/example.com.key");
  CHECK(t.certificates[0].server_names == std::vector<std::string>{"example.com", "*.example.com"});
  CHECK(t.certificates[1].cert == dir + "certs/api.example.net.pem");
  CHECK(t.certificates[1].key == dir + "certs/api.example.net.key");
  CHECK(t.certificates[1].server_names.empty());
  CHECK(t.min_version == TlsVersion::Tls12);
  CHECK(
      t.ciphers ==
      "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305");
  CHECK(t.ciphersuites ==
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  CHECK(t.groups == "X25519:P-256:P-384");
  CHECK(t.session_tickets);
  CHECK(t.ticket_key_rotation == Millis(3600 * 1000));
  CHECK_FALSE(t.client_auth.has_value());  // commented out in the example

  REQUIRE(c->upstreams.count("chat") == 1);
  REQUIRE(c->upstreams.at("chat").tls.has_value());
  const UpstreamTlsConfig& chat = *c->upstreams.at("chat").tls;
  CHECK(chat.ca == dir + "certs/demo-ca.pem");
  CHECK(chat.server_name == "chat.internal");
  CHECK(chat.verify);
  CHECK(chat.cert.empty());
  CHECK(chat.key.empty());
  REQUIRE(c->upstreams.at("api").tls.has_value());
  const UpstreamTlsConfig& api = *c->upstreams.at("api").tls;
  CHECK(api.ca == "system");
  CHECK(api.server_name.empty());
  CHECK(api.verify);
}

TEST_CASE("loader tls: fixture with every key set", "[config][tls]") {
  const std::string path = kFixtures + "tls_good.yaml";
  auto c = loadConfigFile(path);
  REQUIRE(c->listeners.size() == 3);
  CHECK_FALSE(c->listeners[0].tls.has_value());

  REQUIRE(c->listeners[1].tls.has_value());
  const ListenerTlsConfig& t = *c->listeners[1].tls;
  REQUIRE(t.certificates.size() == 2);
  CHECK(t.certificates[0].cert == kFixtures + "certs/server.pem");
  CHECK(t.certificates[0].key == kFixtures + "certs/server.key");
  CHECK(t.certificates[0].server_names == std::vector<std::string>{"example.com", "*.example.com"});
  // Joined to the directory as written, not normalized.
  CHECK(t.certificates[1].cert == kFixtures + "./certs/server.pem");
  CHECK(t.certificates[1].key == kFixtures + "certs/../certs/server.key");
  CHECK(t.certificates[1].server_names.empty());
  CHECK(t.min_version == TlsVersion::Tls13);
  CHECK(t.ciphers == "ECDHE+AESGCM");
  CHECK(t.ciphersuites == "TLS_AES_256_GCM_SHA384");
  CHECK(t.groups == "X25519");
  CHECK_FALSE(t.session_tickets);
  CHECK_FALSE(t.record_offload);
  CHECK(t.ticket_key_rotation == Millis(30 * 60 * 1000));
  REQUIRE(t.client_auth.has_value());
  CHECK(t.client_auth->ca == kFixtures + "certs/ca.pem");
  CHECK_FALSE(t.client_auth->required);
  CHECK(t.client_auth->headers.subject == "X-Subject");
  CHECK(t.client_auth->headers.sans.empty());  // "" = not sent
  CHECK(t.client_auth->headers.fingerprint == "X-Fp");

  // `tls: {}`: on, with every default.
  REQUIRE(c->listeners[2].tls.has_value());
  const ListenerTlsConfig& d = *c->listeners[2].tls;
  const ListenerTlsConfig dd;
  CHECK(d.certificates.empty());
  CHECK(d.min_version == TlsVersion::Tls12);
  CHECK(d.ciphers.empty());
  CHECK(d.ciphersuites.empty());
  CHECK(d.groups.empty());
  CHECK(d.session_tickets);
  CHECK(d.record_offload);
  CHECK(d.ticket_key_rotation == dd.ticket_key_rotation);
  CHECK_FALSE(d.client_auth.has_value());

  CHECK_FALSE(c->upstreams.at("plain").tls.has_value());
  REQUIRE(c->upstreams.at("secure").tls.has_value());
  const UpstreamTlsConfig& u = *c->upstreams.at("secure").tls;
  CHECK(u.ca == kFixtures + "certs/ca.pem");
  CHECK(u.server_name == "chat.internal");
  CHECK_FALSE(u.verify);
  CHECK(u.cert == kFixtures + "certs/server.pem");
  CHECK(u.key == kFixtures + "certs/server.key");
  CHECK_FALSE(u.record_offload);
  REQUIRE(c->upstreams.at("defaults").tls.has_value());
  const UpstreamTlsConfig& ud = *c->upstreams.at("defaults").tls;
  CHECK(ud.ca == "system");
  CHECK(ud.server_name.empty());
  CHECK(ud.verify);
  CHECK(ud.cert.empty());
  CHECK(ud.key.empty());
  CHECK(ud.record_offload);

  SECTION("ClientCertHeaders keep their defaults when headers is absent") {
    auto c2 = load(listenerTls("      client_auth: {ca: " + kCa + "}\n"));
    const TlsClientAuthConfig& a = *c2->listeners[0].tls->client_auth;
    CHECK(a.required);
    CHECK(a.headers.subject == "X-Client-Cert-Subject");
    CHECK(a.headers.sans == "X-Client-Cert-SANs");
    CHECK(a.headers.fingerprint == "X-Client-Cert-SHA256");
  }
}

TEST_CASE("loader tls: relative file names", "[config][tls]") {
  namespace fs = std::filesystem;
  // The fixtures directory as seen from the working directory, e.g. "../../tests/fixtures/config".
  const std::string rel = fs::relative(kFixtures).string() + "/";
  REQUIRE(rel.front() != '/');

  SECTION("a relative config path gives paths usable from the working directory") {
    auto c = loadConfigFile(rel + "tls_good.yaml");
    const std::string cert = c->listeners[1].tls->certificates[0].cert;
    CHECK(cert == rel + "certs/server.pem");
    CHECK(fs::is_regular_file(cert));
    CHECK(c->upstreams.at("secure").tls->key == rel + "certs/server.key");
  }
  SECTION("loadConfigString with a source that is not a file: the working directory") {
    auto c = load(listenerTls("      certificates: [{cert: " + rel +
                              "certs/server.pem, key: " + rel + "certs/server.key}]\n"));
    CHECK(c->listeners[0].tls->certificates[0].cert == rel + "certs/server.pem");
    CHECK(oneError(
              listenerTls("      certificates: [{cert: certs/server.pem, key: " + kKey + "}]\n")) ==
          "t.yaml:5:29: listeners[0].tls.certificates[0].cert: cannot read \"certs/server.pem\": "
          "No such file or directory");
  }
  SECTION("loadConfigString with a source that names a file: that file's directory") {
    auto c = loadConfigString(readAll(kFixtures + "tls_good.yaml"), kFixtures + "tls_good.yaml");
    CHECK(c->listeners[1].tls->certificates[0].cert == kFixtures + "certs/server.pem");
  }
  SECTION("the built-in copy of conf/upgate.yaml names no files") {
    const std::string text = readAll(std::string(UPGATE_SOURCE_DIR) + "/conf/upgate.yaml");
    REQUIRE_FALSE(text.empty());
    auto c = loadConfigString(text, "<built-in conf/upgate.yaml>");
    CHECK(c->listeners.at(1).tls.has_value());
  }
  SECTION("absolute paths and ca: system are kept as written") {
    auto c = load(upstreamTls("      {ca: system, cert: " + kPem + ", key: " + kKey + "}\n"));
    const UpstreamTlsConfig& u = *c->upstreams.at("chat").tls;
    CHECK(u.ca == "system");
    CHECK(u.cert == kPem);
    CHECK(u.key == kKey);
  }
}

TEST_CASE("loader tls: unknown key names its path", "[config][tls]") {
  const std::string path = kFixtures + "tls_unknown_key.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 5, 7, "listeners[0].tls.cert",
             "unknown key (expected one of: certificates, min_version, ciphers, ciphersuites, "
             "groups, session_tickets, ticket_key_rotation, client_auth, record_offload)");

  SECTION("in a certificate") {
    CHECK(oneError(listenerTls("      certificates:\n        - cert: " + kPem +
                               "\n          key: " + kKey + "\n          names: [a.com]\n")) ==
          "t.yaml:8:11: listeners[0].tls.certificates[0].names: unknown key (expected one of: "
          "cert, key, server_names)");
  }
  SECTION("in client_auth and its headers") {
    auto e = errorsOf(listenerTls("      client_auth:\n        ca: " + kCa +
                                  "\n        verify: true\n        headers: {subj: X-S}\n"));
    REQUIRE(e.size() == 2);
    CHECK(e[0].text() ==
          "t.yaml:7:9: listeners[0].tls.client_auth.verify: unknown key (expected one of: ca, "
          "required, headers)");
    CHECK(e[1].text() ==
          "t.yaml:8:19: listeners[0].tls.client_auth.headers.subj: unknown key (expected one "
          "of: subject, sans, fingerprint)");
  }
  SECTION("in an upstream") {
    CHECK(oneError(upstreamTls("      sni: chat.internal\n")) ==
          "t.yaml:6:7: upstreams.chat.tls.sni: unknown key (expected one of: ca, server_name, "
          "verify, cert, key, record_offload)");
  }
}

TEST_CASE("loader tls: min_version", "[config][tls]") {
  const std::string path = kFixtures + "tls_bad_min_version.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 2);
  checkError(errs[0], path, 5, 20, "listeners[0].tls.min_version",
             "TLS version \"1.1\" is not supported (expected \"1.2\" or \"1.3\", or TLSv1.2 / "
             "TLSv1.3)");
  checkError(errs[1], path, 8, 25, "listeners[1].tls.min_version",
             "unknown TLS version \"TLS1.3\" (expected \"1.2\" or \"1.3\", or TLSv1.2 / TLSv1.3)");

  SECTION("accepted spellings") {
    struct Row {
      const char* text;
      TlsVersion version;
    };
    auto row = GENERATE(values<Row>({{"1.2", TlsVersion::Tls12},
                                     {"\"1.2\"", TlsVersion::Tls12},
                                     {"TLSv1.2", TlsVersion::Tls12},
                                     {"1.3", TlsVersion::Tls13},
                                     {"\"1.3\"", TlsVersion::Tls13},
                                     {"TLSv1.3", TlsVersion::Tls13}}));
    INFO(row.text);
    auto c = load(listenerTls(std::string("      min_version: ") + row.text + "\n"));
    CHECK(c->listeners[0].tls->min_version == row.version);
  }
}

TEST_CASE("loader tls: cert without key, or key without cert", "[config][tls]") {
  const std::string path = kFixtures + "tls_cert_without_key.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 3);
  checkError(errs[0], path, 6, 11, "listeners[0].tls.certificates[0].key",
             "required key is missing");
  checkError(errs[1], path, 11, 7, "upstreams.chat.tls.key", "required when cert is set");
  checkError(errs[2], path, 14, 10, "upstreams.feed.tls.cert", "required when key is set");

  SECTION("a certificate entry needs both") {
    CHECK(oneError(listenerTls("      certificates:\n        - key: " + kKey + "\n")) ==
          "t.yaml:6:11: listeners[0].tls.certificates[0].cert: required key is missing");
  }
}

TEST_CASE("loader tls: unreadable files are reported at their key", "[config][tls]") {
  const std::string path = kFixtures + "tls_missing_file.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 9, 15, "listeners[1].tls.certificates[0].cert",
             "cannot read \"certs/example.pem\": No such file or directory");
  CHECK(errs[0].text() == path +
                              ":9:15: listeners[1].tls.certificates[0].cert: cannot read "
                              "\"certs/example.pem\": No such file or directory");

  SECTION("a directory") {
    CHECK(oneError(listenerTls("      certificates: [{cert: " + kPem + ", key: " + kFixtures +
                               "certs}]\n")) ==
          "t.yaml:5:" + std::to_string(36 + kPem.size()) +
              ": listeners[0].tls.certificates[0].key: cannot read \"" + kFixtures +
              "certs\": Is a directory");
  }
  SECTION("client CA") {
    CHECK(oneError(listenerTls("      client_auth:\n        ca: /nonexistent/ca.pem\n")) ==
          "t.yaml:6:13: listeners[0].tls.client_auth.ca: cannot read \"/nonexistent/ca.pem\": No "
          "such file or directory");
  }
  SECTION("upstream CA, certificate and key") {
    auto e = errorsOf(upstreamTls(
        "      ca: /nonexistent/ca.pem\n      cert: /nonexistent/c.pem\n      key: " + kKey +
        "\n"));
    REQUIRE(e.size() == 2);
    CHECK(e[0].text() ==
          "t.yaml:6:11: upstreams.chat.tls.ca: cannot read \"/nonexistent/ca.pem\": No such file "
          "or directory");
    CHECK(e[1].text() ==
          "t.yaml:7:13: upstreams.chat.tls.cert: cannot read \"/nonexistent/c.pem\": No such "
          "file or directory");
  }
  SECTION("empty file names") {
    CHECK(oneError(upstreamTls("      ca: \"\"\n")) ==
          "t.yaml:6:11: upstreams.chat.tls.ca: must not be empty");
  }
}

TEST_CASE("loader tls: server names", "[config][tls]") {
  const std::string path = kFixtures + "tls_bad_server_name.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 3);
  const std::string base = "listeners[0].tls.certificates[0].server_names";
  checkError(errs[0], path, 9, 15, base + "[0]",
             "invalid server name \"example.com:443\" (expected a DNS name or \"*.example.com\", "
             "without port)");
  checkError(errs[1], path, 11, 15, base + "[2]",
             "invalid server name \"10.0.0.1\": clients never send an IP address in SNI "
             "(connections by address get the first certificate)");
  checkError(errs[2], path, 12, 15, base + "[3]",
             "invalid server name \"a.*.example.com\" (expected a DNS name or \"*.example.com\", "
             "without port)");

  SECTION("a name listed twice") {
    CHECK(oneError(listenerTls("      certificates:\n        - {cert: " + kPem + ", key: " + kKey +
                               ", server_names: [a.example.com]}\n        - {cert: " + kPem +
                               ", key: " + kKey + ", server_names: [A.Example.com]}\n")) ==
          "t.yaml:7:" + std::to_string(42 + kPem.size() + kKey.size()) +
              ": listeners[0].tls.certificates[1].server_names[0]: server name "
              "\"A.Example.com\" is also listed at "
              "listeners[0].tls.certificates[0].server_names[0]");
  }
  SECTION("upstream server_name: a DNS name or an address") {
    for (const char* ok : {"chat.internal", "10.0.0.1", "\"::1\""}) {
      INFO(ok);
      CHECK_NOTHROW(load(upstreamTls(std::string("      server_name: ") + ok + "\n")));
    }
    CHECK(oneError(upstreamTls("      server_name: chat.internal:443\n")) ==
          "t.yaml:6:20: upstreams.chat.tls.server_name: invalid server name "
          "\"chat.internal:443\" (expected a DNS name or an IP address, without port)");
  }
}

TEST_CASE("loader tls: client_auth", "[config][tls]") {
  const std::string path = kFixtures + "tls_client_auth_without_ca.yaml";
  auto errs = errorsOfFile(path);
  REQUIRE(errs.size() == 1);
  checkError(errs[0], path, 6, 9, "listeners[0].tls.client_auth.ca", "required key is missing");

  SECTION("the system store is not a client CA") {
    CHECK(oneError(listenerTls("      client_auth: {ca: system}\n")) ==
          "t.yaml:5:25: listeners[0].tls.client_auth.ca: \"system\" is not allowed here: name the "
          "PEM file of the CAs that issue your client certificates");
  }
  SECTION("header names") {
    auto e = errorsOf(listenerTls("      client_auth:\n        ca: " + kCa +
                                  "\n        headers:\n          subject: \"X Subject\"\n"
                                  "          fingerprint: x-client-cert-sans\n"));
    REQUIRE(e.size() == 2);
    CHECK(e[0].text() ==
          "t.yaml:8:20: listeners[0].tls.client_auth.headers.subject: invalid header name \"X "
          "Subject\"");
    CHECK(e[1].text() ==
          "t.yaml:9:24: listeners[0].tls.client_auth.headers.fingerprint: header "
          "\"x-client-cert-sans\" is also used by sans (header names ignore case)");
  }
}

TEST_CASE("loader tls: other values", "[config][tls]") {
  SECTION("tls must be a map") {
    CHECK(oneError(listenerTls("")) ==
          "t.yaml:4:5: listeners[0].tls: expected a map, got null (`tls: {}` enables TLS with the "
          "defaults; leave the key out for none)");
    CHECK(oneError(upstreamTls("      true\n")) ==
          "t.yaml:6:7: upstreams.chat.tls: expected a map, got a scalar (`tls: {}` enables TLS "
          "with the defaults; leave the key out for none)");
  }
  SECTION("OpenSSL strings: not checked here, but not empty") {
    auto c = load(listenerTls("      ciphers: not-a-cipher\n      groups: nope\n"));
    CHECK(c->listeners[0].tls->ciphers == "not-a-cipher");
    CHECK(c->listeners[0].tls->groups == "nope");
    auto e =
        errorsOf(listenerTls("      ciphers: \"\"\n      ciphersuites: ''\n      groups: \"\"\n"));
    REQUIRE(e.size() == 3);
    CHECK(e[0].text() ==
          "t.yaml:5:16: listeners[0].tls.ciphers: must not be empty (leave the key out for the "
          "default)");
    CHECK(e[1].path == "listeners[0].tls.ciphersuites");
    CHECK(e[2].path == "listeners[0].tls.groups");
    CHECK(oneError(upstreamTls("      server_name: \"\"\n")) ==
          "t.yaml:6:20: upstreams.chat.tls.server_name: must not be empty (leave the key out for "
          "the default)");
  }
  SECTION("durations and booleans") {
    CHECK(oneError(listenerTls("      ticket_key_rotation: 0\n")) ==
          "t.yaml:5:28: listeners[0].tls.ticket_key_rotation: must be greater than 0, got 0");
    CHECK(oneError(listenerTls("      ticket_key_rotation: 60\n")) ==
          "t.yaml:5:28: listeners[0].tls.ticket_key_rotation: invalid duration \"60\": a unit is "
          "required (ms, s, m or h), e.g. 10s");
    CHECK(oneError(listenerTls("      record_offload: 1\n")) ==
          "t.yaml:5:23: listeners[0].tls.record_offload: expected true or false, got \"1\"");
    CHECK(oneError(listenerTls("      session_tickets: sometimes\n")) ==
          "t.yaml:5:24: listeners[0].tls.session_tickets: expected true or false, got "
          "\"sometimes\"");
    CHECK(oneError(upstreamTls("      verify: maybe\n")) ==
          "t.yaml:6:15: upstreams.chat.tls.verify: expected true or false, got \"maybe\"");
  }
  SECTION("wrong node types") {
    CHECK(oneError(listenerTls("      certificates: " + kPem + "\n")) ==
          "t.yaml:5:21: listeners[0].tls.certificates: expected a sequence, got a scalar");
    CHECK(oneError(listenerTls("      certificates: [{cert: " + kPem + ", key: " + kKey +
                               ", server_names: a.com}]\n")) ==
          "t.yaml:5:" + std::to_string(52 + kPem.size() + kKey.size()) +
              ": listeners[0].tls.certificates[0].server_names: expected a sequence, got a "
              "scalar");
  }
}

}  // namespace
}  // namespace upgate
