// Subscribe and SubscribeBatch: one competing consumer of a business's queue
// (async API; see async_call.h for why). One call class serves both: they
// differ only in how many deliveries one response carries (one, or whatever
// waits when the stream can write, bounded by open's max_batch_*).
//
// The call is also the stream's DeliverySink: the consumer thread encodes
// each delivery and pushes it into a small outbox (bounded by the prefetch,
// since the broker sends no more than that unacked) and writes one response
// at a time itself. A batch is never waited for: a write starts as soon as
// none is in flight, so at a low rate each delivery goes alone at once.
// The stream finishes only after the consumer thread has closed the stream's
// channel and said so (OnClosed): once the stream is opened, the consumer
// owes the call that callback (CallBase), so no callback can outlive it.
// The method is registered raw (pubsub_service.h says why): a request that
// cannot be parsed ends the stream with INVALID_ARGUMENT.
#include <algorithm>
#include <optional>
#include <string_view>
#include <vector>

#include "amqp/retry.h"
#include "observability/metrics.h"
#include "server/async_call.h"
#include "server/delivery_batch.h"
#include "server/pubsub_service.h"
#include "server/request_checks.h"
#include "util/grpc_limits.h"
#include "util/strings.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::SubscribeRequest;

class SubscribeCall final : public CallBase, public amqp::DeliverySink {
 public:
  // batch: SubscribeBatch (DeliveryBatch responses), else Subscribe.
  SubscribeCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate, bool batch)
      : CallBase(gate, service.calls()), service_(service), batch_(batch) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    if (batch_) {
      service_.RequestSubscribeBatch(&ctx_, &stream_, cq, cq, accept_op_.tag());
    } else {
      service_.RequestSubscribe(&ctx_, &stream_, cq, cq, accept_op_.tag());
    }
  }

  // DeliverySink, on the consumer thread. Encoded here, outside the lock.
  void OnDelivery(Delivery&& d) override {
    grpc::Slice encoded = EncodeDelivery(d, batch_);
    Lock lock(this);
    if (closed_ || done()) return;  // the channel is closing; the broker requeues it
    if (metrics_ != nullptr) {
      metrics_->CountDelivery(metrics_slot_, d.redelivered());
      metrics_->AddUnacked(metrics_slot_, 1);
      ++unsettled_;
      max_delivered_ = std::max(max_delivered_, d.delivery_id());
    }
    outbox_.Push(std::move(encoded));
    if (!writing_) StartNextWriteLocked();
  }

  void OnClosed(const absl::Status& status) override {
    service_.control().streams().Add(business_, -1);
    Lock lock(this);
    if (metrics_ != nullptr) {
      metrics_->AddStreams(metrics_slot_, -1);
      // What the client still held went back to the queue with the channel.
      metrics_->AddUnacked(metrics_slot_, -unsettled_);
      unsettled_ = 0;
    }
    PaidLocked();
    closed_ = true;
    final_ = status;
    // Undelivered deliveries are already back in the queue (the response
    // being written, if any, has its own buffer).
    outbox_.Clear();
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
    // The next caller of the same method.
    if (batch_) {
      service_.AcceptSubscribeBatch();
    } else {
      service_.AcceptSubscribe();
    }
    Accepted();
    absl::StatusOr<ConnectionTable::StreamSlot> slot = service_.OpenStream(ctx_);
    Lock lock(this);
    if (!slot.ok()) {
      // One stream too many on its connection: ends at once, nothing read.
      RequestCloseLocked(slot.status());
      return;
    }
    slot_ = std::move(*slot);
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
    absl::StatusOr<SubscribeStep> step = CheckSubscribeRequest(request_, config_);
    if (!step.ok()) return step.status();
    switch (*step) {
      case SubscribeStep::kOpen:
        return Open(request_.open());
      case SubscribeStep::kAck: {
        const auto& ack = request_.ack();
        CountSettle(ack.delivery_id(), ack.multiple(), ack.delivery_ids_size(), std::nullopt);
        service_.consumer().Ack(
            stream_id_, ack.delivery_id(), ack.multiple(),
            std::vector<uint64_t>(ack.delivery_ids().begin(), ack.delivery_ids().end()));
        return absl::OkStatus();
      }
      case SubscribeStep::kNack: {
        const auto& nack = request_.nack();
        CountSettle(nack.delivery_id(), nack.multiple(), nack.delivery_ids_size(),
                    !nack.requeue()            ? observability::NackOutcome::kReject
                    : config_->retry.enabled() ? observability::NackOutcome::kRetry
                                               : observability::NackOutcome::kRequeue);
        service_.consumer().Nack(
            stream_id_, nack.delivery_id(), nack.requeue(), nack.multiple(), nack.retry_after_ms(),
            std::vector<uint64_t>(nack.delivery_ids().begin(), nack.delivery_ids().end()));
        return absl::OkStatus();
      }
    }
    return absl::InternalError("unreachable");
  }

  // CountSettle counts an ack (no `nack`) or nack the client sent: each id
  // it names once; `multiple` on the latest delivery covers all the stream
  // holds (on an earlier one it counts once; the stream's end evens the
  // unacked gauge out).
  void CountSettle(uint64_t delivery_id, bool multiple, int listed,
                   std::optional<observability::NackOutcome> nack) {
    if (metrics_ == nullptr) return;
    int64_t n = listed + (delivery_id != 0 ? 1 : 0);
    {
      Lock lock(this);
      if (multiple && delivery_id >= max_delivered_) n = std::max<int64_t>(n, unsettled_);
      const int64_t held = std::min<int64_t>(n, unsettled_);
      unsettled_ -= held;
      metrics_->AddUnacked(metrics_slot_, -held);
    }
    if (nack) {
      metrics_->CountNacks(metrics_slot_, *nack, static_cast<uint64_t>(n));
    } else {
      metrics_->CountAcks(metrics_slot_, static_cast<uint64_t>(n));
    }
  }

  void OnWriteDone(bool ok) {
    Lock lock(this);
    OpDoneLocked();
    writing_ = false;
    if (!ok) {
      // The client is gone: close the consumer (its OnClosed may release us).
      outbox_.Clear();
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
    if (absl::Status s = service_.Authorize(ctx_, batch_ ? Rpc::kSubscribeBatch : Rpc::kSubscribe,
                                            open.business());
        !s.ok()) {
      return s;
    }
    absl::StatusOr<OpenPlan> plan = CheckOpen(open, service_.config());
    if (!plan.ok()) return plan.status();
    // With the retry the last reload that changed it applied (ReloadLog).
    const config::Consumer* consumer = service_.ForNewStream(*plan->consumer);
    amqp::OpenRequest req;
    {
      util::MutexLock lock(&mu_);          // owing makes the call deletable later, never now
      if (batch_) limits_ = plan->limits;  // Subscribe keeps batches of one
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
    if (metrics_ != nullptr) {
      metrics_slot_ = metrics_->Slot(business_);
      metrics_->AddStreams(metrics_slot_, +1);
    }
    req.queue = consumer->queue;
    req.prefetch = open.prefetch() != 0 ? open.prefetch() : service_.DefaultPrefetch(*consumer);
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
      observability::CountCall("mqsidecar.v1.PubSub", batch_ ? "SubscribeBatch" : "Subscribe",
                               static_cast<int>(final_.code()));
      stream_.Finish(ToGrpc(final_), finish_op_.tag());
    });
  }

  // StartNextWriteLocked writes what waits, up to the batch limits. While
  // more waits behind it, gRPC may hold this write back (buffer hint) and
  // coalesce it with the next into fewer frames and syscalls; the last write
  // of a burst flushes.
  void StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (StartOpLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          outbox_.Take(limits_, &writing_buf_);
          grpc::WriteOptions options;
          if (!outbox_.empty()) options.set_buffer_hint();
          stream_.Write(writing_buf_, options, write_op_.tag());
        })) {
      writing_ = true;
    } else {
      // The call is over; the deliveries return to the queue when the
      // consumer closes the channel.
      outbox_.Clear();
    }
  }

  PubSubService& service_;
  const bool batch_;  // SubscribeBatch
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&ctx_};
  // Released before ctx_ (declared after it): while the call holds its
  // connection, the connection's name is not reused.
  ConnectionTable::StreamSlot slot_;  // set once, in OnAccepted
  // The read side's own (the read in flight, then its handler): no lock.
  grpc::ByteBuffer raw_;
  SubscribeRequest request_;
  uint64_t reads_ = 0;
  // Set once by the read side (under mu_), read there without it and
  // elsewhere under mu_.
  uint64_t stream_id_ = 0;
  std::string business_;                      // set once, before the consumer hears of the stream
  const config::Consumer* config_ = nullptr;  // its config; set with business_
  // Metrics (null: none installed); the slot is set with business_.
  observability::Metrics* const metrics_ = observability::Metrics::Active();
  size_t metrics_slot_ = 0;

  Op<SubscribeCall, &SubscribeCall::OnAccepted> accept_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnReadDone> read_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnWriteDone> write_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnFinishDone> finish_op_{this};
  Op<SubscribeCall, &SubscribeCall::OnDone> done_op_{this};

  DeliveryOutbox outbox_ ABSL_GUARDED_BY(mu_);
  BatchLimits limits_ ABSL_GUARDED_BY(mu_);            // Subscribe: one per response
  grpc::ByteBuffer writing_buf_ ABSL_GUARDED_BY(mu_);  // the response being written
  bool opened_ ABSL_GUARDED_BY(mu_) = false;
  bool close_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // the consumer thread will call no more
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_ ABSL_GUARDED_BY(mu_);
  // Deliveries handed to the client and not settled (the unacked gauge), and
  // the highest delivery id handed out.
  int64_t unsettled_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t max_delivered_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

void PubSubService::AcceptSubscribe() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new SubscribeCall(*this, cq_, *gate_, /*batch=*/false);
}

void PubSubService::AcceptSubscribeBatch() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new SubscribeCall(*this, cq_, *gate_, /*batch=*/true);
}

}  // namespace mqs::server
