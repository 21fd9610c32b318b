#include "health_check.h"

#include <cstdint>

namespace mqctl {
namespace {

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(std::string_view* in, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in->empty()) return false;
    const auto byte = static_cast<unsigned char>(in->front());
    in->remove_prefix(1);
    *v |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;  // more than 10 bytes
}

}  // namespace

std::string EncodeHealthCheckRequest(std::string_view service) {
  std::string out;
  if (service.empty()) return out;                 // proto3: default values are not encoded
  out.push_back(static_cast<char>((1 << 3) | 2));  // field 1, length-delimited
  PutVarint(service.size(), &out);
  out.append(service);
  return out;
}

std::optional<int> DecodeHealthCheckResponse(std::string_view bytes) {
  int status = kHealthUnknown;  // absent field: the default
  while (!bytes.empty()) {
    uint64_t key = 0;
    if (!GetVarint(&bytes, &key)) return std::nullopt;
    const uint64_t field = key >> 3;
    const int wire_type = static_cast<int>(key & 7);
    uint64_t value = 0;
    switch (wire_type) {
      case 0:  // varint
        if (!GetVarint(&bytes, &value)) return std::nullopt;
        if (field == 1) status = static_cast<int>(static_cast<int32_t>(value));
        break;
      case 1:  // 64-bit
        if (bytes.size() < 8) return std::nullopt;
        bytes.remove_prefix(8);
        break;
      case 2:  // length-delimited
        if (!GetVarint(&bytes, &value) || value > bytes.size()) return std::nullopt;
        bytes.remove_prefix(static_cast<size_t>(value));
        break;
      case 5:  // 32-bit
        if (bytes.size() < 4) return std::nullopt;
        bytes.remove_prefix(4);
        break;
      default:
        return std::nullopt;
    }
  }
  return status;
}

std::string HealthStatusName(int status) {
  switch (status) {
    case kHealthUnknown:
      return "UNKNOWN";
    case kHealthServing:
      return "SERVING";
    case kHealthNotServing:
      return "NOT_SERVING";
    case kHealthServiceUnknown:
      return "SERVICE_UNKNOWN";
    default:
      return "STATUS_" + std::to_string(status);
  }
}

}  // namespace mqctl
