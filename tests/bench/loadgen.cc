// loadgen: the benchmark's WebSocket load generator (tests/bench/).
//
// One thread, one libuv loop, a WebSocket client written for this benchmark: client handshake
// with a random Sec-WebSocket-Key and a checked Sec-WebSocket-Accept, masked frames with 7, 16
// and 64-bit lengths, a streaming parser for the server's unmasked frames (any split of reads).
// Connections are spread over several loopback source addresses (127.0.0.1, .2, ...), each bound
// with IP_BIND_ADDRESS_NO_PORT so the kernel picks the port at connect time per 4-tuple.
//
// Modes
//   echo     C connections, each keeping D messages of S bytes in flight; after a warmup, counts
//            echoed messages for T seconds: msgs/s, MB/s (payload received, 10^6 bytes) and
//            round-trip latency p50/p99/p99.9 from a send timestamp carried in the payload.
//   connect  C concurrent slots, each looping: fresh TCP connection, upgrade, check the 101,
//            send a close frame, wait for the server's close and FIN, next. Handshakes/s counts
//            checked 101s in the measured window; latency is connect start to checked 101.
//            With --count N, exactly N sessions are opened and closed, then the run ends (for
//            instruction and syscall counts per handshake, which need a fixed amount of work).
//   idle     opens N sessions (at most --open-concurrency at a time), by default echoes one small
//            message on each (so every leg has carried data), prints a "ready" JSON line, then
//            holds them until SIGTERM/SIGINT/SIGUSR1 or --duration seconds, then closes them.
//   fanout   opens N subscriber sessions on a channel URL (opened as in idle mode, no message),
//            then publishes M messages at R per second, each by its own HTTP POST to
//            --publish-url (upgate's admin /publish/CHANNEL?binary=1, or an Nchan publisher
//            location), the payload carrying the send time and the message number. Reports
//            delivery latency over every subscriber x message pair (send time to receipt), the
//            deliveries lost (expected N x M minus received) and, with --watch, the gateway's
//            CPU time per delivery. Waits up to 5 s after the last publish for stragglers.
//
// TLS: echo, connect and idle also take wss:// URLs. The client runs OpenSSL over two memory
// BIOs on the same libuv connections: TLS 1.3 only unless --tls12, SNI "localhost" (--sni), and
// the server certificate is verified only with --ca FILE (a loopback benchmark needs no trust;
// the human line says which). One SSL_CTX per process, no session is ever offered for
// resumption, so every connect-mode cycle is fresh TCP + full TLS handshake + upgrade + close.
// fanout stays ws://.
//
// Output: one JSON line per run on stdout, one human-readable line on stderr.
// --watch PID[,PID...] adds the utime+stime those processes spent in the measured window, and
// that CPU time per echoed message (or per handshake); --watch-echo does the same for the
// upstream echo server, reported separately.
//
// Exit status: 0 when the run completed with traffic and without errors, 1 otherwise, 2 usage.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"

namespace {

using bench::base64;
using bench::lower;
using bench::trim;

template <typename T, typename U>
T* as(U* p) {
  return reinterpret_cast<T*>(p);
}

// ---- Options ----------------------------------------------------------------------------------

enum class Mode { Echo, Connect, Idle, Fanout };

struct Options {
  Mode mode = Mode::Echo;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path = "/";
  int conns = 100;
  int depth = 1;
  size_t size = 64;
  double duration = 10;
  double warmup = 2;
  int sources = 8;
  std::string source_base = "127.0.0.1";
  std::string label = "target";
  std::vector<int> watch, watch_echo;
  bool verify = false;
  int sessions = 1000;  // idle
  bool touch = true;    // idle: echo one message per session
  int open_concurrency = 256;
  double conn_timeout = 10;            // connect + handshake (+ close) deadline per connection
  long count = 0;                      // connect: total sessions to run (0: as many as fit in T)
  int messages = 50;                   // fanout: messages to publish
  double rate = 10;                    // fanout: publishes per second
  std::string pub_host = "127.0.0.1";  // fanout: where to POST (from --publish-url)
  int pub_port = 0;
  std::string pub_target;  // fanout: request target of the POST
  std::string poll_host;   // fanout: serve the gateway's long-polls here (--serve-poll)
  int poll_port = 0;
  bool tls = false;  // wss:// URL
  std::string sni = "localhost";
  std::string ca;  // verify the server against this PEM bundle ("" = no verification)
  int tls_min = TLS1_3_VERSION;
};

Options opt;

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "loadgen: %s (see loadgen --help)\n", why);
  std::exit(2);
}

// "HOST:PORT" -> host and port; false if there is no ":PORT".
bool splitHostPort(const std::string& hostport, std::string& host, int& port) {
  size_t colon = hostport.rfind(':');
  if (colon == std::string::npos) return false;
  host = hostport.substr(0, colon);
  port = std::atoi(hostport.c_str() + colon + 1);
  return port > 0 && port < 65536;
}

// "SCHEME" + "HOST:PORT/PATH" -> host, port and path (default "/"); "" or why not.
std::string splitUrl(const std::string& url, const std::string& scheme, std::string& host,
                     int& port, std::string& path) {
  if (url.compare(0, scheme.size(), scheme) != 0) return "expected a " + scheme + " URL";
  std::string rest = url.substr(scheme.size());
  size_t slash = rest.find('/');
  path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (!splitHostPort(rest.substr(0, slash), host, port)) return "the URL needs HOST:PORT";
  return "";
}

void parseArgs(int argc, char** argv) {
  CLI::App app{
      "loadgen: the benchmark's load generator (ws:// and wss:// in echo, connect and "
      "idle modes; fanout is ws:// only)"};
  app.get_formatter()->column_width(32);
  std::string mode, url, publish_url, serve_poll;
  app.add_option("mode", mode, "echo, connect, idle or fanout")
      ->required()
      ->check(CLI::IsMember({"echo", "connect", "idle", "fanout"}));
  app.add_option("--url", url, "ws[s]://IPV4:PORT/PATH of the target")->required();
  app.add_option("-c,--connections", opt.conns, "echo/connect: connections (slots)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("-d,--depth", opt.depth, "echo: messages in flight per connection")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app.add_option("-s,--size", opt.size, "echo: payload bytes per message")
      ->check(CLI::Range(size_t{8}, size_t{1} << 30))
      ->capture_default_str();
  app.add_option("-t,--duration", opt.duration, "measured seconds (idle: hold time)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("-w,--warmup", opt.warmup, "seconds before measuring")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("-n,--sessions", opt.sessions, "idle: sessions to open; fanout: subscribers")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  app.add_flag_function(
      "--no-touch", [](int64_t) { opt.touch = false; },
      "idle: do not echo a message on each session");
  app.add_option("--open-concurrency", opt.open_concurrency, "connections being opened at once")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--sources", opt.sources, "loopback source addresses to spread over")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--source-base", opt.source_base, "first source address")->capture_default_str();
  app.add_option("--label", opt.label, "name of the target in the output")->capture_default_str();
  app.add_option("--watch", opt.watch, "comma-separated PIDs whose CPU time to report (the proxy)")
      ->delimiter(',');
  app.add_option("--watch-echo", opt.watch_echo, "the same, reported separately (the upstream)")
      ->delimiter(',');
  app.add_flag("--verify", opt.verify, "check every echoed byte and message length");
  app.add_option("--conn-timeout", opt.conn_timeout, "per-connection open/close deadline, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--count", opt.count,
                 "connect: run exactly N sessions, then stop (the duration still bounds it)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--publish-url", publish_url,
                 "fanout: http://IPV4:PORT/TARGET to POST each message to");
  app.add_option("--messages", opt.messages, "fanout: messages to publish")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  app.add_option("--rate", opt.rate, "fanout: publishes per second")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--serve-poll", serve_poll,
                 "fanout: IPV4:PORT: be the legacy long-poll app instead of POSTing, and answer "
                 "the gateway's held poll with each message (stamped when the answer is "
                 "written, cursor in X-Cursor)");
  app.add_option("--sni", opt.sni, "wss: server name sent in the ClientHello")
      ->capture_default_str();
  app.add_option("--ca", opt.ca,
                 "wss: verify the server's certificate (chain and --sni name) against this PEM "
                 "bundle; without it nothing is verified");
  app.add_flag_function(
      "--tls12", [](int64_t) { opt.tls_min = TLS1_2_VERSION; },
      "wss: also offer TLS 1.2 (default: TLS 1.3 only)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e) == 0 ? 0 : 2);  // --help: the text and 0; else CLI11's message
  }

  opt.mode = mode == "echo"      ? Mode::Echo
             : mode == "connect" ? Mode::Connect
             : mode == "idle"    ? Mode::Idle
                                 : Mode::Fanout;
  opt.tls = url.compare(0, 6, "wss://") == 0;
  if (std::string why = splitUrl(url, opt.tls ? "wss://" : "ws://", opt.host, opt.port, opt.path);
      !why.empty())
    usage(("--url: " + why).c_str());
  if (!publish_url.empty()) {
    std::string why = splitUrl(publish_url, "http://", opt.pub_host, opt.pub_port, opt.pub_target);
    if (!why.empty()) usage(("--publish-url: " + why).c_str());
  }
  if (!serve_poll.empty() && !splitHostPort(serve_poll, opt.poll_host, opt.poll_port))
    usage("--serve-poll needs IPV4:PORT");
  if (opt.mode == Mode::Fanout && (opt.pub_port == 0) == (opt.poll_port == 0))
    usage("fanout needs one of --publish-url and --serve-poll");
  if (opt.mode == Mode::Fanout && opt.tls) usage("fanout speaks ws:// only");
}

