#include "control/tasks.h"

#include <random>

#include "config/config.h"
#include "util/strings.h"

namespace mqs::control {

absl::StatusOr<std::string> NormalizeCommand(std::string_view command) {
  if (command == "distibute") return std::string("distribute");
  for (std::string_view c : kTaskCommands) {
    if (c == command) return std::string(c);
  }
  return absl::InvalidArgumentError(util::StrCat(
      "unknown task command '", util::ForLog(command),
      "'; expected one of run, awake, pause, delete, distribute (or the seed's distibute)"));
}

absl::StatusOr<std::string> TaskExchange(const mqsidecar::v1::SendTaskRequest& request) {
  auto check = [](std::string_view field, std::string_view value) -> absl::Status {
    if (config::IsIdentityPart(value)) return absl::OkStatus();
    return absl::InvalidArgumentError(
        util::StrCat(field, ": expected letters, digits, '_' and '-' (at most 64), got '",
                     util::ForLog(value), "'"));
  };
  if (request.app().empty()) return absl::InvalidArgumentError("app: required");
  if (absl::Status s = check("app", request.app()); !s.ok()) return s;
  if (request.region().empty() != request.server().empty()) {
    return absl::InvalidArgumentError(
        "region and server: give both (that one server) or neither (any instance of the app)");
  }
  if (request.region().empty()) return util::StrCat("task.", request.app());
  if (absl::Status s = check("region", request.region()); !s.ok()) return s;
  if (absl::Status s = check("server", request.server()); !s.ok()) return s;
  return util::StrCat("task.", request.app(), ".", request.region(), ".", request.server());
}

std::string NewCorrelationId(std::string_view instance) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(rng()));
  return util::StrCat(instance, ".", hex);
}

std::string FormatIdentity(const mqsidecar::v1::Identity& identity) {
  if (identity.app().empty() && identity.region().empty() && identity.server().empty()) return "";
  return util::StrCat(identity.app(), ".", identity.region(), ".", identity.server());
}

mqsidecar::v1::Identity ParseIdentity(std::string_view text) {
  mqsidecar::v1::Identity out;
  std::string* parts[] = {out.mutable_app(), out.mutable_region(), out.mutable_server()};
  for (std::string* part : parts) {
    const size_t dot = text.find('.');
    *part = std::string(text.substr(0, dot));
    if (dot == std::string_view::npos) break;
    text.remove_prefix(dot + 1);
  }
  return out;
}

mqsidecar::v1::TaskResult ResultFromDelivery(const mqsidecar::v1::Delivery& delivery) {
  mqsidecar::v1::TaskResult r;
  r.set_correlation_id(delivery.correlation_id());
  r.set_payload(delivery.payload());
  r.set_content_type(delivery.content_type());
  r.set_completed_at_ms(delivery.published_at_ms());
  for (const auto& [k, v] : delivery.headers()) {
    if (k == kTaskStateHeader) {
      r.set_state(v);
    } else if (k == kTaskFromHeader) {
      *r.mutable_from() = ParseIdentity(v);
    } else {
      (*r.mutable_headers())[k] = v;
    }
  }
  return r;
}

}  // namespace mqs::control
