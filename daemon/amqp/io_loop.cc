#include "amqp/io_loop.h"

#include <poll.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <random>

#include "observability/metrics.h"
#include "spdlog/spdlog.h"
#include "util/log_fields.h"
#include "util/strings.h"
#include "util/uri.h"

namespace mqs::amqp {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr milliseconds kBackoffMin{100};
constexpr milliseconds kBackoffMax{10000};

// Full jitter over [d/2, d]: many sidecars restarted with one broker do not
// all knock at the same instant.
milliseconds Jitter(milliseconds d) {
  thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<int64_t> dist(d.count() / 2, d.count());
  return milliseconds(dist(rng));
}

// The metrics role of a loop (its name), if it has one.
std::optional<observability::Role> MetricsRole(std::string_view name) {
  if (name == "publisher") return observability::Role::kPublisher;
  if (name == "consumer") return observability::Role::kConsumer;
  return std::nullopt;
}

void CountBlocked(std::string_view name, bool blocked) {
  observability::Metrics* m = observability::Metrics::Active();
  std::optional<observability::Role> role = MetricsRole(name);
  if (m != nullptr && role) m->SetBlocked(*role, blocked, Clock::now());
}

}  // namespace

std::string_view LinkStateName(LinkState s) {
  switch (s) {
    case LinkState::kConnecting:
      return "connecting";
    case LinkState::kConnected:
      return "connected";
    case LinkState::kReconnecting:
      return "reconnecting";
    case LinkState::kStopped:
      return "stopped";
  }
  return "unknown";
}

IoLoop::IoLoop(std::string name, const config::Broker& broker, std::function<void()> on_state,
               std::function<void(const absl::Status&)> on_fatal)
    : name_(std::move(name)),
      watch_(name_),
      broker_(broker),
      on_state_(std::move(on_state)),
      on_fatal_(std::move(on_fatal)) {}

IoLoop::~IoLoop() {
  // Derived classes stop the loop in their destructors, while their hooks
  // still exist; this is only a safety net.
  if (thread_.joinable()) {
    stop_ = true;
    thread_.join();
  }
}

void IoLoop::Start() {
  thread_ = std::thread([this] { Run(); });
}

void IoLoop::Stop(milliseconds drain) {
  drain_ms_ = drain.count();
  stop_.store(true, std::memory_order_release);
  Wake();
  if (!thread_.joinable()) return;
  {
    util::MutexLock lock(&run_mu_);
    const auto grace = Clock::now() + kStopConnectGrace;
    while (!run_ended_flag_) {
      if (!run_ended_.WaitUntil(&run_mu_, grace)) break;
    }
  }
  // Still running: if it is connecting (a node that accepted the TCP
  // connection and stopped answering), end the connect now; a loop that
  // is draining a live connection is not affected.
  connect_abort_.Abort();
  thread_.join();
}

std::string IoLoop::broker_uri() const {
  util::MutexLock lock(&uri_mu_);
  return broker_uri_;
}

std::string IoLoop::last_error() const {
  util::MutexLock lock(&uri_mu_);
  return last_error_;
}

void IoLoop::SetLastError(const absl::Status& why) {
  util::MutexLock lock(&uri_mu_);
  last_error_ = std::string(why.message());
}

void IoLoop::SetState(LinkState s) {
  if (state_.exchange(s, std::memory_order_acq_rel) == s) return;
  if (observability::Metrics* m = observability::Metrics::Active(); m != nullptr) {
    if (std::optional<observability::Role> role = MetricsRole(name_)) {
      m->SetConnected(*role, s == LinkState::kConnected);
      if (s == LinkState::kConnected && connected_before_) m->CountReconnect(*role);
      if (s != LinkState::kConnected) m->SetBlocked(*role, false, std::chrono::steady_clock::now());
    }
  }
  if (s == LinkState::kConnected) connected_before_ = true;
  if (on_state_) on_state_();
}

void IoLoop::WaitDisconnected(milliseconds d) {
  const auto deadline = Clock::now() + d;
  while (!stop_requested()) {
    ProcessInbox(nullptr);
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return;
    pollfd pfd{WakeFd(), POLLIN, 0};
    // Short slices while commands wait on deadlines.
    watch_.Idle();
    ::poll(&pfd, 1,
           static_cast<int>(HasTimers() ? std::min<int64_t>(left.count(), 50) : left.count()));
    watch_.Busy();
  }
}

absl::StatusOr<std::unique_ptr<Connection>> IoLoop::OpenWhileServing(
    const std::string& uri, const ConnectOptions& options) {
  absl::StatusOr<std::unique_ptr<Connection>> result = absl::UnknownError("not connected");
  std::atomic<bool> done{false};
  // The connector only opens the connection; the join hands it (and the
  // rabbitmq-c state in it) to this thread, which alone uses it from then on.
  std::thread connector([&] {
    pthread_setname_np(pthread_self(), util::StrCat("mqs-", name_, "-c").substr(0, 15).c_str());
    result = Connection::Open(uri, options, &connect_abort_);
    if (result.ok()) {
      Connection& conn = **result;
      // Armed again until OnConnected returns (Run disarms).
      connect_abort_.Arm(conn.fd());
      // The set-up is part of the connect: a node that froze after the
      // login fails it within connect_timeout, not the RPC timeout.
      conn.SetRpcTimeout(options.connect_timeout);
      absl::Status s = PrepareConnection(conn);
      conn.SetRpcTimeout(options.rpc_timeout);
      if (!s.ok()) result = s;
    }
    done.store(true, std::memory_order_release);
    Wake();
  });
  ServeUntil(done);
  connector.join();
  return result;
}

