// TLS to the broker (issue 14): amqps:// URIs against a throw-away RabbitMQ
// node with a TLS listener and a CA made at its start
// (deploy/scripts/tls-broker.sh: mqs-tls@localhost, AMQP 5692, TLS 5693,
// certificate for localhost only). The right CA serves; another CA, a host
// name the certificate does not name, or a port that does not speak TLS leave
// the daemon NOT_SERVING with the reason in its log, at every attempt.
//
// Each test starts the node and stops it at the end, also when it fails
// (ScriptedNodes). The shared broker (5672) is not used: the harness's admin
// connection goes to the node's plain AMQP port. ctest runs these under the
// label `tls` (RUN_SERIAL).
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "recorded.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;
using grpc::health::v1::HealthCheckResponse;

// Must match tls-broker.sh.
constexpr int kPlainPort = 5692;
constexpr int kTlsPort = 5693;

std::string TlsDir() {
  const char* env = std::getenv("MQS_TLS_DIR");
  return env != nullptr && *env != '\0' ? env : "/tmp/mqs-tls";
}
std::string Cert(const std::string& file) { return TlsDir() + "/certs/" + file; }

// broker.tls with `ca` (a file in the test CA's directory) and the client
// certificate the node requires; `extra`: more keys (", verify: false").
std::string TlsWithClientCert(const std::string& ca, const std::string& extra = "") {
  return "{ ca: " + Cert(ca) + ", cert: " + Cert("client.pem") + ", key: " + Cert("client.key") +
         extra + " }";
}

std::string Amqps(const std::string& host, int port = kTlsPort) {
  return "amqps://guest:guest@" + host + ":" + std::to_string(port) + "/";
}

// Starts the node (the harness's admin connection then uses its plain port).
void StartNode(ScriptedNodes& node) {
  const CommandResult started = node.Start();
  INFO(CommandOutput(started));
  REQUIRE(started.exit_code == 0);
}

// A daemon that must not become SERVING: Start() gives up after `wait`.
void StartNotServing(Daemon& d, Clock::duration wait) {
  CHECK_THROWS(d.Start(wait));
  REQUIRE(d.Running());
}

// Publishes 10 messages confirmed and consumes all 10 through the daemon.
void PublishAndConsume(Daemon& d, const std::string& biz, const std::string& tag) {
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "tls"});
  const std::vector<std::string> ids = PublishConfirmed(d.stub(), biz, 10, tag);
  REQUIRE(sub.WaitForCount(10, 15s));
  CHECK(MessageIds(sub.deliveries()) == ids);
  for (const pb::Delivery& delivery : sub.deliveries()) sub.Ack(delivery.delivery_id());
}

TEST_CASE(
    "tls: amqps to localhost with the right CA and a client certificate serves, a message "
    "published is consumed",
    "[tls]") {
  ScriptedNodes node(MQS_TLS_BROKER_SCRIPT, "tls");
  StartNode(node);
  ScopedEnv env("MQS_TEST_AMQP_URI",
                "amqp://guest:guest@127.0.0.1:" + std::to_string(kPlainPort) + "/");
  IntegrationTest t("tls-ok");
  const std::string biz = t.Business("tls");
  Daemon& d = t.StartDaemon({{.name = biz}}, {.uris = {Amqps("localhost")},
                                              .broker_tls_yaml = TlsWithClientCert("ca.pem")});
  CHECK(d.Health() == HealthCheckResponse::SERVING);
  PublishAndConsume(d, biz, "tls-ok");
  CHECK_THAT(d.Log(), Catch::Contains("connected to amqps://guest:****@localhost:5693/"));

  // The broker requires a client certificate (tls-broker.sh): without one,
  // the right CA is not enough, and the daemon says why.
  Daemon no_cert(
      t.dir(), "no-cert", t.uri(), {{.name = biz}},
      {.uris = {Amqps("localhost")}, .broker_tls_yaml = "{ ca: " + Cert("ca.pem") + " }"});
  StartNotServing(no_cert, 3s);
  std::optional<pb::Topology> top;
  CHECK(WaitUntil(
      [&] {
        top = no_cert.Topology();
        return top && !top->last_error().empty();
      },
      10s));
  INFO(no_cert.Log());
  REQUIRE(top.has_value());
  CHECK_FALSE(top->connected());
  CHECK_THAT(top->last_error(), Catch::Contains("the broker ended the TLS session") &&
                                    Catch::Contains("no client certificate is configured"));
  CHECK(no_cert.Health() == HealthCheckResponse::NOT_SERVING);
  no_cert.Stop();
}

