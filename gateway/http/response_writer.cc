#include "http/response_writer.h"

#include "http/headers.h"

namespace upgate {

namespace {

void appendStatusLine(std::string& out, int status, std::string_view reason) {
  out.append("HTTP/1.1 ");
  out.append(std::to_string(status));
  out.push_back(' ');
  out.append(reason);
  out.append("\r\n");
}

// End-to-end headers of a relayed message (RFC 7230 §6.1): neither hop-by-hop nor nominated by
// the sender's Connection header; Content-Length is always recomputed or omitted by us.
// `nominated` is connectionTokens() of the message.
bool isRelayable(const std::vector<std::string_view>& nominated, const Header& h) {
  return !isHopByHop(h.name) && !iequals(h.name, "Content-Length") && !hasToken(nominated, h.name);
}

bool hasNoBody(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

}  // namespace

std::string_view reasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 406:
      return "Not Acceptable";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 421:
      return "Misdirected Request";
    case 426:
      return "Upgrade Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";
  }
}

std::string errorResponse(int status, std::string_view message, const HeaderList& extra) {
  std::string body(message);
  body.push_back('\n');
  return plainResponse(status, body, extra);
}

std::string plainResponse(int status, std::string_view body, const HeaderList& extra) {
  if (status < 100 || status > 999) {
    status = 500;
  }
  const std::string_view message = body;
  const size_t body_len = message.size();
  std::string out;
  out.reserve(160 + body_len);
  appendStatusLine(out, status, reasonPhrase(status));
  appendHeader(out, "Content-Type", "text/plain; charset=utf-8");
  appendHeader(out, "Content-Length", std::to_string(body_len));
  appendHeader(out, "Connection", "close");
  for (const Header& h : extra) {
    // Values may come from plugins: never let one split the header block (response splitting).
    if (!isToken(h.name) || !isFieldValue(h.value) || iequals(h.name, "Content-Type") ||
        iequals(h.name, "Content-Length") || iequals(h.name, "Connection") ||
        iequals(h.name, "Transfer-Encoding")) {
      continue;
    }
    appendHeader(out, h.name, h.value);
  }
  out.append("\r\n");
  out.append(message);
  return out;
}

std::string switchingResponse(const ResponseHead& upstream101) {
  std::string out;
  out.reserve(256);
  appendStatusLine(out, 101, "Switching Protocols");
  appendHeader(out, "Upgrade", "websocket");
  appendHeader(out, "Connection", "Upgrade");
  const std::vector<std::string_view> nominated = connectionTokens(upstream101.headers);
  for (const Header& h : upstream101.headers) {
    if (isRelayable(nominated, h)) {
      appendHeader(out, h.name, h.value);
    }
  }
  out.append("\r\n");
  return out;
}

std::string relayedResponse(const ResponseHead& head, std::string_view body) {
  std::string out;
  out.reserve(256 + body.size());
  // The reason came through llhttp, so it holds no CR/LF; an absent one gets the standard phrase.
  appendStatusLine(out, head.status, head.reason.empty() ? reasonPhrase(head.status) : head.reason);
  const std::vector<std::string_view> nominated = connectionTokens(head.headers);
  for (const Header& h : head.headers) {
    if (isRelayable(nominated, h)) {
      appendHeader(out, h.name, h.value);
    }
  }
  const bool no_body = hasNoBody(head.status);
  if (!no_body) {
    appendHeader(out, "Content-Length", std::to_string(body.size()));
  }
  appendHeader(out, "Connection", "close");
  out.append("\r\n");
  if (!no_body) {
    out.append(body);
  }
  return out;
}

}  // namespace upgate
