#include "plugin/host.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstring>
#include <mutex>
#include <string_view>
#include <utility>

#include "core/log.h"

namespace upgate {

namespace {

std::string joinLines(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) {
    if (!out.empty()) out += '\n';
    out += l;
  }
  return out;
}

std::string prefix(const PluginConfig& pc) {
  std::string out;
  if (!pc.where.empty()) out = pc.where + ": ";
  out += "plugin \"" + pc.name + "\": ";
  return out;
}

[[noreturn]] void fail(const PluginConfig& pc, const std::string& why) {
  throw PluginLoadError({prefix(pc) + why});
}

std::string dlerrorText() {
  const char* e = ::dlerror();
  return e != nullptr ? e : "unknown error";
}

// dlopen handles by path. Never closed (see host.h); dlopen itself refcounts, the map only
// avoids asking again on every reload.
std::mutex g_dl_mutex;
std::map<std::string, void*>& dlHandles() {
  static std::map<std::string, void*> handles;
  return handles;
}

// The directory of the config file with a trailing '/', or "" (same rule as the loader).
std::string configDirOf(const std::string& source) {
  struct stat st {};
  if (source.empty() || ::stat(source.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  size_t slash = source.rfind('/');
  return slash == std::string::npos ? std::string() : source.substr(0, slash + 1);
}

}  // namespace

PluginLoadError::PluginLoadError(std::vector<std::string> errors)
    : std::runtime_error(joinLines(errors)), errors_(std::move(errors)) {}

PluginInstance::PluginInstance(std::string name, std::string where,
                               const upgate_plugin_v1_t* vtable, void* self,
                               std::shared_ptr<const HostApi> api)
    : name_(std::move(name)),
      where_(std::move(where)),
      vtable_(vtable),
      self_(self),
      api_(std::move(api)) {}

PluginInstance::~PluginInstance() {
  try {
    vtable_->destroy(self_);
  } catch (...) {
    // A C++ plugin broke the ABI rule; nothing crosses back into the gateway.
  }
}

const InstanceList& PluginSet::chainFor(const RouteConfig* route) const {
  if (route != nullptr) {
    auto it = routes_.find(route);
    if (it != routes_.end()) return it->second;
  }
  return global_;
}

bool PluginSet::empty() const {
  if (!global_.empty()) return false;
  for (const auto& [route, list] : routes_) {
    if (!list.empty()) return false;
  }
  return true;
}

PluginHost::PluginHost(uint32_t workers) : workers_(workers == 0 ? 1 : workers) {}

std::string PluginHost::builtinNames() {
  std::string out;
  for (size_t i = 0; i < kBuiltinPluginCount; ++i) {
    if (i > 0) out += ", ";
    out += kBuiltinPlugins[i].name;
  }
  return out;
}

const upgate_plugin_v1_t* PluginHost::resolve(const PluginConfig& pc) {
  upgate_plugin_entry_fn entry = nullptr;
  std::string what;
  if (pc.path.empty()) {
    for (size_t i = 0; i < kBuiltinPluginCount; ++i) {
      if (pc.name == kBuiltinPlugins[i].name) entry = kBuiltinPlugins[i].entry;
    }
    if (entry == nullptr) {
      fail(pc, "no built-in plugin of that name (built-ins: " + builtinNames() +
                   "); an external plugin needs a path:");
    }
    what = "built-in plugin " + pc.name;
  } else {
    std::lock_guard<std::mutex> lock(g_dl_mutex);
    void*& handle = dlHandles()[pc.path];
    if (handle == nullptr) {
      ::dlerror();
      // NOW: unresolved symbols fail here, at start, not at the first request (style 2.3).
      handle = ::dlopen(pc.path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        std::string why = dlerrorText();
        dlHandles().erase(pc.path);
        fail(pc, "cannot load " + pc.path + ": " + why);
      }
    }
    ::dlerror();
    void* sym = ::dlsym(handle, UPGATE_PLUGIN_ENTRY_SYMBOL);
    if (sym == nullptr) {
      fail(pc, pc.path + " does not export " UPGATE_PLUGIN_ENTRY_SYMBOL ": " + dlerrorText());
    }
    // POSIX guarantees object and function pointers convert through dlsym's void*.
    entry = reinterpret_cast<upgate_plugin_entry_fn>(sym);
    what = pc.path;
  }

  const upgate_plugin_v1_t* vt = nullptr;
  try {
    vt = entry(UPGATE_PLUGIN_ABI_VERSION);
  } catch (...) {
    fail(pc, what + ": " UPGATE_PLUGIN_ENTRY_SYMBOL " threw an exception");
  }
  if (vt == nullptr) {
    fail(pc, what + " offers no plugin for host ABI version " +
                 std::to_string(UPGATE_PLUGIN_ABI_VERSION));
  }
  if (vt->abi_version != UPGATE_PLUGIN_ABI_VERSION) {
    fail(pc, what + " is built for plugin ABI version " + std::to_string(vt->abi_version) +
                 ", this gateway speaks version " + std::to_string(UPGATE_PLUGIN_ABI_VERSION));
  }
  if (vt->struct_size < sizeof(upgate_plugin_v1_t)) {
    fail(pc, what + " has a " + std::to_string(vt->struct_size) +
                 "-byte plugin struct; ABI version " + std::to_string(UPGATE_PLUGIN_ABI_VERSION) +
                 " needs at least " + std::to_string(sizeof(upgate_plugin_v1_t)));
  }
  if (vt->create == nullptr || vt->destroy == nullptr) {
    fail(pc, what + " has no create or destroy function");
  }
  return vt;
}

std::shared_ptr<const HostApi> PluginHost::apiFor(const std::string& config_dir) {
  auto api = std::make_shared<HostApi>();
  api->config_dir = config_dir;
  fillHostApi(api->table);
  api->table.abi_version = UPGATE_PLUGIN_ABI_VERSION;
  api->table.struct_size = sizeof(upgate_host_api_t);
  api->table.worker_count = workers_;
  api->table.config_dir = api->config_dir.c_str();
  return api;
}

std::shared_ptr<const PluginInstance> PluginHost::create(const PluginConfig& pc,
                                                         const std::string& config_dir) {
  const upgate_plugin_v1_t* vt = resolve(pc);
  std::shared_ptr<const HostApi> api = apiFor(config_dir);
  char err[512];
  err[0] = '\0';
  void* self = nullptr;
  try {
    self = vt->create(&api->table, pc.config_yaml.c_str(), pc.config_yaml.size(), err, sizeof(err));
  } catch (...) {
    fail(pc, "create threw an exception");
  }
  if (self == nullptr) {
    err[sizeof(err) - 1] = '\0';
    fail(pc, err[0] != '\0' ? std::string(err) : std::string("create failed without a message"));
  }
  return std::make_shared<PluginInstance>(pc.name, pc.where, vt, self, std::move(api));
}

std::shared_ptr<const PluginSet> PluginHost::load(const Config& config) {
  auto set = std::make_shared<PluginSet>();
  std::vector<std::string> errors;
  const std::string dir = configDirOf(config.source);
  auto add = [&](const PluginConfig& pc, InstanceList& into) {
    try {
      into.push_back(create(pc, dir));
    } catch (const PluginLoadError& e) {
      errors.insert(errors.end(), e.errors().begin(), e.errors().end());
    }
  };
  for (const PluginConfig& pc : config.plugins) add(pc, set->global_);
  for (const RouteConfig& route : config.routes) {
    InstanceList list = set->global_;
    for (const PluginConfig& pc : route.plugins) add(pc, list);
    set->routes_.emplace(&route, std::move(list));
  }
  if (!errors.empty()) throw PluginLoadError(std::move(errors));
  return set;
}

}  // namespace upgate
