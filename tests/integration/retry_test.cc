// Delayed retry (issue 13): a nack with requeue on a business with `retry`
// brings the message back after the configured delay through a TTL'd retry
// queue, numbered by attempt, and dead-letters it once max_attempts is used
// up; the delay lives in the broker, so a killed daemon loses nothing.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

struct Seen {
  uint32_t attempt;
  Clock::time_point at;
  std::string routing_key;
  std::string payload;
  bool redelivered;
};

// Records every delivery by message_id; nacks (requeue) the attempts below
// `succeed_at` and acks the rest.
class RetryingHandler {
 public:
  RetryingHandler(pb::PubSub::Stub& stub, const std::string& business, uint32_t succeed_at,
                  uint32_t retry_after_ms = 0)
      : succeed_at_(succeed_at), retry_after_ms_(retry_after_ms) {
    Subscriber::Options options{.business = business, .prefetch = 50, .consumer_name = "retry"};
    options.on_delivery = [this](const pb::Delivery& d) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen_[d.message_id()].push_back(
            {d.attempt(), Clock::now(), d.routing_key(), d.payload(), d.redelivered()});
      }
      Subscriber* s = nullptr;
      // Set just after the constructor returns; a delivery may come first.
      while ((s = self_.load()) == nullptr) std::this_thread::yield();
      if (d.attempt() < succeed_at_) {
        s->Nack(d.delivery_id(), /*requeue=*/true, false, retry_after_ms_);
      } else {
        s->Ack(d.delivery_id());
      }
    };
    sub_ = std::make_unique<Subscriber>(stub, options);
    self_ = sub_.get();
  }
  std::map<std::string, std::vector<Seen>> seen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  // Deliveries recorded, over all messages.
  size_t total() const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& [id, seen] : seen_) n += seen.size();
    return n;
  }
  Subscriber& sub() { return *sub_; }

 private:
  const uint32_t succeed_at_;
  const uint32_t retry_after_ms_;
  mutable std::mutex mu_;
  std::map<std::string, std::vector<Seen>> seen_;
  std::atomic<Subscriber*> self_{nullptr};
  std::unique_ptr<Subscriber> sub_;
};

// Sanitized: whether this run is a sanitizer pass's (test.sh sets their
// options), whose timing says nothing about the product's.
bool Sanitized() {
  return std::getenv("TSAN_OPTIONS") != nullptr || std::getenv("ASAN_OPTIONS") != nullptr;
}

long Ms(Clock::duration d) {
  return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

TEST_CASE(
    "integration: delayed retry: 100 messages failing twice are each handled exactly 3 times, "
    "attempts 1 2 3, the gaps within the configured delays' tolerance, nothing lost") {
  IntegrationTest t("retry");
  const std::string biz = t.Business("retry");
  const std::string queue = biz + ".queue";
  t.CleanUpQueue(queue + ".retry.300ms");
  t.CleanUpQueue(queue + ".retry.1s");
  Daemon& d = t.StartDaemon({{.name = biz, .retry = "{delays: [300ms, 1s], max_attempts: 5}"}});
  REQUIRE(WaitForQueue(t.admin(), queue + ".retry.300ms", 0u, 0u));
  REQUIRE(WaitForQueue(t.admin(), queue + ".retry.1s", 0u, 0u));

  RetryingHandler handler(d.stub(), biz, /*succeed_at=*/3);
  const std::vector<std::string> ids = PublishConfirmed(d.stub(), biz, 100, "r");
  REQUIRE(ids.size() == 100);
  REQUIRE(WaitUntil([&] { return handler.total() >= 300; }, 40s));
  // Settled: nothing left anywhere, no fourth delivery.
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, 0u));
  REQUIRE(WaitForQueue(t.admin(), queue + ".retry.300ms", 0u, 0u));
  REQUIRE(WaitForQueue(t.admin(), queue + ".retry.1s", 0u, 0u));

  const auto seen = handler.seen();
  REQUIRE(seen.size() == 100);
  std::vector<long> over1;
  std::vector<long> over2;
  for (const std::string& id : ids) {
    const auto it = seen.find(id);
    REQUIRE(it != seen.end());
    const std::vector<Seen>& s = it->second;
    INFO("message " << id);
    REQUIRE(s.size() == 3);
    CHECK(s[0].attempt == 1);
    CHECK(s[1].attempt == 2);
    CHECK(s[2].attempt == 3);
    // The copy is the message as published: same routing key and body.
    CHECK(s[1].routing_key == s[0].routing_key);
    CHECK(s[2].routing_key == s[0].routing_key);
    CHECK(s[2].payload == s[0].payload);
    CHECK_FALSE(s[1].redelivered);
    over1.push_back(Ms(s[1].at - s[0].at) - 300);
    over2.push_back(Ms(s[2].at - s[1].at) - 1000);
  }
  std::sort(over1.begin(), over1.end());
  std::sort(over2.begin(), over2.end());
  INFO("beyond the 300 ms delay: min " << over1.front() << " median " << over1[50] << " max "
                                       << over1.back() << " ms; beyond 1 s: min " << over2.front()
                                       << " median " << over2[50] << " max " << over2.back()
                                       << " ms");
  // The copy's TTL starts after the nack, so it is late if anything; but the
  // broker's expiry timer runs on Erlang's clock, which may run up to 1 %
  // fast to catch up with the OS clock: copies came 2-6 ms early on a loaded
  // machine. Early within the tolerance (10 %), never by a whole delay.
  CHECK(over1.front() >= -30);
  CHECK(over2.front() >= -100);
  // Within the tolerance (100 ms for both delays) as a rule: the median. A
  // single copy can be later by the daemon's own latency, but never by a
  // whole other delay. Under a sanitizer that latency is the sanitizer's:
  // under ThreadSanitizer the first burst of 100 nacks made copies whose
  // median came 249 ms late (the second, spread out, 9 ms). The timing claim
  // is the plain builds': under a sanitizer only the bounds below hold.
  if (!Sanitized()) {
    CHECK(over1[50] <= 100);
    CHECK(over2[50] <= 100);
  }
  CHECK(over1.back() < 1000);
  CHECK(over2.back() < 1000);
}

