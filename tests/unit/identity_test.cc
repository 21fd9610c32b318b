// Config for the control plane (issue 12): identity and its overrides,
// placeholders in names, ping, tasks, the implicit unroutable businesses,
// NewInstanceId, and the shipped per-service configs.
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "config/config.h"
#include "config/loader_internal.h"
#include "config/topology_plan.h"

namespace mqs::config {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::string ErrorText(const absl::StatusOr<Config>& result) {
  REQUIRE_FALSE(result.ok());
  return std::string(result.status().message());
}

size_t LineCount(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
}

LoadOptions Overrides(std::optional<std::string> app, std::optional<std::string> region,
                      std::optional<std::string> server) {
  LoadOptions options;
  options.identity.app = std::move(app);
  options.identity.region = std::move(region);
  options.identity.server = std::move(server);
  return options;
}

// Sets (or, with nullptr, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = ::getenv(name)) old_ = old;  // NOLINT(concurrency-mt-unsafe)
    if (value != nullptr) {
      ::setenv(name, value, 1);  // NOLINT(concurrency-mt-unsafe)
    } else {
      ::unsetenv(name);  // NOLINT(concurrency-mt-unsafe)
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
    } else {
      ::unsetenv(name_);  // NOLINT(concurrency-mt-unsafe)
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// ---------------------------------------------------------------- identity

TEST_CASE("identity: read from YAML and from the INI [identity] section") {
  absl::StatusOr<Config> c = LoadYamlText(
      "identity: { app: usdtsvr, region: 1, server: srv_0-a }\nproducers: { a: }\n", "i.yaml");
  REQUIRE(c.ok());
  CHECK(c->identity.app == "usdtsvr");
  CHECK(c->identity.region == "1");
  CHECK(c->identity.server == "srv_0-a");
  CHECK(c->identity.complete());

  c = LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\n[identity]\napp = otc\nregion=2\n", "i.ini");
  REQUIRE(c.ok());
  CHECK(c->identity.app == "otc");
  CHECK(c->identity.region == "2");
  CHECK(c->identity.server.empty());
  CHECK_FALSE(c->identity.complete());

  // Nothing set: all empty, and that is fine without placeholders or pings.
  c = LoadYamlText("producers: { a: }\n", "i.yaml");
  REQUIRE(c.ok());
  CHECK(c->identity.app.empty());
  CHECK(c->identity.region.empty());
  CHECK(c->identity.server.empty());
}

TEST_CASE("identity: invalid parts are errors naming the part") {
  const std::string err = ErrorText(LoadYamlText(R"(identity:
  app: "usdt svr"
  region: a.b
  server: "#"
producers: { a: }
)",
                                                 "i.yaml"));
  CHECK_THAT(err, Catch::Contains("i.yaml:2: identity.app: expected 1..64 letters, digits, '_' or "
                                  "'-'") &&
                      Catch::Contains("got \"usdt svr\""));
  CHECK_THAT(err, Catch::Contains("i.yaml:3: identity.region: expected 1..64 letters") &&
                      Catch::Contains("got \"a.b\""));
  CHECK_THAT(
      err, Catch::Contains("i.yaml:4: identity.server: expected") && Catch::Contains("got \"#\""));
  CHECK(LineCount(err) == 3);

  CHECK_THAT(ErrorText(LoadYamlText(
                 "identity: { app: " + std::string(65, 'a') + " }\nproducers: { a: }\n", "i.yaml")),
             Catch::Contains("i.yaml:1: identity.app: expected 1..64"));
  CHECK(
      LoadYamlText("identity: { app: " + std::string(64, 'a') + " }\nproducers: { a: }\n", "i.yaml")
          .ok());
  CHECK_THAT(ErrorText(LoadYamlText("identity: { region: \"\" }\nproducers: { a: }\n", "i.yaml")),
             Catch::Contains("i.yaml:1: identity.region: expected a non-empty name"));
  CHECK_THAT(ErrorText(LoadYamlText("identity: { host: x }\nproducers: { a: }\n", "i.yaml")),
             Catch::Contains("i.yaml:1: identity.host: unknown key; expected one of: app, region, "
                             "server"));
  CHECK_THAT(ErrorText(LoadYamlText("identity: otc\nproducers: { a: }\n", "i.yaml")),
             Catch::Contains("i.yaml:1: identity: expected a map (app, region, server)"));
  // INI: the same checks, the key's own line.
  const std::string ini = ErrorText(LoadIniText(
      "[rabbitmq]\nproducer={\"a\":{}}\n[identity]\nregion=a.b\nhost=x\nregion=1\n", "i.ini"));
  CHECK_THAT(ini, Catch::Contains("i.ini:4: identity.region: expected 1..64 letters") &&
                      Catch::Contains("got \"a.b\""));
  CHECK_THAT(ini, Catch::Contains("i.ini:5: identity.host: unknown key; expected one of: app, "
                                  "region, server"));
  CHECK_THAT(ini, Catch::Contains("i.ini:6: identity.region: duplicate key (first at line 4)"));
}

TEST_CASE("identity: overrides beat the file, flags beat the environment") {
  const std::string yaml =
      "identity: { app: file_app, region: file_region, server: file_server }\n"
      "producers: { a: }\n";
  // No overrides: the file.
  absl::StatusOr<Config> c = LoadYamlText(yaml, "o.yaml");
  REQUIRE(c.ok());
  CHECK(c->identity.app == "file_app");

  // flag > env > file, part by part.
  LoadOptions::IdentityOverrides flags;
  flags.region = "flag_region";
  LoadOptions::IdentityOverrides env;
  env.app = "env_app";
  env.region = "env_region";
  LoadOptions options;
  options.identity = MergeIdentityOverrides(flags, env);
  CHECK(options.identity.app == "env_app");
  CHECK(options.identity.region == "flag_region");
  CHECK_FALSE(options.identity.server.has_value());
  c = LoadYamlText(yaml, "o.yaml", options);
  REQUIRE(c.ok());
  CHECK(c->identity.app == "env_app");
  CHECK(c->identity.region == "flag_region");
  CHECK(c->identity.server == "file_server");

  // The INI loader and LoadFile take them too; an override may set a part
  // the file leaves out.
  c = LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\n[identity]\napp=file_app\n", "o.ini",
                  Overrides("x", std::nullopt, "7"));
  REQUIRE(c.ok());
  CHECK(c->identity.app == "x");
  CHECK(c->identity.region.empty());
  CHECK(c->identity.server == "7");
  c = LoadFile(MQS_SOURCE_DIR "/deploy/config/otc.yaml", Overrides("other", "3", "4"));
  REQUIRE(c.ok());
  CHECK(c->identity.app == "other");
  CHECK(c->FindConsumer("task.other.3.4") != nullptr);
}

