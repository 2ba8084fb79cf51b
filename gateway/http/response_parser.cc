#include "http/response_parser.h"

#include <algorithm>
#include <string>
#include <utility>

#include "http/llhttp_callbacks.h"

namespace upgate {

namespace {

bool isInterim(int status) {
  return status >= 100 && status < 200 && status != 101;
}

// on_headers_complete return value meaning "this message has no body" (llhttp.h).
constexpr int kNoBody = 1;

}  // namespace

bool isThreeDigitStatus(int status) {
  return status >= 100 && status <= 999;
}

ResponseParser::ResponseParser(size_t max_head_bytes, size_t max_body_bytes)
    : max_head_bytes_(max_head_bytes), max_body_bytes_(max_body_bytes) {
  llhttp_init(&parser_, HTTP_RESPONSE, &settings());
  parser_.data = this;
}

const llhttp_settings_t& ResponseParser::settings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = eventTrampoline<ResponseParser, &ResponseParser::onMessageBegin>;
    s.on_status = dataTrampoline<ResponseParser, &ResponseParser::onStatus>;
    s.on_header_field = dataTrampoline<ResponseParser, &ResponseParser::onHeaderField>;
    s.on_header_value = dataTrampoline<ResponseParser, &ResponseParser::onHeaderValue>;
    s.on_header_value_complete =
        eventTrampoline<ResponseParser, &ResponseParser::onHeaderValueComplete>;
    s.on_headers_complete = eventTrampoline<ResponseParser, &ResponseParser::onHeadersComplete>;
    s.on_body = dataTrampoline<ResponseParser, &ResponseParser::onBody>;
    s.on_message_complete = eventTrampoline<ResponseParser, &ResponseParser::onMessageComplete>;
    return s;
  }();
  return kSettings;
}

ParseResult ResponseParser::feed(const char* data, size_t len) {
  consumed_ = 0;
  if (state_ != ParseResult::NeedMore) {
    return state_;
  }
  size_t off = 0;
  while (off < len) {
    // Until the final head is complete llhttp gets only what the head may still use; once it is,
    // the rest of the feed is body and goes in whole (the body limit is checked in onBody).
    size_t n = len - off;
    if (!final_head_) {
      const size_t allowance = max_head_bytes_ - head_bytes_;
      if (allowance == 0) {
        return fail("upstream response head exceeds " + std::to_string(max_head_bytes_) + " bytes");
      }
      n = std::min(n, allowance);
    }
    const char* chunk = data + off;
    const llhttp_errno_t err = llhttp_execute(&parser_, chunk, n);
    if (err == HPE_OK) {
      if (!final_head_) {
        head_bytes_ += n;
      }
      off += n;
      continue;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
      consumed_ = off + static_cast<size_t>(llhttp_get_error_pos(&parser_) - chunk);
      state_ = ParseResult::Complete;
      return state_;
    }
    if (!cb_reason_.empty()) {
      return fail(std::move(cb_reason_));
    }
    const char* why = llhttp_get_error_reason(&parser_);
    return fail(std::string("malformed upstream response: ") +
                (why ? why : llhttp_errno_name(err)));
  }
  return ParseResult::NeedMore;
}

bool ResponseParser::needsEof() const {
  return final_head_ && state_ == ParseResult::NeedMore && llhttp_message_needs_eof(&parser_) != 0;
}

ParseResult ResponseParser::finishEof() {
  consumed_ = 0;
  if (state_ != ParseResult::NeedMore) {
    return state_;
  }
  const bool received_any = head_bytes_ > 0 || final_head_;
  // Calls onMessageComplete when the body was delimited by EOF (finish "safe with callback"); any
  // other unfinished state is HPE_INVALID_EOF_STATE. The return value adds nothing to that.
  (void)llhttp_finish(&parser_);
  if (message_done_) {
    state_ = ParseResult::Complete;
    return state_;
  }
  return fail(received_any ? "upstream closed before the response was complete"
                           : "upstream closed without sending a response");
}

ParseResult ResponseParser::fail(std::string reason) {
  consumed_ = 0;
  state_ = ParseResult::Error;
  error_reason_ = std::move(reason);
  return state_;
}

int ResponseParser::reject(std::string reason) noexcept {
  cb_reason_ = std::move(reason);
  return HPE_USER;
}

int ResponseParser::onMessageBegin() noexcept {
  // A new message after an interim 1xx: forget the interim one.
  head_ = ResponseHead();
  body_.clear();
  field_.clear();
  value_.clear();
  return HPE_OK;
}

int ResponseParser::onStatus(const char* at, size_t len) noexcept {
  head_.reason.append(at, len);
  return HPE_OK;
}

int ResponseParser::onHeaderField(const char* at, size_t len) noexcept {
  if (!final_head_) {  // after the final head these are chunked trailers: dropped unstored
    field_.append(at, len);
  }
  return HPE_OK;
}

int ResponseParser::onHeaderValue(const char* at, size_t len) noexcept {
  if (!final_head_) {
    value_.append(at, len);
  }
  return HPE_OK;
}

int ResponseParser::onHeaderValueComplete() noexcept {
  if (!final_head_) {
    if (head_.headers.empty()) head_.headers.reserve(8);  // one allocation for a typical head
    // llhttp's loose mode leaves whitespace before the colon in the name; a proxy removes it.
    head_.headers.push_back(Header{std::string(trimOws(field_)), std::string(trimOws(value_))});
  }
  field_.clear();
  value_.clear();
  return HPE_OK;
}

int ResponseParser::onHeadersComplete() noexcept {
  // A relayed "HTTP/1.1 0" would be nonsense.
  if (!isThreeDigitStatus(parser_.status_code)) {
    return reject("malformed upstream response: status code " +
                  std::to_string(parser_.status_code) + " is not three digits");
  }
  head_.status = parser_.status_code;
  head_.http_major = parser_.http_major;
  head_.http_minor = parser_.http_minor;
  if (!isInterim(head_.status)) {
    final_head_ = true;
  }
  // RFC 7230 §3.3.3 rule 1: 1xx, 204 and 304 end at the blank line whatever their headers say.
  // llhttp would otherwise read a 101's or 204's Content-Length bytes as a body.
  const int s = head_.status;
  if ((s >= 100 && s < 200) || s == 204 || s == 304) {
    return kNoBody;
  }
  return HPE_OK;
}

int ResponseParser::onBody(const char* at, size_t len) noexcept {
  if (len > max_body_bytes_ - body_.size()) {
    return reject("upstream response body exceeds " + std::to_string(max_body_bytes_) + " bytes");
  }
  body_.append(at, len);
  return HPE_OK;
}

int ResponseParser::onMessageComplete() noexcept {
  if (isInterim(head_.status)) {
    return HPE_OK;  // keep parsing: the final response follows
  }
  message_done_ = true;
  // A 101 llhttp flagged as upgrade pauses by itself (HPE_PAUSED_UPGRADE); stop after any other
  // final response so nothing after it is parsed as HTTP.
  return parser_.upgrade ? HPE_OK : HPE_PAUSED;
}

}  // namespace upgate
