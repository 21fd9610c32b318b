#include "server/access_policy.h"

#include <sys/stat.h>

#include <algorithm>
#include <vector>

#include "spdlog/spdlog.h"
#include "util/strings.h"

namespace mqs::server {

std::string_view RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kPublish:
      return "Publish";
    case Rpc::kPublishStream:
      return "PublishStream";
    case Rpc::kPublishBatchStream:
      return "PublishBatchStream";
    case Rpc::kSubscribe:
      return "Subscribe";
    case Rpc::kSubscribeBatch:
      return "SubscribeBatch";
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
    case Rpc::kReload:
      return "Reload";
  }
  return "?";
}

Permission PermissionFor(Rpc rpc) {
  switch (rpc) {
    case Rpc::kPublish:
    case Rpc::kPublishStream:
    case Rpc::kPublishBatchStream:
    case Rpc::kSendTask:      // to the task exchange
    case Rpc::kCompleteTask:  // to reply_to (task.result)
    case Rpc::kReportStatus:  // travels in ping.business
      return Permission::kPublish;
    case Rpc::kSubscribe:
    case Rpc::kSubscribeBatch:
    case Rpc::kListDeadLetters:    // reads the business's dead letters
    case Rpc::kReplayDeadLetters:  // and moves them back to its queue
    case Rpc::kListServers:        // reads ping.business
      return Permission::kSubscribe;
    case Rpc::kGetTopology:
      return Permission::kNone;
    case Rpc::kReload:
      return Permission::kReload;
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

namespace {

// FileState: what stat says of `path` (present false if it cannot).
struct FileState {
  bool present = false;
  ino_t inode = 0;
  off_t size = 0;
  timespec mtime{};
};

FileState StatFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {true, st.st_ino, st.st_size, st.st_mtim};
}

}  // namespace

AccessPolicy::AccessPolicy(const config::Access& access, std::chrono::milliseconds token_recheck)
    : access_(access), token_recheck_(token_recheck) {
  util::MutexLock lock(&mu_);
  for (const config::AccessClient& c : access_.clients) {
    if (c.token_file.empty()) continue;
    // The token as loaded; the file as it is now (a change after this is
    // read again).
    const FileState f = StatFile(c.token_file);
    tokens_.push_back({&c, c.token, f.present, f.inode, f.size, f.mtime});
  }
  tokens_checked_ = Clock::now();
}

void AccessPolicy::RefreshTokensLocked() const {
  const Clock::time_point now = Clock::now();
  if (now - tokens_checked_ < token_recheck_) return;
  tokens_checked_ = now;
  for (TokenFile& t : tokens_) {
    const FileState f = StatFile(t.client->token_file);
    if (f.present == t.present && f.inode == t.inode && f.size == t.size &&
        f.mtime.tv_sec == t.mtime.tv_sec && f.mtime.tv_nsec == t.mtime.tv_nsec) {
      continue;
    }
    t.present = f.present;
    t.inode = f.inode;
    t.size = f.size;
    t.mtime = f.mtime;
    absl::StatusOr<std::string> token = config::ReadTokenFile(t.client->token_file);
    if (!token.ok()) {
      spdlog::error("access: client {}: {}; it keeps its previous token", t.client->name,
                    token.status().message());
      continue;
    }
    if (*token == t.token) continue;
    const bool taken = std::any_of(tokens_.begin(), tokens_.end(), [&](const TokenFile& other) {
      return &other != &t && ConstantTimeEquals(other.token, *token);
    });
    if (taken) {
      spdlog::error(
          "access: client {}: the new token in {} is another client's; it keeps its previous "
          "token",
          t.client->name, util::ForLog(t.client->token_file));
      continue;
    }
    t.token = *std::move(token);
    spdlog::info("access: client {}: new token read from {}", t.client->name,
                 util::ForLog(t.client->token_file));
  }
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
    util::MutexLock lock(&mu_);
    RefreshTokensLocked();
    // Every token is compared, the match or not: no early exit to time.
    const config::AccessClient* found = nullptr;
    for (const TokenFile& t : tokens_) {
      if (ConstantTimeEquals(t.token, caller.bearer_token)) found = t.client;
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
  if (need == Permission::kReload) {
    if (client->reload) {
      d.verdict = Decision::Verdict::kAllowed;
    } else {
      d.verdict = Decision::Verdict::kDenied;
      d.reason = util::StrCat("client '", client->name, "' may not reload the config (access[\"",
                              client->name, "\"].reload)");
    }
    return d;
  }
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
