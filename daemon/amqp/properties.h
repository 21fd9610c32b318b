// Properties: conversion between the API's messages and AMQP basic properties.
//
// Kept apart from the I/O threads so the round-trip (headers, ids, content
// type, timestamp) is unit-tested without a broker.
#pragma once

#include <amqp.h>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "config/config.h"
#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::amqp {

// ValidatePublish checks the config's `limits` (payload, header count and
// bytes, routing key, message and correlation id; the message names the
// limit's key and both sizes), what AMQP itself limits (short strings are at
// most 255 bytes), and refuses header names with control characters and
// reserved headers (IsReservedHeader); the message names the offending
// field. Pure: the server calls it for each request, unit tests alone.
absl::Status ValidatePublish(const mqsidecar::v1::PublishRequest& request,
                             const config::Limits& limits = config::Limits{});

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

// Delayed retry (docs/reliability.md). A retry copy carries how many delayed
// retries the message has had (Delivery.attempt is one more) and where it was
// first published, since it comes back through the default exchange under
// its queue's name: the client still sees the original exchange and key.
inline constexpr std::string_view kRetriesHeader = "x-mq-sidecar-retries";
inline constexpr std::string_view kOriginalExchangeHeader = "x-mq-sidecar-exchange";
inline constexpr std::string_view kOriginalRoutingKeyHeader = "x-mq-sidecar-routing-key";
// A message the daemon dead-lettered itself (retries exhausted) says why,
// from which queue and when (ms since the epoch): no x-death entry does.
inline constexpr std::string_view kDeadReasonHeader = "x-mq-sidecar-dead-reason";
inline constexpr std::string_view kDeadQueueHeader = "x-mq-sidecar-dead-queue";
inline constexpr std::string_view kDeadAtHeader = "x-mq-sidecar-dead-at-ms";

// CapturedMessage: a delivery's properties (headers of every type, nested
// tables included) and body, deep-copied, so that the daemon can publish it
// again as it came (delayed retry).
class CapturedMessage {
 public:
  explicit CapturedMessage(const amqp_basic_properties_t& props);
  ~CapturedMessage();
  CapturedMessage(const CapturedMessage&) = delete;
  CapturedMessage& operator=(const CapturedMessage&) = delete;

  const amqp_basic_properties_t& props() const { return props_; }

  std::string body;
  // Where the client was told it came from (the original exchange and
  // routing key, also for a retry copy).
  std::string exchange;
  std::string routing_key;

 private:
  amqp_pool_t pool_{};
  amqp_basic_properties_t props_{};
  std::deque<std::string> strings_;
};

// FindHeader: the value of header `name`, or null.
const amqp_field_value_t* FindHeader(const amqp_basic_properties_t& props, std::string_view name);
// HeaderNumber: an integer header's value (any integer kind, or digits in a
// string), or `fallback` when absent or not a number.
int64_t HeaderNumber(const amqp_basic_properties_t& props, std::string_view name, int64_t fallback);
// HeaderText: a header's value as text (FieldToString), or "" when absent.
std::string HeaderText(const amqp_basic_properties_t& props, std::string_view name);

// CopyProperties builds a copy's properties: every property and header of
// `original` except the headers named in `replace` and `drop`, plus the
// `replace` ones with their new values. Points into `original` and into
// itself: both must outlive props().
class CopyProperties {
 public:
  struct Header {
    std::string_view name;
    std::variant<std::string, int64_t> value;
  };
  void Build(const amqp_basic_properties_t& original, std::vector<Header> replace,
             std::initializer_list<std::string_view> drop = {});
  const amqp_basic_properties_t* props() const { return &props_; }

 private:
  amqp_basic_properties_t props_{};
  std::vector<Header> replace_;
  std::vector<amqp_table_entry_t> headers_;
};

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
// strings, and other AMQP clients may send numbers, booleans or nested tables
// (arrays as [a,b], tables as {k=v}; nesting deeper than 16 shows as [...]).
std::string FieldToString(const amqp_field_value_t& value);

// FillDelivery copies the message properties into `delivery`. x-delivery-count
// (kept by quorum queues) becomes delivery_count rather than a header,
// kRepublishedHeader sets `redelivered`, kRetriesHeader sets `attempt`
// (always >= 1), and the retry copy's original exchange and routing key
// replace the ones it came back with; none of these shows as a header.
void FillDelivery(const amqp_basic_properties_t& props, mqsidecar::v1::Delivery* delivery);

}  // namespace mqs::amqp
