// The control plane's unary methods: SendTask, CompleteTask, ReportStatus,
// ListServers (async API, async_call.h; docs/control-plane.md), and Reload.
//
// One call class serves all five (ControlCall, server/control_call.h): it
// hands the request to a PubSubService handler with a Reply, and finishes
// with whatever the handler answers, from whichever thread answers.
#include <grpcpp/grpcpp.h>

#include <memory>

#include "amqp/properties.h"
#include "control/tasks.h"
#include "server/async_call.h"
#include "server/control_call.h"
#include "server/pubsub_service.h"
#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::server {
namespace {

namespace v1 = mqsidecar::v1;

// PublishError: the gRPC status for a task or result the broker did not take.
absl::Status PublishError(const v1::PublishResult& r, absl::StatusCode code,
                          std::string_view what) {
  switch (r.status()) {
    case v1::PublishResult::CONFIRMED:
      return absl::OkStatus();
    case v1::PublishResult::UNROUTABLE:
      return absl::NotFoundError(
          util::StrCat("no queue takes ", what, " (the broker returned it as unroutable)"));
    case v1::PublishResult::REJECTED:
      return absl::AbortedError(util::StrCat("the broker rejected ", what, ": ", r.error()));
    case v1::PublishResult::UNCONFIRMED:
      return absl::UnavailableError(
          util::StrCat("the connection died before the broker confirmed ", what,
                       "; it may or may not have been queued (message_id ", r.message_id(), ")"));
    default:
      break;
  }
  // FAILED: never sent, or refused with a channel error (404: no such
  // exchange, i.e. no instance of that app or server ever declared it).
  if (code == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(util::StrCat("no exchange for ", what, ": ", r.error()));
  }
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kUnavailable;
  return absl::Status(code, util::StrCat(what, " was not sent: ", r.error()));
}

}  // namespace

void PubSubService::AcceptControlMethod(
    const std::function<void(grpc::ServerCompletionQueue*, OpGate*)>& post) {
  util::MutexLock lock(&accept_mu_);
  if (cq_ != nullptr) post(cq_, gate_);
}

void PubSubService::AcceptControl() {
  util::MutexLock lock(&accept_mu_);
  if (cq_ == nullptr) return;
  Post<v1::SendTaskRequest, v1::SendTaskResponse>(
      *this, cq_, *gate_, &PubSubService::RequestSendTask, &PubSubService::HandleSendTask);
  Post<v1::CompleteTaskRequest, v1::PublishResult>(
      *this, cq_, *gate_, &PubSubService::RequestCompleteTask, &PubSubService::HandleCompleteTask);
  Post<v1::ReportStatusRequest, v1::ReportStatusResponse>(
      *this, cq_, *gate_, &PubSubService::RequestReportStatus, &PubSubService::HandleReportStatus);
  Post<v1::ListServersRequest, v1::ListServersResponse>(
      *this, cq_, *gate_, &PubSubService::RequestListServers, &PubSubService::HandleListServers);
  Post<v1::ReloadRequest, v1::ReloadResponse>(*this, cq_, *gate_, &PubSubService::RequestReload,
                                              &PubSubService::HandleReload);
}

void PubSubService::HandleReload(v1::ReloadRequest&& /*request*/, SysTime /*deadline*/,
                                 Reply<v1::ReloadResponse> reply_in) {
  const Reply<v1::ReloadResponse> reply = std::move(reply_in);
  const std::optional<config::ReloadLog::Entry> entry = reload_ ? reload_() : std::nullopt;
  if (!entry) {
    reply(absl::FailedPreconditionError(
        "this daemon was not started from a config file: there is nothing to reload from"));
    return;
  }
  v1::ReloadResponse response;
  FillReload(*entry, response.mutable_reload());
  reply(std::move(response));
}

