// Delayed retry, the config side: consumers.<b>.retry parsed and checked, its
// retry queues named and planned, declared with the right arguments, and
// shown by Describe. No broker.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "amqp/topology.h"
#include "config/config.h"
#include "config/loader_internal.h"
#include "config/topology_plan.h"

namespace mqs::config {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

std::string ErrorText(const absl::StatusOr<Config>& result) {
  REQUIRE_FALSE(result.ok());
  return std::string(result.status().message());
}

const QueueSpec* FindQueue(const TopologyPlan& plan, const std::string& name) {
  for (const QueueSpec& q : plan.queues) {
    if (q.name == name) return &q;
  }
  return nullptr;
}

Consumer MakeConsumer(std::string name, std::vector<milliseconds> delays) {
  Consumer c;
  c.name = std::move(name);
  c.retry.delays = std::move(delays);
  return c;
}

TEST_CASE("retry config: delays and max_attempts load from YAML") {
  absl::StatusOr<Config> c = LoadYamlText(R"(consumers:
  usdt.transfer:
    retry:
      delays: [1s, 10s, 1m, 10m]
      max_attempts: 5
  one: { retry: { delays: 500ms } }
  plain: {}
)",
                                          "retry.yaml");
  INFO(c.status().message());
  REQUIRE(c.ok());
  const Consumer* u = c->FindConsumer("usdt.transfer");
  REQUIRE(u != nullptr);
  CHECK(u->retry.enabled());
  CHECK(u->retry.delays ==
        std::vector<milliseconds>{seconds(1), seconds(10), minutes(1), minutes(10)});
  CHECK(u->retry.max_attempts == 5);
  // One delay as a scalar; max_attempts defaults to every delay once, plus one.
  const Consumer* one = c->FindConsumer("one");
  REQUIRE(one != nullptr);
  CHECK(one->retry.delays == std::vector<milliseconds>{milliseconds(500)});
  CHECK(one->retry.max_attempts == 2);
  // Without retry: none.
  const Consumer* plain = c->FindConsumer("plain");
  REQUIRE(plain != nullptr);
  CHECK_FALSE(plain->retry.enabled());
  CHECK(plain->retry.max_attempts == 0);
}

TEST_CASE("retry config: max_attempts defaults to len(delays) + 1") {
  absl::StatusOr<Config> c =
      LoadYamlText("consumers:\n  a: { retry: { delays: [1s, 10s, 1m] } }\n", "d.yaml");
  INFO(c.status().message());
  REQUIRE(c.ok());
  CHECK(c->consumers[0].retry.max_attempts == 4);
  // A repeated delay counts: [1s, 1s, 1s] is three retries.
  c = LoadYamlText("consumers:\n  a: { retry: { delays: [1s, 1s, 1s] } }\n", "d.yaml");
  REQUIRE(c.ok());
  CHECK(c->consumers[0].retry.max_attempts == 4);
  // The bounds themselves are accepted; 2 is the least max_attempts.
  c = LoadYamlText("consumers:\n  a: { retry: { delays: [100ms, 168h], max_attempts: 2 } }\n",
                   "d.yaml");
  INFO(c.status().message());
  REQUIRE(c.ok());
  CHECK(c->consumers[0].retry.delays == std::vector<milliseconds>{milliseconds(100), hours(168)});
  CHECK(c->consumers[0].retry.max_attempts == 2);
}

TEST_CASE("retry config: the seed's INI takes retry in its JSON consumer map") {
  absl::StatusOr<Config> c = LoadIniText(
      "[rabbitmq]\n"
      "consumer={\"a\":{\"retry\":{\"delays\":[\"500ms\",10,\"1m\"],\"max_attempts\":6}}}\n",
      "r.ini");
  INFO(c.status().message());
  REQUIRE(c.ok());
  // A bare JSON number is seconds, as a bare YAML one.
  CHECK(c->consumers[0].retry.delays ==
        std::vector<milliseconds>{milliseconds(500), seconds(10), minutes(1)});
  CHECK(c->consumers[0].retry.max_attempts == 6);

  const std::string err = ErrorText(LoadIniText(
      "[rabbitmq]\nconsumer={\"a\":{\"retry\":{\"delays\":[\"50ms\"],\"tries\":3}}}\n", "r.ini"));
  CHECK_THAT(err, Catch::Contains("r.ini:2: rabbitmq.consumer[\"a\"].retry.tries: unknown key; "
                                  "expected one of: delays, max_attempts"));
  CHECK_THAT(err, Catch::Contains("r.ini:2: rabbitmq.consumer[\"a\"].retry.delays[0]: expected a "
                                  "retry delay of 100ms..168h"));
}

