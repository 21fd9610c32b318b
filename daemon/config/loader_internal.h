// Private helpers shared by the YAML and INI loaders and Resolve(). Not part of
// the config interface; tests include it to check kConfigKeys against the docs.
#pragma once

#include <yaml-cpp/yaml.h>

#include <array>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config/config.h"
#include "util/strings.h"

namespace mqs::config::internal {

// String helpers: util/strings.h (Debian's Abseil rejects std::string_view in
// absl::StrCat); the short names keep the loaders readable.
template <typename... Args>
void Append(std::string* out, const Args&... args) {
  util::StrAppend(out, args...);
}
template <typename... Args>
std::string Cat(const Args&... args) {
  return util::StrCat(args...);
}
template <typename Range>
std::string Join(const Range& items, std::string_view separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += std::string_view(item);
  }
  return out;
}
std::string_view Trim(std::string_view s);
std::vector<std::string_view> Split(std::string_view s, char separator);
inline bool IsAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// One row of the key table. `path` is a pattern: "<business>" stands for any
// business name. docs/configuration.md mirrors this table.
struct ConfigKey {
  std::string_view path;
  std::string_view type;
  std::string_view default_value;
  std::string_view description;
};
extern const std::span<const ConfigKey> kConfigKeys;

// Direct children of `pattern` in kConfigKeys ("" = top level), in table order:
// ChildKeys("consumers.<business>") -> exchange, queue, binding_keys, ...
std::vector<std::string_view> ChildKeys(std::string_view pattern);

// "unknown key; expected one of: a, b (did you mean "b"?)".
std::string UnknownKeyMessage(std::string_view key, const std::vector<std::string_view>& known);

// Key paths. Business names contain dots, so they are quoted:
// consumers["usdt.transfer"].prefetch.
std::string BusinessPath(std::string_view root, std::string_view name);
std::string BusinessPath(std::string_view root, std::string_view name, std::string_view key);

// Collects errors as "<file>:<line>: <key path>: <message>" and remembers
// where each key was set, so that Resolve() can point at the right line.
class Diagnostics {
 public:
  explicit Diagnostics(std::string_view filename);

  // Records that canonical key `path` (YAML form) was set at `line`, shown to
  // the user as `display` (differs for INI). The first record wins.
  void Note(const std::string& path, int line, std::string display);
  // Records that `path` was set from outside the file (a flag or the
  // environment, no line), replacing what the file set there.
  void Override(const std::string& path, std::string display);
  // The line `path` was recorded at, or 0.
  int LineOf(const std::string& path) const;

  // line <= 0: unknown line.
  void Error(int line, std::string_view display_path, std::string_view message);
  // Error at the recorded location of canonical `path`, else of its nearest
  // recorded parent (a defaulted key points at its business entry).
  void ErrorAt(const std::string& path, std::string_view message);

  bool ok() const { return errors_.empty(); }
  absl::Status ToStatus() const;  // OK, or InvalidArgument with one error per line

 private:
  struct Origin {
    int line;
    std::string display;
  };
  std::string filename_;
  std::vector<std::string> errors_;
  std::map<std::string, Origin, std::less<>> origins_;
};

// Masks the password of every "scheme://user:password@" in `text`. Applied to
// every value echoed in an error, since a URI may be put under the wrong key.
std::string RedactCredentials(std::string_view text);
// `value` for an error message: quoted, credentials masked, long values cut.
std::string Quote(std::string_view value);

// The largest duration ParseDuration accepts: far above every key's own
// bound, and small enough that a time point plus it (in nanoseconds) cannot
// overflow.
inline constexpr std::chrono::hours kMaxDuration{2400};  // 100 days

// "500ms", "30s", "2m", "1h"; a bare integer is seconds. nullopt if malformed
// or above kMaxDuration.
std::optional<std::chrono::milliseconds> ParseDuration(std::string_view text);
std::string FormatDuration(std::chrono::milliseconds d);
// Decimal digits only. nullopt if malformed or above `max`.
std::optional<uint64_t> ParseUint(std::string_view text, uint64_t max);

inline constexpr std::string_view kDurationExpected =
    "expected a duration like 500ms, 30s or 2m (a bare number is seconds), at most 100 days";

// LoadFile reads at most this much: a config is a few KiB, and /dev/zero or
// an endless FIFO must not exhaust memory.
inline constexpr size_t kMaxConfigBytes = size_t{1} << 20;
inline constexpr std::string_view kMaxConfigText = "1 MiB";

// JSON in the seed's INI nests at most this deep (a business map needs 3
// levels); the JSON -> YAML conversion recurses once per level.
inline constexpr int kMaxJsonDepth = 32;
// yaml-cpp's own parser limit (yaml-cpp/depthguard.h), reported in errors.
inline constexpr int kMaxYamlDepth = 2000;

