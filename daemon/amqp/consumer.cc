#include "amqp/consumer.h"

#include <algorithm>

#include "amqp/properties.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::amqp {
namespace {

constexpr amqp_channel_t kControlChannel = 1;

}  // namespace

Consumer::Consumer(const config::Config& config, const config::TopologyPlan& plan,
                   std::function<void()> on_state,
                   std::function<void(const absl::Status&)> on_fatal)
    : IoLoop("consumer", config.broker, std::move(on_state), std::move(on_fatal)), plan_(plan) {}

Consumer::~Consumer() { Stop(std::chrono::milliseconds(0)); }

bool Consumer::IsFatal(const absl::Status& s) const { return IsTopologyConflict(s); }

absl::Status Consumer::OnConnected(Connection& conn) {
  control_ok_ = false;
  if (absl::Status s = conn.OpenChannel(kControlChannel); !s.ok()) return s;
  // Queues must exist before anyone consumes from them.
  if (absl::Status s = DeclareTopology(conn, kControlChannel, plan_); !s.ok()) return s;
  control_ok_ = true;
  last_channel_ = kControlChannel;
  // Streams that lived through the outage consume again.
  std::vector<uint64_t> failed;
  for (auto& [id, stream] : streams_) {
    if (stream.cancelled) continue;
    if (absl::Status s = StartConsuming(conn, stream); !s.ok()) {
      if (conn.dead()) return s;
      spdlog::warn("[consumer] stream {}: resuming failed: {}", id, s.message());
      failed.push_back(id);
      continue;
    }
    spdlog::info("[consumer] stream {} resumed on channel {} ({} deliveries will come again)", id,
                 stream.channel, stream.stale.size());
  }
  for (uint64_t id : failed) {
    EndStream(&conn, id, absl::UnavailableError("could not resume consuming after a reconnect"),
              false);
  }
  return absl::OkStatus();
}

void Consumer::OnDisconnected(const absl::Status& why) {
  control_ok_ = false;
  by_channel_.clear();
  lingering_.clear();
  incoming_.clear();  // half-received deliveries: the broker requeues them
  if (stop_requested()) {
    const absl::Status lost = absl::UnavailableError(util::StrCat(
        "mq-sidecar is shutting down; unacked deliveries are requeued: ", why.message()));
    std::vector<uint64_t> ids;
    for (const auto& [id, stream] : streams_) ids.push_back(id);
    for (uint64_t id : ids) EndStream(nullptr, id, lost, /*close_channel=*/false);
    return;
  }
  // Streams stay open across a reconnect. What they hold unacked was requeued
  // by the broker with the connection; acks for those ids are not sent.
  ack_streams_.clear();
  for (auto& [id, stream] : streams_) {
    stream.channel = 0;
    stream.to_ack.clear();  // not sent: the broker requeued them with the rest
    stream.stale.insert(stream.unacked.begin(), stream.unacked.end());
    stream.unacked.clear();
    stream.id_offset = stream.max_id;
  }
}

void Consumer::OnStopping(Connection* conn) {
  std::vector<uint64_t> ids;
  for (const auto& [id, stream] : streams_) ids.push_back(id);
  for (uint64_t id : ids) {
    EndStream(conn, id,
              absl::UnavailableError(
                  "mq-sidecar is shutting down; unacked deliveries return to the queue"),
              true);
  }
}

namespace {
// RabbitMQ 3.10's quorum queues can drop acks that reach a channel just before
// it closes, and then deliver again messages the client acked
// (rabbitmq-server#10327; the benchmark saw 1-56 of 20,000 per stream end). So
// a stream's channel that has sent a settle in the last kSettleLinger is not
// closed at once: its consumer is cancelled (no new deliveries), the stream
// ends for the client, and the channel closes kSettleLinger after that settle.
// A client closing its connection 100 ms after its last ack never saw the bug.
constexpr std::chrono::milliseconds kSettleLinger(100);
}  // namespace

