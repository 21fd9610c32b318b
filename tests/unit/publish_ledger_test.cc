// PublishLedger: the publisher's bookkeeping driven alone, with a fake sink.
// Every path, including those only a broker fault reaches: multiple
// confirms, nacks of republished copies, returns, deadlines, channel errors
// (probe mode), connection loss, refusal on resend.
#include "amqp/publish_ledger.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using mqs::amqp::PublishJob;
using mqs::amqp::PublishLedger;
using mqsidecar::v1::PublishResult;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Answer {
  PublishResult result;
  absl::StatusCode code;
};

// Records every answer by message_id; a second answer for one id fails.
struct Answers {
  std::map<std::string, Answer> by_id;
  int duplicates = 0;
  PublishResult::Status status(const std::string& id) const {
    auto it = by_id.find(id);
    return it == by_id.end() ? static_cast<PublishResult::Status>(-1) : it->second.result.status();
  }
  absl::StatusCode code(const std::string& id) const { return by_id.at(id).code; }
  std::string error(const std::string& id) const { return by_id.at(id).result.error(); }
};

// A sink that records what was sent (message_id, marker) and can refuse.
struct FakeSink : mqs::amqp::PublishSink {
  struct Sent {
    std::string id;
    bool republished;
  };
  std::vector<Sent> sent;
  std::vector<std::string> refuse;  // ids whose Add fails
  bool dead = false;
  int writes = 0;
  absl::Status Add(const PublishJob& job) override {
    for (const auto& r : refuse) {
      if (r == job.request.message_id()) return absl::InvalidArgumentError("frame too large");
    }
    sent.push_back({job.request.message_id(), job.sent_before});
    return absl::OkStatus();
  }
  bool Write(bool all) override {
    if (all) ++writes;
    return !dead;
  }
  std::vector<std::string> ids() const {
    std::vector<std::string> out;
    for (const auto& s : sent) out.push_back(s.id);
    return out;
  }
};

struct Fixture {
  explicit Fixture(bool republish = true) : ledger(republish) {}
  PublishLedger ledger;
  Answers answers;
  FakeSink sink;
  Clock::time_point now = Clock::now();

  PublishJob Job(const std::string& id, Clock::duration wait = 10s) {
    PublishJob job;
    job.request.set_message_id(id);
    job.request.set_routing_key("rk");
    job.exchange = "ex";
    job.deadline = now + wait;
    job.done = [this, id](PublishResult&& r, absl::StatusCode code) {
      if (answers.by_id.count(id) != 0) ++answers.duplicates;
      answers.by_id[id] = Answer{std::move(r), code};
    };
    return job;
  }
  void Enqueue(std::initializer_list<std::string> ids, Clock::duration wait = 10s) {
    for (const auto& id : ids) ledger.Enqueue(Job(id, wait));
  }
  void Send() { ledger.Send(now, sink); }
};

constexpr auto kAck = PublishResult::CONFIRMED;
constexpr auto kNack = PublishResult::REJECTED;

}  // namespace

TEST_CASE("ledger: tags follow the send order, single and multiple acks confirm") {
  Fixture f;
  f.Enqueue({"a", "b", "c", "d"});
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"a", "b", "c", "d"});
  CHECK(f.ledger.first_tag() == 1);
  CHECK(f.ledger.next_tag() == 5);
  CHECK(f.ledger.unsettled() == 4);
  // Out of order single ack: only c.
  CHECK(f.ledger.Settle(3, false, kAck));
  CHECK(f.answers.status("c") == PublishResult::CONFIRMED);
  CHECK(f.answers.by_id.size() == 1);
  CHECK(f.ledger.first_tag() == 1);  // a is still pending at the front
  // multiple up to 2: a and b, not c again.
  CHECK(f.ledger.Settle(2, true, kAck));
  CHECK(f.answers.status("a") == PublishResult::CONFIRMED);
  CHECK(f.answers.status("b") == PublishResult::CONFIRMED);
  CHECK(f.ledger.first_tag() == 4);  // a, b, c popped
  CHECK(f.ledger.pending() == 1);
  CHECK(f.ledger.Settle(4, true, kAck));
  CHECK(f.answers.by_id.size() == 4);
  CHECK(f.answers.duplicates == 0);
  CHECK(f.ledger.Drained());
}

