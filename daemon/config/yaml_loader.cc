// YAML loader: walks the document with yaml-cpp, checks every key against
// kConfigKeys and every value's type, recording lines for Resolve().
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <exception>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/loader_internal.h"
#include "util/log_fields.h"

namespace mqs::config {
namespace internal {
namespace {

// What a node is, for "got ..." in errors.
std::string Got(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    default:
      return "nothing";
  }
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string UnknownKeyMessage(std::string_view key, const std::vector<std::string_view>& known) {
  std::string out = Cat("unknown key; expected one of: ", Join(known, ", "));
  for (std::string_view k : known) {
    if (EditDistance(key, k) <= 2) {
      Append(&out, " (did you mean \"", k, "\"?)");
      break;
    }
  }
  return out;
}

int YamlReader::Line(const YAML::Node& node) const {
  if (fixed_line_ > 0) return fixed_line_;
  const YAML::Mark mark = node.Mark();
  return mark.line < 0 ? 0 : mark.line + 1;
}

template <typename Fn>
void YamlReader::ForEachKey(const YAML::Node& node, std::string_view pattern,
                            const std::string& canonical, const std::string& display, Fn fn) {
  const std::vector<std::string_view> known = ChildKeys(pattern);
  std::map<std::string, int> seen;  // key -> line, for duplicates (yaml-cpp keeps both)
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      diag_.Error(Line(key), display.empty() ? "(top level)" : display,
                  Cat("expected a key name, got ", Got(key)));
      continue;
    }
    const std::string& name = key.Scalar();
    const std::string key_canonical = canonical.empty() ? name : Cat(canonical, ".", name);
    const std::string key_display = display.empty() ? name : Cat(display, ".", name);
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      diag_.Error(Line(key), key_display, UnknownKeyMessage(name, known));
      continue;
    }
    auto [first, inserted] = seen.emplace(name, Line(key));
    if (!inserted) {
      diag_.Error(Line(key), key_display, Cat("duplicate key (first at line ", first->second, ")"));
      continue;
    }
    diag_.Note(key_canonical, Line(key), key_display);
    fn(name, key_display, value);
  }
}

bool YamlReader::ExpectMap(const YAML::Node& node, const std::string& display,
                           std::string_view what) {
  if (node.IsMap()) return true;
  if (!node.IsNull()) {
    diag_.Error(Line(node), display, Cat("expected ", what, ", got ", Got(node)));
  }
  return false;
}

std::optional<std::string> YamlReader::String(const YAML::Node& node, const std::string& display,
                                              bool allow_empty) {
  if (node.IsNull()) return std::nullopt;  // `key:` with no value: the default
  if (!node.IsScalar()) {
    diag_.Error(Line(node), display, Cat("expected a string, got ", Got(node)));
    return std::nullopt;
  }
  if (!allow_empty && node.Scalar().empty()) {
    diag_.Error(Line(node), display,
                "expected a non-empty name, got \"\" (omit the key to get the default)");
    return std::nullopt;
  }
  return node.Scalar();
}

std::optional<std::vector<std::string>> YamlReader::StringList(const YAML::Node& node,
                                                               const std::string& display,
                                                               std::string_view what) {
  if (node.IsNull()) return std::nullopt;
  if (node.IsScalar()) return std::vector<std::string>{node.Scalar()};
  if (!node.IsSequence()) {
    diag_.Error(Line(node), display,
                Cat("expected a ", what, " or a list of them, got ", Got(node)));
    return std::nullopt;
  }
  if (node.size() == 0) {
    diag_.Error(Line(node), display, Cat("expected at least one ", what, ", got []"));
    return std::nullopt;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    if (!item.IsScalar()) {
      diag_.Error(Line(item), Cat(display, "[", i, "]"),
                  Cat("expected a ", what, ", got ", Got(item)));
      ok = false;
      continue;
    }
    out.push_back(item.Scalar());
  }
  if (!ok) return std::nullopt;
  return out;
}

