// WakeupQueue: a multi-producer queue whose consumer sleeps in poll().
//
// gRPC reactors must never block and rabbitmq-c is owned by one thread, so
// work crosses threads through this queue: producers push under a short lock
// and, on the empty -> non-empty edge only, write the eventfd that the I/O
// thread polls beside its AMQP socket. The consumer takes everything at once.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <utility>
#include <vector>

#include "util/mutex.h"

namespace mqs::util {

template <typename T>
class WakeupQueue {
 public:
  WakeupQueue() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~WakeupQueue() {
    if (fd_ >= 0) ::close(fd_);
  }
  WakeupQueue(const WakeupQueue&) = delete;
  WakeupQueue& operator=(const WakeupQueue&) = delete;

  // The descriptor to poll for POLLIN; it stays readable until Drain().
  int fd() const { return fd_; }
  bool ok() const { return fd_ >= 0; }

  void Push(T item) {
    bool was_empty;
    {
      MutexLock lock(&mu_);
      was_empty = items_.empty();
      items_.push_back(std::move(item));
    }
    if (was_empty) Notify();
  }

  // Wakes the consumer without an item (e.g. to stop it).
  void Notify() {
    const uint64_t one = 1;
    // A full counter (EAGAIN) still leaves the fd readable: nothing is lost.
    while (::write(fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  // Moves every queued item into `out` (which it clears first) and resets the
  // eventfd. `out` keeps its capacity across calls, so a steady flow of
  // messages does not allocate here.
  void Drain(std::vector<T>& out) {
    out.clear();
    uint64_t count;
    while (::read(fd_, &count, sizeof count) < 0 && errno == EINTR) {
    }
    MutexLock lock(&mu_);
    out.swap(items_);
  }

 private:
  const int fd_;
  Mutex mu_;
  std::vector<T> items_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mqs::util
