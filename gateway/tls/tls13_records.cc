#include "tls/tls13_records.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <atomic>
#include <cstring>

namespace upgate {
namespace {

struct SuiteInfo {
  const char* cipher;
  const char* digest;
  size_t key_size;
};

const SuiteInfo& infoOf(Tls13Records::Suite suite) {
  static const SuiteInfo kInfo[] = {
      {"AES-128-GCM", "SHA256", 16},
      {"AES-256-GCM", "SHA384", 32},
      {"ChaCha20-Poly1305", "SHA256", 32},
  };
  return kInfo[static_cast<size_t>(suite)];
}

// Fetched once (OpenSSL 3 providers): implicit fetches on every record would cost a lookup.
EVP_CIPHER* cipherOf(Tls13Records::Suite suite) {
  static EVP_CIPHER* const kCiphers[] = {
      EVP_CIPHER_fetch(nullptr, infoOf(Tls13Records::Suite::Aes128GcmSha256).cipher, nullptr),
      EVP_CIPHER_fetch(nullptr, infoOf(Tls13Records::Suite::Aes256GcmSha384).cipher, nullptr),
      EVP_CIPHER_fetch(nullptr, infoOf(Tls13Records::Suite::Chacha20Poly1305Sha256).cipher,
                       nullptr),
  };
  return kCiphers[static_cast<size_t>(suite)];
}

std::atomic<uint64_t> g_next_key_id{1};

// One cipher context per thread and direction of use, holding the last key it was given.
struct ThreadCipher {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  uint64_t key_id = 0;
  ThreadCipher() = default;
  ThreadCipher(const ThreadCipher&) = delete;
  ThreadCipher& operator=(const ThreadCipher&) = delete;
  ~ThreadCipher() { EVP_CIPHER_CTX_free(ctx); }
};
thread_local ThreadCipher t_seal;
thread_local ThreadCipher t_open;

// HKDF-Expand contexts per thread, one per hash, with digest and mode set once: naming the
// digest on every derivation would fetch it again each time (a third of the cost).
struct ThreadHkdf {
  EVP_KDF_CTX* ctx[2] = {nullptr, nullptr};  // SHA-256, SHA-384
  ThreadHkdf() = default;
  ThreadHkdf(const ThreadHkdf&) = delete;
  ThreadHkdf& operator=(const ThreadHkdf&) = delete;
  ~ThreadHkdf() {
    for (EVP_KDF_CTX* c : ctx) EVP_KDF_CTX_free(c);
  }
};
thread_local ThreadHkdf t_hkdf;

EVP_KDF_CTX* hkdfOf(Tls13Records::Suite suite) {
  size_t i = suite == Tls13Records::Suite::Aes256GcmSha384 ? 1 : 0;
  if (t_hkdf.ctx[i]) return t_hkdf.ctx[i];
  static EVP_KDF* const kHkdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* c = kHkdf ? EVP_KDF_CTX_new(kHkdf) : nullptr;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>(infoOf(suite).digest), 0),
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_end(),
  };
  if (c && EVP_KDF_CTX_set_params(c, params) != 1) {
    EVP_KDF_CTX_free(c);
    c = nullptr;
  }
  t_hkdf.ctx[i] = c;
  return c;
}

}  // namespace

std::optional<Tls13Records::Suite> Tls13Records::suiteFor(uint16_t iana_id) {
  switch (iana_id) {
    case 0x1301:
      return Suite::Aes128GcmSha256;
    case 0x1302:
      return Suite::Aes256GcmSha384;
    case 0x1303:
      return Suite::Chacha20Poly1305Sha256;
    default:
      return std::nullopt;
  }
}

size_t Tls13Records::recordSize(const uint8_t* p, size_t available) {
  if (available < kHeaderSize) return 0;
  return kHeaderSize + (size_t{p[3]} << 8 | p[4]);
}

