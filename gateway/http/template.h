#pragma once
// Request templates for channel keys and upstream poll targets:
//   {path}          the request path
//   {path.N}        path segment N, counted from 0 ("/news/sports": {path.0}=news, {path.1}=sports;
//                   empty segments are skipped, each is percent-decoded)
//   {query.NAME}    a query parameter's value (percent-decoded)
//   {header.NAME}   a request header's value
//   {cursor}        the long-poll cursor (poll targets only; left in place unless given)
// A missing value expands to "". In URL targets values are percent-encoded; in channel keys
// they are used as they are.

#include <optional>
#include <string>
#include <string_view>

#include "http/request_head.h"

namespace upgate {

enum class TemplateUse { ChannelKey, UrlTarget };

// Returns nullopt and sets `error` for a malformed template (unknown variable, unclosed brace).
std::optional<std::string> expandTemplate(std::string_view tpl, const RequestHead& request,
                                          TemplateUse use, std::string* error = nullptr);
// Replaces every {cursor} with the percent-encoded cursor.
std::string substituteCursor(std::string_view target, std::string_view cursor);
// Checks a template's syntax at config time (same rules as expandTemplate).
bool checkTemplate(std::string_view tpl, bool allow_cursor, std::string& error);

std::string percentEncode(std::string_view s);
std::string percentDecode(std::string_view s);
// The first value of query parameter `name` in `query` (no leading '?'), decoded.
std::optional<std::string> queryParam(std::string_view query, std::string_view name);

}  // namespace upgate