TEST_CASE("retry config: shape errors name the business, the key and the line") {
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a: { retry: }
  b: { retry: { max_attempts: 3 } }
  c: { retry: { delays: [] } }
  d: { retry: { delays: [1s, soon] } }
  e: { retry: { delays: 1s, max_attempts: 1 } }
  f: { retry: { delays: 1s, max_attempts: many } }
  g: { retry: { delays: 1s, backoff: 2 } }
  h: { retry: [1s, 10s] }
  i: { retry: { delays: } }
  j: { retry: { delays: [1s, [2s]] } }
)",
                                                 "shape.yaml"));
  INFO(err);
  // `retry:` with nothing is not "no retry": there are no default delays.
  CHECK_THAT(err, Catch::Contains("shape.yaml:2: consumers[\"a\"].retry: expected a map like "
                                  "{delays: [1s, 10s, 1m], max_attempts: 4}, got nothing"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:3: consumers[\"b\"].retry: expected delays (e.g. "
                                  "delays: [1s, 10s, 1m]): retry needs at least one delay"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:4: consumers[\"c\"].retry.delays: expected at least "
                                  "one retry delay, got []"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:5: consumers[\"d\"].retry.delays[1]: expected a "
                                  "duration like 500ms, 30s or 2m"));
  CHECK_THAT(err, Catch::Contains("got \"soon\""));
  CHECK_THAT(err, Catch::Contains("shape.yaml:6: consumers[\"e\"].retry.max_attempts: expected an "
                                  "integer 2..2147483647 (the first delivery and at least one "
                                  "retry), got \"1\""));
  CHECK_THAT(err, Catch::Contains("shape.yaml:7: consumers[\"f\"].retry.max_attempts: expected an "
                                  "integer 2..2147483647"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:8: consumers[\"g\"].retry.backoff: unknown key; "
                                  "expected one of: delays, max_attempts"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:9: consumers[\"h\"].retry: expected a map like "
                                  "{delays: [1s, 10s, 1m], max_attempts: 4}, got a list"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:10: consumers[\"i\"].retry.delays: expected at "
                                  "least one retry delay, got nothing"));
  CHECK_THAT(err, Catch::Contains("shape.yaml:11: consumers[\"j\"].retry.delays[1]: expected a "
                                  "retry delay, got a list"));
  // A retry with errors of its own adds none from Resolve() (dead_letter
  // agreement, ranges): one error per mistake.
  CHECK(std::count(err.begin(), err.end(), '\n') + 1 == 10);
}

TEST_CASE("retry config: delays out of range, dead_letter false and name length") {
  const std::string long_queue(245, 'q');
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a:
    retry:
      delays:
        - 1s
        - 99ms
        - 169h
  b: { dead_letter: false, retry: { delays: [1s] } }
  c: { queue: )" + long_queue + R"(, retry: { delays: [1s, 1500ms] } }
  d: { retry: { delays: [0] } }
)",
                                                 "range.yaml"));
  INFO(err);
  // Each delay points at its own line.
  CHECK_THAT(err, Catch::Contains("range.yaml:6: consumers[\"a\"].retry.delays[1]: expected a "
                                  "retry delay of 100ms..168h (7 days), got 99ms"));
  CHECK_THAT(err, Catch::Contains("range.yaml:7: consumers[\"a\"].retry.delays[2]: expected a "
                                  "retry delay of 100ms..168h (7 days), got 169h"));
  CHECK_THAT(err, !Catch::Contains("consumers[\"a\"].retry.delays[0]"));
  // Exhausted messages must go somewhere: the error says so.
  CHECK_THAT(err, Catch::Contains("range.yaml:8: consumers[\"b\"].retry: needs dead_letter true: "
                                  "a message whose retries are exhausted (after max_attempts "
                                  "deliveries) is dead-lettered to <queue>.dead, and without dead "
                                  "letters it would be dropped; set dead_letter true or remove "
                                  "retry"));
  // 245 + ".retry.1s" fits in 255 bytes; 245 + ".retry.1500ms" does not.
  CHECK_THAT(err, !Catch::Contains("consumers[\"c\"].retry.delays[0]"));
  CHECK_THAT(err, Catch::Contains("range.yaml:9: consumers[\"c\"].retry.delays[1]: its retry "
                                  "queue \"qqq"));
  CHECK_THAT(err, Catch::Contains("would be longer than 255 bytes; choose a shorter queue name"));
  CHECK_THAT(err, Catch::Contains("range.yaml:10: consumers[\"d\"].retry.delays[0]: expected a "
                                  "retry delay of 100ms..168h (7 days), got 0s"));
}

TEST_CASE("retry config: consumers of one queue must agree on retry") {
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a: { queue: s.q, retry: { delays: [1s, 10s] } }
  b: { queue: s.q }
  c: { queue: t.q, retry: { delays: [1s, 10s] } }
  d: { queue: t.q, retry: { delays: [1s, 10s], max_attempts: 5 } }
)",
                                                 "agree.yaml"));
  INFO(err);
  CHECK_THAT(err, Catch::Contains("agree.yaml:3: consumers[\"b\"].retry: queue \"s.q\" has retry "
                                  "none here but {delays: [1s, 10s], max_attempts: 3} for "
                                  "consumers[\"a\"] (line 2); every consumer of one queue must "
                                  "use the same retry"));
  CHECK_THAT(err, Catch::Contains("agree.yaml:5: consumers[\"d\"].retry: queue \"t.q\" has retry "
                                  "{delays: [1s, 10s], max_attempts: 5} here but {delays: [1s, "
                                  "10s], max_attempts: 3} for consumers[\"c\"] (line 4)"));
  // Agreeing consumers share the queue and its retry queues; the same delay
  // written another way is the same retry.
  absl::StatusOr<Config> ok = LoadYamlText(R"(consumers:
  a: { queue: s.q, retry: { delays: [1s, 1m] } }
  b: { queue: s.q, retry: { delays: [1000ms, 60s], max_attempts: 3 } }
)",
                                           "ok.yaml");
  INFO(ok.status().message());
  CHECK(ok.ok());
}

