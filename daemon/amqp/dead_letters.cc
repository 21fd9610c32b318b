#include "amqp/dead_letters.h"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_join.h"
#include "amqp/connection.h"
#include "amqp/properties.h"
#include "amqp/topology.h"
#include "spdlog/spdlog.h"
#include "util/grpc_limits.h"
#include "util/log_fields.h"
#include "util/strings.h"
#include "util/uri.h"
#include "util/utf8.h"

namespace mqs::amqp {

namespace v1 = mqsidecar::v1;
using std::chrono::milliseconds;

namespace {

constexpr std::string_view kDeliveryCountHeader = "x-delivery-count";
constexpr size_t kShortStrMax = 255;
// A listing stops before its response would pass the gRPC send limit (at
// least kMinSendBytes, whatever the config's limits).
constexpr size_t kListBytesMax = util::kMinSendBytes - size_t{64} * 1024;
// How often a wait for a confirm looks at the stop flag.
constexpr milliseconds kStopCheck{200};

const amqp_field_value_t* Find(const amqp_table_t& table, std::string_view key) {
  for (int i = 0; i < table.num_entries; ++i) {
    if (AmqpText(table.entries[i].key) == key) return &table.entries[i].value;
  }
  return nullptr;
}

std::string Text(const amqp_field_value_t* v) { return v == nullptr ? "" : FieldToString(*v); }

uint64_t Number(const amqp_field_value_t* v) {
  if (v == nullptr) return 0;
  const std::string s = FieldToString(*v);
  if (s.empty() || s[0] == '-') return 0;
  return std::strtoull(s.c_str(), nullptr, 10);
}

}  // namespace

absl::StatusOr<DeadLetterTarget> ResolveDeadLetterTarget(const config::Config& config,
                                                         std::string_view business) {
  const config::Consumer* c = config.FindConsumer(business);
  if (c == nullptr) {
    std::vector<std::string> names;
    for (const auto& x : config.consumers) names.push_back(x.name);
    return absl::InvalidArgumentError(util::StrCat(
        "unknown business '", util::ForLog(business, 256),
        "'; configured consumers: ", names.empty() ? "none" : absl::StrJoin(names, ", ")));
  }
  return DeadLetterTarget{c->name, c->queue + ".dead", c->exchange};
}

uint32_t ListLimit(uint32_t max) { return max == 0 ? kListDefault : std::min(max, kListMax); }

absl::Status ValidateReplay(const v1::ReplayDeadLettersRequest& request) {
  if (request.message_id().size() > kShortStrMax) {
    return absl::InvalidArgumentError(util::StrCat("message_id is ", request.message_id().size(),
                                                   " bytes; AMQP allows at most 255"));
  }
  return absl::OkStatus();
}

std::chrono::steady_clock::time_point RequestDeadline(
    std::chrono::system_clock::time_point call_deadline, std::chrono::system_clock::time_point now,
    std::chrono::steady_clock::time_point steady_now) {
  using Duration = std::chrono::system_clock::duration;
  Duration wait = kDeadLetterTimeCap;
  if (call_deadline != std::chrono::system_clock::time_point::max()) {
    Duration left = std::max(call_deadline - now, Duration(0));
    left -= std::min<Duration>(left / 10, milliseconds(100));
    wait = std::min(wait, left);
  }
  return steady_now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait);
}

bool ParseDeath(const amqp_table_t& headers, v1::DeadLetter* out) {
  const amqp_field_value_t* deaths = Find(headers, "x-death");
  if (deaths == nullptr || deaths->kind != AMQP_FIELD_KIND_ARRAY ||
      deaths->value.array.num_entries == 0) {
    return false;
  }
  const amqp_field_value_t& first = deaths->value.array.entries[0];
  if (first.kind != AMQP_FIELD_KIND_TABLE) return false;
  const amqp_table_t& death = first.value.table;
  out->set_reason(Text(Find(death, "reason")));
  out->set_queue(Text(Find(death, "queue")));
  out->set_original_exchange(Text(Find(death, "exchange")));
  out->set_count(
      static_cast<uint32_t>(std::min<uint64_t>(Number(Find(death, "count")), UINT32_MAX)));
  // An AMQP timestamp: seconds since the epoch.
  const uint64_t seconds = Number(Find(death, "time"));
  out->set_dead_lettered_at_ms(
      static_cast<int64_t>(std::min<uint64_t>(seconds, INT64_MAX / 1000) * 1000));
  const amqp_field_value_t* keys = Find(death, "routing-keys");
  if (keys != nullptr && keys->kind == AMQP_FIELD_KIND_ARRAY && keys->value.array.num_entries > 0) {
    out->set_original_routing_key(FieldToString(keys->value.array.entries[0]));
  }
  return true;
}

