#include "net/tcp_stream.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/handle.h"

namespace upgate {

// A queued write owns its uv_write_t and a copy of the bytes the socket did not take. It is
// freed in onWrite for every status, UV_ECANCELED included (libuv runs those before close_cb).
struct TcpStream::WriteReq {
  uv_write_t req;
  size_t len;
  char data[1];  // allocated with the request: one malloc per queued write

  static WriteReq* make(const char* bytes, size_t n) {
    void* mem = std::malloc(offsetof(WriteReq, data) + n);
    if (mem == nullptr) std::abort();  // OOM aborts (style.md §2.6); nothing throws here
    auto* w = static_cast<WriteReq*>(mem);
    w->len = n;
    std::memcpy(w->data, bytes, n);
    return w;
  }
};

TcpStream::~TcpStream() {
  assert(!initialized_ || closed_);
}

int TcpStream::init(uv_loop_t* loop, StreamListener* listener) {
  assert(!initialized_ || closed_);  // a closed stream may be reused (next upstream endpoint)
  int rc = uv_tcp_init(loop, &tcp_);
  if (rc != 0) return rc;
  tcp_.data = this;
  listener_ = listener;
  initialized_ = true;
  closing_ = closed_ = reading_ = shutdown_sent_ = above_high_ = false;
  pending_ = 0;
  return 0;
}

void TcpStream::quickAck() {
  uv_os_fd_t fd;
  if (!initialized_ || closing_ || uv_fileno(asHandle(&tcp_), &fd) != 0) return;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

void TcpStream::watchPeer(uint32_t timeout_ms) {
  uv_os_fd_t fd;
  if (!initialized_ || closing_ || uv_fileno(asHandle(&tcp_), &fd) != 0) return;
  // Bytes sent and still unacknowledged after the user timeout end the connection (ETIMEDOUT)
  // instead of after the kernel's retransmission limit (about 15 minutes by default); so does a
  // zero window that long. 0 is the kernel's default again.
  const int ms = static_cast<int>(std::min<uint32_t>(timeout_ms, INT32_MAX));
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
}

size_t TcpStream::unacknowledgedBytes() const {
  uv_os_fd_t fd;
  int queued = 0;  // SIOCOUTQ: the send queue, unsent and unacknowledged
  if (!initialized_ || closing_ ||
      uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd) != 0 ||
      ioctl(fd, SIOCOUTQ, &queued) != 0 || queued < 0) {
    queued = 0;
  }
  return pending_ + static_cast<size_t>(queued);
}

void TcpStream::onAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) noexcept {
  auto* ctx = static_cast<LoopContext*>(h->loop->data);
  *buf = uv_buf_init(ctx->read_buffer, sizeof(ctx->read_buffer));
}

void TcpStream::onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) noexcept {
  ownerOf<TcpStream>(s)->handleRead(nread);
}

void TcpStream::handleRead(ssize_t nread) {
  if (nread == 0 || closing_) return;  // 0 is EAGAIN, not EOF
  if (nread > 0) {
    bytes_read_ += static_cast<uint64_t>(nread);
    auto* ctx = static_cast<LoopContext*>(tcp_.loop->data);
    listener_->onData(ctx->read_buffer, static_cast<size_t>(nread));
    return;
  }
  // EOF or error: no more reads either way.
  uv_read_stop(asStream(&tcp_));
  reading_ = false;
  if (nread == UV_EOF) {
    listener_->onEof();
  } else {
    listener_->onError(static_cast<int>(nread));
  }
}

int TcpStream::readStart() {
  if (closing_) return UV_EPIPE;
  if (reading_) return 0;
  int rc = uv_read_start(asStream(&tcp_), onAlloc, onRead);
  if (rc == 0) reading_ = true;
  return rc;
}

void TcpStream::readStop() {
  if (!reading_ || closing_) return;
  uv_read_stop(asStream(&tcp_));
  reading_ = false;
}

