// The PC's miscellaneous system ports:
//   0x80  POST code: writes are swallowed (the last code reads back)
//   0x92  system control port A: bit 1 fast A20 gate (stored; guest RAM does
//         not wrap at 1 MiB either way), bit 0 set => reset (the VM stops
//         with reason "reset")
//   0x64  the 8042's command port, for its reset line only: command 0xFE
//         (pulse output port bit 0, how PC operating systems reboot) stops the
//         VM with reason "reset".  There is no keyboard controller: reads give
//         all ones like an unclaimed port, and other commands are ignored.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "platform/machine.hpp"

namespace modevisor::host {

class SystemPorts final : public PortDevice {
 public:
  struct State {
    std::uint8_t post_code = 0;
    std::uint8_t port92 = 0x02;  // A20 enabled
  };

  explicit SystemPorts(Machine& machine) : machine_(machine) {}
  std::string_view name() const override { return "system-ports"; }
  std::uint32_t port_read(std::uint16_t port, unsigned) override {
    if (port == 0x64) return 0xff;
    return port == 0x80 ? state_.post_code : state_.port92;
  }
  void port_write(std::uint16_t port, unsigned, std::uint32_t value) override {
    if (port == 0x80) {
      state_.post_code = static_cast<std::uint8_t>(value);
      return;
    }
    if (port == 0x64) {
      if ((value & 0xff) == 0xfe) machine_.request_stop("reset");
      return;
    }
    state_.port92 = value & 0x02;
    if (value & 0x01) machine_.request_stop("reset");
  }
  void attach(Machine& machine) {
    machine.attach_ports(0x80, 1, *this);
    machine.attach_ports(0x92, 1, *this);
    machine.attach_ports(0x64, 1, *this);
  }
  bool a20_enabled() const { return state_.port92 & 0x02; }

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }

 private:
  Machine& machine_;
  State state_;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(SystemPorts::State, post_code, port92)

}  // namespace modevisor::host