TEST_CASE("identity: an invalid override names where it came from") {
  const std::string err = ErrorText(LoadYamlText("identity:\n  region: good\nproducers: { a: }\n",
                                                 "o.yaml", Overrides(std::nullopt, "a.b", "")));
  CHECK_THAT(err, Catch::Contains("o.yaml: identity.region (from --region or MQ_SIDECAR_REGION): "
                                  "expected 1..64 letters") &&
                      Catch::Contains("got \"a.b\""));
  // An override given empty (--server "") is not "unset".
  CHECK_THAT(err, Catch::Contains("o.yaml: identity.server (from --server or MQ_SIDECAR_SERVER): "
                                  "expected 1..64") &&
                      Catch::Contains("got \"\""));
  CHECK(LineCount(err) == 2);
  // A valid override hides an invalid file value.
  CHECK(LoadYamlText("identity: { app: a.b }\nproducers: { a: }\n", "o.yaml",
                     Overrides("ok", std::nullopt, std::nullopt))
            .ok());
}

TEST_CASE("identity: IdentityFromEnvironment reads MQ_SIDECAR_*, empty is not set") {
  {
    ScopedEnv app("MQ_SIDECAR_APP", "usdtsvr");
    ScopedEnv region("MQ_SIDECAR_REGION", "");
    ScopedEnv server("MQ_SIDECAR_SERVER", "3");
    const LoadOptions::IdentityOverrides env = IdentityFromEnvironment();
    CHECK(env.app == "usdtsvr");
    CHECK_FALSE(env.region.has_value());
    CHECK(env.server == "3");
  }
  ScopedEnv app("MQ_SIDECAR_APP", nullptr);
  ScopedEnv region("MQ_SIDECAR_REGION", nullptr);
  ScopedEnv server("MQ_SIDECAR_SERVER", nullptr);
  const LoadOptions::IdentityOverrides env = IdentityFromEnvironment();
  CHECK_FALSE(env.app.has_value());
  CHECK_FALSE(env.region.has_value());
  CHECK_FALSE(env.server.has_value());
}

