// Interop with another AMQP client (python3-pika, tests/integration/pika_interop.py).
#include <catch2/catch.hpp>
#include <chrono>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// Debian's python has python3-pika; the python3 on PATH may not.
constexpr char kPython[] = "/usr/bin/python3";

TEST_CASE(
    "integration: a message published by pika reaches a sidecar subscriber with its "
    "properties") {
  IntegrationTest t("pikain");
  const std::string biz = t.Business("in");
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 5, .consumer_name = "interop"});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));

  const long timestamp_s = 1700000000;
  CommandResult r =
      RunCommand({kPython, MQS_IT_PIKA_SCRIPT, "publish", t.uri(), biz, "eu.order.created",
                  "{\"amount\":42}", "pika-msg-1", "corr-pika-1", "application/json",
                  std::to_string(timestamp_s), "tenant=acme", "x-trace=t-123"},
                 30s);
  INFO("pika publish: exit " << r.exit_code << "\n" << r.out << r.err);
  REQUIRE(r.exit_code == 0);

  REQUIRE(sub.WaitForCount(1, 10s));
  const pb::Delivery got = sub.deliveries()[0];
  INFO(got.ShortDebugString());
  CHECK(got.business() == biz);
  CHECK(got.exchange() == biz);
  CHECK(got.routing_key() == "eu.order.created");
  CHECK(got.payload() == "{\"amount\":42}");
  CHECK(got.message_id() == "pika-msg-1");
  CHECK(got.correlation_id() == "corr-pika-1");
  CHECK(got.content_type() == "application/json");
  CHECK(got.published_at_ms() == timestamp_s * 1000);
  const std::map<std::string, std::string> want_headers = {{"tenant", "acme"},
                                                           {"x-trace", "t-123"}};
  CHECK(UserHeaders(got) == want_headers);
  CHECK_FALSE(got.redelivered());
  CHECK(sub.Ack(got.delivery_id()));
  const grpc::Status left = sub.Leave();  // graceful: every ack counts
  INFO(StatusText(left));
  CHECK(left.ok());
  CHECK(WaitForQueue(t.admin(), biz + ".queue", 0u, 0u));
}

TEST_CASE(
    "integration: a message published by the sidecar, fetched by pika, is persistent "
    "with message_id and timestamp") {
  IntegrationTest t("pikaout");
  const std::string biz = t.Business("out");
  Daemon& d = t.StartDaemon({{.name = biz}});

  pb::PublishRequest req = MakePublish(biz, "", 1, "hello from the sidecar");
  req.set_routing_key("x.y");
  req.set_correlation_id("corr-9");
  req.set_content_type("text/plain");
  req.set_ttl_ms(600000);
  (*req.mutable_headers())["tenant"] = "acme";
  pb::PublishResult res;
  grpc::Status s = PublishOne(d.stub(), req, &res);
  INFO(StatusText(s) << " / " << ResultText(res));
  REQUIRE(s.ok());
  REQUIRE(res.status() == pb::PublishResult::CONFIRMED);
  REQUIRE_FALSE(res.message_id().empty());

  CommandResult r =
      RunCommand({kPython, MQS_IT_PIKA_SCRIPT, "get", t.uri(), biz + ".queue", "10"}, 30s);
  INFO("pika get: exit " << r.exit_code << "\n" << r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const auto m = nlohmann::json::parse(r.out);
  CHECK(m["exchange"] == biz);
  CHECK(m["routing_key"] == "x.y");
  CHECK(m["body"] == "hello from the sidecar");
  CHECK(m["delivery_mode"] == 2);  // persistent
  CHECK(m["message_id"] == res.message_id());
  CHECK(m["correlation_id"] == "corr-9");
  CHECK(m["content_type"] == "text/plain");
  CHECK(m["expiration"] == "600000");  // ttl_ms as the AMQP per-message TTL
  REQUIRE(m["timestamp"].is_number_integer());
  const long now = static_cast<long>(std::time(nullptr));
  const long ts = m["timestamp"].get<long>();
  CHECK(ts >= now - 60);
  CHECK(ts <= now + 5);
  REQUIRE(m["headers"].is_object());
  CHECK(m["headers"]["tenant"] == "acme");
}

}  // namespace
}  // namespace mqs::it
