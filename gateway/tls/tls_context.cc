#include "tls/tls_context.h"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "core/log.h"
#include "tls/tls_error.h"
#include "tls/tls_stream.h"

namespace upgate {

// Session-ticket keys shared by every SSL_CTX of one listener, so a ticket issued under one SNI
// certificate resumes under another. Rotated every `rotation`; the previous key still decrypts
// (and asks for a fresh ticket) for one more period. The mutex is taken only in handshakes.
struct TicketKeys {
  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    time_t created = 0;
  };
  std::mutex mutex;
  Key current{};
  Key previous{};
  bool has_previous = false;
  time_t rotation_s = 3600;

  static bool fresh(Key& k) {
    k.created = time(nullptr);
    return RAND_bytes(k.name, sizeof(k.name)) == 1 && RAND_bytes(k.aes, sizeof(k.aes)) == 1 &&
           RAND_bytes(k.hmac, sizeof(k.hmac)) == 1;
  }
  void rotateIfDue() {
    if (time(nullptr) - current.created < rotation_s) return;
    previous = current;
    has_previous = true;
    fresh(current);
  }
};

namespace {

int ticketsIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int onTicketKey(SSL* ssl, unsigned char key_name[16], unsigned char* iv, EVP_CIPHER_CTX* cctx,
                EVP_MAC_CTX* hctx, int enc) noexcept {
  auto* keys = static_cast<TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticketsIndex()));
  if (keys == nullptr) return -1;
  std::lock_guard<std::mutex> lock(keys->mutex);
  keys->rotateIfDue();
  const TicketKeys::Key* key = nullptr;
  int result = 1;
  if (enc) {
    key = &keys->current;
    std::memcpy(key_name, key->name, 16);
    if (RAND_bytes(iv, 16) != 1) return -1;
  } else if (std::memcmp(key_name, keys->current.name, 16) == 0) {
    key = &keys->current;
  } else if (keys->has_previous && std::memcmp(key_name, keys->previous.name, 16) == 0) {
    key = &keys->previous;
    result = 2;  // valid, but issue a ticket under the current key
  } else {
    return 0;  // unknown key: full handshake
  }
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key->hmac),
                                        sizeof(key->hmac)),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(hctx, params) != 1) return -1;
  int ok = enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, key->aes, iv)
               : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, key->aes, iv);
  return ok == 1 ? result : -1;
}

// ALPN (RFC 7301): only http/1.1 is served. A client that offers ALPN without it (h2 only) gets
// a no_application_protocol alert: a clean, immediate failure rather than a hang.
int onAlpnSelect(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                 unsigned int inlen, void*) noexcept {
  static const unsigned char kHttp11[] = {'h', 't', 't', 'p', '/', '1', '.', '1'};
  for (unsigned int i = 0; i < inlen;) {
    unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == sizeof(kHttp11) && std::memcmp(in + i + 1, kHttp11, len) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string asn1TimeText(const ASN1_TIME* t) {
  BIO* b = BIO_new(BIO_s_mem());
  ASN1_TIME_print(b, t);
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  std::string out(p, static_cast<size_t>(n));
  BIO_free(b);
  return out;
}

// DNS names from the certificate's subjectAltName, else its CN: what SNI can select it by.
std::vector<std::string> certificateNames(X509* cert) {
  std::vector<std::string> names;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
    if (gn->type != GEN_DNS) continue;
    const ASN1_STRING* s = gn->d.dNSName;
    names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                       static_cast<size_t>(ASN1_STRING_length(s)));
  }
  GENERAL_NAMES_free(sans);
  if (names.empty()) {
    char cn[256];
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) > 0)
      names.emplace_back(cn);
  }
  return names;
}

[[noreturn]] void fail(const std::string& what, const std::string& detail) {
  std::string reason = takeTlsErrors();
  throw TlsSetupError(what + ": " + detail + (reason.empty() ? "" : ": " + reason));
}

// Options every context shares, server or client.
SSL_CTX* newContext(bool server, TlsVersion min, const std::string& what) {
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) fail(what, "cannot create SSL_CTX");
  SSL_CTX_set_min_proto_version(ctx, min == TlsVersion::Tls13 ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // RELEASE_BUFFERS: an idle connection gives its record buffers back (design.md §3).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_AUTO_RETRY |
                            SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

void applyCipherSettings(SSL_CTX* ctx, const ListenerTlsConfig& cfg, const std::string& what) {
  // Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are all modern.
  const std::string ciphers = cfg.ciphers.empty() ? "ECDHE+AESGCM:ECDHE+CHACHA20" : cfg.ciphers;
  if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) fail(what, "ciphers \"" + ciphers + "\"");
  if (!cfg.ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, cfg.ciphersuites.c_str()) != 1)
    fail(what, "ciphersuites \"" + cfg.ciphersuites + "\"");
  if (!cfg.groups.empty() && SSL_CTX_set1_groups_list(ctx, cfg.groups.c_str()) != 1)
    fail(what, "groups \"" + cfg.groups + "\"");
}

