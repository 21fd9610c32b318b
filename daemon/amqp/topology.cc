#include "amqp/topology.h"

#include "util/strings.h"
#include <vector>

#include "spdlog/spdlog.h"

namespace mqs::amqp {
namespace {

constexpr char kConflictPayload[] = "mq-sidecar/topology-conflict";

absl::Status Conflict(const absl::Status& s, std::string_view object, std::string_view ours) {
  if (s.code() != absl::StatusCode::kFailedPrecondition) return s;
  absl::Status out = absl::FailedPreconditionError(util::StrCat(
      object, " exists on the broker with other arguments; the broker said: ", s.message(),
      "; the config declares: ", ours,
      ". mq-sidecar never deletes objects: change the config, or delete or migrate the "
      "object on the broker"));
  out.SetPayload(kConflictPayload, absl::Cord("1"));
  return out;
}

}  // namespace

bool IsTopologyConflict(const absl::Status& s) {
  return s.GetPayload(kConflictPayload).has_value();
}

absl::Status DeclareTopology(Connection& conn, amqp_channel_t channel,
                             const config::TopologyPlan& plan) {
  amqp_connection_state_t st = conn.state();
  for (const auto& ex : plan.exchanges) {
    amqp_table_entry_t arg;
    amqp_table_t args = amqp_empty_table;
    if (!ex.alternate_exchange.empty()) {
      arg.key = amqp_cstring_bytes("alternate-exchange");
      arg.value.kind = AMQP_FIELD_KIND_UTF8;
      arg.value.value.bytes = AmqpBytes(ex.alternate_exchange);
      args.num_entries = 1;
      args.entries = &arg;
    }
    amqp_exchange_declare(st, channel, AmqpBytes(ex.name), AmqpBytes(ex.type), /*passive=*/0,
                          /*durable=*/1, /*auto_delete=*/0, /*internal=*/0, args);
    const std::string what = util::StrCat("exchange '", ex.name, "'");
    absl::Status s = conn.RpcStatus(util::StrCat("declare ", what), channel);
    if (!s.ok()) {
      return Conflict(s, what,
                      util::StrCat("{type: ", ex.type, ", durable: true",
                                   ex.alternate_exchange.empty()
                                       ? std::string()
                                       : util::StrCat(", alternate-exchange: ",
                                                      ex.alternate_exchange),
                                   "}"));
    }
  }
  for (const auto& q : plan.queues) {
    // A classic queue is declared without x-queue-type, so that queues made
    // by other tools (which rarely set it) are equivalent.
    std::vector<amqp_table_entry_t> entries;
    std::string ours = "{durable: true";
    auto add_text = [&](const char* key, std::string_view value) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes(key);
      e.value.kind = AMQP_FIELD_KIND_UTF8;
      e.value.value.bytes = AmqpBytes(value);
      entries.push_back(e);
      util::StrAppend(&ours, ", ", key, ": ", value);
    };
    if (q.type == config::QueueType::kQuorum) add_text("x-queue-type", "quorum");
    if (!q.dead_letter_exchange.empty()) {
      add_text("x-dead-letter-exchange", q.dead_letter_exchange);
      if (q.type == config::QueueType::kQuorum) {
        // At-least-once dead-lettering: a message leaves the queue only once
        // the dead-letter queue has confirmed it (RabbitMQ 3.10+).
        add_text("x-dead-letter-strategy", "at-least-once");
        add_text("x-overflow", "reject-publish");
      }
    }
    if (!q.dead_letter_exchange.empty()) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes("x-delivery-limit");
      e.value.kind = AMQP_FIELD_KIND_I64;
      e.value.value.i64 = q.delivery_limit;
      entries.push_back(e);
      util::StrAppend(&ours, ", x-delivery-limit: ", q.delivery_limit);
    }
    ours += "}";
    amqp_table_t args;
    args.num_entries = static_cast<int>(entries.size());
    args.entries = entries.data();
    amqp_queue_declare(st, channel, AmqpBytes(q.name), /*passive=*/0, /*durable=*/1,
                       /*exclusive=*/0, /*auto_delete=*/0, args);
    const std::string what = util::StrCat("queue '", q.name, "'");
    absl::Status s = conn.RpcStatus(util::StrCat("declare ", what), channel);
    if (!s.ok()) return Conflict(s, what, ours);
  }
  for (const auto& b : plan.bindings) {
    amqp_queue_bind(st, channel, AmqpBytes(b.queue), AmqpBytes(b.exchange),
                    AmqpBytes(b.binding_key), amqp_empty_table);
    absl::Status s = conn.RpcStatus(
        util::StrCat("bind queue '", b.queue, "' to exchange '", b.exchange, "' with '",
                     b.binding_key, "'"),
        channel);
    if (!s.ok()) return s;
  }
  spdlog::debug("declared {} exchanges, {} queues, {} bindings", plan.exchanges.size(),
                plan.queues.size(), plan.bindings.size());
  return absl::OkStatus();
}

absl::StatusOr<QueueStats> QueryQueue(Connection& conn, amqp_channel_t channel,
                                      const std::string& queue) {
  amqp_queue_declare_ok_t* ok =
      amqp_queue_declare(conn.state(), channel, AmqpBytes(queue), /*passive=*/1, 0, 0, 0,
                         amqp_empty_table);
  absl::Status s = conn.RpcStatus(util::StrCat("inspect queue '", queue, "'"), channel);
  if (!s.ok()) return s;
  QueueStats stats;
  if (ok != nullptr) {
    stats.messages = ok->message_count;
    stats.consumers = ok->consumer_count;
  }
  return stats;
}

}  // namespace mqs::amqp
