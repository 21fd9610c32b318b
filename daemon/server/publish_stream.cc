// PublishStream and PublishBatchStream: many publishes pipelined over one
// stream (async API; see async_call.h for why). One call class serves both;
// `batch_` says which. PublishStream reads one PublishRequest per read and
// writes one PublishResult per write; PublishBatchStream reads a
// PublishBatch and writes a PublishResultBatch holding every result ready
// when the stream can write (a batch of one at a low rate: nothing waits for
// a batch to fill). Every message is treated alike either way.
//
// Up to `window` messages are in flight (read, not yet answered). Reading
// stops while the window is full, so backpressure reaches the caller
// through gRPC flow control and memory stays bounded. A batch larger than
// the room left is read whole (at most limits.max_batch_messages; a larger
// one ends the stream INVALID_ARGUMENT) and its messages wait in `held_`,
// prepared, going to the publisher as results free room, in order; the next
// read waits until none is held. Results are written in the order the
// broker settles them, one write at a time. Every message read gets exactly
// one result; at shutdown the stream stops reading, answers what it holds
// and ends with UNAVAILABLE, so a message without a result was never read
// and never sent. A request that cannot be parsed ends the stream the same
// way, with INVALID_ARGUMENT naming it (the methods are registered raw:
// pubsub_service.h says why).
//
// Threads: completions run on the server's completion-queue thread; results
// arrive on the publisher thread, which starts the write itself. All state is
// under mu_. The lifecycle is CallBase's: the publisher owes the call one
// result per message read.
#include <deque>
#include <vector>

#include "observability/metrics.h"
#include "server/async_call.h"
#include "server/publish_batch.h"
#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::PublishBatch;
using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;

// ToSlice: a result serialized where it settles, outside the call's lock.
grpc::Slice ToSlice(const google::protobuf::Message& m) {
  grpc::Slice s(m.ByteSizeLong());
  m.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(s.begin()));  // ours to fill
  return s;
}

