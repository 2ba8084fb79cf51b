/*
 * upgate plugin ABI, version 1.
 *
 * This header is the whole contract between the upgate gateway (the "host") and a plugin. It
 * uses only standard C headers and is valid C99 and C++. The same ABI serves plugins compiled
 * into the gateway ("built-ins") and shared objects loaded from a `path:` in the config.
 *
 * Compatibility rules
 *  - UPGATE_PLUGIN_ABI_VERSION changes only on an incompatible change. Within one version, new
 *    fields are only ever appended to the structs below, and every struct that can grow starts
 *    with `struct_size`. Before reading or writing a field added after the first release of a
 *    version, compare `struct_size` against offsetof(that field) + its size (see
 *    UPGATE_HAS_FIELD).
 *  - A NULL hook means "not interested"; the host skips it. A plugin that defines no on_message
 *    costs nothing on the data path.
 *
 * Threading
 *  - The host creates one instance per configured plugin entry (`create`) on the main thread,
 *    when the configuration is loaded or reloaded. The instance is shared by every worker thread.
 *  - Every hook and every host API call for one session runs on that session's worker loop
 *    thread ("the loop thread"). Hooks of one instance can therefore run at the same time on
 *    different threads for different sessions: state kept on the instance must be immutable
 *    after `create`, or guarded, or split per worker (upgate_host_api_t.worker_index).
 *  - Hooks must not block: no disk or network I/O, no sleeping, no long locks. Asynchronous work
 *    returns UPGATE_PAUSE and later calls host->resume (on the loop thread, from a host timer or
 *    the callback of an HTTP callout made with host->http_request).
 *  - `destroy` runs once, on any thread, after every hook of that instance has returned and
 *    every session that used it has ended.
 *
 * Ownership
 *  - Everything the host passes in (requests, strings, messages) is borrowed for the duration
 *    of the call only, unless a field says otherwise. Copy what you keep.
 *  - Everything a plugin hands back (reject, route, rewritten message, strings given to host API
 *    calls) needs to stay valid only until that hook or call returns: the host copies it.
 *  - The host never frees plugin memory and the plugin never frees host memory.
 *
 * Errors
 *  - No C++ exception may leave a hook or `create`: C++ plugins catch everything.
 *  - The host treats every result as untrusted input: an unknown decision or a REJECT status
 *    outside 400-599 becomes a 500 and a log line, an invalid close code becomes 1011.
 */
#ifndef UPGATE_PLUGIN_H
#define UPGATE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change. The host refuses a plugin built for another version. */
#define UPGATE_PLUGIN_ABI_VERSION 1u

/* True when a struct of dynamic size `struct_size` (as received) contains `field`. (C++ gets a
   cast that -Wold-style-cast accepts.) */
#ifdef __cplusplus
#define UPGATE_FIELD_SIZE_(type, field) sizeof(static_cast<type*>(nullptr)->field)
#else
#define UPGATE_FIELD_SIZE_(type, field) sizeof(((type*)0)->field)
#endif
#define UPGATE_HAS_FIELD(ptr, type, field) \
  ((ptr)->struct_size >= offsetof(type, field) + UPGATE_FIELD_SIZE_(type, field))

/* ---- Opaque host objects ------------------------------------------------------------------ */

/*
 * One client session as seen by one plugin instance. Created by the host before the first hook
 * of the session and valid until on_close has returned for that instance; after that the pointer
 * must not be used (cancel pending work in on_close). Only ever used on the loop thread.
 */
typedef struct upgate_session upgate_session_t;

/* ---- Decisions ---------------------------------------------------------------------------- */

typedef enum upgate_decision {
  UPGATE_CONTINUE = 0, /* go on with the next plugin, then the gateway */
  UPGATE_REJECT = 1,   /* end the handshake with the response in `upgate_reject_t` */
  UPGATE_PAUSE = 2     /* wait for host->resume (reads stay stopped); bounded by the gateway's
                          timeouts.plugin_pause (default 10 s) -> 503 */
} upgate_decision_t;

