// The production serializer of a VM's mode-neutral state (api::VcpuState and
// MachineState without RAM), used by snapshot files and live migration.
//
// Binary, little-endian, versioned: a record starts with its magic and format
// version; every variable-length field carries its length, which is bounded
// before anything is allocated; every field is validated on decode (enum
// ranges, boolean bytes, lengths), and trailing bytes are an error.  Decoding
// never trusts its input: any defect throws SnapshotError naming the field.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <modevisor/api/arch_state.hpp>

#include "snapshot/snapshot_error.hpp"
#include "vm/vm.hpp"

namespace modevisor::host {

inline constexpr std::uint32_t kVcpuStateFormat = 1;
inline constexpr std::uint32_t kMachineStateFormat = 1;

std::vector<std::uint8_t> encode_vcpu_state(const api::VcpuState& state);
api::VcpuState decode_vcpu_state(std::span<const std::uint8_t> bytes);  // throws SnapshotError

std::vector<std::uint8_t> encode_machine_state(const MachineState& state);  // everything but RAM
MachineState decode_machine_state(std::span<const std::uint8_t> bytes);     // throws SnapshotError

}  // namespace modevisor::host

// The parts of a MachineState, each a section of a snapshot file.
namespace modevisor::host {
class ByteWriter;
class ByteReader;
void encode_declaration(ByteWriter& w, const MachineState& s);
void decode_declaration(ByteReader& r, MachineState& s);
void encode_cpu_model(ByteWriter& w, const MachineState& s);
void decode_cpu_model(ByteReader& r, MachineState& s);
void encode_vcpus(ByteWriter& w, const MachineState& s);
void decode_vcpus(ByteReader& r, MachineState& s);
void encode_devices(ByteWriter& w, const MachineState& s);
void decode_devices(ByteReader& r, MachineState& s);
}  // namespace modevisor::host
