#include "checker.h"

#include <algorithm>
#include <sstream>

namespace mqs::it {

using mqsidecar::v1::Delivery;
using mqsidecar::v1::PublishResult;

namespace {

bool Marked(const Delivery& d) { return d.redelivered() || d.delivery_count() > 0; }

void Example(std::vector<std::string>& list, const std::string& text) {
  if (list.size() < 10) list.push_back(text);
}

int64_t Ns(History::WallClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

uint32_t History::EntryOf(const std::string& id) {
  auto [it, inserted] = index_.try_emplace(id, static_cast<uint32_t>(entries_.size()));
  if (inserted) entries_.push_back(Entry{.id = id});
  return it->second;
}

uint32_t History::ConsumerOf(const std::string& name) {
  auto [it, inserted] = consumer_index_.try_emplace(name, static_cast<uint32_t>(consumers_.size()));
  if (inserted) consumers_.push_back(name);
  return it->second;
}

void History::Sent(const std::string& message_id) {
  util::MutexLock lock(&mu_);
  ++entries_[EntryOf(message_id)].attempts;
}

void History::Result(const PublishResult& result) {
  util::MutexLock lock(&mu_);
  Entry& e = entries_[EntryOf(result.message_id())];
  ++e.results;
  switch (result.status()) {
    case PublishResult::CONFIRMED:
      if (!e.confirmed && e.handled == 0) ++confirmed_unhandled_;
      e.confirmed = true;
      break;
    case PublishResult::UNCONFIRMED:
      e.unconfirmed = true;
      break;
    case PublishResult::UNROUTABLE:
      e.last_refusal = Outcome::kUnroutable;
      break;
    case PublishResult::REJECTED:
      e.last_refusal = Outcome::kRejected;
      break;
    default:
      e.last_refusal = Outcome::kFailed;
  }
}

void History::Failed(const std::string& message_id) {
  util::MutexLock lock(&mu_);
  Entry& e = entries_[EntryOf(message_id)];
  ++e.results;
  e.last_refusal = Outcome::kFailed;
}

void History::Unknown(const std::string& message_id) {
  util::MutexLock lock(&mu_);
  Entry& e = entries_[EntryOf(message_id)];
  ++e.results;
  e.unconfirmed = true;
}

void History::Retried(const std::string& message_id, const std::string& cause) {
  util::MutexLock lock(&mu_);
  Entry& e = entries_[EntryOf(message_id)];
  ++e.retries;
  e.causes.push_back(cause);
}

void History::BrokerRestart(WallClock::time_point began, WallClock::time_point ended) {
  util::MutexLock lock(&mu_);
  restarts_.push_back({.began_ns = Ns(began), .ended_ns = Ns(ended)});
}

void History::NodeFailover(WallClock::time_point began, WallClock::time_point ended) {
  util::MutexLock lock(&mu_);
  failovers_.push_back({.began_ns = Ns(began), .ended_ns = Ns(ended)});
}

void History::ReceivedLocked(const std::string& consumer, const Delivery& delivery) {
  const uint32_t entry = EntryOf(delivery.message_id());
  const uint32_t c = ConsumerOf(consumer);
  open_[{c, delivery.delivery_id()}] = entry;
  events_.push_back({.entry = entry,
                     .consumer = c,
                     .delivery_id = delivery.delivery_id(),
                     .handle = false,
                     .marked = Marked(delivery),
                     .republished = delivery.republished(),
                     .at_ns = Ns(clock_())});
}

void History::HandledLocked(const std::string& consumer, const Delivery& delivery) {
  const uint32_t c = ConsumerOf(consumer);
  auto it = open_.find({c, delivery.delivery_id()});
  if (it == open_.end()) {
    ++handled_unreceived_;
    return;
  }
  const uint32_t entry = it->second;
  open_.erase(it);
  Entry& e = entries_[entry];
  if (e.handled++ == 0 && e.confirmed) --confirmed_unhandled_;
  events_.push_back({.entry = entry,
                     .consumer = c,
                     .delivery_id = delivery.delivery_id(),
                     .handle = true,
                     .marked = Marked(delivery),
                     .at_ns = 0});
}

void History::Received(const std::string& consumer, const Delivery& delivery) {
  util::MutexLock lock(&mu_);
  ReceivedLocked(consumer, delivery);
}

void History::Handled(const std::string& consumer, const Delivery& delivery) {
  util::MutexLock lock(&mu_);
  HandledLocked(consumer, delivery);
}

void History::Delivered(const std::string& consumer, const Delivery& delivery) {
  util::MutexLock lock(&mu_);
  ReceivedLocked(consumer, delivery);
  HandledLocked(consumer, delivery);
}

size_t History::ConfirmedUndelivered() const {
  util::MutexLock lock(&mu_);
  return confirmed_unhandled_;
}

History::Report History::Check() const {
  util::MutexLock lock(&mu_);
  Report r;
  r.handled_unreceived = handled_unreceived_;
  if (handled_unreceived_ > 0) {
    Example(r.violation_examples,
            std::to_string(handled_unreceived_) + " deliveries handled that were never received");
  }

  // How many declared restarts lie between two receipts: ended (the broker
  // answered again) after `after_ns` and by `until_ns`. The earlier copy may
  // have been received while the broker was stopping: stop_app takes seconds
  // to drop connections (many on a slow machine), deliveries flow meanwhile,
  // and the acks a stopping broker does not apply come back as copies. The
  // later copy must come after the broker answered again: one received while
  // it was still stopping is not one it delivered again after the restart.
  r.broker_restarts = restarts_.size();
  const std::vector<Restart> windows = restarts_;  // the lambda cannot see the lock
  const auto restarts_between = [&windows](int64_t after_ns, int64_t until_ns) {
    long n = 0;
    for (const Restart& x : windows) n += x.ended_ns > after_ns && x.ended_ns <= until_ns;
    return n;
  };
  const std::vector<Restart> failovers = failovers_;
  const auto in_failover = [&failovers](int64_t first_ns, int64_t second_ns) {
    for (const Restart& x : failovers) {
      if (first_ns >= x.began_ns && second_ns <= x.ended_ns) return true;
    }
    return false;
  };

  // Replay the timeline: per message id, the copies received so far, how many
  // of them are still unhandled, whether one was handled, the declared causes
  // not yet used, when the latest copy was received, and who handled first
  // (for the reports).
  struct Copies {
    int64_t last_received_ns = 0;
    bool last_marked = false;
    int received = 0;
    int in_flight = 0;
    bool handled = false;
    size_t causes_used = 0;
    int republished_unmatched = 0;  // republished copies no late original has matched yet
    int unmarked_received = 0;
    uint32_t first_consumer = 0;
    uint32_t handled_by = 0;
  };
  std::vector<Copies> copies(entries_.size());
  for (const Event& ev : events_) {
    const Entry& e = entries_[ev.entry];
    Copies& c = copies[ev.entry];
    if (ev.handle) {
      --c.in_flight;
      if (!c.handled) c.handled_by = ev.consumer;
      c.handled = true;
      ++r.handled;
      continue;
    }
    ++r.deliveries;
    const int copy = ++c.received;
    const std::string where = e.id + ": copy " + std::to_string(copy) + " (" +
                              (ev.marked ? "marked" : "unmarked") + ") to " +
                              consumers_[ev.consumer];
    if (copy == 1) {
      c.first_consumer = ev.consumer;
    } else {
      ++r.extra_copies;
      const long restarts = restarts_between(c.last_received_ns, ev.at_ns);
      const std::string context =
          (c.handled ? "after the copy handled by " + consumers_[c.handled_by]
                     : "while the copy to " + consumers_[c.first_consumer] + " was unhandled") +
          " (previous copy " + (c.last_marked ? "marked" : "unmarked") + ", " +
          std::to_string((ev.at_ns - c.last_received_ns) / 1000000) + " ms before; " +
          std::to_string(restarts) + " declared broker restart(s) between them)";
      if (ev.marked) {
        ++r.extra_visible;
        if (c.in_flight > 0) ++r.marked_concurrent;
      } else if (c.causes_used < e.causes.size()) {
        const std::string& cause = e.causes[c.causes_used++];
        ++r.accepted;
        ++r.accepted_by_cause[cause];
        Example(r.accepted_examples, where + " " + context + "; accounted for: " + cause);
      } else if (c.republished_unmatched > 0) {
        --c.republished_unmatched;
        ++r.accepted;
        ++r.accepted_by_cause[kOriginalAfterRepublishedCause];
        Example(r.accepted_examples,
                where + " " + context + "; accounted for: " + kOriginalAfterRepublishedCause);
      } else if (restarts > 0) {
        ++r.accepted;
        ++r.accepted_by_cause[kBrokerRestartCause];
        Example(r.restart_examples,
                where + " " + context + "; accounted for: " + kBrokerRestartCause);
      } else if (in_failover(c.last_received_ns, ev.at_ns)) {
        ++r.accepted;
        ++r.accepted_by_cause[kNodeFailoverCause];
        Example(r.accepted_examples,
                where + " " + context + "; accounted for: " + kNodeFailoverCause);
      } else {
        ++r.invisible;
        if (c.handled) {
          ++r.unmarked_after_handled;
        } else {
          ++r.unmarked_concurrent;
        }
        Example(r.violation_examples, where + " " + context +
                                          ", and no declared cause: a consumer trusting "
                                          "redelivered=false would process it twice");
      }
    }
    // A republished copy whose original came first explains nothing more.
    if (ev.republished && c.unmarked_received == 0) ++c.republished_unmatched;
    if (!ev.marked) ++c.unmarked_received;
    ++c.in_flight;
    c.last_received_ns = ev.at_ns;
    c.last_marked = ev.marked;
  }

  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    const bool published = e.attempts > 0 || e.results > 0;
    const bool delivered = copies[i].received > 0;
    if (published) ++r.sent;
    r.retries += static_cast<size_t>(e.retries);
    if (e.results > std::max(e.attempts, 1)) {
      ++r.answered_twice;
      Example(r.violation_examples, e.id + ": " + std::to_string(e.results) + " results for " +
                                        std::to_string(std::max(e.attempts, 1)) + " publish(es)");
    }
    if (copies[i].received > 1) ++r.duplicated;
    if (e.handled > 0) ++r.delivered_ids;
    if (!published) {
      if (delivered) {
        ++r.unexpected;
        Example(r.violation_examples, e.id + ": delivered but never published");
      }
      continue;
    }
    if (e.confirmed) {
      ++r.confirmed;
      if (e.handled == 0) {
        ++r.lost;
        Example(r.lost_examples, e.id);
      }
      continue;
    }
    if (e.unconfirmed) {
      ++r.unconfirmed;
      if (delivered) ++r.recovered;
      continue;
    }
    switch (e.last_refusal) {
      case Outcome::kFailed:
        ++r.failed;
        break;
      case Outcome::kUnroutable:
        ++r.unroutable;
        break;
      case Outcome::kRejected:
        ++r.rejected;
        break;
      default:
        ++r.unanswered;
    }
    if (delivered) {
      ++r.never_sent_delivered;
      Example(r.violation_examples,
              e.id +
                  ": delivered although its publish was answered FAILED/UNROUTABLE/REJECTED "
                  "or never answered");
    }
  }
  return r;
}

bool History::Report::ok() const {
  return lost == 0 && never_sent_delivered == 0 && unexpected == 0 && answered_twice == 0 &&
         invisible == 0 && handled_unreceived == 0;
}

std::string History::Report::Violations() const {
  if (ok()) return "";
  std::ostringstream s;
  s << "lost=" << lost << " invisible=" << invisible << " (after handled " << unmarked_after_handled
    << ", concurrent " << unmarked_concurrent
    << ") never-sent-but-delivered=" << never_sent_delivered << " unexpected=" << unexpected
    << " answered-twice=" << answered_twice << " handled-unreceived=" << handled_unreceived;
  if (!lost_examples.empty()) s << "; lost, e.g. " << lost_examples.front();
  if (!violation_examples.empty()) s << "; first violation: " << violation_examples.front();
  return s.str();
}

std::string History::Report::Summary() const {
  std::ostringstream s;
  s << "sent=" << sent << " confirmed=" << confirmed << " unknown(unconfirmed)=" << unconfirmed
    << " (recovered " << recovered << ") failed=" << failed << " unroutable=" << unroutable
    << " rejected=" << rejected << " unanswered=" << unanswered << " retries=" << retries
    << " | deliveries=" << deliveries << " handled=" << handled << " distinct=" << delivered_ids
    << " | LOST=" << lost << " duplicated=" << duplicated << " (extra copies " << extra_copies
    << ": marked " << extra_visible << " [" << marked_concurrent
    << " beside an unhandled copy], accepted " << accepted << ", INVISIBLE " << invisible
    << " [after handled " << unmarked_after_handled << ", concurrent " << unmarked_concurrent
    << "]) unexpected=" << unexpected << " never-sent-but-delivered=" << never_sent_delivered
    << " answered-twice=" << answered_twice << " handled-unreceived=" << handled_unreceived
    << " | broker restarts declared=" << broker_restarts;
  for (const auto& [cause, n] : accepted_by_cause) s << "\n  accepted: " << n << " x " << cause;
  for (const auto& a : accepted_examples) s << "\n  accepted, e.g.: " << a;
  for (const auto& a : restart_examples) s << "\n  accepted (broker restart), e.g.: " << a;
  if (!lost_examples.empty()) {
    s << "\n  lost, e.g.:";
    for (const auto& id : lost_examples) s << " " << id;
  }
  for (const auto& v : violation_examples) s << "\n  violation: " << v;
  return s.str();
}

}  // namespace mqs::it
