#include "config/reload.h"

#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "util/strings.h"

namespace mqs::config {
namespace {

// Sections: Describe's output cut at its top-level keys ("broker", "log",
// "businesses", ...), each with its lines. Comparing what --check-config
// prints compares every resolved key, defaults included, with no second list
// of keys to keep in step with the loader.
std::map<std::string, std::string> Sections(const std::string& described) {
  std::map<std::string, std::string> sections;
  std::istringstream lines(described);
  std::string current;
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] != ' ') current = line.substr(0, line.find(':'));
    sections[current] += line + "\n";
  }
  return sections;
}

// Businesses: the "businesses" section per business name (an entry starts
// at a line indented by two spaces).
std::map<std::string, std::string> Businesses(const std::string& section) {
  std::map<std::string, std::string> out;
  std::istringstream lines(section);
  std::string current;
  for (std::string line; std::getline(lines, line);) {
    if (line.size() > 2 && line[0] == ' ' && line[1] == ' ' && line[2] != ' ') {
      current = line.substr(
          2, line.find(" (") == std::string::npos ? std::string::npos : line.find(" (") - 2);
    }
    if (!current.empty()) out[current] += line + "\n";
  }
  return out;
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::string_view ReloadResultName(ReloadReport::Result result) {
  switch (result) {
    case ReloadReport::Result::kUnchanged:
      return "unchanged";
    case ReloadReport::Result::kApplied:
      return "applied";
    case ReloadReport::Result::kKept:
      return "kept";
    case ReloadReport::Result::kRejected:
      return "rejected";
  }
  return "unknown";
}

std::string ReloadReport::Summary() const {
  std::string out = util::StrCat("reload: ", ReloadResultName(result));
  if (result == Result::kRejected) {
    return util::StrCat(out, ": the running config stays; the file: ", error);
  }
  if (!applied.empty()) out += util::StrCat("; applied: ", JoinNames(applied));
  if (!kept.empty()) out += util::StrCat("; kept until a restart: ", JoinNames(kept));
  if (result == Result::kUnchanged) out += " (the file says what runs)";
  return out;
}

ReloadReport PlanReload(const Config& running, const absl::StatusOr<Config>& loaded,
                        bool level_pinned) {
  ReloadReport report;
  report.level = running.log_level;
  if (!loaded.ok()) {
    report.result = ReloadReport::Result::kRejected;
    report.error = std::string(loaded.status().message());
    return report;
  }
  const Config& next = *loaded;

  // log.level: applied live, unless a flag set it.
  if (next.log_level != running.log_level) {
    if (level_pinned) {
      report.kept.push_back(util::StrCat("log.level ", running.log_level, " -> ", next.log_level,
                                         " (--log-level on the command line wins)"));
    } else {
      report.applied.push_back(
          util::StrCat("log.level: ", running.log_level, " -> ", next.log_level));
      report.level = next.log_level;
    }
  }

  // Everything else: kept, named by section (and by business).
  Config a = running;
  Config b = next;
  // Per consumer business, what applies to the streams opened from now on
  // (a live stream keeps what it opened with); once applied it is not a
  // difference of its business any more.
  for (Consumer& c : b.consumers) {
    const Consumer* old = a.FindConsumer(c.name);
    if (old == nullptr) continue;
    // The prefetch, within the running limits.max_prefetch (a new limit is
    // kept until a restart; above it the business shows as changed).
    if (old->prefetch != c.prefetch && c.prefetch <= running.limits.max_prefetch) {
      report.applied.push_back(util::StrCat("consumers.", c.name, ".prefetch: ", old->prefetch,
                                            " -> ", c.prefetch, " (new streams)"));
      report.prefetch[c.name] = c.prefetch;
      c.prefetch = old->prefetch;
    }
    // The retry delays and max_attempts, for their nacks. A delay new to the
    // queue gets its retry queue declared on first use (amqp/consumer.cc), and
    // the old retry queues still bring back what waits in them. Turning retry
    // on or off changes the queue's dead-letter topology: a difference (kept).
    if (old->retry.enabled() && c.retry.enabled() && !SameRetry(old->retry, c.retry)) {
      report.applied.push_back(util::StrCat("consumers.", c.name,
                                            ".retry: ", DescribeRetry(old->retry), " -> ",
                                            DescribeRetry(c.retry), " (new streams)"));
      report.retry[c.name] = c.retry;
      c.retry = old->retry;
    }
  }
  b.log_level = a.log_level;
  b.instance = a.instance;  // per process, not a key
  const std::map<std::string, std::string> before = Sections(Describe(a));
  const std::map<std::string, std::string> after = Sections(Describe(b));
  std::set<std::string> keys;
  for (const auto& [k, v] : before) keys.insert(k);
  for (const auto& [k, v] : after) keys.insert(k);
  for (const std::string& key : keys) {
    // "source" is the path (the same file); "topology" is derived from the
    // businesses, reported there.
    if (key == "source" || key == "topology") continue;
    const auto x = before.find(key);
    const auto y = after.find(key);
    const std::string was = x == before.end() ? "" : x->second;
    const std::string now = y == after.end() ? "" : y->second;
    if (was == now) continue;
    if (key != "businesses") {
      report.kept.push_back(key);
      continue;
    }
    const auto old_ones = Businesses(was);
    const auto new_ones = Businesses(now);
    std::vector<std::string> added, removed, changed;
    for (const auto& [name, text] : new_ones) {
      const auto it = old_ones.find(name);
      if (it == old_ones.end()) {
        added.push_back(name);
      } else if (it->second != text) {
        changed.push_back(name);
      }
    }
    for (const auto& [name, text] : old_ones) {
      if (new_ones.count(name) == 0) removed.push_back(name);
    }
    std::string what = "businesses:";
    if (!added.empty()) what += " added [" + JoinNames(added) + "]";
    if (!removed.empty()) what += " removed [" + JoinNames(removed) + "]";
    if (!changed.empty()) what += " changed [" + JoinNames(changed) + "]";
    report.kept.push_back(what);
  }

  if (!report.kept.empty()) {
    report.result = ReloadReport::Result::kKept;
  } else if (!report.applied.empty()) {
    report.result = ReloadReport::Result::kApplied;
  }
  return report;
}

void ReloadLog::Record(ReloadReport report, std::chrono::system_clock::time_point at) {
  util::MutexLock lock(&mu_);
  for (const auto& [business, prefetch] : report.prefetch) prefetch_[business] = prefetch;
  for (const auto& [business, retry] : report.retry) {
    retry_[business] = retry;
    current_.erase(business);  // the next stream gets a copy with this retry
  }
  last_ = Entry{std::move(report), at};
}

const Consumer* ReloadLog::ForNewStream(const Consumer& configured) const {
  util::MutexLock lock(&mu_);
  const auto retry = retry_.find(configured.name);
  if (retry == retry_.end()) return &configured;
  if (const auto it = current_.find(configured.name); it != current_.end()) return it->second;
  auto copy = std::make_unique<Consumer>(configured);
  copy->retry = retry->second;
  const Consumer* out = copy.get();
  copies_.push_back(std::move(copy));
  current_[configured.name] = out;
  return out;
}

uint32_t ReloadLog::Prefetch(const Consumer& consumer) const {
  util::MutexLock lock(&mu_);
  const auto it = prefetch_.find(consumer.name);
  return it == prefetch_.end() ? consumer.prefetch : it->second;
}

std::optional<ReloadLog::Entry> ReloadLog::Last() const {
  util::MutexLock lock(&mu_);
  return last_;
}

}  // namespace mqs::config
