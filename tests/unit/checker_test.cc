// The fault tests' history checker (tests/integration/checker.h) on
// hand-made histories: each judgement on a history that must pass and on one
// that must fail it.
#include "checker.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

namespace mqs::it {
namespace {

namespace pb = mqsidecar::v1;

pb::PublishResult Result(const std::string& id, pb::PublishResult::Status status) {
  pb::PublishResult r;
  r.set_message_id(id);
  r.set_status(status);
  return r;
}

// Sent and answered.
void Publish(History& h, const std::string& id,
             pb::PublishResult::Status status = pb::PublishResult::CONFIRMED) {
  h.Sent(id);
  h.Result(Result(id, status));
}

pb::Delivery Copy(const std::string& id, uint64_t delivery_id, bool redelivered = false,
                  uint32_t delivery_count = 0) {
  pb::Delivery d;
  d.set_message_id(id);
  d.set_delivery_id(delivery_id);
  d.set_redelivered(redelivered);
  d.set_delivery_count(delivery_count);
  return d;
}

TEST_CASE("checker: a clean run passes and is counted") {
  History h;
  for (const char* id : {"a", "b", "c"}) Publish(h, id);
  CHECK(h.ConfirmedUndelivered() == 3);
  h.Delivered("s1", Copy("a", 1));
  h.Delivered("s2", Copy("b", 1));
  h.Delivered("s1", Copy("c", 2));
  CHECK(h.ConfirmedUndelivered() == 0);
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.Violations() == "");
  CHECK(r.sent == 3);
  CHECK(r.confirmed == 3);
  CHECK(r.deliveries == 3);
  CHECK(r.handled == 3);
  CHECK(r.delivered_ids == 3);
  CHECK(r.lost == 0);
  CHECK(r.duplicated == 0);
  CHECK(r.extra_copies == 0);
}

TEST_CASE("checker: a confirmed message never handled is lost, also when it was only received") {
  History h;
  Publish(h, "kept");
  Publish(h, "never-delivered");
  Publish(h, "received-not-handled");
  h.Delivered("s1", Copy("kept", 1));
  h.Received("s2", Copy("received-not-handled", 1));  // its consumer died before the ack
  CHECK(h.ConfirmedUndelivered() == 2);
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.lost == 2);
  CHECK(r.lost_examples.size() == 2);
  CHECK(r.deliveries == 2);
  CHECK(r.handled == 1);
}

TEST_CASE("checker: a marked duplicate (redelivered or delivery_count) is counted and passes") {
  History h;
  Publish(h, "a");
  Publish(h, "b");
  h.Delivered("s1", Copy("a", 1));
  h.Delivered("s2", Copy("a", 1, /*redelivered=*/true));
  h.Delivered("s1", Copy("b", 2));
  h.Delivered("s1", Copy("b", 3, false, /*delivery_count=*/1));
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.Violations() == "");
  CHECK(r.duplicated == 2);
  CHECK(r.extra_copies == 2);
  CHECK(r.extra_visible == 2);
  CHECK(r.invisible == 0);
}

TEST_CASE("checker: an unmarked copy after a handled one fails, in the order consumers saw them") {
  SECTION("marked copy handled first, unmarked copy after: fails") {
    History h;
    Publish(h, "pay-1");
    h.Delivered("s1", Copy("pay-1", 7, /*redelivered=*/true));  // e.g. a republished copy
    h.Delivered("s2", Copy("pay-1", 3));                        // the unmarked one, later
    const auto r = h.Check();
    INFO(r.Summary());
    CHECK_FALSE(r.ok());
    CHECK(r.invisible == 1);
    CHECK(r.unmarked_after_handled == 1);
    CHECK(r.unmarked_concurrent == 0);
    REQUIRE(r.violation_examples.size() == 1);
    CHECK(r.violation_examples[0].find("after the copy handled by s1") != std::string::npos);
  }
  SECTION("the same two copies, unmarked first: passes") {
    History h;
    Publish(h, "pay-1");
    h.Delivered("s2", Copy("pay-1", 3));
    h.Delivered("s1", Copy("pay-1", 7, /*redelivered=*/true));
    const auto r = h.Check();
    INFO(r.Summary());
    CHECK(r.Violations() == "");
    CHECK(r.extra_visible == 1);
  }
  SECTION("two unmarked copies to one consumer: fails") {
    History h;
    Publish(h, "pay-2");
    h.Delivered("s1", Copy("pay-2", 1));
    h.Delivered("s1", Copy("pay-2", 2));
    const auto r = h.Check();
    INFO(r.Summary());
    CHECK_FALSE(r.ok());
    CHECK(r.unmarked_after_handled == 1);
  }
}

