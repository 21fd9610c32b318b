// Dead-letter inspection and replay (issue 13): ListDeadLetters shows what a
// business's dead-letter queue holds without consuming it; `mqctl dlq
// replay` moves messages back to the business's exchange with confirms.
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "harness.h"
#include "nlohmann/json.hpp"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

grpc::Status List(Daemon& d, const std::string& business, pb::ListDeadLettersResponse* out,
                  uint32_t max = 0) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 20s);
  pb::ListDeadLettersRequest req;
  req.set_business(business);
  req.set_max(max);
  return d.stub().ListDeadLetters(&ctx, req, out);
}

CommandResult Mqctl(Daemon& d, std::vector<std::string> args) {
  std::vector<std::string> argv{MqctlPath(), "--address", d.address()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, 60s);
}

TEST_CASE(
    "integration: dead letters are listed without being consumed, and mqctl dlq replay moves "
    "them back one by id, then the rest, each consumed once") {
  IntegrationTest t("dlq");
  const std::string biz = t.Business("dlq");
  const std::string plain = t.Business("nodlq");
  const std::string queue = biz + ".queue";
  const std::string dead = queue + ".dead";
  t.CleanUpQueue(dead);
  t.CleanUpExchange(biz + ".dlx");
  // max_deliveries 1: a nack without requeue dead-letters at once.
  Daemon& d =
      t.StartDaemon({{.name = biz, .max_deliveries = 1}, {.name = plain, .dead_letter = false}});
  REQUIRE(WaitForQueue(t.admin(), dead, 0u, 0u));

  // Three messages, each nacked without requeue by a subscriber.
  std::vector<std::string> ids;
  {
    std::atomic<Subscriber*> self{nullptr};
    Subscriber::Options options{.business = biz, .prefetch = 10, .consumer_name = "nacker"};
    options.on_delivery = [&](const pb::Delivery& x) {
      if (Subscriber* s = self.load()) s->Nack(x.delivery_id(), /*requeue=*/false);
    };
    Subscriber sub(d.stub(), options);
    self = &sub;
    REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));
    for (int i = 0; i < 3; ++i) {
      ids.push_back(biz + "-" + std::to_string(i));
      pb::PublishRequest req = MakePublish(biz, ids.back(), i + 1);
      req.set_routing_key("orders.created." + std::to_string(i));
      (*req.mutable_headers())["tenant"] = "acme";
      pb::PublishResult result;
      const grpc::Status s = PublishOne(d.stub(), req, &result);
      INFO(StatusText(s) << " " << ResultText(result));
      REQUIRE(s.ok());
      REQUIRE(result.status() == pb::PublishResult::CONFIRMED);
    }
    REQUIRE(WaitForQueue(t.admin(), dead, 0u, 3u, 20s));
    REQUIRE(sub.count() == 3);
    const grpc::Status left = sub.Leave();
    INFO(StatusText(left));
    CHECK(left.ok());
  }

  {
    pb::ListDeadLettersResponse listed;
    const grpc::Status s = List(d, biz, &listed);
    INFO(StatusText(s));
    REQUIRE(s.ok());
    CHECK(listed.total() == 3);
    REQUIRE(listed.messages_size() == 3);
    std::set<std::string> seen;
    for (const pb::DeadLetter& letter : listed.messages()) {
      INFO(letter.ShortDebugString());
      const std::string& id = letter.message().message_id();
      seen.insert(id);
      CHECK(letter.reason() == "rejected");
      CHECK(letter.queue() == queue);
      CHECK(letter.count() == 1);
      CHECK(letter.original_exchange() == biz);
      CHECK(letter.original_routing_key() == "orders.created." + id.substr(id.size() - 1));
      CHECK(letter.dead_lettered_at_ms() > 0);
      CHECK(letter.message().payload() == "payload");
      CHECK(letter.message().business() == biz);
      CHECK(letter.message().headers().at("tenant") == "acme");
    }
    CHECK(seen == std::set<std::string>(ids.begin(), ids.end()));
    // Nothing was consumed: all three are back in the dead-letter queue.
    CHECK(WaitForQueue(t.admin(), dead, 0u, 3u));

    // --max, and mqctl's JSON lines.
    pb::ListDeadLettersResponse one;
    REQUIRE(List(d, biz, &one, 1).ok());
    CHECK(one.messages_size() == 1);
    CHECK(one.total() == 3);
    CHECK(WaitForQueue(t.admin(), dead, 0u, 3u));
    const CommandResult r = Mqctl(d, {"dlq", "list", biz});
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    const std::vector<std::string> lines = OutputLines(r.out);
    for (const std::string& line : lines) {
      const auto j = nlohmann::json::parse(line);
      CHECK(j["reason"] == "rejected");
      CHECK(j["message"]["payload"] == "payload");
    }
    CHECK(lines.size() == 3);
    CHECK(WaitForQueue(t.admin(), dead, 0u, 3u));
  }

  // Replay: a subscriber that acks gets each replayed message once.
  Subscriber sub(d.stub(),
                 {.business = biz, .prefetch = 10, .consumer_name = "replayed", .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  CommandResult r = Mqctl(d, {"dlq", "replay", biz, "--message-id", ids[1]});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["replayed"] == 1);
  CHECK(j["message_ids"] == nlohmann::json::array({ids[1]}));
  CHECK(j["remaining"] == 2);
  REQUIRE(sub.WaitForCount(1, 15s));
  {
    const pb::Delivery x = sub.deliveries().at(0);
    INFO(x.ShortDebugString());
    CHECK(x.message_id() == ids[1]);
    CHECK(x.routing_key() == "orders.created.1");
    CHECK(x.exchange() == biz);
    CHECK(x.payload() == "payload");
    CHECK(x.headers().at("tenant") == "acme");
    CHECK(x.headers().at("x-mq-sidecar-replayed") == "1");
    CHECK(x.headers().count("x-death") == 1);
  }
  REQUIRE(WaitForQueue(t.admin(), dead, 0u, 2u));

  r = Mqctl(d, {"dlq", "replay", biz});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  j = nlohmann::json::parse(r.out);
  CHECK(j["replayed"] == 2);
  CHECK(j["remaining"] == 0);
  REQUIRE(sub.WaitForCount(3, 15s));
  REQUIRE(WaitForQueue(t.admin(), dead, 0u, 0u));
  // Settled, nothing left anywhere: each replayed message came exactly once.
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, 0u));
  std::map<std::string, int> times;
  for (const auto& id : MessageIds(sub.deliveries())) ++times[id];
  CHECK(times == std::map<std::string, int>{{ids[0], 1}, {ids[1], 1}, {ids[2], 1}});
  pb::ListDeadLettersResponse empty;
  REQUIRE(List(d, biz, &empty).ok());
  CHECK(empty.total() == 0);
  CHECK(empty.messages_size() == 0);

  // A message id that is not there: NOT_FOUND, nothing replayed (exit 1).
  r = Mqctl(d, {"dlq", "replay", biz, "--message-id", "no-such-id"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("NOT_FOUND"));

  const grpc::Status left = sub.Leave();
  INFO(StatusText(left));
  CHECK(left.ok());

  // A business without a dead-letter queue, and one that is not configured.
  pb::ListDeadLettersResponse none;
  grpc::Status s = List(d, plain, &none);
  CHECK(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK_THAT(s.error_message(), Catch::Contains(plain));
  r = Mqctl(d, {"dlq", "replay", plain});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("FAILED_PRECONDITION"));
  s = List(d, "not-configured", &none);
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_CASE(
    "integration: a dead letter whose copy no queue takes stays in the dead-letter queue "
    "(returned, requeued, FAILED_PRECONDITION)") {
  IntegrationTest t("dlqret");
  const std::string biz = t.Business("dlqret");
  const std::string queue = biz + ".queue";
  const std::string dead = queue + ".dead";
  t.CleanUpQueue(dead);
  t.CleanUpExchange(biz + ".dlx");
  Daemon& d = t.StartDaemon({{.name = biz, .max_deliveries = 1}});
  REQUIRE(WaitForQueue(t.admin(), dead, 0u, 0u));
  {
    std::atomic<Subscriber*> self{nullptr};
    Subscriber::Options options{.business = biz, .prefetch = 10, .consumer_name = "nacker"};
    options.on_delivery = [&](const pb::Delivery& x) {
      if (Subscriber* s = self.load()) s->Nack(x.delivery_id(), /*requeue=*/false);
    };
    Subscriber sub(d.stub(), options);
    self = &sub;
    REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));
    PublishConfirmed(d.stub(), biz, 2, biz);
    REQUIRE(WaitForQueue(t.admin(), dead, 0u, 2u, 20s));
    const grpc::Status left = sub.Leave();
    INFO(StatusText(left));
    CHECK(left.ok());
  }
  // Nothing consumes the business's queue now; without it the exchange
  // routes the copies nowhere.
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, std::nullopt));
  t.admin().DeleteQueue(queue);
  const CommandResult r = Mqctl(d, {"dlq", "replay", biz});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Catch::Contains("FAILED_PRECONDITION"));
  CHECK_THAT(r.err, Catch::Contains("unroutable"));
  CHECK(WaitForQueue(t.admin(), dead, 0u, 2u));
}

}  // namespace
}  // namespace mqs::it
