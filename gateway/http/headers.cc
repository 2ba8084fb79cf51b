#include "http/headers.h"

#include <algorithm>

namespace upgate {

namespace {

char asciiLower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool isOws(char c) {
  return c == ' ' || c == '\t';
}

// RFC 7230 §3.2.6: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_"
//                        / "`" / "|" / "~" / DIGIT / ALPHA
bool isTchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
    return true;
  }
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

}  // namespace

bool iequalsSameLength(std::string_view a, std::string_view b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (asciiLower(a[i]) != asciiLower(b[i])) {
      return false;
    }
  }
  return true;
}

bool sameFieldName(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const char x = a[i] == '_' ? '-' : asciiLower(a[i]);
    const char y = b[i] == '_' ? '-' : asciiLower(b[i]);
    if (x != y) return false;
  }
  return true;
}

void removeHeaders(HeaderList& headers, std::string_view name) {
  headers.erase(std::remove_if(headers.begin(), headers.end(),
                               [&](const Header& h) { return sameFieldName(h.name, name); }),
                headers.end());
}

const std::string* findHeader(const HeaderList& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (iequals(h.name, name)) {
      return &h.value;
    }
  }
  return nullptr;
}

size_t countHeader(const HeaderList& headers, std::string_view name) {
  size_t n = 0;
  for (const Header& h : headers) {
    if (iequals(h.name, name)) {
      ++n;
    }
  }
  return n;
}

namespace {

// Calls f(element) for each non-empty, OWS-trimmed element of a comma-separated list, without
// building a vector; stops early when f returns true. Returns whether it did.
template <typename F>
bool anyToken(std::string_view list, F&& f) {
  while (true) {
    size_t comma = list.find(',');
    std::string_view element = trimOws(list.substr(0, comma));
    if (!element.empty() && f(element)) {
      return true;
    }
    if (comma == std::string_view::npos) {
      return false;
    }
    list.remove_prefix(comma + 1);
  }
}

}  // namespace

bool valueHasToken(std::string_view list, std::string_view token) {
  return anyToken(list, [&](std::string_view t) { return iequals(t, token); });
}

bool headerHasToken(const HeaderList& headers, std::string_view name, std::string_view token) {
  for (const Header& h : headers) {
    if (iequals(h.name, name) && valueHasToken(h.value, token)) {
      return true;
    }
  }
  return false;
}

std::vector<std::string_view> splitTokens(std::string_view list) {
  std::vector<std::string_view> out;
  while (true) {
    size_t comma = list.find(',');
    std::string_view element = trimOws(list.substr(0, comma));
    if (!element.empty()) {
      out.push_back(element);
    }
    if (comma == std::string_view::npos) {
      break;
    }
    list.remove_prefix(comma + 1);
  }
  return out;
}

bool isHopByHop(std::string_view name) {
  // By length first: most names are rejected without comparing a single byte.
  switch (name.size()) {
    case 2:
      return iequals(name, "TE");
    case 7:
      return iequals(name, "Upgrade") || iequals(name, "Trailer");
    case 10:
      return iequals(name, "Connection") || iequals(name, "Keep-Alive");
    case 16:
      return iequals(name, "Proxy-Connection");
    case 17:
      return iequals(name, "Transfer-Encoding");
    default:
      return false;
  }
}

std::vector<std::string_view> connectionTokens(const HeaderList& headers) {
  std::vector<std::string_view> out;
  for (const Header& h : headers) {
    if (iequals(h.name, "Connection")) {
      anyToken(h.value, [&](std::string_view t) {
        out.push_back(t);
        return false;
      });
    }
  }
  return out;
}

bool hasToken(const std::vector<std::string_view>& tokens, std::string_view token) {
  for (std::string_view t : tokens) {
    if (iequals(t, token)) {
      return true;
    }
  }
  return false;
}

bool isToken(std::string_view s) {
  if (s.empty()) {
    return false;
  }
  for (char c : s) {
    if (!isTchar(c)) {
      return false;
    }
  }
  return true;
}

bool isFieldValue(std::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) {
      return false;
    }
  }
  return true;
}

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && isOws(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && isOws(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

void appendHeader(std::string& out, std::string_view name, std::string_view value) {
  out.append(name).append(": ").append(value).append("\r\n");
}

std::string joinValues(const HeaderList& headers, std::string_view name) {
  std::string out;
  for (const Header& h : headers) {
    if (!iequals(h.name, name) || trimOws(h.value).empty()) continue;
    if (!out.empty()) out.append(", ");
    out.append(h.value);
  }
  return out;
}

}  // namespace upgate