/* One header field. Both strings are NUL-terminated. */
typedef struct upgate_header {
  const char* name;
  const char* value;
} upgate_header_t;

/*
 * The response a REJECT asks for. The host allocates it zeroed (struct_size set) and passes it to
 * on_request/on_route; the plugin fills it before returning UPGATE_REJECT. The host writes the
 * response itself, always with Content-Length and Connection: close.
 */
typedef struct upgate_reject {
  uint32_t struct_size;
  uint16_t status;    /* 400-599; anything else is logged and answered with 500 */
  const char* reason; /* short text for the log and the access log (not sent); may be NULL */
  const upgate_header_t* headers; /* extra response headers (e.g. WWW-Authenticate, Retry-After);
                                     framing headers and invalid fields are dropped by the host */
  size_t header_count;
  const char* body; /* response body (text/plain); NULL = the reason phrase */
  size_t body_len;
} upgate_reject_t;

/*
 * Routing result of on_route. Allocated zeroed by the host (struct_size set). A plugin that
 * chooses sets `upstream`; the first plugin in the chain that sets it wins and later on_route
 * hooks are not called. Unset = the gateway's own route table decides.
 */
typedef struct upgate_route {
  uint32_t struct_size;
  const char* upstream; /* name of an upstream from the config's `upstreams:` */
} upgate_route_t;

/* What a request is. */
typedef enum upgate_request_kind {
  UPGATE_REQUEST_WEBSOCKET = 0, /* a WebSocket upgrade (before the 101) */
  UPGATE_REQUEST_HTTP = 1       /* a plain HTTP request on an http route */
} upgate_request_kind_t;

/*
 * The request head, as parsed. All strings are NUL-terminated and borrowed: they are valid
 * during on_request/on_route, and while the session is paused, until the handshake ends.
 * Headers are read with host->header / host->header_at.
 */
typedef struct upgate_request {
  uint32_t struct_size;
  uint32_t kind;      /* an upgate_request_kind_t (fields are fixed-width: enum sizes may vary) */
  const char* method; /* "GET" */
  const char* target; /* as received: "/chat?room=1" */
  const char* path;   /* target without query: "/chat" (not percent-decoded) */
  const char* query;  /* without '?': "room=1" (not decoded); "" if none */
  uint8_t http_major;
  uint8_t http_minor;
  const char* route;     /* name of the route the gateway's table matched; "" if none */
  const char* client_ip; /* peer address of the TCP connection: "192.0.2.7", "2001:db8::1" */
  uint16_t client_port;
} upgate_request_t;

/* Verified TLS client certificate (mTLS). Strings are NUL-terminated, borrowed like requests. */
typedef struct upgate_tls_identity {
  uint32_t struct_size;
  const char* subject;     /* RFC 2253 form: "CN=alice,O=Example" */
  const char* const* sans; /* subjectAltName entries: "DNS:a.example", "IP:192.0.2.1" */
  size_t san_count;
  const char* sha256_fingerprint; /* lower-case hex of the DER certificate's SHA-256 */
} upgate_tls_identity_t;

/* ---- Messages (frames mode, after the 101) ------------------------------------------------ */

typedef enum upgate_direction {
  UPGATE_CLIENT_TO_UPSTREAM = 0,
  UPGATE_UPSTREAM_TO_CLIENT = 1
} upgate_direction_t;

/* WebSocket opcodes of complete (reassembled) data messages. */
#define UPGATE_OPCODE_TEXT 0x1u
#define UPGATE_OPCODE_BINARY 0x2u

typedef enum upgate_message_action {
  UPGATE_MESSAGE_PASS = 0,    /* forward as is (to the next plugin, then the peer) */
  UPGATE_MESSAGE_DROP = 1,    /* discard silently; later plugins do not see it */
  UPGATE_MESSAGE_REWRITE = 2, /* forward the message in upgate_message_result_t instead */
  UPGATE_MESSAGE_CLOSE = 3    /* close the session with the code in upgate_message_result_t */
} upgate_message_action_t;

