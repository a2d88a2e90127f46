// A 16550A UART (COM1: 0x3f8, IRQ4).
//
// Registers: RBR/THR, IER, IIR (with FIFO-enabled bits) / FCR, LCR (DLAB),
// MCR (loopback), LSR, MSR, SCR, DLL/DLM.  Output is never slowed down:
// THR writes go straight to the console sink (THRE and TEMT always set), or
// back into the receiver in loopback mode.  Input the host pushes is queued
// host-side without limit and moved into the receiver (16-byte FIFO, or the
// single holding register with FIFOs off) as the guest reads it, so console
// input is never lost.  Interrupts: receiver line status, received data (at
// the FIFO trigger level; below it the character timeout indication is given
// at once, not after four character times), THR empty, modem status.  The
// IRQ follows the interrupt condition without gating by MCR OUT2, as QEMU.
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include <nlohmann/json.hpp>

#include "platform/irq.hpp"
#include "platform/machine.hpp"

namespace modevisor::host {

// Where the guest's serial output goes (the VM log, the terminal).
class ConsoleSink {
 public:
  virtual ~ConsoleSink() = default;
  virtual void write(std::uint8_t byte) = 0;
};

class Uart final : public PortDevice {
 public:
  struct State {
    std::uint16_t divisor = 12;  // 9600 baud
    std::uint8_t ier = 0, lcr = 0, mcr = 0, lsr = 0x60, msr = 0, scr = 0, fcr = 0;
    bool thr_interrupt = false;  // THR-empty interrupt pending (until IIR read or THR write)
    std::string rx_fifo;         // bytes in the receiver
    std::string input;           // host input not yet in the receiver
  };

  Uart(std::string name, IrqLine irq, ConsoleSink* sink = nullptr);
  std::string_view name() const override { return name_; }
  std::uint32_t port_read(std::uint16_t port, unsigned size) override;
  void port_write(std::uint16_t port, unsigned size, std::uint32_t value) override;
  void attach(Machine& machine, std::uint16_t base) { machine.attach_ports(base, 8, *this); }
  void set_sink(ConsoleSink* sink) { sink_ = sink; }

  // Host input (call with the platform lock held).
  void push_input(std::string_view bytes);

  State save() const { return state_; }
  void restore(const State& state);

 private:
  std::uint8_t iir() const;
  void refill();
  void receive(std::uint8_t byte);  // loopback
  void update_irq();
  std::size_t fifo_capacity() const { return (state_.fcr & 1) ? 16 : 1; }
  std::size_t trigger_level() const;

  std::string name_;
  IrqLine irq_;
  ConsoleSink* sink_;
  State state_;
};

// rx_fifo and input are hex strings in JSON (guest bytes need not be UTF-8).
void to_json(nlohmann::json& j, const Uart::State& s);
void from_json(const nlohmann::json& j, Uart::State& s);

}  // namespace modevisor::host
