#pragma once
// Logging. Two streams:
//  - stderr: structured JSON event lines through spdlog, one per event, each with the session id
//    ("id") when there is one, so every line of one session can be found with one grep;
//  - stdout: the access log, one JSON line per session, written by AccessLog.
// Both are safe to call from any worker thread.

#include <spdlog/spdlog.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace upgate {

enum class LogLevel;

namespace log {

// Sets up the stderr logger; call once from main before any worker starts.
void init(LogLevel level);
void setLevel(LogLevel level);

// Appends s to out as the inside of a JSON string (quotes not included).
void appendJsonEscaped(std::string& out, std::string_view s);

// Emits {"ts":...,"level":...,"id":<id>,"msg":"<msg>"}; id 0 means "no session".
void event(spdlog::level::level_enum level, uint64_t id, std::string_view msg);

inline bool enabled(spdlog::level::level_enum level) {
  return spdlog::should_log(level);
}

}  // namespace log

// Formats only when the level is enabled: log messages cost nothing on the data path otherwise.
// `lvl` is one of spdlog's level names: debug, info, warn, err.
#define UPGATE_LOG(lvl, id, ...)                                                  \
  do {                                                                            \
    if (::upgate::log::enabled(::spdlog::level::lvl)) {                           \
      ::upgate::log::event(::spdlog::level::lvl, (id), fmt::format(__VA_ARGS__)); \
    }                                                                             \
  } while (0)

}  // namespace upgate