/* One complete message. `data` is borrowed for the duration of on_message. */
typedef struct upgate_message {
  uint32_t struct_size;
  uint32_t direction; /* an upgate_direction_t */
  uint8_t opcode;     /* UPGATE_OPCODE_TEXT or UPGATE_OPCODE_BINARY */
  const uint8_t* data;
  size_t len;
} upgate_message_t;

/* Close codes a server may send (RFC 6455 §7.4 and the IANA registry): 1000-1003, 1007-1009,
   1011-1014 and 3000-4999. 1008 = policy (e.g. credential expired), 1009 = too big. */
#define UPGATE_CLOSE_CODE_OK(c)                                                                    \
  (((c) >= 1000 && (c) <= 1003) || ((c) >= 1007 && (c) <= 1009) || ((c) >= 1011 && (c) <= 1014) || \
   ((c) >= 3000 && (c) <= 4999))

/* Allocated zeroed by the host (struct_size set); read only for REWRITE and CLOSE. */
typedef struct upgate_message_result {
  uint32_t struct_size;
  uint8_t opcode; /* REWRITE: opcode of the new message (text or binary) */
  /* REWRITE: the new payload; copied by the host when on_message returns. Text must be UTF-8,
     and no payload may exceed limits.max_message_size: else the session closes with 1011. */
  const uint8_t* data;
  size_t len;
  uint16_t close_code;      /* CLOSE: a code a server may send (UPGATE_CLOSE_CODE_OK); else 1011 */
  const char* close_reason; /* CLOSE: short text (at most 123 bytes are sent); may be NULL */
} upgate_message_result_t;

/* ---- Host API ----------------------------------------------------------------------------- */

typedef enum upgate_log_level {
  UPGATE_LOG_DEBUG = 0,
  UPGATE_LOG_INFO = 1,
  UPGATE_LOG_WARN = 2,
  UPGATE_LOG_ERROR = 3
} upgate_log_level_t;

/* A host timer callback: runs once, on the loop thread, with the `arg` given to timer_start. */
typedef void (*upgate_timer_cb)(upgate_session_t* s, void* arg);

/* How an HTTP callout (host->http_request) ended. */
typedef enum upgate_http_result {
  UPGATE_HTTP_OK = 0,      /* a complete response arrived; `status` says which (any status) */
  UPGATE_HTTP_TIMEOUT = 1, /* no complete response within timeout_ms (resolve, connect, send and
                              the whole response count against it) */
  UPGATE_HTTP_CONNECT = 2, /* no connection: name not resolved, refused, unreachable */
  UPGATE_HTTP_ERROR = 3    /* connected, but no usable response: reset, closed early, malformed,
                              or a body larger than 1 MiB */
} upgate_http_result_t;

/*
 * The outcome of an HTTP callout, passed to its callback. Everything it points to is owned by the
 * host and borrowed for the duration of the callback only: copy what you keep.
 */
typedef struct upgate_http_response {
  uint32_t struct_size;
  uint32_t result;                /* an upgate_http_result_t */
  uint16_t status;                /* the response's status code for UPGATE_HTTP_OK, else 0 */
  const upgate_header_t* headers; /* response header fields in wire order (none on failure) */
  size_t header_count;
  const char* body; /* the decoded body (chunked framing removed); never NULL, may be "" */
  size_t body_len;
  const char* error; /* NUL-terminated reason for the log when result != OK ("connect:
                        ECONNREFUSED", "timeout after 2000 ms"); "" for UPGATE_HTTP_OK */
} upgate_http_response_t;

/*
 * An HTTP callout's callback: runs once, on the session's loop thread, with the `arg` given to
 * http_request. It may call every host function a timer callback may (resume, set_upstream_header,
 * set_identity, another http_request, ...). It never runs inside http_request itself, and never
 * after the callout was cancelled: callouts still in flight when the session ends are cancelled
 * before on_close, so a callback never runs after on_close (there is no "cancelled" call).
 */
