#include "observability/metrics.h"

#include <httplib.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "observability/metrics_http.h"

namespace {

using mqs::observability::Metrics;
using mqs::observability::NackOutcome;
using mqs::observability::Role;
using namespace std::chrono_literals;

// The samples of an exposition: "name{labels}" -> value. Also checks that
// every sample's family has # HELP and # TYPE lines before it.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  std::map<std::string, std::string> types;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream l(line.substr(7));
      std::string name, type;
      l >> name >> type;
      types[name] = type;
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    REQUIRE(space != std::string::npos);
    const std::string key = line.substr(0, space);
    std::string family = key.substr(0, key.find('{'));
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s(suffix);
      if (family.size() > s.size() && family.ends_with(s) &&
          types.contains(family.substr(0, family.size() - s.size()))) {
        family = family.substr(0, family.size() - s.size());
      }
    }
    INFO(line);
    CHECK(types.contains(family));
    CHECK_FALSE(out.contains(key));  // no sample twice
    out[key] = std::stod(line.substr(space + 1));
  }
  return out;
}

}  // namespace

TEST_CASE("metrics: the text exposition counts per business, status, role and method") {
  Metrics m({"b.one", "a.two", "b.one"}, {"/mqsidecar.v1.PubSub/Publish"});
  const size_t one = m.Slot("b.one");
  const size_t two = m.Slot("a.two");
  CHECK(one != two);
  CHECK(m.Slot("nope") == m.none_slot());
  CHECK(m.Slot("") == m.none_slot());

  m.CountPublish(one, 1, 3ms);    // CONFIRMED, in the 0.005 bucket
  m.CountPublish(one, 1, 700ms);  // CONFIRMED, in the 1 bucket
  m.CountPublish(one, 4, 2s);     // FAILED: no latency observed
  m.CountPublish(two, 2, 100us);  // UNROUTABLE, in the first bucket
  m.CountPublish(two, 1, 60s);    // CONFIRMED, +Inf
  m.CountDelivery(one, false);
  m.CountDelivery(one, true);
  m.CountDelivery(one, false);
  m.AddUnacked(one, 3);
  m.CountAcks(one, 1);
  m.AddUnacked(one, -1);
  m.CountNacks(one, NackOutcome::kRetry, 1);
  m.CountNacks(one, NackOutcome::kReject, 2);
  m.AddStreams(one, 1);
  m.AddStreams(two, 1);
  m.AddStreams(two, -1);
  m.SetConnected(Role::kPublisher, true);
  m.CountReconnect(Role::kConsumer);
  const auto t0 = std::chrono::steady_clock::time_point(100s);
  m.SetBlocked(Role::kPublisher, true, t0);
  m.SetBlocked(Role::kPublisher, true, t0 + 1s);  // still the first block
  m.SetBlocked(Role::kPublisher, false, t0 + 2s);
  m.SetBlocked(Role::kPublisher, true, t0 + 10s);  // in progress at the scrape
  m.CountGrpcCall(m.GrpcMethod("/mqsidecar.v1.PubSub/Publish"), 0);
  m.CountGrpcCall(m.GrpcMethod("/mqsidecar.v1.PubSub/Publish"), 14);
  m.CountGrpcCall(m.GrpcMethod("/mqsidecar.v1.PubSub/Publish"), 14);
  m.CountGrpcCall(m.GrpcMethod("/x.Y/Unknown"), 12);
  CHECK(m.GrpcMethod("mqsidecar.v1.PubSub", "Publish") ==
        m.GrpcMethod("/mqsidecar.v1.PubSub/Publish"));
  CHECK(m.GrpcMethod("mqsidecar.v1.PubSub", "Publis") == m.GrpcMethod("/x.Y/Unknown"));

  mqs::observability::ProcessStats p;
  p.cpu_seconds = 1.5;
  p.resident_bytes = 123456;
  const std::string text = m.Render(p, t0 + 10500ms);
  INFO(text);
  const auto s = Samples(text);

  CHECK(s.at(R"(mq_sidecar_publishes_total{business="b.one",status="CONFIRMED"})") == 2);
  CHECK(s.at(R"(mq_sidecar_publishes_total{business="b.one",status="FAILED"})") == 1);
  CHECK(s.at(R"(mq_sidecar_publishes_total{business="b.one",status="REJECTED"})") == 0);
  CHECK(s.at(R"(mq_sidecar_publishes_total{business="a.two",status="UNROUTABLE"})") == 1);
  // Buckets are cumulative; +Inf equals the count.
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="b.one",le="0.0025"})") == 0);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="b.one",le="0.005"})") == 1);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="b.one",le="0.5"})") == 1);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="b.one",le="1"})") == 2);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="b.one",le="+Inf"})") == 2);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_count{business="b.one"})") == 2);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_sum{business="b.one"})") == Approx(0.703));
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="a.two",le="0.0005"})") == 1);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="a.two",le="10"})") == 1);
  CHECK(s.at(R"(mq_sidecar_publish_confirm_seconds_bucket{business="a.two",le="+Inf"})") == 2);
  CHECK(s.at(R"(mq_sidecar_deliveries_total{business="b.one"})") == 3);
  CHECK(s.at(R"(mq_sidecar_redeliveries_total{business="b.one"})") == 1);
  CHECK(s.at(R"(mq_sidecar_acks_total{business="b.one"})") == 1);
  CHECK(s.at(R"(mq_sidecar_nacks_total{business="b.one",outcome="retry"})") == 1);
  CHECK(s.at(R"(mq_sidecar_nacks_total{business="b.one",outcome="reject"})") == 2);
  CHECK(s.at(R"(mq_sidecar_nacks_total{business="b.one",outcome="requeue"})") == 0);
  CHECK(s.at(R"(mq_sidecar_unacked_deliveries{business="b.one"})") == 2);
  CHECK(s.at(R"(mq_sidecar_subscribe_streams{business="b.one"})") == 1);
  CHECK(s.at(R"(mq_sidecar_subscribe_streams{business="a.two"})") == 0);
  // Nothing was counted without a business: no "(none)" samples.
  CHECK(text.find("(none)") == std::string::npos);
  CHECK(s.at(R"(mq_sidecar_broker_connected{role="publisher"})") == 1);
  CHECK(s.at(R"(mq_sidecar_broker_connected{role="consumer"})") == 0);
  CHECK(s.at(R"(mq_sidecar_broker_reconnects_total{role="consumer"})") == 1);
  // 2 s ended plus 0.5 s of the block in progress.
  CHECK(s.at(R"(mq_sidecar_broker_blocked_seconds_total{role="publisher"})") == Approx(2.5));
  CHECK(s.at(R"(mq_sidecar_broker_blocked_seconds_total{role="consumer"})") == 0);
  CHECK(
      s.at(
          R"(mq_sidecar_grpc_server_handled_total{grpc_service="mqsidecar.v1.PubSub",grpc_method="Publish",grpc_code="OK"})") ==
      1);
  CHECK(
      s.at(
          R"(mq_sidecar_grpc_server_handled_total{grpc_service="mqsidecar.v1.PubSub",grpc_method="Publish",grpc_code="UNAVAILABLE"})") ==
      2);
  CHECK(
      s.at(
          R"(mq_sidecar_grpc_server_handled_total{grpc_service="other",grpc_method="other",grpc_code="UNIMPLEMENTED"})") ==
      1);
  CHECK(s.at("mq_sidecar_process_cpu_seconds_total") == 1.5);
  CHECK(s.at("mq_sidecar_process_resident_memory_bytes") == 123456);
  CHECK_THAT(text, Catch::Contains("# TYPE mq_sidecar_publish_confirm_seconds histogram\n"));
  CHECK_THAT(text, Catch::Contains("# TYPE mq_sidecar_publishes_total counter\n"));
  CHECK_THAT(text, Catch::Contains("# TYPE mq_sidecar_unacked_deliveries gauge\n"));
}

