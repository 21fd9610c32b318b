#include "util/uri.h"

namespace mqs::util {

std::string MaskPassword(std::string_view uri) {
  const size_t scheme = uri.find("://");
  const size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
  // The userinfo ends at the last '@' of the authority, so a raw '@' in a
  // password cannot leak its tail.
  const size_t slash = uri.find('/', start);
  const std::string_view authority =
      uri.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
  const size_t at_rel = authority.rfind('@');
  const size_t at = at_rel == std::string_view::npos ? std::string_view::npos : start + at_rel;
  if (at == std::string_view::npos) return std::string(uri);
  const size_t colon = uri.find(':', start);
  if (colon == std::string_view::npos || colon > at) return std::string(uri);
  std::string out(uri.substr(0, colon + 1));
  out += "****";
  out += uri.substr(at);
  return out;
}

}  // namespace mqs::util