void IoLoop::ServeUntil(const std::atomic<bool>& done) {
  while (!done.load(std::memory_order_acquire)) {
    // Publishes that wait for the connection are answered at their
    // deadline, not after the round trips.
    ProcessInbox(nullptr);
    if (done.load(std::memory_order_acquire)) break;
    pollfd pfd{WakeFd(), POLLIN, 0};
    watch_.Idle();
    ::poll(&pfd, 1, HasTimers() ? 50 : 200);
    watch_.Busy();
  }
}

absl::Status IoLoop::RunWhileServing(Connection& conn, const std::function<absl::Status()>& fn) {
  absl::Status result;
  std::atomic<bool> done{false};
  connect_abort_.Arm(conn.fd());
  std::thread helper([&] {
    pthread_setname_np(pthread_self(), util::StrCat("mqs-", name_, "-r").substr(0, 15).c_str());
    result = fn();
    done.store(true, std::memory_order_release);
    Wake();
  });
  ServeUntil(done);
  helper.join();
  connect_abort_.Disarm();
  return result;
}

void IoLoop::Run() {
  // Named so that top -H, perf and gdb show which connection a thread owns
  // (the kernel keeps 15 characters).
  pthread_setname_np(pthread_self(), util::StrCat("mqs-", name_).substr(0, 15).c_str());
  size_t next_uri = 0;
  milliseconds backoff = kBackoffMin;
  ConnectOptions options;
  options.heartbeat = broker_.heartbeat;
  options.connect_timeout = broker_.connect_timeout;
  options.connection_name = name_;
  options.tls = {broker_.tls.ca, broker_.tls.cert, broker_.tls.key, broker_.tls.verify};

  while (!stop_requested()) {
    const std::string& uri = broker_.uris[next_uri];
    const std::string masked = util::MaskPassword(uri);
    {
      util::MutexLock lock(&uri_mu_);
      broker_uri_ = masked;
    }
    // The structured fields of this connection's lines (json logs).
    const util::LogField conn_field{"connection", name_, false};
    const util::LogField uri_field{"uri", masked};
    auto conn = OpenWhileServing(uri, options);
    absl::Status status = conn.ok() ? OnConnected(**conn) : conn.status();
    connect_abort_.Disarm();
    if (!status.ok() && stop_requested()) {
      // A connect ended by Stop: nothing to retry.
      spdlog::info("[{}] connect abandoned at stop: {}", name_, status.message());
      OnDisconnected(status);
      break;
    }
    if (!status.ok()) {
      if (IsFatal(status)) {
        util::LogWith(spdlog::level::critical, {conn_field, uri_field}, "[{}] {}", name_,
                      status.message());
        OnDisconnected(status);
        SetState(LinkState::kStopped);
        if (on_fatal_) on_fatal_(status);
        break;
      }
      util::LogWith(spdlog::level::warn, {conn_field, uri_field}, "[{}] {} (retrying in ~{} ms)",
                    name_, status.message(), backoff.count());
      SetLastError(status);
      OnDisconnected(status);
      SetState(LinkState::kReconnecting);
      // Move on to the next node of a cluster; back off once per full round.
      next_uri = (next_uri + 1) % broker_.uris.size();
      WaitDisconnected(Jitter(backoff));
      backoff = std::min(backoff * 2, kBackoffMax);
      continue;
    }
    util::LogWith(spdlog::level::info, {conn_field, {"uri", masked, false}},
                  "[{}] connected to {} (heartbeat {} s)", name_, masked,
                  (*conn)->heartbeat_seconds());
    backoff = kBackoffMin;
    SetState(LinkState::kConnected);
    status = Pump(**conn);
    if (status.ok()) {
      // Stopped and drained. Bounded close: a frozen broker never sends
      // close-ok, and the stop must not wait for rabbitmq-c's RPC timeout.
      if (!(*conn)->CloseWithin(kCloseBound)) {
        spdlog::warn("[{}] no close-ok from the broker within {} ms; connection dropped", name_,
                     kCloseBound.count());
      }
      break;
    }
    util::LogWith(spdlog::level::warn, {conn_field, uri_field}, "[{}] connection lost: {}", name_,
                  status.message());
    SetLastError(absl::Status(status.code(), util::StrCat("connection lost: ", status.message())));
    blocked_.store(false, std::memory_order_release);
    SetState(LinkState::kReconnecting);
    OnDisconnected(status);
  }
  // Whatever is still queued gets a definite answer.
  ProcessInbox(nullptr);
  OnDisconnected(absl::UnavailableError("mq-sidecar is shutting down"));
  SetState(LinkState::kStopped);
  util::MutexLock lock(&run_mu_);
  run_ended_flag_ = true;
  run_ended_.SignalAll();
}

