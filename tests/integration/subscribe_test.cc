// Subscribe semantics: prefetch, dropping a stream with unacked deliveries, nack.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

std::set<std::string> AsSet(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

// Leaves gracefully (the daemon reads every ack sent so far), then checks that
// the queue is empty and that `sub` got exactly `count` deliveries.
void LeaveSettled(IntegrationTest& t, const std::string& queue, Subscriber& sub, size_t count) {
  const grpc::Status left = sub.Leave();
  INFO(StatusText(left));
  CHECK(left.ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
  CHECK(sub.count() == count);
}

TEST_CASE(
    "integration: a dropped stream's unacked deliveries go to another subscriber, "
    "redelivered") {
  IntegrationTest t("drop");
  const std::string biz = t.Business("work");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});

  // 20 messages wait in the queue before anyone subscribes.
  const auto published = PublishConfirmed(d.stub(), biz, 20, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 20u));

  auto a = std::make_unique<Subscriber>(
      d.stub(), Subscriber::Options{.business = biz, .prefetch = 10, .consumer_name = "a"});
  REQUIRE(a->WaitForCount(10, 10s));
  // Prefetch 10 holds: the other 10 stay ready in the queue.
  CHECK(WaitForQueue(t.admin(), queue, 1u, 10u));
  const auto a_deliveries = a->deliveries();
  REQUIRE(a_deliveries.size() == 10);
  for (const auto& d : a_deliveries) CHECK_FALSE(d.redelivered());
  const auto a_ids = AsSet(MessageIds(a_deliveries));
  CHECK(a_ids.size() == 10);

  // B takes the 10 that were still ready and acks them.
  Subscriber b(d.stub(), {.business = biz, .prefetch = 50, .consumer_name = "b"});
  REQUIRE(b.WaitForCount(10, 10s));
  auto first = b.deliveries();
  for (const auto& d : first) {
    CHECK_FALSE(d.redelivered());
    CHECK(a_ids.count(d.message_id()) == 0);
    CHECK(b.Ack(d.delivery_id()));
  }

  // A drops its stream without acking anything.
  a->Cancel();
  auto a_end = a->WaitEnded(10s);
  REQUIRE(a_end.has_value());
  CHECK(a_end->error_code() == grpc::StatusCode::CANCELLED);

  // B gets A's 10, marked redelivered.
  REQUIRE(b.WaitForCount(20, 15s));
  auto all = b.deliveries();
  std::vector<pb::Delivery> second(all.begin() + 10, all.end());
  std::set<std::string> redelivered_ids;
  for (const auto& d : second) {
    INFO(d.ShortDebugString());
    CHECK(d.redelivered());
    CHECK(d.delivery_count() >= 1);  // quorum queues keep x-delivery-count
    redelivered_ids.insert(d.message_id());
    CHECK(b.Ack(d.delivery_id()));
  }
  CHECK(redelivered_ids == a_ids);

  // Nothing lost, nothing twice: B saw each of the 20 exactly once.
  const auto b_ids = MessageIds(all);
  CHECK(AsSet(b_ids).size() == b_ids.size());
  CHECK(AsSet(b_ids) == AsSet(published));

  // B's acks settled everything: after B leaves, the queue is empty.
  LeaveSettled(t, queue, b, 20);
}

TEST_CASE("integration: nack with requeue redelivers, nack without requeue drops") {
  IntegrationTest t("nack");
  const std::string biz = t.Business("nack");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "n"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  const auto ids = PublishConfirmed(d.stub(), biz, 2, biz);
  REQUIRE(sub.WaitForCount(2, 10s));
  auto first = sub.deliveries();
  for (const auto& d : first) {
    CHECK_FALSE(d.redelivered());
    // ids[0]: requeue; ids[1]: drop (no dead-letter exchange configured).
    CHECK(sub.Nack(d.delivery_id(), d.message_id() == ids[0]));
  }
  REQUIRE(sub.WaitForCount(3, 10s));
  const auto again = sub.deliveries()[2];
  INFO(again.ShortDebugString());
  CHECK(again.message_id() == ids[0]);
  CHECK(again.redelivered());
  CHECK(again.delivery_count() >= 1);
  CHECK(sub.Ack(again.delivery_id()));

  // The dropped one never comes back and the acked one is settled.
  LeaveSettled(t, queue, sub, 3);
}

