#pragma once
// The main thread: opens the listening sockets, starts the workers, writes the ready file,
// turns SIGTERM/SIGINT into a graceful drain and SIGHUP into a reload.

#include <functional>
#include <memory>
#include <string>

#include "config/config.h"
#include "plugin/host.h"
#include "tls/tls_context.h"

namespace upgate {

struct ServerOptions {
  std::string ready_file;  // written with "<listener> <ip:port>" lines once every worker listens
  // Reads the configuration again for a reload (SIGHUP, POST /reload): the same file, or the
  // built-in default. Throws ConfigErrors.
  std::function<std::shared_ptr<const Config>()> load_config;
};

// Runs until drained. Returns the process exit code: 0 after a drain, 1 if a listener could
// not be opened.
// `tls` holds the contexts built from `config` (buildTlsBundle), `plugins` the plugin instances
// created from it with `host` (PluginHost::load). A reload (SIGHUP, POST /reload) loads the
// configuration again with options.load_config, builds TLS contexts and plugins from it, opens
// the listeners it adds and hands the result to every worker as a new Generation: new
// connections use it, established ones keep theirs. Anything that fails keeps the running
// generation whole. `workers` and the admin listener's address apply at the next start.
int runServer(std::shared_ptr<const Config> config, std::shared_ptr<const TlsBundle> tls,
              PluginHost& host, std::shared_ptr<const PluginSet> plugins,
              const ServerOptions& options);

// config.workers, or one per CPU when it is 0.
unsigned workerCount(const Config& config);

}  // namespace upgate
