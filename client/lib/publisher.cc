// Publisher: PublishBatchStream with a window of messages in flight. A caller
// queues its message; a caller that finds no one writing writes whatever is
// queued as one PublishBatch itself (so at a low rate a message goes out alone
// and at once, with no thread hand-off), and if more was queued meanwhile it
// hands the rest to the publisher's writer thread, which writes batches until
// the queue is empty (so under load many callers' messages share one gRPC
// message, and no caller writes for others for longer than one write). One
// reader thread per stream reads the result batches and runs the callbacks.
// A stream that breaks answers what it still owes UNCONFIRMED; the next
// Publish opens a new one.
#include <grpcpp/grpcpp.h>

#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "core.h"
#include "mqsidecar/client.h"
#include "util/mutex.h"

namespace mqsidecar {

using mqs::util::CondVar;
using mqs::util::Mutex;
using mqs::util::MutexLock;

namespace {

// Stream: one PublishBatchStream call.
struct Stream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::PublishBatch, v1::PublishResultBatch>> rw;
  Mutex write_mu;  // one writer at a time; no write after WritesDone or Finish
  bool writes_closed ABSL_GUARDED_BY(write_mu) = false;
};

// Queued: a message sequenced on `stream`, not yet written.
struct Queued {
  v1::PublishRequest request;
  std::shared_ptr<Stream> stream;
};

struct Pending {
  uint64_t user_sequence = 0;
  std::string message_id;
  PublishCallback done;
  std::shared_ptr<Stream> stream;
};

v1::PublishResult Synthetic(const Pending& p, v1::PublishResult::Status status, std::string error) {
  v1::PublishResult r;
  r.set_sequence(p.user_sequence);
  r.set_message_id(p.message_id);
  r.set_status(status);
  r.set_error(std::move(error));
  return r;
}

}  // namespace

struct Publisher::Impl {
  std::shared_ptr<Client::Core> core;
  PublisherOptions options;

  Mutex mu;
  CondVar cv;  // a result came in, a stream ended, closed
  std::shared_ptr<Stream> stream ABSL_GUARDED_BY(mu);
  std::map<uint64_t, Pending> pending ABSL_GUARDED_BY(mu);  // by our sequence
  std::vector<Queued> outbox ABSL_GUARDED_BY(mu);           // in sequence order
  // A caller or the writer thread is writing the outbox; whoever it is looks
  // at the outbox again (under mu) before letting go, so nothing queued while
  // it wrote is left behind.
  bool writing ABSL_GUARDED_BY(mu) = false;
  bool writer_turn ABSL_GUARDED_BY(mu) = false;  // the writer thread has the outbox
  bool writer_stop ABSL_GUARDED_BY(mu) = false;
  CondVar writer_cv;  // writer_turn, writer_stop
  std::thread writer;
  Publisher::Stats stats ABSL_GUARDED_BY(mu);
  uint64_t next_sequence ABSL_GUARDED_BY(mu) = 1;
  bool closed ABSL_GUARDED_BY(mu) = false;
  // Every reader thread started, joined in Close (a finished one is joined
  // when the next stream opens, unless that happens on the reader itself).
  std::vector<std::thread> readers ABSL_GUARDED_BY(mu);

  void Deliver(const Pending& p, const v1::PublishResult& r) const {
    try {
      p.done(r);
    } catch (const std::exception& e) {
      core->Report(std::string("publish callback threw: ") + e.what());
    } catch (...) {
      core->Report("publish callback threw");
    }
  }

