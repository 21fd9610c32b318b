// Publishing through the sidecar: volume over PublishStream with competing
// subscribers on two daemons, and a unary Publish's properties round trip.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "harness.h"
#include "recorded.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

TEST_CASE(
    "integration: 10000 messages via PublishStream reach 3 subscribers on 2 daemons "
    "exactly once") {
  constexpr int kMessages = 10000;
  IntegrationTest t("tenk");
  const std::string biz = t.Business("orders");
  const std::string queue = biz + ".queue";
  Daemon& d1 = t.StartDaemon({{.name = biz, .prefetch = 64}});
  Daemon& d2 = t.StartDaemon({{.name = biz, .prefetch = 64}});

  Subscriber s1(d1.stub(),
                {.business = biz, .prefetch = 64, .consumer_name = "s1", .auto_ack = true});
  Subscriber s2(d1.stub(),
                {.business = biz, .prefetch = 64, .consumer_name = "s2", .auto_ack = true});
  Subscriber s3(d2.stub(),
                {.business = biz, .prefetch = 64, .consumer_name = "s3", .auto_ack = true});
  // Publish only once the broker sees all three consumers, so each can get a share.
  REQUIRE(WaitUntil(
      [&] {
        auto q = t.admin().InspectQueue(queue);
        return q && q->consumers == 3;
      },
      10s));

  std::vector<pb::PublishRequest> requests;
  requests.reserve(kMessages);
  for (int i = 0; i < kMessages; ++i) {
    auto r = MakePublish(biz, biz + "-" + std::to_string(i), static_cast<uint64_t>(i) + 1,
                         "m" + std::to_string(i));
    r.set_routing_key("order.created");
    requests.push_back(std::move(r));
  }

  const auto started = Clock::now();
  PublishStreamOutcome out = PublishStream(d1.stub(), requests, 60s);
  INFO("PublishStream took "
       << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()
       << " ms");
  CHECK(out.status.ok());
  INFO("stream status: " << StatusText(out.status));
  REQUIRE(out.results.size() == kMessages);

  // Every sequence answered exactly once, CONFIRMED, with the request's message_id.
  std::vector<int> answered(kMessages + 1, 0);
  int bad_results = 0, unknown_sequences = 0;
  std::string first_bad, first_unknown;
  for (const auto& r : out.results) {
    const uint64_t seq = r.sequence();
    if (seq < 1 || seq > kMessages) {
      if (unknown_sequences++ == 0) first_unknown = ResultText(r);
      continue;
    }
    ++answered[seq];
    if (r.status() != pb::PublishResult::CONFIRMED ||
        r.message_id() != requests[seq - 1].message_id()) {
      if (bad_results++ == 0) first_bad = ResultText(r);
    }
  }
  std::string unanswered;
  for (int seq = 1; seq <= kMessages; ++seq) {
    if (answered[seq] != 1 && unanswered.size() < 200) {
      unanswered += std::to_string(seq) + "(x" + std::to_string(answered[seq]) + ") ";
    }
  }
  INFO("results for sequences never sent: " << unknown_sequences << ", first: " << first_unknown);
  INFO("bad results: " << bad_results << ", first: " << first_bad);
  INFO("sequences not answered exactly once: " << unanswered);
  CHECK(unknown_sequences == 0);
  CHECK(bad_results == 0);
  CHECK(unanswered.empty());

  // Subscribers ack as they receive; wait until all messages arrived.
  const bool all_arrived =
      WaitUntil([&] { return s1.count() + s2.count() + s3.count() >= kMessages; }, 30s);
  INFO("received s1=" << s1.count() << " s2=" << s2.count() << " s3=" << s3.count());
  REQUIRE(all_arrived);
  // Drained: nothing ready left in the queue.
  CHECK(WaitUntil(
      [&] {
        auto q = t.admin().InspectQueue(queue);
        return q && q->messages == 0;
      },
      10s));

  std::set<std::string> ids;
  int duplicates = 0, redelivered = 0, wrong_fields = 0;
  std::string first_wrong;
  for (Subscriber* s : {&s1, &s2, &s3}) {
    std::set<uint64_t> delivery_ids;
    for (const auto& d : s->deliveries()) {
      if (!ids.insert(d.message_id()).second) ++duplicates;
      if (!delivery_ids.insert(d.delivery_id()).second) {
        FAIL_CHECK("delivery_id " << d.delivery_id() << " repeated within one stream");
      }
      if (d.redelivered()) ++redelivered;
      const auto dash = d.message_id().rfind('-');
      const std::string n = dash == std::string::npos ? "?" : d.message_id().substr(dash + 1);
      if (d.business() != biz || d.exchange() != biz || d.routing_key() != "order.created" ||
          d.payload() != "m" + n) {
        if (wrong_fields++ == 0) first_wrong = d.ShortDebugString();
      }
    }
    CHECK(s->count() > 0);  // every subscriber got a share
    CHECK_FALSE(s->ended());
  }
  CHECK(duplicates == 0);
  CHECK(redelivered == 0);
  INFO("first delivery with wrong fields: " << first_wrong);
  CHECK(wrong_fields == 0);
  CHECK(ids.size() == static_cast<size_t>(kMessages));
  // Exactly the published message_ids (diff shown, not 10,000 ids).
  std::set<std::string> expected;
  for (const auto& r : requests) expected.insert(r.message_id());
  std::vector<std::string> missing, unexpected;
  std::set_difference(expected.begin(), expected.end(), ids.begin(), ids.end(),
                      std::back_inserter(missing));
  std::set_difference(ids.begin(), ids.end(), expected.begin(), expected.end(),
                      std::back_inserter(unexpected));
  if (missing.size() > 10) missing.resize(10);
  if (unexpected.size() > 10) unexpected.resize(10);
  CHECK(missing == std::vector<std::string>{});
  CHECK(unexpected == std::vector<std::string>{});

  // The acks were real: once all subscribers leave, nothing returns to the queue.
  for (Subscriber* s : {&s1, &s2, &s3}) {
    const grpc::Status left = s->Leave();
    INFO(StatusText(left));
    CHECK(left.ok());
  }
  CHECK(WaitUntil(
      [&] {
        auto q = t.admin().InspectQueue(queue);
        return q && q->consumers == 0;
      },
      10s));
  auto q = t.admin().InspectQueue(queue);
  REQUIRE(q.has_value());
  CHECK(q->messages == 0);
  CHECK(s1.count() + s2.count() + s3.count() == static_cast<size_t>(kMessages));
}

