#include "tls/tls_stream.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <mutex>
#include <string_view>

#include "tls/tls_error.h"

namespace upgate {

TlsStream::TlsStream(TcpStream& tcp, std::shared_ptr<const TlsContext> ctx,
                     StreamListener* listener)
    : tcp_(tcp), ctx_(std::move(ctx)), listener_(listener) {
  tcp_.setListener(this);
}

TlsStream::~TlsStream() {
  if (ssl_) SSL_free(ssl_);  // frees the BIO too
}

BIO_METHOD* TlsStream::bioMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "upgate stream");
    BIO_meth_set_read(m, bioRead);
    BIO_meth_set_write(m, bioWrite);
    BIO_meth_set_ctrl(m, bioCtrl);
    BIO_meth_set_create(m, [](BIO* b) noexcept {
      BIO_set_init(b, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

struct TlsStream::Secrets {
  uint8_t client[Tls13Records::kMaxSecret];
  uint8_t server[Tls13Records::kMaxSecret];
  size_t client_size = 0;
  size_t server_size = 0;
  Secrets() = default;
  Secrets(const Secrets&) = delete;
  Secrets& operator=(const Secrets&) = delete;
  ~Secrets() {
    OPENSSL_cleanse(client, sizeof(client));
    OPENSSL_cleanse(server, sizeof(server));
  }
};

int TlsStream::init() {
  ssl_ = ctx_->newSsl();
  BIO* bio = ssl_ ? BIO_new(bioMethod()) : nullptr;
  if (bio == nullptr) {
    clearTlsErrors();
    return UV_ENOMEM;
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_, bio, bio);
  if (ctx_->recordOffload()) {
    secrets_ = std::make_unique<Secrets>();
    SSL_set_app_data(ssl_, this);
  }
  return 0;
}

void TlsStream::onKeyLog(const SSL* ssl, const char* line) noexcept {
  // NSS key log format: "<LABEL> <client random, hex> <secret, hex>".
  auto* self = static_cast<TlsStream*>(SSL_get_app_data(ssl));
  if (self == nullptr || !self->secrets_) return;
  std::string_view text(line);
  size_t sp1 = text.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : text.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return;
  std::string_view label = text.substr(0, sp1);
  std::string_view hex = text.substr(sp2 + 1);
  Secrets& s = *self->secrets_;
  uint8_t* out = label == "CLIENT_TRAFFIC_SECRET_0"   ? s.client
                 : label == "SERVER_TRAFFIC_SECRET_0" ? s.server
                                                      : nullptr;
  if (out == nullptr || hex.size() % 2 != 0 || hex.size() / 2 > Tls13Records::kMaxSecret) return;
  auto digit = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  for (size_t i = 0; i < hex.size() / 2; ++i) {
    int hi = digit(hex[2 * i]);
    int lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  (out == s.client ? s.client_size : s.server_size) = hex.size() / 2;
}

// After SSL_do_handshake returned 1: moves the connection to Tls13Records and frees the SSL
// object, or returns false and leaves it with OpenSSL (TLS 1.2, a CCM suite, anything
// unexpected). OpenSSL reads records one at a time (no read-ahead), so nothing it read is past
// the peer's Finished: the read sequence starts at 0. A server's last step wrote the session
// tickets (still in the scratch buffer) under the new write key, so its write sequence starts at
// that many records, which the last of them confirms; a client's last step wrote its Finished,
// under the handshake key, so its write sequence starts at 0.
bool TlsStream::handOver() {
  std::unique_ptr<Secrets> s = std::move(secrets_);
  if (SSL_version(ssl_) != TLS1_3_VERSION || SSL_has_pending(ssl_)) return false;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  std::optional<Tls13Records::Suite> suite =
      cipher ? Tls13Records::suiteFor(SSL_CIPHER_get_protocol_id(cipher)) : std::nullopt;
  if (!suite || s->client_size != Tls13Records::secretSize(*suite) ||
      s->server_size != s->client_size) {
    return false;
  }
  bool server = ctx_->isServer();
  const std::string& out = scratch();
  auto* p = reinterpret_cast<const uint8_t*>(out.data());
  size_t left = server ? out.size() : 0;
  uint64_t count = 0;
  const uint8_t* last = nullptr;
  size_t last_size = 0;
  while (left > 0) {
    size_t size = Tls13Records::recordSize(p, left);
    if (size == 0 || size > left || p[0] != Tls13Records::kAppData) return false;
    last = p;
    last_size = size;
    ++count;
    p += size;
    left -= size;
  }
  auto records = std::make_unique<Tls13Records>(*suite, server ? s->client : s->server,
                                                server ? s->server : s->client, count);
  if (!records->ok() || (last && !records->sealedAt(last, last_size, count - 1))) {
    clearTlsErrors();
    return false;
  }
  if (server && ctx_->clientAuth()) {  // the identity outlives the SSL object that proves it
    PeerIdentity id;
    if (::upgate::peerIdentity(ssl_, id)) peer_ = std::make_unique<PeerIdentity>(std::move(id));
  }
  SSL_free(ssl_);  // and the BIO
  ssl_ = nullptr;
  records_ = std::move(records);
  return true;
}

bool TlsStream::peerIdentity(PeerIdentity& out) const {
  if (ssl_) return ::upgate::peerIdentity(ssl_, out);
  if (!peer_) return false;
  out = *peer_;
  return true;
}

int TlsStream::connect(const std::string& server_name) {
  in6_addr ip{};
  bool literal = inet_pton(AF_INET, server_name.c_str(), &ip) == 1 ||
                 inet_pton(AF_INET6, server_name.c_str(), &ip) == 1;
  const UpstreamTlsConfig* cfg = ctx_->upstream();
  if (!literal) SSL_set_tlsext_host_name(ssl_, server_name.c_str());  // SNI is for names only
  if (cfg && cfg->verify) {
    if (literal) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), server_name.c_str());
    } else {
      SSL_set_hostflags(ssl_, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(ssl_, server_name.c_str());
    }
  }
  cycle();  // writes the ClientHello
  return failed_ ? UV_EPROTO : 0;
}

// ---- The BIO: reads borrow TcpStream's bytes, writes go to the loop's scratch buffer ----------

int TlsStream::bioRead(BIO* b, char* out, int len) noexcept {
  auto* self = static_cast<TlsStream*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (self->in_len_ == 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = std::min(self->in_len_, static_cast<size_t>(len));
  std::memcpy(out, self->in_, n);
  self->in_ += n;
  self->in_len_ -= n;
  return static_cast<int>(n);
}

int TlsStream::bioWrite(BIO* b, const char* in, int len) noexcept {
  auto* self = static_cast<TlsStream*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  self->scratch().append(in, static_cast<size_t>(len));
  return len;
}

long TlsStream::bioCtrl(BIO*, int cmd, long, void*) noexcept {
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

// The loop's buffer for records on their way to a socket. Every operation that fills it
// empties it again (flush) before it returns or makes an upcall: streams share it.
std::string& TlsStream::scratch() {
  return static_cast<LoopContext*>(tcp_.handle()->loop->data)->tls_out;
}

int TlsStream::flush() {
  std::string& out = scratch();
  if (out.empty()) return 0;
  int rc = tcp_.write(out.data(), out.size());
  out.clear();
  return rc;
}

// ---- Ciphertext in, plaintext up ---------------------------------------------------------------

void TlsStream::onData(const char* data, size_t len) {
  if (failed_ || peer_closed_) return;  // nothing counts after close_notify (RFC 8446 §6.1)
  if (records_) {
    readRecords(data, len);
    return;
  }
  in_ = data;
  in_len_ = len;
  cycle();
  // OpenSSL pulls whole records into its own buffer, and cycle() reads until WANT_READ, so
  // nothing of this read is left over once it returns.
  in_ = nullptr;
  in_len_ = 0;
}

void TlsStream::cycle() {
  clearTlsErrors();
  if (!handshake_done_) {
    int rc = SSL_do_handshake(ssl_);
    if (rc != 1) {
      int err = SSL_get_error(ssl_, rc);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        if (flush() != 0) fail(SSL_ERROR_SYSCALL);
        return;
      }
      fail(err);
      return;
    }
    handshake_done_ = true;
    if (secrets_ && handOver()) {
      const char* rest = in_;
      size_t rest_len = in_len_;
      in_ = nullptr;
      in_len_ = 0;
      if (flush() != 0) {  // the session tickets
        fail(SSL_ERROR_SYSCALL);
        return;
      }
      if (!early_.empty()) {
        std::string early = std::move(early_);
        early_.clear();
        if (write(early.data(), early.size()) != 0) return;
      }
      listener_->onHandshakeDone();
      if (tcp_.isClosing()) return;  // the upcall may have closed us
      if (rest_len > 0) readRecords(rest, rest_len);
      return;
    }
    secrets_.reset();
    // Our last handshake flight (a client's Finished, a server's tickets) goes out before any
    // upcall: the scratch buffer is the loop's, and a write to another stream from the upcall
    // would send it on that stream's socket.
    if (flush() != 0) {
      fail(SSL_ERROR_SYSCALL);
      return;
    }
    if (!early_.empty()) {
      std::string early = std::move(early_);
      early_.clear();
      if (write(early.data(), early.size()) != 0) return;
    }
    listener_->onHandshakeDone();
    if (tcp_.isClosing()) return;
  }
  auto* ctx = static_cast<LoopContext*>(tcp_.handle()->loop->data);
  for (;;) {
    int n = SSL_read(ssl_, ctx->plain_buffer, sizeof(ctx->plain_buffer));
    if (n > 0) {
      // What OpenSSL wrote while reading (tickets after a client's Finished, an alert) leaves
      // before the upcall, for the same reason as above.
      if (flush() != 0) {
        fail(SSL_ERROR_SYSCALL);
        return;
      }
      listener_->onData(ctx->plain_buffer, static_cast<size_t>(n));
      if (tcp_.isClosing()) return;  // the upcall may have closed us
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    if (err == SSL_ERROR_ZERO_RETURN) {  // close_notify: a clean end of the peer's data
      flush();
      peer_closed_ = true;
      listener_->onEof();
      return;
    }
    fail(err);
    return;
  }
  // Session tickets, key updates: whatever OpenSSL produced while reading goes out now.
  if (flush() != 0) fail(SSL_ERROR_SYSCALL);
}

void TlsStream::onEof() {
  // A TCP FIN without close_notify: for WebSocket the frames carry their own end (close
  // frames), so a missing close_notify is not a truncation risk worth failing on; an HTTP body
  // delimited by the end of the connection is (eofAuthenticated() says which end this was).
  // After a close_notify the listener has had its end of data already.
  if (!peer_closed_) listener_->onEof();
}

void TlsStream::fail(int ssl_error) {
  if (failed_) return;
  failed_ = true;
  std::string reason = takeTlsErrors();
  if (ssl_error == SSL_ERROR_SYSCALL && reason.empty()) reason = "connection error";
  long verify = ssl_ ? SSL_get_verify_result(ssl_) : X509_V_OK;
  if (verify != X509_V_OK && !handshake_done_) {
    reason += std::string(reason.empty() ? "" : "; ") +
              "certificate verify failed: " + X509_verify_cert_error_string(verify);
  }
  error_ = (handshake_done_ ? "TLS error: " : "TLS handshake failed: ") +
           (reason.empty() ? "error " + std::to_string(ssl_error) : reason);
  flush();  // the alert, if OpenSSL wrote one
  listener_->onError(UV_EPROTO);
}

// ---- Plaintext out -----------------------------------------------------------------------------

int TlsStream::write(const char* data, size_t len) {
  if (failed_ || tcp_.isClosing()) return UV_EPIPE;
  if (!handshake_done_) {
    early_.append(data, len);  // sent once the handshake completes
    return 0;
  }
  if (records_) return writeRecords(data, len);
  clearTlsErrors();
  while (len > 0) {
    // The BIO never blocks, so SSL_write takes everything; PARTIAL_WRITE keeps each call to
    // whole records without copying the input first.
    int n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(len, 1 << 30)));
    if (n <= 0) {
      error_ = "TLS write failed: " + takeTlsErrors();
      flush();
      return UV_EPROTO;
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
  return flush();
}

void TlsStream::shutdown() {
  if (records_) {
    // Once: nothing may follow a close_notify (a second call would seal another record).
    if (!close_sent_ && !failed_ && !tcp_.isClosing()) {
      static const uint8_t kCloseNotify[] = {1, Tls13Records::kCloseNotify};  // warning level
      if (records_->seal(Tls13Records::kAlert, kCloseNotify, sizeof(kCloseNotify), scratch())) {
        close_sent_ = true;
        flush();
      }
    }
  } else if (handshake_done_ && !failed_ && !tcp_.isClosing()) {
    clearTlsErrors();
    SSL_shutdown(ssl_);  // queues close_notify
    clearTlsErrors();
    flush();
  }
  tcp_.shutdown();
}

// ---- Offloaded records (Tls13Records) ----------------------------------------------------------

void TlsStream::readRecords(const char* data, size_t len) {
  auto* p = reinterpret_cast<const uint8_t*>(data);
  // Moves bytes into partial_ until it holds `want`; true once it does.
  auto fill = [&](size_t want) {
    size_t take = std::min(len, want - partial_.size());
    partial_.append(reinterpret_cast<const char*>(p), take);
    p += take;
    len -= take;
    return partial_.size() == want;
  };
  if (!partial_.empty()) {  // finish the record the last read began: its header, then its body
    if (partial_.size() < Tls13Records::kHeaderSize && !fill(Tls13Records::kHeaderSize)) return;
    size_t size = Tls13Records::recordSize(reinterpret_cast<const uint8_t*>(partial_.data()),
                                           partial_.size());
    if (!acceptableSize(size) || !fill(size)) return;
    std::string record;
    record.swap(partial_);  // an idle connection keeps no buffer
    if (!onRecord(reinterpret_cast<const uint8_t*>(record.data()), record.size())) return;
  }
  while (len > 0) {
    size_t size = Tls13Records::recordSize(p, len);
    if (!acceptableSize(size)) return;
    if (size == 0 || size > len) {
      partial_.assign(reinterpret_cast<const char*>(p), len);
      return;
    }
    if (!onRecord(p, size)) return;
    p += size;
    len -= size;
  }
}

// A header announcing a longer record than §5.2 allows ends the connection before its body is
// buffered. `size` 0 = no whole header yet.
bool TlsStream::acceptableSize(size_t size) {
  if (size == 0 || size - Tls13Records::kHeaderSize <= Tls13Records::kMaxCiphertext) return true;
  recordFail(Tls13Records::kRecordOverflow, "record longer than 2^14 + 256 bytes");
  return false;
}

// One whole record. Returns false once the connection is done with (error, close, or the
// listener closed it from an upcall).
bool TlsStream::onRecord(const uint8_t* record, size_t size) {
  if (peer_closed_) return false;
  auto* ctx = static_cast<LoopContext*>(tcp_.handle()->loop->data);
  auto* plain = reinterpret_cast<uint8_t*>(ctx->plain_buffer);
  static_assert(sizeof(ctx->plain_buffer) >= Tls13Records::kMaxCiphertext);
  Tls13Records::Opened opened;
  if (uint8_t alert = records_->open(record, size, plain, opened)) {
    recordFail(alert, alert == Tls13Records::kBadRecordMac     ? "record failed authentication"
                      : alert == Tls13Records::kRecordOverflow ? "record longer than 2^14 bytes"
                                                               : "unexpected record type");
    return false;
  }
  if (opened.type != Tls13Records::kHandshake && !handshake_.empty()) {
    // §5.1: a handshake message must not be interleaved with other record types.
    recordFail(Tls13Records::kUnexpectedMessage, "handshake message interleaved");
    return false;
  }
  switch (opened.type) {
    case Tls13Records::kAppData:
      if (opened.size > 0) listener_->onData(ctx->plain_buffer, opened.size);
      return !failed_ && !tcp_.isClosing();
    case Tls13Records::kAlert:
      if (opened.size != 2) {
        recordFail(Tls13Records::kDecodeError, "malformed alert");
        return false;
      }
      if (plain[1] == Tls13Records::kCloseNotify) {
        peer_closed_ = true;
        listener_->onEof();
        return false;
      }
      if (plain[1] == 90) return true;  // user_canceled: close_notify follows (§6.1)
      failed_ = true;
      error_ = "TLS alert received: " + std::string(SSL_alert_desc_string_long(plain[1]));
      listener_->onError(UV_EPROTO);
      return false;
    case Tls13Records::kHandshake:
      if (opened.size == 0) {
        recordFail(Tls13Records::kUnexpectedMessage, "empty handshake record");
        return false;
      }
      return onHandshakeMessages(plain, opened.size);
    default:
      recordFail(Tls13Records::kUnexpectedMessage, "unexpected content type");
      return false;
  }
}

// Post-handshake messages (§4.6): KeyUpdate both ways, and NewSessionTicket from a server,
// which a client leg drops (upstream sessions are not resumed). upgate asks for no
// post-handshake authentication. Messages may span records, but one that precedes a key change
// must end its record (§5.1).
bool TlsStream::onHandshakeMessages(const uint8_t* data, size_t size) {
  constexpr uint8_t kNewSessionTicket = 4;
  constexpr uint8_t kKeyUpdate = 24;
  // The largest NewSessionTicket (§4.6.1): lifetime, age_add, nonce<0..255>,
  // ticket<1..2^16-1>, extensions<0..2^16-1>.
  constexpr size_t kMaxMessage = 4 + 4 + (1 + 255) + (2 + 65535) + (2 + 65535);
  handshake_.append(reinterpret_cast<const char*>(data), size);
  auto* base = reinterpret_cast<const uint8_t*>(handshake_.data());
  size_t used = 0;
  for (;;) {
    const uint8_t* m = base + used;
    size_t left = handshake_.size() - used;
    if (left < 4) break;  // the rest comes in the next record
    size_t body = size_t{m[1]} << 16 | size_t{m[2]} << 8 | m[3];
    if (m[0] == kNewSessionTicket && !ctx_->isServer()) {
      if (body > kMaxMessage) {
        recordFail(Tls13Records::kDecodeError, "NewSessionTicket too long");
        return false;
      }
      if (left < 4 + body) break;
      used += 4 + body;
      continue;
    }
    if (m[0] != kKeyUpdate) {
      recordFail(Tls13Records::kUnexpectedMessage, "unexpected post-handshake message");
      return false;
    }
    if (body != 1) {
      recordFail(Tls13Records::kDecodeError, "malformed KeyUpdate");
      return false;
    }
    if (left < 5) break;
    if (m[4] > 1) {
      recordFail(47 /* illegal_parameter */, "KeyUpdate request_update out of range");
      return false;
    }
    if (left != 5) {  // handshake_ holds everything up to the end of this record
      recordFail(Tls13Records::kUnexpectedMessage, "data after KeyUpdate in its record");
      return false;
    }
    // §4.6.3: answer a request with our own KeyUpdate before any more application data; after
    // our close_notify nothing more may be sent (§6.1), so the request goes unanswered.
    bool answer = m[4] == 1 && !close_sent_;
    used += 5;
    if (!records_->nextReadKey() || (answer && !sendKeyUpdate(false))) {
      recordFail(Tls13Records::kInternalError, "key update failed");
      return false;
    }
  }
  handshake_.erase(0, used);
  if (handshake_.empty()) std::string().swap(handshake_);  // an idle connection keeps no buffer
  return true;
}

bool TlsStream::sendKeyUpdate(bool request) {
  const uint8_t msg[] = {24, 0, 0, 1, static_cast<uint8_t>(request ? 1 : 0)};
  if (!records_->seal(Tls13Records::kHandshake, msg, sizeof(msg), scratch())) return false;
  if (!records_->nextWriteKey()) {
    scratch().clear();  // never left for the loop's next connection to send
    return false;
  }
  return flush() == 0;
}

int TlsStream::writeRecords(const char* data, size_t len) {
  if (close_sent_) return UV_EPIPE;  // nothing follows close_notify (RFC 8446 §6.1)
  std::string& out = scratch();
  while (len > 0) {
    if (records_->writeKeyWorn() && !sendKeyUpdate(false)) {
      error_ = "TLS write failed: key update failed";
      out.clear();
      return UV_EPROTO;
    }
    size_t chunk = std::min(len, Tls13Records::kMaxPlaintext);
    if (!records_->seal(Tls13Records::kAppData, reinterpret_cast<const uint8_t*>(data), chunk,
                        out)) {
      error_ = "TLS write failed: " + takeTlsErrors();
      flush();
      return UV_EPROTO;
    }
    data += chunk;
    len -= chunk;
  }
  return flush();
}

// A fatal alert (§6.2), then the error upcall.
void TlsStream::recordFail(uint8_t alert, const std::string& why) {
  if (failed_) return;
  failed_ = true;
  const uint8_t msg[] = {2, alert};
  // Nothing follows our close_notify (RFC 8446 §6.1), not even an alert.
  if (!close_sent_ && records_->seal(Tls13Records::kAlert, msg, sizeof(msg), scratch())) {
    flush();
  }
  clearTlsErrors();
  error_ = "TLS error: " + why;
  listener_->onError(UV_EPROTO);
}

}  // namespace upgate
