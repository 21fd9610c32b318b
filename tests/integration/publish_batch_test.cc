// PublishBatchStream: many messages per request, many results per response,
// each message checked and answered alone (docs/api.md, "PublishBatchStream").
#include <google/protobuf/wrappers.pb.h>
#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/sync_stream.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// A daemon whose config sets publish.window and limits.max_batch_messages
// (the harness writes window 1024 and no limits).
Daemon& StartWithWindow(IntegrationTest& t, const std::string& biz, uint32_t window,
                        uint32_t max_batch) {
  const std::string name = "w";
  const std::string path = t.dir() + "/" + name + "-config.yaml";
  std::ofstream(path) << "listen: [\"unix://" << t.dir() << "/" << name << ".sock\"]\n"
                      << "broker: { uris: [\"" << t.uri() << "\"], heartbeat: 10s }\n"
                      << "producers:\n  " << biz << ": { exchange: " << biz << " }\n"
                      << "consumers:\n  " << biz << ": { exchange: " << biz
                      << ", queue_type: quorum, prefetch: 256 }\n"
                      << "publish: { window: " << window << " }\n"
                      << "limits: { max_batch_messages: " << max_batch << " }\n"
                      << "shutdown: { drain: 1000ms }\n"
                      << "metrics: { listen: \"\" }\n";
  return t.StartDaemon({{.name = biz}}, {.config_file = path, .name = name});
}

struct BatchOutcome {
  std::vector<pb::PublishResult> results;
  size_t responses = 0;
  grpc::Status status;
};

// Sends `batches` on one PublishBatchStream (a writer thread, so the stream
// pipelines), reads every result until the stream ends.
BatchOutcome PublishBatches(pb::PubSub::Stub& stub, const std::vector<pb::PublishBatch>& batches,
                            Clock::duration timeout = 120s) {
  BatchOutcome out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  auto stream = stub.PublishBatchStream(&ctx);
  std::thread writer([&] {
    for (const auto& b : batches) {
      if (!stream->Write(b)) break;
    }
    stream->WritesDone();
  });
  pb::PublishResultBatch response;
  while (stream->Read(&response)) {
    ++out.responses;
    for (const auto& r : response.results()) out.results.push_back(r);
  }
  writer.join();
  out.status = stream->Finish();
  return out;
}

// Results by sequence; CHECKs each sequence came once.
std::map<uint64_t, pb::PublishResult> BySequence(const std::vector<pb::PublishResult>& results) {
  std::map<uint64_t, pb::PublishResult> by;
  for (const auto& r : results) {
    INFO(ResultText(r));
    CHECK(by.emplace(r.sequence(), r).second);
  }
  return by;
}

TEST_CASE(
    "integration: a PublishBatch of good and bad messages answers each alone: the bad ones "
    "FAILED naming what is wrong, the unroutable one UNROUTABLE, the good ones CONFIRMED and "
    "consumed") {
  IntegrationTest t("batchmix");
  const std::string biz = t.Business("mix");
  const std::string other = t.Business("none");  // a producer with no queue bound
  Daemon& d = t.StartDaemon({{.name = biz}, {.name = other, .consumer = false}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 64, .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));

  pb::PublishBatch batch;
  std::map<uint64_t, std::string> bad;  // sequence -> what its error must say
  for (uint64_t seq = 1; seq <= 10; ++seq) {
    *batch.add_messages() = MakePublish(biz, biz + "-" + std::to_string(seq), seq);
  }
  pb::PublishRequest unknown = MakePublish("no.such.business", biz + "-u", 11);
  *batch.add_messages() = unknown;
  bad[11] = "unknown business 'no.such.business'";
  pb::PublishRequest reserved = MakePublish(biz, biz + "-r", 12);
  (*reserved.mutable_headers())["x-death"] = "1";
  *batch.add_messages() = reserved;
  bad[12] = "x-death";
  pb::PublishRequest long_key = MakePublish(biz, biz + "-k", 13);
  long_key.set_routing_key(std::string(256, 'k'));
  *batch.add_messages() = long_key;
  bad[13] = "routing_key of 256 bytes exceeds limits.max_routing_key_bytes (255)";
  *batch.add_messages() = MakePublish(other, other + "-x", 14);  // no queue: returned
  for (uint64_t seq = 15; seq <= 20; ++seq) {
    *batch.add_messages() = MakePublish(biz, biz + "-" + std::to_string(seq), seq);
  }

  const BatchOutcome out = PublishBatches(d.stub(), {batch});
  INFO(StatusText(out.status));
  CHECK(out.status.ok());
  REQUIRE(out.results.size() == 20);
  const auto by = BySequence(out.results);
  REQUIRE(by.size() == 20);
  std::vector<std::string> good;
  for (const auto& [seq, r] : by) {
    INFO(ResultText(r));
    if (bad.contains(seq)) {
      CHECK(r.status() == pb::PublishResult::FAILED);
      CHECK_THAT(r.error(), Catch::Contains(bad[seq]));
    } else if (seq == 14) {
      CHECK(r.status() == pb::PublishResult::UNROUTABLE);
    } else {
      CHECK(r.status() == pb::PublishResult::CONFIRMED);
      CHECK(r.message_id() == biz + "-" + std::to_string(seq));
      good.push_back(r.message_id());
    }
  }
  REQUIRE(good.size() == 16);
  REQUIRE(sub.WaitForCount(16, 20s));
  std::vector<std::string> got = MessageIds(sub.deliveries());
  std::sort(got.begin(), got.end());
  std::sort(good.begin(), good.end());
  CHECK(got == good);
  // Nothing more arrives (none of the bad ones was sent).
  CHECK_FALSE(sub.WaitForCount(17, 1s));
}