TEST_CASE("identity: NewInstanceId is 16 random lowercase hex digits") {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    const std::string id = NewInstanceId();
    INFO(id);
    REQUIRE(id.size() == 16);
    CHECK(std::all_of(id.begin(), id.end(),
                      [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }));
    seen.insert(id);
  }
  CHECK(seen.size() == 100);
}

// ------------------------------------------------------------ placeholders

TEST_CASE("placeholders: resolved in names and fields, defaults derive from the resolved name") {
  absl::StatusOr<Config> c = LoadYamlText(R"(identity: { app: usdtsvr, region: "1", server: "0" }
producers:
  out.{app}: { handle: "{app}.unroutable" }
  plain: {}
consumers:
  task.{app}: {}
  task.{app}.{region}.{server}: {}
  custom:
    exchange: "ex.{region}"
    queue: "q.{server}"
    binding_keys: ["{app}.*", "#"]
)",
                                          "p.yaml");
  REQUIRE(c.ok());
  const Consumer* task = c->FindConsumer("task.usdtsvr");
  REQUIRE(task != nullptr);
  CHECK(task->name == "task.usdtsvr");
  CHECK(task->written_as == "task.{app}");
  CHECK(task->exchange == "task.usdtsvr");
  CHECK(task->queue == "task.usdtsvr.queue");
  // Either form finds it.
  CHECK(c->FindConsumer("task.{app}") == task);
  const Consumer* own = c->FindConsumer("task.{app}.{region}.{server}");
  REQUIRE(own != nullptr);
  CHECK(own->name == "task.usdtsvr.1.0");
  CHECK(own->exchange == "task.usdtsvr.1.0");
  CHECK(own->queue == "task.usdtsvr.1.0.queue");
  CHECK(c->FindConsumer("task.usdtsvr.1.0") == own);

  const Consumer* custom = c->FindConsumer("custom");
  REQUIRE(custom != nullptr);
  CHECK(custom->written_as.empty());  // the name had no placeholder
  CHECK(custom->exchange == "ex.1");
  CHECK(custom->queue == "q.0");
  CHECK(custom->binding_keys == std::vector<std::string>{"usdtsvr.*", "#"});

  const Producer* out = c->FindProducer("out.{app}");
  REQUIRE(out != nullptr);
  CHECK(out->name == "out.usdtsvr");
  CHECK(out->written_as == "out.{app}");
  CHECK(out->exchange == "out.usdtsvr");
  CHECK(out->handle == "usdtsvr.unroutable");
  CHECK(c->FindProducer("out.usdtsvr") == out);
  CHECK(c->FindProducer("plain")->written_as.empty());
  CHECK(c->FindProducer("") == nullptr);  // "" never matches an empty written_as
  CHECK(c->FindConsumer("") == nullptr);
}

TEST_CASE("placeholders: a part that is not set is an error naming the key and the part") {
  const std::string err = ErrorText(LoadYamlText(R"(identity: { app: otc }
consumers:
  task.{app}: {}
  task.{app}.{region}.{server}: {}
  other:
    queue: "q.{region}"
producers:
  p: { exchange: "x.{server}.{server}" }
)",
                                                 "m.yaml"));
  CHECK_THAT(err, Catch::Contains("m.yaml:4: consumers[\"task.{app}.{region}.{server}\"]: uses "
                                  "{region} but identity.region is not set (set identity.region, "
                                  "--region or MQ_SIDECAR_REGION)"));
  CHECK_THAT(err, Catch::Contains("m.yaml:4: consumers[\"task.{app}.{region}.{server}\"]: uses "
                                  "{server} but identity.server is not set (set identity.server, "
                                  "--server or MQ_SIDECAR_SERVER)"));
  CHECK_THAT(err, Catch::Contains("m.yaml:6: consumers[\"other\"].queue: uses {region} but "
                                  "identity.region is not set"));
  // Once per part and key, even if used twice.
  CHECK_THAT(err, Catch::Contains("m.yaml:8: producers[\"p\"].exchange: uses {server} but "
                                  "identity.server is not set"));
  CHECK(LineCount(err) == 4);  // task.{app} resolved; no cascade from the broken ones

  // The spec's example, with no identity at all, from INI.
  const std::string ini =
      ErrorText(LoadIniText("[rabbitmq]\nconsumer={\"task.{app}\":{}}\n", "m.ini"));
  CHECK(ini ==
        "m.ini:2: rabbitmq.consumer[\"task.{app}\"]: uses {app} but identity.app is not set (set "
        "identity.app, --app or MQ_SIDECAR_APP)");
}

