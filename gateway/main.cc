// upgate: a WebSocket gateway. argv -> config -> Server -> exit code.
//   exit 0: ran and drained, or `-t` found the config valid
//   exit 1: runtime failure (a listener could not be opened)
//   exit 2: configuration errors (all of them printed, file:line:col: key: message)

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "config/loader.h"
#include "core/log.h"
#include "server.h"
#include "version.h"

namespace upgate {
extern const char kDefaultConfig[];
extern const size_t kDefaultConfigSize;
}  // namespace upgate

int main(int argc, char** argv) {
  CLI::App app{"upgate: WebSockets in front of web apps built for polling"};
  std::string config_file;
  std::string ready_file;
  bool test_only = false;
  bool version = false;
  app.add_option("-c,--config", config_file,
                 "YAML configuration file (default: the built-in conf/upgate.yaml)");
  app.add_flag("-t,--test", test_only,
               "check the configuration, print `configuration OK` or every error, exit 0/2");
  app.add_option("--ready-file", ready_file,
                 "write the bound listener addresses here once listening");
  app.add_flag("-v,--version", version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::printf("upgate %s\n", UPGATE_VERSION);
    return 0;
  }

  // The same source is read again on every reload (SIGHUP, POST /reload).
  auto load_config = [config_file] {
    return config_file.empty()
               ? upgate::loadConfigString(
                     std::string_view(upgate::kDefaultConfig, upgate::kDefaultConfigSize),
                     "<built-in conf/upgate.yaml>")
               : upgate::loadConfigFile(config_file);
  };
  std::shared_ptr<const upgate::Config> config;
  try {
    config = load_config();
  } catch (const upgate::ConfigErrors& e) {
    std::cerr << e.what() << "\n";
    if (test_only) std::cerr << "configuration has " << e.errors.size() << " error(s)\n";
    return 2;
  }
  // Certificates and keys are part of the configuration: a missing file, a key that does not
  // match, an expired certificate or a cipher string OpenSSL rejects fail here, also with -t.
  std::shared_ptr<const upgate::TlsBundle> tls;
  try {
    tls = upgate::buildTlsBundle(*config);
  } catch (const upgate::TlsSetupError& e) {
    std::cerr << config->source << ": " << e.what() << "\n";
    return 2;
  }
  // Plugins are created (and their own configs checked) now, also with -t: a missing .so, a
  // wrong ABI or a bad plugin config is a configuration error naming the file and line.
  upgate::PluginHost plugin_host(upgate::workerCount(*config));
  std::shared_ptr<const upgate::PluginSet> plugins;
  try {
    plugins = plugin_host.load(*config);
  } catch (const upgate::PluginLoadError& e) {
    for (const std::string& line : e.errors()) std::cerr << line << "\n";
    if (test_only) std::cerr << "configuration has " << e.errors().size() << " error(s)\n";
    return 2;
  }
  if (test_only) {
    std::printf("configuration OK\n");
    return 0;
  }

  signal(SIGPIPE, SIG_IGN);  // a peer's reset must be an EPIPE, not the end of the process
  setvbuf(stdout, nullptr, _IOLBF, 0);
  upgate::log::init(config->log.level);
  upgate::ServerOptions options;
  options.ready_file = ready_file;
  options.load_config = load_config;
  return upgate::runServer(config, tls, plugin_host, plugins, options);
}
