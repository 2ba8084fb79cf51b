#pragma once
// Small text, handshake and server-start helpers shared by the benchmark's tools.

#include <arpa/inet.h>
#include <openssl/evp.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

namespace bench {

inline std::string lower(std::string s) {
  for (char& ch : s) {
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  }
  return s;
}

inline std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  size_t e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

inline std::string base64(const unsigned char* p, size_t n) {
  std::vector<unsigned char> out(4 * ((n + 2) / 3) + 1);
  int len = EVP_EncodeBlock(out.data(), p, static_cast<int>(n));
  return std::string(reinterpret_cast<char*>(out.data()), static_cast<size_t>(len));
}

// Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2).
inline std::string websocketAccept(const std::string& key) {
  std::string in = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_Digest(in.data(), in.size(), md, &md_len, EVP_sha1(), nullptr);
  return base64(md, md_len);
}

// Where a benchmark server listens, from its command line.
struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string ready_file;
};

// Adds --host, --port and --ready-file to `app`.
inline void addServerOptions(CLI::App& app, ServerOptions& o) {
  app.add_option("--host", o.host, "IPv4 address to listen on")->capture_default_str();
  app.add_option("--port", o.port, "port (0: any free one)")->capture_default_str();
  app.add_option("--ready-file", o.ready_file,
                 "write \"listening HOST:PORT\" here once bound (atomically)");
}

// Parses the command line; --help prints and exits 0, a bad option exits 2 with CLI11's message.
inline void parseOrExit(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e) == 0 ? 0 : 2);
  }
}

// Runs a benchmark server until SIGTERM or SIGINT: ignores SIGPIPE (a peer that resets while
// we write costs an EPIPE, not the process), binds and listens on HOST:PORT (PORT 0: any), prints
// "listening HOST:PORT" and writes the same line to `ready_file` (when given) atomically, so
// scripts can wait for it, then runs the loop; `on_signal` reports and exits. Returns 1 after
// saying on stderr, prefixed with `prog`, why it could not start.
inline int serve(const ServerOptions& o, const char* prog, uv_connection_cb on_connection,
                 uv_signal_cb on_signal) {
  const std::string& host = o.host;
  const std::string& ready_file = o.ready_file;
  const int port = o.port;
  std::signal(SIGPIPE, SIG_IGN);
  uv_loop_t* loop = uv_default_loop();
  static uv_tcp_t server;
  uv_tcp_init(loop, &server);
  sockaddr_in addr{};
  int rc = uv_ip4_addr(host.c_str(), port, &addr);
  if (rc == 0) rc = uv_tcp_bind(&server, reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&server), 4096, on_connection);
  if (rc != 0) {
    std::fprintf(stderr, "%s: cannot listen on %s:%d: %s\n", prog, host.c_str(), port,
                 uv_strerror(rc));
    return 1;
  }
  sockaddr_in bound{};
  int blen = sizeof(bound);
  uv_tcp_getsockname(&server, reinterpret_cast<sockaddr*>(&bound), &blen);
  char line[128];
  std::snprintf(line, sizeof(line), "listening %s:%d\n", host.c_str(), ntohs(bound.sin_port));
  std::fputs(line, stdout);
  std::fflush(stdout);
  if (!ready_file.empty()) {
    std::string tmp = ready_file + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr || std::fputs(line, f) < 0 || std::fclose(f) != 0 ||
        std::rename(tmp.c_str(), ready_file.c_str()) != 0) {
      std::fprintf(stderr, "%s: cannot write %s\n", prog, ready_file.c_str());
      return 1;
    }
  }
  static uv_signal_t sigterm, sigint;
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigint, on_signal, SIGINT);
  return uv_run(loop, UV_RUN_DEFAULT);
}

}  // namespace bench
