#pragma once
// The head of one HTTP/1.x request as parsed by RequestParser. Every field is an owned copy:
// nothing points into the read buffer the bytes arrived in (style 2.7). Owned by whoever owns the
// parser (or moved out of it); used on that session's loop thread only.

#include <cstdint>
#include <string>
#include <string_view>

#include "http/headers.h"

namespace upgate {

struct RequestHead {
  // Method as llhttp names it, upper case ("GET").
  std::string method;
  // Request target exactly as received (origin-form "/chat?room=1", or absolute-form
  // "http://host/chat", authority-form "host:443", asterisk-form "*").
  std::string target;
  // Path of the target without query or fragment, not percent-decoded ("/chat"). For
  // absolute-form, the path after the authority ("/" when there is none); for authority-form,
  // empty; for "*", "*".
  std::string path;
  // Query without the '?' and without any fragment, not decoded ("room=1"); empty if none.
  std::string query;
  uint8_t http_major = 1;
  uint8_t http_minor = 1;
  // Fields in wire order, values OWS-trimmed.
  HeaderList headers;
  // llhttp's upgrade flag: Upgrade header + "upgrade" in Connection (or a CONNECT request). Whether
  // it is a valid WebSocket handshake is decided by websocket/handshake.
  bool upgrade = false;
};

// Fills `path` and `query` from `target` as described on RequestHead (no decoding). Defined in
// request_parser.cc.
void splitTarget(std::string_view target, std::string& path, std::string& query);

}  // namespace upgate
