// jwt: admits clients with a valid JSON Web Token (RFC 7519) signed with a configured key.
//
// config:
//   keys:                                   # PEM public keys/certificates and HMAC secrets
//     - { file: keys/rsa.pub.pem, kid: rsa1 }          # RSA -> RS256/384/512
//     - { file: keys/ec.pub.pem }                      # P-256 -> ES256, P-384 -> ES384
//     - { file: keys/ed.pub.pem }                      # Ed25519 -> EdDSA
//     - { secret_file: keys/hs.secret, alg: HS256 }    # HMAC: alg required, >= hash size
//   jwks_file: keys/jwks.json               # and/or a JWKS (RFC 7517): RSA, EC, OKP, oct keys
//   algorithms: [RS256, ES256]              # allowed algs (default: every alg a key supports)
//   issuer: https://auth.example.com        # iss must equal one of these (string or list)
//   audience: chat                          # aud must contain one of these (string or list)
//   leeway: 30s                             # clock skew allowed on exp and nbf (default 30s)
//   require_exp: true                       # a token without exp is refused (default true)
//   token_from: [header, "query:access_token", "cookie:token", protocol]   # default [header]
//   user_claim: sub                         # the identity's user (default sub)
//   close_on_expiry: true                   # close established sessions with 1008 at exp
//   realm: upgate                           # WWW-Authenticate realm
//
// Token sources, tried in order: `header` = Authorization: Bearer <token>; `query:NAME`;
// `cookie:NAME`; `protocol` = the Sec-WebSocket-Protocol entry shaped like a JWT, or
// `protocol:PREFIX` = the entry starting with PREFIX (browsers cannot set headers on WebSockets).
//
// Security rules: the alg comes from the token but must be allowed and match the key's type, so
// "none" is always refused and a public key is never used as an HMAC secret (algorithm
// confusion). A kid selects keys when present. Failures answer 401 with an RFC 6750
// WWW-Authenticate header.

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cmath>
#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/cpp_plugin.h"
#include "common/util.h"

namespace upgate_plugins {
namespace {

using json = nlohmann::json;

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

enum class KeyType { Hmac, Rsa, EcP256, EcP384, Ed };

const char* const kAllAlgs[] = {"HS256", "HS384", "HS512", "RS256", "RS384",
                                "RS512", "ES256", "ES384", "EdDSA"};

bool keyFitsAlg(KeyType t, const std::string& alg) {
  switch (t) {
    case KeyType::Hmac:
      return alg == "HS256" || alg == "HS384" || alg == "HS512";
    case KeyType::Rsa:
      return alg == "RS256" || alg == "RS384" || alg == "RS512";
    case KeyType::EcP256:
      return alg == "ES256";
    case KeyType::EcP384:
      return alg == "ES384";
    case KeyType::Ed:
      return alg == "EdDSA";
  }
  return false;
}

const EVP_MD* digestFor(const std::string& alg) {
  if (alg == "HS256" || alg == "RS256" || alg == "ES256") return EVP_sha256();
  if (alg == "HS384" || alg == "RS384" || alg == "ES384") return EVP_sha384();
  if (alg == "HS512" || alg == "RS512") return EVP_sha512();
  return nullptr;  // EdDSA: no separate digest
}

struct Key {
  std::string kid;  // "" = none
  std::string alg;  // "" = any alg the type fits
  KeyType type = KeyType::Rsa;
  Pkey pkey;           // public keys
  std::string secret;  // HMAC

  bool fits(const std::string& a) const { return keyFitsAlg(type, a) && (alg.empty() || alg == a); }
};

// Classifies a public key; throws ConfigError for unsupported types and weak RSA.
KeyType classify(EVP_PKEY* pkey, const std::string& what) {
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    if (EVP_PKEY_get_bits(pkey) < 2048) {
      throw ConfigError(what + ": RSA keys need at least 2048 bits (RFC 7518 §3.3)");
    }
    return KeyType::Rsa;
  }
  if (EVP_PKEY_is_a(pkey, "ED25519") || EVP_PKEY_is_a(pkey, "ED448")) return KeyType::Ed;
  if (EVP_PKEY_is_a(pkey, "EC")) {
    char group[64] = {0};
    size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &len) == 1) {
      std::string g(group, len);
      if (g == "prime256v1" || g == "P-256") return KeyType::EcP256;
      if (g == "secp384r1" || g == "P-384") return KeyType::EcP384;
    }
    throw ConfigError(what + ": only P-256 and P-384 EC keys are supported");
  }
  throw ConfigError(what + ": unsupported key type (RSA, EC P-256/P-384 or Ed25519)");
}

