// One virtual machine, mode-neutral: its RAM, the PC platform, the CPU model
// and the plugin's VirtualMachine, with an explicit lifecycle
//
//   Created --start--> Running --pause--> Paused --resume--> Running
//      any --stop--> Stopped          a vCPU failure --> Failed (diagnostic)
//
// Every vCPU runs on a thread of its own (owned by the Vm), and a timer
// thread brings device timers up to date.  Pause makes every vCPU leave its
// run loop and wait at a gate, stops the timer thread and freezes guest time
// (the platform clock and each vCPU's TSC), so a resumed guest sees no jump.
// A paused VM's state (MachineState + RAM) is what a snapshot and a migration
// carry; a Vm restored from it under any plugin continues where it was.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include <modevisor/api/arch_state.hpp>
#include <modevisor/api/cpuid.hpp>
#include <modevisor/api/hypervisor.hpp>
#include <modevisor/api/monitor.hpp>

#include "config/vm_config.hpp"
#include "platform/guest_ram.hpp"
#include "plugins/registry.hpp"

namespace modevisor::host {

enum class VmState { Created, Running, Paused, Stopped, Failed };
const char* to_string(VmState state);  // "created", "running", "paused", "stopped", "failed"

// A lifecycle operation asked of a VM in a state that does not allow it; the
// message names the operation and the state.
class VmStateError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// What a mode switch continues under (the seed's BT32 -> hardware
// virtualization): a plugin, or none and why the VM stops.
struct ModeChangeOutcome {
  std::shared_ptr<const LoadedPlugin> plugin;  // null: the VM stops with `reason`
  std::string reason;
  // Opened in advance where the process cannot open /dev/kvm any more (the
  // confined monitor process); null: the VM opens it, as at power-on.
  std::unique_ptr<api::Hypervisor> hypervisor;
};

struct VmEvents {  // called from any thread; must not call back into the Vm
  std::function<void(std::uint8_t byte)> console_output;  // every COM1 byte
  std::function<void(VmState)> state_changed;
  // The plugin handed the guest back (api::ExitKind::ModeChange, with what
  // the guest did): which plugin takes it over.  Called on a vCPU thread
  // while every vCPU is stopped and guest time is frozen; the caller
  // re-selects (select_mode_switch) and logs its MONITOR MODE lines.  Unset:
  // the VM stops, saying it cannot switch modes.
  std::function<ModeChangeOutcome(const std::string& guest_event)> mode_change;
};

// How a VM ended.
struct SessionResult {
  enum class Kind { GuestExit, Shutdown, Stopped, Error } kind = Kind::Error;
  std::optional<int> guest_status;  // the debug-exit port's (v << 1) | 1
  std::string reason;               // stop reason or diagnostic
  api::Counters counters;           // the monitor's and the platform's
};

// Everything of a VM but its RAM, mode-neutral (what a snapshot and a migration carry).
// One owner per piece of state: the local APICs (registers, timer, APIC base
// MSR) are device state in `devices`, not in the vCPUs.
struct MachineState {
  std::string vm_yaml;      // the VM declaration as declared (text)
  std::string vm_file;      // where it was declared (for messages and relative paths)
  std::string cpu_model;    // "host", "portable-32", "kvm64"
  api::CpuidTable cpuid;    // the model's leaves, as the guest has read them
  std::vector<api::VcpuState> vcpus;
  nlohmann::json devices;   // Pc::save_state(), includes guest time
};

struct VmLogLimits {
  std::uint64_t console_bytes = 1 << 20;  // guest console text logged before the log says it stops logging it
};

class Vm {
 public:
  // Power-on: RAM, PC, kernel load, MP tables, BSP/AP states. State: Created.
  // Throws api::MonitorError (the plugin refuses), api::HypervisorError (no
  // KVM), InputError (bad kernel or initrd).
  static std::unique_ptr<Vm> create(const VmConfig& vm, std::shared_ptr<const LoadedPlugin> plugin,
                                    std::shared_ptr<spdlog::logger> log, VmEvents events = {});
  // From a saved MachineState + its RAM, under `plugin` (any mode the selector
  // allows on this host; not necessarily the one that saved it).  No kernel
  // load.  State: Paused.  `vm` is state.vm_yaml parsed (parse_vm_config):
  // the caller needs it anyway to select the plugin.  Throws VmStateError when
  // the state does not fit the VM (vCPU count, RAM size, CPU model),
  // api::MonitorError when the plugin refuses a vCPU's state.
  static std::unique_ptr<Vm> restore(const VmConfig& vm, const MachineState& state, std::unique_ptr<GuestRam> ram,
                                     std::shared_ptr<const LoadedPlugin> plugin,
                                     std::shared_ptr<spdlog::logger> log, VmEvents events = {});
  // The same, with state.vm_yaml parsed against the installed guest-OS table
  // (MODEVISOR_DEFAULT_CONFIG_DIR/guest-os.yaml); throws InputError when the
  // declaration does not parse.
  static std::unique_ptr<Vm> restore(const MachineState& state, std::unique_ptr<GuestRam> ram,
                                     std::shared_ptr<const LoadedPlugin> plugin,
                                     std::shared_ptr<spdlog::logger> log, VmEvents events = {});
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  void start();   // Created -> Running (vCPU threads + timer thread start)
  void pause();   // Running -> Paused; returns once every vCPU left its run loop; guest time frozen
  void resume();  // Paused -> Running; guest time continues from where it froze (no jump)
  MachineState save_state();      // Paused only (vCPUs, devices, CPU model, declaration)
  void stop(std::string reason);  // any -> Stopped; vCPUs leave, wait() returns
  SessionResult wait();           // blocks until Stopped or Failed

  VmState state() const;
  const VmConfig& config() const;
  const LoadedPlugin& plugin() const;  // the one running it now (a mode switch changes it)
  unsigned mode_switches() const;      // how often the VM changed its plugin mid-run
  GuestRam& ram();
  void console_input(std::string_view bytes);
  std::string console_output() const;  // captured so far (bounded)
  api::Counters counters() const;
  std::uint64_t guest_time_ns() const;  // the platform's clock (frozen while paused)

  // Live migration: dirty tracking of guest RAM (the plugin's tracking OR the
  // host's own writes).  start_dirty_tracking() before the first round.
  // collect fills `bitmap` -- replaces it, whatever it held -- with the pages
  // written since the last collect (or start), one bit per 4 KiB page, sized
  // to cover RAM; callers that accumulate rounds OR it into their own.  Safe
  // while vCPUs run; a page written after its bit was taken is in the next
  // collect.  False: the plugin cannot track guest writes (bitmap then holds
  // only the host's writes).
  void start_dirty_tracking();
  bool collect_dirty_pages(std::vector<std::uint64_t>& bitmap);

 private:
  class Impl;
  explicit Vm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace modevisor::host
