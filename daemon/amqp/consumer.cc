#include "amqp/consumer.h"

#include <algorithm>

#include "amqp/properties.h"
#include "amqp/retry.h"
#include "spdlog/spdlog.h"
#include "util/grpc_limits.h"
#include "util/log_fields.h"
#include "util/strings.h"
#include "util/utf8.h"

namespace mqs::amqp {
namespace {

// GetTopology answers from a result at most this old: a client polling it
// costs the broker one passive declare per queue per second at most.
constexpr std::chrono::seconds kInspectCacheFor(1);

// A retry copy that waits longer than this (broker alarm, outage) gives up:
// the original is requeued instead, and the handler sees it again.
constexpr std::chrono::seconds kRetryPublishTimeout(30);

// ConnSender: ChannelSender on a live connection. Nothing waits for a reply;
// a failed send marks the connection dead (the loop then reconnects).
class ConnSender final : public ChannelSender {
 public:
  explicit ConnSender(Connection& conn) : conn_(conn) {}

  bool SendOpen(ChannelNo ch) override {
    amqp_channel_open_t open{amqp_empty_bytes};
    return Send(ch, AMQP_CHANNEL_OPEN_METHOD, &open);
  }
  bool SendQos(ChannelNo ch, uint16_t prefetch) override {
    amqp_basic_qos_t qos{0, prefetch, 0};
    return Send(ch, AMQP_BASIC_QOS_METHOD, &qos);
  }
  bool SendConsume(ChannelNo ch, const std::string& queue, const std::string& tag) override {
    amqp_basic_consume_t consume{};
    consume.queue = AmqpBytes(queue);
    consume.consumer_tag = AmqpBytes(tag);
    consume.arguments = amqp_empty_table;
    return Send(ch, AMQP_BASIC_CONSUME_METHOD, &consume);
  }
  bool SendCancel(ChannelNo ch, const std::string& tag) override {
    amqp_basic_cancel_t cancel{AmqpBytes(tag), /*nowait=*/0};
    return Send(ch, AMQP_BASIC_CANCEL_METHOD, &cancel);
  }
  bool SendClose(ChannelNo ch) override {
    amqp_channel_close_t close{};
    close.reply_code = AMQP_REPLY_SUCCESS;
    close.reply_text = amqp_empty_bytes;
    return Send(ch, AMQP_CHANNEL_CLOSE_METHOD, &close);
  }
  bool SendCloseOk(ChannelNo ch) override {
    conn_.SendChannelCloseOk(ch);
    return !conn_.dead();
  }
  bool SendAck(ChannelNo ch, uint64_t tag, bool multiple) override {
    return Check(amqp_basic_ack(conn_.state(), ch, tag, multiple ? 1 : 0));
  }
  bool SendNack(ChannelNo ch, uint64_t tag, bool multiple, bool requeue) override {
    return Check(amqp_basic_nack(conn_.state(), ch, tag, multiple ? 1 : 0, requeue ? 1 : 0));
  }
  bool SendReject(ChannelNo ch, uint64_t tag, bool requeue) override {
    return Check(amqp_basic_reject(conn_.state(), ch, tag, requeue ? 1 : 0));
  }

