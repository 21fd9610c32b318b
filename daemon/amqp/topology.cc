#include "amqp/topology.h"

#include <vector>

#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::amqp {
namespace {

constexpr char kConflictPayload[] = "mq-sidecar/topology-conflict";

// What to do about a queue conflict on an argument the config sets, when the
// broker names it; "" for any other. `retry_for`: the step is a retry queue
// of that queue.
std::string ConflictHint(std::string_view broker_message, std::string_view retry_for) {
  if (!retry_for.empty()) {
    // Its name carries the delay, so this is another type or an older
    // declaration; it only holds messages on their way back, so it can go.
    return util::StrCat(
        " (a retry queue: it only holds messages waiting to return to '", retry_for,
        "'; wait until it is empty, or move its messages to '", retry_for,
        "' first, then delete it and the sidecar declares it again; docs/configuration.md)");
  }
  auto names = [&](std::string_view arg) {
    return broker_message.find(util::StrCat("'", arg, "'")) != std::string_view::npos;
  };
  if (names("x-dead-letter-routing-key") &&
      broker_message.find("current is none") != std::string_view::npos) {
    return " (a queue declared with dead letters by an earlier version, which gave them no "
           "routing key of their own: migrate its messages to a new queue; "
           "docs/operations.md)";
  }
  if (names("x-dead-letter-exchange") || names("x-dead-letter-strategy") || names("x-overflow")) {
    if (broker_message.find("current is none") != std::string_view::npos) {
      return " (a queue declared without dead letters, e.g. before dead_letter existed, "
             "conflicts with dead_letter: true, the default: set dead_letter: false for its "
             "consumers to keep the queue as it is, or migrate its messages to a new queue; "
             "docs/operations.md)";
    }
    return " (the existing queue has other dead-letter arguments: set dead_letter as it was "
           "declared, or migrate its messages to a new queue; docs/operations.md)";
  }
  if (names("x-single-active-consumer")) {
    return " (single_active must match the existing queue: set it as the queue was declared, "
           "or migrate its messages to a new queue; docs/operations.md)";
  }
  return "";
}

absl::Status Conflict(const absl::Status& s, std::string_view object, std::string_view ours,
                      std::string_view retry_for) {
  if (s.code() != absl::StatusCode::kFailedPrecondition) return s;
  const std::string_view said = util::ToStd(s.message());
  absl::Status out = absl::FailedPreconditionError(util::StrCat(
      object, " exists on the broker with other arguments; the broker said: ", said,
      "; the config declares: ", ours, ConflictHint(said, retry_for),
      ". mq-sidecar never deletes objects: change the config, or delete or migrate the "
      "object on the broker"));
  out.SetPayload(kConflictPayload, absl::Cord("1"));
  return out;
}

}  // namespace

bool IsTopologyConflict(const absl::Status& s) {
  return s.GetPayload(kConflictPayload).has_value();
}

