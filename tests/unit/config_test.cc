// Config loading: YAML, the seed's INI, defaults, and every class of error.
#include "config/config.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "config/loader_internal.h"
#include "scratch_file.h"

namespace mqs::config {
namespace {

using mqs::testing::ScratchFile;

using std::chrono::milliseconds;
using std::chrono::seconds;

// The contract example from the issue, verbatim apart from the file framing.
constexpr const char* kFullYaml =
    R"(listen: ["unix:///run/mq-sidecar/mq-sidecar.sock", "127.0.0.1:50051"]   # one or more
tcp: { insecure: true }
broker:
  uris: ["amqp://guest:guest@127.0.0.1:5672/"]   # several: tried in order (a cluster)
  heartbeat: 30s
  connect_timeout: 5s
producers:
  usdt.transfer: { exchange: usdt.transfer, handle: "" }
consumers:
  usdt.transfer:
    exchange: usdt.transfer
    queue: usdt.transfer.queue    # default: <exchange>.queue
    binding_keys: ["#"]           # default
    queue_type: quorum            # quorum (default) or classic
    prefetch: 16                  # default for Subscribe.open.prefetch == 0
    handle: ""
publish: { window: 1024 }
log: { level: info }
)";

// The seed's configuration, verbatim.
constexpr const char* kSeedIni = R"([rabbitmq]
address=amqp://root:root@localhost:5672/
producer={"usdt_transfer":{"exchange":"usdt_transfer","handle":""}}
consumer={"usdt_transfer":{"exchange":"usdt_transfer","handle":""}}
)";

std::string ErrorText(const absl::StatusOr<Config>& result) {
  REQUIRE_FALSE(result.ok());
  return std::string(result.status().message());
}

size_t LineCount(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
}

TEST_CASE("config: the contract's full YAML example loads") {
  absl::StatusOr<Config> c = LoadYamlText(kFullYaml, "mq-sidecar.yaml");
  REQUIRE(c.ok());
  CHECK(c->listen ==
        std::vector<std::string>{"unix:///run/mq-sidecar/mq-sidecar.sock", "127.0.0.1:50051"});
  CHECK(c->broker.uris == std::vector<std::string>{"amqp://guest:guest@127.0.0.1:5672/"});
  CHECK(c->broker.heartbeat == seconds(30));
  CHECK(c->broker.connect_timeout == seconds(5));
  CHECK(c->publish.window == 1024);
  CHECK(c->log_level == "info");
  REQUIRE(c->producers.size() == 1);
  CHECK(c->producers[0].name == "usdt.transfer");
  CHECK(c->producers[0].exchange == "usdt.transfer");
  CHECK(c->producers[0].handle.empty());
  const Consumer* consumer = c->FindConsumer("usdt.transfer");
  REQUIRE(consumer != nullptr);
  CHECK(consumer->exchange == "usdt.transfer");
  CHECK(consumer->queue == "usdt.transfer.queue");
  CHECK(consumer->binding_keys == std::vector<std::string>{"#"});
  CHECK(consumer->queue_type == QueueType::kQuorum);
  CHECK(consumer->prefetch == 16);
  CHECK(c->FindProducer("usdt.transfer") == &c->producers[0]);
  CHECK(c->FindProducer("nope") == nullptr);
  CHECK(c->FindConsumer("nope") == nullptr);
}

TEST_CASE("config: omitted keys take their defaults") {
  absl::StatusOr<Config> c = LoadYamlText(R"(
producers:
  b.two: {}
  a.one:
consumers:
  z.last:
  task.result: { exchange: task.shared, queue_type: classic, binding_keys: run, prefetch: 4 }
)",
                                          "d.yaml");
  REQUIRE(c.ok());
  CHECK(c->source.empty());
  CHECK(c->listen == std::vector<std::string>{"unix:///run/mq-sidecar/mq-sidecar.sock"});
  CHECK(c->broker.uris == std::vector<std::string>{"amqp://guest:guest@127.0.0.1:5672/"});
  CHECK(c->broker.heartbeat == seconds(30));
  CHECK(c->broker.connect_timeout == seconds(5));
  CHECK(c->publish.window == 1024);
  CHECK(c->log_level == "info");
  // Sorted by name.
  REQUIRE(c->producers.size() == 2);
  CHECK(c->producers[0].name == "a.one");
  CHECK(c->producers[0].exchange == "a.one");
  CHECK(c->producers[1].name == "b.two");
  REQUIRE(c->consumers.size() == 2);
  const Consumer& task = c->consumers[0];
  CHECK(task.name == "task.result");
  CHECK(task.exchange == "task.shared");
  CHECK(task.queue == "task.shared.queue");  // <exchange>.queue, not <business>.queue
  CHECK(task.binding_keys == std::vector<std::string>{"run"});
  CHECK(task.queue_type == QueueType::kClassic);
  CHECK(task.prefetch == 4);
  const Consumer& last = c->consumers[1];
  CHECK(last.exchange == "z.last");
  CHECK(last.queue == "z.last.queue");
  CHECK(last.binding_keys == std::vector<std::string>{"#"});
  CHECK(last.queue_type == QueueType::kQuorum);
  CHECK(last.prefetch == 16);
}