 private:
  bool Send(ChannelNo ch, amqp_method_number_t id, void* method) {
    return Check(amqp_send_method(conn_.state(), ch, id, method));
  }
  bool Check(int rc) {
    if (rc == AMQP_STATUS_OK) return true;
    conn_.MarkDead();
    return false;
  }
  Connection& conn_;
};

std::vector<QueueInfo> UnknownQueues(const config::TopologyPlan& plan) {
  std::vector<QueueInfo> out;
  for (const auto& q : plan.queues) out.push_back(QueueInfo{q.name, q.type, false, {}});
  return out;
}

}  // namespace

Consumer::Consumer(const config::Config& config, const config::TopologyPlan& plan,
                   std::function<void()> on_state,
                   std::function<void(const absl::Status&)> on_fatal)
    : IoLoop("consumer", config.broker, std::move(on_state), std::move(on_fatal)),
      plan_(plan),
      max_send_bytes_(util::MaxSendBytes(util::MaxRequestBytes(config.limits.max_payload_bytes,
                                                               config.limits.max_header_bytes))) {}

Consumer::~Consumer() { Stop(std::chrono::milliseconds(0)); }

bool Consumer::IsFatal(const absl::Status& s) const { return IsTopologyConflict(s); }

absl::Status Consumer::OnConnected(Connection& conn) {
  ResetControl();
  if (absl::Status s = conn.OpenChannel(kControlChannel); !s.ok()) return s;
  // Queues must exist before anyone consumes from them. Synchronous: no
  // stream is served while the connection is being set up anyway.
  if (absl::Status s = DeclareTopology(conn, kControlChannel, plan_); !s.ok()) return s;
  control_ = ControlState::kOpen;
  incoming_.clear();
  retry_queues_.clear();
  for (const config::QueueSpec& q : plan_.queues) {
    if (!q.retry_for.empty()) retry_queues_.insert(q.name);  // declared just now
  }
  sender_ = std::make_unique<ConnSender>(conn);
  // Streams that lived through the outage consume again: every set-up is
  // sent at once and completes as the broker answers, in the frame loop.
  ledger_.Attach(sender_.get(), conn.channel_max());
  return absl::OkStatus();
}

void Consumer::OnDisconnected(const absl::Status& why) {
  ledger_.Detach();
  sender_.reset();
  incoming_.clear();  // half-received deliveries: the broker requeues them
  ResetControl();
  if (stop_requested()) {
    ledger_.EndAll(absl::UnavailableError(util::StrCat(
        "mq-sidecar is shutting down; unacked deliveries are requeued: ", why.message())));
  }
}

void Consumer::OnStopping(Connection* /*conn*/) {
  ledger_.EndAll(absl::UnavailableError(
      "mq-sidecar is shutting down; unacked deliveries return to the queue"));
}

void Consumer::ProcessInbox(Connection* conn) {
  if (conn != nullptr && conn->dead()) conn = nullptr;
  ledger_.CloseDue();
  inbox_.Drain(batch_);
  for (Command& cmd : batch_) {
    const auto* settle_cmd = std::get_if<SettleCmd>(&cmd);
    if (settle_cmd == nullptr || !settle_cmd->ack) ledger_.FlushAcks();
    if (auto* open = std::get_if<OpenRequest>(&cmd)) {
      if (stop_requested()) {
        open->sink->OnClosed(absl::UnavailableError("mq-sidecar is shutting down"));
      } else {
        ledger_.Open(std::move(*open));
      }
    } else if (auto* settle = std::get_if<SettleCmd>(&cmd)) {
      // A list's ids go one by one, with no flush in between: the acks among
      // them coalesce as a run of single acks does. An id that ends the
      // stream (unknown) leaves the rest to an ended stream, which ignores them.
      for (uint64_t id : settle->ids) SettleOne(conn, *settle, id, false);
      if (settle->delivery_id != 0 || settle->ids.empty()) {
        SettleOne(conn, *settle, settle->delivery_id, settle->multiple);
      }
    } else if (auto* retried = std::get_if<RetryDoneCmd>(&cmd)) {
      if (retried->unroutable) {
        // The retry queue is gone (deleted by hand): declared again next time.
        spdlog::error("[consumer] retry queue '{}' does not exist; declaring it again",
                      util::ForLog(retried->queue));
        retry_queues_.erase(retried->queue);
      }
      ledger_.FinishRetry(retried->ticket, retried->confirmed);
    } else if (auto* close = std::get_if<CloseCmd>(&cmd)) {
      ledger_.Close(close->stream_id, close->why);
    } else if (auto* inspect = std::get_if<InspectCmd>(&cmd)) {
      DoInspect(conn, *inspect);
    } else if (std::holds_alternative<DrainCmd>(cmd)) {
      ledger_.Drain();
    }
  }
  ledger_.FlushAcks();
  batch_.clear();
}

// ---------------------------------------------------------------------------
// Control channel

void Consumer::ResetControl() {
  control_ = ControlState::kDown;
  control_sent_.clear();
  control_waiting_.clear();
  // Their originals were requeued with the connection.
  retry_declares_.clear();
  retry_declaring_.clear();
  if (inspecting_) FinishInspect(/*cache=*/false);
  cache_valid_ = false;
}

void Consumer::QueueControl(Connection& conn, ControlOp op) {
  if (control_ == ControlState::kOpen) {
    SendControl(conn, op);
    return;
  }
  control_waiting_.push_back(op);
  if (control_ == ControlState::kDown) {
    amqp_channel_open_t open{amqp_empty_bytes};
    if (amqp_send_method(conn.state(), kControlChannel, AMQP_CHANNEL_OPEN_METHOD, &open) !=
        AMQP_STATUS_OK) {
      conn.MarkDead();
    }
    control_ = ControlState::kOpening;
  }
}

void Consumer::SendControl(Connection& conn, ControlOp& op) {
  bool sent = false;
  if (op.kind == ControlOp::kDeclare) {
    sent = SendTopologyStep(conn, kControlChannel, plan_, op.index, &op.reply);
  } else if (op.kind == ControlOp::kRetryQueue) {
    sent = SendTopologyStep(conn, kControlChannel, retry_declares_[op.index].plan, 0, &op.reply);
  } else {
    op.reply = AMQP_QUEUE_DECLARE_OK_METHOD;
    sent = SendQueryQueue(conn, kControlChannel, plan_.queues[op.index].name);
  }
  if (!sent) conn.MarkDead();
  control_sent_.push_back(op);
}

void Consumer::OnControlFrame(Connection& conn, const amqp_method_t& m) {
  switch (m.id) {
    case AMQP_CHANNEL_OPEN_OK_METHOD: {
      if (control_ != ControlState::kOpening) return;
      control_ = ControlState::kOpen;
      std::deque<ControlOp> waiting;
      waiting.swap(control_waiting_);
      for (ControlOp& op : waiting) SendControl(conn, op);
      return;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      // The operation at the head was refused; the broker ignored the ones
      // sent after it. They go again once the channel is reopened.
      auto* close = static_cast<amqp_channel_close_t*>(m.decoded);
      const absl::Status why =
          StatusForReply(close->reply_code, std::string(AmqpText(close->reply_text)));
      conn.SendChannelCloseOk(kControlChannel);
      control_ = ControlState::kDown;
      std::deque<ControlOp> unanswered;
      unanswered.swap(control_sent_);
      if (!unanswered.empty()) {
        const ControlOp head = unanswered.front();
        unanswered.pop_front();
        ControlDone(head, why, nullptr);
      }
      unanswered.insert(unanswered.end(), control_waiting_.begin(), control_waiting_.end());
      control_waiting_.clear();
      for (const ControlOp& op : unanswered) {
        if (op.kind == ControlOp::kDeclare && op.round == failed_declare_round_) continue;
        QueueControl(conn, op);
      }
      return;
    }
    default:
      break;
  }
  if (!control_sent_.empty() && control_sent_.front().reply == m.id) {
    const ControlOp op = control_sent_.front();
    control_sent_.pop_front();
    ControlDone(op, absl::OkStatus(),
                m.id == AMQP_QUEUE_DECLARE_OK_METHOD
                    ? static_cast<const amqp_queue_declare_ok_t*>(m.decoded)
                    : nullptr);
    return;
  }
  spdlog::debug("[consumer] ignoring method 0x{:08x} on the control channel", m.id);
}

void Consumer::ControlDone(const ControlOp& op, const absl::Status& status,
                           const amqp_queue_declare_ok_t* counts) {
  if (op.kind == ControlOp::kRetryQueue) {
    OnRetryQueueDeclared(op.index, status);
    return;
  }
  if (op.kind == ControlOp::kDeclare) {
    if (!status.ok()) {
      failed_declare_round_ = op.round;
      spdlog::error("[consumer] re-declaring the topology failed: {}",
                    TopologyStepError(plan_, op.index, status).message());
    } else if (op.index + 1 == declare_steps_ && op.round == declare_round_) {
      spdlog::info("[consumer] topology declared again after a consumer cancel");
    }
    return;
  }
  if (!inspecting_ || op.index >= inspect_result_.size()) return;
  QueueInfo& info = inspect_result_[op.index];
  info.known = status.ok();
  if (counts != nullptr) {
    info.stats.messages = counts->message_count;
    info.stats.consumers = counts->consumer_count;
  }
  if (--inspect_left_ == 0) FinishInspect(/*cache=*/true);
}

void Consumer::RedeclareTopology(Connection& conn) {
  ++declare_round_;
  declare_steps_ = TopologyStepCount(plan_);
  for (size_t i = 0; i < declare_steps_; ++i) {
    QueueControl(conn, ControlOp{ControlOp::kDeclare, i, declare_round_, 0});
  }
}

void Consumer::DoInspect(Connection* conn, InspectCmd& cmd) {
  const auto now = std::chrono::steady_clock::now();
  if (cache_valid_ && now - cache_at_ < kInspectCacheFor) {
    std::vector<QueueInfo> copy = cache_;
    cmd.done(std::move(copy));
    return;
  }
  if (inspecting_) {
    inspect_waiters_.push_back(std::move(cmd.done));
    return;
  }
  if (conn == nullptr || plan_.queues.empty()) {
    cmd.done(UnknownQueues(plan_));
    return;
  }
  inspecting_ = true;
  inspect_started_ = now;
  inspect_left_ = plan_.queues.size();
  inspect_result_ = UnknownQueues(plan_);
  inspect_waiters_.push_back(std::move(cmd.done));
  for (size_t i = 0; i < plan_.queues.size(); ++i) {
    QueueControl(*conn, ControlOp{ControlOp::kInspect, i, 0, 0});
  }
}

void Consumer::FinishInspect(bool cache) {
  inspecting_ = false;
  if (cache) {
    cache_ = inspect_result_;
    cache_at_ = inspect_started_;  // as old as the first question
    cache_valid_ = true;
  }
  std::vector<InspectDone> waiters;
  waiters.swap(inspect_waiters_);
  for (InspectDone& done : waiters) {
    std::vector<QueueInfo> copy = inspect_result_;
    done(std::move(copy));
  }
}

// ---------------------------------------------------------------------------
// Deliveries

void Consumer::OnDeliver(const amqp_basic_deliver_t& deliver, amqp_channel_t channel) {
  Incoming& in = incoming_[channel];
  if (in.have_header || in.tag != 0) {
    // The broker never interleaves contents on one channel; if it did, the
    // half-assembled delivery cannot be trusted. Drop it: it is requeued
    // when its channel closes.
    spdlog::error("[consumer] channel {}: delivery {} started before {} was complete; dropped",
                  channel, deliver.delivery_tag, in.tag);
    in = Incoming{};
  }
  in.tag = deliver.delivery_tag;
  in.consumer_tag.assign(AmqpText(deliver.consumer_tag));
  in.delivery.set_exchange(util::ToValidUtf8(AmqpText(deliver.exchange)));
  in.delivery.set_routing_key(util::ToValidUtf8(AmqpText(deliver.routing_key)));
  in.delivery.set_redelivered(deliver.redelivered != 0);
}

void Consumer::OnContentHeader(amqp_channel_t channel, const amqp_basic_properties_t& props,
                               uint64_t body_size) {
  auto it = incoming_.find(channel);
  if (it == incoming_.end() || it->second.have_header) return;  // not after a deliver: ignore
  Incoming& in = it->second;
  in.have_header = true;
  in.body_left = body_size;
  FillDelivery(props, &in.delivery);
  if (ledger_.CapturesOn(channel)) {
    in.captured = std::make_shared<CapturedMessage>(props);
    in.captured->exchange = in.delivery.exchange();
    in.captured->routing_key = in.delivery.routing_key();
  }
  // A Delivery the server cannot send would fail the stream's write, return
  // to the queue and kill every stream it reaches. Checked before the body
  // is buffered: the payload adds its size plus a tag and a length, and a
  // DeliveryBatch (SubscribeBatch) a tag and a length around the delivery.
  const uint64_t bytes = in.delivery.ByteSizeLong() + body_size + 16 + 6;
  if (!ledger_.AdmitSize(channel, in.tag, in.consumer_tag, in.delivery.message_id(), bytes,
                         max_send_bytes_)) {
    in.skip_body = true;
  }
  if (body_size == 0) {
    Incoming done = std::move(in);
    incoming_.erase(it);
    if (!done.skip_body) {
      ledger_.OnDelivery(channel, done.tag, done.consumer_tag, std::move(done.delivery),
                         std::move(done.captured));
    }
    return;
  }
  if (!in.skip_body) in.delivery.mutable_payload()->reserve(body_size);
}

void Consumer::OnContentBody(amqp_channel_t channel, const amqp_bytes_t& fragment) {
  auto it = incoming_.find(channel);
  if (it == incoming_.end() || !it->second.have_header) return;
  Incoming& in = it->second;
  const uint64_t n = std::min<uint64_t>(fragment.len, in.body_left);
  if (!in.skip_body) {
    in.delivery.mutable_payload()->append(static_cast<const char*>(fragment.bytes), n);
  }
  in.body_left -= n;
  if (in.body_left > 0) return;
  Incoming done = std::move(in);
  incoming_.erase(it);
  if (done.skip_body) return;
  if (done.captured != nullptr) done.captured->body = done.delivery.payload();
  ledger_.OnDelivery(channel, done.tag, done.consumer_tag, std::move(done.delivery),
                     std::move(done.captured));
}

void Consumer::OnFrame(Connection& conn, const amqp_frame_t& frame) {
  if (frame.frame_type == AMQP_FRAME_HEADER) {
    OnContentHeader(frame.channel,
                    *static_cast<const amqp_basic_properties_t*>(frame.payload.properties.decoded),
                    frame.payload.properties.body_size);
    return;
  }
  if (frame.frame_type == AMQP_FRAME_BODY) {
    OnContentBody(frame.channel, frame.payload.body_fragment);
    return;
  }
  if (frame.frame_type != AMQP_FRAME_METHOD) return;
  const amqp_method_t& m = frame.payload.method;
  if (frame.channel == kControlChannel) {
    OnControlFrame(conn, m);
    return;
  }
  switch (m.id) {
    case AMQP_BASIC_DELIVER_METHOD:
      OnDeliver(*static_cast<amqp_basic_deliver_t*>(m.decoded), frame.channel);
      break;
    case AMQP_CHANNEL_OPEN_OK_METHOD:
      ledger_.OnOpenOk(frame.channel);
      break;
    case AMQP_BASIC_QOS_OK_METHOD:
      ledger_.OnQosOk(frame.channel);
      break;
    case AMQP_BASIC_CONSUME_OK_METHOD:
      ledger_.OnConsumeOk(frame.channel);
      break;
    case AMQP_CHANNEL_CLOSE_OK_METHOD:
      incoming_.erase(frame.channel);  // nothing more comes for the old channel
      ledger_.OnCloseOk(frame.channel);
      break;
    case AMQP_CHANNEL_CLOSE_METHOD: {
      auto* close = static_cast<amqp_channel_close_t*>(m.decoded);
      incoming_.erase(frame.channel);
      ledger_.OnBrokerClose(frame.channel, close->reply_code, AmqpText(close->reply_text));
      break;
    }
    case AMQP_BASIC_CANCEL_METHOD:
      // consumer_cancel_notify: the queue was deleted (or became unavailable).
      // Declared again (asynchronously) so that the next Subscribe finds it.
      if (ledger_.OnBrokerCancel(frame.channel) && !conn.dead()) RedeclareTopology(conn);
      break;
    default:
      // basic.cancel-ok (cancels are fire-and-forget) and anything else.
      spdlog::debug("[consumer] ignoring method 0x{:08x} on channel {}", m.id, frame.channel);
  }
}

// ---------------------------------------------------------------------------
// Delayed retry: a copy goes to a retry queue (or, retries exhausted, to the
// dead-letter queue) through the publisher's confirmed channel, and the
// original is acked once the copy is confirmed, or requeued if it is not.
// The publisher's connection, not this one, so a broker alarm that blocks
// publishers never stops this connection's deliveries and acks.

void Consumer::SettleOne(Connection* conn, const SettleCmd& cmd, uint64_t delivery_id,
                         bool multiple) {
  const OpenRequest* open = cmd.ack || !cmd.requeue ? nullptr : ledger_.open_request(cmd.stream_id);
  if (open != nullptr && open->config != nullptr && open->config->retry.enabled()) {
    NackWithRetry(conn, cmd, delivery_id, multiple, *open->config);
  } else {
    ledger_.Settle(cmd.stream_id, delivery_id, cmd.ack, cmd.requeue, multiple);
  }
}

void Consumer::NackWithRetry(Connection* conn, const SettleCmd& cmd, uint64_t delivery_id,
                             bool multiple, const config::Consumer& business) {
  if (!multiple) {
    RetryOne(conn, cmd.stream_id, delivery_id, cmd.retry_after_ms, business);
    return;
  }
  const std::vector<uint64_t> ids = ledger_.LiveUpTo(cmd.stream_id, delivery_id);
  if (ids.empty()) {
    // Stale or unknown: answered as before.
    ledger_.Settle(cmd.stream_id, delivery_id, false, true, true);
    return;
  }
  for (uint64_t id : ids) RetryOne(conn, cmd.stream_id, id, cmd.retry_after_ms, business);
}

void Consumer::RetryOne(Connection* conn, uint64_t stream_id, uint64_t delivery_id,
                        uint32_t retry_after_ms, const config::Consumer& business) {
  std::optional<ConsumerLedger::RetryTicket> ticket = ledger_.TakeForRetry(stream_id, delivery_id);
  if (!ticket) return;
  const CapturedMessage& m = *ticket->message;
  const int64_t retries =
      std::clamp<int64_t>(HeaderNumber(m.props(), kRetriesHeader, 0), 0, UINT32_MAX - 1);
  const RetryStep step =
      DecideRetry(business.retry, static_cast<uint32_t>(retries + 1), true, retry_after_ms);
  auto copy = std::make_shared<CopyOf>();
  copy->message = ticket->message;
  copy->headers = {{kOriginalExchangeHeader, m.exchange},
                   {kOriginalRoutingKeyHeader, m.routing_key}};
  PublishJob job;
  if ((m.props()._flags & AMQP_BASIC_MESSAGE_ID_FLAG) != 0) {
    job.request.set_message_id(std::string(AmqpText(m.props().message_id)));
  }
  std::string queue;
  if (step.kind == RetryStep::kRetry) {
    queue = config::RetryQueue(business, step.delay);
    job.exchange = "";  // the default exchange: straight to the retry queue
    copy->headers.push_back({kRetriesHeader, retries + 1});
  } else {
    // Retries exhausted: to the dead-letter queue, the way the broker
    // dead-letters (the queue's name as routing key), saying why.
    queue = config::DeadLetterQueue(business);
    job.exchange = config::DeadLetterExchange(business);
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    copy->headers.push_back({kDeadReasonHeader, std::string("retries_exhausted")});
    copy->headers.push_back({kDeadQueueHeader, business.queue});
    copy->headers.push_back(
        {kDeadAtHeader,
         static_cast<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now).count())});
  }
  job.request.set_routing_key(step.kind == RetryStep::kRetry ? queue : business.queue);
  job.copy = std::move(copy);
  job.deadline = std::chrono::steady_clock::now() + kRetryPublishTimeout;
  job.done = [this, t = *ticket, queue](mqsidecar::v1::PublishResult&& r, absl::StatusCode) {
    using R = mqsidecar::v1::PublishResult;
    inbox_.Push(
        Command{RetryDoneCmd{t, r.status() == R::CONFIRMED, r.status() == R::UNROUTABLE, queue}});
  };
  if (step.kind == RetryStep::kExhausted) {
    util::LogWith(spdlog::level::info, {{"business", business.name}},
                  "[consumer] stream {}: delivery_id {} (message_id '{}') failed attempt {} of {}: "
                  "to the dead-letter queue",
                  stream_id, delivery_id, util::ForLog(job.request.message_id()), retries + 1,
                  business.retry.max_attempts);
  }
  if (step.kind == RetryStep::kExhausted || retry_queues_.contains(queue)) {
    SubmitRetry(*ticket, std::move(job));
    return;
  }
  // A delay of the nack's own, not in the plan: its queue is declared on
  // the control channel first, once per connection.
  if (auto it = retry_declaring_.find(queue); it != retry_declaring_.end()) {
    retry_declares_[it->second].waiting.emplace_back(*ticket, std::move(job));
    return;
  }
  if (conn == nullptr) {
    ledger_.FinishRetry(*ticket, false);
    return;
  }
  RetryDeclare declare;
  declare.plan.queues.push_back(config::RetryQueueSpec(business, step.delay));
  declare.waiting.emplace_back(*ticket, std::move(job));
  retry_declares_.push_back(std::move(declare));
  retry_declaring_[queue] = retry_declares_.size() - 1;
  QueueControl(*conn, ControlOp{ControlOp::kRetryQueue, retry_declares_.size() - 1, 0, 0});
}

void Consumer::SubmitRetry(const ConsumerLedger::RetryTicket& ticket, PublishJob job) {
  if (!retry_publish_) {
    ledger_.FinishRetry(ticket, false);
    return;
  }
  retry_publish_(std::move(job));
}

void Consumer::OnRetryQueueDeclared(size_t index, const absl::Status& status) {
  if (index >= retry_declares_.size()) return;
  RetryDeclare& d = retry_declares_[index];
  const std::string name = d.plan.queues.front().name;
  retry_declaring_.erase(name);
  if (status.ok()) {
    retry_queues_.insert(name);
  } else {
    spdlog::error("[consumer] declaring retry queue '{}' failed: {}; its messages are requeued",
                  util::ForLog(name), TopologyStepError(d.plan, 0, status).message());
  }
  auto waiting = std::move(d.waiting);
  d.waiting.clear();
  for (auto& [ticket, job] : waiting) {
    if (status.ok()) {
      SubmitRetry(ticket, std::move(job));
    } else {
      ledger_.FinishRetry(ticket, false);
    }
  }
}

}  // namespace mqs::amqp
