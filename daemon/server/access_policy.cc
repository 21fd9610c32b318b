#include "server/access_policy.h"

#include <algorithm>
#include <vector>

#include "util/strings.h"

namespace mqs::server {

std::string_view RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kPublish:
      return "Publish";
    case Rpc::kPublishStream:
      return "PublishStream";
    case Rpc::kSubscribe:
      return "Subscribe";
    case Rpc::kGetTopology:
      return "GetTopology";
    case Rpc::kSendTask:
      return "SendTask";
    case Rpc::kCompleteTask:
      return "CompleteTask";
    case Rpc::kReportStatus:
      return "ReportStatus";
    case Rpc::kListServers:
      return "ListServers";
    case Rpc::kListDeadLetters:
      return "ListDeadLetters";
    case Rpc::kReplayDeadLetters:
      return "ReplayDeadLetters";
  }
  return "?";
}

Permission PermissionFor(Rpc rpc) {
  switch (rpc) {
    case Rpc::kPublish:
    case Rpc::kPublishStream:
    case Rpc::kSendTask:      // to the task exchange
    case Rpc::kCompleteTask:  // to reply_to (task.result)
    case Rpc::kReportStatus:  // travels in ping.business
      return Permission::kPublish;
    case Rpc::kSubscribe:
    case Rpc::kListDeadLetters:    // reads the business's dead letters
    case Rpc::kReplayDeadLetters:  // and moves them back to its queue
    case Rpc::kListServers:        // reads ping.business
      return Permission::kSubscribe;
    case Rpc::kGetTopology:
      return Permission::kNone;
  }
  return Permission::kSubscribe;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Every byte of the longer one is visited, whatever matches: the time
  // tells the lengths only.
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0U : 1U;
  for (size_t i = 0; i < n; ++i) {
    const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
    const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

bool AccessPolicy::Matches(std::string_view pattern, std::string_view business) {
  // Glob with '*' only, by backtracking to the last star: linear enough for
  // names of at most 255 bytes.
  if (business.empty()) return false;  // no business is named by any rule
  size_t p = 0;
  size_t b = 0;
  size_t star = std::string_view::npos;
  size_t resume = 0;
  while (b < business.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = b;
    } else if (p < pattern.size() && pattern[p] == business[b]) {
      ++p;
      ++b;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      b = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

const config::AccessClient* AccessPolicy::Identify(const Caller& caller) const {
  if (!caller.socket_client.empty()) {
    for (const config::AccessClient& c : access_.clients) {
      if (!c.socket.empty() && c.name == caller.socket_client) return &c;
    }
    return nullptr;
  }
  if (!caller.cert_subject.empty()) {
    for (const config::AccessClient& c : access_.clients) {
      if (!c.cert_subject.empty() && c.cert_subject == caller.cert_subject) return &c;
    }
  }
  if (!caller.bearer_token.empty()) {
    // Every token is compared, the match or not: no early exit to time.
    const config::AccessClient* found = nullptr;
    for (const config::AccessClient& c : access_.clients) {
      if (!c.token.empty() && ConstantTimeEquals(c.token, caller.bearer_token)) found = &c;
    }
    return found;
  }
  return nullptr;
}

Decision AccessPolicy::Check(const Caller& caller, Rpc rpc, std::string_view business) const {
  Decision d;
  const config::AccessClient* client = Identify(caller);
  if (client == nullptr) {
    d.verdict = Decision::Verdict::kUnauthenticated;
    if (!caller.bearer_token.empty()) {
      d.reason = "the bearer token is no client's (access)";
    } else if (!caller.cert_subject.empty()) {
      d.reason = util::StrCat("the client certificate's subject '",
                              util::ForLog(caller.cert_subject), "' is no client's (access)");
    } else {
      d.reason =
          "no client identified (access): call on your own socket, send 'authorization: Bearer "
          "<token>', or present a client certificate named in access";
    }
    return d;
  }
  d.client = client->name;
  const Permission need = PermissionFor(rpc);
  if (need == Permission::kNone || business.empty()) {
    d.verdict = Decision::Verdict::kAllowed;
    return d;
  }
  const std::vector<std::string>& rules =
      need == Permission::kPublish ? client->publish : client->subscribe;
  const bool allowed = std::any_of(rules.begin(), rules.end(),
                                   [&](const std::string& r) { return Matches(r, business); });
  if (allowed) {
    d.verdict = Decision::Verdict::kAllowed;
    return d;
  }
  d.verdict = Decision::Verdict::kDenied;
  const std::string_view verb = need == Permission::kPublish ? "publish to" : "subscribe to";
  d.reason = util::StrCat("client '", client->name, "' may not ", verb, " business '",
                          util::ForLog(business), "' (", RpcName(rpc), "; access[\"", client->name,
                          "\"].", need == Permission::kPublish ? "publish" : "subscribe", ")");
  return d;
}

}  // namespace mqs::server
