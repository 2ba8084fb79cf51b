#include "websocket/deflate.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace upgate {
namespace {

std::string bytes(std::initializer_list<int> list) {
  std::string s;
  for (int b : list) {
    s.push_back(static_cast<char>(b));
  }
  return s;
}

DeflateChannel channel(uint8_t bits, bool no_context_takeover) {
  DeflateChannel c;
  c.window_bits = bits;
  c.no_context_takeover = no_context_takeover;
  return c;
}

std::string compressWhole(Deflater& d, const std::string& msg) {
  std::string out;
  REQUIRE(d.compress(msg.data(), msg.size(), true, &out) == CodecStatus::Ok);
  return out;
}

std::string inflateWhole(Inflater& i, const std::string& payload, uint64_t cap = 1 << 24) {
  std::string out;
  REQUIRE(i.decompress(payload.data(), payload.size(), true, cap, &out) == CodecStatus::Ok);
  return out;
}

// Text with repeats at many distances, so a window limit matters.
std::string sample(size_t n, unsigned seed) {
  std::string s;
  uint32_t x = seed * 2654435761u + 1;
  while (s.size() < n) {
    x = x * 1103515245u + 12345u;
    const size_t back = (x >> 8) % 300;
    if (s.size() > back + 8 && (x & 3) != 0) {
      s.append(s, s.size() - back - 8, 8);  // repeat something up to ~300 bytes back
    } else {
      s.push_back(static_cast<char>('a' + (x >> 16) % 26));
    }
  }
  s.resize(n);
  return s;
}

TEST_CASE("deflate: RFC 7692 §7.2.3.1 \"Hello\" bytes", "[websocket]") {
  Deflater d(channel(15, false));
  CHECK(compressWhole(d, "Hello") == bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}));
  Inflater i(channel(15, false));
  CHECK(inflateWhole(i, bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})) == "Hello");
}

TEST_CASE("deflate: RFC 7692 §7.2.3 examples inflate", "[websocket]") {
  SECTION("§7.2.3.1 fragmented: two frames of one message") {
    Inflater i(channel(15, false));
    std::string out;
    const std::string a = bytes({0xf2, 0x48, 0xcd});
    const std::string b = bytes({0xc9, 0xc9, 0x07, 0x00});
    CHECK(i.decompress(a.data(), a.size(), false, 100, &out) == CodecStatus::Ok);
    CHECK(i.decompress(b.data(), b.size(), true, 100, &out) == CodecStatus::Ok);
    CHECK(out == "Hello");
  }
  SECTION("§7.2.3.2 sharing the window: the second message refers to the first") {
    Inflater i(channel(15, false));
    CHECK(inflateWhole(i, bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})) == "Hello");
    CHECK(inflateWhole(i, bytes({0xf2, 0x00, 0x11, 0x00, 0x00})) == "Hello");
  }
  SECTION("§7.2.3.3 a stored (uncompressed) block") {
    Inflater i(channel(15, false));
    CHECK(inflateWhole(i, bytes({0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f,
                                 0x00})) == "Hello");
  }
  SECTION("§7.2.3.4 a block with BFINAL set, then a new stream") {
    Inflater i(channel(15, false));
    CHECK(inflateWhole(i, bytes({0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00})) == "Hello");
    CHECK(inflateWhole(i, bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})) == "Hello");
  }
  SECTION("§7.2.3.5 two DEFLATE blocks in one message") {
    Inflater i(channel(15, false));
    CHECK(inflateWhole(i, bytes({0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9,
                                 0x07, 0x00})) == "Hello");
  }
  SECTION("§7.2.3.6 an empty message") {
    Deflater d(channel(15, false));
    CHECK(compressWhole(d, "") == bytes({0x00}));
    Inflater i(channel(15, false));
    CHECK(inflateWhole(i, bytes({0x00})).empty());
    CHECK(inflateWhole(i, "").empty());  // also an empty payload
    // Neither disturbs the shared window.
    CHECK(inflateWhole(i, bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})) == "Hello");
    CHECK(inflateWhole(i, "").empty());
    CHECK(inflateWhole(i, bytes({0xf2, 0x00, 0x11, 0x00, 0x00})) == "Hello");
  }
}

