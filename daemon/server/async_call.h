// Async calls: every method runs on gRPC's completion-queue API, served by
// one thread of ours (GrpcServer's "mqs-grpc"), rather than on the callback
// API.
//
// Why: gRPC 1.51 on Linux serves callback reactors from two "nexting"
// threads that take turns in epoll and hand completions to each other. At a
// low message rate that cost ~7 thread switches per message read and
// written, each 14-18 µs of CPU on a VM (docs/benchmarks.md). One thread of
// our own that polls the queue and runs each completion inline needs one.
//
// Operations may be started from any thread (the publisher and consumer
// threads start writes directly, as a callback reactor would), at most one
// read and one write (or the finish) at a time per call. Every call type
// derives from CallBase, which holds the lifecycle they share: the call's
// mutex, the operations pending, the done and finished flags, the callbacks
// an I/O thread still owes it, and the one place it deletes itself.
#pragma once

#include <grpcpp/completion_queue.h>
#include <grpcpp/support/async_stream.h>

#include <chrono>
#include <shared_mutex>

#include "absl/base/thread_annotations.h"
#include "util/mutex.h"

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

// OpGate: whether operations may still be started on the server's
// completion queue. gRPC aborts the process when an operation is started on
// a queue that has been shut down, and an I/O thread may answer a call at
// any time (a publish confirmed after shutdown gave up waiting). Every start
// holds the gate (shared, so the three threads that start operations do not
// wait on one another); GrpcServer::Shutdown closes it (exclusive: it waits
// for starts in progress) before it shuts the queue down, so a start either
// happened before the shutdown or does not happen.
class ABSL_LOCKABLE OpGate {
 public:
  // Pass: holds the gate for the start of one operation.
  class ABSL_SCOPED_LOCKABLE Pass {
   public:
    explicit Pass(OpGate* gate) ABSL_SHARED_LOCK_FUNCTION(gate) : gate_(gate) {
      gate_->LockShared();
    }
    ~Pass() ABSL_UNLOCK_FUNCTION() { gate_->UnlockShared(); }
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;

   private:
    OpGate* const gate_;
  };

  bool open() const ABSL_SHARED_LOCKS_REQUIRED(this) { return open_; }
  // Close: no operation starts after it returns.
  void Close() ABSL_LOCKS_EXCLUDED(this) {
    Lock();
    open_ = false;
    Unlock();
  }

 private:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void LockShared() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void UnlockShared() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }

  std::shared_mutex mu_;
  bool open_ ABSL_GUARDED_BY(this) = true;
};

// CallCount: the calls a service has open. Shutdown waits for zero: gRPC's
// own Server::Shutdown waits out its whole deadline while any client is
// merely connected, and the completion queue may shut down only once no call
// can start an operation.
class CallCount {
 public:
  void Started() {
    util::MutexLock lock(&mu_);
    ++open_;
  }
  void Ended() {
    util::MutexLock lock(&mu_);
    if (--open_ == 0) zero_.SignalAll();
  }
  // WaitZero returns true once no call is open, false at `deadline`.
  bool WaitZero(std::chrono::steady_clock::time_point deadline) {
    util::MutexLock lock(&mu_);
    while (open_ != 0) {
      if (!zero_.WaitUntil(&mu_, deadline)) return open_ == 0;
    }
    return true;
  }

 private:
  util::Mutex mu_;
  util::CondVar zero_;
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

// CallBase: the lifecycle every call shares (unary, streaming, health).
//
//  - A call is created with a request for the next caller posted. When that
//    request completes unmatched (the server is shutting down), the call is
//    deleted by DeleteUnaccepted; no other tag of it follows.
//  - Once accepted (Accepted()), it counts as open until it deletes itself.
//  - Every gRPC operation is started by StartOpLocked (or StartFinishLocked),
//    under mu_; each completion handler retires its operation (OpDoneLocked)
//    under mu_. A call that is done, or a server whose queue is closing,
//    starts nothing: StartOpLocked refuses, and the caller treats the refusal
//    as a failed operation.
//  - The done tag (AsyncNotifyWhenDone, posted by every call) says gRPC is
//    done with the call; pending operations still complete, failing.
//  - An I/O thread that will call back (a publish result, a consumer's
//    OnClosed, queue counts) is "owed" a callback (OweLocked/PaidLocked).
//  - The call deletes itself once done, no operation pending and nothing
//    owed: the CallBase::Lock that ends the critical section finding that
//    deletes it, after unlocking. Nothing can reach it any more then, so
//    this happens once.
//
// Handlers end in one such Lock: until then the operation they handle is
// counted, so another thread cannot delete the call under their feet.
class CallBase {
 public:
  CallBase(const CallBase&) = delete;
  CallBase& operator=(const CallBase&) = delete;

