// Mutual proof of the cluster secret before any VM state moves: an
// HMAC-SHA256 challenge-response (OpenSSL) over both sides' fresh nonces,
// the migration id and the negotiated versions, with a different label per
// direction so one side's proof can never be replayed as the other's.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "migration/protocol.hpp"

namespace modevisor::host::migration {

using Nonce = std::array<std::uint8_t, kNonceBytes>;
using AuthProof = std::array<std::uint8_t, kProofBytes>;
using MigrationId = std::array<std::uint8_t, kMigrationIdBytes>;

class ClusterSecret {
 public:
  // At least kMinSecretBytes bytes; throws MigrationError(Local) otherwise.
  explicit ClusterSecret(std::vector<std::uint8_t> bytes);
  // The whole file (one trailing newline dropped); the error names the file.
  static ClusterSecret from_file(const std::filesystem::path& file);
  static ClusterSecret from_string(const std::string& text);
  std::span<const std::uint8_t> bytes() const { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

enum class ProofRole { Source, Destination };

struct HandshakeTranscript {
  std::uint16_t min_version = 0, max_version = 0, chosen_version = 0;
  MigrationId id{};
  Nonce source_nonce{}, destination_nonce{};
};

AuthProof compute_proof(const ClusterSecret& secret, ProofRole role, const HandshakeTranscript& t);
// Constant-time comparison against the expected proof.
bool verify_proof(const ClusterSecret& secret, ProofRole role, const HandshakeTranscript& t,
                  std::span<const std::uint8_t> proof);

// Cryptographic random bytes (OpenSSL RAND_bytes); throws if the generator fails.
void random_bytes(std::span<std::uint8_t> out);
Nonce make_nonce();
MigrationId make_migration_id();
std::string to_hex(std::span<const std::uint8_t> bytes);

}  // namespace modevisor::host::migration