// ---- Small tools ------------------------------------------------------------------------------

uint64_t g_rng = 0x9E3779B97F4A7C15ull;
uint32_t rnd32() {  // xorshift64*: mask keys only, seeded from the OS
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return static_cast<uint32_t>((g_rng * 0x2545F4914F6CDD1Dull) >> 32);
}

// dst[i] = src[i] ^ key[(pos + i) & 3]
void maskCopy(char* dst, const char* src, size_t n, const uint8_t key[4], size_t pos) {
  uint8_t rot[8];
  for (size_t i = 0; i < 8; ++i) rot[i] = key[(pos + i) & 3];
  uint64_t k;
  std::memcpy(&k, rot, 8);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, src + i, 8);
    v ^= k;
    std::memcpy(dst + i, &v, 8);
  }
  for (; i < n; ++i) dst[i] = static_cast<char>(static_cast<uint8_t>(src[i]) ^ rot[i & 7]);
}

// utime + stime, in seconds, summed over pids (the whole thread group of each).
double cpuSeconds(const std::vector<int>& pids) {
  static const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  double total = 0;
  for (int pid : pids) {
    std::string path = "/proc/" + std::to_string(pid) + "/stat";
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) continue;
    char buf[1024];
    size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char* rp = std::strrchr(buf, ')');
    if (rp == nullptr) continue;
    // Fields after the command: 3 = state ... 14 = utime, 15 = stime (clock ticks).
    unsigned long long ut = 0, st = 0;
    const char* p = rp + 1;
    for (int i = 3; i <= 15 && *p; ++i) {
      while (*p == ' ') ++p;
      if (i == 14) ut = std::strtoull(p, nullptr, 10);
      if (i == 15) st = std::strtoull(p, nullptr, 10);
      while (*p && *p != ' ') ++p;
    }
    total += static_cast<double>(ut + st) / tick;
  }
  return total;
}

// Per-CPU busy and total jiffies from /proc/stat (busy = all but idle and iowait). Shows whether
// a core saturated, including softirq time that per-process counters may not carry.
struct CoreTimes {
  std::vector<unsigned long long> busy, total;
};

CoreTimes readCores() {
  CoreTimes t;
  FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return t;
  char line[512];
  while (std::fgets(line, sizeof(line), f)) {
    if (std::strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9') continue;
    const char* p = line + 3;
    while (*p && *p != ' ') ++p;
    unsigned long long v[10] = {};
    char* end = nullptr;
    for (int i = 0; i < 10; ++i) {
      v[i] = std::strtoull(p, &end, 10);
      if (end == p) break;
      p = end;
    }
    unsigned long long total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    t.total.push_back(total);
    t.busy.push_back(total - v[3] - v[4]);
  }
  std::fclose(f);
  return t;
}

double selfCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Log-linear latency histogram in nanoseconds: exact below 128, then 64 sub-buckets per power of
// two (under 1.6 % error), up to 2^40 ns.
class Histogram {
 public:
  Histogram() : counts_(kBuckets, 0) {}
  void add(uint64_t ns) {
    ++counts_[index(ns)];
    ++total_;
    if (ns > max_) max_ = ns;
  }
  void reset() {
    std::fill(counts_.begin(), counts_.end(), 0);
    total_ = 0;
    max_ = 0;
  }
  uint64_t total() const { return total_; }
  uint64_t max() const { return max_; }
  // Value (ns) at quantile q, as the upper edge of its bucket.
  double quantile(double q) const {
    if (total_ == 0) return 0;
    uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total_)));
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return static_cast<double>(std::min(upper(i), max_));
    }
    return static_cast<double>(max_);
  }

 private:
  static constexpr size_t kBuckets = 128 + 34 * 64;
  static size_t index(uint64_t v) {
    if (v < 128) return static_cast<size_t>(v);
    int e = 63 - __builtin_clzll(v);  // >= 7
    if (e > 40) return kBuckets - 1;
    size_t sub = static_cast<size_t>((v >> (e - 6)) & 63);
    return 128 + static_cast<size_t>(e - 7) * 64 + sub;
  }
  static uint64_t upper(size_t i) {
    if (i < 128) return i;
    size_t e = (i - 128) / 64 + 7;
    uint64_t sub = (i - 128) % 64;
    return ((64 + sub + 1) << (e - 6)) - 1;
  }
  std::vector<uint64_t> counts_;
  uint64_t total_ = 0;
  uint64_t max_ = 0;
};

// ---- Run state --------------------------------------------------------------------------------

enum class Phase { Connecting, Warmup, Measure, Done };

struct Stats {
  uint64_t msgs = 0, bytes = 0, handshakes = 0;
};

uv_loop_t* g_loop;
Phase g_phase = Phase::Connecting;
Stats g_stats;          // counted in the measured window only
uint64_t g_errors = 0;  // whole run
uint64_t g_established = 0;
uint64_t g_failed = 0;
Histogram g_hist;
std::vector<char> g_pattern;  // the payload's unmasked bytes (first 8 replaced by a timestamp)
std::vector<sockaddr_in> g_sources;
sockaddr_in g_target{};
std::string g_request_prefix;  // the upgrade request up to the key header
char g_read_buffer[256 * 1024];
uint64_t g_t0 = 0, g_t1 = 0;
double g_cpu0 = 0, g_cpu1 = 0, g_echo_cpu0 = 0, g_echo_cpu1 = 0, g_self_cpu0 = 0, g_self_cpu1 = 0;
double g_ours0 = 0,
       g_ours1 = 0;  // CPU of every process of the run (watched, echo, self), no duplicates
int g_error_lines = 0;
uv_timer_t g_phase_timer, g_sweep_timer, g_hard_timer;
uv_signal_t g_sig[3];
bool g_idle_ready_printed = false;
int g_exit_code = 0;

// Idle and fanout sessions are opened the same way: N at most --open-concurrency at a time.
bool opensLikeIdle() {
  return opt.mode == Mode::Idle || opt.mode == Mode::Fanout;
}

enum class ConnState { Connecting, Handshake, Open, Closing, Closed };

struct WriteReq {
  uv_write_t req;
  size_t len;
  char data[1];
};

struct Conn {
  uv_tcp_t tcp{};
  uv_connect_t connect_req{};
  ConnState st = ConnState::Connecting;
  size_t slot = 0;
  uint64_t started_ns = 0;
  uint64_t deadline_ns = 0;
  std::string accept;  // expected Sec-WebSocket-Accept
  std::string head;    // response head being read
  // Receive parser.
  uint8_t hdr[10];
  size_t hdr_have = 0;
  uint64_t left = 0;
  bool in_payload = false;
  bool ctrl = false;   // the frame being read is a control frame
  uint8_t opcode = 0;  // ... and this is its opcode
  bool fin = false;
  uint64_t msg_off = 0;
  uint8_t ts[8];
  std::string control;
  bool got_close = false;
  bool touched = false;
  int received = 0;  // fanout: messages delivered to this subscriber
  // Send side.
  std::vector<char> out;
  size_t queued = 0;
  int in_flight = 0;
  SSL* ssl = nullptr;  // wss: owns both memory BIOs; null on ws:// connections
};

std::vector<Conn*> g_conns;  // echo/idle: every connection; connect: one per slot (or null)
size_t g_next_source = 0;
int g_opening = 0;          // idle: connections not yet established
size_t g_next_to_open = 0;  // idle: next index to open
long g_started = 0;         // connect: connections started over the run

void logError(const char* what, const std::string& detail) {
  ++g_errors;
  if (g_error_lines < 10) {
    ++g_error_lines;
    std::fprintf(stderr, "loadgen: %s: %s\n", what, detail.c_str());
  }
}

