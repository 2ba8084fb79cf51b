#pragma once
// The built-in route matcher: routes in config order, first match wins. Built once per Config
// and shared read-only by every worker.

#include <string_view>
#include <vector>

#include "config/config.h"
#include "http/request_head.h"

namespace upgate {

class RouteTable {
 public:
  explicit RouteTable(const Config& config);

  // The first route whose every criterion matches, or nullptr (-> 404).
  const RouteConfig* match(const RequestHead& head) const;

  // Exposed for tests: host matching with "*.example.com" wildcards, port and case ignored.
  static bool hostMatches(std::string_view pattern, std::string_view host_header);

 private:
  const std::vector<RouteConfig>& routes_;
};

}  // namespace upgate
