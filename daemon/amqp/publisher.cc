#include "amqp/publisher.h"

#include <chrono>

#include "amqp/topology.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::amqp {
namespace {

using mqsidecar::v1::PublishResult;
// A batch is written once it holds this much (bounded memory, early first bytes).
constexpr size_t kMaxBatchBytes = size_t{256} * 1024;

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Publisher::Publisher(const config::Config& config, const config::TopologyPlan& plan,
                     std::function<void()> on_state,
                     std::function<void(const absl::Status&)> on_fatal)
    : IoLoop("publisher", config.broker, std::move(on_state), std::move(on_fatal)),
      plan_(plan),
      republish_(config.publish.republish_unconfirmed) {}

Publisher::~Publisher() { Stop(std::chrono::milliseconds(0)); }

bool Publisher::IsFatal(const absl::Status& s) const { return IsTopologyConflict(s); }

absl::Status Publisher::SetUpChannel(Connection& conn) {
  channel_ok_ = false;
  if (absl::Status s = conn.OpenChannel(channel_); !s.ok()) return s;
  if (absl::Status s = DeclareTopology(conn, channel_, plan_); !s.ok()) return s;
  amqp_confirm_select(conn.state(), channel_);
  if (absl::Status s = conn.RpcStatus("confirm.select", channel_); !s.ok()) return s;
  first_tag_ = next_tag_ = 1;
  channel_ok_ = true;
  return absl::OkStatus();
}

absl::Status Publisher::OnConnected(Connection& conn) {
  channel_ = 1;
  return SetUpChannel(conn);
}

void Publisher::OnDisconnected(const absl::Status& why) {
  channel_ok_ = false;
  reset_channel_ = false;  // the next connection opens a fresh channel anyway
  RequeueOrFailPending(
      util::StrCat("connection to the broker lost before the confirm: ", why.message()));
}

void Publisher::Complete(PublishJob& job, PublishResult::Status status, std::string_view error,
                         absl::StatusCode code) {
  PublishResult result;
  result.set_sequence(job.request.sequence());
  result.set_message_id(job.request.message_id());
  result.set_status(status);
  if (!error.empty()) result.set_error(std::string(error));
  job.done(std::move(result), code);
}

void Publisher::RequeueOrFailPending(std::string_view why) {
  const bool requeue = republish_ && !stop_requested();
  // Back to the front of waiting_, in publish order, ahead of newer work.
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    if (it->settled || it->answered) continue;
    if (requeue) {
      it->job.sent_before = true;
      waiting_.push_front(std::move(it->job));
    } else {
      Complete(it->job, PublishResult::UNCONFIRMED,
               util::StrCat(why, " (the message may or may not be queued)"));
    }
  }
  if (requeue && !pending_.empty()) {
    spdlog::info("[publisher] {} unconfirmed publishes will be sent again", waiting_.size());
  }
  pending_.clear();
  first_tag_ = next_tag_;
}

void Publisher::ProcessInbox(Connection* conn) {
  inbox_.Drain(batch_);
  for (PublishJob& job : batch_) waiting_.push_back(std::move(job));
  batch_.clear();
  ExpirePending();
  if (conn != nullptr) MaybeResetChannel(*conn);
  Flush(conn);
}

void Publisher::MaybeResetChannel(Connection& conn) {
  if (!reset_channel_ || conn.dead()) return;
  // Wait until everything in flight is settled or answered (at its deadline
  // at the latest), so the reset turns no publish into a republished copy.
  for (const Pending& p : pending_) {
    if (!p.settled && !p.answered) return;
  }
  reset_channel_ = false;
  if (absl::Status s = conn.CloseChannel(channel_); !s.ok()) {
    spdlog::warn("[publisher] closing the publishing channel: {}", s.message());
  }
  RequeueOrFailPending("the publishing channel was renewed after a basic.nack");
  // A new number: a late confirm for the old channel's tags, still queued in
  // rabbitmq-c, must not settle the new channel's publishes.
  channel_ = channel_ == 1 ? 2 : 1;
  if (absl::Status s = SetUpChannel(conn); !s.ok()) {
    spdlog::error("[publisher] reopening the publishing channel failed: {}", s.message());
    conn.MarkDead();
    return;
  }
  spdlog::info("[publisher] publishing channel renewed after a basic.nack");
}

