#include "fleet_format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <system_error>

#include "delivery_json.h"

namespace mqctl {

namespace v1 = mqsidecar::v1;

std::string FormatAge(int64_t then_ms, int64_t now_ms) {
  if (then_ms <= 0) return "never";
  const int64_t age_s = now_ms > then_ms ? (now_ms - then_ms) / 1000 : 0;
  if (age_s < 120) return std::to_string(age_s) + "s ago";
  const int64_t age_m = age_s / 60;
  if (age_m < 120) return std::to_string(age_m) + "m ago";
  const int64_t age_h = age_m / 60;
  if (age_h < 48) return std::to_string(age_h) + "h ago";
  return std::to_string(age_h / 24) + "d ago";
}

std::string FormatIdentity(const v1::Identity& identity) {
  std::string out;
  for (const std::string* part : {&identity.app(), &identity.region(), &identity.server()}) {
    if (part->empty()) continue;
    if (!out.empty()) out += '.';
    out += *part;
  }
  return out;
}

std::string FormatStreams(const google::protobuf::Map<std::string, uint32_t>& streams) {
  if (streams.empty()) return "-";
  // protobuf maps iterate in no particular order; sorted, the cell is stable.
  const std::map<std::string, uint32_t> sorted(streams.begin(), streams.end());
  std::string out;
  for (const auto& [business, n] : sorted) {
    if (!out.empty()) out += ',';
    out += business + "=" + std::to_string(n);
  }
  return out;
}

std::string FormatLoad(double load) {
  if (std::isnan(load)) return "nan";
  if (std::isinf(load)) return load > 0 ? "inf" : "-inf";
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), load);
  if (ec != std::errc()) return "?";  // cannot happen: 64 bytes hold any double
  return std::string(buf, end);
}

std::string FormatStatus(const v1::ServerInfo& server) {
  if (!server.has_status()) return "-";
  const v1::ServiceStatus& status = server.status();
  std::string out = status.state();
  if (!out.empty()) out += ',';
  out += "load=" + FormatLoad(status.load());
  return out;
}

namespace {

// Control characters (below 0x20, and 0x7f) become '?'; the rest is kept.
std::string Printable(std::string_view cell) {
  std::string out(cell);
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) c = '?';
  }
  return out;
}

// Characters, not bytes: UTF-8 continuation bytes (10xxxxxx) do not count.
size_t DisplayWidth(std::string_view cell) {
  return static_cast<size_t>(std::count_if(cell.begin(), cell.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0u) != 0x80u;
  }));
}

}  // namespace

std::string RenderTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::vector<std::string>> cells;
  cells.reserve(rows.size());
  size_t columns = 0;
  for (const auto& row : rows) {
    std::vector<std::string> printable;
    printable.reserve(row.size());
    for (const std::string& cell : row) printable.push_back(cell.empty() ? "-" : Printable(cell));
    columns = std::max(columns, printable.size());
    cells.push_back(std::move(printable));
  }
  std::vector<size_t> widths(columns, 0);
  for (auto& row : cells) {
    row.resize(columns, "-");
    for (size_t i = 0; i < columns; ++i) widths[i] = std::max(widths[i], DisplayWidth(row[i]));
  }
  std::string out;
  for (const auto& row : cells) {
    std::string line;
    for (size_t i = 0; i < columns; ++i) {
      line += row[i];
      if (i + 1 < columns) line.append(widths[i] - DisplayWidth(row[i]) + 2, ' ');
    }
    out += line;
    out += '\n';
  }
  return out;
}

std::string RenderServersTable(const v1::ListServersResponse& response, int64_t now_ms) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back(
      {"APP", "REGION", "SERVER", "HOST", "LAST-SEEN", "STATE", "STREAMS", "STATUS", "STALE"});
  for (const v1::ServerInfo& s : response.servers()) {
    rows.push_back({s.identity().app(), s.identity().region(), s.identity().server(), s.host(),
                    FormatAge(s.last_seen_ms(), now_ms), s.broker_state(),
                    FormatStreams(s.streams()), FormatStatus(s), s.stale() ? "yes" : "-"});
  }
  return RenderTable(rows);
}

namespace {

template <typename Value>
nlohmann::ordered_json SortedObject(const google::protobuf::Map<std::string, Value>& map) {
  const std::map<std::string, Value> sorted(map.begin(), map.end());
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [key, value] : sorted) j[key] = value;
  return j;
}

