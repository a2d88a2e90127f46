// PCI configuration mechanism #1 (0xcf8 address, 0xcfc-0xcff data) on a bus
// with no devices: every configuration read gives all ones (vendor 0xffff),
// writes are ignored.  0xcf9 (PIIX reset control) is decoded too: a byte
// write with bit 2 (reset CPU) set stops the VM with reason "reset".
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "platform/machine.hpp"

namespace modevisor::host {

class PciHost final : public PortDevice {
 public:
  struct State {
    std::uint32_t address = 0;
    std::uint8_t reset_control = 0;
  };

  explicit PciHost(Machine& machine) : machine_(machine) {}
  std::string_view name() const override { return "pci-host"; }
  std::uint32_t port_read(std::uint16_t port, unsigned size) override;
  void port_write(std::uint16_t port, unsigned size, std::uint32_t value) override;
  void attach(Machine& machine) { machine.attach_ports(0xcf8, 8, *this); }

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }

 private:
  Machine& machine_;
  State state_;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PciHost::State, address, reset_control)

}  // namespace modevisor::host