TEST_CASE("ledger: unknown and already settled tags change nothing") {
  Fixture f;
  f.Enqueue({"a", "b"});
  f.Send();
  CHECK_FALSE(f.ledger.Settle(0, false, kAck));
  CHECK_FALSE(f.ledger.Settle(3, false, kAck));
  CHECK_FALSE(f.ledger.Settle(99, true, kAck));
  CHECK(f.answers.by_id.empty());
  CHECK(f.ledger.Settle(1, false, kAck));
  CHECK_FALSE(f.ledger.Settle(1, false, kNack));  // popped: unknown now
  CHECK(f.answers.status("a") == PublishResult::CONFIRMED);
  CHECK(f.answers.duplicates == 0);
}

TEST_CASE("ledger: a nack rejects, a nack of a republished copy is UNCONFIRMED") {
  Fixture f;
  f.Enqueue({"a", "b"});
  f.Send();
  f.ledger.Lost("connection lost");  // both back to the queue, sent_before
  f.ledger.ChannelOpened();
  f.Enqueue({"c"});
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"a", "b", "a", "b", "c"});
  CHECK(f.sink.sent[2].republished);
  CHECK(f.sink.sent[3].republished);
  CHECK_FALSE(f.sink.sent[4].republished);
  CHECK(f.ledger.Settle(3, true, kNack));
  CHECK(f.answers.status("a") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.status("b") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.status("c") == PublishResult::REJECTED);
}

TEST_CASE("ledger: a return then its ack is UNROUTABLE, returns match in publish order") {
  Fixture f;
  f.Enqueue({"a", "b"});
  f.Send();
  CHECK(f.ledger.Return("ex", "rk", "a", "returned: 312 NO_ROUTE"));
  CHECK_FALSE(f.ledger.Return("ex", "rk", "a", "x"));     // a is returned already
  CHECK_FALSE(f.ledger.Return("ex", "other", "b", "x"));  // no such route
  CHECK_FALSE(f.ledger.Return("ex", "rk", "zz", "x"));
  CHECK(f.ledger.Settle(2, true, kAck));
  CHECK(f.answers.status("a") == PublishResult::UNROUTABLE);
  CHECK(f.answers.error("a") == "returned: 312 NO_ROUTE");
  CHECK(f.answers.status("b") == PublishResult::CONFIRMED);
}

TEST_CASE("ledger: a return marks the earliest matching publish only") {
  Fixture f;
  std::vector<PublishResult::Status> got;
  for (int i = 0; i < 2; ++i) {
    PublishJob job = f.Job("same");
    job.done = [&got](PublishResult&& r, absl::StatusCode) { got.push_back(r.status()); };
    f.ledger.Enqueue(std::move(job));
  }
  f.Send();
  CHECK(f.ledger.Return("ex", "rk", "same", "returned: 312 NO_ROUTE"));
  CHECK(f.ledger.Settle(2, true, kAck));
  CHECK(got ==
        std::vector<PublishResult::Status>{PublishResult::UNROUTABLE, PublishResult::CONFIRMED});
}

TEST_CASE("ledger: a sent publish past its deadline is UNCONFIRMED once, its late ack ignored") {
  Fixture f;
  f.Enqueue({"a"}, 1s);
  f.Enqueue({"b"}, 5s);
  f.Send();
  f.ledger.ExpirePending(f.now + 2s, /*blocked=*/false);
  CHECK(f.answers.status("a") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.by_id.count("b") == 0);
  CHECK_THAT(f.answers.error("a"), Catch::Contains("did not confirm it before the deadline"));
  f.ledger.ExpirePending(f.now + 3s, true);  // not answered twice
  CHECK(f.ledger.Settle(2, true, kAck));
  CHECK(f.answers.status("a") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.status("b") == PublishResult::CONFIRMED);
  CHECK(f.answers.duplicates == 0);
  CHECK(f.ledger.Drained());
}

