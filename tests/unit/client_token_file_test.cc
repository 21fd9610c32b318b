// The client library's ReadTokenFile (client/include/mqsidecar/client.h): the
// token a client sends, read from a file as the sidecar reads
// access.<client>.token_file.
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "mqsidecar/client.h"
#include "scratch_file.h"

using mqs::testing::ScratchFile;

TEST_CASE("client ReadTokenFile: the first line, without a trailing CR") {
  const ScratchFile unix_file("lf", "s3cret-token-0123456789\nsecond line\n");
  std::string token = "unchanged";
  REQUIRE(mqsidecar::ReadTokenFile(unix_file.path(), &token).ok());
  CHECK(token == "s3cret-token-0123456789");

  const ScratchFile dos_file("crlf", "s3cret-token-abcdef\r\n");
  REQUIRE(mqsidecar::ReadTokenFile(dos_file.path(), &token).ok());
  CHECK(token == "s3cret-token-abcdef");

  const ScratchFile no_newline("bare", "bare-token-xyz");
  REQUIRE(mqsidecar::ReadTokenFile(no_newline.path(), &token).ok());
  CHECK(token == "bare-token-xyz");
}

TEST_CASE("client ReadTokenFile: a file it cannot use is named and the token left as it was") {
  std::string token = "unchanged";
  const std::string absent = std::filesystem::temp_directory_path() / "mqs-client-token-absent";
  const grpc::Status missing = mqsidecar::ReadTokenFile(absent, &token);
  CHECK(missing.error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK_THAT(missing.error_message(),
             Catch::Contains("reading the token file " + absent + ": No such file or directory"));

  const ScratchFile empty("empty", "\nsecond-line-token\n");
  const grpc::Status no_token = mqsidecar::ReadTokenFile(empty.path(), &token);
  CHECK(no_token.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_THAT(no_token.error_message(), Catch::Contains(empty.path() + " has no token"));

  const std::vector<std::string> bad_lines = {"two words", "tab\there", std::string("nul\0x", 5),
                                              "bell\a"};
  for (const std::string& bad : bad_lines) {
    INFO("token line: " << bad);
    const ScratchFile file("bad", bad + "\n");
    const grpc::Status refused = mqsidecar::ReadTokenFile(file.path(), &token);
    CHECK(refused.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK_THAT(refused.error_message(), Catch::Contains(file.path()));
  }
  CHECK(token == "unchanged");
}
