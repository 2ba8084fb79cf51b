#include "proxy/access_log.h"

#include <time.h>

#include <cstdio>

#include "core/log.h"

namespace upgate {
namespace {

void appendString(std::string& out, const char* key, const std::string& value, bool null_if_empty) {
  out += ",\"";
  out += key;
  out += "\":";
  if (null_if_empty && value.empty()) {
    out += "null";
    return;
  }
  out += '"';
  log::appendJsonEscaped(out, value);
  out += '"';
}

void appendNumber(std::string& out, const char* key, uint64_t value) {
  out += ",\"";
  out += key;
  out += "\":";
  out += std::to_string(value);
}

}  // namespace

std::string formatAccessRecord(const AccessRecord& r) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  gmtime_r(&ts.tv_sec, &utc);
  char stamp[64];
  snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
           utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
           static_cast<int>(ts.tv_nsec / 1000000));
  std::string out;
  out.reserve(256);
  out += "{\"ts\":\"";
  out += stamp;
  out += '"';
  appendNumber(out, "id", r.id);
  appendString(out, "client", r.client, false);
  appendString(out, "listener", r.listener, false);
  appendString(out, "route", r.route, true);
  appendString(out, "upstream", r.upstream, true);
  appendNumber(out, "status", static_cast<uint64_t>(r.status));
  appendNumber(out, "bytes_in", r.bytes_in);
  appendNumber(out, "bytes_out", r.bytes_out);
  appendNumber(out, "duration_ms", r.duration_ms);
  appendString(out, "close", r.close, false);
  if (r.close_code != 0) {
    appendNumber(out, "close_code", r.close_code);
  } else {
    out += ",\"close_code\":null";
  }
  appendString(out, "close_by", r.close_by ? r.close_by : std::string(), true);
  appendString(out, "user", r.user, true);
  out += "}\n";
  return out;
}

void writeAccessRecord(const AccessRecord& r) {
  std::string line = formatAccessRecord(r);
  fwrite(line.data(), 1, line.size(), stdout);  // stdout is line-buffered (main): one write
}

}  // namespace upgate
