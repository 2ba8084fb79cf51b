#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <catch2/catch.hpp>
#include <ctime>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

using json = nlohmann::json;

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string b64url(const std::string& in) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    acc = (acc << 8) | static_cast<uint8_t>(c);
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 0x3F]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 0x3F]);
  return out;
}

const EVP_MD* mdFor(const std::string& alg) {
  if (alg.find("256") != std::string::npos) return EVP_sha256();
  if (alg.find("384") != std::string::npos) return EVP_sha384();
  if (alg.find("512") != std::string::npos) return EVP_sha512();
  return nullptr;
}

// Signs `header.claims` as a JWS. `key` is a private key PEM file, or the HMAC secret for HS*.
std::string sign(const json& header, const json& claims, const std::string& key) {
  const std::string alg = header["alg"].get<std::string>();
  const std::string input = b64url(header.dump()) + "." + b64url(claims.dump());
  std::string sig;
  if (alg.rfind("HS", 0) == 0) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(mdFor(alg), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
    sig.assign(reinterpret_cast<const char*>(mac), len);
  } else if (alg != "none" && alg != "None") {
    std::string pem = readAll(test::fixture(key));
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    REQUIRE(pkey != nullptr);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    REQUIRE(EVP_DigestSignInit(ctx, nullptr, mdFor(alg), nullptr, pkey) == 1);
    size_t len = 0;
    const auto* in = reinterpret_cast<const unsigned char*>(input.data());
    REQUIRE(EVP_DigestSign(ctx, nullptr, &len, in, input.size()) == 1);
    std::string der(len, '\0');
    REQUIRE(EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(der.data()), &len, in,
                           input.size()) == 1);
    der.resize(len);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    if (alg.rfind("ES", 0) == 0) {
      // DER ECDSA-Sig-Value -> R || S (RFC 7518 §3.4).
      int half = alg == "ES256" ? 32 : 48;
      const auto* p = reinterpret_cast<const unsigned char*>(der.data());
      ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
      REQUIRE(es != nullptr);
      std::string raw(static_cast<size_t>(2 * half), '\0');
      auto* out = reinterpret_cast<unsigned char*>(raw.data());
      BN_bn2binpad(ECDSA_SIG_get0_r(es), out, half);
      BN_bn2binpad(ECDSA_SIG_get0_s(es), out + half, half);
      ECDSA_SIG_free(es);
      sig = raw;
    } else {
      sig = der;
    }
  }
  return input + "." + b64url(sig);
}

long now() {
  return static_cast<long>(std::time(nullptr));
}

json claims(long exp_in = 600) {
  return json{{"sub", "alice"},
              {"aud", "chat"},
              {"iss", "https://auth.example"},
              {"exp", now() + exp_in},
              {"iat", now()}};
}

const std::string kSecret = "a-test-only-hmac-secret-of-at-least-32-bytes!";

const char* kConfig =
    "keys:\n"
    "  - { file: rsa.pub.pem, kid: rsa1 }\n"
    "  - { file: ec256.pub.pem }\n"
    "  - { file: ec384.pub.pem }\n"
    "  - { file: ed25519.pub.pem }\n"
    "  - { secret_file: hs256.secret, alg: HS256 }\n"
    "issuer: https://auth.example\n"
    "audience: [chat, admin]\n"
    "leeway: 5s\n";

std::string bearer(const std::string& token) {
  return "Bearer " + token;
}

TEST_CASE("jwt plugin: valid tokens of every algorithm family", "[plugin]") {
  test::Harness h("jwt", kConfig);
  struct Case {
    const char* alg;
    std::string key;
  };
  const Case cases[] = {{"HS256", kSecret},          {"RS256", "rsa.key.pem"},
                        {"RS384", "rsa.key.pem"},    {"RS512", "rsa.key.pem"},
                        {"ES256", "ec256.key.pem"},  {"ES384", "ec384.key.pem"},
                        {"EdDSA", "ed25519.key.pem"}};
  for (const Case& c : cases) {
    INFO(c.alg);
    std::string token = sign(json{{"alg", c.alg}, {"typ", "JWT"}}, claims(), c.key);
    CHECK(h.run({{"Authorization", bearer(token)}}) == ChainOutcome::Continue);
    CHECK(h.chain->identityUser() == "alice");
    CHECK(json::parse(h.chain->identityClaims())["aud"] == "chat");
  }
}