std::optional<std::chrono::milliseconds> YamlReader::Duration(const YAML::Node& node,
                                                              const std::string& display) {
  if (node.IsNull()) return std::nullopt;
  std::optional<std::chrono::milliseconds> d;
  if (node.IsScalar()) d = ParseDuration(node.Scalar());
  if (!d) diag_.Error(Line(node), display, Cat(kDurationExpected, ", got ", Got(node)));
  return d;
}

std::optional<bool> YamlReader::Bool(const YAML::Node& node, const std::string& display) {
  if (node.IsNull()) return std::nullopt;
  if (node.IsScalar() && (node.Scalar() == "true" || node.Scalar() == "false")) {
    return node.Scalar() == "true";
  }
  diag_.Error(Line(node), display, Cat("expected true or false, got ", Got(node)));
  return std::nullopt;
}

namespace {

// Notes each list element's own line, so that Resolve() errors point at it.
void NoteItems(Diagnostics& diag, const YAML::Node& node, std::string_view canonical,
               const std::string& display, int fixed_line) {
  for (size_t i = 0; node.IsSequence() && i < node.size(); ++i) {
    const YAML::Mark mark = node[i].Mark();
    const int line = fixed_line > 0 ? fixed_line : mark.line + 1;
    diag.Note(Cat(canonical, "[", i, "]"), line, Cat(display, "[", i, "]"));
  }
}

std::optional<uint32_t> Uint(Diagnostics& diag, int line, const YAML::Node& node,
                             const std::string& display, uint32_t min, uint32_t max) {
  if (node.IsNull()) return std::nullopt;
  std::optional<uint64_t> n;
  if (node.IsScalar()) n = ParseUint(node.Scalar(), max);
  if (!n || *n < min) {
    diag.Error(line, display, Cat("expected an integer ", min, "..", max, ", got ", Got(node)));
    return std::nullopt;
  }
  return static_cast<uint32_t>(*n);
}

}  // namespace

void YamlReader::ReadRoot(const YAML::Node& root) {
  if (!ExpectMap(root, "(top level)", "a map of settings (listen, broker, producers, ...)")) {
    return;
  }
  ForEachKey(root, "", "", "",
             [&](const std::string& key, const std::string& display, const YAML::Node& value) {
               if (key == "listen") {
                 ReadListen(value, display);
               } else if (key == "broker") {
                 ReadBroker(value);
               } else if (key == "producers") {
                 ReadProducers(value, display);
               } else if (key == "consumers") {
                 ReadConsumers(value, display);
               } else if (key == "publish") {
                 ReadPublish(value);
               } else if (key == "log") {
                 ReadLog(value);
               } else if (key == "limits") {
                 ReadLimits(value);
               } else if (key == "identity" || key == "ping" || key == "tasks" || key == "socket" ||
                          key == "tcp" || key == "metrics") {
                 ReadSection(value, key);
               } else if (key == "access") {
                 ReadAccess(value);
               } else if (key == "shutdown") {
                 if (!ExpectMap(value, "shutdown", "a map (drain)")) return;
                 ForEachKey(value, "shutdown", "shutdown", "shutdown",
                            [&](const std::string& k, const std::string& d, const YAML::Node& v) {
                              if (k != "drain") return;
                              if (auto t = Duration(v, d)) config_.shutdown.drain = *t;
                            });
               }
             });
}

