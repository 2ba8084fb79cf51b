#pragma once
// Glue for the built-in C++ plugins: turns a C++ class into an upgate_plugin_v1_t. The class
// derives from PluginBase, is constructed from (host, YAML config) and throws ConfigError (or
// YAML::Exception) for a bad config; it defines only the hooks it wants:
//
//   upgate_decision_t onRequest(upgate_session_t*, const upgate_request_t*, upgate_reject_t*);
//   upgate_decision_t onRoute(upgate_session_t*, const upgate_request_t*, upgate_route_t*,
//                             upgate_reject_t*);
//   upgate_message_action_t onMessage(upgate_session_t*, const upgate_message_t*,
//                                     upgate_message_result_t*);
//   void onClose(upgate_session_t*, uint16_t ws_code, const char* reason);
//
// Hooks that are not defined stay NULL in the table. Every trampoline is noexcept and catches
// everything (a hook that throws answers 500, or closes with 1011), so no exception crosses the
// C ABI.

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "upgate/plugin.h"

namespace upgate_plugins {

// A configuration error; the text goes to create()'s `err` (the host adds file:line:col).
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class PluginBase {
 public:
  explicit PluginBase(const upgate_host_api_t* host) : host_(host) {}
  const upgate_host_api_t* host() const { return host_; }
  void log(upgate_session_t* s, upgate_log_level_t level, const std::string& msg) const {
    host_->log(s, level, msg.c_str());
  }

 private:
  const upgate_host_api_t* host_;
};

// Copies `msg` into a C error buffer, truncated and NUL-terminated.
void copyError(char* err, size_t errlen, const std::string& msg) noexcept;
// The YAML config text as a node ("" and "null" give an empty map).
YAML::Node parseConfig(const char* cfg, size_t len);
// "config: <message> (line L, column C of the config)" for a YAML exception.
std::string yamlErrorText(const YAML::Exception& e);

template <class T, class = void>
struct HasOnRequest : std::false_type {};
template <class T>
struct HasOnRequest<T, std::void_t<decltype(&T::onRequest)>> : std::true_type {};
template <class T, class = void>
struct HasOnRoute : std::false_type {};
template <class T>
struct HasOnRoute<T, std::void_t<decltype(&T::onRoute)>> : std::true_type {};
template <class T, class = void>
struct HasOnMessage : std::false_type {};
template <class T>
struct HasOnMessage<T, std::void_t<decltype(&T::onMessage)>> : std::true_type {};
template <class T, class = void>
struct HasOnClose : std::false_type {};
template <class T>
struct HasOnClose<T, std::void_t<decltype(&T::onClose)>> : std::true_type {};

template <class T>
class Adapter {
 public:
  static const upgate_plugin_v1_t* table(const char* name) {
    static const upgate_plugin_v1_t vt = make(name);
    return &vt;
  }

 private:
  static upgate_plugin_v1_t make(const char* name) {
    upgate_plugin_v1_t vt{};
    vt.abi_version = UPGATE_PLUGIN_ABI_VERSION;
    vt.struct_size = sizeof(upgate_plugin_v1_t);
    vt.name = name;
    vt.create = &create;
    vt.destroy = &destroy;
    if constexpr (HasOnRequest<T>::value) vt.on_request = &onRequest;
    if constexpr (HasOnRoute<T>::value) vt.on_route = &onRoute;
    if constexpr (HasOnMessage<T>::value) vt.on_message = &onMessage;
    if constexpr (HasOnClose<T>::value) vt.on_close = &onClose;
    return vt;
  }

  static void* create(const upgate_host_api_t* host, const char* cfg, size_t len, char* err,
                      size_t errlen) noexcept {
    try {
      return new T(host, parseConfig(cfg, len));
    } catch (const YAML::Exception& e) {
      copyError(err, errlen, yamlErrorText(e));
    } catch (const std::exception& e) {
      copyError(err, errlen, e.what());
    } catch (...) {
      copyError(err, errlen, "unknown error");
    }
    return nullptr;
  }

  static void destroy(void* self) noexcept { delete static_cast<T*>(self); }

  static void logFailure(void* self, upgate_session_t* s, const char* what) noexcept {
    try {
      static_cast<T*>(self)->log(s, UPGATE_LOG_ERROR, std::string("hook failed: ") + what);
    } catch (...) {
    }
  }

  static upgate_decision_t fail(void* self, upgate_session_t* s, upgate_reject_t* out,
                                const char* what) noexcept {
    logFailure(self, s, what);
    out->status = 500;
    out->reason = "internal plugin error";
    return UPGATE_REJECT;
  }

  static upgate_decision_t onRequest(void* self, upgate_session_t* s, const upgate_request_t* r,
                                     upgate_reject_t* out) noexcept {
    try {
      return static_cast<T*>(self)->onRequest(s, r, out);
    } catch (const std::exception& e) {
      return fail(self, s, out, e.what());
    } catch (...) {
      return fail(self, s, out, "unknown exception");
    }
  }

  static upgate_decision_t onRoute(void* self, upgate_session_t* s, const upgate_request_t* r,
                                   upgate_route_t* route, upgate_reject_t* out) noexcept {
    try {
      return static_cast<T*>(self)->onRoute(s, r, route, out);
    } catch (const std::exception& e) {
      return fail(self, s, out, e.what());
    } catch (...) {
      return fail(self, s, out, "unknown exception");
    }
  }

  static upgate_message_action_t onMessage(void* self, upgate_session_t* s,
                                           const upgate_message_t* m,
                                           upgate_message_result_t* out) noexcept {
    try {
      return static_cast<T*>(self)->onMessage(s, m, out);
    } catch (...) {
      logFailure(self, s, "on_message");
      out->close_code = 1011;
      return UPGATE_MESSAGE_CLOSE;
    }
  }

  static void onClose(void* self, upgate_session_t* s, uint16_t code, const char* reason) noexcept {
    try {
      static_cast<T*>(self)->onClose(s, code, reason);
    } catch (...) {
      logFailure(self, s, "on_close");
    }
  }
};

}  // namespace upgate_plugins

// Defines the plugin's entry point (upgate_plugin_entry, or <name>_upgate_plugin_entry for a
// built-in) for class `Class`, reported as `name`.
#define UPGATE_CPP_PLUGIN(Class, name)                                                        \
  extern "C" UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t v) { \
    return v == UPGATE_PLUGIN_ABI_VERSION ? ::upgate_plugins::Adapter<Class>::table(name)     \
                                          : nullptr;                                          \
  }