TEST_CASE("checker: concurrent copies in two consumers") {
  SECTION("an unmarked copy received while another is unhandled fails") {
    History h;
    Publish(h, "pay-3");
    h.Received("s1", Copy("pay-3", 1, /*redelivered=*/true));
    h.Received("s2", Copy("pay-3", 1));
    h.Handled("s1", Copy("pay-3", 1, true));
    h.Handled("s2", Copy("pay-3", 1));
    const auto r = h.Check();
    INFO(r.Summary());
    CHECK_FALSE(r.ok());
    CHECK(r.unmarked_concurrent == 1);
    CHECK(r.unmarked_after_handled == 0);
    REQUIRE(r.violation_examples.size() == 1);
    CHECK(r.violation_examples[0].find("while the copy to s1 was unhandled") != std::string::npos);
  }
  SECTION("a marked copy beside an unhandled one passes and is counted") {
    History h;
    Publish(h, "pay-4");
    h.Received("s1", Copy("pay-4", 1));
    h.Received("s2", Copy("pay-4", 9, /*redelivered=*/true));
    h.Handled("s2", Copy("pay-4", 9, true));
    h.Handled("s1", Copy("pay-4", 1));
    const auto r = h.Check();
    INFO(r.Summary());
    CHECK(r.Violations() == "");
    CHECK(r.marked_concurrent == 1);
    CHECK(r.handled == 2);
  }
  SECTION("the timeline, not each consumer alone, decides: s2's copy came after s1 handled") {
    History h;
    Publish(h, "pay-5");
    h.Received("s2", Copy("pay-5", 4, /*redelivered=*/true));
    h.Handled("s2", Copy("pay-5", 4, true));
    h.Received("s1", Copy("pay-5", 2));  // s1's first delivery, but not the first copy
    h.Handled("s1", Copy("pay-5", 2));
    const auto r = h.Check();
    INFO(r.Summary());
    CHECK_FALSE(r.ok());
    CHECK(r.unmarked_after_handled == 1);
  }
}

TEST_CASE("checker: an unmarked copy explained by a declared retry is accepted and reported") {
  History h;
  h.Sent("r1");
  h.Result(Result("r1", pb::PublishResult::UNCONFIRMED));
  h.Retried("r1", "client retry after UNCONFIRMED");
  h.Sent("r1");
  h.Result(Result("r1", pb::PublishResult::CONFIRMED));
  h.Delivered("s1", Copy("r1", 1));
  h.Delivered("s2", Copy("r1", 1));
  auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.Violations() == "");
  CHECK(r.accepted == 1);
  CHECK(r.retries == 1);
  CHECK(r.answered_twice == 0);  // two attempts, two results
  CHECK(r.accepted_by_cause.at("client retry after UNCONFIRMED") == 1);
  REQUIRE(r.accepted_examples.size() == 1);
  CHECK(r.accepted_examples[0].find("client retry after UNCONFIRMED") != std::string::npos);
  CHECK(r.Summary().find("accepted: 1 x client retry after UNCONFIRMED") != std::string::npos);

  // A third unmarked copy: one declaration explains one copy, not two.
  h.Delivered("s1", Copy("r1", 2));
  r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.accepted == 1);
  CHECK(r.invisible == 1);
}

// A wall clock the test moves by hand: History stamps each delivery with it.
struct FakeClock {
  History::WallClock::time_point now{std::chrono::seconds(1000)};
  void Advance(int seconds) { now += std::chrono::seconds(seconds); }
  History::WallClock::time_point At(int seconds) const {
    return History::WallClock::time_point{std::chrono::seconds(1000 + seconds)};
  }
};

TEST_CASE("checker: an unmarked copy after a declared broker restart is accepted, per cause") {
  FakeClock clock;  // t = 0
  History h([&clock] { return clock.now; });
  Publish(h, "a");
  Publish(h, "b");
  Publish(h, "c");
  h.Delivered("s1", Copy("a", 1));  // t = 0: before the restart
  h.Received("s1", Copy("b", 2));   // held unacked over it
  clock.Advance(10);
  h.BrokerRestart(clock.At(5), clock.At(8));  // declared: t = 5 .. 8
  h.Handled("s1", Copy("b", 2));
  h.Delivered("s1", Copy("a", 3));  // t = 10: unmarked, after the restart
  h.Delivered("s2", Copy("b", 1));
  h.Delivered("s2", Copy("c", 2));  // first copy after the restart: nothing to explain
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.Violations() == "");
  CHECK(r.broker_restarts == 1);
  CHECK(r.extra_copies == 2);
  CHECK(r.accepted == 2);
  CHECK(r.invisible == 0);
  CHECK(r.accepted_by_cause.at(History::kBrokerRestartCause) == 2);
  REQUIRE(r.restart_examples.size() == 2);
  CHECK(r.restart_examples[0].find("a: copy 2 (unmarked) to s1 after the copy handled by s1 "
                                   "(previous copy unmarked, 10000 ms before; 1 declared broker "
                                   "restart(s) between them)") != std::string::npos);
  CHECK(r.restart_examples[0].find("broker restart: the broker does not") != std::string::npos);
  CHECK(r.Summary().find("broker restarts declared=1") != std::string::npos);
}