class PublishStreamCall final : public CallBase, public PubSubService::Drainable {
 public:
  PublishStreamCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate,
                    bool batch)
      : CallBase(gate, service.calls()),
        service_(service),
        batch_(batch),
        window_(service.config().publish.window),
        max_batch_(service.config().limits.max_batch_messages) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    if (batch_) {
      service_.RequestPublishBatchStream(&ctx_, &stream_, cq, cq, accept_op_.tag());
    } else {
      service_.RequestPublishStream(&ctx_, &stream_, cq, cq, accept_op_.tag());
    }
  }

  // OnDrain only starts operations, so it never makes the call deletable: a
  // plain lock (the call may be waiting in its destructor to unregister).
  void OnDrain() override {
    util::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  // rpc: the method, as access rules and logs name it.
  Rpc rpc() const { return batch_ ? Rpc::kPublishBatchStream : Rpc::kPublishStream; }

  ~PublishStreamCall() override { service_.Unregister(this); }

  // OnAccepted: a client opened the stream (ok), or the server is shutting
  // down and this request for a call ends unmatched (no done tag follows).
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    if (batch_) {
      service_.AcceptPublishBatchStream();  // the next caller
    } else {
      service_.AcceptPublishStream();
    }
    Accepted();
    service_.Register(this);
    // Who is asked once; each message's business is checked as it comes.
    // Both methods are PublishStream to the access rules.
    caller_ = service_.CallerOf(ctx_);
    trace_ = PubSubService::TraceOf(ctx_);  // for every message without its own
    absl::Status known = service_.Authorize(caller_, rpc(), "");
    if (known.ok()) {
      absl::StatusOr<ConnectionTable::StreamSlot> slot = service_.OpenStream(ctx_);
      if (slot.ok()) {
        slot_ = std::move(*slot);
      } else {
        known = slot.status();
      }
    }
    Lock lock(this);
    accepted_ = true;
    draining_ = service_.draining();
    if (!known.ok()) {
      // No client at all, or one stream too many on its connection: the
      // stream ends at once, nothing read.
      final_ = ToGrpc(known);
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    StartReadLocked();
  }

  // Parse: the request just read, into in_'s messages (one for PublishStream).
  absl::Status Parse() {
    in_.clear_messages();  // keeps the message objects for the next read
    ++reads_;
    if (!batch_) return ParseRequest(&raw_, in_.add_messages(), reads_);
    if (absl::Status s = ParseRequest(&raw_, &in_, reads_); !s.ok()) return s;
    return CheckBatchSize(in_.messages_size(), max_batch_, reads_);
  }

  // Each completion handler ends in one critical section that retires its
  // operation: until then the operation holds the call, so another thread
  // (a result, a drain) cannot delete it under the handler's feet.
  void OnReadDone(bool ok) {
    // raw_, in_, jobs_ and failed_ belong to this read until reading_ is
    // cleared below.
    const absl::Status parsed = ok ? Parse() : absl::OkStatus();
    bool draining;
    {
      Lock lock(this);
      if (!ok) reads_done_ = true;
      if (!parsed.ok() && !finished()) {
        // Nothing after it is read; what was read before is still answered.
        reads_done_ = true;
        final_ = ToGrpc(parsed);
      }
      if (!ok || !parsed.ok() || finished()) {
        // A request read after Finish was decided is dropped unsent: the
        // stream's status tells the client that unanswered means unsent.
        OpDoneLocked();
        reading_ = false;
        MaybeFinishLocked();
        return;
      }
      for (int i = 0; i < in_.messages_size(); ++i) OweLocked();
      outstanding_ += in_.messages_size();
      draining = draining_;
    }
    for (PublishRequest& request : *in_.mutable_messages()) Prepare(std::move(request), draining);
    Lock lock(this);
    OpDoneLocked();
    for (grpc::Slice& r : failed_) QueueResultLocked(std::move(r));
    failed_.clear();
    for (amqp::PublishJob& job : jobs_) held_.push_back(std::move(job));
    jobs_.clear();
    SubmitHeldLocked();
    // Only now are raw_ and in_ free for the next read: until here reading_
    // stayed true so that a write completion could not start one into them.
    reading_ = false;
    MaybeReadLocked();
    MaybeFinishLocked();
  }

  // Prepare: one message read, checked alone into a job (jobs_) or a
  // FAILED result (failed_); the stream goes on either way.
  void Prepare(PublishRequest&& request, bool draining) {
    const uint64_t sequence = request.sequence();
    // A business this client may not use FAILs this message only.
    const absl::Status allowed = service_.Authorize(caller_, rpc(), request.business());
    absl::StatusOr<amqp::PublishJob> job =
        draining ? absl::UnavailableError("mq-sidecar is shutting down: not sent")
        : allowed.ok()
            ? service_.PreparePublish(std::move(request),
                                      std::chrono::system_clock::time_point::max(), trace_)
            : absl::StatusOr<amqp::PublishJob>(allowed);
    if (job.ok()) {
      job->done = [this](PublishResult&& r, absl::StatusCode) { OnResult(std::move(r)); };
      jobs_.push_back(std::move(*job));
      return;
    }
    // Bad business or fields: this message FAILED.
    PublishResult r;
    r.set_sequence(sequence);
    r.set_status(PublishResult::FAILED);
    r.set_error(std::string(job.status().message()));
    failed_.push_back(ToSlice(r));
  }

  // SubmitHeldLocked hands held messages to the publisher while the window
  // has room, in the order read. Under mu_ so that two threads never
  // reorder them; Submit is a queue push. Once the client is gone they are
  // dropped unsent: no result could reach it.
  void SubmitHeldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (write_failed_ || done()) {
      DropResultsLocked();
      return;
    }
    while (!held_.empty() && outstanding_ - held_.size() < window_) {
      service_.publisher().Submit(std::move(held_.front()));
      held_.pop_front();
    }
  }

  void OnWriteDone(bool ok) {
    Lock lock(this);
    OpDoneLocked();
    outstanding_ -= writing_count_;
    writing_count_ = 0;
    writing_ = false;
    if (!ok) {
      DropResultsLocked();  // the client is gone
    } else if (!ready_.empty()) {
      StartNextWriteLocked();
    }
    SubmitHeldLocked();
    MaybeReadLocked();
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
    if (!held_.empty()) DropResultsLocked();  // never sent: nobody would hear of them
  }

  // OnResult: a publish settled (on the publisher thread).
  void OnResult(PublishResult&& r) {
    grpc::Slice bytes = ToSlice(r);
    Lock lock(this);
    QueueResultLocked(std::move(bytes));
    MaybeFinishLocked();
  }

  // QueueResultLocked: one message answered; written at once if the
  // stream is idle, else with the next write.
  void QueueResultLocked(grpc::Slice&& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    PaidLocked();
    if (write_failed_ || done()) {
      // The client is gone: the result has nowhere to go.
      write_failed_ = true;
      --outstanding_;
      return;
    }
    ready_.push_back(std::move(result));
    if (!writing_) StartNextWriteLocked();
  }

  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (StartOpLocked([&] { stream_.Read(&raw_, read_op_.tag()); })) {
      reading_ = true;
    } else {
      reads_done_ = true;  // the call is over: nothing more will be read
    }
  }

  void MaybeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reading_ || reads_done_ || write_failed_ || draining_ || finished() || done()) return;
    // Resumed by OnWriteDone when there is room and nothing is held.
    if (outstanding_ >= window_ || !held_.empty()) return;
    StartReadLocked();
  }

  // The stream ends once every message read has been answered and either
  // the client stopped sending (or vanished, or sent what cannot be parsed),
  // or the sidecar is draining. Nothing starts once the call is done.
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!accepted_ || finished() || done() || writing_ || outstanding_ != 0) return;
    if (draining_ && !reads_done_) {
      final_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "mq-sidecar is shutting down: every request read was answered; "
                            "send the rest to another sidecar");
    } else if (!(reads_done_ || write_failed_) || reading_) {
      return;
    }
    StartFinishLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      observability::CountCall("mqsidecar.v1.PubSub",
                               batch_ ? "PublishBatchStream" : "PublishStream",
                               final_.error_code());
      stream_.Finish(final_, finish_op_.tag());
    });
  }

  // StartNextWriteLocked writes the front result (PublishStream; while more
  // wait behind it gRPC may coalesce them: WriteFront) or every ready result
  // up to kMaxResultBatchBytes as one PublishResultBatch.
  void StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t count = 1;
    if (StartOpLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          grpc::WriteOptions options;
          if (batch_) {
            count = ResultBatchEncoder::Take(ready_, kMaxResultBatchBytes, &out_);
          } else {
            grpc::ByteBuffer one(&ready_.front(), 1);
            out_.Swap(&one);
            ready_.pop_front();
            if (!ready_.empty()) options.set_buffer_hint();
          }
          stream_.Write(out_, options, write_op_.tag());
        })) {
      writing_ = true;
      writing_count_ = count;
    } else {
      DropResultsLocked();  // the call is over
    }
  }

  // DropResultsLocked: no result can be written any more; those still to
  // come are dropped as they arrive, and held messages are never sent.
  void DropResultsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    write_failed_ = true;
    outstanding_ -= ready_.size() + held_.size();
    ready_.clear();
    for (size_t i = 0; i < held_.size(); ++i) PaidLocked();
    held_.clear();
  }

  PubSubService& service_;
  const bool batch_;  // PublishBatchStream
  const uint32_t window_;
  const uint32_t max_batch_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&ctx_};
  // Released before ctx_ (declared after it): while the call holds its
  // connection, the connection's name is not reused.
  ConnectionTable::StreamSlot slot_;  // set once, in OnAccepted
  // Owned by the read in flight and then by its handler (reading_ keeps the
  // next read from starting): no lock.
  grpc::ByteBuffer raw_;
  PublishBatch in_;                     // the messages read
  std::vector<amqp::PublishJob> jobs_;  // prepared, not yet held
  std::vector<grpc::Slice> failed_;     // their results
  uint64_t reads_ = 0;                  // requests read, for error messages; the read handler's
  Caller caller_;                       // set once accepted, before the first read
  util::TraceContext trace_;            // the caller's metadata (TraceOf), set with caller_

  Op<PublishStreamCall, &PublishStreamCall::OnAccepted> accept_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnReadDone> read_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnWriteDone> write_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnFinishDone> finish_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnDone> done_op_{this};

  std::deque<grpc::Slice> ready_ ABSL_GUARDED_BY(mu_);  // results not yet written
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);           // being written while writing_
  size_t writing_count_ ABSL_GUARDED_BY(mu_) = 0;       // results in out_
  // Read and prepared, waiting for room in the window.
  std::deque<amqp::PublishJob> held_ ABSL_GUARDED_BY(mu_);
  uint64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // read, not yet answered (held too)
  bool accepted_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void PubSubService::AcceptPublishStream() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new PublishStreamCall(*this, cq_, *gate_, /*batch=*/false);
}

void PubSubService::AcceptPublishBatchStream() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) new PublishStreamCall(*this, cq_, *gate_, /*batch=*/true);
}

}  // namespace mqs::server
