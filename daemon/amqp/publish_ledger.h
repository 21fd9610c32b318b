// PublishLedger: the publisher's bookkeeping, without a socket.
//
// Publishes wait (waiting_), are handed to a PublishSink in order, and are
// then pending (pending_[i] has delivery tag first_tag_ + i) until the broker
// settles them (basic.ack / basic.nack, `multiple` included), a basic.return
// marks them unroutable, their channel or connection is lost, or their
// deadline passes. Every PublishJob ends in exactly one call of its `done`.
// The Publisher owns the socket and feeds this class what the broker says;
// the unit tests drive it alone (tests/unit/publish_ledger_test.cc).
//
// Channel errors. RabbitMQ closes a channel (e.g. 406 PRECONDITION_FAILED)
// when one publish is refused, and drops the publishes that follow it on
// that channel; those before it were handled normally. The close does not
// say which publish it was. So:
//  - one unsettled publish in flight: it is the one. It is answered alone,
//    never sent again: FAILED (with the broker's reply) if no earlier send of
//    it can be queued; UNCONFIRMED if an earlier send, lost with its
//    connection, may be.
//  - several in flight: they are resent (marked republished: the ones before
//    the refused one may be queued) one at a time (probe mode): the next is
//    sent only when nothing is in flight. The refused one then closes the
//    fresh channel alone and is answered as above; its earlier send, on the
//    channel it closed, is taken to be refused too (the refusal depends on
//    the message: the same publish, on a channel with the same topology
//    declared again). Normal batching resumes after the last of them.
//  A message that makes the broker close the channel thus fails alone and
//  is never retried into a stall.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "amqp/properties.h"
#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::amqp {

// PublishDone receives the result and, for FAILED, the most specific code of
// why (UNAVAILABLE: no connection; RESOURCE_EXHAUSTED: broker alarm;
// INVALID_ARGUMENT: the broker or the frame size refuses this message).
using PublishDone = std::function<void(mqsidecar::v1::PublishResult&&, absl::StatusCode)>;

// CopyOf: a message the daemon publishes again as it came (a delayed retry's
// copy): the captured properties and body, with these headers replaced.
// request.routing_key and request.message_id still name it (returns match
// on them); request.payload and the other request fields are unused.
struct CopyOf {
  std::shared_ptr<const CapturedMessage> message;
  std::vector<CopyProperties::Header> headers;
};

struct PublishJob {
  mqsidecar::v1::PublishRequest request;  // message_id already set
  std::string exchange;
  // Until when the job may wait to be sent or confirmed; it is never sent
  // after it.
  std::chrono::steady_clock::time_point deadline;
  PublishDone done;
  // An earlier send may be queued (its confirm was lost with its connection
  // or channel): resent copies carry the republished marker, and a refusal of
  // a later copy answers UNCONFIRMED, not FAILED.
  bool sent_before = false;
  // Every earlier send was in flight when the broker closed its channel
  // (with other publishes): if this one is refused alone, those sends were
  // refused too (see the file comment), so it is FAILED, not UNCONFIRMED.
  bool channel_error_only = false;
  // Resend alone (probe mode, after a channel error).
  bool probe = false;
  // Set: publish this captured message instead of the request's.
  std::shared_ptr<const CopyOf> copy;
  // When the publisher took it (Publisher::Submit): the confirm latency metric.
  std::chrono::steady_clock::time_point submitted{};
};

// PublishSink: the narrow channel the ledger sends through.
class PublishSink {
 public:
  virtual ~PublishSink() = default;
  // Encodes `job` for sending. An error: it cannot be sent (e.g. too large
  // for a frame); nothing was added.
  virtual absl::Status Add(const PublishJob& job) = 0;
  // Writes what Add encoded once enough has accumulated (`all`: everything).
  // False: the connection died; what was added stays pending, and the
  // caller reports the loss with Lost().
  virtual bool Write(bool all) = 0;
};

class PublishLedger {
 public:
  using Clock = std::chrono::steady_clock;
  using Status = mqsidecar::v1::PublishResult::Status;

  // republish: publishes whose confirm is lost with the connection are sent
  // again (publish.republish_unconfirmed) rather than answered UNCONFIRMED.
  explicit PublishLedger(bool republish) : republish_(republish) {}

