// Subscribe: one competing consumer of a business's queue.
//
// The reactor is also the stream's DeliverySink: the consumer thread pushes
// deliveries into a small outbox (bounded by the prefetch, since the broker
// sends no more than that unacked) and the reactor writes them one at a time.
// The stream finishes only after the consumer thread has closed the stream's
// channel and said so (OnClosed), so no callback can outlive the reactor.
#include <deque>
#include <mutex>

#include "server/pubsub_service.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::SubscribeRequest;

class SubscribeReactor final : public grpc::ServerBidiReactor<SubscribeRequest, Delivery>,
                               public amqp::DeliverySink {
 public:
  explicit SubscribeReactor(PubSubService& service) : service_(service) {
    service_.CallStarted();
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed or vanished: end the consumer, which returns
      // its unacked deliveries to the queue at once.
      RequestClose(absl::OkStatus());
      return;
    }
    switch (request_.kind_case()) {
      case SubscribeRequest::kOpen:
        if (stream_id_ != 0) {
          RequestClose(absl::InvalidArgumentError("open sent twice on one Subscribe stream"));
          return;
        }
        if (absl::Status s = Open(request_.open()); !s.ok()) {
          RequestClose(s);
          return;
        }
        break;
      case SubscribeRequest::kAck:
      case SubscribeRequest::kNack:
        if (stream_id_ == 0) {
          RequestClose(
              absl::InvalidArgumentError("the first request of a Subscribe stream must be open"));
          return;
        }
        if (request_.has_ack()) {
          service_.consumer().Ack(stream_id_, request_.ack().delivery_id());
        } else {
          service_.consumer().Nack(stream_id_, request_.nack().delivery_id(),
                                   request_.nack().requeue());
        }
        break;
      case SubscribeRequest::KIND_NOT_SET:
        RequestClose(absl::InvalidArgumentError("empty SubscribeRequest: set open, ack or nack"));
        return;
    }
    // No new operation once Finish has been decided (it may run on the
    // consumer thread at any moment).
    std::lock_guard<std::mutex> lock(mu_);
    if (!finished_) StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      outbox_.pop_front();
      writing_ = false;
      if (!ok) {
        outbox_.clear();
      } else if (!closed_ && !outbox_.empty()) {
        StartNextWriteLocked();
      }
      finish = ShouldFinishLocked();
    }
    if (!ok) RequestClose(absl::OkStatus());
    if (finish) Finish(ToGrpc(final_));
  }

  void OnCancel() override { RequestClose(absl::CancelledError("the client cancelled")); }

  void OnDone() override {
    PubSubService& service = service_;
    delete this;
    service.CallEnded();  // last: shutdown may proceed once this reaches zero
  }

  // DeliverySink, on the consumer thread.
  void OnDelivery(Delivery&& d) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;  // the channel is closing; the broker requeues it
    outbox_.push_back(std::move(d));
    if (!writing_) {
      StartNextWriteLocked();
    }
  }

  void OnClosed(const absl::Status& status) override {
    bool finish;
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
      finish = ShouldFinishLocked();
    }
    // Finish last: once called, OnDone may delete this on another thread.
    if (finish) Finish(ToGrpc(final_));
  }

 private:
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

  // RequestClose ends the stream with `why` (the first reason wins).
  void RequestClose(const absl::Status& why) {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (close_requested_) return;
      close_requested_ = true;
      if (opened_) {
        service_.consumer().Close(stream_id_, why);
      } else {
        closed_ = true;
        final_ = why;
        finish = ShouldFinishLocked();
      }
    }
    if (finish) Finish(ToGrpc(final_));
  }

  bool ShouldFinishLocked() {
    if (!closed_ || writing_ || finished_) return false;
    finished_ = true;
    return true;
  }

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
  SubscribeRequest request_;  // owned by the read in flight
  uint64_t stream_id_ = 0;    // set once by the reading side

  std::mutex mu_;
  std::deque<Delivery> outbox_;  // front() is being written while writing_
  bool opened_ = false;
  bool close_requested_ = false;
  bool closed_ = false;  // the consumer thread will call no more
  bool writing_ = false;
  bool finished_ = false;
  absl::Status final_;
};

}  // namespace

grpc::ServerBidiReactor<SubscribeRequest, Delivery>* NewSubscribeReactor(PubSubService& service) {
  return new SubscribeReactor(service);
}

}  // namespace mqs::server
