// LogLimiter: at most `burst` log lines per key in any `window`, so a client
// that sends a flood of refused requests cannot flood the log (and the disk)
// with one line each. The first line let through after a quiet spell says
// how many were held back, so nothing is hidden, only counted.
//
// Keys are few and bounded by the caller (here: the configured clients, plus
// "" for callers no client matched). Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "util/mutex.h"

namespace mqs::util {

class LogLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  LogLimiter(int burst, Clock::duration window) : burst_(burst), window_(window) {}

  // Admit: whether a line for `key` may be logged now; if so, how many lines
  // for `key` were refused since the last one admitted (0 usually).
  std::optional<uint64_t> Admit(std::string_view key, Clock::time_point now = Clock::now());

 private:
  struct Window {
    Clock::time_point start;
    int admitted = 0;
    uint64_t suppressed = 0;
  };

  const int burst_;
  const Clock::duration window_;
  Mutex mu_;
  std::map<std::string, Window, std::less<>> windows_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mqs::util
