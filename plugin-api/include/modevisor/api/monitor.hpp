// The monitor interface every mode plugin implements.
//
//   Monitor         one per loaded plugin: probes the host, creates VMs
//   VirtualMachine  one per running VM: runs its vCPUs, gives up and takes
//                   back their architectural state (migration, mode switch)
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "modevisor/api/arch_state.hpp"
#include "modevisor/api/cpuid.hpp"
#include "modevisor/api/descriptor.hpp"
#include "modevisor/api/guest_memory.hpp"
#include "modevisor/api/host_capabilities.hpp"
#include "modevisor/api/platform.hpp"

namespace modevisor::api {

class Hypervisor;  // modevisor/api/hypervisor.hpp

// A plugin refuses something (a VM it cannot run, a state it cannot load);
// the message names what and why.
class MonitorError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct VmSpec {
  std::string name;
  unsigned vcpus = 1;
  std::uint64_t memory_bytes = 0;
  unsigned guest_bits = 32;  // from the guest OS type
  std::string guest_os;      // "linux-32", "windows-7-64", ...
  // The guest's CPU model (the VM's `cpu_model:`).  Empty: the monitor's own
  // CPUID (bt-swmmu: its fixed P6-class model; KVM: the host's, filtered).
  CpuidTable cpuid;
};

// Everything the host lends a VM's monitor; outlives the VirtualMachine.
struct VmServices {
  GuestMemory& memory;
  Platform& platform;
  Logger& log;
  // The hardware-virtualization driver (KVM), when the host has a usable one;
  // null otherwise.  Hardware-assisted plugins run their vCPUs through it.
  Hypervisor* hypervisor = nullptr;
};

enum class ExitKind {
  Stopped,   // platform asked the vCPU to stop (guest exit, pause, operator)
  Shutdown,  // triple fault or other shutdown condition
  Error,     // the monitor could not go on (bad guest state, driver error)
  // The guest now needs another monitor mode (bt-swmmu: it activated long
  // mode, which BT32 cannot run).  The instruction that caused it has
  // completed: save_vcpu gives the state another plugin loads and continues
  // from (EFER.LMA set, RIP after the instruction).  The diagnostic says what
  // the guest did.  A host that cannot switch stops the VM with the reason.
  ModeChange,
};

struct RunExit {
  ExitKind kind = ExitKind::Stopped;
  std::string diagnostic;  // for Shutdown/Error: reason and register dump; ModeChange: what the guest did
};

// Named event counters, reported when a VM stops and by `run --stats`.
using Counters = std::vector<std::pair<std::string, std::uint64_t>>;

class VirtualMachine {
 public:
  virtual ~VirtualMachine() = default;

  // Run vCPU `index` on the calling thread until it must stop.  Each vCPU
  // runs on a thread of its own, concurrently with the others.  A vCPU whose
  // state has run_state WaitForSipi runs no guest code: run() returns Stopped
  // (the host starts it by loading its STARTUP state, see Platform::cpu_events).
  virtual RunExit run(unsigned index) = 0;
  // From any thread: make run(index) return soon (it then reports Stopped).
  virtual void kick(unsigned index) = 0;

  // Only while the vCPU is not running.  save_vcpu reports the run_state the
  // vCPU is in (a state loaded with WaitForSipi stays WaitForSipi).
  virtual VcpuState save_vcpu(unsigned index) = 0;
  virtual void load_vcpu(unsigned index, const VcpuState& state) = 0;

  virtual Counters counters() const = 0;

  // Live migration's dirty log.  Fills `bitmap` (replacing its contents and
  // size: one bit per 4 KiB guest-physical page of RAM, bits past the last
  // page clear) with the pages written since the last call, and starts the
  // next interval.  The first call starts tracking and reports every page.
  // Any thread, also while vCPUs run: a write that lands after a page's bit
  // was taken must be reported by the next call (protect or clear the
  // hardware log first, then read-and-clear; never the other order).  Writes
  // the monitor itself makes to guest RAM (emulated stores, A/D bits set by a
  // software page walker) count as guest writes; the host's own writes
  // (GuestMemory::mark_dirty) are merged by the host, not here.  Returns
  // false where the monitor cannot track writes (bitmap then unspecified).
  virtual bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap) = 0;
};

class Monitor {
 public:
  virtual ~Monitor() = default;

  // Can this plugin run on `host`, beyond what its descriptor declares?
  // Returns the reasons it cannot; empty when it can.
  virtual std::vector<std::string> probe(const HostCapabilities& host) = 0;

  // Build a VM; throws MonitorError when it cannot run this VM here.
  virtual std::unique_ptr<VirtualMachine> create_vm(const VmSpec& spec, VmServices services) = 0;
};

}  // namespace modevisor::api
