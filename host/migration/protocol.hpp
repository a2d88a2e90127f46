// The live-migration wire protocol: message types, versions and every limit a
// receiver checks before it allocates anything.  host/migration/README.md has
// the message table and the state machines of both sides.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace modevisor::host::migration {

// Version 2 compresses page batches with zstd; version 1 (the previous one,
// still accepted) sends them raw.  Nothing else differs.
inline constexpr std::uint16_t kProtocolVersion = 2;
inline constexpr std::uint16_t kOldestProtocolVersion = 1;

inline constexpr std::uint32_t kFrameMagic = 0x474d564d;  // "MVMG" little-endian
inline constexpr std::size_t kFrameHeaderBytes = 20;      // magic, type, reserved, length, xxh3

inline constexpr std::uint64_t kPageBytes = 4096;
inline constexpr std::uint32_t kMaxPagesPerBatch = 256;  // 1 MiB of guest RAM per frame
inline constexpr std::size_t kNonceBytes = 32;
inline constexpr std::size_t kProofBytes = 32;  // HMAC-SHA256
inline constexpr std::size_t kMigrationIdBytes = 16;
inline constexpr std::size_t kMinSecretBytes = 16;

enum class MessageType : std::uint16_t {
  // Hello: version, identity, mutual proof of the cluster secret
  Hello = 1,       // S->D  versions, migration id, source nonce
  Challenge = 2,   // D->S  chosen version, destination nonce, destination proof
  Proof = 3,       // S->D  source proof
  Welcome = 4,     // D->S  both proven
  // Config
  Config = 10,     // S->D  the VM (JSON)
  Accept = 11,     // D->S  mode, plugin (JSON)
  Refuse = 12,     // D->S  reasons (JSON)
  // Memory rounds
  Pages = 20,      // S->D  one batch (binary)
  RoundEnd = 21,   // S->D  round number, pages in the round
  RoundAck = 22,   // D->S  the same, as received
  // Stop-and-copy
  State = 30,      // S->D  the encoded MachineState (opaque to the protocol)
  Digest = 31,     // S->D  XXH3-128 of all guest RAM
  Ready = 32,      // D->S  loaded, digest matches, paused
  // Commit and go
  Commit = 40,     // S->D  ownership moves (the destination decides the outcome)
  CommitAck = 41,  // D->S  committed
  Go = 42,         // S->D  the source has given up its copy: run
  Running = 43,    // D->S  the VM runs on the destination
  // Resolution of an unknown outcome (a new connection, after Hello)
  Resolve = 50,    // S->D  migration id
  Resolution = 51, // D->S  committed | aborted | unknown
  // Either side, any state before commit
  Abandon = 60,    // reason (JSON)
};

const char* to_string(MessageType type);
bool is_known(std::uint16_t type);
// The largest payload a receiver accepts for a message type (checked before allocation).
std::size_t max_payload(MessageType type);

// Payload limits of the pieces inside messages.
inline constexpr std::size_t kMaxConfigBytes = 1 << 20;
inline constexpr std::size_t kMaxStateBytes = 16 << 20;
inline constexpr std::size_t kMaxReasonBytes = 16 << 10;
inline constexpr std::size_t kMaxCpuidLeaves = 1024;
inline constexpr unsigned kMaxVcpus = 255;

// Why a migration step failed.  what() names the step and what was wrong.
class MigrationError : public std::runtime_error {
 public:
  enum class Kind {
    Transport,  // connection refused, reset, closed, truncated
    Timeout,    // the peer did not answer in time
    Protocol,   // malformed or out-of-order message, bad length, bad checksum
    Auth,       // the cluster secret was not proven
    Refused,    // the destination declined the VM
    Integrity,  // decoded data wrong: digest mismatch, bad compression
    Local,      // this side failed (restore, allocation)
  };
  MigrationError(Kind kind, std::string message) : std::runtime_error(std::move(message)), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

const char* to_string(MigrationError::Kind kind);

using Clock = std::chrono::steady_clock;

}  // namespace modevisor::host::migration
