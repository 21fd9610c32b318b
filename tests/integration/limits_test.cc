// limits: (issue 14, "Bad input"): a request over a limit fails alone, over
// PublishStream (its result FAILED), unary Publish (INVALID_ARGUMENT) and
// Subscribe open (INVALID_ARGUMENT); a request over gRPC's own receive limit
// ends only its stream; the streams per connection are capped; and a burst
// of bad requests from one client leaves another's 10,000 publishes whole.
#include <catch2/catch.hpp>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A client connection of its own (gRPC shares one connection between equal
// channels otherwise), taking messages of any size.
std::unique_ptr<pb::PubSub::Stub> OwnClient(const Daemon& d, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetInt("mqs.it.limits.client", index);
  return pb::PubSub::NewStub(
      grpc::CreateCustomChannel(d.address(), grpc::InsecureChannelCredentials(), args));
}

// Small limits, so requests over them stay small.
constexpr const char* kSmallLimits =
    "limits:\n  max_payload_bytes: 1000\n  max_headers: 2\n  max_header_bytes: 100\n"
    "  max_routing_key_bytes: 10\n  max_message_id_bytes: 20\n  max_prefetch: 50\n";

struct Bad {
  pb::PublishRequest request;
  std::string message;  // what the error says, exactly
};

// One request over each publish limit of kSmallLimits, ids <tag>-bad-<n>.
std::vector<Bad> OverLimits(const std::string& biz, const std::string& tag) {
  std::vector<Bad> out;
  auto add = [&](const std::function<void(pb::PublishRequest&)>& change, std::string message) {
    pb::PublishRequest r = MakePublish(biz, tag + "-b" + std::to_string(out.size()), 0);
    change(r);
    out.push_back({r, std::move(message)});
  };
  add([](auto& r) { r.set_payload(std::string(1001, 'p')); },
      "payload of 1001 bytes exceeds limits.max_payload_bytes (1000)");
  add(
      [](auto& r) {
        (*r.mutable_headers())["a"] = "1";
        (*r.mutable_headers())["b"] = "2";
        (*r.mutable_headers())["c"] = "3";
      },
      "3 headers exceed limits.max_headers (2)");
  add([](auto& r) { (*r.mutable_headers())["a"] = std::string(100, 'v'); },
      "headers (names and values) of 101 bytes exceeds limits.max_header_bytes (100)");
  add([](auto& r) { r.set_routing_key("k.123456789"); },
      "routing_key of 11 bytes exceeds limits.max_routing_key_bytes (10)");
  add([](auto& r) { r.set_message_id(std::string(21, 'm')); },
      "message_id of 21 bytes exceeds limits.max_message_id_bytes (20)");
  add([](auto& r) { r.set_correlation_id(std::string(21, 'c')); },
      "correlation_id of 21 bytes exceeds limits.max_message_id_bytes (20)");
  return out;
}

// A request exactly at every limit of kSmallLimits.
pb::PublishRequest AtLimits(const std::string& biz, const std::string& id) {
  pb::PublishRequest r = MakePublish(biz, id, 0, std::string(1000, 'p'));
  r.set_message_id(id + std::string(20 - id.size(), 'm'));
  r.set_correlation_id(std::string(20, 'c'));
  r.set_routing_key("k.12345678");  // 10 bytes
  (*r.mutable_headers())["a"] = std::string(49, 'v');
  (*r.mutable_headers())["b"] = std::string(49, 'w');
  return r;
}

