#include "plugin/chain.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fake_session.h"
#include "plugin/host.h"
#include "websocket/utf8.h"

namespace upgate {
namespace {

// A plugin whose hooks are lambdas, with a shared call log.
struct Script {
  std::string name;
  std::vector<std::string>* calls = nullptr;
  const upgate_host_api_t* host = nullptr;
  std::function<upgate_decision_t(upgate_session_t*, upgate_reject_t*)> request;
  std::function<upgate_decision_t(upgate_session_t*, upgate_route_t*, upgate_reject_t*)> route;
  std::function<upgate_message_action_t(upgate_session_t*, const upgate_message_t*,
                                        upgate_message_result_t*)>
      message;
  int closed = 0;
  uint16_t close_code = 0;
};

upgate_decision_t scriptRequest(void* self, upgate_session_t* s, const upgate_request_t*,
                                upgate_reject_t* out) {
  auto* sc = static_cast<Script*>(self);
  sc->calls->push_back(sc->name + ".request");
  return sc->request ? sc->request(s, out) : UPGATE_CONTINUE;
}
upgate_decision_t scriptRoute(void* self, upgate_session_t* s, const upgate_request_t*,
                              upgate_route_t* route, upgate_reject_t* out) {
  auto* sc = static_cast<Script*>(self);
  sc->calls->push_back(sc->name + ".route");
  return sc->route ? sc->route(s, route, out) : UPGATE_CONTINUE;
}
upgate_message_action_t scriptMessage(void* self, upgate_session_t* s, const upgate_message_t* m,
                                      upgate_message_result_t* out) {
  auto* sc = static_cast<Script*>(self);
  sc->calls->push_back(sc->name + ".message");
  return sc->message ? sc->message(s, m, out) : UPGATE_MESSAGE_PASS;
}
void scriptClose(void* self, upgate_session_t*, uint16_t code, const char*) {
  auto* sc = static_cast<Script*>(self);
  ++sc->closed;
  sc->close_code = code;
}
void scriptDestroy(void*) {}
void* scriptCreate(const upgate_host_api_t*, const char*, size_t, char*, size_t) {
  return nullptr;
}

const upgate_plugin_v1_t kScriptVtable = {UPGATE_PLUGIN_ABI_VERSION,
                                          sizeof(upgate_plugin_v1_t),
                                          "script",
                                          scriptCreate,
                                          scriptDestroy,
                                          scriptRequest,
                                          scriptRoute,
                                          scriptMessage,
                                          scriptClose};

class Fixture {
 public:
  Fixture() : api_(std::make_shared<HostApi>()) {
    fillHostApi(api_->table);
    api_->table.abi_version = UPGATE_PLUGIN_ABI_VERSION;
    api_->table.struct_size = sizeof(upgate_host_api_t);
    api_->table.worker_count = 1;
    api_->table.config_dir = "";
  }
  ~Fixture() { chain.reset(); }  // before the scripts its on_close calls reach
  Fixture(const Fixture&) = delete;
  Fixture& operator=(const Fixture&) = delete;

  Script& add(const std::string& name) {
    scripts_.push_back(std::make_unique<Script>());
    Script& s = *scripts_.back();
    s.name = name;
    s.calls = &calls;
    s.host = &api_->table;
    instances_.push_back(std::make_shared<PluginInstance>(name, "", &kScriptVtable, &s, api_));
    return s;
  }

  ChainOutcome start(const HeaderList& headers = {},
                     upgate_request_kind_t kind = UPGATE_REQUEST_WEBSOCKET) {
    head = test::makeHead(headers);
    chain = std::make_unique<PluginChain>(session, instances_, Millis{5000});
    session.chain = chain.get();
    return chain->start(head, kind, "chat");
  }

  std::vector<std::string> calls;
  test::FakeSession session;
  RequestHead head;
  std::unique_ptr<PluginChain> chain;

