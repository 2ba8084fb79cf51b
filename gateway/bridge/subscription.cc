#include "bridge/subscription.h"

#include <openssl/evp.h>

#include <string>

#include "bridge/poller.h"
#include "core/log.h"
#include "proxy/worker.h"
#include "websocket/close_code.h"
#include "websocket/frame_writer.h"

namespace upgate {
namespace {

// Client messages waiting to be POSTed (one is in flight): beyond this the client is too fast.
constexpr size_t kMaxOutbox = 64;

// Each line of the payload becomes its own data: field; EventSource joins them with \n. A line
// ends at CRLF, LF or a lone CR (the SSE grammar treats all three as line ends). Ends the event.
void appendSseData(std::string& out, std::string_view rest) {
  for (;;) {
    size_t end = rest.find_first_of("\r\n");
    out += "data: ";
    out.append(rest.substr(0, end));
    out += '\n';
    if (end == std::string_view::npos) break;
    size_t skip = (rest[end] == '\r' && end + 1 < rest.size() && rest[end + 1] == '\n') ? 2 : 1;
    rest.remove_prefix(end + skip);
  }
  out += '\n';
}

}  // namespace

std::string encodeWsFrame(const ChannelMessage& m) {
  char header[kMaxFrameHeader];
  size_t n = writeFrameHeader(header, m.binary ? opcode::kBinary : opcode::kText, true, false,
                              m.payload.size(), nullptr);
  std::string frame;
  frame.reserve(n + m.payload.size());
  frame.append(header, n);
  frame.append(m.payload);
  return frame;
}

std::string encodeSseEvent(const ChannelMessage& m) {
  std::string out = "id: " + std::to_string(m.seq) + "\n";
  if (!m.binary) {
    appendSseData(out, m.payload);
    return out;
  }
  // SSE is UTF-8 text, and its line ends would split binary bytes: a binary message goes as a
  // `binary` event with its payload in base64 (RFC 4648, one line).
  out += "event: binary\ndata: ";
  const size_t at = out.size();
  out.resize(at + 4 * ((m.payload.size() + 2) / 3) + 1);  // EVP_EncodeBlock adds a NUL
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(&out[at]),
                                reinterpret_cast<const unsigned char*>(m.payload.data()),
                                static_cast<int>(m.payload.size()));
  out.resize(at + static_cast<size_t>(n));
  out += "\n\n";
  return out;
}

std::string encodeOverflowNotice(std::string_view notice, uint64_t count, bool sse) {
  const std::string n = std::to_string(count);
  constexpr std::string_view kCount = "{count}";
  std::string text;
  for (size_t at = 0;;) {
    size_t next = notice.find(kCount, at);
    text.append(notice.substr(at, next - at));
    if (next == std::string_view::npos) break;
    text += n;
    at = next + kCount.size();
  }
  if (sse) {
    std::string out = "event: overflow\n";
    appendSseData(out, text);
    return out;
  }
  char header[kMaxFrameHeader];
  size_t len = writeFrameHeader(header, opcode::kText, true, false, text.size(), nullptr);
  return std::string(header, len) + text;
}

const std::string& Delivery::wsFrame() const {
  if (ws_frame_.empty()) ws_frame_ = encodeWsFrame(message);
  return ws_frame_;
}

const std::string& Delivery::sseEvent() const {
  if (sse_event_.empty()) sse_event_ = encodeSseEvent(message);
  return sse_event_;
}

Subscription::Subscription(Worker& worker, const Generation& generation, SubscriptionOwner& owner,
                           const RouteConfig& route, std::string channel, Mode mode)
    : worker_(worker),
      generation_(generation),
      owner_(owner),
      route_(route),
      channel_(std::move(channel)),
      mode_(mode),
      metrics_(worker.routeMetrics(route.name)),
      parser_(Role::Client, FrameParser::Limits{generation.config->limits.max_message_size}, false),
      validator_(generation.config->limits.max_message_size) {}

Subscription::~Subscription() {
  if (send_call_) HttpClient::cancel(send_call_);
  if (registered_) worker_.removeSubscriber(channel_, this);
}

void Subscription::start(const PollRequest& poll, std::string send_target,
                         HeaderList forward_headers) {
  send_target_ = std::move(send_target);
  forward_headers_ = std::move(forward_headers);
  registered_ = true;
  worker_.addSubscriber(channel_, generation_, route_, poll, this);
}

