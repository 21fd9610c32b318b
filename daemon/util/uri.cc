#include "util/uri.h"

namespace mqs::util {

std::string MaskPassword(std::string_view uri) {
  const size_t scheme = uri.find("://");
  const size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
  const size_t at = uri.find('@', start);
  if (at == std::string_view::npos) return std::string(uri);
  const size_t colon = uri.find(':', start);
  if (colon == std::string_view::npos || colon > at) return std::string(uri);
  std::string out(uri.substr(0, colon + 1));
  out += "****";
  out += uri.substr(at);
  return out;
}

}  // namespace mqs::util
