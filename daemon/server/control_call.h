// ControlCall: one async unary call (async_call.h) whose request is handed
// to a PubSubService handler with a Reply; it finishes with whatever the
// handler answers, from whichever thread answers. Shared by the control
// plane's methods (control_calls.cc) and the dead-letter methods
// (dead_letter_calls.cc). The lifecycle is CallBase's, as for Publish: the
// reply is owed until it comes, and a reply that comes after the call is done
// (cancelled, or shutdown) only settles the bookkeeping.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/cord.h"
#include "observability/metrics.h"
#include "server/async_call.h"
#include "server/pubsub_service.h"

namespace mqs::server {

using SysTime = std::chrono::system_clock::time_point;

// kTrailerPayloadPrefix: a payload of an error status a handler answers
// whose type URL starts with this is sent as trailing metadata, the rest of
// the URL being the key (e.g. "mq-sidecar-replay-bin").
inline constexpr std::string_view kTrailerPayloadPrefix = "mq-sidecar/trailer/";

template <class Request, class Response>
struct MethodOf {
  using Requester = void (PubSubService::*)(grpc::ServerContext*, Request*,
                                            grpc::ServerAsyncResponseWriter<Response>*,
                                            grpc::CompletionQueue*, grpc::ServerCompletionQueue*,
                                            void*);
  using Handler = void (PubSubService::*)(Request&&, SysTime, Reply<Response>);
};

template <class Request, class Response>
class ControlCall final : public CallBase {
 public:
  using M = MethodOf<Request, Response>;
  ControlCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate,
              typename M::Requester requester, typename M::Handler handler)
      : CallBase(gate, service.calls()),
        service_(service),
        requester_(requester),
        handler_(handler) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    (service_.*requester_)(&ctx_, &request_, &responder_, cq, cq, accept_op_.tag());
  }

  // Next: posts the request for the next call of this method.
  static void Next(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate,
                   typename M::Requester requester, typename M::Handler handler) {
    new ControlCall(service, cq, gate, requester, handler);
  }

 private:
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptControlMethod([this](grpc::ServerCompletionQueue* cq, OpGate* gate) {
      Next(service_, cq, *gate, requester_, handler_);
    });
    Accepted();
    {
      Lock lock(this);
      OweLocked();
    }
    if (absl::Status s = service_.AuthorizeRequest(ctx_, request_); !s.ok()) {
      OnReply(std::move(s));
      return;
    }
    // Not under the lock: a handler may answer at once, on this thread.
    (service_.*handler_)(std::move(request_), ctx_.deadline(),
                         [this](absl::StatusOr<Response> r) { OnReply(std::move(r)); });
  }

  void OnReply(absl::StatusOr<Response> r) {
    Lock lock(this);
    PaidLocked();
    if (!r.ok()) {
      const grpc::Status status = ToGrpc(r.status());
      StartFinishLocked([&] {
        r.status().ForEachPayload([&](absl::string_view url, const absl::Cord& value) {
          const std::string_view key(url.data(), url.size());
          if (key.starts_with(kTrailerPayloadPrefix)) {
            ctx_.AddTrailingMetadata(std::string(key.substr(kTrailerPayloadPrefix.size())),
                                     std::string(value));
          }
        });
        CountCallLocked(status.error_code());
        responder_.FinishWithError(status, finish_op_.tag());
      });
      return;
    }
    response_ = std::move(*r);
    StartFinishLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      CountCallLocked(grpc::StatusCode::OK);
      responder_.Finish(response_, grpc::Status::OK, finish_op_.tag());
    });
  }

  // The method is the request's name without "Request" (SendTaskRequest:
  // SendTask), as every control and dead-letter method is named.
  static void CountCallLocked(int code) {
    std::string_view name = Request::descriptor()->name();
    if (name.ends_with("Request")) name.remove_suffix(7);
    observability::CountCall("mqsidecar.v1.PubSub", name, code);
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
  const typename M::Requester requester_;
  const typename M::Handler handler_;
  grpc::ServerContext ctx_;
  Request request_;                         // moved to the handler once accepted
  Response response_ ABSL_GUARDED_BY(mu_);  // must outlive the finish
  grpc::ServerAsyncResponseWriter<Response> responder_{&ctx_};
  Op<ControlCall, &ControlCall::OnAccepted> accept_op_{this};
  Op<ControlCall, &ControlCall::OnFinished> finish_op_{this};
  Op<ControlCall, &ControlCall::OnDone> done_op_{this};
};

template <class Request, class Response>
void Post(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate,
          typename MethodOf<Request, Response>::Requester requester,
          typename MethodOf<Request, Response>::Handler handler) {
  ControlCall<Request, Response>::Next(service, cq, gate, requester, handler);
}

}  // namespace mqs::server
