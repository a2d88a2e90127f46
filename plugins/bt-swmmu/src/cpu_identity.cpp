#include "cpu_identity.hpp"

#include <cstdio>
#include <cstring>

namespace modevisor::bt {

namespace {
// What the engine implements, by feature register: leaf 1 EDX (FPU, PSE, TSC,
// MSR, PAE, CX8, APIC, SEP, PGE, CMOV, PAT, MMX, FXSR, SSE, SSE2), leaf 1 ECX
// (only "hypervisor present"), leaf 7 EBX (SMEP, SMAP) and ECX (UMIP, RDPID),
// leaf 0x80000001 EDX (NX, RDTSCP, and LM: BT32 runs the guest until it
// activates long mode, then hands it to a hardware mode, as the seed's BT32).
constexpr std::uint32_t kLeaf1Edx = (1u << 0) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) |
                                    (1u << 9) | (1u << 11) | (1u << 13) | (1u << 15) | (1u << 16) | (1u << 23) |
                                    (1u << 24) | (1u << 25) | (1u << 26);
constexpr std::uint32_t kLeaf1Ecx = 1u << 31;
constexpr std::uint32_t kLeaf7Ebx = (1u << 7) | (1u << 20);  // SMEP, SMAP
constexpr std::uint32_t kLeaf7Ecx = (1u << 2) | (1u << 22);  // UMIP, RDPID
// IA32_ARCH_CAPABILITIES (read-only): RDCL_NO, which is true of the engine
// whatever the host CPU: guest user code runs on a shadow region that maps
// no supervisor page at all, so there is nothing for Meltdown to read, and
// a guest kernel need not split its page tables (PTI) to hide itself.
constexpr std::uint32_t kLeaf7Edx = 1u << 29;
constexpr std::uint64_t kArchCapabilities = 1u << 0;  // RDCL_NO
// SYSCALL (bit 11): BT64 runs it; under BT32 (legacy mode) it is #UD, as on
// Intel CPUs (only AMD's run it outside long mode).
constexpr std::uint32_t kExt1Edx = (1u << 11) | (1u << 20) | (1u << 27) | (1u << 29);  // SYSCALL, NX, RDTSCP, LM
// The engine's own model (no cpu_model) is a 64-bit CPU since BT64: the
// same extended features.
constexpr std::uint32_t kOwnExt1Edx = kExt1Edx;

// The mask of a feature register (reg 0-3: eax..edx); ~0 for non-feature values.
std::uint32_t supported_mask(std::uint32_t function, int reg) {
  switch (function) {
    case 1: return reg == 2 ? kLeaf1Ecx : reg == 3 ? kLeaf1Edx : ~0u;
    case 7: return reg == 0 ? ~0u : reg == 1 ? kLeaf7Ebx : reg == 2 ? kLeaf7Ecx : kLeaf7Edx;
    case 0x80000001: return reg == 2 ? 0 : reg == 3 ? kExt1Edx : ~0u;
    // A model from KVM (kvm64, host on KVM) names KVM's paravirtual features
    // here (kvm-clock, async page faults, PV EOI...): none is the engine's.
    case 0x40000001: return 0;
    default: return ~0u;
  }
}

void vendor(const char* s, std::uint32_t& r1, std::uint32_t& r2, std::uint32_t& r3) {
  std::memcpy(&r1, s, 4);
  std::memcpy(&r2, s + 4, 4);
  std::memcpy(&r3, s + 8, 4);
}
}  // namespace

std::vector<std::string> CpuidModel::set(const api::CpuidTable& model) {
  model_ = model;
  std::vector<std::string> hidden;
  static constexpr const char* kRegs[] = {"eax", "ebx", "ecx", "edx"};
  for (auto& leaf : model_) {
    std::uint32_t* regs[4] = {&leaf.eax, &leaf.ebx, &leaf.ecx, &leaf.edx};
    for (int r = 0; r < 4; ++r) {
      const std::uint32_t lost = *regs[r] & ~supported_mask(leaf.function, r);
      for (unsigned bit = 0; bit < 32; ++bit)
        if (lost >> bit & 1) {
          char line[64];
          std::snprintf(line, sizeof line, "leaf %#x %s bit %u", leaf.function, kRegs[r], bit);
          hidden.emplace_back(line);
        }
      *regs[r] &= supported_mask(leaf.function, r);
    }
  }
  features_ = derive_features();
  return hidden;
}

