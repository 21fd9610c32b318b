// UTF-8 for the API's string fields. Protobuf requires proto3 `string`
// fields to hold valid UTF-8, and clients in other languages (Python, Go,
// Java) refuse to parse a message where one does not: a whole Subscribe
// stream would fail on one delivery. AMQP short strings and header values
// are bytes, so whatever another AMQP client sent passes through here.
#pragma once

#include <string>
#include <string_view>

namespace mqs::util {

// IsValidUtf8: well-formed UTF-8 (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view s);

// AppendValidUtf8 appends `s` with each byte that does not start a
// well-formed sequence replaced by U+FFFD, as the WHATWG decoder does.
void AppendValidUtf8(std::string* out, std::string_view s);

// ToValidUtf8: `s` as AppendValidUtf8 renders it; `s` itself when valid.
std::string ToValidUtf8(std::string_view s);

}  // namespace mqs::util