TEST_CASE(
    "tls: another CA or a port without TLS leave the daemon NOT_SERVING, the reason logged at "
    "every attempt",
    "[tls]") {
  ScriptedNodes node(MQS_TLS_BROKER_SCRIPT, "tls");
  StartNode(node);
  ScopedEnv env("MQS_TEST_AMQP_URI",
                "amqp://guest:guest@127.0.0.1:" + std::to_string(kPlainPort) + "/");
  IntegrationTest t("tls-bad-ca");
  const std::string biz = t.Business("tls");
  Daemon wrong_ca(
      t.dir(), "wrong-ca", t.uri(), {{.name = biz}},
      {.uris = {Amqps("localhost")}, .broker_tls_yaml = "{ ca: " + Cert("other-ca.pem") + " }"});
  Daemon plain(t.dir(), "plain", t.uri(), {{.name = biz}},
               {.uris = {Amqps("localhost", kPlainPort)},
                .broker_tls_yaml = "{ ca: " + Cert("ca.pem") + " }"});
  StartNotServing(wrong_ca, 4s);
  StartNotServing(plain, 1s);
  CHECK(wrong_ca.Health() == HealthCheckResponse::NOT_SERVING);
  CHECK(plain.Health() == HealthCheckResponse::NOT_SERVING);

  // Logged at each attempt (the backoff starts short), password masked.
  const auto count = [](const std::string& log, const std::string& what) {
    size_t n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  const std::string verify = "TLS certificate verification failed";
  CHECK(WaitUntil([&] { return count(wrong_ca.Log(), verify) >= 2; }, 10s));
  const std::string log = wrong_ca.Log();
  INFO(log);
  CHECK_THAT(log, Catch::Contains("cannot connect to amqps://guest:****@localhost:5693/"));
  CHECK_THAT(log, Catch::Contains(Cert("other-ca.pem")));
  CHECK_THAT(log, !Catch::Contains("guest:guest"));
  // And without the log: GetTopology (mqctl topology) says why.
  const auto top = wrong_ca.Topology();
  REQUIRE(top.has_value());
  CHECK_FALSE(top->connected());
  CHECK_THAT(top->last_error(), Catch::Contains(verify) && Catch::Contains(Cert("other-ca.pem")) &&
                                    !Catch::Contains("guest:guest"));

  CHECK(WaitUntil([&] { return count(plain.Log(), "TLS handshake failed") >= 2; }, 10s));
  const std::string plain_log = plain.Log();
  INFO(plain_log);
  CHECK_THAT(plain_log, Catch::Contains("amqps://guest:****@localhost:5692/"));
  CHECK(wrong_ca.Health() == HealthCheckResponse::NOT_SERVING);
  CHECK(plain.Health() == HealthCheckResponse::NOT_SERVING);
  wrong_ca.Stop();
  plain.Stop();
}

TEST_CASE(
    "tls: amqps to 127.0.0.1 fails the host name check (the certificate is for localhost), "
    "with verify false it serves",
    "[tls]") {
  ScriptedNodes node(MQS_TLS_BROKER_SCRIPT, "tls");
  StartNode(node);
  ScopedEnv env("MQS_TEST_AMQP_URI",
                "amqp://guest:guest@127.0.0.1:" + std::to_string(kPlainPort) + "/");
  IntegrationTest t("tls-host");
  const std::string biz = t.Business("tls");
  {
    Daemon d(t.dir(), "wrong-host", t.uri(), {{.name = biz}},
             {.uris = {Amqps("127.0.0.1")}, .broker_tls_yaml = "{ ca: " + Cert("ca.pem") + " }"});
    StartNotServing(d, 3s);
    CHECK(WaitUntil(
        [&] { return d.Log().find("TLS host name verification failed") != std::string::npos; },
        10s));
    const std::string log = d.Log();
    INFO(log);
    CHECK_THAT(log, Catch::Contains("cannot connect to amqps://guest:****@127.0.0.1:5693/"));
    CHECK_THAT(log, Catch::Contains("for host 127.0.0.1"));
    CHECK(d.Health() == HealthCheckResponse::NOT_SERVING);
    d.Stop();
  }
  Daemon& d = t.StartDaemon(
      {{.name = biz}}, {.uris = {Amqps("127.0.0.1")},
                        .broker_tls_yaml = TlsWithClientCert("other-ca.pem", ", verify: false")});
  CHECK(d.Health() == HealthCheckResponse::SERVING);
  PublishAndConsume(d, biz, "tls-noverify");
}

// Thaw: SIGCONT for a frozen process when the test ends, also when it fails
// (the node must stop at the end).
struct Thaw {
  pid_t pid;
  ~Thaw() { ::kill(pid, SIGCONT); }
};

TEST_CASE(
    "tls: the broker frozen (SIGSTOP) under a publish flood over amqps: the TLS write that "
    "cannot finish is cut after 2 x heartbeat, waiting publishes are answered, and publishing "
    "resumes after SIGCONT",
    "[tls]") {
  ScriptedNodes node(MQS_TLS_BROKER_SCRIPT, "tls");
  StartNode(node);
  ScopedEnv env("MQS_TEST_AMQP_URI",
                "amqp://guest:guest@127.0.0.1:" + std::to_string(kPlainPort) + "/");
  IntegrationTest t("tls-freeze");
  const std::string biz = t.Business("tls");
  Daemon& d = t.StartDaemon({{.name = biz}}, {.uris = {Amqps("localhost")},
                                              .heartbeat = 2s,
                                              .wait_timeout = 4s,
                                              .broker_tls_yaml = TlsWithClientCert("ca.pem")});
  long pid = 0;
  std::ifstream(TlsDir() + "/node/pid") >> pid;
  REQUIRE(pid > 0);

  // 64 KiB each: a few hundred fill the socket buffers of both ends, and the
  // publish window (1,024) keeps the publisher writing.
  std::vector<pb::PublishRequest> requests = MakeRequests(biz, "flood", 1500);
  for (auto& r : requests) r.set_payload(std::string(size_t{64} * 1024, 'x'));
  AsyncPublishStream flood(d.stub(), {.requests = std::move(requests), .timeout = 180s});
  REQUIRE(flood.WaitAnswered(100, 30s));

  REQUIRE(::kill(static_cast<pid_t>(pid), SIGSTOP) == 0);
  const Thaw thaw{static_cast<pid_t>(pid)};
  const auto frozen_at = Clock::now();
  // The publisher gives its connection up by itself: the stuck TLS write is
  // cut (or, had it not blocked, the silence is noticed) within 2 x
  // heartbeat and a tick, not when the broker wakes.
  const bool gave_up = WaitUntil(
      [&] {
        const std::string log = d.Log();
        return log.find("[publisher] a TLS write to the broker made no progress") !=
                   std::string::npos ||
               log.find("[publisher] connection lost") != std::string::npos;
      },
      20s, 50ms);
  INFO("frozen " << Fixed(Seconds(Clock::now() - frozen_at), 1) << " s; log:\n" << d.LogTail(30));
  CHECK(gave_up);
  // A publish made while the broker is frozen is answered by its deadline
  // (wait_timeout 4 s), not left to the caller's own deadline.
  pb::PublishResult result;
  const grpc::Status unary =
      PublishOne(d.stub(), MakePublish(biz, "while-frozen", 1), &result, 12s);
  INFO("unary: " << StatusText(unary) << " " << ResultText(result));
  CHECK(unary.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED);
  CHECK(result.status() != pb::PublishResult::CONFIRMED);

  ::kill(static_cast<pid_t>(pid), SIGCONT);
  // Every request of the flood gets an answer, and publishing works again.
  const auto end = flood.WaitEnded(150s);
  REQUIRE(end.has_value());
  CHECK(flood.answered() == 1500u);
  CHECK(WaitUntil([&] { return d.Health() == HealthCheckResponse::SERVING; }, 60s, 100ms));
  pb::PublishResult after;
  CHECK(PublishOne(d.stub(), MakePublish(biz, "after-thaw", 2), &after, 30s).ok());
  CHECK(after.status() == pb::PublishResult::CONFIRMED);
}

}  // namespace
}  // namespace mqs::it
