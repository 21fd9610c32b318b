// SubscribeBatch (many deliveries per response) and ack/nack delivery_ids
// (many ids per request, on Subscribe too).
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "harness.h"

namespace mqs::it {
namespace {

using namespace std::chrono_literals;

// Responses: what one read of the stream brought, and when.
struct Response {
  Clock::time_point at;
  std::vector<pb::Delivery> deliveries;
  size_t bytes = 0;  // the response's encoded size
};

std::vector<uint64_t> IdsOf(const std::vector<pb::Delivery>& deliveries) {
  std::vector<uint64_t> ids;
  for (const auto& d : deliveries) ids.push_back(d.delivery_id());
  return ids;
}

// Stream: a Subscribe (Message = Delivery) or SubscribeBatch (Message =
// DeliveryBatch) stream whose reader thread records each response and, with
// `ack_each`, acks each response's deliveries in one request (delivery_ids).
template <class Message>
class Stream {
 public:
  Stream(Daemon& d, const pb::SubscribeRequest::Open& open, bool ack_each = false)
      : ack_each_(ack_each) {
    if constexpr (std::is_same_v<Message, pb::DeliveryBatch>) {
      stream_ = d.stub().SubscribeBatch(&ctx_);
    } else {
      stream_ = d.stub().Subscribe(&ctx_);
    }
    pb::SubscribeRequest r;
    *r.mutable_open() = open;
    Write(r);  // a failure shows in the end status
    reader_ = std::thread([this] { ReadLoop(); });
  }
  ~Stream() {
    ctx_.TryCancel();
    reader_.join();
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  bool Write(const pb::SubscribeRequest& r) {
    std::lock_guard<std::mutex> lock(write_mu_);
    return !writes_done_ && stream_->Write(r);
  }
  bool Ack(const std::vector<uint64_t>& ids, uint64_t delivery_id = 0) {
    pb::SubscribeRequest r;
    r.mutable_ack()->set_delivery_id(delivery_id);
    r.mutable_ack()->mutable_delivery_ids()->Add(ids.begin(), ids.end());
    return Write(r);
  }
  bool Nack(const std::vector<uint64_t>& ids, bool requeue) {
    pb::SubscribeRequest r;
    r.mutable_nack()->set_requeue(requeue);
    r.mutable_nack()->mutable_delivery_ids()->Add(ids.begin(), ids.end());
    return Write(r);
  }
  bool WaitFor(size_t n, Clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return count_ >= n || ended_; });
    return count_ >= n;
  }
  std::vector<Response> responses() const {
    std::lock_guard<std::mutex> lock(mu_);
    return responses_;
  }
  std::vector<pb::Delivery> deliveries() const {
    std::vector<pb::Delivery> out;
    for (const Response& r : responses()) {
      out.insert(out.end(), r.deliveries.begin(), r.deliveries.end());
    }
    return out;
  }
  std::optional<grpc::Status> WaitEnded(Clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return ended_; })) return std::nullopt;
    return status_;
  }
  // Half-closes (the daemon reads every request sent) and waits for the end.
  std::optional<grpc::Status> Leave() {
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      writes_done_ = true;
      stream_->WritesDone();
    }
    return WaitEnded(10s);
  }

 private:
  void ReadLoop() {
    Message m;
    while (stream_->Read(&m)) {
      Response r{Clock::now(), {}, m.ByteSizeLong()};
      if constexpr (std::is_same_v<Message, pb::DeliveryBatch>) {
        r.deliveries.assign(m.deliveries().begin(), m.deliveries().end());
      } else {
        r.deliveries.push_back(m);
      }
      // Acked before it is counted: a test that saw it may leave at once.
      if (ack_each_) Ack(IdsOf(r.deliveries));
      {
        std::lock_guard<std::mutex> lock(mu_);
        count_ += r.deliveries.size();
        responses_.push_back(std::move(r));
      }
      cv_.notify_all();
    }
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      status = stream_->Finish();
    }
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    ended_ = true;
    cv_.notify_all();
  }

  const bool ack_each_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::SubscribeRequest, Message>> stream_;
  std::mutex write_mu_;
  bool writes_done_ = false;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Response> responses_;
  size_t count_ = 0;
  bool ended_ = false;
  grpc::Status status_;
  std::thread reader_;
};
using BatchStream = Stream<pb::DeliveryBatch>;
using PlainStream = Stream<pb::Delivery>;

