// ThreadWatch: whether a worker thread is making progress, for systemd's
// watchdog. A worker marks itself Idle() before it blocks waiting for work
// by design (poll, a condition variable, a completion queue) and Busy() when
// it wakes; a thread Busy() for longer than the watchdog interval is wedged
// (a deadlock, an endless loop, a call that never returns), and the main
// thread stops sending WATCHDOG=1 so that systemd restarts the daemon.
// Lock-free: Busy/Idle are one clock read and one relaxed store each.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mqs::util {

class ThreadWatch {
 public:
  using Clock = std::chrono::steady_clock;
  explicit ThreadWatch(std::string name) : name_(std::move(name)) {}

  void Busy() { Busy(Clock::now()); }
  void Busy(Clock::time_point now) {
    busy_since_ns_.store(now.time_since_epoch().count(), std::memory_order_relaxed);
  }
  void Idle() { busy_since_ns_.store(0, std::memory_order_relaxed); }

  // How long the thread has been busy at `now` (0: idle).
  Clock::duration BusyFor(Clock::time_point now) const;
  const std::string& name() const { return name_; }

 private:
  const std::string name_;
  // Clock ticks since the clock's epoch when the thread last woke; 0: idle.
  // Starts busy: a thread that never reaches its first wait is wedged too.
  std::atomic<int64_t> busy_since_ns_{Clock::now().time_since_epoch().count()};
};

// Wedged: "name (busy N s)" for each watch busy for longer than `limit`.
std::vector<std::string> Wedged(const std::vector<const ThreadWatch*>& watches,
                                ThreadWatch::Clock::time_point now,
                                ThreadWatch::Clock::duration limit);

// TestWedge: a test hook (docs/testing.md). With MQ_SIDECAR_TEST_WEDGE set
// to "<thread>:<file>", the thread named <thread> that calls this stays busy
// (sleeping) while <file> exists, as a wedged thread would. Without the
// variable: returns at once.
void TestWedge(std::string_view thread);

}  // namespace mqs::util
