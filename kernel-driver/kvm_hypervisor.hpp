// api::Hypervisor over Linux KVM: the VM and vCPU file descriptors, guest RAM
// as memory slot 0, CPUID, the run loop with a userspace interrupt controller
// (no KVM_CREATE_IRQCHIP: the platform's PIC/APIC models serve every mode),
// state transfer and dirty logging.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <linux/kvm.h>

#include <modevisor/api/hypervisor.hpp>

#include "kernel-driver/kvm_probe.hpp"

namespace modevisor::kvm {

// The capabilities every VM needs, by KVM_CAP name; open() names the missing ones.
struct RequiredCapability {
  const char* name;
  int cap;
  const char* why;
};
extern const std::vector<RequiredCapability> kRequiredCapabilities;

// Filter KVM_GET_SUPPORTED_CPUID to what a modevisor vCPU offers: no x2APIC or
// TSC-deadline (the APIC is the platform's xAPIC), no VMX/SVM, the hypervisor
// bit set, of KVM's paravirtual features only its clock (kvmclock), APIC IDs
// = vCPU index.  Pure.
std::vector<kvm_cpuid_entry2> filter_cpuid(const std::vector<kvm_cpuid_entry2>& supported, unsigned vcpu_index);

// A VM's CPU model as KVM CPUID entries for vCPU `vcpu_index`: the model's
// leaves as written, its feature bits (leaf 1 ECX/EDX, leaf 7 EBX/ECX/EDX,
// leaf 0x80000001 ECX/EDX) only where KVM supports them, the initial APIC ID
// in leaf 1 EBX.  Leaves the model lacks are absent.  Pure.
std::vector<kvm_cpuid_entry2> model_cpuid(const std::vector<kvm_cpuid_entry2>& supported,
                                          const api::CpuidTable& model, unsigned vcpu_index);
// The model's feature bits KVM cannot provide ("leaf 0x1 ecx bit 28").  Pure.
std::vector<std::string> cpuid_model_gaps(const std::vector<kvm_cpuid_entry2>& supported,
                                          const api::CpuidTable& model);

class KvmHypervisor final : public api::Hypervisor {
 public:
  // Opens the device and checks the API version and capabilities; throws
  // api::HypervisorError naming what is missing (or that kvm_pvm owns it).
  static std::unique_ptr<KvmHypervisor> open(const std::filesystem::path& device = "/dev/kvm",
                                             const std::filesystem::path& sys_module = "/sys/module");
  ~KvmHypervisor() override;

  api::HypervisorInfo info() const override { return info_; }
  std::unique_ptr<api::Vm> create_vm(api::GuestMemory& memory, unsigned vcpus, const api::CpuidTable& cpuid) override;

  int fd() const { return fd_; }
  const std::vector<kvm_cpuid_entry2>& supported_cpuid() const { return supported_cpuid_; }
  const std::vector<std::uint32_t>& state_msrs() const { return state_msrs_; }
  bool has_xsave() const { return xsave_; }
  bool has_xcrs() const { return xcrs_; }
  bool has_debugregs() const { return debugregs_; }
  bool has_stats_fd() const { return stats_fd_; }
  int vcpu_mmap_size() const { return vcpu_mmap_size_; }
  std::uint64_t supported_xcr0() const { return supported_xcr0_; }

 private:
  KvmHypervisor() = default;
  int fd_ = -1;
  api::HypervisorInfo info_;
  std::vector<kvm_cpuid_entry2> supported_cpuid_;
  std::vector<std::uint32_t> state_msrs_;  // kStateMsrs the driver lists
  bool xsave_ = false, xcrs_ = false, debugregs_ = false, stats_fd_ = false;
  int vcpu_mmap_size_ = 0;
  std::uint64_t supported_xcr0_ = 3;
};

}  // namespace modevisor::kvm
