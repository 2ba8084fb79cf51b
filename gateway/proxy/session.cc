#include "proxy/session.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <cassert>
#include <cstring>

#include "bridge/poller.h"
#include "bridge/subscription.h"
#include "core/handle.h"
#include "core/log.h"
#include "http/forwarding.h"
#include "http/headers.h"
#include "http/request_parser.h"
#include "http/response_parser.h"
#include "http/response_writer.h"
#include "http/template.h"
#include "net/listener.h"
#include "plugin/host.h"
#include "proxy/access_log.h"
#include "proxy/plugin_callout.h"
#include "proxy/worker.h"
#include "websocket/close_code.h"
#include "websocket/extensions.h"
#include "websocket/frame_writer.h"
#include "websocket/handshake.h"

namespace upgate {

// State that exists only until the 101 (design.md §3: an established session owns no parser).
struct HandshakeState {
  HandshakeState(const LimitsConfig& limits)
      : request(limits.max_head_bytes, limits.max_headers),
        response(limits.max_response_head_bytes, limits.max_error_body_bytes) {}

  RequestParser request;
  ResponseParser response;
  std::string client_leftover;      // bytes after the request head: sent upstream after the 101
  std::string client_extensions;    // the client's Sec-WebSocket-Extensions, when upgate answers it
  bool extensions_offered = false;  // the upstream request's extensions are settled
  bool client_eof = false;          // the client's FIN came before the 101: half-close after it
  ForwardInfo forward;
  size_t first_endpoint = 0;
  size_t attempts = 0;
  bool any_timeout = false;
  bool resolve_timed_out = false;
  int last_error = 0;
  uv_connect_t connect_req{};
  uv_getaddrinfo_t resolve_req{};
};

namespace {

// Lingering close after an error response: keep reading (and discarding) so the kernel does not
// answer the client's unread bytes with a RST that could destroy the response in flight.
constexpr uint64_t kLingerMs = 2000;

std::string uvReason(const char* what, int uv_err) {
  return std::string(what) + ": " + uv_err_name(uv_err);
}

}  // namespace

Session::Session(Worker& worker, GenerationPtr generation, const ListenerConfig& listener,
                 uint64_t id, std::shared_ptr<const TlsContext> tls)
    : worker_(worker),
      generation_(std::move(generation)),
      listener_(listener),
      id_(id),
      listener_tls_(std::move(tls)) {}

Session::~Session() {
  assert(open_handles_ == 0);
}

void Session::start() {
  uv_loop_t* loop = worker_.loop();
  const Config& cfg = config();
  started_ = true;
  ++open_handles_;  // the client handle, initialised and accepted by the worker
  if (listener_tls_) {
    client_tls_ = std::make_unique<TlsStream>(client_tcp_, listener_tls_, &client_leg_);
    client_ = client_tls_.get();
  } else {
    client_tcp_.setListener(&client_leg_);
  }

  uv_timer_init(loop, &timer_);
  timer_.data = this;
  ++open_handles_;

  started_ms_ = uv_now(loop);
  hs_ = std::make_unique<HandshakeState>(cfg.limits);

  sockaddr_storage peer{};
  int len = sizeof(peer);
  if (uv_tcp_getpeername(client_tcp_.handle(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    client_addr_ = formatSockaddr(reinterpret_cast<sockaddr*>(&peer), &hs_->forward.client_ip,
                                  &hs_->forward.client_port);
  }
  // TCP_NODELAY comes from the listening socket (openListenSocket): no setsockopt here.
  hs_->forward.tls = client_tls_ != nullptr;
  forward_ = hs_->forward;
  UPGATE_LOG(debug, id_, "accepted {} on listener {}", client_addr_, listener_.name);

  // The head deadline is total, from accept: a client trickling bytes cannot extend it.
  uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(cfg.timeouts.head.count()), 0);
  // The head deadline covers the TLS handshake too: a handshake never finished is cut by it.
  int rc = client_tls_ ? client_tls_->init() : 0;
  if (rc == 0) rc = client_->readStart();
  if (rc != 0) finish(uvReason("client read", rc));
}

void Session::rejectOverCapacity() {
  const std::string why = "over limits.max_connections";
  if (client_tls_) {
    // No TLS handshake for a connection upgate will not serve: the work a 503 would cost is
    // what an overloaded gateway cannot spare.
    finish(why + ": closed before the TLS handshake");
    return;
  }
  // Before the request head: the answer does not depend on it. Read and dropped while lingering.
  const HeaderList retry{{"Retry-After", "1"}};
  respond(503, why, errorResponse(503, why, retry), /*log=*/false);
}

void Session::abort(const char* reason) {
  if (state_ == State::Closing) return;
  if (!started_) {
    // uv_accept failed: only the bare client handle exists, and nothing happened worth a log line.
    state_ = State::Closing;
    logged_ = true;
    ++open_handles_;
    client_tcp_.setListener(&client_leg_);
    client_tcp_.close();
    return;
  }
  finish(reason);
}

// ---- Leg upcalls -------------------------------------------------------------------------------

void Session::Leg::onData(const char* data, size_t len) {
  Session& s = s_;
  switch (s.state_) {
    case State::ReadingHead:
      if (!is_client_) return;
      if (s.keepalive_wait_) {
        // The next request on a kept-alive connection: from its first byte the head deadline
        // applies.
        s.keepalive_wait_ = false;
        uv_timer_start(&s.timer_, onTimer, static_cast<uint64_t>(s.config().timeouts.head.count()),
                       0);
      }
      s.onClientHead(data, len);
      return;
    case State::Exchanging:
      if (is_client_) s.onExchangeClientData(data, len);
      return;
    case State::AwaitingSwitch:
      if (is_client_) {
        s.holdEarlyClientData(data, len);
      } else {
        s.onUpstreamHead(data, len);
      }
      return;
    case State::PluginPaused:
    case State::Resolving:
    case State::Connecting:
      if (is_client_) s.holdEarlyClientData(data, len);
      return;
    case State::Subscribed:
      if (is_client_) {
        s.last_activity_ms_ = uv_now(s.worker_.loop());
        // Stream data lives in the loop's writable read buffer: frames are unmasked in place.
        s.subscription_->onClientData(const_cast<char*>(data), len);
      }
      return;
    case State::Tunnel:
      s.tunnelData(is_client_, data, len);
      return;
    default:
      return;  // lingering or closing: discard
  }
}

void Session::Leg::onEof() {
  s_.onLegEof(is_client_);
}
void Session::Leg::onError(int uv_err) {
  s_.onLegError(is_client_, uv_err);
}
void Session::Leg::onDrain() {
  s_.onLegDrain(is_client_);
}
void Session::Leg::onHandshakeDone() {
  // A TLS upstream of a tcp route: the bridge may start (nothing was sent to it).
  if (!is_client_ && s_.state_ == State::AwaitingSwitch && s_.route_->kind == RouteKind::Tcp)
    s_.startTcpBridge();
}
void Session::Leg::onClosed() {
  s_.onLegClosed(is_client_);
}

// ---- Request head ------------------------------------------------------------------------------

void Session::onClientHead(const char* data, size_t len) {
  ParseResult r = hs_->request.feed(data, len);
  // A plain listener delays the ACK of the request to send it with the answer
  // (openListenSocket). A client that waits for that ACK before sending the rest (Nagle with an
  // unacknowledged small segment) would stall until the delayed-ACK timer: ACK at once when the
  // head is incomplete, or when a request body may follow (anything but an upgrade). HAProxy
  // does the same.
  if (!quick_ack_ && !listener_tls_ &&
      (r == ParseResult::NeedMore ||
       (r == ParseResult::Complete && !hs_->request.head().upgrade))) {
    quick_ack_ = true;
    client_tcp_.quickAck();
  }
  if (r == ParseResult::NeedMore) return;
  if (r == ParseResult::Error) {
    respondError(hs_->request.errorStatus(), hs_->request.errorReason());
    return;
  }
  // Client reads stay on through routing and the upstream handshake (design.md §3): bytes that
  // arrive meanwhile are held, bounded, and sent upstream after the 101. Stopping and restarting
  // the reads would cost two epoll_ctl calls per session for nothing in the common case.
  size_t used = hs_->request.consumed();
  if (used < len) hs_->client_leftover.assign(data + used, len - used);
  uv_timer_stop(&timer_);
  routeRequest();
}

void Session::holdEarlyClientData(const char* data, size_t len) {
  hs_->client_leftover.append(data, len);
  // A client that streams ahead of the 101 is held at high water like a tunnel source is
  // (the 101 path resumes it), so what is held stays bounded.
  if (hs_->client_leftover.size() >= config().limits.high_water) client_->readStop();
}

void Session::routeRequest() {
  RequestHead& head = hs_->request.head();
  bool upgrade = isUpgradeRequest(head);
  if (upgrade) {
    HandshakeVerdict v = checkClientHandshake(head);
    if (v.status != 0) {
      respondError(v.status, v.reason, &v.headers);
      return;
    }
  }
  route_ = generation_->routes.match(head);
  route_metrics_ = route_ ? &worker_.routeMetrics(route_->name) : nullptr;
  if (route_ == nullptr) {
    respondError(404, "no route for " + head.path);
    return;
  }
  // The headers the client's Connection header names go now, while only the client's are
  // there: what plugins and upgate add next reaches the upstream whatever the client named.
  dropConnectionNominated(head.headers, upgrade);
  // Only plugins vouch for an identity: a client's own copies of these headers are dropped, and
  // their look-alikes (X_Upgate_User, which CGI-style servers read as the same header).
  removeHeaders(head.headers, "X-Upgate-User");
  removeHeaders(head.headers, "X-Upgate-Claims");
  // Plugins decide before anything is connected: authentication, then routing.
  const auto& instances = generation_->plugins->chainFor(route_);
  if (!instances.empty()) {
    chain_ = std::make_unique<PluginChain>(static_cast<PluginSession&>(*this), instances,
                                           config().timeouts.plugin_pause);
    ChainOutcome outcome =
        chain_->start(head, upgrade ? UPGATE_REQUEST_WEBSOCKET : UPGATE_REQUEST_HTTP, route_->name);
    if (outcome == ChainOutcome::Paused) {
      state_ = State::PluginPaused;  // client bytes meanwhile are held (holdEarlyClientData)
      return;
    }
    if (!applyPluginOutcome()) return;
  }
  dispatchRoute(upgrade);
}

bool Session::applyPluginOutcome() {
  if (chain_->outcome() == ChainOutcome::Reject) {
    const PluginReject& r = chain_->reject();
    respond(r.status, r.reason, plainResponse(r.status, r.body, r.headers));
    return false;
  }
  RequestHead& head = hs_->request.head();
  // The identity plugins attached goes upstream (and into the access log).
  user_ = chain_->identityUser();
  if (!user_.empty()) head.headers.push_back({"X-Upgate-User", user_});
  if (!user_.empty() && !chain_->identityClaims().empty()) {
    head.headers.push_back({"X-Upgate-Claims", chain_->identityClaims()});
  }
  if (!chain_->upstream().empty()) {
    if (config().upstreams.count(chain_->upstream()) == 0) {
      respondError(
          500, "a plugin chose upstream \"" + chain_->upstream() + "\", which is not configured");
      return false;
    }
    upstream_override_ = chain_->upstream();
  }
  chain_->applyUpstreamHeaders(head.headers);
  return true;
}

void Session::onPluginsResumed() {
  if (state_ != State::PluginPaused) return;
  state_ = State::ReadingHead;  // (head complete, not yet dispatched)
  if (!applyPluginOutcome()) return;
  dispatchRoute(isUpgradeRequest(hs_->request.head()));
}

void Session::dispatchRoute(bool upgrade) {
  RequestHead& head = hs_->request.head();
  if (route_->kind == RouteKind::Channel || route_->kind == RouteKind::LongPoll) {
    subscribe(upgrade);
    return;
  }
  if (route_->kind == RouteKind::Http && !upgrade) {
    client_->readStop();  // the exchange reads the body itself, when it is ready for it
    startExchange();
    return;
  }
  if (!upgrade) {
    HeaderList h{{"Upgrade", "websocket"}, {"Sec-WebSocket-Version", "13"}};
    respondError(426, "route \"" + route_->name + "\" serves WebSocket upgrades only", &h);
    return;
  }
  const std::string& name = upstream_override_.empty() ? route_->upstream : upstream_override_;
  auto it = config().upstreams.find(name);
  assert(it != config().upstreams.end());  // validated at load (or just above)
  upstream_cfg_ = &it->second;
  hs_->first_endpoint = worker_.nextEndpoint(*upstream_cfg_);
  addClientCertHeaders(head);
  connectNextEndpoint();
}

// ---- Plugins (PluginSession) ------------------------------------------------------------------

uint32_t Session::workerIndex() const {
  return worker_.index();
}

uint64_t Session::nowMs() const {
  return uv_now(worker_.loop());
}

const PluginTlsIdentity* Session::tlsClient() const {
  if (!client_tls_ || !client_tls_->handshakeDone()) return nullptr;
  if (!tls_identity_) {
    PeerIdentity id;
    if (!client_tls_->peerIdentity(id)) return nullptr;
    tls_identity_ = std::make_unique<PluginTlsIdentity>();
    tls_identity_->subject = id.subject;
    tls_identity_->sha256 = id.fingerprint;
    for (std::string_view rest = id.sans; !rest.empty();) {
      size_t comma = rest.find(", ");
      tls_identity_->sans.emplace_back(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 2);
    }
  }
  return tls_identity_.get();
}

void Session::setPluginWakeup(uint64_t deadline_ms) {
  if (!plugin_timer_) {
    if (deadline_ms == 0 || state_ == State::Closing) return;
    // Allocated on first use: most sessions never have a plugin asking for a wakeup. Freed with
    // the session, which outlives the handle's close callback (open_handles_).
    plugin_timer_ = std::make_unique<uv_timer_t>();
    uv_timer_init(worker_.loop(), plugin_timer_.get());
    plugin_timer_->data = this;
    ++open_handles_;
  }
  if (deadline_ms == 0) {
    uv_timer_stop(plugin_timer_.get());
    return;
  }
  uint64_t now = uv_now(worker_.loop());
  uv_timer_start(plugin_timer_.get(), onPluginTimer, deadline_ms > now ? deadline_ms - now : 0, 0);
}

void Session::onPluginTimer(uv_timer_t* t) noexcept {
  auto* self = ownerOf<Session>(t);
  if (self->chain_ && self->state_ != State::Closing) self->chain_->onWakeup();
}

std::unique_ptr<PluginHttpCall> Session::startHttpCall(PluginHttpRequest request,
                                                       PluginHttpDone done) {
  if (state_ == State::Closing) return nullptr;
  // The chain cancels its callouts when it closes, before the session goes away.
  return startPluginCallout(worker_.httpClient(), std::move(request), std::move(done));
}

void Session::onPluginClose(uint16_t code, const std::string& reason) {
  std::string why = "closed by a plugin (" + std::to_string(code) + " " + reason + ")";
  if (state_ != State::Subscribed) UPGATE_LOG(info, id_, "{}", why);
  if (!closeEstablished(code, reason)) finish(why);
}

bool Session::revoke(uint64_t id, const std::string& user, uint16_t code,
                     const std::string& reason) {
  // Both given: that session, if it is that user's.
  if ((id != 0 && id != id_) || (!user.empty() && user != user_)) return false;
  switch (state_) {
    case State::Tunnel:
    case State::Subscribed:
      // One that is closing already keeps its close (and is not counted again).
      if (tunnel_ ? tunnel_->closing() : subscription_ && subscription_->closeSent()) return false;
      UPGATE_LOG(info, id_, "revoked through the admin API: closing with {} {}", code, reason);
      return closeEstablished(code, reason);
    case State::PluginPaused:
    case State::Resolving:
    case State::Connecting:
    case State::AwaitingSwitch:
      // Admitted (or being judged) but not upgraded yet: it must not become a session.
      respondError(403, "revoked through the admin API: " + reason);
      return true;
    default:
      return false;  // reading a head, an HTTP exchange, or ending already
  }
}

bool Session::closeEstablished(uint16_t code, const std::string& reason) {
  if (state_ == State::Subscribed && subscription_) {
    subscription_->close(code, reason);
    return true;
  }
  if (state_ == State::Tunnel && tunnel_) {
    // Both legs get the code as a close frame; the replies end the session.
    tunnel_->close(code, reason, uv_now(worker_.loop()));
    if (state_ == State::Tunnel) armTunnelTimer();
    resumeDiscarded();
    return true;
  }
  return false;
}

// ---- Channel subscribers ---------------------------------------------------------------------

// upgate is the WebSocket server on channel routes: a client that offers subprotocols (browsers
// use the first as a marker, e.g. to carry a token in the second) gets the first one back;
// without a selection a browser fails the connection.
std::string Session::selectedProtocol(const RequestHead& head) {
  std::string offered;
  for (const Header& h : head.headers) {
    if (iequals(h.name, "sec-websocket-protocol"))
      offered += (offered.empty() ? "" : ",") + h.value;
  }
  std::vector<std::string_view> tokens = splitTokens(offered);
  if (tokens.empty()) return "";
  return "Sec-WebSocket-Protocol: " + std::string(tokens.front()) + "\r\n";
}

std::string Session::ownSwitchingResponse(const RequestHead& head, const std::string& protocol) {
  return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: " +
         computeAccept(*findHeader(head.headers, "sec-websocket-key")) + "\r\n" + protocol + "\r\n";
}

void Session::subscribe(bool upgrade) {
  RequestHead& head = hs_->request.head();
  Subscription::Mode mode = Subscription::Mode::WebSocket;
  if (!upgrade) {
    const std::string* accept = findHeader(head.headers, "accept");
    if (!route_->sse || head.method != "GET" || accept == nullptr ||
        accept->find("text/event-stream") == std::string::npos) {
      HeaderList h{{"Upgrade", "websocket"}, {"Sec-WebSocket-Version", "13"}};
      respondError(426,
                   "route \"" + route_->name + "\" serves WebSocket upgrades" +
                       (route_->sse ? " and GETs with Accept: text/event-stream" : ""),
                   &h);
      return;
    }
    mode = Subscription::Mode::Sse;
  }
  bool longpoll = route_->kind == RouteKind::LongPoll;
  const std::string& key_template = longpoll ? route_->longpoll.channel : route_->channel;
  std::string error;
  auto channel = expandTemplate(key_template, head, TemplateUse::ChannelKey, &error);
  if (!channel || channel->empty()) {
    respondError(400, "cannot name a channel from this request (" + key_template +
                          (error.empty() ? " is empty" : ": " + error) + ")");
    return;
  }
  if (!isValidChannelName(*channel)) {
    respondError(
        400, "the channel name from this request (" + key_template + ") has control characters");
    return;
  }
  *channel = hubChannelKey(*route_, *channel);
  PollRequest poll;
  std::string send_target;
  HeaderList forward;
  if (longpoll) {
    const LongPollConfig& lp = route_->longpoll;
    poll = makePollRequest(lp, std::make_shared<const RequestHead>(head));
    if (!lp.send.empty())
      send_target = expandTemplate(lp.send, head, TemplateUse::UrlTarget).value_or("");
    // The client's credentials (and the identity plugins attached) go along with its messages,
    // so the app authorizes them as before; on the poll only where configured.
    for (const std::string& name : lp.forward_headers) {
      if (const std::string* v = findHeader(head.headers, name)) forward.push_back({name, *v});
    }
    forward.push_back({"X-Forwarded-For", hs_->forward.client_ip});
  }
  std::string response =
      mode == Subscription::Mode::Sse
          ? "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
          : ownSwitchingResponse(head, selectedProtocol(head));
  std::string leftover = std::move(hs_->client_leftover);
  if (chain_) chain_->handshakeDone(/*closable=*/true);  // a WebSocket or SSE stream
  hs_.reset();
  answered(mode == Subscription::Mode::Sse ? 200 : 101);
  upstream_addr_.clear();
  state_ = State::Subscribed;
  // Nothing is read on behalf of a subscriber's queue, so limits.high_water has no use here; at
  // the route's max_queue_bytes the drain upcall tells the subscription its backlog went down.
  client_->setHighWater(route_->max_queue_bytes);
  if (client_->write(response.data(), response.size()) != 0) {
    finish("client write failed");
    return;
  }
  subscription_ = std::make_unique<Subscription>(
      worker_, *generation_, static_cast<SubscriptionOwner&>(*this), *route_, *channel, mode);
  subscription_->start(poll, std::move(send_target), std::move(forward));
  UPGATE_LOG(debug, id_, "subscribed to channel {} ({})", channelForLog(*channel),
             mode == Subscription::Mode::Sse ? "SSE" : "WebSocket");
  last_activity_ms_ = uv_now(worker_.loop());
  armTunnelTimer();
  if (!leftover.empty()) {
    subscription_->onClientData(leftover.data(), leftover.size());
    if (state_ != State::Subscribed) return;
  }
  if (client_->readStart() != 0) finish("client read failed");
}

Stream& Session::clientStream() {
  return *client_;
}

void Session::countBytes(uint64_t in, uint64_t out) {
  bytes_up_ += in;
  bytes_down_ += out;
  route_metrics_->bytes_up->add(in);  // a subscription always has its route
  route_metrics_->bytes_down->add(out);
  last_activity_ms_ = uv_now(worker_.loop());
}

void Session::subscriptionEnded(uint16_t code, const std::string& reason) {
  if (code == close_code::kAbnormal) noteTransportEnd(true);  // a write to the client failed
  std::string why = code ? reason + " (" + std::to_string(code) + ")" : reason;
  lingerClose(why);
}

void Session::subscriptionClosing() {
  if (state_ == State::Subscribed) {
    uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(config().timeouts.close.count()), 0);
  }
}

void Session::lingerClose(const std::string& reason, bool flush_upstream) {
  if (state_ == State::Closing || state_ == State::Lingering) return;
  // Let what is queued (a close frame) reach the client, then wait for its FIN (unless the
  // client leg was closed with its last bytes already: tunnelWriteLast).
  close_reason_ = reason;
  state_ = State::Lingering;
  client_->shutdown();
  bool await_upstream_fin = false;
  if (!flush_upstream) {
    if (upstream_->isOpen()) upstream_->close();
  } else if (tunnel_ && tunnel_->closeReceivedFrom(false) && !upstream_tls_) {
    // A clean end: the upstream sent its close frame. Towards it upgate is the client, which
    // lets the server close the TCP connection first (RFC 6455 §7.1.1: the server keeps the
    // TIME_WAIT): its FIN is awaited and answered by closing (upstreamFinished); finish()
    // closes the leg if the client's FIN comes first.
    if (upstream_eof_) {
      upstreamFinished();
    } else if (upstream_->readStart() != 0) {
      upstream_->close();
    } else {
      await_upstream_fin = true;
    }
  } else {
    upstream_->shutdown();  // its queued close frame goes out first; closed at finish()
  }
  if (!client_->isOpen()) {
    // Closed with its last bytes (tunnelWriteLast): the upstream's FIN, if awaited, ends it.
    if (!await_upstream_fin) {
      finish(reason);
      return;
    }
  } else if (client_->readStart() != 0) {
    finish(reason);
    return;
  }
  uv_timer_start(&timer_, onTimer, kLingerMs, 0);
}

bool Session::flushingUpstream() {
  // A tcp upstream may still have client bytes queued (a slow service after a quick close):
  // they are data, not a close frame, so they are written before the end, for up to
  // timeouts.half_close. Checked every 20 ms; the FIN follows them (lingerClose's shutdown).
  if (route_ == nullptr || route_->kind != RouteKind::Tcp || !upstream_->isOpen() ||
      upstream_->pendingBytes() == 0)
    return false;
  const uint64_t now = uv_now(worker_.loop());
  if (flush_deadline_ms_ == 0) {
    flush_deadline_ms_ = now + static_cast<uint64_t>(config().timeouts.half_close.count());
  } else if (now >= flush_deadline_ms_) {
    // The service stopped reading: what it did not take is lost, and said so.
    const std::string dropped = std::to_string(upstream_->pendingBytes()) +
                                (upstream_tls_ ? " bytes of TLS records" : " bytes") +
                                " for the upstream dropped: not taken within timeouts.half_close";
    UPGATE_LOG(warn, id_, "{}", dropped);
    close_reason_ += "; " + dropped;
    return false;
  }
  uv_timer_start(&timer_, onTimer, 20, 0);
  return true;
}

void Session::upstreamFinished() {
  // Nothing more comes from the upstream. close(2) sends our FIN as shutdown(2) would, and spares
  // the shutdown call, and reading the EOF later plus libuv's second EPOLL_CTL_DEL of a watcher
  // it stopped at that EOF (when this runs at the tunnel's end). Bytes still queued for the
  // upstream go first: FIN after them, the handle is closed at finish().
  if (upstream_->pendingBytes() == 0) {
    upstream_->close();
  } else {
    upstream_->shutdown();
  }
}

void Session::drain() {
  if (state_ == State::Tunnel && tunnel_) {
    // Both legs get a real 1001 close frame at their next frame boundary (both modes); the
    // replies end the session, or timeouts.close / the drain deadline does.
    tunnel_->close(close_code::kGoingAway, "server going away", uv_now(worker_.loop()));
    if (state_ == State::Tunnel) armTunnelTimer();
    resumeDiscarded();
    return;
  }
  // (Subscribers: Subscription::close -> subscriptionClosing() bounds the wait for the reply.)
  if (state_ == State::ReadingHead && keepalive_wait_ && next_request_.empty()) {
    logged_ = true;  // an idle keep-alive connection: nothing to log
    finish("draining");
    return;
  }
  if (state_ == State::Subscribed && subscription_) {
    subscription_->close(1001, "server going away");
  }
}

// ---- http routes -----------------------------------------------------------------------------

void Session::startExchange() {
  const UpstreamConfig& up =
      config().upstreams.at(upstream_override_.empty() ? route_->upstream : upstream_override_);
  upstream_cfg_ = &up;
  state_ = State::Exchanging;
  uv_timer_stop(&timer_);
  if (chain_) chain_->handshakeDone(/*closable=*/false);  // the request runs to its end
  std::string early = std::move(hs_->client_leftover);
  RequestHead head = std::move(hs_->request.head());
  hs_.reset();
  exchange_.reset();  // the previous request's, finished
  exchange_ = std::make_unique<HttpExchange>(worker_, *generation_, worker_.upstreamPool(),
                                             static_cast<HttpExchangeOwner&>(*this), *route_, up,
                                             std::move(head), forward_);
  size_t used = exchange_->start(early.data(), early.size());
  if (state_ != State::Exchanging) {  // failed at once (a malformed request)
    return;
  }
  next_request_.assign(early.data() + used, early.size() - used);
  // The exchange reads the body itself (pausing for backpressure); hold anything after it until
  // this exchange is done.
  if (exchange_->requestComplete() || !next_request_.empty()) client_->readStop();
}

void Session::onExchangeClientData(const char* data, size_t len) {
  size_t used = exchange_->onClientData(data, len);
  if (used < len) next_request_.append(data + used, len - used);
  if (state_ == State::Exchanging && (exchange_->requestComplete() || used < len)) {
    client_->readStop();
  }
}

void Session::exchangeDone(bool keep_alive, int status, uint64_t bytes_in, uint64_t bytes_out) {
  answered(status);
  bytes_up_ = bytes_in;
  bytes_down_ = bytes_out;
  route_metrics_->bytes_up->add(bytes_in);  // an exchange always has its route
  route_metrics_->bytes_down->add(bytes_out);
  upstream_addr_ = exchange_->upstreamAddress();
  close_reason_ = "response complete";
  writeAccessLog();  // one line per HTTP request
  if (!keep_alive || worker_.draining()) {
    lingerClose(keep_alive ? "draining" : "response complete");
    return;
  }
  // Back to reading a head, on the same connection. The next request is processed from the
  // loop (never inside the exchange's upcall, which may still be on the stack).
  logged_ = false;
  status_ = 0;
  bytes_up_ = bytes_down_ = 0;
  if (chain_) chain_->close(0, "response complete");
  chain_.reset();  // plugins decide again for the next request
  upstream_override_.clear();
  route_ = nullptr;
  route_metrics_ = nullptr;
  upstream_cfg_ = nullptr;
  upstream_addr_.clear();
  started_ms_ = uv_now(worker_.loop());
  hs_ = std::make_unique<HandshakeState>(config().limits);
  hs_->forward = forward_;
  state_ = State::ReadingHead;
  keepalive_wait_ = true;
  uint64_t wait =
      next_request_.empty() ? static_cast<uint64_t>(config().timeouts.keepalive.count()) : 0;
  uv_timer_start(&timer_, onTimer, wait, 0);
  if (next_request_.empty() && client_->readStart() != 0) finish("client read failed");
}

void Session::resumeNextRequest() {
  keepalive_wait_ = false;
  if (next_request_.empty()) {
    logged_ = true;  // an idle keep-alive connection timing out is not a request
    finish("keep-alive timeout");
    return;
  }
  uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(config().timeouts.head.count()), 0);
  std::string data = std::move(next_request_);
  next_request_.clear();
  onClientHead(data.data(), data.size());
  if (state_ == State::ReadingHead && client_->readStart() != 0) finish("client read failed");
}

