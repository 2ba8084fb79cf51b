// api_key: admits clients that present a known API key; each key carries an identity.
//
// config:
//   keys_file: api_keys.txt   # relative to the config file
//   header: X-API-Key         # where the key is looked for (default); "" = not in a header
//   query: api_key            # query parameter (optional; default: none)
//   strip: true               # remove the header from the upstream request (default true)
//   realm: upgate             # for WWW-Authenticate
//
// The keys file holds only SHA-256 hashes of the keys, one per line:
//   <64 hex digits of sha256(key)>  <user>  [claims as a JSON object]
// ('#' starts a comment line). Make a line with: printf %s "$KEY" | sha256sum. The presented key
// is hashed and looked up; a leaked file does not reveal the keys. No key -> 401, unknown key ->
// 401, both with WWW-Authenticate: ApiKey realm="...". A match sets the identity (user, claims).

#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

struct KeyIdentity {
  std::string user;
  std::string claims;  // JSON object text or ""
};

class ApiKeyPlugin : public PluginBase {
 public:
  ApiKeyPlugin(const upgate_host_api_t* host, const YAML::Node& cfg) : PluginBase(host) {
    checkKeys(cfg, "config", {"keys_file", "header", "query", "strip", "realm"});
    std::string file = getString(cfg, "keys_file", "config");
    if (file.empty()) throw ConfigError("config.keys_file: required");
    header_ = getString(cfg, "header", "config", "X-API-Key");
    query_ = getString(cfg, "query", "config");
    if (header_.empty() && query_.empty()) {
      throw ConfigError("config: header and query are both empty: the key can come from nowhere");
    }
    strip_ = getBool(cfg, "strip", "config", true);
    std::string realm = getString(cfg, "realm", "config", "upgate");
    if (realm.find_first_of("\"\\\r\n") != std::string::npos) {
      throw ConfigError("config.realm: must not contain quotes, backslashes or line breaks");
    }
    challenge_ = "ApiKey realm=\"" + realm + "\"";
    challenge_header_.value = challenge_.c_str();
    load(resolvePath(host, file));
  }

  upgate_decision_t onRequest(upgate_session_t* s, const upgate_request_t* r,
                              upgate_reject_t* out) {
    std::optional<std::string> key;
    if (!header_.empty()) {
      if (const char* v = host()->header(s, header_.c_str(), 0)) key = v;
    }
    if (!key && !query_.empty() && r->query != nullptr) key = queryParam(r->query, query_);
    if (!key || key->empty()) return deny(out, "no API key");
    auto it = keys_.find(sha256Hex(*key));
    if (it == keys_.end()) return deny(out, "unknown API key");
    const KeyIdentity& id = it->second;
    host()->set_identity(s, id.user.c_str(), id.claims.empty() ? nullptr : id.claims.c_str());
    if (strip_ && !header_.empty()) host()->set_upstream_header(s, header_.c_str(), nullptr);
    return UPGATE_CONTINUE;
  }

 private:
  upgate_decision_t deny(upgate_reject_t* out, const char* why) {
    return reject(out, {401, why, &challenge_header_, 1});
  }

  void load(const std::string& path) {
    std::istringstream in(readFile(path, "config.keys_file"));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      std::string_view l = trim(line);
      if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
      if (l.empty() || l.front() == '#') continue;
      const std::string where = path + ":" + std::to_string(n);
      size_t sp = l.find_first_of(" \t");
      std::string hash(l.substr(0, sp));
      for (char& c : hash) {
        if (c >= 'A' && c <= 'F') c = static_cast<char>(c + 32);
      }
      if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
        throw ConfigError(where + ": expected the 64 hex digits of a SHA-256 hash first");
      }
      std::string_view rest = sp == std::string_view::npos ? "" : trim(l.substr(sp));
      size_t sp2 = rest.find_first_of(" \t");
      KeyIdentity id;
      id.user = std::string(rest.substr(0, sp2));
      if (id.user.empty()) throw ConfigError(where + ": a user name must follow the hash");
      if (sp2 != std::string_view::npos) {
        id.claims = std::string(trim(rest.substr(sp2)));
        nlohmann::json j = nlohmann::json::parse(id.claims, nullptr, false);
        if (j.is_discarded() || !j.is_object()) {
          throw ConfigError(where + ": the claims after the user must be a JSON object");
        }
        id.claims = j.dump();
      }
      if (!keys_.emplace(hash, std::move(id)).second) {
        throw ConfigError(where + ": the same key hash appears twice");
      }
    }
    if (keys_.empty()) throw ConfigError("config.keys_file: " + path + " holds no keys");
  }

  std::string header_;
  std::string query_;
  bool strip_ = true;
  std::string challenge_;
  upgate_header_t challenge_header_{"WWW-Authenticate", nullptr};  // value: challenge_
  std::unordered_map<std::string, KeyIdentity> keys_;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::ApiKeyPlugin, "api_key")
