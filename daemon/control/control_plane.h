// ControlPlane: the seed's control plane at run time (docs/control-plane.md).
//
//  - server.ping: every ping.interval the daemon publishes its own heartbeat
//    (ping.h's JSON) through the publisher, best effort: at most one ping in
//    flight, none while the publishing link is down or blocked, each expiring
//    in the broker after 3 intervals. Client traffic never waits for a ping.
//  - Fleet view (ping.fleet): pings arrive on this sidecar's exclusive queue
//    and fill a FleetTable, which ListServers reads.
//  - Task results: results for tasks this sidecar sent arrive on its
//    exclusive reply queue and complete the waiting SendTask calls.
//
// Both feeds are consumer streams like a client's Subscribe, with an
// in-process sink that acks at once: they share the consumer's reconnect and
// resume logic. One thread of its own ("mqs-control") sends pings, expires
// task waiters and reopens a feed the broker closed.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "amqp/consumer.h"
#include "amqp/publisher.h"
#include "config/config.h"
#include "control/ping.h"
#include "control/task_waiters.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/mutex.h"
#include "util/thread_watch.h"
#include "util/version.h"

namespace mqs::control {

using util::kVersion;

// BrokerStateName: what a caller of this sidecar experiences: the worse of
// the two links ("connected", "connecting", "reconnecting"), or "blocked"
// when both are up but the broker has paused publishing.
std::string BrokerStateName(const amqp::IoLoop& publisher, const amqp::IoLoop& consumer);

// StreamCounts: live Subscribe streams per business (pings report them).
class StreamCounts {
 public:
  void Add(const std::string& business, int delta);
  std::map<std::string, uint32_t> Snapshot() const;

 private:
  mutable util::Mutex mu_;
  std::map<std::string, uint32_t> counts_ ABSL_GUARDED_BY(mu_);
};

class ControlPlane {
 public:
  ControlPlane(const config::Config& config, amqp::Publisher& publisher, amqp::Consumer& consumer);
  ~ControlPlane();
  ControlPlane(const ControlPlane&) = delete;
  ControlPlane& operator=(const ControlPlane&) = delete;

  // Start opens the feeds and starts the thread (after the I/O threads).
  void Start();
  // BeginShutdown: no ping from now on, feeds are not reopened; waiting
  // SendTask calls are answered UNAVAILABLE.
  void BeginShutdown();
  // Stop joins the thread; after the consumer has stopped (the feeds' sinks
  // must outlive every call the consumer thread makes to them).
  void Stop();
  // The thread's progress, for the watchdog (util/thread_watch.h).
  const util::ThreadWatch& watch() const { return watch_; }

  mqsidecar::v1::Identity identity() const;
  const std::string& instance() const { return config_.instance; }
  StreamCounts& streams() { return streams_; }
  TaskWaiters& waiters() { return waiters_; }
  // Wake: a waiter with an earlier deadline was added.
  void Wake();
  // fleet: nullptr unless ping.fleet is on.
  FleetTable* fleet() { return fleet_.get(); }

  // ReportStatus replaces the service's status; the next ping (sent within a
  // second) carries it.
  void ReportStatus(mqsidecar::v1::ServiceStatus status);

 private:
  class Feed;
  void Loop();
  void MaybePing(std::chrono::steady_clock::time_point now);
  PingFacts Facts(int64_t now_ms);
  void OnPing(const mqsidecar::v1::Delivery& d);
  void OnResult(const mqsidecar::v1::Delivery& d);

  const config::Config& config_;
  amqp::Publisher& publisher_;
  amqp::Consumer& consumer_;
  const std::string ping_exchange_;
  const int64_t started_at_ms_;
  std::string host_;
  StreamCounts streams_;
  TaskWaiters waiters_;
  std::unique_ptr<FleetTable> fleet_;
  std::unique_ptr<Feed> fleet_feed_;
  std::unique_ptr<Feed> reply_feed_;
  std::atomic<bool> ping_in_flight_{false};
  std::atomic<bool> stopping_{false};

  util::Mutex mu_;
  util::CondVar wake_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  bool ping_soon_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<mqsidecar::v1::ServiceStatus> status_ ABSL_GUARDED_BY(mu_);

  // Loop-thread state.
  std::chrono::steady_clock::time_point next_ping_{};
  std::chrono::steady_clock::time_point last_ping_{};
  std::thread thread_;
  util::ThreadWatch watch_{"control"};
};

}  // namespace mqs::control