TEST_CASE("ledger: blocked: the deadline answer names the alarm") {
  Fixture f;
  f.Enqueue({"a"}, 1s);
  f.Send();
  f.ledger.ExpirePending(f.now + 2s, /*blocked=*/true);
  CHECK_THAT(f.answers.error("a"), Catch::Contains("resource alarm"));
}

TEST_CASE(
    "ledger: waiting jobs past their deadline: FAILED not sent, or UNCONFIRMED if sent "
    "before") {
  Fixture f;
  f.Enqueue({"sent"}, 1s);
  f.Send();
  f.ledger.Lost("connection lost");  // "sent" waits again, sent_before
  f.Enqueue({"fresh"}, 1s);
  f.Enqueue({"later"}, 10s);
  f.ledger.ExpireWaiting(f.now + 2s, "the broker is unavailable", absl::StatusCode::kUnavailable);
  CHECK(f.answers.status("sent") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.status("fresh") == PublishResult::FAILED);
  CHECK(f.answers.code("fresh") == absl::StatusCode::kUnavailable);
  CHECK_THAT(f.answers.error("fresh"), Catch::Contains("not sent"));
  CHECK(f.answers.by_id.count("later") == 0);
  CHECK(f.ledger.waiting() == 1);
  // all: shutting down.
  f.ledger.ExpireWaiting(f.now, "mq-sidecar is shutting down", absl::StatusCode::kUnavailable,
                         /*all=*/true);
  CHECK(f.answers.status("later") == PublishResult::FAILED);
  CHECK(f.ledger.Drained());
}

TEST_CASE("ledger: a job is never sent after its deadline") {
  Fixture g;
  g.Enqueue({"late"}, 1s);
  g.Enqueue({"ok"}, 10s);
  g.Enqueue({"sent"}, 1s);
  g.Send();
  g.ledger.Lost("connection lost");  // everything back, sent_before
  g.ledger.ChannelOpened();
  g.sink.sent.clear();
  g.ledger.Send(g.now + 2s, g.sink);
  CHECK(g.sink.ids() == std::vector<std::string>{"ok"});
  CHECK(g.answers.status("late") == PublishResult::UNCONFIRMED);  // sent once before
  CHECK(g.answers.status("sent") == PublishResult::UNCONFIRMED);
  Fixture h;
  h.Enqueue({"never"}, 1s);
  h.ledger.Send(h.now + 2s, h.sink);
  CHECK(h.sink.sent.empty());
  CHECK(h.answers.status("never") == PublishResult::FAILED);
  CHECK(h.answers.code("never") == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(h.answers.error("never"), Catch::Contains("not sent"));
}

TEST_CASE("ledger: connection loss requeues the unsettled in publish order, ahead of newer work") {
  Fixture f;
  f.Enqueue({"a", "b", "c", "d"});
  f.Send();
  CHECK(f.ledger.Settle(2, false, kAck));  // b confirmed
  f.ledger.ExpirePending(f.now, false);    // nothing expired
  f.Enqueue({"e"});                        // newer, not sent yet
  f.ledger.Lost("connection lost");
  CHECK(f.ledger.pending() == 0);
  CHECK(f.ledger.waiting() == 4);
  f.ledger.ChannelOpened();
  f.sink.sent.clear();
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"a", "c", "d", "e"});
  CHECK(f.sink.sent[0].republished);
  CHECK_FALSE(f.sink.sent[3].republished);
  CHECK(f.ledger.first_tag() == 1);
  CHECK(f.ledger.Settle(4, true, kAck));
  CHECK(f.answers.by_id.size() == 5);
  CHECK(f.answers.duplicates == 0);
}

