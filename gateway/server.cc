#include "server.h"

#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

#include "admin/admin_server.h"
#include "core/log.h"
#include "net/listener.h"
#include "proxy/worker.h"

namespace upgate {
namespace {

struct MainLoop {
  uv_loop_t loop{};
  uv_signal_t sigterm{}, sigint{}, sighup{};
  uv_async_t workers_done{};
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  AdminServer* admin = nullptr;
  const Config* config = nullptr;
  PluginHost* plugin_host = nullptr;
  std::thread reaper;  // joins the workers during a drain, then wakes the main loop
  bool draining = false;
};

// Every worker has drained and its thread ended: close what is left on the main loop (the
// admin listener answered /readyz with 503 meanwhile) so uv_run returns.
void onWorkersDone(uv_async_t* a) noexcept {
  auto* m = static_cast<MainLoop*>(a->data);
  uv_close(reinterpret_cast<uv_handle_t*>(&m->workers_done), nullptr);
  if (m->admin) m->admin->close([] {});
}

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

// SIGHUP or POST /reload: certificates and keys are read again. Established sessions keep the
// contexts they started with; a broken file changes nothing and says why. Returns "" when
// everything reloaded, else what failed.
std::string reload(MainLoop& m, const char* why) {
  std::string failed;
  try {
    std::shared_ptr<const TlsBundle> tls = buildTlsBundle(*m.config);
    for (auto& w : *m.workers) w->swapTls(tls);
    UPGATE_LOG(info, 0, "{}: TLS certificates and keys reloaded", why);
    logTls(*tls, *m.config);
  } catch (const TlsSetupError& e) {
    UPGATE_LOG(err, 0, "{}: TLS reload failed, keeping the current certificates: {}", why,
               e.what());
    failed = std::string("TLS: ") + e.what();
  } catch (const std::exception& e) {  // e.g. out of memory: the running contexts stay
    UPGATE_LOG(err, 0, "{}: TLS reload failed, keeping the current certificates: {}", why,
               e.what());
    failed = std::string("TLS: ") + e.what();
  }
  // Plugins are created again (a JWKS or key file may have been rotated); sessions keep the
  // instances they started with. Broken files keep the running plugins.
  try {
    std::shared_ptr<const PluginSet> plugins = m.plugin_host->load(*m.config);
    for (auto& w : *m.workers) w->swapPlugins(plugins);
    UPGATE_LOG(info, 0, "{}: plugins reloaded", why);
  } catch (const PluginLoadError& e) {
    for (const std::string& line : e.errors()) {
      UPGATE_LOG(err, 0, "{}: plugin reload failed, keeping the running plugins: {}", why, line);
      failed += (failed.empty() ? "plugins: " : "; plugins: ") + line;
    }
  } catch (const std::exception& e) {
    UPGATE_LOG(err, 0, "{}: plugin reload failed, keeping the running plugins: {}", why, e.what());
    failed += (failed.empty() ? "plugins: " : "; plugins: ") + std::string(e.what());
  }
  return failed;
}

void onSignal(uv_signal_t* h, int signum) noexcept {
  auto* m = static_cast<MainLoop*>(h->data);
  if (signum == SIGHUP) {
    reload(*m, "SIGHUP");
    return;
  }
  if (m->draining) {
    UPGATE_LOG(warn, 0, "{} again while draining: still waiting for sessions (drain_timeout)",
               strsignal(signum));
    return;
  }
  m->draining = true;
  UPGATE_LOG(info, 0, "{}: draining: no new connections, waiting for sessions", strsignal(signum));
  if (m->admin) m->admin->setDraining();
  for (auto& w : *m->workers) w->requestDrain();
  uv_close(reinterpret_cast<uv_handle_t*>(&m->sigterm), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&m->sigint), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&m->sighup), nullptr);
  m->reaper = std::thread([m] {
    for (auto& w : *m->workers) w->join();
    uv_async_send(&m->workers_done);
  });
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

unsigned workerCount(const Config& config) {
  return config.workers != 0 ? config.workers : std::max(1u, std::thread::hardware_concurrency());
}

int runServer(std::shared_ptr<const Config> config, std::shared_ptr<const TlsBundle> tls,
              PluginHost& host, std::shared_ptr<const PluginSet> plugins,
              const ServerOptions& options) {
  logTls(*tls, *config);
  const unsigned workers = workerCount(*config);

  // Signal handlers go in before anything listens: whoever reads the ready file may signal.
  MainLoop m;
  m.config = config.get();
  m.plugin_host = &host;
  LoopContext main_ctx;
  uv_loop_init(&m.loop);
  m.loop.data = &main_ctx;
  for (auto [h, sig] : {std::pair{&m.sigterm, SIGTERM}, {&m.sigint, SIGINT}, {&m.sighup, SIGHUP}}) {
    uv_signal_init(&m.loop, h);
    h->data = &m;
    uv_signal_start(h, onSignal, sig);
  }
  uv_async_init(&m.loop, &m.workers_done, onWorkersDone);
  m.workers_done.data = &m;
  auto abandon = [&m](int code) {
    uv_walk(
        &m.loop,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    uv_loop_close(&m.loop);
    return code;
  };

  // Open every socket up front on this thread: a bind error is reported before anything runs,
  // and port 0 resolves once, so all workers share the same SO_REUSEPORT port.
  std::vector<ListenFds> fds(workers);
  std::string ready;
  auto close_fds = [&fds] {
    for (auto& set : fds)
      for (int f : set.fds) ::close(f);
  };
  for (const ListenerConfig& lc : config->listeners) {
    HostPort addr = lc.address;
    std::string first_bound;
    for (unsigned w = 0; w < workers; ++w) {
      std::string bound, err;
      int fd = openListenSocket(addr, lc.backlog, /*delay_first_ack=*/!lc.tls, bound, err);
      if (fd < 0) {
        UPGATE_LOG(err, 0, "listener {}: cannot listen on {}", lc.name, err);
        close_fds();
        return abandon(1);
      }
      fds[w].fds.push_back(fd);
      if (w == 0) {
        first_bound = bound;
        addr.port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
      }
    }
    ready += lc.name + " " + first_bound + "\n";
    UPGATE_LOG(info, 0, "listener {} on {}{} ({} workers)", lc.name, lc.tls ? "tls " : "",
               first_bound, workers);
  }

  Hub hub;
  std::unique_ptr<AdminServer> admin;
  if (config->admin.enabled) {
    admin = std::make_unique<AdminServer>(&m.loop, *config, hub);
    std::string bound, err;
    if (!admin->start(bound, err)) {
      UPGATE_LOG(err, 0, "admin listener: cannot listen on {}", err);
      close_fds();
      admin->close(nullptr);
      return abandon(1);
    }
    ready += "admin " + bound + "\n";
    UPGATE_LOG(info, 0,
               "admin listener on {} (POST /publish/{{channel}}, POST /reload, /healthz, /readyz)",
               bound);
  }
  m.admin = admin.get();

  std::vector<std::unique_ptr<Worker>> pool;
  for (unsigned w = 0; w < workers; ++w) {
    pool.push_back(std::make_unique<Worker>(w, config, tls, plugins, hub, std::move(fds[w])));
  }
  std::vector<Worker*> raw;
  for (auto& w : pool) raw.push_back(w.get());
  hub.setWorkers(raw);
  m.workers = &pool;
  if (admin) admin->setReload([&m] { return reload(m, "POST /reload"); });
  std::vector<std::future<int>> started;
  for (auto& w : pool) started.push_back(w->start());
  int failed = 0;
  for (auto& f : started) {
    int rc = f.get();
    if (rc != 0 && failed == 0) failed = rc;
  }
  if (failed != 0) {
    UPGATE_LOG(err, 0, "worker could not start listening: {}", uv_strerror(failed));
    for (auto& w : pool) w->requestDrain();
    for (auto& w : pool) w->join();
    if (admin) admin->close(nullptr);
    return abandon(1);
  }
  if (!options.ready_file.empty() && !writeReadyFile(options.ready_file, ready)) {
    UPGATE_LOG(err, 0, "cannot write ready file {}", options.ready_file);
  }
  std::fprintf(stderr, "upgate listening: %s", ready.c_str());

  uv_run(&m.loop, UV_RUN_DEFAULT);
  if (m.reaper.joinable()) m.reaper.join();
  uv_loop_close(&m.loop);
  UPGATE_LOG(info, 0, "drained; exiting");
  return 0;
}

}  // namespace upgate