TEST_CASE("checker: a broker restart explains no unmarked copy it does not lie between") {
  FakeClock clock;
  History h([&clock] { return clock.now; });
  for (const char* id : {"before", "after", "twice", "stopping"}) Publish(h, id);
  h.BrokerRestart(clock.At(5), clock.At(8));
  h.Delivered("s1", Copy("stopping", 9));  // t = 0
  clock.Advance(6);
  h.Delivered("s2", Copy("stopping", 9));  // t = 6: the broker was still stopping, not restarted
  clock.Advance(-6);
  h.Delivered("s1", Copy("before", 1));  // t = 0: both copies before the restart
  h.Delivered("s2", Copy("before", 1));
  clock.Advance(10);
  h.Delivered("s1", Copy("after", 2));  // t = 10: both copies after it
  h.Delivered("s2", Copy("after", 2));
  clock.Advance(-10);
  h.Delivered("s1", Copy("twice", 3));  // t = 0
  clock.Advance(10);
  h.Delivered("s1", Copy("twice", 4));  // t = 10: the restart explains this one...
  h.Delivered("s2", Copy("twice", 3));  // ...not a third one with no restart before it
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.extra_copies == 5);
  CHECK(r.accepted == 1);
  CHECK(r.invisible == 4);
  CHECK(r.unmarked_after_handled == 4);
}

TEST_CASE(
    "checker: a copy received while the broker was stopping, delivered again unmarked after the "
    "restart, is accounted for by it") {
  // stop_app takes seconds to drop connections; deliveries flow meanwhile and
  // an ack the stopping broker does not apply brings the message back.
  FakeClock clock;
  History h([&clock] { return clock.now; });
  Publish(h, "a");
  h.BrokerRestart(clock.At(5), clock.At(8));
  clock.Advance(6);
  h.Delivered("s1", Copy("a", 1));  // t = 6: the broker was stopping
  clock.Advance(4);
  h.Delivered("s2", Copy("a", 1));  // t = 10: after it answered again
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.Violations() == "");
  CHECK(r.accepted_by_cause.at(History::kBrokerRestartCause) == 1);
}

TEST_CASE(
    "checker: a declared node failover explains unmarked copies received inside it, no "
    "others") {
  FakeClock clock;
  History h([&clock] { return clock.now; });
  for (const char* id : {"inside", "before", "after"}) Publish(h, id);
  h.NodeFailover(clock.At(5), clock.At(20));
  h.Delivered("s1", Copy("before", 1));  // t = 0: before the node was stopped
  clock.Advance(6);
  h.Delivered("s1", Copy("inside", 2, /*redelivered=*/true));  // t = 6
  h.Delivered("s2", Copy("inside", 3));                        // unmarked, inside: accounted for
  h.Delivered("s2", Copy("before", 4));  // its first copy came before the stop: a violation
  h.Delivered("s1", Copy("after", 5));
  clock.Advance(20);
  h.Delivered("s2", Copy("after", 6));  // t = 26: after the cluster settled: a violation
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.accepted_by_cause.at(History::kNodeFailoverCause) == 1);
  CHECK(r.invisible == 2);
}

pb::Delivery Republished(const std::string& id, uint64_t delivery_id) {
  pb::Delivery d = Copy(id, delivery_id, /*redelivered=*/true);
  d.set_republished(true);
  return d;
}

TEST_CASE(
    "checker: an original queued after its republished copy is accounted for, once per "
    "republished copy") {
  History h;
  for (const char* id : {"late", "early", "twice"}) Publish(h, id);
  h.Delivered("s1", Republished("late", 1));   // the copy sent again came first...
  h.Delivered("s2", Copy("late", 1));          // ...then the original: accepted
  h.Delivered("s1", Copy("early", 2));         // the original first...
  h.Delivered("s2", Republished("early", 2));  // ...then its marked copy
  h.Delivered("s1", Copy("early", 3));         // a third, unmarked: unexplained
  h.Delivered("s1", Republished("twice", 4));
  h.Delivered("s2", Copy("twice", 3));  // accepted
  h.Delivered("s2", Copy("twice", 4));  // one republished copy explains one original only
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.accepted_by_cause.at(History::kOriginalAfterRepublishedCause) == 2);
  CHECK(r.invisible == 2);
  CHECK(r.Violations().find("first violation: early: copy 3 (unmarked)") != std::string::npos);
}

