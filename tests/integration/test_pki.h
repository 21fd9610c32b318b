// Certificates made at test time with openssl (as deploy/scripts/tls-broker.sh
// does for the broker): two CAs, "ca-a" and "ca-b", each with a server
// certificate for localhost and 127.0.0.1 (server-a, server-b) and a client
// certificate (client-a: CN=client-a, client-b: CN=client-b; O=mqs-test),
// plus client-a2 (CN=client-a2) from ca-a. EC P-256 keys: the whole set takes
// well under a second.
#pragma once

#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "harness.h"

namespace mqs::it {

class TestPki {
 public:
  // Makes the files under `dir`/pki; REQUIREs that openssl succeeded.
  explicit TestPki(const std::string& dir) : dir_(dir + "/pki") {
    const std::string script = R"(set -e
mkdir -p ")" + dir_ + R"(" && cd ")" +
                               dir_ + R"("
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
for ca in ca-a ca-b; do
  key $ca
  openssl req -x509 -new -key $ca.key -out $ca.pem -days 2 -subj "/CN=mqs test $ca"
done
leaf() {  # name ca subject extension
  key $1
  openssl req -new -key $1.key -out $1.csr -subj "$3"
  printf '%s\n' "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 \
    -extfile $1.ext 2>/dev/null
}
leaf server-a ca-a "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf server-b ca-b "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf client-a ca-a "/O=mqs-test/CN=client-a" "extendedKeyUsage=clientAuth"
leaf client-a2 ca-a "/O=mqs-test/CN=client-a2" "extendedKeyUsage=clientAuth"
leaf client-b ca-b "/O=mqs-test/CN=client-b" "extendedKeyUsage=clientAuth"
)";
    const CommandResult r = RunCommand({"/bin/bash", "-c", script}, std::chrono::seconds(60));
    INFO(CommandOutput(r));
    REQUIRE(r.exit_code == 0);
  }
  // "ca-a.pem", "server-a.key", ...
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }
  std::string Read(const std::string& file) const {
    std::ifstream in(Path(file));
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  std::string dir_;
};

// A TCP port free at the time of asking (the kernel's pick for port 0).
inline int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  REQUIRE(ok);
  return ntohs(addr.sin_port);
}

// A TLS channel to 127.0.0.1:`port` that trusts `ca` (a file of `pki`) and
// expects the name localhost; with `client` ("client-a"), it presents that
// certificate. Its own subchannel pool: no connection shared with another
// channel of other credentials.
inline std::shared_ptr<grpc::Channel> TlsChannel(const TestPki& pki, int port,
                                                 const std::string& ca,
                                                 const std::string& client = "") {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = pki.Read(ca);
  if (!client.empty()) {
    options.pem_cert_chain = pki.Read(client + ".pem");
    options.pem_private_key = pki.Read(client + ".key");
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::SslCredentials(options), args);
}

// A plaintext channel to 127.0.0.1:`port`.
inline std::shared_ptr<grpc::Channel> PlainChannel(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

// GetTopology over `channel` with a deadline; its status.
inline grpc::Status TopologyCall(const std::shared_ptr<grpc::Channel>& channel,
                                 std::chrono::seconds timeout = std::chrono::seconds(5)) {
  auto stub = pb::PubSub::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  pb::GetTopologyRequest request;
  pb::Topology topology;
  return stub->GetTopology(&context, request, &topology);
}

}  // namespace mqs::it
