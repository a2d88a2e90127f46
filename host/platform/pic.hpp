// The PC's cascaded 8259A programmable interrupt controllers: master at
// 0x20/0x21 (IRQ0-7), slave at 0xa0/0xa1 (IRQ8-15, cascaded on master IRQ2),
// and the PIIX edge/level control registers (ELCR) at 0x4d0/0x4d1.
//
// Supported: ICW1-4 (single/cascade, ICW4 auto-EOI and special fully nested),
// OCW1 (IMR), OCW2 (non-specific/specific EOI, rotation, set priority), OCW3
// (IRR/ISR read select, poll, special mask), edge triggering with edge
// detection and level triggering per ELCR, spurious IRQ7/IRQ15 on an INTA
// whose request went away.  Not modelled: 8080/85 call mode, buffered mode.
#pragma once

#include <array>
#include <cstdint>

#include <nlohmann/json_fwd.hpp>

#include "platform/machine.hpp"

namespace modevisor::host {

class Pic final : public PortDevice {
 public:
  struct Chip {
    std::uint8_t irr = 0;          // interrupt request register
    std::uint8_t isr = 0;          // in-service register
    std::uint8_t imr = 0;          // interrupt mask register
    std::uint8_t input_level = 0;  // last level seen on each input (edge detection)
    std::uint8_t elcr = 0;         // 1: level triggered
    std::uint8_t vector_base = 0;  // ICW2 & 0xf8
    std::uint8_t priority_add = 0; // lowest-priority rotation: IRQ priority_add has top priority
    std::uint8_t init_step = 0;    // 0: ready; 1, 2, 3: expecting ICW2, ICW3, ICW4
    std::uint8_t icw3 = 0;
    bool icw4_needed = false;
    bool single = false;
    bool level_mode = false;       // ICW1 LTIM: every input level triggered
    bool auto_eoi = false;
    bool rotate_on_auto_eoi = false;
    bool special_fully_nested = false;
    bool special_mask = false;
    bool read_isr = false;         // OCW3 RR/RIS: port reads give ISR (else IRR)
    bool poll = false;             // OCW3 P: next read is a poll
  };
  struct State {
    std::array<Chip, 2> chips{};  // master, slave
  };

  Pic();
  std::string_view name() const override { return "pic"; }
  std::uint32_t port_read(std::uint16_t port, unsigned size) override;
  void port_write(std::uint16_t port, unsigned size, std::uint32_t value) override;
  void attach(Machine& machine);  // 0x20-0x21, 0xa0-0xa1, 0x4d0-0x4d1

  // Input `irq` (0-15) changes level.
  void set_irq(unsigned irq, bool level);
  // The INT output to the CPU (or the local APIC's LINT0).
  bool output() const;
  // INTA cycle: returns the vector and moves the request to ISR (unless auto-EOI).
  std::uint8_t acknowledge();

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }

 private:
  int highest_request(unsigned chip) const;  // IRQ the chip would signal now, -1 none
  void write_command(unsigned chip, std::uint8_t value);
  void write_data(unsigned chip, std::uint8_t value);
  void ack_chip(unsigned chip, unsigned irq);
  std::uint8_t poll_read(unsigned chip);
  void update_cascade();
  State state_;
};

void to_json(nlohmann::json& j, const Pic::Chip& c);
void from_json(const nlohmann::json& j, Pic::Chip& c);
void to_json(nlohmann::json& j, const Pic::State& s);
void from_json(const nlohmann::json& j, Pic::State& s);

}  // namespace modevisor::host