TEST_CASE("placeholders: unknown placeholders and stray braces") {
  const std::string err = ErrorText(LoadYamlText(R"(identity: { app: otc }
consumers:
  task.{host}: {}
  a.{app: {}
  b: { queue: "q}" }
  c: { binding_keys: ["{app"] }
  d: { exchange: "{}" }
)",
                                                 "u.yaml"));
  CHECK_THAT(err, Catch::Contains("u.yaml:3: consumers[\"task.{host}\"]: unknown placeholder "
                                  "\"{host}\" in \"task.{host}\"; placeholders are {app}, {region} "
                                  "and {server}"));
  CHECK_THAT(err, Catch::Contains("u.yaml:4: consumers[\"a.{app\"]: unmatched '{' in \"a.{app\""));
  CHECK_THAT(err, Catch::Contains("u.yaml:5: consumers[\"b\"].queue: unmatched '}' in \"q}\""));
  CHECK_THAT(err, Catch::Contains("consumers[\"c\"].binding_keys[0]: unmatched '{'"));
  CHECK_THAT(err, Catch::Contains("u.yaml:7: consumers[\"d\"].exchange: unknown placeholder "
                                  "\"{}\""));
  CHECK(LineCount(err) == 5);
}

TEST_CASE("placeholders: ExpandPlaceholders") {
  Identity id{"otc", "1", ""};
  std::string out;
  std::vector<std::string> errors;
  CHECK(internal::ExpandPlaceholders("task.{app}.{region}", id, &out, &errors));
  CHECK(out == "task.otc.1");
  CHECK(internal::ExpandPlaceholders("no.placeholder", id, &out, &errors));
  CHECK(out == "no.placeholder");
  CHECK(errors.empty());
  out = "unchanged";
  CHECK_FALSE(internal::ExpandPlaceholders("{server}.{app}.{server}", id, &out, &errors));
  CHECK(out == "unchanged");
  REQUIRE(errors.size() == 1);
  CHECK(errors[0] ==
        "uses {server} but identity.server is not set (set identity.server, --server or "
        "MQ_SIDECAR_SERVER)");
  // An invalid part (reported on its own) fails silently.
  errors.clear();
  CHECK_FALSE(internal::ExpandPlaceholders("x.{region}", id, &out, &errors, {false, true, false}));
  CHECK(errors.empty());
}

TEST_CASE("placeholders: an invalid identity part is reported once, not per use") {
  const std::string err =
      ErrorText(LoadYamlText(R"(identity: { app: "a.b", region: "1", server: "0" }
producers:
  ping.{app}: {}
consumers:
  task.{app}: {}
  x: { queue: "{app}.q" }
ping: { business: "ping.{app}" }
tasks: { results: "task.{app}" }
)",
                             "v.yaml"));
  CHECK_THAT(err, Catch::Contains("v.yaml:1: identity.app: expected"));
  CHECK(LineCount(err) == 1);
}

TEST_CASE("placeholders: two written names resolving to one name") {
  const std::string err = ErrorText(LoadYamlText(R"(identity: { app: otc, region: "1" }
consumers:
  task.otc: {}
  task.{app}: {}
producers:
  p.{region}: {}
  p.1: {}
  task.{app}: {}
)",
                                                 "d.yaml"));
  CHECK_THAT(err, Catch::Contains("d.yaml:4: consumers[\"task.{app}\"]: resolves to \"task.otc\", "
                                  "as does consumers[\"task.otc\"] (line 3)"));
  CHECK_THAT(err, Catch::Contains("d.yaml:7: producers[\"p.1\"]: resolves to \"p.1\", as does "
                                  "producers[\"p.{region}\"] (line 6)"));
  // A producer and a consumer of one name are one business in two roles.
  CHECK(LineCount(err) == 2);
}

TEST_CASE("placeholders: errors after resolution point at the name as written") {
  const std::string err = ErrorText(LoadYamlText(R"(identity: { app: otc }
consumers:
  task.{app}:
    queue_type: classic
    max_deliveries: 3
  other: { queue: task.otc.queue }
)",
                                                 "w.yaml"));
  CHECK_THAT(err, Catch::Contains("w.yaml:5: consumers[\"task.{app}\"].max_deliveries: expected 0 "
                                  "for a classic queue"));
  // Sorted by resolved name, "other" claims the queue first.
  CHECK_THAT(err, Catch::Contains("w.yaml:4: consumers[\"task.{app}\"].queue_type: queue "
                                  "\"task.otc.queue\" is classic here but quorum for "
                                  "consumers[\"other\"] (line 6)"));
}