 private:
  std::shared_ptr<HostApi> api_;
  std::vector<std::unique_ptr<Script>> scripts_;
  PluginChain::Instances instances_;
};

using Calls = std::vector<std::string>;

TEST_CASE("plugin chain: hooks run in order, on_request for all, then on_route", "[plugin]") {
  Fixture f;
  f.add("a");
  f.add("b");
  CHECK(f.start() == ChainOutcome::Continue);
  CHECK(f.calls == Calls{"a.request", "b.request", "a.route", "b.route"});
  CHECK(f.chain->upstream().empty());
  f.chain->close(1000, "bye");
  CHECK(f.session.wakeup == 0);
}

TEST_CASE("plugin chain: an empty chain continues", "[plugin]") {
  Fixture f;
  CHECK(f.start() == ChainOutcome::Continue);
  CHECK_FALSE(f.chain->hasMessageHooks());
}

TEST_CASE("plugin chain: the first REJECT ends the chain", "[plugin]") {
  Fixture f;
  f.add("a");
  static const upgate_header_t hdrs[] = {
      {"WWW-Authenticate", "Bearer"}, {"Bad Name", "x"}, {"X-Ok", "line\r\nbreak"}};
  f.add("b").request = [](upgate_session_t*, upgate_reject_t* out) {
    out->status = 401;
    out->reason = "no token";
    out->headers = hdrs;
    out->header_count = 3;
    out->body = "go away";
    out->body_len = 7;
    return UPGATE_REJECT;
  };
  f.add("c");
  CHECK(f.start() == ChainOutcome::Reject);
  CHECK(f.calls == Calls{"a.request", "b.request"});
  CHECK(f.chain->reject().status == 401);
  CHECK(f.chain->reject().reason == "plugin b: no token");
  CHECK(f.chain->reject().body == "go away");
  REQUIRE(f.chain->reject().headers.size() == 1);  // the invalid ones are dropped
  CHECK(f.chain->reject().headers[0].value == "Bearer");
}

TEST_CASE("plugin chain: a REJECT status outside 400-599 becomes 500", "[plugin]") {
  auto status = GENERATE(0, 200, 302, 399, 600, 999);
  Fixture f;
  f.add("a").request = [status](upgate_session_t*, upgate_reject_t* out) {
    out->status = static_cast<uint16_t>(status);
    return UPGATE_REJECT;
  };
  CHECK(f.start() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 500);
  CHECK(f.chain->reject().reason == "plugin a: invalid reject status");
  CHECK(f.chain->reject().body == "Internal Server Error");
}

TEST_CASE("plugin chain: a valid status without body gets the reason phrase", "[plugin]") {
  Fixture f;
  f.add("a").request = [](upgate_session_t*, upgate_reject_t* out) {
    out->status = 403;
    return UPGATE_REJECT;
  };
  CHECK(f.start() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 403);
  CHECK(f.chain->reject().body == "Forbidden");
  CHECK(f.chain->reject().reason == "plugin a");
}

TEST_CASE("plugin chain: an unknown decision becomes 500", "[plugin]") {
  Fixture f;
  f.add("a").request = [](upgate_session_t*, upgate_reject_t*) {
    return static_cast<upgate_decision_t>(7);
  };
  CHECK(f.start() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 500);
}

TEST_CASE("plugin chain: the first on_route that chooses wins", "[plugin]") {
  Fixture f;
  f.add("a");
  f.add("b").route = [](upgate_session_t*, upgate_route_t* r, upgate_reject_t*) {
    r->upstream = "canary";
    return UPGATE_CONTINUE;
  };
  f.add("c").route = [](upgate_session_t*, upgate_route_t* r, upgate_reject_t*) {
    r->upstream = "other";
    return UPGATE_CONTINUE;
  };
  CHECK(f.start() == ChainOutcome::Continue);
  CHECK(f.chain->upstream() == "canary");
  CHECK(f.calls == Calls{"a.request", "b.request", "c.request", "a.route", "b.route"});
}

TEST_CASE("plugin chain: PAUSE waits for resume from a timer, then goes on", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.request = [&a](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, 200,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          CHECK(sc->host->resume(ss, UPGATE_CONTINUE, nullptr, nullptr) == 0);
        },
        &a);
    return UPGATE_PAUSE;
  };
  f.add("b");
  CHECK(f.start() == ChainOutcome::Paused);
  CHECK(f.calls == Calls{"a.request"});
  CHECK(f.session.wakeup == 1200);  // the timer, before the 5 s pause deadline
  f.session.advance(199);
  CHECK(f.session.resumed == 0);
  f.session.advance(1);
  CHECK(f.session.resumed == 1);
  CHECK(f.chain->outcome() == ChainOutcome::Continue);
  CHECK(f.calls == Calls{"a.request", "b.request", "a.route", "b.route"});
  CHECK(f.session.wakeup == 0);
}

