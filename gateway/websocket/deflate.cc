#include "websocket/deflate.h"

#define ZLIB_CONST  // next_in becomes a pointer to const: no const_cast on the caller's data
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace upgate {

struct ZlibStream {
  z_stream z{};
  size_t allocated = 0;  // bytes handed out by the hooks below, headers included
};

namespace {

// The hooks prefix each block with its size so zfree can uncount it; the prefix keeps the
// alignment malloc gives.
constexpr size_t kPrefix = alignof(std::max_align_t);
static_assert(kPrefix >= sizeof(size_t), "size prefix must fit");

voidpf countingAlloc(voidpf opaque, uInt items, uInt size) {
  auto* s = static_cast<ZlibStream*>(opaque);
  const size_t n = size_t{items} * size;  // both are 32-bit: no overflow in 64 bits
  void* block = std::malloc(n + kPrefix);
  if (block == nullptr) {
    return Z_NULL;  // zlib reports Z_MEM_ERROR
  }
  std::memcpy(block, &n, sizeof n);
  s->allocated += n + kPrefix;
  return static_cast<char*>(block) + kPrefix;
}

void countingFree(voidpf opaque, voidpf address) {
  auto* s = static_cast<ZlibStream*>(opaque);
  char* block = static_cast<char*>(address) - kPrefix;
  size_t n;
  std::memcpy(&n, block, sizeof n);
  s->allocated -= n + kPrefix;
  std::free(block);
}

ZlibStream* newStream() {
  auto* s = new ZlibStream();
  s->z.zalloc = countingAlloc;
  s->z.zfree = countingFree;
  s->z.opaque = s;
  return s;
}

// Ends the zlib stream (deflateEnd or inflateEnd) and frees it; `s` becomes null.
void endStream(ZlibStream*& s, int (*end)(z_streamp)) {
  if (s == nullptr) return;
  end(&s->z);
  delete s;
  s = nullptr;
}

// zlib's 32-bit counters: feed larger inputs in slices.
constexpr size_t kMaxSlice = size_t{1} << 30;

// Output goes into the string's tail, which resize() zero-fills: the first step is sized to the
// input (small pieces stay cheap), and steps double while zlib keeps filling them.
constexpr size_t kMinOutStep = 256;
constexpr size_t kMaxOutStep = 1024 * 1024;

size_t firstStep(size_t expected_out) {
  return std::clamp(expected_out, kMinOutStep, kMaxOutStep);
}

size_t nextStep(size_t step) {
  return std::min(step * 2, kMaxOutStep);
}

constexpr unsigned char kTail[4] = {0x00, 0x00, 0xFF, 0xFF};

int deflateWindowBits(const DeflateChannel& c) {
  // Raw deflate rejects 8; 9 stays within a 256-byte window (see deflate.h).
  return std::clamp<int>(c.window_bits, 9, 15);
}

int inflateWindowBits(const DeflateChannel& c) {
  return std::clamp<int>(c.window_bits, 8, 15);
}

}  // namespace

const char* codecStatusName(CodecStatus s) {
  switch (s) {
    case CodecStatus::Ok:
      return "ok";
    case CodecStatus::TooBig:
      return "inflated message too big";
    case CodecStatus::DataError:
      return "invalid compressed data";
    case CodecStatus::InternalError:
      return "compression internal error";
  }
  return "unknown";
}

// ---- Deflater ----------------------------------------------------------------------------------

Deflater::Deflater(DeflateChannel channel, Options options)
    : channel_(channel), options_(options) {}

Deflater::~Deflater() {
  endStream(state_, deflateEnd);
}

bool Deflater::ensureState() {
  if (state_ != nullptr) {
    return true;
  }
  ZlibStream* s = newStream();
  // The *Init2_ functions directly: the deflateInit2 macro expands to a C-style cast.
  const int rc = deflateInit2_(&s->z, options_.level, Z_DEFLATED, -deflateWindowBits(channel_),
                               options_.mem_level, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                               static_cast<int>(sizeof(z_stream)));
  if (rc != Z_OK) {
    delete s;
    return false;
  }
  state_ = s;
  return true;
}

CodecStatus Deflater::compress(const char* data, size_t len, bool end_of_message,
                               std::string* out) {
  if (failed_) {
    return CodecStatus::InternalError;
  }
  const CodecStatus st = compressMessage(data, len, end_of_message, out);
  failed_ = st != CodecStatus::Ok;
  return st;
}

CodecStatus Deflater::compressMessage(const char* data, size_t len, bool end_of_message,
                                      std::string* out) {
  in_message_ = true;
  message_in_ += len;
  if (end_of_message && message_in_ == 0) {
    // zlib emits nothing for an empty flush after a flush; a lone empty stored-block header is
    // what the peer's appended 00 00 FF FF completes (§7.2.3.6).
    out->push_back('\0');
    in_message_ = false;
    return CodecStatus::Ok;
  }
  if (len == 0 && !end_of_message) {
    return CodecStatus::Ok;
  }
  if (!ensureState()) {
    return CodecStatus::InternalError;
  }
  z_stream& z = state_->z;
  const size_t start = out->size();
  size_t left = len;
  const char* in = data;
  do {
    const size_t slice = std::min(left, kMaxSlice);
    const bool last = slice == left;
    const int flush = last && end_of_message ? Z_SYNC_FLUSH : Z_NO_FLUSH;
    z.next_in = reinterpret_cast<const Bytef*>(in);
    z.avail_in = static_cast<uInt>(slice);
    // Loop until zlib leaves output space unused: then all input is taken and, for a flush,
    // all output written (zlib manual, deflate()).
    size_t step = firstStep(slice + slice / 8 + 64);
    do {
      const size_t have = out->size();
      out->resize(have + step);
      z.next_out = reinterpret_cast<Bytef*>(&(*out)[have]);
      z.avail_out = static_cast<uInt>(step);
      const int rc = deflate(&z, flush);
      out->resize(have + step - z.avail_out);
      if (rc == Z_STREAM_ERROR) {
        return CodecStatus::InternalError;
      }
      if (rc == Z_BUF_ERROR && z.avail_out != 0) {
        break;  // nothing left to do
      }
      step = nextStep(step);
    } while (z.avail_out == 0 || z.avail_in != 0);
    in += slice;
    left -= slice;
  } while (left != 0);
  if (!end_of_message) {
    return CodecStatus::Ok;
  }
  // A sync flush ends with an empty stored block, 00 00 FF FF after the byte alignment.
  const size_t produced = out->size() - start;
  if (produced < 4 || std::memcmp(out->data() + out->size() - 4, kTail, 4) != 0) {
    return CodecStatus::InternalError;
  }
  out->resize(out->size() - 4);
  in_message_ = false;
  message_in_ = 0;
  if (channel_.no_context_takeover && deflateReset(&z) != Z_OK) {
    return CodecStatus::InternalError;
  }
  return CodecStatus::Ok;
}

bool Deflater::release() {
  if (channel_.no_context_takeover && !in_message_) endStream(state_, deflateEnd);
  return state_ == nullptr;
}

size_t Deflater::memoryBytes() const {
  return state_ == nullptr ? 0 : sizeof(ZlibStream) + state_->allocated;
}

size_t Deflater::estimateMemory(DeflateChannel channel, Options options) {
  // zconf.h: deflate needs (1 << (windowBits + 2)) + (1 << (memLevel + 9)) bytes, plus the
  // deflate_state itself (under 6 KiB) and our allocation prefixes.
  const int bits = deflateWindowBits(channel);
  const int mem = std::clamp(options.mem_level, 1, 9);
  return sizeof(ZlibStream) + (size_t{1} << (bits + 2)) + (size_t{1} << (mem + 9)) + 8 * 1024;
}

// ---- Inflater ----------------------------------------------------------------------------------

Inflater::Inflater(DeflateChannel channel) : channel_(channel) {}

Inflater::~Inflater() {
  endStream(state_, inflateEnd);
}

bool Inflater::ensureState() {
  if (state_ != nullptr) {
    return true;
  }
  ZlibStream* s = newStream();
  const int rc = inflateInit2_(&s->z, -inflateWindowBits(channel_), ZLIB_VERSION,
                               static_cast<int>(sizeof(z_stream)));
  if (rc != Z_OK) {
    delete s;
    return false;
  }
  state_ = s;
  return true;
}

CodecStatus Inflater::run(const char* data, size_t len, uint64_t max_message_out,
                          std::string* out) {
  z_stream& z = state_->z;
  size_t left = len;
  const char* in = data;
  while (left != 0 && !stream_ended_) {
    const size_t slice = std::min(left, kMaxSlice);
    z.next_in = reinterpret_cast<const Bytef*>(in);
    z.avail_in = static_cast<uInt>(slice);
    size_t step = firstStep(slice * 4);
    for (;; step = nextStep(step)) {
      // Room for the rest of the budget plus one byte, so going over is detected.
      const uint64_t budget = max_message_out > message_out_ ? max_message_out - message_out_ : 0;
      const size_t room = budget < step ? static_cast<size_t>(budget) + 1 : step;
      const size_t have = out->size();
      out->resize(have + room);
      z.next_out = reinterpret_cast<Bytef*>(&(*out)[have]);
      z.avail_out = static_cast<uInt>(room);
      const int rc = inflate(&z, Z_SYNC_FLUSH);
      const size_t produced = room - z.avail_out;
      out->resize(have + produced);
      message_out_ += produced;
      if (message_out_ > max_message_out) {
        return CodecStatus::TooBig;
      }
      if (rc == Z_STREAM_END) {
        stream_ended_ = true;  // the rest of this message is ignored (see header)
        return CodecStatus::Ok;
      }
      if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT) {
        return CodecStatus::DataError;
      }
      if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return CodecStatus::InternalError;  // Z_MEM_ERROR, Z_STREAM_ERROR
      }
      if (z.avail_out != 0) {
        // Output space left over: zlib took all the input it could use and flushed.
        if (z.avail_in != 0) {
          return CodecStatus::InternalError;  // cannot happen with Z_SYNC_FLUSH; never spin
        }
        break;
      }
    }
    in += slice;
    left -= slice;
  }
  return CodecStatus::Ok;
}