TEST_CASE("config: durations accept ms, s, m, h and bare seconds") {
  auto load = [](const std::string& hb, const std::string& ct) {
    return LoadYamlText(
        "broker: { heartbeat: " + hb + ", connect_timeout: " + ct + " }\nproducers: { a: }\n",
        "t.yaml");
  };
  absl::StatusOr<Config> c = load("2m", "500ms");
  REQUIRE(c.ok());
  CHECK(c->broker.heartbeat == seconds(120));
  CHECK(c->broker.connect_timeout == milliseconds(500));
  c = load("10", "5m");
  REQUIRE(c.ok());
  CHECK(c->broker.heartbeat == seconds(10));
  CHECK(c->broker.connect_timeout == seconds(300));
  c = load("0", "5s");  // 0 disables heartbeats
  REQUIRE(c.ok());
  CHECK(c->broker.heartbeat == milliseconds(0));
}

TEST_CASE("config: the seed's INI loads verbatim") {
  absl::StatusOr<Config> c = LoadIniText(kSeedIni, "seed.ini");
  REQUIRE(c.ok());
  CHECK(c->broker.uris == std::vector<std::string>{"amqp://root:root@localhost:5672/"});
  CHECK(c->listen == std::vector<std::string>{"unix:///run/mq-sidecar/mq-sidecar.sock"});
  CHECK(c->broker.heartbeat == seconds(30));
  REQUIRE(c->producers.size() == 1);
  CHECK(c->producers[0].name == "usdt_transfer");
  CHECK(c->producers[0].exchange == "usdt_transfer");
  CHECK(c->producers[0].handle.empty());
  REQUIRE(c->consumers.size() == 1);
  const Consumer& consumer = c->consumers[0];
  CHECK(consumer.exchange == "usdt_transfer");
  CHECK(consumer.queue == "usdt_transfer.queue");
  CHECK(consumer.binding_keys == std::vector<std::string>{"#"});
  CHECK(consumer.queue_type == QueueType::kQuorum);
  CHECK(consumer.prefetch == 16);

  // The shipped copy is the same text, and LoadFile detects INI by content.
  absl::StatusOr<Config> file = LoadFile(MQS_SOURCE_DIR "/deploy/config/seed.ini");
  REQUIRE(file.ok());
  CHECK(file->source == MQS_SOURCE_DIR "/deploy/config/seed.ini");
  CHECK(file->producers[0].exchange == "usdt_transfer");
  std::ifstream in(MQS_SOURCE_DIR "/deploy/config/seed.ini");
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str() == kSeedIni);
}

TEST_CASE("config: INI optional keys, cluster address, comments") {
  absl::StatusOr<Config> c = LoadIniText(R"(; seed format with extras
# comment
[rabbitmq]
address = amqp://u:p@rabbit1:5672/, amqp://u:p@rabbit2:5671/prod
listen=127.0.0.1:6000,unix:///tmp/mqs.sock
heartbeat=10s
connect_timeout=2500ms
publish_window=64
log_level=debug
producer={"a":{"exchange":"ex.a","handle":"ex.a.unroutable"}}
consumer={"b":{"queue":"q.b","queue_type":"classic","prefetch":8,"binding_keys":["x.*","y.#"]}}
[tcp]
insecure=true
)",
                                         "x.ini");
  REQUIRE(c.ok());
  CHECK(c->broker.uris ==
        std::vector<std::string>{"amqp://u:p@rabbit1:5672/", "amqp://u:p@rabbit2:5671/prod"});
  CHECK(c->listen == std::vector<std::string>{"127.0.0.1:6000", "unix:///tmp/mqs.sock"});
  CHECK(c->broker.heartbeat == seconds(10));
  CHECK(c->broker.connect_timeout == milliseconds(2500));
  CHECK(c->publish.window == 64);
  CHECK(c->log_level == "debug");
  CHECK(c->producers[0].handle == "ex.a.unroutable");
  REQUIRE(c->FindConsumer("b") != nullptr);  // consumers[0] is the implicit a.unroutable
  const Consumer& b = *c->FindConsumer("b");
  CHECK(b.exchange == "b");
  CHECK(b.queue == "q.b");
  CHECK(b.queue_type == QueueType::kClassic);
  CHECK(b.prefetch == 8);
  CHECK(b.binding_keys == std::vector<std::string>{"x.*", "y.#"});
}

TEST_CASE("config: INI errors name the key and line") {
  const std::string err = ErrorText(LoadIniText(R"([rabbitmq]
address=amqp://root:root@localhost:5672/
adress=amqp://x/
producer={"a":{"exchange":"a","handel":""}}
consumer={"b": {"exchange": "b",}
heartbeat=soon

[other]
key=1
)",
                                                "seed.ini"));
  CHECK_THAT(err, Catch::Contains("seed.ini:3: rabbitmq.adress: unknown key") &&
                      Catch::Contains("did you mean \"address\"?"));
  CHECK_THAT(err, Catch::Contains(
                      "seed.ini:4: rabbitmq.producer[\"a\"].handel: unknown key; expected one of: "
                      "exchange, handle"));
  CHECK_THAT(err, Catch::Contains("seed.ini:5: rabbitmq.consumer: expected a JSON map") &&
                      Catch::Contains("invalid JSON"));
  CHECK_THAT(
      err, Catch::Contains("seed.ini:6: rabbitmq.heartbeat: expected a duration like 500ms, "
                           "30s or 2m (a bare number is seconds), at most 100 days, got \"soon\""));
  CHECK_THAT(err, Catch::Contains("seed.ini:8: [other]: unknown section; expected [rabbitmq]"));
  CHECK(LineCount(err) == 5);
}