void finishRun();
void tlsSend(Conn* c);
void fanoutDelivered(Conn* c, uint64_t latency_ns);
void startFanout();
void startConnection(size_t slot);
void openMoreIdle();
void checkAllEstablished();

void onClosed(uv_handle_t* h) {
  auto* c = static_cast<Conn*>(h->data);
  size_t slot = c->slot;
  bool replace = opt.mode == Mode::Connect && g_phase != Phase::Done;
  if (opt.count > 0 && g_started >= opt.count) replace = false;
  if (g_conns[slot] == c) g_conns[slot] = nullptr;
  if (c->ssl) SSL_free(c->ssl);
  delete c;
  if (replace) {
    startConnection(slot);
  } else if (opt.mode == Mode::Connect && opt.count > 0 && g_phase != Phase::Done &&
             std::all_of(g_conns.begin(), g_conns.end(), [](Conn* x) { return x == nullptr; })) {
    finishRun();  // the N sessions of --count are all done
  }
}

void closeConn(Conn* c) {
  if (c->st == ConnState::Closed) return;
  c->st = ConnState::Closed;
  uv_close(as<uv_handle_t>(&c->tcp), onClosed);
}

// A connection failed: count it; echo and idle modes do not replace it.
void failConn(Conn* c, const char* what, const std::string& detail) {
  if (c->st == ConnState::Closed) return;
  bool was_opening = c->st == ConnState::Connecting || c->st == ConnState::Handshake ||
                     (opensLikeIdle() && c->st == ConnState::Open && !c->touched);
  if (opt.mode != Mode::Connect || g_phase != Phase::Done) logError(what, detail);
  closeConn(c);
  if (opensLikeIdle() && was_opening) {
    ++g_failed;
    --g_opening;
    openMoreIdle();
    checkAllEstablished();
  } else if (opt.mode == Mode::Echo && g_phase == Phase::Connecting) {
    ++g_failed;
    checkAllEstablished();
  }
}

void onWrite(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* c = static_cast<Conn*>(req->data);
  c->queued -= w->len;
  std::free(w);
  if (status < 0 && status != UV_ECANCELED) failConn(c, "write", uv_strerror(status));
}

// Writes bytes to the socket at once when nothing is queued, the rest through uv_write (one
// allocation, only for what the socket did not take). False when the connection failed.
bool writeBytes(Conn* c, const char* data, size_t len) {
  size_t done = 0;
  if (c->queued == 0) {
    uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(len));
    int n = uv_try_write(as<uv_stream_t>(&c->tcp), &b, 1);
    if (n >= 0) {
      done = static_cast<size_t>(n);
    } else if (n != UV_EAGAIN) {
      failConn(c, "write", uv_strerror(n));
      return false;
    }
  }
  if (done < len) {
    size_t rest = len - done;
    auto* w = static_cast<WriteReq*>(std::malloc(offsetof(WriteReq, data) + rest));
    if (w == nullptr) std::abort();
    w->len = rest;
    std::memcpy(w->data, data + done, rest);
    w->req.data = c;
    uv_buf_t b = uv_buf_init(w->data, static_cast<unsigned>(rest));
    int rc = uv_write(&w->req, as<uv_stream_t>(&c->tcp), &b, 1, onWrite);
    if (rc != 0) {
      std::free(w);
      failConn(c, "write", uv_strerror(rc));
      return false;
    }
    c->queued += rest;
  }
  return true;
}

// Writes c->out on a ws:// connection.
void flushPlain(Conn* c) {
  if (c->out.empty() || c->st == ConnState::Closed) return;
  writeBytes(c, c->out.data(), c->out.size());
  c->out.clear();
}

// Writes c->out, through TLS on a wss:// connection (outside the read path, which knows).
void flush(Conn* c) {
  if (c->ssl)
    tlsSend(c);
  else
    flushPlain(c);
}

// Appends one masked frame. With `stamp`, the payload's first 8 bytes are the send time.
void appendFrame(Conn* c, uint8_t byte0, const char* payload, size_t n, bool stamp) {
  uint8_t hdr[14];
  size_t h = 0;
  hdr[h++] = byte0;
  if (n < 126) {
    hdr[h++] = static_cast<uint8_t>(0x80 | n);
  } else if (n < 65536) {
    hdr[h++] = 0x80 | 126;
    hdr[h++] = static_cast<uint8_t>(n >> 8);
    hdr[h++] = static_cast<uint8_t>(n);
  } else {
    hdr[h++] = 0x80 | 127;
    for (int i = 7; i >= 0; --i)
      hdr[h++] = static_cast<uint8_t>(static_cast<uint64_t>(n) >> (8 * i));
  }
  uint32_t k = rnd32();
  uint8_t key[4];
  std::memcpy(key, &k, 4);
  std::memcpy(hdr + h, key, 4);
  h += 4;
  size_t at = c->out.size();
  c->out.resize(at + h + n);
  char* dst = c->out.data() + at;
  std::memcpy(dst, hdr, h);
  maskCopy(dst + h, payload, n, key, 0);
  if (stamp) {
    uint64_t now = uv_hrtime();
    char ts[8];
    std::memcpy(ts, &now, 8);
    maskCopy(dst + h, ts, 8, key, 0);
  }
}

void sendMessage(Conn* c) {
  appendFrame(c, 0x82, g_pattern.data(), opt.size, true);
  ++c->in_flight;
}

void sendClose(Conn* c) {
  const char payload[2] = {static_cast<char>(0x03), static_cast<char>(0xE8)};  // 1000
  appendFrame(c, 0x88, payload, 2, false);
}

// ---- Receive ----------------------------------------------------------------------------------

// Payload size of the messages this run sends (idle mode's touch message is 16 bytes).
size_t sentSize() {
  return opt.mode == Mode::Idle ? 16 : opt.size;
}

void onMessage(Conn* c) {
  if (opt.verify && c->msg_off != sentSize()) {
    logError("verify", "echoed message of " + std::to_string(c->msg_off) + " bytes, sent " +
                           std::to_string(sentSize()));
  }
  uint64_t sent;
  std::memcpy(&sent, c->ts, 8);
  uint64_t now = uv_hrtime();
  --c->in_flight;
  if (opt.mode == Mode::Idle) {
    if (!c->touched) {
      c->touched = true;
      ++g_established;
      --g_opening;
      openMoreIdle();
      checkAllEstablished();
    }
    return;
  }
  if (opt.mode == Mode::Fanout) {
    if (sent != 0 && now > sent) fanoutDelivered(c, now - sent);
    return;
  }
  if (opt.mode != Mode::Echo) return;
  if (g_phase == Phase::Measure) {
    ++g_stats.msgs;
    g_stats.bytes += c->msg_off;
    g_hist.add(now - sent);
  }
  if (g_phase == Phase::Warmup || g_phase == Phase::Measure) sendMessage(c);
}

// Returns false when the connection was closed.
bool onControl(Conn* c) {
  if (c->opcode == 0x9) {  // ping
    appendFrame(c, 0x8A, c->control.data(), c->control.size(), false);
    return true;
  }
  if (c->opcode == 0x8) {
    c->got_close = true;
    if (c->st == ConnState::Closing) return true;  // our close answered: wait for the FIN
    if (opt.mode == Mode::Connect && g_phase == Phase::Done) {
      closeConn(c);
      return false;
    }
    failConn(c, "server closed", "close frame received on an open session");
    return false;
  }
  return true;
}

