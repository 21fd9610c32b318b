// The gRPC message size limits, shared by the server (which enforces them)
// and the consumer (which must not hand the server a delivery it cannot send).
#pragma once

#include <cstddef>

namespace mqs::util {

// kMaxRequestBytes: the largest request a client may send (a PublishRequest
// with its payload).
inline constexpr size_t kMaxRequestBytes = size_t{16} * 1024 * 1024;

// kMaxSendBytes: the largest message the daemon sends. Above the request
// limit, so that a message published through the sidecar at the request
// limit still fits once it comes back as a Delivery with its exchange,
// routing key, properties and headers. A delivery larger than this (published
// by another AMQP client) is rejected by the consumer, never written.
inline constexpr size_t kMaxSendBytes = kMaxRequestBytes + size_t{1} * 1024 * 1024;

}  // namespace mqs::util
