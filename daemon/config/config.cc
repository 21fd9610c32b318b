// Config: key table, defaults, validation (Resolve), LoadFile and Describe.
// The format-specific readers are yaml_loader.cc and ini_loader.cc.
#include "config/config.h"

#include <amqp.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <system_error>
#include <utility>

#include "config/loader_internal.h"
#include "config/topology_plan.h"
#include "observability/metrics_http.h"
#include "util/unix_group.h"
#include "util/uri.h"

namespace mqs::config {
namespace internal {
namespace {

// The one table of keys. Order is the order of the docs and of "expected one
// of" lists. Keep docs/configuration.md in step (a unit test checks).
constexpr ConfigKey kConfigKeyTable[] = {
    {"listen", "string or list of strings", R"(["unix:///run/mq-sidecar/mq-sidecar.sock"])",
     "gRPC listen addresses: `unix:///absolute/path` or `host:port`. A TCP listener serves TLS "
     "with `tcp.tls` (any address), else it must be on a loopback address (`127.0.0.1:50051`, "
     "`[::1]:50051`) and needs `tcp.insecure`. May contain `{app}`, `{region}`, `{server}` "
     "(one socket per replica from one file)."},
    {"socket.mode", "octal mode", R"("0660")",
     "Mode of every unix socket listener, set whatever the umask (owner and group may "
     "connect). Not writable by others: at most `0770`."},
    {"socket.group", "group name or empty", R"("")",
     "Group of every unix socket listener (clients in it may connect); must exist. \"\": the "
     "daemon's group."},
    {"tcp.insecure", "boolean", "false",
     "Allow TCP listeners without `tcp.tls`. They have no TLS and no credentials: every local "
     "user can publish and consume through them, so they must be on a loopback address, and "
     "they need this set to `true`."},
    {"tcp.tls", "map", "(none)",
     "TLS for every TCP listener (TLS 1.2 or later): with `cert` and `key` set, TCP listeners "
     "serve TLS and may be on any address (`0.0.0.0:50051`); `tcp.insecure` is then not needed. "
     "Unix socket listeners are unaffected (and without a TCP listener it has no effect). The "
     "files are re-read every 5s while running (docs/security.md)."},
    {"tcp.tls.cert", "file path or empty", R"("")",
     "Certificate chain (PEM) of the TCP listeners; with `key`, both or neither. Must be a "
     "readable PEM certificate at load."},
    {"tcp.tls.key", "file path or empty", R"("")",
     "Private key (PEM, unencrypted) of `cert`. Must be readable at load."},
    {"tcp.tls.client_ca", "file path or empty", R"("")",
     "Mutual TLS: clients must present a certificate that chains to this CA bundle (PEM), or "
     "the handshake fails. Needs `cert`. \"\": no client certificate is asked for."},
    {"access", "map client name -> settings", "(none)",
     "Who may use which business (docs/security.md). Absent: every caller may use every "
     "business. Present: every call must come from one of these clients (else "
     "`UNAUTHENTICATED`) and name only businesses the client may use (else "
     "`PERMISSION_DENIED`). INI: an `[access]` section, one `name = {json}` line per client."},
    {"access.<client>.socket", "unix:///path or empty", R"("")",
     "Who: a unix socket listener created for this client alone (besides `listen`); every call "
     "on it is this client's. One of `socket`, `token_file`, `cert_subject`."},
    {"access.<client>.socket_mode", "octal mode", "`socket.mode`",
     "Mode of the client's socket; at most `0770`."},
    {"access.<client>.socket_group", "group name or empty", "`socket.group`",
     "Group of the client's socket; must exist."},
    {"access.<client>.token_file", "file path or empty", R"("")",
     "Who: a bearer token, the first line of this file (at least 16 bytes), sent as gRPC "
     "metadata `authorization: Bearer <token>` on any listener. Read at load and again "
     "when the file changes (rotation without a restart)."},
    {"access.<client>.cert_subject", "string or empty", R"("")",
     "Who: the subject of the client's TLS certificate, as RFC 2253 (`CN=ops,O=example`; "
     "`openssl x509 -noout -subject -nameopt RFC2253`). Needs `tcp.tls.client_ca`."},
    {"access.<client>.publish", "list of business names or patterns", "[]",
     "Businesses the client may publish to (Publish, PublishStream, SendTask to a task "
     "exchange, CompleteTask to its `reply_to`, ReportStatus to `ping.business`). `*` matches "
     "any run of characters (`task.*`, `*`); a name without `*` must be a configured business."},
    {"access.<client>.subscribe", "list of business names or patterns", "[]",
     "Businesses the client may consume (Subscribe, ListDeadLetters, ReplayDeadLetters; "
     "ListServers needs `ping.business`). As for `publish`."},
    {"access.<client>.reload", "bool", "false",
     "The client may call Reload (`mqctl reload`): the config file read again, as SIGHUP "
     "does. Without `access`, every caller may."},
    {"broker.uris", "string or list of strings", R"(["amqp://guest:guest@127.0.0.1:5672/"])",
     "Broker URIs, `amqp://` or `amqps://` (TLS, see `broker.tls`), tried in order (a "
     "cluster). Default port 5672, 5671 for `amqps://`. An empty vhost (`...:5672/`) means "
     "`/`."},
    {"broker.password_file", "path or empty", R"("")",
     "File whose first line is the password for every broker URI; the URIs then give a user "
     "only (`amqp://mq-sidecar@host/`). The environment variable `MQ_SIDECAR_BROKER_PASSWORD` "
     "wins over it. Keeps the password out of the config file; masked everywhere."},
    {"broker.heartbeat", "duration", "30s",
     "AMQP heartbeat: `0` or whole seconds 1s..65535s. A broker silent for 2 x heartbeat is "
     "presumed dead. Every AMQP socket also gets TCP keepalive (idle 10s, interval 5s, 3 probes) "
     "and TCP_USER_TIMEOUT (2 x heartbeat; 30s with `0`), so `0` still detects a dead broker, "
     "in about 30s."},
    {"broker.connect_timeout", "duration", "5s",
     "Timeout to connect to one broker URI (TCP, then the TLS handshake for `amqps://`, then "
     "the AMQP handshake); above 0, at most 5m."},
    {"broker.tls", "map", "(all defaults)",
     "TLS for `amqps://` URIs (TLS 1.2 or later); `amqp://` URIs ignore it."},
    {"broker.tls.ca", "file path or empty", R"("")",
     "CA bundle (PEM) the broker's certificate must chain to; must be readable at load. \"\": "
     "the system's, `/etc/ssl/certs/ca-certificates.crt`."},
    {"broker.tls.cert", "file path or empty", R"("")",
     "Client certificate (PEM) for brokers that require one; with `key`, both or neither. "
     "Must be readable at load."},
    {"broker.tls.key", "file path or empty", R"("")",
     "Private key (PEM, unencrypted) of `cert`. Must be readable at load."},
    {"broker.tls.verify", "boolean", "true",
     "Verify the broker's certificate (chain to `ca`) and that it names the URI's host. "
     "false accepts any certificate: encrypted, but open to a man in the middle."},
    {"producers.<business>", "map or null", "(all defaults)",
     "A business this sidecar publishes to. Name: letters, digits, `.`, `_`, `-`."},
    {"producers.<business>.exchange", "name", "`<business>`",
     "Durable topic exchange that Publish sends to."},
    {"producers.<business>.handle", "name or empty", R"("")",
     "Alternate exchange for unroutable messages: if set, the exchange gets "
     "alternate-exchange=`<handle>`, a fanout exchange `<handle>` and a classic durable queue "
     "`<handle>.queue` bound with `#` keep them."},
    {"consumers.<business>", "map or null", "(all defaults)",
     "A business whose queue this sidecar's clients consume. Name as for producers."},
    {"consumers.<business>.exchange", "name", "`<business>`",
     "Durable topic exchange the queue is bound to."},
    {"consumers.<business>.queue", "name", "`<exchange>.queue`",
     "Durable queue, shared by all subscribers of the business (competing consumers)."},
    {"consumers.<business>.binding_keys", "string or list of strings", R"(["#"])",
     "Binding keys from the exchange to the queue; `#` takes every routing key."},
    {"consumers.<business>.queue_type", "quorum or classic", "quorum",
     "`x-queue-type` of the queue. Every consumer of one queue must agree."},
    {"consumers.<business>.prefetch", "integer 1..65535", "16",
     "Prefetch (unacknowledged deliveries) for a Subscribe whose `open.prefetch` is 0. A "
     "reload applies a new value to the streams opened after it."},
    {"consumers.<business>.handle", "string", R"("")",
     "The seed's consume-callback name; informational only."},
    {"consumers.<business>.max_deliveries", "integer 0..2147483647", "0",
     "Poison-message limit (quorum queues only; needs `dead_letter`): above 0, the queue gets a "
     "delivery limit: a message delivered this many times goes to `<queue>.dead`. 0: none."},
    {"consumers.<business>.dead_letter", "boolean", "true",
     "The queue gets dead-letter exchange `<exchange>.dlx` (topic) and queue `<queue>.dead` (same "
     "type, bound with `#`): a nack without requeue keeps the message there (at-least-once on "
     "quorum queues). false: no dead-letter exchange, such a nack drops the message. Every "
     "consumer of one queue must agree. An existing queue declared without it conflicts (see "
     "[Topology](#topology))."},
    {"consumers.<business>.single_active", "boolean", "false",
     "`x-single-active-consumer`: one subscriber of the queue (over all sidecars) receives at a "
     "time, in queue order; another takes over from the first unacked message when it goes. "
     "Every consumer of one queue must agree; changing it on an existing queue is a conflict."},
    {"consumers.<business>.retry", "map or absent", "(none)",
     "Delayed retry: a nack with requeue brings the message back after the next delay of "
     "`delays`, through a retry queue `<queue>.retry.<delay>` per delay; after `max_attempts` "
     "deliveries it is dead-lettered instead. Needs `dead_letter` (exhausted messages go to "
     "`<queue>.dead`). Every consumer of one queue must agree. Absent: nack with requeue "
     "requeues at once."},
    {"consumers.<business>.retry.delays", "duration or list of durations", "(required)",
     "The delay before attempt 2, 3, ...; the last one repeats once the list is used up. Each "
     "100ms..168h (7 days); at least one."},
    {"consumers.<business>.retry.max_attempts", "integer 2..2147483647", "`len(delays) + 1`",
     "Deliveries (the first and every retry) after which a nacked message is dead-lettered "
     "instead of retried."},
    {"publish.window", "integer 1..65535", "1024",
     "PublishStream: requests in flight (unconfirmed) per stream."},
    {"publish.republish_unconfirmed", "boolean", "true",
     "At a disconnect, publish unconfirmed messages again with the same message_id "
     "(at-least-once); false answers them UNCONFIRMED."},
    {"publish.wait_timeout", "duration", "30s",
     "How long a publish waits for a connection or a lifted resource alarm; above 0, at most "
     "1h."},
    {"limits", "map", "(all defaults)",
     "What one request may hold. A Publish or PublishStream request over a limit fails alone "
     "(INVALID_ARGUMENT naming the key, or its result FAILED); the stream goes on."},
    {"limits.max_payload_bytes", "integer 1..134217728", "16777216",
     "Largest payload of one publish (16 MiB). gRPC's receive limit is set from it: "
     "payload + `max_header_bytes` + 64 KiB; a larger request ends its stream "
     "RESOURCE_EXHAUSTED."},
    {"limits.max_headers", "integer 0..1024", "64", "Most headers on one publish."},
    {"limits.max_header_bytes", "integer 0..65536", "65536",
     "Most bytes of header names and values together on one publish (they travel in one AMQP "
     "frame)."},
    {"limits.max_routing_key_bytes", "integer 1..255", "255",
     "Longest routing key of a publish (AMQP allows 255)."},
    {"limits.max_message_id_bytes", "integer 1..255", "255",
     "Longest message_id and correlation_id of a publish (AMQP allows 255)."},
    {"limits.max_streams_per_connection", "integer 1..100000", "1000",
     "Calls open at once on one client connection (HTTP/2 max concurrent streams); a client "
     "queues the ones above it until one ends."},
    {"limits.max_prefetch", "integer 1..65535", "10000",
     "Largest prefetch: a Subscribe whose `open.prefetch` is above it ends INVALID_ARGUMENT; a "
     "`consumers.<business>.prefetch` above it is a config error."},
    {"limits.max_batch_messages", "integer 1..100000", "1000",
     "Most messages in one PublishBatch of PublishBatchStream: a batch over it ends the stream "
     "INVALID_ARGUMENT naming the limit (what was read before is answered)."},
    {"log.level", "trace, debug, info, warn or error", "info",
     "Log level, in any case (`INFO` = `info`); `--log-level` overrides it, same names."},
    {"log.format", "text or json", "text",
     "`text`: one line per event as before; `json`: one JSON object per line (time, level, "
     "thread, message and fields such as business and uri; docs/operations.md, Logs). "
     "`--log-format` overrides it."},
    {"shutdown.drain", "duration", "10s",
     "On SIGTERM, time for subscribers to ack and for publishes to be confirmed; 0..1h (keep it "
     "below systemd's TimeoutStopSec, 60s in the shipped unit)."},
    {"metrics.listen", "host:port or empty", R"("127.0.0.1:9464")",
     "HTTP endpoint for Prometheus (`/metrics`) and the probes `/healthz` and `/readyz` "
     "([operations.md](operations.md#metrics)): `127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464`. "
     "\"\": off. A port that cannot be bound stops the daemon at startup. INI: a `[metrics]` "
     "section, `listen = ...`."},
    {"identity.app", "identity part", R"("")",
     "The application this sidecar serves (`otc`, `usdtsvr`): letters, digits, `_` and `-`, "
     "1..64 bytes; \"\" (omitted): not set. `--app`, else `MQ_SIDECAR_APP`, overrides it. "
     "Fills `{app}` in names."},
    {"identity.region", "identity part", R"("")",
     "The region of this instance, as `identity.app`; `--region`, else `MQ_SIDECAR_REGION`, "
     "overrides it. Fills `{region}`."},
    {"identity.server", "identity part", R"("")",
     "The server (replica) of this instance, as `identity.app`; `--server`, else "
     "`MQ_SIDECAR_SERVER`, overrides it. Fills `{server}`."},
    {"ping.business", "business or empty", R"("")",
     "A configured producer business (as written or resolved) that this sidecar publishes its "
     "heartbeat to every `ping.interval`, routing key `<app>.<region>.<server>`; needs a complete "
     "identity. \"\": no pings."},
    {"ping.interval", "duration", "10s",
     "Time between pings, 1s..1h. A ping expires after 3 intervals; an instance silent for 3 of "
     "its intervals is shown stale, for 30 dropped."},
    {"ping.fleet", "boolean", "false",
     "Watch every instance's pings (ListServers, `mqctl servers`) through an exclusive "
     "auto-delete queue `<ping exchange>.fleet.<instance>` bound with `#`; needs "
     "`ping.business`."},
    {"tasks.results", "business or empty", R"("")",
     "A configured consumer business (as written or resolved, e.g. `task.result`) whose exchange "
     "task results are published to; SendTask needs it. \"\": SendTask disabled."},
};

constexpr std::string_view kDefaultListen[] = {"unix:///run/mq-sidecar/mq-sidecar.sock"};
constexpr std::string_view kDefaultUri = "amqp://guest:guest@127.0.0.1:5672/";

// The canonical parent of a key path: consumers["a.b"].queue -> consumers["a.b"]
// -> consumers; broker.uris[0] -> broker.uris -> broker.
std::string_view ParentPath(std::string_view path) {
  if (path.empty()) return path;
  if (path.back() == ']') {
    const size_t open = path.rfind('[');
    return open == std::string_view::npos ? std::string_view() : path.substr(0, open);
  }
  const size_t dot = path.rfind('.');
  const size_t close = path.rfind(']');
  if (dot == std::string_view::npos || (close != std::string_view::npos && dot < close)) {
    return std::string_view();
  }
  return path.substr(0, dot);
}

// The per-key upper bounds of durations (docs/configuration.md says why).
constexpr std::chrono::minutes kMaxConnectTimeout{5};
constexpr std::chrono::hours kMaxWaitTimeout{1};
constexpr std::chrono::hours kMaxDrain{1};
constexpr std::chrono::seconds kMinPingInterval{1};
constexpr std::chrono::hours kMaxPingInterval{1};

// An identity part becomes a word of routing keys (<app>.<region>.<server>)
// and of names; 3 x 64 bytes keep the ping routing key under AMQP's 255.
constexpr size_t kMaxIdentityPart = 64;

// The identity parts, with the key, flag and variable that set each.
struct IdentityPart {
  std::string_view placeholder;  // "app" for {app}
  std::string_view key;          // "identity.app"
  std::string_view flag;         // "--app"
  std::string_view env;          // "MQ_SIDECAR_APP"
  std::string Identity::*value;
  std::optional<std::string> LoadOptions::IdentityOverrides::*override_value;
};
const IdentityPart kIdentityParts[3] = {
    {"app", "identity.app", "--app", "MQ_SIDECAR_APP", &Identity::app,
     &LoadOptions::IdentityOverrides::app},
    {"region", "identity.region", "--region", "MQ_SIDECAR_REGION", &Identity::region,
     &LoadOptions::IdentityOverrides::region},
    {"server", "identity.server", "--server", "MQ_SIDECAR_SERVER", &Identity::server,
     &LoadOptions::IdentityOverrides::server},
};

// "identity.app is not set (set identity.app, --app or MQ_SIDECAR_APP)".
std::string NotSet(const IdentityPart& part) {
  return Cat(part.key, " is not set (set ", part.key, ", ", part.flag, " or ", part.env, ")");
}

// "a" or "an" before `word`.
std::string_view Article(std::string_view word) {
  return !word.empty() && std::string_view("aeiou").find(word.front()) != std::string_view::npos
             ? "an"
             : "a";
}

bool IsNameChar(char c, bool allow_colon) {
  return IsAlnum(c) || c == '.' || c == '_' || c == '-' || (allow_colon && c == ':');
}

// "" if `name` is a usable exchange or queue name; else what was expected.
std::string CheckAmqpName(std::string_view name, std::string_view what) {
  const std::string_view a = Article(what);
  if (name.empty()) return Cat("expected a non-empty ", what, " name");
  if (util::HasControlChars(name)) {
    return Cat("expected ", a, " ", what, " name without control characters, got ", Quote(name));
  }
  if (name.size() > 255) {
    return Cat("expected ", a, " ", what, " name of at most 255 bytes, got ", name.size(),
               " bytes");
  }
  if (!std::all_of(name.begin(), name.end(), [](char c) { return IsNameChar(c, true); })) {
    return Cat("expected ", a, " ", what, " name of letters, digits, '.', '_', '-' and ':', got ",
               Quote(name));
  }
  if (name.starts_with("amq.")) {
    return Cat("expected ", a, " ", what, " name not starting with \"amq.\" (reserved), got ",
               Quote(name));
  }
  return "";
}

// IsLoopbackListen: a valid host:port listen address on 127.0.0.0/8, ::1 or
// localhost.
bool IsLoopbackListen(std::string_view addr) {
  if (addr.starts_with("[")) return addr.starts_with("[::1]:");
  const std::string_view host = addr.substr(0, addr.rfind(':'));
  return host == "localhost" || host.starts_with("127.");
}

// "" if `addr` is a listen address gRPC and we both understand.
bool ValidListen(std::string_view addr) {
  if (util::HasControlChars(addr)) return false;
  if (addr.starts_with("unix:")) {
    if (!addr.starts_with("unix:///")) return false;
    const std::string_view path = addr.substr(7);
    // sockaddr_un.sun_path holds 108 bytes including the NUL.
    return path.size() > 1 && path.size() <= 107 && path.find('\0') == std::string_view::npos;
  }
  std::string_view host;
  std::string_view port;
  if (addr.starts_with("[")) {
    const size_t close = addr.find(']');
    if (close == std::string_view::npos || close + 1 >= addr.size() || addr[close + 1] != ':') {
      return false;
    }
    host = addr.substr(1, close - 1);
    port = addr.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return false;
    if (!std::all_of(host.begin(), host.end(), [](char c) {
          return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
        })) {
      return false;
    }
  } else {
    const size_t colon = addr.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = addr.substr(0, colon);
    port = addr.substr(colon + 1);
    if (!std::all_of(host.begin(), host.end(),
                     [](char c) { return IsAlnum(c) || c == '.' || c == '-' || c == '_'; })) {
      return false;
    }
  }
  const std::optional<uint64_t> p = ParseUint(port, 65535);
  return !host.empty() && p.has_value() && *p >= 1;
}

}  // namespace

const std::span<const ConfigKey> kConfigKeys(kConfigKeyTable);

std::vector<std::string_view> ChildKeys(std::string_view pattern) {
  std::vector<std::string_view> out;
  for (const ConfigKey& key : kConfigKeys) {
    std::string_view rest = key.path;
    if (!pattern.empty()) {
      if (rest.size() <= pattern.size() + 1 || !rest.starts_with(pattern) ||
          rest[pattern.size()] != '.') {
        continue;
      }
      rest.remove_prefix(pattern.size() + 1);
    }
    rest = rest.substr(0, rest.find('.'));
    if (std::find(out.begin(), out.end(), rest) == out.end()) out.push_back(rest);
  }
  return out;
}

std::string BusinessPath(std::string_view root, std::string_view name) {
  return Cat(root, "[\"", name, "\"]");
}

std::string BusinessPath(std::string_view root, std::string_view name, std::string_view key) {
  return Cat(root, "[\"", name, "\"].", key);
}

Diagnostics::Diagnostics(std::string_view filename)
    : filename_(filename.empty() ? "<config>" : filename) {}

void Diagnostics::Note(const std::string& path, int line, std::string display) {
  origins_.emplace(path, Origin{line, std::move(display)});
}

void Diagnostics::Override(const std::string& path, std::string display) {
  origins_.insert_or_assign(path, Origin{0, std::move(display)});
}

int Diagnostics::LineOf(const std::string& path) const {
  for (std::string_view p = path; !p.empty(); p = ParentPath(p)) {
    auto it = origins_.find(p);
    if (it != origins_.end()) return it->second.line;
  }
  return 0;
}

void Diagnostics::Error(int line, std::string_view display_path, std::string_view message) {
  std::string text = line > 0 ? Cat(filename_, ":", line, ": ") : Cat(filename_, ": ");
  Append(&text, display_path, ": ", message);
  // One error, one line: key paths carry names from the file as they are
  // (values are quoted and escaped already), and a control character in one
  // must neither break the line nor reach a terminal raw.
  errors_.push_back(util::ForLog(RedactCredentials(text), std::string::npos));
}

void Diagnostics::ErrorAt(const std::string& path, std::string_view message) {
  for (std::string_view p = path; !p.empty(); p = ParentPath(p)) {
    auto it = origins_.find(p);
    if (it != origins_.end()) {
      // A defaulted key: the parent's line, but the key's own name.
      Error(it->second.line, Cat(it->second.display, path.substr(p.size())), message);
      return;
    }
  }
  Error(0, path, message);
}

absl::Status Diagnostics::ToStatus() const {
  if (errors_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(Join(errors_, "\n"));
}

std::string RedactCredentials(std::string_view text) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t scheme = text.find("://", pos);
    if (scheme == std::string_view::npos) break;
    const size_t start = scheme + 3;
    size_t end = text.find_first_of(" \t\r\n\"'", start);
    if (end == std::string_view::npos) end = text.size();
    // The last '@' of the token: an unescaped '@' in a password must not
    // leave its tail visible.
    const std::string_view token = text.substr(start, end - start);
    const size_t at = token.rfind('@');
    const size_t colon = token.find(':');
    if (at != std::string_view::npos && colon != std::string_view::npos && colon < at) {
      Append(&out, text.substr(pos, start + colon + 1 - pos), "****");
      pos = start + at;
    } else {
      Append(&out, text.substr(pos, end - pos));
      pos = end;
    }
  }
  Append(&out, text.substr(pos));
  return out;
}

std::string Quote(std::string_view value) {
  std::string v = RedactCredentials(value);
  if (v.size() > 80) v = Cat(v.substr(0, 77), "...");
  std::string out = "\"";
  for (char c : v) {
    // Control characters and quotes escaped; UTF-8 bytes kept as they are.
    if (c == '"' || c == '\\') {
      Append(&out, "\\", std::string_view(&c, 1));
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::optional<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && IsDigit(text[digits])) {
    ++digits;
  }
  if (digits == 0 || digits > 12) return std::nullopt;
  const std::optional<uint64_t> n = ParseUint(text.substr(0, digits), 999'999'999'999);
  if (!n) return std::nullopt;
  const std::string_view unit = text.substr(digits);
  int64_t ms_per_unit;
  if (unit.empty() || unit == "s") {
    ms_per_unit = 1000;
  } else if (unit == "ms") {
    ms_per_unit = 1;
  } else if (unit == "m") {
    ms_per_unit = 60'000;
  } else if (unit == "h") {
    ms_per_unit = 3'600'000;
  } else {
    return std::nullopt;
  }
  // 12 digits times 3,600,000 fits in int64; the bound keeps later sums of
  // time points and durations (in nanoseconds) from overflowing.
  const std::chrono::milliseconds d(static_cast<int64_t>(*n) * ms_per_unit);
  if (d > kMaxDuration) return std::nullopt;
  return d;
}

std::string FormatDuration(std::chrono::milliseconds d) {
  const int64_t ms = d.count();
  if (ms == 0) return "0s";
  if (ms % 3'600'000 == 0) return Cat(ms / 3'600'000, "h");
  if (ms % 60'000 == 0) return Cat(ms / 60'000, "m");
  if (ms % 1000 == 0) return Cat(ms / 1000, "s");
  return Cat(ms, "ms");
}

std::optional<uint64_t> ParseUint(std::string_view text, uint64_t max) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  uint64_t n = 0;
  for (char c : text) {
    if (!IsDigit(c)) return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  if (n > max) return std::nullopt;
  return n;
}

std::string_view Trim(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\r\n\f\v");
  if (begin == std::string_view::npos) return std::string_view();
  const size_t end = s.find_last_not_of(" \t\r\n\f\v");
  return s.substr(begin, end - begin + 1);
}

std::vector<std::string_view> Split(std::string_view s, char separator) {
  std::vector<std::string_view> out;
  while (true) {
    const size_t pos = s.find(separator);
    out.push_back(s.substr(0, pos));
    if (pos == std::string_view::npos) return out;
    s.remove_prefix(pos + 1);
  }
}

std::string_view CheckBusinessName(std::string_view name) {
  if (name.empty()) return "expected a non-empty business name";
  if (util::HasControlChars(name)) return "expected a business name without control characters";
  if (!std::all_of(name.begin(), name.end(), [](char c) { return IsNameChar(c, false); })) {
    return "expected a business name of letters, digits, '.', '_' and '-'";
  }
  return "";
}

std::string CheckIdentityPart(std::string_view part) {
  if (!IsIdentityPart(part)) {
    return Cat("expected 1..", kMaxIdentityPart, " letters, digits, '_' or '-' (no '.', '#', '*' ",
               "or spaces: parts become words of routing keys)");
  }
  return "";
}

bool ExpandPlaceholders(std::string_view text, const Identity& identity, std::string* out,
                        std::vector<std::string>* errors, const std::array<bool, 3>& invalid) {
  constexpr std::string_view kKnown = "placeholders are {app}, {region} and {server}";
  std::string result;
  bool ok = true;
  std::array<bool, 3> reported{};
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '}') {
      errors->push_back(Cat("unmatched '}' in ", Quote(text), "; ", kKnown));
      return false;
    }
    if (c != '{') {
      result += c;
      ++i;
      continue;
    }
    const size_t close = text.find_first_of("{}", i + 1);
    if (close == std::string_view::npos || text[close] != '}') {
      errors->push_back(Cat("unmatched '{' in ", Quote(text), "; ", kKnown));
      return false;
    }
    const std::string_view name = text.substr(i + 1, close - i - 1);
    const auto* part = std::find_if(std::begin(kIdentityParts), std::end(kIdentityParts),
                                    [&](const IdentityPart& p) { return p.placeholder == name; });
    if (part == std::end(kIdentityParts)) {
      errors->push_back(Cat("unknown placeholder ", Quote(Cat("{", name, "}")), " in ", Quote(text),
                            "; ", kKnown));
      return false;
    }
    const size_t index = static_cast<size_t>(part - std::begin(kIdentityParts));
    const std::string& value = identity.*(part->value);
    if (invalid[index]) {
      ok = false;  // the part's own error says why
    } else if (value.empty()) {
      if (!reported[index]) {
        errors->push_back(Cat("uses {", name, "} but ", NotSet(*part)));
        reported[index] = true;
      }
      ok = false;
    } else {
      result += value;
    }
    i = close + 1;
  }
  if (ok) *out = std::move(result);
  return ok;
}

void ApplyDefaults(Config& config) {
  if (config.listen.empty()) {
    config.listen.assign(std::begin(kDefaultListen), std::end(kDefaultListen));
  }
  if (config.broker.uris.empty()) config.broker.uris.emplace_back(kDefaultUri);
  for (Producer& p : config.producers) {
    if (p.exchange.empty()) p.exchange = p.name;
  }
  for (Consumer& c : config.consumers) {
    if (c.exchange.empty()) c.exchange = c.name;
    if (c.queue.empty()) c.queue = c.exchange + ".queue";
    if (c.binding_keys.empty()) c.binding_keys = {"#"};
    // Every delay once, then one more: the dead letter comes after the last.
    if (c.retry.enabled() && c.retry.max_attempts == 0) {
      c.retry.max_attempts = static_cast<uint32_t>(c.retry.delays.size() + 1);
    }
  }
  auto by_name = [](const auto& a, const auto& b) { return a.name < b.name; };
  std::stable_sort(config.producers.begin(), config.producers.end(), by_name);
  std::stable_sort(config.consumers.begin(), config.consumers.end(), by_name);
}

}  // namespace internal

