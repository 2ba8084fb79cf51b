#pragma once
// Sec-WebSocket-Extensions parsing (RFC 6455 §9.1) and permessage-deflate negotiation (RFC 7692
// §5, §7.1) for both roles the gateway plays:
//   - server, on the client leg: pick one of the client's offers under our policy and produce the
//     response header value (negotiateDeflateServer);
//   - client, on the upstream leg: build our offer (buildDeflateOffer) and check the upstream's
//     response against it (acceptDeflateResponse).
// In passthrough mode none of this runs: the header is relayed untouched.
//
// Handshake-time code: allocates (strings, vectors), never throws except std::bad_alloc (OOM
// aborts). Pure functions; any thread.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "websocket/frame_parser.h"  // Role

namespace upgate {

// One extension parameter: `name` or `name=value`. A quoted-string value is stored unescaped.
struct ExtensionParam {
  std::string name;
  std::string value;
  bool has_value = false;
};

// One element of the extension list: a name and its parameters in wire order.
struct Extension {
  std::string name;
  std::vector<ExtensionParam> params;
};

// Appends the elements of one header value to *out (call once per header line, in order: the
// lines form a single list). Grammar (RFC 6455 §9.1 on RFC 7230 §3.2.6, §7):
//   list  = element *( OWS "," OWS element )   empty elements ("a, ,b") are skipped
//   element = token *( OWS ";" OWS param )
//   param = token [ OWS "=" OWS ( token / quoted-string ) ]
// A quoted value must unescape to a token (§9.1). Names are kept as sent and compared exactly
// (case-sensitively) by the functions below, as RFC 7692's lowercase names are sent in practice.
// Returns false on a syntax error; *out then holds the elements before the bad one.
bool parseExtensions(std::string_view header_value, std::vector<Extension>* out);

// Our wishes for permessage-deflate on one leg, from the route's compression settings. Each field
// keeps its RFC 7692 meaning ("server" = the endpoint that answered the upgrade), whichever role
// we play on that leg:
struct DeflatePolicy {
  // The server's compressor starts every message with an empty window (§7.1.1.1). As server we
  // announce it; as client we ask for it (so we may free our inflater between messages).
  bool server_no_context_takeover = false;
  // The client's compressor starts every message empty (§7.1.1.2). As server we require it; as
  // client we promise it.
  bool client_no_context_takeover = false;
  // Largest LZ77 window of the server's compressor, 8..15 (§7.1.2.1). As server: the window we
  // compress with (a client's smaller request wins). As client: requested when below 15.
  uint8_t server_max_window_bits = 15;
  // Largest window of the client's compressor, 8..15 (§7.1.2.2). As server: the window we make
  // the client use (our inflater's memory); below 15 it needs an offer that allows limiting the
  // client, other offers are declined. As client: the window we compress with, offered as a
  // value when below 15.
  uint8_t client_max_window_bits = 15;
};

// The negotiated parameters, with absent window bits as 15.
struct DeflateAgreement {
  bool server_no_context_takeover = false;
  bool client_no_context_takeover = false;
  uint8_t server_max_window_bits = 15;
  uint8_t client_max_window_bits = 15;
};

// How one compressor/decompressor pair is set up: the compressing side's window and whether it
// starts every message empty. Pass to Deflater/Inflater (deflate.h).
struct DeflateChannel {
  uint8_t window_bits = 15;
  bool no_context_takeover = false;
};

// The channel for messages that `sender` sends: what the sender's Deflater and the receiver's
// Inflater use. E.g. as server on the client leg: our Deflater = channelFor(a, Role::Server),
// our Inflater = channelFor(a, Role::Client).
DeflateChannel channelFor(const DeflateAgreement& agreement, Role sender);

enum class NegotiationResult {
  Accepted,  // *agreement and the response are filled
  Declined,  // no acceptable offer / the response holds no extension: no compression
  Malformed  // syntax error, or (client side) a response our offer does not allow
};

// Server side. `offers`: the request's Sec-WebSocket-Extensions values joined with ", " (or the
// one header). Accepts the first valid permessage-deflate offer that fits `policy` (§5.1, offers
// are in preference order); offers with unknown or duplicate parameters or bad values are
// declined (§7.1). Other extensions are ignored. On Accepted, *response is the value for the 101's
// Sec-WebSocket-Extensions header, e.g. "permessage-deflate; client_max_window_bits=10". A
// Malformed header may be answered with 400 or treated as Declined; the caller decides.
NegotiationResult negotiateDeflateServer(std::string_view offers, const DeflatePolicy& policy,
                                         DeflateAgreement* agreement, std::string* response);

// Client side: our offer as a header value. Always includes client_max_window_bits (so the server
// may limit our window, which a zlib compressor can always honour), with a value when
// policy.client_max_window_bits < 15; server_max_window_bits=N when policy's is below 15; the
// no_context_takeover flags the policy sets.
std::string buildDeflateOffer(const DeflatePolicy& policy);

// Client side: checks the upstream's Sec-WebSocket-Extensions response (joined like `offers`;
// empty when absent) against the offer buildDeflateOffer(policy) made. Malformed (with *error set)
// for: syntax errors, more than one extension or one we did not offer, unknown or duplicate
// parameters, values outside 8..15 or with leading zeros, a value where none belongs or none
// where one is required, server_max_window_bits above what we asked or missing although we asked,
// server_no_context_takeover missing although we asked, client_max_window_bits above our offered
// value. The caller fails the upgrade (502). Declined: empty response.
NegotiationResult acceptDeflateResponse(std::string_view response, const DeflatePolicy& policy,
                                        DeflateAgreement* agreement, std::string* error);

}  // namespace upgate
