#pragma once
// HTTP header lists and the small RFC 7230 helpers every layer needs: case-insensitive lookup,
// comma-separated token lists (Connection, Upgrade, Sec-WebSocket-Protocol) and the hop-by-hop set.
//
// Pure functions on owned strings: no allocation except splitTokens' vector, never throw except
// std::bad_alloc (OOM aborts, style 2.6), safe to call from any thread on data that thread owns.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace upgate {

// One header field as received or to be sent. `name` keeps the sender's spelling (compare with
// iequals); `value` has leading and trailing optional whitespace removed (RFC 7230 §3.2.4).
struct Header {
  std::string name;
  std::string value;
};

// Fields in wire order; repeated names stay separate entries (never merged).
using HeaderList = std::vector<Header>;

// ASCII case-insensitive comparison of two strings of the same length.
bool iequalsSameLength(std::string_view a, std::string_view b);

// ASCII case-insensitive equality; bytes >= 0x80 compare exactly (header names are ASCII tokens).
// Inline so that the common case, names of different lengths, costs no call.
inline bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && iequalsSameLength(a, b);
}

// iequals() with '_' and '-' taken as the same: names that servers reading headers CGI-style
// (X-Upgate-User and X_Upgate_User both as HTTP_X_UPGATE_USER) cannot tell apart. For headers
// the gateway vouches for, so a client's look-alike cannot stand in for them.
bool sameFieldName(std::string_view a, std::string_view b);

// Removes every header called `name` or a look-alike of it (sameFieldName).
void removeHeaders(HeaderList& headers, std::string_view name);

// Value of the first header called `name` (case-insensitive), or nullptr. The pointer is into
// `headers` and lives as long as that element is not modified or removed.
const std::string* findHeader(const HeaderList& headers, std::string_view name);

// Number of headers called `name` (case-insensitive).
size_t countHeader(const HeaderList& headers, std::string_view name);

// True if any header called `name` holds `token` in its comma-separated list (all instances are
// searched, OWS trimmed, tokens compared case-insensitively). E.g. Connection: keep-alive, Upgrade
// has token "upgrade".
bool headerHasToken(const HeaderList& headers, std::string_view name, std::string_view token);

// True if the comma-separated list `list` (one field value) holds `token`, as headerHasToken.
bool valueHasToken(std::string_view list, std::string_view token);

// Splits a comma-separated list, trims SP/HTAB around each element and drops empty elements
// ("a, b ,,c" -> a, b, c; RFC 7230 §7). Quoted strings are not understood: use it for token
// lists only. The views point into `list`.
std::vector<std::string_view> splitTokens(std::string_view list);

// RFC 7230 §6.1 hop-by-hop headers, which a proxy never forwards: Connection, Keep-Alive,
// Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade (case-insensitive). Headers nominated
// in a Connection header are hop-by-hop too; check those with headerHasToken(h, "Connection", n).
bool isHopByHop(std::string_view name);

// Every token of every Connection header, in order (views into `headers`): split once, for
// filtering a whole header list against it without rescanning the list per name.
std::vector<std::string_view> connectionTokens(const HeaderList& headers);

// True if `tokens` holds `token` (case-insensitive).
bool hasToken(const std::vector<std::string_view>& tokens, std::string_view token);

// True if `s` is a non-empty RFC 7230 §3.2.6 token (tchar only), as a header name must be.
bool isToken(std::string_view s);

// True if `s` may be sent as a field value: no control characters except HTAB (so no CR, LF or
// NUL that could split or end a header line). obs-text (bytes >= 0x80) is allowed.
bool isFieldValue(std::string_view s);

// `s` without leading and trailing SP/HTAB.
std::string_view trimOws(std::string_view s);

// Appends "name: value\r\n" (the caller has checked both).
void appendHeader(std::string& out, std::string_view name, std::string_view value);

// All non-empty values of `name`, in order, joined by ", " (RFC 9110 §5.3 list combination).
std::string joinValues(const HeaderList& headers, std::string_view name);

}  // namespace upgate
