#include "websocket/utf8.h"

#include <array>
#include <cstring>

namespace upgate {

namespace {

// Byte classes: every byte that behaves the same in every state shares a class, so the
// transition table is 9 x 12 instead of 9 x 256.
enum : uint8_t {
  kAscii,    // 00-7F
  kCont8,    // 80-8F
  kCont9,    // 90-9F
  kContA,    // A0-BF
  kInvalid,  // C0, C1 (overlong 2-byte), F5-FF (beyond U+10FFFF or not UTF-8)
  kLead2,    // C2-DF
  kLeadE0,   // E0
  kLead3,    // E1-EC, EE, EF
  kLeadED,   // ED
  kLeadF0,   // F0
  kLead4,    // F1-F3
  kLeadF4,   // F4
  kClassCount
};

constexpr std::array<uint8_t, 256> makeClasses() {
  std::array<uint8_t, 256> c{};
  for (int b = 0; b < 256; ++b) {
    uint8_t k = kInvalid;
    if (b < 0x80) {
      k = kAscii;
    } else if (b < 0x90) {
      k = kCont8;
    } else if (b < 0xA0) {
      k = kCont9;
    } else if (b < 0xC0) {
      k = kContA;
    } else if (b < 0xC2) {
      k = kInvalid;
    } else if (b < 0xE0) {
      k = kLead2;
    } else if (b == 0xE0) {
      k = kLeadE0;
    } else if (b == 0xED) {
      k = kLeadED;
    } else if (b < 0xF0) {
      k = kLead3;
    } else if (b == 0xF0) {
      k = kLeadF0;
    } else if (b < 0xF4) {
      k = kLead4;
    } else if (b == 0xF4) {
      k = kLeadF4;
    }
    c[static_cast<size_t>(b)] = k;
  }
  return c;
}

using Row = std::array<uint8_t, kClassCount>;
using Table = std::array<Row, Utf8Validator::kStateCount>;

constexpr Table makeTransitions() {
  Table t{};
  for (auto& row : t) {
    for (auto& next : row) {
      next = Utf8Validator::kReject;
    }
  }
  Row& a = t[Utf8Validator::kAccept];
  a[kAscii] = Utf8Validator::kAccept;
  a[kLead2] = Utf8Validator::kTail1;
  a[kLeadE0] = Utf8Validator::kAfterE0;
  a[kLead3] = Utf8Validator::kTail2;
  a[kLeadED] = Utf8Validator::kAfterED;
  a[kLeadF0] = Utf8Validator::kAfterF0;
  a[kLead4] = Utf8Validator::kTail3;
  a[kLeadF4] = Utf8Validator::kAfterF4;
  for (uint8_t cont : {kCont8, kCont9, kContA}) {
    t[Utf8Validator::kTail1][cont] = Utf8Validator::kAccept;
    t[Utf8Validator::kTail2][cont] = Utf8Validator::kTail1;
    t[Utf8Validator::kTail3][cont] = Utf8Validator::kTail2;
  }
  t[Utf8Validator::kAfterE0][kContA] = Utf8Validator::kTail1;
  t[Utf8Validator::kAfterED][kCont8] = Utf8Validator::kTail1;
  t[Utf8Validator::kAfterED][kCont9] = Utf8Validator::kTail1;
  t[Utf8Validator::kAfterF0][kCont9] = Utf8Validator::kTail2;
  t[Utf8Validator::kAfterF0][kContA] = Utf8Validator::kTail2;
  t[Utf8Validator::kAfterF4][kCont8] = Utf8Validator::kTail2;
  return t;
}

constexpr std::array<uint8_t, 256> kClasses = makeClasses();
constexpr Table kTransitions = makeTransitions();

constexpr uint64_t kHighBits = 0x8080808080808080ull;

}  // namespace

bool Utf8Validator::feed(const char* data, size_t len) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  const unsigned char* const end = p + len;
  uint8_t s = state_;
  if (s == kReject) {
    return false;
  }
  while (p != end) {
    if (s == kAccept) {
      // Fast path: text is mostly ASCII; test eight bytes per step while between code points.
      while (end - p >= 8) {
        uint64_t w;
        std::memcpy(&w, p, sizeof w);
        if ((w & kHighBits) != 0) {
          break;
        }
        p += 8;
      }
      while (p != end && *p < 0x80) {
        ++p;
      }
      if (p == end) {
        break;
      }
    }
    s = kTransitions[s][kClasses[*p]];
    ++p;
    if (s == kReject) {
      break;
    }
  }
  state_ = s;
  return s != kReject;
}

bool isValidUtf8(std::string_view s) {
  Utf8Validator v;
  return v.feed(s.data(), s.size()) && v.complete();
}

size_t utf8TruncationPoint(std::string_view s, size_t max_len) {
  if (max_len >= s.size()) {
    return s.size();
  }
  size_t n = max_len;
  // s[n] is the first byte cut off; while it is a continuation byte, the character it belongs to
  // started earlier and must go too. Valid UTF-8 needs at most three steps back.
  for (int i = 0; i < 3 && n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80; ++i) {
    --n;
  }
  return n;
}

}  // namespace upgate
