// The hardware-virtualization driver as a monitor plugin sees it (small
// Hypervisor / Vm / Vcpu interfaces, in the style of Cloud Hypervisor's
// hypervisor crate).  The host implements it over the privileged driver
// (Linux KVM: kernel-driver/) and lends it to hardware-assisted plugins
// through VmServices::hypervisor; plugins never issue driver calls themselves.
//
// A Vcpu runs guest code against the Platform it was created with: port I/O,
// MMIO, HLT and interrupt injection are handed to that Platform by the driver
// bridge, so device state stays mode-neutral.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "modevisor/api/arch_state.hpp"
#include "modevisor/api/guest_memory.hpp"
#include "modevisor/api/monitor.hpp"
#include "modevisor/api/platform.hpp"

namespace modevisor::api {

// A driver call failed or the driver lacks something; the message names the
// call or capability and the reason.
class HypervisorError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HypervisorInfo {
  std::string driver;                // "kvm_amd", "kvm_intel"
  bool nested_paging = false;        // VMs get EPT/NPT (else the driver keeps shadow page tables)
  MmuSelection mmu_selection = MmuSelection::HostWide;
  std::string mmu_parameter;         // what selects it host-wide: "kvm_amd npt", "kvm_intel ept"
};

class Vcpu {
 public:
  virtual ~Vcpu() = default;
  // Run guest code on the calling thread until the platform asks to stop, the
  // vCPU is kicked (both: Stopped), the guest shuts down or the driver fails.
  virtual RunExit run() = 0;
  // From any thread: make run() return Stopped soon.
  virtual void kick() = 0;
  // Only while run() is not executing.
  virtual VcpuState get_state() = 0;
  virtual void set_state(const VcpuState& state) = 0;
  // Exit counters (per exit reason, I/O exits per port, ...).
  virtual Counters counters() const = 0;
};

class Vm {
 public:
  virtual ~Vm() = default;
  virtual std::unique_ptr<Vcpu> create_vcpu(unsigned index, Platform& platform) = 0;
  // Dirty-page logging of guest RAM: enable starts a fresh log; collect ORs
  // the pages written since the last collect (one bit per 4 KiB page) into
  // `bitmap` (resized to cover RAM) and clears the log, atomically with
  // respect to running vCPUs (KVM_GET_DIRTY_LOG: the pages it reports are
  // write-protected again before it returns).  ORs, not replaces, so a
  // caller can merge several sources; VirtualMachine::collect_dirty_pages
  // clears `bitmap` first.  False: not enabled.
  virtual void enable_dirty_log(bool on) = 0;
  virtual bool collect_dirty_log(std::vector<std::uint64_t>& bitmap) = 0;
  // The feature bits of the VM's CPU model (create_vm's `cpuid`) that the
  // hardware and driver cannot provide, and which its vCPUs therefore hide,
  // as "leaf 0x1 ecx bit 28" lines.  Empty without a model.
  virtual std::vector<std::string> hidden_cpuid_features() const = 0;
};

class Hypervisor {
 public:
  virtual ~Hypervisor() = default;
  virtual HypervisorInfo info() const = 0;
  // One VM over `memory` (registered whole, from guest-physical 0) whose
  // vCPUs present the CPU model `cpuid` (empty: the driver's own CPUID).
  virtual std::unique_ptr<Vm> create_vm(GuestMemory& memory, unsigned vcpus, const CpuidTable& cpuid) = 0;
};

}  // namespace modevisor::api