TEST_CASE("config: INI duplicate JSON business is an error") {
  const std::string err = ErrorText(
      LoadIniText("[rabbitmq]\nproducer={\"a\":{},\"a\":{\"exchange\":\"x\"}}\n", "dup.ini"));
  CHECK_THAT(err, Catch::Contains("dup.ini:2: rabbitmq.producer: duplicate JSON key \"a\""));
}

TEST_CASE("config: the shipped mq-sidecar.yaml loads with the seed's business table") {
  absl::StatusOr<Config> c = LoadFile(MQS_SOURCE_DIR "/deploy/config/mq-sidecar.yaml");
  REQUIRE(c.ok());
  for (const char* name : {"usdt.transfer", "server.ping", "task.result"}) {
    INFO(name);
    const Producer* p = c->FindProducer(name);
    REQUIRE(p != nullptr);
    CHECK(p->exchange == name);
    const Consumer* consumer = c->FindConsumer(name);
    REQUIRE(consumer != nullptr);
    CHECK(consumer->exchange == name);
    CHECK(consumer->queue == std::string(name) + ".queue");
    CHECK(consumer->binding_keys == std::vector<std::string>{"#"});
    CHECK(consumer->queue_type == QueueType::kQuorum);
  }
  CHECK(c->producers.size() == 3);
  CHECK(c->consumers.size() == 3);
}

TEST_CASE("config: unknown keys are errors with their line") {
  const std::string err = ErrorText(LoadYamlText(R"(listen: ["unix:///tmp/mqs.sock"]
brokr:
  uris: ["amqp://h/"]
consumers:
  usdt.transfer:
    prefech: 4
publish: { window: 8, size: 3 }
)",
                                                 "mq-sidecar.yaml"));
  CHECK_THAT(err,
             Catch::Contains("mq-sidecar.yaml:2: brokr: unknown key; expected one of: listen, "
                             "socket, tcp, access, broker, producers, consumers, publish, "
                             "limits, log, shutdown, metrics, identity, ping, tasks (did you mean "
                             "\"broker\"?)"));
  CHECK_THAT(err, Catch::Contains(
                      "mq-sidecar.yaml:6: consumers[\"usdt.transfer\"].prefech: unknown key") &&
                      Catch::Contains("(did you mean \"prefetch\"?)"));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:7: publish.size: unknown key"));
  CHECK(LineCount(err) == 3);
}

TEST_CASE("config: values of the wrong type") {
  const std::string err = ErrorText(LoadYamlText(R"(listen: { a: b }
producers:
  p: [exchange]
consumers:
  usdt.transfer:
    prefetch: lots
  c2:
    prefetch: 0
    binding_keys: []
  c3:
    prefetch: 70000
    exchange: ""
log:
  level: loud
publish:
  window: -1
)",
                                                 "mq-sidecar.yaml"));
  CHECK_THAT(err, Catch::Contains(
                      "mq-sidecar.yaml:1: listen: expected a listen address or a list of them, got "
                      "a map"));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:3: producers[\"p\"]: expected a map of settings "
                                  "(or nothing for all defaults), got a list"));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:6: consumers[\"usdt.transfer\"].prefetch: "
                                  "expected an integer 1..65535, got \"lots\""));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:8: consumers[\"c2\"].prefetch: expected an "
                                  "integer 1..65535, got \"0\""));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:9: consumers[\"c2\"].binding_keys: expected at "
                                  "least one binding key, got []"));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:11: consumers[\"c3\"].prefetch: expected an "
                                  "integer 1..65535, got \"70000\""));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:12: consumers[\"c3\"].exchange: expected a "
                                  "non-empty name"));
  CHECK_THAT(err,
             Catch::Contains("mq-sidecar.yaml:14: log.level: expected trace, debug, info, warn "
                             "or error (any case), got \"loud\""));
  CHECK_THAT(err, Catch::Contains("mq-sidecar.yaml:16: publish.window: expected an integer "
                                  "1..65535, got \"-1\""));
  CHECK(LineCount(err) == 9);  // all errors, not just the first
}

TEST_CASE("config: bad durations and heartbeat range") {
  std::string err = ErrorText(LoadYamlText(
      "broker:\n  heartbeat: 30x\n  connect_timeout: 1.5s\nproducers: { a: }\n", "d.yaml"));
  CHECK_THAT(err,
             Catch::Contains("d.yaml:2: broker.heartbeat: expected a duration like 500ms, 30s "
                             "or 2m (a bare number is seconds), at most 100 days, got \"30x\""));
  CHECK_THAT(err, Catch::Contains("d.yaml:3: broker.connect_timeout: expected a duration"));

  err = ErrorText(LoadYamlText(
      "broker:\n  heartbeat: 500ms\n  connect_timeout: 0\nproducers: { a: }\n", "d.yaml"));
  CHECK_THAT(err, Catch::Contains("d.yaml:2: broker.heartbeat: expected 0 (disabled) or whole "
                                  "seconds 1s..65535s, got 500ms"));
  CHECK_THAT(err, Catch::Contains("d.yaml:3: broker.connect_timeout: expected a duration above 0"));

  err = ErrorText(LoadYamlText("broker: { heartbeat: 1500ms }\nproducers: { a: }\n", "d.yaml"));
  CHECK_THAT(err, Catch::Contains("got 1500ms"));
  err = ErrorText(LoadYamlText("broker: { heartbeat: 20h }\nproducers: { a: }\n", "d.yaml"));
  CHECK_THAT(err, Catch::Contains("got 20h"));
}