pb::SubscribeRequest::Open OpenOf(const std::string& business, uint32_t prefetch,
                                  uint32_t max_messages = 0, uint32_t max_bytes = 0) {
  pb::SubscribeRequest::Open open;
  open.set_business(business);
  open.set_prefetch(prefetch);
  open.set_max_batch_messages(max_messages);
  open.set_max_batch_bytes(max_bytes);
  open.set_consumer_name("batch");
  return open;
}

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST_CASE(
    "integration: SubscribeBatch: a backlog of 1000 arrives in batches of at most "
    "max_batch_messages, more than one on average, and multi-id acks settle it all") {
  IntegrationTest t("batchlog");
  const std::string biz = t.Business("log");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  const auto published = PublishConfirmed(d.stub(), biz, 1000, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 1000u, 30s));

  BatchStream s(d, OpenOf(biz, 1000, 50), /*ack_each=*/true);
  REQUIRE(s.WaitFor(1000, 60s));
  const auto responses = s.responses();
  size_t largest = 0;
  for (const auto& r : responses) largest = std::max(largest, r.deliveries.size());
  INFO(responses.size() << " responses, largest " << largest);
  CHECK(largest <= 50);
  CHECK(responses.size() < 1000);  // > 1 per response on average
  const auto ids = MessageIds(s.deliveries());
  CHECK(ids.size() == 1000);
  CHECK(std::set<std::string>(ids.begin(), ids.end()) ==
        std::set<std::string>(published.begin(), published.end()));
  const auto end = s.Leave();
  REQUIRE(end.has_value());
  CHECK(end->ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
}

TEST_CASE(
    "integration: SubscribeBatch: at a low rate each delivery comes alone and at once, not held "
    "back for a batch to fill") {
  IntegrationTest t("batchlow");
  const std::string biz = t.Business("low");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  BatchStream s(d, OpenOf(biz, 100, 256), /*ack_each=*/true);
  REQUIRE(WaitForQueue(t.admin(), queue, 1u, std::nullopt));
  std::vector<Clock::duration> took;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    PublishConfirmed(d.stub(), biz, 1, biz + "-" + std::to_string(i));
    // Generous: CI runs this under sanitizers on loaded cores; a batch held
    // back to fill would never come.
    REQUIRE(s.WaitFor(static_cast<size_t>(i) + 1, 2s));
    took.push_back(s.responses().back().at - start);
  }
  for (const auto& r : s.responses()) CHECK(r.deliveries.size() == 1);
  std::sort(took.begin(), took.end());
  const auto median_ms = std::chrono::duration_cast<std::chrono::milliseconds>(took[2]).count();
  INFO("median publish-to-delivery " << median_ms << " ms");
  CHECK(median_ms < 200);
  CHECK(s.Leave().value_or(grpc::Status::CANCELLED).ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
}

TEST_CASE(
    "integration: SubscribeBatch: max_batch_bytes bounds a response, and a larger delivery goes "
    "alone") {
  IntegrationTest t("batchbytes");
  const std::string biz = t.Business("bytes");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  const auto small = PublishConfirmed(d.stub(), biz, 40, biz + "-a");
  pb::PublishRequest big;
  big.set_business(biz);
  big.set_message_id("big");
  big.set_payload(std::string(size_t{64} * 1024, 'x'));
  pb::PublishResult result;
  REQUIRE(PublishOne(d.stub(), big, &result).ok());
  REQUIRE(result.status() == pb::PublishResult::CONFIRMED);
  PublishConfirmed(d.stub(), biz, 40, biz + "-b");
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 81u));

  constexpr uint32_t kMaxBytes = 2000;
  BatchStream s(d, OpenOf(biz, 200, 200, kMaxBytes), /*ack_each=*/true);
  REQUIRE(s.WaitFor(81, 30s));
  bool big_alone = false;
  for (const auto& r : s.responses()) {
    INFO(r.deliveries.size() << " deliveries, " << r.bytes << " bytes");
    if (r.deliveries.size() > 1) CHECK(r.bytes <= kMaxBytes);
    for (const auto& dl : r.deliveries) {
      if (dl.message_id() == "big") big_alone = r.deliveries.size() == 1;
    }
  }
  CHECK(big_alone);
  CHECK(s.Leave().value_or(grpc::Status::CANCELLED).ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
}