TEST_CASE(
    "integration: limits: a publish over a limit fails alone (PublishStream FAILED, unary "
    "Publish INVALID_ARGUMENT), naming the key and sizes, and Subscribe open over max_prefetch "
    "is INVALID_ARGUMENT") {
  IntegrationTest t("limits");
  const std::string biz = t.Business("lim");
  Daemon& d = t.StartDaemon({{.name = biz}}, {.extra_yaml = kSmallLimits});
  const std::vector<Bad> bad = OverLimits(biz, "s");

  // PublishStream: good, every bad one, at the limits, good: one result
  // each, the stream ends OK.
  std::vector<pb::PublishRequest> requests;
  requests.push_back(MakePublish(biz, "s-first", 1));
  for (const Bad& b : bad) requests.push_back(b.request);
  requests.push_back(AtLimits(biz, "s-at"));
  requests.push_back(MakePublish(biz, "s-last", 0));
  for (size_t i = 0; i < requests.size(); ++i) requests[i].set_sequence(i + 1);
  const PublishStreamOutcome out = PublishStream(d.stub(), requests, 30s);
  INFO(StatusText(out.status));
  CHECK(out.status.ok());
  REQUIRE(out.results.size() == requests.size());
  std::map<uint64_t, pb::PublishResult> by_sequence;
  for (const pb::PublishResult& r : out.results) by_sequence[r.sequence()] = r;
  REQUIRE(by_sequence.size() == requests.size());
  CHECK(by_sequence[1].status() == pb::PublishResult::CONFIRMED);
  for (size_t i = 0; i < bad.size(); ++i) {
    const pb::PublishResult& r = by_sequence[i + 2];
    INFO(bad[i].message << " / " << ResultText(r));
    CHECK(r.status() == pb::PublishResult::FAILED);
    CHECK(r.error() == bad[i].message);
  }
  CHECK(by_sequence[bad.size() + 2].status() == pb::PublishResult::CONFIRMED);
  CHECK(by_sequence[bad.size() + 3].status() == pb::PublishResult::CONFIRMED);

  // Unary Publish: INVALID_ARGUMENT with the same message; at the limits: sent.
  for (const Bad& b : OverLimits(biz, "u")) {
    pb::PublishResult result;
    const grpc::Status s = PublishOne(d.stub(), b.request, &result);
    INFO(StatusText(s));
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(s.error_message() == b.message);
  }
  pb::PublishResult at;
  REQUIRE(PublishOne(d.stub(), AtLimits(biz, "u-at"), &at).ok());
  CHECK(at.status() == pb::PublishResult::CONFIRMED);

  // Subscribe: prefetch over the ceiling ends the stream naming it; at the
  // ceiling it consumes the 4 messages sent (and what is at the limits
  // comes back whole).
  Subscriber over(d.stub(), {.business = biz, .prefetch = 51});
  const std::optional<grpc::Status> ended = over.WaitEnded(10s);
  REQUIRE(ended.has_value());
  CHECK(ended->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(ended->error_message() == "open.prefetch 51 exceeds limits.max_prefetch (50)");
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 50, .auto_ack = true});
  REQUIRE(sub.WaitForCount(4, 20s));
  std::set<std::string> ids;
  for (const pb::Delivery& del : sub.deliveries()) {
    ids.insert(del.message_id());
    if (Contains(del.message_id(), "-at")) {
      CHECK(del.payload().size() == 1000);
      CHECK(UserHeaders(del).size() == 2);
    }
  }
  CHECK(ids == std::set<std::string>{"s-first", "s-last", "s-at" + std::string(16, 'm'),
                                     "u-at" + std::string(16, 'm')});
  CHECK(sub.Leave().ok());
}

