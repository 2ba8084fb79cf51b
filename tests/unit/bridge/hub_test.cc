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

TEST_CASE("hub: long-poll channels are keyed by route, channel routes share names", "[bridge]") {
  RouteConfig channel_route;
  channel_route.kind = RouteKind::Channel;
  channel_route.name = "news";
  RouteConfig ticker;
  ticker.kind = RouteKind::LongPoll;
  ticker.name = "ticker";
  RouteConfig other = ticker;
  other.name = "other";
  CHECK(hubChannelKey(channel_route, "GOOG") == "GOOG");  // the publish API's namespace
  CHECK(hubChannelKey(ticker, "GOOG") != hubChannelKey(other, "GOOG"));
  CHECK(hubChannelKey(ticker, "GOOG") != "GOOG");
  CHECK_FALSE(isValidChannelName(hubChannelKey(ticker, "GOOG")));  // no request can name it
  CHECK(channelForLog(hubChannelKey(ticker, "GOOG")) == "ticker:GOOG");
  CHECK(channelForLog("GOOG") == "GOOG");
}

TEST_CASE("hub: channel names are text", "[bridge]") {
  CHECK(isValidChannelName("sports"));
  CHECK(isValidChannelName("caf\xc3\xa9 / ticker:GOOG"));
  CHECK_FALSE(isValidChannelName(""));
  CHECK_FALSE(isValidChannelName("a\nb"));
  CHECK_FALSE(isValidChannelName(std::string("a\0b", 3)));
  CHECK_FALSE(isValidChannelName("a\x7f"));
}

TEST_CASE("hub: entries of channels nothing was published to do not pile up", "[bridge]") {
  Hub hub;
  hub.setWorkers({nullptr});
  auto gen = std::make_shared<Generation>(1, std::make_shared<Config>(), nullptr, nullptr);
  RouteConfig route;
  route.kind = RouteKind::Channel;
  for (int i = 0; i < 100; ++i) {  // a client trying ever new names
    const std::string name = "probe-" + std::to_string(i);
    hub.subscribed(0, name, *gen, route, PollRequest{});
    hub.unsubscribed(0, name);
  }
  CHECK(hub.channelCount() == 0);
  // A channel with a sequence number keeps it across an empty spell: numbers never restart.
  hub.subscribed(0, "news", *gen, route, PollRequest{});
  hub.unsubscribed(0, "news");
  CHECK(hub.publish("news", "a", false) == 1);
  hub.subscribed(0, "news", *gen, route, PollRequest{});
  hub.unsubscribed(0, "news");
  CHECK(hub.channelCount() == 1);
  CHECK(hub.publish("news", "b", false) == 2);
}
