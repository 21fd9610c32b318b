// Probe mode against the real broker: a channel error the daemon's own
// validation cannot prevent (an exchange deleted behind the sidecar's back)
// while many publishes of two businesses are in flight on one channel.
// The broker closes the channel (404) at the first publish to the missing
// exchange and drops what follows; the publisher resends what was in flight
// one at a time. Reopening the channel declares the topology again, which
// recreates the exchange (and its bindings): from then on A's publishes are
// confirmed too, so what this proves is that every publish is answered once,
// B's are all confirmed, A's are confirmed or clearly refused, and the
// counts in the queues match the answers.
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <map>
#include <string>
#include <vector>

#include "delay_proxy.h"
#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// How many times the log says `needle`.
size_t Count(const std::string& log, const std::string& needle) {
  size_t n = 0;
  for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++n;
  return n;
}

TEST_CASE(
    "integration: an exchange deleted behind the sidecar's back with many publishes in flight: "
    "probe mode answers each, the other business's are all confirmed, nothing stalls") {
  constexpr int kPairs = 400;  // 800 publishes, B and A alternating, window 1024
  // Whether the first refused publish has others in flight with it depends
  // on how the stream's requests reach the publisher; a round where it was
  // alone takes the other path (answered alone). Rounds repeat, each with
  // the exchange deleted again, until probe mode has run.
  constexpr int kMaxRounds = 5;
  IntegrationTest t("probe");
  const std::string a = t.Business("a");
  const std::string b = t.Business("b");
  Daemon& d = t.StartDaemon({{.name = a}, {.name = b}});
  // Both businesses work before the exchange goes.
  PublishConfirmed(d.stub(), a, 1, a + "-warm");
  PublishConfirmed(d.stub(), b, 1, b + "-warm");

  size_t a_queued = 1, b_sent = 1;  // what A's queue must hold, B's at least
  bool probed = false;
  for (int round = 0; round < kMaxRounds && !probed; ++round) {
    INFO("round " << round);
    t.admin().DeleteExchange(a);
    REQUIRE_FALSE(t.admin().ExchangeExists(a));

    std::vector<pb::PublishRequest> requests;
    std::map<uint64_t, std::string> business_of;
    for (int i = 0; i < kPairs; ++i) {
      for (const std::string& biz : {b, a}) {  // B first: A's first publish has company
        const uint64_t seq = requests.size() + 1;
        requests.push_back(
            MakePublish(biz, biz + "-" + std::to_string(round) + "-" + std::to_string(i), seq));
        business_of[seq] = biz;
      }
    }
    const auto started = Clock::now();
    // The stream must not stall: far below the 30 s wait_timeout every
    // publish would otherwise hit.
    PublishStreamOutcome out = PublishStream(d.stub(), requests, 25s);
    const auto took =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
    INFO("stream took " << took << " ms, status " << StatusText(out.status));
    CHECK(out.status.ok());
    REQUIRE(out.results.size() == requests.size());

    std::map<uint64_t, int> answers;
    size_t a_failed = 0, a_confirmed = 0, b_confirmed = 0;
    for (const pb::PublishResult& r : out.results) {
      ++answers[r.sequence()];
      INFO(ResultText(r));
      REQUIRE(business_of.count(r.sequence()) == 1);
      if (business_of[r.sequence()] == b) {
        CHECK(r.status() == pb::PublishResult::CONFIRMED);
        b_confirmed += r.status() == pb::PublishResult::CONFIRMED ? 1 : 0;
        continue;
      }
      // A: refused by the broker (the exchange is gone) and said so, or
      // confirmed once the sidecar's reopened channel had declared the
      // exchange again. Never UNCONFIRMED: every earlier send of a probe was
      // on a channel the broker closed.
      if (r.status() == pb::PublishResult::FAILED) {
        CHECK(r.error().find("404") != std::string::npos);
        CHECK(r.error().find("NOT_FOUND") != std::string::npos);
        ++a_failed;
      } else {
        CHECK(r.status() == pb::PublishResult::CONFIRMED);
        ++a_confirmed;
      }
    }
    for (const auto& [seq, n] : answers) {
      INFO("sequence " << seq);
      CHECK(n == 1);
    }
    CHECK(answers.size() == requests.size());
    CHECK(b_confirmed == static_cast<size_t>(kPairs));
    INFO("A: " << a_failed << " failed, " << a_confirmed << " confirmed");
    CHECK(a_failed + a_confirmed == static_cast<size_t>(kPairs));
    // Exactly the confirmed A publishes (and the warm-up) are in A's queue:
    // a refused one was not queued, a confirmed one is there once (A's
    // sends before the exchange was declared again were all refused, so no
    // probe of A has a queued first copy).
    a_queued += a_confirmed;
    b_sent += kPairs;
    CHECK(WaitForQueue(t.admin(), a + ".queue", 0u, static_cast<uint32_t>(a_queued)));
    // B's has every one, at least once (a probe's first send may be queued).
    CHECK(WaitUntil(
        [&] {
          auto q = t.admin().InspectQueue(b + ".queue");
          return q && q->messages >= static_cast<uint32_t>(b_sent);
        },
        10s));

    // Probe mode ran when the broker closed the channel with several
    // publishes in flight: the daemon resent them one at a time instead of
    // failing or stalling them all.
    const std::string log = d.Log();
    const size_t channel_errors = Count(log, "publishing channel closed by the broker: 404");
    CHECK(channel_errors >= static_cast<size_t>(round + 1));
    probed = Count(log, "resent one at a time to find the one refused") >= 1;
    WARN("probe mode round " << round << ": " << channel_errors << " channel errors so far, A "
                             << a_failed << " failed / " << a_confirmed << " confirmed, B "
                             << b_confirmed << " confirmed, stream " << took << " ms, probe mode "
                             << (probed ? "ran" : "not yet"));
  }
  CHECK(probed);

  // Publishing goes on afterwards.
  pb::PublishResult later;
  REQUIRE(PublishOne(d.stub(), MakePublish(b, b + "-later", 1), &later).ok());
  CHECK(later.status() == pb::PublishResult::CONFIRMED);
}