ssize_t TcpStream::sendNow(const char* data, size_t len, int flags) {
  uv_os_fd_t fd = -1;
  if (pending_ != 0 || tcp_.connect_req != nullptr || uv_fileno(asHandle(&tcp_), &fd) != 0) {
    return 0;
  }
  // Fast path: most writes are taken whole by the kernel and nothing is copied. send(2)
  // where uv_try_write would write(2): on a socket, write(2) also goes through the VFS
  // (file-position lock, fsnotify), per call on every message and every fan-out delivery.
  ssize_t n;
  do {
    n = ::send(fd, data, len, flags | MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return n;
  if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
  return -errno;  // libuv's error codes are negated errno values on Unix
}

int TcpStream::write(const char* data, size_t len) {
  if (closing_ || shutdown_sent_) return UV_EPIPE;
  if (len == 0) return 0;
  ssize_t n = sendNow(data, len, 0);
  if (n < 0) return static_cast<int>(n);
  auto done = static_cast<size_t>(n);
  bytes_written_ += done;
  if (done == len) return 0;
  return queue(data + done, len - done);
}

int TcpStream::sendLast(const char* data, size_t len, bool close_when_sent) {
  if (closing_ || shutdown_sent_) return UV_EPIPE;
  // MSG_MORE keeps the bytes in the socket until the shutdown(2) or close(2) right below, which
  // sends them with the FIN in one segment (tcp_send_fin puts the FIN on an unsent tail).
  // Nothing else runs in between, so the hold never outlasts this call.
  ssize_t n = len == 0 ? 0 : sendNow(data, len, MSG_MORE);
  if (n < 0) return static_cast<int>(n);
  auto done = static_cast<size_t>(n);
  bytes_written_ += done;
  if (done == len && pending_ == 0 && close_when_sent) {
    close();  // the kernel owns the bytes now: uv_close cancels only what libuv queued
    return 0;
  }
  if (done < len) {
    int rc = queue(data + done, len - done);
    if (rc != 0) return rc;
  }
  shutdown();  // with bytes queued: uv_shutdown, after they are written
  return 0;
}

int TcpStream::queue(const char* data, size_t len) {
  WriteReq* w = WriteReq::make(data, len);
  w->req.data = this;
  uv_buf_t buf = uv_buf_init(w->data, static_cast<unsigned>(w->len));
  int rc = uv_write(&w->req, asStream(&tcp_), &buf, 1, onWrite);
  if (rc != 0) {
    std::free(w);
    return rc;
  }
  pending_ += w->len;
  if (pending_ > high_water_) above_high_ = true;
  return 0;
}

void TcpStream::onWrite(uv_write_t* req, int status) noexcept {
  auto* w = reinterpret_cast<WriteReq*>(req);  // req is the first member
  auto* self = static_cast<TcpStream*>(req->data);
  size_t len = w->len;
  std::free(w);
  self->handleWriteDone(len, status);
}

void TcpStream::handleWriteDone(size_t len, int status) {
  pending_ -= len;
  if (status == 0) bytes_written_ += len;
  if (closing_) return;
  if (status < 0) {
    listener_->onError(status);
    return;
  }
  if (above_high_ && pending_ <= high_water_ / 2) {
    above_high_ = false;
    listener_->onDrain();
  }
}

void TcpStream::shutdown() {
  if (closing_ || shutdown_sent_) return;
  shutdown_sent_ = true;
  if (pending_ == 0) {
    // Nothing queued (no uv_write outstanding, so libuv's queue is empty too): send the FIN now.
    // uv_shutdown would arm POLLOUT for one loop turn only to call shutdown(2) from there, two
    // epoll_ctl calls per half-close. Errors are ignored as in onShutdown.
    uv_os_fd_t fd;
    if (uv_fileno(asHandle(&tcp_), &fd) == 0) {
      ::shutdown(fd, SHUT_WR);
      return;
    }
  }
  // libuv waits for queued writes before sending FIN. The request is allocated only here, so an
  // idle stream carries none; it is freed in onShutdown, which libuv calls for every outcome
  // (UV_ECANCELED when the handle closes first) before the close callback.
  auto* req = new uv_shutdown_t;
  if (uv_shutdown(req, asStream(&tcp_), onShutdown) != 0) delete req;
}

void TcpStream::onShutdown(uv_shutdown_t* req, int) noexcept {
  // Nothing else to do: a failed shutdown surfaces as a read or write error, or the peer's EOF.
  delete req;
}

void TcpStream::close() {
  if (!initialized_ || closing_) return;
  closing_ = true;
  reading_ = false;
  if (!uv_is_closing(asHandle(&tcp_))) uv_close(asHandle(&tcp_), onClose);
}

void TcpStream::onClose(uv_handle_t* h) noexcept {
  ownerOf<TcpStream>(h)->handleClosed();
}

void TcpStream::handleClosed() {
  closed_ = true;
  listener_->onClosed();  // may free this object: touch nothing after
}

}  // namespace upgate