CodecStatus Inflater::decompress(const char* data, size_t len, bool end_of_message,
                                 uint64_t max_message_out, std::string* out) {
  if (failed_) {
    return CodecStatus::InternalError;
  }
  if (!ensureState()) {
    failed_ = true;
    return CodecStatus::InternalError;
  }
  if (!in_message_) {
    in_message_ = true;
    message_in_ = 0;
    message_out_ = 0;
    stream_ended_ = false;
  }
  message_in_ += len;
  CodecStatus st = run(data, len, max_message_out, out);
  // A message with no payload at all is empty: 00 00 FF FF alone would leave zlib inside a
  // stored-block header and corrupt the next message.
  if (st == CodecStatus::Ok && end_of_message && message_in_ != 0) {
    st = run(reinterpret_cast<const char*>(kTail), sizeof kTail, max_message_out, out);
  }
  if (st != CodecStatus::Ok) {
    failed_ = true;
    return st;
  }
  if (end_of_message) {
    in_message_ = false;
    // After a BFINAL block zlib accepts nothing more; the sender starts a new stream.
    if ((stream_ended_ || channel_.no_context_takeover) && inflateReset(&state_->z) != Z_OK) {
      failed_ = true;
      return CodecStatus::InternalError;
    }
    stream_ended_ = false;
  }
  return CodecStatus::Ok;
}

bool Inflater::release() {
  if (channel_.no_context_takeover && !in_message_) endStream(state_, inflateEnd);
  return state_ == nullptr;
}

size_t Inflater::memoryBytes() const {
  return state_ == nullptr ? 0 : sizeof(ZlibStream) + state_->allocated;
}

size_t Inflater::estimateMemory(DeflateChannel channel) {
  // zconf.h: inflate needs (1 << windowBits) bytes plus inflate_state (about 7 KiB).
  return sizeof(ZlibStream) + (size_t{1} << inflateWindowBits(channel)) + 8 * 1024;
}

}  // namespace upgate