TEST_CASE(
    "integration: a multi-id ack settles exactly the ids listed, the rest go to the next "
    "stream, and plain Subscribe takes delivery_ids too") {
  IntegrationTest t("batchack");
  const std::string biz = t.Business("ack");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  PublishConfirmed(d.stub(), biz, 20, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 20u));

  std::set<std::string> kept;
  {
    BatchStream a(d, OpenOf(biz, 20, 7));
    REQUIRE(a.WaitFor(20, 20s));
    std::vector<uint64_t> even;
    const auto all = a.deliveries();
    for (size_t i = 0; i < all.size(); ++i) {
      if (i % 2 == 0) {
        even.push_back(all[i].delivery_id());
      } else {
        kept.insert(all[i].message_id());
      }
    }
    REQUIRE(a.Ack(even));
    const auto end = a.Leave();
    REQUIRE(end.has_value());
    CHECK(end->ok());
  }
  // The 10 not acked come again, to a plain Subscribe stream, which settles
  // them with one multi-id ack (and delivery_id besides the list).
  PlainStream b(d, OpenOf(biz, 20));
  REQUIRE(b.WaitFor(10, 20s));
  const auto again = b.deliveries();
  std::set<std::string> got;
  for (const auto& dl : again) {
    got.insert(dl.message_id());
    CHECK(dl.redelivered());
  }
  CHECK(got == kept);
  std::vector<uint64_t> ids = IdsOf(again);
  const uint64_t last = ids.back();
  ids.pop_back();
  REQUIRE(b.Ack(ids, last));
  const auto end = b.Leave();
  REQUIRE(end.has_value());
  CHECK(end->ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
  CHECK(b.deliveries().size() == 10);
}

TEST_CASE("integration: plain Subscribe settles an ack's delivery_ids") {
  IntegrationTest t("batchplain");
  const std::string biz = t.Business("plain");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  PublishConfirmed(d.stub(), biz, 5, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 5u));
  PlainStream s(d, OpenOf(biz, 10));
  REQUIRE(s.WaitFor(5, 20s));
  REQUIRE(s.Ack(IdsOf(s.deliveries())));  // delivery_id 0: the list alone
  const auto end = s.Leave();
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
}

TEST_CASE("integration: a multi-id nack without requeue dead-letters each id listed") {
  IntegrationTest t("batchnack");
  const std::string biz = t.Business("nack");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  PublishConfirmed(d.stub(), biz, 6, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 6u));
  BatchStream s(d, OpenOf(biz, 10));
  REQUIRE(s.WaitFor(6, 20s));
  const auto ids = IdsOf(s.deliveries());
  REQUIRE(s.Nack({ids.begin(), ids.begin() + 5}, /*requeue=*/false));
  REQUIRE(s.Ack({ids[5]}));
  CHECK(s.Leave().value_or(grpc::Status::CANCELLED).ok());
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
  CHECK(WaitForQueue(t.admin(), queue + ".dead", 0u, 5u));
}

