// The standard PC platform every monitor mode shares: the 8259 pair, I/O
// APIC, one local APIC per vCPU, 8254 PIT, CMOS RTC, COM1 16550A, ISA
// debug-exit, fw_cfg, PCI configuration mechanism #1 (no devices), POST and
// system control ports, all attached to one Machine.  COM2-4 are absent
// (their ports read all ones, like every other unclaimed port).
//
// Device state is captured and restored as one JSON object (see
// device_state.hpp), so a VM's platform moves between monitor modes and hosts.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <modevisor/api/arch_state.hpp>
#include <nlohmann/json.hpp>

#include "platform/debug_exit.hpp"
#include "platform/fw_cfg.hpp"
#include "platform/interrupt_router.hpp"
#include "platform/ioapic.hpp"
#include "platform/lapic.hpp"
#include "platform/machine.hpp"
#include "platform/pci_host.hpp"
#include "platform/pic.hpp"
#include "platform/pit.hpp"
#include "platform/rtc.hpp"
#include "platform/system_ports.hpp"
#include "platform/uart.hpp"

namespace modevisor::host {

struct PcConfig {
  std::uint64_t ram_bytes = 0;
  unsigned cpus = 1;
  std::optional<std::int64_t> rtc_start_time;  // Unix seconds; default: the host's clock
  std::size_t console_capture_limit = 1 << 20;   // bytes of COM1 output kept for console_output()
};

class Pc {
 public:
  Pc(Machine& machine, const PcConfig& config);
  Pc(const Pc&) = delete;
  Pc& operator=(const Pc&) = delete;

  Machine& machine() { return machine_; }
  Pic& pic() { return pic_; }
  IoApic& ioapic() { return ioapic_; }
  Lapic& lapic(unsigned vcpu) { return *lapics_.at(vcpu); }
  Pit& pit() { return pit_; }
  Rtc& rtc() { return rtc_; }
  Uart& com1() { return com1_; }
  FwCfg& fw_cfg() { return fw_cfg_; }
  PciHost& pci() { return pci_; }
  SystemPorts& system_ports() { return system_; }
  unsigned cpus() const { return static_cast<unsigned>(lapics_.size()); }

  // The console: COM1 output goes to `sink` (the VM log, the terminal) and is
  // kept (up to the capture limit) for console_output(); input is pushed here.
  void set_console(ConsoleSink* sink) { console_.forward = sink; }
  void push_console_input(std::string_view bytes);
  std::string console_output() const;

  // How the VM ended (debug-exit status, reset), from the Machine.
  std::optional<int> exit_status() const { return machine_.exit_status(); }
  std::string stop_reason() const { return machine_.stop_reason(); }

  // The local APIC part of a vCPU's architectural state, and the IA32_APIC_BASE
  // MSR (a monitor forwards guest WRMSR/RDMSR 0x1b here).
  LapicState save_lapic(unsigned vcpu);
  void load_lapic(unsigned vcpu, const LapicState& state);
  std::uint64_t apic_base(unsigned vcpu);
  void set_apic_base(unsigned vcpu, std::uint64_t value);

  // All device state, and the guest time it belongs to.
  nlohmann::json save_state();
  void restore_state(const nlohmann::json& state);  // throws std::invalid_argument on a bad state

  // I/O exits by port ("io 0x3f8") and MMIO exits by device ("mmio lapic").
  std::vector<std::pair<std::string, std::uint64_t>> counters() const;

  static constexpr const char* kStateFormat = "modevisor-pc-1";

 private:
  struct Console final : ConsoleSink {
    void write(std::uint8_t byte) override;
    ConsoleSink* forward = nullptr;
    std::string captured;
    std::size_t limit = 0;
  };

  Machine& machine_;
  Console console_;
  Pic pic_;
  InterruptRouter router_;
  IoApic ioapic_;
  std::vector<std::unique_ptr<Lapic>> lapics_;
  std::unique_ptr<LapicWindow> lapic_window_;
  Pit pit_;
  Rtc rtc_;
  Uart com1_;
  DebugExit debug_exit_;
  FwCfg fw_cfg_;
  PciHost pci_;
  SystemPorts system_;
};

}  // namespace modevisor::host