TEST_CASE("config: bad broker URIs") {
  const std::string err = ErrorText(LoadYamlText(R"(broker:
  uris:
    - amqp://guest:guest@rabbit1:5672/
    - http://rabbit2/
    - amqp://rabbit3:99999/
    - amqp://rabbit4:0/
producers: { a: }
)",
                                                 "u.yaml"));
  CHECK_THAT(err,
             Catch::Contains("u.yaml:4: broker.uris[1]: expected an amqp:// or amqps:// URI") &&
                 Catch::Contains("got \"http://rabbit2/\""));
  CHECK_THAT(err, Catch::Contains("u.yaml:5: broker.uris[2]: expected an amqp:// or amqps:// URI"));
  CHECK_THAT(err,
             Catch::Contains("u.yaml:6: broker.uris[3]: expected an amqp:// or amqps:// URI") &&
                 Catch::Contains("(port 1..65535)"));
  CHECK(LineCount(err) == 3);
}

TEST_CASE("config: ParseBrokerUri maps an empty vhost to /") {
  absl::StatusOr<BrokerUri> u = ParseBrokerUri("amqp://guest:guest@127.0.0.1:5672/");
  REQUIRE(u.ok());
  CHECK(u->host == "127.0.0.1");
  CHECK(u->port == 5672);
  CHECK(u->user == "guest");
  CHECK(u->password == "guest");
  CHECK(u->vhost == "/");
  CHECK_FALSE(u->tls);
  u = ParseBrokerUri("amqps://u:p%40ss@h/prod");
  REQUIRE(u.ok());
  CHECK(u->port == 5671);
  CHECK(u->password == "p@ss");
  CHECK(u->vhost == "prod");
  CHECK(u->tls);
  u = ParseBrokerUri("amqp://u:pa@ss@h/");  // unescaped '@': rejected, and not echoed
  REQUIRE_FALSE(u.ok());
  CHECK_THAT(std::string(u.status().message()),
             !Catch::Contains("pa@ss") && !Catch::Contains("ss@"));
}

TEST_CASE("config: bad listen addresses") {
  const std::string err = ErrorText(LoadYamlText(R"(listen:
  - localhost
  - unix:relative.sock
  - "[::1]:0"
  - "[::1]:50051"
  - 127.0.0.1:50051
  - unix:///run/ok.sock
  - 127.0.0.1:50051
producers: { a: }
tcp: { insecure: true }
)",
                                                 "l.yaml"));
  CHECK_THAT(err, Catch::Contains("l.yaml:2: listen[0]: expected unix:///absolute/path or "
                                  "host:port (e.g. 127.0.0.1:50051, [::1]:50051), "
                                  "got \"localhost\""));
  CHECK_THAT(err, Catch::Contains("l.yaml:3: listen[1]:") &&
                      Catch::Contains("got \"unix:relative.sock\""));
  CHECK_THAT(err, Catch::Contains("l.yaml:4: listen[2]:"));
  CHECK_THAT(err, Catch::Contains("l.yaml:8: listen[6]: duplicate listen address"));
  CHECK(LineCount(err) == 4);
}

TEST_CASE("config: bad queue_type and business names") {
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a:
    queue_type: lazy
  "bad name":
  ok:
    queue: amq.mine
)",
                                                 "q.yaml"));
  CHECK_THAT(err, Catch::Contains("q.yaml:3: consumers[\"a\"].queue_type: expected quorum or "
                                  "classic, got \"lazy\""));
  CHECK_THAT(err, Catch::Contains("q.yaml:4: consumers[\"bad name\"]: expected a business name of "
                                  "letters, digits, '.', '_' and '-'"));
  CHECK_THAT(err, Catch::Contains("q.yaml:6: consumers[\"ok\"].queue: expected a queue name not "
                                  "starting with \"amq.\""));
}

TEST_CASE("config: two consumers of one queue with different queue types") {
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a:
    queue: shared.queue
  b:
    queue: shared.queue
    queue_type: classic
)",
                                                 "c.yaml"));
  CHECK_THAT(err,
             Catch::Contains("c.yaml:6: consumers[\"b\"].queue_type: queue \"shared.queue\" is "
                             "classic here but quorum for consumers[\"a\"] (line 2)"));
  CHECK(LineCount(err) == 1);
  // Same type: fine (competing consumers of one queue under two names).
  CHECK(LoadYamlText("consumers:\n  a: { queue: s.q }\n  b: { queue: s.q }\n", "c.yaml").ok());
}

TEST_CASE("config: one exchange with two alternate exchanges") {
  const std::string err = ErrorText(LoadYamlText(R"(producers:
  a: { exchange: shared, handle: ae.one }
  b: { exchange: shared, handle: ae.two }
  c: { exchange: shared }
)",
                                                 "ae.yaml"));
  CHECK_THAT(err, Catch::Contains("ae.yaml:3: producers[\"b\"].handle: exchange \"shared\" gets "
                                  "alternate exchange \"ae.two\" here but \"ae.one\" from "
                                  "producers[\"a\"].handle (line 2)"));
  CHECK_THAT(err, Catch::Contains("ae.yaml:4: producers[\"c\"].handle: exchange \"shared\" gets "
                                  "alternate exchange none here"));
  CHECK(LineCount(err) == 2);
}

