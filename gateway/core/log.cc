#include "core/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include "config/config.h"

namespace upgate::log {
namespace {

spdlog::level::level_enum toSpd(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return spdlog::level::debug;
    case LogLevel::Info:
      return spdlog::level::info;
    case LogLevel::Warn:
      return spdlog::level::warn;
    case LogLevel::Error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void init(LogLevel level) {
  auto logger = spdlog::stderr_logger_mt("upgate");
  // The message part is already a run of JSON members; spdlog adds time and level around it.
  logger->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l",%v})",
                      spdlog::pattern_time_type::utc);
  spdlog::set_default_logger(logger);
  setLevel(level);
}

void setLevel(LogLevel level) {
  spdlog::set_level(toSpd(level));
  spdlog::flush_on(spdlog::level::trace);
}

void appendJsonEscaped(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
}

void event(spdlog::level::level_enum level, uint64_t id, std::string_view msg) {
  std::string line;
  line.reserve(msg.size() + 32);
  if (id != 0) {
    line += "\"id\":";
    line += std::to_string(id);
    line += ',';
  }
  line += "\"msg\":\"";
  appendJsonEscaped(line, msg);
  line += '"';
  spdlog::log(level, "{}", line);
}

}  // namespace upgate::log