TEST_CASE(
    "ledger: connection loss without republishing answers UNCONFIRMED, answered ones are "
    "dropped") {
  Fixture f(/*republish=*/false);
  f.Enqueue({"a"}, 1s);
  f.Enqueue({"b"});
  f.Send();
  f.ledger.ExpirePending(f.now + 2s, false);  // a answered at its deadline
  f.ledger.Lost("connection lost");
  CHECK(f.answers.status("a") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.status("b") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.duplicates == 0);
  CHECK(f.ledger.Drained());
  // Republishing, but stopping: the same.
  Fixture g;
  g.Enqueue({"c"});
  g.Send();
  g.ledger.Lost("shutting down", /*stopping=*/true);
  CHECK(g.answers.status("c") == PublishResult::UNCONFIRMED);
  CHECK(g.ledger.Drained());
}

TEST_CASE("ledger: a publish the broker refuses alone in flight fails alone, never resent") {
  Fixture f;
  f.Enqueue({"bad"});
  f.Send();
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED - invalid CC header");
  CHECK(f.answers.status("bad") == PublishResult::FAILED);
  CHECK(f.answers.code("bad") == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(f.answers.error("bad"), Catch::Contains("PRECONDITION_FAILED - invalid CC header"));
  CHECK(f.ledger.Drained());
  // Access refused and not found keep their codes.
  Fixture g;
  g.Enqueue({"x"});
  g.Send();
  g.ledger.ChannelClosed(403, "ACCESS_REFUSED");
  CHECK(g.answers.code("x") == absl::StatusCode::kPermissionDenied);
}

TEST_CASE(
    "ledger: refused alone after a connection loss: UNCONFIRMED (the first send may be "
    "queued)") {
  Fixture f;
  f.Enqueue({"m"});
  f.Send();
  f.ledger.Lost("connection lost");
  f.ledger.ChannelOpened();
  f.Send();
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED");
  CHECK(f.answers.status("m") == PublishResult::UNCONFIRMED);
  CHECK(f.ledger.Drained());
}

TEST_CASE(
    "ledger: channel error with several in flight: probe mode resends one at a time, the "
    "refused one fails alone, then batching resumes") {
  Fixture f;
  f.Enqueue({"a", "bad", "c"});
  f.Send();
  CHECK(f.ledger.Settle(1, false, kAck));  // a confirmed before the close
  f.Enqueue({"d"});                        // arrives meanwhile: sent in the batch too
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"a", "bad", "c", "d"});
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED - bad header");
  CHECK(f.answers.by_id.size() == 1);  // nobody else answered yet
  f.ledger.ChannelOpened();
  f.Enqueue({"e", "f"});  // new work waits behind the probes

  // Probe 1: "bad" alone (it was first in flight after the confirmed a).
  f.sink.sent.clear();
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"bad"});
  CHECK(f.sink.sent[0].republished);
  CHECK(f.ledger.probing());
  f.Send();  // nothing more while it is in flight
  CHECK(f.sink.sent.size() == 1);
  // The broker refuses it again, alone: it fails alone, with the reply.
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED - bad header");
  CHECK(f.answers.status("bad") == PublishResult::FAILED);
  CHECK(f.answers.code("bad") == absl::StatusCode::kInvalidArgument);
  f.ledger.ChannelOpened();

  // Probe 2 and 3: c, then d, each once the previous is confirmed.
  f.sink.sent.clear();
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"c"});
  CHECK(f.ledger.Settle(1, false, kAck));
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"c", "d"});
  CHECK(f.ledger.probing());  // d, the last probe, is in flight
  f.Send();
  CHECK(f.sink.sent.size() == 2);
  CHECK(f.ledger.Settle(2, false, kAck));
  CHECK_FALSE(f.ledger.probing());
  // Batching resumes: e and f together.
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"c", "d", "e", "f"});
  CHECK(f.ledger.Settle(4, true, kAck));
  for (const char* id : {"a", "c", "d", "e", "f"}) {
    INFO(id);
    CHECK(f.answers.status(id) == PublishResult::CONFIRMED);
  }
  CHECK(f.answers.duplicates == 0);
  CHECK(f.ledger.Drained());
}