// access: client name -> who it is and what it may use. A map keyed by
// name, so a name given twice is a duplicate key.
void YamlReader::ReadAccess(const YAML::Node& node) {
  config_.access.enabled = true;
  if (!ExpectMap(node, "access",
                 "a map of client name -> settings (socket, token_file, "
                 "cert_subject, publish, subscribe, reload)")) {
    return;
  }
  std::map<std::string, int> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      diag_.Error(Line(key), "access", Cat("expected a client name, got ", Got(key)));
      continue;
    }
    const std::string& name = key.Scalar();
    const std::string path = BusinessPath("access", name);
    auto [first, inserted] = seen.emplace(name, Line(key));
    if (!inserted) {
      diag_.Error(Line(key), path, Cat("duplicate client (first at line ", first->second, ")"));
      continue;
    }
    diag_.Note(path, Line(key), path);
    AccessClient client;
    client.name = name;
    if (!ExpectMap(value, path,
                   "a map (socket, token_file, cert_subject, publish, subscribe, reload)")) {
      if (value.IsNull()) diag_.Error(Line(key), path, "expected settings, got nothing");
      continue;
    }
    ForEachKey(value, "access.<client>", path, path,
               [&](const std::string& k, const std::string& d, const YAML::Node& v) {
                 if (k == "socket") {
                   if (auto str = String(v, d, true)) client.socket = *str;
                 } else if (k == "socket_mode") {
                   std::optional<std::string> str = String(v, d, false);
                   if (!str) return;
                   if (str->size() >= 3 && str->size() <= 4 &&
                       str->find_first_not_of("01234567") == std::string::npos) {
                     client.socket_mode = static_cast<uint32_t>(std::stoul(*str, nullptr, 8));
                   } else {
                     diag_.Error(Line(v), d,
                                 Cat("expected an octal mode like \"0660\", got ", Quote(*str)));
                   }
                 } else if (k == "socket_group") {
                   if (auto str = String(v, d, true)) client.socket_group = *str;
                 } else if (k == "token_file") {
                   if (auto str = String(v, d, true)) client.token_file = *str;
                 } else if (k == "cert_subject") {
                   if (auto str = String(v, d, true)) client.cert_subject = *str;
                 } else if (k == "publish") {
                   if (auto list = StringList(v, d, "business name or pattern")) {
                     client.publish = std::move(*list);
                   }
                 } else if (k == "subscribe") {
                   if (auto list = StringList(v, d, "business name or pattern")) {
                     client.subscribe = std::move(*list);
                   }
                 } else if (k == "reload") {
                   if (auto b = Bool(v, d)) client.reload = *b;
                 }
               });
    config_.access.clients.push_back(std::move(client));
  }
}

void YamlReader::ReadBroker(const YAML::Node& node) {
  if (!ExpectMap(node, "broker", "a map (uris, heartbeat, connect_timeout, tls)")) return;
  ForEachKey(node, "broker", "broker", "broker",
             [&](const std::string& key, const std::string& display, const YAML::Node& value) {
               if (key == "uris") {
                 ReadUris(value, display);
               } else if (key == "heartbeat") {
                 ReadHeartbeat(value, display);
               } else if (key == "connect_timeout") {
                 ReadConnectTimeout(value, display);
               } else if (key == "password_file") {
                 if (auto s = String(value, display, true)) config_.broker.password_file = *s;
               } else if (key == "tls") {
                 ReadSection(value, "broker.tls");
               }
             });
}

void YamlReader::ReadPublish(const YAML::Node& node) {
  if (!ExpectMap(node, "publish", "a map (window, republish_unconfirmed, wait_timeout)")) return;
  ForEachKey(node, "publish", "publish", "publish",
             [&](const std::string& key, const std::string& display, const YAML::Node& value) {
               if (key == "window") {
                 ReadWindow(value, display);
               } else if (key == "republish_unconfirmed") {
                 if (auto b = Bool(value, display)) config_.publish.republish_unconfirmed = *b;
               } else if (key == "wait_timeout") {
                 if (auto d = Duration(value, display)) config_.publish.wait_timeout = *d;
               }
             });
}

void YamlReader::ReadLimits(const YAML::Node& node) {
  if (!ExpectMap(node, "limits", Cat("a map (", Join(ChildKeys("limits"), ", "), ")"))) return;
  ForEachKey(node, "limits", "limits", "limits",
             [&](const std::string& key, const std::string& display, const YAML::Node& value) {
               ReadLimitKey(key, value, display);
             });
}