Pkey readPem(const std::string& pem, const std::string& what) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  Pkey key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (key) return key;
  BIO_reset(bio.get());
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (cert) key.reset(X509_get_pubkey(cert.get()));
  if (!key) {
    throw ConfigError(what +
                      ": no PEM public key or certificate found (private keys are not "
                      "accepted: give the public half)");
  }
  return key;
}

size_t minSecret(const std::string& alg) {
  if (alg == "HS384") return 48;
  if (alg == "HS512") return 64;
  return 32;
}

std::string b64field(const json& jwk, const char* name, const std::string& what) {
  auto it = jwk.find(name);
  if (it == jwk.end() || !it->is_string()) throw ConfigError(what + ": missing \"" + name + "\"");
  std::optional<std::string> v = base64UrlDecode(it->get<std::string>());
  if (!v || v->empty()) throw ConfigError(what + ": \"" + name + "\" is not base64url");
  return *v;
}

std::string strField(const json& obj, const char* name) {
  auto it = obj.find(name);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

Pkey fromParams(const char* type, OSSL_PARAM_BLD* bld, const std::string& what) {
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params(OSSL_PARAM_BLD_to_param(bld),
                                                                 &OSSL_PARAM_free);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr), &EVP_PKEY_CTX_free);
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    throw ConfigError(what + ": invalid key parameters");
  }
  return Pkey(raw);
}

Key keyFromJwk(const json& jwk, const std::string& what) {
  if (!jwk.is_object()) throw ConfigError(what + ": not an object");
  Key k;
  k.kid = strField(jwk, "kid");
  k.alg = strField(jwk, "alg");
  const std::string kty = strField(jwk, "kty");
  using BldPtr = std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)>;
  if (kty == "oct") {
    k.type = KeyType::Hmac;
    k.secret = b64field(jwk, "k", what);
    if (k.alg.empty()) throw ConfigError(what + ": an oct key needs \"alg\" (HS256/384/512)");
  } else if (kty == "RSA") {
    std::string n = b64field(jwk, "n", what);
    std::string e = b64field(jwk, "e", what);
    std::unique_ptr<BIGNUM, decltype(&BN_free)> bn_n(
        BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()),
                  nullptr),
        &BN_free);
    std::unique_ptr<BIGNUM, decltype(&BN_free)> bn_e(
        BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()),
                  nullptr),
        &BN_free);
    BldPtr bld(OSSL_PARAM_BLD_new(), &OSSL_PARAM_BLD_free);
    if (!bn_n || !bn_e || !bld ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
      throw ConfigError(what + ": invalid RSA key");
    }
    k.pkey = fromParams("RSA", bld.get(), what);
  } else if (kty == "EC") {
    const std::string crv = strField(jwk, "crv");
    const char* group = crv == "P-256" ? "prime256v1" : crv == "P-384" ? "secp384r1" : nullptr;
    if (group == nullptr) throw ConfigError(what + ": EC curve must be P-256 or P-384");
    std::string x = b64field(jwk, "x", what);
    std::string y = b64field(jwk, "y", what);
    std::string point = "\x04" + x + y;  // SEC 1 uncompressed point
    BldPtr bld(OSSL_PARAM_BLD_new(), &OSSL_PARAM_BLD_free);
    if (!bld ||
        OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                         point.size()) != 1) {
      throw ConfigError(what + ": invalid EC key");
    }
    k.pkey = fromParams("EC", bld.get(), what);
  } else if (kty == "OKP") {
    const std::string crv = strField(jwk, "crv");
    int id = crv == "Ed25519" ? EVP_PKEY_ED25519 : crv == "Ed448" ? EVP_PKEY_ED448 : 0;
    if (id == 0) throw ConfigError(what + ": OKP curve must be Ed25519 or Ed448");
    std::string x = b64field(jwk, "x", what);
    k.pkey.reset(EVP_PKEY_new_raw_public_key(
        id, nullptr, reinterpret_cast<const unsigned char*>(x.data()), x.size()));
    if (!k.pkey) throw ConfigError(what + ": invalid OKP key");
  } else {
    throw ConfigError(what + ": unsupported kty \"" + kty + "\"");
  }
  if (k.pkey) k.type = classify(k.pkey.get(), what);
  return k;
}

