// A history checker in the style of RabbitMQ's Jepsen suite.
//
// A test records every publish it sends and the outcome the sidecar gave it,
// and every delivery its consumers received and handled (processed, then
// acked). Every record gets a sequence number under one lock, so the history
// is one merged timeline: each consumer's deliveries in the order it saw them,
// interleaved with the others' as they happened. Check() then judges each
// message_id:
//
//   CONFIRMED     the broker has it: it must be handled at least once
//                 (else it is LOST, the one thing that must never happen);
//   UNCONFIRMED   outcome unknown: delivered or not, both are legal
//                 ("unknown"; "recovered" when it was delivered anyway);
//   FAILED        never sent: it must never be delivered;
//   UNROUTABLE / REJECTED: the broker refused it: it must never be delivered;
//   unanswered    written to the stream, no result: the sidecar never read it
//                 (shutdown), so never sent, so never delivered.
//
// A message published more than once (a declared client retry) takes the
// best outcome of its attempts: CONFIRMED, else UNCONFIRMED, else never sent.
//
// Duplicates, judged in the order consumers saw them: the first copy received
// is the original; every later copy is an extra copy and must be explained.
// A marked copy (redelivered, or a delivery_count) is explained: a consumer
// following docs/reliability.md looks it up. An unmarked copy is a violation,
// because a consumer that trusted redelivered=false would process it twice:
//   - "after handled": an earlier copy had already been handled;
//   - "concurrent": an earlier copy was received and not handled yet (two
//     consumers holding copies at once);
// unless a republished copy of it came first (the original, queued late:
// accepted under kOriginalAfterRepublishedCause), or the test declared a
// cause for it (Retried: a client retry after
// UNCONFIRMED, a stream broken by a SIGKILLed sidecar, ...; BrokerRestart: the
// previous copy was received before the broker answered again after a
// declared restart (also while it was stopping) and this one after it, for a broker that does not
// mark what it delivers again after a restart, see docs/reliability.md): then it is "accepted",
// counted by cause and listed. Message ids delivered that the test never published are
// "unexpected".
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "util/mutex.h"

namespace mqs::it {

// History: the recorded publishes and deliveries of one test, and their judge.
class History {
 public:
  using WallClock = std::chrono::system_clock;
  // The cause an unmarked copy explained by BrokerRestart is reported under.
  static constexpr const char* kBrokerRestartCause =
      "broker restart: the broker does not always mark copies it delivers again after a restart";

  // The cause an unmarked copy is accepted under when a copy of the same
  // message that the sidecar republished (Delivery.republished) came before
  // it: the original was still inside the broker when the connection was
  // lost and was queued after its republished copy (docs/reliability.md,
  // "When duplicates happen"). One republished copy explains one original.
  static constexpr const char* kOriginalAfterRepublishedCause =
      "original after its republished copy: the broker queued the first send after the copy "
      "the sidecar sent again";
  // The cause an unmarked copy is accepted under inside a declared cluster
  // node failover (NodeFailover).
  static constexpr const char* kNodeFailoverCause =
      "cluster node failover: RabbitMQ 3.10 may deliver a message in flight at the stop of the "
      "node the sidecar was connected to again, unmarked, right after a marked copy";
  // `clock` stamps deliveries (wall clock, so restarts timed by another
  // process, e.g. tests/soak/soak.sh, can be declared); unit tests inject one.
  explicit History(std::function<WallClock::time_point()> clock = &WallClock::now)
      : clock_(std::move(clock)) {}

  // A publish handed to the sidecar (written to a stream, or a unary call
  // made): one attempt.
  void Sent(const std::string& message_id);
  // The sidecar's answer for an attempt.
  void Result(const mqsidecar::v1::PublishResult& result);
  // A unary Publish that ended with a gRPC error (UNAVAILABLE, RESOURCE_EXHAUSTED:
  // not sent); recorded as FAILED.
  void Failed(const std::string& message_id);
  // A call that ended without telling (the client's own deadline, a stream
  // broken by a killed sidecar): it may or may not have been sent; recorded as
  // UNCONFIRMED (unknown).
  void Unknown(const std::string& message_id);
  // The test declares that it publishes `message_id` once more although an
  // earlier attempt may have reached the broker (a client retry after
  // UNCONFIRMED or an unanswered request of a broken stream): one more
  // unmarked copy of it is accounted for. `cause` names the event in reports.
  // Call it before the retry's Sent.
  void Retried(const std::string& message_id, const std::string& cause);

  // The test declares that the broker was restarted (stop_app/start_app, a
  // node restart) from `began` to `ended` (the broker answers again): an
  // unmarked copy received after `ended` whose previous copy was received
  // before `ended` (before the stop or while the broker was stopping, when
  // the acks it was sent may not be applied) is accounted for
  // (kBrokerRestartCause). One restart explains one
  // copy per message id: a further unmarked copy needs another restart
  // between it and its predecessor. May be called any time before Check().
  void BrokerRestart(WallClock::time_point began, WallClock::time_point ended);

