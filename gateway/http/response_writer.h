#pragma once
// Bytes of the HTTP/1.1 responses the gateway sends to clients: canned errors (always with
// Connection: close, h2o's h2o_send_error_* shape), the 101 relayed from a WebSocket upstream and
// a non-101 upstream answer relayed as-is. Pure functions returning owned strings; callable from
// any thread; never throw (OOM aborts).

#include <string>
#include <string_view>

#include "http/headers.h"
#include "http/response_parser.h"

namespace upgate {

// Standard reason phrase ("Bad Request" for 400); empty for codes without one (an empty reason
// phrase is valid, RFC 7230 §3.1.2).
std::string_view reasonPhrase(int status);

// A complete error response:
//   HTTP/1.1 <status> <reason>\r\n
//   Content-Type: text/plain; charset=utf-8\r\n
//   Content-Length: N\r\n
//   Connection: close\r\n
//   <extra headers, in order>\r\n
//   \r\n
//   <message>\n
// A status outside 100..999 becomes 500. `extra` headers come from checks and plugins, so they are
// filtered: an entry whose name is not a token or whose value has control characters is dropped,
// and so is one named Content-Type, Content-Length, Connection or Transfer-Encoding (this function
// owns the framing).
std::string errorResponse(int status, std::string_view message, const HeaderList& extra = {});
// The same with `body` sent exactly as given (a plugin's reject body).
std::string plainResponse(int status, std::string_view body, const HeaderList& extra = {});

// The 101 sent to the client after the upstream's 101 passed checkUpstreamSwitch:
//   HTTP/1.1 101 Switching Protocols\r\n
//   Upgrade: websocket\r\n
//   Connection: Upgrade\r\n
//   <upstream headers except hop-by-hop ones, ones nominated by its Connection header and
//    Content-Length (never valid on a 1xx, RFC 7230 §3.3.2)>\r\n
//   \r\n
// Sec-WebSocket-Accept/-Protocol/-Extensions and every other end-to-end header are kept in order.
std::string switchingResponse(const ResponseHead& upstream101);

// A non-101 upstream answer relayed to the client: the upstream's status and reason (the standard
// phrase if it sent none), its end-to-end headers (hop-by-hop, Connection-nominated and
// Content-Length dropped: the body is already decoded), then Content-Length of `body` (omitted
// for 1xx, 204 and 304, which have no body) and Connection: close, then `body`.
std::string relayedResponse(const ResponseHead& head, std::string_view body);

}  // namespace upgate
