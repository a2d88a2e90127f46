#include "platform/lapic.hpp"

#include <cstring>
#include <stdexcept>

#include "platform/device_state.hpp"

namespace modevisor::host {

namespace {
constexpr std::uint32_t kMasked = 1u << 16;
constexpr std::uint32_t kDeliveryExtInt = 7u << 8;
constexpr std::uint32_t kTimerPeriodic = 1u << 17;
constexpr std::uint32_t kTimerModeMask = 3u << 17;
}  // namespace

Lapic::Lapic(Machine& machine, ApicBus& bus, unsigned vcpu) : machine_(machine), bus_(bus), vcpu_(vcpu) {
  reset();
  state_.wait_for_sipi = vcpu != 0;
}

void Lapic::reset() {
  // The processor's start-up state and pending events are not the APIC's registers.
  const State old = state_;
  state_ = State{};
  state_.wait_for_sipi = old.wait_for_sipi;
  state_.init_pending = old.init_pending;
  state_.sipi_vector = old.sipi_vector;
  state_.nmi_pending = old.nmi_pending;
  state_.apic_base = kDefaultBase | kBaseEnable | (vcpu_ == 0 ? kBaseBsp : 0);
  set_reg(kId, vcpu_ << 24);
  set_reg(kVersion, 0x00050014);
  set_reg(kDfr, 0xffffffff);
  set_reg(kSvr, 0xff);
  for (std::uint32_t lvt : {kLvtCmci, kLvtTimer, kLvtThermal, kLvtPerf, kLvtLint0, kLvtLint1, kLvtError})
    set_reg(lvt, kMasked);
  // Virtual wire mode as a PC BIOS leaves it (and KVM resets it): the BSP's
  // LINT0 is an unmasked ExtINT, so a guest that only programs the 8259 works.
  if (vcpu_ == 0) set_reg(kLvtLint0, kDeliveryExtInt);
  machine_.timers_changed();  // the timer is stopped
}

std::uint32_t Lapic::reg(std::uint32_t offset) const {
  std::uint32_t v;
  std::memcpy(&v, &state_.registers[offset & 0x3f0], 4);
  return v;
}

void Lapic::set_reg(std::uint32_t offset, std::uint32_t value) {
  std::memcpy(&state_.registers[offset & 0x3f0], &value, 4);
}

bool Lapic::bit(std::uint32_t base, unsigned vector) const {
  return reg(base + (vector / 32) * 0x10) & (1u << (vector % 32));
}

void Lapic::set_bit(std::uint32_t base, unsigned vector, bool on) {
  const std::uint32_t offset = base + (vector / 32) * 0x10;
  std::uint32_t v = reg(offset);
  v = on ? v | (1u << (vector % 32)) : v & ~(1u << (vector % 32));
  set_reg(offset, v);
}

int Lapic::highest(std::uint32_t base) const {
  for (int i = 7; i >= 0; --i) {
    const std::uint32_t v = reg(base + static_cast<std::uint32_t>(i) * 0x10);
    if (v) return i * 32 + (31 - __builtin_clz(v));
  }
  return -1;
}

std::uint32_t Lapic::ppr() const {
  const std::uint32_t tpr = reg(kTpr) & 0xff;
  const int isrv = highest(kIsr);
  const std::uint32_t isr_class = isrv < 0 ? 0 : static_cast<std::uint32_t>(isrv) & 0xf0;
  return (tpr & 0xf0) >= isr_class ? tpr : isr_class;
}

void Lapic::set_apic_base(std::uint64_t value) {
  const bool was_enabled = hardware_enabled();
  // The base address stays at the default; BSP and enable bits are kept as written.
  state_.apic_base = kDefaultBase | (value & (kBaseEnable | kBaseBsp));
  if (was_enabled && !hardware_enabled()) {
    // Hardware disable resets the APIC to its power-on state (ID kept).
    const std::uint64_t base = state_.apic_base;
    const std::uint32_t id = reg(kId);
    reset();
    state_.apic_base = base;
    set_reg(kId, id);
    set_reg(kLvtLint0, kMasked);
  }
  machine_.interrupt_raised(vcpu_);
}

void Lapic::accept(std::uint8_t vector, bool level_triggered) {
  if (vector < 16) {
    set_reg(kEsr, reg(kEsr) | (1u << 6));  // received illegal vector
    return;
  }
  const bool already_requested = bit(kIrr, vector);
  set_bit(kIrr, vector, true);
  set_bit(kTmr, vector, level_triggered);
  // Announced (the vCPU kicked out of guest code) only when the CPU could
  // take something now.  A request already in IRR was announced when it
  // arrived, and one held off by the in-service class or the TPR is announced
  // by the EOI or TPR write that releases it.  A periodic timer falling due
  // while its last tick is still pending or in service would otherwise kick
  // the vCPU once per period for nothing, which costs more than a short
  // period when exits are slow (a loaded nested host).
  if (!already_requested && pending_vector() >= 0) machine_.interrupt_raised(vcpu_);
}

bool Lapic::matches(std::uint8_t destination, bool logical) const {
  if (!hardware_enabled()) return false;
  if (!logical) return destination == 0xff || destination == id();
  if (destination == 0xff) return true;
  const std::uint8_t ldr = static_cast<std::uint8_t>(reg(kLdr) >> 24);
  if ((reg(kDfr) >> 28) == 0xf) return (ldr & destination) != 0;  // flat model
  // Cluster model: high nibble selects the cluster, low nibble the members.
  return (ldr >> 4) == (destination >> 4) && (ldr & destination & 0x0f) != 0;
}

int Lapic::pending_vector() const {
  if (!hardware_enabled() || !software_enabled()) return -1;
  const int v = highest(kIrr);
  if (v < 0) return -1;
  if ((static_cast<std::uint32_t>(v) & 0xf0) <= (ppr() & 0xf0)) return -1;
  return v;
}

std::uint8_t Lapic::acknowledge() {
  const int v = pending_vector();
  if (v < 0) return static_cast<std::uint8_t>(reg(kSvr) & 0xff);  // spurious
  set_bit(kIrr, static_cast<unsigned>(v), false);
  set_bit(kIsr, static_cast<unsigned>(v), true);
  return static_cast<std::uint8_t>(v);
}

bool Lapic::accepts_pic() const {
  if (!hardware_enabled()) return true;
  const std::uint32_t lint0 = reg(kLvtLint0);
  return !(lint0 & kMasked) && (lint0 & (7u << 8)) == kDeliveryExtInt;
}

void Lapic::receive_nmi() {
  if (state_.wait_for_sipi) return;  // a processor waiting for SIPI takes only INIT and STARTUP
  state_.nmi_pending = true;
  machine_.interrupt_raised(vcpu_);
}

void Lapic::receive_init() {
  // The APIC returns to its power-on state except the ID (and the base MSR,
  // which INIT does not change); pending interrupts and the timer are gone.
  const std::uint64_t base = state_.apic_base;
  const std::uint32_t id = reg(kId);
  reset();
  state_.apic_base = base;
  set_reg(kId, id);
  state_.init_pending = true;
  state_.sipi_vector = -1;  // superseded
  state_.nmi_pending = false;
  state_.wait_for_sipi = !bsp();  // the BSP restarts at the reset vector instead
  machine_.interrupt_raised(vcpu_);
}

void Lapic::receive_startup(std::uint8_t vector) {
  if (!state_.wait_for_sipi) return;  // running (or started by an earlier STARTUP): ignored
  state_.wait_for_sipi = false;
  state_.sipi_vector = vector;
  machine_.interrupt_raised(vcpu_);
}

api::CpuEvents Lapic::cpu_events() const {
  api::CpuEvents e;
  e.nmi = state_.nmi_pending;
  e.init = state_.init_pending;
  e.startup = state_.sipi_vector >= 0;
  return e;
}

bool Lapic::acknowledge_nmi() {
  const bool pending = state_.nmi_pending;
  state_.nmi_pending = false;
  return pending;
}

Lapic::Startup Lapic::take_startup() {
  Startup s;
  s.init = state_.init_pending;
  if (state_.sipi_vector >= 0) s.sipi_vector = static_cast<std::uint8_t>(state_.sipi_vector);
  state_.init_pending = false;
  state_.sipi_vector = -1;
  return s;
}

void Lapic::eoi() {
  const int v = highest(kIsr);
  if (v < 0) return;
  set_bit(kIsr, static_cast<unsigned>(v), false);
  if (bit(kTmr, static_cast<unsigned>(v)))
    bus_.broadcast_eoi(static_cast<std::uint8_t>(v));
  // A lower-priority request may now be deliverable (else nothing changed for the CPU).
  if (pending_vector() >= 0) machine_.interrupt_raised(vcpu_);
}

std::uint64_t Lapic::timer_ns_per_count() const {
  const std::uint32_t d = reg(kTimerDivide);
  const std::uint32_t code = (d & 3) | ((d >> 1) & 4);
  return code == 7 ? 1 : 2ull << code;
}

std::uint32_t Lapic::current_count(std::uint64_t now) const {
  if (!state_.timer_armed || now >= state_.timer_deadline_ns) return 0;
  const std::uint64_t per = timer_ns_per_count();
  const std::uint64_t left = (state_.timer_deadline_ns - now + per - 1) / per;
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(left, reg(kTimerInitial)));
}