CpuFeatures CpuidModel::derive_features() const {
  // A leaf beyond the model's maximum is not there, whatever the table holds.
  const CpuidAnswer basic = answer(0, 0, 0), extended = answer(0x80000000, 0, 0);
  const CpuidAnswer seven = basic.eax >= 7 ? answer(7, 0, 0) : CpuidAnswer{};
  const CpuidAnswer ext1 = extended.eax >= 0x80000001 ? answer(0x80000001, 0, 0) : CpuidAnswer{};
  CpuFeatures f;
  f.smep = seven.ebx >> 7 & 1;
  f.smap = seven.ebx >> 20 & 1;
  f.umip = seven.ecx >> 2 & 1;
  f.rdpid = seven.ecx >> 22 & 1;
  f.rdtscp = ext1.edx >> 27 & 1;
  f.long_mode = ext1.edx >> 29 & 1;
  f.syscall = ext1.edx >> 11 & 1;
  return f;
}

CpuidAnswer CpuidModel::answer(std::uint32_t leaf, std::uint32_t sub, unsigned cpu_index) const {
  CpuidAnswer a;
  if (!model_.empty()) {
    // The VM's CPU model (already reduced to what the engine implements).
    if (const api::CpuidLeaf* m = api::find_cpuid_leaf(model_, leaf, sub)) {
      a = {m->eax, m->ebx, m->ecx, m->edx};
      if (leaf == 1) a.ebx = (a.ebx & 0x00ffffff) | (cpu_index << 24);
    }
    return a;
  }
  switch (leaf) {
    case 0: a.eax = 7; vendor("GenuineIntel", a.ebx, a.edx, a.ecx); break;
    case 1:
      a.eax = 0x000006f1;  // family 6, model 15, stepping 1
      a.ebx = (cpu_index << 24) | (1u << 16) | (8u << 8);
      a.ecx = kLeaf1Ecx;   // hypervisor present
      a.edx = kLeaf1Edx;
      break;
    case 7:  // subleaf 0 is the only one
      if (sub == 0) {
        a.ebx = kLeaf7Ebx;
        a.ecx = kLeaf7Ecx;
        a.edx = kLeaf7Edx;
      }
      break;
    case 0x40000000: a.eax = 0x40000000; vendor("ModevisorBT ", a.ebx, a.ecx, a.edx); break;
    case 0x80000000: a.eax = 0x80000001; break;
    case 0x80000001: a.edx = kOwnExt1Edx; break;  // SYSCALL, NX, RDTSCP, LM
    default: break;
  }
  return a;
}

bool MsrFile::holds(std::uint32_t index) {
  switch (index) {
    case kTsc: case kTscAux: case 0x1a0: case 0x174: case 0x175: case 0x176: case 0x277: case kArchCaps:
      return true;
    default: return false;
  }
}

Outcome<std::uint64_t> MsrFile::read(std::uint32_t index, std::uint64_t host_tsc_now) const {
  auto find = [&](std::uint64_t def) {
    for (auto& m : written_)
      if (m.index == index) return m.value;
    return def;
  };
  switch (index) {
    case kTsc: return tsc(host_tsc_now);
    case 0x1a0: return find(0x1);  // MISC_ENABLE: fast strings
    case 0x174: case 0x175: case 0x176: return find(0);  // SYSENTER CS/ESP/EIP
    case 0x277: return find(0x0007040600070406ull);  // PAT: power-on default
    case kTscAux: return find(0);
    case kArchCaps: return kArchCapabilities;
    default: return Fault::gp(0);
  }
}

MsrFile::SysenterTarget MsrFile::sysenter_target() const {
  SysenterTarget t;
  for (auto& m : written_) {
    if (m.index == 0x174) t.cs = m.value;
    else if (m.index == 0x175) t.esp = m.value;
    else if (m.index == 0x176) t.eip = m.value;
  }
  return t;
}

std::uint32_t MsrFile::tsc_aux() const {
  for (auto& m : written_)
    if (m.index == kTscAux) return static_cast<std::uint32_t>(m.value);
  return 0;
}

Check MsrFile::write(std::uint32_t index, std::uint64_t value, std::uint64_t host_tsc_now) {
  if (!holds(index) || index == kArchCaps) return Fault::gp(0);  // ARCH_CAPABILITIES is read-only
  if (index == kTscAux && value >> 32) return Fault::gp(0);  // bits 63:32 reserved
  if (index == kTsc) {
    tsc_offset_ = host_tsc_now - value;
    return std::nullopt;
  }
  for (auto& m : written_)
    if (m.index == index) {
      m.value = value;
      return std::nullopt;
    }
  written_.push_back({index, value});
  return std::nullopt;
}

void MsrFile::load(const std::vector<api::Msr>& saved, std::uint64_t host_tsc_now) {
  written_ = saved;
  for (const auto& m : saved)
    if (m.index == kTsc) tsc_offset_ = host_tsc_now - m.value;
}

}  // namespace modevisor::bt
