// Errors: unknown businesses, unroutable messages, bad delivery ids.
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_CASE(
    "integration: unknown business: Publish is INVALID_ARGUMENT, PublishStream answers "
    "FAILED and goes on") {
  IntegrationTest t("unknown");
  const std::string biz = t.Business("known");
  const std::string unknown = biz + ".nope";
  Daemon& d = t.StartDaemon({{.name = biz}});

  pb::PublishResult res;
  grpc::Status s = PublishOne(d.stub(), MakePublish(unknown, "u-1", 1), &res);
  INFO(StatusText(s));
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(s.error_message(), unknown));

  // Stream: the unknown business fails alone; requests around it still go through.
  std::vector<pb::PublishRequest> reqs = {
      MakePublish(biz, biz + "-1", 1), MakePublish(unknown, "u-2", 2),
      MakePublish(biz, biz + "-3", 3), MakePublish(unknown, "u-4", 4),
      MakePublish(biz, biz + "-5", 5)};
  PublishStreamOutcome out = PublishStream(d.stub(), reqs, 30s);
  INFO("stream: " << StatusText(out.status));
  CHECK(out.status.ok());
  std::map<uint64_t, pb::PublishResult> by_seq;
  for (const auto& r : out.results) {
    CHECK(by_seq.emplace(r.sequence(), r).second);  // one result per sequence
  }
  REQUIRE(by_seq.size() == 5);
  for (uint64_t seq : {1, 3, 5}) {
    INFO(ResultText(by_seq[seq]));
    CHECK(by_seq[seq].status() == pb::PublishResult::CONFIRMED);
  }
  for (uint64_t seq : {2, 4}) {
    INFO(ResultText(by_seq[seq]));
    CHECK(by_seq[seq].status() == pb::PublishResult::FAILED);
    CHECK(Contains(by_seq[seq].error(), unknown));
  }

  // Subscribe to an unknown business: the stream ends INVALID_ARGUMENT.
  Subscriber sub(d.stub(), {.business = unknown, .prefetch = 1, .consumer_name = "x"});
  auto end = sub.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end->error_message(), unknown));
  CHECK(sub.count() == 0);
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_CASE("integration: a message no queue is bound for is UNROUTABLE") {
  IntegrationTest t("unroutable");
  const std::string lonely = t.Business("lonely");  // producer only: nothing bound
  const std::string biz = t.Business("bound");
  Daemon& d = t.StartDaemon({{.name = lonely, .consumer = false}, {.name = biz}});

  pb::PublishResult res;
  grpc::Status s = PublishOne(d.stub(), MakePublish(lonely, "lonely-1", 11), &res);
  INFO(StatusText(s) << " / " << ResultText(res));
  REQUIRE(s.ok());
  CHECK(res.status() == pb::PublishResult::UNROUTABLE);
  CHECK(res.sequence() == 11);
  CHECK(res.message_id() == "lonely-1");

  // On a stream, each gets its own verdict.
  PublishStreamOutcome out = PublishStream(
      d.stub(), {MakePublish(lonely, "lonely-2", 1), MakePublish(biz, "bound-2", 2)}, 30s);
  CHECK(out.status.ok());
  REQUIRE(out.results.size() == 2);
  for (const auto& r : out.results) {
    INFO(ResultText(r));
    CHECK(r.status() ==
          (r.sequence() == 1 ? pb::PublishResult::UNROUTABLE : pb::PublishResult::CONFIRMED));
  }
}

TEST_CASE(
    "integration: acking an unknown or settled delivery id ends only that stream, "
    "INVALID_ARGUMENT") {
  IntegrationTest t("badack");
  const std::string biz = t.Business("acks");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});

  Subscriber bad(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "bad"});
  Subscriber good(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "good"});
  REQUIRE(WaitForQueue(t.admin(), queue, 2u, std::nullopt));

  CHECK(bad.Ack(987654321));
  auto end = bad.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end->error_message(), "987654321"));

  // The other stream on the same daemon still works.
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));
  PublishConfirmed(d.stub(), biz, 1, biz);
  REQUIRE(good.WaitForCount(1, 10s));
  const pb::Delivery got = good.deliveries()[0];
  CHECK(good.Ack(got.delivery_id()));
  CHECK_FALSE(good.ended());

  // Acking it a second time: settled, so the stream ends naming the id.
  CHECK(good.Ack(got.delivery_id()));
  auto end2 = good.WaitEnded(10s);
  REQUIRE(end2.has_value());
  INFO(StatusText(*end2));
  CHECK(end2->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end2->error_message(), std::to_string(got.delivery_id())));
  // The first ack counted: the message does not come back.
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_CASE("integration: a Subscribe stream that does not start with open is refused") {
  IntegrationTest t("noopen");
  const std::string biz = t.Business("x");
  Daemon& d = t.StartDaemon({{.name = biz}});
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  auto stream = d.stub().Subscribe(&ctx);
  pb::SubscribeRequest ack;
  ack.mutable_ack()->set_delivery_id(1);
  stream->Write(ack);
  pb::Delivery unexpected;
  CHECK_FALSE(stream->Read(&unexpected));
  grpc::Status s = stream->Finish();
  INFO(StatusText(s));
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace mqs::it
