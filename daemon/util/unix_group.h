// GroupId: a group name's id, for the unix socket listeners' group.
#pragma once

#include <grp.h>

#include <optional>
#include <string>
#include <vector>

namespace mqs::util {

// The id of group `name`, or nullopt when there is none (or the lookup
// failed).
inline std::optional<gid_t> GroupId(const std::string& name) {
  std::vector<char> buf(size_t{64} * 1024);
  group entry{};
  group* found = nullptr;
  if (getgrnam_r(name.c_str(), &entry, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return found->gr_gid;
}

}  // namespace mqs::util
