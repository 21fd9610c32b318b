// The Prometheus endpoint (metrics.listen) of a real daemon: counters that
// match what was published, consumed, acked and nacked; the probes; no
// credential in the exposition; a port in use stops the start.
#include <httplib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// A free local port: bound by the kernel's choice, then released.
int FreeLocalPort() {
  int port = 0;
  const int fd = ListenOnLoopback(&port);
  ::close(fd);
  return port;
}

struct Scrape {
  int status = 0;
  std::string body;
  std::map<std::string, double> samples;  // "name{labels}" -> value
};

Scrape Get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  Scrape out;
  auto res = client.Get(path.c_str());
  if (!res) return out;
  out.status = res->status;
  out.body = res->body;
  std::istringstream in(out.body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    out.samples[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

double Sample(const Scrape& s, const std::string& key) {
  auto it = s.samples.find(key);
  return it == s.samples.end() ? -1 : it->second;
}

}  // namespace

TEST_CASE(
    "integration: metrics: /metrics counts exactly what was published, delivered, acked and "
    "nacked, /readyz is 200 while serving, and no credential shows") {
  IntegrationTest t("metrics");
  const std::string biz = t.Business("m");
  // The broker password comes from a file: the exposition must not show it
  // (nor the user or URI).
  const std::string password_file = t.dir() + "/broker.password";
  std::ofstream(password_file) << "guest\n";
  const int port = FreeLocalPort();
  Daemon& d = t.StartDaemon({{.name = biz, .prefetch = 64}},
                            {.uris = {"amqp://guest@127.0.0.1:5672/"},
                             .broker_extra = "  password_file: " + password_file + "\n",
                             .metrics_listen = "127.0.0.1:" + std::to_string(port)});
  const std::string b = "business=\"" + biz + "\"";

  CHECK(Get(port, "/healthz").status == 200);
  // Ready once both links are up and the topology declared: the daemon is
  // SERVING (the harness waited for it).
  CHECK(Get(port, "/readyz").status == 200);

  constexpr int kN = 20;
  PublishConfirmed(d.stub(), biz, kN, "m");
  // An unknown business: a unary Publish the server refuses.
  pb::PublishResult unused;
  const grpc::Status refused =
      PublishOne(d.stub(), MakePublish("no.such.business", "x", 0), &unused);
  REQUIRE_FALSE(refused.ok());

  // Ack 15, reject 3 (no requeue: dead-lettered), requeue 2 (they come
  // again, redelivered, and are acked then).
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 64});
  REQUIRE(sub.WaitForCount(kN, 20s));
  const std::vector<pb::Delivery> first = sub.deliveries();
  for (int i = 0; i < kN; ++i) {
    const uint64_t id = first[static_cast<size_t>(i)].delivery_id();
    if (i < 15) {
      REQUIRE(sub.Ack(id));
    } else if (i < 18) {
      REQUIRE(sub.Nack(id, /*requeue=*/false));
    } else {
      REQUIRE(sub.Nack(id, /*requeue=*/true));
    }
  }
  REQUIRE(sub.WaitForCount(kN + 2, 20s));
  const std::vector<pb::Delivery> all = sub.deliveries();
  for (size_t i = kN; i < all.size(); ++i) {
    CHECK(all[i].redelivered());
    REQUIRE(sub.Ack(all[i].delivery_id()));
  }

  // Counters are updated as the requests are read: wait for the last ack.
  Scrape s;
  CHECK(WaitUntil(
      [&] {
        s = Get(port, "/metrics");
        return Sample(s, "mq_sidecar_acks_total{" + b + "}") == 17;
      },
      10s));
  INFO(s.body);
  CHECK(s.status == 200);
  CHECK(Sample(s, "mq_sidecar_publishes_total{" + b + ",status=\"CONFIRMED\"}") == kN);
  CHECK(Sample(s, "mq_sidecar_publishes_total{" + b + ",status=\"FAILED\"}") == 0);
  CHECK(Sample(s, "mq_sidecar_publish_confirm_seconds_count{" + b + "}") == kN);
  CHECK(Sample(s, "mq_sidecar_publish_confirm_seconds_bucket{" + b + ",le=\"+Inf\"}") == kN);
  CHECK(Sample(s, "mq_sidecar_publish_confirm_seconds_sum{" + b + "}") > 0);
  CHECK(Sample(s, "mq_sidecar_deliveries_total{" + b + "}") == kN + 2);
  CHECK(Sample(s, "mq_sidecar_redeliveries_total{" + b + "}") == 2);
  CHECK(Sample(s, "mq_sidecar_acks_total{" + b + "}") == 17);
  CHECK(Sample(s, "mq_sidecar_nacks_total{" + b + ",outcome=\"reject\"}") == 3);
  CHECK(Sample(s, "mq_sidecar_nacks_total{" + b + ",outcome=\"requeue\"}") == 2);
  CHECK(Sample(s, "mq_sidecar_nacks_total{" + b + ",outcome=\"retry\"}") == 0);
  CHECK(Sample(s, "mq_sidecar_unacked_deliveries{" + b + "}") == 0);
  CHECK(Sample(s, "mq_sidecar_subscribe_streams{" + b + "}") == 1);
  CHECK(Sample(s, "mq_sidecar_broker_connected{role=\"publisher\"}") == 1);
  CHECK(Sample(s, "mq_sidecar_broker_connected{role=\"consumer\"}") == 1);
  CHECK(Sample(s, "mq_sidecar_broker_reconnects_total{role=\"publisher\"}") == 0);
  CHECK(Sample(s, "mq_sidecar_broker_blocked_seconds_total{role=\"publisher\"}") == 0);
  CHECK(Sample(s,
               "mq_sidecar_grpc_server_handled_total{grpc_service=\"mqsidecar.v1.PubSub\","
               "grpc_method=\"PublishStream\",grpc_code=\"OK\"}") == 1);
  const std::string refused_code =
      refused.error_code() == grpc::StatusCode::INVALID_ARGUMENT ? "INVALID_ARGUMENT" : "?";
  CHECK(Sample(s,
               "mq_sidecar_grpc_server_handled_total{grpc_service=\"mqsidecar.v1.PubSub\","
               "grpc_method=\"Publish\",grpc_code=\"" +
                   refused_code + "\"}") == 1);
  CHECK(Sample(s,
               "mq_sidecar_grpc_server_handled_total{grpc_service=\"grpc.health.v1.Health\","
               "grpc_method=\"Check\",grpc_code=\"OK\"}") >= 1);
  CHECK(Sample(s, "mq_sidecar_process_resident_memory_bytes") > 1e6);
  CHECK(Sample(s, "mq_sidecar_process_cpu_seconds_total") > 0);
  CHECK_THAT(s.body, !Catch::Contains("guest") && !Catch::Contains("amqp://") &&
                         !Catch::Contains("password"));

  // Deliveries held when a stream ends leave the gauge; the stream too.
  PublishConfirmed(d.stub(), biz, 3, "h");
  REQUIRE(sub.WaitForCount(kN + 5, 20s));
  CHECK(WaitUntil(
      [&] {
        return Sample(Get(port, "/metrics"), "mq_sidecar_unacked_deliveries{" + b + "}") == 3;
      },
      10s));
  CHECK(sub.Leave().ok());
  CHECK(WaitUntil(
      [&] {
        s = Get(port, "/metrics");
        return Sample(s, "mq_sidecar_subscribe_streams{" + b + "}") == 0;
      },
      10s));
  CHECK(Sample(s, "mq_sidecar_unacked_deliveries{" + b + "}") == 0);
  CHECK(Sample(s,
               "mq_sidecar_grpc_server_handled_total{grpc_service=\"mqsidecar.v1.PubSub\","
               "grpc_method=\"Subscribe\",grpc_code=\"OK\"}") == 1);
  // Requeued by the stream's end; nothing left behind for the cleanup.
  CHECK(WaitForQueue(t.admin(), biz + ".queue", 0u, 3u));

  // A second daemon on the same metrics port does not start, and says why.
  Daemon second(t.dir(), "second", t.uri(), {{.name = biz}},
                {.metrics_listen = "127.0.0.1:" + std::to_string(port)});
  const CommandResult r = RunCommand({DaemonPathForTests(), "--config", second.config_path()}, 30s);
  INFO(CommandOutput(r));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.err + r.out,
             Catch::Contains("metrics.listen \"127.0.0.1:" + std::to_string(port) + "\""));
  // The first still serves.
  CHECK(Get(port, "/healthz").status == 200);
}

}  // namespace mqs::it