bool verifySignature(const Key& key, const std::string& alg, std::string_view signing_input,
                     const std::string& sig) {
  const auto* in = reinterpret_cast<const unsigned char*>(signing_input.data());
  if (key.type == KeyType::Hmac) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (HMAC(digestFor(alg), key.secret.data(), static_cast<int>(key.secret.size()), in,
             signing_input.size(), mac, &len) == nullptr) {
      return false;
    }
    return constantTimeEquals(std::string_view(reinterpret_cast<const char*>(mac), len), sig);
  }
  std::string der;
  std::string_view check = sig;
  if (key.type == KeyType::EcP256 || key.type == KeyType::EcP384) {
    // JWS carries R || S, each the curve size (RFC 7518 §3.4); OpenSSL wants DER.
    size_t half = key.type == KeyType::EcP256 ? 32 : 48;
    if (sig.size() != 2 * half) return false;
    ECDSA_SIG* es = ECDSA_SIG_new();
    BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()),
                          static_cast<int>(half), nullptr);
    BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data() + half),
                          static_cast<int>(half), nullptr);
    if (es == nullptr || r == nullptr || s == nullptr || ECDSA_SIG_set0(es, r, s) != 1) {
      BN_free(r);
      BN_free(s);
      ECDSA_SIG_free(es);
      return false;
    }
    unsigned char* out = nullptr;
    int n = i2d_ECDSA_SIG(es, &out);
    ECDSA_SIG_free(es);
    if (n <= 0) return false;
    der.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    OPENSSL_free(out);
    check = der;
  }
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx ||
      EVP_DigestVerifyInit(ctx.get(), nullptr, digestFor(alg), nullptr, key.pkey.get()) != 1) {
    return false;
  }
  int ok = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(check.data()),
                            check.size(), in, signing_input.size());
  return ok == 1;
}

struct Source {
  enum Kind { Header, Query, Cookie, Protocol } kind;
  std::string name;  // query/cookie name, protocol prefix
};

bool looksLikeJwt(std::string_view t) {
  size_t a = t.find('.');
  if (a == std::string_view::npos || a == 0) return false;
  size_t b = t.find('.', a + 1);
  // An empty signature is let through here so that "alg": "none" is refused by name.
  if (b == std::string_view::npos || b == a + 1) return false;
  return t.find('.', b + 1) == std::string_view::npos;
}

class JwtPlugin : public PluginBase {
 public:
  JwtPlugin(const upgate_host_api_t* host, const YAML::Node& cfg) : PluginBase(host) {
    checkKeys(cfg, "config",
              {"keys", "jwks_file", "algorithms", "issuer", "audience", "leeway", "require_exp",
               "token_from", "user_claim", "close_on_expiry", "realm"});
    loadKeys(cfg);
    std::vector<std::string> algs = getStrings(cfg, "algorithms", "config");
    if (algs.empty()) {
      for (const char* a : kAllAlgs) algs.emplace_back(a);
    }
    for (size_t i = 0; i < algs.size(); ++i) {
      bool known = false;
      for (const char* a : kAllAlgs) known = known || algs[i] == a;
      if (!known) {
        throw ConfigError("config.algorithms[" + std::to_string(i) + "]: \"" + algs[i] +
                          "\" is not one of HS256/384/512, RS256/384/512, ES256/384, EdDSA");
      }
      bool usable = false;
      for (const Key& k : keys_) usable = usable || k.fits(algs[i]);
      if (usable) algorithms_.insert(algs[i]);
    }
    if (algorithms_.empty()) throw ConfigError("config: no key can verify any allowed algorithm");
    issuers_ = getStrings(cfg, "issuer", "config");
    audiences_ = getStrings(cfg, "audience", "config");
    leeway_ = getSeconds(cfg, "leeway", "config", 30);
    require_exp_ = getBool(cfg, "require_exp", "config", true);
    close_on_expiry_ = getBool(cfg, "close_on_expiry", "config", true);
    user_claim_ = getString(cfg, "user_claim", "config", "sub");
    std::string realm = getString(cfg, "realm", "config", "upgate");
    if (realm.find_first_of("\"\\\r\n") != std::string::npos) {
      throw ConfigError("config.realm: must not contain quotes, backslashes or line breaks");
    }
    challenge_ = "Bearer realm=\"" + realm + "\"";
    invalid_challenge_ = challenge_ + ", error=\"invalid_token\"";
    missing_header_.value = challenge_.c_str();
    invalid_header_.value = invalid_challenge_.c_str();
    std::vector<std::string> from = getStrings(cfg, "token_from", "config");
    if (from.empty()) from.emplace_back("header");
    for (size_t i = 0; i < from.size(); ++i) sources_.push_back(parseSource(from[i], i));
  }

