#pragma once
// One loaded configuration and everything built from it: the TLS contexts, the plugin
// instances and the route table. The main thread builds a generation at start and on every
// reload (SIGHUP, POST /reload) and hands it to each worker; new connections take the worker's
// current one and keep it until they end, so a reload never changes a session halfway, and a
// generation is freed when its last session, poller or worker lets go of it.
//
// The parts belong together: plugin chains are found by RouteConfig address and TLS contexts
// by listener index, both of this generation's Config.

#include <cstdint>
#include <memory>
#include <string>

#include "config/config.h"
#include "routing/route_table.h"
#include "tls/tls_context.h"

namespace upgate {

class PluginSet;

struct Generation : std::enable_shared_from_this<Generation> {
  Generation(uint64_t n, std::shared_ptr<const Config> c, std::shared_ptr<const TlsBundle> t,
             std::shared_ptr<const PluginSet> p)
      : number(n),
        config(std::move(c)),
        tls(std::move(t)),
        plugins(std::move(p)),
        routes(*config) {}

  // The client-side context of a TLS upstream, or null for a plain one.
  std::shared_ptr<const TlsContext> upstreamTls(const std::string& upstream) const {
    auto it = tls->upstreams.find(upstream);
    return it == tls->upstreams.end() ? nullptr : it->second;
  }

  const uint64_t number;  // 1 at start, +1 per successful reload (logs, POST /reload)
  const std::shared_ptr<const Config> config;
  const std::shared_ptr<const TlsBundle> tls;
  const std::shared_ptr<const PluginSet> plugins;
  const RouteTable routes;
};

using GenerationPtr = std::shared_ptr<const Generation>;

}  // namespace upgate