TEST_CASE("plugin chain: a 0 ms timer started by a timer callback runs", "[plugin]") {
  // The loop timer is one-shot: firing it must not leave its deadline looking armed, or a
  // timer due at that same instant (and the pause deadline behind it) would never run.
  Fixture f;
  Script& a = f.add("a");
  a.request = [&a](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, 50,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          sc->host->timer_start(
              ss, 0,
              [](upgate_session_t* s2, void* arg2) {
                auto* sc2 = static_cast<Script*>(arg2);
                CHECK(sc2->host->resume(s2, UPGATE_CONTINUE, nullptr, nullptr) == 0);
              },
              sc);
        },
        &a);
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  f.session.advance(50);
  CHECK(f.session.resumed == 1);
  CHECK(f.chain->outcome() == ChainOutcome::Continue);
}

TEST_CASE("plugin chain: resume with REJECT from a timer", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.request = [&a](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, 10,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          upgate_reject_t r{};
          r.struct_size = sizeof(r);
          r.status = 403;
          r.reason = "denied later";
          sc->host->resume(ss, UPGATE_REJECT, &r, nullptr);
        },
        &a);
    return UPGATE_PAUSE;
  };
  f.add("b");
  CHECK(f.start() == ChainOutcome::Paused);
  f.session.advance(10);
  CHECK(f.session.resumed == 1);
  CHECK(f.chain->outcome() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 403);
  CHECK(f.chain->reject().reason == "plugin a: denied later");
  CHECK(f.calls == Calls{"a.request"});
}

TEST_CASE("plugin chain: a PAUSE that never resumes ends with 503", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  upgate_session_t* handle = nullptr;
  a.request = [&handle](upgate_session_t* s, upgate_reject_t*) {
    handle = s;
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  CHECK(f.session.wakeup == 6000);
  f.session.advance(4999);
  CHECK(f.session.resumed == 0);
  f.session.advance(1);
  CHECK(f.session.resumed == 1);
  CHECK(f.chain->outcome() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 503);
  // A late resume is refused.
  CHECK(a.host->resume(handle, UPGATE_CONTINUE, nullptr, nullptr) == -1);
}

TEST_CASE("plugin chain: resume called inside the hook that pauses", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.route = [&a](upgate_session_t* s, upgate_route_t*, upgate_reject_t*) {
    upgate_route_t r{};
    r.struct_size = sizeof(r);
    r.upstream = "fast";
    CHECK(a.host->resume(s, UPGATE_CONTINUE, nullptr, &r) == 0);
    return UPGATE_PAUSE;
  };
  f.add("b");
  CHECK(f.start() == ChainOutcome::Continue);
  CHECK(f.chain->upstream() == "fast");
  CHECK(f.session.resumed == 0);
  CHECK(f.calls == Calls{"a.request", "b.request", "a.route"});
}

TEST_CASE("plugin chain: resume is refused when not paused", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  int rc = 0;
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    rc = a.host->resume(s, static_cast<upgate_decision_t>(UPGATE_PAUSE), nullptr, nullptr);
    return UPGATE_CONTINUE;
  };
  CHECK(f.start() == ChainOutcome::Continue);
  CHECK(rc == -1);
}

TEST_CASE("plugin chain: on_close runs once for every instance, timers die first", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  int fired = 0;
  a.request = [&](upgate_session_t* s, upgate_reject_t* out) {
    a.host->timer_start(
        s, 100, [](upgate_session_t*, void* arg) { ++*static_cast<int*>(arg); }, &fired);
    out->status = 401;
    return UPGATE_REJECT;
  };
  Script& b = f.add("b");
  CHECK(f.start() == ChainOutcome::Reject);
  f.chain->close(0, "rejected");
  f.chain->close(0, "again");
  f.session.advance(1000);
  CHECK(fired == 0);
  CHECK(a.closed == 1);
  CHECK(b.closed == 1);  // even though its on_request never ran
}

