#include "server/health_service.h"

#include <deque>

namespace mqs::server {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// CheckCall: one Check, answered at once.
class CheckCall final {
 public:
  CheckCall(HealthService& service, grpc::ServerCompletionQueue* cq) : service_(service) {
    service_.RequestCheck(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

 private:
  void OnAccepted(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    service_.AcceptCheck();
    service_.CallStarted();
    const HealthService::Status status = service_.StatusOf(request_.service());
    if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
      responder_.FinishWithError(
          grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service '" + request_.service() + "'"),
          finish_op_.tag());
      return;
    }
    response_.set_status(status);
    responder_.Finish(response_, grpc::Status::OK, finish_op_.tag());
  }

  void OnFinished(bool /*ok*/) {
    HealthService& service = service_;
    delete this;
    service.CallEnded();
  }

  HealthService& service_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  HealthCheckResponse response_;
  grpc::ServerAsyncResponseWriter<HealthCheckResponse> responder_{&ctx_};
  Op<CheckCall, &CheckCall::OnAccepted> accept_op_{this};
  Op<CheckCall, &CheckCall::OnFinished> finish_op_{this};
};

// WatchCall: one Watch stream. Writes the current status, then each change
// (only the latest when several come during one write), until the client
// goes away or the server shuts down. State under mu_; the call deletes
// itself once gRPC is done with it and no operation is pending.
class WatchCall final : public HealthService::Watcher {
 public:
  WatchCall(HealthService& service, grpc::ServerCompletionQueue* cq) : service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestWatch(&ctx_, &request_, &writer_, cq, cq, accept_op_.tag());
  }

  // Watcher, on the thread that changed the status (HealthService::mu_ held).
  void OnChange(bool serving) override {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = !known_   ? HealthCheckResponse::SERVICE_UNKNOWN
               : serving ? HealthCheckResponse::SERVING
                         : HealthCheckResponse::NOT_SERVING;
    MaybeWriteLocked();
  }
  void OnEnd() override {
    std::lock_guard<std::mutex> lock(mu_);
    ending_ = true;
    MaybeWriteLocked();
  }

 private:
  ~WatchCall() override = default;

  void OnAccepted(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    service_.AcceptWatch();
    service_.CallStarted();
    {
      std::lock_guard<std::mutex> lock(mu_);
      known_ = request_.service().empty() || request_.service() == service_.name();
    }
    // Register writes the first status (OnChange), under the service's lock,
    // which is always taken before ours.
    if (service_.Register(this)) return;
    std::lock_guard<std::mutex> lock(mu_);
    current_ = known_ ? HealthCheckResponse::NOT_SERVING : HealthCheckResponse::SERVICE_UNKNOWN;
    ending_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      writing_ = false;
      if (ok) MaybeWriteLocked();
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  void OnFinishDone(bool /*ok*/) {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  void OnDone(bool /*ok*/) {
    // Unregister first, without mu_ (HealthService::mu_ is taken before ours).
    service_.Unregister(this);
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  // One write at a time: the latest status when it changed, then the
  // finish once the server is ending.
  void MaybeWriteLocked() {
    if (writing_ || finished_ || done_) return;
    if (current_ != last_) {
      last_ = current_;
      response_.set_status(current_);
      writing_ = true;
      ++ops_;
      writer_.Write(response_, write_op_.tag());
      return;
    }
    if (ending_) {
      finished_ = true;
      ++ops_;
      writer_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "mq-sidecar is shutting down"),
                     finish_op_.tag());
    }
  }

  bool ShouldDeleteLocked() const { return done_ && ops_ == 0; }

  void Delete() {
    HealthService& service = service_;
    delete this;
    service.CallEnded();
  }

  HealthService& service_;
  grpc::ServerContext ctx_;
  HealthCheckRequest request_;
  HealthCheckResponse response_;  // owned by the write in flight
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_{&ctx_};
  Op<WatchCall, &WatchCall::OnAccepted> accept_op_{this};
  Op<WatchCall, &WatchCall::OnWriteDone> write_op_{this};
  Op<WatchCall, &WatchCall::OnFinishDone> finish_op_{this};
  Op<WatchCall, &WatchCall::OnDone> done_op_{this};

  std::mutex mu_;
  int ops_ = 0;
  HealthService::Status current_ = HealthCheckResponse::UNKNOWN;
  HealthService::Status last_ = HealthCheckResponse::UNKNOWN;  // last written
  bool known_ = false;  // the service asked for is one we report
  bool ending_ = false;
  bool writing_ = false;
  bool finished_ = false;
  bool done_ = false;
};

}  // namespace

HealthService::Status HealthService::StatusOf(const std::string& service) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!service.empty() && service != name_) return HealthCheckResponse::SERVICE_UNKNOWN;
  return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServing(bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  serving_ = serving;
  for (Watcher* w : watchers_) w->OnChange(serving);
}

void HealthService::EndWatches() {
  std::lock_guard<std::mutex> lock(mu_);
  ended_ = true;
  for (Watcher* w : watchers_) w->OnEnd();
}

bool HealthService::Register(Watcher* w) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ended_) return false;
  watchers_.insert(w);
  w->OnChange(serving_);
  return true;
}

void HealthService::Unregister(Watcher* w) {
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.erase(w);
}

void HealthService::StartAccepting(grpc::ServerCompletionQueue* cq) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cq_ = cq;
  }
  AcceptCheck();
  AcceptWatch();
}

void HealthService::StopAccepting() {
  std::lock_guard<std::mutex> lock(mu_);
  cq_ = nullptr;
}

void HealthService::AcceptCheck() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cq_ != nullptr) new CheckCall(*this, cq_);
}

void HealthService::AcceptWatch() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cq_ != nullptr) new WatchCall(*this, cq_);
}

void HealthService::CallStarted() { calls_.Started(); }

void HealthService::CallEnded() { calls_.Ended(); }

bool HealthService::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  return calls_.WaitZero(deadline);
}

}  // namespace mqs::server
