// Topology: declaring the exchanges, queues and bindings of a TopologyPlan.
//
// Declaration is idempotent and never deletes anything. When an existing
// object differs (the broker answers PRECONDITION_FAILED), the error names the
// object, what the broker reported, and what we asked for: an operator must
// decide, so the caller treats it as fatal.
#pragma once

#include <amqp.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "amqp/connection.h"
#include "config/topology_plan.h"

namespace mqs::amqp {

// DeclareTopology declares `plan` on `channel`, which must be open. On a
// refused declaration the channel is closed (close-ok sent) and the status is
// FailedPrecondition (conflict), NotFound or PermissionDenied.
absl::Status DeclareTopology(Connection& conn, amqp_channel_t channel,
                             const config::TopologyPlan& plan);

// IsTopologyConflict: `s` came from an existing object with other arguments.
bool IsTopologyConflict(const absl::Status& s);

struct QueueStats {
  uint64_t messages = 0;
  uint32_t consumers = 0;
};
// QueryQueue asks the broker for a queue's counts (passive declare).
absl::StatusOr<QueueStats> QueryQueue(Connection& conn, amqp_channel_t channel,
                                      const std::string& queue);

}  // namespace mqs::amqp
