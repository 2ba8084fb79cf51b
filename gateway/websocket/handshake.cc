#include "websocket/handshake.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <utility>

namespace upgate {

namespace {

constexpr std::string_view kAcceptGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

bool isBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

HandshakeVerdict verdict(int status, std::string reason, HeaderList headers = {}) {
  HandshakeVerdict v;
  v.status = status;
  v.reason = std::move(reason);
  v.headers = std::move(headers);
  return v;
}

HandshakeVerdict badGateway(std::string reason) {
  return verdict(502, std::move(reason));
}

}  // namespace

std::string computeAccept(std::string_view key) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = ctx != nullptr && EVP_DigestInit_ex(ctx, EVP_sha1(), nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, key.data(), key.size()) == 1 &&
                  EVP_DigestUpdate(ctx, kAcceptGuid.data(), kAcceptGuid.size()) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest, &digest_len) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok || digest_len != 20) {
    ERR_clear_error();  // leave no stale error for the next TLS call on this thread
    return std::string();
  }
  // EVP_EncodeBlock writes 4 * ceil(20 / 3) = 28 characters plus a NUL.
  unsigned char encoded[32];
  const int n = EVP_EncodeBlock(encoded, digest, static_cast<int>(digest_len));
  return std::string(reinterpret_cast<const char*>(encoded), static_cast<size_t>(n));
}

bool isValidKey(std::string_view key) {
  // 16 bytes = 128 bits: 21 full sextets plus 2 bits in the 22nd character, then "==".
  if (key.size() != 24 || key[22] != '=' || key[23] != '=') {
    return false;
  }
  for (size_t i = 0; i < 22; ++i) {
    if (!isBase64Char(key[i])) {
      return false;
    }
  }
  return true;
}

bool isUpgradeRequest(const RequestHead& request) {
  return headerHasToken(request.headers, "Upgrade", "websocket");
}

HandshakeVerdict checkClientHandshake(const RequestHead& request) {
  const HeaderList& h = request.headers;
  if (request.method != "GET") {
    return verdict(400, "WebSocket handshake must use GET, not " + request.method);
  }
  if (request.http_major != 1) {
    return verdict(505, "WebSocket handshake requires HTTP/1.1");
  }
  if (request.http_minor < 1) {
    return verdict(400, "WebSocket handshake requires HTTP/1.1");
  }
  const size_t hosts = countHeader(h, "Host");
  if (hosts == 0) {
    return verdict(400, "missing Host header");
  }
  if (hosts > 1) {
    return verdict(400, "more than one Host header");
  }
  if (!isUpgradeRequest(request)) {
    return verdict(400, "Upgrade header must include \"websocket\"");
  }
  if (!headerHasToken(h, "Connection", "upgrade")) {
    return verdict(400, "Connection header must include \"Upgrade\"");
  }
  const std::string* key = findHeader(h, "Sec-WebSocket-Key");
  if (key == nullptr) {
    return verdict(400, "missing Sec-WebSocket-Key header");
  }
  if (countHeader(h, "Sec-WebSocket-Key") > 1) {
    return verdict(400, "more than one Sec-WebSocket-Key header");
  }
  if (!isValidKey(*key)) {
    return verdict(400, "Sec-WebSocket-Key must be 16 bytes base64");
  }
  const std::string* version = findHeader(h, "Sec-WebSocket-Version");
  if (version == nullptr) {
    return verdict(400, "missing Sec-WebSocket-Version header");
  }
  if (countHeader(h, "Sec-WebSocket-Version") > 1) {
    return verdict(400, "more than one Sec-WebSocket-Version header");
  }
  if (*version != "13") {
    return verdict(426, "unsupported Sec-WebSocket-Version (only 13 is supported)",
                   HeaderList{Header{"Sec-WebSocket-Version", "13"}});
  }
  const std::string* length = findHeader(h, "Content-Length");
  if (countHeader(h, "Transfer-Encoding") > 0 || (length != nullptr && *length != "0")) {
    return verdict(400, "WebSocket handshake request must not have a body");
  }
  return HandshakeVerdict();
}

HandshakeVerdict checkUpstreamSwitch(const ResponseHead& response,
                                     const RequestHead& clientRequest) {
  const HeaderList& h = response.headers;
  if (response.status != 101) {
    return badGateway("upstream answered " + std::to_string(response.status) + " instead of 101");
  }
  if (!headerHasToken(h, "Upgrade", "websocket")) {
    return badGateway("upstream 101 lacks \"Upgrade: websocket\"");
  }
  if (!headerHasToken(h, "Connection", "upgrade")) {
    return badGateway("upstream 101 lacks \"Connection: Upgrade\"");
  }
  const std::string* accept = findHeader(h, "Sec-WebSocket-Accept");
  if (accept == nullptr) {
    return badGateway("upstream 101 lacks Sec-WebSocket-Accept");
  }
  if (countHeader(h, "Sec-WebSocket-Accept") > 1) {
    return badGateway("upstream 101 has more than one Sec-WebSocket-Accept");
  }
  const std::string* key = findHeader(clientRequest.headers, "Sec-WebSocket-Key");
  if (key == nullptr || *accept != computeAccept(*key)) {
    return badGateway("upstream Sec-WebSocket-Accept does not match Sec-WebSocket-Key");
  }
  if (countHeader(h, "Sec-WebSocket-Protocol") > 1) {
    return badGateway("upstream 101 has more than one Sec-WebSocket-Protocol");
  }
  if (const std::string* chosen = findHeader(h, "Sec-WebSocket-Protocol"); chosen != nullptr) {
    // §4.1: the server's value must be exactly one of the client's offers (names are
    // case-sensitive strings, so no iequals here).
    bool offered = false;
    for (const Header& c : clientRequest.headers) {
      if (!iequals(c.name, "Sec-WebSocket-Protocol")) {
        continue;
      }
      for (std::string_view p : splitTokens(c.value)) {
        offered = offered || p == *chosen;
      }
    }
    if (!offered) {
      return badGateway("upstream chose a subprotocol the client did not offer");
    }
  }
  return HandshakeVerdict();
}

}  // namespace upgate