TEST_CASE(
    "integration: 20000 messages in PublishBatches of 100 with window 64 are each confirmed "
    "once and consumed once") {
  constexpr int kBatches = 200, kPerBatch = 100, kMessages = kBatches * kPerBatch;
  IntegrationTest t("batchbulk");
  const std::string biz = t.Business("bulk");
  Daemon& d = StartWithWindow(t, biz, 64, 1000);
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 256, .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));

  std::vector<pb::PublishBatch> batches(kBatches);
  for (int i = 0; i < kMessages; ++i) {
    *batches[i / kPerBatch].add_messages() =
        MakePublish(biz, biz + "-" + std::to_string(i), static_cast<uint64_t>(i) + 1);
  }
  const BatchOutcome out = PublishBatches(d.stub(), batches);
  INFO(StatusText(out.status));
  CHECK(out.status.ok());
  REQUIRE(out.results.size() == kMessages);
  const auto by = BySequence(out.results);
  REQUIRE(by.size() == kMessages);
  int not_confirmed = 0;
  for (const auto& [seq, r] : by) not_confirmed += r.status() != pb::PublishResult::CONFIRMED;
  CHECK(not_confirmed == 0);
  CHECK(by.begin()->first == 1);
  CHECK(by.rbegin()->first == kMessages);
  // Results come many per response once the stream is busy.
  INFO(out.responses << " responses");
  CHECK(out.responses < static_cast<size_t>(kMessages));

  REQUIRE(sub.WaitForCount(kMessages, 60s));
  std::map<std::string, int> seen;
  for (const auto& id : MessageIds(sub.deliveries())) ++seen[id];
  CHECK(seen.size() == static_cast<size_t>(kMessages));
  int twice = 0;
  for (const auto& [id, n] : seen) twice += n != 1;
  CHECK(twice == 0);
}

TEST_CASE(
    "integration: a PublishBatch larger than the window is read whole and sent as room frees, "
    "in order, and a cancelled stream's waiting messages are never sent") {
  constexpr int kMessages = 1000;
  IntegrationTest t("batchwin");
  const std::string biz = t.Business("win");
  Daemon& d = StartWithWindow(t, biz, 4, kMessages);
  pb::PublishBatch batch;
  for (int i = 0; i < kMessages; ++i) {
    *batch.add_messages() =
        MakePublish(biz, biz + "-" + std::to_string(i), static_cast<uint64_t>(i) + 1);
  }

  SECTION("all answered and queued in the order sent") {
    Subscriber sub(d.stub(), {.business = biz, .prefetch = 256, .auto_ack = true});
    REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));
    const BatchOutcome out = PublishBatches(d.stub(), {batch});
    INFO(StatusText(out.status));
    CHECK(out.status.ok());
    const auto by = BySequence(out.results);
    REQUIRE(by.size() == static_cast<size_t>(kMessages));
    for (const auto& [seq, r] : by) {
      INFO(ResultText(r));
      REQUIRE(r.status() == pb::PublishResult::CONFIRMED);
    }
    REQUIRE(sub.WaitForCount(kMessages, 60s));
    const std::vector<std::string> got = MessageIds(sub.deliveries());
    for (int i = 0; i < kMessages; ++i) {
      INFO("delivery " << i);
      REQUIRE(got[i] == biz + "-" + std::to_string(i));
    }
  }
  SECTION("cancelled after the first result") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    auto stream = d.stub().PublishBatchStream(&ctx);
    REQUIRE(stream->Write(batch));
    pb::PublishResultBatch first;
    REQUIRE(stream->Read(&first));
    ctx.TryCancel();
    (void)stream->Finish();
    // What had gone out when the cancel arrived is queued; the rest, still
    // waiting for room in the window, is dropped unsent.
    std::optional<uint32_t> last;
    REQUIRE(WaitUntil(
        [&] {
          auto q = t.admin().InspectQueue(biz + ".queue");
          const bool stable = q && last && q->messages == *last;
          if (q) last = q->messages;
          return stable;
        },
        20s, 500ms));
    INFO(*last << " queued");
    CHECK(*last >= static_cast<uint32_t>(first.results_size()));
    CHECK(*last < static_cast<uint32_t>(kMessages));
    // The daemon serves the next stream.
    pb::PublishBatch one;
    *one.add_messages() = MakePublish(biz, biz + "-after", 1);
    const BatchOutcome after = PublishBatches(d.stub(), {one});
    CHECK(after.status.ok());
    REQUIRE(after.results.size() == 1);
    CHECK(after.results[0].status() == pb::PublishResult::CONFIRMED);
  }
}