// Reads YAML nodes into a Config. The INI loader uses it too, for its JSON
// business maps (converted to YAML nodes) and its scalar keys, with every
// line fixed to the INI line.
class YamlReader {
 public:
  YamlReader(Diagnostics& diag, Config& config) : diag_(diag), config_(config) {}

  // All following reads report this line (INI); 0 = use the nodes' marks.
  void set_fixed_line(int line) { fixed_line_ = line; }

  // The whole YAML document.
  void ReadRoot(const YAML::Node& root);

  // `node` is the map business -> settings under canonical root "producers"
  // or "consumers", shown to the user as `display_root`.
  void ReadProducers(const YAML::Node& node, std::string_view display_root);
  void ReadConsumers(const YAML::Node& node, std::string_view display_root);

  // Leaf keys; canonical path (as in kConfigKeys) and display path given.
  void ReadListen(const YAML::Node& node, const std::string& display);
  void ReadUris(const YAML::Node& node, const std::string& display);
  void ReadHeartbeat(const YAML::Node& node, const std::string& display);
  void ReadConnectTimeout(const YAML::Node& node, const std::string& display);
  void ReadWindow(const YAML::Node& node, const std::string& display);
  void ReadLogLevel(const YAML::Node& node, const std::string& display);
  void ReadLogFormat(const YAML::Node& node, const std::string& display);
  // A key of `limits` ("max_payload_bytes", ...), known to be one of them.
  void ReadLimitKey(std::string_view key, const YAML::Node& node, const std::string& display);
  // A leaf key under identity, ping or tasks; `canonical` as in kConfigKeys
  // ("identity.app", "ping.interval", ...), known to be one of them.
  void ReadControlKey(std::string_view canonical, const YAML::Node& node,
                      const std::string& display);
  // `access`: a map client name -> settings; turns access on, even empty.
  // INI reads one client per call ([access] name = {json}).
  void ReadAccess(const YAML::Node& node);

 private:
  int Line(const YAML::Node& node) const;
  void ReadBroker(const YAML::Node& node);
  void ReadPublish(const YAML::Node& node);
  void ReadLog(const YAML::Node& node);
  void ReadLimits(const YAML::Node& node);
  // consumers.<business>.retry into `retry`; `canonical` is the retry key's.
  void ReadRetry(const YAML::Node& node, const std::string& canonical, const std::string& display,
                 Retry& retry);
  // identity, ping, tasks: maps of leaf keys read by ReadControlKey.
  void ReadSection(const YAML::Node& node, std::string_view section);
  // Calls `fn(key, key_node, value)` per key of map `node`; unknown keys
  // (per kConfigKeys `pattern`) and duplicate keys are errors.
  template <typename Fn>
  void ForEachKey(const YAML::Node& node, std::string_view pattern, const std::string& canonical,
                  const std::string& display, Fn fn);
  bool ExpectMap(const YAML::Node& node, const std::string& display, std::string_view what);
  std::optional<std::string> String(const YAML::Node& node, const std::string& display,
                                    bool allow_empty);
  std::optional<std::vector<std::string>> StringList(const YAML::Node& node,
                                                     const std::string& display,
                                                     std::string_view what);
  std::optional<std::chrono::milliseconds> Duration(const YAML::Node& node,
                                                    const std::string& display);
  std::optional<bool> Bool(const YAML::Node& node, const std::string& display);

  Diagnostics& diag_;
  Config& config_;
  int fixed_line_ = 0;
};

// Applies defaults (exchange, queue, binding keys, listen, broker URIs) and
// sorts the business vectors. Idempotent.
void ApplyDefaults(Config& config);

// Applies the identity overrides of `options`, resolves the placeholders
// {app} {region} {server}, ApplyDefaults, adds the implicit
// "<producer>.unroutable" consumers, then validates values and cross-business
// conflicts into `diag`. Returns the config if `diag` holds no errors (from
// the loader either).
absl::StatusOr<Config> Resolve(Config config, Diagnostics& diag, const LoadOptions& options = {});

// Expands {app}, {region} and {server} in `text` from `identity` into
// `*out`. False if it cannot: a part not set ("uses {app} but identity.app is
// not set (...)"), an unknown placeholder or a stray brace, each appended to
// `*errors`. A part marked in `invalid` (reported already) fails silently.
bool ExpandPlaceholders(std::string_view text, const Identity& identity, std::string* out,
                        std::vector<std::string>* errors, const std::array<bool, 3>& invalid = {});

// "" if `part` is a valid identity part (letters, digits, '_' and '-', 1..64
// bytes), else what was expected.
std::string CheckIdentityPart(std::string_view part);

// "" if `name` is a valid business name, else what was expected.
std::string_view CheckBusinessName(std::string_view name);

}  // namespace mqs::config::internal