TEST_CASE("config: a name used both as a business exchange and a handle") {
  const std::string err = ErrorText(LoadYamlText(R"(producers:
  a: { handle: b }
consumers:
  b:
  c: { queue: b.queue }
)",
                                                 "x.yaml"));
  CHECK_THAT(err, Catch::Contains("x.yaml:4: consumers[\"b\"].exchange: exchange \"b\" would be a "
                                  "topic exchange here but is a fanout exchange for "
                                  "producers[\"a\"].handle (line 2)"));
  CHECK_THAT(err, Catch::Contains("x.yaml:5: consumers[\"c\"].queue: queue \"b.queue\" is the "
                                  "alternate-exchange queue of producers[\"a\"].handle (line 2)"));
}

TEST_CASE("config: duplicate keys and businesses") {
  const std::string err = ErrorText(LoadYamlText(R"(producers:
  a: { exchange: x, exchange: y }
  a: {}
log: { level: info }
log: { level: warn }
)",
                                                 "dup.yaml"));
  CHECK_THAT(err, Catch::Contains("dup.yaml:2: producers[\"a\"].exchange: duplicate key (first at "
                                  "line 2)"));
  CHECK_THAT(err, Catch::Contains("dup.yaml:3: producers[\"a\"]: duplicate business (first at line "
                                  "2)"));
  CHECK_THAT(err, Catch::Contains("dup.yaml:5: log: duplicate key (first at line 4)"));
}

TEST_CASE("config: YAML syntax errors carry the line") {
  const std::string err =
      ErrorText(LoadYamlText("producers:\n  a: { exchange: x\nconsumers: {}\n", "s.yaml"));
  CHECK_THAT(err, Catch::StartsWith("s.yaml:") && Catch::Contains("invalid YAML"));
  CHECK(LineCount(err) == 1);
}

TEST_CASE("config: a config without businesses is an error") {
  for (const char* text : {"", "# only a comment\n", "listen: [\"unix:///tmp/e.sock\"]\n",
                           "producers: {}\nconsumers:\n"}) {
    INFO(text);
    absl::StatusOr<Config> c = LoadYamlText(text, "e.yaml");
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(c.status().message()) ==
          "e.yaml: producers, consumers: expected at least one producer or consumer business, got "
          "none");
  }
  CHECK_THAT(ErrorText(LoadYamlText("[1, 2]\n", "")),
             Catch::Contains("<config>:1: (top level): expected a map of settings"));
}

TEST_CASE("config: a missing file is NotFound naming the path") {
  absl::StatusOr<Config> c = LoadFile("/nonexistent/dir/mq-sidecar.yaml");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kNotFound);
  CHECK_THAT(std::string(c.status().message()),
             Catch::Contains("/nonexistent/dir/mq-sidecar.yaml") &&
                 Catch::Contains("No such file or directory"));
  c = LoadFile("/");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("config: LoadFile detects the format by content") {
  ScratchFile ini("detect.conf", "\n# comment\n; comment\n  [rabbitmq]\nproducer={\"a\":null}\n");
  absl::StatusOr<Config> c = LoadFile(ini.path());
  REQUIRE(c.ok());
  CHECK(c->producers.at(0).name == "a");
  CHECK(c->source == ini.path());

  ScratchFile yaml("detect.yaml", "# comment\nproducers: { a: }\n");
  c = LoadFile(yaml.path());
  REQUIRE(c.ok());
  CHECK(c->producers.at(0).name == "a");

  ScratchFile bad("bad.yaml", "producers:\n  a: { exchange: x }\n  nope: { queue: q }\n");
  const std::string err = ErrorText(LoadFile(bad.path()));
  CHECK_THAT(err, Catch::StartsWith(bad.path() + ":3: producers[\"nope\"].queue: unknown key"));
}

TEST_CASE("config: passwords never appear in errors") {
  const std::string err = ErrorText(LoadYamlText(R"(listen: ["amqp://admin:hunter2@h:5672/"]
broker:
  uris:
    - "amqp://admin:hunter2@rabbit:99999/"
    - "amqp://admin:hunter2@x@rabbit/"
  heartbeat: "amqps://admin:hunter2@rabbit/"
producers: { a: }
)",
                                                 "p.yaml"));
  CHECK(LineCount(err) == 4);
  CHECK_THAT(err, !Catch::Contains("hunter2"));
  CHECK_THAT(err, Catch::Contains("amqp://admin:****@rabbit:99999/"));

  const std::string ini_err =
      ErrorText(LoadIniText("[rabbitmq]\naddress=amqp://root:hunter2@localhost:0/\n"
                            "producer={\"a\":{}}\n",
                            "seed.ini"));
  CHECK_THAT(ini_err,
             Catch::Contains("seed.ini:2: rabbitmq.address") && !Catch::Contains("hunter2"));
}

