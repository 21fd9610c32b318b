// Config: the daemon's configuration, loaded from YAML or from the seed's INI.
//
// Every key, its default and its meaning is listed once, in kConfigKeys
// (config.cc), and documented in docs/configuration.md. Loaders fill a Config
// and then Resolve() applies defaults and validates, collecting every error
// rather than stopping at the first.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mqs::config {

enum class QueueType { kQuorum, kClassic };

std::string_view QueueTypeName(QueueType t);  // "quorum" / "classic"

// Identity: which service instance this sidecar serves. Every part is a
// word of letters, digits, '_' and '-' (no '.', '#', '*' or whitespace: the
// parts become words of routing keys and names). Empty: not set.
struct Identity {
  std::string app;     // e.g. "usdtsvr"
  std::string region;  // e.g. "1"
  std::string server;  // e.g. "0"
  bool complete() const { return !app.empty() && !region.empty() && !server.empty(); }
};

// LoadOptions: what overrides the file. main.cc fills `identity` from the
// flags --app/--region/--server, else from the environment
// (MQ_SIDECAR_APP, MQ_SIDECAR_REGION, MQ_SIDECAR_SERVER): flag > env > file.
struct LoadOptions {
  struct IdentityOverrides {
    std::optional<std::string> app, region, server;
  } identity;
  // MQ_SIDECAR_BROKER_PASSWORD, when set: the broker password (over
  // broker.password_file).
  std::optional<std::string> broker_password;
};

// BrokerPasswordFromEnvironment: MQ_SIDECAR_BROKER_PASSWORD, if set and not empty.
std::optional<std::string> BrokerPasswordFromEnvironment();

// IsIdentityPart: 1..64 letters, digits, '_' and '-' (no '.', '#', '*' or
// whitespace: the parts become words of routing keys and names). The one rule
// for identity parts, in the config, in task targets and in pings.
bool IsIdentityPart(std::string_view part);

// IdentityFromEnvironment: the MQ_SIDECAR_* variables that are set (an
// empty variable counts as not set).
LoadOptions::IdentityOverrides IdentityFromEnvironment();

// MergeIdentityOverrides: each part from `flags` if set there, else from
// `environment` (flag > env; LoadFile then puts both over the file).
LoadOptions::IdentityOverrides MergeIdentityOverrides(
    const LoadOptions::IdentityOverrides& flags, const LoadOptions::IdentityOverrides& environment);

// Producer: a business this sidecar publishes to.
struct Producer {
  std::string name;        // business name, resolved, e.g. "usdt.transfer"
  std::string written_as;  // as written, when it had {app}/{region}/{server}; else ""
  std::string exchange;    // default: the business name
  // Seed's alternate-exchange handler. Non-empty: the business exchange is
  // declared with alternate-exchange=<handle>, a fanout exchange <handle> and
  // a durable queue <handle>.queue bound to it, so unroutable messages are kept.
  std::string handle;
};

// Retry: a consumer business's delayed retries. A nack with requeue comes
// back after delays[attempt - 1] (the last delay once the list is used up),
// through a retry queue per delay (RetryQueue); after max_attempts
// deliveries the message is dead-lettered instead. Needs dead_letter.
struct Retry {
  std::vector<std::chrono::milliseconds> delays;  // each in [kMinRetryDelay, kMaxRetryDelay]
  uint32_t max_attempts = 0;  // >= 2; default (0 in the file): delays.size() + 1
  bool enabled() const { return !delays.empty(); }
};
// SameRetry: the same delays and max_attempts.
bool SameRetry(const Retry& a, const Retry& b);
// DescribeRetry: "{delays: [1s, 10s], max_attempts: 3}", or "none".
std::string DescribeRetry(const Retry& r);
inline constexpr std::chrono::milliseconds kMinRetryDelay{100};
inline constexpr std::chrono::milliseconds kMaxRetryDelay{std::chrono::hours(24 * 7)};

// Consumer: a business whose queue this sidecar's clients consume.
struct Consumer {
  std::string name;                       // resolved
  std::string written_as;                 // as written, when it had placeholders; else ""
  std::string exchange;                   // default: the business name
  std::string queue;                      // default: <exchange>.queue
  std::vector<std::string> binding_keys;  // default: ["#"]
  QueueType queue_type = QueueType::kQuorum;
  uint32_t prefetch = 16;  // default for Subscribe.open.prefetch == 0
  std::string handle;      // seed's consume callback name; informational
  // Dead letters: true declares the queue with a dead-letter exchange
  // <exchange>.dlx (topic) and a queue <queue>.dead (of the same type) bound
  // to it with "#", so a message nacked with requeue=false (or over
  // max_deliveries) is kept there, never dropped (at-least-once on quorum
  // queues). false: the queue has no dead-letter exchange (nack without
  // requeue drops). Every consumer of one queue must agree.
  bool dead_letter = true;
  // Poison-message limit: > 0 also gives the queue a delivery limit, so a
  // message delivered this many times without an ack is dead-lettered.
  // Needs a quorum queue and dead_letter. 0: none.
  uint32_t max_deliveries = 0;
  // Single active consumer (x-single-active-consumer): of all subscribers of
  // the queue, over every sidecar, one receives at a time, in queue order;
  // when it goes, the next takes over from the first unacked message. Every
  // consumer of one queue must agree.
  bool single_active = false;
  // Delayed retry (docs/reliability.md). Empty `retry.delays`: none.
  Retry retry;
  // Not written in the config: "<producer>.unroutable", added by Resolve()
  // for every producer with a handle. It consumes <handle>.queue (classic),
  // which the producer's alternate exchange <handle> (fanout) fills, and
  // gets no dead-letter queue (the producer's handle declares the queue).
  bool unroutable = false;
};

