#pragma once
// Incremental parser for the upstream's answer to our upgrade request: an llhttp HTTP_RESPONSE
// wrapper with trampolines into members (style 2.7).
//
// It completes on either
//   - a 101 head: consumed() is the end of the head, the rest of that feed is the upstream's
//     first WebSocket bytes (leftover for the caller); or
//   - a whole non-101 final response: its body, decoded from Content-Length, chunked (trailers
//     are dropped) or read until EOF (see finishEof), is kept in body() for relaying.
// Interim 1xx responses other than 101 (100, 102, 103) are skipped: RFC 7231 §6.2 lets a client
// ignore them, and we never asked for one. Their bytes count towards the head limit.
//
// Leniency differs from RequestParser on purpose (RFC 7230 §3.2.4): whitespace before a colon is
// removed from the name and obs-fold is unfolded (the CRLF is dropped, the whitespace kept), as
// a proxy may do with a response; everything llhttp rejects is an Error.
//
// Any Error means "malformed or oversized upstream response": the caller answers 502. Not
// thread-safe; one parser per upstream leg, on its loop thread. Not copyable or movable. Never
// throws (OOM aborts). Nothing in fed buffers is referenced after a call returns.

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "http/headers.h"
#include "http/request_parser.h"  // ParseResult

namespace upgate {

// Status line and headers of one response; owned copies.
struct ResponseHead {
  int status = 0;
  std::string reason;  // reason phrase as received, possibly empty
  uint8_t http_major = 1;
  uint8_t http_minor = 1;
  HeaderList headers;  // wire order, names trimmed of whitespace, values OWS-trimmed
};

// True if `status` is a status code a response may carry: three digits (RFC 9110 §15). llhttp
// 8.1 accepts an empty or short one ("HTTP/1.1 \r\n" is status 0, "020" is 20); both readers of
// upstream responses (ResponseParser, HttpExchange) refuse the rest as malformed.
bool isThreeDigitStatus(int status);

class ResponseParser {
 public:
  // max_head_bytes: bytes of the status line and header section (interim responses included)
  // before the final head is complete. max_body_bytes: decoded body limit of a non-101 answer.
  ResponseParser(size_t max_head_bytes, size_t max_body_bytes);
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  // Parses the next `len` bytes; any split is fine. Once Complete or Error, further calls return
  // the same result and consumed() becomes 0.
  ParseResult feed(const char* data, size_t len);

  // The upstream closed its side. Completes a body delimited by EOF (no Content-Length, not
  // chunked); anything else still in progress is an Error ("upstream closed before the response
  // was complete"). After Complete/Error it returns that state again.
  ParseResult finishEof();
  // Whether the response in progress (its head read) ends only with the connection: no
  // Content-Length, not chunked, a status that has a body.
  bool needsEof() const;

  // On Complete from feed(): bytes of the last feed() that belonged to the response; the rest is
  // leftover (for a 101, the first upstream frames). 0 after finishEof() and in other states.
  size_t consumed() const { return consumed_; }

  // Valid on Complete. The caller may move from them.
  ResponseHead& head() { return head_; }
  const ResponseHead& head() const { return head_; }
  const std::string& body() const { return body_; }

  // On Error: short human text for the log; empty otherwise.
  const std::string& errorReason() const { return error_reason_; }

 private:
  static const llhttp_settings_t& settings();

  int onMessageBegin() noexcept;
  int onStatus(const char* at, size_t len) noexcept;
  int onHeaderField(const char* at, size_t len) noexcept;
  int onHeaderValue(const char* at, size_t len) noexcept;
  int onHeaderValueComplete() noexcept;
  int onHeadersComplete() noexcept;
  int onBody(const char* at, size_t len) noexcept;
  int onMessageComplete() noexcept;

  int reject(std::string reason) noexcept;
  ParseResult fail(std::string reason);

  llhttp_t parser_;
  const size_t max_head_bytes_;
  const size_t max_body_bytes_;
  size_t head_bytes_ = 0;    // bytes fed while the final head was incomplete
  bool final_head_ = false;  // the final (non-interim) head is complete; trailers are ignored
  bool message_done_ = false;
  size_t consumed_ = 0;
  ParseResult state_ = ParseResult::NeedMore;
  ResponseHead head_;
  std::string body_;
  std::string field_;
  std::string value_;
  std::string cb_reason_;
  std::string error_reason_;
};

}  // namespace upgate
