#include "server/service/auth.h"

#include <grpcpp/security/server_credentials.h>

#include <fstream>
#include <sstream>

namespace chatradio::service {

namespace {

std::string read_pem(const std::string& path, const std::string& option) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw OptionsError("--" + option + " '" + path + "' cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    throw OptionsError("--" + option + " '" + path + "' is not a PEM file (no -----BEGIN line)");
  }
  return pem;
}

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

}  // namespace

std::shared_ptr<grpc::ServerCredentials> make_server_credentials(const ServerOptions& opts) {
  if (opts.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({read_pem(opts.tls_key, "tls-key"), read_pem(opts.tls_cert, "tls-cert")});
  if (!opts.tls_client_ca.empty()) {
    ssl.pem_root_certs = read_pem(opts.tls_client_ca, "tls-client-ca");
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    ssl.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  return grpc::SslServerCredentials(ssl);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walk the longer length whatever the contents; fold every difference (and
  // the length difference) into one accumulator, branch-free.
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  // volatile keeps the compiler from turning the loop into an early-exit memcmp.
  volatile unsigned result = diff;
  return result == 0;
}

TokenAuth TokenAuth::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw OptionsError("--auth-token-file '" + path + "' cannot be read");
  std::vector<std::string> tokens;
  std::string line;
  while (std::getline(in, line)) {
    const std::string_view t = trim(line);
    if (t.empty() || t.front() == '#') continue;
    tokens.emplace_back(t);
  }
  if (tokens.empty()) throw OptionsError("--auth-token-file '" + path + "' holds no token");
  return from_tokens(std::move(tokens));
}

TokenAuth TokenAuth::from_tokens(std::vector<std::string> tokens) {
  TokenAuth a;
  a.tokens_ = std::move(tokens);
  return a;
}

std::string TokenAuth::check_header(const std::string* authorization) const {
  if (!enabled()) return "";
  if (authorization == nullptr) return "missing 'authorization: Bearer <token>' metadata";
  constexpr std::string_view kScheme = "Bearer ";
  const std::string_view v = *authorization;
  if (v.size() < kScheme.size() || v.substr(0, kScheme.size()) != kScheme) {
    return "the authorization metadata must be 'Bearer <token>'";
  }
  const std::string_view presented = trim(v.substr(kScheme.size()));
  bool ok = false;
  for (const std::string& t : tokens_) ok |= constant_time_equal(presented, t);
  return ok ? "" : "invalid bearer token";
}

std::string TokenAuth::check(const grpc::ServerContextBase& ctx) const {
  if (!enabled()) return "";
  const auto& md = ctx.client_metadata();
  const auto it = md.find("authorization");
  if (it == md.end()) return check_header(nullptr);
  const std::string value(it->second.data(), it->second.size());
  return check_header(&value);
}

}  // namespace chatradio::service
