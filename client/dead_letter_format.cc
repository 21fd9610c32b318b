#include "dead_letter_format.h"

#include "delivery_json.h"
#include "fleet_format.h"

namespace mqctl {

nlohmann::ordered_json DeadLetterToJson(const mqsidecar::v1::DeadLetter& letter) {
  nlohmann::ordered_json j;
  j["reason"] = letter.reason();
  j["queue"] = letter.queue();
  j["dead_lettered_at_ms"] = letter.dead_lettered_at_ms();
  j["count"] = letter.count();
  j["original_exchange"] = letter.original_exchange();
  j["original_routing_key"] = letter.original_routing_key();
  j["message"] = DeliveryToJson(letter.message());
  return j;
}

nlohmann::ordered_json ReplayToJson(const mqsidecar::v1::ReplayDeadLettersResponse& response) {
  nlohmann::ordered_json j;
  j["replayed"] = response.replayed();
  j["message_ids"] = nlohmann::ordered_json::array();
  for (const std::string& id : response.message_ids()) j["message_ids"].push_back(id);
  j["remaining"] = response.remaining();
  return j;
}

std::optional<mqsidecar::v1::ReplayDeadLettersResponse> ParseReplayTrailer(std::string_view value) {
  mqsidecar::v1::ReplayDeadLettersResponse response;
  if (!response.ParseFromArray(value.data(), static_cast<int>(value.size()))) return std::nullopt;
  return response;
}

int ReplayExitCode(grpc::StatusCode code,
                   const std::optional<mqsidecar::v1::ReplayDeadLettersResponse>& partial) {
  if (code == grpc::StatusCode::OK) return kExitOk;
  if (partial.has_value() && partial->replayed() > 0) return kExitNotConfirmed;
  return kExitError;
}

}  // namespace mqctl
