// PublishStream: many publishes pipelined over one stream (async API; see
// async_call.h for why).
//
// Up to `window` requests are in flight (read, not yet answered). When the
// window is full the call stops reading, so backpressure reaches the caller
// through gRPC flow control and memory stays bounded. Results are written in
// the order the broker settles them, one write at a time. Every request read
// gets exactly one result; at shutdown the stream stops reading, answers what
// it holds and ends with UNAVAILABLE, so a request without a result was never
// read and never sent. A request that cannot be parsed ends the stream the
// same way, with INVALID_ARGUMENT naming it (the method is registered raw:
// pubsub_service.h says why).
//
// Threads: completions run on the server's completion-queue thread; results
// arrive on the publisher thread, which starts the write itself. All state is
// under mu_. The lifecycle is CallBase's: the publisher owes the call one
// result per request submitted.
#include <deque>

#include "server/async_call.h"
#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;

class PublishStreamCall final : public CallBase, public PubSubService::Drainable {
 public:
  PublishStreamCall(PubSubService& service, grpc::ServerCompletionQueue* cq, OpGate& gate)
      : CallBase(gate, service.calls()),
        service_(service),
        window_(service.config().publish.window) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestPublishStream(&ctx_, &stream_, cq, cq, accept_op_.tag());
  }

  // OnDrain only starts operations, so it never makes the call deletable: a
  // plain lock (the call may be waiting in its destructor to unregister).
  void OnDrain() override {
    util::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  ~PublishStreamCall() override { service_.Unregister(this); }

  // OnAccepted: a client opened the stream (ok), or the server is shutting
  // down and this request for a call ends unmatched (no done tag follows).
  void OnAccepted(bool ok) {
    if (!ok) {
      DeleteUnaccepted();
      return;
    }
    service_.AcceptPublishStream();  // the next caller
    Accepted();
    service_.Register(this);
    // Who is asked once; each request's business is checked as it comes.
    caller_ = service_.CallerOf(ctx_);
    const absl::Status known = service_.Authorize(caller_, Rpc::kPublishStream, "");
    Lock lock(this);
    accepted_ = true;
    draining_ = service_.draining();
    if (!known.ok()) {
      // No client at all: the stream ends at once, nothing read.
      final_ = ToGrpc(known);
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    StartReadLocked();
  }

  // Each completion handler ends in one critical section that retires its
  // operation: until then the operation holds the call, so another thread
  // (a result, a drain) cannot delete it under the handler's feet.
  void OnReadDone(bool ok) {
    // raw_ belongs to this read until reading_ is cleared below.
    PublishRequest request;
    absl::Status parsed = absl::OkStatus();
    if (ok) parsed = ParseRequest(&raw_, &request, ++reads_);
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
      ++outstanding_;
      OweLocked();
      draining = draining_;
    }
    const uint64_t sequence = request.sequence();
    // A business this client may not use FAILs this request only.
    const absl::Status allowed =
        service_.Authorize(caller_, Rpc::kPublishStream, request.business());
    absl::StatusOr<amqp::PublishJob> job =
        draining       ? absl::UnavailableError("mq-sidecar is shutting down: not sent")
        : allowed.ok() ? service_.PreparePublish(std::move(request),
                                                 std::chrono::system_clock::time_point::max())
                       : absl::StatusOr<amqp::PublishJob>(allowed);
    if (job.ok()) {
      job->done = [this](PublishResult&& r, absl::StatusCode) { OnResult(std::move(r)); };
      service_.publisher().Submit(std::move(*job));
    } else {
      // Bad business or fields: this request FAILED, the stream goes on.
      PublishResult r;
      r.set_sequence(sequence);
      r.set_status(PublishResult::FAILED);
      r.set_error(std::string(job.status().message()));
      OnResult(std::move(r));
    }
    Lock lock(this);
    OpDoneLocked();
    // Only now is raw_ free for the next read: until here reading_ stayed
    // true so that a write completion could not start one into it.
    reading_ = false;
    MaybeReadLocked();
    MaybeFinishLocked();
  }

  void OnWriteDone(bool ok) {
    Lock lock(this);
    OpDoneLocked();
    outbox_.pop_front();
    --outstanding_;
    writing_ = false;
    if (!ok) {
      DropResultsLocked();  // the client is gone
    } else if (!outbox_.empty()) {
      StartNextWriteLocked();
    }
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
  }

  // OnResult: a publish settled (on the publisher thread, or inline).
  void OnResult(PublishResult&& r) {
    grpc::ByteBuffer bytes = Serialize(r);
    Lock lock(this);
    PaidLocked();
    if (write_failed_ || done()) {
      // The client is gone: the result has nowhere to go.
      write_failed_ = true;
      --outstanding_;
    } else {
      outbox_.push_back(std::move(bytes));
      if (!writing_) StartNextWriteLocked();
    }
    MaybeFinishLocked();
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
    if (outstanding_ >= window_) return;  // resumed by OnWriteDone when there is room
    StartReadLocked();
  }

  // The stream ends once every request read has been answered and either the
  // client stopped sending (or vanished, or sent what cannot be parsed), or
  // the sidecar is draining. Nothing starts once the call is done.
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!accepted_ || finished() || done() || writing_ || outstanding_ != 0) return;
    if (draining_ && !reads_done_) {
      final_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "mq-sidecar is shutting down: every request read was answered; "
                            "send the rest to another sidecar");
    } else if (!(reads_done_ || write_failed_) || reading_) {
      return;
    }
    StartFinishLocked(
        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { stream_.Finish(final_, finish_op_.tag()); });
  }

  void StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (StartOpLocked([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          WriteFront(stream_, outbox_, write_op_.tag());
        })) {
      writing_ = true;
    } else {
      DropResultsLocked();  // the call is over
    }
  }

  // DropResultsLocked: no result can be written any more; those still to
  // come are dropped as they arrive.
  void DropResultsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    write_failed_ = true;
    outstanding_ -= outbox_.size();
    outbox_.clear();
  }

  PubSubService& service_;
  const uint32_t window_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&ctx_};
  // Owned by the read in flight and then by its handler (reading_ keeps the
  // next read from starting): no lock.
  grpc::ByteBuffer raw_;
  uint64_t reads_ = 0;  // requests read, for error messages; the read handler's
  Caller caller_;       // set once accepted, before the first read

  Op<PublishStreamCall, &PublishStreamCall::OnAccepted> accept_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnReadDone> read_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnWriteDone> write_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnFinishDone> finish_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnDone> done_op_{this};

  // front() is being written while writing_.
  std::deque<grpc::ByteBuffer> outbox_ ABSL_GUARDED_BY(mu_);
  uint64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // read, not yet answered
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
  if (cq_ != nullptr) new PublishStreamCall(*this, cq_, *gate_);
}

}  // namespace mqs::server
