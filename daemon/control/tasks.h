// Tasks: the seed's admin-to-service task control, as pure functions.
//
// A task goes to exchange task.<app> (any one instance of the app: its queue
// task.<app>.queue is shared by every instance) or task.<app>.<region>.<server>
// (that one server), with the command as routing key. Results go back to the
// reply_to business with the task's correlation id as routing key; the
// correlation id starts with the sending sidecar's instance id, which is how
// its reply queue (bound with "<instance>.#") picks out its own results.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "mqsidecar/v1/pubsub.pb.h"

namespace mqs::control {

// The commands, as sent. The seed spells "distribute" as "distibute"; that
// spelling is accepted and sent as "distribute".
inline constexpr std::string_view kTaskCommands[] = {"run", "awake", "pause", "delete",
                                                     "distribute"};

// NormalizeCommand: the command to send, or InvalidArgument naming the
// allowed ones.
absl::StatusOr<std::string> NormalizeCommand(std::string_view command);

// TaskExchange: task.<app>, or task.<app>.<region>.<server> when region and
// server are set. InvalidArgument names the field that is wrong (missing
// app, region without server, a part that is not a word).
absl::StatusOr<std::string> TaskExchange(const mqsidecar::v1::SendTaskRequest& request);

// NewCorrelationId: "<instance>.<16 hex digits>".
std::string NewCorrelationId(std::string_view instance);

// Headers a task or a result carries (plain names, readable by any client).
inline constexpr char kTaskFromHeader[] = "task-from";    // "app.region.server" of the sender
inline constexpr char kTaskStateHeader[] = "task-state";  // a result's state

// FormatIdentity: "app.region.server" ("" when no part is set).
std::string FormatIdentity(const mqsidecar::v1::Identity& identity);
// ParseIdentity: the inverse; parts missing stay empty.
mqsidecar::v1::Identity ParseIdentity(std::string_view text);

// ResultFromDelivery: the TaskResult a result message carries.
mqsidecar::v1::TaskResult ResultFromDelivery(const mqsidecar::v1::Delivery& delivery);

}  // namespace mqs::control
