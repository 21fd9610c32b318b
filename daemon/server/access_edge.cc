// The server edge of AccessPolicy: who made a call (its socket's client, its
// bearer token, its client certificate), and the verdict as a gRPC status.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cctype>

#include "control/tasks.h"
#include "server/pubsub_service.h"
#include "spdlog/spdlog.h"
#include "util/log_limiter.h"
#include "util/strings.h"

namespace mqs::server {

namespace v1 = ::mqsidecar::v1;

namespace {

// DeniedLog: refusals are logged, but a client sending a flood of refused
// requests gets 10 lines per client (and 10 for callers no client matched)
// per 10 s; the next line says how many were held back.
util::LogLimiter& DeniedLog() {
  static util::LogLimiter limiter(10, std::chrono::seconds(10));
  return limiter;
}

std::string HeldBack(uint64_t count) {
  return count == 0 ? std::string() : util::StrCat(" (", count, " similar lines held back)");
}

std::string FirstProperty(const grpc::AuthContext& auth, const char* name) {
  const std::vector<grpc::string_ref> values = auth.FindPropertyValues(name);
  return values.empty() ? std::string() : std::string(values.front().data(), values.front().size());
}

}  // namespace

Caller PubSubService::CallerOf(const grpc::ServerContext& ctx) const {
  Caller caller;
  if (access_ == nullptr) return caller;
  // The client whose socket the call came in on (UnixAcceptor).
  caller.socket_client = connections_.ClientOf(ctx.peer());
  if (const std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context(); auth != nullptr) {
    // Set by gRPC only for a certificate that chained to tcp.tls.client_ca.
    caller.cert_subject = FirstProperty(*auth, GRPC_X509_SUBJECT_PROPERTY_NAME);
  }
  const auto& metadata = ctx.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    const std::string_view value(it->second.data(), it->second.size());
    // The scheme's case does not matter (RFC 7235); the token's does.
    constexpr std::string_view kBearer = "bearer ";
    // `want` from kBearer (lowercase), `got` from the header.
    const auto same_letter = [](char want, char got) {
      return want == std::tolower(static_cast<unsigned char>(got));
    };
    if (value.size() > kBearer.size() &&
        std::equal(kBearer.begin(), kBearer.end(), value.begin(), same_letter)) {
      caller.bearer_token = std::string(value.substr(kBearer.size()));
    } else {
      // Sent, but not as a bearer token: never matches, still reported as
      // a token that is no client's.
      // (assign, not = "\n": g++ 12 -O2 warns -Wrestrict on the latter.)
      caller.bearer_token.assign(1, '\n');
    }
  }
  return caller;
}

absl::Status PubSubService::Authorize(const Caller& caller, Rpc rpc,
                                      std::string_view business) const {
  if (access_ == nullptr) return absl::OkStatus();
  const Decision d = access_->Check(caller, rpc, business);
  switch (d.verdict) {
    case Decision::Verdict::kAllowed:
      return absl::OkStatus();
    case Decision::Verdict::kDenied:
      if (const std::optional<uint64_t> held = DeniedLog().Admit(d.client)) {
        spdlog::warn("access: {} denied to client {}: {}{}", RpcName(rpc), d.client, d.reason,
                     HeldBack(*held));
      }
      return absl::PermissionDeniedError(d.reason);
    case Decision::Verdict::kUnauthenticated:
      break;
  }
  if (const std::optional<uint64_t> held = DeniedLog().Admit("")) {
    spdlog::warn("access: {} refused, no client: {}{}", RpcName(rpc), d.reason, HeldBack(*held));
  }
  return absl::UnauthenticatedError(d.reason);
}

absl::Status PubSubService::Authorize(const grpc::ServerContext& ctx, Rpc rpc,
                                      std::string_view business) const {
  if (access_ == nullptr) return absl::OkStatus();
  return Authorize(CallerOf(ctx), rpc, business);
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::SendTaskRequest& r) const {
  if (access_ == nullptr) return absl::OkStatus();
  // A target that names no exchange is the handler's INVALID_ARGUMENT, for
  // a known client.
  absl::StatusOr<std::string> exchange = control::TaskExchange(r);
  return Authorize(ctx, Rpc::kSendTask, exchange.ok() ? *exchange : std::string());
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::CompleteTaskRequest& r) const {
  // The business the handler publishes the result to.
  return Authorize(ctx, Rpc::kCompleteTask, r.reply_to().empty() ? "task.result" : r.reply_to());
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::ReportStatusRequest& /*r*/) const {
  return Authorize(ctx, Rpc::kReportStatus, config_.ping.business);
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::ListServersRequest& /*r*/) const {
  return Authorize(ctx, Rpc::kListServers, config_.ping.business);
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::ListDeadLettersRequest& r) const {
  return Authorize(ctx, Rpc::kListDeadLetters, r.business());
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::ReplayDeadLettersRequest& r) const {
  return Authorize(ctx, Rpc::kReplayDeadLetters, r.business());
}

absl::Status PubSubService::AuthorizeRequest(const grpc::ServerContext& ctx,
                                             const v1::ReloadRequest& /*r*/) const {
  return Authorize(ctx, Rpc::kReload, "");
}

}  // namespace mqs::server
