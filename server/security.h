// Transport security and caller authentication of gd-server: TLS (optionally mutual) server
// credentials from PEM files, and the bearer tokens accepted by the Sampler service.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"

namespace gd::server {

struct TlsFiles {
  std::string cert;       // PEM certificate chain; empty with key = plaintext
  std::string key;        // PEM private key
  std::string client_ca;  // PEM CA bundle; set = require and verify client certificates
};

// Insecure credentials when no file is given; errors name the flag of a missing or unreadable
// file, or an inconsistent combination.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// Tokens from a file, one per line; blank lines and lines starting with '#' are skipped. An
// empty path gives no tokens (no authentication); a file without tokens is an error.
absl::StatusOr<std::vector<std::string>> ReadAuthTokens(const std::string& path);

}  // namespace gd::server