TEST_CASE(
    "integration: an unknown id in an ack list ends the stream INVALID_ARGUMENT as a single ack "
    "of it does, the ids before it settled") {
  IntegrationTest t("batchunknown");
  const std::string biz = t.Business("unknown");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  PublishConfirmed(d.stub(), biz, 3, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 3u));
  BatchStream s(d, OpenOf(biz, 10));
  REQUIRE(s.WaitFor(3, 20s));
  const auto ids = IdsOf(s.deliveries());
  const uint64_t bogus = ids.back() + 1000;
  s.Ack({ids[0], bogus, ids[1]});
  const auto end = s.WaitEnded(10s);
  REQUIRE(end.has_value());
  INFO(StatusText(*end));
  CHECK(end->error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(end->error_message(), "delivery_id " + std::to_string(bogus)));
  // ids[0] was acked; ids[1] (after the mistake) and ids[2] return.
  CHECK(WaitForQueue(t.admin(), queue, 0u, 2u));
}

TEST_CASE(
    "integration: SubscribeBatch: an empty ack, batch limits over their ceiling and an "
    "unparsable request are INVALID_ARGUMENT") {
  IntegrationTest t("batchbad");
  const std::string biz = t.Business("bad");
  Daemon& d = t.StartDaemon({{.name = biz}});
  const auto ends_with = [&](const pb::SubscribeRequest::Open& open,
                             const std::vector<pb::SubscribeRequest>& then) {
    BatchStream s(d, open);
    for (const auto& r : then) s.Write(r);
    auto end = s.WaitEnded(10s);
    REQUIRE(end.has_value());
    return *end;
  };
  grpc::Status st = ends_with(OpenOf(biz, 10, 10001), {});
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(st.error_message(), "open.max_batch_messages 10001 exceeds limits.max_prefetch"));
  st = ends_with(OpenOf(biz, 10, 0, 4000000000u), {});
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(st.error_message(), "open.max_batch_bytes 4000000000 exceeds"));
  pb::SubscribeRequest empty;
  empty.mutable_ack();
  st = ends_with(OpenOf(biz, 10), {empty});
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(st.error_message(), "ack names no delivery"));

  // Bytes that are no SubscribeRequest, on the raw method.
  grpc::ClientContext ctx;
  auto raw = std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          d.channel().get(),
          grpc::internal::RpcMethod("/mqsidecar.v1.PubSub/SubscribeBatch",
                                    grpc::internal::RpcMethod::BIDI_STREAMING),
          &ctx));
  grpc::Slice junk(std::string("\xff\xff\xff"));
  raw->Write(grpc::ByteBuffer(&junk, 1));
  raw->WritesDone();
  grpc::ByteBuffer ignored;
  while (raw->Read(&ignored)) {
  }
  st = raw->Finish();
  INFO(StatusText(st));
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(Contains(st.error_message(), "request 1 could not be parsed as"));
}

TEST_CASE(
    "integration: mqctl subscribe prints every delivery of a batch once and settles exactly "
    "what it printed") {
  IntegrationTest t("batchmqctl");
  const std::string biz = t.Business("cli");
  const std::string queue = biz + ".queue";
  Daemon& d = t.StartDaemon({{.name = biz}});
  PublishConfirmed(d.stub(), biz, 30, biz);
  REQUIRE(WaitForQueue(t.admin(), queue, 0u, 30u));
  const auto mqctl = [&](const std::string& count) {
    return RunCommand({MqctlPath(), "--address", d.address(), "subscribe", biz, "--prefetch", "30",
                       "--count", count},
                      60s);
  };
  const auto lines = [](const std::string& out) {
    return static_cast<size_t>(std::count(out.begin(), out.end(), '\n'));
  };
  // All 30 may come in one batch: 10 are printed and acked, 20 return.
  CommandResult r = mqctl("10");
  INFO(CommandOutput(r));
  REQUIRE(r.exit_code == 0);
  CHECK(lines(r.out) == 10);
  CHECK(WaitForQueue(t.admin(), queue, 0u, 20u));
  r = mqctl("20");
  INFO(CommandOutput(r));
  REQUIRE(r.exit_code == 0);
  CHECK(lines(r.out) == 20);
  CHECK(WaitForQueue(t.admin(), queue, 0u, 0u));
}

}  // namespace
}  // namespace mqs::it
