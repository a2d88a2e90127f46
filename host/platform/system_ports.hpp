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

#include <atomic>
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
  // Two independent bytes and stop requests (which lock for themselves): the
  // POST port, which guests and firmware write as an I/O delay, takes no lock.
  bool self_synchronised() const override { return true; }
  std::uint32_t port_read(std::uint16_t port, unsigned) override {
    if (port == 0x64) return 0xff;
    return port == 0x80 ? post_code_.load(std::memory_order_relaxed) : port92_.load(std::memory_order_relaxed);
  }
  void port_write(std::uint16_t port, unsigned, std::uint32_t value) override {
    if (port == 0x80) {
      post_code_.store(static_cast<std::uint8_t>(value), std::memory_order_relaxed);
      return;
    }
    if (port == 0x64) {
      if ((value & 0xff) == 0xfe) machine_.request_stop("reset");
      return;
    }
    port92_.store(value & 0x02, std::memory_order_relaxed);
    if (value & 0x01) machine_.request_stop("reset");
  }
  void attach(Machine& machine) {
    machine.attach_ports(0x80, 1, *this);
    machine.attach_ports(0x92, 1, *this);
    machine.attach_ports(0x64, 1, *this);
  }
  bool a20_enabled() const { return port92_.load(std::memory_order_relaxed) & 0x02; }

  State save() const { return {post_code_.load(), port92_.load()}; }
  void restore(const State& state) {
    post_code_.store(state.post_code);
    port92_.store(state.port92);
  }

 private:
  Machine& machine_;
  std::atomic<std::uint8_t> post_code_{0};
  std::atomic<std::uint8_t> port92_{0x02};  // A20 enabled
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(SystemPorts::State, post_code, port92)

}  // namespace modevisor::host
