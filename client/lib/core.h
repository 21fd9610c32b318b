// Client::Core: what a Client, its publishers and its subscriptions share
// (the channel, the stub, the token, the error callback).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <string_view>

#include "mqsidecar/client.h"
#include "mqsidecar/v1/pubsub.grpc.pb.h"

namespace mqsidecar {

struct Client::Core {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::PubSub::Stub> stub;
  std::string authorization;    // "Bearer <token>", or empty
  bool wait_for_ready = false;  // unary calls: ClientOptions::wait_for_ready
  ErrorCallback on_error;

  void Prepare(grpc::ClientContext* context) const {
    if (!authorization.empty()) context->AddMetadata("authorization", authorization);
  }
  // To on_error (an exception from it is swallowed), else stderr.
  void Report(std::string_view what) const;
};

// "UNAVAILABLE: <message>"
std::string StatusText(const grpc::Status& status);

}  // namespace mqsidecar
