#pragma once
// YAML file -> immutable Config. The loader checks syntax, key names, node types and value
// formats, then runs validateConfig() (validate.h) for ranges and cross references, and throws
// once with every problem it found. yaml-cpp is an implementation detail of loader.cc.
//
// Control path only: called on the main thread (at start, and on each reload) and by tests; never
// on a worker.

#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"

namespace upgate {

// One problem in a config file. Printed as "file:line:col: path: message"; line and column are
// 1-based and 0 when unknown (then ":line:col" is omitted); an empty path is omitted too.
//   conf/x.yaml:12:7: routes[0].upstream: unknown upstream "chta"
struct ConfigError {
  std::string file;     // file name as given to the loader (or the source name)
  int line = 0;         // 1-based; 0 = unknown
  int column = 0;       // 1-based; 0 = unknown
  std::string path;     // key path: "limits.high_water", "routes[1].match.pth"; may be empty
  std::string message;  // what is wrong, without the location

  std::string text() const;
};

// Thrown by the load functions with every problem found, in file order (syntax errors stop the
// parse, so then there is exactly one). Never thrown with an empty list.
class ConfigErrors : public std::exception {
 public:
  ConfigErrors() = default;
  explicit ConfigErrors(std::vector<ConfigError> errs) : errors(std::move(errs)) {}

  std::vector<ConfigError> errors;

  // Every error's text(), joined by '\n'. Owned by this object; a returned pointer stays valid
  // until the object dies or `errors` is changed and what() called again.
  const char* what() const noexcept override;

 private:
  mutable std::string what_;
};

// Reads and loads a file. A missing or unreadable file is a ConfigErrors with strerror(errno).
// Config::source is `path` exactly as given. Throws ConfigErrors.
std::shared_ptr<const Config> loadConfigFile(const std::string& path);

// Loads YAML text; `source_name` is used in error messages and as Config::source (e.g.
// "<built-in>" for the compiled-in default). Throws ConfigErrors.
std::shared_ptr<const Config> loadConfigString(std::string_view yaml,
                                               const std::string& source_name);

// The value parsers below are pure string functions (defined in config.cc) and never throw.

// "250ms", "10s", "2m", "1h", "1.5s" (decimal fractions allowed when the result is a whole
// number of milliseconds). A bare "0" is zero; any other number without a unit is ambiguous and
// rejected, as are negatives, spaces, unknown units and values that overflow.
std::optional<Millis> parseDuration(std::string_view text);

// Byte sizes: "512" (bytes), "512B", binary "16KiB"/"1MiB"/"1GiB", decimal "16KB"/"16kB" (x1000),
// "1MB", "1GB", and nginx-style single letters "16k"/"16K", "1m"/"1M", "1g"/"1G" which are
// binary (x1024). Integers only; no spaces; overflow of size_t -> nullopt.
std::optional<size_t> parseSize(std::string_view text);

// "127.0.0.1:8080", "[::1]:9001", "backend.local:80". The port is required (0..65535, 0 only
// when allow_port_zero); IPv6 literals need brackets and are stored without them; a numeric
// dotted host must be a valid IPv4 address, anything else a DNS name (letters, digits, '-',
// '_', dots). On failure returns false, leaves `out` unspecified and explains in `err`.
bool parseHostPort(std::string_view text, HostPort& out, std::string& err, bool allow_port_zero);

}  // namespace upgate
