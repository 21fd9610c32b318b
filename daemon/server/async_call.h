// Async calls: the two streaming RPCs (PublishStream, Subscribe) run on
// gRPC's completion-queue API, served by one thread of ours (GrpcServer's
// "mqs-grpc"), rather than on the callback API.
//
// Why: gRPC 1.51 on Linux serves callback reactors from two "nexting"
// threads that take turns in epoll and hand completions to each other. At a
// low message rate that cost ~7 thread switches per message read and
// written, each 14-18 µs of CPU on a VM (docs/benchmarks.md). One thread of
// our own that polls the queue and runs each completion inline needs one.
//
// Operations may be started from any thread (the publisher and consumer
// threads start writes directly, as a callback reactor would), at most one
// read and one write (or the finish) at a time per call.
#pragma once

#include <grpcpp/completion_queue.h>
#include <grpcpp/support/async_stream.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace mqs::server {

// Completion: what every tag on the server's completion queue points to.
class Completion {
 public:
  virtual void Complete(bool ok) = 0;

 protected:
  ~Completion() = default;
};

// Op binds a tag to one member function of a call object.
template <class Call, void (Call::*Fn)(bool)>
class Op final : public Completion {
 public:
  explicit Op(Call* call) : call_(call) {}
  void Complete(bool ok) override { (call_->*Fn)(ok); }
  // tag: the pointer to hand gRPC; the completion loop casts it back to a
  // Completion*, so it must be one.
  void* tag() { return static_cast<Completion*>(this); }

 private:
  Call* call_;
};

// WriteFront writes outbox.front() on `stream`. While more messages wait
// behind it, gRPC may hold this one back (buffer hint) and coalesce it with
// the next writes into fewer frames and syscalls; the last write of a burst
// flushes. The caller keeps front() alive until the write completes.
template <class Stream, class Outbox>
void WriteFront(Stream& stream, const Outbox& outbox, void* tag) {
  grpc::WriteOptions options;
  if (outbox.size() > 1) options.set_buffer_hint();
  stream.Write(outbox.front(), options, tag);
}

// CallCount: the calls a service has open. Shutdown waits for zero: gRPC's
// own Server::Shutdown waits out its whole deadline while any client is
// merely connected, and the completion queue may shut down only once no call
// can start an operation.
class CallCount {
 public:
  void Started() {
    std::lock_guard<std::mutex> lock(mu_);
    ++open_;
  }
  void Ended() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--open_ == 0) zero_.notify_all();
  }
  // WaitZero returns true once no call is open, false at `deadline`.
  bool WaitZero(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return zero_.wait_until(lock, deadline, [this] { return open_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable zero_;
  int open_ = 0;  // guarded by mu_
};

// AsyncService: what GrpcServer needs of a service with async methods.
class AsyncService {
 public:
  virtual ~AsyncService() = default;
  // StartAccepting posts the requests for new calls on `cq`, once, right
  // after the server has started.
  virtual void StartAccepting(grpc::ServerCompletionQueue* cq) = 0;
  // StopAccepting: no new request for a call is posted after it returns
  // (the completion queue is about to shut down).
  virtual void StopAccepting() = 0;
  // WaitIdle returns true once no call is open, false at `deadline`. The
  // completion queue is shut down only after that: a call may still start
  // operations (a write from the consumer thread) until it has ended.
  virtual bool WaitIdle(std::chrono::steady_clock::time_point deadline) = 0;
};

}  // namespace mqs::server
