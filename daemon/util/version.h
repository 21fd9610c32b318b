// The sidecar's version, as --version and every server.ping report it.
#pragma once

namespace mqs::util {

inline constexpr char kVersion[] = "0.2.0";

}  // namespace mqs::util
