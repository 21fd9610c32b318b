// W3C Trace Context (https://www.w3.org/TR/trace-context/) for publishes:
// a caller's `traceparent` / `tracestate`, from its gRPC metadata or from a
// PublishRequest's own headers (those win), travel as AMQP headers of the
// same names, so the consumer's Delivery.headers continue the trace.
//
// Pure parsing and validation; the server reads the metadata and logs.
#pragma once

#include <google/protobuf/map.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace mqs::util {

inline constexpr std::string_view kTraceparentHeader = "traceparent";
inline constexpr std::string_view kTracestateHeader = "tracestate";

// IsValidTraceparent: version-traceid-parentid-flags in lowercase hex
// ("00-<32>-<16>-<2>"); version ff, an all-zero trace id or parent id are
// invalid. A version above 00 may carry more after a '-' (the W3C rule for
// future versions); version 00 is exactly 55 characters.
bool IsValidTraceparent(std::string_view value);

// IsValidTracestate: the W3C list: at most 32 members `key=value`,
// comma-separated (optional spaces and tabs around commas; empty members
// allowed), keys of lowercase letters, digits, `_ - * /` (a multi-tenant key
// `tenant@system`), values of 1..256 printable ASCII characters without `,`
// and `=`, not ending in a space, no key twice.
bool IsValidTracestate(std::string_view value);

// TraceContext: a validated traceparent and its tracestate ("" when none).
struct TraceContext {
  std::string traceparent;
  std::string tracestate;
  bool empty() const { return traceparent.empty(); }
};

// TraceFromMetadata: the context the caller's metadata carries. An invalid
// traceparent drops both (the W3C says to restart the trace), an invalid
// tracestate only itself; `*dropped` then says what was dropped and why (for
// a rate-limited log line), else it is left alone.
TraceContext TraceFromMetadata(std::optional<std::string_view> traceparent,
                               std::optional<std::string_view> tracestate, std::string* dropped);

// ApplyTrace checks the request's own trace headers and adds the metadata's
// where the request has none. A request with its own traceparent keeps its
// own pair, and the metadata is ignored for it. INVALID_ARGUMENT names the
// header: an invalid traceparent or tracestate, or a tracestate without a
// traceparent.
absl::Status ApplyTrace(const TraceContext& from_metadata,
                        google::protobuf::Map<std::string, std::string>* headers);

}  // namespace mqs::util
