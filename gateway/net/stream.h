#pragma once
// The byte-stream seam between the proxy and the transport. proxy/ talks only to Stream, so a
// TLS leg (a Stream decorator over TcpStream) and a plain TCP leg look the same to it.

#include <cstddef>
#include <cstdint>

namespace upgate {

// Upcalls from a Stream to whoever owns it. All run on the stream's loop thread. After any
// upcall the callee may have closed the stream; callers re-check before touching it again.
class StreamListener {
 public:
  virtual ~StreamListener() = default;
  // Bytes read. Borrowed: valid only during the call (they live in the loop's shared buffer).
  virtual void onData(const char* data, size_t len) = 0;
  // The peer finished sending (FIN). Writing may continue until shutdown().
  virtual void onEof() = 0;
  // A read or write failed (a negative UV_E* code). The stream stays open until close().
  virtual void onError(int uv_err) = 0;
  // Pending bytes fell from above the high mark to the low mark (high / 2).
  virtual void onDrain() = 0;
  // TLS only: the handshake completed (before any application data is passed up).
  virtual void onHandshakeDone() {}
  // The handle finished closing; the owner may free the stream's memory now.
  virtual void onClosed() = 0;
};

class Stream {
 public:
  virtual ~Stream() = default;
  virtual int readStart() = 0;
  virtual void readStop() = 0;
  // Queues len bytes, copying only what the socket did not take at once. Order is preserved.
  // Returns 0 or a negative UV_E* code (then the stream is unusable; onError is not called).
  virtual int write(const char* data, size_t len) = 0;
  // Bytes accepted by write() and not yet handed to the kernel.
  virtual size_t pendingBytes() const = 0;
  // Bytes accepted by write() that the peer has not acknowledged yet: pendingBytes() plus what
  // the kernel holds unsent or unacknowledged. While nothing is written, a fall means the peer
  // is taking data (pendingBytes() alone falls only when a whole queued write completes).
  virtual size_t unacknowledgedBytes() const { return pendingBytes(); }
  // Sends FIN after every queued byte was written. Idempotent.
  virtual void shutdown() = 0;
  // write() then shutdown(): the last bytes towards this peer. A transport may send them and the
  // FIN in one segment.
  virtual int writeLast(const char* data, size_t len) {
    int rc = write(data, len);
    if (rc == 0) shutdown();
    return rc;
  }
  // writeLast() towards a peer that will send nothing more (its WebSocket close frame came): a
  // transport may close at once when the kernel takes every byte, since close(2) sends them and
  // the FIN as shutdown(2) would and the peer's FIN then needs no read. isOpen() tells the caller
  // which happened.
  virtual int writeFinal(const char* data, size_t len) { return writeLast(data, len); }
  // Pending bytes above `high` arm one onDrain() upcall for when they fall to high / 2.
  virtual void setHighWater(size_t high) = 0;
  // Lets the transport find a dead peer by itself, for when the protocol above cannot ask it
  // (a ping held back behind a frame in progress): bytes written and not acknowledged within
  // timeout_ms end the stream with an error (UV_ETIMEDOUT, from a read or a write). 0 turns it
  // off again. A transport without such a mechanism ignores it.
  virtual void watchPeer(uint32_t timeout_ms) { (void)timeout_ms; }
  // After onEof(): whether the peer's end of data is authenticated (TLS: its close_notify came,
  // not a bare TCP FIN that anyone on the path can forge). Plain TCP has nothing better: true.
  // A body delimited by the end of the connection is complete only then (RFC 9112 §9.8).
  virtual bool eofAuthenticated() const { return true; }
  // Idempotent; onClosed() follows from the loop.
  virtual void close() = 0;
  virtual bool isClosing() const = 0;
  virtual bool isOpen() const = 0;
};

}  // namespace upgate
