// libFuzzer target: http/response_parser (ResponseParser over llhttp).
//
// Input: [split byte][upstream response bytes...]. Small limits (kMaxHead, kMaxBody). The bytes
// are fed whole to one parser and in two pieces, split where the first byte says, to another;
// a parser still at NeedMore then gets finishEof() (the upstream closed). Both must agree on the
// result, whether it came from feed() or finishEof(), the error reason, the head, the body and
// (Complete from feed()) where the response ends in the stream. Plus the documented contract:
//   - consumed() <= len on Complete from feed(), 0 otherwise and after finishEof(); Complete and
//     Error are sticky for feed() and finishEof();
//   - Error always has a reason; the final head is never an interim 1xx (101 is final here);
//   - a 3-digit status (RFC 7230 §3.1.2); body <= kMaxBody and empty for 1xx, 204 and 304; no
//     CR/LF in the reason phrase; names and values trimmed of OWS, without CR, LF or NUL
//     (obs-fold is unfolded). The head is relayed to the client as it is (relayedResponse).

#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "http/response_parser.h"
#include "http_checks.h"

namespace {

using upgate::ParseResult;
using upgate::ResponseHead;
using upgate::ResponseParser;

constexpr size_t kMaxHead = 512;
constexpr size_t kMaxBody = 256;

const char* name(ParseResult r) {
  return fuzz_http::resultName(r);
}

struct Outcome {
  ParseResult result = ParseResult::NeedMore;
  bool via_eof = false;
  std::string reason;
  size_t end = 0;  // Complete from feed(): stream offset just past the response
  ResponseHead head;
  std::string body;
};

void checkState(const ResponseParser& p, ParseResult r, size_t len, const char* when) {
  switch (r) {
    case ParseResult::Complete:
      FUZZ_CHECK(p.consumed() <= len && p.errorReason().empty(),
                 "%s: Complete with consumed() %zu of %zu, reason '%s'", when, p.consumed(), len,
                 p.errorReason().c_str());
      break;
    case ParseResult::NeedMore:
      FUZZ_CHECK(p.consumed() == 0 && p.errorReason().empty(),
                 "%s: NeedMore with consumed() %zu, reason '%s'", when, p.consumed(),
                 p.errorReason().c_str());
      break;
    case ParseResult::Error:
      FUZZ_CHECK(p.consumed() == 0 && !p.errorReason().empty(),
                 "%s: Error with consumed() %zu, reason '%s'", when, p.consumed(),
                 p.errorReason().c_str());
      break;
  }
}

void checkSticky(ResponseParser& p, ParseResult r, const uint8_t* bytes, size_t len) {
  if (r == ParseResult::NeedMore) {
    return;
  }
  auto buf = fuzz_http::exactCopy(bytes, len);
  const ParseResult again = p.feed(buf.get(), len);
  FUZZ_CHECK(again == r && p.consumed() == 0, "feed() not sticky: %s then %s, consumed() %zu",
             name(r), name(again), p.consumed());
  const ParseResult eof = p.finishEof();
  FUZZ_CHECK(eof == r && p.consumed() == 0, "finishEof() not sticky: %s then %s", name(r),
             name(eof));
}

// After all bytes: EOF if the parser still wants more, then the final checks and the outcome.
Outcome conclude(ResponseParser& p, ParseResult r, size_t end, const uint8_t* in, size_t n) {
  Outcome o;
  if (r == ParseResult::NeedMore) {
    r = p.finishEof();
    FUZZ_CHECK(r != ParseResult::NeedMore, "finishEof() returned NeedMore");
    FUZZ_CHECK(p.consumed() == 0, "consumed() %zu after finishEof()", p.consumed());
    checkState(p, r, 0, "finishEof");
    o.via_eof = true;
    end = 0;
  }
  o.result = r;
  o.reason = p.errorReason();
  o.end = end;
  o.head = p.head();
  o.body = p.body();
  checkSticky(p, r, in, n);
  return o;
}

Outcome feedWhole(const uint8_t* in, size_t n) {
  ResponseParser p(kMaxHead, kMaxBody);
  auto buf = fuzz_http::exactCopy(in, n);
  const ParseResult r = p.feed(buf.get(), n);
  checkState(p, r, n, "whole");
  const size_t end = r == ParseResult::Complete ? p.consumed() : 0;
  return conclude(p, r, end, in, n);
}

Outcome feedSplit(const uint8_t* in, size_t n, size_t split) {
  ResponseParser p(kMaxHead, kMaxBody);
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
    auto second = fuzz_http::exactCopy(in + split, n - split);
    const ParseResult again = p.feed(second.get(), n - split);
    FUZZ_CHECK(again == r && p.consumed() == 0, "second piece after %s: %s, consumed() %zu",
               name(r), name(again), p.consumed());
  }
  return conclude(p, r, end, in, n);
}

bool sameHead(const ResponseHead& a, const ResponseHead& b) {
  return a.status == b.status && a.reason == b.reason && a.http_major == b.http_major &&
         a.http_minor == b.http_minor && fuzz_http::sameFields(a.headers, b.headers);
}

void checkComplete(const Outcome& o, size_t n) {
  const ResponseHead& h = o.head;
  const int s = h.status;
  FUZZ_CHECK(s >= 100 && s <= 999, "Complete with status %d", s);
  FUZZ_CHECK(!(s >= 100 && s < 200 && s != 101), "Complete on interim status %d", s);
  FUZZ_CHECK(o.end <= n, "response ends at %zu of %zu bytes", o.end, n);
  FUZZ_CHECK(o.body.size() <= kMaxBody, "body of %zu bytes accepted; limit %zu", o.body.size(),
             kMaxBody);
  if (s == 101 || s == 204 || s == 304) {
    FUZZ_CHECK(o.body.empty(), "status %d with a %zu-byte body", s, o.body.size());
  }
  if (s == 101) {
    FUZZ_CHECK(!o.via_eof, "101 completed only at EOF");
  }
  // relayedResponse() copies the reason into the status line it sends, relying on this.
  FUZZ_CHECK(h.reason.find_first_of("\r\n") == std::string::npos, "reason phrase '%s' has CR/LF",
             fuzz_http::shown(h.reason).c_str());
  for (const upgate::Header& f : h.headers) {
    FUZZ_CHECK(fuzz_http::trimmed(f.name) && fuzz_http::trimmed(f.value) &&
                   !fuzz_http::hasLineBreakOrNul(f.name) && !fuzz_http::hasLineBreakOrNul(f.value),
               "header '%s': '%s' untrimmed or with CR/LF/NUL", fuzz_http::shown(f.name).c_str(),
               fuzz_http::shown(f.value).c_str());
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

  FUZZ_CHECK(whole.result == pieces.result && whole.via_eof == pieces.via_eof &&
                 whole.reason == pieces.reason,
             "fed whole: %s%s '%s'; split at %zu of %zu: %s%s '%s'", name(whole.result),
             whole.via_eof ? " at EOF" : "", whole.reason.c_str(), split, n, name(pieces.result),
             pieces.via_eof ? " at EOF" : "", pieces.reason.c_str());
  if (whole.result == ParseResult::Complete) {
    FUZZ_CHECK(sameHead(whole.head, pieces.head) && whole.body == pieces.body,
               "head or body differ between whole and split at %zu (body %zu vs %zu bytes)", split,
               whole.body.size(), pieces.body.size());
    FUZZ_CHECK(whole.end == pieces.end, "response ends at %zu fed whole, at %zu split at %zu",
               whole.end, pieces.end, split);
    checkComplete(whole, n);
  }
  return 0;
}
