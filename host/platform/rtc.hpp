// The MC146818-compatible CMOS RTC at 0x70 (index; bit 7 is the NMI mask,
// ignored) / 0x71 (data), with 128 bytes of CMOS RAM, on IRQ8.
//
// The time starts at the host's UTC time at power-on (injectable) and runs
// with guest time; registers 0-9 and the century (0x32) read it in BCD or
// binary and 12- or 24-hour form per register B.  Register A: rate select
// (periodic interrupt), divider (must be 010 for the clock to run), UIP
// (set in the last 244 us of each second).  Register B: SET (freezes the
// time registers for writing), PIE/AIE/UIE, DM, 24/12.  Register C: IRQF/PF/
// AF/UF, cleared by reading (which also lowers IRQ8).  Register D: VRT.
// Periodic, alarm (with don't-care bytes) and update-ended events are
// evaluated lazily.  Not modelled: daylight saving (DSE), square wave out.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <optional>

#include <nlohmann/json.hpp>

#include "platform/irq.hpp"
#include "platform/machine.hpp"

namespace modevisor::host {

class Rtc final : public PortDevice, public TimerDevice {
 public:
  struct State {
    std::array<std::uint8_t, 128> cmos{};
    std::uint8_t index = 0;
    std::int64_t base_seconds = 0;   // RTC time (Unix seconds) at guest time 0
    std::uint64_t periodic_ticks = 0;  // periodic boundaries accounted for, at the current rate
    std::uint64_t seconds = 0;         // whole guest seconds accounted for (update cycles)
    bool irq = false;
  };

  // `start_time`: the RTC's time at power-on (Unix seconds, UTC); default: now.
  Rtc(Machine& machine, IrqLine irq8, std::optional<std::int64_t> start_time = std::nullopt);
  std::string_view name() const override { return "rtc"; }
  std::uint32_t port_read(std::uint16_t port, unsigned size) override;
  void port_write(std::uint16_t port, unsigned size, std::uint32_t value) override;
  std::uint64_t poll_timers(std::uint64_t now_ns) override;
  void attach(Machine& machine);  // 0x70-0x71, timer

  // The memory size fields a PC BIOS sets: base (0x15-0x16), extended
  // (0x17-0x18, 0x30-0x31), above 16 MiB (0x34-0x35), above 4 GiB (0x5b-0x5d).
  void set_memory_size(std::uint64_t ram_bytes);
  std::uint8_t cmos(std::uint8_t index) const { return state_.cmos[index & 0x7f]; }
  void set_cmos(std::uint8_t index, std::uint8_t value) { state_.cmos[index & 0x7f] = value; }
  // The RTC's current time (Unix seconds).
  std::int64_t time_now() const;

  State save() const { return state_; }
  void restore(const State& state) {
    state_ = state;
    irq8_.restore_level(state.irq);
  }

  enum : std::uint8_t { kRegA = 0x0a, kRegB = 0x0b, kRegC = 0x0c, kRegD = 0x0d, kCentury = 0x32 };

 private:
  std::uint8_t read_register(std::uint8_t index);
  void write_register(std::uint8_t index, std::uint8_t value);
  std::uint8_t encode(int value) const;
  int decode(std::uint8_t value) const;
  void snapshot_time();  // current time into the time registers
  void commit_time();    // the time registers become the current time
  std::uint64_t periodic_period_units() const;  // periodic period in 1/32768 s, 0: off
  void update_flags(std::uint64_t now);
  void set_flags(std::uint8_t flags);

  Machine& machine_;
  IrqLine irq8_;
  State state_;
};

// cmos is a hex string in JSON.
void to_json(nlohmann::json& j, const Rtc::State& s);
void from_json(const nlohmann::json& j, Rtc::State& s);

}  // namespace modevisor::host
