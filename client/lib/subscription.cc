// Subscription: one reader thread keeps a SubscribeBatch stream open (opening
// a new one with backoff whenever it ends, until Stop), queues each delivery
// of each batch for the worker threads, which run the handler; a settler
// thread writes their outcomes in batches (SettleBatcher). Outcomes of a stream that has ended are
// dropped: the sidecar returned those deliveries to the queue when it ended.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <deque>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "core.h"
#include "mqsidecar/client.h"
#include "settle_batcher.h"
#include "util/mutex.h"

namespace mqsidecar {

using mqs::util::CondVar;
using mqs::util::Mutex;
using mqs::util::MutexLock;
using Clock = std::chrono::steady_clock;

namespace {

// Session: one SubscribeBatch stream and the bookkeeping of its deliveries.
// (SubscribeBatch, not Subscribe: the sidecar sends whatever deliveries are
// ready in one message, so a busy stream costs both sides one gRPC message
// per batch instead of one per delivery; at a low rate a batch is one.)
struct Session {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubscribeRequest, v1::DeliveryBatch>> rw;
  Mutex mu;
  internal::SettleBatcher batcher ABSL_GUARDED_BY(mu);
  Mutex write_mu;  // the settler's writes vs the reader's Finish
  bool ended ABSL_GUARDED_BY(write_mu) = false;
};

struct Work {
  std::shared_ptr<Session> session;
  v1::Delivery delivery;
};

}  // namespace

struct Subscription::Impl {
  std::shared_ptr<Client::Core> core;
  std::string business;
  Handler handler;
  SubscribeOptions options;

  Mutex mu;
  CondVar work_cv;    // queue, stopping
  CondVar settle_cv;  // settle_pending, workers_done
  CondVar state_cv;   // stopping (backoff), reader_done
  std::deque<Work> queue ABSL_GUARDED_BY(mu);
  std::shared_ptr<Session> current ABSL_GUARDED_BY(mu);        // open and shared with the settler
  grpc::ClientContext* opening ABSL_GUARDED_BY(mu) = nullptr;  // a stream being opened
  bool settle_pending ABSL_GUARDED_BY(mu) = false;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool workers_done ABSL_GUARDED_BY(mu) = false;
  bool reader_done ABSL_GUARDED_BY(mu) = false;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  Stats stats ABSL_GUARDED_BY(mu);

  std::thread reader;
  std::thread settler;
  std::vector<std::thread> workers;

  void Start() {
    reader = std::thread([this] { ReadLoop(); });
    settler = std::thread([this] { SettleLoop(); });
    for (size_t i = 0; i < std::max<size_t>(1, options.concurrency); ++i) {
      workers.emplace_back([this] { WorkLoop(); });
    }
  }

  // One stream, from open to end; false if it could not start (stopping).
  void RunSession(bool* delivered) {
    auto s = std::make_shared<Session>();
    core->Prepare(&s->context);
    // While the sidecar is away the call waits for the channel (reconnecting
    // with its own backoff) instead of failing at once; Stop cancels it.
    s->context.set_wait_for_ready(true);
    {
      MutexLock lock(&mu);
      if (stopping) return;
      opening = &s->context;
    }
    s->rw = core->stub->SubscribeBatch(&s->context);
    v1::SubscribeRequest open;
    open.mutable_open()->set_business(business);
    open.mutable_open()->set_prefetch(options.prefetch);
    open.mutable_open()->set_consumer_name(options.consumer_name);
    const bool opened = s->rw->Write(open);
    {
      MutexLock lock(&mu);
      opening = nullptr;
      ++stats.streams;
      if (opened) current = s;
      if (stopping) s->context.TryCancel();
    }
    v1::DeliveryBatch batch;
    while (opened && s->rw->Read(&batch)) {
      *delivered = true;
      MutexLock lock(&mu);
      stats.deliveries += static_cast<uint64_t>(batch.deliveries_size());
      if (stopping) continue;  // not handled: they return to the queue when the stream ends
      {
        MutexLock slock(&s->mu);
        for (const v1::Delivery& d : batch.deliveries()) s->batcher.Delivered(d.delivery_id());
      }
      for (v1::Delivery& d : *batch.mutable_deliveries()) queue.push_back({s, std::move(d)});
      batch.Clear();
      work_cv.SignalAll();
    }
    {
      MutexLock lock(&s->write_mu);
      s->ended = true;
    }
    const grpc::Status status = s->rw->Finish();
    bool report = false;
    {
      MutexLock lock(&mu);
      if (current == s) current.reset();
      // Deliveries not started are back in the queue at the broker already.
      queue.erase(
          std::remove_if(queue.begin(), queue.end(), [&](const Work& w) { return w.session == s; }),
          queue.end());
      stats.last_status = status;
      report = !stopping;
    }
    if (report) {
      core->Report("subscription to " + business + ": stream ended (" + StatusText(status) +
                   "), resuming");
    }
  }

