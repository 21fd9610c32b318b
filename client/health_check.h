// grpc.health.v1 without generated code.
//
// Debian's gRPC 1.51 ships no generated health client, and the two messages
// are tiny, so mqctl encodes and decodes them by hand (protobuf wire format)
// and calls the method through grpc::GenericStub.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mqctl {

inline constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// HealthCheckResponse.ServingStatus values.
inline constexpr int kHealthUnknown = 0;
inline constexpr int kHealthServing = 1;
inline constexpr int kHealthNotServing = 2;
inline constexpr int kHealthServiceUnknown = 3;

// HealthCheckRequest { string service = 1; }
std::string EncodeHealthCheckRequest(std::string_view service);

// HealthCheckResponse { ServingStatus status = 1; }: the status, or nullopt
// when the bytes are not a well-formed message. Unknown fields are skipped.
std::optional<int> DecodeHealthCheckResponse(std::string_view bytes);

// "SERVING", "NOT_SERVING", ...; "STATUS_<n>" for values this build does not know.
std::string HealthStatusName(int status);

}  // namespace mqctl
