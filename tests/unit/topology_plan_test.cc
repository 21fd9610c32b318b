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

// The same without dead letters: the name tests below look at the business
// objects alone.
Consumer Plain(Consumer c) {
  c.dead_letter = false;
  return c;
}

const QueueSpec* FindQueue(const TopologyPlan& plan, const std::string& name) {
  for (const QueueSpec& q : plan.queues) {
    if (q.name == name) return &q;
  }
  return nullptr;
}

const ExchangeSpec* FindExchange(const TopologyPlan& plan, const std::string& name) {
  for (const ExchangeSpec& e : plan.exchanges) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

bool HasBinding(const TopologyPlan& plan, const std::string& exchange, const std::string& queue,
                const std::string& key) {
  for (const BindingSpec& b : plan.bindings) {
    if (b.exchange == exchange && b.queue == queue && b.binding_key == key) return true;
  }
  return false;
}

std::vector<std::string> ExchangeNames(const TopologyPlan& plan) {
  std::vector<std::string> out;
  for (const ExchangeSpec& e : plan.exchanges) out.push_back(e.name);
  return out;
}

TEST_CASE("topology: a consumer's queue defaults to <exchange>.queue bound with #") {
  Config config;
  config.consumers.push_back(Plain(MakeConsumer("usdt.transfer")));
  config.consumers.push_back(Plain(MakeConsumer("task.otc.1.2", "task.shared")));
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
  config.consumers.push_back(Plain(MakeConsumer("server.ping")));
  // Two businesses consuming one queue (competing consumers), one binding key twice.
  Consumer other = Plain(MakeConsumer("ping.other", "server.ping", "server.ping.queue"));
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
  config.consumers.push_back(Plain(MakeConsumer("usdt.transfer")));  // same exchange, no handle
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

TEST_CASE("topology: every consumer queue dead-letters to <exchange>.dlx -> <queue>.dead") {
  Config config;
  config.consumers.push_back(MakeConsumer("usdt.transfer"));  // quorum, the defaults
  Consumer classic = MakeConsumer("otc.order", "otc", "otc.orders");
  classic.queue_type = QueueType::kClassic;
  config.consumers.push_back(classic);
  const TopologyPlan plan = PlanTopology(config);

  CHECK(ExchangeNames(plan) ==
        std::vector<std::string>{"otc", "otc.dlx", "usdt.transfer", "usdt.transfer.dlx"});
  for (const ExchangeSpec& e : plan.exchanges) {
    CHECK(e.type == "topic");
    CHECK(e.alternate_exchange.empty());
  }
  REQUIRE(plan.queues.size() == 4);
  const QueueSpec* q = FindQueue(plan, "usdt.transfer.queue");
  REQUIRE(q != nullptr);
  CHECK(q->type == QueueType::kQuorum);
  CHECK(q->dead_letter_exchange == "usdt.transfer.dlx");
  CHECK_FALSE(q->delivery_limit.has_value());  // no max_deliveries: no delivery limit
  CHECK_FALSE(q->single_active);
  const QueueSpec* dead = FindQueue(plan, "usdt.transfer.queue.dead");
  REQUIRE(dead != nullptr);
  CHECK(dead->type == QueueType::kQuorum);    // the type of its queue
  CHECK(dead->dead_letter_exchange.empty());  // no dead letters of its own
  CHECK_FALSE(dead->delivery_limit.has_value());
  CHECK(HasBinding(plan, "usdt.transfer.dlx", "usdt.transfer.queue.dead", "usdt.transfer.queue"));

  // Classic: the dead-letter exchange too, into a classic queue.
  const QueueSpec* c = FindQueue(plan, "otc.orders");
  REQUIRE(c != nullptr);
  CHECK(c->type == QueueType::kClassic);
  CHECK(c->dead_letter_exchange == "otc.dlx");
  const QueueSpec* c_dead = FindQueue(plan, "otc.orders.dead");
  REQUIRE(c_dead != nullptr);
  CHECK(c_dead->type == QueueType::kClassic);
  CHECK(HasBinding(plan, "otc.dlx", "otc.orders.dead", "otc.orders"));
  CHECK(plan.bindings.size() == 4);

  CHECK(DeadLetterExchange(config.consumers[0]) == "usdt.transfer.dlx");
  CHECK(DeadLetterQueue(config.consumers[0]) == "usdt.transfer.queue.dead");
  CHECK(DeadLetterExchange(classic) == "otc.dlx");
  CHECK(DeadLetterQueue(classic) == "otc.orders.dead");
}

TEST_CASE("topology: max_deliveries adds the delivery limit to the dead letters") {
  Config config;
  Consumer c = MakeConsumer("poison");
  c.max_deliveries = 3;
  config.consumers.push_back(c);
  Consumer once = MakeConsumer("once");
  once.max_deliveries = 1;  // the first return dead-letters
  config.consumers.push_back(once);
  const TopologyPlan plan = PlanTopology(config);
  const QueueSpec* q = FindQueue(plan, "poison.queue");
  REQUIRE(q != nullptr);
  CHECK(q->dead_letter_exchange == "poison.dlx");
  REQUIRE(q->delivery_limit.has_value());
  CHECK(*q->delivery_limit == 2);  // the broker counts returns
  const QueueSpec* o = FindQueue(plan, "once.queue");
  REQUIRE(o != nullptr);
  REQUIRE(o->delivery_limit.has_value());
  CHECK(*o->delivery_limit == 0);
  CHECK(FindQueue(plan, "poison.queue.dead") != nullptr);
}

TEST_CASE("topology: dead_letter false declares the queue as before, without dead letters") {
  Config config;
  Consumer c = MakeConsumer("usdt.transfer");
  c.dead_letter = false;
  config.consumers.push_back(c);
  const TopologyPlan plan = PlanTopology(config);
  CHECK(ExchangeNames(plan) == std::vector<std::string>{"usdt.transfer"});
  REQUIRE(plan.queues.size() == 1);
  CHECK(plan.queues[0].name == "usdt.transfer.queue");
  CHECK(plan.queues[0].dead_letter_exchange.empty());
  CHECK_FALSE(plan.queues[0].delivery_limit.has_value());
  CHECK(plan.bindings.size() == 1);
  CHECK(DeadLetterExchange(c).empty());
  CHECK(DeadLetterQueue(c).empty());
}

TEST_CASE("topology: single_active sets x-single-active-consumer on its queue only") {
  Config config;
  Consumer c = MakeConsumer("ordered");
  c.single_active = true;
  config.consumers.push_back(c);
  config.consumers.push_back(MakeConsumer("other"));
  const TopologyPlan plan = PlanTopology(config);
  const QueueSpec* q = FindQueue(plan, "ordered.queue");
  REQUIRE(q != nullptr);
  CHECK(q->single_active);
  CHECK(q->dead_letter_exchange == "ordered.dlx");
  const QueueSpec* dead = FindQueue(plan, "ordered.queue.dead");
  REQUIRE(dead != nullptr);
  CHECK_FALSE(dead->single_active);  // the dead letters are read by anyone
  const QueueSpec* other = FindQueue(plan, "other.queue");
  REQUIRE(other != nullptr);
  CHECK_FALSE(other->single_active);
}

TEST_CASE("topology: the unroutable consumers and the exclusive queues get no dead letters") {
  Config config;
  config.producers.push_back(MakeProducer("usdt.transfer", "", "usdt.ae"));
  Consumer unroutable = MakeConsumer("usdt.transfer.unroutable", "usdt.ae", "usdt.ae.queue");
  unroutable.queue_type = QueueType::kClassic;
  unroutable.unroutable = true;  // dead_letter left true: the plan still gives none
  unroutable.single_active = true;
  config.consumers.push_back(unroutable);
  Consumer results = MakeConsumer("task.result");
  config.consumers.push_back(results);
  config.tasks.results = "task.result";
  config.instance = "0011";
  const TopologyPlan plan = PlanTopology(config);

  const QueueSpec* ae = FindQueue(plan, "usdt.ae.queue");
  REQUIRE(ae != nullptr);
  CHECK(ae->type == QueueType::kClassic);
  CHECK(ae->dead_letter_exchange.empty());
  CHECK_FALSE(ae->single_active);
  CHECK(FindQueue(plan, "usdt.ae.queue.dead") == nullptr);
  CHECK(FindExchange(plan, "usdt.ae.dlx") == nullptr);
  CHECK(DeadLetterQueue(unroutable).empty());

  const QueueSpec* reply = FindQueue(plan, ReplyQueue(config));
  REQUIRE(reply != nullptr);
  CHECK(reply->exclusive);
  CHECK(reply->dead_letter_exchange.empty());
  CHECK(FindQueue(plan, ReplyQueue(config) + ".dead") == nullptr);
  // The results business itself is an ordinary consumer: it has them.
  CHECK(FindQueue(plan, "task.result.queue.dead") != nullptr);
}

TEST_CASE("topology: queues sharing an exchange dead-letter each into its own .dead queue") {
  Config config;
  config.consumers.push_back(MakeConsumer("a", "shared", "a.q"));
  config.consumers.push_back(MakeConsumer("b", "shared", "b.q"));
  const TopologyPlan plan = PlanTopology(config);
  for (const char* q : {"a.q", "b.q"}) {
    const QueueSpec* spec = FindQueue(plan, q);
    REQUIRE(spec != nullptr);
    CHECK(spec->dead_letter_exchange == "shared.dlx");
    CHECK(spec->dead_letter_routing_key == q);
    CHECK(HasBinding(plan, "shared.dlx", std::string(q) + ".dead", q));
    CHECK_FALSE(HasBinding(plan, "shared.dlx", std::string(q) + ".dead", "#"));
  }
}

TEST_CASE("topology: an empty config plans nothing") {
  const TopologyPlan plan = PlanTopology(Config{});
  CHECK(plan.exchanges.empty());
  CHECK(plan.queues.empty());
  CHECK(plan.bindings.empty());
}

}  // namespace
}  // namespace mqs::config
