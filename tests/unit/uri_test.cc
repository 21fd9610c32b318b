// util::MaskPassword: operator output must never show a password.
#include "util/uri.h"

#include <catch2/catch.hpp>

namespace mqs::util {
namespace {

TEST_CASE("uri: MaskPassword masks the password only") {
  CHECK(MaskPassword("amqp://guest:guest@127.0.0.1:5672/") == "amqp://guest:****@127.0.0.1:5672/");
  CHECK(MaskPassword("amqps://root:s3cret@rabbit:5671/prod") ==
        "amqps://root:****@rabbit:5671/prod");
  CHECK(MaskPassword("amqp://u:p%40ss@h/") == "amqp://u:****@h/");
  CHECK(MaskPassword("amqp://u:@h/") == "amqp://u:****@h/");
}

TEST_CASE("uri: MaskPassword leaves URIs without a password alone") {
  CHECK(MaskPassword("amqp://127.0.0.1:5672/") == "amqp://127.0.0.1:5672/");
  CHECK(MaskPassword("amqp://user@host:5672/") == "amqp://user@host:5672/");
  CHECK(MaskPassword("amqp://") == "amqp://");
  CHECK(MaskPassword("") == "");
}

TEST_CASE("uri: MaskPassword without a scheme") {
  CHECK(MaskPassword("user:pw@host:5672") == "user:****@host:5672");
  CHECK(MaskPassword("host:5672") == "host:5672");
}

}  // namespace
}  // namespace mqs::util
