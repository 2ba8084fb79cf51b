#pragma once
// The upgrade request the gateway sends to a WebSocket upstream, built from the client's checked
// request head plus proxy headers (X-Forwarded-*, RFC 7239 Forwarded). Pure function; any thread;
// never throws (OOM aborts).

#include <cstdint>
#include <string>
#include <string_view>

#include "http/request_head.h"

namespace upgate {

// Where the client connection came from, as the session knows it.
struct ForwardInfo {
  // Peer address without brackets or port: "192.0.2.7", "2001:db8::1"; empty -> "unknown".
  std::string client_ip;
  uint16_t client_port = 0;   // peer port (not sent upstream in this version)
  bool tls = false;           // the client connection is TLS: proto https
  std::string listener_host;  // local address ip for Forwarded by=; empty: no by=
};

// Returns the whole request head, ending in the blank line:
//   GET <target> HTTP/1.1\r\n
//   <request headers in order, except: hop-by-hop ones (isHopByHop); Content-Length (the gateway
//    sends no body); X-Forwarded-For, X-Forwarded-Proto and Forwarded (re-sent below)>
//   Connection: Upgrade\r\n
//   Upgrade: websocket\r\n
//   X-Forwarded-For: <client's values joined by ", ">, <client_ip>\r\n
//   X-Forwarded-Proto: http|https\r\n          (the client's own value is replaced)
//   X-Forwarded-Host: <Host>\r\n               (only when the client sent none and Host exists;
//                                               a client's X-Forwarded-Host is kept in place)
//   Forwarded: <client's values joined by ", ">, for=<ip>;by=<ip>;proto=http|https;host=<Host>\r\n
//   \r\n
// In Forwarded (RFC 7239 §4, §6) an IPv6 address is written "[addr]" and quoted, any value that
// is not a token (e.g. "host:8080") is quoted; by= only when listener_host is set, host= only
// when the client sent a Host. Sec-WebSocket-* headers pass through unchanged.
// `request` is the client's head after dropConnectionNominated(), plus what the gateway and its
// plugins added: every header it still has goes upstream unless listed above.
std::string upstreamUpgradeRequest(const RequestHead& request, const ForwardInfo& info);

// RFC 9110 §7.6.1: the headers a client's Connection header names are meant for the gateway, not
// the upstream. Removes them from the client's `headers`, before the gateway or a plugin adds any
// of its own (which a client must not be able to strip by naming them). Kept: hop-by-hop headers,
// Content-Length and the proxy headers (upgate reads them; the forwarders never pass them on as
// they are), Host, and, for a WebSocket upgrade, Sec-WebSocket-* (the upstream handshake needs
// them).
void dropConnectionNominated(HeaderList& headers, bool upgrade);

// The proxy headers above (X-Forwarded-For, X-Forwarded-Proto, Forwarded, and look-alikes with
// '_' for '-'): a request forwarded upstream drops the client's copies of these and appends
// appendProxyHeaders() instead.
bool isProxyHeader(std::string_view name);

// Appends the X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded lines shown
// above for a client request with headers `in` (shared by the upgrade and plain HTTP requests).
void appendProxyHeaders(std::string& out, const HeaderList& in, const ForwardInfo& info);

}  // namespace upgate
