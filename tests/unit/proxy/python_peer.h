#pragma once
// A real HTTP peer for the HTTP client and exchange tests: a Python script (python3 -c SCRIPT
// ARGS...) in a child process on the test's loop, which prints its listening port on its first
// line of stdout. Stopped with SIGTERM; its process and pipe handles close through uv_close.

#include <uv.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <string>
#include <vector>

#include "config/config.h"  // HostPort
#include "core/handle.h"

namespace upgate::test {

struct PythonPeer {
  uv_process_t process{};
  uv_pipe_t out{};
  char buffer[256];
  std::string output;
  uint16_t port = 0;
  bool started = false, exited = false, process_closed = false, pipe_closed = false;

  void start(uv_loop_t* loop, const char* script, const std::vector<std::string>& extra = {}) {
    REQUIRE(uv_pipe_init(loop, &out, 0) == 0);
    out.data = this;
    process.data = this;
    std::vector<char*> args = {const_cast<char*>("python3"), const_cast<char*>("-c"),
                               const_cast<char*>(script)};
    for (const std::string& a : extra) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
    stdio[1].data.stream = asStream(&out);
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    uv_process_options_t options{};
    options.file = "/usr/bin/python3";
    options.args = args.data();
    options.stdio = stdio;
    options.stdio_count = 3;
    options.exit_cb = [](uv_process_t* p, int64_t, int) {
      static_cast<PythonPeer*>(p->data)->exited = true;
      uv_close(asHandle(p),
               [](uv_handle_t* h) { static_cast<PythonPeer*>(h->data)->process_closed = true; });
    };
    REQUIRE(uv_spawn(loop, &process, &options) == 0);
    started = true;
    uv_read_start(
        asStream(&out),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* self = static_cast<PythonPeer*>(h->data);
          *buf = uv_buf_init(self->buffer, sizeof(self->buffer));
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
          auto* self = static_cast<PythonPeer*>(s->data);
          if (n < 0) {
            uv_read_stop(s);
            return;
          }
          self->output.append(buf->base, static_cast<size_t>(n));
          const size_t nl = self->output.find('\n');
          if (nl != std::string::npos && self->port == 0) {
            self->port = static_cast<uint16_t>(std::stoi(self->output.substr(0, nl)));
          }
        });
  }

  HostPort endpoint() const { return HostPort{"127.0.0.1", port}; }

  void stop() {
    if (!started) {
      process_closed = pipe_closed = true;
      return;
    }
    if (!exited) uv_process_kill(&process, SIGTERM);
    if (!uv_is_closing(asHandle(&out))) {
      uv_close(asHandle(&out),
               [](uv_handle_t* h) { static_cast<PythonPeer*>(h->data)->pipe_closed = true; });
    }
  }
  bool stopped() const { return process_closed && pipe_closed; }
};

}  // namespace upgate::test
