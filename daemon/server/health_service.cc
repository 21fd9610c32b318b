#include "server/health_service.h"

#include "observability/metrics.h"

namespace mqs::server {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// CheckCall: one Check, answered at once.
class CheckCall final : public CallBase {
 public:
  CheckCall(HealthService& service, grpc::ServerCompletionQueue* cq, OpGate& gate)
      : CallBase(gate, service.calls()), service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestCheck(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

 private:
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptCheck();
    Accepted();
    const HealthService::Status status = service_.StatusOf(request_.service());
    Lock lock(this);
    if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
      const grpc::Status error(grpc::StatusCode::NOT_FOUND,
                               "unknown service '" + util::ForLog(request_.service()) + "'");
      StartFinishLocked([&] {
        observability::CountCall("grpc.health.v1.Health", "Check", error.error_code());
        responder_.FinishWithError(error, finish_op_.tag());
      });
      return;
    }
    response_.set_status(status);
    StartFinishLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      observability::CountCall("grpc.health.v1.Health", "Check", grpc::StatusCode::OK);
      responder_.Finish(response_, grpc::Status::OK, finish_op_.tag());
    });
  }

  void OnFinished(bool /*ok*/) {
    Lock lock(this);
    OpDoneLocked();
  }

  void OnDone(bool /*ok*/) {
    Lock lock(this);
    SetDoneLocked();
  }

  HealthService& service_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);  // must outlive the finish
  grpc::ServerAsyncResponseWriter<HealthCheckResponse> responder_{&ctx_};
  Op<CheckCall, &CheckCall::OnAccepted> accept_op_{this};
  Op<CheckCall, &CheckCall::OnFinished> finish_op_{this};
  Op<CheckCall, &CheckCall::OnDone> done_op_{this};
};

// WatchCall: one Watch stream. Writes the current status, then each change
// (only the latest when several come during one write), until the client
// goes away or the server shuts down. State under mu_; lifecycle CallBase's.
class WatchCall final : public CallBase, public HealthService::Watcher {
 public:
  WatchCall(HealthService& service, grpc::ServerCompletionQueue* cq, OpGate& gate)
      : CallBase(gate, service.calls()), service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestWatch(&ctx_, &request_, &writer_, cq, cq, accept_op_.tag());
  }

  // Watcher, on the thread that changed the status (HealthService::mu_
  // held). A registered watcher is not done (OnDone unregisters first), so
  // these never make the call deletable: plain locks.
  void OnChange(bool serving) override {
    util::MutexLock lock(&mu_);
    current_ = !known_   ? HealthCheckResponse::SERVICE_UNKNOWN
               : serving ? HealthCheckResponse::SERVING
                         : HealthCheckResponse::NOT_SERVING;
    MaybeWriteLocked();
  }
  void OnEnd() override {
    util::MutexLock lock(&mu_);
    ending_ = true;
    MaybeWriteLocked();
  }

 private:
  ~WatchCall() override = default;

  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptWatch();
    Accepted();
    {
      util::MutexLock lock(&mu_);
      known_ = request_.service().empty() || request_.service() == service_.name();
    }
    // Register writes the first status (OnChange), under the service's lock,
    // which is always taken before ours.
    if (service_.Register(this)) return;
    Lock lock(this);
    current_ = known_ ? HealthCheckResponse::NOT_SERVING : HealthCheckResponse::SERVICE_UNKNOWN;
    ending_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) {
    Lock lock(this);
    OpDoneLocked();
    writing_ = false;
    if (ok) MaybeWriteLocked();
  }

  void OnFinishDone(bool /*ok*/) {
    Lock lock(this);
    OpDoneLocked();
  }

  void OnDone(bool /*ok*/) {
    // Unregister first, without mu_ (HealthService::mu_ is taken before ours).
    service_.Unregister(this);
    Lock lock(this);
    SetDoneLocked();
  }

  // One write at a time: the latest status when it changed, then the
  // finish once the server is ending.
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished() || done()) return;
    if (current_ != last_) {
      last_ = current_;
      response_.set_status(current_);
      writing_ = StartOpLocked(
          [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { writer_.Write(response_, write_op_.tag()); });
      return;
    }
    if (ending_) {
      StartFinishLocked([&] {
        observability::CountCall("grpc.health.v1.Health", "Watch", grpc::StatusCode::UNAVAILABLE);
        writer_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "mq-sidecar is shutting down"),
                       finish_op_.tag());
      });
    }
  }

  HealthService& service_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_{&ctx_};
  Op<WatchCall, &WatchCall::OnAccepted> accept_op_{this};
  Op<WatchCall, &WatchCall::OnWriteDone> write_op_{this};
  Op<WatchCall, &WatchCall::OnFinishDone> finish_op_{this};
  Op<WatchCall, &WatchCall::OnDone> done_op_{this};

  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);  // owned by the write in flight
  HealthService::Status current_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  // The last written.
  HealthService::Status last_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  bool known_ ABSL_GUARDED_BY(mu_) = false;  // the service asked for is one we report
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

HealthService::Status HealthService::StatusOf(const std::string& service) {
  util::MutexLock lock(&mu_);
  if (!service.empty() && service != name_) return HealthCheckResponse::SERVICE_UNKNOWN;
  return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServing(bool serving) {
  util::MutexLock lock(&mu_);
  serving_ = serving;
  for (Watcher* w : watchers_) w->OnChange(serving);
}

void HealthService::EndWatches() {
  util::MutexLock lock(&mu_);
  ended_ = true;
  for (Watcher* w : watchers_) w->OnEnd();
}

bool HealthService::Register(Watcher* w) {
  util::MutexLock lock(&mu_);
  if (ended_) return false;
  watchers_.insert(w);
  w->OnChange(serving_);
  return true;
}

void HealthService::Unregister(Watcher* w) {
  util::MutexLock lock(&mu_);
  watchers_.erase(w);
}

void HealthService::StartAccepting(grpc::ServerCompletionQueue* cq, OpGate* gate) {
  {
    util::MutexLock lock(&mu_);
    cq_ = cq;
    gate_ = gate;
  }
  AcceptCheck();
  AcceptWatch();
}

void HealthService::StopAccepting() {
  util::MutexLock lock(&mu_);
  cq_ = nullptr;
}

void HealthService::AcceptCheck() {
  util::MutexLock lock(&mu_);
  if (cq_ != nullptr) new CheckCall(*this, cq_, *gate_);
}

void HealthService::AcceptWatch() {
  util::MutexLock lock(&mu_);
  if (cq_ != nullptr) new WatchCall(*this, cq_, *gate_);
}

bool HealthService::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  return calls_.WaitZero(deadline);
}

}  // namespace mqs::server
