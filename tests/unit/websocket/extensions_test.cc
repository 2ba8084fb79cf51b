#include "websocket/extensions.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace upgate {
namespace {

// Renders parsed extensions compactly: "name(p,q=v);next()".
std::string render(const std::vector<Extension>& list) {
  std::string s;
  for (const Extension& e : list) {
    if (!s.empty()) {
      s += ";";
    }
    s += e.name + "(";
    for (size_t i = 0; i < e.params.size(); ++i) {
      s += (i != 0 ? "," : "") + e.params[i].name;
      if (e.params[i].has_value) {
        s += "=" + e.params[i].value;
      }
    }
    s += ")";
  }
  return s;
}

TEST_CASE("extensions: parseExtensions table", "[websocket]") {
  struct Row {
    std::string value;
    bool ok;
    std::string parsed;
  };
  const Row row = GENERATE(values<Row>({
      {"", true, ""},
      {"permessage-deflate", true, "permessage-deflate()"},
      {"permessage-deflate; client_max_window_bits", true,
       "permessage-deflate(client_max_window_bits)"},
      {"permessage-deflate;client_max_window_bits=10;server_no_context_takeover", true,
       "permessage-deflate(client_max_window_bits=10,server_no_context_takeover)"},
      {"permessage-deflate ; server_max_window_bits = 10 , x-foo", true,
       "permessage-deflate(server_max_window_bits=10);x-foo()"},
      {"a; b=\"10\"", true, "a(b=10)"},
      {"a; b=\"1\\0\"", true, "a(b=10)"},  // quoted-pair unescapes
      {" , ,a,, b ,", true, "a();b()"},    // empty list elements are ignored
      {"a;\tb", true, "a(b)"},
      {"a; b=\"x y\"", false, ""},  // unescaped value must be a token
      {"a; b=\"\"", false, ""},
      {"a; b=\"10", false, ""},  // no closing quote
      {";", false, ""},
      {"a;", false, ""},
      {"a; =1", false, ""},
      {"a; b=", false, ""},
      {"a=1", false, ""},
      {"a b", false, ""},
      {"a; b c", false, ""},
      {"a,; b", false, ""},
      {"a; b=1=2", false, ""},
      {"\"a\"", false, ""},
      {"a\r\nb", false, ""},
  }));
  CAPTURE(row.value);
  std::vector<Extension> list;
  CHECK(parseExtensions(row.value, &list) == row.ok);
  if (row.ok) {
    CHECK(render(list) == row.parsed);
  }
}

TEST_CASE("extensions: lines append to one list", "[websocket]") {
  std::vector<Extension> list;
  REQUIRE(parseExtensions("a; x", &list));
  REQUIRE(parseExtensions("b", &list));
  CHECK(render(list) == "a(x);b()");
}

DeflatePolicy policy(bool snct, bool cnct, uint8_t smwb, uint8_t cmwb) {
  DeflatePolicy p;
  p.server_no_context_takeover = snct;
  p.client_no_context_takeover = cnct;
  p.server_max_window_bits = smwb;
  p.client_max_window_bits = cmwb;
  return p;
}

std::string agreementText(const DeflateAgreement& a) {
  return std::string(a.server_no_context_takeover ? "S" : "s") +
         (a.client_no_context_takeover ? "C" : "c") + std::to_string(a.server_max_window_bits) +
         "/" + std::to_string(a.client_max_window_bits);
}

TEST_CASE("extensions: server negotiation table (RFC 7692 §5, §7.1)", "[websocket]") {
  struct Row {
    const char* name;
    std::string offers;
    DeflatePolicy policy;
    NegotiationResult result;
    std::string response;
    std::string agreed;  // agreementText: S/s server_no_context_takeover, C/c client, bits
  };
  const DeflatePolicy open = policy(false, false, 15, 15);
  const Row row = GENERATE_REF(values<Row>({
      // RFC 7692 §5.2-style examples.
      {"plain offer", "permessage-deflate", open, NegotiationResult::Accepted, "permessage-deflate",
       "sc15/15"},
      {"client_max_window_bits without value, server limits the client",
       "permessage-deflate; client_max_window_bits", policy(false, false, 15, 10),
       NegotiationResult::Accepted, "permessage-deflate; client_max_window_bits=10", "sc15/10"},
      {"client_max_window_bits without value, no limit",
       "permessage-deflate; client_max_window_bits", open, NegotiationResult::Accepted,
       "permessage-deflate", "sc15/15"},
      {"first offer accepted", "permessage-deflate; server_max_window_bits=10, permessage-deflate",
       open, NegotiationResult::Accepted, "permessage-deflate; server_max_window_bits=10",
       "sc10/15"},
      {"offer with an unknown parameter is declined, the next taken",
       "permessage-deflate; foo=1, permessage-deflate; client_max_window_bits", open,
       NegotiationResult::Accepted, "permessage-deflate", "sc15/15"},
      {"client asks for server_no_context_takeover",
       "permessage-deflate; server_no_context_takeover", open, NegotiationResult::Accepted,
       "permessage-deflate; server_no_context_takeover", "Sc15/15"},
      {"client promises client_no_context_takeover, echoed",
       "permessage-deflate; client_no_context_takeover", open, NegotiationResult::Accepted,
       "permessage-deflate; client_no_context_takeover", "sC15/15"},
      {"policy adds both no_context_takeover flags", "permessage-deflate",
       policy(true, true, 15, 15), NegotiationResult::Accepted,
       "permessage-deflate; server_no_context_takeover; client_no_context_takeover", "SC15/15"},
      {"server limits its own window unasked", "permessage-deflate", policy(false, false, 11, 15),
       NegotiationResult::Accepted, "permessage-deflate; server_max_window_bits=11", "sc11/15"},
      {"smaller of offer and policy for the server window",
       "permessage-deflate; server_max_window_bits=12", policy(false, false, 10, 15),
       NegotiationResult::Accepted, "permessage-deflate; server_max_window_bits=10", "sc10/15"},
      {"client offer of 8 bits for the server", "permessage-deflate; server_max_window_bits=8",
       open, NegotiationResult::Accepted, "permessage-deflate; server_max_window_bits=8", "sc8/15"},
      {"client hint value below our limit", "permessage-deflate; client_max_window_bits=9",
       policy(false, false, 15, 12), NegotiationResult::Accepted,
       "permessage-deflate; client_max_window_bits=9", "sc15/9"},
      {"client hint value above our limit", "permessage-deflate; client_max_window_bits=14",
       policy(false, false, 15, 12), NegotiationResult::Accepted,
       "permessage-deflate; client_max_window_bits=12", "sc15/12"},
      {"cannot limit a client that did not offer client_max_window_bits", "permessage-deflate",
       policy(false, false, 15, 10), NegotiationResult::Declined, "", ""},
      {"all parameters",
       "permessage-deflate; server_no_context_takeover; "
       "client_no_context_takeover; server_max_window_bits=9; "
       "client_max_window_bits=9",
       open, NegotiationResult::Accepted,
       "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
       "server_max_window_bits=9; client_max_window_bits=9",
       "SC9/9"},
      {"quoted value", "permessage-deflate; server_max_window_bits=\"10\"", open,
       NegotiationResult::Accepted, "permessage-deflate; server_max_window_bits=10", "sc10/15"},
      {"other extensions ignored", "x-webkit-deflate-frame, permessage-deflate", open,
       NegotiationResult::Accepted, "permessage-deflate", "sc15/15"},
      {"no permessage-deflate", "x-webkit-deflate-frame", open, NegotiationResult::Declined, "",
       ""},
      {"empty header", "", open, NegotiationResult::Declined, "", ""},
      {"duplicate parameter",
       "permessage-deflate; server_no_context_takeover; "
       "server_no_context_takeover",
       open, NegotiationResult::Declined, "", ""},
      {"value on a flag", "permessage-deflate; client_no_context_takeover=1", open,
       NegotiationResult::Declined, "", ""},
      {"server_max_window_bits without value", "permessage-deflate; server_max_window_bits", open,
       NegotiationResult::Declined, "", ""},
      {"window bits 7", "permessage-deflate; server_max_window_bits=7", open,
       NegotiationResult::Declined, "", ""},
      {"window bits 16", "permessage-deflate; client_max_window_bits=16", open,
       NegotiationResult::Declined, "", ""},
      {"window bits with a leading zero", "permessage-deflate; server_max_window_bits=09", open,
       NegotiationResult::Declined, "", ""},
      {"window bits not a number", "permessage-deflate; server_max_window_bits=ten", open,
       NegotiationResult::Declined, "", ""},
      {"parameter names are case-sensitive", "permessage-deflate; Server_No_Context_Takeover", open,
       NegotiationResult::Declined, "", ""},
      {"syntax error", "permessage-deflate; =", open, NegotiationResult::Malformed, "", ""},
  }));
  CAPTURE(row.name);
  DeflateAgreement agreed;
  std::string response;
  CHECK(negotiateDeflateServer(row.offers, row.policy, &agreed, &response) == row.result);
  if (row.result == NegotiationResult::Accepted) {
    CHECK(response == row.response);
    CHECK(agreementText(agreed) == row.agreed);
    // Our own response must pass the client-side check of an equivalent offer.
    std::vector<Extension> parsed;
    CHECK(parseExtensions(response, &parsed));
  }
}

TEST_CASE("extensions: buildDeflateOffer", "[websocket]") {
  CHECK(buildDeflateOffer(policy(false, false, 15, 15)) ==
        "permessage-deflate; client_max_window_bits");
  CHECK(buildDeflateOffer(policy(true, true, 10, 12)) ==
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=12");
  // Our offers are accepted by our own server side.
  for (const DeflatePolicy& p : {policy(false, false, 15, 15), policy(true, true, 10, 12),
                                 policy(false, true, 9, 15), policy(true, false, 15, 8)}) {
    DeflateAgreement a;
    std::string response;
    REQUIRE(negotiateDeflateServer(buildDeflateOffer(p), policy(false, false, 15, 15), &a,
                                   &response) == NegotiationResult::Accepted);
    DeflateAgreement client_view;
    std::string error;
    CHECK(acceptDeflateResponse(response, p, &client_view, &error) == NegotiationResult::Accepted);
    CHECK(error.empty());
    CHECK(client_view.server_no_context_takeover == a.server_no_context_takeover);
    CHECK(client_view.client_no_context_takeover == a.client_no_context_takeover);
    CHECK(client_view.server_max_window_bits == a.server_max_window_bits);
    CHECK(client_view.client_max_window_bits <= a.client_max_window_bits);
  }
}

TEST_CASE("extensions: client checks the server's response", "[websocket]") {
  struct Row {
    const char* name;
    DeflatePolicy offer;  // the offer is buildDeflateOffer(offer)
    std::string response;
    NegotiationResult result;
    std::string agreed;
  };
  const DeflatePolicy open = policy(false, false, 15, 15);
  const Row row = GENERATE_REF(values<Row>({
      {"no extension", open, "", NegotiationResult::Declined, ""},
      {"plain", open, "permessage-deflate", NegotiationResult::Accepted, "sc15/15"},
      {"server limits the client", open, "permessage-deflate; client_max_window_bits=10",
       NegotiationResult::Accepted, "sc15/10"},
      {"server limits itself unasked", open, "permessage-deflate; server_max_window_bits=12",
       NegotiationResult::Accepted, "sc12/15"},
      {"server announces no context takeover unasked", open,
       "permessage-deflate; server_no_context_takeover", NegotiationResult::Accepted, "Sc15/15"},
      {"server requires client no context takeover", open,
       "permessage-deflate; client_no_context_takeover", NegotiationResult::Accepted, "sC15/15"},
      {"our promise holds without an echo", policy(false, true, 15, 15), "permessage-deflate",
       NegotiationResult::Accepted, "sC15/15"},
      {"our own window limit applies without an answer", policy(false, false, 15, 11),
       "permessage-deflate", NegotiationResult::Accepted, "sc15/11"},
      {"asked server window honoured", policy(false, false, 10, 15),
       "permessage-deflate; server_max_window_bits=9", NegotiationResult::Accepted, "sc9/15"},
      {"asked server window missing", policy(false, false, 10, 15), "permessage-deflate",
       NegotiationResult::Malformed, ""},
      {"asked server window exceeded", policy(false, false, 10, 15),
       "permessage-deflate; server_max_window_bits=11", NegotiationResult::Malformed, ""},
      {"asked server_no_context_takeover missing", policy(true, false, 15, 15),
       "permessage-deflate", NegotiationResult::Malformed, ""},
      {"client window above our offered value", policy(false, false, 15, 10),
       "permessage-deflate; client_max_window_bits=12", NegotiationResult::Malformed, ""},
      {"client_max_window_bits without value", open, "permessage-deflate; client_max_window_bits",
       NegotiationResult::Malformed, ""},
      {"unknown parameter", open, "permessage-deflate; foo", NegotiationResult::Malformed, ""},
      {"duplicate parameter", open,
       "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
       NegotiationResult::Malformed, ""},
      {"bits out of range", open, "permessage-deflate; server_max_window_bits=16",
       NegotiationResult::Malformed, ""},
      {"extension not offered", open, "x-webkit-deflate-frame", NegotiationResult::Malformed, ""},
      {"two extensions", open, "permessage-deflate, permessage-deflate",
       NegotiationResult::Malformed, ""},
      {"syntax error", open, "permessage-deflate;", NegotiationResult::Malformed, ""},
  }));
  CAPTURE(row.name);
  DeflateAgreement agreed;
  std::string error;
  CHECK(acceptDeflateResponse(row.response, row.offer, &agreed, &error) == row.result);
  if (row.result == NegotiationResult::Accepted) {
    CHECK(agreementText(agreed) == row.agreed);
  }
  CHECK(error.empty() == (row.result != NegotiationResult::Malformed));
}

TEST_CASE("extensions: channels per sender", "[websocket]") {
  DeflateAgreement a;
  a.server_no_context_takeover = true;
  a.client_no_context_takeover = false;
  a.server_max_window_bits = 10;
  a.client_max_window_bits = 12;
  const DeflateChannel from_server = channelFor(a, Role::Server);
  const DeflateChannel from_client = channelFor(a, Role::Client);
  CHECK(from_server.window_bits == 10);
  CHECK(from_server.no_context_takeover);
  CHECK(from_client.window_bits == 12);
  CHECK_FALSE(from_client.no_context_takeover);
}

}  // namespace
}  // namespace upgate
