// One VM's monitor: the platform (guest RAM and the PC devices), the loaded
// kernel and the plugin's VirtualMachine, run until the guest ends.  One
// session per process (`modevisor run`), so a fault in one plugin takes down
// only its VM.
//
// Every vCPU runs on a thread of its own: vCPU 0, the bootstrap processor,
// from the loaded kernel's entry state; the application processors power on
// waiting for SIPI and are started by the guest (INIT, STARTUP through its
// local APIC), which the session applies to their state between runs
// (platform/cpu_reset.hpp).  A shutdown or monitor error on any vCPU stops
// the whole VM with that vCPU's diagnostic.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/logger.h>

#include <modevisor/api/hypervisor.hpp>
#include <modevisor/api/monitor.hpp>

#include "config/vm_config.hpp"
#include "platform/guest_ram.hpp"
#include "platform/machine.hpp"
#include "platform/pc.hpp"
#include "plugins/registry.hpp"

namespace modevisor::host {

// How a VM ended.
struct SessionResult {
  enum class Kind { GuestExit, Shutdown, Stopped, Error } kind = Kind::Error;
  std::optional<int> guest_status;  // the debug-exit port's (v << 1) | 1
  std::string reason;               // stop reason or diagnostic
  api::Counters counters;           // the monitor's and the platform's
};

class VmSession {
 public:
  // Builds RAM, the PC, loads the kernel and asks `plugin` for a VM.
  // Plugins with hardware execution are lent the host's KVM (kernel-driver/).
  // Throws api::MonitorError when the plugin refuses, api::HypervisorError when
  // KVM cannot be opened, InputError for a bad kernel.
  // Console output goes to the VM log line by line and, byte by byte, to `echo` (the terminal).
  using ConsoleEcho = std::function<void(std::uint8_t)>;
  VmSession(const VmConfig& vm, const LoadedPlugin& plugin, std::shared_ptr<spdlog::logger> vm_log,
            ConsoleEcho echo = nullptr);
  ~VmSession();

  // Runs the VM until the guest ends, a vCPU fails or stop() is called:
  // vCPU 0 on this thread, every other vCPU on a thread of its own.
  SessionResult run();
  // From any thread (a signal handler's thread, a control plane).
  void stop(const std::string& reason);
  // Bytes typed on the console (serial input).
  void console_input(std::string_view bytes);

  Pc& pc() { return *pc_; }

 private:
  class Logger;
  class Console;
  void timer_loop();
  api::VcpuState load_kernel(const VmConfig& vm, const std::vector<std::uint8_t>& image);
  void start_application_processors();
  void vcpu_loop(unsigned index);
  void apply_startup(unsigned index, const StartupEvents& events);
  void vcpu_failed(unsigned index, api::ExitKind kind, std::string diagnostic);
  void kick_all();

  struct Failure {
    api::ExitKind kind;
    std::string reason;
  };

  const VmConfig& vm_;
  const LoadedPlugin& plugin_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<Logger> plugin_log_;
  std::unique_ptr<Console> console_;
  GuestRam ram_;
  Machine machine_;
  std::unique_ptr<Pc> pc_;
  std::unique_ptr<api::Hypervisor> hypervisor_;
  std::unique_ptr<api::VirtualMachine> machine_vm_;
  std::vector<char> waiting_for_sipi_;  // by vCPU; only its own thread touches it once running
  std::mutex failure_mutex_;
  std::optional<Failure> failure_;  // the vCPU failure that stopped the VM
  std::atomic<bool> running_{false};
  std::mutex timer_mutex_;
  std::condition_variable timer_wake_;
  std::thread timer_thread_;
};

}  // namespace modevisor::host