void Session::exchangeFailed(int status, const std::string& reason) {
  if (exchange_) upstream_addr_ = exchange_->upstreamAddress();
  respondError(status, reason);
}

void Session::exchangeAborted(const std::string& reason) {
  if (exchange_ && exchange_->status() != 0) {  // the response had begun: count what went
    answered(exchange_->status());
    bytes_up_ = exchange_->bytesIn();
    bytes_down_ = exchange_->bytesOut();
    route_metrics_->bytes_up->add(bytes_up_);
    route_metrics_->bytes_down->add(bytes_down_);
  }
  finish(reason);
}

// ---- Upstream connect --------------------------------------------------------------------------

void Session::connectNextEndpoint() {
  const auto& endpoints = upstream_cfg_->endpoints;
  if (hs_->attempts == endpoints.size()) {
    // Every endpoint failed once: a timeout anywhere means the upstream is slow (504), else down.
    int status = hs_->any_timeout ? 504 : 502;
    respondError(status, "upstream \"" + upstream_cfg_->name + "\" unavailable (last error: " +
                             (hs_->last_error ? uv_err_name(hs_->last_error) : "timeout") + ")");
    return;
  }
  const HostPort& ep = endpoints[(hs_->first_endpoint + hs_->attempts) % endpoints.size()];
  ++hs_->attempts;
  upstream_addr_ = ep.text();

  sockaddr_storage addr{};
  if (uv_ip4_addr(ep.host.c_str(), ep.port, reinterpret_cast<sockaddr_in*>(&addr)) == 0 ||
      uv_ip6_addr(ep.host.c_str(), ep.port, reinterpret_cast<sockaddr_in6*>(&addr)) == 0) {
    connectTo(reinterpret_cast<sockaddr*>(&addr));
    return;
  }
  // A host name: resolve on the threadpool, never on the loop.
  state_ = State::Resolving;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hs_->resolve_req.data = this;
  std::string port = std::to_string(ep.port);
  int rc = uv_getaddrinfo(worker_.loop(), &hs_->resolve_req, onResolved, ep.host.c_str(),
                          port.c_str(), &hints);
  if (rc != 0) {
    onConnectFailed(rc, false);
    return;
  }
  ++open_handles_;  // the resolver's callback is owed to us
  uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(upstream_cfg_->connect_timeout.count()),
                 0);
}

