#include "tls/tls_stream.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <mutex>

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

int TlsStream::init() {
  ssl_ = ctx_->newSsl();
  BIO* bio = ssl_ ? BIO_new(bioMethod()) : nullptr;
  if (bio == nullptr) {
    clearTlsErrors();
    return UV_ENOMEM;
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_, bio, bio);
  return 0;
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
  if (failed_) return;
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
    if (!early_.empty()) {
      std::string early = std::move(early_);
      early_.clear();
      if (write(early.data(), early.size()) != 0) return;
    }
  }
  auto* ctx = static_cast<LoopContext*>(tcp_.handle()->loop->data);
  for (;;) {
    int n = SSL_read(ssl_, ctx->plain_buffer, sizeof(ctx->plain_buffer));
    if (n > 0) {
      listener_->onData(ctx->plain_buffer, static_cast<size_t>(n));
      if (tcp_.isClosing()) return;  // the upcall may have closed us
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    if (err == SSL_ERROR_ZERO_RETURN) {  // close_notify: a clean end of the peer's data
      flush();
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
  // frames), so a missing close_notify is not a truncation risk worth failing on.
  listener_->onEof();
}

void TlsStream::fail(int ssl_error) {
  if (failed_) return;
  failed_ = true;
  std::string reason = takeTlsErrors();
  if (ssl_error == SSL_ERROR_SYSCALL && reason.empty()) reason = "connection error";
  long verify = SSL_get_verify_result(ssl_);
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
  if (handshake_done_ && !failed_ && !tcp_.isClosing()) {
    clearTlsErrors();
    SSL_shutdown(ssl_);  // queues close_notify
    clearTlsErrors();
    flush();
  }
  tcp_.shutdown();
}

}  // namespace upgate
