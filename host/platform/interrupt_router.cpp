#include "platform/interrupt_router.hpp"

namespace modevisor::host {

void InterruptRouter::set_irq(unsigned line, bool level) {
  pic_.set_irq(line, level);
  ioapic_.set_irq(ioapic_pin(line), level);
  if (pic_.output()) machine_.interrupt_raised(0);
}

bool InterruptRouter::pic_reaches(unsigned vcpu) const {
  if (vcpu != 0) return false;
  return lapics_.empty() || lapics_[0]->accepts_pic();
}

bool InterruptRouter::interrupt_pending(unsigned vcpu) {
  if (vcpu < lapics_.size() && lapics_[vcpu]->pending_vector() >= 0) return true;
  return pic_reaches(vcpu) && pic_.output();
}

std::uint8_t InterruptRouter::acknowledge_interrupt(unsigned vcpu) {
  if (vcpu < lapics_.size() && lapics_[vcpu]->pending_vector() >= 0) return lapics_[vcpu]->acknowledge();
  if (pic_reaches(vcpu)) return pic_.acknowledge();  // spurious IRQ7 when nothing is requested
  return vcpu < lapics_.size() ? lapics_[vcpu]->acknowledge() : 0xff;
}

api::CpuEvents InterruptRouter::cpu_events(unsigned vcpu) {
  return vcpu < lapics_.size() ? lapics_[vcpu]->cpu_events() : api::CpuEvents{};
}

bool InterruptRouter::acknowledge_nmi(unsigned vcpu) {
  return vcpu < lapics_.size() && lapics_[vcpu]->acknowledge_nmi();
}

std::uint64_t InterruptRouter::apic_base(unsigned vcpu) {
  return vcpu < lapics_.size() ? lapics_[vcpu]->apic_base() : 0;
}

void InterruptRouter::set_apic_base(unsigned vcpu, std::uint64_t value) {
  if (vcpu < lapics_.size()) lapics_[vcpu]->set_apic_base(value);
}

StartupEvents InterruptRouter::take_startup(unsigned vcpu) {
  StartupEvents out;
  if (vcpu >= lapics_.size()) return out;
  const Lapic::Startup s = lapics_[vcpu]->take_startup();
  out.init = s.init;
  out.sipi_vector = s.sipi_vector;
  return out;
}

namespace {
enum : unsigned { kFixed = 0, kLowestPriority = 1, kSmi = 2, kNmi = 4, kInit = 5, kStartup = 6, kExtInt = 7 };
}  // namespace

void InterruptRouter::deliver_to(Lapic& lapic, unsigned delivery_mode, std::uint8_t vector, bool level_triggered) {
  switch (delivery_mode) {
    case kFixed:
    case kLowestPriority:
      lapic.accept(vector, level_triggered);
      break;
    case kNmi:
      lapic.receive_nmi();
      break;
    case kInit:
      lapic.receive_init();
      break;
    case kStartup:
      lapic.receive_startup(vector);
      break;
    default:
      break;
  }
}

void InterruptRouter::deliver(std::uint8_t destination, bool logical, unsigned delivery_mode, std::uint8_t vector,
                              bool level_triggered) {
  // Fixed, lowest priority (to the first matching APIC), NMI and INIT; SMI
  // and ExtINT have no path to a monitor.
  if (delivery_mode != kFixed && delivery_mode != kLowestPriority && delivery_mode != kNmi && delivery_mode != kInit)
    return;
  for (Lapic* lapic : lapics_) {
    if (!lapic->matches(destination, logical)) continue;
    deliver_to(*lapic, delivery_mode, vector, level_triggered);
    if (delivery_mode == kLowestPriority) break;
  }
}

void InterruptRouter::send_ipi(unsigned source_vcpu, std::uint32_t icr_low, std::uint32_t icr_high) {
  const unsigned mode = (icr_low >> 8) & 7;
  const bool level_trigger = icr_low & (1u << 15), assert_level = icr_low & (1u << 14);
  if (mode == kInit && level_trigger && !assert_level) {
    // INIT level de-assert: only resynchronises arbitration IDs (not on
    // processors since the Pentium 4); no effect on any vCPU.
    ++ipis_.init_deassert;
    return;
  }
  switch (mode) {
    case kFixed:
    case kLowestPriority: ++ipis_.fixed; break;
    case kNmi: ++ipis_.nmi; break;
    case kInit: ++ipis_.init; break;
    case kStartup: ++ipis_.startup; break;
    default: ++ipis_.unsupported; return;  // SMI, reserved, ExtINT
  }
  const std::uint8_t vector = static_cast<std::uint8_t>(icr_low & 0xff);
  const unsigned shorthand = (icr_low >> 18) & 3;
  const std::uint8_t destination = static_cast<std::uint8_t>(icr_high >> 24);
  const bool logical = icr_low & (1u << 11);
  for (Lapic* lapic : lapics_) {
    bool target = false;
    switch (shorthand) {
      case 0:
        target = lapic->matches(destination, logical);
        break;
      case 1:
        target = lapic->vcpu() == source_vcpu;
        break;
      case 2:
        target = true;
        break;
      case 3:
        target = lapic->vcpu() != source_vcpu;
        break;
    }
    if (!target) continue;
    deliver_to(*lapic, mode, vector, false);  // IPIs are edge triggered
    if (mode == kLowestPriority && shorthand == 0) break;
  }
}

}  // namespace modevisor::host
