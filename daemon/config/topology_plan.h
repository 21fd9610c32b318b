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
  // Declare arguments besides x-queue-type, as (key, value) strings for
  // logging; amqp/topology.cc builds the AMQP table from `type`.
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
// to its exchange once per binding key. Conflicts (one exchange with two
// different alternate exchanges, one queue with two types) are config errors
// detected by Resolve(), not here.
TopologyPlan PlanTopology(const Config& config);

}  // namespace mqs::config
