#pragma once
// Incremental UTF-8 validation (RFC 3629 §4) for WebSocket text messages and close reasons
// (RFC 6455 §5.6, §8.1). A message may be split anywhere — across reads, frames and inflate
// output chunks — so the validator carries its state between calls.
//
// Rejected: bytes C0, C1, F5-FF; overlong forms (E0 80-9F, F0 80-8F); UTF-16 surrogates
// (ED A0-BF); code points above U+10FFFF (F4 90-BF); stray or missing continuation bytes.
// Failure is reported at the first byte that cannot start or continue a valid sequence ("fail
// fast", as Autobahn's 6.x cases expect), not at the end of the message.
//
// No allocation, never throws. A validator belongs to one message stream on one thread.

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace upgate {

class Utf8Validator {
 public:
  // Validates the next bytes. Returns false once the bytes so far cannot be a prefix of valid
  // UTF-8; from then on every call returns false until reset().
  bool feed(const char* data, size_t len);

  // True if everything fed so far is valid and ends on a code point boundary (call at the end of
  // the message: a truncated sequence makes this false while feed() still returned true).
  bool complete() const { return state_ == kAccept; }

  // True once feed() has returned false.
  bool failed() const { return state_ == kReject; }

  // Back to the start of a new message.
  void reset() { state_ = kAccept; }

  // DFA states; public for the table in utf8.cc only.
  enum : uint8_t {
    kAccept = 0,  // at a code point boundary
    kReject,      // invalid; sticky
    kTail1,       // one more 80-BF
    kTail2,       // two more 80-BF
    kTail3,       // three more 80-BF
    kAfterE0,     // next A0-BF (no overlong 3-byte form), then one
    kAfterED,     // next 80-9F (no surrogates), then one
    kAfterF0,     // next 90-BF (no overlong 4-byte form), then two
    kAfterF4,     // next 80-8F (nothing above U+10FFFF), then two
    kStateCount
  };

 private:
  uint8_t state_ = kAccept;
};

// True if `s` is entirely valid UTF-8.
bool isValidUtf8(std::string_view s);

// The largest n <= max_len such that s[0, n) does not end inside a multi-byte sequence, for
// truncating already valid UTF-8 (a close reason) without splitting a character.
size_t utf8TruncationPoint(std::string_view s, size_t max_len);

}  // namespace upgate