TEST_CASE("metrics: publishes of no configured business count under (none)") {
  Metrics m({"a"}, {});
  m.CountPublish(m.Slot("a.retry.copy"), 1, 1ms);
  const auto s = Samples(m.Render({}, std::chrono::steady_clock::now()));
  CHECK(s.at(R"x(mq_sidecar_publishes_total{business="(none)",status="CONFIRMED"})x") == 1);
  CHECK(s.at(R"(mq_sidecar_publishes_total{business="a",status="CONFIRMED"})") == 0);
}

TEST_CASE("metrics: process stats come from /proc/self") {
  const auto p = mqs::observability::ReadProcessStats();
  CHECK(p.resident_bytes > uint64_t{1024} * 1024);
  CHECK(p.virtual_bytes >= p.resident_bytes);
  CHECK(p.threads >= 1);
  CHECK(p.open_fds >= 3);
  CHECK(p.start_time_seconds > 1.6e9);
}

TEST_CASE("metrics: listen addresses") {
  using mqs::observability::ParseListenAddress;
  auto a = ParseListenAddress("127.0.0.1:9464");
  REQUIRE(a.ok());
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 9464);
  a = ParseListenAddress("[::1]:80");
  REQUIRE(a.ok());
  CHECK(a->host == "::1");
  CHECK(a->port == 80);
  CHECK(ParseListenAddress("localhost:1").ok());
  for (const char* bad :
       {"9464", "127.0.0.1", ":9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x",
        "::1:9464", "[::1:9464", "a b:1", "http://127.0.0.1:9464"}) {
    INFO(bad);
    CHECK_FALSE(ParseListenAddress(bad).ok());
  }
  CHECK(ParseListenAddress("127.0.0.1:0", /*allow_any_port=*/true).ok());
}

