#include "plugin/host.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <climits>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

// The loader fixtures are built by plugins/CMakeLists.txt next to this binary.
std::string fixtureSo(const std::string& name) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  REQUIRE(n > 0);
  std::string exe(buf, static_cast<size_t>(n));
  return exe.substr(0, exe.rfind('/')) + "/plugin_fixtures/" + name + ".so";
}

std::string loadError(const PluginConfig& pc) {
  PluginHost host(1);
  try {
    host.create(pc);
  } catch (const PluginLoadError& e) {
    REQUIRE(e.errors().size() == 1);
    return e.what();
  }
  return "(no error)";
}

PluginConfig external(const std::string& name, const std::string& path) {
  PluginConfig pc;
  pc.name = name;
  pc.path = path;
  pc.where = "gw.yaml:12:7";
  return pc;
}

TEST_CASE("plugin host: the registry lists every built-in, sorted", "[plugin]") {
  CHECK(PluginHost::builtinNames() ==
        "api_key, forward_auth, ip_filter, jwt, origin, rate_limit, route_by_header");
  for (size_t i = 0; i < kBuiltinPluginCount; ++i) {
    const upgate_plugin_v1_t* vt = kBuiltinPlugins[i].entry(UPGATE_PLUGIN_ABI_VERSION);
    REQUIRE(vt != nullptr);
    CHECK(std::string(vt->name) == kBuiltinPlugins[i].name);
    CHECK(vt->abi_version == UPGATE_PLUGIN_ABI_VERSION);
    CHECK(vt->struct_size == sizeof(upgate_plugin_v1_t));
    CHECK(kBuiltinPlugins[i].entry(UPGATE_PLUGIN_ABI_VERSION + 1) == nullptr);
  }
}

TEST_CASE("plugin host: a built-in is found by name and created with its YAML", "[plugin]") {
  PluginHost host(4);
  PluginConfig pc;
  pc.name = "origin";
  pc.config_yaml = "allow: [\"https://app.example.com\"]\n";
  std::shared_ptr<const PluginInstance> inst = host.create(pc);
  REQUIRE(inst != nullptr);
  CHECK(inst->name() == "origin");
  CHECK(inst->vtable().on_request != nullptr);
  CHECK(inst->vtable().on_message == nullptr);
}

TEST_CASE("plugin host: an unknown built-in name is an error naming the choices", "[plugin]") {
  PluginConfig pc;
  pc.name = "nope";
  pc.where = "gw.yaml:3:5";
  CHECK(loadError(pc) ==
        "gw.yaml:3:5: plugin \"nope\": no built-in plugin of that name (built-ins: api_key, "
        "forward_auth, ip_filter, jwt, origin, rate_limit, route_by_header); an external plugin "
        "needs a path:");
}

TEST_CASE("plugin host: a plugin's create error is prefixed with file:line:col", "[plugin]") {
  PluginConfig pc;
  pc.name = "origin";
  pc.where = "gw.yaml:9:11";
  pc.config_yaml = "allow: []\n";
  CHECK(loadError(pc) ==
        "gw.yaml:9:11: plugin \"origin\": config.allow: at least one origin is required");
  pc.config_yaml = "allow: [x]\nbogus: 1\n";
  CHECK(loadError(pc) ==
        "gw.yaml:9:11: plugin \"origin\": config: unknown key \"bogus\" (expected one of: allow, "
        "allow_missing)");
}

TEST_CASE("plugin host: a good shared object loads and decides", "[plugin]") {
  PluginHost host(1);
  std::shared_ptr<const PluginInstance> inst = host.create(external("fx", fixtureSo("good")));
  REQUIRE(inst != nullptr);
  CHECK(std::string(inst->vtable().name) == "good_fixture");

  test::FakeSession session;
  RequestHead head = test::makeHead({{"X-Fixture-Deny", "1"}});
  PluginChain chain(session, {inst});
  CHECK(chain.start(head, UPGATE_REQUEST_WEBSOCKET, "") == ChainOutcome::Reject);
  CHECK(chain.reject().status == 403);
  CHECK(chain.reject().reason == "plugin fx: fixture denies");

  RequestHead ok = test::makeHead({});
  PluginChain chain2(session, {inst});
  CHECK(chain2.start(ok, UPGATE_REQUEST_WEBSOCKET, "") == ChainOutcome::Continue);

  // Loading the same path again reuses the handle.
  CHECK(host.create(external("fx2", fixtureSo("good"))) != nullptr);
}

