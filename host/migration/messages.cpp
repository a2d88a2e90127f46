#include "migration/messages.hpp"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "migration/byte_codec.hpp"

namespace modevisor::host::migration {
namespace {

using Kind = MigrationError::Kind;
using nlohmann::json;

[[noreturn]] void bad(const std::string& message) { throw MigrationError(Kind::Protocol, message); }

json parse_json(std::span<const std::uint8_t> payload, const char* message) {
  try {
    json j = json::parse(payload.begin(), payload.end());
    if (!j.is_object()) bad(std::string(message) + ": not a JSON object");
    return j;
  } catch (const json::exception& e) {
    bad(std::string(message) + ": not valid JSON (" + e.what() + ")");
  }
}

const json& field(const json& j, const char* message, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) bad(std::string(message) + ": field '" + name + "' is missing");
  return *it;
}

std::string text(const json& j, const char* message, const char* name, std::size_t max_bytes) {
  const json& v = field(j, message, name);
  if (!v.is_string()) bad(std::string(message) + ": field '" + name + "' is not a string");
  auto s = v.get<std::string>();
  if (s.size() > max_bytes)
    bad(std::string(message) + ": field '" + name + "' has " + std::to_string(s.size()) + " bytes, more than " +
        std::to_string(max_bytes));
  return s;
}

std::uint64_t number(const json& j, const char* message, const char* name, std::uint64_t min, std::uint64_t max) {
  const json& v = field(j, message, name);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
    bad(std::string(message) + ": field '" + name + "' is not an unsigned integer");
  auto n = v.get<std::uint64_t>();
  if (n < min || n > max)
    bad(std::string(message) + ": field '" + name + "' = " + std::to_string(n) + " is outside " +
        std::to_string(min) + ".." + std::to_string(max));
  return n;
}

bool flag(const json& j, const char* message, const char* name) {
  const json& v = field(j, message, name);
  if (!v.is_boolean()) bad(std::string(message) + ": field '" + name + "' is not true/false");
  return v.get<bool>();
}

}  // namespace

std::string encode_config(const MigrationConfig& c) {
  json leaves = json::array();
  for (const auto& l : c.cpuid)
    leaves.push_back(json::array({l.function, l.index, l.indexed, l.eax, l.ebx, l.ecx, l.edx}));
  json j = {
      {"vm_name", c.vm_name}, {"vm_file", c.vm_file}, {"vm_yaml", c.vm_yaml}, {"cpu_model", c.cpu_model},
      {"cpuid", leaves}, {"vcpus", c.vcpus}, {"memory_bytes", c.memory_bytes},
      {"needs", {{"bitness", c.needs.bitness}, {"paging", c.needs.paging}, {"long_mode", c.needs.long_mode},
                 {"paravirtual_clock", c.needs.paravirtual_clock}}},
      {"source", {{"host", c.source_host}, {"mode", c.source_mode}, {"plugin", c.source_plugin}}},
  };
  return j.dump();
}

MigrationConfig decode_config(std::span<const std::uint8_t> payload, std::uint64_t max_memory_bytes) {
  const char* m = "Config";
  json j = parse_json(payload, m);
  MigrationConfig c;
  c.vm_name = text(j, m, "vm_name", 256);
  if (c.vm_name.empty()) bad("Config: field 'vm_name' is empty");
  c.vm_file = text(j, m, "vm_file", 4096);
  c.vm_yaml = text(j, m, "vm_yaml", kMaxConfigBytes / 2);
  c.cpu_model = text(j, m, "cpu_model", 64);
  const json& leaves = field(j, m, "cpuid");
  if (!leaves.is_array()) bad("Config: field 'cpuid' is not an array");
  if (leaves.size() > kMaxCpuidLeaves)
    bad("Config: " + std::to_string(leaves.size()) + " CPUID leaves, more than " + std::to_string(kMaxCpuidLeaves));
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    const json& l = leaves[i];
    auto is_u32 = [](const json& v) { return v.is_number_unsigned() && v.get<std::uint64_t>() <= 0xffffffffull; };
    if (!l.is_array() || l.size() != 7 || !is_u32(l[0]) || !is_u32(l[1]) || !l[2].is_boolean() || !is_u32(l[3]) ||
        !is_u32(l[4]) || !is_u32(l[5]) || !is_u32(l[6]))
      bad("Config: CPUID leaf " + std::to_string(i) +
          " is not [function, index, indexed, eax, ebx, ecx, edx] of 32-bit values");
    c.cpuid.push_back(api::CpuidLeaf{l[0].get<std::uint32_t>(), l[1].get<std::uint32_t>(), l[2].get<bool>(),
                                     l[3].get<std::uint32_t>(), l[4].get<std::uint32_t>(), l[5].get<std::uint32_t>(),
                                     l[6].get<std::uint32_t>()});
  }
  c.vcpus = static_cast<unsigned>(number(j, m, "vcpus", 1, kMaxVcpus));
  c.memory_bytes = number(j, m, "memory_bytes", kPageBytes, max_memory_bytes);
  if (c.memory_bytes % kPageBytes != 0)
    bad("Config: memory_bytes = " + std::to_string(c.memory_bytes) + " is not a whole number of 4 KiB pages");
  const json& needs = field(j, m, "needs");
  if (!needs.is_object()) bad("Config: field 'needs' is not an object");
  c.needs.bitness = static_cast<unsigned>(number(needs, "Config.needs", "bitness", 32, 64));
  if (c.needs.bitness != 32 && c.needs.bitness != 64) bad("Config.needs: bitness must be 32 or 64");
  c.needs.paging = text(needs, "Config.needs", "paging", 16);
  if (c.needs.paging != "none" && c.needs.paging != "32-bit" && c.needs.paging != "pae" && c.needs.paging != "4-level")
    bad("Config.needs: paging '" + c.needs.paging + "' is not none, 32-bit, pae or 4-level");
  c.needs.long_mode = flag(needs, "Config.needs", "long_mode");
  c.needs.paravirtual_clock = flag(needs, "Config.needs", "paravirtual_clock");
  const json& source = field(j, m, "source");
  if (!source.is_object()) bad("Config: field 'source' is not an object");
  c.source_host = text(source, "Config.source", "host", 256);
  c.source_mode = text(source, "Config.source", "mode", 64);
  c.source_plugin = text(source, "Config.source", "plugin", 256);
  return c;
}