bool SameRetry(const Retry& a, const Retry& b) {
  return a.delays == b.delays && a.max_attempts == b.max_attempts;
}

std::string DescribeRetry(const Retry& r) {
  if (!r.enabled()) return "none";
  std::vector<std::string> delays;
  for (std::chrono::milliseconds d : r.delays) delays.push_back(internal::FormatDuration(d));
  return internal::Cat("{delays: [", internal::Join(delays, ", "),
                       "], max_attempts: ", r.max_attempts, "}");
}

namespace internal {

namespace {

std::string_view TrueFalse(bool b) { return b ? "true" : "false"; }

// A key path with its line, for "... for consumers["a"] (line 2)".
std::string Where(const Diagnostics& diag, const std::string& path) {
  const int line = diag.LineOf(path);
  return line > 0 ? Cat(path, " (line ", line, ")") : path;
}

// The name a business is written as in the file: its key paths (and so its
// lines) are recorded under it.
template <typename Business>
const std::string& PathName(const Business& b) {
  return b.written_as.empty() ? b.name : b.written_as;
}

// Cross-business checks: names reused so that the broker would refuse the
// declarations (PRECONDITION_FAILED) or would mix unrelated messages. The
// implicit unroutable consumers are left out: their exchange and queue are
// their producer's handle ones, claimed with it.
void CheckConflicts(const Config& config, Diagnostics& diag) {
  auto where = [&](const std::string& path) { return Where(diag, path); };

  struct ExchangeClaim {
    std::string type;
    std::string path;
  };
  std::map<std::string, ExchangeClaim> exchanges;
  auto claim_exchange = [&](const std::string& name, std::string_view type,
                            const std::string& path) {
    auto [it, inserted] = exchanges.emplace(name, ExchangeClaim{std::string(type), path});
    if (!inserted && it->second.type != type) {
      diag.ErrorAt(path,
                   Cat("exchange ", Quote(name), " would be a ", type, " exchange here but is a ",
                       it->second.type, " exchange for ", where(it->second.path),
                       "; an alternate exchange (handle) needs a name of its own"));
    }
  };

  std::map<std::string, std::pair<std::string, std::string>>
      alternates;  // exchange -> handle, path
  for (const Producer& p : config.producers) {
    const std::string handle_path = BusinessPath("producers", PathName(p), "handle");
    claim_exchange(p.exchange, "topic", BusinessPath("producers", PathName(p), "exchange"));
    if (!p.handle.empty()) claim_exchange(p.handle, "fanout", handle_path);
    auto [it, inserted] = alternates.emplace(p.exchange, std::make_pair(p.handle, handle_path));
    if (!inserted && it->second.first != p.handle) {
      auto show = [](const std::string& h) { return h.empty() ? std::string("none") : Quote(h); };
      diag.ErrorAt(handle_path,
                   Cat("exchange ", Quote(p.exchange), " gets alternate exchange ", show(p.handle),
                       " here but ", show(it->second.first), " from ", where(it->second.second),
                       "; producers sharing an exchange must use the same handle"));
    }
  }
  for (const Consumer& c : config.consumers) {
    if (c.unroutable) continue;
    claim_exchange(c.exchange, "topic", BusinessPath("consumers", PathName(c), "exchange"));
  }

  struct QueueClaim {
    QueueType type;
    std::string path;
    bool is_handle;
    uint32_t max_deliveries = 0;
    bool dead_letter = false;
    bool single_active = false;
    Retry retry;
  };
  std::map<std::string, QueueClaim> queues;
  for (const Producer& p : config.producers) {
    if (p.handle.empty()) continue;
    queues.emplace(
        p.handle + ".queue",
        QueueClaim{QueueType::kClassic, BusinessPath("producers", PathName(p), "handle"), true});
  }
  for (const Consumer& c : config.consumers) {
    if (c.unroutable) continue;
    const std::string path = BusinessPath("consumers", PathName(c));
    auto [it, inserted] =
        queues.emplace(c.queue, QueueClaim{c.queue_type, path, false, c.max_deliveries,
                                           c.dead_letter, c.single_active, c.retry});
    if (inserted) continue;
    if (it->second.is_handle) {
      diag.ErrorAt(path + ".queue",
                   Cat("queue ", Quote(c.queue), " is the alternate-exchange queue of ",
                       where(it->second.path), "; choose another queue name"));
    } else if (it->second.type != c.queue_type) {
      diag.ErrorAt(path + ".queue_type",
                   Cat("queue ", Quote(c.queue), " is ", QueueTypeName(c.queue_type), " here but ",
                       QueueTypeName(it->second.type), " for ", where(it->second.path),
                       "; every consumer of one queue must use the same queue_type"));
    } else if (it->second.max_deliveries != c.max_deliveries) {
      diag.ErrorAt(path + ".max_deliveries",
                   Cat("queue ", Quote(c.queue), " has max_deliveries ", c.max_deliveries,
                       " here but ", it->second.max_deliveries, " for ", where(it->second.path),
                       "; every consumer of one queue must use the same max_deliveries"));
    } else if (it->second.dead_letter != c.dead_letter) {
      diag.ErrorAt(
          path + ".dead_letter",
          Cat("queue ", Quote(c.queue), " has dead_letter ", TrueFalse(c.dead_letter), " here but ",
              TrueFalse(it->second.dead_letter), " for ", where(it->second.path),
              "; every consumer of one queue must use the same dead_letter"));
    } else if (it->second.single_active != c.single_active) {
      diag.ErrorAt(
          path + ".single_active",
          Cat("queue ", Quote(c.queue), " has single_active ", TrueFalse(c.single_active),
              " here but ", TrueFalse(it->second.single_active), " for ", where(it->second.path),
              "; every consumer of one queue must use the same single_active"));
    } else if (!SameRetry(it->second.retry, c.retry)) {
      diag.ErrorAt(
          path + ".retry",
          Cat("queue ", Quote(c.queue), " has retry ", DescribeRetry(c.retry), " here but ",
              DescribeRetry(it->second.retry), " for ", where(it->second.path),
              "; every consumer of one queue must use the same retry"));
    }
  }
  // A retry queue is declared with its own arguments (x-message-ttl, ...):
  // a configured queue of the same name would conflict with it.
  for (const Consumer& c : config.consumers) {
    if (c.unroutable) continue;
    for (size_t i = 0; i < c.retry.delays.size(); ++i) {
      const std::string name = RetryQueue(c, c.retry.delays[i]);
      auto it = queues.find(name);
      if (it == queues.end()) continue;
      diag.ErrorAt(Cat(BusinessPath("consumers", PathName(c), "retry.delays"), "[", i, "]"),
                   Cat("the retry queue ", Quote(name), " of this delay is the queue of ",
                       where(it->second.path), "; choose another queue name"));
    }
  }
}

// A consumer's retry: delays the broker can keep (a TTL'd queue per delay),
// names it accepts, and somewhere for exhausted messages to go. The loader
// has checked the shapes (a non-empty list of durations, max_attempts >= 2).
void CheckRetry(const Consumer& c, Diagnostics& diag) {
  if (!c.retry.enabled()) return;
  const std::string path = BusinessPath("consumers", PathName(c), "retry");
  if (!c.dead_letter) {
    diag.ErrorAt(path, Cat("needs dead_letter true: a message whose retries are exhausted (after ",
                           "max_attempts deliveries) is dead-lettered to <queue>.dead, and "
                           "without dead letters it would be dropped; set dead_letter true or "
                           "remove retry"));
  }
  const bool queue_ok = CheckAmqpName(c.queue, "queue").empty();
  for (size_t i = 0; i < c.retry.delays.size(); ++i) {
    const std::chrono::milliseconds d = c.retry.delays[i];
    const std::string item = Cat(path, ".delays[", i, "]");
    if (d < kMinRetryDelay || d > kMaxRetryDelay) {
      diag.ErrorAt(item, Cat("expected a retry delay of ", FormatDuration(kMinRetryDelay), "..",
                             FormatDuration(kMaxRetryDelay), " (7 days), got ", FormatDuration(d)));
    } else if (const std::string q = RetryQueue(c, d); queue_ok && q.size() > 255) {
      diag.ErrorAt(item, Cat("its retry queue ", Quote(q), " would be longer than 255 bytes; ",
                             "choose a shorter queue name"));
    }
  }
}

// Applies the overrides (flag > environment, chosen by main, > file) and
// checks every part set. Returns which parts are invalid (reported here), so
// that the placeholders using them add no errors of their own.
std::array<bool, 3> ResolveIdentity(Config& config, Diagnostics& diag, const LoadOptions& options) {
  std::array<bool, 3> invalid{};
  for (size_t i = 0; i < std::size(kIdentityParts); ++i) {
    const IdentityPart& part = kIdentityParts[i];
    const std::string path(part.key);
    std::string& value = config.identity.*(part.value);
    const std::optional<std::string>& override_value = options.identity.*(part.override_value);
    if (override_value) {
      value = *override_value;
      // Errors then name where the value came from, not the file's line.
      diag.Override(path, Cat(part.key, " (from ", part.flag, " or ", part.env, ")"));
    } else if (value.empty()) {
      continue;  // not set; the loader refused an explicit ""
    }
    if (std::string e = CheckIdentityPart(value); !e.empty()) {
      diag.ErrorAt(path, Cat(e, ", got ", Quote(value)));
      invalid[i] = true;
      value.clear();
    }
  }
  return invalid;
}

// Businesses (by written name) whose placeholders failed: reported and
// removed, so that ping.business and tasks.results naming them add nothing.
struct BrokenNames {
  std::set<std::string, std::less<>> producers;
  std::set<std::string, std::less<>> consumers;
};

// Expands the placeholders in every business name and name-valued field,
// keeping the written name in written_as; before ApplyDefaults, so that
// default exchanges and queues derive from the resolved names.
BrokenNames ResolvePlaceholders(Config& config, Diagnostics& diag,
                                const std::array<bool, 3>& invalid) {
  BrokenNames broken;
  auto expand = [&](std::string& field, const std::string& path) {
    if (field.find_first_of("{}") == std::string::npos) return true;
    std::vector<std::string> errors;
    std::string out;
    if (ExpandPlaceholders(field, config.identity, &out, &errors, invalid)) {
      field = std::move(out);
      return true;
    }
    for (const std::string& e : errors) diag.ErrorAt(path, e);
    return false;
  };
  // Resolves one business; false if any of its fields failed.
  auto resolve = [&](auto& b, std::string_view root, auto&& fields) {
    const std::string written = b.name;
    bool ok = expand(b.name, BusinessPath(root, written));
    ok = fields(written) && ok;
    if (ok && b.name != written) b.written_as = written;
    return ok;
  };
  // Two written names, one resolved name: Publish and Subscribe could not
  // tell them apart.
  auto check_unique = [&](const auto& list, std::string_view root) {
    std::map<std::string_view, std::string> seen;  // resolved name -> path
    for (const auto& b : list) {
      const std::string path = BusinessPath(root, PathName(b));
      auto [it, inserted] = seen.emplace(b.name, path);
      if (!inserted) {
        diag.ErrorAt(path, Cat("resolves to ", Quote(b.name), ", as does ", Where(diag, it->second),
                               "; business names must stay distinct"));
      }
    }
  };

  std::vector<Producer> producers;
  for (Producer& p : config.producers) {
    std::string written_name = p.name;
    const bool ok = resolve(p, "producers", [&](const std::string& written) {
      const bool exchange_ok = expand(p.exchange, BusinessPath("producers", written, "exchange"));
      return expand(p.handle, BusinessPath("producers", written, "handle")) && exchange_ok;
    });
    if (ok) {
      producers.push_back(std::move(p));
    } else {
      // Both forms: the name itself may have resolved.
      broken.producers.insert(p.name);
      broken.producers.insert(std::move(written_name));
    }
  }
  config.producers = std::move(producers);

  std::vector<Consumer> consumers;
  for (Consumer& c : config.consumers) {
    std::string written_name = c.name;
    const bool ok = resolve(c, "consumers", [&](const std::string& written) {
      bool fields_ok = expand(c.exchange, BusinessPath("consumers", written, "exchange"));
      fields_ok = expand(c.queue, BusinessPath("consumers", written, "queue")) && fields_ok;
      for (size_t i = 0; i < c.binding_keys.size(); ++i) {
        fields_ok = expand(c.binding_keys[i],
                           Cat(BusinessPath("consumers", written, "binding_keys"), "[", i, "]")) &&
                    fields_ok;
      }
      return fields_ok;
    });
    if (ok) {
      consumers.push_back(std::move(c));
    } else {
      broken.consumers.insert(c.name);
      broken.consumers.insert(std::move(written_name));
    }
  }
  config.consumers = std::move(consumers);

  check_unique(config.producers, "producers");
  check_unique(config.consumers, "consumers");
  return broken;
}

// For every producer with a handle, the consumer business
// "<producer>.unroutable" of its handle queue, so that clients can Subscribe
// to what the alternate exchange kept. Its name is reserved.
void AddUnroutableConsumers(Config& config, Diagnostics& diag) {
  std::multimap<std::string_view, std::string> configured;  // name -> path
  for (const Producer& p : config.producers) {
    configured.emplace(p.name, BusinessPath("producers", PathName(p)));
  }
  for (const Consumer& c : config.consumers) {
    configured.emplace(c.name, BusinessPath("consumers", PathName(c)));
  }
  std::vector<Consumer> added;
  for (const Producer& p : config.producers) {
    if (p.handle.empty()) continue;
    Consumer c;
    c.name = p.name + ".unroutable";
    if (!p.written_as.empty()) c.written_as = p.written_as + ".unroutable";
    const auto [first, last] = configured.equal_range(c.name);
    for (auto it = first; it != last; ++it) {
      diag.ErrorAt(it->second,
                   Cat("business name ", Quote(c.name), " is reserved for the unroutable messages ",
                       "of producer ", Quote(p.name), " (",
                       Where(diag, BusinessPath("producers", PathName(p), "handle")),
                       "); choose another name"));
    }
    if (first != last) continue;
    c.exchange = p.handle;
    c.queue = p.handle + ".queue";
    c.queue_type = QueueType::kClassic;
    c.binding_keys = {"#"};
    c.unroutable = true;
    c.dead_letter = false;  // the handle's queue keeps the producer's declaration
    added.push_back(std::move(c));
  }
  if (added.empty()) return;
  for (Consumer& c : added) config.consumers.push_back(std::move(c));
  ApplyDefaults(config);  // sorts again
}

// ping and tasks: they name businesses, as written or resolved; both are
// kept as the resolved name.
void CheckControl(Config& config, Diagnostics& diag, const std::array<bool, 3>& invalid,
                  const BrokenNames& broken) {
  if (!config.ping.business.empty()) {
    if (const Producer* p = config.FindProducer(config.ping.business)) {
      config.ping.business = p->name;
    } else if (broken.producers.count(config.ping.business) == 0) {
      diag.ErrorAt("ping.business", Cat("expected a configured producer business, got ",
                                        Quote(config.ping.business)));
    }
    // The ping's routing key is <app>.<region>.<server>.
    for (size_t i = 0; i < std::size(kIdentityParts); ++i) {
      if (invalid[i] || !(config.identity.*(kIdentityParts[i].value)).empty()) continue;
      diag.ErrorAt("ping.business",
                   Cat("pings need a complete identity, but ", NotSet(kIdentityParts[i])));
    }
  }
  const std::chrono::milliseconds interval = config.ping.interval;
  if (interval < kMinPingInterval || interval > kMaxPingInterval) {
    diag.ErrorAt("ping.interval",
                 Cat("expected a duration of ", FormatDuration(kMinPingInterval), "..",
                     FormatDuration(kMaxPingInterval), ", got ", FormatDuration(interval)));
  }
  if (config.ping.fleet && config.ping.business.empty()) {
    diag.ErrorAt("ping.fleet",
                 "requires ping.business (the fleet is watched through the ping exchange)");
  }
  if (!config.tasks.results.empty()) {
    const Consumer* c = config.FindConsumer(config.tasks.results);
    if (c != nullptr && !c->unroutable) {
      config.tasks.results = c->name;
    } else if (broken.consumers.count(config.tasks.results) == 0) {
      diag.ErrorAt("tasks.results",
                   Cat("expected a configured consumer business (e.g. task.result), got ",
                       Quote(config.tasks.results)));
    }
  }
}

}  // namespace

// ApplyBrokerPassword: the password from the environment or
// broker.password_file, percent-encoded into every broker URI (which must name
// a user and no password of its own). Errors never show the password.
void ApplyBrokerPassword(Config& config, Diagnostics& diag, const LoadOptions& options) {
  std::string password;
  const char* source = "MQ_SIDECAR_BROKER_PASSWORD";
  if (options.broker_password.has_value()) {
    password = *options.broker_password;
  } else if (!config.broker.password_file.empty()) {
    source = "broker.password_file";
    std::ifstream in(config.broker.password_file);
    if (!in) {
      diag.ErrorAt("broker.password_file", Cat("cannot read ", Quote(config.broker.password_file),
                                               ": ", std::generic_category().message(errno)));
      return;
    }
    std::getline(in, password);
    if (!password.empty() && password.back() == '\r') password.pop_back();
    if (password.empty()) {
      diag.ErrorAt("broker.password_file",
                   Cat(Quote(config.broker.password_file), ": the first line is empty"));
      return;
    }
  } else {
    return;
  }
  if (password.size() > 1024 || util::HasControlChars(password)) {
    diag.ErrorAt("broker.password_file",
                 Cat("the password from ", source,
                     " is longer than 1024 bytes or holds a control character"));
    return;
  }
  std::string encoded;
  for (const unsigned char c : password) {
    if (std::isalnum(c) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
      encoded += static_cast<char>(c);
    } else {
      encoded += fmt::format("%{:02X}", c);
    }
  }
  for (size_t i = 0; i < config.broker.uris.size(); ++i) {
    std::string& uri = config.broker.uris[i];
    const size_t scheme = uri.find("://");
    const size_t host_end = uri.find('/', scheme == std::string::npos ? 0 : scheme + 3);
    const size_t at = uri.rfind('@', host_end);
    if (scheme == std::string::npos || at == std::string::npos || at < scheme) {
      diag.ErrorAt(Cat("broker.uris[", i, "]"),
                   Cat("with a password from ", source,
                       ", a broker URI names its user: amqp://user@host:5672/vhost, got ",
                       Quote(util::MaskPassword(uri))));
      continue;
    }
    if (uri.find(':', scheme + 3) < at) {
      diag.ErrorAt(Cat("broker.uris[", i, "]"), Cat("has a password of its own, and ", source,
                                                    " gives one too: drop it from the URI, got ",
                                                    Quote(util::MaskPassword(uri))));
      continue;
    }
    uri.insert(at, ":" + encoded);
  }
}

namespace {

// CheckPemFile: `file` is a readable regular file holding a PEM block whose
// label ends in `label` ("CERTIFICATE", "PRIVATE KEY"). Checked at load: gRPC
// would only fail each handshake, with the reason in its own log.
void CheckPemFile(Diagnostics& diag, const std::string& path, const std::string& file,
                  std::string_view label) {
  if (file.empty()) return;
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    diag.ErrorAt(path,
                 Cat("cannot read ", Quote(file), ": ", std::generic_category().message(errno)));
    return;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    diag.ErrorAt(path, Cat("expected a file, got ", Quote(file)));
    return;
  }
  // PEM files are a few KiB; a bundle of many CAs stays far below the cap.
  std::string text;
  std::array<char, 4096> buf{};
  while (text.size() < kMaxConfigBytes) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n <= 0) break;
    text.append(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  if (text.find("-----BEGIN ") == std::string::npos ||
      text.find(Cat(label, "-----")) == std::string::npos) {
    diag.ErrorAt(path,
                 Cat(Quote(file), " holds no PEM ", label, " (-----BEGIN ...", label, "-----)"));
  }
}

// CheckListenerTls: tcp.tls's files exist and look right, and the keys go
// together.
void CheckListenerTls(const ListenerTls& tls, Diagnostics& diag) {
  CheckPemFile(diag, "tcp.tls.cert", tls.cert, "CERTIFICATE");
  CheckPemFile(diag, "tcp.tls.key", tls.key, "PRIVATE KEY");
  CheckPemFile(diag, "tcp.tls.client_ca", tls.client_ca, "CERTIFICATE");
  if (tls.cert.empty() != tls.key.empty()) {
    diag.ErrorAt(tls.cert.empty() ? "tcp.tls.key" : "tcp.tls.cert",
                 "TLS for TCP listeners needs both tcp.tls.cert and tcp.tls.key");
  }
  if (!tls.client_ca.empty() && tls.cert.empty()) {
    diag.ErrorAt("tcp.tls.client_ca",
                 "client certificates are checked in a TLS handshake: set tcp.tls.cert and "
                 "tcp.tls.key too");
  }
}

// IsBusinessPattern: a business name in which '*' may stand for any run of
// characters.
bool IsBusinessPattern(std::string_view p) {
  return !p.empty() && std::all_of(p.begin(), p.end(), [](char c) {
    return IsAlnum(c) || c == '.' || c == '_' || c == '-' || c == '*';
  });
}

}  // namespace
}  // namespace internal

