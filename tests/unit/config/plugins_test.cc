// `plugins:` in the config, global and per route: names, paths, the `config:` subtree as YAML
// text and the file:line:col every plugin error is prefixed with. Whether a name exists is the
// plugin host's check (tests/unit/plugin), not the loader's.

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/loader.h"
#include "loader_test_util.h"

namespace upgate {
namespace {

using namespace test;

TEST_CASE("config plugins: global and per-route lists keep their order", "[config]") {
  auto cfg = loadConfigString(kBase +
                                  "plugins:\n"             // line 7
                                  "  - name: ip_filter\n"  // line 8
                                  "    config: { deny: [10.0.0.0/8] }\n"
                                  "  - name: rate_limit\n"  // line 10
                                  "routes:\n"
                                  "  - name: chat\n"
                                  "    upstream: chat\n"
                                  "    plugins:\n"
                                  "      - name: origin\n"  // line 15
                                  "        config:\n"
                                  "          allow:\n"
                                  "            - https://a.example\n"
                                  "            - https://*.example\n"
                                  "      - name: mine\n"  // line 20
                                  "        path: /opt/upgate/libmine.so\n"
                                  "        config: { anything: 1, nested: { list: [a, b] } }\n",
                              "t.yaml");
  REQUIRE(cfg->plugins.size() == 2);
  CHECK(cfg->plugins[0].name == "ip_filter");
  CHECK(cfg->plugins[0].path.empty());
  CHECK(cfg->plugins[0].where == "t.yaml:8:5");
  CHECK(cfg->plugins[1].name == "rate_limit");
  CHECK(cfg->plugins[1].config_yaml.empty());
  CHECK(cfg->plugins[1].where == "t.yaml:10:5");

  REQUIRE(cfg->routes.size() == 1);
  const std::vector<PluginConfig>& rp = cfg->routes[0].plugins;
  REQUIRE(rp.size() == 2);
  CHECK(rp[0].name == "origin");
  CHECK(rp[0].where == "t.yaml:15:9");
  CHECK(rp[1].name == "mine");
  CHECK(rp[1].path == "/opt/upgate/libmine.so");
  CHECK(rp[1].where == "t.yaml:20:9");

  // The subtree comes back as YAML text that parses to the same values.
  YAML::Node origin = YAML::Load(rp[0].config_yaml);
  REQUIRE(origin["allow"].IsSequence());
  CHECK(origin["allow"][1].as<std::string>() == "https://*.example");
  YAML::Node ip = YAML::Load(cfg->plugins[0].config_yaml);
  CHECK(ip["deny"][0].as<std::string>() == "10.0.0.0/8");
  YAML::Node mine = YAML::Load(rp[1].config_yaml);
  CHECK(mine["anything"].as<int>() == 1);
  CHECK(mine["nested"]["list"][1].as<std::string>() == "b");
}

TEST_CASE("config plugins: no plugins key means none", "[config]") {
  auto cfg = loadConfigString(kBase + "routes:\n  - name: chat\n    upstream: chat\n", "t.yaml");
  CHECK(cfg->plugins.empty());
  CHECK(cfg->routes[0].plugins.empty());
}

TEST_CASE("config plugins: entry errors name file, line and key path", "[config]") {
  std::vector<ConfigError> errs = errorsOf(kBase +
                                           "plugins:\n"
                                           "  - config: { a: 1 }\n"  // line 8: no name
                                           "  - name: x\n"
                                           "    colour: red\n"  // line 10: unknown key
                                           "  - name: \"\"\n"   // line 11: empty name
                                           "  - name: [a]\n");  // line 12: not a string
  REQUIRE(errs.size() == 4);
  CHECK(errs[0].text() == "t.yaml:8:5: plugins[0].name: required key is missing");
  CHECK(errs[1].text().rfind("t.yaml:10:5: plugins[1].colour: unknown key (expected one of: ", 0) ==
        0);
  CHECK(errs[2].line == 11);
  CHECK(errs[2].path == "plugins[2].name");
  CHECK(errs[3].line == 12);
  CHECK(errs[3].path == "plugins[3].name");

  errs = errorsOf(kBase + "plugins: { name: x }\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0].path == "plugins");
}

TEST_CASE("config plugins: a relative path is relative to the config file", "[config]") {
  // Whether the shared object loads is the plugin host's check (path + dlerror), not the loader's.
  char dir_template[] = "/tmp/upgate_plugins_test_XXXXXX";
  REQUIRE(::mkdtemp(dir_template) != nullptr);
  const std::string dir = dir_template;
  const std::string file = dir + "/gw.yaml";
  {
    std::ofstream out(file);
    out << kBase << "plugins:\n  - name: mine\n    path: lib/libmine.so\n"
        << "  - name: abs\n    path: /opt/libabs.so\n";
  }
  auto cfg = loadConfigFile(file);
  std::remove(file.c_str());
  ::rmdir(dir.c_str());
  REQUIRE(cfg->plugins.size() == 2);
  CHECK(cfg->plugins[0].path == dir + "/lib/libmine.so");
  CHECK(cfg->plugins[0].where == file + ":8:5");
  CHECK(cfg->plugins[1].path == "/opt/libabs.so");
}

}  // namespace
}  // namespace upgate
