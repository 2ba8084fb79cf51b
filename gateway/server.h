#pragma once
// The main thread: opens the listening sockets, starts the workers, writes the ready file,
// and turns SIGTERM/SIGINT into a graceful drain.

#include <memory>
#include <string>

#include "config/config.h"
#include "plugin/host.h"
#include "tls/tls_context.h"

namespace upgate {

struct ServerOptions {
  std::string ready_file;  // written with "<listener> <ip:port>" lines once every worker listens
};

// Runs until drained. Returns the process exit code: 0 after a drain, 1 if a listener could
// not be opened.
// `tls` holds the contexts built from `config` (buildTlsBundle); SIGHUP rebuilds them from the
// same files and swaps them in, keeping the old ones if the new files are broken.
// `plugins` holds the plugin instances created from `config` (PluginHost::load).
// SIGHUP re-creates the plugin instances with `host` (JWKS and key files are read again).
int runServer(std::shared_ptr<const Config> config, std::shared_ptr<const TlsBundle> tls,
              PluginHost& host, std::shared_ptr<const PluginSet> plugins,
              const ServerOptions& options);

// config.workers, or one per CPU when it is 0.
unsigned workerCount(const Config& config);

}  // namespace upgate
