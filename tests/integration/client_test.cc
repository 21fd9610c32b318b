// The C++ client library (client/, issue 16) against real daemons: the
// pipelined publisher, the handler outcomes, a throwing handler, a bearer
// token, and a subscription that resumes by itself after the sidecar restarts.
#include "mqsidecar/client.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// What a handler saw, by message_id.
class Seen {
 public:
  void Add(const pb::Delivery& d) {
    std::lock_guard<std::mutex> lock(mu_);
    by_id_[d.message_id()].push_back(d);
  }
  std::vector<pb::Delivery> Of(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_id_.find(id);
    return it == by_id_.end() ? std::vector<pb::Delivery>{} : it->second;
  }
  size_t Count(const std::string& id) const { return Of(id).size(); }
  std::map<std::string, size_t> Counts() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, size_t> counts;
    for (const auto& [id, ds] : by_id_) counts[id] = ds.size();
    return counts;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::vector<pb::Delivery>> by_id_;
};

// Errors the library reported (on_error).
class Errors {
 public:
  mqsidecar::ErrorCallback Callback() {
    return [this](std::string_view what) {
      std::lock_guard<std::mutex> lock(mu_);
      texts_.emplace_back(what);
    };
  }
  bool Has(const std::string& part) const {
    std::lock_guard<std::mutex> lock(mu_);
    return std::any_of(texts_.begin(), texts_.end(),
                       [&](const std::string& t) { return t.find(part) != std::string::npos; });
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> texts_;
};

TEST_CASE("integration: client: the pipelined publisher reports every result once, all consumed") {
  IntegrationTest t("clientpub");
  const std::string biz = t.Business("pub");
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 64}});
  mqsidecar::Client client(d.address());

  // Unary: confirmed, and an unknown business is the call's error.
  pb::PublishRequest one = MakePublish(biz, "unary-0", 0);
  const mqsidecar::PublishOutcome first = client.Publish(one, 10s);
  REQUIRE(first.confirmed());
  one.set_business(biz + ".nope");
  const mqsidecar::PublishOutcome unknown = client.Publish(one, 10s);
  CHECK(unknown.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_FALSE(unknown.confirmed());

  constexpr int kMessages = 600;
  std::mutex mu;
  std::map<uint64_t, int> reported;  // the caller's sequence -> results
  std::map<uint64_t, pb::PublishResult::Status> statuses;
  std::set<std::string> ids = {"unary-0"};
  size_t max_in_flight = 0;
  {
    const std::unique_ptr<mqsidecar::Publisher> publisher = client.NewPublisher({.window = 64});
    for (int i = 0; i < kMessages; ++i) {
      const std::string id = "pipe-" + std::to_string(i);
      ids.insert(id);
      // The caller's sequence (1000 + i) comes back in the result.
      publisher->Publish(MakePublish(biz, id, 1000 + i), [&](const pb::PublishResult& r) {
        std::lock_guard<std::mutex> lock(mu);
        ++reported[r.sequence()];
        statuses[r.sequence()] = r.status();
      });
      max_in_flight = std::max(max_in_flight, publisher->in_flight());
    }
    // And one through a future.
    ids.insert("future-0");
    std::future<pb::PublishResult> f = publisher->Publish(MakePublish(biz, "future-0", 7));
    REQUIRE(f.wait_for(20s) == std::future_status::ready);
    CHECK(f.get().status() == pb::PublishResult::CONFIRMED);
    REQUIRE(publisher->Flush(30s));
    CHECK(publisher->in_flight() == 0);
    publisher->Close();
    // After Close: FAILED at once, never sent.
    std::future<pb::PublishResult> late = publisher->Publish(MakePublish(biz, "late", 8));
    REQUIRE(late.wait_for(1s) == std::future_status::ready);
    CHECK(late.get().status() == pb::PublishResult::FAILED);
  }
  CHECK(max_in_flight <= 64);
  {
    std::lock_guard<std::mutex> lock(mu);
    REQUIRE(reported.size() == static_cast<size_t>(kMessages));
    for (int i = 0; i < kMessages; ++i) {
      INFO("sequence " << 1000 + i);
      CHECK(reported[1000 + i] == 1);
      CHECK(statuses[1000 + i] == pb::PublishResult::CONFIRMED);
    }
  }

  // Consumed by a subscription of 4 handler threads: each message once, and
  // never more than 4 handlers at a time.
  Seen seen;
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  auto sub =
      client.Subscribe(biz,
                       [&](const pb::Delivery& delivery) {
                         const int now = ++running;
                         int prev = max_running.load();
                         while (now > prev && !max_running.compare_exchange_weak(prev, now)) {
                         }
                         seen.Add(delivery);
                         --running;
                         return mqsidecar::Outcome::Ack();
                       },
                       {.prefetch = 64, .concurrency = 4});
  REQUIRE(WaitUntil([&] { return seen.Counts().size() == ids.size(); }, 60s));
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, 0, 30s));
  sub->Stop();
  const auto stats = sub->stats();
  CHECK(stats.acked == ids.size());
  CHECK(stats.settle_requests <= stats.acked);
  CHECK(max_running.load() <= 4);
  for (const auto& [id, n] : seen.Counts()) {
    INFO(id);
    CHECK(n == 1);
    CHECK(ids.count(id) == 1);
  }
  // Every ack reached the broker: nothing is left unacked to come back.
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 0, 0));
  WARN("client: " << ids.size() << " messages acked in " << stats.settle_requests << " requests, "
                  << stats.multiple_acks << " with multiple");
}

