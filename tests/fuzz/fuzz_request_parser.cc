// libFuzzer target: http/request_parser (RequestParser over llhttp).
//
// Input: [split byte][request bytes...]. Small limits (kMaxHead, kMaxHeaders) so the 431 paths
// are reachable. The bytes are fed whole to one parser and in two pieces, split where the first
// byte says, to another; both must agree on the result, the error status and the head (and, on
// Complete, on where the head ends in the stream). Plus the documented contract:
//   - consumed() <= len on Complete, 0 otherwise; the state is sticky (same result, consumed() 0);
//   - Error statuses are 400, 431 or 505 with a reason; NeedMore only while <= kMaxHead bytes;
//   - a Complete head ends within kMaxHead bytes, is HTTP/1.x, has a method and a target, at most
//     kMaxHeaders fields with token names and values without CR, LF or NUL, trimmed of OWS.

#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "http/request_parser.h"
#include "http_checks.h"

namespace {

using upgate::ParseResult;
using upgate::RequestHead;
using upgate::RequestParser;

constexpr size_t kMaxHead = 512;
constexpr size_t kMaxHeaders = 8;

const char* name(ParseResult r) {
  return fuzz_http::resultName(r);
}

struct Outcome {
  ParseResult result = ParseResult::NeedMore;
  int status = 0;
  std::string reason;
  size_t end = 0;  // on Complete: stream offset just past the head
  RequestHead head;
};

// State checks after a feed of `len` bytes that returned r.
void checkState(const RequestParser& p, ParseResult r, size_t len, const char* when) {
  switch (r) {
    case ParseResult::Complete:
      FUZZ_CHECK(p.consumed() <= len && p.errorStatus() == 0 && p.errorReason().empty(),
                 "%s: Complete with consumed() %zu of %zu, status %d", when, p.consumed(), len,
                 p.errorStatus());
      break;
    case ParseResult::NeedMore:
      FUZZ_CHECK(p.consumed() == 0 && p.errorStatus() == 0,
                 "%s: NeedMore with consumed() %zu, status %d", when, p.consumed(),
                 p.errorStatus());
      break;
    case ParseResult::Error:
      FUZZ_CHECK(p.consumed() == 0 &&
                     (p.errorStatus() == 400 || p.errorStatus() == 431 || p.errorStatus() == 505) &&
                     !p.errorReason().empty(),
                 "%s: Error with consumed() %zu, status %d, reason '%s'", when, p.consumed(),
                 p.errorStatus(), p.errorReason().c_str());
      break;
  }
}

// Once Complete or Error, a parser answers the same without looking at the bytes.
void checkSticky(RequestParser& p, ParseResult r, const uint8_t* bytes, size_t len) {
  if (r == ParseResult::NeedMore) {
    return;
  }
  auto buf = fuzz_http::exactCopy(bytes, len);
  const ParseResult again = p.feed(buf.get(), len);
  FUZZ_CHECK(again == r && p.consumed() == 0, "state not sticky: %s then %s, consumed() %zu",
             name(r), name(again), p.consumed());
}

Outcome finish(RequestParser& p, ParseResult r, size_t end) {
  Outcome o;
  o.result = r;
  o.status = p.errorStatus();
  o.reason = p.errorReason();
  o.end = end;
  o.head = p.head();
  return o;
}

Outcome feedWhole(const uint8_t* in, size_t n) {
  RequestParser p(kMaxHead, kMaxHeaders);
  auto buf = fuzz_http::exactCopy(in, n);
  const ParseResult r = p.feed(buf.get(), n);
  checkState(p, r, n, "whole");
  const size_t end = r == ParseResult::Complete ? p.consumed() : 0;
  Outcome o = finish(p, r, end);
  checkSticky(p, r, in, n);
  return o;
}

Outcome feedSplit(const uint8_t* in, size_t n, size_t split) {
  RequestParser p(kMaxHead, kMaxHeaders);
  auto first = fuzz_http::exactCopy(in, split);
  ParseResult r = p.feed(first.get(), split);
  checkState(p, r, split, "first piece");
  size_t end = r == ParseResult::Complete ? p.consumed() : 0;
  if (r == ParseResult::NeedMore) {
    auto second = fuzz_http::exactCopy(in + split, n - split);
    r = p.feed(second.get(), n - split);
    checkState(p, r, n - split, "second piece");
    end = r == ParseResult::Complete ? split + p.consumed() : 0;
  } else {
    checkSticky(p, r, in + split, n - split);  // the second piece after the end
  }
  Outcome o = finish(p, r, end);
  checkSticky(p, r, in, n);
  return o;
}

bool sameHead(const RequestHead& a, const RequestHead& b) {
  return a.method == b.method && a.target == b.target && a.path == b.path && a.query == b.query &&
         a.http_major == b.http_major && a.http_minor == b.http_minor && a.upgrade == b.upgrade &&
         fuzz_http::sameFields(a.headers, b.headers);
}

void checkCompleteHead(const Outcome& o) {
  const RequestHead& h = o.head;
  FUZZ_CHECK(o.end <= kMaxHead, "head of %zu bytes accepted; limit %zu", o.end, kMaxHead);
  FUZZ_CHECK(!h.method.empty() && !h.target.empty(), "Complete without a method or target");
  FUZZ_CHECK(h.http_major == 1, "Complete head with HTTP/%u.%u", h.http_major, h.http_minor);
  FUZZ_CHECK(h.headers.size() <= kMaxHeaders, "%zu header fields accepted; limit %zu",
             h.headers.size(), kMaxHeaders);
  for (const upgate::Header& f : h.headers) {
    FUZZ_CHECK(fuzz_http::isToken(f.name), "header name '%s' is not a token",
               fuzz_http::shown(f.name).c_str());
    FUZZ_CHECK(!fuzz_http::hasLineBreakOrNul(f.value) && fuzz_http::trimmed(f.value),
               "header %s: value '%s' has CR/LF/NUL or untrimmed whitespace",
               fuzz_http::shown(f.name).c_str(), fuzz_http::shown(f.value).c_str());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) {
    return 0;
  }
  const uint8_t* in = data + 1;
  const size_t n = size - 1;
  const size_t split = fuzz_http::splitPoint(data[0], n);

  const Outcome whole = feedWhole(in, n);
  const Outcome pieces = feedSplit(in, n, split);

  FUZZ_CHECK(whole.result == pieces.result && whole.status == pieces.status,
             "fed whole: %s %d '%s'; split at %zu of %zu: %s %d '%s'", name(whole.result),
             whole.status, whole.reason.c_str(), split, n, name(pieces.result), pieces.status,
             pieces.reason.c_str());
  if (whole.result != ParseResult::Error) {
    FUZZ_CHECK(sameHead(whole.head, pieces.head), "heads differ between whole and split at %zu",
               split);
  }
  if (whole.result == ParseResult::Complete) {
    FUZZ_CHECK(whole.end == pieces.end, "head ends at %zu fed whole, at %zu split at %zu",
               whole.end, pieces.end, split);
    checkCompleteHead(whole);
  }
  if (whole.result == ParseResult::NeedMore) {
    FUZZ_CHECK(n <= kMaxHead, "NeedMore after %zu bytes; the head limit is %zu", n, kMaxHead);
  }
  return 0;
}