namespace {

// SendTaskState: one SendTask in flight. It answers once the publish is
// settled and, with `wait`, the result has come (either may come first), or
// at the first failure.
struct SendTaskState {
  util::Mutex mu;
  Reply<v1::SendTaskResponse> reply ABSL_GUARDED_BY(mu);  // emptied once answered
  v1::SendTaskResponse response ABSL_GUARDED_BY(mu);
  bool wait = false;
  bool confirmed ABSL_GUARDED_BY(mu) = false;
  bool have_result ABSL_GUARDED_BY(mu) = false;

  void Answer(absl::StatusOr<v1::SendTaskResponse> r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!reply) return;
    Reply<v1::SendTaskResponse> out = std::move(reply);
    reply = nullptr;
    out(std::move(r));
  }
  void MaybeAnswerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (confirmed && (!wait || have_result)) Answer(response);
  }
};

}  // namespace

void PubSubService::HandleSendTask(v1::SendTaskRequest&& request, SysTime deadline,
                                   Reply<v1::SendTaskResponse> reply) {
  if (config_.tasks.results.empty()) {
    reply(absl::FailedPreconditionError(
        "SendTask needs tasks.results in this sidecar's config (a consumer business such as "
        "task.result, where results come back)"));
    return;
  }
  absl::StatusOr<std::string> exchange = control::TaskExchange(request);
  if (!exchange.ok()) {
    reply(exchange.status());
    return;
  }
  absl::StatusOr<std::string> command = control::NormalizeCommand(request.command());
  if (!command.ok()) {
    reply(command.status());
    return;
  }
  v1::PublishRequest publish;
  publish.set_business(*exchange);
  publish.set_routing_key(*command);
  publish.set_payload(std::move(*request.mutable_payload()));
  publish.set_content_type(request.content_type());
  publish.set_message_id(request.message_id());
  *publish.mutable_headers() = request.headers();
  if (absl::Status s = amqp::ValidatePublish(publish, config_.limits); !s.ok()) {
    reply(s);
    return;
  }
  // Trace headers are checked as on a publish (the metadata is not read here).
  if (absl::Status s = util::ApplyTrace({}, publish.mutable_headers()); !s.ok()) {
    reply(s);
    return;
  }
  const std::string from = control::FormatIdentity(control_.identity());
  if (!from.empty()) (*publish.mutable_headers())[control::kTaskFromHeader] = from;
  const std::string correlation_id = control::NewCorrelationId(control_.instance());
  publish.set_correlation_id(correlation_id);
  // reply_to names the business results go to, as the services configure
  // it (a producer business of that name).
  publish.set_reply_to(config_.tasks.results);

  auto state = std::make_shared<SendTaskState>();
  state->wait = request.wait();
  amqp::PublishJob job = JobFor(std::move(publish), *exchange, deadline);
  {
    util::MutexLock lock(&state->mu);
    state->reply = std::move(reply);
    state->response.set_exchange(*exchange);
    state->response.set_command(*command);
    state->response.set_message_id(job.request.message_id());
    state->response.set_correlation_id(correlation_id);
  }
  if (state->wait) {
    // The wait ends at timeout_ms (30 s when 0), or a little before the
    // call's own deadline, so the caller reads our status, not its own.
    auto wait = request.timeout_ms() > 0 ? std::chrono::milliseconds(request.timeout_ms())
                                         : std::chrono::milliseconds(30'000);
    auto until = std::chrono::steady_clock::now() + wait;
    if (deadline != SysTime::max()) {
      const auto left = deadline - std::chrono::system_clock::now();
      until = std::min(until, std::chrono::steady_clock::now() +
                                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                      left - std::min<std::chrono::system_clock::duration>(
                                                 left / 10, std::chrono::milliseconds(100))));
    }
    control_.waiters().Add(correlation_id, until, [state](absl::StatusOr<v1::TaskResult> result) {
      util::MutexLock lock(&state->mu);
      if (!result.ok()) {
        state->Answer(result.status());
        return;
      }
      state->have_result = true;
      *state->response.mutable_result() = std::move(*result);
      state->MaybeAnswerLocked();
    });
    control_.Wake();
  }
  const std::string what = util::StrCat("the task for exchange ", *exchange);
  job.done = [this, state, correlation_id, what](v1::PublishResult&& r, absl::StatusCode code) {
    absl::Status error = PublishError(r, code, what);
    if (!error.ok()) {
      control_.waiters().Cancel(correlation_id, error);
      util::MutexLock lock(&state->mu);
      // A result that came first proves the task was queued, whatever
      // happened to the confirm (UNCONFIRMED after a connection loss).
      if (state->have_result) {
        state->Answer(state->response);
      } else {
        state->Answer(error);
      }
      return;
    }
    util::MutexLock lock(&state->mu);
    state->confirmed = true;
    state->MaybeAnswerLocked();
  };
  publisher_.Submit(std::move(job));
}

