// TopologyPlan: the exchanges, queues and bindings a config implies.
//
// Pure logic, so that name resolution (queue defaults, shared exchanges,
// alternate exchanges) is unit-tested without a broker. amqp/topology.cc
// declares a plan; GetTopology reports it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "config/config.h"

namespace mqs::config {

struct ExchangeSpec {
  std::string name;
  std::string type;                // "topic" for businesses, "fanout" for alternate exchanges
  std::string alternate_exchange;  // "" when none
};

struct QueueSpec {
  std::string name;
  QueueType type = QueueType::kQuorum;
  // Poison-message handling (consumers with max_deliveries > 0): dead-letter
  // to this exchange, at-least-once, after `delivery_limit` returns.
  std::string dead_letter_exchange;  // "" when none
  uint32_t delivery_limit = 0;       // x-delivery-limit; 0: none
};

struct BindingSpec {
  std::string exchange;
  std::string queue;
  std::string binding_key;
};

struct TopologyPlan {
  std::vector<ExchangeSpec> exchanges;  // deduplicated by name, sorted by name
  std::vector<QueueSpec> queues;        // deduplicated by name, sorted by name
  std::vector<BindingSpec> bindings;    // deduplicated, sorted
};

// PlanTopology derives the plan. Every producer and consumer exchange is a
// durable topic exchange; a producer with a non-empty `handle` gets
// alternate_exchange=<handle>, plus a fanout exchange <handle> and a classic
// durable queue <handle>.queue bound with "#". Every consumer queue is bound
// to its exchange once per binding key. A consumer with max_deliveries > 0
// also gets a topic exchange <exchange>.dlx and a queue <queue>.dead (of the
// same type) bound to it with "#", and its queue dead-letters there after
// max_deliveries deliveries (x-delivery-limit = max_deliveries - 1, since the
// broker counts returns, not deliveries). Conflicts (one exchange with two
// different alternate exchanges, one queue with two types) are config errors
// detected by Resolve(), not here.
TopologyPlan PlanTopology(const Config& config);

}  // namespace mqs::config