// Always inlined, as it was into onRead before wss:// gave it a second caller: the ws:// read
// path stays one function.
__attribute__((always_inline)) inline bool onFrames(Conn* c, const char* data, size_t len) {
  while (len > 0) {
    if (!c->in_payload) {
      size_t need = 2;
      if (c->hdr_have >= 2) {
        uint8_t l7 = c->hdr[1] & 0x7f;
        need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
      }
      while (c->hdr_have < need && len > 0) {
        c->hdr[c->hdr_have++] = static_cast<uint8_t>(*data++);
        --len;
        if (c->hdr_have == 2) {
          if (c->hdr[1] & 0x80) {
            failConn(c, "protocol", "masked frame from the server");
            return false;
          }
          uint8_t l7 = c->hdr[1] & 0x7f;
          need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
        }
      }
      if (c->hdr_have < need) return true;
      uint8_t l7 = c->hdr[1] & 0x7f;
      uint64_t plen = l7;
      if (l7 == 126) {
        plen = (uint64_t{c->hdr[2]} << 8) | c->hdr[3];
      } else if (l7 == 127) {
        plen = 0;
        for (int i = 0; i < 8; ++i) plen = (plen << 8) | c->hdr[2 + i];
      }
      c->hdr_have = 0;
      c->fin = (c->hdr[0] & 0x80) != 0;
      uint8_t op = c->hdr[0] & 0x0f;
      if (op >= 0x8) {
        if (plen > 125 || !c->fin) {
          failConn(c, "protocol", "bad control frame");
          return false;
        }
        c->control.clear();
      } else if (op != 0) {
        c->msg_off = 0;  // a new message (0 would continue the current one)
      }
      c->ctrl = op >= 0x8;
      if (c->ctrl) c->opcode = op;
      c->left = plen;
      c->in_payload = true;
    }
    size_t take = c->left < len ? static_cast<size_t>(c->left) : len;
    if (c->ctrl) {
      c->control.append(data, take);
    } else if (take > 0) {
      if (c->msg_off < 8) {
        size_t n = std::min<size_t>(8 - c->msg_off, take);
        std::memcpy(c->ts + c->msg_off, data, n);
      }
      if (opt.verify) {
        uint64_t from = std::max<uint64_t>(c->msg_off, 8);
        uint64_t to = c->msg_off + take;
        if (to > sentSize()) {
          logError("verify", "echoed message longer than sent");
        } else if (to > from && std::memcmp(data + (from - c->msg_off), g_pattern.data() + from,
                                            to - from) != 0) {
          logError("verify", "echoed payload differs from what was sent");
        }
      }
      c->msg_off += take;
    }
    data += take;
    len -= take;
    c->left -= take;
    if (c->left == 0) {
      c->in_payload = false;
      if (c->ctrl) {
        if (!onControl(c)) return false;
      } else if (c->fin) {
        onMessage(c);
        if (c->st == ConnState::Closed) return false;
      }
    }
  }
  return true;
}

void afterHandshake(Conn* c) {
  c->st = ConnState::Open;
  uint64_t now = uv_hrtime();
  switch (opt.mode) {
    case Mode::Echo:
      ++g_established;
      if (g_phase == Phase::Warmup || g_phase == Phase::Measure) {
        for (int i = 0; i < opt.depth; ++i) sendMessage(c);
      }
      checkAllEstablished();
      break;
    case Mode::Connect:
      if (g_phase == Phase::Measure) {
        ++g_stats.handshakes;
        g_hist.add(now - c->started_ns);
      }
      sendClose(c);
      c->st = ConnState::Closing;
      c->deadline_ns = now + static_cast<uint64_t>(opt.conn_timeout * 1e9);
      break;
    case Mode::Fanout:
      c->touched = true;
      ++g_established;
      --g_opening;
      openMoreIdle();
      checkAllEstablished();
      break;
    case Mode::Idle:
      if (opt.touch) {
        appendFrame(c, 0x82, g_pattern.data(), 16, true);
        ++c->in_flight;
        c->msg_off = 0;
      } else {
        c->touched = true;
        ++g_established;
        --g_opening;
        openMoreIdle();
        checkAllEstablished();
      }
      break;
  }
}

// Returns the number of bytes of data that belong to frames (after the head), or -1.
long onHandshakeData(Conn* c, const char* data, size_t len) {
  size_t old = c->head.size();
  c->head.append(data, len);
  size_t end = c->head.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (c->head.size() > 16384) failConn(c, "handshake", "response head too large");
    return -1;
  }
  std::string head = c->head.substr(0, end);
  size_t used = end + 4 - old;
  std::string().swap(c->head);
  if (head.compare(0, 13, "HTTP/1.1 101 ") != 0 && head != "HTTP/1.1 101") {
    failConn(c, "handshake", "expected 101, got: " + head.substr(0, head.find("\r\n")));
    return -1;
  }
  std::string upgrade, connection, accept;
  size_t pos = head.find("\r\n");
  while (pos != std::string::npos && pos < head.size()) {
    pos += 2;
    size_t eol = head.find("\r\n", pos);
    std::string line = head.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    pos = eol;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = lower(trim(line.substr(0, colon)));
    std::string value = trim(line.substr(colon + 1));
    if (name == "upgrade")
      upgrade = lower(value);
    else if (name == "connection")
      connection = lower(value);
    else if (name == "sec-websocket-accept")
      accept = value;
  }
  if (upgrade != "websocket" || connection.find("upgrade") == std::string::npos) {
    failConn(c, "handshake", "101 without Upgrade: websocket / Connection: upgrade");
    return -1;
  }
  if (accept != c->accept) {
    failConn(c, "handshake", "Sec-WebSocket-Accept mismatch: got '" + accept + "'");
    return -1;
  }
  std::string().swap(c->accept);
  afterHandshake(c);
  return static_cast<long>(used);
}

// The server ended the stream (TCP EOF, a TLS close_notify) or reading failed.
void onPeerEnd(Conn* c, ssize_t nread) {
  if (c->st == ConnState::Closing && nread == UV_EOF) {
    closeConn(c);  // the server finished first: clean end of a connect-mode cycle
  } else if (g_phase == Phase::Done) {
    closeConn(c);
  } else {
    failConn(
        c, "read",
        nread == UV_EOF ? "connection closed by the server" : uv_strerror(static_cast<int>(nread)));
  }
}

// Received plaintext: the 101 head while in Handshake, then frames. False when the connection
// was closed. Inlined for the same reason as onFrames.
__attribute__((always_inline)) inline bool onPlaintext(Conn* c, const char* data, size_t len) {
  if (c->st == ConnState::Handshake) {
    long used = onHandshakeData(c, data, len);
    if (used < 0) return false;
    data += used;
    len -= static_cast<size_t>(used);
    if (c->st == ConnState::Closed) return false;
  }
  return len == 0 || onFrames(c, data, len);
}

// ---- TLS (wss://) -----------------------------------------------------------------------------

SSL_CTX* g_ssl_ctx = nullptr;  // one per process, null for ws://
char g_tls_out[64 * 1024];     // ciphertext on its way from wbio to the socket
std::string g_tls_desc;        // "TLSv1.3 TLS_AES_256_GCM_SHA384", from the first handshake

// Drains OpenSSL's error queue into one line, so the next call starts clean.
std::string tlsErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error queued" : out;
}

void tlsFail(Conn* c, const char* step, int ssl_error) {
  std::string detail = std::string(step) + ": " + tlsErrors();
  if (ssl_error == SSL_ERROR_SSL) {
    long v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK)
      detail += " (certificate: " + std::string(X509_verify_cert_error_string(v)) + ")";
  }
  failConn(c, "tls", detail);
}

void makeTlsContext() {
  g_ssl_ctx = SSL_CTX_new(TLS_client_method());
  if (g_ssl_ctx == nullptr) {
    std::fprintf(stderr, "loadgen: SSL_CTX_new: %s\n", tlsErrors().c_str());
    std::exit(2);
  }
  SSL_CTX_set_min_proto_version(g_ssl_ctx, opt.tls_min);
  SSL_CTX_set_session_cache_mode(g_ssl_ctx, SSL_SESS_CACHE_OFF);  // never resume
  if (!opt.ca.empty()) {
    if (SSL_CTX_load_verify_locations(g_ssl_ctx, opt.ca.c_str(), nullptr) != 1) {
      std::fprintf(stderr, "loadgen: --ca %s: %s\n", opt.ca.c_str(), tlsErrors().c_str());
      std::exit(2);
    }
    SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_NONE, nullptr);
  }
}

// " over TLSv1.3 TLS_AES_256_GCM_SHA384, certificate not verified" (empty for ws://).
std::string tlsNote() {
  if (!opt.tls) return "";
  return " over " +
         (g_tls_desc.empty() ? std::string("TLS (no handshake completed)") : g_tls_desc) +
         (opt.ca.empty() ? ", server certificate NOT verified" : ", server certificate verified");
}

// ,"tls":"TLSv1.3 ...","tls_verified":false (empty for ws://).
std::string tlsJson() {
  if (!opt.tls) return "";
  return ",\"tls\":\"" + g_tls_desc + "\",\"tls_verified\":" + (opt.ca.empty() ? "false" : "true");
}

// Plaintext in c->out through SSL_write (once the handshake is done), then whatever ciphertext
// wbio holds (handshake messages, records) to the socket.
void tlsSend(Conn* c) {
  if (c->st == ConnState::Closed) return;
  if (!c->out.empty() && SSL_is_init_finished(c->ssl)) {
    int n = SSL_write(c->ssl, c->out.data(), static_cast<int>(c->out.size()));
    if (n <= 0) {
      c->out.clear();
      tlsFail(c, "SSL_write", SSL_get_error(c->ssl, n));
      return;
    }
    c->out.clear();  // a memory BIO takes everything: no partial writes
  }
  BIO* wbio = SSL_get_wbio(c->ssl);
  size_t pending;
  while ((pending = BIO_ctrl_pending(wbio)) > 0) {
    int n = BIO_read(wbio, g_tls_out, static_cast<int>(std::min(pending, sizeof(g_tls_out))));
    if (n <= 0) break;
    if (!writeBytes(c, g_tls_out, static_cast<size_t>(n))) return;
  }
}

