#pragma once
// Plain, immutable configuration structs. yaml-cpp never leaves gateway/config/: the rest of the
// gateway sees only these types. A Config is built once by the loader, validated, then shared
// read-only between workers through std::shared_ptr<const Config>.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace upgate {

using Millis = std::chrono::milliseconds;

// host:port as written in the config ("127.0.0.1:8080", "[::1]:9001", "backend.local:80").
struct HostPort {
  std::string host;          // without brackets for IPv6 literals
  uint16_t port = 0;         // 0 is allowed for listeners (ephemeral), not for upstream endpoints
  std::string text() const;  // "127.0.0.1:8080" / "[::1]:9001"
};

// One certificate chain + key; SNI picks it for the names listed (exact or "*.wildcard").
struct TlsCertificateConfig {
  std::string cert;                       // PEM chain file (leaf first)
  std::string key;                        // PEM private key file
  std::vector<std::string> server_names;  // empty = names taken from the certificate's SANs
};

enum class TlsVersion { Tls12, Tls13 };

// Headers that carry the verified client certificate identity upstream (mTLS). Empty = not sent.
struct ClientCertHeaders {
  std::string subject = "X-Client-Cert-Subject";
  std::string sans = "X-Client-Cert-SANs";
  std::string fingerprint = "X-Client-Cert-SHA256";
};

struct TlsClientAuthConfig {
  std::string ca;        // PEM bundle of accepted client CAs
  bool required = true;  // false = ask for a certificate, accept connections without one
  ClientCertHeaders headers;
};

struct ListenerTlsConfig {
  // The first is the default (no SNI, or no name matched). Empty = a self-signed certificate is
  // generated at start for 127.0.0.1/localhost (logged as such): for demos and tests only.
  std::vector<TlsCertificateConfig> certificates;
  TlsVersion min_version = TlsVersion::Tls12;
  std::string ciphers;       // TLS 1.2 cipher list (OpenSSL syntax); empty = safe default
  std::string ciphersuites;  // TLS 1.3 suites; empty = OpenSSL default
  std::string groups;        // key-exchange groups, e.g. "X25519:P-256"; empty = default
  bool session_tickets = true;
  // TLS 1.3: after the handshake upgate protects records itself and frees OpenSSL's
  // per-connection state (~13 KiB).
  bool record_offload = true;
  Millis ticket_key_rotation{3600 *
                             1000};  // new ticket key this often; the previous one still decrypts
  std::optional<TlsClientAuthConfig> client_auth;
};

struct ListenerConfig {
  std::string name;  // unique; shown in the ready file and logs
  HostPort address;  // listen address
  int backlog = 511;
  std::optional<ListenerTlsConfig> tls;  // set = this listener serves wss:// and https://
};

// TLS towards an upstream (wss://).
struct UpstreamTlsConfig {
  std::string ca = "system";   // PEM file of trusted CAs, or "system" for the OS store
  std::string server_name;     // SNI and the name verified; empty = the endpoint's host
  bool verify = true;          // false disables verification (logged as a warning at start)
  std::string cert;            // client certificate (PEM) for upstream mTLS; optional
  std::string key;             // its key; required when cert is set
  bool record_offload = true;  // as ListenerTlsConfig::record_offload, for this leg
};

struct UpstreamConfig {
  std::string name;
  std::vector<HostPort> endpoints;       // round robin; the next one on connect failure
  Millis connect_timeout{5000};          // per connect attempt -> 504 when all fail by timeout
  Millis handshake_timeout{10000};       // wait for the upstream's 101 after connecting -> 504
  std::optional<UpstreamTlsConfig> tls;  // set = connect with TLS (wss://)
};

struct HeaderMatch {
  std::string name;                  // case-insensitive header name
  std::optional<std::string> value;  // exact value; unset = header must be present
};

struct RouteMatch {
  std::optional<std::string> path;         // exact path (query string excluded)
  std::optional<std::string> path_prefix;  // path starts with this
  std::optional<std::string> host;         // exact host, or "*.example.com" wildcard (port ignored)
  std::vector<HeaderMatch> headers;        // all must match
};

