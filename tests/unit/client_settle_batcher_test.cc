// The client library's settle batching (client/lib/settle_batcher.h): which
// ack/nack requests a subscription writes for its handlers' outcomes.
#include <catch2/catch.hpp>
#include <vector>

#include "settle_batcher.h"

namespace {

using mqsidecar::Outcome;
using mqsidecar::internal::SettleBatcher;
using mqsidecar::v1::SubscribeRequest;

std::vector<uint64_t> Ids(const SubscribeRequest& r) {
  std::vector<uint64_t> ids;
  if (r.has_ack()) {
    ids.assign(r.ack().delivery_ids().begin(), r.ack().delivery_ids().end());
    ids.push_back(r.ack().delivery_id());
  } else {
    ids.assign(r.nack().delivery_ids().begin(), r.nack().delivery_ids().end());
    ids.push_back(r.nack().delivery_id());
  }
  return ids;
}

TEST_CASE("client settle batcher: in-order acks collapse into one multiple ack") {
  SettleBatcher b;
  for (uint64_t id = 1; id <= 5; ++id) b.Delivered(id);
  for (uint64_t id = 1; id <= 5; ++id) REQUIRE(b.Settle(id, Outcome::Ack()));
  const auto reqs = b.Take(1000);
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0].ack().delivery_id() == 5);
  CHECK(reqs[0].ack().multiple());
  CHECK(reqs[0].ack().delivery_ids().empty());
  CHECK(b.unsettled() == 0);
  CHECK_FALSE(b.HasPending());
}

TEST_CASE("client settle batcher: multiple never covers a delivery still being handled") {
  SettleBatcher b;
  for (uint64_t id = 1; id <= 6; ++id) b.Delivered(id);
  // 4 is still in a handler: 1-3 may go as multiple, 5 and 6 by id.
  for (uint64_t id : {3, 1, 2, 6, 5}) REQUIRE(b.Settle(id, Outcome::Ack()));
  const auto reqs = b.Take(1000);
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0].ack().delivery_id() == 3);
  CHECK(reqs[0].ack().multiple());
  CHECK_FALSE(reqs[1].ack().multiple());
  CHECK(Ids(reqs[1]) == std::vector<uint64_t>{5, 6});
  CHECK(b.unsettled() == 1);
  // 4 settles later: alone, and `multiple` would be pointless for one id.
  REQUIRE(b.Settle(4, Outcome::Ack()));
  const auto later = b.Take(1000);
  REQUIRE(later.size() == 1);
  CHECK(later[0].ack().delivery_id() == 4);
  CHECK_FALSE(later[0].ack().multiple());
}

TEST_CASE("client settle batcher: nacks go first, grouped by requeue and delay") {
  SettleBatcher b;
  for (uint64_t id = 1; id <= 6; ++id) b.Delivered(id);
  REQUIRE(b.Settle(1, Outcome::Retry()));
  REQUIRE(b.Settle(2, Outcome::Reject()));
  REQUIRE(b.Settle(3, Outcome::Retry(std::chrono::milliseconds(700))));
  REQUIRE(b.Settle(4, Outcome::Retry()));
  REQUIRE(b.Settle(5, Outcome::Ack()));
  REQUIRE(b.Settle(6, Outcome::Ack()));
  const auto reqs = b.Take(1000);
  REQUIRE(reqs.size() == 4);
  // (requeue=false) < (requeue=true, 0) < (requeue=true, 700).
  CHECK(reqs[0].nack().requeue() == false);
  CHECK(Ids(reqs[0]) == std::vector<uint64_t>{2});
  CHECK(reqs[1].nack().requeue());
  CHECK(reqs[1].nack().retry_after_ms() == 0);
  CHECK(Ids(reqs[1]) == std::vector<uint64_t>{1, 4});
  CHECK(reqs[2].nack().retry_after_ms() == 700);
  CHECK(Ids(reqs[2]) == std::vector<uint64_t>{3});
  // Every lower delivery is settled by the nacks written before it.
  CHECK(reqs[3].ack().delivery_id() == 6);
  CHECK(reqs[3].ack().multiple());
}

TEST_CASE(
    "client settle batcher: lists are cut at max ids and unknown or repeated ids are refused") {
  SettleBatcher b;
  for (uint64_t id = 1; id <= 7; ++id) b.Delivered(id);
  CHECK_FALSE(b.Settle(99, Outcome::Ack()));
  for (uint64_t id = 2; id <= 7; ++id) REQUIRE(b.Settle(id, Outcome::Reject()));
  CHECK_FALSE(b.Settle(2, Outcome::Ack()));
  const auto reqs = b.Take(4);
  REQUIRE(reqs.size() == 2);
  CHECK(Ids(reqs[0]) == std::vector<uint64_t>{2, 3, 4, 5});
  CHECK(Ids(reqs[1]) == std::vector<uint64_t>{6, 7});
  CHECK_FALSE(b.Settle(3, Outcome::Ack()));  // settled and taken
  CHECK(b.unsettled() == 1);
}

}  // namespace