TEST_CASE("plugin host: an external plugin's create error names the entry", "[plugin]") {
  PluginConfig pc = external("fx", fixtureSo("good"));
  pc.config_yaml = "mode: fail\n";
  CHECK(loadError(pc) == "gw.yaml:12:7: plugin \"fx\": config says fail");
}

TEST_CASE("plugin host: a missing file names the path and dlerror", "[plugin]") {
  const std::string path = "/nonexistent/libmissing.so";
  CHECK(loadError(external("m", path)) ==
        "gw.yaml:12:7: plugin \"m\": cannot load " + path + ": " + path +
            ": cannot open shared object file: No such file or directory");
}

TEST_CASE("plugin host: a shared object without the entry symbol is refused", "[plugin]") {
  const std::string path = fixtureSo("no_entry");
  CHECK(loadError(external("n", path)) == "gw.yaml:12:7: plugin \"n\": " + path +
                                              " does not export upgate_plugin_entry: " + path +
                                              ": undefined symbol: upgate_plugin_entry");
}

TEST_CASE("plugin host: another ABI version is refused", "[plugin]") {
  const std::string path = fixtureSo("wrong_abi");
  CHECK(loadError(external("w", path)) ==
        "gw.yaml:12:7: plugin \"w\": " + path +
            " is built for plugin ABI version 99, this gateway speaks version 1");
}

TEST_CASE("plugin host: a short plugin struct is refused", "[plugin]") {
  const std::string path = fixtureSo("short_struct");
  CHECK(loadError(external("s", path)) ==
        "gw.yaml:12:7: plugin \"s\": " + path +
            " has a 16-byte plugin struct; ABI version 1 needs at least " +
            std::to_string(sizeof(upgate_plugin_v1_t)));
}

TEST_CASE("plugin host: load() builds global + route chains and reports every error", "[plugin]") {
  Config cfg;
  PluginConfig origin;
  origin.name = "origin";
  origin.config_yaml = "allow: [\"https://a.example\"]";
  cfg.plugins.push_back(origin);
  RouteConfig r1;
  r1.name = "one";
  PluginConfig good = external("fx", fixtureSo("good"));
  r1.plugins.push_back(good);
  RouteConfig r2;
  r2.name = "two";
  cfg.routes = {r1, r2};

  PluginHost host(2);
  std::shared_ptr<const PluginSet> set = host.load(cfg);
  REQUIRE(set->chainFor(&cfg.routes[0]).size() == 2);
  CHECK(set->chainFor(&cfg.routes[0])[0]->name() == "origin");
  CHECK(set->chainFor(&cfg.routes[0])[1]->name() == "fx");
  CHECK(set->chainFor(&cfg.routes[1]).size() == 1);
  CHECK(set->chainFor(nullptr).size() == 1);
  CHECK_FALSE(set->empty());

  cfg.routes[1].plugins.push_back(external("w", fixtureSo("wrong_abi")));
  PluginConfig bad;
  bad.name = "nope";
  cfg.plugins.push_back(bad);
  try {
    host.load(cfg);
    FAIL("load should throw");
  } catch (const PluginLoadError& e) {
    REQUIRE(e.errors().size() == 2);  // global entries are created once, not per route
    CHECK(e.errors()[0].find("plugin \"nope\"") != std::string::npos);
    CHECK(e.errors()[1].find("ABI version 99") != std::string::npos);
  }
}

TEST_CASE("plugin host: the host API table carries version, workers and config dir", "[plugin]") {
  PluginHost host(3);
  PluginConfig pc = external("fx", fixtureSo("good"));
  std::shared_ptr<const PluginInstance> inst = host.create(pc, "/etc/upgate/");
  // The good fixture keeps the table as its first member.
  const auto* table = *static_cast<const upgate_host_api_t* const*>(inst->self());
  CHECK(table->abi_version == UPGATE_PLUGIN_ABI_VERSION);
  CHECK(table->struct_size == sizeof(upgate_host_api_t));
  CHECK(table->worker_count == 3);
  CHECK(std::string(table->config_dir) == "/etc/upgate/");
  CHECK(table->resume != nullptr);
  CHECK(table->set_data != nullptr);
}

}  // namespace
}  // namespace upgate