std::uint64_t Lapic::poll_timers(std::uint64_t now) {
  if (!state_.timer_armed) return UINT64_MAX;
  if ((reg(kLvtTimer) & kTimerModeMask) > kTimerPeriodic) return UINT64_MAX;  // TSC-deadline: unsupported
  if (now < state_.timer_deadline_ns) return state_.timer_deadline_ns;
  const std::uint32_t lvt = reg(kLvtTimer);
  if (!(lvt & kMasked)) accept(static_cast<std::uint8_t>(lvt & 0xff), false);
  if ((lvt & kTimerModeMask) == kTimerPeriodic && reg(kTimerInitial) != 0) {
    // Periods that elapsed unseen are coalesced into this one interrupt.
    const std::uint64_t period = std::uint64_t{reg(kTimerInitial)} * timer_ns_per_count();
    const std::uint64_t missed = (now - state_.timer_deadline_ns) / period;
    state_.timer_deadline_ns += (missed + 1) * period;
    return state_.timer_deadline_ns;
  }
  state_.timer_armed = false;
  return UINT64_MAX;
}

std::uint32_t Lapic::read(std::uint32_t offset) {
  offset &= 0xff0;
  if (offset >= 0x400) return 0;
  switch (offset) {
    case kPpr:
      return ppr();
    case kEoi:
      return 0;
    case kTimerCurrent:
      return current_count(machine_.now_ns());
    default:
      return reg(offset);
  }
}