namespace {

// ReadDeath: ParseDeath, then what our own headers say instead.
void ReadDeath(const amqp_basic_properties_t& props, v1::DeadLetter* out) {
  if ((props._flags & AMQP_BASIC_HEADERS_FLAG) != 0) ParseDeath(props.headers, out);
  // A retry copy went through the default exchange: where it was first
  // published is in our headers, and x-death names the retry queue.
  if (FindHeader(props, kOriginalRoutingKeyHeader) != nullptr) {
    out->set_original_exchange(HeaderText(props, kOriginalExchangeHeader));
    out->set_original_routing_key(HeaderText(props, kOriginalRoutingKeyHeader));
  }
  // Dead-lettered by the daemon (retries exhausted), not by the broker.
  if (FindHeader(props, kDeadReasonHeader) != nullptr) {
    out->set_reason(HeaderText(props, kDeadReasonHeader));
    out->set_queue(HeaderText(props, kDeadQueueHeader));
    out->set_dead_lettered_at_ms(HeaderNumber(props, kDeadAtHeader, 0));
  }
}

}  // namespace

v1::DeadLetter ToDeadLetter(const amqp_basic_properties_t& props, amqp_bytes_t body,
                            std::string_view business, std::string_view exchange,
                            std::string_view routing_key) {
  v1::DeadLetter letter;
  v1::Delivery* d = letter.mutable_message();
  FillDelivery(props, d);
  d->set_business(std::string(business));
  d->set_exchange(util::ToValidUtf8(exchange));
  d->set_routing_key(util::ToValidUtf8(routing_key));
  d->set_payload(std::string(AmqpText(body)));
  ReadDeath(props, &letter);
  return letter;
}

std::string ReplayRoutingKey(const v1::DeadLetter& letter, std::string_view fallback) {
  // The dead-letter exchange routes with the message's own routing key (no
  // x-dead-letter-routing-key is declared), so the fallback is the same key
  // but for a message that reached the dead-letter queue another way.
  if (!letter.original_routing_key().empty()) return letter.original_routing_key();
  return std::string(fallback);
}

void ReplayProperties::Build(const amqp_basic_properties_t& original) {
  props_ = original;
  headers_.clear();
  replayed_ = 1;
  if ((original._flags & AMQP_BASIC_HEADERS_FLAG) != 0) {
    for (int i = 0; i < original.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = original.headers.entries[i];
      const std::string_view key = AmqpText(e.key);
      // A replayed message starts its retries afresh and is no longer dead.
      if (key == kDeliveryCountHeader || key == kRetriesHeader || key == kDeadReasonHeader ||
          key == kDeadQueueHeader || key == kDeadAtHeader || key == kOriginalExchangeHeader ||
          key == kOriginalRoutingKeyHeader) {
        continue;
      }
      if (key == kReplayedHeader) {
        replayed_ = static_cast<int64_t>(std::min<uint64_t>(Number(&e.value), INT64_MAX - 1)) + 1;
        continue;
      }
      headers_.push_back(e);
    }
  }
  amqp_table_entry_t mark;
  mark.key = AmqpBytes(kReplayedHeader);
  mark.value.kind = AMQP_FIELD_KIND_I64;
  mark.value.value.i64 = replayed_;
  headers_.push_back(mark);
  props_._flags |= AMQP_BASIC_HEADERS_FLAG;
  props_.headers.num_entries = static_cast<int>(headers_.size());
  props_.headers.entries = headers_.data();
}

// ---------------------------------------------------------------------------
// Session: one request's connection, deadline and broker steps.

