// Retry: what a nack does on a consumer business with `retry` configured
// (docs/reliability.md), as pure functions a unit test drives alone.
//
// A delayed retry publishes a copy of the message to a retry queue whose
// TTL is the delay and which dead-letters back to the business's queue
// through the default exchange; the original is acked only once the broker
// confirmed the copy (Consumer does that part).
#pragma once

#include <chrono>
#include <cstdint>

#include "absl/status/status.h"
#include "config/config.h"

namespace mqs::amqp {

// RetryStep: the outcome of one nack.
struct RetryStep {
  enum Kind {
    kNack,   // a plain basic.nack with the requeue asked (no retry configured, or requeue=false)
    kRetry,  // a copy to the retry queue of `delay`, then ack
    kExhausted,  // max_attempts reached: a copy to the dead-letter queue, then ack
  };
  Kind kind = kNack;
  std::chrono::milliseconds delay{0};
};

// DecideRetry: for a delivery of `attempt` (1 = first) nacked with
// `requeue` and `retry_after_ms` (0: none). With retry configured, requeue
// retries after the asked delay (BucketDelay) or else the configured one
// for this attempt (the last one once the list is used up), unless the
// attempt is the last allowed; requeue=false dead-letters at once.
RetryStep DecideRetry(const config::Retry& retry, uint32_t attempt, bool requeue,
                      uint32_t retry_after_ms);

// BucketDelay: the retry queue's delay for a nack's own retry_after_ms. A
// configured delay within the tolerance (10 %, or 100 ms) serves it; other
// delays are rounded to two significant digits (at most 5 % off), so that a
// handful of retry queues serve any delays, each declared when first used.
// Clamped to [kMinRetryDelay, kMaxRetryDelay].
std::chrono::milliseconds BucketDelay(const config::Retry& retry, std::chrono::milliseconds asked);

// ValidateNackDelay: INVALID_ARGUMENT naming the problem for a nack whose
// retry_after_ms cannot be honoured (no retry configured for `business`,
// requeue=false, or above kMaxRetryDelay); OK for 0.
absl::Status ValidateNackDelay(const config::Consumer& business, bool requeue,
                               uint32_t retry_after_ms);

}  // namespace mqs::amqp