TEST_CASE("deflate: context takeover shrinks a repeated message", "[websocket]") {
  Deflater d(channel(15, false));
  const std::string first = compressWhole(d, "Hello");
  const std::string second = compressWhole(d, "Hello");
  CHECK(second.size() < first.size());
  CHECK(second == bytes({0xf2, 0x00, 0x11, 0x00, 0x00}));  // RFC 7692 §7.2.3.2
  Inflater i(channel(15, false));
  CHECK(inflateWhole(i, first) == "Hello");
  CHECK(inflateWhole(i, second) == "Hello");
  // An empty message between messages keeps the shared window intact.
  CHECK(compressWhole(d, "") == bytes({0x00}));
  CHECK(inflateWhole(i, bytes({0x00})).empty());
  CHECK(inflateWhole(i, compressWhole(d, "Hello")) == "Hello");
}

TEST_CASE("deflate: no context takeover compresses every message alike", "[websocket]") {
  Deflater d(channel(15, true));
  const std::string a = compressWhole(d, "Hello");
  const std::string b = compressWhole(d, "Hello");
  CHECK(a == bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}));
  CHECK(a == b);
  // A fresh inflater per message decodes each: nothing depends on the previous message.
  Inflater i1(channel(15, true));
  Inflater i2(channel(15, true));
  CHECK(inflateWhole(i1, a) == "Hello");
  CHECK(inflateWhole(i2, b) == "Hello");
  CHECK(inflateWhole(i1, b) == "Hello");
}

TEST_CASE("deflate: round trips, streamed in chunks, every window size", "[websocket]") {
  const uint8_t bits = static_cast<uint8_t>(GENERATE(8, 9, 10, 12, 15));
  const bool no_context = GENERATE(false, true);
  const size_t chunk = GENERATE(1, 7, 1000, 100000);
  CAPTURE(bits, no_context, chunk);
  Deflater d(channel(bits, no_context));
  Inflater i(channel(bits, no_context));
  for (unsigned m = 0; m < 6; ++m) {
    const std::string msg = sample(m == 5 ? 70000 : 300 * m + (m == 0 ? 0 : 17), m % 3);
    // Compress in chunks; the last call carries end_of_message.
    std::string compressed;
    size_t pos = 0;
    do {
      const size_t n = std::min(chunk, msg.size() - pos);
      const bool end = pos + n == msg.size();
      REQUIRE(d.compress(msg.data() + pos, n, end, &compressed) == CodecStatus::Ok);
      pos += n;
    } while (pos < msg.size());
    if (msg.empty()) {
      CHECK(compressed == bytes({0x00}));
    }
    // Inflate in chunks too.
    std::string out;
    pos = 0;
    do {
      const size_t n = std::min(chunk, compressed.size() - pos);
      const bool end = pos + n == compressed.size();
      REQUIRE(i.decompress(compressed.data() + pos, n, end, 1 << 20, &out) == CodecStatus::Ok);
      pos += n;
    } while (pos < compressed.size());
    CHECK(out == msg);
  }
}

TEST_CASE("deflate: window 8 output decodes with a 256-byte window", "[websocket]") {
  // zlib compresses with 9 bits when asked for 8; its matches stay within 250 bytes, which a
  // peer limited to 8 bits (here: our Inflater with 8) must be able to decode.
  Deflater d(channel(8, false));
  Inflater i(channel(8, false));
  for (unsigned seed = 0; seed < 5; ++seed) {
    const std::string msg = sample(50000, seed);
    CHECK(inflateWhole(i, compressWhole(d, msg)) == msg);
  }
}