amqp_channel_t Consumer::AllocateChannel(int channel_max) {
  // Round-robin, so a just-closed channel number is not reused while frames
  // queued for its old consumer may still be waiting to be discarded; but
  // over a window of twice the open channels (at least 32), not all of
  // channel_max: rabbitmq-c keeps a decoding pool (a frame_max page, 128 KiB)
  // per channel number ever used until the connection closes, so numbers
  // used once and never again add up (measured: ~110 KiB per new stream).
  // Lingering channels count as open: a burst of ending streams must not
  // fill the window.
  const int open = static_cast<int>(by_channel_.size() + lingering_.size());
  const int window = std::max<int>(32, 2 * (open + 1));
  const int max = std::min({channel_max, 65535, window});
  for (int tries = 0; tries < max; ++tries) {
    last_channel_ = static_cast<amqp_channel_t>(last_channel_ >= max ? 2 : last_channel_ + 1);
    if (last_channel_ == kControlChannel) continue;
    if (!by_channel_.contains(last_channel_) && !lingering_.contains(last_channel_)) {
      return last_channel_;
    }
  }
  return 0;
}

void Consumer::ProcessInbox(Connection* conn) {
  if (conn != nullptr && conn->dead()) conn = nullptr;
  CloseLingering(conn);
  inbox_.Drain(batch_);
  for (Command& cmd : batch_) {
    const auto* settle_cmd = std::get_if<SettleCmd>(&cmd);
    if (settle_cmd == nullptr || !settle_cmd->ack) FlushAcks(conn);
    if (auto* open = std::get_if<OpenRequest>(&cmd)) {
      DoOpen(conn, std::move(*open));
    } else if (auto* settle = std::get_if<SettleCmd>(&cmd)) {
      DoSettle(conn, *settle);
    } else if (auto* close = std::get_if<CloseCmd>(&cmd)) {
      EndStream(conn, close->stream_id, close->why, /*close_channel=*/true);
    } else if (auto* inspect = std::get_if<InspectCmd>(&cmd)) {
      DoInspect(conn, *inspect);
    } else if (std::holds_alternative<DrainCmd>(cmd)) {
      DoDrain(conn);
    }
  }
  FlushAcks(conn);
  batch_.clear();
}

absl::Status Consumer::StartConsuming(Connection& conn, Stream& stream) {
  const amqp_channel_t ch = AllocateChannel(conn.channel_max());
  if (ch == 0) {
    return absl::ResourceExhaustedError(
        util::StrCat("no free AMQP channel (channel_max ", conn.channel_max(), ")"));
  }
  const OpenRequest& req = stream.open;
  absl::Status s = conn.OpenChannel(ch);
  if (s.ok()) {
    amqp_basic_qos(conn.state(), ch, 0,
                   static_cast<uint16_t>(std::min<uint32_t>(req.prefetch, 65535)),
                   /*global=*/0);
    s = conn.RpcStatus("basic.qos", ch);
  }
  if (s.ok()) {
    amqp_basic_consume(conn.state(), ch, AmqpBytes(req.queue), AmqpBytes(req.consumer_tag),
                       /*no_local=*/0, /*no_ack=*/0, /*exclusive=*/0, amqp_empty_table);
    s = conn.RpcStatus(util::StrCat("consume from queue '", req.queue, "'"), ch);
  }
  // A refused open, qos or consume closed the channel (close-ok sent).
  if (!s.ok()) return s;
  stream.channel = ch;
  by_channel_[ch] = req.stream_id;
  incoming_.erase(ch);  // nothing half-assembled from an earlier consumer on this number
  return absl::OkStatus();
}

void Consumer::DoOpen(Connection* conn, OpenRequest&& req) {
  if (draining_ || stop_requested()) {
    req.sink->OnClosed(absl::UnavailableError("mq-sidecar is shutting down"));
    return;
  }
  const uint64_t id = req.stream_id;
  Stream& stream = streams_[id];
  stream.open = std::move(req);
  if (conn == nullptr) {
    // Consuming starts when the connection is back.
    spdlog::info("[consumer] stream {} waits for the broker ({})", id, LinkStateName(state()));
    return;
  }
  if (absl::Status s = StartConsuming(*conn, stream); !s.ok()) {
    EndStream(conn, id, s, /*close_channel=*/false);
    return;
  }
  spdlog::info("[consumer] stream {} consumes '{}' on channel {} (prefetch {}, tag {})", id,
               stream.open.queue, stream.channel, stream.open.prefetch, stream.open.consumer_tag);
}