TEST_CASE("checker: without a declared restart, an unmarked copy after one still fails") {
  FakeClock clock;
  History h([&clock] { return clock.now; });
  Publish(h, "a");
  h.Delivered("s1", Copy("a", 1));
  clock.Advance(10);
  h.Delivered("s2", Copy("a", 1));
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.invisible == 1);
  CHECK(r.broker_restarts == 0);
}

TEST_CASE("checker: a declared retry is used before a broker restart explains a copy") {
  FakeClock clock;
  History h([&clock] { return clock.now; });
  Publish(h, "a", pb::PublishResult::UNCONFIRMED);
  h.Retried("a", "client retry after UNCONFIRMED");
  Publish(h, "a");
  h.Delivered("s1", Copy("a", 1));
  clock.Advance(10);
  h.BrokerRestart(clock.At(5), clock.At(8));
  h.Delivered("s1", Copy("a", 2));  // the retry's copy
  h.Delivered("s2", Copy("a", 1));  // no restart since the previous copy: unexplained
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.accepted == 1);
  CHECK(r.accepted_by_cause.at("client retry after UNCONFIRMED") == 1);
  CHECK(r.accepted_by_cause.count(History::kBrokerRestartCause) == 0);
  CHECK(r.invisible == 1);
}

TEST_CASE("checker: a declared retry of a confirmed message must still be delivered") {
  History h;
  h.Sent("k1");
  h.Unknown("k1");  // the stream broke: outcome unknown
  h.Retried("k1", "stream broken by a SIGKILLed sidecar");
  h.Sent("k1");
  h.Result(Result("k1", pb::PublishResult::CONFIRMED));
  CHECK(h.ConfirmedUndelivered() == 1);
  const auto r = h.Check();
  CHECK(r.confirmed == 1);
  CHECK(r.lost == 1);
  CHECK_FALSE(r.ok());
}

TEST_CASE("checker: delivered although never sent, refused or unanswered fails") {
  const auto status = GENERATE(pb::PublishResult::FAILED, pb::PublishResult::UNROUTABLE,
                               pb::PublishResult::REJECTED);
  History h;
  Publish(h, "x", status);
  h.Delivered("s1", Copy("x", 1));
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.never_sent_delivered == 1);

  History u;  // written, never answered
  u.Sent("y");
  u.Delivered("s1", Copy("y", 1));
  const auto ru = u.Check();
  CHECK(ru.unanswered == 1);
  CHECK(ru.never_sent_delivered == 1);
  CHECK_FALSE(ru.ok());

  History f;  // unary publish failed with a gRPC error
  f.Sent("z");
  f.Failed("z");
  CHECK(f.Check().ok());
  CHECK(f.Check().failed == 1);
  f.Delivered("s1", Copy("z", 1));
  CHECK_FALSE(f.Check().ok());
}

TEST_CASE("checker: UNCONFIRMED may or may not be delivered") {
  History h;
  Publish(h, "u1", pb::PublishResult::UNCONFIRMED);
  Publish(h, "u2", pb::PublishResult::UNCONFIRMED);
  h.Sent("u3");
  h.Unknown("u3");
  h.Delivered("s1", Copy("u1", 1));
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK(r.Violations() == "");
  CHECK(r.unconfirmed == 3);
  CHECK(r.recovered == 1);
  CHECK(h.ConfirmedUndelivered() == 0);
}

TEST_CASE("checker: a delivery never published is unexpected") {
  History h;
  Publish(h, "a");
  h.Delivered("s1", Copy("a", 1));
  h.Delivered("s1", Copy("stranger", 2));
  const auto r = h.Check();
  CHECK_FALSE(r.ok());
  CHECK(r.unexpected == 1);
}

TEST_CASE("checker: more results than publishes fails") {
  History h;
  Publish(h, "a");
  h.Result(Result("a", pb::PublishResult::CONFIRMED));
  h.Delivered("s1", Copy("a", 1));
  const auto r = h.Check();
  CHECK_FALSE(r.ok());
  CHECK(r.answered_twice == 1);
}

TEST_CASE("checker: a delivery handled that was never received fails") {
  History h;
  Publish(h, "a");
  h.Received("s1", Copy("a", 1));
  h.Handled("s2", Copy("a", 1));  // wrong consumer: not the delivery s1 received
  const auto r = h.Check();
  INFO(r.Summary());
  CHECK_FALSE(r.ok());
  CHECK(r.handled_unreceived == 1);
  CHECK(r.lost == 1);
}

}  // namespace
}  // namespace mqs::it
