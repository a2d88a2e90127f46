// The local APIC (xAPIC mode) of one vCPU, at 0xfee00000 (the window is per
// vCPU: LapicWindow routes an access to the accessing vCPU's APIC).
//
// Modelled: ID, version (0x14, 6 LVT entries, as QEMU), TPR/PPR, EOI (with
// the I/O APIC EOI broadcast for level-triggered vectors), LDR/DFR
// (flat and cluster logical destinations), SVR software enable (disabling
// masks every LVT), ISR/TMR/IRR, ESR (illegal vector send/receive), ICR
// (fixed, lowest-priority, NMI, INIT and STARTUP IPIs: no shorthand, self,
// all, all-but-self; INIT level de-assert is accepted and does nothing),
// the LVT timer (one-shot and periodic; TSC-deadline mode is not supported
// and never fires), divide configuration, initial/current count, LINT0 as
// ExtINT (virtual wire mode: the 8259 reaches the CPU through the APIC) and
// the APIC base MSR (global enable; a hardware-disabled APIC hands the CPU
// straight to the 8259).  The timer counts at 1 GHz (one count per ns before
// the divider), as under KVM and QEMU.  The register page is stored exactly as
// LapicState's 1024-byte page, so to/from_arch_state are direct.
//
// The processor side of NMI, INIT and STARTUP (SDM 10.4.7.3, 8.4): INIT
// resets the APIC (ID and base MSR kept) and, on an application processor,
// puts the processor in wait-for-SIPI; a STARTUP is accepted only by a
// processor waiting for one (any later one is ignored until the next INIT);
// an NMI stays pending until the monitor takes it, and is ignored by a
// processor waiting for SIPI.  Application processors power on waiting for
// SIPI.  The host applies INIT and STARTUP to the vCPU's state
// (take_startup), the monitor takes NMIs (acknowledge_nmi).
//
// Not modelled: x2APIC, relocating the APIC base (the window stays at
// 0xfee00000), SMI IPIs, LINT0/LINT1 in NMI mode, thermal/perf/CMCI sources.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include <modevisor/api/arch_state.hpp>
#include <nlohmann/json.hpp>

#include "platform/machine.hpp"

namespace modevisor::host {

class Lapic;

// A local APIC's xAPIC register page (as seen at 0xfee00000), base MSR and
// the timer's progress, relative to now (for tests and tools).
struct LapicState {
  std::uint64_t apic_base_msr = 0xfee00900;  // enabled, BSP
  std::array<std::uint8_t, 1024> registers{};
  std::uint64_t timer_remaining_ns = 0;  // 0: timer not armed
};

// What local APICs talk to: each other (IPIs) and the I/O APIC (EOIs).
class ApicBus {
 public:
  virtual ~ApicBus() = default;
  virtual void send_ipi(unsigned source_vcpu, std::uint32_t icr_low, std::uint32_t icr_high) = 0;
  virtual void broadcast_eoi(std::uint8_t vector) = 0;
};

class Lapic final : public TimerDevice {
 public:
  static constexpr std::uint64_t kDefaultBase = 0xfee00000;
  static constexpr std::uint64_t kBaseEnable = 1u << 11, kBaseBsp = 1u << 8;

  struct State {
    std::uint64_t apic_base = kDefaultBase | kBaseEnable;
    std::array<std::uint8_t, 1024> registers{};
    bool timer_armed = false;
    std::uint64_t timer_deadline_ns = 0;  // guest time of the next timer interrupt
    // The processor's start-up state and its pending non-vectored events.
    bool wait_for_sipi = false;
    bool init_pending = false;
    int sipi_vector = -1;  // a STARTUP accepted and not yet applied (-1: none)
    bool nmi_pending = false;
  };

  // INIT and STARTUP not yet applied to the vCPU's state, in arrival order
  // (INIT first; an INIT drops an earlier STARTUP it supersedes).
  struct Startup {
    bool init = false;
    std::optional<std::uint8_t> sipi_vector;
  };

  // vCPU 0 is the bootstrap processor; the others power on waiting for SIPI.
  Lapic(Machine& machine, ApicBus& bus, unsigned vcpu);
  void reset();  // the APIC's registers to their power-on values

