#include "http/request_parser.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "http/llhttp_callbacks.h"
#include "http/llhttp_strict.h"

namespace upgate {

namespace {

constexpr const char* kFoldReason =
    "obs-fold (header line starting with whitespace) is not allowed";
constexpr const char* kNameSpaceReason = "whitespace between header field name and colon";

// An absolute-form target's authority ("http://u@a.test:80/x?q" -> "u@a.test:80"), a view into
// `target`; nullopt for the other forms.
std::optional<std::string_view> absoluteAuthority(std::string_view target) {
  if (target.empty() || target.front() == '/') return std::nullopt;
  const size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  const std::string_view rest = target.substr(scheme_end + 3);
  return rest.substr(0, rest.find_first_of("/?#"));
}

}  // namespace

void splitTarget(std::string_view target, std::string& path, std::string& query) {
  path.clear();
  query.clear();
  std::string_view rest = target;
  if (rest.empty() || rest == "*") {
    path.assign(rest);
    return;
  }
  if (rest.front() != '/') {
    const std::optional<std::string_view> authority = absoluteAuthority(rest);
    if (!authority) return;  // authority-form (CONNECT host:port): no path
    rest.remove_prefix(static_cast<size_t>(authority->data() + authority->size() - rest.data()));
  }
  // A fragment is not part of a request target (RFC 7230 §5.3) but llhttp accepts one; drop it.
  rest = rest.substr(0, rest.find('#'));
  size_t q = rest.find('?');
  path.assign(rest.substr(0, q));
  if (q != std::string_view::npos) {
    query.assign(rest.substr(q + 1));
  }
  if (path.empty()) {
    path = "/";  // "http://host" and "http://host?x" address the root
  }
}

RequestParser::RequestParser(size_t max_head_bytes, size_t max_headers)
    : max_head_bytes_(max_head_bytes), max_headers_(max_headers) {
  llhttpInitStrict(&parser_, HTTP_REQUEST, &settings());
  parser_.data = this;
}

const llhttp_settings_t& RequestParser::settings() {
  static const llhttp_settings_t kSettings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_url = dataTrampoline<RequestParser, &RequestParser::onUrl>;
    s.on_header_field = dataTrampoline<RequestParser, &RequestParser::onHeaderField>;
    s.on_header_field_complete =
        eventTrampoline<RequestParser, &RequestParser::onHeaderFieldComplete>;
    s.on_header_value = dataTrampoline<RequestParser, &RequestParser::onHeaderValue>;
    s.on_header_value_complete =
        eventTrampoline<RequestParser, &RequestParser::onHeaderValueComplete>;
    s.on_headers_complete = eventTrampoline<RequestParser, &RequestParser::onHeadersComplete>;
    s.on_message_complete = eventTrampoline<RequestParser, &RequestParser::onMessageComplete>;
    return s;
  }();
  return kSettings;
}

ParseResult RequestParser::feed(const char* data, size_t len) {
  consumed_ = 0;
  if (state_ != ParseResult::NeedMore) {
    return state_;
  }
  // Give llhttp no more than the head may still use: if the head is not complete within those
  // bytes it is too large, whatever follows (Node's TrackHeader, but counting every head byte).
  const size_t allowance = max_head_bytes_ - head_bytes_;
  const size_t n = std::min(len, allowance);
  if (n == 0) {
    return len == 0 ? ParseResult::NeedMore : failTooLarge();
  }
  const llhttp_errno_t err = llhttpExecuteStrict(&parser_, data, n);
  switch (err) {
    case HPE_OK:
      if (scanForFold(data, n)) {
        return fail(400, kFoldReason);
      }
      head_bytes_ += n;
      return n < len ? failTooLarge() : ParseResult::NeedMore;
    case HPE_PAUSED:            // our pause: head of a request with a body, or a plain request
    case HPE_PAUSED_UPGRADE: {  // upgrade request complete; the rest is another protocol
      const size_t parsed = static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
      if (scanForFold(data, parsed)) {
        return fail(400, kFoldReason);
      }
      consumed_ = parsed;
      state_ = ParseResult::Complete;
      return state_;
    }
    case HPE_PAUSED_H2_UPGRADE:
      return fail(505, "HTTP/2 connection preface is not supported");
    default: {
      // A folded line before the point llhttp stopped is reported first, as it would have been
      // had the bytes arrived in smaller reads: the answer must not depend on how reads split.
      const char* stop = llhttp_get_error_pos(&parser_);
      const size_t scanned = stop ? static_cast<size_t>(stop - data) : n;
      if (scanForFold(data, std::min(scanned, n))) {
        return fail(400, kFoldReason);
      }
      if (cb_status_ != 0) {
        return fail(cb_status_, std::move(cb_reason_));
      }
      // Strict mode stops at the space itself (the error position may also be the end of the
      // buffer, which is no byte to look at).
      if (err == HPE_INVALID_HEADER_TOKEN && stop && scanned < n &&
          (*stop == ' ' || *stop == '\t')) {
        return fail(400, kNameSpaceReason);
      }
      const char* why = llhttp_get_error_reason(&parser_);
      return fail(400, std::string("malformed request: ") + (why ? why : llhttp_errno_name(err)));
    }
  }
}

