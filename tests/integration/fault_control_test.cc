// Fault test of the control plane (issue 12): server.ping is best effort. A
// broker outage leaves no backlog of pings (none is queued while the
// publishing link is down) and client publishes are not held up by pings.
#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "recorded.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;
using grpc::health::v1::HealthCheckResponse;

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TEST_CASE("fault: broker down for 10 s: no ping backlog, client publishes not delayed by pings",
          "[fault][slow]") {
  constexpr auto kOutage = 10s;
  IntegrationTest t("pingoutage");
  BrokerControl broker(t.uri());
  const std::string why = broker.CheckControllable();
  INFO(why);
  REQUIRE(why.empty());
  const std::string data = t.Business("data");
  const std::string ping = t.Business("ping");
  Daemon& d = t.StartDaemon(
      {{.name = data, .prefetch = 64}, {.name = "server.ping", .prefetch = 64, .exchange = ping}},
      {.heartbeat = 2s,
       .wait_timeout = 60s,
       .extra_yaml = "identity: {app: pinger, region: \"1\", server: \"0\"}\n"
                     "ping: {business: server.ping, interval: 1s}\n"});
  // Every ping that reaches the queue, with the time the sidecar sent it.
  Subscriber pings(d.stub(), {.business = "server.ping", .auto_ack = true});
  REQUIRE(pings.WaitForCount(2, 10s));

  const std::string stopped = broker.StopApp();
  INFO(stopped);
  REQUIRE(stopped.empty());
  REQUIRE(WaitUntil([&] { return d.Health(1s) == HealthCheckResponse::NOT_SERVING; }, 10s));
  // From here the publishing link is down. A ping sent just before (in
  // flight at the drop) may be sent again after recovery, with its old time.
  const int64_t down_from = WallMs();
  // A client publish made during the outage waits for the broker (wait_timeout 60 s).
  std::vector<pb::PublishResult> during(1);
  grpc::Status during_status;
  std::thread waiting([&] {
    during_status = PublishOne(d.stub(), MakePublish(data, data + "-during", 1), &during[0], 60s);
  });
  std::this_thread::sleep_for(kOutage);  // the outage's length, not a wait for a condition
  const std::string started = broker.StartApp();
  INFO(started);
  REQUIRE(started.empty());
  const int64_t up_at = WallMs();
  REQUIRE(WaitUntil([&] { return d.Health(1s) == HealthCheckResponse::SERVING; }, 60s));
  waiting.join();
  INFO(StatusText(during_status));
  CHECK(during_status.ok());
  CHECK(during[0].status() == pb::PublishResult::CONFIRMED);

  // Right after recovery, a publish is confirmed at once: no ping queue ahead of it.
  pb::PublishResult after;
  const auto before = Clock::now();
  REQUIRE(PublishOne(d.stub(), MakePublish(data, data + "-after", 2), &after, 10s).ok());
  const auto took = Clock::now() - before;
  CHECK(after.status() == pb::PublishResult::CONFIRMED);
  INFO("publish after recovery took " << Fixed(Seconds(took)) << " s");
  CHECK(took < 1s);

  // Pings flow again; none was sent while the broker was away, and they do
  // not come in a burst (one per interval, not ten at once).
  const size_t seen_before = pings.count();
  REQUIRE(pings.WaitForCount(seen_before + 2, 15s));
  std::this_thread::sleep_for(2s);  // let any backlog, if there were one, arrive
  int during_outage = 0;
  std::vector<int64_t> after_outage;
  for (const auto& p : pings.deliveries()) {
    const auto j = nlohmann::json::parse(p.payload(), nullptr, false);
    REQUIRE(j.is_object());
    const int64_t sent = j.value("sent_at_ms", int64_t{0});
    if (sent > down_from + 500 && sent < up_at) ++during_outage;
    if (sent >= up_at) after_outage.push_back(sent);
  }
  INFO("pings sent during the outage: " << during_outage << "; after it: " << after_outage.size());
  CHECK(during_outage == 0);
  REQUIRE(after_outage.size() >= 2);
  for (size_t i = 1; i < after_outage.size(); ++i) {
    CHECK(after_outage[i] - after_outage[i - 1] >= 900);  // one per interval
  }
  CHECK(pings.Leave().ok());
}

}  // namespace
}  // namespace mqs::it
