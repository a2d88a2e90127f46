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

// The key of one migration: HMAC-SHA256(cluster secret, label || migration id).
// A daemon derives it and hands only it to the monitor process that runs
// the migration, so no VM's process ever holds the cluster secret; both
// sides prove this key in the handshake (and so the cluster secret, as only
// holders of it can derive the key of a given id).  A monitor process that
// is taken over learns the key of its own migration, nothing more.
ClusterSecret derive_migration_key(const ClusterSecret& cluster, const MigrationId& id);

// The start of a connection as the receiving daemon sees it before it hands
// the connection on: the migration id of its Hello frame (read with
// MSG_PEEK, nothing consumed; the monitor process checks the frame fully).
struct HelloPeek {
  enum class Status { NeedMore, Found, NotHello } status = Status::NeedMore;
  std::size_t needed = 0;  // NeedMore: bytes the frame needs in all
  MigrationId id{};        // Found
  std::string why;         // NotHello
};
HelloPeek peek_hello(std::span<const std::uint8_t> start);

// Hex text (as to_hex writes it) to `out`'s size exactly; false when it is not.
bool from_hex(const std::string& text, std::span<std::uint8_t> out);

// Cryptographic random bytes (OpenSSL RAND_bytes); throws if the generator fails.
void random_bytes(std::span<std::uint8_t> out);
Nonce make_nonce();
MigrationId make_migration_id();
std::string to_hex(std::span<const std::uint8_t> bytes);

}  // namespace modevisor::host::migration
