#pragma once
// RFC 6455 opening handshake checks: the client's upgrade request (§4.2.1) and the upstream's 101
// answer to the request we forwarded (§4.1, client-side checks). The gateway forwards the client's
// Sec-WebSocket-Key unchanged, so the upstream's Sec-WebSocket-Accept is relayed as-is once it
// matches. Pure functions; any thread; never throw (OOM aborts).

#include <string>
#include <string_view>

#include "http/headers.h"
#include "http/request_head.h"
#include "http/response_parser.h"

namespace upgate {

// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")) through OpenSSL EVP (§4.2.2 step
// 5.4); 28 characters. Empty only if OpenSSL fails (its error queue is cleared).
std::string computeAccept(std::string_view key);

// True if `key` is base64 that decodes to exactly 16 bytes: 22 characters of the standard
// alphabet followed by "==". Non-zero unused bits in the 22nd character are tolerated, as common
// decoders do (RFC 4648 §3.5 allows either).
bool isValidKey(std::string_view key);

// True if an Upgrade header lists the token "websocket" (case-insensitive).
bool isUpgradeRequest(const RequestHead& request);

// Outcome of a check. status 0: acceptable. Otherwise the HTTP status to answer with, a short
// reason for the body and the log, and headers to add to the error response.
struct HandshakeVerdict {
  int status = 0;
  std::string reason;
  HeaderList headers;
};

// Checks a client's WebSocket upgrade request, first failure wins:
//   400 method is not GET;
//   505 HTTP major version is not 1 / 400 version below 1.1;
//   400 Host missing or repeated (RFC 7230 §5.4);
//   400 Upgrade lacks "websocket"; Connection lacks "upgrade";
//   400 Sec-WebSocket-Key missing, repeated or not 16 bytes of base64;
//   400 Sec-WebSocket-Version missing or repeated;
//   426 Sec-WebSocket-Version not 13, with header "Sec-WebSocket-Version: 13" (§4.4);
//   400 the request has a body (Transfer-Encoding, or Content-Length other than 0): the gateway
//       would otherwise forward a body it never reads, or take it for frames.
HandshakeVerdict checkClientHandshake(const RequestHead& request);

// Checks the upstream's 101 against the client request we forwarded. Any failure is 502:
// status not 101, Upgrade lacks "websocket", Connection lacks "upgrade", Sec-WebSocket-Accept
// missing, repeated or not computeAccept(client key), or a Sec-WebSocket-Protocol that is not
// exactly one of the subprotocols the client offered (compared case-sensitively). Extensions are
// not checked: they pass through to the client, which negotiated them.
HandshakeVerdict checkUpstreamSwitch(const ResponseHead& response,
                                     const RequestHead& clientRequest);

}  // namespace upgate
