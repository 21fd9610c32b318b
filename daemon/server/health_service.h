// HealthService: the standard grpc.health.v1.Health protocol (Check and
// Watch) for "" (the whole server) and mqsidecar.v1.PubSub, on the async API
// and the daemon's own completion-queue thread. gRPC's built-in health
// service is a callback service: enabling it starts the callback API's two
// "nexting" threads, which then also poll the server's sockets and hand
// every message to our thread (async_call.h).
#pragma once

#include <set>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server/async_call.h"
#include "util/mutex.h"
#include "util/strings.h"

namespace mqs::server {

class HealthService final : public grpc::health::v1::Health::AsyncService, public AsyncService {
 public:
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // `name` is the one service reported besides "".
  explicit HealthService(std::string name) : name_(std::move(name)) {}

  // SetServing reports SERVING or NOT_SERVING for both names, to every
  // watcher at once.
  void SetServing(bool serving);
  // EndWatches: the server is shutting down; every Watch stream ends with
  // UNAVAILABLE after its last status, and none is accepted any more.
  void EndWatches();

  // Status of `service`, or SERVICE_UNKNOWN.
  Status StatusOf(const std::string& service);

  void StartAccepting(grpc::ServerCompletionQueue* cq, OpGate* gate) override;
  void StopAccepting() override;
  bool WaitIdle(std::chrono::steady_clock::time_point deadline) override;

  // Watcher: an open Watch stream, told of every change until it ends.
  class Watcher {
   public:
    virtual ~Watcher() = default;
    // OnChange: called with the service's lock held; must not call back.
    virtual void OnChange(bool serving) = 0;
    virtual void OnEnd() = 0;
  };
  // Register returns false once watches have ended; else it tells `w` the
  // current status at once (OnChange).
  bool Register(Watcher* w);
  const std::string& name() const { return name_; }
  void Unregister(Watcher* w);

  void AcceptCheck();
  void AcceptWatch();
  // calls: every Check and Watch, from acceptance until deleted (CallBase).
  CallCount& calls() { return calls_; }

 private:
  const std::string name_;
  util::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  grpc::ServerCompletionQueue* cq_ ABSL_GUARDED_BY(mu_) = nullptr;
  OpGate* gate_ ABSL_GUARDED_BY(mu_) = nullptr;
  CallCount calls_;
};

}  // namespace mqs::server
