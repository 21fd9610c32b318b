// PublishStream: many publishes pipelined over one stream.
//
// Up to `window` requests are in flight (read, not yet answered). When the
// window is full the reactor stops reading, so backpressure reaches the
// caller through gRPC flow control and memory stays bounded. Results are
// written in the order the broker settles them, one write at a time.
#include <deque>
#include <mutex>

#include "server/pubsub_service.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::PublishRequest;
using mqsidecar::v1::PublishResult;

class PublishStreamReactor final : public grpc::ServerBidiReactor<PublishRequest, PublishResult> {
 public:
  PublishStreamReactor(PubSubService& service, uint32_t window)
      : service_(service), window_(window) {
    reading_ = true;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool finish;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reading_ = false;
        reads_done_ = true;
        finish = ShouldFinishLocked();
      }
      if (finish) Finish(grpc::Status::OK);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++outstanding_;
    }
    const uint64_t sequence = request_.sequence();
    absl::StatusOr<amqp::PublishJob> job = service_.PreparePublish(std::move(request_));
    if (job.ok()) {
      job->done = [this](PublishResult&& r) { OnResult(std::move(r)); };
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
      if (outstanding_ < window_ && !write_failed_) {
        StartRead(&request_);
      } else {
        reading_ = false;  // resumed by OnWriteDone when the window has room
      }
      finish = ShouldFinishLocked();
    }
    if (finish) Finish(grpc::Status::OK);
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
        writing_ = true;
        StartWrite(&outbox_.front());
      }
      if (!reading_ && !reads_done_ && !write_failed_ && outstanding_ < window_) {
        reading_ = true;
        StartRead(&request_);
      }
      finish = ShouldFinishLocked();
    }
    if (finish) Finish(grpc::Status::OK);
  }

  void OnDone() override { delete this; }

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
          writing_ = true;
          StartWrite(&outbox_.front());
        }
      }
    }
    // Finish last: once called, OnDone may delete this on another thread.
    if (finish) Finish(grpc::Status::OK);
  }

  // The stream ends when the client has stopped sending (or vanished) and
  // every request it sent has been answered.
  bool ShouldFinishLocked() {
    if (finished_ || writing_ || outstanding_ != 0) return false;
    if (!reads_done_ && !write_failed_) return false;
    if (reading_) return false;  // a read is pending; it completes with !ok
    finished_ = true;
    return true;
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
  bool finished_ = false;
};

}  // namespace

grpc::ServerBidiReactor<PublishRequest, PublishResult>* NewPublishStreamReactor(
    PubSubService& service, uint32_t window) {
  return new PublishStreamReactor(service, window);
}

}  // namespace mqs::server
