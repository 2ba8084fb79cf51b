#pragma once
// Frame encoding (RFC 6455 §5.2): headers written into caller memory, masking for frames the
// gateway sends as a client (upstream leg), and ready-made close/ping/pong frames.
//
// The write* functions never allocate and never throw: they fill caller buffers of the stated
// size. The std::string helpers allocate (control path: closing, keepalive); OOM aborts.
// Everything here is usable from any thread; maskingKey() keeps per-thread state.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "websocket/frame_parser.h"

namespace upgate {

// Largest control frame on the wire: 14-byte header bound (6 used) + 125 bytes of payload.
inline constexpr size_t kMaxControlFrame = 6 + kMaxControlPayload;

// Writes a frame header into out (at least kMaxFrameHeader = 14 bytes) and returns its length
// (2..14). The length uses the minimal encoding (§5.2). mask_or_null: the 4-byte masking key for
// a masked (client-sent) frame, or nullptr for an unmasked one. The payload is not touched: mask
// it with maskPayload() using the same key. rsv1 marks a compressed message (RFC 7692); fin and
// opcode are written as given (the caller keeps control frames unfragmented and <= 125 bytes).
// len must be below 2^63.
size_t writeFrameHeader(char* out, uint8_t opcode, bool fin, bool rsv1, uint64_t len,
                        const uint8_t* mask_or_null);

// Masks (or unmasks) payload in place; offset is the position of data[0] within the frame's
// payload, so a payload may be masked in pieces. Same as applyMask().
inline void maskPayload(char* data, size_t len, const uint8_t mask[4], uint64_t offset = 0) {
  applyMask(data, len, mask, offset);
}

// Fills `out` with a fresh masking key for this thread's next frame.
//
// RFC 6455 §5.3/§10.3 require keys an attacker who chooses the payload cannot predict, derived
// from a strong source of entropy; §10.3 names cache poisoning of intermediaries as the threat.
// The gateway relays attacker-chosen client payload upstream, so this matters. Keys come from the
// kernel's CSPRNG (getrandom(2), ChaCha20-based) drawn 1 KiB at a time into a thread-local pool:
// one syscall per 256 frames, a few nanoseconds per key, and cryptographic unpredictability that
// a fast non-cryptographic generator (xorshift, PCG) seeded once would not give, since their
// state can be recovered from a handful of observed keys. getrandom is only called with flags 0:
// it blocks only before the kernel pool is first initialised (early boot); a failure other than
// EINTR (a kernel without the syscall) aborts the process with a message rather than send
// predictable keys.
void maskingKey(uint8_t out[4]);

// Writes a control frame (opcode kClose, kPing or kPong; fin set) with `payload` into out (at
// least kMaxControlFrame bytes), masked with mask_or_null if not null. Returns its length, or 0
// if the payload is over 125 bytes or the opcode is not a control opcode.
size_t writeControlFrame(char* out, uint8_t opcode, std::string_view payload,
                         const uint8_t* mask_or_null);

// Writes a close frame into out (at least kMaxControlFrame bytes) and returns its length. code
// close_code::kNoStatus (or 0) sends an empty payload and no reason (§5.5.1); other codes are
// written as given (the caller picks a valid one), followed by `reason` truncated to 123 bytes
// on a UTF-8 character boundary (reason is expected to be valid UTF-8).
size_t writeCloseFrame(char* out, uint16_t code, std::string_view reason,
                       const uint8_t* mask_or_null);

// Whole frames as strings; `masked` picks a fresh key with maskingKey().
std::string closeFrame(uint16_t code, std::string_view reason, bool masked);
std::string pingFrame(std::string_view payload, bool masked);  // payload cut to 125 bytes
std::string pongFrame(std::string_view payload, bool masked);  // payload cut to 125 bytes

}  // namespace upgate
