// Fault tests of the daemon's shutdown while the broker misbehaves (issue 11):
// SIGTERM must end the daemon cleanly (exit status 0, every call answered)
// however late the broker answers. They control the local RabbitMQ node
// (BrokerControl), so they run under the `fault` label, one at a time; every
// change to the broker is undone by BrokerControl's destructor, also when a
// test fails.
#include <signal.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;
using grpc::health::v1::HealthCheckResponse;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string WaitStatusText(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "wait status " + std::to_string(status);
}

TEST_CASE(
    "fault: SIGTERM while the broker is frozen and unary publishes await their confirms: the "
    "daemon exits 0 by itself and every call gets a status",
    "[fault]") {
  constexpr int kPublishes = 6;
  constexpr auto kCallDeadline = 60s;
  // A long heartbeat: the frozen broker is not found dead before the
  // shutdown gives up on the confirms, so the publishes are still owed an
  // answer when the server's completion queue shuts down.
  constexpr auto kHeartbeat = 30s;
  constexpr auto kExitLimit = 45s;
  IntegrationTest t("termfrozen");
  BrokerControl broker(t.uri());
  {
    const std::string why = broker.CheckControllable();
    INFO(why);
    REQUIRE(why.empty());
  }
  const std::string biz = t.Business("termfrozen");
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 1}},
                            {.heartbeat = kHeartbeat, .drain = 1000ms, .wait_timeout = 60s});
  REQUIRE(PublishConfirmed(d.stub(), biz, 1, biz + "-warm").size() == 1);

  const std::string froze = broker.Freeze();
  INFO(froze);
  REQUIRE(froze.empty());
  struct Outcome {
    grpc::Status status;
    Clock::duration took{};
  };
  std::vector<std::future<Outcome>> calls;
  for (int i = 0; i < kPublishes; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      const auto start = Clock::now();
      pb::PublishResult res;
      Outcome o;
      o.status = PublishOne(d.stub(), MakePublish(biz, biz + "-" + std::to_string(i), i), &res,
                            kCallDeadline);
      o.took = Clock::now() - start;
      return o;
    }));
  }
  // Let the publishes reach the publisher and go out to the frozen broker
  // (the scenario's timing, not a wait for a condition: nothing tells the
  // client that a publish was sent).
  std::this_thread::sleep_for(1500ms);
  for (auto& c : calls) REQUIRE(c.wait_for(0s) == std::future_status::timeout);

  const auto term_at = Clock::now();
  d.Signal(SIGTERM);
  const bool exited = d.WaitExit(kExitLimit);
  const auto exit_took = Clock::now() - term_at;
  // Thaw before judging, so a failed check leaves the broker running.
  const std::string thawed = broker.Thaw();
  INFO(thawed);
  CHECK(thawed.empty());
  INFO("daemon " << (exited ? "exited " + std::to_string(Seconds(exit_took)) + " s" : "still ran")
                 << " after SIGTERM; limit " << Seconds(kExitLimit) << " s");
  REQUIRE(exited);
  INFO(WaitStatusText(d.wait_status()));
  CHECK(WIFEXITED(d.wait_status()));
  CHECK(WEXITSTATUS(d.wait_status()) == 0);
  CHECK(d.Log().find("stopped") != std::string::npos);

  // Every call has its status now, long before its own deadline.
  for (int i = 0; i < kPublishes; ++i) {
    REQUIRE(calls[i].wait_for(10s) == std::future_status::ready);
    const Outcome o = calls[i].get();
    INFO("publish " << i << ": " << StatusText(o.status) << " after " << Seconds(o.took) << " s");
    CHECK(o.status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED);
    CHECK(o.took < kCallDeadline - 5s);
  }
  WARN("[fault] SIGTERM with " << kPublishes << " unary publishes awaiting a frozen broker: exit "
                               << Seconds(exit_took) << " s after SIGTERM");
}

}  // namespace
}  // namespace mqs::it
