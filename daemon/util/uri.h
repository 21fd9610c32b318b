// URI helpers: masking credentials for logs, parsing listen addresses.
#pragma once

#include <string>
#include <string_view>

namespace mqs::util {

// MaskPassword returns `uri` with the password of its userinfo replaced by
// "****" ("amqp://u:p@h/" -> "amqp://u:****@h/"). Logs and operator output
// must only ever show masked URIs.
std::string MaskPassword(std::string_view uri);

}  // namespace mqs::util
