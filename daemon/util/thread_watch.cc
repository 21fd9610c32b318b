#include "util/thread_watch.h"

#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "util/strings.h"

namespace mqs::util {

ThreadWatch::Clock::duration ThreadWatch::BusyFor(Clock::time_point now) const {
  const int64_t since = busy_since_ns_.load(std::memory_order_relaxed);
  if (since == 0) return Clock::duration::zero();
  const Clock::duration busy = now.time_since_epoch() - Clock::duration(since);
  return busy > Clock::duration::zero() ? busy : Clock::duration::zero();
}

std::vector<std::string> Wedged(const std::vector<const ThreadWatch*>& watches,
                                ThreadWatch::Clock::time_point now,
                                ThreadWatch::Clock::duration limit) {
  std::vector<std::string> out;
  for (const ThreadWatch* w : watches) {
    const auto busy = w->BusyFor(now);
    if (busy > limit) {
      out.push_back(StrCat(w->name(), " (busy ",
                           std::chrono::duration_cast<std::chrono::seconds>(busy).count(), " s)"));
    }
  }
  return out;
}

namespace {

struct WedgeSpec {
  std::string thread;
  std::string file;
};

WedgeSpec ReadWedgeSpec() {
  // Read once, before any test could want it; nothing in the daemon calls setenv.
  const char* env = std::getenv("MQ_SIDECAR_TEST_WEDGE");  // NOLINT(concurrency-mt-unsafe)
  if (env == nullptr) return {};
  const std::string spec = env;
  const size_t colon = spec.find(':');
  if (colon == std::string::npos) return {};
  return {spec.substr(0, colon), spec.substr(colon + 1)};
}

}  // namespace

void TestWedge(std::string_view thread) {
  static const WedgeSpec spec = ReadWedgeSpec();
  if (spec.thread.empty() || spec.thread != thread) return;
  while (::access(spec.file.c_str(), F_OK) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace mqs::util