void Session::onResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept {
  auto* self = static_cast<Session*>(req->data);
  --self->open_handles_;
  if (self->state_ != State::Resolving) {  // the session ended meanwhile
    if (res) uv_freeaddrinfo(res);
    self->maybeDelete();
    return;
  }
  uv_timer_stop(&self->timer_);
  if (self->hs_->resolve_timed_out) {
    self->hs_->resolve_timed_out = false;
    self->onConnectFailed(UV_ETIMEDOUT, true);
  } else if (status != 0 || res == nullptr) {
    UPGATE_LOG(warn, self->id_, "upstream {}: cannot resolve: {}", self->upstream_addr_,
               uv_strerror(status));
    self->onConnectFailed(status ? status : UV_EAI_NONAME, false);
  } else {
    self->connectTo(res->ai_addr);
  }
  if (res) uv_freeaddrinfo(res);
}

void Session::connectTo(const sockaddr* addr) {
  state_ = State::Connecting;
  upstream_tls_.reset();  // a previous attempt's, if any: its TCP handle is closed
  upstream_ = &upstream_tcp_;
  int rc = upstream_tcp_.init(worker_.loop(), &upstream_leg_);
  if (rc != 0) {
    onConnectFailed(rc, false);
    return;
  }
  ++open_handles_;
  if (auto tls = generation_->upstreamTls(upstream_cfg_->name)) {
    upstream_tls_ = std::make_unique<TlsStream>(upstream_tcp_, std::move(tls), &upstream_leg_);
    upstream_ = upstream_tls_.get();
    if ((rc = upstream_tls_->init()) != 0) {
      onConnectFailed(rc, false);
      return;
    }
  }
  hs_->connect_req.data = this;
  rc = uv_tcp_connect(&hs_->connect_req, upstream_tcp_.handle(), addr, onConnect);
  // Reading from the start keeps POLLIN registered when libuv drops POLLOUT at the connect's
  // completion, so the watcher is modified once instead of being dropped and re-added
  // (EEXIST, then MOD). libuv reports nothing to the read side before the connect callback.
  if (rc == 0) rc = upstream_->readStart();
  if (rc != 0) {
    onConnectFailed(rc, false);
    return;
  }
  uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(upstream_cfg_->connect_timeout.count()),
                 0);
}

