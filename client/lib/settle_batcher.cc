#include "settle_batcher.h"

#include <algorithm>

namespace mqsidecar::internal {

bool SettleBatcher::Settle(uint64_t id, const Outcome& outcome) {
  if (unsettled_.count(id) == 0 || !settled_.insert(id).second) return false;
  switch (outcome.kind) {
    case Outcome::Kind::kAck:
      acks_.push_back(id);
      break;
    case Outcome::Kind::kRetry:
      nacks_[{true, outcome.retry_after_ms}].push_back(id);
      break;
    case Outcome::Kind::kReject:
      nacks_[{false, 0}].push_back(id);
      break;
  }
  return true;
}

std::vector<v1::SubscribeRequest> SettleBatcher::Take(size_t max_ids) {
  if (max_ids == 0) max_ids = 1;
  std::vector<v1::SubscribeRequest> out;
  for (auto& [key, ids] : nacks_) {
    std::sort(ids.begin(), ids.end());
    for (size_t i = 0; i < ids.size(); i += max_ids) {
      const size_t end = std::min(ids.size(), i + max_ids);
      v1::SubscribeRequest& r = out.emplace_back();
      v1::SubscribeRequest::Nack* nack = r.mutable_nack();
      for (size_t j = i; j + 1 < end; ++j) nack->add_delivery_ids(ids[j]);
      nack->set_delivery_id(ids[end - 1]);
      nack->set_requeue(key.first);
      nack->set_retry_after_ms(key.second);
    }
    for (uint64_t id : ids) unsettled_.erase(id);
  }
  nacks_.clear();

  std::sort(acks_.begin(), acks_.end());
  for (uint64_t id : acks_) unsettled_.erase(id);
  // Every ack below the lowest id still unsettled: one `multiple` ack covers
  // them (the nacks above are written first, so they are settled by then).
  const uint64_t low = unsettled_.empty() ? UINT64_MAX : *unsettled_.begin();
  const size_t below =
      static_cast<size_t>(std::lower_bound(acks_.begin(), acks_.end(), low) - acks_.begin());
  size_t i = 0;
  if (below >= 2) {
    v1::SubscribeRequest& r = out.emplace_back();
    r.mutable_ack()->set_delivery_id(acks_[below - 1]);
    r.mutable_ack()->set_multiple(true);
    i = below;
  }
  for (; i < acks_.size(); i += max_ids) {
    const size_t end = std::min(acks_.size(), i + max_ids);
    v1::SubscribeRequest& r = out.emplace_back();
    v1::SubscribeRequest::Ack* ack = r.mutable_ack();
    for (size_t j = i; j + 1 < end; ++j) ack->add_delivery_ids(acks_[j]);
    ack->set_delivery_id(acks_[end - 1]);
  }
  acks_.clear();
  settled_.clear();
  return out;
}

}  // namespace mqsidecar::internal
