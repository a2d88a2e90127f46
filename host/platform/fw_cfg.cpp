#include "platform/fw_cfg.hpp"

namespace modevisor::host {

namespace {
std::vector<std::uint8_t> le(std::uint64_t value, unsigned bytes) {
  std::vector<std::uint8_t> out(bytes);
  for (unsigned i = 0; i < bytes; ++i) out[i] = static_cast<std::uint8_t>(value >> (8 * i));
  return out;
}
}  // namespace

FwCfg::FwCfg(std::uint64_t ram_bytes, unsigned cpus) {
  items_[0x0000] = {'Q', 'E', 'M', 'U'};
  items_[0x0001] = le(1, 4);
  items_[0x0002] = std::vector<std::uint8_t>(16, 0);
  items_[0x0003] = le(ram_bytes, 8);
  items_[0x0005] = le(cpus, 2);
  items_[0x000f] = le(cpus, 2);
  items_[0x0019] = {0, 0, 0, 0};  // file directory: big-endian count 0
}

std::uint32_t FwCfg::port_read(std::uint16_t port, unsigned size) {
  if (port != 0x511) return size >= 4 ? 0xffffffffu : (1u << (size * 8)) - 1;  // the selector is write-only
  std::uint32_t v = 0;
  const auto it = items_.find(state_.selector & 0x3fff);
  for (unsigned i = 0; i < size; ++i) {
    std::uint8_t byte = 0;
    if (it != items_.end() && state_.offset < it->second.size()) byte = it->second[state_.offset];
    ++state_.offset;
    v = (v << 8) | byte;  // wider reads return the bytes in string order (big-endian), as QEMU
  }
  return v;
}

void FwCfg::port_write(std::uint16_t port, unsigned, std::uint32_t value) {
  if (port != 0x510) return;
  state_.selector = static_cast<std::uint16_t>(value);
  state_.offset = 0;
}

}  // namespace modevisor::host