TEST_CASE("plugin chain: host API reads the request and edits the upstream request", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    const upgate_host_api_t* h = a.host;
    CHECK(std::string(h->request(s)->path) == "/chat");
    CHECK(std::string(h->request(s)->route) == "chat");
    CHECK(std::string(h->header(s, "x-multi", 1)) == "two");
    CHECK(h->header(s, "x-multi", 2) == nullptr);
    CHECK(h->header_count(s) == 3);
    const char* n = nullptr;
    const char* v = nullptr;
    CHECK(h->header_at(s, 0, &n, &v) == 0);
    CHECK(std::string(n) == "Host");
    CHECK(h->header_at(s, 3, &n, &v) == -1);
    uint16_t port = 0;
    CHECK(std::string(h->client_address(s, &port)) == "192.0.2.1");
    CHECK(port == 40000);
    CHECK(h->tls_client(s) == nullptr);
    CHECK(h->session_id(s) == 7);
    CHECK(h->set_upstream_header(s, "X-User", "alice") == 0);
    CHECK(h->set_upstream_header(s, "x-user", "bob") == 0);     // replaces
    CHECK(h->set_upstream_header(s, "X-Multi", nullptr) == 0);  // removes
    CHECK(h->set_upstream_header(s, "Connection", "close") == -1);
    CHECK(h->set_upstream_header(s, "Sec-WebSocket-Key", "x") == -1);
    CHECK(h->set_upstream_header(s, "Bad Name", "x") == -1);
    CHECK(h->set_upstream_header(s, "X-Ok", "a\r\nb") == -1);
    CHECK(h->set_identity(s, "alice", "{\"role\":\"admin\"}") == 0);
    CHECK(h->set_identity(s, "alice", "[1]") == -1);
    CHECK(h->set_identity(s, "", nullptr) == -1);
    CHECK(h->close(s, 1008, "too early") == -1);  // before the 101
    const char* claims = nullptr;
    CHECK(std::string(h->identity(s, &claims)) == "alice");
    CHECK(std::string(claims) == "{\"role\":\"admin\"}");
    CHECK(h->get_data(s) == nullptr);
    h->set_data(s, &f);
    CHECK(h->get_data(s) == &f);
    return UPGATE_CONTINUE;
  };
  CHECK(f.start({{"Host", "gw"}, {"X-Multi", "one"}, {"x-multi", "two"}}) ==
        ChainOutcome::Continue);
  CHECK(f.chain->identityUser() == "alice");
  HeaderList up = {{"Host", "gw"}, {"X-Multi", "one"}, {"X-User", "old"}};
  f.chain->applyUpstreamHeaders(up);
  REQUIRE(up.size() == 2);
  CHECK(up[0].name == "Host");
  CHECK(up[1].name == "x-user");
  CHECK(up[1].value == "bob");
}

TEST_CASE("plugin chain: TLS client identity is exposed", "[plugin]") {
  Fixture f;
  f.session.tls = PluginTlsIdentity{"CN=alice", {"DNS:a.example", "IP:192.0.2.1"}, "ab12"};
  Script& a = f.add("a");
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    const upgate_tls_identity_t* id = a.host->tls_client(s);
    REQUIRE(id != nullptr);
    CHECK(std::string(id->subject) == "CN=alice");
    REQUIRE(id->san_count == 2);
    CHECK(std::string(id->sans[1]) == "IP:192.0.2.1");
    CHECK(std::string(id->sha256_fingerprint) == "ab12");
    return UPGATE_CONTINUE;
  };
  CHECK(f.start() == ChainOutcome::Continue);
}

TEST_CASE("plugin chain: host->close after the 101 reaches the session", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, 50,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          CHECK(sc->host->close(ss, 1005, "not sendable") == -1);
          CHECK(sc->host->close(ss, 1008, "token expired") == 0);
        },
        &a);
    return UPGATE_CONTINUE;
  };
  CHECK(f.start() == ChainOutcome::Continue);
  f.chain->handshakeDone(true);
  f.session.advance(50);
  REQUIRE(f.session.closes.size() == 1);
  CHECK(f.session.closes[0].first == 1008);
  CHECK(f.session.closes[0].second == "token expired");
}