void Consumer::DoSettle(Connection* conn, const SettleCmd& cmd) {
  auto it = streams_.find(cmd.stream_id);
  if (it == streams_.end()) return;  // stream already ended: its deliveries are requeued
  Stream& stream = it->second;
  if (stream.stale.erase(cmd.delivery_id) > 0) {
    // Delivered on a connection that has since died: the broker requeued it
    // and will deliver it again (redelivered=true). Sending this ack on the
    // new channel would name a foreign tag and close it with 406. Live ids
    // are all higher than stale ones, so `multiple` covers stale ones only.
    if (cmd.multiple) {
      stream.stale.erase(stream.stale.begin(), stream.stale.upper_bound(cmd.delivery_id));
    }
    spdlog::debug("[consumer] stream {}: {} of stale delivery_id {} ignored; it is redelivered",
                  cmd.stream_id, cmd.ack ? "ack" : "nack", cmd.delivery_id);
    MaybeEndDrained(conn, cmd.stream_id);
    return;
  }
  auto live = stream.unacked.find(cmd.delivery_id);
  if (live == stream.unacked.end()) {
    FlushAcks(conn);  // what the client acked before this mistake still counts
    EndStream(conn, cmd.stream_id,
              absl::InvalidArgumentError(util::StrCat(
                  cmd.ack ? "ack" : "nack", " of delivery_id ", cmd.delivery_id,
                  ": unknown or already settled on this stream; the stream is closed and its "
                  "unacked deliveries return to the queue")),
              true);
    return;
  }
  if (cmd.multiple) {
    // Like AMQP's `multiple`: the id must be unacked, and it settles every
    // lower one too (stale ones included: the broker has requeued those).
    stream.unacked.erase(stream.unacked.begin(), std::next(live));
    stream.stale.clear();
  } else {
    stream.unacked.erase(live);
  }
  if (conn == nullptr || stream.channel == 0) return;  // cannot happen: ids are live
  if (cmd.ack) {
    // FlushAcks sends one basic.ack with multiple=true up to the highest
    // acked id below the lowest unacked one, which covers this whole range.
    if (stream.to_ack.empty()) ack_streams_.push_back(cmd.stream_id);
    stream.to_ack.push_back(cmd.delivery_id);
    return;
  }
  // Pending acks were flushed before this command, so the broker's unacked
  // tags up to this one are exactly the range erased above.
  const uint64_t tag = cmd.delivery_id - stream.id_offset;
  if (amqp_basic_nack(conn->state(), stream.channel, tag, cmd.multiple ? 1 : 0,
                      cmd.requeue ? 1 : 0) != AMQP_STATUS_OK) {
    conn->MarkDead();
    return;
  }
  stream.last_settle = std::chrono::steady_clock::now();
  MaybeEndDrained(conn, cmd.stream_id);
}

void Consumer::FlushAcks(Connection* conn) {
  for (uint64_t stream_id : ack_streams_) {
    auto it = streams_.find(stream_id);
    if (it == streams_.end()) continue;
    Stream& stream = it->second;
    if (stream.to_ack.empty()) continue;
    if (conn != nullptr && !conn->dead() && stream.channel != 0) {
      std::vector<uint64_t>& ids = stream.to_ack;
      std::sort(ids.begin(), ids.end());
      // Every id below the lowest unacked one is settled now: tags on a
      // channel are delivered (and so recorded) in order.
      const uint64_t low = stream.unacked.empty() ? UINT64_MAX : *stream.unacked.begin();
      const auto split = std::lower_bound(ids.begin(), ids.end(), low);
      int rc = AMQP_STATUS_OK;
      if (split != ids.begin()) {
        rc = amqp_basic_ack(conn->state(), stream.channel, *(split - 1) - stream.id_offset,
                            /*multiple=*/1);
      }
      for (auto id = split; id != ids.end() && rc == AMQP_STATUS_OK; ++id) {
        rc = amqp_basic_ack(conn->state(), stream.channel, *id - stream.id_offset, 0);
      }
      if (rc != AMQP_STATUS_OK) conn->MarkDead();
      stream.last_settle = std::chrono::steady_clock::now();
    }
    stream.to_ack.clear();
    MaybeEndDrained(conn, stream_id);
  }
  ack_streams_.clear();
}

