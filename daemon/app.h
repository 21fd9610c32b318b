// App: wires the daemon together and runs it until a signal or a fatal error.
//
//   config -> TopologyPlan -> Publisher thread + Consumer thread -> gRPC server
//
// main.cc parses flags and calls App::Run; tests link the same library.
#pragma once

#include <chrono>
#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config/config.h"

namespace mqs {

struct RunOptions {
  // The least time the publisher gets to collect outstanding confirms at
  // shutdown (shutdown.drain, if longer, wins).
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(5)};
  // Reads the config again for SIGHUP (config/reload.h); unset: SIGHUP only
  // logs that there is nothing to reload from.
  std::function<absl::StatusOr<config::Config>()> reload;
  // --log-level was given: a reload keeps the level the flag set.
  bool log_level_pinned = false;
};

// Run serves until SIGTERM/SIGINT (OK) or a fatal error, such as a topology
// conflict on the broker or an address that cannot be bound (the error);
// SIGHUP reloads (config/reload.h). SIGINT, SIGTERM and SIGHUP must be
// blocked in every thread before Run is called, so that only Run's sigwait
// receives them.
absl::Status Run(const config::Config& config, const RunOptions& options);

// BlockShutdownSignals blocks SIGINT/SIGTERM/SIGHUP for the calling thread
// and the threads it starts later, and ignores SIGPIPE.
void BlockShutdownSignals();

}  // namespace mqs
