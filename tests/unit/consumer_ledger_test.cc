// ConsumerLedger: the consumer's bookkeeping driven alone, with a fake sender.
#include "amqp/consumer_ledger.h"

#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

namespace mqs::amqp {
namespace {

using Clock = ConsumerLedger::Clock;
using State = ConsumerLedger::ChannelState;
using namespace std::chrono_literals;

// Records every method as text: "open 2", "ack 2 5 m", ...
class FakeSender final : public ChannelSender {
 public:
  std::vector<std::string> sent;
  bool SendOpen(ChannelNo ch) override { return Add("open " + std::to_string(ch)); }
  bool SendQos(ChannelNo ch, uint16_t prefetch) override {
    return Add("qos " + std::to_string(ch) + " " + std::to_string(prefetch));
  }
  bool SendConsume(ChannelNo ch, const std::string& queue, const std::string& tag) override {
    return Add("consume " + std::to_string(ch) + " " + queue + " " + tag);
  }
  bool SendCancel(ChannelNo ch, const std::string& tag) override {
    return Add("cancel " + std::to_string(ch) + " " + tag);
  }
  bool SendClose(ChannelNo ch) override { return Add("close " + std::to_string(ch)); }
  bool SendCloseOk(ChannelNo ch) override { return Add("close-ok " + std::to_string(ch)); }
  bool SendAck(ChannelNo ch, uint64_t tag, bool multiple) override {
    return Add("ack " + std::to_string(ch) + " " + std::to_string(tag) + (multiple ? " m" : ""));
  }
  bool SendNack(ChannelNo ch, uint64_t tag, bool multiple, bool requeue) override {
    return Add("nack " + std::to_string(ch) + " " + std::to_string(tag) + (multiple ? " m" : "") +
               (requeue ? " requeue" : ""));
  }
  bool SendReject(ChannelNo ch, uint64_t tag, bool requeue) override {
    return Add("reject " + std::to_string(ch) + " " + std::to_string(tag) +
               (requeue ? " requeue" : ""));
  }
  // What was sent since the last call.
  std::vector<std::string> Take() {
    std::vector<std::string> out;
    out.swap(sent);
    return out;
  }

 private:
  bool Add(std::string s) {
    sent.push_back(std::move(s));
    return true;
  }
};

class FakeSink final : public DeliverySink {
 public:
  std::vector<mqsidecar::v1::Delivery> got;
  std::optional<absl::Status> closed;
  void OnDelivery(mqsidecar::v1::Delivery&& d) override { got.push_back(std::move(d)); }
  void OnClosed(const absl::Status& s) override { closed = s; }
  std::vector<uint64_t> Ids() const {
    std::vector<uint64_t> out;
    for (const auto& d : got) out.push_back(d.delivery_id());
    return out;
  }
};

struct Fixture {
  Clock::time_point now = Clock::time_point(1h);
  ConsumerLedger ledger{[this] { return now; }};
  FakeSender out;

