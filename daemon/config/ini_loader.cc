// INI loader: the seed's format, one [rabbitmq] section whose producer and
// consumer keys hold JSON maps. Values go through the YAML reader (JSON is
// converted to YAML nodes), so both formats share every check and message.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "config/config.h"
#include "config/loader_internal.h"

namespace mqs::config {

using internal::Append;
using internal::Cat;
using internal::Join;
using internal::Split;
using internal::Trim;

namespace {

using internal::Diagnostics;
using internal::Quote;

constexpr std::string_view kSection = "rabbitmq";

// [rabbitmq] keys, in the order documented in docs/configuration.md. The seed
// has address, producer and consumer; the rest mirror YAML keys.
constexpr std::string_view kIniKeys[] = {"address",        "producer",  "consumer",
                                         "listen",         "heartbeat", "connect_timeout",
                                         "publish_window", "log_level"};

YAML::Node JsonToYaml(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::object: {
      YAML::Node map(YAML::NodeType::Map);
      for (const auto& [key, value] : j.items()) map[key] = JsonToYaml(value);
      return map;
    }
    case nlohmann::json::value_t::array: {
      YAML::Node seq(YAML::NodeType::Sequence);
      for (const nlohmann::json& item : j) seq.push_back(JsonToYaml(item));
      return seq;
    }
    case nlohmann::json::value_t::string:
      return YAML::Node(j.get<std::string>());
    case nlohmann::json::value_t::null:
    case nlohmann::json::value_t::discarded:
      return YAML::Node();
    default:  // numbers and booleans: as their JSON text, as a YAML scalar would be
      return YAML::Node(j.dump());
  }
}

// A comma-separated value as a YAML list (or one scalar, so errors name the
// key itself rather than item [0]).
YAML::Node CommaList(std::string_view value) {
  if (value.find(',') == std::string_view::npos) return YAML::Node(std::string(value));
  YAML::Node seq(YAML::NodeType::Sequence);
  for (std::string_view item : Split(value, ',')) {
    seq.push_back(std::string(Trim(item)));
  }
  return seq;
}

// Parses a JSON business map; nlohmann keeps only the last of duplicate keys,
// so they are caught with the parser callback. nlohmann parses iteratively,
// but JsonToYaml recurses: the callback drops (returns false for) anything
// nested deeper than kMaxJsonDepth, so the stack stays bounded.
std::optional<nlohmann::json> ParseJson(std::string_view text, int line, const std::string& display,
                                        Diagnostics& diag) {
  std::vector<std::set<std::string>> keys;  // per open object
  std::string duplicate;
  bool too_deep = false;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) &&
        depth >= internal::kMaxJsonDepth) {
      // Discarded: nlohmann calls back for nothing inside it, nor its end.
      too_deep = true;
      return false;
    }
    if (event == Event::object_start) {
      keys.emplace_back();
    } else if (event == Event::object_end && !keys.empty()) {
      keys.pop_back();
    } else if (event == Event::key && !keys.empty() && parsed.is_string()) {
      if (!keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  try {
    nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), callback);
    if (too_deep) {
      diag.Error(line, display, Cat("nesting deeper than ", internal::kMaxJsonDepth, " levels"));
      return std::nullopt;
    }
    if (!duplicate.empty()) {
      diag.Error(line, display, Cat("duplicate JSON key ", Quote(duplicate)));
      return std::nullopt;
    }
    return j;
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    if (const size_t bracket = what.find("] "); bracket != std::string::npos) {
      what.erase(0, bracket + 2);  // drop "[json.exception.parse_error.101] "
    }
    diag.Error(line, display,
               Cat("expected a JSON map like {\"<business>\": {\"exchange\": \"...\", "
                   "\"handle\": \"\"}}, got invalid JSON (",
                   what, ")"));
    return std::nullopt;
  }
}

}  // namespace