TEST_CASE(
    "integration: limits: with the defaults, a publish at every limit (16 MiB payload, 64 "
    "headers of 64 KiB) is confirmed and consumed whole, one byte more fails alone") {
  IntegrationTest t("limitsdefault");
  const std::string biz = t.Business("big");
  Daemon& d = t.StartDaemon({{.name = biz}});
  auto client = OwnClient(d, 1);

  pb::PublishRequest at =
      MakePublish(biz, std::string(255, 'm'), 2, std::string(size_t{16} * 1024 * 1024, 'p'));
  at.set_routing_key(std::string(255, 'k'));
  at.set_correlation_id(std::string(255, 'c'));
  size_t left = size_t{64} * 1024;
  for (int i = 0; i < 64; ++i) {
    const std::string name = "h" + std::to_string(i);
    const size_t value = i == 63 ? left - name.size() : 1000;
    left -= name.size() + value;
    (*at.mutable_headers())[name] = std::string(value, 'v');
  }
  pb::PublishRequest over = at;
  over.set_message_id("over");
  over.set_sequence(3);
  over.mutable_payload()->push_back('p');
  // Above the old fixed 16 MiB request limit, under the derived one.
  CHECK(over.ByteSizeLong() > size_t{16} * 1024 * 1024);

  const PublishStreamOutcome out =
      PublishStream(*client, {MakePublish(biz, "first", 1), at, over}, 60s);
  INFO(StatusText(out.status));
  REQUIRE(out.status.ok());
  REQUIRE(out.results.size() == 3);
  for (const pb::PublishResult& r : out.results) {
    INFO(ResultText(r));
    if (r.sequence() == 3) {
      CHECK(r.status() == pb::PublishResult::FAILED);
      CHECK(r.error() == "payload of 16777217 bytes exceeds limits.max_payload_bytes (16777216)");
    } else {
      CHECK(r.status() == pb::PublishResult::CONFIRMED);
    }
  }
  // The message at the limits fits in a Delivery (the send limit is above).
  Subscriber sub(*client, {.business = biz, .prefetch = 4, .auto_ack = true});
  REQUIRE(sub.WaitForCount(2, 60s));
  const std::vector<pb::Delivery> got = sub.deliveries();
  CHECK(got[1].message_id() == at.message_id());
  CHECK(got[1].payload() == at.payload());
  CHECK(got[1].routing_key() == at.routing_key());
  CHECK(UserHeaders(got[1]).size() == 64);
  CHECK(sub.Leave().ok());
}

TEST_CASE(
    "integration: limits: a request above gRPC's receive limit ends only its stream "
    "(RESOURCE_EXHAUSTED), the results it had received stand, other streams carry on") {
  IntegrationTest t("limitsgrpc");
  const std::string biz = t.Business("grpc");
  // Receive limit: 1000 + 0 + 64 KiB = 66,536 bytes.
  Daemon& d =
      t.StartDaemon({{.name = biz}},
                    {.extra_yaml = "limits: { max_payload_bytes: 1000, max_header_bytes: 0 }\n"});
  auto other_client = OwnClient(d, 2);
  // Another stream on the same connection as the one that fails.
  Subscriber sub(d.stub(), {.business = biz, .prefetch = 64, .auto_ack = true});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, std::nullopt));

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 30s);  // a failure must not hang
  auto stream = d.stub().PublishStream(&ctx);
  for (uint64_t i = 1; i <= 5; ++i) {
    REQUIRE(stream->Write(MakePublish(biz, "early-" + std::to_string(i), i)));
  }
  // Each earlier request answered before the large one goes out.
  for (int i = 0; i < 5; ++i) {
    pb::PublishResult r;
    REQUIRE(stream->Read(&r));
    CHECK(r.status() == pb::PublishResult::CONFIRMED);
  }
  // 100 KiB of payload: over gRPC's limit, never reaching the daemon's check.
  stream->Write(MakePublish(biz, "huge", 6, std::string(size_t{100} * 1024, 'h')));
  stream->WritesDone();
  pb::PublishResult none;
  CHECK_FALSE(stream->Read(&none));
  const grpc::Status s = stream->Finish();
  INFO(StatusText(s));
  CHECK(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);

  // The daemon serves on: the other stream of that connection, a new one,
  // unary calls on another connection; the subscriber got everything.
  std::vector<std::string> after = PublishConfirmed(d.stub(), biz, 10, "after");
  CHECK(after.size() == 10);
  pb::PublishResult one;
  CHECK(PublishOne(*other_client, MakePublish(biz, "unary", 0), &one).ok());
  CHECK(one.status() == pb::PublishResult::CONFIRMED);
  REQUIRE(sub.WaitForCount(16, 20s));
  std::set<std::string> ids;
  for (const std::string& id : MessageIds(sub.deliveries())) ids.insert(id);
  CHECK(ids.count("huge") == 0);
  CHECK(ids.size() == 16);
  CHECK_FALSE(sub.ended());
  CHECK(sub.Leave().ok());
}

