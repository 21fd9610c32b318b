#include "util/trace_context.h"

#include <set>
#include <vector>

#include "util/strings.h"

namespace mqs::util {
namespace {

bool IsLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }
bool IsLcAlpha(char c) { return c >= 'a' && c <= 'z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsKeyChar(char c) {
  return IsLcAlpha(c) || IsDigit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

// HexField: `s` is `n` lowercase hex digits; `nonzero` also asks for one
// digit other than 0.
bool HexField(std::string_view s, size_t n, bool nonzero) {
  if (s.size() != n) return false;
  bool any = false;
  for (const char c : s) {
    if (!IsLowerHex(c)) return false;
    any = any || c != '0';
  }
  return any || !nonzero;
}

bool IsValidKey(std::string_view key) {
  const size_t at = key.find('@');
  if (at == std::string_view::npos) {
    if (key.empty() || key.size() > 256 || !IsLcAlpha(key[0])) return false;
    for (const char c : key) {
      if (!IsKeyChar(c)) return false;
    }
    return true;
  }
  const std::string_view tenant = key.substr(0, at);
  const std::string_view system = key.substr(at + 1);
  if (tenant.empty() || tenant.size() > 241 || !(IsLcAlpha(tenant[0]) || IsDigit(tenant[0]))) {
    return false;
  }
  if (system.empty() || system.size() > 14 || !IsLcAlpha(system[0])) return false;
  for (const char c : tenant) {
    if (!IsKeyChar(c)) return false;
  }
  for (const char c : system) {
    if (!IsKeyChar(c)) return false;
  }
  return true;
}

bool IsValidValue(std::string_view value) {
  if (value.empty() || value.size() > 256 || value.back() == ' ') return false;
  for (const char c : value) {
    if (c < 0x20 || c > 0x7e || c == ',' || c == '=') return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

bool IsValidTraceparent(std::string_view v) {
  if (v.size() < 55) return false;
  const std::string_view version = v.substr(0, 2);
  if (!HexField(version, 2, false) || version == "ff") return false;
  if (version == "00" ? v.size() != 55 : (v.size() > 55 && v[55] != '-')) return false;
  return v[2] == '-' && v[35] == '-' && v[52] == '-' && HexField(v.substr(3, 32), 32, true) &&
         HexField(v.substr(36, 16), 16, true) && HexField(v.substr(53, 2), 2, false);
}

bool IsValidTracestate(std::string_view v) {
  std::set<std::string_view> keys;
  size_t members = 0;
  while (true) {
    const size_t comma = v.find(',');
    const std::string_view member = TrimOws(v.substr(0, comma));
    if (!member.empty()) {
      const size_t eq = member.find('=');
      if (eq == std::string_view::npos || !IsValidKey(member.substr(0, eq)) ||
          !IsValidValue(member.substr(eq + 1)) || !keys.insert(member.substr(0, eq)).second ||
          ++members > 32) {
        return false;
      }
    }
    if (comma == std::string_view::npos) return true;
    v.remove_prefix(comma + 1);
  }
}

TraceContext TraceFromMetadata(std::optional<std::string_view> traceparent,
                               std::optional<std::string_view> tracestate, std::string* dropped) {
  TraceContext trace;
  if (!traceparent.has_value()) return trace;  // a tracestate alone means nothing
  if (!IsValidTraceparent(*traceparent)) {
    *dropped = StrCat("invalid traceparent metadata \"", ForLog(*traceparent, 80),
                      "\" ignored (a new trace starts)");
    return trace;
  }
  trace.traceparent = std::string(*traceparent);
  if (tracestate.has_value()) {
    if (IsValidTracestate(*tracestate)) {
      trace.tracestate = std::string(*tracestate);
    } else {
      *dropped = StrCat("invalid tracestate metadata \"", ForLog(*tracestate, 80), "\" ignored");
    }
  }
  return trace;
}

absl::Status ApplyTrace(const TraceContext& from_metadata,
                        google::protobuf::Map<std::string, std::string>* headers) {
  const std::string parent_key(kTraceparentHeader);
  const std::string state_key(kTracestateHeader);
  const auto parent = headers->find(parent_key);
  const auto state = headers->find(state_key);
  if (parent != headers->end() && !IsValidTraceparent(parent->second)) {
    return absl::InvalidArgumentError(
        StrCat("header 'traceparent': \"", ForLog(parent->second, 80),
               "\" is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase, ids not "
               "all zero)"));
  }
  if (state != headers->end()) {
    if (parent == headers->end()) {
      return absl::InvalidArgumentError(
          "header 'tracestate': set without a 'traceparent' header (W3C trace context)");
    }
    if (!IsValidTracestate(state->second)) {
      return absl::InvalidArgumentError(StrCat("header 'tracestate': \"", ForLog(state->second, 80),
                                               "\" is not a W3C tracestate list"));
    }
  }
  if (parent != headers->end() || from_metadata.empty()) return absl::OkStatus();
  (*headers)[parent_key] = from_metadata.traceparent;
  if (!from_metadata.tracestate.empty()) (*headers)[state_key] = from_metadata.tracestate;
  return absl::OkStatus();
}

}  // namespace mqs::util
