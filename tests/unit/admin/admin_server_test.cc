#include "admin/admin_server.h"

#include <uv.h>

#include <catch2/catch.hpp>
#include <memory>
#include <string>

using namespace upgate;

namespace {

// The admin API's request handling, without a socket: handle() is what a connection calls.
struct Admin {
  explicit Admin(const std::string& token = "") {
    uv_loop_init(&loop);
    auto c = std::make_shared<Config>();
    c->admin.enabled = true;
    c->admin.token = token;
    server = std::make_unique<AdminServer>(&loop, c, hub);
  }
  ~Admin() {
    server.reset();
    uv_loop_close(&loop);
  }
  // The response's status code.
  int status(const std::string& method, const std::string& path, std::string body = "",
             const std::string* auth = nullptr, const std::string* type = nullptr) {
    last = server->handle(method, path, "", auth, type, body);
    REQUIRE(last.compare(0, 9, "HTTP/1.1 ") == 0);
    return std::stoi(last.substr(9, 3));
  }
  bool saidIt(const std::string& text) const { return last.find(text) != std::string::npos; }

  uv_loop_t loop{};
  Hub hub;
  std::unique_ptr<AdminServer> server;
  std::string last;
};

}  // namespace

TEST_CASE("admin: the token guards everything but the health probes", "[admin]") {
  Admin a("s3cret");
  CHECK(a.status("GET", "/healthz") == 200);
  CHECK(a.status("GET", "/readyz") == 200);
  CHECK(a.status("GET", "/metrics") == 401);
  CHECK(a.saidIt("WWW-Authenticate: Bearer realm=\"upgate admin\""));
  const std::string wrong = "Bearer nope", right = "Bearer s3cret";
  CHECK(a.status("GET", "/metrics", "", &wrong) == 401);
  CHECK(a.status("GET", "/metrics", "", &right) == 200);
  a.server->setDraining();
  CHECK(a.status("GET", "/readyz") == 503);
}

TEST_CASE("admin: methods, unknown paths and missing hooks", "[admin]") {
  Admin a;
  CHECK(a.status("POST", "/metrics") == 405);
  CHECK(a.saidIt("Allow: GET"));
  CHECK(a.status("GET", "/reload") == 405);
  CHECK(a.status("POST", "/reload") == 503);  // no reload hook set
  CHECK(a.status("POST", "/revoke", "{\"user\":\"a\"}") == 503);
  CHECK(a.status("GET", "/nowhere") == 404);
}

TEST_CASE("admin: publish checks the channel and text messages", "[admin]") {
  Admin a;
  CHECK(a.status("POST", "/publish/") == 400);
  CHECK(a.status("GET", "/publish/x") == 405);
  CHECK(a.status("POST", "/publish/news", "\xff\xfe") == 400);  // text must be UTF-8
  CHECK(a.saidIt("valid UTF-8"));
  const std::string binary = "application/octet-stream";
  CHECK(a.status("POST", "/publish/news", "\xff\xfe", nullptr, &binary) == 200);
  CHECK(a.saidIt("{\"channel\":\"news\",\"seq\":1,\"subscribers\":0}"));
  CHECK(a.status("POST", "/publish/a%20b", "hi") == 200);  // names are percent-decoded
  CHECK(a.saidIt("\"channel\":\"a b\",\"seq\":1"));
}

TEST_CASE("admin: revoke hands the parsed request to the workers' hook", "[admin]") {
  Admin a;
  RevokeRequest seen;
  a.server->setRevoke([&](const RevokeRequest& r) -> std::optional<size_t> {
    seen = r;
    return 3;
  });
  CHECK(a.status("POST", "/revoke", R"({"user":"alice","code":4001,"reason":"bye"})") == 200);
  CHECK(a.saidIt("{\"revoked\":3}"));
  CHECK((seen.user == "alice" && seen.session == 0 && seen.code == 4001 && seen.reason == "bye"));
  CHECK(a.status("POST", "/revoke", R"({"session":4097})") == 200);
  CHECK(
      (seen.user.empty() && seen.session == 4097 && seen.code == 1008 && seen.reason == "revoked"));
  // Refused before any worker is asked.
  for (const char* bad :
       {"", "[]", "{}", R"({"user":""})", R"({"session":0})", R"({"session":1.5})",
        R"({"user":"a","code":1005})", R"({"user":"a","code":70000})", R"({"user":"a","reason":5})",
        R"({"user":"a","extra":1})"}) {
    CAPTURE(bad);
    seen = RevokeRequest{};
    CHECK(a.status("POST", "/revoke", bad) == 400);
    CHECK(seen.user.empty());
  }
  a.server->setRevoke([](const RevokeRequest&) -> std::optional<size_t> { return std::nullopt; });
  CHECK(a.status("POST", "/revoke", R"({"user":"alice"})") == 503);  // a worker did not answer
}
