#pragma once
// One uv_tcp_t as a Stream: reads into the loop's shared buffer, writes with uv_try_write first
// and queues only the remainder (design.md §3), watermark edge upcalls, shutdown, close.

#include <uv.h>

#include <cstdint>
#include <string>

#include "net/stream.h"

namespace upgate {

// One read buffer per loop (uSockets' shared receive buffer): an idle connection owns none.
// Stored in loop->data by the worker that owns the loop.
struct LoopContext {
  static constexpr size_t kReadBufferSize = 64 * 1024;
  char read_buffer[kReadBufferSize];
  // TLS: plaintext out of SSL_read (the ciphertext still sits in read_buffer), and ciphertext
  // out of SSL_write/handshakes, flushed to the socket before the SSL call's caller returns.
  char plain_buffer[kReadBufferSize];
  std::string tls_out;
};

class TcpStream final : public Stream {
 public:
  TcpStream() = default;
  TcpStream(const TcpStream&) = delete;
  TcpStream& operator=(const TcpStream&) = delete;
  ~TcpStream() override;

  // uv_tcp_init on loop; listener receives every upcall. Returns a UV code.
  int init(uv_loop_t* loop, StreamListener* listener);
  // TCP_QUICKACK on: ACK at once again (undoes a listener's delay_first_ack when a client may be
  // waiting for the ACK before it sends the rest of a request: Nagle).
  void quickAck();
  uv_tcp_t* handle() { return &tcp_; }
  void setListener(StreamListener* listener) { listener_ = listener; }
  void setHighWater(size_t high) override { high_water_ = high; }
  // TCP_USER_TIMEOUT.
  void watchPeer(uint32_t timeout_ms) override;

  int readStart() override;
  void readStop() override;
  int write(const char* data, size_t len) override;
  int writeLast(const char* data, size_t len) override { return sendLast(data, len, false); }
  int writeFinal(const char* data, size_t len) override { return sendLast(data, len, true); }
  size_t pendingBytes() const override { return pending_; }
  size_t unacknowledgedBytes() const override;
  void shutdown() override;
  void close() override;
  bool isClosing() const override { return closing_; }
  bool isOpen() const override { return initialized_ && !closing_; }
  bool isReading() const { return reading_; }

  // Bytes read and written over the stream's life (for the access log).
  uint64_t bytesRead() const { return bytes_read_; }
  uint64_t bytesWritten() const { return bytes_written_; }

 private:
  struct WriteReq;
  static void onAlloc(uv_handle_t*, size_t, uv_buf_t*) noexcept;
  static void onRead(uv_stream_t*, ssize_t, const uv_buf_t*) noexcept;
  static void onWrite(uv_write_t*, int) noexcept;
  static void onShutdown(uv_shutdown_t*, int) noexcept;
  static void onClose(uv_handle_t*) noexcept;

  void handleRead(ssize_t nread);
  void handleWriteDone(size_t len, int status);
  void handleClosed();
  // send(2) without blocking when nothing is queued: bytes taken, or a negative UV code.
  ssize_t sendNow(const char* data, size_t len, int flags);
  // writeLast, or writeFinal (close_when_sent): the bytes with the FIN.
  int sendLast(const char* data, size_t len, bool close_when_sent);
  // Copies [data, data + len) into a uv_write request (the socket took the rest).
  int queue(const char* data, size_t len);

  uv_tcp_t tcp_{};
  StreamListener* listener_ = nullptr;
  size_t pending_ = 0;
  size_t high_water_ = SIZE_MAX;
  uint64_t bytes_read_ = 0;
  uint64_t bytes_written_ = 0;
  bool initialized_ = false;
  bool reading_ = false;
  bool closing_ = false;
  bool closed_ = false;
  bool shutdown_sent_ = false;
  bool above_high_ = false;
};

}  // namespace upgate