void Publisher::ExpirePending() {
  if (pending_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_expiry_scan_) return;
  next_expiry_scan_ = now + std::chrono::milliseconds(50);
  for (Pending& p : pending_) {
    if (p.answered || p.job.deadline > now) continue;
    p.answered = true;
    Complete(p.job, PublishResult::UNCONFIRMED,
             blocked() ? "sent, but the broker blocked publishing (resource alarm) and did not "
                         "confirm it before the deadline; it may or may not be queued"
                       : "sent, but the broker did not confirm it before the deadline; it may "
                         "or may not be queued");
  }
}

void Publisher::Flush(Connection* conn) {
  if (conn != nullptr && !conn->dead() && channel_ok_ && !blocked() && !reset_channel_) {
    const uint32_t frame_max = conn->frame_max();
    const int64_t now = NowSeconds();
    while (!waiting_.empty()) {
      PublishJob job = std::move(waiting_.front());
      waiting_.pop_front();
      const auto& r = job.request;
      props_.Build(r, r.message_id(), now, job.sent_before);
      absl::Status s = out_.Add(channel_, job.exchange, r.routing_key(), /*mandatory=*/true,
                                *props_.props(), r.payload(), frame_max);
      if (!s.ok()) {
        Complete(job, PublishResult::FAILED, util::StrCat(s.message(), ": not sent"),
                 absl::StatusCode::kInvalidArgument);
        continue;
      }
      // Tags follow the order of the frames in the batch.
      Pending& p = pending_.emplace_back();
      p.job = std::move(job);
      ++next_tag_;
      if (out_.bytes() >= kMaxBatchBytes && !WriteBatch(*conn)) return;
    }
    WriteBatch(*conn);
    return;
  }
  if (waiting_.empty()) return;
  // Not sendable: answer what has waited past its deadline, or everything
  // when the loop is stopping for good.
  const auto now = std::chrono::steady_clock::now();
  const bool final =
      (stop_requested() && conn == nullptr) || draining_.load(std::memory_order_acquire);
  const bool alarm = conn != nullptr && blocked();
  std::deque<PublishJob> keep;
  for (PublishJob& job : waiting_) {
    if (!final && job.deadline > now) {
      keep.push_back(std::move(job));
      continue;
    }
    const std::string why =
        final ? std::string("mq-sidecar is shutting down")
        : alarm
            ? std::string("the broker has blocked publishing (resource alarm) past the deadline")
            : util::StrCat("the broker is unavailable (", LinkStateName(state()),
                           ") past the deadline");
    if (job.sent_before) {
      Complete(job, PublishResult::UNCONFIRMED,
               util::StrCat(why,
                            "; it was sent once before the connection was lost, so it may "
                            "or may not be queued"));
    } else {
      Complete(job, PublishResult::FAILED, util::StrCat(why, ": not sent"),
               alarm ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kUnavailable);
    }
  }
  waiting_.swap(keep);
}

bool Publisher::WriteBatch(Connection& conn) {
  if (out_.empty()) return true;
  // A broker that takes nothing for 2 x heartbeat is as good as dead (the
  // same rule as for reading); without heartbeats, give it 30 s.
  const int hb = conn.heartbeat_seconds();
  const std::chrono::milliseconds timeout(hb > 0 ? hb * 2000 : 30000);
  if (absl::Status s = out_.WriteTo(conn.fd(), timeout); !s.ok()) {
    // Part of the batch may be out: everything in it stays pending, so the
    // disconnect republishes it or answers UNCONFIRMED.
    spdlog::warn("[publisher] {}", s.message());
    out_.Clear();
    conn.MarkDead();
    return false;
  }
  return true;
}

void Publisher::Settle(uint64_t tag, bool multiple, PublishResult::Status status) {
  if (tag < first_tag_ || tag >= next_tag_) {
    spdlog::warn("[publisher] confirm for unknown delivery tag {} (pending {}..{})", tag,
                 first_tag_, next_tag_ - 1);
    return;
  }
  const size_t last = tag - first_tag_;
  const size_t first = multiple ? 0 : last;
  for (size_t i = first; i <= last; ++i) {
    Pending& p = pending_[i];
    if (p.settled) continue;
    p.settled = true;
    if (p.answered) continue;  // answered UNCONFIRMED at its deadline
    p.answered = true;
    if (p.returned) {
      Complete(p.job, PublishResult::UNROUTABLE, p.return_reason);
    } else if (status == PublishResult::REJECTED && p.job.sent_before) {
      // This copy was refused, but the first send, whose confirm was lost
      // with its connection, may be queued: the outcome is unknown.
      Complete(p.job, PublishResult::UNCONFIRMED,
               "the broker refused this copy (basic.nack), but an earlier send of it, whose "
               "confirm was lost with the connection, may be queued");
    } else if (status == PublishResult::REJECTED) {
      Complete(p.job, PublishResult::REJECTED, "the broker refused the message (basic.nack)");
    } else {
      Complete(p.job, status, "");
    }
  }
  while (!pending_.empty() && pending_.front().settled) {
    pending_.pop_front();
    ++first_tag_;
  }
}