bool RequestParser::scanForFold(const char* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    const char c = data[i];
    if (after_lf_ && (c == ' ' || c == '\t')) {
      return true;
    }
    after_lf_ = c == '\n';
  }
  return false;
}

ParseResult RequestParser::failTooLarge() {
  return fail(431, "header section exceeds " + std::to_string(max_head_bytes_) + " bytes");
}

ParseResult RequestParser::fail(int status, std::string reason) {
  consumed_ = 0;
  state_ = ParseResult::Error;
  error_status_ = status;
  error_reason_ = std::move(reason);
  return state_;
}

int RequestParser::reject(int status, std::string reason) noexcept {
  cb_status_ = status;
  cb_reason_ = std::move(reason);
  return HPE_USER;
}

int RequestParser::onUrl(const char* at, size_t len) noexcept {
  head_.target.append(at, len);
  return HPE_OK;
}

int RequestParser::onHeaderField(const char* at, size_t len) noexcept {
  field_.append(at, len);
  return HPE_OK;
}

int RequestParser::onHeaderFieldComplete() noexcept {
  // RFC 7230 §3.2.4 demands a 400. llhttp's strict mode stops at the space (see feed()); this
  // holds whichever machine runs.
  if (!isToken(field_)) {
    return reject(400, kNameSpaceReason);
  }
  if (head_.headers.size() >= max_headers_) {
    return reject(431, "more than " + std::to_string(max_headers_) + " header fields");
  }
  return HPE_OK;
}

int RequestParser::onHeaderValue(const char* at, size_t len) noexcept {
  value_.append(at, len);
  return HPE_OK;
}

int RequestParser::onHeaderValueComplete() noexcept {
  // One allocation for a typical head instead of the vector doubling its way up to it.
  if (head_.headers.empty()) head_.headers.reserve(16);
  head_.headers.push_back(Header{std::move(field_), std::string(trimOws(value_))});
  field_.clear();
  value_.clear();
  return HPE_OK;
}

int RequestParser::onHeadersComplete() noexcept {
  head_.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
  head_.http_major = parser_.http_major;
  head_.http_minor = parser_.http_minor;
  head_.upgrade = parser_.upgrade != 0;
  splitTarget(head_.target, head_.path, head_.query);
  useTargetAuthority();
  // llhttp's loose mode accepts "GET /" as HTTP/0.9; there is no head to speak of.
  if (head_.http_major == 0) {
    return reject(400, "request line has no HTTP version");
  }
  if (head_.http_major > 1) {
    return reject(505, "HTTP/" + std::to_string(head_.http_major) + "." +
                           std::to_string(head_.http_minor) + " is not supported here");
  }
  // Only the head is wanted: stop before any body; bodyless requests end in onMessageComplete.
  const bool has_body = (parser_.flags & F_CHUNKED) != 0 || parser_.content_length > 0;
  return has_body ? HPE_PAUSED : HPE_OK;
}

void RequestParser::useTargetAuthority() {
  // RFC 9112 §3.2.2: with an absolute-form target the recipient ignores Host and uses the
  // target's authority. Routing and forwarding read Host, so it is made to say the same: a front
  // end that routes on the target and upgate cannot then disagree on the site. (No Host at all,
  // or two, is refused later as for any request.)
  const std::optional<std::string_view> found = absoluteAuthority(head_.target);
  if (!found) return;
  std::string_view authority = *found;
  if (const size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);  // userinfo is no part of Host
  }
  Header* host = nullptr;
  for (Header& h : head_.headers) {
    if (!iequals(h.name, "Host")) continue;
    if (host != nullptr) return;
    host = &h;
  }
  if (host != nullptr && !authority.empty()) host->value.assign(authority);
}

int RequestParser::onMessageComplete() noexcept {
  // An upgrade request makes llhttp return HPE_PAUSED_UPGRADE by itself; pause any other request
  // so a pipelined one stays unparsed in the leftover.
  return parser_.upgrade ? HPE_OK : HPE_PAUSED;
}

}  // namespace upgate