void Lapic::write(std::uint32_t offset, std::uint32_t value) {
  offset &= 0xff0;
  if (offset >= 0x400) return;
  const bool sw_enabled = software_enabled();
  auto lvt = [&](std::uint32_t writable) {
    std::uint32_t v = value & writable;
    if (!sw_enabled) v |= kMasked;
    set_reg(offset, v);
  };
  switch (offset) {
    case kId:
      set_reg(kId, value & 0xff000000);
      break;
    case kTpr: {
      // Only a priority drop that lets a requested vector through changes
      // what the CPU can take (raising the TPR is the common, silent case).
      // With nothing requested (IRR empty) there is nothing to look at.
      const bool requested = highest(kIrr) >= 0;
      const int before = requested ? pending_vector() : -1;
      set_reg(kTpr, value & 0xff);
      const int after = requested ? pending_vector() : -1;
      if (after >= 0 && after != before) machine_.interrupt_raised(vcpu_);
      break;
    }
    case kEoi:
      eoi();
      break;
    case kLdr:
      set_reg(kLdr, value & 0xff000000);
      break;
    case kDfr:
      set_reg(kDfr, value | 0x0fffffff);
      break;
    case kSvr:
      set_reg(kSvr, value & 0x3ff);  // no EOI-broadcast suppression (version bit 24 clear)
      if (!(value & 0x100))
        for (std::uint32_t r : {kLvtCmci, kLvtTimer, kLvtThermal, kLvtPerf, kLvtLint0, kLvtLint1, kLvtError})
          set_reg(r, reg(r) | kMasked);
      machine_.interrupt_raised(vcpu_);
      break;
    case kEsr:
      set_reg(kEsr, 0);  // errors are recorded as they happen; a write clears them
      break;
    case kIcrLow: {
      set_reg(kIcrLow, value & ~(1u << 12));  // delivery completes at once
      const std::uint32_t mode = (value >> 8) & 7;
      if ((mode == 0 || mode == 1) && (value & 0xff) < 16) {
        set_reg(kEsr, reg(kEsr) | (1u << 5));  // send illegal vector
        break;
      }
      bus_.send_ipi(vcpu_, value, reg(kIcrHigh));
      break;
    }
    case kIcrHigh:
      set_reg(kIcrHigh, value & 0xff000000);
      break;
    case kLvtTimer:
      lvt(0x000700ff);
      // Leaving TSC-deadline mode (never fires here) makes an armed count live.
      machine_.timers_changed();
      break;
    case kLvtCmci:
    case kLvtThermal:
    case kLvtPerf:
      lvt(0x000107ff);
      break;
    case kLvtLint0:
    case kLvtLint1:
      lvt(0x0001a7ff);
      machine_.interrupt_raised(vcpu_);
      break;
    case kLvtError:
      lvt(0x000100ff);
      break;
    case kTimerInitial:
      set_reg(kTimerInitial, value);
      state_.timer_armed = value != 0;
      state_.timer_deadline_ns = machine_.now_ns() + std::uint64_t{value} * timer_ns_per_count();
      machine_.timers_changed();
      break;
    case kTimerDivide:
      set_reg(kTimerDivide, value & 0xb);
      break;
    default:  // read-only or reserved
      break;
  }
}

