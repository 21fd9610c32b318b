// Fault tests of publish deadlines (issue 11, defect 4): a publish is answered
// at its deadline while the publisher connects, and is never sent after it.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "harness.h"
#include "recorded.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

TEST_CASE(
    "fault: a unary Publish while the publisher connects to a frozen broker is answered "
    "UNAVAILABLE at its deadline and never sent after it",
    "[fault]") {
  // A frozen node (SIGSTOP) accepts TCP connections (the kernel does) and
  // never answers the login: the publisher's reconnect blocks in
  // Connection::Open for connect_timeout (5 s here).
  constexpr auto kHeartbeat = 2s;
  constexpr auto kDeadline = 1s;
  IntegrationTest t("connectdeadline");
  BrokerControl broker(t.uri());
  {
    const std::string why = broker.CheckControllable();
    INFO(why);
    REQUIRE(why.empty());
  }
  const std::string biz = t.Business("connectdeadline");
  const std::string queue = biz + ".queue";
  Daemon& d =
      t.StartDaemon({{.name = biz, .prefetch = 1}}, {.heartbeat = kHeartbeat, .wait_timeout = 30s});
  REQUIRE(PublishConfirmed(d.stub(), biz, 1, biz + "-warm").size() == 1);

  const std::string froze = broker.Freeze();
  INFO(froze);
  REQUIRE(froze.empty());
  // The publisher finds the connection dead (2 x heartbeat) and reconnects,
  // into the frozen node.
  REQUIRE(WaitUntil(
      [&] { return d.Log().find("[publisher] connection lost") != std::string::npos; }, 15s, 50ms));
  // Past the backoff (at most 100 ms), into the blocking login (the
  // scenario's timing, not a wait for a condition).
  std::this_thread::sleep_for(400ms);

  pb::PublishResult res;
  const auto start = Clock::now();
  const grpc::Status s = PublishOne(d.stub(), MakePublish(biz, biz + "-late", 2), &res, kDeadline);
  const auto took = Clock::now() - start;
  // Thaw while the login still waits: it completes, and a publisher that
  // kept the expired publish would now send it.
  const std::string thawed = broker.Thaw();
  INFO("Publish took " << Fixed(Seconds(took)) << " s: " << StatusText(s) << " "
                       << pb::PublishResult::Status_Name(res.status()) << " " << res.error());
  INFO(thawed);
  CHECK(thawed.empty());
  // Answered by the sidecar (not the caller's own DEADLINE_EXCEEDED), in time.
  CHECK(s.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(took < kDeadline + 300ms);

  // Once connected again, a publish goes through; the late one must not
  // have gone before it (the publisher keeps the order).
  REQUIRE(WaitUntil([&] { return d.Health(1s) == grpc::health::v1::HealthCheckResponse::SERVING; },
                    60s, 50ms));
  REQUIRE(PublishConfirmed(d.stub(), biz, 1, biz + "-after").size() == 1);
  uint32_t messages = 0;
  CHECK(WaitUntil(
      [&] {
        const auto q = t.admin().InspectQueue(queue);
        messages = q ? q->messages : 0;
        return messages >= 2;
      },
      10s));
  INFO("messages in the queue: " << messages << " (warm-up and after: 2)");
  CHECK(messages == 2);
  WARN("[fault-deadline] unary Publish (deadline "
       << Fixed(Seconds(kDeadline)) << " s) while "
       << "connecting to a frozen node: " << StatusText(s) << " after " << Fixed(Seconds(took))
       << " s; queue holds " << messages << " (2: the late one was never sent)");
}

}  // namespace
}  // namespace mqs::it
