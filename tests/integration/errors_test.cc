// Errors: unknown businesses, unroutable messages, bad delivery ids, requests
// that cannot be parsed, control characters in names.
#include <grpcpp/generic/generic_stub.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// RawStream: a bidirectional stream on `method` that sends `messages` as
// they are (bytes, not protobufs), half-closes, and reads to the end.
struct RawOutcome {
  grpc::Status status;
  std::vector<grpc::ByteBuffer> responses;
};
RawOutcome RawStream(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::vector<std::string>& messages) {
  RawOutcome out;
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  const auto deadline = std::chrono::system_clock::now() + 20s;
  ctx.set_deadline(deadline);
  // One operation at a time: each Next returns the one just started.
  const auto wait = [&] {
    void* tag = nullptr;
    bool ok = false;
    return cq.AsyncNext(&tag, &ok, deadline + 5s) == grpc::CompletionQueue::GOT_EVENT && ok;
  };
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(&ctx, method, &cq);
  call->StartCall(nullptr);
  bool open = wait();
  for (const std::string& m : messages) {
    if (!open) break;
    grpc::Slice slice(m);
    grpc::ByteBuffer buffer(&slice, 1);
    call->Write(buffer, nullptr);
    open = wait();
  }
  if (open) {
    call->WritesDone(nullptr);
    wait();
  }
  while (true) {
    grpc::ByteBuffer response;
    call->Read(&response, nullptr);
    if (!wait()) break;
    out.responses.push_back(std::move(response));
  }
  call->Finish(&out.status, nullptr);
  wait();
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  return out;
}

std::string Bytes(const google::protobuf::Message& m) { return m.SerializeAsString(); }

TEST_CASE(
    "integration: unknown business: Publish is INVALID_ARGUMENT, PublishStream answers "
    "FAILED and goes on") {
  IntegrationTest t("unknown");
  const std::string biz = t.Business("known");
  const std::string unknown = biz + ".nope";
  Daemon& d = t.StartDaemon({{.name = biz}});

  pb::PublishResult res;
  grpc::Status s = PublishOne(d.stub(), MakePublish(unknown, "u-1", 1), &res);
  INFO(StatusText(s));
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(s.error_message(), unknown));

  // Stream: the unknown business fails alone; requests around it still go through.
  std::vector<pb::PublishRequest> reqs = {
      MakePublish(biz, biz + "-1", 1), MakePublish(unknown, "u-2", 2),
      MakePublish(biz, biz + "-3", 3), MakePublish(unknown, "u-4", 4),
      MakePublish(biz, biz + "-5", 5)};
  PublishStreamOutcome out = PublishStream(d.stub(), reqs, 30s);
  INFO("stream: " << StatusText(out.status));
  CHECK(out.status.ok());
  std::map<uint64_t, pb::PublishResult> by_seq;
  for (const auto& r : out.results) {
    CHECK(by_seq.emplace(r.sequence(), r).second);  // one result per sequence
  }
  REQUIRE(by_seq.size() == 5);
  for (uint64_t seq : {1, 3, 5}) {
    INFO(ResultText(by_seq[seq]));
    CHECK(by_seq[seq].status() == pb::PublishResult::CONFIRMED);
  }
  for (uint64_t seq : {2, 4}) {
    INFO(ResultText(by_seq[seq]));
    CHECK(by_seq[seq].status() == pb::PublishResult::FAILED);
    CHECK(Contains(by_seq[seq].error(), unknown));
  }

  // Subscribe to an unknown business: the stream ends INVALID_ARGUMENT.
  Subscriber sub(d.stub(), {.business = unknown, .prefetch = 1, .consumer_name = "x"});
  auto end = sub.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end->error_message(), unknown));
  CHECK(sub.count() == 0);
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_CASE("integration: a message no queue is bound for is UNROUTABLE") {
  IntegrationTest t("unroutable");
  const std::string lonely = t.Business("lonely");  // producer only: nothing bound
  const std::string biz = t.Business("bound");
  Daemon& d = t.StartDaemon({{.name = lonely, .consumer = false}, {.name = biz}});

  pb::PublishResult res;
  grpc::Status s = PublishOne(d.stub(), MakePublish(lonely, "lonely-1", 11), &res);
  INFO(StatusText(s) << " / " << ResultText(res));
  REQUIRE(s.ok());
  CHECK(res.status() == pb::PublishResult::UNROUTABLE);
  CHECK(res.sequence() == 11);
  CHECK(res.message_id() == "lonely-1");

  // On a stream, each gets its own verdict.
  PublishStreamOutcome out = PublishStream(
      d.stub(), {MakePublish(lonely, "lonely-2", 1), MakePublish(biz, "bound-2", 2)}, 30s);
  CHECK(out.status.ok());
  REQUIRE(out.results.size() == 2);
  for (const auto& r : out.results) {
    INFO(ResultText(r));
    CHECK(r.status() ==
          (r.sequence() == 1 ? pb::PublishResult::UNROUTABLE : pb::PublishResult::CONFIRMED));
  }
}