  void Enqueue(PublishJob job) { waiting_.push_back(std::move(job)); }

  // Send hands the waiting jobs, in order, to `sink`. A job whose deadline
  // has passed is answered instead of sent: FAILED "not sent"
  // (DEADLINE_EXCEEDED), or UNCONFIRMED if sent before. In probe mode one
  // job at a time, each once nothing is in flight.
  void Send(Clock::time_point now, PublishSink& sink);

  // Settle applies a basic.ack (CONFIRMED) or basic.nack (REJECTED) for
  // `tag` (and, with `multiple`, every lower pending tag). False: the tag is
  // not pending (nothing changes).
  bool Settle(uint64_t tag, bool multiple, Status status);

  // Return marks the earliest unsettled publish with this exchange, routing
  // key and message_id as returned: its confirm answers UNROUTABLE with
  // `reason`. False: no publish matches.
  bool Return(std::string_view exchange, std::string_view routing_key, std::string_view message_id,
              std::string_view reason);

  // ChannelOpened: a fresh publishing channel in confirm mode; tags restart
  // at 1. What is still pending is handled as by Lost().
  void ChannelOpened();
  // ChannelClosed: the broker closed the publishing channel (reply code and
  // text); see the file comment. `stopping`: the loop is stopping, nothing is
  // requeued.
  void ChannelClosed(int reply_code, std::string_view reply_text, bool stopping = false);
  // Lost: the connection died (or the channel was renewed after a nack). The
  // unsettled, unanswered publishes go back to the front of the queue, in
  // order, marked sent_before (if republishing and not `stopping`), or are
  // answered UNCONFIRMED with `why`.
  void Lost(std::string_view why, bool stopping = false);

  // ExpirePending answers UNCONFIRMED the sent publishes whose deadline has
  // passed (they stay pending until settled). `blocked`: the broker has
  // blocked the connection (the answer says so).
  void ExpirePending(Clock::time_point now, bool blocked);
  // ExpireWaiting answers the waiting jobs whose deadline has passed (all of
  // them with `all`): FAILED with `why` + ": not sent" and `code`, or
  // UNCONFIRMED if sent before.
  void ExpireWaiting(Clock::time_point now, std::string_view why, absl::StatusCode code,
                     bool all = false);

  // Quiet: every pending publish is settled or answered (a channel can be
  // renewed without turning one into a republished copy).
  bool Quiet() const { return unanswered_in_flight() == 0; }
  bool Drained() const { return pending_.empty() && waiting_.empty(); }
  // AwaitsInternalAnswer: a job whose answer the daemon itself acts on (a
  // delayed-retry copy: CONFIRMED acks the original) is waiting, or in
  // flight, unsettled and unanswered. Once the gRPC server is shut down no
  // caller can receive an answer, so only these are worth waiting for.
  bool AwaitsInternalAnswer() const;
  bool HasTimers() const { return !pending_.empty() || !waiting_.empty(); }
  bool probing() const;
  size_t waiting() const { return waiting_.size(); }
  size_t pending() const { return pending_.size(); }
  // Sent and not settled by the broker.
  size_t unsettled() const { return unsettled_; }
  uint64_t first_tag() const { return first_tag_; }
  uint64_t next_tag() const { return next_tag_; }

  static void Complete(PublishJob& job, Status status, std::string_view error,
                       absl::StatusCode code = absl::StatusCode::kOk);

 private:
  struct Pending {
    PublishJob job;
    bool settled = false;   // the broker has answered (ack or nack)
    bool answered = false;  // the caller has its result (at the latest: its deadline)
    bool returned = false;
    std::string return_reason;
  };

  size_t unanswered_in_flight() const;
  // Drops the settled publishes at the front of pending_.
  void PopSettled();
  void ClearPending();

  const bool republish_;
  std::deque<PublishJob> waiting_;  // not sent yet
  std::deque<Pending> pending_;     // pending_[i] has delivery tag first_tag_ + i
  size_t unsettled_ = 0;            // entries of pending_ not settled
  uint64_t first_tag_ = 1;
  uint64_t next_tag_ = 1;
};

}  // namespace mqs::amqp
