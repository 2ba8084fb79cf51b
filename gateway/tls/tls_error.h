#pragma once
// OpenSSL's thread-local error queue, turned into one line of text. Every SSL call that can
// fail is followed by either takeTlsErrors() or clearTlsErrors(), so a stale error never leaks
// into the next connection handled by the same thread (Node, uSockets).

#include <string>

namespace upgate {

// Pops every queued error and joins their reasons: "lib: reason; lib: reason". Empty if none.
std::string takeTlsErrors();
inline void clearTlsErrors() {
  (void)takeTlsErrors();
}

}  // namespace upgate