void Consumer::DoDrain(Connection* conn) {
  draining_ = true;
  std::vector<uint64_t> ids;
  for (auto& [id, stream] : streams_) {
    ids.push_back(id);
    if (stream.cancelled) continue;
    stream.cancelled = true;
    if (conn != nullptr && stream.channel != 0) {
      amqp_basic_cancel(conn->state(), stream.channel, AmqpBytes(stream.open.consumer_tag));
      if (absl::Status s = conn->RpcStatus("basic.cancel", stream.channel); !s.ok()) {
        spdlog::warn("[consumer] stream {}: {}", id, s.message());
      }
    }
  }
  spdlog::info("[consumer] draining {} streams: no new deliveries; each ends once acked",
               ids.size());
  for (uint64_t id : ids) MaybeEndDrained(conn, id);
}

void Consumer::MaybeEndDrained(Connection* conn, uint64_t stream_id) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end() || !it->second.cancelled || !it->second.unacked.empty()) return;
  EndStream(conn, stream_id,
            absl::UnavailableError("mq-sidecar is shutting down; every delivery was settled"),
            true);
}

void Consumer::EndStream(Connection* conn, uint64_t stream_id, const absl::Status& why,
                         bool close_channel) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return;
  Stream stream = std::move(it->second);
  streams_.erase(it);
  if (stream.channel != 0) {
    by_channel_.erase(stream.channel);
    const auto close_at = stream.last_settle + kSettleLinger;
    if (close_channel && conn != nullptr && !conn->dead()) {
      if (close_at > std::chrono::steady_clock::now()) {
        // Asynchronous (no wait for cancel-ok, which is ignored when it
        // comes): deliveries already on their way are dropped here and
        // requeued by the close.
        if (!stream.cancelled) {
          amqp_basic_cancel_t cancel{AmqpBytes(stream.open.consumer_tag), /*nowait=*/0};
          if (amqp_send_method(conn->state(), stream.channel, AMQP_BASIC_CANCEL_METHOD, &cancel) !=
              AMQP_STATUS_OK) {
            conn->MarkDead();
          }
        }
        lingering_.emplace(stream.channel, close_at);
      } else if (absl::Status s = conn->CloseChannel(stream.channel); !s.ok()) {
        spdlog::warn("[consumer] closing channel {}: {}", stream.channel, s.message());
      }
    }
  }
  spdlog::info("[consumer] stream {} ended ({} unacked returned to '{}'): {}", stream_id,
               stream.unacked.size(), stream.open.queue,
               why.ok() ? std::string("closed by the client") : std::string(why.message()));
  stream.open.sink->OnClosed(why);
}

void Consumer::CloseLingering(Connection* conn) {
  if (lingering_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  std::erase_if(lingering_, [&](const auto& entry) {
    const auto& [channel, close_at] = entry;
    if (conn == nullptr || conn->dead()) return true;  // gone with the connection
    if (close_at > now) return false;
    if (absl::Status s = conn->CloseChannel(channel); !s.ok()) {
      spdlog::warn("[consumer] closing channel {}: {}", channel, s.message());
    }
    return true;
  });
}

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
  in.delivery.set_exchange(std::string(AmqpText(deliver.exchange)));
  in.delivery.set_routing_key(std::string(AmqpText(deliver.routing_key)));
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
  if (body_size == 0) {
    Incoming done = std::move(in);
    incoming_.erase(it);
    Deliver(channel, std::move(done));
    return;
  }
  in.delivery.mutable_payload()->reserve(body_size);
}