  void ReadLoop(const std::shared_ptr<Stream>& s) {
    v1::PublishResultBatch batch;
    std::vector<std::pair<Pending, v1::PublishResult*>> settled;
    while (s->rw->Read(&batch)) {
      settled.clear();
      {
        MutexLock lock(&mu);
        for (v1::PublishResult& r : *batch.mutable_results()) {
          auto it = pending.find(r.sequence());
          if (it == pending.end()) continue;  // not ours: ignore
          settled.emplace_back(std::move(it->second), &r);
          pending.erase(it);
        }
        cv.SignalAll();
      }
      for (auto& [p, r] : settled) {
        r->set_sequence(p.user_sequence);
        Deliver(p, *r);
      }
    }
    {
      MutexLock lock(&s->write_mu);
      s->writes_closed = true;
    }
    const grpc::Status status = s->rw->Finish();
    std::vector<Pending> lost;
    bool report = false;
    {
      MutexLock lock(&mu);
      report = !status.ok() && !closed;
      for (auto it = pending.begin(); it != pending.end();) {
        if (it->second.stream == s) {
          lost.push_back(std::move(it->second));
          it = pending.erase(it);
        } else {
          ++it;
        }
      }
      if (stream == s) stream.reset();
      cv.SignalAll();
    }
    if (report) {
      core->Report("PublishBatchStream ended (" + StatusText(status) +
                   "); the next publish opens a new one");
    }
    if (!lost.empty()) {
      const std::string error = "the PublishBatchStream ended before its result (" +
                                StatusText(status) + "): it may or may not be queued";
      for (const Pending& p : lost) Deliver(p, Synthetic(p, v1::PublishResult::UNCONFIRMED, error));
    }
  }

  // Opens a stream and its reader (mu held). The readers of earlier streams
  // (all ended: stream was reset) go to *finished, for the caller to join
  // once it has let go of mu (they may still be running callbacks); not the
  // calling thread itself, which may be one of them.
  std::shared_ptr<Stream> OpenLocked(std::vector<std::thread>* finished)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (auto it = readers.begin(); it != readers.end();) {
      if (it->get_id() != std::this_thread::get_id()) {
        finished->push_back(std::move(*it));
        it = readers.erase(it);
      } else {
        ++it;
      }
    }
    auto s = std::make_shared<Stream>();
    core->Prepare(&s->context);
    s->rw = core->stub->PublishBatchStream(&s->context);
    stream = s;
    readers.emplace_back([this, s] { ReadLoop(s); });
    return s;
  }

  void Publish(v1::PublishRequest request, PublishCallback done) {
    Pending p{request.sequence(), request.message_id(), std::move(done), nullptr};
    std::shared_ptr<Stream> s;
    bool write = false;  // no one was writing: this call writes a batch
    std::shared_ptr<Stream> batch_stream;
    v1::PublishBatch batch;
    std::vector<std::thread> finished;
    {
      MutexLock lock(&mu);
      while (!closed && pending.size() >= std::max<size_t>(1, options.window)) cv.Wait(&mu);
      if (!closed) {
        s = stream ? stream : OpenLocked(&finished);
        const uint64_t sequence = next_sequence++;
        p.stream = s;
        pending.emplace(sequence, p);
        request.set_sequence(sequence);
        outbox.push_back({std::move(request), s});
        write = !writing;
        writing = true;
        if (write) batch = TakeBatchLocked(&batch_stream);
      }
    }
    for (std::thread& t : finished) t.join();
    if (!s) {
      Deliver(p, Synthetic(p, v1::PublishResult::FAILED, "the publisher is closed"));
      return;
    }
    if (!write) return;  // the one writing takes it with the rest
    WriteBatch(batch_stream, batch);
    MutexLock lock(&mu);
    if (outbox.empty()) {
      writing = false;
    } else {  // queued meanwhile: the writer thread goes on
      writer_turn = true;
      writer_cv.Signal();
    }
  }

  // WriterLoop: the writer thread. Takes the outbox when a caller hands it
  // over, and writes until it is empty.
  void WriterLoop() {
    for (;;) {
      std::shared_ptr<Stream> s;
      v1::PublishBatch batch;
      {
        MutexLock lock(&mu);
        while (!writer_turn && !writer_stop) writer_cv.Wait(&mu);
        if (!writer_turn) return;  // stopping, nothing handed over
        if (outbox.empty()) {      // let go only with nothing left behind
          writer_turn = false;
          writing = false;
          continue;
        }
        batch = TakeBatchLocked(&s);
      }
      WriteBatch(s, batch);
    }
  }

  // TakeBatchLocked: the head of the outbox (not empty) as one PublishBatch:
  // messages of one stream (*s), at most max_batch_messages and about
  // max_batch_bytes (a larger message goes alone).
  v1::PublishBatch TakeBatchLocked(std::shared_ptr<Stream>* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::PublishBatch batch;
    *s = outbox.front().stream;
    size_t taken = 0;
    size_t bytes = 0;
    while (taken < outbox.size() && outbox[taken].stream == *s &&
           taken < std::max<size_t>(1, options.max_batch_messages)) {
      const size_t size = outbox[taken].request.ByteSizeLong();
      if (taken > 0 && bytes + size > options.max_batch_bytes) break;
      bytes += size;
      *batch.add_messages() = std::move(outbox[taken].request);
      ++taken;
    }
    outbox.erase(outbox.begin(), outbox.begin() + static_cast<std::ptrdiff_t>(taken));
    return batch;
  }

  void WriteBatch(const std::shared_ptr<Stream>& s, const v1::PublishBatch& batch) {
    bool written = false;
    {
      MutexLock lock(&s->write_mu);
      // A failed write means the stream broke: its reader answers the messages.
      written = !s->writes_closed && s->rw->Write(batch);
    }
    if (written) {
      MutexLock lock(&mu);
      stats.messages += static_cast<uint64_t>(batch.messages_size());
      ++stats.batches;
    }
  }

  bool Flush(std::chrono::steady_clock::time_point deadline) {
    MutexLock lock(&mu);
    while (!pending.empty()) {
      if (!cv.WaitUntil(&mu, deadline) && !pending.empty()) return false;
    }
    return true;
  }

  void Close(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    {
      MutexLock lock(&mu);
      closed = true;
      cv.SignalAll();
    }
    Flush(deadline);
    std::shared_ptr<Stream> s;
    {
      MutexLock lock(&mu);
      s = stream;
    }
    if (s) {
      {
        MutexLock lock(&s->write_mu);
        if (!s->writes_closed) {
          s->writes_closed = true;
          s->rw->WritesDone();
        }
      }
      bool ended = false;
      {
        MutexLock lock(&mu);
        while (stream == s && cv.WaitUntil(&mu, deadline)) {
        }
        ended = stream != s;
      }
      // The sidecar did not end the stream in time: what is still in flight
      // is answered UNCONFIRMED by the reader.
      if (!ended) s->context.TryCancel();
    }
    std::vector<std::thread> joining;
    {
      MutexLock lock(&mu);
      joining.swap(readers);
    }
    for (std::thread& t : joining) {
      if (t.get_id() != std::this_thread::get_id()) {
        t.join();
      } else {  // Close from a callback (documented as not allowed): joined later
        MutexLock lock(&mu);
        readers.push_back(std::move(t));
      }
    }
    // The writer finishes what it was handed (every write after WritesDone
    // is skipped) and ends.
    {
      MutexLock lock(&mu);
      writer_stop = true;
      writer_cv.Signal();
    }
    if (writer.joinable()) writer.join();
  }
};

