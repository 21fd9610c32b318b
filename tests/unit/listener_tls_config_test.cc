// tcp.tls (issue 14): TLS and mutual TLS for TCP listeners. With a
// certificate and key, a TCP listener may be on any address; without, the
// loopback-and-tcp.insecure rule stays. The files are checked at load, each
// error naming its key.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/config.h"
#include "scratch_file.h"

namespace mqs::config {
namespace {

using mqs::testing::ScratchFile;

// Not real certificates: the loader checks the PEM labels, gRPC the rest.
const std::string kCertText = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const std::string kKeyText = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

std::string Errors(const std::string& yaml) {
  absl::StatusOr<Config> c = LoadYamlText(yaml, "t.yaml");
  REQUIRE_FALSE(c.ok());
  return std::string(c.status().message());
}

TEST_CASE("listener tls: with cert and key a TCP listener may be on any address") {
  const ScratchFile cert("server.pem", kCertText);
  const ScratchFile key("server.key", kKeyText);
  const ScratchFile ca("client-ca.pem", kCertText);
  absl::StatusOr<Config> c = LoadYamlText(
      "listen: [\"unix:///run/x/a.sock\", \"0.0.0.0:50051\", \"[::]:50052\", "
      "\"10.1.2.3:50053\", \"127.0.0.1:50054\"]\n"
      "tcp:\n  tls:\n    cert: " +
          cert.path() + "\n    key: " + key.path() + "\n    client_ca: " + ca.path() +
          "\nproducers: { a: }\n",
      "t.yaml");
  REQUIRE(c.ok());
  CHECK(c->tcp.tls.enabled());
  CHECK(c->tcp.tls.cert == cert.path());
  CHECK(c->tcp.tls.key == key.path());
  CHECK(c->tcp.tls.client_ca == ca.path());
  CHECK_FALSE(c->tcp.insecure);
  CHECK_THAT(Describe(*c), Catch::Contains("tcp.tls: cert " + cert.path()) &&
                               Catch::Contains("client_ca " + ca.path()));

  // Without client_ca: TLS without client certificates.
  absl::StatusOr<Config> server_only =
      LoadYamlText("listen: \"0.0.0.0:50051\"\ntcp: { tls: { cert: " + cert.path() +
                       ", key: " + key.path() + " } }\nproducers: { a: }\n",
                   "t.yaml");
  REQUIRE(server_only.ok());
  CHECK(server_only->tcp.tls.client_ca.empty());
  CHECK_THAT(Describe(*server_only), Catch::Contains("no client certificate asked"));
}

TEST_CASE("listener tls: without tcp.tls the loopback and tcp.insecure rule stays") {
  CHECK_FALSE(LoadYamlText("producers: { a: }\n", "t.yaml")->tcp.tls.enabled());
  const std::string any =
      Errors("listen: [\"0.0.0.0:50051\"]\ntcp: { insecure: true }\nproducers: { a: }\n");
  CHECK_THAT(any, Catch::Contains("t.yaml:1: listen[0]: \"0.0.0.0:50051\" is not a loopback "
                                  "address") &&
                      Catch::Contains("set tcp.tls"));
  CHECK_THAT(Errors("listen: [\"127.0.0.1:50051\"]\nproducers: { a: }\n"),
             Catch::Contains("set tcp.insecure: true to allow it, or serve TLS (tcp.tls: cert, "
                             "key)"));
  // A key alone is no TLS: the listener is still refused, and the key named.
  const ScratchFile key("lonely.key", kKeyText);
  const std::string lonely =
      Errors("listen: [\"0.0.0.0:50051\"]\ntcp: { tls: { key: " + key.path() +
             " } }\nproducers: { a: }\n");
  CHECK_THAT(lonely, Catch::Contains("is not a loopback address"));
  CHECK_THAT(lonely, Catch::Contains("tcp.tls.key: TLS for TCP listeners needs both "
                                     "tcp.tls.cert and tcp.tls.key"));
}

TEST_CASE("listener tls: unreadable or wrong files are errors naming the key") {
  const ScratchFile cert("c.pem", kCertText);
  const ScratchFile key("k.pem", kKeyText);
  const std::string tail = "\nproducers: { a: }\n";
  CHECK_THAT(Errors("tcp:\n  tls: { cert: /nonexistent/c.pem, key: " + key.path() + " }" + tail),
             Catch::Contains("t.yaml:2: tcp.tls.cert: cannot read \"/nonexistent/c.pem\": No "
                             "such file or directory"));
  CHECK_THAT(Errors("tcp:\n  tls: { cert: " + cert.path() + ", key: /nonexistent/k.pem }" + tail),
             Catch::Contains("tcp.tls.key: cannot read \"/nonexistent/k.pem\""));
  CHECK_THAT(Errors("tcp:\n  tls: { cert: " + cert.path() + ", key: " + key.path() +
                    ", client_ca: /nonexistent/ca.pem }" + tail),
             Catch::Contains("tcp.tls.client_ca: cannot read \"/nonexistent/ca.pem\""));
  // Swapped: the key file holds no certificate, and the other way round.
  const std::string swapped =
      Errors("tcp: { tls: { cert: " + key.path() + ", key: " + cert.path() + " } }" + tail);
  CHECK_THAT(swapped,
             Catch::Contains("tcp.tls.cert: \"" + key.path() + "\" holds no PEM CERTIFICATE"));
  CHECK_THAT(swapped,
             Catch::Contains("tcp.tls.key: \"" + cert.path() + "\" holds no PEM PRIVATE KEY"));
  CHECK_THAT(Errors("tcp: { tls: { cert: /tmp, key: " + key.path() + " } }" + tail),
             Catch::Contains("tcp.tls.cert: expected a file, got \"/tmp\""));
  CHECK_THAT(Errors("tcp: { tls: { cert: " + cert.path() + " } }" + tail),
             Catch::Contains("needs both tcp.tls.cert and tcp.tls.key"));
  CHECK_THAT(Errors("tcp: { tls: { client_ca: " + cert.path() + " } }" + tail),
             Catch::Contains("tcp.tls.client_ca: client certificates are checked in a TLS "
                             "handshake: set tcp.tls.cert and tcp.tls.key too"));
  CHECK_THAT(Errors("tcp: { tls: { ca: x } }" + tail),
             Catch::Contains("tcp.tls.ca: unknown key") && Catch::Contains("client_ca"));
  CHECK_THAT(Errors("tcp: { tls: yes }" + tail),
             Catch::Contains("tcp.tls: expected a map (cert, key, client_ca)"));
}

TEST_CASE("listener tls: the seed's INI takes a [tcp.tls] section") {
  const ScratchFile cert("ini.pem", kCertText);
  const ScratchFile key("ini.key", kKeyText);
  absl::StatusOr<Config> c = LoadIniText(
      "[rabbitmq]\naddress=amqp://h/\nlisten=0.0.0.0:6000\nproducer={\"a\":{}}\n"
      "[tcp.tls]\ncert=" +
          cert.path() + "\nkey=" + key.path() + "\n",
      "t.ini");
  REQUIRE(c.ok());
  CHECK(c->tcp.tls.cert == cert.path());
  CHECK(c->tcp.tls.key == key.path());
  absl::StatusOr<Config> bad = LoadIniText(
      "[rabbitmq]\naddress=amqp://h/\nproducer={\"a\":{}}\n[tcp.tls]\ncert=/nonexistent\n",
      "t.ini");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()),
             Catch::Contains("t.ini:5: tcp.tls.cert: cannot read \"/nonexistent\""));
}

}  // namespace
}  // namespace mqs::config
