#pragma once
// TLS 1.3 record protection (RFC 8446 §5) for an established connection: what the kernel's kTLS
// does, in user space, with OpenSSL's AEAD ciphers. OpenSSL runs the handshake; once it is done
// TlsStream takes the traffic secrets (from the key-log callback), frees the SSL object (about
// 13 KiB) and protects records with this class instead.
//
// What a connection keeps: two traffic secrets with their key, IV and sequence number (about
// 240 bytes in all). Cipher contexts are not kept: each thread has one for sealing and one for
// opening, re-keyed when the record belongs to another key than the last one (about 0.2 us on
// AES-NI), so an idle connection owns no OpenSSL object at all.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace upgate {

class Tls13Records {
 public:
  enum class Suite : uint8_t { Aes128GcmSha256, Aes256GcmSha384, Chacha20Poly1305Sha256 };

  static constexpr size_t kHeaderSize = 5;
  static constexpr size_t kTagSize = 16;
  static constexpr size_t kMaxPlaintext = 1 << 14;
  static constexpr size_t kMaxCiphertext = kMaxPlaintext + 256;  // §5.2: TLSCiphertext.length
  static constexpr size_t kMaxSecret = 48;                       // SHA-384

  // Record content types (§5.1) and the alerts this layer raises (§6).
  enum ContentType : uint8_t {
    kChangeCipherSpec = 20,
    kAlert = 21,
    kHandshake = 22,
    kAppData = 23
  };
  enum AlertCode : uint8_t {
    kCloseNotify = 0,
    kUnexpectedMessage = 10,
    kBadRecordMac = 20,
    kRecordOverflow = 22,
    kDecodeError = 50,
    kInternalError = 80,
  };

  // The suite of a TLS 1.3 cipher (IANA id 0x1301..0x1303), or nothing (CCM suites).
  static std::optional<Suite> suiteFor(uint16_t iana_id);
  static size_t secretSize(Suite suite) { return suite == Suite::Aes256GcmSha384 ? 48 : 32; }

  // Size of the record that starts at p (header and body), once its header is there; 0 before.
  static size_t recordSize(const uint8_t* p, size_t available);

  // read_secret / write_secret: the peer's and our application traffic secrets
  // (secretSize(suite) bytes each). write_seq: records already sent under write_secret.
  Tls13Records(Suite suite, const uint8_t* read_secret, const uint8_t* write_secret,
               uint64_t write_seq);
  ~Tls13Records();
  Tls13Records(const Tls13Records&) = delete;
  Tls13Records& operator=(const Tls13Records&) = delete;
  // False if OpenSSL could not derive the keys: the connection must not use this object.
  bool ok() const { return ok_; }

  struct Opened {
    uint8_t type = 0;  // inner content type
    size_t size = 0;   // plaintext bytes written to `out`
  };
  // Opens one whole record (recordSize() bytes) into `out` (at least kMaxCiphertext bytes).
  // Returns 0, or the alert that must end the connection (bad_record_mac, record_overflow,
  // unexpected_message).
  uint8_t open(const uint8_t* record, size_t size, uint8_t* out, Opened& opened);
  // Appends one protected record holding `size` (<= kMaxPlaintext) bytes of `type` to out.
  // False only if OpenSSL failed (out is then as it was).
  bool seal(uint8_t type, const uint8_t* data, size_t size, std::string& out);
  // True if `record` (whole) was sealed under the write key at sequence `seq`: confirms where
  // the sequence stood when the connection was handed over.
  bool sealedAt(const uint8_t* record, size_t size, uint64_t seq);

  // KeyUpdate (§4.6.3, §7.2): the next generation of the read or write traffic secret.
  bool nextReadKey();
  bool nextWriteKey();
  // The write key has protected enough records that it should be replaced (§5.5: AES-GCM is
  // good for 2^24.5 full records; upgate updates after 2^24 for every suite).
  bool writeKeyWorn() const { return write_.seq >= (uint64_t{1} << 24); }

  // HKDF-Expand-Label (§7.1) with the suite's hash; exposed for tests.
  static bool expandLabel(Suite suite, const uint8_t* secret, const char* label, uint8_t* out,
                          size_t out_size);

 private:
  struct Direction {
    uint8_t secret[kMaxSecret];
    uint8_t key[32];
    uint8_t iv[12];
    uint64_t seq = 0;
    uint64_t key_id = 0;  // process-unique: which key a thread's cipher context holds
  };
  bool derive(Direction& d);
  bool next(Direction& d);
  // Nonce (§5.3): the IV XOR the 64-bit sequence number, left-padded.
  static void nonce(const Direction& d, uint64_t seq, uint8_t out[12]);
  bool openWith(Direction& d, uint64_t seq, const uint8_t* record, size_t size, uint8_t* out,
                size_t& plain_size);

  Suite suite_;
  bool ok_ = false;  // keys derived
  Direction read_;
  Direction write_;
};

}  // namespace upgate