// TCP is up: a fresh SSL (no session to resume), the ClientHello out. The upgrade request
// waits in c->out until the handshake completes.
void tlsStart(Conn* c) {
  c->ssl = SSL_new(g_ssl_ctx);
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (c->ssl == nullptr || rbio == nullptr || wbio == nullptr) std::abort();
  SSL_set_bio(c->ssl, rbio, wbio);
  SSL_set_connect_state(c->ssl);
  // SSL_set_tlsext_host_name() without its C cast (-Wold-style-cast).
  SSL_ctrl(c->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
           const_cast<char*>(opt.sni.c_str()));
  if (!opt.ca.empty()) SSL_set1_host(c->ssl, opt.sni.c_str());
  // Idle sessions keep no record buffers; elsewhere they stay, so messages allocate nothing.
  if (opt.mode == Mode::Idle) SSL_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
  int r = SSL_do_handshake(c->ssl);
  int e = SSL_get_error(c->ssl, r);
  if (e != SSL_ERROR_WANT_READ) {
    tlsFail(c, "handshake", e);
    return;
  }
  tlsSend(c);
}

// Ciphertext from the socket: into rbio, the handshake advanced, then every plaintext record
// parsed; replies (echoes, close frames, the upgrade request) go out once, at the end.
void tlsOnCiphertext(Conn* c, const char* data, size_t len) {
  BIO_write(SSL_get_rbio(c->ssl), data, static_cast<int>(len));  // a memory BIO takes all
  if (!SSL_is_init_finished(c->ssl)) {
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ)
        tlsSend(c);
      else
        tlsFail(c, "handshake", e);
      return;
    }
    if (g_tls_desc.empty())
      g_tls_desc = std::string(SSL_get_version(c->ssl)) + " " + SSL_get_cipher_name(c->ssl);
  }
  for (;;) {
    // data has been copied into rbio: the read buffer is free for the plaintext.
    int n = SSL_read(c->ssl, g_read_buffer, sizeof(g_read_buffer));
    if (n > 0) {
      if (!onPlaintext(c, g_read_buffer, static_cast<size_t>(n))) return;
      continue;
    }
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_WANT_READ) break;  // also after post-handshake messages (tickets)
    if (e == SSL_ERROR_ZERO_RETURN) {     // close_notify: the server's end of the stream
      onPeerEnd(c, UV_EOF);
      return;
    }
    tlsFail(c, "SSL_read", e);
    return;
  }
  tlsSend(c);
}

// ---- Connections ------------------------------------------------------------------------------

void onAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  *buf = uv_buf_init(g_read_buffer, sizeof(g_read_buffer));
}

void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* c = static_cast<Conn*>(s->data);
  if (nread == 0 || c->st == ConnState::Closed) return;
  if (nread < 0) {
    onPeerEnd(c, nread);
    return;
  }
  if (c->ssl) {
    tlsOnCiphertext(c, g_read_buffer, static_cast<size_t>(nread));
    return;
  }
  if (!onPlaintext(c, g_read_buffer, static_cast<size_t>(nread))) return;
  flushPlain(c);
}

void onConnect(uv_connect_t* req, int status) {
  auto* c = static_cast<Conn*>(req->data);
  if (c->st == ConnState::Closed) return;
  if (status < 0) {
    failConn(c, "connect", uv_strerror(status));
    return;
  }
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof(raw)) != 1) std::abort();
  std::string key = base64(raw, sizeof(raw));
  c->accept = bench::websocketAccept(key);
  std::string req_text = g_request_prefix + key + "\r\n\r\n";
  c->out.assign(req_text.begin(), req_text.end());
  c->st = ConnState::Handshake;
  int rc = uv_read_start(as<uv_stream_t>(&c->tcp), onAlloc, onRead);
  if (rc != 0) {
    failConn(c, "read", uv_strerror(rc));
    return;
  }
  if (g_ssl_ctx)
    tlsStart(c);
  else
    flushPlain(c);
}

// Opens a connection into g_conns[slot].
void startConnection(size_t slot) {
  auto* c = new Conn();
  ++g_started;
  c->slot = slot;
  g_conns[slot] = c;
  c->started_ns = uv_hrtime();
  c->deadline_ns = c->started_ns + static_cast<uint64_t>(opt.conn_timeout * 1e9);
  c->tcp.data = c;
  c->connect_req.data = c;
  const sockaddr_in& src = g_sources[g_next_source++ % g_sources.size()];
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  int rc = 0;
  if (fd < 0) rc = -errno;
  if (rc == 0 && ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0)
    rc = -errno;
  if (rc == 0 && ::bind(fd, as<const sockaddr>(&src), sizeof(src)) != 0) rc = -errno;
  uv_tcp_init(g_loop, &c->tcp);
  if (rc == 0) {
    rc = uv_tcp_open(&c->tcp, fd);
    if (rc == 0) fd = -1;
  }
  if (fd >= 0) ::close(fd);
  if (rc == 0) uv_tcp_nodelay(&c->tcp, 1);
  if (rc == 0)
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, as<const sockaddr>(&g_target), onConnect);
  if (rc != 0) {
    if (opensLikeIdle()) ++g_opening;  // failConn balances it
    failConn(c, "connect", uv_strerror(rc));
    return;
  }
  if (opensLikeIdle()) ++g_opening;
}

// ---- Phases -----------------------------------------------------------------------------------

CoreTimes g_cores0, g_cores1;

void readCpu(double& watched, double& echo, double& self) {
  (g_phase == Phase::Done ? g_cores1 : g_cores0) = readCores();
  watched = cpuSeconds(opt.watch);
  echo = cpuSeconds(opt.watch_echo);
  self = selfCpuSeconds();
  std::vector<int> all = opt.watch;
  for (int pid : opt.watch_echo) {
    if (std::find(all.begin(), all.end(), pid) == all.end()) all.push_back(pid);
  }
  (g_phase == Phase::Done ? g_ours1 : g_ours0) = cpuSeconds(all) + self;
}

void onMeasureEnd(uv_timer_t*) {
  finishRun();
}

void beginMeasure() {
  g_phase = Phase::Measure;
  g_stats = Stats{};
  g_hist.reset();
  g_t0 = uv_hrtime();
  readCpu(g_cpu0, g_echo_cpu0, g_self_cpu0);
  uv_timer_start(&g_phase_timer, onMeasureEnd, static_cast<uint64_t>(opt.duration * 1000), 0);
}

void onWarmupEnd(uv_timer_t*) {
  beginMeasure();
}

void beginWarmup() {
  g_phase = Phase::Warmup;
  if (opt.mode == Mode::Echo) {
    for (Conn* c : g_conns) {
      if (c && c->st == ConnState::Open) {
        for (int i = 0; i < opt.depth; ++i) sendMessage(c);
        flush(c);
      }
    }
  }
  if (opt.warmup > 0) {
    uv_timer_start(&g_phase_timer, onWarmupEnd, static_cast<uint64_t>(opt.warmup * 1000), 0);
  } else {
    beginMeasure();
  }
}

void printIdleLine(const char* event) {
  std::printf(
      "{\"mode\":\"idle\",\"event\":\"%s\",\"label\":\"%s\",\"sessions\":%d,\"established\":%llu,"
      "\"failed\":%llu,\"errors\":%llu,\"touch\":%s%s}\n",
      event, opt.label.c_str(), opt.sessions, static_cast<unsigned long long>(g_established),
      static_cast<unsigned long long>(g_failed), static_cast<unsigned long long>(g_errors),
      opt.touch ? "true" : "false", tlsJson().c_str());
  std::fflush(stdout);
}

void onHoldEnd(uv_timer_t*) {
  finishRun();
}