TEST_CASE("jwt plugin: HS384 and HS512 secrets, each pinned to its algorithm", "[plugin]") {
  const std::string s384(48, 'k'), s512(64, 'm');
  test::Harness h("jwt", "keys:\n  - { secret: " + s384 + ", alg: HS384 }\n  - { secret: " + s512 +
                             ", alg: HS512 }\n");
  for (const auto& [alg, key] : {std::pair<std::string, std::string>{"HS384", s384},
                                 std::pair<std::string, std::string>{"HS512", s512}}) {
    INFO(alg);
    CHECK(h.run({{"Authorization", bearer(sign(json{{"alg", alg}}, claims(), key))}}) ==
          ChainOutcome::Continue);
    CHECK(h.chain->identityUser() == "alice");
  }
  // The right secret under the other algorithm: no key of that algorithm verifies it.
  CHECK(h.run({{"Authorization", bearer(sign(json{{"alg", "HS512"}}, claims(), s384))}}) ==
        ChainOutcome::Reject);
  CHECK(h.status() == 401);
}

TEST_CASE("jwt plugin: refused tokens", "[plugin]") {
  test::Harness h("jwt", kConfig);
  auto reason = [&](const std::string& token) {
    if (h.run({{"Authorization", bearer(token)}}) == ChainOutcome::Reject) CHECK(h.status() == 401);
    return h.chain->outcome() == ChainOutcome::Reject ? h.chain->reject().reason : "(accepted)";
  };
  const json rs{{"alg", "RS256"}};
  json c = claims(-60);
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "plugin jwt: token expired");
  c = claims();
  c["nbf"] = now() + 120;
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "plugin jwt: token not yet valid");
  c = claims();
  c["aud"] = "billing";
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "plugin jwt: wrong audience");
  c["aud"] = json::array({"billing", "admin"});
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "(accepted)");
  c = claims();
  c["iss"] = "https://evil.example";
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "plugin jwt: wrong issuer");
  c = claims();
  c.erase("exp");
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "plugin jwt: token has no exp");
  // alg none, in any spelling, signed or not.
  CHECK(reason(sign(json{{"alg", "none"}}, claims(), "")) == "plugin jwt: algorithm not allowed");
  CHECK(reason(sign(json{{"alg", "None"}}, claims(), "")) == "plugin jwt: algorithm not allowed");
  // Algorithm confusion: HS256 keyed with the RSA public key's PEM text.
  CHECK(reason(sign(json{{"alg", "HS256"}}, claims(), readAll(test::fixture("rsa.pub.pem")))) ==
        "plugin jwt: bad signature");
  // Wrong key type: an ES256 header over an RSA signature, an RS256 header over an EC signature.
  std::string es = sign(json{{"alg", "ES256"}}, claims(), "ec256.key.pem");
  std::string rsa = sign(rs, claims(), "rsa.key.pem");
  CHECK(reason(es.substr(0, es.find('.')) + rsa.substr(rsa.find('.'))) ==
        "plugin jwt: bad signature");
  CHECK(reason(sign(json{{"alg", "ES256"}}, claims(), "ec384.key.pem")) ==
        "plugin jwt: bad signature");
  // Tampered payload and signature.
  std::string good = sign(rs, claims(), "rsa.key.pem");
  json evil = claims();
  evil["sub"] = "admin";
  std::string tampered =
      good.substr(0, good.find('.') + 1) + b64url(evil.dump()) + good.substr(good.rfind('.'));
  CHECK(reason(tampered) == "plugin jwt: bad signature");
  std::string flipped = good;
  flipped[flipped.size() - 5] = flipped[flipped.size() - 5] == 'A' ? 'B' : 'A';
  CHECK(reason(flipped) == "plugin jwt: bad signature");
  // A kid no key has.
  CHECK(reason(sign(json{{"alg", "RS256"}, {"kid", "other"}}, claims(), "rsa.key.pem")) ==
        "plugin jwt: no key for this token");
  CHECK(reason("not.a-jwt") == "plugin jwt: malformed token");
  CHECK(reason("a.b.c") == "plugin jwt: malformed token");
  c = claims();
  c.erase("sub");
  CHECK(reason(sign(rs, c, "rsa.key.pem")) == "plugin jwt: token has no sub");
}

