// ConsumerLedger: the consumer's bookkeeping, with no socket.
//
// What a Subscribe stream holds (unacked and stale delivery ids, the offset
// that keeps ids growing across reconnects), how settles are checked and
// coalesced, which channel number each stream gets, and each channel's
// asynchronous life (open -> qos -> consume -> consuming -> lingering ->
// closing). Everything it sends goes through ChannelSender, so a unit test
// drives every path with a fake; the Consumer feeds it commands and frames.
// One thread (the consumer's loop) owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "amqp/properties.h"
#include "config/config.h"
#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::amqp {

using ChannelNo = uint16_t;  // amqp_channel_t

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
  // The configured business (outlives every stream); null in unit tests.
  const config::Consumer* config = nullptr;
};

// ChannelSender: the AMQP methods the ledger sends, none of which waits for
// a reply (the replies come back as On*Ok calls). Each returns false when the
// connection failed; the caller's loop then notices it is dead.
class ChannelSender {
 public:
  virtual ~ChannelSender() = default;
  virtual bool SendOpen(ChannelNo ch) = 0;
  virtual bool SendQos(ChannelNo ch, uint16_t prefetch) = 0;
  virtual bool SendConsume(ChannelNo ch, const std::string& queue, const std::string& tag) = 0;
  virtual bool SendCancel(ChannelNo ch, const std::string& tag) = 0;
  virtual bool SendClose(ChannelNo ch) = 0;
  virtual bool SendCloseOk(ChannelNo ch) = 0;
  virtual bool SendAck(ChannelNo ch, uint64_t tag, bool multiple) = 0;
  virtual bool SendNack(ChannelNo ch, uint64_t tag, bool multiple, bool requeue) = 0;
  virtual bool SendReject(ChannelNo ch, uint64_t tag, bool requeue) = 0;
};

// RabbitMQ 3.10's quorum queues can drop acks that reach a channel just before
// it closes, and then deliver again messages the client acked
// (rabbitmq-server#10327; the benchmark saw 1-56 of 20,000 per stream end). So
// a stream's channel that has sent a settle in the last kSettleLinger is not
// closed at once: its consumer is cancelled (no new deliveries), the stream
// ends for the client, and the channel closes kSettleLinger after that settle.
// A client closing its connection 100 ms after its last ack never saw the bug.
inline constexpr std::chrono::milliseconds kSettleLinger(100);

inline constexpr ChannelNo kControlChannel = 1;

class ConsumerLedger {
 public:
  using Clock = std::chrono::steady_clock;

  // A channel number's state. Every state counts as occupied: a number is
  // reused only after the broker has confirmed it closed (close-ok, or its
  // own channel.close answered).
  enum class ChannelState {
    kOpening,    // channel.open sent
    kQos,        // basic.qos sent
    kConsume,    // basic.consume sent
    kConsuming,  // consume-ok received: deliveries go to the stream
    kLingering,  // stream ended, consumer cancelled; closes at close_at
    kClosing,    // channel.close sent, waiting for close-ok
  };

  explicit ConsumerLedger(std::function<Clock::time_point()> now = &Clock::now);

  // Connection: Attach when a connection is ready (every stream not drained
  // starts its set-up at once, pipelined); Detach when it is gone (what the
  // streams hold becomes stale: the broker requeued it).
  void Attach(ChannelSender* out, int channel_max);
  void Detach();
  bool attached() const { return out_ != nullptr; }

  // Commands.
  void Open(OpenRequest req);
  void Settle(uint64_t stream_id, uint64_t delivery_id, bool ack, bool requeue, bool multiple);
  // FlushAcks sends the acks collected from a run of ack settles: one
  // basic.ack with multiple=true covers every id below the stream's lowest
  // still-unacked id, the rest go one by one. The caller flushes before any
  // other command and at the end of each batch, so order against nacks and
  // closes holds.
  void FlushAcks();
  // Ends a stream for the client; its channel is closed (or lingers).
  void Close(uint64_t stream_id, const absl::Status& why) { EndStream(stream_id, why, true); }
  // Drain: cancels every consumer (no new deliveries); a stream ends once it
  // holds nothing unacked. Opens are refused from now on.
  void Drain();
  bool draining() const { return draining_; }
  // Ends every stream with `why`; their channels close when attached.
  void EndAll(const absl::Status& why);
  // Closes the lingering channels whose time has come.
  void CloseDue();

  // Delayed retry (docs/reliability.md). A delivery held for a retry stays
  // unacked (no multiple ack covers it) while its copy is published, and the
  // client can no longer settle it; FinishRetry then acks it (copy
  // confirmed) or requeues it, on the channel it came on, even when its
  // stream has ended meanwhile (the channel lingers until then).
  struct RetryTicket {
    uint64_t stream_id = 0;
    uint64_t delivery_id = 0;
    ChannelNo channel = 0;
    uint64_t epoch = 0;  // which use of `channel`
    uint64_t tag = 0;
    std::shared_ptr<const CapturedMessage> message;
  };
  // The delivery, when it is live and unacked on the stream and was
  // captured; otherwise the same as a settle of it (a stale id is ignored,
  // an unknown one ends the stream), and nullopt.
  std::optional<RetryTicket> TakeForRetry(uint64_t stream_id, uint64_t delivery_id);
  void FinishRetry(const RetryTicket& ticket, bool confirmed);
  // The stream's live unacked ids up to `delivery_id` not held for a retry
  // (a multiple nack taken apart), or empty when `delivery_id` is not live.
  std::vector<uint64_t> LiveUpTo(uint64_t stream_id, uint64_t delivery_id) const;
  // The stream's open request, or null.
  const OpenRequest* open_request(uint64_t stream_id) const;
  // Whether deliveries on `ch` are captured for retries (its stream's
  // business has retry configured).
  bool CapturesOn(ChannelNo ch) const;