  void ReadLoop() {
    std::chrono::milliseconds backoff = options.min_backoff;
    for (;;) {
      bool delivered = false;
      const Clock::time_point started = Clock::now();
      RunSession(&delivered);
      // A stream that worked for a while starts the backoff over.
      if (delivered || Clock::now() - started > std::chrono::seconds(5)) {
        backoff = options.min_backoff;
      }
      MutexLock lock(&mu);
      const Clock::time_point until = Clock::now() + backoff;
      while (!stopping && state_cv.WaitUntil(&mu, until)) {
      }
      if (stopping) break;
      backoff = std::min(options.max_backoff, backoff * 2);
    }
    MutexLock lock(&mu);
    reader_done = true;
    state_cv.SignalAll();
  }

  Outcome Handle(const v1::Delivery& d) {
    try {
      return handler(d);
    } catch (const std::exception& e) {
      core->Report("handler for " + business + " threw on message " + d.message_id() + ": " +
                   e.what() + " (retried)");
    } catch (...) {
      core->Report("handler for " + business + " threw on message " + d.message_id() +
                   " (retried)");
    }
    MutexLock lock(&mu);
    ++stats.handler_errors;
    return Outcome::Retry();
  }

  void WorkLoop() {
    for (;;) {
      Work w;
      {
        MutexLock lock(&mu);
        while (!stopping && queue.empty()) work_cv.Wait(&mu);
        if (stopping) return;
        w = std::move(queue.front());
        queue.pop_front();
      }
      const Outcome outcome = Handle(w.delivery);
      bool settled = false;
      {
        MutexLock lock(&w.session->mu);
        settled = w.session->batcher.Settle(w.delivery.delivery_id(), outcome);
      }
      MutexLock lock(&mu);
      if (!settled) continue;
      switch (outcome.kind) {
        case Outcome::Kind::kAck:
          ++stats.acked;
          break;
        case Outcome::Kind::kRetry:
          ++stats.retried;
          break;
        case Outcome::Kind::kReject:
          ++stats.rejected;
          break;
      }
      settle_pending = true;
      settle_cv.Signal();
    }
  }

  // Writes whatever outcomes accumulated while the previous write was in
  // flight: the batch grows with the load, and nothing waits at a low rate.
  void SettleLoop() {
    for (;;) {
      std::shared_ptr<Session> s;
      bool done = false;
      {
        MutexLock lock(&mu);
        while (!settle_pending && !workers_done) settle_cv.Wait(&mu);
        settle_pending = false;
        done = workers_done;
        s = current;
      }
      if (!s) {
        if (done) return;
        continue;
      }
      std::vector<v1::SubscribeRequest> requests;
      {
        MutexLock lock(&s->mu);
        requests = s->batcher.Take(options.max_settle_ids);
      }
      uint64_t written = 0;
      uint64_t multiple = 0;
      {
        MutexLock lock(&s->write_mu);
        for (const v1::SubscribeRequest& r : requests) {
          if (s->ended || !s->rw->Write(r)) break;
          ++written;
          if (r.has_ack() && r.ack().multiple()) ++multiple;
        }
        // Stop: half-close, so the sidecar reads every outcome sent and ends
        // the stream (unhandled deliveries go back to the queue).
        if (done && !s->ended) s->rw->WritesDone();
      }
      {
        MutexLock lock(&mu);
        stats.settle_requests += written;
        stats.multiple_acks += multiple;
      }
      if (done) return;
    }
  }

  void Stop(std::chrono::milliseconds grace) {
    {
      MutexLock lock(&mu);
      if (stopped) return;
      stopped = true;
      stopping = true;
      queue.clear();
      work_cv.SignalAll();
      state_cv.SignalAll();
      if (opening != nullptr) opening->TryCancel();
    }
    for (std::thread& t : workers) t.join();
    {
      MutexLock lock(&mu);
      workers_done = true;
      settle_cv.SignalAll();
    }
    settler.join();
    {
      MutexLock lock(&mu);
      const Clock::time_point until = Clock::now() + grace;
      while (!reader_done && state_cv.WaitUntil(&mu, until)) {
      }
      if (!reader_done && current) current->context.TryCancel();
      if (!reader_done && opening != nullptr) opening->TryCancel();
    }
    reader.join();
  }
};

Subscription::Subscription(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Subscription::~Subscription() { Stop(); }

void Subscription::Stop(std::chrono::milliseconds grace) { impl_->Stop(grace); }

Subscription::Stats Subscription::stats() const {
  MutexLock lock(&impl_->mu);
  return impl_->stats;
}

std::unique_ptr<Subscription> Client::Subscribe(const std::string& business, Handler handler,
                                                SubscribeOptions options) {
  auto impl = std::make_shared<Subscription::Impl>();
  impl->core = core_;
  impl->business = business;
  impl->handler = std::move(handler);
  impl->options = std::move(options);
  impl->Start();
  return std::unique_ptr<Subscription>(new Subscription(std::move(impl)));
}

}  // namespace mqsidecar
