#include "amqp/publisher.h"

#include <chrono>

#include "amqp/topology.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::amqp {
namespace {

using mqsidecar::v1::PublishResult;
// The publishing channel of a fresh connection (a renewal alternates 1 and 2).
constexpr amqp_channel_t kFirstChannel = 1;
// A batch is written once it holds this much (bounded memory, early first bytes).
constexpr size_t kMaxBatchBytes = size_t{256} * 1024;

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// WriteTimeout: a broker that takes nothing for 2 x heartbeat is as good as
// dead (the same rule as for reading); without heartbeats, give it 30 s.
std::chrono::milliseconds WriteTimeout(const Connection& conn) {
  const int hb = conn.heartbeat_seconds();
  return std::chrono::milliseconds(hb > 0 ? hb * 2000 : 30000);
}

}  // namespace

class Publisher::Sink final : public PublishSink {
 public:
  Sink(Publisher& p, Connection& conn)
      : p_(p), conn_(conn), frame_max_(conn.frame_max()), now_(NowSeconds()) {}
  absl::Status Add(const PublishJob& job) override {
    const auto& r = job.request;
    if (job.copy != nullptr) {
      std::vector<CopyProperties::Header> headers = job.copy->headers;
      if (job.sent_before) headers.push_back({kRepublishedHeader, std::string("true")});
      // x-delivery-count is the old queue's; a quorum queue counts afresh.
      p_.copy_props_.Build(job.copy->message->props(), std::move(headers), {"x-delivery-count"});
      return Publish(job.exchange, r.routing_key(), *p_.copy_props_.props(),
                     job.copy->message->body);
    }
    p_.props_.Build(r, r.message_id(), now_, job.sent_before);
    return Publish(job.exchange, r.routing_key(), *p_.props_.props(), r.payload());
  }
  bool Write(bool all) override {
    if (conn_.tls()) {
      if (tls_error_.ok()) return true;
      spdlog::warn("[publisher] {}", tls_error_.message());
      conn_.MarkDead();
      return false;
    }
    if (!all && p_.out_.bytes() < kMaxBatchBytes) return true;
    return p_.WriteBatch(conn_);
  }

 private:
  absl::Status Publish(const std::string& exchange, const std::string& routing_key,
                       const amqp_basic_properties_t& props, std::string_view body) {
    // Encoding first also checks that the properties fit in one frame, so a
    // message that cannot be sent fails alone, before any byte of it is out.
    if (absl::Status s = p_.out_.Add(p_.channel_, exchange, routing_key, /*mandatory=*/true, props,
                                     body, frame_max_);
        !s.ok()) {
      return s;
    }
    if (!conn_.tls()) return absl::OkStatus();
    // The batch writes plaintext to the socket; over TLS the same frames go
    // through rabbitmq-c, which encrypts them (one write per frame). Its
    // writes have no deadline of their own; only the socket's
    // TCP_USER_TIMEOUT and keepalive bound them (docs/security.md).
    p_.out_.Clear();
    if (!tls_error_.ok()) return absl::OkStatus();  // pending; lost with the connection
    // The same bound as the plaintext write's (WriteBatch), kept by another
    // thread (ExpireStuckWrite) since rabbitmq-c's TLS write has none.
    p_.tls_write_.Arm(conn_.fd(), std::chrono::steady_clock::now() + WriteTimeout(conn_));
    const int rc =
        amqp_basic_publish(conn_.state(), p_.channel_, AmqpBytes(exchange), AmqpBytes(routing_key),
                           /*mandatory=*/1, /*immediate=*/0, &props,
                           amqp_bytes_t{body.size(), const_cast<char*>(body.data())});
    p_.tls_write_.Disarm();
    // Part of it may be out: it stays pending (Write reports the loss).
    if (rc != AMQP_STATUS_OK) tls_error_ = StatusFromLibrary(rc, "publishing over TLS");
    return absl::OkStatus();
  }

  Publisher& p_;
  Connection& conn_;
  const uint32_t frame_max_;
  const int64_t now_;
  absl::Status tls_error_;
};

Publisher::Publisher(const config::Config& config, const config::TopologyPlan& plan,
                     std::function<void()> on_state,
                     std::function<void(const absl::Status&)> on_fatal)
    : IoLoop("publisher", config.broker, std::move(on_state), std::move(on_fatal)),
      plan_(config::WithoutExclusive(plan)),
      ledger_(config.publish.republish_unconfirmed) {}

Publisher::~Publisher() { Stop(std::chrono::milliseconds(0)); }

bool Publisher::IsFatal(const absl::Status& s) const { return IsTopologyConflict(s); }