// JSON has no NaN or infinity; nlohmann would write null for them anyway, but
// saying so here keeps the output valid whatever the library version does.
nlohmann::ordered_json LoadJson(double load) {
  if (!std::isfinite(load)) return nullptr;
  return load;
}

nlohmann::ordered_json IdentityToJson(const v1::Identity& identity) {
  nlohmann::ordered_json j;
  j["app"] = identity.app();
  j["region"] = identity.region();
  j["server"] = identity.server();
  return j;
}

void PutPayload(std::string_view payload, nlohmann::ordered_json* j) {
  if (IsValidUtf8(payload)) {
    (*j)["payload"] = std::string(payload);
  } else {
    (*j)["payload_base64"] = Base64Encode(payload);
  }
}

}  // namespace

nlohmann::ordered_json ServerInfoToJson(const v1::ServerInfo& server) {
  nlohmann::ordered_json j;
  j["app"] = server.identity().app();
  j["region"] = server.identity().region();
  j["server"] = server.identity().server();
  j["host"] = server.host();
  j["pid"] = server.pid();
  j["version"] = server.version();
  j["started_at_ms"] = server.started_at_ms();
  j["uptime_ms"] = server.uptime_ms();
  j["interval_ms"] = server.interval_ms();
  j["last_seen_ms"] = server.last_seen_ms();
  j["broker_state"] = server.broker_state();
  j["streams"] = SortedObject(server.streams());
  if (server.has_status()) {
    const v1::ServiceStatus& status = server.status();
    nlohmann::ordered_json s;
    s["state"] = status.state();
    s["load"] = LoadJson(status.load());
    s["message"] = status.message();
    s["labels"] = SortedObject(status.labels());
    s["reported_at_ms"] = status.reported_at_ms();
    j["status"] = std::move(s);
  } else {
    j["status"] = nullptr;
  }
  j["stale"] = server.stale();
  return j;
}

nlohmann::ordered_json TaskResultToJson(const v1::TaskResult& result) {
  nlohmann::ordered_json j;
  j["correlation_id"] = result.correlation_id();
  j["state"] = result.state();
  j["from"] = IdentityToJson(result.from());
  PutPayload(result.payload(), &j);
  j["content_type"] = result.content_type();
  j["headers"] = SortedObject(result.headers());
  j["completed_at_ms"] = result.completed_at_ms();
  return j;
}

nlohmann::ordered_json SendTaskResponseToJson(const v1::SendTaskResponse& response) {
  nlohmann::ordered_json j;
  j["exchange"] = response.exchange();
  j["command"] = response.command();
  j["message_id"] = response.message_id();
  j["correlation_id"] = response.correlation_id();
  if (response.has_result()) {
    j["result"] = TaskResultToJson(response.result());
  } else {
    j["result"] = nullptr;
  }
  return j;
}

std::string RenderSendTask(const v1::SendTaskResponse& response) {
  std::string out;
  auto line = [&out](std::string_view key, std::string_view value) {
    out.append(key);
    out += ": ";
    out.append(value);
    out += '\n';
  };
  line("correlation_id", response.correlation_id());
  line("exchange", response.exchange());
  line("command", response.command());
  line("message_id", response.message_id());
  if (!response.has_result()) return out;
  const v1::TaskResult& result = response.result();
  const std::string from = FormatIdentity(result.from());
  line("state", result.state());
  line("from", from.empty() ? "-" : from);
  line("content_type", result.content_type());
  // Last, because a payload may span lines: everything after "payload: " is it.
  if (IsValidUtf8(result.payload())) {
    line("payload", result.payload());
  } else {
    line("payload_base64", Base64Encode(result.payload()));
  }
  return out;
}

int TaskSendExitCode(grpc::StatusCode code, bool daemon_answered) {
  switch (code) {
    case grpc::StatusCode::OK:
      return kExitOk;
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::ABORTED:
      return kExitNotConfirmed;
    case grpc::StatusCode::UNAVAILABLE:
      return daemon_answered ? kExitNotConfirmed : kExitError;
    default:
      return kExitError;
  }
}

std::optional<std::string> CollectKeyValues(const std::vector<std::string>& args,
                                            std::string_view flag,
                                            google::protobuf::Map<std::string, std::string>* out) {
  for (const std::string& kv : args) {
    const size_t eq = kv.find('=');
    std::string key = kv.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (out->count(key) > 0) return std::string(flag) + " " + key + " given more than once";
    (*out)[std::move(key)] = std::move(value);
  }
  return std::nullopt;
}

}  // namespace mqctl