bool Tls13Records::expandLabel(Suite suite, const uint8_t* secret, const char* label, uint8_t* out,
                               size_t out_size) {
  // struct { uint16 length; opaque label<7..255> = "tls13 " + Label; opaque context<0..255>; }
  uint8_t info[2 + 1 + 255 + 1];
  size_t label_size = 6 + std::strlen(label);
  if (label_size > 255 || out_size > 0xffff) return false;
  info[0] = static_cast<uint8_t>(out_size >> 8);
  info[1] = static_cast<uint8_t>(out_size);
  info[2] = static_cast<uint8_t>(label_size);
  std::memcpy(info + 3, "tls13 ", 6);
  std::memcpy(info + 9, label, label_size - 6);
  info[3 + label_size] = 0;  // empty context
  size_t info_size = 3 + label_size + 1;

  EVP_KDF_CTX* kctx = hkdfOf(suite);
  if (kctx == nullptr) return false;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret),
                                        secretSize(suite)),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, info_size),
      OSSL_PARAM_construct_end(),
  };
  bool ok = EVP_KDF_derive(kctx, out, out_size, params) == 1;
  // The context keeps its key until the next derivation: overwrite it now.
  static const uint8_t kZero[kMaxSecret] = {};
  OSSL_PARAM scrub[] = {
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(kZero),
                                        secretSize(suite)),
      OSSL_PARAM_construct_end(),
  };
  EVP_KDF_CTX_set_params(kctx, scrub);
  return ok;
}

Tls13Records::Tls13Records(Suite suite, const uint8_t* read_secret, const uint8_t* write_secret,
                           uint64_t write_seq)
    : suite_(suite) {
  size_t n = secretSize(suite);
  std::memcpy(read_.secret, read_secret, n);
  std::memcpy(write_.secret, write_secret, n);
  ok_ = cipherOf(suite) != nullptr && derive(read_) && derive(write_);
  write_.seq = write_seq;
}

Tls13Records::~Tls13Records() {
  // The thread's contexts must not keep this connection's key schedule after it is gone.
  for (ThreadCipher* tc : {&t_seal, &t_open}) {
    if (tc->ctx && (tc->key_id == read_.key_id || tc->key_id == write_.key_id)) {
      EVP_CIPHER_CTX_reset(tc->ctx);
      tc->key_id = 0;
    }
  }
  OPENSSL_cleanse(&read_, sizeof(read_));
  OPENSSL_cleanse(&write_, sizeof(write_));
}

bool Tls13Records::derive(Direction& d) {
  d.seq = 0;
  d.key_id = g_next_key_id.fetch_add(1, std::memory_order_relaxed);
  return expandLabel(suite_, d.secret, "key", d.key, infoOf(suite_).key_size) &&
         expandLabel(suite_, d.secret, "iv", d.iv, sizeof(d.iv));
}

bool Tls13Records::next(Direction& d) {
  uint8_t secret[kMaxSecret];
  size_t n = secretSize(suite_);
  bool ok = expandLabel(suite_, d.secret, "traffic upd", secret, n);
  if (ok) std::memcpy(d.secret, secret, n);
  OPENSSL_cleanse(secret, sizeof(secret));
  return ok && derive(d);
}

bool Tls13Records::nextReadKey() {
  return next(read_);
}

bool Tls13Records::nextWriteKey() {
  return next(write_);
}

void Tls13Records::nonce(const Direction& d, uint64_t seq, uint8_t out[12]) {
  std::memcpy(out, d.iv, 12);
  for (int i = 0; i < 8; ++i) out[11 - i] ^= static_cast<uint8_t>(seq >> (8 * i));
}

namespace {

// Loads key (when the thread's context holds another) and nonce into `tc`.
bool begin(ThreadCipher& tc, EVP_CIPHER* cipher, const uint8_t* key, uint64_t key_id,
           const uint8_t nonce[12], int enc) {
  if (tc.ctx == nullptr) return false;
  if (tc.key_id == key_id)
    return EVP_CipherInit_ex2(tc.ctx, nullptr, nullptr, nonce, enc, nullptr) == 1;
  tc.key_id = 0;
  if (EVP_CipherInit_ex2(tc.ctx, cipher, key, nonce, enc, nullptr) != 1) return false;
  tc.key_id = key_id;
  return true;
}

}  // namespace

