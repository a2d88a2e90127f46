#include "platform/rtc.hpp"

#include <algorithm>

#include "platform/device_state.hpp"

namespace modevisor::host {

namespace {
using u128 = unsigned __int128;
constexpr std::uint64_t kNs = 1000000000;
constexpr std::uint8_t kSet = 0x80, kPie = 0x40, kAie = 0x20, kUie = 0x10, kBinary = 0x04, k24Hour = 0x02;
constexpr std::uint8_t kIrqf = 0x80, kPf = 0x40, kAf = 0x20, kUf = 0x10;
constexpr std::uint8_t kTimeRegisters[] = {0, 2, 4, 6, 7, 8, 9, Rtc::kCentury};

bool is_time_register(std::uint8_t index) {
  return std::find(std::begin(kTimeRegisters), std::end(kTimeRegisters), index) != std::end(kTimeRegisters);
}
}  // namespace

Rtc::Rtc(Machine& machine, IrqLine irq8, std::optional<std::int64_t> start_time)
    : machine_(machine), irq8_(irq8) {
  state_.base_seconds = start_time ? *start_time : static_cast<std::int64_t>(std::time(nullptr));
  state_.cmos[kRegA] = 0x26;  // 32.768 kHz divider, 1024 Hz rate
  state_.cmos[kRegB] = k24Hour;
  state_.cmos[kRegD] = 0x80;  // valid RAM and time
}

void Rtc::attach(Machine& machine) {
  machine.attach_ports(0x70, 2, *this);
  machine.attach_timer(*this);
}

void Rtc::set_memory_size(std::uint64_t ram) {
  auto& c = state_.cmos;
  c[0x15] = 640 & 0xff;
  c[0x16] = 640 >> 8;
  const std::uint64_t ext_kb = ram > (1u << 20) ? std::min<std::uint64_t>((ram - (1u << 20)) / 1024, 0xffff) : 0;
  c[0x17] = c[0x30] = ext_kb & 0xff;
  c[0x18] = c[0x31] = static_cast<std::uint8_t>(ext_kb >> 8);
  const std::uint64_t below_4g = std::min<std::uint64_t>(ram, 0xe0000000ull);  // the PCI hole starts at 3.5 GiB
  const std::uint64_t above_16m = below_4g > (16u << 20) ? std::min<std::uint64_t>((below_4g - (16u << 20)) >> 16, 0xffff) : 0;
  c[0x34] = above_16m & 0xff;
  c[0x35] = static_cast<std::uint8_t>(above_16m >> 8);
  const std::uint64_t above_4g = ram > 0xe0000000ull ? (ram - 0xe0000000ull) >> 16 : 0;
  c[0x5b] = above_4g & 0xff;
  c[0x5c] = (above_4g >> 8) & 0xff;
  c[0x5d] = (above_4g >> 16) & 0xff;
  c[0x14] = 0x06;  // equipment: FPU, PS/2 mouse, VGA, no floppy
  unsigned sum = 0;
  for (unsigned i = 0x10; i <= 0x2d; ++i) sum += c[i];
  c[0x2e] = static_cast<std::uint8_t>(sum >> 8);
  c[0x2f] = static_cast<std::uint8_t>(sum);
}

std::int64_t Rtc::time_now() const {
  return state_.base_seconds + static_cast<std::int64_t>(machine_.now_ns() / kNs);
}

std::uint8_t Rtc::encode(int value) const {
  if (state_.cmos[kRegB] & kBinary) return static_cast<std::uint8_t>(value);
  return static_cast<std::uint8_t>(((value / 10) << 4) | (value % 10));
}

int Rtc::decode(std::uint8_t value) const {
  if (state_.cmos[kRegB] & kBinary) return value;
  return (value >> 4) * 10 + (value & 0x0f);
}

void Rtc::snapshot_time() {
  const std::time_t t = static_cast<std::time_t>(time_now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  auto& c = state_.cmos;
  c[0] = encode(tm.tm_sec);
  c[2] = encode(tm.tm_min);
  if (state_.cmos[kRegB] & k24Hour) {
    c[4] = encode(tm.tm_hour);
  } else {
    const int h12 = tm.tm_hour % 12 == 0 ? 12 : tm.tm_hour % 12;
    c[4] = static_cast<std::uint8_t>(encode(h12) | (tm.tm_hour >= 12 ? 0x80 : 0));
  }
  c[6] = encode(tm.tm_wday + 1);
  c[7] = encode(tm.tm_mday);
  c[8] = encode(tm.tm_mon + 1);
  c[9] = encode(tm.tm_year % 100);
  c[kCentury] = encode((tm.tm_year + 1900) / 100);
}

void Rtc::commit_time() {
  const auto& c = state_.cmos;
  std::tm tm{};
  tm.tm_sec = decode(c[0]);
  tm.tm_min = decode(c[2]);
  if (state_.cmos[kRegB] & k24Hour) {
    tm.tm_hour = decode(c[4]);
  } else {
    tm.tm_hour = decode(c[4] & 0x7f) % 12 + ((c[4] & 0x80) ? 12 : 0);
  }
  tm.tm_mday = decode(c[7]);
  tm.tm_mon = decode(c[8]) - 1;
  tm.tm_year = decode(c[kCentury]) * 100 + decode(c[9]) - 1900;
  const std::int64_t t = static_cast<std::int64_t>(timegm(&tm));
  state_.base_seconds = t - static_cast<std::int64_t>(machine_.now_ns() / kNs);
}

std::uint64_t Rtc::periodic_period_units() const {
  const std::uint8_t a = state_.cmos[kRegA];
  if (((a >> 4) & 7) != 2) return 0;  // oscillator/divider not running normally
  unsigned rate = a & 0x0f;
  if (rate == 0) return 0;
  if (rate <= 2) rate += 7;  // rates 1 and 2 repeat rates 8 and 9
  return 1ull << (rate - 1);
}

void Rtc::set_flags(std::uint8_t flags) {
  std::uint8_t& c = state_.cmos[kRegC];
  c |= flags;
  const std::uint8_t b = state_.cmos[kRegB];
  const bool request = ((c & kPf) && (b & kPie)) || ((c & kAf) && (b & kAie)) || ((c & kUf) && (b & kUie));
  if (request && !(c & kIrqf)) {
    c |= kIrqf;
    state_.irq = true;
    irq8_.raise();
  }
}

void Rtc::update_flags(std::uint64_t now) {
  std::uint8_t flags = 0;
  if (const std::uint64_t units = periodic_period_units()) {
    const std::uint64_t ticks = static_cast<std::uint64_t>(u128(now) * 32768 / (u128(units) * kNs));
    // PF only while PIE is set, as QEMU's RTC (the oracle) does: a PF left
    // over from before PIE was enabled would request an interrupt at once,
    // and the guest's usual read of C would then leave a latched edge whose
    // handler finds PF clear.
    if (ticks > state_.periodic_ticks && (state_.cmos[kRegB] & kPie)) flags |= kPf;
    state_.periodic_ticks = ticks;
  }
  const std::uint64_t seconds = now / kNs;
  if (seconds > state_.seconds) {
    if (!(state_.cmos[kRegB] & kSet) && ((state_.cmos[kRegA] >> 4) & 7) == 2) {
      flags |= kUf;
      // The alarm fires at the update of a second that matches (0xc0-0xff: don't care).
      const auto& c = state_.cmos;
      const std::uint64_t first = std::max(state_.seconds + 1, seconds > 86400 ? seconds - 86400 : 0);
      for (std::uint64_t s = first; s <= seconds && !(flags & kAf); ++s) {
        const std::time_t t = static_cast<std::time_t>(state_.base_seconds + static_cast<std::int64_t>(s));
        std::tm tm{};
        gmtime_r(&t, &tm);
        auto matches = [&](std::uint8_t alarm, int value, bool hour) {
          if ((alarm & 0xc0) == 0xc0) return true;
          if (hour && !(c[kRegB] & k24Hour)) {
            const int h12 = value % 12 == 0 ? 12 : value % 12;
            return alarm == static_cast<std::uint8_t>(encode(h12) | (value >= 12 ? 0x80 : 0));
          }
          return alarm == encode(value);
        };
        if (matches(c[1], tm.tm_sec, false) && matches(c[3], tm.tm_min, false) && matches(c[5], tm.tm_hour, true))
          flags |= kAf;
      }
    }
    state_.seconds = seconds;
  }
  if (flags) set_flags(flags);
}

std::uint64_t Rtc::poll_timers(std::uint64_t now) {
  update_flags(now);
  std::uint64_t next = UINT64_MAX;
  const std::uint8_t b = state_.cmos[kRegB];
  if (b & kPie) {
    if (const std::uint64_t units = periodic_period_units())
      next = static_cast<std::uint64_t>((u128(state_.periodic_ticks + 1) * units * kNs + 32767) / 32768);
  }
  if (b & (kUie | kAie)) next = std::min(next, (state_.seconds + 1) * kNs);
  return next;
}

std::uint8_t Rtc::read_register(std::uint8_t index) {
  const std::uint64_t now = machine_.now_ns();
  update_flags(now);
  auto& c = state_.cmos;
  if (is_time_register(index) && !(c[kRegB] & kSet)) {
    snapshot_time();
    return c[index];
  }
  switch (index) {
    case kRegA: {
      const bool running = ((c[kRegA] >> 4) & 7) == 2 && !(c[kRegB] & kSet);
      const bool uip = running && now % kNs >= kNs - 244140;
      return static_cast<std::uint8_t>((c[kRegA] & 0x7f) | (uip ? 0x80 : 0));
    }
    case kRegC: {
      const std::uint8_t v = c[kRegC];
      c[kRegC] = 0;
      if (state_.irq) {
        state_.irq = false;
        irq8_.lower();
      }
      return v;
    }
    case kRegD:
      return 0x80;
    default:
      return c[index];
  }
}

void Rtc::write_register(std::uint8_t index, std::uint8_t value) {
  auto& c = state_.cmos;
  if (is_time_register(index)) {
    if (c[kRegB] & kSet) {
      c[index] = value;
    } else {
      snapshot_time();
      c[index] = value;
      commit_time();
    }
    return;
  }
  switch (index) {
    case kRegA: {
      const std::uint64_t old_units = periodic_period_units();
      c[kRegA] = value & 0x7f;  // UIP is read-only
      if (periodic_period_units() != old_units && periodic_period_units() != 0)
        state_.periodic_ticks =
            static_cast<std::uint64_t>(u128(machine_.now_ns()) * 32768 / (u128(periodic_period_units()) * kNs));
      break;
    }
    case kRegB: {
      const std::uint8_t old = c[kRegB];
      if (value & kSet) value &= ~kUie;
      if ((value & kSet) && !(old & kSet)) {
        c[kRegB] = value;
        snapshot_time();  // frozen in the format the guest will write them in
      } else if (!(value & kSet) && (old & kSet)) {
        commit_time();  // decoded in the format they were written in
        c[kRegB] = value;
        state_.seconds = machine_.now_ns() / kNs;
      } else {
        c[kRegB] = value;
      }
      set_flags(0);  // enabling an interrupt whose flag is already set requests it
      break;
    }
    case kRegC:
    case kRegD:
      break;  // read-only
    default:
      c[index] = value;
  }
}

std::uint32_t Rtc::port_read(std::uint16_t port, unsigned) {
  if (port == 0x70) return 0xff;  // the index register is write-only
  return read_register(state_.index);
}

void Rtc::port_write(std::uint16_t port, unsigned, std::uint32_t value) {
  if (port == 0x70)
    state_.index = value & 0x7f;  // bit 7: NMI mask, ignored
  else
    write_register(state_.index, static_cast<std::uint8_t>(value));
}

void to_json(nlohmann::json& j, const Rtc::State& s) {
  j = {{"cmos", to_hex(s.cmos.data(), s.cmos.size())}, {"index", s.index}, {"base_seconds", s.base_seconds},
       {"periodic_ticks", s.periodic_ticks}, {"seconds", s.seconds}, {"irq", s.irq}};
}

void from_json(const nlohmann::json& j, Rtc::State& s) {
  from_hex(j.at("cmos").get<std::string>(), s.cmos.data(), s.cmos.size());
  j.at("index").get_to(s.index);
  j.at("base_seconds").get_to(s.base_seconds);
  j.at("periodic_ticks").get_to(s.periodic_ticks);
  j.at("seconds").get_to(s.seconds);
  j.at("irq").get_to(s.irq);
}

}  // namespace modevisor::host