void Session::onConnect(uv_connect_t* req, int status) noexcept {
  auto* self = static_cast<Session*>(req->data);
  if (status == UV_ECANCELED || self->state_ != State::Connecting) return;  // we closed it
  uv_timer_stop(&self->timer_);
  if (status != 0) {
    self->onConnectFailed(status, false);
  } else {
    self->onConnected(status);
  }
}

void Session::onConnectFailed(int status, bool timed_out) {
  hs_->any_timeout |= timed_out;
  if (!timed_out) hs_->last_error = status;
  UPGATE_LOG(warn, id_, "upstream {} ({}): connect failed: {}", upstream_addr_, upstream_cfg_->name,
             timed_out ? "timeout" : uv_strerror(status));
  if (upstream_->isOpen()) {
    // The next attempt needs a fresh handle; it starts once this one has closed (onLegClosed).
    upstream_->close();
    return;
  }
  connectNextEndpoint();
}

void Session::onConnected(int) {
  state_ = State::AwaitingSwitch;
  uv_tcp_nodelay(upstream_tcp_.handle(), 1);
  int rc = 0;
  if (upstream_tls_) {
    const UpstreamTlsConfig* tls = upstream_tls_->ctx()->upstream();
    const std::string& endpoint_host =
        upstream_cfg_
            ->endpoints[(hs_->first_endpoint + hs_->attempts - 1) % upstream_cfg_->endpoints.size()]
            .host;
    rc =
        upstream_tls_->connect(tls && !tls->server_name.empty() ? tls->server_name : endpoint_host);
  }
  if (route_->kind == RouteKind::Tcp) {
    if (rc == 0) rc = upstream_->readStart();
    if (rc != 0) {
      respondError(502, legError(false, rc));
      return;
    }
    if (!upstream_tls_) {
      startTcpBridge();
      return;
    }
    // The 101 waits for the TLS handshake (onHandshakeDone): a refused certificate is still a
    // 502, a silent upstream a 504.
    uv_timer_start(&timer_, onTimer,
                   static_cast<uint64_t>(upstream_cfg_->handshake_timeout.count()), 0);
    return;
  }
  // Over TLS the request waits in the TlsStream until the handshake is done.
  if (!hs_->extensions_offered) offerUpstreamExtensions(hs_->request.head());
  std::string request = upstreamUpgradeRequest(hs_->request.head(), hs_->forward);
  if (rc == 0) rc = upstream_->write(request.data(), request.size());
  if (rc == 0) rc = upstream_->readStart();
  if (rc != 0) {
    respondError(502, legError(false, rc));
    return;
  }
  uv_timer_start(&timer_, onTimer, static_cast<uint64_t>(upstream_cfg_->handshake_timeout.count()),
                 0);
}

