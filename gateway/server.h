#pragma once
// The main thread: opens the listening sockets, starts the workers, writes the ready file,
// and turns SIGTERM/SIGINT into a graceful drain.

#include <memory>
#include <string>

#include "config/config.h"

namespace upgate {

struct ServerOptions {
  std::string ready_file;  // written with "<listener> <ip:port>" lines once every worker listens
};

// Runs until drained. Returns the process exit code: 0 after a drain, 1 if a listener could
// not be opened.
int runServer(std::shared_ptr<const Config> config, const ServerOptions& options);

}  // namespace upgate