void Publisher::OnReturn(Connection& conn, const amqp_basic_return_t& ret, amqp_channel_t channel) {
  // Copy what we need: the method lives in a pool ReadContent may recycle.
  const std::string exchange(AmqpText(ret.exchange));
  const std::string routing_key(AmqpText(ret.routing_key));
  const std::string reason =
      util::StrCat("returned by the broker: ", ret.reply_code, " ", AmqpText(ret.reply_text));
  amqp_message_t message;
  if (absl::Status s = conn.ReadContent(channel, &message); !s.ok()) return;
  std::string message_id;
  if (message.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
    message_id = std::string(AmqpText(message.properties.message_id));
  }
  amqp_destroy_message(&message);
  // A return carries no delivery tag, but it precedes the confirm of its
  // message, and returns come in publish order: the earliest pending publish
  // with the same exchange, routing key and message_id is the one. Two such
  // publishes route alike, so a duplicate id cannot mislead the match.
  for (Pending& p : pending_) {
    if (p.settled || p.returned) continue;
    if (p.job.request.message_id() == message_id && p.job.exchange == exchange &&
        p.job.request.routing_key() == routing_key) {
      p.returned = true;
      p.return_reason = reason;
      return;
    }
  }
  spdlog::warn("[publisher] basic.return for message_id '{}' matches no pending publish",
               message_id);
}

void Publisher::OnFrame(Connection& conn, const amqp_frame_t& frame) {
  if (frame.frame_type != AMQP_FRAME_METHOD) return;
  if (frame.channel != channel_) {
    // From a publishing channel renewed after a nack: its publishes were all
    // answered before it closed.
    spdlog::debug("[publisher] ignoring method 0x{:08x} on old channel {}", frame.payload.method.id,
                  frame.channel);
    return;
  }
  const amqp_method_t& m = frame.payload.method;
  switch (m.id) {
    case AMQP_BASIC_ACK_METHOD: {
      auto* ack = static_cast<amqp_basic_ack_t*>(m.decoded);
      Settle(ack->delivery_tag, ack->multiple != 0, PublishResult::CONFIRMED);
      MaybeResetChannel(conn);  // a nack earlier may be waiting for this
      break;
    }
    case AMQP_BASIC_NACK_METHOD: {
      auto* nack = static_cast<amqp_basic_nack_t*>(m.decoded);
      Settle(nack->delivery_tag, nack->multiple != 0, PublishResult::REJECTED);
      // RabbitMQ 3.10 binds a channel's quorum-queue publishing to the leader
      // it first looked up: a channel that met a dead leader nacks every later
      // publish. Send nothing more on it; once what is in flight has settled,
      // MaybeResetChannel opens a fresh one, which finds the current leader.
      if (!reset_channel_) {
        spdlog::warn(
            "[publisher] basic.nack: the publishing channel is renewed once the {} "
            "publishes in flight settle",
            next_tag_ - first_tag_);
      }
      reset_channel_ = true;
      MaybeResetChannel(conn);
      break;
    }
    case AMQP_BASIC_RETURN_METHOD:
      OnReturn(conn, *static_cast<amqp_basic_return_t*>(m.decoded), frame.channel);
      break;
    case AMQP_CHANNEL_CLOSE_METHOD: {
      // A channel error (e.g. an exchange deleted under us) fails only what
      // was in flight on the channel; reopen it and carry on.
      auto* close = static_cast<amqp_channel_close_t*>(m.decoded);
      const std::string why =
          util::StrCat("publishing channel closed by the broker: ", close->reply_code, " ",
                       AmqpText(close->reply_text));
      spdlog::warn("[publisher] {}", why);
      conn.SendChannelCloseOk(frame.channel);
      RequeueOrFailPending(why);
      if (absl::Status s = SetUpChannel(conn); !s.ok()) {
        spdlog::error("[publisher] reopening the channel failed: {}", s.message());
        conn.MarkDead();
      }
      break;
    }
    default:
      spdlog::debug("[publisher] ignoring method 0x{:08x} on channel {}", m.id, frame.channel);
  }
}

}  // namespace mqs::amqp