TEST_CASE(
    "integration: client: eight threads on one publisher: every message answered once and "
    "confirmed, messages queued meanwhile share PublishBatch requests") {
  IntegrationTest t("clientbatch");
  const std::string biz = t.Business("batch");
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 256}});
  mqsidecar::Client client(d.address());
  constexpr int kThreads = 8;
  constexpr int kEach = 250;
  std::mutex mu;
  std::map<uint64_t, int> reported;
  std::map<uint64_t, pb::PublishResult::Status> statuses;
  mqsidecar::Publisher::Stats stats;
  {
    const std::unique_ptr<mqsidecar::Publisher> publisher =
        client.NewPublisher({.window = 64, .max_batch_messages = 16});
    std::vector<std::thread> threads;
    for (int th = 0; th < kThreads; ++th) {
      threads.emplace_back([&, th] {
        for (int i = 0; i < kEach; ++i) {
          const int n = th * kEach + i;
          publisher->Publish(MakePublish(biz, "mt-" + std::to_string(n), n + 1),
                             [&](const pb::PublishResult& r) {
                               std::lock_guard<std::mutex> lock(mu);
                               ++reported[r.sequence()];
                               statuses[r.sequence()] = r.status();
                             });
        }
      });
    }
    for (std::thread& th : threads) th.join();
    REQUIRE(publisher->Flush(60s));
    stats = publisher->stats();
  }
  std::lock_guard<std::mutex> lock(mu);
  REQUIRE(reported.size() == static_cast<size_t>(kThreads * kEach));
  for (const auto& [sequence, n] : reported) {
    INFO("sequence " << sequence);
    CHECK(n == 1);
    CHECK(statuses[sequence] == pb::PublishResult::CONFIRMED);
  }
  WARN("client publisher: " << stats.messages << " messages in " << stats.batches
                            << " PublishBatch requests");
  CHECK(stats.messages == static_cast<uint64_t>(kThreads * kEach));
  // Eight threads against a window of 64: while one writes, others queue.
  CHECK(stats.batches < stats.messages);
  CHECK(stats.batches * 16 >= stats.messages);  // never above max_batch_messages
  // Each message is in the queue once (no consumer yet).
  CHECK(WaitForQueue(t.admin(), biz + ".queue", 0u, static_cast<uint32_t>(kThreads * kEach), 30s));
}

