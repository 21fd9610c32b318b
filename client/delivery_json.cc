#include "delivery_json.h"

#include <cstdint>
#include <map>
#include <string>

#include "absl/strings/escaping.h"

namespace mqctl {

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07u;
    } else {
      return false;  // continuation byte, C0/C1 (overlong), or F5..FF
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0u) != 0x80u) return false;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    // Shortest-form, surrogate and range checks.
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    if (cp > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

std::string Base64Encode(std::string_view bytes) {
  return absl::Base64Escape(absl::string_view(bytes.data(), bytes.size()));
}

nlohmann::ordered_json DeliveryToJson(const mqsidecar::v1::Delivery& d) {
  nlohmann::ordered_json j;
  j["delivery_id"] = d.delivery_id();
  j["business"] = d.business();
  j["exchange"] = d.exchange();
  j["routing_key"] = d.routing_key();
  if (IsValidUtf8(d.payload())) {
    j["payload"] = d.payload();
  } else {
    j["payload_base64"] = Base64Encode(d.payload());
  }
  j["message_id"] = d.message_id();
  j["correlation_id"] = d.correlation_id();
  j["content_type"] = d.content_type();
  // protobuf maps iterate in no particular order; sort so the output is stable
  // for tests and diffs.
  const std::map<std::string, std::string> headers(d.headers().begin(), d.headers().end());
  j["headers"] = nlohmann::ordered_json::object();
  for (const auto& [key, value] : headers) j["headers"][key] = value;
  j["redelivered"] = d.redelivered();
  j["delivery_count"] = d.delivery_count();
  j["published_at_ms"] = d.published_at_ms();
  j["reply_to"] = d.reply_to();
  return j;
}

std::string PublishStatusName(int status) {
  if (mqsidecar::v1::PublishResult::Status_IsValid(status)) {
    return mqsidecar::v1::PublishResult::Status_Name(
        static_cast<mqsidecar::v1::PublishResult::Status>(status));
  }
  return "STATUS_" + std::to_string(status);
}

nlohmann::ordered_json PublishResultToJson(const mqsidecar::v1::PublishResult& r) {
  nlohmann::ordered_json j;
  j["sequence"] = r.sequence();
  j["message_id"] = r.message_id();
  j["status"] = PublishStatusName(r.status());
  j["error"] = r.error();
  return j;
}

std::string DumpLine(const nlohmann::ordered_json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace mqctl
