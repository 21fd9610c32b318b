#include "app.h"

#include <google/protobuf/descriptor.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>

#include "absl/strings/str_join.h"
#include "amqp/consumer.h"
#include "amqp/dead_letters.h"
#include "amqp/publisher.h"
#include "config/reload.h"
#include "config/topology_plan.h"
#include "control/control_plane.h"
#include "observability/metrics.h"
#include "observability/metrics_http.h"
#include "server/grpc_server.h"
#include "server/pubsub_service.h"
#include "spdlog/spdlog.h"
#include "util/mutex.h"
#include "util/strings.h"
#include "util/thread_watch.h"

namespace mqs {

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  // SIGHUP's default action ends the process without a drain.
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

namespace {

// After the last call has ended: time for gRPC to send the final statuses
// before Server::Shutdown cancels what is left.
constexpr std::chrono::milliseconds kFinalFlush{250};

// Health ties the gRPC health status to both broker links. It is updated from
// the I/O threads; the mutex serialises updates so the last state wins. Once
// shutdown has begun it stays NOT_SERVING, whatever the links do (an I/O
// thread that reconnects during the drain must not call traffic back).
class Health {
 public:
  void Attach(server::GrpcServer* server, const amqp::IoLoop* a, const amqp::IoLoop* b) {
    util::MutexLock lock(&mu_);
    server_ = server;
    a_ = a;
    b_ = b;
    UpdateLocked();
  }
  void Update() {
    util::MutexLock lock(&mu_);
    UpdateLocked();
  }
  // serving: the last status reported (metrics' /readyz).
  bool serving() {
    util::MutexLock lock(&mu_);
    return serving_;
  }
  // BeginShutdown: NOT_SERVING from now on.
  void BeginShutdown() {
    util::MutexLock lock(&mu_);
    shutting_down_ = true;
    UpdateLocked();
  }

 private:
  void UpdateLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (server_ == nullptr) return;
    const bool serving = !shutting_down_ && a_->connected() && b_->connected() && !a_->blocked();
    if (serving != serving_) {
      spdlog::info("health: {}", serving ? "SERVING" : "NOT_SERVING");
      serving_ = serving;
    }
    server_->SetServing(serving);
  }
  util::Mutex mu_;
  server::GrpcServer* server_ ABSL_GUARDED_BY(mu_) = nullptr;
  const amqp::IoLoop* a_ ABSL_GUARDED_BY(mu_) = nullptr;
  const amqp::IoLoop* b_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
};

// FatalError: the first fatal error an I/O thread reports.
class FatalError {
 public:
  void Set(const absl::Status& s) {
    util::MutexLock lock(&mu_);
    if (status_.ok()) status_ = s;
  }
  absl::Status Get() {
    util::MutexLock lock(&mu_);
    return status_;
  }

 private:
  util::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

// MetricsFor: the registry for this config: a slot per business, and the
// gRPC methods the server registers (calls to others count as "other").
std::unique_ptr<observability::Metrics> MetricsFor(const config::Config& config) {
  std::vector<std::string> businesses;
  for (const config::Producer& p : config.producers) businesses.push_back(p.name);
  for (const config::Consumer& c : config.consumers) businesses.push_back(c.name);
  std::vector<std::string> methods;
  for (const char* name : {"mqsidecar.v1.PubSub", "grpc.health.v1.Health",
                           "grpc.reflection.v1alpha.ServerReflection"}) {
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      methods.push_back(util::StrCat("/", name, "/", service->method(i)->name()));
    }
  }
  return std::make_unique<observability::Metrics>(businesses, methods);
}

// Reload: SIGHUP or the Reload RPC. Reads the file again, applies what can
// change live (the log level here, a consumer's prefetch and retry through
// the log), logs what differs and needs a restart, and records the result
// for GetTopology. `running` tracks what was applied.
void Reload(const RunOptions& options, config::Config& running, config::ReloadLog& log) {
  sd_notify(0, "RELOADING=1");
  config::ReloadReport report =
      config::PlanReload(running, options.reload(), options.log_level_pinned);
  // The line saying what changed is written at the more verbose of the two
  // levels: a more verbose level applies before it, a stricter one after.
  // Both are validated by the loader (ParseLogLevel), so never "off".
  const spdlog::level::level_enum next = spdlog::level::from_str(report.level);
  const bool more_verbose = next < spdlog::level::from_str(running.log_level);
  if (more_verbose) spdlog::set_level(next);
  if (report.result == config::ReloadReport::Result::kRejected) {
    spdlog::error("{}", report.Summary());
  } else {
    spdlog::info("{}", report.Summary());
  }
  if (!more_verbose) spdlog::set_level(next);
  running.log_level = report.level;
  for (config::Consumer& c : running.consumers) {
    if (const auto it = report.prefetch.find(c.name); it != report.prefetch.end()) {
      c.prefetch = it->second;
    }
    if (const auto it = report.retry.find(c.name); it != report.retry.end()) c.retry = it->second;
  }
  log.Record(std::move(report), std::chrono::system_clock::now());
  sd_notify(0, "READY=1");
}

}  // namespace

