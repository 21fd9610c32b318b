// A history checker in the style of RabbitMQ's Jepsen suite.
//
// A test records every publish it sends and the outcome the sidecar gave it,
// and every delivery its consumers processed. Check() then classifies each
// message_id:
//
//   CONFIRMED     the broker has it: it must be delivered at least once
//                 (else it is LOST, the one thing that must never happen);
//   UNCONFIRMED   outcome unknown: delivered or not, both are legal
//                 ("unknown"; "recovered" when it was delivered anyway);
//   FAILED        never sent: it must never be delivered;
//   UNROUTABLE / REJECTED: the broker refused it: it must never be delivered;
//   unanswered    written to the stream, no result: the sidecar never read it
//                 (shutdown), so never sent, so never delivered.
//
// It also counts duplicates (a message_id processed more than once) and
// splits them into visible ones (the copy said redelivered or carried a
// delivery_count; the daemon marks its republished copies so) and invisible
// ones (nothing told the consumer: only message_id deduplication would catch
// those). Message ids delivered that the
// test never published are "unexpected".
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::it {

class History {
 public:
  // A publish handed to the sidecar (written to a stream, or a unary call made).
  void Sent(const std::string& message_id);
  // The sidecar's answer for it.
  void Result(const mqsidecar::v1::PublishResult& result);
  // A unary Publish that ended with a gRPC error (UNAVAILABLE, RESOURCE_EXHAUSTED:
  // not sent); recorded as FAILED.
  void Failed(const std::string& message_id);
  // A call that ended without telling (e.g. the client's own deadline): it may
  // or may not have been sent; recorded as UNCONFIRMED (unknown).
  void Unknown(const std::string& message_id);
  // A consumer processed (acked) a delivery.
  void Delivered(const std::string& consumer, const mqsidecar::v1::Delivery& delivery);

  // CONFIRMED message ids not delivered yet (for waiting until drained).
  size_t ConfirmedUndelivered() const;

  struct Report {
    size_t sent = 0;
    size_t confirmed = 0;
    size_t unconfirmed = 0;  // "unknown"
    size_t failed = 0;
    size_t unroutable = 0;
    size_t rejected = 0;
    size_t unanswered = 0;
    size_t answered_twice = 0;               // a publish with more than one result: a violation
    size_t deliveries = 0;                   // processed deliveries, copies included
    size_t delivered_ids = 0;                // distinct message ids processed
    size_t lost = 0;                         // CONFIRMED, never delivered: a violation
    size_t duplicated = 0;                   // message ids processed more than once
    size_t extra_copies = 0;                 // deliveries beyond the first, summed
    size_t extra_visible = 0;                // of which marked redelivered / delivery_count > 0
    size_t invisible = 0;                    // extra copies nothing marked: a violation
    size_t recovered = 0;                    // UNCONFIRMED but delivered
    size_t never_sent_delivered = 0;         // FAILED/UNROUTABLE/REJECTED/unanswered, yet delivered
    size_t unexpected = 0;                   // delivered, never published
    std::vector<std::string> lost_examples;  // up to 10
    std::vector<std::string> violation_examples;

    // No lost, never-sent-delivered, unexpected, twice-answered messages or
    // invisible duplicates.
    bool ok() const;
    std::string Summary() const;
  };
  Report Check() const;

 private:
  enum class Outcome { kNone, kConfirmed, kUnconfirmed, kFailed, kUnroutable, kRejected };
  struct Entry {
    bool sent = false;
    Outcome outcome = Outcome::kNone;
    int results = 0;
    int deliveries = 0;
    int marked = 0;  // deliveries marked redelivered or with a delivery_count
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  std::set<std::string> confirmed_undelivered_;
};

}  // namespace mqs::it