  OpenRequest Req(uint64_t id, FakeSink& sink, uint32_t prefetch = 10) {
    return OpenRequest{id, "biz", "q", prefetch, "tag" + std::to_string(id), &sink};
  }
  // Opens stream `id` and completes its set-up; returns its channel.
  ChannelNo OpenConsuming(uint64_t id, FakeSink& sink) {
    ledger.Open(Req(id, sink));
    const ChannelNo ch = ledger.stream(id).channel;
    ledger.OnOpenOk(ch);
    ledger.OnQosOk(ch);
    ledger.OnConsumeOk(ch);
    out.Take();
    return ch;
  }
  void Deliver(ChannelNo ch, uint64_t tag, uint64_t stream_id) {
    ledger.OnDelivery(ch, tag, "tag" + std::to_string(stream_id), mqsidecar::v1::Delivery{});
  }
};

TEST_CASE("ledger: set-up is asynchronous: open, qos, consume each wait for their -ok") {
  Fixture f;
  FakeSink sink;
  f.ledger.Attach(&f.out, 2047);
  f.ledger.Open(f.Req(7, sink, 70000));
  CHECK(f.out.Take() == std::vector<std::string>{"open 2"});
  CHECK(f.ledger.channels().at(2).state == State::kOpening);
  // A delivery before consume-ok (cannot happen, but never reaches the stream).
  f.Deliver(2, 1, 7);
  CHECK(sink.got.empty());
  f.ledger.OnQosOk(2);  // out of order: ignored
  CHECK(f.out.Take().empty());
  f.ledger.OnOpenOk(2);
  CHECK(f.out.Take() == std::vector<std::string>{"qos 2 65535"});  // prefetch capped
  f.ledger.OnQosOk(2);
  CHECK(f.out.Take() == std::vector<std::string>{"consume 2 q tag7"});
  CHECK(f.ledger.channels().at(2).state == State::kConsume);
  f.ledger.OnConsumeOk(2);
  CHECK(f.ledger.channels().at(2).state == State::kConsuming);
  f.Deliver(2, 1, 7);
  REQUIRE(sink.got.size() == 1);
  CHECK(sink.got[0].delivery_id() == 1);
  CHECK(sink.got[0].business() == "biz");
  CHECK_FALSE(sink.closed.has_value());
}

TEST_CASE("ledger: a refused set-up ends the stream with the broker's reason") {
  Fixture f;
  FakeSink a, b, c;
  f.ledger.Attach(&f.out, 2047);
  f.ledger.Open(f.Req(1, a));
  f.ledger.Open(f.Req(2, b));
  f.ledger.Open(f.Req(3, c));
  CHECK(f.out.Take() == std::vector<std::string>{"open 2", "open 3", "open 4"});
  // Stream 1: the consume is refused (queue missing).
  f.ledger.OnOpenOk(2);
  f.ledger.OnQosOk(2);
  f.out.Take();
  f.ledger.OnBrokerClose(2, 404, "NOT_FOUND - no queue 'q'");
  CHECK(f.out.Take() == std::vector<std::string>{"close-ok 2"});
  REQUIRE(a.closed.has_value());
  CHECK(a.closed->code() == absl::StatusCode::kNotFound);
  CHECK(a.closed->message() == "consume from queue 'q': NOT_FOUND - no queue 'q'");
  CHECK_FALSE(f.ledger.channels().contains(2));  // the number is free at once
  // Stream 2: refused at qos; stream 3: refused at open (access).
  f.ledger.OnOpenOk(3);
  f.ledger.OnBrokerClose(3, 406, "PRECONDITION_FAILED");
  CHECK(b.closed->code() == absl::StatusCode::kFailedPrecondition);
  f.ledger.OnBrokerClose(4, 403, "ACCESS_REFUSED");
  CHECK(c.closed->code() == absl::StatusCode::kPermissionDenied);
  // A channel error on a consuming stream: ABORTED.
  FakeSink d;
  const ChannelNo ch = f.OpenConsuming(4, d);
  f.ledger.OnBrokerClose(ch, 406, "PRECONDITION_FAILED - unknown delivery tag");
  CHECK(d.closed->code() == absl::StatusCode::kAborted);
  CHECK(f.ledger.stream_count() == 0);
  CHECK(f.ledger.Drained());
}

TEST_CASE("ledger: a stream closed mid set-up sends channel.close, the number waits for close-ok") {
  Fixture f;
  FakeSink a;
  f.ledger.Attach(&f.out, 2047);
  f.ledger.Open(f.Req(1, a));
  f.out.Take();
  f.ledger.Close(1, absl::OkStatus());
  CHECK(a.closed.has_value());
  CHECK(a.closed->ok());
  CHECK(f.out.Take() == std::vector<std::string>{"close 2"});
  CHECK(f.ledger.channels().at(2).state == State::kClosing);
  // The -oks of the set-up still arrive: ignored.
  f.ledger.OnOpenOk(2);
  f.ledger.OnQosOk(2);
  CHECK(f.out.Take().empty());
  CHECK_FALSE(f.ledger.Drained());
  // The broker's own close crossing ours: answered, the number still waits.
  f.ledger.OnBrokerClose(2, 406, "x");
  CHECK(f.out.Take() == std::vector<std::string>{"close-ok 2"});
  CHECK(f.ledger.channels().contains(2));
  f.ledger.OnCloseOk(2);
  CHECK(f.ledger.Drained());
}

TEST_CASE("ledger: acks coalesce into one multiple ack plus singles above the lowest unacked") {
  Fixture f;
  FakeSink s;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, s);
  for (uint64_t tag = 1; tag <= 6; ++tag) f.Deliver(ch, tag, 1);
  CHECK(s.Ids() == std::vector<uint64_t>{1, 2, 3, 4, 5, 6});
  // Client acks 3, 1, 2, 5 in one batch: 1..3 as one multiple ack, 5 alone (4 unacked).
  for (uint64_t id : {3, 1, 2, 5}) f.ledger.Settle(1, id, true, false, false);
  CHECK(f.out.Take().empty());  // nothing before the flush
  f.ledger.FlushAcks();
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 3 m", "ack 2 5"});
  CHECK(f.ledger.stream(1).unacked == std::set<uint64_t>{4, 6});
  // A nack with multiple settles 4 and 6 at the broker with one method.
  f.ledger.Settle(1, 6, false, true, true);
  CHECK(f.out.Take() == std::vector<std::string>{"nack 2 6 m requeue"});
  CHECK(f.ledger.stream(1).unacked.empty());
  // All acked: a multiple ack covers everything.
  f.Deliver(ch, 7, 1);
  f.Deliver(ch, 8, 1);
  f.ledger.Settle(1, 8, true, false, false);
  f.ledger.Settle(1, 7, true, false, false);
  f.ledger.FlushAcks();
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 8 m"});
}

TEST_CASE("ledger: an ack of an unknown or settled id ends the stream, after the acks before it") {
  Fixture f;
  FakeSink s;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, s);
  f.Deliver(ch, 1, 1);
  f.Deliver(ch, 2, 1);
  f.ledger.Settle(1, 1, true, false, false);
  f.ledger.Settle(1, 1, true, false, false);  // twice
  REQUIRE(s.closed.has_value());
  CHECK(s.closed->code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.closed->message()).find("already settled") != std::string::npos);
  // The first ack went out; the channel lingers (a settle just now), consumer cancelled.
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 1 m", "cancel 2 tag1"});
  CHECK(f.ledger.channels().at(ch).state == State::kLingering);
  // A settle for a stream that has ended is ignored.
  f.ledger.Settle(1, 2, true, false, false);
  f.ledger.FlushAcks();
  CHECK(f.out.Take().empty());
}

