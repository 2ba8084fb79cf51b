#include "http/template.h"

#include <cctype>

#include "http/headers.h"

namespace upgate {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string pathSegment(std::string_view path, size_t n) {
  size_t index = 0;
  size_t pos = 0;
  while (pos < path.size()) {
    while (pos < path.size() && path[pos] == '/') ++pos;
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    if (end > pos && index++ == n) return percentDecode(path.substr(pos, end - pos));
    pos = end;
  }
  return {};
}

// Resolves one variable; returns false for an unknown variable name.
bool resolve(std::string_view var, const RequestHead* request, std::string& out, bool& is_cursor) {
  is_cursor = false;
  out.clear();
  if (var == "cursor") {
    is_cursor = true;
    return true;
  }
  if (var == "path") {
    if (request) out = request->path;
    return true;
  }
  if (var.substr(0, 5) == "path.") {
    std::string_view num = var.substr(5);
    if (num.empty() || num.size() > 3) return false;
    size_t n = 0;
    for (char c : num) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
      n = n * 10 + static_cast<size_t>(c - '0');
    }
    if (request) out = pathSegment(request->path, n);
    return true;
  }
  if (var.substr(0, 6) == "query." && var.size() > 6) {
    if (request) out = queryParam(request->query, var.substr(6)).value_or("");
    return true;
  }
  if (var.substr(0, 7) == "header." && var.size() > 7) {
    if (request) {
      const std::string* v = findHeader(request->headers, var.substr(7));
      if (v) out = *v;
    }
    return true;
  }
  return false;
}

// Walks `tpl`; `emit` gets literal text and resolved values. Shared by expand and check.
template <typename Emit>
bool walk(std::string_view tpl, const RequestHead* request, bool allow_cursor, std::string* error,
          Emit emit) {
  size_t i = 0;
  while (i < tpl.size()) {
    size_t open = tpl.find('{', i);
    if (open == std::string_view::npos) {
      emit(tpl.substr(i), false, false);
      break;
    }
    emit(tpl.substr(i, open - i), false, false);
    size_t close = tpl.find('}', open);
    if (close == std::string_view::npos) {
      if (error) *error = "unclosed '{' at offset " + std::to_string(open);
      return false;
    }
    std::string_view var = tpl.substr(open + 1, close - open - 1);
    std::string value;
    bool is_cursor = false;
    if (!resolve(var, request, value, is_cursor)) {
      if (error)
        *error = "unknown variable {" + std::string(var) +
                 "} (expected path, path.N, query.NAME, header.NAME" +
                 (allow_cursor ? ", cursor)" : ")");
      return false;
    }
    if (is_cursor && !allow_cursor) {
      if (error) *error = "{cursor} is only available in poll targets";
      return false;
    }
    emit(is_cursor ? std::string_view("{cursor}") : std::string_view(value), true, is_cursor);
    i = close + 1;
  }
  return true;
}

}  // namespace

std::string percentEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string percentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hexValue(s[i + 1]);
      int lo = hexValue(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

namespace {
// application/x-www-form-urlencoded: '+' is a space in query strings (not in paths).
std::string decodeQueryPart(std::string_view s) {
  std::string plus(s);
  for (char& c : plus)
    if (c == '+') c = ' ';
  return percentDecode(plus);
}
}  // namespace

std::optional<std::string> queryParam(std::string_view query, std::string_view name) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t end = query.find('&', pos);
    if (end == std::string_view::npos) end = query.size();
    std::string_view pair = query.substr(pos, end - pos);
    size_t eq = pair.find('=');
    std::string key = decodeQueryPart(pair.substr(0, eq));
    if (key == name) {
      return eq == std::string_view::npos ? std::string() : decodeQueryPart(pair.substr(eq + 1));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

std::optional<std::string> expandTemplate(std::string_view tpl, const RequestHead& request,
                                          TemplateUse use, std::string* error) {
  std::string out;
  bool url = use == TemplateUse::UrlTarget;
  bool ok = walk(tpl, &request, url, error, [&](std::string_view piece, bool value, bool cursor) {
    out += (value && url && !cursor) ? percentEncode(piece) : std::string(piece);
  });
  if (!ok) return std::nullopt;
  return out;
}

std::string substituteCursor(std::string_view target, std::string_view cursor) {
  std::string out;
  std::string encoded = percentEncode(cursor);
  size_t i = 0;
  for (;;) {
    size_t at = target.find("{cursor}", i);
    if (at == std::string_view::npos) break;
    out.append(target.substr(i, at - i));
    out += encoded;
    i = at + 8;
  }
  out.append(target.substr(i));
  return out;
}

bool checkTemplate(std::string_view tpl, bool allow_cursor, std::string& error) {
  return walk(tpl, nullptr, allow_cursor, &error, [](std::string_view, bool, bool) {});
}

}  // namespace upgate
