#pragma once
// Small text and handshake helpers shared by the load generator and the echo server.

#include <openssl/evp.h>

#include <string>
#include <vector>

namespace bench {

inline std::string lower(std::string s) {
  for (char& ch : s) {
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  }
  return s;
}

inline std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  size_t e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

inline std::string base64(const unsigned char* p, size_t n) {
  std::vector<unsigned char> out(4 * ((n + 2) / 3) + 1);
  int len = EVP_EncodeBlock(out.data(), p, static_cast<int>(n));
  return std::string(reinterpret_cast<char*>(out.data()), static_cast<size_t>(len));
}

// Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2).
inline std::string websocketAccept(const std::string& key) {
  std::string in = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(in.data(), in.size(), md, &md_len, EVP_sha1(), nullptr);
  return base64(md, md_len);
}

}  // namespace bench