absl::Status IoLoop::Pump(Connection& conn) {
  const int hb = conn.heartbeat_seconds();
  // rabbitmq-c only sends heartbeats from inside its calls: wake at least
  // every heartbeat/2. The broker sends something at least every
  // heartbeat/2 too, so silence for 2 x heartbeat means a dead peer (a frozen
  // node, a cut cable); rabbitmq-c's own check would only fire up to half a
  // heartbeat later, at our next wake-up.
  const int idle_ms = hb > 0 ? hb * 500 : 1000;
  const milliseconds dead_after(hb > 0 ? hb * 2000 : 0);
  Clock::time_point last_rx = Clock::now();
  bool stopping = false;
  Clock::time_point drain_deadline;
  amqp_frame_t frame;
  while (true) {
    if (stop_requested() && !stopping) {
      stopping = true;
      drain_deadline = Clock::now() + milliseconds(drain_ms_.load());
      OnStopping(&conn);
    }
    if (stopping && (Drained() || Clock::now() >= drain_deadline)) {
      if (!Drained()) {
        spdlog::info("[{}] stop: {} ms drain over, work still outstanding", name_,
                     drain_ms_.load());
      }
      return absl::OkStatus();
    }
    if (conn.dead()) return absl::UnavailableError("connection closed");
    if (conn.HasBuffered()) {
      last_rx = Clock::now();
    } else {
      int timeout = stopping || HasTimers() ? std::min(idle_ms, 50) : idle_ms;
      if (dead_after.count() > 0) {
        const auto left =
            std::chrono::duration_cast<milliseconds>(last_rx + dead_after - Clock::now());
        timeout = std::clamp(static_cast<int>(left.count()) + 1, 0, timeout);
      }
      pollfd pfds[2] = {{conn.fd(), POLLIN, 0}, {WakeFd(), POLLIN, 0}};
      watch_.Idle();
      ::poll(pfds, 2, timeout);
      const auto now = Clock::now();
      watch_.Busy(now);
      util::TestWedge(name_);
      if ((pfds[0].revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        last_rx = now;
      } else if (dead_after.count() > 0 && now - last_rx >= dead_after) {
        conn.MarkDead();
        return absl::UnavailableError(util::StrCat("no data from the broker for ",
                                                   dead_after.count() / 1000,
                                                   " s (2 x heartbeat): connection presumed dead"));
      }
    }
    ProcessInbox(&conn);
    // Bounded, so a flood of deliveries cannot starve the inbox (acks).
    for (int i = 0; i < 4096 && !conn.dead(); ++i) {
      absl::StatusOr<bool> got = conn.NextFrame(&frame);
      if (!got.ok()) return got.status();
      if (!*got) break;
      if (frame.frame_type == AMQP_FRAME_METHOD && frame.channel == 0) {
        absl::Status s = OnConnectionMethod(conn, frame.payload.method);
        if (!s.ok()) return s;
        continue;
      }
      OnFrame(conn, frame);
      // OnFrame copies what it keeps: recycle this channel's decoding pool
      // now. rabbitmq-c keeps one pool per channel number until the
      // connection closes, and every Subscribe stream gets a new number, so
      // without this each stream left ~250 KiB behind (measured).
      amqp_maybe_release_buffers_on_channel(conn.state(), frame.channel);
    }
    if (conn.dead()) return absl::UnavailableError("connection closed by the broker");
    amqp_maybe_release_buffers(conn.state());
  }
}

absl::Status IoLoop::OnConnectionMethod(Connection& conn, const amqp_method_t& method) {
  switch (method.id) {
    case AMQP_CONNECTION_CLOSE_METHOD: {
      auto* close = static_cast<amqp_connection_close_t*>(method.decoded);
      absl::Status s = absl::UnavailableError(util::StrCat(
          "broker closed the connection: ", close->reply_code, " ", AmqpText(close->reply_text)));
      conn.SendConnectionCloseOk();
      return s;
    }
    case AMQP_CONNECTION_BLOCKED_METHOD: {
      auto* blocked = static_cast<amqp_connection_blocked_t*>(method.decoded);
      spdlog::warn("[{}] broker blocked this connection: {}", name_, AmqpText(blocked->reason));
      blocked_.store(true, std::memory_order_release);
      CountBlocked(name_, true);
      if (on_state_) on_state_();
      return absl::OkStatus();
    }
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
      spdlog::info("[{}] broker unblocked this connection", name_);
      blocked_.store(false, std::memory_order_release);
      CountBlocked(name_, false);
      if (on_state_) on_state_();
      return absl::OkStatus();
    default:
      spdlog::debug("[{}] ignoring connection method 0x{:08x}", name_, method.id);
      return absl::OkStatus();
  }
}

}  // namespace mqs::amqp
