#include "core/log.h"

#include <catch2/catch.hpp>
#include <string>

using namespace upgate;

TEST_CASE("log: JSON escaping keeps every line one valid JSON string", "[core]") {
  auto escaped = [](std::string_view s) {
    std::string out;
    log::appendJsonEscaped(out, s);
    return out;
  };
  CHECK(escaped("plain") == "plain");
  CHECK(escaped("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(escaped("line\nnext\r\t") == "line\\nnext\\r\\t");
  CHECK(escaped(std::string("\x01\x1f\x7f", 3)).find("\\u0001") != std::string::npos);
  CHECK(escaped(std::string("\x01\x1f", 2)) == "\\u0001\\u001f");
  CHECK(escaped("caf\xc3\xa9 \xe2\x82\xac") == "caf\xc3\xa9 \xe2\x82\xac");  // UTF-8 as is
}