// Ping: the daemon's own server.ping heartbeat (docs/control-plane.md).
struct Ping {
  std::string business;  // a configured producer; "": no pings
  std::chrono::milliseconds interval{std::chrono::seconds(10)};
  // Watch every instance's pings (ListServers, `mqctl servers`) through an
  // exclusive auto-delete queue of this sidecar's own.
  bool fleet = false;
};

// Tasks: sending tasks (SendTask) and waiting for their results.
struct Tasks {
  // A configured consumer business whose exchange results are published to
  // (its queue, e.g. task.result.queue, keeps them durably). SendTask needs
  // it; "" disables SendTask.
  std::string results;
};

// Listeners (docs/security.md). Every unix socket listener is created with
// `mode` and `group`, whatever the umask; a TCP listener without `tcp.tls`
// carries no credentials and no TLS, so it needs `insecure` and a loopback
// address.
struct SocketOptions {
  uint32_t mode = 0660;
  std::string group;  // "": the daemon's own group
};
// TLS for TCP listeners (docs/security.md). With `cert` and `key` every TCP
// listener serves TLS (1.2 or later) and may be on any address; with
// `client_ca` too, clients must present a certificate that chains to it
// (mutual TLS). gRPC re-reads the three files every kListenerTlsRefresh while
// running, so renewed certificates take effect without a restart.
struct ListenerTls {
  std::string cert;       // certificate chain (PEM); "": no TLS
  std::string key;        // its private key (PEM, unencrypted)
  std::string client_ca;  // CA bundle (PEM) client certificates must chain to; "": none asked
  bool enabled() const { return !cert.empty(); }
};
inline constexpr std::chrono::seconds kListenerTlsRefresh{5};
struct TcpOptions {
  bool insecure = false;  // plaintext TCP listeners, on loopback only
  ListenerTls tls;
};

// Access (docs/security.md#access-who-may-use-which-business): which client
// may publish to and subscribe to which businesses. Without an `access`
// section every caller may use every business. With one, each call must be
// made by one of these clients (else UNAUTHENTICATED), and each business it
// names must match one of that client's patterns (else PERMISSION_DENIED).
struct AccessClient {
  std::string name;  // letters, digits, '.', '_', '-'
  // Who the client is: exactly one of the three.
  std::string socket;        // unix:///path: a listener of its own; its callers are this client
  uint32_t socket_mode = 0;  // 0: socket.mode
  std::string socket_group;  // "": socket.group
  std::string token_file;    // bearer token: this file's first line
  std::string cert_subject;  // mTLS: the client certificate's subject, RFC 2253 ("CN=a,O=b")
  // Business names or patterns ('*' matches any run of characters).
  std::vector<std::string> publish;
  std::vector<std::string> subscribe;
  // May call Reload (the config read again from its file, as SIGHUP does).
  bool reload = false;
  // Not a key: token_file's first line, read by Resolve(). Never logged.
  std::string token;
};
struct Access {
  bool enabled = false;               // the file has an `access` section
  std::vector<AccessClient> clients;  // sorted by name
};

// ReadTokenFile: a bearer token file's first line (without a trailing '\r'),
// or an error naming the file and what is wrong (never the token). Used at
// load and by the access policy when the file changes.
absl::StatusOr<std::string> ReadTokenFile(const std::string& file);

// TLS to the broker, used by amqps:// URIs only (docs/security.md).
struct BrokerTls {
  std::string ca;    // CA bundle; "": the system's (kSystemCaBundle)
  std::string cert;  // client certificate (PEM), with `key`; "": none
  std::string key;
  bool verify = true;  // the broker's certificate chain and host name
};
inline constexpr const char* kSystemCaBundle = "/etc/ssl/certs/ca-certificates.crt";

struct Broker {
  std::vector<std::string> uris;  // default: ["amqp://guest:guest@127.0.0.1:5672/"]
  // The password of every URI, from this file's first line (or from
  // MQ_SIDECAR_BROKER_PASSWORD, which wins); the URIs then name a user only.
  // Resolve() puts it into `uris`.
  std::string password_file;
  std::chrono::milliseconds heartbeat{std::chrono::seconds(30)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(5)};
  BrokerTls tls;
};

