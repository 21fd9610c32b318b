// Publisher: the publishing connection, in confirm mode.
//
// Every PublishJob ends in exactly one call of its `done`, on the publisher
// thread: CONFIRMED (basic.ack), UNROUTABLE (basic.return, then ack),
// REJECTED (basic.nack), FAILED (never sent) or UNCONFIRMED (sent, but the
// channel or connection died before the broker answered).
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "amqp/io_loop.h"
#include "amqp/properties.h"
#include "amqp/publish_batch.h"
#include "config/topology_plan.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/wakeup_queue.h"

namespace mqs::amqp {

// PublishDone receives the result and, for FAILED, the most specific code of
// why (UNAVAILABLE: no connection; RESOURCE_EXHAUSTED: broker alarm).
using PublishDone = std::function<void(mqsidecar::v1::PublishResult&&, absl::StatusCode)>;

struct PublishJob {
  mqsidecar::v1::PublishRequest request;  // message_id already set
  std::string exchange;
  // Until when the job may wait for a connection (or an alarm to clear).
  std::chrono::steady_clock::time_point deadline;
  PublishDone done;
  bool sent_before = false;  // republished after a connection loss
};

class Publisher final : public IoLoop {
 public:
  Publisher(const config::Config& config, const config::TopologyPlan& plan,
            std::function<void()> on_state, std::function<void(const absl::Status&)> on_fatal);
  ~Publisher() override;

  // Submit queues a job for the publisher thread; never blocks.
  void Submit(PublishJob job) { inbox_.Push(std::move(job)); }

  // Drain: shutdown has begun; publishes that cannot be sent right now fail
  // at once instead of waiting for the broker.
  void Drain() {
    draining_.store(true, std::memory_order_release);
    inbox_.Notify();
  }

 private:
  struct Pending {
    PublishJob job;
    bool settled = false;   // the broker has answered (ack or nack)
    bool answered = false;  // the caller has its result (at the latest: its deadline)
    bool returned = false;
    std::string return_reason;
  };

  absl::Status OnConnected(Connection& conn) override;
  void OnDisconnected(const absl::Status& why) override;
  void ProcessInbox(Connection* conn) override;
  void OnFrame(Connection& conn, const amqp_frame_t& frame) override;
  bool Drained() const override { return pending_.empty() && waiting_.empty(); }
  bool IsFatal(const absl::Status& s) const override;
  int WakeFd() const override { return inbox_.fd(); }
  void Wake() override { inbox_.Notify(); }

  // Opens the publishing channel, declares the topology, enables confirms.
  absl::Status SetUpChannel(Connection& conn);
  // Writes out_ to the broker; false (connection marked dead) on failure.
  bool WriteBatch(Connection& conn);
  void Settle(uint64_t tag, bool multiple, mqsidecar::v1::PublishResult::Status status);
  void OnReturn(Connection& conn, const amqp_basic_return_t& ret, amqp_channel_t channel);
  // The channel or connection died: unsettled publishes are queued to be sent
  // again (republish_unconfirmed) or answered UNCONFIRMED.
  void RequeueOrFailPending(std::string_view why);
  static void Complete(PublishJob& job, mqsidecar::v1::PublishResult::Status status,
                       std::string_view error, absl::StatusCode code = absl::StatusCode::kOk);

  bool HasTimers() const override { return !waiting_.empty() || !pending_.empty(); }
  // Answers UNCONFIRMED the sent publishes whose deadline passed without a
  // confirm (e.g. the broker blocked the connection after they left: it
  // announces connection.blocked only at the next publish).
  void ExpirePending();
  // Sends or (while not sendable) expires the jobs in waiting_.
  void Flush(Connection* conn);
  // After a basic.nack (reset_channel_): once nothing in flight is
  // unsettled and unanswered, closes the publishing channel and opens a new
  // one; until then Flush sends nothing.
  void MaybeResetChannel(Connection& conn);

  const config::TopologyPlan plan_;
  const bool republish_;
  std::atomic<bool> draining_{false};
  util::WakeupQueue<PublishJob> inbox_;

  // Loop-thread state.
  std::vector<PublishJob> batch_;
  OutgoingProperties props_;
  PublishBatch out_;                // frames encoded by Flush, written by WriteBatch
  std::deque<PublishJob> waiting_;  // not sent yet: no connection, or blocked
  std::deque<Pending> pending_;     // pending_[i] has delivery tag first_tag_ + i
  uint64_t first_tag_ = 1;
  uint64_t next_tag_ = 1;
  amqp_channel_t channel_ = 1;  // 1, or 2 after a renewal (see MaybeResetChannel)
  bool channel_ok_ = false;
  bool reset_channel_ = false;  // a nack came: renew the channel when quiet
  std::chrono::steady_clock::time_point next_expiry_scan_{};
};

}  // namespace mqs::amqp
