// Properties: conversion between the API's messages and AMQP basic properties.
//
// Kept apart from the I/O threads so the round-trip (headers, ids, content
// type, timestamp) is unit-tested without a broker.
#pragma once

#include <amqp.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::amqp {

// ValidatePublish checks what AMQP itself limits (short strings are at most
// 255 bytes), and refuses header names with control characters and reserved
// headers (IsReservedHeader); the message names the offending field.
absl::Status ValidatePublish(const mqsidecar::v1::PublishRequest& request);

// IsReservedHeader: a header the broker, its plugins or mq-sidecar interpret
// on a message (CC, BCC, x-delivery-count, x-death, x-first-death-*,
// x-last-death-*, x-received-from, x-shovelled*, x-delay, x-stream-*,
// x-mqtt-*, x-amqp-1.0-*, x-opt-*, x-mq-sidecar-*), case-insensitively. A
// client may not set one: it could forge a marker or a count, or break routing.
bool IsReservedHeader(std::string_view name);

// kRepublishedHeader marks a copy the daemon published again after losing the
// connection before the broker confirmed the first send. The first copy may
// have reached the queue too, so the consumer side reports this one as
// `redelivered`: every possible duplicate is visible (docs/reliability.md).
inline constexpr std::string_view kRepublishedHeader = "x-mq-sidecar-republished";

// OutgoingProperties builds the properties of one publish: persistent,
// timestamp, message_id, and the caller's optional fields. It owns the
// storage the amqp_basic_properties_t points into; reuse one instance per
// thread to avoid per-message allocation.
class OutgoingProperties {
 public:
  // Build points into `request` and `message_id`: both must outlive the use
  // of props().
  // `republished` adds kRepublishedHeader.
  void Build(const mqsidecar::v1::PublishRequest& request, std::string_view message_id,
             int64_t timestamp_seconds, bool republished = false);
  const amqp_basic_properties_t* props() const { return &props_; }

 private:
  amqp_basic_properties_t props_{};
  std::vector<amqp_table_entry_t> headers_;
  std::string expiration_;
};

// FieldToString renders an AMQP field value as text; the API's headers are
// strings, and other AMQP clients may send numbers, booleans or nested tables.
std::string FieldToString(const amqp_field_value_t& value);

// FillDelivery copies the message properties into `delivery`. x-delivery-count
// (kept by quorum queues) becomes delivery_count rather than a header, and
// kRepublishedHeader sets `redelivered` instead of showing as a header.
void FillDelivery(const amqp_basic_properties_t& props, mqsidecar::v1::Delivery* delivery);

}  // namespace mqs::amqp
