#include "platform/pci_host.hpp"

namespace modevisor::host {

namespace {
std::uint32_t ones(unsigned size) { return size >= 4 ? 0xffffffffu : (1u << (size * 8)) - 1; }
}  // namespace

std::uint32_t PciHost::port_read(std::uint16_t port, unsigned size) {
  if (port == 0xcf8 && size == 4) return state_.address;
  if (port == 0xcf9 && size == 1) return state_.reset_control;
  if (port >= 0xcfc) return ones(size);  // no device answers: vendor 0xffff
  return ones(size);
}

void PciHost::port_write(std::uint16_t port, unsigned size, std::uint32_t value) {
  if (port == 0xcf8 && size == 4) {
    state_.address = value & 0x80fffffc;
  } else if (port == 0xcf9 && size == 1) {
    state_.reset_control = value & 0x0e;
    if (value & 0x04) machine_.request_stop("reset");
  }
  // Data writes go to no device.
}

}  // namespace modevisor::host
