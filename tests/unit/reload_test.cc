// Reload planning (config/reload.h): what a SIGHUP applies, keeps or rejects.
#include "config/reload.h"

#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

namespace mqs::config {
namespace {

Config Load(const std::string& extra, const std::string& level = "info") {
  absl::StatusOr<Config> c = LoadYamlText(
      "listen: [\"unix:///tmp/reload-test.sock\"]\n"
      "broker: { uris: [\"amqp://guest:guest@127.0.0.1:5672/\"], heartbeat: 10s }\n"
      "producers:\n"
      "  orders: { exchange: orders }\n"
      "consumers:\n"
      "  orders: { exchange: orders, prefetch: 16 }\n" +
          extra + "log: { level: " + level + " }\n",
      "sidecar.yaml");
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  c->instance = "0123456789abcdef";
  return *c;
}

TEST_CASE("reload: the same file is unchanged") {
  const ReloadReport r = PlanReload(Load(""), Load(""), false);
  CHECK(r.result == ReloadReport::Result::kUnchanged);
  CHECK(r.applied.empty());
  CHECK(r.kept.empty());
  CHECK(r.level == "info");
  CHECK(r.Summary() == "reload: unchanged (the file says what runs)");
}

TEST_CASE("reload: a new instance id is not a change") {
  Config next = Load("");
  next.instance = "fedcba9876543210";
  CHECK(PlanReload(Load(""), next, false).result == ReloadReport::Result::kUnchanged);
}

TEST_CASE("reload: the log level is applied live, unless --log-level pinned it") {
  const ReloadReport r = PlanReload(Load(""), Load("", "debug"), false);
  CHECK(r.result == ReloadReport::Result::kApplied);
  CHECK(r.level == "debug");
  REQUIRE(r.applied.size() == 1);
  CHECK(r.applied[0] == "log.level: info -> debug");
  CHECK(r.kept.empty());

  const ReloadReport pinned = PlanReload(Load(""), Load("", "debug"), true);
  CHECK(pinned.result == ReloadReport::Result::kKept);
  CHECK(pinned.level == "info");
  REQUIRE(pinned.kept.size() == 1);
  CHECK(pinned.kept[0].find("--log-level on the command line wins") != std::string::npos);
}

TEST_CASE("reload: what needs a restart is kept and named, by section and by business") {
  const Config running = Load("");
  Config next = Load(
      "  payments: { exchange: payments }\n"  // a second consumer (under consumers:)
      "publish: { window: 64 }\n",
      "debug");
  next.broker.uris = {"amqp://guest:guest@10.0.0.1:5672/"};
  const ReloadReport r = PlanReload(running, next, false);
  INFO(r.Summary());
  CHECK(r.result == ReloadReport::Result::kKept);
  CHECK(r.level == "debug");  // applied beside what is kept
  CHECK(r.applied.size() == 1);
  CHECK(r.kept == std::vector<std::string>{"broker", "businesses: added [payments]", "publish"});
  CHECK(r.Summary() ==
        "reload: kept; applied: log.level: info -> debug; kept until a restart: broker, "
        "businesses: added [payments], publish");
}

TEST_CASE("reload: a business removed or changed is named") {
  Config next = Load("");
  next.consumers[0].binding_keys = {"orders.#"};
  next.producers.clear();
  const ReloadReport r = PlanReload(Load(""), next, false);
  INFO(r.Summary());
  REQUIRE(r.kept.size() == 1);
  CHECK(r.kept[0] == "businesses: changed [orders]");
}

TEST_CASE(
    "reload: a consumer's prefetch applies to new streams, within the running "
    "limits.max_prefetch") {
  Config next = Load("");
  next.consumers[0].prefetch = 32;
  const ReloadReport r = PlanReload(Load(""), next, false);
  INFO(r.Summary());
  CHECK(r.result == ReloadReport::Result::kApplied);
  CHECK(r.applied == std::vector<std::string>{"consumers.orders.prefetch: 16 -> 32 (new streams)"});
  CHECK(r.kept.empty());
  CHECK(r.prefetch == std::map<std::string, uint32_t>{{"orders", 32}});

  // Beside another change of the same business: the prefetch applies, the
  // rest is kept.
  next.consumers[0].binding_keys = {"orders.#"};
  const ReloadReport both = PlanReload(Load(""), next, false);
  CHECK(both.prefetch == std::map<std::string, uint32_t>{{"orders", 32}});
  CHECK(both.kept == std::vector<std::string>{"businesses: changed [orders]"});

  // Above the running limit (the file raises both): kept with the limit.
  Config running = Load("");
  running.limits.max_prefetch = 20;
  Config raised = Load("");
  raised.consumers[0].prefetch = 32;
  raised.limits.max_prefetch = 100;
  const ReloadReport over = PlanReload(running, raised, false);
  INFO(over.Summary());
  CHECK(over.prefetch.empty());
  CHECK(over.kept == std::vector<std::string>{"businesses: changed [orders]", "limits"});
}

TEST_CASE("reload: the log gives the prefetch a reload applied, else the configured one") {
  ReloadLog log;
  Consumer orders;
  orders.name = "orders";
  orders.prefetch = 16;
  Consumer other;
  other.name = "other";
  other.prefetch = 8;
  CHECK(log.Prefetch(orders) == 16);
  ReloadReport r;
  r.prefetch["orders"] = 64;
  log.Record(r, std::chrono::system_clock::now());
  CHECK(log.Prefetch(orders) == 64);
  CHECK(log.Prefetch(other) == 8);
  // A later reload without a prefetch change keeps the applied one.
  log.Record(ReloadReport(), std::chrono::system_clock::now());
  CHECK(log.Prefetch(orders) == 64);
}

TEST_CASE(
    "reload: a consumer's retry delays and max_attempts apply to new streams, and turning retry on "
    "or "
    "off is kept until a restart") {
  using std::chrono::milliseconds;
  Config running = Load("");
  running.consumers[0].retry = {.delays = {milliseconds(1000), milliseconds(10000)},
                                .max_attempts = 3};
  Config next = running;
  next.consumers[0].retry = {.delays = {milliseconds(500)}, .max_attempts = 4};
  const ReloadReport r = PlanReload(running, next, false);
  INFO(r.Summary());
  CHECK(r.result == ReloadReport::Result::kApplied);
  CHECK(r.applied ==
        std::vector<std::string>{"consumers.orders.retry: {delays: [1s, 10s], max_attempts: 3} -> "
                                 "{delays: [500ms], max_attempts: 4} (new streams)"});
  CHECK(r.kept.empty());
  REQUIRE(r.retry.count("orders") == 1);
  CHECK(SameRetry(r.retry.at("orders"), next.consumers[0].retry));

  // Off -> on and on -> off change the queue's dead-letter topology: kept.
  const ReloadReport on = PlanReload(Load(""), next, false);
  CHECK(on.retry.empty());
  CHECK(on.kept == std::vector<std::string>{"businesses: changed [orders]"});
  const ReloadReport off = PlanReload(next, Load(""), false);
  CHECK(off.retry.empty());
  CHECK(off.kept == std::vector<std::string>{"businesses: changed [orders]"});
}

TEST_CASE(
    "reload: the log gives a new stream its business with the retry a reload applied, and every "
    "copy handed out stays valid") {
  using std::chrono::milliseconds;
  ReloadLog log;
  Consumer orders;
  orders.name = "orders";
  orders.queue = "orders.queue";
  orders.retry = {.delays = {milliseconds(1000)}, .max_attempts = 2};
  Consumer other;
  other.name = "other";
  CHECK(log.ForNewStream(orders) == &orders);  // nothing applied: the configured one

  ReloadReport r;
  r.retry["orders"] = {.delays = {milliseconds(300)}, .max_attempts = 5};
  log.Record(r, std::chrono::system_clock::now());
  const Consumer* first = log.ForNewStream(orders);
  REQUIRE(first != &orders);
  CHECK(first->name == "orders");
  CHECK(first->queue == "orders.queue");
  CHECK(first->retry.delays == std::vector<milliseconds>{milliseconds(300)});
  CHECK(first->retry.max_attempts == 5);
  CHECK(log.ForNewStream(orders) == first);  // one copy per change
  CHECK(log.ForNewStream(other) == &other);
  // A reload without a retry change keeps it.
  log.Record(ReloadReport(), std::chrono::system_clock::now());
  CHECK(log.ForNewStream(orders) == first);

  // Another change: a new copy; the first one, which old streams hold, stays.
  r.retry["orders"] = {.delays = {milliseconds(2000)}, .max_attempts = 2};
  log.Record(r, std::chrono::system_clock::now());
  const Consumer* second = log.ForNewStream(orders);
  CHECK(second != first);
  CHECK(second->retry.delays == std::vector<milliseconds>{milliseconds(2000)});
  CHECK(first->retry.delays == std::vector<milliseconds>{milliseconds(300)});
}

TEST_CASE("reload: a file that does not load is rejected with its errors, nothing changes") {
  const absl::StatusOr<Config> broken =
      LoadYamlText("broker: { heartbeat: soon }\n", "sidecar.yaml");
  REQUIRE_FALSE(broken.ok());
  const ReloadReport r = PlanReload(Load("", "warn"), broken, false);
  CHECK(r.result == ReloadReport::Result::kRejected);
  CHECK(r.level == "warn");
  CHECK(r.applied.empty());
  CHECK(r.error.find("sidecar.yaml:1") != std::string::npos);
  CHECK(r.Summary().find("reload: rejected: the running config stays; the file: sidecar.yaml:1") ==
        0);
}

TEST_CASE("reload: the log keeps the last report") {
  ReloadLog log;
  CHECK_FALSE(log.Last().has_value());
  ReloadReport r;
  r.result = ReloadReport::Result::kApplied;
  log.Record(r, std::chrono::system_clock::time_point(std::chrono::seconds(5)));
  r.result = ReloadReport::Result::kRejected;
  log.Record(r, std::chrono::system_clock::time_point(std::chrono::seconds(9)));
  REQUIRE(log.Last().has_value());
  CHECK(log.Last()->report.result == ReloadReport::Result::kRejected);
  CHECK(log.Last()->at == std::chrono::system_clock::time_point(std::chrono::seconds(9)));
}

}  // namespace
}  // namespace mqs::config