TEST_CASE("integration: client: handler outcomes ack, retry (attempt 2) and reject (dead letter)") {
  IntegrationTest t("clientout");
  const std::string biz = t.Business("out");
  t.CleanUpQueue(biz + ".queue.retry.200ms");
  Daemon& d = t.StartDaemon({{.name = biz, .retry = "{delays: [200ms], max_attempts: 3}"}});
  mqsidecar::Client client(d.address());
  Seen seen;
  auto sub = client.Subscribe(biz, [&](const pb::Delivery& delivery) {
    seen.Add(delivery);
    if (delivery.message_id() == "reject") return mqsidecar::Outcome::Reject();
    if (delivery.message_id() == "retry" && delivery.attempt() < 2) {
      return mqsidecar::Outcome::Retry();
    }
    return mqsidecar::Outcome::Ack();
  });
  for (const char* id : {"ack", "retry", "reject"}) {
    REQUIRE(client.Publish(MakePublish(biz, id, 0), 10s).confirmed());
  }
  REQUIRE(WaitUntil([&] { return seen.Count("retry") >= 2; }, 20s));
  const auto retried = seen.Of("retry");
  CHECK(retried[0].attempt() == 1);
  CHECK(retried[1].attempt() == 2);
  // The reject lands in <queue>.dead; the queue drains (ack and retry acked).
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue.dead", std::nullopt, 1, 20s));
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, 0, 20s));
  REQUIRE(WaitUntil([&] { return sub->stats().acked == 2; }, 10s));
  sub->Stop();
  const auto stats = sub->stats();
  CHECK(stats.retried == 1);
  CHECK(stats.rejected == 1);
  CHECK(stats.handler_errors == 0);
  CHECK(seen.Count("ack") == 1);
  CHECK(seen.Count("reject") == 1);
  const auto dead = t.admin().Get(biz + ".queue.dead");
  REQUIRE(dead);
  CHECK(dead->message_id == "reject");
  // Nothing else comes back: the queue stays empty, with no consumer left.
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 0, 0));
}

TEST_CASE("integration: client: a handler that throws is caught and its message comes again") {
  IntegrationTest t("clientthrow");
  const std::string biz = t.Business("throw");
  Daemon& d = t.StartDaemon({{.name = biz}});
  Errors errors;
  mqsidecar::Client client(d.address(), {.on_error = errors.Callback()});
  Seen seen;
  auto sub = client.Subscribe(biz, [&](const pb::Delivery& delivery) {
    seen.Add(delivery);
    if (seen.Count(delivery.message_id()) == 1) throw std::runtime_error("boom in handler");
    return mqsidecar::Outcome::Ack();
  });
  REQUIRE(client.Publish(MakePublish(biz, "m1", 0), 10s).confirmed());
  REQUIRE(WaitUntil([&] { return seen.Count("m1") >= 2; }, 20s));
  REQUIRE(WaitUntil([&] { return sub->stats().acked == 1; }, 10s));
  const auto copies = seen.Of("m1");
  CHECK(copies[1].redelivered());
  CHECK(sub->stats().handler_errors == 1);
  CHECK(sub->stats().retried == 1);
  CHECK(errors.Has("boom in handler"));
  sub->Stop();
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 0, 0));
  CHECK(seen.Count("m1") == 2);
}

TEST_CASE("integration: client: a subscription resumes by itself after the sidecar restarts") {
  IntegrationTest t("clientresume");
  const std::string biz = t.Business("resume");
  Daemon& d = t.StartDaemon({{.name = biz}}, {.name = "resume"});
  Errors errors;
  mqsidecar::Client client(d.address(), {.on_error = errors.Callback()});
  Seen seen;
  auto sub = client.Subscribe(biz,
                              [&](const pb::Delivery& delivery) {
                                seen.Add(delivery);
                                return mqsidecar::Outcome::Ack();
                              },
                              {.min_backoff = 50ms, .max_backoff = 500ms});
  REQUIRE(client.Publish(MakePublish(biz, "before", 0), 10s).confirmed());
  REQUIRE(WaitUntil([&] { return seen.Count("before") == 1; }, 20s));
  // A publisher whose stream the restart breaks opens a new one by itself.
  const std::unique_ptr<mqsidecar::Publisher> publisher = client.NewPublisher();
  REQUIRE(publisher->Publish(MakePublish(biz, "pipe-before", 0)).get().status() ==
          pb::PublishResult::CONFIRMED);

  d.Stop();  // the same Daemon starts again on the same socket
  REQUIRE(WaitUntil([&] { return errors.Has("subscription to " + biz + ": stream ended"); }, 10s));
  REQUIRE(WaitUntil([&] { return errors.Has("PublishBatchStream ended"); }, 10s));
  d.Start();
  // The library's stream comes back on its own: a consumer on the queue again.
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, std::nullopt, 20s));
  pb::PublishResult result;
  REQUIRE(PublishOne(d.stub(), MakePublish(biz, "after", 1), &result).ok());
  REQUIRE(result.status() == pb::PublishResult::CONFIRMED);
  REQUIRE(WaitUntil([&] { return seen.Count("after") == 1; }, 20s));
  std::future<pb::PublishResult> again = publisher->Publish(MakePublish(biz, "pipe-after", 1));
  REQUIRE(again.wait_for(20s) == std::future_status::ready);
  CHECK(again.get().status() == pb::PublishResult::CONFIRMED);
  REQUIRE(WaitUntil([&] { return seen.Count("pipe-after") == 1; }, 20s));
  CHECK(sub->stats().streams >= 2);
  sub->Stop();
  CHECK(seen.Count("before") == 1);
  CHECK(seen.Count("pipe-before") == 1);
}

