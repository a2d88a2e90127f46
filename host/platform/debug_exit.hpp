// QEMU's isa-debug-exit convention at port 0xf4: a write of v ends the VM with
// exit status (v << 1) | 1 (the value is taken at the access width).
#pragma once

#include "platform/machine.hpp"

namespace modevisor::host {

class DebugExit final : public PortDevice {
 public:
  static constexpr std::uint16_t kPort = 0xf4;
  explicit DebugExit(Machine& machine) : machine_(machine) {}
  std::string_view name() const override { return "debug-exit"; }
  std::uint32_t port_read(std::uint16_t, unsigned size) override {
    return size >= 4 ? 0xffffffffu : (1u << (size * 8)) - 1;
  }
  void port_write(std::uint16_t, unsigned, std::uint32_t value) override {
    machine_.request_stop("debug-exit", static_cast<int>((value << 1) | 1));
  }
  // No state: request_stop takes the platform lock itself.
  bool self_synchronised() const override { return true; }
  void attach(Machine& machine) { machine.attach_ports(kPort, 1, *this); }

 private:
  Machine& machine_;
};

}  // namespace modevisor::host
