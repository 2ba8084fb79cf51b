#include "websocket/extensions.h"

#include <algorithm>
#include <utility>

namespace upgate {

namespace {

constexpr std::string_view kDeflateName = "permessage-deflate";
constexpr uint8_t kMinWindowBits = 8;
constexpr uint8_t kMaxWindowBits = 15;

bool isTchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
    return true;
  }
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool isTokenString(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), isTchar);
}

// A cursor over one header value.
class Scanner {
 public:
  explicit Scanner(std::string_view s) : s_(s) {}

  bool atEnd() const { return i_ == s_.size(); }
  bool peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
  void advance() { ++i_; }
  void skipOws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t')) {
      ++i_;
    }
  }

  bool token(std::string* out) {
    const size_t start = i_;
    while (i_ < s_.size() && isTchar(s_[i_])) {
      ++i_;
    }
    out->assign(s_.substr(start, i_ - start));
    return i_ > start;
  }

  // RFC 7230 §3.2.6 quoted-string, unescaped into *out; the cursor is on the opening quote.
  bool quoted(std::string* out) {
    ++i_;
    out->clear();
    while (i_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') {
        return true;
      }
      if (c == '\\') {
        if (i_ == s_.size()) {
          return false;
        }
        const auto escaped = static_cast<unsigned char>(s_[i_++]);
        if ((escaped < 0x20 && escaped != '\t') || escaped == 0x7F) {
          return false;
        }
        out->push_back(static_cast<char>(escaped));
        continue;
      }
      if ((c < 0x20 && c != '\t') || c == 0x7F) {
        return false;
      }
      out->push_back(static_cast<char>(c));
    }
    return false;  // no closing quote
  }

 private:
  std::string_view s_;
  size_t i_ = 0;
};

// permessage-deflate parameters as sent; 0 window bits = parameter absent.
struct DeflateParams {
  bool server_no_context_takeover = false;
  bool client_no_context_takeover = false;
  uint8_t server_max_window_bits = 0;
  bool client_max_window_bits = false;  // present, with or without a value
  uint8_t client_max_window_value = 0;  // its value, 0 if none
};

// "8".."15", decimal without leading zeros (RFC 7692 §7.1.2.1, §7.1.2.2).
bool parseWindowBits(const std::string& v, uint8_t* out) {
  if (v.empty() || v.size() > 2 || v[0] == '0') {
    return false;
  }
  int n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') {
      return false;
    }
    n = n * 10 + (c - '0');
  }
  if (n < kMinWindowBits || n > kMaxWindowBits) {
    return false;
  }
  *out = static_cast<uint8_t>(n);
  return true;
}

// Reads the parameters of one permessage-deflate element. false (with *error) on an unknown or
// repeated parameter or a bad value (§7.1: such an offer is declined, such a response fails).
bool readDeflateParams(const Extension& ext, DeflateParams* p, std::string* error) {
  bool seen[4] = {false, false, false, false};
  for (const ExtensionParam& param : ext.params) {
    int index = -1;
    if (param.name == "server_no_context_takeover") {
      index = 0;
    } else if (param.name == "client_no_context_takeover") {
      index = 1;
    } else if (param.name == "server_max_window_bits") {
      index = 2;
    } else if (param.name == "client_max_window_bits") {
      index = 3;
    } else {
      *error = "unknown permessage-deflate parameter " + param.name;
      return false;
    }
    if (seen[index]) {
      *error = "repeated permessage-deflate parameter " + param.name;
      return false;
    }
    seen[index] = true;
    switch (index) {
      case 0:
      case 1:
        if (param.has_value) {
          *error = param.name + " takes no value";
          return false;
        }
        (index == 0 ? p->server_no_context_takeover : p->client_no_context_takeover) = true;
        break;
      case 2:
        if (!param.has_value || !parseWindowBits(param.value, &p->server_max_window_bits)) {
          *error = "server_max_window_bits needs a value from 8 to 15";
          return false;
        }
        break;
      default:
        p->client_max_window_bits = true;
        if (param.has_value && !parseWindowBits(param.value, &p->client_max_window_value)) {
          *error = "client_max_window_bits value must be from 8 to 15";
          return false;
        }
        break;
    }
  }
  return true;
}