TEST_CASE("deflate: an inflate bomb stops at the cap", "[websocket]") {
  Deflater d(channel(15, false));
  const std::string zeros(10 * 1024 * 1024, '\0');
  const std::string bomb = compressWhole(d, zeros);
  CHECK(bomb.size() < 20 * 1024);
  SECTION("over the cap") {
    Inflater i(channel(15, false));
    std::string out;
    CHECK(i.decompress(bomb.data(), bomb.size(), true, 1024 * 1024, &out) == CodecStatus::TooBig);
    CHECK(out.size() <= 1024 * 1024 + 1);
    // The inflater stays failed.
    CHECK(i.decompress("x", 1, true, 1024, &out) != CodecStatus::Ok);
  }
  SECTION("cap counted across the calls of one message") {
    Inflater i(channel(15, false));
    std::string out;
    const size_t half = bomb.size() / 2;
    CodecStatus st = i.decompress(bomb.data(), half, false, zeros.size() - 1, &out);
    if (st == CodecStatus::Ok) {
      st = i.decompress(bomb.data() + half, bomb.size() - half, true, zeros.size() - 1, &out);
    }
    CHECK(st == CodecStatus::TooBig);
  }
  SECTION("exactly at the cap") {
    Inflater i(channel(15, false));
    std::string out;
    CHECK(i.decompress(bomb.data(), bomb.size(), true, zeros.size(), &out) == CodecStatus::Ok);
    CHECK(out == zeros);
  }
}

TEST_CASE("deflate: corrupt data", "[websocket]") {
  Inflater i(channel(15, false));
  std::string out;
  const std::string junk = bytes({0xff, 0xff, 0xff, 0xff});
  CHECK(i.decompress(junk.data(), junk.size(), true, 1024, &out) == CodecStatus::DataError);
  CHECK(std::string(codecStatusName(CodecStatus::DataError)) == "invalid compressed data");
}

TEST_CASE("deflate: lazy state, memory accounting and release", "[websocket]") {
  SECTION("deflater") {
    const bool no_context = GENERATE(false, true);
    Deflater::Options opts;
    opts.mem_level = 8;
    Deflater d(channel(15, no_context), opts);
    CHECK(d.memoryBytes() == 0);
    std::string out;
    REQUIRE(d.compress("abc", 3, false, &out) == CodecStatus::Ok);
    CHECK(d.memoryBytes() > 200 * 1024);
    CHECK(d.memoryBytes() <= Deflater::estimateMemory(channel(15, no_context), opts));
    CHECK_FALSE(d.release());  // mid-message: kept
    REQUIRE(d.compress("def", 3, true, &out) == CodecStatus::Ok);
    CHECK(d.release() == no_context);
    CHECK((d.memoryBytes() == 0) == no_context);
    // Works again after a release.
    std::string again;
    REQUIRE(d.compress("Hello", 5, true, &again) == CodecStatus::Ok);
    if (no_context) {
      CHECK(again == bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}));
    }
  }
  SECTION("small windows use less") {
    Deflater::Options opts;
    opts.mem_level = 1;
    Deflater d(channel(9, true), opts);
    std::string out;
    REQUIRE(d.compress("abc", 3, true, &out) == CodecStatus::Ok);
    CHECK(d.memoryBytes() < 16 * 1024);
    CHECK(d.memoryBytes() <= Deflater::estimateMemory(channel(9, true), opts));
  }
  SECTION("inflater") {
    const bool no_context = GENERATE(false, true);
    Inflater i(channel(15, no_context));
    CHECK(i.memoryBytes() == 0);
    Deflater d(channel(15, no_context));
    const std::string msg = sample(40000, 1);
    CHECK(inflateWhole(i, compressWhole(d, msg)) == msg);
    CHECK(i.memoryBytes() > 32 * 1024);  // the window
    CHECK(i.memoryBytes() <= Inflater::estimateMemory(channel(15, no_context)));
    CHECK(i.release() == no_context);
    CHECK((i.memoryBytes() == 0) == no_context);
    CHECK(inflateWhole(i, compressWhole(d, msg)) == msg);
  }
}

}  // namespace
}  // namespace upgate