void YamlReader::ReadLimitKey(std::string_view key, const YAML::Node& node,
                              const std::string& display) {
  // Each key's own range; the checks across keys are Resolve()'s.
  struct Row {
    std::string_view key;
    uint32_t Limits::*value;
    uint32_t min, max;
  };
  static constexpr Row kRows[] = {
      {"max_payload_bytes", &Limits::max_payload_bytes, 1, kMaxPayloadBytesLimit},
      {"max_headers", &Limits::max_headers, 0, kMaxHeadersLimit},
      {"max_header_bytes", &Limits::max_header_bytes, 0, kMaxHeaderBytesLimit},
      {"max_routing_key_bytes", &Limits::max_routing_key_bytes, 1, 255},
      {"max_message_id_bytes", &Limits::max_message_id_bytes, 1, 255},
      {"max_streams_per_connection", &Limits::max_streams_per_connection, 1, kMaxStreamsLimit},
      {"max_prefetch", &Limits::max_prefetch, 1, 65535},
      {"max_batch_messages", &Limits::max_batch_messages, 1, kMaxBatchMessagesLimit},
  };
  for (const Row& row : kRows) {
    if (row.key != key) continue;
    if (auto n = Uint(diag_, Line(node), node, display, row.min, row.max)) {
      config_.limits.*row.value = *n;
    }
  }
}

void YamlReader::ReadLog(const YAML::Node& node) {
  if (!ExpectMap(node, "log", "a map (level, format)")) return;
  ForEachKey(node, "log", "log", "log",
             [&](const std::string& key, const std::string& display, const YAML::Node& value) {
               if (key == "level") ReadLogLevel(value, display);
               if (key == "format") ReadLogFormat(value, display);
             });
}

void YamlReader::ReadSection(const YAML::Node& node, std::string_view section) {
  const std::string name(section);
  if (!ExpectMap(node, name, Cat("a map (", Join(ChildKeys(section), ", "), ")"))) return;
  ForEachKey(node, section, name, name,
             [&](const std::string& key, const std::string& display, const YAML::Node& value) {
               ReadControlKey(Cat(section, ".", key), value, display);
             });
}

void YamlReader::ReadControlKey(std::string_view canonical, const YAML::Node& node,
                                const std::string& display) {
  if (canonical == "identity.app" || canonical == "identity.region" ||
      canonical == "identity.server") {
    // Empty is "not set" inside Identity, so an explicit "" must not pass
    // for one; Resolve() checks the characters (overrides too).
    std::optional<std::string> s = String(node, display, false);
    if (!s) return;
    if (canonical == "identity.app") {
      config_.identity.app = std::move(*s);
    } else if (canonical == "identity.region") {
      config_.identity.region = std::move(*s);
    } else {
      config_.identity.server = std::move(*s);
    }
  } else if (canonical == "ping.business") {
    if (auto s = String(node, display, true)) config_.ping.business = *s;
  } else if (canonical == "ping.interval") {
    if (auto d = Duration(node, display)) config_.ping.interval = *d;
  } else if (canonical == "ping.fleet") {
    if (auto b = Bool(node, display)) config_.ping.fleet = *b;
  } else if (canonical == "tasks.results") {
    if (auto s = String(node, display, true)) config_.tasks.results = *s;
  } else if (canonical == "socket.mode") {
    // Octal digits as written ("0660", or 0660 unquoted, which YAML 1.2
    // would read as decimal 660).
    if (auto s = String(node, display, false)) {
      const bool octal =
          s->size() >= 3 && s->size() <= 4 && s->find_first_not_of("01234567") == std::string::npos;
      if (octal) {
        config_.socket.mode = static_cast<uint32_t>(std::stoul(*s, nullptr, 8));
      } else {
        diag_.Error(Line(node), display,
                    Cat("expected an octal mode like \"0660\", got ", Quote(*s)));
      }
    }
  } else if (canonical == "socket.group") {
    if (auto s = String(node, display, true)) config_.socket.group = *s;
  } else if (canonical == "tcp.insecure") {
    if (auto b = Bool(node, display)) config_.tcp.insecure = *b;
  } else if (canonical == "tcp.tls") {
    ReadSection(node, "tcp.tls");
  } else if (canonical == "tcp.tls.cert") {
    if (auto s = String(node, display, true)) config_.tcp.tls.cert = *s;
  } else if (canonical == "tcp.tls.key") {
    if (auto s = String(node, display, true)) config_.tcp.tls.key = *s;
  } else if (canonical == "tcp.tls.client_ca") {
    if (auto s = String(node, display, true)) config_.tcp.tls.client_ca = *s;
  } else if (canonical == "broker.tls.ca") {
    if (auto s = String(node, display, true)) config_.broker.tls.ca = *s;
  } else if (canonical == "broker.tls.cert") {
    if (auto s = String(node, display, true)) config_.broker.tls.cert = *s;
  } else if (canonical == "broker.tls.key") {
    if (auto s = String(node, display, true)) config_.broker.tls.key = *s;
  } else if (canonical == "broker.tls.verify") {
    if (auto b = Bool(node, display)) config_.broker.tls.verify = *b;
  } else if (canonical == "metrics.listen") {
    if (auto s = String(node, display, true)) config_.metrics.listen = *s;
  }
}