TEST_CASE(
    "integration: while the publishing channel is set up again after a channel error (broker "
    "replies 300 ms away), a publish is answered at its deadline, not after the set-up") {
  // Every broker reply takes 300 ms (DelayProxy), so reopening the channel
  // after the 404 (channel.open, the topology's declares, confirm.select:
  // a dozen round trips) takes seconds. The loop thread serves deadlines
  // meanwhile: B's publish, made during it with publish.wait_timeout 1 s, is
  // answered at about 1 s, never sent; before, it waited for the whole set-up.
  constexpr auto kDelay = 300ms;
  DelayProxy proxy(5672, kDelay);  // outlives the daemon
  IntegrationTest t("renew");
  const std::string a = t.Business("a");
  const std::string b = t.Business("b");
  const std::string uri = proxy.Via(t.uri());
  REQUIRE_FALSE(uri.empty());
  Daemon& d = t.StartDaemon({{.name = a}, {.name = b}}, {.uris = {uri}, .wait_timeout = 1s});
  PublishConfirmed(d.stub(), b, 1, b + "-warm");

  t.admin().DeleteExchange(a);
  auto refused = std::async(std::launch::async, [&] {
    pb::PublishResult r;
    return PublishOne(d.stub(), MakePublish(a, a + "-404", 1), &r, 20s);
  });
  REQUIRE(WaitUntil(
      [&] {
        return d.Log().find("publishing channel closed by the broker: 404") != std::string::npos;
      },
      10s, 5ms));
  const auto asked = Clock::now();
  pb::PublishResult result;
  const grpc::Status s = PublishOne(d.stub(), MakePublish(b, b + "-during", 2), &result, 20s);
  const auto took = Clock::now() - asked;
  INFO("B's publish: " << StatusText(s) << " " << ResultText(result) << " after "
                       << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                       << " ms");
  CHECK(s.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK_THAT(s.error_message(), Catch::Contains("being set up again"));
  // At its 1 s deadline; the set-up takes a dozen 300 ms round trips.
  CHECK(took < 2500ms);
  // The set-up finishes and publishing carries on, for both businesses.
  REQUIRE(refused.wait_for(20s) == std::future_status::ready);
  refused.get();
  CHECK(WaitUntil(
      [&] {
        return d.Log().find("[publisher] publishing channel open again") != std::string::npos;
      },
      20s, 20ms));
  CHECK(t.admin().ExchangeExists(a));
  const std::vector<std::string> after = PublishConfirmed(d.stub(), b, 1, b + "-after");
  CHECK(after.size() == 1);
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace mqs::it