void Consumer::OnContentBody(amqp_channel_t channel, const amqp_bytes_t& fragment) {
  auto it = incoming_.find(channel);
  if (it == incoming_.end() || !it->second.have_header) return;
  Incoming& in = it->second;
  const uint64_t n = std::min<uint64_t>(fragment.len, in.body_left);
  in.delivery.mutable_payload()->append(static_cast<const char*>(fragment.bytes), n);
  in.body_left -= n;
  if (in.body_left > 0) return;
  Incoming done = std::move(in);
  incoming_.erase(it);
  Deliver(channel, std::move(done));
}

void Consumer::Deliver(amqp_channel_t channel, Incoming&& in) {
  auto it = by_channel_.find(channel);
  Stream* stream = it == by_channel_.end() ? nullptr : &streams_.at(it->second);
  // A delivery for a channel being closed, or for an earlier consumer on a
  // reused channel number, is dropped: the broker requeues it.
  if (stream == nullptr || stream->open.consumer_tag != in.consumer_tag) return;
  const uint64_t id = stream->id_offset + in.tag;
  in.delivery.set_delivery_id(id);
  in.delivery.set_business(stream->open.business);
  stream->unacked.insert(id);
  stream->max_id = std::max(stream->max_id, id);
  stream->open.sink->OnDelivery(std::move(in.delivery));
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
  switch (m.id) {
    case AMQP_BASIC_DELIVER_METHOD:
      OnDeliver(*static_cast<amqp_basic_deliver_t*>(m.decoded), frame.channel);
      break;
    case AMQP_BASIC_CANCEL_METHOD: {
      // consumer_cancel_notify: the queue was deleted (or became unavailable).
      auto it = by_channel_.find(frame.channel);
      if (it != by_channel_.end()) {
        EndStream(&conn, it->second,
                  absl::UnavailableError("the broker cancelled this consumer: its queue was "
                                         "deleted or became unavailable; subscribe again"),
                  true);
      }
      // Declare again so that the next Subscribe finds the queue.
      if (control_ok_ && !conn.dead()) {
        if (absl::Status s = DeclareTopology(conn, kControlChannel, plan_); !s.ok()) {
          control_ok_ = false;
          spdlog::error("[consumer] re-declaring the topology failed: {}", s.message());
        } else {
          spdlog::info("[consumer] topology declared again after a consumer cancel");
        }
      }
      break;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      auto* close = static_cast<amqp_channel_close_t*>(m.decoded);
      const absl::Status why = absl::AbortedError(
          util::StrCat("the broker closed this stream's channel: ", close->reply_code, " ",
                       AmqpText(close->reply_text)));
      conn.SendChannelCloseOk(frame.channel);
      if (frame.channel == kControlChannel) {
        control_ok_ = conn.OpenChannel(kControlChannel).ok();
        break;
      }
      lingering_.erase(frame.channel);
      auto it = by_channel_.find(frame.channel);
      if (it != by_channel_.end()) EndStream(&conn, it->second, why, /*close_channel=*/false);
      break;
    }
    default:
      spdlog::debug("[consumer] ignoring method 0x{:08x} on channel {}", m.id, frame.channel);
  }
}

void Consumer::DoInspect(Connection* conn, InspectCmd& cmd) {
  std::vector<QueueInfo> out;
  for (const auto& q : plan_.queues) {
    QueueInfo info{q.name, q.type, false, {}};
    if (conn != nullptr) {
      if (!control_ok_) control_ok_ = conn->OpenChannel(kControlChannel).ok();
      if (control_ok_) {
        auto stats = QueryQueue(*conn, kControlChannel, q.name);
        if (stats.ok()) {
          info.known = true;
          info.stats = *stats;
        } else {
          control_ok_ = false;  // the broker closed channel 1 (close-ok sent)
        }
      }
    }
    out.push_back(std::move(info));
  }
  cmd.done(std::move(out));
}

}  // namespace mqs::amqp