Publisher::Publisher(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Publisher::~Publisher() { Close(); }

void Publisher::Publish(v1::PublishRequest request, PublishCallback done) {
  impl_->Publish(std::move(request), std::move(done));
}

std::future<v1::PublishResult> Publisher::Publish(v1::PublishRequest request) {
  auto promise = std::make_shared<std::promise<v1::PublishResult>>();
  std::future<v1::PublishResult> future = promise->get_future();
  impl_->Publish(std::move(request),
                 [promise](const v1::PublishResult& r) { promise->set_value(r); });
  return future;
}

bool Publisher::Flush(std::chrono::milliseconds timeout) {
  return impl_->Flush(std::chrono::steady_clock::now() + timeout);
}

void Publisher::Close(std::chrono::milliseconds timeout) { impl_->Close(timeout); }

size_t Publisher::in_flight() const {
  MutexLock lock(&impl_->mu);
  return impl_->pending.size();
}

Publisher::Stats Publisher::stats() const {
  MutexLock lock(&impl_->mu);
  return impl_->stats;
}

std::unique_ptr<Publisher> Client::NewPublisher(PublisherOptions options) {
  auto impl = std::make_shared<Publisher::Impl>();
  impl->core = core_;
  impl->options = options;
  impl->writer = std::thread([p = impl.get()] { p->WriterLoop(); });
  return std::unique_ptr<Publisher>(new Publisher(std::move(impl)));
}

}  // namespace mqsidecar
