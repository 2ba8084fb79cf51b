#pragma once
// FUZZ_CHECK: an invariant of the code under test. A failure prints what broke and aborts, which
// libFuzzer reports as a crash and saves the input as a reproducer (artifact). Never compiled
// out (NDEBUG does not affect it).

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond, ...)                                                                  \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "\nFUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                       \
      std::fprintf(stderr, "\n");                                                              \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)