void Subscription::deliver(const Delivery& d) {
  if (ended_ || close_sent_) return;
  Stream& out = owner_.clientStream();
  if (out.pendingBytes() > route_.max_queue_bytes) {
    if (route_.overflow == OverflowPolicy::Drop) {
      // Counted, and said once per subscriber here and again in its access-log line.
      if (dropped_++ == 0)
        UPGATE_LOG(warn, owner_.sessionId(), "channel {}: subscriber too slow, dropping messages",
                   channelForLog(channel_));
      ++unannounced_;
      metrics_.channelDropped(worker_.metrics()).add();
      return;
    }
    UPGATE_LOG(warn, owner_.sessionId(), "channel {}: subscriber too slow ({} bytes queued)",
               channelForLog(channel_), out.pendingBytes());
    close(close_code::kPolicyViolation, "subscriber too slow");
    return;
  }
  if (!announceGap()) return;  // before the first message after a gap
  const std::string& bytes = mode_ == Mode::WebSocket ? d.wsFrame() : d.sseEvent();
  owner_.countBytes(0, d.message.payload.size());
  if (out.write(bytes.data(), bytes.size()) != 0) {
    ended_ = true;
    owner_.subscriptionEnded(close_code::kAbnormal, "client write failed");
    return;
  }
  worker_.deliveries().add();
  metrics_.messages.down->add();
}

void Subscription::onClientDrain() {
  if (ended_ || close_sent_) return;
  announceGap();  // the backlog went down to half: tell the gap now, not at the next message
}

bool Subscription::announceGap() {
  if (unannounced_ == 0 || route_.overflow_notice.empty()) return true;
  std::string notice =
      encodeOverflowNotice(route_.overflow_notice, unannounced_, mode_ == Mode::Sse);
  unannounced_ = 0;
  if (owner_.clientStream().write(notice.data(), notice.size()) != 0) {
    ended_ = true;
    owner_.subscriptionEnded(close_code::kAbnormal, "client write failed");
    return false;
  }
  return true;
}

bool Subscription::writeFrame(uint8_t op, const char* data, size_t len) {
  // Header and payload in one write: one segment (one TLS record) rather than a header alone.
  // Only pongs and the app's answers come here (deliveries share a frame built once).
  char header[kMaxFrameHeader];
  size_t n = writeFrameHeader(header, op, true, false, len, nullptr);
  std::string frame;
  frame.reserve(n + len);
  frame.append(header, n).append(data, len);
  return owner_.clientStream().write(frame.data(), frame.size()) == 0;
}

void Subscription::close(uint16_t code, const std::string& reason) {
  if (ended_ || close_sent_) return;
  if (mode_ == Mode::Sse) {
    ended_ = true;
    owner_.subscriptionEnded(0, reason);
    return;
  }
  close_sent_ = true;
  close_description_ = std::to_string(code) + " " + reason;
  std::string frame = closeFrame(code, reason, false);
  if (owner_.clientStream().write(frame.data(), frame.size()) != 0) {
    ended_ = true;
    owner_.subscriptionEnded(close_code::kAbnormal, "client write failed");
    return;
  }
  first_close_.note(CloseOrigin::Gateway, code);
  // The client's close frame ends it; the owner bounds the wait (a client that stopped reading
  // never answers).
  owner_.subscriptionClosing();
}

void Subscription::fail(uint16_t code, const std::string& reason) {
  if (ended_) return;
  UPGATE_LOG(info, owner_.sessionId(), "channel {}: closing with {}: {}", channelForLog(channel_),
             code, reason);
  // 1006 means the client connection broke (a failed write): no frame can carry it (§7.4.1).
  if (!close_sent_ && code != close_code::kAbnormal) {
    close_sent_ = true;
    first_close_.note(CloseOrigin::Gateway, code);
    std::string frame = closeFrame(code, reason, false);
    owner_.clientStream().write(frame.data(), frame.size());
  }
  ended_ = true;
  owner_.subscriptionEnded(code, reason);
}

// ---- Frames from the client ------------------------------------------------------------------

void Subscription::onClientData(char* data, size_t len) {
  if (ended_ || mode_ == Mode::Sse) return;
  ParseError e = parser_.feed(data, len, *this);
  if (e) {
    fail(e.code, e.reason);
    return;
  }
  std::string pong;
  if (pong_.take(pong) && !ended_ && !close_sent_ &&
      !writeFrame(opcode::kPong, pong.data(), pong.size()))
    fail(close_code::kAbnormal, "client write failed");
}

