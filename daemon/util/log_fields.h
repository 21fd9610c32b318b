// Log lines with structured fields, in the format `log.format` chose.
//
// spdlog 1.10 (Debian 12) has no MDC, so a line's fields travel beside its
// message: LogWith renders them as ` key=value` after the message in text
// mode, and in json mode hands them (for the duration of the one synchronous
// spdlog call) to the JSON formatter through a thread-local, which writes them
// as keys of the line's object. Plain spdlog calls keep working in both
// formats; only the lines about a business, a broker URI or a connection use
// LogWith. Nothing here costs anything for a line below the level.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "util/strings.h"

namespace mqs::util {

enum class LogFormat { kText, kJson };

// ParseLogFormat: "text" or "json" (any case); nullopt for anything else.
std::optional<LogFormat> ParseLogFormat(std::string_view name);

// LogField: one structured field of a line. Keys are fixed names ("business",
// "uri", "connection", "stream"); values any bytes (escaped when rendered).
// A URI must already be masked (MaskPassword). `in_text` false: the message
// says it already (text lines stay as they were), so only json shows it.
struct LogField {
  std::string_view key;
  std::string_view value;
  bool in_text = true;
};

// SetUpLogging makes the default logger write to stderr in `format` at
// `level`. Text is the historical format (local time, level, message);
// json is one object per line (FormatJsonLine).
void SetUpLogging(LogFormat format, spdlog::level::level_enum level);
LogFormat CurrentLogFormat();

// LogLine logs `message` with `fields` at `level` (already known enabled).
void LogLine(spdlog::level::level_enum level, std::span<const LogField> fields,
             std::string_view message);

// LogWith: spdlog::log with structured fields, e.g.
//   LogWith(spdlog::level::warn, {{"uri", masked}}, "[{}] connection lost", name);
template <typename... Args>
void LogWith(spdlog::level::level_enum level, std::initializer_list<LogField> fields,
             fmt::format_string<Args...> format, Args&&... args) {
  if (!spdlog::should_log(level)) return;
  LogLine(level, std::span<const LogField>(fields.begin(), fields.size()),
          fmt::format(format, std::forward<Args>(args)...));
}

// Pure renderers (unit-tested alone).

// AppendJsonString appends `s` as a JSON string: quoted; `"` and `\` escaped;
// control characters (below 0x20, and 0x7f) as \u00XX; bytes that are not
// well-formed UTF-8 replaced by U+FFFD (AppendValidUtf8).
void AppendJsonString(std::string* out, std::string_view s);

// FormatJsonLine: {"time":"2026-12-01T05:50:41.123Z","level":"info",
// "thread":1234,"message":"...",<fields>} and a newline. Field keys are the
// callers' fixed names, never time, level, thread or message.
std::string FormatJsonLine(std::chrono::system_clock::time_point time,
                           spdlog::level::level_enum level, size_t thread, std::string_view message,
                           std::span<const LogField> fields);

// AppendTextFields appends ` key=value` per field with in_text; the value is ForLog'd and
// quoted when empty or holding a space or a quote.
void AppendTextFields(std::string* out, std::span<const LogField> fields);

}  // namespace mqs::util