TEST_CASE("metrics: metrics.listen in YAML and INI, its default, and a bad one naming the line") {
  auto c = mqs::config::LoadYamlText("producers: { p: {} }\n", "a.yaml");
  REQUIRE(c.ok());
  CHECK(c->metrics.listen == "127.0.0.1:9464");
  c = mqs::config::LoadYamlText("producers: { p: {} }\nmetrics: { listen: \"\" }\n", "a.yaml");
  REQUIRE(c.ok());
  CHECK(c->metrics.listen.empty());
  c = mqs::config::LoadYamlText("producers: { p: {} }\nmetrics:\n  listen: \"[::1]:9100\"\n",
                                "a.yaml");
  REQUIRE(c.ok());
  CHECK(c->metrics.listen == "[::1]:9100");
  c = mqs::config::LoadYamlText("producers: { p: {} }\nmetrics:\n  listen: \"9464\"\n", "b.yaml");
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(std::string(c.status().message()),
             Catch::Contains("b.yaml:3: metrics.listen: expected host:port"));
  c = mqs::config::LoadYamlText("metrics: { port: 1 }\n", "c.yaml");
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("listen"));
  c = mqs::config::LoadIniText(
      "[rabbitmq]\naddress = amqp://guest:guest@127.0.0.1:5672/\nproducer = "
      "{\"p\":{}}\n[metrics]\nlisten = "
      "127.0.0.1:9500\n",
      "s.ini");
  REQUIRE(c.ok());
  CHECK(c->metrics.listen == "127.0.0.1:9500");
  c = mqs::config::LoadIniText(
      "[rabbitmq]\naddress = amqp://guest:guest@127.0.0.1:5672/\nproducer = "
      "{\"p\":{}}\n[metrics]\nlisten = nope\n",
      "s.ini");
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("s.ini:5:"));
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("listen"));
}

TEST_CASE("metrics: the HTTP server serves /metrics, /healthz and /readyz and stops") {
  Metrics m({"biz"}, {});
  m.CountDelivery(m.Slot("biz"), false);
  std::atomic<bool> ready{false};
  auto server = mqs::observability::MetricsServer::Start("127.0.0.1:0", &m,
                                                         [&ready] { return ready.load(); });
  REQUIRE(server.ok());
  const int port = (*server)->port();
  REQUIRE(port > 0);
  // A second server on the same port cannot start, and says where.
  auto second = mqs::observability::MetricsServer::Start("127.0.0.1:" + std::to_string(port), &m,
                                                         [] { return true; });
  REQUIRE_FALSE(second.ok());
  CHECK_THAT(std::string(second.status().message()),
             Catch::Contains("metrics.listen \"127.0.0.1:" + std::to_string(port) + "\""));

  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  auto res = client.Get("/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->get_header_value("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
  CHECK_THAT(res->body, Catch::Contains("mq_sidecar_deliveries_total{business=\"biz\"} 1\n"));
  res = client.Get("/healthz");
  REQUIRE(res);
  CHECK(res->status == 200);
  res = client.Get("/readyz");
  REQUIRE(res);
  CHECK(res->status == 503);
  ready = true;
  res = client.Get("/readyz");
  REQUIRE(res);
  CHECK(res->status == 200);
  res = client.Get("/nothing");
  REQUIRE(res);
  CHECK(res->status == 404);
  const auto t0 = std::chrono::steady_clock::now();
  (*server)->Stop();
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK_FALSE(client.Get("/healthz"));
}
