#include "control/control_plane.h"

#include <unistd.h>

#include <algorithm>

#include "config/topology_plan.h"
#include "control/tasks.h"
#include "spdlog/spdlog.h"
#include "util/message_id.h"
#include "util/strings.h"

namespace mqs::control {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::PublishResult;
using Clock = std::chrono::steady_clock;

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// How soon a feed the broker closed is opened again.
constexpr std::chrono::seconds kReopenAfter{1};
// The least time between two pings (a status report asks for one at once).
constexpr std::chrono::seconds kMinPingGap{1};

}  // namespace

std::string BrokerStateName(const amqp::IoLoop& publisher, const amqp::IoLoop& consumer) {
  const amqp::LinkState p = publisher.state(), c = consumer.state();
  if (p == amqp::LinkState::kConnected && c == amqp::LinkState::kConnected && publisher.blocked()) {
    return "blocked";
  }
  return std::string(amqp::LinkStateName(p != amqp::LinkState::kConnected ? p : c));
}

void StreamCounts::Add(const std::string& business, int delta) {
  util::MutexLock lock(&mu_);
  uint32_t& n = counts_[business];
  n = static_cast<uint32_t>(std::max<int64_t>(0, static_cast<int64_t>(n) + delta));
  if (n == 0) counts_.erase(business);
}

std::map<std::string, uint32_t> StreamCounts::Snapshot() const {
  util::MutexLock lock(&mu_);
  return counts_;
}

// Feed: one of the control plane's own consumer streams. Its sink acks each
// delivery as soon as it is handled (a ping or a result is state, not work:
// losing one to a crash costs nothing).
class ControlPlane::Feed final : public amqp::DeliverySink {
 public:
  using Handler = void (ControlPlane::*)(const Delivery&);
  Feed(ControlPlane& owner, std::string name, std::string queue, Handler handler)
      : owner_(owner), name_(std::move(name)), queue_(std::move(queue)), handler_(handler) {}

  void Open() {
    closed_.store(false, std::memory_order_release);
    const uint64_t id = owner_.consumer_.NewStreamId();
    stream_id_.store(id, std::memory_order_release);
    amqp::OpenRequest req;
    req.stream_id = id;
    req.business = name_;
    req.queue = queue_;
    req.prefetch = 64;
    req.consumer_tag = util::StrCat("mq-sidecar.", name_, ".", owner_.config_.instance, ".", id);
    req.sink = this;
    owner_.consumer_.Open(std::move(req));
  }

  void OnDelivery(Delivery&& delivery) override {
    (owner_.*handler_)(delivery);
    owner_.consumer_.Ack(stream_id_.load(std::memory_order_acquire), delivery.delivery_id());
  }

  void OnClosed(const absl::Status& status) override {
    if (!owner_.stopping_.load(std::memory_order_acquire)) {
      spdlog::warn("[control] the {} feed closed ({}); reopening in {}s", name_, status.ToString(),
                   kReopenAfter.count());
    }
    reopen_at_.store(Clock::now() + kReopenAfter, std::memory_order_release);
    closed_.store(true, std::memory_order_release);
    owner_.Wake();
  }

  bool DueForReopen(Clock::time_point now) const {
    return closed_.load(std::memory_order_acquire) &&
           reopen_at_.load(std::memory_order_acquire) <= now;
  }

 private:
  ControlPlane& owner_;
  const std::string name_;
  const std::string queue_;
  const Handler handler_;
  std::atomic<uint64_t> stream_id_{0};
  std::atomic<bool> closed_{false};
  std::atomic<Clock::time_point> reopen_at_{Clock::time_point{}};
};

ControlPlane::ControlPlane(const config::Config& config, amqp::Publisher& publisher,
                           amqp::Consumer& consumer)
    : config_(config),
      publisher_(publisher),
      consumer_(consumer),
      ping_exchange_(config::PingExchange(config)),
      started_at_ms_(NowMs()) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) host_ = host;
  if (const std::string q = config::FleetQueue(config); !q.empty()) {
    fleet_ = std::make_unique<FleetTable>();
    fleet_feed_ = std::make_unique<Feed>(*this, "fleet", q, &ControlPlane::OnPing);
  }
  if (const std::string q = config::ReplyQueue(config); !q.empty()) {
    reply_feed_ = std::make_unique<Feed>(*this, "task-results", q, &ControlPlane::OnResult);
  }
}

ControlPlane::~ControlPlane() { Stop(); }

mqsidecar::v1::Identity ControlPlane::identity() const {
  mqsidecar::v1::Identity id;
  id.set_app(config_.identity.app);
  id.set_region(config_.identity.region);
  id.set_server(config_.identity.server);
  return id;
}

void ControlPlane::Start() {
  if (fleet_feed_) fleet_feed_->Open();
  if (reply_feed_) reply_feed_->Open();
  next_ping_ = Clock::now();
  thread_ = std::thread([this] { Loop(); });
}

