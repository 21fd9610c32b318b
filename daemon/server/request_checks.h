// Request checks: what the gRPC edge verifies in the requests a client
// sends, and in which order, before anything reaches the I/O threads. Pure
// (no call, no socket, no lock): the stream classes call them, unit tests and
// tests/fuzz/request_fuzz.cc drive them alone with whatever bytes a client
// could send.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config/config.h"
#include "google/protobuf/message.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "server/delivery_batch.h"

namespace mqs::server {

// ParseRequest parses a request read raw into `out`, or says which request
// (1-based `n`) of the stream could not be parsed (INVALID_ARGUMENT).
absl::Status ParseRequest(grpc::ByteBuffer* raw, google::protobuf::Message* out, uint64_t n);

// SubscribeStep: what a Subscribe request asks for, once it passed
// CheckSubscribeRequest.
enum class SubscribeStep { kOpen, kAck, kNack };

// CheckSubscribeRequest: the request's place in its stream and its shape.
// `opened` is the business the stream opened, null before its open: the
// first request must be open, and only the first; an ack or nack names a
// delivery (`multiple` applies to delivery_id, which it then needs); a nack's
// requeue and retry_after_ms must suit the business (ValidateNackDelay).
// INVALID_ARGUMENT otherwise, naming the field.
absl::StatusOr<SubscribeStep> CheckSubscribeRequest(const mqsidecar::v1::SubscribeRequest& request,
                                                    const config::Consumer* opened);

// OpenPlan: what an accepted open consumes, and how its responses batch.
struct OpenPlan {
  const config::Consumer* consumer = nullptr;
  BatchLimits limits;  // SubscribeBatch's; Subscribe sends one delivery per response
};

// CheckOpen: an open's business is a configured consumer, its consumer name
// has no control character (it goes into the consumer tag operators read),
// its prefetch and batch sizes are within `limits`. INVALID_ARGUMENT naming
// the field otherwise; client strings in the message are made safe
// (util::ForLog). Authorization is the caller's, before this.
absl::StatusOr<OpenPlan> CheckOpen(const mqsidecar::v1::SubscribeRequest::Open& open,
                                   const config::Config& config);

// BatchLimitsOf: open's max_batch_* with their defaults, or INVALID_ARGUMENT
// naming the field over its ceiling (limits.max_prefetch deliveries; the
// send limit in bytes, which a batch must fit in).
absl::StatusOr<BatchLimits> BatchLimitsOf(const mqsidecar::v1::SubscribeRequest::Open& open,
                                          const config::Limits& limits);

}  // namespace mqs::server
