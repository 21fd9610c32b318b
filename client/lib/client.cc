// Client: the channel, unary calls, and the factories of publishers and
// subscriptions (publisher.cc, subscription.cc).
#include "mqsidecar/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <system_error>
#include <utility>

#include "core.h"

namespace mqsidecar {

void Client::Core::Report(std::string_view what) const {
  if (on_error) {
    try {
      on_error(what);
      return;
    } catch (...) {  // NOLINT(bugprone-empty-catch): the error path must not throw
    }
  }
  std::fprintf(stderr, "mqsidecar: %.*s\n", static_cast<int>(what.size()), what.data());
}

std::string CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "code " + std::to_string(static_cast<int>(code));
  }
}

std::string StatusText(const grpc::Status& status) {
  return CodeName(status.error_code()) + ": " + status.error_message();
}

grpc::Status ReadTokenFile(const std::string& path, std::string* token) {
  std::ifstream in(path);
  if (!in) {
    return {grpc::StatusCode::NOT_FOUND,
            "reading the token file " + path + ": " + std::generic_category().message(errno)};
  }
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            "the token file " + path + " has no token on its first line"};
  }
  const bool bad = std::any_of(line.begin(), line.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
  if (bad) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            "the token file " + path +
                ": its first line holds spaces or control characters, which a token cannot"};
  }
  *token = std::move(line);
  return grpc::Status::OK;
}

std::string PublishOutcome::ToString() const {
  if (!status.ok()) return StatusText(status);
  std::string text = v1::PublishResult::Status_Name(result.status());
  if (!result.error().empty()) text += ": " + result.error();
  return text;
}

Client::Client(const std::string& target, ClientOptions options) : core_(std::make_shared<Core>()) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::max<int64_t>(100, options.max_reconnect_backoff.count())));
  // Deliveries may be as large as the sidecar's limits allow (17 MiB + 128 KiB
  // by default), above gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(-1);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  core_->channel = grpc::CreateCustomChannel(target, credentials, args);
  core_->stub = v1::PubSub::NewStub(core_->channel);
  if (!options.token.empty()) core_->authorization = "Bearer " + options.token;
  core_->on_error = std::move(options.on_error);
  core_->wait_for_ready = options.wait_for_ready;
}

Client::~Client() = default;

std::shared_ptr<grpc::Channel> Client::channel() const { return core_->channel; }

void Client::PrepareContext(grpc::ClientContext* context) const { core_->Prepare(context); }

PublishOutcome Client::Publish(const v1::PublishRequest& request,
                               std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  core_->Prepare(&context);
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  context.set_wait_for_ready(core_->wait_for_ready);
  PublishOutcome outcome;
  outcome.status = core_->stub->Publish(&context, request, &outcome.result);
  return outcome;
}

grpc::Status Client::GetTopology(v1::Topology* topology, std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  core_->Prepare(&context);
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  context.set_wait_for_ready(core_->wait_for_ready);
  return core_->stub->GetTopology(&context, v1::GetTopologyRequest(), topology);
}

}  // namespace mqsidecar
