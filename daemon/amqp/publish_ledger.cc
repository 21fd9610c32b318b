#include "amqp/publish_ledger.h"

#include "observability/metrics.h"
#include "util/strings.h"

namespace mqs::amqp {
namespace {

using mqsidecar::v1::PublishResult;

// The code of a publish the broker refused with a channel error: 403
// ACCESS_REFUSED and 404 NOT_FOUND say so; anything else (406
// PRECONDITION_FAILED: a property or header the broker will not take) is
// the message's fault.
absl::StatusCode CodeForReply(int reply_code) {
  switch (reply_code) {
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kNotFound;
    default:
      return absl::StatusCode::kInvalidArgument;
  }
}

}  // namespace

void PublishLedger::Complete(PublishJob& job, Status status, std::string_view error,
                             absl::StatusCode code) {
  PublishResult result;
  result.set_sequence(job.request.sequence());
  result.set_message_id(job.request.message_id());
  result.set_status(status);
  if (!error.empty()) result.set_error(std::string(error));
  if (observability::Metrics* m = observability::Metrics::Active(); m != nullptr) {
    m->CountPublish(m->Slot(job.request.business()), status,
                    std::chrono::steady_clock::now() - job.submitted);
  }
  job.done(std::move(result), code);
}

bool PublishLedger::probing() const {
  if (!waiting_.empty() && waiting_.front().probe) return true;
  return !pending_.empty() && pending_.back().job.probe && !pending_.back().settled;
}

size_t PublishLedger::unanswered_in_flight() const {
  size_t n = 0;
  for (const Pending& p : pending_) n += (!p.settled && !p.answered) ? 1 : 0;
  return n;
}

bool PublishLedger::AwaitsInternalAnswer() const {
  for (const PublishJob& job : waiting_) {
    if (job.copy != nullptr) return true;
  }
  for (const Pending& p : pending_) {
    if (!p.settled && !p.answered && p.job.copy != nullptr) return true;
  }
  return false;
}

void PublishLedger::Send(Clock::time_point now, PublishSink& sink) {
  while (!waiting_.empty()) {
    // Probe mode: a probe goes out alone, and nothing follows it until it is
    // settled.
    if (unsettled_ > 0 && probing()) break;
    PublishJob job = std::move(waiting_.front());
    waiting_.pop_front();
    if (job.deadline <= now) {
      // Never sent after its deadline: the caller may already have given up
      // and retried.
      if (job.sent_before) {
        Complete(job, PublishResult::UNCONFIRMED,
                 "the deadline passed before it could be sent again; it was sent once before, "
                 "so it may or may not be queued");
      } else {
        Complete(job, PublishResult::FAILED,
                 "the deadline passed before it could be sent: not sent",
                 absl::StatusCode::kDeadlineExceeded);
      }
      continue;
    }
    if (absl::Status s = sink.Add(job); !s.ok()) {
      if (job.sent_before) {
        // A retry is not safe: the first copy may be queued.
        Complete(job, PublishResult::UNCONFIRMED,
                 util::StrCat(s.message(),
                              ": this copy cannot be sent, but an earlier send of it may be "
                              "queued"));
      } else {
        Complete(job, PublishResult::FAILED, util::StrCat(s.message(), ": not sent"),
                 absl::StatusCode::kInvalidArgument);
      }
      continue;
    }
    // Tags follow the order in which the sink encodes the frames.
    Pending& p = pending_.emplace_back();
    p.job = std::move(job);
    ++next_tag_;
    ++unsettled_;
    if (!sink.Write(false)) return;
  }
  sink.Write(true);
}

bool PublishLedger::Settle(uint64_t tag, bool multiple, Status status) {
  if (tag < first_tag_ || tag >= next_tag_) return false;
  const size_t last = tag - first_tag_;
  const size_t first = multiple ? 0 : last;
  for (size_t i = first; i <= last; ++i) {
    Pending& p = pending_[i];
    if (p.settled) continue;
    p.settled = true;
    --unsettled_;
    if (p.answered) continue;  // answered UNCONFIRMED at its deadline
    p.answered = true;
    if (p.returned) {
      Complete(p.job, PublishResult::UNROUTABLE, p.return_reason);
    } else if (status == PublishResult::REJECTED && p.job.sent_before) {
      // This copy was refused, but the first send, whose confirm was lost
      // with its connection, may be queued: the outcome is unknown.
      Complete(p.job, PublishResult::UNCONFIRMED,
               "the broker refused this copy (basic.nack), but an earlier send of it, whose "
               "confirm was lost with the connection, may be queued");
    } else if (status == PublishResult::REJECTED) {
      Complete(p.job, PublishResult::REJECTED, "the broker refused the message (basic.nack)");
    } else {
      Complete(p.job, status, "");
    }
  }
  PopSettled();
  return true;
}

void PublishLedger::PopSettled() {
  while (!pending_.empty() && pending_.front().settled) {
    pending_.pop_front();
    ++first_tag_;
  }
}

bool PublishLedger::Return(std::string_view exchange, std::string_view routing_key,
                           std::string_view message_id, std::string_view reason) {
  // A return carries no delivery tag, but it precedes the confirm of its
  // message, and returns come in publish order: the earliest pending publish
  // with the same exchange, routing key and message_id is the one. Two such
  // publishes route alike, so a duplicate id cannot mislead the match.
  for (Pending& p : pending_) {
    if (p.settled || p.returned) continue;
    if (p.job.request.message_id() == message_id && p.job.exchange == exchange &&
        p.job.request.routing_key() == routing_key) {
      p.returned = true;
      p.return_reason = std::string(reason);
      return true;
    }
  }
  return false;
}

void PublishLedger::ChannelOpened() {
  // Callers report the loss first; should they not, nothing goes unanswered.
  if (!pending_.empty()) Lost("the publishing channel was reopened before the confirm");
  first_tag_ = next_tag_ = 1;
}

void PublishLedger::ClearPending() {
  pending_.clear();
  unsettled_ = 0;
  first_tag_ = next_tag_;
}

void PublishLedger::ChannelClosed(int reply_code, std::string_view reply_text, bool stopping) {
  const std::string why =
      util::StrCat("the broker closed the publishing channel: ", reply_code, " ", reply_text);
  if (unsettled_ == 1) {
    // Alone in flight: the broker refused this one (a channel error answers
    // the method that caused it), and dropped nothing else.
    for (Pending& p : pending_) {
      if (p.settled) continue;
      if (p.answered) break;  // answered UNCONFIRMED at its deadline
      p.answered = true;
      if (!p.job.sent_before || p.job.channel_error_only) {
        Complete(p.job, PublishResult::FAILED, util::StrCat(why, ": refused, not queued"),
                 CodeForReply(reply_code));
      } else {
        Complete(p.job, PublishResult::UNCONFIRMED,
                 util::StrCat(why,
                              "; this copy was refused, but an earlier send of it, whose confirm "
                              "was lost with its connection, may be queued"));
      }
      break;
    }
    ClearPending();
    return;
  }
  // Several in flight: the refused one is among them; those before it may be
  // queued, those after it were dropped. Resend them one at a time.
  const bool requeue = republish_ && !stopping;
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    if (it->settled || it->answered) continue;
    PublishJob& job = it->job;
    if (requeue) {
      job.channel_error_only = !job.sent_before || job.channel_error_only;
      job.sent_before = true;
      job.probe = true;
      waiting_.push_front(std::move(job));
    } else {
      Complete(job, PublishResult::UNCONFIRMED,
               util::StrCat(why, " before the confirm (the message may or may not be queued)"));
    }
  }
  ClearPending();
}