TEST_CASE(
    "integration: client: with wait_for_ready a unary publish waits for a sidecar that is starting "
    "and is confirmed, without it it fails at once with UNAVAILABLE, and mqctl --wait likewise") {
  IntegrationTest t("clientwait");
  const std::string biz = t.Business("wait");
  Daemon& d = t.StartDaemon({{.name = biz}}, {.name = "wait"});
  d.Stop();  // nobody listens on its socket until Start

  mqsidecar::Client at_once(d.address());
  const mqsidecar::PublishOutcome refused = at_once.Publish(MakePublish(biz, "at-once", 0), 20s);
  CHECK(refused.status.error_code() == grpc::StatusCode::UNAVAILABLE);
  const CommandResult mqctl_now = RunCommand(
      {MqctlPath(), "--address", d.address(), "--timeout", "20s", "publish", biz, "k", "x"}, 15s);
  INFO(CommandOutput(mqctl_now));
  CHECK(mqctl_now.exit_code == 1);
  CHECK_THAT(mqctl_now.err, Catch::Contains("UNAVAILABLE"));
  const CommandResult mqctl_waited = RunCommand(
      {MqctlPath(), "--address", d.address(), "--wait", "--timeout", "1s", "topology"}, 15s);
  INFO(CommandOutput(mqctl_waited));
  CHECK(mqctl_waited.exit_code == 1);
  CHECK_THAT(mqctl_waited.err, Catch::Contains("DEADLINE_EXCEEDED"));

  mqsidecar::Client waiting(d.address(), {.wait_for_ready = true});
  std::future<mqsidecar::PublishOutcome> waited = std::async(
      std::launch::async, [&] { return waiting.Publish(MakePublish(biz, "waited", 1), 60s); });
  // Without wait_for_ready it would be answered UNAVAILABLE at once.
  CHECK(waited.wait_for(500ms) == std::future_status::timeout);
  d.Start();
  REQUIRE(waited.wait_for(60s) == std::future_status::ready);
  const mqsidecar::PublishOutcome out = waited.get();
  INFO(out.ToString());
  CHECK(out.confirmed());
}

TEST_CASE("integration: client: the token is sent as a bearer token") {
  IntegrationTest t("clienttoken");
  const std::string biz = t.Business("tok");
  const std::string token = "it-client-token-3b9d0e1f7a";
  const std::string token_file = t.dir() + "/client.token";
  std::ofstream(token_file) << token << "\n";
  Daemon& d =
      t.StartDaemon({{.name = biz}},
                    {.extra_yaml = "access:\n  app:\n    token_file: " + token_file +
                                   "\n    publish: [" + biz + "]\n    subscribe: [" + biz + "]\n"});
  mqsidecar::Client with(d.address(), {.token = token});
  mqsidecar::Client without(d.address());
  CHECK(with.Publish(MakePublish(biz, "t1", 0), 10s).confirmed());
  CHECK(without.Publish(MakePublish(biz, "t2", 0), 10s).status.error_code() ==
        grpc::StatusCode::UNAUTHENTICATED);
  Seen seen;
  auto sub = with.Subscribe(biz, [&](const pb::Delivery& delivery) {
    seen.Add(delivery);
    return mqsidecar::Outcome::Ack();
  });
  REQUIRE(WaitUntil([&] { return seen.Count("t1") == 1; }, 20s));
  sub->Stop();
}

}  // namespace
}  // namespace mqs::it
