// The I/O APIC (version 0x20, 24 pins, as QEMU's pc machine) at 0xfec00000:
// IOREGSEL at +0x00, IOWIN at +0x10, the EOI register at +0x40 (version
// 0x20: writing a vector clears Remote IRR of the level-triggered entries
// with that vector); registers ID (0), version (1), arbitration (2) and the
// redirection table (0x10 + 2n low, +1 high).
//
// Edge-triggered pins latch a rising edge and deliver it once (a masked edge
// stays latched until unmasked, as QEMU does); level-triggered pins deliver
// while asserted, set Remote IRR, and deliver again only after the local
// APIC's EOI for that vector clears it.  Delivery goes through IoApicSink (the
// router) with destination, destination mode, delivery mode and vector.
#pragma once

#include <array>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "platform/machine.hpp"

namespace modevisor::host {

class IoApicSink {
 public:
  virtual ~IoApicSink() = default;
  virtual void deliver(std::uint8_t destination, bool logical, unsigned delivery_mode, std::uint8_t vector,
                       bool level_triggered) = 0;
};

class IoApic final : public MmioDevice {
 public:
  static constexpr std::uint64_t kBase = 0xfec00000;
  static constexpr unsigned kPins = 24;

  struct State {
    std::uint8_t id = 0;
    std::uint8_t select = 0;  // IOREGSEL
    std::uint32_t irr = 0;    // pending requests per pin
    std::uint32_t level = 0;  // current input level per pin
    std::array<std::uint64_t, kPins> redirection{};
  };

  explicit IoApic(IoApicSink& sink);
  std::string_view name() const override { return "ioapic"; }
  std::uint64_t mmio_read(unsigned vcpu, std::uint64_t offset, unsigned size) override;
  void mmio_write(unsigned vcpu, std::uint64_t offset, unsigned size, std::uint64_t value) override;
  void attach(Machine& machine) { machine.attach_mmio(kBase, 0x1000, *this); }

  void set_irq(unsigned pin, bool level);
  // A local APIC EOI for a level-triggered vector.
  void end_of_interrupt(std::uint8_t vector);

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }

  // Redirection entry fields.
  static constexpr std::uint64_t kMask = 1ull << 16, kLevel = 1ull << 15, kRemoteIrr = 1ull << 14,
                                 kLogical = 1ull << 11;

 private:
  std::uint32_t read_register(std::uint8_t index) const;
  void write_register(std::uint8_t index, std::uint32_t value);
  void service();

  IoApicSink& sink_;
  State state_;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(IoApic::State, id, select, irr, level, redirection)

}  // namespace modevisor::host
