#pragma once
// TLS over a TcpStream, as a Stream: proxy/ never knows whether a leg is encrypted.
//
// Ciphertext does not go through BIO_s_mem pairs: a small BIO of our own reads straight from the
// bytes TcpStream just read (the loop's shared buffer) and writes into the loop's scratch
// buffer, which is flushed to the socket after each SSL call. So, with SSL_MODE_RELEASE_BUFFERS,
// an idle TLS connection owns no data buffer at all (memory BIOs keep their high-water
// allocation for the life of the connection). Plaintext is read into a second per-loop buffer.
//
// Record offload (TLS 1.3, `record_offload` of a listener or upstream): once OpenSSL has
// finished the handshake, the stream takes the traffic secrets it logged, frees the SSL object
// and protects records itself (Tls13Records), answering KeyUpdates and alerts as RFC 8446 asks.
// An idle offloaded connection then costs a few hundred bytes instead of OpenSSL's ~13 KiB.

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "net/tcp_stream.h"
#include "tls/tls13_records.h"
#include "tls/tls_context.h"

namespace upgate {

class TlsStream final : public Stream, private StreamListener {
 public:
  TlsStream(TcpStream& tcp, std::shared_ptr<const TlsContext> ctx, StreamListener* listener);
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;
  ~TlsStream() override;

  // Returns 0, or UV_ENOMEM if OpenSSL could not make the SSL object.
  int init();
  // Client side only: SNI + the name to verify (host name or IP literal), then the ClientHello.
  int connect(const std::string& server_name);

  bool handshakeDone() const { return handshake_done_; }
  // Records are protected by upgate itself: the SSL object is gone (ssl() is null).
  bool offloaded() const { return records_ != nullptr; }
  SSL* ssl() const { return ssl_; }
  // The verified client certificate's identity (mTLS listeners), also once offloaded.
  bool peerIdentity(PeerIdentity& out) const;
  const std::shared_ptr<const TlsContext>& ctx() const { return ctx_; }
  // Why the last TLS failure happened (OpenSSL's reasons, verify result), for logs.
  const std::string& errorDetail() const { return error_; }

  int readStart() override { return tcp_.readStart(); }
  void readStop() override { tcp_.readStop(); }
  int write(const char* data, size_t len) override;
  size_t pendingBytes() const override { return tcp_.pendingBytes() + early_.size(); }
  size_t unacknowledgedBytes() const override { return tcp_.unacknowledgedBytes() + early_.size(); }
  void setHighWater(size_t high) override { tcp_.setHighWater(high); }
  void watchPeer(uint32_t timeout_ms) override { tcp_.watchPeer(timeout_ms); }
  bool eofAuthenticated() const override { return peer_closed_; }
  void shutdown() override;
  void close() override { tcp_.close(); }
  bool isClosing() const override { return tcp_.isClosing(); }
  bool isOpen() const override { return tcp_.isOpen(); }

 private:
  // Upcalls from the TcpStream (ciphertext side).
  void onData(const char* data, size_t len) override;
  void onEof() override;
  void onError(int uv_err) override { listener_->onError(uv_err); }
  void onDrain() override { listener_->onDrain(); }
  void onClosed() override { listener_->onClosed(); }

  static int bioRead(BIO* b, char* out, int len) noexcept;
  static int bioWrite(BIO* b, const char* in, int len) noexcept;
  static long bioCtrl(BIO* b, int cmd, long num, void* ptr) noexcept;
  static BIO_METHOD* bioMethod();

 public:
  // The key-log callback of contexts with record offload: keeps this connection's
  // application traffic secrets until the handshake ends.
  static void onKeyLog(const SSL* ssl, const char* line) noexcept;

 private:
  struct Secrets;
  bool handOver();
  void readRecords(const char* data, size_t len);
  bool acceptableSize(size_t size);
  bool onRecord(const uint8_t* record, size_t size);
  bool onHandshakeMessages(const uint8_t* data, size_t size);
  bool sendKeyUpdate(bool request);
  int writeRecords(const char* data, size_t len);
  void recordFail(uint8_t alert, const std::string& why);

  void cycle();
  int flush();
  void fail(int ssl_error);
  std::string& scratch();

  TcpStream& tcp_;
  std::shared_ptr<const TlsContext> ctx_;
  StreamListener* listener_;
  SSL* ssl_ = nullptr;
  const char* in_ = nullptr;  // ciphertext being fed to OpenSSL (borrowed for one onData)
  size_t in_len_ = 0;
  std::unique_ptr<Secrets> secrets_;       // during the handshake, when offload may follow
  std::unique_ptr<Tls13Records> records_;  // after the handshake, when offloaded
  std::unique_ptr<PeerIdentity> peer_;     // offloaded with a verified client certificate
  std::string partial_;    // offloaded: the bytes of a record not yet whole (empty when idle)
  std::string handshake_;  // offloaded: post-handshake message bytes up to the record's end
  std::string early_;      // plaintext written before the handshake finished
  std::string error_;
  bool handshake_done_ = false;
  bool failed_ = false;
  bool close_sent_ = false;   // offloaded: our close_notify went out
  bool peer_closed_ = false;  // close_notify received (the listener had its onEof)
};

}  // namespace upgate