void checkValidity(X509* cert, const std::string& what, const std::string& file) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
    throw TlsSetupError(what + ": certificate " + file + " expired on " +
                        asn1TimeText(X509_get0_notAfter(cert)));
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0)
    throw TlsSetupError(what + ": certificate " + file + " is not valid before " +
                        asn1TimeText(X509_get0_notBefore(cert)));
}

void loadCertificate(SSL_CTX* ctx, const TlsCertificateConfig& c, const std::string& what) {
  clearTlsErrors();
  if (SSL_CTX_use_certificate_chain_file(ctx, c.cert.c_str()) != 1)
    fail(what, "cannot load certificate " + c.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, c.key.c_str(), SSL_FILETYPE_PEM) != 1)
    fail(what, "cannot load key " + c.key);
  if (SSL_CTX_check_private_key(ctx) != 1)
    fail(what, "key " + c.key + " does not match certificate " + c.cert);
  checkValidity(SSL_CTX_get0_certificate(ctx), what, c.cert);
}

// A throwaway certificate for localhost, for `make run` and tests: never for production.
void useSelfSigned(SSL_CTX* ctx, const std::string& what) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  bool ok = key && cert;
  if (ok) {
    X509_set_version(cert, 2);
    ASN1_INTEGER_set_int64(X509_get_serialNumber(cert), static_cast<int64_t>(time(nullptr)));
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 30L * 24 * 3600);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("upgate self-signed"), -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name,
                                              "DNS:localhost,IP:127.0.0.1,IP:::1");
    ok = ext && X509_add_ext(cert, ext, -1) == 1 && X509_sign(cert, key, EVP_sha256()) > 0 &&
         SSL_CTX_use_certificate(ctx, cert) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    X509_EXTENSION_free(ext);
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  if (!ok) fail(what, "cannot generate a self-signed certificate");
}

std::string fingerprintOf(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_digest(cert, EVP_sha256(), md, &n);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

}  // namespace

TlsContext::~TlsContext() {
  for (SSL_CTX* ctx : contexts_) SSL_CTX_free(ctx);
}

std::shared_ptr<const TlsContext> TlsContext::forListener(const ListenerTlsConfig& cfg,
                                                          const std::string& what) {
  std::shared_ptr<TlsContext> self(new TlsContext());
  self->server_ = true;
  self->client_auth_ = cfg.client_auth;
  self->record_offload_ = cfg.record_offload;
  if (cfg.session_tickets) {
    self->tickets_ = std::make_shared<TicketKeys>();
    self->tickets_->rotation_s =
        std::max<time_t>(1, static_cast<time_t>(cfg.ticket_key_rotation.count() / 1000));
    if (!TicketKeys::fresh(self->tickets_->current)) fail(what, "cannot generate ticket keys");
  }
  size_t count = std::max<size_t>(1, cfg.certificates.size());
  for (size_t i = 0; i < count; ++i) {
    SSL_CTX* ctx = newContext(true, cfg.min_version, what);
    self->contexts_.push_back(ctx);  // freed by ~TlsContext even if a later step throws
    applyCipherSettings(ctx, cfg, what);
    SSL_CTX_set_alpn_select_cb(ctx, onAlpnSelect, nullptr);
    SSL_CTX_set_tlsext_servername_callback(ctx, onServerName);
    SSL_CTX_set_tlsext_servername_arg(ctx, self.get());
    if (self->record_offload_) SSL_CTX_set_keylog_callback(ctx, TlsStream::onKeyLog);
    // Resumption is stateless (tickets): no server-side session cache to grow with traffic.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    static const unsigned char kSid[] = "upgate";
    SSL_CTX_set_session_id_context(ctx, kSid, sizeof(kSid) - 1);
    if (self->tickets_) {
      SSL_CTX_set_ex_data(ctx, ticketsIndex(), self->tickets_.get());
      SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, onTicketKey);
      SSL_CTX_set_num_tickets(ctx, 1);
    } else {
      SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
      SSL_CTX_set_num_tickets(ctx, 0);
    }
    if (cfg.client_auth) {
      const std::string& ca = cfg.client_auth->ca;
      if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1)
        fail(what, "cannot load client CA " + ca);
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str());
      if (names == nullptr) fail(what, "no CA names in " + ca);
      SSL_CTX_set_client_CA_list(ctx, names);
      SSL_CTX_set_verify(
          ctx, SSL_VERIFY_PEER | (cfg.client_auth->required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
          nullptr);
    }
    if (cfg.certificates.empty()) {
      useSelfSigned(ctx, what);
      X509* leaf = SSL_CTX_get0_certificate(ctx);
      self->description_.push_back(
          "SELF-SIGNED certificate for localhost, 127.0.0.1, ::1 "
          "(generated at start; for demos and tests only), sha256 " +
          fingerprintOf(leaf));
      continue;
    }
    const TlsCertificateConfig& c = cfg.certificates[i];
    loadCertificate(ctx, c, what);
    X509* leaf = SSL_CTX_get0_certificate(ctx);
    std::vector<std::string> names =
        c.server_names.empty() ? certificateNames(leaf) : c.server_names;
    std::string list;
    for (const std::string& n : names) {
      self->sni_.push_back({lower(n), ctx});
      list += (list.empty() ? "" : ", ") + n;
    }
    self->description_.push_back(c.cert + (i == 0 ? " (default)" : "") + " for " +
                                 (list.empty() ? "no names" : list) + ", expires " +
                                 asn1TimeText(X509_get0_notAfter(leaf)));
  }
  clearTlsErrors();
  return self;
}