TEST_CASE("plugin chain: host->close leaves a plain HTTP request alone", "[plugin]") {
  // An HTTP request admitted when it arrived runs to its end: its response is not cut mid-body
  // (e.g. by jwt's close_on_expiry).
  Fixture f;
  Script& a = f.add("a");
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, 50,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          CHECK(sc->host->close(ss, 1008, "token expired") == -2);  // for good: no retry
        },
        &a);
    return UPGATE_CONTINUE;
  };
  CHECK(f.start({}, UPGATE_REQUEST_HTTP) == ChainOutcome::Continue);
  f.chain->handshakeDone(/*closable=*/false);  // the request went upstream
  f.session.advance(50);
  CHECK(f.session.closes.empty());
}

TEST_CASE("plugin chain: host->close ends an SSE stream (an HTTP request that lives on)",
          "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, 50,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          CHECK(sc->host->close(ss, 1008, "token expired") == 0);
        },
        &a);
    return UPGATE_CONTINUE;
  };
  CHECK(f.start({}, UPGATE_REQUEST_HTTP) == ChainOutcome::Continue);
  f.chain->handshakeDone(/*closable=*/true);  // answered as an event stream
  f.session.advance(50);
  REQUIRE(f.session.closes.size() == 1);
  CHECK(f.session.closes[0].first == 1008);
}