TEST_CASE("ledger: after a reconnect ids are stale, never acked, and new ids keep growing") {
  Fixture f;
  FakeSink s;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, s);
  for (uint64_t tag = 1; tag <= 4; ++tag) f.Deliver(ch, tag, 1);
  f.ledger.Settle(1, 1, true, false, false);  // acked but not flushed: lost with the connection
  f.ledger.Detach();
  auto v = f.ledger.stream(1);
  CHECK(v.channel == 0);
  CHECK(v.stale == std::set<uint64_t>{2, 3, 4});
  CHECK(v.unacked.empty());
  CHECK(v.id_offset == 4);
  // While disconnected: settles of stale ids are accepted silently.
  f.ledger.Settle(1, 2, true, false, false);
  f.ledger.FlushAcks();
  CHECK(f.out.Take().empty());

  // The new connection: the set-up is pipelined; the stream resumes.
  f.ledger.Attach(&f.out, 2047);
  CHECK(f.out.Take() == std::vector<std::string>{"open 2"});
  f.ledger.OnOpenOk(2);
  f.ledger.OnQosOk(2);
  f.ledger.OnConsumeOk(2);
  f.out.Take();
  f.Deliver(2, 1, 1);  // redelivery of 3, say: a new id above every old one
  f.Deliver(2, 2, 1);
  CHECK(s.Ids() == std::vector<uint64_t>{1, 2, 3, 4, 5, 6});
  // multiple over stale and live: the stale ones are dropped, the live range acked.
  f.ledger.Settle(1, 5, true, false, true);
  f.ledger.FlushAcks();
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 1 m"});
  v = f.ledger.stream(1);
  CHECK(v.stale.empty());
  CHECK(v.unacked == std::set<uint64_t>{6});
  // multiple on a stale id covers only stale ones.
  f.ledger.Detach();
  f.ledger.Attach(&f.out, 2047);
  f.out.Take();
  v = f.ledger.stream(1);
  CHECK(v.stale == std::set<uint64_t>{6});
  f.ledger.Settle(1, 6, false, true, true);
  CHECK(f.out.Take().empty());
  CHECK(f.ledger.stream(1).stale.empty());
  CHECK_FALSE(s.closed.has_value());
}

