// Publisher: the publishing connection, in confirm mode.
//
// Every PublishJob ends in exactly one call of its `done`, on the publisher
// thread: CONFIRMED (basic.ack), UNROUTABLE (basic.return, then ack),
// REJECTED (basic.nack), FAILED (never sent) or UNCONFIRMED (sent, but the
// channel or connection died before the broker answered). The bookkeeping
// is PublishLedger's; this class does the socket work.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "amqp/io_loop.h"
#include "amqp/properties.h"
#include "amqp/publish_batch.h"
#include "amqp/publish_ledger.h"
#include "config/topology_plan.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/wakeup_queue.h"

namespace mqs::amqp {

// kResendHold: how long publishes in flight at a lost connection wait after
// the reconnect before they are sent again (see OnConnected).
inline constexpr std::chrono::milliseconds kResendHold{1000};

class Publisher final : public IoLoop {
 public:
  Publisher(const config::Config& config, const config::TopologyPlan& plan,
            std::function<void()> on_state, std::function<void(const absl::Status&)> on_fatal);
  ~Publisher() override;

  // Submit queues a job for the publisher thread; never blocks.
  void Submit(PublishJob job) {
    job.submitted = std::chrono::steady_clock::now();
    inbox_.Push(std::move(job));
  }

  // Drain: shutdown has begun; publishes that cannot be sent right now fail
  // at once instead of waiting for the broker.
  void Drain() {
    draining_.store(true, std::memory_order_release);
    inbox_.Notify();
  }
  // CallersGone: the gRPC server has shut down, so no client call can
  // receive an answer any more. A stop then waits only for the confirms the
  // daemon acts on itself (delayed-retry copies), not the whole drain.
  void CallersGone() {
    callers_gone_.store(true, std::memory_order_release);
    inbox_.Notify();
  }
  // ExpireStuckWrite: called periodically from another thread (the main
  // loop, every second): cuts a TLS write that has made no progress for
  // 2 x heartbeat (WriteGuard), so that the publisher thread gets back to its
  // deadlines and reconnects.
  void ExpireStuckWrite(std::chrono::steady_clock::time_point now);

 private:
  // Sink: the ledger's way to the socket (properties, frames, writes).
  class Sink;

  absl::Status PrepareConnection(Connection& conn) override;
  absl::Status OnConnected(Connection& conn) override;
  void OnDisconnected(const absl::Status& why) override;
  void ProcessInbox(Connection* conn) override;
  void OnFrame(Connection& conn, const amqp_frame_t& frame) override;
  bool Drained() const override {
    return ledger_.Drained() ||
           (callers_gone_.load(std::memory_order_acquire) && !ledger_.AwaitsInternalAnswer());
  }
  bool IsFatal(const absl::Status& s) const override;
  int WakeFd() const override { return inbox_.fd(); }
  void Wake() override { inbox_.Notify(); }
  bool HasTimers() const override { return ledger_.HasTimers() || Holding(); }

  // Opens `channel`, declares the topology on it, enables confirms: only
  // socket work, no loop-thread state (PrepareConnection runs it on the
  // connector thread).
  absl::Status OpenPublishingChannel(Connection& conn, amqp_channel_t channel) const;
  // SetUpChannel: closes `close_first` (0: none) and opens channel_ with
  // OpenPublishingChannel, both on a helper thread (RunWhileServing) while
  // the loop thread answers deadlines; then tells the ledger.
  absl::Status SetUpChannel(Connection& conn, amqp_channel_t close_first = 0);
  // Writes out_ to the broker; false (connection marked dead) on failure.
  bool WriteBatch(Connection& conn);
  void Settle(uint64_t tag, bool multiple, mqsidecar::v1::PublishResult::Status status);
  void OnReturn(Connection& conn, const amqp_basic_return_t& ret, amqp_channel_t channel);
  // Answers what has waited or waited for a confirm past its deadline (at
  // most every few ms: a scan of the queues).
  void Expire(Connection* conn, bool force);
  // Sends the waiting jobs, if the channel can take them.
  void Flush(Connection* conn);
  // After a basic.nack (reset_channel_): once nothing in flight is
  // unsettled and unanswered, closes the publishing channel and opens a new
  // one; until then Flush sends nothing.
  void MaybeResetChannel(Connection& conn);
  // Sendable: connected, channel open, not blocked, no renewal pending, not
  // holding resends.
  bool Sendable(const Connection* conn) const;
  // After a reconnect with publishes to send again: kResendHold of nothing
  // sent (not while draining).
  bool Holding() const;

  const config::TopologyPlan plan_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> callers_gone_{false};
  util::WakeupQueue<PublishJob> inbox_;

  // Loop-thread state.
  std::vector<PublishJob> batch_;
  OutgoingProperties props_;
  CopyProperties copy_props_;
  PublishBatch out_;      // frames encoded by the Sink, written by WriteBatch
  WriteGuard tls_write_;  // armed around each TLS publish (Sink)
  PublishLedger ledger_;
  amqp_channel_t channel_ = 1;  // 1, or 2 after a renewal (see MaybeResetChannel)
  bool channel_ok_ = false;
  bool reset_channel_ = false;  // a nack came: renew the channel when quiet
  bool renewing_ = false;       // SetUpChannel's round trips are under way
  std::chrono::steady_clock::time_point next_expiry_scan_{};
  bool resend_after_loss_ = false;  // the last connection's loss left publishes to send again
  std::chrono::steady_clock::time_point hold_until_{};
};

}  // namespace mqs::amqp
