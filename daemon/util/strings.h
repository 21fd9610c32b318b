// String helpers that work with both std::string_view and absl::string_view.
//
// Debian 12's Abseil is built with its own absl::string_view (not an alias of
// std::string_view), so absl::StrCat rejects std::string_view arguments. These
// helpers accept either, and teach fmt/spdlog to print absl::string_view
// (e.g. absl::Status::message()).
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace mqs::util {

inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

namespace internal {
inline void AppendOne(std::string& out, std::string_view s) { out.append(s); }
inline void AppendOne(std::string& out, const char* s) { out.append(s); }
inline void AppendOne(std::string& out, const std::string& s) { out.append(s); }
inline void AppendOne(std::string& out, absl::string_view s) { out.append(s.data(), s.size()); }
inline void AppendOne(std::string& out, char c) { out.push_back(c); }
template <typename T>
requires(std::is_arithmetic_v<T> && !std::same_as<T, char> &&
         !std::same_as<T, bool>) void AppendOne(std::string& out, T v) {
  fmt::format_to(std::back_inserter(out), "{}", v);
}
}  // namespace internal

// StrAppend appends the text of each argument (strings, views, numbers).
template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  (internal::AppendOne(*out, args), ...);
}

// StrCat concatenates the text of its arguments.
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  StrAppend(&out, args...);
  return out;
}

// DropPartialUtf8: removes a UTF-8 sequence cut short at the end of `s`
// (a cut must not turn valid UTF-8 into invalid: gRPC status messages and
// JSON logs carry these strings).
inline void DropPartialUtf8(std::string* s) {
  size_t lead = s->size();
  size_t back = 0;
  while (lead > 0 && back < 4) {
    --lead;
    ++back;
    const auto u = static_cast<unsigned char>((*s)[lead]);
    if ((u & 0xC0) != 0x80) {
      const size_t need = u < 0x80 ? 1 : (u & 0xE0) == 0xC0 ? 2 : (u & 0xF0) == 0xE0 ? 3 : 4;
      if (back < need) s->resize(lead);
      return;
    }
  }
}

// ForLog: `s` made safe for one log line. Client-supplied names (consumer
// names, message ids, routing keys) reach the logs; a control character in
// one could forge or break a line. Bytes below 0x20 and 0x7f become \xNN;
// the result is cut at `max` bytes (marked "...").
inline std::string ForLog(std::string_view s, size_t max = 200) {
  std::string out;
  out.reserve(std::min(s.size(), max) + 8);
  for (const char c : s) {
    if (out.size() >= max) {
      DropPartialUtf8(&out);
      out.append("...");
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      fmt::format_to(std::back_inserter(out), "\\x{:02x}", u);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// HasControlChars: true if `s` holds a byte below 0x20 or 0x7f.
inline bool HasControlChars(std::string_view s) {
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return true;
  }
  return false;
}

}  // namespace mqs::util

template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(s.data(), s.size()), ctx);
  }
};