namespace {

// Step: one declaration of a plan as an AMQP method. The method struct and
// its arguments table point into the plan and into `entries`, so a Step
// lives only as long as the plan and is used at once.
struct Step {
  amqp_method_number_t method = 0;
  amqp_method_number_t reply = 0;
  std::string what;       // for errors: "exchange 'x'", "queue 'q'", "bind ..."
  std::string ours;       // what we declare, for a conflict's error; empty: no conflict check
  std::string retry_for;  // a retry queue's: its conflicts get their own hint
  amqp_exchange_declare_t exchange{};
  amqp_queue_declare_t queue{};
  amqp_queue_bind_t bind{};
  std::vector<amqp_table_entry_t> entries;
  void* decoded() {
    if (method == AMQP_EXCHANGE_DECLARE_METHOD) return &exchange;
    if (method == AMQP_QUEUE_DECLARE_METHOD) return &queue;
    return &bind;
  }
};

amqp_table_t Table(std::vector<amqp_table_entry_t>& entries) {
  amqp_table_t t;
  t.num_entries = static_cast<int>(entries.size());
  t.entries = entries.empty() ? nullptr : entries.data();
  return t;
}

// Fills `out` with step `i`: exchanges first, then queues, then bindings.
void BuildStep(const config::TopologyPlan& plan, size_t i, Step& out) {
  if (i < plan.exchanges.size()) {
    const auto& ex = plan.exchanges[i];
    if (!ex.alternate_exchange.empty()) {
      amqp_table_entry_t arg;
      arg.key = amqp_cstring_bytes("alternate-exchange");
      arg.value.kind = AMQP_FIELD_KIND_UTF8;
      arg.value.value.bytes = AmqpBytes(ex.alternate_exchange);
      out.entries.push_back(arg);
    }
    out.method = AMQP_EXCHANGE_DECLARE_METHOD;
    out.reply = AMQP_EXCHANGE_DECLARE_OK_METHOD;
    out.exchange.exchange = AmqpBytes(ex.name);
    out.exchange.type = AmqpBytes(ex.type);
    out.exchange.durable = 1;
    out.exchange.arguments = Table(out.entries);
    out.what = util::StrCat("exchange '", ex.name, "'");
    out.ours = util::StrCat("{type: ", ex.type, ", durable: true",
                            ex.alternate_exchange.empty()
                                ? std::string()
                                : util::StrCat(", alternate-exchange: ", ex.alternate_exchange),
                            "}");
    return;
  }
  i -= plan.exchanges.size();
  if (i < plan.queues.size()) {
    const auto& q = plan.queues[i];
    // A classic queue is declared without x-queue-type, so that queues made
    // by other tools (which rarely set it) are equivalent.
    std::string ours = q.exclusive ? "{exclusive: true, auto-delete: true" : "{durable: true";
    auto add_text = [&](const char* key, std::string_view value) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes(key);
      e.value.kind = AMQP_FIELD_KIND_UTF8;
      e.value.value.bytes = AmqpBytes(value);
      out.entries.push_back(e);
      util::StrAppend(&ours, ", ", key, ": ", value.empty() ? "\"\"" : value);
    };
    if (q.type == config::QueueType::kQuorum) add_text("x-queue-type", "quorum");
    if (!q.dead_letter_exchange.empty()) {
      add_text("x-dead-letter-exchange", q.dead_letter_exchange);
      if (!q.dead_letter_routing_key.empty()) {
        add_text("x-dead-letter-routing-key", q.dead_letter_routing_key);
      }
      if (q.type == config::QueueType::kQuorum) {
        // At-least-once dead-lettering: a message leaves the queue only once
        // the dead-letter queue has confirmed it (RabbitMQ 3.10+).
        add_text("x-dead-letter-strategy", "at-least-once");
        add_text("x-overflow", "reject-publish");
      }
    }
    if (q.message_ttl_ms) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes("x-message-ttl");
      e.value.kind = AMQP_FIELD_KIND_I64;
      e.value.value.i64 = static_cast<int64_t>(*q.message_ttl_ms);
      out.entries.push_back(e);
      util::StrAppend(&ours, ", x-message-ttl: ", *q.message_ttl_ms);
    }
    if (!q.retry_for.empty()) {
      // An expired message goes back through the default exchange (""),
      // whose routing key is a queue name: to retry_for and no other queue.
      add_text("x-dead-letter-exchange", "");
      add_text("x-dead-letter-routing-key", q.retry_for);
      if (q.type == config::QueueType::kQuorum) {
        // As for dead letters: it leaves the retry queue only once the
        // consumer queue has confirmed it.
        add_text("x-dead-letter-strategy", "at-least-once");
        add_text("x-overflow", "reject-publish");
      }
      out.retry_for = q.retry_for;
    }
    if (q.delivery_limit) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes("x-delivery-limit");
      e.value.kind = AMQP_FIELD_KIND_I64;
      e.value.value.i64 = *q.delivery_limit;
      out.entries.push_back(e);
      util::StrAppend(&ours, ", x-delivery-limit: ", *q.delivery_limit);
    }
    if (q.single_active) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes("x-single-active-consumer");
      e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
      e.value.value.boolean = 1;
      out.entries.push_back(e);
      util::StrAppend(&ours, ", x-single-active-consumer: true");
    }
    if (q.exclusive) {
      amqp_table_entry_t e;
      e.key = amqp_cstring_bytes("x-max-length");
      e.value.kind = AMQP_FIELD_KIND_I64;
      e.value.value.i64 = config::kExclusiveQueueMaxLength;
      out.entries.push_back(e);
      util::StrAppend(&ours, ", x-max-length: ", config::kExclusiveQueueMaxLength);
    }
    ours += "}";
    out.method = AMQP_QUEUE_DECLARE_METHOD;
    out.reply = AMQP_QUEUE_DECLARE_OK_METHOD;
    out.queue.queue = AmqpBytes(q.name);
    out.queue.durable = q.exclusive ? 0 : 1;
    out.queue.exclusive = q.exclusive ? 1 : 0;
    out.queue.auto_delete = q.exclusive ? 1 : 0;
    out.queue.arguments = Table(out.entries);
    out.what = util::StrCat("queue '", q.name, "'");
    out.ours = std::move(ours);
    return;
  }
  i -= plan.queues.size();
  const auto& b = plan.bindings[i];
  out.method = AMQP_QUEUE_BIND_METHOD;
  out.reply = AMQP_QUEUE_BIND_OK_METHOD;
  out.bind.queue = AmqpBytes(b.queue);
  out.bind.exchange = AmqpBytes(b.exchange);
  out.bind.routing_key = AmqpBytes(b.binding_key);
  out.bind.arguments = amqp_empty_table;
  out.what = util::StrCat("bind queue '", b.queue, "' to exchange '", b.exchange, "' with '",
                          b.binding_key, "'");
}

}  // namespace

