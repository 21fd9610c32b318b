// W3C trace context: a traceparent/tracestate in the caller's gRPC metadata
// or in a PublishRequest's own headers reaches the consumer's
// Delivery.headers (docs/api.md, "Trace context").
#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <string>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

constexpr char kParentA[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
constexpr char kParentB[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
constexpr char kParentC[] = "00-11111111111111111111111111111111-2222222222222222-00";

// Unary Publish with `metadata` on the call.
grpc::Status PublishWith(pb::PubSub::Stub& stub, const pb::PublishRequest& request,
                         const std::multimap<std::string, std::string>& metadata,
                         pb::PublishResult* result) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 15s);
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  return stub.Publish(&ctx, request, result);
}

TEST_CASE(
    "integration: traceparent and tracestate from gRPC metadata (Publish, PublishStream, "
    "PublishBatchStream) or a request's own headers reach the Delivery, invalid ones are refused "
    "in a request and dropped from metadata") {
  IntegrationTest t("trace");
  const std::string biz = t.Business("traced");
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, std::nullopt));

  // 1. Unary Publish, trace in the metadata.
  pb::PublishResult result;
  grpc::Status s =
      PublishWith(d.stub(), MakePublish(biz, "unary", 1),
                  {{"traceparent", kParentA}, {"tracestate", "rojo=00f067aa0ba902b7"}}, &result);
  REQUIRE(s.ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);

  // 2. PublishStream, trace in the stream's metadata: every message without
  // its own; the second message's own traceparent wins.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 15s);
    ctx.AddMetadata("traceparent", kParentB);
    auto stream = d.stub().PublishStream(&ctx);
    REQUIRE(stream->Write(MakePublish(biz, "stream-1", 1)));
    pb::PublishRequest own = MakePublish(biz, "stream-own", 2);
    (*own.mutable_headers())["traceparent"] = kParentC;
    REQUIRE(stream->Write(own));
    stream->WritesDone();
    int confirmed = 0;
    pb::PublishResult r;
    while (stream->Read(&r)) confirmed += r.status() == pb::PublishResult::CONFIRMED ? 1 : 0;
    CHECK(stream->Finish().ok());
    CHECK(confirmed == 2);
  }

  // 2b. PublishBatchStream: the metadata applies to every message alike.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 15s);
    ctx.AddMetadata("traceparent", kParentB);
    ctx.AddMetadata("tracestate", "congo=t61rcWkgMzE");
    auto stream = d.stub().PublishBatchStream(&ctx);
    pb::PublishBatch batch;
    *batch.add_messages() = MakePublish(biz, "batch-1", 1);
    *batch.add_messages() = MakePublish(biz, "batch-2", 2);
    REQUIRE(stream->Write(batch));
    stream->WritesDone();
    int confirmed = 0;
    pb::PublishResultBatch r;
    while (stream->Read(&r)) {
      for (const pb::PublishResult& one : r.results()) {
        confirmed += one.status() == pb::PublishResult::CONFIRMED ? 1 : 0;
      }
    }
    CHECK(stream->Finish().ok());
    CHECK(confirmed == 2);
  }

  // 3. An invalid traceparent in the request's headers: INVALID_ARGUMENT
  // naming the header (uppercase hex is not W3C).
  pb::PublishRequest bad = MakePublish(biz, "bad", 4);
  (*bad.mutable_headers())["traceparent"] =
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
  s = PublishWith(d.stub(), bad, {}, &result);
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_THAT(s.error_message(), Catch::Contains("traceparent"));

  // 4. An invalid traceparent in the metadata is dropped: the publish goes
  // through, without trace headers.
  s = PublishWith(d.stub(), MakePublish(biz, "dropped", 5),
                  {{"traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}},
                  &result);
  REQUIRE(s.ok());
  CHECK(result.status() == pb::PublishResult::CONFIRMED);

  REQUIRE(sub.WaitForCount(6, 15s));
  std::map<std::string, std::map<std::string, std::string>> headers;
  for (const pb::Delivery& del : sub.deliveries()) headers[del.message_id()] = UserHeaders(del);
  REQUIRE(headers.size() == 6);
  CHECK(headers["unary"] ==
        std::map<std::string, std::string>{{"traceparent", kParentA},
                                           {"tracestate", "rojo=00f067aa0ba902b7"}});
  CHECK(headers["stream-1"] == std::map<std::string, std::string>{{"traceparent", kParentB}});
  CHECK(headers["stream-own"] == std::map<std::string, std::string>{{"traceparent", kParentC}});
  const std::map<std::string, std::string> batch_trace{{"traceparent", kParentB},
                                                       {"tracestate", "congo=t61rcWkgMzE"}};
  CHECK(headers["batch-1"] == batch_trace);
  CHECK(headers["batch-2"] == batch_trace);
  CHECK(headers["dropped"].empty());
  CHECK(headers.count("bad") == 0);
  // The dropped metadata is logged (rate-limited), never silently.
  CHECK_THAT(d.Log(), Catch::Contains("invalid traceparent metadata"));
}

}  // namespace
}  // namespace mqs::it