std::shared_ptr<const TlsContext> TlsContext::forUpstream(const UpstreamTlsConfig& cfg,
                                                          const std::string& what) {
  std::shared_ptr<TlsContext> self(new TlsContext());
  self->server_ = false;
  self->upstream_ = cfg;
  self->record_offload_ = cfg.record_offload;
  SSL_CTX* ctx = newContext(false, TlsVersion::Tls12, what);
  self->contexts_.push_back(ctx);
  if (self->record_offload_) SSL_CTX_set_keylog_callback(ctx, TlsStream::onKeyLog);
  static const unsigned char kAlpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof(kAlpn));
  SSL_CTX_set_verify(ctx, cfg.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  if (cfg.ca == "system") {
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) fail(what, "cannot load the system CA store");
  } else if (SSL_CTX_load_verify_locations(ctx, cfg.ca.c_str(), nullptr) != 1) {
    fail(what, "cannot load CA " + cfg.ca);
  }
  if (!cfg.cert.empty()) {
    loadCertificate(ctx, TlsCertificateConfig{cfg.cert, cfg.key, {}}, what);
  }
  self->description_.push_back(std::string("upstream TLS, CA ") + cfg.ca +
                               (cfg.verify ? ", verified" : ", NOT VERIFIED"));
  clearTlsErrors();
  return self;
}

SSL* TlsContext::newSsl() const {
  SSL* ssl = SSL_new(contexts_[0]);
  if (ssl == nullptr) return nullptr;
  if (server_) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
  }
  return ssl;
}

SSL_CTX* TlsContext::pick(const char* server_name) const {
  std::string name = lower(server_name);
  for (const SniEntry& e : sni_) {
    if (e.pattern == name) return e.ctx;
  }
  for (const SniEntry& e : sni_) {
    // "*.example.com" covers exactly one more label, as certificate wildcards do (RFC 6125).
    if (e.pattern.size() > 2 && e.pattern[0] == '*' && e.pattern[1] == '.') {
      std::string_view suffix(e.pattern.c_str() + 1);
      size_t dot = name.find('.');
      if (dot != std::string::npos && dot > 0 && std::string_view(name).substr(dot) == suffix)
        return e.ctx;
    }
  }
  return nullptr;
}

int TlsContext::onServerName(SSL* ssl, int*, void* arg) noexcept {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == nullptr) return SSL_TLSEXT_ERR_NOACK;
  SSL_CTX* ctx = static_cast<const TlsContext*>(arg)->pick(name);
  if (ctx != nullptr && ctx != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, ctx);
  return SSL_TLSEXT_ERR_OK;  // unknown names get the default certificate
}

std::shared_ptr<const TlsBundle> buildTlsBundle(const Config& config) {
  auto bundle = std::make_shared<TlsBundle>();
  for (const ListenerConfig& l : config.listeners) {
    bundle->listeners.push_back(l.tls ? TlsContext::forListener(*l.tls, "listener " + l.name)
                                      : nullptr);
  }
  for (const auto& [name, u] : config.upstreams) {
    if (u.tls) bundle->upstreams[name] = TlsContext::forUpstream(*u.tls, "upstream " + name);
  }
  return bundle;
}

bool peerIdentity(SSL* ssl, PeerIdentity& out) {
  X509* cert = ssl ? SSL_get0_peer_certificate(ssl) : nullptr;
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return false;
  BIO* b = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  out.subject.assign(p, static_cast<size_t>(n));
  BIO_free(b);
  out.sans.clear();
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
    std::string item;
    if (gn->type == GEN_DNS || gn->type == GEN_EMAIL || gn->type == GEN_URI) {
      const ASN1_STRING* s = gn->d.ia5;
      item = (gn->type == GEN_DNS     ? "DNS:"
              : gn->type == GEN_EMAIL ? "email:"
                                      : "URI:") +
             std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         static_cast<size_t>(ASN1_STRING_length(s)));
    } else if (gn->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* ip = gn->d.iPAddress;
      int len = ASN1_STRING_length(ip);
      char buf[INET6_ADDRSTRLEN] = "";
      if (len == 4 || len == 16)
        inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(ip), buf, sizeof(buf));
      item = std::string("IP:") + buf;
    }
    if (item.empty()) continue;
    // Commas inside values would make the list ambiguous in a header: escape them.
    for (char& c : item)
      if (c == ',' || c == '\r' || c == '\n') c = '_';
    out.sans += (out.sans.empty() ? "" : ", ") + item;
  }
  GENERAL_NAMES_free(sans);
  out.fingerprint = fingerprintOf(cert);
  return true;
}

}  // namespace upgate