absl::StatusOr<Config> LoadIniText(std::string_view text, std::string_view filename) {
  Diagnostics diag(filename);
  Config config;
  internal::YamlReader reader(diag, config);
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 BOM

  std::string section;
  std::map<std::string, int> sections;  // name -> line
  std::map<std::string, int> keys;      // key -> line
  int line_no = 0;
  try {
    for (std::string_view raw : Split(text, '\n')) {
      ++line_no;
      const std::string_view line = Trim(raw);
      if (line.empty() || line.front() == '#' || line.front() == ';') continue;

      if (line.front() == '[') {
        if (line.back() != ']') {
          diag.Error(line_no, "(ini)", Cat("expected [section], got ", Quote(line)));
          section = "(invalid)";
          continue;
        }
        section = std::string(Trim(line.substr(1, line.size() - 2)));
        auto [first, inserted] = sections.emplace(section, line_no);
        if (section != kSection) {
          diag.Error(line_no, Cat("[", section, "]"),
                     Cat("unknown section; expected [", kSection, "]"));
        } else if (!inserted) {
          diag.Error(line_no, Cat("[", section, "]"),
                     Cat("duplicate section (first at line ", first->second, ")"));
        }
        continue;
      }

      const size_t eq = line.find('=');
      if (eq == std::string_view::npos) {
        diag.Error(line_no, section.empty() ? "(ini)" : section,
                   Cat("expected key=value or [section], got ", Quote(line)));
        continue;
      }
      const std::string key(Trim(line.substr(0, eq)));
      const std::string_view value = Trim(line.substr(eq + 1));
      if (section.empty()) {
        diag.Error(line_no, key, Cat("expected [", kSection, "] before the first key"));
        continue;
      }
      if (section != kSection) continue;  // the section is reported once
      const std::string display = Cat(kSection, ".", key);
      if (std::find(std::begin(kIniKeys), std::end(kIniKeys), key) == std::end(kIniKeys)) {
        diag.Error(line_no, display,
                   internal::UnknownKeyMessage(key, std::vector<std::string_view>(
                                                        std::begin(kIniKeys), std::end(kIniKeys))));
        continue;
      }
      auto [first, inserted] = keys.emplace(key, line_no);
      if (!inserted) {
        diag.Error(line_no, display, Cat("duplicate key (first at line ", first->second, ")"));
        continue;
      }

      reader.set_fixed_line(line_no);
      if (key == "address") {
        diag.Note("broker.uris", line_no, display);
        reader.ReadUris(CommaList(value), display);
      } else if (key == "listen") {
        diag.Note("listen", line_no, display);
        reader.ReadListen(CommaList(value), display);
      } else if (key == "producer" || key == "consumer") {
        if (value.empty()) continue;  // `producer=`: none
        std::optional<nlohmann::json> json = ParseJson(value, line_no, display, diag);
        if (!json) continue;
        const YAML::Node node = JsonToYaml(*json);
        if (key == "producer") {
          diag.Note("producers", line_no, display);
          reader.ReadProducers(node, display);
        } else {
          diag.Note("consumers", line_no, display);
          reader.ReadConsumers(node, display);
        }
      } else {
        const YAML::Node node(std::string{value});
        if (key == "heartbeat") {
          diag.Note("broker.heartbeat", line_no, display);
          reader.ReadHeartbeat(node, display);
        } else if (key == "connect_timeout") {
          diag.Note("broker.connect_timeout", line_no, display);
          reader.ReadConnectTimeout(node, display);
        } else if (key == "publish_window") {
          diag.Note("publish.window", line_no, display);
          reader.ReadWindow(node, display);
        } else if (key == "log_level") {
          diag.Note("log.level", line_no, display);
          reader.ReadLogLevel(node, display);
        }
      }
    }
  } catch (const std::exception& e) {  // not expected: values are type-checked first
    diag.Error(line_no, "(ini)", e.what());
    return diag.ToStatus();
  }
  return internal::Resolve(std::move(config), diag);
}

}  // namespace mqs::config
