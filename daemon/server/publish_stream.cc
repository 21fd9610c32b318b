// PublishStream: many publishes pipelined over one stream (async API; see
// async_call.h for why).
//
// Up to `window` requests are in flight (read, not yet answered). When the
// window is full the call stops reading, so backpressure reaches the caller
// through gRPC flow control and memory stays bounded. Results are written in
// the order the broker settles them, one write at a time. Every request read
// gets exactly one result; at shutdown the stream stops reading, answers what
// it holds and ends with UNAVAILABLE, so a request without a result was never
// read and never sent.
//
// Threads: completions run on the server's completion-queue thread; results
// arrive on the publisher thread, which starts the write itself. All state is
// under mu_. The call deletes itself once gRPC is done with it (done tag, no
// operation pending) and the publisher owes it no result.
#include <deque>
#include <mutex>

#include "server/async_call.h"
#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;

class PublishStreamCall final : public PubSubService::Drainable {
 public:
  PublishStreamCall(PubSubService& service, grpc::ServerCompletionQueue* cq)
      : service_(service), window_(service.config().publish.window) {
    ctx_.AsyncNotifyWhenDone(done_op_.tag());
    service_.RequestPublishStream(&ctx_, &stream_, cq, cq, accept_op_.tag());
  }

  void OnDrain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  ~PublishStreamCall() override = default;

  // OnAccepted: a client opened the stream (ok), or the server is shutting
  // down and this request for a call ends unmatched (no done tag follows).
  void OnAccepted(bool ok) {
    if (!ok) {
      delete this;
      return;
    }
    service_.AcceptPublishStream();  // the next caller
    service_.CallStarted();
    service_.Register(this);
    std::lock_guard<std::mutex> lock(mu_);
    accepted_ = true;
    draining_ = service_.draining();
    StartReadLocked();
  }

  // Each completion handler ends in one critical section that retires its
  // operation: until then ops_ holds the call, so another thread (a result,
  // a drain) cannot delete it under the handler's feet.
  void OnReadDone(bool ok) {
    bool draining;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!ok) reads_done_ = true;
      if (!ok || finished_) {
        // A request read after Finish was decided is dropped unsent: the
        // stream's status tells the client that unanswered means unsent.
        --ops_;
        reading_ = false;
        MaybeFinishLocked();
        const bool release = ShouldDeleteLocked();
        lock.unlock();
        if (release) Delete();
        return;
      }
      ++outstanding_;
      draining = draining_;
    }
    const uint64_t sequence = request_.sequence();
    absl::StatusOr<amqp::PublishJob> job =
        draining ? absl::UnavailableError("mq-sidecar is shutting down: not sent")
                 : service_.PreparePublish(std::move(request_),
                                           std::chrono::system_clock::time_point::max());
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
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      // Only now is request_ free for the next read: until here reading_
      // stayed true so that a write completion could not start one into it.
      reading_ = false;
      MaybeReadLocked();
      MaybeFinishLocked();
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  void OnWriteDone(bool ok) {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      outbox_.pop_front();
      --outstanding_;
      writing_ = false;
      if (!ok) {
        // The client is gone: results still to come are dropped as they arrive.
        write_failed_ = true;
        outstanding_ -= outbox_.size();
        outbox_.clear();
      } else if (!outbox_.empty()) {
        StartNextWriteLocked();
      }
      MaybeReadLocked();
      MaybeFinishLocked();
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  void OnFinishDone(bool /*ok*/) { Settle(); }

  // OnDone: gRPC is done with the call (finished, or cancelled by the client
  // or by shutdown). Pending operations still complete, failing.
  void OnDone(bool /*ok*/) {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  // OnResult: a publish settled (on the publisher thread, or inline).
  void OnResult(PublishResult&& r) {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (write_failed_ || done_) {
        // The client is gone: the result has nowhere to go.
        write_failed_ = true;
        --outstanding_;
        MaybeFinishLocked();
        release = ShouldDeleteLocked();
      } else {
        outbox_.push_back(std::move(r));
        if (!writing_) StartNextWriteLocked();
      }
    }
    if (release) Delete();
  }

  // Settle: one operation completed that needs no further handling.
  void Settle() {
    bool release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --ops_;
      release = ShouldDeleteLocked();
    }
    if (release) Delete();
  }

  void StartReadLocked() {
    reading_ = true;
    ++ops_;
    stream_.Read(&request_, read_op_.tag());
  }

  void MaybeReadLocked() {
    if (reading_ || reads_done_ || write_failed_ || draining_ || finished_ || done_) return;
    if (outstanding_ >= window_) return;  // resumed by OnWriteDone when there is room
    StartReadLocked();
  }

  // The stream ends once every request read has been answered and either the
  // client stopped sending (or vanished), or the sidecar is draining.
  // Operations are started under mu_: their completions take mu_ first, so
  // none can delete the call while the thread that started it is still in
  // gRPC. Nothing starts once the call is done.
  void MaybeFinishLocked() {
    if (!accepted_ || finished_ || done_ || writing_ || outstanding_ != 0) return;
    if (draining_ && !reads_done_) {
      final_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "mq-sidecar is shutting down: every request read was answered; "
                            "send the rest to another sidecar");
    } else if (!(reads_done_ || write_failed_) || reading_) {
      return;
    }
    finished_ = true;
    ++ops_;
    stream_.Finish(final_, finish_op_.tag());
  }

  // Deletable once gRPC will deliver nothing more and the publisher owes
  // nothing: every read request has been answered or dropped.
  bool ShouldDeleteLocked() const { return done_ && ops_ == 0 && outstanding_ == 0; }

  void Delete() {
    PubSubService& service = service_;
    service.Unregister(this);
    delete this;
    service.CallEnded();  // last: shutdown may proceed once this reaches zero
  }

  void StartNextWriteLocked() {
    writing_ = true;
    ++ops_;
    WriteFront(stream_, outbox_, write_op_.tag());
  }

  PubSubService& service_;
  const uint32_t window_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<PublishResult, PublishRequest> stream_{&ctx_};
  PublishRequest request_;  // owned by the read in flight

  Op<PublishStreamCall, &PublishStreamCall::OnAccepted> accept_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnReadDone> read_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnWriteDone> write_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnFinishDone> finish_op_{this};
  Op<PublishStreamCall, &PublishStreamCall::OnDone> done_op_{this};

  std::mutex mu_;
  std::deque<PublishResult> outbox_;  // front() is being written while writing_
  uint64_t outstanding_ = 0;          // read, not yet answered
  int ops_ = 0;                       // operations started, not yet completed
  bool accepted_ = false;
  bool reading_ = false;
  bool reads_done_ = false;
  bool writing_ = false;
  bool write_failed_ = false;
  bool draining_ = false;
  bool finished_ = false;
  bool done_ = false;
  grpc::Status final_;
};

}  // namespace

void PubSubService::AcceptPublishStream() {
  std::lock_guard<std::mutex> lock(accept_mu_);
  if (cq_ != nullptr) new PublishStreamCall(*this, cq_);
}

}  // namespace mqs::server