TEST_CASE(
    "ledger: a probe whose earlier send was lost with a connection is UNCONFIRMED when "
    "refused") {
  Fixture f;
  f.Enqueue({"x", "y"});
  f.Send();
  f.ledger.Lost("connection lost");  // x, y may be queued
  f.ledger.ChannelOpened();
  f.Send();
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED");  // both in flight: probe
  f.ledger.ChannelOpened();
  f.Send();
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED");  // x alone
  CHECK(f.answers.status("x") == PublishResult::UNCONFIRMED);
  CHECK_THAT(f.answers.error("x"), Catch::Contains("may be queued"));
  f.ledger.ChannelOpened();
  f.Send();
  CHECK(f.ledger.Settle(1, false, kAck));
  CHECK(f.answers.status("y") == PublishResult::CONFIRMED);
}

TEST_CASE("ledger: a message refused on every send stalls nothing: the rest flows") {
  // The stall of issue 11: before, every resend of the batch closed the
  // channel again until the deadlines. Now the refused one leaves after at
  // most two channel errors, whatever the batch size.
  Fixture f;
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    ids.push_back("m" + std::to_string(i));
    f.ledger.Enqueue(f.Job(ids.back()));
  }
  f.ledger.Enqueue(f.Job("poison"));
  for (int i = 50; i < 100; ++i) {
    ids.push_back("m" + std::to_string(i));
    f.ledger.Enqueue(f.Job(ids.back()));
  }
  int channel_errors = 0;
  for (int round = 0; round < 1000 && !f.ledger.Drained(); ++round) {
    f.sink.sent.clear();
    f.Send();
    // The broker: acks in order up to the poison, which closes the channel.
    uint64_t tag = f.ledger.first_tag();
    for (const auto& s : f.sink.sent) {
      if (s.id == "poison") {
        f.ledger.ChannelClosed(406, "PRECONDITION_FAILED");
        f.ledger.ChannelOpened();
        ++channel_errors;
        break;
      }
      REQUIRE(f.ledger.Settle(tag++, false, kAck));
    }
  }
  CHECK(f.ledger.Drained());
  CHECK(channel_errors <= 2);
  CHECK(f.answers.status("poison") == PublishResult::FAILED);
  for (const auto& id : ids) {
    INFO(id);
    CHECK(f.answers.status(id) == PublishResult::CONFIRMED);
  }
  CHECK(f.answers.duplicates == 0);
}

TEST_CASE(
    "ledger: a channel error with nothing in flight, or only answered ones, answers "
    "nothing twice") {
  Fixture f;
  f.ledger.ChannelClosed(404, "NOT_FOUND");
  CHECK(f.ledger.Drained());
  f.ledger.ChannelOpened();
  f.Enqueue({"a"}, 1s);
  f.Send();
  f.ledger.ExpirePending(f.now + 2s, false);
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED");
  CHECK(f.answers.status("a") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.duplicates == 0);
  CHECK(f.ledger.Drained());
}

TEST_CASE(
    "ledger: channel error without republishing answers the several in flight "
    "UNCONFIRMED") {
  Fixture f(/*republish=*/false);
  f.Enqueue({"a", "b"});
  f.Send();
  f.ledger.ChannelClosed(406, "PRECONDITION_FAILED");
  CHECK(f.answers.status("a") == PublishResult::UNCONFIRMED);
  CHECK(f.answers.status("b") == PublishResult::UNCONFIRMED);
  CHECK(f.ledger.Drained());
}

