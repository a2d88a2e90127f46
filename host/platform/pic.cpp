#include "platform/pic.hpp"

#include <nlohmann/json.hpp>

namespace modevisor::host {

namespace {
constexpr unsigned kMaster = 0, kSlave = 1;

// Priority level (0 highest) of the highest set bit of `mask` under rotation.
unsigned priority_of(std::uint8_t mask, std::uint8_t priority_add) {
  if (mask == 0) return 8;
  unsigned p = 0;
  while (!(mask & (1u << ((p + priority_add) & 7)))) ++p;
  return p;
}
}  // namespace

Pic::Pic() {
  // Every input starts edge triggered (ELCR 0); writes keep IRQ0-2, 8 and 13 edge.
  state_.chips[kMaster].elcr = 0;
  state_.chips[kSlave].elcr = 0;
}

void Pic::attach(Machine& machine) {
  machine.attach_ports(0x20, 2, *this);
  machine.attach_ports(0xa0, 2, *this);
  machine.attach_ports(0x4d0, 2, *this);
}

int Pic::highest_request(unsigned chip) const {
  const Chip& c = state_.chips[chip];
  const std::uint8_t pending = c.irr & ~c.imr;
  const unsigned request = priority_of(pending, c.priority_add);
  if (request == 8) return -1;
  std::uint8_t in_service = c.isr;
  if (c.special_mask) in_service &= ~c.imr;
  // Special fully nested: the slave may interrupt while one of its own IRQs is in service.
  if (chip == kMaster && c.special_fully_nested) in_service &= ~(1u << 2);
  const unsigned current = priority_of(in_service, c.priority_add);
  if (request < current) return static_cast<int>((request + c.priority_add) & 7);
  return -1;
}

void Pic::update_cascade() {
  Chip& m = state_.chips[kMaster];
  // The slave's INT output drives master IRQ2 as a level.
  if (highest_request(kSlave) >= 0) {
    m.irr |= 1u << 2;
    m.input_level |= 1u << 2;
  } else {
    m.irr &= ~(1u << 2);
    m.input_level &= ~(1u << 2);
  }
}

void Pic::set_irq(unsigned irq, bool level) {
  if (irq >= 16 || irq == 2) return;  // IRQ2 is the cascade input
  Chip& c = state_.chips[irq >> 3];
  const std::uint8_t bit = 1u << (irq & 7);
  if ((c.elcr & bit) || c.level_mode) {
    if (level)
      c.irr |= bit;
    else
      c.irr &= ~bit;
  } else if (level && !(c.input_level & bit)) {
    c.irr |= bit;  // rising edge
  }
  if (level)
    c.input_level |= bit;
  else
    c.input_level &= ~bit;
  update_cascade();
}

bool Pic::output() const { return highest_request(kMaster) >= 0; }

void Pic::ack_chip(unsigned chip, unsigned irq) {
  Chip& c = state_.chips[chip];
  const std::uint8_t bit = 1u << irq;
  if (c.auto_eoi) {
    if (c.rotate_on_auto_eoi) c.priority_add = (irq + 1) & 7;
  } else {
    c.isr |= bit;
  }
  // An edge-triggered request is consumed; a level request stays while asserted.
  if (!((c.elcr & bit) || c.level_mode)) c.irr &= ~bit;
}

std::uint8_t Pic::acknowledge() {
  Chip& m = state_.chips[kMaster];
  Chip& s = state_.chips[kSlave];
  std::uint8_t vector;
  const int irq = highest_request(kMaster);
  if (irq < 0) {
    vector = m.vector_base + 7;  // spurious IRQ7: no ISR bit
  } else if (irq == 2 && !m.single) {
    const int irq2 = highest_request(kSlave);
    if (irq2 >= 0) {
      ack_chip(kSlave, static_cast<unsigned>(irq2));
      vector = s.vector_base + static_cast<std::uint8_t>(irq2);
    } else {
      vector = s.vector_base + 7;  // spurious IRQ15 (master still sees the cascade ack)
    }
    ack_chip(kMaster, 2);
  } else {
    ack_chip(kMaster, static_cast<unsigned>(irq));
    vector = m.vector_base + static_cast<std::uint8_t>(irq);
  }
  update_cascade();
  return vector;
}

std::uint8_t Pic::poll_read(unsigned chip) {
  Chip& c = state_.chips[chip];
  c.poll = false;
  const int irq = highest_request(chip);
  if (irq < 0) return 0;
  ack_chip(chip, static_cast<unsigned>(irq));
  update_cascade();
  return static_cast<std::uint8_t>(0x80 | irq);
}

std::uint32_t Pic::port_read(std::uint16_t port, unsigned) {
  if (port == 0x4d0 || port == 0x4d1) return state_.chips[port & 1].elcr;
  const unsigned chip = port >= 0xa0 ? kSlave : kMaster;
  Chip& c = state_.chips[chip];
  if (c.poll) return poll_read(chip);
  if ((port & 1) == 0) return c.read_isr ? c.isr : c.irr;
  return c.imr;
}

void Pic::port_write(std::uint16_t port, unsigned, std::uint32_t value) {
  const std::uint8_t v = static_cast<std::uint8_t>(value);
  if (port == 0x4d0) {
    state_.chips[kMaster].elcr = v & 0xf8;  // IRQ0-2 always edge
  } else if (port == 0x4d1) {
    state_.chips[kSlave].elcr = v & 0xde;  // IRQ8 and IRQ13 always edge
  } else {
    const unsigned chip = port >= 0xa0 ? kSlave : kMaster;
    if ((port & 1) == 0)
      write_command(chip, v);
    else
      write_data(chip, v);
  }
  update_cascade();
}

void Pic::write_command(unsigned chip, std::uint8_t v) {
  Chip& c = state_.chips[chip];
  if (v & 0x10) {  // ICW1: start initialisation
    const std::uint8_t elcr = c.elcr;
    c = Chip{};
    c.elcr = elcr;
    c.init_step = 1;
    c.icw4_needed = v & 0x01;
    c.single = v & 0x02;
    c.level_mode = v & 0x08;
    return;
  }
  if (v & 0x08) {  // OCW3
    if (v & 0x04) c.poll = true;
    if (v & 0x02) c.read_isr = v & 0x01;
    if (v & 0x40) c.special_mask = v & 0x20;
    return;
  }
  // OCW2
  const unsigned command = v >> 5;
  switch (command) {
    case 0:  // clear rotate in auto-EOI
    case 4:  // set rotate in auto-EOI
      c.rotate_on_auto_eoi = command == 4;
      break;
    case 1:    // non-specific EOI
    case 5: {  // rotate on non-specific EOI
      const unsigned p = priority_of(c.isr, c.priority_add);
      if (p != 8) {
        const unsigned irq = (p + c.priority_add) & 7;
        c.isr &= ~(1u << irq);
        if (command == 5) c.priority_add = (irq + 1) & 7;
      }
      break;
    }
    case 3:  // specific EOI
      c.isr &= ~(1u << (v & 7));
      break;
    case 6:  // set priority: IRQ v&7 becomes the lowest
      c.priority_add = ((v & 7) + 1) & 7;
      break;
    case 7:  // rotate on specific EOI
      c.isr &= ~(1u << (v & 7));
      c.priority_add = ((v & 7) + 1) & 7;
      break;
    default:  // 2: no operation
      break;
  }
}

void Pic::write_data(unsigned chip, std::uint8_t v) {
  Chip& c = state_.chips[chip];
  switch (c.init_step) {
    case 0:  // OCW1
      c.imr = v;
      break;
    case 1:  // ICW2
      c.vector_base = v & 0xf8;
      c.init_step = c.single ? (c.icw4_needed ? 3 : 0) : 2;
      break;
    case 2:  // ICW3
      c.icw3 = v;
      c.init_step = c.icw4_needed ? 3 : 0;
      break;
    case 3:  // ICW4
      c.auto_eoi = v & 0x02;
      c.special_fully_nested = v & 0x10;
      c.init_step = 0;
      break;
  }
}

void to_json(nlohmann::json& j, const Pic::Chip& c) {
  j = {{"irr", c.irr}, {"isr", c.isr}, {"imr", c.imr}, {"input_level", c.input_level}, {"elcr", c.elcr},
       {"vector_base", c.vector_base}, {"priority_add", c.priority_add}, {"init_step", c.init_step},
       {"icw3", c.icw3}, {"icw4_needed", c.icw4_needed}, {"single", c.single}, {"level_mode", c.level_mode},
       {"auto_eoi", c.auto_eoi}, {"rotate_on_auto_eoi", c.rotate_on_auto_eoi},
       {"special_fully_nested", c.special_fully_nested}, {"special_mask", c.special_mask},
       {"read_isr", c.read_isr}, {"poll", c.poll}};
}

void from_json(const nlohmann::json& j, Pic::Chip& c) {
  j.at("irr").get_to(c.irr);
  j.at("isr").get_to(c.isr);
  j.at("imr").get_to(c.imr);
  j.at("input_level").get_to(c.input_level);
  j.at("elcr").get_to(c.elcr);
  j.at("vector_base").get_to(c.vector_base);
  j.at("priority_add").get_to(c.priority_add);
  j.at("init_step").get_to(c.init_step);
  j.at("icw3").get_to(c.icw3);
  j.at("icw4_needed").get_to(c.icw4_needed);
  j.at("single").get_to(c.single);
  j.at("level_mode").get_to(c.level_mode);
  j.at("auto_eoi").get_to(c.auto_eoi);
  j.at("rotate_on_auto_eoi").get_to(c.rotate_on_auto_eoi);
  j.at("special_fully_nested").get_to(c.special_fully_nested);
  j.at("special_mask").get_to(c.special_mask);
  j.at("read_isr").get_to(c.read_isr);
  j.at("poll").get_to(c.poll);
}

void to_json(nlohmann::json& j, const Pic::State& s) { j = {{"master", s.chips[0]}, {"slave", s.chips[1]}}; }
void from_json(const nlohmann::json& j, Pic::State& s) {
  j.at("master").get_to(s.chips[0]);
  j.at("slave").get_to(s.chips[1]);
}

}  // namespace modevisor::host