// Echo: all connections are up (or failed): start. Idle: all sessions are up: say so, hold.
void checkAllEstablished() {
  if (g_phase != Phase::Connecting) return;
  if (opt.mode == Mode::Echo) {
    if (g_established + g_failed < static_cast<uint64_t>(opt.conns)) return;
    if (g_established == 0) {
      finishRun();
      return;
    }
    beginWarmup();
  } else if (opt.mode == Mode::Fanout) {
    if (g_established + g_failed < static_cast<uint64_t>(opt.sessions)) return;
    startFanout();
  } else if (opt.mode == Mode::Idle) {
    if (g_established + g_failed < static_cast<uint64_t>(opt.sessions)) return;
    g_phase = Phase::Measure;
    g_idle_ready_printed = true;
    printIdleLine("ready");
    std::fprintf(stderr, "[%s] idle%s: %llu sessions open (%llu failed); holding up to %.0f s\n",
                 opt.label.c_str(), tlsNote().c_str(),
                 static_cast<unsigned long long>(g_established),
                 static_cast<unsigned long long>(g_failed), opt.duration);
    uv_timer_start(&g_phase_timer, onHoldEnd, static_cast<uint64_t>(opt.duration * 1000), 0);
  }
}

void openMoreIdle() {
  if (!opensLikeIdle() || g_phase != Phase::Connecting) return;
  while (g_opening < opt.open_concurrency && g_next_to_open < static_cast<size_t>(opt.sessions)) {
    startConnection(g_next_to_open++);
  }
}

void onSweep(uv_timer_t*) {
  uint64_t now = uv_hrtime();
  for (Conn* c : g_conns) {
    if (c == nullptr || c->st == ConnState::Closed) continue;
    bool opening = c->st == ConnState::Connecting || c->st == ConnState::Handshake ||
                   c->st == ConnState::Closing || (opensLikeIdle() && !c->touched);
    if (opening && now > c->deadline_ns)
      failConn(c, "timeout", "connection not opened/closed in time");
  }
}

void onClosedCountdown(uv_handle_t*) {}

// Share of the machine's CPU time (all cores) spent over the measured window by processes that
// are not part of this run: other jobs on a shared machine. 0.05 = 5 % of all cores.
double foreignShare(double secs) {
  static const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  size_t n = std::min(g_cores0.busy.size(), g_cores1.busy.size());
  if (n == 0 || secs <= 0) return 0;
  double busy = 0;
  for (size_t i = 0; i < n; ++i)
    busy += static_cast<double>(g_cores1.busy[i] - g_cores0.busy[i]) / tick;
  double foreign = busy - (g_ours1 - g_ours0);
  return foreign > 0 ? foreign / (secs * static_cast<double>(n)) : 0;
}

// "[0.98,0.45]": busy share of each CPU over the measured window.
std::string coreBusy(bool flat = false) {
  std::string out = flat ? "" : "[";
  size_t n = std::min(g_cores0.total.size(), g_cores1.total.size());
  for (size_t i = 0; i < n; ++i) {
    double total = static_cast<double>(g_cores1.total[i] - g_cores0.total[i]);
    double busy = static_cast<double>(g_cores1.busy[i] - g_cores0.busy[i]);
    char buf[400];
    double share = total > 0 ? busy / total : 0.0;
    if (flat) {
      std::snprintf(buf, sizeof(buf), ",\"cpu%zu_busy\":%.3f", i, share);
    } else {
      std::snprintf(buf, sizeof(buf), "%s%.2f", i ? "," : "", share);
    }
    out += buf;
  }
  return flat ? out : out + "]";
}

// ---- Fan-out: publishing ----------------------------------------------------------------------

// One publish: a fresh HTTP/1.1 connection, one POST with Connection: close, the answer read to
// EOF (upgate's admin API closes after each answer).
struct Pub {
  uv_tcp_t tcp{};
  uv_connect_t connect_req{};
  uv_write_t write_req{};
  std::string out, in;
  uint64_t seq = 0;
};

sockaddr_in g_pub_addr{};
std::vector<Pub*> g_pubs;  // in flight
int g_published = 0, g_pub_done = 0;
uint64_t g_pub_errors = 0, g_fan_expected = 0;

void maybeFinishFanout() {
  if (g_phase != Phase::Measure || g_pub_done < opt.messages) return;
  if (g_stats.msgs >= g_fan_expected) finishRun();
}

void fanoutDelivered(Conn* c, uint64_t latency_ns) {
  if (g_phase != Phase::Measure) return;
  ++c->received;
  ++g_stats.msgs;
  g_hist.add(latency_ns);
  maybeFinishFanout();
}

void onPubClosed(uv_handle_t* h) {
  auto* p = static_cast<Pub*>(h->data);
  g_pubs.erase(std::find(g_pubs.begin(), g_pubs.end(), p));
  delete p;
  ++g_pub_done;
  maybeFinishFanout();
}

void endPub(Pub* p, const char* error) {
  if (uv_is_closing(as<uv_handle_t>(&p->tcp))) return;
  if (error) {
    ++g_pub_errors;
    logError("publish", error);
  }
  uv_close(as<uv_handle_t>(&p->tcp), onPubClosed);
}

void onPubRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* p = static_cast<Pub*>(s->data);
  if (nread > 0) {
    if (p->in.size() < 4096) p->in.append(g_read_buffer, static_cast<size_t>(nread));
    return;
  }
  if (nread == 0) return;
  // Any 2xx (upgate 200; Nchan 201/202) is a published message.
  bool ok = nread == UV_EOF && p->in.size() >= 12 && p->in.compare(0, 9, "HTTP/1.1 ") == 0 &&
            p->in[9] == '2';
  endPub(p, ok ? nullptr
               : (nread == UV_EOF ? "answer: " + p->in.substr(0, p->in.find('\r'))
                                  : std::string(uv_strerror(static_cast<int>(nread))))
                     .c_str());
}

void onPubConnect(uv_connect_t* req, int status) {
  auto* p = static_cast<Pub*>(req->data);
  if (status < 0) {
    endPub(p, uv_strerror(status));
    return;
  }
  // The payload: send time (the clock the subscribers read too) and the message number.
  char payload[16];
  uint64_t now = uv_hrtime();
  std::memcpy(payload, &now, 8);
  std::memcpy(payload + 8, &p->seq, 8);
  p->out = "POST " + opt.pub_target + " HTTP/1.1\r\nHost: " + opt.pub_host + ":" +
           std::to_string(opt.pub_port) +
           "\r\nContent-Type: application/octet-stream\r\nContent-Length: 16\r\n"
           "Connection: close\r\n\r\n";
  p->out.append(payload, sizeof(payload));
  uv_buf_t b = uv_buf_init(p->out.data(), static_cast<unsigned>(p->out.size()));
  int rc = uv_write(&p->write_req, as<uv_stream_t>(&p->tcp), &b, 1, [](uv_write_t* w, int st) {
    if (st < 0 && st != UV_ECANCELED) endPub(static_cast<Pub*>(w->data), uv_strerror(st));
  });
  p->write_req.data = p;
  if (rc == 0)
    rc = uv_read_start(
        as<uv_stream_t>(&p->tcp),
        [](uv_handle_t*, size_t, uv_buf_t* buf) {
          *buf = uv_buf_init(g_read_buffer, sizeof(g_read_buffer));
        },
        onPubRead);
  if (rc != 0) endPub(p, uv_strerror(rc));
}

void publishOne() {
  auto* p = new Pub();
  p->seq = static_cast<uint64_t>(++g_published);
  p->tcp.data = p;
  p->connect_req.data = p;
  g_pubs.push_back(p);
  uv_tcp_init(g_loop, &p->tcp);
  uv_tcp_nodelay(&p->tcp, 1);
  int rc = uv_tcp_connect(&p->connect_req, &p->tcp, as<const sockaddr>(&g_pub_addr), onPubConnect);
  if (rc != 0) endPub(p, uv_strerror(rc));
}

// ---- Fan-out through the long-poll bridge: loadgen is the legacy app --------------------------

// With --serve-poll, messages come from a long-poll answer instead of a POST: the gateway's
// poller (one per channel) holds a GET here; each publish tick answers it with one 16-byte
// message stamped when the answer is written, so latency runs from the legacy app's response
// to the subscriber. A tick that finds no poll held is answered by the next poll at once.
struct PollConn {
  uv_tcp_t tcp{};
  uv_write_t write_req{};
  std::string in, out;
  bool held = false;  // a complete request waits for the next message
};

uv_tcp_t g_poll_server{};
std::vector<PollConn*> g_poll_conns;
int g_polls_due = 0;  // messages published while no poll was held
uint64_t g_polls_seen = 0;
bool g_fanout_wants_poll = false;  // subscribers are up; publishing waits for the first poll

bool servesPolls() {
  return opt.poll_port != 0;
}

void onPollClosed(uv_handle_t* h) {
  auto* p = static_cast<PollConn*>(h->data);
  g_poll_conns.erase(std::find(g_poll_conns.begin(), g_poll_conns.end(), p));
  delete p;
}

