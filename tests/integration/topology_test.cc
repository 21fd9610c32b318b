// Health and GetTopology: what the daemon declared, and that it is connected.
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

TEST_CASE("integration: health is SERVING and GetTopology lists the configured topology") {
  IntegrationTest t("topo");
  const std::string both = t.Business("both");         // producer and consumer
  const std::string pub_only = t.Business("pubonly");  // producer only
  const std::string sub_only = t.Business("subonly");  // consumer only
  Daemon& d = t.StartDaemon({{.name = both},
                             {.name = pub_only, .consumer = false},
                             {.name = sub_only, .producer = false, .prefetch = 7}});
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  pb::Topology topo;
  grpc::Status s = d.stub().GetTopology(&ctx, pb::GetTopologyRequest(), &topo);
  INFO(StatusText(s));
  REQUIRE(s.ok());
  INFO(topo.DebugString());
  CHECK(topo.connected());
  CHECK_FALSE(topo.broker_uri().empty());
  // The password is masked (the test URI's password is "guest" unless overridden).
  CHECK(topo.broker_uri().find(":guest@") == std::string::npos);

  // A business may be listed once per role or once with a combined role.
  auto roles_of = [&](const std::string& name) {
    std::string roles;
    for (const auto& b : topo.businesses()) {
      if (b.name() == name) roles += b.role() + ",";
    }
    return roles;
  };
  auto has_business = [&](const std::string& name, const std::string& queue) {
    for (const auto& b : topo.businesses()) {
      if (b.name() == name && b.exchange() == name && (queue.empty() || b.queue() == queue)) {
        return true;
      }
    }
    return false;
  };
  CHECK(roles_of(both).find("produc") != std::string::npos);
  CHECK(roles_of(both).find("consum") != std::string::npos);
  CHECK(roles_of(pub_only).find("produc") != std::string::npos);
  CHECK(roles_of(pub_only).find("consum") == std::string::npos);
  CHECK(roles_of(sub_only).find("consum") != std::string::npos);
  CHECK(roles_of(sub_only).find("produc") == std::string::npos);
  CHECK(has_business(both, both + ".queue"));
  CHECK(has_business(pub_only, ""));
  CHECK(has_business(sub_only, sub_only + ".queue"));

  auto has_exchange = [&](const std::string& name) {
    for (const auto& e : topo.exchanges()) {
      if (e.name() == name) return true;
    }
    return false;
  };
  CHECK(has_exchange(both));
  CHECK(has_exchange(pub_only));
  CHECK(has_exchange(sub_only));

  auto queue_type = [&](const std::string& name) -> std::string {
    for (const auto& q : topo.queues()) {
      if (q.name() == name) return q.type().empty() ? "<empty type>" : q.type();
    }
    return "<missing>";
  };
  CHECK(queue_type(both + ".queue") == "quorum");
  CHECK(queue_type(sub_only + ".queue") == "quorum");
  CHECK(queue_type(pub_only + ".queue") == "<missing>");

  auto has_binding = [&](const std::string& exchange, const std::string& queue) {
    for (const auto& b : topo.bindings()) {
      if (b.exchange() == exchange && b.queue() == queue && b.binding_key() == "#") return true;
    }
    return false;
  };
  CHECK(has_binding(both, both + ".queue"));
  CHECK(has_binding(sub_only, sub_only + ".queue"));

  // The broker agrees.
  CHECK(t.admin().ExchangeExists(both));
  CHECK(t.admin().ExchangeExists(pub_only));
  CHECK(t.admin().ExchangeExists(sub_only));
  CHECK(t.admin().InspectQueue(both + ".queue").has_value());
  CHECK(t.admin().InspectQueue(sub_only + ".queue").has_value());
  CHECK_FALSE(t.admin().InspectQueue(pub_only + ".queue").has_value());
}

TEST_CASE(
    "integration: health Check knows two services, Watch sees NOT_SERVING, then ends at SIGTERM") {
  using grpc::health::v1::HealthCheckRequest;
  using grpc::health::v1::HealthCheckResponse;
  IntegrationTest t("health");
  Daemon& d = t.StartDaemon({{.name = t.Business("b")}});
  auto health = grpc::health::v1::Health::NewStub(d.channel());
  auto check = [&](const std::string& service, HealthCheckResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    HealthCheckRequest req;
    req.set_service(service);
    return health->Check(&ctx, req, resp);
  };
  HealthCheckResponse resp;
  REQUIRE(check("mqsidecar.v1.PubSub", &resp).ok());
  CHECK(resp.status() == HealthCheckResponse::SERVING);
  grpc::Status unknown = check("no.such.Service", &resp);
  CHECK(unknown.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(unknown.error_message().find("no.such.Service") != std::string::npos);

  // Watch: the current status at once; at shutdown NOT_SERVING, then the end.
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + 30s);
  HealthCheckRequest wreq;
  auto watch = health->Watch(&wctx, wreq);
  REQUIRE(watch->Read(&resp));
  CHECK(resp.status() == HealthCheckResponse::SERVING);
  d.Signal(SIGTERM);
  REQUIRE(watch->Read(&resp));
  CHECK(resp.status() == HealthCheckResponse::NOT_SERVING);
  CHECK_FALSE(watch->Read(&resp));  // the stream ends: no hang until the deadline
  grpc::Status end = watch->Finish();
  INFO(StatusText(end));
  CHECK(end.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(d.WaitExit(10s));
}

TEST_CASE(
    "integration: GetTopology counts follow the queue within a second, concurrent calls are all "
    "answered, and a deleted queue does not break it") {
  IntegrationTest t("topocount");
  const std::string biz = t.Business("count");
  const std::string gone = t.Business("gone");
  Daemon& d = t.StartDaemon({{.name = biz}, {.name = gone}});
  auto counts = [&](const std::string& queue) -> std::optional<std::pair<uint64_t, uint32_t>> {
    auto topo = d.Topology(5s);
    if (!topo) return std::nullopt;
    for (const auto& q : topo->queues()) {
      if (q.name() == queue) return std::make_pair(q.messages(), q.consumers());
    }
    return std::nullopt;
  };
  const std::string queue = biz + ".queue";
  PublishConfirmed(d.stub(), biz, 3, biz);
  // Served from a cache at most 1 s old: the new count shows within ~1 s.
  CHECK(WaitUntil([&] { return counts(queue) == std::make_pair(uint64_t{3}, uint32_t{0}); }, 5s,
                  100ms));

  // 50 calls at once: one round of questions to the broker, every call answered.
  std::vector<std::future<bool>> calls;
  for (int i = 0; i < 50; ++i) {
    calls.push_back(std::async(std::launch::async, [&] { return counts(queue).has_value(); }));
  }
  for (auto& c : calls) CHECK(c.get());

  // A queue deleted behind the daemon's back: its passive declare is refused
  // (the control channel is closed and reopened); the other queue's counts
  // still come, and keep following.
  t.admin().DeleteQueue(gone + ".queue");
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "c"});
  REQUIRE(sub.WaitForCount(3, 10s));
  CHECK(WaitUntil([&] { return counts(queue) == std::make_pair(uint64_t{0}, uint32_t{1}); }, 5s,
                  100ms));
  CHECK(counts(gone + ".queue").has_value());  // still listed, counts unknown (0)
  PublishConfirmed(d.stub(), biz, 1, biz + "-more");
  REQUIRE(sub.WaitForCount(4, 10s));
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace mqs::it
