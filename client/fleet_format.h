// Renderings of the control plane's messages for mqctl: the `mqctl servers`
// table and JSON, `mqctl task send`'s output, and the exit code of a task.
//
// Kept apart from mqctl.cc (like delivery_json) so the formatting can be unit
// tested without a daemon; nothing here does I/O or reads the clock.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "google/protobuf/map.h"
#include "grpcpp/support/status_code_enum.h"
#include "mqsidecar/v1/pubsub.pb.h"
#include "nlohmann/json.hpp"

namespace mqctl {

// FormatAge: how long before `now_ms` the moment `then_ms` was, as "3s ago",
// "5m ago", "2h ago", "3d ago" (a unit switches at twice its size: "90s ago",
// "119m ago"). "never" when then_ms is 0 or less; a moment after now (clock
// skew) is "0s ago".
std::string FormatAge(int64_t then_ms, int64_t now_ms);

// FormatIdentity: the parts that are set joined by '.', "usdtsvr.1.0" or
// "usdtsvr"; "" when none is.
std::string FormatIdentity(const mqsidecar::v1::Identity& identity);

// FormatStreams: "business=n,..." sorted by business; "-" when empty.
std::string FormatStreams(const google::protobuf::Map<std::string, uint32_t>& streams);

// FormatLoad: the shortest text that reads back as the same double ("0.3",
// "2", "1e+20"); "nan"/"inf"/"-inf" for those.
std::string FormatLoad(double load);

// FormatStatus: the table's STATUS cell, "<state>,load=<load>" ("ready,load=0.3";
// without the state when it is empty); "-" when the server never reported one.
std::string FormatStatus(const mqsidecar::v1::ServerInfo& server);

// RenderTable: rows (the first is the header) in left-aligned columns two
// spaces apart, one line each ending in '\n', no trailing blanks. Widths count
// UTF-8 characters; control characters in cells (free-form text from other
// services, e.g. a status state) are shown as '?' so they cannot drive the
// terminal; an empty cell is shown as "-" so every row has every column.
std::string RenderTable(const std::vector<std::vector<std::string>>& rows);

// RenderServersTable: `mqctl servers`: APP REGION SERVER HOST LAST-SEEN
// STATE STREAMS STATUS STALE, one row per server in the response's order
// (the daemon sorts it); STALE is "yes" or "-". `now_ms` is this host's
// clock, for LAST-SEEN.
std::string RenderServersTable(const mqsidecar::v1::ListServersResponse& response, int64_t now_ms);

// ServerInfoToJson: every field, the identity flattened as in the ping
// payload: {app, region, server, host, pid, version, started_at_ms,
// uptime_ms, interval_ms, last_seen_ms, broker_state, streams{}, status, stale}.
// status is null when never reported, else {state, load, message, labels{},
// reported_at_ms}. Maps are sorted by key.
nlohmann::ordered_json ServerInfoToJson(const mqsidecar::v1::ServerInfo& server);

// TaskResultToJson: {correlation_id, state, from{app, region, server},
// payload | payload_base64, content_type, headers{}, completed_at_ms}; the
// payload goes where DeliveryToJson puts it (UTF-8 or base64).
nlohmann::ordered_json TaskResultToJson(const mqsidecar::v1::TaskResult& result);

// SendTaskResponseToJson: {exchange, command, message_id, correlation_id,
// result}; result is null when the response carries none (no --wait).
nlohmann::ordered_json SendTaskResponseToJson(const mqsidecar::v1::SendTaskResponse& response);

// RenderSendTask: `mqctl task send`'s text output, "key: value" lines:
// correlation_id, exchange, command, message_id and, when the response has a
// result, state, from, content_type and last the payload (as is when it is
// UTF-8, else payload_base64), which may span lines.
std::string RenderSendTask(const mqsidecar::v1::SendTaskResponse& response);

// Exit codes shared with mqctl.cc.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitNotConfirmed = 2;
inline constexpr int kExitUsage = 64;  // EX_USAGE from sysexits.h

// TaskSendExitCode: 0 for OK; 2 when the daemon answered that the task did
// not get through, may not have, or its result did not come: NOT_FOUND
// (nothing takes tasks there), DEADLINE_EXCEEDED (no result in time, or not
// sent in time), ABORTED (the broker refused it), and UNAVAILABLE when it came
// from the daemon (`daemon_answered`: the connection to it was up when the
// call ended), which is how the daemon says the broker connection died before
// the confirm (the task may or may not be queued) or that it is shutting down.
// 1 for everything else: UNAVAILABLE because the daemon could not be reached,
// and INVALID_ARGUMENT or FAILED_PRECONDITION, fixed by changing the request
// or the daemon's config, not by retrying.
int TaskSendExitCode(grpc::StatusCode code, bool daemon_answered);

// CollectKeyValues: "KEY=VALUE" arguments (already checked to have a '=' after
// a non-empty key) into `out`; the error names `flag` and the key given twice.
std::optional<std::string> CollectKeyValues(const std::vector<std::string>& args,
                                            std::string_view flag,
                                            google::protobuf::Map<std::string, std::string>* out);

}  // namespace mqctl