  upgate_decision_t onRequest(upgate_session_t* s, const upgate_request_t* r,
                              upgate_reject_t* out) {
    std::optional<std::string> token = findToken(s, r);
    if (!token) return deny(s, out, "no token", false);
    return verify(s, *token, out);
  }

  // Also used by the tests through the plugin: checks `token` at wall time `now`.
  upgate_decision_t verify(upgate_session_t* s, const std::string& token, upgate_reject_t* out) {
    const double now = static_cast<double>(std::time(nullptr));
    if (!looksLikeJwt(token)) return deny(s, out, "malformed token", true);
    size_t a = token.find('.');
    size_t b = token.find('.', a + 1);
    std::optional<std::string> header_raw = base64UrlDecode(std::string_view(token).substr(0, a));
    std::optional<std::string> payload_raw =
        base64UrlDecode(std::string_view(token).substr(a + 1, b - a - 1));
    std::optional<std::string> sig = base64UrlDecode(std::string_view(token).substr(b + 1));
    if (!header_raw || !payload_raw || !sig) return deny(s, out, "malformed token", true);
    json header = json::parse(*header_raw, nullptr, false);
    json claims = json::parse(*payload_raw, nullptr, false);
    if (!header.is_object() || !claims.is_object()) return deny(s, out, "malformed token", true);
    auto alg_it = header.find("alg");
    if (alg_it == header.end() || !alg_it->is_string()) return deny(s, out, "no alg", true);
    const std::string alg = alg_it->get<std::string>();
    if (algorithms_.count(alg) == 0) return deny(s, out, "algorithm not allowed", true);
    std::string kid;
    if (header.contains("kid")) {
      if (!header["kid"].is_string()) return deny(s, out, "bad kid", true);
      kid = header["kid"].get<std::string>();
    }
    if (header.contains("crit")) return deny(s, out, "unsupported crit header", true);
    const std::string_view signing_input = std::string_view(token).substr(0, b);
    bool verified = false;
    bool candidate = false;
    for (const Key& k : keys_) {
      if (!k.fits(alg) || (!kid.empty() && !k.kid.empty() && k.kid != kid)) continue;
      candidate = true;
      if (verifySignature(k, alg, signing_input, *sig)) {
        verified = true;
        break;
      }
    }
    if (!candidate) return deny(s, out, "no key for this token", true);
    if (!verified) return deny(s, out, "bad signature", true);

    double exp = 0;
    bool has_exp = false;
    if (claims.contains("exp")) {
      if (!claims["exp"].is_number()) return deny(s, out, "bad exp", true);
      exp = claims["exp"].get<double>();
      has_exp = true;
      if (now > exp + leeway_) return deny(s, out, "token expired", true);
    } else if (require_exp_) {
      return deny(s, out, "token has no exp", true);
    }
    if (claims.contains("nbf")) {
      if (!claims["nbf"].is_number()) return deny(s, out, "bad nbf", true);
      if (now + leeway_ < claims["nbf"].get<double>())
        return deny(s, out, "token not yet valid", true);
    }
    if (!issuers_.empty()) {
      auto iss = claims.find("iss");
      bool ok = false;
      if (iss != claims.end() && iss->is_string()) {
        for (const std::string& want : issuers_) ok = ok || *iss == want;
      }
      if (!ok) return deny(s, out, "wrong issuer", true);
    }
    if (!audiences_.empty()) {
      auto aud = claims.find("aud");
      bool ok = false;
      if (aud != claims.end()) {
        std::vector<json> list =
            aud->is_array() ? aud->get<std::vector<json>>() : std::vector<json>{*aud};
        for (const json& v : list) {
          for (const std::string& want : audiences_) ok = ok || (v.is_string() && v == want);
        }
      }
      if (!ok) return deny(s, out, "wrong audience", true);
    }
    std::string user;
    auto u = claims.find(user_claim_);
    if (u != claims.end() && u->is_string()) user = u->get<std::string>();
    if (user.empty()) return deny(s, out, "token has no " + user_claim_, true);
    if (host()->set_identity(s, user.c_str(), claims.dump().c_str()) != 0) {
      return deny(s, out, "unusable " + user_claim_ + " claim", true);
    }
    if (has_exp && close_on_expiry_) {
      // Connection-lifetime auth: the session lives no longer than its credential.
      double left = exp + leeway_ - now;
      // Tokens valid for more than a year are not worth a timer (and would overflow one).
      if (left < 366.0 * 24 * 3600) {
        uint64_t ms = left <= 0 ? 0 : static_cast<uint64_t>(std::ceil(left * 1000));
        host()->timer_start(s, ms, &JwtPlugin::onExpired, this);
      }
    }
    return UPGATE_CONTINUE;
  }

