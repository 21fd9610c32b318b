#include "util/log_limiter.h"

namespace mqs::util {

std::optional<uint64_t> LogLimiter::Admit(std::string_view key, Clock::time_point now) {
  MutexLock lock(&mu_);
  auto it = windows_.find(key);
  if (it == windows_.end()) it = windows_.emplace(std::string(key), Window{now}).first;
  Window& w = it->second;
  if (now - w.start >= window_) {
    w.start = now;
    w.admitted = 0;
  }
  if (w.admitted >= burst_) {
    ++w.suppressed;
    return std::nullopt;
  }
  ++w.admitted;
  const uint64_t held_back = w.suppressed;
  w.suppressed = 0;
  return held_back;
}

}  // namespace mqs::util
