// Links the installed mqsidecar::client and makes one call: to a socket that
// does not exist, which must fail fast and cleanly (no sidecar is needed).
#include <chrono>
#include <cstdio>

#include "mqsidecar/client.h"

int main() {
  mqsidecar::Client client("unix:///nonexistent/mqsidecar-package-test.sock");
  mqsidecar::v1::PublishRequest request;
  request.set_business("package.test");
  request.set_payload("hello");
  const mqsidecar::PublishOutcome outcome = client.Publish(request, std::chrono::seconds(5));
  if (outcome.status.ok()) {
    std::fprintf(stderr, "unexpected: %s\n", outcome.ToString().c_str());
    return 1;
  }
  std::printf("package ok: %s\n", outcome.ToString().c_str());
  return 0;
}
