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
  if (size > 0 && (data[0] & 1) != 0) {
    (void)mqs::config::LoadIniText(text, "fuzz.ini");
  } else {
    (void)mqs::config::LoadYamlText(text, "fuzz.yaml");
  }
  return 0;
}