TEST_CASE("integration: unary Publish round-trips properties and generates message ids") {
  IntegrationTest t("unary");
  const std::string biz = t.Business("props");
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "props"});

  pb::PublishRequest req = MakePublish(biz, "fixed-id-1", 7, std::string("bin\0ary", 7));
  req.set_routing_key("a.b.c");
  req.set_correlation_id("corr-42");
  req.set_content_type("application/octet-stream");
  req.set_reply_to("task.result");
  (*req.mutable_headers())["tenant"] = "acme";
  (*req.mutable_headers())["trace-id"] = "abc123";
  const int64_t before_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
  pb::PublishResult res;
  grpc::Status s = PublishOne(d.stub(), req, &res);
  INFO(StatusText(s) << " / " << ResultText(res));
  REQUIRE(s.ok());
  CHECK(res.status() == pb::PublishResult::CONFIRMED);
  CHECK(res.sequence() == 7);
  CHECK(res.message_id() == "fixed-id-1");

  // Empty message_id: the sidecar makes one, distinct per message.
  pb::PublishResult gen1, gen2;
  REQUIRE(PublishOne(d.stub(), MakePublish(biz, "", 8, "g1"), &gen1).ok());
  REQUIRE(PublishOne(d.stub(), MakePublish(biz, "", 9, "g2"), &gen2).ok());
  CHECK(gen1.status() == pb::PublishResult::CONFIRMED);
  CHECK(gen2.status() == pb::PublishResult::CONFIRMED);
  CHECK_FALSE(gen1.message_id().empty());
  CHECK_FALSE(gen2.message_id().empty());
  CHECK(gen1.message_id() != gen2.message_id());

  REQUIRE(sub.WaitForCount(3, 10s));
  const auto ds = sub.deliveries();
  std::map<std::string, pb::Delivery> by_payload;
  for (const auto& d : ds) by_payload[d.payload()] = d;
  REQUIRE(by_payload.count(req.payload()) == 1);
  const pb::Delivery& got = by_payload[req.payload()];
  INFO("delivery: " << got.ShortDebugString());
  CHECK(got.business() == biz);
  CHECK(got.exchange() == biz);
  CHECK(got.routing_key() == "a.b.c");
  CHECK(got.message_id() == "fixed-id-1");
  CHECK(got.correlation_id() == "corr-42");
  CHECK(got.content_type() == "application/octet-stream");
  CHECK(got.reply_to() == "task.result");
  const std::map<std::string, std::string> want_headers = {{"tenant", "acme"},
                                                           {"trace-id", "abc123"}};
  CHECK(UserHeaders(got) == want_headers);
  CHECK_FALSE(got.redelivered());
  CHECK(got.delivery_count() == 0);
  // AMQP timestamps have 1 s resolution.
  CHECK(got.published_at_ms() >= before_ms - 1000);
  CHECK(got.published_at_ms() <= before_ms + 60000);
  REQUIRE(by_payload.count("g1") == 1);
  REQUIRE(by_payload.count("g2") == 1);
  CHECK(by_payload["g1"].message_id() == gen1.message_id());
  CHECK(by_payload["g2"].message_id() == gen2.message_id());
  for (const auto& d : ds) CHECK(sub.Ack(d.delivery_id()));
}

