// Dead letters: listing and replaying a consumer business's dead-letter
// queue (<consumer queue>.dead), for ListDeadLetters / ReplayDeadLetters.
//
// DeadLetterWorker owns one thread, `mqs-deadletter`, which serves the
// requests one at a time, each on a short-lived AMQP connection of its own:
// listing and replaying are rare operator actions that wait on the broker
// (basic.get, confirms), and the publisher and consumer threads must never
// wait behind them. The pure parts (x-death parsing, the replayed copy's
// properties, request limits and deadlines) are free functions, unit-tested
// without a broker (tests/unit/dead_letters_test.cc).
//
// List: passive declare (the count), basic.get without ack up to the limit,
// then the channel is closed, so the broker requeues every message: nothing
// is consumed. Replay: confirm mode; each message is got, published to the
// business's exchange (mandatory) with the routing key it was dead-lettered
// with, and acked in the dead-letter queue only once the broker confirmed the
// copy; a nack, a return or no confirm in time requeues it (basic.reject) and
// ends the replay with an error saying how many were replayed.
#pragma once

#include <amqp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config/config.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/mutex.h"

namespace mqs::amqp {

// kReplayedHeader: on a replayed copy, how many times the message has been
// replayed (1 the first time). Reserved (x-mq-sidecar-*): clients cannot set it.
inline constexpr std::string_view kReplayedHeader = "x-mq-sidecar-replayed";

// ListDeadLetters: max 0 lists this many, and never more than kListMax.
inline constexpr uint32_t kListDefault = 100;
inline constexpr uint32_t kListMax = 1000;
// Every request ends within this, whatever the call's own deadline.
inline constexpr std::chrono::seconds kDeadLetterTimeCap{30};
// Requests queued behind the one being served; more are refused.
inline constexpr size_t kDeadLetterQueueMax = 16;

// DeadLetterTarget: where a business's dead letters are, and where they go
// back to.
struct DeadLetterTarget {
  std::string business;
  std::string dead_queue;  // <consumer queue>.dead
  std::string exchange;    // the consumer business's exchange
};

// ResolveDeadLetterTarget: the target of a configured consumer business;
// INVALID_ARGUMENT naming the configured consumers otherwise.
absl::StatusOr<DeadLetterTarget> ResolveDeadLetterTarget(const config::Config& config,
                                                         std::string_view business);

// ListLimit: how many messages a ListDeadLettersRequest.max asks for.
uint32_t ListLimit(uint32_t max);

// ValidateReplay: a message_id longer than AMQP allows (255 bytes) cannot match.
absl::Status ValidateReplay(const mqsidecar::v1::ReplayDeadLettersRequest& request);

// RequestDeadline: when a request must be answered: the call's deadline less
// a margin (a tenth, at most 100 ms, so the caller reads our status rather
// than its own DEADLINE_EXCEEDED), capped at kDeadLetterTimeCap from now.
std::chrono::steady_clock::time_point RequestDeadline(
    std::chrono::system_clock::time_point call_deadline, std::chrono::system_clock::time_point now,
    std::chrono::steady_clock::time_point steady_now);

// ParseDeath fills the DeadLetter's reason, queue, dead_lettered_at_ms,
// count, original_exchange and original_routing_key from the first (most
// recent) entry of the x-death header in `headers`. False when there is no
// x-death header, or its first entry is not a table.
bool ParseDeath(const amqp_table_t& headers, mqsidecar::v1::DeadLetter* out);

// ToDeadLetter: one message got from a dead-letter queue: the Delivery as
// Subscribe renders it (delivery_id 0; exchange and routing key as the
// dead-letter queue received it) and the x-death facts.
mqsidecar::v1::DeadLetter ToDeadLetter(const amqp_basic_properties_t& props, amqp_bytes_t body,
                                       std::string_view business, std::string_view exchange,
                                       std::string_view routing_key);

// ReplayRoutingKey: the routing key the message had before it was
// dead-lettered (x-death routing-keys[0]), else `fallback` (the routing key
// it was got with).
std::string ReplayRoutingKey(const mqsidecar::v1::DeadLetter& letter, std::string_view fallback);

// ReplayProperties: the properties of a replayed copy: every property and
// header of the original, x-death included (the history stays with the
// message, and the broker adds to it if it is dead-lettered again), except
// x-delivery-count (the dead-letter queue's own count; the business's quorum
// queue counts afresh) and the delayed-retry headers (its attempts start
// afresh; it is no longer dead), plus kReplayedHeader = previous value + 1. Points
// into `original`, which must outlive props().
class ReplayProperties {
 public:
  void Build(const amqp_basic_properties_t& original);
  const amqp_basic_properties_t* props() const { return &props_; }
  int64_t replayed() const { return replayed_; }

 private:
  amqp_basic_properties_t props_{};
  std::vector<amqp_table_entry_t> headers_;
  int64_t replayed_ = 0;
};

// DeadLetterWorker: see the file comment.
class DeadLetterWorker {
 public:
  using Clock = std::chrono::steady_clock;
  using ListDone = std::function<void(absl::StatusOr<mqsidecar::v1::ListDeadLettersResponse>)>;
  // `status` is OK when the whole replay went through; otherwise `response`
  // says what was replayed before the error.
  using ReplayDone =
      std::function<void(absl::Status status, mqsidecar::v1::ReplayDeadLettersResponse response)>;

  explicit DeadLetterWorker(config::Broker broker);
  ~DeadLetterWorker();  // Stop()
  DeadLetterWorker(const DeadLetterWorker&) = delete;
  DeadLetterWorker& operator=(const DeadLetterWorker&) = delete;

  void Start();
  // Stop: requests still queued are answered UNAVAILABLE; the one being
  // served stops before its next message, or after `grace` its connection is
  // cut (its unacked messages return to the dead-letter queue). Joins.
  void Stop(std::chrono::milliseconds grace = std::chrono::seconds(2));

  // Each answers through `done` exactly once, on the worker's thread (or on
  // the caller's, when refused at once).
  void List(DeadLetterTarget target, uint32_t limit, Clock::time_point deadline, ListDone done);
  void Replay(DeadLetterTarget target, uint32_t max, std::string message_id,
              Clock::time_point deadline, ReplayDone done);

  // For the session: the socket of the connection in use (-1: none), which
  // Stop may shut down to cut a broker that does not answer.
  void SetActiveFd(int fd);
  bool stop_requested() const { return stop_.load(std::memory_order_acquire); }

 private:
  struct Job {
    bool replay = false;
    DeadLetterTarget target;
    uint32_t max = 0;
    std::string message_id;
    Clock::time_point deadline;
    ListDone list_done;
    ReplayDone replay_done;
  };
  static void Refuse(Job& job, const absl::Status& status);
  void Submit(Job job);
  void Run();
  void Serve(Job& job);

  const config::Broker broker_;
  std::atomic<bool> stop_{false};
  util::Mutex mu_;
  util::CondVar cv_;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool accepting_ ABSL_GUARDED_BY(mu_) = false;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  int active_fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::thread thread_;
};

}  // namespace mqs::amqp
