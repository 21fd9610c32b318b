#include "amqp/consumer_ledger.h"

#include <algorithm>

#include "spdlog/spdlog.h"
#include "util/log_fields.h"
#include "util/strings.h"

namespace mqs::amqp {

std::string_view ChannelStateName(ConsumerLedger::ChannelState s) {
  using S = ConsumerLedger::ChannelState;
  switch (s) {
    case S::kOpening:
      return "opening";
    case S::kQos:
      return "qos";
    case S::kConsume:
      return "consume";
    case S::kConsuming:
      return "consuming";
    case S::kLingering:
      return "lingering";
    case S::kClosing:
      return "closing";
  }
  return "unknown";
}

absl::Status StatusForReply(int reply_code, absl::string_view message) {
  switch (reply_code) {
    case 404:
      return absl::NotFoundError(message);
    case 403:
      return absl::PermissionDeniedError(message);
    case 405:
    case 406:
      return absl::FailedPreconditionError(message);
    case 506:
      return absl::ResourceExhaustedError(message);
    case 320:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

ConsumerLedger::ConsumerLedger(std::function<Clock::time_point()> now) : now_(std::move(now)) {}

ConsumerLedger::StreamView ConsumerLedger::stream(uint64_t stream_id) const {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return StreamView{0, 0, 0, {}, {}, false};
  const Stream& s = it->second;
  return StreamView{s.channel, s.id_offset, s.max_id, s.unacked, s.stale, s.cancelled};
}

bool ConsumerLedger::HasTimers() const {
  for (const auto& [ch, info] : channels_) {
    if (info.state == ChannelState::kLingering && info.retries == 0) return true;
  }
  return false;
}

void ConsumerLedger::Attach(ChannelSender* out, int channel_max) {
  out_ = out;
  channel_max_ = channel_max;
  last_channel_ = kControlChannel;
  channels_.clear();
  // Streams that lived through the outage consume again, all set-ups in
  // flight at once.
  std::vector<uint64_t> ids;
  for (const auto& [id, stream] : streams_) {
    if (!stream.cancelled) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    streams_.at(id).resumed = true;
    StartSetup(id);
  }
}

void ConsumerLedger::Detach() {
  out_ = nullptr;
  channels_.clear();
  // Streams stay open across a reconnect. What they hold unacked was requeued
  // by the broker with the connection; acks for those ids are not sent.
  ack_streams_.clear();
  for (auto& [id, stream] : streams_) {
    stream.channel = 0;
    stream.to_ack.clear();  // not sent: the broker requeued them with the rest
    stream.stale.insert(stream.unacked.begin(), stream.unacked.end());
    stream.unacked.clear();
    stream.retrying.clear();  // their tickets name channels that are gone
    stream.captured.clear();
    stream.id_offset = stream.max_id;
  }
}

ChannelNo ConsumerLedger::AllocateChannel() {
  // Round-robin, so a just-closed channel number is not reused while frames
  // queued for its old consumer may still be waiting to be discarded; but
  // over a window of twice the occupied channels (at least 32), not all of
  // channel_max: rabbitmq-c keeps a decoding pool (a frame_max page, 128 KiB)
  // per channel number ever used until the connection closes, so numbers
  // used once and never again add up (measured: ~110 KiB per new stream).
  // Lingering and closing channels count as occupied: a burst of ending
  // streams must not fill the window.
  const int occupied = static_cast<int>(channels_.size());
  const int window = std::max<int>(32, 2 * (occupied + 1));
  const int max = std::min({channel_max_ == 0 ? 65535 : channel_max_, 65535, window});
  for (int tries = 0; tries < max; ++tries) {
    last_channel_ = static_cast<ChannelNo>(last_channel_ >= max ? 2 : last_channel_ + 1);
    if (last_channel_ == kControlChannel) continue;
    if (!channels_.contains(last_channel_)) return last_channel_;
  }
  return 0;
}

void ConsumerLedger::StartSetup(uint64_t stream_id) {
  Stream& stream = streams_.at(stream_id);
  const ChannelNo ch = AllocateChannel();
  if (ch == 0) {
    EndStream(stream_id,
              absl::ResourceExhaustedError(util::StrCat("no free AMQP channel (channel_max ",
                                                        channel_max_, ", ", channels_.size(),
                                                        " in use or closing)")),
              false);
    return;
  }
  stream.channel = ch;
  channels_[ch] = ChannelInfo{ChannelState::kOpening, stream_id, {}, ++next_epoch_, 0};
  out_->SendOpen(ch);
}

void ConsumerLedger::Open(OpenRequest req) {
  if (draining_) {
    req.sink->OnClosed(absl::UnavailableError("mq-sidecar is shutting down"));
    return;
  }
  const uint64_t id = req.stream_id;
  Stream& stream = streams_[id];
  stream.open = std::move(req);
  if (out_ == nullptr) {
    // Consuming starts when the connection is back.
    spdlog::info("[consumer] stream {} waits for the broker", id);
    return;
  }
  StartSetup(id);
}

void ConsumerLedger::OnOpenOk(ChannelNo ch) {
  auto it = channels_.find(ch);
  if (it == channels_.end() || it->second.state != ChannelState::kOpening) return;
  const Stream& stream = streams_.at(it->second.stream_id);
  it->second.state = ChannelState::kQos;
  out_->SendQos(ch, static_cast<uint16_t>(std::min<uint32_t>(stream.open.prefetch, 65535)));
}

void ConsumerLedger::OnQosOk(ChannelNo ch) {
  auto it = channels_.find(ch);
  if (it == channels_.end() || it->second.state != ChannelState::kQos) return;
  const Stream& stream = streams_.at(it->second.stream_id);
  it->second.state = ChannelState::kConsume;
  out_->SendConsume(ch, stream.open.queue, stream.open.consumer_tag);
}

void ConsumerLedger::OnConsumeOk(ChannelNo ch) {
  auto it = channels_.find(ch);
  if (it == channels_.end() || it->second.state != ChannelState::kConsume) return;
  it->second.state = ChannelState::kConsuming;
  const uint64_t id = it->second.stream_id;
  const Stream& stream = streams_.at(id);
  if (stream.resumed) {
    util::LogWith(spdlog::level::info, {{"business", stream.open.business}},
                  "[consumer] stream {} resumed on channel {} ({} deliveries will come again)", id,
                  ch, stream.stale.size());
  } else {
    util::LogWith(spdlog::level::info, {{"business", stream.open.business}},
                  "[consumer] stream {} consumes '{}' on channel {} (prefetch {}, tag {})", id,
                  util::ForLog(stream.open.queue), ch, stream.open.prefetch,
                  util::ForLog(stream.open.consumer_tag));
  }
}

void ConsumerLedger::OnCloseOk(ChannelNo ch) {
  auto it = channels_.find(ch);
  if (it != channels_.end() && it->second.state == ChannelState::kClosing) channels_.erase(it);
}

void ConsumerLedger::OnBrokerClose(ChannelNo ch, int reply_code, std::string_view text) {
  if (out_ != nullptr) out_->SendCloseOk(ch);
  auto it = channels_.find(ch);
  if (it == channels_.end()) return;
  if (it->second.state == ChannelState::kClosing) {
    // Our channel.close crossed the broker's: the broker answers ours with
    // close-ok, which frees the number.
    return;
  }
  const uint64_t stream_id = it->second.stream_id;
  const ChannelState state = it->second.state;
  channels_.erase(it);
  if (stream_id != 0) {
    const Stream& stream = streams_.at(stream_id);
    absl::Status why;
    switch (state) {
      case ChannelState::kOpening:
        why = StatusForReply(reply_code, util::StrCat("channel.open ", ch, ": ", text));
        break;
      case ChannelState::kQos:
        why = StatusForReply(reply_code, util::StrCat("basic.qos: ", text));
        break;
      case ChannelState::kConsume:
        why = StatusForReply(
            reply_code,
            util::StrCat("consume from queue '", util::ForLog(stream.open.queue), "': ", text));
        break;
      default:
        why = absl::AbortedError(
            util::StrCat("the broker closed this stream's channel: ", reply_code, " ", text));
    }
    streams_.at(stream_id).channel = 0;
    EndStream(stream_id, why, /*close_channel=*/false);
  }
}

bool ConsumerLedger::OnBrokerCancel(ChannelNo ch) {
  auto it = channels_.find(ch);
  if (it == channels_.end() || it->second.stream_id == 0) return false;
  EndStream(it->second.stream_id,
            absl::UnavailableError("the broker cancelled this consumer: its queue was "
                                   "deleted or became unavailable; subscribe again"),
            true);
  return true;
}

ConsumerLedger::Stream* ConsumerLedger::ConsumingOn(ChannelNo ch, const std::string& consumer_tag) {
  auto it = channels_.find(ch);
  if (it == channels_.end() || it->second.state != ChannelState::kConsuming) return nullptr;
  Stream& stream = streams_.at(it->second.stream_id);
  // A delivery for an earlier consumer on a reused channel number.
  if (stream.open.consumer_tag != consumer_tag) return nullptr;
  return &stream;
}

void ConsumerLedger::OnDelivery(ChannelNo ch, uint64_t tag, const std::string& consumer_tag,
                                mqsidecar::v1::Delivery&& delivery,
                                std::shared_ptr<const CapturedMessage> captured) {
  // A delivery for a channel being set up, lingering or closing is dropped:
  // the broker requeues it when the channel closes.
  Stream* stream = ConsumingOn(ch, consumer_tag);
  if (stream == nullptr) return;
  const uint64_t id = stream->id_offset + tag;
  delivery.set_delivery_id(id);
  delivery.set_business(stream->open.business);
  stream->unacked.insert(id);
  if (captured != nullptr) stream->captured[id] = std::move(captured);
  stream->max_id = std::max(stream->max_id, id);
  stream->open.sink->OnDelivery(std::move(delivery));
}

bool ConsumerLedger::AdmitSize(ChannelNo ch, uint64_t tag, const std::string& consumer_tag,
                               const std::string& message_id, uint64_t bytes, uint64_t limit) {
  Stream* stream = ConsumingOn(ch, consumer_tag);
  if (stream == nullptr) return true;  // dropped anyway when complete
  // business (tag, length, text) and delivery_id (tag, varint) come on top.
  const uint64_t total = bytes + stream->open.business.size() + 6 + 11;
  if (total <= limit) return true;
  util::LogWith(
      spdlog::level::err, {{"business", stream->open.business}},
      "[consumer] stream {}: delivery from queue '{}' (message_id '{}', {} bytes as a Delivery) "
      "is larger than the gRPC send limit ({} bytes); rejected without requeue (dead-lettered if "
      "the queue has a dead-letter exchange, else dropped by the broker)",
      stream->open.stream_id, util::ForLog(stream->open.queue), util::ForLog(message_id), total,
      limit);
  // Acks queued before it in this batch may be coalesced after it into a
  // multiple ack: the broker no longer holds this tag, so that ack skips it.
  out_->SendReject(ch, tag, /*requeue=*/false);
  stream->max_id = std::max(stream->max_id, stream->id_offset + tag);
  return false;
}

void ConsumerLedger::Settle(uint64_t stream_id, uint64_t delivery_id, bool ack, bool requeue,
                            bool multiple) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return;  // stream already ended: its deliveries are requeued
  Stream& stream = it->second;
  if (stream.stale.erase(delivery_id) > 0) {
    // Delivered on a connection that has since died: the broker requeued it
    // and will deliver it again (redelivered=true). Sending this ack on the
    // new channel would name a foreign tag and close it with 406. Live ids
    // are all higher than stale ones, so `multiple` covers stale ones only.
    if (multiple) stream.stale.erase(stream.stale.begin(), stream.stale.upper_bound(delivery_id));
    spdlog::debug("[consumer] stream {}: {} of stale delivery_id {} ignored; it is redelivered",
                  stream_id, ack ? "ack" : "nack", delivery_id);
    MaybeEndDrained(stream_id);
    return;
  }
  auto live = stream.unacked.find(delivery_id);
  if (live == stream.unacked.end() || stream.retrying.contains(delivery_id)) {
    FlushAcks();  // what the client acked before this mistake still counts
    EndStream(stream_id,
              absl::InvalidArgumentError(util::StrCat(
                  ack ? "ack" : "nack", " of delivery_id ", delivery_id,
                  ": unknown or already settled on this stream; the stream is closed and its "
                  "unacked deliveries return to the queue")),
              true);
    return;
  }
  if (multiple && !stream.retrying.empty() && *stream.retrying.begin() < delivery_id) {
    // AMQP's `multiple` would settle a delivery held for a retry too: the
    // range is settled one by one around it.
    stream.stale.clear();
    for (uint64_t id : LiveUpTo(stream_id, delivery_id)) Settle(stream_id, id, ack, requeue, false);
    return;
  }
  if (multiple) {
    // Like AMQP's `multiple`: the id must be unacked, and it settles every
    // lower one too (stale ones included: the broker has requeued those).
    stream.unacked.erase(stream.unacked.begin(), std::next(live));
    stream.captured.erase(stream.captured.begin(), stream.captured.upper_bound(delivery_id));
    stream.stale.clear();
  } else {
    stream.unacked.erase(live);
    stream.captured.erase(delivery_id);
  }
  if (out_ == nullptr || stream.channel == 0) return;  // cannot happen: ids are live
  if (ack) {
    // FlushAcks sends one basic.ack with multiple=true up to the highest
    // acked id below the lowest unacked one, which covers this whole range.
    if (stream.to_ack.empty()) ack_streams_.push_back(stream_id);
    stream.to_ack.push_back(delivery_id);
    return;
  }
  // Pending acks were flushed before this command, so the broker's unacked
  // tags up to this one are exactly the range erased above.
  out_->SendNack(stream.channel, delivery_id - stream.id_offset, multiple, requeue);
  stream.last_settle = now_();
  MaybeEndDrained(stream_id);
}

void ConsumerLedger::FlushAcks() {
  std::vector<uint64_t> ids_to_check;
  ids_to_check.swap(ack_streams_);
  for (uint64_t stream_id : ids_to_check) {
    auto it = streams_.find(stream_id);
    if (it == streams_.end()) continue;
    Stream& stream = it->second;
    if (stream.to_ack.empty()) continue;
    if (out_ != nullptr && stream.channel != 0) {
      std::vector<uint64_t>& ids = stream.to_ack;
      std::sort(ids.begin(), ids.end());
      // Every id below the lowest unacked one is settled now: tags on a
      // channel are delivered (and so recorded) in order.
      const uint64_t low = stream.unacked.empty() ? UINT64_MAX : *stream.unacked.begin();
      const auto split = std::lower_bound(ids.begin(), ids.end(), low);
      bool ok = true;
      if (split != ids.begin()) {
        ok = out_->SendAck(stream.channel, *(split - 1) - stream.id_offset, /*multiple=*/true);
      }
      for (auto id = split; id != ids.end() && ok; ++id) {
        ok = out_->SendAck(stream.channel, *id - stream.id_offset, false);
      }
      stream.last_settle = now_();
    }
    stream.to_ack.clear();
    MaybeEndDrained(stream_id);
  }
}

void ConsumerLedger::Drain() {
  draining_ = true;
  std::vector<uint64_t> ids;
  for (const auto& [id, stream] : streams_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) {
    Stream& stream = streams_.at(id);
    if (stream.cancelled) continue;
    stream.cancelled = true;
    if (out_ == nullptr || stream.channel == 0) continue;
    // Asynchronous: deliveries already on their way still reach the stream
    // (to be settled before it ends); cancel-ok is ignored when it comes.
    if (channels_.at(stream.channel).state == ChannelState::kConsuming) {
      out_->SendCancel(stream.channel, stream.open.consumer_tag);
    }
  }
  spdlog::info("[consumer] draining {} streams: no new deliveries; each ends once acked",
               ids.size());
  // A stream still being set up holds nothing: it ends here, its channel closed.
  for (uint64_t id : ids) MaybeEndDrained(id);
}

void ConsumerLedger::MaybeEndDrained(uint64_t stream_id) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end() || !it->second.cancelled || !it->second.unacked.empty()) return;
  EndStream(stream_id,
            absl::UnavailableError("mq-sidecar is shutting down; every delivery was settled"),
            true);
}

