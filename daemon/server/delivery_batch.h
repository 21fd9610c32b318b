// DeliveryOutbox: what a Subscribe or SubscribeBatch stream holds until it
// can write, and how each response is cut from it.
//
// Each delivery is encoded once, on the consumer thread, outside the call's
// lock (EncodeDelivery): as a whole Delivery for Subscribe, or as one
// `deliveries` field of a DeliveryBatch for SubscribeBatch. A DeliveryBatch
// on the wire is just its fields one after another, so a batch is the
// deliveries' slices side by side in one ByteBuffer: no copy and no second
// serialisation under the lock. Subscribe is the same with batches of one.
#pragma once

#include <grpc/slice.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <vector>

#include "google/protobuf/io/coded_stream.h"
#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::server {

// The defaults of SubscribeRequest.Open's max_batch_messages and
// max_batch_bytes.
inline constexpr uint32_t kDefaultBatchMessages = 256;
inline constexpr uint32_t kDefaultBatchBytes = 1024 * 1024;

// EncodeDelivery: `d` serialised, alone (`as_batch_field` false) or as one
// element of DeliveryBatch.deliveries (its tag and length first). `d` must
// be smaller than 4 GiB (the consumer admits none above the send limit).
inline grpc::Slice EncodeDelivery(const mqsidecar::v1::Delivery& d, bool as_batch_field) {
  using google::protobuf::io::CodedOutputStream;
  // Field 1, wire type 2 (length-delimited).
  constexpr uint32_t kTag = (mqsidecar::v1::DeliveryBatch::kDeliveriesFieldNumber << 3) | 2;
  const auto body = static_cast<uint32_t>(d.ByteSizeLong());
  const size_t head =
      as_batch_field ? CodedOutputStream::VarintSize32(kTag) + CodedOutputStream::VarintSize32(body)
                     : 0;
  grpc_slice s = grpc_slice_malloc(head + body);
  uint8_t* p = GRPC_SLICE_START_PTR(s);
  if (as_batch_field) {
    p = CodedOutputStream::WriteTagToArray(kTag, p);
    p = CodedOutputStream::WriteVarint32ToArray(body, p);
  }
  d.SerializeWithCachedSizesToArray(p);
  return grpc::Slice(s, grpc::Slice::STEAL_REF);
}

// BatchLimits: at most `max_messages` deliveries and about `max_bytes`
// encoded bytes per response; a single delivery above max_bytes still goes,
// alone.
struct BatchLimits {
  size_t max_messages = 1;
  size_t max_bytes = std::numeric_limits<size_t>::max();
};

class DeliveryOutbox {
 public:
  void Push(grpc::Slice encoded) { pieces_.push_back(std::move(encoded)); }
  bool empty() const { return pieces_.empty(); }
  size_t size() const { return pieces_.size(); }
  void Clear() { pieces_.clear(); }

  // Take moves the longest run from the front that `limits` allow (at least
  // one delivery; the outbox must not be empty) into `out` and returns how
  // many deliveries it holds. The slices are shared, not copied.
  size_t Take(const BatchLimits& limits, grpc::ByteBuffer* out) {
    size_t n = 0;
    size_t bytes = 0;
    while (n < pieces_.size() && (n == 0 || (n < limits.max_messages && bytes <= limits.max_bytes &&
                                             pieces_[n].size() <= limits.max_bytes - bytes))) {
      bytes += pieces_[n].size();
      ++n;
    }
    if (n == 1) {
      grpc::ByteBuffer one(&pieces_.front(), 1);
      out->Swap(&one);
    } else {
      taken_.assign(std::make_move_iterator(pieces_.begin()),
                    std::make_move_iterator(pieces_.begin() + static_cast<ptrdiff_t>(n)));
      grpc::ByteBuffer many(taken_.data(), n);
      out->Swap(&many);
      taken_.clear();
    }
    pieces_.erase(pieces_.begin(), pieces_.begin() + static_cast<ptrdiff_t>(n));
    return n;
  }

 private:
  std::deque<grpc::Slice> pieces_;
  std::vector<grpc::Slice> taken_;  // reused: the array a ByteBuffer is built from
};

}  // namespace mqs::server