TEST_CASE("ledger: every stream resumes at once after a reconnect, in stream order") {
  Fixture f;
  std::vector<FakeSink> sinks(5);
  f.ledger.Attach(&f.out, 2047);
  for (uint64_t id = 1; id <= 5; ++id) f.OpenConsuming(id, sinks[id - 1]);
  f.ledger.Detach();
  f.ledger.Attach(&f.out, 2047);
  // Five channel.opens in one go, no waiting for any answer.
  CHECK(f.out.Take() == std::vector<std::string>{"open 2", "open 3", "open 4", "open 5", "open 6"});
  // Answers in any order.
  for (ChannelNo ch : {6, 2, 4, 3, 5}) f.ledger.OnOpenOk(ch);
  for (ChannelNo ch : {2, 3, 4, 5, 6}) f.ledger.OnQosOk(ch);
  for (ChannelNo ch : {2, 3, 4, 5, 6}) f.ledger.OnConsumeOk(ch);
  for (const auto& [ch, info] : f.ledger.channels()) CHECK(info.state == State::kConsuming);
}

TEST_CASE("ledger: a stream ending right after a settle lingers, then closes at the linger") {
  Fixture f;
  FakeSink s;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, s);
  f.Deliver(ch, 1, 1);
  f.ledger.Settle(1, 1, true, false, false);
  f.ledger.FlushAcks();
  f.out.Take();
  f.now += 50ms;
  f.ledger.Close(1, absl::OkStatus());
  CHECK(f.out.Take() == std::vector<std::string>{"cancel 2 tag1"});
  CHECK(f.ledger.HasTimers());
  // Deliveries on the way are dropped (requeued by the close).
  f.Deliver(ch, 2, 1);
  CHECK(s.got.size() == 1);
  f.now += 49ms;
  f.ledger.CloseDue();
  CHECK(f.out.Take().empty());
  f.now += 1ms;  // kSettleLinger after the ack
  f.ledger.CloseDue();
  CHECK(f.out.Take() == std::vector<std::string>{"close 2"});
  CHECK_FALSE(f.ledger.HasTimers());
  CHECK_FALSE(f.ledger.Drained());
  f.ledger.OnCloseOk(ch);
  CHECK(f.ledger.Drained());

  // Long after its last settle: closed at once.
  FakeSink t;
  const ChannelNo ch2 = f.OpenConsuming(2, t);
  f.now += 1s;
  f.ledger.Close(2, absl::CancelledError("gone"));
  CHECK(f.out.Take() == std::vector<std::string>{"close " + std::to_string(ch2)});
}

TEST_CASE("ledger: channel numbers go round a window, lingering and closing ones stay taken") {
  Fixture f;
  f.ledger.Attach(&f.out, 2047);
  std::vector<FakeSink> sinks(40);
  // 31 streams fill numbers 2..32 (window 32 while few are open).
  for (uint64_t id = 1; id <= 31; ++id) f.OpenConsuming(id, sinks[id - 1]);
  CHECK(f.ledger.stream(31).channel == 32);
  // Streams 1..10 end right after an ack (linger), 11..20 close (closing).
  for (uint64_t id = 1; id <= 20; ++id) {
    const ChannelNo ch = f.ledger.stream(id).channel;
    f.Deliver(ch, 1, id);
    f.ledger.Settle(id, 1, true, false, false);
    f.ledger.FlushAcks();
    if (id > 10) f.now += 1s;  // long ago: closed at once
    f.ledger.Close(id, absl::OkStatus());
    if (id > 10) f.now -= 1s;
  }
  f.out.Take();
  // The window grows past 32: the next numbers are new, never a taken one.
  FakeSink n;
  f.ledger.Open(f.Req(100, n));
  CHECK(f.ledger.stream(100).channel == 33);
  // Once numbers are freed and the wrap comes round, they are reused.
  for (ChannelNo ch = 12; ch <= 21; ++ch) f.ledger.OnCloseOk(ch);  // streams 11..20
  f.ledger.OnCloseOk(2);                                           // lingering: not closing yet
  CHECK(f.ledger.channels().at(2).state == State::kLingering);
}

TEST_CASE(
    "ledger: window exhaustion with lingering channels refuses the open, RESOURCE_EXHAUSTED") {
  Fixture f;
  f.ledger.Attach(&f.out, 4);  // channel_max 4: numbers 2..4
  FakeSink a, b, c, d;
  f.OpenConsuming(1, a);
  const ChannelNo ch2 = f.OpenConsuming(2, b);
  f.Deliver(ch2, 1, 2);
  f.ledger.Settle(2, 1, true, false, false);
  f.ledger.FlushAcks();
  f.ledger.Close(2, absl::OkStatus());  // lingers
  f.OpenConsuming(3, c);
  f.out.Take();
  f.ledger.Open(f.Req(4, d));
  REQUIRE(d.closed.has_value());
  CHECK(d.closed->code() == absl::StatusCode::kResourceExhausted);
  CHECK(f.out.Take().empty());
  // After the linger and close-ok, the number is free again.
  f.now += 1s;
  f.ledger.CloseDue();
  CHECK(f.out.Take() == std::vector<std::string>{"close " + std::to_string(ch2)});
  f.ledger.OnCloseOk(ch2);
  FakeSink e;
  f.ledger.Open(f.Req(5, e));
  CHECK(f.ledger.stream(5).channel == ch2);
}