typedef void (*upgate_http_cb)(upgate_session_t* s, void* arg, const upgate_http_response_t* r);

/*
 * Functions the host offers to plugins. The table is owned by the host and valid from `create`
 * until `destroy` has returned. Every function taking an upgate_session_t* must be called on
 * that session's loop thread, from a hook or a timer callback of the same instance. Functions
 * that can fail return 0 on success and -1 on failure (bad argument, wrong phase).
 */
typedef struct upgate_host_api {
  uint32_t abi_version;   /* UPGATE_PLUGIN_ABI_VERSION of the host */
  uint32_t struct_size;   /* sizeof(upgate_host_api_t) of the host: check before using new fields */
  uint32_t worker_count;  /* number of worker loops; worker_index() is below this */
  const char* config_dir; /* directory of the config file ("conf/", ending in '/'), or "" for
                             the built-in config: resolve relative file names in a plugin's
                             config against it, as the gateway does for its own keys */

  /* The request being handled (same pointer as given to the hooks), or NULL once the handshake
     is over. */
  const upgate_request_t* (*request)(upgate_session_t* s);

  /* Value of the index-th header called `name` (ASCII case-insensitive; index 0 = first), or
     NULL. NUL-terminated, borrowed like the request: for the current hook or callback only. */
  const char* (*header)(upgate_session_t* s, const char* name, size_t index);

  /* Number of request header fields (0 once the handshake is over). */
  size_t (*header_count)(upgate_session_t* s);

  /* Field `i` in wire order. Returns 0 and sets *name and *value, or -1 when out of range. */
  int (*header_at)(upgate_session_t* s, size_t i, const char** name, const char** value);

  /* Peer IP address ("192.0.2.7", "2001:db8::1") and port of the TCP connection; valid for the
     whole session. `port` may be NULL. */
  const char* (*client_address)(upgate_session_t* s, uint16_t* port);

  /* The verified client certificate, or NULL when the listener has no mTLS or the client sent
     none. Valid for the whole session. */
  const upgate_tls_identity_t* (*tls_client)(upgate_session_t* s);

  /* Sets header `name: value` on the request sent upstream, replacing any header of that name
     the client sent or an earlier plugin set; value NULL removes it. Only before the upstream
     request is sent (on_request, on_route, while paused). Name must be a token, the value must
     not contain CR or LF; Host, Content-Length, hop-by-hop and Sec-WebSocket-* headers are
     refused. */
  int (*set_upstream_header)(upgate_session_t* s, const char* name, const char* value);

  /* Attaches an identity to the session: `user` (non-empty) and `claims_json` (a JSON object, or
     NULL). Later plugins and the access log see it, and the gateway can pass it upstream.
     A later call replaces it. The user must be a valid header field value. */
  int (*set_identity)(upgate_session_t* s, const char* user, const char* claims_json);

  /* The identity attached so far, or NULL. `claims_json` may be NULL. Valid until the next
     set_identity or the end of the session. */
  const char* (*identity)(upgate_session_t* s, const char** claims_json);

  /* Writes one log line carrying the session id and the plugin instance's name. `s` may be NULL
     (then from any thread, e.g. in create). */
  void (*log)(upgate_session_t* s, upgate_log_level_t level, const char* message);

  /* The session id every gateway log line and the access log carry. */
  uint64_t (*session_id)(upgate_session_t* s);

  /* Index of the loop thread running this session, 0 .. worker_count-1. */
  uint32_t (*worker_index)(upgate_session_t* s);

  /* The loop's clock in milliseconds (monotonic; not wall time). */
  uint64_t (*now_ms)(upgate_session_t* s);

  /* Starts a one-shot timer: `cb(s, arg)` runs on the loop thread after `delay_ms`. Returns an
     id > 0, or 0 on failure. Timers still pending when the session ends are cancelled before
     on_close: a callback never runs after on_close. */
  uint64_t (*timer_start)(upgate_session_t* s, uint64_t delay_ms, upgate_timer_cb cb, void* arg);

  /* Cancels a pending timer; unknown or fired ids are ignored. */
  void (*timer_cancel)(upgate_session_t* s, uint64_t timer_id);

  /* Ends a PAUSE: `decision` is CONTINUE or REJECT (with `reject`, copied at once); for a PAUSE
     from on_route, `route` (may be NULL) carries the choice. Call only on the loop thread, from a
     timer callback, an HTTP callout's callback or from within the hook that returns UPGATE_PAUSE.
     Returns -1 if this instance is not paused (e.g. the pause timed out). */
  int (*resume)(upgate_session_t* s, upgate_decision_t decision, const upgate_reject_t* reject,
                const upgate_route_t* route);

  /* Closes an established WebSocket session with `code` (UPGATE_CLOSE_CODE_OK) and a short
     reason (at most 123 bytes are sent), e.g. 1008 when the credential the session was admitted
     with expires. Takes effect after the current hook or timer callback returns. Returns -1 before
     the 101 (reject instead) or for an invalid code; -2, for good, on a plain HTTP request that
     was forwarded (it runs to its end; an SSE stream can be closed). */
  int (*close)(upgate_session_t* s, uint16_t code, const char* reason);

  /* Per-session, per-instance pointer for the plugin's own state: NULL until set. The plugin
     frees what it stores, at the latest in on_close. */
  void* (*get_data)(upgate_session_t* s);
  void (*set_data)(upgate_session_t* s, void* data);

  /* ---- Appended within ABI version 1: check UPGATE_HAS_FIELD(host, upgate_host_api_t, field)
     before use, as an older gateway's table ends before them. ---- */

  /*
   * Starts an asynchronous HTTP/1.1 request ("callout", e.g. to an authorization service) and
   * returns at once: an id > 0, or 0 when refused (bad argument, session ended, too many callouts
   * in flight for this session, an unsupported URL). Never blocks the loop: the host resolves the
   * name off the loop, connects and reads on the session's loop, and reuses keep-alive
   * connections to the same host and port across sessions of the same worker.
   *  - `method`: an HTTP token ("GET", "POST"). `url`: "http://host[:port]/path?query" (an IPv6
   *    host in brackets); only http:// is supported, https:// is refused.
   *  - `headers` (`n_headers` fields, may be NULL when 0): names must be tokens, values must not
   *    contain CR, LF or NUL, else the call is refused. Host is added when absent; Content-Length
   *    is computed from the body and any Content-Length or Transfer-Encoding given is replaced.
   *  - `body`/`body_len`: the request body (NULL when 0).
   *  - `timeout_ms` (> 0): bound of the whole exchange -> UPGATE_HTTP_TIMEOUT.
   *  - `cb(s, arg, response)` runs exactly once on the loop thread, unless the callout is
   *    cancelled (http_cancel, or the session ending) first; then it never runs.
   * Every argument is copied before http_request returns. Call it from a hook (on_request,
   * on_route, on_message), a timer callback or another callout's callback of this instance; at
   * most 16 callouts per session and instance are in flight at once. A PAUSE waiting for a
   * callout is still bounded by the gateway's pause timeout (-> 503): keep timeout_ms below it.
   */
  uint64_t (*http_request)(upgate_session_t* s, const char* method, const char* url,
                           const upgate_header_t* headers, size_t n_headers, const char* body,
                           size_t body_len, uint64_t timeout_ms, upgate_http_cb cb, void* arg);

  /* Cancels a callout in flight: its callback will not run. Unknown or finished ids are
     ignored. */
  void (*http_cancel)(upgate_session_t* s, uint64_t callout_id);
} upgate_host_api_t;