  // Frames from the broker.
  void OnOpenOk(ChannelNo ch);
  void OnQosOk(ChannelNo ch);
  void OnConsumeOk(ChannelNo ch);
  void OnCloseOk(ChannelNo ch);
  // The broker closed `ch` with reply_code/text (close-ok is sent here): a
  // refused set-up ends its stream with the broker's reason (the code mapped
  // by StatusForReply), a channel error on a consuming one with ABORTED.
  void OnBrokerClose(ChannelNo ch, int reply_code, std::string_view text);
  // The broker cancelled the consumer on `ch` (queue deleted); true if a
  // stream ended.
  bool OnBrokerCancel(ChannelNo ch);
  // A complete delivery on `ch` with `tag`: handed to the stream, or dropped
  // when no stream consumes there with that consumer tag (the broker
  // requeues it when the channel closes).
  void OnDelivery(ChannelNo ch, uint64_t tag, const std::string& consumer_tag,
                  mqsidecar::v1::Delivery&& delivery,
                  std::shared_ptr<const CapturedMessage> captured = nullptr);
  // Checks, before a delivery's body is buffered, that the Delivery it makes
  // (`bytes`: its serialized size without business and delivery_id) fits in
  // `limit`. When it does not, it is rejected (requeue=false: dead-lettered
  // if the queue has a dead-letter exchange, else dropped) with an error log
  // line, and false is returned: the caller skips the body. Deliveries for
  // no stream are left to the channel close.
  bool AdmitSize(ChannelNo ch, uint64_t tag, const std::string& consumer_tag,
                 const std::string& message_id, uint64_t bytes, uint64_t limit);

  // For the loop.
  bool HasTimers() const;
  // Nothing still to close (stop waits for this).
  bool Drained() const { return channels_.empty(); }
  size_t stream_count() const { return streams_.size(); }

  // For tests and logs.
  struct ChannelInfo {
    ChannelState state;
    uint64_t stream_id = 0;  // 0: none (lingering, closing)
    Clock::time_point close_at{};
    uint64_t epoch = 0;    // which use of this number (retry tickets check it)
    uint32_t retries = 0;  // deliveries held for a retry: the channel stays open
  };
  const std::map<ChannelNo, ChannelInfo>& channels() const { return channels_; }
  struct StreamView {
    ChannelNo channel;
    uint64_t id_offset;
    uint64_t max_id;
    std::set<uint64_t> unacked;
    std::set<uint64_t> stale;
    bool cancelled;
  };
  // stream() of a stream that is not there (ended, never opened) is all
  // zero and empty.
  bool has_stream(uint64_t stream_id) const { return streams_.contains(stream_id); }
  StreamView stream(uint64_t stream_id) const;

 private:
  // Stream: one Subscribe stream. It outlives connections: after a reconnect
  // its consumer is started again on a new channel, and delivery ids keep
  // growing, so ids from the old connection are recognised as stale.
  struct Stream {
    OpenRequest open;
    ChannelNo channel = 0;        // 0: none (no connection yet)
    uint64_t id_offset = 0;       // delivery_id = id_offset + tag on `channel`
    uint64_t max_id = 0;          // highest delivery_id handed out
    std::set<uint64_t> unacked;   // delivery ids live on `channel`
    std::set<uint64_t> stale;     // ids from a dead channel: the broker requeued them
    std::set<uint64_t> retrying;  // unacked ids held for a retry (TakeForRetry)
    // Retry businesses: each unacked delivery as it came, to publish again.
    std::map<uint64_t, std::shared_ptr<const CapturedMessage>> captured;
    bool cancelled = false;           // draining: basic.cancel sent, no new deliveries
    bool resumed = false;             // set up again after a reconnect (for the log)
    std::vector<uint64_t> to_ack;     // acked by the client, not yet sent (see FlushAcks)
    Clock::time_point last_settle{};  // last basic.ack/nack sent
  };

  void StartSetup(uint64_t stream_id);
  ChannelNo AllocateChannel();
  // Ends a stream: closes its channel if `close_channel` (or lets it linger
  // when it has just sent settles), then OnClosed(why).
  void EndStream(uint64_t stream_id, const absl::Status& why, bool close_channel);
  void MaybeEndDrained(uint64_t stream_id);
  // The stream consuming on `ch` with `consumer_tag`, or null.
  Stream* ConsumingOn(ChannelNo ch, const std::string& consumer_tag);
  void SendClose(ChannelNo ch, ChannelInfo& info);

  std::function<Clock::time_point()> now_;
  ChannelSender* out_ = nullptr;
  int channel_max_ = 0;
  ChannelNo last_channel_ = kControlChannel;
  bool draining_ = false;
  std::unordered_map<uint64_t, Stream> streams_;
  // Ordered, so tests and logs see channels by number.
  std::map<ChannelNo, ChannelInfo> channels_;
  std::vector<uint64_t> ack_streams_;  // streams with a non-empty to_ack
  uint64_t next_epoch_ = 0;
};

std::string_view ChannelStateName(ConsumerLedger::ChannelState s);

// StatusForReply: the most specific status for a broker reply code (AMQP
// 0-9-1 constants: 404 NOT_FOUND, 403 PermissionDenied, 405/406
// FailedPrecondition, 506 ResourceExhausted, 320 Unavailable).
absl::Status StatusForReply(int reply_code, absl::string_view message);

}  // namespace mqs::amqp