enum class RouteKind {
  WebSocket,  // tunnel to a WebSocket upstream
  Http,       // plain HTTP reverse proxy to the legacy app (not an upgrade)
  LongPoll,   // WebSocket clients fed by one shared upstream long-poll loop per channel
  Channel,    // WebSocket (or SSE) clients fed by the publish API
  Tcp,        // WebSocket clients bridged to a plain TCP (or TLS) upstream's byte stream
};

// A name -> value pair from the config (headers to send, etc.).
using ConfigHeaders = std::vector<std::pair<std::string, std::string>>;

// Templates ("{query.symbols}", "{path.0}", "{path}", "{header.X-Tenant}", "{cursor}") are
// expanded per request; see http/template.h.
struct LongPollConfig {
  std::string channel = "{path}";  // channel key: every subscriber with the same key shares a poll
  std::string poll;                // target of the upstream poll, e.g. "/poll?c={cursor}"
  std::string method = "GET";
  ConfigHeaders headers;      // extra headers on every poll and send
  Millis timeout{65000};      // one poll request (the app may hold it this long)
  std::string cursor_header;  // the next cursor comes from this response header...
  std::string cursor_json;    // ...or from this JSON field of the body ("$.cursor")
  std::string cursor_initial = "0";
  bool split_json_array = false;  // true: each element of a JSON array body is one message
  std::string send;               // client messages are POSTed here; empty = not accepted
  // Headers of the client's upgrade request (after plugins, so with the X-Upgate-User/-Claims
  // identity they attached) sent on its POSTs, and on the poll of a channel it starts.
  std::vector<std::string> forward_headers = {"Cookie", "Authorization", "X-Upgate-User",
                                              "X-Upgate-Claims"};
  std::vector<std::string> poll_forward_headers;  // for channel keys made per identity
  Millis grace{5000};           // stop polling this long after the last subscriber left
  Millis backoff_initial{500};  // upstream errors: exponential backoff with jitter...
  Millis backoff_max{30000};    // ...up to this
  // The largest poll answer (decoded body) taken; a larger one is not published and the poll is
  // retried after the backoff. 16 MiB, the default of limits.max_message_size (a split: body
  // answer is one message), but set on its own. One answer per channel is held at a time.
  size_t max_response_bytes = 16 * 1024 * 1024;
};

enum class OverflowPolicy { Close, Drop };
enum class TunnelMode {
  Passthrough,  // bytes, unparsed (frame headers are tracked, to place pings and close frames)
  Frames,       // every frame parsed and checked on both legs (RFC 6455 enforced by upgate)
};

// What happens to pings a peer sends through a websocket route.
enum class PeerPings {
  Forward,  // relayed to the other peer, whose pong is relayed back (default; both modes)
  Answer,   // upgate answers them itself and does not relay them (frames mode)
};

// Gateway keepalive on websocket routes, each leg on its own: a leg that sent nothing for
// `interval` gets a ping; if nothing at all comes back within `timeout`, the leg is dead: it is
// closed and the other side gets a 1001 close frame. interval 0 = off.
struct KeepaliveConfig {
  Millis interval{0};
  Millis timeout{10000};
  PeerPings peer_pings = PeerPings::Forward;
};

// permessage-deflate (RFC 7692) per leg, frames mode only. Absent (`enabled` false): the
// extension negotiation passes between client and upstream untouched and upgate relays
// compressed messages as they are. Present: upgate negotiates each leg itself and inflates and
// deflates between them, so one leg may be compressed while the other is not.
struct CompressionConfig {
  bool enabled = false;                     // the `compression:` key is present
  bool client = false;                      // offer/accept permessage-deflate towards clients
  bool upstream = false;                    // offer it to the upstream
  bool server_no_context_takeover = false;  // client leg: our compressor starts each message empty
  uint8_t client_max_window_bits = 15;      // client leg: the window we make clients use (8..15)
  size_t max_memory = 1024 * 1024;  // zlib state per session (both legs): no compression beyond
};

// One plugin instance: built in (by name) or loaded from a shared object (path).
struct PluginConfig {
  std::string name;         // built-in name, or a label for an external plugin
  std::string path;         // empty = built in; else the .so to dlopen
  std::string config_yaml;  // the plugin's own `config:` subtree, re-emitted as YAML text
  std::string where;        // "file:line:col" of the entry, prefixed to the plugin's errors
};

