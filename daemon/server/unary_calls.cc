// The unary methods, Publish and GetTopology (async API; see async_call.h).
//
// Each call is accepted on the completion-queue thread, handed to the
// publisher (or consumer) thread, answered from there with Finish, and
// deleted when the finish completes. The finish is started under mu_ and its
// completion takes mu_ first, so the call cannot be deleted while the thread
// that finished it is still inside gRPC.
#include <mutex>

#include "server/async_call.h"
#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::GetTopologyRequest;
using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;
using mqsidecar::v1::Topology;

class PublishCall final {
 public:
  PublishCall(PubSubService& service, grpc::ServerCompletionQueue* cq) : service_(service) {
    service_.RequestPublish(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

 private:
  // OnAccepted: a client called (ok), or the server is shutting down and
  // this request for a call ends unmatched.
  void OnAccepted(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    service_.AcceptPublish();  // the next caller
    service_.CallStarted();
    absl::StatusOr<amqp::PublishJob> job =
        service_.PreparePublish(std::move(request_), ctx_.deadline());
    if (!job.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      responder_.FinishWithError(ToGrpc(job.status()), finish_op_.tag());
      return;
    }
    job->done = [this](PublishResult&& r, absl::StatusCode code) {
      std::lock_guard<std::mutex> lock(mu_);
      // FAILED means the message was not sent: the broker stayed out of
      // reach (UNAVAILABLE) or kept publishing blocked (RESOURCE_EXHAUSTED)
      // past the deadline; retrying is safe. Every other outcome is the
      // broker's answer, carried in the result.
      if (r.status() == PublishResult::FAILED) {
        responder_.FinishWithError(grpc::Status(static_cast<grpc::StatusCode>(code), r.error()),
                                   finish_op_.tag());
      } else {
        result_ = std::move(r);
        responder_.Finish(result_, grpc::Status::OK, finish_op_.tag());
      }
    };
    service_.publisher().Submit(std::move(*job));
  }

  void OnFinished(bool /*ok*/) {
    { std::lock_guard<std::mutex> lock(mu_); }  // the finishing thread has left gRPC
    PubSubService& service = service_;
    delete this;
    service.CallEnded();
  }

  PubSubService& service_;
  grpc::ServerContext ctx_;
  PublishRequest request_;
  PublishResult result_;  // must outlive the finish
  grpc::ServerAsyncResponseWriter<PublishResult> responder_{&ctx_};
  std::mutex mu_;
  Op<PublishCall, &PublishCall::OnAccepted> accept_op_{this};
  Op<PublishCall, &PublishCall::OnFinished> finish_op_{this};
};

class GetTopologyCall final {
 public:
  GetTopologyCall(PubSubService& service, grpc::ServerCompletionQueue* cq) : service_(service) {
    service_.RequestGetTopology(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

 private:
  void OnAccepted(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    service_.AcceptGetTopology();
    service_.CallStarted();
    service_.FillTopology(&topology_);
    // Queue counts come from the broker, on the consumer's thread.
    service_.consumer().Inspect([this](std::vector<amqp::QueueInfo>&& queues) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& q : queues) {
        auto* x = topology_.add_queues();
        x->set_name(q.name);
        x->set_type(std::string(config::QueueTypeName(q.type)));
        x->set_messages(q.stats.messages);
        x->set_consumers(q.stats.consumers);
      }
      responder_.Finish(topology_, grpc::Status::OK, finish_op_.tag());
    });
  }

  void OnFinished(bool /*ok*/) {
    { std::lock_guard<std::mutex> lock(mu_); }  // the finishing thread has left gRPC
    PubSubService& service = service_;
    delete this;
    service.CallEnded();
  }

  PubSubService& service_;
  grpc::ServerContext ctx_;
  GetTopologyRequest request_;
  Topology topology_;
  grpc::ServerAsyncResponseWriter<Topology> responder_{&ctx_};
  std::mutex mu_;
  Op<GetTopologyCall, &GetTopologyCall::OnAccepted> accept_op_{this};
  Op<GetTopologyCall, &GetTopologyCall::OnFinished> finish_op_{this};
};

}  // namespace

void PubSubService::AcceptPublish() {
  std::lock_guard<std::mutex> lock(accept_mu_);
  if (cq_ != nullptr) new PublishCall(*this, cq_);
}

void PubSubService::AcceptGetTopology() {
  std::lock_guard<std::mutex> lock(accept_mu_);
  if (cq_ != nullptr) new GetTopologyCall(*this, cq_);
}

}  // namespace mqs::server