// -------------------------------------------------------------------- ping

TEST_CASE("ping: business, interval and fleet") {
  absl::StatusOr<Config> c = LoadYamlText(R"(identity: { app: otc, region: "1", server: "0" }
producers:
  server.ping: {}
  ping.{app}: {}
ping: { business: server.ping }
)",
                                          "p.yaml");
  REQUIRE(c.ok());
  CHECK(c->ping.business == "server.ping");
  CHECK(c->ping.interval == seconds(10));  // default
  CHECK_FALSE(c->ping.fleet);

  // Either form; kept resolved.
  c = LoadYamlText(R"(identity: { app: otc, region: "1", server: "0" }
producers:
  ping.{app}: {}
ping: { business: "ping.{app}", interval: 1s, fleet: true }
)",
                   "p.yaml");
  REQUIRE(c.ok());
  CHECK(c->ping.business == "ping.otc");
  CHECK(c->ping.interval == seconds(1));
  CHECK(c->ping.fleet);
  c = LoadYamlText(R"(identity: { app: otc, region: "1", server: "0" }
producers:
  ping.{app}: {}
ping: { business: ping.otc, interval: 1h }
)",
                   "p.yaml");
  REQUIRE(c.ok());
  CHECK(c->ping.business == "ping.otc");
  CHECK(c->ping.interval == std::chrono::hours(1));

  // No pings: nothing is needed.
  c = LoadYamlText("producers: { a: }\nping: { interval: 5s }\n", "p.yaml");
  REQUIRE(c.ok());
  CHECK(c->ping.business.empty());

  // INI [ping].
  c = LoadIniText(R"([rabbitmq]
producer={"server.ping":{}}
[identity]
app=otc
region=1
server=0
[ping]
business=server.ping
interval=30s
fleet=true
)",
                  "p.ini");
  REQUIRE(c.ok());
  CHECK(c->ping.business == "server.ping");
  CHECK(c->ping.interval == seconds(30));
  CHECK(c->ping.fleet);
}

TEST_CASE("ping: errors") {
  // Not a producer (a consumer of that name does not count).
  std::string err = ErrorText(LoadYamlText(R"(identity: { app: otc, region: "1", server: "0" }
consumers: { server.ping: {} }
ping:
  business: server.ping
  interval: 500ms
)",
                                           "e.yaml"));
  CHECK_THAT(err, Catch::Contains("e.yaml:4: ping.business: expected a configured producer "
                                  "business, got \"server.ping\""));
  CHECK_THAT(err, Catch::Contains("e.yaml:5: ping.interval: expected a duration of 1s..1h, got "
                                  "500ms"));
  CHECK(LineCount(err) == 2);

  // A complete identity is needed: each missing part named.
  err = ErrorText(LoadYamlText(R"(identity: { app: otc }
producers: { server.ping: {} }
ping: { business: server.ping, interval: 2h }
)",
                               "e.yaml"));
  CHECK_THAT(err, Catch::Contains("e.yaml:3: ping.business: pings need a complete identity, but "
                                  "identity.region is not set (set identity.region, --region or "
                                  "MQ_SIDECAR_REGION)"));
  CHECK_THAT(err, Catch::Contains("ping.business: pings need a complete identity, but "
                                  "identity.server is not set"));
  CHECK_THAT(err,
             Catch::Contains("e.yaml:3: ping.interval: expected a duration of 1s..1h, got 2h"));
  CHECK(LineCount(err) == 3);
  // ... which the overrides may complete.
  CHECK(LoadYamlText("identity: { app: otc }\nproducers: { server.ping: {} }\n"
                     "ping: { business: server.ping }\n",
                     "e.yaml", Overrides(std::nullopt, "1", "0"))
            .ok());

  // fleet needs a ping business; booleans are true or false.
  err = ErrorText(LoadYamlText("producers: { a: }\nping:\n  fleet: true\n", "e.yaml"));
  CHECK(err ==
        "e.yaml:3: ping.fleet: requires ping.business (the fleet is watched through the "
        "ping exchange)");
  err = ErrorText(LoadYamlText("producers: { a: }\nping: { fleet: yes, wat: 1 }\n", "e.yaml"));
  CHECK_THAT(err, Catch::Contains("e.yaml:2: ping.fleet: expected true or false, got \"yes\""));
  CHECK_THAT(err, Catch::Contains("e.yaml:2: ping.wat: unknown key; expected one of: business, "
                                  "interval, fleet"));
  err = ErrorText(LoadIniText("[rabbitmq]\nproducer={\"a\":{}}\n[ping]\ninterval=0\n", "e.ini"));
  CHECK(err == "e.ini:4: ping.interval: expected a duration of 1s..1h, got 0s");
}