absl::StatusOr<std::string> ReadTokenFile(const std::string& file) {
  using internal::Cat;
  using internal::Quote;
  std::ifstream in(file);
  if (!in) {
    return absl::NotFoundError(
        Cat("cannot read ", Quote(file), ": ", std::generic_category().message(errno)));
  }
  std::string token;
  std::getline(in, token);
  if (!token.empty() && token.back() == '\r') token.pop_back();
  // Long enough that guessing is hopeless; spaces would not survive the
  // "Bearer <token>" header intact.
  if (token.size() < 16 || token.find_first_of(" \t") != std::string::npos ||
      util::HasControlChars(token)) {
    return absl::InvalidArgumentError(
        Cat(Quote(file),
            ": the first line must be a token of at least 16 characters without "
            "spaces or control characters"));
  }
  return token;
}

namespace internal {
namespace {

// ReadToken: ReadTokenFile, its error reported at `path`.
std::optional<std::string> ReadToken(Diagnostics& diag, const std::string& path,
                                     const std::string& file) {
  absl::StatusOr<std::string> token = ReadTokenFile(file);
  if (!token.ok()) {
    diag.ErrorAt(path, std::string(token.status().message()));
    return std::nullopt;
  }
  return *std::move(token);
}

// CheckAccess: the `access` section. Each client is exactly one of a socket
// of its own, a token, a certificate subject; sockets, tokens and subjects
// are each one client's; rules are patterns or configured businesses.
void CheckAccess(Config& config, Diagnostics& diag) {
  Access& access = config.access;
  if (!access.enabled) return;
  std::sort(access.clients.begin(), access.clients.end(),
            [](const AccessClient& a, const AccessClient& b) { return a.name < b.name; });
  if (access.clients.empty()) {
    diag.ErrorAt("access",
                 "expected at least one client: an empty access section would refuse every call");
  }
  std::set<std::string, std::less<>> businesses;
  for (const Producer& p : config.producers) businesses.insert(p.name);
  for (const Consumer& c : config.consumers) businesses.insert(c.name);
  const std::set<std::string, std::less<>> listen(config.listen.begin(), config.listen.end());
  std::map<std::string, std::string, std::less<>> sockets, tokens, subjects;  // -> client
  for (AccessClient& c : access.clients) {
    const std::string path = BusinessPath("access", c.name);
    const auto key = [&](std::string_view k) { return Cat(path, ".", k); };
    if (!IsBusinessPattern(c.name) || c.name.find('*') != std::string::npos) {
      diag.ErrorAt(path, Cat("expected a client name of letters, digits, '.', '_' and '-', got ",
                             Quote(c.name)));
    }
    const int who =
        int{!c.socket.empty()} + int{!c.token_file.empty()} + int{!c.cert_subject.empty()};
    if (who != 1) {
      diag.ErrorAt(path, Cat("expected exactly one of socket, token_file, cert_subject (who the "
                             "client is), got ",
                             who));
    }
    // One owner per socket, token and subject: a call must name one client.
    const auto claim = [&](std::map<std::string, std::string, std::less<>>& owners,
                           const std::string& value, std::string_view k, std::string_view what) {
      auto [it, inserted] = owners.emplace(value, c.name);
      if (!inserted) {
        diag.ErrorAt(key(k), Cat(what, " is also client ", Quote(it->second),
                                 "'s: each must be one client's"));
      }
    };
    if (!c.socket.empty()) {
      if (!c.socket.starts_with("unix:///") || !ValidListen(c.socket)) {
        diag.ErrorAt(key("socket"), Cat("expected unix:///absolute/path, got ", Quote(c.socket)));
      } else if (listen.contains(c.socket)) {
        diag.ErrorAt(key("socket"),
                     Cat(Quote(c.socket), " is also in listen: a client's socket is its own"));
      }
      claim(sockets, c.socket, "socket", Cat("socket ", Quote(c.socket)));
      if (c.socket_mode == 0) c.socket_mode = config.socket.mode;
      if (c.socket_group.empty()) c.socket_group = config.socket.group;
      if (c.socket_mode > 0777 || (c.socket_mode & 0007) != 0) {
        diag.ErrorAt(key("socket_mode"),
                     Cat(fmt::format("{:04o}", c.socket_mode),
                         " lets other users connect; at most 0770 (owner and group)"));
      }
      if (!c.socket_group.empty() && !util::GroupId(c.socket_group).has_value()) {
        diag.ErrorAt(key("socket_group"), Cat("no group named ", Quote(c.socket_group)));
      }
    } else if (c.socket_mode != 0 || !c.socket_group.empty()) {
      diag.ErrorAt(key(c.socket_mode != 0 ? "socket_mode" : "socket_group"),
                   "applies to a client's own socket: set socket too");
    }
    if (!c.token_file.empty()) {
      if (std::optional<std::string> token = ReadToken(diag, key("token_file"), c.token_file)) {
        c.token = std::move(*token);
        claim(tokens, c.token, "token_file", Cat("the token in ", Quote(c.token_file)));
      }
    }
    if (!c.cert_subject.empty()) {
      if (config.tcp.tls.client_ca.empty()) {
        diag.ErrorAt(key("cert_subject"),
                     "a client certificate is asked for only with tcp.tls.client_ca: set it");
      }
      claim(subjects, c.cert_subject, "cert_subject", Cat("subject ", Quote(c.cert_subject)));
    }
    for (const auto& [list, name] :
         {std::pair{&c.publish, "publish"}, {&c.subscribe, "subscribe"}}) {
      for (size_t i = 0; i < list->size(); ++i) {
        const std::string& rule = (*list)[i];
        const std::string at = Cat(key(name), "[", i, "]");
        if (!IsBusinessPattern(rule)) {
          diag.ErrorAt(at,
                       Cat("expected a business name or a pattern with '*', got ", Quote(rule)));
        } else if (rule.find('*') == std::string::npos && !businesses.contains(rule)) {
          diag.ErrorAt(at, Cat("no business named ", Quote(rule),
                               " in producers or consumers (a name without '*' must be "
                               "configured; a pattern such as \"task.*\" need not match one)"));
        }
      }
    }
  }
}

}  // namespace

absl::StatusOr<Config> Resolve(Config config, Diagnostics& diag, const LoadOptions& options) {
  const std::array<bool, 3> invalid = ResolveIdentity(config, diag, options);
  const size_t businesses = config.producers.size() + config.consumers.size();
  const BrokenNames broken = ResolvePlaceholders(config, diag, invalid);
  ApplyDefaults(config);
  AddUnroutableConsumers(config, diag);

  // A set, not a scan of the earlier entries: a 1 MiB list must not take
  // quadratic time.
  std::set<std::string_view> listen_seen;
  for (size_t i = 0; i < config.listen.size(); ++i) {
    const std::string path = Cat("listen[", i, "]");
    // Placeholders give each replica on one host its own socket from one file
    // (unix:///run/mq-sidecar/{app}-{region}-{server}.sock).
    if (config.listen[i].find_first_of("{}") != std::string::npos) {
      std::vector<std::string> errors;
      std::string out;
      if (!ExpandPlaceholders(config.listen[i], config.identity, &out, &errors, invalid)) {
        for (const std::string& e : errors) diag.ErrorAt(path, e);
        continue;
      }
      config.listen[i] = std::move(out);
    }
    if (!ValidListen(config.listen[i])) {
      diag.ErrorAt(path, Cat("expected unix:///absolute/path or host:port (e.g. "
                             "127.0.0.1:50051, [::1]:50051), got ",
                             Quote(config.listen[i])));
    }
    if (!listen_seen.insert(config.listen[i]).second) {
      diag.ErrorAt(path, Cat("duplicate listen address ", Quote(config.listen[i])));
    }
    if (ValidListen(config.listen[i]) && !config.listen[i].starts_with("unix:") &&
        !config.tcp.tls.enabled()) {
      if (!IsLoopbackListen(config.listen[i])) {
        diag.ErrorAt(path, Cat(Quote(config.listen[i]),
                               " is not a loopback address: a TCP listener without tcp.tls has no "
                               "TLS and no credentials, so anyone who reaches it could publish and "
                               "consume; set tcp.tls (cert, key, client_ca), or listen on "
                               "127.0.0.1 or [::1], or on a unix socket"));
      } else if (!config.tcp.insecure) {
        diag.ErrorAt(path, Cat(Quote(config.listen[i]),
                               " is a TCP listener without TLS or credentials: every local user "
                               "could publish and consume through it; set tcp.insecure: true to "
                               "allow it, or serve TLS (tcp.tls: cert, key), or listen on a unix "
                               "socket (socket.mode, socket.group)"));
      }
    }
  }
  if (config.socket.mode > 0777 || (config.socket.mode & 0007) != 0) {
    diag.ErrorAt("socket.mode", Cat(fmt::format("{:04o}", config.socket.mode),
                                    " lets other users connect; at most 0770 (owner and group)"));
  }
  if (!config.socket.group.empty() && !util::GroupId(config.socket.group).has_value()) {
    diag.ErrorAt("socket.group", Cat("no group named ", Quote(config.socket.group)));
  }
  ApplyBrokerPassword(config, diag, options);
  for (size_t i = 0; i < config.broker.uris.size(); ++i) {
    if (util::HasControlChars(config.broker.uris[i])) {
      diag.ErrorAt(Cat("broker.uris[", i, "]"),
                   Cat("expected a broker URI without control characters, got ",
                       Quote(config.broker.uris[i])));
      continue;
    }
    absl::StatusOr<BrokerUri> uri = ParseBrokerUri(config.broker.uris[i]);
    if (!uri.ok()) {
      diag.ErrorAt(Cat("broker.uris[", i, "]"), std::string(uri.status().message()));
    }
  }
  // Checked at load, not at the first connect: a typo must fail the start
  // (and --check-config), not turn into a reconnect loop.
  const BrokerTls& tls = config.broker.tls;
  auto check_readable = [&](const std::string& path, const std::string& file) {
    if (file.empty()) return;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      diag.ErrorAt(path,
                   Cat("cannot read ", Quote(file), ": ", std::generic_category().message(errno)));
      return;
    }
    struct stat st {};
    const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    ::close(fd);
    if (!regular) diag.ErrorAt(path, Cat("expected a file, got ", Quote(file)));
  };
  check_readable("broker.tls.ca", tls.ca);
  const bool any_amqps =
      std::any_of(config.broker.uris.begin(), config.broker.uris.end(),
                  [](const std::string& u) { return u.starts_with("amqps://"); });
  if (any_amqps && tls.ca.empty() && ::access(kSystemCaBundle, R_OK) != 0) {
    diag.ErrorAt("broker.uris", Cat("amqps:// needs a CA bundle: the system's, ", kSystemCaBundle,
                                    ", is not readable; set broker.tls.ca"));
  }
  check_readable("broker.tls.cert", tls.cert);
  check_readable("broker.tls.key", tls.key);
  if (tls.cert.empty() != tls.key.empty()) {
    diag.ErrorAt(tls.cert.empty() ? "broker.tls.key" : "broker.tls.cert",
                 "a client certificate needs both broker.tls.cert and broker.tls.key");
  }
  CheckListenerTls(config.tcp.tls, diag);
  CheckAccess(config, diag);
  const std::chrono::milliseconds heartbeat = config.broker.heartbeat;
  if (heartbeat.count() != 0 &&
      (heartbeat < std::chrono::seconds(1) || heartbeat > std::chrono::seconds(65535) ||
       heartbeat.count() % 1000 != 0)) {
    diag.ErrorAt("broker.heartbeat", Cat("expected 0 (disabled) or whole seconds 1s..65535s, got ",
                                         FormatDuration(heartbeat)));
  }
  // Bounds (docs/configuration.md): each far above any sane setting, and
  // below what would turn a typo into a publish or a shutdown that hangs.
  auto check_range = [&](const std::string& path, std::chrono::milliseconds d, bool zero_ok,
                         std::chrono::milliseconds max) {
    if ((d.count() > 0 || (zero_ok && d.count() == 0)) && d <= max) return;
    diag.ErrorAt(path, Cat("expected a duration ", zero_ok ? "of" : "above 0 and", " at most ",
                           FormatDuration(max), ", got ", FormatDuration(d)));
  };
  check_range("broker.connect_timeout", config.broker.connect_timeout, false, kMaxConnectTimeout);
  check_range("publish.wait_timeout", config.publish.wait_timeout, false, kMaxWaitTimeout);
  check_range("shutdown.drain", config.shutdown.drain, true, kMaxDrain);
  if (!config.metrics.listen.empty()) {
    if (absl::StatusOr<observability::ListenAddress> a =
            observability::ParseListenAddress(config.metrics.listen);
        !a.ok()) {
      diag.ErrorAt("metrics.listen",
                   Cat(a.status().message(), ", got ", Quote(config.metrics.listen)));
    }
  }

