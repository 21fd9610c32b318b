// Consumer: the consuming connection; one AMQP channel per Subscribe stream.
//
// A channel per stream makes basic.qos (prefetch) per stream, and closing the
// channel when the stream ends returns exactly that stream's unacked
// deliveries to the queue, at once. Acks travel on their own connection, so a
// broker that blocks publishers (resource alarm) never stops consumers acking.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "amqp/consumer_ledger.h"
#include "amqp/io_loop.h"
#include "amqp/publish_ledger.h"
#include "amqp/topology.h"
#include "config/topology_plan.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/wakeup_queue.h"

namespace mqs::amqp {

struct QueueInfo {
  std::string name;
  config::QueueType type;
  bool known = false;  // counts below came from the broker
  QueueStats stats;
};

class Consumer final : public IoLoop {
 public:
  using InspectDone = std::function<void(std::vector<QueueInfo>&&)>;

  Consumer(const config::Config& config, const config::TopologyPlan& plan,
           std::function<void()> on_state, std::function<void(const absl::Status&)> on_fatal);
  ~Consumer() override;

  uint64_t NewStreamId() { return next_stream_id_.fetch_add(1) + 1; }

  // All of these queue a command and return at once; results reach the sink.
  void Open(OpenRequest request) { inbox_.Push(Command{std::move(request)}); }
  // multiple: also settles every unacked delivery of the stream with a lower
  // id (AMQP's `multiple`): one request for a whole batch. `ids`: each
  // settled alone first, in order, as its own Ack would be; then
  // `delivery_id`, unless it is 0 and `ids` is not empty. One command for the
  // whole list: one hand-off, and the acks coalesce (ConsumerLedger::FlushAcks).
  void Ack(uint64_t stream_id, uint64_t delivery_id, bool multiple = false,
           std::vector<uint64_t> ids = {}) {
    inbox_.Push(
        Command{SettleCmd{stream_id, delivery_id, true, false, multiple, 0, std::move(ids)}});
  }
  // retry_after_ms: see SubscribeRequest.Nack (checked by ValidateNackDelay).
  // `ids` as for Ack, each with this requeue and retry_after_ms.
  void Nack(uint64_t stream_id, uint64_t delivery_id, bool requeue, bool multiple = false,
            uint32_t retry_after_ms = 0, std::vector<uint64_t> ids = {}) {
    inbox_.Push(Command{SettleCmd{stream_id, delivery_id, false, requeue, multiple, retry_after_ms,
                                  std::move(ids)}});
  }
  // Delayed retries publish their copies through `publish` (the Publisher's
  // Submit); set before Start. Without it a retry requeues instead.
  void SetRetryPublisher(std::function<void(PublishJob)> publish) {
    retry_publish_ = std::move(publish);
  }
  // Close ends a stream's consumer; its sink then gets OnClosed(`why`).
  void Close(uint64_t stream_id, absl::Status why) {
    inbox_.Push(Command{CloseCmd{stream_id, std::move(why)}});
  }
  // Inspect asks the broker for each planned queue's counts.
  void Inspect(InspectDone done) { inbox_.Push(Command{InspectCmd{std::move(done)}}); }
  // Drain starts a graceful stop: every consumer is cancelled (no new
  // deliveries), streams end as soon as they hold no unacked delivery, and
  // new opens are refused. Stop() later ends what is left.
  void Drain() { inbox_.Push(Command{DrainCmd{}}); }

 private:
  struct SettleCmd {
    uint64_t stream_id;
    uint64_t delivery_id;
    bool ack;
    bool requeue;
    bool multiple;
    uint32_t retry_after_ms = 0;
    std::vector<uint64_t> ids;  // settled alone, before delivery_id
  };
  // A retry copy's publish ended: confirmed, or not (then the original is
  // requeued).
  struct RetryDoneCmd {
    ConsumerLedger::RetryTicket ticket;
    bool confirmed;
    bool unroutable;    // the retry queue does not exist
    std::string queue;  // where the copy went
  };
  struct CloseCmd {
    uint64_t stream_id;
    absl::Status why;
  };
  struct InspectCmd {
    InspectDone done;
  };
  struct DrainCmd {};
  using Command =
      std::variant<OpenRequest, SettleCmd, CloseCmd, InspectCmd, DrainCmd, RetryDoneCmd>;

  absl::Status OnConnected(Connection& conn) override;
  void OnDisconnected(const absl::Status& why) override;
  void ProcessInbox(Connection* conn) override;
  void OnFrame(Connection& conn, const amqp_frame_t& frame) override;
  void OnStopping(Connection* conn) override;
  bool Drained() const override { return ledger_.Drained(); }
  bool IsFatal(const absl::Status& s) const override;
  bool HasTimers() const override { return ledger_.HasTimers(); }
  int WakeFd() const override { return inbox_.fd(); }
  void Wake() override { inbox_.Notify(); }