void PublishLedger::Lost(std::string_view why, bool stopping) {
  const bool requeue = republish_ && !stopping;
  // Back to the front of waiting_, in publish order, ahead of newer work.
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    if (it->settled || it->answered) continue;
    if (requeue) {
      it->job.sent_before = true;
      // This send's fate is unknown: no longer only channel errors.
      it->job.channel_error_only = false;
      waiting_.push_front(std::move(it->job));
    } else {
      Complete(it->job, PublishResult::UNCONFIRMED,
               util::StrCat(why, " (the message may or may not be queued)"));
    }
  }
  ClearPending();
}

void PublishLedger::ExpirePending(Clock::time_point now, bool blocked) {
  for (Pending& p : pending_) {
    if (p.answered || p.settled || p.job.deadline > now) continue;
    p.answered = true;
    Complete(p.job, PublishResult::UNCONFIRMED,
             blocked ? "sent, but the broker blocked publishing (resource alarm) and did not "
                       "confirm it before the deadline; it may or may not be queued"
                     : "sent, but the broker did not confirm it before the deadline; it may "
                       "or may not be queued");
  }
}

void PublishLedger::ExpireWaiting(Clock::time_point now, std::string_view why,
                                  absl::StatusCode code, bool all) {
  if (waiting_.empty()) return;
  std::deque<PublishJob> keep;
  for (PublishJob& job : waiting_) {
    if (!all && job.deadline > now) {
      keep.push_back(std::move(job));
      continue;
    }
    if (job.sent_before) {
      Complete(job, PublishResult::UNCONFIRMED,
               util::StrCat(why,
                            "; it was sent once before and its confirm was lost, so it may or "
                            "may not be queued"));
    } else {
      Complete(job, PublishResult::FAILED, util::StrCat(why, ": not sent"), code);
    }
  }
  waiting_.swap(keep);
}

}  // namespace mqs::amqp
