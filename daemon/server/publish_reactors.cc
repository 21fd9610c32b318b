// PublishStream: many publishes pipelined over one stream.
//
// Up to `window` requests are in flight (read, not yet answered). When the
// window is full the reactor stops reading, so backpressure reaches the
// caller through gRPC flow control and memory stays bounded. Results are
// written in the order the broker settles them, one write at a time. Every
// request read gets exactly one result; at shutdown the stream stops reading,
// answers what it holds and ends with UNAVAILABLE, so a request without a
// result was never read and never sent.
#include <deque>
#include <mutex>

#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;

class PublishStreamReactor final : public grpc::ServerBidiReactor<PublishRequest, PublishResult>,
                                   public PubSubService::Drainable {
 public:
  PublishStreamReactor(PubSubService& service, uint32_t window)
      : service_(service), window_(window) {
    service_.CallStarted();
    service_.Register(this);
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = service_.draining();
    reading_ = true;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    bool draining;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!ok) reads_done_ = true;
      if (!ok || finished_) {
        reading_ = false;
        // A request read after Finish was decided is dropped unsent: the
        // stream's status tells the client that unanswered means unsent.
        const bool finish = ShouldFinishLocked();
        lock.unlock();
        if (finish) FinishLater();
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
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Only now is request_ free for the next read: until here reading_
      // stayed true so that OnWriteDone could not start one into it.
      reading_ = false;
      MaybeReadLocked();
      finish = ShouldFinishLocked();
    }
    if (finish) FinishLater();
  }

  void OnWriteDone(bool ok) override {
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
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
      finish = ShouldFinishLocked();
    }
    if (finish) FinishLater();
  }

  void OnDrain() override {
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      draining_ = true;
      finish = ShouldFinishLocked();
    }
    if (finish) FinishLater();
  }

  void OnDone() override {
    PubSubService& service = service_;
    service.Unregister(this);
    delete this;
    service.CallEnded();  // last: shutdown may proceed once this reaches zero
  }

 private:
  // OnResult: a publish settled (on the publisher thread, or inline).
  void OnResult(PublishResult&& r) {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (write_failed_) {
        --outstanding_;
        finish = ShouldFinishLocked();
      } else {
        outbox_.push_back(std::move(r));
        if (!writing_) {
          StartNextWriteLocked();
        }
      }
    }
    if (finish) FinishLater();
  }

  void MaybeReadLocked() {
    if (reading_ || reads_done_ || write_failed_ || draining_ || finished_) return;
    if (outstanding_ >= window_) return;  // resumed by OnWriteDone when there is room
    reading_ = true;
    StartRead(&request_);
  }

  // The stream ends once every request read has been answered and either the
  // client stopped sending (or vanished), or the sidecar is draining.
  bool ShouldFinishLocked() {
    if (finished_ || writing_ || outstanding_ != 0) return false;
    if (draining_ && !reads_done_) {
      final_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "mq-sidecar is shutting down: every request read was answered; "
                            "send the rest to another sidecar");
    } else if (!(reads_done_ || write_failed_) || reading_) {
      return false;
    }
    finished_ = true;
    return true;
  }

  // FinishLater is called without mu_ and as the last use of `this`: once
  // Finish is called, OnDone may delete the reactor on another thread.
  // final_ is no longer written once finished_ is set.
  void FinishLater() { Finish(final_); }

  // StartNextWriteLocked writes outbox_.front(). While more messages wait
  // behind it, gRPC may hold this one back (buffer hint) and coalesce it with
  // the next writes into fewer frames and syscalls; the last write of a burst
  // flushes.
  void StartNextWriteLocked() {
    writing_ = true;
    grpc::WriteOptions options;
    if (outbox_.size() > 1) options.set_buffer_hint();
    StartWrite(&outbox_.front(), options);
  }

  PubSubService& service_;
  const uint32_t window_;
  PublishRequest request_;  // owned by the read in flight

  std::mutex mu_;
  std::deque<PublishResult> outbox_;  // front() is being written while writing_
  uint64_t outstanding_ = 0;          // read, not yet answered
  bool reading_ = false;
  bool reads_done_ = false;
  bool writing_ = false;
  bool write_failed_ = false;
  bool draining_ = false;
  bool finished_ = false;
  grpc::Status final_;
};

}  // namespace

grpc::ServerBidiReactor<PublishRequest, PublishResult>* NewPublishStreamReactor(
    PubSubService& service, uint32_t window) {
  return new PublishStreamReactor(service, window);
}

}  // namespace mqs::server