void ConsumerLedger::EndAll(const absl::Status& why) {
  std::vector<uint64_t> ids;
  for (const auto& [id, stream] : streams_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) EndStream(id, why, true);
}

void ConsumerLedger::SendClose(ChannelNo ch, ChannelInfo& info) {
  info.state = ChannelState::kClosing;
  info.stream_id = 0;
  out_->SendClose(ch);
}

void ConsumerLedger::EndStream(uint64_t stream_id, const absl::Status& why, bool close_channel) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return;
  Stream stream = std::move(it->second);
  streams_.erase(it);
  if (stream.channel != 0 && out_ != nullptr) {
    auto ch = channels_.find(stream.channel);
    if (close_channel && ch != channels_.end() && ch->second.stream_id == stream_id) {
      const auto close_at = stream.last_settle + kSettleLinger;
      if (ch->second.state == ChannelState::kConsuming &&
          (close_at > now_() || ch->second.retries > 0)) {
        // The cancel is asynchronous (cancel-ok is ignored when it comes):
        // deliveries already on their way are dropped here and requeued by
        // the close.
        if (!stream.cancelled) out_->SendCancel(stream.channel, stream.open.consumer_tag);
        ch->second.state = ChannelState::kLingering;
        ch->second.stream_id = 0;
        ch->second.close_at = close_at;
      } else {
        // Also mid set-up: the broker handles the close after the open,
        // qos or consume already sent, and answers close-ok last.
        SendClose(stream.channel, ch->second);
      }
    }
  }
  util::LogWith(spdlog::level::info, {{"business", stream.open.business}},
                "[consumer] stream {} ended ({} unacked returned to '{}'): {}", stream_id,
                stream.unacked.size(), util::ForLog(stream.open.queue),
                why.ok() ? std::string("closed by the client") : std::string(why.message()));
  stream.open.sink->OnClosed(why);
}

