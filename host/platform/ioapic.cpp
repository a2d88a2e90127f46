#include "platform/ioapic.hpp"

namespace modevisor::host {

IoApic::IoApic(IoApicSink& sink) : sink_(sink) {
  for (auto& entry : state_.redirection) entry = kMask;
}

std::uint32_t IoApic::read_register(std::uint8_t index) const {
  switch (index) {
    case 0:
      return std::uint32_t{state_.id} << 24;
    case 1:
      return ((kPins - 1) << 16) | 0x20;
    case 2:
      return std::uint32_t{state_.id} << 24;
    default:
      if (index >= 0x10 && index < 0x10 + 2 * kPins) {
        const std::uint64_t entry = state_.redirection[(index - 0x10) / 2];
        return static_cast<std::uint32_t>(index & 1 ? entry >> 32 : entry);
      }
      return 0;
  }
}

void IoApic::write_register(std::uint8_t index, std::uint32_t value) {
  if (index == 0) {
    state_.id = (value >> 24) & 0x0f;
    return;
  }
  if (index < 0x10 || index >= 0x10 + 2 * kPins) return;
  std::uint64_t& entry = state_.redirection[(index - 0x10) / 2];
  if (index & 1) {
    entry = (entry & 0xffffffffull) | (std::uint64_t{value & 0xff000000u} << 32);
  } else {
    // Delivery status (bit 12) and Remote IRR (bit 14) are read-only.
    constexpr std::uint64_t kReadOnly = (1ull << 12) | kRemoteIrr;
    entry = (entry & ~0xffffffffull) | (entry & kReadOnly) | (value & ~kReadOnly & 0xffffffffull);
    if (!(entry & kLevel)) entry &= ~kRemoteIrr;
    // A level-triggered pin that is still asserted requests again.
    const unsigned pin = (index - 0x10) / 2;
    if ((entry & kLevel) && (state_.level & (1u << pin))) state_.irr |= 1u << pin;
  }
  service();
}

void IoApic::set_irq(unsigned pin, bool level) {
  if (pin >= kPins) return;
  const std::uint32_t bit = 1u << pin;
  const bool was = state_.level & bit;
  if (level)
    state_.level |= bit;
  else
    state_.level &= ~bit;
  if (state_.redirection[pin] & kLevel) {
    if (level)
      state_.irr |= bit;
    else
      state_.irr &= ~bit;
  } else if (level && !was && !(state_.redirection[pin] & kMask)) {
    // An edge on a masked pin is ignored, not held pending (82093AA).
    state_.irr |= bit;
  }
  service();
}

void IoApic::service() {
  for (unsigned pin = 0; pin < kPins; ++pin) {
    const std::uint32_t bit = 1u << pin;
    if (!(state_.irr & bit)) continue;
    std::uint64_t& entry = state_.redirection[pin];
    if (entry & kMask) continue;
    const bool level = entry & kLevel;
    if (level) {
      if (entry & kRemoteIrr) continue;
      entry |= kRemoteIrr;
    } else {
      state_.irr &= ~bit;
    }
    sink_.deliver(static_cast<std::uint8_t>(entry >> 56), entry & kLogical, (entry >> 8) & 7,
                  static_cast<std::uint8_t>(entry & 0xff), level);
  }
}

void IoApic::end_of_interrupt(std::uint8_t vector) {
  for (auto& entry : state_.redirection)
    if ((entry & kLevel) && (entry & 0xff) == vector) entry &= ~kRemoteIrr;
  service();
}

std::uint64_t IoApic::mmio_read(unsigned, std::uint64_t offset, unsigned size) {
  std::uint32_t v = 0;
  if ((offset & ~3ull) == 0x00)
    v = state_.select;
  else if ((offset & ~3ull) == 0x10)
    v = read_register(state_.select);
  const std::uint64_t ones = size >= 8 ? ~0ull : (1ull << (size * 8)) - 1;
  return (std::uint64_t{v} >> ((offset & 3) * 8)) & ones;
}

void IoApic::mmio_write(unsigned, std::uint64_t offset, unsigned, std::uint64_t value) {
  if ((offset & ~3ull) == 0x00)
    state_.select = static_cast<std::uint8_t>(value);
  else if ((offset & ~3ull) == 0x10)
    write_register(state_.select, static_cast<std::uint32_t>(value));
  else if ((offset & ~3ull) == 0x40)
    end_of_interrupt(static_cast<std::uint8_t>(value));
}

}  // namespace modevisor::host
