// The unary methods, Publish and GetTopology (async API; see async_call.h).
//
// Each call is accepted on the completion-queue thread, handed to the
// publisher (or consumer) thread, and answered from there with Finish. The
// lifecycle is CallBase's: the I/O thread owes the call its answer, the
// finish is refused once the call is done (cancelled, or the server gave up
// waiting at shutdown and is closing its queue), and the call deletes itself
// once gRPC is done with it (done tag), the finish has completed and the
// answer has come, whichever is last. So an answer that comes after
// shutdown only settles the bookkeeping; it never touches gRPC.
#include <chrono>
#include <map>
#include <string>

#include "observability/metrics.h"
#include "server/async_call.h"
#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::GetTopologyRequest;
using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;
using mqsidecar::v1::Topology;

constexpr std::string_view kPubSub = "mqsidecar.v1.PubSub";

class PublishCall final : public CallBase {
 public:
  PublishCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate)
      : CallBase(gate, service.calls()), service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestPublish(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

 private:
  // OnAccepted: a client called (ok), or the server is shutting down and
  // this request for a call ends unmatched.
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptPublish();  // the next caller
    Accepted();
    const absl::Status allowed = service_.Authorize(ctx_, Rpc::kPublish, request_.business());
    absl::StatusOr<amqp::PublishJob> job =
        allowed.ok() ? service_.PreparePublish(std::move(request_), ctx_.deadline(),
                                               PubSubService::TraceOf(ctx_))
                     : absl::StatusOr<amqp::PublishJob>(allowed);
    Lock lock(this);
    if (!job.ok()) {
      const grpc::Status status = ToGrpc(job.status());
      StartFinishLocked([&] {
        observability::CountCall(kPubSub, "Publish", status.error_code());
        responder_.FinishWithError(status, finish_op_.tag());
      });
      return;
    }
    job->done = [this](PublishResult&& r, absl::StatusCode code) { OnResult(std::move(r), code); };
    OweLocked();
    service_.publisher().Submit(std::move(*job));
  }

  // OnResult: the publisher's answer, on its thread.
  void OnResult(PublishResult&& r, absl::StatusCode code) {
    Lock lock(this);
    PaidLocked();
    // FAILED means the message was not sent: the broker stayed out of
    // reach (UNAVAILABLE) or kept publishing blocked (RESOURCE_EXHAUSTED)
    // past the deadline; retrying is safe. Every other outcome is the
    // broker's answer, carried in the result.
    if (r.status() == PublishResult::FAILED) {
      const grpc::Status status(static_cast<grpc::StatusCode>(code), r.error());
      StartFinishLocked([&] {
        observability::CountCall(kPubSub, "Publish", status.error_code());
        responder_.FinishWithError(status, finish_op_.tag());
      });
    } else {
      result_ = std::move(r);
      StartFinishLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        observability::CountCall(kPubSub, "Publish", grpc::StatusCode::OK);
        responder_.Finish(result_, grpc::Status::OK, finish_op_.tag());
      });
    }
  }

  void OnFinished(bool /*ok*/) {
    Lock lock(this);
    OpDoneLocked();
  }

  // OnDone: gRPC is done with the call (answered, or cancelled by the client
  // or by shutdown).
  void OnDone(bool /*ok*/) {
    Lock lock(this);
    SetDoneLocked();
  }

  PubSubService& service_;
  grpc::ServerContext ctx_;
  PublishRequest request_;                     // moved into the job once accepted
  PublishResult result_ ABSL_GUARDED_BY(mu_);  // must outlive the finish
  grpc::ServerAsyncResponseWriter<PublishResult> responder_{&ctx_};
  Op<PublishCall, &PublishCall::OnAccepted> accept_op_{this};
  Op<PublishCall, &PublishCall::OnFinished> finish_op_{this};
  Op<PublishCall, &PublishCall::OnDone> done_op_{this};
};

class GetTopologyCall final : public CallBase {
 public:
  GetTopologyCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate)
      : CallBase(gate, service.calls()), service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestGetTopology(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

 private:
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptGetTopology();
    Accepted();
    Lock lock(this);
    if (absl::Status s = service_.Authorize(ctx_, Rpc::kGetTopology, ""); !s.ok()) {
      const grpc::Status status = ToGrpc(s);
      StartFinishLocked([&] {
        observability::CountCall(kPubSub, "GetTopology", status.error_code());
        responder_.FinishWithError(status, finish_op_.tag());
      });
      return;
    }
    service_.FillTopology(&topology_);
    OweLocked();
    // Queue counts come from the broker, on the consumer's thread.
    service_.consumer().Inspect(
        [this](std::vector<amqp::QueueInfo>&& queues) { OnQueues(std::move(queues)); });
  }

  void OnQueues(std::vector<amqp::QueueInfo>&& queues) {
    Lock lock(this);
    PaidLocked();
    // The retry queues' delay and return queue, by name (QueueInfo has neither).
    std::map<std::string, config::QueueSpec> retry;
    for (const auto& c : service_.config().consumers) {
      for (std::chrono::milliseconds d : c.retry.delays) {
        config::QueueSpec spec = config::RetryQueueSpec(c, d);
        retry.emplace(spec.name, std::move(spec));
      }
    }
    for (const auto& q : queues) {
      auto* x = topology_.add_queues();
      x->set_name(q.name);
      x->set_type(std::string(config::QueueTypeName(q.type)));
      x->set_messages(q.stats.messages);
      x->set_consumers(q.stats.consumers);
      if (auto it = retry.find(q.name); it != retry.end()) {
        x->set_message_ttl_ms(it->second.message_ttl_ms.value_or(0));
        x->set_retry_for(it->second.retry_for);
      }
    }
    StartFinishLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      observability::CountCall(kPubSub, "GetTopology", grpc::StatusCode::OK);
      responder_.Finish(topology_, grpc::Status::OK, finish_op_.tag());
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

  PubSubService& service_;
  grpc::ServerContext ctx_;
  GetTopologyRequest request_;
  Topology topology_ ABSL_GUARDED_BY(mu_);  // must outlive the finish
  grpc::ServerAsyncResponseWriter<Topology> responder_{&ctx_};
  Op<GetTopologyCall, &GetTopologyCall::OnAccepted> accept_op_{this};
  Op<GetTopologyCall, &GetTopologyCall::OnFinished> finish_op_{this};
  Op<GetTopologyCall, &GetTopologyCall::OnDone> done_op_{this};
};

}  // namespace

void PubSubService::AcceptPublish() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new PublishCall(*this, cq_, *gate_);
}

void PubSubService::AcceptGetTopology() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new GetTopologyCall(*this, cq_, *gate_);
}

}  // namespace mqs::server
