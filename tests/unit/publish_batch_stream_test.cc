// The pure parts of PublishBatchStream (server/publish_batch.h): the batch
// limit and the PublishResultBatch built from results serialized one by one.
#include <grpcpp/support/proto_buffer_reader.h>

#include <catch2/catch.hpp>
#include <deque>
#include <string>

#include "mqsidecar/v1/pubsub.pb.h"
#include "server/publish_batch.h"

namespace mqs::server {
namespace {

using mqsidecar::v1::PublishResult;
using mqsidecar::v1::PublishResultBatch;

grpc::Slice SliceOf(const PublishResult& r) { return grpc::Slice(r.SerializeAsString()); }

PublishResult Result(uint64_t seq, size_t error_bytes = 0) {
  PublishResult r;
  r.set_sequence(seq);
  r.set_message_id("id-" + std::to_string(seq));
  r.set_status(error_bytes ? PublishResult::FAILED : PublishResult::CONFIRMED);
  r.set_error(std::string(error_bytes, 'e'));
  return r;
}

PublishResultBatch Parse(grpc::ByteBuffer& bytes) {
  PublishResultBatch batch;
  grpc::ProtoBufferReader reader(&bytes);
  REQUIRE(batch.ParseFromZeroCopyStream(&reader));
  return batch;
}

TEST_CASE("publish batch: results framed one by one parse as the PublishResultBatch of them") {
  std::deque<grpc::Slice> ready;
  PublishResultBatch expected;
  // Sizes around the one- and two-byte varint lengths (127, 128) and larger.
  for (size_t e : {size_t{0}, size_t{100}, size_t{110}, size_t{300}, size_t{20000}}) {
    const PublishResult r = Result(expected.results_size() + 1, e);
    *expected.add_results() = r;
    ready.push_back(SliceOf(r));
  }
  grpc::ByteBuffer out;
  CHECK(ResultBatchEncoder::Take(ready, kMaxResultBatchBytes, &out) == 5);
  CHECK(ready.empty());
  CHECK(out.Length() == expected.ByteSizeLong());
  const PublishResultBatch got = Parse(out);
  CHECK(got.SerializeAsString() == expected.SerializeAsString());
}

TEST_CASE("publish batch: a batch stops before the result that would pass the byte bound") {
  std::deque<grpc::Slice> ready;
  for (uint64_t seq = 1; seq <= 10; ++seq) ready.push_back(SliceOf(Result(seq, 100)));
  const size_t one = ResultBatchEncoder::FramedSize(ready.front().size());
  grpc::ByteBuffer out;
  CHECK(ResultBatchEncoder::Take(ready, 3 * one + one / 2, &out) == 3);
  CHECK(ready.size() == 7);
  PublishResultBatch got = Parse(out);
  REQUIRE(got.results_size() == 3);
  CHECK(got.results(2).sequence() == 3);
  // One result larger than the bound still goes alone.
  CHECK(ResultBatchEncoder::Take(ready, 1, &out) == 1);
  got = Parse(out);
  REQUIRE(got.results_size() == 1);
  CHECK(got.results(0).sequence() == 4);
}

TEST_CASE("publish batch: varint sizes") {
  CHECK(ResultBatchEncoder::VarintSize(0) == 1);
  CHECK(ResultBatchEncoder::VarintSize(127) == 1);
  CHECK(ResultBatchEncoder::VarintSize(128) == 2);
  CHECK(ResultBatchEncoder::VarintSize(16383) == 2);
  CHECK(ResultBatchEncoder::VarintSize(16384) == 3);
}

TEST_CASE("publish batch: a batch over limits.max_batch_messages is named with its size") {
  CHECK(CheckBatchSize(1000, 1000, 3).ok());
  const absl::Status s = CheckBatchSize(1001, 1000, 3);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message() == "batch 3 has 1001 messages, over limits.max_batch_messages (1000)");
}

}  // namespace
}  // namespace mqs::server
