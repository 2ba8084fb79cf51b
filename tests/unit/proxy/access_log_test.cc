#include "proxy/access_log.h"

#include <catch2/catch.hpp>

using namespace upgate;

TEST_CASE("access_log: one JSON line with every field", "[proxy]") {
  AccessRecord r;
  r.id = 4097;
  r.client = "127.0.0.1:5555";
  r.listener = "public";
  r.route = "chat";
  r.upstream = "127.0.0.1:9001";
  r.status = 101;
  r.bytes_in = 10;
  r.bytes_out = 20;
  r.duration_ms = 30;
  r.close = "client closed";
  r.close_code = 1000;
  r.close_by = "client";
  std::string line = formatAccessRecord(r);
  CHECK(line.back() == '\n');
  CHECK(line.find('\n') == line.size() - 1);
  CHECK(line.find("\"id\":4097,\"client\":\"127.0.0.1:5555\",\"listener\":\"public\","
                  "\"route\":\"chat\",\"upstream\":\"127.0.0.1:9001\",\"status\":101,"
                  "\"bytes_in\":10,\"bytes_out\":20,\"duration_ms\":30,"
                  "\"close\":\"client closed\",\"close_code\":1000,\"close_by\":\"client\","
                  "\"user\":null}") != std::string::npos);
}

TEST_CASE("access_log: close code and origin are null outside WebSocket sessions", "[proxy]") {
  AccessRecord r;
  r.status = 200;
  r.close = "response complete";
  CHECK(formatAccessRecord(r).find("\"close\":\"response complete\",\"close_code\":null,"
                                   "\"close_by\":null,") != std::string::npos);
}

TEST_CASE("access_log: a plugin identity is logged", "[proxy]") {
  AccessRecord r;
  r.user = "alice";
  CHECK(formatAccessRecord(r).find("\"user\":\"alice\"}") != std::string::npos);
}

TEST_CASE("access_log: missing route is null and strings are escaped", "[proxy]") {
  AccessRecord r;
  r.close = "bad \"head\"\n\x01";
  std::string line = formatAccessRecord(r);
  CHECK(line.find("\"route\":null,\"upstream\":null") != std::string::npos);
  CHECK(line.find(R"("close":"bad \"head\"\n\u0001")") != std::string::npos);
}
