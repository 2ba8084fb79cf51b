#pragma once
// Test doubles for the plugin layer: a PluginSession with an injected clock, and a harness that
// runs one configured plugin instance over a request.

#include <algorithm>
#include <catch2/catch.hpp>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "http/request_head.h"
#include "plugin/chain.h"
#include "plugin/host.h"

namespace upgate {
namespace test {

class FakeSession final : public PluginSession {
 public:
  uint64_t sessionId() const override { return 7; }
  uint32_t workerIndex() const override { return worker; }
  uint64_t nowMs() const override { return now; }
  const std::string& clientIp() const override { return ip; }
  uint16_t clientPort() const override { return port; }
  const PluginTlsIdentity* tlsClient() const override { return tls ? &*tls : nullptr; }
  void setPluginWakeup(uint64_t deadline_ms) override { wakeup = deadline_ms; }
  void onPluginsResumed() override { ++resumed; }
  void onPluginClose(uint16_t code, const std::string& reason) override {
    closes.emplace_back(code, reason);
  }

  // A fake HTTP service: calls are recorded and completed by the test with completeHttp().
  struct HttpCall {
    PluginHttpRequest request;
    PluginHttpDone done;
    bool cancelled = false;
    bool finished = false;
  };
  class FakeCall final : public PluginHttpCall {
   public:
    explicit FakeCall(std::shared_ptr<HttpCall> c) : c_(std::move(c)) {}
    ~FakeCall() override { cancel(); }
    void cancel() override {
      if (!c_->finished) c_->cancelled = true;
    }

   private:
    std::shared_ptr<HttpCall> c_;
  };
  std::unique_ptr<PluginHttpCall> startHttpCall(PluginHttpRequest request,
                                                PluginHttpDone done) override {
    if (refuse_http) return nullptr;
    auto c = std::make_shared<HttpCall>();
    c->request = std::move(request);
    c->done = std::move(done);
    http_calls.push_back(c);
    return std::make_unique<FakeCall>(c);
  }
  // Completes the i-th call as the loop would: false if it was cancelled (done not run).
  bool completeHttp(size_t i, PluginHttpResult r) {
    HttpCall& c = *http_calls.at(i);
    if (c.cancelled || c.finished) return false;
    c.finished = true;
    PluginHttpDone done = c.done;  // the chain may drop the call (and its copy) meanwhile
    done(r);
    return true;
  }
  static PluginHttpResult httpAnswer(int status, HeaderList headers = {}, std::string body = "") {
    PluginHttpResult r;
    r.result = UPGATE_HTTP_OK;
    r.status = status;
    r.headers = std::move(headers);
    r.body = std::move(body);
    return r;
  }
  static PluginHttpResult httpFailure(upgate_http_result_t kind, std::string error) {
    PluginHttpResult r;
    r.result = kind;
    r.error = std::move(error);
    return r;
  }

  // Moves the clock and fires the chain's wakeups that fall due, as a one-shot loop timer
  // would: firing disarms it, and only the chain's setPluginWakeup() arms it again.
  void advance(uint64_t ms) {
    uint64_t target = now + ms;
    for (int fired = 0; chain != nullptr && wakeup != 0 && wakeup <= target; ++fired) {
      REQUIRE(fired < 10000);  // a chain re-arming for ever at the same instant
      now = std::max(now, wakeup);
      wakeup = 0;
      chain->onWakeup();
    }
    now = target;
  }

  uint64_t now = 1000;
  uint64_t wakeup = 0;
  int resumed = 0;
  std::vector<std::pair<uint16_t, std::string>> closes;
  std::string ip = "192.0.2.1";
  uint16_t port = 40000;
  uint32_t worker = 0;
  std::optional<PluginTlsIdentity> tls;
  std::vector<std::shared_ptr<HttpCall>> http_calls;
  bool refuse_http = false;
  PluginChain* chain = nullptr;
};

inline RequestHead makeHead(HeaderList headers, const std::string& target = "/chat") {
  RequestHead h;
  h.method = "GET";
  h.target = target;
  splitTarget(target, h.path, h.query);
  h.headers = std::move(headers);
  h.upgrade = true;
  return h;
}

inline std::string fixture(const std::string& name) {
  return std::string(UPGATE_TEST_FIXTURES) + "/plugin/" + name;
}

// One built-in plugin instance, created like the gateway does, run over single requests.
class Harness {
 public:
  Harness(const std::string& plugin, const std::string& yaml, uint32_t workers = 1)
      : host_(workers) {
    PluginConfig pc;
    pc.name = plugin;
    pc.config_yaml = yaml;
    pc.where = "test.yaml:1:1";
    instance = host_.create(pc, std::string(UPGATE_TEST_FIXTURES) + "/plugin/");
  }

  // Runs on_request and on_route for a request; the chain stays alive until the next call.
  ChainOutcome run(HeaderList headers, const std::string& target = "/chat") {
    if (chain) chain->close(1000, "next");
    chain.reset();
    session.chain = nullptr;
    head = makeHead(std::move(headers), target);
    chain = std::make_unique<PluginChain>(session, PluginChain::Instances{instance});
    session.chain = chain.get();
    return chain->start(head, UPGATE_REQUEST_WEBSOCKET, "chat");
  }
  int status() const {
    return chain->outcome() == ChainOutcome::Reject ? chain->reject().status : 0;
  }
  const std::string* rejectHeader(const std::string& name) const {
    return findHeader(chain->reject().headers, name);
  }

  FakeSession session;
  std::shared_ptr<const PluginInstance> instance;
  RequestHead head;
  std::unique_ptr<PluginChain> chain;

 private:
  PluginHost host_;
};

// Creating `plugin` with `yaml` fails; returns the error text.
inline std::string createError(const std::string& plugin, const std::string& yaml) {
  PluginHost host(1);
  PluginConfig pc;
  pc.name = plugin;
  pc.config_yaml = yaml;
  pc.where = "test.yaml:3:5";
  try {
    host.create(pc, std::string(UPGATE_TEST_FIXTURES) + "/plugin/");
  } catch (const PluginLoadError& e) {
    return e.what();
  }
  return "";
}

}  // namespace test
}  // namespace upgate