TEST_CASE(
    "integration: retries exhausted: the message lands in the dead-letter queue with reason "
    "retries_exhausted, and mqctl dlq replay brings it back once, its attempts afresh") {
  IntegrationTest t("retryx");
  const std::string biz = t.Business("retryx");
  const std::string queue = biz + ".queue";
  t.CleanUpQueue(queue + ".retry.200ms");
  Daemon& d = t.StartDaemon({{.name = biz, .retry = "{delays: [200ms], max_attempts: 2}"}});
  REQUIRE(WaitForQueue(t.admin(), queue + ".dead", 0u, 0u));

  pb::PublishRequest req = MakePublish(biz, "exhaust-1", 1, "the transfer");
  req.set_routing_key("usdt.approved");
  (*req.mutable_headers())["account"] = "A-17";
  pb::PublishResult published;
  REQUIRE(PublishOne(d.stub(), req, &published).ok());
  REQUIRE(published.status() == pb::PublishResult::CONFIRMED);
  {
    RetryingHandler failing(d.stub(), biz, /*succeed_at=*/100);
    REQUIRE(WaitForQueue(t.admin(), queue + ".dead", std::nullopt, 1u, 15s));
    const auto seen = failing.seen();
    REQUIRE(seen.at("exhaust-1").size() == 2);
    CHECK(seen.at("exhaust-1")[1].attempt == 2);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 20s);
  pb::ListDeadLettersRequest list;
  list.set_business(biz);
  pb::ListDeadLettersResponse letters;
  REQUIRE(d.stub().ListDeadLetters(&ctx, list, &letters).ok());
  REQUIRE(letters.messages_size() == 1);
  const pb::DeadLetter& letter = letters.messages(0);
  CHECK(letter.reason() == "retries_exhausted");
  CHECK(letter.queue() == queue);
  CHECK(letter.original_exchange() == biz);
  CHECK(letter.original_routing_key() == "usdt.approved");
  CHECK(letter.dead_lettered_at_ms() > 0);
  CHECK(letter.message().payload() == "the transfer");
  CHECK(letter.message().attempt() == 2);
  CHECK(UserHeaders(letter.message()).at("account") == "A-17");

  Subscriber ok(d.stub(), {.business = biz, .auto_ack = true});
  const CommandResult replay =
      RunCommand({MqctlPath(), "--address", d.address(), "dlq", "replay", biz}, 60s);
  INFO(replay.out << replay.err);
  REQUIRE(replay.exit_code == 0);
  REQUIRE(ok.WaitForCount(1, 10s));
  REQUIRE(WaitForQueue(t.admin(), queue + ".dead", std::nullopt, 0u));
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, 0u));
  const auto got = ok.deliveries();
  REQUIRE(got.size() == 1);  // once
  CHECK(got[0].message_id() == "exhaust-1");
  CHECK(got[0].attempt() == 1);
  CHECK(got[0].routing_key() == "usdt.approved");
  CHECK(UserHeaders(got[0]).at("account") == "A-17");
}

