// The CPUID a VM's guest sees, as a table of leaves: part of the VM, not of
// the monitor mode, so a VM declared with a CPU model answers CPUID the same
// under every mode and on every host that can present the model (what a mode
// switch or a migration needs).
#pragma once

#include <cstdint>
#include <vector>

namespace modevisor::api {

struct CpuidLeaf {
  std::uint32_t function = 0;
  std::uint32_t index = 0;  // the ECX subleaf, when `indexed`
  bool indexed = false;
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// A VM's CPU model.  Leaves not in the table read as zeros.  Per-vCPU fields
// are the monitor's to fill in: the initial APIC ID in leaf 1 EBX[31:24].
// A monitor presents the table as given, except feature bits it cannot
// provide, which it clears and names in the VM log.
using CpuidTable = std::vector<CpuidLeaf>;

inline const CpuidLeaf* find_cpuid_leaf(const CpuidTable& table, std::uint32_t function, std::uint32_t index = 0) {
  for (const auto& leaf : table)
    if (leaf.function == function && (!leaf.indexed || leaf.index == index)) return &leaf;
  return nullptr;
}

}  // namespace modevisor::api