// ---- Upstream answer ---------------------------------------------------------------------------

void Session::onUpstreamHead(const char* data, size_t len) {
  ParseResult r = hs_->response.feed(data, len);
  if (r == ParseResult::NeedMore) return;
  if (r == ParseResult::Error) {
    respondError(502, "malformed upstream response: " + hs_->response.errorReason());
    return;
  }
  ResponseHead& head = hs_->response.head();
  if (head.status != 101) {
    // A refusal from the application (401, 403, 404...) is the application's answer: relay it.
    respond(head.status, "upstream answered " + std::to_string(head.status),
            relayedResponse(head, hs_->response.body()));
    return;
  }
  size_t used = hs_->response.consumed();
  std::string upstream_leftover(data + used, len - used);
  HandshakeVerdict v = checkUpstreamSwitch(head, hs_->request.head());
  if (v.status != 0) {
    respondError(v.status, v.reason);
    return;
  }
  TunnelSetup setup;
  if (!negotiateExtensions(head, setup)) return;
  UPGATE_LOG(debug, id_, "101 from upstream {}: tunnel open (route {})", upstream_addr_,
             route_->name);
  setup.mode = route_->mode;
  setup.message_hooks = route_->mode == TunnelMode::Frames && chain_ && chain_->hasMessageHooks();
  fillRelaySetup(setup);
  startRelay(
      switchingResponse(head),
      std::make_unique<Tunnel>(static_cast<TunnelOwner&>(*this), setup, uv_now(worker_.loop())),
      upstream_leftover);
}

void Session::fillRelaySetup(TunnelSetup& setup) const {
  setup.max_message_size = config().limits.max_message_size;
  setup.keepalive = route_->keepalive;
  setup.close_timeout_ms = static_cast<uint64_t>(config().timeouts.close.count());
  setup.session_id = id_;
  setup.messages = &route_metrics_->messages;  // a relay always has its route
}

void Session::startRelay(const std::string& response, std::unique_ptr<Relay> relay,
                         const std::string& upstream_leftover) {
  if (chain_) chain_->handshakeDone(/*closable=*/true);
  answered(101);
  tunnel_ = std::move(relay);
  const bool client_eof = hs_->client_eof;
  std::string client_early = std::move(hs_->client_leftover);
  hs_.reset();  // the handshake is over: free parsers and the request copy
  state_ = State::Tunnel;
  uv_timer_stop(&timer_);
  client_->setHighWater(config().limits.high_water);
  upstream_->setHighWater(config().limits.high_water);
  last_activity_ms_ = uv_now(worker_.loop());
  armTunnelTimer();
  // The 101 goes first; then whatever either side sent right behind its handshake.
  pump(*upstream_, *client_, response.data(), response.size());
  if (state_ != State::Tunnel) return;
  if (!upstream_leftover.empty()) {
    tunnelData(false, upstream_leftover.data(), upstream_leftover.size());
    if (state_ != State::Tunnel) return;
  }
  if (!client_early.empty()) {
    tunnelData(true, client_early.data(), client_early.size());
    if (state_ != State::Tunnel) return;
  }
  if (client_eof) {
    onLegEof(true);  // the client's FIN follows its bytes, as a half-close
    return;
  }
  if (!client_paused_) {
    int rc = client_->readStart();
    if (rc != 0) finish(uvReason("client read", rc));
  }
}

// The subprotocol of a tcp route: "binary" when the client offers it (websockify's name for
// raw binary frames, which is what the bridge sends), else none.
static std::string tcpProtocol(const RequestHead& head) {
  for (const Header& h : head.headers) {
    if (!iequals(h.name, "sec-websocket-protocol")) continue;
    for (std::string_view t : splitTokens(h.value)) {
      if (t == "binary") return "Sec-WebSocket-Protocol: binary\r\n";
    }
  }
  return "";
}

void Session::startTcpBridge() {
  const RequestHead& head = hs_->request.head();
  std::string response = ownSwitchingResponse(head, tcpProtocol(head));
  UPGATE_LOG(debug, id_, "connected to {}: bridging (route {})", upstream_addr_, route_->name);
  TunnelSetup setup;
  fillRelaySetup(setup);
  startRelay(
      response,
      std::make_unique<TcpBridge>(static_cast<TunnelOwner&>(*this), setup, uv_now(worker_.loop())),
      "");
}

void Session::tunnelData(bool from_client, const char* data, size_t len) {
  // Reads land in the loop's writable read buffer (or a leftover string the session owns):
  // frames mode unmasks in place. Any read, pongs included, counts as activity.
  last_activity_ms_ = uv_now(worker_.loop());
  tunnel_->onData(from_client, const_cast<char*>(data), len, last_activity_ms_);
  if (state_ != State::Tunnel) return;
  if (tunnel_->takeRearm()) armTunnelTimer();
  resumeDiscarded();  // a close frame went to a leg that held back the other one
}

