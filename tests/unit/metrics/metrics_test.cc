#include "metrics/metrics.h"

#include <catch2/catch.hpp>
#include <string>
#include <thread>

using namespace upgate::metrics;

namespace {

// The lines of `text` for metric `name` (no comments).
std::vector<std::string> samples(const std::string& text, const std::string& name) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    std::string line = text.substr(pos, end - pos);
    pos = end == std::string::npos ? text.size() : end + 1;
    if (line.rfind(name, 0) == 0 && (line.size() > name.size()) &&
        (line[name.size()] == ' ' || line[name.size()] == '{'))
      out.push_back(line);
  }
  return out;
}

}  // namespace

TEST_CASE("label values are escaped as the exposition format wants") {
  CHECK(labels({}) == "");
  CHECK(labels({{"route", "chat"}}) == "route=\"chat\"");
  CHECK(labels({{"route", "a\"b"}, {"code", "101"}}) == "route=\"a\\\"b\",code=\"101\"");
  CHECK(labels({{"x", "back\\slash\nline"}}) == "x=\"back\\\\slash\\nline\"");
}

TEST_CASE("a series is created on first use and keeps its address") {
  Registry r;
  Counter& a = r.get(Family::Requests, labels({{"route", "chat"}, {"code", "101"}}));
  a.add();
  for (int i = 0; i < 1000; ++i)  // enough insertions to rehash the map several times
    r.get(Family::Requests, labels({{"route", "r" + std::to_string(i)}, {"code", "200"}})).add();
  Counter& again = r.get(Family::Requests, labels({{"route", "chat"}, {"code", "101"}}));
  CHECK(&again == &a);
  again.add(2);
  Snapshot s;
  r.collect(s);
  CHECK(s.at({Family::Requests, "route=\"chat\",code=\"101\""}) == 3);
  CHECK(s.size() == 1001);
}

TEST_CASE("registries add up, gauges included") {
  Registry w0, w1;
  w0.get(Family::ConnectionsOpen).add(5);
  w1.get(Family::ConnectionsOpen).add(2);
  w1.get(Family::ConnectionsOpen).sub(1);
  w0.get(Family::Bytes, labels({{"route", "chat"}, {"direction", "up"}})).add(100);
  w1.get(Family::Bytes, labels({{"route", "chat"}, {"direction", "up"}})).add(23);
  // A gauge that went down on one worker more than it went up there (a subscriber moved).
  w0.get(Family::ChannelSubscribers).add(1);
  w1.get(Family::ChannelSubscribers).sub(1);
  w1.get(Family::ChannelSubscribers).add(3);
  Snapshot s;
  w0.collect(s);
  w1.collect(s);
  CHECK(s.at({Family::ConnectionsOpen, ""}) == 6);
  CHECK(s.at({Family::Bytes, "route=\"chat\",direction=\"up\""}) == 123);
  CHECK(s.at({Family::ChannelSubscribers, ""}) == 3);
}

TEST_CASE("render writes every family with HELP and TYPE, unlabelled ones as 0") {
  Registry r;
  r.get(Family::Requests, labels({{"route", "b"}, {"code", "404"}})).add(2);
  r.get(Family::Requests, labels({{"route", "a"}, {"code", "101"}})).add(7);
  r.get(Family::ConfigGeneration).set(3);
  Snapshot s;
  r.collect(s);
  const std::string text = render(s);
  for (size_t i = 0; i < static_cast<size_t>(Family::Count); ++i) {
    const FamilyInfo& f = info(static_cast<Family>(i));
    CHECK(text.find(std::string("# HELP ") + f.name + " ") != std::string::npos);
    CHECK(text.find(std::string("# TYPE ") + f.name + " " + f.type + "\n") != std::string::npos);
  }
  CHECK(samples(text, "upgate_requests_total") ==
        std::vector<std::string>{"upgate_requests_total{route=\"a\",code=\"101\"} 7",
                                 "upgate_requests_total{route=\"b\",code=\"404\"} 2"});
  CHECK(samples(text, "upgate_config_generation") ==
        std::vector<std::string>{"upgate_config_generation 3"});
  CHECK(samples(text, "upgate_connections_open") ==
        std::vector<std::string>{"upgate_connections_open 0"});
  CHECK(samples(text, "upgate_bytes_total").empty());  // labelled, nothing counted yet
  CHECK(text.back() == '\n');
}

TEST_CASE("collecting while the owner counts and adds series is safe and loses nothing") {
  Registry r;
  constexpr int kRounds = 20000;
  std::thread owner([&r] {
    Counter& hot = r.get(Family::ChannelDeliveries);
    for (int i = 0; i < kRounds; ++i) {
      hot.add();
      if (i % 100 == 0) r.get(Family::LongPolls, labels({{"route", std::to_string(i)}})).add();
    }
  });
  uint64_t last = 0;
  for (int i = 0; i < 200; ++i) {
    Snapshot s;
    r.collect(s);
    auto it = s.find({Family::ChannelDeliveries, ""});
    uint64_t now = it == s.end() ? 0 : it->second;
    CHECK(now >= last);  // a single writer's counter never goes back
    last = now;
  }
  owner.join();
  Snapshot s;
  r.collect(s);
  CHECK(s.at({Family::ChannelDeliveries, ""}) == kRounds);
  CHECK(s.size() == 1 + kRounds / 100);
}