/* ---- The plugin ---------------------------------------------------------------------------- */

/*
 * What a plugin exports: a static table of hook pointers (never freed). Returned by the entry
 * point; the host checks abi_version == UPGATE_PLUGIN_ABI_VERSION and that struct_size covers
 * every field of that version.
 */
typedef struct upgate_plugin_v1 {
  uint32_t abi_version; /* UPGATE_PLUGIN_ABI_VERSION the plugin was built against */
  uint32_t struct_size; /* sizeof(upgate_plugin_v1_t) the plugin was built with */
  const char* name;     /* short identifier for logs, e.g. "jwt" */

  /*
   * Creates one instance from the entry's `config:` subtree, re-emitted as YAML text (`cfg`,
   * `len` bytes, NUL-terminated; "" when absent). On failure return NULL and write a one-line,
   * NUL-terminated message into `err` (at most `errlen` bytes, truncated); the host prefixes it
   * with the config file:line:col of the entry. `host` stays valid until destroy returns. Main
   * thread; may block (read key files, ...). Required.
   */
  void* (*create)(const upgate_host_api_t* host, const char* cfg, size_t len, char* err,
                  size_t errlen);

  /* Frees an instance. Any thread, once; no hook of it runs any more. Required. */
  void (*destroy)(void* self);

  /*
   * Authentication and admission: called once per request after the head was read (for a
   * WebSocket upgrade, before anything is sent upstream). `out` is written only for REJECT.
   */
  upgate_decision_t (*on_request)(void* self, upgate_session_t* s, const upgate_request_t* r,
                                  upgate_reject_t* out);

  /*
   * Routing: called after every on_request continued. Set route->upstream to choose; REJECT
   * uses `reject` like on_request.
   */
  upgate_decision_t (*on_route)(void* self, upgate_session_t* s, const upgate_request_t* r,
                                upgate_route_t* route, upgate_reject_t* reject);

  /*
   * One complete data message in frames mode (each direction, after reassembly and before
   * compression). Control frames are not shown. Return an action; `out` is read for REWRITE and
   * CLOSE. Called only on routes in frames mode.
   */
  upgate_message_action_t (*on_message)(void* self, upgate_session_t* s, const upgate_message_t* m,
                                        upgate_message_result_t* out);

  /*
   * The session ended (`ws_code`: the code of the WebSocket's first close frame, either way;
   * 1005 if it had none, 1006 if no close frame was sent; 0 if it ended before the 101; `reason`:
   * the gateway's close reason, borrowed). Called exactly once per session for every instance in
   * its chain, even those whose on_request never ran. Release per-session state here.
   */
  void (*on_close)(void* self, upgate_session_t* s, uint16_t ws_code, const char* reason);
} upgate_plugin_v1_t;

