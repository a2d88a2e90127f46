// Shared helpers for the platform tests: a PC on a manual clock, driven
// through the Machine the way a guest drives it (port and MMIO accesses).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "platform/clock.hpp"
#include "platform/machine.hpp"
#include "platform/pc.hpp"

namespace modevisor::host::test {

inline constexpr std::int64_t kRtcEpoch = 1700000000;  // 2023-11-14 22:13:20 UTC, a Tuesday

struct TestPc {
  explicit TestPc(unsigned cpus = 1, std::uint64_t ram = 64ull << 20)
      : clock(std::make_shared<ManualClock>()), machine(clock), pc(machine, PcConfig{ram, cpus, kRtcEpoch}) {}

  std::uint8_t in8(std::uint16_t port) { return static_cast<std::uint8_t>(machine.io_in(0, port, 1)); }
  void out8(std::uint16_t port, std::uint8_t v) { machine.io_out(0, port, 1, v); }
  std::uint32_t apic_read(std::uint32_t reg, unsigned vcpu = 0) {
    return static_cast<std::uint32_t>(machine.mmio_read(vcpu, 0xfee00000 + reg, 4));
  }
  void apic_write(std::uint32_t reg, std::uint32_t v, unsigned vcpu = 0) {
    machine.mmio_write(vcpu, 0xfee00000 + reg, 4, v);
  }
  void ioapic_write(std::uint8_t index, std::uint32_t v) {
    machine.mmio_write(0, 0xfec00000, 4, index);
    machine.mmio_write(0, 0xfec00010, 4, v);
  }
  std::uint32_t ioapic_read(std::uint8_t index) {
    machine.mmio_write(0, 0xfec00000, 4, index);
    return static_cast<std::uint32_t>(machine.mmio_read(0, 0xfec00010, 4));
  }
  // The BIOS-like PIC programming most OSes do: vectors 0x20/0x28, cascade on IRQ2.
  void init_pics(std::uint8_t master_base = 0x20, std::uint8_t slave_base = 0x28, bool auto_eoi = false) {
    out8(0x20, 0x11);
    out8(0x21, master_base);
    out8(0x21, 0x04);
    out8(0x21, auto_eoi ? 0x03 : 0x01);
    out8(0xa0, 0x11);
    out8(0xa1, slave_base);
    out8(0xa1, 0x02);
    out8(0xa1, auto_eoi ? 0x03 : 0x01);
    out8(0x21, 0x00);
    out8(0xa1, 0x00);
  }
  void advance_ns(std::uint64_t ns) { clock->advance(ns); }

  std::shared_ptr<ManualClock> clock;
  Machine machine;
  Pc pc;
};

}  // namespace modevisor::host::test
