#include "app.h"

#include <signal.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <atomic>
#include <memory>

#include "amqp/consumer.h"
#include "amqp/dead_letters.h"
#include "amqp/publisher.h"
#include "config/topology_plan.h"
#include "control/control_plane.h"
#include "server/grpc_server.h"
#include "server/pubsub_service.h"
#include "spdlog/spdlog.h"
#include "util/mutex.h"
#include "util/strings.h"

namespace mqs {

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
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

}  // namespace

absl::Status Run(const config::Config& config, const RunOptions& options) {
  const config::TopologyPlan plan = config::PlanTopology(config);
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
  server::PubSubService service(config, plan, *publisher, *consumer, *control, &dead_letters);
  absl::StatusOr<std::unique_ptr<server::GrpcServer>> server = server::GrpcServer::Start(
      config.listen, config.socket, config.tcp, config.access, &service, &service, config.limits);
  if (!server.ok()) return server.status();
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
  timespec tick{1, 0};
  if (watchdog) {
    tick.tv_sec = static_cast<time_t>(watchdog_usec / 2 / 1000000);
    tick.tv_nsec = static_cast<long>((watchdog_usec / 2 % 1000000) * 1000);
  }
  while (true) {
    const int sig = sigtimedwait(&set, nullptr, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("received {}, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
      break;
    }
    if (watchdog) sd_notify(0, "WATCHDOG=1");
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
  publisher->Stop(std::max(drain, options.shutdown_grace));
  consumer->Stop(std::chrono::milliseconds(0));
  control->Stop();
  spdlog::info("stopped");
  return fatal.Get();
}

}  // namespace mqs