TEST_CASE("config: Describe shows the resolved config with masked passwords") {
  absl::StatusOr<Config> c = LoadYamlText(R"(broker:
  uris: ["amqp://admin:hunter2@rabbit1:5672/", "amqp://admin:hunter2@rabbit2/"]
  heartbeat: 0
producers:
  usdt.transfer: { handle: usdt.transfer.unroutable }
consumers:
  usdt.transfer: { binding_keys: ["a.*", "b.#"], prefetch: 32 }
)",
                                          "m.yaml");
  REQUIRE(c.ok());
  const std::string text = Describe(*c);
  CHECK_THAT(text, !Catch::Contains("hunter2"));
  CHECK_THAT(text, Catch::Contains("amqp://admin:****@rabbit1:5672/"));
  CHECK_THAT(text, Catch::Contains("amqp://admin:****@rabbit2/"));
  CHECK_THAT(text, Catch::Contains("unix:///run/mq-sidecar/mq-sidecar.sock"));
  CHECK_THAT(text, Catch::Contains("heartbeat: 0 (disabled)"));
  CHECK_THAT(text, Catch::Contains("connect_timeout: 5s"));
  CHECK_THAT(text, Catch::Contains("window: 1024"));
  CHECK_THAT(text,
             Catch::Contains("producer: exchange usdt.transfer, handle usdt.transfer.unroutable"));
  CHECK_THAT(text,
             Catch::Contains("consumer: exchange usdt.transfer, queue usdt.transfer.queue "
                             "(quorum), binding keys [a.*, b.#], prefetch 32, max_deliveries 0, "
                             "handle (none)\n      dead_letter: true (usdt.transfer.dlx -> "
                             "usdt.transfer.queue.dead), single_active: false\n"));
  CHECK_THAT(text, Catch::Contains("usdt.transfer.queue quorum "
                                   "x-dead-letter-exchange=usdt.transfer.dlx "
                                   "x-dead-letter-strategy=at-least-once "
                                   "x-overflow=reject-publish\n"));
  CHECK_THAT(text, Catch::Contains("usdt.transfer.queue.dead quorum\n"));
  CHECK_THAT(text, Catch::Contains("usdt.transfer.dlx topic\n"));
  CHECK_THAT(
      text,
      Catch::Contains("usdt.transfer.dlx -> usdt.transfer.queue.dead key \"usdt.transfer.queue\""));
  // The unroutable queue keeps the producer's declaration.
  CHECK_THAT(text, Catch::Contains("usdt.transfer.unroutable.queue classic\n"));
  CHECK_THAT(text, !Catch::Contains("usdt.transfer.unroutable.queue.dead"));
  CHECK_THAT(text,
             Catch::Contains("usdt.transfer topic alternate-exchange=usdt.transfer.unroutable"));
  CHECK_THAT(text, Catch::Contains("usdt.transfer.unroutable fanout"));
  CHECK_THAT(text, Catch::Contains("usdt.transfer.unroutable.queue classic"));
  CHECK_THAT(text, Catch::Contains("usdt.transfer -> usdt.transfer.queue key \"b.#\""));
}

TEST_CASE("config: dead_letter and single_active: defaults, values, and Describe") {
  absl::StatusOr<Config> c = LoadYamlText(R"(consumers:
  plain: {}
  off: { dead_letter: false, queue_type: classic }
  cl: { queue_type: classic }
  ordered: { single_active: true, max_deliveries: 4 }
producers:
  out: { handle: out.ae }
)",
                                          "dl.yaml");
  INFO(c.status().message());
  REQUIRE(c.ok());
  const Consumer* plain = c->FindConsumer("plain");
  REQUIRE(plain != nullptr);
  CHECK(plain->dead_letter);  // the default
  CHECK_FALSE(plain->single_active);
  const Consumer* off = c->FindConsumer("off");
  REQUIRE(off != nullptr);
  CHECK_FALSE(off->dead_letter);
  const Consumer* ordered = c->FindConsumer("ordered");
  REQUIRE(ordered != nullptr);
  CHECK(ordered->single_active);
  CHECK(ordered->dead_letter);
  // The implicit unroutable consumer: no dead letters (its queue is the handle's).
  const Consumer* unroutable = c->FindConsumer("out.unroutable");
  REQUIRE(unroutable != nullptr);
  CHECK_FALSE(unroutable->dead_letter);
  CHECK_FALSE(unroutable->single_active);

  const std::string text = Describe(*c);
  CHECK_THAT(text, Catch::Contains("dead_letter: false (nack without requeue drops), "
                                   "single_active: false"));
  CHECK_THAT(text, Catch::Contains("dead_letter: true (ordered.dlx -> ordered.queue.dead), "
                                   "single_active: true"));
  CHECK_THAT(text, Catch::Contains("ordered.queue quorum x-dead-letter-exchange=ordered.dlx "
                                   "x-dead-letter-strategy=at-least-once "
                                   "x-overflow=reject-publish x-delivery-limit=3 "
                                   "x-single-active-consumer=true\n"));
  CHECK_THAT(text, Catch::Contains("plain.queue quorum x-dead-letter-exchange=plain.dlx "));
  // Classic: the exchange alone (RabbitMQ dead-letters them at most once).
  CHECK_THAT(text, Catch::Contains("cl.queue classic x-dead-letter-exchange=cl.dlx\n"));
  CHECK_THAT(text, Catch::Contains("cl.queue.dead classic\n"));
  CHECK_THAT(text, Catch::Contains("off.queue classic\n"));
  CHECK_THAT(text, !Catch::Contains("off.dlx"));
  CHECK_THAT(text, !Catch::Contains("out.ae.queue.dead"));

  // The seed's INI takes them in its JSON map.
  absl::StatusOr<Config> ini = LoadIniText(
      "[rabbitmq]\nconsumer={\"a\":{\"dead_letter\":false,\"single_active\":true}}\n", "dl.ini");
  INFO(ini.status().message());
  REQUIRE(ini.ok());
  CHECK_FALSE(ini->consumers[0].dead_letter);
  CHECK(ini->consumers[0].single_active);
}

