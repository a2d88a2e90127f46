// QEMU's fw_cfg device, traditional (non-DMA) interface: selector at 0x510
// (16-bit write), data at 0x511 (byte reads walk the selected item; past its
// end they read 0; a wider read returns the next bytes big-endian, as QEMU).
// Items: signature "QEMU" (0x0000), ID 1 = traditional interface only
// (0x0001), UUID (0x0002, zero), RAM size le64 (0x0003), nb_cpus le16
// (0x0005), max_cpus le16 (0x000f), file directory (0x0019, empty: be32
// count 0).  Unknown keys read as 0.  Writes to data are ignored.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "platform/machine.hpp"

namespace modevisor::host {

class FwCfg final : public PortDevice {
 public:
  struct State {
    std::uint16_t selector = 0;
    std::uint32_t offset = 0;
  };

  FwCfg(std::uint64_t ram_bytes, unsigned cpus);
  std::string_view name() const override { return "fw_cfg"; }
  std::uint32_t port_read(std::uint16_t port, unsigned size) override;
  void port_write(std::uint16_t port, unsigned size, std::uint32_t value) override;
  void attach(Machine& machine) { machine.attach_ports(0x510, 2, *this); }

  void set_item(std::uint16_t key, std::vector<std::uint8_t> data) { items_[key] = std::move(data); }

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }

 private:
  std::map<std::uint16_t, std::vector<std::uint8_t>> items_;  // configuration, not state
  State state_;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(FwCfg::State, selector, offset)

}  // namespace modevisor::host
