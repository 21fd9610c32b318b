#include "control/ping.h"

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "control/tasks.h"
#include "util/strings.h"

namespace mqs::control {

using nlohmann::json;

std::string RoutingKeyFor(const mqsidecar::v1::Identity& identity) {
  return util::StrCat(identity.app(), ".", identity.region(), ".", identity.server());
}

std::string BuildPing(const PingFacts& f) {
  json j;
  j["app"] = f.identity.app();
  j["region"] = f.identity.region();
  j["server"] = f.identity.server();
  j["host"] = f.host;
  j["pid"] = f.pid;
  j["version"] = f.version;
  j["started_at_ms"] = f.started_at_ms;
  j["sent_at_ms"] = f.sent_at_ms;
  j["uptime_ms"] = f.sent_at_ms - f.started_at_ms;
  j["interval_ms"] = f.interval_ms;
  j["broker_state"] = f.broker_state;
  json streams = json::object();
  for (const auto& [business, n] : f.streams) streams[business] = n;
  j["streams"] = std::move(streams);
  if (f.status.has_value()) {
    json s;
    s["state"] = f.status->state();
    s["load"] = f.status->load();
    s["message"] = f.status->message();
    json labels = json::object();
    for (const auto& [k, v] : f.status->labels()) labels[k] = v;
    s["labels"] = std::move(labels);
    s["reported_at_ms"] = f.status->reported_at_ms();
    j["status"] = std::move(s);
  }
  // Replace, not throw, on invalid UTF-8 in a service's status text: a ping
  // must never fail for what a client reported.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

std::string GetString(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

int64_t GetInt(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

}  // namespace

absl::StatusOr<mqsidecar::v1::ServerInfo> ParsePing(std::string_view payload) {
  const json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("ping payload is not a JSON object");
  }
  mqsidecar::v1::ServerInfo info;
  mqsidecar::v1::Identity* id = info.mutable_identity();
  id->set_app(GetString(j, "app"));
  id->set_region(GetString(j, "region"));
  id->set_server(GetString(j, "server"));
  if (!config::IsIdentityPart(id->app()) || !config::IsIdentityPart(id->region()) ||
      !config::IsIdentityPart(id->server())) {
    return absl::InvalidArgumentError("ping without a complete identity (app, region, server)");
  }
  const int64_t interval = GetInt(j, "interval_ms");
  if (interval <= 0 || interval > 86'400'000) {
    return absl::InvalidArgumentError("ping without a valid interval_ms");
  }
  info.set_interval_ms(static_cast<uint32_t>(interval));
  info.set_host(GetString(j, "host"));
  info.set_version(GetString(j, "version"));
  info.set_pid(static_cast<uint32_t>(GetInt(j, "pid")));
  info.set_started_at_ms(GetInt(j, "started_at_ms"));
  info.set_uptime_ms(GetInt(j, "uptime_ms"));
  info.set_broker_state(GetString(j, "broker_state"));
  if (auto it = j.find("streams"); it != j.end() && it->is_object()) {
    for (const auto& [business, n] : it->items()) {
      if (n.is_number_unsigned()) (*info.mutable_streams())[business] = n.get<uint32_t>();
    }
  }
  if (auto it = j.find("status"); it != j.end() && it->is_object()) {
    mqsidecar::v1::ServiceStatus* s = info.mutable_status();
    s->set_state(GetString(*it, "state"));
    if (auto load = it->find("load"); load != it->end() && load->is_number()) {
      s->set_load(load->get<double>());
    }
    s->set_message(GetString(*it, "message"));
    s->set_reported_at_ms(GetInt(*it, "reported_at_ms"));
    if (auto labels = it->find("labels"); labels != it->end() && labels->is_object()) {
      for (const auto& [k, v] : labels->items()) {
        if (v.is_string()) (*s->mutable_labels())[k] = v.get<std::string>();
      }
    }
  }
  return info;
}

void FleetTable::Apply(mqsidecar::v1::ServerInfo info, int64_t now_ms) {
  info.set_last_seen_ms(now_ms);
  info.set_stale(false);
  Key key{info.identity().app(), info.identity().region(), info.identity().server()};
  util::MutexLock lock(&mu_);
  servers_[std::move(key)] = std::move(info);
}

std::vector<mqsidecar::v1::ServerInfo> FleetTable::List(std::string_view app, int64_t now_ms) {
  std::vector<mqsidecar::v1::ServerInfo> out;
  util::MutexLock lock(&mu_);
  for (auto it = servers_.begin(); it != servers_.end();) {
    mqsidecar::v1::ServerInfo& info = it->second;
    const int64_t silent = now_ms - info.last_seen_ms();
    const int64_t interval = info.interval_ms();
    if (silent > kForgetIntervals * interval) {
      it = servers_.erase(it);
      continue;
    }
    info.set_stale(silent > kStaleIntervals * interval);
    if (app.empty() || info.identity().app() == app) out.push_back(info);
    ++it;
  }
  return out;
}

size_t FleetTable::size() const {
  util::MutexLock lock(&mu_);
  return servers_.size();
}

}  // namespace mqs::control