void endPollConn(PollConn* p) {
  if (!uv_is_closing(as<uv_handle_t>(&p->tcp))) uv_close(as<uv_handle_t>(&p->tcp), onPollClosed);
}

void answerPoll(PollConn* p) {
  p->held = false;
  uint64_t seq = static_cast<uint64_t>(g_published - g_polls_due);
  char payload[16];
  uint64_t now = uv_hrtime();
  std::memcpy(payload, &now, 8);
  std::memcpy(payload + 8, &seq, 8);
  p->out =
      "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 16\r\n"
      "X-Cursor: " +
      std::to_string(seq) + "\r\n\r\n";
  p->out.append(payload, sizeof(payload));
  p->write_req.data = p;
  uv_buf_t b = uv_buf_init(p->out.data(), static_cast<unsigned>(p->out.size()));
  int rc = uv_write(&p->write_req, as<uv_stream_t>(&p->tcp), &b, 1, [](uv_write_t* w, int st) {
    ++g_pub_done;
    if (st < 0) {
      ++g_pub_errors;
      logError("poll answer", uv_strerror(st));
      endPollConn(static_cast<PollConn*>(w->data));
    }
    maybeFinishFanout();
  });
  if (rc != 0) {
    ++g_pub_done;
    ++g_pub_errors;
    logError("poll answer", uv_strerror(rc));
    endPollConn(p);
  }
}

void onPollRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* p = static_cast<PollConn*>(s->data);
  if (nread < 0) {
    endPollConn(p);
    return;
  }
  p->in.append(g_read_buffer, static_cast<size_t>(nread));
  size_t end = p->in.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (p->in.size() > 16384) endPollConn(p);  // not a poll
    return;
  }
  p->in.erase(0, end + 4);  // a GET: no body
  ++g_polls_seen;
  p->held = true;
  if (g_polls_due > 0) {
    --g_polls_due;
    answerPoll(p);
  } else if (g_fanout_wants_poll) {
    g_fanout_wants_poll = false;
    startFanout();
  }
}

void onPollConnection(uv_stream_t* server, int status) {
  if (status < 0) return;
  auto* p = new PollConn();
  p->tcp.data = p;
  uv_tcp_init(g_loop, &p->tcp);
  g_poll_conns.push_back(p);
  if (uv_accept(server, as<uv_stream_t>(&p->tcp)) != 0) {
    endPollConn(p);
    return;
  }
  uv_tcp_nodelay(&p->tcp, 1);
  uv_read_start(
      as<uv_stream_t>(&p->tcp),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        *buf = uv_buf_init(g_read_buffer, sizeof(g_read_buffer));
      },
      onPollRead);
}

void listenForPolls() {
  sockaddr_in addr{};
  if (uv_ip4_addr(opt.poll_host.c_str(), opt.poll_port, &addr) != 0)
    usage("--serve-poll needs an IPv4 address");
  uv_tcp_init(g_loop, &g_poll_server);
  int rc = uv_tcp_bind(&g_poll_server, as<const sockaddr>(&addr), 0);
  if (rc == 0) rc = uv_listen(as<uv_stream_t>(&g_poll_server), 128, onPollConnection);
  if (rc != 0) {
    std::fprintf(stderr, "loadgen: cannot listen on %s:%d: %s\n", opt.poll_host.c_str(),
                 opt.poll_port, uv_strerror(rc));
    std::exit(1);
  }
}

void publishByPoll() {
  ++g_published;
  for (PollConn* p : g_poll_conns) {
    if (p->held && !uv_is_closing(as<uv_handle_t>(&p->tcp))) {
      answerPoll(p);
      return;
    }
  }
  ++g_polls_due;
}

void onFanoutLinger(uv_timer_t*) {
  finishRun();  // stragglers had their 5 s: what has not arrived is lost
}

void onPublishTick(uv_timer_t* t) {
  if (servesPolls())
    publishByPoll();
  else
    publishOne();
  if (g_published < opt.messages) return;
  uv_timer_stop(t);
  uv_timer_start(t, onFanoutLinger, 5000, 0);
}

// Every subscriber is up: measure from the first publish.
void startFanout() {
  g_fan_expected = g_established * static_cast<uint64_t>(opt.messages);
  std::fprintf(stderr, "[%s] fanout: %llu subscribers up (%llu failed); publishing %d at %.1f/s\n",
               opt.label.c_str(), static_cast<unsigned long long>(g_established),
               static_cast<unsigned long long>(g_failed), opt.messages, opt.rate);
  if (g_established == 0) {
    finishRun();
    return;
  }
  if (servesPolls() &&
      std::none_of(g_poll_conns.begin(), g_poll_conns.end(), [](PollConn* p) { return p->held; })) {
    std::fprintf(stderr, "[%s] fanout: waiting for the gateway's first poll\n", opt.label.c_str());
    g_fanout_wants_poll = true;  // onPollRead starts the run
    return;
  }
  g_phase = Phase::Measure;
  g_stats = Stats{};
  g_hist.reset();
  g_t0 = uv_hrtime();
  readCpu(g_cpu0, g_echo_cpu0, g_self_cpu0);
  uint64_t period = static_cast<uint64_t>(std::max(1.0, 1000.0 / opt.rate));
  uv_timer_start(&g_phase_timer, onPublishTick, 0, period);
}

void printFanout(double secs) {
  uint64_t lost = 0;
  for (Conn* c : g_conns) {
    if (c && c->touched && c->received < opt.messages)
      lost += static_cast<uint64_t>(opt.messages - c->received);
  }
  // Subscribers that closed (failed) during the run lose everything they did not get.
  if (g_stats.msgs + lost < g_fan_expected) lost = g_fan_expected - g_stats.msgs;
  double cpu = g_cpu1 - g_cpu0;
  double per = g_stats.msgs ? cpu * 1e6 / static_cast<double>(g_stats.msgs) : 0;
  double p50 = g_hist.quantile(0.50) / 1e3, p99 = g_hist.quantile(0.99) / 1e3,
         p999 = g_hist.quantile(0.999) / 1e3, pmax = static_cast<double>(g_hist.max()) / 1e3;
  std::printf(
      "{\"mode\":\"fanout\",\"label\":\"%s\",\"source\":\"%s\",\"subscribers\":%llu,\"messages\":%"
      "d,\"rate\":%.1f,"
      "\"duration_s\":%.3f,\"deliveries\":%llu,\"expected\":%llu,\"lost\":%llu,"
      "\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,"
      "\"publish_errors\":%llu,\"errors\":%llu,\"watched_cpu_s\":%.3f,\"cpu_us_per_delivery\":%.3f,"
      "\"foreign_share\":%.3f%s}\n",
      opt.label.c_str(), servesPolls() ? "longpoll" : "post",
      static_cast<unsigned long long>(g_established), g_published, opt.rate, secs,
      static_cast<unsigned long long>(g_stats.msgs),
      static_cast<unsigned long long>(g_fan_expected), static_cast<unsigned long long>(lost), p50,
      p99, p999, pmax, static_cast<unsigned long long>(g_pub_errors),
      static_cast<unsigned long long>(g_errors), cpu, per, foreignShare(secs),
      coreBusy(true).c_str());
  std::fflush(stdout);
  std::fprintf(stderr,
               "[%s] fanout N=%llu M=%d: %llu deliveries, %llu lost, latency p50 %.0f us p99 %.0f "
               "us max %.0f us; gateway CPU %.2f us/delivery; cores busy %s; errors %llu\n",
               opt.label.c_str(), static_cast<unsigned long long>(g_established), g_published,
               static_cast<unsigned long long>(g_stats.msgs), static_cast<unsigned long long>(lost),
               p50, p99, pmax, per, coreBusy().c_str(), static_cast<unsigned long long>(g_errors));
  if (g_stats.msgs == 0 || lost != 0 || g_errors != 0) g_exit_code = 1;
}

