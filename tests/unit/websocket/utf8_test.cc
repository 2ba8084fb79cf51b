#include "websocket/utf8.h"

#include <catch2/catch.hpp>
#include <string>

namespace upgate {
namespace {

// Reference: decode code points by the RFC 3629 rules, a different method from the DFA.
bool referenceValid(const unsigned char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c >> 5) == 0x6) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c >> 4) == 0xE) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c >> 3) == 0x1E) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) {
      return false;
    }
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    const uint32_t min = len == 2 ? 0x80 : (len == 3 ? 0x800 : 0x10000);
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

bool dfaValid(const unsigned char* s, size_t n) {
  Utf8Validator v;
  return v.feed(reinterpret_cast<const char*>(s), n) && v.complete();
}

struct Case {
  const char* name;
  std::string bytes;
  bool valid;
};

// Autobahn 6.x style cases.
const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"empty", "", true},
      {"ASCII", "Hello-µ@ßöäüàá-UTF-8!!", true},
      {"kosme", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5", true},
      {"U+0000", std::string(1, '\0'), true},
      {"U+0080", "\xC2\x80", true},
      {"U+07FF", "\xDF\xBF", true},
      {"U+0800", "\xE0\xA0\x80", true},
      {"U+D7FF", "\xED\x9F\xBF", true},
      {"U+E000", "\xEE\x80\x80", true},
      {"U+FFFD", "\xEF\xBF\xBD", true},
      {"U+FFFE noncharacter", "\xEF\xBF\xBE", true},
      {"U+FFFF", "\xEF\xBF\xBF", true},
      {"U+10000", "\xF0\x90\x80\x80", true},
      {"U+10FFFF", "\xF4\x8F\xBF\xBF", true},
      {"emoji in text", "ok \xF0\x9F\x98\x80 ok", true},
      {"kosme with a bad byte",
       std::string("\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80") + "edited", false},
      {"U+110000", "\xF4\x90\x80\x80", false},
      {"F5 lead", "\xF5\x80\x80\x80", false},
      {"5-byte form", "\xF8\x88\x80\x80\x80", false},
      {"6-byte form", "\xFC\x84\x80\x80\x80\x80", false},
      {"FE", "\xFE", false},
      {"FF", "\xFF", false},
      {"lone continuation 80", "\x80", false},
      {"lone continuation BF", "\xBF", false},
      {"two continuations", "a\x80\xBF", false},
      {"lead then ASCII", "\xC3 ", false},
      {"3-byte lead then ASCII", "\xE2\x82z", false},
      {"overlong / C0 AF", "\xC0\xAF", false},
      {"overlong / E0 80 AF", "\xE0\x80\xAF", false},
      {"overlong / F0 80 80 AF", "\xF0\x80\x80\xAF", false},
      {"overlong U+007F C1 BF", "\xC1\xBF", false},
      {"overlong U+07FF E0 9F BF", "\xE0\x9F\xBF", false},
      {"overlong U+FFFF F0 8F BF BF", "\xF0\x8F\xBF\xBF", false},
      {"overlong NUL C0 80", "\xC0\x80", false},
      {"surrogate U+D800", "\xED\xA0\x80", false},
      {"surrogate U+DB7F", "\xED\xAD\xBF", false},
      {"surrogate U+DFFF", "\xED\xBF\xBF", false},
      {"surrogate pair", "\xED\xA0\x80\xED\xB0\x80", false},
      {"truncated 2-byte", "\xC3", false},
      {"truncated 3-byte", "\xE2\x82", false},
      {"truncated 4-byte", "\xF0\x9F\x98", false},
      {"ASCII then truncated", "Hello \xF0\x9F", false},
  };
  return c;
}

TEST_CASE("utf8: Autobahn-style cases, whole", "[websocket]") {
  for (const Case& c : cases()) {
    CAPTURE(c.name);
    CHECK(isValidUtf8(c.bytes) == c.valid);
    CHECK(referenceValid(reinterpret_cast<const unsigned char*>(c.bytes.data()), c.bytes.size()) ==
          c.valid);
  }
}

TEST_CASE("utf8: split at every byte gives the same verdict", "[websocket]") {
  for (const Case& c : cases()) {
    CAPTURE(c.name);
    for (size_t cut = 0; cut <= c.bytes.size(); ++cut) {
      Utf8Validator v;
      const bool a = v.feed(c.bytes.data(), cut);
      const bool b = v.feed(c.bytes.data() + cut, c.bytes.size() - cut);
      CHECK((a && b && v.complete()) == c.valid);
    }
    Utf8Validator bytewise;
    bool ok = true;
    for (char ch : c.bytes) {
      ok = bytewise.feed(&ch, 1) && ok;
    }
    CHECK((ok && bytewise.complete()) == c.valid);
  }
}