TEST_CASE("retry config: a retry queue may not be another consumer's queue") {
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a: { retry: { delays: [1s] } }
  b: { queue: a.queue.retry.1s }
)",
                                                 "clash.yaml"));
  CHECK_THAT(err, Catch::Contains("clash.yaml:2: consumers[\"a\"].retry.delays[0]: the retry "
                                  "queue \"a.queue.retry.1s\" of this delay is the queue of "
                                  "consumers[\"b\"] (line 3); choose another queue name"));
}

TEST_CASE("retry config: the implicit unroutable consumers get no retry") {
  absl::StatusOr<Config> c = LoadYamlText(R"(producers:
  out: { handle: out.ae }
consumers:
  in: { retry: { delays: [1s] } }
)",
                                          "u.yaml");
  INFO(c.status().message());
  REQUIRE(c.ok());
  const Consumer* u = c->FindConsumer("out.unroutable");
  REQUIRE(u != nullptr);
  CHECK_FALSE(u->retry.enabled());
  // Hand-built with retry (the loader never makes one): still no retry queue.
  Config config;
  Consumer unroutable = MakeConsumer("out.unroutable", {seconds(1)});
  unroutable.unroutable = true;
  unroutable.exchange = "out.ae";
  unroutable.queue = "out.ae.queue";
  unroutable.dead_letter = false;
  config.consumers.push_back(unroutable);
  const TopologyPlan plan = PlanTopology(config);
  REQUIRE(plan.queues.size() == 1);
  CHECK(plan.queues[0].name == "out.ae.queue");
}

TEST_CASE("retry config: RetryQueue names the delay in its largest whole unit") {
  const Consumer c = MakeConsumer("usdt.transfer", {});
  CHECK(RetryQueue(c, milliseconds(500)) == "usdt.transfer.queue.retry.500ms");
  CHECK(RetryQueue(c, milliseconds(1500)) == "usdt.transfer.queue.retry.1500ms");
  CHECK(RetryQueue(c, seconds(10)) == "usdt.transfer.queue.retry.10s");
  CHECK(RetryQueue(c, seconds(90)) == "usdt.transfer.queue.retry.90s");
  CHECK(RetryQueue(c, milliseconds(60000)) == "usdt.transfer.queue.retry.1m");
  CHECK(RetryQueue(c, minutes(150)) == "usdt.transfer.queue.retry.150m");
  CHECK(RetryQueue(c, hours(2)) == "usdt.transfer.queue.retry.2h");
  CHECK(RetryQueue(c, hours(168)) == "usdt.transfer.queue.retry.168h");
  // The consumer's queue, as configured or defaulted.
  Consumer named = MakeConsumer("otc.order", {});
  named.exchange = "otc";
  CHECK(RetryQueue(named, seconds(1)) == "otc.queue.retry.1s");
  named.queue = "otc.orders";
  CHECK(RetryQueue(named, seconds(1)) == "otc.orders.retry.1s");
}

