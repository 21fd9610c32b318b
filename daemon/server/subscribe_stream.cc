// Subscribe: one competing consumer of a business's queue (async API; see
// async_call.h for why).
//
// The call is also the stream's DeliverySink: the consumer thread pushes
// deliveries into a small outbox (bounded by the prefetch, since the broker
// sends no more than that unacked) and writes them one at a time itself.
// The stream finishes only after the consumer thread has closed the stream's
// channel and said so (OnClosed); the call deletes itself once, in addition,
// gRPC is done with it and no operation is pending, so no callback can
// outlive it.
#include <deque>
#include <mutex>

#include "server/async_call.h"
#include "server/pubsub_service.h"
#include "util/strings.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::SubscribeRequest;

class SubscribeCall final : public amqp::DeliverySink {
 public:
  SubscribeCall(PubSubService& service, grpc::ServerCompletionQueue* cq) : service_(service) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestSubscribe(&ctx_, &stream_, cq, cq, accept_op_.tag());
  }

  // DeliverySink, on the consumer thread.
  void OnDelivery(Delivery&& d) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_ || done_) return;  // the channel is closing; the broker requeues it
    outbox_.push_back(std::move(d));
    if (!writing_) StartNextWriteLocked();
  }

  void OnClosed(const absl::Status& status) override {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
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
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

 private:
  ~SubscribeCall() override = default;

  // OnAccepted: a client opened the stream (ok), or the server is shutting
  // down and this request for a call ends unmatched (no done tag follows).
  void OnAccepted(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    service_.AcceptSubscribe();  // the next caller
    service_.CallStarted();
    std::lock_guard<std::mutex> lock(mu_);
    StartReadLocked();
  }

  // Each completion handler ends in one critical section that retires its
  // operation: until then ops_ holds the call, so the consumer thread
  // (OnClosed) cannot delete it under the handler's feet.
  void OnReadDone(bool ok) {
    absl::Status close = Handle(ok);
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      if (!close.ok() || close_requested_ || !ok) {
        RequestCloseLocked(close);
      } else if (!finished_ && !done_) {
        // No new read once the finish has been decided (the consumer thread
        // may decide it at any moment) or the call is over.
        StartReadLocked();
      }
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  // Handle acts on one request read. A non-OK status ends the stream with
  // it; a failed read (the client half-closed or vanished) ends the consumer
  // too, which returns its unacked deliveries to the queue at once.
  absl::Status Handle(bool ok) {
    if (!ok) return absl::OkStatus();
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
          service_.consumer().Nack(stream_id_, request_.nack().delivery_id(),
                                   request_.nack().requeue(), request_.nack().multiple());
        }
        return absl::OkStatus();
      case SubscribeRequest::KIND_NOT_SET:
        break;
    }
    return absl::InvalidArgumentError("empty SubscribeRequest: set open, ack or nack");
  }

  void OnWriteDone(bool ok) {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      outbox_.pop_front();
      writing_ = false;
      if (!ok) {
        // The client is gone: close the consumer (its OnClosed may release us).
        outbox_.clear();
        RequestCloseLocked(absl::OkStatus());
      } else if (!closed_ && !done_ && !outbox_.empty()) {
        StartNextWriteLocked();
      }
      MaybeFinishLocked();
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

  // OnDone: gRPC is done with the call (finished, or cancelled by the client
  // or by shutdown). Pending operations still complete, failing.
  void OnDone(bool /*ok*/) {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      if (!finished_) RequestCloseLocked(absl::CancelledError("the client cancelled"));
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  absl::Status Open(const SubscribeRequest::Open& open) {
    const config::Consumer* consumer = service_.config().FindConsumer(open.business());
    if (consumer == nullptr) {
      std::string names;
      for (const auto& c : service_.config().consumers) {
        util::StrAppend(&names, names.empty() ? "" : ", ", c.name);
      }
      return absl::InvalidArgumentError(
          util::StrCat("unknown business '", open.business(),
                       "'; configured consumers: ", names.empty() ? "none" : names));
    }
    amqp::OpenRequest req;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_id_ = service_.consumer().NewStreamId();
      opened_ = true;
    }
    req.stream_id = stream_id_;
    req.business = consumer->name;
    req.queue = consumer->queue;
    req.prefetch = open.prefetch() != 0 ? open.prefetch() : consumer->prefetch;
    // The consumer tag shows operators who consumes; the stream id keeps it
    // unique, which the consumer thread relies on to drop stale deliveries.
    std::string name = open.consumer_name().empty() ? "mq-sidecar" : open.consumer_name();
    if (name.size() > 160) name.resize(160);
    req.consumer_tag = util::StrCat(name, ".", stream_id_);
    req.sink = this;
    service_.consumer().Open(std::move(req));
    return absl::OkStatus();
  }

  // RequestCloseLocked ends the stream with `why` (the first reason wins).
  // An opened stream ends when the consumer thread says so (OnClosed).
  void RequestCloseLocked(const absl::Status& why) {
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

  void StartReadLocked() {
    ++ops_;
    stream_.Read(&request_, read_op_.tag());
  }

  // Operations are started under mu_: their completions take mu_ first, so
  // none can delete the call while the thread that started it is still in
  // gRPC. Nothing starts once the call is done.
  void MaybeFinishLocked() {
    if (!closed_ || writing_ || finished_ || done_) return;
    finished_ = true;
    ++ops_;
    stream_.Finish(ToGrpc(final_), finish_op_.tag());
  }

  // Deletable once gRPC will deliver nothing more (done, no operation
  // pending) and the consumer thread will not call again.
  bool ShouldDeleteLocked() const { return done_ && ops_ == 0 && (closed_ || !opened_); }

  // Delete runs once: after the critical section that found the call
  // deletable, nothing can change its state again.
  void Delete() {
    PubSubService& service = service_;
    delete this;
    service.CallEnded();  // last: shutdown may proceed once this reaches zero
  }

  void StartNextWriteLocked() {
    writing_ = true;
    ++ops_;
    WriteFront(stream_, outbox_, write_op_.tag());
  }

  PubSubService& service_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<Delivery, SubscribeRequest> stream_{&ctx_};
  SubscribeRequest request_;  // owned by the read in flight
  uint64_t stream_id_ = 0;    // set once by the reading side

  Op<SubscribeCall, &SubscribeCall::OnAccepted> accept_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnReadDone> read_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnWriteDone> write_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnFinishDone> finish_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnDone> done_op_{this};

  std::mutex mu_;
  std::deque<Delivery> outbox_;  // front() is being written while writing_
  int ops_ = 0;                  // operations started, not yet completed
  bool opened_ = false;
  bool close_requested_ = false;
  bool closed_ = false;  // the consumer thread will call no more
  bool writing_ = false;
  bool finished_ = false;
  bool done_ = false;
  absl::Status final_;
};

}  // namespace

void PubSubService::AcceptSubscribe() {
  std::lock_guard<std::mutex> lock(accept_mu_);
  if (cq_ != nullptr) new SubscribeCall(*this, cq_);
}

}  // namespace mqs::server