bool Subscription::onFrameHeader(const FrameHeader& h, const char*, size_t) {
  if (ParseError e = validator_.onFrameHeader(h)) return failWith(e);
  if (!isControlOpcode(h.opcode) && h.opcode != opcode::kContinuation) message_.clear();
  return true;
}

bool Subscription::onFramePayload(const FrameHeader& h, char* data, size_t len, uint64_t) {
  if (ParseError e = validator_.onFramePayload(h, data, len)) return failWith(e);
  if (!isControlOpcode(h.opcode)) message_.append(data, len);  // the validator keeps controls
  return true;
}

bool Subscription::onFrameEnd(const FrameHeader& h) {
  if (ParseError e = validator_.onFrameEnd(h)) return failWith(e);
  switch (h.opcode) {
    case opcode::kPing:
      pong_.set(validator_.controlPayload());  // answered once this read is parsed
      return true;
    case opcode::kPong:
      return true;
    case opcode::kClose: {
      const uint16_t code = validator_.closeCode();
      first_close_.note(CloseOrigin::Client, code);
      if (!close_sent_) {
        // Echo the code (RFC 6455 §5.5.1); a close without a code is answered with 1000.
        close_sent_ = true;
        std::string frame =
            closeFrame(code == close_code::kNoStatus ? close_code::kNormal : code, "", false);
        owner_.clientStream().write(frame.data(), frame.size());
      }
      ended_ = true;
      owner_.subscriptionEnded(code, "client closed");
      return false;
    }
    default:
      break;
  }
  if (!h.fin) return true;
  owner_.countBytes(message_.size(), 0);
  metrics_.messages.up->add();
  onClientMessage();
  return !ended_;
}

bool Subscription::failWith(ParseError e) {
  fail(e.code, e.reason);
  return false;
}

// ---- Client messages to the legacy app (longpoll routes) -------------------------------------

void Subscription::onClientMessage() {
  if (route_.kind != RouteKind::LongPoll || send_target_.empty()) {
    // Channel routes are one-way: say so once, precisely, and end the session.
    fail(close_code::kUnsupportedData, "this channel does not accept messages from clients");
    return;
  }
  if (outbox_.size() >= kMaxOutbox) {
    fail(close_code::kPolicyViolation, "too many messages waiting for the application");
    return;
  }
  outbox_.push_back({std::move(message_), validator_.messageOpcode() == opcode::kBinary});
  message_.clear();
  if (!send_call_) sendNext();
}

void Subscription::sendNext() {
  if (outbox_.empty() || ended_) return;
  const UpstreamConfig& up = generation_.config->upstreams.at(route_.upstream);
  HttpRequest req;
  req.method = "POST";
  req.endpoint = up.endpoints[worker_.nextEndpoint(up)];
  req.tls = generation_.upstreamTls(up.name);
  if (up.tls && !up.tls->server_name.empty()) req.tls_server_name = up.tls->server_name;
  req.target = send_target_;
  req.headers = forward_headers_;
  for (const auto& [name, value] : route_.longpoll.headers) req.headers.push_back({name, value});
  OutgoingMessage& next = outbox_.front();
  req.headers.push_back(
      {"Content-Type", next.binary ? "application/octet-stream" : "text/plain; charset=utf-8"});
  req.body = std::move(next.payload);
  outbox_.pop_front();
  req.timeout = route_.longpoll.timeout;
  send_call_ =
      worker_.httpClient().send(std::move(req), [this](const std::string& error, HttpResponse& r) {
        send_call_.reset();
        if (ended_) return;
        if (!error.empty() || r.status < 200 || r.status > 299) {
          std::string why =
              error.empty() ? "application answered " + std::to_string(r.status) : error;
          UPGATE_LOG(warn, owner_.sessionId(), "channel {}: send to {} failed: {}",
                     channelForLog(channel_), send_target_, why);
          fail(close_code::kInternalError, "the application did not accept the message");
          return;
        }
        // The application's answer, if any, goes back to this client only, typed as a poll's
        // answer would be (a text frame must be UTF-8).
        if (!r.body.empty() && !close_sent_) {
          owner_.countBytes(0, r.body.size());
          const uint8_t op = isBinaryAnswer(r) ? opcode::kBinary : opcode::kText;
          if (!writeFrame(op, r.body.data(), r.body.size())) {
            fail(close_code::kAbnormal, "client write failed");
            return;
          }
          metrics_.messages.down->add();
        }
        sendNext();
      });
}

}  // namespace upgate