  // The test declares that a cluster node the daemon was connected to was
  // stopped at `began` and the cluster had settled (the daemon's links moved,
  // the queue drained) by `ended`: an unmarked copy whose previous copy and
  // itself were both received inside that span is accounted for
  // (kNodeFailoverCause; docs/reliability.md, "When duplicates happen"). The
  // test bounds how many it accepts: the report counts them under the cause.
  void NodeFailover(WallClock::time_point began, WallClock::time_point ended);

  // A consumer received a delivery (not handled yet).
  void Received(const std::string& consumer, const mqsidecar::v1::Delivery& delivery);
  // The consumer handled (processed, then acked) a delivery it received
  // (matched by consumer and delivery_id).
  void Handled(const std::string& consumer, const mqsidecar::v1::Delivery& delivery);
  // Received and handled at once (a consumer that processes and acks as it
  // reads).
  void Delivered(const std::string& consumer, const mqsidecar::v1::Delivery& delivery);

  // CONFIRMED message ids not handled yet (for waiting until drained).
  size_t ConfirmedUndelivered() const;

  struct Report {
    size_t sent = 0;
    size_t confirmed = 0;
    size_t unconfirmed = 0;  // "unknown"
    size_t failed = 0;
    size_t unroutable = 0;
    size_t rejected = 0;
    size_t unanswered = 0;
    size_t retries = 0;                 // declared retries (Retried)
    size_t answered_twice = 0;          // more results than attempts: a violation
    size_t deliveries = 0;              // received copies, duplicates included
    size_t handled = 0;                 // of which handled
    size_t delivered_ids = 0;           // distinct message ids handled
    size_t handled_unreceived = 0;      // Handled without a matching Received: a violation
    size_t lost = 0;                    // CONFIRMED, never handled: a violation
    size_t duplicated = 0;              // message ids received more than once
    size_t extra_copies = 0;            // copies beyond the first received, summed
    size_t extra_visible = 0;           // of which marked redelivered / delivery_count > 0
    size_t marked_concurrent = 0;       // marked, received while another copy was unhandled
    size_t accepted = 0;                // unmarked, accounted for by a declared cause
    size_t invisible = 0;               // unmarked, unexplained: a violation, =
    size_t unmarked_after_handled = 0;  //   received after an earlier copy was handled
    size_t unmarked_concurrent = 0;     //   + while earlier copies were still unhandled
    size_t recovered = 0;               // UNCONFIRMED but delivered
    size_t never_sent_delivered = 0;    // FAILED/UNROUTABLE/REJECTED/unanswered, yet delivered
    size_t unexpected = 0;              // delivered, never published
    size_t broker_restarts = 0;         // declared (BrokerRestart)
    std::map<std::string, size_t> accepted_by_cause;
    std::vector<std::string> lost_examples;       // up to 10
    std::vector<std::string> accepted_examples;   // up to 10, declared retries
    std::vector<std::string> restart_examples;    // up to 10, declared broker restarts
    std::vector<std::string> violation_examples;  // up to 10

    // No lost, never-sent-delivered, unexpected, twice-answered messages,
    // unexplained unmarked copies or handles of unreceived deliveries.
    bool ok() const;
    // "" when ok(), else the violation counts and the first example on one
    // line: CHECK(r.Violations() == "") shows why in the assertion itself,
    // where a CI log cut to its head and tail still has it.
    std::string Violations() const;
    std::string Summary() const;
  };
  Report Check() const;

 private:
  enum class Outcome { kNone, kConfirmed, kUnconfirmed, kFailed, kUnroutable, kRejected };
  struct Entry {
    std::string id;
    int attempts = 0;  // Sent calls
    int results = 0;
    int retries = 0;  // declared
    bool confirmed = false;
    bool unconfirmed = false;
    Outcome last_refusal = Outcome::kNone;  // FAILED/UNROUTABLE/REJECTED seen
    int handled = 0;
    std::vector<std::string> causes;  // of the declared retries
  };
  struct Event {
    uint32_t entry;
    uint32_t consumer;
    uint64_t delivery_id;
    bool handle;  // false: received
    bool marked;
    bool republished = false;  // received events only
    int64_t at_ns;             // wall clock, received events only
  };
  struct Restart {
    int64_t began_ns, ended_ns;
  };

  uint32_t EntryOf(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t ConsumerOf(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReceivedLocked(const std::string& consumer, const mqsidecar::v1::Delivery& delivery)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandledLocked(const std::string& consumer, const mqsidecar::v1::Delivery& delivery)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::function<WallClock::time_point()> clock_;
  mutable util::Mutex mu_;
  std::vector<Restart> restarts_ ABSL_GUARDED_BY(mu_);
  std::vector<Restart> failovers_ ABSL_GUARDED_BY(mu_);
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, uint32_t> index_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> consumers_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, uint32_t> consumer_index_ ABSL_GUARDED_BY(mu_);
  // The merged timeline: events in the order they were recorded.
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
  // Received, not yet handled: (consumer, delivery_id) -> entry.
  std::map<std::pair<uint32_t, uint64_t>, uint32_t> open_ ABSL_GUARDED_BY(mu_);
  size_t handled_unreceived_ ABSL_GUARDED_BY(mu_) = 0;
  size_t confirmed_unhandled_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mqs::it
