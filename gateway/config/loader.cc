#include "config/loader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "config/validate.h"

namespace upgate {

std::string ConfigError::text() const {
  std::string out = file;
  if (line > 0) {
    out += ":" + std::to_string(line);
    if (column > 0) out += ":" + std::to_string(column);
  }
  if (!path.empty()) {
    if (!out.empty()) out += ": ";
    out += path;
  }
  if (!out.empty()) out += ": ";
  out += message;
  return out;
}

const char* ConfigErrors::what() const noexcept {
  try {
    std::string joined;
    for (const ConfigError& e : errors) {
      if (!joined.empty()) joined += '\n';
      joined += e.text();
    }
    // Replace the cached text only when it changed, so an earlier pointer stays usable.
    if (joined != what_) what_ = std::move(joined);
    return what_.c_str();
  } catch (...) {
    return "invalid configuration";
  }
}

namespace {

using YAML::Node;
using YAML::NodeType;

constexpr size_t kMaxFileBytes = 16 * 1024 * 1024;

const char* kindOf(const Node& n) {
  switch (n.Type()) {
    case NodeType::Null:
      return "null";
    case NodeType::Scalar:
      return "a scalar";
    case NodeType::Sequence:
      return "a sequence";
    case NodeType::Map:
      return "a map";
    case NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string join(std::initializer_list<const char*> names) {
  std::string out;
  for (const char* n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

std::string childPath(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

// "a.b[2].c" -> "a.b[2]" -> "a.b" -> "a" -> "".
std::string parentPath(const std::string& path) {
  size_t cut = path.find_last_of(".[");
  return cut == std::string::npos ? std::string() : path.substr(0, cut);
}

// Same path, or one inside the other on a component boundary ("routes[1]" is not inside
// "routes[10]").
bool related(const std::string& a, const std::string& b) {
  const std::string& shorter = a.size() <= b.size() ? a : b;
  const std::string& longer = a.size() <= b.size() ? b : a;
  if (longer.compare(0, shorter.size(), shorter) != 0) return false;
  if (longer.size() == shorter.size() || shorter.empty()) return true;
  char next = longer[shorter.size()];
  return next == '.' || next == '[';
}

// The directory relative file names in a config are resolved against: the config file's own,
// with a trailing '/', when `source` names a regular file; else "" (the working directory), as
// for "<built-in ...>" or a source name that is only a label.
std::string baseDirOf(const std::string& source) {
  struct stat st {};
  if (source.empty() || ::stat(source.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  size_t slash = source.rfind('/');
  return slash == std::string::npos ? std::string() : source.substr(0, slash + 1);
}

// Whether `path` can be opened for reading; else why not (strerror). O_NONBLOCK so that a FIFO
// named by mistake does not hang the loader; nothing is read.
bool readableFile(const std::string& path, std::string& why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    why = std::strerror(errno);
    return false;
  }
  struct stat st {};
  int err = ::fstat(fd, &st) != 0 ? errno : (S_ISDIR(st.st_mode) ? EISDIR : 0);
  ::close(fd);
  if (err != 0) why = std::strerror(err);
  return err == 0;
}

// A node in the document with the key path that led to it. YAML::Node's operator= writes
// through to the document when the target already refers to a node, so Fields are only ever
// copy-constructed, never assigned.
struct Field {
  std::string path;
  Node value;
  YAML::Mark mark;  // where errors about this value point
};

class Loader {
 public:
  explicit Loader(std::string source) : source_(std::move(source)), base_dir_(baseDirOf(source_)) {
    cfg_->source = source_;
  }

  std::shared_ptr<const Config> load(std::string_view yaml) {
    std::vector<Node> docs;
    try {
      docs = YAML::LoadAll(std::string(yaml));
    } catch (const YAML::Exception& e) {
      std::string msg = e.msg;
      // yaml-cpp's words for `host: *.example.com`, where '*' starts an alias.
      if (msg == YAML::ErrorMsg::UNKNOWN_ANCHOR) {
        msg += " (a value starting with '*' must be quoted, e.g. \"*.example.com\")";
      }
      error(e.mark, "", msg);
      throw ConfigErrors(std::move(errors_));
    }
    if (docs.empty()) {
      error(YAML::Mark::null_mark(), "", "configuration is empty");
      throw ConfigErrors(std::move(errors_));
    }
    if (docs.size() > 1) {
      error(docs[1].Mark(), "", "only one YAML document is allowed per file", false);
    }
    try {
      Field root{"", docs[0], docs[0].Mark()};
      marks_[""] = root.mark;
      loadRoot(root);
    } catch (const YAML::Exception& e) {  // not expected: the walk only reads checked nodes
      error(e.mark, "", std::string("internal error reading the document: ") + e.msg);
    }
    addValidationErrors();
    if (!errors_.empty()) {
      std::stable_sort(errors_.begin(), errors_.end(),
                       [](const ConfigError& a, const ConfigError& b) {
                         return std::make_pair(a.line, a.column) < std::make_pair(b.line, b.column);
                       });
      throw ConfigErrors(std::move(errors_));
    }
    return cfg_;
  }

 private:
  // `blocks`: later semantic errors on this path, or inside or above it, are consequences of
  // this one (a missing value, a skipped section) and are not reported.
  void error(const YAML::Mark& mark, std::string path, std::string message, bool blocks = true) {
    ConfigError e;
    e.file = source_;
    if (!mark.is_null()) {
      e.line = mark.line + 1;
      e.column = mark.column + 1;
    }
    if (blocks) blocked_.push_back(path);
    e.path = std::move(path);
    e.message = std::move(message);
    errors_.push_back(std::move(e));
  }

  void addValidationErrors() {
    for (ConfigError& e : validateConfig(*cfg_)) {
      bool skip = std::any_of(blocked_.begin(), blocked_.end(),
                              [&](const std::string& p) { return related(p, e.path); });
      if (skip) continue;
      std::string p = e.path;
      auto it = marks_.find(p);
      while (it == marks_.end() && !p.empty()) {
        p = parentPath(p);
        it = marks_.find(p);
      }
      error(it == marks_.end() ? YAML::Mark::null_mark() : it->second, std::move(e.path),
            std::move(e.message), false);
    }
  }

  // An entry of a map. An empty value ("key:") gets the mark of the next token, often on a
  // later line, so point at the key instead.
  Field entryField(const Field& map, const std::string& key, const Node& k, const Node& v) {
    YAML::Mark km = k.Mark();
    YAML::Mark vm = v.Mark();
    bool use_key = v.IsNull() && (vm.is_null() || vm.line != km.line);
    Field f{childPath(map.path, key), v, use_key ? km : vm};
    marks_[f.path] = f.mark;
    return f;
  }

  bool expect(const Field& f, NodeType::value type, const char* what) {
    if (f.value.Type() == type) return true;
    error(f.mark, f.path, std::string("expected ") + what + ", got " + kindOf(f.value));
    return false;
  }

  // Calls fn(key, entry, key_node) for each entry of a map; keys must be unique scalars.
  // False (after reporting) if the node is not a map.
  template <typename Fn>
  bool entries(const Field& map, Fn&& fn) {
    if (!map.value.IsMap()) {
      error(map.mark, map.path,
            std::string(map.path.empty() ? "the top level must be a map" : "expected a map") +
                ", got " + kindOf(map.value));
      return false;
    }
    std::map<std::string, YAML::Mark> seen;
    for (auto it = map.value.begin(); it != map.value.end(); ++it) {
      // Copies: operator-> yields a temporary pair, so a reference to ->first would dangle.
      const Node k = it->first;
      const Node v = it->second;
      if (!k.IsScalar()) {
        error(k.Mark(), map.path, std::string("keys must be strings, got ") + kindOf(k), false);
        continue;
      }
      const std::string key = k.Scalar();
      auto [first, fresh] = seen.emplace(key, k.Mark());
      if (!fresh) {
        error(k.Mark(), childPath(map.path, key),
              "duplicate key (first at line " + std::to_string(first->second.line + 1) + ")",
              false);
        continue;
      }
      fn(key, entryField(map, key, k, v), k);
    }
    return true;
  }

  // A map with a fixed set of keys: unknown keys are errors, `required` ones must be present.
  template <typename Fn>
  void fields(const Field& map, std::initializer_list<const char*> known,
              std::initializer_list<const char*> required, Fn&& fn) {
    std::vector<std::string> present;
    bool is_map = entries(map, [&](const std::string& key, const Field& f, const Node& k) {
      bool ok = std::any_of(known.begin(), known.end(), [&](const char* n) { return key == n; });
      if (!ok) {
        error(k.Mark(), f.path, "unknown key (expected one of: " + join(known) + ")", false);
        return;
      }
      present.push_back(key);
      fn(key, f);
    });
    if (!is_map) return;
    for (const char* r : required) {
      if (std::find(present.begin(), present.end(), r) == present.end()) {
        error(map.mark, childPath(map.path, r), "required key is missing");
      }
    }
  }

  template <typename Fn>
  void items(const Field& seq, Fn&& fn) {
    if (!expect(seq, NodeType::Sequence, "a sequence")) return;
    size_t i = 0;
    for (auto it = seq.value.begin(); it != seq.value.end(); ++it, ++i) {
      const Node n = *it;
      Field f{seq.path + "[" + std::to_string(i) + "]", n, n.Mark()};
      marks_[f.path] = f.mark;
      fn(f);
    }
  }

  bool readString(const Field& f, std::string& out) {
    if (!expect(f, NodeType::Scalar, "a string")) return false;
    out = f.value.Scalar();
    return true;
  }

  void readString(const Field& f, std::optional<std::string>& out) {
    std::string s;
    if (readString(f, s)) out = std::move(s);
  }

  // For keys whose absence means "the default": an explicit "" is a mistake, not the default.
  bool readNonEmptyString(const Field& f, std::string& out) {
    std::string s;
    if (!readString(f, s)) return false;
    if (s.empty()) {
      error(f.mark, f.path, "must not be empty (leave the key out for the default)");
      return false;
    }
    out = std::move(s);
    return true;
  }

  // A file named in the config. Relative names are relative to the config file's directory and
  // are stored resolved (usable from the working directory). The file must be readable now, so
  // `upgate -t` reports a typo at its line; the TLS layer checks the contents. With
  // `allow_system`, "system" means the OS trust store and is kept as is.
  void readFile(const Field& f, std::string& out, bool allow_system = false) {
    std::string written;
    if (!readString(f, written)) return;
    if (written.empty()) {
      error(f.mark, f.path, "must not be empty");
      return;
    }
    if (allow_system && written == "system") {
      out = written;
      return;
    }
    out = written.front() == '/' ? written : base_dir_ + written;
    std::string why;
    if (!readableFile(out, why)) {
      error(f.mark, f.path, "cannot read " + quoted(written) + ": " + why);
    }
  }

  bool readBool(const Field& f, bool& out) {
    if (!expect(f, NodeType::Scalar, "true or false")) return false;
    std::string s = f.value.Scalar();
    std::transform(s.begin(), s.end(), s.begin(),
                   [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; });
    if (s == "true" || s == "yes" || s == "on") {
      out = true;
    } else if (s == "false" || s == "no" || s == "off") {
      out = false;
    } else {
      error(f.mark, f.path, "expected true or false, got " + quoted(f.value.Scalar()));
      return false;
    }
    return true;
  }

  bool readInt(const Field& f, int64_t lo, int64_t hi, int64_t& out) {
    if (!expect(f, NodeType::Scalar, "an integer")) return false;
    const std::string& s = f.value.Scalar();
    int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || end != s.data() + s.size() ||
        (ec != std::errc() && ec != std::errc::result_out_of_range)) {
      error(f.mark, f.path, "expected an integer, got " + quoted(s));
      return false;
    }
    if (ec == std::errc::result_out_of_range) {
      error(f.mark, f.path,
            "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + s);
      return false;
    }
    if (v < lo || v > hi) {
      error(f.mark, f.path, rangeMessage(lo, hi, v));
      return false;
    }
    out = v;
    return true;
  }

  void readDuration(const Field& f, Millis& out) {
    if (!expect(f, NodeType::Scalar, "a duration")) return;
    const std::string& s = f.value.Scalar();
    if (auto d = parseDuration(s)) {
      out = *d;
    } else if (!s.empty() && s.find_first_not_of("0123456789.") == std::string::npos) {
      error(f.mark, f.path,
            "invalid duration " + quoted(s) + ": a unit is required (ms, s, m or h), e.g. 10s");
    } else {
      error(f.mark, f.path,
            "invalid duration " + quoted(s) + " (expected e.g. 250ms, 10s, 1.5s, 2m, 1h or 0)");
    }
  }

  void readSize(const Field& f, size_t& out) {
    if (!expect(f, NodeType::Scalar, "a size")) return;
    const std::string& s = f.value.Scalar();
    if (auto v = parseSize(s)) {
      out = *v;
    } else {
      error(f.mark, f.path,
            "invalid size " + quoted(s) + " (expected bytes or e.g. 16KiB, 1MiB, 16k, 16KB)");
    }
  }

  void readHostPort(const Field& f, bool allow_port_zero, HostPort& out) {
    if (!expect(f, NodeType::Scalar, "an address (host:port)")) return;
    std::string why;
    if (!parseHostPort(f.value.Scalar(), out, why, allow_port_zero)) {
      out = HostPort{};
      error(f.mark, f.path, "invalid address " + quoted(f.value.Scalar()) + ": " + why);
    }
  }

  void loadRoot(const Field& root) {
    Config& c = *cfg_;
    fields(root,
           {"workers", "drain_timeout", "drain_spread", "listeners", "upstreams", "routes",
            "limits", "timeouts", "log", "admin", "plugins"},
           {"listeners"}, [&](const std::string& key, const Field& f) {
             if (key == "workers") {
               int64_t v = 0;
               if (readInt(f, 0, config_range::kMaxWorkers, v))
                 c.workers = static_cast<unsigned>(v);
             } else if (key == "drain_timeout") {
               readDuration(f, c.drain_timeout);
             } else if (key == "drain_spread") {
               readDuration(f, c.drain_spread);
             } else if (key == "listeners") {
               items(f, [&](const Field& item) {
                 c.listeners.emplace_back();
                 loadListener(item, c.listeners.back());
               });
             } else if (key == "upstreams") {
               loadUpstreams(f);
             } else if (key == "routes") {
               items(f, [&](const Field& item) {
                 c.routes.emplace_back();
                 loadRoute(item, c.routes.back());
               });
             } else if (key == "limits") {
               loadLimits(f);
             } else if (key == "timeouts") {
               loadTimeouts(f);
             } else if (key == "log") {
               loadLog(f);
             } else if (key == "admin") {
               loadAdmin(f);
             } else if (key == "plugins") {
               loadPlugins(f, c.plugins);
             }
           });
  }

  void loadListener(const Field& item, ListenerConfig& l) {
    fields(item, {"name", "address", "backlog", "tls"}, {"name", "address"},
           [&](const std::string& key, const Field& f) {
             if (key == "name") {
               readString(f, l.name);
             } else if (key == "address") {
               readHostPort(f, true, l.address);
             } else if (key == "backlog") {
               int64_t v = 0;
               if (readInt(f, config_range::kMinBacklog, config_range::kMaxBacklog, v)) {
                 l.backlog = static_cast<int>(v);
               }
             } else if (key == "tls") {
               loadListenerTls(f, l.tls.emplace());
             }
           });
  }

  // `tls:` must be a map; its presence, even empty, is what turns TLS on.
  bool expectTlsMap(const Field& f) {
    if (f.value.IsMap()) return true;
    error(f.mark, f.path,
          std::string("expected a map, got ") + kindOf(f.value) +
              " (`tls: {}` enables TLS with the defaults; leave the key out for none)");
    return false;
  }

  void loadListenerTls(const Field& map, ListenerTlsConfig& t) {
    if (!expectTlsMap(map)) return;
    fields(map,
           {"certificates", "min_version", "ciphers", "ciphersuites", "groups", "session_tickets",
            "ticket_key_rotation", "client_auth", "record_offload"},
           {}, [&](const std::string& key, const Field& f) {
             if (key == "certificates") {
               items(f, [&](const Field& item) {
                 t.certificates.emplace_back();  // kept even if broken: indexes stay aligned
                 loadCertificate(item, t.certificates.back());
               });
             } else if (key == "min_version") {
               readTlsVersion(f, t.min_version);
             } else if (key == "ciphers") {
               readNonEmptyString(f, t.ciphers);
             } else if (key == "ciphersuites") {
               readNonEmptyString(f, t.ciphersuites);
             } else if (key == "groups") {
               readNonEmptyString(f, t.groups);
             } else if (key == "session_tickets") {
               readBool(f, t.session_tickets);
             } else if (key == "ticket_key_rotation") {
               readDuration(f, t.ticket_key_rotation);
             } else if (key == "record_offload") {
               readBool(f, t.record_offload);
             } else if (key == "client_auth") {
               loadClientAuth(f, t.client_auth.emplace());
             }
           });
  }

  void loadCertificate(const Field& map, TlsCertificateConfig& c) {
    fields(map, {"cert", "key", "server_names"}, {"cert", "key"},
           [&](const std::string& key, const Field& f) {
             if (key == "cert") {
               readFile(f, c.cert);
             } else if (key == "key") {
               readFile(f, c.key);
             } else if (key == "server_names") {
               items(f, [&](const Field& name) {
                 c.server_names.emplace_back();  // kept even if broken: indexes stay aligned
                 readString(name, c.server_names.back());
               });
             }
           });
  }

  void readTlsVersion(const Field& f, TlsVersion& out) {
    std::string s;
    if (!readString(f, s)) return;
    if (s == "1.2" || s == "TLSv1.2") {
      out = TlsVersion::Tls12;
    } else if (s == "1.3" || s == "TLSv1.3") {
      out = TlsVersion::Tls13;
    } else if (s == "1.0" || s == "1.1" || s == "TLSv1" || s == "TLSv1.0" || s == "TLSv1.1") {
      error(f.mark, f.path,
            "TLS version " + quoted(s) +
                " is not supported (expected \"1.2\" or \"1.3\", or TLSv1.2 / TLSv1.3)");
    } else {
      error(f.mark, f.path,
            "unknown TLS version " + quoted(s) +
                " (expected \"1.2\" or \"1.3\", or TLSv1.2 / TLSv1.3)");
    }
  }

  void loadClientAuth(const Field& map, TlsClientAuthConfig& a) {
    fields(map, {"ca", "required", "headers"}, {"ca"}, [&](const std::string& key, const Field& f) {
      if (key == "ca") {
        if (f.value.IsScalar() && f.value.Scalar() == "system") {
          error(f.mark, f.path,
                "\"system\" is not allowed here: name the PEM file of the CAs that issue your "
                "client certificates");
          return;
        }
        readFile(f, a.ca);
      } else if (key == "required") {
        readBool(f, a.required);
      } else if (key == "headers") {
        ClientCertHeaders& h = a.headers;
        fields(f, {"subject", "sans", "fingerprint"}, {},
               [&](const std::string& name, const Field& v) {
                 if (name == "subject") {
                   readString(v, h.subject);
                 } else if (name == "sans") {
                   readString(v, h.sans);
                 } else if (name == "fingerprint") {
                   readString(v, h.fingerprint);
                 }
               });
      }
    });
  }

  void loadUpstreamTls(const Field& map, UpstreamTlsConfig& t) {
    if (!expectTlsMap(map)) return;
    fields(map, {"ca", "server_name", "verify", "cert", "key", "record_offload"}, {},
           [&](const std::string& key, const Field& f) {
             if (key == "ca") {
               readFile(f, t.ca, true);
             } else if (key == "server_name") {
               readNonEmptyString(f, t.server_name);
             } else if (key == "verify") {
               readBool(f, t.verify);
             } else if (key == "cert") {
               readFile(f, t.cert);
             } else if (key == "key") {
               readFile(f, t.key);
             } else if (key == "record_offload") {
               readBool(f, t.record_offload);
             }
           });
  }

  void loadUpstreams(const Field& map) {
    entries(map, [&](const std::string& name, const Field& f, const Node& k) {
      marks_[f.path] = k.Mark();  // errors about an upstream as a whole concern its name
      UpstreamConfig u;
      u.name = name;
      fields(f, {"endpoints", "connect_timeout", "handshake_timeout", "tls"}, {"endpoints"},
             [&](const std::string& key, const Field& v) {
               if (key == "endpoints") {
                 items(v, [&](const Field& ep) {
                   u.endpoints.emplace_back();  // kept even if invalid: indexes stay aligned
                   readHostPort(ep, false, u.endpoints.back());
                 });
               } else if (key == "connect_timeout") {
                 readDuration(v, u.connect_timeout);
               } else if (key == "handshake_timeout") {
                 readDuration(v, u.handshake_timeout);
               } else if (key == "tls") {
                 loadUpstreamTls(v, u.tls.emplace());
               }
             });
      // Registered even when broken, so routes naming it do not also get "unknown upstream".
      cfg_->upstreams.emplace(name, std::move(u));
    });
  }

  void loadRoute(const Field& item, RouteConfig& r) {
    fields(item,
           {"name", "match", "kind", "upstream", "mode", "response_timeout", "longpoll", "channel",
            "max_queue_bytes", "overflow", "overflow_notice", "sse", "plugins", "keepalive",
            "compression"},
           {"name"}, [&](const std::string& key, const Field& f) {
             if (key == "name") {
               readString(f, r.name);
             } else if (key == "match") {
               loadMatch(f, r.match);
             } else if (key == "kind") {
               std::string s;
               if (!readString(f, s)) return;
               if (s == "websocket") {
                 r.kind = RouteKind::WebSocket;
               } else if (s == "http") {
                 r.kind = RouteKind::Http;
               } else if (s == "longpoll") {
                 r.kind = RouteKind::LongPoll;
               } else if (s == "channel") {
                 r.kind = RouteKind::Channel;
               } else if (s == "tcp") {
                 r.kind = RouteKind::Tcp;
               } else {
                 error(f.mark, f.path,
                       "unknown route kind " + quoted(s) +
                           " (expected one of: websocket, http, longpoll, channel, tcp)");
               }
             } else if (key == "upstream") {
               readString(f, r.upstream);
             } else if (key == "mode") {
               std::string s;
               if (!readString(f, s)) return;
               if (s == "passthrough") {
                 r.mode = TunnelMode::Passthrough;
               } else if (s == "frames") {
                 r.mode = TunnelMode::Frames;
               } else {
                 error(f.mark, f.path,
                       "unknown tunnel mode " + quoted(s) + " (expected passthrough or frames)");
               }
             } else if (key == "response_timeout") {
               readDuration(f, r.response_timeout);
             } else if (key == "longpoll") {
               loadLongPoll(f, r.longpoll);
             } else if (key == "channel") {
               readNonEmptyString(f, r.channel);
             } else if (key == "max_queue_bytes") {
               readSize(f, r.max_queue_bytes);
             } else if (key == "overflow") {
               std::string s;
               bool read = readString(f, s);
               if (read && (s == "close" || s == "drop")) {
                 r.overflow = s == "drop" ? OverflowPolicy::Drop : OverflowPolicy::Close;
               } else {
                 if (read) {
                   error(f.mark, f.path,
                         "unknown overflow policy " + quoted(s) + " (expected close or drop)");
                 }
                 // overflow_notice is checked against this value: not knowing it, say nothing.
                 blocked_.push_back(parentPath(f.path) + ".overflow_notice");
               }
             } else if (key == "overflow_notice") {
               readNonEmptyString(f, r.overflow_notice);
             } else if (key == "sse") {
               readBool(f, r.sse);
             } else if (key == "plugins") {
               loadPlugins(f, r.plugins);
             } else if (key == "keepalive") {
               loadKeepalive(f, r.keepalive);
             } else if (key == "compression") {
               loadCompression(f, r.compression);
             }
           });
    // Only channel routes (fed by the publish API) have no upstream.
    bool has_upstream = item.value.IsMap() && item.value["upstream"];
    if (item.value.IsMap() && !has_upstream && r.kind != RouteKind::Channel) {
      error(item.mark, childPath(item.path, "upstream"), "required key is missing");
    }
  }

  void loadKeepalive(const Field& map, KeepaliveConfig& k) {
    fields(map, {"interval", "timeout", "peer_pings"}, {},
           [&](const std::string& key, const Field& f) {
             if (key == "interval") {
               readDuration(f, k.interval);
             } else if (key == "timeout") {
               readDuration(f, k.timeout);
             } else if (key == "peer_pings") {
               std::string s;
               if (!readString(f, s)) return;
               if (s == "forward") {
                 k.peer_pings = PeerPings::Forward;
               } else if (s == "answer") {
                 k.peer_pings = PeerPings::Answer;
               } else {
                 error(f.mark, f.path,
                       "unknown peer_pings " + quoted(s) + " (expected forward or answer)");
               }
             }
           });
  }

  void loadCompression(const Field& map, CompressionConfig& c) {
    c.enabled = true;
    fields(map,
           {"client", "upstream", "server_no_context_takeover", "client_max_window_bits",
            "max_memory"},
           {}, [&](const std::string& key, const Field& f) {
             if (key == "client") {
               readBool(f, c.client);
             } else if (key == "upstream") {
               readBool(f, c.upstream);
             } else if (key == "server_no_context_takeover") {
               readBool(f, c.server_no_context_takeover);
             } else if (key == "client_max_window_bits") {
               int64_t v = 0;
               if (readInt(f, 8, 15, v)) c.client_max_window_bits = static_cast<uint8_t>(v);
             } else if (key == "max_memory") {
               readSize(f, c.max_memory);
             }
           });
  }

  // `plugins:` (global or per route), run in this order. Each entry names a built-in or, with
  // `path:`, a shared object (resolved like other files, loaded by the plugin host, which also
  // checks the names); its `config:` subtree goes to the plugin as YAML text, and `where` is the
  // entry's file:line:col, which prefixes the plugin's own config errors.
  void loadPlugins(const Field& seq, std::vector<PluginConfig>& out) {
    items(seq, [&](const Field& item) {
      PluginConfig p;
      p.where = source_ + ":" + std::to_string(item.mark.line + 1) + ":" +
                std::to_string(item.mark.column + 1);
      fields(item, {"name", "path", "config"}, {"name"},
             [&](const std::string& key, const Field& f) {
               if (key == "name") {
                 readNonEmptyString(f, p.name);
               } else if (key == "path") {
                 if (readNonEmptyString(f, p.path) && p.path.front() != '/') {
                   p.path = base_dir_ + p.path;
                 }
               } else if (key == "config" && !f.value.IsNull()) {
                 p.config_yaml = YAML::Dump(f.value) + "\n";
               }
             });
      out.push_back(std::move(p));
    });
  }

  void loadLongPoll(const Field& map, LongPollConfig& lp) {
    fields(map,
           {"channel", "poll", "method", "headers", "timeout", "cursor", "split", "send", "grace",
            "backoff", "forward_headers", "poll_forward_headers", "max_response_bytes"},
           {"poll"}, [&](const std::string& key, const Field& f) {
             if (key == "channel") {
               readNonEmptyString(f, lp.channel);
             } else if (key == "poll") {
               readNonEmptyString(f, lp.poll);
             } else if (key == "method") {
               readNonEmptyString(f, lp.method);
             } else if (key == "headers") {
               entries(f, [&](const std::string& name, const Field& v, const Node&) {
                 std::string value;
                 if (readString(v, value)) lp.headers.emplace_back(name, value);
               });
             } else if (key == "timeout") {
               readDuration(f, lp.timeout);
             } else if (key == "cursor") {
               fields(f, {"header", "json", "initial"}, {},
                      [&](const std::string& k, const Field& v) {
                        if (k == "header") {
                          readNonEmptyString(v, lp.cursor_header);
                        } else if (k == "json") {
                          readNonEmptyString(v, lp.cursor_json);
                        } else if (k == "initial") {
                          readString(v, lp.cursor_initial);
                        }
                      });
             } else if (key == "split") {
               std::string s;
               if (!readString(f, s)) return;
               if (s == "json_array") {
                 lp.split_json_array = true;
               } else if (s == "body") {
                 lp.split_json_array = false;
               } else {
                 error(f.mark, f.path,
                       "unknown split " + quoted(s) + " (expected body or json_array)");
               }
             } else if (key == "send") {
               readNonEmptyString(f, lp.send);
             } else if (key == "grace") {
               readDuration(f, lp.grace);
             } else if (key == "backoff") {
               fields(f, {"initial", "max"}, {}, [&](const std::string& k, const Field& v) {
                 readDuration(v, k == "initial" ? lp.backoff_initial : lp.backoff_max);
               });
             } else if (key == "max_response_bytes") {
               readSize(f, lp.max_response_bytes);
             } else if (key == "forward_headers" || key == "poll_forward_headers") {
               std::vector<std::string>& names =
                   key == "forward_headers" ? lp.forward_headers : lp.poll_forward_headers;
               names.clear();  // the list replaces the default
               items(f, [&](const Field& item) {
                 names.emplace_back();  // kept even if broken: indexes stay aligned
                 readNonEmptyString(item, names.back());
               });
             }
           });
  }

  void loadAdmin(const Field& map) {
    AdminConfig& a = cfg_->admin;
    a.enabled = true;
    if (map.value.IsNull()) return;  // "admin:" alone = defaults
    fields(map, {"address", "token", "max_body_bytes", "enabled"}, {},
           [&](const std::string& key, const Field& f) {
             if (key == "address") {
               readHostPort(f, true, a.address);
             } else if (key == "token") {
               readNonEmptyString(f, a.token);
             } else if (key == "max_body_bytes") {
               readSize(f, a.max_body_bytes);
             } else if (key == "enabled") {
               readBool(f, a.enabled);
             }
           });
  }

  void loadMatch(const Field& map, RouteMatch& m) {
    fields(map, {"path", "path_prefix", "host", "headers"}, {},
           [&](const std::string& key, const Field& f) {
             if (key == "path") {
               readString(f, m.path);
             } else if (key == "path_prefix") {
               readString(f, m.path_prefix);
             } else if (key == "host") {
               readString(f, m.host);
             } else if (key == "headers") {
               entries(f, [&](const std::string& name, const Field& v, const Node& k) {
                 marks_[v.path] = k.Mark();  // header checks are about the name
                 HeaderMatch h;
                 h.name = name;
                 if (v.value.IsNull()) {  // "X-Name: ~" or "X-Name:" = must be present
                   m.headers.push_back(std::move(h));
                 } else if (v.value.IsScalar()) {
                   h.value = v.value.Scalar();
                   m.headers.push_back(std::move(h));
                 } else {
                   error(v.mark, v.path,
                         std::string("expected a string or ~ (any value), got ") + kindOf(v.value));
                 }
               });
             }
           });
  }

  void loadLimits(const Field& map) {
    LimitsConfig& l = cfg_->limits;
    fields(map,
           {"max_head_bytes", "max_headers", "high_water", "max_response_head_bytes",
            "max_error_body_bytes", "max_message_size", "max_connections"},
           {}, [&](const std::string& key, const Field& f) {
             if (key == "max_head_bytes") {
               readSize(f, l.max_head_bytes);
             } else if (key == "max_headers") {
               int64_t v = 0;
               if (readInt(f, static_cast<int64_t>(config_range::kMinHeaders),
                           static_cast<int64_t>(config_range::kMaxHeaders), v)) {
                 l.max_headers = static_cast<size_t>(v);
               }
             } else if (key == "high_water") {
               readSize(f, l.high_water);
             } else if (key == "max_response_head_bytes") {
               readSize(f, l.max_response_head_bytes);
             } else if (key == "max_error_body_bytes") {
               readSize(f, l.max_error_body_bytes);
             } else if (key == "max_message_size") {
               readSize(f, l.max_message_size);
             } else if (key == "max_connections") {
               int64_t v = 0;
               if (readInt(f, 0, config_range::kMaxConnections, v))
                 l.max_connections = static_cast<uint64_t>(v);
             }
           });
  }

  void loadTimeouts(const Field& map) {
    TimeoutsConfig& t = cfg_->timeouts;
    fields(map, {"head", "idle", "half_close", "keepalive", "close", "plugin_pause", "send"}, {},
           [&](const std::string& key, const Field& f) {
             if (key == "head") {
               readDuration(f, t.head);
             } else if (key == "idle") {
               readDuration(f, t.idle);
             } else if (key == "half_close") {
               readDuration(f, t.half_close);
             } else if (key == "keepalive") {
               readDuration(f, t.keepalive);
             } else if (key == "close") {
               readDuration(f, t.close);
             } else if (key == "plugin_pause") {
               readDuration(f, t.plugin_pause);
             } else if (key == "send") {
               readDuration(f, t.send);
             }
           });
  }

  void loadLog(const Field& map) {
    LogConfig& l = cfg_->log;
    fields(map, {"level", "access_log"}, {}, [&](const std::string& key, const Field& f) {
      if (key == "level") {
        std::string s;
        if (!readString(f, s)) return;
        static constexpr std::pair<const char*, LogLevel> kLevels[] = {{"debug", LogLevel::Debug},
                                                                       {"info", LogLevel::Info},
                                                                       {"warn", LogLevel::Warn},
                                                                       {"error", LogLevel::Error}};
        for (const auto& [name, level] : kLevels) {
          if (s == name) {
            l.level = level;
            return;
          }
        }
        error(f.mark, f.path,
              "unknown log level " + quoted(s) + " (expected one of: debug, info, warn, error)");
      } else if (key == "access_log") {
        readBool(f, l.access_log);
      }
    });
  }

  std::string source_;
  std::string base_dir_;  // prefix for relative file names: "" or ending in '/'
  std::shared_ptr<Config> cfg_ = std::make_shared<Config>();
  std::vector<ConfigError> errors_;
  std::vector<std::string> blocked_;         // paths whose errors make later checks moot
  std::map<std::string, YAML::Mark> marks_;  // key path -> mark, for validateConfig() errors
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

[[noreturn]] void throwFileError(const std::string& path, const std::string& what) {
  ConfigError e;
  e.file = path;
  e.message = what;
  throw ConfigErrors({std::move(e)});
}

}  // namespace

std::shared_ptr<const Config> loadConfigString(std::string_view yaml,
                                               const std::string& source_name) {
  return Loader(source_name).load(yaml);
}

std::shared_ptr<const Config> loadConfigFile(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) throwFileError(path, std::string("cannot open file: ") + std::strerror(errno));
  std::string data;
  char buf[16384];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) {
    data.append(buf, n);
    // A config is small; this stops "-c /dev/zero" from eating memory.
    if (data.size() > kMaxFileBytes) throwFileError(path, "file is larger than 16MiB");
  }
  if (std::ferror(f.get())) {
    throwFileError(path, std::string("cannot read file: ") + std::strerror(errno));
  }
  return loadConfigString(data, path);
}

}  // namespace upgate
