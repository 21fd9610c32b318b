// INI loader: the seed's format, one [rabbitmq] section whose producer and
// consumer keys hold JSON maps, plus optional sections that mirror YAML maps
// of the same names ([identity], [ping], [tasks], [socket], [tcp],
// [broker.tls], [tcp.tls], [limits]) and [access], one client per line
// (`billing = {"socket": "unix:///...", "publish": ["usdt.*"]}`). Values go through the
// YAML reader (JSON is converted to YAML nodes), so both formats share every
// check and message.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "config/config.h"
#include "config/loader_internal.h"

namespace mqs::config {

using internal::Cat;
using internal::Split;
using internal::Trim;

namespace {

using internal::Diagnostics;
using internal::Quote;

constexpr std::string_view kSection = "rabbitmq";
// [limits]: the YAML map `limits`, same key names.
constexpr std::string_view kLimitsSection = "limits";
// [access]: one line per client, name = a JSON map of its YAML settings.
constexpr std::string_view kAccessSection = "access";
// Optional sections whose keys are those of the YAML map of the same name
// (identity.app = [identity] app=...).
constexpr std::string_view kControlSections[] = {"identity", "ping",       "tasks",   "socket",
                                                 "tcp",      "broker.tls", "tcp.tls", "metrics"};

bool IsControlSection(std::string_view section) {
  return std::find(std::begin(kControlSections), std::end(kControlSections), section) !=
         std::end(kControlSections);
}

// [rabbitmq] keys, in the order documented in docs/configuration.md. The seed
// has address, producer and consumer; the rest mirror YAML keys.
constexpr std::string_view kIniKeys[] = {"address",        "producer",  "consumer",
                                         "listen",         "heartbeat", "connect_timeout",
                                         "publish_window", "log_level", "log_format"};

YAML::Node JsonToYaml(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::object: {
      YAML::Node map(YAML::NodeType::Map);
      // force_insert: operator[] looks each key up linearly, quadratic in
      // the number of businesses; nlohmann has made the keys unique already.
      for (const auto& [key, value] : j.items()) map.force_insert(key, JsonToYaml(value));
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

// JsonCheck: a SAX pass over a JSON value before it is built, for what the
// DOM cannot tell or must not meet: duplicate keys (nlohmann keeps only the
// last) and nesting deeper than kMaxJsonDepth (JsonToYaml recurses once per
// level). nlohmann's parser callback could do both, but its parser rescans
// an object's members at the end of every child object: quadratic in the
// number of businesses.
class JsonCheck : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return Open(true); }
  bool key(string_t& key) override {
    // Keys come only directly inside an object: the innermost open one.
    if (!keys_.back().insert(key).second && duplicate.empty()) duplicate = key;
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return Open(false); }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }

  bool too_deep = false;
  std::string duplicate;  // the first duplicate key
  std::string error;      // nlohmann's parse error

 private:
  bool Open(bool object) {
    if (depth_ >= internal::kMaxJsonDepth) {
      too_deep = true;
      return false;  // stops the parse: nothing deeper is looked at
    }
    ++depth_;
    if (object) keys_.emplace_back();
    return true;
  }

  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // per open object
};

// Parses a JSON business map: checked by JsonCheck, then built.
std::optional<nlohmann::json> ParseJson(std::string_view text, int line, const std::string& display,
                                        Diagnostics& diag) {
  auto invalid = [&](std::string what) {
    if (const size_t bracket = what.find("] "); bracket != std::string::npos) {
      what.erase(0, bracket + 2);  // drop "[json.exception.parse_error.101] "
    }
    diag.Error(line, display,
               Cat("expected a JSON map like {\"<business>\": {\"exchange\": \"...\", "
                   "\"handle\": \"\"}}, got invalid JSON (",
                   what, ")"));
    return std::nullopt;
  };
  JsonCheck check;
  nlohmann::json::sax_parse(text.begin(), text.end(), &check);
  if (check.too_deep) {
    diag.Error(line, display, Cat("nesting deeper than ", internal::kMaxJsonDepth, " levels"));
    return std::nullopt;
  }
  if (!check.error.empty()) return invalid(check.error);
  if (!check.duplicate.empty()) {
    diag.Error(line, display, Cat("duplicate JSON key ", Quote(check.duplicate)));
    return std::nullopt;
  }
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // not expected: checked above
    return invalid(e.what());
  }
}

}  // namespace

absl::StatusOr<Config> LoadIniText(std::string_view text, std::string_view filename,
                                   const LoadOptions& options) {
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
        if (section != kSection && !IsControlSection(section) && section != kLimitsSection &&
            section != kAccessSection) {
          std::string expected = Cat("[", kSection, "]");
          for (std::string_view s : kControlSections) expected += Cat(", [", s, "]");
          diag.Error(line_no, Cat("[", section, "]"),
                     Cat("unknown section; expected ", expected, ", [", kLimitsSection, "] or [",
                         kAccessSection, "]"));
        } else if (!inserted) {
          diag.Error(line_no, Cat("[", section, "]"),
                     Cat("duplicate section (first at line ", first->second, ")"));
        } else if (section == kAccessSection) {
          // The section alone turns access on, as `access:` does in YAML.
          reader.set_fixed_line(line_no);
          reader.ReadAccess(YAML::Node(YAML::NodeType::Map));
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
      if (section == kLimitsSection || IsControlSection(section)) {
        // [limits] and the control sections: the keys of the YAML map of the
        // same name, same names.
        const std::string canonical = Cat(section, ".", key);
        const std::vector<std::string_view> known = internal::ChildKeys(section);
        if (std::find(known.begin(), known.end(), key) == known.end()) {
          diag.Error(line_no, canonical, internal::UnknownKeyMessage(key, known));
          continue;
        }
        auto [first, inserted] = keys.emplace(canonical, line_no);
        if (!inserted) {
          diag.Error(line_no, canonical, Cat("duplicate key (first at line ", first->second, ")"));
          continue;
        }
        diag.Note(canonical, line_no, canonical);
        reader.set_fixed_line(line_no);
        if (section == kLimitsSection) {
          reader.ReadLimitKey(key, YAML::Node(std::string{value}), canonical);
        } else {
          reader.ReadControlKey(canonical, YAML::Node(std::string{value}), canonical);
        }
        continue;
      }
      if (section == kAccessSection) {
        // name = {json}: the client's YAML settings, checked by the same code.
        const std::string display = Cat(kAccessSection, ".", key);
        auto [first, inserted] = keys.emplace(display, line_no);
        if (!inserted) {
          diag.Error(line_no, display, Cat("duplicate client (first at line ", first->second, ")"));
          continue;
        }
        std::optional<nlohmann::json> json = ParseJson(value, line_no, display, diag);
        if (!json) continue;
        YAML::Node client(YAML::NodeType::Map);
        client.force_insert(key, JsonToYaml(*json));
        reader.set_fixed_line(line_no);
        reader.ReadAccess(client);
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
        } else if (key == "log_format") {
          diag.Note("log.format", line_no, display);
          reader.ReadLogFormat(node, display);
        }
      }
    }
  } catch (const std::exception& e) {  // not expected: values are type-checked first
    diag.Error(line_no, "(ini)", e.what());
    return diag.ToStatus();
  }
  return internal::Resolve(std::move(config), diag, options);
}

}  // namespace mqs::config