TEST_CASE("retry config: RetryQueueSpec is a TTL queue of the consumer queue's type") {
  Consumer c = MakeConsumer("a", {});
  const QueueSpec q = RetryQueueSpec(c, seconds(10));
  CHECK(q.name == "a.queue.retry.10s");
  CHECK(q.type == QueueType::kQuorum);
  REQUIRE(q.message_ttl_ms.has_value());
  CHECK(*q.message_ttl_ms == 10000);
  CHECK(q.retry_for == "a.queue");
  // retry_for alone says where expired messages go.
  CHECK(q.dead_letter_exchange.empty());
  CHECK(q.dead_letter_routing_key.empty());
  CHECK_FALSE(q.delivery_limit.has_value());
  CHECK_FALSE(q.single_active);
  CHECK_FALSE(q.exclusive);
  c.queue_type = QueueType::kClassic;
  CHECK(RetryQueueSpec(c, milliseconds(100)).type == QueueType::kClassic);
}

TEST_CASE("retry config: PlanTopology adds one unbound retry queue per delay") {
  Config config;
  Consumer q = MakeConsumer("usdt.transfer", {seconds(1), seconds(10), minutes(1), seconds(10),
                                              milliseconds(1000), minutes(10)});
  q.max_deliveries = 5;
  q.single_active = true;
  config.consumers.push_back(q);
  Consumer c = MakeConsumer("otc", {milliseconds(1500)});
  c.queue_type = QueueType::kClassic;
  config.consumers.push_back(c);
  config.consumers.push_back(MakeConsumer("plain", {}));
  const TopologyPlan plan = PlanTopology(config);

  std::vector<std::string> names;
  for (const QueueSpec& spec : plan.queues) names.push_back(spec.name);
  // Deduplicated (10s twice, 1000ms = 1s), sorted with the rest.
  CHECK(names == std::vector<std::string>{
                     "otc.queue", "otc.queue.dead", "otc.queue.retry.1500ms", "plain.queue",
                     "plain.queue.dead", "usdt.transfer.queue", "usdt.transfer.queue.dead",
                     "usdt.transfer.queue.retry.10m", "usdt.transfer.queue.retry.10s",
                     "usdt.transfer.queue.retry.1m", "usdt.transfer.queue.retry.1s"});
  const struct {
    const char* name;
    uint64_t ttl;
  } expected[] = {{"usdt.transfer.queue.retry.1s", 1000},
                  {"usdt.transfer.queue.retry.10s", 10000},
                  {"usdt.transfer.queue.retry.1m", 60000},
                  {"usdt.transfer.queue.retry.10m", 600000}};
  for (const auto& e : expected) {
    INFO(e.name);
    const QueueSpec* r = FindQueue(plan, e.name);
    REQUIRE(r != nullptr);
    CHECK(r->type == QueueType::kQuorum);
    CHECK(r->message_ttl_ms == e.ttl);
    CHECK(r->retry_for == "usdt.transfer.queue");
    CHECK(r->dead_letter_exchange.empty());
    // The consumer queue's own arguments are not the retry queue's.
    CHECK_FALSE(r->delivery_limit.has_value());
    CHECK_FALSE(r->single_active);
  }
  const QueueSpec* classic = FindQueue(plan, "otc.queue.retry.1500ms");
  REQUIRE(classic != nullptr);
  CHECK(classic->type == QueueType::kClassic);
  CHECK(classic->message_ttl_ms == 1500);
  CHECK(classic->retry_for == "otc.queue");
  // The consumer queues themselves are unchanged by retry.
  const QueueSpec* main = FindQueue(plan, "usdt.transfer.queue");
  REQUIRE(main != nullptr);
  CHECK_FALSE(main->message_ttl_ms.has_value());
  CHECK(main->retry_for.empty());
  CHECK(main->dead_letter_exchange == "usdt.transfer.dlx");
  // No bindings: retry queues are published to through the default exchange.
  for (const BindingSpec& b : plan.bindings) {
    INFO(b.queue);
    CHECK(b.queue.find(".retry.") == std::string::npos);
  }
  CHECK(plan.bindings.size() == 6);  // 3 business bindings + 3 dead-letter ones
}