absl::Status Publisher::OpenPublishingChannel(Connection& conn, amqp_channel_t channel) const {
  if (absl::Status s = conn.OpenChannel(channel); !s.ok()) return s;
  if (absl::Status s = DeclareTopology(conn, channel, plan_); !s.ok()) return s;
  amqp_confirm_select(conn.state(), channel);
  return conn.RpcStatus("confirm.select", channel);
}

absl::Status Publisher::SetUpChannel(Connection& conn, amqp_channel_t close_first) {
  channel_ok_ = false;
  // The round trips (close, open, declares, confirm.select) wait for the
  // broker: on a helper thread, while this one answers publishes at their
  // deadlines (a node that stops answering just now holds them for the RPC
  // timeout, not every caller).
  renewing_ = true;
  const amqp_channel_t channel = channel_;
  absl::Status s = RunWhileServing(conn, [this, &conn, channel, close_first] {
    if (close_first != 0) {
      if (absl::Status closed = conn.CloseChannel(close_first); !closed.ok()) {
        spdlog::warn("[publisher] closing the publishing channel: {}", closed.message());
      }
    }
    return OpenPublishingChannel(conn, channel);
  });
  renewing_ = false;
  if (!s.ok()) return s;
  ledger_.ChannelOpened();
  channel_ok_ = true;
  return absl::OkStatus();
}

absl::Status Publisher::PrepareConnection(Connection& conn) {
  // On the connector thread: the loop thread keeps answering publishes at
  // their deadlines while these round trips wait for the broker.
  return OpenPublishingChannel(conn, kFirstChannel);
}

absl::Status Publisher::OnConnected(Connection& conn) {
  // PrepareConnection opened channel 1 in confirm mode, topology declared.
  channel_ = kFirstChannel;
  ledger_.ChannelOpened();
  channel_ok_ = true;
  if (resend_after_loss_ && ledger_.waiting() > 0) {
    // The originals of the copies about to be sent again may still be
    // inside the broker (a frozen node's socket buffer, a stopping node's
    // queue replication) and land after their marked copies: the consumer
    // would then get the unmarked original last. Holding the resends a
    // moment lets them land first (docs/reliability.md).
    hold_until_ = std::chrono::steady_clock::now() + kResendHold;
    spdlog::info(
        "[publisher] sending again in {} ms, so that originals still inside the broker "
        "land before their copies",
        kResendHold.count());
  }
  resend_after_loss_ = false;
  return absl::OkStatus();
}

void Publisher::OnDisconnected(const absl::Status& why) {
  channel_ok_ = false;
  reset_channel_ = false;  // the next connection opens a fresh channel anyway
  const size_t before = ledger_.waiting();
  ledger_.Lost(util::StrCat("connection to the broker lost before the confirm: ", why.message()),
               stop_requested());
  if (ledger_.waiting() > before) {
    resend_after_loss_ = true;
    spdlog::info("[publisher] {} unconfirmed publishes will be sent again",
                 ledger_.waiting() - before);
  }
}

void Publisher::ProcessInbox(Connection* conn) {
  inbox_.Drain(batch_);
  for (PublishJob& job : batch_) ledger_.Enqueue(std::move(job));
  batch_.clear();
  Expire(conn, false);
  if (conn != nullptr) MaybeResetChannel(*conn);
  Flush(conn);
}

bool Publisher::Sendable(const Connection* conn) const {
  return conn != nullptr && !conn->dead() && channel_ok_ && !blocked() && !reset_channel_ &&
         !Holding();
}

bool Publisher::Holding() const {
  return !draining_.load(std::memory_order_acquire) &&
         std::chrono::steady_clock::now() < hold_until_;
}

void Publisher::MaybeResetChannel(Connection& conn) {
  if (!reset_channel_ || conn.dead()) return;
  // Wait until everything in flight is settled or answered (at its deadline
  // at the latest), so the reset turns no publish into a republished copy.
  if (!ledger_.Quiet()) return;
  reset_channel_ = false;
  ledger_.Lost("the publishing channel was renewed after a basic.nack", stop_requested());
  // A new number: a late confirm for the old channel's tags, still queued in
  // rabbitmq-c, must not settle the new channel's publishes.
  const amqp_channel_t old_channel = channel_;
  channel_ = channel_ == 1 ? 2 : 1;
  if (absl::Status s = SetUpChannel(conn, old_channel); !s.ok()) {
    spdlog::error("[publisher] reopening the publishing channel failed: {}", s.message());
    conn.MarkDead();
    return;
  }
  spdlog::info("[publisher] publishing channel renewed after a basic.nack");
}

