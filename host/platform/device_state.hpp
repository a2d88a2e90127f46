// Helpers for device state serialisation.
//
// Format: every device has a plain `State` struct (save()/restore()) and
// nlohmann::json conversions for it; Pc::save_state() gathers them into one
// JSON object keyed by device ("pic", "ioapic", "lapic" [per vCPU], "pit",
// "rtc", "com1", "fw_cfg", "pci", "system") plus "guest_time_ns".  Times
// inside device states are absolute guest times (Machine::now_ns()); the
// Machine's guest time is restored first, so they stay meaningful.  Byte
// blobs (CMOS RAM, the local APIC register page, FIFOs) are lowercase hex
// strings.  The JSON is versioned by the "format" key of Pc::save_state().
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace modevisor::host {

inline std::string to_hex(const std::uint8_t* data, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 15]);
  }
  return out;
}

// Decodes exactly `size` bytes; throws std::invalid_argument otherwise.
inline void from_hex(const std::string& hex, std::uint8_t* data, std::size_t size) {
  if (hex.size() != size * 2) throw std::invalid_argument("device state: hex blob has the wrong length");
  auto nibble = [](char c) -> std::uint8_t {
    if (c >= '0' && c <= '9') return static_cast<std::uint8_t>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<std::uint8_t>(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return static_cast<std::uint8_t>(c - 'A' + 10);
    throw std::invalid_argument("device state: bad hex digit");
  };
  for (std::size_t i = 0; i < size; ++i)
    data[i] = static_cast<std::uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
}

}  // namespace modevisor::host