void YamlReader::ReadListen(const YAML::Node& node, const std::string& display) {
  if (auto list = StringList(node, display, "listen address")) {
    config_.listen = std::move(*list);
    NoteItems(diag_, node, "listen", display, fixed_line_);
  }
}

void YamlReader::ReadUris(const YAML::Node& node, const std::string& display) {
  if (auto list = StringList(node, display, "broker URI")) {
    config_.broker.uris = std::move(*list);
    NoteItems(diag_, node, "broker.uris", display, fixed_line_);
  }
}

void YamlReader::ReadHeartbeat(const YAML::Node& node, const std::string& display) {
  if (auto d = Duration(node, display)) config_.broker.heartbeat = *d;
}

void YamlReader::ReadConnectTimeout(const YAML::Node& node, const std::string& display) {
  if (auto d = Duration(node, display)) config_.broker.connect_timeout = *d;
}

void YamlReader::ReadWindow(const YAML::Node& node, const std::string& display) {
  if (auto n = Uint(diag_, Line(node), node, display, 1, 65535)) config_.publish.window = *n;
}

void YamlReader::ReadLogLevel(const YAML::Node& node, const std::string& display) {
  if (node.IsNull()) return;
  if (node.IsScalar()) {
    if (std::optional<std::string> level = ParseLogLevel(node.Scalar())) {
      config_.log_level = std::move(*level);
      return;
    }
  }
  diag_.Error(Line(node), display,
              Cat("expected trace, debug, info, warn or error (any case), got ", Got(node)));
}

void YamlReader::ReadLogFormat(const YAML::Node& node, const std::string& display) {
  if (node.IsNull()) return;
  if (node.IsScalar()) {
    if (std::optional<util::LogFormat> f = util::ParseLogFormat(node.Scalar())) {
      config_.log_format = *f == util::LogFormat::kJson ? "json" : "text";
      return;
    }
  }
  diag_.Error(Line(node), display, Cat("expected text or json (any case), got ", Got(node)));
}

namespace {

// Iterates the business map `node`, calling fn(name, canonical, display, value)
// once per business; duplicates and non-map entries are errors.
template <typename Fn>
void ForEachBusiness(Diagnostics& diag, const YAML::Node& node, std::string_view canonical_root,
                     std::string_view display_root, int fixed_line, Fn fn) {
  auto line = [&](const YAML::Node& n) {
    return fixed_line > 0 ? fixed_line : std::max(n.Mark().line + 1, 0);
  };
  if (node.IsNull()) return;
  if (!node.IsMap()) {
    diag.Error(line(node), std::string(display_root),
               Cat("expected a map of business name -> settings, got ", Got(node)));
    return;
  }
  std::map<std::string, int> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      diag.Error(line(key), std::string(display_root),
                 Cat("expected a business name, got ", Got(key)));
      continue;
    }
    const std::string& name = key.Scalar();
    const std::string canonical = BusinessPath(canonical_root, name);
    const std::string display = BusinessPath(display_root, name);
    auto [first, inserted] = seen.emplace(name, line(key));
    if (!inserted) {
      diag.Error(line(key), display, Cat("duplicate business (first at line ", first->second, ")"));
      continue;
    }
    diag.Note(canonical, line(key), display);
    if (!value.IsNull() && !value.IsMap()) {
      diag.Error(line(value), display,
                 Cat("expected a map of settings (or nothing for all defaults), got ", Got(value)));
    }
    fn(name, canonical, display, value);
  }
}

}  // namespace

