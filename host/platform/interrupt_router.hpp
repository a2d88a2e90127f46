// Wires the PC's interrupt controllers together and answers the Machine's
// interrupt questions:
//   ISA IRQ n  -> 8259 input n, and I/O APIC pin n (IRQ0 -> pin 2, as on
//                 QEMU's PC whose MADT carries that override)
//   8259 INT   -> vCPU 0 when its local APIC accepts ExtINT on LINT0 or is
//                 hardware-disabled (virtual wire mode)
//   I/O APIC   -> local APICs by physical/logical destination (fixed,
//                 lowest priority, NMI, INIT)
//   local APIC -> local APICs (IPIs: fixed, lowest priority, NMI, INIT,
//                 STARTUP), I/O APIC (EOI of level vectors)
// acknowledge_interrupt() prefers the local APIC's highest deliverable vector
// and otherwise runs the 8259's INTA cycle.
#pragma once

#include <vector>

#include "platform/ioapic.hpp"
#include "platform/irq.hpp"
#include "platform/lapic.hpp"
#include "platform/machine.hpp"
#include "platform/pic.hpp"

namespace modevisor::host {

class InterruptRouter final : public IrqSink, public InterruptController, public IoApicSink, public ApicBus {
 public:
  InterruptRouter(Machine& machine, Pic& pic, IoApic& ioapic) : machine_(machine), pic_(pic), ioapic_(ioapic) {}
  void set_lapics(std::vector<Lapic*> lapics) { lapics_ = std::move(lapics); }

  static unsigned ioapic_pin(unsigned isa_irq) { return isa_irq == 0 ? 2 : isa_irq; }

  // IrqSink: ISA IRQ lines.
  void set_irq(unsigned line, bool level) override;
  // InterruptController
  bool interrupt_pending(unsigned vcpu) override;
  std::uint8_t acknowledge_interrupt(unsigned vcpu) override;
  api::CpuEvents cpu_events(unsigned vcpu) override;
  bool acknowledge_nmi(unsigned vcpu) override;
  StartupEvents take_startup(unsigned vcpu) override;
  std::uint64_t apic_base(unsigned vcpu) override;
  void set_apic_base(unsigned vcpu, std::uint64_t value) override;
  // IoApicSink
  void deliver(std::uint8_t destination, bool logical, unsigned delivery_mode, std::uint8_t vector,
               bool level_triggered) override;
  // ApicBus
  void send_ipi(unsigned source_vcpu, std::uint32_t icr_low, std::uint32_t icr_high) override;
  void broadcast_eoi(std::uint8_t vector) override { ioapic_.end_of_interrupt(vector); }

  // IPIs sent, by delivery mode (each counted once, whatever the number of targets).
  struct IpiCounters {
    std::uint64_t fixed = 0, nmi = 0, init = 0, init_deassert = 0, startup = 0, unsupported = 0;
  };
  const IpiCounters& ipi_counters() const { return ipis_; }

 private:
  bool pic_reaches(unsigned vcpu) const;
  // One message of `delivery_mode` to `lapic` (NMI, INIT, STARTUP, fixed).
  static void deliver_to(Lapic& lapic, unsigned delivery_mode, std::uint8_t vector, bool level_triggered);
  Machine& machine_;
  Pic& pic_;
  IoApic& ioapic_;
  std::vector<Lapic*> lapics_;
  IpiCounters ipis_;
};

}  // namespace modevisor::host