TEST_CASE("plugin chain: a huge timer delay is far off, not due at once", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.request = [&a](upgate_session_t* s, upgate_reject_t*) {
    a.host->timer_start(
        s, UINT64_MAX,
        [](upgate_session_t* ss, void* arg) {
          auto* sc = static_cast<Script*>(arg);
          sc->host->resume(ss, UPGATE_CONTINUE, nullptr, nullptr);
        },
        &a);
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  f.session.advance(4999);
  CHECK(f.session.resumed == 0);  // the deadline did not wrap round to "now"
  f.session.advance(1);           // plugin_pause (5 s in the fixture) ends it
  CHECK(f.session.resumed == 1);
  CHECK(f.chain->outcome() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 503);
}

TEST_CASE("plugin chain: messages pass, rewrite, drop and close", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Script& b = f.add("b");
  std::string seen;
  a.message = [](upgate_session_t*, const upgate_message_t* m, upgate_message_result_t* out) {
    std::string text(reinterpret_cast<const char*>(m->data), m->len);
    if (text == "drop") return UPGATE_MESSAGE_DROP;
    if (text == "close") {
      out->close_code = 4001;
      out->close_reason = "bye";
      return UPGATE_MESSAGE_CLOSE;
    }
    if (text == "bad") {
      out->close_code = 1005;  // not sendable
      return UPGATE_MESSAGE_CLOSE;
    }
    if (text == "long") {  // "ab" + 42 x U+20AC: byte 123 is inside a character
      static const std::string euros = [] {
        std::string e = "ab";
        for (int i = 0; i < 42; ++i) e += "\xe2\x82\xac";
        return e;
      }();
      out->close_code = 4002;
      out->close_reason = euros.c_str();
      return UPGATE_MESSAGE_CLOSE;
    }
    if (text == "not-utf8") {  // a text rewrite must stay UTF-8
      static const uint8_t bad[] = {0xff, 0xfe, 'A'};
      out->opcode = UPGATE_OPCODE_TEXT;
      out->data = bad;
      out->len = sizeof(bad);
      return UPGATE_MESSAGE_REWRITE;
    }
    if (text == "latin1") {
      out->close_code = 4003;
      out->close_reason = "caf\xe9";  // not UTF-8: not sent
      return UPGATE_MESSAGE_CLOSE;
    }
    static const uint8_t upper[] = {'H', 'I'};
    out->opcode = UPGATE_OPCODE_BINARY;
    out->data = upper;
    out->len = 2;
    return UPGATE_MESSAGE_REWRITE;
  };
  b.message = [&](upgate_session_t*, const upgate_message_t* m, upgate_message_result_t*) {
    seen.assign(reinterpret_cast<const char*>(m->data), m->len);
    return UPGATE_MESSAGE_PASS;
  };
  CHECK(f.start() == ChainOutcome::Continue);
  f.chain->handshakeDone(true);
  REQUIRE(f.chain->hasMessageHooks());
  auto msg = [&](const std::string& t) {
    return f.chain->onMessage(UPGATE_CLIENT_TO_UPSTREAM, UPGATE_OPCODE_TEXT,
                              reinterpret_cast<const uint8_t*>(t.data()), t.size());
  };
  MessageVerdict v = msg("hi");
  CHECK(v.action == UPGATE_MESSAGE_REWRITE);
  CHECK(v.opcode == UPGATE_OPCODE_BINARY);
  CHECK(v.payload == "HI");
  CHECK(seen == "HI");  // later plugins see the rewritten message
  seen.clear();
  CHECK(msg("drop").action == UPGATE_MESSAGE_DROP);
  CHECK(seen.empty());
  v = msg("not-utf8");
  CHECK(v.action == UPGATE_MESSAGE_CLOSE);
  CHECK(v.close_code == 1011);
  CHECK(seen.empty());  // later plugins do not see it
  v = msg("close");
  CHECK(v.action == UPGATE_MESSAGE_CLOSE);
  CHECK(v.close_code == 4001);
  CHECK(v.close_reason == "bye");
  v = msg("bad");
  CHECK(v.action == UPGATE_MESSAGE_CLOSE);
  CHECK(v.close_code == 1011);
  v = msg("long");  // close reasons stay valid UTF-8 on the wire (RFC 6455 §5.5.1)
  CHECK(v.close_code == 4002);
  CHECK(v.close_reason.size() == 122);
  CHECK(isValidUtf8(v.close_reason));
  v = msg("latin1");
  CHECK(v.close_code == 4003);
  CHECK(v.close_reason.empty());
}

TEST_CASE("plugin chain: host->close inside on_message becomes the verdict", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  a.message = [&](upgate_session_t* s, const upgate_message_t*, upgate_message_result_t*) {
    a.host->close(s, 1008, "policy");
    return UPGATE_MESSAGE_PASS;
  };
  CHECK(f.start() == ChainOutcome::Continue);
  f.chain->handshakeDone(true);
  const uint8_t data[] = {'x'};
  MessageVerdict v = f.chain->onMessage(UPGATE_UPSTREAM_TO_CLIENT, UPGATE_OPCODE_TEXT, data, 1);
  CHECK(v.action == UPGATE_MESSAGE_CLOSE);
  CHECK(v.close_code == 1008);
  CHECK(f.session.closes.empty());
}

// ---- HTTP callouts (host->http_request) ---------------------------------------------------------

// What an HTTP callback saw, for the tests below.
struct Seen {
  std::vector<std::string>* log = nullptr;
  const upgate_host_api_t* host = nullptr;
  upgate_decision_t resume_with = UPGATE_CONTINUE;
};

void recordAnswer(upgate_session_t* s, void* arg, const upgate_http_response_t* r) {
  auto* seen = static_cast<Seen*>(arg);
  std::string line = "answer result=" + std::to_string(r->result) +
                     " status=" + std::to_string(r->status) +
                     " body=" + std::string(r->body, r->body_len) + " error=" + r->error;
  for (size_t i = 0; i < r->header_count; ++i) {
    line += std::string(" ") + r->headers[i].name + ":" + r->headers[i].value;
  }
  seen->log->push_back(line);
  upgate_reject_t rej{};
  rej.struct_size = sizeof(rej);
  rej.status = 401;
  seen->host->resume(s, seen->resume_with, &rej, nullptr);
}

uint64_t callout(Script& sc, upgate_session_t* s, const char* url, Seen* seen,
                 const upgate_header_t* headers = nullptr, size_t n = 0) {
  return sc.host->http_request(s, "GET", url, headers, n, nullptr, 0, 2000, recordAnswer, seen);
}

TEST_CASE("plugin chain: an HTTP callout resumes a PAUSE from its callback", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  static const upgate_header_t hdrs[] = {{"X-Forwarded-Uri", "/chat"}, {"Cookie", "s=1"}};
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    return callout(a, s, "http://auth.example:8080/check?x=1", &seen, hdrs, 2) != 0
               ? UPGATE_PAUSE
               : UPGATE_CONTINUE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  REQUIRE(f.session.http_calls.size() == 1);
  const PluginHttpRequest& req = f.session.http_calls[0]->request;
  CHECK(req.method == "GET");
  CHECK(req.endpoint.host == "auth.example");
  CHECK(req.endpoint.port == 8080);
  CHECK(req.target == "/check?x=1");
  CHECK(req.timeout == Millis(2000));
  REQUIRE(req.headers.size() == 2);
  CHECK(req.headers[1].name == "Cookie");
  CHECK(f.chain->httpCallsInFlight() == 1);

  CHECK(
      f.session.completeHttp(0, test::FakeSession::httpAnswer(204, {{"X-User", "alice"}}, "fine")));
  // The callback ran, its resume went on with the chain (on_route).
  CHECK(f.calls ==
        Calls{"a.request", "answer result=0 status=204 body=fine error= X-User:alice", "a.route"});
  CHECK(f.chain->outcome() == ChainOutcome::Continue);
  CHECK(f.session.resumed == 1);
  CHECK(f.chain->httpCallsInFlight() == 0);
}

TEST_CASE("plugin chain: callout failures are told apart and carry no response", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host, UPGATE_REJECT};
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    callout(a, s, "http://127.0.0.1/", &seen);
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  CHECK(f.session.completeHttp(
      0, test::FakeSession::httpFailure(UPGATE_HTTP_TIMEOUT, "timeout after 2000 ms")));
  CHECK(f.calls.back() == "answer result=1 status=0 body= error=timeout after 2000 ms");
  CHECK(f.chain->outcome() == ChainOutcome::Reject);
  CHECK(f.chain->reject().status == 401);
}

