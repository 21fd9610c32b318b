// SettleBatcher: turns a subscription's handler outcomes into as few
// ack/nack requests as the API allows (pure logic, no stream; unit-tested in
// tests/unit/client_settle_batcher_test.cc).
//
// It tracks the deliveries of one Subscribe stream that are not settled yet.
// Take() emits the nacks first (grouped by requeue and retry delay, as id
// lists), then the acks: those below the lowest delivery still unsettled
// collapse into one `multiple` ack of the highest of them (AMQP's multiple
// acks every unacked delivery with a lower id, and every such one is being
// acked), the others go as an id list in the same request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "mqsidecar/client.h"

namespace mqsidecar::internal {

class SettleBatcher {
 public:
  // A delivery of the stream arrived (ids increase along the stream). Must be
  // called before the delivery can be settled, in the stream's order.
  void Delivered(uint64_t id) { unsettled_.insert(id); }
  // Its handler decided. Unknown or already settled ids are ignored (false).
  bool Settle(uint64_t id, const Outcome& outcome);
  bool HasPending() const { return !acks_.empty() || !nacks_.empty(); }
  // The requests for every outcome given since the last Take, in the order to
  // write them; each names at most `max_ids` ids.
  std::vector<v1::SubscribeRequest> Take(size_t max_ids);
  // Delivered, not yet taken as settled.
  size_t unsettled() const { return unsettled_.size(); }

 private:
  std::set<uint64_t> unsettled_;
  std::set<uint64_t> settled_;  // given to Settle, not taken yet
  std::vector<uint64_t> acks_;
  // (requeue, retry_after_ms) -> ids
  std::map<std::pair<bool, uint32_t>, std::vector<uint64_t>> nacks_;
};

}  // namespace mqsidecar::internal
