#include "server.h"

#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "admin/admin_server.h"
#include "config/loader.h"
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
  PluginHost* plugin_host = nullptr;
  const ServerOptions* options = nullptr;
  GenerationPtr generation;                  // the one the workers were last given
  std::map<std::string, std::string> bound;  // listener name -> "ip:port" it listens on
  std::string admin_bound;
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

// Opens `lc` once per worker, appending one fd to each of `fds`: SO_REUSEPORT sockets, the first
// binding the configured port (which may be 0) and the others the port it got, so the kernel
// spreads connections over the workers. Returns the bound "ip:port", or "" with `err` set (the
// fds opened so far stay in `fds`, which closes them).
std::string openListenSockets(const ListenerConfig& lc, std::vector<ListenFds>& fds,
                              std::string& err) {
  HostPort addr = lc.address;
  std::string first_bound;
  for (ListenFds& set : fds) {
    std::string bound;
    int fd = openListenSocket(addr, lc.backlog, /*delay_first_ack=*/!lc.tls, bound, err);
    if (fd < 0) return "";
    set.fds.push_back(fd);
    if (first_bound.empty()) {
      first_bound = bound;
      addr.port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
    }
  }
  return first_bound;
}

// A reload keeps the sockets of a listener whose address stays (its backlog and kind are
// changed in place, see Listener::reconfigure): connections waiting in their accept queues are
// not lost. A listener under the same name is preferred, then any other at that address (a
// rename). `claimed` marks the running listeners already taken.
const ListenerConfig* socketsToKeep(const ListenerConfig& next, const Config& running,
                                    std::vector<bool>& claimed) {
  auto sameAddress = [&next](const ListenerConfig& l) {
    return l.address.host == next.address.host && l.address.port == next.address.port;
  };
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running.listeners.size(); ++i) {
      const ListenerConfig& l = running.listeners[i];
      if (claimed[i] || !sameAddress(l) || (pass == 0 && l.name != next.name)) continue;
      claimed[i] = true;
      return &l;
    }
  }
  return nullptr;
}