TEST_CASE("config: dead_letter and single_active errors") {
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a: { dead_letter: false, max_deliveries: 3 }
  b: { queue: s.q }
  c: { queue: s.q, dead_letter: false }
  d: { queue: o.q, single_active: true }
  e: { queue: o.q }
  f: { dead_letter: maybe, single_active: 1 }
)",
                                                 "dle.yaml"));
  CHECK_THAT(err, Catch::Contains("dle.yaml:2: consumers[\"a\"].max_deliveries: expected 0 with "
                                  "dead_letter false"));
  CHECK_THAT(err, Catch::Contains("dle.yaml:4: consumers[\"c\"].dead_letter: queue \"s.q\" has "
                                  "dead_letter false here but true for consumers[\"b\"] (line 3); "
                                  "every consumer of one queue must use the same dead_letter"));
  CHECK_THAT(err, Catch::Contains("dle.yaml:6: consumers[\"e\"].single_active: queue \"o.q\" "
                                  "has single_active false here but true for consumers[\"d\"] "
                                  "(line 5); every consumer of one queue must use the same "
                                  "single_active"));
  CHECK_THAT(err, Catch::Contains("dle.yaml:7: consumers[\"f\"].dead_letter: expected true or "
                                  "false, got \"maybe\""));
  CHECK_THAT(err, Catch::Contains("dle.yaml:7: consumers[\"f\"].single_active: expected true or "
                                  "false, got \"1\""));
  // Agreeing consumers of one queue are fine.
  CHECK(LoadYamlText(R"(consumers:
  a: { queue: s.q, single_active: true, dead_letter: false }
  b: { queue: s.q, single_active: true, dead_letter: false }
)",
                     "ok.yaml")
            .ok());
}

TEST_CASE("config: QueueTypeName") {
  CHECK(QueueTypeName(QueueType::kQuorum) == "quorum");
  CHECK(QueueTypeName(QueueType::kClassic) == "classic");
}

TEST_CASE("config: docs/configuration.md mirrors kConfigKeys") {
  std::ifstream in(MQS_SOURCE_DIR "/docs/configuration.md");
  REQUIRE(in.good());
  std::stringstream docs;
  docs << in.rdbuf();
  for (const internal::ConfigKey& key : internal::kConfigKeys) {
    INFO(key.path);
    CHECK_THAT(docs.str(), Catch::Contains("| `" + std::string(key.path) + "` |"));
  }
}

TEST_CASE("config: every kConfigKeys key is accepted by the YAML loader") {
  // Guards the table and the loader against drifting apart.
  absl::StatusOr<Config> c = LoadYamlText(R"(listen: "127.0.0.1:1"
socket: { mode: "0600", group: nogroup }
tcp: { insecure: true }
broker: { uris: "amqp://h/", heartbeat: 1s, connect_timeout: 1s, tls: { ca: "", cert: "", key: "", verify: true } }
producers: { p: { exchange: e, handle: "" } }
consumers: { c: { exchange: e, queue: q, binding_keys: "#", queue_type: quorum, prefetch: 1, handle: x, max_deliveries: 5, dead_letter: true, single_active: true, retry: { delays: [1s, 10s], max_attempts: 4 } } }
publish: { window: 1, republish_unconfirmed: false, wait_timeout: 2s }
log: { level: trace }
shutdown: { drain: 0 }
identity: { app: a, region: r, server: s }
ping: { business: p, interval: 5s, fleet: true }
tasks: { results: c }
)",
                                          "all.yaml");
  REQUIRE(c.ok());
  CHECK(c->socket.mode == 0600);
  CHECK(c->socket.group == "nogroup");
  CHECK(c->tcp.insecure);
  CHECK(c->identity.app == "a");
  CHECK(c->identity.region == "r");
  CHECK(c->identity.server == "s");
  CHECK(c->ping.business == "p");
  CHECK(c->ping.interval == seconds(5));
  CHECK(c->ping.fleet);
  CHECK(c->tasks.results == "c");
  CHECK(c->consumers[0].max_deliveries == 5);
  CHECK(c->consumers[0].dead_letter);
  CHECK(c->consumers[0].single_active);
  CHECK(c->consumers[0].retry.delays == std::vector<milliseconds>{seconds(1), seconds(10)});
  CHECK(c->consumers[0].retry.max_attempts == 4);
  CHECK_FALSE(c->publish.republish_unconfirmed);
  CHECK(c->publish.wait_timeout == seconds(2));
  CHECK(c->shutdown.drain == milliseconds(0));
  CHECK(internal::ChildKeys("").size() == 15);
  CHECK(internal::ChildKeys("consumers.<business>").size() == 10);
  CHECK(internal::ChildKeys("consumers.<business>.retry") ==
        std::vector<std::string_view>{"delays", "max_attempts"});
  // A delivery limit needs a quorum queue; consumers of one queue agree on it.
  const std::string err = ErrorText(LoadYamlText(R"(consumers:
  a: { queue_type: classic, max_deliveries: 3 }
  b: { queue: s.q, max_deliveries: 3 }
  c: { queue: s.q }
publish: { republish_unconfirmed: maybe }
)",
                                                 "md.yaml"));
  CHECK_THAT(err, Catch::Contains("md.yaml:2: consumers[\"a\"].max_deliveries: expected 0 for a "
                                  "classic queue"));
  CHECK_THAT(err, Catch::Contains("md.yaml:4: consumers[\"c\"].max_deliveries: queue \"s.q\" has "
                                  "max_deliveries 0 here but 3 for consumers[\"b\"] (line 3)"));
  CHECK_THAT(err, Catch::Contains("md.yaml:5: publish.republish_unconfirmed: expected true or "
                                  "false, got \"maybe\""));
}

}  // namespace
}  // namespace mqs::config

