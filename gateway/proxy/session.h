#pragma once
// One client connection from accept to close: reads the request head, checks the handshake,
// routes, connects the upstream, relays the upgrade, then tunnels bytes both ways (passthrough).
// Owns both legs and one timer; lives on one worker loop and is deleted only in the last close
// callback of its handles (style.md §2.4). Every exit goes through respond() (before the 101)
// or finish() (after), which write the access-log line once.

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>

#include "bridge/subscription.h"
#include "config/config.h"
#include "http/forwarding.h"
#include "http/request_head.h"
#include "http/response_parser.h"
#include "net/tcp_stream.h"
#include "plugin/chain.h"
#include "proxy/generation.h"
#include "proxy/http_exchange.h"
#include "proxy/tcp_bridge.h"
#include "proxy/tunnel.h"
#include "tls/tls_stream.h"

namespace upgate {

class Worker;
struct HandshakeState;
struct RouteMetrics;

class Session final : private SubscriptionOwner,
                      private HttpExchangeOwner,
                      private PluginSession,
                      private TunnelOwner {
 public:
  // `listener` belongs to `generation`, which the session keeps (with its routes, upstreams,
  // limits and plugins) until it ends, whatever reloads happen meanwhile. `tls` is the
  // listener's TLS context, or null for a plain listener.
  Session(Worker& worker, GenerationPtr generation, const ListenerConfig& listener, uint64_t id,
          std::shared_ptr<const TlsContext> tls);
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  // The client's TCP connection, to be initialised and passed to uv_accept by the worker.
  TcpStream& clientTcp() { return client_tcp_; }
  // Starts the head deadline and reading; call once after uv_accept succeeded.
  void start();
  // Ends the session at once (drain deadline, shutdown).
  void abort(const char* reason);
  // The worker is draining: subscribers get a 1001 close frame; tunnels run on until they end
  // or the drain deadline aborts them.
  void drain();
  // POST /revoke: a session whose id and plugin identity match (those given) is closed with
  // `code` and `reason` if established, answered 403 if still in its upgrade. True if this one
  // matched and was not closing already.
  bool revoke(uint64_t id, const std::string& user, uint16_t code, const std::string& reason);
  uint64_t id() const { return id_; }

  // limits.max_connections was reached: a 503 (plain listeners) or a close before any TLS
  // handshake. Right after start().
  void rejectOverCapacity();

  // Intrusive list links owned by the worker's session registry, and whether the session holds
  // a place in the process's connection count (Worker::accept).
  Session* prev = nullptr;
  Session* next = nullptr;
  bool counted = false;

 private:
  enum class State {
    ReadingHead,     // reading the request head (TLS handshake included)
    Resolving,       // upstream host name lookup
    Connecting,      // TCP (and TLS) connect to an upstream endpoint
    AwaitingSwitch,  // upgrade request sent; waiting for the upstream's 101
    Tunnel,          // websocket route: bytes both ways
    Subscribed,      // channel/longpoll route: upgate is the WebSocket (or SSE) server
    Exchanging,      // http route: one request/response in flight (keep-alive loops back)
    PluginPaused,    // a plugin answered PAUSE (async auth); waiting for its resume
    Lingering,       // an answer or close frame is being flushed; waiting for the client's FIN
    Closing,         // handles are closing; deleted in the last close callback
  };

  // Adapts one leg's StreamListener upcalls to Session members.
  class Leg final : public StreamListener {
   public:
    Leg(Session& s, bool is_client) : s_(s), is_client_(is_client) {}
    void onData(const char* data, size_t len) override;
    void onEof() override;
    void onError(int uv_err) override;
    void onDrain() override;
    void onClosed() override;
    void onHandshakeDone() override;

   private:
    Session& s_;
    bool is_client_;
  };

  static void onTimer(uv_timer_t* t) noexcept;
  static void onTimerClosed(uv_handle_t* h) noexcept;
  static void onResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept;
  static void onConnect(uv_connect_t* req, int status) noexcept;

  // Handshake phase.
  void onClientHead(const char* data, size_t len);
  void holdEarlyClientData(const char* data, size_t len);
  void routeRequest();
  void connectNextEndpoint();
  void connectTo(const sockaddr* addr);
  void onConnected(int status);
  void onConnectFailed(int status, bool timed_out);
  bool applyPluginOutcome();
  void dispatchRoute(bool upgrade);
  void onUpstreamHead(const char* data, size_t len);
  void onUpstreamHeadEof();
  bool terminatesExtensions() const;
  void offerUpstreamExtensions(RequestHead& head);
  bool negotiateExtensions(ResponseHead& head, TunnelSetup& setup);
  // The route's and limits' part of a relay's setup.
  void fillRelaySetup(TunnelSetup& setup) const;
  // The upstream side is ready: the 101 goes to the client, the relay takes over, then what
  // either side sent behind its handshake goes through it.
  void startRelay(const std::string& response, std::unique_ptr<Relay> relay,
                  const std::string& upstream_leftover);
  // tcp routes: the upstream connection is up (TLS: its handshake done); upgate answers the
  // 101 and bridges.
  void startTcpBridge();
  // tcp routes, Lingering: the client is done; wait (bounded) until what is queued for the
  // upstream is written. True while waiting.
  bool flushingUpstream();
  // tcp routes: the upstream broke after the 101; the client gets 1011.
  void tcpUpstreamFailed(const std::string& reason);

  // Tunnel phase.
  void tunnelData(bool from_client, const char* data, size_t len);
  // How a write ends its leg: Fin, the bytes complete the close handshake and `to` gets its FIN
  // with them; Close, the same and `to` sends nothing more, so it may be closed (writeFinal).
  enum class WriteEnd : uint8_t { None, Fin, Close };
  void pump(Stream& from, Stream& to, const char* data, size_t len, WriteEnd end = WriteEnd::None);
  void addClientCertHeaders(RequestHead& head);
  std::string legError(bool is_client, int uv_err) const;
  void onLegEof(bool is_client);
  // Reads the leg again if backpressure paused it (its destination drained, or takes no more).
  void resumeSource(bool from_client);
  // resumeSource for every paused leg whose bytes now go nowhere (Relay::discardsFrom).
  void resumeDiscarded();
  // A websocket tunnel's leg whose TCP connection timed out (ETIMEDOUT): closed now, and the
  // relay told once its handle is closed (onLegClosed), outside any relay call in progress.
  void loseLeg(bool is_client);
  void noteTransportEnd(bool is_client);  // a leg's EOF or error: transport_end_
  void upstreamFinished();
  void onLegError(bool is_client, int uv_err);
  void onLegDrain(bool is_client);
  void onLegClosed(bool is_client);
  void handleTimer();
  void armTunnelTimer();
  // TunnelOwner.
  bool tunnelWrite(bool to_client, const char* data, size_t len) override;
  bool tunnelWriteLast(bool to_client, const char* data, size_t len) override;
  void tunnelEnd(const std::string& reason) override;
  MessageVerdict tunnelMessage(bool from_client, uint8_t opcode,
                               const std::string& payload) override;
  void tunnelWatchPeer(bool client, uint32_t timeout_ms) override;

  // Channel subscribers (SubscriptionOwner).
  void subscribe(bool upgrade);
  static std::string selectedProtocol(const RequestHead& head);
  // The 101 of a route upgate answers itself; `protocol` is a Sec-WebSocket-Protocol line or "".
  static std::string ownSwitchingResponse(const RequestHead& head, const std::string& protocol);
  Stream& clientStream() override;
  uint64_t sessionId() const override { return id_; }
  void subscriptionEnded(uint16_t code, const std::string& reason) override;
  void subscriptionClosing() override;
  void countBytes(uint64_t in, uint64_t out) override;

  // http routes (HttpExchangeOwner); keep-alive returns to ReadingHead.
  void startExchange();
  void onExchangeClientData(const char* data, size_t len);
  void exchangeDone(bool keep_alive, int status, uint64_t bytes_in, uint64_t bytes_out) override;
  void exchangeFailed(int status, const std::string& reason) override;
  void exchangeAborted(const std::string& reason) override;
  void resumeNextRequest();

  // Plugins (PluginSession).
  uint32_t workerIndex() const override;
  uint64_t nowMs() const override;
  const std::string& clientIp() const override { return forward_.client_ip; }
  uint16_t clientPort() const override { return forward_.client_port; }
  const PluginTlsIdentity* tlsClient() const override;
  void setPluginWakeup(uint64_t deadline_ms) override;
  void onPluginsResumed() override;
  void onPluginClose(uint16_t code, const std::string& reason) override;
  std::unique_ptr<PluginHttpCall> startHttpCall(PluginHttpRequest request,
                                                PluginHttpDone done) override;
  static void onPluginTimer(uv_timer_t* t) noexcept;

  // Exits.
  void lingerClose(const std::string& reason, bool flush_upstream = false);
  // An established WebSocket (or SSE) session: close frames with `code` (a plugin, POST
  // /revoke); false in any other state.
  bool closeEstablished(uint16_t code, const std::string& reason);
  // log: a line for this answer (a flood of 503s for max_connections is said once by the worker).
  void respond(int status, const std::string& reason, const std::string& response, bool log = true);
  void respondError(int status, const std::string& reason, const HeaderList* extra = nullptr);
  void finish(const std::string& reason);
  void closeHandles();
  void writeAccessLog(FirstClose ws_close = {});
  // WebSocket sessions (101): the first close frame, or 1006 by whoever ended first; else none.
  FirstClose firstClose() const;
  // The status of the current request (or the 101) is known: recorded and counted.
  void answered(int status);
  void countTunnelBytes(bool to_client, size_t len);
  void maybeDelete();

  const Config& config() const { return *generation_->config; }

  Worker& worker_;
  const GenerationPtr generation_;
  const ListenerConfig& listener_;
  const uint64_t id_;
  State state_ = State::ReadingHead;

  Leg client_leg_{*this, true};
  Leg upstream_leg_{*this, false};
  // A leg is a TcpStream, optionally wrapped by a TlsStream; client_/upstream_ point at the
  // outermost one, so the tunnel code is the same for plain and TLS legs.
  TcpStream client_tcp_;
  TcpStream upstream_tcp_;
  std::unique_ptr<TlsStream> client_tls_;
  std::unique_ptr<TlsStream> upstream_tls_;
  Stream* client_ = &client_tcp_;
  Stream* upstream_ = &upstream_tcp_;
  std::shared_ptr<const TlsContext> listener_tls_;
  uv_timer_t timer_{};
  int open_handles_ = 0;  // handles (and in-flight requests) whose callbacks are still owed

  // Everything needed only until the 101: freed when the tunnel starts, so an established
  // session carries no parser, no request copy and no leftover buffers.
  std::unique_ptr<HandshakeState> hs_;
  std::unique_ptr<Subscription> subscription_;  // channel and longpoll routes only
  std::unique_ptr<HttpExchange> exchange_;      // http routes: the current (or last) exchange
  std::unique_ptr<PluginChain> chain_;          // only when the route has plugins
  std::unique_ptr<Relay>
      tunnel_;  // websocket routes (Tunnel), tcp routes (TcpBridge), after the 101
  mutable std::unique_ptr<PluginTlsIdentity> tls_identity_;  // built on first plugin request
  std::string upstream_override_;                            // an on_route hook's choice
  std::string user_;                          // identity a plugin attached (access log)
  std::unique_ptr<uv_timer_t> plugin_timer_;  // plugin timers and PAUSE deadlines (lazy)
  std::string next_request_;     // bytes of the client's next (pipelined) request, held meanwhile
  ForwardInfo forward_;          // the client's address, kept across keep-alive requests
  bool keepalive_wait_ = false;  // between keep-alive requests: idle timeout, no 408

  const RouteConfig* route_ = nullptr;
  RouteMetrics* route_metrics_ = nullptr;  // route_'s counters on this worker
  const UpstreamConfig* upstream_cfg_ = nullptr;
  std::string client_addr_;
  std::string upstream_addr_;
  std::string close_reason_;
  int status_ = 0;
  int8_t lost_leg_ = -1;  // 1: the client, 0: the upstream timed out in the tunnel (loseLeg)
  uint64_t started_ms_ = 0;
  uint64_t last_activity_ms_ = 0;
  uint64_t half_close_deadline_ms_ = 0;
  uint64_t bytes_up_ = 0;                          // client -> upstream after the 101
  uint64_t bytes_down_ = 0;                        // upstream -> client after the 101
  CloseOrigin transport_end_ = CloseOrigin::None;  // after the 101: whose connection ended first
  bool client_eof_ = false;
  bool upstream_eof_ = false;
  bool client_paused_ = false;    // client reads stopped because the upstream is above high water
  bool upstream_paused_ = false;  // upstream reads stopped because the client is above high water
  bool started_ = false;
  bool logged_ = false;
  bool quick_ack_ = false;          // TCP_QUICKACK turned back on for the client leg (onClientHead)
  uint64_t flush_deadline_ms_ = 0;  // tcp routes: flushingUpstream() gives up then
};

}  // namespace upgate