bool Tls13Records::seal(uint8_t type, const uint8_t* data, size_t size, std::string& out) {
  if (size > kMaxPlaintext) return false;
  size_t body = size + 1 + kTagSize;
  size_t at = out.size();
  out.resize(at + kHeaderSize + body);
  auto* p = reinterpret_cast<uint8_t*>(&out[at]);
  p[0] = kAppData;  // the outer type of every protected record (§5.2)
  p[1] = 3;
  p[2] = 3;
  p[3] = static_cast<uint8_t>(body >> 8);
  p[4] = static_cast<uint8_t>(body);
  uint8_t iv[12];
  nonce(write_, write_.seq, iv);
  EVP_CIPHER_CTX* ctx = t_seal.ctx;
  int n = 0;
  int m = 0;
  int k = 0;
  int f = 0;
  bool ok =
      begin(t_seal, cipherOf(suite_), write_.key, write_.key_id, iv, 1) &&
      EVP_CipherUpdate(ctx, nullptr, &n, p, kHeaderSize) == 1 &&
      EVP_CipherUpdate(ctx, p + kHeaderSize, &m, data, static_cast<int>(size)) == 1 &&
      EVP_CipherUpdate(ctx, p + kHeaderSize + m, &k, &type, 1) == 1 &&
      EVP_CipherFinal_ex(ctx, p + kHeaderSize + m + k, &f) == 1 &&
      static_cast<size_t>(m + k + f) == size + 1 &&
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, kTagSize, p + kHeaderSize + size + 1) == 1;
  if (!ok) {
    t_seal.key_id = 0;
    out.resize(at);
    return false;
  }
  ++write_.seq;
  return true;
}

bool Tls13Records::openWith(Direction& d, uint64_t seq, const uint8_t* record, size_t size,
                            uint8_t* out, size_t& plain_size) {
  size_t body = size - kHeaderSize;
  if (size < kHeaderSize || body < kTagSize) return false;
  size_t cipher_size = body - kTagSize;
  uint8_t iv[12];
  nonce(d, seq, iv);
  uint8_t tag[kTagSize];
  std::memcpy(tag, record + size - kTagSize, kTagSize);
  EVP_CIPHER_CTX* ctx = t_open.ctx;
  int n = 0;
  int m = 0;
  int f = 0;
  bool ok =
      begin(t_open, cipherOf(suite_), d.key, d.key_id, iv, 0) &&
      EVP_CipherUpdate(ctx, nullptr, &n, record, kHeaderSize) == 1 &&
      EVP_CipherUpdate(ctx, out, &m, record + kHeaderSize, static_cast<int>(cipher_size)) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, kTagSize, tag) == 1 &&
      EVP_CipherFinal_ex(ctx, out + m, &f) == 1;
  if (!ok) {
    t_open.key_id = 0;  // a failed tag check leaves the context in no known state
    return false;
  }
  plain_size = static_cast<size_t>(m + f);
  return true;
}

uint8_t Tls13Records::open(const uint8_t* record, size_t size, uint8_t* out, Opened& opened) {
  // After the handshake every record is protected, so its outer type is application_data; a
  // change_cipher_spec is allowed only before the peer's Finished (§5).
  if (record[0] != kAppData) return kUnexpectedMessage;
  if (size - kHeaderSize > kMaxCiphertext) return kRecordOverflow;
  size_t plain = 0;
  if (!openWith(read_, read_.seq, record, size, out, plain)) return kBadRecordMac;
  ++read_.seq;
  // §5.4: TLSInnerPlaintext (content, type and padding) is at most 2^14 + 1 bytes.
  if (plain > kMaxPlaintext + 1) return kRecordOverflow;
  while (plain > 0 && out[plain - 1] == 0) --plain;  // padding (§5.4)
  if (plain == 0) return kUnexpectedMessage;         // no content type: all padding
  opened.type = out[plain - 1];
  opened.size = plain - 1;
  return 0;
}

bool Tls13Records::sealedAt(const uint8_t* record, size_t size, uint64_t seq) {
  if (size < kHeaderSize || size - kHeaderSize > kMaxCiphertext) return false;
  uint8_t out[kMaxCiphertext];
  size_t plain = 0;
  bool ok = openWith(write_, seq, record, size, out, plain);
  OPENSSL_cleanse(out, plain);
  return ok;
}

}  // namespace upgate