uint8_t clampBits(uint8_t bits) {
  return std::clamp(bits, kMinWindowBits, kMaxWindowBits);
}

// Decides on one valid offer under `policy`; false if the policy cannot accept it.
bool decideOffer(const DeflateParams& offer, const DeflatePolicy& policy, DeflateAgreement* a,
                 std::string* response) {
  const uint8_t our_server_bits = clampBits(policy.server_max_window_bits);
  const uint8_t our_client_bits = clampBits(policy.client_max_window_bits);
  DeflateAgreement r;
  // §7.1.1.1: accepting the request means honouring it; we may also announce it unasked.
  r.server_no_context_takeover =
      offer.server_no_context_takeover || policy.server_no_context_takeover;
  // §7.1.1.2: the client's parameter is a promise; echoing it makes it binding for our inflater.
  r.client_no_context_takeover =
      offer.client_no_context_takeover || policy.client_no_context_takeover;
  // §7.1.2.1: answer with the same or a smaller value; unasked, we may still limit ourselves.
  r.server_max_window_bits = our_server_bits;
  if (offer.server_max_window_bits != 0) {
    r.server_max_window_bits = std::min(offer.server_max_window_bits, our_server_bits);
  }
  const bool send_server_bits =
      offer.server_max_window_bits != 0 || our_server_bits < kMaxWindowBits;
  // §7.1.2.2: without client_max_window_bits in the offer we must not send it, so the client may
  // use a 32 KiB window; decline if our policy cannot allow that.
  bool send_client_bits = false;
  if (offer.client_max_window_bits) {
    const uint8_t hint =
        offer.client_max_window_value != 0 ? offer.client_max_window_value : kMaxWindowBits;
    r.client_max_window_bits = std::min(hint, our_client_bits);
    send_client_bits = r.client_max_window_bits < kMaxWindowBits;
  } else if (our_client_bits < kMaxWindowBits) {
    return false;
  }
  std::string out(kDeflateName);
  if (r.server_no_context_takeover) {
    out += "; server_no_context_takeover";
  }
  if (r.client_no_context_takeover) {
    out += "; client_no_context_takeover";
  }
  if (send_server_bits) {
    out += "; server_max_window_bits=" + std::to_string(r.server_max_window_bits);
  }
  if (send_client_bits) {
    out += "; client_max_window_bits=" + std::to_string(r.client_max_window_bits);
  }
  *a = r;
  *response = std::move(out);
  return true;
}

}  // namespace

bool parseExtensions(std::string_view header_value, std::vector<Extension>* out) {
  Scanner s(header_value);
  for (;;) {
    s.skipOws();
    if (s.atEnd()) {
      return true;
    }
    if (s.peek(',')) {  // empty list element (RFC 7230 §7)
      s.advance();
      continue;
    }
    Extension ext;
    if (!s.token(&ext.name)) {
      return false;
    }
    s.skipOws();
    while (s.peek(';')) {
      s.advance();
      s.skipOws();
      ExtensionParam param;
      if (!s.token(&param.name)) {
        return false;
      }
      s.skipOws();
      if (s.peek('=')) {
        s.advance();
        s.skipOws();
        param.has_value = true;
        if (s.peek('"')) {
          // §9.1: a quoted value must still be a token once unescaped.
          if (!s.quoted(&param.value) || !isTokenString(param.value)) {
            return false;
          }
        } else if (!s.token(&param.value)) {
          return false;
        }
        s.skipOws();
      }
      ext.params.push_back(std::move(param));
    }
    out->push_back(std::move(ext));
    if (s.atEnd()) {
      return true;
    }
    if (!s.peek(',')) {
      return false;
    }
    s.advance();
  }
}

DeflateChannel channelFor(const DeflateAgreement& agreement, Role sender) {
  DeflateChannel c;
  if (sender == Role::Server) {
    c.window_bits = agreement.server_max_window_bits;
    c.no_context_takeover = agreement.server_no_context_takeover;
  } else {
    c.window_bits = agreement.client_max_window_bits;
    c.no_context_takeover = agreement.client_no_context_takeover;
  }
  return c;
}

