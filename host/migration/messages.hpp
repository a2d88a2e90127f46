// The payloads of the protocol's messages: what each step carries, encoded
// and decoded with every field, count and length checked.  Control messages
// of variable shape (Config, Accept, Refuse, Abandon) are JSON; the rest binary.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <modevisor/api/cpuid.hpp>

#include "migration/auth.hpp"
#include "migration/protocol.hpp"

namespace modevisor::host::migration {

// What the VM's saved state needs from the destination's monitor.
struct StateNeeds {
  unsigned bitness = 32;          // 32 or 64: the guest's declared bitness
  std::string paging = "none";    // "none", "32-bit", "pae", "4-level"
  bool long_mode = false;         // a vCPU is in long mode now
  bool paravirtual_clock = false; // kvmclock offered to the guest
};

// Config: everything the destination needs to decide whether and how it can run the VM.
struct MigrationConfig {
  std::string vm_name;
  std::string vm_file;        // where it was declared on the source (messages, relative paths)
  std::string vm_yaml;        // the declaration as declared
  std::string cpu_model;      // "host", "portable-32", "kvm64"
  api::CpuidTable cpuid;      // leaf for leaf, as the guest has read it
  unsigned vcpus = 1;
  std::uint64_t memory_bytes = 0;
  StateNeeds needs;
  std::string source_host;    // informational: where it comes from and under what
  std::string source_mode;
  std::string source_plugin;
};

std::string encode_config(const MigrationConfig& config);
// Throws MigrationError(Protocol) naming the field; memory above `max_memory_bytes` is refused.
MigrationConfig decode_config(std::span<const std::uint8_t> payload, std::uint64_t max_memory_bytes);

struct Placement {
  std::string mode;    // the destination's mode token (BT, HV, HWMMU)
  std::string plugin;  // "bt-swmmu 0.1.0"
};
std::string encode_placement(const Placement& p);
Placement decode_placement(std::span<const std::uint8_t> payload);

std::string encode_reasons(const std::vector<std::string>& reasons);
std::vector<std::string> decode_reasons(std::span<const std::uint8_t> payload, const char* message);

struct HelloMessage {
  std::uint16_t min_version = kOldestProtocolVersion;
  std::uint16_t max_version = kProtocolVersion;
  MigrationId id{};
  Nonce nonce{};
};
std::vector<std::uint8_t> encode(const HelloMessage& m);
HelloMessage decode_hello(std::span<const std::uint8_t> payload);

struct ChallengeMessage {
  std::uint16_t version = 0;
  Nonce nonce{};
  AuthProof proof{};
};
std::vector<std::uint8_t> encode(const ChallengeMessage& m);
ChallengeMessage decode_challenge(std::span<const std::uint8_t> payload);

struct RoundMessage {  // RoundEnd and RoundAck
  std::uint32_t round = 0;
  std::uint64_t entries = 0;  // page entries sent in the round
};
std::vector<std::uint8_t> encode(const RoundMessage& m);
RoundMessage decode_round(std::span<const std::uint8_t> payload, const char* message);

struct RamDigest {
  std::uint64_t high = 0, low = 0;
  bool operator==(const RamDigest&) const = default;
  std::string hex() const;
};
struct DigestMessage {
  RamDigest digest;
  std::uint64_t ram_bytes = 0;
};
std::vector<std::uint8_t> encode(const DigestMessage& m);
DigestMessage decode_digest(std::span<const std::uint8_t> payload);

enum class Resolution : std::uint8_t { Committed = 1, Aborted = 2, Unknown = 3 };
const char* to_string(Resolution r);
Resolution decode_resolution(std::span<const std::uint8_t> payload);

MigrationId decode_migration_id(std::span<const std::uint8_t> payload);

}  // namespace modevisor::host::migration