TEST_CASE("ledger: drain cancels consumers, ends streams once settled, refuses opens") {
  Fixture f;
  FakeSink a, b, c;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, a);
  f.OpenConsuming(2, b);  // holds nothing
  f.Deliver(ch, 1, 1);
  f.ledger.Open(f.Req(3, c));  // still being set up
  f.out.Take();
  f.ledger.Drain();
  const auto sent = f.out.Take();
  // Stream 1 cancelled and kept; stream 2 cancelled then closed; stream 3 closed.
  CHECK(sent == std::vector<std::string>{"cancel 2 tag1", "cancel 3 tag2", "close 3", "close 4"});
  CHECK_FALSE(a.closed.has_value());
  CHECK(b.closed.has_value());
  CHECK(c.closed.has_value());
  // A delivery already on its way still reaches the stream (to be settled).
  f.Deliver(ch, 2, 1);
  CHECK(a.got.size() == 2);
  f.ledger.Settle(1, 1, true, false, false);
  f.ledger.FlushAcks();
  CHECK_FALSE(a.closed.has_value());
  f.ledger.Settle(1, 2, false, true, false);
  REQUIRE(a.closed.has_value());
  CHECK(a.closed->code() == absl::StatusCode::kUnavailable);
  FakeSink late;
  f.ledger.Open(f.Req(9, late));
  CHECK(late.closed->code() == absl::StatusCode::kUnavailable);
}

TEST_CASE("ledger: a broker cancel ends the stream, EndAll ends every stream") {
  Fixture f;
  FakeSink a, b;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, a);
  f.OpenConsuming(2, b);
  CHECK(f.ledger.OnBrokerCancel(ch));
  CHECK(a.closed->code() == absl::StatusCode::kUnavailable);
  CHECK_FALSE(f.ledger.OnBrokerCancel(ch));  // no stream there any more
  f.ledger.Detach();
  f.ledger.EndAll(absl::UnavailableError("stop"));
  CHECK(b.closed->code() == absl::StatusCode::kUnavailable);
  // Stream 1 closed its channel while attached; stream 2 ended detached: nothing sent.
  CHECK(f.out.Take() == std::vector<std::string>{"close 2"});
}

TEST_CASE("ledger: opens while disconnected wait for the connection") {
  Fixture f;
  FakeSink a;
  f.ledger.Open(f.Req(1, a));
  CHECK(f.out.Take().empty());
  CHECK(f.ledger.stream(1).channel == 0);
  f.ledger.Attach(&f.out, 2047);
  CHECK(f.out.Take() == std::vector<std::string>{"open 2"});
}

TEST_CASE(
    "ledger: a delivery too large for the stream is rejected, not requeued, the stream "
    "goes on") {
  Fixture f;
  FakeSink a;
  f.ledger.Attach(&f.out, 2047);
  const ChannelNo ch = f.OpenConsuming(1, a);
  CHECK(f.ledger.AdmitSize(ch, 1, "tag1", "m1", 1000, 2000));
  f.Deliver(ch, 1, 1);
  // 2000 - business and delivery_id overhead: too large.
  CHECK_FALSE(f.ledger.AdmitSize(ch, 2, "tag1", "big\n", 1990, 2000));
  CHECK(f.out.Take() == std::vector<std::string>{"reject 2 2"});
  f.Deliver(ch, 3, 1);
  CHECK(a.Ids() == std::vector<uint64_t>{1, 3});
  // Acks around the rejected tag: a multiple ack up to 3 is right (2 is gone).
  f.ledger.Settle(1, 3, true, false, false);
  f.ledger.Settle(1, 1, true, false, false);
  f.ledger.FlushAcks();
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 3 m"});
  CHECK_FALSE(a.closed.has_value());
  // For a channel with no consuming stream: left alone (dropped, requeued by the close).
  CHECK(f.ledger.AdmitSize(99, 1, "x", "m", 1 << 30, 2000));
  CHECK(f.out.Take().empty());
}

