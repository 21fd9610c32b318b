// TaskWaiters: SendTask calls waiting for their results, by correlation id.
//
// A waiter is added before its task is published (a result can overtake the
// publish confirm), completed by the result that arrives on the reply queue,
// cancelled when the publish fails, or expired at its deadline. Each waiter's
// `done` runs exactly once, outside the lock, on the thread that settled it.
// Thread-safe: gRPC's thread adds, the consumer thread completes, the
// control plane's timer expires.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/mutex.h"

namespace mqs::control {

class TaskWaiters {
 public:
  using Clock = std::chrono::steady_clock;
  using Done = std::function<void(absl::StatusOr<mqsidecar::v1::TaskResult>)>;

  // Add: false (and `done` not kept) when `correlation_id` already waits.
  bool Add(const std::string& correlation_id, Clock::time_point deadline, Done done);
  // Complete: the result arrived; false when nobody waits for it (a late or
  // foreign result; the durable results queue has it anyway).
  bool Complete(mqsidecar::v1::TaskResult result);
  // Cancel: the task was not sent (or not confirmed); answers `why`.
  void Cancel(const std::string& correlation_id, const absl::Status& why);
  // Expire answers DEADLINE_EXCEEDED to every waiter past its deadline, and
  // returns the next deadline, if any.
  std::optional<Clock::time_point> Expire(Clock::time_point now);
  // CancelAll: shutdown.
  void CancelAll(const absl::Status& why);
  size_t size() const;

 private:
  struct Waiter {
    Clock::time_point deadline;
    Done done;
  };
  mutable util::Mutex mu_;
  std::map<std::string, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mqs::control