TEST_CASE(
    "integration: empty, one-frame and many-frame payloads arrive intact to two streams at once") {
  // The daemon assembles each delivery from its frames (basic.deliver, a
  // content header, body frames of at most frame_max, 128 KiB by default)
  // while frames of other channels pass in between: two streams consuming
  // large messages at once interleave on the consumer connection.
  IntegrationTest t("frames");
  const std::string biz = t.Business("frames");
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 4}});
  Subscriber s1(d.stub(),
                {.business = biz, .prefetch = 4, .consumer_name = "f1", .auto_ack = true});
  Subscriber s2(d.stub(),
                {.business = biz, .prefetch = 4, .consumer_name = "f2", .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 2, std::nullopt));

  const std::vector<size_t> sizes = {
      0, 1, 131064, 131072, size_t{300} * 1024, size_t{1024} * 1024 + 7};
  std::map<std::string, std::string> want;  // message_id -> payload
  std::vector<pb::PublishRequest> requests;
  for (int round = 0; round < 4; ++round) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      const std::string id = "f-" + std::to_string(round) + "-" + std::to_string(sizes[i]);
      std::string payload(sizes[i], '\0');
      for (size_t k = 0; k < payload.size(); ++k) {
        payload[k] = static_cast<char>((k * 131 + i * 7 + static_cast<size_t>(round)) & 0xff);
      }
      want[id] = payload;
      requests.push_back(MakePublish(biz, id, requests.size() + 1, payload));
    }
  }
  const PublishStreamOutcome out = PublishStream(d.stub(), requests);
  INFO(StatusText(out.status));
  REQUIRE(out.status.ok());
  REQUIRE(out.results.size() == requests.size());
  for (const auto& r : out.results) CHECK(r.status() == pb::PublishResult::CONFIRMED);

  REQUIRE(WaitUntil([&] { return s1.count() + s2.count() >= want.size(); }, 30s));
  std::vector<pb::Delivery> all = s1.deliveries();
  const std::vector<pb::Delivery> more = s2.deliveries();
  all.insert(all.end(), more.begin(), more.end());
  CHECK(all.size() == want.size());
  std::set<std::string> seen;
  for (const auto& got : all) {
    INFO("message " << got.message_id() << ": " << got.payload().size() << " bytes");
    REQUIRE(want.count(got.message_id()) == 1);
    CHECK(seen.insert(got.message_id()).second);
    CHECK(got.payload() == want[got.message_id()]);
  }
  // Both streams took part, so their frames could interleave.
  CHECK(s1.count() > 0);
  CHECK(s2.count() > 0);
}

TEST_CASE(
    "integration: reserved headers (CC, our republished marker) are INVALID_ARGUMENT on Publish, "
    "FAILED on PublishStream, and the stream goes on") {
  IntegrationTest t("reserved");
  const std::string biz = t.Business("reserved");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});  // no Subscribe: messages stay queued

  // A CC string header makes RabbitMQ close the publishing channel (406);
  // it must be refused before it reaches the broker.
  auto cc = MakePublish(biz, biz + "-cc", 1);
  (*cc.mutable_headers())["CC"] = "elsewhere";
  pb::PublishResult res;
  const auto start = Clock::now();
  grpc::Status s = PublishOne(d.stub(), cc, &res, 10s);
  INFO("unary: " << StatusText(s) << " after " << Fixed(Seconds(Clock::now() - start)) << " s");
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(s.error_message().find("'CC'") != std::string::npos);

  auto forged = MakePublish(biz, biz + "-forged", 3);
  (*forged.mutable_headers())["x-mq-sidecar-republished"] = "true";
  auto bcc = MakePublish(biz, biz + "-bcc", 4);
  (*bcc.mutable_headers())["bcc"] = "elsewhere";
  std::vector<pb::PublishRequest> reqs = {MakePublish(biz, biz + "-1", 1), cc, forged, bcc,
                                          MakePublish(biz, biz + "-5", 5)};
  reqs[1].set_sequence(2);
  PublishStreamOutcome out = PublishStream(d.stub(), reqs, 30s);
  INFO("stream: " << StatusText(out.status));
  CHECK(out.status.ok());
  std::map<uint64_t, pb::PublishResult> by_seq;
  for (const auto& r : out.results) CHECK(by_seq.emplace(r.sequence(), r).second);
  REQUIRE(by_seq.size() == 5);
  for (uint64_t seq : {1, 5}) {
    INFO(ResultText(by_seq[seq]));
    CHECK(by_seq[seq].status() == pb::PublishResult::CONFIRMED);
  }
  for (uint64_t seq : {2, 3, 4}) {
    INFO(ResultText(by_seq[seq]));
    CHECK(by_seq[seq].status() == pb::PublishResult::FAILED);
    CHECK(by_seq[seq].error().find("reserved") != std::string::npos);
  }
  // Only the two good messages reached the queue.
  CHECK(WaitForQueue(t.admin(), queue, std::nullopt, 2u));
}

}  // namespace
}  // namespace mqs::it