  void DoInspect(Connection* conn, InspectCmd& cmd);
  // Control channel (1): topology re-declarations and Inspect's passive
  // declares, sent without waiting and answered in order. A refusal closes
  // the channel; it is reopened (asynchronously) and the operations that
  // were not answered are sent again.
  struct ControlOp {
    enum Kind { kDeclare, kInspect, kRetryQueue } kind;
    size_t
        index;  // declare: topology step; inspect: queue of the plan; retry queue: retry_declares_
    uint64_t round;              // declare: which re-declaration
    amqp_method_number_t reply;  // the -ok expected (set when sent)
  };
  void QueueControl(Connection& conn, ControlOp op);
  void SendControl(Connection& conn, ControlOp& op);
  void OnControlFrame(Connection& conn, const amqp_method_t& m);
  void ControlDone(const ControlOp& op, const absl::Status& status,
                   const amqp_queue_declare_ok_t* counts);
  void RedeclareTopology(Connection& conn);
  void FinishInspect(bool cache);
  void ResetControl();
  // A delivery arrives as three kinds of frames on its channel: basic.deliver,
  // a content header (properties, body size), then body frames. Frames of
  // other channels may come in between, so each channel assembles its own
  // (Incoming) as the frames pass through the loop; nothing blocks, and the
  // body is copied once, from rabbitmq-c's frame buffer into the Delivery.
  struct Incoming {
    mqsidecar::v1::Delivery delivery;
    std::string consumer_tag;
    uint64_t tag = 0;
    uint64_t body_left = 0;
    bool have_header = false;
    bool skip_body = false;                     // rejected as too large: the body is not kept
    std::shared_ptr<CapturedMessage> captured;  // retry businesses
  };
  // Delayed retry: a nack on a business with retry (see DecideRetry).
  // SettleOne settles one id of `cmd` (`multiple` for cmd.delivery_id only).
  void SettleOne(Connection* conn, const SettleCmd& cmd, uint64_t delivery_id, bool multiple);
  void NackWithRetry(Connection* conn, const SettleCmd& cmd, uint64_t delivery_id, bool multiple,
                     const config::Consumer& business);
  void RetryOne(Connection* conn, uint64_t stream_id, uint64_t delivery_id, uint32_t retry_after_ms,
                const config::Consumer& business);
  // Publishes the copy (retry queue `queue` is declared on this connection).
  void SubmitRetry(const ConsumerLedger::RetryTicket& ticket, PublishJob job);
  void OnRetryQueueDeclared(size_t index, const absl::Status& status);
  // A retry queue not in the plan (a nack's own delay), being declared, with
  // the copies that wait for it.
  struct RetryDeclare {
    config::TopologyPlan plan;  // just the queue
    std::vector<std::pair<ConsumerLedger::RetryTicket, PublishJob>> waiting;
  };
  void OnDeliver(const amqp_basic_deliver_t& deliver, amqp_channel_t channel);
  void OnContentHeader(amqp_channel_t channel, const amqp_basic_properties_t& props,
                       uint64_t body_size);
  void OnContentBody(amqp_channel_t channel, const amqp_bytes_t& fragment);
  const config::TopologyPlan plan_;
  // The server's send limit (util::MaxSendBytes of the config's limits): a
  // delivery above it is never handed to a stream.
  const size_t max_send_bytes_;
  util::WakeupQueue<Command> inbox_;
  std::atomic<uint64_t> next_stream_id_{0};

  // Loop-thread state.
  std::vector<Command> batch_;
  ConsumerLedger ledger_;
  std::unique_ptr<ChannelSender> sender_;  // for the current connection
  std::function<void(PublishJob)> retry_publish_;
  // Retry queues known to exist: the plan's, and those declared on this
  // connection (reset with it).
  std::set<std::string> retry_queues_;
  std::vector<RetryDeclare> retry_declares_;  // by ControlOp::index; cleared with the connection
  std::map<std::string, size_t> retry_declaring_;          // queue -> retry_declares_ index
  std::unordered_map<amqp_channel_t, Incoming> incoming_;  // deliveries being assembled

  enum class ControlState { kDown, kOpening, kOpen };
  ControlState control_ = ControlState::kDown;
  std::deque<ControlOp> control_sent_;     // answers come in this order
  std::deque<ControlOp> control_waiting_;  // to send once channel 1 is open
  uint64_t declare_round_ = 0;
  uint64_t failed_declare_round_ = 0;  // ops of a refused re-declaration are dropped
  size_t declare_steps_ = 0;
  // Inspect: one round of passive declares at a time, shared by every
  // Inspect that arrives meanwhile; a complete result is served from cache
  // for kInspectCacheFor.
  bool inspecting_ = false;
  size_t inspect_left_ = 0;
  std::vector<QueueInfo> inspect_result_;
  std::chrono::steady_clock::time_point inspect_started_;
  std::vector<InspectDone> inspect_waiters_;
  bool cache_valid_ = false;
  std::vector<QueueInfo> cache_;
  std::chrono::steady_clock::time_point cache_at_;
};

}  // namespace mqs::amqp
