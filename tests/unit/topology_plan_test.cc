// PlanTopology: name resolution and deduplication, no broker needed.
#include "config/topology_plan.h"

#include <catch2/catch.hpp>

namespace mqs::config {
namespace {

Producer MakeProducer(std::string name, std::string exchange = "", std::string handle = "") {
  Producer p;
  p.name = std::move(name);
  p.exchange = std::move(exchange);
  p.handle = std::move(handle);
  return p;
}

Consumer MakeConsumer(std::string name, std::string exchange = "", std::string queue = "") {
  Consumer c;
  c.name = std::move(name);
  c.exchange = std::move(exchange);
  c.queue = std::move(queue);
  return c;
}

std::vector<std::string> ExchangeNames(const TopologyPlan& plan) {
  std::vector<std::string> out;
  for (const ExchangeSpec& e : plan.exchanges) out.push_back(e.name);
  return out;
}

TEST_CASE("topology: a consumer's queue defaults to <exchange>.queue bound with #") {
  Config config;
  config.consumers.push_back(MakeConsumer("usdt.transfer"));
  config.consumers.push_back(MakeConsumer("task.otc.1.2", "task.shared"));
  const TopologyPlan plan = PlanTopology(config);

  REQUIRE(plan.exchanges.size() == 2);
  CHECK(plan.exchanges[0].name == "task.shared");
  CHECK(plan.exchanges[0].type == "topic");
  CHECK(plan.exchanges[0].alternate_exchange.empty());
  CHECK(plan.exchanges[1].name == "usdt.transfer");
  REQUIRE(plan.queues.size() == 2);
  CHECK(plan.queues[0].name == "task.shared.queue");
  CHECK(plan.queues[0].type == QueueType::kQuorum);
  CHECK(plan.queues[1].name == "usdt.transfer.queue");
  REQUIRE(plan.bindings.size() == 2);
  CHECK(plan.bindings[0].exchange == "task.shared");
  CHECK(plan.bindings[0].queue == "task.shared.queue");
  CHECK(plan.bindings[0].binding_key == "#");
  CHECK(plan.bindings[1].exchange == "usdt.transfer");
  CHECK(plan.bindings[1].queue == "usdt.transfer.queue");
}

TEST_CASE("topology: shared exchanges and queues are declared once") {
  Config config;
  config.producers.push_back(MakeProducer("server.ping"));
  config.producers.push_back(MakeProducer("ping.alias", "server.ping"));
  config.consumers.push_back(MakeConsumer("server.ping"));
  // Two businesses consuming one queue (competing consumers), one binding key twice.
  Consumer other = MakeConsumer("ping.other", "server.ping", "server.ping.queue");
  other.binding_keys = {"#", "x.*", "#"};
  config.consumers.push_back(other);
  const TopologyPlan plan = PlanTopology(config);

  CHECK(ExchangeNames(plan) == std::vector<std::string>{"server.ping"});
  REQUIRE(plan.queues.size() == 1);
  CHECK(plan.queues[0].name == "server.ping.queue");
  REQUIRE(plan.bindings.size() == 2);
  CHECK(plan.bindings[0].binding_key == "#");
  CHECK(plan.bindings[1].binding_key == "x.*");
}

TEST_CASE("topology: a producer handle becomes the alternate exchange") {
  Config config;
  config.producers.push_back(MakeProducer("usdt.transfer", "", "usdt.unroutable"));
  config.consumers.push_back(MakeConsumer("usdt.transfer"));  // same exchange, no handle
  config.producers.push_back(MakeProducer("server.ping"));
  const TopologyPlan plan = PlanTopology(config);

  CHECK(ExchangeNames(plan) ==
        std::vector<std::string>{"server.ping", "usdt.transfer", "usdt.unroutable"});
  CHECK(plan.exchanges[0].alternate_exchange.empty());
  CHECK(plan.exchanges[1].type == "topic");
  CHECK(plan.exchanges[1].alternate_exchange == "usdt.unroutable");
  CHECK(plan.exchanges[2].type == "fanout");
  CHECK(plan.exchanges[2].alternate_exchange.empty());

  REQUIRE(plan.queues.size() == 2);
  CHECK(plan.queues[0].name == "usdt.transfer.queue");
  CHECK(plan.queues[0].type == QueueType::kQuorum);
  CHECK(plan.queues[1].name == "usdt.unroutable.queue");
  CHECK(plan.queues[1].type == QueueType::kClassic);

  REQUIRE(plan.bindings.size() == 2);
  CHECK(plan.bindings[1].exchange == "usdt.unroutable");
  CHECK(plan.bindings[1].queue == "usdt.unroutable.queue");
  CHECK(plan.bindings[1].binding_key == "#");
}

TEST_CASE("topology: the order of businesses does not change the plan") {
  Config a;
  a.consumers.push_back(MakeConsumer("usdt.transfer"));
  a.producers.push_back(MakeProducer("usdt.transfer", "", "ae"));
  a.producers.push_back(MakeProducer("b"));
  Config b;
  b.producers.push_back(MakeProducer("b"));
  b.producers.push_back(MakeProducer("usdt.transfer", "", "ae"));
  b.consumers.push_back(MakeConsumer("usdt.transfer"));
  const TopologyPlan pa = PlanTopology(a);
  const TopologyPlan pb = PlanTopology(b);
  CHECK(ExchangeNames(pa) == ExchangeNames(pb));
  CHECK(pa.exchanges[2].alternate_exchange == "ae");
  CHECK(pa.bindings.size() == pb.bindings.size());
}

TEST_CASE("topology: an empty config plans nothing") {
  const TopologyPlan plan = PlanTopology(Config{});
  CHECK(plan.exchanges.empty());
  CHECK(plan.queues.empty());
  CHECK(plan.bindings.empty());
}

}  // namespace
}  // namespace mqs::config
