// Reload (SIGHUP, systemctl reload) on a running daemon: the log level
// changes live, what needs a restart is kept and named, a broken file is
// rejected; streams and the broker links are untouched throughout. And the
// command line's exit codes (2 for anything invalid).
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

#include "checker.h"
#include "harness.h"
#include "recorded.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;
using grpc::health::v1::HealthCheckResponse;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Replaces the first `from` in the file with `to`; REQUIREs that it was there.
void Edit(const std::string& path, const std::string& from, const std::string& to) {
  std::string text = ReadFile(path);
  const size_t at = text.find(from);
  INFO(path << " has no \"" << from << "\":\n" << text);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), to);
  std::ofstream(path) << text;
}

// The last reload GetTopology reports, once its time is after `after_ms`.
std::optional<pb::Topology::Reload> WaitReload(Daemon& d, int64_t after_ms) {
  std::optional<pb::Topology::Reload> last;
  WaitUntil(
      [&] {
        const auto top = d.Topology(2s);
        if (!top || !top->has_last_reload() || top->last_reload().at_ms() <= after_ms) {
          return false;
        }
        last = top->last_reload();
        return true;
      },
      10s, 20ms);
  return last;
}

bool Delivered(Daemon& d, Subscriber& s, const std::string& biz, const std::string& id) {
  pb::PublishResult result;
  if (!PublishOne(d.stub(), MakePublish(biz, id, 1), &result).ok()) return false;
  if (result.status() != pb::PublishResult::CONFIRMED) return false;
  return WaitUntil(
      [&] {
        for (const auto& x : s.deliveries()) {
          if (x.message_id() == id) return true;
        }
        return false;
      },
      10s, 10ms);
}

TEST_CASE(
    "integration: SIGHUP applies a new log level live, keeps and names what needs a restart, "
    "rejects a broken file, while an open stream and publishing carry on throughout") {
  IntegrationTest t("reload");
  const std::string biz = t.Business("orders");
  Daemon& d = t.StartDaemon({{.name = biz}}, {.heartbeat = 10s});
  Subscriber s(d.stub(), {.business = biz, .consumer_name = "before-reload", .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));
  REQUIRE(Delivered(d, s, biz, "before"));

  // A stricter level and a broker change: the level applies, the broker stays.
  const std::string original = ReadFile(d.config_path());
  Edit(d.config_path(), "level: info", "level: warn");
  Edit(d.config_path(), "heartbeat: 10s", "heartbeat: 20s");
  d.Signal(SIGHUP);
  auto first = WaitReload(d, 0);
  REQUIRE(first.has_value());
  CHECK(first->result() == "kept");
  REQUIRE(first->applied_size() == 1);
  CHECK(first->applied(0) == "log.level: info -> warn");
  REQUIRE(first->kept_size() == 1);
  CHECK(first->kept(0) == "broker");
  CHECK(d.Log().find("reload: kept; applied: log.level: info -> warn; kept until a restart: "
                     "broker") != std::string::npos);
  CHECK(d.Health() == HealthCheckResponse::SERVING);
  CHECK_FALSE(s.ended());
  CHECK(Delivered(d, s, biz, "after-first"));

  // The same file again: the broker still differs from what runs (kept
  // again), nothing to apply, and its info line is not written any more:
  // the level is warn now.
  d.Signal(SIGHUP);
  auto second = WaitReload(d, first->at_ms());
  REQUIRE(second.has_value());
  CHECK(second->result() == "kept");
  CHECK(second->applied_size() == 0);
  CHECK(second->kept_size() == 1);
  CHECK(d.Log().find("reload: kept; kept until a restart: broker") == std::string::npos);

  // A broken file: rejected with the loader's error, the running config stays.
  std::ofstream(d.config_path()) << "broker: { heartbeat: soon }\n";
  d.Signal(SIGHUP);
  auto third = WaitReload(d, second->at_ms());
  REQUIRE(third.has_value());
  CHECK(third->result() == "rejected");
  CHECK(third->error().find(d.config_path() + ":1") != std::string::npos);
  CHECK(third->applied_size() == 0);
  CHECK(d.Log().find("reload: rejected: the running config stays") != std::string::npos);
  CHECK(d.Health() == HealthCheckResponse::SERVING);
  CHECK_FALSE(s.ended());
  CHECK(Delivered(d, s, biz, "after-rejected"));

  // The original file: back to info (the line saying so is written: a more
  // verbose level applies before it), nothing else differs.
  std::ofstream(d.config_path()) << original;
  d.Signal(SIGHUP);
  auto fourth = WaitReload(d, third->at_ms());
  REQUIRE(fourth.has_value());
  CHECK(fourth->result() == "applied");
  REQUIRE(fourth->applied_size() == 1);
  CHECK(fourth->applied(0) == "log.level: warn -> info");
  CHECK(WaitUntil(
      [&] {
        return d.Log().find("reload: applied; applied: log.level: warn -> info") !=
               std::string::npos;
      },
      5s, 20ms));
  // And once more: the file says what runs.
  d.Signal(SIGHUP);
  auto fifth = WaitReload(d, fourth->at_ms());
  REQUIRE(fifth.has_value());
  CHECK(fifth->result() == "unchanged");
  CHECK(d.Running());
  CHECK(s.Leave().ok());
}