TEST_CASE("jwt plugin: leeway on exp and nbf", "[plugin]") {
  test::Harness h("jwt", kConfig);
  const json rs{{"alg", "RS256"}};
  CHECK(h.run({{"Authorization", bearer(sign(rs, claims(-3), "rsa.key.pem"))}}) ==
        ChainOutcome::Continue);
  json c = claims();
  c["nbf"] = now() + 3;
  CHECK(h.run({{"Authorization", bearer(sign(rs, c, "rsa.key.pem"))}}) == ChainOutcome::Continue);
}

TEST_CASE("jwt plugin: 401 carries WWW-Authenticate", "[plugin]") {
  test::Harness h("jwt", kConfig);
  CHECK(h.run({}) == ChainOutcome::Reject);
  CHECK(h.status() == 401);
  REQUIRE(h.rejectHeader("WWW-Authenticate") != nullptr);
  CHECK(*h.rejectHeader("WWW-Authenticate") == "Bearer realm=\"upgate\"");
  h.run({{"Authorization", "Bearer x.y.z"}});
  CHECK(*h.rejectHeader("WWW-Authenticate") == "Bearer realm=\"upgate\", error=\"invalid_token\"");
  CHECK(h.run({{"Authorization", "Basic dXNlcjpwdw=="}}) == ChainOutcome::Reject);
}

TEST_CASE("jwt plugin: token sources", "[plugin]") {
  test::Harness h("jwt", std::string(kConfig) +
                             "token_from: [header, \"query:access_token\", \"cookie:tok\", "
                             "protocol, \"protocol:jwt.\"]\n");
  std::string t = sign(json{{"alg", "ES256"}}, claims(), "ec256.key.pem");
  CHECK(h.run({{"authorization", "bearer " + t}}) == ChainOutcome::Continue);
  CHECK(h.run({}, "/chat?x=1&access_token=" + t) == ChainOutcome::Continue);
  CHECK(h.run({{"Cookie", "a=b; tok=" + t + "; c=d"}}) == ChainOutcome::Continue);
  CHECK(h.run({{"Sec-WebSocket-Protocol", "chat.v1, " + t}}) == ChainOutcome::Continue);
  test::Harness p("jwt", std::string(kConfig) + "token_from: [\"protocol:jwt.\"]\n");
  CHECK(p.run({{"Sec-WebSocket-Protocol", "chat.v1, jwt." + t}}) == ChainOutcome::Continue);
  CHECK(p.run({{"Authorization", bearer(t)}}) == ChainOutcome::Reject);
}

TEST_CASE("jwt plugin: keys from a JWKS file, selected by kid", "[plugin]") {
  test::Harness h("jwt", "jwks_file: jwks.json\naudience: chat\n");
  struct Case {
    const char* alg;
    const char* kid;
    std::string key;
  };
  const Case cases[] = {{"RS256", "rsa1", "rsa.key.pem"},
                        {"ES256", "ec1", "ec256.key.pem"},
                        {"ES384", "ec384", "ec384.key.pem"},
                        {"EdDSA", "ed1", "ed25519.key.pem"},
                        {"HS256", "hs1", kSecret}};
  for (const Case& c : cases) {
    INFO(c.alg);
    std::string token = sign(json{{"alg", c.alg}, {"kid", c.kid}}, claims(), c.key);
    CHECK(h.run({{"Authorization", bearer(token)}}) == ChainOutcome::Continue);
  }
  // The oct key is pinned to HS256; the RSA key is pinned to RS256 by its "alg".
  CHECK(h.run({{"Authorization", bearer(sign(json{{"alg", "HS512"}, {"kid", "hs1"}}, claims(),
                                             kSecret))}}) == ChainOutcome::Reject);
  CHECK(h.run({{"Authorization", bearer(sign(json{{"alg", "RS512"}, {"kid", "rsa1"}}, claims(),
                                             "rsa.key.pem"))}}) == ChainOutcome::Reject);
  // The encryption key (use: enc) is not loaded.
  CHECK(h.run({{"Authorization", bearer(sign(json{{"alg", "RS256"}, {"kid", "enc1"}}, claims(),
                                             "rsa.key.pem"))}}) == ChainOutcome::Reject);
}