struct RouteConfig {
  std::string name;
  RouteMatch match;
  RouteKind kind = RouteKind::WebSocket;
  std::string upstream;  // name of an UpstreamConfig (validated to exist)
  TunnelMode mode = TunnelMode::Passthrough;
  KeepaliveConfig keepalive;          // kind: websocket
  CompressionConfig compression;      // kind: websocket, mode: frames
  std::vector<PluginConfig> plugins;  // run in order, after the global ones
  // kind: http
  Millis response_timeout{120000};  // upstream answer (long-polls pass through)
  // kind: longpoll
  LongPollConfig longpoll;
  // kind: channel
  std::string channel = "{path}";  // channel key template
  // longpoll and channel: per-subscriber queue of unsent bytes, and what happens beyond it
  size_t max_queue_bytes = 1024 * 1024;
  OverflowPolicy overflow = OverflowPolicy::Close;  // Close: 1008; Drop: skip messages
  // overflow: drop: sent to the subscriber after a gap, when its backlog is down to half or
  // before its next message, "{count}" replaced by how many it missed (WebSocket: a text
  // message; SSE: an `overflow` event).
  // Empty: none.
  std::string overflow_notice;
  bool sse = true;  // also serve text/event-stream to non-WebSocket GETs
};

// The admin listener: POST /publish/{channel}, /healthz, /readyz. Off unless `admin:` is
// configured (then loopback 127.0.0.1:9901 unless an address is given).
struct AdminConfig {
  HostPort address{"127.0.0.1", 9901};
  bool enabled = false;
  std::string token;  // non-empty: requests need "Authorization: Bearer <token>"
  size_t max_body_bytes = 1024 * 1024;
};

struct LimitsConfig {
  size_t max_head_bytes = 16 * 1024;           // request head (line + headers) -> 431
  size_t max_headers = 100;                    // header count -> 431
  size_t high_water = 256 * 1024;              // per-direction pending bytes: stop reading above
  size_t max_response_head_bytes = 16 * 1024;  // upstream response head -> 502
  size_t max_error_body_bytes = 64 * 1024;     // relayed non-101 upstream body cap -> 502
  size_t max_message_size = 16 * 1024 * 1024;  // WebSocket message upgate reads itself -> 1009
  uint64_t max_connections = 0;  // client connections open in the process -> 503; 0 = no cap
};

struct TimeoutsConfig {
  Millis head{10000};          // total deadline for the request head (not per read) -> 408
  Millis idle{0};              // no bytes either way for this long -> close; 0 = never
  Millis half_close{5000};     // after one side ended, wait this long for the other, then close
  Millis keepalive{60000};     // http routes: an idle kept-alive client connection is closed
  Millis plugin_pause{10000};  // a plugin's PAUSE not resumed within this -> 503
  Millis close{5000};  // websocket: after a close frame was sent, wait this long for the reply
  // http routes: a client that takes none of the response bytes queued for it (over
  // limits.high_water, the upstream paused) for this long is cut; 0 = never
  Millis send{60000};
};

enum class LogLevel { Debug, Info, Warn, Error };

struct LogConfig {
  LogLevel level = LogLevel::Info;
  bool access_log = true;  // one JSON line per session on stdout
};

struct Config {
  std::string source;    // file name the config came from ("<built-in>" for the default)
  unsigned workers = 0;  // 0 = number of CPUs
  Millis drain_timeout{10000};
  // Drain: the 1001 closes go out spread evenly over this window (at most half of
  // drain_timeout), so clients do not all reconnect in the same instant.
  Millis drain_spread{2000};
  std::vector<ListenerConfig> listeners;
  std::map<std::string, UpstreamConfig> upstreams;
  std::vector<RouteConfig> routes;  // first match wins
  LimitsConfig limits;
  TimeoutsConfig timeouts;
  LogConfig log;
  std::vector<PluginConfig> plugins;  // global: run for every route, before the route's own
  AdminConfig admin;
};

// Names as written in the YAML ("debug", "websocket", "passthrough"); for logs and `upgate -t`.
const char* logLevelName(LogLevel level);
const char* routeKindName(RouteKind kind);
const char* tunnelModeName(TunnelMode mode);

}  // namespace upgate