TEST_CASE("retry config: Describe shows the retry policy and the retry queues") {
  absl::StatusOr<Config> c = LoadYamlText(R"(consumers:
  usdt.transfer: { retry: { delays: [1s, 10s, 1s], max_attempts: 5 } }
  cl: { queue_type: classic, retry: { delays: 1500ms } }
  plain: {}
)",
                                          "d.yaml");
  INFO(c.status().message());
  REQUIRE(c.ok());
  const std::string text = Describe(*c);
  INFO(text);
  CHECK_THAT(text, Catch::Contains("      retry: delays [1s, 10s, 1s], max_attempts 5 (then "
                                   "usdt.transfer.queue.dead), retry queues "
                                   "usdt.transfer.queue.retry.1s, "
                                   "usdt.transfer.queue.retry.10s\n"));
  CHECK_THAT(text, Catch::Contains("      retry: delays [1500ms], max_attempts 2 (then "
                                   "cl.queue.dead), retry queues cl.queue.retry.1500ms\n"));
  CHECK_THAT(text, Catch::Contains("      retry: none (nack with requeue requeues at once)\n"));
  CHECK_THAT(text, Catch::Contains(
                       "    usdt.transfer.queue.retry.10s quorum x-message-ttl=10000 "
                       "x-dead-letter-exchange=\"\" x-dead-letter-routing-key=usdt.transfer.queue "
                       "x-dead-letter-strategy=at-least-once x-overflow=reject-publish\n"));
  CHECK_THAT(text, Catch::Contains("    cl.queue.retry.1500ms classic x-message-ttl=1500 "
                                   "x-dead-letter-exchange=\"\" "
                                   "x-dead-letter-routing-key=cl.queue\n"));
  CHECK_THAT(text, !Catch::Contains("plain.queue.retry"));
}

// The declaration's arguments, as a conflict reports them ("the config
// declares: {...}"), and the hint for a retry queue.
std::string ConflictFor(const TopologyPlan& plan, const std::string& queue) {
  const size_t base = plan.exchanges.size();
  for (size_t i = 0; i < plan.queues.size(); ++i) {
    if (plan.queues[i].name != queue) continue;
    const absl::Status s = amqp::TopologyStepError(
        plan, base + i,
        absl::FailedPreconditionError(
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '" + queue +
            "' in vhost '/': received the value '10000' of type 'long' but current is the value "
            "'20000' of type 'long'"));
    CHECK(amqp::IsTopologyConflict(s));
    return std::string(s.message());
  }
  FAIL("no queue " << queue);
  return "";
}

TEST_CASE("retry config: a retry queue is declared with TTL and dead-lettering back") {
  Config config;
  config.consumers.push_back(MakeConsumer("a", {seconds(10)}));
  Consumer classic = MakeConsumer("b", {seconds(10)});
  classic.queue_type = QueueType::kClassic;
  config.consumers.push_back(classic);
  const TopologyPlan plan = PlanTopology(config);

  const std::string quorum = ConflictFor(plan, "a.queue.retry.10s");
  CHECK_THAT(quorum, Catch::Contains("the config declares: {durable: true, x-queue-type: quorum, "
                                     "x-message-ttl: 10000, x-dead-letter-exchange: \"\", "
                                     "x-dead-letter-routing-key: a.queue, "
                                     "x-dead-letter-strategy: at-least-once, "
                                     "x-overflow: reject-publish}"));
  // The fix for a retry queue: it holds only messages on their way back.
  CHECK_THAT(quorum, Catch::Contains("(a retry queue: it only holds messages waiting to return "
                                     "to 'a.queue'; wait until it is empty, or move its messages "
                                     "to 'a.queue' first, then delete it"));
  const std::string cl = ConflictFor(plan, "b.queue.retry.10s");
  CHECK_THAT(cl, Catch::Contains("the config declares: {durable: true, x-message-ttl: 10000, "
                                 "x-dead-letter-exchange: \"\", "
                                 "x-dead-letter-routing-key: b.queue}"));
  // The consumer queue keeps its own hint.
  const std::string main = ConflictFor(plan, "a.queue");
  CHECK_THAT(main, !Catch::Contains("a retry queue"));
}

}  // namespace
}  // namespace mqs::config
