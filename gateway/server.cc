#include "server.h"

#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

#include "core/log.h"
#include "net/listener.h"
#include "proxy/worker.h"

namespace upgate {
namespace {

struct MainLoop {
  uv_loop_t loop{};
  uv_signal_t sigterm{}, sigint{}, sighup{};
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  const Config* config = nullptr;
  bool draining = false;
};

void logTls(const TlsBundle& tls, const Config& config) {
  for (size_t i = 0; i < tls.listeners.size(); ++i) {
    if (!tls.listeners[i]) continue;
    for (const std::string& line : tls.listeners[i]->describe()) {
      if (line.rfind("SELF-SIGNED", 0) == 0) {
        UPGATE_LOG(warn, 0, "listener {}: TLS with a {}", config.listeners[i].name, line);
      } else {
        UPGATE_LOG(info, 0, "listener {}: TLS certificate {}", config.listeners[i].name, line);
      }
    }
  }
  for (const auto& [name, ctx] : tls.upstreams) {
    for (const std::string& line : ctx->describe()) {
      if (line.find("NOT VERIFIED") != std::string::npos) {
        UPGATE_LOG(warn, 0, "upstream {}: {}", name, line);
      } else {
        UPGATE_LOG(info, 0, "upstream {}: {}", name, line);
      }
    }
  }
}

// SIGHUP: certificates and keys are read again. Established sessions keep the contexts they
// started with; a broken file changes nothing and says why.
void reloadTls(MainLoop& m) {
  try {
    std::shared_ptr<const TlsBundle> tls = buildTlsBundle(*m.config);
    for (auto& w : *m.workers) w->swapTls(tls);
    UPGATE_LOG(info, 0, "SIGHUP: TLS certificates and keys reloaded");
    logTls(*tls, *m.config);
  } catch (const TlsSetupError& e) {
    UPGATE_LOG(err, 0, "SIGHUP: TLS reload failed, keeping the current certificates: {}", e.what());
  }
}

void onSignal(uv_signal_t* h, int signum) noexcept {
  auto* m = static_cast<MainLoop*>(h->data);
  if (signum == SIGHUP) {
    reloadTls(*m);
    return;
  }
  if (m->draining) {
    UPGATE_LOG(warn, 0, "{} again while draining: still waiting for sessions (drain_timeout)",
               strsignal(signum));
    return;
  }
  m->draining = true;
  UPGATE_LOG(info, 0, "{}: draining: no new connections, waiting for sessions", strsignal(signum));
  for (auto& w : *m->workers) w->requestDrain();
  // Nothing else runs on the main loop: closing the signal handles lets uv_run return.
  uv_close(reinterpret_cast<uv_handle_t*>(&m->sigterm), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&m->sigint), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&m->sighup), nullptr);
}

bool writeReadyFile(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int runServer(std::shared_ptr<const Config> config, std::shared_ptr<const TlsBundle> tls,
              const ServerOptions& options) {
  logTls(*tls, *config);
  unsigned workers = config->workers;
  if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());

  // Open every socket up front on this thread: a bind error is reported before anything runs,
  // and port 0 resolves once, so all workers share the same SO_REUSEPORT port.
  std::vector<ListenFds> fds(workers);
  std::string ready;
  for (const ListenerConfig& lc : config->listeners) {
    HostPort addr = lc.address;
    std::string first_bound;
    for (unsigned w = 0; w < workers; ++w) {
      std::string bound, err;
      int fd = openListenSocket(addr, lc.backlog, bound, err);
      if (fd < 0) {
        UPGATE_LOG(err, 0, "listener {}: cannot listen on {}", lc.name, err);
        for (auto& set : fds)
          for (int f : set.fds) ::close(f);
        return 1;
      }
      fds[w].fds.push_back(fd);
      if (w == 0) {
        first_bound = bound;
        addr.port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
      }
    }
    ready += lc.name + " " + first_bound + "\n";
    UPGATE_LOG(info, 0, "listener {} on {} ({} workers)", lc.name, first_bound, workers);
  }

  std::vector<std::unique_ptr<Worker>> pool;
  // Signal handlers go in before the ready file exists: whoever reads it may signal at once.
  MainLoop m;
  m.workers = &pool;
  m.config = config.get();
  uv_loop_init(&m.loop);
  for (auto [h, sig] : {std::pair{&m.sigterm, SIGTERM}, {&m.sigint, SIGINT}, {&m.sighup, SIGHUP}}) {
    uv_signal_init(&m.loop, h);
    h->data = &m;
    uv_signal_start(h, onSignal, sig);
  }
  std::vector<std::future<int>> started;
  for (unsigned w = 0; w < workers; ++w) {
    pool.push_back(std::make_unique<Worker>(w, config, tls, std::move(fds[w])));
    started.push_back(pool.back()->start());
  }
  int failed = 0;
  for (auto& f : started) {
    int rc = f.get();
    if (rc != 0 && failed == 0) failed = rc;
  }
  if (failed != 0) {
    UPGATE_LOG(err, 0, "worker could not start listening: {}", uv_strerror(failed));
    for (auto& w : pool) w->requestDrain();
    pool.clear();  // joins
    uv_walk(&m.loop, [](uv_handle_t* h, void*) { uv_close(h, nullptr); }, nullptr);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    uv_loop_close(&m.loop);
    return 1;
  }
  if (!options.ready_file.empty() && !writeReadyFile(options.ready_file, ready)) {
    UPGATE_LOG(err, 0, "cannot write ready file {}", options.ready_file);
  }
  std::fprintf(stderr, "upgate listening: %s", ready.c_str());

  uv_run(&m.loop, UV_RUN_DEFAULT);
  uv_loop_close(&m.loop);
  for (auto& w : pool) w->join();
  UPGATE_LOG(info, 0, "drained; exiting");
  return 0;
}

}  // namespace upgate