absl::Status Run(const config::Config& config, const RunOptions& options) {
  const config::TopologyPlan plan = config::PlanTopology(config);
  // Counted from before the first thread starts until after the last one
  // is joined (it outlives every other local here).
  const std::unique_ptr<observability::Metrics> metrics = MetricsFor(config);
  observability::Metrics::SetActive(metrics.get());
  Health health;
  FatalError fatal;
  const pid_t self = getpid();
  auto on_fatal = [&](const absl::Status& s) {
    fatal.Set(s);
    kill(self, SIGTERM);  // wakes the sigwait below
  };
  auto on_state = [&health] { health.Update(); };

  auto publisher = std::make_unique<amqp::Publisher>(config, plan, on_state, on_fatal);
  auto consumer = std::make_unique<amqp::Consumer>(config, plan, on_state, on_fatal);
  // Delayed-retry copies go out on the publisher's confirmed channel; it is
  // stopped before the consumer, and answers every job it took.
  consumer->SetRetryPublisher(
      [p = publisher.get()](amqp::PublishJob job) { p->Submit(std::move(job)); });
  // Before the service (which reports to it) and stopped after the
  // consumer (whose thread calls its feeds).
  auto control = std::make_unique<control::ControlPlane>(config, *publisher, *consumer);
  // Lists and replays dead letters on connections of its own; stopped after
  // the server, before the service its answers go through.
  amqp::DeadLetterWorker dead_letters(config.broker);
  dead_letters.Start();
  config::ReloadLog reloads;
  // One reload at a time: the signal loop's and the Reload RPC's (a gRPC
  // thread) both go through `reload`.
  util::Mutex reload_mu;
  config::Config running = config;  // what a reload compares with; under reload_mu
  const server::ReloadHook reload = [&]() -> std::optional<config::ReloadLog::Entry> {
    if (!options.reload) return std::nullopt;
    util::MutexLock lock(&reload_mu);
    Reload(options, running, reloads);
    return reloads.Last();
  };
  server::PubSubService service(config, plan, *publisher, *consumer, *control, &dead_letters,
                                &reloads, reload);
  absl::StatusOr<std::unique_ptr<server::GrpcServer>> server =
      server::GrpcServer::Start(config.listen, config.socket, config.tcp, config.access, &service,
                                &service, service.connections(), config.limits);
  if (!server.ok()) return server.status();
  // After the gRPC listeners (whose errors come first): a metrics port in
  // use stops the start too.
  // MQ_SIDECAR_METRICS_LISTEN (set, not empty) replaces metrics.listen: one
  // port per replica when several share a host and a config file. (Nothing
  // in the daemon calls setenv, so reading it here races nothing.)
  std::string metrics_listen = config.metrics.listen;
  if (const char* env = std::getenv("MQ_SIDECAR_METRICS_LISTEN");  // NOLINT(concurrency-mt-unsafe)
      env != nullptr && *env != '\0') {
    metrics_listen = env;
  }
  std::unique_ptr<observability::MetricsServer> metrics_http;
  if (!metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<observability::MetricsServer>> started =
        observability::MetricsServer::Start(metrics_listen, metrics.get(),
                                            [&health] { return health.serving(); });
    if (!started.ok()) return started.status();
    metrics_http = std::move(*started);
  }
  health.Attach(server->get(), publisher.get(), consumer.get());
  publisher->Start();
  consumer->Start();
  control->Start();
  sd_notify(0, "READY=1");

  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  // Every second (more often when the watchdog interval asks for it): the
  // watchdog ping, and the publisher's stuck-write check.
  timespec tick{1, 0};
  if (watchdog && watchdog_usec / 2 < 1000000) {
    tick.tv_sec = 0;
    tick.tv_nsec = static_cast<long>((watchdog_usec / 2) * 1000);
  }
  // WATCHDOG=1 only while no worker thread is wedged (util/thread_watch.h):
  // busy for longer than the watchdog interval. A broker outage is not a
  // wedge: the I/O threads keep waiting by design (poll) while they reconnect.
  const std::vector<const util::ThreadWatch*> watches = {&publisher->watch(), &consumer->watch(),
                                                         &control->watch(), &(*server)->watch()};
  // Wedged: busy for longer than the watchdog interval, or than the longest
  // a single write to a broker that stopped reading may legitimately take
  // (2 x heartbeat, WriteBatch / WriteGuard) with 5 s to spare, whichever is
  // longer: a frozen broker is an outage, not a wedge.
  const auto wedge_limit =
      std::max<std::chrono::microseconds>(std::chrono::microseconds(watchdog_usec),
                                          2 * config.broker.heartbeat + std::chrono::seconds(5));
  bool wedged_before = false;
  while (true) {
    const int sig = sigtimedwait(&set, nullptr, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("received {}, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
      break;
    }
    publisher->ExpireStuckWrite(std::chrono::steady_clock::now());
    if (sig == SIGHUP && !reload()) {
      spdlog::warn("reload: SIGHUP ignored: this daemon was not started from a config file");
    }
    if (!watchdog) continue;
    const std::vector<std::string> wedged =
        util::Wedged(watches, std::chrono::steady_clock::now(), wedge_limit);
    if (wedged.empty()) {
      if (wedged_before) spdlog::warn("watchdog: every thread makes progress again");
      wedged_before = false;
      sd_notify(0, "WATCHDOG=1");
      continue;
    }
    if (!wedged_before) {
      spdlog::critical(
          "watchdog: no WATCHDOG=1 while a thread is wedged: {}; systemd restarts the daemon "
          "(WatchdogSec)",
          absl::StrJoin(wedged, ", "));
    }
    wedged_before = true;
  }
  sd_notify(0, "STOPPING=1");
  // Graceful stop: no new calls (health first, so balancers move away), no
  // new deliveries, clients get shutdown.drain to settle what they hold and
  // to collect the results of what they sent; then calls still open are
  // cancelled, unacked deliveries return to the queue (their channels close),
  // and the publisher waits for outstanding confirms.
  const auto drain = config.shutdown.drain;
  health.BeginShutdown();
  control->BeginShutdown();
  service.Drain();
  publisher->Drain();
  consumer->Drain();
  // Every call ends by itself (streams once settled), or the drain period
  // ends. Then gRPC gets a moment to flush the last statuses before it
  // cancels what is left and closes the connections.
  service.WaitIdle(std::chrono::steady_clock::now() + drain);
  (*server)->Shutdown(std::chrono::system_clock::now() + kFinalFlush);
  dead_letters.Stop();
  // The server is down: answers to client calls reach nobody now, so the
  // publisher waits only for the confirms of delayed-retry copies (whose
  // originals are acked on CONFIRMED), not its whole grace for the rest.
  publisher->CallersGone();
  publisher->Stop(std::max(drain, options.shutdown_grace));
  consumer->Stop(std::chrono::milliseconds(0));
  control->Stop();
  if (metrics_http) metrics_http->Stop();
  spdlog::info("stopped");
  return fatal.Get();
}

}  // namespace mqs
