// The control plane's pure logic: task names and commands, the ping payload,
// the fleet table, task waiters, and the exclusive queues of the plan.
#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

#include "config/topology_plan.h"
#include "control/control_plane.h"
#include "control/ping.h"
#include "control/task_waiters.h"
#include "control/tasks.h"

namespace mqs::control {
namespace {

namespace v1 = mqsidecar::v1;
using namespace std::chrono_literals;

TEST_CASE("control: task commands are the seed's, with its spelling of distribute") {
  for (const char* c : {"run", "awake", "pause", "delete", "distribute"}) {
    CHECK(NormalizeCommand(c).value() == c);
  }
  CHECK(NormalizeCommand("distibute").value() == "distribute");
  for (const char* bad : {"", "Run", "explode", "run ", "#"}) {
    absl::StatusOr<std::string> r = NormalizeCommand(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(r.status().message()),
               Catch::Contains("run, awake, pause, delete, distribute"));
  }
}

TEST_CASE("control: a task goes to task.<app> or task.<app>.<region>.<server>") {
  v1::SendTaskRequest r;
  r.set_app("usdtsvr");
  CHECK(TaskExchange(r).value() == "task.usdtsvr");
  r.set_region("1");
  r.set_server("0");
  CHECK(TaskExchange(r).value() == "task.usdtsvr.1.0");

  auto error = [](const v1::SendTaskRequest& req) {
    absl::StatusOr<std::string> e = TaskExchange(req);
    REQUIRE_FALSE(e.ok());
    CHECK(e.status().code() == absl::StatusCode::kInvalidArgument);
    return std::string(e.status().message());
  };
  v1::SendTaskRequest only_region = r;
  only_region.clear_server();
  CHECK_THAT(error(only_region), Catch::Contains("region and server"));
  v1::SendTaskRequest dotted = r;
  dotted.set_server("0.1");
  CHECK_THAT(error(dotted), Catch::StartsWith("server:"));
  v1::SendTaskRequest wild = r;
  wild.set_app("usdt*");
  CHECK_THAT(error(wild), Catch::StartsWith("app:"));
  v1::SendTaskRequest none;
  CHECK_THAT(error(none), Catch::Contains("app: required"));
}

TEST_CASE("control: correlation ids start with the instance, identities round-trip") {
  const std::string a = NewCorrelationId("0123456789abcdef");
  const std::string b = NewCorrelationId("0123456789abcdef");
  CHECK(a.rfind("0123456789abcdef.", 0) == 0);
  CHECK(a.size() == 33);
  CHECK(a != b);
  v1::Identity id;
  id.set_app("usdtsvr");
  id.set_region("1");
  id.set_server("0");
  CHECK(FormatIdentity(id) == "usdtsvr.1.0");
  CHECK(ParseIdentity("usdtsvr.1.0").SerializeAsString() == id.SerializeAsString());
  CHECK(FormatIdentity(v1::Identity()).empty());
}

TEST_CASE("control: a result delivery becomes a TaskResult") {
  v1::Delivery d;
  d.set_correlation_id("abc.def");
  d.set_payload("ok");
  d.set_content_type("text/plain");
  d.set_published_at_ms(1234);
  (*d.mutable_headers())["task-state"] = "done";
  (*d.mutable_headers())["task-from"] = "usdtsvr.1.1";
  (*d.mutable_headers())["other"] = "kept";
  const v1::TaskResult r = ResultFromDelivery(d);
  CHECK(r.correlation_id() == "abc.def");
  CHECK(r.state() == "done");
  CHECK(r.from().server() == "1");
  CHECK(r.payload() == "ok");
  CHECK(r.completed_at_ms() == 1234);
  CHECK(r.headers().size() == 1);
  CHECK(r.headers().at("other") == "kept");
}

PingFacts Facts(const std::string& app, const std::string& server) {
  PingFacts f;
  f.identity.set_app(app);
  f.identity.set_region("1");
  f.identity.set_server(server);
  f.host = "host-a";
  f.pid = 42;
  f.version = kVersion;
  f.started_at_ms = 1000;
  f.sent_at_ms = 5000;
  f.interval_ms = 10000;
  f.broker_state = "connected";
  f.streams = {{"task.usdtsvr", 2}};
  return f;
}

TEST_CASE("control: a ping's JSON carries identity, state, streams and status") {
  PingFacts f = Facts("usdtsvr", "0");
  v1::ServiceStatus status;
  status.set_state("ready");
  status.set_load(0.3);
  status.set_message("bad utf-8 \xff kept readable");
  (*status.mutable_labels())["zone"] = "a";
  status.set_reported_at_ms(4000);
  f.status = status;
  absl::StatusOr<v1::ServerInfo> info = ParsePing(BuildPing(f));
  REQUIRE(info.ok());
  CHECK(info->identity().app() == "usdtsvr");
  CHECK(info->host() == "host-a");
  CHECK(info->pid() == 42);
  CHECK(info->uptime_ms() == 4000);
  CHECK(info->interval_ms() == 10000);
  CHECK(info->broker_state() == "connected");
  CHECK(info->streams().at("task.usdtsvr") == 2);
  CHECK(info->status().state() == "ready");
  CHECK(info->status().load() == Approx(0.3));
  CHECK(info->status().labels().at("zone") == "a");
  CHECK(RoutingKeyFor(f.identity) == "usdtsvr.1.0");

  // Without a status, none is reported.
  absl::StatusOr<v1::ServerInfo> plain = ParsePing(BuildPing(Facts("usdtsvr", "1")));
  REQUIRE(plain.ok());
  CHECK_FALSE(plain->has_status());
}

TEST_CASE("control: what is not a ping is refused, unknown fields are ignored") {
  CHECK_FALSE(ParsePing("not json").ok());
  CHECK_FALSE(ParsePing("[1,2]").ok());
  CHECK_FALSE(ParsePing(R"({"app":"a","region":"1","interval_ms":1000})").ok());
  CHECK_FALSE(ParsePing(R"({"app":"a","region":"1","server":"0"})").ok());
  CHECK_FALSE(ParsePing(R"({"app":"a.b","region":"1","server":"0","interval_ms":1000})").ok());
  absl::StatusOr<v1::ServerInfo> newer = ParsePing(
      R"({"app":"a","region":"1","server":"0","interval_ms":1000,"future":{"x":1},"pid":"nan"})");
  REQUIRE(newer.ok());
  CHECK(newer->pid() == 0);
}

TEST_CASE("control: a hostile ping (nested a million deep, not UTF-8) is refused, not a crash") {
  // Anyone who may publish to the ping exchange can send these.
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  CHECK_FALSE(ParsePing(deep).ok());
  const std::string deep_field = R"({"app":"a","region":"1","server":"0","interval_ms":1000,"x":)" +
                                 std::string(500'000, '[') + std::string(500'000, ']') + "}";
  CHECK(ParsePing(deep_field).ok());
  CHECK_FALSE(
      ParsePing("{\"app\":\"a\xFF\",\"region\":\"1\",\"server\":\"0\",\"interval_ms\":1000}").ok());
}

TEST_CASE("control: the fleet table marks silence stale after 3 intervals, forgets after 30") {
  FleetTable table;
  auto info = [](const std::string& app, const std::string& server) {
    return ParsePing(BuildPing(Facts(app, server))).value();  // interval 10 s
  };
  table.Apply(info("usdtsvr", "1"), 0);
  table.Apply(info("usdtsvr", "0"), 0);
  table.Apply(info("eusdsvr", "0"), 20'000);
  std::vector<v1::ServerInfo> all = table.List("", 30'000);
  REQUIRE(all.size() == 3);
  CHECK(all[0].identity().app() == "eusdsvr");  // sorted by app, region, server
  CHECK(all[1].identity().server() == "0");
  CHECK(all[2].identity().server() == "1");
  for (const auto& s : all) CHECK_FALSE(s.stale());  // 30 s = 3 intervals: not yet
  all = table.List("", 30'001);
  CHECK(all[1].stale());
  CHECK(all[2].stale());
  CHECK_FALSE(all[0].stale());
  CHECK(table.List("usdtsvr", 30'001).size() == 2);
  table.Apply(info("usdtsvr", "1"), 31'000);  // back
  CHECK_FALSE(table.List("usdtsvr", 31'000)[1].stale());
  CHECK(table.List("", 300'000).size() == 3);
  CHECK(table.List("", 300'001).size() == 2);  // usdtsvr/1/0 forgotten
  CHECK(table.size() == 2);
}

TEST_CASE("control: a task waiter is answered exactly once") {
  TaskWaiters waiters;
  const auto t0 = TaskWaiters::Clock::now();
  std::vector<absl::StatusOr<v1::TaskResult>> answers;
  auto record = [&](absl::StatusOr<v1::TaskResult> r) { answers.push_back(std::move(r)); };
  REQUIRE(waiters.Add("a", t0 + 10s, record));
  REQUIRE(waiters.Add("b", t0 + 5s, record));
  REQUIRE(waiters.Add("c", t0 + 20s, record));
  CHECK_FALSE(waiters.Add("a", t0 + 1s, record));

  v1::TaskResult result;
  result.set_correlation_id("a");
  result.set_state("done");
  CHECK(waiters.Complete(result));
  CHECK_FALSE(waiters.Complete(result));  // a late copy: nobody waits
  REQUIRE(answers.size() == 1);
  CHECK(answers[0]->state() == "done");

  // Nothing expires before its deadline; the next deadline is reported.
  CHECK(waiters.Expire(t0 + 1s) == t0 + 5s);
  CHECK(answers.size() == 1);
  CHECK(waiters.Expire(t0 + 5s) == t0 + 20s);
  REQUIRE(answers.size() == 2);
  CHECK(answers[1].status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(answers[1].status().message()), Catch::Contains("b"));

  waiters.Cancel("c", absl::NotFoundError("no queue"));
  REQUIRE(answers.size() == 3);
  CHECK(answers[2].status().code() == absl::StatusCode::kNotFound);
  waiters.Cancel("c", absl::NotFoundError("again"));  // no second answer
  CHECK(answers.size() == 3);
  CHECK_FALSE(waiters.Expire(t0 + 1h).has_value());

  REQUIRE(waiters.Add("d", t0 + 1s, record));
  waiters.CancelAll(absl::UnavailableError("shutting down"));
  REQUIRE(answers.size() == 4);
  CHECK(answers[3].status().code() == absl::StatusCode::kUnavailable);
  CHECK(waiters.size() == 0);
}

TEST_CASE("control: stream counts per business") {
  StreamCounts counts;
  counts.Add("a", 1);
  counts.Add("a", 1);
  counts.Add("b", 1);
  counts.Add("b", -1);
  CHECK(counts.Snapshot() == std::map<std::string, uint32_t>{{"a", 2}});
}

TEST_CASE("control: the plan gets this sidecar's exclusive queues, the publisher's does not") {
  config::Config c;
  config::Producer ping;
  ping.name = "server.ping";
  ping.exchange = "server.ping";
  c.producers.push_back(ping);
  config::Consumer results;
  results.name = "task.result";
  c.consumers.push_back(results);
  c.ping.business = "server.ping";
  c.ping.fleet = true;
  c.tasks.results = "task.result";
  c.instance = "00112233aabbccdd";

  const config::TopologyPlan plan = config::PlanTopology(c);
  CHECK(config::FleetQueue(c) == "server.ping.fleet.00112233aabbccdd");
  CHECK(config::ReplyQueue(c) == "task.result.reply.00112233aabbccdd");
  int exclusive = 0;
  for (const auto& q : plan.queues) {
    if (!q.exclusive) continue;
    ++exclusive;
    CHECK(q.type == config::QueueType::kClassic);
  }
  CHECK(exclusive == 2);
  auto has_binding = [](const config::TopologyPlan& p, const std::string& ex, const std::string& q,
                        const std::string& key) {
    for (const auto& b : p.bindings) {
      if (b.exchange == ex && b.queue == q && b.binding_key == key) return true;
    }
    return false;
  };
  CHECK(has_binding(plan, "server.ping", config::FleetQueue(c), "#"));
  CHECK(has_binding(plan, "task.result", config::ReplyQueue(c), "00112233aabbccdd.#"));

  const config::TopologyPlan publisher = config::WithoutExclusive(plan);
  CHECK(publisher.queues.size() == plan.queues.size() - 2);
  CHECK(publisher.bindings.size() == plan.bindings.size() - 2);
  CHECK(publisher.exchanges.size() == plan.exchanges.size());
  CHECK_FALSE(has_binding(publisher, "server.ping", config::FleetQueue(c), "#"));

  // Off: none.
  c.ping.fleet = false;
  c.tasks.results.clear();
  for (const auto& q : config::PlanTopology(c).queues) CHECK_FALSE(q.exclusive);
}

}  // namespace
}  // namespace mqs::control