namespace mqs::config {
namespace {

TEST_CASE("config: amqps:// is accepted, with broker.tls read from YAML and INI") {
  const ScratchFile ca("ca.pem", "ca");
  const ScratchFile cert("client.pem", "cert");
  const ScratchFile key("client.key", "key");
  absl::StatusOr<Config> c = LoadYamlText(
      "broker:\n  uris: [\"amqp://h/\", \"amqps://u:secret@h/\"]\n  tls:\n    ca: " + ca.path() +
          "\n    cert: " + cert.path() + "\n    key: " + key.path() +
          "\n    verify: false\nproducers: { a: }\n",
      "tls.yaml");
  REQUIRE(c.ok());
  CHECK(c->broker.tls.ca == ca.path());
  CHECK(c->broker.tls.cert == cert.path());
  CHECK(c->broker.tls.key == key.path());
  CHECK_FALSE(c->broker.tls.verify);
  const std::string described = Describe(*c);
  CHECK_THAT(described, Catch::Contains("tls (amqps:// only): ca " + ca.path() + ", client cert " +
                                        cert.path() + ", verify false (any certificate)"));
  CHECK_THAT(described, !Catch::Contains("secret"));

  // Defaults: the system's CA bundle, no client certificate, verify on.
  c = LoadYamlText("broker: { uris: \"amqps://u:p@h/\" }\nproducers: { a: }\n", "d.yaml");
  REQUIRE(c.ok());
  CHECK(c->broker.tls.ca.empty());
  CHECK(c->broker.tls.cert.empty());
  CHECK(c->broker.tls.verify);
  CHECK_THAT(Describe(*c), Catch::Contains("ca (system) /etc/ssl/certs/ca-certificates.crt"));
  // tls beside amqp:// URIs only is fine (it applies to amqps:// ones).
  CHECK(LoadYamlText(
            "broker: { uris: \"amqp://h/\", tls: { ca: " + ca.path() + " } }\nproducers: { a: }\n",
            "p.yaml")
            .ok());

  c = LoadIniText(
      "[rabbitmq]\naddress=amqps://u:p@h:5671/\nproducer={\"a\":{}}\n[broker.tls]\nca=" +
          ca.path() + "\nverify=false\n",
      "seed.ini");
  REQUIRE(c.ok());
  CHECK(c->broker.tls.ca == ca.path());
  CHECK_FALSE(c->broker.tls.verify);
}

TEST_CASE("config: broker.tls errors name the key and the line") {
  const ScratchFile cert("client.pem", "cert");
  const std::string missing = "/nonexistent/mqs-ca.pem";
  std::string err = ErrorText(LoadYamlText(
      "broker:\n  uris: \"amqps://u:secret@h/\"\n  tls:\n"
      "    ca: " +
          missing + "\n    cert: " + cert.path() + "\n    verify: maybe\nproducers: { a: }\n",
      "t.yaml"));
  CHECK_THAT(err, Catch::Contains("t.yaml:4: broker.tls.ca: cannot read \"" + missing +
                                  "\": No such file or directory"));
  CHECK_THAT(err, Catch::Contains("t.yaml:5: broker.tls.cert: a client certificate needs both "
                                  "broker.tls.cert and broker.tls.key"));
  CHECK_THAT(err, Catch::Contains("t.yaml:6: broker.tls.verify: expected true or false"));
  CHECK_THAT(err, !Catch::Contains("secret"));
  CHECK(LineCount(err) == 3);

  err = ErrorText(LoadYamlText("broker:\n  tls: { key: " + cert.path() +
                                   ", cafile: x, ca: /tmp }\n"
                                   "producers: { a: }\n",
                               "k.yaml"));
  CHECK_THAT(err, Catch::Contains("k.yaml:2: broker.tls.cafile: unknown key; expected one of: ca, "
                                  "cert, key, verify"));
  CHECK_THAT(err, Catch::Contains("k.yaml:2: broker.tls.ca: expected a file, got \"/tmp\""));
  CHECK_THAT(err, Catch::Contains("k.yaml:2: broker.tls.key: a client certificate needs both"));
  CHECK(LineCount(err) == 3);

  err = ErrorText(LoadYamlText("broker:\n  tls: [a]\nproducers: { a: }\n", "m.yaml"));
  CHECK_THAT(err, Catch::Contains("m.yaml:2: broker.tls: expected a map (ca, cert, key, verify)"));

  err =
      ErrorText(LoadIniText("[rabbitmq]\naddress=amqps://u:p@h/\nproducer={\"a\":{}}\n"
                            "[broker.tls]\nca=" +
                                missing + "\n",
                            "seed.ini"));
  CHECK_THAT(err, Catch::Contains("seed.ini:5: broker.tls.ca: cannot read"));
}

}  // namespace
}  // namespace mqs::config
