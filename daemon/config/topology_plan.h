// TopologyPlan: the exchanges, queues and bindings a config implies.
//
// Pure logic, so that name resolution (queue defaults, shared exchanges,
// alternate exchanges) is unit-tested without a broker. amqp/topology.cc
// declares a plan; GetTopology reports it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
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
  // Dead letters (consumers with dead_letter): a message nacked without
  // requeue goes to this exchange (at-least-once on quorum queues).
  std::string dead_letter_exchange;  // "" when none
  // x-dead-letter-routing-key: the queue's own name, so that a dead-letter
  // exchange shared by several queues (one business exchange, several
  // consumer queues) routes each dead letter to its own queue's `.dead` only.
  // The original routing key stays in the x-death header (replay uses it).
  std::string dead_letter_routing_key;
  // Poison messages (max_deliveries > 0): x-delivery-limit, the returns
  // after which a message is dead-lettered.
  std::optional<uint32_t> delivery_limit;
  // x-single-active-consumer (consumers with single_active).
  bool single_active = false;
  // This sidecar's own queue (fleet view, task replies): classic, exclusive
  // to the consuming connection, deleted with it, capped in length. Only the
  // consumer connection declares it (an exclusive queue belongs to the
  // connection that declared it) and re-declares it after a reconnect.
  bool exclusive = false;
  // Retry queue (RetryQueueSpec): x-message-ttl, and on expiry the message
  // is dead-lettered through the default exchange with routing key
  // `retry_for` (x-dead-letter-exchange "", x-dead-letter-routing-key), so
  // it returns to that consumer queue and to no other.
  std::optional<uint64_t> message_ttl_ms;
  std::string retry_for;  // non-empty: a retry queue of this consumer queue
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
// to its exchange once per binding key. A consumer with dead_letter (the
// default; not the implicit unroutable ones) also gets a topic exchange
// DeadLetterExchange(c) and a queue DeadLetterQueue(c) (of the same type,
// without dead letters of its own) bound to it with the queue's name, and its
// queue dead-letters there with that name as routing key; with max_deliveries > 0 after
// max_deliveries deliveries (x-delivery-limit = max_deliveries - 1, since the broker counts
// returns, not deliveries). single_active sets x-single-active-consumer. Conflicts (one exchange
// with two different alternate exchanges, one queue with two types) are config errors detected by
// Resolve(), not here.
//
// The control plane adds this sidecar's exclusive queues: with ping.fleet,
// FleetQueue(config) bound to the ping exchange with "#"; with tasks.results,
// ReplyQueue(config) bound to the results exchange with "<instance>.#" (task
// correlation ids start with the instance id, and results are published with
// the correlation id as routing key).
TopologyPlan PlanTopology(const Config& config);

// WithoutExclusive: the plan minus the exclusive queues and their bindings,
// for the publisher's connection.
TopologyPlan WithoutExclusive(const TopologyPlan& plan);

// A consumer's dead-letter names: "<exchange>.dlx" and "<queue>.dead" (after
// defaults: a hand-built consumer without exchange or queue gets them from
// its name). Empty when the consumer has no dead letters (dead_letter false,
// or an unroutable business).
std::string DeadLetterExchange(const Consumer& consumer);
std::string DeadLetterQueue(const Consumer& consumer);
// Retry queues: "<queue>.retry.<delay>", the delay in its largest whole unit
// ("500ms", "10s", "1m", "2h"). The plan holds one per configured delay; a
// nack's own retry_after_ms may name another, declared when first used.
std::string RetryQueue(const Consumer& consumer, std::chrono::milliseconds delay);
// RetryQueueSpec: that queue, of the consumer queue's type (quorum:
// at-least-once dead-lettering), with x-message-ttl = delay.
QueueSpec RetryQueueSpec(const Consumer& consumer, std::chrono::milliseconds delay);

// The control plane's names (empty when the feature is off).
std::string FleetQueue(const Config& config);       // "<ping exchange>.fleet.<instance>"
std::string ReplyQueue(const Config& config);       // "<results exchange>.reply.<instance>"
std::string ReplyBindingKey(const Config& config);  // "<instance>.#"
// The exchange a ping is published to, and results ("" when off).
std::string PingExchange(const Config& config);
std::string ResultsExchange(const Config& config);

// Upper bound on the messages an exclusive queue holds (older ones are
// dropped): a stalled fleet view or waiter must not grow the broker.
inline constexpr int64_t kExclusiveQueueMaxLength = 10000;

}  // namespace mqs::config
