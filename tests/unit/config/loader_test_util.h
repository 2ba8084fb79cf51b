// What the loader tests share: the fixture folder, a valid base config, and helpers that load a
// config and return (or check) the errors it produces.
#pragma once

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/loader.h"

namespace upgate::test {

inline const std::string kFixtures = std::string(UPGATE_TEST_FIXTURES) + "/config/";

// A valid config to which tests append the section under test.
inline const std::string kBase =
    "listeners:\n"
    "  - name: public\n"
    "    address: 127.0.0.1:8080\n"
    "upstreams:\n"
    "  chat:\n"
    "    endpoints: [127.0.0.1:9001]\n";

inline std::vector<ConfigError> errorsOfFile(const std::string& path) {
  try {
    loadConfigFile(path);
  } catch (const ConfigErrors& e) {
    return e.errors;
  }
  FAIL("expected ConfigErrors from " << path);
  return {};
}

inline std::vector<ConfigError> errorsOf(const std::string& yaml) {
  try {
    loadConfigString(yaml, "t.yaml");
  } catch (const ConfigErrors& e) {
    return e.errors;
  }
  FAIL("expected ConfigErrors for:\n" << yaml);
  return {};
}

// The single error `yaml` produces, as text.
inline std::string oneError(const std::string& yaml) {
  auto errs = errorsOf(yaml);
  INFO(yaml);
  REQUIRE(errs.size() == 1);
  return errs[0].text();
}

// `yaml` loaded; a config error fails the test with its text.
inline std::shared_ptr<const Config> load(const std::string& yaml) {
  try {
    return loadConfigString(yaml, "t.yaml");
  } catch (const ConfigErrors& e) {
    FAIL(e.what());
  }
  return nullptr;
}

inline void checkError(const ConfigError& e, const std::string& file, int line, int column,
                       const std::string& path, const std::string& message) {
  CHECK(e.file == file);
  CHECK(e.line == line);
  CHECK(e.column == column);
  CHECK(e.path == path);
  CHECK(e.message == message);
}

}  // namespace upgate::test
