#include "server/request_checks.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <algorithm>
#include <string>
#include <string_view>

#include "amqp/retry.h"
#include "util/grpc_limits.h"
#include "util/strings.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::SubscribeRequest;

// CheckIds: an ack or nack must name a delivery (delivery_id 0 means "none
// besides the list"; ids 0 in the list are settled, and so refused, as a
// single ack of 0 is), and `multiple` needs a delivery_id to reach.
absl::Status CheckIds(std::string_view what, uint64_t delivery_id, bool multiple, int listed) {
  if (delivery_id != 0) return absl::OkStatus();
  if (multiple) {
    return absl::InvalidArgumentError(util::StrCat(
        what, ".multiple needs a delivery_id (it applies to delivery_id, not delivery_ids)"));
  }
  if (listed == 0) {
    return absl::InvalidArgumentError(
        util::StrCat(what, " names no delivery: set delivery_id or delivery_ids"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseRequest(grpc::ByteBuffer* raw, google::protobuf::Message* out, uint64_t n) {
  if (grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(raw, out).ok()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(util::StrCat("request ", n, " could not be parsed as ",
                                                 out->GetDescriptor()->full_name(),
                                                 " (malformed, or a string field is not UTF-8)"));
}

absl::StatusOr<SubscribeStep> CheckSubscribeRequest(const SubscribeRequest& request,
                                                    const config::Consumer* opened) {
  switch (request.kind_case()) {
    case SubscribeRequest::kOpen:
      if (opened != nullptr) {
        return absl::InvalidArgumentError("open sent twice on one Subscribe stream");
      }
      return SubscribeStep::kOpen;
    case SubscribeRequest::kAck:
    case SubscribeRequest::kNack:
      if (opened == nullptr) {
        return absl::InvalidArgumentError("the first request of a Subscribe stream must be open");
      }
      if (request.has_ack()) {
        const auto& ack = request.ack();
        if (absl::Status s =
                CheckIds("ack", ack.delivery_id(), ack.multiple(), ack.delivery_ids_size());
            !s.ok()) {
          return s;
        }
        return SubscribeStep::kAck;
      } else {
        const auto& nack = request.nack();
        if (absl::Status s =
                CheckIds("nack", nack.delivery_id(), nack.multiple(), nack.delivery_ids_size());
            !s.ok()) {
          return s;
        }
        if (absl::Status s =
                amqp::ValidateNackDelay(*opened, nack.requeue(), nack.retry_after_ms());
            !s.ok()) {
          return s;
        }
        return SubscribeStep::kNack;
      }
    case SubscribeRequest::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("empty SubscribeRequest: set open, ack or nack");
}

absl::StatusOr<OpenPlan> CheckOpen(const SubscribeRequest::Open& open,
                                   const config::Config& config) {
  const config::Consumer* consumer = config.FindConsumer(open.business());
  if (consumer == nullptr) {
    std::string names;
    for (const auto& c : config.consumers) {
      util::StrAppend(&names, names.empty() ? "" : ", ", c.name);
    }
    return absl::InvalidArgumentError(
        util::StrCat("unknown business '", util::ForLog(open.business()),
                     "'; configured consumers: ", names.empty() ? "none" : names));
  }
  // The name goes into the consumer tag, which operators read in the
  // broker's tools and in our logs.
  if (util::HasControlChars(open.consumer_name())) {
    return absl::InvalidArgumentError(
        util::StrCat("open.consumer_name holds a control character: '",
                     util::ForLog(open.consumer_name()), "'"));
  }
  // A ceiling rather than a clamp: the client would otherwise hold fewer
  // deliveries than it asked for without knowing.
  if (const uint32_t max = config.limits.max_prefetch; open.prefetch() > max) {
    return absl::InvalidArgumentError(util::StrCat("open.prefetch ", open.prefetch(),
                                                   " exceeds limits.max_prefetch (", max, ")"));
  }
  // Checked on Subscribe too (where they do nothing): a bad value is a
  // mistake either way.
  absl::StatusOr<BatchLimits> limits = BatchLimitsOf(open, config.limits);
  if (!limits.ok()) return limits.status();
  return OpenPlan{consumer, *limits};
}

absl::StatusOr<BatchLimits> BatchLimitsOf(const SubscribeRequest::Open& open,
                                          const config::Limits& limits) {
  if (open.max_batch_messages() > limits.max_prefetch) {
    return absl::InvalidArgumentError(
        util::StrCat("open.max_batch_messages ", open.max_batch_messages(),
                     " exceeds limits.max_prefetch (", limits.max_prefetch, ")"));
  }
  const size_t send_limit =
      util::MaxSendBytes(util::MaxRequestBytes(limits.max_payload_bytes, limits.max_header_bytes));
  if (open.max_batch_bytes() > send_limit) {
    return absl::InvalidArgumentError(
        util::StrCat("open.max_batch_bytes ", open.max_batch_bytes(),
                     " exceeds the largest response the sidecar sends (", send_limit,
                     " bytes, from limits.max_payload_bytes and limits.max_header_bytes)"));
  }
  BatchLimits out;
  out.max_messages = open.max_batch_messages() != 0
                         ? open.max_batch_messages()
                         : std::min(kDefaultBatchMessages, limits.max_prefetch);
  out.max_bytes = open.max_batch_bytes() != 0 ? open.max_batch_bytes() : kDefaultBatchBytes;
  return out;
}

}  // namespace mqs::server