/* Signature of the entry point. */
typedef const upgate_plugin_v1_t* (*upgate_plugin_entry_fn)(uint32_t host_abi_version);

/*
 * The one exported symbol. `host_abi_version` is the host's UPGATE_PLUGIN_ABI_VERSION; return
 * NULL if you cannot serve it. Define it as
 *
 *     UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t v) { ... }
 *
 * Built-ins are compiled with -DUPGATE_PLUGIN_BUILTIN=<name>, which renames the entry to
 * <name>_upgate_plugin_entry (so several link into one binary) and drops the export attribute.
 */
#define UPGATE_PLUGIN_CONCAT_(a, b) a##b
#define UPGATE_PLUGIN_CONCAT(a, b) UPGATE_PLUGIN_CONCAT_(a, b)
#ifdef UPGATE_PLUGIN_BUILTIN
#define UPGATE_PLUGIN_ENTRY UPGATE_PLUGIN_CONCAT(UPGATE_PLUGIN_BUILTIN, _upgate_plugin_entry)
#define UPGATE_PLUGIN_EXPORT
#else
#define UPGATE_PLUGIN_ENTRY upgate_plugin_entry
#if defined(__GNUC__) || defined(__clang__)
#define UPGATE_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define UPGATE_PLUGIN_EXPORT
#endif
#endif

/* The name the host looks up with dlsym. */
#define UPGATE_PLUGIN_ENTRY_SYMBOL "upgate_plugin_entry"

UPGATE_PLUGIN_EXPORT const upgate_plugin_v1_t* UPGATE_PLUGIN_ENTRY(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif

#endif /* UPGATE_PLUGIN_H */
