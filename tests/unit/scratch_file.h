// ScratchFile: a file under the temp dir holding `text`, removed at scope
// exit, for the unit tests of code that reads files (config, TLS, tokens).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace mqs::testing {

class ScratchFile {
 public:
  // `name` tells a test's files apart; the pid keeps test processes run in
  // parallel (ctest -j) apart.
  ScratchFile(const std::string& name, const std::string& text)
      : path_(std::filesystem::temp_directory_path() /
              ("mqs-unit-" + std::to_string(::getpid()) + "-" + name)) {
    std::ofstream(path_) << text;
  }
  ~ScratchFile() { std::filesystem::remove(path_); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace mqs::testing