 private:
  static void onExpired(upgate_session_t* s, void* self) {
    auto* p = static_cast<JwtPlugin*>(self);
    // close() is refused (-1) until the 101 is sent; a slow upstream handshake must not let
    // the expired token through, so try again shortly until the session is established. -2: a
    // plain HTTP request, which runs to its end (admitted when its token was valid).
    const int rc = p->host()->close(s, 1008, "token expired");
    if (rc == -1) {
      p->host()->timer_start(s, 100, &JwtPlugin::onExpired, self);
      return;
    }
    if (rc != 0) return;
    p->log(s, UPGATE_LOG_INFO, "token expired; closing the session");
  }

  Source parseSource(const std::string& text, size_t i) {
    const std::string path = "config.token_from[" + std::to_string(i) + "]";
    size_t colon = text.find(':');
    std::string kind = text.substr(0, colon);
    std::string arg = colon == std::string::npos ? "" : text.substr(colon + 1);
    if (kind == "header" && arg.empty()) return {Source::Header, ""};
    if (kind == "protocol") return {Source::Protocol, arg};
    if ((kind == "query" || kind == "cookie") && !arg.empty()) {
      return {kind == "query" ? Source::Query : Source::Cookie, arg};
    }
    throw ConfigError(path + ": \"" + text +
                      "\" is not header, query:NAME, cookie:NAME, protocol or protocol:PREFIX");
  }

  std::optional<std::string> findToken(upgate_session_t* s, const upgate_request_t* r) const {
    for (const Source& src : sources_) {
      switch (src.kind) {
        case Source::Header: {
          const char* v = host()->header(s, "Authorization", 0);
          if (v == nullptr) break;
          std::string_view h = trim(v);
          // RFC 6750 §2.1: the scheme is case-insensitive.
          if (h.size() > 7 && iequal(h.substr(0, 7), "Bearer "))
            return std::string(trim(h.substr(7)));
          break;
        }
        case Source::Query:
          if (r->query != nullptr) {
            std::optional<std::string> v = queryParam(r->query, src.name);
            if (v && !v->empty()) return v;
          }
          break;
        case Source::Cookie: {
          std::optional<std::string> v = cookieValue(host(), s, src.name);
          if (v && !v->empty()) return v;
          break;
        }
        case Source::Protocol:
          for (size_t i = 0;; ++i) {
            const char* v = host()->header(s, "Sec-WebSocket-Protocol", i);
            if (v == nullptr) break;
            for (std::string_view p : split(v, ',')) {
              if (src.name.empty() ? looksLikeJwt(p) : p.rfind(src.name, 0) == 0) {
                return std::string(p.substr(src.name.size()));
              }
            }
          }
          break;
      }
    }
    return std::nullopt;
  }