void Session::countTunnelBytes(bool to_client, size_t len) {
  if (lost_leg_ == (to_client ? 1 : 0)) return;  // pump drops them: that leg is gone (loseLeg)
  if (to_client) {
    bytes_down_ += len;
    route_metrics_->bytes_down->add(len);
  } else {
    bytes_up_ += len;
    route_metrics_->bytes_up->add(len);
  }
}

bool Session::tunnelWrite(bool to_client, const char* data, size_t len) {
  countTunnelBytes(to_client, len);
  pump(to_client ? *upstream_ : *client_, to_client ? *client_ : *upstream_, data, len);
  return state_ == State::Tunnel;
}

bool Session::tunnelWriteLast(bool to_client, const char* data, size_t len) {
  countTunnelBytes(to_client, len);
  // Towards the client upgate is the server, which closes first (RFC 6455 §7.1.1): its FIN goes
  // with the last frame. The client's close frame came before this answer, so it sends nothing
  // more: its socket is closed with the bytes (close(2) sends the FIN) and its FIN needs no read.
  // Not with a TLS upstream, whose end lingerClose leaves to the client's FIN, nor while the
  // client's reads are paused: close(2) over unread bytes would send a reset, which can destroy
  // the close frame before the client reads it. Towards the upstream upgate is the client and
  // waits for the server's FIN.
  const WriteEnd end = !to_client                        ? WriteEnd::None
                       : upstream_tls_ || client_paused_ ? WriteEnd::Fin
                                                         : WriteEnd::Close;
  pump(to_client ? *upstream_ : *client_, to_client ? *client_ : *upstream_, data, len, end);
  return state_ == State::Tunnel;
}

void Session::tunnelEnd(const std::string& reason) {
  // Close frames are queued on both legs: they go out before TCP closes.
  lingerClose(reason, /*flush_upstream=*/true);
}

void Session::tunnelWatchPeer(bool client, uint32_t timeout_ms) {
  (client ? client_ : upstream_)->watchPeer(timeout_ms);
}

MessageVerdict Session::tunnelMessage(bool from_client, uint8_t opcode,
                                      const std::string& payload) {
  return chain_->onMessage(from_client ? UPGATE_CLIENT_TO_UPSTREAM : UPGATE_UPSTREAM_TO_CLIENT,
                           opcode, reinterpret_cast<const uint8_t*>(payload.data()),
                           payload.size());
}

// ---- Extensions
// ----------------------------------------------------------------------------------

// upgate answers Sec-WebSocket-Extensions itself, per leg, when the route compresses per leg or
// plugins read messages (they need them inflated); otherwise the negotiation passes through.
bool Session::terminatesExtensions() const {
  return route_->mode == TunnelMode::Frames &&
         (route_->compression.enabled || (chain_ && chain_->hasMessageHooks()));
}

void Session::offerUpstreamExtensions(RequestHead& head) {
  hs_->extensions_offered = true;
  if (!terminatesExtensions()) return;
  auto& h = head.headers;
  for (const Header& x : h) {
    if (!iequals(x.name, "Sec-WebSocket-Extensions")) continue;
    if (!hs_->client_extensions.empty()) hs_->client_extensions.append(", ");
    hs_->client_extensions.append(x.value);
  }
  h.erase(
      std::remove_if(h.begin(), h.end(),
                     [](const Header& x) { return iequals(x.name, "Sec-WebSocket-Extensions"); }),
      h.end());
  if (route_->compression.upstream) {
    h.push_back({"Sec-WebSocket-Extensions", buildDeflateOffer(DeflatePolicy{})});
  }
}

bool Session::negotiateExtensions(ResponseHead& head, TunnelSetup& setup) {
  auto& h = head.headers;
  std::string answer;
  for (const Header& x : h) {
    if (!iequals(x.name, "Sec-WebSocket-Extensions")) continue;
    if (!answer.empty()) answer.append(", ");
    answer.append(x.value);
  }
  if (!terminatesExtensions()) {
    // Passed through. Passthrough mode reads no RSV bit: what the peers agreed is theirs.
    if (route_->mode != TunnelMode::Frames) return true;
    // Frames mode checks every frame, so it must know what RSV1 means: only permessage-deflate
    // (RSV1 marks a compressed message, RFC 7692), and only as the client offered it (RFC 6455
    // §4.1: the client would fail the connection; better a 502 now than a 1002 later).
    std::vector<Extension> accepted;
    std::vector<Extension> offered;
    if (!parseExtensions(answer, &accepted)) {
      respondError(502, "upstream's Sec-WebSocket-Extensions answer is malformed");
      return false;
    }
    parseExtensions(joinValues(hs_->request.head().headers, "Sec-WebSocket-Extensions"), &offered);
    for (const Extension& e : accepted) {
      bool was_offered = std::any_of(offered.begin(), offered.end(),
                                     [&](const Extension& o) { return o.name == e.name; });
      const char* why = !was_offered                     ? "which the client did not offer"
                        : e.name != "permessage-deflate" ? "which frames mode cannot check"
                        : setup.end_to_end_deflate       ? "twice"
                                                         : nullptr;
      if (why) {
        respondError(502, "upstream accepted extension " + e.name + ", " + why);
        return false;
      }
      setup.end_to_end_deflate = true;
    }
    return true;
  }
  if (route_->compression.upstream) {
    DeflateAgreement a;
    std::string error;
    NegotiationResult r = acceptDeflateResponse(answer, DeflatePolicy{}, &a, &error);
    if (r == NegotiationResult::Malformed) {
      respondError(502, "upstream's Sec-WebSocket-Extensions answer refused: " + error);
      return false;
    }
    if (r == NegotiationResult::Accepted) setup.upstream_deflate = a;
  } else if (answer.find_first_not_of(" \t,") != std::string::npos) {
    // Nothing was offered upstream (compression.upstream: off), so nothing may be accepted.
    respondError(502, "upstream accepted an extension upgate did not offer: " + answer);
    return false;
  }
  h.erase(
      std::remove_if(h.begin(), h.end(),
                     [](const Header& x) { return iequals(x.name, "Sec-WebSocket-Extensions"); }),
      h.end());
  if (route_->compression.client && !hs_->client_extensions.empty()) {
    DeflatePolicy policy;
    policy.server_no_context_takeover = route_->compression.server_no_context_takeover;
    policy.client_max_window_bits = route_->compression.client_max_window_bits;
    DeflateAgreement a;
    std::string response;
    // A malformed offer is declined (the client gets no compression), not refused.
    if (negotiateDeflateServer(hs_->client_extensions, policy, &a, &response) ==
        NegotiationResult::Accepted) {
      setup.client_deflate = a;
      h.push_back({"Sec-WebSocket-Extensions", response});
    }
  }
  return true;
}

void Session::onUpstreamHeadEof() {
  ParseResult r = hs_->response.finishEof();
  if (r == ParseResult::Complete && hs_->response.head().status != 101) {
    const ResponseHead& head = hs_->response.head();
    respond(head.status, "upstream answered " + std::to_string(head.status),
            relayedResponse(head, hs_->response.body()));
    return;
  }
  respondError(502, "upstream closed the connection before answering the upgrade");
}

// ---- Tunnel ------------------------------------------------------------------------------------

void Session::tcpUpstreamFailed(const std::string& reason) {
  // A bridge writes whole frames, so the client leg is at a frame boundary: it learns why
  // (1011) before the end, and the broken upstream is closed at once.
  UPGATE_LOG(info, id_, "{}", reason);
  tunnel_->close(close_code::kInternalError, "upstream connection error", uv_now(worker_.loop()));
  lingerClose(reason);
}