TEST_CASE(
    "ledger: a job that cannot be encoded: FAILED if never sent, UNCONFIRMED if sent "
    "before") {
  Fixture f;
  f.sink.refuse = {"big"};
  f.Enqueue({"big", "ok"});
  f.Send();
  CHECK(f.answers.status("big") == PublishResult::FAILED);
  CHECK(f.answers.code("big") == absl::StatusCode::kInvalidArgument);
  CHECK(f.sink.ids() == std::vector<std::string>{"ok"});
  CHECK(f.ledger.next_tag() == 2);  // no tag spent on the refused one

  // Sent once, then refused on resend (the marker made it too large, or the
  // next node has a smaller frame_max): the first copy may be queued.
  Fixture g;
  g.Enqueue({"edge"});
  g.Send();
  g.ledger.Lost("connection lost");
  g.ledger.ChannelOpened();
  g.sink.refuse = {"edge"};
  g.Send();
  CHECK(g.answers.status("edge") == PublishResult::UNCONFIRMED);
  CHECK_THAT(g.answers.error("edge"), Catch::Contains("may be queued"));
  CHECK(g.ledger.Drained());
}

TEST_CASE("ledger: a failed write stops sending, what was added stays pending for the loss") {
  Fixture f;
  f.sink.dead = true;
  f.Enqueue({"a", "b"});
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"a"});  // stopped after the first write failed
  CHECK(f.ledger.pending() == 1);
  CHECK(f.ledger.waiting() == 1);
  f.ledger.Lost("connection lost");
  CHECK(f.ledger.waiting() == 2);
  f.ledger.ChannelOpened();
  f.sink.dead = false;
  f.sink.sent.clear();
  f.Send();
  CHECK(f.sink.ids() == std::vector<std::string>{"a", "b"});
  CHECK(f.sink.sent[0].republished);
  CHECK_FALSE(f.sink.sent[1].republished);
}

TEST_CASE("ledger: quiet once everything in flight is settled or answered") {
  Fixture f;
  CHECK(f.ledger.Quiet());
  f.Enqueue({"a"}, 1s);
  f.Enqueue({"b"});
  f.Send();
  CHECK_FALSE(f.ledger.Quiet());
  CHECK(f.ledger.Settle(2, false, kNack));
  CHECK_FALSE(f.ledger.Quiet());
  f.ledger.ExpirePending(f.now + 2s, false);
  CHECK(f.ledger.Quiet());
  CHECK(f.answers.status("b") == PublishResult::REJECTED);
}

TEST_CASE("ledger: a channel opened with publishes still pending handles them as a loss") {
  Fixture f;
  f.Enqueue({"a", "b"});
  f.Send();
  CHECK(f.ledger.Settle(1, false, kAck));
  f.ledger.ChannelOpened();  // without Lost(): b goes back, marked
  CHECK(f.ledger.first_tag() == 1);
  CHECK(f.ledger.waiting() == 1);
  f.sink.sent.clear();
  f.Send();
  REQUIRE(f.sink.sent.size() == 1);
  CHECK(f.sink.sent[0].id == "b");
  CHECK(f.sink.sent[0].republished);
  CHECK(f.ledger.Settle(1, false, kAck));
  CHECK(f.answers.status("b") == PublishResult::CONFIRMED);
  CHECK(f.answers.duplicates == 0);
}

TEST_CASE(
    "ledger: only a delayed-retry copy, waiting or unsettled and unanswered, awaits an "
    "internal answer") {
  Fixture f;
  CHECK_FALSE(f.ledger.AwaitsInternalAnswer());
  f.Enqueue({"client"});
  CHECK_FALSE(f.ledger.AwaitsInternalAnswer());  // a client's publish
  PublishJob copy = f.Job("copy", 1s);
  copy.copy = std::make_shared<mqs::amqp::CopyOf>();
  f.ledger.Enqueue(std::move(copy));
  CHECK(f.ledger.AwaitsInternalAnswer());  // waiting
  f.Send();
  CHECK(f.ledger.AwaitsInternalAnswer());  // in flight, unsettled
  CHECK(f.ledger.Settle(1, false, kAck));
  CHECK(f.ledger.AwaitsInternalAnswer());
  f.ledger.ExpirePending(f.now + 2s, false);  // answered UNCONFIRMED at its deadline
  CHECK(f.answers.status("copy") == PublishResult::UNCONFIRMED);
  CHECK_FALSE(f.ledger.AwaitsInternalAnswer());
  CHECK_FALSE(f.ledger.Drained());  // still pending until settled
}