// ------------------------------------------------------------------- tasks

TEST_CASE("tasks: results names a configured consumer business") {
  absl::StatusOr<Config> c = LoadYamlText(R"(identity: { app: admin }
consumers: { task.result: {}, "res.{app}": {} }
tasks: { results: task.result }
)",
                                          "t.yaml");
  REQUIRE(c.ok());
  CHECK(c->tasks.results == "task.result");
  c = LoadYamlText(
      "identity: { app: admin }\nconsumers: { \"res.{app}\": {} }\n"
      "tasks: { results: \"res.{app}\" }\n",
      "t.yaml");
  REQUIRE(c.ok());
  CHECK(c->tasks.results == "res.admin");  // either form, kept resolved
  c = LoadIniText("[rabbitmq]\nconsumer={\"task.result\":{}}\n[tasks]\nresults=task.result\n",
                  "t.ini");
  REQUIRE(c.ok());
  CHECK(c->tasks.results == "task.result");
  c = LoadYamlText("producers: { a: }\n", "t.yaml");
  REQUIRE(c.ok());
  CHECK(c->tasks.results.empty());  // default: SendTask disabled

  // A producer does not count, nor does an implicit unroutable business.
  std::string err = ErrorText(
      LoadYamlText("producers: { task.result: {} }\ntasks: { results: task.result }\n", "t.yaml"));
  CHECK(err ==
        "t.yaml:2: tasks.results: expected a configured consumer business (e.g. task.result), got "
        "\"task.result\"");
  err = ErrorText(
      LoadYamlText("producers: { p: { handle: h } }\ntasks:\n  results: p.unroutable\n", "t.yaml"));
  CHECK_THAT(err, Catch::Contains("t.yaml:3: tasks.results: expected a configured consumer"));
  err = ErrorText(LoadYamlText("consumers: { a: }\ntasks: { result: a }\n", "t.yaml"));
  CHECK_THAT(err, Catch::Contains("tasks.result: unknown key; expected one of: results (did you "
                                  "mean \"results\"?)"));
}

// -------------------------------------------------------------- unroutable

TEST_CASE("unroutable: every producer with a handle gets a consumer business of its queue") {
  absl::StatusOr<Config> c = LoadYamlText(R"(identity: { app: otc }
producers:
  usdt.transfer: { handle: usdt.transfer.ae }
  out.{app}: { handle: shared.ae }
  other: { handle: shared.ae }
  plain: {}
consumers:
  usdt.transfer: {}
)",
                                          "u.yaml");
  REQUIRE(c.ok());
  const Consumer* u = c->FindConsumer("usdt.transfer.unroutable");
  REQUIRE(u != nullptr);
  CHECK(u->unroutable);
  CHECK(u->exchange == "usdt.transfer.ae");
  CHECK(u->queue == "usdt.transfer.ae.queue");
  CHECK(u->queue_type == QueueType::kClassic);
  CHECK(u->binding_keys == std::vector<std::string>{"#"});
  CHECK(u->prefetch == 16);
  CHECK(u->max_deliveries == 0);
  CHECK(u->written_as.empty());
  CHECK_FALSE(c->FindConsumer("usdt.transfer")->unroutable);
  CHECK(c->FindConsumer("plain.unroutable") == nullptr);
  // Placeholders: both forms.
  const Consumer* out = c->FindConsumer("out.otc.unroutable");
  REQUIRE(out != nullptr);
  CHECK(out->written_as == "out.{app}.unroutable");
  CHECK(c->FindConsumer("out.{app}.unroutable") == out);
  // Two producers sharing a handle: two businesses, one queue; no conflict.
  REQUIRE(c->FindConsumer("other.unroutable") != nullptr);
  CHECK(c->FindConsumer("other.unroutable")->queue == "shared.ae.queue");
  CHECK(out->queue == "shared.ae.queue");
  // Still sorted by name.
  CHECK(std::is_sorted(c->consumers.begin(), c->consumers.end(),
                       [](const Consumer& a, const Consumer& b) { return a.name < b.name; }));
  CHECK(c->consumers.size() == 4);

  // The plan declares the handle objects once, as the producer needs them.
  const TopologyPlan plan = PlanTopology(*c);
  int fanouts = 0;
  for (const ExchangeSpec& e : plan.exchanges) {
    if (e.name == "usdt.transfer.ae" || e.name == "shared.ae") {
      CHECK(e.type == "fanout");
      ++fanouts;
    }
  }
  CHECK(fanouts == 2);
  int handle_queues = 0;
  for (const QueueSpec& q : plan.queues) {
    if (q.name == "usdt.transfer.ae.queue" || q.name == "shared.ae.queue") {
      CHECK(q.type == QueueType::kClassic);
      ++handle_queues;
    }
  }
  CHECK(handle_queues == 2);
  int handle_bindings = 0;
  for (const BindingSpec& b : plan.bindings) {
    if (b.exchange == "shared.ae") {
      CHECK(b.queue == "shared.ae.queue");
      CHECK(b.binding_key == "#");
      ++handle_bindings;
    }
  }
  CHECK(handle_bindings == 1);

  // The INI loader adds them too.
  c = LoadIniText("[rabbitmq]\nproducer={\"p\":{\"handle\":\"p.ae\"}}\n", "u.ini");
  REQUIRE(c.ok());
  REQUIRE(c->FindConsumer("p.unroutable") != nullptr);
  CHECK(c->FindConsumer("p.unroutable")->queue == "p.ae.queue");
}