  // limits: each key's range is the reader's; a configured prefetch is held
  // to the same ceiling as a client's.
  for (Consumer& c : config.consumers) {
    if (c.unroutable) {  // not written in the file: its default yields
      c.prefetch = std::min(c.prefetch, config.limits.max_prefetch);
      continue;
    }
    if (c.prefetch > config.limits.max_prefetch) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c), "prefetch"),
                   Cat("prefetch ", c.prefetch, " exceeds limits.max_prefetch (",
                       config.limits.max_prefetch, ")"));
    }
  }

  for (const Producer& p : config.producers) {
    if (std::string_view e = CheckBusinessName(p.name); !e.empty()) {
      diag.ErrorAt(BusinessPath("producers", PathName(p)), Cat(e, ", got ", Quote(p.name)));
    }
    if (std::string e = CheckAmqpName(p.exchange, "exchange"); !e.empty()) {
      diag.ErrorAt(BusinessPath("producers", PathName(p), "exchange"), e);
    }
    if (p.handle.empty()) continue;
    if (std::string e = CheckAmqpName(p.handle, "alternate exchange"); !e.empty()) {
      diag.ErrorAt(BusinessPath("producers", PathName(p), "handle"), e);
    } else if (p.handle.size() + 6 > 255) {
      diag.ErrorAt(BusinessPath("producers", PathName(p), "handle"),
                   "expected a handle of at most 249 bytes (its queue is <handle>.queue)");
    }
  }
  for (const Consumer& c : config.consumers) {
    if (c.unroutable) continue;  // made from a producer's handle, checked with it
    if (std::string_view e = CheckBusinessName(c.name); !e.empty()) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c)), Cat(e, ", got ", Quote(c.name)));
    }
    if (std::string e = CheckAmqpName(c.exchange, "exchange"); !e.empty()) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c), "exchange"), e);
    }
    if (std::string e = CheckAmqpName(c.queue, "queue"); !e.empty()) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c), "queue"), e);
    }
    if (c.max_deliveries > 0 && c.queue_type != QueueType::kQuorum) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c), "max_deliveries"),
                   "expected 0 for a classic queue (a delivery limit needs queue_type quorum)");
    } else if (c.max_deliveries > 0 && !c.dead_letter) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c), "max_deliveries"),
                   "expected 0 with dead_letter false (a message over the delivery limit is "
                   "dead-lettered: set dead_letter true)");
    }
    CheckRetry(c, diag);
    for (size_t i = 0; i < c.binding_keys.size(); ++i) {
      const std::string path =
          Cat(BusinessPath("consumers", PathName(c), "binding_keys"), "[", i, "]");
      if (util::HasControlChars(c.binding_keys[i])) {
        diag.ErrorAt(path, Cat("expected a binding key without control characters, got ",
                               Quote(c.binding_keys[i])));
      } else if (c.binding_keys[i].size() > 255) {
        diag.ErrorAt(path, "expected a binding key of at most 255 bytes");
      }
    }
    if (util::HasControlChars(c.handle)) {
      diag.ErrorAt(BusinessPath("consumers", PathName(c), "handle"),
                   Cat("expected a handle without control characters, got ", Quote(c.handle)));
    }
  }
  CheckConflicts(config, diag);
  CheckControl(config, diag, invalid, broken);

  if (businesses == 0) {
    diag.Error(0, "producers, consumers",
               "expected at least one producer or consumer business, got none");
  }
  if (!diag.ok()) return diag.ToStatus();
  return config;
}

}  // namespace internal

