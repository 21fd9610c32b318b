// Subscribe: one competing consumer of a business's queue (async API; see
// async_call.h for why).
//
// The call is also the stream's DeliverySink: the consumer thread pushes
// deliveries into a small outbox (bounded by the prefetch, since the broker
// sends no more than that unacked) and writes them one at a time itself.
// The stream finishes only after the consumer thread has closed the stream's
// channel and said so (OnClosed): once the stream is opened, the consumer
// owes the call that callback (CallBase), so no callback can outlive it.
// The method is registered raw (pubsub_service.h says why): a request that
// cannot be parsed ends the stream with INVALID_ARGUMENT.
#include <deque>

#include "amqp/retry.h"
#include "server/async_call.h"
#include "server/pubsub_service.h"
#include "util/strings.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::SubscribeRequest;

class SubscribeCall final : public CallBase, public amqp::DeliverySink {
 public:
  SubscribeCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate)
      : CallBase(gate, service.calls()), service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestSubscribe(&ctx_, &stream_, cq, cq, accept_op_.tag());
  }

  // DeliverySink, on the consumer thread.
  void OnDelivery(Delivery&& d) override {
    grpc::ByteBuffer bytes = Serialize(d);
    Lock lock(this);
    if (closed_ || done()) return;  // the channel is closing; the broker requeues it
    outbox_.push_back(std::move(bytes));
    if (!writing_) StartNextWriteLocked();
  }

  void OnClosed(const absl::Status& status) override {
    service_.control().streams().Add(business_, -1);
    Lock lock(this);
    PaidLocked();
    closed_ = true;
    final_ = status;
    // Undelivered deliveries are already back in the queue; keep only the
    // one being written (its buffer is in use).
    if (writing_) {
      outbox_.resize(1);
    } else {
      outbox_.clear();
    }
    MaybeFinishLocked();
  }

 private:
  ~SubscribeCall() override = default;

  // OnAccepted: a client opened the stream (ok), or the server is shutting
  // down and this request for a call ends unmatched (no done tag follows).
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptSubscribe();  // the next caller
    Accepted();
    Lock lock(this);
    StartReadLocked();
  }

  // Each completion handler ends in one critical section that retires its
  // operation: until then the operation holds the call, so the consumer
  // thread (OnClosed) cannot delete it under the handler's feet.
  void OnReadDone(bool ok) {
    absl::Status close = Handle(ok);
    Lock lock(this);
    OpDoneLocked();
    if (!close.ok() || close_requested_ || !ok) {
      RequestCloseLocked(close);
    } else if (!finished() && !done()) {
      // No new read once the finish has been decided (the consumer thread
      // may decide it at any moment) or the call is over.
      StartReadLocked();
    }
  }

  // Handle acts on one request read (raw_, owned by the read handler). A
  // non-OK status ends the stream with it; a failed read (the client
  // half-closed or vanished) ends the consumer too, which returns its unacked
  // deliveries to the queue at once.
  absl::Status Handle(bool ok) {
    if (!ok) return absl::OkStatus();
    if (absl::Status s = ParseRequest(&raw_, &request_, ++reads_); !s.ok()) return s;
    switch (request_.kind_case()) {
      case SubscribeRequest::kOpen:
        if (stream_id_ != 0) {
          return absl::InvalidArgumentError("open sent twice on one Subscribe stream");
        }
        return Open(request_.open());
      case SubscribeRequest::kAck:
      case SubscribeRequest::kNack:
        if (stream_id_ == 0) {
          return absl::InvalidArgumentError("the first request of a Subscribe stream must be open");
        }
        if (request_.has_ack()) {
          service_.consumer().Ack(stream_id_, request_.ack().delivery_id(),
                                  request_.ack().multiple());
        } else {
          const auto& nack = request_.nack();
          if (absl::Status s =
                  amqp::ValidateNackDelay(*config_, nack.requeue(), nack.retry_after_ms());
              !s.ok()) {
            return s;
          }
          service_.consumer().Nack(stream_id_, nack.delivery_id(), nack.requeue(), nack.multiple(),
                                   nack.retry_after_ms());
        }
        return absl::OkStatus();
      case SubscribeRequest::KIND_NOT_SET:
        break;
    }
    return absl::InvalidArgumentError("empty SubscribeRequest: set open, ack or nack");
  }

  void OnWriteDone(bool ok) {
    Lock lock(this);
    OpDoneLocked();
    outbox_.pop_front();
    writing_ = false;
    if (!ok) {
      // The client is gone: close the consumer (its OnClosed may release us).
      outbox_.clear();
      RequestCloseLocked(absl::OkStatus());
    } else if (!closed_ && !done() && !outbox_.empty()) {
      StartNextWriteLocked();
    }
    MaybeFinishLocked();
  }

  void OnFinishDone(bool /*ok*/) {
    Lock lock(this);
    OpDoneLocked();
  }

  // OnDone: gRPC is done with the call (finished, or cancelled by the client
  // or by shutdown). Pending operations still complete, failing.
  void OnDone(bool /*ok*/) {
    Lock lock(this);
    SetDoneLocked();
    if (!finished()) RequestCloseLocked(absl::CancelledError("the client cancelled"));
  }

  absl::Status Open(const SubscribeRequest::Open& open) {
    // Checked first: a client learns nothing of businesses it may not use.
    if (absl::Status s = service_.Authorize(ctx_, Rpc::kSubscribe, open.business()); !s.ok()) {
      return s;
    }
    const config::Consumer* consumer = service_.config().FindConsumer(open.business());
    if (consumer == nullptr) {
      std::string names;
      for (const auto& c : service_.config().consumers) {
        util::StrAppend(&names, names.empty() ? "" : ", ", c.name);
      }
      return absl::InvalidArgumentError(
          util::StrCat("unknown business '", util::ForLog(open.business()),
                       "'; configured consumers: ", names.empty() ? "none" : names));
    }
    // The name goes into the consumer tag, which operators read in the
    // broker's tools and in our logs.
    if (util::HasControlChars(open.consumer_name())) {
      return absl::InvalidArgumentError(
          util::StrCat("open.consumer_name holds a control character: '",
                       util::ForLog(open.consumer_name()), "'"));
    }
    // A ceiling rather than a clamp: the client would otherwise hold fewer
    // deliveries than it asked for without knowing.
    if (const uint32_t max = service_.config().limits.max_prefetch; open.prefetch() > max) {
      return absl::InvalidArgumentError(util::StrCat("open.prefetch ", open.prefetch(),
                                                     " exceeds limits.max_prefetch (", max, ")"));
    }
    amqp::OpenRequest req;
    {
      util::MutexLock lock(&mu_);  // owing makes the call deletable later, never now
      stream_id_ = service_.consumer().NewStreamId();
      opened_ = true;
      OweLocked();  // OnClosed
    }
    req.stream_id = stream_id_;
    req.business = consumer->name;
    req.config = consumer;
    config_ = consumer;
    business_ = consumer->name;
    service_.control().streams().Add(business_, +1);
    req.queue = consumer->queue;
    req.prefetch = open.prefetch() != 0 ? open.prefetch() : consumer->prefetch;
    // The consumer tag shows operators who consumes; the stream id keeps it
    // unique, which the consumer thread relies on to drop stale deliveries.
    std::string name = open.consumer_name().empty() ? "mq-sidecar" : open.consumer_name();
    // The seed's consume-callback name (handle) shows too, for operators.
    if (!consumer->handle.empty()) name = util::StrCat(name, ".", consumer->handle);
    if (name.size() > 160) name.resize(160);
    req.consumer_tag = util::StrCat(name, ".", stream_id_);
    req.sink = this;
    service_.consumer().Open(std::move(req));
    return absl::OkStatus();
  }

  // RequestCloseLocked ends the stream with `why` (the first reason wins).
  // An opened stream ends when the consumer thread says so (OnClosed).
  void RequestCloseLocked(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (close_requested_) return;
    close_requested_ = true;
    if (opened_) {
      service_.consumer().Close(stream_id_, why);
    } else {
      closed_ = true;
      final_ = why;
      MaybeFinishLocked();
    }
  }

  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Refused only once the call is over (its done tag closes the consumer).
    StartOpLocked([&] { stream_.Read(&raw_, read_op_.tag()); });
  }

  // The stream finishes once the consumer will call no more and no write is
  // in flight. Nothing starts once the call is done.
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!closed_ || writing_ || finished() || done()) return;
    StartFinishLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      stream_.Finish(ToGrpc(final_), finish_op_.tag());
    });
  }

  void StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (StartOpLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          WriteFront(stream_, outbox_, write_op_.tag());
        })) {
      writing_ = true;
    } else {
      // The call is over; the deliveries return to the queue when the
      // consumer closes the channel.
      outbox_.clear();
    }
  }

  PubSubService& service_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&ctx_};
  // The read side's own (the read in flight, then its handler): no lock.
  grpc::ByteBuffer raw_;
  SubscribeRequest request_;
  uint64_t reads_ = 0;
  // Set once by the read side (under mu_), read there without it and
  // elsewhere under mu_.
  uint64_t stream_id_ = 0;
  std::string business_;                      // set once, before the consumer hears of the stream
  const config::Consumer* config_ = nullptr;  // its config; set with business_

  Op<SubscribeCall, &SubscribeCall::OnAccepted> accept_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnReadDone> read_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnWriteDone> write_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnFinishDone> finish_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnDone> done_op_{this};

  // front() is being written while writing_.
  std::deque<grpc::ByteBuffer> outbox_ ABSL_GUARDED_BY(mu_);
  bool opened_ ABSL_GUARDED_BY(mu_) = false;
  bool close_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // the consumer thread will call no more
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void PubSubService::AcceptSubscribe() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new SubscribeCall(*this, cq_, *gate_);
}

}  // namespace mqs::server