std::string readyText(const MainLoop& m) {
  std::string text;
  for (const ListenerConfig& lc : m.generation->config->listeners)
    text += lc.name + " " + m.bound.at(lc.name) + "\n";
  if (!m.admin_bound.empty()) text += "admin " + m.admin_bound + "\n";
  return text;
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

// Settings a running process cannot take over: they are reported, and apply at the next start.
std::vector<std::string> restartNeeded(const Config& running, const Config& next) {
  std::vector<std::string> keys;
  if (workerCount(next) != workerCount(running)) keys.push_back("workers");
  if (next.admin.enabled != running.admin.enabled) keys.push_back("admin.enabled");
  if (next.admin.enabled && running.admin.enabled &&
      next.admin.address.text() != running.admin.address.text())
    keys.push_back("admin.address");
  return keys;
}

// POST /revoke: every worker closes its matching sessions on its loop; the admin thread waits
// for their counts (each is one walk of a session list), at most a few seconds.
std::optional<size_t> revokeSessions(std::vector<std::unique_ptr<Worker>>& pool,
                                     const RevokeRequest& r) {
  std::vector<std::future<size_t>> counts;
  for (auto& w : pool) {
    auto done = std::make_shared<std::promise<size_t>>();
    Worker* worker = w.get();
    if (worker->post([worker, done, r] {
          done->set_value(worker->revoke(r.session, r.user, r.code, r.reason));
        }))
      counts.push_back(done->get_future());
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  size_t total = 0;
  for (auto& f : counts) {
    if (f.wait_until(deadline) != std::future_status::ready) return std::nullopt;
    total += f.get();
  }
  UPGATE_LOG(info, 0, "POST /revoke (user \"{}\", session {}): {} session(s) closing with {}",
             r.user, r.session, total, r.code);
  return total;
}

// SIGHUP or POST /reload (design.md §4): the configuration is read again and everything built
// from it (TLS contexts from the certificate files, plugin instances, listener sockets) is made
// before anything changes; any failure keeps the running generation whole. Then every worker
// gets the new generation for new connections; established sessions keep theirs.
ReloadResult reload(MainLoop& m, const char* why) {
  ReloadResult r;
  r.generation = m.generation->number;
  auto count = [&m](const char* result) {
    if (m.admin)
      m.admin->metrics().get(metrics::Family::Reloads, metrics::labels({{"result", result}})).add();
  };
  auto fail = [&](const std::string& what) {
    UPGATE_LOG(err, 0, "{}: reload failed, keeping configuration generation {}: {}", why,
               r.generation, what);
    count("failed");
    r.error = what;
    return r;
  };
  if (m.draining) return fail("draining");
  std::shared_ptr<const Config> config;
  try {
    config = m.options->load_config();
  } catch (const ConfigErrors& e) {
    std::string all;
    for (const ConfigError& err : e.errors) all += (all.empty() ? "" : "; ") + err.text();
    return fail(all);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  std::shared_ptr<const TlsBundle> tls;
  try {
    tls = buildTlsBundle(*config);
  } catch (const std::exception& e) {  // TlsSetupError names the listener and the file
    return fail(std::string("TLS: ") + e.what());
  }
  // Plugins are created again: a rotated JWKS or key file takes effect.
  std::shared_ptr<const PluginSet> plugins;
  try {
    plugins = m.plugin_host->load(*config);
  } catch (const PluginLoadError& e) {
    std::string all;
    for (const std::string& line : e.errors()) all += (all.empty() ? "" : "; ") + line;
    return fail("plugins: " + all);
  } catch (const std::exception& e) {
    return fail(std::string("plugins: ") + e.what());
  }

  // Listeners: sockets at an unchanged address are kept (even on port 0), others opened here,
  // where a bind error can still refuse the whole reload.
  const Config& running = *m.generation->config;
  std::vector<ListenFds> fds(m.workers->size());
  std::map<std::string, std::string> bound;
  std::vector<std::string> opened;
  std::vector<bool> claimed(running.listeners.size());
  for (const ListenerConfig& lc : config->listeners) {
    if (const ListenerConfig* keep = socketsToKeep(lc, running, claimed)) {
      for (ListenFds& set : fds) {
        set.fds.push_back(-1);
        set.reuse.push_back(keep->name);
      }
      bound[lc.name] = m.bound.at(keep->name);
      if (keep->name != lc.name) opened.push_back(lc.name + " (was " + keep->name + ")");
      continue;
    }
    std::string err;
    std::string addr = openListenSockets(lc, fds, err);
    if (addr.empty()) return fail("listener " + lc.name + ": cannot listen on " + err);
    for (ListenFds& set : fds) set.reuse.emplace_back();
    bound[lc.name] = addr;
    opened.push_back(lc.name + " on " + (lc.tls ? "tls " : "") + addr);
  }
  std::vector<std::string> closed;
  for (size_t i = 0; i < running.listeners.size(); ++i) {
    const ListenerConfig& lc = running.listeners[i];
    if (!claimed[i]) closed.push_back(lc.name + " on " + m.bound.at(lc.name));
  }

  auto generation =
      std::make_shared<const Generation>(m.generation->number + 1, config, tls, std::move(plugins));
  for (size_t w = 0; w < m.workers->size(); ++w)
    (*m.workers)[w]->reload(generation, std::move(fds[w]));
  r.restart_needed = restartNeeded(running, *config);
  m.generation = generation;
  m.bound = std::move(bound);
  if (m.admin) {
    // A file that turns the admin listener off would also drop its token while the listener
    // still runs (until the restart it needs): it keeps the running admin settings then.
    if (config->admin.enabled) m.admin->setConfig(config);
    m.admin->metrics().get(metrics::Family::ConfigGeneration).set(generation->number);
  }
  count("ok");
  log::setLevel(config->log.level);
  r.generation = generation->number;

  UPGATE_LOG(info, 0,
             "{}: configuration generation {} from {}: {} listeners, {} routes, {} upstreams; "
             "established sessions keep theirs",
             why, r.generation, config->source, config->listeners.size(), config->routes.size(),
             config->upstreams.size());
  for (const std::string& l : opened) UPGATE_LOG(info, 0, "{}: listener {}", why, l);
  for (const std::string& l : closed)
    UPGATE_LOG(info, 0, "{}: listener {} closed (its sessions carry on)", why, l);
  for (const std::string& key : r.restart_needed)
    UPGATE_LOG(warn, 0, "{}: {} changed; it applies at the next start", why, key);
  logTls(*tls, *config);
  if (!m.options->ready_file.empty() && !writeReadyFile(m.options->ready_file, readyText(m)))
    UPGATE_LOG(err, 0, "cannot write ready file {}", m.options->ready_file);
  return r;
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
  m.plugin_host = &host;
  m.options = &options;
  m.generation = std::make_shared<const Generation>(1, config, std::move(tls), std::move(plugins));
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
  for (const ListenerConfig& lc : config->listeners) {
    std::string err;
    std::string bound = openListenSockets(lc, fds, err);
    if (bound.empty()) {
      UPGATE_LOG(err, 0, "listener {}: cannot listen on {}", lc.name, err);
      return abandon(1);
    }
    m.bound[lc.name] = bound;
    UPGATE_LOG(info, 0, "listener {} on {}{} ({} workers)", lc.name, lc.tls ? "tls " : "", bound,
               workers);
  }
  Hub hub;
  std::unique_ptr<AdminServer> admin;
  if (config->admin.enabled) {
    admin = std::make_unique<AdminServer>(&m.loop, config, hub);
    std::string bound, err;
    if (!admin->start(bound, err)) {
      UPGATE_LOG(err, 0, "admin listener: cannot listen on {}", err);
      admin->close(nullptr);
      return abandon(1);
    }
    m.admin_bound = bound;
    UPGATE_LOG(info, 0,
               "admin listener on {} (POST /publish/{{channel}}, POST /reload, POST /revoke, "
               "/metrics, /healthz, /readyz)",
               bound);
  }
  m.admin = admin.get();

  ConnectionCount connections;
  std::vector<std::unique_ptr<Worker>> pool;
  for (unsigned w = 0; w < workers; ++w) {
    pool.push_back(std::make_unique<Worker>(w, m.generation, hub, connections, std::move(fds[w])));
  }
  std::vector<Worker*> raw;
  for (auto& w : pool) raw.push_back(w.get());
  hub.setWorkers(raw);
  m.workers = &pool;
  if (admin) {
    admin->setReload([&m] { return reload(m, "POST /reload"); });
    admin->setRevoke([&pool](const RevokeRequest& r) { return revokeSessions(pool, r); });
    admin->metrics().get(metrics::Family::ConfigGeneration).set(m.generation->number);
    admin->setMetricsSource([&pool](metrics::Snapshot& out) {
      for (const auto& w : pool) w->collectMetrics(out);
    });
  }
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
  const std::string ready = readyText(m);
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