TEST_CASE("plugin chain: the session ending cancels callouts before on_close", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    callout(a, s, "http://127.0.0.1:9/", &seen);
    callout(a, s, "http://127.0.0.1:9/", &seen);
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  REQUIRE(f.session.http_calls.size() == 2);
  f.chain->close(0, "client went away");
  CHECK(a.closed == 1);
  CHECK(f.session.http_calls[0]->cancelled);
  CHECK(f.session.http_calls[1]->cancelled);
  // A completion racing the close never reaches the plugin.
  CHECK_FALSE(f.session.completeHttp(0, test::FakeSession::httpAnswer(200)));
  CHECK(std::count_if(f.calls.begin(), f.calls.end(),
                      [](const std::string& c) { return c.rfind("answer", 0) == 0; }) == 0);
}

TEST_CASE("plugin chain: a destroyed chain ignores a late completion", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    callout(a, s, "http://127.0.0.1:9/", &seen);
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  PluginHttpDone done = f.session.http_calls[0]->done;
  f.chain.reset();
  f.session.chain = nullptr;
  PluginHttpResult r = test::FakeSession::httpAnswer(200);
  done(r);  // the session's side let it through: the chain's liveness check must stop it
  CHECK(f.calls == Calls{"a.request"});
}

TEST_CASE("plugin chain: http_cancel stops one callback", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    uint64_t first = callout(a, s, "http://127.0.0.1:9/", &seen);
    callout(a, s, "http://127.0.0.1:9/", &seen);
    a.host->http_cancel(s, first);
    a.host->http_cancel(s, 12345);  // unknown: ignored
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  CHECK(f.session.http_calls[0]->cancelled);
  CHECK_FALSE(f.session.completeHttp(0, test::FakeSession::httpAnswer(200)));
  CHECK(f.session.completeHttp(1, test::FakeSession::httpAnswer(200)));
  CHECK(f.chain->outcome() == ChainOutcome::Continue);
}