TEST_CASE("unroutable: the name is reserved") {
  const std::string err = ErrorText(LoadYamlText(R"(producers:
  usdt.transfer: { handle: usdt.transfer.ae }
  usdt.transfer.unroutable: {}
consumers:
  usdt.transfer.unroutable: {}
)",
                                                 "r.yaml"));
  CHECK_THAT(err, Catch::Contains("r.yaml:5: consumers[\"usdt.transfer.unroutable\"]: business "
                                  "name \"usdt.transfer.unroutable\" is reserved for the "
                                  "unroutable messages of producer \"usdt.transfer\" "
                                  "(producers[\"usdt.transfer\"].handle (line 2)); choose another "
                                  "name"));
  CHECK_THAT(err, Catch::Contains("r.yaml:3: producers[\"usdt.transfer.unroutable\"]: business "
                                  "name \"usdt.transfer.unroutable\" is reserved"));
  CHECK(LineCount(err) == 2);
  // Without a handle the name is free.
  CHECK(LoadYamlText("producers: { a: {} }\nconsumers: { a.unroutable: {} }\n", "r.yaml").ok());
}

// ---------------------------------------------------------------- Describe

TEST_CASE("describe: identity, ping, tasks, written names and unroutable businesses") {
  absl::StatusOr<Config> c = LoadYamlText(R"(identity: { app: admin, region: "1", server: "0" }
producers:
  server.ping: { handle: server.ping.ae }
consumers:
  task.result: {}
  task.{app}.{region}.{server}: {}
ping: { business: server.ping, fleet: true, interval: 15s }
tasks: { results: task.result }
)",
                                          "d.yaml");
  REQUIRE(c.ok());
  c->instance = "0123456789abcdef";
  const std::string text = Describe(*c);
  CHECK_THAT(text, Catch::Contains("identity:\n  app: admin\n  region: 1\n  server: 0\n  instance: "
                                   "0123456789abcdef\n"));
  CHECK_THAT(text, Catch::Contains("ping:\n  business: server.ping (exchange server.ping, routing "
                                   "key admin.1.0)\n  interval: 15s\n  fleet: true\n"));
  CHECK_THAT(text, Catch::Contains("tasks:\n  results: task.result\n"));
  CHECK_THAT(text, Catch::Contains("  task.admin.1.0 (written as task.{app}.{region}.{server})\n"
                                   "    consumer: exchange task.admin.1.0, queue "
                                   "task.admin.1.0.queue (quorum)"));
  CHECK_THAT(text, Catch::Contains("  server.ping.unroutable\n    consumer (unroutable messages of "
                                   "producer server.ping): exchange server.ping.ae (fanout), queue "
                                   "server.ping.ae.queue (classic), binding keys [#], prefetch "
                                   "16\n"));
  CHECK_THAT(text, Catch::Contains("  task.result\n    consumer: exchange task.result"));

  c = LoadYamlText("producers: { a: }\n", "d.yaml");
  REQUIRE(c.ok());
  const std::string bare = Describe(*c);
  CHECK_THAT(bare, Catch::Contains("identity:\n  app: (not set)\n  region: (not set)\n  server: "
                                   "(not set)\nping:\n  business: (none: no pings)\n  interval: "
                                   "10s\n  fleet: false\ntasks:\n  results: (none: SendTask "
                                   "disabled)\n"));
  CHECK_THAT(bare, !Catch::Contains("written as") && !Catch::Contains("instance:"));
}