// ---------------------------------------------------------------------------
// Delayed retry: a delivery held while its copy is published.

struct RetryFixture : Fixture {
  FakeSink sink;
  config::Consumer business;
  ChannelNo ch = 0;

  RetryFixture() {
    business.name = "biz";
    business.retry = config::Retry{{1s}, 3};
    ledger.Attach(&out, 2047);
    OpenRequest req = Req(1, sink);
    req.config = &business;
    ledger.Open(std::move(req));
    ch = ledger.stream(1).channel;
    ledger.OnOpenOk(ch);
    ledger.OnQosOk(ch);
    ledger.OnConsumeOk(ch);
    for (uint64_t tag = 1; tag <= 4; ++tag) {
      REQUIRE(ledger.CapturesOn(ch));
      ledger.OnDelivery(ch, tag, "tag1", mqsidecar::v1::Delivery{},
                        std::make_shared<CapturedMessage>(amqp_basic_properties_t{}));
    }
    out.Take();
  }
};

TEST_CASE(
    "ledger: a delivery held for a retry is acked once its copy is confirmed, never by a "
    "multiple ack before that") {
  RetryFixture f;
  std::optional<ConsumerLedger::RetryTicket> t = f.ledger.TakeForRetry(1, 2);
  REQUIRE(t.has_value());
  CHECK(t->tag == 2);
  CHECK(t->message != nullptr);
  // The client acks 1, 3, 4: the multiple ack stops below the held 2.
  for (uint64_t id : {1, 3, 4}) f.ledger.Settle(1, id, true, false, false);
  f.ledger.FlushAcks();
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 1 m", "ack 2 3", "ack 2 4"});
  f.ledger.FinishRetry(*t, true);
  f.ledger.FlushAcks();
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 2 m"});
  CHECK(f.ledger.stream(1).unacked.empty());
}

TEST_CASE("ledger: a retry copy not confirmed requeues the original, a held id cannot be settled") {
  RetryFixture f;
  std::optional<ConsumerLedger::RetryTicket> t = f.ledger.TakeForRetry(1, 1);
  REQUIRE(t.has_value());
  // A multiple nack over the held id is sent one by one around it.
  f.ledger.Settle(1, 3, false, true, true);
  CHECK(f.out.Take() == std::vector<std::string>{"nack 2 2 requeue", "nack 2 3 requeue"});
  f.ledger.FinishRetry(*t, false);
  CHECK(f.out.Take() == std::vector<std::string>{"nack 2 1 requeue"});
  // Settling a held id is the client's mistake, as for a settled one.
  std::optional<ConsumerLedger::RetryTicket> t4 = f.ledger.TakeForRetry(1, 4);
  REQUIRE(t4.has_value());
  f.ledger.Settle(1, 4, true, false, false);
  REQUIRE(f.sink.closed.has_value());
  CHECK(f.sink.closed->code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE(
    "ledger: a stream that ends with a retry copy in flight keeps its channel open until "
    "the copy is settled") {
  RetryFixture f;
  std::optional<ConsumerLedger::RetryTicket> t = f.ledger.TakeForRetry(1, 1);
  REQUIRE(t.has_value());
  f.now += 10s;  // long after any settle: without the held delivery it would close at once
  f.ledger.Close(1, absl::OkStatus());
  CHECK(f.out.Take() == std::vector<std::string>{"cancel 2 tag1"});
  f.now += 10s;
  f.ledger.CloseDue();
  CHECK(f.out.Take().empty());
  CHECK_FALSE(f.ledger.HasTimers());  // no spinning while it waits
  f.ledger.FinishRetry(*t, true);
  CHECK(f.out.Take() == std::vector<std::string>{"ack 2 1"});
  f.ledger.CloseDue();
  CHECK(f.out.Take() == std::vector<std::string>{"close 2"});
}

TEST_CASE("ledger: after a reconnect a retry ticket is void: nothing is sent on the new channel") {
  RetryFixture f;
  std::optional<ConsumerLedger::RetryTicket> t = f.ledger.TakeForRetry(1, 1);
  REQUIRE(t.has_value());
  f.ledger.Detach();
  f.ledger.Attach(&f.out, 2047);
  f.out.Take();
  f.ledger.FinishRetry(*t, true);
  f.ledger.FlushAcks();
  CHECK(f.out.Take().empty());
}

}  // namespace
}  // namespace mqs::amqp
