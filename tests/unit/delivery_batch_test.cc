// DeliveryOutbox and EncodeDelivery (server/delivery_batch.h): how a
// SubscribeBatch response is cut and what its bytes parse as.
#include "server/delivery_batch.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace mqs::server {
namespace {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::DeliveryBatch;

Delivery Make(uint64_t id, size_t payload) {
  Delivery d;
  d.set_delivery_id(id);
  d.set_business("b");
  d.set_message_id("m-" + std::to_string(id));
  d.set_payload(std::string(payload, 'p'));
  (*d.mutable_headers())["h"] = "v";
  return d;
}

std::string Flat(grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  REQUIRE(b.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

TEST_CASE("delivery batch: encoded deliveries side by side parse as one DeliveryBatch") {
  DeliveryOutbox box;
  for (uint64_t id = 1; id <= 3; ++id) box.Push(EncodeDelivery(Make(id, 10 * id), true));
  grpc::ByteBuffer out;
  CHECK(box.Take({.max_messages = 10}, &out) == 3);
  CHECK(box.empty());
  DeliveryBatch batch;
  REQUIRE(batch.ParseFromString(Flat(out)));
  REQUIRE(batch.deliveries_size() == 3);
  for (int i = 0; i < 3; ++i) {
    const Delivery want = Make(static_cast<uint64_t>(i) + 1, 10 * (static_cast<size_t>(i) + 1));
    CHECK(batch.deliveries(i).SerializeAsString() == want.SerializeAsString());
  }
}

TEST_CASE("delivery batch: a delivery encoded alone parses as a Delivery (Subscribe)") {
  DeliveryOutbox box;
  box.Push(EncodeDelivery(Make(7, 300), false));
  box.Push(EncodeDelivery(Make(8, 300), false));
  grpc::ByteBuffer out;
  CHECK(box.Take({}, &out) == 1);  // the default limits: one per response
  CHECK(box.size() == 1);
  Delivery d;
  REQUIRE(d.ParseFromString(Flat(out)));
  CHECK(d.delivery_id() == 7);
  CHECK(d.payload().size() == 300);
}

TEST_CASE("delivery batch: Take stops at max_messages") {
  DeliveryOutbox box;
  for (uint64_t id = 1; id <= 7; ++id) box.Push(EncodeDelivery(Make(id, 1), true));
  grpc::ByteBuffer out;
  CHECK(box.Take({.max_messages = 3}, &out) == 3);
  CHECK(box.Take({.max_messages = 3}, &out) == 3);
  CHECK(box.Take({.max_messages = 3}, &out) == 1);
  CHECK(box.empty());
  DeliveryBatch batch;
  REQUIRE(batch.ParseFromString(Flat(out)));
  REQUIRE(batch.deliveries_size() == 1);
  CHECK(batch.deliveries(0).delivery_id() == 7);
}

TEST_CASE("delivery batch: Take stays within max_bytes, and a larger delivery goes alone") {
  DeliveryOutbox box;
  const size_t one = EncodeDelivery(Make(1, 100), true).size();
  for (uint64_t id = 1; id <= 5; ++id) box.Push(EncodeDelivery(Make(id, 100), true));
  box.Push(EncodeDelivery(Make(6, 5000), true));
  box.Push(EncodeDelivery(Make(7, 100), true));
  const BatchLimits limits{.max_messages = 100, .max_bytes = 2 * one + 1};
  grpc::ByteBuffer out;
  CHECK(box.Take(limits, &out) == 2);
  CHECK(out.Length() <= limits.max_bytes);
  CHECK(box.Take(limits, &out) == 2);
  CHECK(box.Take(limits, &out) == 1);  // id 5: the big one does not fit beside it
  CHECK(box.Take(limits, &out) == 1);  // id 6, alone, above max_bytes
  CHECK(out.Length() > limits.max_bytes);
  CHECK(box.Take(limits, &out) == 1);  // id 7: counting starts afresh
  CHECK(box.empty());
}

}  // namespace
}  // namespace mqs::server
