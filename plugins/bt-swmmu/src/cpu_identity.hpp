// What the guest learns about its CPU: CPUID answers (the VM's CPU model
// reduced to what the engine implements, or the engine's own P6-class model)
// and the model-specific registers the vCPU keeps itself (TSC and the
// SYSENTER/PAT/MISC_ENABLE values).  The APIC base (the platform's) and EFER
// (the paging unit's) are not here.
#pragma once

#include <modevisor/api/monitor.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "guest_fault.hpp"

namespace modevisor::bt {

struct CpuidAnswer {
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

class CpuidModel {
 public:
  // Adopts the VM's model minus the features the engine does not implement,
  // which are returned as "leaf 0x1 ecx bit 28" lines.  An empty model: the
  // engine's own.
  std::vector<std::string> set(const api::CpuidTable& model);
  CpuidAnswer answer(std::uint32_t leaf, std::uint32_t subleaf, unsigned cpu_index) const;

 private:
  api::CpuidTable model_;  // empty: the engine's own CPUID
};

class MsrFile {
 public:
  static constexpr std::uint32_t kTsc = 0x10;

  // The guest TSC runs with the host's, from `tsc` at load.
  explicit MsrFile(std::uint64_t host_tsc_now) : tsc_offset_(host_tsc_now) {}

  // Whether this file holds `index` (else the vCPU answers or raises #GP).
  static bool holds(std::uint32_t index);
  // RDMSR of a held MSR; #GP(0) for one not held.
  Outcome<std::uint64_t> read(std::uint32_t index, std::uint64_t host_tsc_now) const;
  // WRMSR of a held MSR; #GP(0) for one not held.
  Check write(std::uint32_t index, std::uint64_t value, std::uint64_t host_tsc_now);

  void load(const std::vector<api::Msr>& saved, std::uint64_t host_tsc_now);
  // The written MSRs (the TSC is saved by the caller at save time).
  const std::vector<api::Msr>& saved() const { return written_; }
  std::uint64_t tsc(std::uint64_t host_tsc_now) const { return host_tsc_now - tsc_offset_; }

 private:
  std::vector<api::Msr> written_;
  std::uint64_t tsc_offset_;
};

}  // namespace modevisor::bt
