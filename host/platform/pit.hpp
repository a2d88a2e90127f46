// The 8254 programmable interval timer: channels 0-2 at 0x40-0x42, the mode
// register at 0x43, and port 0x61 (channel 2 gate, speaker enable, channel 2
// output, refresh toggle).  Input clock 1.193182 MHz; channel 0 drives IRQ0.
//
// Counting is evaluated lazily from the guest time a count was loaded; a
// channel-0 interrupt falls due at its output's rising edge and is delivered
// the next time the platform is called (periods nobody observed are
// coalesced into one interrupt: lost ticks, as with a descheduled vCPU).
// A count written in mode 2 or 3 while counting takes effect at the end of
// the current period, as on the 8254.  Modes 0-5 with 16-bit binary counts; lobyte, hibyte and lobyte/hibyte
// access; counter latch and read-back (count and status); gate on channel 2.
// Not modelled: BCD counting (the BCD bit is stored and reported but the
// count is binary), mode 1/5 waiting for a gate trigger on channels 0/1.
#pragma once

#include <array>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "platform/irq.hpp"
#include "platform/machine.hpp"

namespace modevisor::host {

class Pit final : public PortDevice, public TimerDevice {
 public:
  static constexpr std::uint64_t kHz = 1193182;

  struct Channel {
    std::uint16_t reload = 0;  // 0 counts as 65536
    std::uint8_t mode = 0;
    std::uint8_t access = 3;   // 1 lobyte, 2 hibyte, 3 lobyte/hibyte
    bool bcd = false;
    bool gate = true;
    bool counting = false;     // a count was loaded since the mode was set
    bool null_count = true;
    std::uint64_t load_ns = 0;       // guest time counting (re)started
    std::uint64_t ticks_before = 0;  // count position at load_ns (gate pauses; modular after a deferred reload)
    bool write_high_next = false;
    std::uint8_t write_low = 0;
    bool read_high_next = false;
    bool count_latched = false;
    std::uint16_t latched_count = 0;
    bool latched_high_next = false;
    bool status_latched = false;
    std::uint8_t status = 0;
    std::uint64_t irq_tick = UINT64_MAX;  // tick of the next output rising edge to deliver (channel 0)
    // Modes 2 and 3: a count written while counting takes effect at the end
    // of the current period (tick reload_tick).
    bool reload_pending = false;
    std::uint16_t pending_reload = 0;
    std::uint64_t reload_tick = 0;
  };
  struct State {
    std::array<Channel, 3> channels{};
    std::uint8_t port61 = 0;  // bits 0-3 as written
  };

  Pit(Machine& machine, IrqLine irq0);
  std::string_view name() const override { return "pit"; }
  std::uint32_t port_read(std::uint16_t port, unsigned size) override;
  void port_write(std::uint16_t port, unsigned size, std::uint32_t value) override;
  std::uint64_t poll_timers(std::uint64_t now_ns) override;
  void attach(Machine& machine);  // 0x40-0x43, 0x61, timer

  // For tests and the speaker: the current count and output of a channel.
  std::uint16_t count(unsigned channel) const;
  bool output(unsigned channel) const;

  State save() const { return state_; }
  void restore(const State& state) { state_ = state; }

 private:
  std::uint64_t ticks(const Channel& c, std::uint64_t now) const;
  std::uint64_t tick_time(const Channel& c, std::uint64_t tick) const;
  std::uint16_t count_at(const Channel& c, std::uint64_t now) const;
  bool output_at(const Channel& c, std::uint64_t now) const;
  void load_count(unsigned channel, std::uint16_t value);
  void settle(unsigned channel, std::uint64_t now);  // apply a pending reload that fell due
  void set_gate(unsigned channel, bool gate);
  void latch_count(Channel& c);

  Machine& machine_;
  IrqLine irq0_;
  State state_;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Pit::Channel, reload, mode, access, bcd, gate, counting, null_count, load_ns,
                                   ticks_before, write_high_next, write_low, read_high_next, count_latched,
                                   latched_count, latched_high_next, status_latched, status, irq_tick,
                                   reload_pending, pending_reload, reload_tick)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Pit::State, channels, port61)

}  // namespace modevisor::host