NegotiationResult negotiateDeflateServer(std::string_view offers, const DeflatePolicy& policy,
                                         DeflateAgreement* agreement, std::string* response) {
  std::vector<Extension> list;
  if (!parseExtensions(offers, &list)) {
    return NegotiationResult::Malformed;
  }
  std::string ignored;
  for (const Extension& ext : list) {
    if (ext.name != kDeflateName) {
      continue;
    }
    DeflateParams offer;
    if (!readDeflateParams(ext, &offer, &ignored)) {
      continue;  // §7.1: decline this offer, try the next
    }
    if (decideOffer(offer, policy, agreement, response)) {
      return NegotiationResult::Accepted;
    }
  }
  return NegotiationResult::Declined;
}

std::string buildDeflateOffer(const DeflatePolicy& policy) {
  std::string out(kDeflateName);
  if (policy.server_no_context_takeover) {
    out += "; server_no_context_takeover";
  }
  if (policy.client_no_context_takeover) {
    out += "; client_no_context_takeover";
  }
  const uint8_t server_bits = clampBits(policy.server_max_window_bits);
  if (server_bits < kMaxWindowBits) {
    out += "; server_max_window_bits=" + std::to_string(server_bits);
  }
  out += "; client_max_window_bits";
  const uint8_t client_bits = clampBits(policy.client_max_window_bits);
  if (client_bits < kMaxWindowBits) {
    out += "=" + std::to_string(client_bits);
  }
  return out;
}

NegotiationResult acceptDeflateResponse(std::string_view response, const DeflatePolicy& policy,
                                        DeflateAgreement* agreement, std::string* error) {
  std::vector<Extension> list;
  if (!parseExtensions(response, &list)) {
    *error = "malformed Sec-WebSocket-Extensions in the response";
    return NegotiationResult::Malformed;
  }
  if (list.empty()) {
    return NegotiationResult::Declined;
  }
  if (list.size() > 1) {
    *error = "response accepts more than one extension";
    return NegotiationResult::Malformed;
  }
  if (list[0].name != kDeflateName) {
    *error = "response accepts extension " + list[0].name + ", which was not offered";
    return NegotiationResult::Malformed;
  }
  DeflateParams got;
  if (!readDeflateParams(list[0], &got, error)) {
    return NegotiationResult::Malformed;
  }
  const uint8_t asked_server_bits = clampBits(policy.server_max_window_bits);
  const uint8_t offered_client_bits = clampBits(policy.client_max_window_bits);
  if (policy.server_no_context_takeover && !got.server_no_context_takeover) {
    *error = "response lacks the server_no_context_takeover we asked for";
    return NegotiationResult::Malformed;
  }
  if (asked_server_bits < kMaxWindowBits) {
    if (got.server_max_window_bits == 0) {
      *error = "response lacks the server_max_window_bits we asked for";
      return NegotiationResult::Malformed;
    }
    if (got.server_max_window_bits > asked_server_bits) {
      *error = "response server_max_window_bits is above the value we asked for";
      return NegotiationResult::Malformed;
    }
  }
  if (got.client_max_window_bits) {
    if (got.client_max_window_value == 0) {
      *error = "response client_max_window_bits has no value";
      return NegotiationResult::Malformed;
    }
    if (offered_client_bits < kMaxWindowBits && got.client_max_window_value > offered_client_bits) {
      *error = "response client_max_window_bits is above the value we offered";
      return NegotiationResult::Malformed;
    }
  }
  DeflateAgreement a;
  a.server_no_context_takeover = got.server_no_context_takeover;
  a.client_no_context_takeover =
      got.client_no_context_takeover || policy.client_no_context_takeover;
  a.server_max_window_bits =
      got.server_max_window_bits != 0 ? got.server_max_window_bits : kMaxWindowBits;
  a.client_max_window_bits = got.client_max_window_bits
                                 ? std::min(got.client_max_window_value, offered_client_bits)
                                 : offered_client_bits;
  *agreement = a;
  return NegotiationResult::Accepted;
}

}  // namespace upgate
