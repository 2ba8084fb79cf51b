#include "bridge/hub.h"

#include <catch2/catch.hpp>
#include <memory>
#include <string>

#include "proxy/generation.h"

using namespace upgate;

// Counting and sequence numbers. Delivery itself posts to worker loops and is covered by the
// integration tests; these run without workers (a channel with no subscribers reaches none).

TEST_CASE("hub: subscriber counts per channel across workers", "[bridge]") {
  Hub hub;
  hub.setWorkers({nullptr, nullptr});  // two worker slots; channel routes post nothing
  auto gen = std::make_shared<Generation>(1, std::make_shared<Config>(), nullptr, nullptr);
  RouteConfig route;
  route.kind = RouteKind::Channel;
  hub.subscribed(0, "news", *gen, route, PollRequest{});
  hub.subscribed(1, "news", *gen, route, PollRequest{});
  hub.subscribed(1, "sport", *gen, route, PollRequest{});
  CHECK(hub.subscribers("news") == 2);
  CHECK(hub.subscribers("sport") == 1);
  CHECK(hub.subscribers("none") == 0);
  hub.unsubscribed(0, "news");
  hub.unsubscribed(0, "news");  // one too many: ignored, never below zero
  CHECK(hub.subscribers("news") == 1);
  hub.unsubscribed(1, "news");
  CHECK(hub.subscribers("news") == 0);
}

TEST_CASE("hub: each channel numbers its messages from 1", "[bridge]") {
  Hub hub;
  hub.setWorkers({nullptr});
  size_t reached = 99;
  CHECK(hub.publish("a", "x", false, &reached) == 1);
  CHECK(reached == 0);
  CHECK(hub.publish("a", "y", false) == 2);
  CHECK(hub.publish("b", "z", true) == 1);
  CHECK(hub.publish("a", "w", false) == 3);
}
