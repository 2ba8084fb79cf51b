#include "routing/route_table.h"

#include "http/headers.h"

namespace upgate {
namespace {

// Host header minus the port: "Example.com:8080" -> "Example.com", "[::1]:80" -> "[::1]".
std::string_view hostWithoutPort(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    size_t end = host.find(']');
    return end == std::string_view::npos ? host : host.substr(0, end + 1);
  }
  size_t colon = host.rfind(':');
  return colon == std::string_view::npos ? host : host.substr(0, colon);
}

bool endsWithNoCase(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && iequals(s.substr(s.size() - suffix.size()), suffix);
}

}  // namespace

RouteTable::RouteTable(const Config& config) : routes_(config.routes) {}

bool RouteTable::hostMatches(std::string_view pattern, std::string_view host_header) {
  std::string_view host = hostWithoutPort(host_header);
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);  // absolute FQDN form
  if (pattern.size() > 2 && pattern.substr(0, 2) == "*.") {
    // "*.example.com" matches any name below example.com, not example.com itself.
    std::string_view suffix = pattern.substr(1);
    return host.size() > suffix.size() && endsWithNoCase(host, suffix);
  }
  return iequals(pattern, host);
}

const RouteConfig* RouteTable::match(const RequestHead& head) const {
  const std::string* host = findHeader(head.headers, "host");
  for (const RouteConfig& route : routes_) {
    const RouteMatch& m = route.match;
    if (m.path && head.path != *m.path) continue;
    if (m.path_prefix && head.path.compare(0, m.path_prefix->size(), *m.path_prefix) != 0) continue;
    if (m.host && (host == nullptr || !hostMatches(*m.host, *host))) continue;
    bool headers_ok = true;
    for (const HeaderMatch& hm : m.headers) {
      const std::string* value = findHeader(head.headers, hm.name);
      if (value == nullptr || (hm.value && *value != *hm.value)) {
        headers_ok = false;
        break;
      }
    }
    if (headers_ok) return &route;
  }
  return nullptr;
}

}  // namespace upgate
