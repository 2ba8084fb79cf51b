#pragma once
// permessage-deflate codec (RFC 7692 §7.2) on zlib's raw deflate (negative windowBits: no zlib
// header or checksum). One Deflater per sending direction and one Inflater per receiving
// direction of a leg, set up from the negotiated DeflateChannel (extensions.h).
//
// Messages are processed in pieces as their frames arrive; output is appended to a caller string
// whose capacity is reused, so steady state does not allocate per frame.
//
// Memory. zlib state is allocated lazily, on the first message, and counted exactly through
// zlib's allocation hooks: memoryBytes() is what a codec holds now, for a per-session cap. With
// no_context_takeover nothing needs to survive between messages, and release() frees the state
// (an idle session then holds none); with context takeover the window is the shared dictionary
// and must be kept. estimateMemory() gives the size a codec will allocate before it does.
//
// Window bits. zlib refuses windowBits 8 for raw deflate (since 1.2.9). A Deflater asked for 8
// uses 9: zlib never emits a match farther back than the window size minus 262 bytes
// (MIN_LOOKAHEAD), i.e. 250 bytes for a 512-byte window, so its output still decodes with the
// 256-byte window the peer agreed to. Raw inflate accepts 8 and uses it.
//
// Errors are status codes; nothing throws (OOM aborts). Suggested close codes: DataError 1007
// (RFC 7692 only says _Fail_; this is invalid data in the payload), TooBig 1009, InternalError
// 1011. Not thread-safe: one codec per direction per connection, on its loop thread.

#include <cstddef>
#include <cstdint>
#include <string>

#include "websocket/extensions.h"  // DeflateChannel

namespace upgate {

enum class CodecStatus {
  Ok,
  TooBig,        // inflated message over the caller's limit (inflate bomb); close with 1009
  DataError,     // not a valid deflate stream; close with 1007
  InternalError  // zlib could not be set up (bad parameters) or misbehaved; close with 1011
};

// Printable name, e.g. "data error".
const char* codecStatusName(CodecStatus s);

// A zlib stream plus its allocation count; defined in deflate.cc so zlib.h stays out of headers.
struct ZlibStream;

class Deflater {
 public:
  struct Options {
    int level = 6;      // zlib compression level 0..9 (1 is fastest)
    int mem_level = 8;  // zlib memLevel 1..9: hash table size, (1 << (mem_level + 9)) bytes
  };

  Deflater(DeflateChannel channel, Options options);
  explicit Deflater(DeflateChannel channel) : Deflater(channel, Options{}) {}
  ~Deflater();
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;

  // Compresses the next `len` bytes of the current message and appends the compressed bytes
  // produced so far to *out (possibly none before the end). With end_of_message, flushes the
  // message, ending it on a byte boundary, and removes the trailing 00 00 FF FF (§7.2.1); the
  // compressed payload of the whole message is then the concatenation of all appended output.
  // An empty message becomes the single byte 00 (§7.2.3.6). With no_context_takeover the
  // compressor then starts the next message empty. After an error (InternalError only: zlib could
  // not be set up) every later call fails too.
  CodecStatus compress(const char* data, size_t len, bool end_of_message, std::string* out);

  // Between messages with no_context_takeover: frees the zlib state (re-created by the next
  // compress()). Otherwise does nothing. Returns true if nothing is held afterwards.
  bool release();

  // Bytes currently allocated for zlib state (0 before the first message and after release()).
  size_t memoryBytes() const;

  // Bytes a Deflater with these parameters allocates (zlib's formula, zconf.h, plus overhead).
  static size_t estimateMemory(DeflateChannel channel, Options options);

 private:
  bool ensureState();
  CodecStatus compressMessage(const char* data, size_t len, bool end_of_message, std::string* out);

  DeflateChannel channel_;
  Options options_;
  ZlibStream* state_ = nullptr;  // owned; null until the first message and after release()
  bool in_message_ = false;      // compress() called since the last end_of_message
  bool failed_ = false;          // an error occurred; every later call fails
  uint64_t message_in_ = 0;      // input bytes of the current message
};

class Inflater {
 public:
  explicit Inflater(DeflateChannel channel);
  ~Inflater();
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  // Decompresses the next `len` bytes of the current message's compressed payload (the frames'
  // payloads in order), appending the output to *out. With end_of_message, the 00 00 FF FF that
  // the sender removed is appended first (§7.2.2); a message with no payload bytes at all is taken
  // as empty. max_message_out caps the inflated size of the
  // whole message (all calls): going over returns TooBig, having appended at most one byte more
  // than the cap for the message. After any error the Inflater stays failed (close the
  // connection). A DEFLATE block with BFINAL set ends the sender's stream (§7.2.3.4): input after
  // it in the same message is ignored, and the next message starts a fresh stream.
  CodecStatus decompress(const char* data, size_t len, bool end_of_message,
                         uint64_t max_message_out, std::string* out);

  // Between messages with no_context_takeover: frees the zlib state. Otherwise does nothing.
  // Returns true if nothing is held afterwards.
  bool release();

  // Bytes currently allocated for zlib state (the window is allocated by zlib on first output).
  size_t memoryBytes() const;

  // Bytes an Inflater with this window allocates at most.
  static size_t estimateMemory(DeflateChannel channel);

 private:
  bool ensureState();
  CodecStatus run(const char* data, size_t len, uint64_t max_message_out, std::string* out);

  DeflateChannel channel_;
  ZlibStream* state_ = nullptr;  // owned; null until the first message and after release()
  bool in_message_ = false;
  bool stream_ended_ = false;  // a BFINAL block ended the stream in this message
  bool failed_ = false;
  uint64_t message_in_ = 0;   // compressed bytes of the current message
  uint64_t message_out_ = 0;  // inflated bytes of the current message
};

}  // namespace upgate