  upgate_decision_t deny(upgate_session_t* s, upgate_reject_t* out, const std::string& why,
                         bool invalid) {
    log(s, UPGATE_LOG_DEBUG, "rejected: " + why);
    // The reason string must outlive this call: keep it per thread (hooks are per loop thread).
    thread_local std::string reason;
    reason = why;
    out->status = 401;
    out->reason = reason.c_str();
    out->headers = invalid ? &invalid_header_ : &missing_header_;
    out->header_count = 1;
    return UPGATE_REJECT;
  }

  void loadKeys(const YAML::Node& cfg) {
    YAML::Node list = cfg["keys"];
    if (list && !list.IsNull()) {
      if (!list.IsSequence()) throw ConfigError("config.keys: expected a list");
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string path = "config.keys[" + std::to_string(i) + "]";
        checkKeys(list[i], path, {"file", "secret_file", "secret", "kid", "alg"});
        Key k;
        k.kid = getString(list[i], "kid", path);
        k.alg = getString(list[i], "alg", path);
        std::string file = getString(list[i], "file", path);
        std::string secret_file = getString(list[i], "secret_file", path);
        std::string secret = getString(list[i], "secret", path);
        int given = !file.empty() + !secret_file.empty() + !secret.empty();
        if (given != 1) throw ConfigError(path + ": give exactly one of file, secret_file, secret");
        if (!file.empty()) {
          const std::string name = resolvePath(host(), file);
          k.pkey = readPem(readFile(name, path + ".file"), path + ": " + name);
          k.type = classify(k.pkey.get(), path + ": " + name);
        } else {
          k.type = KeyType::Hmac;
          k.secret = secret;
          if (!secret_file.empty()) {
            k.secret = readFile(resolvePath(host(), secret_file), path + ".secret_file");
            while (!k.secret.empty() && (k.secret.back() == '\n' || k.secret.back() == '\r')) {
              k.secret.pop_back();
            }
          }
          if (k.alg.empty()) throw ConfigError(path + ": an HMAC secret needs alg (HS256/384/512)");
        }
        checkKey(k, path);
        keys_.push_back(std::move(k));
      }
    }
    std::string jwks = getString(cfg, "jwks_file", "config");
    if (!jwks.empty()) {
      const std::string name = resolvePath(host(), jwks);
      json doc = json::parse(readFile(name, "config.jwks_file"), nullptr, false);
      if (!doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array()) {
        throw ConfigError("config.jwks_file: " + name + " is not a JWKS ({\"keys\": [...]})");
      }
      size_t i = 0;
      for (const json& jwk : doc["keys"]) {
        const std::string path = name + ": keys[" + std::to_string(i++) + "]";
        if (jwk.is_object() && jwk.contains("use") && jwk["use"] != "sig") continue;
        Key k = keyFromJwk(jwk, path);
        checkKey(k, path);
        keys_.push_back(std::move(k));
      }
    }
    if (keys_.empty()) throw ConfigError("config: no keys (give keys: or jwks_file:)");
  }

  static void checkKey(const Key& k, const std::string& path) {
    if (!k.alg.empty() && !keyFitsAlg(k.type, k.alg)) {
      throw ConfigError(path + ": alg " + k.alg + " does not fit this key's type");
    }
    if (k.type == KeyType::Hmac && k.secret.size() < minSecret(k.alg)) {
      throw ConfigError(path + ": an " + k.alg + " secret needs at least " +
                        std::to_string(minSecret(k.alg)) + " bytes (RFC 7518 §3.2)");
    }
  }

  std::vector<Key> keys_;
  std::set<std::string> algorithms_;
  std::vector<std::string> issuers_;
  std::vector<std::string> audiences_;
  double leeway_ = 30;
  bool require_exp_ = true;
  bool close_on_expiry_ = true;
  std::string user_claim_;
  std::vector<Source> sources_;
  std::string challenge_;
  std::string invalid_challenge_;
  upgate_header_t missing_header_{"WWW-Authenticate", nullptr};
  upgate_header_t invalid_header_{"WWW-Authenticate", nullptr};

 public:
  JwtPlugin(const JwtPlugin&) = delete;
  JwtPlugin& operator=(const JwtPlugin&) = delete;
};

}  // namespace
}  // namespace upgate_plugins

UPGATE_CPP_PLUGIN(upgate_plugins::JwtPlugin, "jwt")