 protected:
  // Lock: holds the call's mutex; on leaving the scope, deletes the call if
  // it has become deletable. Nothing may touch the call after the scope.
  class ABSL_SCOPED_LOCKABLE Lock {
   public:
    explicit Lock(CallBase* call) ABSL_EXCLUSIVE_LOCK_FUNCTION(call->mu_) : call_(call) {
      call_->mu_.Lock();
    }
    ~Lock() ABSL_UNLOCK_FUNCTION() {
      const bool release = call_->DeletableLocked();
      call_->mu_.Unlock();
      if (release) call_->Release();
    }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    CallBase* const call_;
  };

  CallBase(OpGate& gate, CallCount& calls) : gate_(gate), calls_(calls) {}
  virtual ~CallBase() = default;

  // Accepted: a client called; the call counts as open until deleted.
  void Accepted() { calls_.Started(); }
  // DeleteUnaccepted: the request for a call ended unmatched (shutdown); no
  // operation was started and no done tag follows.
  void DeleteUnaccepted() { delete this; }

  // StartOpLocked runs `start`, which must start exactly one gRPC operation
  // whose completion handler calls OpDoneLocked. Returns false, without
  // running it, when the call is done or the completion queue is closing.
  template <class F>
  bool StartOpLocked(F&& start) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (done_) return false;
    OpGate::Pass pass(&gate_);
    if (!gate_.open()) return false;
    ++ops_;
    start();
    return true;
  }
  // StartFinishLocked: StartOpLocked for the finish, at most once.
  template <class F>
  bool StartFinishLocked(F&& start) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || !StartOpLocked(std::forward<F>(start))) return false;
    finished_ = true;
    return true;
  }
  void OpDoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { --ops_; }
  // SetDoneLocked: the done tag arrived.
  void SetDoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { done_ = true; }
  bool done() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; }
  bool finished() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; }
  // OweLocked / PaidLocked: an I/O thread will call back / has called back.
  void OweLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++owed_; }
  void PaidLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { --owed_; }

  util::Mutex mu_;

 private:
  bool DeletableLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return done_ && ops_ == 0 && owed_ == 0;
  }
  void Release() {
    CallCount& calls = calls_;
    delete this;
    calls.Ended();  // last: shutdown may proceed once this reaches zero
  }

  OpGate& gate_;
  CallCount& calls_;
  int ops_ ABSL_GUARDED_BY(mu_) = 0;   // operations started, not yet completed
  int owed_ ABSL_GUARDED_BY(mu_) = 0;  // callbacks an I/O thread still owes
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // the finish was started
};

// AsyncService: what GrpcServer needs of a service with async methods.
class AsyncService {
 public:
  virtual ~AsyncService() = default;
  // StartAccepting posts the requests for new calls on `cq`, once, right
  // after the server has started. Every operation of every call holds
  // `gate` while it starts.
  virtual void StartAccepting(grpc::ServerCompletionQueue* cq, OpGate* gate) = 0;
  // StopAccepting: no new request for a call is posted after it returns
  // (the completion queue is about to shut down).
  virtual void StopAccepting() = 0;
  // WaitIdle returns true once no call is open, false at `deadline`. The
  // completion queue is shut down only after that, or once the gate is
  // closed: a call may still start operations (a write from the consumer
  // thread) until it has ended.
  virtual bool WaitIdle(std::chrono::steady_clock::time_point deadline) = 0;
};

}  // namespace mqs::server
