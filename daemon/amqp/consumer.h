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
#include <functional>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "amqp/io_loop.h"
#include "amqp/topology.h"
#include "config/topology_plan.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/wakeup_queue.h"

namespace mqs::amqp {

// DeliverySink: a Subscribe stream as the consumer thread sees it. Calls come
// from the consumer thread; OnClosed is the last call, after which the sink
// may be destroyed.
class DeliverySink {
 public:
  virtual ~DeliverySink() = default;
  virtual void OnDelivery(mqsidecar::v1::Delivery&& delivery) = 0;
  // The consumer is gone (closed on request, refused, or its connection
  // lost); its unacked deliveries are back in the queue. `status` is OK for a
  // close the stream asked for, else why it ended.
  virtual void OnClosed(const absl::Status& status) = 0;
};

struct OpenRequest {
  uint64_t stream_id = 0;
  std::string business;
  std::string queue;
  uint32_t prefetch = 0;
  std::string consumer_tag;
  DeliverySink* sink = nullptr;
};

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
  // id (AMQP's `multiple`): one request for a whole batch.
  void Ack(uint64_t stream_id, uint64_t delivery_id, bool multiple = false) {
    inbox_.Push(Command{SettleCmd{stream_id, delivery_id, true, false, multiple}});
  }
  void Nack(uint64_t stream_id, uint64_t delivery_id, bool requeue, bool multiple = false) {
    inbox_.Push(Command{SettleCmd{stream_id, delivery_id, false, requeue, multiple}});
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
  };
  struct CloseCmd {
    uint64_t stream_id;
    absl::Status why;
  };
  struct InspectCmd {
    InspectDone done;
  };
  struct DrainCmd {};
  using Command = std::variant<OpenRequest, SettleCmd, CloseCmd, InspectCmd, DrainCmd>;

  // Stream: one Subscribe stream. It outlives connections: after a reconnect
  // its consumer is started again on a new channel, and delivery ids keep
  // growing, so ids from the old connection are recognised as stale.
  struct Stream {
    OpenRequest open;
    amqp_channel_t channel = 0;    // 0: not consuming (no connection yet)
    uint64_t id_offset = 0;        // delivery_id = id_offset + tag on `channel`
    uint64_t max_id = 0;           // highest delivery_id handed out
    std::set<uint64_t> unacked;    // delivery ids live on `channel`
    std::set<uint64_t> stale;      // ids from a dead channel: the broker requeued them
    bool cancelled = false;        // draining: basic.cancel sent, no new deliveries
    std::vector<uint64_t> to_ack;  // acked by the client, not yet sent (see FlushAcks)
    std::chrono::steady_clock::time_point last_settle;  // last basic.ack/nack sent
  };

  absl::Status OnConnected(Connection& conn) override;
  void OnDisconnected(const absl::Status& why) override;
  void ProcessInbox(Connection* conn) override;
  void OnFrame(Connection& conn, const amqp_frame_t& frame) override;
  void OnStopping(Connection* conn) override;
  bool Drained() const override { return lingering_.empty(); }
  bool IsFatal(const absl::Status& s) const override;
  bool HasTimers() const override { return !lingering_.empty(); }
  int WakeFd() const override { return inbox_.fd(); }
  void Wake() override { inbox_.Notify(); }

  // StartConsuming opens the stream's channel, sets its prefetch and
  // consumes; on failure the channel is left closed.
  absl::Status StartConsuming(Connection& conn, Stream& stream);
  void DoOpen(Connection* conn, OpenRequest&& req);
  void DoDrain(Connection* conn);
  // FlushAcks sends the acks collected from a run of ack commands: one
  // basic.ack with multiple=true covers every id below the stream's lowest
  // still-unacked id, the rest go one by one. Called before any other command
  // and at the end of each inbox batch, so order against nacks and closes holds.
  void FlushAcks(Connection* conn);
  // Ends a drained stream once it holds nothing unacked.
  void MaybeEndDrained(Connection* conn, uint64_t stream_id);
  void DoSettle(Connection* conn, const SettleCmd& cmd);
  void DoInspect(Connection* conn, InspectCmd& cmd);
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
  };
  void OnDeliver(const amqp_basic_deliver_t& deliver, amqp_channel_t channel);
  void OnContentHeader(amqp_channel_t channel, const amqp_basic_properties_t& props,
                       uint64_t body_size);
  void OnContentBody(amqp_channel_t channel, const amqp_bytes_t& fragment);
  // Hands a complete delivery to its stream (or drops it, see the .cc).
  void Deliver(amqp_channel_t channel, Incoming&& in);
  // Ends a stream: closes its channel if `close_channel` (or lets it linger
  // when it has just sent acks), then OnClosed(why).
  void EndStream(Connection* conn, uint64_t stream_id, const absl::Status& why, bool close_channel);
  // Closes the lingering channels whose time has come.
  void CloseLingering(Connection* conn);
  amqp_channel_t AllocateChannel(int channel_max);

  const config::TopologyPlan plan_;
  util::WakeupQueue<Command> inbox_;
  std::atomic<uint64_t> next_stream_id_{0};

  // Loop-thread state.
  std::vector<Command> batch_;
  std::unordered_map<uint64_t, Stream> streams_;
  std::unordered_map<amqp_channel_t, uint64_t> by_channel_;
  amqp_channel_t last_channel_ = 1;
  bool control_ok_ = false;  // channel 1: topology and inspection
  bool draining_ = false;
  std::vector<uint64_t> ack_streams_;                      // streams with a non-empty to_ack
  std::unordered_map<amqp_channel_t, Incoming> incoming_;  // deliveries being assembled
  // Channels whose stream has ended but which stay open a little (see
  // kSettleLinger in the .cc), with the time each closes: their consumers
  // are cancelled and they get no stream.
  std::unordered_map<amqp_channel_t, std::chrono::steady_clock::time_point> lingering_;
};

}  // namespace mqs::amqp