void ControlPlane::BeginShutdown() {
  stopping_.store(true, std::memory_order_release);
  waiters_.CancelAll(absl::UnavailableError("mq-sidecar is shutting down"));
}

void ControlPlane::Stop() {
  stopping_.store(true, std::memory_order_release);
  {
    util::MutexLock lock(&mu_);
    stop_ = true;
    wake_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  waiters_.CancelAll(absl::UnavailableError("mq-sidecar is shutting down"));
}

void ControlPlane::Wake() {
  util::MutexLock lock(&mu_);
  kicked_ = true;
  wake_.SignalAll();
}

void ControlPlane::ReportStatus(mqsidecar::v1::ServiceStatus status) {
  status.set_reported_at_ms(NowMs());
  util::MutexLock lock(&mu_);
  status_ = std::move(status);
  ping_soon_ = true;
  wake_.SignalAll();
}

void ControlPlane::Loop() {
  const bool pinging = !ping_exchange_.empty() && config_.identity.complete();
  while (true) {
    const Clock::time_point now = Clock::now();
    bool ping_soon = false;
    {
      util::MutexLock lock(&mu_);
      if (stop_) return;
      ping_soon = ping_soon_;
      ping_soon_ = false;
      kicked_ = false;
    }
    if (pinging && !stopping_.load(std::memory_order_acquire)) {
      if (ping_soon && next_ping_ > last_ping_ + kMinPingGap) {
        next_ping_ = std::max(now, last_ping_ + kMinPingGap);
      }
      if (now >= next_ping_) MaybePing(now);
    }
    if (!stopping_.load(std::memory_order_acquire)) {
      for (Feed* feed : {fleet_feed_.get(), reply_feed_.get()}) {
        if (feed != nullptr && feed->DueForReopen(now)) feed->Open();
      }
    }
    Clock::time_point until = now + std::chrono::seconds(1);
    if (pinging) until = std::min(until, next_ping_);
    if (std::optional<Clock::time_point> next = waiters_.Expire(now)) {
      until = std::min(until, *next);
    }
    util::MutexLock lock(&mu_);
    if (!stop_ && !kicked_ && !ping_soon_) {
      watch_.Idle();
      wake_.WaitUntil(&mu_, until);
    }
    watch_.Busy();
  }
}

PingFacts ControlPlane::Facts(int64_t now_ms) {
  PingFacts f;
  f.identity = identity();
  f.host = host_;
  f.pid = static_cast<uint32_t>(getpid());
  f.version = kVersion;
  f.started_at_ms = started_at_ms_;
  f.sent_at_ms = now_ms;
  f.interval_ms = config_.ping.interval.count();
  f.broker_state = BrokerStateName(publisher_, consumer_);
  f.streams = streams_.Snapshot();
  util::MutexLock lock(&mu_);
  f.status = status_;
  return f;
}

void ControlPlane::MaybePing(Clock::time_point now) {
  next_ping_ = now + config_.ping.interval;
  // Best effort: a ping that cannot go now is skipped, never queued, so an
  // outage leaves no backlog of stale pings and no load on the publisher.
  if (!publisher_.connected() || publisher_.blocked()) return;
  if (ping_in_flight_.exchange(true, std::memory_order_acq_rel)) return;
  last_ping_ = now;
  amqp::PublishJob job;
  job.exchange = ping_exchange_;
  job.request.set_business(config_.ping.business);
  job.request.set_routing_key(RoutingKeyFor(identity()));
  job.request.set_payload(BuildPing(Facts(NowMs())));
  job.request.set_content_type("application/json");
  job.request.set_message_id(util::NewMessageId());
  // Expires in the admin's durable queue too: a ping 3 intervals old says
  // nothing a newer one does not.
  job.request.set_ttl_ms(static_cast<uint32_t>(
      std::min<int64_t>(3 * config_.ping.interval.count(), std::numeric_limits<uint32_t>::max())));
  job.deadline = now + config_.ping.interval;
  job.done = [this](PublishResult&& r, absl::StatusCode) {
    if (r.status() != PublishResult::CONFIRMED) {
      spdlog::debug("[control] ping not confirmed: {} {}", PublishResult::Status_Name(r.status()),
                    r.error());
    }
    ping_in_flight_.store(false, std::memory_order_release);
  };
  publisher_.Submit(std::move(job));
}

void ControlPlane::OnPing(const Delivery& d) {
  absl::StatusOr<mqsidecar::v1::ServerInfo> info = ParsePing(d.payload());
  if (!info.ok()) {
    spdlog::debug("[control] ignored a message on the ping exchange (routing key {}): {}",
                  util::ForLog(d.routing_key()), info.status().message());
    return;
  }
  fleet_->Apply(std::move(*info), NowMs());
}

void ControlPlane::OnResult(const Delivery& d) {
  if (!waiters_.Complete(ResultFromDelivery(d))) {
    spdlog::debug("[control] result {} came with no task waiting for it",
                  util::ForLog(d.correlation_id()));
  }
}

}  // namespace mqs::control