namespace {

// Message: one message read after basic.get-ok, freed with it.
struct Message {
  uint64_t tag = 0;
  std::string exchange;
  std::string routing_key;
  amqp_message_t content{};
  bool read = false;
  Message() = default;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() {
    if (read) amqp_destroy_message(&content);
  }
};

timeval ToTimeval(milliseconds d) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(d.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((d.count() % 1000) * 1000);
  return tv;
}

enum class Confirm { kConfirmed, kNacked, kReturned };

class Session {
 public:
  using Clock = DeadLetterWorker::Clock;
  Session(DeadLetterWorker& worker, const config::Broker& broker, const DeadLetterTarget& target,
          Clock::time_point deadline)
      : worker_(worker), broker_(broker), target_(target), deadline_(deadline) {}
  ~Session() {
    // The fd is forgotten before the connection (and its socket) goes.
    worker_.SetActiveFd(-1);
    conn_.reset();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  Connection& conn() { return *conn_; }

  // Check: an error once the worker is stopping (unless `stoppable` is
  // false: a publish waiting for its confirm is seen through, within Stop's
  // grace) or the deadline has passed; otherwise the next synchronous RPC
  // gets the time left.
  absl::Status Check(std::string_view what, bool stoppable = true) {
    if (stoppable && worker_.stop_requested()) {
      return absl::UnavailableError(util::StrCat(what, ": mq-sidecar is shutting down"));
    }
    const milliseconds left = Left();
    if (left.count() <= 0) {
      return absl::DeadlineExceededError(util::StrCat(what,
                                                      ": no time left (the call's deadline, "
                                                      "at most ",
                                                      kDeadLetterTimeCap.count(), " s)"));
    }
    if (conn_) {
      timeval tv = ToTimeval(left);
      amqp_set_rpc_timeout(conn_->state(), &tv);
    }
    return absl::OkStatus();
  }

  absl::Status Connect() {
    absl::Status last = absl::UnavailableError("no broker uri configured");
    for (const std::string& uri : broker_.uris) {
      if (absl::Status s = Check("connecting to the broker"); !s.ok()) return s;
      ConnectOptions options;
      options.heartbeat = broker_.heartbeat;
      options.connect_timeout = std::min(broker_.connect_timeout, Left());
      options.rpc_timeout = Left();
      options.connection_name = "dead-letters";
      options.tls = {broker_.tls.ca, broker_.tls.cert, broker_.tls.key, broker_.tls.verify};
      absl::StatusOr<std::unique_ptr<Connection>> conn = Connection::Open(uri, options);
      if (conn.ok()) {
        conn_ = std::move(*conn);
        worker_.SetActiveFd(conn_->fd());
        return absl::OkStatus();
      }
      last = conn.status();
    }
    return absl::Status(
        last.code() == absl::StatusCode::kInternal ? absl::StatusCode::kUnavailable : last.code(),
        util::StrCat("the broker is out of reach: ", last.message()));
  }

  absl::Status OpenChannel(amqp_channel_t channel) {
    if (absl::Status s = Check("channel.open"); !s.ok()) return s;
    return conn_->OpenChannel(channel);
  }

  // Count: the dead-letter queue's ready messages; FAILED_PRECONDITION when
  // the business has no dead-letter queue.
  absl::StatusOr<uint64_t> Count(amqp_channel_t channel) {
    if (absl::Status s = Check("inspecting the dead-letter queue"); !s.ok()) return s;
    absl::StatusOr<QueueStats> stats = QueryQueue(*conn_, channel, target_.dead_queue);
    if (stats.ok()) return stats->messages;
    if (stats.status().code() == absl::StatusCode::kNotFound) {
      return absl::FailedPreconditionError(
          util::StrCat("business '", target_.business, "' has no dead-letter queue: queue '",
                       target_.dead_queue, "' does not exist on the broker (consumers.",
                       target_.business, ".max_deliveries > 0 declares it)"));
    }
    return stats.status();
  }

  // Get: the next message of the dead-letter queue, unacked; false when the
  // queue is empty.
  absl::StatusOr<bool> Get(amqp_channel_t channel, Message* out) {
    if (absl::Status s = Check("basic.get"); !s.ok()) return s;
    const amqp_rpc_reply_t reply =
        amqp_basic_get(conn_->state(), channel, AmqpBytes(target_.dead_queue), /*no_ack=*/0);
    if (absl::Status s = conn_->ReplyStatus(
            reply, util::StrCat("basic.get from '", target_.dead_queue, "'"), channel);
        !s.ok()) {
      return s;
    }
    if (reply.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) return false;
    if (reply.reply.id != AMQP_BASIC_GET_OK_METHOD || reply.reply.decoded == nullptr) {
      conn_->MarkDead();
      return absl::InternalError(
          util::StrCat("basic.get: unexpected reply method ", reply.reply.id));
    }
    const auto* ok = static_cast<const amqp_basic_get_ok_t*>(reply.reply.decoded);
    out->tag = ok->delivery_tag;
    out->exchange = std::string(AmqpText(ok->exchange));
    out->routing_key = std::string(AmqpText(ok->routing_key));
    if (absl::Status s = conn_->ReadContent(channel, &out->content); !s.ok()) return s;
    out->read = true;
    return true;
  }

  // WaitConfirm: the broker's answer to publish `seq` on `channel`.
  absl::StatusOr<Confirm> WaitConfirm(amqp_channel_t channel, uint64_t seq) {
    bool returned = false;
    while (true) {
      if (absl::Status s = Check("waiting for the broker's confirm", /*stoppable=*/false);
          !s.ok()) {
        return s;
      }
      timeval tv = ToTimeval(std::min(Left(), kStopCheck));
      amqp_frame_t frame;
      const int rc = amqp_simple_wait_frame_noblock(conn_->state(), &frame, &tv);
      if (rc == AMQP_STATUS_TIMEOUT) continue;
      if (rc != AMQP_STATUS_OK) {
        conn_->MarkDead();
        return StatusFromLibrary(rc, "waiting for the broker's confirm");
      }
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      const amqp_method_number_t id = frame.payload.method.id;
      if (frame.channel == 0) {
        if (id == AMQP_CONNECTION_CLOSE_METHOD) {
          const auto* close = static_cast<amqp_connection_close_t*>(frame.payload.method.decoded);
          const std::string text(AmqpText(close->reply_text));
          conn_->SendConnectionCloseOk();
          return absl::UnavailableError(
              util::StrCat("the broker closed the connection: ", close->reply_code, " ", text));
        }
        continue;
      }
      if (frame.channel != channel) continue;
      switch (id) {
        case AMQP_BASIC_RETURN_METHOD: {
          returned = true;
          amqp_message_t content{};
          if (absl::Status s = conn_->ReadContent(channel, &content); !s.ok()) return s;
          amqp_destroy_message(&content);
          break;
        }
        case AMQP_BASIC_ACK_METHOD: {
          const auto* ack = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
          if (ack->delivery_tag == seq || (ack->multiple && ack->delivery_tag >= seq)) {
            return returned ? Confirm::kReturned : Confirm::kConfirmed;
          }
          break;
        }
        case AMQP_BASIC_NACK_METHOD: {
          const auto* nack = static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
          if (nack->delivery_tag == seq || (nack->multiple && nack->delivery_tag >= seq)) {
            return Confirm::kNacked;
          }
          break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
          const auto* close = static_cast<amqp_channel_close_t*>(frame.payload.method.decoded);
          const int code = close->reply_code;
          const std::string text(AmqpText(close->reply_text));
          conn_->SendChannelCloseOk(channel);
          return absl::Status(code == AMQP_NOT_FOUND        ? absl::StatusCode::kNotFound
                              : code == AMQP_ACCESS_REFUSED ? absl::StatusCode::kPermissionDenied
                                                            : absl::StatusCode::kFailedPrecondition,
                              util::StrCat("the broker refused the copy and closed the channel: ",
                                           code, " ", text));
        }
        default:
          break;
      }
    }
  }

 private:
  milliseconds Left() const {
    return std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now());
  }

