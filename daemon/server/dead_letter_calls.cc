// The dead-letter methods: ListDeadLetters, ReplayDeadLetters (async API,
// ControlCall in control_call.h; docs/api.md).
//
// The handlers check the request against the config and hand it to the
// DeadLetterWorker (amqp/dead_letters.h), whose thread answers it on a
// connection of its own. A replay that fails after replaying some messages
// answers the error with the partial ReplayDeadLettersResponse in the
// trailing metadata kReplayTrailer, so a client can tell what moved.
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "amqp/dead_letters.h"
#include "server/control_call.h"
#include "server/pubsub_service.h"
#include "util/strings.h"

namespace mqs::server {

namespace v1 = mqsidecar::v1;

namespace {

// The partial result of a failed replay, a serialized
// ReplayDeadLettersResponse (binary metadata: the key ends in -bin).
constexpr std::string_view kReplayTrailer = "mq-sidecar-replay-bin";

// ServableTarget: the dead-letter queue of `business`, or why no request for
// it can be served now (shutdown, no worker, not a consumer business).
absl::StatusOr<amqp::DeadLetterTarget> ServableTarget(bool draining, bool have_worker,
                                                      const config::Config& config,
                                                      const std::string& business) {
  if (draining) return absl::UnavailableError("mq-sidecar is shutting down");
  if (!have_worker) return absl::UnavailableError("dead letters are not served by this daemon");
  return amqp::ResolveDeadLetterTarget(config, business);
}

}  // namespace

void PubSubService::AcceptDeadLetters() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ == nullptr) return;
  Post<v1::ListDeadLettersRequest, v1::ListDeadLettersResponse>(
      *this, cq_, *gate_, &PubSubService::RequestListDeadLetters,
      &PubSubService::ServeListDeadLetters);
  Post<v1::ReplayDeadLettersRequest, v1::ReplayDeadLettersResponse>(
      *this, cq_, *gate_, &PubSubService::RequestReplayDeadLetters,
      &PubSubService::ServeReplayDeadLetters);
}

void PubSubService::ServeListDeadLetters(v1::ListDeadLettersRequest&& request, SysTime deadline,
                                         Reply<v1::ListDeadLettersResponse> reply) {
  absl::StatusOr<amqp::DeadLetterTarget> target =
      ServableTarget(draining(), dead_letters_ != nullptr, config_, request.business());
  if (!target.ok()) {
    reply(target.status());
    return;
  }
  dead_letters_->List(std::move(*target), amqp::ListLimit(request.max()),
                      amqp::RequestDeadline(deadline, std::chrono::system_clock::now(),
                                            std::chrono::steady_clock::now()),
                      std::move(reply));
}

void PubSubService::ServeReplayDeadLetters(v1::ReplayDeadLettersRequest&& request, SysTime deadline,
                                           Reply<v1::ReplayDeadLettersResponse> reply) {
  absl::StatusOr<amqp::DeadLetterTarget> target =
      ServableTarget(draining(), dead_letters_ != nullptr, config_, request.business());
  if (!target.ok()) {
    reply(target.status());
    return;
  }
  if (absl::Status s = amqp::ValidateReplay(request); !s.ok()) {
    reply(s);
    return;
  }
  dead_letters_->Replay(
      std::move(*target), request.max(), std::move(*request.mutable_message_id()),
      amqp::RequestDeadline(deadline, std::chrono::system_clock::now(),
                            std::chrono::steady_clock::now()),
      [reply = std::move(reply)](absl::Status status, v1::ReplayDeadLettersResponse response) {
        if (status.ok()) {
          reply(std::move(response));
          return;
        }
        if (response.replayed() > 0) {
          status.SetPayload(util::StrCat(kTrailerPayloadPrefix, kReplayTrailer),
                            absl::Cord(response.SerializeAsString()));
        }
        reply(std::move(status));
      });
}

}  // namespace mqs::server