using internal::Append;
using internal::Cat;
using internal::Join;
using internal::Trim;

std::string_view QueueTypeName(QueueType t) {
  switch (t) {
    case QueueType::kQuorum:
      return "quorum";
    case QueueType::kClassic:
      return "classic";
  }
  return "unknown";
}

namespace {

// `business` is b's resolved name or the name as written ("task.{app}").
template <typename Business>
bool Names(const Business& b, std::string_view business) {
  return b.name == business || (!b.written_as.empty() && b.written_as == business);
}

}  // namespace

bool IsIdentityPart(std::string_view part) {
  return !part.empty() && part.size() <= internal::kMaxIdentityPart &&
         std::all_of(part.begin(), part.end(),
                     [](char c) { return internal::IsAlnum(c) || c == '_' || c == '-'; });
}

const Producer* Config::FindProducer(std::string_view business) const {
  // Linear: a handful of businesses, and hand-built configs need not be sorted.
  for (const Producer& p : producers) {
    if (Names(p, business)) return &p;
  }
  return nullptr;
}

const Consumer* Config::FindConsumer(std::string_view business) const {
  for (const Consumer& c : consumers) {
    if (Names(c, business)) return &c;
  }
  return nullptr;
}

LoadOptions::IdentityOverrides MergeIdentityOverrides(
    const LoadOptions::IdentityOverrides& flags,
    const LoadOptions::IdentityOverrides& environment) {
  LoadOptions::IdentityOverrides out;
  out.app = flags.app ? flags.app : environment.app;
  out.region = flags.region ? flags.region : environment.region;
  out.server = flags.server ? flags.server : environment.server;
  return out;
}