TEST_CASE(
    "integration: limits: max_streams_per_connection fails the stream above it with "
    "RESOURCE_EXHAUSTED on that unix connection alone, unary calls and other connections go on") {
  IntegrationTest t("limitsstreams");
  const std::string biz = t.Business("streams");
  Daemon& d =
      t.StartDaemon({{.name = biz}}, {.extra_yaml = "limits: { max_streams_per_connection: 2 }\n"});
  REQUIRE(d.address().rfind("unix:", 0) == 0);  // the case gRPC alone cannot tell apart
  auto client = OwnClient(d, 3);
  auto a = std::make_unique<Subscriber>(*client, Subscriber::Options{.business = biz});
  Subscriber b(*client, {.business = biz});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 2, std::nullopt));
  // A third stream on that connection fails at once, naming the limit.
  {
    Subscriber third(*client, {.business = biz});
    const std::optional<grpc::Status> refused = third.WaitEnded(10s);
    REQUIRE(refused.has_value());
    INFO(StatusText(*refused));
    CHECK(refused->error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
    CHECK(Contains(refused->error_message(), "limits.max_streams_per_connection"));
  }
  // So does a PublishStream (it counts the same).
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    auto stream = client->PublishStream(&ctx);
    pb::PublishResult ignored;
    while (stream->Read(&ignored)) {
    }
    const grpc::Status refused = stream->Finish();
    INFO(StatusText(refused));
    CHECK(refused.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // A unary call on the same connection is served meanwhile.
  pb::PublishResult r;
  REQUIRE(PublishOne(*client, MakePublish(biz, "unary", 0), &r).ok());
  CHECK(r.status() == pb::PublishResult::CONFIRMED);
  // Another connection to the same socket has streams of its own.
  auto other = OwnClient(d, 4);
  Subscriber c(*other, {.business = biz});
  Subscriber e(*other, {.business = biz});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 4, std::nullopt));
  CHECK_FALSE(c.ended());
  CHECK_FALSE(e.ended());
  // Once one stream ends, the connection takes the next.
  CHECK(a->Leave().ok());
  a.reset();
  Subscriber next(*client, {.business = biz});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 4, std::nullopt));
  CHECK_FALSE(next.ended());
  CHECK(next.Leave().ok());
  CHECK(b.Leave().ok());
  CHECK(c.Leave().ok());
  CHECK(e.Leave().ok());
}

// SubscribeExpecting: a Subscribe stream that sends `requests` and reads to
// its end; its final status.
grpc::Status SubscribeExpecting(pb::PubSub::Stub& stub,
                                const std::vector<pb::SubscribeRequest>& requests) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 20s);
  auto stream = stub.Subscribe(&ctx);
  for (const pb::SubscribeRequest& r : requests) {
    if (!stream->Write(r)) break;
  }
  pb::Delivery d;
  while (stream->Read(&d)) {
  }
  return stream->Finish();
}

