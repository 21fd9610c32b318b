// The gRPC message size limits, shared by the server (which enforces them)
// and the consumer (which must not hand the server a delivery it cannot send).
// Derived from the config's `limits` (payload and header bytes) at start.
#pragma once

#include <algorithm>
#include <cstddef>

namespace mqs::util {

// kRequestOverheadBytes: room in a request for every field but the payload
// and the headers (business, routing key, ids, content type, ...: a few
// short strings of at most 255 bytes each, and their tags).
inline constexpr size_t kRequestOverheadBytes = size_t{64} * 1024;

// MaxRequestBytes: the largest request a client may send (gRPC's receive
// limit): a PublishRequest at limits.max_payload_bytes and
// limits.max_header_bytes still fits, so such a request fails alone on the
// daemon's own check instead of ending its stream in gRPC.
constexpr size_t MaxRequestBytes(size_t max_payload_bytes, size_t max_header_bytes) {
  return max_payload_bytes + max_header_bytes + kRequestOverheadBytes;
}

// kDeliveryOverheadBytes: what a Delivery may add to what was published
// (exchange, routing key, properties, headers the broker adds such as
// x-death).
inline constexpr size_t kDeliveryOverheadBytes = size_t{1} * 1024 * 1024;

// kMinSendBytes: the send limit with the default limits (16 MiB payload,
// 64 KiB headers), and the floor of every send limit: smaller limits for
// clients' requests do not shrink what messages from other AMQP clients may
// come back as, nor a dead-letter listing.
inline constexpr size_t kMinSendBytes =
    MaxRequestBytes(size_t{16} * 1024 * 1024, size_t{64} * 1024) + kDeliveryOverheadBytes;

// MaxSendBytes: the largest message the daemon sends. Above the request
// limit, so that a message published through the sidecar at the limits
// still fits once it comes back as a Delivery. A delivery larger than this
// (published by another AMQP client) is rejected by the consumer, never
// written.
constexpr size_t MaxSendBytes(size_t max_request_bytes) {
  return std::max(kMinSendBytes, max_request_bytes + kDeliveryOverheadBytes);
}

}  // namespace mqs::util
