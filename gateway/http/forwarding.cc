#include "http/forwarding.h"

#include <string_view>

#include "http/headers.h"

namespace upgate {

namespace {

bool startsWithI(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// "Connection: host" from a client must not strip what the upstream handshake needs.
bool isProtected(std::string_view name) {
  return iequals(name, "Host") || startsWithI(name, "Sec-WebSocket-");
}

// RFC 7239 §4: value = token / quoted-string.
void appendForwardedValue(std::string& out, std::string_view value) {
  if (isToken(value)) {
    out.append(value);
    return;
  }
  out.push_back('"');
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
}

// RFC 7239 §6: node = nodename [":" port]; an IPv6 nodename is "[" IPv6address "]".
void appendForwardedNode(std::string& out, std::string_view ip) {
  if (ip.find(':') != std::string_view::npos) {
    std::string bracketed;
    bracketed.reserve(ip.size() + 2);
    bracketed.push_back('[');
    bracketed.append(ip);
    bracketed.push_back(']');
    appendForwardedValue(out, bracketed);
  } else {
    appendForwardedValue(out, ip);
  }
}

}  // namespace

bool isProxyHeader(std::string_view name) {
  return iequals(name, "X-Forwarded-For") || iequals(name, "X-Forwarded-Proto") ||
         iequals(name, "Forwarded");
}

void appendProxyHeaders(std::string& out, const HeaderList& in, const ForwardInfo& info) {
  const std::string_view proto = info.tls ? "https" : "http";
  const std::string* host = findHeader(in, "Host");
  // RFC 7239 §6.3: an unknown sender is "unknown" (never an empty element).
  const std::string_view client_ip =
      info.client_ip.empty() ? std::string_view("unknown") : std::string_view(info.client_ip);

  std::string xff = joinValues(in, "X-Forwarded-For");
  if (!xff.empty()) xff.append(", ");
  xff.append(client_ip);
  appendHeader(out, "X-Forwarded-For", xff);
  appendHeader(out, "X-Forwarded-Proto", proto);
  if (host != nullptr && findHeader(in, "X-Forwarded-Host") == nullptr) {
    appendHeader(out, "X-Forwarded-Host", *host);
  }

  std::string forwarded = joinValues(in, "Forwarded");
  if (!forwarded.empty()) forwarded.append(", ");
  forwarded.append("for=");
  appendForwardedNode(forwarded, client_ip);
  if (!info.listener_host.empty()) {
    forwarded.append(";by=");
    appendForwardedNode(forwarded, info.listener_host);
  }
  forwarded.append(";proto=").append(proto);
  if (host != nullptr && !host->empty()) {
    forwarded.append(";host=");
    appendForwardedValue(forwarded, *host);
  }
  appendHeader(out, "Forwarded", forwarded);
}

std::string upstreamUpgradeRequest(const RequestHead& request, const ForwardInfo& info) {
  const HeaderList& in = request.headers;
  std::string out;
  out.reserve(512);
  out.append("GET ");
  out.append(request.target);
  out.append(" HTTP/1.1\r\n");
  for (const Header& h : in) {
    if (isHopByHop(h.name) || iequals(h.name, "Content-Length") || isProxyHeader(h.name)) {
      continue;
    }
    if (!isProtected(h.name) && headerHasToken(in, "Connection", h.name)) {
      continue;
    }
    appendHeader(out, h.name, h.value);
  }
  appendHeader(out, "Connection", "Upgrade");
  appendHeader(out, "Upgrade", "websocket");
  appendProxyHeaders(out, in, info);
  out.append("\r\n");
  return out;
}

}  // namespace upgate