void YamlReader::ReadProducers(const YAML::Node& node, std::string_view display_root) {
  ForEachBusiness(diag_, node, "producers", display_root, fixed_line_,
                  [&](const std::string& name, const std::string& canonical,
                      const std::string& display, const YAML::Node& value) {
                    Producer p;
                    p.name = name;
                    if (value.IsMap()) {
                      ForEachKey(
                          value, "producers.<business>", canonical, display,
                          [&](const std::string& key, const std::string& d, const YAML::Node& v) {
                            if (key == "exchange") {
                              if (auto s = String(v, d, false)) p.exchange = *s;
                            } else if (key == "handle") {
                              if (auto s = String(v, d, true)) p.handle = *s;
                            }
                          });
                    }
                    config_.producers.push_back(std::move(p));
                  });
}

void YamlReader::ReadConsumers(const YAML::Node& node, std::string_view display_root) {
  ForEachBusiness(
      diag_, node, "consumers", display_root, fixed_line_,
      [&](const std::string& name, const std::string& canonical, const std::string& display,
          const YAML::Node& value) {
        Consumer c;
        c.name = name;
        if (value.IsMap()) {
          ForEachKey(value, "consumers.<business>", canonical, display,
                     [&](const std::string& key, const std::string& d, const YAML::Node& v) {
                       if (key == "exchange") {
                         if (auto s = String(v, d, false)) c.exchange = *s;
                       } else if (key == "queue") {
                         if (auto s = String(v, d, false)) c.queue = *s;
                       } else if (key == "binding_keys") {
                         if (auto list = StringList(v, d, "binding key")) c.binding_keys = *list;
                       } else if (key == "queue_type") {
                         if (v.IsNull()) return;
                         if (v.IsScalar() && v.Scalar() == "quorum") {
                           c.queue_type = QueueType::kQuorum;
                         } else if (v.IsScalar() && v.Scalar() == "classic") {
                           c.queue_type = QueueType::kClassic;
                         } else {
                           diag_.Error(Line(v), d, Cat("expected quorum or classic, got ", Got(v)));
                         }
                       } else if (key == "prefetch") {
                         if (auto n = Uint(diag_, Line(v), v, d, 1, 65535)) c.prefetch = *n;
                       } else if (key == "max_deliveries") {
                         if (auto n = Uint(diag_, Line(v), v, d, 0, 2147483647)) {
                           c.max_deliveries = *n;
                         }
                       } else if (key == "dead_letter") {
                         if (auto b = Bool(v, d)) c.dead_letter = *b;
                       } else if (key == "single_active") {
                         if (auto b = Bool(v, d)) c.single_active = *b;
                       } else if (key == "handle") {
                         if (auto s = String(v, d, true)) c.handle = *s;
                       } else if (key == "retry") {
                         ReadRetry(v, Cat(canonical, ".retry"), d, c.retry);
                       }
                     });
        }
        config_.consumers.push_back(std::move(c));
      });
}