TEST_CASE(
    "integration: SIGTERM mid PublishBatchStream: every message read is answered, then the "
    "stream ends UNAVAILABLE") {
  constexpr int kBatches = 400, kPerBatch = 50, kMessages = kBatches * kPerBatch;
  IntegrationTest t("batchterm");
  const std::string biz = t.Business("term");
  Daemon& d = StartWithWindow(t, biz, 64, 1000);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto stream = d.stub().PublishBatchStream(&ctx);
  std::thread writer([&] {
    for (int b = 0; b < kBatches; ++b) {
      pb::PublishBatch batch;
      for (int i = b * kPerBatch; i < (b + 1) * kPerBatch; ++i) {
        *batch.add_messages() =
            MakePublish(biz, biz + "-" + std::to_string(i), static_cast<uint64_t>(i) + 1);
      }
      if (!stream->Write(batch)) break;
    }
    stream->WritesDone();
  });
  std::vector<pb::PublishResult> results;
  pb::PublishResultBatch response;
  bool signalled = false;
  while (stream->Read(&response)) {
    for (const auto& r : response.results()) results.push_back(r);
    if (!signalled && results.size() >= 2000) {
      d.Signal(SIGTERM);
      signalled = true;
    }
  }
  const grpc::Status status = stream->Finish();
  writer.join();
  INFO(StatusText(status) << ", " << results.size() << " results");
  REQUIRE(signalled);
  CHECK(status.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(results.size() < static_cast<size_t>(kMessages));  // the stop hit mid-flight
  // Read in order, each read message answered once: the sequences are 1..k.
  const auto by = BySequence(results);
  REQUIRE(by.size() == results.size());
  CHECK(by.rbegin()->first == results.size());
  size_t confirmed = 0;
  for (const auto& [seq, r] : by) {
    CHECK(r.status() != pb::PublishResult::STATUS_UNSPECIFIED);
    confirmed += r.status() == pb::PublishResult::CONFIRMED;
  }
  // Whatever was confirmed is in the queue.
  const auto q = t.admin().InspectQueue(biz + ".queue");
  REQUIRE(q.has_value());
  CHECK(q->messages >= confirmed);
  CHECK(d.WaitExit(20s));
}

TEST_CASE(
    "integration: PublishBatchStream ends INVALID_ARGUMENT on a request that cannot be parsed, "
    "and on a batch over limits.max_batch_messages, after answering what was read before") {
  IntegrationTest t("batchbad");
  const std::string biz = t.Business("bad");
  Daemon& d = StartWithWindow(t, biz, 64, 50);

  SECTION("unparsable") {
    // BytesValue's encoding (field 1, bytes) is a PublishBatch's with one
    // message of those bytes: the second request's message is a
    // PublishRequest whose business is not UTF-8.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    const grpc::internal::RpcMethod method("/mqsidecar.v1.PubSub/PublishBatchStream",
                                           grpc::internal::RpcMethod::BIDI_STREAMING);
    std::unique_ptr<grpc::ClientReaderWriter<google::protobuf::BytesValue, pb::PublishResultBatch>>
        stream(grpc::internal::ClientReaderWriterFactory<
               google::protobuf::BytesValue, pb::PublishResultBatch>::Create(d.channel().get(),
                                                                             method, &ctx));
    google::protobuf::BytesValue good, broken;
    good.set_value(MakePublish(biz, biz + "-1", 1).SerializeAsString());
    broken.set_value(std::string("\x0a\x02\xff\xfe", 4));
    REQUIRE(stream->Write(good));
    pb::PublishResultBatch first;
    REQUIRE(stream->Read(&first));
    REQUIRE(first.results_size() == 1);
    CHECK(first.results(0).sequence() == 1);
    CHECK(first.results(0).status() == pb::PublishResult::CONFIRMED);
    stream->Write(broken);
    pb::PublishResultBatch more;
    CHECK_FALSE(stream->Read(&more));
    const grpc::Status s = stream->Finish();
    INFO(StatusText(s));
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK_THAT(s.error_message(),
               Catch::Contains("request 2 could not be parsed as mqsidecar.v1.PublishBatch"));
  }
  SECTION("over the limit") {
    pb::PublishBatch ok, over;
    for (uint64_t seq = 1; seq <= 50; ++seq) {
      *ok.add_messages() = MakePublish(biz, biz + "-" + std::to_string(seq), seq);
    }
    for (uint64_t seq = 51; seq <= 101; ++seq) {
      *over.add_messages() = MakePublish(biz, biz + "-" + std::to_string(seq), seq);
    }
    const BatchOutcome out = PublishBatches(d.stub(), {ok, over});
    INFO(StatusText(out.status));
    CHECK(out.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(out.status.error_message() ==
          "batch 2 has 51 messages, over limits.max_batch_messages (50)");
    // The 50 of the first batch were answered; none of the second was sent.
    const auto by = BySequence(out.results);
    CHECK(by.size() == 50);
    for (const auto& [seq, r] : by) {
      INFO(ResultText(r));
      CHECK(seq <= 50);
      CHECK(r.status() == pb::PublishResult::CONFIRMED);
    }
    REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 0u, 50u));
  }
  CHECK(d.Health() == grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace mqs::it

namespace mqs::it {
namespace {

TEST_CASE(
    "integration: mqctl publish --lines sends each line of stdin as one message over "
    "PublishBatchStream and prints one result per line") {
  constexpr int kLines = 250;
  IntegrationTest t("batchcli");
  const std::string biz = t.Business("cli");
  Daemon& d = t.StartDaemon({{.name = biz}});
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 256, .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1u, std::nullopt));
  const std::string input = t.dir() + "/lines.txt";
  {
    std::ofstream out(input);
    for (int i = 1; i <= kLines; ++i) out << "line " << i << (i < kLines ? "\n" : "");
  }
  const std::string script =
      "exec \"$0\" --address \"$1\" publish \"$2\" key --lines --batch 16 < \"$3\"";
  const CommandResult r =
      RunCommand({"/bin/sh", "-c", script, MqctlPath(), d.address(), biz, input}, 60s);
  INFO(CommandOutput(r));
  REQUIRE(r.exit_code == 0);
  // One JSON result per line, every sequence (= line number) once, CONFIRMED.
  std::set<int> sequences;
  size_t printed = 0;
  for (const std::string& line : OutputLines(r.out)) {
    if (line.empty()) continue;
    ++printed;
    CHECK_THAT(line, Catch::Contains("\"status\":\"CONFIRMED\""));
    const size_t seq_at = line.find("\"sequence\":");
    REQUIRE(seq_at != std::string::npos);
    const std::string rest = line.substr(seq_at + 11);
    sequences.insert(std::stoi(rest[0] == '"' ? rest.substr(1) : rest));
  }
  CHECK(printed == static_cast<size_t>(kLines));
  CHECK(sequences.size() == static_cast<size_t>(kLines));
  REQUIRE(sub.WaitForCount(kLines, 30s));
  std::set<std::string> payloads;
  for (const pb::Delivery& delivery : sub.deliveries()) payloads.insert(delivery.payload());
  CHECK(payloads.size() == static_cast<size_t>(kLines));
  CHECK(payloads.contains("line 1"));
  CHECK(payloads.contains("line 250"));  // the last line had no newline

  // A payload argument or --message-id with --lines is a usage error.
  const CommandResult bad = RunCommand(
      {MqctlPath(), "--address", d.address(), "publish", biz, "key", "body", "--lines"}, 30s);
  CHECK(bad.exit_code == 64);
  CHECK_THAT(bad.err, Catch::Contains("--lines"));
}

}  // namespace
}  // namespace mqs::it