LapicState Lapic::to_arch_state(std::uint64_t now) const {
  LapicState out;
  out.apic_base_msr = state_.apic_base;
  out.registers = state_.registers;
  std::uint32_t current = current_count(now);
  std::memcpy(&out.registers[kTimerCurrent], &current, 4);
  out.timer_remaining_ns = state_.timer_armed ? std::max<std::uint64_t>(state_.timer_deadline_ns, now + 1) - now : 0;
  return out;
}

void Lapic::from_arch_state(const LapicState& in, std::uint64_t now) {
  state_.apic_base = in.apic_base_msr;
  state_.registers = in.registers;
  state_.timer_armed = in.timer_remaining_ns != 0;
  state_.timer_deadline_ns = now + in.timer_remaining_ns;
  machine_.timers_changed();
}

std::uint64_t LapicWindow::mmio_read(unsigned vcpu, std::uint64_t offset, unsigned size) {
  const std::uint64_t ones = size >= 8 ? ~0ull : (1ull << (size * 8)) - 1;
  if (vcpu >= lapics_.size() || !lapics_[vcpu]->hardware_enabled()) return ones;
  const std::uint32_t dword = lapics_[vcpu]->read(static_cast<std::uint32_t>(offset & ~3ull));
  return (std::uint64_t{dword} >> ((offset & 3) * 8)) & ones;
}

void LapicWindow::mmio_write(unsigned vcpu, std::uint64_t offset, unsigned, std::uint64_t value) {
  if (vcpu >= lapics_.size() || !lapics_[vcpu]->hardware_enabled()) return;
  // Registers are 32 bits wide; narrower writes are undefined on hardware and
  // are taken as a write of the whole register here.
  lapics_[vcpu]->write(static_cast<std::uint32_t>(offset & ~3ull), static_cast<std::uint32_t>(value));
}

void to_json(nlohmann::json& j, const Lapic::State& s) {
  j = {{"apic_base", s.apic_base},
       {"registers", to_hex(s.registers.data(), s.registers.size())},
       {"timer_armed", s.timer_armed},
       {"timer_deadline_ns", s.timer_deadline_ns},
       {"wait_for_sipi", s.wait_for_sipi},
       {"init_pending", s.init_pending},
       {"sipi_vector", s.sipi_vector},
       {"nmi_pending", s.nmi_pending}};
}

void from_json(const nlohmann::json& j, Lapic::State& s) {
  j.at("apic_base").get_to(s.apic_base);
  from_hex(j.at("registers").get<std::string>(), s.registers.data(), s.registers.size());
  j.at("timer_armed").get_to(s.timer_armed);
  j.at("timer_deadline_ns").get_to(s.timer_deadline_ns);
  // Absent in states saved before SMP: a processor that runs, nothing pending.
  s.wait_for_sipi = j.value("wait_for_sipi", false);
  s.init_pending = j.value("init_pending", false);
  s.sipi_vector = j.value("sipi_vector", -1);
  s.nmi_pending = j.value("nmi_pending", false);
  if (s.sipi_vector < -1 || s.sipi_vector > 255) throw std::invalid_argument("lapic sipi_vector out of range");
}

}  // namespace modevisor::host