TEST_CASE(
    "integration: messages waiting in a retry queue survive a SIGKILLed daemon and all come back "
    "after its restart") {
  IntegrationTest t("retryk");
  const std::string biz = t.Business("retryk");
  const std::string queue = biz + ".queue";
  const std::string retry = queue + ".retry.3s";
  t.CleanUpQueue(retry);
  const BusinessSpec spec{.name = biz, .retry = "{delays: [3s]}"};
  Daemon& d1 = t.StartDaemon({spec});
  std::vector<std::string> ids;
  {
    RetryingHandler failing(d1.stub(), biz, /*succeed_at=*/2);
    ids = PublishConfirmed(d1.stub(), biz, 20, "k");
    REQUIRE(ids.size() == 20);
    // Every original acked only once its copy waits in the retry queue.
    REQUIRE(WaitForQueue(t.admin(), retry, std::nullopt, 20u, 10s));
    REQUIRE(WaitForQueue(t.admin(), queue, std::nullopt, 0u));
    d1.Kill();
  }
  Daemon& d2 = t.StartDaemon({spec});
  Subscriber sub(d2.stub(), {.business = biz, .prefetch = 50, .auto_ack = true});
  // The ready count above leaves out unacked messages: an original whose
  // copy was confirmed but whose ack had not reached the broker at the kill
  // comes back too, as itself (attempt 1, redelivered). At least once; each
  // copy (attempt 2) exactly once.
  const auto copies = [&] {
    std::vector<std::string> out;
    for (const pb::Delivery& x : sub.deliveries()) {
      if (x.attempt() == 2) out.push_back(x.message_id());
    }
    std::sort(out.begin(), out.end());
    return out;
  };
  REQUIRE(WaitUntil([&] { return copies().size() >= 20; }, 15s));
  std::vector<std::string> want = ids;
  std::sort(want.begin(), want.end());
  CHECK(copies() == want);
  for (const pb::Delivery& x : sub.deliveries()) {
    INFO(x.message_id() << " attempt " << x.attempt() << " redelivered " << x.redelivered());
    CHECK((x.attempt() == 2 || (x.attempt() == 1 && x.redelivered())));
  }
}

TEST_CASE(
    "integration: a nack's own retry_after_ms brings the message back after that delay through a "
    "retry queue declared on first use (classic queues), and on a business without retry it is "
    "INVALID_ARGUMENT") {
  IntegrationTest t("retrya");
  const std::string biz = t.Business("retrya");
  const std::string plain = t.Business("plain");
  const std::string queue = biz + ".queue";
  t.CleanUpQueue(queue + ".retry.10s");
  t.CleanUpQueue(queue + ".retry.700ms");
  // A classic queue: its retry queues are classic too (the other tests use quorum).
  Daemon& d = t.StartDaemon(
      {{.name = biz, .queue_type = "classic", .retry = "{delays: [10s]}"}, {.name = plain}});
  REQUIRE_FALSE(t.admin().InspectQueue(queue + ".retry.700ms").has_value());

  RetryingHandler handler(d.stub(), biz, /*succeed_at=*/2, /*retry_after_ms=*/700);
  REQUIRE(PublishConfirmed(d.stub(), biz, 5, "a").size() == 5);
  REQUIRE(WaitUntil([&] { return handler.total() >= 10; }, 15s));
  CHECK(t.admin().InspectQueue(queue + ".retry.700ms").has_value());
  std::vector<long> gaps;
  for (const auto& [id, seen] : handler.seen()) {
    REQUIRE(seen.size() == 2);
    const long gap = Ms(seen[1].at - seen[0].at);
    INFO("message " << id << " came back after " << gap << " ms");
    CHECK(gap >= 630);  // 700 ms, early by at most 10 % (the broker's clock; see above)
    CHECK(gap < 1700);  // the first ones also wait for the queue's declaration
    CHECK(seen[1].attempt == 2);
    gaps.push_back(gap);
  }
  std::sort(gaps.begin(), gaps.end());
  // 700 ms, within 100 ms, as a rule. The timing claim is the plain builds':
  // under a sanitizer the first nacks wait for the retry queue's declaration
  // at the sanitizer's speed (TSan gave medians of 897 and, in CI on
  // 2026-12-02, 1131 ms), so there only the bounds above hold.
  if (!Sanitized()) CHECK(gaps[gaps.size() / 2] <= 800);

  REQUIRE(PublishConfirmed(d.stub(), plain, 1, "p").size() == 1);
  std::atomic<Subscriber*> self{nullptr};
  Subscriber::Options options{.business = plain};
  options.on_delivery = [&](const pb::Delivery& x) {
    if (Subscriber* s = self.load()) s->Nack(x.delivery_id(), true, false, 500);
  };
  Subscriber sub(d.stub(), options);
  self = &sub;
  const std::optional<grpc::Status> ended = sub.WaitEnded(10s);
  REQUIRE(ended.has_value());
  CHECK(ended->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_THAT(ended->error_message(), Catch::Contains("retry"));
  // The message went back to its queue with the stream.
  REQUIRE(WaitForQueue(t.admin(), plain + ".queue", 0u, 1u));
}

}  // namespace
}  // namespace mqs::it
