#pragma once
// Helpers shared by the built-in plugins: config reading with precise messages, request access
// (query parameters, cookies), encodings and hashes. Everything here is pure or reads only what
// the host API returns; callable on any thread.

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upgate/plugin.h"

namespace upgate_plugins {

// ---- Config ----------------------------------------------------------------------------------
// `path` names the node in messages ("config", "config.keys[0]"); all throw ConfigError.

// Throws unless `node` is a map (or null/absent, treated as empty) whose keys are all in
// `allowed`.
void checkKeys(const YAML::Node& node, const std::string& path,
               std::initializer_list<const char*> allowed);
// A scalar string; `def` when absent. Throws on another node type.
std::string getString(const YAML::Node& map, const char* key, const std::string& path,
                      const std::string& def = "");
// A scalar or a sequence of scalars; empty when absent.
std::vector<std::string> getStrings(const YAML::Node& map, const char* key,
                                    const std::string& path);
double getNumber(const YAML::Node& map, const char* key, const std::string& path, double def,
                 double min, double max);
bool getBool(const YAML::Node& map, const char* key, const std::string& path, bool def);
// A duration: a number of seconds, or a string "30s", "500ms", "5m", "1h".
double getSeconds(const YAML::Node& map, const char* key, const std::string& path, double def);

// `name` resolved against the config's directory unless absolute.
std::string resolvePath(const upgate_host_api_t* host, const std::string& name);
// Whole file; throws ConfigError naming the file and strerror.
std::string readFile(const std::string& path, const std::string& what);

// ---- Requests ----------------------------------------------------------------------------------

// The first value of query parameter `name` (application/x-www-form-urlencoded: '+' is a space,
// %XX decoded), or nullopt.
std::optional<std::string> queryParam(std::string_view query, std::string_view name);
// The value of cookie `name` from any Cookie header, or nullopt.
std::optional<std::string> cookieValue(const upgate_host_api_t* host, upgate_session_t* s,
                                       std::string_view name);
// Percent-decoding (no '+' rule); nullopt for a bad escape.
std::optional<std::string> percentDecode(std::string_view in, bool plus_is_space);
// ASCII case-insensitive equality.
bool iequal(std::string_view a, std::string_view b);
std::string_view trim(std::string_view s);
// Splits on `sep`, trimming each piece and dropping empty ones.
std::vector<std::string_view> split(std::string_view s, char sep);

// ---- Encodings and hashes ---------------------------------------------------------------------

// RFC 4648 §5 base64url, padding optional; nullopt on a bad character.
std::optional<std::string> base64UrlDecode(std::string_view in);
std::string base64UrlEncode(std::string_view in);
// Lower-case hex SHA-256 of `data`.
std::string sha256Hex(std::string_view data);
// Constant-time equality of two equal-length strings (false for different lengths).
bool constantTimeEquals(std::string_view a, std::string_view b);

// Fills an upgate_reject_t from strings owned by the caller (they must outlive the hook).
struct RejectSpec {
  uint16_t status;
  const char* reason;
  const upgate_header_t* headers = nullptr;
  size_t header_count = 0;
};
upgate_decision_t reject(upgate_reject_t* out, const RejectSpec& spec);

}  // namespace upgate_plugins
