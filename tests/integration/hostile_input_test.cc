// What another AMQP client on the broker can send the daemon's consumers:
// messages the API never produces. The daemon must deliver or refuse them and
// keep serving, never crash (a crash would redeliver the same message to the
// restarted daemon and crash it again).
#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

TEST_CASE(
    "integration: a header nested 25,000 deep from another AMQP client is delivered (rendered "
    "16 deep), retried, and the daemon keeps serving, also under ulimit -s 1024") {
  IntegrationTest t("hostile");
  const std::string biz = t.Business("hostile");
  const std::string queue = biz + ".queue";
  t.CleanUpQueue(queue + ".retry.200ms");
  // A 1 MiB stack limit (ulimit -s 1024), which the daemon inherits: its
  // threads must not take their stack size from it (thread_stack.h).
  rlimit before{};
  REQUIRE(getrlimit(RLIMIT_STACK, &before) == 0);
  rlimit small = before;
  small.rlim_cur = rlim_t{1024} * 1024;
  REQUIRE(setrlimit(RLIMIT_STACK, &small) == 0);
  Daemon& d = t.StartDaemon({{.name = biz, .retry = "{delays: [200ms]}"}});
  REQUIRE(setrlimit(RLIMIT_STACK, &before) == 0);
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "h"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  // 25,000 nested arrays: ~125 KiB, what fits in one 128 KiB frame.
  REQUIRE(t.admin().PublishNested(queue, "deep-1", 25000));
  REQUIRE(sub.WaitForCount(1, 20s));
  const pb::Delivery first = sub.deliveries()[0];
  CHECK(first.message_id() == "deep-1");
  REQUIRE(first.headers().contains("deep"));
  // append, not operator+: g++ 12 -O2 warns (-Warray-bounds) on the latter.
  CHECK(first.headers().at("deep") == std::string(16, '[').append("[...]").append(16, ']'));
  CHECK(first.attempt() == 1);

  // A delayed retry publishes the message again with its headers as they came.
  REQUIRE(sub.Nack(first.delivery_id(), /*requeue=*/true));
  REQUIRE(sub.WaitForCount(2, 20s));
  const pb::Delivery again = sub.deliveries()[1];
  CHECK(again.message_id() == "deep-1");
  CHECK(again.attempt() == 2);
  CHECK(again.headers().at("deep") == first.headers().at("deep"));
  REQUIRE(sub.Ack(again.delivery_id()));

  // Still serving: a normal message goes through, the daemon never exited.
  const auto ids = PublishConfirmed(d.stub(), biz, 1, "after");
  REQUIRE(ids.size() == 1);
  REQUIRE(sub.WaitForCount(3, 20s));
  CHECK(sub.deliveries()[2].message_id() == ids[0]);
  CHECK(sub.Ack(sub.deliveries()[2].delivery_id()));
  CHECK(d.Running());
}

TEST_CASE(
    "integration: a message id and header that are not UTF-8 (from another AMQP client) reach "
    "the client as U+FFFD, and the stream carries on") {
  IntegrationTest t("notutf8");
  const std::string biz = t.Business("notutf8");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "u"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  // Latin-1, as a legacy producer writes it; protobuf clients refuse a
  // Delivery whose string fields are not UTF-8 (the stream would end).
  REQUIRE(t.admin().PublishBytes(queue, "caf\xE9-1", "note\xFF", "na\xEFve"));
  REQUIRE(sub.WaitForCount(1, 20s));
  const std::string fffd = "\xEF\xBF\xBD";
  const pb::Delivery got = sub.deliveries()[0];
  CHECK(got.message_id() == "caf" + fffd + "-1");
  CHECK(got.headers().contains("note" + fffd));
  CHECK(got.headers().at("note" + fffd) == "na" + fffd + "ve");
  REQUIRE(sub.Ack(got.delivery_id()));

  const auto ids = PublishConfirmed(d.stub(), biz, 1, "after");
  REQUIRE(ids.size() == 1);
  REQUIRE(sub.WaitForCount(2, 20s));
  CHECK(sub.deliveries()[1].message_id() == ids[0]);
  CHECK(sub.Ack(sub.deliveries()[1].delivery_id()));
}

}  // namespace
}  // namespace mqs::it
