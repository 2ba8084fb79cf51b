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

// OpenSSL 3 looks the algorithm up in its provider tables on every EVP_sha1() init (an
// implicit fetch, a lock and a hash lookup): fetch SHA-1 once for the process, and keep one
// digest context per thread (the workers' loops), reset by each init instead of reallocated.
const EVP_MD* sha1() {
  static const EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  return md;
}

EVP_MD_CTX* threadDigestContext() {
  struct Holder {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Holder() { EVP_MD_CTX_free(ctx); }
  };
  thread_local Holder holder;
  return holder.ctx;
}

// "Upgrade: websocket" and "Connection: upgrade", looked for in both halves of the handshake.
struct UpgradeTokens {
  bool upgrade = false, connection = false;

  // For a header whose name is 7 or 10 bytes long (the callers switch on the length).
  void see(const Header& x) {
    if (x.name.size() == 7) {
      upgrade = upgrade || (iequals(x.name, "Upgrade") && valueHasToken(x.value, "websocket"));
    } else {
      connection =
          connection || (iequals(x.name, "Connection") && valueHasToken(x.value, "upgrade"));
    }
  }
};

}  // namespace

std::string computeAccept(std::string_view key) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  const EVP_MD* md = sha1();
  EVP_MD_CTX* ctx = threadDigestContext();
  const bool ok = md != nullptr && ctx != nullptr && EVP_DigestInit_ex2(ctx, md, nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, key.data(), key.size()) == 1 &&
                  EVP_DigestUpdate(ctx, kAcceptGuid.data(), kAcceptGuid.size()) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest, &digest_len) == 1;
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
  if (request.method != "GET") {
    return verdict(400, "WebSocket handshake must use GET, not " + request.method);
  }
  if (request.http_major != 1) {
    return verdict(505, "WebSocket handshake requires HTTP/1.1");
  }
  if (request.http_minor < 1) {
    return verdict(400, "WebSocket handshake requires HTTP/1.1");
  }
  // One pass over the headers; names are told apart by length before any byte is compared.
  size_t hosts = 0, keys = 0, versions = 0, transfer_encodings = 0;
  UpgradeTokens tokens;
  const std::string* key = nullptr;
  const std::string* version = nullptr;
  const std::string* length = nullptr;
  for (const Header& x : request.headers) {
    switch (x.name.size()) {
      case 4:
        hosts += iequals(x.name, "Host");
        break;
      case 7:
      case 10:
        tokens.see(x);
        break;
      case 14:
        if (length == nullptr && iequals(x.name, "Content-Length")) length = &x.value;
        break;
      case 17:
        if (iequals(x.name, "Sec-WebSocket-Key")) {
          if (keys++ == 0) key = &x.value;
        } else {
          transfer_encodings += iequals(x.name, "Transfer-Encoding");
        }
        break;
      case 21:
        if (iequals(x.name, "Sec-WebSocket-Version") && versions++ == 0) version = &x.value;
        break;
      default:
        break;
    }
  }
  if (hosts == 0) {
    return verdict(400, "missing Host header");
  }
  if (hosts > 1) {
    return verdict(400, "more than one Host header");
  }
  if (!tokens.upgrade) {
    return verdict(400, "Upgrade header must include \"websocket\"");
  }
  if (!tokens.connection) {
    return verdict(400, "Connection header must include \"Upgrade\"");
  }
  if (key == nullptr) {
    return verdict(400, "missing Sec-WebSocket-Key header");
  }
  if (keys > 1) {
    return verdict(400, "more than one Sec-WebSocket-Key header");
  }
  if (!isValidKey(*key)) {
    return verdict(400, "Sec-WebSocket-Key must be 16 bytes base64");
  }
  if (version == nullptr) {
    return verdict(400, "missing Sec-WebSocket-Version header");
  }
  if (versions > 1) {
    return verdict(400, "more than one Sec-WebSocket-Version header");
  }
  if (*version != "13") {
    return verdict(426, "unsupported Sec-WebSocket-Version (only 13 is supported)",
                   HeaderList{Header{"Sec-WebSocket-Version", "13"}});
  }
  if (transfer_encodings > 0 || (length != nullptr && *length != "0")) {
    return verdict(400, "WebSocket handshake request must not have a body");
  }
  return HandshakeVerdict();
}

HandshakeVerdict checkUpstreamSwitch(const ResponseHead& response,
                                     const RequestHead& clientRequest) {
  if (response.status != 101) {
    return badGateway("upstream answered " + std::to_string(response.status) + " instead of 101");
  }
  size_t accepts = 0, protocols = 0;
  UpgradeTokens tokens;
  const std::string* accept = nullptr;
  const std::string* chosen = nullptr;
  for (const Header& x : response.headers) {
    switch (x.name.size()) {
      case 7:
      case 10:
        tokens.see(x);
        break;
      case 20:
        if (iequals(x.name, "Sec-WebSocket-Accept") && accepts++ == 0) accept = &x.value;
        break;
      case 22:
        if (iequals(x.name, "Sec-WebSocket-Protocol") && protocols++ == 0) chosen = &x.value;
        break;
      default:
        break;
    }
  }
  if (!tokens.upgrade) {
    return badGateway("upstream 101 lacks \"Upgrade: websocket\"");
  }
  if (!tokens.connection) {
    return badGateway("upstream 101 lacks \"Connection: Upgrade\"");
  }
  if (accept == nullptr) {
    return badGateway("upstream 101 lacks Sec-WebSocket-Accept");
  }
  if (accepts > 1) {
    return badGateway("upstream 101 has more than one Sec-WebSocket-Accept");
  }
  const std::string* key = findHeader(clientRequest.headers, "Sec-WebSocket-Key");
  if (key == nullptr || *accept != computeAccept(*key)) {
    return badGateway("upstream Sec-WebSocket-Accept does not match Sec-WebSocket-Key");
  }
  if (protocols > 1) {
    return badGateway("upstream 101 has more than one Sec-WebSocket-Protocol");
  }
  if (chosen != nullptr) {
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
