// libFuzzer harness for the config loaders (issue 11): any bytes fed to the
// YAML and the INI loader must give a config or an error, never a crash, a
// sanitizer report or a hang. Built only with -DMQS_FUZZ=ON and clang
// (docs/operations.md says how to run it).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // The first byte picks the loader, so the fuzzer can steer into either;
  // a seed INI with "[rabbitmq]" reaches the JSON parser.
  const absl::StatusOr<mqs::config::Config> config =
      size > 0 && (data[0] & 1) != 0 ? mqs::config::LoadIniText(text, "fuzz.ini")
                                     : mqs::config::LoadYamlText(text, "fuzz.yaml");
  // --check-config prints whatever loaded.
  if (config.ok()) (void)mqs::config::Describe(*config);
  return 0;
}
