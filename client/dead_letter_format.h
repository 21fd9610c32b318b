// Renderings of the dead-letter methods for `mqctl dlq list` and `mqctl dlq
// replay`, and the replay's exit code.
//
// Kept apart from mqctl.cc (like delivery_json) so the formatting can be unit
// tested without a daemon; nothing here does I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "grpcpp/support/status_code_enum.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "nlohmann/json.hpp"

namespace mqctl {

// kReplayTrailer: the trailing metadata in which the daemon returns what a
// failed replay had replayed before the error (a serialized
// ReplayDeadLettersResponse; gRPC decodes the -bin value).
inline constexpr char kReplayTrailer[] = "mq-sidecar-replay-bin";

// DeadLetterToJson: {reason, queue, dead_lettered_at_ms, count,
// original_exchange, original_routing_key, message}; message is the Delivery
// as `mqctl subscribe` prints it (DeliveryToJson).
nlohmann::ordered_json DeadLetterToJson(const mqsidecar::v1::DeadLetter& letter);

// ReplayToJson: {replayed, message_ids[], remaining}.
nlohmann::ordered_json ReplayToJson(const mqsidecar::v1::ReplayDeadLettersResponse& response);

// ParseReplayTrailer: the partial response carried by kReplayTrailer, or
// nullopt when the value is not one.
std::optional<mqsidecar::v1::ReplayDeadLettersResponse> ParseReplayTrailer(std::string_view value);

// ReplayExitCode: 0 for OK; 2 when the daemon answered an error after
// replaying some messages (`partial` holds the trailer's response, if any);
// 1 for any other error (nothing was replayed).
int ReplayExitCode(grpc::StatusCode code,
                   const std::optional<mqsidecar::v1::ReplayDeadLettersResponse>& partial);

}  // namespace mqctl
