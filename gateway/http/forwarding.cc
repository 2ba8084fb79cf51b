#include "http/forwarding.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "http/headers.h"

namespace upgate {

namespace {

bool startsWithI(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// Whether dropConnectionNominated() removes `h`. "Connection: host" must not strip what the
// upstream needs, nor what upgate reads itself (the forwarders drop or re-send those anyway).
bool isDroppedNomination(const std::vector<std::string_view>& nominated, const Header& h,
                         bool upgrade) {
  if (isHopByHop(h.name) || iequals(h.name, "Content-Length") || iequals(h.name, "Host") ||
      isProxyHeader(h.name)) {
    return false;
  }
  if (upgrade && startsWithI(h.name, "Sec-WebSocket-")) return false;
  return hasToken(nominated, h.name);
}

// Appends all values of `name`, in order, joined by ", " (RFC 9110 §5.3 list combination),
// followed by ", " if there were any: the caller appends its own element next.
void appendJoinedValues(std::string& out, const HeaderList& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (iequals(h.name, name) && !trimOws(h.value).empty()) {
      out.append(h.value);
      out.append(", ");
    }
  }
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

void dropConnectionNominated(HeaderList& headers, bool upgrade) {
  std::vector<std::string_view> nominated = connectionTokens(headers);
  if (nominated.empty()) return;
  // The usual Connection (keep-alive, close, Upgrade) names nothing that goes.
  if (std::none_of(headers.begin(), headers.end(),
                   [&](const Header& h) { return isDroppedNomination(nominated, h, upgrade); })) {
    return;
  }
  // The views point into the Connection values, which erasing moves (a short string's bytes
  // move with it): the names are copied first.
  const std::vector<std::string> names(nominated.begin(), nominated.end());
  nominated.assign(names.begin(), names.end());
  headers.erase(
      std::remove_if(headers.begin(), headers.end(),
                     [&](const Header& h) { return isDroppedNomination(nominated, h, upgrade); }),
      headers.end());
}

bool isProxyHeader(std::string_view name) {
  // Look-alikes too (X_Forwarded_Proto): servers reading headers CGI-style merge them with ours.
  return sameFieldName(name, "X-Forwarded-For") || sameFieldName(name, "X-Forwarded-Proto") ||
         iequals(name, "Forwarded");
}

void appendProxyHeaders(std::string& out, const HeaderList& in, const ForwardInfo& info) {
  const std::string_view proto = info.tls ? "https" : "http";
  // RFC 7239 §6.3: an unknown sender is "unknown" (never an empty element).
  const std::string_view client_ip =
      info.client_ip.empty() ? std::string_view("unknown") : std::string_view(info.client_ip);
  const std::string* host = findHeader(in, "Host");

  // Built in place: no temporary strings per request.
  out.append("X-Forwarded-For: ");
  appendJoinedValues(out, in, "X-Forwarded-For");
  out.append(client_ip);
  out.append("\r\n");
  appendHeader(out, "X-Forwarded-Proto", proto);
  if (host != nullptr && findHeader(in, "X-Forwarded-Host") == nullptr) {
    appendHeader(out, "X-Forwarded-Host", *host);
  }

  out.append("Forwarded: ");
  appendJoinedValues(out, in, "Forwarded");
  out.append("for=");
  appendForwardedNode(out, client_ip);
  if (!info.listener_host.empty()) {
    out.append(";by=");
    appendForwardedNode(out, info.listener_host);
  }
  out.append(";proto=");
  out.append(proto);
  if (host != nullptr && !host->empty()) {
    out.append(";host=");
    appendForwardedValue(out, *host);
  }
  out.append("\r\n");
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
    appendHeader(out, h.name, h.value);
  }
  appendHeader(out, "Connection", "Upgrade");
  appendHeader(out, "Upgrade", "websocket");
  appendProxyHeaders(out, in, info);
  out.append("\r\n");
  return out;
}

}  // namespace upgate
