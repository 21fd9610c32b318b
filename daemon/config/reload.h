// Reload: what SIGHUP (systemctl reload) does with the config read again from
// disk. Live streams and in-flight publishes are never touched: what can
// change under them is applied (the log level; a consumer business's
// prefetch and retry delays, for the streams opened after it); anything else
// that differs (broker, listeners, businesses, identity, ...) is reported and
// kept until a restart; a file that no longer loads is rejected with its
// errors and the running config stays. Pure logic: no signal, no file, no
// socket.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "config/config.h"
#include "util/mutex.h"

namespace mqs::config {

// ReloadReport: the outcome of one reload, per key.
struct ReloadReport {
  enum class Result {
    kUnchanged,  // the file says what runs
    kApplied,    // every difference was applied
    kKept,       // some differences need a restart (`kept`); the rest applied
    kRejected,   // the file does not load (`error`); nothing changed
  };
  Result result = Result::kUnchanged;
  std::vector<std::string> applied;  // "log.level: info -> debug"
  std::vector<std::string> kept;     // "broker (restart to apply)", "businesses: + orders ..."
  std::string error;                 // kRejected: the loader's errors, one per line
  std::string level;                 // the log level to run with from now on
  // Consumer businesses whose default prefetch (consumers.<business>.prefetch)
  // changed: the prefetch for Subscribe streams opened from now on.
  std::map<std::string, uint32_t> prefetch;
  // Consumer businesses whose retry (consumers.<business>.retry: delays,
  // max_attempts) changed, with retry on before and after: the retry of the
  // nacks of streams opened from now on. Turning retry on or off changes
  // the queue's dead-letter topology: kept until a restart.
  std::map<std::string, Retry> retry;

  // Summary: one log line.
  std::string Summary() const;
};

std::string_view ReloadResultName(ReloadReport::Result result);

// PlanReload compares the running config with the one loaded again.
// `level_pinned`: --log-level was given, and a flag wins over the file.
ReloadReport PlanReload(const Config& running, const absl::StatusOr<Config>& loaded,
                        bool level_pinned);

// ReloadLog: the last reload, for GetTopology, and what the reloads so far
// changed live that others read: the default prefetch and the retry per
// consumer business. Written by the reloading thread, read by gRPC threads.
class ReloadLog {
 public:
  struct Entry {
    ReloadReport report;
    std::chrono::system_clock::time_point at;
  };
  // Record keeps `report` as the last reload and takes its prefetch changes.
  void Record(ReloadReport report, std::chrono::system_clock::time_point at);
  std::optional<Entry> Last() const;
  // Prefetch: the default prefetch of a new Subscribe stream on `consumer`:
  // the last one a reload applied, else the configured one.
  uint32_t Prefetch(const Consumer& consumer) const;
  // ForNewStream: the business a Subscribe stream opened now runs with:
  // `configured` itself, or, once a reload changed its retry, a copy with
  // that retry. The stream keeps the pointer for its life (the consumer
  // thread decides its retries by it): every copy lives as long as the log.
  const Consumer* ForNewStream(const Consumer& configured) const;

 private:
  mutable util::Mutex mu_;
  std::optional<Entry> last_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint32_t> prefetch_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Retry> retry_ ABSL_GUARDED_BY(mu_);
  // The copy ForNewStream hands out per business (absent: none made since the
  // retry last changed), and every copy made, which streams may still hold.
  mutable std::map<std::string, const Consumer*> current_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<std::unique_ptr<const Consumer>> copies_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mqs::config
