// What the guest learns about its CPU: CPUID answers (the VM's CPU model
// reduced to what the engine implements, or the engine's own P6-class model),
// the optional features those answers offer (which the vCPU then enforces),
// and the model-specific registers the vCPU keeps itself (TSC, TSC_AUX and
// the SYSENTER/PAT/MISC_ENABLE values).  The APIC base (the platform's) and EFER
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

// Optional features the guest's CPUID offers: each changes what the vCPU
// does (an instruction that exists, a CR4 bit that may be set).
struct CpuFeatures {
  bool smep = false;    // leaf 7 ebx 7: CR4.SMEP
  bool smap = false;    // leaf 7 ebx 20: CR4.SMAP, STAC/CLAC
  bool umip = false;    // leaf 7 ecx 2: CR4.UMIP
  bool rdpid = false;   // leaf 7 ecx 22: RDPID
  bool rdtscp = false;  // leaf 0x80000001 edx 27: RDTSCP
  bool long_mode = false;  // leaf 0x80000001 edx 29: EFER.LME (entering it ends BT32's run: ModeChange)
  bool syscall = false;    // leaf 0x80000001 edx 11: EFER.SCE (SYSCALL/SYSRET: BT64's; #UD in legacy mode)
  bool tsc_aux() const { return rdpid || rdtscp; }  // IA32_TSC_AUX exists
  // CR4 bits a MOV to CR4 may set (others: #GP(0)).
  std::uint32_t cr4_mask() const {
    return 0x7ffu | (umip ? 1u << 11 : 0) | (smep ? 1u << 20 : 0) | (smap ? 1u << 21 : 0);
  }
};

inline constexpr std::uint32_t kCr4Umip = 1u << 11, kCr4Smep = 1u << 20, kCr4Smap = 1u << 21;

class CpuidModel {
 public:
  // Adopts the VM's model minus the features the engine does not implement,
  // which are returned as "leaf 0x1 ecx bit 28" lines.  An empty model: the
  // engine's own.
  std::vector<std::string> set(const api::CpuidTable& model);
  CpuidAnswer answer(std::uint32_t leaf, std::uint32_t subleaf, unsigned cpu_index) const;
  const CpuFeatures& features() const { return features_; }

 private:
  CpuFeatures derive_features() const;

  api::CpuidTable model_;  // empty: the engine's own CPUID
  CpuFeatures features_ = derive_features();
};

class MsrFile {
 public:
  static constexpr std::uint32_t kTsc = 0x10;
  static constexpr std::uint32_t kTscAux = 0xc0000103;  // RDTSCP's ECX, RDPID's result
  static constexpr std::uint32_t kArchCaps = 0x10a;     // IA32_ARCH_CAPABILITIES (CPUID 7 EDX bit 29)

  // The guest TSC runs with the host's, from `tsc` at load.
  explicit MsrFile(std::uint64_t host_tsc_now) : tsc_offset_(host_tsc_now) {}

  // Whether this file holds `index` (else the vCPU answers or raises #GP).
  static bool holds(std::uint32_t index);
  // RDMSR of a held MSR; #GP(0) for one not held.  (Whether TSC_AUX exists
  // for this CPU model is the vCPU's question: CpuFeatures::tsc_aux.)
  Outcome<std::uint64_t> read(std::uint32_t index, std::uint64_t host_tsc_now) const;
  // WRMSR of a held MSR; #GP(0) for one not held.
  Check write(std::uint32_t index, std::uint64_t value, std::uint64_t host_tsc_now);
  // IA32_SYSENTER_CS, _ESP and _EIP in one pass (SYSENTER and SYSEXIT).
  struct SysenterTarget {
    std::uint64_t cs = 0, esp = 0, eip = 0;
  };
  SysenterTarget sysenter_target() const;

  void load(const std::vector<api::Msr>& saved, std::uint64_t host_tsc_now);
  // The written MSRs (the TSC is saved by the caller at save time).
  const std::vector<api::Msr>& saved() const { return written_; }
  std::uint64_t tsc(std::uint64_t host_tsc_now) const { return host_tsc_now - tsc_offset_; }
  std::uint32_t tsc_aux() const;

 private:
  std::vector<api::Msr> written_;
  std::uint64_t tsc_offset_;
};

}  // namespace modevisor::bt