TEST_CASE("jwt plugin: an allowed-algorithm list narrows the keys", "[plugin]") {
  test::Harness h("jwt", std::string(kConfig) + "algorithms: [ES256]\n");
  CHECK(h.run({{"Authorization", bearer(sign(json{{"alg", "RS256"}}, claims(), "rsa.key.pem"))}}) ==
        ChainOutcome::Reject);
  CHECK(h.chain->reject().reason == "plugin jwt: algorithm not allowed");
}

TEST_CASE("jwt plugin: the session is closed with 1008 when the token expires", "[plugin]") {
  test::Harness h("jwt", std::string(kConfig));
  std::string t = sign(json{{"alg", "RS256"}}, claims(10), "rsa.key.pem");
  CHECK(h.run({{"Authorization", bearer(t)}}) == ChainOutcome::Continue);
  h.chain->handshakeDone(true);
  REQUIRE(h.session.wakeup != 0);
  // exp + leeway is 15 s away (give or take the second boundary).
  uint64_t delay = h.session.wakeup - h.session.now;
  CHECK(delay > 13000);
  CHECK(delay <= 15000);
  h.session.advance(delay - 1);
  CHECK(h.session.closes.empty());
  h.session.advance(1);
  REQUIRE(h.session.closes.size() == 1);
  CHECK(h.session.closes[0].first == 1008);
  CHECK(h.session.closes[0].second == "token expired");

  test::Harness no_close("jwt", std::string(kConfig) + "close_on_expiry: false\n");
  CHECK(no_close.run({{"Authorization", bearer(t)}}) == ChainOutcome::Continue);
  CHECK(no_close.session.wakeup == 0);
}

TEST_CASE("jwt plugin: config errors", "[plugin]") {
  CHECK(test::createError("jwt", "{}") ==
        "test.yaml:3:5: plugin \"jwt\": config: no keys (give keys: or jwks_file:)");
  CHECK(test::createError("jwt", "keys: [{ file: rsa1024.pub.pem }]")
            .find("RSA keys need at least 2048 bits") != std::string::npos);
  CHECK(test::createError("jwt", "keys: [{ secret: short, alg: HS256 }]") ==
        "test.yaml:3:5: plugin \"jwt\": config.keys[0]: an HS256 secret needs at least 32 bytes "
        "(RFC 7518 §3.2)");
  CHECK(test::createError("jwt", "keys: [{ file: rsa.pub.pem, alg: ES256 }]") ==
        "test.yaml:3:5: plugin \"jwt\": config.keys[0]: alg ES256 does not fit this key's type");
  CHECK(test::createError("jwt", "keys: [{ file: rsa.key.pem }]")
            .find("no PEM public key or certificate found") != std::string::npos);
  CHECK(test::createError("jwt", "keys: [{ file: rsa.pub.pem }]\ntoken_from: [bogus]") ==
        "test.yaml:3:5: plugin \"jwt\": config.token_from[0]: \"bogus\" is not header, "
        "query:NAME, cookie:NAME, protocol or protocol:PREFIX");
  CHECK(
      test::createError("jwt", "keys: [{ file: rsa.pub.pem }]\nalgorithms: [none]") ==
      "test.yaml:3:5: plugin \"jwt\": config.algorithms[0]: \"none\" is not one of HS256/384/512, "
      "RS256/384/512, ES256/384, EdDSA");
  CHECK(test::createError("jwt", "keys: [{ file: rsa.pub.pem }]\nalgorithms: [ES256]") ==
        "test.yaml:3:5: plugin \"jwt\": config: no key can verify any allowed algorithm");
}

}  // namespace
}  // namespace upgate
