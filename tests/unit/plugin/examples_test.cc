// The example plugins of plugins/examples/, built as MODULE libraries, loaded like any external
// plugin.

#include <unistd.h>

#include <catch2/catch.hpp>
#include <climits>
#include <string>

#include "fake_session.h"

namespace upgate {
namespace {

std::string exampleSo(const std::string& name) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  REQUIRE(n > 0);
  std::string exe(buf, static_cast<size_t>(n));
  return exe.substr(0, exe.rfind('/')) + "/plugin_fixtures/" + name + ".so";
}

std::shared_ptr<const PluginInstance> load(const std::string& so, const std::string& yaml) {
  PluginHost host(1);
  PluginConfig pc;
  pc.name = so;
  pc.path = exampleSo(so);
  pc.config_yaml = yaml;
  pc.where = "ex.yaml:1:1";
  return host.create(pc);
}

TEST_CASE("example C plugin: header_gate", "[plugin]") {
  auto inst = load("example_c", "{header: X-Gate, value: open-sesame}\n");
  test::FakeSession session;
  RequestHead closed = test::makeHead({{"X-Gate", "nope"}});
  PluginChain c1(session, {inst});
  CHECK(c1.start(closed, UPGATE_REQUEST_WEBSOCKET, "") == ChainOutcome::Reject);
  CHECK(c1.reject().status == 403);
  CHECK(c1.reject().body == "the gate is closed\n");
  REQUIRE(findHeader(c1.reject().headers, "X-Gate-Hint") != nullptr);

  RequestHead open = test::makeHead({{"X-Gate", "open-sesame"}});
  PluginChain c2(session, {inst});
  CHECK(c2.start(open, UPGATE_REQUEST_WEBSOCKET, "") == ChainOutcome::Continue);
  HeaderList up = {{"X-Gate", "open-sesame"}};
  c2.applyUpstreamHeaders(up);
  REQUIRE(up.size() == 1);
  CHECK(up[0].name == "X-Gate-Passed");
  c2.handshakeDone(true);
  const uint8_t msg[] = {'h', 'i'};
  CHECK(c2.onMessage(UPGATE_CLIENT_TO_UPSTREAM, UPGATE_OPCODE_TEXT, msg, 2).action ==
        UPGATE_MESSAGE_PASS);
  c2.close(1000, "done");  // frees the per-session counter (ASan checks)

  PluginConfig bad;
  bad.name = "gate";
  bad.path = exampleSo("example_c");
  bad.where = "ex.yaml:4:3";
  PluginHost host(1);
  CHECK_THROWS_WITH(host.create(bad),
                    "ex.yaml:4:3: plugin \"gate\": config: header and value are required");
}

TEST_CASE("example C++ plugin: path_router", "[plugin]") {
  auto inst = load("example_cpp", "routes: { /v2/: chat-v2, /v2/admin/: admin }\nmax_message: 4\n");
  test::FakeSession session;
  RequestHead head = test::makeHead({}, "/v2/admin/x");
  PluginChain c(session, {inst});
  CHECK(c.start(head, UPGATE_REQUEST_WEBSOCKET, "") == ChainOutcome::Continue);
  CHECK(c.upstream() == "admin");
  c.handshakeDone(true);
  const uint8_t big[] = {1, 2, 3, 4, 5};
  MessageVerdict v = c.onMessage(UPGATE_CLIENT_TO_UPSTREAM, UPGATE_OPCODE_BINARY, big, 5);
  CHECK(v.action == UPGATE_MESSAGE_CLOSE);
  CHECK(v.close_code == 1009);
  CHECK(c.onMessage(UPGATE_UPSTREAM_TO_CLIENT, UPGATE_OPCODE_BINARY, big, 5).action ==
        UPGATE_MESSAGE_PASS);

  PluginHost host(1);
  PluginConfig bad;
  bad.name = "router";
  bad.path = exampleSo("example_cpp");
  bad.config_yaml = "rotues: {}\n";
  CHECK_THROWS_WITH(host.create(bad), "plugin \"router\": config: unknown key \"rotues\"");
}

}  // namespace
}  // namespace upgate