void Session::pump(Stream& from, Stream& to, const char* data, size_t len, WriteEnd end) {
  last_activity_ms_ = uv_now(worker_.loop());
  // The FIN that lingerClose would send next goes out with the bytes (one segment, not two).
  if (lost_leg_ >= 0 && !to.isOpen()) return;  // a leg lost (loseLeg) takes nothing more
  int rc = end == WriteEnd::Close ? to.writeFinal(data, len)
           : end == WriteEnd::Fin ? to.writeLast(data, len)
                                  : to.write(data, len);
  if (rc != 0) {
    if (rc == UV_ETIMEDOUT && state_ == State::Tunnel && route_->kind != RouteKind::Tcp) {
      loseLeg(&to == client_);  // the kernel reports the dead peer to the write before the read
      return;
    }
    noteTransportEnd(&to == client_);  // the peer is gone (reset, broken pipe)
    if (&to == upstream_ && state_ == State::Tunnel && route_->kind == RouteKind::Tcp) {
      tcpUpstreamFailed(legError(false, rc));
    } else {
      finish(legError(&to == client_, rc));
    }
    return;
  }
  // Backpressure (design.md §3): the destination is over high water -> stop reading the source
  // until onDrain says it fell to half.
  if (to.pendingBytes() > config().limits.high_water && from.isOpen()) {
    from.readStop();
    const bool from_client = &from == client_;
    bool& paused = from_client ? client_paused_ : upstream_paused_;
    if (!paused) {
      if (route_metrics_)
        (from_client ? route_metrics_->client_pauses : route_metrics_->upstream_pauses)->add();
      if (tunnel_) tunnel_->readsPaused(from_client, true, last_activity_ms_);
    }
    paused = true;
  }
}

void Session::onLegDrain(bool is_client) {
  if (state_ == State::Exchanging) {
    if (is_client) exchange_->onClientDrain();
    return;
  }
  if (state_ == State::Subscribed) {
    if (is_client && subscription_) subscription_->onClientDrain();
    return;
  }
  if (state_ != State::Tunnel) return;
  resumeSource(/*from_client=*/!is_client);  // `is_client` names the destination that drained
}

void Session::resumeSource(bool from_client) {
  Stream& source = from_client ? *client_ : *upstream_;
  bool& paused = from_client ? client_paused_ : upstream_paused_;
  if (!paused) return;
  paused = false;
  if (tunnel_) {
    tunnel_->readsPaused(from_client, false, uv_now(worker_.loop()));
    if (tunnel_->takeRearm()) armTunnelTimer();
  }
  if ((from_client ? client_eof_ : upstream_eof_) || !source.isOpen()) return;
  int rc = source.readStart();
  if (rc != 0) finish(uvReason(from_client ? "client read" : "upstream read", rc));
}

void Session::resumeDiscarded() {
  for (bool from_client : {true, false}) {
    if (state_ != State::Tunnel) return;
    if ((from_client ? client_paused_ : upstream_paused_) && tunnel_->discardsFrom(from_client))
      resumeSource(from_client);
  }
}

void Session::noteTransportEnd(bool is_client) {
  if (status_ == 101 && transport_end_ == CloseOrigin::None)
    transport_end_ = is_client ? CloseOrigin::Client : CloseOrigin::Upstream;
}

void Session::onLegEof(bool is_client) {
  noteTransportEnd(is_client);
  switch (state_) {
    case State::ReadingHead:
      if (keepalive_wait_) logged_ = true;  // a kept-alive connection ending between requests
      finish(keepalive_wait_ ? "client closed the keep-alive connection"
                             : "client closed before sending a complete request head");
      return;
    case State::AwaitingSwitch:
      if (is_client) {
        // A half-close, not an abort: the client may still want the answer. Kept for after
        // the 101 (the tunnel passes it on) or until an error answer ends the session.
        hs_->client_eof = true;
      } else {
        onUpstreamHeadEof();
      }
      return;
    case State::PluginPaused:
    case State::Resolving:
    case State::Connecting:
      // Channel and http routes read the client again after dispatch and see the EOF anew;
      // the tunnel applies the flag after the 101.
      if (is_client) hs_->client_eof = true;
      return;
    case State::Lingering:
      if (is_client) {
        if (!flushingUpstream()) finish(close_reason_);
      } else if (!upstream_tls_) {
        upstream_eof_ = true;
        upstreamFinished();
        // The client was closed first: done, unless bytes for the upstream are still being
        // written (the linger timer ends it then).
        if (!client_->isOpen() && upstream_->pendingBytes() == 0) finish(close_reason_);
      }
      return;
    case State::Subscribed:
      if (is_client) finish("client closed without a close frame");
      return;
    case State::Exchanging:
      if (is_client) exchange_->onClientEof();
      return;
    case State::Tunnel:
      // A tcp route's upstream FIN becomes a close handshake with the client.
      if (!is_client && !client_eof_ && tunnel_->upstreamEnded(uv_now(worker_.loop()))) {
        upstream_eof_ = true;
        if (state_ == State::Tunnel) armTunnelTimer();
        resumeDiscarded();  // the client's reply must be read
        return;
      }
      break;
    default:
      return;
  }
  // Half-close: pass the FIN on once the queue is written, keep the other direction going.
  (is_client ? client_eof_ : upstream_eof_) = true;
  if (lost_leg_ >= 0) {
    // The other leg is gone (loseLeg): nothing is left to pass on or wait for. As when both
    // sides closed, what is still queued for this one is dropped: it sends nothing more.
    finish(close_reason_ + "; " + (is_client ? "client" : "upstream") + " closed");
    return;
  }
  if (client_eof_ && upstream_eof_) {
    // Both FINs are in: closing sends ours to each side; a shutdown first would be a wasted
    // system call (queued bytes are dropped by the close either way).
    finish("closed by both sides");
    return;
  }
  (is_client ? upstream_ : client_)->shutdown();
  half_close_deadline_ms_ =
      uv_now(worker_.loop()) + static_cast<uint64_t>(config().timeouts.half_close.count());
  close_reason_ = is_client ? "client closed" : "upstream closed";
  armTunnelTimer();
}

std::string Session::legError(bool is_client, int uv_err) const {
  const TlsStream* tls = is_client ? client_tls_.get() : upstream_tls_.get();
  std::string who = is_client ? "client" : "upstream";
  if (tls && !tls->errorDetail().empty()) return who + " " + tls->errorDetail();
  return who + " connection error: " + uv_err_name(uv_err);
}

void Session::onLegError(bool is_client, int uv_err) {
  noteTransportEnd(is_client);
  std::string reason = legError(is_client, uv_err);
  switch (state_) {
    case State::AwaitingSwitch:
      if (!is_client) {
        // A certificate that fails verification lands here: 502 with the reason (logged).
        respondError(502, reason);
        return;
      }
      break;
    case State::ReadingHead:
      if (keepalive_wait_) {
        logged_ = true;
        finish(reason);
        return;
      }
      // Includes TLS handshake failures (garbage instead of a ClientHello, no shared
      // protocol, a refused client certificate): logged once here, then closed.
      UPGATE_LOG(info, id_, "{}", reason);
      break;
    case State::Lingering:
      finish(close_reason_);
      return;
    case State::Tunnel:
      if (!is_client && route_->kind == RouteKind::Tcp) {
        tcpUpstreamFailed(reason);
        return;
      }
      if (uv_err == UV_ETIMEDOUT && route_->kind != RouteKind::Tcp) {
        loseLeg(is_client);
        return;
      }
      break;
    default:
      break;
  }
  finish(reason);
}

void Session::addClientCertHeaders(RequestHead& head) {
  if (!client_tls_ || !listener_tls_->clientAuth()) return;
  const ClientCertHeaders& names = listener_tls_->clientAuth()->headers;
  // Whatever the client sent under these names is dropped first: only upgate vouches for them.
  auto& h = head.headers;
  for (const std::string* n : {&names.subject, &names.sans, &names.fingerprint}) {
    if (n->empty()) continue;
    h.erase(
        std::remove_if(h.begin(), h.end(), [&](const Header& x) { return iequals(x.name, *n); }),
        h.end());
  }
  PeerIdentity id;
  if (!client_tls_->peerIdentity(id)) return;
  if (!names.subject.empty()) h.push_back({names.subject, id.subject});
  if (!names.sans.empty() && !id.sans.empty()) h.push_back({names.sans, id.sans});
  if (!names.fingerprint.empty()) h.push_back({names.fingerprint, id.fingerprint});
}

void Session::loseLeg(bool is_client) {
  // TCP gave up on that peer (watchPeer's user timeout, or the kernel's retransmission limit):
  // the leg is dead. Nothing more is read from or written to it; the relay hears of it when the
  // handle has closed and closes the other leg cleanly (1001). Websocket routes only.
  const std::string who = is_client ? "client" : "upstream";
  if (lost_leg_ >= 0) {
    if (lost_leg_ != (is_client ? 1 : 0)) finish(close_reason_ + "; " + who + " too");
    return;
  }
  noteTransportEnd(is_client);
  lost_leg_ = is_client ? 1 : 0;
  (is_client ? client_paused_ : upstream_paused_) = false;
  close_reason_ = who + kLostLegReason;
  (is_client ? client_ : upstream_)->close();
}

