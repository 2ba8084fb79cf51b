// Tls13Records against OpenSSL's own TLS 1.3 client: a real handshake in memory, then every
// record the client writes must open, and every record upgate seals must read.
#include "tls/tls13_records.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tls/tls_context.h"

using namespace upgate;

namespace {

using Bytes = std::vector<uint8_t>;

// Secrets from the server's key log, by label.
std::map<std::string, Bytes>& keyLog() {
  static std::map<std::string, Bytes> log;
  return log;
}

void logKey(const SSL*, const char* line) {
  std::string text(line);
  size_t a = text.find(' ');
  size_t b = text.find(' ', a + 1);
  Bytes secret;
  for (size_t i = b + 1; i + 1 < text.size(); i += 2)
    secret.push_back(static_cast<uint8_t>(std::stoi(text.substr(i, 2), nullptr, 16)));
  keyLog()[text.substr(0, a)] = secret;
}

std::string drain(BIO* bio) {
  std::string out;
  char buf[4096];
  int n;
  while ((n = BIO_read(bio, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

// An OpenSSL client and server joined by memory BIOs, handshaken; then the server side is
// replaced by Tls13Records built from the server's logged secrets (no tickets: write seq 0).
struct Handshaken {
  std::shared_ptr<const TlsContext> server_ctx;
  SSL_CTX* client_ctx = nullptr;
  SSL* server = nullptr;
  SSL* client = nullptr;
  BIO* c_in = BIO_new(BIO_s_mem());   // what the client reads
  BIO* c_out = BIO_new(BIO_s_mem());  // what the client wrote
  BIO* s_in = BIO_new(BIO_s_mem());
  BIO* s_out = BIO_new(BIO_s_mem());
  std::unique_ptr<Tls13Records> records;
  Tls13Records::Suite suite{};

  explicit Handshaken(const char* ciphersuite) {
    keyLog().clear();
    ListenerTlsConfig cfg;  // self-signed certificate
    cfg.session_tickets = false;
    cfg.record_offload = false;
    server_ctx = TlsContext::forListener(cfg, "test");
    server = server_ctx->newSsl();
    SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(server), logKey);
    SSL_set_bio(server, s_in, s_out);
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(client_ctx, TLS1_3_VERSION);
    REQUIRE(SSL_CTX_set_ciphersuites(client_ctx, ciphersuite) == 1);
    client = SSL_new(client_ctx);
    SSL_set_bio(client, c_in, c_out);
    SSL_set_connect_state(client);
    for (int i = 0; i < 10 && !(SSL_is_init_finished(client) && SSL_is_init_finished(server));
         ++i) {
      SSL_do_handshake(client);
      std::string c = drain(c_out);
      BIO_write(s_in, c.data(), static_cast<int>(c.size()));
      SSL_do_handshake(server);
      std::string s = drain(s_out);
      BIO_write(c_in, s.data(), static_cast<int>(s.size()));
    }
    REQUIRE(SSL_is_init_finished(server));
    REQUIRE(SSL_is_init_finished(client));
    auto found = Tls13Records::suiteFor(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(server)));
    REQUIRE(found);
    suite = *found;
    Bytes cs = keyLog()["CLIENT_TRAFFIC_SECRET_0"];
    Bytes ss = keyLog()["SERVER_TRAFFIC_SECRET_0"];
    REQUIRE(cs.size() == Tls13Records::secretSize(suite));
    REQUIRE(ss.size() == cs.size());
    records = std::make_unique<Tls13Records>(suite, cs.data(), ss.data(), 0);
    REQUIRE(records->ok());
  }
  ~Handshaken() {
    SSL_free(client);
    SSL_free(server);
    SSL_CTX_free(client_ctx);
    ERR_clear_error();
  }

  // Client -> records: every record the client wrote, opened.
  std::vector<std::pair<uint8_t, std::string>> openAll(uint8_t* alert_out = nullptr) {
    std::string wire = drain(c_out);
    std::vector<std::pair<uint8_t, std::string>> got;
    auto* p = reinterpret_cast<const uint8_t*>(wire.data());
    size_t left = wire.size();
    uint8_t plain[Tls13Records::kMaxCiphertext];
    while (left > 0) {
      size_t size = Tls13Records::recordSize(p, left);
      REQUIRE(size > 0);
      REQUIRE(size <= left);
      Tls13Records::Opened o;
      uint8_t alert = records->open(p, size, plain, o);
      if (alert_out) *alert_out = alert;
      if (alert != 0) break;
      got.emplace_back(o.type, std::string(reinterpret_cast<char*>(plain), o.size));
      p += size;
      left -= size;
    }
    return got;
  }
  // Records -> client.
  void sealToClient(uint8_t type, const std::string& data) {
    std::string wire;
    REQUIRE(records->seal(type, reinterpret_cast<const uint8_t*>(data.data()), data.size(), wire));
    BIO_write(c_in, wire.data(), static_cast<int>(wire.size()));
  }
  std::string clientRead() {
    std::string out;
    char buf[20000];
    int n;
    while ((n = SSL_read(client, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    return out;
  }
};

}  // namespace

TEST_CASE("records open what OpenSSL's client seals and seal what it opens, every suite") {
  for (const char* suite :
       {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}) {
    INFO(suite);
    Handshaken h(suite);
    REQUIRE(SSL_write(h.client, "hello", 5) == 5);
    std::string big(40000, 'x');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
    REQUIRE(SSL_write(h.client, big.data(), static_cast<int>(big.size())) ==
            static_cast<int>(big.size()));
    auto got = h.openAll();
    REQUIRE(got.size() == 4);  // "hello", then 40000 bytes in records of at most 2^14
    CHECK(got[0] == std::make_pair(uint8_t{Tls13Records::kAppData}, std::string("hello")));
    std::string joined = got[1].second + got[2].second + got[3].second;
    CHECK(joined == big);
    CHECK(got[1].second.size() == Tls13Records::kMaxPlaintext);

    h.sealToClient(Tls13Records::kAppData, "world");
    h.sealToClient(Tls13Records::kAppData, std::string(Tls13Records::kMaxPlaintext, 'z'));
    CHECK(h.clientRead() == "world" + std::string(Tls13Records::kMaxPlaintext, 'z'));
  }
}

TEST_CASE("records strip the padding OpenSSL adds") {
  Handshaken h("TLS_AES_128_GCM_SHA256");
  REQUIRE(SSL_set_block_padding(h.client, 512) == 1);
  REQUIRE(SSL_write(h.client, "padded", 6) == 6);
  std::string wire = drain(h.c_out);
  CHECK(wire.size() >= 5 + 512);  // padded to a whole block, far beyond 6 bytes + type + tag
  BIO_write(h.c_out, wire.data(), static_cast<int>(wire.size()));
  auto got = h.openAll();
  REQUIRE(got.size() == 1);
  CHECK(got[0].second == "padded");
}

TEST_CASE("records follow a KeyUpdate both ways") {
  Handshaken h("TLS_AES_256_GCM_SHA384");
  REQUIRE(SSL_key_update(h.client, SSL_KEY_UPDATE_REQUESTED) == 1);
  REQUIRE(SSL_write(h.client, "after", 5) == 5);  // sends the KeyUpdate first, then data
  std::string wire = drain(h.c_out);
  auto* p = reinterpret_cast<const uint8_t*>(wire.data());
  size_t first = Tls13Records::recordSize(p, wire.size());
  uint8_t plain[Tls13Records::kMaxCiphertext];
  Tls13Records::Opened o;
  REQUIRE(h.records->open(p, first, plain, o) == 0);
  REQUIRE(o.type == Tls13Records::kHandshake);
  REQUIRE(o.size == 5);
  CHECK(plain[0] == 24);  // key_update
  CHECK(plain[4] == 1);   // update_requested
  // Under the old key the next record does not open; under the next one it does.
  CHECK(h.records->open(p + first, wire.size() - first, plain, o) == Tls13Records::kBadRecordMac);
  REQUIRE(h.records->nextReadKey());
  REQUIRE(h.records->open(p + first, wire.size() - first, plain, o) == 0);
  CHECK(std::string(reinterpret_cast<char*>(plain), o.size) == "after");

  // Our answer: KeyUpdate(update_not_requested) under the old write key, then the new key.
  h.sealToClient(Tls13Records::kHandshake, std::string("\x18\x00\x00\x01\x00", 5));
  REQUIRE(h.records->nextWriteKey());
  h.sealToClient(Tls13Records::kAppData, "new key");
  CHECK(h.clientRead() == "new key");
}

TEST_CASE("records refuse forged, oversized and mistyped records with the right alert") {
  Handshaken h("TLS_AES_128_GCM_SHA256");
  uint8_t plain[Tls13Records::kMaxCiphertext];
  Tls13Records::Opened o;

  SECTION("a flipped bit fails authentication") {
    REQUIRE(SSL_write(h.client, "hello", 5) == 5);
    std::string wire = drain(h.c_out);
    wire[7] ^= 1;
    CHECK(h.records->open(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), plain, o) ==
          Tls13Records::kBadRecordMac);
  }
  SECTION("a record seen twice fails (the sequence number moved on)") {
    REQUIRE(SSL_write(h.client, "hello", 5) == 5);
    std::string wire = drain(h.c_out);
    auto* p = reinterpret_cast<const uint8_t*>(wire.data());
    CHECK(h.records->open(p, wire.size(), plain, o) == 0);
    CHECK(h.records->open(p, wire.size(), plain, o) == Tls13Records::kBadRecordMac);
  }
  SECTION("an outer type other than application_data after the handshake") {
    const uint8_t ccs[] = {20, 3, 3, 0, 1, 1};
    CHECK(h.records->open(ccs, sizeof(ccs), plain, o) == Tls13Records::kUnexpectedMessage);
  }
  SECTION("a body longer than 2^14 + 256") {
    std::string wire(5 + Tls13Records::kMaxCiphertext + 1, '\0');
    wire[0] = 23;
    wire[1] = wire[2] = 3;
    size_t body = Tls13Records::kMaxCiphertext + 1;
    wire[3] = static_cast<char>(body >> 8);
    wire[4] = static_cast<char>(body & 0xff);
    CHECK(h.records->open(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), plain, o) ==
          Tls13Records::kRecordOverflow);
  }
  SECTION("a record with no content type (all padding)") {
    // The client's mirror: the same secrets the other way round seal what OpenSSL would not.
    Bytes cs = keyLog()["CLIENT_TRAFFIC_SECRET_0"];
    Bytes ss = keyLog()["SERVER_TRAFFIC_SECRET_0"];
    Tls13Records mirror(h.suite, ss.data(), cs.data(), 0);
    std::string wire;
    REQUIRE(mirror.seal(0, nullptr, 0, wire));  // inner plaintext: a single zero byte
    CHECK(h.records->open(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), plain, o) ==
          Tls13Records::kUnexpectedMessage);
  }
  SECTION("a body shorter than the tag") {
    const uint8_t tiny[] = {23, 3, 3, 0, 3, 1, 2, 3};
    CHECK(h.records->open(tiny, sizeof(tiny), plain, o) == Tls13Records::kBadRecordMac);
  }
}

TEST_CASE("records carry alerts: the client's close_notify opens as one") {
  Handshaken h("TLS_CHACHA20_POLY1305_SHA256");
  SSL_shutdown(h.client);
  auto got = h.openAll();
  REQUIRE(got.size() == 1);
  CHECK(got[0].first == Tls13Records::kAlert);
  CHECK(got[0].second == std::string("\x01\x00", 2));  // warning, close_notify
}

TEST_CASE("sealedAt confirms the sequence a record was sealed at, and no other") {
  Handshaken h("TLS_AES_128_GCM_SHA256");
  std::string wire;
  auto* data = reinterpret_cast<const uint8_t*>("abc");
  REQUIRE(h.records->seal(Tls13Records::kAppData, data, 3, wire));
  size_t first = wire.size();
  REQUIRE(h.records->seal(Tls13Records::kAppData, data, 3, wire));
  auto* p = reinterpret_cast<const uint8_t*>(wire.data());
  CHECK(h.records->sealedAt(p, first, 0));
  CHECK_FALSE(h.records->sealedAt(p, first, 1));
  CHECK(h.records->sealedAt(p + first, wire.size() - first, 1));
  CHECK_FALSE(h.records->seal(Tls13Records::kAppData, data, Tls13Records::kMaxPlaintext + 1, wire));
}

TEST_CASE("a write key is worn after 2^24 records") {
  uint8_t secret[32] = {1};
  Tls13Records fresh(Tls13Records::Suite::Aes128GcmSha256, secret, secret, 0);
  CHECK_FALSE(fresh.writeKeyWorn());
  Tls13Records worn(Tls13Records::Suite::Aes128GcmSha256, secret, secret, uint64_t{1} << 24);
  CHECK(worn.writeKeyWorn());
  REQUIRE(worn.nextWriteKey());
  CHECK_FALSE(worn.writeKeyWorn());  // a new key starts at sequence 0
}

TEST_CASE("suiteFor knows the three AEAD suites and nothing else") {
  CHECK(Tls13Records::suiteFor(0x1301) == Tls13Records::Suite::Aes128GcmSha256);
  CHECK(Tls13Records::suiteFor(0x1302) == Tls13Records::Suite::Aes256GcmSha384);
  CHECK(Tls13Records::suiteFor(0x1303) == Tls13Records::Suite::Chacha20Poly1305Sha256);
  CHECK_FALSE(Tls13Records::suiteFor(0x1304));  // TLS_AES_128_CCM_SHA256
  CHECK_FALSE(Tls13Records::suiteFor(0xc02f));  // a TLS 1.2 suite
}
