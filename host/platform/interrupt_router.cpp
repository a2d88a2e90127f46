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

void InterruptRouter::deliver(std::uint8_t destination, bool logical, unsigned delivery_mode, std::uint8_t vector,
                              bool level_triggered) {
  // Fixed and lowest priority (to the first matching APIC); ExtINT, NMI, SMI,
  // INIT have no path to a monitor through the Platform API yet.
  if (delivery_mode != 0 && delivery_mode != 1) return;
  for (Lapic* lapic : lapics_) {
    if (!lapic->matches(destination, logical)) continue;
    lapic->accept(vector, level_triggered);
    if (delivery_mode == 1) break;
  }
}

void InterruptRouter::send_ipi(unsigned source_vcpu, std::uint32_t icr_low, std::uint32_t icr_high) {
  const unsigned mode = (icr_low >> 8) & 7;
  if (mode != 0 && mode != 1) return;  // INIT/SIPI/NMI/SMI: not deliverable through the Platform API
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
    lapic->accept(vector, false);  // IPIs are edge triggered
    if (mode == 1 && shorthand == 0) break;
  }
}

}  // namespace modevisor::host