std::string NewInstanceId() {
  // std::random_device is the kernel's getrandom on Linux: instances started
  // at the same moment on cloned hosts still differ, as a time-seeded PRNG
  // would not.
  std::random_device random;
  const uint64_t id = (static_cast<uint64_t>(random()) << 32) ^ static_cast<uint64_t>(random());
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(id));
  return hex;
}

std::optional<std::string> BrokerPasswordFromEnvironment() {
  // As IdentityFromEnvironment: once, before any thread starts.
  const char* value = std::getenv("MQ_SIDECAR_BROKER_PASSWORD");  // NOLINT(concurrency-mt-unsafe)
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

LoadOptions::IdentityOverrides IdentityFromEnvironment() {
  // Called once by main before any thread starts, so getenv cannot race a
  // setenv. An empty variable counts as not set (`MQ_SIDECAR_APP=` in a unit
  // or compose file), leaving the file's value.
  auto get = [](const char* name) -> std::optional<std::string> {
    const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
    if (value == nullptr || *value == '\0') return std::nullopt;
    return std::string(value);
  };
  LoadOptions::IdentityOverrides out;
  out.app = get("MQ_SIDECAR_APP");
  out.region = get("MQ_SIDECAR_REGION");
  out.server = get("MQ_SIDECAR_SERVER");
  return out;
}

absl::StatusOr<BrokerUri> ParseBrokerUri(std::string_view uri) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        Cat("expected an amqp:// or amqps:// URI like "
            "amqp://user:password@host:5672/vhost",
            why, ", got ", internal::Quote(uri)));
  };
  if (!uri.starts_with("amqp://") && !uri.starts_with("amqps://")) return bad("");
  if (uri.find('\0') != std::string_view::npos) return bad("");
  // amqp_parse_url writes NULs into its argument and points into it.
  std::string buffer(uri);
  amqp_connection_info info;
  amqp_default_connection_info(&info);
  if (amqp_parse_url(buffer.data(), &info) != AMQP_STATUS_OK) {
    return bad(" (percent-encode '@', ':' and '/' in user and password)");
  }
  if (info.port < 1 || info.port > 65535) return bad(" (port 1..65535)");
  if (info.host == nullptr || *info.host == '\0') return bad(" (with a host)");
  BrokerUri out;
  out.host = info.host;
  out.port = info.port;
  out.user = info.user;
  out.password = info.password;
  out.vhost = info.vhost;
  if (out.vhost.empty()) out.vhost = "/";
  out.tls = info.ssl != 0;
  return out;
}