TEST_CASE(
    "integration: limits: a burst of malformed requests from one client while another publishes "
    "10,000 messages: every one confirmed and consumed") {
  IntegrationTest t("limitsburst");
  const std::string biz = t.Business("burst");
  const std::string side = t.Business("side");  // where the bad client's opens go
  Daemon& d = t.StartDaemon({{.name = biz}, {.name = side}}, {.extra_yaml = kSmallLimits});
  auto good = OwnClient(d, 5);
  auto bad = OwnClient(d, 6);

  constexpr size_t kMessages = 10000;
  std::mutex mu;
  std::set<std::string> consumed;
  Subscriber sub(*good, {.business = biz,
                         .prefetch = 50,
                         .auto_ack = true,
                         .on_delivery = [&](const pb::Delivery& del) {
                           std::lock_guard<std::mutex> lock(mu);
                           consumed.insert(del.message_id());
                         }});
  REQUIRE(WaitForQueue(t.admin(), biz + ".queue", 1, std::nullopt));
  std::vector<pb::PublishRequest> requests;
  for (size_t i = 0; i < kMessages; ++i) {
    requests.push_back(MakePublish(biz, "g-" + std::to_string(i), i + 1, std::string(200, 'x')));
  }
  AsyncPublishStream publisher(*good, {.requests = requests, .rate = 2500});

  // The bad client, on its own connection, until the publisher is done.
  size_t rounds = 0;
  std::map<std::string, size_t> wrong;  // what came back other than expected
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) ++wrong[what];
  };
  pb::SubscribeRequest open;
  open.mutable_open()->set_business(side);
  pb::SubscribeRequest ack;
  ack.mutable_ack()->set_delivery_id(999999);
  pb::SubscribeRequest over_prefetch;
  over_prefetch.mutable_open()->set_business(side);
  over_prefetch.mutable_open()->set_prefetch(51);
  pb::SubscribeRequest unknown_open;
  unknown_open.mutable_open()->set_business(side + ".nope");
  while (!publisher.ended() && publisher.answered() < kMessages) {
    ++rounds;
    // Over limits, unknown business, reserved and control-character headers:
    // unary INVALID_ARGUMENT, and FAILED results on a stream that ends OK.
    std::vector<pb::PublishRequest> junk;
    for (const Bad& b : OverLimits(biz, "x" + std::to_string(rounds))) junk.push_back(b.request);
    junk.push_back(MakePublish(biz + ".nope", "x-unknown", 0));
    pb::PublishRequest reserved = MakePublish(biz, "x-reserved", 0);
    (*reserved.mutable_headers())["x-death"] = "forged";
    junk.push_back(reserved);
    pb::PublishRequest control = MakePublish(biz, "x-control", 0);
    (*control.mutable_headers())["a\nb"] = "v";
    junk.push_back(control);
    for (const pb::PublishRequest& j : junk) {
      pb::PublishResult r;
      expect(PublishOne(*bad, j, &r).error_code() == grpc::StatusCode::INVALID_ARGUMENT,
             "unary " + j.message_id());
    }
    const PublishStreamOutcome out = PublishStream(*bad, junk, 20s);
    expect(out.status.ok() && out.results.size() == junk.size(), "stream of bad requests");
    for (const pb::PublishResult& r : out.results) {
      expect(r.status() == pb::PublishResult::FAILED, "stream result " + ResultText(r));
    }
    // Subscribe: no open first, open twice, an ack of an id it does not
    // hold, prefetch over the ceiling, an unknown business.
    const auto invalid = [&](const std::vector<pb::SubscribeRequest>& reqs, const char* what) {
      const grpc::Status s = SubscribeExpecting(*bad, reqs);
      expect(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT,
             std::string(what) + ": " + StatusText(s));
    };
    invalid({ack}, "no open first");
    invalid({open, open}, "open twice");
    invalid({open, ack}, "ack of an unknown id");
    invalid({over_prefetch}, "prefetch over the ceiling");
    invalid({unknown_open}, "unknown business");
    // Over gRPC's receive limit: that stream ends RESOURCE_EXHAUSTED.
    const PublishStreamOutcome huge = PublishStream(
        *bad, {MakePublish(biz, "x-huge", 1, std::string(size_t{200} * 1024, 'h'))}, 20s);
    expect(huge.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED,
           "over the receive limit: " + StatusText(huge.status));
  }
  INFO("rounds of bad requests: " << rounds);
  for (const auto& [what, n] : wrong) FAIL_CHECK(what << " x" << n);
  CHECK(rounds >= 3);  // the burst overlapped the publishing

  const std::optional<grpc::Status> ended = publisher.WaitEnded(120s);
  REQUIRE(ended.has_value());
  CHECK(ended->ok());
  const std::vector<pb::PublishResult> results = publisher.results();
  CHECK(results.size() == kMessages);
  size_t confirmed = 0;
  for (const pb::PublishResult& r : results) {
    if (r.status() == pb::PublishResult::CONFIRMED) ++confirmed;
  }
  CHECK(confirmed == kMessages);
  const bool all = WaitUntil(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return consumed.size() >= kMessages;
      },
      60s);
  CHECK(all);
  {
    std::lock_guard<std::mutex> lock(mu);
    CHECK(consumed.size() == kMessages);
    for (const std::string& id : consumed) CHECK(id.rfind("g-", 0) == 0);
  }
  CHECK(sub.Leave().ok());
  // Neither broker connection was lost along the way.
  CHECK_FALSE(Contains(d.Log(), "connection lost"));
}

}  // namespace
}  // namespace mqs::it