// ------------------------------------------------------- shipped configs

TEST_CASE("deploy: the per-service configs hold the seed's business table") {
  const LoadOptions replica = Overrides(std::nullopt, "1", "0");
  auto load = [&](const char* name) {
    absl::StatusOr<Config> c =
        LoadFile(std::string(MQS_SOURCE_DIR "/deploy/config/") + name, replica);
    INFO(name);
    if (!c.ok()) FAIL(c.status().message());
    return *c;
  };
  for (const char* service : {"otc", "usdtsvr", "eusdsvr"}) {
    INFO(service);
    const Config c = load((std::string(service) + ".yaml").c_str());
    CHECK(c.identity.app == service);
    CHECK(c.identity.complete());
    CHECK(c.ping.business == "server.ping");
    CHECK_FALSE(c.ping.fleet);
    CHECK(c.tasks.results.empty());
    CHECK(c.FindProducer("server.ping") != nullptr);
    CHECK(c.FindProducer("task.result") != nullptr);
    const std::string app = service;
    const Consumer* any = c.FindConsumer("task." + app);
    REQUIRE(any != nullptr);
    CHECK(any->queue == "task." + app + ".queue");
    const Consumer* own = c.FindConsumer("task.{app}.{region}.{server}");
    REQUIRE(own != nullptr);
    CHECK(own->exchange == "task." + app + ".1.0");
    CHECK(own->queue == "task." + app + ".1.0.queue");
    CHECK((c.FindProducer("usdt.transfer") != nullptr) == (app == "otc"));
    CHECK((c.FindConsumer("usdt.transfer") != nullptr) == (app == "usdtsvr"));
    CHECK(c.FindConsumer("server.ping") == nullptr);
    CHECK(c.FindConsumer("task.result") == nullptr);
  }
  const Config admin = load("admin.yaml");
  CHECK(admin.identity.app == "admin");
  CHECK(admin.ping.business == "server.ping");
  CHECK(admin.ping.fleet);
  CHECK(admin.tasks.results == "task.result");
  REQUIRE(admin.FindConsumer("server.ping") != nullptr);
  CHECK(admin.FindConsumer("server.ping")->queue == "server.ping.queue");
  REQUIRE(admin.FindConsumer("task.result") != nullptr);
  CHECK(admin.FindConsumer("task.result")->queue == "task.result.queue");
  CHECK(admin.FindConsumer("usdt.transfer") == nullptr);

  // Without the replica's region and server, pings cannot start.
  const std::string err = ErrorText(LoadFile(MQS_SOURCE_DIR "/deploy/config/otc.yaml"));
  CHECK_THAT(err, Catch::Contains("identity.region is not set") &&
                      Catch::Contains("identity.server is not set"));
}

}  // namespace
}  // namespace mqs::config

namespace mqs::config {
namespace {

TEST_CASE("identity: listen addresses take placeholders, one socket per replica") {
  const std::string yaml =
      "listen: [\"unix:///run/mq-sidecar/{app}-{region}-{server}.sock\", \"127.0.0.1:50051\"]\n"
      "tcp: { insecure: true }\n"
      "producers: { a: }\n";
  absl::StatusOr<Config> c = LoadYamlText(yaml, "l.yaml", Overrides("usdtsvr", "1", "0"));
  REQUIRE(c.ok());
  CHECK(c->listen[0] == "unix:///run/mq-sidecar/usdtsvr-1-0.sock");
  CHECK(c->listen[1] == "127.0.0.1:50051");
  absl::StatusOr<Config> missing = LoadYamlText(yaml, "l.yaml", Overrides("usdtsvr", "1", {}));
  REQUIRE_FALSE(missing.ok());
  const std::string err(missing.status().message());
  CHECK_THAT(err, Catch::Contains("listen[0]"));
  CHECK_THAT(err, Catch::Contains("identity.server"));
  CHECK_FALSE(LoadYamlText("listen: [\"unix:///x/{nope}.sock\"]\nproducers: { a: }\n", "l.yaml",
                           Overrides("a", "1", "0"))
                  .ok());
}

}  // namespace
}  // namespace mqs::config
