#pragma once
// llhttp's state machine built in strict mode (the top-level CMakeLists.txt compiles a renamed
// copy of Debian's llhttp.c), for parsers of client input. A parser set up with
// llhttpInitStrict() must be run with llhttpExecuteStrict() only; every other llhttp_* call
// (errors, pause and resume, method names, lenient flags) works on it as on any parser. Never
// call llhttp_reset() on it: that re-initialises with the loose machine.

#include <llhttp.h>

#include <cstddef>

extern "C" {
int upgate_strict_llhttp__internal_init(llhttp_t* state);
int upgate_strict_llhttp__internal_execute(llhttp_t* state, const char* p, const char* endp);
}

namespace upgate {

// llhttp_init() with the strict machine.
inline void llhttpInitStrict(llhttp_t* parser, llhttp_type_t type,
                             const llhttp_settings_t* settings) {
  upgate_strict_llhttp__internal_init(parser);
  parser->type = type;
  parser->settings = const_cast<llhttp_settings_t*>(settings);
}

// llhttp_execute() with the strict machine.
inline llhttp_errno_t llhttpExecuteStrict(llhttp_t* parser, const char* data, size_t len) {
  return static_cast<llhttp_errno_t>(
      upgate_strict_llhttp__internal_execute(parser, data, data + len));
}

}  // namespace upgate