TEST_CASE("utf8: fails fast at the first impossible byte", "[websocket]") {
  struct Row {
    std::string bytes;
    size_t fail_at;  // index of the byte whose feed() first returns false
  };
  const Row row = GENERATE(values<Row>({
      {"abc\xC0\x80", 3},
      {"\xF4\x90\x80\x80", 1},
      {"\xED\xA0\x80", 1},
      {"\xE0\x80\x80", 1},
      {"\xF0\x8F\x80\x80", 1},
      {"xy\xCE\xBA\x80", 4},
      {"\xE2\x82\x41", 2},  // \x41 = 'A'
      {"\xFF", 0},
  }));
  Utf8Validator v;
  size_t failed_at = row.bytes.size();
  for (size_t i = 0; i < row.bytes.size(); ++i) {
    if (!v.feed(&row.bytes[i], 1)) {
      failed_at = i;
      break;
    }
  }
  CHECK(failed_at == row.fail_at);
  CHECK(v.failed());
  CHECK_FALSE(v.feed("ok", 2));  // sticky
  v.reset();
  CHECK(v.feed("ok", 2));
  CHECK(v.complete());
}

TEST_CASE("utf8: truncated sequences are incomplete, not failed", "[websocket]") {
  Utf8Validator v;
  CHECK(v.feed("\xF0\x9F\x98", 3));
  CHECK_FALSE(v.complete());
  CHECK_FALSE(v.failed());
  CHECK(v.feed("\x80", 1));
  CHECK(v.complete());
}

TEST_CASE("utf8: all 1- and 2-byte strings match the reference", "[websocket]") {
  unsigned char s[2];
  size_t mismatches = 0;
  for (int a = 0; a < 256; ++a) {
    s[0] = static_cast<unsigned char>(a);
    mismatches += dfaValid(s, 1) != referenceValid(s, 1);
    for (int b = 0; b < 256; ++b) {
      s[1] = static_cast<unsigned char>(b);
      mismatches += dfaValid(s, 2) != referenceValid(s, 2);
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("utf8: all 3-byte strings with a non-ASCII lead match the reference", "[websocket]") {
  unsigned char s[3];
  size_t mismatches = 0;
  for (int a = 0x80; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      for (int c = 0; c < 256; ++c) {
        s[0] = static_cast<unsigned char>(a);
        s[1] = static_cast<unsigned char>(b);
        s[2] = static_cast<unsigned char>(c);
        mismatches += dfaValid(s, 3) != referenceValid(s, 3);
      }
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("utf8: 4-byte leads with boundary continuation bytes match the reference",
          "[websocket]") {
  const unsigned char edges[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF};
  unsigned char s[4];
  size_t mismatches = 0;
  for (int a = 0xF0; a < 256; ++a) {
    for (unsigned char b : edges) {
      for (unsigned char c : edges) {
        for (unsigned char d : edges) {
          s[0] = static_cast<unsigned char>(a);
          s[1] = b;
          s[2] = c;
          s[3] = d;
          mismatches += dfaValid(s, 4) != referenceValid(s, 4);
        }
      }
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("utf8: ASCII fast path finds a bad byte at every position", "[websocket]") {
  for (size_t len = 1; len <= 40; ++len) {
    for (size_t bad = 0; bad < len; ++bad) {
      std::string s(len, 'a');
      s[bad] = '\x80';
      CAPTURE(len, bad);
      CHECK_FALSE(isValidUtf8(s));
      s[bad] = '\xC3';  // a lead byte: valid only if followed by a continuation
      CHECK_FALSE(isValidUtf8(s));
      if (bad + 1 < len) {
        s[bad + 1] = '\xA9';
        CHECK(isValidUtf8(s));
      }
    }
  }
}

TEST_CASE("utf8: utf8TruncationPoint keeps whole characters", "[websocket]") {
  const std::string s = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";  // a é € 😀: 1+2+3+4 bytes
  CHECK(utf8TruncationPoint(s, 100) == s.size());
  CHECK(utf8TruncationPoint(s, 10) == 10);
  CHECK(utf8TruncationPoint(s, 9) == 6);
  CHECK(utf8TruncationPoint(s, 7) == 6);
  CHECK(utf8TruncationPoint(s, 6) == 6);
  CHECK(utf8TruncationPoint(s, 5) == 3);
  CHECK(utf8TruncationPoint(s, 3) == 3);
  CHECK(utf8TruncationPoint(s, 2) == 1);
  CHECK(utf8TruncationPoint(s, 1) == 1);
  CHECK(utf8TruncationPoint(s, 0) == 0);
  for (size_t n = 0; n <= s.size(); ++n) {
    CHECK(isValidUtf8(s.substr(0, utf8TruncationPoint(s, n))));
  }
}

}  // namespace
}  // namespace upgate
