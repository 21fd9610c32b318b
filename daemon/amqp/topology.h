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

// The same declarations one by one, without waiting, for a loop that must
// keep serving other channels meanwhile (the consumer re-declaring after a
// queue was deleted). Step i of TopologyStepCount(plan) is sent on `channel`;
// `reply` gets the method id the broker answers with when it accepts it.
// false: the connection failed.
size_t TopologyStepCount(const config::TopologyPlan& plan);
bool SendTopologyStep(Connection& conn, amqp_channel_t channel, const config::TopologyPlan& plan,
                      size_t step, amqp_method_number_t* reply);
// Why step `step` was refused, from the broker's channel.close; a conflict
// (406) gives the same error DeclareTopology would.
absl::Status TopologyStepError(const config::TopologyPlan& plan, size_t step,
                               const absl::Status& refused);

// IsTopologyConflict: `s` came from an existing object with other arguments.
bool IsTopologyConflict(const absl::Status& s);

struct QueueStats {
  uint64_t messages = 0;
  uint32_t consumers = 0;
};
// QueryQueue asks the broker for a queue's counts (passive declare).
absl::StatusOr<QueueStats> QueryQueue(Connection& conn, amqp_channel_t channel,
                                      const std::string& queue);
// SendQueryQueue sends the passive declare without waiting; the broker
// answers queue.declare-ok (the counts) or closes the channel (404 when the
// queue does not exist). false: the connection failed.
bool SendQueryQueue(Connection& conn, amqp_channel_t channel, const std::string& queue);

}  // namespace mqs::amqp