void printResult() {
  double secs = static_cast<double>(g_t1 - g_t0) / 1e9;
  if (secs <= 0) secs = 1e-9;
  double cpu = g_cpu1 - g_cpu0, echo_cpu = g_echo_cpu1 - g_echo_cpu0,
         self_cpu = g_self_cpu1 - g_self_cpu0;
  if (opt.mode == Mode::Idle) {
    printIdleLine("done");
    return;
  }
  if (opt.mode == Mode::Fanout) {
    printFanout(secs);
    return;
  }
  bool echo = opt.mode == Mode::Echo;
  uint64_t units = echo ? g_stats.msgs : g_stats.handshakes;
  double rate = static_cast<double>(units) / secs;
  double mbs = static_cast<double>(g_stats.bytes) / secs / 1e6;
  double per = units ? cpu * 1e6 / static_cast<double>(units) : 0;
  double echo_per = units ? echo_cpu * 1e6 / static_cast<double>(units) : 0;
  double p50 = g_hist.quantile(0.50) / 1e3, p99 = g_hist.quantile(0.99) / 1e3,
         p999 = g_hist.quantile(0.999) / 1e3, pmax = static_cast<double>(g_hist.max()) / 1e3;
  std::printf(
      "{\"mode\":\"%s\",\"label\":\"%s\",\"conns\":%d,\"depth\":%d,\"size\":%zu,\"duration_s\":%."
      "3f,"
      "\"%s\":%llu,\"%s\":%.1f,\"mb_per_s\":%.2f,\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,"
      "\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,\"errors\":%llu,\"established\":%llu,"
      "\"watched_cpu_s\":%.3f,\"cpu_us_per_%s\":%.3f,\"echo_cpu_s\":%.3f,\"echo_cpu_us_per_%s\":%."
      "3f,"
      "\"client_cpu_s\":%.3f,\"foreign_share\":%.3f%s%s}\n",
      echo ? "echo" : "connect", opt.label.c_str(), opt.conns, echo ? opt.depth : 0,
      echo ? opt.size : size_t{0}, secs, echo ? "msgs" : "handshakes",
      static_cast<unsigned long long>(units), echo ? "msgs_per_s" : "handshakes_per_s", rate, mbs,
      p50, p99, p999, pmax, static_cast<unsigned long long>(g_errors),
      static_cast<unsigned long long>(g_established), cpu, echo ? "msg" : "handshake", per,
      echo_cpu, echo ? "msg" : "handshake", echo_per, self_cpu, foreignShare(secs),
      coreBusy(true).c_str(), tlsJson().c_str());
  std::fflush(stdout);
  if (echo) {
    std::fprintf(
        stderr,
        "[%s] echo%s C=%d D=%d S=%zu: %.0f msgs/s, %.1f MB/s, latency p50 %.0f us p99 %.0f us "
        "p99.9 %.0f us; proxy CPU %.2f us/msg; cores busy %s; errors %llu\n",
        opt.label.c_str(), tlsNote().c_str(), opt.conns, opt.depth, opt.size, rate, mbs, p50, p99,
        p999, per, coreBusy().c_str(), static_cast<unsigned long long>(g_errors));
  } else {
    std::fprintf(
        stderr,
        "[%s] connect%s C=%d: %.0f handshakes/s, latency p50 %.0f us p99 %.0f us; proxy CPU %.1f "
        "us/handshake; cores busy %s; errors %llu\n",
        opt.label.c_str(), tlsNote().c_str(), opt.conns, rate, p50, p99, per, coreBusy().c_str(),
        static_cast<unsigned long long>(g_errors));
  }
  if (units == 0 || g_errors != 0) g_exit_code = 1;
}

void finishRun() {
  if (g_phase == Phase::Done) return;
  Phase was = g_phase;
  g_phase = Phase::Done;
  g_t1 = uv_hrtime();
  readCpu(g_cpu1, g_echo_cpu1, g_self_cpu1);
  if (was != Phase::Measure && opt.mode != Mode::Idle) {
    // Stopped early (signal, or no connection came up): measure what there was.
    if (g_t0 == 0) {
      g_t0 = g_t1;
      g_cpu0 = g_cpu1;
      g_echo_cpu0 = g_echo_cpu1;
      g_self_cpu0 = g_self_cpu1;
      g_ours0 = g_ours1;
      g_cores0 = g_cores1;
    }
  }
  if (opt.mode == Mode::Idle && !g_idle_ready_printed) g_exit_code = 1;
  if (opt.mode == Mode::Idle && (g_failed != 0 || g_errors != 0)) g_exit_code = 1;
  printResult();
  uv_timer_stop(&g_phase_timer);
  uv_timer_stop(&g_sweep_timer);
  for (Conn* c : g_conns) {
    if (c) closeConn(c);
  }
  for (Pub* p : std::vector<Pub*>(g_pubs)) endPub(p, nullptr);
  for (PollConn* p : std::vector<PollConn*>(g_poll_conns)) endPollConn(p);
  if (servesPolls()) uv_close(as<uv_handle_t>(&g_poll_server), onClosedCountdown);
  uv_close(as<uv_handle_t>(&g_phase_timer), onClosedCountdown);
  uv_close(as<uv_handle_t>(&g_sweep_timer), onClosedCountdown);
  for (auto& s : g_sig) uv_close(as<uv_handle_t>(&s), onClosedCountdown);
  // g_hard_timer stays: it ends the process if closing hangs.
}

void onSignal(uv_signal_t*, int) {
  finishRun();
}

void onHardTimeout(uv_timer_t*) {
  std::fprintf(stderr, "loadgen: hard deadline reached, exiting\n");
  if (g_phase != Phase::Done) finishRun();
  std::fflush(stdout);
  std::_Exit(g_exit_code ? g_exit_code : 1);
}

}  // namespace

int main(int argc, char** argv) {
  parseArgs(argc, argv);
  // A peer that resets while we write must cost an EPIPE, not the process (libuv leaves
  // SIGPIPE to the application).
  std::signal(SIGPIPE, SIG_IGN);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  {
    uint64_t seed;
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&seed), sizeof(seed)) != 1) std::abort();
    g_rng ^= seed | 1;
  }
  if (opt.tls) makeTlsContext();
  g_loop = uv_default_loop();
  if (uv_ip4_addr(opt.host.c_str(), opt.port, &g_target) != 0)
    usage("target must be an IPv4 address");
  if (opt.mode == Mode::Fanout && servesPolls()) {
    listenForPolls();
  } else if (opt.mode == Mode::Fanout &&
             uv_ip4_addr(opt.pub_host.c_str(), opt.pub_port, &g_pub_addr) != 0) {
    usage("publish target must be an IPv4 address");
  }
  in_addr base{};
  if (inet_pton(AF_INET, opt.source_base.c_str(), &base) != 1) usage("bad --source-base");
  for (int i = 0; i < opt.sources; ++i) {
    sockaddr_in s{};
    s.sin_family = AF_INET;
    s.sin_port = 0;
    s.sin_addr.s_addr = htonl(ntohl(base.s_addr) + static_cast<uint32_t>(i));
    g_sources.push_back(s);
  }
  g_pattern.resize(std::max<size_t>(opt.size, 16));
  for (size_t i = 0; i < g_pattern.size(); ++i)
    g_pattern[i] = static_cast<char>((i * 31 + 7) & 0xff);
  g_request_prefix =
      "GET " + opt.path + " HTTP/1.1\r\nHost: " + opt.host + ":" + std::to_string(opt.port) +
      "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
      "Sec-WebSocket-Key: ";

  uv_timer_init(g_loop, &g_phase_timer);
  uv_timer_init(g_loop, &g_sweep_timer);
  uv_timer_init(g_loop, &g_hard_timer);
  uv_timer_start(&g_sweep_timer, onSweep, 250, 250);
  // Everything is bounded: connecting/opening, warmup, the run, and closing.
  double hard = opt.conn_timeout * 2 + opt.warmup + opt.duration + 15;
  if (opensLikeIdle()) hard += opt.sessions / 200.0;
  if (opt.mode == Mode::Fanout) hard += opt.messages / opt.rate + 10;
  uv_timer_start(&g_hard_timer, onHardTimeout, static_cast<uint64_t>(hard * 1000), 0);
  uv_unref(as<uv_handle_t>(&g_hard_timer));
  const int sigs[3] = {SIGINT, SIGTERM, SIGUSR1};
  for (int i = 0; i < 3; ++i) {
    uv_signal_init(g_loop, &g_sig[i]);
    uv_signal_start(&g_sig[i], onSignal, sigs[i]);
  }

  switch (opt.mode) {
    case Mode::Echo:
      g_conns.assign(static_cast<size_t>(opt.conns), nullptr);
      for (size_t i = 0; i < g_conns.size(); ++i) startConnection(i);
      break;
    case Mode::Connect:
      g_conns.assign(static_cast<size_t>(opt.conns), nullptr);
      g_phase = Phase::Warmup;
      for (size_t i = 0; i < g_conns.size(); ++i) {
        if (opt.count > 0 && g_started >= opt.count) break;
        startConnection(i);
      }
      beginWarmup();
      break;
    case Mode::Idle:
    case Mode::Fanout:
      g_conns.assign(static_cast<size_t>(opt.sessions), nullptr);
      openMoreIdle();
      break;
  }
  uv_run(g_loop, UV_RUN_DEFAULT);
  return g_exit_code;
}
