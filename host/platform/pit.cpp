#include "platform/pit.hpp"

#include <algorithm>

namespace modevisor::host {

namespace {
using u128 = unsigned __int128;
std::uint64_t period(std::uint16_t reload) { return reload == 0 ? 65536 : reload; }
}  // namespace

Pit::Pit(Machine& machine, IrqLine irq0) : machine_(machine), irq0_(irq0) {
  state_.channels[2].gate = false;  // port 0x61 bit 0 starts clear
}

void Pit::attach(Machine& machine) {
  machine.attach_ports(0x40, 4, *this);
  machine.attach_ports(0x61, 1, *this);
  machine.attach_timer(*this);
}

std::uint64_t Pit::ticks(const Channel& c, std::uint64_t now) const {
  if (!c.counting) return 0;
  const bool paused = !c.gate && (c.mode == 0 || c.mode == 4 || c.mode == 2 || c.mode == 3);
  if (paused || now < c.load_ns) return c.ticks_before;
  return c.ticks_before + static_cast<std::uint64_t>(u128(now - c.load_ns) * kHz / 1000000000u);
}

std::uint64_t Pit::tick_time(const Channel& c, std::uint64_t tick) const {
  if (tick == UINT64_MAX) return UINT64_MAX;
  // Ticks after load_ns; modular, since settle() rebases a segment by
  // subtracting from ticks_before rather than moving load_ns (no rounding drift).
  const std::uint64_t elapsed = tick - c.ticks_before;
  if (elapsed > (1ull << 62)) return c.load_ns;  // before the load point
  const u128 ns = (u128(elapsed) * 1000000000u + kHz - 1) / kHz;
  return c.load_ns + static_cast<std::uint64_t>(ns);
}

std::uint16_t Pit::count_at(const Channel& c, std::uint64_t now) const {
  if (!c.counting) return c.reload;
  const std::uint64_t n = period(c.reload);
  const std::uint64_t t = ticks(c, now);
  switch (c.mode) {
    case 2: {
      const std::uint64_t phase = t % n;
      return static_cast<std::uint16_t>(n - phase);
    }
    case 3: {
      // Counts down by two through each half period.
      const std::uint64_t half = (n + 1) / 2;
      const std::uint64_t phase = t % n;
      const std::uint64_t in_half = phase < half ? phase : phase - half;
      return static_cast<std::uint16_t>((n - 2 * in_half) & ~1ull);
    }
    default:  // 0, 1, 4, 5: count down and wrap
      return static_cast<std::uint16_t>((n - t) & 0xffff);
  }
}

bool Pit::output_at(const Channel& c, std::uint64_t now) const {
  if (!c.counting) return c.mode != 0;
  const std::uint64_t n = period(c.reload);
  const std::uint64_t t = ticks(c, now);
  switch (c.mode) {
    case 0:
    case 1:
      return t >= n;
    case 2:
      if (!c.gate) return true;
      return t % n != n - 1;
    case 3:
      if (!c.gate) return true;
      return t % n < (n + 1) / 2;
    default:  // 4, 5: one low tick at terminal count
      return t != n;
  }
}

std::uint16_t Pit::count(unsigned channel) const { return count_at(state_.channels[channel], machine_.now_ns()); }
bool Pit::output(unsigned channel) const { return output_at(state_.channels[channel], machine_.now_ns()); }

void Pit::settle(unsigned channel, std::uint64_t now) {
  Channel& c = state_.channels[channel];
  if (!c.reload_pending || ticks(c, now) < c.reload_tick) return;
  c.ticks_before -= c.reload_tick;  // the new period starts at tick reload_tick (modular)
  c.reload = c.pending_reload;
  c.reload_pending = false;
  c.irq_tick = period(c.reload);
}

std::uint64_t Pit::poll_timers(std::uint64_t now) {
  for (unsigned i = 1; i < 3; ++i) settle(i, now);
  Channel& c = state_.channels[0];
  // The edge that ends the old period comes before a pending reload applies.
  for (int round = 0; round < 2; ++round) {
    if (!c.counting || c.irq_tick == UINT64_MAX) return UINT64_MAX;
    const std::uint64_t t = ticks(c, now);
    if (t >= c.irq_tick) {
      irq0_.pulse();
      if (c.mode == 2 || c.mode == 3) {
        const std::uint64_t n = period(c.reload);
        c.irq_tick = (t / n + 1) * n;
        if (c.reload_pending) c.irq_tick = std::min(c.irq_tick, c.reload_tick);
      } else {
        c.irq_tick = UINT64_MAX;
      }
    }
    if (!c.reload_pending || t < c.reload_tick) break;
    settle(0, now);
  }
  const bool paused = !c.gate && (c.mode == 0 || c.mode == 4 || c.mode == 2 || c.mode == 3);
  return paused ? UINT64_MAX : tick_time(c, c.irq_tick);
}

void Pit::load_count(unsigned channel, std::uint16_t value) {
  Channel& c = state_.channels[channel];
  if (c.counting && c.gate && (c.mode == 2 || c.mode == 3)) {
    const std::uint64_t n = period(c.reload);
    const std::uint64_t t = ticks(c, machine_.now_ns());
    if (!c.reload_pending) c.reload_tick = (t / n + 1) * n;
    c.pending_reload = value;
    c.reload_pending = true;
    return;
  }
  c.reload_pending = false;
  c.reload = value;
  c.counting = true;
  c.null_count = false;
  c.ticks_before = 0;
  c.load_ns = machine_.now_ns();
  const std::uint64_t n = period(value);
  c.irq_tick = (c.mode == 4 || c.mode == 5) ? n + 1 : n;
}

void Pit::set_gate(unsigned channel, bool gate) {
  Channel& c = state_.channels[channel];
  if (c.gate == gate) return;
  const std::uint64_t now = machine_.now_ns();
  if (!gate) {
    c.ticks_before = ticks(c, now);  // freeze
    c.gate = false;
    return;
  }
  c.gate = true;
  c.load_ns = now;
  // A rising gate restarts the count in modes 1, 2, 3 and 5; modes 0 and 4 resume.
  if (c.mode == 1 || c.mode == 2 || c.mode == 3 || c.mode == 5) {
    c.ticks_before = 0;
    if (c.reload_pending) {
      c.reload = c.pending_reload;
      c.reload_pending = false;
    }
    if (c.counting) c.irq_tick = (c.mode == 5) ? period(c.reload) + 1 : period(c.reload);
  }
}

void Pit::latch_count(Channel& c) {
  if (c.count_latched) return;
  c.latched_count = count_at(c, machine_.now_ns());
  c.count_latched = true;
  c.latched_high_next = false;
}

std::uint32_t Pit::port_read(std::uint16_t port, unsigned) {
  const std::uint64_t now = machine_.now_ns();
  if (port == 0x61) {
    const bool refresh = (now / 15085) & 1;  // DRAM refresh toggles every ~15 us
    return (state_.port61 & 0x0f) | (refresh ? 0x10 : 0) | (output_at(state_.channels[2], now) ? 0x20 : 0);
  }
  if (port == 0x43) return 0xff;  // the mode register is write-only
  Channel& c = state_.channels[port - 0x40];
  if (c.status_latched) {
    c.status_latched = false;
    return c.status;
  }
  if (c.count_latched) {
    std::uint8_t v;
    if (c.access == 1) {
      v = c.latched_count & 0xff;
      c.count_latched = false;
    } else if (c.access == 2) {
      v = c.latched_count >> 8;
      c.count_latched = false;
    } else if (!c.latched_high_next) {
      v = c.latched_count & 0xff;
      c.latched_high_next = true;
    } else {
      v = c.latched_count >> 8;
      c.count_latched = false;
    }
    return v;
  }
  const std::uint16_t count = count_at(c, now);
  if (c.access == 1) return count & 0xff;
  if (c.access == 2) return count >> 8;
  const bool high = c.read_high_next;
  c.read_high_next = !c.read_high_next;
  return high ? count >> 8 : count & 0xff;
}

void Pit::port_write(std::uint16_t port, unsigned, std::uint32_t value) {
  const std::uint8_t v = static_cast<std::uint8_t>(value);
  if (port == 0x61) {
    state_.port61 = v & 0x0f;
    set_gate(2, v & 1);
    return;
  }
  if (port == 0x43) {
    const unsigned channel = v >> 6;
    if (channel == 3) {  // read-back
      for (unsigned i = 0; i < 3; ++i) {
        if (!(v & (2u << i))) continue;
        Channel& c = state_.channels[i];
        if (!(v & 0x20)) latch_count(c);
        if (!(v & 0x10) && !c.status_latched) {
          c.status = static_cast<std::uint8_t>((output_at(c, machine_.now_ns()) ? 0x80 : 0) |
                                               (c.null_count ? 0x40 : 0) | (c.access << 4) | (c.mode << 1) |
                                               (c.bcd ? 1 : 0));
          c.status_latched = true;
        }
      }
      return;
    }
    Channel& c = state_.channels[channel];
    const unsigned access = (v >> 4) & 3;
    if (access == 0) {
      latch_count(c);
      return;
    }
    c.access = static_cast<std::uint8_t>(access);
    unsigned mode = (v >> 1) & 7;
    if (mode > 5) mode -= 4;  // 6 and 7 alias 2 and 3
    c.mode = static_cast<std::uint8_t>(mode);
    c.bcd = v & 1;
    c.counting = false;
    c.null_count = true;
    c.write_high_next = false;
    c.read_high_next = false;
    c.count_latched = false;
    c.status_latched = false;
    c.irq_tick = UINT64_MAX;
    c.reload_pending = false;
    return;
  }
  const unsigned channel = port - 0x40;
  Channel& c = state_.channels[channel];
  switch (c.access) {
    case 1:
      load_count(channel, v);
      break;
    case 2:
      load_count(channel, static_cast<std::uint16_t>(v << 8));
      break;
    default:
      if (!c.write_high_next) {
        c.write_low = v;
        c.write_high_next = true;
      } else {
        c.write_high_next = false;
        load_count(channel, static_cast<std::uint16_t>(c.write_low | (v << 8)));
      }
      break;
  }
}

}  // namespace modevisor::host
