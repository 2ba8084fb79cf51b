#pragma once
// Small checks shared by the HTTP fuzz targets, written from RFC 7230 (not from gateway/http).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

namespace fuzz_http {

// RFC 7230 §3.2.6 tchar.
inline bool isTchar(char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
    return true;
  }
  return c != '\0' && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

inline bool isToken(std::string_view s) {
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

// No byte that could end or split a header line once the value is written out again.
inline bool hasLineBreakOrNul(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

inline bool isOws(char c) {
  return c == ' ' || c == '\t';
}

inline bool trimmed(std::string_view s) {
  return s.empty() || (!isOws(s.front()) && !isOws(s.back()));
}

// A heap copy of exactly `len` bytes, so ASan flags any read past what was fed.
inline std::unique_ptr<char[]> exactCopy(const uint8_t* p, size_t len) {
  std::unique_ptr<char[]> b(new char[len]);
  if (len > 0) {
    std::memcpy(b.get(), p, len);
  }
  return b;
}

// The split offset in [0, n] chosen by one byte.
inline size_t splitPoint(uint8_t b, size_t n) {
  return static_cast<size_t>((uint64_t{b} * (n + 1)) / 256);
}

// For messages: a printable prefix of s.
inline std::string shown(std::string_view s, size_t max = 60) {
  std::string out;
  for (char c : s.substr(0, max)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) {
      out.push_back(c);
    } else {
      static const char* digits = "0123456789abcdef";
      out += "\\x";
      out.push_back(digits[u >> 4]);
      out.push_back(digits[u & 15]);
    }
  }
  return out;
}

// The name of a parser result (upgate::ParseResult), for messages.
template <class Result>
const char* resultName(Result r) {
  switch (r) {
    case Result::NeedMore:
      return "NeedMore";
    case Result::Complete:
      return "Complete";
    case Result::Error:
      return "Error";
  }
  return "?";
}

// Two header lists with the same fields, names and values, in the same order.
template <class Headers>
bool sameFields(const Headers& a, const Headers& b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].value != b[i].value) {
      return false;
    }
  }
  return true;
}

}  // namespace fuzz_http