size_t TopologyStepCount(const config::TopologyPlan& plan) {
  return plan.exchanges.size() + plan.queues.size() + plan.bindings.size();
}

absl::Status TopologyStepError(const config::TopologyPlan& plan, size_t step,
                               const absl::Status& refused) {
  Step st;
  BuildStep(plan, step, st);
  if (st.ours.empty()) return refused;
  return Conflict(refused, st.what, st.ours, st.retry_for);
}

bool SendTopologyStep(Connection& conn, amqp_channel_t channel, const config::TopologyPlan& plan,
                      size_t step, amqp_method_number_t* reply) {
  Step st;
  BuildStep(plan, step, st);
  *reply = st.reply;
  return amqp_send_method(conn.state(), channel, st.method, st.decoded()) == AMQP_STATUS_OK;
}

absl::Status DeclareTopology(Connection& conn, amqp_channel_t channel,
                             const config::TopologyPlan& plan) {
  const size_t n = TopologyStepCount(plan);
  for (size_t i = 0; i < n; ++i) {
    Step st;
    BuildStep(plan, i, st);
    amqp_simple_rpc_decoded(conn.state(), channel, st.method, st.reply, st.decoded());
    const std::string what =
        st.method == AMQP_QUEUE_BIND_METHOD ? st.what : util::StrCat("declare ", st.what);
    absl::Status s = conn.RpcStatus(what, channel);
    if (!s.ok()) return st.ours.empty() ? s : Conflict(s, st.what, st.ours, st.retry_for);
  }
  spdlog::debug("declared {} exchanges, {} queues, {} bindings", plan.exchanges.size(),
                plan.queues.size(), plan.bindings.size());
  return absl::OkStatus();
}

bool SendQueryQueue(Connection& conn, amqp_channel_t channel, const std::string& queue) {
  amqp_queue_declare_t declare{};
  declare.queue = AmqpBytes(queue);
  declare.passive = 1;
  declare.arguments = amqp_empty_table;
  return amqp_send_method(conn.state(), channel, AMQP_QUEUE_DECLARE_METHOD, &declare) ==
         AMQP_STATUS_OK;
}

absl::StatusOr<QueueStats> QueryQueue(Connection& conn, amqp_channel_t channel,
                                      const std::string& queue) {
  amqp_queue_declare_ok_t* ok = amqp_queue_declare(conn.state(), channel, AmqpBytes(queue),
                                                   /*passive=*/1, 0, 0, 0, amqp_empty_table);
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
