// The pure parts of PublishBatchStream (publish_stream.cc): the batch-size
// rule and the encoding of a PublishResultBatch from results serialized one
// by one. No socket; unit-tested alone (tests/unit/publish_batch_stream_test.cc).
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "absl/status/status.h"
#include "util/strings.h"

namespace mqs::server {

// kMaxResultBatchBytes: the most one PublishResultBatch carries, far below
// gRPC's send limit (a result is at most ~1 KiB: a 255-byte message_id and
// an error text), so a write never fails for its size.
inline constexpr size_t kMaxResultBatchBytes = size_t{1} << 20;

// CheckBatchSize: the `n`th request of the stream, a batch of `messages`,
// against limits.max_batch_messages. A batch over it ends the stream
// (INVALID_ARGUMENT): answering each of its messages FAILED would hold
// results in proportion to what the client sent, not to the window.
inline absl::Status CheckBatchSize(size_t messages, uint32_t max, uint64_t n) {
  if (messages <= max) return absl::OkStatus();
  return absl::InvalidArgumentError(util::StrCat(
      "batch ", n, " has ", messages, " messages, over limits.max_batch_messages (", max, ")"));
}

// ResultBatchEncoder: PublishResultBatch is `repeated PublishResult results =
// 1`, so its encoding is each result's bytes behind a tag (field 1, length
// delimited: 0x0A) and a varint length. Results are serialized as they
// settle, outside the call's lock; the batch is this concatenation, taken
// under it when the stream can write.
class ResultBatchEncoder {
 public:
  // VarintSize: bytes of `v` as a protobuf varint.
  static size_t VarintSize(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
      v >>= 7;
      ++n;
    }
    return n;
  }
  // FramedSize: what one result of `bytes` adds to the batch.
  static size_t FramedSize(size_t bytes) { return 1 + VarintSize(bytes) + bytes; }

  // Take moves results from the front of `ready` (each one serialized
  // PublishResult) into `out` as one PublishResultBatch, stopping before
  // the result that would take it over `max_bytes` (always at least one).
  // Returns how many it took; `ready` must not be empty.
  static size_t Take(std::deque<grpc::Slice>& ready, size_t max_bytes, grpc::ByteBuffer* out) {
    size_t total = 0;
    size_t count = 0;
    for (const grpc::Slice& s : ready) {
      const size_t add = FramedSize(s.size());
      if (count > 0 && total + add > max_bytes) break;
      total += add;
      ++count;
    }
    grpc::Slice batch(total);
    auto* p = const_cast<uint8_t*>(batch.begin());  // freshly allocated, ours to fill
    for (size_t i = 0; i < count; ++i) {
      const grpc::Slice& s = ready.front();
      *p++ = 0x0A;
      for (uint64_t v = s.size();; v >>= 7) {
        if (v < 0x80) {
          *p++ = static_cast<uint8_t>(v);
          break;
        }
        *p++ = static_cast<uint8_t>(v | 0x80);
      }
      if (s.size() != 0) std::memcpy(p, s.begin(), s.size());
      p += s.size();
      ready.pop_front();
    }
    grpc::ByteBuffer bytes(&batch, 1);
    out->Swap(&bytes);
    return count;
  }
};

}  // namespace mqs::server