void ConsumerLedger::CloseDue() {
  if (out_ == nullptr) return;
  const auto now = now_();
  for (auto& [ch, info] : channels_) {
    if (info.state == ChannelState::kLingering && info.close_at <= now && info.retries == 0) {
      SendClose(ch, info);
    }
  }
}

// ---------------------------------------------------------------------------
// Delayed retry

std::optional<ConsumerLedger::RetryTicket> ConsumerLedger::TakeForRetry(uint64_t stream_id,
                                                                        uint64_t delivery_id) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return std::nullopt;
  Stream& stream = it->second;
  auto captured = stream.captured.find(delivery_id);
  if (captured == stream.captured.end() || !stream.unacked.contains(delivery_id) ||
      stream.retrying.contains(delivery_id) || out_ == nullptr || stream.channel == 0) {
    // Stale, unknown or already held: answered as a plain settle would be.
    Settle(stream_id, delivery_id, false, true, false);
    return std::nullopt;
  }
  ChannelInfo& info = channels_.at(stream.channel);
  ++info.retries;
  stream.retrying.insert(delivery_id);
  return RetryTicket{
      stream_id,       delivery_id, stream.channel, info.epoch, delivery_id - stream.id_offset,
      captured->second};
}

void ConsumerLedger::FinishRetry(const RetryTicket& t, bool confirmed) {
  auto s = streams_.find(t.stream_id);
  if (s != streams_.end() && s->second.retrying.erase(t.delivery_id) > 0) {
    s->second.unacked.erase(t.delivery_id);
    s->second.captured.erase(t.delivery_id);
  }
  auto ch = channels_.find(t.channel);
  if (out_ == nullptr || ch == channels_.end() || ch->second.epoch != t.epoch) {
    // The channel is gone, and with it the broker requeued the original: if
    // the copy was confirmed too, the message comes twice (redelivered).
    spdlog::warn(
        "[consumer] stream {}: delivery_id {} was requeued with its channel before its retry "
        "copy was {}",
        t.stream_id, t.delivery_id, confirmed ? "confirmed: it comes again as well" : "confirmed");
    return;
  }
  ChannelInfo& info = ch->second;
  if (info.retries > 0) --info.retries;
  if (info.state == ChannelState::kClosing) return;  // the close requeues it
  if (confirmed && s != streams_.end() && s->second.channel == t.channel) {
    // With the stream's other acks, so a multiple ack can cover it.
    Stream& stream = s->second;
    if (stream.to_ack.empty()) ack_streams_.push_back(t.stream_id);
    stream.to_ack.push_back(t.delivery_id);
    return;
  }
  if (confirmed) {
    out_->SendAck(t.channel, t.tag, false);
  } else {
    out_->SendNack(t.channel, t.tag, false, /*requeue=*/true);
  }
  if (s != streams_.end()) {
    s->second.last_settle = now_();
    MaybeEndDrained(t.stream_id);
  }
}

std::vector<uint64_t> ConsumerLedger::LiveUpTo(uint64_t stream_id, uint64_t delivery_id) const {
  std::vector<uint64_t> ids;
  auto it = streams_.find(stream_id);
  if (it == streams_.end() || !it->second.unacked.contains(delivery_id)) return ids;
  for (uint64_t id : it->second.unacked) {
    if (id > delivery_id) break;
    if (!it->second.retrying.contains(id)) ids.push_back(id);
  }
  return ids;
}

const OpenRequest* ConsumerLedger::open_request(uint64_t stream_id) const {
  auto it = streams_.find(stream_id);
  return it == streams_.end() ? nullptr : &it->second.open;
}

bool ConsumerLedger::CapturesOn(ChannelNo ch) const {
  auto c = channels_.find(ch);
  if (c == channels_.end() || c->second.stream_id == 0) return false;
  auto s = streams_.find(c->second.stream_id);
  return s != streams_.end() && s->second.open.config != nullptr &&
         s->second.open.config->retry.enabled();
}

}  // namespace mqs::amqp