void PubSubService::HandleCompleteTask(v1::CompleteTaskRequest&& request, SysTime deadline,
                                       Reply<v1::PublishResult> reply) {
  if (request.correlation_id().empty()) {
    reply(absl::InvalidArgumentError(
        "correlation_id: required (the task delivery's correlation_id)"));
    return;
  }
  v1::PublishRequest publish;
  publish.set_business(request.reply_to().empty() ? "task.result" : request.reply_to());
  // The routing key is the correlation id: the sender's reply queue is bound
  // with "<its instance>.#", and the durable results queue with "#".
  publish.set_routing_key(request.correlation_id());
  publish.set_correlation_id(request.correlation_id());
  publish.set_payload(std::move(*request.mutable_payload()));
  publish.set_content_type(request.content_type());
  publish.set_message_id(request.message_id());
  *publish.mutable_headers() = request.headers();
  if (!request.state().empty()) {
    (*publish.mutable_headers())[control::kTaskStateHeader] = request.state();
  }
  const std::string from = control::FormatIdentity(control_.identity());
  if (!from.empty()) (*publish.mutable_headers())[control::kTaskFromHeader] = from;
  absl::StatusOr<amqp::PublishJob> job = PreparePublish(std::move(publish), deadline);
  if (!job.ok()) {
    reply(job.status());
    return;
  }
  job->done = [reply = std::move(reply)](v1::PublishResult&& r, absl::StatusCode code) {
    if (r.status() == v1::PublishResult::FAILED) {
      reply(absl::Status(code == absl::StatusCode::kOk ? absl::StatusCode::kUnavailable : code,
                         r.error()));
      return;
    }
    reply(std::move(r));
  };
  publisher_.Submit(std::move(*job));
}

void PubSubService::HandleReportStatus(v1::ReportStatusRequest&& request, SysTime /*deadline*/,
                                       Reply<v1::ReportStatusResponse> reply_in) {
  const Reply<v1::ReportStatusResponse> reply = std::move(reply_in);
  const v1::ServiceStatus& s = request.status();
  // It travels in every ping: keep it small.
  size_t size = s.state().size() + s.message().size();
  for (const auto& [k, v] : s.labels()) size += k.size() + v.size();
  if (size > 4096 || s.labels_size() > 32) {
    reply(absl::InvalidArgumentError(
        "status: at most 4096 bytes of state, message and labels, and 32 labels"));
    return;
  }
  if (config_.ping.business.empty()) {
    reply(absl::FailedPreconditionError(
        "ReportStatus needs ping.business in this sidecar's config (the status travels in its "
        "pings)"));
    return;
  }
  control_.ReportStatus(request.status());
  reply(v1::ReportStatusResponse());
}

void PubSubService::HandleListServers(v1::ListServersRequest&& request, SysTime /*deadline*/,
                                      Reply<v1::ListServersResponse> reply_in) {
  const Reply<v1::ListServersResponse> reply = std::move(reply_in);
  control::FleetTable* fleet = control_.fleet();
  if (fleet == nullptr) {
    reply(absl::FailedPreconditionError(
        "ListServers needs ping.fleet: true in this sidecar's config"));
    return;
  }
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  v1::ListServersResponse response;
  for (v1::ServerInfo& info : fleet->List(request.app(), now_ms)) {
    *response.add_servers() = std::move(info);
  }
  reply(std::move(response));
}

}  // namespace mqs::server