TEST_CASE(
    "integration: PublishStream and Subscribe in flight across three SIGHUP reloads: the "
    "streams never end, every message confirmed once and delivered, nothing lost") {
  IntegrationTest t("reload-flight");
  const std::string biz = t.Business("orders");
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 64}}, {.heartbeat = 10s});
  History h;
  Subscriber s(d.stub(), Recording(h, biz, "s1"));
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));
  constexpr int kMessages = 6000;
  // Paced (3,000/s: 2 s), so that each reload lands while publishes are in flight.
  AsyncPublishStream stream(d.stub(), Recorded(h, MakeRequests(biz, biz, kMessages), 3000));
  int64_t after_ms = 0;
  const std::string original = ReadFile(d.config_path());
  for (const size_t answered : {1000u, 2500u, 4000u}) {
    REQUIRE(stream.WaitAnswered(answered, 30s));
    // A change that applies live (the level), alternating, so each reload
    // does something while the streams run.
    if (after_ms == 0 || answered == 4000u) {
      Edit(d.config_path(), "level: info", "level: debug");
    } else {
      std::ofstream(d.config_path()) << original;
    }
    d.Signal(SIGHUP);
    const auto reload = WaitReload(d, after_ms);
    REQUIRE(reload.has_value());
    CHECK(reload->result() == "applied");
    after_ms = reload->at_ms();
    CHECK_FALSE(stream.ended());
    CHECK_FALSE(s.ended());
  }
  const auto end = stream.WaitEnded(60s);
  REQUIRE(end.has_value());
  INFO("stream: " << StatusText(*end));
  CHECK(end->ok());
  CHECK(WaitUntil([&] { return h.ConfirmedUndelivered() == 0; }, 30s, 20ms));
  const History::Report r = h.Check();
  INFO(r.Summary());
  CHECK(r.confirmed == static_cast<size_t>(kMessages));
  CHECK(r.lost == 0);
  CHECK(r.extra_copies == 0);
  CHECK(r.Violations() == "");
  CHECK_FALSE(s.ended());
  CHECK(d.Health() == HealthCheckResponse::SERVING);
}

TEST_CASE(
    "integration: mqctl reload (the Reload RPC) reloads as SIGHUP does and prints the outcome, a "
    "file that does not load exits 2 and the running config stays") {
  IntegrationTest t("reload-rpc");
  const std::string biz = t.Business("orders");
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 2}}, {.heartbeat = 10s});
  const auto mqctl_reload = [&] {
    return RunCommand({MqctlPath(), "--address", d.address(), "reload"}, 20s);
  };
  // The file says what runs.
  CommandResult same = mqctl_reload();
  INFO(CommandOutput(same));
  CHECK(same.exit_code == 0);
  CHECK_THAT(same.out, Catch::Contains("\"result\":\"unchanged\""));

  // A stream opened before the reload keeps its prefetch (2).
  Subscriber before(d.stub(), {.business = biz, .consumer_name = "before"});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));

  // A new level and a new prefetch: applied, in the answer, the log and
  // GetTopology alike.
  const std::string original = ReadFile(d.config_path());
  Edit(d.config_path(), "level: info", "level: debug");
  Edit(d.config_path(), "prefetch: 2", "prefetch: 5");
  CommandResult applied = mqctl_reload();
  INFO(CommandOutput(applied));
  CHECK(applied.exit_code == 0);
  CHECK_THAT(applied.out, Catch::Contains("\"result\":\"applied\""));
  CHECK_THAT(applied.out, Catch::Contains("\"applied\":[\"log.level: info -> debug\",\"consumers." +
                                          biz + ".prefetch: 2 -> 5 (new streams)\"]"));
  CHECK(d.Log().find("reload: applied; applied: log.level: info -> debug") != std::string::npos);
  // A stream opened now (open.prefetch 0) gets 5, the old one still 2: of 12
  // messages nobody acks, 7 are taken and 5 stay ready.
  Subscriber after(d.stub(), {.business = biz, .consumer_name = "after"});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 2u, std::nullopt));
  REQUIRE(PublishConfirmed(d.stub(), biz, 12, biz + "-held").size() == 12);
  CHECK(WaitUntil([&] { return before.deliveries().size() == 2 && after.deliveries().size() == 5; },
                  10s, 10ms));
  CHECK(WaitForQueue(t.admin(), biz + ".queue", 2u, 5u));
  INFO("before " << before.deliveries().size() << ", after " << after.deliveries().size());
  CHECK(before.deliveries().size() == 2);
  CHECK(after.deliveries().size() == 5);
  const auto top = d.Topology(5s);
  REQUIRE(top.has_value());
  CHECK(top->last_reload().result() == "applied");

  // A file that does not load: exit 2, the error with file:line, nothing changes.
  std::ofstream(d.config_path()) << "broker: { heartbeat: soon }\n";
  CommandResult rejected = mqctl_reload();
  INFO(CommandOutput(rejected));
  CHECK(rejected.exit_code == 2);
  CHECK_THAT(rejected.out, Catch::Contains("\"result\":\"rejected\""));
  CHECK_THAT(rejected.out, Catch::Contains(d.config_path() + ":1"));
  CHECK(d.Health() == HealthCheckResponse::SERVING);

  // Back to the original: the level returns to info.
  std::ofstream(d.config_path()) << original;
  pb::ReloadResponse back;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  REQUIRE(d.stub().Reload(&ctx, pb::ReloadRequest(), &back).ok());
  CHECK(back.reload().result() == "applied");
  REQUIRE(back.reload().applied_size() == 2);
  CHECK(back.reload().applied(0) == "log.level: debug -> info");
  CHECK(back.reload().applied(1) == "consumers." + biz + ".prefetch: 5 -> 2 (new streams)");
  CHECK(d.Running());
}

