// The seed's control plane (issue 12; docs/control-plane.md): one config file
// for every replica, tasks to an app or to one server, results by
// correlation id, server.ping and the fleet view, unroutable messages a
// service can read.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "harness.h"
#include "nlohmann/json.hpp"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

grpc::Status SendTask(Daemon& d, const pb::SendTaskRequest& req, pb::SendTaskResponse* out,
                      Clock::duration timeout = 15s) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  return d.stub().SendTask(&ctx, req, out);
}

pb::SendTaskRequest Task(const std::string& app, const std::string& command,
                         const std::string& payload, const std::string& region = "",
                         const std::string& server = "") {
  pb::SendTaskRequest r;
  r.set_app(app);
  r.set_region(region);
  r.set_server(server);
  r.set_command(command);
  r.set_payload(payload);
  return r;
}

std::vector<pb::ServerInfo> ListServers(Daemon& d) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  pb::ListServersResponse resp;
  if (!d.stub().ListServers(&ctx, pb::ListServersRequest(), &resp).ok()) return {};
  return {resp.servers().begin(), resp.servers().end()};
}

std::string Key(const pb::Identity& id) { return id.app() + "." + id.region() + "." + id.server(); }

// The fleet: 3 service daemons from ONE config file (identity by env) and an
// admin daemon that sends tasks and watches pings.
struct Fleet {
  explicit Fleet(IntegrationTest& t) : t(t) {
    const std::string tag = std::to_string(getpid());
    usdtsvr = "usdtsvr-" + tag;
    eusdsvr = "eusdsvr-" + tag;
    ping_exchange = t.Business("ping");
    results_exchange = t.Business("results");
    // Each task queue comes with its dead letters (<exchange>.dlx, <queue>.dead).
    auto clean_up_business = [&t](const std::string& exchange) {
      t.CleanUpExchange(exchange);
      t.CleanUpExchange(exchange + ".dlx");
      t.CleanUpQueue(exchange + ".queue");
      t.CleanUpQueue(exchange + ".queue.dead");
    };
    for (const std::string& app : {usdtsvr, eusdsvr}) {
      clean_up_business("task." + app);
      for (const char* server : {"0", "1", "9"}) clean_up_business("task." + app + ".1." + server);
    }
    t.CleanUpQueue(ping_exchange + ".queue");
    t.CleanUpQueue(results_exchange + ".queue");

    // The admin first: its fleet queue must exist before the first pings.
    admin = &t.StartDaemon(
        // Pings expire (3 intervals): no dead letters for them, as in deploy/config.
        {{.name = "server.ping",
          .producer = true,
          .consumer = true,
          .exchange = ping_exchange,
          .dead_letter = false},
         {.name = "task.result",
          .producer = false,
          .consumer = true,
          .exchange = results_exchange}},
        {.extra_yaml = "identity: {app: admin-" + tag +
                       ", region: \"1\", server: \"0\"}\n"
                       "ping: {business: server.ping, interval: 1s, fleet: true}\n"
                       "tasks: {results: task.result}\n",
         .name = "admin"});

    // One file for every service replica; only the environment differs.
    shared_config = t.dir() + "/service.yaml";
    std::ofstream(shared_config) << "listen: [\"unix://" << t.dir()
                                 << "/{app}-{region}-{server}.sock\"]\n"
                                 << "broker: { uris: [\"" << t.uri() << "\"], heartbeat: 10s }\n"
                                 << "producers:\n"
                                 << "  server.ping: { exchange: " << ping_exchange << " }\n"
                                 << "  task.result: { exchange: " << results_exchange << " }\n"
                                 << "consumers:\n"
                                 << "  \"task.{app}\": { prefetch: 1 }\n"
                                 << "  \"task.{app}.{region}.{server}\": { prefetch: 1 }\n"
                                 << "ping: { business: server.ping, interval: 1s }\n"
                                 << "shutdown: { drain: 1s }\n"
                                 // Three daemons share it: no metrics port.
                                 << "metrics: { listen: \"\" }\n";
    u10 = &StartService(usdtsvr, "0");
    u11 = &StartService(usdtsvr, "1");
    e10 = &StartService(eusdsvr, "0");
  }

  Daemon& StartService(const std::string& app, const std::string& server) {
    return t.StartDaemon(
        {}, {.config_file = shared_config,
             .env = {"MQ_SIDECAR_APP=" + app, "MQ_SIDECAR_REGION=1", "MQ_SIDECAR_SERVER=" + server},
             .name = app + "-1-" + server});
  }

