#include "checker.h"

#include <algorithm>
#include <sstream>

namespace mqs::it {

using mqsidecar::v1::PublishResult;

void History::Sent(const std::string& message_id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_[message_id].sent = true;
}

void History::Result(const PublishResult& result) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[result.message_id()];
  ++e.results;
  switch (result.status()) {
    case PublishResult::CONFIRMED:
      e.outcome = Outcome::kConfirmed;
      if (e.deliveries == 0) confirmed_undelivered_.insert(result.message_id());
      break;
    case PublishResult::UNCONFIRMED:
      e.outcome = Outcome::kUnconfirmed;
      break;
    case PublishResult::UNROUTABLE:
      e.outcome = Outcome::kUnroutable;
      break;
    case PublishResult::REJECTED:
      e.outcome = Outcome::kRejected;
      break;
    default:
      e.outcome = Outcome::kFailed;
  }
}

void History::Failed(const std::string& message_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[message_id];
  ++e.results;
  e.outcome = Outcome::kFailed;
}

void History::Unknown(const std::string& message_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[message_id];
  ++e.results;
  e.outcome = Outcome::kUnconfirmed;
}

void History::Delivered(const std::string& /*consumer*/, const mqsidecar::v1::Delivery& delivery) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[delivery.message_id()];
  if (delivery.redelivered() || delivery.delivery_count() > 0) ++e.marked;
  ++e.deliveries;
  confirmed_undelivered_.erase(delivery.message_id());
}

size_t History::ConfirmedUndelivered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return confirmed_undelivered_.size();
}

History::Report History::Check() const {
  std::lock_guard<std::mutex> lock(mu_);
  Report r;
  auto violation = [&r](const std::string& id, const std::string& what) {
    if (r.violation_examples.size() < 10) r.violation_examples.push_back(id + ": " + what);
  };
  for (const auto& [id, e] : entries_) {
    const bool published = e.sent || e.results > 0;
    if (published) ++r.sent;
    if (e.results > 1) {
      ++r.answered_twice;
      violation(id, std::to_string(e.results) + " results for one publish");
    }
    const bool delivered = e.deliveries > 0;
    r.deliveries += static_cast<size_t>(e.deliveries);
    if (delivered) ++r.delivered_ids;
    if (e.deliveries > 1) {
      ++r.duplicated;
      r.extra_copies += static_cast<size_t>(e.deliveries - 1);
      // Consumers process copies in any order (the marked copy may be
      // processed first), so a duplicate is visible when all copies but one
      // are marked.
      r.extra_visible += static_cast<size_t>(std::min(e.deliveries - 1, e.marked));
    }
    if (!published) {
      if (delivered) {
        ++r.unexpected;
        violation(id, "delivered but never published");
      }
      continue;
    }
    switch (e.outcome) {
      case Outcome::kConfirmed:
        ++r.confirmed;
        if (!delivered) {
          ++r.lost;
          if (r.lost_examples.size() < 10) r.lost_examples.push_back(id);
        }
        break;
      case Outcome::kUnconfirmed:
        ++r.unconfirmed;
        if (delivered) ++r.recovered;
        break;
      case Outcome::kNone:
        ++r.unanswered;
        break;
      case Outcome::kFailed:
        ++r.failed;
        break;
      case Outcome::kUnroutable:
        ++r.unroutable;
        break;
      case Outcome::kRejected:
        ++r.rejected;
        break;
    }
    const bool never_sent = e.outcome == Outcome::kNone || e.outcome == Outcome::kFailed ||
                            e.outcome == Outcome::kUnroutable || e.outcome == Outcome::kRejected;
    if (never_sent && delivered) {
      ++r.never_sent_delivered;
      violation(id,
                "delivered although its publish was answered FAILED/UNROUTABLE/REJECTED "
                "or never answered");
    }
  }
  r.invisible = r.extra_copies - r.extra_visible;
  return r;
}

bool History::Report::ok() const {
  return lost == 0 && never_sent_delivered == 0 && unexpected == 0 && answered_twice == 0 &&
         invisible == 0;
}

std::string History::Report::Summary() const {
  std::ostringstream s;
  s << "sent=" << sent << " confirmed=" << confirmed << " unknown(unconfirmed)=" << unconfirmed
    << " (recovered " << recovered << ") failed=" << failed << " unroutable=" << unroutable
    << " rejected=" << rejected << " unanswered=" << unanswered << " | deliveries=" << deliveries
    << " distinct=" << delivered_ids << " | LOST=" << lost << " duplicated=" << duplicated
    << " (extra copies " << extra_copies << ", marked redelivered " << extra_visible
    << ", INVISIBLE " << invisible << ") unexpected=" << unexpected
    << " never-sent-but-delivered=" << never_sent_delivered << " answered-twice=" << answered_twice;
  if (!lost_examples.empty()) {
    s << "\n  lost, e.g.:";
    for (const auto& id : lost_examples) s << " " << id;
  }
  for (const auto& v : violation_examples) s << "\n  violation: " << v;
  return s.str();
}

}  // namespace mqs::it
