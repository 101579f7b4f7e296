// Transport security and caller authentication: TLS / mutual TLS credentials
// from PEM files, and bearer tokens from a token file compared in constant time.
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "server/service/options.h"

namespace chatradio::service {

// Insecure credentials without --tls-cert; TLS with it; mutual TLS (client
// certificate required and verified against the CA) with --tls-client-ca too.
// Throws OptionsError when a PEM file cannot be read or is empty.
std::shared_ptr<grpc::ServerCredentials> make_server_credentials(const ServerOptions& opts);

// True when a and b are equal; the time taken depends only on their lengths,
// never on where they first differ.
bool constant_time_equal(std::string_view a, std::string_view b);

// Checks "authorization: Bearer <token>" metadata against the accepted tokens.
// Without a token file every caller is accepted. The health service is exempt
// because it never calls check() (load balancers probe without credentials).
class TokenAuth {
 public:
  TokenAuth() = default;
  // One token per line; blank lines and lines starting with '#' are ignored,
  // surrounding whitespace is trimmed. Several tokens allow rotation without
  // downtime. Throws OptionsError for an unreadable file or one with no token.
  static TokenAuth from_file(const std::string& path);
  static TokenAuth from_tokens(std::vector<std::string> tokens);

  bool enabled() const { return !tokens_.empty(); }
  // "" when the caller may proceed, else the UNAUTHENTICATED message. Every
  // accepted token is compared, so the time does not tell which one is close.
  std::string check(const grpc::ServerContextBase& ctx) const;
  // The same check on a raw metadata value (tests, other transports).
  std::string check_header(const std::string* authorization) const;

 private:
  std::vector<std::string> tokens_;
};

}  // namespace chatradio::service
