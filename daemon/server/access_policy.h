// AccessPolicy: who may make which call on which business (config `access`,
// docs/security.md). Pure logic, no sockets: the server edge fills a Caller
// from the call (its own socket's client, the bearer token, the client
// certificate's subject), asks Check, and maps the verdict to a gRPC code.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "util/mutex.h"

namespace mqs::server {

// The PubSub methods a policy decides on.
enum class Rpc {
  kPublish,
  kPublishStream,
  kPublishBatchStream,
  kSubscribe,
  kSubscribeBatch,
  kGetTopology,
  kSendTask,
  kCompleteTask,
  kReportStatus,
  kListServers,
  kListDeadLetters,
  kReplayDeadLetters,
  kReload,
};
std::string_view RpcName(Rpc rpc);  // "Publish", ...

// Permission: what an RPC needs on its business. Publishing ones need
// `publish` (the business it sends to), reading ones `subscribe` (the
// business whose messages it reads), GetTopology none (any known client),
// Reload the client's `reload` (it names no business).
enum class Permission { kNone, kPublish, kSubscribe, kReload };
Permission PermissionFor(Rpc rpc);

// Caller: what the server edge knows about who made a call.
struct Caller {
  std::string socket_client;  // the call came on this client's own socket; "" otherwise
  std::string bearer_token;   // "authorization: Bearer <token>"; "" if not sent
  std::string cert_subject;   // the verified client certificate's subject (RFC 2253); ""
};

struct Decision {
  enum class Verdict { kAllowed, kDenied, kUnauthenticated };
  Verdict verdict = Verdict::kUnauthenticated;
  std::string client;  // the client identified; "" when none
  std::string reason;  // why not, for the caller and the log (never a token)
  bool allowed() const { return verdict == Verdict::kAllowed; }
};

class AccessPolicy {
 public:
  // `access` must be resolved (config::Resolve) and outlive the policy.
  // Token files are looked at again at most every `token_recheck` (on a call
  // that sends a token): a rotated token replaces the old one without a
  // restart.
  explicit AccessPolicy(const config::Access& access,
                        std::chrono::milliseconds token_recheck = std::chrono::seconds(1));

  // Identify: the client making the call, or nullptr. A call on a client's
  // own socket is that client's; else a certificate subject named in
  // access; else a bearer token equal (in constant time) to a client's
  // current token.
  const config::AccessClient* Identify(const Caller& caller) const;

  // Check: may `caller` make `rpc` on `business`? An empty business (the RPC
  // names none, or its business is not configured, which the call then
  // reports itself) needs a known client only.
  Decision Check(const Caller& caller, Rpc rpc, std::string_view business) const;

  // Matches: `pattern` (a name, or with '*' for any run of characters)
  // matches `business`.
  static bool Matches(std::string_view pattern, std::string_view business);

 private:
  using Clock = std::chrono::steady_clock;

  // TokenFile: a token_file client's current token, and what its file was
  // when last read (a change of any of these means: read it again).
  struct TokenFile {
    const config::AccessClient* client;
    std::string token;
    bool present = false;
    ino_t inode = 0;
    off_t size = 0;
    timespec mtime{};
  };

  // RefreshTokensLocked: re-reads every token file that changed. A file that
  // is gone or holds no valid token, or another client's token, leaves the
  // client its previous token and logs why, once per change.
  void RefreshTokensLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const config::Access& access_;
  const std::chrono::milliseconds token_recheck_;
  mutable util::Mutex mu_;
  mutable std::vector<TokenFile> tokens_ ABSL_GUARDED_BY(mu_);
  mutable Clock::time_point tokens_checked_ ABSL_GUARDED_BY(mu_);
};

// ConstantTimeEquals: a == b, taking time that depends on the lengths only.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace mqs::server