void YamlReader::ReadRetry(const YAML::Node& node, const std::string& canonical,
                           const std::string& display, Retry& retry) {
  // Unlike other keys, no value is not "the default": there are no default
  // delays, and `retry:` alone must not silently mean no retry.
  if (node.IsNull()) {
    diag_.Error(Line(node), display,
                "expected a map like {delays: [1s, 10s, 1m], max_attempts: 4}, got nothing");
    return;
  }
  if (!ExpectMap(node, display, "a map like {delays: [1s, 10s, 1m], max_attempts: 4}")) return;
  bool delays_given = false;
  ForEachKey(node, "consumers.<business>.retry", canonical, display,
             [&](const std::string& key, const std::string& d, const YAML::Node& v) {
               if (key == "delays") {
                 delays_given = true;
                 if (v.IsNull()) {
                   diag_.Error(Line(v), d, "expected at least one retry delay, got nothing");
                   return;
                 }
                 std::optional<std::vector<std::string>> list = StringList(v, d, "retry delay");
                 if (!list) return;
                 NoteItems(diag_, v, Cat(canonical, ".delays"), d, fixed_line_);
                 std::vector<std::chrono::milliseconds> delays;
                 for (size_t i = 0; i < list->size(); ++i) {
                   if (std::optional<std::chrono::milliseconds> t = ParseDuration((*list)[i])) {
                     delays.push_back(*t);
                     continue;
                   }
                   const YAML::Node item = v.IsSequence() ? v[i] : v;
                   diag_.Error(Line(item), v.IsSequence() ? Cat(d, "[", i, "]") : d,
                               Cat(kDurationExpected, ", got ", Quote((*list)[i])));
                 }
                 // Partly valid: nothing, so that Resolve() adds no errors of its own.
                 if (delays.size() == list->size()) retry.delays = std::move(delays);
               } else if (key == "max_attempts") {
                 if (v.IsNull()) return;
                 std::optional<uint64_t> n;
                 if (v.IsScalar()) n = ParseUint(v.Scalar(), 2147483647);
                 if (!n || *n < 2) {
                   diag_.Error(Line(v), d,
                               Cat("expected an integer 2..2147483647 (the first delivery and at "
                                   "least one retry), got ",
                                   Got(v)));
                   return;
                 }
                 retry.max_attempts = static_cast<uint32_t>(*n);
               }
             });
  if (!delays_given) {
    diag_.Error(Line(node), display,
                "expected delays (e.g. delays: [1s, 10s, 1m]): retry needs at least one delay");
  }
}

}  // namespace internal

using internal::Cat;

namespace {

// Records where each document of a stream starts, for the pre-pass below;
// every other event is ignored.
class DocumentStarts : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  std::vector<YAML::Mark> marks;
};

}  // namespace

absl::StatusOr<Config> LoadYamlText(std::string_view text, std::string_view filename,
                                    const LoadOptions& options) {
  internal::Diagnostics diag(filename);
  Config config;
  auto line_of = [](const YAML::Mark& mark) { return mark.line < 0 ? 0 : mark.line + 1; };
  std::optional<YAML::Node> root;  // none for an empty stream
  try {
    // Count the documents first, without YAML::LoadAll: on a stray ',' at
    // the top level (",a: 1") yaml-cpp 0.7 yields an empty document without
    // consuming anything, forever, and LoadAll collects them until memory
    // runs out. A document starting where the previous one started is that.
    std::istringstream in{std::string(text)};
    YAML::Parser parser(in);
    DocumentStarts starts;
    while (parser.HandleNextDocument(starts)) {
      const size_t n = starts.marks.size();
      if (n >= 2 && starts.marks[n - 1].pos == starts.marks[n - 2].pos) {
        const YAML::Mark& at = starts.marks[n - 1];
        const size_t pos = static_cast<size_t>(std::max(at.pos, 0));
        diag.Error(
            line_of(at), "invalid YAML",
            Cat("unexpected ", internal::Quote(text.substr(pos, 1)), " at column ", at.column + 1));
        return diag.ToStatus();
      }
    }
    if (starts.marks.size() > 1) {
      diag.Error(line_of(starts.marks[1]), "invalid YAML",
                 Cat("expected one YAML document, got ", starts.marks.size()));
      return diag.ToStatus();
    }
    if (!starts.marks.empty()) root = YAML::Load(std::string(text));
  } catch (const YAML::DeepRecursion& e) {
    diag.Error(line_of(e.mark), "invalid YAML",
               Cat("nesting deeper than ", internal::kMaxYamlDepth, " levels"));
    return diag.ToStatus();
  } catch (const YAML::Exception& e) {
    diag.Error(line_of(e.mark), "invalid YAML", e.msg);
    return diag.ToStatus();
  }
  try {
    internal::YamlReader reader(diag, config);
    if (root) reader.ReadRoot(*root);
  } catch (const YAML::Exception& e) {  // not expected: reads check types first
    diag.Error(e.mark.line < 0 ? 0 : e.mark.line + 1, "invalid YAML", e.msg);
    return diag.ToStatus();
  } catch (const std::exception& e) {
    diag.Error(0, "(config)", e.what());
    return diag.ToStatus();
  }
  return internal::Resolve(std::move(config), diag, options);
}

}  // namespace mqs::config
