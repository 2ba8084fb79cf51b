#pragma once
// Immutable TLS configuration: one per TLS listener (server side, SNI over several
// certificates) or per TLS upstream (client side). Built on the main thread from Config, shared
// read-only by workers; a SIGHUP builds new ones and workers swap them for new connections,
// while established sessions keep the one they started with (they hold a shared_ptr).

#include <openssl/ssl.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"

namespace upgate {

// A certificate, key or setting that OpenSSL refused, with the file and OpenSSL's reason.
class TlsSetupError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TicketKeys;

class TlsContext {
 public:
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Throws TlsSetupError. `what` names the owner in messages ("listener secure").
  static std::shared_ptr<const TlsContext> forListener(const ListenerTlsConfig& cfg,
                                                       const std::string& what);
  static std::shared_ptr<const TlsContext> forUpstream(const UpstreamTlsConfig& cfg,
                                                       const std::string& what);

  bool isServer() const { return server_; }
  // A new SSL in server or client mode; nullptr on allocation failure. The SSL holds its own
  // reference to the SSL_CTX; the TlsContext must outlive the handshake (callbacks use it).
  SSL* newSsl() const;
  const UpstreamTlsConfig* upstream() const { return upstream_ ? &*upstream_ : nullptr; }
  const std::optional<TlsClientAuthConfig>& clientAuth() const { return client_auth_; }
  // After a TLS 1.3 handshake, records are protected by upgate and the SSL object is freed
  // (`record_offload` of the listener or upstream).
  bool recordOffload() const { return record_offload_; }
  // One line per certificate: names and expiry, for the start-up log.
  const std::vector<std::string>& describe() const { return description_; }

 private:
  struct SniEntry {
    std::string pattern;  // "example.com" or "*.example.com", lower case
    SSL_CTX* ctx;
  };
  TlsContext() = default;
  static int onServerName(SSL* ssl, int* alert, void* arg) noexcept;
  SSL_CTX* pick(const char* server_name) const;

  bool server_ = false;
  bool record_offload_ = false;
  std::vector<SSL_CTX*> contexts_;  // contexts_[0] is the default certificate's
  std::vector<SniEntry> sni_;
  std::shared_ptr<TicketKeys> tickets_;
  std::optional<UpstreamTlsConfig> upstream_;
  std::optional<TlsClientAuthConfig> client_auth_;
  std::vector<std::string> description_;
};

// Every TLS context one Config needs, built together on the main thread (at start and on
// SIGHUP) and handed to workers as one immutable unit.
struct TlsBundle {
  std::vector<std::shared_ptr<const TlsContext>> listeners;  // by listener index; null = plain
  std::map<std::string, std::shared_ptr<const TlsContext>> upstreams;  // TLS upstreams only
};
// Throws TlsSetupError naming the listener or upstream, the file and OpenSSL's reason.
std::shared_ptr<const TlsBundle> buildTlsBundle(const Config& config);

// The verified identity of a TLS peer (mTLS client certificates).
struct PeerIdentity {
  std::string subject;      // RFC 2253 form
  std::string sans;         // "DNS:a.example, IP:10.0.0.1, email:x@y" (comma separated)
  std::string fingerprint;  // SHA-256 of the DER certificate, lower-case hex
};
bool peerIdentity(SSL* ssl, PeerIdentity& out);

}  // namespace upgate