struct Publish {
  uint32_t window = 1024;  // PublishStream: requests in flight per stream
  // At a disconnect, publishes sent but not confirmed are sent again on the
  // next connection with the same message_id (at-least-once); false answers
  // them UNCONFIRMED instead.
  bool republish_unconfirmed = true;
  // How long a publish waits for a connection (or for the broker to lift a
  // resource alarm) before it fails; a unary call's own deadline, if sooner,
  // wins.
  std::chrono::milliseconds wait_timeout{std::chrono::seconds(30)};
};

struct Shutdown {
  // On SIGTERM, how long Subscribe clients get to ack what they hold (no new
  // deliveries start) and publishes get to be confirmed.
  std::chrono::milliseconds drain{std::chrono::seconds(10)};
};

// Limits: what one request may hold (docs/configuration.md, "Limits"). A
// request over one fails alone; the stream, the other clients and the
// broker connection carry on. Ranges and defaults are in kConfigKeys.
struct Limits {
  uint32_t max_payload_bytes = 16 * 1024 * 1024;
  uint32_t max_headers = 64;
  uint32_t max_header_bytes = 64 * 1024;  // names + values
  uint32_t max_routing_key_bytes = 255;
  uint32_t max_message_id_bytes = 255;  // message_id and correlation_id
  uint32_t max_streams_per_connection = 1000;
  uint32_t max_prefetch = 10000;
  // Messages in one PublishBatch: bounds what one read of a
  // PublishBatchStream holds in memory before the window lets it go out.
  uint32_t max_batch_messages = 1000;
};
// Upper bounds of the keys above: the headers travel in one AMQP frame (the
// daemon asks for 128 KiB), prefetch is a 16-bit field of basic.qos, and
// 128 MiB is RabbitMQ's own largest message by default.
inline constexpr uint32_t kMaxPayloadBytesLimit = 128 * 1024 * 1024;
inline constexpr uint32_t kMaxHeadersLimit = 1024;
inline constexpr uint32_t kMaxHeaderBytesLimit = 64 * 1024;
inline constexpr uint32_t kMaxStreamsLimit = 100000;
inline constexpr uint32_t kMaxBatchMessagesLimit = 100000;

// MetricsEndpoint: the Prometheus endpoint (docs/operations.md, "Metrics").
struct MetricsEndpoint {
  std::string listen = "127.0.0.1:9464";  // host:port; "": off
};

struct Config {
  std::string source;               // file it was loaded from ("" for text)
  std::vector<std::string> listen;  // default: unix:///run/mq-sidecar/mq-sidecar.sock
  Broker broker;
  std::vector<Producer> producers;  // sorted by name
  std::vector<Consumer> consumers;  // sorted by name
  Publish publish;
  Shutdown shutdown;
  Limits limits;
  std::string log_level = "info";   // trace, debug, info, warn, error
  std::string log_format = "text";  // text, json (util::ParseLogFormat)
  Identity identity;
  Ping ping;
  Tasks tasks;
  SocketOptions socket;
  TcpOptions tcp;
  Access access;
  // Not a key: chosen per process (NewInstanceId) by main before the plan is
  // made; names this sidecar's exclusive queues and its task correlation ids.
  std::string instance;
  MetricsEndpoint metrics;

  // By the resolved name or as written ("task.{app}.{region}.{server}").
  const Producer* FindProducer(std::string_view business) const;
  const Consumer* FindConsumer(std::string_view business) const;
};

// NewInstanceId: 16 random lowercase hex digits.
std::string NewInstanceId();

// BrokerUri: one broker URI as parsed by rabbitmq-c's amqp_parse_url, with one
// correction: an empty vhost ("amqp://host:5672/", as in the default and the
// seed URIs) means the default vhost "/", as in pika and amqp091-go. rabbitmq-c
// alone yields vhost "", and RabbitMQ refuses the login.
struct BrokerUri {
  std::string host;
  int port = 5672;
  std::string user;
  std::string password;
  std::string vhost;
  bool tls = false;  // amqps://
};

// ParseBrokerUri accepts amqp:// and amqps:// URIs with a port in 1..65535;
// without a port, 5672 (amqp) or 5671 (amqps).
// The error message never contains the password.
absl::StatusOr<BrokerUri> ParseBrokerUri(std::string_view uri);

// LoadFile reads `path`; content starting (after blank/comment lines) with a
// `[section]` line is the seed's INI, anything else YAML. Errors name the file,
// the key, the line where known, and what was expected; all errors are
// reported, one per line, in an InvalidArgument status (NotFound if the file
// cannot be read).
absl::StatusOr<Config> LoadFile(const std::string& path, const LoadOptions& options = {});
absl::StatusOr<Config> LoadYamlText(std::string_view text, std::string_view filename,
                                    const LoadOptions& options = {});
absl::StatusOr<Config> LoadIniText(std::string_view text, std::string_view filename,
                                   const LoadOptions& options = {});

// ParseLogLevel: one of trace, debug, info, warn, error in any case, as the
// lowercase name spdlog::level::from_str knows; nullopt for anything else
// (from_str would silently answer "off").
std::optional<std::string> ParseLogLevel(std::string_view name);

// Describe renders the resolved config and topology for --check-config.
// Passwords in broker URIs are masked.
std::string Describe(const Config& config);

}  // namespace mqs::config
