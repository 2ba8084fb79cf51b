// path_router: an example external plugin in C++.
//
// Chooses the upstream by the longest matching path prefix, and closes a frames-mode session
// whose client sends a message larger than a limit (1009, "too big"). The config is parsed with
// yaml-cpp; no exception ever leaves a hook (the ABI is C).
//
//   plugins:
//     - name: router
//       path: ./path_router.so
//       config:
//         routes: { /v2/: chat-v2, /admin/: admin }
//         max_message: 65536
//
// Build: make   (uses `pkg-config --cflags upgate-plugin yaml-cpp`)

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>

#include "upgate/plugin.h"

namespace {

class PathRouter {
 public:
  PathRouter(const upgate_host_api_t* host, const std::string& cfg) : host_(host) {
    YAML::Node root = YAML::Load(cfg);
    if (root.IsNull()) return;
    if (!root.IsMap()) throw std::runtime_error("config: expected a map");
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (key == "routes") {
        for (const auto& r : kv.second)
          routes_[r.first.as<std::string>()] = r.second.as<std::string>();
      } else if (key == "max_message") {
        max_message_ = kv.second.as<size_t>();
      } else {
        throw std::runtime_error("config: unknown key \"" + key + "\"");
      }
    }
  }

  upgate_decision_t onRoute(const upgate_request_t* r, upgate_route_t* route) const {
    const std::string path = r->path;
    const std::string* best = nullptr;
    size_t best_len = 0;
    for (const auto& [prefix, upstream] : routes_) {
      if (path.compare(0, prefix.size(), prefix) == 0 && prefix.size() >= best_len) {
        best = &upstream;
        best_len = prefix.size();
      }
    }
    if (best != nullptr) route->upstream = best->c_str();
    return UPGATE_CONTINUE;
  }

  upgate_message_action_t onMessage(upgate_session_t* s, const upgate_message_t* m,
                                    upgate_message_result_t* out) const {
    if (max_message_ == 0 || m->direction != UPGATE_CLIENT_TO_UPSTREAM || m->len <= max_message_) {
      return UPGATE_MESSAGE_PASS;
    }
    host_->log(s, UPGATE_LOG_INFO, "message over the limit");
    out->close_code = 1009;
    out->close_reason = "too big";
    return UPGATE_MESSAGE_CLOSE;
  }

 private:
  const upgate_host_api_t* host_;
  std::map<std::string, std::string> routes_;
  size_t max_message_ = 0;
};

void* create(const upgate_host_api_t* host, const char* cfg, size_t len, char* err,
             size_t errlen) noexcept {
  try {
    return new PathRouter(host, std::string(cfg, len));
  } catch (const std::exception& e) {
    std::snprintf(err, errlen, "%s", e.what());
  } catch (...) {
    std::snprintf(err, errlen, "unknown error");
  }
  return nullptr;
}

void destroy(void* self) noexcept {
  delete static_cast<PathRouter*>(self);
}

upgate_decision_t onRoute(void* self, upgate_session_t*, const upgate_request_t* r,
                          upgate_route_t* route, upgate_reject_t* reject) noexcept {
  try {
    return static_cast<PathRouter*>(self)->onRoute(r, route);
  } catch (...) {
    reject->status = 500;
    return UPGATE_REJECT;
  }
}

upgate_message_action_t onMessage(void* self, upgate_session_t* s, const upgate_message_t* m,
                                  upgate_message_result_t* out) noexcept {
  try {
    return static_cast<PathRouter*>(self)->onMessage(s, m, out);
  } catch (...) {
    out->close_code = 1011;
    return UPGATE_MESSAGE_CLOSE;
  }
}

upgate_plugin_v1_t makeTable() {
  upgate_plugin_v1_t t{};
  t.abi_version = UPGATE_PLUGIN_ABI_VERSION;
  t.struct_size = sizeof(upgate_plugin_v1_t);
  t.name = "path_router";
  t.create = create;
  t.destroy = destroy;
  t.on_route = onRoute;
  t.on_message = onMessage;
  return t;
}

const upgate_plugin_v1_t kTable = makeTable();

}  // namespace

extern "C" UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t v) {
  return v == UPGATE_PLUGIN_ABI_VERSION ? &kTable : nullptr;
}