void Publisher::Expire(Connection* conn, bool force) {
  // Final: the loop is stopping for good, or shutdown has begun; what cannot
  // be sent now is answered at once.
  const bool final =
      (stop_requested() && conn == nullptr) || draining_.load(std::memory_order_acquire);
  const auto now = std::chrono::steady_clock::now();
  if (!force && !final && now < next_expiry_scan_) return;
  next_expiry_scan_ = now + std::chrono::milliseconds(20);
  ledger_.ExpirePending(now, blocked());
  // While the channel takes publishes, Flush sends the waiting jobs (or
  // answers those past their deadline) itself.
  if (ledger_.waiting() == 0 || (Sendable(conn) && !ledger_.probing())) return;
  const bool alarm = conn != nullptr && blocked();
  const absl::StatusCode code =
      alarm ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kUnavailable;
  std::string why;
  if (final) {
    why = "mq-sidecar is shutting down";
  } else if (alarm) {
    why = "the broker has blocked publishing (resource alarm) past the deadline";
  } else if (Sendable(conn)) {
    why =
        "publishing was paused to resend, one at a time, the publishes in flight when the "
        "broker closed the channel, past the deadline";
  } else if (conn != nullptr && channel_ok_ && Holding()) {
    why =
        "publishes in flight at a lost connection were held before being sent again, past the "
        "deadline";
  } else if (conn != nullptr && channel_ok_ && reset_channel_) {
    why = "the publishing channel was being renewed after a basic.nack past the deadline";
  } else if (renewing_) {
    why =
        "the publishing channel was being set up again (after a basic.nack or a channel error) "
        "past the deadline";
  } else {
    why =
        util::StrCat("the broker is unavailable (", LinkStateName(state()), ") past the deadline");
  }
  ledger_.ExpireWaiting(now, why, code, final);
}

void Publisher::Flush(Connection* conn) {
  if (!Sendable(conn)) return;
  Sink sink(*this, *conn);
  ledger_.Send(std::chrono::steady_clock::now(), sink);
}

void Publisher::ExpireStuckWrite(std::chrono::steady_clock::time_point now) {
  if (tls_write_.Expire(now)) {
    spdlog::warn(
        "[publisher] a TLS write to the broker made no progress for 2 x heartbeat: connection "
        "shut down (a broker that stopped reading)");
  }
}

bool Publisher::WriteBatch(Connection& conn) {
  if (out_.empty()) return true;
  if (absl::Status s = out_.WriteTo(conn.fd(), WriteTimeout(conn)); !s.ok()) {
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
  if (!ledger_.Settle(tag, multiple, status)) {
    spdlog::warn("[publisher] confirm for unknown delivery tag {} (pending {}..{})", tag,
                 ledger_.first_tag(), ledger_.next_tag() - 1);
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
  if (!ledger_.Return(exchange, routing_key, message_id, reason)) {
    spdlog::warn("[publisher] basic.return for message_id '{}' matches no pending publish",
                 util::ForLog(message_id));
  }
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
      // Probe mode: the next probe goes as soon as this one is settled.
      if (ledger_.probing()) Flush(&conn);
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
            ledger_.unsettled());
      }
      reset_channel_ = true;
      MaybeResetChannel(conn);
      break;
    }
    case AMQP_BASIC_RETURN_METHOD:
      OnReturn(conn, *static_cast<amqp_basic_return_t*>(m.decoded), frame.channel);
      break;
    case AMQP_CHANNEL_CLOSE_METHOD: {
      // A channel error (a publish the broker refuses, an exchange deleted
      // under us) concerns only what was in flight on the channel: the
      // ledger answers the refused publish alone or resends the others one
      // at a time (publish_ledger.h); reopen the channel (declaring the
      // topology again) and carry on.
      auto* close = static_cast<amqp_channel_close_t*>(m.decoded);
      const size_t in_flight = ledger_.unsettled();
      spdlog::warn(
          "[publisher] publishing channel closed by the broker: {} {} ({} publishes in flight{})",
          close->reply_code, util::ForLog(AmqpText(close->reply_text)), in_flight,
          in_flight == 1  ? ": the one refused, answered alone"
          : in_flight > 1 ? ": resent one at a time to find the one refused"
                          : "");
      conn.SendChannelCloseOk(frame.channel);
      ledger_.ChannelClosed(close->reply_code, AmqpText(close->reply_text), stop_requested());
      if (absl::Status s = SetUpChannel(conn); !s.ok()) {
        spdlog::error("[publisher] reopening the channel failed: {}", s.message());
        conn.MarkDead();
      } else {
        spdlog::info("[publisher] publishing channel open again, topology declared");
      }
      break;
    }
    default:
      spdlog::debug("[publisher] ignoring method 0x{:08x} on channel {}", m.id, frame.channel);
  }
}

}  // namespace mqs::amqp