  DeadLetterWorker& worker_;
  const config::Broker& broker_;
  const DeadLetterTarget& target_;
  const Clock::time_point deadline_;
  std::unique_ptr<Connection> conn_;
};

constexpr amqp_channel_t kChannel = 1;

absl::StatusOr<v1::ListDeadLettersResponse> ServeList(Session& session,
                                                      const DeadLetterTarget& target,
                                                      uint32_t limit) {
  if (absl::Status s = session.Connect(); !s.ok()) return s;
  if (absl::Status s = session.OpenChannel(kChannel); !s.ok()) return s;
  absl::StatusOr<uint64_t> total = session.Count(kChannel);
  if (!total.ok()) return total.status();
  v1::ListDeadLettersResponse response;
  response.set_total(*total);
  size_t bytes = 0;
  while (static_cast<uint32_t>(response.messages_size()) < limit) {
    Message m;
    absl::StatusOr<bool> got = session.Get(kChannel, &m);
    if (!got.ok()) return got.status();
    if (!*got) break;
    v1::DeadLetter letter = ToDeadLetter(m.content.properties, m.content.body, target.business,
                                         m.exchange, m.routing_key);
    bytes += letter.ByteSizeLong() + 16;
    if (bytes > kListBytesMax) break;  // what is listed must fit one response
    *response.add_messages() = std::move(letter);
    amqp_maybe_release_buffers(session.conn().state());
  }
  // Nothing was acked: closing the channel returns every message to the
  // dead-letter queue.
  if (absl::Status s = session.Check("channel.close"); !s.ok()) return s;
  if (absl::Status s = session.conn().CloseChannel(kChannel); !s.ok()) return s;
  return response;
}

absl::Status ReplayError(const v1::ReplayDeadLettersResponse& response, const absl::Status& cause,
                         const DeadLetterTarget& target) {
  return absl::Status(
      cause.code(),
      util::StrCat("replayed ", response.replayed(), " message(s) from '", target.dead_queue,
                   "' to exchange '", target.exchange, "', then stopped: ", cause.message()));
}

absl::Status ServeReplay(Session& session, const DeadLetterTarget& target, uint32_t max,
                         const std::string& message_id, v1::ReplayDeadLettersResponse* response) {
  if (absl::Status s = session.Connect(); !s.ok()) return s;
  if (absl::Status s = session.OpenChannel(kChannel); !s.ok()) return s;
  absl::StatusOr<uint64_t> count = session.Count(kChannel);
  if (!count.ok()) return count.status();
  if (absl::Status s = session.Check("confirm.select"); !s.ok()) return s;
  amqp_confirm_select(session.conn().state(), kChannel);
  if (absl::Status s = session.conn().RpcStatus("confirm.select", kChannel); !s.ok()) return s;

  // Only what was there at the start: a copy that comes straight back
  // (nacked again by its consumer) is not replayed in a loop.
  const bool filtered = !message_id.empty();
  const uint64_t scan = filtered || max == 0 ? *count : std::min<uint64_t>(max, *count);
  amqp_connection_state_t state = session.conn().state();
  std::vector<uint64_t> held;  // got, not matching message_id: requeued at the end
  uint64_t seq = 0;
  absl::Status error;
  ReplayProperties props;
  for (uint64_t i = 0; i < scan; ++i) {
    if (filtered && max > 0 && response->replayed() >= max) break;
    Message m;
    absl::StatusOr<bool> got = session.Get(kChannel, &m);
    if (!got.ok()) {
      error = got.status();
      break;
    }
    if (!*got) break;
    const amqp_basic_properties_t& original = m.content.properties;
    const std::string id = (original._flags & AMQP_BASIC_MESSAGE_ID_FLAG) != 0
                               ? std::string(AmqpText(original.message_id))
                               : std::string();
    if (filtered && id != message_id) {
      held.push_back(m.tag);
      continue;
    }
    v1::DeadLetter letter;
    ReadDeath(original, &letter);
    const std::string routing_key = ReplayRoutingKey(letter, m.routing_key);
    props.Build(original);
    if (absl::Status s = session.Check("basic.publish"); !s.ok()) {
      error = s;
      amqp_basic_reject(state, kChannel, m.tag, /*requeue=*/1);
      break;
    }
    const int rc =
        amqp_basic_publish(state, kChannel, AmqpBytes(target.exchange), AmqpBytes(routing_key),
                           /*mandatory=*/1, /*immediate=*/0, props.props(), m.content.body);
    if (rc != AMQP_STATUS_OK) {
      session.conn().MarkDead();
      error = StatusFromLibrary(rc, "basic.publish");
      break;  // the connection is gone: the broker requeues the message
    }
    ++seq;
    absl::StatusOr<Confirm> confirm = session.WaitConfirm(kChannel, seq);
    if (!confirm.ok() || *confirm != Confirm::kConfirmed) {
      if (!confirm.ok()) {
        error = confirm.status();
      } else if (*confirm == Confirm::kNacked) {
        error = absl::AbortedError(util::StrCat("the broker did not take the copy of message '",
                                                util::ForLog(id, 64), "' (basic.nack)"));
      } else {
        error = absl::FailedPreconditionError(util::StrCat(
            "no queue takes the copy of message '", util::ForLog(id, 64), "' (exchange '",
            target.exchange, "', routing key '", util::ForLog(routing_key, 64),
            "'): the broker returned it as unroutable"));
      }
      // Still on the channel (a nack, a return, a timeout): requeue it now.
      // Otherwise the connection or channel is gone, which requeues it.
      if (!session.conn().dead()) amqp_basic_reject(state, kChannel, m.tag, /*requeue=*/1);
      break;
    }
    // The copy is queued: it counts as replayed even if the ack is lost.
    response->set_replayed(response->replayed() + 1);
    response->add_message_ids(id);
    if (const int ack = amqp_basic_ack(state, kChannel, m.tag, 0); ack != AMQP_STATUS_OK) {
      session.conn().MarkDead();
      error = StatusFromLibrary(
          ack, util::StrCat("basic.ack of message '", util::ForLog(id, 64),
                            "' after its copy was confirmed (it stays in the dead-letter queue "
                            "too: expect it twice)"));
      break;
    }
    spdlog::info("dead letters: replayed message '{}' of business '{}' to exchange '{}' ({})",
                 util::ForLog(id, 64), target.business, target.exchange, routing_key);
    amqp_maybe_release_buffers(state);
  }
  if (session.conn().dead()) {
    return error.ok() ? absl::UnavailableError("the broker connection died") : error;
  }
  if (!error.ok()) {
    for (uint64_t tag : held) amqp_basic_reject(state, kChannel, tag, /*requeue=*/1);
    return error;
  }
  if (filtered && response->replayed() == 0) {
    for (uint64_t tag : held) amqp_basic_reject(state, kChannel, tag, /*requeue=*/1);
    return absl::NotFoundError(util::StrCat("no message with message_id '",
                                            util::ForLog(message_id, 64), "' among the ", *count,
                                            " message(s) of '", target.dead_queue, "'"));
  }
  // What is left: the messages still ready plus those held, counted while
  // this channel holds them (the broker settles rejects asynchronously, so a
  // count taken after them could miss some).
  absl::StatusOr<uint64_t> ready = session.Count(kChannel);
  if (!ready.ok()) return ready.status();
  response->set_remaining(*ready + held.size());
  for (uint64_t tag : held) amqp_basic_reject(state, kChannel, tag, /*requeue=*/1);
  if (absl::Status s = session.Check("channel.close"); !s.ok()) return s;
  if (absl::Status s = session.conn().CloseChannel(kChannel); !s.ok()) return s;
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// DeadLetterWorker

DeadLetterWorker::DeadLetterWorker(config::Broker broker) : broker_(std::move(broker)) {}

DeadLetterWorker::~DeadLetterWorker() { Stop(); }

void DeadLetterWorker::Start() {
  util::MutexLock lock(&mu_);
  if (thread_.joinable() || stop_.load()) return;
  accepting_ = true;
  thread_ = std::thread([this] { Run(); });
}

void DeadLetterWorker::Stop(milliseconds grace) {
  std::deque<Job> left;
  {
    util::MutexLock lock(&mu_);
    accepting_ = false;
    stop_.store(true, std::memory_order_release);
    left.swap(jobs_);
  }
  cv_.SignalAll();
  for (Job& job : left) Refuse(job, absl::UnavailableError("mq-sidecar is shutting down"));
  if (!thread_.joinable()) return;
  {
    util::MutexLock lock(&mu_);
    const auto deadline = Clock::now() + grace;
    while (busy_) {
      if (!cv_.WaitUntil(&mu_, deadline)) break;
    }
    // A broker that does not answer: cut the connection, so the blocking
    // call returns (the broker requeues what was got and not acked).
    if (busy_ && active_fd_ >= 0) ::shutdown(active_fd_, SHUT_RDWR);
  }
  thread_.join();
}

void DeadLetterWorker::SetActiveFd(int fd) {
  util::MutexLock lock(&mu_);
  active_fd_ = fd;
}

void DeadLetterWorker::Refuse(Job& job, const absl::Status& status) {
  if (job.replay) {
    job.replay_done(status, v1::ReplayDeadLettersResponse());
  } else {
    job.list_done(status);
  }
}

void DeadLetterWorker::List(DeadLetterTarget target, uint32_t limit, Clock::time_point deadline,
                            ListDone done) {
  Job job;
  job.target = std::move(target);
  job.max = limit;
  job.deadline = deadline;
  job.list_done = std::move(done);
  Submit(std::move(job));
}

void DeadLetterWorker::Replay(DeadLetterTarget target, uint32_t max, std::string message_id,
                              Clock::time_point deadline, ReplayDone done) {
  Job job;
  job.replay = true;
  job.target = std::move(target);
  job.max = max;
  job.message_id = std::move(message_id);
  job.deadline = deadline;
  job.replay_done = std::move(done);
  Submit(std::move(job));
}

void DeadLetterWorker::Submit(Job job) {
  absl::Status refused;
  {
    util::MutexLock lock(&mu_);
    if (accepting_ && jobs_.size() < kDeadLetterQueueMax) {
      jobs_.push_back(std::move(job));
      cv_.SignalAll();
      return;
    }
    refused = accepting_
                  ? absl::ResourceExhaustedError(util::StrCat(
                        jobs_.size(), " dead-letter requests are already waiting; try again later"))
                  : absl::UnavailableError("mq-sidecar is shutting down");
  }
  Refuse(job, refused);
}

void DeadLetterWorker::Run() {
  pthread_setname_np(pthread_self(), "mqs-deadletter");
  while (true) {
    Job job;
    {
      util::MutexLock lock(&mu_);
      while (jobs_.empty() && !stop_.load(std::memory_order_acquire)) cv_.Wait(&mu_);
      if (jobs_.empty()) return;  // stopping
      job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
    }
    Serve(job);
    {
      util::MutexLock lock(&mu_);
      busy_ = false;
    }
    cv_.SignalAll();
  }
}

void DeadLetterWorker::Serve(Job& job) {
  if (Clock::now() >= job.deadline) {
    Refuse(job, absl::DeadlineExceededError(
                    "the call's deadline passed while it waited behind other dead-letter "
                    "requests"));
    return;
  }
  if (!job.replay) {
    absl::StatusOr<v1::ListDeadLettersResponse> r;
    {
      Session session(*this, broker_, job.target, job.deadline);
      r = ServeList(session, job.target, job.max);
    }
    if (!r.ok()) {
      util::LogWith(spdlog::level::warn, {{"business", job.target.business, false}},
                    "dead letters: listing business '{}' failed: {}", job.target.business,
                    r.status().message());
    }
    job.list_done(std::move(r));
    return;
  }
  v1::ReplayDeadLettersResponse response;
  absl::Status status;
  {
    Session session(*this, broker_, job.target, job.deadline);
    status = ServeReplay(session, job.target, job.max, job.message_id, &response);
  }
  if (!status.ok()) {
    if (response.replayed() > 0) status = ReplayError(response, status, job.target);
    util::LogWith(spdlog::level::warn, {{"business", job.target.business, false}},
                  "dead letters: replay of business '{}': {}", job.target.business,
                  status.message());
  } else {
    util::LogWith(spdlog::level::info, {{"business", job.target.business, false}},
                  "dead letters: replayed {} message(s) of business '{}'; {} left",
                  response.replayed(), job.target.business, response.remaining());
  }
  job.replay_done(std::move(status), std::move(response));
}

}  // namespace mqs::amqp
