#pragma once
// Incremental parser for one HTTP/1.x request head: an llhttp HTTP_REQUEST wrapper whose
// callbacks are trampolines into members (style 2.7). It stops as soon as the head is complete and
// reports how many bytes of the last feed belonged to the request, so bytes pipelined after the
// head (e.g. the first WebSocket frame) stay with the caller.
//
// Limits, all answered before any head is handed out:
//   - header section bytes (request line, header lines and the blank line, plus any empty lines
//     llhttp skips before the request line), counted across feeds: exceeding -> 431, even when
//     the head never completes;
//   - header field count: more than max_headers -> 431;
//   - anything llhttp rejects in its strict mode (http/llhttp_strict.h) -> 400 (bad request line,
//     raw control or non-ASCII bytes in the target, invalid token or value characters, a CR not
//     followed by LF, bare LF inside a value, Content-Length together with Transfer-Encoding,
//     duplicate Content-Length, Transfer-Encoding without final "chunked");
//   - checks llhttp does not make, RFC 7230 §3.2.4 and §3 -> 400: whitespace between a field name
//     and the colon, obs-fold (a header line starting with SP/HTAB), an HTTP/0.9 request line
//     without a version;
//   - HTTP/2 over HTTP/1 framing ("HTTP/2.0" in the request line, or the h2 "PRI *" preface) ->
//   505.
// 501 is never produced: bodies are not decoded in this version, and a request whose
// Transfer-Encoding does not end in "chunked" is a 400 (RFC 7230 §3.3.3).
//
// Not thread-safe; one parser per connection, used on that connection's loop thread. Not copyable
// or movable (llhttp holds a pointer back to it). feed() never throws (OOM aborts).

#include <llhttp.h>

#include <cstddef>
#include <string>

#include "http/request_head.h"

namespace upgate {

enum class ParseResult {
  NeedMore,  // feed more bytes
  Complete,  // the head (or message, for the response parser) is complete
  Error,     // the input is unacceptable; the parser stays failed
};

class RequestParser {
 public:
  // max_head_bytes: header section limit (see above), > 0. max_headers: header field limit.
  RequestParser(size_t max_head_bytes, size_t max_headers);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Parses the next `len` bytes; may be called many times with arbitrary splits. Nothing in `data`
  // is referenced after it returns. Once Complete or Error, further calls return the same result
  // without looking at the bytes (and consumed() becomes 0: they belong to nothing parsed here).
  //
  // Complete when:
  //   - an upgrade request (llhttp's upgrade flag) is complete: llhttp pauses with
  //     HPE_PAUSED_UPGRADE, consumed() is the end of the head;
  //   - a request without a body is complete;
  //   - the head of a request with a body (Content-Length > 0 or chunked) is complete: the body
  //     is not parsed, consumed() covers the head only and the body is part of the leftover.
  ParseResult feed(const char* data, size_t len);

  // On Complete: how many bytes of the last feed() belonged to the request head; bytes
  // [consumed(), len) are leftover for the caller. 0 in any other state.
  size_t consumed() const { return consumed_; }

  // The parsed head; valid on Complete (partial before that). The caller may move from it.
  RequestHead& head() { return head_; }
  const RequestHead& head() const { return head_; }

  // On Error: 400, 431 or 505 (see above); 0 otherwise.
  int errorStatus() const { return error_status_; }
  // On Error: short human text, e.g. "header section exceeds 16384 bytes"; empty otherwise.
  const std::string& errorReason() const { return error_reason_; }

 private:
  static const llhttp_settings_t& settings();

  // llhttp callbacks (through trampolines). They return llhttp codes; a failing check records its
  // status and reason in cb_status_/cb_reason_ first.
  int onUrl(const char* at, size_t len) noexcept;
  int onHeaderField(const char* at, size_t len) noexcept;
  int onHeaderFieldComplete() noexcept;
  int onHeaderValue(const char* at, size_t len) noexcept;
  int onHeaderValueComplete() noexcept;
  int onHeadersComplete() noexcept;
  // Absolute-form target: the single Host header takes the target's authority.
  void useTargetAuthority();
  int onMessageComplete() noexcept;

  int reject(int status, std::string reason) noexcept;
  ParseResult fail(int status, std::string reason);
  ParseResult failTooLarge();
  // True if data[0, len) starts a header line with SP/HTAB (obs-fold); carries state across feeds.
  bool scanForFold(const char* data, size_t len);

  llhttp_t parser_;
  const size_t max_head_bytes_;
  const size_t max_headers_;
  size_t head_bytes_ = 0;  // bytes fed before this feed, all of them head bytes
  size_t consumed_ = 0;
  bool after_lf_ = false;  // the last scanned byte was LF
  ParseResult state_ = ParseResult::NeedMore;
  RequestHead head_;
  std::string field_;  // name being received (llhttp may deliver it in pieces)
  std::string value_;  // value being received
  int cb_status_ = 0;
  std::string cb_reason_;
  int error_status_ = 0;
  std::string error_reason_;
};

}  // namespace upgate
