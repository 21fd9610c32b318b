// JSON renderings of API messages for mqctl's line-oriented output.
//
// Kept apart from mqctl.cc so the encoding rules (UTF-8 vs base64 payloads)
// can be unit tested without a daemon.
#pragma once

#include <string>
#include <string_view>

#include "mqsidecar/v1/pubsub.pb.h"
#include "nlohmann/json.hpp"

namespace mqctl {

// True when `s` is well-formed UTF-8 (no overlong forms, no surrogates,
// nothing above U+10FFFF).
bool IsValidUtf8(std::string_view s);

// Standard base64 (RFC 4648 section 4) with padding.
std::string Base64Encode(std::string_view bytes);

// Every Delivery field. The payload goes in "payload" when it is valid UTF-8
// and in "payload_base64" otherwise, so consumers can always recover the bytes.
nlohmann::ordered_json DeliveryToJson(const mqsidecar::v1::Delivery& d);

// {sequence, message_id, status, error}; status is the enum name.
nlohmann::ordered_json PublishResultToJson(const mqsidecar::v1::PublishResult& r);

// The enum name, or "STATUS_<n>" for a value this build does not know.
std::string PublishStatusName(int status);

// One line, UTF-8 kept as is. Invalid UTF-8 in string fields (which protobuf
// should already have refused) is replaced rather than aborting the output.
std::string DumpLine(const nlohmann::ordered_json& j);

}  // namespace mqctl