TEST_CASE(
    "integration: ack and nack with multiple settle every lower unacked delivery of the "
    "stream") {
  IntegrationTest t("multi");
  const std::string biz = t.Business("multi");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "m"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  const auto ids = PublishConfirmed(d.stub(), biz, 6, biz);
  REQUIRE(sub.WaitForCount(6, 10s));
  const auto first = sub.deliveries();
  REQUIRE(MessageIds(first) == ids);  // one consumer: queue order

  // Ack up to the third: the first three are settled by one request. Nack up
  // to the fifth with requeue: the fourth and fifth come back, the sixth stays.
  REQUIRE(sub.Ack(first[2].delivery_id(), /*multiple=*/true));
  REQUIRE(sub.Nack(first[4].delivery_id(), /*requeue=*/true, /*multiple=*/true));
  REQUIRE(sub.WaitForCount(8, 10s));
  const auto all = sub.deliveries();
  std::vector<std::string> again;
  for (size_t i = 6; i < all.size(); ++i) {
    INFO(all[i].ShortDebugString());
    CHECK(all[i].redelivered());
    again.push_back(all[i].message_id());
  }
  CHECK(AsSet(again) == AsSet({ids[3], ids[4]}));

  // An id a multiple ack already settled is unknown now, as in AMQP: the
  // stream ends INVALID_ARGUMENT and returns what it still holds (the sixth
  // and the two redelivered), so the first three were acked and nothing else.
  REQUIRE(sub.Ack(first[1].delivery_id()));
  auto end = sub.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(end->error_message().find("already settled") != std::string::npos);
  CHECK(WaitForQueue(t.admin(), queue, 0u, 3u));
  CHECK(sub.count() == 8);

  // A second stream takes those three and settles them with one multiple ack.
  Subscriber next(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "n"});
  REQUIRE(next.WaitForCount(3, 10s));
  const auto rest = next.deliveries();
  CHECK(AsSet(MessageIds(rest)) == AsSet({ids[3], ids[4], ids[5]}));
  const uint64_t last =
      std::max_element(rest.begin(), rest.end(), [](const auto& a, const auto& b) {
        return a.delivery_id() < b.delivery_id();
      })->delivery_id();
  REQUIRE(next.Ack(last, /*multiple=*/true));
  LeaveSettled(t, queue, next, 3);
}

TEST_CASE(
    "integration: a stream that ends right after acking: the acked stay settled, the rest go "
    "to another subscriber") {
  // The ending stream's channel lingers a moment after its last ack (quorum
  // queues can drop acks that arrive just before a channel close): its
  // consumer is cancelled at once and the unacked come back when it closes.
  IntegrationTest t("linger");
  const std::string biz = t.Business("linger");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});  // a quorum queue
  const auto ids = PublishConfirmed(d.stub(), biz, 200, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 200u));

  auto a = std::make_unique<Subscriber>(
      d.stub(), Subscriber::Options{.business = biz, .prefetch = 200, .consumer_name = "a"});
  REQUIRE(a->WaitForCount(200, 10s));
  const auto got = a->deliveries();
  REQUIRE(MessageIds(got) == ids);
  // Ack the first 150 one by one, then leave at once, holding the other 50.
  for (size_t i = 0; i < 150; ++i) REQUIRE(a->Ack(got[i].delivery_id()));
  const grpc::Status left = a->Leave();
  INFO(StatusText(left));
  CHECK(left.ok());

  Subscriber b(d.stub(), {.business = biz, .prefetch = 200, .consumer_name = "b"});
  REQUIRE(b.WaitForCount(50, 10s));
  const auto again = b.deliveries();
  for (const auto& dl : again) {
    CHECK(dl.redelivered());
    REQUIRE(b.Ack(dl.delivery_id()));
  }
  CHECK(AsSet(MessageIds(again)) == AsSet({ids.begin() + 150, ids.end()}));
  // Nothing acked came back: the queue ends empty and b got only the 50.
  LeaveSettled(t, queue, b, 50);
}

TEST_CASE(
    "integration: many streams ending at once right after acking leave channel numbers for "
    "new streams") {
  // Each ending stream's channel lingers after its last ack; a new stream
  // must still find a free channel number at once.
  IntegrationTest t("churn");
  const std::string biz = t.Business("churn");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  constexpr size_t kStreams = 48;
  std::vector<std::unique_ptr<Subscriber>> subs;
  for (size_t i = 0; i < kStreams; ++i) {
    subs.push_back(std::make_unique<Subscriber>(
        d.stub(), Subscriber::Options{
                      .business = biz, .prefetch = 1, .consumer_name = "c" + std::to_string(i)}));
  }
  REQUIRE(WaitForQueue(t.admin(), queue, static_cast<uint32_t>(kStreams), std::nullopt));
  // Prefetch 1 each: every stream holds exactly one of these.
  PublishConfirmed(d.stub(), biz, kStreams, biz);
  for (auto& sub : subs) {
    REQUIRE(sub->WaitForCount(1, 10s));
    REQUIRE(sub->Ack(sub->deliveries()[0].delivery_id()));
  }
  for (auto& sub : subs) sub->Cancel();  // all end within a few ms of their acks
  for (auto& sub : subs) REQUIRE(sub->WaitEnded(10s).has_value());

  Subscriber next(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "next"});
  const auto ids = PublishConfirmed(d.stub(), biz, 1, biz + "-next");
  REQUIRE(next.WaitForCount(1, 10s));
  CHECK(next.deliveries()[0].message_id() == ids[0]);
  REQUIRE(next.Ack(next.deliveries()[0].delivery_id()));
  LeaveSettled(t, queue, next, 1);
}

}  // namespace
}  // namespace mqs::it
