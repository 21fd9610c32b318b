// libFuzzer harness for publish handling (issue 14): random sequences of
// publishes (with deadlines, some republished copies) interleaved with what
// the broker and the socket do (sends that fail to encode or to write,
// confirms and nacks with and without `multiple`, of known and unknown tags,
// returns, channel closes, lost connections, time passing), driven into the
// PublishLedger. Beside the sanitizers, the harness checks the promises the
// API makes about every publish:
//  - each job is answered exactly once (checked when the run drains);
//  - a job is never handed to the socket after its deadline, nor after it
//    was answered with anything but a later republish;
//  - CONFIRMED, REJECTED and UNROUTABLE only for a job that was sent;
//  - a job never sent is never answered UNCONFIRMED (it cannot be queued):
//    FAILED, so that the caller knows a retry is safe.
#include <fuzzer/FuzzedDataProvider.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "amqp/publish_ledger.h"

namespace {

using mqs::amqp::PublishJob;
using mqs::amqp::PublishLedger;
using PublishResult = mqsidecar::v1::PublishResult;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Violation(const char* what, int job) {
  fprintf(stderr, "publish_ledger_fuzz: job %d: %s\n", job, what);
  abort();
}

struct JobState {
  Clock::time_point deadline;
  bool sent_before = false;  // submitted as a copy an earlier send may have queued
  int sends = 0;
  int answers = 0;
  PublishResult::Status last = PublishResult::STATUS_UNSPECIFIED;
};

// The socket: Add may refuse a message (too large), Write may find the
// connection dead; what was added is "sent" as far as the broker may know.
class FuzzSink final : public mqs::amqp::PublishSink {
 public:
  FuzzSink(FuzzedDataProvider& in, std::map<int, JobState>& jobs, const Clock::time_point& now)
      : in_(in), jobs_(jobs), now_(now) {}

  absl::Status Add(const PublishJob& job) override {
    const int id = std::atoi(job.request.message_id().c_str());
    JobState& s = jobs_[id];
    if (now_ > job.deadline) Violation("handed to the socket after its deadline", id);
    if (s.answers > 0 && s.last != PublishResult::UNCONFIRMED) {
      Violation("handed to the socket after a final answer", id);
    }
    if (in_.ConsumeIntegralInRange<int>(0, 15) == 0) {
      return absl::InvalidArgumentError("too large for a frame");
    }
    ++s.sends;
    ++added_;
    return absl::OkStatus();
  }
  bool Write(bool /*all*/) override { return in_.ConsumeIntegralInRange<int>(0, 31) != 0; }

  uint64_t added() const { return added_; }

 private:
  FuzzedDataProvider& in_;
  std::map<int, JobState>& jobs_;
  const Clock::time_point& now_;
  uint64_t added_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  std::map<int, JobState> jobs;
  Clock::time_point now = Clock::time_point() + std::chrono::hours(1);
  FuzzSink sink(in, jobs, now);
  PublishLedger ledger(/*republish=*/in.ConsumeBool());
  int next_id = 0;

  auto submit = [&](bool sent_before) {
    const int id = next_id++;
    PublishJob job;
    job.request.set_message_id(std::to_string(id));
    job.request.set_routing_key(in.ConsumeBool() ? "rk" : "other");
    job.exchange = "ex";
    job.deadline = now + std::chrono::milliseconds(in.ConsumeIntegralInRange<int>(0, 5000));
    job.sent_before = sent_before;
    jobs[id].deadline = job.deadline;
    jobs[id].sent_before = sent_before;
    job.done = [&jobs, id](PublishResult&& r, absl::StatusCode /*code*/) {
      JobState& s = jobs[id];
      ++s.answers;
      s.last = r.status();
      const bool sent = s.sends > 0;
      if (!sent &&
          (r.status() == PublishResult::CONFIRMED || r.status() == PublishResult::REJECTED ||
           r.status() == PublishResult::UNROUTABLE)) {
        Violation("a broker's answer for a job never sent", id);
      }
      if (s.answers > 1) Violation("answered twice", id);
    };
    ledger.Enqueue(std::move(job));
  };

  int steps = 0;
  while (in.remaining_bytes() > 0 && steps++ < 2000) {
    switch (in.ConsumeIntegralInRange<int>(0, 11)) {
      case 0:
      case 1:
        submit(/*sent_before=*/false);
        break;
      case 2:
        ledger.Send(now, sink);
        break;
      case 3:
      case 4: {
        // A confirm or nack of a tag near the window (unknown ones included).
        const uint64_t tag = ledger.first_tag() + in.ConsumeIntegralInRange<uint64_t>(0, 12);
        ledger.Settle(tag, in.ConsumeBool(),
                      in.ConsumeIntegralInRange<int>(0, 5) == 0 ? PublishResult::REJECTED
                                                                : PublishResult::CONFIRMED);
        break;
      }
      case 5: {
        const std::string id = std::to_string(in.ConsumeIntegralInRange<int>(0, next_id + 1));
        ledger.Return("ex", in.ConsumeBool() ? "rk" : "other", id, "NO_ROUTE");
        break;
      }
      case 6:
        ledger.Lost("connection lost");
        break;
      case 7:
        ledger.ChannelClosed(406, "PRECONDITION_FAILED");
        break;
      case 8:
        ledger.ChannelOpened();
        break;
      case 9:
        now += std::chrono::milliseconds(in.ConsumeIntegralInRange<int>(0, 3000));
        ledger.ExpirePending(now, in.ConsumeBool());
        ledger.ExpireWaiting(now, "no connection", absl::StatusCode::kUnavailable);
        break;
      case 10:
        // A delayed-retry copy or a client's own republish: may be queued.
        submit(/*sent_before=*/true);
        break;
      case 11:
        ledger.Send(now, sink);
        break;
    }
  }

  // Drain as a stop does: everything still unanswered gets its answer.
  ledger.Lost("stopping", /*stopping=*/true);
  ledger.ExpireWaiting(now, "stopping", absl::StatusCode::kUnavailable, /*all=*/true);
  ledger.ExpirePending(now + std::chrono::hours(1), false);
  for (const auto& [id, s] : jobs) {
    if (s.answers != 1) Violation("not answered exactly once at the end", id);
    // Never handed to the socket, by us or before: it cannot be queued, and
    // UNCONFIRMED would hide that a retry is safe.
    if (s.sends == 0 && !s.sent_before && s.last == PublishResult::UNCONFIRMED) {
      Violation("UNCONFIRMED for a job never sent", id);
    }
  }
  return 0;
}
