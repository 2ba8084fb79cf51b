#pragma once
// The access log: one JSON line per session on stdout, written when the session ends.

#include <cstdint>
#include <string>

namespace upgate {

struct AccessRecord {
  uint64_t id = 0;
  std::string client;  // "ip:port"
  std::string listener;
  std::string route;       // empty = no route matched
  std::string upstream;    // endpoint tried last, empty if none
  int status = 0;          // 101, or the HTTP status sent; 0 = nothing was sent
  uint64_t bytes_in = 0;   // client -> upstream after the 101
  uint64_t bytes_out = 0;  // upstream -> client after the 101
  uint64_t duration_ms = 0;
  std::string close;  // why the session ended
  // WebSocket sessions: the first close frame's code and who sent it (1006: none was sent, by
  // the side whose connection ended first). 0 / nullptr: not a WebSocket session (null).
  uint16_t close_code = 0;
  const char* close_by = nullptr;  // "client", "upstream", "gateway"
  std::string user;                // identity attached by a plugin; empty = none
};

std::string formatAccessRecord(const AccessRecord& r);
// Writes one line with a single fwrite (stdio locks per call, so lines never interleave); main
// makes stdout line-buffered, so each line is one write(2) and no explicit flush is needed.
void writeAccessRecord(const AccessRecord& r);

}  // namespace upgate