TEST_CASE("plugin chain: http_request refuses bad arguments", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  std::vector<uint64_t> ids;
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    const upgate_host_api_t* h = a.host;
    static const upgate_header_t crlf[] = {{"X-A", "a\r\nX-B: b"}};
    static const upgate_header_t bad_name[] = {{"Bad Name", "x"}};
    for (const char* url :
         {"https://127.0.0.1/", "ftp://x/", "http://", "http:///path", "http://user@host/",
          "http://host:0/", "http://host:65536/", "http://host:12a/", "http://[::1/",
          "http://ho st/", "http://host/a b", "127.0.0.1/"}) {
      ids.push_back(callout(a, s, url, &seen));
    }
    ids.push_back(callout(a, s, "http://127.0.0.1/", &seen, crlf, 1));
    ids.push_back(callout(a, s, "http://127.0.0.1/", &seen, bad_name, 1));
    ids.push_back(h->http_request(s, "GE T", "http://127.0.0.1/", nullptr, 0, nullptr, 0, 100,
                                  recordAnswer, &seen));
    ids.push_back(h->http_request(s, "GET", "http://127.0.0.1/", nullptr, 0, nullptr, 0, 0,
                                  recordAnswer, &seen));
    ids.push_back(h->http_request(s, "GET", "http://127.0.0.1/", nullptr, 0, nullptr, 0, 100,
                                  nullptr, &seen));
    ids.push_back(h->http_request(s, "GET", "http://127.0.0.1/", nullptr, 0, nullptr, 5, 100,
                                  recordAnswer, &seen));
    // A good request the session cannot start (e.g. its worker is shutting down).
    f.session.refuse_http = true;
    ids.push_back(callout(a, s, "http://127.0.0.1/", &seen));
    return UPGATE_CONTINUE;
  };
  CHECK(f.start() == ChainOutcome::Continue);
  CHECK(ids == std::vector<uint64_t>(ids.size(), 0));
  CHECK(f.session.http_calls.empty());
}

TEST_CASE("plugin chain: http_request URL forms and the in-flight cap", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  std::vector<uint64_t> ids;
  a.request = [&](upgate_session_t* s, upgate_reject_t*) {
    ids.push_back(callout(a, s, "HTTP://[::1]:81?q=1#frag", &seen));
    ids.push_back(callout(a, s, "http://auth.local", &seen));
    for (size_t i = 2; i < PluginChain::kMaxCalloutsPerInstance + 1; ++i) {
      ids.push_back(callout(a, s, "http://127.0.0.1/", &seen));
    }
    return UPGATE_PAUSE;
  };
  CHECK(f.start() == ChainOutcome::Paused);
  REQUIRE(ids.size() == PluginChain::kMaxCalloutsPerInstance + 1);
  CHECK(ids.back() == 0);  // one over the cap
  CHECK(f.session.http_calls.size() == PluginChain::kMaxCalloutsPerInstance);
  CHECK(f.session.http_calls[0]->request.endpoint.host == "::1");
  CHECK(f.session.http_calls[0]->request.endpoint.port == 81);
  CHECK(f.session.http_calls[0]->request.target == "/?q=1");
  CHECK(f.session.http_calls[1]->request.endpoint.port == 80);
  CHECK(f.session.http_calls[1]->request.target == "/");
  f.chain->close(0, "done");
  for (const auto& c : f.session.http_calls) CHECK(c->cancelled);
}

TEST_CASE("plugin chain: a callout after the handshake can close the session", "[plugin]") {
  Fixture f;
  Script& a = f.add("a");
  Seen seen{&f.calls, a.host};
  CHECK(f.start() == ChainOutcome::Continue);
  f.chain->handshakeDone(true);
  // From on_message: check something asynchronously, then close from the callback.
  a.message = [&](upgate_session_t* s, const upgate_message_t*, upgate_message_result_t*) {
    a.host->http_request(
        s, "POST", "http://127.0.0.1/audit", nullptr, 0, "m", 1, 500,
        [](upgate_session_t* hs, void* arg, const upgate_http_response_t* r) {
          auto* sn = static_cast<Seen*>(arg);
          sn->log->push_back("audit " + std::to_string(r->status));
          sn->host->close(hs, 1008, "audit said no");
        },
        &seen);
    return UPGATE_MESSAGE_PASS;
  };
  const uint8_t data[] = {'m'};
  CHECK(f.chain->onMessage(UPGATE_CLIENT_TO_UPSTREAM, UPGATE_OPCODE_TEXT, data, 1).action ==
        UPGATE_MESSAGE_PASS);
  REQUIRE(f.session.http_calls.size() == 1);
  CHECK(f.session.http_calls[0]->request.method == "POST");
  CHECK(f.session.http_calls[0]->request.body == "m");
  CHECK(f.session.completeHttp(0, test::FakeSession::httpAnswer(403)));
  CHECK(f.calls.back() == "audit 403");
  REQUIRE(f.session.closes.size() == 1);
  CHECK(f.session.closes[0].first == 1008);
}

}  // namespace
}  // namespace upgate