std::string encode_placement(const Placement& p) { return json{{"mode", p.mode}, {"plugin", p.plugin}}.dump(); }

Placement decode_placement(std::span<const std::uint8_t> payload) {
  json j = parse_json(payload, "Accept");
  return Placement{text(j, "Accept", "mode", 64), text(j, "Accept", "plugin", 256)};
}

std::string encode_reasons(const std::vector<std::string>& reasons) {
  json list = json::array();
  std::size_t budget = kMaxReasonBytes - 64;
  for (const auto& r : reasons) {
    std::string cut = r.substr(0, std::min<std::size_t>(r.size(), 2048));
    if (cut.size() + 8 > budget) break;
    budget -= cut.size() + 8;
    list.push_back(cut);
  }
  std::string out = json{{"reasons", list}}.dump(-1, ' ', false, json::error_handler_t::replace);
  return out;
}

std::vector<std::string> decode_reasons(std::span<const std::uint8_t> payload, const char* message) {
  json j = parse_json(payload, message);
  const json& list = field(j, message, "reasons");
  if (!list.is_array()) bad(std::string(message) + ": field 'reasons' is not an array");
  std::vector<std::string> out;
  for (const auto& r : list) {
    if (!r.is_string()) bad(std::string(message) + ": a reason is not a string");
    out.push_back(r.get<std::string>());
  }
  return out;
}

std::vector<std::uint8_t> encode(const HelloMessage& m) {
  ByteWriter w;
  w.u16(m.min_version);
  w.u16(m.max_version);
  w.bytes(m.id);
  w.bytes(m.nonce);
  return w.take();
}

HelloMessage decode_hello(std::span<const std::uint8_t> payload) {
  ByteReader r(payload, "Hello");
  HelloMessage m;
  m.min_version = r.u16("min_version");
  m.max_version = r.u16("max_version");
  if (m.min_version > m.max_version) bad("Hello: min_version is above max_version");
  r.fill(m.id, "migration_id");
  r.fill(m.nonce, "nonce");
  r.expect_end();
  return m;
}

std::vector<std::uint8_t> encode(const ChallengeMessage& m) {
  ByteWriter w;
  w.u16(m.version);
  w.bytes(m.nonce);
  w.bytes(m.proof);
  return w.take();
}

ChallengeMessage decode_challenge(std::span<const std::uint8_t> payload) {
  ByteReader r(payload, "Challenge");
  ChallengeMessage m;
  m.version = r.u16("version");
  r.fill(m.nonce, "nonce");
  r.fill(m.proof, "proof");
  r.expect_end();
  return m;
}

std::vector<std::uint8_t> encode(const RoundMessage& m) {
  ByteWriter w;
  w.u32(m.round);
  w.u64(m.entries);
  return w.take();
}

RoundMessage decode_round(std::span<const std::uint8_t> payload, const char* message) {
  ByteReader r(payload, message);
  RoundMessage m;
  m.round = r.u32("round");
  m.entries = r.u64("entries");
  r.expect_end();
  return m;
}

std::string RamDigest::hex() const {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(high),
                static_cast<unsigned long long>(low));
  return buf;
}

std::vector<std::uint8_t> encode(const DigestMessage& m) {
  ByteWriter w;
  w.u64(m.digest.high);
  w.u64(m.digest.low);
  w.u64(m.ram_bytes);
  return w.take();
}

DigestMessage decode_digest(std::span<const std::uint8_t> payload) {
  ByteReader r(payload, "Digest");
  DigestMessage m;
  m.digest.high = r.u64("high");
  m.digest.low = r.u64("low");
  m.ram_bytes = r.u64("ram_bytes");
  r.expect_end();
  return m;
}

const char* to_string(Resolution r) {
  switch (r) {
    case Resolution::Committed: return "committed";
    case Resolution::Aborted: return "aborted";
    case Resolution::Unknown: return "unknown";
  }
  return "?";
}

Resolution decode_resolution(std::span<const std::uint8_t> payload) {
  ByteReader r(payload, "Resolution");
  auto v = r.u8("outcome");
  r.expect_end();
  if (v < 1 || v > 3) bad("Resolution: outcome " + std::to_string(v) + " is not committed, aborted or unknown");
  return static_cast<Resolution>(v);
}

MigrationId decode_migration_id(std::span<const std::uint8_t> payload) {
  ByteReader r(payload, "Resolve");
  MigrationId id;
  r.fill(id, "migration_id");
  r.expect_end();
  return id;
}

}  // namespace modevisor::host::migration