TEST_CASE(
    "integration: a reload's new retry delays apply to the streams opened after it: their nacks "
    "come back through the new delay's retry queue, an older stream's wait the old delay") {
  IntegrationTest t("reload-retry");
  const std::string biz = t.Business("orders");
  const std::string queue = biz + ".queue";
  t.CleanUpQueue(queue + ".retry.1m");
  t.CleanUpQueue(queue + ".retry.300ms");
  Daemon& d = t.StartDaemon({{.name = biz, .retry = "{delays: [1m]}"}}, {.heartbeat = 10s});
  Subscriber before(d.stub(), {.business = biz, .prefetch = 1, .consumer_name = "before"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));

  Edit(d.config_path(), "retry: {delays: [1m]}", "retry: {delays: [300ms], max_attempts: 3}");
  d.Signal(SIGHUP);
  const auto reload = WaitReload(d, 0);
  REQUIRE(reload.has_value());
  CHECK(reload->result() == "applied");
  REQUIRE(reload->applied_size() == 1);
  CHECK(reload->applied(0) == "consumers." + biz +
                                  ".retry: {delays: [1m], max_attempts: 2} -> {delays: [300ms], "
                                  "max_attempts: 3} (new streams)");
  const auto top = d.Topology(5s);
  REQUIRE(top.has_value());
  for (const pb::Topology::Business& b : top->businesses()) {
    if (b.name() != biz || b.role() != "consumer") continue;
    CHECK(std::vector<uint64_t>(b.retry_delays_ms().begin(), b.retry_delays_ms().end()) ==
          std::vector<uint64_t>{300});
    CHECK(b.max_attempts() == 3);
  }

  // The stream opened before the reload: its nack waits the old minute.
  REQUIRE(PublishConfirmed(d.stub(), biz, 1, "old").size() == 1);
  REQUIRE(WaitUntil([&] { return before.deliveries().size() == 1; }, 10s, 10ms));
  REQUIRE(before.Nack(before.deliveries()[0].delivery_id(), /*requeue=*/true));
  CHECK(WaitForQueue(t.admin(), queue + ".retry.1m", std::nullopt, 1u, 10s));
  CHECK(before.Leave().ok());

  // A stream opened after it: back after 300 ms, through .retry.300ms
  // (declared on first use), as attempt 2.
  Subscriber after(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "after"});
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));
  REQUIRE(PublishConfirmed(d.stub(), biz, 1, "new").size() == 1);
  REQUIRE(WaitUntil([&] { return after.deliveries().size() == 1; }, 10s, 10ms));
  const auto nacked_at = std::chrono::steady_clock::now();
  REQUIRE(after.Nack(after.deliveries()[0].delivery_id(), /*requeue=*/true));
  REQUIRE(WaitUntil([&] { return after.deliveries().size() == 2; }, 20s, 10ms));
  const auto back_after = std::chrono::steady_clock::now() - nacked_at;
  const pb::Delivery again = after.deliveries()[1];
  CHECK(again.message_id() == after.deliveries()[0].message_id());
  CHECK(again.attempt() == 2);
  CHECK(back_after < 30s);  // the old delay would be a minute
  CHECK(t.admin().InspectQueue(queue + ".retry.300ms").has_value());
  CHECK(after.Ack(again.delivery_id()));
  CHECK(d.Running());
}

TEST_CASE("integration: an invalid command line exits 2, --help and --version 0") {
  const CommandResult bad = RunCommand({DaemonPathForTests(), "--no-such-flag"}, 10s);
  INFO(CommandOutput(bad));
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("--no-such-flag") != std::string::npos);
  const CommandResult missing = RunCommand({DaemonPathForTests(), "--config"}, 10s);
  INFO(CommandOutput(missing));
  CHECK(missing.exit_code == 2);
  CHECK(RunCommand({DaemonPathForTests(), "--help"}, 10s).exit_code == 0);
  CHECK(RunCommand({DaemonPathForTests(), "--version"}, 10s).exit_code == 0);
}

}  // namespace
}  // namespace mqs::it