  IntegrationTest& t;
  std::string usdtsvr, eusdsvr, ping_exchange, results_exchange, shared_config;
  Daemon* admin = nullptr;
  Daemon* u10 = nullptr;
  Daemon* u11 = nullptr;
  Daemon* e10 = nullptr;
};

TEST_CASE("integration: tasks reach one server or any one instance of an app, from one config") {
  IntegrationTest t("tasks");
  Fleet f(t);

  // Each service subscribes to its business as written in the shared
  // config: the same client code on every replica.
  auto subscribe = [](Daemon& d, const std::string& business) {
    return std::make_unique<Subscriber>(
        d.stub(), Subscriber::Options{.business = business, .prefetch = 1, .auto_ack = true});
  };
  auto u10_app = subscribe(*f.u10, "task.{app}");
  auto u11_app = subscribe(*f.u11, "task.{app}");
  auto e10_app = subscribe(*f.e10, "task.{app}");
  auto u10_own = subscribe(*f.u10, "task.{app}.{region}.{server}");
  auto u11_own = subscribe(*f.u11, "task.{app}.{region}.{server}");
  auto e10_own = subscribe(*f.e10, "task.{app}.{region}.{server}");
  REQUIRE(WaitUntil(
      [&] {
        auto q = t.admin().InspectQueue("task." + f.usdtsvr + ".queue");
        return q && q->consumers == 2;
      },
      10s));

  // One exact server.
  pb::SendTaskResponse resp;
  grpc::Status s = SendTask(*f.admin, Task(f.usdtsvr, "run", "only-u11", "1", "1"), &resp);
  INFO(StatusText(s));
  REQUIRE(s.ok());
  CHECK(resp.exchange() == "task." + f.usdtsvr + ".1.1");
  CHECK(resp.correlation_id().size() > 17);
  REQUIRE(u11_own->WaitForCount(1, 10s));
  const pb::Delivery task = u11_own->deliveries()[0];
  CHECK(task.payload() == "only-u11");
  CHECK(task.routing_key() == "run");
  CHECK(task.correlation_id() == resp.correlation_id());
  CHECK(task.reply_to() == "task.result");

  // 30 tasks to the app: once each, over both usdtsvr instances. The seed's
  // spelling "distibute" is accepted and sent as "distribute".
  std::set<std::string> sent;
  for (int i = 0; i < 30; ++i) {
    const std::string payload = "any-" + std::to_string(i);
    s = SendTask(*f.admin, Task(f.usdtsvr, i % 2 ? "distibute" : "pause", payload), &resp);
    INFO(StatusText(s));
    REQUIRE(s.ok());
    sent.insert(payload);
  }
  REQUIRE(WaitUntil([&] { return u10_app->count() + u11_app->count() >= 30; }, 15s));
  std::multiset<std::string> got;
  for (auto* sub : {u10_app.get(), u11_app.get()}) {
    for (const auto& d : sub->deliveries()) {
      got.insert(d.payload());
      CHECK((d.routing_key() == "pause" || d.routing_key() == "distribute"));
    }
  }
  CHECK(got.size() == 30);
  CHECK(std::set<std::string>(got.begin(), got.end()) == sent);
  CHECK(u10_app->count() > 0);
  CHECK(u11_app->count() > 0);
  // Nothing went anywhere else (a stray copy would have arrived by now: the
  // one-server task and the 30 went out before these checks).
  CHECK(e10_app->count() == 0);
  CHECK(e10_own->count() == 0);
  CHECK(u10_own->count() == 0);
  CHECK(u11_own->count() == 1);

  // A server that does not exist, an app that does not exist: NOT_FOUND.
  s = SendTask(*f.admin, Task(f.usdtsvr, "run", "x", "1", "9"), &resp);
  CHECK(s.error_code() == grpc::StatusCode::NOT_FOUND);
  INFO(s.error_message());
  s = SendTask(*f.admin, Task("nosuchapp-" + std::to_string(getpid()), "run", "x"), &resp);
  CHECK(s.error_code() == grpc::StatusCode::NOT_FOUND);

  // A command outside the seed's set: INVALID_ARGUMENT naming the allowed ones.
  s = SendTask(*f.admin, Task(f.usdtsvr, "explode", "x"), &resp);
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_THAT(s.error_message(), Catch::Contains("run, awake, pause, delete, distribute"));
  // Region without server.
  s = SendTask(*f.admin, Task(f.usdtsvr, "run", "x", "1", ""), &resp);
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  // Publishing still works after the refusals (the NOT_FOUND closed the
  // publishing channel once).
  s = SendTask(*f.admin, Task(f.usdtsvr, "awake", "after"), &resp);
  CHECK(s.ok());
}

