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
    queues.emplace(queue, QueueSpec{queue, QueueType::kClassic, "", 0});
    bindings.emplace(p.handle, queue, "#");
  }
  for (const Consumer& c : config.consumers) {
    add_exchange(c.exchange, "topic", "");
    QueueSpec spec{c.queue, c.queue_type, "", 0};
    if (c.max_deliveries > 0) {
      spec.dead_letter_exchange = c.exchange + ".dlx";
      spec.delivery_limit = c.max_deliveries - 1;
      const std::string dead = c.queue + ".dead";
      add_exchange(spec.dead_letter_exchange, "topic", "");
      queues.emplace(dead, QueueSpec{dead, c.queue_type, "", 0});
      bindings.emplace(spec.dead_letter_exchange, dead, "#");
    }
    queues.emplace(c.queue, std::move(spec));
    for (const std::string& key : c.binding_keys) bindings.emplace(c.exchange, c.queue, key);
  }

  TopologyPlan plan;
  for (auto& [name, spec] : exchanges) plan.exchanges.push_back(std::move(spec));
  for (auto& [name, spec] : queues) plan.queues.push_back(std::move(spec));
  for (const auto& [exchange, queue, key] : bindings) {
    plan.bindings.push_back(BindingSpec{exchange, queue, key});
  }
  return plan;
}

}  // namespace mqs::config
