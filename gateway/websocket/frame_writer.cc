#include "websocket/frame_writer.h"

#include <pthread.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "websocket/close_code.h"
#include "websocket/utf8.h"

namespace upgate {

namespace {

// Per-thread pool of kernel random bytes for masking keys (see maskingKey() in the header).
struct KeyPool {
  uint8_t bytes[1024];
  size_t pos = sizeof bytes;  // starts empty: filled on first use, so idle threads never call
};

thread_local KeyPool t_key_pool;

// A child of fork() must not reuse keys its parent will also use; only the forking thread exists
// in the child, so emptying that thread's pool is enough.
void emptyPoolInChild() {
  t_key_pool.pos = sizeof t_key_pool.bytes;
}

void refill(KeyPool& pool) {
  static const int registered = pthread_atfork(nullptr, nullptr, emptyPoolInChild);
  (void)registered;
  size_t got = 0;
  while (got < sizeof pool.bytes) {
    const ssize_t n = getrandom(pool.bytes + got, sizeof pool.bytes - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      std::fprintf(stderr, "upgate: getrandom failed (%s); cannot make WebSocket masking keys\n",
                   std::strerror(errno));
      std::abort();
    }
  }
  pool.pos = 0;
}

}  // namespace

size_t writeFrameHeader(char* out, uint8_t opcode, bool fin, bool rsv1, uint64_t len,
                        const uint8_t* mask_or_null) {
  auto* o = reinterpret_cast<uint8_t*>(out);
  o[0] = static_cast<uint8_t>((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0F));
  const uint8_t mask_bit = mask_or_null != nullptr ? 0x80 : 0;
  size_t n;
  if (len < 126) {
    o[1] = static_cast<uint8_t>(mask_bit | len);
    n = 2;
  } else if (len <= 0xFFFF) {
    o[1] = static_cast<uint8_t>(mask_bit | 126);
    o[2] = static_cast<uint8_t>(len >> 8);
    o[3] = static_cast<uint8_t>(len);
    n = 4;
  } else {
    o[1] = static_cast<uint8_t>(mask_bit | 127);
    for (unsigned i = 0; i < 8; ++i) {
      o[2 + i] = static_cast<uint8_t>(len >> (56 - 8 * i));
    }
    n = 10;
  }
  if (mask_or_null != nullptr) {
    std::memcpy(o + n, mask_or_null, 4);
    n += 4;
  }
  return n;
}

void maskingKey(uint8_t out[4]) {
  KeyPool& pool = t_key_pool;
  if (pool.pos + 4 > sizeof pool.bytes) {
    refill(pool);
  }
  std::memcpy(out, pool.bytes + pool.pos, 4);
  pool.pos += 4;
}

size_t writeControlFrame(char* out, uint8_t opcode, std::string_view payload,
                         const uint8_t* mask_or_null) {
  if (!isControlOpcode(opcode) || payload.size() > kMaxControlPayload) {
    return 0;
  }
  const size_t h = writeFrameHeader(out, opcode, true, false, payload.size(), mask_or_null);
  if (!payload.empty()) {  // memcpy from a null data() is undefined even for 0 bytes
    std::memcpy(out + h, payload.data(), payload.size());
  }
  if (mask_or_null != nullptr) {
    applyMask(out + h, payload.size(), mask_or_null, 0);
  }
  return h + payload.size();
}

size_t writeCloseFrame(char* out, uint16_t code, std::string_view reason,
                       const uint8_t* mask_or_null) {
  char payload[kMaxControlPayload];
  size_t n = 0;
  if (code != 0 && code != close_code::kNoStatus) {
    payload[0] = static_cast<char>(code >> 8);
    payload[1] = static_cast<char>(code & 0xFF);
    const size_t keep = utf8TruncationPoint(reason, kMaxControlPayload - 2);
    if (keep > 0) {
      std::memcpy(payload + 2, reason.data(), keep);
    }
    n = 2 + keep;
  }
  return writeControlFrame(out, opcode::kClose, std::string_view(payload, n), mask_or_null);
}

namespace {

std::string controlFrame(uint8_t opcode, std::string_view payload, bool masked) {
  uint8_t key[4];
  if (masked) {
    maskingKey(key);
  }
  char frame[kMaxControlFrame];
  const size_t n = writeControlFrame(frame, opcode, payload.substr(0, kMaxControlPayload),
                                     masked ? key : nullptr);
  return std::string(frame, n);
}

}  // namespace

std::string closeFrame(uint16_t code, std::string_view reason, bool masked) {
  uint8_t key[4];
  if (masked) {
    maskingKey(key);
  }
  char frame[kMaxControlFrame];
  const size_t n = writeCloseFrame(frame, code, reason, masked ? key : nullptr);
  return std::string(frame, n);
}

std::string pingFrame(std::string_view payload, bool masked) {
  return controlFrame(opcode::kPing, payload, masked);
}

std::string pongFrame(std::string_view payload, bool masked) {
  return controlFrame(opcode::kPong, payload, masked);
}

}  // namespace upgate
