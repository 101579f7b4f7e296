// TLS, mutual TLS and bearer-token auth, with certificates made at test time by
// the `openssl` command (scripts/setup installs it).
#include <cstdlib>
#include <sstream>

#include "tests/service/service_fixture.h"

namespace chatradio::service::testing {
namespace {

using grpc::StatusCode;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A throwaway CA, a server certificate for localhost/127.0.0.1 and a client
// certificate, all signed by the CA (EC P-256: fast to generate).
struct Pki {
  TempDir dir;
  bool ok = false;
  Pki() {
    const std::string d = dir.path();
    dir.write("server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    dir.write("client.ext", "extendedKeyUsage=clientAuth\n");
    const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
    const std::string cmd =
        "cd '" + d + "' && " +
        "openssl req -x509" + ec + "-keyout ca.key -out ca.pem -days 2 -subj '/CN=chatradio test CA' && " +
        "openssl req" + ec + "-keyout server.key -out server.csr -subj '/CN=localhost' && " +
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
        "-extfile server.ext && " +
        "openssl req" + ec + "-keyout client.key -out client.csr -subj '/CN=chatradio test client' && " +
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 "
        "-extfile client.ext";
    ok = std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
  }
  std::string path(const std::string& name) const { return dir.file(name); }
};

bool have_openssl() { return std::system("openssl version >/dev/null 2>&1") == 0; }

grpc::Status generate(const std::shared_ptr<grpc::Channel>& ch, const std::string& token = "") {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!token.empty()) ctx.AddMetadata("authorization", token);
  v1::GenerateImpressionResponse resp;
  return v1::ImpressionService::NewStub(ch)->GenerateImpression(&ctx, request("The lungs are clear.", 4), &resp);
}

std::shared_ptr<grpc::Channel> tls_channel(int port, const Pki& pki, bool with_client_cert) {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = read_text(pki.path("ca.pem"));
  if (with_client_cert) {
    o.pem_private_key = read_text(pki.path("client.key"));
    o.pem_cert_chain = read_text(pki.path("client.pem"));
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::SslCredentials(o), args);
}

class ServiceSecurity : public ::testing::Test {
 protected:
  void SetUp() override { CHATRADIO_REQUIRE_SHARED("models/stories260K"); }
};

TEST_F(ServiceSecurity, TlsServesTlsClientsOnly) {
  ASSERT_TRUE(have_openssl()) << "the openssl command is missing: run scripts/setup";
  Pki pki;
  ASSERT_TRUE(pki.ok) << "openssl failed to make test certificates";
  ServerOptions o = test_options();
  o.tls_cert = pki.path("server.pem");
  o.tls_key = pki.path("server.key");
  TestServer ts(o);
  EXPECT_TRUE(generate(tls_channel(ts.server().port(), pki, false)).ok());
  EXPECT_FALSE(generate(ts.channel()).ok()) << "a plaintext client must not get through";
  const std::string listening = ts.log_lines().front();
  EXPECT_NE(listening.find("\"tls\":\"tls\""), std::string::npos) << listening;
}

TEST_F(ServiceSecurity, MutualTlsRequiresAClientCertificateFromTheCa) {
  ASSERT_TRUE(have_openssl()) << "the openssl command is missing: run scripts/setup";
  Pki pki;
  ASSERT_TRUE(pki.ok);
  ServerOptions o = test_options();
  o.tls_cert = pki.path("server.pem");
  o.tls_key = pki.path("server.key");
  o.tls_client_ca = pki.path("ca.pem");
  TestServer ts(o);
  EXPECT_TRUE(generate(tls_channel(ts.server().port(), pki, true)).ok());
  const grpc::Status no_cert = generate(tls_channel(ts.server().port(), pki, false));
  EXPECT_EQ(no_cert.error_code(), StatusCode::UNAVAILABLE) << no_cert.error_message();
  // A certificate from another CA is refused too.
  Pki other;
  ASSERT_TRUE(other.ok);
  grpc::SslCredentialsOptions so;
  so.pem_root_certs = read_text(pki.path("ca.pem"));
  so.pem_private_key = read_text(other.path("client.key"));
  so.pem_cert_chain = read_text(other.path("client.pem"));
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  EXPECT_FALSE(generate(grpc::CreateCustomChannel(ts.address(), grpc::SslCredentials(so), args)).ok());
}

TEST_F(ServiceSecurity, BadTlsFilesFailAtStart) {
  TempDir dir;
  ServerOptions o = test_options();
  o.tls_cert = dir.write("cert.pem", "not a certificate");
  o.tls_key = dir.write("key.pem", "not a key");
  ChatradioServer s(o);
  EXPECT_THROW(s.start(), OptionsError);
}

TEST_F(ServiceSecurity, BearerTokenAuthWithHealthExempt) {
  TempDir dir;
  ServerOptions o = test_options();
  o.auth_token_file = dir.write("tokens", "# rotation: old and new token\nold-token\n\n  s3cret-token-2  \n");
  TestServer ts(o);
  auto ch = ts.channel();
  const grpc::Status missing = generate(ch);
  EXPECT_EQ(missing.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(missing.error_message(), "missing 'authorization: Bearer <token>' metadata");
  const grpc::Status wrong = generate(ch, "Bearer s3cret-token-3");
  EXPECT_EQ(wrong.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.error_message(), "invalid bearer token");
  const grpc::Status scheme = generate(ch, "Basic s3cret-token-2");
  EXPECT_EQ(scheme.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(generate(ch, "Bearer s3cret-token-2").error_code(), StatusCode::OK);
  EXPECT_EQ(generate(ch, "Bearer old-token").error_code(), StatusCode::OK);
  // Score needs it too.
  {
    grpc::ClientContext ctx;
    v1::ScoreRequest r;
    r.set_findings("x");
    r.set_candidate_impression("y");
    v1::ScoreResponse resp;
    EXPECT_EQ(ts.stub()->Score(&ctx, r, &resp).error_code(), StatusCode::UNAUTHENTICATED);
  }
  // Health answers without a token (load balancers probe without one).
  auto h = ts.health();
  EXPECT_EQ(health_of(*h, ""), grpc::health::v1::HealthCheckResponse::SERVING);
  // No token ever reaches a log line.
  for (const std::string& l : ts.log_lines()) EXPECT_EQ(l.find("s3cret"), std::string::npos) << l;
}

TEST(ServiceAuth, ConstantTimeEqualAndTokenFiles) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_FALSE(constant_time_equal("abcd", "abc"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  EXPECT_FALSE(constant_time_equal(std::string("a\0b", 3), std::string("a\0c", 3)));
  TempDir dir;
  EXPECT_THROW(TokenAuth::from_file(dir.write("empty", "# only a comment\n\n")), OptionsError);
  EXPECT_THROW(TokenAuth::from_file(dir.file("absent")), OptionsError);
  const TokenAuth a = TokenAuth::from_tokens({"t1"});
  const std::string good = "Bearer t1", bad = "Bearer t2", bare = "t1";
  EXPECT_EQ(a.check_header(&good), "");
  EXPECT_EQ(a.check_header(&bad), "invalid bearer token");
  EXPECT_EQ(a.check_header(&bare), "the authorization metadata must be 'Bearer <token>'");
  EXPECT_EQ(TokenAuth().check_header(nullptr), "") << "no token file: auth is off";
}

}  // namespace
}  // namespace chatradio::service::testing
