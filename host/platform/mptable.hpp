// The Intel MultiProcessor Specification 1.4 tables a PC BIOS leaves in the
// BIOS area, so an OS without ACPI finds its processors and interrupt
// routing: the floating pointer at kMpTableAddress (scanned for on 16-byte
// boundaries in 0xf0000-0xfffff), then the configuration table:
//   one processor entry per vCPU (local APIC ID = vCPU index, vCPU 0 the BSP)
//   bus 0 "ISA"
//   the I/O APIC (ID = number of vCPUs, as SeaBIOS numbers it) at 0xfec00000
//   I/O interrupts: 8259 ExtINT -> pin 0, ISA IRQ0 -> pin 2, IRQ n -> pin n
//                   (the InterruptRouter's wiring), edge/high as ISA conforms
//   local interrupts: LINT0 ExtINT, LINT1 NMI on every local APIC
// No ACPI tables are provided, so Linux falls back to these.
#pragma once

#include <cstdint>
#include <vector>

#include <modevisor/api/guest_memory.hpp>

namespace modevisor::host {

inline constexpr std::uint32_t kMpTableAddress = 0xf0000;

struct MpTableConfig {
  unsigned cpus = 1;
  std::uint32_t cpu_signature = 0x600;   // CPUID 1 EAX: family 6
  std::uint32_t cpu_features = 0x201;    // CPUID 1 EDX: FPU, APIC
};

// The tables' bytes, laid out for `address` (floating pointer first).
std::vector<std::uint8_t> build_mp_table(const MpTableConfig& config, std::uint32_t address = kMpTableAddress);

// Writes the tables at kMpTableAddress.  Throws std::invalid_argument when
// RAM does not reach the BIOS area or there are more than 254 vCPUs.
void write_mp_table(api::GuestMemory& ram, const MpTableConfig& config);

}  // namespace modevisor::host
