#pragma once
// Semantic checks on a Config that is already in struct form: value ranges, name rules,
// uniqueness, references between sections. Works on any Config, so code that builds one by hand
// (tests, the built-in default) gets the same checks as a loaded file. No yaml-cpp here: the
// errors carry a key path and a message only, and loader.cc adds file:line:col from its marks.
//
// Control path only; pure functions, callable from any thread.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "config/loader.h"

namespace upgate {

// Accepted ranges. Shared with the loader so both report the same bounds.
namespace config_range {
inline constexpr unsigned kMaxWorkers = 256;
inline constexpr int64_t kMaxConnections = 100'000'000;
inline constexpr int kMinBacklog = 1;
inline constexpr int kMaxBacklog = 65535;
inline constexpr size_t kMinHeadBytes = 1024;         // max_head_bytes and
inline constexpr size_t kMaxHeadBytes = 1024 * 1024;  //   max_response_head_bytes
inline constexpr size_t kMinHeaders = 1;
inline constexpr size_t kMaxHeaders = 10000;
inline constexpr size_t kMinHighWater = 1024;
inline constexpr size_t kMaxHighWater = size_t{1} << 30;  // the overflow mark is a multiple
inline constexpr size_t kMaxErrorBodyBytes = 16 * 1024 * 1024;
inline constexpr size_t kMinPollResponseBytes = 1024;  // longpoll.max_response_bytes
inline constexpr size_t kMaxPollResponseBytes = size_t{1} << 30;
}  // namespace config_range

// Every problem found, in section order (file/line/column left empty). Empty = valid.
std::vector<ConfigError> validateConfig(const Config& config);

// Helpers shared by loader.cc and validate.cc for uniform messages.

// `s` in double quotes; '"', '\\' and control bytes escaped ("\x0a"), so a message stays one line.
std::string quoted(std::string_view s);
// "must be between LO and HI, got V"
std::string rangeMessage(int64_t lo, int64_t hi, int64_t value);
// Sizes and durations the way a user would write them: "16KiB", "1000", "1500ms", "10s", "0".
std::string formatSize(size_t bytes);
std::string formatDuration(Millis d);

}  // namespace upgate