void Session::onLegClosed(bool is_client) {
  --open_handles_;
  if (state_ == State::Tunnel && lost_leg_ == (is_client ? 1 : 0)) {
    if (tunnel_->peerLost(is_client, uv_now(worker_.loop()))) {
      if (state_ == State::Tunnel) armTunnelTimer();
      resumeDiscarded();
    } else {
      finish(close_reason_);
    }
  }
  if (!is_client && state_ == State::Connecting) {
    connectNextEndpoint();  // the failed attempt's handle is gone; try the next endpoint
    return;
  }
  maybeDelete();
}

// ---- Timer -------------------------------------------------------------------------------------

void Session::onTimer(uv_timer_t* t) noexcept {
  ownerOf<Session>(t)->handleTimer();
}

void Session::handleTimer() {
  switch (state_) {
    case State::ReadingHead:
      if (keepalive_wait_) {
        resumeNextRequest();
        return;
      }
      respondError(408, "request head not complete within " +
                            std::to_string(config().timeouts.head.count()) + " ms");
      return;
    case State::Resolving:
      // The resolver request must come back before the next attempt can reuse it: cancel it
      // (effective while it is still queued) and let onResolved move on.
      hs_->resolve_timed_out = true;
      uv_cancel(reinterpret_cast<uv_req_t*>(&hs_->resolve_req));
      return;
    case State::Connecting:
      onConnectFailed(UV_ETIMEDOUT, true);
      return;
    case State::AwaitingSwitch:
      respondError(504, std::string(route_->kind == RouteKind::Tcp
                                        ? "upstream TLS handshake not done within "
                                        : "upstream sent no 101 within ") +
                            std::to_string(upstream_cfg_->handshake_timeout.count()) + " ms");
      return;
    case State::Subscribed:
      if (subscription_->closeSent()) {
        finish("sent close " + subscription_->closeSentDescription() +
               "; the client did not answer it in time");
        return;
      }
      break;
    case State::Tunnel:
      tunnel_->onTimer(uv_now(worker_.loop()));
      if (state_ != State::Tunnel) return;
      break;
    case State::Exchanging:
    case State::PluginPaused:
      return;  // the exchange, or the plugin chain, runs its own timers
    case State::Lingering:
      if (!flushingUpstream()) finish(close_reason_);
      return;
    case State::Closing:
      return;
  }
  uint64_t now = uv_now(worker_.loop());
  if (half_close_deadline_ms_ != 0 && now >= half_close_deadline_ms_) {
    finish(close_reason_ + "; the other side did not finish within timeouts.half_close");
    return;
  }
  uint64_t idle = static_cast<uint64_t>(config().timeouts.idle.count());
  if (idle != 0 && now - last_activity_ms_ >= idle) {
    finish("idle timeout");
    return;
  }
  armTunnelTimer();
}

void Session::armTunnelTimer() {
  // One timer serves both the idle cut and the half-close deadline: fire at the nearest one and
  // re-check there, rather than restarting a timer on every read.
  uint64_t now = uv_now(worker_.loop());
  uint64_t due = UINT64_MAX;
  uint64_t idle = static_cast<uint64_t>(config().timeouts.idle.count());
  if (idle != 0) due = last_activity_ms_ + idle;
  if (half_close_deadline_ms_ != 0 && half_close_deadline_ms_ < due) due = half_close_deadline_ms_;
  if (tunnel_) due = std::min(due, tunnel_->nextDue());
  if (due == UINT64_MAX) return;
  uv_timer_start(&timer_, onTimer, due > now ? due - now : 0, 0);
}

// ---- Exits -------------------------------------------------------------------------------------

void Session::respondError(int status, const std::string& reason, const HeaderList* extra) {
  // upgate's own 502/504 (an upstream's relayed answer goes through respond() alone).
  if ((status == 502 || status == 504) && upstream_cfg_ != nullptr && state_ != State::Closing &&
      state_ != State::Lingering) {
    worker_.metrics()
        .get(metrics::Family::UpstreamErrors,
             metrics::labels({{"upstream", upstream_cfg_->name}, {"code", std::to_string(status)}}))
        .add();
  }
  respond(status, reason, errorResponse(status, reason, extra ? *extra : HeaderList{}));
}

void Session::respond(int status, const std::string& reason, const std::string& response,
                      bool log) {
  if (state_ == State::Closing || state_ == State::Lingering) return;
  answered(status);
  close_reason_ = reason;
  if (!log) {
    UPGATE_LOG(debug, id_, "{} {}", status, reason);
  } else if (status >= 500) {
    UPGATE_LOG(warn, id_, "{} {}", status, reason);
  } else {
    UPGATE_LOG(info, id_, "{} {}", status, reason);
  }
  if (upstream_->isOpen()) upstream_->close();
  state_ = State::Lingering;
  if (client_->write(response.data(), response.size()) != 0) {
    finish(reason);
    return;
  }
  client_->shutdown();
  if (client_->readStart() != 0) {
    finish(reason);
    return;
  }
  uv_timer_start(&timer_, onTimer, kLingerMs, 0);
}

void Session::finish(const std::string& reason) {
  if (state_ == State::Closing) return;
  if (state_ != State::Lingering) close_reason_ = reason;
  state_ = State::Closing;
  if (subscription_ && subscription_->dropped() != 0) {
    close_reason_ += "; " + std::to_string(subscription_->dropped()) +
                     " channel messages not sent (over max_queue_bytes, overflow: drop)";
  }
  UPGATE_LOG(debug, id_, "closing: {}", close_reason_);
  const FirstClose ws_close = firstClose();
  if (ws_close.by != CloseOrigin::None) {
    RouteMetrics& m = route_metrics_ ? *route_metrics_ : worker_.unroutedMetrics();
    m.closesWith(ws_close, worker_.metrics()).add();
  }
  if (chain_) chain_->close(ws_close.code, close_reason_);
  writeAccessLog(ws_close);
  closeHandles();
}

FirstClose Session::firstClose() const {
  FirstClose c;
  if (status_ != 101) return c;  // not a WebSocket (an SSE subscriber is answered 200)
  if (tunnel_) {
    c = tunnel_->firstClose();
  } else if (subscription_) {
    c = subscription_->firstClose();
  }
  c.note(transport_end_ != CloseOrigin::None ? transport_end_ : CloseOrigin::Gateway,
         close_code::kAbnormal);
  return c;
}

void Session::closeHandles() {
  if (plugin_timer_ && !uv_is_closing(asHandle(plugin_timer_.get()))) {
    uv_close(asHandle(plugin_timer_.get()), onTimerClosed);
  }
  if (exchange_) exchange_->abort();
  uv_timer_stop(&timer_);
  if (!uv_is_closing(asHandle(&timer_))) uv_close(asHandle(&timer_), onTimerClosed);
  client_->close();
  upstream_->close();
}

void Session::onTimerClosed(uv_handle_t* h) noexcept {
  auto* self = ownerOf<Session>(h);
  --self->open_handles_;
  self->maybeDelete();
}

void Session::maybeDelete() {
  if (open_handles_ != 0 || state_ != State::Closing) return;
  worker_.removeSession(this);
  delete this;
}

void Session::answered(int status) {
  status_ = status;
  RouteMetrics& m = route_metrics_ ? *route_metrics_ : worker_.unroutedMetrics();
  m.requestsWith(status, worker_.metrics()).add();
}

void Session::writeAccessLog(FirstClose ws_close) {
  if (logged_) return;
  logged_ = true;
  if (!config().log.access_log) return;
  AccessRecord r;
  r.id = id_;
  r.client = client_addr_;
  r.listener = listener_.name;
  r.route = route_ ? route_->name : std::string();
  r.upstream = upstream_addr_;
  r.status = status_;
  r.bytes_in = bytes_up_;
  r.bytes_out = bytes_down_;
  r.duration_ms = uv_now(worker_.loop()) - started_ms_;
  r.close = close_reason_;
  if (ws_close.by != CloseOrigin::None) {
    r.close_code = ws_close.code;
    r.close_by = closeOriginName(ws_close.by);
  }
  r.user = user_;
  writeAccessRecord(r);
}

}  // namespace upgate