namespace {

bool LooksLikeIni(std::string_view text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 BOM
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    const std::string_view line = Trim(text.substr(0, eol));
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    return line.size() >= 3 && line.front() == '[' && line.back() == ']';
  }
  return false;
}

}  // namespace

absl::StatusOr<Config> LoadFile(const std::string& path, const LoadOptions& options) {
  auto unreadable = [&](int err) {
    return absl::NotFoundError(
        Cat("cannot read config file ", path, ": ", std::generic_category().message(err)));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unreadable(errno);
  // Read in chunks up to one byte past the cap, whatever st_size says:
  // /dev/zero and FIFOs have none, and a file may grow while it is read.
  std::string text;
  char buffer[65536];
  while (text.size() <= internal::kMaxConfigBytes) {
    const size_t want = std::min(sizeof(buffer), internal::kMaxConfigBytes + 1 - text.size());
    const ssize_t n = ::read(fd, buffer, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return unreadable(err);
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  if (text.size() > internal::kMaxConfigBytes) {
    return absl::InvalidArgumentError(
        Cat(path, ": config file larger than ", internal::kMaxConfigText));
  }
  absl::StatusOr<Config> config =
      LooksLikeIni(text) ? LoadIniText(text, path, options) : LoadYamlText(text, path, options);
  if (config.ok()) config->source = path;
  return config;
}

std::optional<std::string> ParseLogLevel(std::string_view name) {
  static constexpr std::string_view kLevels[] = {"trace", "debug", "info", "warn", "error"};
  for (std::string_view level : kLevels) {
    if (name.size() == level.size() &&
        std::equal(name.begin(), name.end(), level.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == b;
        })) {
      return std::string(level);
    }
  }
  return std::nullopt;
}

std::string Describe(const Config& input) {
  using internal::FormatDuration;
  Config config = input;
  internal::ApplyDefaults(config);
  const TopologyPlan plan = PlanTopology(config);
  auto or_none = [](const std::string& s) { return s.empty() ? std::string("(none)") : s; };

  std::string out;
  Append(&out, "source: ", config.source.empty() ? "(text)" : config.source, "\n");
  Append(&out, "listen:\n");
  for (const std::string& l : config.listen) Append(&out, "  ", l, "\n");
  Append(&out, "socket: mode ", fmt::format("{:04o}", config.socket.mode), ", group ",
         config.socket.group.empty() ? "(the daemon's)" : config.socket.group, "\n");
  Append(&out, "tcp: insecure ", config.tcp.insecure ? "true" : "false", "\n");
  if (config.access.enabled) {
    Append(&out, "access:\n");
    for (const AccessClient& c : config.access.clients) {
      Append(&out, "  ", c.name, ": ");
      if (!c.socket.empty()) {
        Append(&out, "socket ", c.socket, " (mode ", fmt::format("{:04o}", c.socket_mode),
               ", group ", c.socket_group.empty() ? "(the daemon's)" : c.socket_group, ")");
      } else if (!c.token_file.empty()) {
        Append(&out, "token from ", c.token_file);  // never the token
      } else {
        Append(&out, "certificate subject ", c.cert_subject);
      }
      Append(&out, "; publish [", Join(c.publish, ", "), "]; subscribe [", Join(c.subscribe, ", "),
             "]", c.reload ? "; reload" : "", "\n");
    }
  }
  if (config.tcp.tls.enabled()) {
    Append(&out, "tcp.tls: cert ", config.tcp.tls.cert, ", key ", config.tcp.tls.key,
           ", client_ca ",
           config.tcp.tls.client_ca.empty() ? "(none: no client certificate asked)"
                                            : config.tcp.tls.client_ca,
           "\n");
  }
  Append(&out, "broker:\n  uris (tried in order):\n");
  for (const std::string& u : config.broker.uris) {
    Append(&out, "    ", util::MaskPassword(u), "\n");
  }
  Append(&out, "  heartbeat: ",
         config.broker.heartbeat.count() == 0 ? "0 (disabled)"
                                              : FormatDuration(config.broker.heartbeat),
         "\n");
  Append(&out, "  connect_timeout: ", FormatDuration(config.broker.connect_timeout), "\n");
  Append(&out, "  tls (amqps:// only): ca ",
         config.broker.tls.ca.empty() ? Cat("(system) ", kSystemCaBundle) : config.broker.tls.ca,
         ", client cert ", or_none(config.broker.tls.cert), ", verify ",
         config.broker.tls.verify ? "true" : "false (any certificate)", "\n");
  Append(&out, "publish:\n  window: ", config.publish.window, "\n");
  Append(&out, "  republish_unconfirmed: ", config.publish.republish_unconfirmed ? "true" : "false",
         "\n");
  Append(&out, "  wait_timeout: ", FormatDuration(config.publish.wait_timeout), "\n");
  Append(&out, "shutdown:\n  drain: ", FormatDuration(config.shutdown.drain), "\n");
  Append(&out, "metrics:\n  listen: \"", config.metrics.listen, "\"\n");
  const Limits& l = config.limits;
  Append(&out, "limits:\n  max_payload_bytes: ", l.max_payload_bytes,
         "\n  max_headers: ", l.max_headers, "\n  max_header_bytes: ", l.max_header_bytes,
         "\n  max_routing_key_bytes: ", l.max_routing_key_bytes,
         "\n  max_message_id_bytes: ", l.max_message_id_bytes,
         "\n  max_streams_per_connection: ", l.max_streams_per_connection,
         "\n  max_prefetch: ", l.max_prefetch, "\n  max_batch_messages: ", l.max_batch_messages,
         "\n");
  Append(&out, "log:\n  level: ", config.log_level, "\n  format: ", config.log_format, "\n");
  auto or_not_set = [](const std::string& s) { return s.empty() ? std::string("(not set)") : s; };
  Append(&out, "identity:\n  app: ", or_not_set(config.identity.app), "\n");
  Append(&out, "  region: ", or_not_set(config.identity.region), "\n");
  Append(&out, "  server: ", or_not_set(config.identity.server), "\n");
  if (!config.instance.empty()) Append(&out, "  instance: ", config.instance, "\n");
  Append(&out, "ping:\n");
  if (config.ping.business.empty()) {
    Append(&out, "  business: (none: no pings)\n");
  } else {
    Append(&out, "  business: ", config.ping.business);
    if (const Producer* p = config.FindProducer(config.ping.business)) {
      Append(&out, " (exchange ", p->exchange, ", routing key ", config.identity.app, ".",
             config.identity.region, ".", config.identity.server, ")");
    }
    Append(&out, "\n");
  }
  Append(&out, "  interval: ", FormatDuration(config.ping.interval), "\n");
  Append(&out, "  fleet: ", config.ping.fleet ? "true" : "false", "\n");
  Append(&out, "tasks:\n  results: ",
         config.tasks.results.empty() ? std::string("(none: SendTask disabled)")
                                      : config.tasks.results,
         "\n");

  // Maps rather than FindProducer/FindConsumer per name: linear lookups
  // would make a config with many businesses quadratic.
  std::map<std::string_view, std::pair<const Producer*, const Consumer*>> names;
  for (const Producer& p : config.producers) {
    auto& roles = names[p.name];
    if (roles.first == nullptr) roles.first = &p;  // the first, as FindProducer
  }
  for (const Consumer& c : config.consumers) {
    auto& roles = names[c.name];
    if (roles.second == nullptr) roles.second = &c;
  }
  Append(&out, "businesses:\n");
  for (const auto& [name, roles] : names) {
    Append(&out, "  ", name);
    // Placeholders: the name as written, once even if both roles wrote it.
    std::set<std::string_view> written;
    if (roles.first != nullptr && !roles.first->written_as.empty()) {
      written.insert(roles.first->written_as);
    }
    if (roles.second != nullptr && !roles.second->written_as.empty()) {
      written.insert(roles.second->written_as);
    }
    if (!written.empty()) Append(&out, " (written as ", Join(written, ", "), ")");
    Append(&out, "\n");
    if (const Producer* p = roles.first) {
      Append(&out, "    producer: exchange ", p->exchange, ", handle ", or_none(p->handle), "\n");
    }
    if (const Consumer* c = roles.second; c != nullptr && c->unroutable) {
      Append(&out, "    consumer (unroutable messages of producer ",
             c->name.substr(0, c->name.size() - std::string_view(".unroutable").size()),
             "): exchange ", c->exchange, " (fanout), queue ", c->queue, " (",
             QueueTypeName(c->queue_type), "), binding keys [", Join(c->binding_keys, ", "),
             "], prefetch ", c->prefetch, "\n");
    } else if (c != nullptr) {
      Append(&out, "    consumer: exchange ", c->exchange, ", queue ", c->queue, " (",
             QueueTypeName(c->queue_type), "), binding keys [", Join(c->binding_keys, ", "),
             "], prefetch ", c->prefetch, ", max_deliveries ", c->max_deliveries, ", handle ",
             or_none(c->handle), "\n");
      Append(&out, "      dead_letter: ",
             c->dead_letter
                 ? Cat("true (", DeadLetterExchange(*c), " -> ", DeadLetterQueue(*c), ")")
                 : std::string("false (nack without requeue drops)"),
             ", single_active: ", c->single_active ? "true" : "false", "\n");
      if (c->retry.enabled()) {
        std::vector<std::string> delays;
        std::vector<std::string> retry_queues;  // in delay order; a repeated delay shares one
        std::set<std::string> seen;
        for (std::chrono::milliseconds d : c->retry.delays) {
          delays.push_back(FormatDuration(d));
          std::string q = RetryQueue(*c, d);
          if (seen.insert(q).second) retry_queues.push_back(std::move(q));
        }
        Append(&out, "      retry: delays [", Join(delays, ", "), "], max_attempts ",
               c->retry.max_attempts, " (then ", DeadLetterQueue(*c), "), retry queues ",
               Join(retry_queues, ", "), "\n");
      } else {
        Append(&out, "      retry: none (nack with requeue requeues at once)\n");
      }
    }
  }

  Append(&out, "topology:\n  exchanges (durable):\n");
  for (const ExchangeSpec& e : plan.exchanges) {
    Append(&out, "    ", e.name, " ", e.type);
    if (!e.alternate_exchange.empty()) {
      Append(&out, " alternate-exchange=", e.alternate_exchange);
    }
    Append(&out, "\n");
  }
  Append(&out, "  queues (durable):\n");
  for (const QueueSpec& q : plan.queues) {
    Append(&out, "    ", q.name, " ", QueueTypeName(q.type));
    if (!q.dead_letter_exchange.empty()) {
      Append(&out, " x-dead-letter-exchange=", q.dead_letter_exchange);
      if (q.type == QueueType::kQuorum) {
        Append(&out, " x-dead-letter-strategy=at-least-once x-overflow=reject-publish");
      }
    }
    if (q.message_ttl_ms) Append(&out, " x-message-ttl=", *q.message_ttl_ms);
    if (!q.retry_for.empty()) {
      // Expired messages go back through the default exchange to retry_for.
      Append(&out, " x-dead-letter-exchange=\"\" x-dead-letter-routing-key=", q.retry_for);
      if (q.type == QueueType::kQuorum) {
        Append(&out, " x-dead-letter-strategy=at-least-once x-overflow=reject-publish");
      }
    }
    if (q.delivery_limit) Append(&out, " x-delivery-limit=", *q.delivery_limit);
    if (q.single_active) Append(&out, " x-single-active-consumer=true");
    Append(&out, "\n");
  }
  Append(&out, "  bindings:\n");
  for (const BindingSpec& b : plan.bindings) {
    Append(&out, "    ", b.exchange, " -> ", b.queue, " key \"", b.binding_key, "\"\n");
  }
  return out;
}

}  // namespace mqs::config