TEST_CASE(
    "integration: a task's result comes back to --wait by correlation id and to the durable "
    "results queue") {
  IntegrationTest t("results");
  Fleet f(t);
  // The service answers every task with CompleteTask, as a client would.
  Daemon* service = f.u10;
  auto answer = [service](const pb::Delivery& d) {
    pb::CompleteTaskRequest req;
    req.set_correlation_id(d.correlation_id());
    req.set_reply_to(d.reply_to());
    req.set_state("done");
    req.set_payload("result-of-" + d.payload());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    pb::PublishResult r;
    const grpc::Status s = service->stub().CompleteTask(&ctx, req, &r);
    if (!s.ok() || r.status() != pb::PublishResult::CONFIRMED) {
      std::fprintf(stderr, "CompleteTask failed: %s\n", s.error_message().c_str());
    }
  };
  Subscriber own(service->stub(), {.business = "task.{app}.{region}.{server}",
                                   .prefetch = 1,
                                   .auto_ack = true,
                                   .on_delivery = answer});
  REQUIRE(WaitUntil(
      [&] {
        auto q = t.admin().InspectQueue("task." + f.usdtsvr + ".1.0.queue");
        return q && q->consumers == 1;
      },
      10s));

  pb::SendTaskRequest req = Task(f.usdtsvr, "run", "echo", "1", "0");
  req.set_wait(true);
  req.set_timeout_ms(10000);
  pb::SendTaskResponse resp;
  grpc::Status s = SendTask(*f.admin, req, &resp, 15s);
  INFO(StatusText(s));
  REQUIRE(s.ok());
  CHECK(resp.result().correlation_id() == resp.correlation_id());
  CHECK(resp.result().state() == "done");
  CHECK(resp.result().payload() == "result-of-echo");
  CHECK(resp.result().from().app() == f.usdtsvr);
  CHECK(resp.result().from().server() == "0");

  // The same result is in the durable task.result queue (admin's row).
  std::optional<AmqpAdmin::Message> kept;
  REQUIRE(WaitUntil(
      [&] {
        kept = t.admin().Get(f.results_exchange + ".queue");
        return kept.has_value();
      },
      5s));
  CHECK(kept->body == "result-of-echo");
  CHECK(kept->headers["task-state"] == "done");

  // Nobody answers a task on the other server: --wait ends DEADLINE_EXCEEDED
  // at its timeout, naming the correlation id.
  req = Task(f.usdtsvr, "run", "unanswered", "1", "1");
  req.set_wait(true);
  req.set_timeout_ms(1500);
  const auto start = Clock::now();
  s = SendTask(*f.admin, req, &resp, 15s);
  CHECK(s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
  CHECK_THAT(s.error_message(), Catch::Contains("correlation id"));
  CHECK(Clock::now() - start >= 1400ms);
}

TEST_CASE(
    "integration: every daemon pings, the fleet view lists them and marks a killed one stale") {
  IntegrationTest t("fleet");
  Fleet f(t);
  // Each daemon's ping is seen within 2 intervals (1 s each) of its start.
  std::vector<pb::ServerInfo> servers;
  REQUIRE(WaitUntil(
      [&] {
        servers = ListServers(*f.admin);
        return servers.size() >= 4;
      },
      3s, 100ms));
  std::map<std::string, pb::ServerInfo> by_key;
  for (const auto& s : servers) by_key[Key(s.identity())] = s;
  const std::string k11 = f.usdtsvr + ".1.1";
  REQUIRE(by_key.count(f.usdtsvr + ".1.0"));
  REQUIRE(by_key.count(k11));
  REQUIRE(by_key.count(f.eusdsvr + ".1.0"));
  const pb::ServerInfo& u11 = by_key[k11];
  CHECK(u11.broker_state() == "connected");
  CHECK(u11.interval_ms() == 1000);
  CHECK_FALSE(u11.host().empty());
  CHECK_FALSE(u11.stale());

  // A service's own status travels in its pings; live streams per business too.
  Subscriber sub(f.u11->stub(), {.business = "task.{app}", .auto_ack = true});
  {
    pb::ReportStatusRequest req;
    req.mutable_status()->set_state("ready");
    req.mutable_status()->set_load(0.25);
    grpc::ClientContext ctx;
    pb::ReportStatusResponse resp;
    REQUIRE(f.u11->stub().ReportStatus(&ctx, req, &resp).ok());
  }
  REQUIRE(WaitUntil(
      [&] {
        for (const auto& s : ListServers(*f.admin)) {
          if (Key(s.identity()) == k11 && s.status().state() == "ready" &&
              s.streams().count("task." + f.usdtsvr) == 1) {
            CHECK(s.status().load() == Approx(0.25));
            return true;
          }
        }
        return false;
      },
      5s, 100ms));

  // SIGKILL: stale after 3 missed intervals; the others stay live.
  f.u11->Kill();
  const auto killed = Clock::now();
  bool stale = false;
  REQUIRE(WaitUntil(
      [&] {
        for (const auto& s : ListServers(*f.admin)) {
          if (Key(s.identity()) == k11) stale = s.stale();
        }
        return stale;
      },
      10s, 100ms));
  // Its last ping was at most one interval before the kill.
  CHECK(Clock::now() - killed >= 1900ms);
  for (const auto& s : ListServers(*f.admin)) {
    if (Key(s.identity()) != k11) CHECK_FALSE(s.stale());
  }
}

TEST_CASE(
    "integration: mqctl drives the control plane end to end: status report, servers, task send "
    "--wait answered by task complete, topology, and their exit codes") {
  IntegrationTest t("mqctl-control");
  Fleet f(t);
  const auto mqctl = [](Daemon& d, std::vector<std::string> args) {
    std::vector<std::string> argv{MqctlPath(), "--address", d.address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, 30s);
  };

  // status report on one replica; the admin's `servers` shows it in the pings.
  const CommandResult report = mqctl(
      *f.u11, {"status", "report", "--state", "ready", "--load", "0.5", "--label", "build=42"});
  INFO(CommandOutput(report));
  REQUIRE(report.exit_code == 0);
  const std::string k11 = f.usdtsvr + ".1.1";
  nlohmann::json seen;
  REQUIRE(WaitUntil(
      [&] {
        const CommandResult r = mqctl(*f.admin, {"servers", "--json", "--app", f.usdtsvr});
        if (r.exit_code != 0) return false;
        size_t rows = 0;
        for (const std::string& line : OutputLines(r.out)) {
          const auto j = nlohmann::json::parse(line);
          ++rows;
          if (j.at("app") != f.usdtsvr) return false;  // --app filters
          if (j.at("server") == "1" && j.at("status").is_object()) seen = j;
        }
        return rows == 2 && seen.is_object() && seen.at("status").at("state") == "ready";
      },
      10s, 200ms));
  CHECK(seen.at("status").at("load") == 0.5);
  CHECK(seen.at("status").at("labels").at("build") == "42");
  CHECK(seen.at("stale") == false);
  CHECK(seen.at("broker_state") == "connected");
  // The table: a header and a row per server, the other app's too once its
  // first ping is in.
  CommandResult table;
  CHECK(WaitUntil(
      [&] {
        table = mqctl(*f.admin, {"servers"});
        return table.exit_code == 0 && table.out.find(f.eusdsvr) != std::string::npos;
      },
      10s, 200ms));
  INFO(CommandOutput(table));
  CHECK_THAT(table.out,
             Catch::StartsWith("APP") && Catch::Contains(f.usdtsvr) && Catch::Contains("ready"));

  // task send --wait to one server, answered by the service with task complete.
  Subscriber own(f.u10->stub(),
                 {.business = "task.{app}.{region}.{server}",
                  .prefetch = 1,
                  .auto_ack = true,
                  .on_delivery = [&](const pb::Delivery& d) {
                    const CommandResult done = mqctl(
                        *f.u10, {"task", "complete", d.correlation_id(), "result-of-" + d.payload(),
                                 "--reply-to", d.reply_to(), "--state", "done"});
                    if (done.exit_code != 0) {
                      std::fprintf(stderr, "task complete: %s\n", CommandOutput(done).c_str());
                    }
                  }});
  REQUIRE(WaitUntil(
      [&] {
        auto q = t.admin().InspectQueue("task." + f.usdtsvr + ".1.0.queue");
        return q && q->consumers == 1;
      },
      10s));
  const CommandResult sent =
      mqctl(*f.admin, {"task", "send", "run", "echo", "--app", f.usdtsvr, "--region", "1",
                       "--server", "0", "--wait", "--timeout", "10s", "--json"});
  INFO(CommandOutput(sent));
  REQUIRE(sent.exit_code == 0);
  const auto answer = nlohmann::json::parse(sent.out);
  CHECK(answer.at("command") == "run");
  CHECK(answer.at("exchange") == "task." + f.usdtsvr + ".1.0");
  REQUIRE(answer.at("result").is_object());
  CHECK(answer.at("result").at("correlation_id") == answer.at("correlation_id"));
  CHECK(answer.at("result").at("state") == "done");
  CHECK(answer.at("result").at("payload") == "result-of-echo");
  CHECK(answer.at("result").at("from").at("server") == "0");

  // Nobody answers on server 1: exit 2 at the timeout. A task for an app no
  // queue serves: exit 2 (NOT_FOUND). Bad usage: 64.
  const CommandResult unanswered =
      mqctl(*f.admin, {"task", "send", "run", "x", "--app", f.usdtsvr, "--region", "1", "--server",
                       "1", "--wait", "--timeout", "1s"});
  INFO(CommandOutput(unanswered));
  CHECK(unanswered.exit_code == 2);
  const CommandResult nobody =
      mqctl(*f.admin, {"task", "send", "run", "x", "--app", "nosuchapp-" + f.usdtsvr});
  INFO(CommandOutput(nobody));
  CHECK(nobody.exit_code == 2);
  CHECK(mqctl(*f.admin, {"task", "send", "run"}).exit_code == 64);  // --app is required
  CHECK(mqctl(*f.admin, {"task", "send", "run", "--app", "a", "--region", "1"}).exit_code ==
        64);  // --region needs --server

  // topology: JSON with the connection and what the daemon declared.
  const CommandResult top = mqctl(*f.u10, {"topology", "--pretty"});
  INFO(CommandOutput(top));
  REQUIRE(top.exit_code == 0);
  const auto topology = nlohmann::json::parse(top.out);
  CHECK(topology.at("connected") == true);
  bool own_queue = false;
  for (const auto& q : topology.at("queues")) {
    own_queue = own_queue || q.at("name") == "task." + f.usdtsvr + ".1.0.queue";
  }
  CHECK(own_queue);
}

TEST_CASE(
    "integration: unroutable messages of a producer with a handle are a business of their own") {
  IntegrationTest t("unroutable");
  const std::string with = t.Business("with");
  const std::string without = t.Business("without");
  const std::string handle = t.Business("handle");
  t.CleanUpExchange(handle);
  t.CleanUpQueue(handle + ".queue");
  Daemon& d = t.StartDaemon({{.name = with, .producer = true, .consumer = false, .handle = handle},
                             {.name = without, .producer = true, .consumer = false}});
  Subscriber sub(d.stub(), {.business = with + ".unroutable", .auto_ack = true});

  pb::PublishRequest req = MakePublish(with, "lost-1", 1, "nobody-binds-this");
  req.set_routing_key("no.binding.matches");
  req.set_correlation_id("corr-1");
  (*req.mutable_headers())["origin"] = "test";
  pb::PublishResult result;
  REQUIRE(PublishOne(d.stub(), req, &result).ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);
  REQUIRE(sub.WaitForCount(1, 10s));
  const pb::Delivery got = sub.deliveries()[0];
  CHECK(got.payload() == "nobody-binds-this");
  CHECK(got.routing_key() == "no.binding.matches");
  CHECK(got.exchange() == with);
  CHECK(got.message_id() == "lost-1");
  CHECK(got.correlation_id() == "corr-1");
  CHECK(got.headers().at("origin") == "test");

  req = MakePublish(without, "lost-2", 2);
  req.set_routing_key("no.binding.matches");
  REQUIRE(PublishOne(d.stub(), req, &result).ok());
  CHECK(result.status() == pb::PublishResult::UNROUTABLE);
}

TEST_CASE("integration: identity and placeholder errors stop --check-config with exit code 2") {
  IntegrationTest t("placeholders");
  const std::string path = t.dir() + "/bad.yaml";
  std::ofstream(path) << "consumers:\n  \"task.{app}.{region}.{server}\": {}\n";
  CommandResult r = RunCommand({"/usr/bin/env", "MQ_SIDECAR_APP=usdtsvr", "MQ_SIDECAR_REGION=1",
                                DaemonPathForTests(), "--check-config", "-c", path},
                               30s);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("{server}"));
  CHECK_THAT(r.err, Catch::Contains("identity.server"));
  r = RunCommand({"/usr/bin/env", "MQ_SIDECAR_APP=usd.tsvr", "MQ_SIDECAR_REGION=1",
                  "MQ_SIDECAR_SERVER=0", DaemonPathForTests(), "--check-config", "-c", path},
                 30s);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("identity.app"));
  r = RunCommand({"/usr/bin/env", "MQ_SIDECAR_APP=usdtsvr", "MQ_SIDECAR_REGION=1",
                  "MQ_SIDECAR_SERVER=0", DaemonPathForTests(), "--check-config", "-c", path},
                 30s);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("task.usdtsvr.1.0"));
}

}  // namespace
}  // namespace mqs::it
