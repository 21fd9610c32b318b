#include "control/task_waiters.h"

#include <utility>
#include <vector>

#include "util/strings.h"

namespace mqs::control {

bool TaskWaiters::Add(const std::string& correlation_id, Clock::time_point deadline, Done done) {
  util::MutexLock lock(&mu_);
  return waiters_.emplace(correlation_id, Waiter{deadline, std::move(done)}).second;
}

bool TaskWaiters::Complete(mqsidecar::v1::TaskResult result) {
  Done done;
  {
    util::MutexLock lock(&mu_);
    auto it = waiters_.find(result.correlation_id());
    if (it == waiters_.end()) return false;
    done = std::move(it->second.done);
    waiters_.erase(it);
  }
  done(std::move(result));
  return true;
}

void TaskWaiters::Cancel(const std::string& correlation_id, const absl::Status& why) {
  Done done;
  {
    util::MutexLock lock(&mu_);
    auto it = waiters_.find(correlation_id);
    if (it == waiters_.end()) return;
    done = std::move(it->second.done);
    waiters_.erase(it);
  }
  done(why);
}

std::optional<TaskWaiters::Clock::time_point> TaskWaiters::Expire(Clock::time_point now) {
  std::vector<std::pair<std::string, Done>> expired;
  std::optional<Clock::time_point> next;
  {
    util::MutexLock lock(&mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.deadline <= now) {
        expired.emplace_back(it->first, std::move(it->second.done));
        it = waiters_.erase(it);
        continue;
      }
      if (!next || it->second.deadline < *next) next = it->second.deadline;
      ++it;
    }
  }
  for (auto& [id, done] : expired) {
    done(absl::DeadlineExceededError(util::StrCat(
        "the task was confirmed, but no result with correlation id ", id, " came back in time")));
  }
  return next;
}

void TaskWaiters::CancelAll(const absl::Status& why) {
  std::map<std::string, Waiter> all;
  {
    util::MutexLock lock(&mu_);
    all.swap(waiters_);
  }
  for (auto& [id, waiter] : all) waiter.done(why);
}

size_t TaskWaiters::size() const {
  util::MutexLock lock(&mu_);
  return waiters_.size();
}

}  // namespace mqs::control
