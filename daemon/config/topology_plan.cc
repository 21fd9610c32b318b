#include "config/topology_plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "config/loader_internal.h"

namespace mqs::config {

TopologyPlan PlanTopology(const Config& input) {
  // Defaults again, so that hand-built configs (tests, tools) plan the same
  // names as loaded ones.
  Config config = input;
  internal::ApplyDefaults(config);

  std::map<std::string, ExchangeSpec> exchanges;
  std::map<std::string, QueueSpec> queues;
  std::set<std::tuple<std::string, std::string, std::string>> bindings;

  // First claim of a name wins; Resolve() rejects the conflicting configs.
  // The one merge: an exchange also used by consumers keeps its producer's
  // alternate exchange, since every declaration must carry the same arguments.
  auto add_exchange = [&](const std::string& name, const char* type, const std::string& ae) {
    auto [it, inserted] = exchanges.emplace(name, ExchangeSpec{name, type, ae});
    if (!inserted && it->second.alternate_exchange.empty()) it->second.alternate_exchange = ae;
  };
  for (const Producer& p : config.producers) {
    add_exchange(p.exchange, "topic", p.handle);
    if (p.handle.empty()) continue;
    add_exchange(p.handle, "fanout", "");
    const std::string queue = p.handle + ".queue";
    queues.emplace(queue, QueueSpec{.name = queue, .type = QueueType::kClassic});
    bindings.emplace(p.handle, queue, "#");
  }
  for (const Consumer& c : config.consumers) {
    add_exchange(c.exchange, "topic", "");
    QueueSpec spec{.name = c.queue, .type = c.queue_type};
    spec.single_active = c.single_active && !c.unroutable;
    if (const std::string dlx = DeadLetterExchange(c); !dlx.empty()) {
      spec.dead_letter_exchange = dlx;
      spec.dead_letter_routing_key = c.queue;
      if (c.max_deliveries > 0) spec.delivery_limit = c.max_deliveries - 1;
      const std::string dead = DeadLetterQueue(c);
      add_exchange(dlx, "topic", "");
      queues.emplace(dead, QueueSpec{.name = dead, .type = c.queue_type});
      bindings.emplace(dlx, dead, c.queue);
    }
    queues.emplace(c.queue, std::move(spec));
    for (const std::string& key : c.binding_keys) bindings.emplace(c.exchange, c.queue, key);
    // Retry queues: no bindings, published to through the default exchange
    // (routing key = their name). A repeated delay is one queue.
    if (c.unroutable) continue;
    for (std::chrono::milliseconds delay : c.retry.delays) {
      QueueSpec retry = RetryQueueSpec(c, delay);
      const std::string name = retry.name;
      queues.emplace(name, std::move(retry));
    }
  }

  if (const std::string q = FleetQueue(config); !q.empty()) {
    QueueSpec spec{.name = q, .type = QueueType::kClassic};
    spec.exclusive = true;
    queues.emplace(q, std::move(spec));
    bindings.emplace(PingExchange(config), q, "#");
  }
  if (const std::string q = ReplyQueue(config); !q.empty()) {
    QueueSpec spec{.name = q, .type = QueueType::kClassic};
    spec.exclusive = true;
    queues.emplace(q, std::move(spec));
    bindings.emplace(ResultsExchange(config), q, ReplyBindingKey(config));
  }

  TopologyPlan plan;
  for (auto& [name, spec] : exchanges) plan.exchanges.push_back(std::move(spec));
  for (auto& [name, spec] : queues) plan.queues.push_back(std::move(spec));
  for (const auto& [exchange, queue, key] : bindings) {
    plan.bindings.push_back(BindingSpec{exchange, queue, key});
  }
  return plan;
}

TopologyPlan WithoutExclusive(const TopologyPlan& plan) {
  TopologyPlan out;
  out.exchanges = plan.exchanges;
  std::set<std::string> dropped;
  for (const QueueSpec& q : plan.queues) {
    if (q.exclusive) {
      dropped.insert(q.name);
    } else {
      out.queues.push_back(q);
    }
  }
  for (const BindingSpec& b : plan.bindings) {
    if (!dropped.contains(b.queue)) out.bindings.push_back(b);
  }
  return out;
}

namespace {
std::string InstanceOf(const Config& config) {
  return config.instance.empty() ? std::string("0") : config.instance;
}
}  // namespace

std::string DeadLetterExchange(const Consumer& consumer) {
  if (!consumer.dead_letter || consumer.unroutable) return "";
  const std::string& exchange = consumer.exchange.empty() ? consumer.name : consumer.exchange;
  return internal::Cat(exchange, ".dlx");
}

std::string DeadLetterQueue(const Consumer& consumer) {
  if (!consumer.dead_letter || consumer.unroutable) return "";
  if (!consumer.queue.empty()) return internal::Cat(consumer.queue, ".dead");
  const std::string& exchange = consumer.exchange.empty() ? consumer.name : consumer.exchange;
  return internal::Cat(exchange, ".queue.dead");
}

namespace {
// The consumer's queue, after defaults (as DeadLetterQueue).
std::string ConsumerQueue(const Consumer& consumer) {
  if (!consumer.queue.empty()) return consumer.queue;
  const std::string& exchange = consumer.exchange.empty() ? consumer.name : consumer.exchange;
  return internal::Cat(exchange, ".queue");
}
}  // namespace

std::string RetryQueue(const Consumer& consumer, std::chrono::milliseconds delay) {
  // FormatDuration names the delay in its largest whole unit (1m, 90s,
  // 1500ms): one name per delay, however the config wrote it.
  return internal::Cat(ConsumerQueue(consumer), ".retry.", internal::FormatDuration(delay));
}

QueueSpec RetryQueueSpec(const Consumer& consumer, std::chrono::milliseconds delay) {
  QueueSpec spec{.name = RetryQueue(consumer, delay), .type = consumer.queue_type};
  spec.message_ttl_ms = static_cast<uint64_t>(delay.count());
  // No dead_letter_exchange: retry_for alone says where an expired message
  // goes (the default exchange, routing key retry_for).
  spec.retry_for = ConsumerQueue(consumer);
  return spec;
}

std::string PingExchange(const Config& config) {
  if (config.ping.business.empty()) return "";
  const Producer* p = config.FindProducer(config.ping.business);
  if (p == nullptr) return "";
  return p->exchange.empty() ? p->name : p->exchange;
}

std::string ResultsExchange(const Config& config) {
  if (config.tasks.results.empty()) return "";
  const Consumer* c = config.FindConsumer(config.tasks.results);
  if (c == nullptr) return "";
  return c->exchange.empty() ? c->name : c->exchange;
}

std::string FleetQueue(const Config& config) {
  if (!config.ping.fleet) return "";
  const std::string exchange = PingExchange(config);
  return exchange.empty() ? "" : internal::Cat(exchange, ".fleet.", InstanceOf(config));
}

std::string ReplyQueue(const Config& config) {
  const std::string exchange = ResultsExchange(config);
  return exchange.empty() ? "" : internal::Cat(exchange, ".reply.", InstanceOf(config));
}

std::string ReplyBindingKey(const Config& config) {
  return internal::Cat(InstanceOf(config), ".#");
}

}  // namespace mqs::config
