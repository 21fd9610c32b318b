#include "amqp/retry.h"

#include <algorithm>
#include <cstdlib>

#include "util/strings.h"

namespace mqs::amqp {

using std::chrono::milliseconds;

RetryStep DecideRetry(const config::Retry& retry, uint32_t attempt, bool requeue,
                      uint32_t retry_after_ms) {
  if (!retry.enabled() || !requeue) return RetryStep{};
  if (attempt >= retry.max_attempts) return RetryStep{RetryStep::kExhausted, milliseconds(0)};
  if (retry_after_ms > 0) {
    return RetryStep{RetryStep::kRetry, BucketDelay(retry, milliseconds(retry_after_ms))};
  }
  const size_t i = std::min<size_t>(std::max<uint32_t>(attempt, 1) - 1, retry.delays.size() - 1);
  return RetryStep{RetryStep::kRetry, retry.delays[i]};
}

milliseconds BucketDelay(const config::Retry& retry, milliseconds asked) {
  asked = std::clamp(asked, config::kMinRetryDelay, config::kMaxRetryDelay);
  const int64_t a = asked.count();
  const int64_t tolerance = std::max<int64_t>(100, a / 10);
  for (milliseconds d : retry.delays) {
    if (std::llabs(d.count() - a) <= tolerance) return d;
  }
  // Two significant digits: 1234 -> 1200, 98765 -> 99000.
  int64_t scale = 1;
  while (a / scale >= 100) scale *= 10;
  const int64_t rounded = (a + scale / 2) / scale * scale;
  return std::clamp(milliseconds(rounded), config::kMinRetryDelay, config::kMaxRetryDelay);
}

absl::Status ValidateNackDelay(const config::Consumer& business, bool requeue,
                               uint32_t retry_after_ms) {
  if (retry_after_ms == 0) return absl::OkStatus();
  if (!business.retry.enabled()) {
    return absl::InvalidArgumentError(util::StrCat(
        "nack.retry_after_ms needs delayed retry, and business '", business.name,
        "' has no `retry` configured; nack with requeue (no delay) or configure retry"));
  }
  if (!requeue) {
    return absl::InvalidArgumentError(
        "nack.retry_after_ms with requeue=false: a delayed retry requeues; set requeue=true, or "
        "drop retry_after_ms to dead-letter the message");
  }
  if (milliseconds(retry_after_ms) > config::kMaxRetryDelay) {
    return absl::InvalidArgumentError(util::StrCat("nack.retry_after_ms ", retry_after_ms,
                                                   " is above the maximum delay of ",
                                                   config::kMaxRetryDelay.count(), " ms"));
  }
  return absl::OkStatus();
}

}  // namespace mqs::amqp