TEST_CASE(
    "integration: acking an unknown or settled delivery id ends only that stream, "
    "INVALID_ARGUMENT") {
  IntegrationTest t("badack");
  const std::string biz = t.Business("acks");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});

  Subscriber bad(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "bad"});
  Subscriber good(d.stub(), {.business = biz, .prefetch = 10, .consumer_name = "good"});
  REQUIRE(WaitForQueue(t.admin(), queue, 2u, std::nullopt));

  CHECK(bad.Ack(987654321));
  auto end = bad.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end->error_message(), "987654321"));

  // The other stream on the same daemon still works.
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));
  PublishConfirmed(d.stub(), biz, 1, biz);
  REQUIRE(good.WaitForCount(1, 10s));
  const pb::Delivery got = good.deliveries()[0];
  CHECK(good.Ack(got.delivery_id()));
  CHECK_FALSE(good.ended());

  // Acking it a second time: settled, so the stream ends naming the id.
  CHECK(good.Ack(got.delivery_id()));
  auto end2 = good.WaitEnded(10s);
  REQUIRE(end2.has_value());
  INFO(StatusText(*end2));
  CHECK(end2->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end2->error_message(), std::to_string(got.delivery_id())));
  // The first ack counted: the message does not come back.
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_CASE("integration: a Subscribe stream that does not start with open is refused") {
  IntegrationTest t("noopen");
  const std::string biz = t.Business("x");
  Daemon& d = t.StartDaemon({{.name = biz}});
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  auto stream = d.stub().Subscribe(&ctx);
  pb::SubscribeRequest ack;
  ack.mutable_ack()->set_delivery_id(1);
  stream->Write(ack);
  pb::Delivery unexpected;
  CHECK_FALSE(stream->Read(&unexpected));
  grpc::Status s = stream->Finish();
  INFO(StatusText(s));
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_CASE(
    "integration: a request that cannot be parsed ends PublishStream and Subscribe with "
    "INVALID_ARGUMENT naming it, after answering what was read before") {
  IntegrationTest t("unparsable");
  const std::string biz = t.Business("x");
  Daemon& d = t.StartDaemon({{.name = biz}});
  // Field 1 (business; in Subscribe, open.business) holding bytes that are
  // not UTF-8: valid wire format, but not a valid proto3 message.
  const std::string bad_publish("\x0a\x02\xff\xfe", 4);
  const std::string bad_subscribe("\x0a\x04\x0a\x02\xff\xfe", 6);

  RawOutcome pub = RawStream(d.channel(), "/mqsidecar.v1.PubSub/PublishStream",
                             {Bytes(MakePublish(biz, biz + "-1", 1)), bad_publish,
                              Bytes(MakePublish(biz, biz + "-3", 3))});
  INFO("PublishStream: " << StatusText(pub.status));
  CHECK(pub.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(pub.status.error_message(),
                 "request 2 could not be parsed as mqsidecar.v1.PublishRequest"));
  // The request before it was published and answered; none after it was read.
  REQUIRE(pub.responses.size() == 1);
  pb::PublishResult first;
  REQUIRE(
      grpc::SerializationTraits<pb::PublishResult>::Deserialize(&pub.responses[0], &first).ok());
  INFO(ResultText(first));
  CHECK(first.sequence() == 1);
  CHECK(first.status() == pb::PublishResult::CONFIRMED);

  RawOutcome sub = RawStream(d.channel(), "/mqsidecar.v1.PubSub/Subscribe", {bad_subscribe});
  INFO("Subscribe: " << StatusText(sub.status));
  CHECK(sub.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(sub.status.error_message(),
                 "request 1 could not be parsed as mqsidecar.v1.SubscribeRequest"));
  CHECK(sub.responses.empty());
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_CASE("integration: a consumer_name with a control character is INVALID_ARGUMENT") {
  IntegrationTest t("ctlname");
  const std::string biz = t.Business("x");
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 1, .consumer_name = "forged\nline"});
  auto end = sub.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end->error_message(), "open.consumer_name"));
  // Shown escaped, not as a raw line break.
  CHECK(Contains(end->error_message(), "forged\\x0aline"));
  CHECK_FALSE(Contains(d.Log(), "forged\n"));
}

}  // namespace
}  // namespace mqs::it
