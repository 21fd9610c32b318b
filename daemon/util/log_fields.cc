#include "util/log_fields.h"

#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <time.h>

#include <atomic>
#include <cctype>
#include <memory>

#include "util/utf8.h"

namespace mqs::util {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};

// The fields of the line being logged on this thread (json mode): set by
// LogLine around its one synchronous spdlog call, read by JsonFormatter on
// the same thread. Empty for plain spdlog calls.
thread_local std::span<const LogField> t_fields;

std::string_view LevelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

// JsonFormatter: FormatJsonLine for spdlog; the sink is synchronous, so it
// runs on the logging thread and sees that thread's t_fields.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string line =
        FormatJsonLine(msg.time, msg.level, msg.thread_id,
                       std::string_view(msg.payload.data(), msg.payload.size()), t_fields);
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

std::optional<LogFormat> ParseLogFormat(std::string_view name) {
  std::string lower;
  for (const char c : name) {
    lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  if (lower == "text") return LogFormat::kText;
  if (lower == "json") return LogFormat::kJson;
  return std::nullopt;
}

void SetUpLogging(LogFormat format, spdlog::level::level_enum level) {
  g_format.store(format, std::memory_order_relaxed);
  std::shared_ptr<spdlog::logger> logger;
  if (format == LogFormat::kJson) {
    // No colours: a terminal escape would break the JSON.
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    sink->set_formatter(std::make_unique<JsonFormatter>());
    logger = std::make_shared<spdlog::logger>("mq-sidecar", std::move(sink));
    spdlog::set_default_logger(logger);
  } else {
    logger = spdlog::stderr_color_mt("mq-sidecar");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_level(level);
}

LogFormat CurrentLogFormat() { return g_format.load(std::memory_order_relaxed); }

void LogLine(spdlog::level::level_enum level, std::span<const LogField> fields,
             std::string_view message) {
  spdlog::logger* logger = spdlog::default_logger_raw();
  if (CurrentLogFormat() == LogFormat::kJson) {
    t_fields = fields;
    logger->log(level, spdlog::string_view_t(message.data(), message.size()));
    t_fields = {};
    return;
  }
  std::string line(message);
  AppendTextFields(&line, fields);
  logger->log(level, spdlog::string_view_t(line.data(), line.size()));
}

void AppendJsonString(std::string* out, std::string_view s) {
  std::string valid;
  if (!IsValidUtf8(s)) {
    AppendValidUtf8(&valid, s);
    s = valid;
  }
  out->push_back('"');
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (u < 0x20 || u == 0x7f) {
          fmt::format_to(std::back_inserter(*out), "\\u{:04x}", u);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

std::string FormatJsonLine(std::chrono::system_clock::time_point time,
                           spdlog::level::level_enum level, size_t thread, std::string_view message,
                           std::span<const LogField> fields) {
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  const auto ms = duration_cast<milliseconds>(time.time_since_epoch()).count();
  time_t seconds = static_cast<time_t>(ms / 1000);
  int64_t millis = ms % 1000;
  if (millis < 0) {  // before 1970: floor, not truncate
    millis += 1000;
    --seconds;
  }
  tm utc{};
  gmtime_r(&seconds, &utc);
  std::string out;
  out.reserve(96 + message.size());
  fmt::format_to(std::back_inserter(out),
                 R"({{"time":"{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z","level":"{}",)"
                 R"("thread":{},"message":)",
                 utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min,
                 utc.tm_sec, millis, LevelName(level), thread);
  AppendJsonString(&out, message);
  for (const LogField& f : fields) {
    out.push_back(',');
    AppendJsonString(&out, f.key);
    out.push_back(':');
    AppendJsonString(&out, f.value);
  }
  out.append("}\n");
  return out;
}

void AppendTextFields(std::string* out, std::span<const LogField> fields) {
  for (const LogField& f : fields) {
    if (!f.in_text) continue;
    const std::string value = ForLog(f.value);
    const bool quote = value.empty() || value.find_first_of(" \"") != std::string::npos;
    StrAppend(out, " ", f.key, "=");
    if (quote) {
      out->push_back('"');
      for (const char c : value) {
        if (c == '"' || c == '\\') out->push_back('\\');
        out->push_back(c);
      }
      out->push_back('"');
    } else {
      out->append(value);
    }
  }
}

}  // namespace mqs::util
