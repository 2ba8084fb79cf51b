#pragma once
// Plugin HTTP callouts (host->http_request) on the worker's HttpClient: the proxy's side of
// PluginSession::startHttpCall. The plugin layer sits below proxy/, so it sees only the
// PluginHttpCall interface; this file turns its requests into HttpClient calls and the client's
// outcome into the ABI's result kinds. Loop thread only.

#include <memory>

#include "plugin/chain.h"
#include "proxy/http_client.h"

namespace upgate {

// Starts `request` on `client`; `done` runs on the loop thread unless the returned call is
// cancelled or destroyed first. Null after the client was closed.
std::unique_ptr<PluginHttpCall> startPluginCallout(HttpClient& client, PluginHttpRequest request,
                                                   PluginHttpDone done);

// The ABI's result kind for one of HttpClient's documented error texts ("timeout after ...",
// "resolve: ...", "connect: ...", anything else).
upgate_http_result_t calloutResultOf(const std::string& error);

}  // namespace upgate