  std::uint32_t read(std::uint32_t offset);
  void write(std::uint32_t offset, std::uint32_t value);

  std::uint64_t apic_base() const { return state_.apic_base; }
  void set_apic_base(std::uint64_t value);  // the IA32_APIC_BASE MSR
  bool hardware_enabled() const { return state_.apic_base & kBaseEnable; }
  bool software_enabled() const { return reg(kSvr) & 0x100; }
  std::uint8_t id() const { return static_cast<std::uint8_t>(reg(kId) >> 24); }
  unsigned vcpu() const { return vcpu_; }

  // A fixed interrupt arrives (I/O APIC, IPI, LVT): latched in IRR (and TMR).
  void accept(std::uint8_t vector, bool level_triggered);
  bool matches(std::uint8_t destination, bool logical) const;
  // The vector the CPU would take now (-1: none): highest IRR above PPR.
  int pending_vector() const;
  // INTA: moves the vector from IRR to ISR (spurious vector if none).
  std::uint8_t acknowledge();
  // Whether the 8259's INT reaches this CPU: APIC hardware-disabled, or LINT0
  // unmasked in ExtINT mode (virtual wire).
  bool accepts_pic() const;

  // NMI, INIT and STARTUP messages arriving (from an IPI or the I/O APIC).
  void receive_nmi();
  void receive_init();
  void receive_startup(std::uint8_t vector);
  bool bsp() const { return state_.apic_base & kBaseBsp; }
  bool waiting_for_sipi() const { return state_.wait_for_sipi; }
  api::CpuEvents cpu_events() const;
  bool acknowledge_nmi();
  Startup take_startup();

  std::uint64_t poll_timers(std::uint64_t now_ns) override;

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }
  LapicState to_arch_state(std::uint64_t now_ns) const;
  void from_arch_state(const LapicState& state, std::uint64_t now_ns);

  // Register offsets.
  enum : std::uint32_t {
    kId = 0x20, kVersion = 0x30, kTpr = 0x80, kApr = 0x90, kPpr = 0xa0, kEoi = 0xb0, kLdr = 0xd0, kDfr = 0xe0,
    kSvr = 0xf0, kIsr = 0x100, kTmr = 0x180, kIrr = 0x200, kEsr = 0x280, kLvtCmci = 0x2f0, kIcrLow = 0x300,
    kIcrHigh = 0x310, kLvtTimer = 0x320, kLvtThermal = 0x330, kLvtPerf = 0x340, kLvtLint0 = 0x350,
    kLvtLint1 = 0x360, kLvtError = 0x370, kTimerInitial = 0x380, kTimerCurrent = 0x390, kTimerDivide = 0x3e0
  };

 private:
  std::uint32_t reg(std::uint32_t offset) const;
  void set_reg(std::uint32_t offset, std::uint32_t value);
  bool bit(std::uint32_t base, unsigned vector) const;
  void set_bit(std::uint32_t base, unsigned vector, bool on);
  int highest(std::uint32_t base) const;
  std::uint32_t ppr() const;
  std::uint64_t timer_ns_per_count() const;
  std::uint32_t current_count(std::uint64_t now) const;
  void eoi();

  Machine& machine_;
  ApicBus& bus_;
  unsigned vcpu_;
  State state_;
};

// The 4 KiB xAPIC window at 0xfee00000, routed to the accessing vCPU's APIC.
class LapicWindow final : public MmioDevice {
 public:
  explicit LapicWindow(std::vector<Lapic*> lapics) : lapics_(std::move(lapics)) {}
  std::string_view name() const override { return "lapic"; }
  // Lapic::write raises what it makes deliverable and reports the timer it arms.
  bool announces_changes() const override { return true; }
  std::uint64_t mmio_read(unsigned vcpu, std::uint64_t offset, unsigned size) override;
  void mmio_write(unsigned vcpu, std::uint64_t offset, unsigned size, std::uint64_t value) override;

 private:
  std::vector<Lapic*> lapics_;
};

void to_json(nlohmann::json& j, const Lapic::State& s);
void from_json(const nlohmann::json& j, Lapic::State& s);

}  // namespace modevisor::host
